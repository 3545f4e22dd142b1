"""Benchmarks: ``python -m bench.<name> [--quick]``; each ends with one JSON line of figures."""
