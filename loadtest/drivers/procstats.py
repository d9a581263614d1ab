"""The one reader of /proc: process trees, their CPU seconds and resident memory.

Figures are given per CPU-second of the process tree being measured, so that a run
disturbed by something else on the machine still yields a comparable figure; a
relay started with ``--workers N`` (or with an embedded Redis) is a tree, read whole.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

import msgspec

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class Sample(msgspec.Struct, frozen=True):
    cpu_seconds: float
    rss_bytes: int


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first, then theirs), from its tasks' children."""
    out: list[int] = []
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                for child in map(int, (task / "children").read_text().split()):
                    out += [child, *descendants(child)]
    return out


def tree(roots: Iterable[int]) -> list[int]:
    """The roots that still run, and all their descendants."""
    found = [pid for pid in roots if Path(f"/proc/{pid}").exists()]
    return found + [child for pid in found for child in descendants(pid)]


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state is the first)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat[stat.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 when it is gone)."""
    fields = _stat(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (0 when it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (FileNotFoundError, ProcessLookupError):
        return 0


def sample(roots: Iterable[int]) -> Sample | None:
    """CPU seconds and RSS of the processes and all their descendants; None if none runs."""
    pids = tree(roots)
    if not pids:
        return None
    return Sample(
        cpu_seconds=sum(cpu_seconds(p) for p in pids), rss_bytes=sum(rss_bytes(p) for p in pids)
    )


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def alive(pid: int) -> bool:
    """Running (a zombie, exited but not yet waited for, is not)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"
