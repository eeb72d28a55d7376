/*
 * What rampack's helper inits share: probe.c (`verify --boot`) and tracer.c
 * (`rampack slim`). Each is one static program that the host appends to a
 * copy of a built initramfs and starts with rdinit= as pid 1 of the VM
 * (src/boot/probe.ts); it runs commands inside the image the way the image's
 * agent would, and reports on the serial console.
 *
 * The host prepares the plan in /.rampack-probe/, next to the program: files
 * of NUL-terminated strings (any byte but NUL passes through), so no helper
 * init parses JSON:
 *   commands  for each command, its argument count in decimal, then that
 *             many arguments (src/boot/probe.ts encodeCommands)
 *   env       the image's environment           \  from the image's
 *   cwd       its working directory              } /etc/rampack/image.json,
 *   user      "", "uid", "uid:gid", "name" or    /  read on the host
 *             "name:group"
 *   workload/ files the commands use, if any
 * and what the program alone reads (the probe's headroom, the tracer's mode).
 *
 * A program defines GUEST_FAILURE (the prefix of its failure lines on the
 * console) before including this file, and static void finish(void), how it
 * ends (as pid 1: power_off()), which fail() calls. The programs are built
 * with one compiler call each; the binary's cache key covers every file of
 * this folder (src/boot/probe.ts compileHelperInit).
 */
#ifndef RAMPACK_GUEST_H
#define RAMPACK_GUEST_H

#ifndef _GNU_SOURCE
#error "define _GNU_SOURCE before any #include (guest.h uses strsep, __WALL)"
#endif
#ifndef GUEST_FAILURE
#error "define GUEST_FAILURE, the console prefix of the program's failure lines, before including guest.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <net/if.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define PLAN_DIR "/.rampack-probe/"
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* ---- ending: as pid 1 a program must never return ------------------------ */

/* Defined by the program: how it ends. */
static void finish(void) __attribute__((noreturn));

static void power_off(void) __attribute__((noreturn));
static void power_off(void) {
    fflush(stdout);
    tcdrain(STDOUT_FILENO); /* let the serial line empty before the VM stops */
    sync();
    reboot(RB_POWER_OFF);
    for (;;) pause();
}

static void report_failure(const char *format, va_list args) {
    fflush(stdout);
    fputs(GUEST_FAILURE, stdout);
    vprintf(format, args);
    printf("\n");
    fflush(stdout);
}

/* Reports a failure on the console and ends the program. */
static void fail(const char *format, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fail(const char *format, ...) {
    va_list args;
    va_start(args, format);
    report_failure(format, args);
    va_end(args);
    finish();
}

/* In a child that was to become a command: reports why it cannot, and exits as a shell would (126, 127). */
static void child_fails(int status, const char *format, ...) __attribute__((noreturn, format(printf, 2, 3)));
static void child_fails(int status, const char *format, ...) {
    va_list args;
    va_start(args, format);
    report_failure(format, args);
    va_end(args);
    _exit(status);
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

/* A whole file followed by two NULs (a list of NUL-terminated strings ends with an empty one); NULL when it cannot be opened. */
static char *read_file(const char *path, size_t *length) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    size_t capacity = 4096, used = 0;
    char *buffer = xrealloc(NULL, capacity);
    for (;;) {
        if (used + 2 >= capacity) buffer = xrealloc(buffer, capacity *= 2);
        ssize_t got = read(fd, buffer + used, capacity - used - 2);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) fail("read %s: %s", path, strerror(errno));
        if (got == 0) break;
        used += (size_t)got;
    }
    close(fd);
    buffer[used] = buffer[used + 1] = '\0';
    if (length) *length = used;
    return buffer;
}

/* ---- the plan ------------------------------------------------------------- */

/* A plan file; the host writes them all, so a missing one is a failure. */
static char *read_plan(const char *name, size_t *length) {
    char path[256];
    snprintf(path, sizeof path, PLAN_DIR "%s", name);
    char *text = read_file(path, length);
    if (!text) fail("cannot read the plan file %s: %s", path, strerror(errno));
    return text;
}

/* The NUL-terminated strings of a plan file, as a NULL-terminated array. */
static char **plan_list(const char *name) {
    size_t length;
    char *text = read_plan(name, &length);
    size_t count = 0;
    for (size_t i = 0; i < length; i++) count += text[i] == '\0';
    char **items = xrealloc(NULL, (count + 1) * sizeof *items);
    char *at = text;
    for (size_t i = 0; i < count; i++, at += strlen(at) + 1) items[i] = at;
    items[count] = NULL;
    return items;
}

typedef struct {
    char **argv; /* NULL-terminated */
} command;

/* The plan's commands, in order. */
static command *read_commands(size_t *count) {
    size_t length;
    char *text = read_plan("commands", &length);
    command *commands = NULL;
    size_t n = 0;
    for (char *at = text, *end = text + length; at < end; n++) {
        long argc = strtol(at, NULL, 10);
        at += strlen(at) + 1;
        if (argc < 1) fail("the plan's command %zu has no arguments", n);
        commands = xrealloc(commands, (n + 1) * sizeof *commands);
        commands[n].argv = xrealloc(NULL, (size_t)(argc + 1) * sizeof(char *));
        for (long i = 0; i < argc; i++) {
            if (at >= end) fail("the plan's command %zu is cut short", n);
            commands[n].argv[i] = at;
            at += strlen(at) + 1;
        }
        commands[n].argv[argc] = NULL;
    }
    *count = n;
    return commands;
}

/* ---- the image's settings: env, working directory, user ------------------- */

typedef struct {
    uid_t uid;
    gid_t gid;
} identity;

typedef struct {
    char **env;
    const char *cwd; /* "" leaves the init's own, "/" */
    identity user;
} image_settings;

static int all_digits(const char *text) {
    if (!*text) return 0;
    for (; *text; text++) if (*text < '0' || *text > '9') return 0;
    return 1;
}

/*
 * Field `field` (3: the uid or gid, 4: a user's primary group) of the line
 * of `name` in an /etc/passwd-style file, or -1. Parsed here: a static libc's
 * getpwnam needs NSS libraries the image may not have.
 */
static long lookup_id(const char *file, const char *name, int field) {
    char *text = read_file(file, NULL);
    if (!text) return -1;
    long found = -1;
    for (char *line = strtok(text, "\n"); line && found < 0; line = strtok(NULL, "\n")) {
        char *fields[4] = {0};
        char *rest = line;
        for (int i = 0; i < 4 && rest; i++) fields[i] = strsep(&rest, ":");
        if (strcmp(fields[0], name) == 0 && fields[field - 1]) found = strtol(fields[field - 1], NULL, 10);
    }
    free(text);
    return found;
}

/* A number as it is, a name looked up in the image's `file` ("user" in /etc/passwd, "group" in /etc/group). */
static long id_of(const char *text, const char *what, const char *file) {
    long id = all_digits(text) ? strtol(text, NULL, 10) : lookup_id(file, text, 3);
    if (id < 0) fail("%s %s is not in the image's %s", what, text, file);
    return id;
}

/* The image's user as OCI runtimes resolve it: uid, then gid (a named user's primary group unless a group is named). */
static identity resolve_user(const char *user) {
    identity id = {0, 0};
    if (!*user) return id;
    char *name = xstrdup(user), *group = strchr(name, ':');
    if (group) *group++ = '\0';
    id.uid = (uid_t)id_of(name, "user", "/etc/passwd");
    if (group) {
        id.gid = (gid_t)id_of(group, "group", "/etc/group");
    } else if (!all_digits(name)) {
        long primary = lookup_id("/etc/passwd", name, 4);
        id.gid = primary < 0 ? 0 : (gid_t)primary;
    }
    free(name);
    return id;
}

/* The plan's env, working directory and user, the user resolved in the image. */
static image_settings read_image_settings(void) {
    /* The plan's files (the workload's among them) are read as the image's user, who may not be root. */
    chmod(PLAN_DIR, 0755);
    image_settings image = {plan_list("env"), read_plan("cwd", NULL), resolve_user(read_plan("user", NULL))};
    return image;
}

/* ---- running a command in the image ---------------------------------------- */

static const char *env_lookup(char **env, const char *name) {
    size_t length = strlen(name);
    for (; *env; env++) {
        if (strncmp(*env, name, length) == 0 && (*env)[length] == '=') return *env + length + 1;
    }
    return NULL;
}

/* execvp with `search` as PATH: returns only when nothing could run, errno saying why. */
static void exec_in_path(char **argv, char **env, const char *search) {
    if (strchr(argv[0], '/')) {
        execve(argv[0], argv, env);
        return;
    }
    char *paths = xstrdup(search), *rest = paths, *directory;
    int saved = ENOENT;
    while ((directory = strsep(&rest, ":")) != NULL) {
        char candidate[4096];
        snprintf(candidate, sizeof candidate, "%s/%s", *directory ? directory : ".", argv[0]);
        execve(candidate, argv, env);
        if (errno != ENOENT && errno != ENOTDIR) saved = errno; /* e.g. EACCES: the most telling error */
    }
    free(paths);
    errno = saved;
}

/*
 * In a forked child: enters the image's working directory (as root first, as
 * runc does), becomes its user and runs argv with its env, the program found
 * in the image's PATH. Never returns.
 */
static void exec_in_image(char **argv, const image_settings *image) __attribute__((noreturn));
static void exec_in_image(char **argv, const image_settings *image) {
    if (*image->cwd && chdir(image->cwd) != 0) child_fails(126, "chdir %s: %s", image->cwd, strerror(errno));
    if (setgroups(0, NULL) != 0 || setgid(image->user.gid) != 0 || setuid(image->user.uid) != 0) {
        child_fails(126, "cannot become %u:%u: %s", (unsigned)image->user.uid, (unsigned)image->user.gid, strerror(errno));
    }
    const char *search = env_lookup(image->env, "PATH");
    if (!search) search = DEFAULT_PATH;
    exec_in_path(argv, image->env, search);
    child_fails(127, "cannot run %s: %s (PATH=%s)", argv[0], strerror(errno), search);
}

/* A command's wait status as a shell shows it: its exit code, or 128 + the signal that ended it. */
static int shell_status(int status) {
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Ends what a command left running (a server), so that it cannot run into what comes next. */
static void end_leftovers(void) {
    kill(-1, SIGKILL);
    while (waitpid(-1, NULL, __WALL) > 0) {}
}

/* ---- the system the commands expect ---------------------------------------- */

/* Mounts a pseudo filesystem; an existing mount is fine. */
static void mount_pseudo(const char *type, const char *target) {
    if (mkdir(target, 0755) != 0 && errno != EEXIST) fail("mkdir %s: %s", target, strerror(errno));
    if (mount(type, target, type, 0, NULL) != 0 && errno != EBUSY) fail("mount %s on %s: %s", type, target, strerror(errno));
}

static void mount_pseudo_filesystems(void) {
    mount_pseudo("proc", "/proc");
    mount_pseudo("sysfs", "/sys");
    mount_pseudo("devtmpfs", "/dev");
}

/* Loopback up, as an agent would have it: workloads serve and fetch on 127.0.0.1. Returns 0, or -1 with errno set. */
static int loopback_up(void) {
    struct ifreq request = {0};
    strcpy(request.ifr_name, "lo");
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0) return -1;
    int up = ioctl(sock, SIOCGIFFLAGS, &request) == 0;
    request.ifr_flags |= IFF_UP | IFF_RUNNING;
    up = up && ioctl(sock, SIOCSIFFLAGS, &request) == 0;
    int saved = errno;
    close(sock);
    errno = saved;
    return up ? 0 : -1;
}

#endif
