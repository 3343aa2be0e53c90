"""cgroup ``favordynmods``: moving a process into a cgroup without waiting for an RCU grace period.

Writing a pid to ``cgroup.procs`` takes the kernel's global ``cgroup_threadgroup_rwsem`` for
writing; in its default mode that waits for an RCU grace period, 6-20 ms here, and it is most of
a cold bot start. The ``favordynmods`` mount option (Linux >= 6.0, listed in
``/sys/kernel/cgroup/features``) switches that one global rwsem to the mode where a writer does
not wait, at the cost of a slightly dearer fork and exit for every process on the host (an
atomic operation on the reader side). The option acts for the whole kernel as soon as any one
hierarchy has it, so on cgroup v1 the daemon mounts a hierarchy of its own with no controller
(``name=clawpen-favor``) with that option, and never touches the host's own cgroup mounts.
On a cgroup v2 host the only v2 hierarchy is the host's: clawpen leaves it alone and says so.

Measured on this machine (docs/benchmarks.md): joining a cgroup, 12.1 ms -> 0.12 ms p50.
``CLAWPEN_FAVORDYNMODS=0`` in the daemon's environment turns it off.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

FEATURES = Path("/sys/kernel/cgroup/features")
MOUNT_POINT = Path("/run/clawpen-favordynmods")
NAME = "clawpen-favor"


def favor_dynmods(
    version: int,
    *,
    features: Path = FEATURES,
    mounts: Path = Path("/proc/self/mounts"),
    point: Path = MOUNT_POINT,
    environ: dict[str, str] | None = None,
) -> str:
    """Turn ``favordynmods`` on where clawpen can without touching the host's mounts; returns
    what happened, in words, for the daemon's log (never raises: a cold start is only slower)."""
    env = os.environ if environ is None else environ
    if env.get("CLAWPEN_FAVORDYNMODS", "1") == "0":
        return "favordynmods: off (CLAWPEN_FAVORDYNMODS=0)"
    try:
        offered = features.read_text().split()
        table = mounts.read_text()
    except OSError as err:
        return f"favordynmods: unavailable ({err.strerror})"
    if "favordynmods" not in offered:
        return "favordynmods: this kernel has no such option (Linux >= 6.0)"
    if any("favordynmods" in line.split()[3] for line in table.splitlines() if len(line.split()) > 3):
        return "favordynmods: already on (a cgroup hierarchy is mounted with it)"
    if version != 1:
        return (
            "favordynmods: off (cgroup v2: only the host's own hierarchy could carry it; "
            "`mount -o remount,favordynmods /sys/fs/cgroup` turns it on for the host)"
        )
    try:
        point.mkdir(mode=0o755, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "cgroup", "-o", f"none,name={NAME},favordynmods", "cgroup", str(point)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"favordynmods: could not mount {point} ({err})"
    if done.returncode != 0:
        return f"favordynmods: could not mount {point} ({done.stderr.strip() or done.returncode})"
    return f"favordynmods: on (hierarchy name={NAME} mounted at {point})"
