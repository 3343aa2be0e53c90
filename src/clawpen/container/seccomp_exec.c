/* clawpen-seccomp-exec: the container tier's last step before a bot's command.
 *
 *   clawpen-seccomp-exec FILTER.bpf COMMAND [ARG...]
 *
 * Loads clawpen's seccomp program (classic BPF, compiled on the host by libseccomp, the same one
 * the sandbox tier gives bubblewrap) on top of the engine's own filter (filters stack: a call
 * must pass both), sets the secret environment variables named in CLAWPEN_SECRET_ENV from the
 * files /run/secrets/NAME (their exact bytes; never through an argv or the engine's config), then
 * execs COMMAND. Any failure exits 125 before the command runs. Built static by clawpen
 * (gcc -static), so it runs in any image. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define FAIL 125
#define MAX_PROGRAM (4096 * sizeof(struct sock_filter))
#define MAX_SECRET (1 << 20)

static int fail(const char *what, const char *arg) {
    fprintf(stderr, "clawpen-seccomp-exec: %s%s%s: %s\n", what, arg ? " " : "", arg ? arg : "",
            strerror(errno));
    return FAIL;
}

static ssize_t read_file(const char *path, char *buf, size_t cap) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return -1;
    size_t n = 0;
    while (n < cap) {
        ssize_t got = read(fd, buf + n, cap - n);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) { close(fd); return -1; }
        if (got == 0) break;
        n += (size_t)got;
    }
    if (n == cap) { close(fd); errno = EFBIG; return -1; }
    close(fd);
    return (ssize_t)n;
}

static int secret_env(void) {
    const char *names = getenv("CLAWPEN_SECRET_ENV");
    if (names == NULL || *names == '\0') return 0;
    char *list = strdup(names), *save = NULL;
    char *value = malloc(MAX_SECRET + 1);
    if (list == NULL || value == NULL) return fail("out of memory", NULL);
    for (char *name = strtok_r(list, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
        char path[512];
        if (snprintf(path, sizeof path, "/run/secrets/%s", name) >= (int)sizeof path || strchr(name, '/')) {
            errno = EINVAL;
            return fail("bad secret name", name);
        }
        ssize_t n = read_file(path, value, MAX_SECRET);
        if (n < 0) return fail("cannot read", path);
        value[n] = '\0';
        if (memchr(value, '\0', (size_t)n)) { errno = EINVAL; return fail("a NUL byte in", path); }
        if (setenv(name, value, 1) != 0) return fail("cannot set", name);
    }
    memset(value, 0, MAX_SECRET + 1);
    free(value);
    free(list);
    unsetenv("CLAWPEN_SECRET_ENV");
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: clawpen-seccomp-exec FILTER.bpf COMMAND [ARG...]\n");
        return FAIL;
    }
    static char program[MAX_PROGRAM];
    ssize_t n = read_file(argv[1], program, sizeof program);
    if (n < 0) return fail("cannot read", argv[1]);
    if (n == 0 || n % (ssize_t)sizeof(struct sock_filter) != 0) {
        errno = EINVAL;
        return fail("not a BPF program:", argv[1]);
    }
    if (secret_env() != 0) return FAIL;
    struct sock_fprog prog = {(unsigned short)(n / (ssize_t)sizeof(struct sock_filter)),
                              (struct sock_filter *)program};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return fail("no_new_privs", NULL);
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0) return fail("seccomp", NULL);
    execvp(argv[2], argv + 2);
    int err = errno;
    fprintf(stderr, "clawpen-seccomp-exec: cannot run %s: %s\n", argv[2], strerror(err));
    return err == ENOENT ? 127 : 126;
}
