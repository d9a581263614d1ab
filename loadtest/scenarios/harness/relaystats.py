"""The relay's CPU seconds and resident memory, from ``/metrics`` or from /proc.

Results are given per relay CPU-second, so that a run disturbed by something else
on the machine still yields a comparable figure. ``/metrics`` of a single-worker
relay has ``process_cpu_seconds_total`` and ``process_resident_memory_bytes``;
for several workers, or for a peer that has no ``/metrics``, ``--relay-pid``
reads /proc for the process and all its descendants.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request

from ...drivers.procstats import Sample, sample

__all__ = ["RelaySampler", "Sample"]


class RelaySampler:
    """Samples one relay; ``source`` says from where (``proc``, ``metrics`` or ``none``)."""

    def __init__(self, metrics_url: str | None, pids: list[int] | None) -> None:
        self.metrics_url = metrics_url
        self.pids = pids or []
        self.source = "proc" if self.pids else ("metrics" if metrics_url else "none")

    async def sample(self) -> Sample | None:
        if self.pids:
            return sample(self.pids)
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
