"""The audit log is a hash chain: any changed, deleted or reordered row is reported."""

import json

from clawpen import audit


def _fill(state, n=5):
    return [audit.append(state, "alice", "secrets.set", {"name": f"KEY_{i}"}) for i in range(1, n + 1)]


def _lines(state):
    return (state / "audit.log").read_bytes().splitlines(keepends=True)


def test_append_five_verify_clean(tmp_path):
    records = _fill(tmp_path)
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0]["prev"] == audit.GENESIS
    assert audit.verify(tmp_path) == []
    assert [r["detail"]["name"] for r in audit.read(tmp_path)] == [f"KEY_{i}" for i in range(1, 6)]
    assert (tmp_path / "audit.log").stat().st_mode & 0o077 == 0


def test_edited_middle_row_is_reported(tmp_path):
    _fill(tmp_path)
    lines = _lines(tmp_path)
    rec = json.loads(lines[2])
    rec["detail"]["name"] = "OTHER"
    lines[2] = (json.dumps(rec) + "\n").encode()
    (tmp_path / "audit.log").write_bytes(b"".join(lines))
    problems = audit.verify(tmp_path)
    assert any(p.startswith("line 3 (seq 3): row changed") for p in problems)


def test_edit_with_recomputed_hash_breaks_the_chain(tmp_path):
    _fill(tmp_path)
    lines = _lines(tmp_path)
    rec = json.loads(lines[1])
    rec["who"] = "mallory"
    rec["hash"] = audit.record_hash(rec)
    lines[1] = (json.dumps(rec) + "\n").encode()
    (tmp_path / "audit.log").write_bytes(b"".join(lines))
    assert audit.verify(tmp_path) == [
        "line 3 (seq 3): chain broken (line 2 was changed, deleted or inserted)"
    ]


def test_deleted_row_is_reported(tmp_path):
    _fill(tmp_path)
    lines = _lines(tmp_path)
    del lines[1]
    (tmp_path / "audit.log").write_bytes(b"".join(lines))
    assert audit.verify(tmp_path) == ["line 2 (seq 3): row seq 2 deleted before it"]


def test_deleted_first_row_is_reported(tmp_path):
    _fill(tmp_path)
    (tmp_path / "audit.log").write_bytes(b"".join(_lines(tmp_path)[1:]))
    assert audit.verify(tmp_path) == ["line 1 (seq 2): row seq 1 deleted before it"]


def test_reordered_rows_are_reported(tmp_path):
    _fill(tmp_path)
    lines = _lines(tmp_path)
    lines[1], lines[2] = lines[2], lines[1]
    (tmp_path / "audit.log").write_bytes(b"".join(lines))
    problems = audit.verify(tmp_path)
    assert any("line 3 (seq 2): row out of order" in p for p in problems)


def test_garbage_row_is_reported_and_append_continues(tmp_path):
    _fill(tmp_path, 2)
    with open(tmp_path / "audit.log", "ab") as f:
        f.write(b"not json")
    rec = audit.append(tmp_path, "alice", "secrets.rm", {"name": "KEY_1"})
    assert rec["seq"] == 4
    assert audit.verify(tmp_path) == ["line 3: not a valid audit record"]


def test_missing_log_verifies_clean(tmp_path):
    assert audit.verify(tmp_path) == []
    assert audit.read(tmp_path) == []
