"""The HTTP API (FastAPI) over the daemon's operations, and the dashboard's files.

Every ``/api/v1`` route (api/routes.py) calls an operation in-process through
``Daemon.dispatch`` (the same operations the Unix socket serves), after :mod:`clawpen.api.auth`
checked the bearer token for that operation's role; its response model is the operation's
reply type (:mod:`clawpen.ops`). A bug answers 500 with a short message; its traceback goes to
the daemon's log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clawpen import __version__
from clawpen.api.auth import HttpError, check, on_clawpen_error, on_http_error, on_internal, requires
from clawpen.api.routes import ERRORS, PREFIX, add_routes
from clawpen.daemon.server import Daemon
from clawpen.errors import ClawpenError

STATIC = Path(__file__).with_name("static")
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


async def on_bad_request(_request: Request, exc: Exception) -> JSONResponse:
    """422 as FastAPI answers it, but a body that is not UTF-8 is echoed with replacement
    characters (FastAPI's own handler raised UnicodeDecodeError on it: a 500)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    safe = jsonable_encoder(errors, custom_encoder={bytes: lambda b: b.decode("utf-8", "replace")})
    return JSONResponse({"detail": safe}, status_code=422)


class Health(BaseModel):
    ok: bool
    version: str


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
    app.add_exception_handler(RequestValidationError, on_bad_request)
    app.add_exception_handler(ClawpenError, on_clawpen_error)
    app.add_exception_handler(Exception, on_internal)
    app.add_middleware(SecurityHeaders)

    # ------------------------------------------------------------------ without a token
    @app.get("/healthz", tags=["meta"], summary="liveness; needs no token", response_model=Health)
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "version": __version__}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get(
        "/openapi.json",
        tags=["meta"],
        summary="this API's OpenAPI document",
        response_model=dict[str, Any],
        responses=ERRORS,
    )
    async def openapi(who: str = Depends(requires(daemon, "openapi", "viewer"))) -> JSONResponse:
        return JSONResponse(app.openapi())

    add_routes(app, daemon)
    return app


__all__ = ["PREFIX", "check", "create_app"]
