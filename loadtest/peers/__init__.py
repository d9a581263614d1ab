"""Peers for the benchmarks: what a team would build instead, measured by the same harness."""
