"""Learning from stress: measurements, advice, the resilience score, config versions.

The modules re-exported here do no I/O and read no clock (``now`` is a parameter), so
workflows may import them. Everything is computed from a dependency's
:data:`~antifragile.models.learning.Observation` records, in any order, with the same result
bit for bit.

- :func:`measure`: time to detect, verified time to recover, calls failed and refused,
  baseline error rate and latency quantiles.
- :func:`advise`: recommended breaker, guard and recovery settings, and the gaps.
- :func:`resilience_score`: 0-100 from measured outcomes, weighted by recency, and trend.
- :mod:`~antifragile.learning.histogram`: record, merge and read latency histograms.
- :mod:`~antifragile.learning.config_versions`: versions of applied settings in Redis (I/O:
  not imported here, and never by workflows).
"""

from antifragile.learning.advice import advise
from antifragile.learning.histogram import merge, quantile_ms, record
from antifragile.learning.measurements import measure
from antifragile.learning.score import resilience_score

__all__ = ["advise", "measure", "merge", "quantile_ms", "record", "resilience_score"]
