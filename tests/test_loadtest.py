"""The load-test harness against a real relay: it finds no loss where there is none,
catches a relay that drops an event, and writes complete JSON and HTML results."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import shutil
import sys
import tomllib
from collections.abc import Awaitable, Callable
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest
from playwright.async_api import expect
from redis.asyncio import Redis
from rich.console import Console

from giftrelay.client import Client, RelayError
from giftrelay.embedded import RedisServer
from giftrelay.money import keys
from giftrelay.wire.events import Boost
from loadtest.drivers.gifter import resend
from loadtest.scenarios import harness
from loadtest.scenarios.harness import (
    Options,
    UsageError,
    battle,
    check_target,
    cli,
    preflight,
    report,
    wire,
)
from loadtest.scenarios.harness.result import Result, Step, result_decoder

from .browser_helpers import CHROMIUM, chromium, open_page
from .relay_helpers import SECRET, running_relay, token

RELAY = {
    "gift_rate": 100_000.0,
    "gift_burst": 100_000,
    "message_rate": 100_000.0,
    "max_connections_per_ip": 100_000,
}


def small(url: str, **overrides: object) -> Options:
    base: dict[str, object] = {
        "url": url,
        "secret": SECRET,
        "viewers": 20,
        "gift_rate": 40.0,
        "duration": 2.0,
        "processes": 2,
        "out": None,
        "quiet": True,
        "drain_timeout": 10.0,
    }
    return Options(**(base | overrides))  # type: ignore[arg-type]


Loadtest = Callable[..., Awaitable[asyncio.subprocess.Process]]


async def run_cli(loadtest: Loadtest, *args: str) -> tuple[int, str]:
    """The command as an operator runs it, in its own process (the relay stays in this one)."""
    proc = await loadtest(*args, "--secret", SECRET, "--quiet", GIFTRELAY_SECRET="")
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def files(directory: Path, pattern: str) -> list[Path]:
    return sorted(directory.glob(pattern))


async def test_short_run_finds_no_loss_and_money_is_conserved(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with running_relay(redis_server.url, **RELAY) as h:
        result = await harness.run(small(h.ws))
    assert result.viewers_connected == 20
    assert result.gifts.acked > 0
    assert result.gifts.unresolved == 0
    d = result.delivery
    assert d.expected == result.gifts.acked * 20  # every viewer was there for every gift
    assert (d.received, d.lost, d.duplicates, d.order_violations) == (d.expected, 0, 0, 0)
    assert result.latency_ms.count >= d.received
    c = result.conservation
    assert c.ok
    assert c.coins_acked == c.coins_from_wallets == c.diamonds_credited == result.gifts.acked
    assert result.relay.source == "metrics"
    assert result.relay.cpu_seconds > 0
    assert result.passed


async def test_a_lost_answer_is_settled_though_the_relay_refuses_the_first_resends(
    redis: Redis, redis_server: RedisServer
) -> None:
    """After a flood the gifter's message bucket is empty: the resend of a gift whose
    answer was lost is refused (``rate_limited``, nothing moved) until it refills."""
    async with running_relay(redis_server.url, message_rate=2.0, message_burst=10) as h:
        await h.money.stream_open("s1", "cre", "s1 live")
        await h.money.topup("alice", 100, "grant-alice")
        async with Client(h.ws, token("alice")) as alice:
            first = await alice.gift("s1", "rose", id="lost-answer-0001")
            codes = set()
            while not codes:  # empty the bucket
                try:
                    await alice.ping()
                except RelayError as exc:
                    codes.add(exc.code)
            assert codes == {"rate_limited"}
            again = await resend(alice, "s1", "rose", "lost-answer-0001", within=5.0)
        assert again is not None
        assert again.offset == first.offset
        assert (await h.money.balance("alice")).coins == 100 - first.coins


async def test_reconnect_storm_recovers_everything(redis: Redis, redis_server: RedisServer) -> None:
    async with running_relay(redis_server.url, **RELAY) as h:
        result = await harness.run(
            small(h.ws, scenario="reconnect-storm", duration=3.0, storm_window=1.0)
        )
    assert result.reconnects == 20
    assert result.delivery.not_recovered == 0
    assert result.delivery.lost == 0
    assert result.delivery.order_violations == 0
    assert result.passed


async def test_a_run_whose_gifts_are_all_refused_does_not_pass(
    redis: Redis, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing delivered is nothing lost: the run must still fail, not pass vacuously.

    The pre-run check would refuse the unknown gift at once; a target without a
    catalog (a peer) is not checked for it, so the run goes ahead, as here."""
    monkeypatch.setattr(preflight, "check", lambda options, admin_token: None)
    async with running_relay(redis_server.url, **RELAY) as h:
        result = await harness.run(small(h.ws, gift="no_such_gift"))
    assert result.gifts.acked == 0
    assert result.errors.get("unknown_gift", 0) > 0
    assert result.checks.gifts_applied is False
    assert not result.passed


async def test_a_relay_that_drops_an_event_fails_the_run(
    redis: Redis, redis_server: RedisServer, tmp_path: Path, loadtest: Loadtest
) -> None:
    seen: list[bytes] = []

    def drop_third_gift(stream: str, raw: bytes) -> bool:
        if b'"kind":"gift"' not in raw:
            return False
        seen.append(raw)
        return len(seen) == 3

    async with running_relay(redis_server.url, drop_hook=drop_third_gift, **RELAY) as h:
        status, output = await run_cli(
            loadtest, "busy-stream", "--url", h.ws, "--viewers", "12", "--gift-rate", "30",
            "--duration", "2", "--processes", "1", "--out", str(tmp_path), "--name", "dropped",
        )  # fmt: skip
    assert status == 1, output
    [path] = files(tmp_path, "dropped-*.json")
    result = result_decoder.decode(path.read_bytes())
    # The one dropped event was missed by every viewer on that worker, and nothing else.
    assert result.delivery.lost == 12
    assert result.delivery.viewers_with_loss == 12
    assert not result.checks.no_loss
    assert result.conservation.ok  # the money moved; only the event was lost
    assert not result.passed


BATTLE_CATALOG = """
[battle]
min_s = 10

[[battle.boost]]
last_s = 5
multiplier = 2

[[gift]]
id = "rose"
name = "Rose"
coins = 1
streakable = true
image = "R"
"""


async def test_battle_scores_are_checked_against_the_gifts_the_viewers_received(
    redis: Redis, redis_server: RedisServer, tmp_path: Path, loadtest: Loadtest
) -> None:
    """``battle`` end to end: a 10-second battle (a catalog whose shortest is 10 s, x2 in
    its last 5 s) between the harness's two streams, the referee beside the relay as in
    ``giftrelay serve``; gifts before, through and just after it."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(BATTLE_CATALOG)
    async with running_relay(
        redis_server.url, with_referee=True, catalog=str(catalog), **RELAY
    ) as h:
        status, output = await run_cli(
            loadtest, "battle", "--url", h.ws, "--viewers", "20", "--gift-rate", "40",
            "--battle-seconds", "10", "--processes", "2", "--out", str(tmp_path),
            "--name", "battle",
        )  # fmt: skip
    assert status == 0, output
    [json_path] = files(tmp_path, "battle-*.json")
    result = result_decoder.decode(json_path.read_bytes())
    b = result.battle
    assert b is not None
    assert (b.duration_s, b.ends_at - b.starts_at) == (10, 10_000)
    assert b.boosts == [Boost(starts_at=b.ends_at - 5_000, ends_at=b.ends_at, multiplier=2)]
    # Each side's final score is what its stream's stored gifts make, read here from the
    # stream's history in Redis: the harness's sum from what its viewers received agrees.
    for side in b.sides:
        assert side.score == side.expected == await score_from_history(redis, side.stream)
        assert 0 < side.gifts_boosted < side.gifts  # gifts before and in the boosted window
    a, z = b.sides
    assert a.score > z.score  # 3 of 5 gifts go to the inviting side
    assert b.winner == a.stream
    assert b.gifts == a.gifts + z.gifts < result.gifts.acked  # some before or after it
    assert b.gifts_boosted == a.gifts_boosted + z.gifts_boosted
    assert b.viewers == b.viewers_started == b.viewers_ended == 20
    assert (b.distinct_ends, b.extra_starts, b.extra_ends) == (1, 0, 0)
    assert b.events_per_viewer_min >= 2  # live scores, each viewer
    assert (b.score_falls, b.late_events) == (0, 0)
    assert b.end_latency_ms.count == 20
    assert sum(t.battle_events for t in result.timeline) == b.events
    c = result.checks
    battle_checks = (c.battle_start_everywhere, c.battle_end_everywhere, c.battle_scores,
                     c.battle_scores_never_fall, c.battle_winner)  # fmt: skip
    assert battle_checks == (True, True, True, True, True)
    assert result.delivery.lost == 0
    assert result.conservation.ok
    assert result.passed
    for row in ("battle scores", "battle_end", "battle events"):
        assert row in output
    [html_path] = files(tmp_path, "battle-*.html")
    assert_self_contained_with_charts(
        html_path.read_text(), extra=("battle-scores", "battle-events")
    )


async def test_a_battle_the_relay_catalog_does_not_allow_fails_with_2(
    redis: Redis, redis_server: RedisServer, loadtest: Loadtest
) -> None:
    async with running_relay(redis_server.url, **RELAY) as h:  # the shipped catalog: 30..900 s
        status, output = await run_cli(
            loadtest, "battle", "--url", h.ws, "--viewers", "2", "--gift-rate", "5",
            "--battle-seconds", "10", "--processes", "1", "--out", "",
        )  # fmt: skip
    assert status == 2, output
    assert "--battle-seconds 10: the relay refused it (duration_s must be 30 to 900" in output


async def score_from_history(redis: Redis, stream: str) -> int:
    """docs/protocol.md's rule over the stream's stored history: the gifts between its
    battle_start and battle_end whose ts is in [starts_at, ends_at), diamonds x the largest
    boost window holding the ts (else 1)."""
    score, start = 0, None
    for _, fields in await redis.xrange(keys.history(stream)):
        event = json.loads(fields["e"])
        if event["kind"] == "battle_start":
            start = event
        elif event["kind"] == "battle_end":
            return score
        elif (
            event["kind"] == "gift"
            and start
            and start["starts_at"] <= event["ts"] < start["ends_at"]
        ):
            ts = event["ts"]
            boosts = [
                b["multiplier"] for b in start["boosts"] if b["starts_at"] <= ts < b["ends_at"]
            ]
            score += event["diamonds"] * max(boosts, default=1)
    raise AssertionError(f"no battle_end in {stream}'s history")


def battle_seen(**changes: object) -> list[wire.BattleSeen]:
    """Two workers' battle: 1,000 ms to 11,000 ms, x2 from 6,000 ms; side a's gifts cost
    10 at 1,000 ms (x1), 5 at 6,000 ms (x2) and 1 at 10,999 ms (x2) = 22; side b's one 7."""
    boosts = [Boost(starts_at=6_000, ends_at=11_000, multiplier=2)]

    def start(offset: str) -> wire.BattleStart:
        return wire.BattleStart(battle="bt1", offset=offset, starts_at=1_000, ends_at=11_000,
                                boosts=boosts)  # fmt: skip

    end = changes.pop("end", None) or wire.BattleEnd(
        battle="bt1", offset="", streams=["a", "b"], scores=[22, 7], winner="a"
    )
    a_end, b_end = (
        msgspec.structs.replace(end, offset="50-0"),
        msgspec.structs.replace(end, offset="60-0"),
    )
    w1 = wire.BattleSeen(
        viewers=3, viewers_by_stream={"a": 2, "b": 1},
        starts=[wire.StartSeen(stream="a", start=start("10-0"), viewers=2),
                wire.StartSeen(stream="b", start=start("20-0"), viewers=1)],
        ends=[wire.EndSeen(stream="a", end=a_end, viewers=2),
              wire.EndSeen(stream="b", end=b_end, viewers=1)],
        events=7, events_min=2, events_max=3,
        gifts={"a": [("9-0", 2_000, 100),  # before battle_start: not the battle's
                     ("11-0", 1_000, 10), ("12-0", 6_000, 5)],
               "b": [("21-0", 999, 3),  # before starts_at
                     ("22-0", 5_000, 7), ("61-0", 10_000, 4)]},  # 61-0: after battle_end
    )  # fmt: skip
    w2 = wire.BattleSeen(
        viewers=1, viewers_by_stream={"a": 1},
        starts=[wire.StartSeen(stream="a", start=start("10-0"), viewers=1)],
        ends=[wire.EndSeen(stream="a", end=a_end, viewers=1)],
        events=2, events_min=2, events_max=2,
        gifts={"a": [("12-0", 6_000, 5), ("13-0", 10_999, 1), ("14-0", 11_000, 50)]},
    )  # fmt: skip
    for name, value in changes.items():
        setattr(w2, name, value)
    return [w1, w2]


STARTED = battle.Started(battle="bt1", starts_at=1_000, ends_at=11_000, duration_s=10,
                         start_ms=12.0)  # fmt: skip


def test_the_battle_verdict_prices_each_gift_by_its_time_and_place_in_the_stream() -> None:
    verdict = battle.judge(STARTED, ["a", "b"], {"a": "ca", "b": "cb"}, battle_seen())
    assert verdict[1:] == (True, True, True, True, True)
    a, b = verdict.figures.sides
    assert (a.score, a.expected, a.gifts, a.gifts_boosted, a.points_boosted) == (22, 22, 3, 2, 12)
    assert a.stamped_outside == 1  # 9-0: in the battle's time, before its battle_start
    assert (b.score, b.expected, b.gifts, b.stamped_outside) == (7, 7, 1, 1)
    f = verdict.figures
    assert (f.viewers, f.viewers_started, f.viewers_ended, f.distinct_ends) == (4, 4, 4, 1)
    assert (f.events, f.events_per_viewer, f.events_per_viewer_min) == (9, 2.25, 2)
    assert f.winner == "a"


@pytest.mark.parametrize(
    ("changes", "failed"),
    [
        ({"end": wire.BattleEnd(battle="bt1", offset="", streams=["a", "b"], scores=[21, 7],
                                winner="a")}, "scores"),
        ({"end": wire.BattleEnd(battle="bt1", offset="", streams=["a", "b"], scores=[22, 7],
                                winner=None)}, "winner"),
        ({"score_falls": 1, "viewers_with_falls": 1}, "never_fall"),
        ({"viewers_by_stream": {"a": 2}}, "start_everywhere end_everywhere"),  # one missed both
        ({"extra_ends": 1}, "end_everywhere"),
    ],
)  # fmt: skip
def test_the_battle_verdict_fails_the_check_that_names_what_went_wrong(
    changes: dict[str, object], failed: str
) -> None:
    verdict = battle.judge(STARTED, ["a", "b"], {"a": "ca", "b": "cb"}, battle_seen(**changes))
    checks = verdict._asdict()
    del checks["figures"]
    assert {name for name, ok in checks.items() if not ok} == set(failed.split())


def test_battle_ends_that_differ_between_the_streams_fail_the_end_check() -> None:
    seen = battle_seen()
    other = msgspec.structs.replace(seen[0].ends[1].end, scores=[22, 8])
    seen[0].ends[1] = msgspec.structs.replace(seen[0].ends[1], end=other)
    verdict = battle.judge(STARTED, ["a", "b"], {"a": "ca", "b": "cb"}, seen)
    assert not verdict.end_everywhere
    assert verdict.figures.distinct_ends == 2
    assert not verdict.scores  # b's final score is no longer what its gifts make


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


async def test_cli_writes_every_field_and_a_report_with_charts(
    redis: Redis, redis_server: RedisServer, tmp_path: Path, loadtest: Loadtest
) -> None:
    async with running_relay(redis_server.url, **RELAY) as h:
        status, output = await run_cli(
            loadtest, "many-streams", "--url", h.ws, "--streams", "3", "--viewers", "9",
            "--gift-rate", "30", "--duration", "2", "--processes", "1", "--out", str(tmp_path),
            "--max-p99", "60000",
        )  # fmt: skip
    assert status == 0, output
    [json_path] = files(tmp_path, "*.json")
    raw = json.loads(json_path.read_text())
    assert set(raw) == set(Result.__struct_fields__)
    result = msgspec.convert(raw, Result)  # every field present, with its type
    assert result.passed
    assert result.checks.p99 is True
    assert result.streams == 3
    assert result.timeline
    assert result.latency_histogram
    assert raw["options"]["secret"] is None  # secrets never reach the result file

    [html_path] = files(tmp_path, "*.html")
    assert_self_contained_with_charts(html_path.read_text())


async def test_gifts_measures_the_gift_path_against_echo_and_redis_benchmark(
    tmp_path: Path, loadtest: Loadtest
) -> None:
    proc = await loadtest(
        "gifts", "--targets", "echo,giftrelay", "--processes", "1", "--connections", "4",
        "--inflight", "4", "--relax-limits", "--duration", "1.5", "--warmup", "0.5",
        "--reference-gifts", "2000", "--out", str(tmp_path),
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    [json_path] = files(tmp_path, "gifts-*.json")
    raw = json.loads(json_path.read_text())
    assert [run["target"] for run in raw["runs"]] == ["echo", "giftrelay"]
    for run in raw["runs"]:
        assert run["acked"] > 0, run
        assert run["errors"] == {}, run
        assert run["connected"] == 4
        assert 0 < run["ack_latency_ms"]["p50"] <= run["ack_latency_ms"]["p99"]
        assert run["relay_cpu_seconds"] > 0
    relay = raw["runs"][1]
    assert relay["redis"]["commands"]["evalsha"]["calls"] > relay["acked"] // 2  # one each
    assert relay["redis_cpu_us_per_gift"] > 0
    ratios = raw["ratios"]
    assert ratios["relay CPU per gift ÷ echo's"]["value"] > 0
    assert ratios["gifts/s ÷ naive's"]["value"] is None  # naive was not run
    if shutil.which("redis-benchmark"):
        [ref] = raw["references"]
        assert ref["applied"] > 0.99 * ref["gifts"]  # the script's full path, not a refusal
        assert ratios["Redis CPU per gift ÷ redis-benchmark's"]["value"] > 0


async def test_non_loopback_targets_need_to_be_named() -> None:
    check_target("ws://127.0.0.1:8080/ws", None)
    check_target("ws://localhost:8080/ws", None)
    check_target("ws://[::1]:8080/ws", None)
    with pytest.raises(UsageError, match=r"--allow-host relay\.example\.com"):
        check_target("wss://relay.example.com/ws", None)
    check_target("wss://relay.example.com/ws", "relay.example.com")
    with pytest.raises(UsageError):
        check_target("wss://relay.example.com/ws", "other.example.com")
    with pytest.raises(UsageError):
        Options(viewers=10_000_000).limits()


async def test_cli_refuses_a_remote_target_with_status_2(loadtest: Loadtest) -> None:
    status, output = await run_cli(loadtest, "busy-stream", "--url", "ws://192.0.2.10:8080/ws")
    assert status == 2
    assert "not a loopback address" in output


def test_socketio_sinks_count_events_and_answer_pings_however_reads_split(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fan-out's Socket.IO sinks: the handshake, then counting events and answering
    pings without decoding, with frames split anywhere across reads."""
    from loadtest.drivers import sinks as br

    def frame(payload: bytes) -> bytes:  # a server frame: unmasked
        return bytes([0x81, len(payload)]) + payload

    class Transport:
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.sent.append(bytes(data))

    event = frame(b'42["events",{"stream":"bench","events":[{"kind":"gift","offset":"1-0"}]}]')
    run = b"".join(frame(b"2") if i % 7 == 0 else event for i in range(1, 60))  # 8 pings
    handshake = frame(b'0{"sid":"a","pingInterval":25000}') + frame(b"2") + frame(b'40{"sid":"b"}')
    data = b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + handshake + frame(b"430[{}]") + run
    pong = br.masked_text(b"3")
    for size in (1, 2, 3, 10, 11, 12, 100, len(data)):
        monkeypatch.setattr(br.SioSink, "events", SimpleNamespace(value=0))
        loop = asyncio.new_event_loop()
        try:
            opened: asyncio.Future[None] = loop.create_future()
            sink = br.SioSink(1, True, opened)
            transport = Transport()
            sink.connection_made(transport)  # type: ignore[arg-type]
            for i in range(0, len(data), size):
                sink.data_received(data[i : i + size])
            assert opened.done()
            assert opened.exception() is None
            assert br.SioSink.events.value == 51
            get, *rest = transport.sent
            assert get.startswith(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n")
            join = br.masked_text(b'420["join",{"stream":"bench"}]')
            assert b"".join(rest) == br.masked_text(b"40") + pong + join + pong * 8
        finally:
            loop.close()


DOCUMENTED = [
    "busy-stream --url ws://127.0.0.1:8080/ws --secret S --viewers 1000 --gift-rate 200 "
    "--duration 20",
    "ramp --secret S --viewers 500 --gift-rate 100 --step-seconds 5 --limit-p99 150",
    "fanout --viewers 1000,5000 --rate 1000 --seconds 10 --idle 10000 --workers 1,2 "
    "--compression deflate,off",
    "fanout --viewers 1000,5000 --rate 100 --seconds 10 --idle 0 --no-baseline "
    "--peers giftrelay,socketio --compression deflate,off",
    "bench --peers giftrelay,naive --viewers 100 --gift-rate -1 --inflight 16 --duration 10 "
    "--repeat 3",
    "bench --peers giftrelay,socketio --viewers 5000 --gift-rate 10 --duration 10",
    "battle --url ws://127.0.0.1:8080/ws --secret S --viewers 2000 --gift-rate 30 "
    "--battle-seconds 30",
    "gifts --duration 10 --repeat 3",
    "gifts --targets giftrelay --rate 5000 --duration 10",
    "gifts --targets giftrelay,naive --workers 2 --duration 10",
    "soak --minutes 60 --interval 60 --csv soak.csv",
]


@pytest.mark.parametrize("command", DOCUMENTED)
def test_the_documented_commands_are_subcommands_of_one_command(command: str) -> None:
    from loadtest import cli

    args = cli.parser().parse_args(command.split())
    assert cli.COMMANDS[args.command]
    assert args.command == command.split()[0]


@pytest.mark.parametrize(
    ("old", "new"), [("loadtest.bench_relay", "fanout"), ("loadtest.soak", "soak")]
)
async def test_the_old_module_paths_still_run_their_command(old: str, new: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", old, "--help", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert f"giftrelay-loadtest {new} [-h]" in out.decode()


# -- the HTML report and the live line ---------------------------------------------------------

# Each chart and the labels of its y axes, units included: one quantity per axis.
CHARTS = {
    "latency-over-time": "latency (ms)",
    "latency-histogram": "events",
    "gifts-per-second": "gifts/s",
    "events-per-second": "events/s | frames/s",
    "viewers": "viewers | errors/s",
}
DATA = Path(__file__).parent / "data" / "loadtest-result.json"  # a real 6-second run's


def sample_result(steps: bool = False) -> Result:
    result = result_decoder.decode(DATA.read_bytes())
    if steps:
        ramp = [Step(index=k, viewers=100 * k, gift_rate=50.0 * k, gifts_per_s=49.0 * k,
                     p99_ms=10.0 * k * k, ok=k < 4) for k in range(1, 5)]  # fmt: skip
        result = msgspec.structs.replace(result, scenario="ramp", steps=ramp)
    return result


def assert_self_contained_with_charts(page: str, extra: tuple[str, ...] = ()) -> None:
    """Nothing is fetched (no src or href), uPlot is inlined, and each chart names its axes."""
    parser = Tags()
    parser.feed(page)
    for tag, attrs in parser.tags:
        assert tag not in {"link", "img", "iframe", "object", "embed"}, tag
        assert "src" not in attrs, (tag, attrs)
        assert "href" not in attrs, (tag, attrs)
    assert f"uPlot {report.UPLOT_VERSION}, MIT" in page
    assert "var uPlot=function()" in page  # the library itself, not a reference to it
    assert ".uplot" in page  # and its CSS
    figures = {
        a["id"]: a for tag, a in parser.tags if tag == "figure" and a.get("class") == "chart"
    }
    for ident, y_labels in (CHARTS | dict.fromkeys(extra, "")).items():
        assert ident in figures, ident
        assert figures[ident].get("data-x-label")
        if y_labels:
            assert figures[ident].get("data-y-labels") == y_labels


def test_the_report_is_one_file_with_uplot_inside_and_a_chart_per_quantity() -> None:
    page = report.to_html(sample_result(steps=True))
    assert_self_contained_with_charts(page, extra=("ramp-steps",))
    # The run's data rides along as JSON that cannot end its <script> early.
    assert '<script type="application/json" id="report-data">' in page
    assert page.count("</script>") == 3


def test_the_json_result_file_is_unchanged_by_the_report(tmp_path: Path) -> None:
    result = sample_result()
    report.write_json(result, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(DATA.read_text())


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
async def test_the_report_charts_span_the_page_with_ticks_and_legends_clear_of_the_lines(
    tmp_path: Path,
) -> None:
    page_path = tmp_path / "report.html"
    report.write_html(sample_result(steps=True), page_path)
    async with chromium() as browser:
        w = await open_page(browser, page_path.as_uri(), size=(1280, 900))
        for width in (1280, 900):  # as opened, then after the window is resized
            await w.page.set_viewport_size({"width": width, "height": 900})
            await w.page.wait_for_timeout(200)
            await expect(w.page.locator("body")).to_have_attribute("data-charts-drawn", "6")
            charts = await w.page.evaluate(CHART_GEOMETRY)
            assert {c["id"] for c in charts} == set(CHARTS) | {"ramp-steps"}
            for c in charts:
                assert c["width"] >= 0.9 * c["page"], c
                assert c["canvas"] >= 0.9 * c["page"], c
                # uPlot's legend is a table under the plot: it never covers a line or axis.
                assert c["legend"]["top"] >= c["plot"]["bottom"], c
                assert c["legend"]["top"] >= c["axes"]["bottom"], c
                assert c["legend_entries"] == c["series"] + 1, c
                # Every axis (x, y and a second y) drew labelled ticks.
                labels = [c["x_label"], *c["y_labels"].split(" | ")]
                assert set(c["ticks"]) == set(labels), c
                assert all(len(set(c["ticks"][k])) >= 2 for k in labels), c
        assert w.unexpected_errors() == []


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
async def test_a_report_without_a_timeline_still_draws_and_says_so(tmp_path: Path) -> None:
    page_path = tmp_path / "report.html"
    empty = msgspec.structs.replace(sample_result(), timeline=[], latency_histogram=[])
    report.write_html(empty, page_path)
    async with chromium() as browser:
        w = await open_page(browser, page_path.as_uri(), size=(1000, 700))
        await expect(w.page.locator("body")).to_have_attribute("data-charts-drawn", "5")
        await expect(w.page.locator("figcaption", has_text="no data in this run")).to_have_count(5)
        assert w.unexpected_errors() == []


CHART_GEOMETRY = """() => [...document.querySelectorAll("figure.chart")].map((f) => {
  const box = (el) => { const r = el.getBoundingClientRect();
                        return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; };
  const plot = f.querySelector(".uplot");
  return {
    id: f.id, page: document.documentElement.clientWidth,
    width: plot.getBoundingClientRect().width,
    canvas: f.querySelector(".u-wrap").getBoundingClientRect().width,
    plot: box(f.querySelector(".u-over")), axes: box(f.querySelector(".u-wrap")),
    legend: box(f.querySelector(".u-legend")),
    legend_entries: f.querySelectorAll(".u-legend .u-series").length,
    series: JSON.parse(document.getElementById("report-data").textContent)
              .charts.find((c) => c.id === f.id).series.length,
    x_label: f.dataset.xLabel, y_labels: f.dataset.yLabels,
    ticks: JSON.parse(f.dataset.ticks || "{}"),
  };
})"""


@pytest.mark.parametrize("width", [80, 120])
def test_the_live_progress_line_fits_the_terminal(width: int) -> None:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=True, color_system=None)
    progress = cli.progress_bar(console)
    task = progress.add_task("reconnect-storm", total=20, rates="")
    # A big run's second: every figure at its widest.
    tick = wire.Tick(
        worker=0, second=12, viewers=200_000, gifts_acked=10_000, events=2_000_000,
        frames=150_000, reconnects=9_999, errors={"x": 9_999},
    )  # fmt: skip
    progress.update(task, completed=12, rates=cli.rates(tick, cli.rates_width(console)))
    console.print(progress.get_renderable())
    [line] = out.getvalue().splitlines()
    assert len(line) <= width
    assert "━" in line  # the bar
    assert re.search(r"\b\d:\d\d:\d\d\b", line)  # the time elapsed
    assert "…" not in line
    for part in ("200k viewers", "10.0k gifts/s", "2.00M ev", "9,999 rejoins", "9,999 err"):
        assert part in line, line
    if width >= 120:
        assert "150k frames/s" in line
        assert "9,999 errors" in line


def test_the_vendored_uplot_is_the_version_noted_and_ships_in_the_wheel() -> None:
    vendor = resources.files("loadtest.scenarios.harness") / "vendor"
    readme = (vendor / "README.md").read_text()
    for name in ("uPlot.iife.min.js", "uPlot.min.css"):
        digest = hashlib.sha256((vendor / name).read_bytes()).hexdigest()
        assert f"`{name}`" in readme
        assert digest in readme, name  # unchanged since it was fetched
    assert f"v{report.UPLOT_VERSION}" in (vendor / "uPlot.iife.min.js").read_text()[:100]
    assert "MIT License" in (vendor / "uPlot.LICENSE").read_text()
    # The wheel takes the loadtest package whole, data files included, and excludes nothing.
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert "loadtest" in wheel["packages"]
    assert not {"exclude", "only-include", "artifacts"} & set(wheel)


async def test_a_wrong_secret_an_unreachable_url_and_an_unknown_gift_fail_at_once_with_2(
    redis_server: RedisServer, loadtest: Loadtest
) -> None:
    async def status_of(*args: str) -> tuple[int, str]:
        proc = await loadtest("busy-stream", "--quiet", "--duration", "60", *args)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)  # long before the 60 s
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    async with running_relay(redis_server.url, **RELAY) as h:
        status, out = await status_of("--url", h.ws, "--secret", "wrong-" + "x" * 32)
        assert status == 2, out
        assert "--secret" in out
        assert "Traceback" not in out
        status, out = await status_of("--url", h.ws, "--secret", SECRET, "--gift", "nosuchgift")
        assert status == 2, out
        assert "--gift 'nosuchgift'" in out
        assert "rose" in out
    status, out = await status_of("--url", h.ws, "--secret", SECRET)  # the relay has stopped
    assert status == 2, out
    assert "cannot reach the relay" in out
    assert "--url" in out
    assert "Traceback" not in out
