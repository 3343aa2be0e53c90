"""What the failover tests share: the bot that reports every moment it believes it is primary,
the spec around it, and the checker that reads those moments (overlaps = two primaries).

Each bot appends "<host> <token> <token from the file> <time>" to a shared file every 50 ms (the
simulated hosts share one file system and one clock, and a file needs no network: a partitioned
primary's beliefs are recorded too)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BOT = r"""
while :; do
  echo "$CLAWPEN_HA_HOST $CLAWPEN_FENCING_TOKEN $(cat /run/secrets/CLAWPEN_FENCING_TOKEN) \
    $(date +%s.%N)" >> {log}
  sleep 0.05
done
"""


def spec(
    endpoints: list[str],
    shared: Path,
    lease: str = "3s",
    extra: str = "",
    poll: str = "200ms",
    ha_more: str = "",
    serve: int | None = None,
) -> str:
    """``extra``: lines after the bot's (its keys, then other tables); ``ha_more``: more keys of
    its ``ha`` table; ``serve``: the bot also answers HTTP on 127.0.0.1:PORT (its health)."""
    script = BOT.replace("{log}", str(shared / "primary.log"))
    if serve is not None:
        script = f"python3 -m http.server {serve} --bind 127.0.0.1 >/dev/null 2>&1 &\n" + script
    return f"""
        [cluster]
        endpoints = {json.dumps(endpoints)}
        lease = "{lease}"
        poll = "{poll}"

        [bots.pen]
        command = ["sh", "-c", '''{script}''']
        filesystem.rw = ["{shared}"]
        restart.stop_grace = "1s"
        ha = {{ mode = "primary-backup", hosts = ["a", "b"]{", " + ha_more if ha_more else ""} }}
        {extra}
    """


class Terms:
    """The shared log: for each (host, token), the first and last moment it wrote."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def spans(self) -> dict[tuple[str, int], tuple[float, float]]:
        found: dict[tuple[str, int], tuple[float, float]] = {}
        if not self.path.exists():
            return found
        for line in self.path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 4:
                continue  # a line cut by a kill
            host, token, file_token, at = parts[0], int(parts[1]), int(parts[2]), float(parts[3])
            assert token == file_token, line  # the env and the file agree
            first, last = found.get((host, token), (at, at))
            found[(host, token)] = (min(first, at), max(last, at))
        return found

    def overlaps(self) -> list[str]:
        bad = []
        for (k1, (s1, e1)), (k2, (s2, e2)) in itertools.combinations(sorted(self.spans().items()), 2):
            if s1 <= e2 and s2 <= e1:
                bad.append(f"{k1} {s1:.3f}..{e1:.3f} overlaps {k2} {s2:.3f}..{e2:.3f}")
        return bad

    def primary_now(self, within: float = 0.5) -> set[str]:
        now = time.time()
        return {host for (host, _), (_, last) in self.spans().items() if now - last < within}


@contextlib.contextmanager
def shared_dir() -> Iterator[Path]:
    """A folder every bot uid may write (the bots of two hosts have two uids), with the log."""
    shared = Path(tempfile.mkdtemp(prefix="clawpen-ha-", dir="/tmp"))
    shared.chmod(0o777)
    log = shared / "primary.log"
    log.touch()
    os.chmod(log, 0o666)
    try:
        yield shared
    finally:
        shutil.rmtree(shared, ignore_errors=True)
