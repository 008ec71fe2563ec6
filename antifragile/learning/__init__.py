"""Learning from stress: pure decisions over observations, and their clients."""
