"""The ledger's commands: run its consumer, export it, reconcile Redis against it, and
recover Redis from it."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
from typing import Any

import click
import structlog

from giftrelay.cli.errors import friendly
from giftrelay.cli.running import load_settings, run, stderr_console, stop_on_signals
from giftrelay.ledger import export as ledger_export
from giftrelay.ledger.reconcile import reconcile as reconcile_ledger
from giftrelay.ledger.recover import recover as recover_redis
from giftrelay.money import keys
from giftrelay.redis_client import connect, is_cluster
from giftrelay.runtime import consumer, ledger_store, money, redis_url

log = structlog.get_logger(__name__)


@click.group(invoke_without_command=True)
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
@friendly
def ledger(
    ctx: click.Context, name: str | None, batch_size: int | None, metrics_port: int | None
) -> None:
    """Run the ledger consumer: the ledger stream into the ledger store, exactly once."""
    if ctx.invoked_subcommand is not None:
        return
    settings = load_settings(ledger_batch=batch_size, ledger_metrics_port=metrics_port)
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
        stop, running = stop_on_signals(), asyncio.Event()
        work = asyncio.create_task(consume(stop, running))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([work, stopped], return_when=asyncio.FIRST_COMPLETED)
        if not running.is_set():
            work.cancel()  # stopped while still waiting for the store: nothing to finish
        stopped.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work

    run(go())


@ledger.command("export")
@click.option("--since", help="From this time on (ISO date/time, UTC unless given; or ms).")
@click.option("--until", help="Before this time (same forms).")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv",
              show_default=True)  # fmt: skip
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              show_default=True, help="File to write; - for standard output.")  # fmt: skip
@friendly
def ledger_export_command(since: str | None, until: str | None, fmt: str, output: str) -> None:
    """Export ledger events with their postings, one row per event, for accounting."""
    settings = load_settings()
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
            progress = Progress(console=stderr_console(), transient=True, disable=output == "-")
            with opened as out, progress:
                task = progress.add_task("exporting", total=total)
                rows = store.export(since_ms, until_ms)
                async for n in ledger_export.write(rows, out, fmt):
                    if n % 1000 == 0:
                        progress.update(task, completed=n)
        log.info("ledger exported", events=total, format=fmt, output=output)

    run(go())


# -- reconcile -----------------------------------------------------------------------------


@click.command()
@click.option("--wait", type=float, default=30.0, show_default=True,
              help="Seconds to wait for the ledger consumer to catch up.")  # fmt: skip
@friendly
def reconcile(wait: float) -> None:
    """Prove every wallet in Redis agrees with the ledger. Exit 1 on any difference."""
    settings = load_settings()

    async def go() -> bool:
        async with redis_url(settings) as url, ledger_store(settings) as store:
            redis = connect(url, timeout=settings.redis_timeout)
            try:
                report = await reconcile_ledger(redis, store, wait=wait)
            finally:
                await redis.aclose()
        where = report.position or "(empty)"
        if report.shards:  # a Redis Cluster: each node as of its own instant
            click.echo(
                f"reconcile: {report.wallets} wallets on {len(report.shards)} shards against"
                f" the ledger of {len(keys.LEDGERS)} bucket streams (newest id {where}),"
                f" {report.in_flight} gift(s) in flight"
            )
            for shard in report.shards:
                click.echo(str(shard))
        else:
            click.echo(f"reconcile: {report.wallets} wallets against the ledger up to {where}")
        for line in report.lines():
            click.echo(line)
        if report.ok:
            click.echo("OK: every wallet agrees with the ledger; every asset sums to zero")
        else:
            click.echo(f"FAILED: {len(report.lines())} problem(s)")
        return report.ok

    if not run(go()):
        sys.exit(1)


# -- recover -------------------------------------------------------------------------------


@click.command()
@click.option("--force", is_flag=True,
              help="Recover even though a relay or consumer seems to be running.")  # fmt: skip
@friendly
def recover(force: bool) -> None:
    """After Redis lost data, bring every wallet, idempotency record and stream total
    back to what the ledger store holds. Stop every relay and consumer first; exit 0
    when done, then run `giftrelay reconcile`."""
    settings = load_settings()

    async def go() -> None:
        from rich.progress import Progress

        async with contextlib.AsyncExitStack() as stack:
            url = await stack.enter_async_context(redis_url(settings))
            store = await stack.enter_async_context(ledger_store(settings))
            redis = connect(url, timeout=max(settings.redis_timeout, 10.0))
            stack.push_async_callback(redis.aclose)
            # On a Redis Cluster the gifts waiting in the outboxes are applied first, by
            # the money core's own steps.
            core = (
                await stack.enter_async_context(money(settings, url)) if is_cluster(redis) else None
            )
            progress = Progress(console=stderr_console(), transient=True)
            tasks: dict[str, Any] = {}

            def tell(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = progress.add_task(stage, total=total)
                progress.update(tasks[stage], completed=done, total=total)

            with progress:
                outcome = await recover_redis(
                    redis,
                    store,
                    retention_ms=settings.idempotency_ttl * 1000,
                    receipt_retention_ms=settings.receipt_ttl * 1000,
                    force=force,
                    progress=tell,
                    steps=core.steps if core is not None else None,
                    catalog=core.catalog if core is not None else None,
                )
        if outcome.swept:
            click.echo(f"applied {outcome.swept} gift(s) waiting in the outboxes first")
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

    run(go())
