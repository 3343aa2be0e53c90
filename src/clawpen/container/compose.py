"""``clawpen export compose``: the spec's container bots as a Compose file, a hand-over.

The file carries what Compose can hold of each bot's policy: its image and command, its own
host uid:gid, cpus / mem_limit (swap off) / pids_limit / nofile, replicas, the restart policy,
a read-only root with a tmpfs /tmp of the bot's size, all capabilities dropped,
no-new-privileges, an init, the workspace (the only writable bind besides ``filesystem.rw``),
read-only mounts, secrets as Compose secrets read from files (never values), a ``cmd`` health
check, and ``network_mode: none`` when the bot has no egress and publishes no port.

What Compose cannot hold is said in the file's comments, never silently dropped: clawpen's egress
gateway (allowlist, DNS, connection log) does not exist outside clawpen, so a bot with egress or
published ports gets an ordinary, unfiltered network; also the disk cap, bandwidth, io weight,
``secret_env``, http/tcp health checks, build steps, ``start_cpus``, CLAWPEN_REPLICA and
clawpen's seccomp deny-list.

:func:`compose_dict` is pure (bots in, dict out); :func:`compose_text` renders it as YAML with
the comments.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clawpen.errors import ConfigError
from clawpen.spec.policy import BotPolicy

HEADER = """\
# Written by `clawpen export compose`: a hand-over of the container bots to Docker Compose.
# This is NOT how clawpen runs them. Outside clawpen there is no clawpen supervisor, log
# pipeline, metrics, alerts, snapshots, and no egress gateway: a bot that clawpen let reach only
# its allowlist gets an ordinary, unfiltered network here (see the notes below); put an egress
# proxy or firewall in front of it yourself.
# Secrets: write each one to the file named under `secrets:` (e.g.
#   clawpen secrets get NAME --force > secrets/NAME), readable by the bot's uid only."""


@dataclass(frozen=True)
class ComposeBot:
    """One container bot as the export needs it: the normalized policy plus what is not in it."""

    policy: BotPolicy
    image: str
    uid: int
    gid: int
    replicas: int = 1
    restart: str = "on-failure"
    health_cmd: tuple[str, ...] | None = None
    health_kind: str | None = None  # "http" or "tcp" (not exported) when not a cmd check
    health_interval: float = 30.0
    health_timeout: float = 5.0
    health_retries: int = 3
    health_start: float = 0.0
    build_mount: str | None = None  # the bot's build steps' output mount (clawpen runs the steps)
    start_cpus: float | None = None  # the start-up CPU allowance (clawpen grants it)


def _seconds(value: float) -> str:
    return f"{int(value)}s" if float(value).is_integer() else f"{int(value * 1000)}ms"


def _cpus(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 3)


def service_notes(bot: ComposeBot) -> list[str]:
    """What of ``bot``'s policy this file does not hold, one line each."""
    p, notes = bot.policy, []
    if p.egress:
        rules = "anything public" if isinstance(p.egress, str) else ", ".join(p.egress)
        notes.append(f"egress was limited by clawpen's gateway to: {rules}; here it is NOT limited")
    elif p.publish:
        notes.append("no egress in clawpen, but publishing ports needs a network: egress is NOT blocked here")
    if p.disk is not None:
        notes.append(f"disk cap of {p.disk} bytes on the workspace and files is not enforced")
    if p.bandwidth is not None:
        notes.append(f"bandwidth limit of {p.bandwidth} bit/s is not enforced")
    if p.io_weight is not None:
        notes.append(f"io weight {p.io_weight} is not set")
    if p.secret_env:
        notes.append(
            f"secret_env {', '.join(p.secret_env)}: not set as environment variables; read /run/secrets/NAME"
        )
    if bot.health_kind:
        notes.append(f"{bot.health_kind} health check is not exported (Compose runs checks inside the image)")
    if bot.build_mount is not None:
        notes.append(
            f"build steps are not run: run them yourself and bind their output read-only at {bot.build_mount}"
        )
    if bot.start_cpus is not None:
        notes.append(f"start_cpus {bot.start_cpus:g} (the start-up CPU allowance) is not granted: cpus holds")
    if bot.replicas > 1:
        notes.append("CLAWPEN_REPLICA is not set per replica")
    notes.append("clawpen's seccomp deny-list is not applied (the engine's default profile is)")
    return notes


def service(bot: ComposeBot) -> dict[str, Any]:
    """The Compose service of one bot."""
    p = bot.policy
    svc: dict[str, Any] = {
        "image": bot.image,
        "command": list(p.command),
        "user": f"{bot.uid}:{bot.gid}",
        "restart": bot.restart,
        "read_only": True,
        "tmpfs": [f"/tmp:size={p.tmp if p.disk is None else min(p.tmp, p.disk)},mode=1777"],
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "init": True,
        "labels": {"clawpen.bot": p.name},
    }
    if p.env:
        svc["environment"] = dict(p.env)
    if p.cpus is not None:
        svc["cpus"] = _cpus(p.cpus)
    if p.memory is not None:
        svc["mem_limit"] = p.memory
        svc["memswap_limit"] = p.memory  # swap off, as in clawpen
    if p.pids is not None:
        svc["pids_limit"] = p.pids
    svc["ulimits"] = {"nofile": {"soft": p.nofile, "hard": p.nofile}}
    volumes: list[dict[str, Any]] = []
    if p.workspace:
        volumes.append({"type": "bind", "source": p.workspace, "target": "/workspace"})
        svc["working_dir"] = "/workspace"
    volumes += [{"type": "bind", "source": h, "target": d, "read_only": True} for h, d in p.ro]
    volumes += [{"type": "bind", "source": h, "target": d} for h, d in p.rw]
    if volumes:
        svc["volumes"] = volumes
    if p.secrets:
        svc["secrets"] = list(p.secrets)
    if p.publish:
        svc["ports"] = list(p.publish)
    if not p.egress and not p.publish:
        svc["network_mode"] = "none"
    if bot.health_cmd:
        svc["healthcheck"] = {
            "test": ["CMD", *bot.health_cmd],
            "interval": _seconds(bot.health_interval),
            "timeout": _seconds(bot.health_timeout),
            "retries": bot.health_retries,
        }
        if bot.health_start:
            svc["healthcheck"]["start_period"] = _seconds(bot.health_start)
    if bot.replicas > 1:
        svc["deploy"] = {"replicas": bot.replicas}
    return svc


def literal(value: Any) -> Any:
    """``value`` with every ``$`` in its strings doubled: Compose substitutes ``$VAR`` and
    ``${VAR}`` in every value, so a bot's ``$`` (in its command or env) must stay a ``$``."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, dict):
        return {k: literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [literal(v) for v in value]
    return value


def compose_dict(bots: Sequence[ComposeBot], *, secrets_dir: str = "./secrets") -> dict[str, Any]:
    """The Compose file (as a dict) for ``bots``; secrets are files under ``secrets_dir``."""
    data: dict[str, Any] = {"services": {bot.policy.name: literal(service(bot)) for bot in bots}}
    names = sorted({name for bot in bots for name in bot.policy.secrets})
    if names:
        data["secrets"] = {name: {"file": f"{secrets_dir.rstrip('/')}/{name}"} for name in names}
    return data


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def _key(key: str) -> str:
    """A mapping key: bare when YAML reads it back as the same string, else JSON-quoted."""
    return key if _PLAIN_KEY.match(key) and key.lower() not in _YAML_WORDS else json.dumps(key)


def _scalar(value: Any) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(str(value))  # JSON-quoted: YAML reads it as it is


def to_yaml(value: Any, indent: int = 0) -> list[str]:
    """Block-style YAML lines for dicts, lists and scalars (strings JSON-quoted)."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{_key(str(key))}:")
                lines += to_yaml(item, indent + 2)
            else:
                lines.append(f"{pad}{_key(str(key))}: {_empty(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                inner = to_yaml(item, indent + 2)
                lines.append(f"{pad}- {inner[0].lstrip()}")
                lines += inner[1:]
            else:
                lines.append(f"{pad}- {_empty(item)}")
    else:
        lines.append(pad + _scalar(value))
    return lines


def _empty(item: Any) -> str:
    if isinstance(item, dict):
        return "{}"
    if isinstance(item, list):
        return "[]"
    return _scalar(item)


def compose_text(bots: Sequence[ComposeBot], *, secrets_dir: str = "./secrets") -> str:
    """The Compose file: the hand-over header, per-bot notes, then the YAML."""
    lines = [HEADER]
    for bot in bots:
        lines.append(f"#\n# {bot.policy.name}:")
        lines += [f"#   - {note}" for note in service_notes(bot)]
    lines += to_yaml(compose_dict(bots, secrets_dir=secrets_dir))
    return "\n".join(lines) + "\n"


def compose_bot(name: str, bot: Any, base_dir: Path, *, image: str, uid: int, gid: int) -> ComposeBot:
    """One spec bot (:class:`clawpen.spec.models.Bot`) as a :class:`ComposeBot`."""
    health = bot.health
    return ComposeBot(
        policy=bot.to_policy(name, str(base_dir)),
        image=image,
        uid=uid,
        gid=gid,
        replicas=bot.replicas,
        restart=bot.restart.policy,
        health_cmd=tuple(health.cmd) if health and health.cmd else None,
        health_kind=("http" if health.http else "tcp") if health and not health.cmd else None,
        health_interval=health.interval if health else 30.0,
        health_timeout=health.timeout if health else 5.0,
        health_retries=health.retries if health else 3,
        health_start=health.start_period if health else 0.0,
        build_mount=bot.build.mount if bot.build is not None else None,
        start_cpus=bot.resources.start_cpus,
    )


def from_spec(
    spec: Any, base_dir: Path, identity: Callable[[str], tuple[int, int]], *, bots: Sequence[str] = ()
) -> list[ComposeBot]:
    """The container bots of a loaded spec (``spec.bots``; ``bots`` picks some by name) as
    :class:`ComposeBot`; ``identity(name)`` is the bot's host (uid, gid)."""
    from clawpen.container.image import bot_image

    chosen = []
    for name, bot in spec.bots.items():
        if (bots and name not in bots) or bot.tier != "container":
            continue
        image = bot_image(name, bot, base_dir)
        if image is None:
            raise ConfigError(
                f"bot {name} has no image", where=f"bots.{name}.image", hint='set image = "NAME:TAG"'
            )
        uid, gid = identity(name)
        tag = image if isinstance(image, str) else image.tag
        chosen.append(compose_bot(name, bot, base_dir, image=tag, uid=uid, gid=gid))
    return chosen
