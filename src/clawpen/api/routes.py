"""The API's routes over the daemon's operations (``/api/v1``).

Each route names the contract of the operation it runs (:mod:`clawpen.ops`): its role (the
token check), its summary and its reply type (the route's ``response_model``, so the OpenAPI
document describes every answer) come from there, and the call goes through
``Daemon.dispatch`` like a socket request: the same argument checks, role checks and audit.
What a route adds is HTTP's shape: which arguments sit in the path or the query, and their
bounds. An operation a component contributes (metrics, alerts, net_log) answers 404 when that
component is not running.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import Body, Depends, FastAPI, Query
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict

from clawpen.api import streams
from clawpen.api.auth import HttpError, requires
from clawpen.daemon import ops_bots as ob
from clawpen.daemon import ops_releases as orl
from clawpen.daemon import ops_snapshots as osn
from clawpen.daemon import ops_views as ov
from clawpen.errors import UsageError
from clawpen.metrics import ops as om
from clawpen.net import ops as on
from clawpen.ops import Contract

if TYPE_CHECKING:
    from clawpen.daemon.server import Daemon

PREFIX = "/api/v1"
BotName = Annotated[str, PathParam(description="a bot's name, as in clawpen.toml", max_length=200)]
Limit = Annotated[int, Query(ge=1, le=10_000)]
F = TypeVar("F", bound=Callable[..., Any])


class ErrorBody(BaseModel):
    error: str
    where: str | None = None
    hint: str | None = None


ReleaseNo = Annotated[int, PathParam(ge=1, le=2**62, description="a release's number")]


class JsonBody(BaseModel):
    """A JSON body: a key the route does not know is refused (422), so a typo is not ignored;
    the operation's contract then checks the values (400 naming the field)."""

    model_config = ConfigDict(extra="forbid")


class RollbackBody(JsonBody):
    release: int | None = None  # default: the release before the latest
    dry_run: bool = False
    with_data: bool = False
    no_snapshot: bool = False


class RestoreBody(JsonBody):
    snapshot: str = "latest"
    to: str | None = None  # a new folder (absolute path); default: in place of a stopped bot's


class ForgetBody(JsonBody):
    daily: int = 7
    weekly: int = 4
    monthly: int = 6


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "bad arguments (the field is named)"),
        (401, "no token, or one that is not valid"),
        (403, "the token's role does not allow this"),
        (404, "no such bot, or the part of clawpen serving it is off"),
        (409, "the host or a sandbox refused"),
        (500, "a bug in clawpen (its traceback is in the daemon's log)"),
    )
}


def sse_responses(item: type[BaseModel], kind: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI for a server-sent-events answer: each ``event: KIND`` carries one ``item``."""
    return {
        **ERRORS,
        200: {
            "description": f"text/event-stream; each `event: {kind}` has one JSON object as data",
            "content": {"text/event-stream": {"schema": item.model_json_schema()}},
        },
    }


def _event_stream(body: Any) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


def add_routes(app: FastAPI, daemon: Daemon) -> None:
    """Every ``/api/v1`` route of ``daemon``'s operations onto ``app``."""
    followers = streams.LogFollowers()

    def auth(contract: Contract[Any]) -> Any:
        return Depends(requires(daemon, contract.name, contract.role))

    def route(method: str, path: str, contract: Contract[Any], tag: str, **kw: Any) -> Callable[[F], F]:
        return app.api_route(
            PREFIX + path,
            methods=[method],
            tags=[tag],
            summary=kw.pop("summary", contract.summary),
            response_model=contract.response,
            responses=ERRORS,
            **kw,
        )

    async def run(contract: Contract[Any], args: dict[str, Any], who: str) -> JSONResponse:
        if contract.name not in daemon.ops:
            raise HttpError(
                404,
                UsageError(
                    f"this daemon has no {contract.name!r} operation",
                    where="api",
                    hint="the part of clawpen that provides it is not installed or not running",
                ),
            )
        return JSONResponse(await daemon.dispatch(contract.name, args, who))

    # ------------------------------------------------------------------ meta and bots
    @route("GET", "/whoami", ov.WHOAMI, "meta")
    async def whoami(who: str = auth(ov.WHOAMI)) -> JSONResponse:
        return await run(ov.WHOAMI, {}, who)

    @route("GET", "/bots", ob.PS, "bots")
    async def bots(who: str = auth(ob.PS)) -> JSONResponse:
        return await run(ob.PS, {}, who)

    @route("GET", "/bots/{bot}", ob.STATUS, "bots")
    async def status(bot: BotName, who: str = auth(ob.STATUS)) -> JSONResponse:
        return await run(ob.STATUS, {"bots": [bot]}, who)

    def action(contract: Contract[Any]) -> Any:
        async def act(bot: BotName, who: str = auth(contract)) -> JSONResponse:
            return await run(contract, {"bots": [bot]}, who)

        return act

    for contract in (ob.START, ob.STOP, ob.RESTART):
        path, summary = f"/bots/{{bot}}/{contract.name}", f"{contract.name} a bot (operator)"
        route("POST", path, contract, "bots", summary=summary, name=contract.name)(action(contract))

    @route("GET", "/topology", ov.TOPOLOGY, "bots")
    async def topology(who: str = auth(ov.TOPOLOGY)) -> JSONResponse:
        return await run(ov.TOPOLOGY, {}, who)

    # ------------------------------------------------------------------ logs
    @route("GET", "/bots/{bot}/logs", ov.LOGS, "logs")
    async def logs(
        bot: BotName,
        *,
        tail: Annotated[int, Query(ge=1, le=10_000, description="the last N matching lines")] = 200,
        grep: Annotated[str | None, Query(max_length=500, description="a regular expression")] = None,
        since: Annotated[str | None, Query(max_length=64, description='"1h", RFC 3339 or epoch')] = None,
        until: Annotated[str | None, Query(max_length=64)] = None,
        who: str = auth(ov.LOGS),
    ) -> JSONResponse:
        args = {"bot": bot, "tail": tail, "grep": grep, "since": since, "until": until}
        return await run(ov.LOGS, args, who)

    @app.get(
        f"{PREFIX}/bots/{{bot}}/logs/stream",
        tags=["logs"],
        summary="live log lines as server-sent events (`event: log`)",
        response_class=StreamingResponse,
        responses=sse_responses(ov.LogLine, "log"),
    )
    async def logs_stream(
        bot: BotName,
        tail: Annotated[int, Query(ge=0, le=10_000)] = 50,
        grep: Annotated[str | None, Query(max_length=500)] = None,
        who: str = auth(ov.LOGS),
    ) -> StreamingResponse:
        daemon.known_bot(bot)
        ov.regex(grep)
        followers.reserve()
        return _event_stream(streams.logs(daemon.services.logs_dir, bot, grep, tail, followers))

    # ------------------------------------------------------------------ events and releases
    @route("GET", "/events", ob.EVENTS, "events")
    async def events(
        bot: Annotated[str | None, Query(max_length=200)] = None,
        limit: Limit = 100,
        who: str = auth(ob.EVENTS),
    ) -> JSONResponse:
        return await run(ob.EVENTS, {"bot": bot, "limit": limit}, who)

    @app.get(
        f"{PREFIX}/events/stream",
        tags=["events"],
        summary="the last events, then new ones as server-sent events (`event: event`)",
        response_class=StreamingResponse,
        responses=sse_responses(ob.EventRow, "event"),
    )
    async def events_stream(
        bot: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=0, le=10_000)] = 50,
        who: str = auth(ob.EVENTS),
    ) -> StreamingResponse:
        return _event_stream(streams.events(daemon, bot, limit))

    @route("GET", "/releases", ob.RELEASES, "releases")
    async def releases(limit: Limit = 50, who: str = auth(ob.RELEASES)) -> JSONResponse:
        return await run(ob.RELEASES, {"limit": limit}, who)

    @route("GET", "/releases/{release}", orl.SHOW, "releases")
    async def release_show(release: ReleaseNo, who: str = auth(orl.SHOW)) -> JSONResponse:
        return await run(orl.SHOW, {"release": release}, who)

    @route("GET", "/releases/{a}/diff", orl.DIFF, "releases")
    async def release_diff(
        a: ReleaseNo,
        b: Annotated[int | None, Query(ge=1, le=2**62, description="the newer (default: the latest)")] = None,
        who: str = auth(orl.DIFF),
    ) -> JSONResponse:
        return await run(orl.DIFF, {"a": a, "b": b}, who)

    @route("POST", "/rollback", orl.ROLLBACK, "releases")
    async def rollback(body: RollbackBody | None = None, who: str = auth(orl.ROLLBACK)) -> JSONResponse:
        """Re-apply a release (admin); it does not wait for the bots (see /bots, /events)."""
        args = (body or RollbackBody()).model_dump()
        return await run(orl.ROLLBACK, args | {"who": who, "wait": False, "progress": False}, who)

    # ------------------------------------------------------------------ snapshots
    @route("GET", "/bots/{bot}/snapshots", osn.SNAPSHOT_LS, "snapshots")
    async def snapshot_ls(bot: BotName, who: str = auth(osn.SNAPSHOT_LS)) -> JSONResponse:
        return await run(osn.SNAPSHOT_LS, {"bot": bot}, who)

    @route("POST", "/bots/{bot}/snapshots", osn.SNAPSHOT_CREATE, "snapshots")
    async def snapshot_create(bot: BotName, who: str = auth(osn.SNAPSHOT_CREATE)) -> JSONResponse:
        return await run(osn.SNAPSHOT_CREATE, {"bot": bot}, who)

    @route("POST", "/bots/{bot}/snapshots/restore", osn.SNAPSHOT_RESTORE, "snapshots")
    async def snapshot_restore(
        bot: BotName, body: RestoreBody | None = None, who: str = auth(osn.SNAPSHOT_RESTORE)
    ) -> JSONResponse:
        return await run(osn.SNAPSHOT_RESTORE, {"bot": bot, **(body or RestoreBody()).model_dump()}, who)

    @route("POST", "/bots/{bot}/snapshots/forget", osn.SNAPSHOT_FORGET, "snapshots")
    async def snapshot_forget(
        bot: BotName, body: ForgetBody | None = None, who: str = auth(osn.SNAPSHOT_FORGET)
    ) -> JSONResponse:
        return await run(osn.SNAPSHOT_FORGET, {"bot": bot, **(body or ForgetBody()).model_dump()}, who)

    # ------------------------------------------------------------------ metrics, alerts, egress
    @route("GET", "/metrics/latest", om.METRICS_LATEST, "metrics")
    async def metrics_latest(who: str = auth(om.METRICS_LATEST)) -> JSONResponse:
        return await run(om.METRICS_LATEST, {}, who)

    @route("GET", "/metrics/{target}", om.METRICS, "metrics")
    async def metrics(
        target: Annotated[
            str, PathParam(max_length=200, description='a bot (`demo`, a replica `demo[1]`) or "host"')
        ],
        since: Annotated[float, Query(gt=0, le=90 * 86400, description="seconds back")] = 3600,
        who: str = auth(om.METRICS),
    ) -> JSONResponse:
        return await run(om.METRICS, {"target": target, "since": since}, who)

    @route("GET", "/alerts", om.ALERTS, "alerts")
    async def alerts(who: str = auth(om.ALERTS)) -> JSONResponse:
        return await run(om.ALERTS, {}, who)

    @route("POST", "/alerts/{alert_id}/ack", om.ALERTS_ACK, "alerts")
    async def alerts_ack(
        alert_id: Annotated[str, PathParam(max_length=200)], who: str = auth(om.ALERTS_ACK)
    ) -> JSONResponse:
        return await run(om.ALERTS_ACK, {"id": alert_id, "who": who}, who)

    @route("POST", "/alerts/silence", om.ALERTS_SILENCE, "alerts")
    async def alerts_silence(
        rule: Annotated[str, Body(max_length=200, description="the rule's name")],
        duration: Annotated[str, Body(alias="for", max_length=32, description='e.g. "1h"')],
        who: str = auth(om.ALERTS_SILENCE),
    ) -> JSONResponse:
        return await run(om.ALERTS_SILENCE, {"rule": rule, "for": duration, "who": who}, who)

    @route("GET", "/bots/{bot}/egress", on.NET_LOG, "network")
    async def egress(
        bot: BotName,
        since: Annotated[float, Query(gt=0, le=90 * 86400, description="seconds back")] = 3600,
        limit: Limit = 200,
        who: str = auth(on.NET_LOG),
    ) -> JSONResponse:
        args = {"bot": daemon.known_bot(bot), "since": time.time() - since, "limit": limit}
        return await run(on.NET_LOG, args, who)
