/*
 * histogram.c — owns the bucket layout of the latency histogram and the arithmetic that
 * maps microseconds to buckets and back. Recording is wait-free apart from the max
 * update; readers only ever see a snapshot.
 *
 * Layout: buckets 0..31 hold the values 0..31 exactly. From 32 on, each power of two
 * [2^p, 2^(p+1)) is split into 32 equal sub-buckets, so a bucket is never wider than
 * 1/32 of its lower bound: that bound is where the 1/32 relative error comes from.
 * Powers 5..31 fill buckets 32..895. Anything at or above 2^32 us (~71.6 minutes) is
 * clamped to 2^32 and counted in the last bucket; the buckets in between stay empty
 * (the header reserves room for a wider range than is used).
 */
#include "histogram.h"

#include <stddef.h>

#define HIST_CLAMP_US (UINT64_C(1) << 32)
#define HIST_OVERFLOW_BUCKET (MP_HIST_BUCKETS - 1u)

static unsigned floor_log2(uint64_t v)
{
    return 63u - (unsigned)__builtin_clzll(v);
}

static size_t bucket_of(uint64_t us)
{
    if (us >= HIST_CLAMP_US)
        return HIST_OVERFLOW_BUCKET;
    if (us < MP_HIST_SUB)
        return (size_t)us;
    unsigned p = floor_log2(us);
    unsigned shift = p - MP_HIST_SUB_BITS;
    /* The top MP_HIST_SUB_BITS+1 bits of us: a leading 1 followed by the sub-bucket. */
    uint64_t sub = (us >> shift) - MP_HIST_SUB;
    return (size_t)(p - MP_HIST_SUB_BITS + 1u) * MP_HIST_SUB + (size_t)sub;
}

/* Largest value that maps to bucket b: the quantile reports this so it never
 * underestimates a latency. */
static uint64_t bucket_upper(size_t b)
{
    if (b == HIST_OVERFLOW_BUCKET)
        return HIST_CLAMP_US;
    if (b < MP_HIST_SUB)
        return (uint64_t)b;
    unsigned group = (unsigned)(b / MP_HIST_SUB); /* 1 for power 5, 2 for power 6 ... */
    uint64_t sub = b % MP_HIST_SUB;
    unsigned shift = group - 1u;
    return ((MP_HIST_SUB + sub + 1u) << shift) - 1u;
}

void mp_hist_reset(mp_histogram *h)
{
    /* Not atomic as a whole: a record racing the reset may survive in some counters. */
    for (size_t i = 0; i < MP_HIST_BUCKETS; i++)
        atomic_store_explicit(&h->buckets[i], 0, memory_order_relaxed);
    atomic_store_explicit(&h->count, 0, memory_order_relaxed);
    atomic_store_explicit(&h->sum_us, 0, memory_order_relaxed);
    atomic_store_explicit(&h->max_us, 0, memory_order_relaxed);
}

void mp_hist_init(mp_histogram *h)
{
    for (size_t i = 0; i < MP_HIST_BUCKETS; i++)
        atomic_init(&h->buckets[i], 0);
    atomic_init(&h->count, 0);
    atomic_init(&h->sum_us, 0);
    atomic_init(&h->max_us, 0);
}

void mp_hist_record(mp_histogram *h, uint64_t us)
{
    /* Clamping the sum and max too keeps the mean from wrapping on a garbage duration
     * (a negative interval cast to unsigned) and keeps max consistent with the buckets. */
    if (us > HIST_CLAMP_US)
        us = HIST_CLAMP_US;
    atomic_fetch_add_explicit(&h->buckets[bucket_of(us)], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_us, us, memory_order_relaxed);
    uint64_t cur = atomic_load_explicit(&h->max_us, memory_order_relaxed);
    while (us > cur &&
           !atomic_compare_exchange_weak_explicit(&h->max_us, &cur, us, memory_order_relaxed,
                                                  memory_order_relaxed))
        ;
}

void mp_hist_snapshot_take(const mp_histogram *h, mp_hist_snapshot *out)
{
    for (size_t i = 0; i < MP_HIST_BUCKETS; i++)
        out->buckets[i] = atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
    out->count = atomic_load_explicit(&h->count, memory_order_relaxed);
    out->sum_us = atomic_load_explicit(&h->sum_us, memory_order_relaxed);
    out->max_us = atomic_load_explicit(&h->max_us, memory_order_relaxed);
}

double mp_hist_quantile(const mp_hist_snapshot *s, double q)
{
    /* Rank against the buckets' own total, not s->count: with concurrent writers the two
     * can disagree slightly and the walk below must always find its bucket. */
    uint64_t total = 0;
    for (size_t i = 0; i < MP_HIST_BUCKETS; i++)
        total += s->buckets[i];
    if (total == 0)
        return 0.0;
    if (!(q > 0.0)) /* also catches NaN */
        q = 0.0;
    if (q > 1.0)
        q = 1.0;
    double want = q * (double)total;
    uint64_t rank = (uint64_t)want;
    if ((double)rank < want)
        rank++;
    if (rank == 0)
        rank = 1;
    if (rank > total)
        rank = total;

    uint64_t seen = 0;
    size_t b = 0;
    for (; b < MP_HIST_BUCKETS; b++) {
        seen += s->buckets[b];
        if (seen >= rank)
            break;
    }
    uint64_t upper = bucket_upper(b);
    /* Capping makes q=1 exact; in a snapshot that raced a writer max_us may lag the
     * buckets, which only makes that one answer low. */
    if (upper > s->max_us)
        upper = s->max_us;
    return (double)upper;
}

double mp_hist_mean(const mp_hist_snapshot *s)
{
    if (s->count == 0)
        return 0.0;
    return (double)s->sum_us / (double)s->count;
}
