"""Side-by-side benchmarks of pyscsit against tgtd: ``python -m benchmarks.run``."""
