"""A harness run's options, and the checks on them and on its target before anything runs."""

from __future__ import annotations

import contextlib
import ipaddress
from urllib.parse import urlsplit

import msgspec

SCENARIOS = ("busy-stream", "many-streams", "reconnect-storm", "slow-readers", "ramp", "battle")


class Options(msgspec.Struct, kw_only=True):
    scenario: str = "busy-stream"
    url: str = "ws://127.0.0.1:8080/ws"
    flavour: str = "giftrelay"
    secret: str | None = None
    admin_token: str | None = None
    gifter_tokens: list[str] | None = None
    allow_host: str | None = None
    viewers: int = 100
    gift_rate: float = 100.0
    """Gifts per second for the whole run; a negative value: as fast as answers come."""
    inflight: int = 4
    duration: float = 10.0
    streams: int = 1
    processes: int = 0
    """0: one per core."""
    gifts_per_user: float = 10.0
    gifters: int = 0
    """0: enough for ``gift_rate`` at ``gifts_per_user`` (the relay limits gifts per user)."""
    gift: str = "rose"
    diamonds_per_coin: str = "1"
    slow_share: float = 0.0
    slow_delay: float = 0.05
    storm_at: float = 0.3
    """Share of the duration after which the storm starts."""
    storm_window: float = 2.0
    step_seconds: float = 5.0
    max_steps: int = 10
    limit_p99: float = 150.0
    """Ramp: a step whose p99 (ms) passes this is past the knee."""
    min_delivery: float = 0.95
    max_p99: float | None = None
    drain_timeout: float = 15.0
    connect_rate: float = 500.0
    retry_for: float = 10.0
    relay_pid: list[int] | None = None
    metrics_url: str | None = None
    reconcile: bool = False
    battle_seconds: int = 30
    """``battle``: its length (the default catalog's shortest)."""
    battle_lead: float = 1.0
    """``battle``: seconds of gifts before the invitation (they must not count)."""
    end_timeout: float = 30.0
    """``battle``: how long past ``ends_at`` to wait for every viewer's ``battle_end``."""
    out: str | None = "loadtest-results"
    name: str | None = None
    quiet: bool = False

    def limits(self) -> None:
        """Bounded counts and durations: a typo must not open a million sockets."""
        checks = [
            (1 <= self.viewers <= 200_000, "--viewers must be 1..200000"),
            (1 <= self.streams <= 10_000, "--streams must be 1..10000"),
            (0 < self.duration <= 3600, "--duration must be in (0, 3600] seconds"),
            (abs(self.gift_rate) <= 100_000, "--gift-rate must be within 100000/s"),
            (0 <= self.processes <= 64, "--processes must be 0..64"),
            (0 <= self.slow_share <= 1, "--slow-share must be 0..1"),
            (1 <= self.max_steps <= 100, "--max-steps must be 1..100"),
            (self.gift_rate != 0 or self.scenario == "ramp", "--gift-rate must not be 0"),
            (1 <= self.battle_seconds <= 3600, "--battle-seconds must be 1..3600"),
            (0 < self.end_timeout <= 600, "--end-timeout must be in (0, 600] seconds"),
        ]
        if self.scenario == "battle":
            checks += [
                (self.streams == 2, "battle is two streams"),
                (self.viewers >= 2, "--viewers must be 2 or more: both sides have viewers"),
                (self.flavour == "giftrelay", "battle speaks giftrelay's protocol only"),
                (self.secret is not None, "battle needs --secret: each side's creator "
                 "answers with a creator token"),
            ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise UsageError(message)


class UsageError(Exception):
    """Bad options or an unsafe target: exit status 2."""


LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def check_target(url: str, allow_host: str | None) -> None:
    """Refuse anything but loopback unless the operator named the host with ``--allow-host``."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise UsageError(f"the target must be a ws:// or wss:// URL, not {url!r}")
    host = parts.hostname or ""
    if host in LOOPBACK_NAMES:
        return
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_loopback:
            return
    if allow_host is not None and allow_host == host:
        return
    raise UsageError(
        f"{host!r} is not a loopback address: a load test can hurt a real service. "
        f"Name it explicitly with --allow-host {host} if you mean it."
    )


def metrics_url_for(url: str) -> str:
    parts = urlsplit(url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}/metrics"
