"""``serve`` and its hidden ``worker``: the relay, with Redis, money core and ledger
consumer as the settings ask, until a signal stops it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import socket

import click
import structlog

from giftrelay import mover, referee
from giftrelay.api import server as api_server
from giftrelay.cli import webhooks
from giftrelay.cli.banner import (
    DEMO_COINS,
    DEMO_CREATOR,
    DEMO_RIVAL,
    DEMO_RIVAL_STREAM,
    DEMO_STREAM,
    DEMO_VIEWERS,
    print_urls,
)
from giftrelay.cli.errors import friendly
from giftrelay.cli.running import load_settings, run, stop_on_signals
from giftrelay.config import ConfigError, Settings
from giftrelay.embedded import free_port
from giftrelay.money import catalog
from giftrelay.money.api import Money
from giftrelay.relay.server import Relay
from giftrelay.relay.workers import Workers, mark_ready
from giftrelay.runtime import (
    claim_var_dir,
    consumer,
    ledger_store,
    money,
    redis_url,
    secret_for,
    watch_ledger,
)

log = structlog.get_logger(__name__)

GC_FULL_EVERY = 100
"""Generation-1 collections before a full one may run (CPython's default: 10)."""


@click.command()
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
@friendly
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
    settings = load_settings(
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
    run(_serve(settings, secret, run_ledger), fast=True)
    if lock is not None:
        lock.close()


async def _serve(settings: Settings, secret: str, run_ledger: bool) -> None:
    """Redis, money core and ledger consumer, then the relay worker(s); stopped in reverse."""
    workers: Workers | None = None
    stop = stop_on_signals(lambda: workers.kill() if workers else None)
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
        if settings.webhook_url:  # signed webhooks of every ledger movement
            hooks = webhooks.deliverer(settings, url)
            stack.push_async_callback(hooks.outbox.redis.aclose)
            await hooks.outbox.ensure_group()  # before any movement of this serve
            tasks.append(asyncio.create_task(hooks.run(ledger_stop)))
        tasks.append(asyncio.create_task(referee.run(core, ledger_stop)))  # battles' ends
        if core.steps is not None:  # a Redis Cluster: transfers left behind, applied
            tasks.append(asyncio.create_task(mover.run(core.steps, ledger_stop)))
            if not settings.ack_replicas:
                log.warning(
                    "GIFTRELAY_ACK_REPLICAS is 0 on a Redis Cluster: a failover can lose one"
                    " shard's half of a gift (the debit or the credit) while the other stays;"
                    " set GIFTRELAY_ACK_REPLICAS=1 (docs/money.md, On a Redis Cluster)"
                )
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
        print_urls(settings, secret, url, port)
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
    stop = stop_on_signals()
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


@click.command(hidden=True)
@friendly
def worker() -> None:
    """A relay worker process, started by ``serve --workers N`` (settings from the environment)."""
    settings = load_settings()
    if not settings.redis_url:
        raise click.ClickException("a worker needs GIFTRELAY_REDIS_URL (serve sets it)")
    run(_worker(settings, secret_for(settings)), fast=True)


async def _seed_demo(core: Money) -> None:
    """A live demo stream and demo viewers with demo coins: embedded default only."""
    await core.stream_open(DEMO_STREAM, DEMO_CREATOR, "giftrelay demo stream")
    await core.stream_open(DEMO_RIVAL_STREAM, DEMO_RIVAL, "the demo's rival stream")
    for viewer in DEMO_VIEWERS:
        await core.topup(viewer, DEMO_COINS, f"demo-grant-{viewer}")
