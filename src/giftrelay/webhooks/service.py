"""A deliverer or a sender built from the settings."""

from __future__ import annotations

from redis.asyncio import Redis

from giftrelay.config import ConfigError, Settings
from giftrelay.webhooks.deliverer import Deliverer
from giftrelay.webhooks.retry import Schedule
from giftrelay.webhooks.sender import Sender

DAY_MS = 86_400_000


def schedule_for(settings: Settings) -> Schedule:
    return Schedule(
        base_ms=round(settings.webhook_retry_base * 1000),
        cap_ms=max(round(settings.webhook_retry_cap * 1000), 1),
        dead_after_ms=round(settings.webhook_dead_after_days * DAY_MS),
    )


def configured(settings: Settings) -> tuple[str, str]:
    """The URL and secret; :class:`ConfigError` naming the setting when no URL is set (a
    URL without a secret is refused when the settings load)."""
    if not settings.webhook_url or not settings.webhook_secret:
        raise ConfigError(
            "GIFTRELAY_WEBHOOK_URL: not set; webhooks need the address to POST to "
            "(and GIFTRELAY_WEBHOOK_SECRET to sign with)"
        )
    return settings.webhook_url, settings.webhook_secret


def sender_for(settings: Settings) -> Sender:
    """The sender to ``GIFTRELAY_WEBHOOK_URL``; :class:`ConfigError` when none is set."""
    url, secret = configured(settings)
    return Sender(
        url,
        secret,
        timeout=settings.webhook_timeout,
        concurrency=settings.webhook_concurrency,
    )


def deliverer_for(settings: Settings, redis: Redis, name: str | None = None) -> Deliverer:
    return Deliverer(
        redis,
        sender_for(settings),
        schedule_for(settings),
        name=name,
        concurrency=settings.webhook_concurrency,
        backlog=settings.webhook_backlog,
    )
