"""``clawpen report [-f FILE] [--output DIR] [--pdf] [--json]``: the deployment's documents
(topology diagram, live state, operations manual, emergency plan, change log) as one
self-contained HTML file, and a PDF printed by Chromium; see :mod:`clawpen.report`.

Reads only: the spec, the daemon's ``ps`` when it answers (it is never started), the state
database read-only, the audit log and the last kept audit report. Exit 0; 2 for bad input
(a spec that does not load, an output folder that is not one), nothing written then.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from clawpen.errors import HostError, UsageError


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "report", help="the deployment's documents: topology, manual, emergency plan, change log"
    )
    p.add_argument(
        "-f", "--file", metavar="FILE", default="clawpen.toml", help="spec file (default clawpen.toml)"
    )
    p.add_argument(
        "--output",
        "-o",
        metavar="DIR",
        default=".",
        help="folder for clawpen-report-<UTC date>.html (default .)",
    )
    p.add_argument("--pdf", action="store_true", help="print a PDF beside it too (Chromium, headless)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _output_dir(raw: str) -> Path:
    out = Path(raw)
    if not out.is_dir():
        raise UsageError(
            f"{raw} is not a folder",
            where="--output",
            hint="give an existing folder (default: the current one)",
        )
    return out.resolve()


def cmd_report(ns: argparse.Namespace) -> int:
    from clawpen.fsutil import write_atomic
    from clawpen.paths import state_dir
    from clawpen.report import document, facts
    from clawpen.spec.loader import load_spec

    out_dir = _output_dir(ns.output)
    spec_file = Path(ns.file)
    if not spec_file.exists():
        raise UsageError(
            f"there is no spec file {ns.file}",
            where="-f/--file",
            hint="run in the spec's folder or give -f FILE",
        )
    loaded = load_spec(spec_file)  # a spec that does not load: exit 2 here, nothing written
    now = time.time()
    gathered = facts.gather(loaded, state_dir(), clock=now)
    page, no_diagram = document.document(gathered)
    stem = f"clawpen-report-{time.strftime('%Y-%m-%d', time.gmtime(now))}"
    html_file = out_dir / f"{stem}.html"
    try:
        write_atomic(html_file, page.encode(), mode=0o600)  # the deployment's layout: its owner's
    except OSError as err:
        raise HostError(f"cannot write {html_file}: {err.strerror}", where="--output") from None
    pdf_file: Path | None = None
    if ns.pdf:
        from clawpen.report.pdf import print_pdf

        pdf_file = out_dir / f"{stem}.pdf"
        print_pdf(html_file, pdf_file)
    if no_diagram:
        print(f"clawpen report: warning: {no_diagram}", file=sys.stderr)
    if ns.json:
        print(
            json.dumps(
                {
                    "html": str(html_file),
                    "pdf": str(pdf_file) if pdf_file else None,
                    "sections": [key for key, _title in document.SECTIONS],
                    "daemon": "running" if gathered.live.rows is not None else gathered.live.why,
                    "diagram": not no_diagram,
                    "releases": len(gathered.releases),
                }
            )
        )
    else:
        print(f"report: {html_file}")
        if pdf_file:
            print(f"pdf: {pdf_file}")
        if gathered.live.rows is None:
            print(f"note: {gathered.live.why}")
    return 0


COMMANDS = {"report": cmd_report}
