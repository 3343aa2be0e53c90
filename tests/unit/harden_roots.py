"""Small root folders for the harden unit tests: the files the plan reads, with weak settings."""

from __future__ import annotations

from pathlib import Path

from clawpen.harden.facts import read_facts
from clawpen.harden.plan import Facts, Plan, build_plan
from clawpen.spec.host import Harden

# Debian bookworm's sshd_config (its directives), with the weak settings a test root adds
DEBIAN_SSHD = """# This is the sshd server system-wide configuration file.
Include /etc/ssh/sshd_config.d/*.conf

KbdInteractiveAuthentication no
UsePAM yes
X11Forwarding yes
PrintMotd no
AcceptEnv LANG LC_*
Subsystem\tsftp\t/usr/lib/openssh/sftp-server
PasswordAuthentication yes
PermitRootLogin yes
"""
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICSN5Yu/QgXZnSUl1QllJpXze3Jw1yislyjyjloBxmYw op@test"
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMpTI6pvhgkvbHMnBxImHEqvd5fkqiiu+7aVl3cdTVAW old@laptop"
WEAK_APT = 'APT::Periodic::Update-Package-Lists "1";\nAPT::Periodic::Unattended-Upgrade "1";\n'


def make_root(
    base: Path, *, sshd: str | None = DEBIAN_SSHD, tools: tuple[str, ...] = ("sshd", "visudo")
) -> Path:
    root = base / "root"
    for folder in ("etc/ssh/sshd_config.d", "etc/sudoers.d", "etc/apt/apt.conf.d", "usr/sbin", "home"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n"
    )
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "etc/shadow").write_text("root:$6$x$y:20000:0:99999:7:::\n")
    if sshd is not None:
        (root / "etc/ssh/sshd_config").write_text(sshd)
    (root / "etc/apt/apt.conf.d/20auto-upgrades").write_text(WEAK_APT)
    for tool in tools:
        (root / "usr/sbin" / tool).write_bytes(b"")
    return root


def add_operator(root: Path, name: str = "clawpen-op", *, locked: bool = True) -> None:
    with (root / "etc/passwd").open("a") as f:
        f.write(f"{name}:x:1000:1000::/home/{name}:/bin/bash\n")
    with (root / "etc/group").open("a") as f:
        f.write(f"{name}:x:1000:\n")
    with (root / "etc/shadow").open("a") as f:
        f.write(f"{name}:{'!' if locked else '$6$a$b'}:20000:0:99999:7:::\n")
    (root / "home" / name).mkdir(parents=True, exist_ok=True)


def facts_of(root: Path, cfg: Harden, **rest: object) -> Facts:
    return read_facts(root, cfg, token_state=root / "var/lib/clawpen", **rest)  # type: ignore[arg-type]


def plan_of(root: Path, cfg: Harden, **rest: object) -> Plan:
    return build_plan(cfg, facts_of(root, cfg, **rest))
