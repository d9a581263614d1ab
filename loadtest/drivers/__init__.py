"""What every load test is built from, defined once each.

* :mod:`.procstats`: the one reader of /proc (process trees, CPU seconds, RSS).
"""
