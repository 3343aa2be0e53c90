"""Bearer tokens on the HTTP API, and how clawpen's errors become HTTP answers.

Every route but ``/healthz`` (and the dashboard's static files, which hold no data) depends on
:func:`requires`, which checks the token with ``Daemon.authorize_token``: no token or one that is
not valid -> 401, a valid token whose role is too low -> 403.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from clawpen.daemon.server import Daemon
from clawpen.errors import AccessError, ClawpenError, ConfigError, InternalError, UsageError

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="A clawpen token (`clawpen token create --role viewer`), sent as "
    "`Authorization: Bearer cpt_...`",
)


class HttpError(Exception):
    """A clawpen error with the HTTP status it is answered with."""

    def __init__(self, status: int, error: ClawpenError) -> None:
        super().__init__(error.what)
        self.status = status
        self.error = error


def error_body(err: ClawpenError) -> dict[str, Any]:
    return {"error": err.what, "where": err.where, "hint": err.hint}


def status_for(err: ClawpenError) -> int:
    if isinstance(err, InternalError):
        return 500
    if isinstance(err, AccessError):
        return 403
    if isinstance(err, UsageError) and err.what.startswith("no bot named"):
        return 404
    if isinstance(err, UsageError | ConfigError):
        return 400
    return 409  # the host or a sandbox refused: a conflict with the current state, not a crash


async def on_http_error(_request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, HttpError):  # pragma: no cover - registered for HttpError only
        raise exc
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(error_body(exc.error), status_code=exc.status, headers=headers)


async def on_clawpen_error(_request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, ClawpenError):  # pragma: no cover
        raise exc
    return JSONResponse(error_body(exc), status_code=status_for(exc))


async def on_internal(_request: Request, exc: Exception) -> JSONResponse:
    """A bug in a route outside any operation (those become InternalError in the registry):
    the traceback goes to the daemon's log, the client gets a short 500."""
    import sys
    import traceback

    text = "".join(traceback.format_exception(exc))
    print(f"clawpen daemon: internal error in the HTTP API:\n{text}", file=sys.stderr, flush=True)
    err = InternalError(
        f"internal error: {type(exc).__name__} (a bug in clawpen, not your request)",
        where="api",
        hint="the traceback is in the daemon's log",
    )
    return JSONResponse(error_body(err), status_code=500)


def check(daemon: Daemon, op: str, token: str | None, role: str | None = None) -> str:
    """Who holds ``token``, if it may run ``op`` (which needs ``role``, by default the role of
    the daemon's operation ``op``); HttpError 401/403 otherwise."""
    if not token:
        raise HttpError(
            401,
            AccessError(
                "this route needs a token",
                where="Authorization header",
                hint="send `Authorization: Bearer cpt_...`; "
                "make one with `clawpen token create --role viewer`",
            ),
        )
    needed = role or daemon.role_for(op) or "viewer"
    try:
        return daemon.authorize_token(op, token, needed)
    except AccessError as refused:
        try:
            daemon.authorize_token("ping", token)  # the least role: fails only if the token is bad
        except AccessError as invalid:
            raise HttpError(401, invalid) from None
        raise HttpError(403, refused) from None


def requires(daemon: Daemon, op: str, role: str | None = None) -> Callable[..., Awaitable[str]]:
    """A FastAPI dependency: the caller's name, if their token allows ``op`` (``role``)."""

    async def dependency(creds: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]) -> str:
        return check(daemon, op, creds.credentials if creds else None, role)

    return dependency
