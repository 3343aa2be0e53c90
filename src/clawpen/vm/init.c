/* clawpen's guest init: pid 1 of a VM bot's guest (built static by clawpen.staticbin).
 *
 * It reads its orders from /clawpen/boot in the initramfs (NUL-separated tokens, written by
 * clawpen.vm.initrd): loads the kernel modules it names, mounts the guest's root (a read-only
 * virtio-9p share) and the bot's writable shares and tmpfs, switches to that root, brings up
 * the network QEMU's user-mode stack offers, and runs the bot's command as the bot's uid with
 * its rlimits, its stdout/stderr on virtio-serial ports. It reaps orphans, turns the ACPI power
 * button (QMP system_powerdown) into SIGTERM for the bot, and when the bot ends reports how on
 * the status port ("exit N", "signal N", "signal 9 oom") and powers the guest off.
 *
 * Keys: mod NAME | root TAG | share TAG DEST | tmpfs DEST SIZE MODE | hostname NAME | net 1 |
 * uid N | gid N | cwd PATH | arg S | env K=V | nofile N | fsize N | core N | pids N | memory N |
 * cgroup2 1 | exec 1 (run as root: a test guest) | fwd PORT RELAY .
 *
 * fwd: QEMU forwards the bot's published and health-checked PORT from the bot's network
 * namespace to the guest's RELAY port, where a relay of init's (as nobody) takes each connection
 * to 127.0.0.1:PORT, or to the guest's address when nothing listens on loopback: a bot listening
 * on 127.0.0.1, as in the other tiers, is reached.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/filter.h>
#include <linux/input.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAXTOK 8192
static char *tok[MAXTOK];
static int ntok;
static int errfd = 2;

static void say(const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (n > (int)sizeof buf - 2) n = sizeof buf - 2;
    buf[n++] = '\n';
    if (write(errfd, "clawpen-vm: ", 12) < 0 || write(errfd, buf, n) < 0) return;
}

static void halt(void) {
    sync();
    reboot(RB_POWER_OFF);
    for (;;) pause();
}

static void die(const char *what) {
    say("%s: %s", what, strerror(errno));
    halt();
}

static void load_boot(void) {
    static char buf[1 << 20];
    int fd = open("/clawpen/boot", O_RDONLY);
    if (fd < 0) die("open /clawpen/boot");
    ssize_t len = 0, n;
    while ((n = read(fd, buf + len, sizeof buf - 1 - len)) > 0) len += n;
    close(fd);
    buf[len] = 0;
    for (ssize_t i = 0; i < len && ntok < MAXTOK;) {
        tok[ntok++] = buf + i;
        i += strlen(buf + i) + 1;
    }
}

/* [vmhostile] How many values follow an order's key: every walk over the orders steps from key
 * to key, so a value (the bot's argument "exec" or "net", a hostname "mod") is never read as a
 * key (validate --hostile's priv.netns, whose probe takes the argument "net", found it). */
static int arity(const char *key) {
    if (!strcmp(key, "share") || !strcmp(key, "fwd")) return 2;
    if (!strcmp(key, "tmpfs")) return 3;
    return 1;
}
#define EACH_ORDER(i) for (int i = 0; i + 1 < ntok; i += 1 + arity(tok[i]))

/* The value after key (the first occurrence), or NULL. */
static const char *get(const char *key) {
    EACH_ORDER(i)
        if (!strcmp(tok[i], key)) return tok[i + 1];
    return NULL;
}

static long getnum(const char *key, long dflt) {
    const char *v = get(key);
    return v ? strtol(v, NULL, 10) : dflt;
}

static void mkdirs(const char *path) {
    char p[4096];
    snprintf(p, sizeof p, "%s", path);
    for (char *s = p + 1; *s; s++)
        if (*s == '/') {
            *s = 0;
            mkdir(p, 0755);
            *s = '/';
        }
    mkdir(p, 0755);
}

static void insmod(const char *name) {
    char path[256];
    snprintf(path, sizeof path, "/clawpen/modules/%s.ko", name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die(path);
    if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST) die(path);
    close(fd);
    unlink(path); /* give the memory back */
}

static void mount9p(const char *tag, const char *dest, int ro) {
    const char *opts = ro ? "trans=virtio,version=9p2000.L,msize=262144,cache=loose"
                          : "trans=virtio,version=9p2000.L,msize=262144,cache=mmap";
    mkdirs(dest);
    unsigned long flags = MS_NOSUID | MS_NODEV | (ro ? MS_RDONLY : 0);
    if (mount(tag, dest, "9p", flags, opts) != 0) die(dest);
}

static void net_up(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) die("socket");
    struct ifreq ifr;
    const char *names[2] = {"lo", "eth0"};
    for (int i = 0; i < 2; i++) {
        memset(&ifr, 0, sizeof ifr);
        strncpy(ifr.ifr_name, names[i], IFNAMSIZ - 1);
        if (i == 1 && !get("net")) break;
        if (i == 1) {
            struct sockaddr_in *a = (struct sockaddr_in *)&ifr.ifr_addr;
            a->sin_family = AF_INET;
            inet_pton(AF_INET, "10.0.2.15", &a->sin_addr);
            if (ioctl(s, SIOCSIFADDR, &ifr) != 0) die("eth0 address");
            inet_pton(AF_INET, "255.255.255.0", &a->sin_addr);
            if (ioctl(s, SIOCSIFNETMASK, &ifr) != 0) die("eth0 netmask");
        }
        if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0) die(names[i]);
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0) die(names[i]);
    }
    if (get("net")) {
        struct rtentry rt;
        memset(&rt, 0, sizeof rt);
        struct sockaddr_in *gw = (struct sockaddr_in *)&rt.rt_gateway;
        gw->sin_family = AF_INET;
        inet_pton(AF_INET, "10.0.2.2", &gw->sin_addr);
        ((struct sockaddr_in *)&rt.rt_dst)->sin_family = AF_INET;
        ((struct sockaddr_in *)&rt.rt_genmask)->sin_family = AF_INET;
        rt.rt_flags = RTF_UP | RTF_GATEWAY;
        if (ioctl(s, SIOCADDRT, &rt) != 0) die("default route");
    }
    close(s);
}

/* /dev/vportNpM of the virtio-serial port called name, opened for writing. */
static int open_port(const char *name) {
    DIR *d = opendir("/sys/class/virtio-ports");
    if (!d) return -1;
    struct dirent *e;
    int fd = -1;
    while ((e = readdir(d)) && fd < 0) {
        if (e->d_name[0] == '.') continue;
        char path[512], got[256] = {0};
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
        int nf = open(path, O_RDONLY);
        if (nf < 0) continue;
        ssize_t n = read(nf, got, sizeof got - 1);
        close(nf);
        if (n > 0 && got[n - 1] == '\n') got[n - 1] = 0;
        if (!strcmp(got, name)) {
            snprintf(path, sizeof path, "/dev/%s", e->d_name);
            fd = open(path, O_WRONLY | O_CLOEXEC);
        }
    }
    closedir(d);
    return fd;
}

static long oom_kills(void) {
    char buf[8192];
    int fd = open("/proc/vmstat", O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *p = strstr(buf, "oom_kill ");
    return p ? strtol(p + 9, NULL, 10) : 0;
}

static void write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, text, strlen(text)) < 0) say("%s: %s", path, strerror(errno));
    if (fd >= 0) close(fd);
}

static void set_limit(int res, long v) {
    if (v < 0) return;
    struct rlimit rl = {(rlim_t)v, (rlim_t)v};
    if (setrlimit(res, &rl) != 0) die("setrlimit");
}

/* Copy both ways between a and b until both sides have closed. */
static void pump(int a, int b) {
    struct pollfd p[2] = {{.fd = a, .events = POLLIN}, {.fd = b, .events = POLLIN}};
    int open_in[2] = {1, 1};
    char buf[65536];
    while (open_in[0] || open_in[1]) {
        if (poll(p, 2, -1) < 0 && errno != EINTR) return;
        for (int i = 0; i < 2; i++) {
            if (!open_in[i] || !(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            ssize_t n = read(p[i].fd, buf, sizeof buf);
            if (n <= 0) {
                open_in[i] = 0;
                p[i].events = 0;
                p[i].fd = -1;
                shutdown(i ? a : b, SHUT_WR);
                continue;
            }
            for (ssize_t off = 0; off < n;) {
                ssize_t w = write(i ? a : b, buf + off, n - off);
                if (w <= 0) return;
                off += w;
            }
        }
    }
}

static int dial(const char *addr, int port) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, addr, &sa.sin_addr);
    if (s >= 0 && connect(s, (struct sockaddr *)&sa, sizeof sa) == 0) return s;
    if (s >= 0) close(s);
    return -1;
}

/* The relay of one forwarded port (a child of init, as nobody; see the header). */
static void relay(int port, int listen_port) {
    if (fork() != 0) return;
    signal(SIGCHLD, SIG_IGN); /* connection children reap themselves */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(listen_port)};
    if (bind(s, (struct sockaddr *)&sa, sizeof sa) || listen(s, 64)) {
        say("relay for port %d: %s", port, strerror(errno));
        _exit(1);
    }
    if (setgroups(0, NULL) || setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534)) _exit(1);
    for (;;) {
        int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) continue;
        if (fork() == 0) {
            close(s);
            int b = dial("127.0.0.1", port);
            if (b < 0) b = dial("10.0.2.15", port);
            if (b >= 0) pump(c, b);
            _exit(0);
        }
        close(c);
    }
}

/* clawpen's seccomp program for the bot (the sandbox tier's, compiled on the host by libseccomp):
 * the same refusals inside the guest as in the other tiers. None in the initramfs: no filter. */
static unsigned char bpf[1 << 18];
static ssize_t bpf_len = -1;

static void read_seccomp(void) { /* from the initramfs, before the switch of root */
    int fd = open("/clawpen/seccomp.bpf", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    ssize_t n;
    bpf_len = 0;
    while ((n = read(fd, bpf + bpf_len, sizeof bpf - bpf_len)) > 0) bpf_len += n;
    close(fd);
}

static void load_seccomp(void) {
    if (bpf_len < 0) return;
    if (bpf_len == 0 || bpf_len % sizeof(struct sock_filter)) {
        say("the seccomp program is malformed");
        _exit(125);
    }
    struct sock_fprog fprog = {.len = (unsigned short)(bpf_len / sizeof(struct sock_filter)),
                               .filter = (struct sock_filter *)bpf};
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog) != 0) {
        say("cannot load the seccomp filter: %s", strerror(errno));
        _exit(125);
    }
}

static pid_t run_bot(int outfd, int errport) {
    char *argv[MAXTOK], *envp[MAXTOK];
    int na = 0, ne = 0;
    EACH_ORDER(i) {
        if (!strcmp(tok[i], "arg")) argv[na++] = tok[i + 1];
        else if (!strcmp(tok[i], "env")) envp[ne++] = tok[i + 1];
    }
    argv[na] = NULL;
    envp[ne] = NULL;
    if (na == 0) {
        say("no command");
        halt();
    }
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid > 0) return pid;
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    setsid();
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0) dup2(null, 0);
    if (outfd >= 0) dup2(outfd, 1);
    if (errport >= 0) dup2(errport, 2);
    if (get("pids") || get("memory") || get("cgroup2")) write_file("/sys/fs/cgroup/bot/cgroup.procs", "0");
    set_limit(RLIMIT_NOFILE, getnum("nofile", -1));
    set_limit(RLIMIT_CORE, getnum("core", 0));
    set_limit(RLIMIT_FSIZE, getnum("fsize", -1));
    const char *cwd = get("cwd");
    if (!get("exec")) {
        gid_t gid = (gid_t)getnum("gid", 65534);
        uid_t uid = (uid_t)getnum("uid", 65534);
        if (setgroups(0, NULL) || setresgid(gid, gid, gid) || setresuid(uid, uid, uid)) {
            say("drop to uid %u: %s", uid, strerror(errno));
            _exit(125);
        }
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    }
    if (cwd && chdir(cwd) != 0) {
        say("chdir %s: %s", cwd, strerror(errno));
        _exit(125);
    }
    load_seccomp(); /* last: the filter also refuses what the steps above use */
    for (int i = 0; envp[i]; i++) putenv(envp[i]);
    extern char **environ;
    char *clean[MAXTOK];
    memcpy(clean, envp, sizeof(char *) * (ne + 1));
    environ = clean;
    execvp(argv[0], argv);
    say("cannot run %s: %s", argv[0], strerror(errno));
    _exit(errno == ENOENT ? 127 : 126);
}

int main(void) {
    mount("proc", "/proc", "proc", 0, NULL);
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    load_boot();
    read_seccomp();
    EACH_ORDER(i)
        if (!strcmp(tok[i], "mod")) insmod(tok[i + 1]);
    const char *root = get("root");
    if (!root) {
        say("no root share");
        halt();
    }
    mount9p(root, "/newroot", 1);
    EACH_ORDER(i) {
        char dest[4096];
        if (!strcmp(tok[i], "share") && i + 2 < ntok) {
            snprintf(dest, sizeof dest, "/newroot%s", tok[i + 2]);
            mount9p(tok[i + 1], dest, 0);
        } else if (!strcmp(tok[i], "tmpfs") && i + 3 < ntok) {
            char opts[128];
            snprintf(dest, sizeof dest, "/newroot%s", tok[i + 1]);
            snprintf(opts, sizeof opts, "size=%s,mode=%s", tok[i + 2], tok[i + 3]);
            if (mount("tmpfs", dest, "tmpfs", MS_NOSUID | MS_NODEV, opts) != 0) die(dest);
        }
    }
    umount2("/proc", MNT_DETACH);
    umount2("/sys", MNT_DETACH);
    umount2("/dev", MNT_DETACH);
    if (chdir("/newroot") || mount(".", "/", NULL, MS_MOVE, NULL) || chroot(".") || chdir("/"))
        die("switch root");
    /* hidepid: the bot sees its own processes, as in its pid namespace in the sandbox tier */
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, get("exec") ? NULL : "hidepid=invisible"))
        die("/proc");
    if (mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL)) die("/sys");
    if (mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, NULL)) die("/dev");
    mkdir("/dev/pts", 0755);
    mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "ptmxmode=0666,mode=0620");
    mkdir("/dev/shm", 01777);
    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=64m");
    if (get("pids") || get("memory") || get("cgroup2")) { /* the bot's limits, in a cgroup of its own */
        if (mount("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL))
            die("cgroup2");
        mkdir("/sys/fs/cgroup/bot", 0755);
        if (get("pids")) {
            write_file("/sys/fs/cgroup/cgroup.subtree_control", "+pids");
            write_file("/sys/fs/cgroup/bot/pids.max", get("pids"));
        }
        if (get("memory")) {
            write_file("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
            write_file("/sys/fs/cgroup/bot/memory.max", get("memory"));
        }
    }
    if (!get("exec")) /* as in the sandbox tier (bubblewrap's --disable-userns): no user namespaces */
        write_file("/proc/sys/user/max_user_namespaces", "0");
    const char *host = get("hostname");
    if (host) sethostname(host, strlen(host));
    net_up();
    int outport = open_port("org.clawpen.stdout");
    int errport = open_port("org.clawpen.stderr");
    int status = open_port("org.clawpen.status");
    if (errport >= 0) errfd = errport;

    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);

    struct pollfd pfd[9];
    int npfd = 0;
    pfd[npfd++] = (struct pollfd){.fd = sfd, .events = POLLIN};
    for (int i = 0; i < 8; i++) {
        char path[64];
        snprintf(path, sizeof path, "/dev/input/event%d", i);
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        if (fd >= 0) pfd[npfd++] = (struct pollfd){.fd = fd, .events = POLLIN};
    }
    EACH_ORDER(i)
        if (!strcmp(tok[i], "fwd") && i + 2 < ntok) relay(atoi(tok[i + 1]), atoi(tok[i + 2]));
    long ooms = oom_kills();
    pid_t bot = run_bot(outport, errport);
    if (status >= 0) {
        struct timespec up;
        clock_gettime(CLOCK_BOOTTIME, &up);
        dprintf(status, "started %ld.%03ld\n", (long)up.tv_sec, up.tv_nsec / 1000000);
    }
    int bot_status = -1;
    while (bot_status < 0) {
        if (poll(pfd, npfd, -1) < 0 && errno != EINTR) die("poll");
        for (int i = 1; i < npfd; i++) {
            struct input_event ev;
            while (read(pfd[i].fd, &ev, sizeof ev) == (ssize_t)sizeof ev)
                if (ev.type == EV_KEY && ev.code == KEY_POWER && ev.value == 1) kill(-bot, SIGTERM);
        }
        struct signalfd_siginfo si;
        while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
            if (si.ssi_signo != SIGCHLD) kill(-bot, (int)si.ssi_signo);
        }
        int st;
        pid_t p;
        while ((p = waitpid(-1, &st, WNOHANG)) > 0)
            if (p == bot) bot_status = st;
    }
    kill(-1, SIGKILL);
    while (waitpid(-1, NULL, 0) > 0) {
    }
    if (status >= 0) {
        if (WIFEXITED(bot_status))
            dprintf(status, "exit %d\n", WEXITSTATUS(bot_status));
        else
            dprintf(status, "signal %d%s\n", WTERMSIG(bot_status),
                    WTERMSIG(bot_status) == SIGKILL && oom_kills() > ooms ? " oom" : "");
        fsync(status);
    }
    halt();
    return 0;
}
