"""The harden plan: pure. :func:`build_plan` turns ``[host.harden]`` and what was read from the
root (:class:`Facts`, see :mod:`clawpen.harden.facts`) into ordered :class:`Step` s, each with
the files it changes (and their exact unified diff) and the commands it runs. Steps already
satisfied are left out, so the plan after an apply is empty (report-only and skipped steps do
not count as changes)."""

from __future__ import annotations

import difflib
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from clawpen.harden.content import (
    ACCOUNT_FILES,
    AUTO_UPGRADES,
    DEFAULT_CLAWPEN,
    SSHD_DROPIN,
    SSHD_INCLUDE,
    SSHD_KEYS,
    SSHD_MAIN,
    SSHD_NAMES,
    SUDOERS,
    UU_ORIGINS,
    authorized_keys,
    auto_upgrades_text,
    include_first,
    origins_text,
    sshd_dropin,
    sshd_values,
    sudoers_text,
)
from clawpen.spec.host import Harden

Status = Literal["change", "skipped", "report"]


@dataclass(frozen=True)
class FileChange:
    """One file made to hold ``new`` (None: removed) with ``mode``, ``owner`` and ``group``
    (names in the root). ``validate`` is an argv run inside the root on the new content before
    it is moved in (``{file}`` is its temporary path); ``check`` one run after (``sshd -t``)."""

    path: str
    old: bytes | None
    new: bytes | None
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    old_mode: int | None = None
    old_owner: str | None = None
    parent_mode: int = 0o755
    validate: tuple[str, ...] = ()

    @property
    def diff(self) -> str:
        old = [] if self.old is None else self.old.decode(errors="replace").splitlines(keepends=True)
        new = [] if self.new is None else self.new.decode(errors="replace").splitlines(keepends=True)
        text = "".join(
            difflib.unified_diff(
                old,
                new,
                fromfile="/dev/null" if self.old is None else f"a{self.path}",
                tofile="/dev/null" if self.new is None else f"b{self.path}",
            )
        )
        notes = []
        if self.new is not None and self.old is not None and self.old_mode not in (None, self.mode):
            notes.append(f"mode {self.old_mode:04o} -> {self.mode:04o}")
        if self.new is not None and self.old is not None and self.old_owner not in (None, self.owner):
            notes.append(f"owner {self.old_owner} -> {self.owner}")
        if self.new is not None and self.old is None:
            notes.append(f"new file, mode {self.mode:04o}, owner {self.owner}:{self.group}")
        if notes:
            text += f"# {self.path}: {', '.join(notes)}\n"
        return text


@dataclass(frozen=True)
class Step:
    """One change of the plan: ``id`` (stable), ``title`` (what it changes), its files and
    commands. ``saves`` lists more files the commands rewrite (saved before they run);
    ``creates_user`` the user the commands create (removed by rollback); ``checks`` argvs run
    inside the root after the files are in place (a failure undoes the step); ``expect`` the
    values ``sshd -T`` must then print. ``status`` is "change", "skipped" (with the reason in
    ``notes``) or "report" (nothing to change, only something to know)."""

    id: str
    title: str
    status: Status = "change"
    files: tuple[FileChange, ...] = ()
    commands: tuple[tuple[str, ...], ...] = ()
    saves: tuple[str, ...] = ()
    creates_user: str | None = None
    checks: tuple[tuple[str, ...], ...] = ()
    expect: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()
    token_for: str | None = None  # create an operator API token for this user
    firewall_table: str | None = None  # the nftables table text to load (live root only)

    def describe(self) -> str:
        lines = [f"[{self.status}] {self.id}: {self.title}"]
        lines += [f"  $ {shlex.join(argv)}" for argv in self.commands]
        for change in self.files:
            lines += ["  " + line for line in change.diff.splitlines()]
        lines += [f"  check: {shlex.join(argv)}" for argv in self.checks]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "status": self.status,
            "files": [
                {
                    "path": f.path,
                    "action": "remove" if f.new is None else "write",
                    "mode": f"{f.mode:04o}",
                    "owner": f"{f.owner}:{f.group}",
                    "diff": f.diff,
                }
                for f in self.files
            ],
            "commands": [list(argv) for argv in self.commands],
            "checks": [list(argv) for argv in self.checks],
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class Plan:
    root: str
    steps: tuple[Step, ...]

    @property
    def changes(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.status == "change")

    @property
    def empty(self) -> bool:
        return not self.changes

    def describe(self) -> str:
        head = f"host harden plan for {self.root}: " + (
            "no change" if self.empty else f"{len(self.changes)} step(s) to apply"
        )
        return "\n".join([head, *(s.describe() for s in self.steps)])

    def to_json(self) -> dict[str, Any]:
        return {"root": self.root, "changes": len(self.changes), "steps": [s.to_json() for s in self.steps]}


@dataclass(frozen=True)
class FileFact:
    """A file as found in the root: bytes (None: absent), mode and owner name."""

    data: bytes | None
    mode: int | None = None
    owner: str | None = None


@dataclass(frozen=True)
class Facts:
    """What :func:`build_plan` needs to know of the root (read by :mod:`clawpen.harden.facts`).

    ``files`` maps absolute paths to what was found; ``user_home`` is the operator's home (None:
    no such user) and ``user_locked`` whether its password is locked; ``dropins`` the other sshd
    drop-ins' names and texts; ``tools`` the programs found in the root (``sshd``, ``visudo``);
    ``clawpen`` the command for sudoers and ``clawpen_problem`` why it is unsafe (or None);
    ``token_exists`` whether the operator already has its API token; ``firewall`` one of
    "another root", "no config", "unchanged" or "changed" with ``firewall_diff`` and
    ``firewall_table``; ``snapshots`` the configured schedules (None: not read)."""

    root: str
    live: bool
    files: dict[str, FileFact]
    user_home: str | None = None
    user_locked: bool = False
    dropins: tuple[tuple[str, str], ...] = ()
    tools: frozenset[str] = frozenset()
    clawpen: str = DEFAULT_CLAWPEN
    clawpen_problem: str | None = None
    token_exists: bool = False
    firewall: str = "no config"
    firewall_diff: str = ""
    firewall_table: str = ""
    snapshots: tuple[str, ...] | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def file(self, path: str) -> FileFact:
        return self.files.get(path, FileFact(None))


# ---------------------------------------------------------------------------------------------
# The plan


def _file(facts: Facts, path: str, new: bytes | None, **rest: Any) -> FileChange | None:
    """A change of ``path`` to ``new`` (with mode/owner), or None when it is already so."""
    found = facts.file(path)
    mode = rest.get("mode", 0o644)
    owner = rest.get("owner", "root")
    if new is None:
        return None if found.data is None else FileChange(path, found.data, None, old_mode=found.mode)
    if found.data == new and found.mode == mode and found.owner == owner:
        return None
    return FileChange(path, found.data, new, old_mode=found.mode, old_owner=found.owner, **rest)


def _in_root(facts: Facts) -> tuple[str, ...]:
    return () if facts.live else ("--root", facts.root)


def _user_steps(cfg: Harden, facts: Facts) -> list[Step]:
    name = cfg.operator
    steps = []
    commands: list[tuple[str, ...]] = []
    if facts.user_home is None:
        commands.append(("useradd", *_in_root(facts), "-m", "-s", "/bin/bash", "-U", name))
    if facts.user_home is None or not facts.user_locked:
        commands.append(("usermod", *_in_root(facts), "-L", name))
    if commands:
        steps.append(
            Step(
                "operator-user",
                f"the operator user {name}, its password locked (SSH keys only)",
                commands=tuple(commands),
                saves=ACCOUNT_FILES,
                creates_user=name if facts.user_home is None else None,
            )
        )
    home = facts.user_home or f"/home/{name}"
    keys_path = f"{home}/.ssh/authorized_keys"
    if cfg.operator_keys:
        new = authorized_keys(facts.file(keys_path).data, cfg.operator_keys)
        change = _file(
            facts,
            keys_path,
            facts.file(keys_path).data if new is None else new,
            mode=0o600,
            owner=name,
            group=name,
            parent_mode=0o700,
        )
        if change is not None:
            steps.append(Step("operator-keys", f"{name}'s SSH keys ({keys_path})", files=(change,)))
    elif facts.file(keys_path).data is None:
        steps.append(
            Step(
                "operator-keys",
                f"{name}'s SSH keys",
                status="skipped",
                notes=(
                    "operator_keys is empty: the operator cannot log in until a key is added "
                    f"(list it in [host.harden] operator_keys, or write {keys_path})",
                ),
            )
        )
    return steps


def _sudo_steps(cfg: Harden, facts: Facts) -> list[Step]:
    name = cfg.operator
    if "visudo" not in facts.tools:
        return [
            Step(
                "sudoers",
                f"sudo for {name}: only `clawpen restart`",
                status="skipped",
                notes=(f"sudo is not installed in {facts.root} (apt-get install sudo)",),
            )
        ]
    if facts.clawpen_problem is not None:
        return [Step("sudoers", f"sudo for {name}", status="skipped", notes=(facts.clawpen_problem,))]
    steps = []
    change = _file(
        facts,
        SUDOERS,
        sudoers_text(name, facts.clawpen),
        mode=0o440,
        validate=("visudo", "-c", "-f", "{file}"),
    )
    if change is not None:
        steps.append(
            Step(
                "sudoers",
                f"sudo for {name}: only `{facts.clawpen} restart ...`, without a password",
                files=(change,),
                notes=("validated with visudo -c before it is moved in",),
            )
        )
    if not facts.token_exists:
        home = facts.user_home or f"/home/{name}"
        steps.append(
            Step(
                "operator-token",
                f"a clawpen API token with the role operator (start, stop, restart) for {name}",
                token_for=name,
                notes=(
                    f"its secret goes to {home}/.config/clawpen/token (0600, {name}'s): "
                    "export CLAWPEN_TOKEN=$(cat ~/.config/clawpen/token)",
                ),
            )
        )
    return steps


def _sshd_steps(cfg: Harden, facts: Facts) -> list[Step]:
    if "sshd" not in facts.tools:
        return [
            Step(
                "sshd", "SSH login rules", status="skipped", notes=(f"sshd is not installed in {facts.root}",)
            )
        ]
    files = []
    main = facts.file(SSHD_MAIN).data
    if main is not None and not include_first(main.decode(errors="replace")):
        header = f"# added by `clawpen host harden apply`: the drop-ins come first\n{SSHD_INCLUDE}\n\n"
        files.append(
            FileChange(
                SSHD_MAIN,
                main,
                header.encode() + main,
                old_mode=facts.file(SSHD_MAIN).mode,
                mode=facts.file(SSHD_MAIN).mode or 0o644,
            )
        )
    dropin = _file(facts, SSHD_DROPIN, sshd_dropin(cfg))
    if dropin is not None:
        files.append(dropin)
    if not files:
        return []
    notes = []
    earlier = [n for n, text in facts.dropins if n < SSHD_DROPIN.rsplit("/", 1)[1] and _sets_ours(text)]
    if earlier:
        notes.append(f"{', '.join(earlier)} come(s) first and set(s) some of these keys: sshd -T will tell")
    if facts.live:
        notes.append("takes effect for new logins after `systemctl reload ssh` (keep a session open)")
    if not cfg.operator_keys and not cfg.ssh_password_login:
        notes.append("no operator_keys: check that you can log in with an SSH key before reloading sshd")
    argv = ("sshd", "-t", "-f", SSHD_MAIN)
    return [
        Step(
            "sshd",
            "SSH: " + ", ".join(f"{SSHD_NAMES[k]} {v}" for k, v in sshd_values(cfg).items()),
            files=tuple(files),
            checks=(argv,),
            expect=tuple(sshd_values(cfg).items()),
            notes=tuple(notes),
        )
    ]


def _sets_ours(text: str) -> bool:
    return any(line.split() and line.split()[0].lower() in SSHD_KEYS for line in text.splitlines())


def _apt_steps(cfg: Harden, facts: Facts) -> list[Step]:
    files = [
        _file(facts, AUTO_UPGRADES, auto_upgrades_text(cfg.auto_updates)),
        _file(facts, UU_ORIGINS, origins_text(cfg.auto_updates)),
    ]
    changes = tuple(f for f in files if f is not None)
    if not changes:
        return []
    return [Step("auto-updates", f"automatic updates: {cfg.auto_updates}", files=changes)]


def _firewall_steps(cfg: Harden, facts: Facts) -> list[Step]:
    if not cfg.firewall:
        return []
    if facts.firewall == "another root":
        return [Step("firewall", "the host firewall", status="skipped", notes=("skipped: another root",))]
    if facts.firewall == "no config":
        return [
            Step(
                "firewall",
                "the host firewall",
                status="skipped",
                notes=(
                    "the spec has no [host.firewall]: add one (docs/firewall.md) or set "
                    "[host.harden] firewall = false",
                ),
            )
        ]
    if facts.firewall == "unchanged":
        return []
    return [
        Step(
            "firewall",
            "the host firewall from [host.firewall] (table inet clawpen_host)",
            firewall_table=facts.firewall_table,
            notes=(
                facts.firewall_diff.rstrip(),
                "reverts by itself in 60 s unless `clawpen firewall confirm`",
            ),
        )
    ]


def _snapshot_steps(cfg: Harden, facts: Facts) -> list[Step]:
    if not cfg.snapshots or facts.snapshots is None:
        return []
    if facts.snapshots:
        return [Step("snapshots", "snapshot schedule", status="report", notes=facts.snapshots)]
    return [
        Step(
            "snapshots",
            "snapshot schedule",
            status="report",
            notes=(
                'no snapshot schedule: add [snapshots] state_every = "24h" and a snapshots = '
                '{ every = "24h" } to each bot (the practice: daily snapshots)',
            ),
        )
    ]


def build_plan(cfg: Harden, facts: Facts) -> Plan:
    """The steps that bring the root to ``cfg``, in the order they are applied."""
    steps = [
        *_user_steps(cfg, facts),
        *_sudo_steps(cfg, facts),
        *_sshd_steps(cfg, facts),
        *_apt_steps(cfg, facts),
        *_firewall_steps(cfg, facts),
        *_snapshot_steps(cfg, facts),
    ]
    return Plan(str(Path(facts.root)), tuple(steps))
