"""Benchmarks: run from a checkout, e.g. python benchmarks/throughput.py --help."""
