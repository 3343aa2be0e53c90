"""The spec group of ``clawpen audit``: each bot's exposure, scored like ``systemd-analyze security``.

Each bot gets an exposure from 0.0 (as locked down as clawpen allows) to 10.0: the weighted share
of the checks below it fails. Every failed check is a finding naming the spec line. The weights
follow what a compromised bot could do with the gap: open egress (exfiltration anywhere) and a
public listener (reachable by anyone) weigh most.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clawpen.assess.model import AuditContext, AuditFinding, CheckInfo, Severity, finding

if TYPE_CHECKING:
    from clawpen.spec.loader import LoadedSpec
    from clawpen.spec.models import Bot

PRACTICE = "deployment practice"


def _info(name: str, title: str, source: str = PRACTICE) -> CheckInfo:
    return CheckInfo(f"spec.{name}", "spec", title, source)


EGRESS_OPEN = _info(
    "egress_open", 'egress = "open": the bot may reach any public address', "practice 3 (firewall)"
)
EGRESS_LEARN = _info(
    "egress_learn", 'egress = "learn": open while clawpen learns the allowlist', "practice 3"
)
EGRESS_WIDE = _info(
    "egress_wide", "an egress pattern matches a whole top-level domain or every port", "practice 3"
)
PRIVATE = _info("allow_private", "the bot may reach private or link-local networks", "practice 3")
PUBLIC = _info("published_public", "a port is published on a public address", "practice 3; CIS 3.5")
PUBLIC_ANY = _info("published_anyone", "a public port has no `from` source list", "practice 3; CIS 3.5")
ENV_SECRET = _info("secret_in_env", "a value that looks like a secret is written in `env`", "practice 12")
SECRET_ENV = _info("secret_as_env", "a vault secret is also passed as an environment variable", "practice 12")
NO_DISK = _info("no_disk_cap", 'resources.disk = "unlimited": the bot can fill the disk', "practice 5")
RW_MOUNT = _info("writable_mount", "a host path is mounted read-write besides the workspace", "practice 11")
NO_HEALTH = _info("no_health_check", "no health check: a hung bot looks alive", "practice 6")
NO_RESTART = _info("no_restart", 'restart.policy = "no": a crashed bot stays down', "practice 6")
NO_BANDWIDTH = _info("no_bandwidth_cap", "egress without a bandwidth cap", "practice 5")
CHECKS = (
    EGRESS_OPEN,
    EGRESS_LEARN,
    EGRESS_WIDE,
    PRIVATE,
    PUBLIC,
    PUBLIC_ANY,
    ENV_SECRET,
    SECRET_ENV,
    NO_DISK,
    RW_MOUNT,
    NO_HEALTH,
    NO_RESTART,
    NO_BANDWIDTH,
)
# weight of each check in the exposure (the exposure is 10 x failed weight / all weight)
WEIGHTS = {
    EGRESS_OPEN.id: 10,
    EGRESS_LEARN.id: 6,
    EGRESS_WIDE.id: 4,
    PRIVATE.id: 4,
    PUBLIC.id: 6,
    PUBLIC_ANY.id: 6,
    ENV_SECRET.id: 8,
    SECRET_ENV.id: 2,
    NO_DISK.id: 4,
    RW_MOUNT.id: 4,
    NO_HEALTH.id: 2,
    NO_RESTART.id: 1,
    NO_BANDWIDTH.id: 1,
}
# platforms where anyone can get a name below the domain (a bucket, an app, a tunnel): a wildcard
# over them lets a bot send data to an attacker's own endpoint through the allowlist
SHARED_PLATFORMS = (
    "amazonaws.com", "cloudfront.net", "azurewebsites.net", "blob.core.windows.net", "googleapis.com",
    "appspot.com", "firebaseio.com", "web.app", "run.app", "cloudfunctions.net", "githubusercontent.com",
    "github.io", "herokuapp.com", "workers.dev", "pages.dev", "vercel.app", "netlify.app", "ngrok.io",
    "ngrok-free.app", "trycloudflare.com", "glitch.me", "repl.co", "onrender.com", "fly.dev",
    "digitaloceanspaces.com", "r2.dev", "pipedream.net", "webhook.site", "requestbin.net",
)  # fmt: skip
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|AUTH)", re.I)
_HARMLESS = re.compile(r"^(|true|false|yes|no|on|off|0|1|none|null|\$\{?[A-Z_]+\}?)$", re.I)


@dataclass(frozen=True)
class Exposure:
    """One bot's exposure: 0.0-10.0 and its label (systemd-analyze's words)."""

    bot: str
    value: float
    failed: tuple[str, ...]

    @property
    def label(self) -> str:
        if self.value < 1.0:
            return "SAFE"
        if self.value < 3.0:
            return "OK"
        if self.value < 5.0:
            return "MEDIUM"
        if self.value < 8.0:
            return "EXPOSED"
        return "UNSAFE"


def exposure(bot: str, findings: list[AuditFinding]) -> Exposure:
    failed = tuple(sorted({f.check for f in findings if f.subject.split(":")[0] == bot}))
    total = sum(WEIGHTS.values())
    return Exposure(bot, round(10.0 * sum(WEIGHTS[c] for c in failed) / total, 1), failed)


def _line(loaded: LoadedSpec, *path: str) -> str:
    from clawpen.spec.loader import locate

    line = locate(loaded.text, tuple(path))
    return f"{loaded.path}:{line}" if line else str(loaded.path)


def bot_findings(loaded: LoadedSpec, name: str, bot: Bot) -> list[AuditFinding]:
    """The findings of one bot of ``loaded``."""
    from clawpen.spec.publish import parse_publish

    out: list[AuditFinding] = []
    net = bot.network
    at = _line(loaded, "bots", name, "network", "egress")

    def add(  # noqa: PLR0917 (the finding's fields, in order)
        info: CheckInfo, sev: Severity, title: str, why: str, fix: str, where: str, sub: str = ""
    ) -> None:
        out.append(finding(info, sev, title, why, fix, where=where, subject=f"{name}:{sub}" if sub else name))

    if net.egress == "open":
        add(
            EGRESS_OPEN,
            Severity.HIGH,
            f"{name}: egress is open to every public address",
            "a compromised or misled bot can send its data and keys anywhere",
            f'list the hosts it needs: `clawpen net suggest {name}`, then egress = ["api.example.com:443"]',
            at,
        )
    elif net.egress == "learn":
        add(
            EGRESS_LEARN,
            Severity.MEDIUM,
            f"{name}: egress is in learn mode (open while learning)",
            "while learning, the bot can reach any public address",
            f"apply the learned list: `clawpen net suggest {name}` and write it as egress",
            at,
        )
    else:
        for pattern in net.egress:
            host = pattern.rsplit(":", 1)[0] if not pattern.startswith("[") else ""
            if not host.startswith("*."):
                continue
            base = host[2:].lower()
            if any(base == p or base.endswith("." + p) or p.endswith("." + base) for p in SHARED_PLATFORMS):
                add(
                    EGRESS_WIDE,
                    Severity.MEDIUM,
                    f"{name}: egress pattern {pattern!r} covers a platform anyone can publish on",
                    "anyone can get a bucket, app or tunnel below it, so the allowlist lets data out to "
                    "an attacker's endpoint",
                    'name the exact host ("my-bucket.s3.amazonaws.com:443"), not the whole platform',
                    at,
                    pattern,
                )
        if net.egress and net.bandwidth is None:
            add(
                NO_BANDWIDTH,
                Severity.LOW,
                f"{name}: egress has no bandwidth cap",
                "one bot can use the host's whole uplink and starve the others",
                'set network.bandwidth, e.g. "8mbit"',
                _line(loaded, "bots", name, "network"),
            )
    for cidr in net.allow_private:
        one = ipaddress.ip_network(cidr, strict=False)
        single = one.prefixlen == one.max_prefixlen
        add(
            PRIVATE,
            Severity.LOW if single else Severity.MEDIUM,
            f"{name}: may reach the private {'address' if single else 'network'} {cidr}",
            "a compromised bot can probe and attack "
            + ("that machine's other services" if single else "the machines of the local network"),
            "keep it only while the bot needs that service"
            if single
            else "narrow it to the one address of the service the bot needs",
            _line(loaded, "bots", name, "network", "allow_private"),
            cidr,
        )
    for raw in net.publish:
        pub = parse_publish(raw)
        if pub.loopback:
            continue
        where = _line(loaded, "bots", name, "network", "publish")
        add(
            PUBLIC,
            Severity.MEDIUM,
            f"{name}: port {pub.host_port} is published on {pub.host_ip}",
            "the bot is reachable from other machines, so its own bugs become the host's",
            "publish on 127.0.0.1 and reach it through SSH or a reverse proxy: "
            f'"127.0.0.1:{pub.host_port}:{pub.bot_port}"',
            where,
            str(pub.host_port),
        )
        if not net.from_:
            add(
                PUBLIC_ANY,
                Severity.HIGH,
                f"{name}: port {pub.host_port} is open to every address",
                "anyone on the internet can reach the bot's listener",
                'limit the sources: network.from = ["203.0.113.7/32"]',
                where,
                str(pub.host_port),
            )
    for key, value in bot.env.items():
        if _SECRET_NAME.search(key) and not _HARMLESS.match(value.strip()):
            add(
                ENV_SECRET,
                Severity.HIGH,
                f"{name}: env {key} holds what looks like a secret in plain text",
                "the spec is copied, diffed and kept in every release; a key written there leaks with it",
                f"`clawpen secrets set {key}` and list it in secrets (and secret_env if it must be "
                "a variable)",
                _line(loaded, "bots", name, "env", key),
                key,
            )
    for key in bot.secret_env:
        add(
            SECRET_ENV,
            Severity.LOW,
            f"{name}: secret {key} is also an environment variable",
            "environment variables are inherited by every child process and easy to log by mistake",
            f"read /run/secrets/{key} in the bot and drop it from secret_env",
            _line(loaded, "bots", name, "secret_env"),
            key,
        )
    if bot.resources.disk is None:
        add(
            NO_DISK,
            Severity.MEDIUM,
            f"{name}: no disk cap",
            "a bot in a loop can fill the disk every bot shares",
            'set resources.disk, e.g. "10G"',
            _line(loaded, "bots", name, "resources", "disk"),
        )
    for mount in bot.filesystem.rw:
        add(
            RW_MOUNT,
            Severity.MEDIUM,
            f"{name}: {mount.split(':')[0]} is mounted read-write",
            "the bot can change host files outside its workspace",
            "mount it read-only (filesystem.ro), or copy what the bot needs into its workspace",
            _line(loaded, "bots", name, "filesystem", "rw"),
            mount,
        )
    if bot.health is None and bot.timeout is None:
        add(
            NO_HEALTH,
            Severity.LOW,
            f"{name}: no health check",
            "a bot that hangs keeps running and nobody is told",
            'add health = { http = "http://127.0.0.1:PORT/health" } (or tcp, or cmd)',
            _line(loaded, "bots", name),
        )
    if bot.restart.policy == "no" and bot.timeout is None:
        add(
            NO_RESTART,
            Severity.LOW,
            f"{name}: is not restarted when it crashes",
            "a long-running bot that crashes stays down until someone notices",
            'set restart.policy = "on-failure"',
            _line(loaded, "bots", name, "restart", "policy"),
        )
    return out


def run(ctx: AuditContext) -> list[AuditFinding]:
    if ctx.spec_path is None:
        return []
    from clawpen.spec.loader import load_spec

    loaded = load_spec(ctx.spec_path)
    out: list[AuditFinding] = []
    for name, bot in loaded.spec.bots.items():
        out.extend(bot_findings(loaded, name, bot))
    return out
