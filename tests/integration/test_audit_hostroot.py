"""`clawpen audit` on a prepared Debian host (issue 19): a disposable Debian root (debootstrap,
tests/integration/hostroot.py) with weak settings — SSH with passwords and root login, a root
password, unattended upgrades, a bot whose lockfile pins a vulnerable lodash, a burst of failed
logins and a root login in its auth.log — run as a host in a sandbox of its own (its own network
namespace, where its sshd listens) and audited live from inside it. Each weakness is found; after
`clawpen host harden apply` the same audit scores better and Lynis's hardening index goes up; after
`rollback` the host findings are back. Nothing touches this machine's own sshd, users or /etc."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostroot import bwrap_argv, lynis_index, weak_root

pytestmark = [pytest.mark.root, pytest.mark.hostroot, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
OSV = REPO / "tests" / "data" / "osv"
PYTHON_HOME = Path(sys.base_prefix)  # the interpreter the venv was made from
LOCK = {
    "name": "bot1",
    "lockfileVersion": 3,
    "packages": {"": {"dependencies": {"lodash": "4.17.20"}}, "node_modules/lodash": {"version": "4.17.20"}},
}
SPEC = """\
[bots.bot1]
command = ["node", "index.js"]
workspace = "/srv/bot1"
network = { egress = ["api.example.com:443"], bandwidth = "8mbit" }
health = { tcp = "127.0.0.1:8080" }
snapshots = { every = "24h" }

[snapshots]
state_every = "24h"

[host.harden]
operator = "clawpen-op"
operator_keys = ["{key}"]
"""


def prepare(root: Path) -> Path:
    """The weak host's bot, spec and login records (written as the host would have them)."""
    bot = root / "srv/bot1"
    bot.mkdir(parents=True)
    (bot / "package-lock.json").write_text(json.dumps(LOCK))
    spec = root / "srv/clawpen.toml"
    key = root.parent / "admin-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "admin", "-f", str(key)], check=True)
    spec.write_text(SPEC.replace("{key}", (key.with_suffix(".pub")).read_text().strip()))
    now = time.time()
    lines = []
    for i in range(12):
        stamp = time.strftime("%b %e %H:%M:%S", time.localtime(now - 300 + i))
        lines.append(
            f"{stamp} bot-host sshd[{900 + i}]: Failed password for root from 198.51.100.23 "
            f"port {40000 + i} ssh2"
        )
    stamp = time.strftime("%b %e %H:%M:%S", time.localtime(now - 60))
    lines.append(f"{stamp} bot-host sshd[950]: Accepted password for root from 192.0.2.77 port 51000 ssh2")
    (root / "var/log/auth.log").write_text("\n".join(lines) + "\n")
    return spec


def audit_inside(root: Path) -> dict:
    """`clawpen audit` run live inside the host: its /etc, its processes, its network namespace
    (sshd started first, on every address, as on a real host)."""
    binds = ["--ro-bind", str(REPO), str(REPO), "--ro-bind", str(PYTHON_HOME), str(PYTHON_HOME),
             "--ro-bind", str(OSV), "/osv"]  # fmt: skip
    script = (
        "/usr/sbin/sshd && "
        f"CLAWPEN_HOME=/var/lib/clawpen {REPO}/.venv/bin/python -m clawpen audit --json --offline "
        "--osv /osv -f /srv/clawpen.toml --no-save"
    )
    argv = bwrap_argv(root, ["sh", "-c", script])
    argv[argv.index("--") : argv.index("--")] = binds
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def ids(report: dict, group: str | None = None) -> set[str]:
    return {f["check"] for f in report["findings"] if group is None or f["group"] == group}


def harden(root: Path, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(REPO / ".venv/bin/clawpen"), "host", "harden", *args, "--root", str(root)]
    env = {"CLAWPEN_HOME": str(state), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    if args[0] != "rollback":
        argv += ["-f", str(root / "srv/clawpen.toml")]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, env=env)


def test_the_weak_host_is_found_and_hardening_it_scores_better(tmp_path: Path) -> None:
    root = weak_root(tmp_path / "root")
    prepare(root)
    before = audit_inside(root)
    found = ids(before)
    expected = {
        "host.ssh.password_login",  # PasswordAuthentication yes
        "host.ssh.root_login",  # PermitRootLogin yes
        "host.ssh.listen_all",
        "host.ports.public",  # its sshd on 0.0.0.0:22, in its own network namespace
        "host.users.password_login",  # root has a password hash and a shell
        "host.updates.unattended",
        "host.firewall.none",
        "dependencies.vulnerable",  # lodash 4.17.20 in bot1's package-lock.json
        "logins.failed_burst",  # 12 failures from 198.51.100.23
        "logins.root_login",
        "logins.password_login",
    }
    assert expected <= found, sorted(expected - found)
    [lodash] = [f for f in before["findings"] if f["check"] == "dependencies.vulnerable"]
    assert "4.17.21" in lodash["fix"] and "bot1" in lodash["fix"]
    ports = [f["title"] for f in before["findings"] if f["check"] == "host.ports.public"]
    assert any("sshd" in t and ":22" in t for t in ports), ports
    lynis_before = lynis_index(root)

    state = tmp_path / "state"
    applied = harden(root, state, "apply", "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    after = audit_inside(root)
    lynis_after = lynis_index(root)
    print(
        f"risk score {before['score']} -> {after['score']}; "
        f"Lynis hardening index {lynis_before} -> {lynis_after}"
    )
    assert after["score"] < before["score"]
    assert lynis_after > lynis_before
    # root keeps its password (the console and `su` need one); SSH no longer takes it
    fixed = {"host.ssh.password_login", "host.ssh.root_login", "host.updates.unattended"}
    assert not fixed & ids(after), sorted(fixed & ids(after))
    assert ids(after, "dependencies") == ids(before, "dependencies")  # harden does not touch the bots

    undone = harden(root, state, "rollback")
    assert undone.returncode == 0, undone.stdout + undone.stderr
    again = audit_inside(root)
    assert ids(again, "host") == ids(before, "host")
