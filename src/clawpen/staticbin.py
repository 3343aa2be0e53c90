"""Small static helper programs clawpen ships as C source and builds once with the host's gcc.

A program that must run inside any image (the container tier's seccomp loader, validate's
syscall probe) cannot rely on the image's libc, so it is linked static. It is compiled the first
time it is needed into clawpen's cache, named by the source's hash: a new clawpen builds its own,
a running bot keeps its copy, and concurrent builds meet at an atomic rename.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from clawpen.errors import HostError


def build_static(package: str, source: str, name: str, cache: Path, *, what: str, hint: str) -> str:
    """The path of ``name`` built from ``package``'s ``source`` (C), building it when missing;
    HostError (saying ``what`` it is for, with ``hint``) without gcc or when the build fails."""
    text = resources.files(package).joinpath(source).read_bytes()
    path = cache / f"{name}-{hashlib.sha256(text).hexdigest()[:12]}"
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    gcc = shutil.which("gcc")
    if gcc is None:
        raise HostError(f"gcc is missing: it builds {what}", hint=hint)
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        src = Path(tmp) / source
        src.write_bytes(text)
        out = Path(tmp) / name
        done = subprocess.run(
            [gcc, "-static", "-Os", "-s", "-o", str(out), str(src)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if done.returncode != 0:
            raise HostError(f"cannot build {what}: {done.stderr.strip()[-400:]}", hint=hint)
        os.chmod(out, 0o755)  # noqa: S103 - run by bots' uids, through read-only binds or root-owned copies
        os.replace(out, path)  # atomic: a concurrent build sees no file or a whole one
    return str(path)
