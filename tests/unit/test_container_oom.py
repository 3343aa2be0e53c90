"""A container's OOM kill that Docker records after the exit (containerd's OOM event can arrive
after the task's exit on a loaded host): clawpen asks again, briefly, when the end looks like one."""

from __future__ import annotations

from typing import Any

from clawpen.container import handle
from clawpen.container.handle import ContainerSandbox, late_oom_possible

MiB = 1 << 20
KILLED = {"ExitCode": 137, "OOMKilled": False}


def test_only_a_sigkill_near_the_memory_limit_is_asked_again() -> None:
    limit = {"Memory": 32 * MiB}
    assert late_oom_possible(KILLED, limit, 31 * MiB)
    assert not late_oom_possible({**KILLED, "OOMKilled": True}, limit, 32 * MiB)  # already known
    assert not late_oom_possible({"ExitCode": 1, "OOMKilled": False}, limit, 32 * MiB)  # not killed
    assert not late_oom_possible(KILLED, limit, 10 * MiB)  # far from the limit: a stop's SIGKILL
    assert not late_oom_possible(KILLED, {}, 32 * MiB)  # no engine memory limit
    assert not late_oom_possible(KILLED, limit, None)  # no peak known


class LateEngine:
    """A container whose engine records the OOM kill on its ``after``-th reload."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.reloads = 0
        self.attrs: dict[str, Any] = {"State": dict(KILLED)}

    def reload(self) -> None:
        self.reloads += 1
        if self.reloads >= self.after:
            self.attrs["State"] = {**KILLED, "OOMKilled": True}


def sandbox_of(engine: LateEngine) -> ContainerSandbox:
    box = ContainerSandbox.__new__(ContainerSandbox)  # only the engine handle is used here
    box.container = engine  # type: ignore[assignment]
    return box


def test_a_late_oom_record_is_waited_for_and_a_missing_one_gives_up(monkeypatch: Any) -> None:
    monkeypatch.setattr(handle.time, "sleep", lambda _s: None)
    late = LateEngine(after=3)
    assert sandbox_of(late)._await_oom(dict(KILLED))["OOMKilled"] is True
    assert late.reloads == 3  # and no more once it is there
    never = LateEngine(after=10**9)
    clock = iter(range(1000))
    monkeypatch.setattr(handle.time, "monotonic", lambda: float(next(clock)) * 0.1)
    state = sandbox_of(never)._await_oom(dict(KILLED), grace=2.0)
    assert state["OOMKilled"] is False and 15 <= never.reloads <= 21  # about grace / 0.1 s
