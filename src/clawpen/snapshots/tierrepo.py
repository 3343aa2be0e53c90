"""restic on one tier's repository (hot, warm or cold), any backend, for :mod:`.tiers`.

As for :class:`~clawpen.snapshots.restic.Repository`, the password (the vault's, the same for every
tier) reaches restic through an inherited pipe (``--password-file /dev/fd/N``; a second pipe for
``--from-password-file``): never an argv, an environment variable or a log line. A backend's
credentials (``env_secrets``: S3 keys...) are read from the vault into restic's environment only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from clawpen.errors import ConfigError, HostError
from clawpen.snapshots.restic import _KEEP_ENV, PASSWORD_SECRET, TAG, _hint


class TierSnapshot(NamedTuple):
    """One snapshot of a tier: ``key`` is the id it had when first taken (restic's ``original``)."""

    id: str
    key: str
    time: float  # seconds since the epoch
    tags: tuple[str, ...]


class TierRepo:
    """One restic repository (``location``: a local path or a backend string)."""

    def __init__(
        self,
        name: str,
        location: str,
        *,
        cache: Path,
        password: Callable[[], bytes],
        env_secrets: Mapping[str, bytes] | None = None,
        restic: str = "restic",
        environ: Mapping[str, str] = os.environ,
        argv_seen: list[list[str]] | None = None,
    ) -> None:
        self.name = name
        self.location = location
        self.cache = cache
        self._password = password
        self._secrets = dict(env_secrets or {})
        self._restic = restic
        self._environ = environ
        self._argv_seen = argv_seen  # tests: every argv built, to check no password is in one

    def __repr__(self) -> str:
        return f"TierRepo({self.name}={self.location!r})"

    @property
    def is_local(self) -> bool:
        return self.location.startswith("/")

    def _env(self) -> dict[str, str]:
        env = {k: self._environ[k] for k in _KEEP_ENV if k in self._environ}
        env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        env["HOME"] = str(self.cache)
        for key, value in self._secrets.items():
            env[key] = value.decode()
        return env

    @contextmanager
    def _fd(self) -> Iterator[int]:
        value = self._password()
        if b"\n" in value or not value:
            raise ConfigError(
                "the snapshot password is empty or holds a newline",
                where=f"vault secret {PASSWORD_SECRET}",
                hint="set a one-line password",
            )
        read, write = os.pipe()
        try:
            os.write(write, value)
            os.close(write)
            write = -1
            yield read
        finally:
            os.close(read)
            if write >= 0:
                os.close(write)

    def run(self, args: Sequence[str], what: str, *, source: TierRepo | None = None) -> str:
        """Run restic on this repository (``source``: the ``--from-repo`` of copy/init)."""
        exe = shutil.which(self._restic, path=self._env()["PATH"])
        if exe is None:
            raise HostError(
                f"restic is not installed ({self._restic})", where="storage", hint="apt-get install restic"
            )
        self.cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        env = self._env()
        with ExitStack() as stack:
            fd = stack.enter_context(self._fd())
            fds = [fd]
            argv = [exe, "--repo", self.location, "--password-file", f"/dev/fd/{fd}"]
            argv += ["--cache-dir", str(self.cache), "--quiet", *args]
            if source is not None:
                from_fd = stack.enter_context(source._fd())
                fds.append(from_fd)
                argv += ["--from-repo", source.location, "--from-password-file", f"/dev/fd/{from_fd}"]
                env.update(source._env())
                env["HOME"] = str(self.cache)
            if self._argv_seen is not None:
                self._argv_seen.append(list(argv))
            proc = subprocess.run(
                argv, pass_fds=tuple(fds), env=env, stdin=subprocess.DEVNULL,
                capture_output=True, text=True, check=False,
            )  # fmt: skip
        if proc.returncode != 0:
            err = (proc.stderr.strip().splitlines() or ["(no message)"])[-1][:500]
            raise HostError(
                f"restic {what} failed on the {self.name} tier (exit {proc.returncode}): {err}",
                where=f"storage.{self.name}: {self.location}",
                hint=_hint(err),
            )
        return proc.stdout

    def exists(self) -> bool:
        """Whether the repository is initialised."""
        if self.is_local:
            return (Path(self.location) / "config").exists()
        try:
            self.run(["cat", "config"], "cat config")
        except HostError:
            return False
        return True

    def ensure_from(self, source: TierRepo) -> bool:
        """Initialise this repository with ``source``'s chunker parameters (so deduplication
        works across them) on first use; True when created now."""
        if self.exists():
            return False
        if self.is_local and not Path(self.location).parent.is_dir():
            # never mkdir -p: an unmounted disk would silently fill the root file system
            raise HostError(
                f"the {self.name} repository's folder {Path(self.location).parent} is missing",
                where=f"storage.{self.name}: {self.location}",
                hint="mount the disk (or create the folder); nothing was moved",
            )
        self.run(["init", "--copy-chunker-params"], "init", source=source)
        return True

    def snapshots(self) -> list[TierSnapshot]:
        """clawpen's snapshots here, oldest first (none in a repository not yet initialised)."""
        if self.is_local and not self.exists():
            return []
        rows = json.loads(self.run(["snapshots", "--json", "--tag", TAG], "snapshots") or "[]")
        return sorted((_row(r) for r in rows or []), key=lambda s: s.time)

    def copy_from(self, source: TierRepo, ids: Sequence[str]) -> None:
        """Copy snapshots ``ids`` of ``source`` here (restic skips what is here already)."""
        self.run(["copy", *ids], "copy", source=source)

    def forget(self, ids: Sequence[str]) -> None:
        """Forget snapshots ``ids`` here and prune their data."""
        self.run(["forget", "--prune", *ids], "forget")

    def size(self) -> int:
        """Bytes the repository's data takes (restic's raw-data size)."""
        if self.is_local and not self.exists():
            return 0
        out = self.run(["stats", "--json", "--mode", "raw-data"], "stats")
        return int(json.loads(out or "{}").get("total_size", 0))


def _row(row: dict[str, Any]) -> TierSnapshot:
    from datetime import datetime

    raw = str(row.get("time", ""))
    # restic writes nanoseconds, "Z" or an offset ("2026-12-01T10:00:00.123456789+01:00"): cut to micro
    m = re.match(r"^([^.Z+]+?)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", raw)
    if m is None:
        raise HostError(f"restic gave a snapshot time {raw!r} clawpen cannot read", where="storage")
    zone = m.group(3) or "Z"
    stamp = f"{m.group(1)}.{(m.group(2) or '0')[:6]}{'+00:00' if zone == 'Z' else zone}"
    when = datetime.fromisoformat(stamp).timestamp()
    sid = str(row["id"])
    return TierSnapshot(
        sid, str(row.get("original") or sid), when, tuple(str(t) for t in row.get("tags") or [])
    )
