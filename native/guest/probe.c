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
 * The host puts its plan next to this binary, in /.rampack-probe/ (guest.h
 * lists the files every helper init reads: commands, env, cwd, user,
 * workload/); the smoke command comes first among the commands. The probe
 * alone reads:
 *   headroom  MiB of memory a child process must be able to fill after boot
 *
 * Build: musl-gcc -static -O2 probe.c (x86_64), aarch64-linux-gnu-gcc -static.
 */
#define _GNU_SOURCE
#define GUEST_FAILURE "RAMPACK-PROBE fail: "
#include "guest.h"

#include <elf.h>
#include <sys/mman.h>

#define AGENT "/init"

#if defined(__x86_64__)
#define OWN_MACHINE EM_X86_64
#elif defined(__aarch64__)
#define OWN_MACHINE EM_AARCH64
#else
#error "the probe runs on x86_64 and aarch64 only"
#endif

/* As pid 1 the probe must never return: it ends by powering the VM off. */
static void finish(void) {
    power_off();
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

/* ---- the smoke command and the workload ------------------------------------ */

/* Waits for a child; its status as a shell shows it. */
static int wait_for(pid_t child) {
    int status;
    while (waitpid(child, &status, 0) < 0) {
        if (errno != EINTR) fail("waitpid: %s", strerror(errno));
    }
    return shell_status(status);
}

/* Runs command `n` as the image's user; returns its status. */
static int run_command(size_t n, char **argv, const image_settings *image) {
    printf("RAMPACK-PROBE run-begin %zu\n", n);
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) fail("fork: %s", strerror(errno));
    if (child == 0) exec_in_image(argv, image);
    int status = wait_for(child);
    /* On a line of its own even after output without a final newline. */
    printf("\nRAMPACK-PROBE run %zu exit=%d\n", n, status);
    /* Servers a command left behind must not run into the next command or the memory check. */
    end_leftovers();
    return status;
}

/* The smoke command, then the other commands, until one fails. */
static void run_commands(void) {
    size_t count;
    command *commands = read_commands(&count);
    if (count == 0) fail("the plan has no smoke command");
    image_settings image = read_image_settings();
    for (size_t n = 0; n < count; n++) {
        if (run_command(n, commands[n].argv, &image) != 0) return;
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
    mount_pseudo_filesystems();
    report_start();
    check_agent();
    /* Not fatal: a command may not need it. */
    if (loopback_up() != 0) printf("RAMPACK-PROBE loopback down: %s\n", strerror(errno));
    run_commands();
    run_workload();
    printf("RAMPACK-PROBE done\n");
    power_off();
    return 0;
}
