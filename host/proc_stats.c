/*
 * proc_stats.c — owns the reading of /proc/self/statm and /proc/self/stat and the
 * turning of tick counts into a CPU percentage. No allocation; files are read with
 * plain read(2) into stack buffers.
 *
 * The first CPU sample is measured from process start: starttime (field 22, ticks after
 * boot) against CLOCK_BOOTTIME, which is the clock /proc/uptime reports, read without
 * parsing a second file and with better than its 10 ms resolution.
 */
#include "proc_stats.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define RESAMPLE_NS 100000000ull /* closer calls would be mostly tick-rounding noise */

/* Reads the whole (small) file into buf, NUL-terminated. Returns 0 or -errno. */
static int read_small_file(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t got = 0;
    while (got + 1 < len) {
        ssize_t r = read(fd, buf + got, len - 1 - got);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            close(fd);
            return -e;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    return 0;
}

int mp_proc_rss_bytes(uint64_t *out)
{
    char buf[256];
    int rc = read_small_file("/proc/self/statm", buf, sizeof(buf));
    if (rc < 0)
        return rc;
    /* statm: size resident shared text lib data dt, all in pages. */
    char *p = buf, *end;
    errno = 0;
    (void)strtoull(p, &end, 10);
    if (end == p)
        return -EPROTO;
    p = end;
    unsigned long long resident = strtoull(p, &end, 10);
    if (end == p || errno != 0)
        return -EPROTO;
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0)
        return -EINVAL;
    *out = (uint64_t)resident * (uint64_t)page;
    return 0;
}

/* utime + stime and starttime from /proc/self/stat, in clock ticks. */
static int read_cpu_ticks(uint64_t *cpu, uint64_t *start)
{
    char buf[1024];
    int rc = read_small_file("/proc/self/stat", buf, sizeof(buf));
    if (rc < 0)
        return rc;
    /* comm (field 2) is "(name)" and the name may hold spaces and ')': only the last
     * ')' reliably ends it. Fields from 3 (state) on are space-separated. */
    char *p = strrchr(buf, ')');
    if (!p)
        return -EPROTO;
    p++;
    unsigned long long utime = 0, stime = 0, starttime = 0;
    int field = 3;
    while (field <= 22) {
        while (*p == ' ')
            p++;
        if (*p == '\0' || *p == '\n')
            return -EPROTO;
        char *tok = p;
        while (*p && *p != ' ' && *p != '\n')
            p++;
        if (field == 14 || field == 15 || field == 22) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(tok, &end, 10);
            if (end != p || errno != 0)
                return -EPROTO;
            if (field == 14)
                utime = v;
            else if (field == 15)
                stime = v;
            else
                starttime = v;
        }
        field++;
    }
    *cpu = (uint64_t)(utime + stime);
    *start = (uint64_t)starttime;
    return 0;
}

static uint64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    if (clock_gettime(id, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

double mp_proc_cpu_percent(mp_proc_sampler *s)
{
    uint64_t now = clock_ns(CLOCK_MONOTONIC);
    if (s->primed && now - s->last_wall_ns < RESAMPLE_NS)
        return s->last_percent;

    uint64_t cpu, start_ticks;
    if (read_cpu_ticks(&cpu, &start_ticks) < 0)
        return -1.0;
    long hz = sysconf(_SC_CLK_TCK);
    if (hz <= 0)
        return -1.0;

    uint64_t dticks;
    double dwall_s;
    if (s->primed) {
        dticks = cpu >= s->last_cpu_ticks ? cpu - s->last_cpu_ticks : 0;
        dwall_s = (double)(now - s->last_wall_ns) / 1e9;
    } else {
        dticks = cpu;
        dwall_s = (double)clock_ns(CLOCK_BOOTTIME) / 1e9 - (double)start_ticks / (double)hz;
    }

    /* A process sampled within its first tick has no meaningful rate yet. */
    double percent = 0.0;
    if (dwall_s > 0.0)
        percent = ((double)dticks / (double)hz) / dwall_s * 100.0;
    s->last_cpu_ticks = cpu;
    s->last_wall_ns = now;
    s->last_percent = percent;
    s->primed = 1;
    return percent;
}
