"""One rule for every socket clawpen listens on for the outside world.

A listener on a loopback address (``127.0.0.0/8``, ``::1``, ``localhost``) is reachable only
from this host. Anything else -- a wildcard (``0.0.0.0``, ``::``), a LAN or public address -- is
reachable from the network and needs an explicit opt-in of the listener's own kind:

=====================  ==========================================================
listener               opt-in
=====================  ==========================================================
``publish`` (a bot)    ``network.expose = true`` (and maybe ``from = [CIDRs]``)
``prometheus_listen``  ``monitoring.prometheus_expose = true``
the HTTP API           ``--tls-cert``/``--tls-key``, or ``--insecure-bind``
=====================  ==========================================================

The gateway's proxy and DNS listen only on the bots' link addresses, which
``[gateway] subnet`` keeps in a private range (:func:`clawpen.spec.gateway.check_subnet`).
Pure functions, no third-party imports: the CLI and the daemon's flag checks use them too.
"""

from __future__ import annotations

import ipaddress

from clawpen.spec.rules import RuleViolation

LOOPBACK_NAMES = ("localhost",)


class PublicListener(RuleViolation):
    """A listener on a non-loopback address without its opt-in."""


def split_listen(value: str, what: str, *, any_port: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` -> (host, port). The host is an IP address or
    ``localhost``; the port is 1-65535 (0, any free port, only with ``any_port``)."""
    text = value.strip()
    hint = 'write HOST:PORT, e.g. "127.0.0.1:9464" or "[::1]:9464"'
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
        if ":" in host:  # a bare IPv6 address needs brackets to carry a port
            sep = ""
    if not sep or not host or not (port.isascii() and port.isdigit()) or len(port) > 5:
        raise RuleViolation(f"{what} {value!r} is not HOST:PORT", hint)
    number = int(port)
    if not (0 if any_port else 1) <= number <= 65535:
        lowest = 0 if any_port else 1
        raise RuleViolation(
            f"{what} {value!r}: port {number} is out of range", f"use a port from {lowest} to 65535; {hint}"
        )
    if host.lower() not in LOOPBACK_NAMES:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise RuleViolation(
                f"{what} {value!r}: {host!r} is not an IP address",
                f"give an IP address (or localhost); {hint}",
            ) from None
    return host, number


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (IPv4-mapped ones included); False for
    wildcards, other addresses and anything that is not an address."""
    if host.strip("[]").lower() in LOOPBACK_NAMES:
        return True
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def check_listener(what: str, host: str, *, opted_in: bool, opt_in: str) -> None:
    """Refuse a listener on a non-loopback ``host`` unless ``opted_in``.

    ``what`` names the setting (``"prometheus_listen '0.0.0.0:9464'"``), ``opt_in`` says how to opt
    in (``"set monitoring.prometheus_expose = true"``). Raises :class:`PublicListener`.
    """
    if opted_in or is_loopback(host):
        return
    wildcard = host.strip("[]") in ("0.0.0.0", "::")  # noqa: S104 - compared, not bound
    kind = "not a loopback address (a wildcard: every interface)" if wildcard else "not a loopback address"
    raise PublicListener(
        f"{what} listens on {host}, which is {kind}: it would be reachable from the network",
        f"use 127.0.0.1 (or [::1]) to stay on this host, or {opt_in}",
    )
