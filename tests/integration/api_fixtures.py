"""A real daemon with its HTTP API on a free loopback port, a demo bot and tokens of each role
(shared by test_api.py, test_api_schema.py and test_dashboard.py)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
from helpers import DaemonCli, wait_for

DEMO = """
    [bots.demo]
    command = ["sh", "-c", "i=0; while true; do i=$((i+1)); echo \\"tick $i\\"; sleep 0.2; done"]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Api:
    daemon: DaemonCli
    url: str
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self, role: str | None = "viewer", **kw: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=20, **kw)  # type: ignore[arg-type]

    def get(self, path: str, role: str | None = "viewer", **kw: object) -> httpx.Response:
        with self.client(role) as c:
            return c.get(path, **kw)  # type: ignore[arg-type]

    def post(self, path: str, role: str | None = "operator", **kw: object) -> httpx.Response:
        with self.client(role) as c:
            return c.post(path, **kw)  # type: ignore[arg-type]

    def bot(self, name: str = "demo") -> dict:
        rows = self.get("/api/v1/bots").json()
        return next(r for r in rows if r["bot"] == name and r["replica"] == 0)


def start_api(daemon: DaemonCli, spec: str = DEMO) -> Api:
    """`clawpen up` with CLAWPEN_API_LISTEN on a free port (the daemon is started by `up`, as a
    user's would be); waits for the demo bot to run and makes one token per role."""
    port = free_port()
    daemon.env["CLAWPEN_API_LISTEN"] = f"127.0.0.1:{port}"
    daemon.write(spec)
    daemon.cli("up")
    api = Api(daemon, f"http://127.0.0.1:{port}")

    def healthy() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{api.url}/healthz", timeout=2).status_code == 200
        return False

    assert wait_for(healthy, 20, interval=0.1), (daemon.home / "daemon.log").read_text()
    for role in ("viewer", "operator", "admin"):
        api.tokens[role] = daemon.cli(
            "token", "create", "--role", role, "--name", f"test-{role}"
        ).stdout.strip()
    daemon.wait_state("demo", "running")
    return api


@contextlib.contextmanager
def running_api(daemon: DaemonCli, spec: str = DEMO) -> Iterator[Api]:
    yield start_api(daemon, spec)
