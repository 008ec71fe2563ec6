"""The recovery process outside its workflow: pure decisions, client, probes, named targets.

The named targets are the worker policy's.
"""
