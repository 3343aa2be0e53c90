"""`clawpen audit`'s own parts: the spec group (each bot's exposure), the configuration group (the
audit log's chain and its anchored head, unapplied edits, watched files, permissions), the report
(score, kept reports, --since) and the command's exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from clawpen import audit, cli
from clawpen.assess import botspec, config, report
from clawpen.assess.model import AuditContext, AuditFinding, ReleaseFacts, Severity

WEAK = """\
[bots.web]
command = ["python3", "-m", "http.server", "8000"]
env = { OPENAI_API_KEY = "sk-live-1234567890", DEBUG = "1" }
network = { egress = "open", publish = ["0.0.0.0:8000:8000"], expose = true }
resources = { disk = "unlimited" }
filesystem = { rw = ["/srv/shared"] }
restart = { policy = "no" }
"""
STRICT = """\
[bots.web]
command = ["python3", "-m", "http.server", "8000"]
secrets = ["OPENAI_API_KEY"]
health = { http = "http://127.0.0.1:8000/" }
network = { egress = ["api.openai.com:443"], bandwidth = "8mbit", publish = ["127.0.0.1:8000:8000"] }
"""


def spec_file(tmp_path: Path, text: str) -> Path:
    (tmp_path / "srv").mkdir(exist_ok=True)
    path = tmp_path / "clawpen.toml"
    path.write_text(text)
    return path


def checks(findings: list[AuditFinding]) -> set[str]:
    return {f.check for f in findings}


# ------------------------------------------------------------------------- spec group
def test_a_weak_bot_gets_each_finding_with_its_line_and_a_strict_one_none(tmp_path: Path) -> None:
    weak = botspec.run(AuditContext(spec_path=spec_file(tmp_path, WEAK)))
    assert checks(weak) == {
        "spec.egress_open",
        "spec.published_public",
        "spec.published_anyone",
        "spec.secret_in_env",
        "spec.no_disk_cap",
        "spec.writable_mount",
        "spec.no_health_check",
        "spec.no_restart",
    }
    by = {f.check: f for f in weak}
    assert by["spec.secret_in_env"].where.endswith("clawpen.toml:3")
    assert by["spec.secret_in_env"].subject == "web:OPENAI_API_KEY"  # DEBUG = "1" is no secret
    assert "sk-live" not in json.dumps([f.to_json() for f in weak])  # never the value itself
    assert by["spec.egress_open"].where.endswith("clawpen.toml:4")
    assert by["spec.published_anyone"].severity is Severity.HIGH
    assert botspec.exposure("web", weak).label in ("EXPOSED", "UNSAFE")

    strict = botspec.run(AuditContext(spec_path=spec_file(tmp_path, STRICT)))
    assert strict == []
    assert botspec.exposure("web", strict).value == 0.0


def test_wide_egress_patterns_and_private_networks_are_found(tmp_path: Path) -> None:
    rules = '["*.amazonaws.com:443", "*.telegram.org:443", "*.s3.amazonaws.com", "api.example.com:443"]'
    text = STRICT.replace('["api.openai.com:443"]', rules)
    path = spec_file(tmp_path, text.replace("bandwidth =", 'allow_private = ["10.0.0.0/8"], bandwidth ='))
    found = botspec.run(AuditContext(spec_path=path))
    wide = sorted(f.subject for f in found if f.check == "spec.egress_wide")
    assert wide == ["web:*.amazonaws.com:443", "web:*.s3.amazonaws.com"]  # not *.telegram.org
    assert [f.subject for f in found if f.check == "spec.allow_private"] == ["web:10.0.0.0/8"]


# ------------------------------------------------------------------------- configuration group
def _log(state: Path, n: int) -> list[tuple[int, str]]:
    return [audit.head_of(audit.append(state, "root", f"action{i}", {"i": i})) for i in range(n)]


def test_a_log_cut_at_its_end_passes_the_chain_but_not_the_anchored_head(tmp_path: Path) -> None:
    state = tmp_path / "state"
    heads = _log(state, 5)
    intact = config.run(AuditContext(state_dir=state, anchors=tuple(heads)))
    assert not checks(intact) & {"configuration.audit_chain", "configuration.audit_truncated"}

    log = state / audit.AUDIT_FILE
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:3]))  # the last two records cut off: the chain is still valid
    assert audit.verify(state) == []
    found = {f.check: f for f in config.run(AuditContext(state_dir=state, anchors=tuple(heads)))}
    cut = found["configuration.audit_truncated"]
    assert cut.severity is Severity.CRITICAL
    assert "log ends at seq 3" in cut.title and "2 records cut off" in cut.title


def test_a_log_rewritten_with_a_fresh_chain_is_found_by_its_anchors(tmp_path: Path) -> None:
    state = tmp_path / "state"
    heads = _log(state, 3)
    (state / audit.AUDIT_FILE).unlink()
    _log(state, 3)  # same length, same actions, new timestamps: a valid chain of other records
    assert audit.verify(state) == []
    problems = audit.check_anchors(state, heads)
    assert any("rewritten" in p for p in problems)


def test_a_changed_record_breaks_the_chain(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _log(state, 3)
    log = state / audit.AUDIT_FILE
    log.write_text(log.read_text().replace("action1", "innocent"))
    found = {f.check for f in config.run(AuditContext(state_dir=state))}
    assert "configuration.audit_chain" in found


def test_an_unapplied_edit_and_changes_since_the_release_are_reported(tmp_path: Path) -> None:
    import hashlib

    path = spec_file(tmp_path, STRICT)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    state = tmp_path / "state"
    release = ReleaseFacts(1, 0.0, "root", str(path), digest)
    same = config.run(AuditContext(spec_path=path, state_dir=state, release=release))
    assert "configuration.spec_unreleased" not in checks(same)
    path.write_text(STRICT + "# edited\n")
    audit.append(state, "alice", "secrets.set", {"name": "X"})
    audit.append(state, "alice", "secrets.get", {"name": "X"})  # a read is not a change
    found = {f.check: f for f in config.run(AuditContext(spec_path=path, state_dir=state, release=release))}
    assert found["configuration.spec_unreleased"].severity is Severity.MEDIUM
    assert found["configuration.changes"].data == {"secrets.set": 1}
    code = ReleaseFacts(1, 0.0, "root", str(path), digest, {"web": ["content of ./app changed"]})
    found = {f.check: f for f in config.run(AuditContext(state_dir=state, release=code))}
    assert found["configuration.code_changed"].subject == "web"


def test_watched_files_changed_since_the_last_audit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/ssh/sshd_config.d").mkdir(parents=True)
    (root / "etc/ssh/sshd_config").write_text("PasswordAuthentication no\n")
    ctx = AuditContext(root=root, live=False)
    before = config.fingerprints(ctx)
    assert list(before) == ["/etc/ssh/sshd_config"]
    assert config.run(AuditContext(root=root, live=False, previous_files=before)) == []
    (root / "etc/ssh/sshd_config.d/99-evil.conf").write_text("PermitRootLogin yes\n")
    (root / "etc/ssh/sshd_config").write_text("PasswordAuthentication yes\n")
    found = config.run(AuditContext(root=root, live=False, previous_files=before))
    assert sorted((f.subject, f.title.split(" was ")[1]) for f in found) == [
        ("/etc/ssh/sshd_config", "changed since the last audit"),
        ("/etc/ssh/sshd_config.d/99-evil.conf", "created since the last audit"),
    ]


def test_a_spec_others_can_write_is_critical(tmp_path: Path) -> None:
    path = spec_file(tmp_path, STRICT)
    os.chmod(tmp_path, 0o755)
    os.chmod(path, 0o644)
    assert "configuration.permissions" not in checks(config.run(AuditContext(spec_path=path)))
    os.chmod(path, 0o666)
    found = [f for f in config.run(AuditContext(spec_path=path)) if f.check == "configuration.permissions"]
    assert found and found[0].severity is Severity.CRITICAL and "writable by everyone" in found[0].title


# ------------------------------------------------------------------------- report
def test_report_keeps_compares_and_survives_a_failing_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    path = spec_file(tmp_path, WEAK)
    first = report.run(AuditContext(spec_path=path, state_dir=state), ("spec",))
    assert first.score == sum(f.points for f in first.findings) > 0
    report.save(state, first)
    path.write_text(WEAK.replace('egress = "open"', 'egress = ["api.openai.com:443"]'))
    second = report.run(AuditContext(spec_path=path, state_dir=state), ("spec",))
    before = report.last(state, ("spec",))
    assert before is not None
    changes = report.diff(before, second)
    assert [f.check for f in changes.fixed] == ["spec.egress_open"]
    assert [f.check for f in changes.new] == ["spec.no_bandwidth_cap"]
    assert changes.score_after < changes.score_before

    (report.reports_dir(state) / "29990101T000000.000000Z.json").write_text("{not json")
    assert report.last(state) is not None  # a corrupt kept report is skipped, not fatal
    for _ in range(5):
        report.save(state, second, keep=3)
    assert len(report.kept(state)) == 3

    def broken(_ctx: AuditContext) -> list[AuditFinding]:
        raise RuntimeError("boom")

    monkeypatch.setattr(botspec, "run", broken)
    result = report.run(AuditContext(spec_path=path), ("spec",))
    assert [(f.check, f.subject) for f in result.findings] == [("audit.failed", "spec")]


def test_the_command_exit_codes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLAWPEN_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    path = spec_file(tmp_path, WEAK)
    assert cli.main(["audit", "--only", "nonsense", "-f", str(path)]) == 2
    assert "not a group" in capsys.readouterr().err
    assert cli.main(["audit", "--only", "spec", "--since", "last"]) == 2
    assert "no kept audit report" in capsys.readouterr().err
    assert cli.main(["audit", "--only", "spec", "--fail-on", "high"]) == 1
    out = capsys.readouterr().out
    assert "web: egress is open" in out and "fix:" in out
    assert cli.main(["audit", "--only", "spec", "--fail-on", "critical", "--json", "--since", "last"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["since"]["new"] == [] and data["counts"]["high"] >= 3
    path.write_text(WEAK.replace("[bots.web]", "[bots.web\n"))
    assert cli.main(["audit", "--only", "spec"]) == 2  # a spec that does not load: exit 2, no traceback
    assert "Traceback" not in capsys.readouterr().err


def test_audit_metrics_count_each_group_from_its_newest_report(tmp_path: Path) -> None:
    from clawpen.assess.model import CheckInfo, finding
    from clawpen.metrics.auditvals import AuditValues

    state = tmp_path / "state"
    host = CheckInfo("host.x", "host", "x", "test")
    spec = CheckInfo("spec.y", "spec", "y", "test")
    crit = finding(host, Severity.CRITICAL, "t", "w", "f")
    high = finding(spec, Severity.HIGH, "t", "w", "f", subject="bot")

    def rep(at: float, groups: tuple[str, ...], found: list[AuditFinding]) -> report.Report:
        return report.Report(at, 0.1, "/", None, groups, found)

    values = AuditValues(state)
    assert values.values(100.0) == {}
    report.save(state, rep(100.0, ("host", "spec"), [crit, high]))
    assert values.values(110.0) == {
        "audit_score": 22.0, "audit_critical": 1.0, "audit_high": 1.0, "audit_age_seconds": 10.0
    }  # fmt: skip
    report.save(state, rep(200.0, ("spec",), []))  # `--only spec`: the host's critical stays
    got = values.values(210.0)
    assert (got["audit_critical"], got["audit_high"], got["audit_age_seconds"]) == (1.0, 0.0, 10.0)
    report.save(state, rep(300.0, ("host",), []))
    assert values.values(300.0)["audit_critical"] == 0.0


def test_docs_audit_lists_every_check_with_its_source() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "audit.md").read_text()
    rows = {
        line.split("|")[1].strip().strip("`"): line for line in doc.splitlines() if line.startswith("| `")
    }
    for info in [*report.catalogue(), report.FAILED]:
        assert info.id in rows, f"docs/audit.md has no row for {info.id}"
        assert info.source.strip(), info.id
