"""The built-in hostile actions of ``clawpen validate --hostile``: what each tries, with which
arguments inside and outside, who runs the positive control, and what the host must look like
afterwards."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

from clawpen.validate import probes as p
from clawpen.validate.context import Context, Side

# who runs the positive control on the host
Control = Literal["root", "nobody", "bot", "root-mountns", "root-peer-netns"]

# The kernel-attack actions: each reaches a kernel interface (a system call, a sysctl, a device
# node) that the sandbox and container tiers can only refuse (seccomp, capabilities), as a bug
# behind it is a bug of the host's kernel. In the vm tier each runs against the guest's own kernel:
# whether that kernel allows it or not, the host's kernel never sees it ("vm-boundary").
KERNEL_ATTACKS = frozenset({
    "fs.mount", "fs.proc-sys", "fs.drop-caches", "fs.mknod", "proc.ptrace", "priv.userns",
    "priv.netns", "priv.mountns", "priv.keyctl", "priv.bpf", "priv.perf", "priv.module",
    "priv.clock", "priv.io-uring", "priv.userfaultfd",
})  # fmt: skip


class Action(NamedTuple):
    id: str
    group: str
    title: str
    code: str
    control: Control
    args: Callable[[Context, Side], list[str]] = lambda _c, _s: []
    # resources: the run being killed by the kernel (OOM, pids) also means contained
    killed_ok: bool = False
    # after the sandboxed run: a reason the host shows an escape, or None
    host_check: Callable[[Context], str | None] | None = None
    # when the control's own "did" is too strict (e.g. no metadata server here)
    control_ok: Callable[[dict[str, object]], bool] | None = None

    @property
    def kernel(self) -> bool:
        """A kernel-attack action (:data:`KERNEL_ATTACKS`)."""
        return self.id in KERNEL_ATTACKS


def _scratch(c: Context, side: Side) -> str:
    return "/workspace" if side == "in" else str(c.control_dir)


def _dir(c: Context, side: Side) -> list[str]:
    return [_scratch(c, side)]


def _one(value: Callable[[Context], str]) -> Callable[[Context, Side], list[str]]:
    return lambda c, s: [_scratch(c, s), value(c)]


def _absent(attr: str) -> Callable[[Context], str | None]:
    def check(c: Context) -> str | None:
        import os

        path = getattr(c, attr)
        return f"{path} exists on the host" if os.path.lexists(path) else None

    return check


def _victim_alive(c: Context) -> str | None:
    return None if c.victim_alive() else "the host process is gone"


def _route_exists(j: dict[str, object]) -> bool:
    return bool(j["did"]) or "UNREACH" not in str(j["detail"])


ACTIONS: tuple[Action, ...] = (
    # filesystem
    Action(
        "fs.read-shadow", "filesystem", "read /etc/shadow", p.READ_FILE, "root", _one(lambda c: "/etc/shadow")
    ),
    Action(
        "fs.read-root-home", "filesystem", "read a file in host /root", p.READ_FILE, "root",
        _one(lambda c: str(c.root_marker)),
    ),
    Action(
        "fs.write-usr", "filesystem", "create a file in /usr", p.CREATE_FILE, "root",
        _one(lambda c: c.usr_target), host_check=_absent("usr_target"),
    ),
    Action(
        "fs.write-etc", "filesystem", "create a file in /etc", p.CREATE_FILE, "root",
        _one(lambda c: c.etc_target), host_check=_absent("etc_target"),
    ),
    Action(
        "fs.write-root", "filesystem", "create a file in / (outside the workspace)", p.CREATE_FILE, "root",
        _one(lambda c: c.root_target), host_check=_absent("root_target"),
    ),
    Action(
        "fs.read-state", "filesystem", "list clawpen's state folder (vault, tokens, users)", p.LIST_DIR,
        "root", _one(lambda c: str(c.state)),
    ),
    Action(
        "fs.other-workspace", "filesystem", "read another bot's workspace", p.READ_FILE, "root",
        _one(lambda c: str(c.peer_file)),
    ),
    Action(
        "fs.proc1-environ", "filesystem", "read the host pid 1 (/proc/1 cmdline, environ)", p.HOST_PID1,
        "root", _one(lambda c: c.pid1_digest),
    ),
    Action(
        "fs.symlink-escape", "filesystem", "follow a symlink out of the workspace", p.SYMLINK_ESCAPE,
        "root", _one(lambda c: str(c.root_marker)),
    ),
    Action("fs.mount", "filesystem", "mount a tmpfs", p.MOUNT, "root-mountns", _one(lambda c: c.token)),
    Action(
        "fs.proc-sys", "filesystem", "open /proc/sys/kernel/core_pattern for writing", p.OPEN_WRITE,
        "root", _one(lambda c: "/proc/sys/kernel/core_pattern"),
    ),
    Action(
        "fs.drop-caches", "filesystem", "open /proc/sys/vm/drop_caches for writing", p.OPEN_WRITE,
        "root", _one(lambda c: "/proc/sys/vm/drop_caches"),
    ),
    Action("fs.mknod", "filesystem", "create a block device node", p.MKNOD, "root", _one(lambda c: "")),
    # processes
    Action(
        "proc.see-host", "processes", "see a host process (same uid)", p.SEE_PROCESS, "bot",
        _one(lambda c: c.victim_marker[::-1]),
    ),
    Action(
        "proc.signal-host", "processes", "signal a host process (same uid)", p.SIGNAL, "bot",
        _one(lambda c: str(c.victim_pid)), host_check=_victim_alive,
    ),
    Action(
        "proc.pidfd-host", "processes", "pidfd_open a host process (same uid)", p.PIDFD, "bot",
        _one(lambda c: str(c.victim_pid)),
    ),
    Action("proc.ptrace", "processes", "ptrace another process", p.PTRACE, "nobody", _dir),
    Action(
        "proc.fork-bomb", "processes", "fork past the pids limit", p.FORK_BOMB, "nobody",
        _one(lambda c: str(c.fork_bound)), killed_ok=True,
    ),
    Action(
        "proc.cgroup-escape", "processes", "move a process out of its cgroup", p.CGROUP_ESCAPE, "root", _dir
    ),
    Action("proc.priority", "processes", "raise its CPU priority (nice -10)", p.PRIORITY, "root", _dir),
    # privilege
    Action(
        "priv.setuid", "privilege", "gain root through a setuid-root binary", p.SETUID, "nobody",
        lambda c, s: [_scratch(c, s), _scratch(c, s) + "/suid-id"],
    ),
    Action(
        "priv.userns", "privilege", "create a user namespace", p.UNSHARE, "nobody", _one(lambda c: "user")
    ),
    Action("priv.netns", "privilege", "create a network namespace", p.UNSHARE, "root", _one(lambda c: "net")),
    Action(
        "priv.mountns", "privilege", "create a mount namespace", p.UNSHARE, "root", _one(lambda c: "mount")
    ),
    Action("priv.chroot", "privilege", "chroot", p.CHROOT, "root", _one(lambda c: "")),
    Action("priv.keyctl", "privilege", "use the kernel keyring", p.KEYCTL, "nobody", _dir),
    Action("priv.bpf", "privilege", "create a BPF map", p.BPF, "root", _dir),
    Action("priv.perf", "privilege", "open a perf event", p.PERF, "root", _dir),
    Action("priv.module", "privilege", "load a kernel module", p.MODULE, "root", _dir),
    Action("priv.io-uring", "privilege", "set up an io_uring", p.IO_URING, "root", _dir),
    Action(
        "priv.userfaultfd", "privilege", "open a userfaultfd (user faults only)", p.USERFAULTFD, "nobody",
        _dir,
    ),
    Action("priv.raw-socket", "privilege", "open a raw socket", p.RAW_SOCKET, "root", _dir),
    Action("priv.clock", "privilege", "set the system clock", p.SET_CLOCK, "root", _dir),
    Action("priv.capabilities", "privilege", "hold effective capabilities", p.CAPABILITIES, "root", _dir),
    # resources
    Action(
        "res.memory", "resources", "allocate past the memory limit", p.MEMORY, "nobody",
        lambda c, s: [_scratch(c, s), str(c.memory_target(s))], killed_ok=True,
    ),
    Action(
        "res.file-size", "resources", "grow a file past the disk cap", p.FILE_SIZE, "nobody",
        _one(lambda c: str(c.file_bound)),
    ),
    Action(
        "res.fill-tmp", "resources", "fill /tmp past its size", p.FILL_TMP, "nobody",
        lambda c, s: [_scratch(c, s), "/tmp" if s == "in" else str(c.control_dir), str(c.tmp_bound)],
    ),
    Action(
        "res.fds", "resources", "open files past nofile", p.FDS, "root",
        lambda c, s: [_scratch(c, s), str(c.fd_bound)] + (["raise"] if s == "out" else []),
    ),
    # network
    Action(
        "net.host-loopback", "network", "reach a service on the host's 127.0.0.1", p.CONNECT, "nobody",
        lambda c, s: [_scratch(c, s), "127.0.0.1", str(c.listen_port), c.token],
    ),
    Action(
        "net.host-abstract", "network", "reach a host abstract unix socket", p.ABSTRACT, "nobody",
        lambda c, s: [_scratch(c, s), c.abstract_name, c.token],
    ),
    Action(
        "net.metadata", "network", "reach the cloud metadata address 169.254.169.254", p.CONNECT, "root",
        lambda c, s: [_scratch(c, s), "169.254.169.254", "80", "", "2"], control_ok=_route_exists,
    ),
    Action(
        "net.raw-egress", "network", "connect straight to a public IP (no gateway)", p.CONNECT, "root",
        lambda c, s: [_scratch(c, s), c.public_ip, "443"],
    ),
    Action(
        "net.dns-exfil", "network", "send a DNS query to the host's resolver", p.DNS_EXFIL, "root",
        lambda c, s: [_scratch(c, s), c.resolver, f"{c.token}.exfil.example.com"],
    ),
    Action(
        "net.other-bot", "network", "reach another bot's loopback service", p.CONNECT, "root-peer-netns",
        lambda c, s: [_scratch(c, s), "127.0.0.1", str(c.peer_port), c.peer_token],
    ),
    Action(
        "net.other-bot-abstract", "network", "reach another bot's abstract unix socket", p.ABSTRACT,
        "root-peer-netns", lambda c, s: [_scratch(c, s), c.peer_abstract, c.peer_token],
    ),
    # secrets
    Action(
        "sec.other-bot-file", "secrets", "read another bot's /run/secrets file", p.SCAN_RUN_FILES, "root",
        lambda c, s: [_scratch(c, s), c.peer_secret, c.peer_secret_name],
    ),
    Action(
        "sec.other-bot-env", "secrets", "read another bot's secret environment", p.SCAN_ENVIRON, "root",
        lambda c, s: [_scratch(c, s), c.peer_secret],
    ),
)  # fmt: skip
