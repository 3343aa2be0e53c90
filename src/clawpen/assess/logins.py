"""The login checks of ``clawpen audit``: password-guessing bursts, root logins, logins from new
addresses and password logins, over the last day of auth.log, the journal and wtmp/btmp.

The addresses logins came from are kept in ``<state>/audit/known-logins.json``: the first run
learns every address it finds (no finding for them, one INFO finding saying so); later runs
report an accepted login from any other address once and then add it. The rules are shared
with the real-time follower (:mod:`clawpen.assess.loginfollow`): :class:`Detector`.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clawpen.assess.loginsrc import (
    LoginEvent,
    Unreadable,
    journal_dir,
    merge,
    read_auth_logs,
    read_journal,
    read_utmp,
    reason,
)
from clawpen.assess.model import AuditContext, AuditFinding, CheckInfo, Severity, finding
from clawpen.fsutil import write_atomic

WINDOW = 86400.0  # the audit looks at the last day of logins
LEARN_SPAN = 30 * 86400.0  # the first run learns the addresses of this much history
BURST_COUNT = 10  # failed logins from one address ...
BURST_WINDOW = 600.0  # ... within this many seconds make a burst
PASSWORD_METHODS = ("password", "keyboard-interactive", "keyboard-interactive/pam")
KNOWN_FILE = "audit/known-logins.json"

_PRACTICE = "deployment practice 13 (unusual logins audited in real time)"
FAILED_BURST = CheckInfo(
    "logins.failed_burst", "logins", "Bursts of failed logins from one address", _PRACTICE
)
ROOT_LOGIN = CheckInfo(
    "logins.root_login",
    "logins",
    "Logins as root",
    "CIS Debian Linux 12 benchmark: Ensure sshd PermitRootLogin is disabled; deployment practice 11",
)
NEW_ADDRESS = CheckInfo("logins.new_address", "logins", "Logins from an address never seen before", _PRACTICE)
PASSWORD_LOGIN = CheckInfo(
    "logins.password_login",
    "logins",
    "Logins with a password instead of a key",
    "deployment practice 11 (a dedicated user with password login disabled)",
)
UNREADABLE = CheckInfo("logins.unreadable", "logins", "Login records that could not be read", _PRACTICE)
CHECKS: tuple[CheckInfo, ...] = (FAILED_BURST, ROOT_LOGIN, NEW_ADDRESS, PASSWORD_LOGIN, UNREADABLE)

SSHD_CONFIG = "/etc/ssh/sshd_config"


def stamp(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


# --- the addresses logins came from -----------------------------------------------------------


@dataclass
class KnownAddresses:
    """The addresses accepted logins came from: address -> first seen, last seen, users."""

    path: Path
    addresses: dict[str, dict[str, Any]] = field(default_factory=dict)
    existed: bool = False
    problem: str = ""  # why the file could not be read (it is then learned again)

    @classmethod
    def load(cls, state_dir: Path) -> KnownAddresses:
        path = state_dir / KNOWN_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            addresses = raw["addresses"]
            if not isinstance(addresses, dict):
                raise ValueError("addresses is not a table")
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError, KeyError, TypeError) as err:
            return cls(path, problem=f"{path}: {err}")
        return cls(path, {str(k): dict(v) for k, v in addresses.items() if isinstance(v, dict)}, existed=True)

    def __contains__(self, address: str) -> bool:
        return address in self.addresses

    def add(self, event: LoginEvent) -> bool:
        """Record ``event``'s address; True when it was not known."""
        entry = self.addresses.get(event.address)
        if entry is None:
            self.addresses[event.address] = {"first": event.at, "last": event.at, "users": [event.user]}
            return True
        entry["first"] = min(_number(entry.get("first"), event.at), event.at)
        entry["last"] = max(_number(entry.get("last"), event.at), event.at)
        users = list(entry.get("users") or [])
        if event.user not in users:
            entry["users"] = [*users, event.user][-20:]
        return False

    def save(self) -> None:
        """Write the file, with the addresses another writer (the audit, the daemon's follower)
        added since this one read it."""
        for address, entry in KnownAddresses.load(self.path.parent.parent).addresses.items():
            self.addresses.setdefault(address, entry)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = {"version": 1, "addresses": dict(sorted(self.addresses.items()))}
        write_atomic(self.path, (json.dumps(data, indent=1) + "\n").encode(), mode=0o600)
        self.existed = True


def _number(value: object, default: float) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default


# --- the findings of one event or group of events -------------------------------------------


def burst_finding(
    address: str,
    times: list[float],
    users: Iterable[str],
    where: str,
    total: int,
    *,
    then: LoginEvent | None = None,
) -> AuditFinding:
    """A burst of failures from ``address``; CRITICAL when a login from it succeeded after
    (``then``): the guessing may have worked."""
    names = sorted(set(users))
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    title = (
        f"{len(times)} failed logins from {address} within {int(BURST_WINDOW // 60)} minutes"
        f" (from {stamp(times[0])}; users {shown})"
    )
    why = (
        "Many failed logins from one address in minutes are a password-guessing attack: one guess"
        " that works gives a shell on the bot's host."
    )
    family = "ip6" if ":" in address else "ip"
    fix = (
        f"Turn password login off ('PasswordAuthentication no' in {SSHD_CONFIG}; `clawpen host harden"
        " apply` does it) and allow SSH only from the admin address in [host.firewall]; to block this"
        f" address now (with [host.firewall] applied): nft insert rule inet clawpen_host input"
        f" {family} saddr {address} drop"
    )
    severity = Severity.HIGH
    data: dict[str, Any] = {
        "count": len(times),
        "failed_in_window": total,
        "first": times[0],
        "last": times[-1],
        "users": names[:20],
    }
    if then is not None:
        severity = Severity.CRITICAL
        title += f", then {then.user} logged in from it at {stamp(then.at)}"
        why += " A login from the same address succeeded afterwards: a guess may have worked."
        fix = (
            f"Find out now whether {then.user}'s login at {stamp(then.at)} was a person you know"
            f" (last -i {then.user}; end its session with loginctl terminate-user {then.user}),"
            f" change {then.user}'s password, then: {fix}"
        )
        data |= {"then": {"user": then.user, "at": then.at, "method": then.method, "where": then.where}}
    return finding(FAILED_BURST, severity, title, why, fix, where=where, subject=address, data=data)


def root_finding(address: str, events: list[LoginEvent]) -> AuditFinding:
    last = events[-1]
    origin = f"from {address}" if address else f"locally ({last.where})"
    return finding(
        ROOT_LOGIN,
        Severity.HIGH,
        f"root logged in {origin}"
        + (f" {len(events)} times" if len(events) > 1 else "")
        + f", last at {stamp(last.at)}",
        "A root login leaves no trace of which person acted and gives every right at once; a stolen"
        " root key or password owns the host.",
        f"Set 'PermitRootLogin no' in {SSHD_CONFIG} (`clawpen host harden apply` does it), log in as"
        " the operator user and use sudo for the one command that needs it.",
        where=last.where,
        subject=address or "local",
        data={"count": len(events), "last": last.at, "method": last.method, "source": last.source},
    )


def new_address_finding(event: LoginEvent) -> AuditFinding:
    return finding(
        NEW_ADDRESS,
        Severity.MEDIUM,
        f"{event.user} logged in from {event.address}, an address never seen before, at {stamp(event.at)}",
        "A login from an unknown address is how a stolen key or password shows first; only the"
        " person who logged in can tell whether it was them.",
        f"Ask {event.user} whether this was them; if not, remove the key from"
        f" ~{event.user}/.ssh/authorized_keys, change the password and allow SSH only from the"
        " admin address in [host.firewall].",
        where=event.where,
        subject=event.address,
        data={"user": event.user, "at": event.at, "method": event.method, "source": event.source},
    )


def password_finding(user: str, events: list[LoginEvent]) -> AuditFinding:
    addresses = sorted({e.address or "local" for e in events})
    return finding(
        PASSWORD_LOGIN,
        Severity.MEDIUM,
        f"{user} logged in with a password"
        + (f" {len(events)} times" if len(events) > 1 else "")
        + f" (from {', '.join(addresses[:5])}), last at {stamp(events[-1].at)}",
        "A password can be guessed or phished; the practice is a key per person and password login"
        " off, so failed guesses cannot succeed.",
        f"Give {user} an SSH key (ssh-copy-id), then set 'PasswordAuthentication no' and"
        f" 'KbdInteractiveAuthentication no' in {SSHD_CONFIG} (`clawpen host harden apply` does it).",
        where=events[-1].where,
        subject=user,
        data={"count": len(events), "addresses": addresses, "last": events[-1].at},
    )


def unreadable_finding(problem: Unreadable, what: str = "login records could not be read") -> AuditFinding:
    return finding(
        UNREADABLE,
        Severity.INFO,
        f"{what}: {problem.where}: {problem.reason}",
        "Logins that cannot be read cannot be audited: an attack there goes unseen.",
        f"Make {problem.where} readable by root (or install what the reason names) and audit again.",
        where=problem.where,
        subject=problem.where,
    )


def is_password(event: LoginEvent) -> bool:
    return event.method in PASSWORD_METHODS


# --- the rules ------------------------------------------------------------------------------


MAX_TRACKED = 20_000  # addresses the detector holds before it forgets the quiet ones


class Detector:
    """The login rules over events fed in time order: what the follower reports as it goes.

    A burst is reported once when an address reaches :data:`BURST_COUNT` failures within
    :data:`BURST_WINDOW`, and again only after it fell below; a login from that address within
    :data:`WINDOW` after its burst is reported once more, CRITICAL; every root login, every accepted
    login from an unknown address and every password login is reported. ``known`` is updated
    (and saved) when a new address is seen; None: no new-address rule."""

    def __init__(self, known: KnownAddresses | None) -> None:
        self.known = known
        self._failed: dict[str, deque[tuple[float, str]]] = {}
        self._bursting: set[str] = set()
        self._bursts: dict[str, tuple[list[float], list[str]]] = {}  # the last burst of an address
        self._invalid: dict[tuple[str, int], float] = {}  # connections whose invalid user was counted

    def counts(self, event: LoginEvent) -> bool:
        """Whether ``event`` is a failed attempt to count (the first "Failed ... for invalid
        user" line of a connection whose "Invalid user" line was counted is the same attempt)."""
        if event.ok or not event.address:
            return False
        if event.port is not None:
            key = (event.address, event.port)
            if event.kind == "invalid_user":
                self._invalid[key] = event.at
            elif self._invalid.pop(key, None) is not None:
                return False
            if len(self._invalid) > 10_000:  # old connections whose failure line never came
                for old in sorted(self._invalid, key=self._invalid.__getitem__)[:5_000]:
                    del self._invalid[old]
        return True

    def failures(self, address: str, at: float) -> deque[tuple[float, str]]:
        """The counted failures of ``address`` within the burst window ending at ``at``."""
        recent = self._failed.setdefault(address, deque())
        while recent and recent[0][0] <= at - BURST_WINDOW:
            recent.popleft()
        return recent

    def _prune(self, at: float) -> None:
        """Forget addresses with no failure in the burst window and bursts older than the
        window that follows them: a botnet's thousands of addresses over weeks stay bounded."""
        for address in [a for a, q in self._failed.items() if not q or q[-1][0] <= at - BURST_WINDOW]:
            del self._failed[address]
            self._bursting.discard(address)
        for address in [a for a, (times, _) in self._bursts.items() if at - times[0] > WINDOW]:
            del self._bursts[address]

    def feed(self, event: LoginEvent) -> list[AuditFinding]:
        out: list[AuditFinding] = []
        if len(self._failed) + len(self._bursts) > MAX_TRACKED:
            self._prune(event.at)
        if event.address in self._bursting and len(self.failures(event.address, event.at)) < BURST_COUNT:
            self._bursting.discard(event.address)
        if self.counts(event):
            recent = self.failures(event.address, event.at)
            recent.append((event.at, event.user))
            if len(recent) >= BURST_COUNT and event.address not in self._bursting:
                self._bursting.add(event.address)
                times, users = [t for t, _ in recent], [u for _, u in recent]
                self._bursts[event.address] = (times, users)
                out.append(burst_finding(event.address, times, users, event.where, len(times)))
        if not event.ok:
            return out
        burst = self._bursts.pop(event.address, None)
        if burst is not None and event.at - burst[0][0] <= WINDOW:  # after a burst: it may have worked
            times, users = burst
            out.append(burst_finding(event.address, times, users, event.where, len(times), then=event))
        if event.kind == "root":
            out.append(root_finding(event.address, [event]))
        if is_password(event):
            out.append(password_finding(event.user, [event]))
        if self.known is not None and event.address:
            if event.address not in self.known:
                out.append(new_address_finding(event))
            self.known.add(event)
            self.known.save()
        return out


def bursts(events: list[LoginEvent]) -> list[AuditFinding]:
    """One finding per address whose failures reached a burst: its largest burst."""
    detector = Detector(None)
    best: dict[str, tuple[list[float], list[str], str]] = {}
    totals: dict[str, int] = {}
    for event in events:
        if not detector.counts(event):
            continue
        totals[event.address] = totals.get(event.address, 0) + 1
        recent = detector.failures(event.address, event.at)
        recent.append((event.at, event.user))
        if len(recent) >= BURST_COUNT and len(recent) > len(best.get(event.address, ([], [], ""))[0]):
            best[event.address] = ([t for t, _ in recent], [u for _, u in recent], event.where)
    out = []
    for address, (times, users, where) in sorted(best.items()):
        then = next((e for e in events if e.ok and e.address == address and e.at >= times[0]), None)
        out.append(burst_finding(address, times, users, where, totals[address], then=then))
    return out


def grouped(events: Iterable[LoginEvent], key: str) -> dict[str, list[LoginEvent]]:
    out: dict[str, list[LoginEvent]] = {}
    for event in events:
        out.setdefault(getattr(event, key), []).append(event)
    return out


# --- the audit ------------------------------------------------------------------------------


def collect(
    root: Path, *, now: float, since: float, all_from: float | None = None
) -> tuple[list[LoginEvent], list[Unreadable]]:
    """The login events of every source under ``root`` since ``since``, each login once; with
    ``all_from``, the failures before that time are left out (only accepted logins are
    learned from older records)."""

    def keep(event: LoginEvent) -> bool:
        return all_from is None or event.ok or event.at >= all_from

    events: list[LoginEvent] = []
    problems: list[Unreadable] = []
    for got, bad in (
        read_auth_logs(root, now=now, since=since, keep=keep),
        read_journal(root, since=since, keep=keep),
        read_utmp(root, "wtmp", since=since),
        read_utmp(root, "btmp", since=since),
    ):
        events.extend(got)
        problems.extend(bad)
    return merge(e for e in events if since <= e.at and keep(e)), problems


def _has_records(root: Path) -> bool:
    var_log = root / "var/log"
    names = ("auth.log", "wtmp", "btmp")
    return journal_dir(root) is not None or any((var_log / n).exists() for n in names)


def run(ctx: AuditContext) -> list[AuditFinding]:
    start = ctx.now - WINDOW
    known = KnownAddresses.load(ctx.state_dir) if ctx.state_dir is not None else None
    learning = known is not None and not known.existed
    since = ctx.now - LEARN_SPAN if learning else start
    events, problems = collect(ctx.root, now=ctx.now, since=since, all_from=start)
    out = [unreadable_finding(p) for p in problems]
    if not _has_records(ctx.root):
        out.append(
            unreadable_finding(Unreadable("/var/log", "no auth.log, journal (/var/log/journal) or wtmp/btmp"))
        )
    recent = [e for e in events if start <= e.at <= ctx.now]
    accepted = [e for e in recent if e.ok]
    out += bursts(recent)
    out += [
        root_finding(addr, evs)
        for addr, evs in sorted(grouped((e for e in accepted if e.kind == "root"), "address").items())
    ]
    out += [
        password_finding(user, evs)
        for user, evs in sorted(grouped(filter(is_password, accepted), "user").items())
    ]
    if known is not None:
        out += _new_addresses(known, events, accepted, learning)
    return out


def _new_addresses(
    known: KnownAddresses, events: list[LoginEvent], accepted: list[LoginEvent], learning: bool
) -> list[AuditFinding]:
    out: list[AuditFinding] = []
    changed = False
    if learning:
        for event in events:
            if event.ok and event.address:
                known.add(event)
        why = f" ({known.problem}, learned again)" if known.problem else ""
        out.append(
            finding(
                NEW_ADDRESS,
                Severity.INFO,
                f"first login audit: learned {len(known.addresses)} address(es) logins came from{why};"
                " later logins from other addresses are reported",
                "Logins from new addresses can only be told apart once the usual ones are known.",
                f"Check the learned addresses in {known.path}; remove any you do not recognise.",
                where=str(known.path),
                subject="learned",
                data={"addresses": sorted(known.addresses)},
            )
        )
        changed = True
    else:
        for address, evs in sorted(grouped((e for e in accepted if e.address), "address").items()):
            if address not in known:
                out.append(new_address_finding(evs[0]))
            for event in evs:
                known.add(event)
                changed = True
    if changed:
        try:
            known.save()
        except OSError as err:
            problem = Unreadable(str(known.path), reason(err))
            out.append(unreadable_finding(problem, "the known login addresses could not be saved"))
    return out
