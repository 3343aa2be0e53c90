"""A validate copy does not outlive its validate by more than a deadline (issue 21's open ends,
item 3): the daemon removes a copy its client left (killed outright) once the scenarios' total
time + a margin has passed; the deadline of a removed copy never touches a later one."""

from __future__ import annotations

import glob
import json
import subprocess
import sys
import textwrap
import time

import pytest
from helpers import CLAWPEN, DaemonCli, of_uids, wait_for

from clawpen.daemon.client import Client
from clawpen.daemon.copy_deadline import MARGIN, copy_deadline, scenarios_total
from clawpen.errors import ClawpenError
from clawpen.paths import cgroup_scope
from clawpen.sandbox.cgroups import detect

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

BOT = "vdl"
COPY = f"{BOT}_validate"
SPEC = f"""
[bots.{BOT}]
command = ["python3", "-m", "http.server", "8000", "--bind", "127.0.0.1", "--directory", "/workspace"]
workspace = "./data"
resources = {{ memory = "96M", pids = 32 }}
health = {{ http = "http://127.0.0.1:8000/", interval = "1s", timeout = "1s", retries = 2 }}
restart = {{ policy = "always", backoff_initial = "0.2s", stop_grace = "1s" }}
"""
# a client that starts a copy with a short deadline, then hangs (the test kills it)
CLIENT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from clawpen.daemon.client import Client
    Client(Path(sys.argv[1])).call("validate_copy_start", bot=sys.argv[2], deadline=float(sys.argv[3]))
    print("started", flush=True)
    time.sleep(600)
""")


def temps() -> set[str]:
    return set(glob.glob(f"/var/tmp/clawpen-validate-{BOT}-*"))


def copy_cgroup(daemon: DaemonCli) -> bool:
    host = detect()
    return f"{cgroup_scope(daemon.home)}{COPY}.0" in host.names()


def copy_uid(daemon: DaemonCli) -> int | None:
    users = daemon.home / "users.json"
    return json.loads(users.read_text()).get(COPY) if users.exists() else None


def live(uid: int | None) -> bool:
    return uid is not None and any(not p.zombie for p in of_uids([uid]))


def copy_status(daemon: DaemonCli) -> dict | None:
    try:
        return dict(Client(daemon.home).call("validate_copy_status", copy=COPY))
    except ClawpenError:
        return None


def reasons(daemon: DaemonCli) -> list[str]:
    return [e["reason"] for e in daemon.events(COPY)]


def test_a_copy_whose_client_was_killed_is_removed_after_its_deadline(daemon: DaemonCli) -> None:
    (daemon.spec.parent / "data").mkdir()
    daemon.write(SPEC)
    daemon.cli("up")
    daemon.wait_state(BOT, "running")
    before = temps()
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(daemon.home), BOT, "4"],
        env=daemon.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None and client.stdout.readline() == "started\n"
        started = time.monotonic()
        assert wait_for(lambda: live(copy_uid(daemon)), 10)
        client.kill()  # outright: the client removes nothing
        client.wait()
        uid = copy_uid(daemon)
        # control: before the deadline the copy runs on (the kill alone removes nothing)
        time.sleep(max(0.0, 2.0 - (time.monotonic() - started)))
        assert copy_status(daemon) is not None and live(uid) and copy_cgroup(daemon)
        assert temps() != before
        # after it: gone, with everything it had
        assert wait_for(lambda: copy_status(daemon) is None, 10, interval=0.1)
        assert time.monotonic() - started >= 3.5
        assert wait_for(lambda: not live(uid), 10)
        assert not copy_cgroup(daemon)
        assert temps() == before
        assert not list((daemon.home / "validate" / "copies").glob("*.json"))
        assert any("after its deadline (4s)" in r for r in reasons(daemon)), reasons(daemon)
        assert daemon.ps()[BOT]["state"] == "running"  # the live bot is untouched
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        if client.stdout is not None:
            client.stdout.close()


def test_validate_sends_its_scenarios_time_and_an_old_deadline_spares_a_new_copy(
    daemon: DaemonCli,
) -> None:
    (daemon.spec.parent / "data").mkdir()
    daemon.write(SPEC)
    daemon.cli("up")
    daemon.wait_state(BOT, "running")
    spec = daemon.json("status", BOT)["spec"]
    want = copy_deadline(spec)
    # the figure: first start + kill + time to healthy + freeze, each as validate waits, + margin
    rd, ct = 0.2 + 60.0, 1.0 * 3
    assert scenarios_total(spec) == pytest.approx(2 * rd + ct + rd + ct + 3 * (1.0 + 1.0) + rd)
    assert want == pytest.approx(scenarios_total(spec) + MARGIN)
    proc = subprocess.Popen([CLAWPEN, "validate", BOT], env=daemon.env, cwd=daemon.spec.parent)
    try:
        assert wait_for(lambda: live(copy_uid(daemon)), 20)
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    client = Client(daemon.home)
    try:
        started = [r for r in reasons(daemon) if r.startswith("started a throwaway copy")]
        text = f"started a throwaway copy of {BOT} for validate (removed after {want:.0f}s at the latest)"
        assert started == [text], started
        assert copy_status(daemon) is not None  # the killed CLI removed nothing
    finally:
        assert client.call("validate_copy_remove", copy=COPY)["removed"] is True
    assert copy_status(daemon) is None and not copy_cgroup(daemon)
    # a removed copy's deadline spares a new copy of the same name (the timer is cancelled, and checks)
    client.call("validate_copy_start", bot=BOT, deadline=2.0)
    client.call("validate_copy_remove", copy=COPY)
    client.call("validate_copy_start", bot=BOT, deadline=60.0)
    try:
        assert wait_for(lambda: (copy_status(daemon) or {}).get("sandbox_pid"), 10)
        time.sleep(3.0)  # past the first copy's deadline
        assert copy_status(daemon) is not None and copy_cgroup(daemon)
        assert not any("after its deadline" in r for r in reasons(daemon)), reasons(daemon)
    finally:
        client.call("validate_copy_remove", copy=COPY)
    assert copy_status(daemon) is None
