"""Shared set-up for the template tests: a daemon whose state the bot uids can reach, and the
edits that fit a template's build to this machine (package-cache folder, registry address)."""

from __future__ import annotations

import ipaddress
import re
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from helpers import DaemonCli

from conftest import UID_BASE

CACHE_ROOT = Path("/var/cache/clawpen-test")  # package downloads kept between runs


@contextmanager
def template_daemon() -> Iterator[tuple[DaemonCli, Path]]:
    """A daemon with its state under a 0755 folder in /tmp (``<state>-build`` must be reachable
    by the bot uids), and the folder for the spec."""
    base = Path(tempfile.mkdtemp(prefix="clawpen-tpl-", dir="/tmp"))
    base.chmod(0o755)
    spec_dir = base / "spec"
    d = DaemonCli(base / "state", base, UID_BASE)
    try:
        yield d, spec_dir
    finally:
        d.shutdown()
        subprocess.run(["rm", "-rf", str(base)], check=False)


def reserved_addresses(*hosts: str) -> list[str]:
    """/32s of the hosts' addresses that are not public (on this machine the package registries
    are reached through such an address, which egress refuses unless it is allowed)."""
    found = set()
    for host in hosts:
        for info in socket.getaddrinfo(host, 443, socket.AF_INET, socket.SOCK_STREAM):
            addr = ipaddress.ip_address(info[4][0])
            if not addr.is_global:
                found.add(f"{addr}/32")
    return sorted(found)


def fit_build(toml: Path, cache_name: str, hosts: tuple[str, ...]) -> None:
    """Give the template's build a persistent cache folder and, where needed, allow_private."""
    text = toml.read_text()
    # kept between runs (and daemons, whose bot uids differ): handed over to each run's build uid
    extra = f'cache = "{CACHE_ROOT / cache_name}"\ncache_adopt = true\n'
    private = reserved_addresses(*hosts)
    if private:
        extra += "allow_private = [" + ", ".join(f'"{p}"' for p in private) + "]\n"
    (CACHE_ROOT / cache_name).mkdir(parents=True, exist_ok=True)
    new, n = re.subn(r"(?m)^(\[bots\.\w+\.build\]\n)", lambda m: m.group(1) + extra, text)
    assert n == 1, "the template has no build section"
    toml.write_text(new)


def openclaw_in_tier(d: DaemonCli, spec_dir: Path, tier_lines: str, *, wait: int, timeout: int) -> Path:
    """The OpenClaw template with ``tier_lines`` added to its bot (nothing else changed), one
    model provider enabled (so the bot has a gateway link), its token set, and `up` (waiting
    ``wait`` s for health); the spec's path. The bot's last logs are printed if `up` fails."""
    from test_openclaw_e2e import TOKEN

    d.cli("init", "--template", "openclaw", str(spec_dir))
    toml = spec_dir / "clawpen.toml"
    fit_build(toml, "openclaw", ("registry.npmjs.org",))
    text = toml.read_text()
    assert text.count("[bots.openclaw]\n") == 1
    text = text.replace("[bots.openclaw]\n", f"[bots.openclaw]\n{tier_lines}")
    assert '# "api.anthropic.com:443",' in text
    toml.write_text(text.replace('# "api.anthropic.com:443",', '"api.anthropic.com:443",'))
    d.spec = toml
    d.cli("secrets", "set", "OPENCLAW_GATEWAY_TOKEN", stdin=TOKEN)
    try:
        up = d.cli("up", "-f", str(toml), "--wait-timeout", str(wait), timeout=timeout)
    except AssertionError:
        print(d.cli("logs", "openclaw", check=False).stdout[-3000:])
        raise
    assert "start openclaw" in up.stdout, up.stdout
    return toml
