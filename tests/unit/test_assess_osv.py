"""OSV matching: the version orders (SemVer, PEP 440, dpkg), range evaluation, severities, the
offline export's three forms and the online API (a local server speaking OSV's protocol)."""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from clawpen.assess import osv, versions
from clawpen.assess.model import Severity
from clawpen.errors import ConfigError

DATA = Path(__file__).resolve().parent.parent / "data" / "osv"


def ordered(ecosystem: str, seq: list[str]) -> None:
    for a, b in itertools.pairwise(seq):
        assert versions.compare(ecosystem, a, b) == -1, (a, b)
        assert versions.compare(ecosystem, b, a) == 1, (b, a)


def test_semver_precedence_follows_the_spec() -> None:
    # SemVer 2.0 section 11's example, then numeric fields compared as numbers
    ordered(
        "npm",
        [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.2.0",
            "1.10.0",
            "2.0.0",
        ],
    )
    assert versions.compare("npm", "1.0.0+build.1", "1.0.0+build.2") == 0
    assert versions.compare("npm", "v4.17.21", "4.17.21") == 0
    for bad in ("1.2", "01.2.3", "1.2.3-", "1.2.3-01", "latest", "github:a/b#c"):
        assert versions.semver_key(bad) is None, bad


def test_pep440_epochs_and_prereleases() -> None:
    ordered("PyPI", ["1.0.dev0", "1.0a1", "1.0b2", "1.0rc1", "1.0", "1.0.post1", "1.0.1", "2.0", "1!0.1"])
    assert versions.compare("PyPI", "1.26.5", "1.26.05") == 0
    with pytest.raises(ValueError, match="cannot compare"):
        versions.compare("PyPI", "not a version", "1.0")


def test_dpkg_order_with_tilde_epochs_and_revisions() -> None:
    ordered(
        "Debian:12",
        [
            "1.0~rc1-1",
            "1.0-1",
            "1.0-1.1",
            "1.0-2",
            "1.0+dfsg-1",
            "1.1~~",
            "1.1~",
            "1.1",
            "2.36-9",
            "2.36-9+deb12u2",
            "2.36-9+deb12u3",
            "2.36-10",
            "1:0.9",
        ],
    )
    assert versions.compare("Debian:12", "0:1.0-1", "1.0-1") == 0


@pytest.mark.parametrize(
    ("vector", "score"),
    [
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 9.8),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H", 7.5),
        ("CVSS:3.1/AV:N/AC:L/PR:H/UI:N/S:U/C:H/I:H/A:H", 7.2),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N", 6.1),
        ("CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", 10.0),
        ("CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:N/I:N/A:N", 0.0),
        ("5.3", 5.3),
    ],
)
def test_cvss_base_scores(vector: str, score: float) -> None:
    assert versions.cvss_score(vector) == score


def test_cvss_unknown_versions_give_no_score() -> None:
    assert versions.cvss_score("CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N") is None
    assert versions.cvss_score("AV:N/AC:L/Au:N/C:P/I:P/A:P") is None
    assert versions.cvss_score("CVSS:3.1/AV:N/AC:L") is None


def test_ranges_introduced_fixed_last_affected() -> None:
    events = [{"introduced": "1.0.0"}, {"fixed": "1.2.6"}]
    assert osv.in_range(events, "semver", "1.2.5") == (True, ["1.2.6"])
    assert osv.in_range(events, "semver", "1.0.0")[0]
    assert not osv.in_range(events, "semver", "1.2.6")[0]
    assert not osv.in_range(events, "semver", "0.9.9")[0]
    assert osv.in_range(events, "semver", "1.2.6-rc.1")[0]  # a pre-release of the fix: before it
    last = [{"introduced": "0"}, {"last_affected": "2.0"}]
    assert osv.in_range(last, "pypi", "2.0")[0]
    assert not osv.in_range(last, "pypi", "2.0.post1")[0]
    # two windows in one range, events given out of order
    two = [{"fixed": "3.0"}, {"introduced": "2.5"}, {"fixed": "1.5"}, {"introduced": "1.0"}]
    assert [
        osv.in_range(two, "pypi", v)[0] for v in ("0.9", "1.0", "1.4", "1.5", "2.4", "2.5", "2.9", "3.0")
    ] == [
        False,
        True,
        True,
        False,
        False,
        True,
        True,
        False,
    ]
    # a version the ecosystem cannot read is not claimed affected
    assert not osv.in_range(events, "semver", "not-a-version")[0]


def test_affected_versions_list_and_ecosystem_ranges() -> None:
    aff = {"package": {"ecosystem": "PyPI", "name": "x"}, "versions": ["1.0", "1.1"]}
    assert osv.affected(aff, "PyPI", "1.1") == (True, [])
    assert osv.affected(aff, "PyPI", "1.1.0")[0]  # the same version by PEP 440
    assert not osv.affected(aff, "PyPI", "1.2")[0]
    deb = {
        "package": {"ecosystem": "Debian:12", "name": "glibc"},
        "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "2.36-9+deb12u3"}]}],
    }
    assert osv.affected(deb, "Debian:12", "2.36-9+deb12u2") == (True, ["2.36-9+deb12u3"])
    assert not osv.affected(deb, "Debian:12", "2.36-9+deb12u3")[0]
    git = {
        "package": {"ecosystem": "PyPI", "name": "x"},
        "ranges": [{"type": "GIT", "repo": "https://example.org/x", "events": [{"introduced": "0"}]}],
    }
    assert not osv.affected(git, "PyPI", "1.0")[0]


def test_severity_from_label_then_cvss_then_high() -> None:
    assert osv.severity_of({"database_specific": {"severity": "MODERATE"}}) == (Severity.MEDIUM, None)
    vec = {"severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}]}
    assert osv.severity_of(vec) == (Severity.CRITICAL, 9.8)
    low = {"severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:L/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N"}]}
    assert osv.severity_of(low)[0] is Severity.LOW
    assert osv.severity_of({"id": "X"}) == (Severity.HIGH, None)
    assert [osv.from_score(s) for s in (9.0, 8.9, 7.0, 4.0, 3.9)] == [
        Severity.CRITICAL,
        Severity.HIGH,
        Severity.HIGH,
        Severity.MEDIUM,
        Severity.LOW,
    ]


def shipped_ids(db: osv.Database) -> set[str]:
    return set(db.records)


ALL = {"GHSA-q2q7-5pp4-w6pg", "GHSA-35jh-r3h4-6jhm", "GHSA-xvch-5gv4-984h", "DSA-5514-1"}


def test_load_folder_zip_and_list(tmp_path: Path) -> None:
    assert shipped_ids(osv.load(DATA)) == ALL
    zpath = tmp_path / "all.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(DATA.glob("*.json")):
            zf.write(f, f.name)
    assert shipped_ids(osv.load(zpath)) == ALL
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([json.loads(f.read_text()) for f in DATA.glob("*.json")]))
    assert shipped_ids(osv.load(listed)) == ALL
    assert shipped_ids(osv.load(DATA / "DSA-5514-1.json")) == {"DSA-5514-1"}


def test_shipped_records_match_the_real_ranges() -> None:
    db = osv.load(DATA)
    assert [m.id for m in db.matches("npm", "lodash", "4.17.20")] == ["GHSA-35jh-r3h4-6jhm"]
    assert db.matches("npm", "lodash", "4.17.21") == []
    m = db.matches("npm", "minimist", "1.2.5")[0]
    assert (m.severity, m.fixed, m.aliases) == (Severity.CRITICAL, ("1.2.6",), ("CVE-2021-44906",))
    assert db.matches("npm", "minimist", "0.2.3")[0].fixed == ("0.2.4",)
    assert db.matches("npm", "minimist", "0.2.4") == [] and db.matches("npm", "minimist", "1.2.6") == []
    # PEP 503 names: "URLLib3" is urllib3
    assert [m.id for m in db.matches("PyPI", "URLLib3", "1.26.4")] == ["GHSA-q2q7-5pp4-w6pg"]
    assert db.matches("PyPI", "urllib3", "1.26.5") == []
    assert db.matches("npm", "urllib3", "1.26.4") == []  # another ecosystem
    assert [m.severity for m in db.matches("Debian:12", "glibc", "2.36-9+deb12u2")] == [Severity.HIGH]
    assert db.matches("Debian:11", "glibc", "2.31-13") == []  # another release
    assert db.matches("Debian:12", "glibc", "2.36-9+deb12u4") == []


def test_bad_exports_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as err:
        osv.load(tmp_path / "missing.zip")
    assert err.value.hint and err.value.exit_code == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not JSON") as err:
        osv.load(bad)
    assert err.value.where == str(bad)
    noid = tmp_path / "noid.json"
    noid.write_text('[{"affected": []}]')
    with pytest.raises(ConfigError, match="no id"):
        osv.load(noid)
    zpath = tmp_path / "all.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("X-1.json", "[1, 2]")
    with pytest.raises(ConfigError, match="other than a record") as err:
        osv.load(zpath)
    assert err.value.where == f"{zpath}:X-1.json"


class FakeOsv(BaseHTTPRequestHandler):
    """OSV's API over the shipped records: /v1/querybatch and /v1/vulns/ID."""

    db: osv.Database
    seen: list[str]

    def log_message(self, *args: Any) -> None:
        return

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self.seen.append(self.path)
        queries = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["queries"]
        results: list[dict[str, Any]] = []
        for q in queries:  # one id a page, as the real API pages long answers
            hits = self.db.matches(q["package"]["ecosystem"], q["package"]["name"], q["version"])
            page = int(q.get("page_token", "0"))
            result: dict[str, Any] = {}
            if hits[page:]:
                result["vulns"] = [{"id": hits[page].id, "modified": "2024-01-01T00:00:00Z"}]
            if hits[page + 1 :]:
                result["next_page_token"] = str(page + 1)
            results.append(result)
        self._send(200, {"results": results})

    def do_GET(self) -> None:
        self.seen.append(self.path)
        rid = self.path.rsplit("/", 1)[1]
        if rid in self.db.records:
            self._send(200, self.db.records[rid])
        else:
            self._send(404, {"code": 5, "message": "Bug not found"})


@contextlib.contextmanager
def serve(db: osv.Database) -> Iterator[tuple[str, list[str]]]:
    """A local OSV API over ``db``: its address and the paths it was asked for."""
    seen: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (FakeOsv,), {"db": db, "seen": seen}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def fake_api() -> Iterator[tuple[str, list[str]]]:
    with serve(osv.load(DATA)) as api:
        yield api


def test_online_query_fetches_only_the_matching_records(fake_api: tuple[str, list[str]]) -> None:
    api, seen = fake_api
    pkgs = [("npm", "lodash", "4.17.20"), ("npm", "minimist", "1.2.6"), ("PyPI", "urllib3", "1.26.4")]
    db = osv.query_online(pkgs, api=api)
    assert set(db.records) == {"GHSA-35jh-r3h4-6jhm", "GHSA-q2q7-5pp4-w6pg"}
    assert seen[0] == "/v1/querybatch" and sorted(seen[1:]) == [
        "/v1/vulns/GHSA-35jh-r3h4-6jhm",
        "/v1/vulns/GHSA-q2q7-5pp4-w6pg",
    ]
    assert [m.id for m in db.matches("npm", "lodash", "4.17.20")] == ["GHSA-35jh-r3h4-6jhm"]


def test_online_query_follows_pages() -> None:
    extra = json.loads((DATA / "GHSA-35jh-r3h4-6jhm.json").read_text())
    served = osv.load(DATA)
    served.add({**extra, "id": "GHSA-test-0000-0000"})  # a second record for lodash: two pages
    with serve(served) as (api, seen):
        db = osv.query_online([("npm", "lodash", "4.17.20")], api=api)
    assert set(db.records) == {"GHSA-35jh-r3h4-6jhm", "GHSA-test-0000-0000"}
    assert seen.count("/v1/querybatch") == 2


def test_unreachable_api_raises_unreachable() -> None:
    with pytest.raises(osv.Unreachable):
        osv.query_online([("npm", "lodash", "4.17.20")], api="http://127.0.0.1:9", timeout=2)


def test_online_audit_uses_the_api_not_the_offline_file(
    fake_api: tuple[str, list[str]], tmp_path: Path
) -> None:
    from clawpen.assess import depaudit, deps
    from clawpen.assess.model import AuditContext

    api, seen = fake_api
    pkgs = [
        deps.Package("npm", "lodash", "4.17.20", "/w/package-lock.json", "web"),
        deps.Package("npm", "x", "github:owner/x#abc", "/w/package-lock.json", "web"),
    ]
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    ctx = AuditContext(root=tmp_path, live=False, online=True, osv=empty)
    [f] = depaudit.vulnerable(ctx, pkgs, api=api)
    assert (f.check, f.data["id"], f.where) == (
        "dependencies.vulnerable",
        "GHSA-35jh-r3h4-6jhm",
        "/w/package-lock.json",
    )
    assert seen == ["/v1/querybatch", "/v1/vulns/GHSA-35jh-r3h4-6jhm"]


def test_withdrawn_records_are_ignored() -> None:
    record = json.loads((DATA / "GHSA-35jh-r3h4-6jhm.json").read_text())
    db = osv.Database()
    db.add({**record, "withdrawn": "2024-01-01T00:00:00Z"})
    assert db.matches("npm", "lodash", "4.17.20") == []
    db.add(record)
    assert len(db.matches("npm", "lodash", "4.17.20")) == 1
