"""Configuration in one typed place.

Every setting has a default, an environment variable ``GIFTRELAY_<NAME>`` and, for
the ones an operator changes often, a command-line flag that overrides it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints
from urllib.parse import SplitResult, urlsplit

import msgspec

from giftrelay.money.rules import EXACT_LIMIT, MAX_BALANCE, MAX_GIFT_COUNT

ENV_PREFIX = "GIFTRELAY_"

Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
TEN_YEARS_S = 3650 * 86400
"""The longest retention, in seconds. The scripts set it in ms as their last write, where
a number too large for Redis would fail the script after the money moved."""


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names it."""


def _var(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _fraction(name: str, text: str) -> Fraction:
    try:
        value = Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise ConfigError(
            f"{_var(name)}: {text!r} is not a number or fraction such as 1/2"
        ) from None
    if value < 0:
        raise ConfigError(f"{_var(name)}: must not be negative, got {text!r}")
    return value


def _number(value: Fraction) -> str:
    """A rate as an operator would write it: ``100``, or ``100/3 (about 33.333)``."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{value} (about {float(value):.6g})"


def _check_rate(name: str, text: str, rate: Fraction, max_balance: int, what: str) -> None:
    """``max_balance`` x ``rate`` must stay below EXACT_LIMIT: ``what`` names the amount."""
    if max_balance * rate >= EXACT_LIMIT:
        raise ConfigError(
            f"{_var(name)}: {text!r} is too large: with GIFTRELAY_MAX_BALANCE={max_balance} "
            f"it must be at least 0 and below {_number(Fraction(EXACT_LIMIT, max_balance))}, "
            f"so that {what} stay below 10^14, which the ledger records exactly"
        )


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    """All of giftrelay's settings. Build with :meth:`Settings.load`."""

    # Where things are.
    secret: str | None = None
    redis_url: str | None = None
    ledger_url: str | None = None
    """Default: ``sqlite:///<var_dir>/ledger.sqlite3``."""
    catalog: str | None = None
    var_dir: str = "var"
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    api_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8081
    """The HTTP API for the platform's backend (docs/api.md); 0 turns it off."""
    workers: Positive = 1

    # Money rules.
    diamonds_per_coin: str = "1"
    """Times ``max_balance`` below 10^14: a full wallet's gift gets an exact number."""
    payout_min_diamonds: Annotated[int, msgspec.Meta(ge=1, le=MAX_BALANCE)] = 2000
    """At most 10^13, where the payout script compares it exactly."""
    cents_per_diamond: str = "1/2"
    """Times ``max_balance`` below 10^14: the largest payout's gross is exact."""
    payout_fee_percent: str = "0"
    payout_requires_verification: bool = False
    """Socket ``payout`` requests too need the creator's verification on record (scheduled
    payout runs always do). Off by default: protocol v1 pays any creator."""
    payout_currency: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")] = "USD"
    """The ISO 4217 currency of ``cents_per_diamond``: payouts' cents are in it."""
    payout_batch_dir: str | None = None
    """Where payout runs write their batch files. Default: ``<var_dir>/payouts``."""
    max_gift_count: Annotated[int, msgspec.Meta(ge=1, le=MAX_GIFT_COUNT)] = 1000
    """At most 10^6: with prices of at most 10^7 coins, one gift costs at most 10^13."""
    max_balance: Annotated[int, msgspec.Meta(ge=1, le=MAX_BALANCE)] = 10**12
    """At most 10^13, so every amount stays exact in Lua and in JSON."""

    # Retention and windows.
    idempotency_ttl: Annotated[int, msgspec.Meta(ge=1, le=TEN_YEARS_S)] = 3600
    receipt_ttl: Annotated[int, msgspec.Meta(ge=1, le=TEN_YEARS_S)] = 30 * 86400
    combo_window_ms: Annotated[int, msgspec.Meta(ge=1, le=3_600_000)] = 3000
    history_len: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1000

    # Ledger consumer.
    ledger_batch: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1000
    ledger_claim_idle_ms: Positive = 30_000
    ledger_max_deliveries: Positive = 5
    ledger_metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    """``giftrelay ledger`` serves /metrics on this port (0: not at all)."""

    # Webhooks (giftrelay.webhooks): every ledger movement POSTed, signed, at least once.
    webhook_url: str | None = None
    """Where to POST; unset: no webhooks. http:// or https://."""
    webhook_secret: str | None = None
    """HMAC-SHA256 key of ``Giftrelay-Signature``; required with ``webhook_url``."""
    webhook_timeout: Annotated[float, msgspec.Meta(gt=0, le=60)] = 10.0
    """Seconds an attempt waits for the answer; none in time is a failure."""
    webhook_retry_base: Annotated[float, msgspec.Meta(gt=0, le=30)] = 5.0
    """Seconds: the first retry comes within this (full jitter), each later one doubles it."""
    webhook_retry_cap: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 3600.0
    """Seconds: the longest wait between two attempts."""
    webhook_dead_after_days: Annotated[float, msgspec.Meta(gt=0, le=3650)] = 3.0
    """Days after its first failure that an event still failing becomes a dead letter."""
    webhook_concurrency: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 16
    """Deliveries in flight at once (each to another wallet's head)."""
    webhook_backlog: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 100_000
    """Events held for delivery at most; beyond it new movements wait in the ledger stream."""
    webhook_metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    """``giftrelay webhooks run`` serves /metrics on this port (0: not at all)."""

    # Relay: fan-out, limits and time-outs.
    tick_ms: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 25
    """Fan-out tick; it grows under load up to ``max_tick_ms``. 0 flushes at once."""
    max_tick_ms: Annotated[int, msgspec.Meta(ge=1, le=5000)] = 250
    compression: bool = True
    """permessage-deflate for clients that offer it; each fan-out frame compressed once."""
    max_frame_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 65536
    """Frames above this close the connection with 1009."""
    max_message_bytes: Annotated[int, msgspec.Meta(ge=256)] = 4096
    """Messages above this (but within a frame) get a ``too_large`` error."""
    max_streams_per_connection: Positive = 16
    max_connections_per_ip: Positive = 1000
    """Per worker process."""
    max_connections: Positive = 50_000
    """Per worker process; beyond it new connections get HTTP 503."""
    gift_rate: Annotated[float, msgspec.Meta(gt=0)] = 20.0
    """Gifts per second per user (token bucket), per worker."""
    gift_burst: Positive = 40
    message_rate: Annotated[float, msgspec.Meta(gt=0)] = 200.0
    """Messages per second per connection; more refused in a row than the burst: 1008."""
    message_burst: Positive = 400
    max_inflight_per_connection: Positive = 64
    write_buffer_bytes: Annotated[int, msgspec.Meta(ge=65536)] = 1 << 20
    """A viewer whose unsent data passes this is too slow: closed with 1013."""
    ping_interval: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    ping_timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    request_timeout: Annotated[float, msgspec.Meta(gt=0, le=10)] = 1.5
    """Longest a request waits for Redis before answering ``unavailable``."""
    shutdown_timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0

    # Redis client behaviour.
    redis_timeout: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    ack_replicas: Annotated[int, msgspec.Meta(ge=0, le=16)] = 0
    """Replicas that must hold a money movement before gift_ok/topup_ok/payout_ok (WAIT)."""
    ack_timeout: Annotated[float, msgspec.Meta(gt=0, le=10)] = 1.0
    """Longest a money reply waits for those replicas before answering ``unavailable``."""

    # Logging.
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def __post_init__(self) -> None:
        """Check what one field's type cannot: the fractions, and fields against each other."""
        if self.redis_url:
            check_redis_url(self.redis_url)
        _check_host(self.host)
        if self.webhook_url is not None:
            _check_webhook(self.webhook_url, self.webhook_secret)
            if (self.redis_url or "").startswith("redis+cluster://"):
                raise ConfigError(
                    "GIFTRELAY_WEBHOOK_URL: webhooks do not run on a Redis Cluster yet "
                    "(GIFTRELAY_REDIS_URL is redis+cluster://): unset GIFTRELAY_WEBHOOK_URL, "
                    "or use one Redis (with Sentinel for failover)"
                )
        if self.ack_replicas and self.ack_timeout >= self.request_timeout:
            raise ConfigError(
                f"GIFTRELAY_ACK_TIMEOUT: {self.ack_timeout} s leaves no time within "
                f"GIFTRELAY_REQUEST_TIMEOUT ({self.request_timeout} s) to answer: make it shorter"
            )
        if self.api_port and self.api_port == self.port:
            raise ConfigError(
                f"GIFTRELAY_API_PORT: {self.api_port} is the relay's own port (GIFTRELAY_PORT): "
                "give the API another port, or 0 to turn it off"
            )
        if self.fee_rate >= 1:
            raise ConfigError(
                f"GIFTRELAY_PAYOUT_FEE_PERCENT: must be at least 0 and below 100, "
                f"got {self.payout_fee_percent!r}"
            )
        _check_rate(
            "diamonds_per_coin",
            self.diamonds_per_coin,
            self.diamond_rate,
            self.max_balance,
            "the diamonds credited for a full wallet of coins",
        )
        _check_rate(
            "cents_per_diamond",
            self.cents_per_diamond,
            self.cent_rate,
            self.max_balance,
            "the cents paid for a full wallet of diamonds",
        )

    @property
    def diamond_rate(self) -> Fraction:
        return _fraction("diamonds_per_coin", self.diamonds_per_coin)

    @property
    def cent_rate(self) -> Fraction:
        return _fraction("cents_per_diamond", self.cents_per_diamond)

    @property
    def fee_rate(self) -> Fraction:
        return _fraction("payout_fee_percent", self.payout_fee_percent) / 100

    @property
    def embedded(self) -> bool:
        """True when giftrelay runs its own Redis (no ``GIFTRELAY_REDIS_URL``)."""
        return not self.redis_url

    @property
    def ledger(self) -> str:
        """The ledger store's URL."""
        return self.ledger_url or f"sqlite:///{self.var_dir}/ledger.sqlite3"

    @property
    def payout_batches(self) -> Path:
        """Where payout runs write their batch files."""
        return Path(self.payout_batch_dir or Path(self.var_dir) / "payouts")

    @property
    def var_path(self) -> Path:
        return Path(self.var_dir)

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``GIFTRELAY_*`` variables, then apply overrides that are not None."""
        env = os.environ if env is None else env
        raw: dict[str, Any] = {}
        for name in cls.__struct_fields__:
            value = env.get(ENV_PREFIX + name.upper())
            if value not in (None, ""):
                raw[name] = value
        raw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(_explain(str(exc))) from None


def _explain(message: str) -> str:
    """Turn msgspec's ``- at `$.name``` into the environment variable's name.

    A setting with a fixed set of values lists them.
    """
    text, sep, where = message.rpartition(" - at `$.")
    if not sep:
        return message
    name = where.rstrip("`")
    kind = get_type_hints(Settings).get(name)
    if get_origin(kind) is Literal:
        text = f"{text}; use one of: {', '.join(map(str, get_args(kind)))}"
    return f"{ENV_PREFIX}{name.upper()}: {text}"


REDIS_URL_FORMS = (
    "redis://[:password@]host[:port][/db], rediss://... (TLS), unix:///path/to/redis.sock "
    "or redis+sentinel://host:26379[,host2:26379]/service[/db], db 0-15, "
    "or redis+cluster://host:port[,host2:port]"
)


def check_redis_url(url: str) -> None:
    """A Redis URL redis-py accepts and that names a host and a default-range database."""
    parts = urlsplit(url)
    problem = ""
    if parts.scheme == "redis+sentinel":
        problem = _multi_host_problem(url, "Sentinel")
    elif parts.scheme == "redis+cluster":
        problem = _multi_host_problem(url, "cluster")
    elif parts.scheme not in ("redis", "rediss", "unix"):
        problem = "is not a Redis URL"
    elif parts.scheme != "unix" and not parts.hostname:
        problem = "names no host"
    elif parts.scheme == "unix" and not parts.path:
        problem = "names no socket path"
    elif parts.scheme != "unix" and not re.fullmatch(r"/?([0-9]|1[0-5])?", parts.path):
        problem = "names no database 0-15"
    else:
        problem = _port_problem(parts)
    if problem:
        raise ConfigError(f"GIFTRELAY_REDIS_URL: {redact(url)!r} {problem}; use {REDIS_URL_FORMS}")


def _port_problem(parts: SplitResult) -> str:
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        return "has a bad port"
    return ""


def _multi_host_problem(url: str, kind: str) -> str:
    """What is wrong with a ``redis+sentinel://`` (``kind`` 'Sentinel') or
    ``redis+cluster://`` ('cluster') URL, or ''."""
    from giftrelay.redis_client import ClusterURL, SentinelURL

    try:
        (SentinelURL if kind == "Sentinel" else ClusterURL)(url)
    except ValueError as exc:
        return f"is not a {kind} URL ({str(exc).partition(':')[0]})"
    return ""


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _check_host(host: str) -> None:
    """A host that looks like an IPv4 address must be one (999.1.1.1 is not)."""
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ConfigError(
                f"GIFTRELAY_HOST: {host!r} is not an IP address; use one of this machine's "
                "addresses, such as 127.0.0.1 (this machine only) or 0.0.0.0 (all), "
                "or pass --host"
            ) from None


WEBHOOK_SECRET_MIN = 16


def _check_webhook(url: str, secret: str | None) -> None:
    """An http(s) URL with a host, and a secret to sign with."""
    parts = urlsplit(url)
    problem = ""
    if parts.scheme not in ("http", "https"):
        problem = "is not an http:// or https:// URL"
    elif not parts.hostname:
        problem = "names no host"
    else:
        problem = _port_problem(parts)
    if problem:
        raise ConfigError(
            f"GIFTRELAY_WEBHOOK_URL: {redact(url)!r} {problem}; use the address the "
            "platform's backend receives webhooks on, such as https://backend.example/hooks"
        )
    if not secret or len(secret) < WEBHOOK_SECRET_MIN:
        raise ConfigError(
            f"GIFTRELAY_WEBHOOK_SECRET: {'missing' if not secret else 'too short'}; webhooks "
            f"to GIFTRELAY_WEBHOOK_URL are signed with it: set at least {WEBHOOK_SECRET_MIN} "
            "characters shared with the receiver, such as the output of `openssl rand -hex 32`"
        )
