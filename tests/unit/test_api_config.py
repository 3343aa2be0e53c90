"""The API's listen address and TLS rules, checked before the daemon starts anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from clawpen.api.config import (
    ENV_CERT,
    ENV_INSECURE,
    ENV_KEY,
    ENV_LISTEN,
    config_from_env,
    make_config,
    parse_listen,
)
from clawpen.errors import UsageError
from selfsigned import self_signed


def test_listen_forms() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    assert parse_listen("localhost:0") == ("localhost", 0)
    for bad in (
        "8080",
        "127.0.0.1",
        "127.0.0.1:http",
        "127.0.0.1:70000",
        "example.com:80",
        "[::1]9000",
        ":80",
    ):
        with pytest.raises(UsageError) as err:
            parse_listen(bad)
        assert err.value.hint and "HOST:PORT" in err.value.hint


def test_default_is_loopback_8080_and_off_turns_it_off() -> None:
    config = make_config(None)
    assert config is not None and (config.host, config.port, config.scheme) == ("127.0.0.1", 8080, "http")
    assert config.url() == "http://127.0.0.1:8080/"
    assert make_config("off") is None
    assert config_from_env({ENV_LISTEN: "off"}) is None


def test_non_loopback_needs_tls_or_insecure_bind() -> None:
    for host in ("0.0.0.0:8080", "192.168.1.5:8080", "[::]:8080"):
        with pytest.raises(UsageError) as err:
            make_config(host)
        assert "not a loopback address" in err.value.what
        assert "--tls-cert" in (err.value.hint or "") and "--insecure-bind" in (err.value.hint or "")
    allowed = make_config("0.0.0.0:8080", insecure_bind=True)
    assert allowed is not None and allowed.insecure_bind
    assert make_config("[::1]:8080") is not None  # IPv6 loopback needs neither
    assert config_from_env({ENV_LISTEN: "0.0.0.0:1", ENV_INSECURE: "1"}) is not None
    with pytest.raises(UsageError):
        config_from_env({ENV_LISTEN: "0.0.0.0:1", ENV_INSECURE: "0"})


def _pair(folder: Path) -> tuple[Path, Path]:
    return self_signed(folder)


def test_tls_pair_is_loaded_and_checked(tmp_path: Path) -> None:
    cert, key = _pair(tmp_path)
    config = make_config("0.0.0.0:8443", str(cert), str(key))
    assert config is not None and config.scheme == "https" and config.url(9) == "https://0.0.0.0:9/"
    again = config_from_env(config.env())
    assert again == config
    with pytest.raises(UsageError, match="both a certificate and its key"):
        make_config("127.0.0.1:1", str(cert), None)
    with pytest.raises(UsageError, match="does not load"):
        make_config("127.0.0.1:1", str(key), str(cert))  # swapped
    with pytest.raises(UsageError, match="does not load"):
        make_config("127.0.0.1:1", str(tmp_path / "missing.pem"), str(key))
    assert config_from_env({ENV_CERT: str(cert), ENV_KEY: str(key)}) is not None
