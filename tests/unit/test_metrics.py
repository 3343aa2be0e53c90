"""Metrics storage (downsampling, retention), readers' parsers, log rules, notifier retries."""

from __future__ import annotations

import asyncio
import math
import os
import time
from pathlib import Path

import pytest

from clawpen.alerts.rules import Rule, log_metric
from clawpen.metrics.collector import Collector, InstanceView
from clawpen.metrics.logwatch import LogWatch, log_name
from clawpen.metrics.probes import BotReader, Rates, parse_blkio, parse_io_stat, parse_net_dev
from clawpen.metrics.prom import Snapshot, expr_for, registry_for, render, rules_yaml
from clawpen.metrics.storage import HOUR, MINUTE, RAW, Storage, aggregate, decode, encode
from clawpen.notify.base import Delivery, Dispatcher, Message, NotifyFailed
from clawpen.sandbox.cgroups import CgroupHost

T0 = 1_800_000_000.0  # a minute and hour boundary (divisible by 3600)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_chunk_roundtrip_keeps_values_and_gaps() -> None:
    points = {T0 + 1: {"a": 1.5, "b": 2e9}, T0 + 2.25: {"a": -3.0}}
    back = decode(encode(points, int(T0)), int(T0))
    assert set(back) == {T0 + 1, T0 + 2.25}
    assert back[T0 + 1]["a"] == 1.5 and math.isclose(back[T0 + 1]["b"], 2e9, rel_tol=1e-6)
    assert back[T0 + 2.25] == {"a": -3.0}  # b had no value there


def test_aggregate_avg_and_max() -> None:
    agg = aggregate({1.0: {"x": 1.0}, 2.0: {"x": 3.0}, 3.0: {"x": 8.0}})
    assert agg == {"x": 4.0, "x|max": 8.0}


def test_storage_raw_minute_and_hour_points(tmp_path: Path) -> None:
    clock = Clock(T0 + 7200)
    db = Storage(tmp_path / "m.db", clock=clock)
    for i in range(120):  # two minutes of 1 s samples
        db.add(T0 + i, {"bot": {"cpu_percent": float(i % 60)}, "host": {"load1": 1.0}})
    assert db.query("bot", T0, T0 + 200)  # pending samples are visible before a flush
    db.flush()
    raw = db.query("bot", T0, T0 + 200, res=RAW)
    assert len(raw) == 120 and raw[T0 + 59] == {"cpu_percent": 59.0}
    minutes = db.query("bot", T0, T0 + 200, res=MINUTE)
    assert sorted(minutes) == [T0, T0 + 60]
    assert minutes[T0] == {"cpu_percent": 29.5, "cpu_percent|max": 59.0}
    hours = db.query("bot", T0, T0 + 3600, res=HOUR)
    assert hours == {T0: {"cpu_percent": 29.5, "cpu_percent|max": 59.0}}
    # a later flush into the same minute merges instead of replacing
    db.add(T0 + 10.5, {"bot": {"cpu_percent": 100.0}})
    db.flush()
    raw = db.query("bot", T0, T0 + 200, res=RAW)
    assert len(raw) == 121 and raw[T0 + 10.5] == {"cpu_percent": 100.0}
    assert db.query("bot", T0, T0 + 59, res=MINUTE)[T0]["cpu_percent|max"] == 100.0
    db.close()
    again = Storage(tmp_path / "m.db", clock=clock)
    assert len(again.query("bot", T0, T0 + 200, res=RAW)) == 121 and again.targets() == ["bot", "host"]
    again.close()


def test_storage_picks_resolution_from_the_span_and_prunes(tmp_path: Path) -> None:
    clock = Clock(T0)
    db = Storage(tmp_path / "m.db", clock=clock)
    db.add(T0 - 2 * 86400, {"bot": {"pids": 3.0}})
    db.add(T0 - 10, {"bot": {"pids": 4.0}})
    db.flush()
    assert list(db.query("bot", T0 - 3600).values()) == [{"pids": 4.0}]  # raw
    old = db.query("bot", T0 - 3 * 86400)  # older than a day: 1-minute points
    assert old[T0 - 2 * 86400] == {"pids": 3.0, "pids|max": 3.0}
    assert db.prune() >= 1  # the 2-day-old raw row goes, its minute point stays
    assert db.query("bot", T0 - 3 * 86400, res=RAW) == {T0 - 10: {"pids": 4.0}}
    assert T0 - 2 * 86400 in db.query("bot", T0 - 3 * 86400, res=MINUTE)
    clock.now = T0 + 400 * 86400
    db.prune()
    assert db.query("bot", T0 - 3 * 86400, res=HOUR) == {}
    db.close()


def test_parsers() -> None:
    blkio = b"8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 1\n8:16 Read 10\nTotal 12298\n"
    assert parse_blkio(blkio) == (4106, 8192)
    io_stat = b"8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0\n8:16 rbytes=5 wbytes=0 rios=1 wios=0\n"
    assert parse_io_stat(io_stat) == (15, 20, 2, 2)
    netdev = (
        b"Inter-|   Receive                            |  Transmit\n"
        b" face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls\n"
        b"    lo:  900 9 0 0 0 0 0 0 900 9 0 0 0 0 0 0\n"
        b"  eth0: 1000 10 0 2 0 0 0 0 500 5 0 1 0 0 0 0\n"
    )
    assert parse_net_dev(netdev) == (1000, 10, 500, 5, 3)


def test_rates_and_counter_reset() -> None:
    r = Rates()
    assert r.rate("k", 100, 10.0) is None
    assert r.rate("k", 300, 12.0) == 100.0
    assert r.rate("k", 50, 13.0) is None  # went down: restarted


def _fake_v1(root: Path, name: str) -> CgroupHost:
    """A v1 layout on disk (unit test of the reader's parsing; real cgroups in the integration tests)."""
    files = {
        "memory": {"memory.usage_in_bytes": "1048576", "memory.max_usage_in_bytes": "2097152",
                   "memory.limit_in_bytes": "4194304", "memory.failcnt": "3",
                   "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n"},
        "cpuacct": {"cpuacct.usage": "1000000000"},
        "cpu": {"cpu.stat": "nr_periods 10\nnr_throttled 2\nthrottled_time 500000000\n"},
        "pids": {"pids.current": "7"},
        "blkio": {"blkio.throttle.io_service_bytes": "8:0 Read 100\n8:0 Write 200\n",
                  "blkio.throttle.io_serviced": "8:0 Read 1\n8:0 Write 2\n"},
    }  # fmt: skip
    for ctl, entries in files.items():
        d = root / ctl / "clawpen" / name
        d.mkdir(parents=True)
        for fname, text in entries.items():
            (d / fname).write_text(text)
    return CgroupHost(1, root, {c: root / c for c in files})


def test_bot_reader_v1_and_collector_rates(tmp_path: Path) -> None:
    host = _fake_v1(tmp_path, "b.0")
    reader = BotReader(host, "b.0", None)
    raw = reader.read()
    assert raw["memory_bytes"] == 1048576 and raw["memory_percent"] == 25.0
    assert raw["memory_peak_bytes"] == 2097152 and raw["oom_kills"] == 1 and raw["memory_failcnt"] == 3
    assert raw["pids"] == 7 and raw["c_cpu_ns"] == 1e9 and raw["c_throttled_ns"] == 5e8
    assert (raw["c_io_read"], raw["c_io_write"], raw["c_ios"]) == (100, 200, 3)
    reader.close()
    col = Collector(lambda: host, with_host=False)
    view = InstanceView("b", "b", "b.0", None, "running", 0, None, None, False)
    first = col.collect(100.0, [view])["b"]
    assert "cpu_percent" not in first and first["up"] == 1.0 and first["oom_kills_recent"] == 1.0
    (tmp_path / "cpuacct/clawpen/b.0/cpuacct.usage").write_text("1500000000")  # +0.5 s CPU in 2 s
    second = col.collect(102.0, [view._replace(restarts=2)])["b"]
    assert second["cpu_percent"] == 25.0 and second["restarts_per_hour"] == 2.0
    down = col.collect(104.0, [view._replace(state="crashloop", cgroup=None)])["b"]
    assert down["up"] == 0.0 and down["crashloop"] == 1.0 and "memory_bytes" not in down
    col.close()


def test_log_watch_counts_in_window_and_survives_rotation(tmp_path: Path) -> None:
    rule = Rule("errs", "bot", log_metric("errs"), ">", 2.0, 0.0, "warning", kind="log", pattern="^ERROR",
                window=10.0)  # fmt: skip
    log = tmp_path / "b-r1.log"
    log.write_text("2026-01-01T00:00:00Z out ERROR old line, not counted\n")
    watch = LogWatch(tmp_path, [rule])
    assert log_name("b[1]") == "b-r1"
    assert watch.scan(["b[1]"], 0.0) == {"b[1]": {log_metric("errs"): 0.0}}
    with log.open("a") as f:
        f.write("2026-01-01T00:00:01Z out ERROR one\n2026-01-01T00:00:01Z err no ERROR here\n")
        f.write("2026-01-01T00:00:01Z out ERROR tw")  # unfinished line: counted when it ends
    assert watch.scan(["b[1]"], 1.0)["b[1]"][log_metric("errs")] == 1.0
    with log.open("a") as f:
        f.write("o\n")
    assert watch.scan(["b[1]"], 2.0)["b[1]"][log_metric("errs")] == 2.0
    os.rename(log, tmp_path / "b-r1.1.log")  # rotation: a new file
    log.write_text("2026-01-01T00:00:03Z out ERROR three\n")
    assert watch.scan(["b[1]"], 3.0)["b[1]"][log_metric("errs")] == 3.0
    assert watch.scan(["b[1]"], 12.5)["b[1]"][log_metric("errs")] == 1.0  # the first two left the window
    assert watch.totals == {("errs", "b[1]"): 3}


class FlakyNotifier:
    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.sent: list[Message] = []

    @property
    def name(self) -> str:
        return "fake:// #1"

    async def send(self, message: Message) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise NotifyFailed("fake:// #1: delivery failed")
        self.sent.append(message)


@pytest.mark.parametrize(("fail", "ok", "attempts", "waits"), [(0, True, 1, []), (2, True, 3, [1.0, 2.0]),
                                                               (9, False, 4, [1.0, 2.0, 4.0])])  # fmt: skip
def test_dispatcher_retries_with_backoff_and_records(
    fail: int, ok: bool, attempts: int, waits: list[float]
) -> None:
    records: list[Delivery] = []
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    notifier = FlakyNotifier(fail)
    disp = Dispatcher([notifier], records.append, retries=3, backoff=1.0, clock=lambda: 5.0, sleep=sleep)
    msg = Message("t", "b", "warning", "firing", 7)
    (result,) = asyncio.run(disp.deliver(msg))
    assert (result.ok, result.attempts, slept) == (ok, attempts, waits)
    assert records == [result] and result.alert_id == 7
    assert notifier.sent == ([msg] if ok else [])
    assert result.error == ("" if ok else "fake:// #1: delivery failed")


def test_prometheus_exposition_and_rule_expressions() -> None:
    snap = Snapshot()
    snap.values = {"web[1]": {"cpu_percent": 12.5, "log_matches{x}": 3.0},
                   "host": {"disk_iops{sda}": 7.0, "load1": 0.5}}  # fmt: skip
    snap.log_totals = {("x", "web[1]"): 4}
    snap.alerts = [("cpu", "warning", "firing")]
    text = render(registry_for(lambda: snap)).decode()
    assert 'clawpen_bot_cpu_percent{bot="web",replica="1"} 12.5' in text
    assert 'clawpen_host_disk_iops{device="sda"} 7.0' in text
    assert 'clawpen_log_matches_total{bot="web",replica="1",rule="x"} 4.0' in text
    assert 'clawpen_alerts{rule="cpu",severity="warning",state="firing"} 1.0' in text
    rule = Rule("r", "bot", "cpu_percent", ">=", 90.0, 90.0, "critical", bots=("a", "b"))
    assert expr_for(rule) == 'clawpen_bot_cpu_percent{bot=~"a|b"} >= 90'
    log = Rule("l", "bot", log_metric("l"), ">", 5.0, 0.0, "warning", kind="log", window=60.0)
    assert expr_for(log) == 'increase(clawpen_log_matches_total{rule="l"}[60s]) > 5'
    assert "for: 90s" in rules_yaml([rule])


def test_grafana_dashboard_uses_only_known_series() -> None:
    import json
    import re

    from clawpen.spec import metricnames as names

    path = Path(__file__).resolve().parents[2] / "contrib" / "grafana" / "clawpen.json"
    dash = json.loads(path.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    found = [m for e in exprs for m in re.findall(r"clawpen_(bot|host)_([a-z_0-9]+)", e)]
    assert len(found) >= 15
    for scope, name in found:
        assert name in (names.BOT_METRICS if scope == "bot" else names.HOST_METRICS), name


def test_egress_denials_per_minute_from_gateway_counters(tmp_path: Path) -> None:
    host = _fake_v1(tmp_path, "b.0")
    col = Collector(lambda: host, with_host=False)
    views = [
        InstanceView("b", "b", "b.0", None, "running", 0, None, None, False),
        InstanceView("b[1]", "b", None, None, "starting", 0, None, None, False),
    ]
    assert "egress_denied_per_min" not in col.collect(100.0, views, {"b": 10})["b"]
    out = col.collect(160.0, views, {"b": 40})
    assert out["b"]["egress_denied_per_min"] == 30.0
    assert "egress_denied_per_min" not in out["b[1]"]  # the gateway counts per bot: shown on replica 0
    assert "egress_denied_per_min" not in col.collect(220.0, views, None)["b"]  # no gateway
    col.close()


def test_log_watch_backfills_recent_matches_from_the_log_on_first_sight(tmp_path: Path) -> None:
    rule = Rule("errs", "bot", log_metric("errs"), ">", 2.0, 0.0, "warning", kind="log", pattern="ERROR",
                window=60.0)  # fmt: skip
    now = 1_800_000_000.0

    def line(age: float, text: str) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - age))
        return f"{stamp}.000000Z out {text}\n"

    (tmp_path / "b.log").write_text(
        line(300, "ERROR too old") + line(30, "ERROR recent") + line(20, "fine") + line(5, "ERROR recent too")
    )
    watch = LogWatch(tmp_path, [rule])
    assert watch.scan(["b"], now) == {"b": {log_metric("errs"): 2.0}}
    assert watch.scan(["b"], now + 40) == {"b": {log_metric("errs"): 1.0}}  # the 30 s old one left
