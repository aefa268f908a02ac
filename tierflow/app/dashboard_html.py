"""The dashboard's HTML, rendered on the server from :func:`tierflow.app.overview.build_overview`.

The page is the second seed's widget grown up: the mode and its buttons (local disabled, with
the reason, when no local model is available), the local-vs-cloud table, availability per
model, recent fallbacks and the switch history, then the fleet's queues, spending against
API-only, the gate's figures and the fairness and overhead panel (per tier: queue wait and the
fleet's overhead, p50/p95 over the jobs submitted in the last hour, in flight, waiting and stuck;
per contended tier: each daemon's share against its weight and cap). ``dashboard.js`` replaces
``#panel`` with a fresh :func:`render_panel` every 5 seconds and sends the mode buttons'
switches. Every value is escaped; nothing is loaded from outside the dashboard (no CDN).
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any

from tierflow.app.overview import ICONS as LABELS
from tierflow.core.constants import Mode

REFRESH_MS = 5000


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def _time(iso: str | None) -> str:
    return datetime.fromisoformat(iso).strftime("%H:%M:%S") if iso else "-"


def _money(value: float) -> str:
    return f"${value:,.6f}" if abs(value) < 1 else f"${value:,.2f}"


def render_page(overview: dict[str, Any], status: dict[str, Any]) -> str:
    """The whole page; its panel is refreshed in place by the script."""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tierflow dashboard</title>
<link rel="stylesheet" href="/static/dashboard.css">
<script src="/static/dashboard.js" defer></script>
</head>
<body>
<header>
  <h1>⇄ tierflow fleet</h1>
  <span id="refreshed" class="muted">updated {_e(_time(overview["now"]))}, every
  {REFRESH_MS // 1000} s</span>
</header>
<section id="controls">
  <label for="token">Token to switch the mode</label>
  <input id="token" type="password" autocomplete="off" placeholder="read-only without it">
  <span id="notice" role="status"></span>
</section>
<main id="panel" data-refresh="{REFRESH_MS}">
{render_panel(overview, status)}
</main>
</body>
</html>
"""


def render_panel(overview: dict[str, Any], status: dict[str, Any]) -> str:
    """Everything below the controls: what ``/fragment`` returns."""
    return "\n".join(
        [
            _status(status),
            _mode(overview),
            '<div class="grid">',
            _comparison(overview),
            _availability(overview),
            _fallbacks(overview),
            _history(overview),
            _queues(overview),
            _costs(overview),
            _gate(overview),
            _tier_times(overview),
            _shares(overview),
            "</div>",
        ]
    )


def _status(status: dict[str, Any]) -> str:
    message = status.get("message")
    return f"""<div id="status" class="status" data-state="{_e(status["state"])}">
  <span class="state">{_e(status["state"])}</span>
  <span id="primary-metric">{_e(status["primaryMetric"])}</span>
  <span id="secondary-metric">{_e(status["secondaryMetric"])}</span>
  {f'<span id="status-message" class="warn">{_e(message)}</span>' if message else ""}
</div>"""


def _mode(overview: dict[str, Any]) -> str:
    mode = Mode(overview["mode"])
    automatic = overview.get("automatic")
    note = ""
    if automatic:
        note = (
            f'<div id="automatic" class="warn">Automatic cloud since {_e(automatic["ago"])}: '
            f"{_e(automatic['reason'])}. Back to auto when a local model is available.</div>"
        )
    elif mode is Mode.AUTO and overview.get("local_down_since"):
        after = overview.get("auto_cloud_after_s")
        note = (
            f'<div id="automatic" class="muted">No local model since '
            f"{_e(_time(overview['local_down_since']))}; cloud after {_e(after)} s of that.</div>"
        )
    buttons = []
    for choice in (Mode.LOCAL, Mode.CLOUD, Mode.AUTO):
        disabled = choice is Mode.LOCAL and not overview["local_available"]
        title = f' title="{_e(overview["local_reason"])}"' if disabled else ""
        active = " active" if choice is mode else ""
        buttons.append(
            f'<button class="switch-btn{active}" data-mode="{choice.value}"'
            f"{' disabled' if disabled else ''}{title}>{_e(LABELS[choice])}</button>"
        )
    reason = ""
    if not overview["local_available"]:
        reason = (
            f'<div id="local-disabled" class="unavailable">Local disabled: '
            f"{_e(overview['local_reason'])}</div>"
        )
    return f"""<section class="mode-panel">
  <div id="mode" class="mode-indicator" data-mode="{mode.value}">Current:
    <strong>{_e(LABELS[mode])}</strong></div>
  {note}
  <div class="buttons">{"".join(buttons)}</div>
  {reason}
</section>"""


def _comparison(overview: dict[str, Any]) -> str:
    rows = []
    for side in ("local", "cloud"):
        s = overview["providers"][side]
        rows.append(
            f'<tr data-side="{side}"><td>{side.capitalize()}</td>'
            f'<td class="requests">{s["requests"]}</td><td class="tokens">{s["tokens"]:,}</td>'
            f'<td class="avg">{s["avg_ms"]:.0f} ms</td><td class="errors">{s["errors"]}</td></tr>'
        )
    return f"""<section><h2>Local vs cloud <span class="muted">(24 h)</span></h2>
<table id="comparison" class="comparison-table">
<tr><th>Provider</th><th>Requests</th><th>Tokens</th><th>Avg time</th><th>Errors</th></tr>
{"".join(rows)}
</table></section>"""


def _availability(overview: dict[str, Any]) -> str:
    rows = []
    for m in overview["models"]:
        mark = (
            '<span class="available">✓ ready</span>'
            if m["available"]
            else f'<span class="unavailable">✗ {_e(m["reason"] or "unavailable")}</span>'
        )
        circuit = " · circuit open" if overview["circuit_open"].get(m["model"]) else ""
        flight = overview["in_flight"].get(m["model"])
        flight_text = f" · {flight} in flight" if flight else ""
        fake = ' <span class="fake">FAKE</span>' if m["fake"] else ""
        rows.append(
            f'<tr data-model="{_e(m["model"])}"><td>{_e(m["tier"])}</td>'
            f"<td>{_e(m['model'])}{fake}</td><td>{_e(m['provider'])}</td>"
            f"<td>{mark}{_e(circuit)}{_e(flight_text)}</td></tr>"
        )
    local = (
        f'<span class="available">✓ Ready ({_e(overview["local_model"])})</span>'
        if overview["local_available"]
        else '<span class="unavailable">✗ Not available</span>'
    )
    cloud = (
        '<span class="available">✓ Available</span>'
        if overview["cloud_available"]
        else '<span class="unavailable">✗ Not available</span>'
    )
    return f"""<section><h2>Availability</h2>
<div class="availability"><div>Local LLM: {local}</div><div>Cloud API: {cloud}</div></div>
<table id="models"><tr><th>Tier</th><th>Model</th><th>Provider</th><th>Now</th></tr>
{"".join(rows)}</table></section>"""


def _fallbacks(overview: dict[str, Any]) -> str:
    items = [
        f'<li class="fallback-item" data-job="{_e(fb["job_id"])}">'
        f'<time datetime="{_e(fb["time"])}">{_e(_time(fb["time"]))}</time> '
        f'<span class="muted">({_e(fb["ago"])})</span> '
        f"{_e(fb['from_tier'])}/{_e(fb['from_model'] or '-')} → {_e(fb['to'])}: "
        f"{_e(str(fb['reason'])[:200])}</li>"
        for fb in overview["fallbacks"]
    ]
    body = "".join(items) or '<li class="muted">none</li>'
    return (
        '<section><h2>Recent fallbacks <span class="muted">(UTC)</span></h2>'
        f'<ul id="fallbacks">{body}</ul></section>'
    )


def _history(overview: dict[str, Any]) -> str:
    items = [
        f'<li data-source="{_e(c["source"])}"><span class="source">'
        f"{'Manual' if c['source'] == 'manual' else 'Auto'}</span> "
        f"{_e(c['from'])} → <strong>{_e(c['to'])}</strong> "
        f'<span class="muted">{_e(c["ago"])}</span>'
        f"{': ' + _e(c['reason']) if c['reason'] else ''}</li>"
        for c in overview["history"]
    ]
    body = "".join(items) or '<li class="muted">no switch yet</li>'
    return f'<section><h2>Switch history</h2><ul id="history">{body}</ul></section>'


def _queues(overview: dict[str, Any]) -> str:
    rows = "".join(
        f'<tr data-queue="{_e(q)}"><td>{_e(q)}</td><td class="depth">{n}</td>'
        f"<td>{overview['running'].get(q.removeprefix('tier.'), '')}</td></tr>"
        for q, n in overview["queues"].items()
    )
    return f"""<section><h2>Queues</h2>
<table id="queues"><tr><th>Queue</th><th>Waiting</th><th>Running</th></tr>{rows}</table>
</section>"""


def _costs(overview: dict[str, Any]) -> str:
    costs = overview["costs"]
    return f"""<section class="wide"><h2>Spending <span class="muted">(24 h, by UTC hour of
submission)</span></h2>
<div id="savings">spent <strong>{_money(costs["total_cost"])}</strong> · API-only
{_money(costs["api_baseline_cost"])} · saved <strong>{_money(costs["savings"])}</strong>
({costs["savings_pct"]:.1f}%) · {costs["jobs"]} jobs</div>
{cost_chart(costs["hours"])}
<div class="legend"><span class="key spent"></span>spent
<span class="key baseline"></span>API-only</div>
</section>"""


def cost_chart(hours: list[dict[str, Any]], width: int = 1200, height: int = 160) -> str:
    """Inline SVG: per hour, the API-only cost (grey) behind what was spent (green)."""
    top = max([h["api_baseline_cost"] for h in hours] + [h["cost"] for h in hours] + [0.0])
    scale = (height - 20) / top if top > 0 else 0.0
    slot = width / max(len(hours), 1)
    bars = []
    for i, h in enumerate(hours):
        x = i * slot
        label = _e(
            f"{_time(h['hour'])}: spent {h['cost']:.6f}, API-only {h['api_baseline_cost']:.6f}"
        )
        for cls, value, inset in (("baseline", h["api_baseline_cost"], 2), ("spent", h["cost"], 6)):
            tall = value * scale
            bars.append(
                f'<rect class="{cls}" x="{x + inset:.1f}" y="{height - 14 - tall:.1f}" '
                f'width="{max(slot - 2 * inset, 1):.1f}" height="{tall:.1f}"><title>{label}'
                "</title></rect>"
            )
        if i % 6 == 0:
            bars.append(
                f'<text x="{x + 2:.1f}" y="{height - 2}" class="axis">{_e(_time(h["hour"])[:5])}'
                "</text>"
            )
    return (
        f'<svg id="cost-chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="spending per hour against API-only">{"".join(bars)}'
        f'<line x1="0" y1="{height - 14}" x2="{width}" y2="{height - 14}" class="axis-line"/>'
        "</svg>"
    )


def _gate(overview: dict[str, Any]) -> str:
    rows = []
    for action, row in sorted(overview["gate"].items()):
        miss, auc = row.get("miss_rate"), row.get("auroc")
        rows.append(
            f'<tr data-action="{_e(action)}"><td>{_e(action)}</td><td>{row.get("jobs", 0)}</td>'
            f"<td>{float(row.get('escalation_rate') or 0):.0%}</td><td>{row.get('labels', 0)}</td>"
            f"<td>{'-' if miss is None else f'{float(miss):.0%}'}</td>"
            f"<td>{'-' if auc is None else f'{float(auc):.2f}'}</td>"
            f"<td>{_e(str(row.get('gate', '')))}</td></tr>"
        )
    body = "".join(rows) or '<tr><td colspan="7" class="muted">no finished job yet</td></tr>'
    return f"""<section class="wide"><h2>Quality gate <span class="muted">(all time)</span></h2>
<table id="gate"><tr><th>Action</th><th>Jobs</th><th>Escalated</th><th>Labels</th>
<th>Est. miss rate</th><th>AUROC (held out)</th><th>Gate</th></tr>{body}</table></section>"""


def _ms(value: float | None) -> str:
    """A duration for a cell, with its exact value (ms) in ``data-ms`` for a reader or a test."""
    if value is None:
        return '<td class="ms" data-ms="">-</td>'
    shown = f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"
    return f'<td class="ms" data-ms="{value:.3f}">{shown}</td>'


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _tier_times(overview: dict[str, Any]) -> str:
    panel = overview.get("fairness")
    if panel is None:  # an overview without the panel (a reader that predates it)
        return ""
    rows = []
    for t in panel["tiers"]:
        wait, over = t["queue_wait"], t["overhead"]
        stuck = f'<td class="stuck{" bad" if t["stuck"] else ""}">{t["stuck"]}</td>'
        rows.append(
            f'<tr data-tier="{_e(t["tier"])}"><td>{_e(t["tier"])}</td>'
            f'<td class="wait-n">{wait["n"]}</td>{_ms(wait["p50_ms"])}{_ms(wait["p95_ms"])}'
            f'<td class="overhead-n">{over["n"]}</td>{_ms(over["p50_ms"])}{_ms(over["p95_ms"])}'
            f'<td class="running">{t["running"]}</td><td class="waiting">{t["waiting"]}</td>'
            f"{stuck}</tr>"
        )
    return f"""<section class="wide"><h2>Queue wait and overhead <span class="muted">(p50/p95 over
{_e(panel["window"])}, finished; stuck: accepted, untouched for {panel["stale_after_s"]:g} s with
nothing running)</span></h2>
<table id="tier-times"><tr><th>Tier</th><th>Attempts</th><th>Wait p50</th><th>Wait p95</th>
<th>Jobs</th><th>Overhead p50</th><th>Overhead p95</th><th>Running</th><th>Waiting</th>
<th>Stuck</th></tr>{"".join(rows)}</table></section>"""


def _shares(overview: dict[str, Any]) -> str:
    panel = overview.get("fairness")
    if panel is None:
        return ""
    rows = []
    for tier in panel["shares"]:
        capacity = "unbounded" if tier["capacity"] is None else f"{tier['capacity']} slots"
        for d in tier["daemons"]:
            cap = d["max_in_flight"]
            rows.append(
                f'<tr data-tier="{_e(tier["tier"])}" data-daemon="{_e(d["daemon"])}">'
                f'<td>{_e(tier["tier"])} <span class="muted">({capacity})</span></td>'
                f"<td>{_e(d['daemon'])}</td>"
                f'<td class="weight">{d["weight"]:g}</td>'
                f'<td class="max-in-flight">{"-" if cap is None else cap}</td>'
                f'<td class="weight-share">{_pct(d["weight_share"])}</td>'
                f'<td class="attempts">{d["attempts"]}</td>'
                f'<td class="share">{_pct(d["share"])}</td>'
                f'<td class="running">{d["running"]}</td><td class="waiting">{d["waiting"]}</td>'
                "</tr>"
            )
    body = "".join(rows) or (
        '<tr><td colspan="9" class="muted">no contended tier (no model with a max_concurrency,'
        " no daemon with a max_in_flight, or fair_share off)</td></tr>"
    )
    return f"""<section class="wide"><h2>Shares per daemon <span class="muted">(attempts of
{_e(panel["window"])}; running and waiting now; a share follows the weight while every daemon
has work waiting)</span></h2>
<table id="shares"><tr><th>Tier</th><th>Daemon</th><th>Weight</th><th>Max in flight</th>
<th>Weight share</th><th>Attempts</th><th>Share</th><th>Running</th><th>Waiting</th></tr>
{body}</table></section>"""
