"""The chaos controller side: scenario files, pure decisions, the fault plane, the client.

``logic`` is pure (workflow code imports it); ``scenario`` reads scenario files and
writes their schema; ``plane`` writes fault leases and the halt switch in Redis;
``client`` starts, finds and stops experiments and halts and resumes the fleet;
``schedules`` runs them as game days; ``report`` reads or rebuilds their reports.
What a service runs (the fault kinds, the subscriber) is in :mod:`antifragile.inprocess`.
"""
