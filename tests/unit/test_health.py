"""Health checks without a sandbox: the counting rules, URL and address parsing, the exec
helper's pure parts, and how checks and ``enter`` report a sandbox that does not exist."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import pytest

from clawpen.daemon.health import (
    HealthResult,
    HealthTracker,
    Verdict,
    check_once,
    sandbox_address,
)
from clawpen.errors import SandboxError
from clawpen.plan.model import CgroupLimits, Identity, Plan, Rlimits, SeccompPolicy
from clawpen.sandbox import enter as enter_mod
from clawpen.sandbox.enter import NAMESPACE_FLAGS, enter, enter_argv, enter_config
from clawpen.spec.healthcheck import HttpTarget, parse_http, parse_tcp
from clawpen.spec.models import Health

OK = HealthResult(True, "HTTP 200", 0.01)
FAIL = HealthResult(False, "connection refused", 0.01)
V = Verdict


def no_such_pid() -> int:
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def make_plan(**kw: object) -> Plan:
    fields: dict[str, object] = {
        "bot": "web",
        "command": ("python3", "app.py"),
        "identity": Identity("web", 1_900_000_007, 1_900_000_007),
        "hostname": "web",
        "namespaces": ("user", "pid", "mount", "ipc", "uts", "cgroup", "net"),
        "mounts": (),
        "env": (("PATH", "/usr/bin:/bin"), ("SECRET", "s3 cr=t")),
        "cwd": "/workspace",
        "cgroup": CgroupLimits(),
        "rlimits": Rlimits(nofile=512, core=0, fsize=1 << 20),
        "seccomp": SeccompPolicy(),
    }
    fields.update(kw)
    return Plan(**fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# HealthTracker


def test_failures_in_the_start_period_do_not_count() -> None:
    t = HealthTracker(retries=2, start_period=30.0, interval=1.0, started_at=100.0)
    assert [t.record(FAIL, now) for now in (101, 110, 129.9)] == [V.STILL_OK] * 3
    assert (t.failures, t.status) == (0, "starting")
    assert t.record(FAIL, 130.0) is V.STILL_OK and t.failures == 1  # the period is over: counted
    assert t.record(FAIL, 131.0) is V.BECAME_UNHEALTHY


def test_the_first_check_is_at_once_then_quick_until_one_passes_then_every_interval() -> None:
    t = HealthTracker(retries=3, interval=30.0, started_at=0.0)
    assert t.delay() == 0.0 and t.status == "starting"  # right after the start, not after 30 s
    gaps = []
    now = 0.0
    for _ in range(8):
        t.record(FAIL, now)
        gaps.append(t.delay())
        now += gaps[-1]
    assert gaps == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]  # quick while starting, at most 5 s
    assert t.record(OK, now) is V.HEALTHY and t.delay() == 30.0  # then every interval
    assert HealthTracker(interval=2.0).delay() == 0.0
    short, gaps = HealthTracker(interval=2.0), []
    for _ in range(5):
        short.record(FAIL, 0.0)
        gaps.append(short.delay())
    assert gaps == [0.25, 0.5, 1.0, 2.0, 2.0]  # never further apart than the interval


def test_quick_retries_count_failures_only_at_the_intervals_pace() -> None:
    t = HealthTracker(retries=3, interval=30.0, started_at=0.0)
    now, verdicts = 0.0, []
    while t.status == "starting":  # quick retries: a failure counts once every 30 s
        verdicts.append((now, t.record(FAIL, now)))
        now += t.delay()
    (when,) = [at for at, v in verdicts if v is V.BECAME_UNHEALTHY]
    assert 60.0 <= when < 70.0  # the third counted failure: about when checks every 30 s make it
    assert len(verdicts) > 10  # yet it was checked far more often (each failure counted: 0.75 s)


def test_in_the_start_period_a_failure_leaves_it_starting_and_after_it_counts() -> None:
    t = HealthTracker(retries=1, start_period=10.0, interval=30.0, started_at=0.0)
    now = 0.0
    while now < 10.0:
        assert t.record(FAIL, now) is V.STILL_OK
        assert t.status == "starting" and t.failures == 0
        now += t.delay()
    assert t.record(FAIL, max(now, 10.0)) is V.BECAME_UNHEALTHY and t.status == "unhealthy"
    ok = HealthTracker(retries=1, start_period=10.0, started_at=0.0)
    assert ok.record(OK, 0.5) is V.HEALTHY and ok.status == "healthy"  # a success counts at once


def test_retries_consecutive_failures_make_it_unhealthy_once() -> None:
    t = HealthTracker(retries=3)
    assert t.record(OK, 1) is V.HEALTHY and t.status == "healthy"
    assert [t.record(FAIL, n) for n in (2, 3, 4, 5, 6)] == [
        V.STILL_OK,
        V.STILL_OK,
        V.BECAME_UNHEALTHY,
        V.STILL_OK,  # said once: nothing new until it recovers
        V.STILL_OK,
    ]
    assert (t.status, t.failures, t.last) == ("unhealthy", 5, FAIL)


def test_a_success_resets_the_count() -> None:
    t = HealthTracker(retries=3)
    for _ in range(5):
        assert t.record(FAIL, 1) is V.STILL_OK
        assert t.record(FAIL, 2) is V.STILL_OK
        assert t.record(OK, 3) is V.HEALTHY and t.failures == 0
    assert t.status == "healthy"


def test_recovery_then_unhealthy_again() -> None:
    t = HealthTracker(retries=1)
    assert t.record(FAIL, 1) is V.BECAME_UNHEALTHY
    assert t.record(OK, 2) is V.RECOVERED and t.status == "healthy"
    assert t.record(OK, 3) is V.HEALTHY
    assert t.record(FAIL, 4) is V.BECAME_UNHEALTHY  # reported again after a recovery


def test_restart_opens_a_new_start_period() -> None:
    t = HealthTracker(Health(http="http://127.0.0.1/", retries=1, start_period="10s"), started_at=0.0)
    assert (t.retries, t.start_period) == (1, 10.0)
    assert t.record(FAIL, 11) is V.BECAME_UNHEALTHY
    t.restart(started_at=50.0)
    assert (t.status, t.failures, t.last) == ("starting", 0, None)
    assert t.record(FAIL, 55) is V.STILL_OK and t.record(FAIL, 60) is V.BECAME_UNHEALTHY
    with pytest.raises(ValueError, match="retries"):
        HealthTracker(retries=0)
    default = HealthTracker()
    assert (default.retries, default.start_period, default.started_at) == (3, 0.0, 0.0)


def test_verdict_values_are_the_documented_words() -> None:
    assert [v.value for v in Verdict] == ["healthy", "still-ok", "became-unhealthy", "recovered"]


# --------------------------------------------------------------------------------------------
# parsing


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("http://127.0.0.1:18789/readyz", HttpTarget("127.0.0.1", 18789, "/readyz", "127.0.0.1:18789")),
        ("http://localhost/", HttpTarget("localhost", 80, "/", "localhost")),
        ("http://127.0.0.1:8000", HttpTarget("127.0.0.1", 8000, "/", "127.0.0.1:8000")),
        ("http://[::1]:8080/a?b=1&c", HttpTarget("::1", 8080, "/a?b=1&c", "[::1]:8080")),
        ("http://u:p@Web:81/x#frag", HttpTarget("web", 81, "/x", "Web:81")),
    ],
)
def test_parse_http(url: str, target: HttpTarget) -> None:
    assert parse_http(url) == target


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://127.0.0.1/", "https is not supported"),
        ("127.0.0.1:80/x", "must start with http://"),
        ("http:///path", "names no host"),
        ("http://127.0.0.1:99999/", "out of range"),
        ("http://127.0.0.1/a b", "space or a control"),
        ("http://127.0.0.1/a\r\nX-Evil: 1", "space or a control"),
    ],
)
def test_parse_http_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_http(url)


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("127.0.0.1:5000", ("127.0.0.1", 5000)),
        ("localhost:1", ("localhost", 1)),
        ("[::1]:65535", ("::1", 65535)),
        (" web:80 ", ("web", 80)),
    ],
)
def test_parse_tcp(addr: str, expected: tuple[str, int]) -> None:
    assert parse_tcp(addr) == expected


@pytest.mark.parametrize("addr", ["5000", ":5000", "host:", "host:0", "host:65536", "host:http", "[::1]"])
def test_parse_tcp_refuses(addr: str) -> None:
    with pytest.raises(ValueError, match="must be host:port"):
        parse_tcp(addr)


def test_sandbox_address_takes_literals_and_looks_names_up_in_the_sandbox_hosts() -> None:
    assert sandbox_address("127.0.0.1", 1) == (socket.AF_INET, "127.0.0.1")
    assert sandbox_address("::1", 1) == (socket.AF_INET6, "::1")
    with pytest.raises(ValueError, match="not in the sandbox's /etc/hosts"):
        sandbox_address("no-such-name.invalid", os.getpid())  # our own /etc/hosts
    with pytest.raises(SandboxError, match="is gone"):
        sandbox_address("localhost", no_such_pid())


# --------------------------------------------------------------------------------------------
# the exec helper's pure parts


def test_enter_config_carries_the_bot_confinement() -> None:
    plan = make_plan(namespaces=("user", "pid", "net"))
    config = json.loads(enter_config(4242, plan, ["sh", "-c", "test -f ready"], b"\x01" * 16))
    flags = (
        NAMESPACE_FLAGS["user"] | NAMESPACE_FLAGS["pid"] | NAMESPACE_FLAGS["net"] | NAMESPACE_FLAGS["mount"]
    )
    assert config == {
        "pid": 4242,
        "uid": 1_900_000_007,
        "gid": 1_900_000_007,
        "flags": flags,
        "cwd": "/workspace",
        "env": [["PATH", "/usr/bin:/bin"], ["SECRET", "s3 cr=t"]],
        "argv": ["sh", "-c", "test -f ready"],
        "rlimits": {"nofile": 512, "core": 0, "fsize": 1 << 20},
        "bpf": "01" * 16,
    }
    full = json.loads(enter_config(1, make_plan(), ["true"], b"\0" * 8))["flags"]
    assert full == sum(NAMESPACE_FLAGS.values())


def test_enter_argv_runs_this_module_isolated_and_keeps_secrets_off_it() -> None:
    argv = enter_argv(7, 9, "/usr/bin/python3")
    assert argv == ["/usr/bin/python3", "-I", "-S", "-B", str(Path(enter_mod.__file__).resolve()), "7", "9"]
    assert enter_argv(3, 4)[0] == sys.executable
    assert not any("SECRET" in a or "s3 cr=t" in a for a in argv)


def test_enter_refuses_an_empty_command_and_a_missing_sandbox() -> None:
    with pytest.raises(SandboxError, match="no command") as err:
        enter(1, make_plan(), None, [], bpf=b"\0" * 8)
    assert err.value.where == "exec"
    with pytest.raises(SandboxError, match=r"sandbox of web \(pid \d+\) is gone"):
        enter(no_such_pid(), make_plan(), None, ["true"], bpf=b"\0" * 8)


# --------------------------------------------------------------------------------------------
# check_once without a sandbox


def run_check(spec: Health, pid: int, **kw: object) -> HealthResult:
    return asyncio.run(check_once(spec, pid, **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "spec", [Health(http="http://127.0.0.1:8000/"), Health(tcp="localhost:1"), Health(tcp="127.0.0.1:80")]
)
def test_a_check_of_a_missing_sandbox_is_unhealthy(spec: Health) -> None:
    result = run_check(spec, no_such_pid())
    assert not result.ok and f"sandbox (pid {no_such_pid()}) is gone" in result.detail, result
    assert result.latency_s >= 0


def test_a_bad_url_is_an_unhealthy_result_not_an_exception() -> None:
    # the spec refuses such a URL when it loads; a check built without validation still fails softly
    result = run_check(Health.model_construct(http="https://127.0.0.1/"), no_such_pid())
    assert result[:2] == (
        False,
        "health URL 'https://127.0.0.1/' must start with http:// (https is not supported)",
    )


def test_a_cmd_check_needs_the_plan_and_the_filter() -> None:
    with pytest.raises(TypeError, match="plan"):
        run_check(Health(cmd=["true"]), 1)
    result = run_check(Health(cmd=["true"]), no_such_pid(), plan=make_plan(), bpf=b"\0" * 8)
    assert not result.ok and "is gone" in result.detail
