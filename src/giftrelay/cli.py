"""The ``giftrelay`` command: serve, mint tokens, and operate wallets and streams."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import gc
import math
import os
import re
import signal
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import click
import msgspec
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from giftrelay import __version__, auth, logs
from giftrelay.api import server as api_server
from giftrelay.api.payouts import Runner
from giftrelay.api.periods import period_bounds
from giftrelay.config import ConfigError, Settings, redact
from giftrelay.embedded import EmbeddedRedisError, free_port, running_url
from giftrelay.ledger import export as ledger_export
from giftrelay.ledger.reconcile import reconcile as reconcile_ledger
from giftrelay.ledger.recover import RecoverRefused
from giftrelay.ledger.recover import recover as recover_redis
from giftrelay.ledger.store import StoreUnavailable
from giftrelay.money import catalog, keys
from giftrelay.money.api import Money
from giftrelay.money.catalog import CatalogError
from giftrelay.redis_client import connect
from giftrelay.relay.server import Relay
from giftrelay.relay.workers import Workers, mark_ready
from giftrelay.runtime import (
    AlreadyRunning,
    Unreachable,
    claim_var_dir,
    consumer,
    ledger_store,
    money,
    redis_url,
    secret_for,
    watch_ledger,
)
from giftrelay.wire.errors import Refused
from giftrelay.wire.ids import REQUEST_ID_PATTERN

log = structlog.get_logger(__name__)

GC_FULL_EVERY = 100
"""Generation-1 collections before a full one may run (CPython's default: 10)."""

P = ParamSpec("P")
R = TypeVar("R")

DEMO_STREAM = "demo"
DEMO_CREATOR = "demo_creator"
DEMO_VIEWERS = ("demo_viewer", "demo_viewer2")
DEMO_COINS = 10_000


EXIT_CODES = """\b
Exit status:
  0  done
  1  failure or refusal: the command ran and said no (reconcile found a
     difference, a refused operation, another serve already runs here)
  2  usage or configuration error: a bad flag, setting or catalog, a busy
     port, a bad URL or credentials; the message names the setting to fix
  3  unreachable: Redis or the ledger store does not answer, or no giftrelay
     runs here; start it (or fix its URL) and retry
"""
USAGE, CONFIG, UNREACHABLE = 2, 2, 3


class Failure(click.ClickException):
    """A one-line error with its exit status (see EXIT_CODES)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("debug"))


def _translate(exc: BaseException) -> Failure | None:
    """The one line and exit status for a known failure; None for anything else."""
    if isinstance(exc, (ConfigError, CatalogError)):
        return Failure(str(exc), CONFIG)
    if isinstance(exc, auth.TokenError):  # the token command's arguments
        return Failure(str(exc), USAGE)
    if isinstance(exc, Unreachable):
        return Failure(str(exc), UNREACHABLE)
    if isinstance(exc, (EmbeddedRedisError, AlreadyRunning)):
        return Failure(str(exc))
    if isinstance(exc, Refused):
        return Failure(f"{exc.code}: {exc.message}")
    if isinstance(exc, StoreUnavailable):
        return Failure(f"the ledger store is unavailable: {exc}", UNREACHABLE)
    if isinstance(exc, RecoverRefused):
        return Failure(f"recover refused: {exc}")
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        return Failure(
            f"Redis stopped answering ({exc}): check it and GIFTRELAY_REDIS_URL, then retry",
            UNREACHABLE,
        )
    return None


def _friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Known failures become one line and an exit status (EXIT_CODES), not a traceback;
    ``giftrelay --debug`` shows the traceback instead."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            failure = _translate(exc)
            if failure is None or _debug():
                raise
            raise failure from None

    return wrapper


def _run(coro: Coroutine[Any, Any, R], *, fast: bool = False) -> R:
    """Run ``coro``; ``fast`` uses uvloop where it is installed (the relay's hot paths)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if fast:
        with contextlib.suppress(ImportError):
            import uvloop

            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def _settings(**overrides: Any) -> Settings:
    settings = Settings.load(**overrides)
    logs.configure(settings.log_format, settings.log_level)
    return settings


def _echo_json(value: object) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(value), indent=2))


@click.group(epilog=EXIT_CODES)
@click.option("--debug", is_flag=True, help="Show the traceback of a failure.")
@click.version_option(__version__, prog_name="giftrelay")
def main(debug: bool) -> None:
    """giftrelay: a real-time gift relay for live streams."""


# -- serve ---------------------------------------------------------------------------------


@main.command()
@click.option("--host", help="Address to listen on [env GIFTRELAY_HOST; 127.0.0.1].")
@click.option("--port", type=int, help="Port to listen on [env GIFTRELAY_PORT; 8080].")
@click.option("--workers", type=int, help="Worker processes [env GIFTRELAY_WORKERS; 1].")
@click.option("--redis-url", help="Use this Redis instead of the embedded one.")
@click.option("--ledger-url", help="sqlite:///path or postgresql://... ")
@click.option("--catalog", "catalog_path", help="Gift catalog TOML.")
@click.option(
    "--ledger/--no-ledger",
    "run_ledger",
    default=None,
    help="Run the ledger consumer in this process [default: on the embedded default only].",
)
@_friendly
def serve(
    host: str | None,
    port: int | None,
    workers: int | None,
    redis_url: str | None,
    ledger_url: str | None,
    catalog_path: str | None,
    run_ledger: bool | None,
) -> None:
    """Run giftrelay. With no Redis URL, it starts its own Redis under ./var/
    and runs the ledger consumer in-process on SQLite."""
    settings = _settings(
        host=host,
        port=port,
        workers=workers,
        redis_url=redis_url,
        ledger_url=ledger_url,
        catalog=catalog_path,
    )
    run_ledger = settings.embedded if run_ledger is None else run_ledger
    # First: a second serve on this var/ stops here, before it touches anything.
    lock = claim_var_dir(settings) if settings.embedded or run_ledger else None
    _check_listen(settings)
    api_server.check_port(settings)
    catalog.load(settings.catalog)  # a bad catalog stops start-up before anything runs
    secret = secret_for(settings)
    _run(_serve(settings, secret, run_ledger), fast=True)
    if lock is not None:
        lock.close()


def _stop_on_signals(on_force: Callable[[], None] | None = None) -> asyncio.Event:
    """An event set by SIGINT or SIGTERM; a second signal forces an immediate exit."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def signalled(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("second signal: exiting now", signal=sig.name)
            if on_force is not None:
                on_force()
            os._exit(128 + sig.value)
        log.info("stopping", signal=sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signalled, sig)
    return stop


async def _serve(settings: Settings, secret: str, run_ledger: bool) -> None:
    """Redis, money core and ledger consumer, then the relay worker(s); stopped in reverse."""
    workers: Workers | None = None
    stop = _stop_on_signals(lambda: workers.kill() if workers else None)
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(redis_url(settings, one_off=False))
        core = await stack.enter_async_context(money(settings, url))
        log.info("money core ready", redis=url, embedded=settings.embedded)
        ledger_stop = asyncio.Event()
        tasks = []
        if run_ledger:
            store = await stack.enter_async_context(ledger_store(settings))
            writer = consumer(settings, url, store)
            stack.push_async_callback(writer.redis.aclose)
            tasks.append(asyncio.create_task(writer.run(ledger_stop)))
        if settings.embedded:
            await _seed_demo(core)
        relay: Relay | None = None
        if settings.workers == 1:
            relay = Relay(settings, secret, url, core, core.catalog)
            port = await _listen(relay, settings)
            await stack.enter_async_context(api_server.serving(settings, secret, core))
            _tune_gc()
        else:
            port = settings.port or free_port()
            workers = Workers(settings, secret, url, port)
            await workers.start()
        _print_urls(settings, secret, url, port)
        if not run_ledger:
            tasks.append(asyncio.create_task(watch_ledger(settings, url, ledger_stop)))
        try:
            await stop.wait()
        finally:
            if relay is not None:
                await relay.shutdown()
            if workers is not None:
                await workers.stop()
            ledger_stop.set()
            await asyncio.gather(*tasks)


def _check_listen(settings: Settings) -> None:
    """Bind and release the address, so that a busy port or a foreign address stops
    start-up before Redis or a consumer starts; ``_listen`` still checks for real."""
    try:
        infos = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)
        for family, kind, proto, _, address in infos:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
    except OSError as exc:
        raise _listen_error(exc, settings) from None


async def _listen(relay: Relay, settings: Settings) -> int:
    """``relay.start``, a busy port or an address not of this machine named as a setting."""
    try:
        return await relay.start(settings.host, settings.port)
    except OSError as exc:
        raise _listen_error(exc, settings) from None


def _listen_error(exc: OSError, settings: Settings) -> ConfigError:
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(
            f"GIFTRELAY_PORT: port {settings.port} on {settings.host} is already in use "
            "(another giftrelay?): stop what uses it, or choose another port with "
            "GIFTRELAY_PORT or --port"
        )
    return ConfigError(
        f"GIFTRELAY_HOST: cannot listen on {settings.host!r} ({exc.strerror or exc}): "
        "use an address of this machine, such as 127.0.0.1 or 0.0.0.0, "
        "in GIFTRELAY_HOST or --host"
    )


def _tune_gc() -> None:
    """Keep full garbage collections rare and short in a relay worker.

    A full collection stops the worker for as long as it takes to walk every tracked
    object: at 5,000 viewers (~60 objects each) that was 240-275 ms, every ~13 s at
    1,000 gifts/s, and it was the relay's p99. What startup built (modules, catalog,
    scripts, settings, the Redis clients, the embedded Redis and ledger consumer when
    they run here) mostly lives as long as the process, so after one collection of
    what is already garbage it is frozen out of the walk. And a full collection may
    run only after 100 middle-generation collections instead of 10 (CPython's rule
    that the old generation must have grown by a quarter still applies). Closed
    connections' reference cycles then wait longer for it: about a minute at 1,000
    gifts/s, longer on a quiet relay, however many connections closed. CPython 3.14's
    incremental collector has no such threshold; there only the freeze applies.
    """
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, GC_FULL_EVERY)


async def _worker(settings: Settings, secret: str) -> None:
    """One of ``serve --workers N``'s processes: a relay sharing the port, nothing else."""
    stop = _stop_on_signals()
    assert settings.redis_url is not None
    async with (
        money(settings, settings.redis_url) as core,
        api_server.serving(settings, secret, core, reuse_port=True),
    ):
        relay = Relay(settings, secret, settings.redis_url, core, core.catalog)
        await relay.start(settings.host, settings.port, reuse_port=True)
        _tune_gc()
        mark_ready()
        try:
            await stop.wait()
        finally:
            await relay.shutdown()


@main.command(hidden=True)
@_friendly
def worker() -> None:
    """A relay worker process, started by ``serve --workers N`` (settings from the environment)."""
    settings = _settings()
    if not settings.redis_url:
        raise click.ClickException("a worker needs GIFTRELAY_REDIS_URL (serve sets it)")
    _run(_worker(settings, secret_for(settings)), fast=True)


async def _seed_demo(core: Money) -> None:
    """A live demo stream and demo viewers with demo coins: embedded default only."""
    await core.stream_open(DEMO_STREAM, DEMO_CREATOR, "giftrelay demo stream")
    for viewer in DEMO_VIEWERS:
        await core.topup(viewer, DEMO_COINS, f"demo-grant-{viewer}")


OVERLAY_WIDGETS = ("alerts", "top", "goal", "viewers")
OVERLAY_TTL = 30 * 86400
"""An OBS link must outlive a stream; a leaked one is ended with revoke_overlays."""


def _base_url(settings: Settings, port: int) -> str:
    """Where a browser on this machine reaches the relay."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _overlay_links(base_url: str, token: str) -> list[str]:
    """The four OBS Browser Source lines for an overlay token, as ``token`` prints them."""
    return [f"  {w:<8} {base_url}/overlay/{w}?token={token}" for w in OVERLAY_WIDGETS]


def _print_urls(settings: Settings, secret: str, url: str, port: int) -> None:
    """The start-up banner: what to open first, then where things are (80 columns)."""
    base = _base_url(settings, port)
    click.echo(f"giftrelay {__version__}: {settings.workers} worker(s) on {base}")
    if settings.embedded:
        _print_demo(secret, base)
    click.echo("Where things are:")
    click.echo(f"  websocket: {base.replace('http', 'ws', 1)}/ws")
    click.echo(f"  health:    {base}/healthz  (also /readyz, /metrics)")
    if settings.api_port:
        api = api_server.api_url(settings)
        click.echo(f"  api:       {api}  (admin token; docs: {api}/openapi.json)")
    click.echo(f"  redis:     {redact(url)}" + ("  (embedded)" if settings.embedded else ""))
    click.echo(f"  ledger:    {redact(settings.ledger)}")
    if settings.embedded:
        click.echo(f"  data:      {settings.var_path.resolve()}/  (GIFTRELAY_VAR_DIR)")
    click.echo("  press Ctrl+C to stop")


def _print_demo(secret: str, base: str) -> None:
    """The demo page, the demo stream's OBS links and the demo tokens."""

    def token(sub: str, role: auth.Role, stream: str | None = None, ttl: int = 86400) -> str:
        return auth.mint(secret, sub, role, ttl=ttl, stream=stream)

    viewer, creator = (
        token(DEMO_VIEWERS[0], auth.Role.VIEWER),
        token(DEMO_CREATOR, auth.Role.CREATOR),
    )
    overlay = token(DEMO_STREAM, auth.Role.OVERLAY, DEMO_STREAM, OVERLAY_TTL)
    click.echo("")
    click.echo("Demo page: open in a browser (valid 24 h)")
    click.echo(f"  {base}/?token={viewer}&creator={creator}")
    click.echo("")
    click.echo(f"OBS overlays for stream {DEMO_STREAM!r}: paste into a Browser Source (30 days)")
    for line in _overlay_links(base, overlay):
        click.echo(line)
    click.echo("")
    click.echo(f"Demo stream {DEMO_STREAM!r} by {DEMO_CREATOR!r} is live; tokens (24 h):")
    click.echo(f"    viewer  {DEMO_VIEWERS[0]}: {viewer}")
    click.echo(f"    creator {DEMO_CREATOR}: {creator}")
    click.echo(f"    overlay {DEMO_STREAM}: {overlay}")
    click.echo(f"    admin   admin: {token('admin', auth.Role.ADMIN)}")
    click.echo("")


# -- payouts -------------------------------------------------------------------------------


@main.group()
def payouts() -> None:
    """Scheduled creator payouts (docs/api.md)."""


def _period(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        period_bounds(value)
    except Refused as exc:
        raise click.BadParameter(exc.message) from None
    return value


@payouts.command("run")
@click.option(
    "--period",
    required=True,
    callback=_period,
    help="A month (2026-11) or quarter (2026-Q4), in UTC, that has ended.",
)
@_friendly
def payouts_run(period: str) -> None:
    """Pay every verified creator above the minimum for PERIOD, once per period even if run
    again, and write the period's batch file (GIFTRELAY_PAYOUT_BATCH_DIR); prints the run."""
    settings = _settings()

    async def go() -> object:
        async with (
            redis_url(settings) as url,
            money(settings, url) as core,
            ledger_store(settings) as store,
        ):
            return await Runner(core, store, settings).run(period)

    _echo_json(_run(go()))


# -- token ---------------------------------------------------------------------------------


@main.command()
@click.argument("subject")
@click.option(
    "--role",
    type=click.Choice([r.value for r in auth.Role]),
    default=auth.Role.VIEWER.value,
    show_default=True,
)
@click.option("--stream", help="The stream an overlay token may read.")
@click.option(
    "--ttl",
    type=int,
    help="Lifetime in seconds [default: 30 days for overlay tokens, which revoke_overlays "
    "can end early; 3600 for the others].",
)
@click.option(
    "--base-url",
    help="Where OBS reaches the relay, for an overlay token's widget links "
    "[default: http://GIFTRELAY_HOST:GIFTRELAY_PORT].",
)
@_friendly
def token(
    subject: str, role: str, stream: str | None, ttl: int | None, base_url: str | None
) -> None:
    """Print a JWT for SUBJECT; for an overlay token, then its four OBS widget links.

    The token alone goes to standard output (so `$(giftrelay token ...)` works); the
    links go to standard error, one per line.
    """
    settings = _settings()
    overlay = role == auth.Role.OVERLAY
    ttl = ttl if ttl is not None else OVERLAY_TTL if overlay else 3600
    minted = auth.mint(secret_for(settings), subject, auth.Role(role), ttl=ttl, stream=stream)
    click.echo(minted)
    if not overlay:
        return
    if stream is not None and _run(_stream_missing(settings, stream)):
        click.echo(
            f"warning: there is no stream {stream!r} yet: the links show nothing until it "
            f"is opened (giftrelay stream open {stream} --creator NAME)",
            err=True,
        )
    base_url = (base_url or _base_url(settings, settings.port)).rstrip("/")
    valid = f"{ttl / 86400:g} days" if ttl >= 86400 else f"{ttl} s"
    click.echo(f"OBS Browser Source links for stream {stream!r} (valid {valid}):", err=True)
    for line in _overlay_links(base_url, minted):
        click.echo(line, err=True)


async def _stream_missing(settings: Settings, stream: str) -> bool:
    """True when a reachable Redis (the configured one, or a running serve's embedded
    one) has no ``stream``; False when it has, or when no Redis can tell."""
    url = settings.redis_url or running_url(settings.var_path / "redis")
    if not url:
        return False
    redis = connect(url, timeout=settings.redis_timeout, retries=0)
    try:
        return not await redis.exists(keys.stream(stream))
    except (RedisConnectionError, RedisTimeoutError, OSError):
        return False
    finally:
        await redis.aclose()


# -- wallet ---------------------------------------------------------------------------------


def _with_money(operation: Callable[[Money], Awaitable[object]], *, writes: bool) -> None:
    """Run one money operation against the configured Redis and print its result as JSON;
    only one that ``writes`` may start the embedded Redis where no giftrelay runs."""
    settings = _settings()

    async def go() -> None:
        async with redis_url(settings, start=writes) as url, money(settings, url) as core:
            _echo_json(await operation(core))

    _run(go())


@main.group()
def wallet() -> None:
    """Top up and inspect wallets."""


@wallet.command("topup")
@click.argument("user")
@click.argument("coins", type=int)
@click.option(
    "--receipt",
    help="The payment's receipt id, the idempotency key: 8-64 characters of A-Z a-z 0-9 _ - "
    "(such as store-order-20240611-0042); default: a new one.",
)
@_friendly
def wallet_topup(user: str, coins: int, receipt: str | None) -> None:
    """Credit COINS to USER."""
    receipt = receipt or f"cli-{uuid.uuid4().hex}"
    if not re.fullmatch(REQUEST_ID_PATTERN, receipt):
        raise Failure(
            f"--receipt {receipt!r}: a receipt id is 8-64 characters of A-Z a-z 0-9 _ - "
            "(such as store-order-20240611-0042)",
            USAGE,
        )

    async def topup(core: Money) -> object:
        result = await core.topup(user, coins, receipt)
        return {"receipt": receipt, **msgspec.structs.asdict(result)}

    _with_money(topup, writes=True)


@wallet.command("show")
@click.argument("user")
@_friendly
def wallet_show(user: str) -> None:
    """Show USER's coins, diamonds, spending today and daily cap."""

    async def show(core: Money) -> object:
        return {"user": user, **msgspec.structs.asdict(await core.balance(user))}

    _with_money(show, writes=False)


# -- stream --------------------------------------------------------------------------------


@main.group("stream")
def stream_group() -> None:
    """Open, close and inspect streams."""


@stream_group.command("open")
@click.argument("stream")
@click.option("--creator", required=True, help="The creator who owns the stream.")
@click.option("--title", default="Live", show_default=True)
@_friendly
def stream_open(stream: str, creator: str, title: str) -> None:
    """Open (or reopen) STREAM for gifts."""
    _with_money(lambda core: core.stream_open(stream, creator, title), writes=True)


@stream_group.command("close")
@click.argument("stream")
@_friendly
def stream_close(stream: str) -> None:
    """End STREAM: no more gifts; viewers are told."""
    _with_money(lambda core: core.stream_close(stream), writes=True)


@stream_group.command("show")
@click.argument("stream")
@_friendly
def stream_show(stream: str) -> None:
    """Show STREAM's creator, status, totals and goal."""
    _with_money(lambda core: core.stream_info(stream), writes=False)


# -- ledger --------------------------------------------------------------------------------


@main.group(invoke_without_command=True)
@click.option("--name", help="This consumer's name in the group [default: host-pid-random].")
@click.option(
    "--batch-size", type=int, help="Entries per batch [env GIFTRELAY_LEDGER_BATCH; 1000]."
)
@click.option(
    "--metrics-port",
    type=int,
    help="Serve Prometheus /metrics on this port [env GIFTRELAY_LEDGER_METRICS_PORT; off].",
)
@click.pass_context
@_friendly
def ledger(
    ctx: click.Context, name: str | None, batch_size: int | None, metrics_port: int | None
) -> None:
    """Run the ledger consumer: the ledger stream into the ledger store, exactly once."""
    if ctx.invoked_subcommand is not None:
        return
    settings = _settings(ledger_batch=batch_size, ledger_metrics_port=metrics_port)
    if settings.ledger_metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.ledger_metrics_port, addr=settings.host)
        log.info("ledger metrics served", host=settings.host, port=settings.ledger_metrics_port)

    async def consume(stop: asyncio.Event, running: asyncio.Event) -> None:
        # A consumer is a service: it waits for its store however long an outage lasts
        # (the entries wait in Redis meanwhile), where one-off commands give up.
        store_ready = ledger_store(settings, wait=math.inf)
        async with redis_url(settings, check=False) as url, store_ready as store:
            writer = consumer(settings, url, store, name)
            running.set()
            try:
                await writer.run(stop)  # finishes its batch and returns once stop is set
            finally:
                await writer.redis.aclose()

    async def go() -> None:
        stop, running = _stop_on_signals(), asyncio.Event()
        work = asyncio.create_task(consume(stop, running))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([work, stopped], return_when=asyncio.FIRST_COMPLETED)
        if not running.is_set():
            work.cancel()  # stopped while still waiting for the store: nothing to finish
        stopped.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work

    _run(go())


@ledger.command("export")
@click.option("--since", help="From this time on (ISO date/time, UTC unless given; or ms).")
@click.option("--until", help="Before this time (same forms).")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv",
              show_default=True)  # fmt: skip
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              show_default=True, help="File to write; - for standard output.")  # fmt: skip
@_friendly
def ledger_export_command(since: str | None, until: str | None, fmt: str, output: str) -> None:
    """Export ledger events with their postings, one row per event, for accounting."""
    settings = _settings()
    try:
        since_ms = ledger_export.parse_time(since) if since else None
        until_ms = ledger_export.parse_time(until) if until else None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None

    async def go() -> None:
        from rich.progress import Progress

        async with ledger_store(settings) as store:
            total = await store.count(since_ms, until_ms)
            opened = (
                contextlib.nullcontext(sys.stdout)
                if output == "-"
                else open(output, "w", encoding="utf-8", newline="")  # noqa: ASYNC230, SIM115
            )
            progress = Progress(console=_stderr_console(), transient=True, disable=output == "-")
            with opened as out, progress:
                task = progress.add_task("exporting", total=total)
                rows = store.export(since_ms, until_ms)
                async for n in ledger_export.write(rows, out, fmt):
                    if n % 1000 == 0:
                        progress.update(task, completed=n)
        log.info("ledger exported", events=total, format=fmt, output=output)

    _run(go())


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(file=sys.stderr)


# -- reconcile -----------------------------------------------------------------------------


@main.command()
@click.option("--wait", type=float, default=30.0, show_default=True,
              help="Seconds to wait for the ledger consumer to catch up.")  # fmt: skip
@_friendly
def reconcile(wait: float) -> None:
    """Prove every wallet in Redis agrees with the ledger. Exit 1 on any difference."""
    settings = _settings()

    async def go() -> bool:
        async with redis_url(settings) as url, ledger_store(settings) as store:
            redis = connect(url, timeout=settings.redis_timeout)
            try:
                report = await reconcile_ledger(redis, store, wait=wait)
            finally:
                await redis.aclose()
        where = report.position or "(empty)"
        click.echo(f"reconcile: {report.wallets} wallets against the ledger up to {where}")
        for line in report.lines():
            click.echo(line)
        if report.ok:
            click.echo("OK: every wallet agrees with the ledger; every asset sums to zero")
        else:
            click.echo(f"FAILED: {len(report.lines())} problem(s)")
        return report.ok

    if not _run(go()):
        sys.exit(1)


# -- recover -------------------------------------------------------------------------------


@main.command()
@click.option("--force", is_flag=True,
              help="Recover even though a relay or consumer seems to be running.")  # fmt: skip
@_friendly
def recover(force: bool) -> None:
    """After Redis lost data, bring every wallet, idempotency record and stream total
    back to what the ledger store holds. Stop every relay and consumer first; exit 0
    when done, then run `giftrelay reconcile`."""
    settings = _settings()

    async def go() -> None:
        from rich.progress import Progress

        async with redis_url(settings) as url, ledger_store(settings) as store:
            redis = connect(url, timeout=max(settings.redis_timeout, 10.0))
            progress = Progress(console=_stderr_console(), transient=True)
            tasks: dict[str, Any] = {}

            def tell(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = progress.add_task(stage, total=total)
                progress.update(tasks[stage], completed=done, total=total)

            try:
                with progress:
                    outcome = await recover_redis(
                        redis,
                        store,
                        retention_ms=settings.idempotency_ttl * 1000,
                        receipt_retention_ms=settings.receipt_ttl * 1000,
                        force=force,
                        progress=tell,
                    )
            finally:
                await redis.aclose()
        click.echo(
            f"recovered from {outcome.events} ledger events: {outcome.wallets} wallets,"
            f" {outcome.records} idempotency records, {outcome.streams} streams"
            f" ({outcome.drained} entries first written from Redis's ledger stream)"
        )
        if outcome.poison:
            click.echo(
                f"warning: {outcome.poison} entries of Redis's ledger stream are no ledger"
                " event; the consumer will move them to the dead letters"
            )
        for stream in outcome.unknown_streams:
            click.echo(f"warning: stream {stream} has gifts in the ledger but Redis no longer"
                       " knows it: open it again (giftrelay stream open)")  # fmt: skip
        click.echo("done: start the consumers and relays, then run `giftrelay reconcile`")

    _run(go())
