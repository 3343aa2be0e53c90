"""Where clawpen keeps its state: ``$CLAWPEN_HOME``, else /var/lib/clawpen as root."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    home = env.get("CLAWPEN_HOME")
    if home:
        return Path(home)
    if os.geteuid() == 0:
        return Path("/var/lib/clawpen")
    return Path(env.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "clawpen"


def cache_dir(state: Path) -> Path:
    return state / "cache"
