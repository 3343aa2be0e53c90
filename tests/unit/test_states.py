"""The bot state machine: its table, its messages and the helpers."""

from __future__ import annotations

from collections import deque

import pytest

from clawpen.errors import ClawpenError
from clawpen.supervisor.states import (
    ACTIVE_STATES,
    TRANSITIONS,
    BotState,
    BotStateMachine,
    IllegalTransition,
    Transition,
    allowed_from,
    is_active,
    is_terminal_for_policy,
)

S = BotState


def test_table_covers_every_state_and_names_only_states():
    assert set(TRANSITIONS) == set(BotState)
    for targets in TRANSITIONS.values():
        assert targets <= set(BotState)


def test_table_is_read_only():
    with pytest.raises(TypeError):
        TRANSITIONS[S.CREATED] = frozenset()  # type: ignore[index]


def test_no_self_transitions():
    for state, targets in TRANSITIONS.items():
        assert state not in targets


def test_every_state_is_reachable_from_created():
    seen = {S.CREATED}
    todo = deque([S.CREATED])
    while todo:
        for nxt in TRANSITIONS[todo.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(BotState)


def test_every_resting_state_can_be_started_again():
    for state in BotState:
        if not is_active(state):
            assert S.STARTING in TRANSITIONS[state], state


def test_active_states_never_jump_to_a_resting_state_without_an_exit():
    resting_except_exit = {s for s in BotState if not is_active(s)} - {S.EXITED, S.OOM, S.FAILED}
    for state in (S.STARTING, S.RUNNING, S.UNHEALTHY):
        assert not TRANSITIONS[state] & resting_except_exit, state
    # stopping is where a process is gone for good
    assert TRANSITIONS[S.STOPPING] >= {S.STOPPED, S.SCHEDULED_OFF}


def test_crashloop_and_failed_need_a_person():
    for state in (S.CRASHLOOP, S.FAILED):
        assert TRANSITIONS[state] == {S.STARTING, S.STOPPED}
        assert is_terminal_for_policy(state)
    assert is_terminal_for_policy(S.STOPPED)
    for state in (S.BACKOFF, S.SCHEDULED_OFF, S.EXITED, S.OOM, S.RUNNING, S.CREATED):
        assert not is_terminal_for_policy(state)


def test_is_active():
    assert {s for s in BotState if is_active(s)} == {S.STARTING, S.RUNNING, S.UNHEALTHY, S.STOPPING}
    assert frozenset(s for s in BotState if is_active(s)) == ACTIVE_STATES


def test_values_are_plain_strings():
    assert S.SCHEDULED_OFF == "scheduled_off"
    assert f"{S.RUNNING}" == "running"
    assert BotState("crashloop") is S.CRASHLOOP


@pytest.mark.parametrize(
    "path",
    [
        # a normal life: start, fail health, recover, crash, restart at once, stop
        [
            S.STARTING,
            S.RUNNING,
            S.UNHEALTHY,
            S.RUNNING,
            S.EXITED,
            S.STARTING,
            S.RUNNING,
            S.STOPPING,
            S.STOPPED,
        ],
        # backoff, OOM, crashloop, manual start
        [S.STARTING, S.RUNNING, S.OOM, S.BACKOFF, S.STARTING, S.EXITED, S.CRASHLOOP, S.STARTING],
        # restart an unhealthy bot
        [S.STARTING, S.RUNNING, S.UNHEALTHY, S.STOPPING, S.EXITED, S.STARTING],
        # schedule window closes, opens again
        [S.STARTING, S.RUNNING, S.STOPPING, S.SCHEDULED_OFF, S.STARTING],
        # the sandbox cannot be built
        [S.STARTING, S.FAILED, S.STARTING, S.FAILED, S.STOPPED],
        # created outside its window; stopped during backoff
        [S.SCHEDULED_OFF, S.STARTING, S.EXITED, S.BACKOFF, S.STOPPED, S.SCHEDULED_OFF],
    ],
)
def test_paths(path):
    machine = BotStateMachine("bot")
    for i, to in enumerate(path):
        before = machine.state
        change = machine.transition(to, f"step {i}", now=100.0 + i)
        assert change == Transition("bot", 0, before, to, f"step {i}", 100.0 + i)
        assert machine.state is to
        assert machine.since == 100.0 + i


@pytest.mark.parametrize(
    ("start", "to"),
    [
        (S.CREATED, S.RUNNING),
        (S.RUNNING, S.STOPPED),
        (S.RUNNING, S.SCHEDULED_OFF),
        (S.RUNNING, S.STARTING),
        (S.STOPPED, S.RUNNING),
        (S.CRASHLOOP, S.BACKOFF),
        (S.CRASHLOOP, S.SCHEDULED_OFF),
        (S.FAILED, S.BACKOFF),
        (S.BACKOFF, S.RUNNING),
        (S.RUNNING, S.RUNNING),
        (S.STOPPED, S.STOPPED),
    ],
)
def test_illegal_moves_raise_and_leave_the_state(start, to):
    machine = BotStateMachine("web", replica=2, state=start, since=5.0)
    assert not machine.can(to)
    with pytest.raises(IllegalTransition) as err:
        machine.transition(to, "because", now=10.0)
    assert machine.state is start
    assert machine.since == 5.0
    e = err.value
    assert isinstance(e, ClawpenError)
    assert e.what.startswith(f"bot web[2] cannot go from {start} to {to}; allowed from {start}: ")
    for allowed in allowed_from(start):
        assert allowed.value in e.what
    assert e.hint
    assert (e.bot, e.replica, e.from_state, e.to_state) == ("web", 2, start, to)


def test_message_lists_allowed_states_sorted():
    machine = BotStateMachine("db", state=S.BACKOFF)
    with pytest.raises(
        IllegalTransition,
        match=r"^bot db cannot go from backoff to running; "
        r"allowed from backoff: scheduled_off, standby, starting, stopped",
    ):
        machine.transition(S.RUNNING, "x", 0.0)


def test_every_table_entry_is_accepted_and_every_other_pair_rejected():
    for start in BotState:
        for to in BotState:
            machine = BotStateMachine("b", state=start)
            if to in TRANSITIONS[start]:
                assert machine.transition(to, "", 1.0).to_state is to
            else:
                with pytest.raises(IllegalTransition):
                    machine.transition(to, "", 1.0)


def test_machine_accepts_string_states_and_rejects_bad_replica():
    machine = BotStateMachine("b", state=BotState("stopped"))
    assert machine.transition(BotState("starting"), "manual start", 3.0).from_state is S.STOPPED
    assert machine.active
    assert "starting" in repr(machine)
    with pytest.raises(ValueError):
        BotStateMachine("b", replica=-1)
    with pytest.raises(ValueError):
        BotStateMachine("b", state="sleeping")  # type: ignore[arg-type]
