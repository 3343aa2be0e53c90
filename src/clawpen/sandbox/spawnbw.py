"""Starting bubblewrap: as the bot's uid and gid, in the bot's network namespace when it has a link."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from clawpen.errors import ClawpenError, SandboxError
from clawpen.plan.model import Plan
from clawpen.sandbox.tier import Stdio

SETPRIV = "/usr/bin/setpriv"  # util-linux (essential on Debian and Ubuntu)


def popen_bwrap(
    plan: Plan, argv: Sequence[str], passed: Sequence[int | None], stdio: Stdio
) -> subprocess.Popen[bytes]:
    """Start ``argv`` (bubblewrap's); for a bot with a gateway link, inside the link's network
    namespace: this thread joins it just for the fork (a child inherits its creating thread's
    namespace) and comes back. Two ``setns`` calls cost microseconds where
    ``nsenter --net=...`` would cost an extra exec (~1 ms); a helper thread would not do,
    as ``--die-with-parent`` fires when the forking *thread* ends."""
    link = plan.link
    if link is None:
        return _popen(plan, argv, passed, stdio)
    from clawpen.netns import entered, open_netns

    try:
        fd = open_netns(link.netns)
    except ClawpenError as err:
        raise SandboxError(err.what, where="network", hint="restart the bot (clawpen restart BOT)") from None
    try:
        with entered(fd):
            return _popen(plan, argv, passed, stdio)
    finally:
        os.close(fd)


def _popen(
    plan: Plan, argv: Sequence[str], passed: Sequence[int | None], stdio: Stdio
) -> subprocess.Popen[bytes]:
    """bubblewrap as the bot's uid and gid with no supplementary group. util-linux ``setpriv``
    switches them just before it execs bubblewrap (the exec makes the saved ids the bot's too,
    and leaving uid 0 clears every capability), so Python can ``vfork``: ``Popen(user=...)``
    would copy the whole daemon (its memory map, and thousands of descriptors with 500 bots:
    14-44 ms a start, against 6-13 ms, measured by bench/scale_bench.py's author)."""
    uid, gid = plan.identity.uid, plan.identity.gid
    return subprocess.Popen(
        [SETPRIV, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *argv],
        pass_fds=tuple(fd for fd in passed if fd is not None),
        env={"PATH": "/usr/bin:/bin"},
        stdin=stdio.stdin,
        stdout=stdio.stdout,
        stderr=stdio.stderr,
        umask=0o022,
        process_group=0,
    )
