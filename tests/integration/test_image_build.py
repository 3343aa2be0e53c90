"""`clawpen image build|ls` and `clawpen export compose` against the real Docker engine.

Images and Compose projects made here are named ``clawpen-test-...`` and removed afterwards.
"""

from __future__ import annotations

import json
import os
import secrets as pysecrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from tests.integration.container_env import BASE_IMAGE, ensure_base_image, has_image

from clawpen.container.compose import compose_text, from_spec
from clawpen.spec.loader import load_spec

pytestmark = [pytest.mark.docker, pytest.mark.root]

UID = 1_900_060_123  # an id no host user has, as clawpen's per-bot uids


def clawpen(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clawpen", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=120)


@pytest.fixture
def tag() -> Iterator[str]:
    name = f"clawpen-test-img-{pysecrets.token_hex(4)}:1"
    ensure_base_image()
    yield name
    docker("rmi", "-f", name)
    assert not has_image(name)


def test_image_build_streams_progress_and_lists_the_image(tmp_path: Path, tag: str) -> None:
    (tmp_path / "app.py").write_text("print('built by clawpen')\n")
    (tmp_path / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE}\nCOPY app.py /app/app.py\nRUN python3 -c \"open('/app/stamp','w').write('ok')\"\n"
        'CMD ["python3", "/app/app.py"]\n'
    )
    done = clawpen("image", "build", "--context", str(tmp_path), "--tag", tag)
    assert done.returncode == 0, done.stderr
    assert "Step 1/5 : FROM clawpen-test-base:bookworm" in done.stderr  # progress (5: the label)
    assert "Step 3/5 : RUN python3" in done.stderr
    assert f"built {tag}" in done.stdout
    ran = docker("run", "--rm", "--network", "none", tag)
    assert ran.stdout == "built by clawpen\n", ran.stderr
    assert docker("run", "--rm", "--network", "none", tag, "cat", "/app/stamp").stdout == "ok"
    labels = json.loads(docker("image", "inspect", tag, "--format", "{{json .Config.Labels}}").stdout)
    assert labels["clawpen.image"] == tag.partition(":")[0]
    listed = clawpen("image", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    assert any(tag in row["tags"] for row in json.loads(listed.stdout))


def test_a_failing_step_names_its_dockerfile_line(tmp_path: Path, tag: str) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\n\nRUN true\nRUN exit 3\nRUN true\n")
    done = clawpen("image", "build", "--context", str(tmp_path), "--tag", tag)
    assert done.returncode == 125, done.stderr
    assert f"({tmp_path / 'Dockerfile'}:4)" in done.stderr  # the RUN on line 4, not the 3rd step's number
    assert "RUN exit 3" in done.stderr and "non-zero code: 3" in done.stderr
    assert not has_image(tag)


def test_a_from_image_that_is_not_local_fails_fast_without_pulling(tmp_path: Path, tag: str) -> None:
    missing = f"clawpen-test-absent-{pysecrets.token_hex(4)}:1"
    (tmp_path / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE} AS one\nRUN true\nFROM {missing}\nCOPY --from=one /etc/hostname /x\n"
    )
    started = time.monotonic()
    done = clawpen("image", "build", "--context", str(tmp_path), "--tag", tag)
    assert done.returncode == 1, done.stderr
    assert f"image {missing} (FROM) is not on this host ({tmp_path / 'Dockerfile'}:3)" in done.stderr
    assert "clawpen never pulls" in done.stderr
    assert "Step 1/" not in done.stderr  # refused before the engine built anything
    assert time.monotonic() - started < 30
    assert not has_image(tag) and not has_image(missing)
    # the positive control: the same Dockerfile builds once that image is local
    assert docker("tag", BASE_IMAGE, missing).returncode == 0
    try:
        again = clawpen("image", "build", "--context", str(tmp_path), "--tag", tag, "-q")
        assert again.returncode == 0, again.stderr
        assert docker("run", "--rm", "--network", "none", tag, "test", "-s", "/x").returncode == 0
    finally:
        docker("rmi", missing)


def test_a_bots_image_table_builds_under_its_tag(tmp_path: Path) -> None:
    """`clawpen image build BOT`'s path: the bot's image = { context, dockerfile } (on the real,
    validated bot model switched to the container tier, the fields the container tier adds)
    builds through the engine under clawpen-<bot>:<hash>, labelled with the bot's name."""
    from clawpen.cli_image import build_requests
    from clawpen.container.engine import client, detect
    from clawpen.container.image import build_image
    from clawpen.errors import UsageError

    ensure_base_image()
    bot = f"test-{pysecrets.token_hex(3)}"
    (tmp_path / "bot").mkdir()
    (tmp_path / "bot" / "Containerfile").write_text(f"FROM {BASE_IMAGE}\nRUN echo {bot} > /etc/bot-name\n")
    (tmp_path / "clawpen.toml").write_text(
        f'[bots.{bot}]\ncommand = ["cat", "/etc/bot-name"]\n[bots.other]\ncommand = ["true"]\n'
    )
    loaded = load_spec(tmp_path / "clawpen.toml")
    table = SimpleNamespace(context="./bot", dockerfile="Containerfile")
    bots = dict(loaded.spec.bots)
    bots[bot] = bots[bot].model_copy(update={"tier": "container", "image": table})
    with pytest.raises(UsageError, match="bot other has no image to build"):
        build_requests(bots, loaded.base_dir, ["other"], "clawpen.toml")
    [req] = build_requests(bots, loaded.base_dir, [], "clawpen.toml")  # every bot with a build
    assert req.tag.startswith(f"clawpen-{bot}:") and req.context == tmp_path / "bot"
    api = client(detect("docker"))
    try:
        build_image(api, req.context, req.tag, dockerfile=req.dockerfile, label=req.bot)
        ran = docker("run", "--rm", "--network", "none", req.tag, "cat", "/etc/bot-name")
        assert ran.stdout == f"{bot}\n", ran.stderr
        assert api.images.get(req.tag).labels["clawpen.image"] == bot
    finally:
        docker("rmi", "-f", req.tag)
        api.close()
    assert not has_image(req.tag)


SPEC = """
[bots.quiet]
command = ["python3", "/workspace/probe.py"]
workspace = "./ws"
secrets = ["API_TOKEN"]
env = { LITERAL = "a$HOME${X:-b}$$" }
resources = { cpus = 0.5, memory = "96M", pids = 32, nofile = 128, tmp = "8M" }
restart = { policy = "no" }

[bots.twins]
command = ["sleep", "1"]
replicas = 2
"""

PROBE = """\
import os, sys
def try_write(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return "ok"
    except OSError as e:
        return type(e).__name__ + ":" + str(e.errno)
print("uid", os.getuid(), os.getgid())
print("root", try_write("/etc/clawpen-probe"))
print("tmp", try_write("/tmp/probe"))
print("workspace", try_write("/workspace/out"))
print("secret", open("/run/secrets/API_TOKEN").read())
print("nofile", [l.split()[3:5] for l in open("/proc/self/limits") if l.startswith("Max open files")][0])
print("literal", os.environ["LITERAL"])
print("ifaces", sorted(os.listdir("/sys/class/net")))
print("nnp", [l for l in open("/proc/self/status") if l.startswith(("NoNewPrivs", "CapEff"))])
"""


def test_exported_compose_is_accepted_and_runs_with_the_limits(tmp_path: Path) -> None:
    ensure_base_image()
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "probe.py").write_text(PROBE)
    os.chown(ws, UID, UID)
    (tmp_path / "clawpen.toml").write_text(SPEC)
    loaded = load_spec(tmp_path / "clawpen.toml")
    # the spec's bots switched to the container tier (the fields ctier adds to the spec)
    spec = SimpleNamespace(
        bots={
            n: b.model_copy(update={"tier": "container", "image": BASE_IMAGE})
            for n, b in loaded.spec.bots.items()
        }
    )
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(compose_text(from_spec(spec, loaded.base_dir, lambda _n: (UID, UID))))
    (tmp_path / "secrets").mkdir()
    token = tmp_path / "secrets" / "API_TOKEN"
    token.write_text("t0ken")
    os.chown(token, UID, UID)
    token.chmod(0o400)
    project = f"clawpen-test-{pysecrets.token_hex(4)}"
    base = ["docker-compose", "-p", project, "-f", str(compose)]
    checked = subprocess.run([*base, "config", "-q"], capture_output=True, text=True, check=False, timeout=60)
    assert checked.returncode == 0, checked.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(compose.read_text().replace("cap_drop:", "cap_dropp:"))  # negative control
    bad = subprocess.run(
        ["docker-compose", "-f", str(broken), "config", "-q"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "cap_dropp" in bad.stderr
    try:
        up = subprocess.run([*base, "up", "--no-color", "quiet"], capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stderr
        cid = subprocess.run([*base, "ps", "-q", "quiet"], capture_output=True, text=True).stdout.strip()
        host = json.loads(docker("inspect", cid, "--format", "{{json .HostConfig}}").stdout)
        logs = docker("logs", cid).stdout
    finally:
        subprocess.run([*base, "down", "--remove-orphans"], capture_output=True, timeout=120)
    assert (host["NanoCpus"], host["Memory"], host["MemorySwap"], host["PidsLimit"]) == (
        500_000_000,
        96 << 20,
        96 << 20,
        32,
    )
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"] and host["Privileged"] is False
    assert host["NetworkMode"] == "none" and host["Init"] is True
    assert host["RestartPolicy"]["Name"] == "no"
    lines = dict(line.split(" ", 1) for line in logs.splitlines())
    assert lines["uid"] == f"{UID} {UID}"
    assert lines["root"] == "OSError:30"  # EROFS: the read-only root
    assert lines["tmp"] == "ok" and lines["workspace"] == "ok"  # the positive controls
    assert (ws / "out").stat().st_uid == UID
    assert lines["secret"] == "t0ken"
    assert lines["nofile"] == "['128', '128']"
    assert lines["ifaces"] == "['lo']"
    assert lines["literal"] == "a$HOME${X:-b}$$"  # Compose substituted nothing
    assert "NoNewPrivs:\\t1" in lines["nnp"] and "CapEff:\\t0000000000000000" in lines["nnp"]
    assert docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}").stdout == ""
    assert "t0ken" not in compose.read_text()  # the file holds the secret's path, never its value
