"""``/proc/PID/stat``, read once and split safely (a process name may hold spaces and ')')."""

from __future__ import annotations


def stat_fields(pid: int) -> list[bytes] | None:
    """The fields after the process name: ``[0]`` is the state letter, ``[19]`` the start time
    in clock ticks since boot (field 22 of proc(5)); None when ``pid`` is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields if len(fields) > 19 else None
