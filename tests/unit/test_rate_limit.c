/*
 * test_rate_limit.c — checks the rate limiter's promises with a virtual clock: exact
 * bursts and spacing for each rate and for rates combined, exact retry-after values,
 * no over-admission with eight threads on one bucket, the target selectors, the bound
 * and eviction order of the per-source table, and the parse errors a person reads.
 */
#include "rate_limit.h"
#include "mp_test.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/un.h>

#define MS UINT64_C(1000000)
#define SEC UINT64_C(1000000000)
/* Any start will do; not 0, so "TAT 0 = idle" is not what makes the first burst pass. */
#define T0 (UINT64_C(5000) * SEC)

static mp_rate_limiter *make(int64_t ps, int64_t pm, int64_t ph, int64_t burst,
                             const char *target, uint32_t max_sources)
{
    char err[256] = "";
    mp_rate_spec spec = {ps, pm, ph, burst, target, max_sources};
    mp_rate_limiter *rl = mp_rate_limiter_new(&spec, err, sizeof(err));
    if (!rl)
        fprintf(stderr, "mp_rate_limiter_new: %s\n", err);
    return rl;
}

static struct sockaddr_storage addr_of(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(40000);
    } else if (inet_pton(AF_INET6, ip, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(40001);
    } else {
        fprintf(stderr, "bad test address %s\n", ip);
        abort();
    }
    return ss;
}

/* Distinct IPv4 sources 10.x.y.z for i < 2^24. */
static struct sockaddr_storage nth_v4(uint32_t i)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl((10u << 24) | (i & 0xffffffu));
    return ss;
}

#define SA(ss) ((const struct sockaddr *)&(ss))

/* A test cannot go on without its limiter; make() has printed why. */
#define REQUIRE_LIMITER(rl)            \
    do {                               \
        if (!(rl)) {                   \
            MP_CHECK((rl) != NULL);    \
            return;                    \
        }                              \
    } while (0)

/* Requests from one source at one instant until the first refusal: the burst left. */
static unsigned drain(mp_rate_limiter *rl, const struct sockaddr *src, const char *route,
                      uint64_t now, uint64_t *retry)
{
    unsigned n = 0;
    uint64_t r = 0;
    while (n < 100000 && mp_rate_limiter_allow(rl, src, route, now, &r)) {
        if (r != 0)
            n = 1000000; /* an allowed request must report retry 0: fail the count */
        n++;
    }
    if (retry)
        *retry = r;
    return n;
}

/* ------------------------------------------------------------------ GCRA timing */

MP_TEST(burst_then_refusal_exact)
{
    mp_rate_limiter *rl = make(10, 0, 0, 5, "*", 0);
    REQUIRE_LIMITER(rl);
    uint64_t retry = 12345;
    for (int i = 0; i < 5; i++) {
        MP_CHECK(mp_rate_limiter_allow(rl, NULL, NULL, T0, &retry));
        MP_CHECK_EQ_INT(retry, 0);
    }
    MP_CHECK(!mp_rate_limiter_allow(rl, NULL, NULL, T0, &retry));
    MP_CHECK_EQ_INT(retry, 100 * MS);
    MP_CHECK(!mp_rate_limiter_allow(rl, NULL, NULL, T0 + 40 * MS, &retry));
    MP_CHECK_EQ_INT(retry, 60 * MS);
    MP_CHECK(!mp_rate_limiter_allow(rl, NULL, NULL, T0, NULL)); /* NULL retry is fine */

    mp_rate_stats st;
    mp_rate_limiter_stats(rl, &st);
    MP_CHECK_EQ_INT(st.allowed, 5);
    MP_CHECK_EQ_INT(st.refused, 3);
    MP_CHECK_EQ_INT(st.sources_tracked, 0);
    mp_rate_limiter_free(rl);
}

MP_TEST(per_second_refill_spacing)
{
    mp_rate_limiter *rl = make(10, 0, 0, 5, "", 0);
    REQUIRE_LIMITER(rl);
    uint64_t retry;
    MP_CHECK_EQ_INT(drain(rl, NULL, NULL, T0, &retry), 5);
    MP_CHECK_EQ_INT(retry, 100 * MS);
    /* One nanosecond early is still early. */
    MP_CHECK(!mp_rate_limiter_allow(rl, NULL, NULL, T0 + 100 * MS - 1, &retry));
    MP_CHECK_EQ_INT(retry, 1);
    /* Then one per 100 ms, exactly on time, for ten seconds. */
    for (uint64_t k = 1; k <= 100; k++) {
        uint64_t t = T0 + k * 100 * MS;
        MP_CHECK(mp_rate_limiter_allow(rl, NULL, NULL, t, &retry));
        MP_CHECK(!mp_rate_limiter_allow(rl, NULL, NULL, t, &retry));
        MP_CHECK_EQ_INT(retry, 100 * MS);
        MP_CHECK(!mp_rate_limiter_allow(rl, NULL, NULL, t + 30 * MS, &retry));
        MP_CHECK_EQ_INT(retry, 70 * MS);
    }
    /* After 250 ms of silence, 2 of the 5 slots have come back (not 2.5, not 5). */
    uint64_t t = T0 + 100 * 100 * MS + 250 * MS;
    MP_CHECK_EQ_INT(drain(rl, NULL, NULL, t, &retry), 2);
    MP_CHECK_EQ_INT(retry, 50 * MS);
    /* A long idle restores the whole burst and no more. */
    MP_CHECK_EQ_INT(drain(rl, NULL, NULL, t + 3600 * SEC, NULL), 5);
    mp_rate_limiter_free(rl);
}

MP_TEST(default_burst)
{
    uint64_t retry;
    mp_rate_limiter *rl = make(10, 0, 0, 0, "*", 0); /* burst = per_second */
    REQUIRE_LIMITER(rl);
    MP_CHECK_EQ_INT(drain(rl, NULL, NULL, T0, &retry), 10);
    MP_CHECK_EQ_INT(retry, 100 * MS);
    mp_rate_limiter_free(rl);

    rl = make(0, 30, 0, 0, "*", 0); /* minute-only: burst 1, one per 2 s */
    REQUIRE_LIMITER(rl);
    MP_CHECK_EQ_INT(drain(rl, NULL, NULL, T0, &retry), 1);
    MP_CHECK_EQ_INT(retry, 2 * SEC);
    mp_rate_limiter_free(rl);

    rl = make(0, 0, 7200, 0, "*", 0); /* hour-only: burst 1, one per 500 ms */
    REQUIRE_LIMITER(rl);
    MP_CHECK_EQ_INT(drain(rl, NULL, NULL, T0, &retry), 1);
    MP_CHECK_EQ_INT(retry, 500 * MS);
    mp_rate_limiter_free(rl);
}

MP_TEST(per_minute_spacing)
{
    mp_rate_limiter *rl = make(0, 6, 0, 2, "*", 0); /* one per 10 s, burst 2 */
    REQUIRE_LIMITER(rl);
    uint64_t retry;
    MP_CHECK_EQ_INT(drain(rl, NULL, NULL, T0, &retry), 2);
    MP_CHECK_EQ_INT(retry, 10 * SEC);
    MP_CHECK(!mp_rate_limiter_allow(rl, NULL, NULL, T0 + 10 * SEC - 1, &retry));
    MP_CHECK_EQ_INT(retry, 1);
    MP_CHECK_EQ_INT(drain(rl, NULL, NULL, T0 + 10 * SEC, &retry), 1);
    MP_CHECK_EQ_INT(retry, 10 * SEC);
    /* Over one minute from idle: the burst of 2 plus one per 10 s = 8 at most. */
    mp_rate_limiter_free(rl);
    rl = make(0, 6, 0, 2, "*", 0);
    REQUIRE_LIMITER(rl);
    unsigned passed = 0;
    for (uint64_t t = T0; t < T0 + 60 * SEC; t += 250 * MS)
        passed += mp_rate_limiter_allow(rl, NULL, NULL, t, NULL);
    MP_CHECK_EQ_INT(passed, 2 + 5);
    mp_rate_limiter_free(rl);
}

MP_TEST(per_hour_spacing)
{
    mp_rate_limiter *rl = make(0, 0, 4, 3, "*", 0); /* one per 15 min, burst 3 */
    REQUIRE_LIMITER(rl);
    uint64_t retry;
    MP_CHECK_EQ_INT(drain(rl, NULL, NULL, T0, &retry), 3);
    MP_CHECK_EQ_INT(retry, 900 * SEC);
    MP_CHECK(!mp_rate_limiter_allow(rl, NULL, NULL, T0 + 899 * SEC, &retry));
    MP_CHECK_EQ_INT(retry, 1 * SEC);
    MP_CHECK_EQ_INT(drain(rl, NULL, NULL, T0 + 900 * SEC, &retry), 1);
    MP_CHECK_EQ_INT(retry, 900 * SEC);
    MP_CHECK_EQ_INT(drain(rl, NULL, NULL, T0 + 2700 * SEC, &retry), 2);
    mp_rate_limiter_free(rl);
}

/* A rate that does not divide its period: the interval rounds up, so the limiter never
 * admits more than the configured rate over a long run. */
MP_TEST(uneven_interval_rounds_up)
{
    mp_rate_limiter *rl = make(3, 0, 0, 1, "*", 0); /* 333333333.3 ns -> 333333334 */
    REQUIRE_LIMITER(rl);
    /* Each request exactly when the last refusal said: 3000 of them span at least
     * 1000 s, so three per second is never exceeded. */
    uint64_t t = T0, retry;
    for (int i = 0; i < 3000; i++) {
        MP_CHECK(mp_rate_limiter_allow(rl, NULL, NULL, t, &retry));
        MP_CHECK(!mp_rate_limiter_allow(rl, NULL, NULL, t, &retry));
        MP_CHECK_EQ_INT(retry, 333333334);
        t += retry;
    }
    MP_CHECK_EQ_INT(t - T0, UINT64_C(3000) * 333333334);
    MP_CHECK(t - T0 >= 1000 * SEC);
    mp_rate_limiter_free(rl);
}

MP_TEST(combined_rates_all_must_conform)
{
    uint64_t retry;
    /* 1/s and 30/min (one per 2 s), burst 2: the minute rate binds. */
    mp_rate_limiter *rl = make(1, 30, 0, 2, "*", 0);
    REQUIRE_LIMITER(rl);
    MP_CHECK_EQ_INT(drain(rl, NULL, NULL, T0, &retry), 2);
    MP_CHECK_EQ_INT(retry, 2 * SEC); /* the per-second cell alone would say 1 s */
    /* At +1 s the per-second cell conforms and the minute cell refuses. A hundred
     * refusals there must take nothing from the per-second cell. */
    for (int i = 0; i < 100; i++) {
        MP_CHECK(!mp_rate_limiter_allow(rl, NULL, NULL, T0 + 1 * SEC, &retry));
        MP_CHECK_EQ_INT(retry, 1 * SEC);
    }
    MP_CHECK_EQ_INT(drain(rl, NULL, NULL, T0 + 2 * SEC, &retry), 1);
    MP_CHECK_EQ_INT(retry, 2 * SEC);
    mp_rate_limiter_free(rl);

    /* 1/s and 120/min (one per 500 ms): now the second rate binds. */
    rl = make(1, 120, 0, 2, "*", 0);
    REQUIRE_LIMITER(rl);
    MP_CHECK_EQ_INT(drain(rl, NULL, NULL, T0, &retry), 2);
    MP_CHECK_EQ_INT(retry, 1 * SEC);
    MP_CHECK(!mp_rate_limiter_allow(rl, NULL, NULL, T0 + 500 * MS, &retry));
    MP_CHECK_EQ_INT(retry, 500 * MS);
    MP_CHECK_EQ_INT(drain(rl, NULL, NULL, T0 + 1 * SEC, NULL), 1);
    mp_rate_limiter_free(rl);

    /* All three: 10/s, 300/min (200 ms), 3600/h (1 s), burst 4: 4 at once, then the
     * hour rate spaces them a second apart. */
    rl = make(10, 300, 3600, 4, "*", 0);
    REQUIRE_LIMITER(rl);
    MP_CHECK_EQ_INT(drain(rl, NULL, NULL, T0, &retry), 4);
    MP_CHECK_EQ_INT(retry, 1 * SEC);
    MP_CHECK(!mp_rate_limiter_allow(rl, NULL, NULL, T0 + 999 * MS, &retry));
    MP_CHECK_EQ_INT(retry, 1 * MS);
    MP_CHECK_EQ_INT(drain(rl, NULL, NULL, T0 + 1 * SEC, &retry), 1);
    MP_CHECK_EQ_INT(retry, 1 * SEC);
    mp_rate_stats st;
    mp_rate_limiter_stats(rl, &st);
    MP_CHECK_EQ_INT(st.allowed, 5);
    MP_CHECK_EQ_INT(st.refused, 3);
    mp_rate_limiter_free(rl);
}

/* ------------------------------------------------------------------ contention */

#define HAMMER_THREADS 8
#define HAMMER_TRIES 20000

struct hammer {
    mp_rate_limiter *rl;
    pthread_barrier_t *start;
    uint64_t now;
    const struct sockaddr_storage *srcs; /* NULL = no source */
    unsigned nsrcs;
    unsigned tries;
    unsigned allowed;
};

static void *hammer_main(void *arg)
{
    struct hammer *h = arg;
    pthread_barrier_wait(h->start);
    for (unsigned i = 0; i < h->tries; i++) {
        const struct sockaddr *src = h->srcs ? SA(h->srcs[i % h->nsrcs]) : NULL;
        h->allowed += mp_rate_limiter_allow(h->rl, src, NULL, h->now, NULL);
    }
    return NULL;
}

/* Eight threads at one virtual instant; returns how many passed in total. */
static unsigned hammer(mp_rate_limiter *rl, uint64_t now,
                       const struct sockaddr_storage *const *srcs, unsigned nsrcs,
                       unsigned tries)
{
    pthread_t tid[HAMMER_THREADS];
    struct hammer h[HAMMER_THREADS];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, HAMMER_THREADS);
    for (unsigned i = 0; i < HAMMER_THREADS; i++) {
        h[i] = (struct hammer){rl, &start, now, srcs ? srcs[i] : NULL, nsrcs, tries, 0};
        pthread_create(&tid[i], NULL, hammer_main, &h[i]);
    }
    unsigned total = 0;
    for (unsigned i = 0; i < HAMMER_THREADS; i++) {
        pthread_join(tid[i], NULL);
        total += h[i].allowed;
    }
    pthread_barrier_destroy(&start);
    return total;
}

MP_TEST(threads_shared_bucket_exact)
{
    mp_rate_limiter *rl = make(100, 0, 0, 50, "*", 0); /* 10 ms interval */
    REQUIRE_LIMITER(rl);
    MP_CHECK_EQ_INT(hammer(rl, T0, NULL, 0, HAMMER_TRIES), 50);
    MP_CHECK_EQ_INT(hammer(rl, T0, NULL, 0, HAMMER_TRIES), 0);
    MP_CHECK_EQ_INT(hammer(rl, T0 + 7 * 10 * MS, NULL, 0, HAMMER_TRIES), 7);
    MP_CHECK_EQ_INT(hammer(rl, T0 + 7 * 10 * MS + 10 * MS - 1, NULL, 0, HAMMER_TRIES), 0);
    MP_CHECK_EQ_INT(hammer(rl, T0 + 8 * 10 * MS, NULL, 0, HAMMER_TRIES), 1);
    mp_rate_stats st;
    mp_rate_limiter_stats(rl, &st);
    MP_CHECK_EQ_INT(st.allowed, 58);
    MP_CHECK_EQ_INT(st.allowed + st.refused, 5ull * HAMMER_THREADS * HAMMER_TRIES);
    mp_rate_limiter_free(rl);
}

MP_TEST(threads_two_cells_exact)
{
    /* 100/s (10 ms) and 600/min (100 ms), burst 50: every thread commits two cells. */
    mp_rate_limiter *rl = make(100, 600, 0, 50, "*", 0);
    REQUIRE_LIMITER(rl);
    MP_CHECK_EQ_INT(hammer(rl, T0, NULL, 0, HAMMER_TRIES), 50);
    MP_CHECK_EQ_INT(hammer(rl, T0 + 70 * MS, NULL, 0, HAMMER_TRIES), 0);
    MP_CHECK_EQ_INT(hammer(rl, T0 + 700 * MS, NULL, 0, HAMMER_TRIES), 7);
    mp_rate_limiter_free(rl);
}

MP_TEST(threads_per_source_exact)
{
    /* 256 sources, every thread hitting all of them: each gets exactly its burst. */
    enum { NSRC = 256 };
    static struct sockaddr_storage srcs[NSRC];
    const struct sockaddr_storage *per_thread[HAMMER_THREADS];
    for (uint32_t i = 0; i < NSRC; i++)
        srcs[i] = nth_v4(i * 7919u);
    for (unsigned t = 0; t < HAMMER_THREADS; t++)
        per_thread[t] = srcs;
    mp_rate_limiter *rl = make(1, 0, 0, 3, "ip", 0);
    REQUIRE_LIMITER(rl);
    MP_CHECK_EQ_INT(hammer(rl, T0, per_thread, NSRC, NSRC * 20), NSRC * 3);
    MP_CHECK_EQ_INT(hammer(rl, T0 + 2 * SEC, per_thread, NSRC, NSRC * 20), NSRC * 2);
    mp_rate_stats st;
    mp_rate_limiter_stats(rl, &st);
    MP_CHECK_EQ_INT(st.sources_tracked, NSRC);
    MP_CHECK_EQ_INT(st.sources_evicted, 0);
    mp_rate_limiter_free(rl);
}

MP_TEST(threads_table_churn_bounded)
{
    /* Disjoint fresh sources per thread against a 64-entry table. */
    enum { PER = 2000 };
    static struct sockaddr_storage srcs[HAMMER_THREADS][PER];
    const struct sockaddr_storage *per_thread[HAMMER_THREADS];
    for (unsigned t = 0; t < HAMMER_THREADS; t++) {
        for (uint32_t i = 0; i < PER; i++)
            srcs[t][i] = nth_v4(t * PER + i);
        per_thread[t] = srcs[t];
    }
    mp_rate_limiter *rl = make(1, 0, 0, 1, "ip", 64);
    REQUIRE_LIMITER(rl);
    MP_CHECK_EQ_INT(hammer(rl, T0, per_thread, PER, PER), HAMMER_THREADS * PER);
    mp_rate_stats st;
    mp_rate_limiter_stats(rl, &st);
    MP_CHECK_EQ_INT(st.sources_tracked, 64);
    MP_CHECK_EQ_INT(st.sources_tracked + st.sources_evicted, HAMMER_THREADS * PER);
    mp_rate_limiter_free(rl);
}

/* ------------------------------------------------------------------ targets */

MP_TEST(per_ip_independent_and_mapped)
{
    mp_rate_limiter *rl = make(1, 0, 0, 3, "ip", 0);
    REQUIRE_LIMITER(rl);
    struct sockaddr_storage a = addr_of("10.0.0.1"), b = addr_of("10.0.0.2"),
                            a6 = addr_of("::ffff:10.0.0.1"), v6 = addr_of("2001:db8::1"),
                            c6 = addr_of("::ffff:10.0.0.3"), c = addr_of("10.0.0.3");
    uint64_t retry;
    MP_CHECK_EQ_INT(drain(rl, SA(a), NULL, T0, &retry), 3);
    MP_CHECK_EQ_INT(retry, 1 * SEC);
    MP_CHECK_EQ_INT(drain(rl, SA(b), NULL, T0, NULL), 3);
    /* The mapped form of a is a, so its burst is already spent. */
    MP_CHECK(!mp_rate_limiter_allow(rl, SA(a6), NULL, T0, &retry));
    MP_CHECK_EQ_INT(retry, 1 * SEC);
    MP_CHECK_EQ_INT(drain(rl, SA(v6), NULL, T0, NULL), 3);
    /* And the other way round: first seen mapped, then as plain IPv4. */
    MP_CHECK(mp_rate_limiter_allow(rl, SA(c6), NULL, T0, NULL));
    MP_CHECK_EQ_INT(drain(rl, SA(c), NULL, T0, NULL), 2);
    /* Refill is per source too. */
    MP_CHECK_EQ_INT(drain(rl, SA(a), NULL, T0 + 1 * SEC, NULL), 1);

    mp_rate_stats st;
    mp_rate_limiter_stats(rl, &st);
    MP_CHECK_EQ_INT(st.sources_tracked, 4);
    MP_CHECK_EQ_INT(st.allowed, 3 + 3 + 3 + 3 + 1);

    /* A source with no IP address is not covered by an address target. */
    struct sockaddr_un un;
    memset(&un, 0, sizeof(un));
    un.sun_family = AF_UNIX;
    for (int i = 0; i < 10; i++)
        MP_CHECK(mp_rate_limiter_allow(rl, (const struct sockaddr *)&un, NULL, T0, &retry));
    MP_CHECK(mp_rate_limiter_allow(rl, NULL, NULL, T0, &retry));
    MP_CHECK_EQ_INT(retry, 0);
    mp_rate_stats st2;
    mp_rate_limiter_stats(rl, &st2);
    MP_CHECK_EQ_INT(st2.allowed, st.allowed);
    MP_CHECK_EQ_INT(st2.sources_tracked, 4);
    mp_rate_limiter_free(rl);
}

MP_TEST(ip_cidr_leaves_outside_untouched)
{
    mp_rate_limiter *rl = make(1, 0, 0, 2, "ip:10.0.0.0/8", 0);
    REQUIRE_LIMITER(rl);
    struct sockaddr_storage in1 = addr_of("10.1.1.1"), in2 = addr_of("10.2.2.2"),
                            in_mapped = addr_of("::ffff:10.9.9.9"),
                            out4 = addr_of("192.168.0.1"), out6 = addr_of("2001:db8::1"),
                            out_mapped = addr_of("::ffff:11.0.0.1");
    MP_CHECK_EQ_INT(drain(rl, SA(in1), NULL, T0, NULL), 2);
    MP_CHECK_EQ_INT(drain(rl, SA(in2), NULL, T0, NULL), 2); /* per source inside */
    MP_CHECK_EQ_INT(drain(rl, SA(in_mapped), NULL, T0, NULL), 2);
    uint64_t retry = 99;
    for (int i = 0; i < 1000; i++) {
        MP_CHECK(mp_rate_limiter_allow(rl, SA(out4), NULL, T0, &retry));
        MP_CHECK(mp_rate_limiter_allow(rl, SA(out6), NULL, T0, NULL));
        MP_CHECK(mp_rate_limiter_allow(rl, SA(out_mapped), NULL, T0, NULL));
    }
    MP_CHECK_EQ_INT(retry, 0);
    mp_rate_stats st;
    mp_rate_limiter_stats(rl, &st);
    MP_CHECK_EQ_INT(st.sources_tracked, 3);
    MP_CHECK_EQ_INT(st.allowed, 6);
    MP_CHECK_EQ_INT(st.refused, 3);
    mp_rate_limiter_free(rl);

    /* An IPv6 CIDR; IPv4 sources are outside it. */
    rl = make(1, 0, 0, 1, "ip:2001:db8::/32", 0);
    REQUIRE_LIMITER(rl);
    struct sockaddr_storage six_in = addr_of("2001:db8:ffff::7"),
                            six_out = addr_of("2001:db9::7"), four = addr_of("10.0.0.1");
    MP_CHECK_EQ_INT(drain(rl, SA(six_in), NULL, T0, NULL), 1);
    for (int i = 0; i < 100; i++) {
        MP_CHECK(mp_rate_limiter_allow(rl, SA(six_out), NULL, T0, NULL));
        MP_CHECK(mp_rate_limiter_allow(rl, SA(four), NULL, T0, NULL));
    }
    mp_rate_limiter_free(rl);
}

MP_TEST(cidr_target_shares_one_bucket)
{
    mp_rate_limiter *rl = make(1, 0, 0, 3, "cidr:10.0.0.0/8", 0);
    REQUIRE_LIMITER(rl);
    struct sockaddr_storage a = addr_of("10.0.0.1"), b = addr_of("10.200.0.1"),
                            mapped = addr_of("::ffff:10.5.5.5"), out = addr_of("11.0.0.1");
    uint64_t retry;
    MP_CHECK(mp_rate_limiter_allow(rl, SA(a), NULL, T0, NULL));
    MP_CHECK(mp_rate_limiter_allow(rl, SA(a), NULL, T0, NULL));
    MP_CHECK_EQ_INT(drain(rl, SA(b), NULL, T0, &retry), 1);
    MP_CHECK_EQ_INT(retry, 1 * SEC);
    MP_CHECK(!mp_rate_limiter_allow(rl, SA(mapped), NULL, T0, NULL));
    for (int i = 0; i < 100; i++)
        MP_CHECK(mp_rate_limiter_allow(rl, SA(out), NULL, T0, NULL));
    MP_CHECK(mp_rate_limiter_allow(rl, NULL, NULL, T0, NULL)); /* no source: not covered */
    MP_CHECK_EQ_INT(drain(rl, SA(mapped), NULL, T0 + 1 * SEC, NULL), 1);
    mp_rate_stats st;
    mp_rate_limiter_stats(rl, &st);
    MP_CHECK_EQ_INT(st.sources_tracked, 0); /* one shared bucket, no table */
    MP_CHECK_EQ_INT(st.allowed, 4);
    mp_rate_limiter_free(rl);
}

MP_TEST(route_target_only_matching_route)
{
    mp_rate_limiter *rl = make(1, 0, 0, 2, "route:api", 0);
    REQUIRE_LIMITER(rl);
    struct sockaddr_storage a = addr_of("10.0.0.1"), b = addr_of("2001:db8::2");
    uint64_t retry;
    MP_CHECK(mp_rate_limiter_allow(rl, SA(a), "api", T0, NULL));
    MP_CHECK(mp_rate_limiter_allow(rl, SA(b), "api", T0, NULL)); /* one bucket for all */
    MP_CHECK(!mp_rate_limiter_allow(rl, NULL, "api", T0, &retry));
    MP_CHECK_EQ_INT(retry, 1 * SEC);
    const char *others[] = {"web", "ap", "api2", "API", ""};
    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++)
        for (int k = 0; k < 50; k++)
            MP_CHECK(mp_rate_limiter_allow(rl, SA(a), others[i], T0, NULL));
    for (int k = 0; k < 50; k++)
        MP_CHECK(mp_rate_limiter_allow(rl, SA(a), NULL, T0, NULL));
    mp_rate_stats st;
    mp_rate_limiter_stats(rl, &st);
    MP_CHECK_EQ_INT(st.allowed, 2);
    MP_CHECK_EQ_INT(st.refused, 1);
    mp_rate_limiter_free(rl);
}

MP_TEST(star_target_covers_everything)
{
    mp_rate_limiter *rl = make(1, 0, 0, 3, "*", 0);
    REQUIRE_LIMITER(rl);
    struct sockaddr_storage a = addr_of("10.0.0.1"), b = addr_of("2001:db8::2");
    MP_CHECK(mp_rate_limiter_allow(rl, SA(a), "r1", T0, NULL));
    MP_CHECK(mp_rate_limiter_allow(rl, SA(b), NULL, T0, NULL));
    MP_CHECK(mp_rate_limiter_allow(rl, NULL, "r2", T0, NULL));
    MP_CHECK(!mp_rate_limiter_allow(rl, SA(a), "r3", T0, NULL));
    MP_CHECK(!mp_rate_limiter_allow(rl, NULL, NULL, T0, NULL));
    mp_rate_limiter_free(rl);
}

/* ------------------------------------------------------------------ table bound */

static void fill(mp_rate_limiter *rl, uint32_t from, uint32_t count, uint64_t now)
{
    for (uint32_t i = from; i < from + count; i++) {
        struct sockaddr_storage ss = nth_v4(i);
        mp_rate_limiter_allow(rl, SA(ss), NULL, now, NULL);
    }
}

static void check_bound(int *mp_test_failed_, uint32_t max)
{
    mp_rate_limiter *rl = make(1, 0, 0, 1, "ip", max);
    REQUIRE_LIMITER(rl);
    uint32_t want = max ? max : MP_RATE_DEFAULT_MAX_SOURCES;
    mp_rate_stats st, full;
    /* Every source is busy (one request, burst 1), so each insert past the bound must
     * recycle a busy entry: the table never grows past want. */
    fill(rl, 0, 2 * want, T0);
    mp_rate_limiter_stats(rl, &full);
    fill(rl, 2 * want, want, T0);
    mp_rate_limiter_stats(rl, &st);
    MP_CHECK(st.sources_tracked <= want);
    MP_CHECK_EQ_INT(st.sources_tracked, want); /* every shard is full by now */
    MP_CHECK_EQ_INT(st.sources_tracked + st.sources_evicted, 3ull * want);
    MP_CHECK(st.sources_evicted >= 2ull * want);
    MP_CHECK_EQ_INT(st.sources_evicted_busy, st.sources_evicted);
    MP_CHECK_EQ_INT(st.memory_bytes, full.memory_bytes); /* no growth once full */
    MP_CHECK(st.memory_bytes <= (uint64_t)want * MP_RATE_SOURCE_BYTES_MAX + 64 * 1024);
    /* Later, with everything idle, recycling takes idle entries only. A quarter of
     * the bound, so no shard sees more new sources than it has idle entries. */
    fill(rl, 3 * want, want / 4, T0 + 10 * SEC);
    mp_rate_stats later;
    mp_rate_limiter_stats(rl, &later);
    MP_CHECK_EQ_INT(later.sources_evicted_busy, st.sources_evicted_busy);
    MP_CHECK_EQ_INT(later.sources_evicted, st.sources_evicted + want / 4);
    MP_CHECK(later.sources_tracked <= want);
    mp_rate_limiter_free(rl);
}

MP_TEST(table_bound_small)
{
    check_bound(mp_test_failed_, 64);
}

MP_TEST(table_bound_sharded)
{
    check_bound(mp_test_failed_, 5000);
}

MP_TEST(table_bound_default)
{
    check_bound(mp_test_failed_, 0);
}

MP_TEST(busy_source_outlives_idle_ones)
{
    /* 16 entries (one shard). B is the least recently used entry but still owes
     * time; 15 later sources are idle by the time the table overflows. */
    mp_rate_limiter *rl = make(1, 0, 0, 10, "ip", 16);
    REQUIRE_LIMITER(rl);
    struct sockaddr_storage b = addr_of("192.0.2.1"), fresh = addr_of("192.0.2.99");
    MP_CHECK_EQ_INT(drain(rl, SA(b), NULL, T0, NULL), 10); /* B idle at T0 + 10 s */
    fill(rl, 0, 15, T0 + 1 * SEC);                          /* idle at T0 + 2 s */
    mp_rate_stats st;
    mp_rate_limiter_stats(rl, &st);
    MP_CHECK_EQ_INT(st.sources_tracked, 16);
    MP_CHECK_EQ_INT(st.sources_evicted, 0);

    MP_CHECK(mp_rate_limiter_allow(rl, SA(fresh), NULL, T0 + 3 * SEC, NULL));
    mp_rate_limiter_stats(rl, &st);
    MP_CHECK_EQ_INT(st.sources_tracked, 16);
    MP_CHECK_EQ_INT(st.sources_evicted, 1);
    MP_CHECK_EQ_INT(st.sources_evicted_busy, 0);
    /* B kept its debt: 3 s refilled 3 slots, not a fresh 10. */
    uint64_t retry;
    MP_CHECK_EQ_INT(drain(rl, SA(b), NULL, T0 + 3 * SEC, &retry), 3);
    MP_CHECK_EQ_INT(retry, 1 * SEC);
    mp_rate_limiter_free(rl);
}

MP_TEST(all_busy_evicts_soonest_idle)
{
    mp_rate_limiter *rl = make(1, 0, 0, 10, "ip", 4);
    REQUIRE_LIMITER(rl);
    struct sockaddr_storage a = addr_of("192.0.2.1"), b = addr_of("192.0.2.2"),
                            c = addr_of("192.0.2.3"), d = addr_of("192.0.2.4"),
                            e = addr_of("192.0.2.5");
    /* Debts: a 4 s, b 1 s, c 3 s, d 2 s. */
    for (int i = 0; i < 4; i++)
        MP_CHECK(mp_rate_limiter_allow(rl, SA(a), NULL, T0, NULL));
    MP_CHECK(mp_rate_limiter_allow(rl, SA(b), NULL, T0, NULL));
    for (int i = 0; i < 3; i++)
        MP_CHECK(mp_rate_limiter_allow(rl, SA(c), NULL, T0, NULL));
    for (int i = 0; i < 2; i++)
        MP_CHECK(mp_rate_limiter_allow(rl, SA(d), NULL, T0, NULL));
    MP_CHECK(mp_rate_limiter_allow(rl, SA(e), NULL, T0, NULL)); /* evicts b */
    mp_rate_stats st;
    mp_rate_limiter_stats(rl, &st);
    MP_CHECK_EQ_INT(st.sources_evicted, 1);
    MP_CHECK_EQ_INT(st.sources_evicted_busy, 1);
    MP_CHECK_EQ_INT(drain(rl, SA(a), NULL, T0, NULL), 6);
    MP_CHECK_EQ_INT(drain(rl, SA(c), NULL, T0, NULL), 7);
    MP_CHECK_EQ_INT(drain(rl, SA(d), NULL, T0, NULL), 8);
    MP_CHECK_EQ_INT(drain(rl, SA(b), NULL, T0, NULL), 10); /* forgotten: fresh burst */
    mp_rate_limiter_free(rl);
}

/* ------------------------------------------------------------------ parsing */

MP_TEST(target_parse_forms)
{
    mp_rate_target t;
    char err[256] = "";
    MP_CHECK_EQ_INT(mp_rate_target_parse("*", &t, err, sizeof(err)), 0);
    MP_CHECK_EQ_INT(t.kind, MP_RATE_TARGET_ALL);
    MP_CHECK_EQ_INT(mp_rate_target_parse("", &t, err, sizeof(err)), 0);
    MP_CHECK_EQ_INT(t.kind, MP_RATE_TARGET_ALL);
    MP_CHECK_EQ_INT(mp_rate_target_parse(NULL, &t, err, sizeof(err)), 0);
    MP_CHECK_EQ_INT(t.kind, MP_RATE_TARGET_ALL);

    MP_CHECK_EQ_INT(mp_rate_target_parse("route:api-v1", &t, err, sizeof(err)), 0);
    MP_CHECK_EQ_INT(t.kind, MP_RATE_TARGET_ROUTE);
    MP_CHECK_STR(t.route_id, "api-v1");

    MP_CHECK_EQ_INT(mp_rate_target_parse("ip", &t, err, sizeof(err)), 0);
    MP_CHECK_EQ_INT(t.kind, MP_RATE_TARGET_IP);
    MP_CHECK(!t.has_net);

    /* Host bits are ignored (cleared), as elsewhere in the host. */
    static const uint8_t ten[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 0};
    MP_CHECK_EQ_INT(mp_rate_target_parse("ip:10.1.2.3/8", &t, err, sizeof(err)), 0);
    MP_CHECK_EQ_INT(t.kind, MP_RATE_TARGET_IP);
    MP_CHECK(t.has_net);
    MP_CHECK_EQ_INT(t.prefix, 104);
    MP_CHECK(memcmp(t.net, ten, 16) == 0);

    static const uint8_t db8[16] = {0x20, 0x01, 0x0d, 0xb8};
    MP_CHECK_EQ_INT(mp_rate_target_parse("cidr:2001:db8:1::1/32", &t, err, sizeof(err)), 0);
    MP_CHECK_EQ_INT(t.kind, MP_RATE_TARGET_CIDR);
    MP_CHECK_EQ_INT(t.prefix, 32);
    MP_CHECK(memcmp(t.net, db8, 16) == 0);

    MP_CHECK_EQ_INT(mp_rate_target_parse("cidr:192.0.2.7", &t, err, sizeof(err)), 0);
    MP_CHECK_EQ_INT(t.prefix, 128); /* a bare address is one host */
    MP_CHECK_EQ_INT(mp_rate_target_parse("ip:0.0.0.0/0", &t, err, sizeof(err)), 0);
    MP_CHECK_EQ_INT(t.prefix, 96); /* every IPv4 source, no IPv6 one */
}

static void check_parse_error(int *mp_test_failed_, const char *target, const char *want)
{
    mp_rate_target t;
    char err[256] = "";
    MP_CHECK_EQ_INT(mp_rate_target_parse(target, &t, err, sizeof(err)), -EINVAL);
    MP_CHECK_CONTAINS(err, want);
}

MP_TEST(target_parse_errors)
{
    check_parse_error(mp_test_failed_, "ip:10.0.0.0/33",
                      "prefix length 33 is out of range 0..32 for an IPv4 address");
    check_parse_error(mp_test_failed_, "cidr:2001:db8::/129",
                      "prefix length 129 is out of range 0..128");
    check_parse_error(mp_test_failed_, "cidr:banana/8",
                      "\"banana\" is not an IPv4 or IPv6 address");
    check_parse_error(mp_test_failed_, "ip:10.0.0/8", "\"10.0.0\" is not an IPv4 or IPv6");
    check_parse_error(mp_test_failed_, "cidr:10.0.0.0/", "prefix length \"\" is not a number");
    check_parse_error(mp_test_failed_, "cidr:10.0.0.0/8x", "is not a number 0..32");
    check_parse_error(mp_test_failed_, "cidr:10.0.0.0/-1", "is not a number");
    check_parse_error(mp_test_failed_,
                      "cidr:1111:2222:3333:4444:5555:6666:7777:8888:9999:aaaa:bbbb/64",
                      "is not an IPv4 or IPv6 address");
    check_parse_error(mp_test_failed_, "cidr:", "missing the address");
    check_parse_error(mp_test_failed_, "ip:/8", "missing the address");
    check_parse_error(mp_test_failed_, "route:", "needs a route id");
    check_parse_error(mp_test_failed_, "host:example.com",
                      "unknown rate-limit target \"host:example.com\"");
    check_parse_error(mp_test_failed_, "IP", "unknown rate-limit target");
    check_parse_error(mp_test_failed_, "ips", "expected \"*\", \"route:<route_id>\"");
    char long_route[200];
    memcpy(long_route, "route:", 6);
    memset(long_route + 6, 'r', 150);
    long_route[156] = '\0';
    check_parse_error(mp_test_failed_, long_route, "route id is 150 bytes, at most 128");
}

static void check_spec_error(int *mp_test_failed_, mp_rate_spec spec, const char *want)
{
    char err[256] = "";
    MP_CHECK_EQ_INT(mp_rate_spec_validate(&spec, err, sizeof(err)), -EINVAL);
    MP_CHECK_CONTAINS(err, want);
    err[0] = '\0';
    errno = 0;
    mp_rate_limiter *rl = mp_rate_limiter_new(&spec, err, sizeof(err));
    MP_CHECK(rl == NULL);
    MP_CHECK_EQ_INT(errno, EINVAL);
    MP_CHECK_CONTAINS(err, want);
    mp_rate_limiter_free(rl);
}

MP_TEST(spec_errors)
{
    check_spec_error(mp_test_failed_, (mp_rate_spec){0, 0, 0, 5, "*", 0}, "sets no rate");
    check_spec_error(mp_test_failed_, (mp_rate_spec){-1, 0, 0, 0, "*", 0},
                     "requests_per_second must not be negative (got -1)");
    check_spec_error(mp_test_failed_, (mp_rate_spec){0, 0, -5, 0, "*", 0},
                     "requests_per_hour must not be negative");
    check_spec_error(mp_test_failed_, (mp_rate_spec){10, 0, 0, -2, "*", 0},
                     "burst_size must not be negative (got -2)");
    check_spec_error(mp_test_failed_, (mp_rate_spec){2000000000, 0, 0, 0, "*", 0},
                     "finer than the 1 ns clock");
    check_spec_error(mp_test_failed_, (mp_rate_spec){0, 0, 1, INT64_MAX, "*", 0},
                     "burst_size 9223372036854775807 is too large for requests_per_hour 1");
    check_spec_error(mp_test_failed_, (mp_rate_spec){1, 0, 0, 0, "ip", (1u << 24) + 1},
                     "max_sources 16777217 is above the limit");
    check_spec_error(mp_test_failed_, (mp_rate_spec){1, 0, 0, 0, "cidr:300.0.0.0/8", 0},
                     "\"300.0.0.0\" is not an IPv4 or IPv6 address");

    char err[256] = "";
    mp_rate_spec ok = {1000000000, 0, 0, 0, "ip", 1};
    MP_CHECK_EQ_INT(mp_rate_spec_validate(&ok, err, sizeof(err)), 0);
    mp_rate_limiter_free(NULL);
}

MP_TEST_MAIN(MP_CASE(burst_then_refusal_exact), MP_CASE(per_second_refill_spacing),
             MP_CASE(default_burst), MP_CASE(per_minute_spacing), MP_CASE(per_hour_spacing),
             MP_CASE(uneven_interval_rounds_up), MP_CASE(combined_rates_all_must_conform),
             MP_CASE(threads_shared_bucket_exact), MP_CASE(threads_two_cells_exact),
             MP_CASE(threads_per_source_exact), MP_CASE(threads_table_churn_bounded),
             MP_CASE(per_ip_independent_and_mapped),
             MP_CASE(ip_cidr_leaves_outside_untouched),
             MP_CASE(cidr_target_shares_one_bucket),
             MP_CASE(route_target_only_matching_route),
             MP_CASE(star_target_covers_everything), MP_CASE(table_bound_small),
             MP_CASE(table_bound_sharded), MP_CASE(table_bound_default),
             MP_CASE(busy_source_outlives_idle_ones), MP_CASE(all_busy_evicts_soonest_idle),
             MP_CASE(target_parse_forms), MP_CASE(target_parse_errors), MP_CASE(spec_errors))
