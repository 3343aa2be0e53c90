"""``[gateway]``: settings of the clawpen egress gateway shared by every bot."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GatewayConfig(BaseModel):
    """Where bots' links get their addresses and where the gateway resolves names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    subnet: str = Field("10.213.0.0/16", description="private IPv4 range for bot links (a /30 per bot)")
    dns_upstream: list[str] = Field(
        default_factory=list, description="upstream resolvers (default: the host's /etc/resolv.conf)"
    )
