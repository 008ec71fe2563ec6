"""Demo services embedding the in-process module (used by ``antifragile demo`` and benches)."""
