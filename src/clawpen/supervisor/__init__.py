"""The supervisor's pure decision logic: bot states, restart backoff and schedules.

Nothing here starts a thread, sleeps, reads a clock or does I/O (except resolving the host's
local time zone when a schedule names none): every function takes ``now`` from its caller, so
the daemon stays in charge of time and the logic is tested with plain numbers and datetimes.

- :mod:`clawpen.supervisor.states`   the bot state machine and its transition table
- :mod:`clawpen.supervisor.backoff`  restart decisions: policy, exponential backoff, crashloop
- :mod:`clawpen.supervisor.schedule` active windows ("Mon-Fri 08:00-20:00") and cron restarts
"""
