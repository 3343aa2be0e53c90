"""etcd, as the failover needs it: leases, the election transaction, keys under a prefix.

A thin layer over etcd3gw (etcd's v3 JSON gateway, OpenStack's client) that adds what a cluster
needs and the client leaves out: several endpoints (a request that cannot reach one member
tries the next; a minority member refuses, so a partitioned host learns nothing stale), TLS with
a CA and a client certificate, and user/password authentication (a token from
``/v3/auth/authenticate`` in the ``Authorization`` header, fetched again when etcd says it
expired). Every call is blocking, bounded by ``timeout``; the daemon runs them in threads.
Failures are :class:`EtcdUnavailable` (a :class:`~clawpen.errors.HostError`), naming the
endpoints tried and the last error, never the password.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

from clawpen.errors import HostError

T = TypeVar("T")
HINT = "check that etcd runs and this host reaches it (`clawpen doctor`); `[cluster] endpoints` lists it"


class EtcdUnavailable(HostError):
    """No endpoint answered (or the cluster has no quorum)."""


class KV(NamedTuple):
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class EtcdConfig:
    """How to reach the cluster (from ``[cluster]``; the password read from the vault)."""

    endpoints: tuple[str, ...]
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    user: str | None = None
    password: Callable[[], bytes] | None = None
    timeout: float = 2.0


def _b64(value: str | bytes) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return base64.b64encode(raw).decode()


def _kv(row: dict[str, Any]) -> KV:
    return KV(
        base64.b64decode(row["key"]).decode(),
        base64.b64decode(row.get("value", "")),
        int(row.get("create_revision", 0)),
        int(row.get("mod_revision", 0)),
        int(row.get("lease", 0)),
    )


def _prefix_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return _b64(bytes(raw))


class Etcd:
    """One cluster, reached through the first endpoint that answers."""

    def __init__(self, config: EtcdConfig) -> None:
        if not config.endpoints:
            raise EtcdUnavailable("no etcd endpoint is configured", where="cluster.endpoints", hint=HINT)
        self.config = config
        self._clients: dict[str, Any] = {}
        self._current = 0
        self._token: str | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ transport
    def _client(self, endpoint: str) -> Any:
        client = self._clients.get(endpoint)
        if client is None:
            import etcd3gw
            import requests

            url = urlsplit(endpoint)
            session = requests.Session()
            # no proxy and no CA bundle from the environment: requests would let REQUESTS_CA_BUNDLE
            # override the cluster's CA, and a proxy must not sit between a host and its lease
            session.trust_env = False
            if self.config.ca_file:
                session.verify = self.config.ca_file
            if self.config.cert_file and self.config.key_file:
                session.cert = (self.config.cert_file, self.config.key_file)
            client = etcd3gw.Etcd3Client(
                host=url.hostname or "localhost",
                port=url.port or 2379,
                protocol=url.scheme or "http",
                timeout=self.config.timeout,
                api_path="/v3/",
                session=session,
            )
            self._clients[endpoint] = client
        return client

    def _authenticate(self, client: Any) -> None:
        if not self.config.user or self.config.password is None:
            return
        if self._token is None:
            password = self.config.password().decode()
            reply = client.post(
                client.get_url("/auth/authenticate"), json={"name": self.config.user, "password": password}
            )
            self._token = str(reply["token"])
        client.session.headers["Authorization"] = self._token

    def call(self, what: str, fn: Callable[[Any], T]) -> T:
        """``fn(client)`` on the current endpoint, then on each other one until one answers."""
        from etcd3gw import exceptions as ex

        endpoints = self.config.endpoints
        last = "no endpoint tried"
        with self._lock:
            start = self._current
        for i in range(len(endpoints)):
            index = (start + i) % len(endpoints)
            endpoint = endpoints[index]
            client = self._client(endpoint)
            for attempt in range(2):
                try:
                    self._authenticate(client)
                    result = fn(client)
                except (ex.ConnectionFailedError, ex.ConnectionTimeoutError, ex.InternalServerError) as err:
                    last = f"{endpoint}: {_short(err)}"
                    break
                except ex.Etcd3Exception as err:
                    text = _short(err)
                    if attempt == 0 and self.config.user and "token" in text.lower():
                        self._token = None  # expired or revoked: authenticate again, once
                        continue
                    raise HostError(f"etcd refused {what}: {text}", where=endpoint, hint=HINT) from None
                except OSError as err:  # TLS files missing, ...
                    last = f"{endpoint}: {err}"
                    break
                with self._lock:
                    self._current = index
                return result
        raise EtcdUnavailable(f"etcd did not answer {what} ({last})", where=", ".join(endpoints), hint=HINT)

    # ------------------------------------------------------------ leases
    def grant(self, ttl: int) -> int:
        reply = self.call(
            "a lease grant", lambda c: c.post(c.get_url("/lease/grant"), json={"TTL": ttl, "ID": 0})
        )
        return int(reply["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew ``lease``; its TTL, or -1 when etcd no longer knows it (expired or revoked)."""
        reply = self.call(
            "a lease renewal", lambda c: c.post(c.get_url("/lease/keepalive"), json={"ID": lease})
        )
        return int(reply.get("result", {}).get("TTL", -1))

    def revoke(self, lease: int) -> None:

        try:
            self.call("a lease revoke", lambda c: c.post(c.get_url("/kv/lease/revoke"), json={"ID": lease}))
        except HostError as err:
            if "not found" not in err.what.lower():
                raise

    # ------------------------------------------------------------ keys
    def get(self, key: str) -> KV | None:
        reply = self.call("a read", lambda c: c.post(c.get_url("/kv/range"), json={"key": _b64(key)}))
        rows = reply.get("kvs") or []
        return _kv(rows[0]) if rows else None

    def prefix(self, prefix: str) -> list[KV]:
        body = {"key": _b64(prefix), "range_end": _prefix_end(prefix)}
        reply = self.call("a read", lambda c: c.post(c.get_url("/kv/range"), json=body))
        return [_kv(r) for r in reply.get("kvs") or []]

    def put(self, key: str, value: bytes | str, *, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        reply = self.call("a write", lambda c: c.post(c.get_url("/kv/put"), json=body))
        return int(reply.get("header", {}).get("revision", 0))

    def delete(self, key: str) -> bool:
        reply = self.call("a delete", lambda c: c.post(c.get_url("/kv/deleterange"), json={"key": _b64(key)}))
        return int(reply.get("deleted", 0)) > 0

    def txn(self, compare: Sequence[dict[str, Any]], success: Sequence[dict[str, Any]],
            failure: Sequence[dict[str, Any]] = ()) -> tuple[bool, list[dict[str, Any]], int]:  # fmt: skip
        """A transaction; (succeeded, responses, the cluster's revision after it)."""
        body = {"compare": list(compare), "success": list(success), "failure": list(failure)}
        reply = self.call("a transaction", lambda c: c.post(c.get_url("/kv/txn"), json=body))
        revision = int(reply.get("header", {}).get("revision", 0))
        return bool(reply.get("succeeded", False)), list(reply.get("responses") or []), revision

    def create(self, key: str, value: bytes | str, *, lease: int = 0) -> tuple[bool, int, KV | None]:
        """Put ``key`` only if it does not exist: (created, its create_revision, the holder if not)."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = lease
        ok, responses, revision = self.txn(
            [{"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
            [{"request_put": put}],
            [{"request_range": {"key": _b64(key)}}],
        )
        if ok:
            return True, revision, None
        rows = responses[0].get("response_range", {}).get("kvs") or [] if responses else []
        return False, 0, _kv(rows[0]) if rows else None

    def delete_if(self, key: str, create_revision: int) -> bool:
        """Delete ``key`` if it is still the one created at ``create_revision``."""
        ok, _, _ = self.txn(
            [{"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": create_revision}],
            [{"request_delete_range": {"key": _b64(key)}}],
        )
        return ok

    # ------------------------------------------------------------ the cluster
    def members(self) -> list[dict[str, Any]]:
        reply = self.call("the member list", lambda c: c.post(c.get_url("/cluster/member/list"), json={}))
        return list(reply.get("members") or [])

    def endpoint_status(self, endpoint: str) -> dict[str, Any]:
        """``endpoint``'s own status (version, leader, db size), that endpoint only."""
        client = self._client(endpoint)
        self._authenticate(client)
        return dict(client.post(client.get_url("/maintenance/status"), json={}))


def _short(err: BaseException) -> str:
    """What an etcd3gw error says: etcd's own message from its JSON body, else the transport's."""
    detail = getattr(err, "detail_text", None)  # the reply's body, or the connection error's text
    text = " ".join([*([str(detail)] if detail else []), *(str(a) for a in err.args if a)])
    try:
        body = json.loads(str(detail)) if detail else None
        if isinstance(body, dict) and (body.get("message") or body.get("error")):
            text = str(body.get("message") or body.get("error"))
    except (ValueError, TypeError):
        pass
    return (text or type(err).__name__)[:300]
