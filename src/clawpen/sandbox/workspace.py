"""A bot's workspace on the host: where it may be, and who owns it.

The location rules (never ``/``, a system folder, clawpen's state folder or the spec's folder)
are :func:`clawpen.spec.rules.check_workspace_location`; the tier calls it again right before
it creates or hands over anything. Ownership:

* a missing workspace is created for the bot and handed to its uid;
* an existing one owned by the bot's uid is used as it is (nothing is changed);
* an existing empty one is handed to the bot's uid (that one folder);
* an existing one holding files of other owners is refused, unless the spec says
  ``workspace_adopt = true`` (``clawpen run --adopt-workspace``). Then it is handed over with
  :func:`adopt_tree`: walked by file descriptor without following symlinks, not crossing into
  other filesystems, ownership changed with ``lchown`` semantics, hard-linked files left alone.
"""

from __future__ import annotations

import contextlib
import os
import stat

from clawpen.errors import PolicyError, SandboxError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _fail(path: str, err: OSError) -> SandboxError:
    return SandboxError(
        f"cannot prepare workspace {path}: {err.strerror}",
        where="workspace",
        hint="check the folder exists on a local filesystem that supports ownership (not vfat)",
    )


WORKSPACE_OPT_IN = "set workspace_adopt = true on the bot (clawpen run: --adopt-workspace)"


def prepare_workspace(
    path: str,
    uid: int,
    gid: int,
    *,
    adopt: bool = False,
    what: str = "workspace",
    opt_in: str = WORKSPACE_OPT_IN,
) -> None:
    """Create the workspace if needed and make sure the bot's uid owns it (see the module doc).

    Raises :class:`PolicyError` for an existing folder of other owners without ``adopt``, and
    :class:`SandboxError` when the folder cannot be made or handed over."""
    try:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            _create(path, uid, gid)
            return
        if not stat.S_ISDIR(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a folder"
            raise PolicyError(
                f"workspace {path} is {kind}",
                where="workspace",
                hint="give the bot a folder of its own (it is created if missing)",
            )
        if st.st_uid == uid:
            if st.st_gid != gid:
                os.chown(path, uid, gid, follow_symlinks=False)
            return
        fd = os.open(path, _DIR_FLAGS)
        try:
            empty = not os.listdir(fd)
            if not empty and not adopt:
                raise PolicyError(
                    f"{what} {path} already exists and holds files of other owners (it is owned by "
                    f"uid {st.st_uid}); clawpen hands it to the bot's uid {uid} and will not "
                    "change the owner of files it did not create",
                    where=what,
                    hint=f"point the bot at a new folder (it is created for it), or, if the bot may take "
                    f"these files over, {opt_in}",
                )
            if empty:
                os.fchown(fd, uid, gid)
            else:
                adopt_tree(fd, uid, gid)
        finally:
            os.close(fd)
    except OSError as err:
        raise _fail(path, err) from None


def _create(path: str, uid: int, gid: int) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(path, 0o750)
    except FileExistsError:  # made meanwhile: decide again, as for any existing folder
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            raise PolicyError(
                f"workspace {path} appeared while clawpen was creating it",
                where="workspace",
                hint="start the bot again",
            ) from None
        return
    fd = os.open(path, _DIR_FLAGS)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, 0o750)
    finally:
        os.close(fd)


def adopt_tree(top_fd: int, uid: int, gid: int) -> int:
    """Give the tree below the open folder ``top_fd`` (and the folder) to ``uid``/``gid``.

    Never follows a symlink (they are changed themselves), never enters a folder on another
    filesystem (a mount point keeps its owner), and leaves files with more than one hard link
    as they are (another name of such a file may lie outside the tree). Returns the number of
    entries changed."""
    dev = os.fstat(top_fd).st_dev
    changed = 0
    # os.fwalk opens every folder relative to its parent's descriptor with O_NOFOLLOW, so a
    # folder swapped for a symlink during the walk is not entered.
    for _root, dirs, files, dirfd in os.fwalk(".", dir_fd=top_fd, follow_symlinks=False):
        for name in list(dirs):
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                if st.st_dev != dev or not stat.S_ISDIR(st.st_mode):
                    dirs.remove(name)  # another filesystem (or no longer a folder): not entered
                    if stat.S_ISLNK(st.st_mode):
                        os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)
                        changed += 1
                    continue
                os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)
                changed += 1
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                if st.st_dev != dev or (not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1):
                    continue
                os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)
                changed += 1
    os.fchown(top_fd, uid, gid)
    return changed + 1


def unreachable_parent(path: str, uid: int, gid: int) -> str | None:
    """The first folder above ``path`` that ``uid`` may not traverse, or None.

    bubblewrap runs as the bot's uid and resolves every bind source by path (even one passed
    as a file descriptor), so each parent folder must let that uid through."""
    parent = os.path.dirname(os.path.abspath(path))
    while True:
        try:
            st = os.stat(parent)
        except FileNotFoundError:  # created later with the default, traversable mode
            parent = os.path.dirname(parent)
            continue
        except OSError:
            return parent
        if st.st_uid == uid:
            bit = 0o100
        elif st.st_gid == gid:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return parent
        if parent == "/":
            return None
        parent = os.path.dirname(parent)


def disk_usage(path: str) -> int:
    """Bytes allocated below ``path`` (without following symlinks)."""
    total = 0
    stack = [path]
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as it:
            for entry in it:
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
    return total
