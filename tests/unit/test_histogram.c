/*
 * test_histogram.c — checks the histogram's promises: exact below 32 us, at most 1/32
 * relative error above, correct counts under concurrent recording, and the empty and
 * reset states.
 */
#include "histogram.h"
#include "mp_test.h"

#include <math.h>
#include <pthread.h>

/* The histogram is ~8 KiB; static keeps it off the test's stack. */
static mp_histogram hist;
static mp_hist_snapshot snap;

static int within_rel(double got, double want, double rel)
{
    return got >= want && got <= want * (1.0 + rel);
}

MP_TEST(empty_reports_zero)
{
    mp_hist_init(&hist);
    mp_hist_snapshot_take(&hist, &snap);
    MP_CHECK_EQ_INT(snap.count, 0);
    MP_CHECK(mp_hist_quantile(&snap, 0.0) == 0.0);
    MP_CHECK(mp_hist_quantile(&snap, 0.5) == 0.0);
    MP_CHECK(mp_hist_quantile(&snap, 1.0) == 0.0);
    MP_CHECK(mp_hist_mean(&snap) == 0.0);
}

MP_TEST(uniform_quantiles_within_error)
{
    mp_hist_init(&hist);
    for (uint64_t v = 1; v <= 100000; v++)
        mp_hist_record(&hist, v);
    mp_hist_snapshot_take(&hist, &snap);
    MP_CHECK_EQ_INT(snap.count, 100000);
    MP_CHECK_EQ_INT(snap.max_us, 100000);
    double p50 = mp_hist_quantile(&snap, 0.50);
    double p95 = mp_hist_quantile(&snap, 0.95);
    double p99 = mp_hist_quantile(&snap, 0.99);
    MP_CHECK(within_rel(p50, 50000, 0.032));
    MP_CHECK(within_rel(p95, 95000, 0.032));
    MP_CHECK(within_rel(p99, 99000, 0.032));
    MP_CHECK(mp_hist_quantile(&snap, 1.0) == 100000.0); /* capped at max */
    MP_CHECK(mp_hist_quantile(&snap, 0.0) == 1.0);      /* smallest bucket, exact */
    MP_CHECK(fabs(mp_hist_mean(&snap) - 50000.5) < 1e-6);
    if (!within_rel(p50, 50000, 0.032) || !within_rel(p99, 99000, 0.032))
        fprintf(stderr, "p50=%f p95=%f p99=%f\n", p50, p95, p99);
}

MP_TEST(small_values_are_exact)
{
    mp_hist_init(&hist);
    /* 0..31, each value v recorded once: the k-th smallest is k-1 exactly. */
    for (uint64_t v = 0; v < 32; v++)
        mp_hist_record(&hist, v);
    mp_hist_snapshot_take(&hist, &snap);
    for (int k = 1; k <= 32; k++) {
        double q = (double)k / 32.0;
        double got = mp_hist_quantile(&snap, q);
        if (got != (double)(k - 1)) {
            fprintf(stderr, "q=%f got %f want %d\n", q, got, k - 1);
            *mp_test_failed_ = 1;
        }
    }
    MP_CHECK(mp_hist_quantile(&snap, 0.0) == 0.0);
    MP_CHECK(mp_hist_mean(&snap) == 15.5);
    MP_CHECK_EQ_INT(snap.max_us, 31);

    mp_hist_init(&hist);
    mp_hist_record(&hist, 7);
    mp_hist_record(&hist, 7);
    mp_hist_record(&hist, 19);
    mp_hist_snapshot_take(&hist, &snap);
    MP_CHECK(mp_hist_quantile(&snap, 0.5) == 7.0);
    MP_CHECK(mp_hist_quantile(&snap, 0.67) == 19.0);
    MP_CHECK(mp_hist_quantile(&snap, 0.0) == 7.0);
    MP_CHECK(mp_hist_mean(&snap) == 11.0);
}

/* One value at a time across the whole range: the bucket bound must stay within 1/32
 * above the value, never below it (the max cap is disabled by recording a larger value
 * second and asking for the lower one). */
MP_TEST(relative_error_bound_over_range)
{
    int bad = 0;
    for (uint64_t v = 32; v < (UINT64_C(1) << 32); v = v + v / 7 + 1) {
        mp_hist_init(&hist);
        mp_hist_record(&hist, v);
        mp_hist_record(&hist, UINT64_C(1) << 32);
        mp_hist_snapshot_take(&hist, &snap);
        double got = mp_hist_quantile(&snap, 0.5);
        if (!within_rel(got, (double)v, 1.0 / 32.0)) {
            if (bad++ < 5)
                fprintf(stderr, "v=%llu got %f\n", (unsigned long long)v, got);
        }
    }
    MP_CHECK_EQ_INT(bad, 0);
}

MP_TEST(bucket_edges)
{
    /* Power-of-two boundaries and the last value of each sub-bucket. */
    static const uint64_t vals[] = {31, 32, 63, 64, 65, 127, 128, 1023, 1024, 1055, 1056,
                                    (UINT64_C(1) << 31), (UINT64_C(1) << 32) - 1};
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
        mp_hist_init(&hist);
        mp_hist_record(&hist, vals[i]);
        mp_hist_record(&hist, UINT64_C(1) << 32);
        mp_hist_snapshot_take(&hist, &snap);
        double got = mp_hist_quantile(&snap, 0.5);
        if (!within_rel(got, (double)vals[i], 1.0 / 32.0)) {
            fprintf(stderr, "v=%llu got %f\n", (unsigned long long)vals[i], got);
            *mp_test_failed_ = 1;
        }
    }
    /* 32..63 still have one bucket per value. */
    mp_hist_init(&hist);
    mp_hist_record(&hist, 45);
    mp_hist_record(&hist, 1000);
    mp_hist_snapshot_take(&hist, &snap);
    MP_CHECK(mp_hist_quantile(&snap, 0.5) == 45.0);
}

MP_TEST(huge_values_clamp)
{
    mp_hist_init(&hist);
    mp_hist_record(&hist, 10);
    mp_hist_record(&hist, UINT64_C(1) << 40);
    mp_hist_record(&hist, UINT64_MAX);
    mp_hist_snapshot_take(&hist, &snap);
    MP_CHECK_EQ_INT(snap.count, 3);
    MP_CHECK(snap.max_us == (UINT64_C(1) << 32));
    MP_CHECK(snap.buckets[MP_HIST_BUCKETS - 1] == 2);
    MP_CHECK(mp_hist_quantile(&snap, 1.0) == (double)(UINT64_C(1) << 32));
    MP_CHECK(mp_hist_quantile(&snap, 0.2) == 10.0);
    /* The sum did not wrap. */
    MP_CHECK(snap.sum_us == 10 + 2 * (UINT64_C(1) << 32));
}

MP_TEST(out_of_range_q_is_clamped)
{
    mp_hist_init(&hist);
    for (uint64_t v = 1; v <= 10; v++)
        mp_hist_record(&hist, v);
    mp_hist_snapshot_take(&hist, &snap);
    MP_CHECK(mp_hist_quantile(&snap, -1.0) == 1.0);
    MP_CHECK(mp_hist_quantile(&snap, 2.0) == 10.0);
    MP_CHECK(mp_hist_quantile(&snap, NAN) == 1.0);
}

#define THREADS 4
#define PER_THREAD 1000000

static void *record_many(void *arg)
{
    uint64_t base = (uint64_t)(uintptr_t)arg;
    for (uint64_t i = 0; i < PER_THREAD; i++)
        mp_hist_record(&hist, base + (i & 1023));
    return NULL;
}

MP_TEST(concurrent_counts_are_exact)
{
    mp_hist_init(&hist);
    pthread_t t[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++)
        MP_CHECK_EQ_INT(pthread_create(&t[i], NULL, record_many, (void *)(i * 1000)), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    mp_hist_snapshot_take(&hist, &snap);
    MP_CHECK_EQ_INT(snap.count, (uint64_t)THREADS * PER_THREAD);
    uint64_t in_buckets = 0;
    for (size_t i = 0; i < MP_HIST_BUCKETS; i++)
        in_buckets += snap.buckets[i];
    MP_CHECK_EQ_INT(in_buckets, (uint64_t)THREADS * PER_THREAD);
    /* Each thread records base + 0..1023, PER_THREAD/1024 full cycles plus a tail. */
    uint64_t want_sum = 0;
    for (uint64_t th = 0; th < THREADS; th++)
        for (uint64_t i = 0; i < PER_THREAD; i++)
            want_sum += th * 1000 + (i & 1023);
    MP_CHECK(snap.sum_us == want_sum);
    MP_CHECK_EQ_INT(snap.max_us, 3000 + 1023);
}

MP_TEST(reset_clears_everything)
{
    mp_hist_init(&hist);
    for (uint64_t v = 1; v <= 5000; v++)
        mp_hist_record(&hist, v * 3);
    mp_hist_reset(&hist);
    mp_hist_snapshot_take(&hist, &snap);
    MP_CHECK_EQ_INT(snap.count, 0);
    MP_CHECK_EQ_INT(snap.sum_us, 0);
    MP_CHECK_EQ_INT(snap.max_us, 0);
    int nonzero = 0;
    for (size_t i = 0; i < MP_HIST_BUCKETS; i++)
        nonzero += snap.buckets[i] != 0;
    MP_CHECK_EQ_INT(nonzero, 0);
    MP_CHECK(mp_hist_quantile(&snap, 0.99) == 0.0);
    /* Usable again after reset. */
    mp_hist_record(&hist, 42);
    mp_hist_snapshot_take(&hist, &snap);
    MP_CHECK(mp_hist_quantile(&snap, 0.5) == 42.0);
}

MP_TEST_MAIN(MP_CASE(empty_reports_zero), MP_CASE(uniform_quantiles_within_error),
             MP_CASE(small_values_are_exact), MP_CASE(relative_error_bound_over_range),
             MP_CASE(bucket_edges), MP_CASE(huge_values_clamp),
             MP_CASE(out_of_range_q_is_clamped), MP_CASE(concurrent_counts_are_exact),
             MP_CASE(reset_clears_everything))
