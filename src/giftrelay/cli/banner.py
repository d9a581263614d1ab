"""What giftrelay prints for people to reach it: the start-up banner, with the demo's
tokens and links, and the OBS overlay links that ``token`` prints too."""

from __future__ import annotations

import click

from giftrelay import __version__, auth
from giftrelay.api import server as api_server
from giftrelay.config import Settings, redact

DEMO_STREAM = "demo"
DEMO_CREATOR = "demo_creator"
DEMO_VIEWERS = ("demo_viewer", "demo_viewer2")
DEMO_COINS = 10_000
DEMO_RIVAL_STREAM = "rival"
DEMO_RIVAL = "rival_creator"
"""A second live stream and its creator, for a battle against the demo stream."""

OVERLAY_WIDGETS = ("alerts", "top", "goal", "viewers", "battle")
OVERLAY_TTL = 30 * 86400
"""An OBS link must outlive a stream; a leaked one is ended with revoke_overlays."""


def browser_url(settings: Settings, port: int) -> str:
    """Where a browser on this machine reaches the relay."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def overlay_links(base_url: str, token: str) -> list[str]:
    """The OBS Browser Source lines for an overlay token, as ``token`` prints them."""
    return [f"  {w:<8} {base_url}/overlay/{w}?token={token}" for w in OVERLAY_WIDGETS]


def print_urls(settings: Settings, secret: str, url: str, port: int) -> None:
    """The start-up banner: what to open first, then where things are (80 columns)."""
    base = browser_url(settings, port)
    click.echo(f"giftrelay {__version__}: {settings.workers} worker(s) on {base}")
    if settings.embedded:
        print_demo(secret, base)
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


def print_demo(secret: str, base: str) -> None:
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
    rival = token(DEMO_RIVAL, auth.Role.CREATOR)
    viewer2 = token(DEMO_VIEWERS[1], auth.Role.VIEWER)
    click.echo(f"  a battle: invite {DEMO_RIVAL_STREAM!r} from it, accept on the rival's page:")
    click.echo(f"  {base}/?token={viewer2}&creator={rival}&stream={DEMO_RIVAL_STREAM}")
    click.echo("")
    click.echo(f"OBS overlays for stream {DEMO_STREAM!r}: paste into a Browser Source (30 days)")
    for line in overlay_links(base, overlay):
        click.echo(line)
    click.echo("")
    click.echo(f"Demo stream {DEMO_STREAM!r} by {DEMO_CREATOR!r} is live; tokens (24 h):")
    click.echo(f"    viewer  {DEMO_VIEWERS[0]}: {viewer}")
    click.echo(f"    creator {DEMO_CREATOR}: {creator}")
    click.echo(f"    overlay {DEMO_STREAM}: {overlay}")
    click.echo(f"    admin   admin: {token('admin', auth.Role.ADMIN)}")
    click.echo("")
