"""The money core's Lua scripts: read once from package files, called by SHA.

Each script is its own ``.lua`` file with a header naming its KEYS, ARGV and
reply; ``_prelude.lua`` (shared helpers) is prepended to each when loaded.
"""

from __future__ import annotations

import enum
import hashlib
from importlib import resources

from redis.asyncio import Redis


class Script(enum.Enum):
    GIFT = "gift"
    GIFT_DEBIT = "gift_debit"
    GIFT_APPLY = "gift_apply"
    COLLECT = "collect"
    COLLECT_CREDIT = "collect_credit"
    TOPUP_CLAIM = "topup_claim"
    TOPUP = "topup"
    PAYOUT = "payout"
    CHARGEBACK = "chargeback"
    VERIFY = "verify"
    SET_CAP = "set_cap"
    SET_CONFIRM = "set_confirm"
    SET_COOLDOWN = "set_cooldown"
    STREAM_OPEN = "stream_open"
    STREAM_CLOSE = "stream_close"
    SET_GOAL = "set_goal"
    TEST_ALERT = "test_alert"
    REVOKE_OVERLAYS = "revoke_overlays"
    VIEWERS = "viewers"
    ANNOUNCE = "announce"
    BATTLE_INVITE = "battle_invite"
    BATTLE_ANSWER = "battle_answer"
    BATTLE_JOIN = "battle_join"
    BATTLE_LEAVE = "battle_leave"
    BATTLE_CLOSE = "battle_close"


def _read(name: str) -> str:
    return resources.files("giftrelay.money").joinpath("lua", f"{name}.lua").read_text("utf-8")


class Scripts:
    """The source and SHA1 of every script, read from the package once."""

    def __init__(self) -> None:
        prelude = _read("_prelude")
        self.source: dict[Script, str] = {s: prelude + "\n" + _read(s.value) for s in Script}
        self.sha: dict[Script, str] = {
            s: hashlib.sha1(src.encode(), usedforsecurity=False).hexdigest()
            for s, src in self.source.items()
        }

    async def load(self, redis: Redis) -> None:
        """SCRIPT LOAD each one: at start, and again after Redis lost its script cache."""
        for script, source in self.source.items():
            sha = await redis.script_load(source)
            if sha != self.sha[script]:  # pragma: no cover - Redis computes the same SHA1
                raise RuntimeError(f"Redis gave {script.value} another SHA1: {sha}")


SCRIPTS = Scripts()
