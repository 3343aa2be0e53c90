"""The login checks on real records: a systemd journal written by systemd-journal-remote (journal
export format on stdin) read through ``journalctl --directory``, and the real-time follower on an
auth.log that grows, rotates and is truncated, and on ``journalctl -f``. Everything lives under a
test's own root folder; this machine's journal and /var/log are never written."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from tests.conftest import unavailable

from clawpen.assess import loginfollow, logins
from clawpen.assess.loginfollow import LoginFollower
from clawpen.assess.loginsrc import LoginEvent, read_journal
from clawpen.assess.model import AuditContext, AuditFinding, Severity

MACHINE_ID = "4c1a9c0e6f2d4b0f9a3e5d7c1b2a3f40"
BOOT_ID = "0123456789abcdef0123456789abcdef"
BOOTED = 1_700_000_000_000_000  # the fake boot's time (µs): entries of one boot sort by monotonic time
pytestmark = pytest.mark.root


def journal_remote() -> str:
    """systemd-journal-remote (CLAWPEN_TEST_JOURNAL_REMOTE names an unpacked copy elsewhere)."""
    for path in (
        os.environ.get("CLAWPEN_TEST_JOURNAL_REMOTE", ""),
        "/lib/systemd/systemd-journal-remote",
        "/usr/lib/systemd/systemd-journal-remote",
    ):
        if path and os.access(path, os.X_OK):
            return path
    unavailable("needs systemd-journal-remote (apt-get install systemd-journal-remote)")


def write_journal(root: Path, name: str, messages: Iterable[tuple[float, str, str]]) -> Path:
    """A journal file of ``(time, program, message)`` entries under ``root``'s /var/log/journal."""
    folder = root / "var/log/journal" / MACHINE_ID
    folder.mkdir(parents=True, exist_ok=True)
    export = []
    for n, (at, prog, msg) in enumerate(sorted(messages), 1):  # a journal is written in time order
        export.append(
            f"__REALTIME_TIMESTAMP={int(at * 1e6)}\n__MONOTONIC_TIMESTAMP={int(at * 1e6) - BOOTED}\n"
            f"_BOOT_ID={BOOT_ID}\n_MACHINE_ID={MACHINE_ID}\n_HOSTNAME=bot1\n_COMM={prog}\n"
            f"SYSLOG_IDENTIFIER={prog}\n_PID={800 + n}\nMESSAGE={msg}\n\n"
        )
    out = folder / f"{name}.journal"
    subprocess.run(
        [journal_remote(), f"--output={out}", "-"],
        input="".join(export).encode(),
        check=True,
        capture_output=True,
        timeout=30,
    )
    return out


def failed(addr: str, port: int, user: str = "root") -> str:
    return f"Failed password for {user} from {addr} port {port} ssh2"


def accepted(addr: str, user: str, method: str = "publickey") -> str:
    return f"Accepted {method} for {user} from {addr} port 50000 ssh2"


def syslog(at: float, prog: str, msg: str) -> str:
    return time.strftime("%b %e %H:%M:%S", time.gmtime(at)) + f" bot1 {prog}[812]: {msg}\n"


def test_journal_written_by_journal_remote_gives_the_findings(tmp_path):
    now = time.time()
    messages = [(now - 900 + 10 * i, "sshd", failed("203.0.113.66", 40000 + i)) for i in range(12)]
    messages += [(now - 800 + 10 * i, "sshd", failed("203.0.113.9", 41000 + i)) for i in range(5)]  # control
    messages += [
        (now - 700, "sshd-session", accepted("198.51.100.4", "root")),
        (now - 650, "sshd", accepted("198.51.100.5", "alice")),  # control: a key, not root
        (now - 600, "systemd", "Started session-4.scope."),  # not sshd
        (now - 3 * 86400, "sshd", accepted("198.51.100.6", "root")),  # outside the day
    ]
    write_journal(tmp_path, "remote", messages)

    events, problems = read_journal(tmp_path, since=now - 86400)
    assert problems == []
    assert len(events) == 19 and {e.source for e in events} == {"journal"}
    assert events == sorted(events, key=lambda e: e.at)
    assert events[0].at == pytest.approx(now - 900, abs=1e-5)

    found = logins.run(AuditContext(root=tmp_path, live=False, now=now))
    assert sorted((f.check, f.subject) for f in found) == [
        ("logins.failed_burst", "203.0.113.66"),
        ("logins.root_login", "198.51.100.4"),
    ]
    burst = next(f for f in found if f.check == "logins.failed_burst")
    assert burst.severity is Severity.HIGH and burst.data["count"] == 12

    # the same failures in auth.log too (rsyslog copies the journal): counted once, not twice
    log = tmp_path / "var/log/auth.log"
    log.write_text("".join(syslog(at, prog, msg) for at, prog, msg in messages[:12]))
    again = logins.run(AuditContext(root=tmp_path, live=False, now=now))
    assert next(f for f in again if f.check == "logins.failed_burst").data["count"] == 12


def _until(follower: LoginFollower, got: list, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        follower.poll(0.2)


def test_follower_reads_appended_rotated_and_truncated_auth_log_once_in_order(tmp_path):
    root, state = tmp_path / "root", tmp_path / "state"
    log = root / "var/log/auth.log"
    log.parent.mkdir(parents=True)
    now = float(int(time.time()))  # auth.log's times are whole seconds
    log.write_text(syslog(now - 4000, "sshd", accepted("198.51.100.4", "alice")))  # history: learned
    got: list[LoginEvent | AuditFinding] = []
    follower = LoginFollower(root, got.append, state_dir=state, source="auto")
    try:
        assert follower.source == "auth.log" and follower.fileno() is not None
        assert follower.poll(0.1) == 0  # what was there before is not followed

        with log.open("a") as fh:  # appended, the last line in two writes
            fh.write(syslog(now, "sshd", failed("203.0.113.1", 1)))
            fh.write(syslog(now + 1, "sshd", failed("203.0.113.1", 2))[:20])
            fh.flush()
            _until(follower, got, 1)
            fh.write(syslog(now + 1, "sshd", failed("203.0.113.1", 2))[20:])
        _until(follower, got, 2)

        # rotation: renamed (a last line still reaches the old file), then a new file
        log.rename(log.with_name("auth.log.1"))
        with log.with_name("auth.log.1").open("a") as fh:
            fh.write(syslog(now + 2, "sshd", failed("203.0.113.1", 3)))
        log.write_text(
            syslog(now + 3, "sshd", failed("203.0.113.1", 4))
            + syslog(now + 4, "sshd", failed("203.0.113.1", 5))
        )
        _until(follower, got, 5)

        # truncation (logrotate's copytruncate): the file starts again
        with log.open("r+") as fh:
            fh.truncate(0)
        follower.read_ready()
        log.write_text(syslog(now + 5, "sshd", accepted("192.0.2.7", "bob")))
        _until(follower, got, 7)
        follower.poll(0.3)  # nothing more comes
    finally:
        follower.close()

    events = [g for g in got if isinstance(g, LoginEvent)]
    ports = [e.where for e in events]
    assert [(e.kind, e.address) for e in events] == [("failed", "203.0.113.1")] * 5 + [
        ("accepted", "192.0.2.7")
    ]
    assert [int(e.at - now) for e in events] == [0, 1, 2, 3, 4, 5]
    assert ports == [f"/var/log/auth.log:{n}" for n in (2, 3, 4, 1, 2, 1)]
    findings = [g for g in got if isinstance(g, AuditFinding)]
    assert [(f.check, f.subject) for f in findings] == [("logins.new_address", "192.0.2.7")]
    assert got.index(findings[0]) == got.index(events[-1]) + 1  # right after its event


def test_follower_raises_burst_and_root_findings_as_they_happen(tmp_path):
    root = tmp_path / "root"
    log = root / "var/log/auth.log"
    log.parent.mkdir(parents=True)
    log.write_text("")
    got: list[LoginEvent | AuditFinding] = []
    now = time.time()
    with LoginFollower(root, got.append) as follower:
        with log.open("a") as fh:
            for i in range(9):
                fh.write(syslog(now + i, "sshd", failed("203.0.113.66", 40000 + i)))
        _until(follower, got, 9)
        assert not [g for g in got if isinstance(g, AuditFinding)]  # 9 are not a burst yet
        with log.open("a") as fh:
            fh.write(syslog(now + 9, "sshd", failed("203.0.113.66", 40009)))
            fh.write(syslog(now + 10, "sshd", failed("203.0.113.66", 40010)))
            fh.write(syslog(now + 11, "sshd", accepted("203.0.113.66", "root", "password")))
        _until(follower, got, 16)
    findings = [(g.check, g.subject, g.severity) for g in got if isinstance(g, AuditFinding)]
    assert findings == [
        ("logins.failed_burst", "203.0.113.66", Severity.HIGH),
        ("logins.failed_burst", "203.0.113.66", Severity.CRITICAL),  # and then a login from it
        ("logins.root_login", "203.0.113.66", Severity.HIGH),
        ("logins.password_login", "root", Severity.MEDIUM),
    ]


def test_follower_on_journalctl_follow(tmp_path, monkeypatch):
    monkeypatch.setattr(loginfollow, "RESTART_DELAY", 0.1)
    now = time.time()
    write_journal(tmp_path, "old", [(now - 60, "sshd", failed("203.0.113.1", 1))])  # history
    got: list[LoginEvent | AuditFinding] = []
    with LoginFollower(tmp_path, got.append) as follower:
        assert follower.source == "journal" and follower.fileno() is not None
        later = time.time() + 1  # logged after the follower started, maybe before journalctl did
        write_journal(
            tmp_path,
            "new",
            [(later + i, "sshd", failed("203.0.113.2", 100 + i)) for i in range(3)]
            + [(later + 5, "sshd", accepted("198.51.100.4", "root"))],
        )
        _until(follower, got, 5)
        # journalctl ends (killed): started again after the last entry seen, nothing twice
        proc = follower._proc
        assert proc is not None
        proc.kill()
        proc.wait()
        write_journal(tmp_path, "newer", [(later + 6, "sshd", failed("203.0.113.2", 200))])
        _until(follower, got, 6)
        assert follower._proc is not proc
        follower.poll(0.5)
    events = [g for g in got if isinstance(g, LoginEvent)]
    assert [(e.kind, e.address, e.port) for e in events] == [
        ("failed", "203.0.113.2", 100),
        ("failed", "203.0.113.2", 101),
        ("failed", "203.0.113.2", 102),
        ("root", "198.51.100.4", 50000),
        ("failed", "203.0.113.2", 200),
    ]
    assert [g.check for g in got if isinstance(g, AuditFinding)] == ["logins.root_login"]


def test_follower_without_inotify_polls_and_knows_learned_addresses(tmp_path, monkeypatch):
    monkeypatch.setattr(loginfollow, "_watch", lambda _folder: None)  # inotify used up
    root, state = tmp_path / "root", tmp_path / "state"
    now = float(int(time.time()))
    got: list[LoginEvent | AuditFinding] = []
    with LoginFollower(root, got.append, state_dir=state) as follower:  # no /var/log yet
        assert follower.fileno() is None and follower.poll(0.05) == 0
        log = root / "var/log/auth.log"
        log.parent.mkdir(parents=True)
        log.write_text(syslog(now, "sshd", accepted("198.51.100.4", "alice")))  # appears: read whole
        _until(follower, got, 2)
    assert [(g.check, g.subject) for g in got if isinstance(g, AuditFinding)] == [
        ("logins.new_address", "198.51.100.4")
    ]
    # a follower started later has the address from the file and reports it no more
    again: list[LoginEvent | AuditFinding] = []
    with LoginFollower(root, again.append, state_dir=state) as follower:
        with log.open("a") as fh:
            fh.write(syslog(now + 1, "sshd", accepted("198.51.100.4", "alice")))
        _until(follower, again, 1)
        follower.poll(0.1)
    assert [type(g).__name__ for g in again] == ["LoginEvent"]


def test_follower_completes_a_line_being_written_and_reads_big_rotations_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(loginfollow, "MAX_READ", 300)  # a few lines per pass
    root = tmp_path / "root"
    log = root / "var/log/auth.log"
    log.parent.mkdir(parents=True)
    now = float(int(time.time()))
    first = syslog(now, "sshd", failed("203.0.113.1", 1))
    log.write_text(syslog(now - 10, "sshd", failed("203.0.113.1", 0)) + first[:30])  # mid-line
    got: list[LoginEvent | AuditFinding] = []
    with LoginFollower(root, got.append) as follower:
        with log.open("a") as fh:
            fh.write(first[30:])
            fh.writelines(syslog(now + i, "sshd", failed("203.0.113.1", 1 + i)) for i in range(1, 20))
        log.rename(log.with_name("auth.log.1"))  # rotated before the follower read it all
        log.write_text(syslog(now + 20, "sshd", failed("203.0.113.1", 21)))
        _until(follower, got, 22)
        follower.poll(0.2)
    events = [g for g in got if isinstance(g, LoginEvent)]
    assert [e.port for e in events] == [*range(1, 21), 21]
    assert events[0].where == "/var/log/auth.log:2" and events[-1].where == "/var/log/auth.log:1"


def test_the_followers_journalctl_dies_with_a_killed_daemon(tmp_path: Path) -> None:
    """A daemon that is SIGKILLed leaves no `journalctl -f` behind: journalctl's output is a pipe
    only the daemon reads (close-on-exec), and journalctl ends when that pipe's reader is gone."""
    import signal
    import sys

    root = tmp_path / "root"
    write_journal(root, "x", [(time.time() - 60, "sshd", failed("203.0.113.5", 4444))])  # no auth.log
    code = (
        "import time, pathlib; from clawpen.assess.loginfollow import LoginFollower;"
        f"f = LoginFollower(pathlib.Path({str(root)!r}), lambda item: None, source='journal');"
        "print('ready', flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        children = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(children) == 1
        child = int(children[0])
        assert "journalctl" in Path(f"/proc/{child}/cmdline").read_text()  # it runs (positive control)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{child}").exists():
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
