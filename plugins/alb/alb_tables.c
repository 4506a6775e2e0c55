/*
 * alb_tables.c — the ALB's live route table and rate limits: built from the settings
 * file's routes plus ModuleService's (routes_changed) and from SetRateLimit
 * (rate_limits_changed), swapped in for the workers, and consulted by CanHandle.
 *
 * A ModuleService route is the wire Route: destination_pattern is the host pattern,
 * path_pattern the path pattern, headers the header conditions, priority the
 * priority; its metadata carries what the proto has no field for: "upstream" (the
 * upstream group, required), "methods" ("GET,HEAD") and "host_rewrite".
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "alb_internal.h"

void alb_tables_get(alb_state *st, alb_route_table **routes, alb_ratelimits **limits,
                    uint64_t *ver)
{
    pthread_mutex_lock(&st->tables_mu);
    *routes = st->routes;
    *limits = st->limits;
    if (*routes)
        alb_route_table_ref(*routes);
    if (*limits)
        alb_ratelimits_ref(*limits);
    *ver = atomic_load(&st->tables_ver);
    pthread_mutex_unlock(&st->tables_mu);
}

/* Puts a new table and/or new limits in force (NULL keeps the present one) and drops
 * the references the state held on the replaced ones. */
static void tables_swap(alb_state *st, alb_route_table *routes, alb_ratelimits *limits)
{
    pthread_mutex_lock(&st->tables_mu);
    alb_route_table *old_r = routes ? st->routes : NULL;
    alb_ratelimits *old_l = limits ? st->limits : NULL;
    if (routes)
        st->routes = routes;
    if (limits)
        st->limits = limits;
    atomic_fetch_add(&st->tables_ver, 1);
    pthread_mutex_unlock(&st->tables_mu);
    alb_route_table_unref(old_r);
    alb_ratelimits_unref(old_l);
}

/* The settings' routes followed by api[0..n_api), compiled. */
static int build_table(alb_state *st, const alb_route_spec *api, size_t n_api,
                       alb_route_table **out, char *err, size_t err_len)
{
    size_t n = (size_t)st->cfg.nroutes + n_api;
    alb_route_spec *all = calloc(n + 1, sizeof(*all));
    const char **names = calloc((size_t)st->cfg.nupstreams + 1, sizeof(*names));
    int rc = -ENOMEM;
    if (all && names) {
        alb_config_route_specs(&st->cfg, all);
        if (n_api) /* api may be NULL then: memcpy must not see it */
            memcpy(all + st->cfg.nroutes, api, n_api * sizeof(*api));
        alb_config_upstream_names(&st->cfg, names);
        rc = alb_routes_build(all, n, names, st->cfg.nupstreams, st->route_stats, out, err,
                              err_len);
    }
    free(all);
    free(names);
    return rc;
}

int alb_tables_init(alb_state *st, char *err, size_t err_len)
{
    pthread_mutex_init(&st->tables_mu, NULL);
    if (!(st->route_stats = alb_route_stats_set_new()))
        return -ENOMEM;
    alb_route_table *t = NULL;
    int rc = build_table(st, NULL, 0, &t, err, err_len);
    if (rc < 0)
        return rc;
    tables_swap(st, t, NULL);
    return 0;
}

static void free_specs(alb_route_spec *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free((char *)v[i].id);
        free((char *)v[i].host);
        free((char *)v[i].path);
        free((char *)v[i].methods);
        free((char *)v[i].upstream);
        free((char *)v[i].host_rewrite);
        for (size_t k = 0; k < v[i].nheaders; k++) {
            free((char *)v[i].header_names[k]);
            free((char *)v[i].header_values[k]);
        }
        free((void *)v[i].header_names);
        free((void *)v[i].header_values);
    }
    free(v);
}

void alb_tables_destroy(alb_state *st)
{
    alb_route_table_unref(st->routes);
    alb_ratelimits_unref(st->limits);
    free_specs(st->api_specs, st->n_api_specs);
    alb_route_stats_set_free(st->route_stats);
    pthread_mutex_destroy(&st->tables_mu);
}

static const char *meta(const mp_route_view *r, const char *key)
{
    if (!MP_HAS_MEMBER(mp_route_view, r->struct_size, metadata_values))
        return NULL;
    for (size_t i = 0; i < r->metadata_count; i++)
        if (strcmp(r->metadata_names[i], key) == 0)
            return r->metadata_values[i];
    return NULL;
}

static char *dup_or_null(const char *s)
{
    return s && *s ? strdup(s) : NULL;
}

/* A wire route as an owned spec. */
static int spec_from_view(const mp_route_view *r, alb_route_spec *sp, char *err, size_t err_len)
{
    switch (r->protocol) {
    case MP_PROTO_UNSPECIFIED: case MP_PROTO_HTTP: case MP_PROTO_HTTPS:
    case MP_PROTO_WEBSOCKET:
        break;
    default:
        snprintf(err, err_len, "route %s: protocol %d is not HTTP (the ALB serves HTTP/1.1)",
                 r->route_id, (int)r->protocol);
        return -EINVAL;
    }
    sp->id = strdup(r->route_id);
    sp->priority = r->priority;
    sp->host = dup_or_null(r->destination_pattern);
    sp->path = dup_or_null(r->path_pattern);
    sp->methods = dup_or_null(meta(r, "methods"));
    sp->upstream = dup_or_null(meta(r, "upstream"));
    sp->host_rewrite = dup_or_null(meta(r, "host_rewrite"));
    sp->from_api = 1;
    const char **hn = calloc(r->header_count + 1, sizeof(char *));
    const char **hv = calloc(r->header_count + 1, sizeof(char *));
    sp->header_names = hn;
    sp->header_values = hv;
    if (!sp->id || !hn || !hv)
        return -ENOMEM;
    for (size_t i = 0; i < r->header_count; i++) {
        if (!(hn[i] = strdup(r->header_names[i])) || !(hv[i] = strdup(r->header_values[i])))
            return -ENOMEM;
        sp->nheaders = i + 1;
    }
    return 0;
}

int alb_routes_changed(void *state, const mp_route_view *const *routes, size_t n,
                          char *err, size_t err_len)
{
    alb_state *st = state;
    alb_route_spec *specs = calloc(n + 1, sizeof(*specs));
    if (!specs)
        return -ENOMEM;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = spec_from_view(routes[i], &specs[i], err, err_len);
    alb_route_table *t = NULL;
    if (rc == 0)
        rc = build_table(st, specs, n, &t, err, err_len);
    if (rc < 0) {
        if (rc == -ENOMEM)
            snprintf(err, err_len, "alb: out of memory");
        free_specs(specs, n);
        return rc;
    }
    free_specs(st->api_specs, st->n_api_specs);
    st->api_specs = specs;
    st->n_api_specs = n;
    tables_swap(st, t, NULL);
    st->api->log(st->inst, MP_LOG_INFO, "alb: %zu route(s) in force (%d from the settings)",
                 alb_route_table_size(t), st->cfg.nroutes);
    return 0;
}

int alb_rate_limits_changed(void *state, const mp_rate_limit_view *const *limits, size_t n,
                               char *err, size_t err_len)
{
    alb_state *st = state;
    alb_ratelimits *rl = NULL;
    pthread_mutex_lock(&st->tables_mu); /* prev is read while building */
    int rc = alb_ratelimits_build(limits, n, st->limits, &rl, err, err_len);
    pthread_mutex_unlock(&st->tables_mu);
    if (rc < 0)
        return rc;
    tables_swap(st, NULL, rl);
    return 0;
}

/* CanHandle: does a request shaped like `route` match a rule of the live table? */
static const char *view_header(void *ctx, const char *name, size_t *len)
{
    const mp_route_view *r = ctx;
    for (size_t i = 0; i < r->header_count; i++)
        if (strcasecmp(r->header_names[i], name) == 0) {
            *len = strlen(r->header_values[i]);
            return r->header_values[i];
        }
    return NULL;
}

void alb_can_handle(void *state, const mp_route_view *route, mp_can_handle_result *out)
{
    alb_state *st = state;
    if (route->protocol == MP_PROTO_UNSPECIFIED || route->protocol == MP_PROTO_TCP) {
        /* a connection nobody has read from yet: its requests are routed one by one */
        out->can_handle = 1;
        snprintf(out->reason, sizeof(out->reason),
                 "the ALB routes each HTTP request of the connection by its own table");
        return;
    }
    if (route->protocol == MP_PROTO_HTTPS) {
        /* Only the SNI is visible before the handshake, never a path: with certificates
         * the connection is taken and each request is routed once decrypted. */
        out->can_handle = st->cfg.tls_server != NULL;
        snprintf(out->reason, sizeof(out->reason), "%s",
                 out->can_handle ? "the ALB terminates TLS and routes each request"
                                 : "the ALB has no tls settings (certificates)");
        return;
    }
    if (route->protocol != MP_PROTO_HTTP && route->protocol != MP_PROTO_WEBSOCKET) {
        out->can_handle = 0;
        snprintf(out->reason, sizeof(out->reason), "the ALB serves HTTP, not protocol %d",
                 (int)route->protocol);
        return;
    }
    alb_route_table *t;
    alb_ratelimits *l;
    uint64_t ver;
    alb_tables_get(st, &t, &l, &ver);
    const char *method = meta(route, "method");
    const char *path = route->path_pattern[0] ? route->path_pattern : "/";
    alb_route_req rq = {route->destination_pattern, strlen(route->destination_pattern),
                        path, strlen(path), method ? method : "GET",
                        strlen(method ? method : "GET"), view_header, (void *)route};
    alb_route_result r;
    if (alb_routes_match(t, &rq, &r) == 0) {
        out->can_handle = 1;
        out->priority = r.priority;
        snprintf(out->reason, sizeof(out->reason), "route %s -> upstream %s", r.id,
                 st->cfg.upstreams[r.upstream].name);
    } else {
        out->can_handle = 0;
        snprintf(out->reason, sizeof(out->reason), "no route of %zu matches host '%s' path '%s'",
                 alb_route_table_size(t), route->destination_pattern, path);
    }
    alb_route_table_unref(t);
    alb_ratelimits_unref(l);
}
