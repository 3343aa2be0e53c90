"""``[cluster]`` and a bot's ``ha`` table (issue 18): defaults, a full example, every refusal.

Each refusal is checked through the real loader (the error names the file, the key's line and
path, with a hint) next to a positive control that differs only in the refused value. The
stored policy (and its hash) of a bot without ``ha`` is what it was before the table existed.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from test_net_limits import HASH_SPEC, HASHES_BEFORE, hashes

from clawpen.cli import main
from clawpen.daemon.store import policy_hash
from clawpen.errors import ConfigError, PolicyError
from clawpen.spec.cluster import HOST_NAME, ClusterSettings, HaCheck, HaSync, HaTable, host_name
from clawpen.spec.loader import LoadedSpec, parse_spec_text
from clawpen.spec.models import Bot, json_schema

CLUSTER = '[cluster]\nendpoints = ["http://10.0.0.5:2379"]\n'
BOT = '[bots.a]\ncommand = ["sleep", "300"]\nworkspace = "./data"\n'
HA = 'ha = { mode = "primary-backup", hosts = ["a", "b"] }\n'


def load(tmp_path: Path, text: str) -> LoadedSpec:
    spec = tmp_path / "clawpen.toml"
    spec.write_text(text)
    return parse_spec_text(text, spec)


def refused(tmp_path: Path, text: str, key: str, mark: str) -> ConfigError:
    """Loading ``text`` fails at ``key`` on the first line that holds ``mark``."""
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    line = next(n for n, t in enumerate(text.splitlines(), start=1) if mark in t)
    assert err.value.exit_code == 2
    assert (err.value.where or "").endswith(f"clawpen.toml:{line} {key}"), (err.value.where, line, key)
    assert err.value.hint
    return err.value


# ----------------------------------------------------------------------------- accepted specs


def test_defaults(tmp_path: Path) -> None:
    spec = load(tmp_path, CLUSTER + BOT + HA).spec
    cluster = spec.cluster
    assert cluster is not None and cluster.endpoints == ["http://10.0.0.5:2379"]
    assert (cluster.host, cluster.prefix, cluster.lease, cluster.poll, cluster.tls) == (
        None,
        "/clawpen",
        10.0,
        1.0,
        False,
    )
    assert (cluster.ca_file, cluster.cert_file, cluster.key_file, cluster.user, cluster.password_secret) == (
        None,
    ) * 5
    ha = spec.bots["a"].ha
    assert ha == HaTable(mode="primary-backup", hosts=["a", "b"])
    assert ha.check is None and ha.sync is None
    # the practice's arbiter: every 30 s, 5 s timeout, 3 failures; the workspace shipped every minute
    check = HaCheck(http="http://127.0.0.1:8080/health")
    assert (check.interval, check.timeout, check.failures) == (30.0, 5.0, 3)
    assert HaSync(repository="sftp:u@h:/r", password_secret="P").interval == 60.0
    assert load(tmp_path, BOT).spec.cluster is None  # no [cluster]: None
    assert load(tmp_path, BOT).spec.bots["a"].ha is None


FULL = """
[cluster]
endpoints = ["https://10.0.0.5:2379", "https://10.0.0.6:2379", "https://[fd00::7]:2379/"]
host = "host-a"
ca_file = "/etc/clawpen/etcd-ca.pem"
cert_file = "/etc/clawpen/etcd-client.pem"
key_file = "/etc/clawpen/etcd-client.key"
user = "clawpen"
password_secret = "ETCD_PASSWORD"
prefix = "/prod/clawpen"
lease = "5s"
poll = "250ms"

[bots.trader]
command = ["python3", "/app/trade.py"]
workspace = "./data"
schedule = { restart = "0 4 * * *" }

[bots.trader.ha]
mode = "primary-backup"
hosts = ["host-b", "host-a", "3rd"]
check = { http = "http://127.0.0.1:8080/health", interval = "1s", timeout = "500ms", failures = 2 }

[bots.trader.ha.sync]
repository = "s3:s3.amazonaws.com/bucket/trader"
password_secret = "HA_SYNC_PASSWORD"
env_secrets = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
interval = "5s"
"""


def test_a_full_example(tmp_path: Path) -> None:
    spec = load(tmp_path, FULL).spec
    assert spec.cluster == ClusterSettings(
        endpoints=["https://10.0.0.5:2379", "https://10.0.0.6:2379", "https://[fd00::7]:2379/"],
        host="host-a",
        ca_file="/etc/clawpen/etcd-ca.pem",
        cert_file="/etc/clawpen/etcd-client.pem",
        key_file="/etc/clawpen/etcd-client.key",
        user="clawpen",
        password_secret="ETCD_PASSWORD",
        prefix="/prod/clawpen",
        lease=5.0,
        poll=0.25,
    )
    assert spec.cluster.tls
    ha = spec.bots["trader"].ha
    assert ha is not None and ha.hosts == ["host-b", "host-a", "3rd"]  # order kept: the preference
    assert ha.check == HaCheck(http="http://127.0.0.1:8080/health", interval=1.0, timeout=0.5, failures=2)
    assert ha.sync == HaSync(
        repository="s3:s3.amazonaws.com/bucket/trader",
        password_secret="HA_SYNC_PASSWORD",
        env_secrets=["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
        interval=5.0,
    )


def test_a_local_sync_repository_is_checked_like_a_storage_tier(tmp_path: Path) -> None:
    repo = tmp_path / "shared" / "restic"
    sync = f'sync = {{ repository = "{repo}", password_secret = "HA_SYNC_PASSWORD" }}'
    ha = load(tmp_path, CLUSTER + BOT + HA[:-3] + ", " + sync + " }\n").spec.bots["a"].ha
    assert ha is not None and ha.sync is not None and ha.sync.repository == str(repo)
    # the same rule as storage.warm.repository: not clawpen's state folder (CLAWPEN_HOME here)
    from clawpen.paths import state_dir

    bad = CLUSTER + BOT + HA[:-3] + ", " + sync.replace(str(repo), str(state_dir() / "repo")) + " }\n"
    err = refused(tmp_path, bad, "bots.a.ha.sync.repository", "ha =")
    assert "state folder" in err.what and isinstance(err, PolicyError)
    warm = f'[storage]\nwarm = {{ repository = "{state_dir() / "repo"}" }}\n'
    with pytest.raises(PolicyError, match="state folder"):
        load(tmp_path, warm)
    # a path through /proc (realpath of /proc/1/root raised PermissionError before): a clear error
    with pytest.raises(ConfigError, match="/proc"):
        load(tmp_path, '[storage]\nwarm = { repository = "/proc/1/root/srv" }\n')
    assert load(tmp_path, f'[storage]\nwarm = {{ repository = "{repo}" }}\n').spec.storage.warm is not None


# ----------------------------------------------------------------------------- refusals

C = "[cluster]\n"
EP = 'endpoints = ["http://10.0.0.5:2379"]\n'
TLS_EP = 'endpoints = ["https://10.0.0.5:2379"]\n'
# (refused text, positive control, key in the error, a line mark, what the message says)
CLUSTER_CASES = [
    (C + "endpoints = []\n", C + EP, "cluster.endpoints", "endpoints", "at least 1"),
    (
        C + "endpoints = [" + ", ".join(f'"http://10.0.0.{i}:2379"' for i in range(10)) + "]\n",
        C + "endpoints = [" + ", ".join(f'"http://10.0.0.{i}:2379"' for i in range(9)) + "]\n",
        "cluster.endpoints",
        "endpoints",
        "at most 9",
    ),
    (C + 'endpoints = ["ftp://10.0.0.5:2379"]\n', C + EP, "cluster.endpoints", "endpoints", "not an http://"),
    (C + 'endpoints = ["10.0.0.5:2379"]\n', C + EP, "cluster.endpoints", "endpoints", "not an http://"),
    (C + 'endpoints = ["http://10.0.0.5"]\n', C + EP, "cluster.endpoints", "endpoints", "a host and a port"),
    (C + 'endpoints = ["http://:2379"]\n', C + EP, "cluster.endpoints", "endpoints", "a host and a port"),
    (C + 'endpoints = ["http://h:99999"]\n', C + EP, "cluster.endpoints", "endpoints", "a host and a port"),
    (C + 'endpoints = ["http://h:2379/v3"]\n', C + EP, "cluster.endpoints", "endpoints", "a path"),
    (C + 'endpoints = ["http://h:2379?x=1"]\n', C + EP, "cluster.endpoints", "endpoints", "a query"),
    (C + 'endpoints = ["http://h :2379"]\n', C + EP, "cluster.endpoints", "endpoints", "a space"),
    (
        C + 'endpoints = ["http://root:hunter2@h:2379"]\n',
        C + EP,
        "cluster.endpoints",
        "endpoints",
        "holds a user or a password",
    ),
    (
        C + 'endpoints = ["http://h:2379", "http://H:2379/"]\n',
        C + 'endpoints = ["http://h:2379", "http://h:2380"]\n',
        "cluster.endpoints",
        "endpoints",
        "twice",
    ),
    (
        C + 'endpoints = ["http://a:2379", "https://b:2379"]\n',
        C + 'endpoints = ["https://a:2379", "https://b:2379"]\n',
        "cluster.endpoints",
        "endpoints",
        "mix http:// and https://",
    ),
    (C + EP + 'host = "Host_A"\n', C + EP + 'host = "host-a"\n', "cluster.host", "host", "not allowed"),
    (C + EP + 'host = "-a"\n', C + EP + 'host = "a"\n', "cluster.host", "host", "not allowed"),
    (C + EP + 'host = "a-"\n', C + EP + 'host = "a-1"\n', "cluster.host", "host", "not allowed"),
    (
        C + EP + f'host = "{"a" * 64}"\n',
        C + EP + f'host = "{"a" * 63}"\n',
        "cluster.host",
        "host",
        "not allowed",
    ),
    (C + EP + 'host = "a.example.com"\n', C + EP + 'host = "a"\n', "cluster.host", "host", "not allowed"),
    (
        C + TLS_EP + 'ca_file = "ca.pem"\n',
        C + TLS_EP + 'ca_file = "/etc/ca.pem"\n',
        "cluster.ca_file",
        "ca_file",
        "not an absolute path",
    ),
    (
        C + TLS_EP + 'cert_file = "/c.pem"\n',
        C + TLS_EP + 'cert_file = "/c.pem"\nkey_file = "/c.key"\n',
        "cluster.cert_file",
        "cert_file",
        "without key_file",
    ),
    (
        C + TLS_EP + 'key_file = "/c.key"\n',
        C + TLS_EP + 'cert_file = "/c.pem"\nkey_file = "/c.key"\n',
        "cluster.key_file",
        "key_file",
        "without cert_file",
    ),
    (
        C + EP + 'ca_file = "/etc/ca.pem"\n',
        C + TLS_EP + 'ca_file = "/etc/ca.pem"\n',
        "cluster.ca_file",
        "ca_file",
        "TLS files need https://",
    ),
    (
        C + EP + 'user = "clawpen"\n',
        C + EP + 'user = "clawpen"\npassword_secret = "ETCD_PASSWORD"\n',
        "cluster.user",
        "user",
        "without password_secret",
    ),
    (
        C + EP + 'password_secret = "ETCD_PASSWORD"\n',
        C + EP + 'user = "clawpen"\npassword_secret = "ETCD_PASSWORD"\n',
        "cluster.password_secret",
        "password_secret",
        "without user",
    ),
    (
        C + EP + 'user = "a b"\npassword_secret = "ETCD_PASSWORD"\n',
        C + EP + 'user = "a.b@x"\npassword_secret = "ETCD_PASSWORD"\n',
        "cluster.user",
        "user",
        "not allowed",
    ),
    (
        C + EP + 'user = "u"\npassword_secret = "etcd_password"\n',
        C + EP + 'user = "u"\npassword_secret = "ETCD_PASSWORD"\n',
        "cluster.password_secret",
        "password_secret",
        "secret name",
    ),
    (C + EP + 'prefix = "clawpen"\n', C + EP + 'prefix = "/c"\n', "cluster.prefix", "prefix", "not allowed"),
    (
        C + EP + 'prefix = "/clawpen/"\n',
        C + EP + 'prefix = "/c"\n',
        "cluster.prefix",
        "prefix",
        "not allowed",
    ),
    (C + EP + 'prefix = "/"\n', C + EP + 'prefix = "/c"\n', "cluster.prefix", "prefix", "not allowed"),
    (C + EP + 'prefix = "/a//b"\n', C + EP + 'prefix = "/a/b"\n', "cluster.prefix", "prefix", "not allowed"),
    (C + EP + 'prefix = "/a b"\n', C + EP + 'prefix = "/a_b"\n', "cluster.prefix", "prefix", "not allowed"),
    (C + EP + 'prefix = "/é"\n', C + EP + 'prefix = "/e"\n', "cluster.prefix", "prefix", "not allowed"),
    (C + EP + 'lease = "1s"\n', C + EP + 'lease = "2s"\n', "cluster.lease", "lease", "not allowed"),
    (C + EP + 'lease = "2.5s"\n', C + EP + 'lease = "3s"\n', "cluster.lease", "lease", "not allowed"),
    (C + EP + 'lease = "6m"\n', C + EP + 'lease = "5m"\n', "cluster.lease", "lease", "not allowed"),
    (C + EP + 'poll = "50ms"\n', C + EP + 'poll = "100ms"\n', "cluster.poll", "poll", "too short"),
    (C + EP + 'poll = "10s"\n', C + EP + 'poll = "9s"\n', "cluster.poll", "poll", "shorter than lease"),
    (
        C + EP + 'lease = "3s"\npoll = "5s"\n',
        C + EP + 'lease = "6s"\npoll = "5s"\n',
        "cluster.poll",
        "poll",
        "shorter than lease",
    ),
    (C + EP + 'endpoint = "x"\n', C + EP, "cluster.endpoint", "endpoint =", "Extra inputs"),
]


@pytest.mark.parametrize(("bad", "good", "key", "mark", "said"), CLUSTER_CASES)
def test_cluster_refusals(tmp_path: Path, bad: str, good: str, key: str, mark: str, said: str) -> None:
    err = refused(tmp_path, bad, key, mark)
    assert said in err.what, err.what
    assert load(tmp_path, good).spec.cluster is not None  # positive control


def test_a_plaintext_password_is_refused_with_a_pointer_to_the_vault(tmp_path: Path) -> None:
    bad = C + EP + 'user = "u"\npassword = "hunter2"\n'
    err = refused(tmp_path, bad, "cluster.password", "password =")
    assert "plain text" in err.what and "hunter2" not in str(err)
    assert 'password_secret = "ETCD_PASSWORD"' in (err.hint or "") and "clawpen secrets set" in (
        err.hint or ""
    )
    sync = 'sync = { repository = "sftp:u@h:/r", password = "hunter2" }'
    err = refused(tmp_path, CLUSTER + BOT + HA[:-3] + ", " + sync + " }\n", "bots.a.ha.sync.password", "ha =")
    assert "plain text" in err.what and "password_secret" in (err.hint or "") and "hunter2" not in str(err)
    good = C + EP + 'user = "u"\npassword_secret = "ETCD_PASSWORD"\n'
    assert load(tmp_path, good).spec.cluster is not None


def _ha(inner: str) -> str:
    return CLUSTER + BOT + f'[bots.a.ha]\nmode = "primary-backup"\nhosts = ["a", "b"]\n{inner}'


SYNC = 'sync = { repository = "sftp:u@h:/r", password_secret = "HA_SYNC_PASSWORD"'
CHECK = 'check = { http = "http://127.0.0.1:8080/health"'
HA_CASES = [
    (BOT + HA, CLUSTER + BOT + HA, "bots.a.ha", "ha =", "no [cluster]"),
    (
        CLUSTER + BOT + 'ha = { mode = "active-active", hosts = ["a", "b"] }\n',
        CLUSTER + BOT + HA,
        "bots.a.ha.mode",
        "ha =",
        "no ha mode 'active-active'",
    ),
    (
        CLUSTER + BOT + 'ha = { hosts = ["a", "b"] }\n',
        CLUSTER + BOT + HA,
        "bots.a.ha.mode",
        "ha =",
        "required",
    ),
    (
        CLUSTER + BOT + 'ha = { mode = "primary-backup", hosts = ["a"] }\n',
        CLUSTER + BOT + HA,
        "bots.a.ha.hosts",
        "ha =",
        "names 1 host(s)",
    ),
    (
        CLUSTER + BOT + 'ha = { mode = "primary-backup", hosts = ["a", "b", "c", "d", "e", "f"] }\n',
        CLUSTER + BOT + 'ha = { mode = "primary-backup", hosts = ["a", "b", "c", "d", "e"] }\n',
        "bots.a.ha.hosts",
        "ha =",
        "names 6 host(s)",
    ),
    (
        CLUSTER + BOT + 'ha = { mode = "primary-backup", hosts = ["a", "b", "a"] }\n',
        CLUSTER + BOT + 'ha = { mode = "primary-backup", hosts = ["a", "b", "c"] }\n',
        "bots.a.ha.hosts",
        "ha =",
        "names a twice",
    ),
    (
        CLUSTER + BOT + 'ha = { mode = "primary-backup", hosts = ["a", "B"] }\n',
        CLUSTER + BOT + 'ha = { mode = "primary-backup", hosts = ["a", "b"] }\n',
        "bots.a.ha.hosts",
        "ha =",
        "ha host 'B' is not allowed",
    ),
    (
        CLUSTER + BOT + "replicas = 2\n" + HA,
        CLUSTER + BOT + "replicas = 1\n" + HA,
        "bots.a.ha",
        "ha =",
        "replicas = 2",
    ),
    (
        CLUSTER + '[bots.a]\ntier = "container"\nimage = "debian:12"\ncommand = ["sleep", "300"]\n' + HA,
        CLUSTER + '[bots.a]\ntier = "sandbox"\ncommand = ["sleep", "300"]\n' + HA,
        "bots.a.ha",
        "ha =",
        'not supported for tier = "container" yet: the fence stops a primary that lost its lease by '
        "killing the bot's cgroup",
    ),
    (
        CLUSTER + BOT + 'schedule = { active = "Mon-Fri 08:00-20:00" }\n' + HA,
        CLUSTER + BOT + 'schedule = { restart = "0 4 * * *" }\n' + HA,
        "bots.a.ha",
        "ha =",
        "schedule.active",
    ),
    (
        CLUSTER + '[bots.a]\ncommand = ["sleep", "300"]\n' + HA[:-3] + ", " + SYNC + " } }\n",
        CLUSTER + BOT + HA[:-3] + ", " + SYNC + " } }\n",
        "bots.a.ha",
        "ha =",
        "the bot has none",
    ),
    (
        _ha(CHECK + ', timeout = "30s" }\n'),
        _ha(CHECK + ', timeout = "29s" }\n'),
        "bots.a.ha.check.timeout",
        "check",
        "below",
    ),
    (
        _ha(CHECK + ', interval = "2s", timeout = "2s" }\n'),
        _ha(CHECK + ', interval = "2s", timeout = "1s" }\n'),
        "bots.a.ha.check.timeout",
        "check",
        "below",
    ),
    (
        _ha(CHECK + ', interval = "100ms", timeout = "50ms" }\n'),
        _ha(CHECK + ', interval = "500ms", timeout = "50ms" }\n'),
        "bots.a.ha.check.interval",
        "check",
        "out of range",
    ),
    (
        _ha(CHECK + ", failures = 0 }\n"),
        _ha(CHECK + ", failures = 1 }\n"),
        "bots.a.ha.check.failures",
        "check",
        "greater",
    ),
    (
        _ha(CHECK + ", failures = 101 }\n"),
        _ha(CHECK + ", failures = 100 }\n"),
        "bots.a.ha.check.failures",
        "check",
        "less",
    ),
    (
        _ha('check = { http = "/health" }\n'),
        _ha('check = { http = "http://127.0.0.1/health" }\n'),
        "bots.a.ha.check.http",
        "check",
        "must start with http://",
    ),
    (
        _ha('check = { http = "https://127.0.0.1/health" }\n'),
        _ha('check = { http = "http://127.0.0.1/health" }\n'),
        "bots.a.ha.check.http",
        "check",
        "https is not supported",
    ),
    (_ha('check = { interval = "5s" }\n'), _ha(CHECK + " }\n"), "bots.a.ha.check.http", "check", "required"),
    (
        _ha('sync = { repository = "data/restic", password_secret = "P" }\n'),
        _ha('sync = { repository = "rest:http://10.0.0.9:8000/", password_secret = "P" }\n'),
        "bots.a.ha.sync.repository",
        "sync",
        "not an absolute path",
    ),
    (
        _ha('sync = { repository = "/proc/1/root", password_secret = "P" }\n'),
        _ha('sync = { repository = "/srv/restic", password_secret = "P" }\n'),
        "bots.a.ha.sync.repository",
        "sync",
        "/proc",
    ),
    (
        _ha('sync = { repository = "sftp:h:/r\\n", password_secret = "P" }\n'),
        _ha('sync = { repository = "sftp:h:/r", password_secret = "P" }\n'),
        "bots.a.ha.sync.repository",
        "sync",
        "control character",
    ),
    (
        _ha('sync = { repository = "sftp:h:/r" }\n'),
        _ha(SYNC + " }\n"),
        "bots.a.ha.sync.password_secret",
        "sync",
        "required",
    ),
    (
        _ha(SYNC.replace("HA_SYNC_PASSWORD", "CLAWPEN_SNAPSHOT_PASSWORD") + " }\n"),
        _ha(SYNC + " }\n"),
        "bots.a.ha.sync.password_secret",
        "sync",
        "clawpen's own",
    ),
    (
        _ha(SYNC + ', env_secrets = ["AWS-KEY"] }\n'),
        _ha(SYNC + ', env_secrets = ["AWS_KEY"] }\n'),
        "bots.a.ha.sync.env_secrets",
        "sync",
        "not a secret name",
    ),
    (
        _ha(SYNC + ', interval = "4s" }\n'),
        _ha(SYNC + ', interval = "5s" }\n'),
        "bots.a.ha.sync.interval",
        "sync",
        "range",
    ),
    (
        _ha(SYNC + ', interval = "2d" }\n'),
        _ha(SYNC + ', interval = "1d" }\n'),
        "bots.a.ha.sync.interval",
        "sync",
        "range",
    ),
    (_ha("standby = true\n"), _ha(""), "bots.a.ha.standby", "standby", "Extra inputs"),
]


@pytest.mark.parametrize(("bad", "good", "key", "mark", "said"), HA_CASES)
def test_ha_refusals(tmp_path: Path, bad: str, good: str, key: str, mark: str, said: str) -> None:
    err = refused(tmp_path, bad, key, mark)
    assert said in err.what, err.what
    assert load(tmp_path, good).spec.bots["a"].ha is not None  # positive control


def test_the_cross_field_refusals_are_policy_errors_at_the_ha_line_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``clawpen plan -f``: exit 2, ``error: ... (FILE:LINE bots.a.ha)`` and a hint; the ``ha``
    table as a [bots.a.ha] header points at that header's line."""
    spec = tmp_path / "clawpen.toml"
    text = BOT + 'replicas = 3\n\n[bots.a.ha]\nmode = "primary-backup"\nhosts = ["a", "b"]\n'
    spec.write_text(CLUSTER + text)
    assert main(["plan", "-f", str(spec), "a"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ha runs one instance") and "replicas = 3" in err
    assert f"({spec}:8 bots.a.ha)" in err and "hint: remove replicas" in err
    spec.write_text(text.replace("replicas = 3", "replicas = 1"))
    assert main(["plan", "-f", str(spec), "a"]) == 2
    err = capsys.readouterr().err
    assert f"({spec}:6 bots.a.ha)" in err and "no [cluster]" in err and "hint: add [cluster]" in err
    spec.write_text(CLUSTER + text.replace("replicas = 3", "replicas = 1"))
    assert main(["plan", "-f", str(spec), "a"]) == 0  # positive control: an ha bot plans as before
    capsys.readouterr()
    with pytest.raises(PolicyError):  # a security/consistency rule, not a type error
        load(tmp_path, CLUSTER + text)


# ----------------------------------------------------------------------------- this host's name


def test_host_name_comes_from_the_spec_then_the_environment_then_the_host(tmp_path: Path) -> None:
    def never() -> str:
        raise AssertionError("the host's name was asked for")

    env = {"CLAWPEN_CLUSTER_HOST": "from-env"}
    spec = ClusterSettings(endpoints=["http://h:2379"], host="from-spec")
    assert host_name(spec, env, hostname=never) == "from-spec"
    plain = ClusterSettings(endpoints=["http://h:2379"])
    assert host_name(plain, env, hostname=never) == "from-env"
    assert host_name(plain, {}, hostname=lambda: "node7") == "node7"
    assert host_name(plain, {"CLAWPEN_CLUSTER_HOST": ""}, hostname=lambda: "node7") == "node7"  # empty: unset
    real = socket.gethostname()  # the default asks the host
    if HOST_NAME.match(real):
        assert host_name(plain, {}) == real
    else:  # a name with a domain, upper case or '_' is refused, not cut
        with pytest.raises(ConfigError, match="is not allowed"):
            host_name(plain, {})


@pytest.mark.parametrize(
    ("settings_host", "env", "hostname", "where"),
    [
        (None, {"CLAWPEN_CLUSTER_HOST": "Bad_Name"}, "ok", "env CLAWPEN_CLUSTER_HOST"),
        (None, {}, "web1.example.com", "the host's name (hostname)"),
        (None, {}, "WEB1", "the host's name (hostname)"),
        (None, {}, "", "the host's name (hostname)"),
    ],
)
def test_a_bad_host_name_is_a_config_error_naming_its_source(
    settings_host: str | None, env: dict[str, str], hostname: str, where: str
) -> None:
    settings = ClusterSettings(endpoints=["http://h:2379"], host=settings_host)
    with pytest.raises(ConfigError) as err:
        host_name(settings, env, hostname=lambda: hostname)
    assert err.value.where == where and err.value.exit_code == 2
    assert "is not allowed" in err.value.what
    assert "CLAWPEN_CLUSTER_HOST" in (err.value.hint or "") and "[cluster]" in (err.value.hint or "")
    fixed = {"CLAWPEN_CLUSTER_HOST": "good-1"}  # positive control: a good name from the environment
    assert host_name(settings, fixed, hostname=lambda: hostname) == "good-1"


# ----------------------------------------------------------------------------- the stored policy


def test_a_bot_without_ha_keeps_its_stored_policy_and_hash(tmp_path: Path) -> None:
    """The hashes of test_net_limits and test_spec_vm were computed before ``ha`` existed."""
    assert hashes(HASH_SPEC) == HASHES_BEFORE
    assert hashes(CLUSTER + HASH_SPEC) == HASHES_BEFORE  # [cluster] is spec-wide: no bot's hash
    cases = {  # test_spec_vm: computed with clawpen at 34d6c69
        'command = ["sleep", "300"]\nreplicas = 2\n': "bd136503dffa3e3b",
        'tier = "container"\nimage = "debian:12"\ncommand = ["sleep", "300"]\n'
        'resources = { memory = "1G", cpus = 1.5 }\n': "753df0f288d8f83f",
    }
    for body, digest in cases.items():
        dumped = (
            load(tmp_path, CLUSTER + "[bots.a]\n" + body)
            .spec.bots["a"]
            .model_dump(mode="json", by_alias=True)
        )
        assert "ha" not in dumped
        assert policy_hash({"spec": dumped, "base_dir": "/srv/bots"}) == digest
    # positive control: ha is part of the policy of the bot that has it (and only of that bot)
    with_ha = hashes(
        CLUSTER
        + HASH_SPEC.replace(
            '[bots.plain]\ncommand = ["sleep", "60"]\n', "[bots.plain]\n" + 'command = ["sleep", "60"]\n' + HA
        )
    )
    assert with_ha["plain"] != HASHES_BEFORE["plain"]
    assert {k: v for k, v in with_ha.items() if k != "plain"} == {
        k: v for k, v in HASHES_BEFORE.items() if k != "plain"
    }
    other_hosts = hashes(
        CLUSTER
        + HASH_SPEC.replace(
            '[bots.plain]\ncommand = ["sleep", "60"]\n',
            "[bots.plain]\n" + 'command = ["sleep", "60"]\n' + HA.replace('"b"', '"c"'),
        )
    )
    assert other_hosts["plain"] not in (with_ha["plain"], HASHES_BEFORE["plain"])


def test_the_stored_spec_of_an_ha_bot_loads_again(tmp_path: Path) -> None:
    """The daemon validates a stored policy's spec again (Bot.model_validate): ha round-trips."""
    loaded = load(tmp_path, FULL)
    bot = loaded.spec.bots["trader"]
    dumped = bot.model_dump(mode="json", by_alias=True)
    assert dumped["ha"]["hosts"] == ["host-b", "host-a", "3rd"] and dumped["ha"]["check"]["timeout"] == 0.5
    again = Bot.model_validate(json.loads(json.dumps(dumped)), context={"base_dir": str(loaded.base_dir)})
    assert again == bot


# ----------------------------------------------------------------------------- the JSON schema


def test_the_schema_describes_cluster_and_ha(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(json_schema()))
    defs = printed["$defs"]
    assert {"ClusterSettings", "HaTable", "HaCheck", "HaSync"} <= set(defs)
    assert "cluster" in printed["properties"] and "ha" in defs["Bot"]["properties"]
    cluster = defs["ClusterSettings"]
    assert cluster["required"] == ["endpoints"] and cluster["properties"]["endpoints"]["maxItems"] == 9
    assert (
        cluster["properties"]["lease"]["default"] == 10.0
        and cluster["properties"]["prefix"]["default"] == "/clawpen"
    )
    assert "password" not in cluster["properties"] and "password_secret" in cluster["properties"]
    assert defs["HaTable"]["properties"]["mode"]["const"] == "primary-backup"
    assert sorted(defs["HaTable"]["required"]) == ["hosts", "mode"]
    assert defs["HaCheck"]["properties"]["failures"]["default"] == 3
    assert defs["HaSync"]["required"] == ["repository", "password_secret"]
