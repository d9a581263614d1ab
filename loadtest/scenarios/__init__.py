"""The subcommands of ``giftrelay-loadtest``, one module (or package) each.

* :mod:`.harness`: ``busy-stream``, ``many-streams``, ``reconnect-storm``,
  ``slow-readers``, ``ramp``: full clients against any relay, everything checked;
* :mod:`.fanout`: ``fanout``, the servers' fan-out at thousands of viewers (sinks);
* :mod:`.bench`: ``bench``, giftrelay and its peers through the harness, same run;
* :mod:`.soak`: ``soak``, hours of moderate load, a row of figures every interval.
"""
