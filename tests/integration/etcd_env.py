"""One real etcd member (Debian's etcd-server) on loopback ports, for the failover tests that need
no network faults (those use cluster_env.py's 3-member cluster in namespaces)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Etcd:
    """``tls``: (server cert, server key, the CA that signs client certificates): https only,
    and a client must show a certificate that CA signed."""

    def __init__(self, data: Path, tls: tuple[Path, Path, Path] | None = None) -> None:
        self.data = data
        self.tls = tls
        self.client_port, self.peer_port = free_port(), free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.client_port}"
        self.log = data.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, client: tuple[Path, Path] | None = None, ca: Path | None = None) -> None:
        """``client``, ``ca``: the certificate and key the readiness check shows, the CA it
        trusts (with ``tls``)."""
        peer = f"http://127.0.0.1:{self.peer_port}"
        tls: list[str] = []
        if self.tls is not None:
            cert, key, ca = self.tls
            tls = ["--cert-file", str(cert), "--key-file", str(key), "--trusted-ca-file", str(ca),
                   "--client-cert-auth"]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["etcd", "--name", "m0", "--data-dir", str(self.data),
                 "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"m0={peer}", "--heartbeat-interval", "50",
                 "--election-timeout", "500", *tls],
                stdout=log, stderr=log,
            )  # fmt: skip
        verify: ssl.SSLContext | bool = True
        if self.tls is not None:
            verify = ssl.create_default_context(cafile=str(ca or self.tls[0]))
            if client is not None:
                verify.load_cert_chain(str(client[0]), str(client[1]))
        end = time.monotonic() + 20
        while time.monotonic() < end:
            with contextlib.suppress(httpx.HTTPError):
                reply = httpx.get(f"{self.url}/health", timeout=1, verify=verify)
                if reply.json().get("health") == "true":
                    return
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            time.sleep(0.1)
        raise AssertionError(f"etcd did not become healthy: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def etcd_at(tmp: Path) -> Iterator[Etcd]:
    server = Etcd(tmp / "etcd-data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def tls_files(directory: Path, name: str) -> tuple[Path, Path, Path, Path, Path]:
    """A CA ``name`` and two certificates it signs, as etcd clusters use them: (ca, server cert,
    server key for 127.0.0.1, client cert, client key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def write(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
        c, k = directory / f"{name}-{stem}.pem", directory / f"{name}-{stem}.key"
        c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))  # fmt: skip
        return c, k

    def build(cn: str, issuer: x509.Name, public: object) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(issuer)
            .public_key(public)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca = (
        build(f"{name} CA", ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, _ = write("ca", ca, ca_key)
    out: list[Path] = [ca_path]
    # etcd's HTTP gateway reaches its own gRPC server with the server certificate as a client one
    server_use = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    for stem, usage in (("server", server_use), ("client", [ExtendedKeyUsageOID.CLIENT_AUTH])):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = build(f"{name} {stem}", ca_name, key.public_key()).add_extension(
            x509.ExtendedKeyUsage(usage), critical=False
        )
        if stem == "server":
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        out += write(stem, builder.sign(ca_key, hashes.SHA256()), key)
    return out[0], out[1], out[2], out[3], out[4]
