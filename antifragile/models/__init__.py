"""Every contract (pydantic models): workflow inputs, results, signals, queries, activities."""
