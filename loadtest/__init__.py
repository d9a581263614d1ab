"""giftrelay's load tests and benchmarks, run from the command line."""
