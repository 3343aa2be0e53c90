"""`clawpen metrics / alerts / export / top` without a daemon: parsing, rendering, errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from clawpen import cli
from clawpen.cli_metrics import render_top

SPEC = """
[bots.web]
command = ["sleep", "1"]

[[monitoring.alerts]]
name = "web_cpu"
metric = "bot.cpu_percent"
threshold = 80
for = "2m"
bots = ["web"]
"""


@pytest.mark.prometheus
def test_export_prometheus_rules_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "clawpen.toml"
    spec.write_text(SPEC)
    assert cli.main(["export", "prometheus-rules", "-f", str(spec)]) == 0
    text = capsys.readouterr().out
    assert (
        'alert: "web_cpu"' in text
        and "for: 120s" in text
        and 'clawpen_bot_cpu_percent{bot=~\\"web\\"} > 80' in text
    )
    out = tmp_path / "rules.yml"
    assert cli.main(["export", "prometheus-rules", "-f", str(spec), "-o", str(out)]) == 0
    assert out.read_text() == text
    check = subprocess.run(
        ["promtool", "check", "rules", str(out)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_export_refuses_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "clawpen.toml"
    spec.write_text(SPEC)
    assert (
        cli.main(["export", "prometheus-rules", "-f", str(spec), "-o", str(tmp_path / "no/such/r.yml")]) == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_commands_need_a_running_daemon(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["metrics", "web"], ["alerts"], ["alerts", "ack", "3"], ["top", "--once"]):
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert "the clawpen daemon is not running" in err and "Traceback" not in err
    assert not (state / "daemon.pid").exists()  # nothing was started


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["top", "--sort", "bogus"]) == 2
    assert cli.main(["export", "grafana"]) == 2
    capsys.readouterr()


def test_top_renders_host_and_bots_sorted() -> None:
    data = {
        "host": {"cpu_percent": 12.0, "load1": 0.5, "memory_available_bytes": 2 * 2**30,
                 "memory_percent": 40.0, "disk_used_percent{/}": 55.0, "disk_iops{vda}": 12.0},
        "bots": {"small": {"cpu_percent": 1.0, "memory_bytes": 50 * 2**20, "restarts": 0.0},
                 "big": {"cpu_percent": 90.0, "memory_bytes": 10 * 2**20, "healthy": 0.0, "restarts": 4.0}},
        "states": {"small": "running", "big": "running", "gone": "crashloop"},
        "alerts": 2,
    }  # fmt: skip
    console = Console(width=160, record=True)
    console.print(render_top(data, "cpu"))
    text = console.export_text()
    assert "cpu 12.0%" in text and "firing alerts 2" in text and "2.0GB" in text
    lines = [line for line in text.splitlines() if line.strip().startswith(("big", "small", "gone"))]
    assert [line.split()[0] for line in lines] == ["big", "small", "gone"]
    assert "FAIL" in lines[0] and "crashloop" in lines[2]
    console = Console(width=160, record=True)
    console.print(render_top(data, "mem"))
    lines = [line for line in console.export_text().splitlines() if line.strip().startswith(("big", "small"))]
    assert [line.split()[0] for line in lines] == ["small", "big"]
