"""A command builds and imports only its own part of the parser; help still lists them all."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from clawpen import cli


def test_the_index_names_each_modules_commands_exactly():
    found = {}
    for name in cli.COMMAND_MODULES:
        for command in importlib.import_module(name).COMMANDS:
            found[command] = name
    assert found == cli.COMMAND_INDEX
    assert not set(found) & set(cli.COMMANDS)


@pytest.mark.parametrize("command", sorted({*cli.COMMAND_INDEX, *cli.COMMANDS}))
def test_the_parser_of_one_command_knows_that_command(command):
    sub = next(a for a in cli.build_parser(command)._actions if a.dest == "cmd")
    assert command in sub.choices
    every = next(a for a in cli.build_parser()._actions if a.dest == "cmd")
    assert set(every.choices) == {*cli.COMMAND_INDEX, *cli.COMMANDS}


def _modules_loaded_by(args: list[str]) -> set[str]:
    code = (
        "import sys\nfrom clawpen import cli\n"
        f"cli.build_parser(cli._command_of({args!r})).parse_known_args({args!r})\n"
        "print(' '.join(m for m in sys.modules if m.startswith('clawpen.cli_') or m == 'clawpen.api.cli'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_run_imports_no_other_command_module():
    assert _modules_loaded_by(["--debug", "run", "--", "true"]) == set()
    assert _modules_loaded_by(["ps"]) == {"clawpen.cli_daemon"}
    # help (no command) and an unknown command need them all
    assert len(_modules_loaded_by(["--debug"])) == len(cli.COMMAND_MODULES)


def test_an_unknown_command_still_lists_every_command(capsys):
    assert cli.main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    for command in ("run", "up", "secrets", "dashboard", "validate"):
        assert command in err
