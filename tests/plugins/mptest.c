/*
 * mptest.c — the test-only plugin. It exercises the ABI from the plugin's side and is
 * never installed. One source builds several variants (see tests/Makefile.inc):
 *   mptest             version 1.0.0
 *   mptest_v2          version 2.0.0 (same plugin name: a new generation on reload)
 *   mptest_badabi      claims ABI major 99
 *   mptest_nosym       exports no entry symbol
 *   mptest_failcreate  create() always fails
 *
 * Settings (all optional):
 *   greeting = "text";      prefixed to Version replies
 *   health = "healthy" | "degraded" | "unhealthy";
 *   handles_port = 8080;    CanHandle says yes only for routes to this port (unset: all)
 *   reject = true;          validate_config refuses (with FILE:LINE)
 *   fail_create = true;     create() fails
 *   tcp = "echo" | "upstream";   what routed connections get (default echo)
 *   upstream = "127.0.0.1:9000"; where "upstream" connections are pumped to
 *   banner = true;          first send "mptest <version>\n" on each connection
 *   banner_worker = true;   ... as "mptest <version> w<worker index>\n"
 *
 * Routes (ABI 1.2 routes_changed): the table is counted and its ids listed in the
 * custom stats (routes_seen, route_ids); a route whose metadata has the key
 * "mptest_refuse" makes the whole table refused with "route <id>: refused on request".
 *
 * gRPC methods (raw bytes, no protobuf):
 *   /mptest.Echo/Echo      replies with the request bytes; counted in the stats
 *   /mptest.Echo/Version   "<version> <greeting>"
 *   /mptest.Echo/Count     request "N": streams "0".."N-1" from a plugin thread
 *   /mptest.Echo/Slow      request "MS": replies "done" after MS ms from a plugin thread
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "marchproxy/plugin.h"

#ifndef MPTEST_VERSION
#define MPTEST_VERSION "1.0.0"
#endif
#ifndef MPTEST_ABI_MAJOR
#define MPTEST_ABI_MAJOR MP_ABI_MAJOR
#endif

#define MAX_THREADS 64
#define MAX_COUNT 10000
#define MAX_SLOW_MS 60000

typedef struct settings {
    char greeting[128];
    mp_health health;
    int64_t handles_port;
    bool upstream_mode;
    struct sockaddr_in upstream;
    int banner;
    int banner_worker;
} settings;

typedef struct mptest {
    const mp_host_api *api;
    mp_instance *inst;
    pthread_mutex_t lock; /* guards cfg and threads */
    settings cfg;
    pthread_t threads[MAX_THREADS];
    int n_threads;
    _Atomic uint64_t echo_calls;
    _Atomic uint64_t connections;
    _Atomic uint64_t closed[MP_CLOSE_OVERFLOW + 1]; /* by mp_close_reason */
    size_t routes_seen;    /* control thread only, like routes_changed */
    char route_ids[256];
} mptest;

typedef struct job {
    mptest *t;
    mp_rpc_call *call;
    long n;
} job;

static const char *const allowed_keys[] = {"greeting", "health",      "handles_port", "reject",
                                           "fail_create", "tcp",   "upstream",     "banner",
                                           "banner_worker", NULL};

static int parse_settings(const mp_host_api *api, const mp_config *s, settings *out, char *err,
                          size_t len)
{
    memset(out, 0, sizeof(*out));
    out->health = MP_HEALTH_HEALTHY;
    int rc = api->cfg_check_keys(s, allowed_keys, err, len);
    if (rc < 0)
        return rc;
    int flag = 0;
    if (api->cfg_get_bool(s, "reject", &flag) == 0 && flag)
        return api->cfg_error(api->cfg_lookup(s, "reject"), err, len,
                              "mptest: settings rejected on request");
    const char *str;
    rc = api->cfg_get_string(s, "greeting", &str);
    if (rc == -EINVAL)
        return api->cfg_error(api->cfg_lookup(s, "greeting"), err, len,
                              "greeting must be a string");
    if (rc == 0)
        snprintf(out->greeting, sizeof(out->greeting), "%s", str);
    if (api->cfg_get_string(s, "health", &str) == 0) {
        if (!strcmp(str, "healthy"))
            out->health = MP_HEALTH_HEALTHY;
        else if (!strcmp(str, "degraded"))
            out->health = MP_HEALTH_DEGRADED;
        else if (!strcmp(str, "unhealthy"))
            out->health = MP_HEALTH_UNHEALTHY;
        else
            return api->cfg_error(api->cfg_lookup(s, "health"), err, len,
                                  "health must be healthy, degraded or unhealthy");
    }
    if (api->cfg_get_int(s, "handles_port", &out->handles_port) == -EINVAL)
        return api->cfg_error(api->cfg_lookup(s, "handles_port"), err, len,
                              "handles_port must be an integer");
    if (api->cfg_get_string(s, "tcp", &str) == 0) {
        if (!strcmp(str, "upstream"))
            out->upstream_mode = true;
        else if (strcmp(str, "echo") != 0)
            return api->cfg_error(api->cfg_lookup(s, "tcp"), err, len,
                                  "tcp must be \"echo\" or \"upstream\"");
    }
    if (api->cfg_get_string(s, "upstream", &str) == 0) {
        char host[64];
        unsigned port = 0;
        if (sscanf(str, "%63[0-9.]:%u", host, &port) != 2 || port == 0 || port > 65535 ||
            inet_pton(AF_INET, host, &out->upstream.sin_addr) != 1)
            return api->cfg_error(api->cfg_lookup(s, "upstream"), err, len,
                                  "upstream must be IPv4:port");
        out->upstream.sin_family = AF_INET;
        out->upstream.sin_port = htons((uint16_t)port);
    } else if (out->upstream_mode) {
        return api->cfg_error(s, err, len, "tcp = \"upstream\" needs upstream");
    }
    api->cfg_get_bool(s, "banner", &out->banner);
    api->cfg_get_bool(s, "banner_worker", &out->banner_worker);
    return 0;
}

static int validate(const mp_host_api *api, const mp_config *s, char *err, size_t len)
{
    settings tmp;
    return parse_settings(api, s, &tmp, err, len);
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Parses a small decimal request; -1 when it is not one. */
static long parse_number(const uint8_t *req, size_t len, long max)
{
    if (len == 0 || len > 9)
        return -1;
    long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (req[i] < '0' || req[i] > '9')
            return -1;
        v = v * 10 + (req[i] - '0');
    }
    return v <= max ? v : -1;
}

static void on_echo(void *state, mp_rpc_call *call, const uint8_t *req, size_t len)
{
    mptest *t = state;
    uint64_t start = now_us();
    t->api->rpc_send(call, req, len);
    t->api->rpc_finish(call, MP_RPC_OK, NULL);
    atomic_fetch_add(&t->echo_calls, 1);
    t->api->stats_request(t->inst, now_us() - start, 1, len, len);
}

static void on_version(void *state, mp_rpc_call *call, const uint8_t *req, size_t len)
{
    mptest *t = state;
    char buf[256];
    pthread_mutex_lock(&t->lock);
    int n = snprintf(buf, sizeof(buf), "%s %s", MPTEST_VERSION, t->cfg.greeting);
    pthread_mutex_unlock(&t->lock);
    t->api->rpc_send(call, buf, (size_t)n);
    t->api->rpc_finish(call, MP_RPC_OK, NULL);
}

static void *count_thread(void *arg)
{
    job *j = arg;
    for (long i = 0; i < j->n; i++) {
        char buf[24];
        int n = snprintf(buf, sizeof(buf), "%ld", i);
        if (j->t->api->rpc_send(j->call, buf, (size_t)n) < 0) {
            j->t->api->rpc_finish(j->call, MP_RPC_CANCELLED, "client went away");
            free(j);
            return NULL;
        }
        usleep(1000);
    }
    j->t->api->rpc_finish(j->call, MP_RPC_OK, NULL);
    free(j);
    return NULL;
}

static void *slow_thread(void *arg)
{
    job *j = arg;
    usleep((useconds_t)j->n * 1000u);
    j->t->api->rpc_send(j->call, "done", 4);
    j->t->api->rpc_finish(j->call, MP_RPC_OK, NULL);
    free(j);
    return NULL;
}

/* Runs fn on a new joinable thread; destroy() joins them all before the .so goes. */
static void spawn(mptest *t, mp_rpc_call *call, long n, void *(*fn)(void *))
{
    job *j = malloc(sizeof(*j));
    pthread_mutex_lock(&t->lock);
    if (!j || t->n_threads == MAX_THREADS) {
        pthread_mutex_unlock(&t->lock);
        free(j);
        t->api->rpc_finish(call, MP_RPC_RESOURCE_EXHAUSTED, "too many calls in progress");
        return;
    }
    *j = (job){t, call, n};
    if (pthread_create(&t->threads[t->n_threads], NULL, fn, j) != 0) {
        pthread_mutex_unlock(&t->lock);
        free(j);
        t->api->rpc_finish(call, MP_RPC_RESOURCE_EXHAUSTED, "cannot start a thread");
        return;
    }
    t->n_threads++;
    pthread_mutex_unlock(&t->lock);
}

static void on_count(void *state, mp_rpc_call *call, const uint8_t *req, size_t len)
{
    mptest *t = state;
    long n = parse_number(req, len, MAX_COUNT);
    if (n < 0) {
        t->api->rpc_finish(call, MP_RPC_INVALID_ARGUMENT, "request must be a count 0..10000");
        return;
    }
    spawn(t, call, n, count_thread);
}

static void on_slow(void *state, mp_rpc_call *call, const uint8_t *req, size_t len)
{
    mptest *t = state;
    long ms = parse_number(req, len, MAX_SLOW_MS);
    if (ms < 0) {
        t->api->rpc_finish(call, MP_RPC_INVALID_ARGUMENT, "request must be milliseconds");
        return;
    }
    spawn(t, call, ms, slow_thread);
}


/* ------------------------------------------------------------ connections */

static void echo_data(void *ctx, mp_conn *c, const uint8_t *data, size_t len)
{
    mptest *t = ctx;
    /* Backpressure: a peer that does not read stops being read. */
    if (t->api->conn_send(c, data, len) == 1)
        t->api->conn_pause(c);
}

static void echo_drain(void *ctx, mp_conn *c)
{
    mptest *t = ctx;
    t->api->conn_resume(c);
}

static void echo_eof(void *ctx, mp_conn *c)
{
    mptest *t = ctx;
    t->api->conn_close(c); /* after what is queued has been written */
}

static void echo_closed(void *ctx, mp_conn *c, mp_close_reason reason, int err)
{
    mptest *t = ctx;
    atomic_fetch_add(&t->closed[reason <= MP_CLOSE_OVERFLOW ? reason : MP_CLOSE_ERROR], 1);
}

static const mp_conn_handler echo_handler = {
    .struct_size = sizeof(mp_conn_handler),
    .on_data = echo_data,
    .on_eof = echo_eof,
    .on_drain = echo_drain,
    .on_close = echo_closed,
};

static int on_connection(void *state, mp_conn *c, const mp_conn_info *info)
{
    mptest *t = state;
    atomic_fetch_add(&t->connections, 1);
    pthread_mutex_lock(&t->lock);
    settings cfg = t->cfg;
    pthread_mutex_unlock(&t->lock);
    t->api->conn_set_handler(c, &echo_handler, t);
    if (cfg.banner_worker) {
        char b[64];
        int n = snprintf(b, sizeof(b), "mptest %s w%d\n", MPTEST_VERSION, info->worker);
        t->api->conn_send(c, b, (size_t)n);
    } else if (cfg.banner) {
        char b[64];
        int n = snprintf(b, sizeof(b), "mptest %s\n", MPTEST_VERSION);
        t->api->conn_send(c, b, (size_t)n);
    }
    if (cfg.upstream_mode) {
        mp_conn *up;
        int rc = t->api->conn_connect(c, (const struct sockaddr *)&cfg.upstream,
                                      sizeof(cfg.upstream), 2000, NULL, NULL, &up);
        if (rc < 0)
            return rc;
        return t->api->conn_pump(c, up);
    }
    return 0;
}

static int create(const mp_host_api *api, mp_instance *inst, const mp_config *s, void **state,
                  char *err, size_t len)
{
#ifdef MPTEST_FAIL_CREATE
    snprintf(err, len, "mptest: simulated create failure");
    return -EIO;
#endif
    int flag = 0;
    if (api->cfg_get_bool(s, "fail_create", &flag) == 0 && flag) {
        snprintf(err, len, "mptest: fail_create is set");
        return -EIO;
    }
    mptest *t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    t->api = api;
    t->inst = inst;
    pthread_mutex_init(&t->lock, NULL);
    int rc = parse_settings(api, s, &t->cfg, err, len);
    if (rc == 0)
        rc = api->register_rpc(inst, "/mptest.Echo/Echo", 0, on_echo);
    /* Another instance of this plugin already serves the methods: this one runs
     * without them (one gRPC path has one owner). */
    if (rc == -EEXIST) {
        api->log(inst, MP_LOG_INFO, "mptest RPC methods are served by another instance");
        rc = 1;
    }
    if (rc == 0)
        rc = api->register_rpc(inst, "/mptest.Echo/Version", 0, on_version);
    if (rc == 0)
        rc = api->register_rpc(inst, "/mptest.Echo/Count", 1, on_count);
    if (rc == 0)
        rc = api->register_rpc(inst, "/mptest.Echo/Slow", 0, on_slow);
    if (rc == 1)
        rc = 0;
    if (rc < 0) {
        if (!err[0])
            snprintf(err, len, "mptest: register_rpc failed: %s", strerror(-rc));
        pthread_mutex_destroy(&t->lock);
        free(t);
        return rc;
    }
    api->log(inst, MP_LOG_INFO, "mptest %s ready", MPTEST_VERSION);
    *state = t;
    return 0;
}

static void destroy(void *state)
{
    mptest *t = state;
    /* No new calls reach a destroyed generation; join the threads of finished ones. */
    pthread_mutex_lock(&t->lock);
    int n = t->n_threads;
    pthread_mutex_unlock(&t->lock);
    for (int i = 0; i < n; i++)
        pthread_join(t->threads[i], NULL);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

static int reconfigure(void *state, const mp_config *s, char *err, size_t len)
{
    mptest *t = state;
    settings next;
    int rc = parse_settings(t->api, s, &next, err, len);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&t->lock);
    t->cfg = next;
    pthread_mutex_unlock(&t->lock);
    return 0;
}

static void health(void *state, int deep, mp_health_report *out)
{
    mptest *t = state;
    pthread_mutex_lock(&t->lock);
    out->status = t->cfg.health;
    pthread_mutex_unlock(&t->lock);
    snprintf(out->message, sizeof(out->message), "mptest %s%s", MPTEST_VERSION,
             deep ? " (deep check)" : "");
}

static void can_handle(void *state, const mp_route_view *route, mp_can_handle_result *out)
{
    mptest *t = state;
    pthread_mutex_lock(&t->lock);
    int64_t port = t->cfg.handles_port;
    pthread_mutex_unlock(&t->lock);
    out->can_handle = port == 0 || route->destination_port == port;
    out->priority = out->can_handle ? 50 : 0;
    snprintf(out->reason, sizeof(out->reason), "mptest handles port %lld, route asks %d",
             (long long)port, route->destination_port);
}

static int routes_changed(void *state, const mp_route_view *const *routes, size_t n,
                          char *err, size_t err_len)
{
    mptest *t = state;
    for (size_t i = 0; i < n; i++) {
        const mp_route_view *r = routes[i];
        if (!MP_HAS_MEMBER(mp_route_view, r->struct_size, metadata_values))
            continue;
        for (size_t k = 0; k < r->metadata_count; k++)
            if (strcmp(r->metadata_names[k], "mptest_refuse") == 0) {
                snprintf(err, err_len, "route %s: refused on request", r->route_id);
                return -EINVAL;
            }
    }
    t->routes_seen = n;
    t->route_ids[0] = '\0';
    size_t used = 0;
    for (size_t i = 0; i < n && used < sizeof(t->route_ids); i++)
        used += (size_t)snprintf(t->route_ids + used, sizeof(t->route_ids) - used, "%s%s",
                                 i ? "," : "", routes[i]->route_id);
    return 0;
}

static void custom_stats(void *state, const mp_stats_sink *sink)
{
    mptest *t = state;
    char v[32];
    snprintf(v, sizeof(v), "%zu", t->routes_seen);
    sink->add(sink->ctx, "routes_seen", v);
    sink->add(sink->ctx, "route_ids", t->route_ids);
    snprintf(v, sizeof(v), "%llu", (unsigned long long)atomic_load(&t->echo_calls));
    sink->add(sink->ctx, "echo_calls", v);
    snprintf(v, sizeof(v), "%llu", (unsigned long long)atomic_load(&t->connections));
    sink->add(sink->ctx, "connections", v);
    static const char *const reasons[] = {"local", "peer", "error", "timeout", "shutdown",
                                          "overflow"};
    for (int i = 0; i <= MP_CLOSE_OVERFLOW; i++) {
        char name[32];
        snprintf(name, sizeof(name), "closed_%s", reasons[i]);
        snprintf(v, sizeof(v), "%llu", (unsigned long long)atomic_load(&t->closed[i]));
        sink->add(sink->ctx, name, v);
    }
}

static const mp_plugin_descriptor descriptor = {
    .magic = MP_PLUGIN_MAGIC,
    .abi_major = MPTEST_ABI_MAJOR,
    .abi_minor = MP_ABI_MINOR,
    .struct_size = sizeof(mp_plugin_descriptor),
    .name = "mptest",
    .version = MPTEST_VERSION,
    .module_type = MP_MODULE_ALB,
    .validate_config = validate,
    .create = create,
    .destroy = destroy,
    .reconfigure = reconfigure,
    .health = health,
    .can_handle = can_handle,
    .custom_stats = custom_stats,
    .on_connection = on_connection,
    .routes_changed = routes_changed,
};

#ifndef MPTEST_NO_ENTRY
MP_PLUGIN_DEFINE(descriptor)
#else
/* Keeps the descriptor referenced so the variant builds warning-free. */
__attribute__((visibility("default"))) const void *mptest_not_an_entry(void);
const void *mptest_not_an_entry(void) { return &descriptor; }
#endif
