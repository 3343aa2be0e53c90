"""One target's shipper: read after the cursor, send a batch, wait for the acknowledgement, move
the cursor; on any error close, wait (1 s doubling to 60 s), open again and resend from the
cursor. Runs in a thread of its own (the transports block); the daemon's component
(:mod:`clawpen.logs.ship.component`) starts and stops it and reads its :class:`Status`.

**At least once, in order per log.** The cursor (:mod:`clawpen.logs.ship.cursor`) moves only past
acknowledged records and is fsynced before the next batch is read. Records sent but not
acknowledged when the connection failed are sent again: they are counted as ``duplicates``
(they may or may not have reached the receiver). A damaged cursor file is kept as
``<target>.json.damaged``, noted as a ``ship-cursor`` event, and shipping starts again from the
oldest kept record; records up to the damaged file's time count as duplicates.

**Backlog cap.** When a log's records not yet shipped exceed ``backlog`` bytes, the oldest are
passed over until they fit, a ``ship-dropped`` event is noted and the receiver gets the marker
``[clawpen: N lines not shipped: backlog over cap]`` on the ``err`` stream in their place.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clawpen.logs import store
from clawpen.logs.ship import cursor
from clawpen.logs.ship.model import ShipError, ShipMeta, ShipRecord, Transport
from clawpen.logs.ship.reader import DirWatch, Line, LogReader
from clawpen.spec.logship import ShipSettings, ShipTarget

_log = logging.getLogger(__name__)
BACKOFF_MIN = 1.0
BACKOFF_MAX = 60.0
OPEN_TIMEOUT = 10.0
ACK_TIMEOUT = 30.0
BACKLOG_EVERY = 5.0  # how often the unshipped bytes are summed
IDLE_WAIT = 1.0
LAG_EVERY = 2.0
# after a batch that was not full, wait this long for more lines (a bot writing a little every few
# milliseconds would otherwise cost a send, an acknowledgement and two cursor fsyncs per write)
LINGER = 0.1
DROPPED = "ship-dropped"
CURSOR = "ship-cursor"
ERROR = "ship-error"
RESUMED = "ship-ok"
_REPLICA = re.compile(r"^(?P<bot>.+)-r(?P<n>[1-9]\d*)$")


def build_transport(target: ShipTarget) -> Transport:
    """The transport of a target, imported here (the transports load TLS and HTTP libraries):
    :class:`clawpen.logs.ship.syslog.SyslogTransport` or
    :class:`clawpen.logs.ship.journal.JournalRemoteTransport`."""
    ca = Path(target.ca) if target.ca else None
    cert = Path(target.cert) if target.cert else None
    key = Path(target.key) if target.key else None
    if target.type == "syslog":
        syslog = importlib.import_module("clawpen.logs.ship.syslog")
        made = syslog.SyslogTransport(
            target.host, target.port, tls=target.secure, ca=ca, cert=cert, key=key,
            server_name=target.server_name,
        )  # fmt: skip
    else:
        journal = importlib.import_module("clawpen.logs.ship.journal")
        made = journal.JournalRemoteTransport(target.url, ca=ca, cert=cert, key=key)
    transport: Transport = made
    return transport


def marker_text(lines: int) -> bytes:
    return f"[clawpen: {lines} lines not shipped: backlog over cap]".encode()


def bot_of(log: str, bots: frozenset[str] | None) -> tuple[str, int]:
    """``web-r2`` -> (``web``, 2); a log named like a bot of the spec is that bot's replica 0."""
    if bots is not None and log in bots:
        return log, 0
    match = _REPLICA.match(log)
    if match is not None and (bots is None or match["bot"] in bots):
        return match["bot"], int(match["n"])
    return log, 0


@dataclass
class Status:
    """What ``clawpen logs ship status`` shows of one target."""

    target: str
    type: str
    url: str
    connected: bool = False
    last_ack: float | None = None
    lag_seconds: float = 0.0
    lag_bytes: int = 0
    sent: int = 0
    acked: int = 0
    dropped: int = 0
    duplicates: int = 0
    errors: int = 0
    last_error: str = ""
    last_error_at: float | None = None
    logs: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Shipper:
    """The shipping loop of one target (see the module doc); :meth:`run` is the thread's body."""

    def __init__(
        self,
        target: ShipTarget,
        settings: ShipSettings,
        *,
        logs_dir: Path,
        state: Path,
        meta: Callable[[], ShipMeta],
        note: Callable[[str, str], None],
        bots: Callable[[], frozenset[str] | None] = lambda: None,
        transport: Callable[[ShipTarget], Transport] = build_transport,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.target = target
        self.settings = settings
        self.logs_dir = logs_dir
        self.path = cursor.cursor_path(state, target.name)
        self.meta = meta
        self.note = note
        self.bots = bots
        self.make_transport = transport
        self.clock = clock
        self.status = Status(target.name, target.type, target.url)
        self.stop_event = threading.Event()
        self._positions: dict[str, cursor.Position] = {}
        self._readers: dict[str, LogReader] = {}
        self._transport: Transport | None = None
        self._sending: dict[str, cursor.Position] = {}  # a killed daemon's unacknowledged batch
        self._dup_until = 0.0  # records up to this time may have been shipped before (damaged cursor)
        self._backlog_at = 0.0
        self._dropped: dict[str, int] = {}  # lines passed over (backlog cap) until their marker is acked
        self._lock = threading.Lock()
        self._turn = 0
        self._full = False  # the last batch was full: more lines are waiting
        self._failing = False

    # ---------------------------------------------------------------- state
    def _load(self) -> None:
        try:
            self._positions, self._sending, self._dropped = cursor.load_all(self.path)
        except cursor.CursorProblem as err:
            with contextlib.suppress(OSError):
                self._dup_until = self.path.stat().st_mtime
                os.replace(self.path, self.path.with_name(self.path.name + ".damaged"))
            self._positions = {}
            self.note(
                CURSOR, f"log target {self.target.name}: {err}; shipping again from the oldest kept record"
            )

    def _wanted_logs(self) -> list[str]:
        bots = self.bots()
        return [log for log in store.list_bots(self.logs_dir) if self.target.wants(bot_of(log, bots)[0])]

    def _reader(self, log: str) -> LogReader:
        reader = self._readers.get(log)
        if reader is None:
            reader = LogReader(self.logs_dir, log, self._positions.get(log))
            if reader.lost:
                self.note(DROPPED, f"log target {self.target.name}: {reader.lost}")
            self._readers[log] = reader
        return reader

    def _reset_readers(self) -> None:
        """Read again from the cursor (after a failed send)."""
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

    # ---------------------------------------------------------------- the loop
    def run(self) -> None:
        """Ship until :attr:`stop_event` is set. Never raises."""
        watch = DirWatch(self.logs_dir, lambda name: name.endswith((".log", ".gz")))
        try:
            self._load()
            backoff = BACKOFF_MIN
            lag_at = 0.0
            while not self.stop_event.is_set():
                try:
                    if self._transport is None:
                        self._open()
                    if self._pass():
                        backoff = BACKOFF_MIN
                        if time.monotonic() - lag_at >= LAG_EVERY:
                            lag_at = time.monotonic()
                            self._update_lag()
                        if not self._full:
                            self.stop_event.wait(LINGER)
                        continue
                    self._update_lag()
                    watch.wait(IDLE_WAIT)
                except Exception as err:  # ShipError, or a transport's bug: the same way out
                    self._failed(err)
                    self._wait(backoff)
                    backoff = min(BACKOFF_MAX, backoff * 2)
        finally:
            watch.close()
            self._close()
            self._reset_readers()

    def _wait(self, seconds: float) -> None:
        """Wait before trying again, keeping the lag current (it grows while the receiver is away)
        and the backlog under its cap (the oldest lines are passed over, and noted, now)."""
        deadline = time.monotonic() + seconds
        while not self.stop_event.is_set():
            try:
                self._check_backlog(self._wanted_logs())
                self._update_lag()
            except Exception:
                _log.exception("log target %s: backlog", self.target.name)
            left = deadline - time.monotonic()
            if left <= 0 or self.stop_event.wait(min(LAG_EVERY, left)):
                return

    def _open(self) -> None:
        transport = self.make_transport(self.target)
        try:
            transport.open(OPEN_TIMEOUT)
        except BaseException:
            with contextlib.suppress(Exception):
                transport.close()
            raise
        self._transport = transport
        self.status.connected = True

    def _close(self) -> None:
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self._transport.close()
        self._transport = None
        self.status.connected = False

    def _failed(self, err: Exception) -> None:
        first = not self._failing  # one event per outage (the status keeps counting)
        self._failing = True
        text = str(err) if isinstance(err, ShipError) else f"{type(err).__name__}: {err}"
        with self._lock:
            self.status.errors += 1
            self.status.last_error = text[:500]
            self.status.last_error_at = self.clock()
        if not isinstance(err, ShipError):
            _log.exception("log target %s", self.target.name, exc_info=err)
        if first:
            self.note(ERROR, f"log target {self.target.name}: {text[:300]}")
        self._close()
        self._reset_readers()

    def _check_backlog(self, logs: list[str]) -> None:
        now = self.clock()
        if now - self._backlog_at < BACKLOG_EVERY:
            return
        self._backlog_at = now
        for log in logs:
            reader = self._reader(log)
            over = reader.unshipped_bytes() - self.settings.backlog
            if over <= 0:
                continue
            lines, end = reader.skip(over)
            if lines and end is not None:
                self._positions[log] = end  # passed over for good, shipped or not
                self._dropped[log] = self._dropped.get(log, 0) + lines
                cursor.save(self.path, self.target.name, self._positions, self._sending, self._dropped)
                with self._lock:
                    self.status.dropped += lines
                self.note(
                    DROPPED,
                    f"log target {self.target.name}: {lines} lines of {log} not shipped: "
                    f"backlog over {self.settings.backlog} bytes",
                )

    def _pass(self) -> bool:
        """Send one batch and wait for its acknowledgement; False when there was nothing to send."""
        logs = self._wanted_logs()
        self.status.logs = len(logs)
        self._check_backlog(logs)
        bots = self.bots()
        records: list[ShipRecord] = []
        ends: dict[str, cursor.Position] = {}
        now = self.clock()
        markers = dict(self._dropped)
        for log, lines in markers.items():
            bot, replica = bot_of(log, bots)
            records.append(ShipRecord(log, bot, replica, "err", now, marker_text(lines)))
        dups = 0
        self._turn += 1  # round robin: a busy log does not hold the others back
        start = self._turn % len(logs) if logs else 0
        for log in logs[start:] + logs[:start]:
            room = self.settings.batch - len(records)
            if room <= 0:
                break
            got: list[Line] = self._reader(log).read(room)
            if not got:
                continue
            bot, replica = bot_of(log, bots)
            sent = self._sending.get(log)
            for line in got:
                records.append(ShipRecord(log, bot, replica, line.stream, line.at, line.text))
                dups += line.at <= self._dup_until or (sent is not None and cursor.not_after(line.end, sent))
            ends[log] = got[-1].end
        if not records:
            return False
        self._full = len(records) >= self.settings.batch
        transport = self._transport
        assert transport is not None
        with self._lock:
            self.status.sent += len(records)
        sending = dict(self._sending)
        for log, end in ends.items():
            if log not in sending or not cursor.not_after(end, sending[log]):
                sending[log] = end
        cursor.save(self.path, self.target.name, self._positions, sending, self._dropped)
        try:
            transport.send(records, self.meta())
            if not transport.acked(ACK_TIMEOUT):
                raise ShipError(
                    f"the receiver did not acknowledge {len(records)} records in {ACK_TIMEOUT:g} s"
                )
        except BaseException:
            with self._lock:
                self.status.duplicates += len(records)  # they go again: some may have arrived
            raise
        self._positions.update(ends)
        for log, end in ends.items():  # a killed daemon's batch is behind us once one after it is acked
            if log in self._sending and not cursor.not_after(end, self._sending[log]):
                del self._sending[log]
        for log, lines in markers.items():  # dropped meanwhile (a check during the send): kept
            left = self._dropped.get(log, 0) - lines
            if left > 0:
                self._dropped[log] = left
            else:
                self._dropped.pop(log, None)
        cursor.save(self.path, self.target.name, self._positions, self._sending, self._dropped)
        with self._lock:
            self.status.acked += len(records)
            self.status.duplicates += dups
            self.status.last_ack = self.clock()
        if self._failing:
            self._failing = False
            self.note(RESUMED, f"log target {self.target.name}: shipping again")
        return True

    def _update_lag(self) -> None:
        now = self.clock()
        oldest: float | None = None
        size = 0
        for log in self._wanted_logs():
            reader = self._reader(log)
            size += reader.unshipped_bytes()
            at = reader.next_at()
            if at is not None:
                oldest = at if oldest is None else min(oldest, at)
        with self._lock:
            self.status.lag_bytes = size
            self.status.lag_seconds = 0.0 if oldest is None else round(max(0.0, now - oldest), 3)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self.status.as_dict()
