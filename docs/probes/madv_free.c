/* Probe: can the host kernel's own LRU drop volatile guest frames, as on
 * s390 ("the host just does normal LRU based paging; if it picks a page the
 * guest can recreate, it throws it away")? Frames given MADV_FREE become
 * lazily free: the kernel drops them under memory pressure (here a memory
 * cgroup limit) unless they are written again first. This probe asks, with
 * no swap, in a cgroup v1 memory cgroup it makes and removes itself:
 *   1. Are lazily freed pages dropped at the limit instead of an OOM kill?
 *   2. In which order: untouched ones first, read ones later, written ones
 *      never (a write cancels the lazy free)?
 *   3. Does a userfaultfd registered MISSING see the touch of a dropped
 *      page (how a VMM would learn of the drop, to inject a discard fault)?
 *   4. What does each step cost (MADV_FREE per page, touching memory while
 *      the kernel drops lazy pages to make room, against no pressure)?
 * Build and run (root): gcc -O2 -Wall -o madv_free docs/probes/madv_free.c
 *   -lpthread && ./madv_free
 * It writes only inside the cgroup it creates (limit, cgroup.procs) and
 * removes it at the end. Findings: docs/probes/madv_free.md. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MIB (1UL << 20)
#define PG 4096UL

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0 || write(fd, text, strlen(text)) < 0) {
        perror(path);
        exit(2);
    }
    close(fd);
}

static long vmstat(const char *key) {
    FILE *f = fopen("/proc/vmstat", "r");
    char k[128];
    long v, found = -1;
    while (f && fscanf(f, "%127s %ld", k, &v) == 2)
        if (!strcmp(k, key)) found = v;
    if (f) fclose(f);
    return found;
}

static int uffd;
static volatile long uffd_events;

static void *handler(void *arg) {
    (void)arg;
    for (;;) {
        struct pollfd p = {.fd = uffd, .events = POLLIN};
        if (poll(&p, 1, -1) < 1) continue;
        struct uffd_msg m;
        if (read(uffd, &m, sizeof m) != sizeof m) continue;
        if (m.event != UFFD_EVENT_PAGEFAULT) continue;
        uffd_events++;
        struct uffdio_zeropage z = {
            .range = {.start = m.arg.pagefault.address & ~(PG - 1), .len = PG}};
        ioctl(uffd, UFFDIO_ZEROPAGE, &z);
    }
    return NULL;
}

/* Pages of [p, p+len) that still hold their pattern (not dropped). */
static long kept(const uint8_t *p, size_t len) {
    long n = 0;
    for (size_t i = 0; i < len; i += PG) n += p[i] != 0;
    return n;
}

static int child(size_t lazy_mib, size_t more_mib) {
    size_t len = lazy_mib * MIB, part = len / 6;
    uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    madvise(m, len, MADV_NOHUGEPAGE);
    for (size_t i = 0; i < len; i += PG) m[i] = 1 + (i / PG) % 250;
    double t = now();
    for (size_t i = 0; i < len; i += PG) madvise(m + i, PG, MADV_FREE);
    double per_page = (now() - t) / (len / PG) * 1e6;
    /* The userfaultfd sees missing pages from now on. */
    uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    struct uffdio_api api = {.api = UFFD_API};
    struct uffdio_register reg = {.range = {.start = (uintptr_t)m, .len = len},
                                  .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) || ioctl(uffd, UFFDIO_REGISTER, &reg)) {
        perror("userfaultfd");
        return 2;
    }
    pthread_t th;
    pthread_create(&th, NULL, handler, NULL);
    /* Part A (first sixth): written again: the lazy free is cancelled.
     * Part B (second sixth): read three times over (referenced).
     * The rest: untouched since MADV_FREE. */
    for (size_t i = 0; i < part; i += PG) *(volatile uint8_t *)(m + i) = m[i];
    volatile long sum = 0;
    for (int r = 0; r < 3; r++)
        for (size_t i = part; i < 2 * part; i += PG) sum += m[i];
    long lazyfreed0 = vmstat("pglazyfreed");
    /* Pressure: allocate and touch more than the limit leaves. */
    size_t more = more_mib * MIB;
    uint8_t *n = mmap(NULL, more, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    madvise(n, more, MADV_NOHUGEPAGE);
    t = now();
    for (size_t i = 0; i < more; i += PG) n[i] = 7;
    double touch = (now() - t) / (more / PG) * 1e6;
    long lazyfreed = vmstat("pglazyfreed") - lazyfreed0;
    /* Count what survived, with the fault handler stopped counting
     * first: read the pattern through /proc/self/pagemap instead of
     * touching, so the count itself drops nothing and faults nothing. */
    int pm = open("/proc/self/pagemap", O_RDONLY);
    long present[3] = {0, 0, 0};
    for (size_t i = 0; i < len; i += PG) {
        uint64_t e = 0;
        pread(pm, &e, 8, ((uintptr_t)(m + i) / PG) * 8);
        int which = i < part ? 0 : i < 2 * part ? 1 : 2;
        present[which] += (e >> 63) & 1;
    }
    long parts[3] = {part / PG, part / PG, (len - 2 * part) / PG};
    printf("MADV_FREE per page: %.2f us\n", per_page);
    printf("touching %zu MiB under pressure: %.2f us/page; pglazyfreed +%ld\n", more_mib, touch,
           lazyfreed);
    printf("still present: written %ld/%ld, read %ld/%ld, untouched %ld/%ld\n", present[0],
           parts[0], present[1], parts[1], present[2], parts[2]);
    /* Now touch every page: a dropped one is a userfaultfd missing fault. */
    long before = uffd_events;
    long intact = kept(m, len);
    usleep(100000);
    printf("touching all again: %ld userfaultfd missing faults, %ld pages intact\n",
           uffd_events - before, intact);
    return 0;
}

static double baseline_touch(size_t mib) {
    size_t len = mib * MIB;
    uint8_t *n = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    madvise(n, len, MADV_NOHUGEPAGE);
    double t = now();
    for (size_t i = 0; i < len; i += PG) n[i] = 7;
    double us = (now() - t) / (len / PG) * 1e6;
    munmap(n, len);
    return us;
}

int main(int argc, char **argv) {
    const char *root = argc > 1 ? argv[1] : "/sys/fs/cgroup/memory";
    size_t limit_mib = 64, lazy_mib = 48, more_mib = 40;
    char dir[512], path[600], text[64];
    snprintf(dir, sizeof dir, "%s/madv-free-probe-%d", root, getpid());
    if (mkdir(dir, 0755)) {
        perror(dir);
        return 2;
    }
    snprintf(path, sizeof path, "%s/memory.limit_in_bytes", dir);
    snprintf(text, sizeof text, "%zu", limit_mib * MIB);
    put(path, text);
    printf("touching %zu MiB with no pressure: %.2f us/page\n", more_mib, baseline_touch(more_mib));
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        snprintf(path, sizeof path, "%s/cgroup.procs", dir);
        put(path, "0");
        int rc = child(lazy_mib, more_mib);
        fflush(stdout);
        _exit(rc);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    snprintf(path, sizeof path, "%s/memory.oom_control", dir);
    FILE *f = fopen(path, "r");
    char line[128];
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "oom_kill ", 9)) printf("cgroup %s", line);
    if (f) fclose(f);
    printf("child: %s %d\n", WIFEXITED(status) ? "exit" : "signal",
           WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    rmdir(dir);
    return 0;
}
