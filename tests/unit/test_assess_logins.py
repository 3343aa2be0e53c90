"""The login checks: parsers of auth.log (both time formats), journal JSON and wtmp/btmp (records
written by util-linux's utmpdump), and the burst, root, password and new-address rules, each
with its positive control."""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from clawpen.assess import logins, loginsrc
from clawpen.assess.loginsrc import (
    LoginEvent,
    is_host,
    journal_command,
    journal_dir,
    journal_entry,
    journal_events,
    line_time,
    merge,
    parse_message,
    read_auth_logs,
    read_journal,
    read_utmp,
    system_zone,
    utmp_records,
)
from clawpen.assess.model import AuditContext, Severity

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC).timestamp()
PAM_FAIL = (
    "pam_unix({svc}:auth): authentication failure;"
    " logname={who} uid=1000 euid=0 tty=/dev/pts/0 ruser={who} rhost=  user={to}"
)


def classic(at: float, prog: str, msg: str) -> str:
    """An auth.log line in rsyslog's traditional format (no year, the host's local time: UTC)."""
    return time.strftime("%b %e %H:%M:%S", time.gmtime(at)) + f" bot1 {prog}[812]: {msg}\n"


def rfc3339(at: float, prog: str, msg: str) -> str:
    """An auth.log line in rsyslog's newer default format (RFC 3339 with microseconds)."""
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="microseconds")
    return f"{stamp} bot1 {prog}[812]: {msg}\n"


def failed(addr: str, user: str = "root", port: int = 40000, invalid: bool = False) -> str:
    return f"Failed password for {'invalid user ' if invalid else ''}{user} from {addr} port {port} ssh2"


def accepted(addr: str, user: str = "alice", method: str = "publickey", port: int = 50000) -> str:
    extra = ": ED25519 SHA256:abcdef" if method == "publickey" else ""
    return f"Accepted {method} for {user} from {addr} port {port} ssh2{extra}"


def write_log(root: Path, lines: list[str], name: str = "auth.log") -> Path:
    path = root / "var/log" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    return path


def ctx_for(root: Path, state: Path | None) -> AuditContext:
    return AuditContext(root=root, live=False, state_dir=state, now=NOW)


def checks(findings, severity=None):
    return sorted((f.check, f.subject) for f in findings if severity is None or f.severity == severity)


# --- messages ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prog", "msg", "want"),
    [
        ("sshd", failed("203.0.113.9"), ("failed", "root", "203.0.113.9", "password", 40000, 1)),
        ("sshd", failed("2001:db8::7", "bob", 5, True), ("failed", "bob", "2001:db8::7", "password", 5, 1)),
        (
            "sshd-session",
            accepted("198.51.100.4"),
            ("accepted", "alice", "198.51.100.4", "publickey", 50000, 1),
        ),
        (
            "sshd",
            accepted("198.51.100.4", "root", "password"),
            ("root", "root", "198.51.100.4", "password", 50000, 1),
        ),
        (
            "sshd",
            "Invalid user admin from 203.0.113.9 port 41234",
            ("invalid_user", "admin", "203.0.113.9", "", 41234, 1),
        ),
        ("sshd", "Invalid user  from 203.0.113.9", ("invalid_user", "", "203.0.113.9", "", None, 1)),
        (
            "sshd",
            f"message repeated 4 times: [ {failed('203.0.113.9')}]",
            ("failed", "root", "203.0.113.9", "password", 40000, 4),
        ),
        (
            "su",
            PAM_FAIL.format(svc="su", who="alice", to="root"),
            ("failed", "alice", "", "su", None, 1),
        ),
        (
            "sudo",
            PAM_FAIL.format(svc="sudo", who="bob", to="bob"),
            ("failed", "bob", "", "sudo", None, 1),
        ),
    ],
)
def test_messages_parse(prog, msg, want):
    got = parse_message(prog, msg)
    assert got is not None
    assert (got.kind, got.user, got.address, got.method, got.port, got.count) == want


@pytest.mark.parametrize(
    ("prog", "msg"),
    [
        ("sshd", "Connection closed by 203.0.113.9 port 40000 [preauth]"),
        ("sshd", "pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)"),
        ("cron", failed("203.0.113.9")),  # another program saying the same words
        ("su", "pam_unix(su:session): session opened for user root(uid=0) by alice(uid=1000)"),
    ],
)
def test_other_messages_are_not_logins(prog, msg):
    assert parse_message(prog, msg) is None


# --- times ------------------------------------------------------------------------------------


def test_classic_time_takes_the_latest_year_not_in_the_future():
    new_year = datetime(2027, 1, 1, 0, 10, tzinfo=UTC).timestamp()
    at, prog, msg = line_time("Dec 31 23:59:30 bot1 sshd[1]: hello", new_year, UTC)
    assert datetime.fromtimestamp(at, UTC) == datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC)
    assert (prog, msg) == ("sshd", "hello")
    # the same day of the current year when it is past
    at, _, _ = line_time("Jan  1 00:05:00 bot1 sshd[1]: hello", new_year, UTC)
    assert datetime.fromtimestamp(at, UTC).year == 2027
    # Feb 29 seen in 2029 belongs to 2028
    at, _, _ = line_time("Feb 29 10:00:00 bot1 sshd: x", datetime(2029, 3, 1, tzinfo=UTC).timestamp(), UTC)
    assert datetime.fromtimestamp(at, UTC).year == 2028


def test_rfc3339_time_keeps_its_offset_and_fraction():
    at, prog, _ = line_time("2026-12-02T09:00:00.250000+02:00 bot1 sshd-session[9]: x", NOW, UTC)
    assert at == datetime(2026, 12, 2, 7, 0, 0, 250000, tzinfo=UTC).timestamp()
    assert prog == "sshd-session"
    assert line_time("not a syslog line", NOW, UTC) is None


def tzif_fixed(name: bytes, offset: int) -> bytes:
    """A TZif v2 file of one fixed offset (what /etc/localtime holds; no tzdata needed)."""
    counts = struct.pack(">6l", 0, 0, 0, 0, 1, len(name) + 1)  # one type, no transitions
    block = counts + struct.pack(">lBB", offset, 0, 0) + name + b"\0"
    head = b"TZif2" + bytes(15)
    hours = -offset // 3600
    return head + block + head + block + b"\n<" + name + b">" + str(hours).encode() + b"\n"


def test_classic_time_is_the_audited_systems_local_time(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/localtime").write_bytes(tzif_fixed(b"CET", 3600))
    zone = system_zone(tmp_path)
    at, _, _ = line_time("Dec  2 08:00:00 bot1 sshd[1]: x", NOW, zone)
    assert at == datetime(2026, 12, 2, 7, 0, tzinfo=UTC).timestamp()  # CET is UTC+1
    assert system_zone(tmp_path / "nothing") is UTC


# --- auth.log -----------------------------------------------------------------------------------


def test_auth_logs_are_read_with_rotations_oldest_first(tmp_path):
    t = NOW - 3600
    write_log(tmp_path, [classic(t - 300, "sshd", failed("203.0.113.1"))], "auth.log.1")
    gz = tmp_path / "var/log/auth.log.2.gz"
    gz.write_bytes(gzip.compress(classic(t - 600, "sshd", failed("203.0.113.2")).encode()))
    write_log(
        tmp_path,
        [
            "Dec  2 11:00:00 bot1 CRON[5]: pam_unix(cron:session): session opened\n",
            rfc3339(t, "sshd", accepted("198.51.100.4")),
            classic(
                t + 1,
                "sudo",
                PAM_FAIL.format(svc="sudo", who="bob", to="bob"),
            ),
        ],
    )
    events, problems = read_auth_logs(tmp_path, now=NOW)
    assert problems == []
    assert [(e.kind, e.address, e.where) for e in events] == [
        ("failed", "203.0.113.2", "/var/log/auth.log.2.gz:1"),
        ("failed", "203.0.113.1", "/var/log/auth.log.1:1"),
        ("accepted", "198.51.100.4", "/var/log/auth.log:2"),
        ("failed", "", "/var/log/auth.log:3"),
    ]
    assert [e.at for e in events] == [t - 600, t - 300, t, t + 1]
    assert {e.source for e in events} == {"auth.log"}


def test_an_unreadable_log_is_a_note_not_a_crash(tmp_path):
    write_log(tmp_path, [classic(NOW - 60, "sshd", failed("203.0.113.1"))])
    (tmp_path / "var/log/auth.log.2.gz").write_bytes(b"not gzip at all")
    events, problems = read_auth_logs(tmp_path, now=NOW)
    assert len(events) == 1
    assert [p.where for p in problems] == ["/var/log/auth.log.2.gz"]


# --- journal JSON -------------------------------------------------------------------------------


def test_journal_json_entries():
    line = json.dumps(
        {
            "__REALTIME_TIMESTAMP": str(int(NOW * 1e6)),
            "SYSLOG_IDENTIFIER": "sshd",
            "_PID": "77",
            "MESSAGE": list(failed("203.0.113.5").encode()),  # a binary field: a byte list
            "__CURSOR": "s=1",
        }
    )
    entry = journal_entry(line)
    assert entry is not None
    (event,) = journal_events(entry)
    assert (event.at, event.kind, event.address, event.source, event.where) == (
        NOW,
        "failed",
        "203.0.113.5",
        "journal",
        "journal:sshd[77]",
    )
    assert journal_entry("{broken") is None
    assert journal_events({"SYSLOG_IDENTIFIER": "sshd", "MESSAGE": "Server listening on 0.0.0.0"}) == []


# --- wtmp and btmp --------------------------------------------------------------------------------


def utmpdump_r(path: Path, rows: list[str]) -> None:
    """Write utmp records with util-linux's own tool (text -> binary)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        subprocess.run(
            ["utmpdump", "-r"], input="".join(rows).encode(), stdout=out, check=True, capture_output=False
        )


def row(typ: int, pid: int, user: str, line: str, host: str, addr: str, at: float) -> str:
    stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S,%f+00:00")
    return f"[{typ}] [{pid:05d}] [ts/0] [{user:<8}] [{line:<12}] [{host:<20}] [{addr:<15}] [{stamp}]\n"


def test_wtmp_records_from_utmpdump_are_read_back(tmp_path):
    t = NOW - 600
    utmpdump_r(
        tmp_path / "var/log/wtmp",
        [
            row(2, 0, "reboot", "~", "6.1.0-28-amd64", "0.0.0.0", t - 60),  # BOOT_TIME
            row(7, 1234, "alice", "pts/0", "203.0.113.5", "203.0.113.5", t),
            row(8, 1234, "", "pts/0", "", "0.0.0.0", t + 30),  # DEAD_PROCESS: a logout
            row(7, 1300, "root", "tty1", "", "0.0.0.0", t + 60),
            row(7, 1400, "bob", "pts/1", "", "2001:db8::42", t + 90),
        ],
    )
    data = (tmp_path / "var/log/wtmp").read_bytes()
    assert len(data) == 5 * 384
    recs = list(utmp_records(data))
    assert (recs[1].type, recs[1].pid, recs[1].line, recs[1].user, recs[1].host) == (
        7,
        1234,
        "pts/0",
        "alice",
        "203.0.113.5",
    )
    assert recs[1].at == pytest.approx(t, abs=1e-6)
    assert recs[1].address == "203.0.113.5" and recs[4].address == "2001:db8::42"
    events, problems = read_utmp(tmp_path, "wtmp")
    assert problems == []
    assert [(e.kind, e.user, e.address, e.source) for e in events] == [
        ("accepted", "alice", "203.0.113.5", "wtmp"),
        ("root", "root", "", "wtmp"),
        ("accepted", "bob", "2001:db8::42", "wtmp"),  # no host name: the address field
    ]
    assert events[1].where == "/var/log/wtmp record 3 (tty1)"


def test_btmp_records_are_failures_and_a_torn_file_is_noted(tmp_path):
    path = tmp_path / "var/log/btmp"
    utmpdump_r(path, [row(6, 99, "admin", "ssh:notty", "198.51.100.7", "198.51.100.7", NOW - 5)])
    with path.open("ab") as fh:
        fh.write(b"\0" * 100)
    events, problems = read_utmp(tmp_path, "btmp")
    assert [(e.kind, e.user, e.address) for e in events] == [("failed", "admin", "198.51.100.7")]
    assert [p.where for p in problems] == ["/var/log/btmp"]
    assert read_utmp(tmp_path, "wtmp") == ([], [])  # not there: nothing to say


# --- one login in two sources -------------------------------------------------------------------


def test_merge_keeps_a_login_seen_by_two_sources_once():
    def ev(at, kind, source, method="password", user="alice", addr="203.0.113.5"):
        return LoginEvent(at, kind, user, addr, method, source, source)

    events = [
        ev(100.0, "failed", "auth.log"),
        ev(100.0, "failed", "auth.log"),  # two failures of one connection in one second
        ev(100.3, "failed", "journal"),
        ev(100.4, "failed", "journal"),
        ev(101.0, "failed", "btmp", method=""),
        ev(200.0, "accepted", "wtmp", method=""),
        ev(200.5, "accepted", "auth.log"),
        ev(900.0, "accepted", "journal"),  # far from the others: another login
    ]
    out = merge(events)
    assert [(e.at, e.kind, e.source) for e in out] == [
        (100.0, "failed", "auth.log"),
        (100.0, "failed", "auth.log"),
        (200.5, "accepted", "auth.log"),  # the record that knows the method wins over wtmp's
        (900.0, "accepted", "journal"),
    ]


# --- the rules --------------------------------------------------------------------------------


def test_burst_of_failures_is_high_and_its_controls_are_not(tmp_path):
    start = NOW - 3600
    lines = [classic(start + 20 * i, "sshd", failed("203.0.113.66", port=40000 + i)) for i in range(12)]
    lines += [
        classic(start + 20 * i, "sshd", failed("203.0.113.9", port=41000 + i)) for i in range(9)
    ]  # too few
    lines += [
        rfc3339(start - 7200 + 700 * i, "sshd", failed("203.0.113.77", port=42000 + i)) for i in range(12)
    ]  # slow
    # an invalid user's two lines per connection are one attempt: 6 connections are not 12 failures
    for i in range(6):
        lines.append(classic(start + i, "sshd", f"Invalid user admin{i} from 198.51.100.23 port {43000 + i}"))
        lines.append(
            classic(start + i, "sshd", failed("198.51.100.23", f"admin{i}", 43000 + i, invalid=True))
        )
    write_log(tmp_path, sorted(lines, key=lambda s: s[:15]))
    found = logins.run(ctx_for(tmp_path, None))
    assert checks(found) == [("logins.failed_burst", "203.0.113.66")]
    (burst,) = found
    assert burst.severity is Severity.HIGH
    assert burst.data["count"] == 12 and burst.data["users"] == ["root"]
    assert "PasswordAuthentication no" in burst.fix


def test_a_login_after_a_burst_from_its_address_is_critical(tmp_path):
    start = NOW - 3600
    lines = [classic(start + i, "sshd", failed("203.0.113.66", "bob", port=40000 + i)) for i in range(10)]
    lines += [classic(start + i, "sshd", failed("203.0.113.77", "bob", port=41000 + i)) for i in range(10)]
    lines.append(classic(start + 60, "sshd", accepted("203.0.113.66", "bob", "password")))
    lines.append(classic(start + 60, "sshd", accepted("198.51.100.4", "carol")))  # control: other address
    write_log(tmp_path, sorted(lines, key=lambda s: s[:15]))
    found = {f.subject: f for f in logins.run(ctx_for(tmp_path, None)) if f.check == "logins.failed_burst"}
    assert found["203.0.113.66"].severity is Severity.CRITICAL
    assert found["203.0.113.66"].data["then"]["user"] == "bob"
    assert "then bob logged in from it" in found["203.0.113.66"].title
    assert found["203.0.113.77"].severity is Severity.HIGH and "then" not in found["203.0.113.77"].data
    assert "ip saddr 203.0.113.77 drop" in found["203.0.113.77"].fix


def test_ten_invalid_user_connections_are_a_burst(tmp_path):
    lines = []
    for i in range(10):
        lines.append(
            classic(NOW - 300 + i, "sshd", f"Invalid user guest from 198.51.100.23 port {43000 + i}")
        )
    write_log(tmp_path, lines)
    assert checks(logins.run(ctx_for(tmp_path, None))) == [("logins.failed_burst", "198.51.100.23")]


def test_root_and_password_logins_and_their_controls(tmp_path):
    write_log(
        tmp_path,
        [
            classic(NOW - 600, "sshd", accepted("203.0.113.5", "root")),
            rfc3339(NOW - 500, "sshd-session", accepted("203.0.113.5", "root")),
            classic(NOW - 400, "sshd", accepted("198.51.100.4", "bob", "password")),
            classic(NOW - 300, "sshd", accepted("198.51.100.4", "alice")),  # control: a key
            classic(NOW - 2 * 86400, "sshd", accepted("198.51.100.8", "carol", "password")),  # too old
        ],
    )
    found = logins.run(ctx_for(tmp_path, None))
    assert checks(found) == [("logins.password_login", "bob"), ("logins.root_login", "203.0.113.5")]
    root = next(f for f in found if f.check == "logins.root_login")
    assert root.severity is Severity.HIGH and root.data["count"] == 2
    assert root.where == "/var/log/auth.log:2"
    assert next(f for f in found if f.check == "logins.password_login").severity is Severity.MEDIUM


def test_first_run_learns_addresses_later_runs_report_new_ones(tmp_path):
    root, state = tmp_path / "root", tmp_path / "state"
    lines = [
        classic(NOW - 5 * 86400, "sshd", accepted("198.51.100.4", "alice")),  # history: learned too
        classic(NOW - 600, "sshd", accepted("203.0.113.5", "alice")),
    ]
    write_log(root, lines)
    first = logins.run(ctx_for(root, state))
    assert checks(first) == [("logins.new_address", "learned")]
    assert first[0].severity is Severity.INFO
    known = json.loads((state / "audit/known-logins.json").read_text())
    assert sorted(known["addresses"]) == ["198.51.100.4", "203.0.113.5"]
    assert (state / "audit/known-logins.json").stat().st_mode & 0o077 == 0

    # control: the same logins again give nothing
    assert logins.run(ctx_for(root, state)) == []

    write_log(root, [*lines, classic(NOW - 60, "sshd", accepted("192.0.2.200", "alice"))])
    second = logins.run(ctx_for(root, state))
    assert checks(second) == [("logins.new_address", "192.0.2.200")]
    assert second[0].severity is Severity.MEDIUM and second[0].data["user"] == "alice"
    assert "192.0.2.200" in json.loads((state / "audit/known-logins.json").read_text())["addresses"]
    assert logins.run(ctx_for(root, state)) == []  # reported once


def test_known_addresses_that_cannot_be_saved_are_info(tmp_path):
    root, state = tmp_path / "root", tmp_path / "state"
    write_log(root, [classic(NOW - 60, "sshd", accepted("203.0.113.5"))])
    state.mkdir()
    (state / "audit").write_text("a file where the folder should be")
    found = logins.run(ctx_for(root, state))
    assert checks(found) == [
        ("logins.new_address", "learned"),
        ("logins.unreadable", str(state / "audit/known-logins.json")),
    ]
    assert found[1].title.startswith("the known login addresses could not be saved")


def test_a_broken_known_file_is_learned_again(tmp_path):
    root, state = tmp_path / "root", tmp_path / "state"
    write_log(root, [classic(NOW - 60, "sshd", accepted("203.0.113.5"))])
    (state / "audit").mkdir(parents=True)
    (state / "audit/known-logins.json").write_text("{not json")
    found = logins.run(ctx_for(root, state))
    assert checks(found) == [("logins.new_address", "learned")]
    assert "learned again" in found[0].title


def test_missing_and_unreadable_records_are_info(tmp_path):
    found = logins.run(ctx_for(tmp_path, None))
    assert [(f.check, f.severity) for f in found] == [("logins.unreadable", Severity.INFO)]
    (tmp_path / "var/log/auth.log").mkdir(parents=True)  # a folder where the file should be
    found = logins.run(ctx_for(tmp_path, None))
    assert checks(found) == [("logins.unreadable", "/var/log/auth.log")]


def test_detector_reports_a_burst_once_until_it_ends():
    detector = logins.Detector(None)

    def fail(at: float, port: int):
        return LoginEvent(at, "failed", "root", "203.0.113.66", "password", "auth.log", "x", port)

    got = [f.check for i in range(15) for f in detector.feed(fail(1000.0 + i, 40000 + i))]
    assert got == ["logins.failed_burst"]
    later = [f.check for i in range(10) for f in detector.feed(fail(5000.0 + i, 41000 + i))]
    assert later == ["logins.failed_burst"]  # a new burst after a quiet hour
    assert detector.feed(LoginEvent(6000.0, "root", "root", "", "", "wtmp", "tty1"))[0].subject == "local"
    # a login from the address after its burst: once more, critical; a second login is not
    ok = LoginEvent(6100.0, "accepted", "root", "203.0.113.66", "publickey", "auth.log", "y")
    assert [(f.check, f.severity) for f in detector.feed(ok)] == [("logins.failed_burst", Severity.CRITICAL)]
    assert detector.feed(ok) == []


def test_journal_commands(tmp_path):
    assert journal_command(tmp_path, since=NOW)[:2] == ["journalctl", f"--directory={tmp_path}"]
    assert f"--since=@{int(NOW)}" in journal_command(tmp_path, since=NOW)
    follow = journal_command(None, follow=True, since=NOW)
    assert follow[1] == "-o" and "-f" in follow and f"--since=@{int(NOW)}" in follow
    again = journal_command(tmp_path, follow=True, since=NOW, after="s=1;i=4")
    assert "--after-cursor=s=1;i=4" in again and not any(a.startswith("--since") for a in again)
    assert journal_command(tmp_path, follow=True)[-8:-7] == ["0"]  # -n 0: from now on
    matches = journal_command(tmp_path)[-7:]
    assert matches[::2] == [f"SYSLOG_IDENTIFIER={p}" for p in ("sshd", "sshd-session", "su", "sudo")]
    assert journal_dir(tmp_path) is None
    assert is_host(Path("/")) and not is_host(tmp_path)
    (tmp_path / "run/log/journal").mkdir(parents=True)
    assert journal_dir(tmp_path) is None  # the volatile journal only counts on this host
    (tmp_path / "var/log/journal").mkdir(parents=True)
    assert journal_dir(tmp_path) == tmp_path / "var/log/journal"


def fake_journalctl(tmp_path: Path, monkeypatch, script: str) -> Path:
    """A root with a journal folder, and a journalctl on PATH that runs ``script``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "journalctl"
    tool.write_text("#!/bin/sh\n" + script + "\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    root = tmp_path / "root"
    (root / "var/log/journal").mkdir(parents=True)
    return root


def test_a_failing_or_hanging_journalctl_is_info(tmp_path, monkeypatch):
    root = fake_journalctl(tmp_path, monkeypatch, 'echo "Failed to open journal: Bad message" >&2; exit 1')
    events, problems = read_journal(root, since=NOW - 60)
    assert events == []
    assert [p.reason for p in problems] == ["journalctl exited 1: Failed to open journal: Bad message"]
    assert checks(logins.run(ctx_for(root, None))) == [("logins.unreadable", "/var/log/journal")]

    monkeypatch.setattr(loginsrc, "JOURNAL_TIMEOUT", 0.3)
    (tmp_path / "bin/journalctl").write_text("#!/bin/sh\nexec sleep 30\n")
    started = time.monotonic()
    events, problems = read_journal(root, since=NOW - 60)
    assert time.monotonic() - started < 5
    assert [p.reason for p in problems] == ["journalctl exited -9: stopped after 0.3 s"]


def test_journalctl_output_is_read_as_it_streams(tmp_path, monkeypatch):
    lines = [
        json.dumps(
            {
                "__REALTIME_TIMESTAMP": str(int((NOW - i) * 1e6)),
                "SYSLOG_IDENTIFIER": "sshd",
                "MESSAGE": failed("203.0.113.8", port=40000 + i),
            }
        )
        for i in range(3)
    ]
    root = fake_journalctl(tmp_path, monkeypatch, "cat <<'EOF'\n" + "\n".join(lines) + "\nnot json\nEOF")
    events, problems = read_journal(root, since=NOW - 3600, keep=lambda e: e.port != 40001)
    assert problems == []
    assert [e.port for e in events] == [40000, 40002]


def test_two_writers_of_the_known_addresses_keep_each_others(tmp_path):
    def login(addr: str) -> LoginEvent:
        return LoginEvent(NOW, "accepted", "alice", addr, "publickey", "auth.log", "x")

    (tmp_path / "audit").mkdir()
    (tmp_path / "audit/known-logins.json").write_text(
        json.dumps({"version": 1, "addresses": {"192.0.2.1": {"first": "garbage", "users": None}}})
    )
    audit, daemon = logins.KnownAddresses.load(tmp_path), logins.KnownAddresses.load(tmp_path)
    assert audit.add(login("203.0.113.5")) and not audit.add(login("192.0.2.1"))
    assert audit.addresses["192.0.2.1"]["first"] == NOW  # a damaged value is replaced
    audit.save()
    daemon.add(login("198.51.100.4"))
    daemon.save()
    saved = json.loads((tmp_path / "audit/known-logins.json").read_text())["addresses"]
    assert sorted(saved) == ["192.0.2.1", "198.51.100.4", "203.0.113.5"]


def test_the_detector_stays_bounded_under_a_distributed_brute_force() -> None:
    from clawpen.assess import logins as mod
    from clawpen.assess.loginsrc import LoginEvent as Ev

    detector = mod.Detector(None)
    start = 1_800_000_000.0
    for i in range(60_000):  # one failure each from 60,000 addresses over ~17 hours
        detector.feed(Ev(start + i, "failed", "admin", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                         "password", "auth.log", "/var/log/auth.log:1", 40000))  # fmt: skip
    assert len(detector._failed) <= mod.MAX_TRACKED + 1
    # a burst is still found after the pruning (positive control)
    found = []
    for n in range(mod.BURST_COUNT):
        found += detector.feed(Ev(start + 70_000 + n, "failed", "root", "203.0.113.9", "password",
                                  "auth.log", "/var/log/auth.log:2", 50000 + n))  # fmt: skip
    assert [f.check for f in found] == ["logins.failed_burst"]
