"""``[host]``: policy for the host itself (its firewall)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class HostConfig(BaseModel):
    """Host-level policy; ``[host.firewall]`` is applied by ``clawpen firewall apply``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
