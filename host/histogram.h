/*
 * histogram.h — latency histogram: log-linear buckets over microseconds (about 3%
 * relative error from 1 us to ~1 hour), recorded lock-free from any thread with relaxed
 * atomics, read as a snapshot for quantiles. Fixed size, no allocation.
 */
#ifndef MP_HOST_HISTOGRAM_H
#define MP_HOST_HISTOGRAM_H

#include <stdatomic.h>
#include <stdint.h>

/* 32 sub-buckets per power of two, powers 0..31 of microseconds. */
#define MP_HIST_SUB_BITS 5
#define MP_HIST_SUB (1u << MP_HIST_SUB_BITS)
#define MP_HIST_BUCKETS (MP_HIST_SUB * 33)

typedef struct mp_histogram {
    _Atomic uint64_t buckets[MP_HIST_BUCKETS];
    _Atomic uint64_t count;
    _Atomic uint64_t sum_us;
    _Atomic uint64_t max_us;
} mp_histogram;

typedef struct mp_hist_snapshot {
    uint64_t buckets[MP_HIST_BUCKETS];
    uint64_t count;
    uint64_t sum_us;
    uint64_t max_us;
} mp_hist_snapshot;

void mp_hist_init(mp_histogram *h);
void mp_hist_record(mp_histogram *h, uint64_t us);
/* Copy the current state (not atomic as a whole; each counter is). */
void mp_hist_snapshot_take(const mp_histogram *h, mp_hist_snapshot *out);
/* q in [0,1]; returns microseconds (the bucket's upper bound, capped at max). 0 if empty. */
double mp_hist_quantile(const mp_hist_snapshot *s, double q);
double mp_hist_mean(const mp_hist_snapshot *s); /* microseconds; 0 if empty */
void mp_hist_reset(mp_histogram *h);

#endif
