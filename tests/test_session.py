"""The session's role table: every message says who may send it."""

from __future__ import annotations

import typing

from giftrelay.auth import Role
from giftrelay.relay.session import ANYONE, MANAGERS, SPENDERS, WHO_MAY
from giftrelay.wire import protocol


def test_every_client_message_is_in_the_role_table() -> None:
    assert set(WHO_MAY) == set(typing.get_args(protocol.ClientMessage))


def test_money_moves_only_for_signed_in_roles() -> None:
    for message in (protocol.Gift, protocol.SetCap, protocol.BalanceRequest):
        assert WHO_MAY[message] == SPENDERS
    assert WHO_MAY[protocol.Topup] == (Role.ADMIN,)
    assert WHO_MAY[protocol.Payout] == (Role.CREATOR,)
    for message in (protocol.StreamOpen, protocol.SetGoal, protocol.RevokeOverlays):
        assert WHO_MAY[message] == MANAGERS
    assert Role.OVERLAY not in {r for roles in WHO_MAY.values() if roles for r in roles}
    assert WHO_MAY[protocol.Ping] is ANYONE
