/*
 * test_alb_pool.c — unit tests for plugins/alb/alb_pool.c (member picking, passive
 * ejection, backups, exclusion, hash keys) and the upstream part of alb_config.c
 * (parsed through the host's real libconfig view, so errors carry FILE:LINE).
 * Distributions are counted over many picks: exact for the round robins, bounded for
 * the hash ring; concurrency runs several threads against one pool.
 */
#include "alb_pool.h"

#include <arpa/inet.h>
#include <libconfig.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alb_internal.h"
#include "config_view.h"
#include "mp_test.h"

#define T0 1000000u /* a fake monotonic "now" in ms */

/* Members 127.0.0.1:8001.. with the given weights; backup[i] marks backups. */
static alb_member *members(int n, const uint32_t *weights, const int *backup)
{
    alb_member *m = calloc((size_t)n, sizeof(*m));
    for (int i = 0; i < n; i++) {
        struct sockaddr_in *a = (struct sockaddr_in *)&m[i].addr;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)(8001 + i));
        a->sin_addr.s_addr = htonl(0x7f000001);
        m[i].addr_len = sizeof(*a);
        snprintf(m[i].text, sizeof(m[i].text), "127.0.0.1:%d", 8001 + i);
        m[i].weight = weights ? weights[i] : 1;
        m[i].backup = backup ? backup[i] : 0;
    }
    return m;
}

static int make_pool(alb_pool *p, alb_balance b, int n, const uint32_t *w, const int *backup)
{
    alb_pool_settings s;
    alb_pool_settings_default(&s);
    s.balance = b;
    char err[128];
    return alb_pool_init(p, &s, members(n, w, backup), n, err, sizeof(err));
}

MP_TEST(round_robin_rotates_exactly)
{
    alb_pool p;
    MP_CHECK_EQ_INT(make_pool(&p, ALB_BAL_ROUND_ROBIN, 3, NULL, NULL), 0);
    int count[3] = {0};
    for (int k = 0; k < 3000; k++) {
        int i = alb_pool_pick(&p, 0, NULL, 0, T0);
        MP_CHECK(i >= 0 && i < 3);
        if (i < 0)
            break;
        MP_CHECK_EQ_INT(i, k % 3);
        count[i]++;
    }
    for (int i = 0; i < 3; i++) {
        MP_CHECK_EQ_INT(count[i], 1000);
        MP_CHECK_EQ_INT(atomic_load(&p.m[i].picks), 1000);
    }
    alb_pool_destroy(&p);
}

MP_TEST(weighted_is_smooth_and_exact)
{
    alb_pool p;
    uint32_t w[3] = {5, 1, 1};
    MP_CHECK_EQ_INT(make_pool(&p, ALB_BAL_WEIGHTED, 3, w, NULL), 0);
    /* The smooth order for 5:1:1 interleaves instead of five in a row. */
    const int want[7] = {0, 0, 1, 0, 2, 0, 0};
    int count[3] = {0};
    for (int k = 0; k < 700; k++) {
        int i = alb_pool_pick(&p, 0, NULL, 0, T0);
        MP_CHECK(i >= 0);
        if (i < 0)
            break;
        MP_CHECK_EQ_INT(i, want[k % 7]);
        count[i]++;
    }
    MP_CHECK_EQ_INT(count[0], 500);
    MP_CHECK_EQ_INT(count[1], 100);
    MP_CHECK_EQ_INT(count[2], 100);
    alb_pool_destroy(&p);

    /* Proportions stay exact over every full cycle with other weights too. */
    uint32_t w2[4] = {3, 7, 2, 1};
    MP_CHECK_EQ_INT(make_pool(&p, ALB_BAL_WEIGHTED, 4, w2, NULL), 0);
    for (int cycle = 0; cycle < 20; cycle++) {
        int c[4] = {0};
        for (int k = 0; k < 13; k++) {
            int i = alb_pool_pick(&p, 0, NULL, 0, T0);
            if (i >= 0)
                c[i]++;
        }
        for (int i = 0; i < 4; i++)
            MP_CHECK_EQ_INT(c[i], (int)w2[i]);
    }
    alb_pool_destroy(&p);
}

MP_TEST(weighted_skips_a_down_member)
{
    alb_pool p;
    uint32_t w[3] = {2, 1, 1};
    MP_CHECK_EQ_INT(make_pool(&p, ALB_BAL_WEIGHTED, 3, w, NULL), 0);
    atomic_store(&p.m[0].healthy, 0);
    int c[3] = {0};
    for (int k = 0; k < 100; k++) {
        int i = alb_pool_pick(&p, 0, NULL, 0, T0);
        if (i >= 0)
            c[i]++;
    }
    MP_CHECK_EQ_INT(c[0], 0);
    MP_CHECK_EQ_INT(c[1], 50);
    MP_CHECK_EQ_INT(c[2], 50);
    alb_pool_destroy(&p);
}

MP_TEST(least_conn_follows_held_requests)
{
    alb_pool p;
    MP_CHECK_EQ_INT(make_pool(&p, ALB_BAL_LEAST_CONN, 3, NULL, NULL), 0);
    /* Requests held open spread one per member before any gets a second. */
    int held[3] = {0};
    for (int k = 0; k < 9; k++) {
        int i = alb_pool_pick(&p, 0, NULL, 0, T0);
        MP_CHECK(i >= 0);
        if (i < 0)
            break;
        alb_pool_begin(&p, i);
        held[i]++;
        for (int j = 0; j < 3; j++) /* never more than one apart */
            MP_CHECK(held[j] >= k / 3 && held[j] <= k / 3 + 1);
    }
    /* Finishing two on member 1 makes it the only choice for the next two. */
    alb_pool_end(&p, 1);
    alb_pool_end(&p, 1);
    for (int k = 0; k < 2; k++) {
        int i = alb_pool_pick(&p, 0, NULL, 0, T0);
        MP_CHECK_EQ_INT(i, 1);
        alb_pool_begin(&p, i);
    }
    /* With nothing held, ties rotate instead of always picking the first. */
    for (int i = 0; i < 3; i++)
        while (atomic_load(&p.m[i].active) > 0)
            alb_pool_end(&p, i);
    int c[3] = {0};
    for (int k = 0; k < 300; k++) {
        int i = alb_pool_pick(&p, 0, NULL, 0, T0);
        if (i >= 0)
            c[i]++;
    }
    MP_CHECK_EQ_INT(c[0], 100);
    MP_CHECK_EQ_INT(c[1], 100);
    MP_CHECK_EQ_INT(c[2], 100);
    alb_pool_destroy(&p);

    /* Weights: a member of weight 2 carries twice the requests of weight 1. */
    uint32_t w[2] = {2, 1};
    MP_CHECK_EQ_INT(make_pool(&p, ALB_BAL_LEAST_CONN, 2, w, NULL), 0);
    for (int k = 0; k < 30; k++) {
        int i = alb_pool_pick(&p, 0, NULL, 0, T0);
        if (i >= 0)
            alb_pool_begin(&p, i);
    }
    MP_CHECK_EQ_INT(atomic_load(&p.m[0].active), 20);
    MP_CHECK_EQ_INT(atomic_load(&p.m[1].active), 10);
    alb_pool_destroy(&p);
}

static uint64_t key_of(int k)
{
    char buf[32];
    int l = snprintf(buf, sizeof(buf), "10.%d.%d.%d", (k >> 16) & 255, (k >> 8) & 255, k & 255);
    return alb_pool_hash(buf, (size_t)l);
}

MP_TEST(hash_is_stable_and_balanced)
{
    alb_pool p;
    MP_CHECK_EQ_INT(make_pool(&p, ALB_BAL_HASH, 4, NULL, NULL), 0);
    enum { KEYS = 40000 };
    int c[4] = {0};
    for (int k = 0; k < KEYS; k++) {
        int i = alb_pool_pick(&p, key_of(k), NULL, 0, T0);
        MP_CHECK(i >= 0);
        if (i < 0)
            break;
        c[i]++;
        if (k % 97 == 0) /* the same key always lands on the same member */
            MP_CHECK_EQ_INT(alb_pool_pick(&p, key_of(k), NULL, 0, T0), i);
    }
    for (int i = 0; i < 4; i++) /* 10000 expected each; 128 points per member */
        MP_CHECK(c[i] > 7500 && c[i] < 12500);
    alb_pool_destroy(&p);

    /* Weighted ring: weight 3 against 1 takes about three quarters. */
    uint32_t w[2] = {3, 1};
    MP_CHECK_EQ_INT(make_pool(&p, ALB_BAL_HASH, 2, w, NULL), 0);
    int h0 = 0;
    for (int k = 0; k < KEYS; k++)
        h0 += alb_pool_pick(&p, key_of(k), NULL, 0, T0) == 0;
    MP_CHECK(h0 > KEYS * 68 / 100 && h0 < KEYS * 82 / 100);
    alb_pool_destroy(&p);
}

MP_TEST(hash_removal_moves_only_the_removed_members_keys)
{
    enum { N = 5, KEYS = 20000 };
    alb_pool full, less;
    MP_CHECK_EQ_INT(make_pool(&full, ALB_BAL_HASH, N, NULL, NULL), 0);
    /* The same servers without the third (its text identifies the ring points). */
    alb_pool_settings s;
    alb_pool_settings_default(&s);
    s.balance = ALB_BAL_HASH;
    alb_member *all = members(N, NULL, NULL);
    alb_member *m = calloc(N - 1, sizeof(*m));
    for (int i = 0, j = 0; i < N; i++)
        if (i != 2)
            m[j++] = all[i];
    free(all);
    char err[128];
    MP_CHECK_EQ_INT(alb_pool_init(&less, &s, m, N - 1, err, sizeof(err)), 0);
    int moved = 0, strays = 0;
    for (int k = 0; k < KEYS; k++) {
        int a = alb_pool_pick(&full, key_of(k), NULL, 0, T0);
        int b = alb_pool_pick(&less, key_of(k), NULL, 0, T0);
        if (a < 0 || b < 0) {
            MP_CHECK(0);
            break;
        }
        if (strcmp(full.m[a].text, less.m[b].text) != 0) {
            moved++;
            strays += a != 2; /* a key that was not on the removed member moved */
        }
    }
    MP_CHECK_EQ_INT(strays, 0);
    MP_CHECK(moved > 0 && moved < KEYS / N + KEYS / 20);

    /* Taking a member out of service (unhealthy) remaps the same way, in place. */
    int before[KEYS];
    for (int k = 0; k < KEYS; k++)
        before[k] = alb_pool_pick(&full, key_of(k), NULL, 0, T0);
    atomic_store(&full.m[4].healthy, 0);
    strays = 0;
    moved = 0;
    for (int k = 0; k < KEYS; k++) {
        int a = alb_pool_pick(&full, key_of(k), NULL, 0, T0);
        MP_CHECK(a != 4);
        if (a != before[k]) {
            moved++;
            strays += before[k] != 4;
        }
    }
    MP_CHECK_EQ_INT(strays, 0);
    MP_CHECK(moved > 0 && moved < KEYS / N + KEYS / 20);
    /* Back in service: every key returns to where it was. */
    atomic_store(&full.m[4].healthy, 1);
    int same = 0;
    for (int k = 0; k < KEYS; k++)
        same += alb_pool_pick(&full, key_of(k), NULL, 0, T0) == before[k];
    MP_CHECK_EQ_INT(same, KEYS);
    alb_pool_destroy(&full);
    alb_pool_destroy(&less);
}

MP_TEST(ejection_after_max_fails_and_one_trial)
{
    alb_pool p;
    MP_CHECK_EQ_INT(make_pool(&p, ALB_BAL_ROUND_ROBIN, 2, NULL, NULL), 0);
    uint64_t now = T0;
    /* A success in between resets the consecutive count. */
    MP_CHECK_EQ_INT(alb_pool_report(&p, 0, ALB_OUT_CONNECT_ERROR, now), 0);
    MP_CHECK_EQ_INT(alb_pool_report(&p, 0, ALB_OUT_HTTP_5XX, now), 0);
    MP_CHECK_EQ_INT(alb_pool_report(&p, 0, ALB_OUT_OK, now), 0);
    MP_CHECK_EQ_INT(alb_pool_report(&p, 0, ALB_OUT_CONNECT_ERROR, now), 0);
    MP_CHECK_EQ_INT(alb_pool_report(&p, 0, ALB_OUT_HTTP_5XX, now), 0);
    MP_CHECK_STR(alb_pool_member_state(&p, 0, now), "healthy");
    /* The third in a row ejects (reported once). */
    MP_CHECK_EQ_INT(alb_pool_report(&p, 0, ALB_OUT_CONNECT_ERROR, now), 1);
    MP_CHECK_STR(alb_pool_member_state(&p, 0, now), "ejected");
    MP_CHECK_EQ_INT(atomic_load(&p.m[0].ejections), 1);
    MP_CHECK_EQ_INT(atomic_load(&p.m[0].failures), 5);
    for (int k = 0; k < 50; k++)
        MP_CHECK_EQ_INT(alb_pool_pick(&p, 0, NULL, 0, now + 9999), 1);
    MP_CHECK_EQ_INT(alb_pool_usable(&p, now + 9999), 1);
    /* After fail_timeout exactly one pick gets it as a trial. */
    now += 10000;
    int got0 = 0;
    for (int k = 0; k < 10; k++)
        got0 += alb_pool_pick(&p, 0, NULL, 0, now) == 0;
    MP_CHECK_EQ_INT(got0, 1);
    /* The trial fails: out for another fail_timeout. */
    MP_CHECK_EQ_INT(alb_pool_report(&p, 0, ALB_OUT_HTTP_5XX, now + 5), 0);
    got0 = 0;
    for (int k = 0; k < 10; k++)
        got0 += alb_pool_pick(&p, 0, NULL, 0, now + 9999) == 0;
    MP_CHECK_EQ_INT(got0, 0);
    /* Next trial succeeds: back in the rotation for good. */
    now += 10005;
    got0 = 0;
    for (int k = 0; k < 10; k++)
        got0 += alb_pool_pick(&p, 0, NULL, 0, now) == 0;
    MP_CHECK_EQ_INT(got0, 1);
    alb_pool_report(&p, 0, ALB_OUT_OK, now + 1);
    MP_CHECK_STR(alb_pool_member_state(&p, 0, now + 1), "healthy");
    got0 = 0;
    for (int k = 0; k < 10; k++)
        got0 += alb_pool_pick(&p, 0, NULL, 0, now + 2) == 0;
    MP_CHECK_EQ_INT(got0, 5);
    alb_pool_destroy(&p);

    /* max_fails = 0 never ejects. */
    alb_pool_settings s;
    alb_pool_settings_default(&s);
    s.max_fails = 0;
    char err[128];
    MP_CHECK_EQ_INT(alb_pool_init(&p, &s, members(1, NULL, NULL), 1, err, sizeof(err)), 0);
    for (int k = 0; k < 20; k++)
        MP_CHECK_EQ_INT(alb_pool_report(&p, 0, ALB_OUT_CONNECT_ERROR, T0), 0);
    MP_CHECK_EQ_INT(alb_pool_pick(&p, 0, NULL, 0, T0), 0);
    alb_pool_destroy(&p);
}

MP_TEST(no_usable_member_is_a_distinct_code)
{
    const alb_balance all[] = {ALB_BAL_ROUND_ROBIN, ALB_BAL_WEIGHTED, ALB_BAL_LEAST_CONN,
                               ALB_BAL_HASH};
    for (size_t b = 0; b < 4; b++) {
        alb_pool p;
        MP_CHECK_EQ_INT(make_pool(&p, all[b], 2, NULL, NULL), 0);
        atomic_store(&p.m[0].healthy, 0);
        for (int k = 0; k < 3; k++)
            alb_pool_report(&p, 1, ALB_OUT_CONNECT_ERROR, T0);
        MP_CHECK_EQ_INT(alb_pool_pick(&p, key_of(1), NULL, 0, T0 + 1), ALB_POOL_NONE);
        MP_CHECK_EQ_INT(alb_pool_usable(&p, T0 + 1), 0);
        alb_pool_destroy(&p);
    }
}

MP_TEST(backups_only_when_no_primary_is_usable)
{
    const alb_balance all[] = {ALB_BAL_ROUND_ROBIN, ALB_BAL_WEIGHTED, ALB_BAL_LEAST_CONN,
                               ALB_BAL_HASH};
    int backup[4] = {0, 1, 0, 1};
    for (size_t b = 0; b < 4; b++) {
        alb_pool p;
        MP_CHECK_EQ_INT(make_pool(&p, all[b], 4, NULL, backup), 0);
        for (int k = 0; k < 200; k++) {
            int i = alb_pool_pick(&p, key_of(k), NULL, 0, T0);
            MP_CHECK(i == 0 || i == 2);
        }
        atomic_store(&p.m[0].healthy, 0);
        for (int k = 0; k < 3; k++)
            alb_pool_report(&p, 2, ALB_OUT_HTTP_5XX, T0);
        int c[4] = {0};
        for (int k = 0; k < 200; k++) {
            int i = alb_pool_pick(&p, key_of(k), NULL, 0, T0 + 1);
            MP_CHECK(i == 1 || i == 3);
            if (i >= 0)
                c[i]++;
        }
        MP_CHECK(c[1] > 0 && c[3] > 0);
        /* A primary back in service takes over again. */
        atomic_store(&p.m[0].healthy, 1);
        for (int k = 0; k < 50; k++)
            MP_CHECK_EQ_INT(alb_pool_pick(&p, key_of(k), NULL, 0, T0 + 2), 0);
        alb_pool_destroy(&p);
    }
}

MP_TEST(exclusion_set_is_respected)
{
    const alb_balance all[] = {ALB_BAL_ROUND_ROBIN, ALB_BAL_WEIGHTED, ALB_BAL_LEAST_CONN,
                               ALB_BAL_HASH};
    int backup[4] = {0, 0, 0, 1};
    for (size_t b = 0; b < 4; b++) {
        alb_pool p;
        MP_CHECK_EQ_INT(make_pool(&p, all[b], 4, NULL, backup), 0);
        int ex1[1] = {1};
        for (int k = 0; k < 100; k++) {
            int i = alb_pool_pick(&p, key_of(k), ex1, 1, T0);
            MP_CHECK(i == 0 || i == 2);
        }
        /* The key's own member excluded: the next one clockwise, still a primary. */
        int first = alb_pool_pick(&p, key_of(7), NULL, 0, T0);
        int ex[1] = {first};
        int second = alb_pool_pick(&p, key_of(7), ex, 1, T0);
        MP_CHECK(second >= 0 && second != first && second != 3);
        /* All primaries tried: the backup, then nothing. */
        int ex3[3] = {0, 1, 2};
        MP_CHECK_EQ_INT(alb_pool_pick(&p, key_of(3), ex3, 3, T0), 3);
        int ex4[4] = {0, 1, 2, 3};
        MP_CHECK_EQ_INT(alb_pool_pick(&p, key_of(3), ex4, 4, T0), ALB_POOL_NONE);
        alb_pool_destroy(&p);
    }
}

typedef struct picker {
    alb_pool *p;
    int picks;
    _Atomic int *count;
} picker;

static void *pick_thread(void *arg)
{
    picker *pk = arg;
    for (int k = 0; k < pk->picks; k++) {
        int i = alb_pool_pick(pk->p, 0, NULL, 0, T0);
        if (i >= 0)
            atomic_fetch_add(&pk->count[i], 1);
    }
    return NULL;
}

static void run_pickers(alb_pool *p, int threads, int picks, _Atomic int *count)
{
    pthread_t t[8];
    picker pk = {p, picks, count};
    for (int i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, pick_thread, &pk);
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
}

MP_TEST(concurrent_picks_keep_exact_totals)
{
    alb_pool p;
    MP_CHECK_EQ_INT(make_pool(&p, ALB_BAL_ROUND_ROBIN, 3, NULL, NULL), 0);
    _Atomic int c[4] = {0};
    run_pickers(&p, 4, 30000, c);
    for (int i = 0; i < 3; i++) {
        MP_CHECK_EQ_INT(atomic_load(&c[i]), 40000);
        MP_CHECK_EQ_INT(atomic_load(&p.m[i].picks), 40000);
    }
    alb_pool_destroy(&p);

    uint32_t w[3] = {5, 1, 1};
    MP_CHECK_EQ_INT(make_pool(&p, ALB_BAL_WEIGHTED, 3, w, NULL), 0);
    _Atomic int d[4] = {0};
    run_pickers(&p, 4, 7000, d); /* 28000 picks: 4000 whole cycles of 7 */
    MP_CHECK_EQ_INT(atomic_load(&d[0]), 20000);
    MP_CHECK_EQ_INT(atomic_load(&d[1]), 4000);
    MP_CHECK_EQ_INT(atomic_load(&d[2]), 4000);
    alb_pool_destroy(&p);
}

#define F(n, v) {n, sizeof(n) - 1, v, sizeof(v) - 1}

MP_TEST(request_keys_from_header_cookie_or_client_ip)
{
    alb_pool p;
    alb_pool_settings s;
    alb_pool_settings_default(&s);
    s.balance = ALB_BAL_HASH;
    char err[128];
    MP_CHECK_EQ_INT(alb_pool_parse_hash_key("header:X-User", &s), 0);
    MP_CHECK_EQ_INT(alb_pool_init(&p, &s, members(2, NULL, NULL), 2, err, sizeof(err)), 0);
    const struct alb_http_field f1[] = {F("Host", "a"), F("x-user", "alice")};
    MP_CHECK(alb_pool_request_key(&p, f1, 2, "10.0.0.1") == alb_pool_hash("alice", 5));
    const struct alb_http_field f2[] = {F("Host", "a")};
    MP_CHECK(alb_pool_request_key(&p, f2, 1, "10.0.0.1") == alb_pool_hash("10.0.0.1", 8));
    alb_pool_destroy(&p);

    MP_CHECK_EQ_INT(alb_pool_parse_hash_key("cookie:session", &s), 0);
    MP_CHECK_EQ_INT(alb_pool_init(&p, &s, members(2, NULL, NULL), 2, err, sizeof(err)), 0);
    const struct alb_http_field f3[] = {F("Cookie", "a=1; sessionx=no"),
                                        F("cookie", " theme=dark ;session=\"s-42\"; b=2")};
    MP_CHECK(alb_pool_request_key(&p, f3, 2, "10.0.0.1") == alb_pool_hash("s-42", 4));
    const struct alb_http_field f4[] = {F("Cookie", "a=1; session=")};
    MP_CHECK(alb_pool_request_key(&p, f4, 1, "10.0.0.9") == alb_pool_hash("10.0.0.9", 8));
    alb_pool_destroy(&p);

    MP_CHECK_EQ_INT(alb_pool_parse_hash_key("client_ip", &s), 0);
    MP_CHECK_EQ_INT(alb_pool_init(&p, &s, members(2, NULL, NULL), 2, err, sizeof(err)), 0);
    MP_CHECK(alb_pool_request_key(&p, f1, 2, "10.0.0.1") == alb_pool_hash("10.0.0.1", 8));
    alb_pool_destroy(&p);

    MP_CHECK_EQ_INT(alb_pool_parse_hash_key("header:", &s), -EINVAL);
    MP_CHECK_EQ_INT(alb_pool_parse_hash_key("header:a b", &s), -EINVAL);
    MP_CHECK_EQ_INT(alb_pool_parse_hash_key("query:x", &s), -EINVAL);
    alb_balance b;
    MP_CHECK_EQ_INT(alb_pool_parse_balance("least-conn", &b), 0);
    MP_CHECK_EQ_INT(b, ALB_BAL_LEAST_CONN);
    MP_CHECK_EQ_INT(alb_pool_parse_balance("random", &b), -EINVAL);
}

/* ------------------------------------------------------------ upstream settings */

/* The host names text-parsed settings "<config>" in errors; the line is what counts. */
static int parse_text(const char *text, alb_config *out, char *err, size_t err_len)
{
    mp_host_api api;
    memset(&api, 0, sizeof(api));
    mp_config_view_fill_api(&api);
    config_t lc;
    config_init(&lc);
    int rc = mp_config_text_parse(text, strlen(text), "alb.conf", &lc, err, err_len);
    if (rc == 0)
        rc = alb_config_parse(&api, (const mp_config *)config_root_setting(&lc), out, err,
                              err_len);
    config_destroy(&lc);
    return rc;
}

MP_TEST(settings_old_and_new_forms)
{
    alb_config cfg;
    char err[256] = "";
    /* Today's form keeps working. */
    MP_CHECK_EQ_INT(parse_text("upstreams = { web = { servers = [\"127.0.0.1:8080\", "
                               "\"[::1]:8081\"]; balance = \"round-robin\"; }; };\n",
                               &cfg, err, sizeof(err)),
                    0);
    MP_CHECK_EQ_INT(cfg.nupstreams, 1);
    MP_CHECK_EQ_INT(cfg.upstreams[0].pool.n, 2);
    MP_CHECK_EQ_INT(cfg.upstreams[0].pool.set.max_fails, 3);
    MP_CHECK_EQ_INT(cfg.upstreams[0].pool.set.fail_timeout_ms, 10000);
    MP_CHECK_EQ_INT(cfg.upstreams[0].retries, 1);
    MP_CHECK_EQ_INT(cfg.upstreams[0].has_hc, 0);
    MP_CHECK_EQ_INT(cfg.upstreams[0].pool.m[1].addr.ss_family, AF_INET6);
    alb_config_free(&cfg);

    MP_CHECK_EQ_INT(
        parse_text("upstreams = { u = {\n"
                   "  servers = ( \"127.0.0.1:1\", { address = \"127.0.0.1:2\"; weight = 3; },\n"
                   "              { address = \"127.0.0.1:3\"; backup = true; } );\n"
                   "  balance = \"hash\"; hash_key = \"cookie:sid\";\n"
                   "  max_fails = 5; fail_timeout_ms = 2500; retries = 2;\n"
                   "  health_check = { path = \"/healthz\"; interval_ms = 500; timeout_ms = 200;\n"
                   "    healthy_threshold = 1; unhealthy_threshold = 4; expect_status = \"2xx,301\";\n"
                   "    port = 9000; };\n"
                   "}; };\n",
                   &cfg, err, sizeof(err)),
        0);
    alb_upstream *u = &cfg.upstreams[0];
    MP_CHECK_EQ_INT(u->pool.n, 3);
    MP_CHECK_EQ_INT(u->pool.m[0].weight, 1);
    MP_CHECK_EQ_INT(u->pool.m[1].weight, 3);
    MP_CHECK_EQ_INT(u->pool.m[2].backup, 1);
    MP_CHECK_EQ_INT(u->pool.ntier[0], 2);
    MP_CHECK_EQ_INT(u->pool.set.balance, ALB_BAL_HASH);
    MP_CHECK_EQ_INT(u->pool.set.hash_src, ALB_HASH_COOKIE);
    MP_CHECK_STR(u->pool.set.hash_name, "sid");
    MP_CHECK_EQ_INT(u->pool.set.max_fails, 5);
    MP_CHECK_EQ_INT(u->pool.set.fail_timeout_ms, 2500);
    MP_CHECK_EQ_INT(u->retries, 2);
    MP_CHECK_EQ_INT(u->has_hc, 1);
    MP_CHECK_STR(u->hc.path, "/healthz");
    MP_CHECK_EQ_INT(u->hc.interval_ms, 500);
    MP_CHECK_EQ_INT(u->hc.timeout_ms, 200);
    MP_CHECK_EQ_INT(u->hc.healthy_threshold, 1);
    MP_CHECK_EQ_INT(u->hc.unhealthy_threshold, 4);
    MP_CHECK_EQ_INT(u->hc.port, 9000);
    MP_CHECK(alb_hc_status_ok(&u->hc, 204) && alb_hc_status_ok(&u->hc, 301));
    MP_CHECK(!alb_hc_status_ok(&u->hc, 302) && !alb_hc_status_ok(&u->hc, 500));
    alb_config_free(&cfg);

    /* health_check with only defaults */
    MP_CHECK_EQ_INT(parse_text("upstreams = { u = { servers = [\"127.0.0.1:1\"];\n"
                               "  balance = \"least-conn\"; health_check = { }; }; };\n",
                               &cfg, err, sizeof(err)),
                    0);
    MP_CHECK_EQ_INT(cfg.upstreams[0].has_hc, 1);
    MP_CHECK_STR(cfg.upstreams[0].hc.path, "/");
    MP_CHECK_EQ_INT(cfg.upstreams[0].hc.interval_ms, 2000);
    MP_CHECK_EQ_INT(cfg.upstreams[0].hc.timeout_ms, 1000);
    MP_CHECK_EQ_INT(cfg.upstreams[0].hc.healthy_threshold, 2);
    MP_CHECK_EQ_INT(cfg.upstreams[0].hc.unhealthy_threshold, 3);
    MP_CHECK(alb_hc_status_ok(&cfg.upstreams[0].hc, 200));
    MP_CHECK(!alb_hc_status_ok(&cfg.upstreams[0].hc, 301));
    alb_config_free(&cfg);
}

MP_TEST(settings_errors_carry_file_and_line)
{
    static const struct {
        const char *text, *want;
    } bad[] = {
        {"upstreams = { u = { servers = [\"127.0.0.1:1\"];\n"
         "  balance = \"random\"; }; };\n",
         ":2: alb: balance must be"},
        {"upstreams = { u = { servers = [\"127.0.0.1:1\"];\n"
         "  stickiness = 1; }; };\n",
         ":2: unknown key 'stickiness'"},
        {"upstreams = { u = { servers = [\"127.0.0.1:1\"];\n"
         "  hash_key = \"client_ip\"; }; };\n",
         ":2: alb: hash_key needs balance"},
        {"upstreams = { u = { servers = [\"127.0.0.1:1\"]; balance = \"hash\";\n"
         "  hash_key = \"url\"; }; };\n",
         ":2: alb: hash_key must be"},
        {"upstreams = { u = { servers = (\n"
         "  { address = \"127.0.0.1:1\"; weight = 0; } ); }; };\n",
         ":2: alb: weight must be an integer 1..100"},
        {"upstreams = { u = { servers = (\n"
         "  { address = \"127.0.0.1:1\"; color = \"red\"; } ); }; };\n",
         ":2: unknown key 'color'"},
        {"upstreams = { u = { servers = (\n"
         "  { address = \"nowhere:1\"; } ); }; };\n",
         ":2: alb: server address must be"},
        {"upstreams = { u = { servers = (\n"
         "  { address = \"127.0.0.1:1\"; backup = true; } ); }; };\n",
         "not a backup"},
        {"upstreams = { u = { servers = [\"127.0.0.1:1\"];\n"
         "  max_fails = -1; }; };\n",
         ":2: alb: max_fails must be"},
        {"upstreams = { u = { servers = [\"127.0.0.1:1\"];\n"
         "  health_check = { path = \"healthz\"; }; }; };\n",
         ":2: alb: health_check.path must start"},
        {"upstreams = { u = { servers = [\"127.0.0.1:1\"];\n"
         "  health_check = { expect_status = \"ok\"; }; }; };\n",
         ":2: alb: expect_status must be"},
        {"upstreams = { u = { servers = [\"127.0.0.1:1\"];\n"
         "  health_check = { interval = 5; }; }; };\n",
         ":2: unknown key 'interval'"},
        {"upstreams = { u = { servers = [\"127.0.0.1:1\"];\n"
         "  health_check = { timeout_ms = 0; }; }; };\n",
         ":2: alb: timeout_ms must be"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        alb_config cfg;
        char err[256] = "";
        MP_CHECK_EQ_INT(parse_text(bad[i].text, &cfg, err, sizeof(err)), -EINVAL);
        MP_CHECK_CONTAINS(err, bad[i].want);
    }
}

MP_TEST_MAIN(MP_CASE(round_robin_rotates_exactly), MP_CASE(weighted_is_smooth_and_exact),
             MP_CASE(weighted_skips_a_down_member), MP_CASE(least_conn_follows_held_requests),
             MP_CASE(hash_is_stable_and_balanced),
             MP_CASE(hash_removal_moves_only_the_removed_members_keys),
             MP_CASE(ejection_after_max_fails_and_one_trial),
             MP_CASE(no_usable_member_is_a_distinct_code),
             MP_CASE(backups_only_when_no_primary_is_usable),
             MP_CASE(exclusion_set_is_respected), MP_CASE(concurrent_picks_keep_exact_totals),
             MP_CASE(request_keys_from_header_cookie_or_client_ip),
             MP_CASE(settings_old_and_new_forms), MP_CASE(settings_errors_carry_file_and_line))
