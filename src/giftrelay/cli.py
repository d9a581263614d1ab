"""The ``giftrelay`` command: serve, mint tokens, and operate wallets and streams."""

from __future__ import annotations

import asyncio
import functools
import signal
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import click
import msgspec
import structlog

from giftrelay import __version__, auth, catalog, logs
from giftrelay.catalog import CatalogError
from giftrelay.config import ConfigError, Settings
from giftrelay.embedded import EmbeddedRedisError, RedisServer
from giftrelay.errors import Refused
from giftrelay.money import Money
from giftrelay.runtime import money, redis_url, secret_for

log = structlog.get_logger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

DEMO_STREAM = "demo"
DEMO_CREATOR = "demo_creator"
DEMO_VIEWERS = ("demo_viewer", "demo_viewer2")
DEMO_COINS = 10_000


def _friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Known failures become a one-line message and exit status 1, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, CatalogError, EmbeddedRedisError, auth.TokenError) as exc:
            raise click.ClickException(str(exc)) from None
        except Refused as exc:
            raise click.ClickException(f"{exc.code}: {exc.message}") from None

    return wrapper


def _run(coro: Coroutine[Any, Any, R]) -> R:
    return asyncio.run(coro)


def _settings(**overrides: Any) -> Settings:
    settings = Settings.load(**overrides)
    logs.configure(settings.log_format, settings.log_level)
    return settings


def _echo_json(value: object) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(value), indent=2))


@click.group()
@click.version_option(__version__, prog_name="giftrelay")
def main() -> None:
    """giftrelay: a real-time gift relay for live streams."""


# -- serve ---------------------------------------------------------------------------------


@main.command()
@click.option("--host", help="Address to listen on [env GIFTRELAY_HOST; 127.0.0.1].")
@click.option("--port", type=int, help="Port to listen on [env GIFTRELAY_PORT; 8080].")
@click.option("--workers", type=int, help="Worker processes [env GIFTRELAY_WORKERS; 1].")
@click.option("--redis-url", help="Use this Redis instead of the embedded one.")
@click.option("--ledger-url", help="sqlite:///path or postgresql://... ")
@click.option("--catalog", "catalog_path", help="Gift catalog TOML.")
@_friendly
def serve(
    host: str | None,
    port: int | None,
    workers: int | None,
    redis_url: str | None,
    ledger_url: str | None,
    catalog_path: str | None,
) -> None:
    """Run giftrelay. With no Redis URL, it starts its own Redis under ./var/."""
    settings = _settings(
        host=host,
        port=port,
        workers=workers,
        redis_url=redis_url,
        ledger_url=ledger_url,
        catalog=catalog_path,
    )
    catalog.load(settings.catalog)  # a bad catalog stops start-up before anything runs
    secret = secret_for(settings)
    _run(_serve(settings, secret))


async def _serve(settings: Settings, secret: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    server: RedisServer | None = None
    if settings.embedded:
        server = RedisServer(settings.var_path / "redis")
        server.start()
    url = server.url if server else settings.redis_url
    assert url is not None
    try:
        async with money(settings, url) as core:
            log.info("money core ready", redis=url, embedded=server is not None)
            if server is not None:
                await _seed_demo(core)
                _print_demo(settings, secret, url)
            await stop.wait()
            log.info("stopping")
    finally:
        if server is not None:
            server.stop()
            log.info("embedded redis stopped")


async def _seed_demo(core: Money) -> None:
    """A live demo stream and demo viewers with demo coins: embedded default only."""
    await core.stream_open(DEMO_STREAM, DEMO_CREATOR, "giftrelay demo stream")
    for viewer in DEMO_VIEWERS:
        await core.topup(viewer, DEMO_COINS, f"demo-grant-{viewer}")


def _print_demo(settings: Settings, secret: str, url: str) -> None:
    def token(sub: str, role: auth.Role, stream: str | None = None) -> str:
        return auth.mint(secret, sub, role, ttl=86400, stream=stream)

    click.echo(f"giftrelay {__version__} on the embedded default")
    click.echo(f"  redis:   {url}  (data in {settings.var_path / 'redis'})")
    click.echo(f"  stream:  {DEMO_STREAM!r} by {DEMO_CREATOR!r}, live")
    click.echo("  demo tokens (24 h):")
    click.echo(f"    viewer  {DEMO_VIEWERS[0]}: {token(DEMO_VIEWERS[0], auth.Role.VIEWER)}")
    click.echo(f"    creator {DEMO_CREATOR}: {token(DEMO_CREATOR, auth.Role.CREATOR)}")
    click.echo(f"    overlay {DEMO_STREAM}: {token(DEMO_STREAM, auth.Role.OVERLAY, DEMO_STREAM)}")
    click.echo(f"    admin   admin: {token('admin', auth.Role.ADMIN)}")
    click.echo("  press Ctrl+C to stop")


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
@click.option("--ttl", type=int, default=3600, show_default=True, help="Lifetime in seconds.")
@_friendly
def token(subject: str, role: str, stream: str | None, ttl: int) -> None:
    """Print a JWT for SUBJECT."""
    settings = _settings()
    click.echo(auth.mint(secret_for(settings), subject, auth.Role(role), ttl=ttl, stream=stream))


# -- wallet ---------------------------------------------------------------------------------


def _with_money(operation: Callable[[Money], Awaitable[object]]) -> None:
    """Run one money operation against the configured Redis and print its result as JSON."""
    settings = _settings()

    async def go() -> None:
        async with redis_url(settings) as url, money(settings, url) as core:
            _echo_json(await operation(core))

    _run(go())


@main.group()
def wallet() -> None:
    """Top up and inspect wallets."""


@wallet.command("topup")
@click.argument("user")
@click.argument("coins", type=int)
@click.option("--receipt", help="Payment receipt id (the idempotency key); default: a new one.")
@_friendly
def wallet_topup(user: str, coins: int, receipt: str | None) -> None:
    """Credit COINS to USER."""
    receipt = receipt or f"cli-{uuid.uuid4().hex}"

    async def topup(core: Money) -> object:
        result = await core.topup(user, coins, receipt)
        return {"receipt": receipt, **msgspec.structs.asdict(result)}

    _with_money(topup)


@wallet.command("show")
@click.argument("user")
@_friendly
def wallet_show(user: str) -> None:
    """Show USER's coins, diamonds, spending today and daily cap."""

    async def show(core: Money) -> object:
        return {"user": user, **msgspec.structs.asdict(await core.balance(user))}

    _with_money(show)


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
    _with_money(lambda core: core.stream_open(stream, creator, title))


@stream_group.command("close")
@click.argument("stream")
@_friendly
def stream_close(stream: str) -> None:
    """End STREAM: no more gifts; viewers are told."""
    _with_money(lambda core: core.stream_close(stream))


@stream_group.command("show")
@click.argument("stream")
@_friendly
def stream_show(stream: str) -> None:
    """Show STREAM's creator, status, totals and goal."""
    _with_money(lambda core: core.stream_info(stream))
