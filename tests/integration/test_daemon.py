"""The supervisor daemon with real bots: `clawpen up`, restarts, crashloop, diffs, crash safety."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import CLAWPEN, DaemonCli, alive, wait_for

from conftest import UID_BASE

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

COUNTER = "import time\\ni=0\\nwhile True:\\n    i+=1; print(i, flush=True); time.sleep(0.01)"


Daemon = DaemonCli


def test_up_runs_bots_captures_logs_and_records_a_release(daemon: Daemon) -> None:
    daemon.write(f"""
        [bots.counter]
        command = ["python3", "-c", "{COUNTER}"]
    """)
    out = daemon.cli("up").stdout
    assert "start counter" in out
    row = daemon.wait_state("counter", "running")
    uid = int(Path(f"/proc/{row['pid']}/status").read_text().split("Uid:")[1].split()[0])
    assert uid >= 1_900_000_000
    assert wait_for(lambda: len(daemon.cli("logs", "counter").stdout.splitlines()) > 20, 10)
    lines = daemon.cli("logs", "counter", "--tail", "3").stdout.splitlines()
    assert len(lines) == 3 and all(" out " in line for line in lines)
    releases = daemon.json("releases")
    assert len(releases) == 1 and "counter" in releases[0]["summary"]
    # idempotent: a second `up` changes nothing and keeps the same process
    assert "nothing changed" in daemon.cli("up").stdout
    assert daemon.ps()["counter"]["pid"] == row["pid"]


def test_crash_is_restarted_at_once_then_with_growing_backoff_then_crashloop(daemon: Daemon) -> None:
    daemon.write("""
        [bots.crasher]
        command = ["sh", "-c", "echo up; exit 3"]
        [bots.crasher.restart]
        policy = "on-failure"
        backoff_initial = "0.4s"
        backoff_max = "5s"
        max_restarts = 4
        window = "60s"
    """)
    daemon.cli("up", "--detach")  # `up` without it waits, and fails: the bot never stays up
    daemon.wait_state("crasher", "crashloop", timeout=30)
    starts = [e["at"] for e in daemon.events("crasher") if e.get("to_state") == "starting"]
    exits = [e["at"] for e in daemon.events("crasher") if e.get("to_state") == "exited"]
    assert len(starts) == 5, starts  # the first start and 4 restarts
    gaps = [s - e for e, s in zip(exits, starts[1:], strict=False)]
    assert gaps[0] < 0.2, f"the first restart must be immediate: {gaps}"
    assert gaps[1] < gaps[2] < gaps[3], f"backoff must grow: {gaps}"
    assert "crashloop" in daemon.cli("status", "crasher").stdout
    # a person's start leaves the crashloop
    daemon.cli("start", "crasher")
    assert wait_for(lambda: daemon.ps()["crasher"]["state"] != "crashloop", 5, interval=0.05)


def test_up_applies_only_what_changed(daemon: Daemon) -> None:
    spec = """
        [bots.a]
        command = ["sleep", "300"]
        [bots.b]
        command = ["sleep", "{b}"]
        [bots.c]
        command = ["sleep", "302"]
    """
    daemon.write(spec.format(b=301))
    daemon.cli("up")
    before = {n: daemon.wait_state(n, "running")["pid"] for n in "abc"}
    daemon.write(spec.format(b=303).replace('[bots.c]\n        command = ["sleep", "302"]', ""))
    out = daemon.cli("up").stdout
    assert "restart (changed) b" in out and "stop and remove c" in out
    after = daemon.ps()
    assert after["a"]["pid"] == before["a"]
    new_b = daemon.wait_state("b", "running")["pid"]
    assert new_b != before["b"]
    assert "c" not in daemon.ps()
    assert not alive(before["c"]) and not alive(before["b"])


def test_invalid_spec_applies_nothing(daemon: Daemon) -> None:
    daemon.write("""
        [bots.a]
        command = ["sleep", "300"]
    """)
    daemon.cli("up")
    pid = daemon.wait_state("a", "running")["pid"]
    daemon.write("""
        [bots.a]
        command = ["sleep", "301"]
        [bots.b]
        command = ["true"]
        filesystem = { rw = ["/etc"] }
    """)
    result = daemon.cli("up", check=False)
    assert result.returncode == 2
    assert "refusing a writable mount of /etc" in result.stderr and "clawpen.toml:6" in result.stderr
    assert "Traceback" not in result.stderr
    assert daemon.ps()["a"]["pid"] == pid and "b" not in daemon.ps()
    assert len(daemon.json("releases")) == 1


def test_daemon_sigkill_leaves_bots_running_and_readopts_them_without_losing_lines(daemon: Daemon) -> None:
    daemon.write(f"""
        [bots.counter]
        command = ["python3", "-c", "{COUNTER}"]
    """)
    daemon.cli("up")
    pid = daemon.wait_state("counter", "running")["pid"]
    old = daemon.pid()
    assert old
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not alive(old), 5)
    time.sleep(1.0)  # the bot keeps writing while no daemon reads
    assert alive(pid)
    start = time.monotonic()
    row = daemon.ps()  # starts a new daemon, which adopts the sandbox
    assert time.monotonic() - start < 5
    assert row["counter"]["pid"] == pid and row["counter"]["state"] == "running"
    assert any(e["kind"] == "adopt" for e in daemon.events("counter"))
    time.sleep(0.5)
    numbers = [int(line.split()[2]) for line in daemon.cli("logs", "counter").stdout.splitlines()]
    assert numbers == list(range(1, len(numbers) + 1)), "a line was lost or reordered"
    assert len(numbers) > 100


def test_bots_come_back_after_a_host_restart(daemon: Daemon) -> None:
    daemon.write("""
        [bots.a]
        command = ["sleep", "300"]
    """)
    daemon.cli("up")
    pid = daemon.wait_state("a", "running")["pid"]
    old = daemon.pid()
    assert old
    os.kill(old, signal.SIGKILL)  # the host "restarts": every process is gone
    subprocess.run(["pkill", "-KILL", "-P", str(pid)], check=False)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), 5)
    new = daemon.wait_state("a", "running")
    assert new["pid"] != pid


def test_stop_start_restart_down(daemon: Daemon) -> None:
    daemon.write("""
        [bots.a]
        command = ["sh", "-c", "trap 'echo bye; exit 0' TERM; while :; do sleep 0.1; done"]
    """)
    daemon.cli("up")
    first = daemon.wait_state("a", "running")["pid"]
    daemon.cli("stop", "a")
    assert daemon.ps()["a"]["state"] == "stopped" and not alive(first)
    assert "bye" in daemon.cli("logs", "a").stdout  # SIGTERM first, so the bot could say goodbye
    daemon.cli("start", "a")
    second = daemon.wait_state("a", "running")["pid"]
    daemon.cli("restart", "a")
    assert wait_for(lambda: daemon.ps()["a"]["pid"] not in (None, second), 10, interval=0.05)
    daemon.cli("down")
    assert daemon.ps() == {}


def test_two_ups_at_once_both_apply_in_turn(daemon: Daemon) -> None:
    daemon.write("""
        [bots.a]
        command = ["sleep", "300"]
    """)
    daemon.cli("ps")  # start the daemon first
    procs = [
        subprocess.Popen(
            [CLAWPEN, "up"], env=daemon.env, cwd=daemon.spec.parent, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum("start a" in o for o in outs) == 1 and sum("nothing changed" in o for o in outs) == 1


def test_a_million_line_burst_arrives_complete_and_in_order(daemon: Daemon) -> None:
    daemon.write("""
        [bots.burst]
        command = ["sh", "-c", "seq 1 1000000; sleep 300"]
        resources = { memory = "256M" }
    """)
    daemon.cli("up")
    logs = daemon.home / "logs" / "burst.log"
    assert wait_for(lambda: logs.exists() and logs.stat().st_size > 1_000_000 * 30, 60, interval=0.2)
    numbers = [line.split(b" ", 2)[2] for line in logs.read_bytes().splitlines()]
    assert numbers == [str(i).encode() for i in range(1, 1_000_001)]


def _bot_processes(bot_uid: int, name: str) -> list[int]:
    """The processes of the bot's own uid (not a bot of another test running alongside)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                uid = int((entry / "status").read_text().split("Uid:")[1].split()[0])
                comm = (entry / "comm").read_text().strip()
                if uid == bot_uid and comm != "bwrap" and any(name.encode() in a for a in argv):
                    out.append(int(entry.name))
    return out


def test_failing_health_check_restarts_the_bot(daemon: Daemon) -> None:
    daemon.write("""
        [bots.web]
        command = ["python3", "-m", "http.server", "8000", "--bind", "127.0.0.1"]
        health = { http = "http://127.0.0.1:8000/", interval = "0.5s", timeout = "0.5s", retries = 2 }
        restart = { stop_grace = "1s" }
    """)
    daemon.cli("up")
    first = daemon.wait_state("web", "running")["pid"]
    assert wait_for(lambda: daemon.ps()["web"].get("health") == "healthy", 10, interval=0.1)
    uid = int(json.loads((daemon.home / "users.json").read_text())["web"])
    servers = _bot_processes(uid, "http.server")
    assert servers
    for pid in servers:  # wedge the server: alive, but no longer answering
        os.kill(pid, signal.SIGSTOP)
    assert wait_for(
        lambda: any(e.get("to_state") == "unhealthy" for e in daemon.events("web")), 15, interval=0.2
    )
    assert wait_for(lambda: daemon.ps()["web"]["pid"] not in (None, first), 20, interval=0.2)
    assert daemon.wait_state("web", "running")["restarts"] >= 1


def test_health_failures_during_start_period_do_not_count(daemon: Daemon) -> None:
    daemon.write("""
        [bots.slow]
        command = ["sh", "-c", "sleep 3; exec python3 -m http.server 8000 --bind 127.0.0.1"]
        [bots.slow.health]
        http = "http://127.0.0.1:8000/"
        interval = "0.5s"
        timeout = "0.5s"
        retries = 2
        start_period = "6s"
    """)
    daemon.cli("up")
    daemon.wait_state("slow", "running")
    assert wait_for(lambda: daemon.ps()["slow"].get("health") == "healthy", 15, interval=0.2)
    assert not any(e.get("to_state") == "unhealthy" for e in daemon.events("slow"))
    assert daemon.ps()["slow"]["restarts"] == 0


def test_exec_runs_inside_the_bot_as_the_bot(daemon: Daemon) -> None:
    daemon.write("""
        [bots.a]
        command = ["sleep", "300"]
    """)
    daemon.cli("up")
    daemon.wait_state("a", "running")
    out = daemon.cli(
        "exec", "a", "--", "sh", "-c", "id -u; hostname; grep Seccomp: /proc/self/status"
    ).stdout.split()
    assert int(out[0]) >= UID_BASE and out[1] == "a" and out[-1] == "2"
    assert daemon.cli("exec", "a", "--", "sh", "-c", "exit 7", check=False).returncode == 7


def test_follow_streams_new_events_and_log_lines(daemon: Daemon) -> None:
    daemon.write("""
        [bots.a]
        command = ["sh", "-c", "sleep 1; echo hello-from-a; sleep 300"]
    """)
    daemon.cli("ps")  # the daemon is up
    events = subprocess.Popen(
        [CLAWPEN, "events", "-f", "--json"], env=daemon.env, stdout=subprocess.PIPE, text=True
    )
    logs = None
    try:
        daemon.cli("up")
        assert events.stdout is not None
        seen: list[dict] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(e.get("to_state") == "running" for e in seen):
            seen.append(json.loads(events.stdout.readline()))
        assert any(e.get("to_state") == "running" and e.get("bot") == "a" for e in seen)
        logs = subprocess.Popen(
            [CLAWPEN, "logs", "-f", "a"], env=daemon.env, stdout=subprocess.PIPE, text=True
        )
        assert logs.stdout is not None
        assert "hello-from-a" in logs.stdout.readline()
    finally:
        for proc in (events, logs):
            if proc is not None:
                proc.kill()
                proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()


def test_a_bot_that_ended_for_good_stays_down_after_a_daemon_restart(daemon: Daemon) -> None:
    daemon.write("""
        [bots.once]
        command = ["sh", "-c", "echo done"]
        restart = { policy = "no" }
        [bots.steady]
        command = ["sleep", "300"]
    """)
    daemon.cli("up")
    daemon.wait_state("once", "stopped")
    daemon.wait_state("steady", "running")
    old = daemon.pid()
    assert old
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not alive(old), 5)
    rows = daemon.ps()  # a new daemon
    assert rows["once"]["state"] == "stopped" and rows["steady"]["state"] == "running"
    time.sleep(0.5)
    starts = [e for e in daemon.events("once") if e.get("to_state") == "starting"]
    assert len(starts) == 1, "a bot whose policy said no restart was started again"
