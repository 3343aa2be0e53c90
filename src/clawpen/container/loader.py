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
import os
from pathlib import Path

from clawpen.errors import SandboxError
from clawpen.fsutil import write_all
from clawpen.staticbin import build_static

SOURCE = "seccomp_exec.c"
HINT = "apt-get install gcc libc6-dev (the container tier builds its static seccomp loader once)"


def loader(cache: Path) -> str:
    """The path of the built loader for this clawpen's source, building it when missing."""
    return build_static(
        "clawpen.container",
        SOURCE,
        "clawpen-seccomp-exec",
        cache,
        what="the container tier's seccomp loader",
        hint=HINT,
    )


def write_program(folder: Path, program: bytes) -> str:
    """Write the BPF ``program`` as ``folder/seccomp.bpf`` (read-only to all; not a secret)."""
    path = folder / "seccomp.bpf"
    try:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
        try:
            write_all(fd, program)
        finally:
            os.close(fd)
    except OSError as err:
        raise SandboxError(
            f"cannot write the seccomp program {path}: {err}", where="container: seccomp"
        ) from None
    return str(path)
