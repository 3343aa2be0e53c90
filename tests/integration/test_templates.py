"""The python, node and shell templates, as `clawpen init` writes them, come up healthy under
the daemon and pass `clawpen validate`; the python one builds its virtual environment through
the egress gateway (a real package from PyPI) into /opt/bot, read-only for the bot."""

from __future__ import annotations

import json

import pytest
from helpers import wait_for
from template_env import fit_build, template_daemon

pytestmark = [pytest.mark.root, pytest.mark.bwrap, pytest.mark.netns, pytest.mark.slow]


def _healthy(d, bot: str, timeout: float) -> dict:  # type: ignore[no-untyped-def]
    def check() -> bool:
        inst = d.json("status", bot)["instances"]
        return bool(inst) and inst[0]["state"] == "running" and inst[0]["health"] == "healthy"

    assert wait_for(check, timeout, interval=0.5), d.json("status", bot)
    return d.json("status", bot)


def test_python_template_builds_through_the_gateway_and_runs() -> None:
    with template_daemon() as (d, spec_dir):
        d.cli("init", "--template", "python", str(spec_dir))
        (spec_dir / "pybot" / "requirements.txt").write_text("six==1.16.0\n")
        fit_build(spec_dir / "clawpen.toml", "pybot", ("pypi.org", "files.pythonhosted.org"))
        d.spec = spec_dir / "clawpen.toml"
        up = d.cli("up", "-f", str(d.spec), timeout=300)
        assert "start pybot" in up.stdout
        _healthy(d, "pybot", 60)
        ex = d.cli(
            "exec", "pybot", "--", "/opt/bot/venv/bin/python", "-c", "import six; print(six.__version__)"
        )
        assert ex.stdout.strip() == "1.16.0"
        ro = d.cli("exec", "pybot", "--", "touch", "/opt/bot/venv/x", check=False)
        assert ro.returncode != 0 and "Read-only" in ro.stderr + ro.stdout
        # the build's connections went through the gateway, to the allowlist only
        log = d.cli("net", "log", "pybot").stdout
        assert "pypi.org" in log and "ALLOW" in log, log
        report = json.loads(d.cli("validate", "pybot", "--quick", "--json").stdout)
        assert report["ok"], report
        assert (d.home / "validate" / f"{report['release']}.json").exists()


@pytest.mark.parametrize(("template", "bot"), [("shell", "shellbot"), ("node", "nodebot")])
def test_small_templates_come_up_healthy(template: str, bot: str) -> None:
    with template_daemon() as (d, spec_dir):
        d.cli("init", "--template", template, str(spec_dir))
        d.spec = spec_dir / "clawpen.toml"
        d.cli("up", "-f", str(d.spec), timeout=120)
        _healthy(d, bot, 60)
        report = json.loads(d.cli("validate", bot, "--quick", "--json").stdout)
        assert report["ok"], report
        names = [c["name"] for c in report["bots"][bot]]
        assert names[:2] == ["running", "healthy"] and "resource headroom" in names
