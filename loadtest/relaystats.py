"""The relay's CPU seconds and resident memory, from ``/metrics`` or from /proc.

Results are given per relay CPU-second, so that a run disturbed by something else
on the machine still yields a comparable figure. ``/metrics`` of a single-worker
relay has ``process_cpu_seconds_total`` and ``process_resident_memory_bytes``;
for several workers, or for a peer that has no ``/metrics``, ``--relay-pid``
reads /proc for the process and all its descendants.
"""

from __future__ import annotations

import asyncio
import os
import re
import urllib.request
from pathlib import Path

import msgspec

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class Sample(msgspec.Struct, frozen=True):
    cpu_seconds: float
    rss_bytes: int


class RelaySampler:
    """Samples one relay; ``source`` says from where (``proc``, ``metrics`` or ``none``)."""

    def __init__(self, metrics_url: str | None, pids: list[int] | None) -> None:
        self.metrics_url = metrics_url
        self.pids = pids or []
        self.source = "proc" if self.pids else ("metrics" if metrics_url else "none")

    async def sample(self) -> Sample | None:
        if self.pids:
            return proc_sample(self.pids)
        if self.metrics_url:
            try:
                return await asyncio.to_thread(_metrics_sample, self.metrics_url)
            except (OSError, ValueError):
                return None
        return None


def _metrics_sample(url: str) -> Sample | None:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    cpu = re.search(r"^process_cpu_seconds_total (\S+)$", text, re.M)
    rss = re.search(r"^process_resident_memory_bytes (\S+)$", text, re.M)
    if cpu is None or rss is None:
        return None  # several workers: no process metrics; use --relay-pid
    return Sample(cpu_seconds=float(cpu.group(1)), rss_bytes=int(float(rss.group(1))))


def _tree(roots: list[int]) -> set[int]:
    """The processes and all their descendants."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parent[int(entry.name)] = int(fields[1])
    found = {p for p in roots if p in parent}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def proc_sample(roots: list[int]) -> Sample | None:
    cpu = 0.0
    rss = 0
    pids = _tree(roots)
    if not pids:
        return None
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            statm = Path(f"/proc/{pid}/statm").read_text().split()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
        rss += int(statm[1]) * PAGE
    return Sample(cpu_seconds=cpu, rss_bytes=rss)
