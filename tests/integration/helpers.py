"""Helpers for the integration tests: run ``clawpen`` as a subprocess, run probes on the host,
and look at the host's process table (``/proc``) from the outside.

Every run gets its own ``CLAWPEN_HOME`` and the session gets its own uid range
(``CLAWPEN_UID_BASE``, still >= 1,900,000,000), so that "no process of the bot's uid is left"
means exactly that, even when other test sessions run clawpen on the same machine.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLAWPEN = str(Path(sys.executable).with_name("clawpen"))
PY = "/usr/bin/python3"  # Debian's python: the one the sandbox sees (the host /usr)
UID_FLOOR = 1_900_000_000
NOBODY = 65534


def session_uid_base() -> int:
    """A uid range of 65,536 ids above clawpen's default one, picked per test session.

    It stays below 2**31: bubblewrap 0.8 cannot map larger uids ("setting up uid map: Invalid
    argument").
    """
    base = UID_FLOOR + 65_536 * (1 + os.getpid() % 3000)
    assert base + 65_536 < 2**31
    return base


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str
    elapsed: float

    def __iter__(self) -> Iterator[object]:  # rc, out, err = result
        return iter((self.rc, self.out, self.err))

    def json(self) -> dict:  # the last line a probe printed
        lines = [line for line in self.out.splitlines() if line.startswith("{")]
        assert lines, f"no JSON line in the output (rc={self.rc})\nstdout: {self.out}\nstderr: {self.err}"
        return json.loads(lines[-1])


@dataclass
class Proc:
    pid: int
    ppid: int
    uid: int
    state: str
    comm: str
    argv: list[str]

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X")


def read_proc(pid: int) -> Proc | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    return Proc(
        pid=pid,
        ppid=int(fields["PPid"]),
        uid=int(fields["Uid"].split()[0]),
        state=fields["State"].split()[0],
        comm=fields["Name"].strip(),
        argv=[a.decode(errors="replace") for a in argv if a],
    )


def processes() -> list[Proc]:
    procs = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (p := read_proc(int(entry))) is not None:
            procs.append(p)
    return procs


def with_marker(marker: str, *, comm: str | None = None) -> list[Proc]:
    """Host processes with ``marker`` in their argv (and the given comm)."""
    return [
        p
        for p in processes()
        if any(marker in a for a in p.argv) and (comm is None or p.comm == comm) and p.pid != os.getpid()
    ]


def of_uids(uids: Iterable[int]) -> list[Proc]:
    wanted = set(uids)
    return [p for p in processes() if p.uid in wanted]


def alive(pid: int) -> bool:
    p = read_proc(pid)
    return p is not None and not p.zombie


def wait_for(pred: Callable[[], object], timeout: float, interval: float = 0.02) -> object:
    """Poll ``pred`` until it is truthy or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def kill_uids(uids: Iterable[int], timeout: float = 5.0) -> None:
    """SIGKILL every live process of these uids (this session's bot uids only) and wait."""
    uids = set(uids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = [p for p in of_uids(uids) if not p.zombie]
        if not live:
            return
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        time.sleep(0.05)


def host_run(
    argv: Sequence[str],
    *,
    user: int | None = None,
    timeout: float = 30,
    pass_fds: Sequence[int] = (),
    cwd: str = "/",
) -> Result:
    """Run a command directly on the host (the positive controls), as root or as ``user``."""
    kw: dict = {}
    if user is not None:
        kw = {"user": user, "group": user, "extra_groups": []}
    start = time.monotonic()
    proc = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        pass_fds=tuple(pass_fds),
        cwd=cwd,
        env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
        check=False,
        **kw,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


def host_py(script: str, *args: str, **kw: object) -> Result:
    return host_run([PY, "-c", script, *args], **kw)  # type: ignore[arg-type]


@dataclass
class Clawpen:
    """``clawpen`` with a private state directory; remembers what it started, for clean-up."""

    home: Path
    uid_base: int
    popens: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLAWPEN_")}
        env["CLAWPEN_HOME"] = str(self.home)
        env["CLAWPEN_UID_BASE"] = str(self.uid_base)
        return env

    @property
    def uids(self) -> range:
        return range(self.uid_base, self.uid_base + 64)

    def run(self, *args: str, timeout: float = 60, pass_fds: Sequence[int] = ()) -> Result:
        """``clawpen run ARGS`` -> Result(rc, stdout, stderr, elapsed)."""
        proc = self.popen(*args, pass_fds=pass_fds)
        start = time.monotonic()
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            raise
        return Result(proc.returncode, out, err, time.monotonic() - start)

    def popen(self, *args: str, pass_fds: Sequence[int] = ()) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [CLAWPEN, "run", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            cwd="/",
            pass_fds=tuple(pass_fds),
        )
        self.popens.append(proc)
        return proc

    def plan(self, *args: str) -> dict:
        proc = subprocess.run(
            [CLAWPEN, "plan", "--json", *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd="/",
            check=True,
            timeout=60,
        )
        return json.loads(proc.stdout)

    def uid(self, name: str = "run") -> int:
        """The host uid of bot ``name`` (allocated now if new; runs then use the same one)."""
        uid = int(self.plan("--name", name, "--", "true")["identity"]["uid"])
        assert uid >= UID_FLOOR
        return uid

    def stop(self, proc: subprocess.Popen[str]) -> None:
        """Clean-up of a run that went wrong: kill the bot's processes (which lets clawpen end
        and tear down its cgroup), then clawpen itself, and remove a cgroup it left behind."""
        if proc.poll() is None:
            kill_uids(self.uids, timeout=2)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                kill_uids(self.uids)
                remove_stale_cgroups(proc.pid)
        with contextlib.suppress(OSError, ValueError):
            proc.communicate(timeout=5)

    def cleanup(self) -> None:
        for proc in self.popens:
            self.stop(proc)
        kill_uids(self.uids)


def remove_stale_cgroups(clawpen_pid: int) -> None:
    """rmdir the cgroups (``clawpen/<bot>-<pid>``) of a clawpen process that was SIGKILLed."""
    root = Path("/sys/fs/cgroup")  # cgroup v2: clawpen/NAME at the root; v1: one per hierarchy
    for cg in [*root.glob(f"clawpen/*-{clawpen_pid}"), *root.glob(f"*/clawpen/*-{clawpen_pid}")]:
        with contextlib.suppress(OSError):
            cg.rmdir()


class DaemonCli:
    """`clawpen` commands against a private state directory; stops its daemon at the end."""

    def __init__(self, home: Path, spec_dir: Path, uid_base: int) -> None:
        self.home = home
        self.spec = spec_dir / "clawpen.toml"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CLAWPEN_")}
        self.env.update(CLAWPEN_HOME=str(home), CLAWPEN_UID_BASE=str(uid_base))
        self.argv_prefix: list[str] = []  # e.g. nsenter --net=... --: the CLI runs inside that

    def write(self, text: str) -> None:
        self.spec.write_text(textwrap.dedent(text))

    def cli(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 60,
        token: str | None = None,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``clawpen ARGS`` in the spec's folder; with ``token``, as that token (CLAWPEN_TOKEN)."""
        result = subprocess.run(
            [*self.argv_prefix, CLAWPEN, *args],
            capture_output=True,
            text=True,
            input=stdin,
            env={**self.env, "CLAWPEN_TOKEN": token} if token else self.env,
            timeout=timeout,
            cwd=self.spec.parent,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"clawpen {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}"
            )
        return result

    def json(self, *args: str) -> object:
        return json.loads(self.cli(*args, "--json").stdout)

    def ps(self) -> dict[str, dict]:
        return {r["bot"] if not r["replica"] else f"{r['bot']}[{r['replica']}]": r for r in self.json("ps")}

    def events(self, bot: str) -> list[dict]:
        out = self.cli("events", bot, "--json").stdout
        return [json.loads(line) for line in out.splitlines()]

    def pid(self) -> int | None:
        try:
            return int((self.home / "daemon.pid").read_text())
        except (OSError, ValueError):
            return None

    def wait_state(self, bot: str, state: str, timeout: float = 15) -> dict:
        found = wait_for(lambda: self.ps().get(bot, {}).get("state") == state, timeout, interval=0.1)
        assert found, f"{bot} never became {state}: {self.ps().get(bot)}"
        return self.ps()[bot]

    def shutdown(self) -> None:
        pid = self.pid()
        if not pid or not alive(pid):
            return  # no daemon: `clawpen down` would start one just to stop nothing
        with contextlib.suppress(Exception):
            self.cli("down", check=False, timeout=30)
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not alive(pid), 20)


def daemons_of(home: Path) -> list[int]:
    """Pids of `clawpen daemon` processes serving the state directory ``home``."""
    found = []
    for proc in processes():
        if "daemon" not in proc.argv or not any("clawpen" in a for a in proc.argv):
            continue
        try:
            env = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"CLAWPEN_HOME={home}".encode() in env:
            found.append(proc.pid)
    return found


class NetnsDaemon(DaemonCli):
    """A DaemonCli whose daemon runs inside the test's network namespace ``ns`` (one the test
    made with `ip netns add`), which plays the host: nothing the daemon binds or creates touches
    the machine's own namespace. With ``cli_in_ns`` the ``clawpen`` commands run in ``ns`` too
    (a simulated host of cluster_env: a command that starts a daemon starts it there)."""

    def __init__(
        self, home: Path, spec_dir: Path, ns: str, uid_base: int, *, cli_in_ns: bool = False
    ) -> None:
        super().__init__(home, spec_dir, uid_base)
        self.ns = ns
        self.proc: subprocess.Popen[bytes] | None = None
        if cli_in_ns:
            self.argv_prefix = ["nsenter", f"--net=/run/netns/{ns}", "--"]

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home.parent / "daemon.err", "ab") as err:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.ns}", "--", CLAWPEN, "daemon"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        # wait for the socket (a CLI call now would start a daemon of its own outside the namespace)
        sock = self.home / "clawpen.sock"
        proc = self.proc
        assert wait_for(lambda: sock.exists() or proc.poll() is not None, 20, interval=0.05)
        assert proc.poll() is None, (self.home.parent / "daemon.err").read_text()

    def shutdown(self) -> None:
        super().shutdown()
        if self.proc is not None:
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Sink:
    """A webhook receiver on loopback; answers 500 to the first ``fail`` requests."""

    def __init__(self, fail: int = 0) -> None:
        self.got: list[dict[str, Any]] = []
        self.fail = fail
        self.hits = 0
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.hits += 1
                if sink.fail > 0:
                    sink.fail -= 1
                    self.send_response(500)
                else:
                    sink.got.append(json.loads(body))
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/hook"

    def titles(self) -> list[str]:
        return [str(m.get("title")) for m in self.got]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def peer_recorder(sock: Any) -> Iterator[tuple[int, list[str]]]:
    """Serve on the bound socket ``sock`` (listening here): answer ``host`` to each connection and
    record its peer's address; yields (port, peers) and closes the socket after."""
    sock.listen(16)
    peers: list[str] = []

    def serve() -> None:
        while True:
            try:
                conn, peer = sock.accept()
            except OSError:
                return
            peers.append(peer[0])
            conn.sendall(b"host\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield sock.getsockname()[1], peers
    finally:
        sock.close()


def run_hostile(
    home: Path, cwd: Path, uid_base: int, *args: str, timeout: float = 280
) -> subprocess.CompletedProcess[str]:
    """``clawpen validate --hostile ARGS`` on state ``home`` from ``cwd`` (its spec folder)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAWPEN_")}
    env.update(CLAWPEN_HOME=str(home), CLAWPEN_UID_BASE=str(uid_base))
    return subprocess.run(
        [CLAWPEN, "validate", "--hostile", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def socket_in_ns(name: str) -> socket.socket:
    """A TCP socket of the network namespace /run/netns/NAME (the test's own)."""
    from clawpen.netns import socket_in

    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return socket_in(fd)
    finally:
        os.close(fd)


def kill_fences(home: Path) -> list[int]:
    """SIGKILL the failover fences (clawpen.ha.fence) of state directory ``home``; their pids."""
    sock = str(home / "run" / "ha-fence.sock")
    found = [p.pid for p in processes() if "clawpen.ha.fence" in p.argv and sock in p.argv]
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return found
