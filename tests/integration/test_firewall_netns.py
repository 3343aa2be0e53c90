"""``clawpen firewall`` for real, inside network namespaces this test creates (never the host's).

Topology per test: namespace H (the "bot host", where the firewall is applied) and namespace P
(the outside world), linked by a veth pair. P carries two addresses per family: the admin's
(.2 / ::2, listed in ssh_from) and an attacker's (.3 / ::3). H runs TCP listeners on 22 (SSH),
8080 (service) and 9999 (anything else). Probes run in P with a chosen source address; ICMP echo
is sent from a raw socket. Every expectation after apply has its positive control before it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

PYTHON = sys.executable
SRC = str(Path(__file__).resolve().parents[2] / "src")

LISTENER = r"""
import socket, sys, threading
socks = []
for port in map(int, sys.argv[1:]):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port)); s.listen(64); socks.append(s)
def serve(s):
    while True:
        c, _ = s.accept()
        try: c.sendall(b"hi")
        finally: c.close()
for s in socks: threading.Thread(target=serve, args=(s,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""

PROBE = r"""
import json, os, socket, struct, sys, threading, time
checks = json.loads(sys.argv[1]); out = {}
def tcp(key, src, dst, port):
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(0.8)
    try:
        s.bind((src, 0)); s.connect((dst, port)); out[key] = "open" if s.recv(2) == b"hi" else "odd"
    except ConnectionRefusedError: out[key] = "refused"
    except (socket.timeout, TimeoutError): out[key] = "timeout"
    except OSError as e: out[key] = "error: %s" % e
    finally: s.close()
def ping(key, src, dst):
    v6 = ":" in dst
    if v6: s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    else: s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.bind((src, 0)); s.settimeout(0.8)
    ident = os.getpid() & 0xFFFF
    typ, reply = (128, 129) if v6 else (8, 0)
    body = struct.pack("!BBHHH", typ, 0, 0, ident, 1) + b"clawpen!"
    if not v6:
        c = sum(struct.unpack("!%dH" % (len(body) // 2), body))
        c = (c >> 16) + (c & 0xFFFF); c += c >> 16
        body = body[:2] + struct.pack("!H", ~c & 0xFFFF) + body[4:]
    s.sendto(body, (dst, 0))
    end = time.monotonic() + 0.8; out[key] = "timeout"
    try:
        while time.monotonic() < end:
            data = s.recv(2048)
            icmp = data if v6 else data[(data[0] & 0x0F) * 4:]
            if icmp[0] == reply and struct.unpack("!H", icmp[4:6])[0] == ident:
                out[key] = "reply"; break
    except (socket.timeout, TimeoutError): pass
    s.close()
threads = [threading.Thread(target=tcp if c[1] == "tcp" else ping, args=(c[0], *c[2:])) for c in checks]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
"""

H4, ADMIN4, ATTACK4 = "10.77.0.1", "10.77.0.2", "10.77.0.3"
H6, ADMIN6, ATTACK6 = "fd00:77::1", "fd00:77::2", "fd00:77::3"

SPEC = f"""\
[host.firewall]
ssh_from = ["{ADMIN4}/32", "{ADMIN6}"]
allow_tcp = [8080]
"""

CHECKS = [
    ["ssh_admin4", "tcp", ADMIN4, H4, 22],
    ["ssh_attack4", "tcp", ATTACK4, H4, 22],
    ["ssh_admin6", "tcp", ADMIN6, H6, 22],
    ["ssh_attack6", "tcp", ATTACK6, H6, 22],
    ["svc_attack4", "tcp", ATTACK4, H4, 8080],
    ["svc_attack6", "tcp", ATTACK6, H6, 8080],
    ["other4", "tcp", ADMIN4, H4, 9999],
    ["other6", "tcp", ADMIN6, H6, 9999],
    ["ping4", "ping", ADMIN4, H4],
    ["ping6", "ping", ADMIN6, H6],
]
ALL_OPEN = {c[0]: ("reply" if c[1] == "ping" else "open") for c in CHECKS}

FOREIGN = """\
table inet other {
\tchain input {
\t\ttype filter hook input priority 10; policy accept;
\t\tcounter packets 0 bytes 0
\t}
}
"""


class Lab:
    def __init__(self, tmp: Path) -> None:
        tag = secrets.token_hex(3)
        self.h, self.p = f"clawpen-t-fw{tag}h", f"clawpen-t-fw{tag}p"
        self.home, self.dir = tmp / "state", tmp
        self.listener: subprocess.Popen[str] | None = None
        for ns in (self.h, self.p):
            self.sh("ip", "netns", "add", ns)
            self.sh("ip", "-n", ns, "link", "set", "lo", "up")
        vh, vp = f"cfw{tag}h", f"cfw{tag}p"
        self.sh("ip", "link", "add", vh, "netns", self.h, "type", "veth", "peer", "name", vp, "netns", self.p)
        for ns, dev, addrs in ((self.h, vh, (H4, H6)), (self.p, vp, (ADMIN4, ATTACK4, ADMIN6, ATTACK6))):
            for a in addrs:
                plen = "64" if ":" in a else "24"
                self.sh(
                    "ip", "-n", ns, "addr", "add", f"{a}/{plen}", "dev", dev, *(["nodad"] if ":" in a else [])
                )
            self.sh("ip", "-n", ns, "link", "set", dev, "up")

    def sh(
        self, *argv: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=check, timeout=60)

    def in_h(
        self, *argv: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.sh("ip", "netns", "exec", self.h, *argv, stdin=stdin, check=check)

    def cli(self, *args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CLAWPEN_HOME": str(home or self.home), "PYTHONPATH": SRC}
        return subprocess.run(
            ["ip", "netns", "exec", self.h, PYTHON, "-m", "clawpen", "firewall", *args],
            cwd=self.dir, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def write_spec(self, text: str, name: str = "clawpen.toml") -> None:
        (self.dir / name).write_text(text)

    def table(self, name: str = "clawpen_host") -> str | None:
        proc = self.in_h("nft", "list", "table", "inet", name, check=False)
        return proc.stdout if proc.returncode == 0 else None

    def start_listener(self) -> None:
        self.listener = subprocess.Popen(
            ["ip", "netns", "exec", self.h, PYTHON, "-c", LISTENER, "22", "8080", "9999"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.listener.stdout is not None
        assert self.listener.stdout.readline().strip() == "ready"

    def warm_up(self) -> dict[str, str]:
        """The positive control: everything answers without a firewall. Retried a few times, as
        the very first packets of a fresh link can be lost to IPv6 neighbour discovery."""
        for _ in range(5):
            seen = self.probe()
            if seen == ALL_OPEN:
                break
        return seen

    def probe(self, checks: list[list[object]] = CHECKS) -> dict[str, str]:
        proc = self.sh("ip", "netns", "exec", self.p, PYTHON, "-c", PROBE, json.dumps(checks))
        return dict(json.loads(proc.stdout))

    def pending_pid(self, home: Path | None = None) -> int | None:
        try:
            return int(json.loads(((home or self.home) / "firewall" / "pending.json").read_text())["pid"])
        except FileNotFoundError:
            return None

    def close(self) -> None:
        if self.listener is not None:
            self.listener.kill()
            self.listener.wait()
            for pipe in (self.listener.stdin, self.listener.stdout):
                if pipe is not None:
                    pipe.close()
        for home in self.dir.glob("**/firewall"):  # stop watchers a failed test left behind
            pid = self.pending_pid(home.parent)
            if pid is not None:
                subprocess.run(["kill", str(pid)], check=False, capture_output=True)
        for ns in (self.h, self.p):
            self.sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def _rules(text: str | None) -> str:
    """A listing without counter values (they move with traffic)."""
    return re.sub(r"counter packets \d+ bytes \d+", "counter", text or "")


def _packets(text: str | None) -> int:
    found = re.search(r"counter packets (\d+)", text or "")
    assert found, text
    return int(found.group(1))


def _audit(lab: Lab, home: Path | None = None) -> list[str]:
    path = (home or lab.home) / "audit.log"
    return [json.loads(line)["action"] for line in path.read_text().splitlines()] if path.exists() else []


def test_apply_enforces_policy_and_rollback_restores(lab: Lab) -> None:
    lab.start_listener()
    lab.in_h("nft", "-f", "-", stdin=FOREIGN)
    lab.write_spec(SPEC)
    assert lab.warm_up() == ALL_OPEN  # positive control: with no firewall everything answers
    foreign_before = lab.table("other")
    packets_before = _packets(foreign_before)
    assert packets_before > 0

    plan = lab.cli("plan")
    assert plan.returncode == 0, plan.stderr
    assert "+\t\ttcp dport 22 ip saddr 10.77.0.2 counter accept" in plan.stdout

    applied = lab.cli("apply", "--no-confirm")
    assert applied.returncode == 0, applied.stderr
    assert "pending" not in applied.stdout and lab.pending_pid() is None
    assert lab.probe() == {
        "ssh_admin4": "open", "ssh_attack4": "timeout", "ssh_admin6": "open", "ssh_attack6": "timeout",
        "svc_attack4": "open", "svc_attack6": "open", "other4": "timeout", "other6": "timeout",
        "ping4": "timeout", "ping6": "timeout",
    }  # fmt: skip
    foreign_after = lab.table("other")
    assert _rules(foreign_after) == _rules(foreign_before)  # untouched, counter not reset
    assert _packets(foreign_after) > packets_before

    again = lab.cli("plan", "--json")
    assert json.loads(again.stdout) == {"changed": False, "live_present": True, "diff": ""}
    twice = lab.cli("apply", "--no-confirm", "--json")
    assert twice.returncode == 0 and json.loads(twice.stdout)["changed"] is False
    assert json.loads(lab.cli("plan", "--json").stdout)["changed"] is False

    status = lab.cli("status", "--json")
    info = json.loads(status.stdout)
    assert info["present"] and info["matches_last_load"] is True
    dropped = [c for c in info["counters"] if c["comment"] == "other inbound: dropped"]
    assert dropped and dropped[0]["packets"] > 0

    back = lab.cli("rollback")
    assert back.returncode == 0, back.stderr
    assert lab.table() is None  # there was no clawpen table before the first apply
    assert _rules(lab.table("other")) == _rules(foreign_before)
    assert lab.probe() == ALL_OPEN
    assert _audit(lab) == ["firewall.apply", "firewall.apply", "firewall.rollback"]


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for init to reap it does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


SSH4 = [c for c in CHECKS if c[0] in ("ssh_admin4", "ssh_admin6")]


def test_unconfirmed_apply_reverts_and_confirmed_apply_stays(lab: Lab) -> None:
    lab.start_listener()
    lab.write_spec(SPEC)
    assert lab.cli("apply", "--no-confirm").returncode == 0
    good = lab.table()
    assert lab.probe(SSH4) == {"ssh_admin4": "open", "ssh_admin6": "open"}  # control

    # A mistake: the admin's IPv4 address dropped from ssh_from. New SSH sessions over IPv4 fail...
    lab.write_spec(SPEC.replace("[8080]", "[8080, 8443]").replace(f'"{ADMIN4}/32", ', ""))
    started = time.monotonic()
    risky = lab.cli("apply", "--confirm-within", "2")
    assert risky.returncode == 0, risky.stderr
    assert "reverts at" in risky.stdout
    assert "8443" in _rules(lab.table()) and _rules(lab.table()) != _rules(good)
    watcher = lab.pending_pid()
    assert watcher is not None and _running(watcher)
    assert lab.probe(SSH4) == {"ssh_admin4": "timeout", "ssh_admin6": "open"}

    # ... nobody confirms, so the watcher puts the previous table back by itself.
    while time.monotonic() < started + 8 and _rules(lab.table()) != _rules(good):
        time.sleep(0.1)
    waited = time.monotonic() - started
    assert _rules(lab.table()) == _rules(good), "the unconfirmed apply was not reverted"
    assert 1.5 < waited < 6
    assert lab.probe(SSH4) == {"ssh_admin4": "open", "ssh_admin6": "open"}
    assert lab.pending_pid() is None
    assert _audit(lab)[-2:] == ["firewall.apply", "firewall.auto-revert"]
    time.sleep(0.2)
    assert not _running(watcher)
    late = lab.cli("confirm")
    assert late.returncode == 2 and "no apply waiting" in late.stderr

    # Confirmed in time: the table stays past the deadline and the watcher is gone.
    kept = lab.cli("apply", "--confirm-within", "2")
    assert kept.returncode == 0, kept.stderr
    pid = lab.pending_pid()
    assert pid is not None and _running(pid)
    deadline = json.loads((lab.home / "firewall" / "pending.json").read_text())["deadline"]
    confirmed = lab.cli("confirm")
    assert confirmed.returncode == 0, confirmed.stderr
    assert "confirmed" in confirmed.stdout
    time.sleep(max(deadline - time.time(), 0) + 0.7)
    assert "8443" in _rules(lab.table())  # still there after the deadline
    assert not _running(pid)
    assert _audit(lab)[-2:] == ["firewall.apply", "firewall.confirm"]

    back = lab.cli("rollback")  # the saved table is the one before the confirmed apply
    assert back.returncode == 0 and _rules(lab.table()) == _rules(good)
    assert lab.probe(SSH4) == {"ssh_admin4": "open", "ssh_admin6": "open"}


def test_reject_mode_refuses_instead_of_dropping(lab: Lab) -> None:
    lab.start_listener()
    lab.write_spec(SPEC + 'inbound = "reject"\nicmp_echo = true\n')
    assert lab.warm_up() == ALL_OPEN
    assert lab.cli("apply", "--no-confirm").returncode == 0
    seen = lab.probe()
    assert seen["ssh_attack4"] == seen["ssh_attack6"] == seen["other4"] == seen["other6"] == "refused"
    assert seen["ssh_admin4"] == seen["svc_attack6"] == "open"
    assert seen["ping4"] == seen["ping6"] == "reply"


def test_invalid_config_exits_2_and_changes_nothing(lab: Lab) -> None:
    lab.write_spec(SPEC)
    assert lab.cli("apply", "--no-confirm").returncode == 0
    before, audit_before = lab.table(), _audit(lab)
    saved = (lab.home / "firewall" / "previous.nft").read_text()
    lab.write_spec("[host.firewall]\nallow_tcp = [8080]\nssh_from = []\n")
    bad = lab.cli("apply", "--no-confirm")
    assert bad.returncode == 2
    assert "lock the admin out" in bad.stderr and "clawpen.toml:3" in bad.stderr
    assert "Traceback" not in bad.stderr
    lab.write_spec('[host.firewall]\nssh_from = ["10.77.0.2/24"]\n')
    bad = lab.cli("plan")
    assert bad.returncode == 2 and "clawpen.toml:2" in bad.stderr and "10.77.0.0/24" in bad.stderr
    assert _rules(lab.table()) == _rules(before)
    assert _audit(lab) == audit_before
    assert (lab.home / "firewall" / "previous.nft").read_text() == saved


def test_nft_check_failure_leaves_the_old_table(lab: Lab) -> None:
    lab.write_spec(SPEC)
    assert lab.cli("apply", "--no-confirm").returncode == 0
    before = lab.table()
    saved = (lab.home / "firewall" / "previous.nft").read_text()
    broken = before.replace("tcp dport 8080", "tcp dport 70000")  # nft refuses it in its check
    code = (
        "import sys, pathlib\n"
        "from clawpen.net.firewall import apply_table, FirewallRefused\n"
        "try:\n"
        "    apply_table(sys.stdin.read(), pathlib.Path(sys.argv[1]), confirm_within=2, who='test')\n"
        "except FirewallRefused as err:\n"
        "    print('refused:', err.what); sys.exit(7)\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run(
        ["ip", "netns", "exec", lab.h, PYTHON, "-c", code, str(lab.home)],
        input=broken, capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 7, proc.stderr
    assert "nothing was changed" in proc.stdout
    assert _rules(lab.table()) == _rules(before)
    assert lab.pending_pid() is None  # no watcher was started
    assert (lab.home / "firewall" / "previous.nft").read_text() == saved
    assert _audit(lab)[-1] == "firewall.refused"


def test_apply_while_pending_keeps_the_last_confirmed_table(lab: Lab) -> None:
    lab.write_spec(SPEC)
    assert lab.cli("apply", "--no-confirm").returncode == 0
    good = lab.table()
    lab.write_spec(SPEC.replace("[8080]", "[8080, 8443]"))
    assert lab.cli("apply", "--confirm-within", "60").returncode == 0
    first = lab.pending_pid()
    assert first is not None and _running(first)
    lab.write_spec(SPEC.replace("[8080]", "[8080, 8444]"))
    second = lab.cli("apply", "--confirm-within", "2", "--json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["previous"] == "kept"
    time.sleep(0.2)
    assert not _running(first)  # the first watcher was replaced
    assert "8444" in _rules(lab.table())
    end = time.monotonic() + 6
    while time.monotonic() < end and _rules(lab.table()) != _rules(good):
        time.sleep(0.1)
    assert _rules(lab.table()) == _rules(good)  # back to the confirmed table, not the 8443 one


def test_status_and_plan_report_a_hand_edit(lab: Lab) -> None:
    lab.write_spec(SPEC)
    assert lab.cli("apply", "--no-confirm").returncode == 0
    lab.in_h("nft", "add", "rule", "inet", "clawpen_host", "input", "tcp", "dport", "1234", "accept")
    info = json.loads(lab.cli("status", "--json").stdout)
    assert info["matches_last_load"] is False
    assert "+\t\ttcp dport 1234 accept" in info["drift"].splitlines()
    assert info["last"]["action"] == "firewall.apply"
    plan = json.loads(lab.cli("plan", "--json").stdout)
    assert plan["changed"] and "-\t\ttcp dport 1234 accept" in plan["diff"].splitlines()
