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
 * Input, in /.rampack-probe (the helper's directory):
 *   commands  for each command, its argument count as decimal digits and
 *             NUL, then that many NUL-terminated arguments
 *   mode      "trace" (default) or "missing"
 *   workload/ the workload's files, if any
 * Commands run one after the other with the env, working directory and user
 * of /etc/rampack/image.json. Output on the console:
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
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define IMAGE_JSON "/etc/rampack/image.json"
#define HELPER_DIR "/.rampack-probe"
#define COMMANDS_FILE HELPER_DIR "/commands"
#define MODE_FILE HELPER_DIR "/mode"
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* ---- ending: as pid 1, power off ---------------------------------------- */

static void finish(void) {
    printf("RAMPACK-SLIM done\n");
    fflush(stdout);
    tcdrain(STDOUT_FILENO); /* let the serial line empty before the VM powers off */
    sync();
    if (getpid() == 1) {
        reboot(RB_POWER_OFF);
        for (;;) pause();
    }
    exit(0);
}

static void fail(const char *format, ...) {
    va_list args;
    fflush(stdout);
    printf("RAMPACK-SLIM error: ");
    va_start(args, format);
    vprintf(format, args);
    va_end(args);
    printf("\n");
    finish();
}

static void *xrealloc(void *memory, size_t size) {
    memory = realloc(memory, size ? size : 1);
    if (!memory) fail("out of memory");
    return memory;
}

static char *xstrdup(const char *text) {
    char *copy = strdup(text);
    if (!copy) fail("out of memory");
    return copy;
}

/* Reads a whole file, NUL-terminated; NULL if it cannot be opened. */
static char *read_file(const char *path, size_t *length) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    size_t capacity = 4096, used = 0;
    char *buffer = xrealloc(NULL, capacity);
    for (;;) {
        if (used + 1 >= capacity) buffer = xrealloc(buffer, capacity *= 2);
        ssize_t got = read(fd, buffer + used, capacity - used - 1);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) fail("read %s: %s", path, strerror(errno));
        if (got == 0) break;
        used += (size_t)got;
    }
    close(fd);
    buffer[used] = '\0';
    if (length) *length = used;
    return buffer;
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

/* ---- image.json: just enough JSON to read env, workingDir and user ------ */

typedef struct {
    const char *at;
} json_cursor;

static void json_skip_space(json_cursor *json) {
    while (*json->at == ' ' || *json->at == '\t' || *json->at == '\n' || *json->at == '\r') json->at++;
}

static void json_expect(json_cursor *json, char c) {
    json_skip_space(json);
    if (*json->at != c) fail("%s: expected '%c' near \"%.20s\"", IMAGE_JSON, c, json->at);
    json->at++;
}

static int json_accept(json_cursor *json, char c) {
    json_skip_space(json);
    if (*json->at != c) return 0;
    json->at++;
    return 1;
}

static unsigned json_hex4(json_cursor *json) {
    unsigned value = 0;
    for (int i = 0; i < 4; i++) {
        char c = *json->at++;
        int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (digit < 0) fail("%s: bad \\u escape", IMAGE_JSON);
        value = value * 16 + (unsigned)digit;
    }
    return value;
}

static char *put_utf8(char *out, unsigned code) {
    if (code < 0x80) {
        *out++ = (char)code;
    } else if (code < 0x800) {
        *out++ = (char)(0xc0 | code >> 6);
        *out++ = (char)(0x80 | (code & 0x3f));
    } else if (code < 0x10000) {
        *out++ = (char)(0xe0 | code >> 12);
        *out++ = (char)(0x80 | (code >> 6 & 0x3f));
        *out++ = (char)(0x80 | (code & 0x3f));
    } else {
        *out++ = (char)(0xf0 | code >> 18);
        *out++ = (char)(0x80 | (code >> 12 & 0x3f));
        *out++ = (char)(0x80 | (code >> 6 & 0x3f));
        *out++ = (char)(0x80 | (code & 0x3f));
    }
    return out;
}

/* A string; the decoded form is never longer than the escaped one. */
static char *json_string(json_cursor *json) {
    json_expect(json, '"');
    char *result = xrealloc(NULL, strlen(json->at) + 1), *out = result;
    for (;;) {
        char c = *json->at++;
        if (c == '\0') fail("%s: unterminated string", IMAGE_JSON);
        if (c == '"') break;
        if (c != '\\') {
            *out++ = c;
            continue;
        }
        char escape = *json->at++;
        switch (escape) {
        case '"': case '\\': case '/': *out++ = escape; break;
        case 'b': *out++ = '\b'; break;
        case 'f': *out++ = '\f'; break;
        case 'n': *out++ = '\n'; break;
        case 'r': *out++ = '\r'; break;
        case 't': *out++ = '\t'; break;
        case 'u': {
            unsigned code = json_hex4(json);
            if (code >= 0xd800 && code < 0xdc00 && json->at[0] == '\\' && json->at[1] == 'u') {
                json->at += 2;
                code = 0x10000 + ((code - 0xd800) << 10) + (json_hex4(json) - 0xdc00);
            }
            out = put_utf8(out, code);
            break;
        }
        default: fail("%s: bad escape \\%c", IMAGE_JSON, escape);
        }
    }
    *out = '\0';
    return result;
}

static void json_skip_value(json_cursor *json) {
    json_skip_space(json);
    char c = *json->at;
    if (c == '"') {
        free(json_string(json));
    } else if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        json->at++;
        if (json_accept(json, close)) return;
        do {
            if (c == '{') {
                free(json_string(json));
                json_expect(json, ':');
            }
            json_skip_value(json);
        } while (json_accept(json, ','));
        json_expect(json, close);
    } else {
        const char *start = json->at; /* number, true, false or null */
        while (*json->at && strchr(",]} \t\r\n", *json->at) == NULL) json->at++;
        if (json->at == start) fail("%s: expected a value near \"%.20s\"", IMAGE_JSON, start);
    }
}

static char **json_string_array(json_cursor *json) {
    size_t count = 0;
    char **items = xrealloc(NULL, sizeof *items);
    json_expect(json, '[');
    if (!json_accept(json, ']')) {
        do {
            items = xrealloc(items, (count + 2) * sizeof *items);
            items[count++] = json_string(json);
        } while (json_accept(json, ','));
        json_expect(json, ']');
    }
    items[count] = NULL;
    return items;
}

typedef struct {
    char **env;
    char *working_dir;
    char *user;
} image_config;

static image_config read_image_config(void) {
    image_config config = {0};
    char *text = read_file(IMAGE_JSON, NULL);
    if (!text) fail("cannot read %s: %s", IMAGE_JSON, strerror(errno));
    json_cursor json = {text};
    json_expect(&json, '{');
    if (!json_accept(&json, '}')) {
        do {
            char *key = json_string(&json);
            json_expect(&json, ':');
            if (strcmp(key, "env") == 0) config.env = json_string_array(&json);
            else if (strcmp(key, "workingDir") == 0) config.working_dir = json_string(&json);
            else if (strcmp(key, "user") == 0) config.user = json_string(&json);
            else json_skip_value(&json);
            free(key);
        } while (json_accept(&json, ','));
        json_expect(&json, '}');
    }
    free(text);
    return config;
}

/* ---- the image's user: "name", "uid", "name:group" or "uid:gid" --------- */

typedef struct {
    uid_t uid;
    gid_t gid;
} identity;

/* The numeric id of `name` in an /etc/passwd-like file (field 3 or 4), or -1. */
static long lookup_id(const char *file, const char *name, int field) {
    char *text = read_file(file, NULL);
    if (!text) return -1;
    long found = -1;
    for (char *line = strtok(text, "\n"); line && found < 0; line = strtok(NULL, "\n")) {
        char *fields[4] = {0};
        char *rest = line;
        for (int i = 0; i < 4 && rest; i++) fields[i] = strsep(&rest, ":");
        if (fields[0] && strcmp(fields[0], name) == 0 && fields[field - 1]) found = strtol(fields[field - 1], NULL, 10);
    }
    free(text);
    return found;
}

static int is_number(const char *text) {
    if (!*text) return 0;
    for (; *text; text++) if (*text < '0' || *text > '9') return 0;
    return 1;
}

static identity resolve_user(const char *user) {
    identity id = {0, 0};
    if (!user || !*user) return id;
    char *copy = xstrdup(user), *group = strchr(copy, ':');
    if (group) *group++ = '\0';
    long uid = is_number(copy) ? strtol(copy, NULL, 10) : lookup_id("/etc/passwd", copy, 3);
    if (uid < 0) fail("user %s is not in /etc/passwd", copy);
    long gid = 0;
    if (group) gid = is_number(group) ? strtol(group, NULL, 10) : lookup_id("/etc/group", group, 3);
    else if (!is_number(copy)) gid = lookup_id("/etc/passwd", copy, 4);
    if (gid < 0) fail("group of user %s is not known", user);
    id.uid = (uid_t)uid;
    id.gid = (gid_t)gid;
    free(copy);
    return id;
}

/* ---- commands ----------------------------------------------------------- */

typedef struct {
    char **argv; /* NULL-terminated */
} command;

/* COMMANDS_FILE: count NUL, then count NUL-terminated arguments, repeated. */
static command *read_commands(size_t *count) {
    size_t length;
    char *text = read_file(COMMANDS_FILE, &length);
    if (!text) fail("cannot read %s: %s", COMMANDS_FILE, strerror(errno));
    command *commands = NULL;
    size_t n = 0;
    char *at = text, *end = text + length;
    while (at < end) {
        long argc = strtol(at, NULL, 10);
        at += strlen(at) + 1;
        if (argc < 1) fail("%s: command %zu has no arguments", COMMANDS_FILE, n);
        commands = xrealloc(commands, (n + 1) * sizeof *commands);
        commands[n].argv = xrealloc(NULL, (size_t)(argc + 1) * sizeof(char *));
        for (long i = 0; i < argc; i++) {
            if (at >= end) fail("%s: command %zu is cut short", COMMANDS_FILE, n);
            commands[n].argv[i] = at;
            at += strlen(at) + 1;
        }
        commands[n].argv[argc] = NULL;
        n++;
    }
    *count = n;
    return commands;
}

static const char *env_lookup(char **env, const char *name) {
    size_t length = strlen(name);
    for (; env && *env; env++) {
        if (strncmp(*env, name, length) == 0 && (*env)[length] == '=') return *env + length + 1;
    }
    return NULL;
}

/* Like execvp, with the image's PATH; the lookup is what a shell would do, so it runs in the child. */
static void exec_in_path(char **argv, char **env) {
    const char *name = argv[0];
    if (strchr(name, '/')) {
        execve(name, argv, env);
        return;
    }
    const char *search = env_lookup(env, "PATH");
    char *paths = xstrdup(search ? search : DEFAULT_PATH), *rest = paths, *directory;
    int saved = ENOENT;
    while ((directory = strsep(&rest, ":")) != NULL) {
        char candidate[4096];
        snprintf(candidate, sizeof candidate, "%s/%s", *directory ? directory : ".", name);
        execve(candidate, argv, env);
        if (errno != ENOENT && errno != ENOTDIR) saved = errno;
    }
    errno = saved;
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

/* Mounts a pseudo filesystem the workload expects; an existing mount is fine. */
static void mount_pseudo(const char *type, const char *target) {
    if (mkdir(target, 0755) != 0 && errno != EEXIST) fail("mkdir %s: %s", target, strerror(errno));
    if (mount(type, target, type, 0, NULL) != 0 && errno != EBUSY) fail("mount %s on %s: %s", type, target, strerror(errno));
}

/* Loopback up, so that workloads can serve and fetch on 127.0.0.1. */
static void loopback_up(void) {
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0) fail("socket: %s", strerror(errno));
    struct ifreq request = {0};
    strcpy(request.ifr_name, "lo");
    if (ioctl(sock, SIOCGIFFLAGS, &request) != 0) fail("SIOCGIFFLAGS lo: %s", strerror(errno));
    request.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(sock, SIOCSIFFLAGS, &request) != 0) fail("SIOCSIFFLAGS lo: %s", strerror(errno));
    close(sock);
}

static pid_t start_command(char **argv, const image_config *config, identity user, int traced) {
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) fail("fork: %s", strerror(errno));
    if (child > 0) return child;
    char *empty[] = {NULL};
    char **env = config->env ? config->env : empty;
    const char *directory = config->working_dir && *config->working_dir ? config->working_dir : "/";
    if (traced) {
        /* Stopped before anything else, so the parent's ptrace options hold for all of it. */
        ptrace(PTRACE_TRACEME, 0, 0, 0);
        raise(SIGSTOP);
    }
    if (setgroups(0, NULL) != 0 || setgid(user.gid) != 0 || setuid(user.uid) != 0) {
        printf("RAMPACK-SLIM error: cannot become %u:%u: %s\n", (unsigned)user.uid, (unsigned)user.gid, strerror(errno));
        _exit(126);
    }
    if (chdir(directory) != 0) {
        printf("RAMPACK-SLIM error: chdir %s: %s\n", directory, strerror(errno));
        _exit(126);
    }
    exec_in_path(argv, env);
    printf("RAMPACK-SLIM error: exec %s: %s\n", argv[0], strerror(errno));
    fflush(stdout);
    _exit(127);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    mount_pseudo("proc", "/proc");
    mount_pseudo("sysfs", "/sys");
    mount_pseudo("devtmpfs", "/dev");
    loopback_up();
    /* The workload's files are read as the image's user, who may not be root. */
    chmod(HELPER_DIR, 0755);
    image_config config = read_image_config();
    identity user = resolve_user(config.user);
    size_t count;
    command *commands = read_commands(&count);
    char *mode_text = read_file(MODE_FILE, NULL);
    int missing_mode = mode_text && strncmp(mode_text, "missing", 7) == 0;
    path_set paths = {0};
    /* Marked last: nothing the tracer itself opened is in the trace. */
    int fanotify = missing_mode ? -1 : start_fanotify();
    printf("RAMPACK-SLIM ready\n");
    for (size_t i = 0; i < count; i++) {
        pid_t child = start_command(commands[i].argv, &config, user, missing_mode);
        int status = missing_mode ? trace_missing(child, &paths) : wait_draining(child, fanotify, &paths);
        /* On a line of its own even after output without a final newline. Like a shell: a signal shows as 128 + its number. */
        printf("\nRAMPACK-SLIM-RUN %zu exit=%d\n", i, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
        /* Servers a command left behind must not run into the next command or the listing. */
        kill(-1, SIGKILL);
        while (waitpid(-1, NULL, __WALL) > 0) {}
    }
    if (!missing_mode) read_events(fanotify, &paths);
    print_path_set(&paths, missing_mode ? "MISSING" : "TRACE");
    finish();
    return 0;
}
