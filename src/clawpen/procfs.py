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


def pid_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (``/proc/PID/stat`` field 22)."""
    fields = stat_fields(pid)
    return None if fields is None else int(fields[19])


def same_process(pid: int | None, start: int | None) -> bool:
    """Whether ``pid`` is still the process that started at ``start`` (and not a zombie)."""
    if not pid or start is None:
        return False
    fields = stat_fields(pid)
    return fields is not None and fields[0] != b"Z" and int(fields[19]) == start
