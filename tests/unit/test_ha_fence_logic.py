"""The fence's bookkeeping (clawpen.ha.fence.Fence) on a fake clock and a fake kill."""

from __future__ import annotations

import pytest

from clawpen.ha.fence import Fence


def make() -> tuple[Fence, list[str], list[float]]:
    killed: list[str] = []
    t = [100.0]
    return Fence(kill=killed.append, clock=lambda: t[0]), killed, t


def test_deadlines_fire_once_in_order_and_only_when_past() -> None:
    fence, killed, t = make()
    assert fence.handle({"op": "arm", "bot": "a", "cgroup": "a.0", "deadline": 105, "lease": 1, "token": 3})[
        "ok"
    ]
    assert fence.handle({"op": "arm", "bot": "b", "cgroup": "b.0", "deadline": 102, "lease": 2, "token": 4})[
        "ok"
    ]
    assert fence.expire() == 2.0 and killed == []
    t[0] = 102.0
    assert fence.expire() == 3.0 and killed == ["b.0"]
    t[0] = 110.0
    assert fence.expire() is None and killed == ["b.0", "a.0"]
    assert fence.expire() is None and killed == ["b.0", "a.0"]  # a fired guard is not fired again


def test_extend_only_moves_a_deadline_later_and_never_revives() -> None:
    fence, killed, t = make()
    fence.handle({"op": "arm", "bot": "a", "cgroup": "a.0", "deadline": 105})
    assert fence.handle({"op": "extend", "bot": "a", "deadline": 103})["deadline"] == 105
    assert fence.handle({"op": "extend", "bot": "a", "deadline": 108})["deadline"] == 108
    t[0] = 109.0
    fence.expire()
    reply = fence.handle({"op": "extend", "bot": "a", "deadline": 200})
    assert not reply["ok"] and killed == ["a.0"]


def test_disarm_and_bad_requests() -> None:
    fence, killed, t = make()
    fence.handle({"op": "arm", "bot": "a", "cgroup": "a.0", "deadline": 101})
    assert fence.handle({"op": "disarm", "bot": "a"})["ok"]
    t[0] = 200.0
    fence.expire()
    assert killed == []
    assert not fence.handle({"op": "arm", "bot": "a"})["ok"]  # no cgroup, no deadline
    assert not fence.handle({"op": "extend", "bot": "zz", "deadline": 1})["ok"]
    assert not fence.handle({"op": "nope", "bot": "a"})["ok"]
    assert not fence.handle({"op": "arm"})["ok"]


def test_fire_all_is_the_fail_closed_exit() -> None:
    fence, killed, _ = make()
    for bot in ("a", "b"):
        fence.handle({"op": "arm", "bot": bot, "cgroup": f"{bot}.0", "deadline": 1000})
    fence.fire_all()
    assert sorted(killed) == ["a.0", "b.0"]


def test_a_log_that_cannot_be_written_never_stops_the_guarding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk: writing the fence's log fails; the kills go on, one guard after another."""
    import sys

    class Full:
        def write(self, _text: str) -> int:
            raise OSError(28, "No space left on device")

        def flush(self) -> None:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(sys, "stderr", Full())
    fence, killed, t = make()
    for bot in ("a", "b"):
        fence.handle({"op": "arm", "bot": bot, "cgroup": f"{bot}.0", "deadline": 101})
    t[0] = 102.0
    assert fence.expire() is None
    assert sorted(killed) == ["a.0", "b.0"]
