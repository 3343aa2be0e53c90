"""The supervisor's pure decision logic: bot states and restart backoff.

Nothing here starts a thread, sleeps, reads a clock or does I/O: every function takes ``now``
from its caller, so the daemon stays in charge of time and the logic is tested with plain
numbers.

- :mod:`clawpen.supervisor.states`   the bot state machine and its transition table
- :mod:`clawpen.supervisor.backoff`  restart decisions: policy, exponential backoff, crashloop

Schedules (active windows, cron restarts) are pure rules of the spec: :mod:`clawpen.spec.schedule`.
"""
