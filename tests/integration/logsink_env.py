"""Real log receivers for the shipping tests, on loopback, each with its own files.

- :func:`rsyslog_tls`: Debian's rsyslogd with an imtcp TLS listener (gtls driver, a private CA
  and server certificate made here; ``client_auth`` asks for a client certificate signed by the
  same CA) and, with ``plain``, a second plain TCP listener (for ``logger`` as a baseline). Each
  message of app ``clawpen`` is written by omfile as ``STRUCTURED-DATA<TAB>MSG``.
- :func:`journal_remote`: systemd-journal-remote over HTTP, read back with ``journalctl --file``.

Both give a :class:`LogSink` with ``stop()``/``start()`` (an outage on the same port) and
``lines()`` (what arrived, parsed, in arrival order).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

RSYSLOGD = "/usr/sbin/rsyslogd"
JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
SERVER_NAME = "logs.test"
_SD_PARAM = re.compile(r'([A-Za-z0-9_.-]+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Line:
    bot: str
    stream: str
    text: str
    replica: str = ""
    release: str = ""
    host: str = ""


@dataclass(frozen=True)
class Pki:
    """A CA and certificates it signed (PEM files)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """A TCP socket listens on ``port`` (from /proc/net/tcp, without connecting to it)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for row in fh.readlines()[1:]:
                cols = row.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def make_pki(folder: Path, name: str = "test CA", server_name: str = SERVER_NAME) -> Pki:
    """A private CA with a server certificate (``server_name``, 127.0.0.1) and a client one."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(stem: str, cn: str, server: bool) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [x509.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if server:
            import ipaddress

            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName(cn), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(folder / f"{stem}.key", key)

    leaf("server", server_name, True)
    leaf("client", "clawpen-shipper", False)
    return Pki(
        folder / "ca.pem",
        folder / "server.pem",
        folder / "server.key",
        folder / "client.pem",
        folder / "client.key",
    )


@dataclass
class LogSink:
    """A receiver process that can be stopped and started again on the same port."""

    name: str
    port: int
    folder: Path
    argv: list[str]
    ready: Callable[[], bool]
    read: Callable[[], list[Line]]
    pki: Pki | None = None
    plain_port: int | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """journal-remote's URL (the certificate names 127.0.0.1 too)."""
        return f"{'https' if self.pki is not None else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None, f"{self.name} already runs"
        log = open(self.folder / f"{self.name}.stderr", "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        try:
            _wait(lambda: self.ready() or self.proc is None or self.proc.poll() is not None, 15, "start")
        except TimeoutError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            self.proc = None
            raise RuntimeError(f"{self.name} exited at start: {self.stderr()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        _wait(lambda: not listening(self.port), 10, "port closed")

    def pause(self) -> None:
        """A hung receiver (SIGSTOP): its TCP still takes bytes until its buffer is full."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stderr(self) -> str:
        path = self.folder / f"{self.name}.stderr"
        return path.read_text(errors="replace") if path.exists() else ""

    def lines(self) -> list[Line]:
        return self.read()

    def wait_lines(self, count: int, timeout: float = 30) -> list[Line]:
        """What arrived, once there are at least ``count`` lines (or the timeout passed)."""
        deadline = time.monotonic() + timeout
        got = self.read()
        while len(got) < count and time.monotonic() < deadline:
            time.sleep(0.1)
            got = self.read()
        return got


def _sd_unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def parse_rsyslog_line(row: str) -> Line:
    sd, _, text = row.partition("\t")
    params = {k: _sd_unescape(v) for k, v in _SD_PARAM.findall(sd)}
    return Line(
        bot=params.get("bot", ""),
        stream=params.get("stream", ""),
        text=text,
        replica=params.get("replica", ""),
        release=params.get("release", ""),
        host=params.get("host", ""),
    )


def _rsyslog_conf(folder: Path, pki: Pki, port: int, plain_port: int | None, client_auth: bool) -> str:
    mode = 'StreamDriver.Authmode="x509/certvalid"' if client_auth else 'StreamDriver.Authmode="anon"'
    plain = ""
    if plain_port is not None:
        plain = f'input(type="imtcp" port="{plain_port}" address="127.0.0.1" ruleset="ship" name="plain")\n'
    return f"""
global(workDirectory="{folder}/work"
       DefaultNetstreamDriver="gtls"
       DefaultNetstreamDriverCAFile="{pki.ca}"
       DefaultNetstreamDriverCertFile="{pki.server_cert}"
       DefaultNetstreamDriverKeyFile="{pki.server_key}")
module(load="imtcp" MaxSessions="200")
template(name="shipped" type="string" string="%structured-data%\\t%msg%\\n")
template(name="internal" type="string" string="%timegenerated% %syslogtag%%msg%\\n")
ruleset(name="ship") {{
  action(type="omfile" file="{folder}/messages.log" template="shipped")
}}
input(type="imtcp" port="{port}" address="127.0.0.1" ruleset="ship" name="tls"
      StreamDriver.Name="gtls" StreamDriver.Mode="1" {mode})
{plain}
action(type="omfile" file="{folder}/internal.log" template="internal")
"""


@contextlib.contextmanager
def rsyslog_tls(tmp: Path, *, client_auth: bool = False, plain: bool = False) -> Iterator[LogSink]:
    """A running rsyslogd with a TLS listener on 127.0.0.1 (see the module doc)."""
    folder = tmp / "rsyslog"
    (folder / "work").mkdir(parents=True, exist_ok=True)
    pki = make_pki(folder / "pki")
    port = free_port()
    plain_port = free_port() if plain else None
    conf = folder / "rsyslog.conf"
    conf.write_text(_rsyslog_conf(folder, pki, port, plain_port, client_auth))
    out = folder / "messages.log"

    def read() -> list[Line]:
        if not out.exists():
            return []
        return [parse_rsyslog_line(r) for r in out.read_text(errors="replace").splitlines()]

    def ready() -> bool:
        return listening(port) and (plain_port is None or listening(plain_port))

    sink = LogSink(
        name="rsyslogd",
        port=port,
        folder=folder,
        argv=[RSYSLOGD, "-n", "-f", str(conf), "-i", str(folder / "rsyslogd.pid")],
        ready=ready,
        read=read,
        pki=pki,
        plain_port=plain_port,
    )
    try:
        sink.start()
        yield sink
    finally:
        sink.stop()


def _journal_value(value: object) -> str:
    if isinstance(value, list):  # binary-safe field: journalctl gives the bytes
        return bytes(int(b) for b in value).decode("utf-8", errors="replace")
    return str(value)


@contextlib.contextmanager
def journal_remote(tmp: Path, *, https: bool = False) -> Iterator[LogSink]:
    """A running systemd-journal-remote on 127.0.0.1, one output journal file. Over HTTP, or
    with ``https`` over HTTPS with a private CA (Debian's build has no ``--trust``: it checks no
    client certificate)."""
    folder = tmp / "journal-remote"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    pki = make_pki(folder / "pki") if https else None
    listen = [f"--listen-http=127.0.0.1:{port}"]
    if pki is not None:
        listen = [f"--listen-https=127.0.0.1:{port}", f"--key={pki.server_key}", f"--cert={pki.server_cert}"]
    out = folder / "remote.journal"

    def read() -> list[Line]:
        # a journal not closed cleanly (SIGKILL) is renamed remote@<id>-<16 hex: time>.journal~ at
        # the next start: those first (by name = by time), the current file last
        files = sorted(folder.glob("remote*.journal*"), key=lambda p: (p.name == out.name, p.name))
        if not files:
            return []
        rows = []
        for path in files:  # one file at a time: each in its own write order
            res = subprocess.run(
                ["journalctl", "--file", str(path), "-o", "json", "--all", "--no-pager"],
                capture_output=True,
                timeout=60,
                check=False,
                env={**os.environ, "SYSTEMD_COLORS": "0"},
            )
            rows += [json.loads(r) for r in res.stdout.splitlines() if r.strip()]
        return [
            Line(
                bot=_journal_value(e.get("CLAWPEN_BOT", "")),
                stream=_journal_value(e.get("CLAWPEN_STREAM", "")),
                text=_journal_value(e.get("MESSAGE", "")),
                replica=_journal_value(e.get("CLAWPEN_REPLICA", "")),
                release=_journal_value(e.get("CLAWPEN_RELEASE", "")),
                host=_journal_value(e.get("_HOSTNAME", "")),
            )
            for e in rows
        ]

    sink = LogSink(
        name="journal-remote",
        port=port,
        folder=folder,
        argv=[JOURNAL_REMOTE, "--split-mode=none", *listen, f"--output={out}"],
        ready=lambda: listening(port),
        read=read,
        pki=pki,
    )
    try:
        sink.start()
        yield sink
    finally:
        sink.stop()
