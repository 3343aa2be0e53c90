"""``[cluster]`` (the etcd cluster the daemons join, and this host's name) and a bot's ``ha`` table
(primary/backup failover): their models and checks.

``[cluster]`` is spec-wide (no bot's policy, so no bot's hash). A bot's ``ha`` is part of its
stored policy when set, and left out of it when unset (:meth:`clawpen.spec.models.Bot._dump`),
so the policy hash of a bot without ``ha`` is what it was before the table existed.

Checks that need more than one table (``ha`` without ``[cluster]``; ``ha`` with replicas, the
container tier or active windows) raise at the ``ha`` key itself (:func:`at`), so the loader
names its file:line.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, ValidationError

from clawpen.errors import ConfigError
from clawpen.spec import rules
from clawpen.spec.fieldtypes import PositiveDuration
from clawpen.spec.healthcheck import parse_http
from clawpen.spec.storage import check_env_secrets, check_repository

HOST_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
HOST_ENV = "CLAWPEN_CLUSTER_HOST"
MODE = "primary-backup"
MAX_ENDPOINTS = 9
DEFAULT_PREFIX = "/clawpen"
DEFAULT_LEASE = 10.0
MIN_LEASE, MAX_LEASE = 2.0, 300.0  # etcd grants whole seconds, at least 2 (its minimum TTL)
DEFAULT_POLL, MIN_POLL = 1.0, 0.1
MIN_HOSTS, MAX_HOSTS = 2, 5
CHECK_INTERVAL, CHECK_TIMEOUT, CHECK_FAILURES = 30.0, 5.0, 3  # the practice's arbiter
MIN_CHECK_INTERVAL, MAX_CHECK_INTERVAL = 0.5, 3600.0
MAX_FAILURES = 100
SYNC_INTERVAL, MIN_SYNC_INTERVAL, MAX_SYNC_INTERVAL = 60.0, 5.0, 86400.0
_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}\Z")
_VAULT_HINT = (
    "keep the password in the vault (clawpen secrets set ETCD_PASSWORD), "
    'write password_secret = "ETCD_PASSWORD"'
)


def at(loc: tuple[str | int, ...], violation: rules.RuleViolation, value: object = None) -> ValidationError:
    """``violation`` as a validation error at ``loc`` (relative to the model being validated: a
    nested model's errors get its parents' keys in front), so the loader names that key's line."""
    detail = InitErrorDetails(type="value_error", loc=loc, input=value, ctx={"error": violation})
    return ValidationError.from_exception_data("clawpen.toml", [detail])


def refuse_password(data: Any, what: str, hint: str) -> Any:
    """A table's plain ``password`` key is refused (``what``: whose password), pointing at the vault."""
    if isinstance(data, dict) and "password" in data:
        raise at(("password",), rules.RuleViolation(f"{what} in the spec in plain text", hint))
    return data


def check_host_name(name: str, what: str = "host name") -> str:
    """A host's name in the cluster: a DNS label in lowercase (letters, digits, '-'; 1-63; no
    '-' first or last). It becomes part of etcd keys (``<prefix>/hosts/<name>``)."""
    if not HOST_NAME.match(name):
        raise rules.RuleViolation(
            f"{what} {rules.shown(str(name))} is not allowed",
            "use 1-63 characters: lowercase letters, digits and '-' (not first or last), e.g. \"host-a\"",
        )
    return name


def _endpoint(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an etcd client URL; RuleViolation saying what is wrong."""
    example = 'e.g. "https://10.0.0.5:2379"'
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise rules.RuleViolation(
            f"endpoint {rules.shown(url)} holds a space or a control character", example
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise rules.RuleViolation(f"endpoint {rules.shown(url)} is not an http:// or https:// URL", example)
    if parts.username is not None or parts.password is not None:
        raise rules.RuleViolation(
            f"endpoint {rules.shown(url)} holds a user or a password",
            "write the URL without them; name the user in user = ... and " + _VAULT_HINT,
        )
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or port == 0:
        raise rules.RuleViolation(
            f"endpoint {rules.shown(url)} needs a host and a port (1-65535)", f"{example} (etcd's port: 2379)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment or url.endswith(("?", "#")):
        raise rules.RuleViolation(
            f"endpoint {rules.shown(url)} has a path, a query or a fragment",
            f"give only scheme, host and port, {example}",
        )
    return parts.scheme, parts.hostname.lower(), port


def _absolute_file(path: str, field: str) -> str:
    if not path.startswith("/") or any(c in path for c in "\0\n\r"):
        raise rules.RuleViolation(
            f"{field} {rules.shown(path)} is not an absolute path",
            f'e.g. {field} = "/etc/clawpen/etcd-ca.pem"',
        )
    return path


class ClusterSettings(BaseModel):
    """``[cluster]``: the etcd cluster the daemons join and this host's name (spec-wide)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoints: list[str] = Field(
        min_length=1,
        max_length=MAX_ENDPOINTS,
        description='etcd client URLs, 1 to 9, http:// or https:// with host and port, e.g. "https://10.0.0.5:2379"',
    )
    host: str | None = Field(
        None,
        description=f"this host's name in the cluster (unset: env {HOST_ENV}, else the host name); "
        "lowercase letters, digits and '-', 1-63",
    )
    ca_file: str | None = Field(
        None, description="https: the CA that signed etcd's certificate (unset: system CAs)"
    )
    cert_file: str | None = Field(None, description="https: a client certificate (with key_file)")
    key_file: str | None = Field(None, description="https: the client certificate's key (with cert_file)")
    user: str | None = Field(None, description="etcd user (with password_secret)")
    password_secret: str | None = Field(None, description="the vault secret holding the etcd user's password")
    prefix: str = Field(
        DEFAULT_PREFIX, description='where clawpen keeps its keys in etcd (default "/clawpen")'
    )
    lease: PositiveDuration = Field(
        DEFAULT_LEASE,
        description='how long a leader holds a bot unrenewed, whole seconds, "2s" to "5m" (default "10s")',
    )
    poll: PositiveDuration = Field(
        DEFAULT_POLL, description='how often a backup looks at the leader key, at least "100ms", below lease'
    )

    @model_validator(mode="before")
    @classmethod
    def _no_plain_password(cls, data: Any) -> Any:
        return refuse_password(data, "[cluster] password would keep the etcd password", _VAULT_HINT)

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: list[str]) -> list[str]:
        seen: dict[tuple[str, str, int], str] = {}
        for url in v:
            key = _endpoint(url)
            if key in seen:
                raise rules.RuleViolation(
                    f"endpoints name {rules.shown(url)} twice (as {rules.shown(seen[key])})",
                    "list each etcd member once",
                )
            seen[key] = url
        if len({scheme for scheme, _, _ in seen}) > 1:
            raise rules.RuleViolation(
                "endpoints mix http:// and https://",
                "use https:// for every member (or http:// for every one)",
            )
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        return None if v is None else check_host_name(v, "[cluster] host")

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _files(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else _absolute_file(v, str(info.field_name))

    @field_validator("user")
    @classmethod
    def _user(cls, v: str | None) -> str | None:
        if v is not None and not _USER.match(v):
            raise rules.RuleViolation(
                f"etcd user {rules.shown(v)} is not allowed",
                "use 1-128 letters, digits and '.', '_', '@', '-', starting with a letter or digit",
            )
        return v

    @field_validator("password_secret")
    @classmethod
    def _password_secret(cls, v: str | None) -> str | None:
        return None if v is None else rules.check_secret_name(v)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        fine = all(0x21 <= ord(c) <= 0x7E for c in v) and len(v) <= 128
        if not fine or not v.startswith("/") or v.endswith("/") or "//" in v:
            raise rules.RuleViolation(
                f"prefix {rules.shown(v)} is not allowed",
                'start with "/", no "/" at the end or twice in a row, printable ASCII without spaces, '
                'at most 128 characters (default "/clawpen")',
            )
        return v

    @field_validator("lease")
    @classmethod
    def _lease(cls, v: float) -> float:
        if not MIN_LEASE <= v <= MAX_LEASE or not v.is_integer():
            raise rules.RuleViolation(
                f"lease {v:g}s is not allowed",
                'use whole seconds from "2s" to "5m" (etcd grants leases in whole seconds, '
                'at least 2; default "10s")',
            )
        return v

    @field_validator("poll")
    @classmethod
    def _poll(cls, v: float) -> float:
        if v < MIN_POLL:
            raise rules.RuleViolation(f"poll {v:g}s is too short", 'use at least "100ms" (default "1s")')
        return v

    @model_validator(mode="after")
    def _pairs(self) -> ClusterSettings:
        for first, second in (("cert_file", "key_file"), ("user", "password_secret")):
            if (getattr(self, first) is None) != (getattr(self, second) is None):
                given, missing = (first, second) if getattr(self, second) is None else (second, first)
                raise at(
                    (given,),
                    rules.RuleViolation(
                        f"[cluster] {given} is set without {missing} ({first} and {second} go together)",
                        f"add {missing}, or remove {given}",
                    ),
                )
        tls = [f for f in ("ca_file", "cert_file", "key_file") if getattr(self, f) is not None]
        if tls and not self.tls:
            raise at(
                (tls[0],),
                rules.RuleViolation(
                    f"[cluster] {tls[0]} is set, but the endpoints are http:// (TLS files need https://)",
                    "write the endpoints as https://..., or remove the TLS files",
                ),
            )
        if self.poll >= self.lease:
            raise at(
                ("poll",),
                rules.RuleViolation(
                    f"poll ({self.poll:g}s) must be shorter than lease ({self.lease:g}s)",
                    'a backup looks at the leader key several times a lease, e.g. lease = "10s", poll = "1s"',
                ),
            )
        return self

    @property
    def tls(self) -> bool:
        """True when the endpoints are https://."""
        return self.endpoints[0].startswith("https:")


def host_name(
    settings: ClusterSettings, environ: Mapping[str, str], *, hostname: Callable[[], str] = socket.gethostname
) -> str:
    """This host's name in the cluster: ``[cluster] host``, else env ``CLAWPEN_CLUSTER_HOST`` (an
    empty value counts as unset), else the host's name (``hostname``, :func:`socket.gethostname`).
    Checked with :func:`check_host_name`, never changed (a name in upper case or with a domain is
    refused, not cut); ConfigError naming where it came from."""
    if settings.host is not None:
        name, where = settings.host, "cluster.host"
    elif environ.get(HOST_ENV):
        name, where = environ[HOST_ENV], f"env {HOST_ENV}"
    else:
        name, where = hostname(), "the host's name (hostname)"
    try:
        return check_host_name(name, "this host's cluster name")
    except rules.RuleViolation as err:
        raise ConfigError(
            str(err),
            where=where,
            hint=f"{err.hint}; set host = ... in [cluster] or env {HOST_ENV} to name this host",
        ) from None


# ----------------------------------------------------------------------------- a bot's ha table


class HaCheck(BaseModel):
    """``ha.check``: the arbiter's health check of the primary (the practice: every 30 s, 5 s
    timeout, failover after 3 failures in a row)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    http: str = Field(
        description='an http:// URL answered with 2xx when healthy, e.g. "http://127.0.0.1:8080/health"'
    )
    interval: PositiveDuration = Field(
        CHECK_INTERVAL, description='how often, "500ms" to "1h" (default "30s")'
    )
    timeout: PositiveDuration = Field(
        CHECK_TIMEOUT, description='how long one check may take, below interval (default "5s")'
    )
    failures: int = Field(
        CHECK_FAILURES,
        ge=1,
        le=MAX_FAILURES,
        description="failed checks in a row before failover, 1-100 (default 3)",
    )

    @field_validator("http")
    @classmethod
    def _http(cls, v: str) -> str:
        try:
            parse_http(v)
        except ValueError as err:
            raise rules.RuleViolation(
                str(err), 'a full URL, e.g. http = "http://127.0.0.1:8080/health"'
            ) from None
        return v

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: float) -> float:
        if not MIN_CHECK_INTERVAL <= v <= MAX_CHECK_INTERVAL:
            raise rules.RuleViolation(
                f"check interval {v:g}s is out of range", 'use "500ms" to "1h" (default "30s")'
            )
        return v

    @model_validator(mode="after")
    def _timeout_below_interval(self) -> HaCheck:
        if self.timeout >= self.interval:
            raise at(
                ("timeout",),
                rules.RuleViolation(
                    f"check timeout ({self.timeout:g}s) must be below the interval ({self.interval:g}s)",
                    'set timeout below interval (its default is "5s"), e.g. interval = "30s", timeout = "5s"',
                ),
            )
        return self


class HaSync(BaseModel):
    """``ha.sync``: the workspace shipped from primary to backup through a restic repository
    that every host of the bot reaches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repository: str = Field(
        min_length=1,
        max_length=4096,
        description="a restic repository every host reaches: an absolute local path, sftp:, rest:, s3:, ...",
    )
    password_secret: str = Field(
        description="the vault secret holding the repository's password (the same on every host)"
    )
    env_secrets: list[str] = Field(
        default_factory=list,
        description="vault secrets handed to restic's environment for this backend (e.g. AWS_ACCESS_KEY_ID)",
    )
    interval: PositiveDuration = Field(
        SYNC_INTERVAL, description='how often the workspace is shipped, "5s" to "1d" (default "60s")'
    )

    @model_validator(mode="before")
    @classmethod
    def _no_plain_password(cls, data: Any) -> Any:
        return refuse_password(
            data,
            "ha.sync password would keep the repository's password",
            "keep it in the vault (clawpen secrets set HA_SYNC_PASSWORD), write password_secret = "
            '"HA_SYNC_PASSWORD"',
        )

    @field_validator("repository")
    @classmethod
    def _repository(cls, v: str, info: ValidationInfo) -> str:
        return check_repository(v, info)

    @field_validator("password_secret")
    @classmethod
    def _password_secret(cls, v: str) -> str:
        return rules.check_secret_name(v)

    @field_validator("env_secrets")
    @classmethod
    def _env_secrets(cls, v: list[str]) -> list[str]:
        return check_env_secrets(v)

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: float) -> float:
        if not MIN_SYNC_INTERVAL <= v <= MAX_SYNC_INTERVAL:
            raise rules.RuleViolation(
                f"sync interval {v:g}s is out of range", 'use "5s" to "1d" (default "60s")'
            )
        return v


class HaTable(BaseModel):
    """A bot's ``ha``: run it on one of ``hosts`` at a time (the leader of an etcd election), the
    others standing by."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["primary-backup"] = Field(description='"primary-backup" (the one mode)')
    hosts: list[str] = Field(
        description="2-5 host names of the cluster in order of preference (the first: the preferred primary)"
    )
    check: HaCheck | None = Field(None, description="the arbiter's health check of the primary (unset: none)")
    sync: HaSync | None = Field(None, description="ship the workspace to the backups (needs workspace)")

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, v: object) -> object:
        if v != MODE:
            raise rules.RuleViolation(
                f"there is no ha mode {rules.shown(str(v))}", f'the one mode is mode = "{MODE}"'
            )
        return v

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        if not MIN_HOSTS <= len(v) <= MAX_HOSTS:
            raise rules.RuleViolation(
                f"ha.hosts names {len(v)} host(s)",
                'name 2 to 5 hosts of the cluster, the preferred primary first, e.g. hosts = ["a", "b"]',
            )
        for name in v:
            check_host_name(name, "ha host")
        twice = sorted({n for n in v if v.count(n) > 1})
        if twice:
            raise rules.RuleViolation(f"ha.hosts names {', '.join(twice)} twice", "list each host once")
        return v


def check_bot_ha(ha: HaTable | None, fields: Mapping[str, Any]) -> HaTable | None:
    """What a bot's other fields (``fields``: those validated before ``ha``) allow of ``ha``."""
    if ha is None:
        return None
    replicas = fields.get("replicas", 1)
    if isinstance(replicas, int) and replicas > 1:
        raise rules.RuleViolation(
            f"ha runs one instance of the bot at a time, but replicas = {replicas}",
            "remove replicas (an ha bot has one), or remove ha",
        )
    if fields.get("tier") == "container":
        raise rules.RuleViolation(
            'ha is not supported for tier = "container" yet: the fence stops a primary that lost its '
            "lease by killing the bot's cgroup, which the container engine owns",
            'use tier = "sandbox" (or "vm") for an ha bot',
        )
    schedule = fields.get("schedule")
    if schedule is not None and getattr(schedule, "active", None):
        raise rules.RuleViolation(
            "ha and schedule.active do not go together: a failover would start the bot outside its "
            "windows, and a window's end would look like a failed primary",
            "remove schedule.active (schedule.restart is fine), or remove ha",
        )
    if ha.sync is not None and not fields.get("workspace"):
        raise rules.RuleViolation(
            "ha.sync ships the bot's workspace, but the bot has none",
            'add workspace = "./data" (or another folder), or remove ha.sync',
        )
    return ha


def check_spec_ha(cluster: ClusterSettings | None, bots: Mapping[str, Any]) -> None:
    """``ha`` needs ``[cluster]``: a ValidationError at the first such bot's ``ha`` key."""
    if cluster is not None:
        return
    for name, bot in bots.items():
        if getattr(bot, "ha", None) is not None:
            raise at(
                ("bots", name, "ha"),
                rules.RuleViolation(
                    f"bot {name} has ha, but the spec has no [cluster] (the etcd cluster that elects it)",
                    'add [cluster] with endpoints = ["https://10.0.0.5:2379", ...] (etcd runs outside '
                    "clawpen), or remove ha",
                ),
            )
