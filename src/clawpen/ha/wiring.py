"""From the spec to the cluster's objects: the etcd client, this host's name, the agents."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from clawpen.ha.agent import Agent
from clawpen.ha.etcd import Etcd, EtcdConfig
from clawpen.ha.fenceclient import FenceClient
from clawpen.ha.model import Cluster, HaPolicy, Shipper
from clawpen.host import Notes
from clawpen.paths import cgroup_scope
from clawpen.spec.cluster import ClusterSettings, host_name
from clawpen.spec.models import Bot, Spec


def etcd_for(settings: ClusterSettings, secrets: Any) -> Etcd:
    """The client of ``[cluster]`` (``secrets(names) -> {name: bytes}``: the vault)."""
    password = None
    if settings.user and settings.password_secret:
        name = settings.password_secret
        password = lambda: secrets([name])[name]  # noqa: E731 - read when first needed
    return Etcd(
        EtcdConfig(
            endpoints=tuple(settings.endpoints),
            ca_file=settings.ca_file,
            cert_file=settings.cert_file,
            key_file=settings.key_file,
            user=settings.user,
            password=password,
            timeout=min(2.0, settings.lease / 4),
        )
    )


def cluster_for(settings: ClusterSettings, state: Path, daemon: Notes, executor: Executor) -> Cluster:
    services: Any = getattr(daemon, "services")  # noqa: B009 - the daemon's, typed loosely here
    run = state / "run"
    return Cluster(
        etcd=etcd_for(settings, services.secrets),
        fence=FenceClient(run / "ha-fence.sock", state / "ha-fence.log"),
        host=host_name(settings, os.environ),
        prefix=settings.prefix,
        ttl=max(2, math.ceil(settings.lease)),
        poll=settings.poll,
        executor=executor,
        note=daemon.note,
    )


def policy_for(name: str, bot: Bot) -> HaPolicy:
    ha = bot.ha
    assert ha is not None
    check = ha.check
    return HaPolicy(
        bot=name,
        hosts=tuple(ha.hosts),
        check_url=check.http if check is not None else None,
        check_interval=check.interval if check is not None else 30.0,
        check_timeout=check.timeout if check is not None else 5.0,
        check_failures=check.failures if check is not None else 3,
        sync_interval=ha.sync.interval if ha.sync is not None else None,
    )


def agents_for(
    spec: Spec, cluster: Cluster, services: Any, workspace: Callable[[str], Path | None]
) -> dict[str, Agent]:
    """An agent for every HA bot that names this host (``workspace(bot)``: its real path here)."""
    found: dict[str, Agent] = {}
    for name, bot in spec.bots.items():
        if bot.ha is None or cluster.host not in bot.ha.hosts:
            continue
        cgroup = f"{cgroup_scope(services.state_dir)}{name}.0"
        shipper: Shipper | None = None
        if bot.ha.sync is not None and bot.workspace:
            from clawpen.ha.shipping import shipper_for

            shipper = shipper_for(name, bot, cluster.host, services, functools.partial(workspace, name))
        found[name] = Agent(cluster, policy_for(name, bot), cgroup, shipper)
    return found
