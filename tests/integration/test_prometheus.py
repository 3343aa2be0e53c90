"""Prometheus: the exported rules pass `promtool check rules`, and a real Prometheus (Debian's
binary, temp config and TSDB) scrapes the daemon's /metrics, loads the rules, and answers a query
for a clawpen series through its HTTP API."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import DaemonCli, wait_for

pytestmark = [pytest.mark.prometheus]

SPEC = """
    [bots.sleeper]
    command = ["sleep", "600"]

    [monitoring]
    interval = "1s"
    prometheus_listen = "127.0.0.1:{port}"

    [[monitoring.alerts]]
    name = "sleeper_mem"
    metric = "bot.memory_bytes"
    op = ">"
    threshold = "400M"
    for = "1m30s"
    bots = ["sleeper"]

    [[monitoring.alerts]]
    metric = "host.disk_iops{{vda}}"
    threshold = 5000

    [[monitoring.log_alerts]]
    name = "tracebacks"
    pattern = "Traceback"
    count = 2
    window = "5m"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def test_exported_rules_pass_promtool(daemon: DaemonCli, tmp_path: Path) -> None:
    daemon.write(SPEC.format(port=9))
    out = tmp_path / "clawpen-rules.yml"
    daemon.cli("export", "prometheus-rules", "-f", str(daemon.spec), "-o", str(out))
    text = out.read_text()
    assert 'alert: "sleeper_mem"' in text and "for: 90s" in text
    assert 'clawpen_bot_memory_bytes{bot=~\\"sleeper\\"} > 419430400' in text
    assert 'clawpen_host_disk_iops{device=\\"vda\\"} > 5000' in text
    assert "increase(clawpen_log_matches_total" in text
    check = subprocess.run(
        ["promtool", "check", "rules", str(out)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 16 rules found" in check.stdout  # 6 bot, state-disk, audit, ship-lag; 4 host; 3 spec
    assert "clawpen_host_audit_critical > 0" in text
    stdout = daemon.cli("export", "prometheus-rules", "-f", str(daemon.spec)).stdout
    assert stdout == text
    missing = daemon.cli("export", "prometheus-rules", "-f", str(tmp_path / "nope.toml"), check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


@pytest.fixture
def prometheus_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="clawpen-prom-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.root
@pytest.mark.bwrap
def test_real_prometheus_scrapes_the_daemon(daemon: DaemonCli, prometheus_dir: Path) -> None:
    metrics_port, prom_port = free_port(), free_port()
    daemon.write(SPEC.format(port=metrics_port))
    daemon.cli("up")
    daemon.wait_state("sleeper", "running")
    rules = prometheus_dir / "rules.yml"
    daemon.cli("export", "prometheus-rules", "-f", str(daemon.spec), "-o", str(rules))
    (prometheus_dir / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {rules}\n"
        "scrape_configs:\n  - job_name: clawpen\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    log = (prometheus_dir / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={prometheus_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={prometheus_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    base = f"http://127.0.0.1:{prom_port}/api/v1"
    try:

        def query(expr: str) -> list[Any]:
            try:
                data = get(f"{base}/query?query={urllib.parse.quote(expr)}")
            except OSError:
                return []
            return list(data["data"]["result"])

        found = wait_for(lambda: query('clawpen_bot_up{bot="sleeper"}'), 60, 0.5)
        assert found, (
            f"Prometheus never saw clawpen_bot_up: {(prometheus_dir / 'prometheus.log').read_text()}"
        )
        assert found[0]["metric"]["replica"] == "0" and found[0]["value"][1] == "1"
        assert query("up{job='clawpen'}")[0]["value"][1] == "1"
        mem = wait_for(lambda: query('clawpen_bot_memory_limit_bytes{bot="sleeper"}'), 10, 0.5)
        assert mem and float(mem[0]["value"][1]) > 0
        assert wait_for(lambda: query("clawpen_host_memory_available_bytes"), 10, 0.5)
        dashboard = json.loads(
            (Path(__file__).resolve().parents[2] / "contrib/grafana/clawpen.json").read_text()
        )
        for panel in dashboard["panels"]:  # every dashboard query is valid PromQL with data or none
            for target in panel["targets"]:
                data = get(f"{base}/query?query={urllib.parse.quote(target['expr'].replace('$bot', '.*'))}")
                assert data["status"] == "success", (panel["title"], data)
        assert query('clawpen_bot_cpu_percent{bot=~".*"}'), "the dashboard's bot CPU panel has no data"
        groups = get(f"{base}/rules")["data"]["groups"]
        loaded = {r["name"]: r["health"] for g in groups for r in g["rules"]}
        assert {"sleeper_mem", "bot_down", "tracebacks", "host_cpu_high"} <= set(loaded)
        assert wait_for(
            lambda: all(
                r["health"] == "ok" for g in get(f"{base}/rules")["data"]["groups"] for r in g["rules"]
            ),
            10,
        ), get(f"{base}/rules")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
