"""A run's result for people: a rich summary table, a JSON file, an HTML page with SVG charts.

The HTML is one self-contained file: the charts are SVG drawn here, no script and
no CDN, so a report can be attached to an issue or opened offline years later.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

import msgspec
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ...drivers.viewer import Latency
from .result import Result


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

W, H, PAD = 760, 260, 48


def _polyline(points: list[tuple[float, float]], colour: str) -> str:
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>'


def latency_over_time_svg(r: Result) -> str:
    """p50, p99 and max of gift -> viewer latency for each second of the run."""
    points = [t for t in r.timeline if t.p50_ms or t.p99_ms or t.max_ms]
    series = [
        ("p50", "#2b8a3e", "p50_ms"),
        ("p99", "#e67700", "p99_ms"),
        ("max", "#c92a2a", "max_ms"),
    ]
    top = max([getattr(t, f) for t in points for _, _, f in series] + [1.0])
    xs = [t.second for t in points] or [0, 1]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)

    def px(second: float) -> float:
        return PAD + (second - x0) / (x1 - x0) * (W - 2 * PAD)

    def py(ms: float) -> float:
        return float(H - PAD + 10 - ms / top * (H - PAD - 20))

    parts = [_axes(f"{top:,.0f} ms", f"{x0} s", f"{x1} s", "seconds since start")]
    for _label, colour, field in series:
        parts.append(_polyline([(px(t.second), py(getattr(t, field))) for t in points], colour))
    parts.append(_legend([(label, colour) for label, colour, _ in series]))
    return _svg("latency-over-time", "Gift to viewer latency over time", parts)


def latency_histogram_svg(r: Result) -> str:
    """How many events arrived within each latency bin (bins double every two steps)."""
    bins = r.latency_histogram
    top = max([n for _, n in bins] + [1])
    width = (W - 2 * PAD) / max(1, len(bins))
    parts = [_axes(f"{top:,}", "", "", "latency (ms, upper bound of each bin)")]
    for i, (edge, n) in enumerate(bins):
        h = n / top * (H - PAD - 20)
        x = PAD + i * width
        parts.append(
            f'<rect class="bar" x="{x + 1:.1f}" y="{H - PAD + 10 - h:.1f}" width="{width - 2:.1f}" '
            f'height="{h:.1f}" fill="#1971c2"><title>&le; {edge:g} ms: {n:,}</title></rect>'
        )
        if i % 2 == 0:
            parts.append(
                f'<text x="{x + width / 2:.1f}" y="{H - PAD + 24}" font-size="9" '
                f'text-anchor="middle">{edge:g}</text>'
            )
    return _svg("latency-histogram", "Gift to viewer latency histogram", parts)


def throughput_svg(r: Result) -> str:
    """Gifts acknowledged and events delivered per second."""
    points = r.timeline
    xs = [t.second for t in points] or [0, 1]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    top_g = max([t.gifts_acked for t in points] + [1])
    top_e = max([t.events for t in points] + [1])

    def px(second: float) -> float:
        return PAD + (second - x0) / (x1 - x0) * (W - 2 * PAD)

    def py(v: float, top: float) -> float:
        return H - PAD + 10 - v / top * (H - PAD - 20)

    parts = [
        _axes(f"{top_g:,} gifts/s | {top_e:,} events/s", f"{x0} s", f"{x1} s", "seconds"),
        _polyline([(px(t.second), py(t.gifts_acked, top_g)) for t in points], "#5f3dc4"),
        _polyline([(px(t.second), py(t.events, top_e)) for t in points], "#0c8599"),
        _legend([("gifts acked/s", "#5f3dc4"), ("events delivered/s", "#0c8599")]),
    ]
    return _svg("throughput", "Throughput over time", parts)


def _axes(top: str, left: str, right: str, caption: str) -> str:
    base = H - PAD + 10
    return (
        f'<line x1="{PAD}" y1="{base}" x2="{W - PAD}" y2="{base}" stroke="#555"/>'
        f'<line x1="{PAD}" y1="10" x2="{PAD}" y2="{base}" stroke="#555"/>'
        f'<text x="{PAD + 4}" y="20" font-size="11">{html.escape(top)}</text>'
        f'<text x="{PAD}" y="{base + 28}" font-size="11">{html.escape(left)}</text>'
        f'<text x="{W - PAD}" y="{base + 28}" font-size="11" text-anchor="end">'
        f"{html.escape(right)}</text>"
        f'<text x="{W / 2}" y="{H - 4}" font-size="11" text-anchor="middle">'
        f"{html.escape(caption)}</text>"
    )


def _legend(items: list[tuple[str, str]]) -> str:
    out = []
    for i, (label, colour) in enumerate(items):
        x = W - PAD - 150
        y = 20 + i * 16
        out.append(
            f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 14}" y="{y}" font-size="11">{html.escape(label)}</text>'
        )
    return "".join(out)


def _svg(ident: str, title: str, parts: list[str]) -> str:
    return (
        f"<figure><figcaption>{html.escape(title)}</figcaption>"
        f'<svg id="{ident}" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" role="img" aria-label="{html.escape(title)}">'
        f"<title>{html.escape(title)}</title>{''.join(parts)}</svg></figure>"
    )


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
    verdict = "PASSED" if r.passed else "FAILED"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>giftrelay load test: {html.escape(r.name)} ({verdict})</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ text-align: left; padding: 3px 10px; border-bottom: 1px solid #ddd; }}
.verdict {{ font-weight: bold; color: {"#2b8a3e" if r.passed else "#c92a2a"}; }}
figure {{ margin: 1.5em 0; }} figcaption {{ font-weight: bold; }}
</style></head><body>
<h1>{html.escape(r.name)}: <span class="verdict">{verdict}</span></h1>
<p>{html.escape(r.flavour)} at {html.escape(r.url)}, started {when}, run {html.escape(r.run_id)}</p>
<table id="summary">{"".join(rows)}</table>
{steps}
{latency_over_time_svg(r)}
{latency_histogram_svg(r)}
{throughput_svg(r)}
</body></html>
"""


def write_html(result: Result, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_html(result), encoding="utf-8")
