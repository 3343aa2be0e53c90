"""The network checks of ``clawpen audit`` (live only): the listening sockets of the current
network namespace with the process that owns each, and the host firewall (nftables).

Listeners come from /proc/net/{tcp,tcp6,udp,udp6} (a TCP socket in LISTEN, a UDP socket with no
peer); the owner is the process holding ``socket:[INODE]`` among its descriptors (/proc/PID/fd),
named by its ``comm``, pid and systemd unit (/proc/PID/cgroup).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from clawpen.assess.hostread import run_command
from clawpen.assess.model import AuditContext, AuditFinding, CheckInfo, Severity, finding

# clawpen.net.firewall_render.QUALIFIED (assess may not import net: the same layer; a test keeps
# the two equal)
FIREWALL_TABLE = ("inet", "clawpen_host")
RISKY = {
    21: "FTP",
    23: "telnet",
    2375: "Docker API (plain)",
    2376: "Docker API",
    3306: "MySQL",
    5432: "PostgreSQL",
    6379: "Redis",
    9200: "Elasticsearch",
    11211: "memcached",
    27017: "MongoDB",
}
TCP_LISTEN = "0A"

PORT = CheckInfo(
    "host.ports.public",
    "host",
    "a service listens on a public address",
    "Lynis NETW-3012 (listening ports); deployment practice (every other inbound denied)",
)
CLAWPEN_PORT = CheckInfo(
    "host.ports.clawpen_public",
    "host",
    "clawpen's API or dashboard listens on a public address",
    "deployment practice (access only through the admin's network)",
)
FIREWALL = CheckInfo(
    "host.firewall.none",
    "host",
    "no host firewall drops unasked inbound traffic",
    "CIS Debian Linux 12 benchmark, host based firewall (nftables default deny); Lynis FIRE-4590, "
    "FIRE-4540; "
    "deployment practice (its own firewall rules)",
)
NOT_APPLIED = CheckInfo(
    "host.firewall.not_applied",
    "host",
    "the spec's [host.firewall] is not loaded",
    "deployment practice (its own firewall rules)",
)
PARTIAL = CheckInfo(
    "host.firewall.partial",
    "host",
    "the host firewall covers one IP version only",
    "CIS Debian Linux 12 benchmark, host based firewall (IPv4 and IPv6)",
)
CHECKS = (PORT, CLAWPEN_PORT, FIREWALL, NOT_APPLIED, PARTIAL)


@dataclass(frozen=True)
class Owner:
    pid: int
    comm: str
    unit: str
    argv: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.comm} (pid {self.pid}{', ' + self.unit if self.unit else ''})"

    @property
    def is_clawpen_daemon(self) -> bool:
        args = [os.path.basename(a) for a in self.argv[:5]]
        return "daemon" in args and any(a == "clawpen" or a.startswith("clawpen") for a in args)

    @property
    def is_clawpen_relay(self) -> bool:
        return "clawpen.net.portrelay" in self.argv[:6]


@dataclass(frozen=True)
class Listener:
    proto: str  # tcp / udp
    address: str
    port: int
    inode: int

    @property
    def public(self) -> bool:
        ip = ipaddress.ip_address(self.address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return not ip.is_loopback

    @property
    def endpoint(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.proto}/{host}:{self.port}"


def _address(hex_addr: str) -> str:
    """An address of /proc/net/* (32-bit words in the host's byte order) as text."""
    words = [int(hex_addr[i : i + 8], 16) for i in range(0, len(hex_addr), 8)]
    packed = b"".join(struct.pack("=I", w) for w in words)
    return socket.inet_ntop(socket.AF_INET6 if len(packed) == 16 else socket.AF_INET, packed)


def parse_table(text: str, proto: str) -> list[Listener]:
    """The listening sockets of one /proc/net table (``proto`` is tcp or udp)."""
    out = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10:
            continue
        local, remote, state, inode = parts[1], parts[2], parts[3], parts[9]
        addr, _, port = local.partition(":")
        listening = state == TCP_LISTEN if proto == "tcp" else int(remote.split(":")[1], 16) == 0
        if not listening or not inode.isdigit() or int(inode) == 0:
            continue
        out.append(Listener(proto, _address(addr), int(port, 16), int(inode)))
    return out


def listeners(proc: Path = Path("/proc")) -> list[Listener]:
    """Every listening socket of the current network namespace (one per address and port)."""
    out: dict[tuple[str, str, int], Listener] = {}
    for name, proto in (("tcp", "tcp"), ("tcp6", "tcp"), ("udp", "udp"), ("udp6", "udp")):
        try:
            text = (proc / "net" / name).read_text()
        except OSError:
            continue
        for item in parse_table(text, proto):
            out.setdefault((item.proto, item.address, item.port), item)
    return sorted(out.values(), key=lambda x: (x.proto, x.port, x.address))


def _unit(pid: str, proc: Path) -> str:
    try:
        text = (proc / pid / "cgroup").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        for part in reversed(path.split("/")):
            if part.endswith((".service", ".scope")):
                return part
    return ""


def owners(inodes: set[int], proc: Path = Path("/proc")) -> dict[int, Owner]:
    """The process holding each socket inode (the lowest pid when several share it)."""
    wanted = {f"socket:[{i}]": i for i in inodes}
    found: dict[int, Owner] = {}
    try:
        pids = sorted((e for e in os.listdir(proc) if e.isdigit()), key=int)
    except OSError:
        return found
    for pid in pids:
        if len(found) == len(wanted):
            break
        try:
            fds = os.listdir(proc / pid / "fd")
        except OSError:
            continue
        for fd in fds:
            try:
                inode = wanted.get(os.readlink(proc / pid / "fd" / fd))
            except OSError:
                continue
            if inode is None or inode in found:
                continue
            try:
                comm = (proc / pid / "comm").read_text().strip()
                argv = tuple(
                    a.decode(errors="replace")
                    for a in (proc / pid / "cmdline").read_bytes().split(b"\0")
                    if a
                )
            except OSError:
                comm, argv = "?", ()
            found[inode] = Owner(int(pid), comm, _unit(pid, proc), argv)
    return found


def port_findings() -> list[AuditFinding]:
    """A finding per listener on a non-loopback address (the live network namespace)."""
    public = [item for item in listeners() if item.public]
    who = owners({item.inode for item in public})
    out = []
    for item in public:
        owner = who.get(item.inode)
        label = owner.label if owner else "an unknown process (not visible to this audit)"
        data = {
            "proto": item.proto,
            "address": item.address,
            "port": item.port,
            "pid": owner.pid if owner else None,
            "comm": owner.comm if owner else None,
            "unit": owner.unit if owner else None,
        }
        where = f"pid {owner.pid}" if owner else ""
        if owner and owner.is_clawpen_daemon:
            out.append(
                finding(
                    CLAWPEN_PORT,
                    Severity.HIGH,
                    f"clawpen's daemon listens on {item.endpoint} ({label})",
                    "the API and dashboard start, stop and read every bot: reachable from the network, "
                    "only its token stands between an attacker and the bots",
                    "listen on loopback (`clawpen daemon --listen 127.0.0.1:8080`, the default) and reach "
                    "it through an SSH tunnel; or allow its port only from the admin's addresses in "
                    "[host.firewall] allow",
                    where=where,
                    subject=item.endpoint,
                    data=data,
                )
            )
            continue
        if owner and owner.is_clawpen_relay:
            out.append(
                finding(
                    PORT,
                    Severity.INFO,
                    f"a bot's published port {item.endpoint} ({label})",
                    "a port the spec publishes; the spec group of this audit judges its exposure",
                    "publish on a specific address, or drop the port from the bot's network.publish",
                    where=where,
                    subject=item.endpoint,
                    data=data,
                )
            )
            continue
        risky = RISKY.get(item.port)
        out.append(
            finding(
                PORT,
                Severity.HIGH if risky else Severity.MEDIUM,
                f"{label} listens on {item.endpoint}" + (f" ({risky})" if risky else ""),
                (
                    f"{risky} on a public address is a favourite target of scanners (weak or no "
                    "authentication, plain text)"
                    if risky
                    else "every open port is a way in; a bot host should answer only SSH and the service"
                ),
                f"make {owner.comm if owner else 'the service'} listen on 127.0.0.1 (or stop it: "
                f"`systemctl disable --now {owner.unit if owner and owner.unit else 'UNIT'}`), or drop "
                "the port in [host.firewall] (`clawpen firewall apply`)",
                where=where,
                subject=item.endpoint,
                data=data,
            )
        )
    return out


def nft_state() -> tuple[set[tuple[str, str]], list[dict[str, object]]] | None:
    """The nftables tables ``(family, name)`` and base chains of the current network namespace,
    or None when ``nft`` is missing or fails."""
    tables = run_command(["nft", "-j", "list", "tables"])
    chains = run_command(["nft", "-j", "list", "chains"])
    if tables is None or chains is None or tables.returncode != 0 or chains.returncode != 0:
        return None
    try:
        t_items = json.loads(tables.stdout or "{}").get("nftables", [])
        c_items = json.loads(chains.stdout or "{}").get("nftables", [])
    except (ValueError, AttributeError):
        return None
    found = {(str(i["table"]["family"]), str(i["table"]["name"])) for i in t_items if "table" in i}
    return found, [i["chain"] for i in c_items if "chain" in i and isinstance(i["chain"], dict)]


def legacy_drops(proc: Path = Path("/proc")) -> list[dict[str, object]]:
    """INPUT chains of legacy iptables (invisible to nft) whose policy is DROP, as nft-like chain
    records. Asked only when the filter table is already loaded (asking would load the module)."""
    out: list[dict[str, object]] = []
    for family, names, program in (
        ("ip", "ip_tables_names", "iptables-legacy"),
        ("ip6", "ip6_tables_names", "ip6tables-legacy"),
    ):
        try:
            loaded = (proc / "net" / names).read_text().split()
        except OSError:
            continue
        if "filter" not in loaded:
            continue
        done = run_command([program, "-w", "-S", "INPUT"])
        if done is not None and done.returncode == 0 and "-P INPUT DROP" in done.stdout.splitlines():
            out.append(
                {
                    "family": family,
                    "table": f"filter ({program})",
                    "type": "filter",
                    "hook": "input",
                    "policy": "drop",
                }
            )
    return out


def firewall_findings(spec_has_firewall: bool) -> list[AuditFinding]:
    """The host firewall of the current network namespace (nftables, and legacy iptables)."""
    state = nft_state()
    tables, chains = state if state is not None else (set(), [])
    chains = [*chains, *legacy_drops()]
    drops = [
        c
        for c in chains
        if c.get("hook") == "input" and c.get("policy") == "drop" and c.get("type") == "filter"
    ]
    families = {str(c.get("family")) for c in drops}
    ours = FIREWALL_TABLE in tables
    name = " ".join(FIREWALL_TABLE)
    data = {"clawpen_table": ours, "input_drop": sorted(f"{c.get('family')} {c.get('table')}" for c in drops)}
    out = []
    if spec_has_firewall and not ours:
        out.append(
            finding(
                NOT_APPLIED,
                Severity.MEDIUM if drops else Severity.HIGH,
                f"the spec's [host.firewall] is not applied (no table {name} in this network namespace)",
                "the spec says which ports the host answers, but the kernel does not enforce it",
                "clawpen firewall apply",
                where="[host.firewall]",
                data=data,
            )
        )
    if not ours and not drops:
        if not spec_has_firewall:
            missing = "nft is not installed" if state is None else "no input chain drops by default"
            out.append(
                finding(
                    FIREWALL,
                    Severity.HIGH,
                    f"no host firewall: {missing}",
                    "every port a process opens, by mistake or by a bot, is reachable from the network",
                    "write [host.firewall] in the spec (ssh_from = the admin's addresses, allow_tcp = the "
                    "service port) and run `clawpen firewall apply`",
                    data=data,
                )
            )
        return out
    if not ours and not ({"inet"} & families or {"ip", "ip6"} <= families):
        version = "IPv4" if "ip" in families else "IPv6"
        out.append(
            finding(
                PARTIAL,
                Severity.MEDIUM,
                f"the host firewall drops inbound {version} only",
                "the other IP version reaches every listening port",
                f"use clawpen's inet table ([host.firewall], `clawpen firewall apply`) or add an {version} "
                "twin of the drop policy",
                data=data,
            )
        )
    return out


def run(ctx: AuditContext, *, spec_has_firewall: bool = False) -> list[AuditFinding]:
    """The network findings; none for a root that is not live."""
    if not ctx.live:
        return []
    return port_findings() + firewall_findings(spec_has_firewall)
