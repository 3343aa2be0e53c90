"""The contracts of the daemon's own operations on bots, events and releases (see
:mod:`clawpen.ops`); their handlers are ``Daemon.op_<name>`` (daemon/server.py) and
``daemon/up.py``."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from clawpen.ops import Contract, Empty, Reply, Request

Name = Annotated[str, Field(max_length=200)]


# ------------------------------------------------------------------ requests
class Bots(Request):
    """Bots by name; none means every bot (``status`` needs one)."""

    bots: list[Name] | None = Field(default=None, max_length=1000)


class EventsRequest(Request):
    bot: Name | None = None
    limit: int = Field(default=100, ge=0, le=100_000)
    follow: bool = False


class ReleasesRequest(Request):
    limit: int = Field(default=50, ge=1, le=100_000)


class ExecTargetRequest(Request):
    bot: Name
    replica: int = Field(default=0, ge=0, le=10_000)


class UpRequest(Request):
    """``clawpen up``'s arguments (daemon/up.py reads them)."""

    file: str = Field(max_length=4096, description="the spec file's absolute path")
    bots: list[Name] | None = Field(default=None, max_length=1000)
    dry_run: bool = False
    who: str = Field(default="root", max_length=200)
    progress: bool = False
    wait: bool = False
    wait_timeout: float | None = None
    allow_empty: bool = False
    no_snapshot: bool = False  # skip the [snapshots] before_up snapshot


# ------------------------------------------------------------------ replies
class Pong(Reply):
    pid: int


class InstanceStatus(Reply):
    bot: str
    replica: int
    state: str
    pid: int | None = None
    restarts: int = 0
    since: float | None = None
    started_at: float | None = None
    last_exit: int | None = None
    last_reason: str | None = None
    health: str | None = None  # starting, healthy, unhealthy; None: the bot has no health check
    health_detail: str | None = None  # the last check's result
    health_at: float | None = None
    memory_bytes: int | None = None  # ps: the cgroup's memory now
    memory_limit: int | None = None  # ps: the bot's memory limit (None: none)


class EventRow(Reply):
    id: int
    at: float
    bot: str | None
    replica: int | None
    kind: str
    from_state: str | None
    to_state: str | None
    reason: str


class BotStatus(Reply):
    bot: str
    desired: str
    release: int | None
    instances: list[InstanceStatus]
    spec: dict[str, Any]
    events: list[EventRow]


class Release(Reply):
    id: int
    created: float
    who: str
    spec_path: str
    spec_hash: str
    summary: str


class Started(Reply):
    started: list[str]


class Stopped(Reply):
    stopped: list[str]


class Restarted(Reply):
    restarted: list[str]


class Removed(Reply):
    removed: list[str]


class WaitRow(Reply):
    bot: str
    replica: int
    ok: bool
    state: str
    why: str
    exit_code: int | None = None
    last_event: str | None = None
    stderr: list[str] | None = None


class WaitResult(Reply):
    ok: bool
    timeout: float
    bots: list[WaitRow]


class UpResult(Reply):
    """What ``up`` did (or, with ``dry_run``, would do): bots by kind of change."""

    create: list[str] = Field(default_factory=list)
    recreate: list[str] = Field(default_factory=list)
    start: list[str] = Field(default_factory=list)
    unchanged: list[str] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)
    dry_run: bool | None = None
    release: int | None = None
    before: str | None = None
    after: str | None = None
    wait: WaitResult | None = None


class ExecTarget(Reply):
    bot: str
    replica: int
    link: dict[str, Any] | None
    sandbox_pid: int
    cgroup: str
    spec: dict[str, Any]
    base_dir: str


def _up_audit(reply: Any) -> dict[str, Any]:
    return {k: reply.get(k) for k in ("release", "before", "after")}


# ------------------------------------------------------------------ contracts
PING = Contract("ping", "viewer", Empty, Pong, "the daemon's pid (is it alive?)")
PS = Contract("ps", "viewer", Empty, list[InstanceStatus], "every bot replica: state, pid, uptime, restarts")
STATUS = Contract("status", "viewer", Bots, BotStatus, "one bot: instances, spec, recent events")
EVENTS = Contract(
    "events", "viewer", EventsRequest, list[EventRow], "state changes and daemon events, oldest first", True
)
RELEASES = Contract(
    "releases", "viewer", ReleasesRequest, list[Release], "every applied `clawpen up`, newest first"
)
START = Contract("start", "operator", Bots, Started, "start bots (operator)")
STOP = Contract("stop", "operator", Bots, Stopped, "stop bots (operator)")
RESTART = Contract("restart", "operator", Bots, Restarted, "restart bots (operator)")
UP = Contract(
    "up", "admin", UpRequest, UpResult, "check, build and apply a spec, all or nothing", True, _up_audit
)
DOWN = Contract("down", "admin", Bots, Removed, "stop and remove bots")
EXEC_TARGET = Contract(
    "exec_target", "admin", ExecTargetRequest, ExecTarget, "where `clawpen exec` enters a running bot"
)

CONTRACTS: tuple[Contract[Any], ...] = (
    PING, PS, STATUS, EVENTS, RELEASES, START, STOP, RESTART, UP, DOWN, EXEC_TARGET,
)  # fmt: skip
