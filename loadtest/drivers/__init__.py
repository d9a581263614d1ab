"""What every load test is built from, defined once each.

* :mod:`.viewer`: the measuring viewer (loss, duplicates, order and latency of the gifts
  it receives) and the websocket viewer that keeps watching, measuring or a sink;
* :mod:`.sinks`: sink viewers by the thousand, in a process of their own, for fan-out;
* :mod:`.gifter`: the gifter that settles every id, resending the same id until the
  relay answers it, and the open-loop pacing of gifts;
* :mod:`.connection`: one websocket at the protocol's level, for the drivers that need
  their own (permessage-deflate, their own retry policy);
* :mod:`.target`: giftrelay or a peer started as a process, waited for until it listens;
* :mod:`.procstats`: the one reader of /proc (process trees, CPU seconds, RSS);
* :mod:`.sio`: the small Socket.IO client through which the peer benchmarks are read.
"""
