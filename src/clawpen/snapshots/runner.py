"""restic, started by clawpen with argv lists, on one repository of any backend.

The password reaches restic through an inherited pipe (``--password-file /dev/fd/N``; a second
pipe for ``--from-password-file`` of ``copy``/``init``): never an argv, an environment variable, a
file on disk or a log line. restic's environment is reduced to ``PATH``, ``LANG``, ``LC_ALL``,
``TMPDIR``, ``HOME`` (the cache folder) and ``TZ=UTC``, plus a backend's credentials
(``env_secrets``: S3 keys...) read from the vault.

:class:`clawpen.snapshots.restic.Repository` (a bot's snapshots) and
:class:`clawpen.snapshots.tierrepo.TierRepo` (the storage tiers) both run restic through this.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from clawpen.errors import ConfigError, HostError

PASSWORD_SECRET = "CLAWPEN_SNAPSHOT_PASSWORD"  # noqa: S105 (the name of a vault entry)
"""The vault entry holding the repository password (losing it loses every snapshot)."""
KEEP_ENV = ("PATH", "LANG", "LC_ALL", "TMPDIR")
HINT_INSTALL = "install restic (apt-get install restic); scripts/setup.sh does it"


class ResticRepo:
    """restic on the repository at ``location`` (an absolute local path or a backend string).

    ``label`` names it in errors (``snapshots``, ``storage.warm``...); ``argv_seen``: tests
    collect every argv built here, to check that no password is in one."""

    def __init__(
        self,
        location: str,
        *,
        cache: Path,
        password: Callable[[], bytes],
        label: str = "snapshots",
        env_secrets: Mapping[str, bytes] | None = None,
        restic: str = "restic",
        environ: Mapping[str, str] = os.environ,
        argv_seen: list[list[str]] | None = None,
    ) -> None:
        self.location = location
        self.cache = cache
        self.label = label
        self._password = password
        self._secrets = dict(env_secrets or {})
        self._restic = restic
        self._environ = environ
        self._argv_seen = argv_seen

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    @property
    def is_local(self) -> bool:
        return self.location.startswith("/")

    def password(self) -> bytes:
        """The repository password (``clawpen snapshot password``; never logged)."""
        return self._password()

    def env(self) -> dict[str, str]:
        env = {k: self._environ[k] for k in KEEP_ENV if k in self._environ}
        env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        env["HOME"] = str(self.cache)
        env["TZ"] = "UTC"  # backup --time is given in UTC
        for key, value in self._secrets.items():
            env[key] = value.decode()
        return env

    @contextmanager
    def password_fd(self) -> Iterator[int]:
        """A pipe's read end holding the password, for restic to inherit (pass_fds)."""
        value = self._password()
        if b"\n" in value or not value:
            raise ConfigError(
                "the snapshot password is empty or holds a newline",
                where=f"vault secret {PASSWORD_SECRET}",
                hint="set a one-line password",
            )
        read, write = os.pipe()
        try:
            os.write(write, value)  # far below the pipe's buffer: never blocks
            os.close(write)
            write = -1
            yield read
        finally:
            os.close(read)
            if write >= 0:
                os.close(write)

    def run(
        self, args: Sequence[str], what: str, *, cwd: Path | None = None, source: ResticRepo | None = None
    ) -> str:
        """Run ``restic ARGS`` here (``source``: the ``--from-repo`` of ``copy``/``init``);
        restic's stdout, or a HostError with its last line of stderr."""
        env = self.env()
        exe = shutil.which(self._restic, path=env["PATH"])
        if exe is None:
            raise HostError(f"restic is not installed ({self._restic})", where=self.label, hint=HINT_INSTALL)
        self.cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        with ExitStack() as stack:
            fd = stack.enter_context(self.password_fd())
            fds = [fd]
            argv = [exe, "--repo", self.location, "--password-file", f"/dev/fd/{fd}"]
            argv += ["--cache-dir", str(self.cache), "--quiet", *args]
            if source is not None:
                from_fd = stack.enter_context(source.password_fd())
                fds.append(from_fd)
                argv += ["--from-repo", source.location, "--from-password-file", f"/dev/fd/{from_fd}"]
                env = {**source.env(), **env}
            if self._argv_seen is not None:
                self._argv_seen.append(list(argv))
            proc = subprocess.run(
                argv, pass_fds=tuple(fds), env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                capture_output=True, text=True, check=False,
            )  # fmt: skip
        if proc.returncode != 0:
            err = (proc.stderr.strip().splitlines() or ["(no message)"])[-1][:500]
            raise HostError(
                f"restic {what} failed (exit {proc.returncode}): {err}",
                where=f"{self.label}: {self.location}",
                hint=hint_for(err),
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


def forgotten_ids(out: str) -> list[str]:
    """The ids ``restic forget --json`` says it removed (one JSON array of groups)."""
    gone: list[str] = []
    for line in out.splitlines():
        if line.startswith("["):
            for group in json.loads(line) or []:
                gone += [str(s["id"]) for s in group.get("remove") or []]
    return gone


def snapshot_time(raw: str, *, where: str) -> float:
    """Seconds since the epoch of a snapshot's ``time`` as ``restic snapshots --json`` writes it
    (nanoseconds, "Z" or an offset: "2026-12-01T10:00:00.123456789+01:00"); ``where`` names the
    repository in the error for a time clawpen cannot read."""
    from datetime import datetime

    m = re.match(r"^([^.Z+]+?)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", raw)  # cut to microseconds
    if m is not None:
        zone = m.group(3) or "Z"
        stamp = f"{m.group(1)}.{(m.group(2) or '0')[:6]}{'+00:00' if zone == 'Z' else zone}"
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(stamp).timestamp()
    raise HostError(f"restic gave a snapshot time {raw!r} clawpen cannot read", where=where)


def hint_for(err: str) -> str:
    """What to do about restic's error ``err``."""
    if "wrong password" in err:
        return (
            f"the vault's {PASSWORD_SECRET} does not open this repository: restore the vault "
            "(secrets.json and master.key) from a backup, or see docs/rollback.md, "
            '"Emergency: restoring the state", for the password you kept'
        )
    if "locked" in err:
        return "another restic run holds the lock; wait, or `restic unlock` if it crashed"
    if "permission denied" in err:
        return "run as root (the daemon does), so restic can read every file of the workspace"
    return "see restic's message; `restic check` verifies the repository"
