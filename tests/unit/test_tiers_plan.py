"""plan_ageing: what moves between hot, warm and cold at a given time (a table of cases)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clawpen.errors import ConfigError
from clawpen.snapshots.tierrepo import TierSnapshot
from clawpen.snapshots.tiers import plan_ageing
from clawpen.spec.storage import StorageSettings

DAY = 86400.0
NOW = 1_000 * DAY


def snap(sid: str, days_old: float, key: str | None = None) -> TierSnapshot:
    return TierSnapshot(sid, key or sid, NOW - days_old * DAY, ("clawpen",))


def settings(**raw: object) -> StorageSettings:
    return StorageSettings.model_validate(raw, context={"state_dir": "/var/lib/clawpen"})


WARM = {"warm": {"repository": "/mnt/warm"}}
WARM_COLD = {"warm": {"repository": "/mnt/warm"}, "cold": {"repository": "sftp:b@h:/srv/c"}}

CASES = [
    # (name, settings, listing, expected [(kind, source, target, id)])
    ("no warm: nothing moves", {}, {"hot": [snap("a", 400)]}, []),
    ("young stays hot", WARM, {"hot": [snap("a", 6.9)]}, []),
    ("old hot is copied", WARM, {"hot": [snap("a", 8), snap("b", 1)]}, [("copy", "hot", "warm", "a")]),
    (
        "copied already: forgotten in hot",
        WARM,
        {"hot": [snap("a", 8)], "warm": [snap("w1", 8, key="a")]},
        [("forget", "hot", "warm", "a")],
    ),
    (
        "old warm without cold: forgotten",
        WARM,
        {"warm": [snap("w1", 31, key="a")]},
        [("forget", "warm", None, "w1")],
    ),
    ("young warm stays", WARM, {"warm": [snap("w1", 29, key="a")]}, []),
    (
        "old warm with cold: copied",
        WARM_COLD,
        {"warm": [snap("w1", 31, key="a")]},
        [("copy", "warm", "cold", "w1")],
    ),
    (
        "in cold already: forgotten in warm",
        WARM_COLD,
        {"warm": [snap("w1", 31, key="a")], "cold": [snap("c1", 31, key="a")]},
        [("forget", "warm", "cold", "w1")],
    ),
    (
        "cold is never trimmed by age",
        WARM_COLD,
        {"cold": [snap("c1", 3000, key="a")]},
        [],
    ),
    (
        "a hot snapshot whose copy reached cold is forgotten, not copied again",
        WARM_COLD,
        {"hot": [snap("a", 40)], "cold": [snap("c1", 40, key="a")]},
        [("forget", "hot", "warm", "a")],
    ),
    (
        "custom ages",
        {"hot": {"age": "1d"}, "warm": {"repository": "/mnt/warm", "age": "2d"}},
        {"hot": [snap("a", 1.5)], "warm": [snap("w", 2.5, key="b")]},
        [("copy", "hot", "warm", "a"), ("forget", "warm", None, "w")],
    ),
]


@pytest.mark.parametrize(("raw", "listing", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan(
    raw: dict[str, object], listing: dict[str, list[TierSnapshot]], expected: list[tuple[str, ...]]
) -> None:
    got = [(a.kind, a.source, a.target, a.id) for a in plan_ageing(listing, NOW, settings(**raw))]
    assert got == expected


@pytest.mark.parametrize(
    ("raw", "where", "needle"),
    [
        ({"warm": {"repository": "relative/path"}}, "storage.warm.repository", "not an absolute path"),
        ({"warm": {"repository": "/etc"}}, "storage.warm.repository", "system folder"),
        ({"warm": {"repository": "/var/lib/clawpen/w"}}, "storage.warm.repository", "state folder"),
        ({"cold": {"repository": "/mnt/c"}}, "storage", "cold needs a warm tier"),
        ({"warm": {"repository": "/mnt/w", "age": "1d"}}, "storage", "must be longer than hot.age"),
        ({"warm": {"repository": "/mnt/w", "env_secrets": ["bad name"]}}, "env_secrets", "not a secret name"),
        ({"logs_warm": "/usr"}, "storage.logs_warm", "system folder"),
    ],
)
def test_bad_storage_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raw: dict[str, object], where: str, needle: str
) -> None:
    from clawpen.spec.loader import parse_spec_text

    monkeypatch.setenv("CLAWPEN_HOME", str(tmp_path / "state"))

    lines = ["[storage]"]
    for key, value in raw.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k} = {v!r}".replace("'", '"') for k, v in value.items())
            lines.append(f"{key} = {{ {inner} }}")
        else:
            lines.append(f'{key} = "{value}"')
    spec = tmp_path / "clawpen.toml"
    text = "\n".join(lines) + "\n"
    with pytest.raises(ConfigError) as err:
        parse_spec_text(text.replace("/var/lib/clawpen", str(tmp_path / "state")), spec)
    assert needle in str(err.value)
    assert where in (err.value.where or "")
    # positive control: a good [storage] loads, and is in no bot's policy
    good = parse_spec_text('[storage]\nwarm = { repository = "/mnt/w" }\n', spec)
    assert good.spec.storage.warm is not None
