"""Image building's pure parts: Dockerfile instructions and FROM images, the engine's build
stream, failed lines, tags, the base image's debootstrap command and trimming."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from clawpen.container.base import (
    _tar_stream,
    debootstrap_argv,
    import_changes,
    mounts_under,
    trim,
    unmount_under,
)
from clawpen.container.image import (
    BuildEvent,
    BuildRequest,
    Instruction,
    bot_image,
    build_tag,
    failed_line,
    from_images,
    instructions,
    parse_event,
    read_dockerfile,
)
from clawpen.errors import ConfigError

DOCKERFILE = """\
# syntax comment, not a directive after the first line
ARG BASE=clawpen-base:bookworm
FROM ${BASE} AS build
RUN echo one \\
    # a comment inside a continuation
    && echo two

FROM build
COPY --chown=1:1 app.py /app/
FROM --platform=linux/amd64 scratch
FROM other:1.0 AS final
CMD ["python3", "/app/app.py"]
"""


def test_instructions_keep_their_first_line() -> None:
    steps = instructions(DOCKERFILE)
    assert [(s.line, s.keyword) for s in steps] == [
        (2, "ARG"),
        (3, "FROM"),
        (4, "RUN"),
        (8, "FROM"),
        (9, "COPY"),
        (10, "FROM"),
        (11, "FROM"),
        (12, "CMD"),
    ]
    assert steps[2].args == "echo one && echo two"
    assert instructions("# escape=`\nFROM a\nRUN x `\n  y\n")[1] == Instruction(3, "RUN", "x y")


def test_from_images_skip_stages_and_scratch_and_substitute_args() -> None:
    refs = [(s.line, ref) for s, ref in from_images(instructions(DOCKERFILE))]
    assert refs == [(3, "clawpen-base:bookworm"), (11, "other:1.0")]
    with pytest.raises(ConfigError) as err:
        from_images(instructions("ARG V\nFROM base:$V\n"), "Df")
    assert err.value.where == "Df:2"
    assert from_images(instructions("FROM ${IMG:-dflt:1}\n")) == [
        (Instruction(1, "FROM", "${IMG:-dflt:1}"), "dflt:1")
    ]


def test_build_stream_events() -> None:
    assert parse_event({"stream": "Step 2/5 : RUN false\n"}) == BuildEvent("step", "Step 2/5 : RUN false", 2)
    assert parse_event({"stream": " ---> Running in 1a2b\n"}) == BuildEvent("output", " ---> Running in 1a2b")
    assert parse_event({"stream": "\n"}) is None
    assert parse_event({"aux": {"ID": "sha256:ab"}}) == BuildEvent("image", "sha256:ab")
    err = {
        "errorDetail": {"code": 1, "message": "The command '/bin/sh -c false' returned a non-zero code: 1"}
    }
    assert parse_event(err) == BuildEvent(
        "error", "The command '/bin/sh -c false' returned a non-zero code: 1"
    )
    assert parse_event({"status": "Downloading"}) is None


def test_failed_line_from_the_step_or_the_engine() -> None:
    steps = instructions(DOCKERFILE)
    assert failed_line("returned a non-zero code: 1", 3, steps) == 4  # step 3 = the RUN on line 4
    assert failed_line("dockerfile parse error line 7: unknown instruction: FOO", 0, steps) == 7
    assert failed_line("boom", 0, steps) is None and failed_line("boom", 99, steps) is None


def test_dockerfile_must_stay_in_the_context(tmp_path: Path) -> None:
    (tmp_path / "ctx").mkdir()
    (tmp_path / "Dockerfile").write_text("FROM x\n")
    with pytest.raises(ConfigError, match="outside the build context"):
        read_dockerfile(tmp_path / "ctx", "../Dockerfile")
    with pytest.raises(ConfigError, match="not a folder"):
        read_dockerfile(tmp_path / "nope", "Dockerfile")
    (tmp_path / "ctx" / "Dockerfile").write_text("FROM y\n")
    assert read_dockerfile(tmp_path / "ctx", "Dockerfile")[1] == "FROM y\n"


def test_tag_rule_and_the_spec_adapter(tmp_path: Path) -> None:
    tag = build_tag("bot", tmp_path / "b", "Dockerfile")
    assert tag.startswith("clawpen-bot:") and len(tag.split(":")[1]) == 12
    assert tag == build_tag("bot", tmp_path / "b", "Dockerfile") != build_tag("bot", tmp_path / "b", "Df2")
    assert bot_image("bot", SimpleNamespace(image="img:1"), tmp_path) == "img:1"
    assert bot_image("bot", SimpleNamespace(), tmp_path) is None
    table = SimpleNamespace(image=SimpleNamespace(context="./b", dockerfile="Dockerfile"))
    assert bot_image("bot", table, tmp_path) == BuildRequest("bot", tmp_path / "b", "Dockerfile", tag)


def test_base_image_command_and_trim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAWPEN_DEBIAN_MIRROR", "http://mirror.example/debian")
    assert debootstrap_argv(tmp_path / "r") == [
        "debootstrap",
        "--variant=minbase",
        "--include=python3,ca-certificates",
        "bookworm",
        str(tmp_path / "r"),
        "http://mirror.example/debian",
    ]
    assert "LABEL clawpen.image=base" in import_changes()
    root = tmp_path / "root"
    for rel in (
        "var/cache/apt/archives/x.deb",
        "usr/share/doc/pkg/copyright",
        "usr/share/doc/pkg/README.gz",
        "usr/share/man/man1/ls.1.gz",
        "usr/bin/python3",
        "var/lib/apt/lists/deb_Release",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    trim(root)
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert left == ["usr/bin/python3", "usr/share/doc/pkg/copyright"]
    assert (root / "var/cache/apt").is_dir()  # the folders stay (apt expects them)
    data = b"".join(_tar_stream(root, chunk=7))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        member = tar.extractfile("usr/bin/python3")
        assert member is not None and member.read() == b"usr/bin/python3"
    assert "usr/share/doc/pkg/copyright" in names and "var/cache/apt/archives/x.deb" not in names


def test_mounts_under_a_root_deepest_first() -> None:
    text = (
        "proc /proc proc rw 0 0\n"
        "proc /var/tmp/b/rootfs/proc proc rw 0 0\n"
        "sysfs /var/tmp/b/rootfs/sys sysfs rw 0 0\n"
        "none /var/tmp/b/rootfs/sys/fs/x tmpfs rw 0 0\n"
        "none /var/tmp/b/rootfs2 tmpfs rw 0 0\n"
        "none /var/tmp/b/rootfs/my\\040dir tmpfs rw 0 0\n"
    )
    found = mounts_under(Path("/var/tmp/b/rootfs"), text)
    assert found[0] == "/var/tmp/b/rootfs/sys/fs/x"
    assert set(found) == {
        "/var/tmp/b/rootfs/proc",
        "/var/tmp/b/rootfs/sys",
        "/var/tmp/b/rootfs/sys/fs/x",
        "/var/tmp/b/rootfs/my dir",
    }


@pytest.mark.root
def test_what_debootstrap_left_mounted_is_unmounted(tmp_path: Path) -> None:
    import subprocess

    root = tmp_path / "rootfs"
    (root / "proc").mkdir(parents=True)
    (root / "keep").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "none", str(root / "proc")], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "none", str(root / "proc")], check=True)  # stacked
    (root / "proc" / "inside").write_text("x")
    try:
        assert mounts_under(root, Path("/proc/self/mounts").read_text()) == [str(root / "proc")]
        unmount_under(root)
        assert mounts_under(root, Path("/proc/self/mounts").read_text()) == []
        assert list((root / "proc").iterdir()) == [] and (root / "keep").is_dir()
    finally:
        while subprocess.run(["umount", "-l", str(root / "proc")], capture_output=True).returncode == 0:
            pass
