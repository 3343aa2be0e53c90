"""One line of `clawpen doctor` from a part that checks itself (the VM tier, the failover cluster)."""

from __future__ import annotations

from typing import NamedTuple


class Finding(NamedTuple):
    name: str
    ok: bool
    detail: str
    hint: str | None = None
    warn: bool = False
