"""The contents ``host harden`` writes: the sshd drop-in, the sudoers entry, apt's periodic
settings and unattended-upgrades origins, the operator's authorized_keys; and the check that
sshd_config includes its drop-ins before it sets any key of ours. Pure."""

from __future__ import annotations

from clawpen.spec.host import Harden

SSHD_MAIN = "/etc/ssh/sshd_config"
SSHD_DROPIN_DIR = "/etc/ssh/sshd_config.d"
SSHD_DROPIN = f"{SSHD_DROPIN_DIR}/10-clawpen-harden.conf"
SSHD_INCLUDE = f"Include {SSHD_DROPIN_DIR}/*.conf"
SUDOERS = "/etc/sudoers.d/clawpen-operator"
AUTO_UPGRADES = "/etc/apt/apt.conf.d/20auto-upgrades"
UU_ORIGINS = "/etc/apt/apt.conf.d/52clawpen-unattended-upgrades"
DEFAULT_CLAWPEN = "/usr/local/bin/clawpen"
# the files useradd/usermod/userdel rewrite (and their "-" backups): saved before the user step
ACCOUNT_FILES = tuple(
    f"/etc/{name}{suffix}"
    for name in ("passwd", "shadow", "group", "gshadow", "subuid", "subgid")
    for suffix in ("", "-")
)
TOKEN_NAME_PREFIX = "host-harden:"  # noqa: S105 (a label, not a secret)
SSHD_KEYS = (
    "passwordauthentication",
    "kbdinteractiveauthentication",
    "permitrootlogin",
    "permitemptypasswords",
    "x11forwarding",
    "maxauthtries",
)


def sshd_values(cfg: Harden) -> dict[str, str]:
    """The sshd settings of the drop-in, as ``sshd -T`` prints them (lower-case keys)."""
    root = "no"
    if cfg.ssh_root_login:
        root = "yes" if cfg.ssh_password_login else "prohibit-password"
    return {
        "passwordauthentication": "yes" if cfg.ssh_password_login else "no",
        "kbdinteractiveauthentication": "no",
        "permitrootlogin": root,
        "permitemptypasswords": "no",
        "x11forwarding": "no",
        "maxauthtries": "4",
    }


SSHD_NAMES = {
    "passwordauthentication": "PasswordAuthentication",
    "kbdinteractiveauthentication": "KbdInteractiveAuthentication",
    "permitrootlogin": "PermitRootLogin",
    "permitemptypasswords": "PermitEmptyPasswords",
    "x11forwarding": "X11Forwarding",
    "maxauthtries": "MaxAuthTries",
}


def sshd_dropin(cfg: Harden) -> bytes:
    lines = [
        "# Written by `clawpen host harden apply` ([host.harden]); `clawpen host harden rollback` undoes it.",
        "# sshd keeps the first value it reads, and /etc/ssh/sshd_config includes this folder first.",
        *(f"{SSHD_NAMES[key]} {value}" for key, value in sshd_values(cfg).items()),
    ]
    return ("\n".join(lines) + "\n").encode()


def sudoers_text(user: str, clawpen: str) -> bytes:
    return (
        "# Written by `clawpen host harden apply`: the operator's only elevated right is restarting bots.\n"
        f"{user} ALL=(root) NOPASSWD: {clawpen} restart *\n"
    ).encode()


def auto_upgrades_text(mode: str) -> bytes:
    on = "0" if mode == "off" else "1"
    what = {
        "off": "automatic updates off (the deployment practice: updates are applied by hand)",
        "security": "unattended upgrades of Debian security updates only",
        "all": "unattended upgrades of every Debian update",
    }[mode]
    return (
        f"// Written by `clawpen host harden apply` ([host.harden] auto_updates = {mode!r}): {what}\n"
        f'APT::Periodic::Update-Package-Lists "{on}";\n'
        f'APT::Periodic::Unattended-Upgrade "{on}";\n'
    ).encode()


def origins_text(mode: str) -> bytes | None:
    """The unattended-upgrades origins for ``mode`` (read after Debian's 50unattended-upgrades,
    whose list it clears), or None for "off"."""
    if mode == "off":
        return None
    patterns = [
        "origin=Debian,codename=${distro_codename}-security,label=Debian-Security",
        "origin=Debian,codename=${distro_codename},label=Debian-Security",
    ]
    if mode == "all":
        patterns += [
            "origin=Debian,codename=${distro_codename},label=Debian",
            "origin=Debian,codename=${distro_codename}-updates",
        ]
    body = "".join(f'        "{p}";\n' for p in patterns)
    return (
        f"// Written by `clawpen host harden apply` ([host.harden] auto_updates = {mode!r})\n"
        "#clear Unattended-Upgrade::Origins-Pattern;\n"
        f"Unattended-Upgrade::Origins-Pattern {{\n{body}}};\n"
    ).encode()


def authorized_keys(old: bytes | None, keys: list[str]) -> bytes | None:
    """``old`` with the missing ``keys`` appended (None when nothing is missing)."""
    text = "" if old is None else old.decode(errors="replace")
    present = {" ".join(line.split()[:2]) for line in text.splitlines() if line.strip()}
    missing = [k for k in keys if " ".join(k.split()[:2]) not in present]
    if not missing and old is not None:
        return None
    if text and not text.endswith("\n"):
        text += "\n"
    return (text + "".join(f"{k}\n" for k in missing)).encode()


def include_first(main: str) -> bool:
    """Whether sshd_config includes the drop-in folder before it sets any key of ours (and
    before any Match block): then the drop-in's values win."""
    for line in main.splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        key = words[0].lower()
        if key == "include":
            if any(arg in (f"{SSHD_DROPIN_DIR}/*.conf", "sshd_config.d/*.conf") for arg in words[1:]):
                return True
            continue
        if key == "match" or key in SSHD_KEYS:
            return False
    return False
