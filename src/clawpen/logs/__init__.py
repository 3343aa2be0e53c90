"""Bots' stdout/stderr logs: the daemon writes them, ``clawpen logs`` reads them back.

- :mod:`~clawpen.logs.writer`: :class:`LineFramer` and :class:`LogWriter` (one per bot), which
  turn pipe chunks into timestamped records in ``<dir>/<bot>.log``, fast and in bounded memory.
- :mod:`~clawpen.logs.store`: rotation by size and by UTC day, gzip (in the caller's thread or a
  shared :class:`Compressor`), and :func:`retention_sweep` by age and total size.
- :mod:`~clawpen.logs.query`: :func:`read_logs` (since/until/grep/tail over rotated and current
  files), :func:`follow`, :func:`parse_since`.
- :mod:`~clawpen.logs.budget`: the caps held on every write (per bot, every bot together, rotated
  files waiting for gzip) from in-memory byte counts, and the write-rate token bucket.
- :mod:`~clawpen.logs.space`: the low-space watermark of the state dir's filesystem;
  :mod:`~clawpen.logs.component`: the daemon component that watches it (``disk-low`` events).
- :mod:`~clawpen.logs.framer`: :class:`LineFramer` (lines in bounded memory).

Nothing here holds global state; every function that needs the time takes it (a clock callable
or a ``now``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clawpen.logs.budget import LogBudget
    from clawpen.logs.query import LogRecord, follow, parse_since, read_logs
    from clawpen.logs.space import SpaceGuard
    from clawpen.logs.upkeep import Compressor, SweepReport, retention_sweep
    from clawpen.logs.writer import MARKER, STREAMS, LineFramer, LogWriter, Stream, daemon_writer

# Each name is imported on first use (PEP 562): `clawpen logs BOT` reads through logs.query and
# must not import the writer, the budget and the compressor's threads with it.
_WHERE = {
    "LogBudget": "budget",
    "LogRecord": "query",
    "follow": "query",
    "parse_since": "query",
    "read_logs": "query",
    "SpaceGuard": "space",
    "Compressor": "upkeep",
    "SweepReport": "upkeep",
    "retention_sweep": "upkeep",
    "MARKER": "writer",
    "STREAMS": "writer",
    "LineFramer": "writer",
    "LogWriter": "writer",
    "Stream": "writer",
    "daemon_writer": "writer",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


__all__ = [
    "MARKER",
    "STREAMS",
    "Compressor",
    "LineFramer",
    "LogBudget",
    "LogRecord",
    "LogWriter",
    "SpaceGuard",
    "Stream",
    "SweepReport",
    "daemon_writer",
    "follow",
    "parse_since",
    "read_logs",
    "retention_sweep",
]
