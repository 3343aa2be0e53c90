"""Host fixtures of ``clawpen validate --hostile`` (:class:`Context`): a victim process of the
bot's uid, a loopback service, an abstract socket, a marker in /root, a second "peer" bot with
a secret and a loopback service; set up once per run and always removed by :meth:`Context.close`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Literal

from clawpen.errors import HostError
from clawpen.spec.policy import BotPolicy
from clawpen.validate import probes

MiB = 1 << 20
Side = Literal["in", "out"]  # inside the sandbox, or the positive control on the host
PY = "/usr/bin/python3"  # the host's python, which every sandbox sees through /usr
NOBODY = 65534
PEER_BOT = "clawpen-hpeer"
PEER_SECRET = "HOSTILE_PEER_TOKEN"  # noqa: S105 (a name, not a value)
PROBE_TIMEOUT = 60.0
VM_BOOT = 90.0  # what a guest's boot may add to a probe's run (TCG on a loaded 2-core host)
CONTROL_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def _listener(kind: str, address: Any, banner: bytes, stop: threading.Event) -> socket.socket:
    family = socket.AF_INET if kind == "tcp" else socket.AF_UNIX
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.bind(address)
    srv.listen(16)
    srv.settimeout(0.2)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except (TimeoutError, OSError):
                continue
            with contextlib.suppress(OSError):
                conn.sendall(banner)
            conn.close()

    threading.Thread(target=serve, daemon=True, name=f"hostile-{kind}").start()
    return srv


def _resolver() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver" and ":" not in parts[1]:
                return parts[1]
    return "1.1.1.1"


def _public_ip() -> str:
    with contextlib.suppress(OSError):
        return str(socket.getaddrinfo("registry.npmjs.org", 443, socket.AF_INET)[0][4][0])
    return "1.1.1.1"


class Context:
    """Host fixtures for one hostile run; :meth:`close` removes every one of them."""

    state: Path
    token: str
    control_dir: Path
    workspace: Path
    root_marker: Path
    usr_target: str
    etc_target: str
    root_target: str
    peer_file: Path
    peer_port: int
    peer_token: str
    peer_abstract: str
    peer_secret: str
    peer_secret_name: str
    abstract_name: str
    resolver: str
    public_ip: str
    fork_bound: int
    fd_bound: int
    file_bound: int
    tmp_bound: int
    pid1_digest: str
    victim_marker: str
    listen_port: int
    peer_pid: int

    def __init__(self, policy: BotPolicy, state: Path) -> None:
        from clawpen.sandbox.users import identity_for

        self.policy, self.state = policy, state
        self.ident = identity_for(policy.name, state)
        # the probes' python: the host's (every sandbox sees its /usr), or the image's in its PATH
        # (a container's, or a vm bot's rootfs = "image:PATH")
        image = policy.container is not None or (policy.vm is not None and policy.vm.image_root is not None)
        self.python = "python3" if image else PY
        # the throwaway sandboxes' instance name: never a live bot's ("_" is no bot-name character)
        self.cgroup_name = f"{policy.name}_hostile{os.getpid()}.0"
        self.token = f"clawpen-hostile-{secrets.token_hex(6)}"
        self.base = Path(tempfile.gettempdir()) / self.token  # created by open(), removed by close()
        self.workspace = self.base / "ws"
        self.control_dir = self.base / "control"
        self.root_marker = Path("/root") / f".{self.token}"
        self.usr_target = f"/usr/.{self.token}"
        self.etc_target = f"/etc/.{self.token}"
        self.root_target = f"/.{self.token}"
        self.peer_dir = self.base / "peer-ws"
        self.peer_file = self.peer_dir / "private.txt"
        self.peer_port = 20000 + secrets.randbelow(20000)
        self.peer_token = f"clawpen-peer-{secrets.token_hex(6)}"
        self.peer_abstract = f"clawpen-peer-{secrets.token_hex(6)}"
        self.peer_secret = f"peer-secret-{secrets.token_hex(12)}"
        self.peer_secret_name = PEER_SECRET
        self.abstract_name = f"{self.token}-sock"
        self.resolver, self.public_ip = _resolver(), _public_ip()
        self.fork_bound = (policy.pids or 2048) + 32
        self.fd_bound = policy.nofile + 16
        self.file_bound = (policy.disk or 64 << 30) + MiB
        self.tmp_bound = (policy.tmp if policy.disk is None else min(policy.tmp, policy.disk)) + 8 * MiB
        self.pid1_digest = hashlib.sha256(Path("/proc/1/cmdline").read_bytes()).hexdigest()
        # sleep's seconds: it outlives any run (a vm bot's boots one guest per action), close() ends it
        self.victim_marker = f"{100000 + secrets.randbelow(100000)}.{secrets.randbelow(10**9):09d}"
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._victim: subprocess.Popen[bytes] | None = None
        self._peer: Any = None
        self.peer_pid = 0
        self.listen_port = 0

    def memory_target(self, side: Side) -> int:
        # a vm bot without resources.memory: its bound is the guest's RAM (with it: a cgroup there)
        vm = self.policy.vm
        limit = self.policy.memory or (vm.memory if vm is not None else 1 << 30)
        target = limit + 64 * MiB
        return target if side == "in" else min(target, 256 * MiB)

    @property
    def victim_pid(self) -> int:
        return self._victim.pid if self._victim else 0

    def victim_alive(self) -> bool:
        return self._victim is not None and self._victim.poll() is None

    def open(self, tier: Any, sysprobe: str | None = None) -> None:
        """Set the fixtures up; the peer bot runs in ``tier``. ``sysprobe``: the built
        :mod:`clawpen.validate.sysprobe`, copied into the probes' scratch folders."""
        from clawpen.sandbox.namespace import prepare_workspace
        from clawpen.validate.sysprobe import install

        self.base.mkdir(mode=0o755)
        self.base.chmod(0o755)
        self.control_dir.mkdir(mode=0o1777)
        self.control_dir.chmod(0o1777)
        self.root_marker.write_text(f"{self.token}\n")
        self.root_marker.chmod(0o600)
        prepare_workspace(str(self.workspace), self.ident.uid, self.ident.gid)
        for folder in (self.workspace, self.control_dir):  # setuid-root copies of id(1)
            suid = folder / "suid-id"
            shutil.copy2("/usr/bin/id", suid)
            os.chown(suid, 0, 0)
            suid.chmod(0o4755)
            if sysprobe is not None:
                install(sysprobe, folder)
        tcp = _listener("tcp", ("127.0.0.1", 0), self.token.encode(), self._stop)
        self.listen_port = tcp.getsockname()[1]
        self._sockets += [tcp, _listener("unix", "\0" + self.abstract_name, self.token.encode(), self._stop)]
        ids = self.ident
        self._victim = subprocess.Popen(
            ["sleep", self.victim_marker], user=ids.uid, group=ids.gid, extra_groups=[], close_fds=True
        )
        self._start_peer(tier)

    def _start_peer(self, tier: Any) -> None:
        from clawpen.plan.build import HostFacts, build_plan
        from clawpen.sandbox.namespace import prepare_workspace
        from clawpen.sandbox.seccomp import default_policy
        from clawpen.sandbox.tier import Stdio
        from clawpen.sandbox.users import identity_for

        ident = identity_for(PEER_BOT, self.state)
        prepare_workspace(str(self.peer_dir), ident.uid, ident.gid)
        self.peer_file.write_text(self.peer_token)
        os.chown(self.peer_file, ident.uid, ident.gid)
        self.peer_file.chmod(0o600)
        policy = BotPolicy(
            name=PEER_BOT,
            command=(PY, "-c", probes.PEER_SERVER, self.peer_token, str(self.peer_port), self.peer_abstract),
            workspace=str(self.peer_dir),
            memory=64 * MiB,
            secrets=(PEER_SECRET,),
            secret_env=(PEER_SECRET,),
        )
        plan = build_plan(policy, ident, HostFacts.probe(), default_policy())
        r, w = os.pipe2(os.O_CLOEXEC)
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            self._peer = tier.start(
                plan,
                cgroup_name=f"{PEER_BOT}-{os.getpid()}",
                stdio=Stdio(null, w, null),
                secrets={PEER_SECRET: self.peer_secret.encode()},
            )
        finally:
            os.close(w)
            os.close(null)
        with os.fdopen(r, "rb") as ready:
            if b"ready" not in ready.readline():
                raise HostError("the peer bot of the hostile run did not start", where="validate --hostile")
        self.peer_pid = self._peer.sandbox_pid or 0

    def close(self) -> None:
        self._stop.set()
        for s in self._sockets:
            s.close()
        if self._victim is not None:
            self._victim.kill()
            self._victim.wait()
        if self._peer is not None:
            with contextlib.suppress(Exception):
                self._peer.teardown()
        self.root_marker.unlink(missing_ok=True)
        for target in (self.usr_target, self.etc_target, self.root_target):
            with contextlib.suppress(OSError):
                os.unlink(target)
        shutil.rmtree(self.base, ignore_errors=True)
