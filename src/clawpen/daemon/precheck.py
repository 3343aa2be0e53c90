"""Everything ``clawpen up`` can check before it changes anything.

:func:`check_bots` looks at each bot that ``up`` would start and returns every problem it
finds, each as a :class:`Problem` (the bot, the field path, what is wrong, how to fix it);
:func:`refuse` turns a non-empty list into one :class:`~clawpen.errors.ConfigError` that names
them all. Nothing here changes the host: it reads the vault's names (no key needed), stats
mount sources and binds each published port for a moment.

What is checked, per bot (what would otherwise only fail once the bot starts, shown in
``clawpen status``):

* the policy builds (``Bot.to_policy``: mounts resolve and obey the rules), the workspace and
  mounts are allowed where they sit (:func:`clawpen.spec.rules.check_workspace_location`);
* the restart policy builds (``RestartPolicy.from_spec``: ``backoff_initial <= backoff_max``,
  ...), as :class:`~clawpen.daemon.runtime.Instance` builds it;
* the health check's address parses (as the health watcher parses it);
* ``cpus`` <= the host's CPUs, ``memory`` <= the host's memory;
* the plan builds (:func:`clawpen.daemon.runtime.instance_plan`, with the daemon's host facts);
* every secret is in the vault; every ``filesystem.ro``/``rw`` source exists;
* every published host address:port can be bound now, unless clawpen's own bots hold it and
  ``up`` releases it before it starts the new ones (see ``released``).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from clawpen.errors import ClawpenError, ConfigError
from clawpen.plan.build import HostFacts, build_plan
from clawpen.plan.model import Identity, SeccompPolicy
from clawpen.spec import rules
from clawpen.spec.models import Bot
from clawpen.spec.policy import BotPolicy
from clawpen.spec.units import format_size
from clawpen.supervisor.backoff import RestartPolicy

# uid/gid of the stand-in identity the plan is built with (allocating the bot's real uid is a
# change, and the uid does not decide whether a plan builds)
_PLACEHOLDER_ID = 65534


class Problem(NamedTuple):
    """One reason a bot cannot start: ``field`` is a path such as ``bots.web.resources.cpus``."""

    bot: str
    field: str
    what: str
    fix: str


class HostLimits(NamedTuple):
    """What the host can give: the daemon's host facts and its memory in bytes."""

    facts: HostFacts
    memory: int


def host_memory() -> int:
    """The host's physical memory in bytes."""
    return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))


def port_in_use(host_ip: str, port: int) -> str | None:
    """Why ``host_ip:port`` cannot be listened on now, or None when it can.

    Binds with the options of the port relay (:meth:`clawpen.net.relayctl.RelayControl.bind`:
    ``SO_REUSEADDR`` on), so the answer is the relay's: a listener on the port refuses it, a
    connection in TIME_WAIT does not."""
    family = socket.AF_INET6 if ":" in host_ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host_ip, port))
            sock.listen(1)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            return f"{host_ip}:{port} is already in use by another program"
        if err.errno == errno.EADDRNOTAVAIL:
            return f"{host_ip} is not an address of this host"
        return f"cannot listen on {host_ip}:{port}: {err.strerror or err}"
    return None


def _field(name: str, where: str | None, default: str) -> str:
    """A field path under ``bots.NAME`` from an error's ``where`` (which may be a bare field)."""
    if not where:
        return f"bots.{name}.{default}"
    return where if where.startswith("bots.") else f"bots.{name}.{where}"


def _restart(name: str, bot: Bot) -> list[Problem]:
    r = bot.restart
    out: list[Problem] = []
    if r.backoff_initial <= 0:
        out.append(
            Problem(name, f"bots.{name}.restart.backoff_initial", "backoff_initial must be > 0", 'e.g. "1s"')
        )
    elif r.backoff_initial > r.backoff_max:
        out.append(
            Problem(
                name,
                f"bots.{name}.restart.backoff_initial",
                f"backoff_initial ({r.backoff_initial:g} s) is longer than backoff_max ({r.backoff_max:g} s)",
                "make backoff_initial <= backoff_max",
            )
        )
    if out:
        return out
    try:  # what Instance.__init__ builds, whatever else it checks
        RestartPolicy.from_spec(r)
    except ClawpenError as err:
        out.append(Problem(name, _field(name, err.where, "restart"), err.what, err.hint or ""))
    return out


def _health(name: str, bot: Bot) -> list[Problem]:
    from clawpen.spec.healthcheck import parse_http, parse_tcp

    spec = bot.health
    try:
        if spec is not None and spec.http:
            parse_http(spec.http)
        if spec is not None and spec.tcp:
            parse_tcp(spec.tcp)
    except ValueError as err:
        kind = "http" if spec is not None and spec.http else "tcp"
        return [Problem(name, f"bots.{name}.health.{kind}", str(err), 'e.g. "http://127.0.0.1:8000/healthz"')]
    return []


def _limits(name: str, bot: Bot, host: HostLimits) -> list[Problem]:
    res = bot.resources
    out = []
    cpus = host.facts.cpu_count
    if res.cpus is not None and res.cpus > cpus:
        out.append(
            Problem(
                name,
                f"bots.{name}.resources.cpus",
                f"cpus = {res.cpus:g} asks for more CPUs than this host has ({cpus})",
                f"use a value from 0.01 to {cpus}",
            )
        )
    if res.memory > host.memory:
        out.append(
            Problem(
                name,
                f"bots.{name}.resources.memory",
                f"memory = {format_size(res.memory)} is more than this host has "
                f"({host.memory / 2**30:.1f} GiB)",
                f"use at most {format_size(host.memory >> 20 << 20)}",
            )
        )
    return out


def _locations(name: str, policy: BotPolicy, state_dir: Path, spec_file: Path | None) -> list[Problem]:
    """The workspace and writable mounts may not be, hold or sit in the state folder, ``/``, a
    system folder or the spec's folder (h1's rule, also applied when the bot starts)."""
    places = [("workspace", policy.workspace)] if policy.workspace else []
    places += [("filesystem.rw", src) for src, _dest in policy.rw]
    out = []
    for what, path in places:
        field = f"bots.{name}.{what}"
        try:
            rules.check_workspace_location(path, state_dir=state_dir, spec_file=spec_file, what=field)
        except ClawpenError as err:
            out.append(Problem(name, err.where or field, err.what, err.hint or ""))
    return out


def _sources(name: str, policy: BotPolicy) -> list[Problem]:
    out = []
    for what, mounts in (("ro", policy.ro), ("rw", policy.rw)):
        for src, _dest in mounts:
            if not os.path.exists(src):
                out.append(
                    Problem(
                        name,
                        f"bots.{name}.filesystem.{what}",
                        f"mount source {src} does not exist",
                        f"create it (mkdir -p {src}) or remove the mount",
                    )
                )
    return out


def _secrets(name: str, bot: Bot, vault_names: Collection[str]) -> list[Problem]:
    missing = [s for s in bot.secrets if s not in vault_names]
    if not missing:
        return []
    return [
        Problem(
            name,
            f"bots.{name}.secrets",
            f"secret{'s' if len(missing) > 1 else ''} not in the vault: {', '.join(missing)}",
            "; ".join(f"clawpen secrets set {s}" for s in missing),
        )
    ]


def _plan(name: str, bot: Bot, policy: BotPolicy, host: HostFacts, seccomp: SeccompPolicy) -> list[Problem]:
    ident = Identity(name=name, uid=_PLACEHOLDER_ID, gid=_PLACEHOLDER_ID)
    for replica in range(bot.replicas):  # as instance_plan builds it, for each replica
        with_replica = policy._replace(env=(*policy.env, ("CLAWPEN_REPLICA", str(replica))))
        try:
            build_plan(with_replica, ident, host, seccomp, die_with_parent=False)
        except ClawpenError as err:
            return [Problem(name, _field(name, err.where, "plan"), err.what, err.hint or "")]
        except ValueError as err:
            return [Problem(name, f"bots.{name}", str(err), getattr(err, "hint", ""))]
    return []


def _ports(name: str, bot: Bot, released: Collection[tuple[str, int]]) -> list[Problem]:
    from clawpen.spec.publish import parse_publish

    out = []
    for raw in bot.network.publish:
        entry = parse_publish(raw)
        if (entry.host_ip, entry.host_port) in released:
            continue  # clawpen's own bot holds it now and lets go of it before anything starts
        why = port_in_use(entry.host_ip, entry.host_port)
        if why is not None:
            out.append(
                Problem(
                    name,
                    f"bots.{name}.network.publish",
                    f"published port {raw!r}: {why}",
                    "stop what listens there (ss -ltnp), or publish another host port",
                )
            )
    return out


def check_bot(
    name: str,
    bot: Bot,
    base_dir: str,
    *,
    host: HostLimits,
    seccomp: SeccompPolicy,
    vault_names: Collection[str],
    state_dir: Path,
    spec_file: Path | None = None,
    released: Collection[tuple[str, int]] = (),
) -> list[Problem]:
    """Every problem that would keep bot ``name`` from starting (empty: none found)."""
    problems = _restart(name, bot) + _health(name, bot) + _limits(name, bot, host)
    problems += _secrets(name, bot, vault_names)
    try:
        policy = bot.to_policy(name, base_dir)
    except rules.RuleViolation as err:
        return [*problems, Problem(name, f"bots.{name}", str(err), err.hint)]
    except ClawpenError as err:
        return [*problems, Problem(name, _field(name, err.where, "policy"), err.what, err.hint or "")]
    problems += _locations(name, policy, state_dir, spec_file)
    problems += _sources(name, policy)
    if not any(p.field.endswith(".resources.cpus") for p in problems):  # build_plan says it too
        problems += _plan(name, bot, policy, host.facts, seccomp)
    problems += _ports(name, bot, released)
    return problems


def check_bots(bots: Iterable[tuple[str, Bot]], base_dir: str, **facts: Any) -> list[Problem]:
    """:func:`check_bot` for each bot, in order (``facts``: its keyword arguments)."""
    return [problem for name, bot in bots for problem in check_bot(name, bot, base_dir, **facts)]


def refuse(problems: list[Problem], spec_file: Path | str) -> None:
    """Raise one :class:`ConfigError` naming every problem (nothing when there is none)."""
    if not problems:
        return
    bots = sorted({p.bot for p in problems})
    lines = [f"  {p.bot}: {p.field}: {p.what}" + (f" (fix: {p.fix})" if p.fix else "") for p in problems]
    raise ConfigError(
        f"nothing was applied: {len(bots)} bot{'s' if len(bots) > 1 else ''} cannot start "
        f"({', '.join(bots)})\n" + "\n".join(lines),
        where=str(spec_file),
        hint="fix every problem listed, then run `clawpen up` again (`clawpen up --dry-run` checks the same)",
    )


def vault_names(state_dir: Path) -> list[str]:
    """The secrets the vault holds (names only; reading them needs no key)."""
    from clawpen.vault.store import Vault

    return Vault(state_dir).names()
