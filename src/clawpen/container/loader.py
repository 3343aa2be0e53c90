"""clawpen's seccomp filter inside containers: a small static loader, built once per source.

The engine gives a container its own default filter; clawpen's deny list (the sandbox tier's,
:mod:`clawpen.sandbox.seccomp`) goes on top of it, the two stacked by the kernel, so a call must
pass both. The gate runs ``/.clawpen/seccomp-exec /.clawpen/seccomp.bpf COMMAND...``: the loader
(``seccomp_exec.c``, shipped with clawpen) loads the BPF program compiled on the host, sets the
secret environment variables from the container's /run/secrets files, and execs the command. It
is compiled static with the host's gcc the first time a container bot starts, into clawpen's
cache, named by the source's hash (a new clawpen builds its own; a running bot keeps its copy).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from clawpen.errors import HostError, SandboxError

SOURCE = "seccomp_exec.c"
HINT = "apt-get install gcc libc6-dev (the container tier builds its static seccomp loader once)"


def loader(cache: Path) -> str:
    """The path of the built loader for this clawpen's source, building it when missing."""
    source = resources.files("clawpen.container").joinpath(SOURCE).read_bytes()
    path = cache / f"clawpen-seccomp-exec-{hashlib.sha256(source).hexdigest()[:12]}"
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    gcc = shutil.which("gcc")
    if gcc is None:
        raise HostError("gcc is missing: it builds the container tier's seccomp loader", hint=HINT)
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        src = Path(tmp) / SOURCE
        src.write_bytes(source)
        out = Path(tmp) / "loader"
        done = subprocess.run(
            [gcc, "-static", "-Os", "-s", "-o", str(out), str(src)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if done.returncode != 0:
            raise HostError(
                f"cannot build the container tier's seccomp loader: {done.stderr.strip()[-400:]}",
                hint=HINT,
            )
        os.chmod(out, 0o755)  # noqa: S103 - the bot uid runs it (read-only bind)
        os.replace(out, path)  # atomic: a concurrent start sees the old name missing or this file
    return str(path)


def write_program(folder: Path, program: bytes) -> str:
    """Write the BPF ``program`` as ``folder/seccomp.bpf`` (read-only to all; not a secret)."""
    path = folder / "seccomp.bpf"
    try:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
        try:
            view = memoryview(program)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    except OSError as err:
        raise SandboxError(
            f"cannot write the seccomp program {path}: {err}", where="container: seccomp"
        ) from None
    return str(path)
