"""The session without sockets: frames in, steps out; and its role table."""

from __future__ import annotations

import json
import typing

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from giftrelay.auth import Claims, Role
from giftrelay.relay.limits import Buckets
from giftrelay.relay.requests import HANDLERS
from giftrelay.relay.session import (
    ANYONE,
    MANAGERS,
    SPENDERS,
    WHO_MAY,
    Answer,
    Close,
    Limits,
    Perform,
    Session,
    Step,
)
from giftrelay.wire import protocol


def test_every_client_message_is_in_the_role_table() -> None:
    assert set(WHO_MAY) == set(typing.get_args(protocol.ClientMessage))


def test_money_moves_only_for_signed_in_roles() -> None:
    for message in (
        protocol.Gift,
        protocol.SetCap,
        protocol.BalanceRequest,
        protocol.SetConfirm,
        protocol.SetCooldown,
        protocol.SpendingRequest,
    ):
        assert WHO_MAY[message] == SPENDERS
    assert WHO_MAY[protocol.Topup] == (Role.ADMIN,)
    assert WHO_MAY[protocol.Payout] == (Role.CREATOR,)
    for message in (protocol.StreamOpen, protocol.SetGoal, protocol.RevokeOverlays):
        assert WHO_MAY[message] == MANAGERS
    assert Role.OVERLAY not in {r for roles in WHO_MAY.values() if roles for r in roles}
    assert WHO_MAY[protocol.Ping] is ANYONE


# -- the session without sockets: frames in, steps out ---------------------------------------

LIMITS = Limits(message_rate=10.0, message_burst=5, max_message_bytes=4096, max_streams=2)
CATALOG = msgspec.Raw(b'[{"id":"rose"}]')


def session(
    role: Role | None = Role.VIEWER,
    sub: str = "alice",
    stream: str | None = None,
    buckets: Buckets | None = None,
    codec: protocol.Codec = protocol.JSON_CODEC,
) -> Session:
    claims = None if role is None else Claims(sub=sub, role=role, exp=1e12, stream=stream)
    gifts = buckets or Buckets(rate=1.0, burst=3)
    return Session(claims, codec, LIMITS, gifts, CATALOG, now=0.0)


def frame(**message: object) -> str:
    return json.dumps(message)


def answer(step: Step) -> protocol.Reply:
    assert isinstance(step, Answer), step
    return step.reply


def error(step: Step) -> tuple[str, str | None, str | None]:
    reply = answer(step)
    assert isinstance(reply, protocol.Error), reply
    return reply.code, reply.ref, reply.id


def test_a_ping_and_the_catalog_are_answered_without_io() -> None:
    s = session(role=None)
    assert answer(s.receive(frame(type="ping", ref="p"), 0.0)) == protocol.Pong(ref="p")
    reply = answer(s.receive(frame(type="catalog", ref="c"), 0.0))
    assert reply == protocol.CatalogReply(ref="c", gifts=CATALOG)
    assert s.messages_in == 2


def test_a_gift_from_a_viewer_is_performed_for_that_viewer() -> None:
    step = session().receive(
        frame(type="gift", ref="r", stream="s1", gift="rose", id="g-000001"), 0
    )
    assert isinstance(step, Perform)
    assert step.message == protocol.Gift(ref="r", stream="s1", gift="rose", id="g-000001")
    assert (step.user, step.actor) == ("alice", None)


def test_an_anonymous_gift_is_unauthorized_and_echoes_its_ref_and_id() -> None:
    step = session(role=None).receive(
        frame(type="gift", ref="r", stream="s1", gift="rose", id="g-000001"), 0
    )
    assert error(step) == ("unauthorized", "r", "g-000001")


def test_roles_that_may_not_are_forbidden() -> None:
    payout = frame(type="payout", ref="p", diamonds=5, id="p-000001")
    assert error(session(Role.VIEWER).receive(payout, 0))[0] == "forbidden"
    assert isinstance(session(Role.CREATOR).receive(payout, 0), Perform)
    topup = frame(type="topup", user="bob", coins=5, id="t-000001")
    assert error(session(Role.CREATOR).receive(topup, 0))[0] == "forbidden"
    overlay_gift = frame(type="gift", stream="s1", gift="rose", id="g-000001")
    assert error(session(Role.OVERLAY, stream="s1").receive(overlay_gift, 0))[0] == "forbidden"


def test_bad_input_is_refused_and_keeps_the_ref() -> None:
    s = session()
    assert error(s.receive(frame(type="gift", ref="r", stream="s1"), 0))[:2] == ("bad_request", "r")
    assert error(s.receive("{nope", 0))[0] == "bad_request"
    assert error(s.receive(frame(type="launch", ref="x"), 0))[:2] == ("bad_request", "x")
    assert error(s.receive("x" * 5000, 0))[0] == "too_large"  # over max_message_bytes


def test_a_flood_is_refused_then_closed() -> None:
    s = session()
    ping = frame(type="ping", ref="p")
    steps = [s.receive(ping, 0.0) for _ in range(5 + 5 + 1)]  # burst, refusals, one more
    assert all(isinstance(answer(x), protocol.Pong) for x in steps[:5])
    assert [error(x)[:2] for x in steps[5:10]] == [("rate_limited", "p")] * 5
    close = steps[10]
    assert isinstance(close, Close)
    assert close.code == 1008
    assert isinstance(answer(s.receive(ping, 10.0)), protocol.Pong)  # the bucket refilled


def test_gifts_are_limited_per_user_across_sessions() -> None:
    shared = Buckets(rate=1.0, burst=3)
    phone, laptop = session(buckets=shared), session(buckets=shared)
    gifts = [frame(type="gift", stream="s1", gift="rose", id=f"g-00000{i}") for i in range(4)]
    steps = [phone.receive(gifts[0], 0), laptop.receive(gifts[1], 0), phone.receive(gifts[2], 0)]
    assert all(isinstance(x, Perform) for x in steps)
    assert error(laptop.receive(gifts[3], 0))[0] == "rate_limited"
    other = session(sub="bob", buckets=shared)
    assert isinstance(other.receive(gifts[3], 0), Perform)


def test_while_stopping_every_request_is_unavailable() -> None:
    step = session().receive(frame(type="balance", ref="b"), 0, stopping=True)
    assert error(step)[:2] == ("unavailable", "b")


def test_an_overlay_joins_only_its_own_stream() -> None:
    s = session(Role.OVERLAY, sub="ov", stream="s1")
    assert isinstance(s.receive(frame(type="join", stream="s1"), 0), Perform)
    assert error(s.receive(frame(type="join", ref="j", stream="s2"), 0))[:2] == ("forbidden", "j")


def test_joins_are_bounded_and_a_rejoin_is_not_a_new_stream() -> None:
    s = session()
    s.joined("s1")
    s.joined("s2")
    assert error(s.receive(frame(type="join", stream="s3"), 0))[0] == "rate_limited"
    assert isinstance(s.receive(frame(type="join", stream="s2"), 0), Perform)
    assert error(s.receive(frame(type="leave", ref="l", stream="s3"), 0))[:2] == (
        "bad_request",
        "l",
    )
    s.left("s2")
    assert isinstance(s.receive(frame(type="join", stream="s3"), 0), Perform)


def test_who_opens_a_stream() -> None:
    admin_open = frame(type="stream_open", stream="s1", title="t")
    assert error(session(Role.ADMIN, sub="root").receive(admin_open, 0))[0] == "bad_request"
    for_bob = frame(type="stream_open", stream="s1", title="t", creator="bob")
    step = session(Role.ADMIN, sub="root").receive(for_bob, 0)
    assert isinstance(step, Perform)
    assert (step.user, step.actor) == ("bob", None)
    assert error(session(Role.CREATOR, sub="carol").receive(for_bob, 0))[0] == "forbidden"
    own = session(Role.CREATOR, sub="bob").receive(for_bob, 0)
    assert isinstance(own, Perform)
    assert own.user == "bob"


def test_a_manager_acts_as_themselves_an_admin_as_nobody() -> None:
    close = frame(type="stream_close", stream="s1")
    creator = session(Role.CREATOR, sub="bob").receive(close, 0)
    admin = session(Role.ADMIN, sub="root").receive(close, 0)
    assert isinstance(creator, Perform)
    assert isinstance(admin, Perform)
    assert (creator.actor, admin.actor) == ("bob", None)


def test_messagepack_sessions_decode_the_same_messages() -> None:
    s = session(codec=protocol.MSGPACK_CODEC)
    data = msgspec.msgpack.encode(
        {"type": "gift", "stream": "s1", "gift": "rose", "id": "g-000001"}
    )
    assert isinstance(s.receive(data, 0), Perform)


def test_every_performed_message_has_a_handler() -> None:
    answered_here = {protocol.Ping, protocol.CatalogRequest}
    assert set(HANDLERS) == set(WHO_MAY) - answered_here


@settings(max_examples=300, deadline=None)
@given(
    role=st.sampled_from([None, *Role]),
    data=st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300),
        st.builds(
            lambda kind, ref, extra: json.dumps({"type": kind, "ref": ref, **extra}),
            st.sampled_from([*(m.__struct_config__.tag for m in WHO_MAY), "nope"]),
            st.text(max_size=10),
            st.dictionaries(
                st.sampled_from(["stream", "gift", "count", "id", "coins", "user", "diamonds"]),
                st.one_of(st.integers(), st.text(max_size=70), st.none()),
                max_size=5,
            ),
        ),
    ),
)
def test_any_frame_gives_a_step_and_only_permitted_valid_requests_run(
    role: Role | None, data: str | bytes
) -> None:
    s = session(role=role, stream="s1")
    step = s.receive(data, 0.0)
    assert isinstance(step, Answer | Perform)
    if isinstance(step, Perform):
        roles = WHO_MAY[type(step.message)]
        assert roles is ANYONE or (role is not None and role in roles)
        # what runs is exactly what the wire's own validation accepts
        assert protocol.JSON_CODEC.decode(protocol.encode(step.message), 4096) == step.message
