"""``token``: mint a JWT, and for an overlay token its OBS links."""

from __future__ import annotations

import click
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from giftrelay import auth
from giftrelay.cli.banner import OVERLAY_TTL, browser_url, overlay_links
from giftrelay.cli.errors import friendly
from giftrelay.cli.running import load_settings, run
from giftrelay.config import Settings
from giftrelay.embedded import running_url
from giftrelay.money import keys
from giftrelay.redis_client import connect
from giftrelay.runtime import secret_for


@click.command()
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
@friendly
def token(
    subject: str, role: str, stream: str | None, ttl: int | None, base_url: str | None
) -> None:
    """Print a JWT for SUBJECT; for an overlay token, then its four OBS widget links.

    The token alone goes to standard output (so `$(giftrelay token ...)` works); the
    links go to standard error, one per line.
    """
    settings = load_settings()
    overlay = role == auth.Role.OVERLAY
    ttl = ttl if ttl is not None else OVERLAY_TTL if overlay else 3600
    minted = auth.mint(secret_for(settings), subject, auth.Role(role), ttl=ttl, stream=stream)
    click.echo(minted)
    if not overlay:
        return
    if stream is not None and run(_stream_missing(settings, stream)):
        click.echo(
            f"warning: there is no stream {stream!r} yet: the links show nothing until it "
            f"is opened (giftrelay stream open {stream} --creator NAME)",
            err=True,
        )
    base_url = (base_url or browser_url(settings, settings.port)).rstrip("/")
    valid = f"{ttl / 86400:g} days" if ttl >= 86400 else f"{ttl} s"
    click.echo(f"OBS Browser Source links for stream {stream!r} (valid {valid}):", err=True)
    for line in overlay_links(base_url, minted):
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
