"""The verdict logic of `validate --hostile` (the probes themselves run for real in
tests/integration/test_hostile.py)."""

from __future__ import annotations

from pathlib import Path

from clawpen.validate import probes as PROBES
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


def test_an_action_that_cannot_be_attempted_is_never_contained() -> None:
    a: Action = BY_ID["priv.userns"]
    unjudged = {"did": False, "detail": "the sandbox has no python3 to run the probe", "judged": False}
    assert judge(a, unjudged, "exited", None, DID) == "not-judged"
    assert judge(a, unjudged, "exited", "/usr/x exists on the host", DID) == "escaped"  # a trace still counts


def _minimal_python(code: str, *args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    """Run a probe under this python with ctypes and json made unimportable (python3-minimal)."""
    import json
    import subprocess
    import sys

    block = "import sys; sys.modules['ctypes'] = None; sys.modules['json'] = None; "
    wrapper = block + "exec(compile(sys.argv.pop(1), 'probe', 'exec'))"
    done = subprocess.run(
        [sys.executable, "-I", "-c", wrapper, PROBES.PRELUDE + code, *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return found


def test_the_probes_answer_without_json_or_ctypes(tmp_path: Path) -> None:
    # the hand-written JSON line survives quotes, backslashes, control characters and non-ASCII
    nasty = 'a "quoted" \\ back\tslash\nnewline \x01 é ✓'
    assert _minimal_python("out(True, A[1])", "/tmp", nasty) == {"did": True, "detail": nasty}
    # a syscall probe without ctypes execs clawpen-sysprobe from the scratch folder; missing there,
    # the action is not judged (never "contained")
    got = _minimal_python(PROBES.UNSHARE, str(tmp_path), "user")
    assert got["judged"] is False and "clawpen-sysprobe cannot run: ENOENT" in str(got["detail"])
