"""The soak as an operator stops it: Ctrl-C ends the load early, every check still runs
on what ran, and no relay is left behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from loadtest.drivers.procstats import alive, descendants

Loadtest = Callable[..., Awaitable[asyncio.subprocess.Process]]

COLUMNS = 17


def kill_tree(pid: int) -> None:
    """The relay and what it started (its embedded Redis), however it was grouped."""
    for each in [*descendants(pid), pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGKILL)


async def test_ctrl_c_ends_the_soak_early_with_its_checks_and_stops_its_relay(
    tmp_path: Path, loadtest: Loadtest
) -> None:
    csv = tmp_path / "soak.csv"
    proc = await loadtest(
        "soak", "--minutes", "10", "--interval", "1", "--viewers", "20", "--gifters", "4",
        "--rate", "20", "--csv", str(csv),
    )  # fmt: skip
    assert proc.stdout is not None
    seen: list[str] = []
    relay_pid = 0
    try:
        async with asyncio.timeout(90):
            rows = 0
            while rows < 2:  # two samples of the steady load, then the operator's Ctrl-C
                line = (await proc.stdout.readline()).decode()
                assert line, "the soak ended by itself:\n" + "".join(seen)
                seen.append(line)
                if m := re.search(r"\(pid (\d+)\)", line):
                    relay_pid = int(m[1])
                parts = line.split()
                rows += len(parts) == COLUMNS and parts[0].isdigit()
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(120):
            rest = (await proc.stdout.read()).decode()
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        leftover = relay_pid and alive(relay_pid)
        if leftover:  # a failing run's relay must not outlive the test
            kill_tree(relay_pid)
    out = "".join(seen) + rest
    assert code == 130, out
    assert "soak: stopping early" in out
    assert "OK: every wallet agrees with the ledger" in out  # reconcile ran
    assert re.search(r"soak: OK for the [\d.]+ minutes it ran, stopped early", out), out
    assert "PROBLEM" not in out
    assert relay_pid, "the soak did not name its relay"
    assert not leftover, f"relay {relay_pid} was still running"
    samples = csv.read_text().splitlines()
    assert samples[0].startswith("elapsed_s,")
    assert len(samples) >= 4  # the header, the two samples, and the last one, cut short
