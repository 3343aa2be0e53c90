"""The verdict logic of `validate --hostile` (the probes themselves run for real in
tests/integration/test_hostile.py)."""

from __future__ import annotations

from clawpen.validate.actions import ACTIONS, Action
from clawpen.validate.hostile import judge

BY_ID = {a.id: a for a in ACTIONS}
DID = {"did": True, "detail": "ok"}
REFUSED = {"did": False, "detail": "EPERM"}


def test_catalogue_is_big_unique_and_grouped() -> None:
    assert len(ACTIONS) >= 30
    assert len(BY_ID) == len(ACTIONS)
    groups = {a.group for a in ACTIONS}
    assert groups == {"filesystem", "processes", "privilege", "resources", "network", "secrets"}
    for a in ACTIONS:
        assert a.id.split(".")[0] in {"fs", "proc", "priv", "res", "net", "sec"}, a.id


def test_verdicts() -> None:
    a: Action = BY_ID["fs.read-shadow"]
    assert judge(a, REFUSED, "exited", None, DID) == "contained"
    assert judge(a, DID, "exited", None, DID) == "escaped"
    assert judge(a, REFUSED, "exited", "/usr/x exists on the host", DID) == "escaped"
    assert judge(a, REFUSED, "exited", None, REFUSED) == "control-failed"
    assert judge(a, REFUSED, "exited", None, None) == "control-failed"
    assert judge(a, None, "setup-failed", None, DID) == "error"
    # killed by the kernel: contained only for resource actions
    assert judge(BY_ID["res.memory"], None, "oom", None, DID) == "contained"
    assert judge(a, None, "oom", None, DID) == "error"


def test_metadata_control_accepts_a_route() -> None:
    meta = BY_ID["net.metadata"]
    timeout = {"did": False, "detail": "TimeoutError timed out"}
    assert judge(meta, REFUSED, "exited", None, timeout) == "contained"
    unreachable = {"did": False, "detail": "ENETUNREACH Network is unreachable"}
    assert judge(meta, REFUSED, "exited", None, unreachable) == "control-failed"
