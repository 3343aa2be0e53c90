#!/usr/bin/env python3
"""OpenClaw's time to ready: bare on the host against the clawpen template, in one run.

Run as root (the daemon starts the bot as its own uid in a cgroup)::

    .venv/bin/python bench/openclaw_bench.py [--rounds 3] [--cpus N] [--start-cpus N] [--json out.json]

One OpenClaw build serves both sides: ``clawpen init --template openclaw`` and a first
``clawpen up`` build it (npm downloads cached in /var/cache/clawpen-test/openclaw, as the
end-to-end test does), and the bare runs use that very build output (``<state>-build/openclaw/
<key>``, what the sandbox sees as /opt/bot). Both run the template's own ``start.sh`` (the bare
copy only points at the build output and at port 18799), so the flags and the config file are
the same. Only one gateway runs at a time. Each round, in this order:

1. bare fresh: ``sh start.sh`` as the build's (unprivileged) uid, HOME an empty folder: exec ->
   ``GET /readyz`` answers ``"ready": true``;
2. bare restart: SIGTERM to that gateway, wait for its exit, ``sh start.sh`` again with the now
   configured HOME: SIGTERM -> ready;
3. clawpen fresh: ``clawpen down``, the workspace emptied, ``clawpen up -d`` (build cached) ->
   ready on 127.0.0.1:18789;
4. clawpen restart: ``clawpen restart openclaw`` -> the old gateway gone, then ready.

Medians over the rounds, ratios clawpen / bare; goals: fresh <= 1.2x, restart <= 1.05x. The
template's resources are used as they are (``cpus = 1``, and ``start_cpus = 2`` until the first
passing health check, capped at the host's cores) unless ``--cpus`` or ``--start-cpus`` change
them (``--start-cpus 0`` removes the allowance; a ``start_cpus`` not above ``--cpus`` is removed
too); bare has no limit. Exits 0 when
both goals are met, 1 when one is missed, 2 when the benchmark cannot run. Everything started
is stopped and the temporary folder removed.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLAWPEN_BIN = str(ROOT / ".venv" / "bin" / "clawpen")
CACHE = Path("/var/cache/clawpen-test/openclaw")
PORT = 18789  # the template's
BARE_PORT = 18799
TOKEN = "bench-" + "5" * 40
GOAL_FRESH = 1.2
GOAL_RESTART = 1.05


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ready(port: int) -> bool | None:
    """True: ready; False: answers, not ready; None: nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return bool(json.loads(resp.read()).get("ready"))
    except urllib.error.HTTPError:
        return False
    except (OSError, ValueError):
        return None


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def wait_ready(port: int, t0: float, timeout: float = 300, gone_first: bool = False) -> float:
    """Seconds from ``t0`` until /readyz says ready; with ``gone_first``, only once the port
    has stopped answering ready (a restart: the old gateway must be gone first)."""
    gone = not gone_first
    while time.monotonic() - t0 < timeout:
        state = ready(port)
        if not gone:
            gone = state is not True
        elif state:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise BenchError(f"port {port}: not ready after {timeout} s")


# ------------------------------------------------------------------------------------ clawpen
class Clawpen:
    def __init__(self, base: Path) -> None:
        self.state = base / "state"
        self.spec_dir = base / "spec"
        uid_base = 1_900_000_000 + 65_536 * (1 + os.getpid() % 3000)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLAWPEN_")}
        self.env = {**env, "CLAWPEN_HOME": str(self.state), "CLAWPEN_UID_BASE": str(uid_base)}

    def cli(self, *args: str, timeout: float = 120, stdin: str | None = None) -> str:
        done = subprocess.run(
            [CLAWPEN_BIN, *args],
            env=self.env,
            cwd=self.spec_dir if self.spec_dir.exists() else self.spec_dir.parent,
            capture_output=True,
            text=True,
            input=stdin,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise BenchError(f"clawpen {' '.join(args)}: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def build_output(self) -> Path:
        outs = [p for p in Path(f"{self.state}-build/openclaw").iterdir() if p.is_dir()]
        outs = [p for p in outs if (p / "node_modules/openclaw/openclaw.mjs").is_file()]
        if len(outs) != 1:
            raise BenchError(f"expected one openclaw build output, found {outs}")
        return outs[0]

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.state / "daemon.pid").read_text())
            with contextlib.suppress(BenchError, subprocess.TimeoutExpired):
                self.cli("down", timeout=90)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def reserved(host: str) -> list[str]:
    infos = socket.getaddrinfo(host, 443, socket.AF_INET, socket.SOCK_STREAM)
    addrs = {ipaddress.ip_address(i[4][0]) for i in infos}
    return sorted(f"{a}/32" for a in addrs if not a.is_global)


def fit_resources(text: str, cpus: float | None, start_cpus: float | None) -> str:
    """The template's ``resources`` with ``cpus``/``start_cpus`` changed (None: as they are;
    ``start_cpus`` 0: removed; also removed when it would not be above ``cpus``)."""
    line = re.search(r"^resources = \{.*\}$", text, re.MULTILINE)
    if line is None or not re.search(r"\bcpus = [0-9.]+", line.group(0)):
        raise BenchError("the template has no resources = { cpus = ... }")
    res = line.group(0)
    if cpus is not None:
        res = re.sub(r"\bcpus = [0-9.]+", f"cpus = {cpus:g}", res, count=1)
    if start_cpus is not None:
        if re.search(r"\bstart_cpus = ", res):
            res = re.sub(r"\bstart_cpus = [0-9.]+", f"start_cpus = {start_cpus:g}", res, count=1)
        else:
            res = res.replace("cpus = ", f"start_cpus = {start_cpus:g}, cpus = ", 1)
    now_cpus, now_start = resources_of(res)
    if now_start is not None and (now_start == 0 or (now_cpus is not None and now_start <= now_cpus)):
        res = re.sub(r"\bstart_cpus = [0-9.]+, ", "", res, count=1)
    return text[: line.start()] + res + text[line.end() :]


def resources_of(text: str) -> tuple[float | None, float | None]:
    """``cpus`` and ``start_cpus`` of a spec's (first) ``resources = {...}`` line."""
    line = re.search(r"^resources = \{.*\}$", text, re.MULTILINE)
    res = line.group(0) if line else ""
    cpus = re.search(r"(?<!start_)\bcpus = ([0-9.]+)", res)
    start = re.search(r"\bstart_cpus = ([0-9.]+)", res)
    return (float(cpus.group(1)) if cpus else None, float(start.group(1)) if start else None)


def prepare(cp: Clawpen, cpus: float | None, start_cpus: float | None) -> Path:
    """init the template, fit its build to this machine, build and start it once."""
    cp.cli("init", "--template", "openclaw", str(cp.spec_dir))
    toml = cp.spec_dir / "clawpen.toml"
    text = toml.read_text()
    extra = f'cache = "{CACHE}"\ncache_adopt = true\n'
    private = reserved("registry.npmjs.org")
    if private:
        extra += "allow_private = [" + ", ".join(f'"{p}"' for p in private) + "]\n"
    CACHE.mkdir(parents=True, exist_ok=True)
    text = text.replace("[bots.openclaw.build]\n", "[bots.openclaw.build]\n" + extra, 1)
    text = fit_resources(text, cpus, start_cpus)
    toml.write_text(text)
    cp.cli("secrets", "set", "OPENCLAW_GATEWAY_TOKEN", stdin=TOKEN)
    t0 = time.monotonic()
    cp.cli("up", "-d", timeout=1500)
    log(f"clawpen up (build): {time.monotonic() - t0:.1f} s")
    wait_ready(PORT, t0, timeout=600)
    cp.cli("down", timeout=120)
    return toml


def fresh_clawpen(cp: Clawpen) -> tuple[float, float]:
    """Seconds to ready, and until ``clawpen up -d`` returned (spec, plan, sandbox started)."""
    cp.cli("down", timeout=120)
    workspace = cp.spec_dir / "openclaw-data"
    for child in workspace.iterdir() if workspace.exists() else ():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    t0 = time.monotonic()
    cp.cli("up", "-d", timeout=300)
    cli = time.monotonic() - t0
    return wait_ready(PORT, t0), cli


def restart_clawpen(cp: Clawpen) -> tuple[float, float]:
    """Seconds to ready, and until ``clawpen restart`` returned (old one stopped, new started)."""
    t0 = time.monotonic()
    cp.cli("restart", "openclaw", timeout=300)
    cli = time.monotonic() - t0
    return wait_ready(PORT, t0, gone_first=True), cli


# --------------------------------------------------------------------------------------- bare
class Bare:
    """The template's start.sh, pointed at the build output, as the build's uid."""

    def __init__(self, base: Path, out: Path, start_sh: Path) -> None:
        self.out = out
        st = out.stat()
        self.uid, self.gid = st.st_uid, st.st_gid
        if self.uid == 0:
            raise BenchError(f"{out} is owned by root: no unprivileged uid to run bare as")
        self.dir = base / "bare"
        self.dir.mkdir(mode=0o755)
        text = start_sh.read_text().replace("/opt/bot", str(out))
        self.script = self.dir / "start.sh"
        self.script.write_text(text.replace(f"--port {PORT}", f"--port {BARE_PORT}"))
        self.home = self.dir / "home"
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs = self.dir / "gateway.log"

    def start(self) -> None:
        env = {
            "HOME": str(self.home),
            "PATH": f"{self.out}/node_modules/.bin:/usr/local/bin:/usr/bin:/bin",
            "NODE_ENV": "production",
            "NODE_EXTRA_CA_CERTS": "/etc/ssl/certs/ca-certificates.crt",
            "OPENCLAW_GATEWAY_TOKEN": TOKEN,
        }
        argv = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]
        with self.logs.open("ab") as out:
            self.proc = subprocess.Popen(
                [*argv, "/bin/sh", str(self.script)],
                env=env,
                cwd=str(self.home),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def fresh(self) -> float:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir(mode=0o700)
        os.chown(self.home, self.uid, self.gid)
        t0 = time.monotonic()
        self.start()
        return wait_ready(BARE_PORT, t0)

    def restart(self) -> float:
        t0 = time.monotonic()
        self.stop()
        self.start()
        return wait_ready(BARE_PORT, t0)


# --------------------------------------------------------------------------------------- main
def run(rounds: int, cpus: float | None, start_cpus: float | None = None) -> dict[str, Any]:
    for port in (PORT, BARE_PORT):
        if not port_free(port):
            raise BenchError(f"something already listens on 127.0.0.1:{port}")
    base = Path(tempfile.mkdtemp(prefix="clawpen-ocbench-", dir="/tmp"))
    base.chmod(0o755)
    cp = Clawpen(base)
    bare: Bare | None = None
    used: tuple[float | None, float | None] = (None, None)
    keys = ("bare fresh", "bare restart", "clawpen fresh", "clawpen restart")
    times: dict[str, list[float]] = {k: [] for k in keys}
    split: dict[str, list[float]] = {k: [] for k in keys[2:]}  # until the CLI returned
    try:
        used = resources_of(prepare(cp, cpus, start_cpus).read_text())
        out = cp.build_output()
        bare = Bare(base, out, cp.spec_dir / "openclaw" / "start.sh")
        version = json.loads((out / "node_modules/openclaw/package.json").read_text())["version"]
        size = subprocess.run(["du", "-sm", str(out)], capture_output=True, text=True, check=True)
        for i in range(rounds):
            times["bare fresh"].append(bare.fresh())
            times["bare restart"].append(bare.restart())
            bare.stop()
            for key, (total, cli) in (
                ("clawpen fresh", fresh_clawpen(cp)),
                ("clawpen restart", restart_clawpen(cp)),
            ):
                times[key].append(total)
                split[key].append(cli)
            cp.cli("down", timeout=120)
            log(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
    finally:
        if bare is not None:
            bare.stop()
        cp.close()
        subprocess.run(["rm", "-rf", str(base)], check=False)  # state-build is inside it
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "openclaw": version,
        "build_output_mb": int(size.stdout.split()[0]),
        "cpus": used[0],
        "start_cpus": used[1],  # capped at the host's cores by the daemon
        "host_cores": os.cpu_count(),
        "resources_from": "template" if cpus is None and start_cpus is None else "changed",
        "rounds": rounds,
        "times_s": times,
        "median_s": med,
        "cli_returned_s": split,
        "ratio_fresh": med["clawpen fresh"] / med["bare fresh"],
        "ratio_restart": med["clawpen restart"] / med["bare restart"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpus", type=float, default=None, help="the template's cpus (default: as is)")
    ap.add_argument(
        "--start-cpus", type=float, default=None, help="the template's start_cpus (default: as is; 0: none)"
    )
    ap.add_argument("--json", type=Path, default=None, help="write the figures as JSON")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        log("run as root")
        return 2
    try:
        res = run(args.rounds, args.cpus, args.start_cpus)
    except (BenchError, OSError, subprocess.SubprocessError) as err:
        log(f"cannot run: {err}")
        return 2
    med = res["median_s"]
    start = f", start_cpus {res['start_cpus']:g}" if res["start_cpus"] is not None else ", no start_cpus"
    print(
        f"openclaw {res['openclaw']}, build output {res['build_output_mb']} MiB, cpus {res['cpus']:g}{start}"
        f" ({res['resources_from']}; host cores {res['host_cores']})"
    )
    print(f"{'':18} {'median':>8}   rounds")
    for key, values in res["times_s"].items():
        print(f"{key:18} {med[key]:7.2f}s   " + " ".join(f"{v:.2f}" for v in values))
    for key, values in res["cli_returned_s"].items():
        cmd = "up -d" if "fresh" in key else "restart"
        print(f"  {key}: `clawpen {cmd}` returned after {statistics.median(values):.2f}s (median)")
    ok_fresh = res["ratio_fresh"] <= GOAL_FRESH
    ok_restart = res["ratio_restart"] <= GOAL_RESTART
    for name, ratio, goal, ok in (
        ("fresh  ", res["ratio_fresh"], GOAL_FRESH, ok_fresh),
        ("restart", res["ratio_restart"], GOAL_RESTART, ok_restart),
    ):
        print(f"{name} clawpen/bare {ratio:.2f}x (goal <= {goal}x) {'PASS' if ok else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0 if ok_fresh and ok_restart else 1


if __name__ == "__main__":
    sys.exit(main())
