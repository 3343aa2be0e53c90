"""The dependency scan reads folders a bot writes, as root: a bot's symlink, FIFO or device file
named like a lockfile is never followed, never blocks the audit and never reads a host file; the
same content as a regular file is read (positive control)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from clawpen.assess import deps
from clawpen.assess.model import AuditContext

LOCK = {"lockfileVersion": 3, "packages": {"": {"dependencies": {"lodash": "4.17.20"}},
        "node_modules/lodash": {"version": "4.17.20"}}}  # fmt: skip


def scan(folder: Path) -> deps.Inventory:
    inv = deps.Inventory()
    done = threading.Event()

    def work() -> None:
        deps.scan_folder(AuditContext(root=Path("/"), live=False), "evil", folder, inv)
        done.set()

    threading.Thread(target=work, daemon=True).start()
    assert done.wait(10), "the scan blocked"
    return inv


def test_a_regular_lockfile_is_read(tmp_path: Path) -> None:
    (tmp_path / "package-lock.json").write_text(json.dumps(LOCK))
    inv = scan(tmp_path)
    assert [(p.name, p.version) for p in inv.packages] == [("lodash", "4.17.20")]


def test_a_lockfile_symlink_to_a_host_file_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "host-secret.json"  # outside the bot's folder, readable by root only
    secret.write_text(json.dumps(LOCK))
    secret.chmod(0o600)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "package-lock.json").symlink_to(secret)
    (ws / "requirements.txt").symlink_to("/etc/shadow")
    inv = scan(ws)
    assert inv.packages == []
    assert sorted(why for _, why in inv.unreadable) == ["a symbolic link (not followed)"] * 2


def test_a_fifo_or_a_device_named_like_a_lockfile_does_not_block(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "package-lock.json")  # nobody ever writes to it
    (tmp_path / "sub").mkdir()
    os.symlink("/dev/zero", tmp_path / "sub" / "requirements.txt")
    inv = scan(tmp_path)
    assert inv.packages == []
    assert {why for _, why in inv.unreadable} == {"not a regular file", "a symbolic link (not followed)"}
