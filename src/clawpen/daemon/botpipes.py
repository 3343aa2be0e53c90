"""A run's stdout and stderr: the daemon's read ends of the bot's named pipes, read by the event
loop into the bot's log (:class:`clawpen.logs.writer.LogWriter`).

A chunk is read, written, then the next is read, so a flooding bot meets the pipe's
backpressure and the daemon's memory stays flat. Whatever the log does (a full disk, a write
error), the pipe is drained: a bot blocked on a full pipe is worse.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clawpen.logs.writer import LogWriter

READ_CHUNK = 1 << 16
EOF_WAIT = 2.0  # seconds a finished run's pipes may take to reach EOF (a writer left behind)


class BotPipes:
    """One run's pipes, read into ``writer`` from :meth:`start` until :meth:`close`."""

    def __init__(self, pipes: dict[str, int], writer: LogWriter) -> None:
        self.pipes = pipes
        self.writer = writer
        self._eof: dict[str, asyncio.Future[None]] = {}

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for stream, fd in self.pipes.items():
            os.set_blocking(fd, False)
            self._eof[stream] = loop.create_future()
            loop.add_reader(fd, self._drain, stream, fd)

    def _drain(self, stream: str, fd: int) -> None:
        try:
            chunk = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        try:
            if chunk:
                self.writer.write(stream, chunk)  # type: ignore[arg-type]
            else:
                self.writer.finish(stream)  # type: ignore[arg-type]
        except Exception as err:
            self.writer.report("log-error", f"log write failed: {err}")
        if chunk:
            return
        asyncio.get_running_loop().remove_reader(fd)
        fut = self._eof[stream]
        if not fut.done():
            fut.set_result(None)

    async def close(self) -> None:
        """Read to EOF (at most :data:`EOF_WAIT`), then close the pipes and the log writer."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._eof.values()), EOF_WAIT)
        for fd in self.pipes.values():
            # always (a no-op after EOF): the timeout above cancels the EOF futures, and a fd
            # closed while still registered leaves a stale selector key whose number the next
            # accepted connection reuses, and that connection is then never read
            loop.remove_reader(fd)
            os.close(fd)
        self.writer.close()
