"""The fleet-wide recovery queue outside its workflow: pure admission decisions."""
