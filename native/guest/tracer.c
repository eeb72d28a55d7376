/*
 * rampack slim tracer: a static /init that runs a recipe's workload inside the
 * booted image and records every file the workload opens, executes or maps,
 * so that `rampack slim` can keep exactly those (src/slim/tracer.ts). It is a
 * helper init (src/boot/probe.ts): appended with its files in /.rampack-probe
 * to a copy of the built initramfs and started with rdinit=.
 *
 * How it sees files: fanotify (FAN_CLASS_NOTIF) with a mount mark on "/",
 * for FAN_OPEN | FAN_OPEN_EXEC | FAN_ONDIR. Every open() (the dynamic loader's
 * opens of the libraries it then mmaps included) and every execve() (the
 * program and its ELF interpreter) of the root filesystem is reported with an
 * fd, which /proc/self/fd/N names. This works on the initramfs root (rootfs,
 * tmpfs or ramfs) of Debian's stock 6.1 kernel: fanotify needs only
 * CONFIG_FANOTIFY, and a mount mark needs no filesystem support (inode marks,
 * fids and FAN_MARK_FILESYSTEM need an fsid, which ramfs lacks).
 * What it does not see: stat()/access() of a file never opened, and names
 * looked up that do not exist. In "missing" mode (the check of a slim image)
 * the workload also runs under ptrace, and every path a file syscall failed
 * on with ENOENT is reported: what a slim image lacks.
 *
 * Input: the plan the host puts in /.rampack-probe/ (guest.h lists the
 * files every helper init reads: the commands, the env, working directory
 * and user of the image they run with, the workload's files), and
 *   mode      "trace" or "missing"
 * Commands run one after the other. Output on the console:
 *   RAMPACK-SLIM ready
 *   RAMPACK-SLIM-RUN N exit=S          after command N (0-based)
 *   RAMPACK-SLIM-TRACE-BEGIN ... END   sorted paths opened (trace mode)
 *   RAMPACK-SLIM-MISSING-BEGIN ... END sorted paths not found (missing mode)
 *   RAMPACK-SLIM done
 * Paths are printed with bytes outside 0x21-0x7e and "\" as \xHH.
 *
 * Build: musl-gcc -static -O2 -Wall tracer.c -o init
 */
#define _GNU_SOURCE
#define GUEST_FAILURE "RAMPACK-SLIM error: "
#include "guest.h"

#include <elf.h>
#include <poll.h>
#include <stdint.h>
#include <sys/fanotify.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>

/* As pid 1, power off after the last line; a child that fails before its exec just exits. */
static void finish(void) {
    printf("RAMPACK-SLIM done\n");
    if (getpid() == 1) power_off();
    fflush(stdout);
    exit(0);
}

/* ---- a set of paths ----------------------------------------------------- */

typedef struct {
    char **slots;
    size_t count, capacity; /* capacity is a power of two; open addressing */
} path_set;

static uint64_t hash_text(const char *text) {
    uint64_t hash = 1469598103934665603ULL; /* FNV-1a */
    for (; *text; text++) hash = (hash ^ (unsigned char)*text) * 1099511628211ULL;
    return hash;
}

static void path_set_insert(path_set *set, char *path);

static void path_set_grow(path_set *set) {
    path_set old = *set;
    set->capacity = old.capacity ? old.capacity * 2 : 1024;
    set->slots = xrealloc(NULL, set->capacity * sizeof *set->slots);
    memset(set->slots, 0, set->capacity * sizeof *set->slots);
    set->count = 0;
    for (size_t i = 0; i < old.capacity; i++) if (old.slots[i]) path_set_insert(set, old.slots[i]);
    free(old.slots);
}

/* Takes ownership of path (freed when already present). */
static void path_set_insert(path_set *set, char *path) {
    if (2 * (set->count + 1) > set->capacity) path_set_grow(set);
    size_t mask = set->capacity - 1;
    for (size_t i = hash_text(path) & mask;; i = (i + 1) & mask) {
        if (!set->slots[i]) {
            set->slots[i] = path;
            set->count++;
            return;
        }
        if (strcmp(set->slots[i], path) == 0) {
            free(path);
            return;
        }
    }
}

static int compare_paths(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b); /* unsigned bytes: bytewise order */
}

static void print_escaped(const char *text) {
    for (; *text; text++) {
        unsigned char c = (unsigned char)*text;
        if (c <= 0x20 || c > 0x7e || c == '\\') printf("\\x%02x", c);
        else putchar(c);
    }
}

static void print_path_set(path_set *set, const char *name) {
    char **sorted = xrealloc(NULL, set->count * sizeof *sorted);
    size_t n = 0;
    for (size_t i = 0; i < set->capacity; i++) if (set->slots[i]) sorted[n++] = set->slots[i];
    qsort(sorted, n, sizeof *sorted, compare_paths);
    printf("\nRAMPACK-SLIM-%s-BEGIN\n", name);
    for (size_t i = 0; i < n; i++) {
        print_escaped(sorted[i]);
        putchar('\n');
    }
    printf("RAMPACK-SLIM-%s-END\n", name);
    free(sorted);
}

/* ---- missing mode: ENOENT results of file syscalls, seen through ptrace --- */

#if defined(__x86_64__)
#include <sys/user.h>
typedef struct user_regs_struct registers;
#define SYSCALL_NUMBER(r) ((long)(r).orig_rax)
#define SYSCALL_ARG(r, i) ((i) == 0 ? (r).rdi : (i) == 1 ? (r).rsi : (r).rdx)
#define SYSCALL_RESULT(r) ((long)(r).rax)
#elif defined(__aarch64__)
#include <asm/ptrace.h>
typedef struct user_pt_regs registers;
#define SYSCALL_NUMBER(r) ((long)(r).regs[8])
#define SYSCALL_ARG(r, i) ((r).regs[i])
#define SYSCALL_RESULT(r) ((long)(r).regs[0])
#else
#error "the tracer supports x86_64 and aarch64"
#endif

/* Which argument of a file syscall is the path (-1: not a file syscall). */
static int path_argument(long number) {
    switch (number) {
#ifdef SYS_open
    case SYS_open: case SYS_stat: case SYS_lstat: case SYS_access: case SYS_readlink:
        return 0;
#endif
    case SYS_execve: case SYS_truncate: case SYS_statfs:
        return 0;
    case SYS_openat: case SYS_newfstatat: case SYS_faccessat: case SYS_readlinkat: case SYS_execveat:
#ifdef SYS_statx
    case SYS_statx:
#endif
#ifdef SYS_faccessat2
    case SYS_faccessat2:
#endif
#ifdef SYS_openat2
    case SYS_openat2:
#endif
        return 1;
    default:
        return -1;
    }
}

static int get_registers(pid_t pid, registers *regs) {
    struct iovec io = {regs, sizeof *regs};
    return ptrace(PTRACE_GETREGSET, pid, (void *)NT_PRSTATUS, &io) == 0 ? 0 : -1;
}

/* A NUL-terminated string of the tracee, as an absolute path when it can be made one. */
static char *tracee_path(pid_t pid, unsigned long address, int dirfd) {
    char text[4096];
    struct iovec local = {text, sizeof text - 1}, remote = {(void *)address, sizeof text - 1};
    ssize_t got = process_vm_readv(pid, &local, 1, &remote, 1, 0);
    if (got <= 0) return NULL;
    text[got] = '\0';
    if (text[0] == '\0') return NULL;
    char base[4096] = "";
    if (text[0] != '/') {
        char link[64];
        if (dirfd == AT_FDCWD) snprintf(link, sizeof link, "/proc/%d/cwd", (int)pid);
        else snprintf(link, sizeof link, "/proc/%d/fd/%d", (int)pid, dirfd);
        ssize_t length = readlink(link, base, sizeof base - 1);
        if (length < 0) return NULL;
        base[length] = '\0';
    }
    char *path = xrealloc(NULL, strlen(base) + strlen(text) + 2);
    sprintf(path, "%s%s%s", base, base[0] && strcmp(base, "/") ? "/" : "", text);
    return path;
}

typedef struct {
    pid_t pid;
    int in_syscall;
    long number;
    unsigned long path_address;
    int dirfd;
} tracee;

static tracee *tracees;
static size_t tracee_count;

static tracee *tracee_of(pid_t pid) {
    for (size_t i = 0; i < tracee_count; i++) if (tracees[i].pid == pid) return &tracees[i];
    tracees = xrealloc(tracees, (tracee_count + 1) * sizeof *tracees);
    tracees[tracee_count] = (tracee){pid, 0, -1, 0, AT_FDCWD};
    return &tracees[tracee_count++];
}

static void on_syscall_stop(pid_t pid, path_set *missing) {
    registers regs;
    if (get_registers(pid, &regs) != 0) return;
    tracee *t = tracee_of(pid);
    t->in_syscall = !t->in_syscall;
    if (t->in_syscall) {
        t->number = SYSCALL_NUMBER(regs);
        int argument = path_argument(t->number);
        t->path_address = argument < 0 ? 0 : SYSCALL_ARG(regs, argument);
        t->dirfd = argument == 1 ? (int)SYSCALL_ARG(regs, 0) : AT_FDCWD;
        return;
    }
    if (t->path_address != 0 && SYSCALL_RESULT(regs) == -ENOENT) {
        char *path = tracee_path(pid, t->path_address, t->dirfd);
        if (path) path_set_insert(missing, path);
    }
    t->path_address = 0;
}

/* Runs the traced child to its end, collecting ENOENT paths; returns its wait status. */
static int trace_missing(pid_t child, path_set *missing) {
    int status;
    if (waitpid(child, &status, __WALL) < 0) fail("waitpid: %s", strerror(errno));
    if (!WIFSTOPPED(status)) return status; /* it never got as far as its stop */
    long options = PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK | PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXEC | PTRACE_O_EXITKILL;
    if (ptrace(PTRACE_SETOPTIONS, child, 0, (void *)options) != 0) fail("ptrace: %s", strerror(errno));
    ptrace(PTRACE_SYSCALL, child, 0, 0);
    int child_status = 0;
    for (;;) {
        pid_t pid = waitpid(-1, &status, __WALL);
        if (pid < 0) {
            if (errno == EINTR) continue;
            break; /* no tracee left */
        }
        if (WIFEXITED(status) || WIFSIGNALED(status)) {
            if (pid == child) child_status = status;
            tracee_of(pid)->pid = -1;
            continue;
        }
        int signal = 0;
        if (WSTOPSIG(status) == (SIGTRAP | 0x80)) on_syscall_stop(pid, missing);
        /* Event stops (fork, exec...) come between a syscall's entry and exit stops: they change nothing. */
        else if (status >> 16 == 0 && WSTOPSIG(status) != SIGSTOP && WSTOPSIG(status) != SIGTRAP) signal = WSTOPSIG(status);
        ptrace(PTRACE_SYSCALL, pid, 0, (void *)(long)signal);
    }
    return child_status;
}

/* ---- trace mode: fanotify ----------------------------------------------- */

/* Reads the pending events, naming each event's fd through /proc/self/fd. */
static void read_events(int fanotify, path_set *opened) {
    char buffer[16384] __attribute__((aligned(__alignof__(struct fanotify_event_metadata))));
    for (;;) {
        ssize_t length = read(fanotify, buffer, sizeof buffer);
        if (length < 0 && errno == EINTR) continue;
        if (length <= 0) return; /* EAGAIN: drained */
        struct fanotify_event_metadata *event = (struct fanotify_event_metadata *)buffer;
        for (; FAN_EVENT_OK(event, length); event = FAN_EVENT_NEXT(event, length)) {
            if (event->mask & FAN_Q_OVERFLOW) fail("fanotify queue overflowed: the trace would be incomplete");
            if (event->fd < 0) continue;
            char link[64], path[4096];
            snprintf(link, sizeof link, "/proc/self/fd/%d", event->fd);
            ssize_t got = readlink(link, path, sizeof path - 1);
            close(event->fd);
            if (got <= 0 || event->pid == getpid()) continue;
            path[got] = '\0';
            path_set_insert(opened, xstrdup(path));
        }
    }
}

static int start_fanotify(void) {
    int fanotify = fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE, O_RDONLY | O_LARGEFILE | O_CLOEXEC);
    if (fanotify < 0) fail("fanotify_init: %s (the kernel needs CONFIG_FANOTIFY)", strerror(errno));
    uint64_t mask = FAN_OPEN | FAN_OPEN_EXEC | FAN_ONDIR;
    if (fanotify_mark(fanotify, FAN_MARK_ADD | FAN_MARK_MOUNT, mask, AT_FDCWD, "/") != 0) {
        fail("fanotify_mark on /: %s", strerror(errno));
    }
    return fanotify;
}

/* Waits for the child while draining events (the queue would otherwise hold an fd per event). */
static int wait_draining(pid_t child, int fanotify, path_set *opened) {
    int status;
    for (;;) {
        struct pollfd poller = {fanotify, POLLIN, 0};
        poll(&poller, 1, 50);
        read_events(fanotify, opened);
        pid_t done = waitpid(child, &status, WNOHANG);
        if (done == child) return status;
        if (done < 0 && errno != EINTR) fail("waitpid: %s", strerror(errno));
    }
}

/* ---- start -------------------------------------------------------------- */

static pid_t start_command(char **argv, const image_settings *image, int traced) {
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) fail("fork: %s", strerror(errno));
    if (child > 0) return child;
    if (traced) {
        /* Stopped before anything else, so the parent's ptrace options hold for all of it. */
        ptrace(PTRACE_TRACEME, 0, 0, 0);
        raise(SIGSTOP);
    }
    exec_in_image(argv, image);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    mount_pseudo_filesystems();
    if (loopback_up() != 0) fail("cannot bring loopback up: %s", strerror(errno));
    image_settings image = read_image_settings();
    size_t count;
    command *commands = read_commands(&count);
    const char *mode = read_plan("mode", NULL);
    if (strcmp(mode, "trace") != 0 && strcmp(mode, "missing") != 0) fail("the plan's mode is \"%s\", not \"trace\" or \"missing\"", mode);
    int missing_mode = strcmp(mode, "missing") == 0;
    path_set paths = {0};
    /* Marked last: nothing the tracer itself opened is in the trace. */
    int fanotify = missing_mode ? -1 : start_fanotify();
    printf("RAMPACK-SLIM ready\n");
    for (size_t i = 0; i < count; i++) {
        pid_t child = start_command(commands[i].argv, &image, missing_mode);
        int status = missing_mode ? trace_missing(child, &paths) : wait_draining(child, fanotify, &paths);
        /* On a line of its own even after output without a final newline. */
        printf("\nRAMPACK-SLIM-RUN %zu exit=%d\n", i, shell_status(status));
        /* Servers a command left behind must not run into the next command or the listing. */
        end_leftovers();
    }
    if (!missing_mode) read_events(fanotify, &paths);
    print_path_set(&paths, missing_mode ? "MISSING" : "TRACE");
    finish();
    return 0;
}
