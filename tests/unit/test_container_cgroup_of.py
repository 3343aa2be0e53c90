"""Which cgroup directories a container's init is in (what `clawpen exec` and `cmd` checks join):
the pure parser of /proc/PID/cgroup against /proc/self/mountinfo."""

from __future__ import annotations

from clawpen.container.handle import cgroup_dirs

CID = "0a5a8d47163097e7"
HYBRID_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
33 31 0:30 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
34 31 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
37 31 0:34 / /sys/fs/cgroup/devices rw,nosuid - cgroup cgroup rw,devices
90 31 0:32 /clawpen /mnt/memory-sub rw,nosuid - cgroup cgroup rw,memory
"""
HYBRID_MEMBER = f"""\
6:devices:/clawpen/bot.0/{CID}
5:pids:/clawpen/bot.0/{CID}
4:memory:/clawpen/bot.0/{CID}
3:cpu,cpuacct:/clawpen/bot.0/{CID}
2:name=systemd:/clawpen/bot.0/{CID}
1:blkio:/clawpen/bot.0/{CID}
0::/
"""


def test_every_mounted_hierarchy_of_the_init_and_nothing_else() -> None:
    dirs = cgroup_dirs(HYBRID_MEMBER, HYBRID_MOUNTS)
    assert dirs == [
        f"/sys/fs/cgroup/devices/clawpen/bot.0/{CID}",
        f"/sys/fs/cgroup/pids/clawpen/bot.0/{CID}",
        f"/sys/fs/cgroup/memory/clawpen/bot.0/{CID}",  # the hierarchy's root, not the sub-folder bind
        f"/sys/fs/cgroup/cpu,cpuacct/clawpen/bot.0/{CID}",
        f"/sys/fs/cgroup/systemd/clawpen/bot.0/{CID}",
    ]  # blkio is not mounted here, and the init is in the unified root: both skipped


def test_unified_hierarchy() -> None:
    mounts = "25 1 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    assert cgroup_dirs(f"0::/clawpen/bot.0/{CID}/\n", mounts) == [f"/sys/fs/cgroup/clawpen/bot.0/{CID}"]
    assert cgroup_dirs("0::/\n", mounts) == []  # a root cgroup holds the whole host: never joined
    # a process that is gone, or no cgroup file system mounted here: nothing to join
    assert cgroup_dirs("", mounts) == []
    assert cgroup_dirs(f"0::/clawpen/bot.0/{CID}\n", "") == []


def test_a_hierarchy_the_engine_did_not_place_the_container_in_is_left_out() -> None:
    """clawpen's own favordynmods hierarchy (mounted after the engine started) has the container
    at its root, with every process of the host: a kill of that Cgroup would reach them all."""
    mounts = HYBRID_MOUNTS + (
        "95 24 0:70 / /run/clawpen-favordynmods rw,relatime - cgroup cgroup "
        "rw,favordynmods,name=clawpen-favor\n"
    )
    member = "10:name=clawpen-favor:/\n" + HYBRID_MEMBER
    assert cgroup_dirs(member, mounts) == cgroup_dirs(HYBRID_MEMBER, HYBRID_MOUNTS)
    assert not any("favordynmods" in d for d in cgroup_dirs(member, mounts))
