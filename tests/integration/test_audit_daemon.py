"""`clawpen audit` against a real daemon (issue 19): the audit log's head anchored in the state
database finds a log cut at its end (which the hash chain alone passes), and a scheduled audit's
new findings reach a notifier (an HTTP sink on loopback) once, not again while they stay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import DaemonCli, Sink, wait_for

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

BOT = '[bots.aud1]\ncommand = ["sleep", "600"]\nhealth = { cmd = ["true"] }\n'


def test_a_log_cut_at_its_end_is_found_by_the_anchored_head(daemon: DaemonCli) -> None:
    daemon.write(BOT)
    daemon.cli("up")
    daemon.cli("stop", "aud1")
    daemon.cli("start", "aud1")
    log = daemon.home / "audit.log"
    records = log.read_bytes().splitlines(keepends=True)
    assert len(records) >= 3
    ok = daemon.cli("audit", "--only", "configuration", "--fail-on", "critical", "--json")
    assert not [f for f in json.loads(ok.stdout)["findings"] if f["severity"] == "critical"]  # control

    log.write_bytes(b"".join(records[:-2]))  # cut the last two records: the chain still verifies
    assert daemon.cli("audit-log", "--verify").returncode == 0
    cut = daemon.cli("audit", "--only", "configuration", "--fail-on", "critical", check=False)
    assert cut.returncode == 1, cut.stdout + cut.stderr
    assert "cut off its end" in cut.stdout and "audit log was cut" in cut.stdout


def test_a_scheduled_audit_notifies_new_findings_once(daemon: DaemonCli, sink: Sink, tmp_path: Path) -> None:
    monitoring = (
        '[monitoring]\ninterval = "1s"\nprometheus_listen = "off"\n'
        f'[monitoring.builtin]\nhost_defaults = false\n[monitoring.notify]\nurls = ["{sink.url}"]\n'
        '[audit]\nnotify = "high"\nonline = false\n'
    )
    daemon.write(monitoring + BOT)
    daemon.cli("up")
    first = daemon.json("audit", "--scheduled", "host")
    mine = lambda: [t for t in sink.titles() if t.startswith("[AUDIT]") and "aud1" in t]  # noqa: E731
    assert mine() == []  # positive control: the locked-down bot has no high finding

    daemon.write(monitoring + BOT + 'network = { egress = "open" }\n')
    daemon.cli("up")
    second = daemon.json("audit", "--scheduled", "host")
    assert isinstance(second, dict) and isinstance(first, dict)
    assert second["new"] >= 1 and second["notified"] >= 1 and second["score"] > first["score"]
    assert wait_for(lambda: mine(), 15, 0.2), sink.titles()
    [title] = mine()
    assert "aud1: egress is open to every public address" in title
    events = [json.loads(x) for x in daemon.cli("events", "--json").stdout.splitlines()]
    assert any(e["kind"] == "audit-finding" and "egress is open" in e["reason"] for e in events)

    again = daemon.json("audit", "--scheduled", "host")  # the same finding is not new: not notified
    assert isinstance(again, dict) and again["notified"] == 0
    since = daemon.json("audit", "--only", "spec", "--since", "last")
    assert isinstance(since, dict) and since["since"]["new"] == []
