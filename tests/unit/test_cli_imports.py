"""The import set of the everyday commands stays small (issue 22): `clawpen run`, `ps`, `logs`,
`start`, `stop` and `restart` run in a fresh interpreter and must not import the heavy modules
(pydantic, rich, asyncio, the API, the metrics, the gateway ...). A guard on what is imported,
not a timing: bench/run_bench.py and bench/ps_bench.py measure the time.

Each command runs for real, as far as it can without root: `run` stops at the sandbox's root
check (after building the plan and importing the whole run path), the daemon's commands talk
to a fake daemon on the state folder's socket, `logs` reads an empty log folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

# Never imported by the commands under test (top-level packages, and clawpen's own heavy parts).
HEAVY = {
    "pydantic",
    "pydantic_core",
    "rich",
    "httpx",
    "cryptography",
    "fastapi",
    "starlette",
    "uvicorn",
    "prometheus_client",
    "docker",
    "apprise",
    "asyncio",
    "ssl",
    "sqlite3",
    "tomllib",
    "email",
    "http",
    "inspect",
    "logging",
    "concurrent",
    "multiprocessing",
    "psutil",
    "pyroute2",
    "inotify_simple",
    "clawpen.api",
    "clawpen.metrics",
    "clawpen.alerts",
    "clawpen.net",
    "clawpen.net.gateway",
    "clawpen.daemon.app",
    "clawpen.daemon.server",
    "clawpen.daemon.runtime",
    "clawpen.daemon.store",
    "clawpen.spec.models",
    "clawpen.spec.loader",
    "clawpen.vault",
    "clawpen.container",
    "clawpen.vm",
    "clawpen.cli_metrics",
    "clawpen.cli_secrets",
    "clawpen.cli_audit",
    "clawpen.cli_report",
}
# And, for the commands that only talk to the daemon (or read files): no processes, no threads,
# no OpenSSL, no ctypes.
NOT_FOR_CLIENTS = {"subprocess", "threading", "hashlib", "_hashlib", "ctypes", "shutil", "clawpen.sandbox"}

PROBE = """
import json, os, sys
os.geteuid = lambda: 1000  # `run` stops at the sandbox's root check, after all of its imports
before = set(sys.modules)
from clawpen import cli
code = cli.main(json.loads(sys.argv[1]))
sys.stdout.flush()
with open(sys.argv[2], "w") as out:
    json.dump({"code": code, "modules": sorted(set(sys.modules) - before)}, out)
"""


@contextlib.contextmanager
def fake_daemon(state: Path) -> Iterator[list[str]]:
    """Answers every request on ``state/clawpen.sock`` (a `ps` row, or "started: a"); yields the
    operations it was asked for."""
    ops: list[str] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(state / "clawpen.sock"))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                op = json.loads(data)["op"]
                ops.append(op)
                row = {"bot": "a", "replica": 0, "state": "running", "pid": 5, "started_at": 1.0}
                result = [row | {"restarts": 0, "memory_bytes": 1 << 20}] if op == "ps" else {op: ["a"]}
                conn.sendall(json.dumps({"ok": True, "result": result}).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield ops
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(5)


def imported_by(args: list[str], state: Path) -> tuple[int, set[str], str]:
    """(exit code, modules imported, stdout) of ``clawpen ARGS`` in a fresh interpreter."""
    report = state / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAWPEN_")} | {"CLAWPEN_HOME": str(state)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args), str(report)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert report.exists(), done.stderr
    data = json.loads(report.read_text())
    return data["code"], set(data["modules"]), done.stdout + done.stderr


def heavy_in(modules: set[str], heavy: set[str]) -> set[str]:
    """The heavy modules of ``heavy`` (packages: with any submodule) that ``modules`` holds."""
    return {m for m in modules if m in heavy or any(m.startswith(h + ".") for h in heavy)}


@pytest.fixture
def state(tmp_path: Path) -> Path:
    home = tmp_path / "s"  # short: the socket's path has at most 107 bytes
    home.mkdir()
    return home


def test_run_imports_nothing_heavy(state):
    code, modules, out = imported_by(["run", "--", "/bin/true"], state)
    assert code == 1 and "needs root" in out  # it went all the way to the sandbox
    assert "clawpen.sandbox.namespace" in modules and "clawpen.plan.build" in modules
    assert heavy_in(modules, HEAVY) == set()


@pytest.mark.parametrize("command", ["ps", "start", "stop", "restart"])
def test_daemon_commands_import_nothing_heavy(command, state):
    args = [command] if command == "ps" else [command, "a"]
    with fake_daemon(state) as ops:
        code, modules, out = imported_by(args, state)
    assert code == 0, out
    assert ops == [command]  # the command did reach the daemon
    assert "clawpen.daemon.client" in modules
    assert heavy_in(modules, HEAVY | NOT_FOR_CLIENTS) == set()
    if command == "ps":
        assert out.splitlines()[1].startswith("a ")  # the table was printed


def test_logs_imports_nothing_heavy(state):
    (state / "logs").mkdir()
    code, modules, out = imported_by(["logs", "a"], state)
    assert code == 0, out
    assert "clawpen.logs.query" in modules
    # reading needs neither the writer (its budget, its threads) nor inotify (only `logs -f`)
    not_here = HEAVY | NOT_FOR_CLIENTS | {"clawpen.logs.writer"}
    assert heavy_in(modules, not_here) == set()


def test_the_guard_sees_a_heavy_import(state):
    """Positive control: a command that does import the heavy modules is caught."""
    code, modules, _out = imported_by(["schema"], state)
    assert code == 0
    assert "pydantic" in heavy_in(modules, HEAVY)


def test_the_help_builds_no_command_module(state):
    code, modules, out = imported_by([], state)
    assert code == 2 and "dashboard" in out and "snapshot" in out  # every command is listed
    commands = {m for m in modules if m.startswith("clawpen.cli_") or m == "clawpen.api.cli"}
    assert commands == {"clawpen.cli_parser"}


def test_logs_reads_the_writers_streams():
    from clawpen.logs import query, writer

    assert query.STREAMS == writer.STREAMS
