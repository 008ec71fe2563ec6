"""Temporal activity definitions: the side effects workflows delegate, grouped by workflow."""
