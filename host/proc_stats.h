/*
 * proc_stats.h — this process's CPU use and resident memory, read from /proc/self.
 */
#ifndef MP_HOST_PROC_STATS_H
#define MP_HOST_PROC_STATS_H

#include <stdint.h>

/* Remembers the previous sample so CPU use is a rate over the interval between calls.
 * Not thread-safe: one sampler per caller. */
typedef struct mp_proc_sampler {
    uint64_t last_cpu_ticks; /* utime + stime, in clock ticks */
    uint64_t last_wall_ns;   /* CLOCK_MONOTONIC */
    double last_percent;
    int primed;
} mp_proc_sampler;

/* Resident set size in bytes; 0 or -errno. */
int mp_proc_rss_bytes(uint64_t *out);

/* CPU use of the whole process in percent of one core (200 = two cores busy) since the
 * previous call; the first call measures since process start. If called again within
 * 100 ms, returns the previous value rather than a noisy one. -1.0 on read failure. */
double mp_proc_cpu_percent(mp_proc_sampler *s);

#endif
