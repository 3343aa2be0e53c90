"""Alerts end to end: real Apprise deliveries to a webhook sink and an SMTP server on loopback,
and the real daemon tripping a CPU rule (a CPU-hog bot) and a log rule (a bot's own output)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from helpers import DaemonCli, Sink, alive, wait_for

from clawpen.notify.apprise_notifier import AppriseNotifier
from clawpen.notify.base import Delivery, Dispatcher, Message


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mailbox:
    def __init__(self) -> None:
        self.mails: list[str] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        self.mails.append(envelope.content.decode(errors="replace"))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    ctl = Controller(box, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        yield box, port
    finally:
        ctl.stop()


def mailto(port: int) -> str:
    return f"mailto://127.0.0.1:{port}?from=clawpen@example.com&to=ops@example.com&mode=insecure"


# ---------------------------------------------------------------- Apprise against real servers
def test_apprise_reaches_a_webhook_and_an_smtp_server(sink: Sink, smtp: tuple[Mailbox, int]) -> None:
    box, port = smtp
    records: list[Delivery] = []
    notifiers = [AppriseNotifier(sink.url, 1), AppriseNotifier(mailto(port), 2)]
    disp = Dispatcher(notifiers, records.append, retries=0)
    msg = Message("[FIRING] cpu on web (warning)", "CPU above 85%\nvalue: 97.0%", "warning", "firing", 3)
    result = asyncio.run(disp.deliver(msg))
    assert [d.ok for d in result] == [True, True]
    assert sink.got and sink.got[0]["title"] == msg.title and "value: 97.0%" in sink.got[0]["message"]
    assert sink.got[0]["type"] == "warning"
    assert box.mails and "Subject: [FIRING] cpu on web (warning)" in box.mails[0]
    assert [d.notifier for d in records] == ["json:// #1", "mailto:// #2"]  # never the URL itself


def test_failed_delivery_is_retried_then_recorded() -> None:
    flaky = Sink(fail=2)
    try:
        records: list[Delivery] = []
        disp = Dispatcher([AppriseNotifier(flaky.url)], records.append, retries=3, backoff=0.05)
        (ok,) = asyncio.run(disp.deliver(Message("t", "b", "info", "test")))
        assert (ok.ok, ok.attempts, flaky.hits, len(flaky.got)) == (True, 3, 3, 1)
        dead = f"json://127.0.0.1:{free_port()}/nobody"  # nothing listens there
        disp = Dispatcher([AppriseNotifier(dead)], records.append, retries=2, backoff=0.05)
        (bad,) = asyncio.run(disp.deliver(Message("t", "b", "info", "test")))
        assert (bad.ok, bad.attempts) == (False, 3)
        assert "delivery failed" in bad.error and "nobody" not in bad.error and str(dead) not in bad.error
        assert records == [ok, bad]
    finally:
        flaky.close()


# ---------------------------------------------------------------- the daemon, end to end
HOG = "while True: pass"
TALKER = (
    "import time\\nfor i in range(100000):\\n    print('FATAL: disk on fire', i, flush=True); time.sleep(0.2)"
)


@pytest.mark.root
@pytest.mark.bwrap
def test_cpu_hog_and_log_rule_fire_notify_ack_silence_and_resolve(
    daemon: DaemonCli, sink: Sink, smtp: tuple[Mailbox, int]
) -> None:
    box, smtp_port = smtp
    daemon.write(f"""
        [bots.hog]
        command = ["python3", "-c", "{HOG}"]
        resources = {{ cpus = 1 }}

        [bots.talker]
        command = ["python3", "-c", "{TALKER}"]

        [monitoring]
        interval = "1s"
        prometheus_listen = "off"

        [monitoring.builtin]
        host_defaults = false      # the test host is shared: keep its load out of this test

        [[monitoring.alerts]]
        name = "hog_cpu"
        metric = "bot.cpu_percent"
        threshold = 5            # a busy loop on a shared, loaded host still gets far more
        for = "2s"
        severity = "critical"

        [[monitoring.log_alerts]]
        name = "fatal"
        pattern = "^FATAL"
        count = 3
        window = "10s"
        bots = ["talker"]

        [monitoring.notify]
        urls = ["{sink.url}", "{mailto(smtp_port)}"]
        retry_backoff = "0.2s"
        repeat_interval = "1h"
    """)
    started = time.monotonic()
    daemon.cli("up")
    daemon.wait_state("hog", "running")

    def fired(rule: str, target: str) -> bool:
        return any(t.startswith(f"[FIRING] {rule} on {target}") for t in sink.titles())

    assert wait_for(lambda: fired("hog_cpu", "hog") and fired("fatal", "talker"), 30, 0.2), sink.titles()
    elapsed = time.monotonic() - started
    hog_msg = next(m for m in sink.got if m["title"].startswith("[FIRING] hog_cpu"))
    assert "bot hog on" in hog_msg["message"] and "value:" in hog_msg["message"]
    assert hog_msg["type"] == "failure"  # critical
    assert not fired("hog_cpu", "talker")  # the talker sleeps: below 5% CPU
    assert wait_for(lambda: any("hog_cpu" in m for m in box.mails), 10), "no mail arrived"
    print(f"cpu rule notified {elapsed:.1f}s after `up` (for 2s, interval 1s)")

    alerts = daemon.json("alerts")
    firing = {(a["rule"], a["target"]): a for a in alerts["alerts"] if a["state"] == "firing"}
    assert ("hog_cpu", "hog") in firing and ("fatal", "talker") in firing
    assert firing[("hog_cpu", "hog")]["value"] > 5
    assert alerts["notifiers"] == ["json:// #1", "mailto:// #2"]
    events = [e["reason"] for e in daemon.events("hog") if e["kind"] == "alert"]
    assert any(r.startswith("hog_cpu firing on hog") for r in events), events

    series = json.loads(daemon.cli("metrics", "hog", "--since", "5m", "--json").stdout)["series"]
    assert max(v for _, v in series["cpu_percent"]) > 5 and series["up"][-1][1] == 1.0
    assert series["memory_limit_bytes"][-1][1] > 0 and series["pids"][-1][1] >= 1
    host = json.loads(daemon.cli("metrics", "host", "--since", "5m", "--json").stdout)["series"]
    assert "memory_available_bytes" in host and "load1" in host
    unknown = daemon.cli("metrics", "nope", check=False)
    assert unknown.returncode == 2 and "no bot named 'nope'" in unknown.stderr and "hint:" in unknown.stderr
    top = daemon.cli("top", "--once").stdout
    assert "hog" in top and "talker" in top and "running" in top

    # a daemon killed and started again (it adopts the running bots) does not send them again
    old_pid = daemon.pid()
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    assert wait_for(lambda: not alive(old_pid), 10)
    daemon.cli("ps")  # starts a new daemon
    assert wait_for(lambda: daemon.pid() not in (None, old_pid), 10)
    time.sleep(5)  # five passes at 1 s
    again = {(a["rule"], a["target"]) for a in daemon.json("alerts")["alerts"] if a["state"] == "firing"}
    assert ("hog_cpu", "hog") in again, daemon.events("hog")
    assert sum(t.startswith("[FIRING] hog_cpu") for t in sink.titles()) == 1, sink.titles()

    # ack stops reminders; silence needs a known rule; test sends to every URL
    ack = daemon.cli("alerts", "ack", str(firing[("hog_cpu", "hog")]["id"]))
    assert "acknowledged alert" in ack.stdout
    bad = daemon.cli("alerts", "ack", "99999", check=False)
    assert (
        bad.returncode == 2
        and "no active alert with id 99999" in bad.stderr
        and "Traceback" not in bad.stderr
    )
    assert "silenced fatal until" in daemon.cli("alerts", "silence", "fatal", "--for", "1h").stdout
    nope = daemon.cli("alerts", "silence", "nope", check=False)
    assert nope.returncode == 2 and "no alert rule named 'nope'" in nope.stderr and "hint:" in nope.stderr
    test = daemon.cli("alerts", "test")
    assert "json:// #1: sent" in test.stdout and "mailto:// #2: sent" in test.stdout
    assert any(t.startswith("[TEST]") for t in sink.titles())

    # stopping the hog resolves its alert; the silenced log rule's resolve is not sent
    daemon.cli("stop", "hog")
    assert wait_for(lambda: any(t.startswith("[RESOLVED] hog_cpu on hog") for t in sink.titles()), 15, 0.2)
    listed = daemon.cli("alerts").stdout
    assert "fatal" in listed and "silenced: fatal" in listed
    assert sum(t.startswith("[FIRING] hog_cpu") for t in sink.titles()) == 1  # deduped, never repeated


@pytest.mark.root
@pytest.mark.bwrap
def test_bad_monitoring_section_is_refused_and_nothing_applied(daemon: DaemonCli) -> None:
    daemon.write("""
        [bots.a]
        command = ["sleep", "60"]
        [[monitoring.alerts]]
        metric = "bot.cpu_percentage"
        threshold = 1
    """)
    result = daemon.cli("up", check=False)
    assert result.returncode == 2 and "no bot metric 'cpu_percentage'" in result.stderr
    assert "monitoring.alerts" in result.stderr and "Traceback" not in result.stderr
    with contextlib.suppress(Exception):
        assert daemon.json("ps") == []


HUNGRY = "b = bytearray(256 << 20)\\nb[::4096] = b'x' * len(b[::4096])"


@pytest.mark.root
@pytest.mark.bwrap
def test_builtin_rules_oom_killed_crashloop_and_down_fire_from_a_real_bot(
    daemon: DaemonCli, sink: Sink
) -> None:
    daemon.write(f"""
        [bots.hungry]
        command = ["python3", "-c", "{HUNGRY}"]
        resources = {{ memory = "48M" }}
        restart = {{ backoff_initial = "50ms", backoff_max = "100ms", max_restarts = 2 }}

        [monitoring]
        interval = "1s"
        prometheus_listen = "off"
        [monitoring.builtin]
        host_defaults = false
        down_for = "2s"
        [monitoring.notify]
        urls = ["{sink.url}"]
    """)
    daemon.cli("up", "--detach")  # the bot is meant to crashloop: a waiting `up` would fail
    want = (
        "[FIRING] bot_oom_killed on hungry",
        "[FIRING] bot_crashloop on hungry",
        "[FIRING] bot_down on hungry",
    )
    assert wait_for(lambda: all(any(t.startswith(w) for t in sink.titles()) for w in want), 30, 0.2), (
        sink.titles(),
        daemon.ps(),
    )
    assert daemon.ps()["hungry"]["state"] == "crashloop"
    series = json.loads(daemon.cli("metrics", "hungry", "--since", "5m", "--json").stdout)["series"]
    assert max(v for _, v in series["oom_kills_recent"]) >= 1 and series["up"][-1][1] == 0.0
    daemon.cli("down", "hungry")  # a removed bot is not down: its alerts resolve
    resolved = ("[RESOLVED] bot_down on hungry", "[RESOLVED] bot_crashloop on hungry")
    assert wait_for(lambda: all(any(t.startswith(r) for t in sink.titles()) for r in resolved), 15, 0.2)
