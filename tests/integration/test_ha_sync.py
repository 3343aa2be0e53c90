"""Shipping an HA bot's workspace between two simulated hosts with real restic: one local
repository under the test's tmp dir, each host with a restic cache of its own (as two machines
would have). Root: the trees hold files of several owners and restores hand them over."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from clawpen.errors import HostError
from clawpen.ha import sync
from clawpen.ha.sync import Shipped, ShipRepo, age_seconds

pytestmark = pytest.mark.root

PASSWORD = b"ha-sync-test-password-51c2"
S3_SECRET = b"s3-secret-never-in-argv-93d1"
BOT = "trader"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initialised repository (restic's init costs seconds), copied for each test."""
    root = tmp_path_factory.mktemp("template")
    ShipRepo(str(root / "repo"), cache=root / "cache", password=lambda: PASSWORD).ensure()
    return root / "repo"


@pytest.fixture
def shared(tmp_path: Path, template: Path) -> Path:
    """The repository both hosts reach, at ``tmp_path/shared/repo``."""
    (tmp_path / "shared").mkdir()
    shutil.copytree(template, tmp_path / "shared" / "repo", symlinks=True)
    return tmp_path / "shared" / "repo"


def _host(tmp_path: Path, name: str, argv: list[list[str]], *, password: bytes = PASSWORD) -> ShipRepo:
    return ShipRepo(
        str(tmp_path / "shared" / "repo"),
        cache=tmp_path / f"cache-{name}",
        password=lambda: password,
        env_secrets={"AWS_SECRET_ACCESS_KEY": S3_SECRET},
        argv_seen=argv,
    )


def _tree(ws: Path) -> None:
    """Subfolders, empty files and folders, a 5 MB file, symlinks, modes and owners."""
    (ws / "db" / "wal").mkdir(parents=True)
    (ws / "db" / "state.sqlite").write_bytes(os.urandom(5 * 1024 * 1024))
    (ws / "db" / "wal" / "0001").write_bytes(b"log entry\n" * 100)
    (ws / "empty.txt").touch()
    (ws / "db" / "wal" / "empty").touch()
    (ws / "cache" / "nothing-here").mkdir(parents=True)
    (ws / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (ws / "run.sh").chmod(0o755)
    (ws / "secret.key").write_bytes(b"k" * 32)
    (ws / "secret.key").chmod(0o600)
    (ws / "private").mkdir(mode=0o700)
    (ws / "private" / "notes").write_text("orders\n")
    os.chown(ws / "private" / "notes", 1234, 1235)
    (ws / "current").symlink_to("db/state.sqlite")
    (ws / "dangling").symlink_to("/nowhere/at/all")
    os.chown(ws / "dangling", 1234, 1234, follow_symlinks=False)


def _manifest(root: Path, *, owners: bool = True) -> dict[str, tuple[object, ...]]:
    """Every entry below ``root``: type, mode, owner, and content hash or link target."""
    found: dict[str, tuple[object, ...]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                body: object = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                body = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                body = None
            who = (st.st_uid, st.st_gid) if owners else ()
            found[str(path.relative_to(root))] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                *who,
                body,
            )
    return found


def _leftovers(ws: Path) -> list[str]:
    return sorted(p.name for p in ws.parent.iterdir() if p.name.startswith(f".{ws.name}.ha-restore-"))


def _no_secret_in(argv: list[list[str]]) -> None:
    assert argv and any("--password-file" in a for a in argv)  # restic really ran here
    flat = "\0".join(x for a in argv for x in a)
    assert PASSWORD.decode() not in flat and S3_SECRET.decode() not in flat


def test_planned_handover_loses_nothing_and_deletions_reach_the_backup(tmp_path: Path, shared: Path) -> None:
    argv: list[list[str]] = []
    a, b = _host(tmp_path, "a", argv), _host(tmp_path, "b", argv)
    primary, backup = tmp_path / "a" / "ws", tmp_path / "b" / "ws"
    primary.mkdir(parents=True)
    backup.mkdir(parents=True, mode=0o750)
    _tree(primary)
    (backup / "stale-on-backup.txt").write_text("from an older term\n")
    (backup / "old-dir").mkdir()
    (backup / "old-dir" / "x").write_text("x")

    first = a.ship(primary, bot=BOT, host="a", term=7, reason="interval")
    assert first.bytes is not None and first.bytes >= 5 * 1024 * 1024
    assert first.added is not None and first.added >= 5 * 1024 * 1024  # the first shipment sends it all
    assert (first.host, first.term, first.reason, first.digest) == ("a", 7, "interval", None)
    assert abs(first.time - time.time()) < 60
    b.restore(BOT, first.id, backup)  # owners kept as shipped
    assert _manifest(backup) == _manifest(primary)
    assert not (backup / "stale-on-backup.txt").exists() and not (backup / "old-dir").exists()

    # the primary works on, then stops: a file deleted, one changed, one added; the final sync
    (primary / "db" / "wal" / "0001").unlink()
    (primary / "secret.key").write_bytes(b"rotated" * 5)
    (primary / "db" / "wal" / "0002").write_bytes(b"newest order\n")
    final = a.ship(primary, bot=BOT, host="a", term=7, reason="handover")
    assert final.added is not None and final.added < 1024 * 1024  # the 5 MB file was shipped before
    assert final.digest == sync.tree_digest(primary)

    seen = b.latest(BOT)
    assert seen is not None and seen.id == final.id
    assert (seen.host, seen.term, seen.reason, seen.digest) == ("a", 7, "handover", final.digest)
    age = age_seconds(seen, time.time())
    assert age is not None and 0 <= age < 60
    assert age_seconds(seen, seen.time + 42.5) == pytest.approx(42.5)

    b.restore(BOT, seen.id, backup, owner_uid=4321, owner_gid=4322)
    want = {k: (*v[:2], 4321, 4322, v[-1]) for k, v in _manifest(primary).items()}
    assert _manifest(backup) == want  # byte for byte, modes, links; every entry the bot's
    assert not (backup / "db" / "wal" / "0001").exists()  # deleted on the primary: gone here
    root = backup.lstat()
    assert (stat.S_IMODE(root.st_mode), root.st_uid, root.st_gid) == (0o750, 4321, 4322)
    assert _leftovers(backup) == []
    _no_secret_in(argv)


def test_restore_creates_a_missing_workspace_and_works_without_rename_exchange(
    tmp_path: Path, shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv: list[list[str]] = []
    a = _host(tmp_path, "a", argv)
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    shipped = a.ship(src, bot=BOT, host="a", term=1, reason="interval")
    fresh = tmp_path / "b" / "ws"
    fresh.parent.mkdir()
    a.restore(BOT, shipped.id, fresh, owner_uid=999)
    assert _manifest(fresh, owners=False) == _manifest(src, owners=False)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o750 and fresh.stat().st_uid == 999
    # a filesystem without RENAME_EXCHANGE: the old workspace is renamed away, then removed
    calls: list[Path] = []
    monkeypatch.setattr(sync, "_rename_exchange", lambda x, y: calls.append(y) is not None)
    (fresh / "extra").write_text("not in the snapshot")
    crashed = fresh.parent / ".ws.ha-restore-k1ll3d"  # a restore's folder a crash left behind
    crashed.mkdir()
    (crashed / "half").write_bytes(b"x" * 1000)
    a.restore(BOT, shipped.id, fresh)
    assert not crashed.exists()
    assert calls == [fresh]
    assert _manifest(fresh) == _manifest(src) and _leftovers(fresh) == []
    _no_secret_in(argv)


def test_two_plain_restic_inits_at_once_can_break_a_repository(tmp_path: Path) -> None:
    """The hazard ShipRepo.ensure() avoids (the positive control of the next test): two keys
    with different master keys and one config; restic then often opens neither."""
    pw = tmp_path / "pw"
    pw.write_bytes(PASSWORD)

    def restic(repo: Path, cache: str, *args: str) -> list[str]:
        return ["restic", "--repo", str(repo), "--password-file", str(pw), "--cache-dir", cache, "-q", *args]

    for attempt in range(10):
        repo = tmp_path / f"raw{attempt}"
        procs = [
            subprocess.Popen(restic(repo, str(tmp_path / f"rc{i}"), "init"), stderr=subprocess.DEVNULL)
            for i in (1, 2)
        ]
        for proc in procs:
            proc.wait(timeout=60)
        opened = subprocess.run(
            restic(repo, str(tmp_path / "rc1"), "cat", "config"), capture_output=True, text=True, check=False
        )
        if opened.returncode != 0:
            assert "ciphertext verification failed" in opened.stderr
            assert len(list((repo / "keys").iterdir())) == 2
            return
    pytest.fail("ten pairs of racing restic inits never broke a repository")


@pytest.mark.parametrize("case", ["missing", "empty folder"])
def test_racing_hosts_initialise_one_repository_both_can_use(tmp_path: Path, case: str) -> None:
    folder = tmp_path / "disk"
    folder.mkdir()
    argv: list[list[str]] = []
    hosts = [
        ShipRepo(str(folder / "repo"), cache=tmp_path / f"c-{h}", password=lambda: PASSWORD, argv_seen=argv)
        for h in ("a", "b")
    ]
    if case == "empty folder":
        (folder / "repo").mkdir()  # a mount point, say: initialised in place under a flock
    gate = threading.Barrier(2)
    created: list[bool | BaseException] = []

    def init(repo: ShipRepo) -> None:
        gate.wait()
        try:
            created.append(repo.ensure())
        except BaseException as err:  # reported below
            created.append(err)

    threads = [threading.Thread(target=init, args=(h,)) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(created, key=str) == [False, True], created
    assert [p.name for p in folder.iterdir()] == ["repo"]  # the loser's private folder is gone
    assert len(list((folder / "repo" / "keys").iterdir())) == 1
    inits = [a for a in argv if "init" in a]
    assert len(inits) == (2 if case == "missing" else 1)  # both made one; or one waited
    ws = tmp_path / "w"
    ws.mkdir()
    (ws / "f").write_text(case)
    one = hosts[0].ship(ws, bot=BOT, host="a", term=1, reason="interval")
    two = hosts[1].ship(ws, bot=BOT, host="b", term=2, reason="interval")
    assert [s.id for s in hosts[0].shipments(BOT)] == [one.id, two.id]
    assert hosts[0].latest(BOT) == hosts[1].latest(BOT)


def _corrupt_biggest_pack(repo: Path) -> None:
    pack = max((p for p in (repo / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    pack.chmod(0o600)
    data = bytearray(pack.read_bytes())
    for i in range(1000, len(data) - 1000, 4096):
        data[i] ^= 0xFF
    pack.write_bytes(bytes(data))


def test_a_failed_restore_leaves_the_workspace_untouched(tmp_path: Path, shared: Path) -> None:
    argv: list[list[str]] = []
    a, b = _host(tmp_path, "a", argv), _host(tmp_path, "b", argv)
    primary, backup = tmp_path / "a" / "ws", tmp_path / "b" / "ws"
    primary.mkdir(parents=True)
    backup.mkdir(parents=True)
    _tree(primary)
    (backup / "what-the-backup-had").write_text("keep me\n")
    before = _manifest(backup)
    shipped = a.ship(primary, bot=BOT, host="a", term=3, reason="interval")
    other = a.ship(primary, bot="other-bot", host="a", term=3, reason="interval")

    # a wrong password: nothing is restored
    wrong = _host(tmp_path, "b2", argv, password=b"not-the-password")
    with pytest.raises(HostError) as err:
        wrong.restore(BOT, shipped.id, backup)
    assert "wrong password" in err.value.what and "password_secret" in (err.value.hint or "")
    assert err.value.where == f"ha.sync: {shared}"
    # another bot's snapshot is not this bot's to restore
    with pytest.raises(HostError, match="no snapshot"):
        b.restore(BOT, other.id, backup)
    assert _manifest(backup) == before and _leftovers(backup) == []

    # positive control of the next fault: restic really fails midway, after writing files
    _corrupt_biggest_pack(shared)
    shutil.rmtree(tmp_path / "cache-b", ignore_errors=True)
    partial = tmp_path / "partial"
    with pytest.raises(HostError, match="restore failed"):
        b.run(["restore", shipped.id, "--target", str(partial)], "restore")
    # half a restore was written (which files depends on which blobs share the broken pack: a
    # CI run saw run.sh's among them; empty files, folders and symlinks need no pack at all)
    written = [p.relative_to(partial) for p in partial.rglob("*") if p.is_file() or p.is_symlink()]
    assert written, "restic wrote nothing before it failed"
    # ... and through ShipRepo.restore, the workspace keeps what it had, no fresh folder is left
    with pytest.raises(HostError) as err:
        b.restore(BOT, shipped.id, backup)
    assert "restic restore failed" in err.value.what and err.value.hint
    assert _manifest(backup) == before and _leftovers(backup) == []

    # the repository gone altogether
    shutil.rmtree(shared)
    with pytest.raises(HostError) as err:
        b.restore(BOT, shipped.id, backup)
    assert err.value.where and err.value.hint
    assert _manifest(backup) == before and _leftovers(backup) == []
    _no_secret_in(argv)


def test_a_full_disk_on_the_backup_leaves_the_workspace_and_no_fresh_folder(
    tmp_path: Path, shared: Path
) -> None:
    argv: list[list[str]] = []
    a = _host(tmp_path, "a", argv)
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)  # 5 MB and more
    shipped = a.ship(src, bot=BOT, host="a", term=1, reason="interval")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(small)], check=True)
    try:
        ws = small / "ws"
        ws.mkdir()
        (ws / "kept").write_text("the backup's copy\n")
        before = _manifest(ws)
        with pytest.raises(HostError, match="restic restore failed"):
            a.restore(BOT, shipped.id, ws)
        assert _manifest(ws) == before and _leftovers(ws) == []
        assert shutil.disk_usage(small).used < 64 * 1024  # the partial restore's bytes are freed
        # positive control: a snapshot that fits restores on this disk
        (src / "db" / "state.sqlite").unlink()
        fits = a.ship(src, bot=BOT, host="a", term=1, reason="handover")
        a.restore(BOT, fits.id, ws)
        assert _manifest(ws, owners=False) == _manifest(src, owners=False)
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_a_handover_restore_that_does_not_match_its_digest_changes_nothing(
    tmp_path: Path, shared: Path
) -> None:
    argv: list[list[str]] = []
    a = _host(tmp_path, "a", argv)
    src, ws = tmp_path / "src", tmp_path / "ws"
    src.mkdir()
    ws.mkdir()
    (src / "f").write_text("handed over\n")
    (ws / "g").write_text("backup's\n")
    good = a.ship(src, bot=BOT, host="a", term=2, reason="handover")
    # a snapshot whose digest says other content than it holds
    a.run(["tag", "--remove", f"digest:{good.digest}", "--add", "digest:" + "0" * 64, good.id], "tag")
    bad = a.latest(BOT)
    assert bad is not None and bad.digest == "0" * 64 and bad.id != good.id
    with pytest.raises(HostError, match="differs from the handover snapshot"):
        a.restore(BOT, bad.id, ws)
    assert (ws / "g").read_text() == "backup's\n" and not (ws / "f").exists() and _leftovers(ws) == []


def test_prune_keeps_the_newest_over_both_hosts_and_only_touches_its_bot(
    tmp_path: Path, shared: Path
) -> None:
    argv: list[list[str]] = []
    a, b = _host(tmp_path, "a", argv), _host(tmp_path, "b", argv)
    ws = tmp_path / "ws"
    ws.mkdir()
    made: list[Shipped] = []
    for i, (repo, host, term) in enumerate([(a, "a", 1), (a, "a", 1), (b, "b", 2), (b, "b", 2)]):
        (ws / "n").write_text(str(i))
        made.append(repo.ship(ws, bot=BOT, host=host, term=term, reason="interval"))
        time.sleep(0.01)
    neighbour = a.ship(ws, bot="neighbour", host="a", term=9, reason="interval")
    assert b.latest(BOT) == made[-1]._replace(bytes=None, added=None)
    gone = a.prune(BOT, keep_last=2)
    assert sorted(gone) == sorted(s.id for s in made[:2])
    assert [s.id for s in b.shipments(BOT)] == [s.id for s in made[2:]]
    assert [s.id for s in a.shipments("neighbour")] == [neighbour.id]
    assert a.prune(BOT, keep_last=2) == []


def _locks(repo: Path) -> list[str]:
    """restic's lock files (a lock being written is ``<id>-tmp-<n>`` first)."""
    return [p.name for p in (repo / "locks").glob("*") if "-tmp-" not in p.name]


def test_a_prune_holding_the_lock_never_blocks_the_backups_restore(tmp_path: Path, shared: Path) -> None:
    """A primary stopped (or partitioned) in the middle of a prune keeps restic's exclusive lock:
    the backup still restores; shipping waits until the lock is gone or stale."""
    argv: list[list[str]] = []
    a, b = _host(tmp_path, "a", argv), _host(tmp_path, "b", argv)
    ws = tmp_path / "ws"
    ws.mkdir()
    for _ in range(3):
        (ws / "f").write_bytes(os.urandom(200_000))
        a.ship(ws, bot=BOT, host="a", term=1, reason="interval")
    newest = a.latest(BOT)
    assert newest is not None
    pw = tmp_path / "pw"
    pw.write_bytes(PASSWORD)
    restic = ["restic", "--repo", str(shared), "--password-file", str(pw), "-q"]
    prune = subprocess.Popen(
        [*restic, "--cache-dir", str(tmp_path / "c-prune"), "forget", "--keep-last", "1", "--prune"]
    )
    try:
        deadline = time.monotonic() + 30
        while not _locks(shared) and prune.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(prune.pid, signal.SIGSTOP)
        assert prune.poll() is None and any((shared / "locks").glob("*")), (
            "the prune was not caught holding its lock"
        )
        # positive control: a restore that takes restic's lock is refused
        again = [
            *restic,
            "--cache-dir",
            str(tmp_path / "c-x"),
            "restore",
            newest.id,
            "--target",
            str(tmp_path / "x"),
        ]
        locked = subprocess.run(again, capture_output=True, text=True, check=False)
        assert locked.returncode != 0 and "locked exclusively" in locked.stderr
        target = tmp_path / "b" / "ws"
        target.mkdir(parents=True)
        b.restore(BOT, newest.id, target)
        assert (target / "f").read_bytes() == (ws / "f").read_bytes()
        with pytest.raises(HostError, match="locked by another restic") as err:
            b.ship(target, bot=BOT, host="b", term=2, reason="interval")
        assert "restic unlock" in (err.value.hint or "")
    finally:
        prune.kill()  # SIGKILL works on a stopped process
        prune.wait(timeout=10)
    b.unlock_stale()  # the prune's process is gone on this host name: its lock is stale
    shipped = b.ship(target, bot=BOT, host="b", term=2, reason="interval")
    assert b.latest(BOT) == shipped._replace(bytes=None, added=None)
