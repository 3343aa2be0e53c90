"""A prepared Debian root for the host audit and ``host harden`` tests.

:func:`prepared_root` builds, once per machine, a Debian bookworm root with debootstrap
(``--variant=minbase`` with openssh-server, sudo, passwd, lynis, ca-certificates,
unattended-upgrades, iproute2 and procps) into /var/cache/clawpen-test/hostroot-v1: built in a
temporary folder beside it and renamed when complete, under a lock file so two pytest processes
never build it at once. Each test gets a copy (:func:`weak_root`: ``cp -a --reflink=auto``) with
weak settings written in (password and root login over SSH, a root password, unattended upgrades
on). :func:`run_in_root` runs a command inside a root with bubblewrap (as root, its own PID,
network, IPC and UTS namespaces), :func:`lynis_index` runs Lynis there (with the root's sshd
started in the sandbox, as on a host) and returns its hardening index. Nothing here touches
this machine's own /etc.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from clawpen.container.base import mirror, unmount_under
from clawpen.harden.apply import bwrap_root_argv

CACHE = Path(os.environ.get("CLAWPEN_TEST_HOSTROOT_CACHE", "/var/cache/clawpen-test"))
VERSION = "hostroot-v1"
SUITE = "bookworm"
PACKAGES = (
    "openssh-server",
    "sudo",
    "passwd",
    "lynis",
    "ca-certificates",
    "unattended-upgrades",
    "iproute2",
    "procps",
)
# a SHA-512 crypt hash of "weak-root-password" (what an installer leaves when root gets a password)
ROOT_HASH = (
    "$6$clawpentest$oEpTm4Db6Fe7FkJoYaQe84wQEdMZ4llAO8Hvk3hVfIo35Fcnpleb7Z1m44alRpQLEdUWUtjwSsRtwxSkk/hHO."
)
WEAK_SSHD = "\n# weak settings of the test root\nPasswordAuthentication yes\nPermitRootLogin yes\n"
WEAK_AUTO_UPGRADES = 'APT::Periodic::Update-Package-Lists "1";\nAPT::Periodic::Unattended-Upgrade "1";\n'
BUILD_TIMEOUT = 1800


def missing() -> str | None:
    """Why the prepared root cannot be built here, or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, bubblewrap as root)"
    for tool in ("debootstrap", "bwrap", "cp"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install debootstrap bubblewrap)"
    return None


def debootstrap_argv(root: Path, mirror_url: str | None = None) -> list[str]:
    return [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        SUITE,
        str(root),
        mirror_url or mirror(),
    ]


def prepared_root() -> Path:
    """The machine's prepared Debian root (read-only use: tests work on copies), built once."""
    done = CACHE / VERSION
    if (done / "etc/ssh/sshd_config").is_file():
        return done
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it: wait for it
        if (done / "etc/ssh/sshd_config").is_file():
            return done
        tmp = Path(tempfile.mkdtemp(prefix=f".{VERSION}-", dir=CACHE))
        try:
            rootfs = tmp / "rootfs"
            try:
                built = subprocess.run(
                    debootstrap_argv(rootfs),
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=BUILD_TIMEOUT,
                    stdin=subprocess.DEVNULL,
                )
            finally:
                unmount_under(rootfs)
            if built.returncode != 0:
                tail = (built.stdout + built.stderr).strip().splitlines()[-5:]
                raise RuntimeError(f"debootstrap failed ({built.returncode}): {' | '.join(tail)}")
            for rel in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for child in (rootfs / rel).glob("*"):
                    if child.is_file():
                        child.unlink()
            (rootfs / "run/sshd").mkdir(parents=True, exist_ok=True)
            if done.exists():  # a half-built folder of an interrupted older run
                shutil.rmtree(done)
            rootfs.rename(done)
        finally:
            if not _mounted_under(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
    return done


def _mounted_under(path: Path) -> bool:
    from clawpen.container.base import mounts_under

    try:
        return bool(mounts_under(path, Path("/proc/self/mounts").read_text()))
    except OSError:
        return True


def copy_root(dest: Path) -> Path:
    """A copy of the prepared root at ``dest`` (which must not exist), as it was built."""
    subprocess.run(["cp", "-a", "--reflink=auto", str(prepared_root()), str(dest)], check=True)
    return dest


def weaken(root: Path) -> None:
    """Write the weak settings a harden run should fix into ``root``."""
    sshd = root / "etc/ssh/sshd_config"
    sshd.write_text(sshd.read_text() + WEAK_SSHD)
    shadow = root / "etc/shadow"
    lines = shadow.read_text().splitlines()
    lines = [
        f"root:{ROOT_HASH}:" + ":".join(line.split(":")[2:]) if line.startswith("root:") else line
        for line in lines
    ]
    shadow.write_text("\n".join(lines) + "\n")
    (root / "etc/apt/apt.conf.d/20auto-upgrades").write_text(WEAK_AUTO_UPGRADES)
    (root / "run/sshd").mkdir(parents=True, exist_ok=True)


def weak_root(dest: Path) -> Path:
    """A copy of the prepared root at ``dest`` with the weak settings written in."""
    copy_root(dest)
    weaken(dest)
    return dest


def bwrap_argv(root: Path, argv: list[str]) -> list[str]:
    """``argv`` run inside ``root`` as ``host harden`` runs its checks there."""
    return bwrap_root_argv(root, argv)


def run_in_root(root: Path, argv: list[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``argv`` run inside ``root`` (bubblewrap, as root), its output captured; never raises on
    a non-zero exit."""
    return subprocess.run(
        bwrap_argv(root, argv),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def lynis_index(root: Path) -> int:
    """Lynis's hardening index of ``root`` (``lynis audit system --quick``, its report file read)."""
    report = root / "var/tmp/clawpen-lynis-report.dat"
    with contextlib.suppress(FileNotFoundError):
        report.unlink()
    lynis = "lynis audit system --quick --no-colors --no-log --report-file /var/tmp/clawpen-lynis-report.dat"
    # sshd runs as on a host (in the sandbox's own network namespace): Lynis audits the SSH
    # settings (SSH-7408) only of a running sshd; it ends with the sandbox
    done = run_in_root(root, ["sh", "-c", f"/usr/sbin/sshd; {lynis} >/dev/null"], timeout=600)
    try:
        text = report.read_text()
    except FileNotFoundError:
        raise RuntimeError(
            f"lynis wrote no report ({done.returncode}): {done.stderr.strip()[-500:]}"
        ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            report.unlink()
    for line in text.splitlines():
        if line.startswith("hardening_index="):
            return int(line.partition("=")[2].strip())
    raise RuntimeError("lynis's report has no hardening_index line")


if __name__ == "__main__":  # build it ahead: python -m tests.integration.hostroot
    print(prepared_root())
