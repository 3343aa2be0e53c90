"""The lag metric from the shipper's status file, its built-in alert rule, the notification of
dropped records, and ``clawpen logs ship`` misuse."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from clawpen.alerts.messages import log_shipping_message
from clawpen.alerts.rules import rules_from
from clawpen.cli_daemon import _ship_status
from clawpen.errors import UsageError
from clawpen.logs.ship.component import STATUS_FILE, ship_values
from clawpen.spec.alerts import MonitoringConfig
from clawpen.spec.metricnames import lookup


def test_lag_values_from_a_fresh_status_file_only(tmp_path: Path) -> None:
    assert ship_values(tmp_path, 1000.0) == {}
    path = tmp_path / STATUS_FILE
    path.parent.mkdir()
    doc = {"at": 1000.0, "host": "h", "targets": [{"target": "central", "lag_seconds": 12.5}]}
    path.write_text(json.dumps(doc))
    assert ship_values(tmp_path, 1010.0) == {"ship_lag_seconds{central}": 12.5}
    assert ship_values(tmp_path, 1000.0 + 61) == {}  # the daemon that wrote it is gone
    path.write_text("{torn")
    assert ship_values(tmp_path, 1010.0) == {}
    assert lookup("host", "ship_lag_seconds{central}") is not None


def test_builtin_lag_rule_matches_every_target() -> None:
    rule = {r.name: r for r in rules_from(MonitoringConfig())}["host_log_ship_lag"]
    assert rule.scope == "host" and rule.threshold == 300.0 and rule.for_s == 300.0
    assert rule.matches_series("ship_lag_seconds{central}") and rule.matches_series("ship_lag_seconds{b}")
    assert not rule.matches_series("state_disk_low")


def test_dropped_records_message() -> None:
    msg = log_shipping_message("log target central: 1500 lines of web not shipped", 0.0)
    assert msg.title.startswith("[LOG SHIPPING]") and "1500 lines" in msg.body and msg.severity == "critical"


@pytest.mark.parametrize("argv", [("ship", ["stat"]), ("web", ["status"]), ("ship", ["status", "x"])])
def test_logs_ship_misuse_is_a_usage_error(argv: tuple[str, list[str]]) -> None:
    ns = argparse.Namespace(bot=argv[0], action=argv[1], json=True)
    with pytest.raises(UsageError, match="is not a command") as err:
        _ship_status(ns)
    assert err.value.exit_code == 2


def test_status_table(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import clawpen.cli_daemon as cli

    row = {"target": "central", "connected": False, "last_ack": None, "lag_seconds": 12.5, "lag_bytes": 4096}
    row |= {"sent": 10, "acked": 8, "dropped": 0, "duplicates": 2, "last_error": "cannot connect: refused"}
    monkeypatch.setattr(cli, "_fetch", lambda _ns, _op: {"host": "h", "targets": [row]})
    assert _ship_status(argparse.Namespace(bot="ship", action=["status"], json=False)) == 0
    head, line = capsys.readouterr().out.splitlines()
    assert head.split()[:3] == ["TARGET", "STATE", "LAG"]
    assert line.split()[:4] == ["central", "down", "12.5s", "4096"] and "error: cannot connect" in line
    monkeypatch.setattr(cli, "_fetch", lambda _ns, _op: {"host": "h", "targets": []})
    _ship_status(argparse.Namespace(bot="ship", action=["status"], json=False))
    assert "no log targets" in capsys.readouterr().out
