"""Benchmarks of the worker against the stand-in sampler: `python -m bench`."""
