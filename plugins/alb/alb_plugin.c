/*
 * alb_plugin.c — the ALB plugin's descriptor and instance lifecycle: validate/create/
 * destroy, health and custom stats. The HTTP proxying lives in alb_proxy.c, the
 * settings in alb_config.c, the live routes and rate limits in alb_tables.c.
 *
 * No reconfigure: connections read the parsed settings without locks, so a change of
 * settings takes a reload (a new generation), whose old connections drain on the old
 * settings. Routes and rate limits change live (alb_tables.c), and so do the TLS
 * certificates: a watcher thread re-reads the files when they change (the host's Reload
 * makes no new generation while settings and plugin are unchanged), and new connections
 * get the new context while open ones finish on the references they hold.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alb_internal.h"
#include "alb_upool.h"

/* ------------------------------------------------------------ TLS context in force */

int alb_state_tls_accept(alb_state *st, const alb_tls_io *io, alb_tls_conn **out, char *err,
                         size_t err_len)
{
    /* under the lock: the watcher may drop the state's reference right after a swap */
    pthread_mutex_lock(&st->tls_mu);
    int rc = alb_tls_conn_new_server(st->tls_server, io, out, err, err_len);
    pthread_mutex_unlock(&st->tls_mu);
    return rc;
}

/* Reads the certificate files again and puts the new context in force: always when
 * `force`, else only when one changed (1 then, 0 when none did). A failure (say, a key
 * not yet replaced along with its certificate) keeps the current context in force and
 * returns -EINVAL with the reason in why. The watcher and a Reload may both get here:
 * each builds its own context and the swap is under tls_mu. */
static int tls_refresh(alb_state *st, int force, char *why, size_t why_len)
{
    pthread_mutex_lock(&st->tls_mu);
    alb_tls_server_ctx *cur = alb_tls_server_ctx_ref(st->tls_server);
    pthread_mutex_unlock(&st->tls_mu);
    int rc = 0;
    if (cur && (force || alb_tls_server_ctx_changed(cur))) {
        alb_tls_server_ctx *fresh = NULL;
        if (alb_tls_server_ctx_reload(cur, &fresh, why, why_len) == 0) {
            pthread_mutex_lock(&st->tls_mu);
            alb_tls_server_ctx *old = st->tls_server;
            st->tls_server = fresh;
            pthread_mutex_unlock(&st->tls_mu);
            alb_tls_server_ctx_unref(old);
            rc = 1;
        } else {
            rc = -EINVAL;
        }
    }
    alb_tls_server_ctx_unref(cur);
    return rc;
}

/* The watcher's look at the certificate files; a failure is tried again at the next. */
static void tls_check(alb_state *st)
{
    char why[sizeof(st->tls_last_error)];
    int rc = tls_refresh(st, 0, why, sizeof(why));
    if (rc == 1) {
        st->tls_last_error[0] = 0;
        st->api->log(st->inst, MP_LOG_INFO,
                     "alb: certificate files changed: new TLS connections use them");
    } else if (rc < 0 && strcmp(why, st->tls_last_error) != 0) {
        snprintf(st->tls_last_error, sizeof(st->tls_last_error), "%s", why);
        st->api->log(st->inst, MP_LOG_WARN,
                     "alb: certificate files changed but cannot be used (the current "
                     "ones stay in force): %s",
                     why);
    }
}

/* ABI 1.3: a Reload that starts no new generation re-reads the certificates. */
static int reload_files(void *state, char *err, size_t err_len)
{
    alb_state *st = state;
    int rc = tls_refresh(st, 1, err, err_len);
    if (rc == 1)
        st->api->log(st->inst, MP_LOG_INFO,
                     "alb: certificates re-read on reload: new TLS connections use them");
    return rc < 0 ? rc : 0;
}

static void *tls_watch(void *arg)
{
    alb_state *st = arg;
    pthread_mutex_lock(&st->tls_watch_mu);
    while (!st->tls_watch_stop) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        uint64_t ns = (uint64_t)until.tv_nsec + (uint64_t)st->cfg.tls_check_ms * 1000000u;
        until.tv_sec += (time_t)(ns / 1000000000u);
        until.tv_nsec = (long)(ns % 1000000000u);
        pthread_cond_timedwait(&st->tls_watch_cv, &st->tls_watch_mu, &until);
        if (st->tls_watch_stop)
            break;
        pthread_mutex_unlock(&st->tls_watch_mu);
        tls_check(st);
        pthread_mutex_lock(&st->tls_watch_mu);
    }
    pthread_mutex_unlock(&st->tls_watch_mu);
    return NULL;
}

/* Puts the parsed server context in force and starts the watcher when asked for. */
static int tls_start(alb_state *st, char *err, size_t len)
{
    pthread_mutex_init(&st->tls_mu, NULL);
    pthread_mutex_init(&st->tls_watch_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&st->tls_watch_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (!st->cfg.tls_server)
        return 0;
    st->tls_server = alb_tls_server_ctx_ref(st->cfg.tls_server);
    if (!st->cfg.tls_check_ms)
        return 0;
    sigset_t all, old; /* the thread takes no signals: the host's threads handle those */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&st->tls_thread, NULL, tls_watch, st);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        snprintf(err, len, "alb: certificate watcher thread: %s", strerror(rc));
        return -rc;
    }
    st->tls_thread_on = 1;
    return 0;
}

static void tls_stop(alb_state *st)
{
    if (st->tls_thread_on) {
        pthread_mutex_lock(&st->tls_watch_mu);
        st->tls_watch_stop = 1;
        pthread_cond_signal(&st->tls_watch_cv);
        pthread_mutex_unlock(&st->tls_watch_mu);
        pthread_join(st->tls_thread, NULL);
        st->tls_thread_on = 0;
    }
    alb_tls_server_ctx_unref(st->tls_server);
    st->tls_server = NULL;
    pthread_cond_destroy(&st->tls_watch_cv);
    pthread_mutex_destroy(&st->tls_watch_mu);
    pthread_mutex_destroy(&st->tls_mu);
}

/* ------------------------------------------------------------ lifecycle */

static int validate(const mp_host_api *api, const mp_config *s, char *err, size_t len)
{
    return alb_config_parse(api, s, NULL, err, len);
}

static int create(const mp_host_api *api, mp_instance *inst, const mp_config *s, void **state,
                  char *err, size_t len)
{
    alb_state *st = calloc(1, sizeof(*st));
    if (!st)
        return -ENOMEM;
    st->api = api;
    st->inst = inst;
    int rc = alb_config_parse(api, s, &st->cfg, err, len);
    if (rc < 0) {
        free(st);
        return rc;
    }
    rc = tls_start(st, err, len);
    if (rc == 0)
        rc = alb_tables_init(st, err, len);
    if (rc == 0 && st->cfg.access_log_path)
        rc = alb_access_log_open(st->cfg.access_log_path, st->cfg.access_log_format,
                                 &st->access_log, err, len);
    if (rc == 0)
        rc = alb_config_health_start(api, inst, &st->cfg, &st->health, err, len);
    if (rc < 0) {
        if (rc == -ENOMEM)
            snprintf(err, len, "alb: out of memory");
        alb_access_log_close(st->access_log);
        alb_tables_destroy(st);
        tls_stop(st);
        alb_config_free(&st->cfg);
        free(st);
        return rc;
    }
    int tls_ups = 0;
    for (int i = 0; i < st->cfg.nupstreams; i++)
        tls_ups += st->cfg.upstreams[i].tls != NULL;
    api->log(inst, MP_LOG_INFO, "alb ready: %d upstreams (%d over TLS), %d routes%s%s%s",
             st->cfg.nupstreams, tls_ups, st->cfg.nroutes,
             st->cfg.tls_server ? ", terminating TLS" : "",
             st->access_log ? ", access log to " : "",
             st->access_log ? st->cfg.access_log_path : "");
    *state = st;
    return 0;
}

static void destroy(void *state)
{
    alb_state *st = state;
    alb_health_stop(st->health); /* joined before the pools it reads are freed */
    alb_access_log_close(st->access_log);
    alb_upool_free_all(st->upools, ALB_MAX_WORKERS);
    alb_tables_destroy(st);
    tls_stop(st); /* every connection is gone: none holds the state's reference */
    alb_config_free(&st->cfg);
    free(st);
}

/* DEGRADED while some upstream group has no usable member: its routes answer 503 at
 * once. Never UNHEALTHY for that, since the NLB would then drop connections instead of
 * letting clients see the 503 (and the routes to healthy groups still work). */
static void health(void *state, int deep, mp_health_report *out)
{
    alb_state *st = state;
    (void)deep;
    uint64_t now = alb_pool_now_ms();
    int dead = 0;
    char names[160] = "";
    size_t used = 0;
    for (int u = 0; u < st->cfg.nupstreams; u++) {
        const alb_upstream *up = &st->cfg.upstreams[u];
        int usable = 0;
        for (int i = 0; i < up->pool.n && !usable; i++)
            usable = alb_pool_member_ok(&up->pool, i, now);
        if (!usable) {
            dead++;
            if (used < sizeof(names))
                used += (size_t)snprintf(names + used, sizeof(names) - used, "%s%s",
                                         dead > 1 ? ", " : "", up->name);
        }
    }
    out->status = dead ? MP_HEALTH_DEGRADED : MP_HEALTH_HEALTHY;
    if (dead)
        snprintf(out->message, sizeof(out->message),
                 "alb: %d of %d upstream group(s) have no usable server: %s", dead,
                 st->cfg.nupstreams, names);
    else
        snprintf(out->message, sizeof(out->message), "alb: %d upstreams, %zu routes",
                 st->cfg.nupstreams, alb_route_table_size(st->routes));
}

static void put_counter(const mp_stats_sink *sink, const char *name, uint64_t v)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)v);
    sink->add(sink->ctx, name, buf);
}

/* "route.ID.requests", ".2xx" .. ".5xx", ".bytes_in", ".bytes_out", ".rate_limited",
 * ".p50_us", ".p95_us", ".p99_us" for every route that has counters. */
static void put_route_stats(void *ctx, alb_route_stats *rs)
{
    const mp_stats_sink *sink = ctx;
    char name[ALB_ROUTE_ID_MAX + 32];
    static const char *const cls[] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};
#define ROUTE_COUNTER(suffix, value)                                             \
    do {                                                                         \
        snprintf(name, sizeof(name), "route.%s.%s", rs->id, suffix);            \
        put_counter(sink, name, value);                                          \
    } while (0)
    ROUTE_COUNTER("requests", atomic_load(&rs->requests));
    for (int i = 0; i < 6; i++)
        ROUTE_COUNTER(cls[i], atomic_load(&rs->status[i]));
    ROUTE_COUNTER("bytes_in", atomic_load(&rs->bytes_in));
    ROUTE_COUNTER("bytes_out", atomic_load(&rs->bytes_out));
    ROUTE_COUNTER("rate_limited", atomic_load(&rs->rate_limited));
    ROUTE_COUNTER("p50_us", alb_route_stats_quantile(rs, 0.50));
    ROUTE_COUNTER("p95_us", alb_route_stats_quantile(rs, 0.95));
    ROUTE_COUNTER("p99_us", alb_route_stats_quantile(rs, 0.99));
#undef ROUTE_COUNTER
}

static void custom_stats(void *state, const mp_stats_sink *sink)
{
    alb_state *st = state;
    put_counter(sink, "connections_total", atomic_load(&st->connections));
    put_counter(sink, "requests_proxied", atomic_load(&st->requests));
    put_counter(sink, "local_errors", atomic_load(&st->local_errors));
    put_counter(sink, "upstream_errors", atomic_load(&st->upstream_errors));
    put_counter(sink, "not_found", atomic_load(&st->not_found));
    put_counter(sink, "rate_limited", atomic_load(&st->rate_limited));
    put_counter(sink, "body_too_large", atomic_load(&st->body_too_large));
    uint64_t idle, reused;
    alb_upool_counts(st->upools, ALB_MAX_WORKERS, &idle, &reused);
    put_counter(sink, "upstream_idle_connections", idle);
    put_counter(sink, "upstream_connections_reused", reused);
    /* "refused.<reason>" for every kind of bad request seen at least once */
    for (int e = 0; e < ALB_HTTP_E__COUNT; e++) {
        uint64_t n = atomic_load(&st->refused[e]);
        if (!n)
            continue;
        char name[80];
        snprintf(name, sizeof(name), "refused.%s", alb_http_err_name((enum alb_http_err)e));
        put_counter(sink, name, n);
    }
    alb_route_stats_each(st->route_stats, put_route_stats, (void *)sink);
    /* One line per upstream member: "upstream.NAME.ADDR" = "STATE active=N picks=N
     * fails=N ejections=N". */
    uint64_t now = alb_pool_now_ms();
    for (int u = 0; u < st->cfg.nupstreams; u++) {
        const alb_upstream *up = &st->cfg.upstreams[u];
        for (int i = 0; i < up->pool.n; i++) {
            const alb_member *m = &up->pool.m[i];
            char name[ALB_NAME_MAX + 96], val[160];
            snprintf(name, sizeof(name), "upstream.%s.%s", up->name, m->text);
            snprintf(val, sizeof(val), "%s%s active=%lld picks=%llu fails=%llu ejections=%llu",
                     alb_pool_member_state(&up->pool, i, now), m->backup ? " backup" : "",
                     (long long)atomic_load(&m->active),
                     (unsigned long long)atomic_load(&m->picks),
                     (unsigned long long)atomic_load(&m->failures),
                     (unsigned long long)atomic_load(&m->ejections));
            sink->add(sink->ctx, name, val);
        }
    }
}

static int on_connection(void *state, mp_conn *c, const mp_conn_info *info)
{
    return alb_proxy_on_connection(state, c, info);
}

static const mp_plugin_descriptor descriptor = {
    .magic = MP_PLUGIN_MAGIC,
    .abi_major = MP_ABI_MAJOR,
    .abi_minor = MP_ABI_MINOR,
    .struct_size = sizeof(mp_plugin_descriptor),
    .name = "alb",
    .version = "0.1.0",
    .module_type = MP_MODULE_ALB,
    .validate_config = validate,
    .create = create,
    .destroy = destroy,
    .health = health,
    .can_handle = alb_can_handle,
    .custom_stats = custom_stats,
    .on_connection = on_connection,
    .routes_changed = alb_routes_changed,
    .rate_limits_changed = alb_rate_limits_changed,
    .reload_files = reload_files,
};

MP_PLUGIN_DEFINE(descriptor)
