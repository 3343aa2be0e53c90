"""Schemathesis against the running API's own /openapi.json: cases generated from the schema
for every operation, with an admin token (no answer may be a 5xx) and without one (every route
but /healthz must answer 401). Live streams are opened, their status read, and closed."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from api_fixtures import Api, start_api
from helpers import DaemonCli
from hypothesis import HealthCheck, Phase, given, settings

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

EXAMPLES = 20


@pytest.fixture
def api(daemon: DaemonCli) -> Iterator[Api]:
    yield start_api(daemon)


def _status(case: object, client: httpx.Client, headers: dict[str, str]) -> int:
    """Send ``case``; a live stream is closed as soon as its status line arrived."""
    from schemathesis.core import NotSet

    body = case.body  # type: ignore[attr-defined]
    request = client.build_request(
        case.method,  # type: ignore[attr-defined]
        case.formatted_path,  # type: ignore[attr-defined]
        params=case.query or None,  # type: ignore[attr-defined]
        json=None if isinstance(body, NotSet | bytes) else body,
        content=body if isinstance(body, bytes) else None,
        headers=headers,
    )
    response = client.send(request, stream=True)
    try:
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            response.read()
        return response.status_code
    finally:
        response.close()


def _fuzz(
    operation: object,
    label: str,
    codes: set[int],
    send: object,
    admin: dict[str, str],
    failures: list[str],
) -> None:
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    cases = st.one_of(  # valid input, and input the schema forbids (must be 4xx, never 5xx)
        operation.as_strategy(GenerationMode.POSITIVE),  # type: ignore[attr-defined]
        operation.as_strategy(GenerationMode.NEGATIVE),  # type: ignore[attr-defined]
    )

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def run(case: object) -> None:
        status = send(case, admin)  # type: ignore[operator]
        codes.add(status)
        if status >= 500:
            failures.append(f"{label}: {status} for {case.as_curl_command()}")  # type: ignore[attr-defined]
        anonymous = send(case, {})  # type: ignore[operator]
        if label != "GET /healthz" and anonymous != 401:
            failures.append(f"{label}: {anonymous} without a token")

    run()


def test_no_route_answers_5xx_and_every_route_but_healthz_needs_a_token(api: Api) -> None:
    import schemathesis

    document = api.get("/openapi.json", "admin").json()
    # aim the generated names at the real bot half of the time, so logs, metrics and the rest
    # run on data (the other half: names no bot has)
    for methods in document["paths"].values():
        for spec in methods.values():
            for param in spec.get("parameters", []):
                if param["in"] == "path" and param["name"] in ("bot", "target"):
                    param["schema"] = {"type": "string", "enum": ["demo", "host", "no-such-bot"]}
    schema = schemathesis.openapi.from_dict(document)
    admin = {"Authorization": f"Bearer {api.tokens['admin']}"}
    seen: dict[str, set[int]] = {}
    failures: list[str] = []
    with httpx.Client(base_url=api.url, timeout=20) as client:
        for result in schema.get_all_operations():
            operation = result.ok()
            label = f"{operation.method.upper()} {operation.path}"
            codes = seen.setdefault(label, set())

            _fuzz(operation, label, codes, lambda case, h: _status(case, client, h), admin, failures)
    assert not failures, "\n".join(failures[:20])
    assert len(seen) >= 17, sorted(seen)
    assert seen["GET /healthz"] == {200}
    assert 200 in seen["GET /api/v1/bots"] and 200 in seen["GET /api/v1/releases"]
    assert api.bot()["state"] in ("running", "stopped", "starting", "stopping")  # the daemon is still there
