"""``webhooks``: the deliverer alone, dead letters sent again, and its state."""

from __future__ import annotations

import sys

import click

from giftrelay.cli.errors import friendly
from giftrelay.cli.running import echo_json, load_settings, run, stderr_console, stop_on_signals
from giftrelay.config import Settings
from giftrelay.redis_client import connect
from giftrelay.runtime import redis_url
from giftrelay.webhooks import admin as webhooks_admin
from giftrelay.webhooks import service as webhooks_service
from giftrelay.webhooks.deliverer import Deliverer


def deliverer(settings: Settings, url: str, name: str | None = None) -> Deliverer:
    """A webhook deliverer with its own client: its reads block longer than money calls may."""
    redis = connect(url, timeout=settings.redis_timeout + 0.5, name="giftrelay-webhooks")
    return webhooks_service.deliverer_for(settings, redis, name)


@click.group("webhooks")
def webhooks_group() -> None:
    """Signed webhooks of every ledger movement (docs/api.md, Webhooks)."""


@webhooks_group.command("run")
@click.option("--name", help="This deliverer's name [default: host-pid-random]; a deliverer "
              "restarted under its old name takes its lease back at once.")  # fmt: skip
@click.option("--metrics-port", type=int,
              help="Serve Prometheus /metrics on this port [env GIFTRELAY_WEBHOOK_METRICS_PORT;"
              " off].")  # fmt: skip
@friendly
def webhooks_run(name: str | None, metrics_port: int | None) -> None:
    """Deliver webhooks alone (giftrelay serve does it in-process when
    GIFTRELAY_WEBHOOK_URL is set). Several may run: one sends, the others stand by."""
    settings = load_settings(webhook_metrics_port=metrics_port)
    webhooks_service.configured(settings)
    if settings.webhook_metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.webhook_metrics_port, addr=settings.host)

    async def go() -> None:
        stop = stop_on_signals()
        async with redis_url(settings, check=False) as url:
            hooks = deliverer(settings, url, name)
            try:
                await hooks.run(stop)
            finally:
                await hooks.outbox.redis.aclose()

    run(go())


@webhooks_group.command("replay")
@click.option("--id", "ids", multiple=True,
              help="Only the dead letter of this event id (repeat for several).")  # fmt: skip
@friendly
def webhooks_replay(ids: tuple[str, ...]) -> None:
    """Send the dead letters again, oldest first; each delivered one is removed. Exit 0
    when all were delivered (or there were none), 1 when some failed again (they stay
    dead letters) or an --id has none."""
    settings = load_settings()
    webhooks_service.configured(settings)

    async def go() -> tuple[webhooks_admin.Replayed, set[str]]:
        from rich.progress import Progress

        async with redis_url(settings, start=False) as url:
            redis = connect(url, timeout=settings.redis_timeout)
            sender = webhooks_service.sender_for(settings)
            try:
                letters = await webhooks_admin.dead_letters(redis, frozenset(ids))
                missing = set(ids) - {letter.event.id for letter in letters}
                with Progress(console=stderr_console(), transient=True) as progress:
                    task = progress.add_task("replaying dead letters", total=len(letters))
                    result = await webhooks_admin.replay(
                        redis, sender, letters, lambda n, _: progress.update(task, completed=n)
                    )
            finally:
                await sender.aclose()
                await redis.aclose()
        return result, missing

    result, missing = run(go())
    for event_id, reason in result.failed:
        click.echo(f"failed: {event_id}: {reason}")
    for event_id in sorted(missing):
        click.echo(f"not found: no dead letter has event id {event_id!r}")
    click.echo(f"replayed {result.delivered} of {result.total} dead letter(s)"
               + (f"; {len(result.failed)} failed again and stay dead letters: run"
                  " `giftrelay webhooks replay` again later" if result.failed else ""))  # fmt: skip
    if result.failed or missing:
        sys.exit(1)


@webhooks_group.command("status")
@friendly
def webhooks_status() -> None:
    """Show the deliverer sending now, the events queued and retrying, the ledger entries
    not read yet and the dead letters, as JSON."""
    settings = load_settings()

    async def go() -> webhooks_admin.Status:
        async with redis_url(settings, start=False) as url:
            redis = connect(url, timeout=settings.redis_timeout)
            try:
                return await webhooks_admin.status(redis)
            finally:
                await redis.aclose()

    echo_json(run(go()))
