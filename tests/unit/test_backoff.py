"""Restart decisions: policies, backoff growth and jitter, streak reset, crashloop."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from clawpen.errors import ConfigError
from clawpen.supervisor.backoff import Decision, RestartPolicy, RestartTracker, TrackerState
from clawpen.supervisor.states import TRANSITIONS, BotState


def policy(**kw):
    base = {
        "policy": "always",
        "backoff_initial": 1.0,
        "backoff_max": 60.0,
        "max_restarts": 100,
        "window": 300.0,
    }
    return RestartPolicy(**(base | kw))


def crash_loop(tracker, count, *, start=1000.0, gap=0.5):
    """Start and crash ``count`` times, ``gap`` seconds of uptime each; return the decisions."""
    now = start
    out = []
    for _ in range(count):
        tracker.record_started(now)
        now += gap
        d = tracker.record_exit(1, "exited", now)
        out.append(d)
        now += d.delay
    return out


def test_first_restart_is_immediate_then_exponential_and_capped():
    tracker = RestartTracker(policy(backoff_initial=1, backoff_max=60), jitter="none")
    delays = [d.delay for d in crash_loop(tracker, 10)]
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_first_restart_is_immediate_whatever_the_jitter():
    for jitter in ("equal", "full", "none"):
        d = RestartTracker(policy(), random.Random(1), jitter=jitter).record_exit(1, "exited", 5.0)
        assert (d.restart, d.delay, d.next_state, d.attempt) == (True, 0.0, BotState.STARTING, 1)


def test_nominal_delay_never_overflows():
    tracker = RestartTracker(policy(backoff_initial=0.5, backoff_max=30), jitter="none")
    assert tracker.nominal_delay(0) == 0.0
    assert tracker.nominal_delay(1) == 0.5
    assert tracker.nominal_delay(3) == 2.0
    assert tracker.nominal_delay(10_000) == 30.0


def test_equal_jitter_is_seeded_and_between_half_and_full():
    p = policy(backoff_initial=2, backoff_max=40)
    a = [d.delay for d in crash_loop(RestartTracker(p, random.Random(42)), 12)]
    b = [d.delay for d in crash_loop(RestartTracker(p, random.Random(42)), 12)]
    assert a == b
    nominal = [0, 2, 4, 8, 16, 32, 40, 40, 40, 40, 40, 40]
    for delay, d in zip(a, nominal, strict=True):
        assert d / 2 <= delay <= d
    assert a[1:] != nominal[1:]  # jitter did something


def test_jitter_bounds_over_many_draws():
    rng = random.Random(7)
    equal = RestartTracker(policy(backoff_initial=10, backoff_max=10), rng)
    full = RestartTracker(policy(backoff_initial=10, backoff_max=10), rng, jitter="full")
    eq = [equal.delay_for(5) for _ in range(2000)]
    fu = [full.delay_for(5) for _ in range(2000)]
    assert 5.0 <= min(eq) < 5.1 and 9.9 < max(eq) <= 10.0
    assert 0.0 <= min(fu) < 0.1 and 9.9 < max(fu) <= 10.0


def test_backoff_decision_goes_through_backoff_state():
    tracker = RestartTracker(policy(), jitter="none")
    first, second = crash_loop(tracker, 2)
    assert first.next_state is BotState.STARTING
    assert second == Decision(True, 1.0, False, second.why, BotState.BACKOFF, 2)
    assert "restarting in 1.0s" in second.why and "exited with code 1" in second.why
    for d in (first, second):
        assert d.next_state in TRANSITIONS[BotState.EXITED]


def test_streak_resets_after_stable_uptime():
    p = policy(backoff_max=60, window=300)
    assert p.stable_after == 300
    tracker = RestartTracker(p, jitter="none")
    crash_loop(tracker, 4)
    assert tracker.attempt == 4
    tracker.record_started(10_000.0)
    d = tracker.record_exit(1, "exited", 10_000.0 + 299)
    assert d.delay == 8.0  # not stable long enough: the streak goes on
    tracker.record_started(20_000.0)
    d = tracker.record_exit(1, "exited", 20_000.0 + 300)
    assert (d.delay, d.attempt, d.next_state) == (0.0, 1, BotState.STARTING)


def test_stable_after_is_at_least_twice_backoff_max():
    assert policy(backoff_max=600, window=60).stable_after == 1200


def test_record_healthy_resets_the_streak_and_unhealthy_restarts_the_clock():
    tracker = RestartTracker(policy(window=100, backoff_max=10), jitter="none")
    crash_loop(tracker, 3)
    tracker.record_started(5000.0)
    tracker.record_unhealthy(5010.0)
    tracker.record_healthy(5050.0)  # stable from 5050 on
    tracker.record_healthy(5149.0)
    assert tracker.attempt == 3
    tracker.record_healthy(5150.0)
    assert tracker.attempt == 0
    assert tracker.record_exit(1, "exited", 5151.0).delay == 0.0


def test_unhealthy_run_does_not_reset_even_if_long():
    tracker = RestartTracker(policy(window=100, backoff_max=10), jitter="none")
    crash_loop(tracker, 3)
    tracker.record_started(5000.0)
    tracker.record_unhealthy(5001.0)
    d = tracker.record_exit(143, "signaled", 9000.0)  # killed because unhealthy
    assert d.attempt == 4 and d.delay == 4.0


def test_record_healthy_without_a_start_is_ignored():
    tracker = RestartTracker(policy())
    tracker.record_healthy(1.0)
    assert tracker.attempt == 0


def test_crashloop_after_max_restarts_within_window():
    tracker = RestartTracker(
        policy(max_restarts=3, window=60, backoff_initial=1, backoff_max=2), jitter="none"
    )
    decisions = crash_loop(tracker, 4, gap=1.0)
    assert [d.restart for d in decisions] == [True, True, True, False]
    last = decisions[-1]
    assert last.crashloop and last.next_state is BotState.CRASHLOOP and last.delay == 0.0
    assert "3 restarts within 60s" in last.why and "max_restarts = 3" in last.why
    assert BotState.CRASHLOOP in TRANSITIONS[BotState.EXITED]


def test_no_crashloop_when_restarts_are_spread_out():
    tracker = RestartTracker(policy(max_restarts=3, window=60, backoff_max=10), jitter="none")
    now = 0.0
    for _ in range(20):  # a crash every 21 s or more: never 3 restarts already in a minute
        tracker.record_started(now)
        now += 21.0
        assert tracker.restarts_in_window(now) <= 2
        d = tracker.record_exit(1, "exited", now)
        assert d.restart and not d.crashloop
        now += d.delay


def test_restarts_leave_the_window():
    tracker = RestartTracker(policy(max_restarts=2, window=60, backoff_max=1), jitter="none")
    for now in (0.0, 10.0):
        tracker.record_started(now - 1)
        assert tracker.record_exit(1, "exited", now).restart
    assert tracker.restarts_in_window(59.0) == 2
    assert tracker.record_exit(1, "exited", 59.0).crashloop
    assert tracker.restarts_in_window(60.5) == 1  # the one at 0 has left the window
    assert tracker.record_exit(1, "exited", 60.5).restart


def test_max_restarts_zero_never_restarts():
    d = RestartTracker(policy(max_restarts=0)).record_exit(1, "exited", 1.0)
    assert d.crashloop and not d.restart


def test_manual_start_clears_crashloop():
    tracker = RestartTracker(policy(max_restarts=1, window=60), jitter="none")
    crash_loop(tracker, 1)
    assert tracker.record_exit(1, "exited", 1002.0).crashloop
    tracker.record_started(1003.0, manual=True)
    d = tracker.record_exit(1, "exited", 1004.0)
    assert (d.restart, d.delay) == (True, 0.0)


@pytest.mark.parametrize(
    ("kind", "code", "reason", "restart"),
    [
        ("no", 1, "exited", False),
        ("no", 0, "exited", False),
        ("no", 137, "oom", False),
        ("on-failure", 0, "exited", False),
        ("on-failure", 1, "exited", True),
        ("on-failure", 143, "signaled", True),
        ("on-failure", -9, "signaled", True),
        ("on-failure", 122, "oom", True),
        ("on-failure", 124, "timeout", True),
        ("on-failure", 121, "disk", True),
        ("always", 0, "exited", True),
        ("always", 1, "exited", True),
        ("unless-stopped", 0, "exited", True),
        ("unless-stopped", 122, "oom", True),
    ],
)
def test_policies(kind, code, reason, restart):
    d = RestartTracker(policy(policy=kind)).record_exit(code, reason, 1.0)
    assert d.restart is restart
    assert not d.crashloop
    if not restart:
        assert d.next_state is BotState.STOPPED
        assert repr(kind) in d.why


@pytest.mark.parametrize("kind", ["no", "on-failure", "always", "unless-stopped"])
def test_manual_stop_never_restarts(kind):
    tracker = RestartTracker(policy(policy=kind))
    d = tracker.record_exit(143, "signaled", 1.0, manual_stop=True)
    assert (d.restart, d.next_state) == (False, BotState.STOPPED)
    assert tracker.manually_stopped
    tracker.record_started(2.0)
    assert not tracker.manually_stopped


@pytest.mark.parametrize("kind", ["no", "on-failure", "always", "unless-stopped"])
def test_scheduled_stop_and_setup_failure_never_restart(kind):
    tracker = RestartTracker(policy(policy=kind))
    crash_loop(tracker, 2)
    d = tracker.record_exit(143, "signaled", 5000.0, scheduled_stop=True)
    assert (d.restart, d.next_state) == (False, BotState.SCHEDULED_OFF)
    assert not tracker.manually_stopped
    assert tracker.attempt == 0  # the next window starts a fresh streak
    d = tracker.record_exit(125, "setup-failed", 6000.0)
    assert (d.restart, d.next_state) == (False, BotState.FAILED)
    assert BotState.FAILED in TRANSITIONS[BotState.STARTING]


def test_unless_stopped_remembers_a_manual_stop_across_daemon_restarts():
    tracker = RestartTracker(policy(policy="unless-stopped"))
    tracker.record_started(1.0)
    tracker.record_exit(143, "signaled", 2.0, manual_stop=True)
    saved = tracker.snapshot()
    assert saved.manually_stopped
    reborn = RestartTracker(policy(policy="unless-stopped"), state=saved)
    assert not reborn.start_on_boot(was_running=False)
    always = RestartTracker(policy(policy="always"), state=saved)
    assert always.start_on_boot(was_running=False)
    fresh = RestartTracker(policy(policy="unless-stopped"), state=TrackerState())
    assert fresh.start_on_boot(was_running=False)


def test_start_on_boot_for_on_failure_and_no():
    assert RestartTracker(policy(policy="on-failure")).start_on_boot(was_running=True)
    assert not RestartTracker(policy(policy="on-failure")).start_on_boot(was_running=False)
    assert not RestartTracker(policy(policy="no")).start_on_boot(was_running=True)


def test_manual_stop_during_backoff():
    tracker = RestartTracker(policy(policy="always"), jitter="none")
    crash_loop(tracker, 3)
    tracker.record_manual_stop(2000.0)
    assert tracker.manually_stopped and tracker.attempt == 0 and tracker.restarts_in_window(2000.0) == 0


def test_snapshot_round_trip_keeps_the_streak():
    tracker = RestartTracker(policy(max_restarts=3, window=600), jitter="none")
    crash_loop(tracker, 3)
    copy = RestartTracker(policy(max_restarts=3, window=600), jitter="none", state=tracker.snapshot())
    assert copy.snapshot() == tracker.snapshot()
    assert copy.record_exit(1, "exited", 1010.0).crashloop


def test_why_sentences():
    t = RestartTracker(policy(policy="on-failure"), jitter="none")
    assert "killed by the OOM killer" in t.record_exit(122, "oom", 1.0).why
    assert "killed by a signal" in t.record_exit(-9, "signaled", 2.0).why
    assert "hit its timeout" in t.record_exit(124, "timeout", 3.0).why
    assert "exited with code 0" in t.record_exit(0, "exited", 4.0).why
    assert "ended (weird" in t.record_exit(3, "weird", 5.0).why


def test_from_spec_reads_the_pydantic_model():
    from clawpen.spec.models import Restart

    p = RestartPolicy.from_spec(
        Restart(policy="always", backoff_initial="2s", backoff_max="1m", window="10m")
    )
    assert p == RestartPolicy("always", 2.0, 60.0, 5, 600.0, 10.0)
    assert RestartPolicy.from_spec(Restart()) == RestartPolicy()


@pytest.mark.parametrize(
    "fields",
    [
        {"policy": "sometimes"},
        {"backoff_initial": 0},
        {"backoff_initial": 10, "backoff_max": 5},
        {"max_restarts": -1},
        {"window": 0},
        {"stop_grace": -1},
    ],
)
def test_bad_policies(fields):
    with pytest.raises(ConfigError) as err:
        RestartPolicy(**fields)
    assert err.value.hint


def test_from_spec_rejects_unknown_policy():
    spec = SimpleNamespace(
        policy="maybe", backoff_initial=1, backoff_max=2, max_restarts=1, window=1, stop_grace=1
    )
    with pytest.raises(ConfigError, match="unknown restart policy 'maybe'") as err:
        RestartPolicy.from_spec(spec)
    assert "on-failure" in (err.value.hint or "")


def test_a_new_streak_forgets_the_earlier_crashes_without_a_person() -> None:
    """An HA bot's new term on a host: its crashes in an earlier term do not delay this one."""
    tracker = RestartTracker(policy(backoff_initial=1, backoff_max=60), jitter="none")
    now = 0.0
    delays = []
    for _ in range(5):
        tracker.record_started(now)
        delays.append(tracker.record_exit(1, "exited", now + 1).delay)
        now += 2
    assert delays[-1] > 0  # the streak grew: backing off
    tracker.new_streak()
    tracker.record_started(now)
    assert tracker.record_exit(1, "exited", now + 1).delay == 0  # immediate again, like a first crash
