"""Spec documents for the property tests (tests/unit/test_spec_fuzz.py): a small TOML writer and
hypothesis strategies over the spec's JSON Schema, mixing good examples, values of the schema's
types and nasty values."""

from __future__ import annotations

import copy
import math
from typing import Any

from hypothesis import strategies as st

from clawpen.spec.models import Spec

SCHEMA = Spec.model_json_schema()
DEFS: dict[str, Any] = SCHEMA["$defs"]

# ----------------------------------------------------------------------------- a TOML writer


def _string(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_string(str(k))} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def to_toml(doc: dict[str, Any]) -> str:
    """Top-level keys as ``key = value`` lines, tables inline; bots as ``[bots.NAME]`` tables."""
    lines = []
    for key, value in doc.items():
        if key == "bots" and isinstance(value, dict):
            continue
        lines.append(f"{_string(key)} = {_value(value)}")
    bots = doc.get("bots")
    if isinstance(bots, dict):
        for name, bot in bots.items():
            if isinstance(bot, dict):
                lines.append(f"[bots.{_string(str(name))}]")
                lines += [f"{_string(str(k))} = {_value(v)}" for k, v in bot.items()]
            else:
                lines.append(f"bots.{_string(str(name))} = {_value(bot)}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- values

WEIRD_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\0",
        "a\0b",
        "x\n",
        "\n",
        "=",
        "A=B",
        "../..",
        "/",
        "/proc/1/root",
        "/proc/self/root",
        "/sys/kernel",
        "/dev/sda",
        "/etc",
        "/etc/shadow",
        "~",
        "~root",
        "./ws",
        "ws",
        "-1",
        "nan",
        "inf",
        "1e400",
        "9" * 400,
        "0.0.0.0:9464",
        "[::]:1",
        "127.0.0.1:0",
        "127.0.0.1:70000",
        "²",
        "٣",
        "unlimited",
        "open",
        "%s%n",
        "'",
        '"',
        "\\",
        "é" * 50,
        "\U0001f600",
        "a" * 5000,
        "x" * 200_000,
        "*",
        "*.example.com:443",
        "10.0.0.0/8",
        "::/0",
        "0.0.0.0/0",
        "http://",
        "tcp:",
        "5m",
        "0s",
    ]
)
NASTY_NUMBERS = st.sampled_from(
    [0, -1, 1, 2**31, 2**63 - 1, -(2**63), 10**18, 0.0, -0.0, 0.5, 1e-300, 1e30, 1e308,
     math.nan, math.inf, -math.inf, 3.7]
)  # fmt: skip
NASTY = st.one_of(
    WEIRD_TEXT,
    NASTY_NUMBERS,
    st.booleans(),
    st.text(max_size=30),
    st.just([]),
    st.just({}),
    st.lists(WEIRD_TEXT, max_size=3),
    st.dictionaries(st.text(max_size=8), WEIRD_TEXT, max_size=3),
)

# Good examples by key name, so that a fair share of documents is valid and gets planned.
GOOD: dict[str, list[Any]] = {
    "command": [["python3", "bot.py"], ["sleep", "1"]],
    "workspace": ["./ws", "data/bot"],
    "tier": ["sandbox"],
    "cpus": [0.5, 1, "2", 0.01],
    "memory": ["256M", "1G", 64 << 20],
    "pids": [64, 256],
    "nofile": [256, 1024],
    "disk": ["1G", "unlimited", "10G"],
    "tmp": ["16M", "64M"],
    "io_weight": [100],
    "ro": [["./ro"], []],
    "rw": [["./rw:/data"], []],
    "egress": [["api.openai.com:443"], "open", []],
    "allow_private": [["10.0.0.0/8"], []],
    "publish": [["127.0.0.1:18789:18789"], ["8080:80"], []],
    "expose": [False, True],
    "from": [[]],
    "bandwidth": ["8mbit"],
    "connections": [4, 1024],
    "connections_per_s": [0.5, 50],
    "connection_burst": [10],
    "pending_heads": [4],
    "dns_per_s": [5, 50.0],
    "dns_burst": [20],
    "dns_queue": [8],
    "dns_tcp_connections": [2],
    "policy": ["on-failure", "always"],
    "backoff_initial": ["1s", 2],
    "backoff_max": ["60s", "5m"],
    "max_restarts": [5],
    "window": ["5m"],
    "stop_grace": ["10s", 0],
    "http": ["http://127.0.0.1:8000/healthz"],
    "tcp": ["127.0.0.1:5000"],
    "cmd": [["true"]],
    "interval": ["30s", "5s"],
    "timeout": ["5s", 60],
    "retries": [3],
    "start_period": ["0s"],
    "replicas": [1, 2],
    "secrets": [["API_KEY"], []],
    "secret_env": [[]],
    "env": [{"MODE": "prod"}, {}],
    "share": [0.9],
    "for": ["5m", 0],
    "active": ["Mon-Fri 08:00-20:00"],
    "timezone": ["UTC"],
    "restart": ["0 4 * * *"],
    "subnet": ["10.213.0.0/16", "192.168.77.0/24"],
    "dns_upstream": [["1.1.1.1", "[2606:4700::1111]:53"]],
    "prometheus_listen": ["127.0.0.1:9464", "off", "0.0.0.0:9464"],
    "prometheus_expose": [False, True],
    "probes": [["1.1.1.1:443"]],
    "metric": ["bot.cpu_percent", "host.memory_available_bytes"],
    "threshold": [85, "500M"],
    "pattern": ["Traceback|ERROR"],
    "steps": [[["npm", "install"]]],
    "mount": ["/opt/bot"],
    "ssh_from": [["203.0.113.7/32"]],
    "port": [443, "8000-8010"],
}


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return DEFS[ref.rsplit("/", 1)[1]] if ref else schema


def _typed(schema: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
    """A value of the schema's type (not necessarily within its bounds)."""
    schema = _resolve(schema)
    if "anyOf" in schema:
        return st.one_of([_typed(s, depth) for s in schema["anyOf"]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        if depth > 4:
            return st.just({})
        if "properties" in schema:
            return _object(schema, depth + 1)
        return st.dictionaries(
            st.one_of(st.sampled_from(["a", "scraper", "API_KEY", "x-1"]), st.text(max_size=12)),
            _any_value(schema.get("additionalProperties") or {}, "", depth + 1),
            max_size=3,
        )
    if kind == "array":
        return st.lists(_any_value(schema.get("items") or {}, "", depth + 1), max_size=3)
    if kind == "string":
        return st.one_of(WEIRD_TEXT, st.text(max_size=20))
    if kind == "integer":
        return st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), NASTY_NUMBERS)
    if kind == "number":
        return st.one_of(st.floats(allow_nan=True, allow_infinity=True), NASTY_NUMBERS)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return NASTY
    return NASTY


def _any_value(schema: dict[str, Any], key: str, depth: int) -> st.SearchStrategy[Any]:
    options = [_typed(schema, depth), NASTY]
    if key in GOOD:
        good = st.sampled_from(GOOD[key])
        options = [good, good, good, *options]
    return st.one_of(options)


def _object(schema: dict[str, Any], depth: int) -> st.SearchStrategy[dict[str, Any]]:
    """Any object of the schema's keys: each value good, of the right type, or nasty."""
    props: dict[str, Any] = schema["properties"]
    required = set(schema.get("required", []))

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        out: dict[str, Any] = {}
        keys = sorted(props)
        chosen = draw(st.lists(st.sampled_from(keys), unique=True, max_size=min(len(keys), 6)))
        for key in sorted(set(chosen) | {k for k in required if draw(st.integers(0, 9)) > 0}):
            out[key] = draw(_any_value(props[key], key, depth))
        if draw(st.integers(0, 9)) == 0:
            out[draw(st.text(min_size=1, max_size=10))] = draw(NASTY)
        return out

    return build()


HEALTH = [
    {"http": "http://127.0.0.1:8000/healthz", "interval": "5s"},
    {"tcp": "127.0.0.1:5000"},
    {"cmd": ["true"], "retries": 2},
]
NOT_GENERATED = ("firewall", "build", "schedule", "notify", "builtin", "ha")  # need a consistent set


@st.composite
def _good(draw: st.DrawFn, schema: dict[str, Any], name: str = "") -> dict[str, Any]:
    """An object built from good examples only (most of them load)."""
    if name == "health":
        return dict(draw(st.sampled_from(HEALTH)))
    props: dict[str, Any] = schema["properties"]
    out: dict[str, Any] = {}
    for key in sorted(props):
        sub = props[key]
        ref = _resolve(sub["anyOf"][0]) if "anyOf" in sub else _resolve(sub)
        if key in schema.get("required", []) and key in GOOD:
            out[key] = draw(st.sampled_from(GOOD[key]))
        elif not draw(st.sampled_from([True, False] if "properties" in ref else [False, False, False, True])):
            continue
        elif "properties" in ref:
            if key not in NOT_GENERATED:
                out[key] = draw(_good(ref, key))
        elif key in GOOD:
            out[key] = draw(st.sampled_from(GOOD[key]))
    return out


@st.composite
def _mutated(draw: st.DrawFn, value: Any, schema: dict[str, Any], depth: int = 0) -> Any:
    """``value`` with one key somewhere below replaced by a typed or nasty value, or removed, or
    with an unknown key added."""
    schema = _resolve(schema)
    if not isinstance(value, dict):
        return draw(_any_value(schema, "", depth))
    out = dict(value)
    props: dict[str, Any] = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    keys = sorted(set(props) | set(out))
    action = draw(st.integers(0, 9))
    if action == 0 or not keys:
        out[draw(st.one_of(WEIRD_TEXT, st.text(min_size=1, max_size=10)))] = draw(NASTY)
        return out
    tables = sorted(k for k, v in out.items() if isinstance(v, dict))
    descend = bool(tables) and draw(st.sampled_from([True, True, True, False]))
    key = draw(st.sampled_from(tables if descend else keys))
    sub = props.get(key) or (extra if isinstance(extra, dict) else {})
    if action == 1 and key in out:
        del out[key]
    elif descend:
        out[key] = draw(_mutated(out[key], sub, depth + 1))
    else:
        out[key] = draw(st.one_of(_typed(sub, depth + 1), NASTY))
    return out


def _deep(depth: int) -> str:
    """``[{a = [{a = ... 1 ...}]}]`` nested ``depth`` levels, as TOML text."""
    half = depth // 2
    return "[{a = " * half + "1" + "}]" * half


@st.composite
def documents(draw: st.DrawFn) -> str:
    bot = DEFS["Bot"]
    doc: dict[str, Any]
    if draw(st.sampled_from(["good", "good", "good", "wild"])) == "wild":  # every value anything
        names = st.one_of(st.sampled_from(["scraper", "a", "gw-1"]), WEIRD_TEXT, st.text(max_size=10))
        doc = {"bots": draw(st.dictionaries(names, st.one_of(_object(bot, 1), NASTY), max_size=3))}
        for key in ("gateway", "host", "monitoring", "version"):
            if draw(st.integers(0, 3)) == 0:
                doc[key] = draw(st.one_of(_typed(SCHEMA["properties"][key], 1), NASTY))
    else:  # good, then a few mutations: each check meets bad values one at a time
        names = st.sampled_from(["scraper", "a", "gw-1", "b2"])
        doc = {"bots": draw(st.dictionaries(names, _good(bot), min_size=1, max_size=3))}
        for key in ("gateway", "monitoring"):
            if draw(st.sampled_from([False, False, True])):
                doc[key] = draw(_good(_resolve(SCHEMA["properties"][key])))
        for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 3]))):
            doc = draw(_mutated(doc, SCHEMA))
    deep = ""
    if draw(st.sampled_from([False] * 15 + [True])):
        deep = f"deep = {_deep(draw(st.sampled_from([40, 300, 3000])))}\n"
    text = deep + to_toml(doc)
    mangle = draw(st.sampled_from([2] * 14 + [0, 1]))
    if mangle == 0 and text:
        text = text[: draw(st.integers(0, len(text) - 1))]
    elif mangle == 1:
        at = draw(st.integers(0, len(text)))
        stray = draw(st.sampled_from(["[", "{", "]]", "=", "\0", '"', "\n[bots]\n", "\ud7ff"]))
        text = text[:at] + stray + text[at:]
    return text


# ----------------------------------------------------------------------------- the per-field sweep

SWEEP_VALUES: list[Any] = [
    None, "", "\0", "x\n", "a" * 5000, "/proc/1/root", "../..", "0.0.0.0:1", "1e400", "nan", "-1",
    0, -1, 2**63 - 1, -(2**63), 0.5, 1e30, math.nan, math.inf, -math.inf, True, [], [1, "a"], {},
    {"x": 1}, [[[["deep"]]]],
]  # fmt: skip


def _leaf_paths(schema: dict[str, Any], prefix: tuple[str, ...], depth: int = 0) -> list[tuple[str, ...]]:
    schema = _resolve(schema)
    if "anyOf" in schema:
        objects = [_resolve(s) for s in schema["anyOf"] if "properties" in _resolve(s)]
        schema = objects[0] if objects else schema
    props = schema.get("properties")
    if not props or depth > 4:
        return [prefix]
    paths = [(*prefix, "unknown_key")]
    for key, sub in props.items():
        paths += _leaf_paths(sub, (*prefix, key), depth + 1)
    return paths


BASE_BOT = {
    "command": ["python3", "bot.py"],
    "resources": {"memory": "256M"},
    "network": {"egress": ["api.openai.com:443"]},
    "health": {"http": "http://127.0.0.1:8000/healthz"},
}
SWEEP_PATHS = [
    *_leaf_paths(DEFS["Bot"], ("bots", "scraper")),
    *_leaf_paths(SCHEMA["properties"]["gateway"], ("gateway",)),
    *_leaf_paths(SCHEMA["properties"]["monitoring"], ("monitoring",)),
    *_leaf_paths(SCHEMA["properties"]["host"], ("host",)),
    *_leaf_paths(SCHEMA["properties"]["cluster"], ("cluster",)),
    ("version",),
]


def with_value(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"bots": {"scraper": copy.deepcopy(BASE_BOT)}}
    node = doc
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    if value is None:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return doc
