"""A run's result for people: a rich summary table, a JSON file, an HTML page with charts.

The HTML is one self-contained file: the charts are drawn by uPlot (vendor/, MIT), whose
script and CSS are inlined with the run's data, and nothing is fetched from elsewhere,
so a report can be attached to an issue or opened offline years later.
"""

from __future__ import annotations

import functools
import html
import time
from importlib import resources
from pathlib import Path

import msgspec
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ...drivers.viewer import Latency
from .result import BattleFigures, Result


def write_json(result: Result, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n")


def _mark(ok: bool | None) -> str:
    return "-" if ok is None else ("[green]ok[/]" if ok else "[bold red]FAILED[/]")


def _lat(lat: Latency) -> str:
    if not lat.count:
        return "-"
    return (
        f"p50 {lat.p50:,.1f}  p90 {lat.p90:,.1f}  p99 {lat.p99:,.1f}  "
        f"p99.9 {lat.p999:,.1f}  max {lat.max:,.1f} ms  (n={lat.count:,})"
    )


def summary_rows(r: Result) -> list[tuple[str, str]]:
    """(what, value) pairs; values may carry rich markup."""
    d, u = r.delivery, r.relay
    rows = [
        ("scenario", f"{r.scenario}, {r.duration_s:.1f} s, {r.processes} client processes"),
        (
            "viewers",
            f"{r.viewers_connected:,} connected ({r.viewers_failed} failed), "
            f"{r.streams} stream(s), {r.slow_viewers} slow",
        ),
        (
            "gifts",
            f"{r.gifts.acked:,} acknowledged of {r.gifts.sent:,} sent by {r.gifters} "
            f"gifters: {r.gifts.per_second:,.0f}/s",
        ),
        ("gift ack latency", _lat(r.ack_latency_ms)),
        ("gift -> viewer", _lat(r.latency_ms)),
    ]
    if r.slow_latency_ms.count:
        rows.append(("gift -> slow viewer", _lat(r.slow_latency_ms)))
    rows += [
        ("delivered", f"{r.events_per_s:,.0f} events/s ({r.gift_events_per_s:,.0f} gifts), "
                      f"{r.frames_per_s:,.0f} frames/s, {r.events_per_frame:.1f} events/frame"),
        ("loss", f"{d.lost:,} of {d.expected:,} ({d.viewers_with_loss} viewers)  "
                 f"{_mark(r.checks.no_loss)}" + (f", {d.undrained} not caught up"
                                                 if d.undrained else "")),
        ("duplicates / order", f"{d.duplicates} / {d.order_violations}  "
                               f"{_mark(r.checks.no_duplicates and r.checks.in_order)}"),
        ("recovery", f"{r.reconnects:,} reconnects; {d.not_recovered} rejoins past the history "
                     f"({d.excused:,} events excused); close codes {r.close_codes or '-'}"),
        ("errors", ", ".join(f"{k} {v:,}" for k, v in sorted(r.errors.items())) or "none"),
    ]  # fmt: skip
    if u.source != "none":
        rows += [
            ("relay CPU", f"{u.cpu_seconds:.2f} s ({u.source}): "
                          f"{u.events_per_cpu_second:,.0f} events and "
                          f"{u.gifts_per_cpu_second:,.0f} gifts per CPU-second"),
            ("relay memory", f"{u.rss_idle / 2**20:,.1f} MiB idle with viewers, max "
                             f"{u.rss_max / 2**20:,.1f} MiB; "
                             f"{u.rss_per_idle_connection / 1024:,.1f} KiB per idle connection"),
        ]  # fmt: skip
    c = r.conservation
    rows.append(("conservation", f"{_mark(c.ok)} {c.detail}"))
    if r.battle is not None:
        rows += battle_rows(r.battle, r)
    if r.reconcile is not None:
        rows.append(("reconcile", _mark(r.reconcile.ok)))
    if r.checks.p99 is not None:
        rows.append(("--max-p99", _mark(r.checks.p99)))
    if r.steps:
        knee = r.knee
        rows.append(
            (
                "knee",
                "no step met the limits"
                if knee is None
                else f"{knee.viewers:,} viewers at {knee.gift_rate:,.0f} gifts/s "
                f"(p99 {knee.p99_ms:.0f} ms)",
            )
        )
    return rows


def battle_rows(b: BattleFigures, r: Result) -> list[tuple[str, str]]:
    """The ``battle`` scenario's rows: the battle, its scores against the gifts, its events."""
    k = r.checks
    boosts = ", ".join(f"x{x.multiplier} in the last {(x.ends_at - x.starts_at) / 1000:g} s"
                       for x in b.boosts) or "no boost"  # fmt: skip
    scores = "  ".join(
        f"{s.stream} {s.score:,} (gifts make {s.expected:,}: {s.gifts:,} gifts, "
        f"{s.gifts_boosted:,} boosted)"
        for s in b.sides
    )
    outside = sum(s.stamped_outside for s in b.sides)
    lat = b.end_latency_ms
    return [
        ("battle", f"{b.battle}: {b.duration_s} s, {boosts}; winner {b.winner or 'none'} "
                   f"{_mark(k.battle_winner)}; started in {b.start_ms:,.0f} ms"),
        ("battle scores", f"{_mark(k.battle_scores)} {scores}"),
        ("battle gifts", f"{b.gifts:,} in the battle, {b.gifts_boosted:,} in the boosted window"
                         + (f"; {outside} stamped in it but outside its stretch of the stream"
                            if outside else "")),
        ("battle_start", f"{_mark(k.battle_start_everywhere)} {b.viewers_started:,} of "
                         f"{b.viewers:,} viewers" + (f", {b.extra_starts} twice"
                                                     if b.extra_starts else "")),
        ("battle events", f"{_mark(k.battle_scores_never_fall)} {b.events:,} received, "
                          f"{b.events_per_viewer:,.1f} per viewer ({b.events_per_viewer_min:,}"
                          f"..{b.events_per_viewer_max:,}); {b.score_falls} score falls "
                          f"({b.viewers_with_falls} viewers); {b.late_events} after battle_end"),
        ("battle_end", f"{_mark(k.battle_end_everywhere)} {b.viewers_ended:,} of "
                       f"{b.viewers:,} viewers, {b.distinct_ends} result(s)"
                       + (f", {b.extra_ends} twice" if b.extra_ends else "")
                       + (f"; arrived {lat.p50:,.0f} ms (p50) .. {lat.max:,.0f} ms (max) "
                          f"after ends_at" if lat.count else "")),
    ]  # fmt: skip


def summary_table(r: Result) -> Table:
    verdict = "[bold green]PASSED[/]" if r.passed else "[bold red]FAILED[/]"
    table = Table(title=f"{r.name}: {r.flavour} at {r.url}  {verdict}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for what, value in summary_rows(r):
        table.add_row(what, value)
    return table


def steps_table(r: Result) -> Table:
    table = Table(title="ramp steps")
    for col in ("step", "viewers", "gifts/s asked", "gifts/s", "events/s", "p50 ms", "p99 ms",
                "delivered", "verdict"):  # fmt: skip
        table.add_column(col, justify="right")
    for s in r.steps:
        table.add_row(
            str(s.index), f"{s.viewers:,}", f"{s.gift_rate:,.0f}", f"{s.gifts_per_s:,.0f}",
            f"{s.events_per_s:,.0f}", f"{s.p50_ms:.1f}", f"{s.p99_ms:.1f}", f"{s.delivery:.1%}",
            "ok" if s.ok else s.reason,
        )  # fmt: skip
    return table


def print_summary(r: Result, console: Console) -> None:
    console.print(summary_table(r))
    if r.steps:
        console.print(steps_table(r))


# -- HTML -------------------------------------------------------------------------------------

UPLOT_VERSION = "1.6.32"
"""The charting library inlined into every report: vendor/ (README there says where from)."""


@functools.cache
def _vendored(name: str) -> str:
    text = (resources.files(__package__) / "vendor" / name).read_text(encoding="utf-8")
    if "</script" in text.lower() or "</style" in text.lower():  # would end the inline block
        raise ValueError(f"vendor/{name} cannot be inlined")
    return text


class Series(msgspec.Struct, kw_only=True):
    label: str
    column: str
    colour: str
    unit: str
    scale: str = "y"
    dash: bool = False


class Axis(msgspec.Struct, kw_only=True):
    label: str
    scale: str = "y"
    side: int = 3  # uPlot's sides: 3 left, 1 right
    integer: bool = True
    """Counts: ticks at whole numbers only."""


class Chart(msgspec.Struct, kw_only=True):
    """One chart: the page's script draws it with uPlot from the data's columns."""

    id: str
    title: str
    x: str
    """Column of the x values."""
    x_label: str
    axes: list[Axis]
    series: list[Series]
    bars: bool = False
    x_ticks: str | None = None
    """Column whose values label the x ticks (the histogram's bin edges)."""


def charts(r: Result) -> list[Chart]:
    """One chart per quantity; two quantities share a chart only on two axes."""
    t = "time since start (s)"
    out = [
        Chart(
            id="latency-over-time", title="Gift to viewer latency over time", x="second",
            x_label=t, axes=[Axis(label="latency (ms)", integer=False)],
            series=[
                Series(label="p50", column="p50_ms", colour="#2b8a3e", unit="ms"),
                Series(label="p99", column="p99_ms", colour="#e67700", unit="ms"),
                Series(label="max", column="max_ms", colour="#c92a2a", unit="ms", dash=True),
            ],
        ),
        Chart(
            id="latency-histogram", title="Gift to viewer latency histogram", x="bin",
            x_label="latency (ms, upper bound of each bin)", x_ticks="edge_ms", bars=True,
            axes=[Axis(label="events")],
            series=[Series(label="events", column="count", colour="#1971c2", unit="events")],
        ),
        Chart(
            id="gifts-per-second", title="Gifts acknowledged per second", x="second",
            x_label=t, axes=[Axis(label="gifts/s")],
            series=[Series(label="gifts acked", column="gifts_acked", colour="#5f3dc4",
                           unit="gifts/s")],
        ),
        Chart(
            id="events-per-second", title="Events and frames delivered per second", x="second",
            x_label=t,
            axes=[Axis(label="events/s"), Axis(label="frames/s", scale="frames", side=1)],
            series=[
                Series(label="events delivered", column="events", colour="#0c8599",
                       unit="events/s"),
                Series(label="frames delivered", column="frames", colour="#e8590c",
                       unit="frames/s", scale="frames"),
            ],
        ),
        Chart(
            id="viewers", title="Viewers connected and errors", x="second", x_label=t,
            axes=[Axis(label="viewers"), Axis(label="errors/s", scale="errors", side=1)],
            series=[
                Series(label="viewers", column="viewers", colour="#364fc7", unit="viewers"),
                Series(label="errors", column="errors", colour="#c92a2a", unit="errors/s",
                       scale="errors"),
            ],
        ),
    ]  # fmt: skip
    if r.battle is not None:
        streams = [side.stream for side in r.battle.sides]
        out += [
            Chart(
                id="battle-scores", title="Battle scores (live battle events)", x="second",
                x_label=t, axes=[Axis(label="points")],
                series=[Series(label=f"{stream}", column=f"battle_score_{i}", colour=colour,
                               unit="points")
                        for i, (stream, colour) in enumerate(zip(streams, ("#c2255c", "#1971c2"),
                                                                 strict=False))],
            ),
            Chart(
                id="battle-events", title="Battle events delivered per second", x="second",
                x_label=t, axes=[Axis(label="battle events/s")],
                series=[Series(label="battle events", column="battle_events", colour="#e67700",
                               unit="events/s")],
            ),
        ]  # fmt: skip
    if r.steps:
        out.append(
            Chart(
                id="ramp-steps", title="Ramp: p99 latency and gifts/s per step", x="step",
                x_label="step", bars=False,
                axes=[Axis(label="p99 latency (ms)", integer=False),
                      Axis(label="gifts/s", scale="gifts", side=1)],
                series=[
                    Series(label="p99", column="step_p99_ms", colour="#e67700", unit="ms"),
                    Series(label="gifts/s", column="step_gifts_per_s", colour="#5f3dc4",
                           unit="gifts/s", scale="gifts"),
                ],
            )
        )  # fmt: skip
    return out


def chart_data(r: Result) -> dict[str, list[float | None]]:
    """The columns the charts read, by name."""
    tl = r.timeline
    return {
        "second": [t.second for t in tl],
        "p50_ms": [t.p50_ms for t in tl],
        "p99_ms": [t.p99_ms for t in tl],
        "max_ms": [t.max_ms for t in tl],
        "gifts_acked": [t.gifts_acked for t in tl],
        "events": [t.events for t in tl],
        "frames": [t.frames for t in tl],
        "viewers": [t.viewers for t in tl],
        "errors": [t.errors for t in tl],
        "bin": list(range(len(r.latency_histogram))),
        "edge_ms": [edge for edge, _ in r.latency_histogram],
        "count": [n for _, n in r.latency_histogram],
        "step": [s.index for s in r.steps],
        "step_p99_ms": [s.p99_ms for s in r.steps],
        "step_gifts_per_s": [s.gifts_per_s for s in r.steps],
        "battle_events": [t.battle_events for t in tl],
        **{f"battle_score_{i}": _held([t.battle_scores[i] if len(t.battle_scores) > i else None
                                       for t in tl]) for i in range(2)},
    }  # fmt: skip


def _held(values: list[float | None]) -> list[float | None]:
    """A score holds from one live event to the next: a second without one repeats it."""
    out: list[float | None] = []
    for v in values:
        out.append(v if v is not None or not out else out[-1])
    return out


def _figure(c: Chart) -> str:
    labels = " | ".join([c.x_label] + [a.label for a in c.axes])
    return (
        f'<figure class="chart" id="{c.id}" data-x-label="{html.escape(c.x_label)}" '
        f'data-y-labels="{html.escape(" | ".join(a.label for a in c.axes))}">'
        f"<figcaption>{html.escape(c.title)}</figcaption>"
        f'<noscript><p class="axes">{html.escape(labels)}</p></noscript></figure>'
    )


def _json_for_script(value: object) -> str:
    """JSON safe inside a <script> element: no "</" can end it early."""
    return msgspec.json.encode(value).decode().replace("</", "<\\/")


# Draws every chart in the data with uPlot, as wide as the page; redraws on resize.
# The legend is uPlot's own, an HTML table below the plot, so it never covers a line.
SCRIPT = r"""
(() => {
  const {charts, data} = JSON.parse(document.getElementById("report-data").textContent);
  const si = (v) => {
    if (v == null) return "";
    const a = Math.abs(v);
    if (a >= 1e9) return +(v / 1e9).toFixed(2) + "G";
    if (a >= 1e6) return +(v / 1e6).toFixed(2) + "M";
    if (a >= 1e4) return +(v / 1e3).toFixed(1) + "k";
    return +v.toFixed(a >= 100 || Number.isInteger(v) ? 0 : 2) + "";
  };
  const font = "12px system-ui, sans-serif";
  const whole = [];
  for (let k = 1; k <= 1e9; k *= 10) whole.push(k, 2 * k, 5 * k);
  const edge = (v) => v < 10 ? +v.toFixed(1) : Math.round(v);
  const plots = [];
  for (const c of charts) {
    const el = document.getElementById(c.id);
    const seen = {};  // the tick labels each axis last drew, in data-ticks, for tests
    const shown = (label, strs) => {
      seen[label] = strs.filter((v) => v !== "");
      el.dataset.ticks = JSON.stringify(seen);
      return strs;
    };
    const xs = data[c.x];
    if (!xs.length) el.querySelector("figcaption").append(" (no data in this run)");
    const ticks = c.x_ticks ? data[c.x_ticks] : null;
    const axes = [{
      label: c.x_label, labelFont: "bold " + font, font, stroke: "#333",
      grid: {stroke: "#eee"},
      values: (u, splits) => shown(c.x_label, splits.map((i) => ticks ?
        (ticks[i] === undefined ? "" : String(edge(ticks[i]))) : si(i))),
      incrs: ticks ? [1, 2, 3, 4, 5, 10] : whole, space: ticks ? 32 : 50,
    }];
    for (const a of c.axes) {
      axes.push({
        scale: a.scale, side: a.side, label: a.label, labelFont: "bold " + font, font,
        // Two y axes: each in the colour of its series, so no one reads a line off the wrong one.
        stroke: c.axes.length > 1 ? c.series.find((s) => s.scale === a.scale).colour : "#333",
        size: 60, values: (u, splits) => shown(a.label, splits.map(si)),
        ...(a.integer ? {incrs: whole} : {}),
        grid: a.side === 3 ? {stroke: "#eee"} : {show: false},
      });
    }
    const scales = {x: {time: false}};
    for (const a of c.axes) {
      scales[a.scale] = {range: (u, min, max) => [0, max > 0 ? max * 1.05 : 1]};
    }
    if (ticks) scales.x.range = () => [-0.5, Math.max(xs.length, 1) - 0.5];
    const series = [{label: c.x_label, value: (u, v) => v == null ? "-" :
                     (ticks ? "\u2264 " + edge(ticks[v]) + " ms" : v + " s")}];
    for (const s of c.series) {
      series.push({
        label: s.label, scale: s.scale, stroke: s.colour, width: c.bars ? 1 : 2,
        dash: s.dash ? [6, 4] : undefined,
        fill: c.bars ? s.colour + "cc" : undefined,
        paths: c.bars ? uPlot.paths.bars({size: [0.85, 64]}) : undefined,
        points: {show: c.bars ? false : xs.length < 30},
        value: (u, v) => v == null ? "-" : v.toLocaleString("en") + " " + s.unit,
      });
    }
    const opts = {
      width: Math.max(el.clientWidth, 200), height: 300, axes, scales, series,
      legend: {show: true}, cursor: {drag: {x: true, y: false}},
    };
    plots.push([el, new uPlot(opts, [xs, ...c.series.map((s) => data[s.column])], el)]);
  }
  let pending = 0;
  window.addEventListener("resize", () => {
    cancelAnimationFrame(pending);
    pending = requestAnimationFrame(() => {
      for (const [el, u] of plots) u.setSize({width: Math.max(el.clientWidth, 200), height: 300});
    });
  });
  document.body.dataset.chartsDrawn = String(plots.length);
})();
"""


def to_html(r: Result) -> str:
    rows = []
    for what, value in summary_rows(r):
        text = Text.from_markup(value).plain
        rows.append(f"<tr><th>{html.escape(what)}</th><td>{html.escape(text)}</td></tr>")
    steps = ""
    if r.steps:
        head = "".join(
            f"<th>{h}</th>"
            for h in ("step", "viewers", "gifts/s asked", "gifts/s", "p50 ms", "p99 ms", "verdict")
        )
        body = "".join(
            f"<tr><td>{s.index}</td><td>{s.viewers:,}</td><td>{s.gift_rate:,.0f}</td>"
            f"<td>{s.gifts_per_s:,.0f}</td><td>{s.p50_ms:.1f}</td><td>{s.p99_ms:.1f}</td>"
            f"<td>{html.escape('ok' if s.ok else s.reason)}</td></tr>"
            for s in r.steps
        )
        steps = f"<h2>Ramp</h2><table><tr>{head}</tr>{body}</table>"
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(r.started_at))
    chosen = charts(r)
    figures = "\n".join(_figure(c) for c in chosen)
    data = _json_for_script({"charts": chosen, "data": chart_data(r)})
    verdict = "PASSED" if r.passed else "FAILED"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>giftrelay load test: {html.escape(r.name)} ({verdict})</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1em 1.25em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ text-align: left; padding: 3px 10px; border-bottom: 1px solid #ddd; }}
.verdict {{ font-weight: bold; color: {"#2b8a3e" if r.passed else "#c92a2a"}; }}
figure.chart {{ margin: 1.5em 0; width: 100%; }}
figcaption {{ font-weight: bold; font-size: 15px; margin-bottom: 4px; }}
.u-legend {{ font-size: 13px; }}
{_vendored("uPlot.min.css")}
</style></head><body>
<h1>{html.escape(r.name)}: <span class="verdict">{verdict}</span></h1>
<p>{html.escape(r.flavour)} at {html.escape(r.url)}, started {when}, run {html.escape(r.run_id)}</p>
<table id="summary">{"".join(rows)}</table>
{steps}
<h2>Charts</h2>
{figures}
<script type="application/json" id="report-data">{data}</script>
<script>/* uPlot {UPLOT_VERSION}, MIT licence, https://github.com/leeoniya/uPlot */
{_vendored("uPlot.iife.min.js")}</script>
<script>{SCRIPT}</script>
</body></html>
"""


def write_html(result: Result, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_html(result), encoding="utf-8")
