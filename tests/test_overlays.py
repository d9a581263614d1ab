"""The overlay widgets and the demo page in a real headless chromium, against a real relay.

Synchronisation is Playwright's auto-waiting (``expect``, ``wait_for_function``): no sleeps.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import pytest
from playwright.async_api import Browser, expect
from redis.asyncio import Redis

from giftrelay import auth
from giftrelay.auth import Role
from giftrelay.cli.banner import OVERLAY_WIDGETS
from giftrelay.config import Settings
from giftrelay.embedded import RedisServer, free_port
from giftrelay.money import catalog, keys
from giftrelay.money.api import Money
from giftrelay.redis_client import connect as redis_connect

from .browser_helpers import (
    BACKDROP,
    CHROMIUM,
    EXPECTED_WHEN_REFUSED,
    Watched,
    chromium,
    corner_alpha,
    open_page,
    relay_on,
)
from .relay_helpers import SECRET, Client, RelayHandle, running_relay, token

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)

FAST = {"gift_rate": 100_000.0, "gift_burst": 100_000, "message_rate": 100_000.0}
WIDGETS = ("alerts", "top", "goal", "viewers", "battle")
VIEWERS = ("alice", "bob", "carol")

# Records, in the page, every alert put on screen and the most on screen at once.
ALERT_PROBE = """() => {
  window.shown = [];
  window.mostAtOnce = 0;
  new MutationObserver((records) => {
    for (const r of records) for (const n of r.addedNodes) {
      if (n.classList?.contains("alert")) {
        window.shown.push(n.querySelector(".from").textContent + " " +
                          n.querySelector(".name").textContent);
      }
    }
    window.mostAtOnce = Math.max(window.mostAtOnce, document.querySelectorAll(".alert").length);
  }).observe(document.getElementById("alerts"), { childList: true });
}"""


@pytest.fixture
async def relay(redis: Redis, redis_server: RedisServer) -> AsyncIterator[RelayHandle]:
    async with running_relay(redis_server.url, combo_window_ms=1500, **FAST) as h:
        await setup_stream(h.money)
        yield h


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


async def setup_stream(money: Money) -> None:
    await money.stream_open("s1", "cre", "s1 live")
    for user in VIEWERS:
        await money.topup(user, 10_000, f"grant-{user}")


async def gift(money: Money, user: str, gift_id: str, count: int = 1) -> None:
    await money.gift(user, "s1", gift_id, count, uuid.uuid4().hex)


def widget(h: RelayHandle, name: str, tok: str | None = None, **options: object) -> str:
    query = urlencode({"token": tok or token("studio", Role.OVERLAY, stream="s1"), **options})
    return f"{h.http}/overlay/{name}?{query}"


async def live(w: Watched) -> None:
    await expect(w.page.locator("body")).to_have_attribute("data-state", "live")


# -- alerts ------------------------------------------------------------------------------------


async def test_a_gift_alert_names_the_gifter_and_gift_and_its_combo_counts_up(
    relay: RelayHandle, browser: Browser
) -> None:
    w = await open_page(browser, widget(relay, "alerts", duration=30, position="bottom-left"))
    await live(w)
    alert = w.page.locator(".alert")
    await gift(relay.money, "alice", "rose")
    await expect(alert).to_have_count(1)
    await expect(alert.locator(".from")).to_have_text("alice")
    await expect(alert.locator(".name")).to_have_text("Rose")
    await expect(alert.locator(".gift-image")).to_have_text("🌹")
    await expect(alert.locator(".count")).to_be_hidden()  # x1 is not worth showing
    for n in (2, 3):
        await gift(relay.money, "alice", "rose")
        await expect(alert.locator(".count")).to_have_text(f"x{n}")
        await expect(alert.locator(".count")).to_be_visible()
    # The relay's combo_end (after the 1.5 s window) closes the combo: still one alert.
    await expect(alert).to_have_class(re.compile(r"\bended\b"))
    await expect(alert).to_have_count(1)
    await expect(alert.locator(".count")).to_have_text("x3")
    await expect(w.page.locator("#alerts")).to_have_class(re.compile(r"\bpos-bottom-left\b"))
    await settled(w)
    await clip_shot(w, "alerts")
    assert w.unexpected_errors() == []


async def test_alerts_queue_one_at_a_time_and_skip_gifts_below_the_minimum(
    relay: RelayHandle, browser: Browser
) -> None:
    w = await open_page(browser, widget(relay, "alerts", duration=1, min=5))
    await live(w)
    await w.page.evaluate(ALERT_PROBE)
    await gift(relay.money, "alice", "rose")  # 1 coin: below the minimum
    await gift(relay.money, "bob", "donut")  # 30
    await gift(relay.money, "carol", "heart")  # 5
    await w.page.wait_for_function("window.shown.length === 2")
    await expect(w.page.locator(".alert")).to_have_count(0)  # both done
    assert await w.page.evaluate("window.shown") == ["bob Donut", "carol Heart"]
    assert await w.page.evaluate("window.mostAtOnce") == 1
    assert w.unexpected_errors() == []


async def test_a_test_alert_shows_like_a_gift_with_a_test_mark(
    relay: RelayHandle, browser: Browser
) -> None:
    w = await open_page(browser, widget(relay, "alerts", duration=30), size=(960, 420))
    await live(w)
    creator = await Client.open(relay.ws, token("cre", Role.CREATOR))
    reply = await creator.request(type="test_alert", stream="s1", gift="castle", count=2)
    assert reply["type"] == "test_ok"
    alert = w.page.locator(".alert")
    await expect(alert.locator(".from")).to_have_text("cre")
    await expect(alert.locator(".name")).to_have_text("Castle")
    await expect(alert.locator(".count")).to_have_text("x2")
    await expect(alert.locator(".test-mark")).to_be_visible()
    await settled(w)
    await clip_shot(w, "alerts-test")
    await creator.close()
    assert w.unexpected_errors() == []


# -- top, goal, viewers ------------------------------------------------------------------------


async def test_top_gifters_and_goal_follow_the_gifts(relay: RelayHandle, browser: Browser) -> None:
    await relay.money.set_goal("s1", "cre", "new mic", 100)
    await gift(relay.money, "bob", "heart")  # before the pages open: from the snapshot
    top = await open_page(browser, widget(relay, "top"), size=(420, 300))
    goal = await open_page(browser, widget(relay, "goal"), size=(520, 160))
    await live(top)
    await live(goal)
    await expect(goal.page.locator("#title")).to_have_text("new mic")
    await expect(goal.page.locator("#progress")).to_have_text("5 / 100 diamonds")
    await expect(top.page.locator(".user")).to_have_text(["bob"])

    await gift(relay.money, "alice", "donut")  # 30
    await relay.money.test_alert("s1", "cre", "castle", 1)  # moves no money: not progress
    await gift(relay.money, "carol", "rose")  # 1
    await expect(goal.page.locator("#progress")).to_have_text("36 / 100 diamonds")
    await expect(goal.page.locator("#percent")).to_have_text("36%")
    await expect(top.page.locator(".user")).to_have_text(["alice", "bob", "carol"])
    await expect(top.page.locator(".coins")).to_have_text(["30 coins", "5 coins", "1 coin"])
    await goal.showcase("goal")
    await top.showcase("top")

    # A new goal (a `goal` event) replaces the bar; progress counts from then on.
    await relay.money.set_goal("s1", "cre", "new camera", 50)
    await expect(goal.page.locator("#title")).to_have_text("new camera")
    await expect(goal.page.locator("#progress")).to_have_text("0 / 50 diamonds")
    await gift(relay.money, "alice", "heart")
    await expect(goal.page.locator("#percent")).to_have_text("10%")
    assert top.unexpected_errors() == goal.unexpected_errors() == []


async def test_viewer_count_goes_up_and_down(relay: RelayHandle, browser: Browser) -> None:
    w = await open_page(browser, widget(relay, "viewers"), size=(360, 120))
    await live(w)
    count = w.page.locator("#count")
    await expect(count).to_have_text("0")  # overlays are not part of the audience
    viewer = await Client.open(relay.ws)
    await viewer.join("s1")
    await expect(count).to_have_text("1")
    await w.showcase("viewers")
    await viewer.close()
    await expect(count).to_have_text("0")
    assert w.unexpected_errors() == []


async def test_every_widget_has_a_transparent_page(relay: RelayHandle, browser: Browser) -> None:
    for name in WIDGETS:
        w = await open_page(browser, widget(relay, name))
        await live(w)
        for element in ("html", "body"):
            color = await w.page.eval_on_selector(
                element, "e => getComputedStyle(e).backgroundColor"
            )
            assert color == "rgba(0, 0, 0, 0)", (name, element)
        png = await w.screenshot(f"{name}-transparent", omit_background=True)
        assert corner_alpha(png) == 0, name
        assert w.unexpected_errors() == [], name
        await w.page.close()


# -- links that cannot work --------------------------------------------------------------------


async def test_a_bad_link_says_what_is_wrong(relay: RelayHandle, browser: Browser) -> None:
    other_secret = auth.mint("another-secret-" + "y" * 32, "studio", Role.OVERLAY, stream="s1")
    cases = {
        "no_token": f"{relay.http}/overlay/alerts",
        "malformed": widget(relay, "alerts", tok="not-a-jwt"),
        "not_overlay": widget(relay, "top", tok=token("alice")),
        "expired": widget(
            relay, "goal", tok=token("s", Role.OVERLAY, "s1", ttl=60, now=time.time() - 3600)
        ),
        "refused": widget(relay, "viewers", tok=other_secret),  # the relay answers 401
    }
    for reason, url in cases.items():
        w = await open_page(browser, url)
        status = w.page.locator("#overlay-status")
        await expect(status).to_have_attribute("data-reason", reason)
        await expect(status).to_be_visible()
        await expect(status).to_contain_text("giftrelay token")
        await expect(w.page.locator("body")).to_have_attribute("data-state", "error")
        if reason == "refused":
            await w.showcase("refused")
        assert w.unexpected_errors(EXPECTED_WHEN_REFUSED) == [], reason
        await w.page.close()


async def test_revoked_links_stop_and_say_so(relay: RelayHandle, browser: Browser) -> None:
    old = token("studio", Role.OVERLAY, stream="s1")
    w = await open_page(browser, widget(relay, "alerts", tok=old))
    await live(w)
    creator = await Client.open(relay.ws, token("cre", Role.CREATOR))
    assert (await creator.request(type="revoke_overlays", stream="s1"))["type"] == "revoke_ok"
    status = w.page.locator("#overlay-status")
    await expect(status).to_have_attribute("data-reason", "revoked")
    await expect(status).to_contain_text("revoked")
    assert w.unexpected_errors() == []

    # The old link, opened again, is refused at the handshake and says so.
    again = await open_page(browser, widget(relay, "alerts", tok=old))
    await expect(again.page.locator("#overlay-status")).to_have_attribute("data-reason", "refused")
    assert again.unexpected_errors(EXPECTED_WHEN_REFUSED) == []
    # A link minted after the revoke works.
    fresh = await open_page(browser, widget(relay, "alerts"))
    await live(fresh)
    assert fresh.unexpected_errors() == []
    await creator.close()


# -- reconnecting ------------------------------------------------------------------------------


async def test_widgets_reconnect_after_the_relay_restarts_and_catch_up(
    redis: Redis, redis_server: RedisServer, browser: Browser
) -> None:
    port = free_port()
    # Another worker's money core: it moves money while this relay is down.
    other = Money(redis_connect(redis_server.url), Settings.load({}), catalog.load())
    await other.start()
    try:
        async with relay_on(redis_server.url, port, **FAST) as first:
            await setup_stream(first.money)
            await first.money.set_goal("s1", "cre", "new mic", 1000)
            alerts = await open_page(browser, widget(first, "alerts", duration=1))
            goal = await open_page(browser, widget(first, "goal"))
            await live(alerts)
            await live(goal)
            await alerts.page.evaluate(ALERT_PROBE)
            await gift(first.money, "alice", "rose")
            await alerts.page.wait_for_function("window.shown.length === 1")
            await expect(goal.page.locator("#progress")).to_have_text("1 / 1,000 diamonds")

        await expect(alerts.page.locator("body")).not_to_have_attribute("data-state", "live")
        await gift(other, "bob", "heart")  # while no relay runs: recovered with `since`

        async with relay_on(redis_server.url, port, **FAST) as second:
            await live(alerts)
            await live(goal)
            await alerts.page.wait_for_function("window.shown.length === 2")
            await expect(goal.page.locator("#progress")).to_have_text("6 / 1,000 diamonds")
            await gift(second.money, "carol", "donut")
            await alerts.page.wait_for_function("window.shown.length === 3")
            await expect(goal.page.locator("#progress")).to_have_text("36 / 1,000 diamonds")
            # Each gift shown once, in order: nothing stale or repeated after the restart.
            assert await alerts.page.evaluate("window.shown") == [
                "alice Rose",
                "bob Heart",
                "carol Donut",
            ]

        # Down again, and the history no longer reaches back to what the pages saw
        # (recovered: false): they start over from the snapshot, replaying nothing.
        await expect(goal.page.locator("body")).not_to_have_attribute("data-state", "live")
        for _ in range(3):
            await gift(other, "bob", "heart")
        await redis.xtrim(keys.history("s1"), maxlen=1, approximate=False)
        async with relay_on(redis_server.url, port, **FAST) as third:
            await live(alerts)
            await expect(goal.page.locator("#progress")).to_have_text("51 / 1,000 diamonds")
            await gift(third.money, "alice", "crown")
            await alerts.page.wait_for_function("window.shown.length === 4")
            # (then "alice level 1": the crown took her past 100 coins, a level-up alert)
            assert (await alerts.page.evaluate("window.shown"))[3:4] == ["alice Crown"]
    finally:
        await other.aclose()
        await other.redis.aclose()
    for w in (alerts, goal):
        assert w.unexpected_errors(EXPECTED_WHEN_REFUSED) == []


# -- the token command and the demo page -------------------------------------------------------


def run_token(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "giftrelay", "token", *args],
        env={**os.environ, "GIFTRELAY_SECRET": SECRET, "GIFTRELAY_REDIS_URL": "redis://x", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result


async def test_token_command_prints_obs_links_that_work(
    relay: RelayHandle, browser: Browser
) -> None:
    args = ("studio", "--role", "overlay", "--stream", "s1", "--base-url", relay.http + "/")
    result = await asyncio.to_thread(run_token, *args)
    minted = result.stdout.strip()  # the token alone on stdout, as for every role
    assert auth.verify(SECRET, minted).stream == "s1"
    links = re.findall(r"http://\S+", result.stderr)
    assert links == [f"{relay.http}/overlay/{name}?token={minted}" for name in OVERLAY_WIDGETS]
    w = await open_page(browser, links[0])
    await live(w)
    assert w.unexpected_errors() == []

    # Without --base-url: GIFTRELAY_HOST and GIFTRELAY_PORT, a wildcard host as loopback.
    result = await asyncio.to_thread(
        run_token, *args[:5], GIFTRELAY_HOST="0.0.0.0", GIFTRELAY_PORT="9123"
    )
    assert "http://127.0.0.1:9123/overlay/goal?token=" in result.stderr
    # Other roles: only the token.
    result = await asyncio.to_thread(run_token, "alice")
    assert (result.stderr, auth.verify(SECRET, result.stdout.strip()).sub) == ("", "alice")


async def test_demo_page_watches_and_sends_gifts(relay: RelayHandle, browser: Browser) -> None:
    query = urlencode(
        {"token": token("alice"), "creator": token("cre", Role.CREATOR), "stream": "s1"}
    )
    w = await open_page(browser, f"{relay.http}/?{query}", size=(1200, 820))
    page = w.page
    await live(w)
    await expect(page.locator("#who")).to_have_text("you: alice (viewer)")
    await expect(page.locator("#balance")).to_have_text("10,000")
    await expect(page.locator("#stream-title")).to_have_text("s1 live")

    await page.get_by_role("button", name=re.compile(r"Donut")).click()
    first = page.locator("#feed li").first
    await expect(first).to_contain_text("alice sent Donut")
    await expect(page.locator("#balance")).to_have_text("9,970")
    await expect(page.locator("#top .user")).to_have_text(["alice"])

    # Gifts from elsewhere arrive too; a combo counts up in the feed.
    for _ in range(2):
        await gift(relay.money, "bob", "rose")
    await expect(first).to_contain_text("bob sent Rose x2")

    # Creator tools: set a goal, send a test alert.
    await page.get_by_role("button", name="Set goal").click()
    await expect(page.locator("#goal .progress")).to_have_text("0 / 1,000 diamonds")
    await expect(page.locator("#goal .percent")).to_have_text("0%")
    await page.locator("#test-gift").select_option("castle")
    await page.get_by_role("button", name="Test alert").click()
    await expect(first).to_contain_text("cre sent Castle")
    await expect(first.locator(".tag")).to_have_text("test")
    await page.evaluate("scrollTo(0, 0)")
    await w.screenshot("demo", full_page=True)

    # Watching a stream that does not exist says so; the creator can open it.
    await page.locator("#stream").fill("s2")
    await page.get_by_role("button", name="Watch").click()
    await expect(page.locator("#status")).to_contain_text("no stream “s2” yet")
    await page.get_by_role("button", name="Open stream").click()
    await live(w)
    await expect(page.locator("#stream-title")).to_have_text("My stream")
    assert w.unexpected_errors() == []


# -- alert tiers -------------------------------------------------------------------------------


async def alert_box(w: Watched) -> dict[str, float]:
    box = await w.page.locator(".alert").bounding_box()
    assert box is not None
    return box


async def settled(w: Watched) -> None:
    """Wait until every entrance animation has ended (the burst's endless glow aside)."""
    await w.page.wait_for_function(
        "document.getAnimations().every((a) => a.playState !== 'running'"
        " || a.effect.getTiming().iterations === Infinity)"
    )


async def clip_shot(w: Watched, name: str, margin: int = 28) -> bytes:
    """A screenshot of the alert and its glow over the dark backdrop (for the docs)."""
    await w.page.add_style_tag(content=f"html {{ background: {BACKDROP} !important; }}")
    box = await alert_box(w)
    size = w.page.viewport_size or {"width": 0, "height": 0}
    x, y = max(0, box["x"] - margin), max(0, box["y"] - margin)
    clip = {
        "x": x,
        "y": y,
        "width": min(size["width"] - x, box["width"] + 2 * margin),
        "height": min(size["height"] - y, box["height"] + 2 * margin),
    }
    return await w.screenshot(name, clip=clip)


async def test_alert_tiers_make_a_big_gift_look_big_and_show_the_amount(
    relay: RelayHandle, browser: Browser
) -> None:
    creator = await Client.open(relay.ws, token("cre", Role.CREATOR))
    shots: dict[str, dict[str, float]] = {}
    looks: dict[str, tuple[str, str, str]] = {}
    for gift_id, count in (("rose", 1), ("galaxy", 1)):
        w = await open_page(
            browser,
            widget(relay, "alerts", duration=30, recent=0),  # not the last page's rose again
            size=(960, 420),
            reduced_motion="reduce",
        )
        await live(w)
        reply = await creator.request(type="test_alert", stream="s1", gift=gift_id, count=count)
        assert reply["type"] == "test_ok"
        alert = w.page.locator(".alert")
        await expect(alert).to_have_count(1)
        shots[gift_id] = await alert_box(w)
        looks[gift_id] = (
            await alert.get_attribute("data-tier") or "",
            await alert.evaluate("a => getComputedStyle(a).borderTopColor"),
            await alert.evaluate("a => getComputedStyle(a).fontSize"),
        )
        await clip_shot(w, f"tier-{gift_id}")
        if gift_id == "rose":
            await expect(alert.locator(".amount")).to_have_text("1 coin")
            await expect(alert).to_have_class(re.compile(r"\btier-1\b.*\banim-fade\b"))
        else:
            await expect(alert.locator(".amount")).to_have_text("34,999 coins")
            await expect(alert).to_have_class(re.compile(r"\btier-4\b.*\banim-burst\b"))
        assert w.unexpected_errors() == []
        await w.page.close()
    assert (looks["rose"][0], looks["galaxy"][0]) == ("1", "4")
    assert looks["rose"][1] != looks["galaxy"][1]  # another colour
    assert (looks["rose"][2], looks["galaxy"][2]) == ("22px", "46.2px")  # 2.1 times the size
    assert shots["galaxy"]["height"] > 1.8 * shots["rose"]["height"]
    await creator.close()


async def test_a_combo_climbs_tiers_and_url_options_set_the_tiers(
    relay: RelayHandle, browser: Browser
) -> None:
    w = await open_page(
        browser,
        widget(
            relay,
            "alerts",
            duration=30,
            unit="diamonds",
            **{
                "tiers": "0,10",
                "tier2.color": "00ff00",
                "tier2.scale": "3",
                "tier2.animation": "bounce",
            },
        ),
        size=(960, 420),
    )
    await live(w)
    alert = w.page.locator(".alert")
    await gift(relay.money, "alice", "heart")  # 5 coins: tier 1
    await expect(alert).to_have_attribute("data-tier", "1")
    await gift(relay.money, "alice", "heart")  # the combo is worth 10: tier 2
    await expect(alert).to_have_attribute("data-tier", "2")
    await expect(alert).to_have_class(re.compile(r"\banim-bounce\b"))
    await expect(alert.locator(".count")).to_have_text("x2")
    assert await alert.evaluate("a => getComputedStyle(a).borderTopColor") == "rgb(0, 255, 0)"
    assert await alert.evaluate("a => getComputedStyle(a).fontSize") == "66px"
    diamonds = await alert.locator(".amount").text_content()
    assert (diamonds or "").endswith(" diamonds")
    assert w.unexpected_errors() == []


async def test_the_tiers_come_from_the_catalogs_overlay_section(
    relay: RelayHandle, browser: Browser
) -> None:
    w = await open_page(browser, f"{relay.http}/catalog.json")
    served = await w.page.evaluate("() => JSON.parse(document.body.innerText)")
    assert [t["coins"] for t in served["overlay"]["tiers"]] == [0, 100, 1000, 10000]
    assert {t["sound"] for t in served["overlay"]["tiers"]} == {""}


# -- units, a reached goal, long names ---------------------------------------------------------

LONG_NAME = "a_very_long_viewer_name_of_36_chars_"


async def inside(w: Watched, inner: str, outer: str) -> None:
    """Every ``inner`` element lies within its ``outer`` ancestor's box, and so in the viewport."""
    boxes = await w.page.eval_on_selector_all(
        inner,
        """(nodes, outer) => nodes.map((n) => {
            const a = n.getBoundingClientRect(), b = n.closest(outer).getBoundingClientRect();
            return [a.left >= b.left - 0.5, a.right <= b.right + 0.5, b.right <= innerWidth];
        })""",
        outer,
    )
    assert boxes
    assert all(all(b) for b in boxes), boxes


async def test_a_goal_past_its_target_shows_reached_not_an_overflowing_bar(
    relay: RelayHandle, browser: Browser
) -> None:
    await relay.money.set_goal("s1", "cre", "new mic", 10)
    w = await open_page(browser, widget(relay, "goal"), size=(520, 160))
    await live(w)
    await expect(w.page.locator("#badge")).to_be_hidden()
    await gift(relay.money, "alice", "confetti")  # 100 coins: 100 diamonds, 1000%
    await gift(relay.money, "alice", "heart", 4)  # 20 more: 1200%
    await expect(w.page.locator("#progress")).to_have_text("120 / 10 diamonds")
    await expect(w.page.locator("#percent")).to_have_text("1200%")
    await expect(w.page.locator(".goal")).to_have_class(re.compile(r"\breached\b"))
    await expect(w.page.locator("#badge")).to_have_text("Goal reached!")
    await expect(w.page.locator("#badge")).to_be_visible()
    await expect(w.page.locator(".confetti").first).to_be_attached()  # the celebration
    # The bar fills (after its 400 ms transition) and stops at its end.
    await w.page.wait_for_function(
        "document.getElementById('fill').getBoundingClientRect().width"
        " === document.querySelector('.bar').getBoundingClientRect().width"
    )
    await w.page.wait_for_function("!document.querySelector('.confetti')")
    await w.showcase("goal-reached")
    assert w.unexpected_errors() == []


async def test_long_names_are_cut_and_amounts_stay_in_the_card(
    relay: RelayHandle, browser: Browser
) -> None:
    await relay.money.topup(LONG_NAME, 10_000, "grant-long")
    alerts = await open_page(
        browser, widget(relay, "alerts", duration=30), size=(640, 300), reduced_motion="reduce"
    )
    await live(alerts)
    await gift(relay.money, LONG_NAME, "rocket")
    await expect(alerts.page.locator(".alert .amount")).to_have_text("1,000 coins")
    await inside(alerts, ".alert .amount", ".alert")
    await clip_shot(alerts, "alert-long-name")
    await gift(relay.money, "bob", "heart")
    top = await open_page(browser, widget(relay, "top"), size=(400, 320))
    await live(top)
    await expect(top.page.locator(".user")).to_have_text([LONG_NAME, "bob"])
    await expect(top.page.locator(".coins")).to_have_text(["1,000 coins", "5 coins"])
    await inside(top, ".coins", ".card")
    cut = await top.page.eval_on_selector(".user", "n => n.scrollWidth > n.clientWidth")
    assert cut  # the name is cut (an ellipsis), not the amount
    await top.showcase("top-long-name")

    query = urlencode({"token": token("alice"), "stream": "s1"})
    demo = await open_page(browser, f"{relay.http}/?{query}", size=(700, 900))
    await live(demo)
    await expect(demo.page.locator("#top .user")).to_have_text([LONG_NAME, "bob"])
    await gift(relay.money, LONG_NAME, "donut")
    await expect(demo.page.locator("#feed li").first).to_contain_text("sent Donut")
    await inside(demo, "#top .coins", ".panel")
    await inside(demo, "#feed .amount", ".panel")
    for w in (alerts, top, demo):
        assert w.unexpected_errors() == []


# -- the last gifts, filled in on load ---------------------------------------------------------


async def test_the_alerts_and_the_demo_feed_fill_in_the_last_gifts_on_load(
    relay: RelayHandle, browser: Browser
) -> None:
    await gift(relay.money, "alice", "rose")
    await gift(relay.money, "bob", "donut")
    await gift(relay.money, "carol", "heart")
    # The alerts widget: the last `recent` gifts of the past minute, oldest first.
    w = await open_page(browser, widget(relay, "alerts", duration=30, recent=2))
    await live(w)
    await expect(w.page.locator(".alert .from")).to_have_text("bob")
    await expect(w.page.locator(".alert .amount")).to_have_text("30 coins")
    none = await open_page(browser, widget(relay, "alerts", duration=30, recent=0))
    await live(none)
    await expect(none.page.locator(".alert")).to_have_count(0)

    # The demo page: its feed, newest first, as if it had been open all along.
    query = urlencode({"token": token("alice"), "stream": "s1"})
    demo = await open_page(browser, f"{relay.http}/?{query}", size=(1200, 820))
    await live(demo)
    rows = demo.page.locator("#feed li")
    await expect(rows).to_have_count(3)
    await expect(rows.nth(0)).to_contain_text("carol sent Heart")
    await expect(rows.nth(2)).to_contain_text("alice sent Rose")
    await gift(relay.money, "bob", "rose")  # live gifts go on top, nothing repeated
    await expect(rows).to_have_count(4)
    await expect(rows.nth(0)).to_contain_text("bob sent Rose")
    for page in (w, none, demo):
        assert page.unexpected_errors() == []


# -- prefers-reduced-motion --------------------------------------------------------------------


async def test_reduced_motion_shows_alerts_and_a_reached_goal_still(
    relay: RelayHandle, browser: Browser
) -> None:
    await relay.money.set_goal("s1", "cre", "new mic", 10)
    creator = await Client.open(relay.ws, token("cre", Role.CREATOR))
    moving = await open_page(browser, widget(relay, "alerts", duration=30), size=(960, 420))
    still = await open_page(
        browser, widget(relay, "alerts", duration=30), size=(960, 420), reduced_motion="reduce"
    )
    goal = await open_page(browser, widget(relay, "goal"), size=(520, 160), reduced_motion="reduce")
    for w in (moving, still, goal):
        await live(w)
    await creator.request(type="test_alert", stream="s1", gift="galaxy", count=1)
    for w in (moving, still):
        await expect(w.page.locator(".alert.anim-burst")).to_have_count(1)
    name = "a => getComputedStyle(a).animationName"
    assert await moving.page.locator(".alert").evaluate(name) != "none"
    assert await still.page.locator(".alert").evaluate(name) == "none"
    assert await still.page.evaluate("document.getAnimations().length") == 0

    await gift(relay.money, "alice", "confetti")  # 1000%: reached, without confetti
    await expect(goal.page.locator(".goal")).to_have_class(re.compile(r"\breached\b"))
    await expect(goal.page.locator("#badge")).to_be_visible()
    assert await goal.page.locator(".confetti").count() == 0
    assert await goal.page.evaluate("document.getAnimations().length") == 0
    await creator.close()
    for w in (moving, still, goal):
        assert w.unexpected_errors() == []


# -- the configurator --------------------------------------------------------------------------


async def test_the_configurator_previews_test_alerts_and_gives_a_working_obs_url(
    relay: RelayHandle, browser: Browser
) -> None:
    overlay = token("studio", Role.OVERLAY, stream="s1")
    link = widget(relay, "alerts", tok=overlay)  # as `giftrelay token` prints it
    query = urlencode({"token": token("cre", Role.CREATOR), "overlay": link})
    w = await open_page(browser, f"{relay.http}/overlay/setup?{query}", size=(1180, 1000))
    page = w.page
    await expect(page.locator("#links-hint")).to_have_text("Stream “s1”.")
    await expect(page.locator("#who")).to_have_text("creator: cre")
    await page.locator("select[name=position]").select_option("top-left")
    await page.locator("input[name=tiers]").fill("0,50")
    await page.locator("input[name='tier2.color']").fill("00ff00")
    url = page.locator("#url")
    await expect(url).to_have_value(re.compile(r"position=top-left"))
    preview = page.frame_locator("#preview")
    await expect(preview.locator("body")).to_have_attribute("data-state", "live")
    await expect(preview.locator("#alerts")).to_have_class(re.compile(r"\bpos-top-left\b"))

    # A test alert from the page shows in the preview, in the tier the options set.
    await page.locator("#test-gift").select_option("donut")  # 30 coins: x2 is 60, tier 2
    await page.locator("#test-count").fill("2")
    await page.get_by_role("button", name="Send test alert").click()
    await expect(page.locator("#test-result")).to_contain_text("Test alert sent")
    alert = preview.locator(".alert")
    await expect(alert.locator(".name")).to_have_text("Donut")
    await expect(alert).to_have_attribute("data-tier", "2")
    await expect(alert.locator(".test-mark")).to_be_visible()
    await settled_frame(w)
    await page.evaluate("scrollTo(0, 0)")
    await w.screenshot("setup", clip={"x": 0, "y": 0, "width": 1180, "height": 800})

    # The copied URL works on its own, as OBS would open it.
    await page.get_by_role("button", name="Copy").click()
    await expect(page.locator("#copy-result")).to_contain_text(re.compile("Copied|Ctrl"))
    obs_url = await url.input_value()
    assert obs_url.startswith(f"{relay.http}/overlay/alerts?token={overlay}&")
    obs = await open_page(browser, obs_url, size=(960, 420))
    await live(obs)
    await expect(obs.page.locator("#alerts")).to_have_class(re.compile(r"\bpos-top-left\b"))
    await gift(relay.money, "alice", "donut", 2)
    await expect(obs.page.locator(".alert")).to_have_attribute("data-tier", "2")
    color = await obs.page.locator(".alert").evaluate("a => getComputedStyle(a).borderTopColor")
    assert color == "rgb(0, 255, 0)"

    # Another widget: its own options, its own URL.
    await page.get_by_role("radio", name="top").click()
    await page.locator("input[name=n]").fill("3")
    await expect(url).to_have_value(re.compile(r"/overlay/top\?token=.*&n=3$"))
    await expect(preview.locator(".top")).to_be_visible()
    assert w.unexpected_errors() == obs.unexpected_errors() == []


async def settled_frame(w: Watched) -> None:
    """Wait until the preview's entrance animations have ended."""
    frame = w.page.frame_locator("#preview")
    await frame.locator("body").evaluate(
        """() => Promise.all(document.getAnimations()
            .filter((a) => a.effect.getTiming().iterations !== Infinity)
            .map((a) => a.finished))"""
    )


async def test_a_tier_sound_plays_only_when_one_is_set(
    relay: RelayHandle, browser: Browser
) -> None:
    record_plays = """HTMLMediaElement.prototype.play = function () {
        (window.played ??= []).push(this.src);
        return Promise.resolve();
    };"""
    pages = []
    for options in ({}, {"tier1.sound": "/sounds/ding.mp3"}):
        page = await browser.new_page()
        await page.add_init_script(record_plays)
        w = Watched(page)
        await page.goto(widget(relay, "alerts", duration=30, recent=0, **options))
        await live(w)
        pages.append(w)
    await gift(relay.money, "alice", "rose")
    for w in pages:
        await expect(w.page.locator(".alert")).to_have_count(1)
    assert await pages[0].page.evaluate("window.played ?? []") == []  # no sound by default
    assert await pages[1].page.evaluate("window.played") == [f"{relay.http}/sounds/ding.mp3"]
    for w in pages:  # the made-up sound file is not there (a 404), which is fine here
        assert w.unexpected_errors(re.compile("Failed to load resource")) == []
