"""What ``clawpen doctor`` says about the container engine: which one, its version, cgroup
driver, rootless or not, userns-remap on or off, and whether clawpen's base image is there.

The container tier is optional: no engine is a warning in the doctor, never a failure.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from clawpen.container.engine import client, detect
from clawpen.container.image import BASE_TAG


class EngineReport(NamedTuple):
    """The engine's answers to ``info`` and ``version``, and the base image's presence."""

    engine: str
    socket: str
    version: str
    cgroup_driver: str
    cgroup_version: str
    rootless: bool
    userns_remap: bool
    base_image: bool


def security_options(info: dict[str, Any]) -> set[str]:
    """``info["SecurityOptions"]`` (``["name=seccomp,profile=default", "name=rootless"]``) as
    the set of option names."""
    names = set()
    for raw in info.get("SecurityOptions") or []:
        for part in str(raw).split(","):
            key, _, value = part.partition("=")
            if key == "name":
                names.add(value)
    return names


def report_from(
    name: str, socket: str, info: dict[str, Any], version: dict[str, Any], base: bool
) -> EngineReport:
    """The report from the engine's ``info`` and ``version`` answers (pure, for tests)."""
    options = security_options(info)
    return EngineReport(
        engine=name,
        socket=socket,
        version=str(version.get("Version") or info.get("ServerVersion") or "?"),
        cgroup_driver=str(info.get("CgroupDriver") or "?"),
        cgroup_version=str(info.get("CgroupVersion") or "?"),
        rootless="rootless" in options,
        userns_remap="userns" in options,
        base_image=base,
    )


def engine_report(
    wanted: Literal["auto", "docker", "podman"] = "auto", *, base_tag: str = BASE_TAG, timeout: float = 5.0
) -> EngineReport:
    """Ask the running engine; HostError (from :mod:`clawpen.container.engine`) when none answers."""
    import docker.errors

    engine = detect(wanted)
    api = client(engine, timeout=timeout)
    try:
        try:
            api.images.get(base_tag)
            base = True
        except docker.errors.ImageNotFound:
            base = False
        return report_from(engine.name, engine.socket, api.info(), api.version(), base)
    finally:
        api.close()
