"""Worker wiring: every workflow and activity of antifragile, and the entry points."""
