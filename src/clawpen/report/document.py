"""The report as one self-contained HTML document: inline CSS, the diagram as inline SVG, no
script and no external fetch (a Content-Security-Policy says so to the browser too). Each part is
a ``<section id=...>`` with a heading; in print each section starts a new page."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

from clawpen import __version__
from clawpen.errors import ClawpenError
from clawpen.report import diagram
from clawpen.report.manual import commands, e, manual, plan
from clawpen.report.model import Facts

SECTIONS = (
    ("topology", "Topology"),
    ("state", "Live state"),
    ("manual", "Operations manual"),
    ("emergency", "Emergency plan"),
    ("changes", "Change log"),
)
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
CSS = """
body { font: 13px/1.45 "DejaVu Sans", Helvetica, Arial, sans-serif; color: #1d1d1f; margin: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; border-bottom: 2px solid #333; }
h3 { font-size: 15px; margin: 18px 0 6px; } h4 { font-size: 13px; margin: 12px 0 4px; color: #444; }
table { border-collapse: collapse; margin: 4px 0 10px; width: 100%; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; width: 22%; }
table.list th { width: auto; }
code { font: 12px "DejaVu Sans Mono", monospace; overflow-wrap: anywhere; }
.diagram svg { max-width: 100%; height: auto; }
.note { color: #8a3b00; } .meta { color: #555; }
h2, h3, h4 { break-after: avoid-page; } tr, li { break-inside: avoid-page; }
section { margin-top: 28px; }
@page { size: A4; margin: 14mm; }
@media print { section + section { break-before: page; } body { margin: 0; } }
"""


def _utc(ts: float | None) -> str:
    if not ts:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _table(head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    th = "".join(f"<th>{e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="list"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def topology(facts: Facts, svg: str | None, why: str) -> str:
    dep = facts.deployment
    picture = f'<div class="diagram">{svg}</div>' if svg else f'<p class="note">No diagram: {e(why)}</p>'
    hosts = [dep.host, *[h for h in dep.cluster_hosts if h != dep.host]]
    bots = [
        (b.name, b.tier, str(b.replicas), ", ".join(b.egress) or b.egress_mode, ", ".join(b.publish))
        for b in dep.bots
    ]
    out = [
        picture,
        f"<h3>Hosts</h3><p>{e(', '.join(hosts))}</p>",
        f"<h3>Tiers</h3><p>{e(', '.join(dep.tiers) or 'none')}</p>",
        "<h3>Bots</h3>" + _table(("bot", "tier", "replicas", "egress allowlist", "published"), bots),
        f"<h3>Gateway</h3><p>Bot links in {e(dep.gateway_subnet)}; DNS through "
        f"{e(', '.join(dep.dns_upstream) or 'the host resolvers')}. A bot reaches only its allowlist.</p>",
    ]
    if dep.firewall is not None:
        rules = "".join(f"<li><code>{e(r)}</code></li>" for r in dep.firewall.rules)
        out.append(
            f"<h3>Host firewall</h3><p>Inbound: {e(dep.firewall.inbound)} all but loopback, replies and:</p>"
            f'<ul class="firewall">{rules}</ul><p>Outbound: allowed.</p>'
        )
    else:
        out.append("<h3>Host firewall</h3><p>No [host.firewall] in the spec.</p>")
    return "".join(out)


def state(facts: Facts) -> str:
    live = facts.live
    if live.rows is None:
        out = f'<p class="note" id="daemon-state">{e(live.why)}</p>'
    else:
        rows = [
            (
                str(r.get("bot", "")),
                str(r.get("replica", "")),
                str(r.get("state", "")),
                str(r.get("health") or ""),
                str(r.get("pid") or ""),
                str(r.get("restarts", "")),
                _utc(r.get("started_at") if isinstance(r.get("started_at"), float | int) else None),  # type: ignore[arg-type]
            )
            for r in live.rows
        ]
        out = '<p id="daemon-state">daemon running</p>' + _table(
            ("bot", "replica", "state", "health", "pid", "restarts", "started"), rows
        )
    audit = facts.last_audit
    if audit is None:
        out += "<h3>Last audit</h3><p>No audit report is kept (run <code>clawpen audit</code>).</p>"
    else:
        counts = ", ".join(f"{k}: {v}" for k, v in audit.counts)
        out += (
            f"<h3>Last audit</h3><p>{e(_utc(audit.started))}: score {e(audit.score)}; {e(counts)}</p>"
            + _table(("severity", "finding"), list(audit.worst))
        )
    return out


def changes(facts: Facts) -> str:
    rels = [
        (
            str(r.id),
            _utc(r.created),
            r.who,
            (f"rollback to {r.rollback_of}; " if r.rollback_of else "") + r.summary,
            "; ".join(r.changed),
        )
        for r in reversed(facts.releases)
    ]
    out = "<h3>Releases</h3>"
    out += (
        _table(("release", "when", "who", "summary", "what changed"), rels)
        if rels
        else "<p>No releases yet.</p>"
    )
    recs = [
        (
            str(r.get("seq", "")),
            str(r.get("ts", "")),
            str(r.get("who", "")),
            str(r.get("action", "")),
            json.dumps(r.get("detail", {}), sort_keys=True)[:300],
        )
        for r in reversed(facts.audit_log)
    ]
    out += "<h3>Configuration changes (audit log)</h3>"
    out += (
        _table(("#", "when", "who", "action", "detail"), recs) if recs else "<p>The audit log is empty.</p>"
    )
    out += commands(
        [
            ("clawpen release diff A B", "what changed between two releases"),
            ("clawpen audit-log", "the whole log"),
        ]
    )
    return out


def document(facts: Facts, draw: Callable[[str], str] | None = None) -> tuple[str, str]:
    """``(the HTML, why there is no diagram or "")``: ``draw`` turns DOT into SVG (default:
    Graphviz, :func:`clawpen.report.diagram.render`)."""
    svg: str | None = None
    why = ""
    try:
        svg = (draw or diagram.render)(diagram.build(facts.deployment))
    except ClawpenError as err:
        why = err.what + (f" ({err.hint})" if err.hint else "")
    dep = facts.deployment
    bodies = {
        "topology": topology(facts, svg, why),
        "state": state(facts),
        "manual": manual(dep),
        "emergency": plan(dep),
        "changes": changes(facts),
    }
    sections = "".join(
        f'<section id="{key}"><h2>{e(title)}</h2>{bodies[key]}</section>' for key, title in SECTIONS
    )
    notes = "".join(f'<p class="note">{e(n)}</p>' for n in facts.notes)
    toc = "".join(f'<li><a href="#{k}">{e(t)}</a></li>' for k, t in SECTIONS)
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>clawpen report: {e(dep.host)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>Deployment report: {e(dep.host)}</h1>"
        f'<p class="meta">Spec {e(dep.spec_path)}; generated {e(_utc(facts.generated))} by clawpen '
        f"{e(__version__)}; state in {e(dep.state_dir)}.</p>{notes}<ol>{toc}</ol></header>"
        f"{sections}</body></html>\n"
    )
    return page, why
