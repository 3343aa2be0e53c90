"""Helpers of bench/container_restart.py: a clawpen daemon of the bench's own, Docker's CLI,
/proc readings. Not a benchmark by itself."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLAWPEN = str(ROOT / ".venv" / "bin" / "clawpen")
DOCKER_PREFIX = "clawpen-bench-"


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def wait_until(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(interval)
    raise BenchError(f"timed out waiting for {what}")


def pct(xs: list[float], q: int) -> float:
    if not xs:
        return float("nan")
    return statistics.quantiles(xs, n=10)[q - 1] if len(xs) > 1 else xs[0]


# ------------------------------------------------------------------------------------ /proc
def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def comm(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return ""


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ""


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(root: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for pid in all_pids():
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def pid_of(name: str) -> int:
    found = [p for p in all_pids() if comm(p) == name]
    if not found:
        raise BenchError(f"no {name} process")
    return min(found)


# ------------------------------------------------------------------------------------ clawpen / docker
class Clawpen:
    """A clawpen daemon of this run, with its own CLAWPEN_HOME."""

    def __init__(self, work: Path) -> None:
        self.state = work / "state"
        self.spec_dir = work / "spec"
        self.spec_dir.mkdir(mode=0o755)
        env = {k: v for k, v in os.environ.items() if k not in ("CLAWPEN_HOME", "PYTHONDONTWRITEBYTECODE")}
        self.env = {**env, "CLAWPEN_HOME": str(self.state), "PYTHONPYCACHEPREFIX": str(work / "pycache")}

    def cli(self, *args: str, timeout: float = 180) -> str:
        done = subprocess.run(
            [CLAWPEN, *args], env=self.env, cwd=self.spec_dir, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise BenchError(f"clawpen {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def call(self, op: str, **args: Any) -> Any:
        """The daemon's reply to ``op``, through clawpen's own client (its framing, heartbeats)."""
        from clawpen.daemon.client import Client
        from clawpen.errors import ClawpenError

        try:
            return Client(self.state).call(op, autostart=False, **args)
        except ClawpenError as err:
            raise BenchError(f"daemon: {op}: {err}") from None

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.state / "daemon.pid").read_text())
        return None

    def states(self) -> dict[str, str]:
        return {r["bot"]: r["state"] for r in self.call("ps")}

    def events(self, bot: str) -> list[dict[str, Any]]:
        return [e for e in self.call("events", bot=bot, limit=100_000) if e["kind"] == "state"]

    def close(self) -> None:
        pid = self.pid()
        if pid is None or not Path(f"/proc/{pid}").exists():
            return
        with contextlib.suppress(BenchError, subprocess.TimeoutExpired):
            self.cli("down", timeout=120)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(BenchError):
            wait_until(lambda: not Path(f"/proc/{pid}").exists(), 60, "the daemon to stop", 0.2)


def bot_toml(name: str, image: str, command: list[str], *extra: str) -> str:
    lines = [f"[bots.{name}]", 'tier = "container"', f'image = "{image}"', "command = " + json.dumps(command)]
    return "\n".join([*lines, *extra]) + "\n\n"


def docker_argv(name: str, image: str, uid: int, *extra: str) -> list[str]:
    """``docker run -d`` with the hardening and limits of container_bench.py's anchor."""
    return [
        "docker", "run", "-d", "--name", name, "--network", "none", "--user", f"{uid}:{uid}",
        "--read-only", "--tmpfs", "/tmp:size=64m", "--cap-drop", "ALL", "--security-opt",
        "no-new-privileges", "--memory", "512m", "--memory-swap", "512m", "--cpus", "1",
        "--pids-limit", "256", "--init", "--log-driver", "none", *extra, image,
    ]  # fmt: skip


def docker(*args: str) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise BenchError(f"docker {' '.join(args[:2])}: {done.stderr.strip()}")
    return done.stdout


def docker_rm_ours() -> None:
    names = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"name=^{DOCKER_PREFIX}"], capture_output=True, text=True
    ).stdout.split()
    if names:
        subprocess.run(["docker", "rm", "-f", *names], capture_output=True, check=False)
