"""The ``vm`` table of a bot spec (``tier = "vm"``) and the checks of the fields around it.

The pydantic side of :mod:`clawpen.spec.vm` (which stays pydantic-free for the planner and
``clawpen run``). What the table's shape allows is checked when the spec loads
(:class:`VmTable`, :func:`check_tier_fields`); what depends on the files of this host (the
kernel and its modules, an image root) when the policy is built (:func:`for_bot`), and what
depends on the host's CPUs and memory when the plan is built
(:func:`clawpen.spec.vm.check_host`). Each refusal is a PolicyError naming the field.
"""

from __future__ import annotations

import math
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from clawpen.errors import PolicyError
from clawpen.spec import rules
from clawpen.spec.fieldtypes import Size
from clawpen.spec.vm import (
    DEFAULT_MEMORY,
    GUEST_OVERHEAD,
    KERNEL_PREFIX,
    MIN_MEMORY,
    VmSettings,
    kernel_release,
    modules_dir,
)

IMAGE = "image:"
MAX_VCPUS = 255  # a bound on typos; the host's own CPU count is checked when the bot is planned


class VmTable(BaseModel):
    """``vm = { kernel, memory, cpus, rootfs }``: the guest of a ``tier = "vm"`` bot."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kernel: str = Field(
        "auto",
        description='"auto" (Debian\'s linux-image-amd64), or the absolute path of a vmlinuz-RELEASE '
        "whose modules are in /lib/modules/RELEASE",
    )
    memory: Size | None = Field(
        None, description="the guest's RAM (at most half the host's); unset: resources.memory, else 1G"
    )
    cpus: int | None = Field(
        None, ge=1, le=MAX_VCPUS, description="the guest's vCPUs; unset: resources.cpus rounded up, else 1"
    )
    rootfs: str = Field(
        "host",
        description='"host" (the host\'s /usr and friends, read-only), or "image:PATH": a folder '
        "with a usr/ folder (e.g. made by debootstrap) as the guest's read-only root",
    )

    @field_validator("kernel")
    @classmethod
    def _kernel(cls, v: str) -> str:
        if v == "auto":
            return v
        if "\0" in v or not os.path.isabs(v):
            raise rules.RuleViolation(
                f'vm.kernel {rules.shown(v)} is neither "auto" nor an absolute path',
                'write kernel = "auto", or a kernel\'s absolute path, e.g. "/boot/vmlinuz-6.1.0-28-amd64"',
            )
        if kernel_release(v) is None:
            raise rules.RuleViolation(
                f"vm.kernel {rules.shown(v)} is not named {KERNEL_PREFIX}RELEASE (its modules are "
                "found by that release)",
                "give the kernel's path as installed, e.g. /boot/vmlinuz-6.1.0-28-amd64",
            )
        return v

    @field_validator("rootfs")
    @classmethod
    def _rootfs(cls, v: str) -> str:
        if v == "host" or (v.startswith(IMAGE) and v[len(IMAGE) :].strip() and "\0" not in v):
            return v
        raise rules.RuleViolation(
            f'vm.rootfs {rules.shown(v)} is neither "host" nor "image:PATH"',
            'write rootfs = "host", or rootfs = "image:./rootfs" (a folder with a usr/ folder)',
        )


def check_tier_field(field: str, tier: object, value: object) -> None:
    """``vm`` only with ``tier = "vm"``; ``image`` and ``engine`` (the container tier's) not with
    it. ``tier``: the bot's tier, or None when it did not validate (then nothing is checked)."""
    if field == "vm" and tier is not None and tier != "vm" and value is not None:
        raise rules.RuleViolation(
            f"vm is set, but the bot runs in the {tier} tier",
            'add tier = "vm" to run the bot in a virtual machine, or remove vm',
        )
    if field == "image" and tier == "vm" and value is not None:
        raise rules.RuleViolation(
            "image is set, but the bot runs in the vm tier (images are for the container tier)",
            'remove image; for the guest\'s own root use vm = { rootfs = "image:PATH" } (a folder), '
            'or tier = "container"',
        )
    if field == "engine" and tier == "vm" and value != "auto":
        raise rules.RuleViolation(
            f"engine = {value!r} is set, but the bot runs in the vm tier (QEMU, not a container engine)",
            'remove engine, or use tier = "container"',
        )


def for_bot(bot: Any, name: str, base_dir: str) -> VmSettings:
    """A vm bot's settings, once what the tier cannot honour and what this host lacks are
    refused. ``bot``: a :class:`clawpen.spec.models.Bot` (not imported: that module imports this
    one). The host's CPUs and memory are checked by the planner (:func:`clawpen.spec.vm.check_host`)."""
    table: VmTable = bot.vm or VmTable()
    _refuse_fields(bot, name)
    res_set = bot.resources.model_fields_set
    if table.memory is not None:
        memory, memory_field = table.memory, "vm.memory"
    elif "memory" in res_set and bot.resources.memory is not None:
        # the bot keeps its own limit inside the guest (a cgroup there); the guest's kernel and
        # page cache get GUEST_OVERHEAD on top
        memory, memory_field = bot.resources.memory + GUEST_OVERHEAD, "resources.memory"
    else:
        memory, memory_field = DEFAULT_MEMORY, "vm.memory"
    if memory < MIN_MEMORY:
        raise PolicyError(
            f"the VM's memory ({memory} bytes, from {memory_field}) is below {MIN_MEMORY >> 20}M, "
            "too little for the guest's kernel and init",
            where=f"bots.{name}.{memory_field}",
            hint='give the guest at least 128M, e.g. vm = { memory = "1G" }',
        )
    if table.cpus is not None:
        cpus = table.cpus
    elif "cpus" in res_set and bot.resources.cpus is not None:
        cpus = math.ceil(bot.resources.cpus)
    else:
        cpus = 1
    return VmSettings(
        kernel=_kernel(table.kernel, name),
        memory=memory,
        cpus=cpus,
        rootfs=_rootfs(table.rootfs, name, base_dir),
        ports=guest_ports(bot),
    )


def _refuse_fields(bot: Any, name: str) -> None:
    refused = {
        "health.cmd": (
            bot.health is not None and bool(bot.health.cmd),
            "a cmd health check in the vm tier: not yet (no guest agent runs the command)",
            'check the bot over the network: health = { http = "http://127.0.0.1:PORT/..." } or '
            '{ tcp = "127.0.0.1:PORT" }',
        ),
        "resources.io_weight": (
            bot.resources.io_weight is not None,
            "io_weight in the vm tier: not yet (the guest's disk IO goes through QEMU's 9p shares)",
            "remove io_weight, or run the bot in the sandbox tier",
        ),
    }
    for field, (present, what, hint) in refused.items():
        if present:
            raise PolicyError(what, where=f"bots.{name}.{field}", hint=hint)


def _kernel(kernel: str, name: str) -> str:
    """``"auto"``, or the real path of a kernel file whose modules exist."""
    if kernel == "auto":
        return kernel
    where = f"bots.{name}.vm.kernel"
    try:  # QEMU reads it as the bot's uid, through a bind: the mount rules apply (never clawpen's files)
        kernel = rules.check_host_path(kernel, writable=False, base_dir="/", base_is_spec=False)
    except rules.RuleViolation as err:
        raise PolicyError(f"vm.kernel: {err}", where=where, hint=err.hint) from None
    if kernel_release(kernel) is None:
        raise PolicyError(
            f"vm.kernel resolves to {kernel}, which is not named {KERNEL_PREFIX}RELEASE",
            where=where,
            hint="name the kernel file itself, as installed (e.g. /boot/vmlinuz-6.1.0-28-amd64)",
        )
    if not os.path.isfile(kernel):
        raise PolicyError(
            f"vm.kernel {kernel} is not a file on this host",
            where=where,
            hint='install it (apt-get install linux-image-amd64), fix the path, or use kernel = "auto"',
        )
    modules = modules_dir(kernel)
    if modules is None:
        release = kernel_release(kernel)
        raise PolicyError(
            f"the modules of vm.kernel {kernel} are not on this host (no folder /lib/modules/{release}); "
            "the guest loads its virtio and 9p drivers from there",
            where=where,
            hint=f'install the kernel\'s package (it brings /lib/modules/{release}), or use kernel = "auto"',
        )
    return kernel


def _rootfs(rootfs: str, name: str, base_dir: str) -> str:
    """``"host"``, or ``"image:"`` + the real path of a folder with a ``usr/`` folder."""
    if rootfs == "host":
        return rootfs
    raw = rootfs[len(IMAGE) :]
    where = f"bots.{name}.vm.rootfs"
    try:
        real = rules.check_host_path(raw, writable=False, base_dir=base_dir)
    except rules.RuleViolation as err:
        raise PolicyError(f"vm.rootfs: {err}", where=where, hint=err.hint) from None
    if not os.path.isdir(real):
        raise PolicyError(
            f"vm.rootfs image {real} is not a folder on this host",
            where=where,
            hint='make one, e.g. debootstrap bookworm ./rootfs, or use rootfs = "host"',
        )
    if not os.path.isdir(os.path.join(real, "usr")):
        raise PolicyError(
            f"vm.rootfs image {real} has no usr/ folder, so it holds no system for the guest",
            where=where,
            hint='point it at the root of a system tree (e.g. made by debootstrap), or use rootfs = "host"',
        )
    return IMAGE + real


def guest_ports(bot: Any) -> tuple[int, ...]:
    """The guest TCP ports QEMU forwards from the bot's network namespace: the bot-side port of
    each ``network.publish`` entry and the port of an ``http``/``tcp`` health check (sorted)."""
    from clawpen.spec.healthcheck import parse_http, parse_tcp
    from clawpen.spec.publish import parse_publish

    ports = {parse_publish(raw).bot_port for raw in bot.network.publish}
    health = bot.health
    if health is not None and health.http:
        ports.add(parse_http(health.http).port)
    if health is not None and health.tcp:
        ports.add(parse_tcp(health.tcp)[1])
    return tuple(sorted(ports))
