"""Bot logs through the storage tiers (``[storage]``): the hot tier is the logs folder with its
rotation and retention (:mod:`clawpen.logs.upkeep`); with ``logs_warm``, rotated files older than
``hot.age`` move there gzipped; older than ``warm.age`` they are archived into a restic repository
(tag ``logs``; ``archive`` does it) and deleted, or just deleted when there is none.

The warm folder keeps the hot folder's file names (``<bot>.<stamp>.log.gz``), so a file's age is
its stamp (when it was closed) in either place. A move writes the ``.gz`` in the warm folder
(fsynced, renamed in) before the hot file is removed: a crash leaves at worst both copies, and
the next run removes the hot one.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from clawpen.logs.store import DEFAULT_LEVEL, delete_rotated, fsync_dir, list_bots, list_rotated

Archive = Callable[[str, list[Path]], None]
"""``archive(bot, files)``: store ``files`` in the archive repository (raises when it cannot)."""


class LogAgeingReport(NamedTuple):
    moved: tuple[Path, ...]  # their paths in the warm folder
    archived: tuple[Path, ...]
    deleted: tuple[Path, ...]
    errors: tuple[str, ...]


def _to_warm(src: Path, warm: Path, *, level: int) -> Path:
    name = src.name if src.name.endswith(".gz") else src.name + ".gz"
    target = warm / name
    tmp = warm / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as raw:
            if src.name.endswith(".gz"):
                shutil.copyfileobj(fin, raw, 1 << 20)
            else:
                with gzip.GzipFile(
                    filename=src.name, mode="wb", fileobj=raw, compresslevel=level, mtime=0
                ) as gz:
                    shutil.copyfileobj(fin, gz, 1 << 20)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(warm)
    return target


def age_logs(
    logs_dir: Path,
    warm_dir: Path,
    now: float,
    *,
    hot_age: float,
    warm_age: float,
    archive: Archive | None = None,
    busy: Callable[[Path], bool] = lambda _p: False,
    bots: Iterable[str] | None = None,
    level: int = DEFAULT_LEVEL,
) -> LogAgeingReport:
    """Move rotated logs older than ``hot_age`` from ``logs_dir`` to ``warm_dir`` (gzipped), and
    archive (``archive``) then delete, or delete, those of ``warm_dir`` older than ``warm_age``.
    ``busy``: files the compressor is working on (left for the next run). One file that fails is
    reported in ``errors`` and left where it is; the run goes on."""
    moved: list[Path] = []
    archived: list[Path] = []
    deleted: list[Path] = []
    errors: list[str] = []
    warm_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for bot in list_bots(logs_dir) if bots is None else bots:
        for entry in list_rotated(logs_dir, bot):
            if entry.closed_at >= now - hot_age or busy(entry.path):
                continue
            try:
                moved.append(_to_warm(entry.path, warm_dir, level=level))
                delete_rotated(entry)
            except OSError as err:
                errors.append(f"{entry.path}: {err}")
    for bot in list_bots(warm_dir):
        old = [e for e in list_rotated(warm_dir, bot) if e.closed_at < now - warm_age]
        if not old:
            continue
        paths = [e.path for e in old]
        if archive is not None:
            try:
                archive(bot, paths)
            except Exception as err:  # the files stay in warm until the archive takes them
                errors.append(f"archiving {len(paths)} log files of {bot}: {err}")
                continue
            archived += paths
        for entry in old:
            with contextlib.suppress(OSError):
                delete_rotated(entry)
                deleted.append(entry.path)
    return LogAgeingReport(tuple(moved), tuple(archived), tuple(deleted), tuple(errors))
