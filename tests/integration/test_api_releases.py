"""The releases and snapshots routes of the HTTP API against a real daemon and a real restic
(issue 15): release show and diff (viewer), rollback (admin; with its data too), a bot's
snapshots listed (viewer), created, restored and forgotten (operator); roles refused, a bad
body answered 422 (a key the route does not know, a wrong type) or 400 (a value the operation
refuses, the field named)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_fixtures import Api, start_api
from helpers import DaemonCli, wait_for

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

SPEC = """
    [snapshots]
    before_up = true
    [bots.demo]
    command = ["sh", "-c", "cd /workspace; [ -e a.txt ] || echo A > a.txt; sleep {secs}"]
    workspace = "./ws"
    workspace_adopt = true
"""


@pytest.fixture
def api(daemon: DaemonCli) -> Iterator[Api]:
    (daemon.spec.parent / "ws").mkdir()
    yield start_api(daemon, SPEC.format(secs=random.randrange(400_000, 900_000) * 10))


def test_release_show_and_diff(api: Api) -> None:
    shown = api.get("/api/v1/releases/1")
    assert shown.status_code == 200, shown.text
    body = shown.json()
    assert body["id"] == 1 and body["bots"][0]["bot"] == "demo" and body["bots"][0]["running"] is True
    assert "[bots.demo]" in body["spec_text"]
    api.daemon.write(SPEC.format(secs=random.randrange(400_000, 900_000) * 10 + 1))
    api.daemon.cli("up")
    for path, params in (("/api/v1/releases/1/diff", {"b": 2}), ("/api/v1/releases/1/diff", {})):
        diff = api.get(path, params=params).json()
        assert (diff["a"], diff["b"]) == (1, 2), diff
        assert [(c["bot"], c["change"]) for c in diff["bots"]] == [("demo", "changed")]
        assert "sleep" in diff["spec_diff"]
    missing = api.get("/api/v1/releases/99")
    assert missing.status_code == 400 and "there is no release 99" in missing.json()["error"]
    assert api.get("/api/v1/releases/0").status_code == 422  # the path's bounds
    assert api.get("/api/v1/releases/1/diff", params={"b": "x"}).status_code == 422


def test_rollback_and_snapshots_through_the_api(api: Api, tmp_path: Path) -> None:
    ws = api.daemon.spec.parent / "ws"
    assert wait_for(lambda: (ws / "a.txt").exists(), 10)
    api.daemon.write(SPEC.format(secs=random.randrange(400_000, 900_000) * 10 + 1))
    api.daemon.cli("up")  # release 2: a snapshot tagged before-release:2 (holds A)
    listed = api.get("/api/v1/bots/demo/snapshots")
    assert listed.status_code == 200, listed.text
    (snap2,) = listed.json()
    assert "before-release:2" in snap2["tags"]

    # roles: a viewer lists but does not snapshot; an operator does not roll back
    refused = api.post("/api/v1/bots/demo/snapshots", "viewer")
    assert refused.status_code == 403 and "operator" in refused.json()["hint"]
    refused = api.post("/api/v1/rollback", "operator", json={"release": 1})
    assert refused.status_code == 403 and "admin" in refused.json()["hint"], refused.text
    assert len(api.get("/api/v1/releases").json()) == 2  # nothing was rolled back
    made = api.post("/api/v1/bots/demo/snapshots", "operator")
    assert made.status_code == 200 and made.json()["bot"] == "demo", made.text
    assert len(api.get("/api/v1/bots/demo/snapshots").json()) == 2

    # bad bodies: a key the route does not know, a wrong type (422); a value refused (400)
    for bad in ({"with_date": True}, {"release": "one"}, {"dry_run": "maybe"}):
        r = api.post("/api/v1/rollback", "admin", json=bad)
        assert r.status_code == 422, (bad, r.status_code, r.text)
    for raw in (b"\xff\xa8 not utf-8", b"[1, 2]", b"{"):
        for kind, code in (("application/octet-stream", 422), ("application/json", 400)):
            # FastAPI's own 422 answer broke (a 500) on a body that is not UTF-8
            r = api.post("/api/v1/rollback", "admin", content=raw, headers={"content-type": kind})
            assert r.status_code in (code, 422), (raw, kind, r.status_code, r.text)
    r = api.post("/api/v1/rollback", "admin", json={"release": 0})
    assert r.status_code == 400 and "release" in r.json()["where"], r.text
    r = api.post("/api/v1/bots/demo/snapshots/forget", "operator", json={"daily": -1})
    assert r.status_code == 400 and "daily" in r.json()["where"], r.text
    assert api.post("/api/v1/bots/demo/snapshots/forget", "operator", json={"dayly": 1}).status_code == 422
    assert len(api.get("/api/v1/releases").json()) == 2

    (ws / "a.txt").write_text("damaged\n")
    dry = api.post("/api/v1/rollback", "admin", json={"release": 1, "with_data": True, "dry_run": True})
    assert dry.status_code == 200, dry.text
    assert dry.json()["data"][0]["snapshot"] == snap2["id"] and dry.json()["recreate"] == ["demo"]
    assert len(api.get("/api/v1/releases").json()) == 2
    done = api.post("/api/v1/rollback", "admin", json={"release": 1, "with_data": True})
    assert done.status_code == 200, done.text
    assert done.json()["release"] == 3 and done.json()["rollback_of"] == 1
    assert done.json()["data"][0]["snapshot"] == snap2["id"]
    assert (ws / "a.txt").read_text() == "A\n"
    assert api.daemon.wait_state("demo", "running")
    assert api.get("/api/v1/releases/1").json()["bots"][0]["running"] is True

    # restore: in place of a running bot's workspace is refused; to a new folder works
    rows = api.get("/api/v1/bots/demo/snapshots").json()
    saved = next(s for s in rows if "before-release:3" in s["tags"])
    r = api.post("/api/v1/bots/demo/snapshots/restore", "operator", json={"snapshot": saved["id"]})
    assert r.status_code == 400 and "is running" in r.json()["error"], r.text
    assert (ws / "a.txt").read_text() == "A\n"
    out = tmp_path / "out"
    r = api.post(
        "/api/v1/bots/demo/snapshots/restore", "viewer", json={"snapshot": saved["id"], "to": str(out)}
    )
    assert r.status_code == 403 and not out.exists()
    r = api.post(
        "/api/v1/bots/demo/snapshots/restore", "operator", json={"snapshot": saved["id"], "to": str(out)}
    )
    assert r.status_code == 200 and r.json()["target"] == str(out), r.text
    assert (out / "a.txt").read_text() == "damaged\n"

    # forget keeps one daily snapshot: all of the bot's are from today (before-release:N ones
    # included: one series per bot), so only the newest stays
    before = [s["id"] for s in api.get("/api/v1/bots/demo/snapshots").json()]
    again = api.post("/api/v1/bots/demo/snapshots", "operator").json()["snapshot"]
    r = api.post("/api/v1/bots/demo/snapshots/forget", "viewer", json={"daily": 1})
    assert r.status_code == 403
    r = api.post(
        "/api/v1/bots/demo/snapshots/forget", "operator", json={"daily": 1, "weekly": 0, "monthly": 0}
    )
    assert r.status_code == 200, r.text
    assert sorted(r.json()["forgotten"]) == sorted(before) and len(before) == 3
    left = [s["id"] for s in api.get("/api/v1/bots/demo/snapshots").json()]
    assert len(left) == 1 and left[0].startswith(again)  # create answers restic's short id
