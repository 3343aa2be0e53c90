"""The report printed to PDF by Debian's Chromium, headless.

``chromium --headless --print-to-pdf=FILE file://REPORT``, with a throw-away profile folder and
no network use (the page fetches nothing: its CSP allows no source). As root Chromium refuses to
start unless its own sandbox is turned off (``--no-sandbox``: its setuid/user-namespace sandbox
cannot drop root's rights); the page is our own static HTML with no script allowed, so nothing in
it runs. As any other user the sandbox stays on. The whole process group is killed on a time-out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from clawpen.errors import HostError

PRINT_TIMEOUT = 120.0
CHROMIUMS = ("chromium", "chromium-browser")


def chromium() -> str:
    for name in CHROMIUMS:
        found = shutil.which(name)
        if found:
            return found
    raise HostError("Chromium is not installed: no PDF", where="--pdf", hint="apt-get install chromium")


def argv(exe: str, html_file: Path, pdf_file: Path, profile: Path, *, root: bool) -> list[str]:
    return [
        exe,
        "--headless=new",
        *(["--no-sandbox"] if root else []),
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-pdf-header-footer",
        f"--user-data-dir={profile}",
        f"--print-to-pdf={pdf_file}",
        html_file.resolve().as_uri(),
    ]


def print_pdf(html_file: Path, pdf_file: Path, *, timeout: float = PRINT_TIMEOUT) -> None:
    """Print ``html_file`` to ``pdf_file`` (written beside as a temporary file, then renamed)."""
    exe = chromium()
    tmp = pdf_file.with_name(f".{pdf_file.name}.{os.getpid()}.tmp")
    with tempfile.TemporaryDirectory(prefix="clawpen-report-") as profile:
        proc = subprocess.Popen(
            argv(exe, html_file, tmp, Path(profile), root=os.geteuid() == 0),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            _out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            tmp.unlink(missing_ok=True)
            raise HostError(f"Chromium did not print within {timeout:g} s", where="--pdf") from None
        finally:
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Chromium may leave helper processes of its group: none outlives the print
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode != 0 or not tmp.exists() or tmp.stat().st_size == 0:
        tmp.unlink(missing_ok=True)
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        raise HostError(
            f"Chromium could not print the report (exit {proc.returncode}): {' / '.join(tail)[:300]}",
            where="--pdf",
            hint="run the same with chromium --headless by hand to see why",
        )
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fchmod(fd, 0o600)  # as the HTML: the deployment's layout is its owner's
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, pdf_file)
