"""The dependency audit on packages installed by the real tools: npm writes a bot's lockfile
with a vulnerable lodash, pip installs a vulnerable urllib3 into a bot's venv; the audit finds
both from the shipped OSV export, and after the real upgrades finds neither. The registries
(npm's and the Python index) answer the outdated check. Needs the machine's Node.js and npm and
the registries (npm and PyPI) reachable."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clawpen.assess import depaudit
from clawpen.assess.model import AuditContext, Severity

pytestmark = [pytest.mark.slow]

DATA = Path(__file__).resolve().parent.parent / "data" / "osv"
LODASH = "GHSA-35jh-r3h4-6jhm"
URLLIB3 = "GHSA-q2q7-5pp4-w6pg"


def sh(argv: list[str], cwd: Path | None = None) -> None:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"{argv}: {proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def npm() -> str:
    found = shutil.which("npm")
    assert found, "npm is needed (the machine's Node.js and npm)"
    return found


def test_real_lockfile_and_venv_are_audited(tmp_path: Path, npm: str) -> None:
    web, py = tmp_path / "web", tmp_path / "py-data"
    web.mkdir()
    py.mkdir()
    (web / "package.json").write_text('{"name": "web", "version": "1.0.0", "private": true}')
    npm_flags = ["--package-lock-only", "--no-audit", "--no-fund", "--ignore-scripts"]
    sh([npm, "install", "lodash@4.17.20", *npm_flags], cwd=web)
    sh([sys.executable, "-m", "venv", str(py / "venv")])
    pip = [str(py / "venv" / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    sh([*pip, "urllib3==1.26.4"])
    spec = tmp_path / "clawpen.toml"
    spec.write_text(
        '[bots.web]\ncommand = ["node", "/app/bot.js"]\nfilesystem = { ro = ["./web:/app"] }\n\n'
        '[bots.py]\ncommand = ["/workspace/venv/bin/python", "-c", "pass"]\nworkspace = "./py-data"\n'
    )
    ctx = AuditContext(root=tmp_path, live=False, spec_path=spec, osv=DATA)
    found = {f.subject: f for f in depaudit.run_vulnerable(ctx)}
    assert sorted(found) == [f"py:PyPI:urllib3:{URLLIB3}", f"web:npm:lodash:{LODASH}"], found
    lodash = found[f"web:npm:lodash:{LODASH}"]
    assert lodash.severity is Severity.HIGH and lodash.where == "/web/package-lock.json"
    assert lodash.fix == "upgrade lodash to >= 4.17.21 in bot web's package-lock.json"
    urllib3 = found[f"py:PyPI:urllib3:{URLLIB3}"]
    assert urllib3.where == f"/py-data/venv/lib/python3.{sys.version_info.minor}/site-packages"
    assert (
        urllib3.fix
        == "upgrade urllib3 to >= 1.26.5 in bot py's Python environment: pip install 'urllib3>=1.26.5'"
    )

    # the registries know newer versions of both (the weekly check, online)
    online = AuditContext(root=tmp_path, live=False, spec_path=spec, online=True)
    outdated = {f.subject: f for f in depaudit.run_outdated(online) if f.check == "dependencies.outdated"}
    assert {"web:npm:lodash", "py:PyPI:urllib3"} <= set(outdated), outdated
    assert outdated["web:npm:lodash"].severity is Severity.LOW

    # positive control: the real upgrades clear both findings
    sh([npm, "install", "lodash@4.17.21", *npm_flags], cwd=web)
    sh([*pip, "urllib3==1.26.5"])
    assert json.loads((web / "package-lock.json").read_text())["packages"]["node_modules/lodash"][
        "version"
    ] == ("4.17.21")
    assert depaudit.run_vulnerable(ctx) == []
