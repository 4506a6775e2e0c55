/*
 * test_alb_ratelimit.c — the ALB's per-client GCRA limits: exact budgets with burst,
 * Retry-After, the three windows together, target forms (*, route:, ip:), refusals of
 * bad targets, state kept across rebuilds for unchanged limits, the bounded client
 * table, and concurrent checks that never let more through than the budget.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "alb_ratelimit.h"
#include "mp_test.h"

static mp_rate_limit_view lim(const char *id, const char *target, int64_t rps, int64_t rpm,
                              int64_t rph, int64_t burst)
{
    mp_rate_limit_view v = {sizeof(v), id, target, rps, rpm, rph, burst, 1};
    return v;
}

static struct sockaddr_in ip4(const char *a)
{
    struct sockaddr_in s = {0};
    s.sin_family = AF_INET;
    inet_pton(AF_INET, a, &s.sin_addr);
    return s;
}

static alb_ratelimits *build1(mp_rate_limit_view v, const alb_ratelimits *prev)
{
    const mp_rate_limit_view *p = &v;
    alb_ratelimits *rl = NULL;
    char err[256];
    if (alb_ratelimits_build(&p, 1, prev, &rl, err, sizeof(err)) < 0)
        fprintf(stderr, "build: %s\n", err);
    return rl;
}

/* How many of n back-to-back requests at time t pass. */
static int passed(alb_ratelimits *rl, const char *route, const char *ip, uint64_t t, int n)
{
    struct sockaddr_in a = ip4(ip);
    int ok = 0;
    for (int i = 0; i < n; i++) {
        alb_rl_verdict v;
        ok += alb_ratelimits_check(rl, route, (struct sockaddr *)&a, t, &v) == 0;
    }
    return ok;
}

MP_TEST(burst_then_rate)
{
    alb_ratelimits *rl = build1(lim("l", "*", 10, 0, 0, 5), NULL);
    MP_CHECK(rl != NULL);
    uint64_t t = 1000000;
    MP_CHECK_EQ_INT(passed(rl, NULL, "10.0.0.1", t, 20), 5); /* the burst */
    MP_CHECK_EQ_INT(passed(rl, NULL, "10.0.0.1", t + 100, 5), 1);  /* one per 100 ms */
    MP_CHECK_EQ_INT(passed(rl, NULL, "10.0.0.1", t + 150, 5), 0);
    MP_CHECK_EQ_INT(passed(rl, NULL, "10.0.0.2", t, 20), 5); /* clients are separate */
    /* arrivals every 10 ms: the refilled burst, then exactly one per 100 ms */
    int first = 0, second = 0;
    for (int ms = 1000; ms < 2000; ms += 10)
        first += passed(rl, NULL, "10.0.0.1", t + (uint64_t)ms, 1);
    for (int ms = 2000; ms < 3000; ms += 10)
        second += passed(rl, NULL, "10.0.0.1", t + (uint64_t)ms, 1);
    MP_CHECK_EQ_INT(first, 4 + 10); /* 400 ms idle refilled 4 of the 5 */
    MP_CHECK_EQ_INT(second, 10);
    alb_ratelimits_unref(rl);
}

MP_TEST(retry_after)
{
    alb_ratelimits *rl = build1(lim("slow", "*", 0, 6, 0, 1), NULL); /* one per 10 s */
    struct sockaddr_in a = ip4("192.0.2.7");
    alb_rl_verdict v = {0};
    MP_CHECK(alb_ratelimits_check(rl, NULL, (struct sockaddr *)&a, 5000, &v) == 0);
    MP_CHECK(alb_ratelimits_check(rl, NULL, (struct sockaddr *)&a, 5000, &v) == 1);
    MP_CHECK_STR(v.limit_id, "slow");
    MP_CHECK_EQ_INT(v.retry_after_s, 10);
    MP_CHECK(alb_ratelimits_check(rl, NULL, (struct sockaddr *)&a, 12500, &v) == 1);
    MP_CHECK_EQ_INT(v.retry_after_s, 3); /* 2.5 s rounds up */
    MP_CHECK(alb_ratelimits_check(rl, NULL, (struct sockaddr *)&a, 15000, &v) == 0);
    alb_ratelimits_unref(rl);
}

MP_TEST(all_windows_apply)
{
    /* 100/s but only 3/minute: the minute window decides */
    alb_ratelimits *rl = build1(lim("both", "*", 100, 3, 0, 3), NULL);
    MP_CHECK_EQ_INT(passed(rl, NULL, "10.1.1.1", 0 + 1000000, 10), 3);
    MP_CHECK_EQ_INT(passed(rl, NULL, "10.1.1.1", 1000000 + 5000, 10), 0);
    MP_CHECK_EQ_INT(passed(rl, NULL, "10.1.1.1", 1000000 + 20000, 10), 1);
    alb_ratelimits_unref(rl);
}

MP_TEST(targets)
{
    mp_rate_limit_view vs[] = {lim("r", "route:api", 1, 0, 0, 1),
                               lim("net", "ip:10.9.0.0/16", 1, 0, 0, 2),
                               lim("v6", "ip:2001:db8::/32", 1, 0, 0, 1)};
    const mp_rate_limit_view *p[] = {&vs[0], &vs[1], &vs[2]};
    alb_ratelimits *rl = NULL;
    char err[256];
    MP_CHECK(alb_ratelimits_build(p, 3, NULL, &rl, err, sizeof(err)) == 0);
    MP_CHECK_EQ_INT(passed(rl, "api", "192.0.2.1", 1000, 5), 1);
    MP_CHECK_EQ_INT(passed(rl, "web", "192.0.2.1", 1000, 5), 5);
    MP_CHECK_EQ_INT(passed(rl, "web", "10.9.200.1", 1000, 5), 2);
    MP_CHECK_EQ_INT(passed(rl, "web", "10.8.0.1", 1000, 5), 5);
    struct sockaddr_in6 a6 = {0};
    a6.sin6_family = AF_INET6;
    inet_pton(AF_INET6, "2001:db8::5", &a6.sin6_addr);
    alb_rl_verdict v;
    MP_CHECK(alb_ratelimits_check(rl, NULL, (struct sockaddr *)&a6, 1000, &v) == 0);
    MP_CHECK(alb_ratelimits_check(rl, NULL, (struct sockaddr *)&a6, 1000, &v) == 1);
    MP_CHECK_STR(v.limit_id, "v6");
    alb_ratelimits_unref(rl);
}

MP_TEST(bad_targets_refused)
{
    char err[256];
    alb_ratelimits *rl = NULL;
    mp_rate_limit_view v = lim("x", "host:a", 1, 0, 0, 0);
    const mp_rate_limit_view *p = &v;
    MP_CHECK(alb_ratelimits_build(&p, 1, NULL, &rl, err, sizeof(err)) == -EINVAL);
    MP_CHECK_CONTAINS(err, "rate limit x: target \"host:a\"");
    v = lim("y", "ip:10.0.0.0/33", 1, 0, 0, 0);
    MP_CHECK(alb_ratelimits_build(&p, 1, NULL, &rl, err, sizeof(err)) == -EINVAL);
    MP_CHECK_CONTAINS(err, "not an address or CIDR");
    v = lim("z", "*", 0, 0, 0, 0);
    MP_CHECK(alb_ratelimits_build(&p, 1, NULL, &rl, err, sizeof(err)) == -EINVAL);
    MP_CHECK_CONTAINS(err, "rate limit z");
    v = lim("off", "*", 0, 0, 0, 0);
    v.enabled = 0; /* disabled limits are not checked, whatever their rates */
    MP_CHECK(alb_ratelimits_build(&p, 1, NULL, &rl, err, sizeof(err)) == 0);
    MP_CHECK_EQ_INT(alb_ratelimits_count(rl), 0);
    alb_ratelimits_unref(rl);
}

MP_TEST(unchanged_limit_keeps_state)
{
    alb_ratelimits *a = build1(lim("l", "*", 1, 0, 0, 2), NULL);
    MP_CHECK_EQ_INT(passed(a, NULL, "10.0.0.1", 1000, 5), 2);
    alb_ratelimits *b = build1(lim("l", "*", 1, 0, 0, 2), a);
    MP_CHECK_EQ_INT(passed(b, NULL, "10.0.0.1", 1000, 5), 0); /* no fresh burst */
    alb_ratelimits *c = build1(lim("l", "*", 2, 0, 0, 2), b); /* changed: fresh state */
    MP_CHECK_EQ_INT(passed(c, NULL, "10.0.0.1", 1000, 5), 2);
    alb_ratelimits_unref(a);
    alb_ratelimits_unref(b);
    alb_ratelimits_unref(c);
}

MP_TEST(client_table_is_bounded)
{
    alb_ratelimits *rl = build1(lim("l", "*", 1, 0, 0, 1), NULL);
    /* four times more clients than tracked: all of them get through once */
    int ok = 0;
    for (int i = 0; i < 4 * ALB_RL_MAX_CLIENTS; i++) {
        struct sockaddr_in a = {0};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(0x0a000000u + (uint32_t)i);
        alb_rl_verdict v;
        ok += alb_ratelimits_check(rl, NULL, (struct sockaddr *)&a, 1000, &v) == 0;
    }
    MP_CHECK_EQ_INT(ok, 4 * ALB_RL_MAX_CLIENTS);
    alb_ratelimits_unref(rl);
}

static alb_ratelimits *shared;
static _Atomic int allowed;

static void *hammer(void *arg)
{
    (void)arg;
    allowed += passed(shared, NULL, "172.16.0.1", 50000, 1000);
    return NULL;
}

MP_TEST(concurrent_checks_respect_the_budget)
{
    shared = build1(lim("l", "*", 10, 0, 0, 100), NULL);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, hammer, NULL);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    MP_CHECK_EQ_INT(atomic_load(&allowed), 100);
    alb_ratelimits_unref(shared);
}

MP_TEST_MAIN(MP_CASE(burst_then_rate), MP_CASE(retry_after), MP_CASE(all_windows_apply),
             MP_CASE(targets), MP_CASE(bad_targets_refused),
             MP_CASE(unchanged_limit_keeps_state), MP_CASE(client_table_is_bounded),
             MP_CASE(concurrent_checks_respect_the_budget))
