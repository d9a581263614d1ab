"""The v1.2 overlays (gifter levels and battles) in a real headless chromium, against a
real relay on a real Redis: level badges on alerts and the top list and the level-up
alert; the battle widget through a whole battle, after a reconnect and opened late; and
a battle played from the demo page.

Battles run on the relay's clock. The tests' catalog makes them short (the shortest the
catalog allows, 10 s, and a x2 window on the last 5 s of a battle) and the levels cheap;
Playwright's auto-waiting ``expect`` and ``wait_for_function`` wait for the clock: no
sleeps.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from playwright.async_api import Browser, Locator, Page, expect
from redis.asyncio import Redis

from giftrelay.auth import Role
from giftrelay.config import Settings
from giftrelay.embedded import RedisServer, free_port
from giftrelay.money import catalog
from giftrelay.money.api import Money
from giftrelay.redis_client import connect as redis_connect

from .browser_helpers import (
    BACKDROP,
    CHROMIUM,
    EXPECTED_WHEN_REFUSED,
    Watched,
    chromium,
    open_page,
)
from .relay_helpers import Client, RelayHandle, running_relay, token

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)

FAST = {"gift_rate": 100_000.0, "gift_burst": 100_000, "message_rate": 100_000.0}
CREATORS = {"s1": "nova", "s2": "kai", "s3": "cid"}
VIEWERS = ("alice", "bob", "carol", "dan", "eve", "finn")
BATTLE_S = 15  # long enough that gifts sent at once land before the boost
BOOST_S = 5
LEVELS = [10, 100, 1000, 5000, 20000]  # cheap levels: a 30-coin donut is level 1
SECTIONS = f"""
[levels]
coins = {LEVELS}

[battle]
min_s = 10
max_s = 900
invite_s = 60

[[battle.boost]]
last_s = {BOOST_S}
multiplier = 2
"""
BATTLE_WIDGET = (720, 260)
TIMES = "\u00d7"  # the multiplication sign, as the pages write "x2" and "720 x 260"
LONG_WAIT = (BATTLE_S + 10) * 1000  # ms: an expectation that waits for the battle's clock


def catalog_file(folder: Path) -> Path:
    """The shipped gifts with the tests' [levels] and [battle]."""

    def text(value: str) -> str:  # a TOML string: JSON's, as UTF-8
        return json.dumps(value, ensure_ascii=False)

    gifts = "".join(
        f"[[gift]]\nid = {text(g.id)}\nname = {text(g.name)}\ncoins = {g.coins}\n"
        f"streakable = {str(g.streakable).lower()}\nimage = {text(g.image)}\n\n"
        for g in catalog.load().gifts
    )
    path = folder / "battle-catalog.toml"
    path.write_text(SECTIONS + "\n" + gifts, "utf-8")
    return path


@contextlib.asynccontextmanager
async def battle_relay(url: str, path: Path, port: int = 0) -> AsyncIterator[RelayHandle]:
    """A relay worker over the Redis at ``url`` with the catalog at ``path``, and the
    referee that ends battles (as ``giftrelay serve`` runs them); ``port`` 0 for a free
    one, or a given one (a test stops it and starts another in its place)."""
    async with running_relay(
        url, with_referee=True, port=port, catalog=str(path), combo_window_ms=1500, **FAST
    ) as handle:
        yield handle


async def setup_streams(money: Money) -> None:
    for stream, creator in CREATORS.items():
        await money.stream_open(stream, creator, f"{stream} live")
    for user in VIEWERS:
        await money.topup(user, 100_000, f"grant-{user}")


@pytest.fixture
async def catalog_path(tmp_path: Path) -> Path:
    return catalog_file(tmp_path)


@pytest.fixture
async def relay(
    redis: Redis, redis_server: RedisServer, catalog_path: Path
) -> AsyncIterator[RelayHandle]:
    async with battle_relay(redis_server.url, catalog_path) as h:
        await setup_streams(h.money)
        yield h


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


async def gift(money: Money, user: str, stream: str, gift_id: str, count: int = 1) -> None:
    await money.gift(user, stream, gift_id, count, uuid.uuid4().hex)


def widget(h: RelayHandle, name: str, stream: str = "s1", **options: object) -> str:
    query = urlencode({"token": token("studio", Role.OVERLAY, stream=stream), **options})
    return f"{h.http}/overlay/{name}?{query}"


async def live(w: Watched) -> None:
    await expect(w.page.locator("body")).to_have_attribute("data-state", "live")


async def creator(h: RelayHandle, stream: str) -> Client:
    return await Client.open(h.ws, token(CREATORS[stream], Role.CREATOR))


async def start_battle(h: RelayHandle, seconds: int) -> dict[str, Any]:
    """s1's creator invites s2 for ``seconds``, s2's creator accepts: the running reply."""
    inviter, invited = await creator(h, "s1"), await creator(h, "s2")
    try:
        reply = await inviter.request(
            type="battle_invite", stream="s1", opponent="s2", duration_s=seconds,
            id=f"bi-{uuid.uuid4().hex}",
        )  # fmt: skip
        assert (reply["type"], reply.get("status")) == ("battle_ok", "invited"), reply
        running = await invited.request(type="battle_accept", battle=reply["battle"])
        assert (running["type"], running.get("status")) == ("battle_ok", "running"), running
        return running
    finally:
        await inviter.close()
        await invited.close()


def latest(c: Client, stream: str, kind: str) -> dict[str, Any] | None:
    found = [e for e in c.events[stream] if e["kind"] == kind]
    return found[-1] if found else None


async def scores_become(c: Client, stream: str, check: Any) -> dict[str, Any]:
    """The first `battle` event (live, from the relay) whose scores by stream pass ``check``."""

    def scores() -> dict[str, int] | None:
        event = latest(c, stream, "battle")
        return event and {s["stream"]: s["score"] for s in event["sides"]}

    await c.wait_for(lambda: (s := scores()) is not None and check(s), what="battle scores")
    event = latest(c, stream, "battle")
    assert event is not None
    return event


def side_of(event: dict[str, Any], stream: str) -> dict[str, Any]:
    return next(s for s in event["sides"] if s["stream"] == stream)


async def shows_scores(page: Page, left: int, right: int, box: str = "#battle") -> None:
    """The page shows these scores at the bar's ends, and the bar split in proportion."""
    await expect(page.locator(f"{box} .part.left .score")).to_have_text(f"{left:,}")
    await expect(page.locator(f"{box} .part.right .score")).to_have_text(f"{right:,}")
    share = left / (left + right) if left + right else 0.5
    await page.wait_for_function(
        """([box, share]) => {
            const bar = document.querySelector(`${box} .battle-bar`).getBoundingClientRect();
            const left = document.querySelector(`${box} .part.left`).getBoundingClientRect();
            return Math.abs(left.width / bar.width - share) < 0.01;
        }""",
        arg=[box, share],
    )  # after the bar's 400 ms slide


async def clock_agrees(page: Page, ends_at: int) -> None:
    """The countdown shows the relay's `ends_at` minus now, within a second."""
    text = await page.locator("#battle .clock").text_content() or ""
    minutes, seconds = text.split(":")
    shown = int(minutes) * 60 + int(seconds)
    left = await page.evaluate(f"({ends_at} - Date.now()) / 1000")
    assert abs(shown - math.ceil(left)) <= 1, (text, left)


async def clip_shot(w: Watched, element: Locator, name: str, margin: int = 28) -> None:
    """A screenshot of ``element`` and its glow over the dark backdrop (for the docs)."""
    await w.page.add_style_tag(content=f"html {{ background: {BACKDROP} !important; }}")
    box = await element.bounding_box()
    assert box is not None
    size = w.page.viewport_size or {"width": 0, "height": 0}
    x, y = max(0, box["x"] - margin), max(0, box["y"] - margin)
    clip = {
        "x": x,
        "y": y,
        "width": min(size["width"] - x, box["width"] + 2 * margin),
        "height": min(size["height"] - y, box["height"] + 2 * margin),
    }
    await w.screenshot(name, clip=clip)


# -- gifter levels -----------------------------------------------------------------------------

# Records, in the page, every alert put on screen: its gifter and what it says.
ALERT_PROBE = """() => {
  window.shown = [];
  new MutationObserver((records) => {
    for (const r of records) for (const n of r.addedNodes) {
      if (n.classList?.contains("alert")) {
        window.shown.push(n.querySelector(".from").textContent + " " +
                          n.querySelector(".name").textContent);
      }
    }
  }).observe(document.getElementById("alerts"), { childList: true });
}"""


async def test_levels_show_on_alerts_and_the_top_list_and_a_level_up_has_its_alert(
    relay: RelayHandle, browser: Browser
) -> None:
    alerts = await open_page(
        browser, widget(relay, "alerts", duration=3), size=(960, 420), reduced_motion="reduce"
    )  # still: the screenshots catch no entrance half-way
    quiet = await open_page(browser, widget(relay, "alerts", duration=1, levelups=0))
    top = await open_page(browser, widget(relay, "top"), size=(420, 300))
    for w in (alerts, quiet, top):
        await live(w)
    for w in (alerts, quiet):
        await w.page.evaluate(ALERT_PROBE)

    await gift(relay.money, "alice", "s1", "donut")  # 30: level 1 (10 coins), a level_up
    await gift(relay.money, "bob", "s1", "heart")  # 5 coins in all: level 0, no badge
    donut = alerts.page.locator(".alert", has_text="Donut")
    await expect(donut.locator(".who .from")).to_have_text("alice")
    await expect(donut.locator(".who .level")).to_have_text("Lv 1")
    await expect(donut.locator(".who .level")).to_be_visible()
    await clip_shot(alerts, donut, "alert-level")

    # The level-up is a short alert of its own, queued right after the gift that got there.
    level_up = alerts.page.locator(".alert.level-up")
    await expect(level_up.locator(".from")).to_have_text("alice")
    await expect(level_up.locator(".line")).to_have_text("reached level 1")
    await expect(level_up.locator(".level-star")).to_have_text("1")
    await clip_shot(alerts, level_up, "level-up")
    heart = alerts.page.locator(".alert", has_text="Heart")
    await expect(heart.locator(".from")).to_have_text("bob", timeout=10_000)
    await expect(heart.locator(".level")).to_have_count(0)
    assert await alerts.page.evaluate("window.shown") == [
        "alice Donut",
        "alice level 1",
        "bob Heart",
    ]

    # The top list: each gifter's level from the `top` event.
    await expect(top.page.locator(".user")).to_have_text(["alice", "bob"])
    await expect(top.page.locator("li").nth(0).locator(".level")).to_have_text("Lv 1")
    await expect(top.page.locator("li").nth(1).locator(".level")).to_have_count(0)
    await gift(relay.money, "bob", "s1", "rocket")  # 1,005 coins: level 3 (1,000)
    await expect(top.page.locator(".user")).to_have_text(["bob", "alice"])
    await expect(top.page.locator("li").nth(0).locator(".level")).to_have_text("Lv 3")
    await top.showcase("top-levels")

    # ?levelups=0: the gifts only, in order.
    await quiet.page.wait_for_function("window.shown.length === 3")
    assert await quiet.page.evaluate("window.shown") == ["alice Donut", "bob Heart", "bob Rocket"]
    # A snapshot's top list carries the levels too.
    again = await open_page(browser, widget(relay, "top"), size=(420, 300))
    await expect(again.page.locator(".level")).to_have_text(["Lv 3", "Lv 1"])
    for w in (alerts, quiet, top, again):
        assert w.unexpected_errors() == []


# -- the battle widget -------------------------------------------------------------------------


async def test_the_battle_widget_through_a_whole_battle(
    relay: RelayHandle, browser: Browser
) -> None:
    w = await open_page(browser, widget(relay, "battle", stay=3), size=BATTLE_WIDGET)
    still = await open_page(
        browser, widget(relay, "battle"), size=BATTLE_WIDGET, reduced_motion="reduce"
    )
    for page in (w, still):
        await live(page)
    box = w.page.locator("#battle")
    await expect(box).to_be_hidden()  # no battle: nothing on screen
    await expect(box).to_have_attribute("data-phase", "idle")
    watch = await Client.open(relay.ws)
    await watch.join("s1")
    await watch.join("s2")

    running = await start_battle(relay, BATTLE_S)
    await expect(box).to_be_visible()
    await expect(box).to_have_attribute("data-phase", "running")
    await expect(box).to_have_attribute("data-battle", running["battle"])
    # s1's widget: s1 (the inviter, nova) on the left in its colour, kai on the right.
    await expect(box.locator(".side-name.left .creator")).to_have_text("nova")
    await expect(box.locator(".side-name.left .stream")).to_have_text("s1")
    await expect(box.locator(".side-name.right .creator")).to_have_text("kai")
    await expect(box.locator(".side-name.right .stream")).to_have_text("s2")
    await expect(box.locator(".side-name.left")).to_have_class(re.compile(r"\bown\b"))
    await shows_scores(w.page, 0, 0)
    await expect(box.locator(".clock")).to_have_text(re.compile(r"^0:\d\d$"))
    await clock_agrees(w.page, running["ends_at"])
    # Before the boosted window: its countdown.
    await expect(box.locator(".boost.soon")).to_have_text(re.compile(rf"^{TIMES}2 in 0:\d\d$"))
    await expect(box).to_have_attribute("data-multiplier", "1")

    # Gifts on both sides move the scores (each side's points: the relay's `battle` events).
    await gift(relay.money, "alice", "s1", "donut")
    await gift(relay.money, "bob", "s2", "heart")
    await gift(relay.money, "carol", "s1", "heart")
    event = await scores_become(watch, "s1", lambda s: s["s1"] > 0 and s["s2"] > 0)
    event = await scores_become(watch, "s1", lambda s: len(side_of(event, "s1")["top"]) == 2)
    s1, s2 = side_of(event, "s1"), side_of(event, "s2")
    assert event["multiplier"] == 1
    await shows_scores(w.page, s1["score"], s2["score"])
    await shows_scores(still.page, s1["score"], s2["score"])
    rows = box.locator(".battle-top ol.left li")
    await expect(rows.locator(".user")).to_have_text(["alice", "carol"])
    await expect(rows.nth(0).locator(".points")).to_have_text(f"{s1['top'][0]['points']:,}")
    await expect(rows.nth(0).locator(".level")).to_have_text("Lv 1")  # alice: 30 coins
    await expect(box.locator(".battle-top ol.right .user")).to_have_text(["bob"])

    # The boosted window: the x2 badge and the bar's highlight; a gift in it counts twice.
    await expect(box).to_have_attribute("data-multiplier", "2", timeout=LONG_WAIT)
    await expect(box.locator(".boost.active")).to_have_text(f"{TIMES}2")
    await expect(box).to_have_class(re.compile(r"\bboosted\b"))
    await expect(still.page.locator("#battle")).to_have_class(re.compile(r"\bboosted\b"))
    assert await still.page.evaluate("document.getAnimations().length") == 0
    before = s2["score"]
    await gift(relay.money, "dan", "s2", "donut")
    boosted = await scores_become(watch, "s1", lambda s: s["s2"] > before)
    await watch.wait_for(lambda: any(e["from"] == "dan" for e in watch.gifts("s2")))
    donut = next(e for e in watch.gifts("s2") if e["from"] == "dan")
    assert side_of(boosted, "s2")["score"] == before + 2 * donut["diamonds"]
    await shows_scores(w.page, side_of(boosted, "s1")["score"], side_of(boosted, "s2")["score"])
    await expect(box).to_have_class(re.compile(r"\bhurry\b"))  # the last seconds

    # The end: the winner's screen for `stay` seconds, then nothing.
    await watch.wait_for(lambda: latest(watch, "s1", "battle_end") is not None, within=20)
    end = latest(watch, "s1", "battle_end")
    assert end is not None
    winner = next(s for s in end["sides"] if s["stream"] == end["winner"])
    await expect(box).to_have_attribute("data-phase", "ended")
    result = box.locator(".battle-result")
    await expect(result.locator(".winner")).to_have_text(f"{winner['creator']} wins!")
    await expect(result.locator(".final")).to_have_text(
        f"{side_of(end, 's1')['score']:,} : {side_of(end, 's2')['score']:,}"
    )
    await expect(result).to_be_visible()
    await expect(still.page.locator("#battle .battle-result")).to_be_visible()
    assert await still.page.locator(".confetti").count() == 0
    await still.showcase("battle-end")  # still: no confetti caught mid-flight
    await expect(box).to_be_hidden(timeout=10_000)  # stay=3
    await expect(box).to_have_attribute("data-phase", "idle")
    await watch.close()
    for page in (w, still):
        assert page.unexpected_errors() == []


async def test_a_draw_says_draw(relay: RelayHandle, browser: Browser) -> None:
    w = await open_page(browser, widget(relay, "battle", stay=30), size=BATTLE_WIDGET)
    await live(w)
    await start_battle(relay, 10)
    await expect(w.page.locator("#battle")).to_have_attribute("data-phase", "running")
    await gift(relay.money, "alice", "s1", "heart")
    await gift(relay.money, "bob", "s2", "heart")
    await shows_scores(w.page, 5, 5)
    assert await relay.money.end_battles(grace_ms=-60_000) == 1  # the referee, a minute on
    await expect(w.page.locator("#battle")).to_have_attribute("data-phase", "ended")
    await expect(w.page.locator(".battle-result .winner")).to_have_text("Draw")
    await expect(w.page.locator(".battle-result .final")).to_have_text("5 : 5")
    assert w.unexpected_errors() == []


async def test_a_battle_cancelled_at_the_accept_says_so(
    relay: RelayHandle, browser: Browser
) -> None:
    """s2 is invited by s1 and by s3 and accepts s3 first: accepting s1 then is refused
    (battle_busy), and s1, which had announced the start, announces the end, cancelled."""
    w = await open_page(browser, widget(relay, "battle", stay=30), size=BATTLE_WIDGET)
    await live(w)
    nova, kai, cid = [await creator(relay, s) for s in ("s1", "s2", "s3")]
    invites = []
    for client, stream in ((nova, "s1"), (cid, "s3")):
        reply = await client.request(
            type="battle_invite", stream=stream, opponent="s2", duration_s=60,
            id=f"bi-{uuid.uuid4().hex}",
        )  # fmt: skip
        invites.append(reply["battle"])
    assert (await kai.request(type="battle_accept", battle=invites[1]))["status"] == "running"
    refused = await kai.request(type="battle_accept", battle=invites[0])
    assert (refused["type"], refused["code"]) == ("error", "battle_busy")
    box = w.page.locator("#battle")
    await expect(box).to_have_attribute("data-phase", "ended")
    await expect(box).to_have_attribute("data-battle", invites[0])
    await expect(box).to_have_class(re.compile(r"\bcancelled\b"))
    await expect(box.locator(".battle-result .winner")).to_have_text("Cancelled")
    await expect(box.locator(".battle-result .final")).to_have_text("kai could not join")
    for client in (nova, kai, cid):
        await client.close()
    assert w.unexpected_errors() == []


async def test_a_late_or_reconnecting_widget_shows_the_running_battle_from_the_snapshot(
    redis: Redis, redis_server: RedisServer, catalog_path: Path, browser: Browser
) -> None:
    port = free_port()
    # Another worker's money core: it moves money while this relay is down.
    other = Money(
        redis_connect(redis_server.url),
        Settings.load({}, catalog=str(catalog_path)),
        catalog.load(catalog_path),
    )
    await other.start()
    try:
        async with battle_relay(redis_server.url, catalog_path, port) as first:
            await setup_streams(first.money)
            early = await open_page(browser, widget(first, "battle"), size=BATTLE_WIDGET)
            await live(early)
            running = await start_battle(first, 120)
            for user, stream, gift_id in (
                ("alice", "s1", "rocket"), ("bob", "s1", "crown"), ("carol", "s1", "donut"),
                ("dan", "s2", "sports_car"), ("eve", "s2", "confetti"), ("finn", "s2", "heart"),
            ):  # fmt: skip
                await gift(first.money, user, stream, gift_id)
            await early.page.wait_for_function(
                "document.querySelectorAll('#battle .battle-top li').length === 6"
            )

            # A widget opened mid-battle (here s2's: s2 on its left) shows it at once.
            late = await open_page(browser, widget(first, "battle", "s2"), size=BATTLE_WIDGET)
            await live(late)
            box = late.page.locator("#battle")
            await expect(box).to_have_attribute("data-battle", running["battle"])
            await expect(box.locator(".side-name.left .creator")).to_have_text("kai")
            await expect(box.locator(".side-name.right .creator")).to_have_text("nova")
            await shows_scores(late.page, 7_000 + 100 + 5, 1_000 + 500 + 30)
            await expect(box.locator(".battle-top ol.left .user")).to_have_text(
                ["dan", "eve", "finn"]
            )
            await expect(box.locator(".battle-top ol.left .level")).to_have_text(
                ["Lv 4", "Lv 2"]  # 7,000 and 100 coins; finn's 5 is level 0
            )
            await expect(box.locator(".battle-top ol.right .user")).to_have_text(
                ["alice", "bob", "carol"]
            )
            await clock_agrees(late.page, running["ends_at"])
            await late.showcase("battle")

        # The relay goes away mid-battle; a gift lands meanwhile (another worker).
        await expect(early.page.locator("body")).not_to_have_attribute("data-state", "live")
        await gift(other, "alice", "s1", "castle")
        async with battle_relay(redis_server.url, catalog_path, port):
            for w in (early, late):
                await live(w)
            # Both rejoined and found the battle running in their snapshot, with the gift.
            await shows_scores(early.page, 20_000 + 1_000 + 500 + 30, 7_105)
            await shows_scores(late.page, 7_105, 21_530)
            await expect(early.page.locator("#battle")).to_have_attribute("data-phase", "running")
            await clock_agrees(early.page, running["ends_at"])
    finally:
        await other.aclose()
        await other.redis.aclose()
    for w in (early, late):
        assert w.unexpected_errors(EXPECTED_WHEN_REFUSED) == []


async def test_a_bad_battle_link_says_what_is_wrong(relay: RelayHandle, browser: Browser) -> None:
    cases = {
        "no_token": f"{relay.http}/overlay/battle",
        "not_overlay": f"{relay.http}/overlay/battle?token={token('alice')}",
    }
    for reason, url in cases.items():
        w = await open_page(browser, url)
        status = w.page.locator("#overlay-status")
        await expect(status).to_have_attribute("data-reason", reason)
        await expect(status).to_contain_text("giftrelay token")
        await expect(w.page.locator("#battle")).to_be_hidden()
        assert w.unexpected_errors() == [], reason
        await w.page.close()


# -- the demo page ---------------------------------------------------------------------------


def demo(h: RelayHandle, viewer: str, stream: str) -> str:
    query = urlencode(
        {
            "token": token(viewer),
            "creator": token(CREATORS[stream], Role.CREATOR),
            "stream": stream,
        }
    )
    return f"{h.http}/?{query}"


async def test_a_battle_is_played_from_the_demo_page(relay: RelayHandle, browser: Browser) -> None:
    nova = await open_page(browser, demo(relay, "alice", "s1"), size=(1200, 1100))
    kai = await open_page(browser, demo(relay, "bob", "s2"), size=(1200, 1100))
    overlay = await open_page(browser, widget(relay, "battle"), size=BATTLE_WIDGET)
    for w in (nova, kai, overlay):
        await live(w)
    a, b = nova.page, kai.page
    await expect(a.locator("#creator-name")).to_have_text("as nova (creator)")
    await expect(b.locator("#creator-name")).to_have_text("as kai (creator)")

    # Invited, declined: the inviter reads it.
    await a.locator("#battle-opponent").fill("s2")
    await a.locator("#battle-duration").fill("60")
    await a.get_by_role("button", name="Invite to battle").click()
    await expect(a.locator("#battle-status")).to_contain_text("Invited “s2”")
    invite = b.locator("#battle-invite")
    await expect(invite).to_be_visible()
    await expect(invite).to_contain_text("nova (“s1”) invites you to a 1:00 battle")
    await b.get_by_role("button", name="Decline").click()
    await expect(b.locator("#battle-status")).to_contain_text("You declined “s1”")
    await expect(invite).to_be_hidden()
    await expect(a.locator("#battle-status")).to_have_text("“s2” declined the battle.")

    # Invited again, accepted: the battle runs on both pages and on the overlay.
    await a.get_by_role("button", name="Invite to battle").click()
    await expect(invite).to_be_visible()
    await b.get_by_role("button", name="Accept").click()
    await expect(invite).to_be_hidden()
    await expect(b.locator("#battle-status")).to_have_text("Battle on: nova vs kai.")
    for page, box in ((a, "#battle-view"), (b, "#battle-view"), (overlay.page, "#battle")):
        await expect(page.locator(box)).to_have_attribute("data-phase", "running")
        await shows_scores(page, 0, 0, box)
    await expect(a.locator("#battle-status")).to_have_text("Battle on: nova vs kai.")

    # Gifts from the pages move the scores everywhere (each page has its own side left).
    await a.get_by_role("button", name=re.compile(r"Donut")).click()  # alice to s1
    await b.get_by_role("button", name=re.compile(r"Heart")).click()  # bob to s2
    await shows_scores(a, 30, 5, "#battle-view")
    await shows_scores(b, 5, 30, "#battle-view")
    await shows_scores(overlay.page, 30, 5)
    await expect(a.locator("#feed li").first).to_contain_text("alice")
    await expect(a.locator("#feed li.level_up").first).to_contain_text("alice reached Lv 1")
    await expect(a.locator("#feed li.battle-row").first).to_contain_text("Battle on: nova")
    await a.evaluate("scrollTo(0, 0)")
    await nova.screenshot("demo-battle", full_page=True)

    # Refusals show: a stream already in a battle, a stream that does not exist.
    await a.get_by_role("button", name="Invite to battle").click()
    await expect(a.locator("#battle-status")).to_contain_text("battle_busy")
    await expect(a.locator("#battle-status")).to_have_class(re.compile(r"\bbad\b"))
    await a.locator("#battle-opponent").fill("nowhere")
    await a.get_by_role("button", name="Invite to battle").click()
    await expect(a.locator("#battle-status")).to_contain_text("unknown_stream")
    await expect(a.locator("#toast")).to_contain_text("unknown_stream")
    for w in (nova, kai, overlay):
        assert w.unexpected_errors() == []


async def test_the_configurator_offers_the_battle_widget(
    relay: RelayHandle, browser: Browser
) -> None:
    link = widget(relay, "alerts")  # any widget's link, as `giftrelay token` prints them
    query = urlencode({"token": token("nova", Role.CREATOR), "overlay": link})
    w = await open_page(browser, f"{relay.http}/overlay/setup?{query}", size=(1180, 1000))
    page = w.page
    await page.get_by_role("radio", name="battle").click()
    await expect(page.locator("#widget-note")).to_contain_text("only while the stream is in")
    await expect(page.locator("#size")).to_have_text(f"720 {TIMES} 260")
    await page.locator("select[name=own]").select_option("right")
    await page.locator("input[name=top]").fill("2")
    url = page.locator("#url")
    await expect(url).to_have_value(re.compile(r"/overlay/battle\?token=[^&]+&own=right&top=2$"))
    preview = page.frame_locator("#preview")
    await expect(preview.locator("body")).to_have_attribute("data-state", "live")
    await expect(preview.locator("#battle")).to_be_hidden()
    await start_battle(relay, 60)
    await gift(relay.money, "alice", "s1", "rocket")  # 1,000 coins: level 3
    await gift(relay.money, "bob", "s1", "donut")
    await gift(relay.money, "carol", "s1", "heart")
    box = preview.locator("#battle")
    await expect(box.locator(".side-name.right .creator")).to_have_text("nova")  # own=right
    await expect(box.locator(".battle-top ol.right .user")).to_have_text(["alice", "bob"])
    await expect(box.locator(".part.right .score")).to_have_text("1,035")
    assert w.unexpected_errors() == []
