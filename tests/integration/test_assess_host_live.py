"""The live host checks of ``clawpen audit`` (listening ports with their owners, the firewall)
inside a network namespace this test creates: nothing touches the machine's own namespace but
``ip netns add`` / ``del``. The audit runs in the namespace (``nsenter --net``) as the CLI would
on a host."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.root, pytest.mark.netns]

PYTHON = sys.executable
AUDIT = """
import json, sys
from clawpen.assess import hostnet
from clawpen.assess.model import AuditContext
found = hostnet.run(AuditContext(), spec_has_firewall=sys.argv[1] == "1")
print(json.dumps([f.to_json() for f in found]))
"""
DROP_TABLE = """
table {family} {name} {{
    chain input {{
        type filter hook input priority filter; policy drop;
        iif lo accept
    }}
}}
"""


class Netns:
    def __init__(self) -> None:
        self.name = f"cp-ahost-{os.getpid()}-{secrets.token_hex(2)}"
        self.path = f"/run/netns/{self.name}"
        self.procs: list[subprocess.Popen[bytes]] = []
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        try:
            self.sh("ip", "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def argv(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def sh(self, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*argv), input=stdin, capture_output=True, text=True, check=True)

    def serve(self, bind: str, port: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            self.argv(PYTHON, "-m", "http.server", "--bind", bind, str(port)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
        )
        self.procs.append(proc)
        return proc

    def audit(self, spec_has_firewall: bool = False) -> list[dict[str, Any]]:
        done = self.sh(PYTHON, "-c", AUDIT, "1" if spec_has_firewall else "0")
        return list(json.loads(done.stdout))

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        subprocess.run(["ip", "netns", "del", self.name], check=False)


@pytest.fixture
def ns() -> Iterator[Netns]:
    made = Netns()
    try:
        yield made
    finally:
        made.close()


def wait_listening(ns: Netns, port: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    while True:
        found = ns.audit()
        if any(f["data"].get("port") == port for f in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def ports(found: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {f["data"]["port"]: f for f in found if f["check"] == "host.ports.public"}


def test_listener_named_by_pid_and_gone_when_killed(ns: Netns) -> None:
    before = ns.audit()
    assert ports(before) == {}  # positive control: a fresh namespace listens on nothing
    public = ns.serve("0.0.0.0", 18080)  # inside the test's own namespace
    risky = ns.serve("::", 6379)
    local = ns.serve("127.0.0.1", 18081)
    wait_listening(ns, 18080)
    found = wait_listening(ns, 6379)
    got = ports(found)
    assert 18081 not in got  # loopback only
    plain = got[18080]
    comm = Path(f"/proc/{public.pid}/comm").read_text().strip()
    assert plain["severity"] == "medium" and plain["subject"] == "tcp/0.0.0.0:18080"
    assert plain["data"]["pid"] == public.pid and plain["data"]["comm"] == comm
    assert f"pid {public.pid}" in plain["title"] and comm in plain["title"]
    redis = got[6379]
    assert redis["severity"] == "high" and "Redis" in redis["title"] and redis["data"]["pid"] == risky.pid
    assert local.poll() is None
    public.kill()
    public.wait(10)
    deadline = time.monotonic() + 10
    while 18080 in ports(ns.audit()) and time.monotonic() < deadline:
        time.sleep(0.1)
    after = ports(ns.audit())
    assert 18080 not in after and 6379 in after


def test_firewall_finding_follows_the_loaded_table(ns: Netns, tmp_path: Path) -> None:
    checks = {f["check"]: f for f in ns.audit()}
    assert checks["host.firewall.none"]["severity"] == "high"
    other = tmp_path / "other.nft"
    other.write_text(DROP_TABLE.format(family="inet", name="clawpen"))
    ns.sh("nft", "-f", str(other))
    checks = {f["check"]: f for f in ns.audit()}
    assert "host.firewall.none" not in checks and "host.firewall.partial" not in checks
    # the spec asks for [host.firewall], but clawpen's own table is not there: "not applied"
    checks = {f["check"]: f for f in ns.audit(spec_has_firewall=True)}
    assert checks["host.firewall.not_applied"]["severity"] == "medium"
    ours = tmp_path / "ours.nft"
    ours.write_text(DROP_TABLE.format(family="inet", name="clawpen_host"))
    ns.sh("nft", "-f", str(ours))
    assert not [f for f in ns.audit(spec_has_firewall=True) if f["check"].startswith("host.firewall.")]
    # IPv4 only: the other family is open
    ns.sh("nft", "flush", "ruleset")
    v4 = tmp_path / "v4.nft"
    v4.write_text(DROP_TABLE.format(family="ip", name="filter"))
    ns.sh("nft", "-f", str(v4))
    checks = {f["check"]: f for f in ns.audit()}
    assert "host.firewall.partial" in checks and "IPv4 only" in checks["host.firewall.partial"]["title"]
