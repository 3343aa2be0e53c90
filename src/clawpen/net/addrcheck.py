"""The egress address check of the gateway, remembered while the host's addresses stay the same.

:func:`clawpen.spec.egress.address_problem` is a pure function of the address, the bot's
``allow_private`` networks and the set of the host's own addresses. The gateway asks it for
the same few addresses on every connection of a bot, so :class:`AddressVerdicts` keeps each
answer together with the host-address set it was computed against
(:class:`clawpen.net.hostaddr.HostAddresses` hands out the same frozenset object until it
re-reads the addresses): a different set object means the answer is computed again.
"""

from __future__ import annotations

from collections.abc import Collection

from clawpen.spec import egress

SIZE = 4096  # answers kept (then all are dropped: a bot cycling through addresses costs a recompute)


class AddressVerdicts:
    """``problem(addr, allow_private, own)``: ``egress.address_problem``, remembered."""

    def __init__(self, size: int = SIZE) -> None:
        self.size = size
        self._seen: dict[tuple[str, tuple[str, ...]], tuple[Collection[object], str | None]] = {}

    def problem(
        self, addr: str, allow_private: tuple[str, ...], own: Collection[egress.IPAddress]
    ) -> str | None:
        key = (addr, allow_private)
        hit = self._seen.get(key)
        if hit is not None and hit[0] is own:
            return hit[1]
        found = egress.address_problem(addr, egress.private_networks(allow_private), host=own)
        if len(self._seen) >= self.size:
            self._seen.clear()
        self._seen[key] = (own, found)
        return found
