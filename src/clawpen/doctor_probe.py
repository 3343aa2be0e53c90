"""The host as ``clawpen doctor`` sees it (:class:`Probe`): every read, command and question
the checks of :mod:`clawpen.doctor` ask goes through here, so tests can fake the host."""

from __future__ import annotations

import ctypes
import importlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import psutil

from clawpen.container.report import EngineReport
from clawpen.errors import ClawpenError
from clawpen.finding import Finding

RUNTIME_PATH = "/usr/bin:/bin"  # the PATH clawpen starts bwrap with


class Probe:
    """The host as the checks see it, backed by the OS; tests subclass it and override methods."""

    def read_text(self, path: str) -> str | None:
        """The file's text, or ``None`` when it is missing or unreadable."""
        try:
            return Path(path).read_text(errors="replace")
        except OSError:
            return None

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except OSError:
            return []

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def which(self, name: str) -> str | None:
        return shutil.which(name)

    def euid(self) -> int:
        return os.geteuid()

    def run(self, argv: Sequence[str], as_uid: int | None = None, timeout: float = 10.0) -> tuple[int, str]:
        """Run ``argv`` as uid/gid ``as_uid`` with no supplementary groups (as clawpen starts bwrap)
        and ``PATH=/usr/bin:/bin``; return the exit status and stdout+stderr."""
        try:
            proc = subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env={"PATH": RUNTIME_PATH},
                cwd="/",
                timeout=timeout,
                check=False,
                user=as_uid,
                group=as_uid,
                extra_groups=None if as_uid is None else [],
            )
        except subprocess.TimeoutExpired:
            return 124, f"timed out after {timeout:g} s"
        except OSError as exc:
            return 127, exc.strerror or str(exc)
        return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace").strip()

    def mkdir_rmdir(self, path: str) -> str | None:
        """Create and remove directory ``path``: ``None`` on success, else why it failed."""
        try:
            os.mkdir(path, 0o755)
        except OSError as exc:
            return exc.strerror or str(exc)
        try:
            os.rmdir(path)
        except OSError as exc:
            return f"created but cannot remove {path}: {exc.strerror}"
        return None

    def disk_usage(self, path: str) -> tuple[int, int]:
        """Size and space available to unprivileged users, in bytes."""
        st = os.statvfs(path)
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize

    def cpu_count(self) -> int:
        return len(os.sched_getaffinity(0)) or os.cpu_count() or 1

    def cpu_percent(self) -> float:
        return float(psutil.cpu_percent(interval=0.2))

    def libseccomp_version(self) -> str:
        """The version of libseccomp.so.2; raises OSError/AttributeError when it cannot be used."""
        lib = ctypes.CDLL("libseccomp.so.2")
        lib.seccomp_version.restype = ctypes.POINTER(ctypes.c_uint * 3)  # major, minor, micro
        return ".".join(map(str, lib.seccomp_version().contents))

    def container_engine(
        self, wanted: Literal["auto", "docker", "podman"] = "auto"
    ) -> EngineReport | ClawpenError:
        """The container engine's report, or why there is none (the error, not raised)."""
        from clawpen.container.report import engine_report

        try:
            return engine_report(wanted)
        except ClawpenError as err:
            return err

    def vm_findings(self) -> list[Finding]:
        from clawpen.vm.report import findings

        return findings()

    def cluster_findings(self, spec_file: Path, state_dir: Path) -> list[Finding]:
        """The ``[cluster]`` of ``spec_file`` (none without the file or the table)."""
        if not spec_file.is_file():
            return []
        from clawpen.ha.report import findings
        from clawpen.spec.loader import load_spec
        from clawpen.vault.store import Vault

        try:
            settings = load_spec(spec_file).spec.cluster
        except ClawpenError as err:
            return [Finding("spec", False, f"{spec_file}: {err.what}", err.hint)]
        if settings is None:
            return []
        return findings(settings, lambda names: Vault(state_dir).values_for(names))

    def module_version(self, name: str) -> str:
        """Import module ``name`` and return its ``__version__``; raises ImportError/OSError."""
        return str(getattr(importlib.import_module(name), "__version__", "?"))
