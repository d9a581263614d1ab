"""The harness behind ``busy-stream``, ``many-streams``, ``reconnect-storm``,
``slow-readers``, ``ramp`` and ``battle`` (docs/loadtest.md): full clients in worker processes
against any giftrelay, everything they receive checked, money conservation proved.

* :mod:`.options`: a run's options, and the checks on them and on the target;
* :mod:`.coordinator`: sets the relay up, drives the workers, verifies;
* :mod:`.workers`: the worker processes as the coordinator sees them, and their ticks;
* :mod:`.worker`: one worker process (viewers and gifters from :mod:`loadtest.drivers`);
* :mod:`.wire`: what they say to each other;
* :mod:`.battle`: the ``battle`` scenario's viewers, its start over the protocol, its verdict;
* :mod:`.outcome`, :mod:`.result`, :mod:`.report`: the figures, the JSON, the HTML;
* :mod:`.relaystats`: the relay's CPU and memory, from ``/metrics`` or /proc;
* :mod:`.cli`: the subcommands.
"""

from .coordinator import Harness, run
from .options import SCENARIOS, Options, UsageError, check_target

__all__ = ["SCENARIOS", "Harness", "Options", "UsageError", "check_target", "run"]
