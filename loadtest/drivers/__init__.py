"""What every load test is built from, defined once each.

* :mod:`.target`: giftrelay or a peer started as a process, waited for until it listens;
* :mod:`.procstats`: the one reader of /proc (process trees, CPU seconds, RSS);
* :mod:`.sio`: the small Socket.IO client through which the peer benchmarks are read.
"""
