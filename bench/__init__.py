"""Benchmarks (``make bench``, ``make reliability``): numbers, not tests."""
