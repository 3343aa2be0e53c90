"""The ``clawpen.toml`` schema as pydantic models; ``clawpen schema`` prints their JSON Schema.

Security rules live in the validation (:mod:`clawpen.spec.rules`), so an unsafe spec never
loads. Paths are checked against the spec file's folder, passed as validation context
``{"base_dir": ...}`` by :mod:`clawpen.spec.loader`.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)

from clawpen.spec import bounds, listen, rules, units
from clawpen.spec import policy as pol
from clawpen.spec.alerts import MonitoringConfig
from clawpen.spec.auditing import AuditSettings
from clawpen.spec.build import BuildSpec
from clawpen.spec.cluster import ClusterSettings, HaTable, check_bot_ha, check_spec_ha
from clawpen.spec.deploy import Deploy, SnapshotSettings
from clawpen.spec.fieldtypes import Cpus, DiskSize, Duration, PositiveDuration, Size
from clawpen.spec.gateway import GatewayConfig
from clawpen.spec.host import HostConfig
from clawpen.spec.imagebuild import ImageBuild, check_image_ref
from clawpen.spec.logship import LogsSettings
from clawpen.spec.netlimits import NetworkLimits
from clawpen.spec.quotas import DEFAULT_NET_LIMITS
from clawpen.spec.snapshots import BotSnapshots
from clawpen.spec.storage import StorageSettings
from clawpen.spec.vmspec import VmTable, check_tier_field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _base_dir(info: ValidationInfo) -> str:
    ctx = info.context if isinstance(info.context, dict) else {}
    return str(ctx.get("base_dir", os.getcwd()))


class Resources(_Model):
    """Limits enforced by the kernel (cgroups and rlimits)."""

    cpus: Cpus = Field(pol.DEFAULT_CPUS, description="CPU share in cores (0.5 = half a core)")
    memory: Size = Field(pol.DEFAULT_MEMORY, description="memory limit; swap is off")
    pids: int = Field(pol.DEFAULT_PIDS, description="most processes and threads at once")
    nofile: int = Field(pol.DEFAULT_NOFILE, description="most open files per process")
    disk: DiskSize = Field(
        pol.DEFAULT_DISK,
        description='cap on workspace use, on any one file and on /tmp (default 10G; "unlimited": none)',
    )
    tmp: Size = Field(pol.DEFAULT_TMP, description="size of the private /tmp")
    io_weight: int | None = Field(None, description="relative disk IO weight, 1-10000")
    start_cpus: Cpus | None = Field(
        None, description="CPU share from each start until healthy (above cpus; capped at the host's cores)"
    )
    start_for: PositiveDuration | None = Field(
        None, description='how long start_cpus lasts at most (default "60s"; "10m" with a health check)'
    )

    @field_validator("memory", "pids", "nofile", "io_weight", "disk", "tmp")
    @classmethod
    def _ranges(cls, v: int | None, info: ValidationInfo) -> int | None:
        checks = {
            "memory": pol.check_memory,
            "pids": pol.check_pids,
            "nofile": pol.check_nofile,
            "io_weight": pol.check_io_weight,
            "disk": pol.check_disk,
            "tmp": pol.check_tmp,
        }
        return None if v is None else checks[str(info.field_name)](v)

    @model_validator(mode="after")
    def _start_allowance(self) -> Resources:
        from clawpen.spec.startcpu import check_allowance

        check_allowance(self.cpus, self.start_cpus, self.start_for)
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without the start-up allowance when unset: the stored policy (and its hash) of a bot
        that sets none is what it was before these fields existed."""
        data: dict[str, Any] = handler(self)
        for key in ("start_cpus", "start_for"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class Filesystem(_Model):
    """Extra host paths; everything else of the host stays out of the sandbox."""

    ro: list[str] = Field(default_factory=list, description="HOST[:SANDBOX] paths mounted read-only")
    rw: list[str] = Field(default_factory=list, description="HOST[:SANDBOX] paths mounted read-write")

    @field_validator("ro", "rw")
    @classmethod
    def _paths(cls, paths: list[str], info: ValidationInfo) -> list[str]:
        for raw in paths:
            bounds.check_mount_source(raw, _base_dir(info), f"filesystem.{info.field_name} entry")
            rules.check_mount(raw, writable=info.field_name == "rw", base_dir=_base_dir(info))
        return paths


Rate = Annotated[
    int,
    BeforeValidator(units.parse_rate),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string"}, {"type": "integer"}],
            "description": 'bits per second, or a rate: "8mbit", "512kbit", "1gbit"',
        }
    ),
]


class Network(_Model):
    """Network policy. By default a bot has a private loopback and nothing else.

    ``egress`` lists the ``host:port`` patterns a bot may reach through the clawpen gateway
    (``"open"``: anything public); ``publish`` maps host ports to the bot's ports; ``limits``
    are the bot's quotas at the gateway (:mod:`clawpen.spec.netlimits`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    egress: list[str] | Literal["open", "learn"] = Field(
        default_factory=list,
        description='allowed destinations, e.g. ["api.openai.com:443", "*.telegram.org:443"], "open", '
        'or "learn" (open for learn_for, logged; then nothing: see clawpen net suggest)',
    )
    learn_for: Duration | None = Field(
        None, description='egress = "learn": how long (1m to 30d; default 24h)'
    )
    allow_private: list[str] = Field(
        default_factory=list,
        description="CIDRs egress may reach although loopback, private, link-local or metadata",
    )
    publish: list[str] = Field(
        default_factory=list,
        description='"[HOST_IP:]HOST_PORT:BOT_PORT", e.g. "127.0.0.1:18789:18789" (host IP: 127.0.0.1)',
    )
    expose: bool = Field(False, description="allow publishing on a non-loopback host address")
    from_: list[str] = Field(
        default_factory=list, alias="from", description="source CIDRs allowed to reach exposed ports"
    )
    bandwidth: Rate | None = Field(None, description="rate limit each way, e.g. 8mbit")
    burst: Size | None = Field(None, description='burst size for the rate limit, e.g. "256kb"')
    ipv6: bool = Field(False, description="give the bot IPv6 through the gateway (off by default)")
    limits: NetworkLimits | None = Field(
        None, description="quotas at the gateway per bot instance (connections, DNS queries); unset: defaults"
    )

    @field_validator("egress")
    @classmethod
    def _egress(cls, v: list[str] | str) -> list[str] | str:
        if v in ("open", "learn") or not v:
            return v
        from clawpen.spec.egress import parse_rules

        parse_rules(list(v))  # raises RuleViolation with the reason and a fix
        return v

    @field_validator("allow_private", "from_")
    @classmethod
    def _cidrs(cls, v: list[str], info: ValidationInfo) -> list[str]:
        for raw in v:
            rules.check_cidr(raw, field=str(info.field_name).rstrip("_"))
        return v

    @field_validator("publish")
    @classmethod
    def _publish(cls, v: list[str]) -> list[str]:
        if v:
            from clawpen.spec.publish import parse_publish

            for raw in v:
                parse_publish(raw)  # raises RuleViolation
        return v

    @model_validator(mode="after")
    def _exposure(self) -> Network:
        if self.publish:
            from clawpen.spec.publish import parse_publish

            for raw in self.publish:
                listen.check_listener(
                    f"publish {raw!r}",
                    parse_publish(raw).host_ip,
                    opted_in=self.expose,
                    opt_in="set expose = true (and maybe from = [CIDRs]) to expose the bot",
                )
        if self.from_ and not self.expose:
            raise rules.RuleViolation(
                "from = [...] limits who reaches exposed ports, but expose is not set",
                "set expose = true, or remove from",
            )
        if self.burst is not None and self.bandwidth is None:
            raise rules.RuleViolation("burst is set without bandwidth", 'add bandwidth = "8mbit"')
        from clawpen.spec.learnmode import check_learn_for

        check_learn_for(self.egress, self.learn_for)
        if self.limits is not None and not self.egress:
            raise rules.RuleViolation(
                "network.limits is set, but the bot has no egress (the limits are for its traffic "
                "through the gateway)",
                'add egress (e.g. egress = ["api.example.com:443"]), or remove the limits table',
            )
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without ``limits`` when it holds only defaults, so the stored policy (and its hash) of
        a bot that sets none is what it was before the table existed."""
        data: dict[str, Any] = handler(self)
        if not data.get("limits"):
            data.pop("limits", None)
        if data.get("learn_for") is None:
            data.pop("learn_for", None)  # likewise for bots not in learn mode
        return data

    def policy_egress(self) -> tuple[str, ...] | str:
        """``egress`` as the policy holds it (learn mode: ``"learn:<seconds>"``)."""
        from clawpen.spec.learnmode import LEARN, LEARN_DEFAULT, learn_value

        if self.egress == LEARN:
            return learn_value(self.learn_for or LEARN_DEFAULT)
        return self.egress if isinstance(self.egress, str) else tuple(self.egress)

    @property
    def isolated(self) -> bool:
        """True when the bot needs no link to the gateway (no egress)."""
        return not self.egress


class Restart(_Model):
    """What the supervisor does when a bot exits."""

    policy: Literal["no", "on-failure", "always", "unless-stopped"] = "on-failure"
    backoff_initial: PositiveDuration = 1.0
    backoff_max: PositiveDuration = 60.0
    max_restarts: int = Field(5, ge=0, le=10_000, description="restarts within `window` before crashloop")
    window: PositiveDuration = 300.0
    stop_grace: Duration = 10.0
    warm: bool = Field(
        True,
        description="keep the next sandbox built while the bot runs, so a restart only releases it "
        "(clawpen.daemon.warm); false saves its memory (about 2 processes and a cgroup per bot)",
    )

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without ``warm`` when it is the default, so the stored policy (and its hash) of a bot
        is what it was before warm restarts existed (a new clawpen restarts nothing for it)."""
        data: dict[str, Any] = handler(self)
        if data.get("warm") is True:
            data.pop("warm", None)
        return data

    @model_validator(mode="after")
    def _backoff(self) -> Restart:
        if self.backoff_initial > self.backoff_max:
            raise rules.RuleViolation(
                f"backoff_initial ({self.backoff_initial:g}s) is longer than "
                f"backoff_max ({self.backoff_max:g}s)",
                "make backoff_initial at most backoff_max, e.g. 1s and 60s",
            )
        return self


class Health(_Model):
    """A health check: exactly one of http, tcp or cmd."""

    http: str | None = None
    tcp: str | None = None
    cmd: list[str] | None = None
    interval: PositiveDuration = 30.0
    timeout: PositiveDuration = 5.0
    retries: int = Field(3, ge=1, le=1000)
    start_period: Duration = 0.0
    on_unhealthy: Literal["restart", "none"] = Field("restart", description="what to do once unhealthy")

    @model_validator(mode="after")
    def _one_kind(self) -> Health:
        kinds = [k for k in ("http", "tcp", "cmd") if getattr(self, k)]
        if len(kinds) != 1:
            raise rules.RuleViolation(
                f"a health check needs exactly one of http, tcp or cmd (got {kinds or 'none'})",
                'write e.g. health = { http = "http://127.0.0.1:8000/healthz" }',
            )
        from clawpen.spec.healthcheck import parse_http, parse_tcp

        try:
            if self.http:
                parse_http(self.http)
            if self.tcp:
                parse_tcp(self.tcp)
        except ValueError as err:
            raise rules.RuleViolation(str(err), 'e.g. http = "http://127.0.0.1:8000/healthz"') from None
        if self.cmd:
            bounds.check_argv(self.cmd, "health cmd")
        return self


class Schedule(_Model):
    """Cost control: run only inside ``active`` windows; restart periodically (cron)."""

    active: str | None = Field(None, description='windows, e.g. "Mon-Fri 08:00-20:00; Sat 10:00-14:00"')
    timezone: str | None = Field(None, description="IANA zone for the windows and cron (default: the host's)")
    restart: str | None = Field(None, description='cron expression for periodic restarts, e.g. "0 4 * * *"')

    @model_validator(mode="after")
    def _parse(self) -> Schedule:
        from clawpen.errors import ConfigError
        from clawpen.spec.schedule import ActiveWindow, CronSpec, zone

        try:
            if self.timezone:
                zone(self.timezone)
            if self.active:
                ActiveWindow.parse(self.active, self.timezone)
            if self.restart:
                CronSpec.parse(self.restart, self.timezone)
        except ConfigError as err:
            raise rules.RuleViolation(err.what, err.hint or "") from None
        return self


class MemoryPressure(_Model):
    """Restart the bot when its memory stays above ``share`` of its limit for ``for``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    share: float = Field(0.9, gt=0.0, le=1.0, description="share of the memory limit, e.g. 0.9")
    for_: Duration = Field(300.0, alias="for", description='how long it must stay above, e.g. "5m"')


class Bot(_Model):
    """One bot: what to run, where, and under which limits."""

    command: list[str] = Field(min_length=1, description="argv of the bot's main process")
    workspace: str | None = Field(None, description="host folder, the only writable host path, at /workspace")
    workspace_adopt: bool = Field(
        False, description="hand an existing workspace holding files of other owners to the bot's uid (chown)"
    )
    tier: Literal["sandbox", "container", "vm"] = "sandbox"
    image: str | ImageBuild | None = Field(
        None, description='tier = "container": "name:tag", or { context = "./bot" } to build one'
    )
    engine: Literal["auto", "docker", "podman"] = Field(
        "auto", description='tier = "container": its engine (auto: Docker, else Podman)'
    )
    vm: VmTable | None = Field(
        None, description='tier = "vm": the guest\'s kernel, memory, cpus and rootfs (all optional)'
    )
    env: dict[str, str] = Field(default_factory=dict)
    resources: Resources = Resources()
    filesystem: Filesystem = Filesystem()
    network: Network = Network()
    restart: Restart = Restart()
    health: Health | None = None
    timeout: PositiveDuration | None = Field(None, description="kill the bot after this long (one-off jobs)")
    replicas: int = Field(1, ge=1, le=64, description="instances to run; each gets CLAWPEN_REPLICA")
    schedule: Schedule | None = None
    memory_pressure: MemoryPressure | None = None
    secrets: list[str] = Field(default_factory=list, description="vault secrets, as /run/secrets/NAME (0400)")
    secret_env: list[str] = Field(
        default_factory=list, description="of `secrets`, those also set as env vars"
    )
    build: BuildSpec | None = Field(None, description="steps run once per release before the bot starts")
    # not in the stored policy (exclude): changing it never restarts the bot (spec/snapshots.py)
    snapshots: BotSnapshots | None = Field(None, exclude=True, description="scheduled workspace snapshots")
    # last: its checks look at the fields above (replicas, tier, schedule, workspace)
    ha: HaTable | None = Field(
        None,
        description='primary/backup failover across the hosts of [cluster]: { mode = "primary-backup", '
        'hosts = ["a", "b"], check = {...}, sync = {...} }',
    )

    @model_validator(mode="after")
    def _secret_names(self) -> Bot:
        for name in self.secrets:
            rules.check_secret_name(name)
        stray = [n for n in self.secret_env if n not in self.secrets]
        if stray:
            raise rules.RuleViolation(
                f"secret_env names {', '.join(stray)}, which is not in secrets",
                "list every secret in `secrets` first; secret_env picks which also become env vars",
            )
        return self

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str]) -> list[str]:
        return bounds.check_argv(v, "command")

    @field_validator("tier", mode="before")
    @classmethod
    def _tier(cls, v: object) -> object:
        """``sandbox``, ``container`` or ``vm``. (Left out, the field still shows as
        ``"sandbox"`` in the stored policy, as it always has: the policy hash of existing bots does
        not change.)"""
        if isinstance(v, str) and v not in ("sandbox", "container", "vm"):
            raise rules.RuleViolation(
                f"there is no tier {v!r}",
                'use tier = "sandbox" (bubblewrap namespaces, cgroups and seccomp), tier = "container" '
                '(an image on Docker or Podman) or tier = "vm" (a QEMU virtual machine), or leave tier out',
            )
        return v

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | ImageBuild | None, info: ValidationInfo) -> str | ImageBuild | None:
        check_tier_field("image", info.data.get("tier"), v)
        return check_image_ref(v) if isinstance(v, str) else v

    @field_validator("ha")
    @classmethod
    def _ha(cls, v: HaTable | None, info: ValidationInfo) -> HaTable | None:
        return check_bot_ha(v, info.data)

    @field_validator("engine", "vm")
    @classmethod
    def _tier_field(cls, v: object, info: ValidationInfo) -> object:
        """The fields of one tier, refused with another (at their own key: a clear line)."""
        check_tier_field(str(info.field_name), info.data.get("tier"), v)
        return v

    @model_validator(mode="after")
    def _image_needs_container(self) -> Bot:
        from clawpen.spec.container import check_image_field

        check_image_field(self.tier, self.image)
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without ``image``, ``engine``, ``vm`` and ``ha`` when unset, so the stored policy (and its
        hash) of a sandbox bot is what it was before the container and vm tiers and ha existed."""
        data: dict[str, Any] = handler(self)
        for key in ("image", "vm", "ha"):
            if data.get(key) is None:
                data.pop(key, None)
        if data.get("engine") == "auto":
            data.pop("engine", None)
        return data

    @field_validator("workspace")
    @classmethod
    def _workspace(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            bounds.check_source(v, _base_dir(info), "workspace")
            rules.check_host_path(v, writable=True, base_dir=_base_dir(info))
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return bounds.check_env(v)

    def to_policy(self, name: str, base_dir: str) -> pol.BotPolicy:
        """The normalized policy the planner consumes (paths resolved against ``base_dir``)."""

        def mount(raw: str, writable: bool) -> tuple[str, str]:
            return rules.check_mount(raw, writable=writable, base_dir=base_dir)

        r, n = self.resources, self.network
        container = None
        if self.tier == "container":
            from clawpen.spec.container import for_bot

            container = for_bot(self, name, base_dir)
        vm = None
        if self.tier == "vm":
            from clawpen.spec import vmspec

            vm = vmspec.for_bot(self, name, base_dir)
        return pol.BotPolicy(
            name=name,
            command=tuple(self.command),
            workspace=(
                rules.check_host_path(self.workspace, writable=True, base_dir=base_dir)
                if self.workspace
                else None
            ),
            workspace_adopt=self.workspace_adopt,
            env=tuple(self.env.items()),
            cpus=r.cpus,
            memory=r.memory,
            pids=r.pids,
            nofile=r.nofile,
            disk=r.disk,
            tmp=r.tmp,
            io_weight=r.io_weight,
            ro=tuple(mount(p, False) for p in self.filesystem.ro),
            rw=tuple(mount(p, True) for p in self.filesystem.rw),
            egress=n.policy_egress(),
            allow_private=tuple(self.network.allow_private),
            publish=tuple(self.network.publish),
            expose=self.network.expose,
            expose_from=tuple(self.network.from_),
            bandwidth=self.network.bandwidth,
            burst=self.network.burst,
            ipv6=self.network.ipv6,
            net_limits=DEFAULT_NET_LIMITS if n.limits is None else n.limits.record(),
            secrets=tuple(self.secrets),
            secret_env=tuple(self.secret_env),
            container=container,
            vm=vm,
        )


class Spec(_Model):
    """A whole ``clawpen.toml``."""

    version: Literal[1] = 1
    bots: dict[str, Bot] = Field(default_factory=dict)
    gateway: GatewayConfig = GatewayConfig()
    host: HostConfig = HostConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    deploy: Deploy = Deploy()
    snapshots: SnapshotSettings = SnapshotSettings()
    storage: StorageSettings = StorageSettings()
    cluster: ClusterSettings | None = Field(
        None, description="the etcd cluster the daemons join (for bots with ha) and this host's name"
    )
    audit: AuditSettings = AuditSettings()
    logs: LogsSettings = LogsSettings()

    @field_validator("bots", mode="before")
    @classmethod
    def _count(cls, v: object) -> object:
        if isinstance(v, dict):
            bounds.check_bot_count(len(v))  # before validating a thousand bots one by one
        return v

    @field_validator("bots")
    @classmethod
    def _names(cls, v: dict[str, Bot]) -> dict[str, Bot]:
        bounds.check_bot_count(len(v))
        for name in v:
            rules.check_bot_name(name)
        if any(bot.network.publish for bot in v.values()):
            from clawpen.spec.publish import duplicate_ports

            clash = duplicate_ports((n, raw) for n, bot in v.items() for raw in bot.network.publish)
            if clash:
                raise rules.RuleViolation(clash, "give each published port its own host port")
        return v

    @model_validator(mode="after")
    def _ha_needs_cluster(self) -> Spec:
        check_spec_ha(self.cluster, self.bots)
        return self


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``clawpen.toml``."""
    schema = Spec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "clawpen.toml"
    return schema
