"""Egress policy, pure: allowlist rules, host names, IP literals and address classes.

Rule syntax (``network.egress`` in ``clawpen.toml``)::

    "api.openai.com:443"      one host, one port
    "api.openai.com"          port defaults to 443
    "*.telegram.org:443"      any subdomain at any depth (not telegram.org itself)
    "203.0.113.7:8443"        an IPv4 literal (canonical dotted form only)
    "[2001:db8::7]:443"       an IPv6 literal, in brackets
    "open"                    (the whole value, not a list entry): any public address
    "learn"                   (the whole value): as "open" for ``learn_for``, each connection
                              logged with its host name; then nothing (``clawpen net suggest``)

Whatever the rules say, the address a connection finally goes to must be public: loopback,
private, CGNAT, link-local, metadata, multicast, unspecified and reserved addresses are refused
unless they fall inside the bot's ``allow_private`` networks (:func:`address_problem`), and so
are IPv4-mapped, -compatible, NAT64, 6to4, Teredo and ISATAP addresses that carry such an IPv4
address.
Every address of the host itself (:mod:`clawpen.net.hostaddr`) is refused too, in every mode,
unless ``allow_private`` lists it on its own.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import NamedTuple

from clawpen.spec.learnmode import (
    LEARN,
    LEARN_PREFIX,
    LEARN_UNTIL_PREFIX,
)
from clawpen.spec.rules import RuleViolation

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PORT = 443
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_NUMERIC_PART = re.compile(r"^(?:0[xX][0-9a-fA-F]*|[0-9]+)$")

# Suffixes under which anyone can register a name: a wildcard directly below one of these (or
# below a top-level domain) would allow the whole internet's worth of owners.
PUBLIC_SUFFIXES = frozenset(
    """
    co.uk org.uk ac.uk gov.uk me.uk net.uk ltd.uk plc.uk sch.uk nhs.uk
    com.au net.au org.au edu.au gov.au id.au
    co.nz org.nz net.nz govt.nz ac.nz
    co.jp ne.jp or.jp ac.jp go.jp gr.jp
    co.kr or.kr ne.kr
    com.br net.br org.br gov.br
    com.cn net.cn org.cn gov.cn edu.cn
    com.hk com.tw com.sg com.my com.ph com.vn com.pk com.bd com.np
    co.in net.in org.in gov.in ac.in firm.in
    co.za org.za gov.za
    com.mx com.ar com.co com.pe com.ve com.ec com.uy
    com.tr gov.tr com.eg com.sa com.ng co.ke co.il org.il ac.il co.id or.id ac.id
    com.ua co.th ac.th in.th
    github.io gitlab.io herokuapp.com appspot.com blogspot.com netlify.app vercel.app
    pages.dev workers.dev web.app firebaseapp.com azurewebsites.net cloudfront.net
    ngrok.io ngrok-free.app glitch.me repl.co fly.dev onrender.com
    """.split()  # noqa: SIM905 - a word list reads better than 100 quoted strings
)

METADATA = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_ULA = ipaddress.ip_network("fc00::/7")
_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
# ISATAP (RFC 5214): an interface identifier 0000:5efe:a.b.c.d (0200:5efe with a global IPv4;
# the u and g bits are ignored) under any prefix; the packets go to a.b.c.d, tunnelled in IPv4.
_ISATAP_IID, _ISATAP_MASK = 0x0000_5EFE, 0xFCFF_FFFF
# Always the host's own, whatever its interfaces say: the unspecified addresses and loopback.
_HOST_RANGES = tuple(ipaddress.ip_network(n) for n in ("0.0.0.0/32", "127.0.0.0/8", "::/128", "::1/128"))


class Rule(NamedTuple):
    """One allowlist entry: ``kind`` is "host" (exact name), "wild" (``*.value``) or "ip"."""

    kind: str
    value: str  # lower-case A-label name, the suffix of a wildcard, or the canonical address
    port: int
    raw: str


class EgressPolicy(NamedTuple):
    """A bot's parsed egress: every rule, or ``open`` for any public destination; ``until``
    (learn mode, epoch seconds): ``open`` holds until then, nothing after (:func:`at`)."""

    rules: tuple[Rule, ...] = ()
    open: bool = False
    until: float | None = None

    def match(self, host: str, port: int) -> Rule | None:
        """The rule that allows ``host`` (normalised name or canonical IP) on ``port``."""
        for rule in self.rules:
            if rule.port == port and _rule_covers(rule, host):
                return rule
        return None

    def allows(self, host: str, port: int) -> bool:
        return self.open or self.match(host, port) is not None

    def allows_name(self, host: str) -> bool:
        """True if some rule covers ``host`` on any port (what the DNS resolver asks)."""
        return self.open or any(r.kind != "ip" and _rule_covers(r, host) for r in self.rules)

    @property
    def empty(self) -> bool:
        return not self.open and not self.rules


def _rule_covers(rule: Rule, host: str) -> bool:
    if rule.kind == "wild":
        return host.endswith("." + rule.value)
    return host == rule.value


OPEN = EgressPolicy(open=True)
NOTHING = EgressPolicy()


def at(policy: EgressPolicy, now: float) -> EgressPolicy:
    """``policy`` as it applies at ``now``: a learn policy whose time is over allows nothing."""
    if policy.until is not None and now >= policy.until:
        return NOTHING
    return policy


# ------------------------------------------------------------------ host names and literals
@functools.lru_cache(maxsize=4096)
def normalize_host(raw: str) -> str:
    """Lower-case A-label form of a host name or the canonical form of an IP literal.

    Raises ``ValueError`` with the reason when ``raw`` is neither.
    """
    host = raw.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    literal = parse_ip_literal(host)
    if literal is not None:
        return str(literal)
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise ValueError("the host name is empty")
    if ".." in host or host.startswith("."):
        raise ValueError(f"{raw!r} has an empty label (two dots in a row, or a leading dot)")
    if host.isascii():
        ascii_host = host.lower()  # the labels are checked below; IDNA is for non-ASCII names
    else:
        try:
            ascii_host = host.encode("idna").decode("ascii").lower()
        except UnicodeError as err:
            raise ValueError(f"{raw!r} is not a valid host name ({err})") from None
    if len(ascii_host) > 253:
        raise ValueError(f"{raw!r} is longer than 253 characters")
    for label in ascii_host.split("."):
        if not label:
            raise ValueError(f"{raw!r} has an empty label (two dots in a row, or a leading dot)")
        if not _LABEL.match(label):
            raise ValueError(f"{raw!r} has an invalid label {label!r}")
    if parse_ip_literal(ascii_host) is not None:
        return str(parse_ip_literal(ascii_host))
    return ascii_host


def parse_ip_literal(raw: str) -> IPAddress | None:
    """The address ``raw`` names if a resolver or a socket library would read it as an IP
    literal, in any spelling: dotted, decimal (``2130706433``), octal/hex parts (``0177.1``,
    ``0x7f.0.0.1``), short forms (``127.1``), IPv6 with brackets or a zone, IPv4-mapped IPv6.
    IPv4-mapped and -compatible IPv6 addresses come back as the IPv4 address they carry.
    A numeric-looking host whose parts are out of range raises ``ValueError``."""
    host = raw.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.endswith(".") and host[:-1] and all(_NUMERIC_PART.match(p) for p in host[:-1].split(".")):
        host = host[:-1]
    if ":" in host:
        try:
            addr = ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return None
        return unwrap(addr)
    parts = host.split(".")
    if not parts or len(parts) > 4 or not all(_NUMERIC_PART.match(p) for p in parts):
        return None
    values = []
    for part in parts:
        if part[:2] in ("0x", "0X"):
            values.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            if not all(c in "01234567" for c in part):
                raise ValueError(f"{raw!r} looks like an IP address with a bad octal part {part!r}")
            values.append(int(part, 8))
        else:
            values.append(int(part))
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        raise ValueError(f"{raw!r} looks like an IP address but a part is out of range")
    number = last
    for i, v in enumerate(head):
        number |= v << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def unwrap(addr: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped (``::ffff:a.b.c.d``) or -compatible IPv6 one."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        packed = int(addr)
        if packed >> 32 == 0 and packed > 1:  # deprecated ::a.b.c.d
            return ipaddress.IPv4Address(packed)
    return addr


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[tuple[str, ipaddress.IPv4Address], ...]:
    """The IPv4 addresses a NAT64 (``64:ff9b::/96``), 6to4 (``2002::/16``), Teredo
    (``2001::/32``: server and client) or ISATAP (``::5efe:a.b.c.d`` interface identifier, any
    prefix) address carries, each with what it is; () for others. (IPv4-mapped and -compatible
    addresses are unwrapped by :func:`unwrap` instead.)"""
    found: tuple[tuple[str, ipaddress.IPv4Address], ...] = ()
    if ip in _NAT64:
        found = (("NAT64 (64:ff9b::/96)", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)),)
    elif ip.sixtofour is not None:
        found = (("6to4 (2002::/16)", ip.sixtofour),)
    elif ip.teredo is not None:
        server, client = ip.teredo
        found = (("Teredo (2001::/32) server", server), ("Teredo (2001::/32) client", client))
    isatap = _isatap(ip)
    return found if isatap is None else (*found, ("ISATAP (::5efe:a.b.c.d)", isatap))


def _isatap(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    value = int(ip)
    if (value >> 32) & _ISATAP_MASK == _ISATAP_IID:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    return None


def _a(what: str) -> str:
    return f"{'an' if what[:1] in ('A', 'E', 'I', 'O', 'U') else 'a'} {what}"


def _translated(ip: IPAddress) -> bool:
    """A NAT64, 6to4 or Teredo address: where it goes is the IPv4 address it carries."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return False
    return ip in _NAT64 or ip.sixtofour is not None or ip.teredo is not None


HostSource = Collection[IPAddress] | Callable[[], Collection[IPAddress]]


def address_problem(
    addr: IPAddress | str, allow_private: Sequence[IPNetwork] = (), *, host: HostSource
) -> str | None:
    """Why a connection to ``addr`` is refused, or None if it is a public address (or lies in
    one of ``allow_private``).

    ``host`` is the set of the host's own addresses, or a callable returning it: the gateway and
    its DNS pass their :class:`clawpen.net.hostaddr.HostAddresses` cache;
    :func:`clawpen.net.hostaddr.read_once` reads the calling thread's namespace.
    A host address, the unspecified addresses and the loopback
    ranges pass only when ``allow_private`` lists them on their own (a network made of nothing
    but host addresses, e.g. ``203.0.113.5/32`` or ``127.0.0.0/8``): a wide entry such as
    ``10.0.0.0/8`` opens the network, not the host in it. IPv4-mapped, -compatible, NAT64,
    6to4, Teredo and ISATAP addresses are refused when an IPv4 address they carry would be."""
    ip = ipaddress.ip_address(addr) if isinstance(addr, str) else addr
    own = host() if callable(host) else host
    return _problem(ip, allow_private, own)


def _problem(addr: IPAddress, allow: Sequence[IPNetwork], own: Collection[IPAddress]) -> str | None:
    ip = unwrap(addr)
    if _is_own(ip, own):
        if any(ip in net and _only_own(net, own) for net in allow if net.version == ip.version):
            return None
        return _class_problem(ip) or f"{ip} is an address of this host"
    inner = embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else ()
    for what, v4 in inner:  # the host behind an embedded address is refused even when allowed
        if _is_own(v4, own) and _problem(v4, allow, own) is not None:
            return f"{ip} is {_a(what)} address that carries {v4}, an address of this host"
    if _covered(ip, allow):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip in _NAT64_LOCAL:
        return f"{ip} is a local-use NAT64 (64:ff9b:1::/48) address, whose IPv4 part cannot be told"
    if inner:
        for what, v4 in inner:
            problem = _problem(v4, allow, own)
            if problem is not None:
                return f"{ip} is {_a(what)} address that carries {v4}: {problem}"
        if _translated(ip):  # ISATAP alone: the IPv6 address itself must pass too
            return None
    return _class_problem(ip)


def _covered(ip: IPAddress, allow: Sequence[IPNetwork]) -> bool:
    return any(ip in net for net in allow if net.version == ip.version)


def _is_own(ip: IPAddress, own: Collection[IPAddress]) -> bool:
    return ip in own or any(ip in net for net in _HOST_RANGES if net.version == ip.version)


def _only_own(net: IPNetwork, own: Collection[IPAddress]) -> bool:
    """True if ``net`` holds nothing but host addresses (it names the host on purpose)."""
    if net.num_addresses == 1:
        return True  # its one address is the host's: the caller checked it is in ``net``
    return any(net.subnet_of(r) for r in _HOST_RANGES if r.version == net.version)  # type: ignore[arg-type]


def _class_problem(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address by its class, or None."""
    if ip in METADATA:
        return f"{ip} is a cloud metadata address"
    if ip.is_loopback:
        return f"{ip} is a loopback address"
    if ip.is_unspecified or (ip.version == 4 and ip in _THIS_NETWORK):
        return f"{ip} is an unspecified ('this network') address"
    if ip.is_link_local:
        return f"{ip} is a link-local address"
    if ip.is_multicast:
        return f"{ip} is a multicast address"
    if ip.version == 4 and ip in _CGNAT:
        return f"{ip} is a carrier-grade NAT (100.64.0.0/10) address"
    if ip.version == 6 and ip in _ULA:
        return f"{ip} is a unique-local (fc00::/7) address"
    if ip.version == 4 and any(ip in net for net in _RFC1918):
        return f"{ip} is a private address"
    if ip.is_reserved or not ip.is_global:
        return f"{ip} is a reserved or special-purpose address, not a public one"
    return None


def networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


# ------------------------------------------------------------------ rules
def _violation(raw: str, why: str, hint: str) -> RuleViolation:
    return RuleViolation(f"egress rule {raw!r}: {why}", hint)


def _split_port(raw: str) -> tuple[str, int]:
    text = raw.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _violation(raw, "an opening '[' without ']'", 'write IPv6 as "[2001:db8::1]:443"')
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise _violation(raw, "text after ']' that is not ':PORT'", 'write "[2001:db8::1]:443"')
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:
        raise _violation(raw, "an IPv6 address needs brackets", 'write "[2001:db8::1]:443"')
    elif ":" in text:
        host, port_text = text.split(":", 1)
    else:
        host, port_text = text, None
    if port_text is None:
        return host, DEFAULT_PORT
    if not port_text.isdigit():
        raise _violation(raw, f"the port {port_text!r} is not a number", 'write "host:443"')
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise _violation(raw, f"the port {port} is out of range", "use a port from 1 to 65535")
    return host, port


def parse_rule(raw: str) -> Rule:
    """One allowlist entry; raises :class:`RuleViolation` saying what is wrong and how to fix it."""
    if not isinstance(raw, str) or not raw.strip():
        raise _violation(str(raw), "the rule is empty", 'write "host:port", e.g. "api.openai.com:443"')
    if raw.strip() in ("open", LEARN):
        word = raw.strip()
        raise _violation(raw, f'"{word}" is not a host', f'write egress = "{word}" (not inside a list)')
    host, port = _split_port(raw)
    if host in ("*", "*."):
        raise _violation(
            raw, "'*' would allow every host", 'list the hosts, or write egress = "open" on purpose'
        )
    if host.startswith("*."):
        suffix_raw = host[2:]
        if "*" in suffix_raw:
            raise _violation(raw, "only one leading '*.' is allowed", 'write "*.example.com:443"')
        try:
            suffix = normalize_host(suffix_raw)
        except ValueError as err:
            raise _violation(raw, str(err), 'write "*.example.com:443"') from None
        if is_ip(suffix):
            raise _violation(raw, "a wildcard over an IP address", "list the address itself")
        if "." not in suffix:
            raise _violation(
                raw,
                f"'*.{suffix}' covers a whole top-level domain (anyone can register below it)",
                'name the domain you need, e.g. "*.example.com:443"',
            )
        if suffix in PUBLIC_SUFFIXES:
            raise _violation(
                raw,
                f"'{suffix}' is a public suffix (anyone can register a name below it)",
                f'name the domain you need, e.g. "*.example.{suffix}:{port}"',
            )
        return Rule("wild", suffix, port, raw)
    if "*" in host:
        raise _violation(raw, "'*' may only stand as the whole first label", 'write "*.example.com:443"')
    try:
        literal = parse_ip_literal(host)
    except ValueError as err:
        raise _violation(raw, str(err), 'write the address in dotted form, e.g. "203.0.113.7:443"') from None
    if literal is not None:
        canonical = str(literal)
        bare = host[1:-1] if host.startswith("[") else host
        if canonical != bare.lower() or (literal.version == 6 and not host.startswith("[")):
            shown = f"[{canonical}]" if literal.version == 6 else canonical
            raise _violation(
                raw, f"an unusual spelling of the address {canonical}", f'write "{shown}:{port}"'
            )
        return Rule("ip", canonical, port, raw)
    try:
        name = normalize_host(host)
    except ValueError as err:
        raise _violation(raw, str(err), 'write "host:port", e.g. "api.openai.com:443"') from None
    if name in PUBLIC_SUFFIXES:
        raise _violation(raw, f"'{name}' is a public suffix, not a host", "name the host you need")
    return Rule("host", name, port, raw)


def is_ip(host: str) -> bool:
    """``host`` is an IPv4 or IPv6 address literal."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_rules(raws: list[str]) -> EgressPolicy:
    """Every entry of ``network.egress`` (a list); raises :class:`RuleViolation` on the first
    bad one."""
    return EgressPolicy(rules=tuple(parse_rule(r) for r in raws))


@functools.lru_cache(maxsize=256)
def policy_for(egress: tuple[str, ...] | str) -> EgressPolicy:
    """The policy of a link's ``egress`` value (``"open"``, ``"learn-until:<epoch>"`` or rules);
    cached. A learn value without its end (``"learn:<seconds>"``, ``"learn"``) allows nothing:
    only the link manager knows when the period started."""
    if egress == "open":
        return OPEN
    if isinstance(egress, str) and egress.startswith(LEARN_UNTIL_PREFIX):
        try:
            return EgressPolicy(open=True, until=float(egress[len(LEARN_UNTIL_PREFIX) :]))
        except ValueError:
            return NOTHING
    if isinstance(egress, str) and (egress == LEARN or egress.startswith(LEARN_PREFIX)):
        return NOTHING
    if isinstance(egress, str):
        return parse_rules([egress])
    return parse_rules(list(egress))


@functools.lru_cache(maxsize=256)
def private_networks(cidrs: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return networks(cidrs)
