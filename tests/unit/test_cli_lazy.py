"""A command builds and imports only its own part of the parser; help still lists them all."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from clawpen import cli, cli_parser


def test_the_index_names_each_modules_commands_exactly():
    found = {}
    for name in cli_parser.COMMAND_MODULES:
        for command in importlib.import_module(name).COMMANDS:
            found[command] = name
    assert found == cli_parser.COMMAND_INDEX
    assert not set(found) & set(cli.COMMANDS)


@pytest.mark.parametrize("command", sorted({*cli_parser.COMMAND_INDEX, *cli.COMMANDS}))
def test_the_parser_of_one_command_knows_that_command(command):
    sub = next(a for a in cli.build_parser(command)._actions if a.dest == "cmd")
    assert command in sub.choices
    every = next(a for a in cli.build_parser()._actions if a.dest == "cmd")
    assert set(every.choices) == {*cli_parser.COMMAND_INDEX, *cli.COMMANDS}


def _modules_loaded_by(args: list[str]) -> set[str]:
    code = (
        "import sys\nfrom clawpen import cli, cli_parser\n"
        f"cli.build_parser(cli._command_of({args!r})).parse_known_args({args!r})\n"
        "print(' '.join(m for m in sys.modules if m in cli_parser.COMMAND_MODULES))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_run_imports_no_other_command_module():
    assert _modules_loaded_by(["--debug", "run", "--", "true"]) == set()
    assert _modules_loaded_by(["ps"]) == {"clawpen.cli_daemon"}
    # the help (no command) lists every command from the table alone
    assert _modules_loaded_by(["--debug"]) == set()


def test_an_unknown_command_still_lists_every_command(capsys):
    assert cli.main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    for command in ("run", "up", "secrets", "dashboard", "validate"):
        assert command in err


def test_the_table_holds_each_commands_help_line_in_the_modules_order():
    """clawpen --help lists the table's lines: they are the ones each module gives add_parser."""
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    built: dict[str, tuple[str, str]] = {}
    for module in dict.fromkeys(m for m, _ in cli_parser.COMMANDS.values()):
        before = len(sub._choices_actions)
        importlib.import_module(module).add_commands(sub)
        for action in sub._choices_actions[before:]:
            built[action.dest] = (module, action.help)
    assert list(built.items()) == list(cli_parser.COMMANDS.items())


def test_each_commands_parser_is_built_on_demand_with_its_own_prog():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "cmd")
    assert all(p is None for p in sub.choices.values())  # nothing built yet
    ns, extra = parser.parse_known_args(["logs", "-n", "3", "bot"])
    assert (ns.cmd, ns.tail, ns.bot, extra) == ("logs", 3, "bot", [])
    assert sub.choices["logs"].prog == "clawpen logs"
    assert [name for name, p in sub.choices.items() if p is not None] == ["logs"]
    assert list(sub.choices) == list(cli_parser.COMMANDS)  # the order of the help and the errors


def test_help_width_follows_columns_as_argparse_does(monkeypatch, capsys):
    import shutil

    for columns in ("60", "140"):
        monkeypatch.setenv("COLUMNS", columns)
        assert cli_parser.help_width() == shutil.get_terminal_size().columns - 2
    monkeypatch.delenv("COLUMNS")
    assert cli_parser.help_width() == shutil.get_terminal_size().columns - 2
    monkeypatch.setenv("COLUMNS", "60")
    assert cli.main([]) == 2
    assert max(map(len, capsys.readouterr().out.splitlines())) <= 58


def test_the_cli_collects_garbage_less_often_but_the_daemon_as_python_does(monkeypatch):
    import gc

    from clawpen import cli_daemon

    seen: dict[str, tuple[int, ...]] = {}

    def record(ns):
        seen[ns.cmd] = gc.get_threshold()
        return 0

    for name in ("daemon", "ps"):
        monkeypatch.setitem(cli_daemon.COMMANDS, name, record)
    old = gc.get_threshold()
    try:
        for name in ("daemon", "ps"):
            gc.set_threshold(*cli._GC_CLI)  # as entry() leaves it
            assert cli.main([name]) == 0
    finally:
        gc.set_threshold(*old)
    assert seen == {"daemon": cli._GC_DEFAULTS, "ps": cli._GC_CLI}
    assert cli._GC_DEFAULTS[0] < cli._GC_CLI[0]


def test_a_command_module_cannot_add_an_alias_the_table_does_not_know():
    sub = next(a for a in cli.build_parser()._actions if a.dest == "cmd")
    with pytest.raises(TypeError, match="no aliases"):
        cli_parser._Only(sub, "ps").add_parser("ps", aliases=["ls"])
    assert cli_parser._Only(sub, "ps").add_parser("ps").prog == "clawpen ps"  # positive control
