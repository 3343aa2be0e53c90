"""The daemon's real-time login audit (`[audit] logins = "realtime"`): the component follows a
system's auth.log (a folder of the test's own, never this machine's /var/log) with the real
follower on the daemon's event loop, and a burst of failed SSH logins from one address becomes
one `audit-finding` event; with `logins = "off"` the same burst gives none (positive control of
the rule's trigger, negative of the switch)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from clawpen.daemon.audit_logins import AuditLoginsComponent
from clawpen.daemon.audit_schedule import FINDING
from clawpen.spec.loader import parse_spec_text
from clawpen.spec.models import Spec


class FakeDaemon:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.notes: list[tuple[str, str]] = []
        self.listeners: list[Callable[[Spec], None]] = []

    def note(self, kind: str, reason: str, bot: str | None = None, replica: int | None = None) -> None:
        self.notes.append((kind, reason))

    def current_spec(self) -> Spec | None:
        return self.spec

    def on_spec(self, listener: Callable[[Spec], None]) -> None:
        self.listeners.append(listener)


def spec(logins: str) -> Spec:
    text = f'[audit]\nlogins = "{logins}"\n'
    return parse_spec_text(text, Path("/nonexistent/clawpen.toml")).spec


def failures(n: int, address: str) -> str:
    stamp = time.strftime("%b %e %H:%M:%S", time.localtime())
    return "".join(
        f"{stamp} bothost sshd[{4000 + i}]: Failed password for invalid user admin{i} from {address} "
        f"port {50000 + i} ssh2\n"
        for i in range(n)
    )


async def follow(tmp_path: Path, logins: str, lines: str) -> FakeDaemon:
    root = tmp_path / "root"
    (root / "var/log").mkdir(parents=True)
    log = root / "var/log/auth.log"
    log.write_text("")
    daemon = FakeDaemon(spec(logins))
    component = AuditLoginsComponent(tmp_path / "state", root=root)
    await component.start(daemon)
    try:
        with log.open("a") as f:
            f.write(lines)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not daemon.notes:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # anything more would show now
        for listener in daemon.listeners:  # the spec switches the follow off
            listener(spec("off"))
        await asyncio.sleep(0.1)
        assert component.follower is None
    finally:
        await component.stop()
    return daemon


def test_a_burst_of_failed_logins_becomes_one_finding_event(tmp_path: Path) -> None:
    daemon = asyncio.run(follow(tmp_path, "realtime", failures(12, "203.0.113.9")))
    findings = [reason for kind, reason in daemon.notes if kind == FINDING]
    assert len(findings) == 1, daemon.notes
    assert "203.0.113.9" in findings[0] and findings[0].startswith("high:")


def test_no_follow_when_logins_are_off(tmp_path: Path) -> None:
    daemon = asyncio.run(follow(tmp_path, "off", failures(12, "203.0.113.9")))
    assert daemon.notes == []
