"""The HTTP API (FastAPI) over the daemon's operations, and the dashboard's files.

Every route calls an operation in-process through ``Daemon.dispatch`` (the same operations the
Unix socket serves), after :mod:`clawpen.api.auth` checked the bearer token for that operation.
Operations other parts of clawpen contribute (metrics, alerts, net_log) are called by name; when
one is absent the route answers 404 with what is missing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clawpen import __version__
from clawpen.api import streams
from clawpen.api.auth import HttpError, check, on_bad_args, on_clawpen_error, on_http_error, requires
from clawpen.daemon.server import Daemon
from clawpen.errors import ClawpenError, UsageError
from clawpen.logs.query import parse_since, read_logs
from clawpen.tokens import TokenStore

STATIC = Path(__file__).with_name("static")
PREFIX = "/api/v1"
BotName = Annotated[str, PathParam(description="a bot's name, as in clawpen.toml", max_length=200)]
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
]


class SecurityHeaders:
    """Plain ASGI middleware (no buffering, so event streams flow): headers on every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status)


def _regex(grep: str | None) -> str | None:
    if grep is not None:
        try:
            re.compile(grep)
        except re.error as err:
            raise UsageError(f"grep {grep!r} is not a regular expression: {err}", where="grep") from None
    return grep


def create_app(daemon: Daemon) -> FastAPI:
    """The API and dashboard of ``daemon``; routes run its operations in its own event loop."""
    app = FastAPI(
        title="clawpen",
        version=__version__,
        description="Bots, logs, metrics, alerts, events and releases of a clawpen daemon. "
        "Every route but /healthz needs `Authorization: Bearer <token>`.",
        docs_url=None,  # Swagger UI would load from a CDN
        redoc_url=None,
        openapi_url=None,  # served below, behind a token
    )
    app.add_exception_handler(HttpError, on_http_error)
    app.add_exception_handler(ClawpenError, on_clawpen_error)
    for bad in (ValueError, KeyError, TypeError):
        app.add_exception_handler(bad, on_bad_args)
    app.add_middleware(SecurityHeaders)
    followers = streams.LogFollowers()

    def auth(op: str) -> Any:
        return Depends(requires(daemon, op))

    def known(bot: str) -> str:
        if bot not in daemon.store.bots():
            raise HttpError(
                404,
                UsageError(f"no bot named {bot}", where="api", hint="GET /api/v1/bots lists the bots"),
            )
        return bot

    async def run(op: str, args: dict[str, Any], who: str) -> JSONResponse:
        if daemon.role_for(op) is None:
            raise HttpError(
                404,
                UsageError(
                    f"this daemon has no {op!r} operation",
                    where="api",
                    hint="the part of clawpen that provides it is not installed or not running",
                ),
            )
        return _json(await daemon.dispatch(op, args, who))

    # ------------------------------------------------------------------ without a token
    @app.get("/healthz", tags=["meta"], summary="liveness; needs no token")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "version": __version__}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # ------------------------------------------------------------------ meta
    @app.get("/openapi.json", tags=["meta"], summary="this API's OpenAPI document")
    async def openapi(who: str = auth("ping")) -> JSONResponse:
        return _json(app.openapi())

    @app.get(f"{PREFIX}/whoami", tags=["meta"], summary="the token's id and role (sign-in check)")
    async def whoami(who: str = auth("ping")) -> JSONResponse:
        token_id = who.split()[1] if who.startswith("token ") else None
        role = next((t.role for t in TokenStore(daemon.services.state_dir).list() if t.id == token_id), None)
        return _json({"who": who, "id": token_id, "role": role})

    # ------------------------------------------------------------------ bots
    @app.get(f"{PREFIX}/bots", tags=["bots"], summary="every bot replica: state, pid, uptime, restarts")
    async def bots(who: str = auth("ps")) -> JSONResponse:
        return await run("ps", {}, who)

    @app.get(f"{PREFIX}/bots/{{bot}}", tags=["bots"], summary="one bot: instances, spec, recent events")
    async def status(bot: BotName, who: str = auth("status")) -> JSONResponse:
        return await run("status", {"bots": [known(bot)]}, who)

    def action(op: str) -> Callable[..., Any]:
        async def act(bot: BotName, who: str = auth(op)) -> JSONResponse:
            return await run(op, {"bots": [known(bot)]}, who)

        return act

    for op in ("start", "stop", "restart"):
        app.post(f"{PREFIX}/bots/{{bot}}/{op}", tags=["bots"], summary=f"{op} a bot (operator)", name=op)(
            action(op)
        )

    # ------------------------------------------------------------------ logs
    @app.get(f"{PREFIX}/bots/{{bot}}/logs", tags=["logs"], summary="a bot's log lines (tail and search)")
    async def logs(
        bot: BotName,
        *,
        tail: Annotated[int, Query(ge=1, le=10_000, description="the last N matching lines")] = 200,
        grep: Annotated[str | None, Query(max_length=500, description="a regular expression")] = None,
        since: Annotated[str | None, Query(max_length=64, description='"1h", RFC 3339 or epoch')] = None,
        until: Annotated[str | None, Query(max_length=64)] = None,
        who: str = auth("status"),
    ) -> JSONResponse:
        known(bot)
        now = time.time()
        lo = parse_since(since, now, flag="since") if since else None
        hi = parse_since(until, now, flag="until") if until else None
        records = read_logs(daemon.services.logs_dir, bot, since=lo, until=hi, grep=_regex(grep), tail=tail)
        return _json([{"ts": r.ts, "stream": r.stream, "text": r.text} for r in records])

    @app.get(
        f"{PREFIX}/bots/{{bot}}/logs/stream",
        tags=["logs"],
        summary="live log lines as server-sent events (`event: log`)",
        response_class=StreamingResponse,
    )
    async def logs_stream(
        bot: BotName,
        tail: Annotated[int, Query(ge=0, le=10_000)] = 50,
        grep: Annotated[str | None, Query(max_length=500)] = None,
        who: str = auth("status"),
    ) -> StreamingResponse:
        known(bot)
        _regex(grep)
        followers.reserve()
        body = streams.logs(daemon.services.logs_dir, bot, grep, tail, followers)
        return _event_stream(body)

    # ------------------------------------------------------------------ events and releases
    @app.get(f"{PREFIX}/events", tags=["events"], summary="state changes and daemon events, oldest first")
    async def events(
        bot: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        who: str = auth("events"),
    ) -> JSONResponse:
        return await run("events", {"bot": bot, "limit": limit}, who)

    @app.get(
        f"{PREFIX}/events/stream",
        tags=["events"],
        summary="the last events, then new ones as server-sent events (`event: event`)",
        response_class=StreamingResponse,
    )
    async def events_stream(
        bot: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=0, le=10_000)] = 50,
        who: str = auth("events"),
    ) -> StreamingResponse:
        return _event_stream(streams.events(daemon, bot, limit))

    @app.get(f"{PREFIX}/releases", tags=["releases"], summary="every applied `clawpen up`, newest first")
    async def releases(
        limit: Annotated[int, Query(ge=1, le=10_000)] = 50, who: str = auth("releases")
    ) -> JSONResponse:
        return await run("releases", {"limit": limit}, who)

    # ------------------------------------------------------------------ metrics, alerts, egress
    @app.get(f"{PREFIX}/metrics/latest", tags=["metrics"], summary="the newest sample of every series")
    async def metrics_latest(who: str = auth("metrics_latest")) -> JSONResponse:
        return await run("metrics_latest", {}, who)

    @app.get(f"{PREFIX}/metrics/{{target}}", tags=["metrics"], summary='series of a bot or of "host"')
    async def metrics(
        target: Annotated[
            str, PathParam(max_length=200, description='a bot (`demo`, a replica `demo[1]`) or "host"')
        ],
        since: Annotated[float, Query(gt=0, le=90 * 86400, description="seconds back")] = 3600,
        who: str = auth("metrics"),
    ) -> JSONResponse:
        return await run("metrics", {"target": target, "since": since}, who)

    @app.get(f"{PREFIX}/alerts", tags=["alerts"], summary="firing and recent alerts")
    async def alerts(who: str = auth("alerts")) -> JSONResponse:
        return await run("alerts", {}, who)

    @app.post(f"{PREFIX}/alerts/{{alert_id}}/ack", tags=["alerts"], summary="acknowledge an alert")
    async def alerts_ack(
        alert_id: Annotated[str, PathParam(max_length=200)], who: str = auth("alerts_ack")
    ) -> JSONResponse:
        return await run("alerts_ack", {"id": alert_id, "who": who}, who)

    @app.post(f"{PREFIX}/alerts/silence", tags=["alerts"], summary="silence an alert rule for a while")
    async def alerts_silence(
        rule: Annotated[str, Body(max_length=200, description="the rule's name")],
        duration: Annotated[str, Body(alias="for", max_length=32, description='e.g. "1h"')],
        who: str = auth("alerts_silence"),
    ) -> JSONResponse:
        return await run("alerts_silence", {"rule": rule, "for": duration, "who": who}, who)

    @app.get(f"{PREFIX}/bots/{{bot}}/egress", tags=["network"], summary="a bot's egress log")
    async def egress(
        bot: BotName,
        since: Annotated[float, Query(gt=0, le=90 * 86400, description="seconds back")] = 3600,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
        who: str = auth("net_log"),
    ) -> JSONResponse:
        args = {"bot": known(bot), "since": time.time() - since, "limit": limit}
        return await run("net_log", args, who)

    # ------------------------------------------------------------------ topology
    @app.get(f"{PREFIX}/topology", tags=["bots"], summary="host -> bots -> gateway -> domains, ports")
    async def topology(who: str = auth("status")) -> JSONResponse:
        ps = await daemon.dispatch("ps", {}, who)
        states: dict[str, list[str]] = {}
        for row in ps:
            states.setdefault(row["bot"], []).append(row["state"])
        nodes = []
        for name, row in sorted(daemon.store.bots().items()):
            net = row.policy["spec"].get("network") or {}
            nodes.append(
                {
                    "bot": name,
                    "states": states.get(name, []),
                    "egress": net.get("egress", []),
                    "publish": net.get("publish", []),
                    "expose": bool(net.get("expose")),
                    "bandwidth": net.get("bandwidth"),
                }
            )
        return _json({"host": _hostname(), "bots": nodes})

    return app


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _event_stream(body: Any) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


__all__ = ["check", "create_app"]
