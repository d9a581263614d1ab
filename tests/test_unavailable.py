"""``unavailable`` tells the truth (issue 16, item 3): the request may or may not have
taken effect, and a retry with the same id returns its one outcome.

Redis is paused (SIGSTOP) while a gift is on its way: the relay stops waiting after
``request_timeout`` and answers ``unavailable``, but the script is already in Redis's
socket buffer and runs once Redis resumes. The reply used to say "nothing moved".
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from giftrelay.embedded import RedisServer
from giftrelay.money import keys
from giftrelay.wire.errors import Code, Refused, Unavailable

from .conftest import ledger_entries
from .relay_helpers import Client, running_relay, token

GIFT = {"type": "gift", "stream": "s1", "gift": "heart", "count": 2, "id": "paused-gift-01"}
COST = 2 * 5  # two hearts of 5 coins
TOPUP = 100


@contextmanager
def paused(server: RedisServer) -> Iterator[None]:
    """Redis stopped (SIGSTOP) for the block; always continued, even if the block fails."""
    assert server.process is not None
    pid = server.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def says_nothing_moved(message: str) -> bool:
    return "nothing moved" in message.lower() or "nothing was moved" in message.lower()


def test_the_default_unavailable_message_does_not_claim_nothing_moved() -> None:
    for refusal in (Refused(Code.UNAVAILABLE), Unavailable()):
        assert not says_nothing_moved(refusal.message)
        assert "may or may not have taken effect" in refusal.message
        assert "same id" in refusal.message


async def test_a_gift_answered_unavailable_while_redis_is_paused_moves_once_and_its_retry_says_so(
    own_redis_server: RedisServer,
) -> None:
    async with running_relay(own_redis_server.url) as h:  # request_timeout 1.5 s, as in the issue
        await h.money.stream_open("s1", "cre", "paused")
        await h.money.topup("alice", TOPUP, "grant-alice-0001")
        viewer = await Client.open(h.ws)
        await viewer.join("s1")
        alice = await Client.open(h.ws, token("alice"))

        with paused(own_redis_server):
            reply = await alice.request(within=10, **GIFT)
            assert (reply["type"], reply["code"], reply["id"]) == (
                "error",
                "unavailable",
                GIFT["id"],
            )
            assert not says_nothing_moved(reply["message"]), reply

        # Redis runs the gift it already held: the coins moved although the answer was
        # `unavailable`. The viewer's event shows it (no retry has been sent yet).
        await viewer.wait_for(lambda: len(viewer.gifts("s1")) == 1, what="the paused gift")
        [event] = viewer.gifts("s1")
        assert (event["id"], event["from"], event["coins"]) == (GIFT["id"], "alice", COST)
        assert (await h.money.balance("alice")).coins == TOPUP - COST

        # The retry with the same id is answered with the gift's one outcome, and moves nothing.
        ok = await alice.request(**GIFT)
        assert ok["type"] == "gift_ok", ok
        assert (ok["id"], ok["offset"], ok["coins"], ok["balance"]) == (
            GIFT["id"],
            event["offset"],
            COST,
            TOPUP - COST,
        )
        again = await alice.request(**GIFT)
        assert {k: v for k, v in again.items() if k != "ref"} == {
            k: v for k, v in ok.items() if k != "ref"
        }

        # Exactly once: coins, diamonds, the ledger and the stream's history.
        assert (await h.money.balance("alice")).coins == TOPUP - COST
        assert (await h.money.balance("cre")).diamonds == event["diamonds"]
        redis = h.money.redis
        gifts = await ledger_entries(redis, "gift")
        assert [g["id"] for g in gifts] == [GIFT["id"]]
        history = [json.loads(f["e"]) for _, f in await redis.xrange(keys.history("s1"))]
        assert [e["id"] for e in history if e["kind"] == "gift"] == [GIFT["id"]]
        assert alice.ws.close_code is None
        await alice.close()
        await viewer.close()
