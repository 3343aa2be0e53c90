"""`clawpen report`'s logic: DOT escaping, the sections, hostile text escaped in the HTML and the
diagram, secret values never shown, the releases' change list, the CLI's bad input (exit 2,
nothing written). The real Graphviz, Chromium and daemon: tests/integration/test_report_render.py."""

from __future__ import annotations

import html
import re
import sqlite3
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import pytest

from clawpen.cli import main
from clawpen.errors import HostError
from clawpen.report import diagram, document, facts
from clawpen.report.model import BotView, Deployment, Facts, FirewallView, LiveState, Release
from clawpen.spec.loader import load_spec

HOSTILE = '<script>alert("x")</script>&amp;\\n"'

SPEC = """
    [host.firewall]
    ssh_from = ["203.0.113.7/32"]
    allow_tcp = [8080]

    [bots.alpha]
    command = ["sh", "-c", "echo '<img src=x onerror=alert(1)>'; sleep 1000"]
    env = { API_TOKEN = "value-that-must-not-show-1234" }
    secrets = ["ALPHA_KEY"]
    secret_env = ["ALPHA_KEY"]
    workspace = "./ws"
    network = { egress = ["api.openai.com:443", "*.telegram.org:443"], publish = ["127.0.0.1:18789:18789"] }

    [bots.beta]
    command = ["sleep", "1000"]
    network = { egress = ["pypi.org:443"] }
"""


class _Sections(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.scripts = 0
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self.sections.append(dict(attrs).get("id") or "")
        if tag == "script":
            self.scripts += 1
        for key, value in attrs:
            if key in ("src", "href") and value and not value.startswith("#"):
                self.external.append(value)


def _loaded(tmp_path: Path, text: str = SPEC) -> object:
    (tmp_path / "ws").mkdir(exist_ok=True)
    spec = tmp_path / "clawpen.toml"
    spec.write_text(textwrap.dedent(text))
    return load_spec(spec)


def _hostile_facts() -> Facts:
    bot = BotView(
        name=HOSTILE,
        command=HOSTILE,
        tier="sandbox",
        egress=(HOSTILE, "api.example.com:443"),
        egress_mode="list",
        publish=("127.0.0.1:8000:8000",),
        secrets=("TOKEN",),
        env_names=(HOSTILE,),
        limits=(("memory", HOSTILE),),
        ha_hosts=("other",),
    )
    dep = Deployment(
        spec_path="/srv/" + HOSTILE,
        host=HOSTILE,
        bots=(bot,),
        firewall=FirewallView("drop", (HOSTILE,)),
        cluster_hosts=("other",),
        state_dir="/var/lib/clawpen",
    )
    return Facts(
        deployment=dep,
        live=LiveState(({"bot": HOSTILE, "replica": 0, "state": HOSTILE},)),
        releases=(Release(1, 0.0, HOSTILE, HOSTILE, None, (f"added {HOSTILE}",)),),
        audit_log=({"seq": 1, "ts": "x", "who": HOSTILE, "action": HOSTILE, "detail": {"k": HOSTILE}},),
    )


def test_quote_escapes_what_dot_would_read() -> None:
    assert diagram.quote('a"b') == '"a\\"b"'
    assert diagram.quote("a\\nb") == '"a\\\\nb"'  # DOT's \n escape stays two characters
    assert diagram.quote("x\ny\rz") == '"x y z"'
    assert diagram.quote("a&lt;b") == '"a&amp;lt;b"'  # not an entity for graphviz
    assert diagram.quote("\x00\x1bok") == '"ok"'
    assert len(diagram.quote("x" * 1000)) <= diagram.MAX_LABEL + 2
    assert diagram.lines("a", "", 'b"') == '"a\\nb\\""'


def test_dot_text_has_only_generated_ids_and_quoted_labels() -> None:
    dot = diagram.build(_hostile_facts().deployment)
    # every quote inside a label is escaped: removing the escaped ones leaves balanced quotes
    unescaped = re.sub(r'\\\\|\\"', "", dot)
    assert unescaped.count('"') % 2 == 0
    assert "<script>" in dot and 'alert(\\"x\\")' in dot  # the text, as text in a quoted label
    assert "bot0 -> gateway" in dot and "firewall" in dot and "port0_0 -> bot0" in dot
    assert "firewall -> port0_0" not in dot  # 127.0.0.1: this host only
    assert "host_other" in dot


def test_check_svg_refuses_active_content() -> None:
    ok = '<?xml version="1.0"?><!-- c --><svg xmlns="http://www.w3.org/2000/svg"><text>a</text></svg>'
    assert diagram.check_svg(ok).startswith("<svg") and "<!--" not in diagram.check_svg(ok)
    for bad in (
        '<svg xmlns="http://www.w3.org/2000/svg"><script>x</script></svg>',
        '<svg xmlns="http://www.w3.org/2000/svg"><g onclick="x"/></svg>',
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:x="http://www.w3.org/1999/xlink">'
        '<a x:href="https://evil.example/">t</a></svg>',
        '<svg xmlns="http://www.w3.org/2000/svg"><foreignObject/></svg>',
        "no svg here",
        "<svg><unclosed></svg>",
    ):
        with pytest.raises(HostError):
            diagram.check_svg(bad)


def test_hostile_text_is_escaped_everywhere_in_the_html() -> None:
    page, why = document.document(_hostile_facts(), draw=lambda _dot: "<svg></svg>")
    assert why == ""
    assert "<script>" not in page and "<script" not in page.lower()
    assert html.escape(HOSTILE, quote=True) in page
    parsed = _Sections()
    parsed.feed(page)
    assert parsed.scripts == 0 and parsed.external == []
    assert parsed.sections == [key for key, _ in document.SECTIONS]


def test_sections_with_headings_and_the_no_diagram_note(tmp_path: Path) -> None:
    loaded = _loaded(tmp_path)

    def no_dot(_dot: str) -> str:
        raise HostError("Graphviz's dot is not installed", where="dot", hint="apt-get install graphviz")

    f = Facts(
        facts.from_spec(loaded, "h1", {"alpha": 61234}, str(tmp_path)), LiveState(None, "daemon not running")
    )  # type: ignore[arg-type]
    page, why = document.document(f, draw=no_dot)
    assert "apt-get install graphviz" in why and "No diagram" in page
    for key, title in document.SECTIONS:
        assert re.search(f'<section id="{key}"><h2>{re.escape(title)}</h2>', page)
    assert "daemon not running" in page
    assert "host uid 61234" in page
    for cmd in (
        "clawpen logs alpha --since 1h",
        "clawpen restart alpha",
        "clawpen rollback N",
        "clawpen snapshot restore alpha ID",
        "clawpen net log alpha --since 1h",
        "clawpen net suggest beta",
        "clawpen secrets set ALPHA_KEY",
    ):
        assert html.escape(cmd) in page, cmd
    assert "api.openai.com:443" in page and "127.0.0.1:18789:18789" in page and "tcp 8080" in page


def test_no_secret_values_only_names(tmp_path: Path) -> None:
    loaded = _loaded(tmp_path)
    f = Facts(facts.from_spec(loaded, "h1", {}, str(tmp_path)), LiveState(None, "x"))  # type: ignore[arg-type]
    page, _ = document.document(f, draw=lambda _d: "<svg></svg>")
    assert "value-that-must-not-show" not in page
    assert "API_TOKEN" in page and "ALPHA_KEY" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page  # the command, shown as text
    assert "<img" not in page


def _db(state: Path) -> None:
    from clawpen.daemon.statedb import SCHEMA

    state.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(state / "clawpen.db")
    db.executescript(SCHEMA)
    for rid, who, summary in ((1, "root", "first"), (2, "ann", "changed: a"), (3, "bob", "rollback")):
        db.execute(
            "INSERT INTO releases (id, created, who, spec_path, spec_hash, spec_text, summary, rollback_of) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (rid, 1.0e9 + rid, who, "/x", "h", "SECRET_TEXT", summary, 1 if rid == 3 else None),
        )
    rows = [(1, "a", "h1"), (1, "b", "h2"), (2, "a", "h1x"), (2, "c", "h3"), (3, "a", "h1"), (3, "b", "h2")]
    db.executemany("INSERT INTO release_bots VALUES (?,?,?,'{}')", rows)
    db.commit()
    db.close()


def test_releases_read_only_with_the_bots_each_changed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _db(state)
    before = (state / "clawpen.db").read_bytes()
    rels, note = facts.releases(state)
    assert note == ""
    assert [(r.id, r.who, r.changed) for r in rels] == [
        (1, "root", ()),
        (2, "ann", ("added c", "changed a", "removed b")),
        (3, "bob", ("added b", "changed a", "removed c")),
    ]
    assert rels[2].rollback_of == 1
    assert (state / "clawpen.db").read_bytes() == before
    assert facts.releases(tmp_path / "nothing") == ((), "")


def test_recent_releases_compared_field_by_field_names_only(tmp_path: Path) -> None:
    from clawpen.daemon.statedb import SCHEMA

    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(state / "clawpen.db")
    db.executescript(SCHEMA)
    texts = [
        '[bots.a]\ncommand = ["sleep", "1"]\n',
        '[bots.a]\ncommand = ["sleep", "1"]\nenv = { K = "value-not-shown" }\n[bots.b]\ncommand = ["x"]\n',
        '[bots.b]\ncommand = ["y"]\n',
    ]
    for rid, text in enumerate(texts, start=1):
        db.execute(
            "INSERT INTO releases (id, created, who, spec_path, spec_hash, spec_text, summary) "
            "VALUES (?,?,?,?,?,?,?)",
            (rid, 1.0e9, "root", str(tmp_path / "clawpen.toml"), "h", text, "s"),
        )
    db.commit()
    db.close()
    rels, _ = facts.releases(state)
    assert [r.changed for r in rels] == [
        (),
        ("changed a: env.K", "added b"),
        ("removed a", "changed b: command"),
    ]
    assert "value-not-shown" not in repr(rels)


def test_audit_log_keeps_changes_not_reads(tmp_path: Path) -> None:
    from clawpen import audit

    audit.append(tmp_path, "root", "secrets.set", {"name": "K"})
    audit.append(tmp_path, "root", "secrets.get", {"name": "K"})
    audit.append(tmp_path, "root", "firewall.apply", {"table": "t"})
    assert [r["action"] for r in facts.audit_changes(tmp_path)] == ["secrets.set", "firewall.apply"]


def test_live_state_without_a_daemon_says_so(tmp_path: Path) -> None:
    assert facts.live_state(tmp_path).rows is None
    assert "not running" in facts.live_state(tmp_path).why
    (tmp_path / "clawpen.sock").touch()  # a stale socket file: nothing listens
    got = facts.live_state(tmp_path, timeout=1)
    assert got.rows is None and "not running" in got.why


def test_cli_bad_input_exits_2_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLAWPEN_HOME", str(tmp_path / "state"))
    assert main(["report", "--output", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["report", "-f", "nope.toml"]) == 2
    (tmp_path / "clawpen.toml").write_text("[bots.x]\ncommand = 3\n")
    assert main(["report"]) == 2
    assert "clawpen.toml:2" in capsys.readouterr().err
    assert not list(tmp_path.glob("clawpen-report-*"))


def test_cli_writes_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _loaded(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLAWPEN_HOME", str(tmp_path / "state"))
    monkeypatch.setattr(diagram, "render", lambda _d: "<svg></svg>")
    out = tmp_path / "out"
    out.mkdir()
    assert main(["report", "--output", str(out), "--json"]) == 0
    import json

    got = json.loads(capsys.readouterr().out)
    assert got["daemon"].startswith("daemon not running") and got["pdf"] is None
    page = Path(got["html"]).read_text()
    assert re.fullmatch(r"clawpen-report-\d{4}-\d\d-\d\d\.html", Path(got["html"]).name)
    assert Path(got["html"]).parent == out and '<section id="changes">' in page
