"""`clawpen up` is all or nothing and honest (issue 12, item 5; and the empty spec of item 10).

A spec whose bots cannot start (a bad restart policy, a missing secret or mount source, more
CPUs than the host has, a port someone else listens on) changes nothing and records no release,
naming every bot and field at once; `up` waits for the changed bots and fails (exit 1), naming
each one that did not come up and why; `--detach` returns at once; an empty spec is refused.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from helpers import CLAWPEN, DaemonCli, alive

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

Daemon = DaemonCli

KEEPER = """
    [bots.u3keep]
    command = ["sleep", "{secs}"]
"""


def started(daemon: Daemon) -> int:
    """A first release with bot `u3keep` running; its pid."""
    daemon.write(KEEPER.format(secs=300))
    daemon.cli("up")
    return int(daemon.wait_state("u3keep", "running")["pid"])


def assert_nothing_applied(daemon: Daemon, keeper_pid: int) -> None:
    ps = daemon.ps()
    assert sorted(ps) == ["u3keep"], ps  # no new bot was started
    assert ps["u3keep"]["pid"] == keeper_pid and alive(keeper_pid)  # the changed one was not touched
    assert len(daemon.json("releases")) == 1  # no release recorded


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port this test listens on (so the daemon cannot)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def test_bad_restart_policy_applies_nothing(daemon: Daemon) -> None:
    pid = started(daemon)
    pair = """
        [bots.u3good]
        command = ["sleep", "300"]
        [bots.u3bad]
        command = ["sleep", "300"]
        restart = {{ backoff_initial = "{initial}", backoff_max = "5s" }}
    """
    daemon.write(KEEPER.format(secs=301) + pair.format(initial="10s"))
    done = daemon.cli("up", check=False)
    assert done.returncode == 2, done.stderr
    assert "backoff_initial" in done.stderr and "Traceback" not in done.stderr
    assert_nothing_applied(daemon, pid)
    dry = daemon.cli("up", "--dry-run", check=False)  # the dry run refuses it too
    assert dry.returncode == 2 and "backoff_initial" in dry.stderr
    # positive control: the same spec with the policy fixed applies
    daemon.write(KEEPER.format(secs=301) + pair.format(initial="1s"))
    daemon.cli("up")
    ps = daemon.ps()
    assert {n: ps[n]["state"] for n in ("u3keep", "u3good", "u3bad")} == dict.fromkeys(
        ("u3keep", "u3good", "u3bad"), "running"
    )
    assert not alive(pid) and len(daemon.json("releases")) == 2


def test_host_checks_name_every_bot_and_field_and_apply_nothing(daemon: Daemon, held_port: int) -> None:
    pid = started(daemon)
    missing = daemon.spec.parent / "no-such-folder"
    daemon.write(
        KEEPER.format(secs=301)
        + f"""
        [bots.fine]
        command = ["sleep", "300"]
        [bots.sec]
        command = ["sleep", "300"]
        secrets = ["NOPE_TOKEN"]
        [bots.mnt]
        command = ["sleep", "300"]
        filesystem = {{ ro = ["{missing}:/data"] }}
        [bots.cpu]
        command = ["sleep", "300"]
        resources = {{ cpus = 1000 }}
        [bots.port]
        command = ["sleep", "300"]
        network = {{ publish = ["127.0.0.1:{held_port}:8000"] }}
    """
    )
    done = daemon.cli("up", check=False)
    assert done.returncode == 2, done.stderr
    err = done.stderr
    assert "nothing was applied: 4 bots cannot start (cpu, mnt, port, sec)" in err, err
    for line in (
        "sec: bots.sec.secrets: secret not in the vault: NOPE_TOKEN (fix: clawpen secrets set NOPE_TOKEN)",
        f"mnt: bots.mnt.filesystem.ro: mount source {missing} does not exist",
        "cpu: bots.cpu.resources.cpus: cpus = 1000 asks for more CPUs than this host has",
        f"port: bots.port.network.publish: published port '127.0.0.1:{held_port}:8000': "
        f"127.0.0.1:{held_port} is already in use",
    ):
        assert line in err, f"{line!r} not in:\n{err}"
    assert "fine" not in err.split("\n")[0] and "Traceback" not in err
    assert_nothing_applied(daemon, pid)
    assert not missing.exists()  # nothing was created to make it pass


@pytest.mark.netns
def test_a_port_the_same_bot_holds_is_no_conflict(daemon: Daemon) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    spec = """
        [bots.u3web]
        command = ["sleep", "{secs}"]
        network = {{ publish = ["127.0.0.1:{port}:8000"] }}
    """
    daemon.write(spec.format(secs=300, port=port))
    daemon.cli("up")
    first = daemon.wait_state("u3web", "running")["pid"]
    with socket.socket() as other, pytest.raises(OSError):  # the relay holds the port now
        other.bind(("127.0.0.1", port))
    daemon.write(spec.format(secs=301, port=port))  # changed: recreated on the same port
    out = daemon.cli("up").stdout
    assert "restart (changed) u3web" in out
    assert daemon.wait_state("u3web", "running")["pid"] != first


def test_up_waits_and_names_a_bot_that_exits_at_once(daemon: Daemon) -> None:
    daemon.write("""
        [bots.u3good]
        command = ["sleep", "300"]
        [bots.u3bad]
        command = ["sh", "-c", "echo cannot-open-config >&2; exit 1"]
        restart = { policy = "no" }
    """)
    done = daemon.cli("up", check=False)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "release 1: start u3bad" in done.stdout  # it was applied, and `up` says what happened
    assert "error: bot u3bad is not up: stopped; last exit 1" in done.stderr, done.stderr
    assert "stderr: cannot-open-config" in done.stderr
    assert "bot u3good is not up" not in done.stderr
    ps = daemon.ps()
    assert ps["u3good"]["state"] == "running" and ps["u3bad"]["state"] == "stopped"
    assert len(daemon.json("releases")) == 1
    # --json carries the same verdict, and the same exit code
    daemon.write("""
        [bots.u3good]
        command = ["sleep", "300"]
        [bots.u3bad]
        command = ["sh", "-c", "exit 2"]
        restart = { policy = "no" }
    """)
    done = daemon.cli("up", "--json", check=False)
    assert done.returncode == 1
    import json

    waited = json.loads(done.stdout)["wait"]
    assert not waited["ok"] and [(r["bot"], r["ok"], r["exit_code"]) for r in waited["bots"]] == [
        ("u3bad", False, 2)
    ]


def test_up_returns_once_a_healthy_bot_is_healthy(daemon: Daemon) -> None:
    daemon.write("""
        [bots.u3web]
        command = ["python3", "-c", "import time, http.server as h; time.sleep(1); h.test(HandlerClass=h.SimpleHTTPRequestHandler, port=8000, bind='127.0.0.1')"]
        health = { http = "http://127.0.0.1:8000/", interval = "0.2s", timeout = "1s", start_period = "10s" }
    """)  # noqa: E501
    done = daemon.cli("up")
    assert done.returncode == 0 and "start u3web" in done.stdout
    row = daemon.ps()["u3web"]
    assert row["state"] == "running" and row["health"] == "healthy", row  # it did wait for it
    assert "u3web: running, healthy" in done.stderr


def test_a_health_check_that_never_passes_fails_up_after_the_timeout(daemon: Daemon) -> None:
    daemon.write("""
        [bots.u3deaf]
        command = ["sleep", "300"]
        health = { tcp = "127.0.0.1:9", interval = "0.2s", timeout = "0.3s", retries = 1000 }
    """)
    start = time.monotonic()
    done = daemon.cli("up", "--wait-timeout", "2", check=False)
    took = time.monotonic() - start
    assert done.returncode == 1, done.stderr
    assert "error: bot u3deaf is not up: not up after 2 s" in done.stderr, done.stderr
    assert 2 <= took < 15, took


def test_detach_returns_without_waiting(daemon: Daemon) -> None:
    daemon.write("""
        [bots.u3slow]
        command = ["sleep", "300"]
        health = { tcp = "127.0.0.1:9", interval = "30s" }
    """)
    start = time.monotonic()
    done = daemon.cli("up", "--detach")
    assert done.returncode == 0 and time.monotonic() - start < 10
    assert daemon.ps()["u3slow"]["health"] == "starting"  # its check fails, nothing waited for it


def test_empty_spec_is_refused_unless_allowed(daemon: Daemon) -> None:
    pid = started(daemon)
    daemon.write("version = 1\n")
    done = daemon.cli("up", check=False)
    assert done.returncode == 2 and "the spec names no bots" in done.stderr, done.stderr
    assert "--allow-empty" in done.stderr and "u3keep" in done.stderr
    assert daemon.ps()["u3keep"]["pid"] == pid and len(daemon.json("releases")) == 1
    daemon.cli("up", "--allow-empty")
    assert daemon.ps() == {} and not alive(pid)


def test_bad_wait_timeout_is_a_usage_error(daemon: Daemon) -> None:
    daemon.write(KEEPER.format(secs=300))
    for bad in ("nan", "0", "-1"):
        done = subprocess.run(
            [CLAWPEN, "up", "--wait-timeout", bad],
            capture_output=True,
            text=True,
            env=daemon.env,
            cwd=daemon.spec.parent,
            timeout=60,
        )
        assert done.returncode == 2 and "wait timeout" in done.stderr and "Traceback" not in done.stderr
    assert "u3keep" not in daemon.ps()
