"""The guest kernel: Debian's linux-image-amd64, fetched once into clawpen's cache, or a
configured ``vmlinuz-RELEASE`` with its modules in ``/lib/modules/RELEASE``.

The whole package is 70 MB with thousands of modules; the guest needs the kernel image and the
dozen modules of :data:`clawpen.vm.initrd.MODULES` (and their dependencies), so only those are
kept (about 14 MB).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import NamedTuple

from clawpen.errors import HostError

PACKAGE = "linux-image-amd64"
# The modules' file names the guest loads, with what they depend on in Debian's 6.x kernels.
KEEP = frozenset(
    {
        "virtio", "virtio_ring", "virtio_mmio", "9pnet", "9pnet_virtio", "9p", "netfs", "fscache",
        "virtio_console", "failover", "net_failover", "virtio_net", "button", "evdev",
    }
)  # fmt: skip
HINT = (
    "clawpen fetches Debian's linux-image-amd64 with apt-get download (a Debian or Ubuntu host "
    "with its package mirror reachable), or set vm.kernel to a vmlinuz-RELEASE whose modules are "
    "in /lib/modules/RELEASE"
)


class GuestKernel(NamedTuple):
    """A kernel image and the folder its modules are found under."""

    image: Path
    modules: Path
    release: str


def configured(path: str) -> GuestKernel:
    """The kernel at ``PATH`` (``vm.kernel``, or one fetched into the cache): its modules from the
    ``lib/modules/RELEASE`` of the package tree it sits in, else /lib/modules/RELEASE."""
    from clawpen.spec.vm import modules_dir

    image = Path(path)
    release = image.name.removeprefix("vmlinuz-")
    found = modules_dir(path)
    return GuestKernel(image, Path(found or f"/lib/modules/{release}") / "kernel", release)


def cached(cache: Path) -> GuestKernel | None:
    """The kernel fetched earlier, if any (the newest release when there are several)."""
    folder = cache / "vm-kernel"
    found = sorted(folder.glob("*/boot/vmlinuz-*")) if folder.is_dir() else []
    if not found:
        return None
    return configured(str(found[-1]))  # an unpacked package tree: its own lib/modules


def resolve(setting: str, cache: Path, *, fetch: bool = True) -> GuestKernel:
    """The kernel ``vm.kernel`` names (``auto``: the cached one, fetched when missing)."""
    if setting != "auto":
        return configured(setting)
    found = cached(cache)
    if found is not None:
        return found
    if not fetch:
        raise HostError("no guest kernel yet: the first VM bot fetches Debian's", hint=HINT)
    cache.mkdir(mode=0o755, parents=True, exist_ok=True)
    with open(cache / ".vm-kernel.lock", "w") as lock:  # two VM bots starting at once fetch once
        fcntl.flock(lock, fcntl.LOCK_EX)
        return cached(cache) or fetch_debian(cache)


def _run(argv: list[str], cwd: str, what: str) -> None:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HostError(f"cannot fetch the guest kernel: {what}: {e}", hint=HINT) from None
    if done.returncode != 0:
        raise HostError(f"cannot fetch the guest kernel: {what}: {done.stderr.strip()[-300:]}", hint=HINT)


def _image_package(folder: str) -> Path:
    """Download linux-image-amd64 and the versioned package it depends on; the latter's path."""
    _run(["apt-get", "download", "-q", PACKAGE], folder, "apt-get download")
    meta = next(Path(folder).glob(f"{PACKAGE}_*.deb"))
    shown = subprocess.run(
        ["dpkg-deb", "-f", str(meta), "Depends"], capture_output=True, text=True, check=False
    ).stdout
    versioned = next(
        (d.strip().split()[0] for d in shown.split(",") if d.strip().startswith("linux-image-")), ""
    )
    if not versioned:
        raise HostError(f"cannot fetch the guest kernel: {PACKAGE} names no kernel package", hint=HINT)
    _run(["apt-get", "download", "-q", versioned], folder, "apt-get download")
    return next(Path(folder).glob(f"{versioned}_*.deb"))


def fetch_debian(cache: Path) -> GuestKernel:
    """Download Debian's kernel package and keep its image and the guest's modules."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise HostError("cannot fetch the guest kernel: apt-get and dpkg-deb are missing", hint=HINT)
    target = cache / "vm-kernel"
    target.mkdir(mode=0o755, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        os.chmod(tmp, 0o755)  # noqa: S103 - apt's download user (_apt) writes here
        deb = _image_package(tmp)
        tree = Path(tmp) / "tree"
        tree.mkdir()
        _extract(deb, tree)
        images = list(tree.glob("boot/vmlinuz-*"))
        if not images:
            raise HostError(f"cannot fetch the guest kernel: no vmlinuz in {deb.name}", hint=HINT)
        release = images[0].name.removeprefix("vmlinuz-")
        final = target / release
        if not final.exists():
            os.replace(tree, final)
    found = cached(cache)
    assert found is not None
    return found


def _extract(deb: Path, tree: Path) -> None:
    """The kernel image and the :data:`KEEP` modules of ``deb`` (its data tar, through dpkg-deb)."""
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name.lstrip("./")
                base = os.path.basename(name)
                keep = name.startswith("boot/vmlinuz-") or (
                    name.startswith("lib/modules/")
                    and base.endswith(".ko")
                    and base[:-3].replace("-", "_") in KEEP
                )
                if keep and member.isfile():
                    tar.extract(member, tree, filter="data")
        if proc.wait() != 0:
            raise HostError(f"cannot fetch the guest kernel: dpkg-deb could not read {deb.name}", hint=HINT)
