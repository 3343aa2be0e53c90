"""The login records of a system, read from a root folder: auth.log (and its rotations), the
systemd journal (through ``journalctl --directory``) and wtmp/btmp (the utmp records).

Every reader yields :class:`LoginEvent` records and never raises on a missing or damaged file:
what could not be read is returned as a :class:`Unreadable` note (the audit turns it into an
INFO finding). The same sshd messages are parsed whatever the source (:func:`parse_message`).
"""

from __future__ import annotations

import contextlib
import gzip
import ipaddress
import json
import re
import shutil
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

Kind = Literal["failed", "accepted", "invalid_user", "root"]
Source = Literal["auth.log", "journal", "wtmp", "btmp"]

AUTH_LOG = "/var/log/auth.log"
JOURNAL_DIR = "/var/log/journal"
WTMP = "/var/log/wtmp"
BTMP = "/var/log/btmp"
JOURNAL_FIELDS = "MESSAGE,SYSLOG_IDENTIFIER,_COMM,_PID,SYSLOG_PID"
JOURNAL_TIMEOUT = 60.0  # seconds journalctl may take to print a day of sshd messages
SKEW = 86400.0  # a year-less time up to this far past "now" is still this year (clock skew)

# the programs whose messages are read (sshd-session: OpenSSH 9.8 and later)
SSHD = ("sshd", "sshd-session")
LOCAL_AUTH = ("su", "sudo")
JOURNAL_MATCHES = [
    "SYSLOG_IDENTIFIER=sshd",
    "+",
    "SYSLOG_IDENTIFIER=sshd-session",
    "+",
    "SYSLOG_IDENTIFIER=su",
    "+",
    "SYSLOG_IDENTIFIER=sudo",
]


@dataclass(frozen=True)
class LoginEvent:
    """One login attempt. ``kind``: ``failed`` (a wrong password or key, or a failed su/sudo),
    ``accepted``, ``invalid_user`` (a user name the system does not know) or ``root`` (an
    accepted login as root). ``address`` is "" for a local login (console, su, sudo);
    ``where`` points at the record (``/var/log/auth.log:12``); ``port`` is the client's port
    when the record names it (it tells one connection's lines apart)."""

    at: float
    kind: Kind
    user: str
    address: str
    method: str
    source: Source
    where: str
    port: int | None = None

    @property
    def ok(self) -> bool:
        """Whether the login succeeded."""
        return self.kind in ("accepted", "root")


Keep = Callable[[LoginEvent], bool]


@dataclass(frozen=True)
class Unreadable:
    """A source that exists but could not be read: what and why."""

    where: str
    reason: str


# --- the messages -------------------------------------------------------------------------

_FAILED = re.compile(
    r"^Failed (?P<method>\S+) for (?:invalid user )?(?P<user>.*?) from (?P<addr>\S+) port (?P<port>\d+)"
)
_ACCEPTED = re.compile(r"^Accepted (?P<method>\S+) for (?P<user>\S+) from (?P<addr>\S+) port (?P<port>\d+)")
_INVALID = re.compile(r"^Invalid user (?P<user>.*?) from (?P<addr>\S+?)(?: port (?P<port>\d+))?\s*$")
_PAM_FAIL = re.compile(r"^pam_unix\((?P<svc>su|su-l|sudo):auth\): authentication failure;(?P<rest>.*)$")
_REPEATED = re.compile(r"^message repeated (?P<n>\d+) times: \[ ?(?P<msg>.*?) ?\]$")
_FIELD = re.compile(r"(\w+)=(\S*)")


@dataclass(frozen=True)
class Parsed:
    """What a message says, before its time and source are known."""

    kind: Kind
    user: str
    address: str
    method: str
    port: int | None = None
    count: int = 1


def parse_message(prog: str, msg: str) -> Parsed | None:
    """The login attempt ``msg`` (a message of program ``prog``) reports, or None."""
    msg = msg.strip()
    repeated = _REPEATED.match(msg)  # rsyslog's "message repeated 5 times: [ ... ]"
    if repeated:
        inner = parse_message(prog, repeated["msg"])
        if inner is None:
            return None
        return Parsed(inner.kind, inner.user, inner.address, inner.method, inner.port, int(repeated["n"]))
    if prog in SSHD:
        m = _ACCEPTED.match(msg)
        if m:
            kind: Kind = "root" if m["user"] == "root" else "accepted"
            return Parsed(kind, m["user"], m["addr"], m["method"], int(m["port"]))
        m = _FAILED.match(msg)
        if m:
            return Parsed("failed", m["user"], m["addr"], m["method"], int(m["port"]))
        m = _INVALID.match(msg)
        if m:
            port = int(m["port"]) if m["port"] else None
            return Parsed("invalid_user", m["user"], m["addr"], "", port)
        return None
    if prog in LOCAL_AUTH:
        m = _PAM_FAIL.match(msg)
        if m:
            fields = dict(_FIELD.findall(m["rest"]))
            who = fields.get("ruser") or fields.get("logname") or fields.get("user", "")
            return Parsed("failed", who, fields.get("rhost", ""), m["svc"])
    return None


# --- auth.log ---------------------------------------------------------------------------------

_CLASSIC = re.compile(
    r"^(?P<mon>[A-Z][a-z]{2}) +(?P<day>\d{1,2}) (?P<time>\d\d:\d\d:\d\d) \S+ "
    r"(?P<prog>[^\s:\[]+)(?:\[\d+\])?: (?P<msg>.*)$"
)
_RFC3339 = re.compile(r"^(?P<ts>\d{4}-\d\d-\d\dT\S+) \S+ (?P<prog>[^\s:\[]+)(?:\[\d+\])?: (?P<msg>.*)$")
_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    )
}


def system_zone(root: Path) -> tzinfo:
    """The time zone of the system at ``root`` (its /etc/localtime), UTC without one."""
    with contextlib.suppress(OSError, ValueError), (root / "etc/localtime").open("rb") as fh:
        return ZoneInfo.from_file(fh)
    return UTC


def line_time(line: str, now: float, zone: tzinfo) -> tuple[float, str, str] | None:
    """``(time, program, message)`` of a syslog line in either format, or None.

    A classic time (``Dec  2 07:00:01``, no year, local time of ``zone``) gets the latest year
    that does not put it in the future (by more than :data:`SKEW`) as seen from ``now``."""
    m = _RFC3339.match(line)
    if m:
        try:
            when = datetime.fromisoformat(m["ts"])
        except ValueError:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=zone)
        return when.timestamp(), m["prog"], m["msg"]
    m = _CLASSIC.match(line)
    if m is None or m["mon"] not in _MONTHS:
        return None
    year = datetime.fromtimestamp(now, zone).year
    hh, mm, ss = (int(x) for x in m["time"].split(":"))
    for y in (year, year - 1):
        try:
            at = datetime(y, _MONTHS[m["mon"]], int(m["day"]), hh, mm, ss, tzinfo=zone).timestamp()
        except ValueError:  # Feb 29 in a year without one
            continue
        if at <= now + SKEW:
            return at, m["prog"], m["msg"]
    return None


def parse_lines(
    lines: Iterable[str], *, now: float, zone: tzinfo, where: str, first_line: int = 1
) -> Iterator[LoginEvent]:
    """The login events of auth.log lines (``where`` is the file's name as the system sees it)."""
    for number, line in enumerate(lines, first_line):
        head = line_time(line.rstrip("\n"), now, zone)
        if head is None:
            continue
        at, prog, msg = head
        parsed = parse_message(prog, msg)
        if parsed is None:
            continue
        for _ in range(parsed.count):
            yield LoginEvent(
                at,
                parsed.kind,
                parsed.user,
                parsed.address,
                parsed.method,
                "auth.log",
                f"{where}:{number}",
                parsed.port,
            )


def auth_log_files(root: Path) -> list[Path]:
    """auth.log and its rotations (``auth.log.1``, ``auth.log.2.gz``...), oldest first."""
    base = root / AUTH_LOG.lstrip("/")
    rotated: list[tuple[int, Path]] = []
    with contextlib.suppress(OSError):
        for path in base.parent.glob(base.name + ".*"):
            number = path.name[len(base.name) + 1 :].removesuffix(".gz")
            if number.isdigit():
                rotated.append((int(number), path))
    out = [p for _, p in sorted(rotated, reverse=True)]
    if base.exists():
        out.append(base)
    return out


def read_auth_logs(
    root: Path, *, now: float, since: float = 0.0, keep: Keep | None = None
) -> tuple[list[LoginEvent], list[Unreadable]]:
    """The login events in auth.log and its rotations (files older than ``since`` skipped;
    only the events ``keep`` accepts, when given)."""
    zone = system_zone(root)
    events: list[LoginEvent] = []
    problems: list[Unreadable] = []
    for path in auth_log_files(root):
        shown = "/" + str(path.relative_to(root)).lstrip("/")
        try:
            if path.stat().st_mtime < since:
                continue
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
                events.extend(filter(keep, parse_lines(fh, now=now, zone=zone, where=shown)))
        except (OSError, EOFError, gzip.BadGzipFile) as err:
            problems.append(Unreadable(shown, reason(err)))
    return events, problems


def reason(err: BaseException) -> str:
    """An OS error's short text."""
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


# --- the journal ------------------------------------------------------------------------------


def journal_dir(root: Path) -> Path | None:
    """The journal folder of the system at ``root`` (persistent, or for this host also the
    volatile /run/log/journal), or None when it has none."""
    folders = [JOURNAL_DIR, "/run/log/journal"] if is_host(root) else [JOURNAL_DIR]
    for folder in folders:
        path = root / folder.lstrip("/")
        if path.is_dir():
            return path
    return None


def is_host(root: Path) -> bool:
    """Whether ``root`` is this host's own root (its journal is then read without --directory:
    persistent and volatile parts together)."""
    try:
        return root.resolve() == Path("/")
    except OSError:
        return False


def journal_command(
    directory: Path | None, *, since: float | None = None, follow: bool = False, after: str | None = None
) -> list[str]:
    """The journalctl command that prints sshd's (and su's, sudo's) messages as JSON lines:
    since a time, and with ``follow`` the new ones as they come (after the entry ``after``, a
    cursor, when given; else since ``since``; else from now). ``directory`` None: this host's
    journal."""
    argv = [
        "journalctl",
        *([f"--directory={directory}"] if directory else []),
        "-o",
        "json",
        "--no-pager",
        "-q",
        f"--output-fields={JOURNAL_FIELDS}",  # (the cursor and the times come always)
    ]
    if follow:
        argv.append("-f")
        if after:
            argv.append(f"--after-cursor={after}")
        elif since is None:
            argv += ["-n", "0"]
    if since is not None and not after:
        argv.append(f"--since=@{int(since)}")
    return argv + JOURNAL_MATCHES


def journal_entry(line: str | bytes) -> dict[str, object] | None:
    """One line of ``journalctl -o json`` as a dict, or None."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def journal_events(entry: dict[str, object]) -> list[LoginEvent]:
    """The login events of one journal entry (none for other messages)."""
    prog = _text(entry.get("SYSLOG_IDENTIFIER") or entry.get("_COMM") or "")
    parsed = parse_message(prog, _text(entry.get("MESSAGE", "")))
    if parsed is None:
        return []
    try:
        at = int(str(entry["__REALTIME_TIMESTAMP"])) / 1e6
    except (KeyError, ValueError):
        return []
    where = f"journal:{prog}[{_text(entry.get('_PID') or entry.get('SYSLOG_PID') or '?')}]"
    event = LoginEvent(
        at, parsed.kind, parsed.user, parsed.address, parsed.method, "journal", where, parsed.port
    )
    return [event] * parsed.count


def _text(value: object) -> str:
    """A journal field as text (binary fields come as lists of byte values)."""
    if isinstance(value, list):
        try:
            return bytes(value).decode("utf-8", "replace")
        except (TypeError, ValueError):
            return ""
    return str(value)


def read_journal(
    root: Path, *, since: float, keep: Keep | None = None
) -> tuple[list[LoginEvent], list[Unreadable]]:
    """The login events of the journal under ``root`` since ``since`` (none without a journal;
    only those ``keep`` accepts, when given). journalctl's output is read as it comes: a month
    of a guessing attack is many lines."""
    directory = journal_dir(root)
    if directory is None:
        return [], []
    if shutil.which("journalctl") is None:
        return [], [Unreadable(JOURNAL_DIR, "journalctl is not installed (apt-get install systemd)")]
    argv = journal_command(None if is_host(root) else directory, since=since)
    events: list[LoginEvent] = []
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors)
        except OSError as err:
            return [], [Unreadable(JOURNAL_DIR, f"journalctl failed: {err}")]
        timer = threading.Timer(JOURNAL_TIMEOUT, proc.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                entry = journal_entry(line)
                if entry is None:
                    continue
                for event in journal_events(entry):  # --since seeks: an older entry may follow
                    if event.at >= since and (keep is None or keep(event)):
                        events.append(event)
            code = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if code != 0 and not events:
            errors.seek(0)
            text = errors.read(65536).decode("utf-8", "replace").strip().splitlines()
            why = f"stopped after {JOURNAL_TIMEOUT:g} s" if code == -9 else text[-1] if text else ""
            return [], [Unreadable(JOURNAL_DIR, f"journalctl exited {code}: {why}")]
    return events, []


# --- wtmp and btmp ----------------------------------------------------------------------------

# struct utmp of glibc on x86-64 (and every 64-bit Linux but s390x): type, pid, line, id, user,
# host, exit status, session, tv_sec, tv_usec, addr_v6, reserved
UTMP = struct.Struct("<h2xi32s4s32s256shhiii16s20x")
USER_PROCESS = 7


@dataclass(frozen=True)
class UtmpRecord:
    type: int
    pid: int
    line: str
    id: str
    user: str
    host: str
    at: float
    address: str


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def utmp_records(data: bytes) -> Iterator[UtmpRecord]:
    """The records of a wtmp/btmp file's bytes (a torn last record is left out)."""
    for offset in range(0, len(data) - UTMP.size + 1, UTMP.size):
        typ, pid, line, ident, user, host, _term, _exit, _sess, sec, usec, v6 = UTMP.unpack_from(data, offset)
        yield UtmpRecord(
            typ, pid, _cstr(line), _cstr(ident), _cstr(user), _cstr(host), sec + usec / 1e6, _v6_address(v6)
        )


def _v6_address(raw: bytes) -> str:
    if raw == bytes(16):
        return ""
    if raw[4:] == bytes(12):  # an IPv4 address in the first word
        return str(ipaddress.IPv4Address(raw[:4]))
    return str(ipaddress.IPv6Address(raw))


def read_utmp(
    root: Path, name: Literal["wtmp", "btmp"], *, since: float = 0.0
) -> tuple[list[LoginEvent], list[Unreadable]]:
    """Accepted logins (USER_PROCESS records of wtmp) or failed ones (every btmp record)."""
    absolute = WTMP if name == "wtmp" else BTMP
    path = root / absolute.lstrip("/")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], []
    except OSError as err:
        return [], [Unreadable(absolute, reason(err))]
    events: list[LoginEvent] = []
    for index, rec in enumerate(utmp_records(data)):
        if not rec.user or rec.at < since or (name == "wtmp" and rec.type != USER_PROCESS):
            continue
        address = rec.host or rec.address
        if name == "wtmp":
            kind: Kind = "root" if rec.user == "root" else "accepted"
        else:
            kind = "failed"
        events.append(
            LoginEvent(rec.at, kind, rec.user, address, "", name, f"{absolute} record {index} ({rec.line})")
        )
    problems = (
        []
        if len(data) % UTMP.size == 0
        else [Unreadable(absolute, "its size is not a whole number of records")]
    )
    return events, problems


# --- all of them ------------------------------------------------------------------------------

MATCH_WINDOW = 2.0  # seconds between two sources' records of the same login


def merge(events: Iterable[LoginEvent]) -> list[LoginEvent]:
    """Events of every source in time order, a login recorded by two sources (auth.log and the
    journal, or a log and wtmp/btmp) kept once: an event is dropped when an event of another
    source with the same outcome, user and address lies within :data:`MATCH_WINDOW` and was not
    matched yet. Events of one source are never merged with each other."""
    out: list[LoginEvent] = []
    pending: dict[tuple[bool, str, str], list[tuple[float, int, set[str]]]] = {}
    for event in sorted(events, key=lambda e: e.at):
        key = (event.ok, event.user, event.address)
        recent = [r for r in pending.get(key, []) if event.at - r[0] <= MATCH_WINDOW]
        pending[key] = recent
        twin = next(((i, seen) for _, i, seen in recent if event.source not in seen), None)
        if twin is None:
            recent.append((event.at, len(out), {event.source}))
            out.append(event)
            continue
        index, seen = twin
        seen.add(event.source)
        if not out[index].method and event.method:  # wtmp knows no method: the log's record
            out[index] = event
    return sorted(out, key=lambda e: e.at)
