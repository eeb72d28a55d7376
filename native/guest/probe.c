/*
 * rampack boot probe: the init `rampack verify --boot` starts (rdinit=) in a
 * temporary copy of a published initramfs, instead of the image's own agent.
 * It checks that the agent the runtime will start (/init) is there and can
 * run on this machine, runs the recipe's smoke command the way the agent
 * would (the image's env, working directory and user; loopback up), then any
 * further commands (a slim variant's workload) one after the other until one
 * fails, proves that the memory left after boot holds a small workload,
 * reports each step on the console with "RAMPACK-PROBE" lines the host
 * parses, and powers off.
 *
 * The host puts its plan next to this binary, in /.rampack-probe/ (files of
 * NUL-terminated strings, so any byte but NUL passes through):
 *   commands  the smoke command, then the others: for each, its argument
 *             count in decimal, then that many arguments (the slim tracer's
 *             format, src/boot/probe.ts encodeCommands)
 *   workload/ files the commands use, if any
 *   env       the image's environment (from /etc/rampack/image.json)
 *   cwd       the image's working directory
 *   user      the image's user: "", "uid", "uid:gid", "name" or "name:group"
 *   headroom  MiB of memory a child process must be able to fill after boot
 *
 * Build: musl-gcc -static -O2 probe.c (x86_64), aarch64-linux-gnu-gcc -static.
 */
#define _GNU_SOURCE
#include <elf.h>
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
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define PLAN_DIR "/.rampack-probe/"
#define AGENT "/init"

#if defined(__x86_64__)
#define OWN_MACHINE EM_X86_64
#elif defined(__aarch64__)
#define OWN_MACHINE EM_AARCH64
#else
#error "the probe runs on x86_64 and aarch64 only"
#endif

/* ---- ending: as pid 1 the probe must never return ----------------------- */

static void power_off(void) {
    fflush(stdout);
    tcdrain(STDOUT_FILENO); /* let the serial line empty before the VM stops */
    sync();
    reboot(RB_POWER_OFF);
    for (;;) pause();
}

static void fail(const char *format, ...) {
    va_list args;
    fflush(stdout);
    printf("RAMPACK-PROBE fail: ");
    va_start(args, format);
    vprintf(format, args);
    va_end(args);
    printf("\n");
    power_off();
}

/* ---- reading the plan ---------------------------------------------------- */

/* A whole file, NUL-terminated (an extra NUL ends a list); NULL when missing. */
static char *read_file(const char *path, size_t *length) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    size_t capacity = 4096, used = 0;
    char *buffer = malloc(capacity);
    for (;;) {
        if (!buffer) fail("out of memory reading %s", path);
        if (used + 2 >= capacity) buffer = realloc(buffer, capacity *= 2);
        if (!buffer) continue;
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

static char *read_plan(const char *name, size_t *length) {
    char path[64];
    snprintf(path, sizeof path, PLAN_DIR "%s", name);
    char *text = read_file(path, length);
    if (!text) fail("cannot read the plan file %s: %s", path, strerror(errno));
    return text;
}

/* The NUL-terminated strings of a plan file as a NULL-terminated array. */
static char **plan_list(const char *name) {
    size_t length;
    char *text = read_plan(name, &length);
    size_t count = 0;
    for (size_t i = 0; i < length; i++) count += text[i] == '\0';
    char **items = calloc(count + 1, sizeof *items);
    if (!items) fail("out of memory");
    char *at = text;
    for (size_t i = 0; i < count; i++, at += strlen(at) + 1) items[i] = at;
    return items;
}

/* ---- the agent ----------------------------------------------------------- */

static const char *machine_name(unsigned machine) {
    switch (machine) {
    case EM_X86_64: return "x86_64";
    case EM_AARCH64: return "aarch64";
    case EM_386: return "i386";
    case EM_ARM: return "arm";
    default: return "another machine";
    }
}

/* A dynamically linked agent needs its loader inside the image. */
static void check_interpreter(int fd, const Elf64_Ehdr *header) {
    for (unsigned i = 0; i < header->e_phnum; i++) {
        Elf64_Phdr segment;
        off_t at = (off_t)(header->e_phoff + (Elf64_Off)i * header->e_phentsize);
        if (pread(fd, &segment, sizeof segment, at) != (ssize_t)sizeof segment) fail(AGENT ": truncated program headers");
        if (segment.p_type != PT_INTERP) continue;
        char loader[4096] = {0};
        size_t size = segment.p_filesz < sizeof loader - 1 ? segment.p_filesz : sizeof loader - 1;
        if (pread(fd, loader, size, (off_t)segment.p_offset) != (ssize_t)size) fail(AGENT ": truncated interpreter path");
        if (access(loader, X_OK) != 0) fail(AGENT " is dynamically linked and its loader %s is missing from the image: %s", loader, strerror(errno));
        printf("RAMPACK-PROBE agent loader=%s\n", loader);
    }
}

/* The image's agent is what the runtime starts: an executable ELF for this machine. */
static void check_agent(void) {
    struct stat st;
    if (stat(AGENT, &st) != 0) fail(AGENT " (the image's agent) is missing: %s", strerror(errno));
    if (!S_ISREG(st.st_mode)) fail(AGENT " is not a regular file (mode %o)", (unsigned)st.st_mode);
    if ((st.st_mode & 0111) == 0) fail(AGENT " is not executable (mode %04o)", (unsigned)(st.st_mode & 07777));
    int fd = open(AGENT, O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("open " AGENT ": %s", strerror(errno));
    Elf64_Ehdr header;
    if (read(fd, &header, sizeof header) != (ssize_t)sizeof header || memcmp(header.e_ident, ELFMAG, SELFMAG) != 0) {
        fail(AGENT " is not an ELF executable");
    }
    if (header.e_ident[EI_CLASS] != ELFCLASS64 || header.e_ident[EI_DATA] != ELFDATA2LSB) fail(AGENT " is not a 64-bit little-endian ELF");
    if (header.e_type != ET_EXEC && header.e_type != ET_DYN) fail(AGENT " is an ELF object, not an executable");
    if (header.e_machine != OWN_MACHINE) {
        fail(AGENT " is built for %s, this machine is %s", machine_name(header.e_machine), machine_name(OWN_MACHINE));
    }
    check_interpreter(fd, &header);
    close(fd);
    printf("RAMPACK-PROBE agent ok machine=%s size=%lld mode=%04o\n", machine_name(header.e_machine), (long long)st.st_size,
           (unsigned)(st.st_mode & 07777));
}

/* ---- what the guest looks like -------------------------------------------- */

static void mount_pseudo(const char *type, const char *target) {
    if (mkdir(target, 0755) != 0 && errno != EEXIST) fail("mkdir %s: %s", target, strerror(errno));
    if (mount(type, target, type, 0, NULL) != 0 && errno != EBUSY) fail("mount %s on %s: %s", type, target, strerror(errno));
}

/* A /proc/meminfo value in KiB, or -1. */
static long meminfo(const char *text, const char *field) {
    const char *at = strstr(text, field);
    return at ? strtol(at + strlen(field), NULL, 10) : -1;
}

static void report_start(void) {
    char *uptime = read_file("/proc/uptime", NULL);
    if (uptime) uptime[strcspn(uptime, " \n")] = '\0';
    printf("RAMPACK-PROBE start uptime=%s\n", uptime ? uptime : "-");
    char *memory = read_file("/proc/meminfo", NULL);
    if (memory) printf("RAMPACK-PROBE memory total_kib=%ld available_kib=%ld\n", meminfo(memory, "MemTotal:"), meminfo(memory, "MemAvailable:"));
    char *mounts = read_file("/proc/mounts", NULL);
    if (mounts) printf("RAMPACK-PROBE rootfs %.*s\n", (int)strcspn(mounts, "\n"), mounts);
}

/* ---- the image's user ------------------------------------------------------ */

static int all_digits(const char *text) {
    if (!*text) return 0;
    for (; *text; text++) if (*text < '0' || *text > '9') return 0;
    return 1;
}

/*
 * Field 2 (uid or gid) and field 3 (primary gid) of the line of `name` in an
 * /etc/passwd-style file. Parsed here: glibc's static getpwnam needs NSS
 * libraries the image may not have.
 */
static int lookup_id(const char *file, const char *name, unsigned *id, unsigned *group) {
    char *text = read_file(file, NULL);
    if (!text) return 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char *fields[4] = {0};
        char *rest = line;
        for (int i = 0; i < 4 && rest; i++) fields[i] = strsep(&rest, ":");
        if (!fields[2] || strcmp(fields[0], name) != 0) continue;
        *id = (unsigned)strtoul(fields[2], NULL, 10);
        if (group && fields[3]) *group = (unsigned)strtoul(fields[3], NULL, 10);
        return 1;
    }
    return 0;
}

/* Switches to the image's user, as OCI runtimes do: uid, then gid (the user's primary group unless named). */
static void become_user(char *user) {
    if (!*user) return;
    char *group = strchr(user, ':');
    if (group) *group++ = '\0';
    unsigned uid = 0, gid = 0;
    if (all_digits(user)) {
        uid = (unsigned)strtoul(user, NULL, 10);
    } else if (!lookup_id("/etc/passwd", user, &uid, &gid)) {
        fail("user %s is not in the image's /etc/passwd", user);
    }
    if (group && all_digits(group)) gid = (unsigned)strtoul(group, NULL, 10);
    else if (group && !lookup_id("/etc/group", group, &gid, NULL)) fail("group %s is not in the image's /etc/group", group);
    if (setgroups(0, NULL) != 0 || setgid(gid) != 0 || setuid(uid) != 0) fail("cannot become %u:%u: %s", uid, gid, strerror(errno));
}

/* ---- the smoke command and the workload ------------------------------------ */

static const char *env_lookup(char **env, const char *name) {
    size_t length = strlen(name);
    for (; *env; env++) {
        if (strncmp(*env, name, length) == 0 && (*env)[length] == '=') return *env + length + 1;
    }
    return NULL;
}

/* execvp with the image's PATH rather than the probe's. */
static void exec_with_path(char **argv, char **env) {
    const char *search = strchr(argv[0], '/') ? "" : env_lookup(env, "PATH");
    if (!search) search = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    if (!*search) execve(argv[0], argv, env);
    char *paths = strdup(search), *directory;
    while (paths && (directory = strsep(&paths, ":")) != NULL) {
        char candidate[4096];
        snprintf(candidate, sizeof candidate, "%s/%s", *directory ? directory : ".", argv[0]);
        if (access(candidate, X_OK) == 0) execve(candidate, argv, env);
    }
    printf("RAMPACK-PROBE fail: cannot run %s: %s (PATH=%s)\n", argv[0], strerror(errno), search);
    fflush(stdout);
    _exit(127);
}

/* Like a shell: a signal shows as 128 + its number. */
static int wait_for(pid_t child) {
    int status;
    while (waitpid(child, &status, 0) < 0) {
        if (errno != EINTR) fail("waitpid: %s", strerror(errno));
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Loopback up, as an agent would have it: workloads serve and fetch on 127.0.0.1. Not fatal: a command may not need it. */
static void loopback_up(void) {
    struct ifreq request = {0};
    strcpy(request.ifr_name, "lo");
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int up = sock >= 0 && ioctl(sock, SIOCGIFFLAGS, &request) == 0;
    request.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (!up || ioctl(sock, SIOCSIFFLAGS, &request) != 0) printf("RAMPACK-PROBE loopback down: %s\n", strerror(errno));
    if (sock >= 0) close(sock);
}

/* Runs command `n` (argv, not yet NULL-terminated after `argc`) as the image's user; returns its status. */
static int run_command(int n, char **argv, long argc, char **env, const char *cwd, char *user) {
    printf("RAMPACK-PROBE run-begin %d\n", n);
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) fail("fork: %s", strerror(errno));
    if (child == 0) {
        argv[argc] = NULL; /* the child's copy of the plan: the next command's count ends this one */
        if (*cwd && chdir(cwd) != 0) {
            printf("RAMPACK-PROBE fail: chdir %s: %s\n", cwd, strerror(errno));
            _exit(126);
        }
        become_user(user);
        exec_with_path(argv, env);
    }
    int status = wait_for(child);
    /* On a line of its own even after output without a final newline. */
    printf("\nRAMPACK-PROBE run %d exit=%d\n", n, status);
    /* Servers a command left behind must not run into the next command or the memory check. */
    kill(-1, SIGKILL);
    while (waitpid(-1, NULL, 0) > 0) {}
    return status;
}

/* The smoke command, then the other commands, until one fails. */
static void run_commands(void) {
    char **plan = plan_list("commands");
    char **env = plan_list("env");
    char *cwd = read_plan("cwd", NULL);
    char *user = read_plan("user", NULL);
    if (!plan[0]) fail("the plan has no smoke command");
    /* The commands' files are read as the image's user, who may not be root. */
    chmod(PLAN_DIR, 0755);
    for (int n = 0; *plan; n++) {
        long argc = strtol(plan[0], NULL, 10);
        char **argv = plan + 1;
        if (argc < 1) fail("the plan's command %d has no arguments", n);
        for (long i = 0; i < argc; i++) if (!argv[i]) fail("the plan's command %d is cut short", n);
        plan = argv + argc;
        if (run_command(n, argv, argc, env, cwd, user) != 0) return;
    }
}

/* A child fills the headroom with touched pages; the OOM killer's SIGKILL shows as exit 137. */
static void run_workload(void) {
    long mib = strtol(read_plan("headroom", NULL), NULL, 10);
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) fail("fork: %s", strerror(errno));
    if (child == 0) {
        size_t bytes = (size_t)mib << 20;
        unsigned char *memory = mmap(NULL, bytes ? bytes : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (memory == MAP_FAILED) _exit(1);
        for (size_t at = 0; at < bytes; at += 4096) memory[at] = 1;
        _exit(0);
    }
    printf("RAMPACK-PROBE workload mib=%ld exit=%d\n", mib, wait_for(child));
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (getpid() != 1) {
        fprintf(stderr, "the rampack probe runs only as a VM's init\n");
        return 2;
    }
    mount_pseudo("proc", "/proc");
    mount_pseudo("sysfs", "/sys");
    mount_pseudo("devtmpfs", "/dev");
    report_start();
    check_agent();
    loopback_up();
    run_commands();
    run_workload();
    printf("RAMPACK-PROBE done\n");
    power_off();
    return 0;
}
