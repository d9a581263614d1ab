"""Creators: verification (payouts need it) and scheduled payout runs."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from giftrelay.api.bodies import strict
from giftrelay.api.errors import RESPONSES
from giftrelay.api.payouts import PayoutRun, Runner
from giftrelay.api.periods import from_ms
from giftrelay.api.services import Services
from giftrelay.money.platform import MAX_REASON


class VerificationRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    verified: bool = True
    """False withdraws a verification (e.g. documents found false): no more payouts."""
    reference: Annotated[str, msgspec.Meta(max_length=MAX_REASON)] = ""
    """The verification provider's case id, kept in the ledger for audits."""


class VerificationReply(msgspec.Struct, frozen=True):
    creator: str
    verified: bool
    since: str | None
    """When the verification was recorded (ISO 8601), or null."""


class PayoutRunRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    period: str
    """A month (2026-11) or a quarter (2026-Q4) that has ended, in UTC."""


@post("/creators/{creator:str}/verification", status_code=200, responses=RESPONSES)
async def record_verification(
    request: Request[Any, Any, Any],
    creator: FromPath[str],
    data: JSONBody[VerificationRequest],
    api: NamedDependency[Services],
) -> VerificationReply:
    """Record that a creator's identity was verified (or withdraw it); in the ledger too."""
    data = await strict(request, data)
    since = await api.platform.verify(creator, data.verified, data.reference)
    return VerificationReply(creator, data.verified, from_ms(since) if since else None)


@get("/creators/{creator:str}/verification", responses=RESPONSES)
async def show_verification(
    creator: FromPath[str], api: NamedDependency[Services]
) -> VerificationReply:
    """Whether the creator's verification is on record, and since when."""
    since = await api.platform.verified_since(creator)
    return VerificationReply(creator, since is not None, from_ms(since) if since else None)


@post("/payout-runs", status_code=200, responses=RESPONSES)
async def run_payouts(
    request: Request[Any, Any, Any],
    data: JSONBody[PayoutRunRequest],
    api: NamedDependency[Services],
) -> PayoutRun:
    """Pay every verified creator at or above the minimum for an ended period, once per
    period even when run again, and write the period's batch file for the payment provider
    (the same as ``giftrelay payouts run --period P``)."""
    data = await strict(request, data)
    runner = Runner(api.money, await api.store.get(), api.settings)
    return await runner.run(data.period)


HANDLERS = [record_verification, show_verification, run_payouts]
