"""The gateway as a daemon component: started when a spec gives some bot egress.

* listens in the gateway namespace of ``daemon.services.network`` (the link manager), which
  also answers ``by_source``; upstream sockets are the daemon's own namespace;
* follows ``[gateway] dns_upstream`` after every ``up``;
* denied connections become ``egress-denied`` events (rate-limited per bot by the log);
* a learn-mode bot whose period is over gets an ``egress-learn-ended`` event and a log line;
* operations: ``net_log`` (viewer) for ``clawpen net log``, ``net_stats`` (viewer) for the
  per-bot counters (also :meth:`GatewayComponent.stats` for an in-process collector),
  ``net_suggest`` (viewer) for ``clawpen net suggest``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from clawpen.errors import ClawpenError
from clawpen.host import Notes, Operations, SpecFeed
from clawpen.net.connlog import ConnLog, query, reached
from clawpen.net.connrecord import ConnRecord
from clawpen.net.learn import PolicyView
from clawpen.net.ops import MAX_ROWS, NET_LOG, NET_STATS, NET_SUGGEST, NetLogRequest, NetSuggestRequest
from clawpen.net.types import BotLink
from clawpen.ops import Call, Empty

if TYPE_CHECKING:  # the gateway, its resolver (dnspython) and suggest: imported when used
    from clawpen.net.gateway import Gateway
    from clawpen.net.links import LinkManager
    from clawpen.net.resolve import Resolver
    from clawpen.spec.models import Spec


class _Services(Protocol):
    @property
    def network(self) -> LinkManager | None: ...


class GatewayHost(Notes, Operations, SpecFeed, Protocol):
    """What the gateway uses of the daemon: events, operations, the spec, the link manager."""

    @property
    def services(self) -> _Services: ...


_log = logging.getLogger(__name__)


def log_path(state: Path) -> Path:
    return state / "net" / "connlog.db"


class GatewayComponent:
    name = "gateway"
    before_bots = True  # the daemon starts it before restoring bots (see daemon/app.py)

    def __init__(self, state: Path) -> None:
        self.state = state
        self.daemon: GatewayHost | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._resolver: Resolver | None = None
        self.log = ConnLog(log_path(state), on_denied=self._denied)
        self.gateway: Gateway | None = None
        self._log_started = False
        self.policies = PolicyView(on_ended=self._learn_ended)

    @property
    def resolver(self) -> Resolver:
        """The gateway's DNS resolver, made when first needed (no bot with egress: never)."""
        if self._resolver is None:
            from clawpen.net.resolve import Resolver

            self._resolver = Resolver()
        return self._resolver

    async def start(self, daemon: GatewayHost) -> None:
        self.daemon = daemon
        self.loop = asyncio.get_running_loop()
        daemon.add_ops(
            [
                NET_LOG.bind(self.op_net_log),
                NET_STATS.bind(self.op_net_stats),
                NET_SUGGEST.bind(self.op_net_suggest),
            ]
        )
        daemon.on_spec(self.apply)
        self.apply(daemon.current_spec())

    async def stop(self) -> None:
        if self.gateway is not None:
            await asyncio.to_thread(self.gateway.stop)
            self.gateway = None
        if self._log_started:
            await asyncio.to_thread(self.log.close)
            self._log_started = False

    def stats(self) -> dict[str, dict[str, int]]:
        return self.log.stats()

    # ------------------------------------------------------------ spec
    def apply(self, spec: Spec | None) -> None:
        """Follow the newest spec: upstream resolvers; start the gateway once a bot has egress.

        Runs on the event loop right after ``up`` launched the bots and before they run, so the
        gateway listens before a bot's first connection."""
        if spec is None:
            return
        egress = any(bot.network.egress for bot in spec.bots.values())
        if egress or self._resolver is not None:
            self.resolver.set_upstream(list(spec.gateway.dns_upstream))
        if self.gateway is None and egress:
            self.ensure_gateway()

    def ensure_gateway(self) -> None:
        """Start the gateway if it does not run yet (also called before a build needs egress)."""
        daemon = self.daemon
        if self.gateway is not None:
            return
        network = daemon.services.network if daemon is not None else None
        if daemon is None or network is None:
            return
        try:
            if not self._log_started:
                self.log.start()
                self._log_started = True
            from clawpen.net.gateway import Gateway

            fd = network.gateway_netns_fd
            gateway = Gateway(network, self.log, self.resolver, netns_fd=fd, policies=self.policies)
            gateway.start()
        except (ClawpenError, OSError) as err:
            daemon.note("network", f"the egress gateway did not start: {err}")
            return
        self.gateway = gateway
        daemon.note("network", "egress gateway listening (proxy 3128, transparent 3129, DNS 53)")

    def _denied(self, rec: ConnRecord, folded: int) -> None:
        """From a gateway thread: hand the event to the loop (``note`` is not thread-safe)."""
        more = f" (+{folded} more denied since the last event)" if folded else ""
        text = f"{rec.kind} {rec.host}:{rec.port} denied: {rec.reason}{more}"
        if self.loop is not None and self.daemon is not None:
            note = self.daemon.note
            with contextlib.suppress(RuntimeError):  # loop closed while stopping
                self.loop.call_soon_threadsafe(lambda: note("egress-denied", text, rec.bot, rec.replica))

    def _learn_ended(self, link: BotLink) -> None:
        """From a gateway thread: a learn-mode bot's period is over; it is denied everything now."""
        text = (
            f'the learn period of egress = "learn" is over: {link.bot} may reach nothing now; run '
            f"`clawpen net suggest {link.bot}` and put its egress = [...] line in clawpen.toml"
        )
        _log.warning("%s", text)
        if self.loop is not None and self.daemon is not None:
            note = self.daemon.note
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(
                    lambda: note("egress-learn-ended", text, link.bot, link.replica)
                )

    # ------------------------------------------------------------ operations
    async def op_net_log(self, req: NetLogRequest, _call: Call) -> list[dict[str, Any]]:
        if self._log_started:
            await asyncio.to_thread(self.log.flush, 2.0)
        return await asyncio.to_thread(
            query,
            self.log.path,
            bot=req.bot or None,
            since=req.since,
            denied=req.denied,
            after_id=req.after_id,
            limit=min(req.limit, MAX_ROWS),
        )

    async def op_net_stats(self, _req: Empty, _call: Call) -> dict[str, dict[str, int]]:
        return self.stats()

    async def op_net_suggest(self, req: NetSuggestRequest, _call: Call) -> list[dict[str, Any]]:
        if self._log_started:
            await asyncio.to_thread(self.log.flush, 2.0)
        rows = await asyncio.to_thread(reached, self.log.path, req.bot, req.since)
        from clawpen.net.suggest import suggest

        return [s.record() for s in suggest(rows)]
