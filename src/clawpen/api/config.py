"""Where the HTTP API listens, and whether that is allowed: ``HOST:PORT`` (default
``127.0.0.1:8080``) from ``clawpen daemon --listen`` or ``CLAWPEN_API_LISTEN``; ``off`` turns the
API off. A non-loopback address needs TLS (certificate and key) or an explicit
``--insecure-bind``; bad values are a UsageError before the daemon starts anything.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from typing import NamedTuple

from clawpen.errors import UsageError
from clawpen.spec import listen as listen_rule
from clawpen.spec.rules import RuleViolation

DEFAULT_LISTEN = "127.0.0.1:8080"
ENV_LISTEN = "CLAWPEN_API_LISTEN"
ENV_CERT = "CLAWPEN_API_TLS_CERT"
ENV_KEY = "CLAWPEN_API_TLS_KEY"
ENV_INSECURE = "CLAWPEN_API_INSECURE_BIND"


class ApiConfig(NamedTuple):
    host: str
    port: int
    tls_cert: str | None = None
    tls_key: str | None = None
    insecure_bind: bool = False

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    def url(self, port: int | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port if port is None else port}/"

    def env(self) -> dict[str, str]:
        """The environment that makes :func:`from_env` return this config again."""
        out = {ENV_LISTEN: f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"}
        if self.tls_cert and self.tls_key:
            out.update({ENV_CERT: self.tls_cert, ENV_KEY: self.tls_key})
        if self.insecure_bind:
            out[ENV_INSECURE] = "1"
        return out


def parse_listen(value: str, *, flag: str = "--listen") -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` -> (host, port); the host is an IP address or localhost."""
    try:
        return listen_rule.split_listen(value, flag, any_port=True)
    except RuleViolation as err:
        raise UsageError(str(err), where=flag, hint=f'{err.hint}, or "off"') from None


def is_loopback(host: str) -> bool:
    return listen_rule.is_loopback(host)


def make_config(
    listen: str | None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    insecure_bind: bool = False,
    *,
    flag: str = "--listen",
) -> ApiConfig | None:
    """A checked config, or None when the API is off. Raises UsageError (exit 2) when the
    address is malformed, a non-loopback address has neither TLS nor ``insecure_bind``, or the
    certificate and key do not load."""
    text = (listen or DEFAULT_LISTEN).strip()
    if text.lower() in ("off", "none", "no"):
        return None
    host, port = parse_listen(text, flag=flag)
    if bool(tls_cert) != bool(tls_key):
        raise UsageError(
            "TLS needs both a certificate and its key",
            where="--tls-cert/--tls-key",
            hint="pass both --tls-cert FILE and --tls-key FILE",
        )
    if tls_cert and tls_key:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(tls_cert, tls_key)
        except (OSError, ssl.SSLError) as err:
            raise UsageError(
                f"the TLS certificate or key does not load: {err.__class__.__name__}: {err.strerror or err}",
                where=f"{tls_cert}, {tls_key}",
                hint="give a PEM certificate (chain) and its unencrypted PEM private key",
            ) from None
    try:
        listen_rule.check_listener(
            f"the API ({flag})",
            host,
            opted_in=bool(tls_cert) or insecure_bind,
            opt_in="add --tls-cert FILE --tls-key FILE, or --insecure-bind if something else encrypts "
            "the traffic (a reverse proxy, a VPN)",
        )
    except listen_rule.PublicListener as err:
        raise UsageError(
            f"refusing to serve the API on {host} without TLS: {err}", where=flag, hint=err.hint
        ) from None
    return ApiConfig(host, port, tls_cert or None, tls_key or None, insecure_bind)


def config_from_env(env: Mapping[str, str] | None = None) -> ApiConfig | None:
    """The config the daemon was given (``clawpen daemon`` exports its flags in these variables)."""
    env = os.environ if env is None else env
    return make_config(
        env.get(ENV_LISTEN),
        env.get(ENV_CERT),
        env.get(ENV_KEY),
        env.get(ENV_INSECURE, "") not in ("", "0", "false", "no"),
        flag=ENV_LISTEN if env.get(ENV_LISTEN) else "--listen",
    )


def apply_daemon_flags(
    listen: str | None, tls_cert: str | None, tls_key: str | None, insecure_bind: bool
) -> ApiConfig | None:
    """``clawpen daemon``'s API flags over the environment: checked now (UsageError, exit 2,
    before the daemon starts anything), then exported for the API component to read."""
    env = os.environ
    config = make_config(
        listen or env.get(ENV_LISTEN),
        tls_cert or env.get(ENV_CERT),
        tls_key or env.get(ENV_KEY),
        insecure_bind or env.get(ENV_INSECURE, "") not in ("", "0", "false", "no"),
        flag="--listen" if listen or not env.get(ENV_LISTEN) else ENV_LISTEN,
    )
    for name in (ENV_LISTEN, ENV_CERT, ENV_KEY, ENV_INSECURE):
        env.pop(name, None)
    env.update(config.env() if config else {ENV_LISTEN: "off"})
    return config
