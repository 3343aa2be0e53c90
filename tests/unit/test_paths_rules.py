"""Where a workspace or a mount may be: never /, a system folder, clawpen's state folder (or
near it), nor the spec file's folder or one above it. Paths are resolved first (``..``, symlinks).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clawpen.errors import PolicyError
from clawpen.spec import rules
from clawpen.spec.loader import parse_spec_text


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """``tmp/home/project/clawpen.toml`` and the state folder ``tmp/state``."""
    project, state = tmp_path / "home" / "project", tmp_path / "state"
    project.mkdir(parents=True)
    state.mkdir()
    (project / "clawpen.toml").write_text("")
    return project / "clawpen.toml", state


def check(path: str | Path, spec: Path | None, state: Path) -> None:
    rules.check_workspace_location(str(path), state_dir=state, spec_file=spec, what="bots.a.workspace")


@pytest.mark.parametrize(
    "path", ["/", "/etc", "/usr", "/var", "/var/lib", "/var/www", "/home", "/root", "/tmp"]
)
def test_root_and_system_folders_are_refused(path: str, layout: tuple[Path, Path]) -> None:
    spec, state = layout
    with pytest.raises(PolicyError) as err:
        check(path, spec, state)
    assert err.value.where == "bots.a.workspace"
    assert "system folder" in err.value.what or "root folder" in err.value.what
    assert err.value.hint and "folder of its own" in err.value.hint


def test_lib_folders_and_dotdot_to_root_are_refused(layout: tuple[Path, Path]) -> None:
    spec, state = layout
    for path in ("/lib", "/lib64", "/libx32", "/usr/../etc", "/tmp/../../..", "a\0b", " "):
        with pytest.raises(PolicyError):
            check(path, spec, state)


def test_state_folder_inside_and_containing_are_refused(layout: tuple[Path, Path]) -> None:
    spec, state = layout
    cases = {state: "it is clawpen's state", state / "logs": "lies inside", state.parent: "contains"}
    for path, words in cases.items():
        with pytest.raises(PolicyError) as err:
            check(path, spec, state)
        assert words in err.value.what and str(state) in err.value.what, err.value.what
        assert "vault" in err.value.what


def test_a_symlink_resolving_into_the_state_folder_is_refused(
    layout: tuple[Path, Path], tmp_path: Path
) -> None:
    spec, state = layout
    link = spec.parent / "data"
    link.symlink_to(state / "vault")
    with pytest.raises(PolicyError) as err:
        check("./data", spec, state)
    assert f"(= {state / 'vault'})" in err.value.what and "lies inside" in err.value.what
    # also when the state folder is given through a symlink and the path is relative with ..
    alias = tmp_path / "alias"
    alias.symlink_to(state)
    with pytest.raises(PolicyError):
        check("../../state/x", spec, alias)


def test_the_spec_folder_and_its_ancestors_are_refused(layout: tuple[Path, Path]) -> None:
    spec, state = layout
    for raw in (".", "..", str(spec.parent), str(spec.parent.parent), "../project/./"):
        with pytest.raises(PolicyError) as err:
            check(raw, spec, state)
        assert "the folder of the spec file" in err.value.what, err.value.what


def test_a_fresh_subfolder_is_accepted(layout: tuple[Path, Path], tmp_path: Path) -> None:
    """Positive control: the checks do not refuse everything."""
    spec, state = layout
    check("./data", spec, state)  # missing is fine: it is created for the bot
    check(tmp_path / "elsewhere" / "ws", spec, state)
    check(tmp_path / "statefoo", spec, state)  # a name that only starts like the state folder
    check("/var/www/site", spec, state)
    check(tmp_path / "ws", None, state)  # no spec (clawpen run): no spec folder rule


def test_mount_rules_for_read_only_and_writable(layout: tuple[Path, Path]) -> None:
    spec, state = layout
    base = str(spec.parent)
    # read-only: the spec folder itself may be mounted (e.g. the bot's code), not above it
    assert rules.check_mount(".:/app", writable=False, base_dir=base, state_dir=str(state)) == (base, "/app")
    with pytest.raises(rules.RuleViolation, match="folder of the spec file"):
        rules.check_mount("..:/app", writable=False, base_dir=base, state_dir=str(state))
    with pytest.raises(rules.RuleViolation, match="folder of the spec file"):
        rules.check_mount(".:/data", writable=True, base_dir=base, state_dir=str(state))
    for raw, writable in ((f"{state}:/s", False), (f"{state}/logs:/s", True), ("/opt:/o", False)):
        with pytest.raises(rules.RuleViolation):
            rules.check_mount(raw, writable=writable, base_dir=base, state_dir=str(state))
    # clawpen run flags resolve against the current folder, which is no spec folder
    assert rules.check_host_path(".", writable=True, base_dir=base, state_dir=str(state), base_is_spec=False)


def test_the_state_folder_defaults_to_this_process_s(
    layout: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, state = layout
    monkeypatch.setenv("CLAWPEN_HOME", str(state))
    with pytest.raises(rules.RuleViolation, match="state folder"):
        rules.check_host_path(str(state / "x"), writable=True, base_dir=str(spec.parent))


def test_a_spec_with_its_workspace_in_the_state_folder_does_not_load(
    layout: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, state = layout
    monkeypatch.setenv("CLAWPEN_HOME", str(state))
    text = f'[bots.a]\ncommand = ["true"]\nworkspace = "{state}"\n'
    with pytest.raises(PolicyError) as err:
        parse_spec_text(text, spec)
    assert f"{spec}:3 bots.a.workspace" in str(err.value.where)
    for bad in ("..", ".", "/var/lib", "/"):
        with pytest.raises(PolicyError):
            parse_spec_text(f'[bots.a]\ncommand = ["true"]\nworkspace = "{bad}"\n', spec)
    ro = f'[bots.a]\ncommand = ["true"]\nfilesystem = {{ ro = ["{state}/vault:/v"] }}\n'
    with pytest.raises(PolicyError):
        parse_spec_text(ro, spec)
    # control: a workspace next to the spec loads, with the opt-in passed through to the policy
    loaded = parse_spec_text(
        '[bots.a]\ncommand = ["true"]\nworkspace = "./ws"\nworkspace_adopt = true\n', spec
    )
    policy = loaded.spec.bots["a"].to_policy("a", str(loaded.base_dir))
    assert policy.workspace == str(spec.parent / "ws") and policy.workspace_adopt
    assert not os.path.exists(spec.parent / "ws")
