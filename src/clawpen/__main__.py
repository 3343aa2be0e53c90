from clawpen.cli import entry

entry()
