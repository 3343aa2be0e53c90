#!/usr/bin/env python3
"""Log shipping benchmark (issue 20), side by side in one run against rsyslog's own forwarding.

    .venv/bin/python bench/ship_bench.py                 # 100,000 lines, 3 rounds, the daemon part
    .venv/bin/python bench/ship_bench.py --lines 20000 --rounds 1 --no-daemon

1. **Throughput with TLS.** One receiving rsyslogd (imtcp + gtls, a private CA, omfile) on
   loopback. Each round, interleaved:
   * clawpen: :class:`~clawpen.logs.ship.syslog.SyslogTransport` over TLS, batches of 500, each
     batch acknowledged (the kernel's send queue empty, SIOCOUTQ) before the next, as the shipper
     moves its cursor;
   * the anchor, rsyslog forwarding the same lines: ``logger`` into a second rsyslogd's private
     unix socket (imuxsock, no rate limit), which forwards them with ``omfwd`` over TLS,
     octet-counted, to the same receiver (nothing acknowledged end to end).
   Both are timed until every line is in the receiver's file; lines/s and the ratio are printed.
2. **The daemon while shipping 10,000 lines/s** (root: a real daemon and bot). A bot prints 10,000
   lines a second for 20 s; the daemon ships them over TLS to the receiver. The daemon's CPU (its
   utime + stime over the window, % of one core) is measured with shipping on and, in the same
   run, with shipping off (the same bot, logs written only); the difference is shipping's cost.
   The lag at the end (all lines in the receiver's file) is printed.

Exits 0 when clawpen's acknowledged shipping reaches rsyslog's own forwarding (ratio >= 1.0),
1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from logsink_env import SERVER_NAME, LogSink, rsyslog_tls  # noqa: E402

from clawpen.logs.ship.model import ShipMeta, ShipRecord  # noqa: E402
from clawpen.logs.ship.syslog import SyslogTransport  # noqa: E402

TEXT = "bench line %07d with some typical payload text here"
BATCH = 500
SD = '[clawpen@32473 bot=\\"web\\" stream=\\"out\\"]'  # clawpen's structured data, rsyslog-quoted
RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
CLAWPEN = str(Path(sys.executable).with_name("clawpen"))


def received(sink: LogSink) -> int:
    path = sink.folder / "messages.log"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def wait_received(sink: LogSink, want: int, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while received(sink) < want:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{received(sink)} of {want} lines arrived")
        time.sleep(0.005)
    return time.perf_counter()


def clawpen_round(sink: LogSink, lines: int) -> float:
    assert sink.pki is not None
    records = [
        ShipRecord("web", "web", 0, "out", 1.8e9 + i / 1000, (TEXT % i).encode()) for i in range(lines)
    ]
    meta = ShipMeta("bench-host", 1)
    base = received(sink)
    transport = SyslogTransport(
        "127.0.0.1", sink.port, tls=True, ca=sink.pki.ca, cert=None, key=None, server_name=SERVER_NAME
    )
    transport.open(10)
    start = time.perf_counter()
    for i in range(0, lines, BATCH):
        transport.send(records[i : i + BATCH], meta)
        if not transport.acked(30):
            raise RuntimeError("a batch was not acknowledged")
    end = wait_received(sink, base + lines)
    transport.close()
    return lines / (end - start)


def omfwd_round(sink: LogSink, lines: int, work: Path) -> float:
    assert sink.pki is not None
    folder = Path(tempfile.mkdtemp(prefix="fwd-", dir=work))
    (folder / "work").mkdir()
    sock = folder / "in.sock"
    conf = folder / "fwd.conf"
    conf.write_text(f"""
global(workDirectory="{folder}/work" DefaultNetstreamDriver="gtls"
       DefaultNetstreamDriverCAFile="{sink.pki.ca}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{sock}" RateLimit.Interval="0" CreatePath="on")
template(name="fwd" type="string"
         string="<%PRI%>1 %TIMESTAMP:::date-rfc3339% %HOSTNAME% clawpen - out {SD} %msg%")
action(type="omfwd" target="127.0.0.1" port="{sink.port}" protocol="tcp" TCP_Framing="octet-counted"
       StreamDriver="gtls" StreamDriverMode="1" StreamDriverAuthMode="x509/name"
       StreamDriverPermittedPeers="{SERVER_NAME}" template="fwd")
""")
    text = folder / "lines.txt"
    text.write_text("".join(TEXT % i + "\n" for i in range(lines)))
    with open(folder / "err", "wb") as err:
        proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(conf), "-i", str(folder / "pid")], stderr=err)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        base = received(sink)
        start = time.perf_counter()
        subprocess.run(["logger", "-u", str(sock), "-t", "clawpen", "-f", str(text)], check=True)
        end = wait_received(sink, base + lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    return lines / (end - start)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


BOT = (
    "import sys, time\nn = 0\nstart = time.monotonic()\nwhile time.monotonic() - start < {secs}:\n"
    "    due = int((time.monotonic() - start) * {rate})\n"
    "    if due > n:\n"
    "        sys.stdout.write(''.join('line %09d of the bench bot\\n' % i for i in range(n, due)))\n"
    "        sys.stdout.flush()\n        n = due\n    time.sleep(0.005)\nprint('done', n, flush=True)\n"
    "time.sleep(3600)\n"
)


def daemon_run(sink: LogSink | None, work: Path, secs: int, rate: int) -> tuple[float, float, int]:
    """(daemon CPU %, seconds from the bot's end until all its lines arrived, lines)."""
    home = Path(tempfile.mkdtemp(prefix="state-", dir=work))
    spec_dir = Path(tempfile.mkdtemp(prefix="spec-", dir="/tmp"))
    spec_dir.chmod(0o755)
    spec = spec_dir / "clawpen.toml"
    ship = ""
    if sink is not None and sink.pki is not None:
        ship = (
            '[logs.ship]\nbatch = 500\n[[logs.ship.targets]]\nname = "central"\ntype = "syslog"\n'
            f'url = "tls://127.0.0.1:{sink.port}"\nca = "{sink.pki.ca}"\nserver_name = "{SERVER_NAME}"\n'
        )
    bot = BOT.format(secs=secs, rate=rate)
    spec.write_text(f'[bots.flood]\ncommand = ["/usr/bin/python3", "-c", {json.dumps(bot)}]\n'
                    f'restart = {{ policy = "no" }}\n{ship}')  # fmt: skip
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CLAWPEN_")}, "CLAWPEN_HOME": str(home)}
    base = received(sink) if sink is not None else 0
    try:
        subprocess.run([CLAWPEN, "up", "-f", str(spec), "--detach"], env=env, check=True, capture_output=True)
        pid = int((home / "daemon.pid").read_text())
        time.sleep(1)
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(secs - 2)
        c1, t1 = cpu_seconds(pid), time.monotonic()
        cpu = 100 * (c1 - c0) / (t1 - t0)
        log = home / "logs" / "flood.log"
        deadline = time.monotonic() + 60
        while b"done" not in log.read_bytes()[-200:] and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = log.read_bytes().count(b"\n")
        bot_end = time.monotonic()
        lag = 0.0
        if sink is not None:
            while received(sink) < base + lines and time.monotonic() < bot_end + 120:
                time.sleep(0.01)
            lag = time.monotonic() - bot_end
        subprocess.run([CLAWPEN, "down"], env=env, check=False, capture_output=True, cwd=spec_dir)
        os.kill(pid, signal.SIGTERM)
        return cpu, lag, lines
    finally:
        shutil.rmtree(spec_dir, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-daemon", action="store_true", help="only the throughput part")
    ap.add_argument("--rate", type=int, default=10_000, help="the daemon part's lines per second")
    ap.add_argument("--seconds", type=int, default=20)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clawpen-ship-bench-", dir="/var/tmp"))
    ours: list[float] = []
    anchor: list[float] = []
    try:
        with rsyslog_tls(work) as sink:
            for _ in range(args.rounds):
                ours.append(clawpen_round(sink, args.lines))
                anchor.append(omfwd_round(sink, args.lines, work))
            ratio = statistics.median(ours) / statistics.median(anchor)
            print(f"lines {args.lines:,} x {args.rounds} rounds, TLS, to one rsyslogd on loopback")
            print(
                f"  clawpen SyslogTransport, each batch of {BATCH} acknowledged: "
                f"median {statistics.median(ours):>9,.0f} lines/s  ({', '.join(f'{v:,.0f}' for v in ours)})"
            )
            rounds = ", ".join(f"{v:,.0f}" for v in anchor)
            print(
                f"  rsyslog: logger -> imuxsock -> omfwd (TLS), unacknowledged: "
                f"median {statistics.median(anchor):>9,.0f} lines/s  ({rounds})"
            )
            print(f"  ratio clawpen / rsyslog forwarding: {ratio:.2f}x (goal >= 1.0)")
            if not args.no_daemon:
                off = daemon_run(None, work, args.seconds, args.rate)
                on = daemon_run(sink, work, args.seconds, args.rate)
                print(f"daemon while a bot writes {args.rate:,} lines/s for {args.seconds} s:")
                print(f"  shipping off: daemon CPU {off[0]:.1f}% of a core ({off[2]:,} lines logged)")
                print(
                    f"  shipping on:  daemon CPU {on[0]:.1f}% of a core ({on[2]:,} lines logged, shipped); "
                    f"shipping's cost {on[0] - off[0]:+.1f} points"
                )
                print(f"  every line in the receiver {on[1]:.2f} s after the bot's last one")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ratio >= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
