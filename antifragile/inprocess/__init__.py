"""What a service embeds: breakers, the guard, faults, health, metering, the bridge and the
runtime that ties them together. Everything here may run on a service's hot path.
"""
