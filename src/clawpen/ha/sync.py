"""Shipping an HA bot's workspace from its primary to its backup with restic.

Both hosts reach one restic repository (``ha.sync.repository``: a local path on a shared disk,
``sftp:``, ``rest:``, ``s3:``...). The primary backs the workspace up (as ``.`` from inside it,
like :mod:`clawpen.snapshots.restic`) on an interval and at a planned handover; each snapshot
carries the tags ``clawpen``, ``ha:<bot>``, ``host:<host>``, ``term:<fencing token>`` and
``reason:<interval|handover>``. A handover snapshot (taken after the bot stopped) also carries
``digest:<sha256>`` of the tree (:func:`tree_digest`), and a restore of it checks the restored
tree against it before it replaces anything: zero data loss, or nothing changes.

The backup restores a snapshot so that the workspace afterwards equals it exactly: restic writes
into a fresh sibling folder on the same filesystem, which then takes the workspace's place in one
``renameat2(RENAME_EXCHANGE)`` (two renames where the filesystem lacks it); a restic failure
midway leaves the workspace as it was and the fresh folder removed.

The first use initialises the repository. Hosts racing to do so must not break it (two
``restic init`` at once leave two master keys and one config: half the time nobody can open the
repository): a new local repository is made in a private folder and renamed into place
(atomic; the loser drops its own), an existing empty folder is initialised under a ``flock`` of
it, another backend under the caller's ``init_lock`` (a cluster-wide lock) and is checked after.

Synchronous: the daemon calls it in a thread. The password and a backend's credentials reach
restic as :class:`clawpen.snapshots.runner.ResticRepo` hands them over (a pipe, the environment),
never in an argv.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, NamedTuple

from clawpen.errors import ConfigError, HostError
from clawpen.snapshots.restic import TAG
from clawpen.snapshots.runner import ResticRepo, forgotten_ids, snapshot_time

REASONS = ("interval", "handover")
"""Why a snapshot was shipped: the periodic sync, or the final one of a planned handover."""
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # bot and host names (spec/rules.py check_bot_name)
NO_LOCK = "--no-lock"
"""Reading (listing, restoring) takes no lock: a prune's exclusive lock, even one a crashed host
left, never blocks the backup's restore, and the backup's reading never blocks the primary's
prune. A prune removing data a restore reads fails the restore, which then changes nothing."""
_RESTORING = ".ha-restore-"  # .<workspace>.ha-restore-XXXX: a restore's fresh folder
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


class Shipped(NamedTuple):
    """One shipped snapshot of a bot's workspace.

    ``bytes``: the workspace's size restic read; ``added``: what was new to the repository
    (what the shipping sent). Both are known to the ``ship`` that made the snapshot only (None
    when listed: restic 0.14 keeps no size in a snapshot)."""

    id: str
    time: float  # seconds since the epoch, when restic started reading the workspace
    host: str
    term: int  # the fencing token of the primary's term that shipped it
    reason: str
    digest: str | None  # tree_digest of a handover snapshot
    bytes: int | None = None
    added: int | None = None


def ha_tag(bot: str) -> str:
    return f"ha:{bot}"


def age_seconds(shipped: Shipped | None, now: float) -> float | None:
    """How old the backup's copy is at ``now`` (None: nothing shipped yet)."""
    return None if shipped is None else max(0.0, now - shipped.time)


class ShipRepo(ResticRepo):
    """The ``ha.sync`` repository of HA bots (``location``: a local path or a backend string).

    ``init_lock``: a cluster-wide lock held while a repository of another backend than a local
    path is initialised (local ones need none)."""

    def __init__(
        self,
        location: str,
        *,
        cache: Path,
        password: Callable[[], bytes],
        env_secrets: Mapping[str, bytes] | None = None,
        init_lock: Callable[[], AbstractContextManager[object]] | None = None,
        restic: str = "restic",
        environ: Mapping[str, str] = os.environ,
        argv_seen: list[list[str]] | None = None,
    ) -> None:
        super().__init__(
            location, cache=cache, password=password, label="ha.sync", env_secrets=env_secrets,
            restic=restic, environ=environ, argv_seen=argv_seen,
        )  # fmt: skip
        self._init_lock = init_lock

    # -- the repository ----------------------------------------------------------------------

    def run(
        self, args: Sequence[str], what: str, *, cwd: Path | None = None, source: ResticRepo | None = None
    ) -> str:
        try:
            return super().run(args, what, cwd=cwd, source=source)
        except HostError as err:
            if "wrong password" in err.what:
                raise HostError(
                    err.what,
                    where=err.where,
                    hint="the vault secret that ha.sync.password_secret names must hold the same "
                    "password on every host of the bot (clawpen secrets set NAME on this one)",
                ) from None
            if "`unlock` command" in err.what or "already locked" in err.what:  # restic's last line
                raise HostError(
                    f"restic {what} failed: the ha.sync repository is locked by another restic",
                    where=err.where,
                    hint="a prune holds it (the next shipment tries again), or a host that crashed "
                    "while writing left it: restic unlock removes it once stale (30 minutes, or at "
                    "once when its process is gone on this host name)",
                ) from None
            raise

    def ensure(self) -> bool:
        """Initialise the repository on first use; True when this call created it (False: it
        existed, or another host made it meanwhile)."""
        if self.exists():
            return False
        if self.is_local:
            return self._init_local(Path(self.location))
        with self._init_lock() if self._init_lock is not None else contextlib.nullcontext():
            if self.exists():
                return False
            try:
                self.run(["init"], "init")
            except HostError as init_err:
                try:
                    self.run(["cat", "config"], "open")
                except HostError as open_err:  # a wrong password says more than "it exists"
                    raise (open_err if "wrong password" in open_err.what else init_err) from None
                return False  # another host made it meanwhile
        self._check_opens()
        return True

    def _init_local(self, repo: Path) -> bool:
        parent = repo.parent
        if not parent.is_dir():
            # never mkdir -p: an unmounted shared disk would silently fill the root file system
            raise HostError(
                f"the folder {parent} of the ha.sync repository is missing",
                where=f"ha.sync: {self.location}",
                hint="mount the shared disk (or create the folder) on this host",
            )
        if repo.is_dir() and not repo.is_symlink():
            return self._init_in_place(repo)
        if repo.exists() or repo.is_symlink():
            raise self._not_a_repo(repo)
        fresh = Path(tempfile.mkdtemp(prefix=f".{repo.name}.init-", dir=parent))
        try:
            self._at(fresh).run(["init"], "init")
            try:
                os.rename(fresh, repo)  # atomic: one host's repository wins, whole
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise HostError(
                        f"cannot move the new ha.sync repository into place: {err.strerror}",
                        where=f"ha.sync: {self.location}",
                        hint=f"check {parent} is writable",
                    ) from None
                if not self.exists():
                    raise self._not_a_repo(repo) from None
                return False  # another host's repository is there: ours is dropped
            return True
        finally:
            shutil.rmtree(fresh, ignore_errors=True)

    def _init_in_place(self, repo: Path) -> bool:
        """An existing folder (a mount point, say): initialised under a flock of it."""
        fd = os.open(repo, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self.exists():
                return False
            if os.listdir(fd):
                raise self._not_a_repo(repo)
            self.run(["init"], "init")
        finally:
            os.close(fd)  # releases the flock
        self._check_opens()
        return True

    def _at(self, location: Path) -> ResticRepo:
        """restic as this repository's, on another location (a repository being made)."""
        return ResticRepo(
            str(location), cache=self.cache, password=self._password, label=self.label,
            env_secrets=self._secrets, restic=self._restic, environ=self._environ,
            argv_seen=self._argv_seen,
        )  # fmt: skip

    def _not_a_repo(self, repo: Path) -> HostError:
        return HostError(
            f"{repo} exists and is not a restic repository",
            where=f"ha.sync: {self.location}",
            hint="point ha.sync.repository at a new or empty folder",
        )

    def _check_opens(self) -> None:
        try:
            self.run(["cat", "config"], "open")
        except HostError as err:
            raise HostError(
                f"the ha.sync repository does not open after its initialisation: {err.what}",
                where=f"ha.sync: {self.location}",
                hint="two hosts initialised it at once without a lock: nothing is shipped to it "
                "yet, so empty it and let one host start first",
            ) from None

    # -- shipping ----------------------------------------------------------------------------

    def ship(self, workspace: Path, *, bot: str, host: str, term: int, reason: str) -> Shipped:
        """Back ``bot``'s workspace up as ``host``'s shipment of term ``term``. A ``handover``
        shipment must be taken with the bot stopped: its tree digest goes with it."""
        if reason not in REASONS:
            raise ConfigError(
                f"unknown shipping reason {reason!r}", where="ha.sync", hint=f"one of {REASONS}"
            )
        _check_name(bot, "bot")
        _check_name(host, "host")
        if term < 0:
            raise ConfigError(f"a fencing token is never negative ({term})", where=f"ha.sync {bot}")
        if not workspace.is_dir() or workspace.is_symlink():
            raise HostError(
                f"the workspace {workspace} of bot {bot} is not a folder",
                where=f"ha.sync {bot}: ship",
                hint="a bot with ha.sync needs its workspace (clawpen creates it at the first start)",
            )
        self.ensure()
        tags = [TAG, ha_tag(bot), f"host:{host}", f"term:{term}", f"reason:{reason}"]
        if reason == "handover":
            tags.append(f"digest:{tree_digest(workspace)}")
        args = ["backup", "--json", *(a for t in tags for a in ("--tag", t)), "--host", host, "."]
        out = self.run(args, "backup", cwd=workspace)
        summary = next((m for m in _json_lines(out) if m.get("message_type") == "summary"), None)
        if summary is None:
            raise HostError("restic backup gave no summary", where=f"ha.sync: {self.location}")
        shipped = self.find(bot, str(summary["snapshot_id"]))
        return shipped._replace(
            bytes=int(summary.get("total_bytes_processed", 0)), added=int(summary.get("data_added", 0))
        )

    def shipments(self, bot: str) -> list[Shipped]:
        """``bot``'s shipped snapshots, oldest first (none before the first shipment)."""
        if self.is_local and not self.exists():
            return []
        args = [NO_LOCK, "snapshots", "--json", "--tag", f"{TAG},{ha_tag(bot)}"]
        rows = _rows(self.run(args, "snapshots"))
        return sorted((self._shipped(r) for r in rows), key=lambda s: (s.time, s.term))

    def latest(self, bot: str) -> Shipped | None:
        """``bot``'s newest shipped snapshot (by time), or None."""
        found = self.shipments(bot)
        return found[-1] if found else None

    def find(self, bot: str, snapshot_id: str) -> Shipped:
        """``bot``'s snapshot ``snapshot_id`` (an id or a prefix restic accepts)."""
        rows = _rows(self.run([NO_LOCK, "snapshots", "--json", snapshot_id], "snapshots"))
        mine = [r for r in rows if ha_tag(bot) in (r.get("tags") or [])]
        if len(mine) != 1:
            raise HostError(
                f"the ha.sync repository holds no snapshot {snapshot_id} of bot {bot}",
                where=f"ha.sync: {self.location}",
                hint=f"the newest is what `latest` gives ({len(rows)} snapshot(s) matched the id)",
            )
        return self._shipped(mine[0])

    def _shipped(self, row: dict[str, Any]) -> Shipped:
        tags = [str(t) for t in row.get("tags") or []]

        def tag(prefix: str) -> str | None:
            return next((t.removeprefix(prefix) for t in tags if t.startswith(prefix)), None)

        term = tag("term:")
        return Shipped(
            id=str(row["id"]),
            time=snapshot_time(str(row.get("time", "")), where=f"ha.sync: {self.location}"),
            host=tag("host:") or str(row.get("hostname", "")),
            term=int(term) if term is not None and term.isdigit() else 0,
            reason=tag("reason:") or "",
            digest=tag("digest:"),
        )

    def prune(self, bot: str, *, keep_last: int) -> list[str]:
        """Forget all but ``bot``'s newest ``keep_last`` snapshots (over every host), then prune
        the repository; the ids forgotten. Run by the primary only (prune locks the repository)."""
        if keep_last < 1:
            raise ConfigError(
                f"keep_last must be at least 1 (got {keep_last})",
                where=f"ha.sync {bot}",
                hint="the backup restores the newest snapshot",
            )
        if self.is_local and not self.exists():
            return []
        args = ["forget", "--json", "--tag", f"{TAG},{ha_tag(bot)}", "--group-by", ""]
        return forgotten_ids(self.run([*args, "--keep-last", str(keep_last), "--prune"], "forget"))

    def unlock_stale(self) -> None:
        """Remove the locks restic deems stale (``restic unlock``: a lock of a dead process of
        this host name, or one older than 30 minutes), left by a host that crashed while it
        wrote: until then shipping and pruning fail with "locked"."""
        self.run(["unlock"], "unlock")

    # -- restoring ---------------------------------------------------------------------------

    def restore(
        self,
        bot: str,
        snapshot_id: str,
        workspace: Path,
        *,
        owner_uid: int | None = None,
        owner_gid: int | None = None,
    ) -> Shipped:
        """Make ``workspace`` equal ``bot``'s snapshot exactly (the bot must be stopped): files
        deleted since are gone. Restored into a fresh sibling folder that then takes the
        workspace's place; the workspace's own folder keeps its mode and owner (restic keeps
        none for ``.``); ``owner_uid``/``owner_gid`` (default: the uid): every entry is handed
        to them. A failure leaves the workspace untouched and no fresh folder behind."""
        snap = self.find(bot, snapshot_id)
        where = f"ha.sync {bot}: restore"
        parent = workspace.parent
        if workspace.is_symlink() or (workspace.exists() and not workspace.is_dir()):
            raise HostError(f"the workspace {workspace} is not a folder", where=where, hint="remove it")
        if not parent.is_dir():
            raise HostError(f"the folder {parent} of the workspace is missing", where=where, hint="create it")
        _sweep(workspace)
        fresh = Path(tempfile.mkdtemp(prefix=f".{workspace.name}{_RESTORING}", dir=parent))
        try:
            self.run([NO_LOCK, "restore", snap.id, "--target", str(fresh)], "restore")
            if snap.digest is not None and tree_digest(fresh) != snap.digest:
                raise HostError(
                    f"the restored workspace of {bot} differs from the handover snapshot {snap.id[:8]}",
                    where=where,
                    hint="the workspace was left as it was; `restic check --read-data` the repository",
                )
            _settle_root(fresh, workspace, owner_uid, owner_gid)
            if owner_uid is not None:
                _hand_over(fresh, owner_uid, owner_gid if owner_gid is not None else owner_uid)
            _swap(fresh, workspace)
        except OSError as err:  # reading the tree, handing it over
            raise HostError(
                f"cannot prepare the restored workspace of {bot}: {err.strerror} ({err.filename})",
                where=where,
                hint="the workspace was left as it was; the daemon runs as root to restore owners",
            ) from None
        finally:
            shutil.rmtree(fresh, ignore_errors=True)  # the old workspace after a swap
        return snap


def _check_name(name: str, what: str) -> None:
    if not _NAME.match(name):
        raise ConfigError(
            f"{what} name {name!r} cannot tag a snapshot",
            where="ha.sync",
            hint="lowercase letters, digits and '-' (1 to 63)",
        )


def _rows(out: str) -> list[dict[str, Any]]:
    try:
        rows = json.loads(out or "[]")
    except ValueError:
        raise HostError("restic snapshots gave no JSON", where="ha.sync") from None
    return [r for r in rows or [] if isinstance(r, dict)]


def _json_lines(out: str) -> Iterator[dict[str, Any]]:
    for line in out.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                yield json.loads(line)


def _sweep(workspace: Path) -> None:
    """Remove the fresh folders of restores of ``workspace`` that a crash left behind."""
    prefix = f".{workspace.name}{_RESTORING}"
    for entry in os.scandir(workspace.parent):
        if entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)


def _settle_root(fresh: Path, workspace: Path, uid: int | None, gid: int | None) -> None:
    """The fresh folder takes the workspace folder's mode and owner (0750 and root's, or the
    given owner's, for a workspace not there yet)."""
    try:
        st = os.lstat(workspace)
        mode, owner, group = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    except FileNotFoundError:
        mode, owner, group = 0o750, os.getuid(), os.getgid()
    if uid is not None:
        owner, group = uid, gid if gid is not None else uid
    os.chown(fresh, owner, group)
    os.chmod(fresh, mode)


def _hand_over(root: Path, uid: int, gid: int) -> None:
    """Every entry below ``root`` (a tree restic just made; symlinks themselves) to uid:gid."""
    for _dir, dirs, files, dirfd in os.fwalk(root, follow_symlinks=False):
        for name in dirs + files:
            os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` atomically (renameat2 RENAME_EXCHANGE); False where the kernel, the
    C library or the filesystem lacks it."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap(fresh: Path, workspace: Path) -> None:
    """``fresh`` becomes ``workspace``; the old workspace is left at ``fresh`` (to remove)."""
    try:
        if not workspace.exists():
            os.rename(fresh, workspace)
            return
        if _rename_exchange(fresh, workspace):
            return
        old = fresh.with_name(fresh.name + "-old")
        os.rename(workspace, old)
        try:
            os.rename(fresh, workspace)
        except OSError:
            os.rename(old, workspace)
            raise
        os.rename(old, fresh)
    except OSError as err:
        raise HostError(
            f"cannot move the restored workspace into place: {err.strerror}",
            where=f"ha.sync: {workspace}",
            hint="the workspace was left as it was; check its folder is writable",
        ) from None


def tree_digest(root: Path) -> str:
    """A sha256 of the tree below ``root`` as a restore makes it again: each entry's path,
    type, mode, and a file's content, a symlink's target, a device's number (not owners or
    times; sockets, which restic skips, are left out)."""
    digest = hashlib.sha256()
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel if rel else root) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISSOCK(st.st_mode):
                continue
            line = f"{path!r} {stat.S_IFMT(st.st_mode):o} {stat.S_IMODE(st.st_mode):o}"
            if stat.S_ISREG(st.st_mode):
                line += " " + _file_sha(entry.path)
            elif stat.S_ISLNK(st.st_mode):
                line += " " + repr(os.readlink(entry.path))
            elif stat.S_ISDIR(st.st_mode):
                stack.append(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                line += f" {st.st_rdev}"
            digest.update(line.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


def _file_sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
