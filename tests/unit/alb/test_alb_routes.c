/*
 * test_alb_routes.c — the ALB route table: every pattern kind, the ordering rules
 * (priority, specificity, exact host over wildcard, given order), refusals with their
 * reasons, per-route counters that survive a rebuild, and matching from several
 * threads while tables are swapped.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "alb_routes.h"
#include "mp_test.h"

static const char *const UPS[] = {"web", "api", "static"};

typedef struct {
    const char *names[4];
    const char *values[4];
    int n;
} hdrs;

static const char *hdr_get(void *ctx, const char *name, size_t *len)
{
    hdrs *h = ctx;
    for (int i = 0; i < h->n; i++)
        if (strcasecmp(h->names[i], name) == 0) {
            *len = strlen(h->values[i]);
            return h->values[i];
        }
    return NULL;
}

/* The id of the route a request matches, "-" for none. */
static const char *route_of(const alb_route_table *t, const char *method, const char *host,
                            const char *target, hdrs *h)
{
    alb_route_req rq = {host, strlen(host), target, strlen(target), method, strlen(method),
                        hdr_get, h};
    alb_route_result r;
    return alb_routes_match(t, &rq, &r) == 0 ? r.id : "-";
}

static alb_route_table *build(const alb_route_spec *s, size_t n, char *err, size_t len)
{
    alb_route_table *t = NULL;
    int rc = alb_routes_build(s, n, UPS, 3, NULL, &t, err, len);
    return rc == 0 ? t : NULL;
}

MP_TEST(host_patterns)
{
    alb_route_spec s[] = {
        {.id = "exact", .host = "Example.COM", .upstream = "web"},
        {.id = "wild", .host = "*.example.com", .upstream = "api"},
        {.id = "re", .host = "~^img[0-9]+\\.cdn\\.test$", .upstream = "static"},
    };
    char err[256];
    alb_route_table *t = build(s, 3, err, sizeof(err));
    MP_CHECK(t != NULL);
    MP_CHECK_STR(route_of(t, "GET", "example.com", "/", NULL), "exact");
    MP_CHECK_STR(route_of(t, "GET", "EXAMPLE.com:8080", "/x", NULL), "exact");
    MP_CHECK_STR(route_of(t, "GET", "a.example.com", "/", NULL), "wild");
    MP_CHECK_STR(route_of(t, "GET", "a.b.example.com", "/", NULL), "wild");
    MP_CHECK_STR(route_of(t, "GET", "badexample.com", "/", NULL), "-");
    MP_CHECK_STR(route_of(t, "GET", "img42.cdn.test", "/", NULL), "re");
    MP_CHECK_STR(route_of(t, "GET", "IMG7.CDN.TEST:443", "/", NULL), "re");
    MP_CHECK_STR(route_of(t, "GET", "imgx.cdn.test", "/", NULL), "-");
    MP_CHECK_STR(route_of(t, "GET", "[::1]:80", "/", NULL), "-");
    alb_route_table_unref(t);
}

MP_TEST(path_patterns_and_specificity)
{
    alb_route_spec s[] = {
        {.id = "any", .upstream = "web"},
        {.id = "api", .path = "/api/", .upstream = "api"},
        {.id = "api-v2", .path = "/api/v2/", .upstream = "api"},
        {.id = "login", .path = "=/login", .upstream = "web"},
        {.id = "images", .path = "~\\.(png|jpe?g)$", .upstream = "static"},
    };
    char err[256];
    alb_route_table *t = build(s, 5, err, sizeof(err));
    MP_CHECK(t != NULL);
    MP_CHECK_STR(route_of(t, "GET", "h", "/api/v2/users?x=1", NULL), "api-v2");
    MP_CHECK_STR(route_of(t, "GET", "h", "/api/v1/users", NULL), "api");
    MP_CHECK_STR(route_of(t, "GET", "h", "/login", NULL), "login");
    MP_CHECK_STR(route_of(t, "GET", "h", "/login?next=/", NULL), "login");
    MP_CHECK_STR(route_of(t, "GET", "h", "/login/again", NULL), "any");
    /* a regex has no literal length: equal priority puts it after the prefixes, but
     * before the catch-all, which comes first in the list only by order */
    MP_CHECK_STR(route_of(t, "GET", "h", "/api/logo.png", NULL), "api");
    alb_route_table_unref(t);

    alb_route_spec p[] = {
        {.id = "any", .upstream = "web"},
        {.id = "images", .path = "~\\.(png|jpe?g)$", .priority = 10, .upstream = "static"},
    };
    t = build(p, 2, err, sizeof(err));
    MP_CHECK_STR(route_of(t, "GET", "h", "/api/logo.png", NULL), "images");
    MP_CHECK_STR(route_of(t, "GET", "h", "/logo.png?v=2", NULL), "images");
    MP_CHECK_STR(route_of(t, "GET", "h", "/logo.gif", NULL), "any");
    alb_route_table_unref(t);
}

MP_TEST(methods_headers_priority)
{
    alb_route_spec s[] = {
        {.id = "writes", .methods = "POST,PUT, DELETE", .upstream = "api", .priority = 5},
        {.id = "beta", .nheaders = 1, .header_names = (const char *[]){"X-Beta"},
         .header_values = (const char *[]){"1"}, .upstream = "api", .priority = 7},
        {.id = "mobile", .nheaders = 1, .header_names = (const char *[]){"user-agent"},
         .header_values = (const char *[]){"~(?i)android|iphone"}, .upstream = "static",
         .priority = 6},
        {.id = "has-auth", .nheaders = 1, .header_names = (const char *[]){"authorization"},
         .header_values = (const char *[]){"*"}, .upstream = "web", .priority = 4},
        {.id = "rest", .upstream = "web"},
    };
    char err[256];
    alb_route_table *t = build(s, 5, err, sizeof(err));
    MP_CHECK(t != NULL);
    hdrs none = {.n = 0};
    hdrs beta = {{"x-beta"}, {"1"}, 1};
    hdrs beta0 = {{"x-beta"}, {"0"}, 1};
    hdrs phone = {{"User-Agent"}, {"Mozilla (iPhone)"}, 1};
    hdrs auth = {{"Authorization"}, {"Bearer x"}, 1};
    MP_CHECK_STR(route_of(t, "GET", "h", "/", &none), "rest");
    MP_CHECK_STR(route_of(t, "POST", "h", "/", &none), "writes");
    MP_CHECK_STR(route_of(t, "post", "h", "/", &none), "rest"); /* methods are case-sensitive */
    MP_CHECK_STR(route_of(t, "POST", "h", "/", &beta), "beta");
    MP_CHECK_STR(route_of(t, "GET", "h", "/", &beta0), "rest");
    MP_CHECK_STR(route_of(t, "DELETE", "h", "/", &phone), "mobile");
    MP_CHECK_STR(route_of(t, "GET", "h", "/", &auth), "has-auth");
    alb_route_table_unref(t);
}

MP_TEST(exact_host_beats_wildcard_and_order_breaks_ties)
{
    alb_route_spec s[] = {
        {.id = "wild", .host = "*.a.test", .upstream = "api"},
        {.id = "exact", .host = "www.a.test", .upstream = "web"},
        {.id = "first", .host = "b.test", .upstream = "web"},
        {.id = "second", .host = "b.test", .upstream = "api"},
    };
    char err[256];
    alb_route_table *t = build(s, 4, err, sizeof(err));
    MP_CHECK_STR(route_of(t, "GET", "www.a.test", "/", NULL), "exact");
    MP_CHECK_STR(route_of(t, "GET", "m.a.test", "/", NULL), "wild");
    MP_CHECK_STR(route_of(t, "GET", "b.test", "/", NULL), "first");
    alb_route_table_unref(t);
}

MP_TEST(refusals_say_why)
{
    char err[256];
    alb_route_spec unknown[] = {{.id = "r1", .upstream = "nope"}};
    MP_CHECK(build(unknown, 1, err, sizeof(err)) == NULL);
    MP_CHECK_CONTAINS(err, "route r1: unknown upstream \"nope\"");
    MP_CHECK_CONTAINS(err, "web, api, static");
    alb_route_spec none[] = {{.id = "r2"}};
    MP_CHECK(build(none, 1, err, sizeof(err)) == NULL);
    MP_CHECK_CONTAINS(err, "route r2: no upstream");
    alb_route_spec re[] = {{.id = "r3", .path = "~([a-z", .upstream = "web"}};
    MP_CHECK(build(re, 1, err, sizeof(err)) == NULL);
    MP_CHECK_CONTAINS(err, "route r3: path regex");
    alb_route_spec dup[] = {{.id = "d", .upstream = "web"}, {.id = "d", .upstream = "api"}};
    MP_CHECK(build(dup, 2, err, sizeof(err)) == NULL);
    MP_CHECK_CONTAINS(err, "route d: the id is used twice");
    alb_route_spec path[] = {{.id = "p", .path = "api", .upstream = "web"}};
    MP_CHECK(build(path, 1, err, sizeof(err)) == NULL);
    MP_CHECK_CONTAINS(err, "must start with '/'");
    alb_route_spec star[] = {{.id = "s", .host = "a*.test", .upstream = "web"}};
    MP_CHECK(build(star, 1, err, sizeof(err)) == NULL);
    MP_CHECK_CONTAINS(err, "leading");
    alb_route_spec rw[] = {{.id = "w", .host_rewrite = "a b", .upstream = "web"}};
    MP_CHECK(build(rw, 1, err, sizeof(err)) == NULL);
    MP_CHECK_CONTAINS(err, "host_rewrite");
}

MP_TEST(stats_survive_rebuilds)
{
    alb_route_stats_set *set = alb_route_stats_set_new();
    alb_route_spec s[] = {{.id = "r", .upstream = "web"}};
    char err[256];
    alb_route_table *t1 = NULL, *t2 = NULL;
    MP_CHECK(alb_routes_build(s, 1, UPS, 3, set, &t1, err, sizeof(err)) == 0);
    alb_route_req rq = {"h", 1, "/", 1, "GET", 3, NULL, NULL};
    alb_route_result r;
    MP_CHECK(alb_routes_match(t1, &rq, &r) == 0);
    alb_route_stats_record(r.stats, 200, 100, 10, 20);
    alb_route_stats_record(r.stats, 503, 5000, 10, 20);
    MP_CHECK(alb_routes_build(s, 1, UPS, 3, set, &t2, err, sizeof(err)) == 0);
    alb_route_result r2;
    MP_CHECK(alb_routes_match(t2, &rq, &r2) == 0);
    MP_CHECK(r2.stats == r.stats);
    MP_CHECK_EQ_INT(atomic_load(&r2.stats->requests), 2);
    MP_CHECK_EQ_INT(atomic_load(&r2.stats->status[2]), 1);
    MP_CHECK_EQ_INT(atomic_load(&r2.stats->status[5]), 1);
    MP_CHECK_EQ_INT(atomic_load(&r2.stats->bytes_out), 40);
    /* p50 is the fast one's bucket, p99 the slow one's */
    MP_CHECK(alb_route_stats_quantile(r2.stats, 0.5) >= 100);
    MP_CHECK(alb_route_stats_quantile(r2.stats, 0.5) < 5000);
    MP_CHECK(alb_route_stats_quantile(r2.stats, 0.99) >= 5000);
    alb_route_table_unref(t1);
    alb_route_table_unref(t2);
    alb_route_stats_set_free(set);
}

/* Workers match while the control thread swaps tables: no torn reads, no frees under
 * a reader (run under ASan/TSan to make that visible). */
static _Atomic(alb_route_table *) current;
static pthread_mutex_t swap_mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int stop_flag;
static _Atomic long matched;

static alb_route_table *grab(void)
{
    pthread_mutex_lock(&swap_mu);
    alb_route_table *t = atomic_load(&current);
    alb_route_table_ref(t);
    pthread_mutex_unlock(&swap_mu);
    return t;
}

static void *matcher(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop_flag)) {
        alb_route_table *t = grab();
        if (strcmp(route_of(t, "GET", "x.test", "/api/1", NULL), "api") == 0)
            atomic_fetch_add(&matched, 1);
        alb_route_table_unref(t);
    }
    return NULL;
}

MP_TEST(swap_under_load)
{
    alb_route_spec s[] = {{.id = "api", .path = "~^/api/[0-9]+$", .upstream = "api"},
                          {.id = "rest", .upstream = "web"}};
    char err[256];
    alb_route_table *t = build(s, 2, err, sizeof(err));
    atomic_store(&current, t);
    pthread_t th[3];
    for (int i = 0; i < 3; i++)
        pthread_create(&th[i], NULL, matcher, NULL);
    for (int i = 0; i < 2000; i++) {
        alb_route_table *n = build(s, 2, err, sizeof(err));
        pthread_mutex_lock(&swap_mu);
        alb_route_table *old = atomic_exchange(&current, n);
        pthread_mutex_unlock(&swap_mu);
        alb_route_table_unref(old);
    }
    atomic_store(&stop_flag, 1);
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    alb_route_table_unref(atomic_load(&current));
    MP_CHECK(atomic_load(&matched) > 0);
}

MP_TEST_MAIN(MP_CASE(host_patterns), MP_CASE(path_patterns_and_specificity),
             MP_CASE(methods_headers_priority),
             MP_CASE(exact_host_beats_wildcard_and_order_breaks_ties),
             MP_CASE(refusals_say_why), MP_CASE(stats_survive_rebuilds),
             MP_CASE(swap_under_load))
