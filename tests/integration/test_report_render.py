"""`clawpen report` with the real components: Graphviz draws the topology (hostile labels come
out as the same text), Debian's chromium (Playwright) renders the report: a screenshot of each
section, each section's text holds the test deployment's bots, allowlists and commands, the SVG
diagram has the bot names as <text>, the page fetches nothing; Chromium's print gives the PDF
that pdftotext and pdfinfo read (each heading, the bots, a page per section at least). With a
real daemon the report shows its live state and the release; without one it says so.
Screenshots go to $CLAWPEN_ARTIFACTS (or the test's tmp folder)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import DaemonCli

from clawpen.report import diagram
from clawpen.report.document import SECTIONS
from clawpen.report.model import BotView, Deployment, FirewallView

CLAWPEN = str(Path(sys.executable).with_name("clawpen"))
CHROMIUM_ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-background-networking"]
SPEC = """
    [host.firewall]
    ssh_from = ["203.0.113.7/32"]
    allow_tcp = [8080]
    allow = [{ port = 443, proto = "tcp", from = ["198.51.100.0/24"], name = "https from office" }]

    [bots.alpha]
    command = ["sh", "-c", "echo '<script>alert(1)</script>'; sleep 1000"]
    env = { API_TOKEN = "value-that-must-not-show-1234" }
    secrets = ["ALPHA_KEY"]
    workspace = "./ws"
    network = { egress = ["api.openai.com:443", "*.telegram.org:443"], publish = ["127.0.0.1:18789:18789"] }

    [bots.beta]
    command = ["sleep", "1000"]
    resources = { memory = "256M", cpus = 0.5 }
    network = { egress = ["pypi.org:443"] }

    [bots.gamma]
    command = ["sleep", "1000"]
"""
LIVE_SPEC = """
    [bots.alpha]
    command = ["sleep", "100000"]
    env = { API_TOKEN = "value-that-must-not-show-1234" }

    [bots.beta]
    command = ["sleep", "100000"]
"""
# What each section's text must hold (its heading first).
EXPECT = {
    "topology": [
        "Topology",
        "alpha",
        "beta",
        "gamma",
        "api.openai.com:443",
        "*.telegram.org:443",
        "pypi.org:443",
        "127.0.0.1:18789:18789",
        "tcp 22 from 203.0.113.7/32",
        "tcp 8080",
        "https from office",
    ],
    "state": ["Live state", "daemon not running"],
    "manual": [
        "Operations manual",
        "clawpen logs alpha --since 1h",
        "clawpen restart beta",
        "clawpen rollback N",
        "clawpen snapshot restore alpha ID",
        "clawpen net log alpha",
        "ALPHA_KEY",
        "API_TOKEN",
        "256M",
    ],
    "emergency": [
        "Emergency plan",
        "A bot is compromised",
        "clawpen stop alpha",
        "clawpen secrets set ALPHA_KEY",
        "clawpen net suggest beta",
        "The host is full",
        "An upgrade failed",
        "The host is lost",
    ],
    "changes": ["Change log", "No releases yet"],
}


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAWPEN_")}
    return env | {"CLAWPEN_HOME": str(home)}


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CLAWPEN_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _report(folder: Path, home: Path, *extra: str) -> dict[str, object]:
    proc = subprocess.run(
        [CLAWPEN, "report", "--json", *extra],
        capture_output=True,
        text=True,
        cwd=folder,
        env=_env(home),
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    got: dict[str, object] = json.loads(proc.stdout)
    return got


def test_graphviz_draws_hostile_labels_as_their_text() -> None:
    hostile = '<script>alert("x")</script> &amp; \\n \\N "q"'
    bot = BotView(name=hostile, command="x", tier="sandbox", egress=(hostile,), egress_mode="list")
    dep = Deployment(spec_path="/x", host="h1", bots=(bot,), firewall=FirewallView("drop", (hostile,)))
    svg = diagram.render(diagram.build(dep))
    root = ET.fromstring(svg)  # dot's own output, checked by render
    texts = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert texts.count(hostile) >= 3, texts  # the bot, its allowlist edge, the firewall rule
    assert "<script" not in svg
    # a positive control: an unescaped quote breaks dot's parse
    with pytest.raises(Exception, match="dot failed"):
        diagram.render('digraph { a [label="x"y"] }')


@pytest.mark.browser
def test_report_renders_in_chromium_and_prints(tmp_path: Path, browser: object, artifacts: Path) -> None:
    from playwright.sync_api import expect

    folder = tmp_path / "deploy"
    (folder / "ws").mkdir(parents=True)
    (folder / "clawpen.toml").write_text(textwrap.dedent(SPEC))
    out = tmp_path / "out"
    out.mkdir()
    got = _report(folder, tmp_path / "state", "--output", str(out), "--pdf")
    assert got["daemon"] == "daemon not running (no socket in the state folder)" and got["diagram"] is True
    html_file, pdf_file = Path(str(got["html"])), Path(str(got["pdf"]))
    text = html_file.read_text()
    assert "value-that-must-not-show" not in text and "<script>" not in text

    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(html_file.as_uri())
    for key, _title in SECTIONS:
        section = page.locator(f"section#{key}")
        expect(section).to_be_visible()
        section.screenshot(path=str(artifacts / f"report-{key}.png"))
        shown = section.inner_text()
        for want in EXPECT[key]:
            assert want in shown, (key, want)
    svg_texts = page.locator("section#topology .diagram svg text").all_text_contents()
    for bot in ("alpha", "beta", "gamma"):
        assert bot in svg_texts, svg_texts
    assert page.locator("section#topology .diagram svg").bounding_box()["width"] > 200
    assert page.locator("script").count() == 0
    assert requests == [html_file.as_uri()] and problems == []

    words = subprocess.run(
        ["pdftotext", str(pdf_file), "-"], capture_output=True, text=True, check=True
    ).stdout
    for _key, title in SECTIONS:
        assert title in words, title
    for bot in ("alpha", "beta", "gamma", "api.openai.com:443", "pypi.org:443"):
        assert bot in words, bot
    info = subprocess.run(["pdfinfo", str(pdf_file)], capture_output=True, text=True, check=True).stdout
    pages = int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1))  # type: ignore[union-attr]
    assert pages >= len(SECTIONS), info
    # each section starts a page: its heading is the first line of a page of the text
    starts = [p.strip().splitlines()[0] for p in words.split("\f") if p.strip()]
    assert all(title in starts for _k, title in SECTIONS[1:]), starts


@pytest.mark.root
@pytest.mark.bwrap
def test_report_shows_the_live_state_of_a_running_daemon(daemon: DaemonCli, tmp_path: Path) -> None:
    daemon.write(LIVE_SPEC.replace("-1234", "-0000"))
    daemon.cli("up")
    daemon.write(LIVE_SPEC)
    daemon.cli("up")  # release 2: alpha's env value changed
    out = tmp_path / "out"
    out.mkdir()
    got = json.loads(daemon.cli("report", "--output", str(out), "--json").stdout)
    assert got["daemon"] == "running" and got["releases"] == 2
    text = Path(got["html"]).read_text()
    state = text.split('<section id="state">')[1].split("</section>")[0]
    assert "daemon running" in state
    for bot in ("alpha", "beta"):
        assert re.search(rf"<td>{bot}</td><td>0</td><td>running</td>", state), state
    changes = text.split('<section id="changes">')[1].split("</section>")[0]
    assert re.search(r"<td>1</td><td>\d{4}-\d\d-\d\d [\d:]+ UTC</td><td>\w+", changes), changes
    assert re.search(r"<td>2</td>.*?<td>changed alpha: env.API_TOKEN</td>", changes), changes
    assert "value-that-must-not-show" not in text
    daemon.cli("down")
    daemon.shutdown()
    got = json.loads(daemon.cli("report", "--output", str(out), "--json").stdout)
    assert got["daemon"].startswith("daemon not running"), got
    assert "daemon not running" in Path(got["html"]).read_text()
