"""Health checks and ``enter`` against REAL sandboxes started by ``clawpen run``.

The bot is started by the real CLI in the background; the test process builds the same plan
(same ``CLAWPEN_HOME`` and uid base, so the same uid), finds the sandbox's pid 1 in ``/proc``
and attaches to its cgroup (``clawpen/<bot>-<clawpen pid>``), which is exactly what the daemon
holds. Every claim has a positive control on the host, so that the test can fail:

* the bot's 127.0.0.1 is not the host's: a host server on the same port answers 418 to the
  host and never to the check, and the bot's port refuses connections from the host;
* ``unshare -U`` fails inside an entered shell but works on the host as uid 65534;
* the entered process has the bot's credentials, capabilities, seccomp state, namespaces and
  cgroup, read from the host's ``/proc`` next to the bot's own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import http.server
import os
import select
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import NOBODY, PY, Clawpen, host_run, of_uids, processes, wait_for

from clawpen.daemon.health import HealthResult, check_once
from clawpen.errors import SandboxError
from clawpen.plan.build import HostFacts, build_plan
from clawpen.plan.model import Plan
from clawpen.sandbox import cgroups, seccomp
from clawpen.sandbox import enter as enter_mod
from clawpen.sandbox.enter import enter, stop
from clawpen.sandbox.users import identity_for
from clawpen.spec.models import Health
from clawpen.spec.policy import policy_from_flags

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

SERVER = r"""
import http.server, socket, sys
port = int(sys.argv[1])
silent = socket.socket()
silent.bind(("127.0.0.1", port + 2))
silent.listen(8)  # completes connections, never answers
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response({"/ok": 200, "/bad": 503, "/moved": 302}.get(self.path, 404))
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", port), Handler)
print("ready", flush=True)
server.serve_forever()
"""
STATUS_FIELDS = [
    "Uid",
    "Gid",
    "Groups",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
    "Seccomp_filters",
]
NAMESPACES = ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup")


@dataclass
class Bot:
    proc: subprocess.Popen[str]
    plan: Plan
    cgroup: cgroups.Cgroup
    sandbox_pid: int
    bpf: bytes
    workspace: Path

    def check(self, **health: object) -> HealthResult:
        spec = Health.model_validate(health)
        return asyncio.run(
            check_once(spec, self.sandbox_pid, plan=self.plan, cgroup=self.cgroup, bpf=self.bpf)
        )

    def enter(self, *command: str, **kw: object) -> subprocess.Popen[bytes]:
        return enter(self.sandbox_pid, self.plan, self.cgroup, command, bpf=self.bpf, **kw)  # type: ignore[arg-type]

    def run(self, *command: str) -> tuple[int, str]:
        proc = self.enter(
            *command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        out, _ = proc.communicate(timeout=30)
        return proc.returncode, out.decode()


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def status_of_child(pid: int) -> dict[str, str]:
    """/proc status of the (only) child of ``pid``; {} when it has none."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return status(int(children[0])) if children else {}


def sandbox_pid_of(uid: int) -> int | None:
    """The host pid of the sandbox's pid 1: a process of the bot's uid that is pid 1 inside."""
    for p in of_uids([uid]):
        with contextlib.suppress(OSError):  # gone meanwhile
            if not p.zombie and status(p.pid).get("NSpid", "").split()[1:] == ["1"]:
                return p.pid
    return None


@pytest.fixture
def start_bot(clawpen: Clawpen, pub: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Bot]]:
    """``start_bot(name, *command)``: ``clawpen run`` in the background, plus what the daemon holds."""
    monkeypatch.setenv("CLAWPEN_UID_BASE", str(clawpen.uid_base))

    def start(name: str, *command: str) -> Bot:
        uid = clawpen.uid(name)  # allocated by the CLI; identity_for then reads the same registry
        workspace = pub / name
        env = ["PROBE_VAR=hello world"]
        proc = clawpen.popen("--name", name, "--workspace", str(workspace), "--env", *env, "--", *command)
        policy = policy_from_flags(command, base_dir="/", name=name, workspace=str(workspace), env=env)
        plan = build_plan(
            policy, identity_for(name, clawpen.home), HostFacts.probe(), seccomp.default_policy()
        )
        assert plan.identity.uid == uid
        pid = wait_for(lambda: sandbox_pid_of(uid), 10)
        assert isinstance(pid, int), f"no sandbox for {name}: {proc.poll()=}"
        cgroup = cgroups.detect().attach(f"{name}-{proc.pid}")
        bpf = seccomp.bpf_for(plan.seccomp, clawpen.home / "cache")
        return Bot(proc, plan, cgroup, pid, bpf, workspace)

    yield start


def read_ready(proc: subprocess.Popen[str], timeout: float = 10) -> None:
    assert proc.stdout is not None
    assert select.select([proc.stdout], [], [], timeout)[0], "the bot did not get ready"
    assert proc.stdout.readline().strip() == "ready"


@pytest.fixture
def host_teapot() -> Iterator[int]:
    """A host server on 127.0.0.1 answering 418 to everything; yields its port."""

    class Teapot(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(418)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Teapot)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def host_get(port: int, path: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return s.recv(64).split(b"\r\n")[0].decode()


def free_host_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------
# http and tcp checks


def test_http_check_talks_to_the_bot_inside_its_network_namespace(
    start_bot: Callable[..., Bot], host_teapot: int
) -> None:
    port = host_teapot  # the same port number on the host answers 418
    bot = start_bot("hweb", PY, "-c", SERVER, str(port))
    read_ready(bot.proc)
    url = f"http://127.0.0.1:{port}"
    ok = bot.check(http=f"{url}/ok")
    assert ok.ok and ok.detail == "HTTP 200" and ok.latency_s < 5, ok
    assert bot.check(http=f"{url}/moved")[:2] == (True, "HTTP 302")
    bad = bot.check(http=f"{url}/bad")
    assert not bad.ok and bad.detail == "HTTP 503"
    assert bot.check(http=f"http://localhost:{port}/ok").detail == "HTTP 200"  # the bot's /etc/hosts
    refused = bot.check(http=f"http://127.0.0.1:{port + 1}/ok")
    assert refused[:2] == (False, "connection refused")
    silent = bot.check(http=f"http://127.0.0.1:{port + 2}/ok", timeout="500ms")
    assert silent[:2] == (False, "timed out after 0.5s") and 0.4 < silent.latency_s < 3
    # positive control: from the host's namespace the same URL reaches the host's server
    assert host_get(port, "/ok").startswith("HTTP/1.0 418 ")
    assert os.readlink(f"/proc/{bot.sandbox_pid}/ns/net") != os.readlink("/proc/self/ns/net")


def test_tcp_check_connects_inside_and_the_host_cannot(start_bot: Callable[..., Bot]) -> None:
    port = free_host_port()
    bot = start_bot("htcp", PY, "-c", SERVER, str(port))
    read_ready(bot.proc)
    assert bot.check(tcp=f"127.0.0.1:{port}")[:2] == (True, "connected")
    assert bot.check(tcp=f"localhost:{port}")[:2] == (True, "connected")
    assert bot.check(tcp=f"127.0.0.1:{port + 1}")[:2] == (False, "connection refused")
    # positive control: the bot's listening port is not on the host's loopback
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_checks_of_a_gone_sandbox_are_unhealthy(start_bot: Callable[..., Bot], clawpen: Clawpen) -> None:
    bot = start_bot("hgone", "sleep", "300")
    assert bot.check(tcp="127.0.0.1:9")[:2] == (False, "connection refused")  # control: it is up
    clawpen.stop(bot.proc)
    result = bot.check(tcp="127.0.0.1:9")
    assert not result.ok and "gone" in result.detail, result
    assert not bot.check(cmd=["true"]).ok


# --------------------------------------------------------------------------------------------
# cmd checks


def test_cmd_check_runs_in_the_sandbox_and_sees_its_workspace(start_bot: Callable[..., Bot]) -> None:
    bot = start_bot("hcmd", "sleep", "300")
    probe = ["sh", "-c", "echo not ready >&2; test -f /workspace/ready"]
    assert bot.check(cmd=probe)[:2] == (False, "exit 1: not ready")
    (bot.workspace / "ready").touch()
    assert bot.check(cmd=probe)[:2] == (True, "exit 0")
    assert not (Path("/workspace") / "ready").exists()  # it was the sandbox's /workspace


def test_cmd_check_is_killed_on_timeout(start_bot: Callable[..., Bot]) -> None:
    bot = start_bot("hslow", "sleep", "300")
    result = bot.check(cmd=["sh", "-c", "sleep 271 & sleep 272"], timeout="500ms")
    assert result[:2] == (False, "timed out after 0.5s") and result.latency_s < 3
    left = [p for p in of_uids([bot.plan.identity.uid]) if any(a in ("271", "272") for a in p.argv)]
    assert not [p for p in left if not p.zombie], left
    assert [p for p in of_uids([bot.plan.identity.uid]) if p.comm == "sleep"]  # the bot lives
    # a timeout that strikes while the command is still being started leaves nothing either
    result = bot.check(cmd=["sleep", "273"], timeout="5ms")
    assert result[:2] == (False, "timed out after 0.005s")
    assert wait_for(lambda: not [p for p in of_uids([bot.plan.identity.uid]) if p.argv[-1:] == ["273"]], 5)


# --------------------------------------------------------------------------------------------
# enter


def test_entered_process_is_confined_like_the_bot(start_bot: Callable[..., Bot]) -> None:
    bot = start_bot("hexec", "sleep", "300")
    uid = bot.plan.identity.uid
    rc, out = bot.run("id", "-u")
    assert (rc, out.strip()) == (0, str(uid))
    rc, out = bot.run("env", "-0")
    env = dict(item.split("=", 1) for item in out.split("\0") if item)
    assert rc == 0 and env == {**dict(bot.plan.env), "PWD": "/workspace"}
    assert env["PROBE_VAR"] == "hello world"
    assert bot.run("pwd") == (0, "/workspace\n")
    rc, out = bot.run("cat", "/proc/self/status")
    inside = {k: v for k, _, v in (line.partition(":") for line in out.splitlines())}
    assert (inside["Seccomp"].strip(), inside["NoNewPrivs"].strip()) == ("2", "1")
    assert int(inside["CapEff"], 16) == int(inside["CapPrm"], 16) == int(inside["CapBnd"], 16) == 0
    bot_main = next(p.pid for p in of_uids([uid]) if p.comm == "sleep")
    bot_env = Path(f"/proc/{bot_main}/environ").read_bytes().decode()
    assert env == dict(item.split("=", 1) for item in bot_env.split("\0") if item)
    assert {k: inside[k].strip() for k in STATUS_FIELDS} == {k: status(bot_main)[k] for k in STATUS_FIELDS}
    assert bot.run("cat", "/proc/self/limits")[1] == Path(f"/proc/{bot_main}/limits").read_text()
    # in the bot's cgroup from its first instruction on (seen through the bot's cgroup namespace)
    assert bot.run("cat", "/proc/self/cgroup") == bot.run("cat", "/proc/1/cgroup")
    # namespaces are off limits inside; the positive control runs the same as uid 65534 on the host
    rc, out = bot.run("unshare", "-U", "true")
    assert rc != 0 and "Operation not permitted" in out
    assert host_run(["unshare", "-U", "true"], user=NOBODY).rc == 0
    rc, out = bot.run("mount", "-t", "tmpfs", "none", "/tmp")
    assert rc != 0 and "must be superuser" in out


def test_entered_process_is_in_the_bot_cgroup_and_pid_namespace(start_bot: Callable[..., Bot]) -> None:
    bot = start_bot("hpid", "sleep", "300")
    script = "echo $$; ps -eo pid,args; echo end; exec sleep 299"
    proc = bot.enter("sh", "-c", script, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        inner = int(proc.stdout.readline())
        lines = list(iter(proc.stdout.readline, b"end\n"))
        assert wait_for(lambda: status_of_child(proc.pid).get("Name") == "sleep", 5)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        host_pid = int(children[0])
        assert status(host_pid)["NSpid"].split() == [str(host_pid), str(inner)]
        assert host_pid != inner and bot.sandbox_pid != 1
        # it sees the bot's processes, with the sandbox's pid 1 as pid 1
        table = [line.decode().split(None, 1) for line in lines[1:]]
        assert any(pid == "1" and "bwrap" in args for pid, args in table), lines
        assert any(args.strip() == "sleep 300" for _, args in table), lines
        for ns in NAMESPACES:
            assert os.readlink(f"/proc/{host_pid}/ns/{ns}") == os.readlink(f"/proc/{bot.sandbox_pid}/ns/{ns}")
        assert os.readlink(f"/proc/{host_pid}/ns/net") != os.readlink("/proc/self/ns/net")
        own = Path(f"/proc/{host_pid}/cgroup").read_text()
        assert own == Path(f"/proc/{bot.sandbox_pid}/cgroup").read_text() and "clawpen/hpid-" in own
        assert {proc.pid, host_pid} <= set(bot.cgroup.pids())
    finally:
        stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()
    assert not [p for p in of_uids([bot.plan.identity.uid]) if p.argv == ["sleep", "299"] and not p.zombie]


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Make the test process a child subreaper for the test, as the daemon is."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    try:
        yield
    finally:
        libc.prctl(36, 0, 0, 0, 0)


def zombie_children(comm: str) -> list[int]:
    me = os.getpid()
    return [p.pid for p in processes() if p.ppid == me and p.zombie and p.comm == comm]


def test_stop_leaves_no_zombie_in_a_subreaper_caller(
    start_bot: Callable[..., Bot], subreaper: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # zombies an earlier test of this session left (a `sleep` it never waited for) are not ours
    before = set(zombie_children("sleep"))
    bot = start_bot("hreap", "sleep", "300")
    for _ in range(20):
        stop(bot.enter("sleep", "298"))
    assert not set(zombie_children("sleep")) - before
    # positive control: without reaping the helper's group, a command that outlives its killed
    # helper is re-parented to us and stays a zombie
    monkeypatch.setattr(enter_mod, "_reap_group", lambda pgid: None)
    for _ in range(200):
        stop(bot.enter("sleep", "297"))
        if wait_for(lambda: set(zombie_children("sleep")) - before, 0.05):
            break
    left = sorted(set(zombie_children("sleep")) - before)
    assert left, "the control never produced a re-parented zombie"
    for pid in left:
        os.waitpid(pid, 0)


def test_enter_reports_a_missing_command_and_a_gone_sandbox(
    start_bot: Callable[..., Bot], clawpen: Clawpen
) -> None:
    bot = start_bot("hmiss", "sleep", "300")
    with pytest.raises(SandboxError, match="command not found: no-such-command") as err:
        bot.enter("no-such-command")
    assert err.value.where == "exec"
    assert bot.run("true") == (0, "")  # control: the sandbox is up
    clawpen.stop(bot.proc)
    with pytest.raises(SandboxError, match="is gone"):
        bot.enter("true")
