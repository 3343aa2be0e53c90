"""The topology diagram: DOT text built here (every label escaped), drawn by Graphviz's ``dot
-Tsvg`` (Debian's graphviz), and the SVG checked before it is inlined in the report.

Node ids are generated (``bot0``, ``port1``...): only labels carry text of the spec, always as
DOT quoted strings through :func:`quote`. Graphviz writes label text into the SVG as XML text
(``<`` as ``&lt;``) but keeps ``&name;`` as an entity, so :func:`quote` writes ``&`` as
``&amp;`` first: the SVG shows the text as it is. :func:`check_svg` refuses an SVG with scripts,
foreign objects, event attributes or links out, whatever went in.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

from clawpen.errors import HostError
from clawpen.report.model import Deployment

DOT_TIMEOUT = 30.0
MAX_LABEL = 200  # characters of one label line: a diagram stays readable
_NOT_ALLOWED_TAGS = {"script", "foreignObject", "iframe", "object", "embed", "image", "use"}


def quote(text: str) -> str:
    """``text`` as a DOT quoted string, shown literally: backslashes (DOT's escapes ``\\n``,
    ``\\N``, ``\\G``...), quotes, line breaks and ``&`` escaped; control characters dropped."""
    text = text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "&":
            out.append("&amp;")
        elif ch in "\r\n":
            out.append(" ")
        elif ord(ch) < 32 or ord(ch) == 127:
            continue
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def lines(*parts: str) -> str:
    """A multi-line label: each part quoted, joined by DOT's centred line break."""
    inner = "\\n".join(quote(p)[1:-1] for p in parts if p)
    return f'"{inner}"'


def build(dep: Deployment) -> str:
    """The DOT text of ``dep``'s topology."""
    out = [
        "digraph topology {",
        '  graph [rankdir=LR, fontname="Helvetica", fontsize=11, nodesep=0.3, ranksep=0.6];',
        '  node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=9, color="#555555"];',
        f'  internet [label={lines("internet")}, shape=ellipse, fillcolor="#eeeeee"];',
        f'  subgraph cluster_host {{ label={lines("host " + dep.host)}; style="rounded"; color="#333333";',
    ]
    if dep.firewall is not None:
        label = lines("host firewall", f"inbound: {dep.firewall.inbound} all but", *dep.firewall.rules)
        out.append(f'    firewall [label={label}, fillcolor="#fde2e1"];')
    gw = lines("gateway", f"links {dep.gateway_subnet}", "DNS + egress allowlists")
    out.append(f'    gateway [label={gw}, fillcolor="#e1ecfd"];')
    index = {b.name: i for i, b in enumerate(dep.bots)}
    for t, tier in enumerate(dep.tiers):
        out.append(f'    subgraph cluster_tier{t} {{ label={lines("tier " + tier)}; style="dashed";')
        for bot in dep.bots:
            if bot.tier == tier:
                extra = f"x{bot.replicas}" if bot.replicas > 1 else ""
                label = lines(bot.name, extra)
                out.append(f'      bot{index[bot.name]} [label={label}, fillcolor="#e6f4e6"];')
        out.append("    }")
    ports: list[str] = []
    local: list[bool] = []
    for bot in dep.bots:
        for p, raw in enumerate(bot.publish):
            node = f"port{index[bot.name]}_{p}"
            ports.append(node)
            out.append(f'    {node} [label={lines("published " + raw)}, shape=cds, fillcolor="#fff4d6"];')
            out.append(f"    {node} -> bot{index[bot.name]};")
            local.append(_loopback(raw))
    out.append("  }")
    for host in dep.cluster_hosts:
        if host != dep.host:
            out.append(
                f'  host_{_id(host)} [label={lines("host " + host, "(cluster)")}, fillcolor="#f0f0f0"];'
            )
    entry = "firewall" if dep.firewall is not None else None
    if entry:
        out.append("  internet -> firewall;")
    for node, loopback in zip(ports, local, strict=True):
        if loopback:  # reachable from this host only: no edge from outside
            out.append(f"  {node} [xlabel={lines('this host only')}];")
        else:
            out.append(f"  {entry or 'internet'} -> {node};")
    for bot in dep.bots:
        b = f"bot{index[bot.name]}"
        if bot.egress_mode == "list":
            out.append(f"  {b} -> gateway [label={lines(*bot.egress)}];")
        elif bot.egress_mode in ("open", "learn"):
            out.append(f"  {b} -> gateway [label={lines('egress ' + bot.egress_mode)}];")
        for host in bot.ha_hosts:
            if host != dep.host:
                out.append(f"  {b} -> host_{_id(host)} [label={lines('failover')}, style=dashed];")
    if any(b.egress_mode != "none" for b in dep.bots):
        out.append("  gateway -> internet;")
    out.append("}")
    return "\n".join(out) + "\n"


def _loopback(raw: str) -> bool:
    """Whether a ``publish`` entry listens on loopback only (a malformed one counts as exposed)."""
    from clawpen.spec.publish import parse_publish
    from clawpen.spec.rules import RuleViolation

    try:
        return parse_publish(raw).loopback
    except (RuleViolation, ValueError):
        return False


def _id(text: str) -> str:
    """A DOT id for a cluster host name (letters, digits and '-' by the spec's rule): hex when not."""
    return (
        text.replace("-", "_") if text.replace("-", "").isalnum() and text.isascii() else text.encode().hex()
    )


def check_svg(svg: str) -> str:
    """The ``<svg>`` element of Graphviz's output (no XML prolog, no doctype, no comments), refused
    when it holds anything active (scripts, foreign objects, ``on*`` attributes, links out)."""
    start = svg.find("<svg")
    if start < 0:
        raise HostError("dot wrote no SVG", where="dot -Tsvg", hint="run `dot -V`; reinstall graphviz")
    body = svg[start:]
    try:
        # from <svg> on: no doctype, so no entity declarations (no expansion attacks)
        root = ET.fromstring(body)  # noqa: S314
    except ET.ParseError as err:
        raise HostError(f"dot wrote an SVG that does not parse: {err}", where="dot -Tsvg") from None
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag in _NOT_ALLOWED_TAGS:
            raise HostError(f"the diagram holds a <{tag}> element", where="dot -Tsvg")
        for key, value in el.attrib.items():
            name = key.rsplit("}", 1)[-1].lower()
            if name.startswith("on") or (name == "href" and not value.startswith("#")):
                raise HostError(f"the diagram holds an attribute {name}", where="dot -Tsvg")
    return re.sub(r"<!--.*?-->", "", body, flags=re.S)


def render(dot_text: str) -> str:
    """The SVG of ``dot_text``, drawn by ``dot``; HostError when dot is missing or fails."""
    exe = shutil.which("dot")
    if exe is None:
        raise HostError(
            "Graphviz's dot is not installed: the report has no diagram",
            where="dot",
            hint="apt-get install graphviz",
        )
    try:
        proc = subprocess.run(
            [exe, "-Tsvg"],
            input=dot_text.encode(),
            capture_output=True,
            timeout=DOT_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise HostError(f"dot took more than {DOT_TIMEOUT:g} s", where="dot -Tsvg") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-300:]
        raise HostError(f"dot failed: {err}", where="dot -Tsvg", hint="run `dot -V`")
    return check_svg(proc.stdout.decode(errors="replace"))
