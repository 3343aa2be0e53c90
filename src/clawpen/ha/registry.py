"""The agents of this daemon's HA bots, as the daemon's instances and views reach them."""

from __future__ import annotations

from clawpen.ha.agent import Agent


class HaRegistry:
    """The agents of this daemon's HA bots, by bot name (empty without a cluster)."""

    def __init__(self) -> None:
        self.agents: dict[str, Agent] = {}
        self.host: str | None = None
        self.problem: str | None = None  # why there is no agent (no [cluster], etcd unreachable...)

    def agent(self, bot: str) -> Agent | None:
        return self.agents.get(bot)

    def why_none(self, bot: str, hosts: list[str]) -> str:
        if self.problem:
            return f"standby: {self.problem}"
        if self.host is not None and self.host not in hosts:
            return f"standby: this host ({self.host}) is not among ha.hosts ({', '.join(hosts)})"
        return "standby: the failover agent is starting"
