"""The host checks of ``clawpen audit`` on prepared root folders: each weak setting yields its
finding (where it was decided) and the fixed setting does not (the positive control)."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from clawpen.assess import host, hostapt, hostnet, hostread, hostssh, hostsys, hostusers
from clawpen.assess.model import AuditContext, AuditFinding, Severity
from clawpen.daemon.systemd import render_unit
from clawpen.net import firewall_render

IDS = {c.id for c in host.CHECKS}


def write(root: Path, path: str, text: str) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(textwrap.dedent(text).lstrip("\n"))
    return target


def ctx(root: Path, **rest: object) -> AuditContext:
    return AuditContext(root=root, live=False, **rest)  # type: ignore[arg-type]


def by_check(findings: list[AuditFinding]) -> dict[str, list[AuditFinding]]:
    out: dict[str, list[AuditFinding]] = {}
    for f in findings:
        assert f.check in IDS, f"{f.check} is not in host.CHECKS"
        assert f.group == "host" and f.source and f.why and f.fix
        assert AuditFinding.from_json(json.loads(json.dumps(f.to_json()))) == f  # reports are JSON
        out.setdefault(f.check, []).append(f)
    return out


DPKG = """
Package: {name}
Status: install ok installed
Version: 1

"""


def dpkg(root: Path, *names: str) -> None:
    write(root, "/var/lib/dpkg/status", "".join(DPKG.format(name=n).lstrip("\n") for n in names))


def test_check_ids_unique_and_firewall_table_matches_net() -> None:
    assert len(IDS) == len(host.CHECKS)
    assert " ".join(hostnet.FIREWALL_TABLE) == firewall_render.QUALIFIED


# --- SSH ------------------------------------------------------------------------------------


def sshd_root(tmp_path: Path, dropins: dict[str, str], main_extra: str = "") -> Path:
    dpkg(tmp_path, "openssh-server")
    write(
        tmp_path,
        hostssh.MAIN,
        "Include /etc/ssh/sshd_config.d/*.conf\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM yes\n"
        "X11Forwarding yes\n" + main_extra,
    )
    for name, text in dropins.items():
        write(tmp_path, f"/etc/ssh/sshd_config.d/{name}", text)
    return tmp_path


def test_ssh_dropin_decides_first_value_wins(tmp_path: Path) -> None:
    root = sshd_root(tmp_path, {"50-weak.conf": "PasswordAuthentication yes\nPermitRootLogin yes\n"})
    found = by_check(hostssh.run(ctx(root)))
    pw = found["host.ssh.password_login"][0]
    assert pw.severity is Severity.HIGH and pw.where == "/etc/ssh/sshd_config.d/50-weak.conf:1"
    rl = found["host.ssh.root_login"][0]
    assert rl.severity is Severity.HIGH and rl.where == "/etc/ssh/sshd_config.d/50-weak.conf:2"
    assert found["host.ssh.x11_forwarding"][0].where == "/etc/ssh/sshd_config:5"
    # MaxAuthTries unset: sshd's default 6
    assert "default" in found["host.ssh.max_auth_tries"][0].where
    assert "host.ssh.listen_all" in found  # no ListenAddress: every address


def test_ssh_fixed_dropin_read_first_clears(tmp_path: Path) -> None:
    root = sshd_root(
        tmp_path,
        {
            "00-clawpen.conf": "PasswordAuthentication no\nPermitRootLogin no\nX11Forwarding no\n"
            "MaxAuthTries 3\nListenAddress 10.0.0.5\n",
            "50-weak.conf": "PasswordAuthentication yes\nPermitRootLogin yes\n",
        },
    )
    assert hostssh.run(ctx(root)) == []


def test_ssh_defaults_and_match_blocks(tmp_path: Path) -> None:
    dpkg(tmp_path, "openssh-server")
    write(
        tmp_path,
        hostssh.MAIN,
        "UsePAM yes\nMatch User backup\n  PasswordAuthentication no\n  PermitRootLogin no\n",
    )
    found = by_check(hostssh.run(ctx(tmp_path)))
    # the Match block decides nothing global: sshd's defaults stand
    assert found["host.ssh.password_login"][0].where == "/etc/ssh/sshd_config (sshd's default)"
    assert found["host.ssh.root_login"][0].severity is Severity.LOW  # prohibit-password
    assert found["host.ssh.kbd_interactive"][0].severity is Severity.MEDIUM  # default yes + UsePAM
    # settings after "Match all" are global again
    write(
        tmp_path,
        hostssh.MAIN,
        "UsePAM yes\nMatch User backup\n  X11Forwarding yes\nMatch all\nPasswordAuthentication=no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin no\nMaxAuthTries 4\nListenAddress [fd00::1]:22\n",
    )
    assert hostssh.run(ctx(tmp_path)) == []


def test_ssh_relative_include_empty_passwords_listen_all(tmp_path: Path) -> None:
    dpkg(tmp_path, "openssh-server")
    write(
        tmp_path,
        hostssh.MAIN,
        "Include extra/*.conf\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin no\nMaxAuthTries 3\n",
    )
    write(tmp_path, "/etc/ssh/extra/a.conf", "PermitEmptyPasswords yes\nListenAddress 0.0.0.0:22\n")
    found = by_check(hostssh.run(ctx(tmp_path)))
    assert found["host.ssh.empty_passwords"][0].severity is Severity.CRITICAL
    assert found["host.ssh.empty_passwords"][0].where == "/etc/ssh/extra/a.conf:1"
    assert found["host.ssh.listen_all"][0].where == "/etc/ssh/extra/a.conf:2"
    write(tmp_path, "/etc/ssh/extra/a.conf", "PermitEmptyPasswords no\nListenAddress 192.0.2.10\n")
    assert hostssh.run(ctx(tmp_path)) == []


def test_ssh_include_loop_and_unreadable_file(tmp_path: Path) -> None:
    dpkg(tmp_path, "openssh-server")
    write(tmp_path, hostssh.MAIN, "Include /etc/ssh/sshd_config\nPasswordAuthentication no\n")
    (tmp_path / "etc/ssh/sshd_config.d/broken.conf").mkdir(parents=True)
    write(tmp_path, "/etc/ssh/sshd_config", "Include /etc/ssh/sshd_config /etc/ssh/sshd_config.d/*.conf\n")
    found = by_check(hostssh.run(ctx(tmp_path)))
    assert any("too deep" in f.title for f in found["host.ssh.unreadable"])
    assert any("broken.conf" in f.title for f in found["host.ssh.unreadable"])


def test_ssh_not_installed_no_findings(tmp_path: Path) -> None:
    write(tmp_path, hostssh.MAIN, "PasswordAuthentication yes\n")
    assert hostssh.run(ctx(tmp_path)) == []
    (tmp_path / "usr/sbin").mkdir(parents=True)
    (tmp_path / "usr/sbin/sshd").write_text("")
    assert "host.ssh.password_login" in by_check(hostssh.run(ctx(tmp_path)))


# --- accounts -------------------------------------------------------------------------------

PASSWD = """
root:x:0:0:root:/root:/bin/bash
toor:x:0:0::/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
alice:x:1000:1000::/home/alice:/bin/bash
bob:x:1001:1001::/home/bob:/bin/bash
svc:x:999:999::/var/lib/svc:/usr/sbin/nologin
"""


def test_users_weak_and_fixed(tmp_path: Path) -> None:
    write(tmp_path, "/etc/passwd", PASSWD)
    write(
        tmp_path,
        "/etc/shadow",
        "root:*:19000::::::\ntoor:!:19000::::::\ndaemon:*:19000::::::\n"
        "alice:$y$j9T$abc$def:19000::::::\nbob::19000::::::\nsvc:$6$x$y:19000::::::\n",
    )
    found = by_check(hostusers.users(ctx(tmp_path)))
    assert [f.subject for f in found["host.users.uid0"]] == ["toor"]
    assert found["host.users.uid0"][0].where == "/etc/passwd:2"
    empty = found["host.users.empty_password"]
    assert [(f.subject, f.severity) for f in empty] == [("bob", Severity.CRITICAL)]
    assert empty[0].where == "/etc/shadow:5"
    # alice has a hash and bash; svc has a hash but no login shell
    assert [f.subject for f in found["host.users.password_login"]] == ["alice"]
    # fixed: toor gone, passwords locked
    write(tmp_path, "/etc/passwd", PASSWD.replace("toor:x:0:0::/root:/bin/sh\n", ""))
    write(
        tmp_path,
        "/etc/shadow",
        "root:*:19000::::::\ndaemon:*:19000::::::\nalice:!$y$j9T$abc$def:19000::::::\n"
        "bob:!:19000::::::\nsvc:$6$x$y:19000::::::\n",
    )
    assert hostusers.users(ctx(tmp_path)) == []


def test_users_unreadable_shadow_is_info(tmp_path: Path) -> None:
    write(tmp_path, "/etc/passwd", "root:x:0:0:root:/root:/bin/bash\n")
    (tmp_path / "etc/shadow").mkdir()
    found = by_check(hostusers.users(ctx(tmp_path)))
    assert [f.severity for f in found["host.users.unreadable"]] == [Severity.INFO]


# --- automatic updates ----------------------------------------------------------------------

SOURCES = "deb http://deb.debian.org/debian bookworm main\n"
SECURITY = "deb http://deb.debian.org/debian-security bookworm-security main\n"


def test_updates_unattended_on(tmp_path: Path) -> None:
    dpkg(tmp_path, "unattended-upgrades", "apt")
    write(tmp_path, "/etc/apt/sources.list", SOURCES + SECURITY)
    write(
        tmp_path,
        "/etc/apt/apt.conf.d/20auto-upgrades",
        'APT::Periodic::Update-Package-Lists "1";\nAPT::Periodic::Unattended-Upgrade "1";\n',
    )
    found = by_check(hostapt.updates(ctx(tmp_path)))
    on = found["host.updates.unattended"][0]
    assert on.severity is Severity.MEDIUM and on.where == "/etc/apt/apt.conf.d/20auto-upgrades:2"
    assert "restart the bot's runtime" in on.why and "ON" in on.title
    # off again: a later file in nested syntax (the last value wins)
    write(
        tmp_path,
        "/etc/apt/apt.conf.d/99off",
        'APT {\n  Periodic {\n    Unattended-Upgrade "0"; // off\n  };\n};\n',
    )
    found = by_check(hostapt.updates(ctx(tmp_path)))
    assert list(found) == ["host.updates.policy"]
    assert found["host.updates.policy"][0].severity is Severity.INFO
    assert found["host.updates.policy"][0].where == "/etc/apt/sources.list:2"


def test_updates_timer_masked_or_not_installed_is_off(tmp_path: Path) -> None:
    write(tmp_path, "/etc/apt/sources.list", SOURCES + SECURITY)
    write(tmp_path, "/etc/apt/apt.conf.d/20auto-upgrades", 'APT::Periodic::Unattended-Upgrade "1";\n')
    dpkg(tmp_path, "apt")  # the setting alone does nothing without the package
    assert "host.updates.unattended" not in by_check(hostapt.updates(ctx(tmp_path)))
    dpkg(tmp_path, "apt", "unattended-upgrades")
    assert "host.updates.unattended" in by_check(hostapt.updates(ctx(tmp_path)))
    timer = tmp_path / "etc/systemd/system/apt-daily-upgrade.timer"
    timer.parent.mkdir(parents=True)
    timer.symlink_to("/dev/null")
    assert "host.updates.unattended" not in by_check(hostapt.updates(ctx(tmp_path)))


def test_updates_no_security_path(tmp_path: Path) -> None:
    dpkg(tmp_path, "apt")
    write(tmp_path, "/etc/apt/sources.list", SOURCES + "# " + SECURITY)
    found = by_check(hostapt.updates(ctx(tmp_path)))
    assert found["host.updates.no_security_path"][0].severity is Severity.LOW
    write(
        tmp_path,
        "/etc/apt/sources.list.d/debian.sources",
        "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n"
        "Components: main\n",
    )
    found = by_check(hostapt.updates(ctx(tmp_path)))
    assert "host.updates.no_security_path" not in found
    assert found["host.updates.policy"][0].where == "/etc/apt/sources.list.d/debian.sources:2"


def test_apt_config_parser() -> None:
    text = '/* c */ APT::Periodic { Enable "0"; };\n# x\nDir::Etc "etc/apt/";\nAPT::Periodic::Enable "1";'
    conf = hostapt.apt_config(text, "f")
    assert conf["apt::periodic::enable"] == ("1", "f:4")
    assert conf["dir::etc"] == ("etc/apt/", "f:3")


# --- kernel ---------------------------------------------------------------------------------


def test_kernel_sysctls_from_root_files(tmp_path: Path) -> None:
    write(
        tmp_path,
        "/usr/lib/sysctl.d/50-default.conf",
        "fs.protected_symlinks = 1\nfs.protected_hardlinks = 1\n",
    )
    write(
        tmp_path,
        "/etc/sysctl.d/60-weak.conf",
        "# weak\nkernel.kptr_restrict = 0\nfs/protected_symlinks=0\nnet.ipv4.ip_forward = 1\n"
        "kernel.unprivileged_userns_clone = 1\n",
    )
    found = by_check(host.run(ctx(tmp_path)))
    # files apply in name order: 60-weak.conf after the vendor's 50-default.conf
    assert found["host.kernel.kptr_restrict"][0].where == "/etc/sysctl.d/60-weak.conf:2"
    assert found["host.kernel.protected_symlinks"][0].severity is Severity.MEDIUM
    assert "host.kernel.protected_hardlinks" not in found  # 1 in /usr/lib/sysctl.d
    assert "host.kernel.ip_forward" in found and "host.kernel.userns" in found
    # the same name in /etc hides the vendor file; a later file overrides
    write(tmp_path, "/etc/sysctl.d/50-default.conf", "fs.protected_hardlinks = 0\n")
    assert "host.kernel.protected_hardlinks" in by_check(host.run(ctx(tmp_path)))
    write(
        tmp_path,
        "/etc/sysctl.d/99-fix.conf",
        "kernel.kptr_restrict = 2\nfs.protected_symlinks = 1\nfs.protected_hardlinks = 1\n"
        "net.ipv4.ip_forward = 0\nkernel.unprivileged_userns_clone = 0\n",
    )
    assert not [f for f in host.run(ctx(tmp_path)) if f.check.startswith("host.kernel.")]


def test_kernel_userns_off_is_high(tmp_path: Path) -> None:
    write(tmp_path, "/etc/sysctl.conf", "user.max_user_namespaces = 0\n")
    found = by_check(host.run(ctx(tmp_path)))
    assert found["host.kernel.userns"][0].severity is Severity.HIGH
    assert found["host.kernel.userns"][0].where == "/etc/sysctl.conf:1"


def test_cgroup_layouts() -> None:
    v2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n"
    hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
    assert hostsys.cgroups(v2) == []
    assert [f.severity for f in hostsys.cgroups(hybrid)] == [Severity.LOW]
    assert [f.severity for f in hostsys.cgroups("proc /proc proc rw 0 0\n")] == [Severity.HIGH]


# --- resources and disk ---------------------------------------------------------------------


def test_resources_small_and_fixed() -> None:
    small = "MemTotal:        3900000 kB\nSwapTotal:             0 kB\n"
    found = by_check(host.resources(cores=2, mem_text=small, swappiness="60"))
    assert found["host.cpu.cores"][0].severity is Severity.LOW
    assert found["host.memory.size"][0].severity is Severity.LOW
    assert found["host.memory.swap"][0].title == "no swap"
    tiny = by_check(
        host.resources(cores=1, mem_text="MemTotal: 2000000 kB\nSwapTotal: 1 kB\n", swappiness="100")
    )
    assert tiny["host.cpu.cores"][0].severity is Severity.MEDIUM
    assert tiny["host.memory.size"][0].severity is Severity.MEDIUM
    assert tiny["host.memory.swap"][0].subject == "swappiness"
    big = "MemTotal:       16303000 kB\nSwapTotal:       2097148 kB\n"
    assert host.resources(cores=8, mem_text=big, swappiness="10") == []


def test_disk_layout_same_filesystem_as_root(tmp_path: Path) -> None:
    live = AuditContext(root=Path("/"), live=True, state_dir=tmp_path / "state-not-made-yet")
    if os.stat(tmp_path).st_dev != os.stat("/").st_dev:
        pytest.fail("the test's tmp folder must be on the root file system")
    found = by_check(host.disk_layout(live, None))
    assert found["host.disk.shared_with_system"][0].subject == "state"
    shm = Path("/dev/shm")
    assert os.stat(shm).st_dev != os.stat("/").st_dev
    apart = AuditContext(root=Path("/"), live=True, state_dir=shm / "clawpen-ahost-test")
    assert host.disk_layout(apart, None) == []


# --- clawpen's unit -------------------------------------------------------------------------


def unit_root(tmp_path: Path, text: str) -> Path:
    write(tmp_path, hostsys.UNIT, text)
    return tmp_path


def test_unit_systemd_analyze_offline(tmp_path: Path) -> None:
    weak = unit_root(tmp_path / "weak", "[Service]\nExecStart=/usr/bin/clawpen daemon\n")
    found = by_check(hostsys.unit(ctx(weak)))
    assert found["host.unit.exposure"][0].severity is Severity.HIGH
    assert found["host.unit.exposure"][0].data["label"] in ("EXPOSED", "UNSAFE")
    good = unit_root(
        tmp_path / "good", render_unit("/usr/bin/clawpen", Path("/var/lib/clawpen"), python=None)
    )
    assert hostsys.unit(ctx(good)) == []


def test_unit_directives_without_systemd_analyze(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostsys, "run_command", lambda argv, timeout=10.0: None)
    weak = unit_root(tmp_path, "[Service]\nExecStart=/usr/bin/clawpen daemon\nNoNewPrivileges=yes\n")
    found = by_check(hostsys.unit(ctx(weak)))
    lacks = found["host.unit.hardening"][0]
    assert lacks.severity is Severity.HIGH and "NoNewPrivileges" not in lacks.data["missing"]
    assert "ProtectSystem" in lacks.data["missing"] and "User=" in lacks.why
    # a drop-in that resets a directive brings it back
    unit_root(tmp_path, render_unit("/usr/bin/clawpen", Path("/var/lib/clawpen"), python=None))
    assert hostsys.unit(ctx(tmp_path)) == []
    write(tmp_path, hostsys.UNIT + ".d/override.conf", "[Service]\nPrivateTmp=\nNoNewPrivileges=no\n")
    lacks = hostsys.unit(ctx(tmp_path))[0]
    assert lacks.severity is Severity.MEDIUM and lacks.data["missing"] == ["NoNewPrivileges", "PrivateTmp"]


def test_unit_missing_is_info(tmp_path: Path) -> None:
    assert [f.severity for f in hostsys.unit(ctx(tmp_path))] == [Severity.INFO]


# --- time sync ------------------------------------------------------------------------------


def test_time_sync_packages(tmp_path: Path) -> None:
    dpkg(tmp_path, "apt")
    found = by_check(hostsys.time_sync(ctx(tmp_path)))
    assert found["host.time.sync"][0].severity is Severity.MEDIUM
    dpkg(tmp_path, "apt", "chrony")
    assert hostsys.time_sync(ctx(tmp_path)) == []


# --- snapshots (the spec) -------------------------------------------------------------------


def spec_file(tmp_path: Path, extra: str) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    return write(
        tmp_path,
        "/clawpen.toml",
        '[bots.scraper]\ncommand = ["python3", "main.py"]\nworkspace = "./data"\n' + extra,
    )


def test_snapshots_missing_and_configured(tmp_path: Path) -> None:
    spec = spec_file(tmp_path, "")
    found = by_check(host.run(ctx(tmp_path / "root", spec_path=spec)))
    snaps = {f.subject: f for f in found["host.snapshots.none"]}
    assert snaps["bot:scraper"].severity is Severity.MEDIUM and snaps["bot:scraper"].where == str(spec)
    assert snaps["state"].severity is Severity.LOW
    assert "repository" not in snaps  # nothing scheduled yet: the tier question does not arise
    spec = spec_file(
        tmp_path,
        'snapshots = { every = "24h" }\n\n[snapshots]\nstate_every = "24h"\n',
    )
    found = by_check(host.run(ctx(tmp_path / "root", spec_path=spec)))
    assert [f.subject for f in found["host.snapshots.none"]] == ["repository"]
    off_disk = tmp_path / "warm"
    spec = spec_file(
        tmp_path,
        f'snapshots = {{ every = "24h" }}\n\n[snapshots]\nstate_every = "24h"\n\n'
        f'[storage.warm]\nrepository = "{off_disk}"\n',
    )
    assert "host.snapshots.none" not in by_check(host.run(ctx(tmp_path / "root", spec_path=spec)))


def test_bad_spec_is_info_not_crash(tmp_path: Path) -> None:
    spec = write(tmp_path, "/clawpen.toml", "[bots.x\n")
    found = by_check(host.run(ctx(tmp_path / "root", spec_path=spec)))
    assert [f.severity for f in found["host.spec.unreadable"]] == [Severity.INFO]


# --- listening sockets and the firewall (parsing; the live parts: integration) ---------------

TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 101 1
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 102 1
   2: 0A00000A:0016 0B00000A:D431 01 00000000:00000000 00:00000000 00000000     0        0 103 1
"""
TCP6 = """  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:1F91 00000000000000000000000000000000:0000 0A 0 0 0 0 0 104 1
   1: 00000000000000000000000001000000:1F92 00000000000000000000000000000000:0000 0A 0 0 0 0 0 105 1
   2: 0000000000000000FFFF00000100007F:1F93 00000000000000000000000000000000:0000 0A 0 0 0 0 0 106 1
"""


def test_parse_proc_net_tables(tmp_path: Path) -> None:
    import sys

    if sys.byteorder != "little":
        pytest.fail("the sample tables are written for a little-endian host")
    (tmp_path / "net").mkdir()
    (tmp_path / "net/tcp").write_text(TCP)
    (tmp_path / "net/tcp6").write_text(TCP6)
    got = [(x.endpoint, x.public, x.inode) for x in hostnet.listeners(tmp_path)]
    assert got == [
        ("tcp/0.0.0.0:22", True, 102),  # the established one (state 01) is no listener
        ("tcp/127.0.0.1:8080", False, 101),
        ("tcp/[::]:8081", True, 104),
        ("tcp/[::1]:8082", False, 105),
        ("tcp/[::ffff:127.0.0.1]:8083", False, 106),
    ]


def fake_nft(
    monkeypatch: pytest.MonkeyPatch, tables: set[tuple[str, str]], chains: list[dict[str, object]]
) -> None:
    monkeypatch.setattr(hostnet, "nft_state", lambda: (tables, chains))


def drop_chain(family: str, table: str) -> dict[str, object]:
    return {
        "family": family,
        "table": table,
        "name": "input",
        "type": "filter",
        "hook": "input",
        "policy": "drop",
    }


def test_firewall_states(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nft(monkeypatch, set(), [])
    assert [(f.check, f.severity) for f in hostnet.firewall_findings(False)] == [
        ("host.firewall.none", Severity.HIGH)
    ]
    assert [(f.check, f.severity) for f in hostnet.firewall_findings(True)] == [
        ("host.firewall.not_applied", Severity.HIGH)
    ]
    fake_nft(monkeypatch, {("ip", "filter")}, [drop_chain("ip", "filter")])
    assert [f.check for f in hostnet.firewall_findings(False)] == ["host.firewall.partial"]
    fake_nft(monkeypatch, {("inet", "other")}, [drop_chain("inet", "other")])
    assert hostnet.firewall_findings(False) == []
    assert [(f.check, f.severity) for f in hostnet.firewall_findings(True)] == [
        ("host.firewall.not_applied", Severity.MEDIUM)
    ]
    fake_nft(monkeypatch, {hostnet.FIREWALL_TABLE}, [drop_chain(*hostnet.FIREWALL_TABLE)])
    assert hostnet.firewall_findings(True) == []
    monkeypatch.setattr(hostnet, "nft_state", lambda: None)
    assert "nft is not installed" in hostnet.firewall_findings(False)[0].title


def test_not_live_reads_no_live_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kw: object) -> None:
        raise AssertionError("a root that is not live ran a live probe")

    monkeypatch.setattr(hostnet, "port_findings", boom)
    monkeypatch.setattr(hostnet, "nft_state", boom)
    monkeypatch.setattr(host, "resources", boom)
    monkeypatch.setattr(hostsys, "process_names", boom)
    monkeypatch.setattr(hostsys, "live_sysctl_at", boom)
    found = host.run(ctx(tmp_path))
    # an empty root: no findings but the missing unit and time sync (nothing installed)
    assert sorted(f.check for f in found) == ["host.time.sync", "host.unit.missing"]


def test_command_missing_is_none() -> None:
    assert hostread.run_command(["clawpen-no-such-program-xyz"]) is None
    done = hostread.run_command(["true"])
    assert done is not None and done.returncode == 0
    assert isinstance(done, subprocess.CompletedProcess)


def test_whole_root_weak_then_hardened_scores_better(tmp_path: Path) -> None:
    from clawpen.assess.model import score

    dpkg(tmp_path, "openssh-server", "unattended-upgrades")
    write(tmp_path, hostssh.MAIN, "Include /etc/ssh/sshd_config.d/*.conf\nPermitRootLogin yes\nUsePAM yes\n")
    write(tmp_path, "/etc/passwd", "root:x:0:0:root:/root:/bin/bash\nops:x:1000:1000::/home/ops:/bin/bash\n")
    write(tmp_path, "/etc/shadow", "root:$6$a$b:19000::::::\nops:$6$c$d:19000::::::\n")
    write(tmp_path, "/etc/apt/sources.list", SOURCES + SECURITY)
    write(tmp_path, "/etc/apt/apt.conf.d/20auto-upgrades", 'APT::Periodic::Unattended-Upgrade "1";\n')
    write(tmp_path, "/etc/sysctl.d/60-weak.conf", "fs.protected_symlinks = 0\n")
    write(tmp_path, hostsys.UNIT, "[Service]\nExecStart=/usr/bin/clawpen daemon\n")
    weak = host.run(ctx(tmp_path))
    assert {"host.ssh.password_login", "host.ssh.root_login", "host.users.password_login"} <= {
        f.check for f in weak
    }
    # what `clawpen host harden apply` and `clawpen daemon install` would write
    write(
        tmp_path,
        "/etc/ssh/sshd_config.d/00-clawpen.conf",
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin no\n"
        "X11Forwarding no\nMaxAuthTries 3\n",
    )
    write(tmp_path, "/etc/shadow", "root:!$6$a$b:19000::::::\nops:!$6$c$d:19000::::::\n")
    write(tmp_path, "/etc/apt/apt.conf.d/99clawpen-updates", 'APT::Periodic::Unattended-Upgrade "0";\n')
    write(tmp_path, "/etc/sysctl.d/99-clawpen.conf", "fs.protected_symlinks = 1\n")
    write(tmp_path, hostsys.UNIT, render_unit("/usr/bin/clawpen", Path("/var/lib/clawpen"), python=None))
    hardened = host.run(ctx(tmp_path))
    assert score(hardened) < score(weak)
    left = {f.check for f in hardened if f.severity > Severity.LOW}
    assert left == {"host.time.sync"}, left  # nothing in the root syncs the clock


def test_legacy_iptables_drop_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[list[str]] = []

    def fake(argv: list[str], timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        asked.append(argv)
        policy = "DROP" if argv[0] == "iptables-legacy" else "ACCEPT"
        return subprocess.CompletedProcess(argv, 0, f"-P INPUT {policy}\n-A INPUT -i lo -j ACCEPT\n", "")

    monkeypatch.setattr(hostnet, "run_command", fake)
    (tmp_path / "net").mkdir()
    assert hostnet.legacy_drops(tmp_path) == [] and asked == []  # no table loaded: nothing asked
    (tmp_path / "net/ip_tables_names").write_text("nat\nfilter\n")
    (tmp_path / "net/ip6_tables_names").write_text("filter\n")
    drops = hostnet.legacy_drops(tmp_path)
    assert [d["family"] for d in drops] == ["ip"] and len(asked) == 2


def test_port_owner_decides_severity(monkeypatch: pytest.MonkeyPatch) -> None:
    items = [
        hostnet.Listener("tcp", "0.0.0.0", 8080, 1),
        hostnet.Listener("tcp", "::", 443, 2),
        hostnet.Listener("tcp", "192.0.2.4", 9200, 3),
        hostnet.Listener("udp", "0.0.0.0", 5353, 4),
        hostnet.Listener("tcp", "127.0.0.1", 9464, 5),
    ]
    who = {
        1: hostnet.Owner(
            10, "python3", "clawpen.service", ("/usr/bin/python3", "-I", "-m", "clawpen", "daemon")
        ),
        2: hostnet.Owner(
            11, "python3", "clawpen.service", ("/usr/bin/python3", "-I", "-m", "clawpen.net.portrelay")
        ),
        3: hostnet.Owner(12, "java", "elasticsearch.service", ("/usr/bin/java",)),
    }
    monkeypatch.setattr(hostnet, "listeners", lambda: items)
    monkeypatch.setattr(hostnet, "owners", lambda inodes: {i: o for i, o in who.items() if i in inodes})
    got = {f.subject: f for f in hostnet.port_findings()}
    assert set(got) == {"tcp/0.0.0.0:8080", "tcp/[::]:443", "tcp/192.0.2.4:9200", "udp/0.0.0.0:5353"}
    api = got["tcp/0.0.0.0:8080"]
    assert (api.check, api.severity) == ("host.ports.clawpen_public", Severity.HIGH)
    assert got["tcp/[::]:443"].severity is Severity.INFO  # a bot's published port: the spec group's
    es = got["tcp/192.0.2.4:9200"]
    assert es.severity is Severity.HIGH and "Elasticsearch" in es.title and "elasticsearch.service" in es.fix
    unknown = got["udp/0.0.0.0:5353"]
    assert unknown.severity is Severity.MEDIUM and "unknown process" in unknown.title


def test_disk_layout_workspace_of_spec(tmp_path: Path) -> None:
    spec = spec_file(tmp_path, "")
    from clawpen.spec.loader import load_spec

    live = AuditContext(root=Path("/"), live=True, spec_path=spec)
    found = by_check(host.disk_layout(live, load_spec(spec)))
    ws = found["host.disk.shared_with_system"]
    assert [f.subject for f in ws] == ["bot:scraper"] and ws[0].where == str(tmp_path / "data")


def test_fifo_in_root_does_not_block(tmp_path: Path) -> None:
    write(tmp_path, "/etc/passwd", "root:x:0:0:root:/root:/bin/bash\n")
    os.mkfifo(tmp_path / "etc/shadow")
    found = by_check(hostusers.users(ctx(tmp_path)))  # would hang in open() without O_NONBLOCK
    assert [f.severity for f in found["host.users.unreadable"]] == [Severity.INFO]


def test_include_paths_of_the_live_root_are_plain() -> None:
    live = AuditContext(root=Path("/"), live=True)
    found = hostssh._include_targets(live, "/etc/*")
    assert found and all(str(p).startswith("/etc/") and not str(p).startswith("//") for p in found)
