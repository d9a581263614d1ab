"""Micro-benchmarks, one part of the relay each: ``python -m loadtest.micro.bench_money`` etc."""
