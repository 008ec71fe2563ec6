"""Temporal workflow definitions only (deterministic): one durable process per file.

Helpers start with an underscore.
"""
