"""What a service embeds: breakers, the guard, faults, health, metering, bridge, runtime.

The runtime ties them together. Everything here may run on a service's hot path.
"""
