/* clawpen-sysprobe: the system-call probes of `clawpen validate --hostile` for a sandbox whose
 * python3 has no ctypes (a container image with python3-minimal). Static, so it runs in any
 * image; the runner puts it in the probe's scratch folder. Usage: clawpen-sysprobe ACTION [ARG...]
 * It attempts one action and prints one JSON line, as the Python probes do:
 * {"did": true|false, "detail": "...", "via": "clawpen-sysprobe"}; "did" means "the action
 * worked". The attempts and their details match the Python probes in probes.py. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *en(int e) {
    const char *name = e ? strerrorname_np(e) : "0";
    return name ? name : "E?";
}

static void out(int did, const char *fmt, ...) {
    char detail[300], *p;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    fputs(did ? "{\"did\": true, \"detail\": \"" : "{\"did\": false, \"detail\": \"", stdout);
    for (p = detail; *p; p++) {
        if (*p == '"' || *p == '\\') printf("\\%c", *p);
        else if ((unsigned char)*p < 0x20) printf("\\u%04x", *p);
        else putchar(*p);
    }
    fputs("\", \"via\": \"clawpen-sysprobe\"}\n", stdout);
    fflush(stdout);
    _exit(0);
}

/* run fn in a child (a failed unshare or a joined keyring must not change this process);
 * the child's exit status is 0 or the errno */
static int in_child(int (*fn)(char **), char **argv) {
    int status;
    pid_t pid = fork();
    if (pid < 0) return errno;
    if (pid == 0) _exit(fn(argv) == 0 ? 0 : (errno & 255));
    if (waitpid(pid, &status, 0) < 0) return errno;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 255;
}

static int do_unshare(char **argv) {
    int flag = !strcmp(argv[0], "user") ? CLONE_NEWUSER : !strcmp(argv[0], "net") ? CLONE_NEWNET : CLONE_NEWNS;
    return unshare(flag);
}

static int do_keyctl(char **argv) {
    (void)argv;
    return syscall(SYS_keyctl, 1, 0) < 0 ? -1 : 0; /* KEYCTL_JOIN_SESSION_KEYRING, anonymous */
}

static int do_ptrace(char **argv) {
    pid_t sleeper = (pid_t)atoi(argv[0]);
    if (ptrace(PTRACE_ATTACH, sleeper, NULL, NULL) != 0) return -1;
    waitpid(sleeper, NULL, 0);
    ptrace(PTRACE_DETACH, sleeper, NULL, NULL);
    return 0;
}

int main(int argc, char **argv) {
    const char *what = argc > 1 ? argv[1] : "";
    int code;
    long r;
    if (!strcmp(what, "mount") && argc > 3) { /* mount SOURCE DIR */
        mkdir(argv[3], 0755);
        r = mount(argv[2], argv[3], "tmpfs", 0, NULL);
        out(r == 0, "mount tmpfs %s", r == 0 ? "ok" : en(errno));
    } else if (!strcmp(what, "unshare") && argc > 2) {
        code = in_child(do_unshare, argv + 2);
        out(code == 0, "unshare(%s) %s", argv[2], code == 0 ? "ok" : en(code));
    } else if (!strcmp(what, "keyctl")) {
        code = in_child(do_keyctl, argv);
        out(code == 0, "keyctl(JOIN_SESSION_KEYRING) %s", code == 0 ? "ok" : en(code));
    } else if (!strcmp(what, "ptrace")) {
        char num[24];
        char *args[] = {num, NULL};
        pid_t sleeper = fork();
        if (sleeper == 0) {
            sleep(30);
            _exit(0);
        }
        snprintf(num, sizeof num, "%d", (int)sleeper);
        code = in_child(do_ptrace, args);
        kill(sleeper, SIGKILL);
        waitpid(sleeper, NULL, 0);
        out(code == 0, "PTRACE_ATTACH %s", code == 0 ? "ok" : en(code));
    } else if (!strcmp(what, "pidfd") && argc > 2) {
        r = syscall(SYS_pidfd_open, atoi(argv[2]), 0);
        out(r >= 0, "pidfd_open(%s) %s", argv[2], r >= 0 ? "ok" : en(errno));
    } else if (!strcmp(what, "bpf")) {
        uint32_t attr[32] = {2, 4, 4, 1}; /* BPF_MAP_TYPE_ARRAY, key 4, value 4, 1 entry */
        r = syscall(SYS_bpf, 0, attr, sizeof attr);
        out(r >= 0, "bpf(BPF_MAP_CREATE) %s", r >= 0 ? "ok" : en(errno));
    } else if (!strcmp(what, "perf")) {
        uint32_t attr[32] = {0};
        attr[0] = 1, attr[1] = 128, attr[10] = 1 << 5 | 1 << 6; /* software cpu-clock, user only */
        r = syscall(SYS_perf_event_open, attr, 0, -1, -1, 0);
        out(r >= 0, "perf_event_open %s", r >= 0 ? "ok" : en(errno));
    } else if (!strcmp(what, "module")) {
        int fd = open("/dev/null", O_RDONLY);
        errno = 0;
        syscall(SYS_finit_module, fd, "", 0);
        /* "did": the call reached the module loader (which rejects /dev/null), i.e. not refused */
        out(errno != EPERM, "finit_module(/dev/null) %s", en(errno));
    } else if (!strcmp(what, "io_uring")) {
        uint32_t params[30] = {0}; /* struct io_uring_params */
        r = syscall(SYS_io_uring_setup, 1, params);
        out(r >= 0, "io_uring_setup %s", r >= 0 ? "ok" : en(errno));
    } else if (!strcmp(what, "userfaultfd")) {
        r = syscall(SYS_userfaultfd, O_CLOEXEC | 1); /* UFFD_USER_MODE_ONLY */
        out(r >= 0, "userfaultfd %s", r >= 0 ? "ok" : en(errno));
    } else if (!strcmp(what, "clock")) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        r = syscall(SYS_clock_settime, CLOCK_REALTIME, &ts);
        out(r >= 0, "clock_settime(to the current time) %s", r >= 0 ? "ok" : en(errno));
    }
    fprintf(stderr, "clawpen-sysprobe: unknown action or missing argument: %s\n", what);
    return 2;
}
