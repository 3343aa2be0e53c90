"""The typed operation contract (clawpen.ops): a bad argument is the caller's mistake (exit 2 /
400, naming the field); a bug in a handler is an internal error (exit 1 / 500) whose traceback
is in the daemon's log and not in the answer. A real Daemon (SQLite store, token store) serves
its real Unix socket from a thread; the real Client and CLI talk to it."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from clawpen import audit, cli
from clawpen.api.app import create_app
from clawpen.daemon import audit_schedule as audit_ops
from clawpen.daemon import client as client_mod
from clawpen.daemon import (
    ops_admin,
    ops_bots,
    ops_releases,
    ops_snapshots,
    ops_storage,
    ops_validate,
    ops_views,
)
from clawpen.daemon.client import Client
from clawpen.daemon.rpc import RemoteError
from clawpen.daemon.server import Daemon
from clawpen.daemon.store import Store
from clawpen.errors import InternalError, UsageError
from clawpen.ha import component as ha_ops
from clawpen.logs.ship import component as ship_ops
from clawpen.metrics import ops as metrics_ops
from clawpen.net import ops as net_ops
from clawpen.ops import Call, Contract, Empty, Registry
from clawpen.tokens import TokenStore

SRC = Path(cli.__file__).parent
CONTRACTS: dict[str, Contract[Any]] = {
    c.name: c
    for module in (
        ops_bots,
        ops_admin,
        ops_views,
        ops_releases,
        metrics_ops,
        net_ops,
        ops_snapshots,
        ops_storage,
        ops_validate,
        ha_ops,
        audit_ops,
        ship_ops,
    )
    for c in module.CONTRACTS
}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    store = Store(tmp_path / "clawpen.db")
    d = Daemon(store, lambda _d: SimpleNamespace(state_dir=tmp_path, logs_dir=tmp_path / "logs"))  # type: ignore[arg-type,return-value]
    log = (tmp_path / "daemon.log").open("a")
    d.ops.log = log  # what stderr is for a daemon the CLI started
    yield d
    log.close()
    store.close()


@contextlib.contextmanager
def serving(daemon: Daemon, state: Path) -> Iterator[None]:
    """``daemon.handle`` on ``state``/clawpen.sock, in an event loop of its own thread."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(
            asyncio.start_unix_server(daemon.handle, path=str(state / "clawpen.sock"))
        )
        ready.set()
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(5)
    try:
        yield
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def _broken_ps(self: Daemon, _req: Empty, _call: Call) -> Any:
    async def fail() -> Any:
        return {}["no-such-key"]  # a bug: KeyError

    return fail()


def test_a_bad_argument_is_exit_2_naming_the_field(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CLAWPEN_TOKEN", raising=False)
    monkeypatch.setenv("CLAWPEN_HOME", str(tmp_path))
    with serving(daemon, tmp_path):
        client = Client(tmp_path, timeout=5)
        assert client.call("ps") == []  # control: the same call, well formed
        assert client.call("releases", limit=5) == []
        for op, args, field in (
            ("ps", {"bogus": 1}, "bogus"),
            ("releases", {"limit": "many"}, "limit"),
            ("status", {"bots": "demo"}, "bots"),
            ("token_create", {"role": "root"}, "role"),
        ):
            with pytest.raises(RemoteError) as err:
                client.call(op, **args)
            assert err.value.exit_code == 2, err.value
            assert err.value.where == f"{op}.{field}" and field in err.value.what
        # the CLI: `--expires 0` reaches the daemon as expires_in=0, which must be > 0
        assert cli.main(["token", "create", "--role", "viewer", "--expires", "0"]) == 2
        out = capsys.readouterr().err
        assert "expires_in" in out and "Traceback" not in out
        assert TokenStore(tmp_path).list() == []  # nothing half done
        assert cli.main(["token", "create", "--role", "viewer", "--expires", "1h"]) == 0  # control
        assert len(TokenStore(tmp_path).list()) == 1
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()  # the caller's mistake: no bug logged


def test_a_handler_bug_is_an_internal_error_with_its_traceback_in_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(Daemon, "op_ps", _broken_ps)
    monkeypatch.delenv("CLAWPEN_TOKEN", raising=False)
    monkeypatch.setenv("CLAWPEN_HOME", str(tmp_path))
    store = Store(tmp_path / "clawpen.db")
    daemon = Daemon(store, lambda _d: SimpleNamespace(state_dir=tmp_path, logs_dir=tmp_path / "logs"))  # type: ignore[arg-type,return-value]
    log_path = tmp_path / "daemon.log"
    with log_path.open("a") as log, serving(daemon, tmp_path):
        daemon.ops.log = log
        with pytest.raises(RemoteError) as err:
            Client(tmp_path, timeout=5).call("ps")
        assert err.value.exit_code == 1
        assert "internal error in operation ps: KeyError" in err.value.what
        answer = f"{err.value.what} {err.value.hint}"
        assert "Traceback" not in answer and "no-such-key" not in answer
        assert cli.main(["ps"]) == 1
        shown = capsys.readouterr().err
        assert "internal error in operation ps" in shown and "Traceback" not in shown
        assert "bad request" not in shown
        assert Client(tmp_path, timeout=5).call("releases") == []  # control: the daemon still serves
    logged = log_path.read_text()
    assert "Traceback (most recent call last)" in logged and "KeyError: 'no-such-key'" in logged
    assert ", in fail\n" in logged.split("internal error in operation ps")[1]  # the frame of the bug
    # over HTTP: 500 with the same short message, the traceback again only in the log
    viewer = TokenStore(tmp_path).create("viewer")[1]
    log_path.write_text("")
    with log_path.open("a") as log:
        daemon.ops.log = log
        status, body = asyncio.run(_get(daemon, "/api/v1/bots", viewer))
    assert status == 500 and body["error"].startswith("internal error in operation ps: KeyError")
    assert "Traceback" not in json.dumps(body)
    assert "KeyError: 'no-such-key'" in log_path.read_text()
    status, body = asyncio.run(_get(daemon, "/api/v1/releases", viewer))
    assert status == 200 and body == []  # control
    store.close()


async def _get(daemon: Daemon, path: str, token: str) -> tuple[int, Any]:
    transport = httpx.ASGITransport(app=create_app(daemon), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        r = await client.get(path, headers={"Authorization": f"Bearer {token}"})
        return r.status_code, r.json()


def test_http_bad_argument_is_400_naming_the_field(daemon: Daemon) -> None:
    viewer = TokenStore(daemon.services.state_dir).create("viewer")[1]
    status, body = asyncio.run(_get(daemon, "/api/v1/releases?limit=0", viewer))
    assert status == 422 and body["detail"][0]["loc"] == ["query", "limit"]  # FastAPI's own bounds
    daemon.store.put_bot("demo", {"spec": {"command": ["true"]}, "base_dir": "/"}, "stopped", None)
    status, body = asyncio.run(_get(daemon, "/api/v1/bots/demo/logs?grep=(", viewer))
    assert status == 400 and body["where"] == "grep"
    status, body = asyncio.run(_get(daemon, "/api/v1/bots/demo/logs", viewer))
    assert status == 200 and body == []  # control


def test_the_socket_refuses_malformed_requests_as_usage_errors(daemon: Daemon, tmp_path: Path) -> None:
    import socket

    with serving(daemon, tmp_path):
        for line in (
            b"not json\n",
            b"[]\n",
            b'{"args": {}}\n',
            b'{"op": "ps", "args": [1]}\n',
            b'{"op": 3}\n',
        ):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(tmp_path / "clawpen.sock"))
                s.sendall(line)
                reply = json.loads(s.makefile().readline())
            assert reply["ok"] is False and reply["error"]["exit_code"] == 2, (line, reply)
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()


def test_audit_keeps_arguments_and_reply_detail_never_secrets(daemon: Daemon, tmp_path: Path) -> None:
    made = asyncio.run(daemon.dispatch("token_create", {"role": "viewer", "name": "ci"}, "root"))
    record = audit.read(tmp_path)[-1]
    assert record["action"] == "token_create" and record["detail"] == {
        "role": "viewer",
        "name": "ci",
        "id": made["id"],
    }
    assert made["token"] not in json.dumps(audit.read(tmp_path))
    request = ops_admin.SECRETS_SET.parse({"name": "API_KEY", "value_b64": "c2VjcmV0"})
    assert ops_admin.SECRETS_SET.audit_detail(request, {"set": "API_KEY"}) == {"name": "API_KEY"}
    asyncio.run(daemon.dispatch("ps", {}, "root"))  # a viewer's look is not audited
    assert audit.read(tmp_path)[-1]["action"] == "token_create"


def test_a_reply_that_breaks_its_contract_is_an_internal_error(tmp_path: Path) -> None:
    log = (tmp_path / "log").open("w")
    registry = Registry(log=log)

    async def wrong(_req: Empty, _call: Call) -> Any:
        return {"pid": "not a number"}

    registry.add([ops_bots.PING.bind(wrong)])
    with pytest.raises(InternalError):
        asyncio.run(registry.run(registry.require("ping"), Empty(), Call("root")))
    with pytest.raises(ValueError, match="registered twice"):
        registry.add([ops_bots.PING.bind(wrong)])
    with pytest.raises(UsageError, match="unknown operation"):
        registry.require("frobnicate")
    log.close()
    assert "ValidationError" in (tmp_path / "log").read_text()


def undocumented_routes(app: FastAPI) -> list[str]:
    """Each route of ``app``'s OpenAPI document whose 200 answer has no (or an empty) schema."""
    missing = []
    for path, methods in app.openapi()["paths"].items():
        for method, spec in methods.items():
            content = spec.get("responses", {}).get("200", {}).get("content") or {}
            if not content or not all(media.get("schema") for media in content.values()):
                missing.append(f"{method.upper()} {path}")
    return missing


def test_every_route_has_a_response_schema(daemon: Daemon) -> None:
    app = create_app(daemon)
    assert undocumented_routes(app) == []
    paths = app.openapi()["paths"]
    assert len(paths) >= 17 and "/api/v1/metrics/{target}" in paths  # component routes are there too
    # control: a route without a response model is found
    app.get("/api/v1/undocumented")(lambda: {"x": 1})
    app.openapi_schema = None
    assert undocumented_routes(app) == ["GET /api/v1/undocumented"]


def _calls(tree: ast.AST) -> Iterator[tuple[str, set[str]]]:
    """(op, keyword names) of each ``X.call("op", k=...)``/``stream``/``call_with_progress``."""
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in ("call", "stream", "call_with_progress") or not node.args:
            continue
        first = node.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            keys = {k.arg for k in node.keywords if k.arg and k.arg != "autostart"}
            for k in node.keywords:  # **{"for": ...}
                if k.arg is None and isinstance(k.value, ast.Dict):
                    keys |= {d.value for d in k.value.keys if isinstance(d, ast.Constant)}
            yield first.value, keys


def test_every_cli_call_names_a_contract_and_only_its_fields() -> None:
    """The CLI sends operations by name (it does not import the pydantic contracts: `clawpen ps`
    stays fast); this keeps each call it makes true to the contract the daemon checks."""
    seen = set()
    for path in SRC.rglob("*.py"):
        for op, keys in _calls(ast.parse(path.read_text())):
            if op not in CONTRACTS:
                continue  # another object's .call (subprocess...)
            request = CONTRACTS[op].request
            fields = set(request.model_fields) | {f.alias for f in request.model_fields.values() if f.alias}
            assert keys <= fields, f"{path.name}: {op} sends {sorted(keys - fields)}"
            seen.add(op)
    assert {"ps", "status", "up", "exec_target", "events", "net_log", "alerts_silence"} <= seen
    # what the client asks again after a dropped connection only looks
    looking = {name for name, c in CONTRACTS.items() if c.role == "viewer"} | {"secrets_ls", "token_ls"}
    assert set(client_mod.READ_ONLY_OPS) <= looking
