"""The gateway's head stage: one thread accepts and reads request heads without blocking.

No thread is held by a slow client before the verdict. One thread runs an epoll loop
(:class:`selectors.DefaultSelector`) over the gateway's listening sockets and every connection
whose first bytes are not complete yet:

1. accept (a batch per wake-up and listener, cut short by a head that is complete at once:
   it is served first; an ``accept()`` error never ends the loop, and on ``EMFILE``/``ENFILE``
   the listeners rest for :data:`ACCEPT_BACKOFF` seconds);
2. who: ``registry.by_source`` (unknown source: reset); admission by
   :class:`clawpen.net.fair.Fairness` (rate, open connections, unfinished heads per bot);
3. ``plan(head)`` (the gateway) says whether this connection needs its first bytes parsed
   (explicit proxy: the request head; transparent 443/80: ClientHello / HTTP head) and sets the
   parser; if not, the connection goes on at once;
4. read without blocking into the head's buffer and ask the parser (:mod:`clawpen.net.sniff`)
   after each read, with two deadlines: the first byte within :data:`FIRST_BYTE` seconds, the
   complete head within :data:`HEAD_DEADLINE` seconds of the accept;
5. complete: ``ready(head)``, outside the loop (the gateway does the check, the upstream
   connection and the relay there). Closed, unparsable or late: ``failed(head, why, detail)``
   (``why`` is ``"closed"``, ``"bad"`` or ``"timeout"``), and the gateway answers and closes.

Leader/follower: the loop is not tied to one thread. The thread that finds a head complete
calls ``ready(head)`` itself, so the connection goes on without a thread wake-up before its
next byte. ``ready`` must call ``head.handoff()`` before anything that may block (a DNS
query, a connect that is not done at once, waiting for the client, the relay): that makes
another thread the leader (``spawn``: the gateway's reusable workers), whose wake-up then
overlaps the wait instead of the work. A connection that ends without blocking (a denial)
never hands off: its thread leads on. When one turn of the loop completes several heads, the
others go to ``spawn`` each. Only the leader touches the loop's state.

A second read phase: after a CONNECT is answered ``200``, the gateway gives the connection back
with :meth:`HeadStage.resume` (from any thread), and the TLS ClientHello is read here too, with
the same deadlines (counted from the resume) and the same per-bot count of unfinished heads
(the gateway takes the place before it sends the ``200``). ``head.phase`` is then ``"hello"``
and ``head.up`` the upstream socket, which the stage closes with the connection on failure.

The caller owns a connection after ``ready``, ``refused`` or ``failed``; the stage does the
fairness accounting up to that point (after ``ready`` the caller calls ``conn_done``).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from clawpen.net import sniff
from clawpen.net.fair import Fairness, Key
from clawpen.net.lead import NO_LEAD, Lead
from clawpen.net.relay import close_quietly, reset
from clawpen.net.types import BotLink, LinkRegistry

_log = logging.getLogger(__name__)

FIRST_BYTE = 5.0  # seconds from accept to the bot's first byte
HEAD_DEADLINE = 10.0  # seconds from accept to a complete request head / ClientHello
ACCEPT_BATCH = 64  # connections accepted per listener per wake-up (others get their turn)
ACCEPT_BACKOFF = 0.1  # listeners rest this long when the process is out of descriptors
RECV_SIZE = 65536
MAX_READS = 256  # reads per head (real clients need a few): bounds the parsing work per head
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Head:
    """One connection in the head stage (and, after ``ready``, what was read of it)."""

    __slots__ = (
        "data",
        "deadline",
        "dst",
        "handoff",
        "key",
        "kind",
        "limit",
        "link",
        "live",
        "missing",
        "parse",
        "phase",
        "reads",
        "registered",
        "result",
        "sock",
        "start",
        "t0",
        "target",
        "up",
    )

    def __init__(self, sock: socket.socket, kind: str, link: BotLink) -> None:
        self.sock = sock
        self.kind = kind  # the listener's name: "proxy" or "transparent"
        self.link = link
        self.key: Key = (link.bot, link.replica)
        self.t0 = time.time()
        self.start = time.monotonic()
        self.deadline = self.start + FIRST_BYTE
        self.limit = HEAD_DEADLINE  # seconds from start to a complete head (set by the stage)
        self.data = b""
        self.parse: Callable[[bytes], Any] | None = None  # returns sniff.MORE until complete
        self.missing = ""  # what the head should have had (for denial reasons)
        self.dst: tuple[str, int] | None = None  # transparent: the original destination
        self.result: Any = None  # the parser's answer once complete
        self.reads = 0
        self.registered = False  # in the stage's selector
        self.live = True
        self.phase = "head"  # "hello": the ClientHello after a CONNECT's 200 (see resume)
        self.up: socket.socket | None = None  # the upstream socket, during the hello phase
        self.target: Any = None  # what the caller needs after the hello (its own business)
        # ``ready`` calls it before anything that may block (see HeadStage); idempotent
        self.handoff: Lead = NO_LEAD


class HeadStage:
    """The accept + head-reading thread of the gateway (see the module text)."""

    def __init__(
        self,
        registry: LinkRegistry,
        fair: Fairness,
        *,
        plan: Callable[[Head], bool],
        ready: Callable[[Head], None],
        failed: Callable[[Head, str, str], None],
        refused: Callable[[Head, str], None],
        first_byte: float = FIRST_BYTE,
        deadline: float = HEAD_DEADLINE,
        spawn: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        self.registry = registry
        self.fair = fair
        self.plan, self.ready, self.failed, self.refused = plan, ready, failed, refused
        self.spawn = spawn if spawn is not None else _own_thread
        self.first_byte = first_byte
        self.deadline = deadline
        self._listeners: dict[socket.socket, str] = {}
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._resumed: collections.deque[tuple[Head, float, float]] = collections.deque()
        self._stopping = False
        self._started = False
        self._closed = False
        self._ended = threading.Event()  # set by the last leader when the loop has closed
        self._done: list[Head] = []  # heads completed in this turn of the loop
        self._heap: list[tuple[float, int, Head]] = []
        self._seq = itertools.count()
        self._paused_until = 0.0
        self._pending = 0  # heads in the selector (each has a deadline to keep)
        self.accept_errors = 0

    def add_listener(self, sock: socket.socket, kind: str) -> None:
        sock.setblocking(False)
        self._listeners[sock] = kind

    def start(self) -> None:
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        for sock in self._listeners:
            self._sel.register(sock, selectors.EVENT_READ, None)
        self._started = True
        self.spawn(self._lead)

    def resume(
        self, head: Head, parse: Callable[[bytes], Any], *, first_byte: float, deadline: float
    ) -> None:
        """Read ``head``'s connection again, from the start of ``head.data`` (bytes already read
        after the first head), until ``parse`` says complete; then ``ready(head)`` as before.

        Thread-safe (a worker calls it). The caller has taken the unfinished-head place
        (``fair.take_head``) and owns ``head.up``; from here the stage does, as for a new head."""
        head.parse = parse
        self._resumed.append((head, first_byte, deadline))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"r")
        if self._stopping:
            self._drain_resumed(close=True)

    def lead_on(self) -> None:
        """Make another thread the leader (the current one is about to wait elsewhere)."""
        self.spawn(self._lead)

    def parkable(self) -> int | None:
        """For the leader (only): the epoll descriptor to watch while it waits elsewhere, if
        the loop has no timers to keep (no unfinished head, no accept back-off); else None."""
        if self._pending or self._paused_until or self._resumed or self._stopping:
            return None
        fileno = getattr(self._sel, "fileno", None)
        return int(fileno()) if fileno is not None else None

    def stop(self) -> None:
        """End the loop and close every unfinished head (the listeners stay the caller's)."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._started:
            self._ended.wait(timeout=5)
            self._started = False
        else:
            self._close()

    # ------------------------------------------------------------ loop
    def _lead(self) -> None:
        """Run the loop until a head is complete and serve that head here; lead on if the
        connection ended without handing the loop on, else end (this thread's task)."""
        while True:
            head = self._run()
            if head is None:  # stopping: the loop has closed
                return
            token = Lead(self)
            head.handoff = token
            try:
                self.ready(head)
            except Exception:  # the caller's bug: this connection ends, the loop does not
                _log.exception("gateway head stage: serving a connection failed")
            handed_on = token.passed and not token.failed
            token.passed = True  # retired: whoever still holds it hands nothing on
            if handed_on:
                return  # another thread leads now

    def _drop(self, head: Head) -> None:
        self.fair.conn_done(head.key)
        reset(head.sock)
        close_quietly(head.up)

    def _hand_out(self) -> Head:
        """The heads this turn completed: all but the last to ``spawn``; the last one back."""
        done, self._done = self._done, []
        for head in done[:-1]:
            head.handoff = NO_LEAD  # not the loop's thread: nothing to hand on
            try:
                self.spawn(functools.partial(self.ready, head))
            except Exception:  # no thread: this connection ends, the loop does not
                _log.exception("gateway head stage: no thread for a connection")
                self._drop(head)
        return done[-1]

    def _run(self) -> Head | None:
        """One leader's turns of the loop: a completed head, or None once stopping."""
        try:
            while not self._stopping:
                if self._done:
                    return self._hand_out()
                now = time.monotonic()
                self._expire(now)
                if self._paused_until and now >= self._paused_until:
                    self._paused_until = 0.0
                    for sock in self._listeners:
                        self._sel.register(sock, selectors.EVENT_READ, None)
                wait = 1.0
                if self._heap:
                    wait = min(wait, self._heap[0][0] - now)
                if self._paused_until:
                    wait = min(wait, self._paused_until - now)
                for sel_key, _ in self._sel.select(max(0.0, wait)):
                    obj = sel_key.fileobj
                    if sel_key.data is not None:
                        self._read(sel_key.data)
                    elif obj is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                        self._drain_resumed()
                    elif isinstance(obj, socket.socket) and obj in self._listeners and not self._paused_until:
                        self._accept(obj, self._listeners[obj])
        except BaseException:
            self._close()
            raise
        self._close()
        return None

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._close_all()
        finally:
            self._ended.set()

    def _close_all(self) -> None:
        self._drain_resumed(close=True)
        for head in self._done:
            self._drop(head)
        self._done.clear()
        for _, _, head in self._heap:
            if head.live:
                head.live = False
                self.fair.head_done(head.key)
                self.fair.conn_done(head.key)
                reset(head.sock)
                close_quietly(head.up)
        self._heap.clear()
        with contextlib.suppress(Exception):
            self._sel.close()
        close_quietly(self._wake_r, self._wake_w)

    def _accept(self, listener: socket.socket, kind: str) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = listener.accept()
            except BlockingIOError:
                return
            except OSError as err:  # ECONNABORTED, EPROTO, EMFILE...: the loop goes on
                self.accept_errors += 1
                if err.errno in _OUT_OF_FDS:
                    self._pause()
                return
            try:
                self._admit(conn, kind, addr[0])
            except Exception:  # a broken connection must never end the loop
                reset(conn)
            if self._done:  # serve it now; the listener stays readable for the next leader
                return

    def _pause(self) -> None:
        self._paused_until = time.monotonic() + ACCEPT_BACKOFF
        for sock in self._listeners:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)

    def _admit(self, conn: socket.socket, kind: str, source: str) -> None:
        conn.setblocking(False)
        link = self.registry.by_source(source)
        if link is None:
            reset(conn)
            return
        head = Head(conn, kind, link)
        head.deadline = head.start + self.first_byte
        head.limit = self.deadline
        why = self.fair.admit(head.key, head.link.limits)
        if why is not None:
            self.refused(head, why)
            return
        try:
            need = self.plan(head)
        except Exception:  # a bug in the caller's plan: this connection ends, the loop does not
            _log.exception("gateway head stage: planning a connection failed")
            self.fair.conn_done(head.key)
            reset(conn)
            return
        if not need:
            self._done.append(head)
            return
        why = self.fair.take_head(head.key)
        if why is not None:
            self.fair.conn_done(head.key)
            self.refused(head, why)
            return
        # The head is often there already (a client sends it right after its connect returns):
        # read it now, and register the connection only if more is to come; nothing there yet
        # costs one EAGAIN.
        try:
            self._read(head)
            if head.live:
                self._sel.register(conn, selectors.EVENT_READ, head)
                head.registered = True
                self._pending += 1
                if not head.data:  # else _read pushed the complete-head deadline
                    heapq.heappush(self._heap, (head.deadline, next(self._seq), head))
        except Exception:  # a broken connection must never end the loop (nor leak its place)
            if head.live:
                self._end(head, "bad", "broken connection")

    def _drain_resumed(self, *, close: bool = False) -> None:
        while True:
            try:
                head, first_byte, deadline = self._resumed.popleft()
            except IndexError:
                return
            if close:
                self.fair.head_done(head.key)
                self.fair.conn_done(head.key)
                reset(head.sock)
                close_quietly(head.up)
                continue
            try:
                self._resume_one(head, first_byte, deadline)
            except Exception:  # a broken connection must never end the loop
                if head.live:
                    self._end(head, "bad", "broken connection")

    def _resume_one(self, head: Head, first_byte: float, deadline: float) -> None:
        head.live = True
        head.phase = "hello"
        head.start = time.monotonic()
        head.reads = 0
        head.result = None
        if head.sock.gettimeout() != 0.0:
            head.sock.setblocking(False)
        head.limit = deadline
        head.deadline = head.start + (deadline if head.data else first_byte)
        self._sel.register(head.sock, selectors.EVENT_READ, head)
        head.registered = True
        self._pending += 1
        heapq.heappush(self._heap, (head.deadline, next(self._seq), head))
        if head.data:
            self._parse(head)

    def _read(self, head: Head) -> None:
        try:
            chunk = head.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._end(head, "closed", "closed")
            return
        first = not head.data
        if first:
            head.deadline = head.start + head.limit
        head.data += chunk
        head.reads += 1
        if head.reads > MAX_READS:
            self._end(head, "bad", f"head sent in more than {MAX_READS} pieces")
            return
        self._parse(head)
        if first and head.live:  # the new deadline (a head complete at once needs none)
            heapq.heappush(self._heap, (head.deadline, next(self._seq), head))

    def _parse(self, head: Head) -> None:
        assert head.parse is not None
        try:
            got = head.parse(head.data)
        except (sniff.NotTLS, sniff.BadRequest, ValueError) as err:
            self._end(head, "bad", str(err))
            return
        if got is sniff.MORE:
            return
        head.result = got
        self._leave(head)
        self._done.append(head)

    def _leave(self, head: Head, *, timed_out: bool = False) -> None:
        head.live = False
        if head.registered:  # (unregistering an unknown socket would format it: 2 syscalls)
            head.registered = False
            self._pending -= 1
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(head.sock)
        self.fair.head_done(head.key, timed_out=timed_out)

    def _end(self, head: Head, why: str, detail: str) -> None:
        self._leave(head, timed_out=why == "timeout")
        self.fair.conn_done(head.key)
        try:
            self.failed(head, why, detail)
        finally:
            close_quietly(head.sock, head.up)

    def _expire(self, now: float) -> None:
        heap = self._heap
        while heap and (heap[0][0] <= now or not heap[0][2].live):
            deadline, _, head = heapq.heappop(heap)
            if head.live and head.deadline == deadline:
                self._end(head, "timeout", "nothing sent in time" if not head.data else "incomplete")


def _own_thread(task: Callable[[], None]) -> None:
    threading.Thread(target=task, name="clawpen-gw-heads", daemon=True).start()
