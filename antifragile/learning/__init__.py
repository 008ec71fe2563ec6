"""Learning from stress: measurements, advice and score from each dependency's ledger."""
