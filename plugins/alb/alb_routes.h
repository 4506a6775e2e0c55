/*
 * alb_routes.h — the ALB's route table: rules from the settings file and from
 * ModuleService (UpdateRoutes / DeleteRoute, handed over by routes_changed), compiled
 * into one immutable, refcounted table that workers match requests against while the
 * control thread swaps in the next one.
 *
 * Patterns, as an nginx or HAProxy user would write them:
 *   host    ""/"*" any; "example.com" exact (case-insensitive, port ignored);
 *           "*.example.com" any name ending in ".example.com"; "~regex" (PCRE2, caseless)
 *   path    ""/"/" any; "/api/" prefix; "=/exact"; "~regex" (PCRE2, on the path without
 *           the query string)
 *   methods "GET,HEAD" (empty: any)
 *   headers name -> "" or "*" (present), "~regex", or an exact value
 * Order: higher priority first; on equal priority the longer literal path, then an exact
 * host over a wildcard, then the order given (settings before ModuleService routes).
 */
#ifndef ALB_ROUTES_H
#define ALB_ROUTES_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define ALB_ROUTE_ID_MAX 128
#define ALB_ROUTE_MAX_HEADERS 16
#define ALB_ROUTES_MAX 10000

/* One route before compilation. Strings are borrowed for the build call; NULL = "". */
typedef struct alb_route_spec {
    const char *id;
    int32_t priority;
    const char *host;
    const char *path;
    const char *methods;
    size_t nheaders;
    const char *const *header_names;
    const char *const *header_values;
    const char *upstream;     /* name of an upstream group; required */
    const char *host_rewrite; /* Host sent upstream; NULL/"" keeps the client's */
    int from_api;             /* 1: ModuleService, 0: the settings file */
} alb_route_spec;

typedef struct alb_route_rule alb_route_rule;
typedef struct alb_route_table alb_route_table;

/* Per-route counters, shared by every table that has a route of that id so they
 * survive table swaps (alb_route_stats_* below). All atomics. */
typedef struct alb_route_stats {
    char id[ALB_ROUTE_ID_MAX];
    _Atomic uint64_t requests, status[6]; /* status[1..5]: 1xx..5xx; [0]: no response */
    _Atomic uint64_t bytes_in, bytes_out, rate_limited;
    _Atomic uint64_t lat_buckets[40];     /* log2 microseconds */
} alb_route_stats;

/* What a matched rule tells the proxy. */
typedef struct alb_route_result {
    const char *id;
    int upstream;             /* index into the upstream names given to the build */
    const char *host_rewrite; /* NULL: keep the client's Host */
    alb_route_stats *stats;
    int32_t priority;
} alb_route_result;

/* The request as the matcher sees it. header() returns a value or NULL. */
typedef struct alb_route_req {
    const char *host; /* authority, possibly with ":port" */
    size_t host_len;
    const char *target; /* request-target; the query string is ignored */
    size_t target_len;
    const char *method;
    size_t method_len;
    const char *(*header)(void *ctx, const char *name, size_t *len);
    void *ctx;
} alb_route_req;

/* The registry the stats of every route id live in, for the instance's lifetime. */
typedef struct alb_route_stats_set alb_route_stats_set;
alb_route_stats_set *alb_route_stats_set_new(void);
void alb_route_stats_set_free(alb_route_stats_set *s);
/* Calls fn for every route id that has counters, in creation order. */
void alb_route_stats_each(alb_route_stats_set *s, void (*fn)(void *ctx, alb_route_stats *rs),
                          void *ctx);
void alb_route_stats_record(alb_route_stats *rs, int status, uint64_t latency_us,
                            uint64_t bytes_in, uint64_t bytes_out);
/* The q-quantile (0..1) of the recorded latencies in microseconds (bucket upper bound). */
uint64_t alb_route_stats_quantile(const alb_route_stats *rs, double q);

/* Compiles specs into a table (one reference for the caller). Every problem is
 * refused with "route <id>: <reason>": unknown upstream, bad regex, duplicate id, too
 * many headers. stats (may be NULL) provides the per-route counters. */
int alb_routes_build(const alb_route_spec *specs, size_t n, const char *const *upstreams,
                     int nupstreams, alb_route_stats_set *stats, alb_route_table **out,
                     char *err, size_t err_len);
void alb_route_table_ref(alb_route_table *t);
void alb_route_table_unref(alb_route_table *t); /* NULL is ignored */
size_t alb_route_table_size(const alb_route_table *t);

/* The first rule matching rq; 0 with *out filled, or -ENOENT. Thread-safe. */
int alb_routes_match(const alb_route_table *t, const alb_route_req *rq, alb_route_result *out);

#endif
