"""Behaviour cases ported from the test suites of other circuit breakers (one file per peer)."""
