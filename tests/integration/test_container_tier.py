"""The container tier with real Docker and real Podman (its Docker-compatible API): a bot in its
own hardened container, supervised by the daemon like a sandbox bot (logs, restarts, re-adoption
after a daemon SIGKILL, `down`). Tests taking ``engine`` run on both engines.

The daemon names its containers ``clawpen-<scope><bot>-<replica>`` (the scope: a short id of the
test's state directory), labelled ``clawpen.state=<state dir>``; the fixture removes any the
test leaves.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from container_env import BASE_IMAGE, PODMAN_CLI, ensure_base_image
from helpers import CLAWPEN, DaemonCli, alive, wait_for

from clawpen.errors import SandboxError
from clawpen.paths import cgroup_scope
from conftest import daemon_at

pytestmark = [pytest.mark.root, pytest.mark.docker]
SECRET = "ctr-s3cret-value-1234"
LISTENER = (  # a bare socket listener: no dependence on the image's http.server
    "import socket; s = socket.socket(); s.bind(('127.0.0.1', 47913)); s.listen()\\n"
    "while True: s.accept()[0].close()"
)
COUNTER = "i=0; while :; do i=$((i+1)); echo $i; sleep 0.01; done"


class Engine(NamedTuple):
    """An engine under test: its name, the docker CLI talking to it, the spec's lines for it."""

    name: str
    cli: list[str]

    @property
    def image(self) -> str:
        return f'image = "{BASE_IMAGE}"\nengine = "{self.name}"'


DOCKER = Engine("docker", ["docker"])
PODMAN = Engine("podman", PODMAN_CLI)


@pytest.fixture(params=[DOCKER, pytest.param(PODMAN, marks=pytest.mark.podman)], ids=["docker", "podman"])
def engine(request: pytest.FixtureRequest) -> Engine:
    return request.param  # type: ignore[no-any-return]


def _containers(home: Path, cli: list[str] = DOCKER.cli) -> list[dict[str, object]]:
    listed = subprocess.run(
        [*cli, "ps", "-a", "-q", "--filter", f"label=clawpen.state={home}"], capture_output=True, text=True
    )
    assert listed.returncode == 0, f"{' '.join(cli)} ps failed: {listed.stderr.strip()}"
    out = listed.stdout.split()
    if not out:
        return []
    found = subprocess.run([*cli, "inspect", *out], capture_output=True, text=True, check=True)
    return json.loads(found.stdout)  # type: ignore[no-any-return]


def _remove_left(home: Path, engines: list[Engine]) -> None:
    """Remove what a test left under this daemon's names or label, on the engines it used."""
    for engine in engines:
        named = subprocess.run(
            [*engine.cli, "ps", "-a", "-q", "--filter", f"name=clawpen-{cgroup_scope(home)}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        left = [str(c["Id"]) for c in _containers(home, engine.cli)] + named
        if left:
            subprocess.run([*engine.cli, "rm", "-f", *left], capture_output=True, check=False)


@pytest.fixture
def daemon(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DaemonCli]:
    ensure_base_image()
    home = tmp_path / "state"
    # only the engines this test uses: a Podman service another session is stopping must not
    # fail a Docker test's teardown (a CI run saw `ps` on its socket fail there)
    engines = [DOCKER, PODMAN] if request.node.get_closest_marker("podman") else [DOCKER]
    try:
        with daemon_at(home) as d:
            yield d
    finally:
        _remove_left(home, engines)


def set_secret(env: dict[str, str], name: str, value: str) -> None:
    subprocess.run([CLAWPEN, "secrets", "set", name], input=value + "\n", text=True, env=env, check=True)


def _uids(pid: int) -> set[int]:
    """The real, effective, saved and fs uids of ``pid`` and of every descendant, from the host."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        status = Path(f"/proc/{p}/status").read_text()
        found.update(int(u) for u in status.split("Uid:")[1].splitlines()[0].split())
        for task in Path(f"/proc/{p}/task").iterdir():
            todo += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_a_container_bot_runs_hardened_as_its_uid_and_down_removes_it(
    daemon: DaemonCli, engine: Engine
) -> None:
    set_secret(daemon.env, "API_TOKEN", SECRET)
    probe = (
        "stat -c 'secret %a %u' /run/secrets/API_TOKEN; echo token=$(cat /run/secrets/API_TOKEN); "
        "touch /etc/x 2>/dev/null && echo root-writable || echo root-readonly; "
        "touch /usr/x 2>/dev/null && echo usr-writable || echo usr-readonly; "
        "touch /workspace/ok && echo workspace-writable; touch /tmp/ok && echo tmp-writable; "
        "echo ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ,); "
        "echo env=$API_TOKEN; echo to-stderr >&2; exec sleep 300"
    )
    daemon.write(f"""
        [bots.box]
        tier = "container"
        {engine.image}
        command = ["sh", "-c", "{probe}"]
        workspace = "ws"
        secrets = ["API_TOKEN"]
        secret_env = ["API_TOKEN"]
        [bots.box.resources]
        memory = "128M"
        pids = 64
        tmp = "8M"
    """)
    daemon.cli("up")
    row = daemon.wait_state("box", "running")
    assert wait_for(lambda: "env=" in daemon.cli("logs", "box").stdout, 10)
    logs = daemon.cli("logs", "box").stdout
    uid = os.stat(daemon.spec.parent / "ws").st_uid
    assert uid >= 1_900_000_000
    # from the host: the container's init and every process under it run as the bot's uid, never 0
    assert _uids(row["pid"]) == {uid}
    status = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{row['pid']}/status").read_text().splitlines()
    )
    assert status["CapEff"].strip("0\n") == "" and status["CapBnd"].strip("0\n") == ""  # no capability
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"  # the engine's seccomp filter
    assert f"secret 400 {uid}" in logs
    assert "token=[REDACTED:API_TOKEN]" in logs and "env=[REDACTED:API_TOKEN]" in logs
    assert SECRET not in logs
    assert "root-readonly" in logs and "usr-readonly" in logs  # read-only root
    assert "workspace-writable" in logs and "tmp-writable" in logs  # the positive controls
    assert (daemon.spec.parent / "ws" / "ok").exists()
    assert "ifaces=lo," in logs  # no network but loopback
    assert " err to-stderr" in logs
    (info,) = _containers(daemon.home, engine.cli)
    host = info["HostConfig"]
    assert isinstance(host, dict)
    assert SECRET not in json.dumps(info)  # secret_env's value never reaches the engine's config
    assert "CLAWPEN_SECRET_ENV=API_TOKEN" in info["Config"]["Env"]  # type: ignore[index]
    # Podman's API lists the capabilities it dropped (all of its defaults) where Docker says ALL
    assert (
        host["CapDrop"] == ["ALL"] if engine == DOCKER else not host["CapAdd"] and "SETUID" in host["CapDrop"]
    )
    assert host["ReadonlyRootfs"] and not host["Privileged"]
    assert host["NetworkMode"] == "none" and host["RestartPolicy"]["Name"] == "no"
    assert "no-new-privileges" in host["SecurityOpt"] and host["LogConfig"]["Type"] == "none"
    assert host["PidsLimit"] == 64 and host["Init"]
    assert str(host["CgroupParent"]).startswith("/clawpen/")
    assert not any("docker.sock" in str(m.get("Source")) for m in info["Mounts"])  # type: ignore[union-attr]
    writable = {m["Destination"] for m in info["Mounts"] if m["RW"]}  # type: ignore[index,union-attr]
    assert writable == {"/workspace", "/.clawpen/out", "/.clawpen/err"}
    # metrics come from clawpen's cgroup around the container
    labels = info["Config"]["Labels"]  # type: ignore[index]
    cgroup = Path("/sys/fs/cgroup/memory/clawpen") / labels["clawpen.cgroup"]
    assert int((cgroup / "memory.usage_in_bytes").read_text()) > 0
    # the memory limit: the engine's; on Podman (cgroup v1) that of clawpen's cgroup around it
    limit = host["Memory"] if engine == DOCKER else int((cgroup / "memory.limit_in_bytes").read_text())
    assert limit == 128 << 20
    # `clawpen exec` enters the container's namespaces as the bot's uid (its files, not the host's)
    got = daemon.cli(
        "exec", "box", "--", "sh", "-c", "id -u; cat /workspace/ok && echo seen; touch /x", check=False
    )
    assert got.returncode == 1 and "Read-only file system" in got.stderr, got
    assert got.stdout.split() == [str(uid), "seen"], got
    # the secret lives in the container's own tmpfs, nowhere under the state folder in clear
    mounts = Path(f"/proc/{row['pid']}/mounts").read_text().splitlines()
    assert any(m.split()[1:3] == ["/run/secrets", "tmpfs"] for m in mounts)
    assert not any(SECRET.encode() in p.read_bytes() for p in daemon.home.rglob("*") if p.is_file())
    started = time.monotonic()
    daemon.cli("down")
    assert time.monotonic() - started < 5  # SIGTERM reached the bot through the container's init
    events = daemon.events("box")
    assert any(e.get("to_state") == "stopped" for e in events), events
    assert not any(e["kind"] == "kill" for e in events), "needed SIGKILL"
    assert _containers(daemon.home, engine.cli) == []
    assert not list(daemon.home.glob("run/*.ctr")) and not cgroup.exists()
    assert not alive(row["pid"])


def test_crash_restarts_and_a_daemon_sigkill_leaves_the_container_to_be_readopted(
    daemon: DaemonCli, engine: Engine
) -> None:
    daemon.write(f"""
        [bots.count]
        tier = "container"
        {engine.image}
        command = ["sh", "-c", "{COUNTER}"]
        [bots.crash]
        tier = "container"
        {engine.image}
        command = ["sh", "-c", "echo up; sleep 0.2; exit 3"]
        restart = {{ backoff_initial = "0.1s", max_restarts = 50 }}
        [bots.hog]
        tier = "container"
        {engine.image}
        command = ["python3", "-c", "b = bytearray(256 << 20)"]
        resources = {{ memory = "32M" }}
        restart = {{ policy = "no" }}
        [bots.web]
        tier = "container"
        {engine.image}
        command = ["python3", "-c", "{LISTENER}"]
        health = {{ tcp = "127.0.0.1:47913", interval = "0.3s", timeout = "1s" }}
    """)
    daemon.cli("up", "--detach")
    pid = daemon.wait_state("count", "running")["pid"]
    # a tcp check reaches the bot's loopback inside the container's network namespace (the host's
    # 127.0.0.1:47913 has no listener: the check did not pass there)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", 47913), timeout=2).close()
    assert wait_for(lambda: daemon.ps()["web"]["health"] == "healthy", 15, interval=0.2), daemon.ps()["web"]
    assert wait_for(lambda: daemon.ps()["crash"]["restarts"] >= 2, 30, interval=0.2)
    exits = [e for e in daemon.events("crash") if e.get("to_state") == "exited"]
    assert exits and "exited with code 3" in str(exits[0].get("reason"))
    # the memory limit holds, and the engine's OOM verdict reaches the supervisor
    assert wait_for(lambda: any(e.get("to_state") == "oom" for e in daemon.events("hog")), 45, interval=0.2)
    old = daemon.pid()
    assert old
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not alive(old), 5)
    time.sleep(1.0)  # the bot keeps writing while no daemon reads
    assert alive(pid)
    rows = daemon.ps()  # a new daemon, which adopts the running container
    assert rows["count"]["pid"] == pid and rows["count"]["state"] == "running"
    assert any(e["kind"] == "adopt" for e in daemon.events("count"))
    time.sleep(0.5)
    numbers = [int(line.split()[2]) for line in daemon.cli("logs", "count").stdout.splitlines()]
    assert len(numbers) > 100
    assert numbers == list(range(1, len(numbers) + 1)), "a line was lost or reordered"
    # the new daemon supervises it: the bot killed from the host is restarted in a new container
    before = daemon.ps()["count"]["restarts"]
    os.kill(pid, signal.SIGKILL)
    assert wait_for(
        lambda: daemon.ps()["count"]["restarts"] > before and daemon.ps()["count"]["state"] == "running", 20
    )
    assert daemon.ps()["count"]["pid"] != pid
    daemon.cli("down")
    assert _containers(daemon.home, engine.cli) == []


@pytest.mark.bwrap
def test_no_engine_or_no_image_fails_only_that_bot(daemon: DaemonCli) -> None:
    (daemon.spec.parent / "img").mkdir()
    scope = cgroup_scope(daemon.home)
    for bot, state in (("left", str(daemon.home)), ("foreign", "/elsewhere")):
        # a container a lost record left behind (removed and replaced), and one not ours (kept)
        name = f"clawpen-{scope}{bot}-0"
        subprocess.run(
            ["docker", "create", "--name", name, "--label", f"clawpen.state={state}", BASE_IMAGE, "true"],
            capture_output=True,
            check=True,
        )
    daemon.write(f"""
        [bots.plain]
        command = ["sleep", "300"]
        [bots.podman]
        tier = "container"
        engine = "podman"
        image = "{BASE_IMAGE}"
        command = ["true"]
        [bots.unbuilt]
        tier = "container"
        image = {{ context = "img" }}
        command = ["true"]
        [bots.left]
        tier = "container"
        image = "{BASE_IMAGE}"
        command = ["sleep", "300"]
        [bots.foreign]
        tier = "container"
        image = "{BASE_IMAGE}"
        command = ["sleep", "300"]
    """)
    daemon.env["CONTAINER_HOST"] = f"unix://{daemon.home}/no-podman.sock"  # where no Podman listens
    daemon.cli("up", check=False)
    daemon.wait_state("plain", "running")  # the daemon and a sandbox bot run without podman
    daemon.wait_state("podman", "failed")
    daemon.wait_state("unbuilt", "failed")
    daemon.wait_state("foreign", "failed")
    left = daemon.wait_state("left", "running")
    reasons = {
        bot: [str(e.get("reason")) for e in daemon.events(bot) if e.get("to_state") == "failed"]
        for bot in ("podman", "unbuilt", "foreign")
    }
    assert "the podman engine is not running" in reasons["podman"][0]
    assert "is not on this host" in reasons["unbuilt"][0] and "clawpen-unbuilt:" in reasons["unbuilt"][0]
    assert "is not this clawpen's" in reasons["foreign"][0]
    (mine,) = _containers(daemon.home)
    assert mine["State"]["Pid"] == left["pid"]  # type: ignore[index]
    foreign = f"clawpen-{scope}foreign-0"
    kept = subprocess.run(["docker", "rm", foreign], capture_output=True, check=False)
    assert kept.returncode == 0, "the foreign container was touched"


def _tier_start(
    tmp_path: Path,
    command: str,
    wire_net: object,
    *,
    image: str = BASE_IMAGE,
    secrets: dict[str, bytes] | None = None,
    engine: str = "auto",
) -> tuple[object, dict[str, int]]:
    """ContainerTier.start on a plan built as the daemon builds it, stdout on a named pipe."""
    from clawpen.container.tier import ContainerTier
    from clawpen.daemon.lifecycle import instance_plan, open_fifos
    from clawpen.plan.build import HostFacts
    from clawpen.sandbox.seccomp import default_policy
    from clawpen.sandbox.tier import Stdio
    from clawpen.spec.loader import parse_spec_text

    state = tmp_path / "state"
    (state / "run").mkdir(parents=True, mode=0o700)
    spec = tmp_path / "clawpen.toml"
    spec.write_text(
        f'[bots.gate]\ntier = "container"\nimage = "{image}"\nengine = "{engine}"\nworkspace = "ws"\n'
        f'command = ["sh", "-c", "{command}"]\n'
    )
    bot = parse_spec_text(spec.read_text(), spec).spec.bots["gate"]
    plan = instance_plan(
        bot, "gate", 0, str(tmp_path), state_dir=state, host=HostFacts.probe(), seccomp=default_policy()
    )
    ends: dict[str, int] = {}
    pipes: dict[str, int] = {}
    open_fifos([("out", state / "run/g.out"), ("err", state / "run/g.err")], ends, pipes)
    stdio = Stdio(None, ends["out"], ends["err"])
    try:
        tier = ContainerTier(state)
        started = tier.start(
            plan,
            cgroup_name="ctier-gate.0",
            stdio=stdio,
            secrets=secrets or {},
            wire_net=wire_net,  # type: ignore[arg-type]
        )
        return started, pipes
    finally:
        for fd in ends.values():
            os.close(fd)


def test_the_bot_runs_only_after_wire_net_returned_and_its_error_aborts_the_start(
    tmp_path: Path, engine: Engine
) -> None:
    ensure_base_image()
    seen: list[int] = []

    def wire(pid: int) -> None:  # as the network helper would: the namespaces exist, the bot waits
        seen.append(pid)
        assert Path(f"/proc/{pid}/ns/net").exists()
        time.sleep(0.5)
        marker = tmp_path / "ws" / "wired"
        marker.write_text("yes")
        os.chown(marker, os.stat(tmp_path / "ws").st_uid, -1)

    sandbox, pipes = _tier_start(tmp_path, "cat /workspace/wired; echo; exit 7", wire, engine=engine.name)
    try:
        assert sandbox.pid == seen[0]  # type: ignore[attr-defined]
        result = sandbox.collect()  # type: ignore[attr-defined]
        assert result.exit_code == 7
        os.set_blocking(pipes["out"], False)
        assert os.read(pipes["out"], 4096) == b"yes\n"  # it ran after the marker was written
    finally:
        sandbox.teardown()  # type: ignore[attr-defined]
        for fd in pipes.values():
            os.close(fd)

    def broken(pid: int) -> None:
        raise RuntimeError("no link")

    with pytest.raises(RuntimeError, match="no link"):
        _tier_start(tmp_path / "b", "touch /workspace/ran", broken, engine=engine.name)
    assert not (tmp_path / "b" / "ws" / "ran").exists()  # the command never ran
    gone = subprocess.run(
        [*engine.cli, "ps", "-a", "-q", "--filter", "name=clawpen-ctier-gate-0"],
        capture_output=True,
        text=True,
    )
    assert gone.stdout.strip() == "" and not list((tmp_path / "b" / "state" / "run").glob("*.ctr"))


def test_secrets_are_never_written_through_a_symlink_of_the_image(tmp_path: Path) -> None:
    ensure_base_image()
    image = "clawpen-test-symrun:latest"  # an image whose /run points at /etc
    build = f"FROM {BASE_IMAGE}\nRUN rm -rf /run && ln -s /etc /run\n"
    subprocess.run(["docker", "build", "-q", "-t", image, "-"], input=build, text=True, check=True,
                   capture_output=True)  # fmt: skip
    try:
        with pytest.raises(SandboxError, match="cannot write the secrets"):
            _tier_start(tmp_path, "true", None, image=image, secrets={"TOKEN": b"x"})
        assert not Path("/etc/secrets").exists()  # the host's: untouched
        # the positive control: the base image gets the file, as the bot's uid, 0400
        sandbox, pipes = _tier_start(
            tmp_path / "ok", "stat -c '%a %u' /run/secrets/TOKEN; cat /run/secrets/TOKEN", None,
            secrets={"TOKEN": b"tok"},
        )  # fmt: skip
        try:
            assert sandbox.collect().exit_code == 0  # type: ignore[attr-defined]
            os.set_blocking(pipes["out"], False)
            uid = os.stat(tmp_path / "ok" / "ws").st_uid
            assert os.read(pipes["out"], 4096) == f"400 {uid}\ntok".encode()
        finally:
            sandbox.teardown()  # type: ignore[attr-defined]
            for fd in pipes.values():
                os.close(fd)
    finally:
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True, check=False)


def _children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


def test_clawpen_seccomp_filter_stacks_on_the_engines(daemon: DaemonCli, engine: Engine) -> None:
    """adjtimex (reading the kernel clock's state) is allowed by Docker's default filter and
    denied by clawpen's: the bot is refused, the host (positive control) is not; from the host
    the bot carries two filters, the engine's init one."""
    host = subprocess.run(["/bin/busybox", "adjtimex"], capture_output=True, check=False)
    assert host.returncode == 0  # the positive control: the call works outside the container
    podman_limits = ["--ulimit", "nproc=1024:1024", "--ulimit", "nofile=1024:1024"]  # see podman_kwargs
    engine_only = subprocess.run(  # and in a container with the engine's filter alone
        [
            *(["podman", "run", *podman_limits] if engine == PODMAN else ["docker", "run"]),
            "--rm",
            "--network",
            "none",
            "--cap-drop",
            "ALL",
            "--user",
            "65534:65534",
            "-v",
            "/bin/busybox:/x/busybox:ro",
            BASE_IMAGE,
            "/x/busybox",
            "adjtimex",
        ],
        capture_output=True,
        check=False,
    )
    assert engine_only.returncode == 0, engine_only.stderr
    probe = (
        "/.clawpen/busybox adjtimex >/dev/null 2>&1 && echo adjtimex-allowed || echo adjtimex-denied; "
        "exec sleep 300"
    )
    daemon.write(f"""
        [bots.sc]
        tier = "container"
        {engine.image}
        command = ["sh", "-c", "{probe}"]
    """)
    daemon.cli("up")
    row = daemon.wait_state("sc", "running")
    assert wait_for(lambda: "adjtimex-" in daemon.cli("logs", "sc").stdout, 10)
    assert "adjtimex-denied" in daemon.cli("logs", "sc").stdout
    (bot,) = _children(row["pid"])  # docker-init's one child: the bot (sleep, after the exec)

    def filters(pid: int) -> int:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(status.split("Seccomp_filters:")[1].split()[0])

    assert filters(row["pid"]) == 1 and filters(bot) == 2
    daemon.cli("down")
