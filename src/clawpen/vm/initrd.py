"""The guest's initramfs: clawpen's static init, the kernel modules it loads, and its orders.

An initramfs is a "newc" cpio archive; Linux unpacks several archives laid end to end, so the
part every instance of a kernel shares (the init and the modules, gzip-compressed, cached by
:func:`base_archive`) is followed by a small uncompressed part of the instance's own (the
``/clawpen/boot`` orders, which hold the bot's environment and so its secret env values: the
tier hands the whole image to QEMU in memory, never on disk).
"""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from clawpen.fsutil import write_atomic

# What the guest needs of a distribution kernel that builds them as modules (Debian's does),
# dependencies first once resolved: virtio over MMIO (microvm), virtio-9p, virtio-serial,
# virtio-net, the ACPI power button and the input events it sends.
MODULES = ("virtio_mmio", "9pnet_virtio", "9p", "virtio_console", "virtio_net", "button", "evdev")

_DEPENDS = re.compile(rb"\0depends=([^\0]*)\0")


def module_order(modules_dir: Path, wanted: Sequence[str] = MODULES) -> list[tuple[str, Path]]:
    """``wanted`` and what they depend on (read from each ``.ko``'s ``.modinfo``), in load
    order; a module built into the kernel (no ``.ko`` found) is skipped."""
    index = {p.name[:-3].replace("-", "_"): p for p in modules_dir.rglob("*.ko")}
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name not in index:
            return
        seen.add(name)
        found = _DEPENDS.search(index[name].read_bytes())
        for dep in found.group(1).decode().split(",") if found else ():
            if dep:
                visit(dep.replace("-", "_"))
        order.append((name, index[name]))

    for name in wanted:
        visit(name)
    return order


def _entry(name: str, mode: int, data: bytes, ino: int) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    out = b"070701" + "".join(f"{v:08X}" for v in fields).encode() + encoded
    out += b"\0" * (-len(out) % 4) + data
    return out + b"\0" * (-len(out) % 4)


def cpio(entries: Iterable[tuple[str, int, bytes]]) -> bytes:
    """A newc archive of ``(path, mode, data)`` entries (directories with empty data), with its
    trailer."""
    parts = [_entry(name, mode, data, ino) for ino, (name, mode, data) in enumerate(entries, 1)]
    parts.append(_entry("TRAILER!!!", 0, b"", 0))
    return b"".join(parts)


DIR = 0o040755
EXE = 0o100755
FILE = 0o100400


def base_archive(
    init: str, modules_dir: Path, cache: Path, mods: list[tuple[str, Path]] | None = None
) -> Path:
    """The shared part (gzip), cached under ``cache`` by the init's and modules' identity.
    ``mods``: :func:`module_order` of ``modules_dir`` when the caller has it already (it reads
    every module file)."""
    mods = module_order(modules_dir) if mods is None else mods
    key = hashlib.sha256(Path(init).name.encode() + str(modules_dir).encode())
    for name, path in mods:
        st = path.stat()
        key.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    out = cache / f"initrd-{key.hexdigest()[:16]}.cpio.gz"
    if out.is_file():
        return out
    entries = [(d, DIR, b"") for d in ("clawpen", "clawpen/modules", "proc", "sys", "dev", "newroot")]
    entries.append(("init", EXE, Path(init).read_bytes()))
    entries += [(f"clawpen/modules/{name}.ko", FILE, path.read_bytes()) for name, path in mods]
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(out, gzip.compress(cpio(entries), 6), mode=0o644)
    return out


def boot_orders(pairs: Iterable[tuple[str, ...]]) -> bytes:
    """The ``/clawpen/boot`` file: each order's key and values, NUL-terminated (see init.c)."""
    out = bytearray()
    for order in pairs:
        for token in order:
            if "\0" in token:
                raise ValueError(f"a NUL byte in a guest order: {order[0]}")
            out += token.encode() + b"\0"
    return bytes(out)


def instance_image(base: Path, orders: bytes, seccomp: bytes | None = None) -> bytes:
    """The whole initramfs of one instance: the shared archive, then the orders (and the bot's
    seccomp program, which the init loads before the bot's command)."""
    shared = base.read_bytes()
    # Linux reads the next archive from a 4-byte boundary: pad the compressed one with NULs.
    shared += b"\0" * (-len(shared) % 4)
    own = [("clawpen", DIR, b""), ("clawpen/boot", FILE, orders)]
    if seccomp is not None:
        own.append(("clawpen/seccomp.bpf", FILE, seccomp))
    return shared + cpio(own)


def module_names(modules_dir: Path) -> list[str]:
    """The ``mod`` orders: the modules :func:`base_archive` packs, in load order."""
    return [name for name, _ in module_order(modules_dir)]
