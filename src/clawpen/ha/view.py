"""``clawpen cluster status``: the hosts etcd knows, and each HA bot's primary, term and copy."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from clawpen.errors import ClawpenError

if TYPE_CHECKING:
    from clawpen.ha.model import Cluster
    from clawpen.ha.registry import HaRegistry


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def cluster_view(cluster: Cluster, registry: HaRegistry) -> dict[str, Any]:
    """One read of the cluster (a failed read is the ``problem``, with what this host knows)."""
    c = cluster
    view: dict[str, Any] = {
        "host": c.host, "endpoints": list(c.etcd.config.endpoints), "problem": None, "hosts": [], "bots": [],
    }  # fmt: skip
    try:
        hosts = await c.run(lambda: c.etcd.prefix(f"{c.prefix}/hosts/"))
        bots = await c.run(lambda: c.etcd.prefix(f"{c.prefix}/bots/"))
    except ClawpenError as err:
        view["problem"] = err.what
        hosts, bots = [], []
    now = time.time()
    for kv in hosts:
        info = _json(kv.value)
        view["hosts"].append({
            "host": kv.key.rsplit("/", 1)[1], "address": info.get("address"), "up": True,
            "since": info.get("since"), "this": kv.key.endswith(f"/{c.host}"),
        })  # fmt: skip
    keys = {kv.key: kv for kv in bots}
    names = sorted({k[len(f"{c.prefix}/bots/") :].split("/", 1)[0] for k in keys} | set(registry.agents))
    for bot in names:
        leader = keys.get(c.key(bot, "leader"))
        synced = _json(keys[c.key(bot, "synced")].value) if c.key(bot, "synced") in keys else {}
        agent = registry.agent(bot)
        shipped_at = synced.get("time")
        view["bots"].append({
            "bot": bot,
            "primary": leader.value.decode() if leader else None,
            "term": leader.create_revision if leader else None,
            "hosts": list(agent.policy.hosts) if agent else [],
            "here": str(agent.role) if agent else None,
            "reason": agent.reason if agent else None,
            "copy_snapshot": synced.get("snapshot"),
            "copy_age_s": None if shipped_at is None else max(0.0, now - float(shipped_at)),
            "copy_bytes": synced.get("bytes"),
        })  # fmt: skip
    return view
