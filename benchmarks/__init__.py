"""Benchmarks (`make bench`): numbers are measured in one run and printed, never asserted."""
