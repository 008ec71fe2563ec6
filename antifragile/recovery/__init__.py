"""The recovery process outside its workflow: pure decisions, the client, probes and the
worker policy's named targets.
"""
