"""Finding a running sandbox again after the daemon itself was restarted.

A daemon-managed sandbox outlives the daemon: bubblewrap runs without ``--die-with-parent``,
the bot writes to named pipes (see :mod:`clawpen.daemon.runtime`), and bubblewrap writes its
JSON status, with the bot's exit code, to a file. A new daemon re-adopts the sandbox from the
pid (checked against its start time, so a reused pid is not mistaken for it), the cgroup name
and that file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from clawpen.sandbox.cgroups import Cgroup
from clawpen.sandbox.handle import CgroupHandle
from clawpen.sandbox.tier import RunResult, result_from_status

EXIT_UNKNOWN = 255


def exit_code_from_status(path: Path) -> int | None:
    """The ``exit-code`` bubblewrap wrote to its ``--json-status-fd`` file, if it did."""
    try:
        text = path.read_text()
    except OSError:
        return None
    decoder = json.JSONDecoder()
    code = None
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return code
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return code
        if isinstance(obj, dict) and "exit-code" in obj:
            code = int(obj["exit-code"])


class AdoptedSandbox(CgroupHandle):
    """A sandbox started by an earlier daemon (a :class:`~clawpen.sandbox.tier.RunningSandbox`)."""

    def __init__(
        self, pid: int, sandbox_pid: int | None, cgroup: Cgroup, status_path: Path, started_at: float
    ) -> None:
        self._pid = pid
        self._sandbox_pid = sandbox_pid
        self.cgroup = cgroup
        self.status_path = status_path
        self.started_at = started_at

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def sandbox_pid(self) -> int | None:
        return self._sandbox_pid

    @property
    def cg(self) -> Cgroup:
        return self.cgroup

    @property
    def cgroup_name(self) -> str:
        return self.cgroup.name

    def collect(self) -> RunResult:
        """How it ended, from bubblewrap's status file (it is not our child: no wait status)."""
        code = exit_code_from_status(self.status_path)
        stats = self.cgroup.stats()
        cpu = None if stats.cpu_usage_ns is None else stats.cpu_usage_ns / 1e9
        result = result_from_status(
            EXIT_UNKNOWN if code is None else code,
            oom=self.cgroup.oom_killed(),
            duration_s=time.time() - self.started_at,
            cpu_s=cpu,
            memory_peak=stats.memory_peak_bytes,
        )
        if code is None:
            return result._replace(message="exit status lost: bubblewrap wrote none")
        return result

    def teardown(self) -> None:
        self.cgroup.remove()
