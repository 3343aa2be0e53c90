"""The operations manual (per bot) and the emergency plan (per deployment) as HTML.

Every text of the spec goes through :func:`e` (``html.escape``, quotes too); a command shows a
bot's name shell-quoted. Secrets appear by name only: the report never reads the vault.
"""

from __future__ import annotations

import html
import shlex
from collections.abc import Iterable

from clawpen.report.model import BotView, Deployment


def e(text: object) -> str:
    return html.escape(str(text), quote=True)


def commands(cmds: Iterable[tuple[str, str]]) -> str:
    """A table of (command, what it does): the command in <code>, both escaped."""
    rows = "".join(f"<tr><td><code>{e(c)}</code></td><td>{e(w)}</td></tr>" for c, w in cmds)
    return f'<table class="cmds"><tbody>{rows}</tbody></table>'


def _facts(rows: Iterable[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows if v)
    return f'<table class="facts"><tbody>{body}</tbody></table>'


def _list(items: Iterable[str], empty: str) -> str:
    got = [f"<li><code>{e(i)}</code></li>" for i in items]
    return f"<ul>{''.join(got)}</ul>" if got else f"<p>{e(empty)}</p>"


def _network(bot: BotView) -> str:
    if bot.egress_mode == "list":
        egress = "only these destinations, through the gateway:"
    elif bot.egress_mode == "open":
        egress = "open: any public destination, through the gateway"
    elif bot.egress_mode == "learn":
        egress = "learn mode: open for a while and logged, then nothing (see clawpen net suggest)"
    else:
        egress = "none: a private loopback only"
    parts = [f'<p class="egress">Egress: {e(egress)}</p>']
    if bot.egress:
        parts.append(
            f'<ul class="allowlist">{"".join(f"<li><code>{e(x)}</code></li>" for x in bot.egress)}</ul>'
        )
    if bot.publish:
        published = ", ".join(bot.publish)
        src = f" (from {', '.join(bot.expose_from)})" if bot.expose_from else ""
        parts.append(f"<p>Published ports (host:bot): <code>{e(published)}</code>{e(src)}</p>")
    if bot.bandwidth:
        parts.append(f"<p>Bandwidth: {e(bot.bandwidth)} each way</p>")
    return "".join(parts)


def bot_manual(bot: BotView, dep: Deployment) -> str:
    n = shlex.quote(bot.name)
    logs_at = f"{dep.state_dir}/logs/{bot.name}.log (rotated beside it)"
    start = _facts(
        [
            ("command", bot.command),
            ("tier", f"{bot.tier} ({bot.image})" if bot.image else bot.tier),
            ("replicas", str(bot.replicas)),
            (
                "runs as",
                f"host uid {bot.user} (its own user)"
                if bot.user
                else "its own host uid (given at first start)",
            ),
            ("restart", bot.restart),
            ("schedule", bot.schedule),
            ("health check", bot.health),
            ("time limit", bot.timeout),
        ]
    )
    data = _facts(
        [
            (
                "workspace",
                f"{bot.workspace} (at /workspace)"
                if bot.workspace
                else "none (nothing of the host is writable)",
            ),
            ("extra paths", "; ".join(bot.mounts)),
            ("logs", logs_at),
            ("snapshots", bot.snapshots),
            ("secrets (names)", ", ".join(bot.secrets) or "none"),
            ("environment (names)", ", ".join(bot.env_names)),
        ]
    )
    limits = _facts(bot.limits)
    cmds = [
        (f"clawpen status {n}", "state, health and recent events"),
        (f"clawpen logs {n} --since 1h", "its log of the last hour (-f to follow)"),
        (f"clawpen exec {n} -- sh", "a shell inside the running bot, as the bot"),
        (f"clawpen restart {n}", "restart it"),
        (f"clawpen stop {n}", "stop it (clawpen start to start again)"),
        ("clawpen releases", "the releases, newest first"),
        ("clawpen rollback --dry-run", "what a rollback to the release before would change"),
        ("clawpen rollback N", "re-apply release N"),
    ]
    if bot.workspace:
        cmds += [
            (f"clawpen snapshot create {n}", "snapshot its workspace now"),
            (f"clawpen snapshot ls {n}", "its workspace snapshots"),
            (f"clawpen stop {n} && clawpen snapshot restore {n} ID", "restore its workspace (then start it)"),
        ]
    if bot.egress_mode != "none":
        cmds += [
            (f"clawpen net log {n} --since 1h", "its connections through the gateway"),
            (f"clawpen net suggest {n}", "the egress line for what it reached or was denied"),
        ]
    if bot.ha_hosts:
        cmds.append(
            (f"clawpen failover {n} --to HOST", f"hand it to another host of {', '.join(bot.ha_hosts)}")
        )
    return (
        f'<article class="bot" data-bot="{e(bot.name)}"><h3>Bot {e(bot.name)}</h3>'
        f"<h4>How it starts</h4>{start}<h4>Data and logs</h4>{data}"
        f"<h4>Limits</h4>{limits}<h4>Network policy</h4>{_network(bot)}"
        f"<h4>Commands</h4>{commands(cmds)}</article>"
    )


def manual(dep: Deployment) -> str:
    if not dep.bots:
        return "<p>The spec has no bots.</p>"
    general = commands(
        [
            (f"clawpen up -f {shlex.quote(dep.spec_path)}", "apply the spec (a new release)"),
            ("clawpen ps", "every bot: state, health, memory, restarts"),
            ("clawpen events -f", "follow the daemon's events"),
            ("clawpen audit", "the deployment's risk picture"),
        ]
    )
    return f"<h3>The whole deployment</h3>{general}" + "".join(bot_manual(b, dep) for b in dep.bots)


def _scenario(key: str, title: str, intro: str, body: str) -> str:
    return f'<div class="scenario" id="plan-{e(key)}"><h3>{e(title)}</h3><p>{e(intro)}</p>{body}</div>'


def _compromised(dep: Deployment) -> str:
    parts = []
    for bot in dep.bots:
        n = shlex.quote(bot.name)
        secrets = sorted({*bot.secrets, *bot.ha_secrets})
        cmds = [(f"clawpen stop {n}", "stop it at once (its processes get SIGTERM, then SIGKILL)")]
        if bot.workspace:
            cmds.append((f"clawpen snapshot create {n}", "keep its workspace as it is, for forensics"))
        cmds += [(f"clawpen secrets set {shlex.quote(s)}", "rotate this secret (new value)") for s in secrets]
        if bot.egress_mode != "none":
            cmds.append((f"clawpen net log {n} --since 7d", "review every connection it made"))
            cmds.append((f"clawpen net log {n} --denied", "what it tried and was refused"))
        cmds.append((f"clawpen logs {n} --since 7d", "its own log"))
        cmds.append(("clawpen audit-log", "who changed what, recently"))
        if secrets:
            says = f"Secrets to rotate: {', '.join(secrets)}; revoke the old values at their issuer too."
        else:
            says = "It has no vault secrets."
        if bot.env_names:
            says += f" Its environment ({', '.join(bot.env_names)}) may hold credentials: replace them too."
        parts.append(f"<h4>{e(bot.name)}</h4><p>{e(says)}</p>" + commands(cmds))
    return "".join(parts)


def plan(dep: Deployment) -> str:
    """The emergency plan: what to do, with this deployment's commands, in five situations."""
    state = dep.state_dir
    out = [
        _scenario(
            "compromised",
            "A bot is compromised",
            "Stop it, keep its data for forensics, rotate its secrets, review its connections; "
            "start it again only from a known good release.",
            _compromised(dep) or "<p>No bots.</p>",
        ),
        _scenario(
            "full",
            "The host is full",
            "Stop, down and ps keep working on a full disk; free space, then let the daemon write again.",
            commands(
                [
                    (f"df -h {shlex.quote(state)}", "how full the state's file system is"),
                    ("clawpen storage status", "space per storage tier"),
                    ("clawpen storage age", "move old data to the warm and cold tiers now"),
                    ("clawpen snapshot forget BOT --keep-daily 7 --keep-weekly 4", "prune a bot's snapshots"),
                    ("clawpen ps", "check the bots once space is back"),
                ]
            ),
        ),
    ]
    listed = [b for b in dep.bots if b.egress_mode != "none"]
    gw_cmds = []
    for bot in listed:
        n = shlex.quote(bot.name)
        gw_cmds += [
            (f"clawpen net log {n} --denied", f"what the gateway refused {bot.name}"),
            (f"clawpen net suggest {n}", "the egress line that would allow it"),
        ]
    gw_cmds += [
        (f"clawpen up -f {shlex.quote(dep.spec_path)} --dry-run", "after editing egress: what would change"),
        (f"clawpen up -f {shlex.quote(dep.spec_path)}", "apply it"),
    ]
    out.append(
        _scenario(
            "gateway",
            "The gateway denies what a bot needs",
            "Find the refused destination in the connection log, add it to the bot's egress list "
            "(as narrow as it can be), apply.",
            commands(gw_cmds),
        )
    )
    auto = (
        "on: a release whose bots do not come up is rolled back by the daemon" if dep.auto_rollback else "off"
    )
    out.append(
        _scenario(
            "upgrade",
            "An upgrade failed",
            f"Go back to the last good release. Automatic rollback is {auto}.",
            commands(
                [
                    ("clawpen releases", "find the last good release N"),
                    ("clawpen rollback N --dry-run", "what would change"),
                    ("clawpen rollback N", "re-apply it (its spec)"),
                    ("clawpen rollback N --with-data", "its workspaces too (from before-release snapshots)"),
                ]
            ),
        )
    )
    ha = [b for b in dep.bots if b.ha_hosts]
    lost = [
        (
            "clawpen snapshot restore --state",
            "on the new host: clawpen's own state (database, vault, audit log)",
        ),
        (f"clawpen up -f {shlex.quote(dep.spec_path)}", "start the bots from the spec"),
        ("clawpen snapshot restore BOT ID", "each bot's workspace from its snapshots"),
    ]
    if ha:
        lost = (
            [("clawpen cluster status", "which host is primary for each HA bot")]
            + [
                (
                    f"clawpen failover {shlex.quote(b.name)} --to HOST",
                    f"move {b.name} to one of {', '.join(b.ha_hosts)}",
                )
                for b in ha
            ]
            + lost
        )
    intro = (
        "HA bots fail over to another cluster host; the others are restored from snapshots on a new host. "
        if ha
        else "No bot has failover: restore on a new host from the snapshots. "
    )
    intro += "Keep a copy of the snapshot repository and the vault's master key off this host."
    out.append(_scenario("host-lost", "The host is lost", intro, commands(lost)))
    return "".join(out)
