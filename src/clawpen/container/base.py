"""The slim base image, built from Debian's packages: no registry involved.

``debootstrap --variant=minbase`` with ``python3`` and ``ca-certificates`` into a folder
under /var/tmp (Debian's mirror, or ``CLAWPEN_DEBIAN_MIRROR``), trimmed (apt's caches and lists,
documentation but the copyright files, man pages), then streamed as a tar to the engine's import
(``docker import``), with ``LANG`` set and the label ``clawpen.image=base``. Needs root
(debootstrap), the debootstrap package and a reachable Debian mirror.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from clawpen.container.image import BASE_TAG, LABEL
from clawpen.errors import HostError, SandboxError

if TYPE_CHECKING:
    import docker

SUITE = "bookworm"
PACKAGES = ("python3", "ca-certificates")  # python3: the whole standard library (ssl, http, ctypes)
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# trimmed after debootstrap: caches and documentation nobody reads in a bot's container
TRIM = ("var/cache/apt", "var/lib/apt/lists", "usr/share/man", "usr/share/info", "usr/share/locale")


def mirror() -> str:
    return os.environ.get("CLAWPEN_DEBIAN_MIRROR", DEFAULT_MIRROR)


def debootstrap_argv(root: Path, *, suite: str = SUITE, mirror_url: str | None = None) -> list[str]:
    """The debootstrap command line for the base's root filesystem at ``root``."""
    return [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        suite,
        str(root),
        mirror_url or mirror(),
    ]


def import_changes() -> list[str]:
    """Dockerfile instructions the import applies (``docker import --change``)."""
    return ["ENV LANG=C.UTF-8", f"LABEL {LABEL}=base", 'CMD ["/usr/bin/python3"]']


def trim(root: Path) -> None:
    """Remove caches and documentation from the root filesystem (keeps licences)."""
    for rel in TRIM:
        target = root / rel
        if target.is_dir():
            for child in target.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    doc = root / "usr/share/doc"
    if doc.is_dir():
        for path in sorted(doc.rglob("*"), reverse=True):
            if path.is_dir() and not path.is_symlink():
                if not any(path.iterdir()):
                    path.rmdir()
            elif path.name != "copyright":
                path.unlink()


def _tar_stream(root: Path, chunk: int = 1 << 20) -> Iterator[bytes]:
    """``root`` as an uncompressed tar (numeric owners, as ``tar -C root -c .``), in chunks,
    written by a thread into a pipe so the whole file system is never in memory."""
    read_fd, write_fd = os.pipe()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with (
                os.fdopen(write_fd, "wb") as out,
                tarfile.open(fileobj=out, mode="w|", format=tarfile.GNU_FORMAT) as tar,
            ):
                for entry in sorted(root.iterdir()):
                    tar.add(str(entry), arcname=entry.name, recursive=True)
        except BaseException as err:  # reported by the reader
            errors.append(err)

    writer = threading.Thread(target=write, name="clawpen-base-tar", daemon=True)
    writer.start()
    with os.fdopen(read_fd, "rb") as src:
        while data := src.read(chunk):
            yield data
    writer.join()
    if errors:
        raise SandboxError(f"packing the base image failed: {errors[0]}", where="base image: tar")


def build_base(
    api: docker.DockerClient,
    tag: str = BASE_TAG,
    *,
    mirror_url: str | None = None,
    on_line: Callable[[str], None] = lambda _line: None,
    workdir: str = "/var/tmp",
) -> str:
    """Build ``tag`` (Debian minbase + python3) from Debian's packages; the image id."""
    if os.geteuid() != 0:
        raise HostError(
            "building the base image needs root (debootstrap)",
            where="image build --base",
            hint="run it with sudo",
        )
    if shutil.which("debootstrap") is None:
        raise HostError(
            "debootstrap is not installed", where="image build --base", hint="apt-get install debootstrap"
        )
    tmp = Path(tempfile.mkdtemp(prefix="clawpen-base-", dir=workdir))
    try:
        root = tmp / "rootfs"
        argv = debootstrap_argv(root, mirror_url=mirror_url)
        on_line(f"$ {' '.join(argv)}")
        try:
            _run_logged(argv, on_line)
        finally:  # a debootstrap that died may leave /proc or /sys mounted in the root
            unmount_under(root)
        trim(root)
        on_line(f"importing {root} as {tag}")
        repository, _, version = tag.rpartition(":")
        if not repository or "/" in version:
            repository, version = tag, "latest"
        api.api.import_image(
            src=_tar_stream(root),
            repository=repository,
            tag=version,
            changes=import_changes(),
            stream_src=True,
        )
    finally:
        if not _mounted(tmp):  # never remove a tree that still holds a mount
            shutil.rmtree(tmp, ignore_errors=True)
    return str(api.images.get(tag).id)


def mounts_under(root: Path, mounts_text: str) -> list[str]:
    """Mount points at or below ``root`` in a /proc/self/mounts text, deepest first."""
    prefix = str(root).rstrip("/") + "/"
    found = []
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) > 1:
            point = fields[1].replace("\\040", " ")
            if point == str(root) or point.startswith(prefix):
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def _mounted(root: Path) -> bool:
    try:
        return bool(mounts_under(root, Path("/proc/self/mounts").read_text()))
    except OSError:
        return True  # cannot tell: keep the folder


def unmount_under(root: Path) -> None:
    """Unmount (lazily) whatever is mounted below ``root``, so removing it never reaches the
    host's /proc, /sys or /dev."""
    for _round in range(16):  # mounts stacked on one point go one per round
        try:
            points = mounts_under(root, Path("/proc/self/mounts").read_text())
        except OSError:
            return
        if not points:
            return
        for point in points:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    if _mounted(root):
        raise SandboxError(
            f"cannot unmount what debootstrap left mounted under {root}",
            where="image build --base: cleanup",
            hint=f"unmount it by hand (grep {root} /proc/self/mounts), then remove the folder",
        )


def _run_logged(argv: list[str], on_line: Callable[[str], None]) -> None:
    """Run ``argv``, passing its output lines to ``on_line``; SandboxError with the last lines
    when it fails."""
    last: list[str] = []
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    out: IO[bytes] | None = proc.stdout
    assert out is not None
    for raw in out:
        line = raw.decode(errors="replace").rstrip()
        last = [*last[-9:], line]
        on_line(line)
    if proc.wait() != 0:
        raise SandboxError(
            f"{argv[0]} exited with {proc.returncode}: {' | '.join(last[-3:])}",
            where="image build --base: debootstrap",
            hint=f"check that the Debian mirror answers ({argv[-1]}); CLAWPEN_DEBIAN_MIRROR picks another",
        )
