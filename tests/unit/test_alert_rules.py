"""Alert rules with an injected clock: Prometheus `for` semantics, resolve, repeat, silence, ack."""

from __future__ import annotations

from pathlib import Path

import pytest

from clawpen.alerts.engine import Alert, Engine
from clawpen.alerts.messages import message
from clawpen.alerts.rules import Rule, log_metric, rules_from
from clawpen.errors import ConfigError
from clawpen.spec.alerts import MonitoringConfig
from clawpen.spec.loader import parse_spec_text

CPU = Rule("cpu_high", "bot", "cpu_percent", ">", 85.0, 300.0, "warning", summary="CPU above 85%")


def bot(value: float, target: str = "scraper") -> dict[str, dict[str, float]]:
    return {target: {"cpu_percent": value}}


def test_pending_then_firing_exactly_after_for() -> None:
    eng = Engine([CPU])
    changes, notices = eng.evaluate(1000.0, bot(90))
    assert [c.kind for c in changes] == ["pending"] and notices == []
    changes, notices = eng.evaluate(1299.999, bot(95))
    assert changes == [] and notices == []  # 299.999 s < for
    (alert,) = eng.active.values()
    assert alert.state == "pending" and alert.value == 95
    changes, notices = eng.evaluate(1300.0, bot(91))
    assert [c.kind for c in changes] == ["firing"]
    assert [n.kind for n in notices] == ["firing"]
    assert alert.state == "firing" and alert.fired_at == 1300.0 and alert.active_at == 1000.0


def test_for_zero_fires_at_first_evaluation() -> None:
    eng = Engine([CPU._replace(for_s=0.0)])
    changes, notices = eng.evaluate(5.0, bot(99))
    assert [c.kind for c in changes] == ["pending", "firing"]
    assert [n.kind for n in notices] == ["firing"]


def test_pending_is_dropped_when_condition_stops_and_restarts_its_for() -> None:
    eng = Engine([CPU])
    eng.evaluate(0.0, bot(90))
    changes, notices = eng.evaluate(200.0, bot(50))
    assert [c.kind for c in changes] == ["dropped"] and notices == []
    assert eng.active == {}
    eng.evaluate(250.0, bot(90))  # a new episode: for counts from 250
    _, notices = eng.evaluate(500.0, bot(90))
    assert notices == []
    _, notices = eng.evaluate(550.0, bot(90))
    assert [n.kind for n in notices] == ["firing"]


def test_missing_value_counts_as_false() -> None:
    eng = Engine([CPU._replace(for_s=0.0)])
    eng.evaluate(0.0, bot(90))
    changes, notices = eng.evaluate(1.0, {})
    assert [c.kind for c in changes] == ["resolved"]
    assert [n.kind for n in notices] == ["resolved"]


def test_resolve_sends_once_and_threshold_is_strict() -> None:
    eng = Engine([CPU._replace(for_s=10.0)])
    eng.evaluate(0.0, bot(86))
    eng.evaluate(10.0, bot(86))
    changes, notices = eng.evaluate(20.0, bot(85))  # 85 is not > 85
    assert [c.kind for c in changes] == ["resolved"]
    assert [n.kind for n in notices] == ["resolved"]
    assert notices[0].alert.resolved_at == 20.0
    assert eng.evaluate(30.0, bot(10)) == ([], [])


def test_repeat_interval_dedupes_and_repeats() -> None:
    eng = Engine([CPU._replace(for_s=0.0)], repeat_interval=60.0)
    kinds = []
    for t in range(0, 181, 10):
        kinds += [(t, n.kind) for n in eng.evaluate(float(t), bot(99))[1]]
    assert kinds == [(0, "firing"), (60, "repeat"), (120, "repeat"), (180, "repeat")]


def test_ack_stops_repeats_until_resolved() -> None:
    eng = Engine([CPU._replace(for_s=0.0)], repeat_interval=60.0)
    eng.evaluate(0.0, bot(99))
    (alert,) = eng.active.values()
    assert eng.ack(alert.id, "alice", 30.0) is alert
    assert eng.ack(alert.id + 100, "alice", 30.0) is None
    assert all(not eng.evaluate(float(t), bot(99))[1] for t in range(40, 400, 20))
    _, notices = eng.evaluate(400.0, bot(10))
    assert [n.kind for n in notices] == ["resolved"]
    _, notices = eng.evaluate(410.0, bot(99))  # a new episode is not acknowledged
    assert [n.kind for n in notices] == ["firing"] and notices[0].alert.acked_by is None


def test_silence_sends_nothing_then_fires_when_it_ends() -> None:
    eng = Engine([CPU._replace(for_s=0.0)], repeat_interval=3600.0)
    eng.silence("cpu_high", until=100.0)
    changes, notices = eng.evaluate(0.0, bot(99))
    assert "firing" in [c.kind for c in changes] and notices == []  # tracked, not sent
    assert eng.evaluate(50.0, bot(99))[1] == []
    _, notices = eng.evaluate(100.0, bot(99))
    assert [n.kind for n in notices] == ["firing"]


def test_silenced_resolve_is_not_sent_and_unsent_firing_never_resolves_loudly() -> None:
    eng = Engine([CPU._replace(for_s=0.0)])
    eng.silence("cpu_high", until=1000.0)
    eng.evaluate(0.0, bot(99))
    assert eng.evaluate(1.0, bot(1))[1] == []


def test_bots_filter_and_host_scope() -> None:
    only = CPU._replace(for_s=0.0, bots=("a",))
    host = Rule("h", "host", "cpu_percent", ">", 50.0, 0.0, "warning")
    eng = Engine([only, host])
    values = {"a": {"cpu_percent": 99}, "a[1]": {"cpu_percent": 99}, "b": {"cpu_percent": 99},
              "host": {"cpu_percent": 60}}  # fmt: skip
    eng.evaluate(0.0, values)
    assert sorted((a.rule, a.target) for a in eng.active.values()) == [
        ("cpu_high", "a"),
        ("cpu_high", "a[1]"),
        ("h", "host"),
    ]


def test_labelled_series_alert_per_device() -> None:
    every = Rule("iops", "host", "disk_iops", ">", 1000.0, 0.0, "warning")
    one = Rule("iops_sda", "host", "disk_iops{sda}", ">", 1000.0, 0.0, "warning")
    eng = Engine([every, one])
    eng.evaluate(0.0, {"host": {"disk_iops{sda}": 2000, "disk_iops{sdb}": 3000, "disk_iops{sdc}": 5}})
    assert sorted((a.rule, a.series) for a in eng.active.values()) == [
        ("iops", "disk_iops{sda}"),
        ("iops", "disk_iops{sdb}"),
        ("iops_sda", "disk_iops{sda}"),
    ]


def test_restore_keeps_firing_alerts_without_sending_again() -> None:
    eng = Engine([CPU._replace(for_s=0.0)])
    eng.evaluate(0.0, bot(99))
    saved = [Alert.from_dict(a.as_dict()) for a in eng.active.values()]
    again = Engine([CPU._replace(for_s=0.0)])
    again.restore(saved)
    assert again.evaluate(10.0, bot(99))[1] == []
    assert again.next_id == saved[0].id + 1


def test_held_target_keeps_its_alerts_while_its_values_are_unknown() -> None:
    eng = Engine([CPU._replace(for_s=0.0)])
    eng.evaluate(0.0, bot(99))
    changes, notices = eng.evaluate(1.0, {"scraper": {"up": 1.0}}, hold={"scraper"})  # no rate yet
    assert changes == [] and notices == [] and eng.active
    changes, _ = eng.evaluate(2.0, {"scraper": {"up": 1.0}})  # known and missing: resolved
    assert [c.kind for c in changes] == ["resolved"]


def test_removed_rule_forgets_its_alerts() -> None:
    eng = Engine([CPU._replace(for_s=0.0)])
    eng.evaluate(0.0, bot(99))
    gone = eng.set_rules([])
    assert [a.rule for a in gone] == ["cpu_high"] and eng.active == {}


def test_message_says_what_where_since_and_value() -> None:
    eng = Engine([Rule("mem", "host", "memory_available_bytes", "<", 500 * 2**20, 0.0, "critical",
                       summary="memory low")])  # fmt: skip
    _, notices = eng.evaluate(1_700_000_000.0, {"host": {"memory_available_bytes": 300 * 2**20}})
    msg = message("firing", notices[0].alert)
    assert msg.title.startswith("[FIRING] mem on host (critical)")
    assert "memory low" in msg.body and "where: host" in msg.body
    assert "since: 2023-11-14 22:13:20 UTC" in msg.body
    assert "value: 300.0 MiB" in msg.body and "< 500.0 MiB" in msg.body
    assert msg.alert_id == notices[0].alert.id and msg.severity == "critical"


# ---------------------------------------------------------------- the spec section
def load(text: str, tmp_path: Path) -> MonitoringConfig:
    return parse_spec_text(text, tmp_path / "clawpen.toml").spec.monitoring


def test_spec_rules_defaults_and_log_rules(tmp_path: Path) -> None:
    cfg = load(
        """
        [monitoring]
        interval = "1s"
        [[monitoring.alerts]]
        metric = "host.memory_available_bytes"
        op = "<"
        threshold = "1G"
        for = "2m"
        [[monitoring.alerts]]
        name = "bot_down"
        metric = "bot.up"
        op = "<"
        threshold = 1
        for = "5s"
        [[monitoring.log_alerts]]
        pattern = "Traceback"
        count = 2
        window = "30s"
        bots = ["a"]
        """,
        tmp_path,
    )
    rules = {r.name: r for r in rules_from(cfg)}
    assert cfg.interval == 1.0
    assert rules["host_memory_available_bytes_lt_1073741824"].threshold == 2**30
    assert rules["host_memory_available_bytes_lt_1073741824"].for_s == 120
    assert rules["bot_down"].for_s == 5.0  # a spec rule replaces the built-in of that name
    assert rules["host_cpu_high"].threshold == 85 and rules["host_cpu_high"].for_s == 300
    log = rules["log_1"]
    assert (log.metric, log.threshold, log.window, log.bots) == (log_metric("log_1"), 2.0, 30.0, ("a",))
    assert {"bot_crashloop", "bot_unhealthy", "bot_oom_killed", "bot_restarts", "bot_egress_denied"} <= set(
        rules
    )


def test_builtins_can_be_turned_off(tmp_path: Path) -> None:
    cfg = load("[monitoring.builtin]\nenabled = false\nhost_defaults = false\n", tmp_path)
    assert rules_from(cfg) == []


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('[[monitoring.alerts]]\nmetric = "bot.nope"\nthreshold = 1', "no bot metric 'nope'"),
        ('[[monitoring.alerts]]\nmetric = "cpu_percent"\nthreshold = 1', "is not host.NAME or bot.NAME"),
        ('[[monitoring.alerts]]\nmetric = "bot.cpu_percent"\nop = "=>"\nthreshold = 1', "monitoring.alerts"),
        ('[[monitoring.alerts]]\nmetric = "bot.cpu_percent"\nthreshold = "lots"', "not a size"),
        ('[[monitoring.log_alerts]]\npattern = "(unclosed"', "not a regular expression"),
        ('[monitoring]\ninterval = "200ms"', "out of range"),
        ('[monitoring]\nprobes = ["1.1.1.1"]', "not HOST:PORT"),
        ('[monitoring.notify]\nurls = ["not a url"]', "not an Apprise URL"),
        (
            '[[monitoring.alerts]]\nmetric = "bot.up"\nthreshold = 1\n'
            '[[monitoring.alerts]]\nmetric = "bot.up"\nthreshold = 1',
            "two alert rules are named",
        ),
    ],
)
def test_bad_monitoring_sections_are_refused_with_a_place(tmp_path: Path, body: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(body, tmp_path)
    text = f"{info.value.what} {info.value.where}"
    assert needle in text
    assert str(tmp_path / "clawpen.toml") in str(info.value.where)
