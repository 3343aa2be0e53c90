"""What ``clawpen doctor`` says about the failover cluster of the spec in the current folder
(``[cluster]``): this host's name, each etcd endpoint (reached with the spec's TLS files and
user, its version, leader and size), and whether a quorum of the members answers."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from clawpen.errors import ClawpenError
from clawpen.finding import Finding
from clawpen.spec.cluster import ClusterSettings, host_name

QUORUM_HINT = "start the members that are down (etcd needs a majority to grant or renew a lease)"


def findings(
    settings: ClusterSettings,
    secrets: Callable[[list[str]], dict[str, bytes]],
    environ: Mapping[str, str] = os.environ,
) -> list[Finding]:
    from clawpen.ha.etcd import Etcd
    from clawpen.ha.wiring import etcd_for

    found: list[Finding] = []
    try:
        found.append(Finding("cluster host", True, f"this host is {host_name(settings, environ)!r}"))
    except ClawpenError as err:
        found.append(Finding("cluster host", False, err.what, err.hint))
    client: Etcd = etcd_for(settings, secrets)
    answered: list[str] = []
    for endpoint in settings.endpoints:
        try:
            status = client.endpoint_status(endpoint)
        except ClawpenError as err:
            found.append(Finding(f"etcd {endpoint}", False, err.what, err.hint))
            continue
        except Exception as err:  # the transport's own errors (refused, TLS, timeout)
            detail = f"does not answer: {type(err).__name__}: {err}"[:300]
            hint = "check that etcd runs there, and the TLS files and user of [cluster]"
            found.append(Finding(f"etcd {endpoint}", False, detail, hint))
            continue
        answered.append(endpoint)
        size = int(status.get("dbSize", 0))
        found.append(Finding(f"etcd {endpoint}", True,
                             f"etcd {status.get('version', '?')}, raft term {status.get('raftTerm', '?')}, "
                             f"{size / 1024:.0f} KiB"))  # fmt: skip
    if not answered:
        return found
    try:
        members = client.members()
    except ClawpenError as err:
        found.append(Finding("etcd quorum", False, err.what, QUORUM_HINT))
        return found
    total = len(members)
    need = total // 2 + 1
    if total == 1:
        detail = "a 1-member cluster: etcd itself is a single point of failure"
        hint = "run 3 members on 3 hosts for failover that survives a host"
        found.append(Finding("etcd quorum", True, detail, hint, warn=True))
    elif len(answered) < need and len(answered) < len(settings.endpoints):
        found.append(Finding("etcd quorum", False,
                             f"{len(answered)} of the {len(settings.endpoints)} endpoints answer; "
                             f"{need} of {total} members are needed", QUORUM_HINT))  # fmt: skip
    else:
        found.append(Finding("etcd quorum", True, f"{total} members; {len(answered)} endpoints answer"))
    return found
