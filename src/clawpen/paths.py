"""Where clawpen keeps its state: ``$CLAWPEN_HOME``, else /var/lib/clawpen as root."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_STATE = Path("/var/lib/clawpen")


def state_dir(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    home = env.get("CLAWPEN_HOME")
    if home:
        return Path(home)
    if os.geteuid() == 0:
        return DEFAULT_STATE
    return Path(env.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "clawpen"


def cache_dir(state: Path) -> Path:
    return state / "cache"


def cgroup_scope(state: Path) -> str:
    """The prefix of the daemon's bot cgroups: none for the default state directory, else a short
    id of the state directory, so two daemons on one host (other CLAWPEN_HOMEs) never share, or
    kill, each other's bot cgroups (``clawpen/<bot>.<replica>`` is one path for the whole host)."""
    real = os.path.realpath(state)
    if real == str(DEFAULT_STATE):
        return ""
    import hashlib  # here: every command imports this module, few need this (OpenSSL: 3 ms)

    return "s" + hashlib.sha256(real.encode()).hexdigest()[:8] + "-"
