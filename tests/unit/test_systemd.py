"""clawpen.service: what render_unit writes, how it quotes paths, and how install_unit installs it."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from clawpen import fsutil
from clawpen.daemon import systemd
from clawpen.daemon.systemd import install_unit, next_steps, render_unit
from clawpen.errors import HostError

EXE = "/opt/clawpen/.venv/bin/clawpen"
STATE = Path("/var/lib/clawpen")


def directives(text: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit, values in order of appearance (comments and sections skipped)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, sep, value = line.partition("=")
            assert sep, line
            out.setdefault(key, []).append(value)
    return out


def words(value: str) -> list[str]:
    """A value split and unquoted the way systemd does for the strings we write (then ``%%`` -> ``%``)."""
    return [w.replace("%%", "%") for w in shlex.split(value)]


def test_default_unit_has_the_hardening_and_the_supervision_settings() -> None:
    text = render_unit(EXE, STATE, python=None)
    d = directives(text)
    assert text.endswith("\n") and "[Service]" in text and "WantedBy=multi-user.target" in text
    assert words(d["ExecStart"][0]) == [EXE, "daemon"]
    single = {k: v[0] for k, v in d.items() if len(v) == 1}
    for key, value in {
        "Type": "simple",
        "Restart": "always",
        "RestartSec": "1",
        "KillMode": "process",
        "Delegate": "yes",
        "UMask": "0077",
        "StateDirectory": "clawpen",
        "StateDirectoryMode": "0700",
        "ProtectSystem": "strict",
        "ProtectHome": "read-only",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "PrivateMounts": "yes",
        "NoNewPrivileges": "yes",
        "ProtectKernelModules": "yes",
        "ProtectClock": "yes",
        "ProtectProc": "invisible",
        "LockPersonality": "yes",
        "RestrictSUIDSGID": "yes",
        "SystemCallArchitectures": "native",
        "SystemCallErrorNumber": "EPERM",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    }.items():
        assert single.get(key) == value, key
    assert d["ReadWritePaths"] == ["/sys/fs/cgroup"]  # the state folder comes with StateDirectory=
    assert "Environment" not in d
    assert set(single["CapabilityBoundingSet"].split()) == {
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SYS_ADMIN",
        "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE",
        "CAP_NET_ADMIN",
        "CAP_NET_BIND_SERVICE",
    }
    assert set(single["RestrictNamespaces"].split()) == {"user", "pid", "net", "mnt", "ipc", "uts", "cgroup"}
    allowed, denied = d["SystemCallFilter"]
    assert {"@system-service", "@mount", "sethostname"} <= set(allowed.split())
    assert denied.startswith("~") and "@debug" in denied and "@mount" not in denied
    # each of these would break bubblewrap or the bots (see the module docstring)
    for key in (
        "ProtectKernelTunables",
        "ProtectKernelLogs",
        "ProtectHostname",
        "ProtectControlGroups",
        "ProcSubset",
        "MemoryDenyWriteExecute",
        "PrivateUsers",
        "User",
        "DynamicUser",
    ):
        assert key not in d, key


def test_python_runs_the_module_isolated() -> None:
    d = directives(render_unit(EXE, STATE, python="/usr/bin/python3"))
    assert words(d["ExecStart"][0]) == ["/usr/bin/python3", "-I", "-m", "clawpen", "daemon"]


def test_a_state_folder_with_a_space_is_quoted_and_passed_in_the_environment() -> None:
    d = directives(render_unit("/opt/claw pen/bin/clawpen", Path("/srv/claw pen/state"), python=None))
    assert d["ExecStart"] == ['"/opt/claw pen/bin/clawpen" "daemon"']
    assert words(d["Environment"][0]) == ["CLAWPEN_HOME=/srv/claw pen/state"]
    assert [words(v) for v in d["ReadWritePaths"]] == [["/sys/fs/cgroup"], ["/srv/claw pen/state"]]
    assert "StateDirectory" not in d


def test_quotes_backslashes_percent_and_dollar_survive() -> None:
    odd = '/srv/50% "off" $HOME\\x'
    text = render_unit("/opt/50% $cost/clawpen", Path(odd), python=None, writable=[Path(odd + "/ws")])
    d = directives(text)
    assert d["ExecStart"][0].startswith('"/opt/50%% $cost/clawpen"')  # no $ expansion on the program
    assert words(d["Environment"][0]) == [f"CLAWPEN_HOME={odd}"]
    assert [words(v)[0] for v in d["ReadWritePaths"]] == ["/sys/fs/cgroup", odd, f"-{odd}/ws"]


def test_writable_paths_are_optional_and_bound_into_a_hidden_home() -> None:
    ws = [Path("/srv/bots"), Path("/home/alice/bots/")]
    d = directives(render_unit(EXE, STATE, python=None, writable=ws))
    assert d["ReadWritePaths"] == ["/sys/fs/cgroup", '"-/srv/bots"', '"-/home/alice/bots"']
    d = directives(render_unit(EXE, STATE, python=None, writable=ws, protect_home="tmpfs"))
    assert d["ProtectHome"] == ["tmpfs"]
    assert d["ReadWritePaths"] == ["/sys/fs/cgroup", '"-/srv/bots"']
    assert d["BindPaths"] == ['"-/home/alice/bots"']
    d = directives(render_unit(EXE, STATE, python=None, protect_home="yes", writable=[Path("/srv/b")]))
    assert d["ProtectHome"] == ["yes"]


def test_host_network_by_default_and_a_locked_down_unit_without() -> None:
    d = directives(render_unit(EXE, STATE, python=None))
    assert not {"PrivateNetwork", "IPAddressDeny", "IPAddressAllow"} & d.keys()
    assert {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"} <= set(d["CapabilityBoundingSet"][0].split())
    d = directives(render_unit(EXE, STATE, python=None, host_network=False))
    assert d["PrivateNetwork"] == ["yes"]
    assert d["IPAddressDeny"] == ["any"] and d["IPAddressAllow"] == ["localhost"]
    assert "CAP_NET_ADMIN" not in d["CapabilityBoundingSet"][0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"exe": "bin/clawpen"}, "absolute"),
        ({"state_dir": Path("state")}, "absolute"),
        ({"python": "python3"}, "absolute"),
        ({"state_dir": Path("/tmp/clawpen")}, "PrivateTmp"),
        ({"writable": [Path("/var/tmp/ws")]}, "PrivateTmp"),
        ({"exe": "/tmp/x/clawpen"}, "PrivateTmp"),
        ({"exe": "/home/al/.venv/bin/clawpen", "protect_home": "yes"}, "hides"),
        ({"exe": "/root/.venv/bin/clawpen", "protect_home": "tmpfs"}, "hides"),
        ({"writable": [Path("/home/al/ws")], "protect_home": "yes"}, "hides"),
        ({"writable": [Path("/home/al/a:b")], "protect_home": "tmpfs"}, "':'"),
        ({"writable": [Path("/srv/a\nb")]}, "control characters"),
        ({"exe": '/opt/"x"/clawpen'}, "quotes"),
        ({"protect_home": "maybe"}, "protect_home"),
    ],
)
def test_paths_the_unit_would_hide_or_mangle_are_refused(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"exe": EXE, "state_dir": STATE, "python": None} | kwargs
    with pytest.raises(ValueError, match=message):
        render_unit(args.pop("exe"), args.pop("state_dir"), **args)


def test_home_workspaces_stay_visible_by_default() -> None:
    d = directives(render_unit("/home/al/.venv/bin/clawpen", Path("/home/al/state"), python=None))
    assert d["ProtectHome"] == ["read-only"]
    assert '"/home/al/state"' in d["ReadWritePaths"]


@pytest.fixture
def no_systemd(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Pretend systemd is running and record systemctl calls instead of making them."""
    calls: list[list[str]] = []

    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(systemd, "systemd_running", lambda: True)
    monkeypatch.setattr(subprocess, "run", run)
    return calls


def test_install_writes_atomically_with_mode_0644_and_reloads(
    tmp_path: Path, no_systemd: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[Path] = []
    real = fsutil.write_atomic

    def spy(path: Path, data: bytes, mode: int = 0o644) -> None:
        writes.append(path)
        real(path, data, mode)

    monkeypatch.setattr("clawpen.daemon.systemd.write_atomic", spy)
    unit_dir = tmp_path / "etc" / "systemd" / "system"
    text = render_unit(EXE, STATE, python=None)
    old = os.umask(0o077)
    try:
        path = install_unit(text, unit_dir, reload=True)
    finally:
        os.umask(old)
    assert path == unit_dir / "clawpen.service" and writes == [path]
    assert path.read_text() == text
    assert path.stat().st_mode & 0o7777 == 0o644
    assert os.listdir(unit_dir) == ["clawpen.service"]  # no temporary file left behind
    assert no_systemd == [["systemctl", "daemon-reload"]]


def test_install_is_idempotent_and_replaces_a_changed_unit(
    tmp_path: Path, no_systemd: list[list[str]]
) -> None:
    text = render_unit(EXE, STATE, python=None)
    path = install_unit(text, tmp_path, reload=False)
    before = path.stat()
    assert install_unit(text, tmp_path, reload=False) == path
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # left alone
    install_unit(render_unit(EXE, STATE, python="/usr/bin/python3"), tmp_path, reload=False)
    assert path.stat().st_ino != before.st_ino  # renamed over, never rewritten in place
    assert "-m" in path.read_text() and no_systemd == []


def test_no_reload_without_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(systemd, "systemd_running", lambda: False)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("systemctl was called"))
    path = install_unit("[Service]\n", tmp_path, reload=True)
    assert "systemd is not running" in next_steps(path, reloaded=False)


def test_install_failures_are_host_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(HostError, match="cannot write"):
        install_unit("[Service]\n", tmp_path / "file" / "system", reload=False)
    monkeypatch.setattr(systemd, "systemd_running", lambda: True)
    monkeypatch.setattr(
        subprocess, "run", lambda argv, **_: subprocess.CompletedProcess(argv, 1, "", "bus down")
    )
    with pytest.raises(HostError, match="bus down"):
        install_unit("[Service]\n", tmp_path, reload=True)


def test_next_steps_name_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    path = Path("/etc/systemd/system/clawpen.service")
    assert next_steps(path, reloaded=True).endswith("systemctl enable --now clawpen")
    monkeypatch.setattr(systemd, "systemd_running", lambda: True)
    assert next_steps(path, reloaded=False).endswith(
        "systemctl daemon-reload && systemctl enable --now clawpen"
    )
