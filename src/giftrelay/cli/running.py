"""What every command shares: its settings and logging, its event loop, its signals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import structlog

from giftrelay import logs
from giftrelay.config import Settings

log = structlog.get_logger(__name__)

R = TypeVar("R")


def run(coro: Coroutine[Any, Any, R], *, fast: bool = False) -> R:
    """Run ``coro``; ``fast`` uses uvloop where it is installed (the relay's hot paths)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if fast:
        with contextlib.suppress(ImportError):
            import uvloop

            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def load_settings(**overrides: Any) -> Settings:
    settings = Settings.load(**overrides)
    logs.configure(settings.log_format, settings.log_level)
    return settings


def stop_on_signals(on_force: Callable[[], None] | None = None) -> asyncio.Event:
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


def echo_json(value: object) -> None:
    """A command's result on stdout, as indented JSON."""
    import click
    import msgspec

    click.echo(msgspec.json.format(msgspec.json.encode(value), indent=2))


def stderr_console() -> Any:
    """A rich console on stderr: progress there, results on stdout."""
    from rich.console import Console

    return Console(file=sys.stderr)
