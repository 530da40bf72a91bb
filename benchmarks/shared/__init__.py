"""What several benchmarks share: the machine (machine.py), result files (output.py), the exactness measure (exactness.py)."""
