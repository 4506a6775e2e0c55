/*
 * alb_internal.h — types shared by the ALB plugin's own files (not part of any ABI):
 * the parsed settings (alb_config.c), the instance state (alb_plugin.c) and the
 * per-connection proxy entry point (alb_proxy.c).
 */
#ifndef ALB_INTERNAL_H
#define ALB_INTERNAL_H

#include <netinet/in.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <pthread.h>

#include "marchproxy/plugin.h"
#include "alb_access_log.h"
#include "alb_health.h"
#include "alb_http_parser.h"
#include "alb_pool.h"
#include "alb_ratelimit.h"
#include "alb_routes.h"
#include "alb_tls.h"

#define ALB_NAME_MAX 64
#define ALB_HOST_MAX 256
#define ALB_PREFIX_MAX 1024
#define ALB_ROUTE_FIELD_MAX 2048
#define ALB_MAX_WORKERS 256 /* the host's worker limit */ /* bytes in one pattern or value from the settings */

/* An upstream server is a pool member (alb_pool.h): configured address, weight and
 * backup flag plus its live state (health, ejection, active requests). */
typedef alb_member alb_server;

typedef struct alb_upstream {
    char name[ALB_NAME_MAX];
    /* The members and their live state, shared by all workers (atomics inside). */
    alb_pool pool;
    uint32_t retries; /* extra members an idempotent request may try after a failed connect */
    uint32_t keepalive;            /* idle connections kept per worker (0: none) */
    uint32_t keepalive_timeout_ms; /* how long one may stay idle */
    int has_hc;
    alb_hc_config hc; /* active checks, when has_hc */
    /* Upstream TLS (the group's tls { } settings), or NULL for plain TCP. Built when the
     * settings are parsed, so a bad file fails validate; a connection takes its own
     * reference through alb_tls_conn_new_client. */
    alb_tls_client_ctx *tls;
} alb_upstream;

/* A route from the settings file; strings owned by the config (alb_routes.h has the
 * pattern forms). */
typedef struct alb_cfg_route {
    char *id; /* "route-<n>" unless the file names it */
    char *host, *path, *methods, *upstream, *host_rewrite;
    int32_t priority;
    size_t nheaders;
    char **header_names, **header_values;
} alb_cfg_route;

typedef struct alb_config {
    alb_upstream *upstreams;
    int nupstreams;
    alb_cfg_route *routes;
    int nroutes;
    uint32_t connect_ms, header_ms, idle_ms, response_ms;
    struct alb_http_limits limits; /* request line, header and count limits (limits {}) */
    uint64_t max_body_bytes;       /* 0: no limit; over it: 413 */
    char *access_log_path;   /* NULL: no access log */
    alb_log_format access_log_format;
    /* Server TLS (tls { certificates = ( ... ); }), or NULL: every connection is plain
     * HTTP. With it, a connection is TLS when the NLB says MP_PROTO_HTTPS, plain when it
     * says HTTP, and otherwise (a tcp listener) when its first byte opens a TLS
     * handshake record. Built at parse time, which proves the files load; the live
     * context is alb_state.tls_server. */
    alb_tls_server_ctx *tls_server;
    uint32_t tls_check_ms; /* how often the files are checked for replacement; 0: never */
} alb_config;

/* Parses and checks a settings section; out may be NULL to only validate. */
int alb_config_parse(const mp_host_api *api, const mp_config *s, alb_config *out, char *err,
                     size_t err_len);
void alb_config_free(alb_config *cfg);
/* Starts the active checker over every upstream of `cfg` that has health_check (sets
 * *out to NULL when none has). Stop it with alb_health_stop before freeing `cfg`. */
int alb_config_health_start(const mp_host_api *api, mp_instance *inst, alb_config *cfg,
                            alb_health **out, char *err, size_t err_len);
/* The settings file's routes as specs for alb_routes_build (pointing into cfg), in
 * out[0..cfg->nroutes). */
void alb_config_route_specs(const alb_config *cfg, alb_route_spec *out);
/* The upstream names, in index order, for alb_routes_build (pointing into cfg). */
void alb_config_upstream_names(const alb_config *cfg, const char **out);

typedef struct alb_state {
    const mp_host_api *api;
    mp_instance *inst;
    alb_config cfg;
    _Atomic uint64_t connections, requests, local_errors, upstream_errors;
    _Atomic uint64_t not_found, rate_limited;
    _Atomic uint64_t refused[ALB_HTTP_E__COUNT]; /* bad requests by parser error */
    _Atomic uint64_t body_too_large;
    alb_health *health; /* active checker thread over cfg's pools, or NULL */

    /* The live route table and rate limits. The control thread swaps them under
     * tables_mu and bumps tables_ver; a connection keeps references to the pair it
     * last took and takes the new pair when it sees the version move, so the request
     * path costs one atomic load. */
    pthread_mutex_t tables_mu;
    alb_route_table *routes;
    alb_ratelimits *limits;
    _Atomic uint64_t tables_ver;
    alb_route_spec *api_specs; /* ModuleService's routes as last accepted (control) */
    size_t n_api_specs;
    alb_route_stats_set *route_stats;
    /* Idle upstream connections, one set per worker (alb_upool.c); each touched only
     * by its worker. */
    struct alb_upool *upools[ALB_MAX_WORKERS];
    alb_access_log *access_log;

    /* The server TLS context in force (NULL without tls settings). A watcher thread
     * re-reads the certificate files when they change and swaps it under tls_mu;
     * connections take their own reference through alb_state_tls_accept and finish on
     * the certificates they started with. (The host's Reload makes no new generation
     * while the settings and the plugin are unchanged, so a replaced certificate file
     * is noticed here, within tls_check_ms.) */
    pthread_mutex_t tls_mu;
    alb_tls_server_ctx *tls_server;
    pthread_t tls_thread;
    int tls_thread_on;
    pthread_mutex_t tls_watch_mu;
    pthread_cond_t tls_watch_cv;
    int tls_watch_stop;
    char tls_last_error[256]; /* the watcher's last failure, logged once */
} alb_state;

/* alb_tables.c: the live tables. init builds the table of the settings' routes. */
int alb_tables_init(alb_state *st, char *err, size_t err_len);
void alb_tables_destroy(alb_state *st);
int alb_routes_changed(void *state, const mp_route_view *const *routes, size_t n, char *err,
                       size_t err_len);
int alb_rate_limits_changed(void *state, const mp_rate_limit_view *const *limits, size_t n,
                            char *err, size_t err_len);
void alb_can_handle(void *state, const mp_route_view *route, mp_can_handle_result *out);
/* References to the current table and limits (either may be NULL) and their version. */
void alb_tables_get(alb_state *st, alb_route_table **routes, alb_ratelimits **limits,
                    uint64_t *ver);

int alb_proxy_on_connection(alb_state *st, mp_conn *c, const mp_conn_info *info);
/* A server-side TLS connection on the context in force (alb_plugin.c). */
int alb_state_tls_accept(alb_state *st, const alb_tls_io *io, alb_tls_conn **out, char *err,
                         size_t err_len);

#endif
