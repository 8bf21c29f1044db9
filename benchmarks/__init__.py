"""The benchmark suite: ``python -m benchmarks [--quick] [--only NAME]``."""
