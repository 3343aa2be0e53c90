import os
import socket

import pytest

from clawpen.spec.rules import RuleViolation, check_bot_name, check_env_name, check_host_path


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/etc",
        "/usr",
        "/root",
        "/home",
        "/var/run/docker.sock",
        "/run",
        "/proc",
        "/sys",
        "/dev",
        "/etc/cron.d",
        "/usr/local/bin",
        "/var",
        "/tmp",
        "/boot",
        "/var/lib/docker/volumes",
        "/opt",
    ],
)
def test_writable_system_paths_are_refused_with_a_reason(path, tmp_path):
    with pytest.raises(RuleViolation) as err:
        check_host_path(path, writable=True, base_dir=str(tmp_path))
    assert "refusing" in str(err.value)
    assert err.value.hint


def test_home_and_ssh_are_refused(tmp_path, monkeypatch):
    home = tmp_path / "home" / "alice"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    for raw, writable in (
        (str(home), True),
        (str(home), False),
        (str(home / ".ssh"), False),
        ("~/.ssh", True),
    ):
        with pytest.raises(RuleViolation):
            check_host_path(raw, writable=writable, base_dir="/")
    (home / "bots" / "ws").mkdir(parents=True)
    assert check_host_path("~/bots/ws", writable=True, base_dir="/") == str(home / "bots" / "ws")


def test_read_only_secrets_are_refused(tmp_path):
    for path in ("/etc/shadow", "/etc", "/", "/root", "/etc/ssh"):
        with pytest.raises(RuleViolation):
            check_host_path(path, writable=False, base_dir=str(tmp_path))
    assert check_host_path("/usr/share", writable=False, base_dir=str(tmp_path)) == "/usr/share"


def test_symlink_to_etc_is_resolved_and_refused(tmp_path):
    link = tmp_path / "innocent"
    link.symlink_to("/etc")
    with pytest.raises(RuleViolation) as err:
        check_host_path("innocent", writable=True, base_dir=str(tmp_path))
    assert "/etc" in str(err.value)


def test_relative_paths_resolve_against_base_dir(tmp_path):
    (tmp_path / "ws").mkdir()
    assert check_host_path("./ws", writable=True, base_dir=str(tmp_path)) == str(tmp_path / "ws")


def test_unix_sockets_are_refused(tmp_path):
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)
        with pytest.raises(RuleViolation) as err:
            check_host_path(path, writable=False, base_dir="/")
    assert "socket" in str(err.value)
    os.unlink(path)


def test_names():
    assert check_bot_name("gateway-1") == "gateway-1"
    for bad in ("Gateway", "1bot", "a" * 40, "bad_name", ""):
        with pytest.raises(RuleViolation):
            check_bot_name(bad)
    assert check_env_name("OPENAI_API_KEY")
    with pytest.raises(RuleViolation):
        check_env_name("1X")


def test_mount_with_sandbox_path(tmp_path):
    from clawpen.spec.rules import check_mount

    (tmp_path / "bot").mkdir()
    assert check_mount("./bot:/app", writable=False, base_dir=str(tmp_path)) == (
        str(tmp_path / "bot"),
        "/app",
    )
    assert check_mount("./bot", writable=False, base_dir=str(tmp_path)) == (str(tmp_path / "bot"),) * 2
    for bad in ("./bot:app", "./bot:/proc/x", "./bot:/", "./bot:/etc", "./bot:/a/../b"):
        with pytest.raises(RuleViolation):
            check_mount(bad, writable=False, base_dir=str(tmp_path))
