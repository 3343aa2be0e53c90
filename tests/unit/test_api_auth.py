"""Tokens -> 401/403 and the error mapping, on a real Daemon object with a real token store
and SQLite store (no bots); httpx calls the app in-process (ASGI transport)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from clawpen.api.app import create_app
from clawpen.api.auth import HttpError, check, status_for
from clawpen.daemon.server import Daemon
from clawpen.daemon.store import Store
from clawpen.errors import AccessError, ConfigError, HostError, UsageError
from clawpen.tokens import TokenStore


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    store = Store(tmp_path / "clawpen.db")
    d = Daemon(store, lambda _d: SimpleNamespace(state_dir=tmp_path, logs_dir=tmp_path / "logs"))  # type: ignore[arg-type,return-value]
    yield d
    store.close()


def token(daemon: Daemon, role: str) -> str:
    return TokenStore(daemon.services.state_dir).create(role)[1]


def test_check_tells_401_from_403(daemon: Daemon) -> None:
    viewer, operator = token(daemon, "viewer"), token(daemon, "operator")
    for bad in (None, "", "cpt_00000000_forged", "nonsense"):
        with pytest.raises(HttpError) as err:
            check(daemon, "ps", bad)
        assert err.value.status == 401
    with pytest.raises(HttpError) as err:
        check(daemon, "restart", viewer)
    assert err.value.status == 403 and err.value.error.hint == "this needs the operator role"
    assert check(daemon, "restart", operator).endswith("(operator)")
    # an operation this daemon lacks: the token is still checked (401 first), then the route says 404
    assert check(daemon, "metrics", viewer).endswith("(viewer)")
    with pytest.raises(HttpError) as err:
        check(daemon, "metrics", "cpt_00000000_forged")
    assert err.value.status == 401


def test_status_for_each_error_kind() -> None:
    assert status_for(AccessError("x")) == 403
    assert status_for(UsageError("no bot named a")) == 404
    assert status_for(UsageError("bad")) == 400
    assert status_for(ConfigError("bad")) == 400
    assert status_for(HostError("busy")) == 409


def test_routes_in_process(daemon: Daemon) -> None:
    asyncio.run(_routes(daemon))


async def _routes(daemon: Daemon) -> None:
    viewer = token(daemon, "viewer")
    transport = httpx.ASGITransport(app=create_app(daemon))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        auth = {"Authorization": f"Bearer {viewer}"}
        assert (await client.get("/healthz")).json()["ok"] is True
        assert (await client.get("/api/v1/bots")).status_code == 401
        assert (await client.get("/api/v1/bots", headers=auth)).json() == []
        missing: Any = await client.get("/api/v1/metrics/host", headers=auth)
        assert missing.status_code == 404
        assert missing.json()["error"] == "this daemon has no 'metrics' operation"
        assert (await client.get("/api/v1/bots/ghost", headers=auth)).status_code == 404
        restart = await client.post("/api/v1/bots/ghost/restart", headers=auth)
        assert restart.status_code == 403  # the role is checked before the bot
        schema = (await client.get("/openapi.json", headers=auth)).json()
        assert schema["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
        page = await client.get("/")
        assert page.status_code == 200 and page.headers["x-frame-options"] == "DENY"
