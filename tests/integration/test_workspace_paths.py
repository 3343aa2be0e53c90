"""A workspace is never clawpen's state folder (nor near it), and clawpen never hands over a
tree it did not create unless told to; then it follows no symlink and crosses no mount."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import CLAWPEN, Clawpen, DaemonCli

from clawpen.errors import PolicyError
from clawpen.plan.build import HostFacts, build_plan
from clawpen.sandbox.namespace import NamespaceTier
from clawpen.sandbox.seccomp import default_policy
from clawpen.sandbox.users import identity_for
from clawpen.sandbox.workspace import prepare_workspace
from clawpen.spec.policy import BotPolicy
from conftest import UID_BASE

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

BOT_UID = 1_999_999_000  # for the in-process checks of prepare_workspace: no such user exists


def owners(top: Path) -> dict[str, tuple[int, int]]:
    """(uid, gid) of everything below ``top`` (symlinks themselves, not their targets)."""
    found = {".": (top.lstat().st_uid, top.lstat().st_gid)}
    for root, dirs, files in os.walk(top):
        for name in (*dirs, *files):
            path = Path(root, name)
            st = path.lstat()
            found[str(path.relative_to(top))] = (st.st_uid, st.st_gid)
    return found


def populate_state(clawpen: Clawpen) -> dict[str, tuple[int, int]]:
    """A state folder as a real run leaves it, plus a stand-in for the vault's key."""
    assert clawpen.run("--", "true").rc == 0
    key = clawpen.home / "vault" / "master.key"
    key.parent.mkdir(exist_ok=True)
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    return owners(clawpen.home)


def test_run_refuses_the_state_folder_and_chowns_nothing(clawpen: Clawpen, pub: Path) -> None:
    before = populate_state(clawpen)
    link = pub / "innocent"
    link.symlink_to(clawpen.home)
    tries = {
        str(clawpen.home): "it is clawpen's state folder",
        str(clawpen.home / "vault"): "lies inside clawpen's state folder",
        str(clawpen.home.parent): "contains clawpen's state folder",
        str(link): "it is clawpen's state folder",
        f"{clawpen.home}/../state/./vault": "lies inside",
    }
    for path, words in tries.items():
        res = clawpen.run("--workspace", path, "--", "cat", "/workspace/vault/master.key")
        assert res.rc == 2, (path, res.err)
        assert words in res.err and "(--workspace)" in res.err and "hint: " in res.err, res.err
        assert "Traceback" not in res.err
    # the host afterwards: every file of the state folder has the owner it had
    assert owners(clawpen.home) == before
    assert (clawpen.home / "vault" / "master.key").stat().st_uid == 0
    # positive control: a fresh folder is created for the bot and is the bot's
    fresh = pub / "fresh" / "ws"
    res = clawpen.run("--workspace", str(fresh), "--", "sh", "-c", "echo hi > /workspace/made")
    assert res.rc == 0, res.err
    assert fresh.stat().st_uid == (fresh / "made").stat().st_uid == clawpen.uid()
    assert fresh.parent.stat().st_uid == 0  # the parent made on the way stays root's


def test_a_spec_workspace_in_the_state_folder_is_refused(clawpen: Clawpen, pub: Path) -> None:
    before = populate_state(clawpen)
    spec = pub / "clawpen.toml"
    for ws in (str(clawpen.home), str(clawpen.home / "logs"), os.path.relpath(clawpen.home.parent, pub)):
        spec.write_text(f'[bots.a]\ncommand = ["true"]\nworkspace = "{ws}"\n')
        res = clawpen.run("-f", str(spec), "a")
        assert res.rc == 2, res.err
        assert f"{spec}:3 bots.a.workspace" in res.err and "state folder" in res.err, res.err
    for ws in (".", "..", "/", "/var/lib"):  # the spec's folder, above it, system folders
        spec.write_text(f'[bots.a]\ncommand = ["true"]\nworkspace = "{ws}"\n')
        res = clawpen.run("-f", str(spec), "a")
        assert res.rc == 2 and "bots.a.workspace" in res.err, res.err
    assert owners(clawpen.home) == before
    assert pub.stat().st_uid == 0
    # positive control: the same spec with a folder of its own runs
    spec.write_text('[bots.a]\ncommand = ["touch", "/workspace/ok"]\nworkspace = "./ws"\n')
    assert clawpen.run("-f", str(spec), "a").rc == 0
    assert (pub / "ws" / "ok").stat().st_uid == clawpen.uid("a")


def test_the_tier_refuses_a_plan_with_the_state_folder_as_workspace(clawpen: Clawpen) -> None:
    """The tier has the last word, even for a plan that skipped the spec's checks."""
    before = populate_state(clawpen)
    ident = identity_for("direct", clawpen.home, base=clawpen.uid_base)
    for ws in (clawpen.home, clawpen.home / "vault"):
        policy = BotPolicy(name="direct", command=("true",), workspace=str(ws), workspace_adopt=True)
        plan = build_plan(policy, ident, HostFacts.probe(), default_policy())
        with pytest.raises(PolicyError) as err:
            NamespaceTier(clawpen.home).run(plan)
        assert err.value.where == "workspace" and "state folder" in err.value.what
    after = owners(clawpen.home)
    assert {k: after[k] for k in before} == before
    assert all(uid < 1_900_000_000 for uid, _ in after.values()), after


def _foreign_tree(pub: Path) -> Path:
    """A folder of root's with a file, a subfolder, a symlink to a host file, a symlink to a
    host folder and a hard link to a host file."""
    ws = pub / "shared"
    (ws / "sub").mkdir(parents=True)
    (ws / "notes.txt").write_text("mine\n")
    (ws / "sub" / "deep.txt").write_text("deep\n")
    host_file, host_dir, host_linked = pub / "host-file", pub / "host-dir", pub / "host-linked"
    host_file.write_text("host\n")
    host_dir.mkdir()
    (host_dir / "inner").write_text("inner\n")
    host_linked.write_text("linked\n")
    (ws / "to-host-file").symlink_to(host_file)
    (ws / "sub" / "to-host-dir").symlink_to(host_dir)
    os.link(host_linked, ws / "hardlink")
    return ws


def test_an_existing_tree_of_other_owners_needs_the_opt_in(clawpen: Clawpen, pub: Path) -> None:
    ws = _foreign_tree(pub)
    before = owners(ws)
    uid = clawpen.uid()
    res = clawpen.run("--workspace", str(ws), "--", "touch", "/workspace/x")
    assert res.rc == 2, res.err
    assert "holds files of other owners" in res.err and "--adopt-workspace" in res.err, res.err
    assert "workspace_adopt = true" in res.err
    assert owners(ws) == before  # nothing was handed over
    # with the opt-in: handed to the bot, but no symlink is followed and no hard link touched
    res = clawpen.run("--adopt-workspace", "--workspace", str(ws), "--", "sh", "-c", "echo hi > /workspace/x")
    assert res.rc == 0, res.err
    got = owners(ws)
    assert got.pop("hardlink") == (0, 0)  # another name of it lies outside the tree
    assert set(got.values()) == {(uid, uid)}, got  # incl. the symlinks themselves
    for host in ("host-file", "host-dir", "host-dir/inner", "host-linked"):
        st = (pub / host).stat()
        assert (st.st_uid, st.st_gid) == (0, 0), host
    # a second run needs no opt-in: the folder is the bot's now
    assert clawpen.run("--workspace", str(ws), "--", "true").rc == 0


def test_the_spec_opt_in_and_an_empty_folder(clawpen: Clawpen, pub: Path) -> None:
    empty = pub / "empty"
    empty.mkdir()
    spec = pub / "clawpen.toml"
    spec.write_text('[bots.a]\ncommand = ["touch", "/workspace/ok"]\nworkspace = "./empty"\n')
    assert clawpen.run("-f", str(spec), "a").rc == 0  # empty: handed over without opt-in
    assert empty.stat().st_uid == clawpen.uid("a")
    ws = _foreign_tree(pub)
    spec.write_text('[bots.a]\ncommand = ["touch", "/workspace/ok"]\nworkspace = "./shared"\n')
    res = clawpen.run("-f", str(spec), "a")
    assert res.rc == 2 and "workspace_adopt" in res.err, res.err
    assert (ws / "notes.txt").stat().st_uid == 0
    spec.write_text(
        '[bots.a]\ncommand = ["touch", "/workspace/ok"]\nworkspace = "./shared"\nworkspace_adopt = true\n'
    )
    assert clawpen.run("-f", str(spec), "a").rc == 0
    assert (ws / "notes.txt").stat().st_uid == (ws / "ok").stat().st_uid == clawpen.uid("a")
    assert (pub / "host-file").stat().st_uid == 0


def test_adopting_does_not_cross_a_mount_point(pub: Path) -> None:
    """In a private mount namespace: a tmpfs mounted inside the folder keeps its owners."""
    ws = pub / "mnt-ws"
    (ws / "mnt").mkdir(parents=True)
    (ws / "top.txt").write_text("x\n")
    script = (
        f"mount -t tmpfs -o size=1m none {ws}/mnt && echo m > {ws}/mnt/f && "
        f"{CLAWPEN} run --adopt-workspace -w {ws} -- true && stat -c '%u %n' {ws}/mnt {ws}/mnt/f {ws}/top.txt"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAWPEN_")}
    env.update(CLAWPEN_HOME=str(pub / "state"), CLAWPEN_UID_BASE=str(UID_BASE))
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    seen = dict(reversed(line.split(" ", 1)) for line in proc.stdout.splitlines())
    assert seen[f"{ws}/mnt"] == "0" and seen[f"{ws}/mnt/f"] == "0", seen
    assert int(seen[f"{ws}/top.txt"]) >= 1_900_000_000, seen  # control: the rest was handed over


def test_prepare_workspace_rules(pub: Path) -> None:
    uid = gid = BOT_UID
    fresh = pub / "a" / "fresh"
    prepare_workspace(str(fresh), uid, gid)
    assert (fresh.stat().st_uid, fresh.stat().st_mode & 0o777) == (uid, 0o750)
    # the bot's own folder with a file of root's inside: used as it is, nothing changed
    (fresh / "roots").write_text("r\n")
    prepare_workspace(str(fresh), uid, gid)
    assert (fresh / "roots").stat().st_uid == 0
    # a symlink in place of the workspace is refused
    link = pub / "link"
    link.symlink_to(fresh)
    with pytest.raises(PolicyError, match="is a symlink"):
        prepare_workspace(str(link), uid, gid)
    # a foreign tree: refused, unchanged; adopted with the opt-in
    tree = pub / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "f").write_text("f\n")
    with pytest.raises(PolicyError) as err:
        prepare_workspace(str(tree), uid, gid)
    assert err.value.hint and "--adopt-workspace" in err.value.hint
    assert owners(tree) == {".": (0, 0), "d": (0, 0), "d/f": (0, 0)}
    prepare_workspace(str(tree), uid, gid, adopt=True)
    assert set(owners(tree).values()) == {(uid, gid)}


def test_up_refuses_a_workspace_in_the_state_folder(daemon: DaemonCli) -> None:
    daemon.write(f"""
        [bots.a]
        command = ["sleep", "300"]
        workspace = "{daemon.home / "vault"}"
    """)
    res = daemon.cli("up", check=False)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "lies inside clawpen's state folder" in res.stderr and "bots.a.workspace" in res.stderr
    assert not (daemon.home / "vault").exists() or (daemon.home / "vault").stat().st_uid == 0
    assert all(uid < 1_900_000_000 for uid, _ in owners(daemon.home).values())
    assert daemon.ps() == {}
    # positive control: a folder next to the spec is created for the bot
    daemon.write("""
        [bots.a]
        command = ["sleep", "300"]
        workspace = "./ws"
    """)
    daemon.cli("up")
    daemon.wait_state("a", "running")
    assert (daemon.spec.parent / "ws").stat().st_uid >= 1_900_000_000


def test_an_os_error_in_a_setup_step_names_the_step_and_leaves_nothing(
    clawpen: Clawpen, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sandbox.setup runs named steps; an OSError in one (here: descriptors used up while the
    seccomp filter is put in a memfd) is a SandboxError naming the step, and no cgroup or
    descriptor of the run is left behind."""
    import errno

    from clawpen.errors import SandboxError
    from clawpen.sandbox import namespace

    ident = identity_for("steps", clawpen.home, base=clawpen.uid_base)
    policy = BotPolicy(name="steps", command=("true",))
    plan = build_plan(policy, ident, HostFacts.probe(), default_policy())
    tier = NamespaceTier(clawpen.home)
    assert tier.run(plan).exit_code == 0  # positive control: the same plan runs

    def no_fds(name: str, data: bytes) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    fds_before = set(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(namespace, "memfd", no_fds)
    with pytest.raises(SandboxError) as err:
        tier.run(plan)
    assert err.value.where == "seccomp" and "Too many open files" in err.value.what
    assert set(os.listdir("/proc/self/fd")) <= fds_before | {str(n) for n in range(3)}
    assert not [n for n in tier.cgroup_host().names() if n.startswith("steps-")]
