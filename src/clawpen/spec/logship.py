"""``[logs]``: where the bots' logs go besides this host (``[logs.ship]``)::

    [logs.ship]
    backlog = "1G"     # per target and log: unshipped bytes kept; past it the oldest are skipped
    batch = 500        # records per send

    [[logs.ship.targets]]
    name = "central"
    type = "syslog"                       # or "journal-remote"
    url = "tls://logs.example.net:6514"   # syslog: tcp:// or tls://; journal-remote: http(s)://
    ca = "/etc/clawpen/logs-ca.pem"       # the receiver's CA (tls://, https://)
    cert = "/etc/clawpen/logs-client.pem" # optional client certificate and its key
    key = "/etc/clawpen/logs-client.key"
    server_name = "logs.example.net"      # the name in the receiver's certificate (default: host)
    bots = ["web"]                        # default: every bot

None of this is part of a bot's policy hash: changing it restarts nothing. The daemon's shipper
(:mod:`clawpen.logs.ship.shipper`) follows it after every applied ``up``.
"""

from __future__ import annotations

import os
import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from clawpen.spec import rules
from clawpen.spec.fieldtypes import Size

DEFAULT_BACKLOG = 1 << 30
DEFAULT_BATCH = 500
MAX_TARGETS = 16
_TARGET_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
SCHEMES: dict[str, tuple[str, ...]] = {"syslog": ("tcp", "tls"), "journal-remote": ("http", "https")}
SECURE = ("tls", "https")


def _path(v: str | None, info: ValidationInfo, what: str) -> str | None:
    if v is None:
        return None
    if "\0" in v or "\n" in v or not v.strip():
        raise rules.RuleViolation(f"{what} {v!r} is not a usable path", f"give the path of the {what} file")
    ctx = info.context if isinstance(info.context, dict) else {}
    base = str(ctx.get("base_dir", os.getcwd()))
    return os.path.normpath(os.path.join(base, os.path.expanduser(v)))


class ShipTarget(BaseModel):
    """One receiver of the bots' log records."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="the target's name (its cursor file, its status and its metric label)")
    type: Literal["syslog", "journal-remote"] = Field(
        description="syslog (RFC 5424 over TCP/TLS) or journal-remote (systemd-journal-remote's upload)"
    )
    url: str = Field(
        description="syslog: tcp://host:port or tls://host:port; journal-remote: http(s)://host:port"
    )
    ca: str | None = Field(None, description="the CA file the receiver's certificate is checked against")
    cert: str | None = Field(None, description="a client certificate (PEM), for receivers that ask for one")
    key: str | None = Field(None, description="the client certificate's private key (PEM)")
    server_name: str | None = Field(None, description="the name the receiver's certificate must carry")
    bots: list[str] | None = Field(None, description="the bots whose logs go there (default: every bot)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _TARGET_NAME.match(v):
            raise rules.RuleViolation(
                f"target name {v!r} is not allowed", "lowercase letters, digits, '-' and '_', up to 64"
            )
        return v

    @field_validator("ca", "cert", "key")
    @classmethod
    def _files(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _path(v, info, str(info.field_name))

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", v):
            raise rules.RuleViolation(f"server_name {v!r} is not a host name", 'e.g. "logs.example.net"')
        return v

    @field_validator("bots")
    @classmethod
    def _bots(cls, v: list[str] | None) -> list[str] | None:
        for bot in v or []:
            rules.check_bot_name(bot)
        return v

    @model_validator(mode="after")
    def _url(self) -> ShipTarget:
        allowed = SCHEMES[self.type]
        example = f"{allowed[1]}://logs.example.net:{6514 if self.type == 'syslog' else 19532}"
        hint = f"write {allowed[0]}://HOST:PORT or {allowed[1]}://HOST:PORT, e.g. {example!r}"
        try:
            parts = urlsplit(self.url)
            port = parts.port
        except ValueError:
            raise rules.RuleViolation(f"url {self.url!r} is not a URL", hint) from None
        if parts.scheme not in allowed:
            raise rules.RuleViolation(
                f"url {self.url!r}: a {self.type} target takes {' or '.join(allowed)}", hint
            )
        if not parts.hostname or port is None or port == 0:
            raise rules.RuleViolation(f"url {self.url!r} needs a host and a port", hint)
        if parts.username or parts.password:
            raise rules.RuleViolation(
                f"url of target {self.name!r} holds credentials", "use a client certificate (cert, key)"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise rules.RuleViolation(f"url {self.url!r} has a path; give only scheme, host and port", hint)
        secure = parts.scheme in SECURE
        if not secure and (self.ca or self.cert or self.key or self.server_name):
            raise rules.RuleViolation(
                f"target {self.name!r}: ca, cert, key and server_name need {allowed[1]}://",
                f"use {allowed[1]}://{parts.netloc}",
            )
        if (self.cert is None) != (self.key is None):
            raise rules.RuleViolation(
                f"target {self.name!r}: cert and key go together",
                "give both the client certificate and its key",
            )
        return self

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 0

    @property
    def secure(self) -> bool:
        return urlsplit(self.url).scheme in SECURE

    def wants(self, bot: str) -> bool:
        return self.bots is None or bot in self.bots


class ShipSettings(BaseModel):
    """``[logs.ship]``: the targets and how much each may fall behind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backlog: Size = Field(
        DEFAULT_BACKLOG,
        description="per target and log: bytes not shipped yet; past it the oldest are skipped",
    )
    batch: int = Field(DEFAULT_BATCH, ge=1, le=100_000, description="records per send")
    targets: list[ShipTarget] = Field(default_factory=list, description="where the logs go")

    @field_validator("targets")
    @classmethod
    def _unique(cls, v: list[ShipTarget]) -> list[ShipTarget]:
        if len(v) > MAX_TARGETS:
            raise rules.RuleViolation(f"{len(v)} log targets, at most {MAX_TARGETS}", "ship to fewer targets")
        seen: set[str] = set()
        for target in v:
            if target.name in seen:
                raise rules.RuleViolation(
                    f"two log targets are named {target.name!r}", "give each its own name"
                )
            seen.add(target.name)
        return v


class LogsSettings(BaseModel):
    """``[logs]``: the bots' logs beyond this host."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ship: ShipSettings = ShipSettings()
