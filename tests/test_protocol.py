"""The protocol layer alone: decoding, validation and the shape of what is sent (no I/O)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from giftrelay.wire import events, protocol
from giftrelay.wire.errors import Code


def decode(message: dict[str, Any]) -> protocol.ClientMessage:
    return protocol.decode(json.dumps(message))


def refusal(data: str | bytes) -> protocol.BadMessage:
    with pytest.raises(protocol.BadMessage) as caught:
        protocol.decode(data)
    return caught.value


def test_every_client_message_decodes() -> None:
    messages = {
        "join": {"stream": "s1", "since": "1700000000000-3"},
        "leave": {"stream": "s1"},
        "gift": {"stream": "s1", "gift": "rose", "count": 3, "id": "abcdefgh", "confirm": True},
        "balance": {},
        "ping": {},
        "catalog": {},
        "topup": {"user": "alice", "coins": 5, "id": "receipt-1"},
        "stream_open": {"stream": "s1", "title": "hi", "creator": "cre"},
        "stream_close": {"stream": "s1"},
        "payout": {"diamonds": 2000, "id": "payout-1"},
        "set_goal": {"stream": "s1", "title": "mic", "target": 10},
        "test_alert": {"stream": "s1", "gift": "rose", "count": 2},
        "revoke_overlays": {"stream": "s1"},
        "set_cap": {"daily_coins": None},
        "set_confirm": {"coins": 0},
        "set_cooldown": {"coins": 500, "minutes": 10},
        "spending": {},
    }
    for kind, fields in messages.items():
        message = decode({"type": kind, "ref": "r-1", **fields})
        assert type(message).__struct_config__.tag == kind
        assert message.ref == "r-1"
        for name, value in fields.items():
            assert getattr(message, name) == value


def test_gift_count_defaults_to_one() -> None:
    gift = decode({"type": "gift", "stream": "s", "gift": "rose", "id": "abcdefgh"})
    assert isinstance(gift, protocol.Gift)
    assert gift.count == 1
    assert gift.confirm is msgspec.UNSET  # v1 clients never send it: read as false
    encoded = protocol.Gift(stream="s", gift="rose", id="abcdefgh")
    assert b"confirm" not in msgspec.json.encode(encoded)  # nor are v1 frames changed


@pytest.mark.parametrize(
    ("message", "where"),
    [
        ({"type": "gift", "stream": "s", "gift": "rose", "id": "short"}, "`id`"),
        ({"type": "gift", "stream": "s", "gift": "rose", "id": "abcdefgh", "count": 0}, "`count`"),
        (
            {"type": "gift", "stream": "s", "gift": "rose", "id": "abcdefgh", "count": "2"},
            "`count`",
        ),
        ({"type": "gift", "stream": "a b", "gift": "rose", "id": "abcdefgh"}, "`stream`"),
        ({"type": "gift", "stream": "s" * 65, "gift": "rose", "id": "abcdefgh"}, "`stream`"),
        ({"type": "join", "stream": "s", "since": "yesterday"}, "`since`"),
        ({"type": "join"}, "`stream`"),
        ({"type": "topup", "user": "u", "coins": -1, "id": "receipt-1"}, "`coins`"),
        ({"type": "set_cap"}, "`daily_coins`"),
        ({"type": "set_confirm"}, "`coins`"),
        ({"type": "set_confirm", "coins": -1}, "`coins`"),
        ({"type": "set_confirm", "coins": 10**13 + 1}, "`coins`"),
        ({"type": "set_cooldown", "coins": 0, "minutes": 5}, "`coins`"),
        ({"type": "set_cooldown", "coins": 5, "minutes": 1441}, "`minutes`"),
        ({"type": "set_cooldown", "coins": 5}, "minutes go together"),
        ({"type": "set_cooldown", "coins": None, "minutes": 5}, "minutes go together"),
        ({"type": "gift", "stream": "s", "gift": "r", "id": "abcdefgh", "confirm": 1}, "`confirm`"),
        ({"type": "set_goal", "stream": "s", "title": "", "target": 5}, "`title`"),
        ({"type": "ping", "ref": "r" * 65}, "`ref`"),
        ({"type": "ping", "ref": 7}, "`ref`"),
    ],
)
def test_invalid_fields_are_bad_requests_naming_the_field(
    message: dict[str, Any], where: str
) -> None:
    exc = refusal(json.dumps(message))
    assert exc.code is Code.BAD_REQUEST
    assert where in exc.message


def test_errors_echo_ref_and_id_when_readable() -> None:
    exc = refusal(json.dumps({"type": "gift", "ref": "mine", "id": "abcdefgh", "count": 0}))
    assert (exc.ref, exc.id) == ("mine", "abcdefgh")
    exc = refusal(json.dumps({"type": "gift", "ref": 5, "id": ["x"]}))
    assert (exc.ref, exc.id) == (None, None)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ("{not json", "not a JSON object"),
        ("[1, 2]", "not a JSON object"),
        ('"ping"', "not a JSON object"),
        ('{"type": "teleport"}', "unknown message type"),
        ('{"ref": "x"}', "`type`"),
        (b"\xff\xfe", "not a JSON object"),
    ],
)
def test_malformed_messages(data: str | bytes, says: str) -> None:
    exc = refusal(data)
    assert exc.code is Code.BAD_REQUEST
    assert says in exc.message


def test_oversized_messages_are_too_large() -> None:
    exc = refusal(json.dumps({"type": "ping", "pad": "x" * protocol.MAX_MESSAGE_BYTES}))
    assert exc.code is Code.TOO_LARGE


def test_replies_have_the_documented_fields() -> None:
    hello = protocol.Hello(v=1, server="giftrelay/1", user=None, role="anonymous")
    assert json.loads(protocol.encode(hello)) == {
        "type": "hello",
        "v": 1,
        "server": "giftrelay/1",
        "user": None,
        "role": "anonymous",
    }
    balance = protocol.Balance(coins=1, diamonds=2, spent_today=3, daily_cap=None)
    assert json.loads(protocol.encode(balance)) == {
        "type": "balance",
        "coins": 1,
        "diamonds": 2,
        "spent_today": 3,
        "daily_cap": None,
    }
    error = protocol.Error(code="bad_request", message="no", ref="r", id="abcdefgh")
    assert json.loads(protocol.encode(error)) == {
        "type": "error",
        "code": "bad_request",
        "message": "no",
        "ref": "r",
        "id": "abcdefgh",
    }
    frame = protocol.Events(stream="s1", events=[msgspec.Raw(b'{"offset":"1-0","kind":"gift"}')])
    assert json.loads(protocol.encode(frame)) == {
        "type": "events",
        "stream": "s1",
        "events": [{"offset": "1-0", "kind": "gift"}],
    }
    end = events.ComboEndEvent(
        offset="1-0", ts=5, combo_id="c1", sender="al", gift="rose", total=3, coins=3
    )
    assert json.loads(bytes(protocol.encode_event(end))) == {
        "kind": "combo_end",
        "offset": "1-0",
        "ts": 5,
        "combo_id": "c1",
        "from": "al",
        "gift": "rose",
        "total": 3,
        "coins": 3,
    }


def test_offsets_compare_as_numbers() -> None:
    assert protocol.parse_offset("10-0") > protocol.parse_offset("9-5")
    assert protocol.parse_offset("9-10") > protocol.parse_offset("9-9")


# -- nesting past the recursion limit ----------------------------------------------------------

DEEP = 1_000
"""As deep as issue 16's frames (about 2 KB): msgspec decodes nested arrays recursively,
so this raised RecursionError, which escaped and closed the connection with 1011."""


def nested_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def nested_msgpack(depth: int) -> bytes:
    return b"\x91" * depth + b"\x90"  # fixarray of one item, ..., then an empty fixarray


def msgpack_map(fields: dict[str, bytes]) -> bytes:
    """A MessagePack map of the given fields, each value already packed (fields < 16)."""
    out = bytes([0x80 | len(fields)])
    for key, packed in fields.items():
        out += msgspec.msgpack.encode(key) + packed
    return out


GIFT_FIELDS = {"type": "gift", "stream": "s1", "gift": "rose", "id": "deep-gift-01"}
NESTED_AT = {
    "top level": ({"type": "ping"}, "x"),
    "ref": ({"type": "ping"}, "ref"),
    "count": (GIFT_FIELDS, "count"),
}


def deep_json(where: str, depth: int = DEEP) -> str:
    fields, key = NESTED_AT[where]
    head = json.dumps(fields)[:-1]
    return f'{head}, "{key}": {nested_json(depth)}}}'


def deep_msgpack(where: str, depth: int = DEEP) -> bytes:
    fields, key = NESTED_AT[where]
    packed = {k: msgspec.msgpack.encode(v) for k, v in fields.items()}
    return msgpack_map({**packed, key: nested_msgpack(depth)})


@pytest.mark.parametrize("where", sorted(NESTED_AT))
def test_deep_nesting_in_json_is_a_bad_request(where: str) -> None:
    data = deep_json(where)
    assert len(data) < protocol.MAX_MESSAGE_BYTES  # not refused for its size
    exc = refusal(data)
    assert exc.code is Code.BAD_REQUEST
    assert protocol.echo(data) == (None, None)  # echo (the rate-limit path) does not raise


@pytest.mark.parametrize("where", sorted(NESTED_AT))
def test_deep_nesting_in_msgpack_is_a_bad_request(where: str) -> None:
    data = deep_msgpack(where)
    assert len(data) < protocol.MAX_MESSAGE_BYTES
    with pytest.raises(protocol.BadMessage) as caught:
        protocol.MSGPACK_CODEC.decode(data)
    assert caught.value.code is Code.BAD_REQUEST
    assert protocol.MSGPACK_CODEC.echo(data) == (None, None)


def test_deep_nesting_says_so() -> None:
    assert refusal(deep_json("top level")).message == protocol.TOO_DEEP
    with pytest.raises(protocol.BadMessage) as caught:
        protocol.MSGPACK_CODEC.decode(deep_msgpack("top level"))
    assert caught.value.message == protocol.TOO_DEEP


def test_shallow_nesting_in_an_unknown_field_is_still_accepted() -> None:
    """Only the depth is refused: the same frames, 10 deep, decode (unknown fields are
    ignored)."""
    assert isinstance(protocol.decode(deep_json("top level", 10)), protocol.Ping)
    packed = protocol.MSGPACK_CODEC.decode(deep_msgpack("top level", 10))
    assert isinstance(packed, protocol.Ping)
