"""A demo bot for `clawpen run`: it looks around its sandbox and reports what it finds."""

import ctypes
import datetime
import os
import socket


def attempt(label, action):
    try:
        result = action()
        print(f"  allowed  {label}{': ' + str(result) if result is not None else ''}")
    except OSError as err:
        print(f"  refused  {label}: {err.strerror or err}")


def unshare_user():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def main():
    print(f"hello from {socket.gethostname()}: uid {os.getuid()}, pid {os.getpid()}, cwd {os.getcwd()}")
    print("what this bot may do:")
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    attempt("append to /workspace/visits.log", lambda: open("/workspace/visits.log", "a").write(stamp + "\n"))
    attempt("write /tmp/scratch", lambda: open("/tmp/scratch", "w").write("x"))
    attempt("read /etc/passwd (its own)", lambda: open("/etc/passwd").read().count("\n"))
    attempt("read /etc/shadow", lambda: open("/etc/shadow").read())
    attempt("list /root", lambda: os.listdir("/root"))
    attempt("list /home", lambda: os.listdir("/home"))
    attempt("write /usr/bin/evil", lambda: open("/usr/bin/evil", "w"))
    attempt("see other processes", lambda: sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
    attempt("connect to 1.1.1.1:443", lambda: socket.create_connection(("1.1.1.1", 443), timeout=2))
    attempt("network interfaces", lambda: [name for _, name in socket.if_nameindex()])
    attempt("create a user namespace", unshare_user)
    attempt("open files limit", lambda: open("/proc/self/limits").read().split("Max open files")[1].split()[0])


if __name__ == "__main__":
    main()
