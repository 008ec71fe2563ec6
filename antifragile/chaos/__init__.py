"""Chaos experiments: scenarios, pure decisions, the Redis fault plane and fault kinds.

``scenario`` and ``logic`` are pure (workflow code imports them); ``plane`` and
``faults`` run in services and activities and talk to Redis.
"""
