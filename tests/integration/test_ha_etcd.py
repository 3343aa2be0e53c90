"""clawpen.ha.etcd against a real etcd: the election transaction and its fencing tokens, leases
that expire, an endpoint that is down, user/password authentication."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_env import Etcd as EtcdServer
from etcd_env import etcd_at, free_port, tls_files

from clawpen.errors import HostError
from clawpen.ha.etcd import Etcd, EtcdConfig, EtcdUnavailable

pytestmark = [pytest.mark.slow, pytest.mark.etcd]
CLAWPEN = str(Path(sys.executable).with_name("clawpen"))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EtcdServer]:
    with etcd_at(tmp_path) as s:
        yield s


def test_one_winner_per_term_and_each_term_a_larger_token(server: EtcdServer) -> None:
    a, b = Etcd(EtcdConfig((server.url,))), Etcd(EtcdConfig((server.url,)))
    key = "/clawpen/bots/t/leader"
    la, lb = a.grant(5), b.grant(5)
    won_a, token1, _ = a.create(key, "a", lease=la)
    won_b, _, holder = b.create(key, "b", lease=lb)
    assert won_a and not won_b
    assert (
        holder is not None
        and holder.value == b"a"
        and holder.create_revision == token1
        and holder.lease == la
    )
    a.revoke(la)  # the term ends: the key goes with its lease
    assert b.get(key) is None
    won_b, token2, _ = b.create(key, "b", lease=lb)
    assert won_b and token2 > token1
    assert not a.delete_if(key, token1)  # a stale term cannot remove the new one's key
    assert b.get(key) is not None
    assert b.delete_if(key, token2) and b.get(key) is None


def test_a_lease_not_renewed_expires_with_its_key(server: EtcdServer) -> None:
    e = Etcd(EtcdConfig((server.url,)))
    lease = e.grant(2)
    e.put("/x/held", "1", lease=lease)
    assert e.keepalive(lease) == 2
    time.sleep(3.2)
    assert e.get("/x/held") is None
    assert e.keepalive(lease) == -1  # etcd no longer knows it
    e.revoke(lease)  # revoking a gone lease is not an error


def test_a_dead_endpoint_is_skipped_and_all_dead_is_a_clear_error(server: EtcdServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    e = Etcd(EtcdConfig((dead, server.url), timeout=1.0))
    e.put("/x/k", "v")
    assert e.get("/x/k") is not None and e.get("/x/k").value == b"v"  # type: ignore[union-attr]
    only_dead = Etcd(EtcdConfig((dead,), timeout=0.5))
    with pytest.raises(EtcdUnavailable) as err:
        only_dead.get("/x/k")
    assert dead in err.value.what and err.value.hint


def test_user_and_password(server: EtcdServer) -> None:
    def ctl(*args: str) -> None:
        subprocess.run(["etcdctl", f"--endpoints={server.url}", *args], check=True, capture_output=True,
                       env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})  # fmt: skip

    ctl("user", "add", "root:rootpw")
    ctl("user", "add", "bot:s3cret-pw")
    ctl("role", "add", "clawpen")
    ctl("role", "grant-permission", "clawpen", "--prefix=true", "readwrite", "/clawpen/")
    ctl("user", "grant-role", "bot", "clawpen")
    ctl("auth", "enable")
    good = Etcd(EtcdConfig((server.url,), user="bot", password=lambda: b"s3cret-pw"))
    good.put("/clawpen/x", "1")
    assert good.get("/clawpen/x") is not None
    with pytest.raises(HostError) as denied:  # the role reaches /clawpen/ only
        good.put("/elsewhere", "1")
    assert "forbidden" in denied.value.what.lower() or "permission denied" in denied.value.what
    anonymous = Etcd(EtcdConfig((server.url,)))
    with pytest.raises(HostError):
        anonymous.get("/clawpen/x")
    wrong = Etcd(EtcdConfig((server.url,), user="bot", password=lambda: b"not-it"))
    with pytest.raises(HostError) as err:
        wrong.get("/clawpen/x")
    assert "not-it" not in str(err.value.what) + str(err.value.where) + str(err.value.hint)


def test_doctor_checks_the_specs_cluster(server: EtcdServer, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    spec = tmp_path / "clawpen.toml"
    spec.write_text(f'[cluster]\nendpoints = ["{server.url}", "{dead}"]\nhost = "a"\n')
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CLAWPEN_HOME": str(tmp_path / "state")}
    done = subprocess.run(
        [CLAWPEN, "doctor", "--json", "--file", str(spec)], capture_output=True, text=True, env=env
    )
    checks = {c["name"]: c for c in json.loads(done.stdout) if c["group"] == "failover cluster"}
    assert checks["cluster host"]["ok"] and "'a'" in checks["cluster host"]["detail"]
    assert checks[f"etcd {server.url}"]["ok"] and "etcd 3." in checks[f"etcd {server.url}"]["detail"]
    assert not checks[f"etcd {dead}"]["ok"] and checks[f"etcd {dead}"]["hint"]
    assert checks["etcd quorum"]["warn"] and "single point of failure" in checks["etcd quorum"]["detail"]
    assert done.returncode == 1  # a failed endpoint fails the doctor
    server.stop()  # no member answers: every endpoint fails, and no quorum line pretends otherwise
    done = subprocess.run(
        [CLAWPEN, "doctor", "--json", "--file", str(spec)], capture_output=True, text=True, env=env
    )
    names = [c["name"] for c in json.loads(done.stdout) if c["group"] == "failover cluster"]
    assert "etcd quorum" not in names and not any(
        c["ok"] for c in json.loads(done.stdout) if c["name"].startswith("etcd ")
    )


def test_tls_with_a_client_certificate(tmp_path: Path) -> None:
    ca, server_cert, server_key, client_cert, client_key = tls_files(tmp_path, "cluster")
    _, _, _, stranger_cert, stranger_key = tls_files(tmp_path, "stranger")  # another CA's client
    server = EtcdServer(tmp_path / "tls-data", tls=(server_cert, server_key, ca))
    try:
        server.start(client=(client_cert, client_key), ca=ca)
        good = Etcd(
            EtcdConfig((server.url,), ca_file=str(ca), cert_file=str(client_cert), key_file=str(client_key))
        )
        good.put("/clawpen/tls", "1")
        assert good.get("/clawpen/tls") is not None
        for cert, key in ((None, None), (str(stranger_cert), str(stranger_key))):
            refused = Etcd(
                EtcdConfig((server.url,), ca_file=str(ca), cert_file=cert, key_file=key, timeout=2.0)
            )
            with pytest.raises(EtcdUnavailable):  # no certificate, or one the cluster's CA did not sign
                refused.get("/clawpen/tls")
        unverified = Etcd(EtcdConfig((server.url,), cert_file=str(client_cert), key_file=str(client_key)))
        with pytest.raises(EtcdUnavailable):  # the server's certificate is not one the system trusts
            unverified.get("/clawpen/tls")
    finally:
        server.stop()
