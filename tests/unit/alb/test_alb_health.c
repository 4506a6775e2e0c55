/*
 * test_alb_health.c — unit tests for plugins/alb/alb_health.c: a small HTTP server on
 * 127.0.0.1 (a thread in this test) is switched between answering 200, 500, not
 * listening and never answering, and the checker's verdicts are asserted check by check
 * (the server notes the member's flag as each request arrives, so the flip must come
 * exactly after the threshold). Also: the request's form, expect_status parsing, and
 * that stopping is prompt even with a long interval or a check in flight.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "alb_health.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "mp_test.h"

/* ------------------------------------------------------------ log capture */

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char log_buf[8192];

static void test_log(mp_instance *inst, mp_log_level level, const char *fmt, ...)
{
    (void)inst;
    (void)level;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&log_mu);
    size_t l = strlen(log_buf);
    snprintf(log_buf + l, sizeof(log_buf) - l, "%s\n", line);
    pthread_mutex_unlock(&log_mu);
}

static int log_has(const char *s)
{
    pthread_mutex_lock(&log_mu);
    int r = strstr(log_buf, s) != NULL;
    pthread_mutex_unlock(&log_mu);
    return r;
}

static void log_clear(void)
{
    pthread_mutex_lock(&log_mu);
    log_buf[0] = 0;
    pthread_mutex_unlock(&log_mu);
}

static mp_host_api fake_api(void)
{
    mp_host_api api;
    memset(&api, 0, sizeof(api));
    api.struct_size = sizeof(api);
    api.log = test_log;
    return api;
}

static uint64_t ms_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------ the test server */

enum srv_mode { S_200, S_500, S_CLOSED, S_HANG };

typedef struct test_server {
    uint16_t port;
    _Atomic int mode;
    _Atomic int stop;
    _Atomic int requests;
    const alb_member *watch; /* its healthy flag is noted per request */
    int flags[256];          /* healthy flag at each request's arrival */
    int codes[256];          /* status answered to each request (0: none) */
    char first_req[512];
    pthread_t thread;
    int lfd;
} test_server;

static int listen_on(uint16_t port, uint16_t *bound)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 16) < 0) {
        close(fd);
        return -1;
    }
    socklen_t al = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &al);
    if (bound)
        *bound = ntohs(a.sin_port);
    return fd;
}

static void serve_one(test_server *s, int fd)
{
    char req[1024];
    size_t n = 0;
    struct timeval tv = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    while (n < sizeof(req) - 1) {
        ssize_t r = recv(fd, req + n, sizeof(req) - 1 - n, 0);
        if (r <= 0)
            break;
        n += (size_t)r;
        req[n] = 0;
        if (strstr(req, "\r\n\r\n"))
            break;
    }
    req[n] = 0;
    int k = atomic_load(&s->requests);
    if (k == 0)
        snprintf(s->first_req, sizeof(s->first_req), "%s", req);
    if (k < 256)
        s->flags[k] = atomic_load(&s->watch->healthy);
    atomic_fetch_add(&s->requests, 1);
    int mode = atomic_load(&s->mode);
    if (k < 256)
        s->codes[k] = mode == S_HANG ? 0 : mode == S_500 ? 500 : 200;
    if (mode == S_HANG) {
        while (atomic_load(&s->mode) == S_HANG && !atomic_load(&s->stop))
            sleep_ms(5);
    } else {
        char resp[128];
        int l = snprintf(resp, sizeof(resp),
                         "HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                         mode == S_500 ? 500 : 200);
        ssize_t w = send(fd, resp, (size_t)l, MSG_NOSIGNAL);
        (void)w;
    }
    close(fd);
}

static void *server_thread(void *arg)
{
    test_server *s = arg;
    while (!atomic_load(&s->stop)) {
        int mode = atomic_load(&s->mode);
        if (mode == S_CLOSED && s->lfd >= 0) {
            close(s->lfd);
            s->lfd = -1;
        } else if (mode != S_CLOSED && s->lfd < 0) {
            s->lfd = listen_on(s->port, NULL);
        }
        if (s->lfd < 0) {
            sleep_ms(5);
            continue;
        }
        struct pollfd p = {s->lfd, POLLIN, 0};
        if (poll(&p, 1, 10) == 1) {
            int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0)
                serve_one(s, fd);
        }
    }
    if (s->lfd >= 0)
        close(s->lfd);
    return NULL;
}

static int server_start(test_server *s, const alb_member *watch)
{
    memset(s, 0, sizeof(*s));
    s->watch = watch;
    s->lfd = listen_on(0, &s->port);
    if (s->lfd < 0)
        return -1;
    return pthread_create(&s->thread, NULL, server_thread, s) ? -1 : 0;
}

static void server_stop(test_server *s)
{
    atomic_store(&s->stop, 1);
    pthread_join(s->thread, NULL);
}

/* A port with nothing listening (bound once, then released). */
static uint16_t dead_port(void)
{
    uint16_t p = 0;
    int fd = listen_on(0, &p);
    close(fd);
    return p;
}

static void member_at(alb_member *m, uint16_t port)
{
    memset(m, 0, sizeof(*m));
    struct sockaddr_in *a = (struct sockaddr_in *)&m->addr;
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    m->addr_len = sizeof(*a);
    snprintf(m->text, sizeof(m->text), "127.0.0.1:%u", (unsigned)port);
    m->weight = 1;
}

/* Waits until fn(arg) or the deadline; returns fn's last value. */
static int wait_for(int (*fn)(void *), void *arg, int ms)
{
    uint64_t end = ms_now() + (uint64_t)ms;
    while (!fn(arg) && ms_now() < end)
        sleep_ms(2);
    return fn(arg);
}

static int is_unhealthy(void *m) { return !atomic_load(&((alb_member *)m)->healthy); }
static int is_healthy(void *m) { return atomic_load(&((alb_member *)m)->healthy); }

typedef struct reqs_at_least {
    test_server *s;
    int n;
} reqs_at_least;

static int has_reqs(void *a)
{
    reqs_at_least *r = a;
    return atomic_load(&r->s->requests) >= r->n;
}

/* First request from `from` on that arrived with the member's flag equal to `flag`. */
static int first_with_flag(const test_server *s, int from, int flag)
{
    int n = atomic_load(&s->requests);
    for (int k = from; k < n && k < 256; k++)
        if (s->flags[k] == flag)
            return k;
    return -1;
}

/* How many answers right before request k were `code` in a row. */
static int run_before(const test_server *s, int k, int code)
{
    int n = 0;
    while (k - n - 1 >= 0 && s->codes[k - n - 1] == code)
        n++;
    return k < 0 ? -1 : n;
}

/* ------------------------------------------------------------ tests */

MP_TEST(state_flips_after_the_thresholds)
{
    alb_pool pool;
    alb_pool_settings ps;
    alb_pool_settings_default(&ps);
    alb_member *m = calloc(2, sizeof(*m));
    member_at(&m[1], dead_port());
    char err[128];
    test_server srv;
    /* member 0 is the test server; its port is known only once it listens */
    member_at(&m[0], 1);
    MP_CHECK_EQ_INT(alb_pool_init(&pool, &ps, m, 2, err, sizeof(err)), 0);
    MP_CHECK_EQ_INT(server_start(&srv, &pool.m[0]), 0);
    member_at(&pool.m[0], srv.port);
    atomic_store(&pool.m[0].healthy, 1);
    atomic_store(&pool.m[1].healthy, 1);

    alb_hc_config hc;
    alb_hc_config_default(&hc);
    snprintf(hc.path, sizeof(hc.path), "/healthz");
    hc.interval_ms = 20;
    hc.timeout_ms = 300;
    hc.healthy_threshold = 2;
    hc.unhealthy_threshold = 3;
    alb_health_target t = {&pool, &hc, "web"};
    mp_host_api api = fake_api();
    alb_health *h = NULL;
    log_clear();
    MP_CHECK_EQ_INT(alb_health_start(&api, NULL, &t, 1, &h, err, sizeof(err)), 0);
    MP_CHECK(h != NULL);

    /* 200s keep member 0 healthy; the dead port goes unhealthy after 3 refusals. */
    reqs_at_least r = {&srv, 4};
    MP_CHECK(wait_for(has_reqs, &r, 3000));
    MP_CHECK(wait_for(is_unhealthy, &pool.m[1], 3000));
    MP_CHECK(atomic_load(&pool.m[0].healthy));
    MP_CHECK(log_has("upstream web server 127.0.0.1:"));
    MP_CHECK(log_has("is unhealthy: connect: Connection refused (3 failed checks)"));

    /* The request as a member sees it. */
    char want[64];
    snprintf(want, sizeof(want), "Host: 127.0.0.1:%u\r\n", (unsigned)srv.port);
    MP_CHECK(strncmp(srv.first_req, "GET /healthz HTTP/1.1\r\n", 23) == 0);
    MP_CHECK_CONTAINS(srv.first_req, want);
    MP_CHECK_CONTAINS(srv.first_req, "Connection: close\r\n");
    MP_CHECK_CONTAINS(srv.first_req, "User-Agent: marchproxy-health\r\n");

    /* 500s: the verdict flips on exactly the third 500 in a row. */
    atomic_store(&srv.mode, S_500);
    MP_CHECK(wait_for(is_unhealthy, &pool.m[0], 3000));
    r.n = atomic_load(&srv.requests) + 1;
    MP_CHECK(wait_for(has_reqs, &r, 3000));
    int k = first_with_flag(&srv, 0, 0);
    MP_CHECK_EQ_INT(run_before(&srv, k, 500), 3);
    MP_CHECK(log_has("is unhealthy: status 500 (3 failed checks)"));

    /* Back to 200: healthy again on exactly the second 200 in a row. */
    atomic_store(&srv.mode, S_200);
    MP_CHECK(wait_for(is_healthy, &pool.m[0], 3000));
    r.n = atomic_load(&srv.requests) + 1;
    MP_CHECK(wait_for(has_reqs, &r, 3000));
    k = first_with_flag(&srv, k, 1);
    MP_CHECK_EQ_INT(run_before(&srv, k, 200), 2);
    MP_CHECK(log_has("is healthy again (2 good checks)"));

    /* Not listening: refused connects take it out again. */
    atomic_store(&srv.mode, S_CLOSED);
    MP_CHECK(wait_for(is_unhealthy, &pool.m[0], 3000));
    atomic_store(&srv.mode, S_200);
    MP_CHECK(wait_for(is_healthy, &pool.m[0], 3000));

    /* Accepting but never answering: timeouts count as failures. */
    log_clear();
    atomic_store(&srv.mode, S_HANG);
    MP_CHECK(wait_for(is_unhealthy, &pool.m[0], 5000));
    MP_CHECK(log_has("timed out"));
    MP_CHECK(alb_health_checks_done(h) > 10);

    alb_health_stop(h);
    server_stop(&srv);
    alb_pool_destroy(&pool);
}

MP_TEST(stop_is_prompt)
{
    alb_pool pool;
    alb_pool_settings ps;
    alb_pool_settings_default(&ps);
    alb_member *m = calloc(1, sizeof(*m));
    member_at(m, 1);
    char err[128];
    MP_CHECK_EQ_INT(alb_pool_init(&pool, &ps, m, 1, err, sizeof(err)), 0);
    test_server srv;
    MP_CHECK_EQ_INT(server_start(&srv, &pool.m[0]), 0);
    member_at(&pool.m[0], srv.port);
    atomic_store(&pool.m[0].healthy, 1);
    alb_hc_config hc;
    alb_hc_config_default(&hc);
    hc.interval_ms = 600000; /* ten minutes between checks */
    hc.timeout_ms = 600000;
    alb_health_target t = {&pool, &hc, "slow"};
    mp_host_api api = fake_api();

    /* Idle between checks. */
    alb_health *h = NULL;
    MP_CHECK_EQ_INT(alb_health_start(&api, NULL, &t, 1, &h, err, sizeof(err)), 0);
    reqs_at_least r = {&srv, 1};
    MP_CHECK(wait_for(has_reqs, &r, 3000));
    sleep_ms(20);
    MP_CHECK_EQ_INT(alb_health_checks_done(h), 1);
    uint64_t t0 = ms_now();
    alb_health_stop(h);
    MP_CHECK(ms_now() - t0 < 200);

    /* A check waiting on a member that never answers. */
    atomic_store(&srv.mode, S_HANG);
    h = NULL;
    MP_CHECK_EQ_INT(alb_health_start(&api, NULL, &t, 1, &h, err, sizeof(err)), 0);
    r.n = 2;
    MP_CHECK(wait_for(has_reqs, &r, 3000));
    t0 = ms_now();
    alb_health_stop(h);
    MP_CHECK(ms_now() - t0 < 200);
    MP_CHECK_EQ_INT(alb_health_checks_done(NULL), 0);
    atomic_store(&srv.mode, S_200);
    server_stop(&srv);
    alb_pool_destroy(&pool);

    /* Nothing to check: no thread. */
    h = (alb_health *)&t;
    MP_CHECK_EQ_INT(alb_health_start(&api, NULL, &t, 0, &h, err, sizeof(err)), 0);
    MP_CHECK(h == NULL);
    alb_health_stop(NULL);
}

MP_TEST(expect_status_forms)
{
    alb_hc_config hc;
    alb_hc_config_default(&hc);
    MP_CHECK(alb_hc_status_ok(&hc, 200) && alb_hc_status_ok(&hc, 299));
    MP_CHECK(!alb_hc_status_ok(&hc, 199) && !alb_hc_status_ok(&hc, 300));
    MP_CHECK_EQ_INT(alb_hc_parse_expect(" 204 , 3xx", &hc), 0);
    MP_CHECK_EQ_INT(hc.nexpect, 2);
    MP_CHECK(alb_hc_status_ok(&hc, 204) && alb_hc_status_ok(&hc, 302));
    MP_CHECK(!alb_hc_status_ok(&hc, 200) && !alb_hc_status_ok(&hc, 404));
    MP_CHECK_EQ_INT(alb_hc_parse_expect("5XX", &hc), 0);
    MP_CHECK(alb_hc_status_ok(&hc, 503));
    const char *bad[] = {"", "6xx", "2x", "20", "2xx,", "2xx;3xx", "abc", "2000",
                         "1xx,2xx,3xx,4xx,5xx,200,201,202,203"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        MP_CHECK_EQ_INT(alb_hc_parse_expect(bad[i], &hc), -EINVAL);
}

MP_TEST_MAIN(MP_CASE(state_flips_after_the_thresholds), MP_CASE(stop_is_prompt),
             MP_CASE(expect_status_forms))
