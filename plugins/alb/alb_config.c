/*
 * alb_config.c — the ALB plugin's settings: parsing and checking the section
 * (upstreams, routes, timeouts, access_log, tls) with FILE:LINE errors. The parsed form
 * is immutable once built, so workers read it without locks; routes are compiled into
 * the live table by alb_plugin.c together with ModuleService's. TLS contexts are built
 * here too, so validate proves every certificate and key loads and matches.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "alb_internal.h"

static const char *const top_keys[] = {"upstreams", "routes", "timeouts", "access_log", "tls",
                                       "limits", NULL};
static const char *const limit_keys[] = {"max_request_line", "max_header_line",
                                         "max_header_bytes", "max_headers", "max_body_bytes",
                                         NULL};
static const char *const upstream_keys[] = {"servers",   "balance",         "hash_key",
                                             "max_fails", "fail_timeout_ms", "retries",
                                             "keepalive", "keepalive_timeout_ms",
                                             "health_check", "tls", NULL};
static const char *const upstream_tls_keys[] = {"verify", "ca_file", "server_name", "cert",
                                                "key", NULL};
#define ALB_TLS_MAX_CERTS 64
static const char *const server_keys[] = {"address", "weight", "backup", NULL};
static const char *const hc_keys[] = {"path",       "port",
                                      "interval_ms", "timeout_ms",
                                      "healthy_threshold", "unhealthy_threshold",
                                      "expect_status", NULL};
static const char *const route_keys[] = {"id",       "host",     "path",         "path_prefix",
                                         "methods",  "headers",  "priority",     "upstream",
                                         "host_rewrite", NULL};
static const char *const timeout_keys[] = {"connect_ms", "header_ms", "idle_ms", "response_ms",
                                           NULL};

/* "a.b.c.d:port" or "[v6]:port"; numeric only, so no resolver runs on a worker. */
static int parse_server(const char *s, alb_server *out)
{
    char host[64];
    const char *colon;
    memset(out, 0, sizeof(*out));
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end[1] != ':' || (size_t)(end - s - 1) >= sizeof(host))
            return -1;
        memcpy(host, s + 1, (size_t)(end - s - 1));
        host[end - s - 1] = 0;
        colon = end + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon || (size_t)(colon - s) >= sizeof(host))
            return -1;
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = 0;
    }
    char *endp;
    long port = strtol(colon + 1, &endp, 10);
    if (*endp || port <= 0 || port > 65535 || colon[1] == 0)
        return -1;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&out->addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&out->addr;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        out->addr_len = sizeof(*v4);
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        out->addr_len = sizeof(*v6);
    } else {
        return -1;
    }
    snprintf(out->text, sizeof(out->text), "%s", s);
    return 0;
}

static int get_timeout(const mp_host_api *api, const mp_config *t, const char *key,
                       uint32_t def, uint32_t *out, char *err, size_t err_len)
{
    int64_t v;
    *out = def;
    if (!t)
        return 0;
    int rc = api->cfg_get_int(t, key, &v);
    if (rc == -ENOENT)
        return 0;
    if (rc < 0 || v < 1 || v > 3600000)
        return api->cfg_error(api->cfg_lookup(t, key), err, err_len,
                              "timeouts.%s must be an integer 1..3600000 (ms)", key);
    *out = (uint32_t)v;
    return 0;
}

/* An unsigned integer setting in lo..hi, `def` when absent. */
static int get_uint(const mp_host_api *api, const mp_config *node, const char *key,
                    uint32_t def, uint32_t lo, uint32_t hi, uint32_t *out, char *err,
                    size_t err_len)
{
    int64_t v;
    *out = def;
    int rc = api->cfg_get_int(node, key, &v);
    if (rc == -ENOENT)
        return 0;
    if (rc < 0 || v < lo || v > hi)
        return api->cfg_error(api->cfg_lookup(node, key), err, err_len,
                              "alb: %s must be an integer %u..%u", key, lo, hi);
    *out = (uint32_t)v;
    return 0;
}

/* limits { }: what a client may send, nginx's and Envoy's defaults unless set. The
 * line limits are capped by the parser's line buffer (ALB_HTTP_LINE_CAP). */
static int parse_limits(const mp_host_api *api, const mp_config *l, alb_config *cfg, char *err,
                        size_t err_len)
{
    alb_http_limits_default(&cfg->limits);
    cfg->max_body_bytes = 0;
    if (!l)
        return 0;
    if (api->cfg_kind(l) != MP_CFG_GROUP)
        return api->cfg_error(l, err, err_len, "alb: limits must be a group");
    int64_t body = 0;
    int rc = api->cfg_check_keys(l, limit_keys, err, err_len);
    if (rc == 0)
        rc = get_uint(api, l, "max_request_line", cfg->limits.max_start_line, 64,
                      ALB_HTTP_LINE_CAP, &cfg->limits.max_start_line, err, err_len);
    if (rc == 0)
        rc = get_uint(api, l, "max_header_line", cfg->limits.max_field_line, 64,
                      ALB_HTTP_LINE_CAP, &cfg->limits.max_field_line, err, err_len);
    if (rc == 0)
        rc = get_uint(api, l, "max_header_bytes", cfg->limits.max_header_bytes, 256,
                      1024 * 1024, &cfg->limits.max_header_bytes, err, err_len);
    if (rc == 0)
        rc = get_uint(api, l, "max_headers", cfg->limits.max_headers, 1, 1000,
                      &cfg->limits.max_headers, err, err_len);
    if (rc == 0) {
        rc = api->cfg_get_int(l, "max_body_bytes", &body);
        if (rc == -ENOENT)
            rc = 0;
        else if (rc < 0 || body < 0)
            return api->cfg_error(api->cfg_lookup(l, "max_body_bytes"), err, err_len,
                                  "alb: max_body_bytes must be an integer >= 0 (0: no limit)");
        cfg->max_body_bytes = (uint64_t)body;
    }
    return rc;
}

/* One servers entry: "ip:port", or { address = "ip:port"; weight = N; backup = bool; }. */
static int parse_member(const mp_host_api *api, const mp_config *e, alb_member *m, char *err,
                        size_t err_len)
{
    const char *txt;
    mp_config_kind k = api->cfg_kind(e);
    if (k == MP_CFG_STRING) {
        if (api->cfg_get_string(e, NULL, &txt) != 0 || parse_server(txt, m))
            return api->cfg_error(e, err, err_len,
                                  "alb: server must be \"IPv4:port\" or \"[IPv6]:port\"");
        m->weight = 1;
        return 0;
    }
    if (k != MP_CFG_GROUP)
        return api->cfg_error(e, err, err_len,
                              "alb: a server must be \"ip:port\" or { address = \"ip:port\"; "
                              "weight = N; backup = false; }");
    int rc = api->cfg_check_keys(e, server_keys, err, err_len);
    if (rc < 0)
        return rc;
    if (api->cfg_get_string(e, "address", &txt) != 0 || parse_server(txt, m))
        return api->cfg_error(api->cfg_lookup(e, "address") ? api->cfg_lookup(e, "address") : e,
                              err, err_len,
                              "alb: server address must be \"IPv4:port\" or \"[IPv6]:port\"");
    rc = get_uint(api, e, "weight", 1, 1, ALB_POOL_WEIGHT_MAX, &m->weight, err, err_len);
    if (rc < 0)
        return rc;
    int b = 0;
    rc = api->cfg_get_bool(e, "backup", &b);
    if (rc == -EINVAL)
        return api->cfg_error(api->cfg_lookup(e, "backup"), err, err_len,
                              "alb: backup must be true or false");
    m->backup = b != 0;
    return 0;
}

/* health_check { path; port; interval_ms; timeout_ms; healthy_threshold;
 * unhealthy_threshold; expect_status; } (HealthCheckConfig of the wire spec, in ms). */
static int parse_health_check(const mp_host_api *api, const mp_config *u, alb_upstream *up,
                              char *err, size_t err_len)
{
    const mp_config *h = api->cfg_lookup(u, "health_check");
    if (!h)
        return 0;
    if (api->cfg_kind(h) != MP_CFG_GROUP)
        return api->cfg_error(h, err, err_len, "alb: health_check must be a group");
    int rc = api->cfg_check_keys(h, hc_keys, err, err_len);
    if (rc < 0)
        return rc;
    alb_hc_config *hc = &up->hc;
    alb_hc_config_default(hc);
    const char *v;
    rc = api->cfg_get_string(h, "path", &v);
    if (rc == 0) {
        int bad = v[0] != '/' || strlen(v) >= sizeof(hc->path);
        for (const char *p = v; *p && !bad; p++)
            bad = (unsigned char)*p <= ' ' || *p == 0x7f;
        if (bad)
            rc = -EINVAL;
        else
            snprintf(hc->path, sizeof(hc->path), "%s", v);
    }
    if (rc == -EINVAL)
        return api->cfg_error(api->cfg_lookup(h, "path"), err, err_len,
                              "alb: health_check.path must start with '/' and hold no spaces");
    uint32_t port;
    if ((rc = get_uint(api, h, "port", 0, 1, 65535, &port, err, err_len)) < 0 ||
        (rc = get_uint(api, h, "interval_ms", 2000, 10, 3600000, &hc->interval_ms, err,
                       err_len)) < 0 ||
        (rc = get_uint(api, h, "timeout_ms", 1000, 10, 3600000, &hc->timeout_ms, err,
                       err_len)) < 0 ||
        (rc = get_uint(api, h, "healthy_threshold", 2, 1, 100, &hc->healthy_threshold, err,
                       err_len)) < 0 ||
        (rc = get_uint(api, h, "unhealthy_threshold", 3, 1, 100, &hc->unhealthy_threshold, err,
                       err_len)) < 0)
        return rc;
    hc->port = (uint16_t)port;
    rc = api->cfg_get_string(h, "expect_status", &v);
    if (rc == -EINVAL || (rc == 0 && alb_hc_parse_expect(v, hc) < 0))
        return api->cfg_error(api->cfg_lookup(h, "expect_status"), err, err_len,
                              "alb: expect_status must be like \"2xx\", \"200\" or \"2xx,302\"");
    up->has_hc = 1;
    return 0;
}

/* Balancing and passive ejection settings of one upstream. */
static int parse_balancing(const mp_host_api *api, const mp_config *u, alb_upstream *up,
                           alb_pool_settings *ps, char *err, size_t err_len)
{
    alb_pool_settings_default(ps);
    const char *v;
    int rc = api->cfg_get_string(u, "balance", &v);
    if (rc == -EINVAL || (rc == 0 && alb_pool_parse_balance(v, &ps->balance) < 0))
        return api->cfg_error(api->cfg_lookup(u, "balance"), err, err_len,
                              "alb: balance must be \"round-robin\", \"weighted\", "
                              "\"least-conn\" or \"hash\"");
    rc = api->cfg_get_string(u, "hash_key", &v);
    if (rc != -ENOENT && ps->balance != ALB_BAL_HASH)
        return api->cfg_error(api->cfg_lookup(u, "hash_key"), err, err_len,
                              "alb: hash_key needs balance = \"hash\"");
    if (rc == -EINVAL || (rc == 0 && alb_pool_parse_hash_key(v, ps) < 0))
        return api->cfg_error(api->cfg_lookup(u, "hash_key"), err, err_len,
                              "alb: hash_key must be \"client_ip\", \"header:Name\" or "
                              "\"cookie:name\"");
    if ((rc = get_uint(api, u, "max_fails", 3, 0, 1000, &ps->max_fails, err, err_len)) < 0 ||
        (rc = get_uint(api, u, "fail_timeout_ms", 10000, 1, 3600000, &ps->fail_timeout_ms, err,
                       err_len)) < 0)
        return rc;
    if ((rc = get_uint(api, u, "keepalive", 32, 0, 10000, &up->keepalive, err, err_len)) < 0 ||
        (rc = get_uint(api, u, "keepalive_timeout_ms", 60000, 1, 3600000,
                       &up->keepalive_timeout_ms, err, err_len)) < 0)
        return rc;
    return get_uint(api, u, "retries", 1, 0, 10, &up->retries, err, err_len);
}

/* An optional non-empty string setting, borrowed from the config tree (NULL when
 * absent). */
static int get_path_opt(const mp_host_api *api, const mp_config *g, const char *key,
                        const char *what, const char **out, char *err, size_t err_len)
{
    *out = NULL;
    int rc = api->cfg_get_string(g, key, out);
    if (rc == -ENOENT)
        return 0;
    if (rc < 0 || !**out)
        return api->cfg_error(api->cfg_lookup(g, key), err, err_len,
                              "alb: %s.%s must be a non-empty string", what, key);
    return 0;
}

/* tls { verify; ca_file; server_name; cert; key; } of one upstream group: builds its
 * client context (reading the files now). */
static int parse_upstream_tls(const mp_host_api *api, const mp_config *u, alb_upstream *up,
                              char *err, size_t err_len)
{
    const mp_config *t = api->cfg_lookup(u, "tls");
    if (!t)
        return 0;
    if (api->cfg_kind(t) != MP_CFG_GROUP)
        return api->cfg_error(t, err, err_len,
                              "alb: upstream '%s' tls must be a group { verify; ca_file; "
                              "server_name; cert; key; }",
                              up->name);
    int rc = api->cfg_check_keys(t, upstream_tls_keys, err, err_len);
    if (rc < 0)
        return rc;
    alb_tls_client_opts o = {0};
    int verify = 1;
    rc = api->cfg_get_bool(t, "verify", &verify);
    if (rc == -EINVAL)
        return api->cfg_error(api->cfg_lookup(t, "verify"), err, err_len,
                              "alb: tls.verify must be true or false");
    o.no_verify = !verify;
    if ((rc = get_path_opt(api, t, "ca_file", "tls", &o.ca_file, err, err_len)) < 0 ||
        (rc = get_path_opt(api, t, "server_name", "tls", &o.server_name, err, err_len)) < 0 ||
        (rc = get_path_opt(api, t, "cert", "tls", &o.cert_file, err, err_len)) < 0 ||
        (rc = get_path_opt(api, t, "key", "tls", &o.key_file, err, err_len)) < 0)
        return rc;
    if (!o.cert_file != !o.key_file)
        return api->cfg_error(t, err, err_len, "alb: upstream '%s' tls: cert and key go together",
                              up->name);
    char why[512];
    rc = alb_tls_client_ctx_new(&o, &up->tls, why, sizeof(why));
    if (rc == -ENOMEM)
        return rc;
    if (rc < 0)
        return api->cfg_error(t, err, err_len, "alb: upstream '%s' tls: %s", up->name, why);
    return 0;
}

/* tls { certificates = ( { cert = "a.pem"; key = "a.key"; }, ... ); reload_check_ms; }
 * — the server context for client connections; the first certificate is the default,
 * the others are chosen by SNI; the files are checked for replacement every
 * reload_check_ms (default 1000, 0: never). Each entry is loaded alone first, so a bad file or a key that does not
 * match its certificate is reported at that entry's line. */
static int parse_server_tls(const mp_host_api *api, const mp_config *t, alb_config *cfg,
                            char *err, size_t err_len)
{
    static const char *const keys[] = {"certificates", "reload_check_ms", NULL};
    static const char *const cert_keys[] = {"cert", "key", NULL};
    if (!t)
        return 0;
    if (api->cfg_kind(t) != MP_CFG_GROUP)
        return api->cfg_error(t, err, err_len,
                              "alb: tls must be a group { certificates = ( ... ); }");
    int rc = api->cfg_check_keys(t, keys, err, err_len);
    if (rc == 0)
        rc = get_uint(api, t, "reload_check_ms", 1000, 0, 3600000, &cfg->tls_check_ms, err,
                      err_len);
    if (rc < 0)
        return rc;
    const mp_config *cl = api->cfg_lookup(t, "certificates");
    mp_config_kind k = cl ? api->cfg_kind(cl) : MP_CFG_NONE;
    int n = cl ? api->cfg_count(cl) : 0;
    if (!cl || (k != MP_CFG_LIST && k != MP_CFG_ARRAY) || n < 1 || n > ALB_TLS_MAX_CERTS)
        return api->cfg_error(cl ? cl : t, err, err_len,
                              "alb: tls needs certificates = ( { cert = \"FILE\"; key = "
                              "\"FILE\"; }, ... ) (1..%d of them)",
                              ALB_TLS_MAX_CERTS);
    alb_tls_cert_files files[ALB_TLS_MAX_CERTS];
    char why[512];
    for (int i = 0; i < n; i++) {
        const mp_config *e = api->cfg_child(cl, i);
        if (api->cfg_kind(e) != MP_CFG_GROUP)
            return api->cfg_error(e, err, err_len,
                                  "alb: each tls certificate must be { cert = \"FILE\"; key = "
                                  "\"FILE\"; }");
        if ((rc = api->cfg_check_keys(e, cert_keys, err, err_len)) < 0 ||
            (rc = get_path_opt(api, e, "cert", "tls.certificates", &files[i].cert_file, err,
                               err_len)) < 0 ||
            (rc = get_path_opt(api, e, "key", "tls.certificates", &files[i].key_file, err,
                               err_len)) < 0)
            return rc;
        if (!files[i].cert_file || !files[i].key_file)
            return api->cfg_error(e, err, err_len,
                                  "alb: a tls certificate needs both cert and key");
        alb_tls_server_ctx *one = NULL;
        rc = alb_tls_server_ctx_new(&files[i], 1, &one, why, sizeof(why));
        alb_tls_server_ctx_unref(one);
        if (rc == -ENOMEM)
            return rc;
        if (rc < 0)
            return api->cfg_error(e, err, err_len, "alb: tls: %s", why);
    }
    rc = alb_tls_server_ctx_new(files, (size_t)n, &cfg->tls_server, why, sizeof(why));
    if (rc == -ENOMEM)
        return rc;
    if (rc < 0)
        return api->cfg_error(cl, err, err_len, "alb: tls: %s", why);
    return 0;
}

static int parse_upstreams(const mp_host_api *api, const mp_config *s, const mp_config *ups,
                           alb_config *cfg, char *err, size_t err_len)
{
    if (!ups)
        return 0; /* nothing to proxy to yet: with no routes either, every request is 404 */
    if (api->cfg_kind(ups) != MP_CFG_GROUP || api->cfg_count(ups) < 1)
        return api->cfg_error(ups, err, err_len,
                              "alb: upstreams must be a group with at least one upstream");
    int n = api->cfg_count(ups);
    cfg->upstreams = calloc((size_t)n, sizeof(alb_upstream));
    if (!cfg->upstreams)
        return -ENOMEM;
    cfg->nupstreams = n;
    for (int i = 0; i < n; i++) {
        const mp_config *u = api->cfg_child(ups, i);
        alb_upstream *up = &cfg->upstreams[i];
        const char *name = api->cfg_name(u);
        if (api->cfg_kind(u) != MP_CFG_GROUP || !name || strlen(name) >= ALB_NAME_MAX)
            return api->cfg_error(u, err, err_len, "alb: each upstream must be a named group");
        snprintf(up->name, sizeof(up->name), "%s", name);
        int rc = api->cfg_check_keys(u, upstream_keys, err, err_len);
        alb_pool_settings ps;
        if (rc == 0)
            rc = parse_balancing(api, u, up, &ps, err, err_len);
        if (rc == 0)
            rc = parse_health_check(api, u, up, err, err_len);
        if (rc == 0)
            rc = parse_upstream_tls(api, u, up, err, err_len);
        if (rc < 0)
            return rc;
        const mp_config *sv = api->cfg_lookup(u, "servers");
        mp_config_kind k = sv ? api->cfg_kind(sv) : MP_CFG_NONE;
        int ns = sv ? api->cfg_count(sv) : 0;
        if (!sv || (k != MP_CFG_ARRAY && k != MP_CFG_LIST) || ns < 1 ||
            ns > ALB_POOL_MAX_MEMBERS)
            return api->cfg_error(sv ? sv : u, err, err_len,
                                  "alb: upstream '%s' needs servers = [ \"ip:port\", ... ] "
                                  "(1..%d of them)",
                                  name, ALB_POOL_MAX_MEMBERS);
        alb_member *members = calloc((size_t)ns, sizeof(alb_member));
        if (!members)
            return -ENOMEM;
        for (int j = 0; j < ns && rc == 0; j++)
            rc = parse_member(api, api->cfg_child(sv, j), &members[j], err, err_len);
        if (rc < 0) {
            free(members);
            return rc;
        }
        rc = alb_pool_init(&up->pool, &ps, members, ns, err, err_len);
        if (rc == -EINVAL)
            return api->cfg_error(sv, err, err_len,
                                  "alb: upstream '%s' needs at least one server that is not "
                                  "a backup",
                                  name);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int alb_config_health_start(const mp_host_api *api, mp_instance *inst, alb_config *cfg,
                            alb_health **out, char *err, size_t err_len)
{
    *out = NULL;
    int n = 0;
    alb_health_target *t = calloc((size_t)cfg->nupstreams + 1, sizeof(*t));
    if (!t) {
        snprintf(err, err_len, "alb: out of memory");
        return -ENOMEM;
    }
    for (int i = 0; i < cfg->nupstreams; i++)
        if (cfg->upstreams[i].has_hc)
            t[n++] = (alb_health_target){&cfg->upstreams[i].pool, &cfg->upstreams[i].hc,
                                         cfg->upstreams[i].name};
    int rc = alb_health_start(api, inst, t, n, out, err, err_len);
    free(t);
    return rc;
}

/* A string setting copied into *out (NULL when absent); refuses other types and
 * values longer than ALB_ROUTE_FIELD_MAX. */
static int get_owned_str(const mp_host_api *api, const mp_config *r, const char *key,
                         char **out, char *err, size_t err_len)
{
    const char *v;
    int rc = api->cfg_get_string(r, key, &v);
    if (rc == -ENOENT)
        return 0;
    if (rc < 0 || strlen(v) > ALB_ROUTE_FIELD_MAX)
        return api->cfg_error(api->cfg_lookup(r, key), err, err_len,
                              "alb: %s must be a string of at most %d bytes", key,
                              ALB_ROUTE_FIELD_MAX);
    *out = strdup(v);
    return *out ? 0 : -ENOMEM;
}

static int parse_route_headers(const mp_host_api *api, const mp_config *hs, alb_cfg_route *rt,
                               char *err, size_t err_len)
{
    if (api->cfg_kind(hs) != MP_CFG_GROUP)
        return api->cfg_error(hs, err, err_len,
                              "alb: headers must be a group of name = \"value\"");
    int n = api->cfg_count(hs);
    if (n > ALB_ROUTE_MAX_HEADERS)
        return api->cfg_error(hs, err, err_len, "alb: at most %d header conditions",
                              ALB_ROUTE_MAX_HEADERS);
    rt->header_names = calloc((size_t)n + 1, sizeof(char *));
    rt->header_values = calloc((size_t)n + 1, sizeof(char *));
    if (!rt->header_names || !rt->header_values)
        return -ENOMEM;
    for (int i = 0; i < n; i++) {
        const mp_config *h = api->cfg_child(hs, i);
        const char *name = api->cfg_name(h);
        if (api->cfg_kind(h) != MP_CFG_STRING)
            return api->cfg_error(h, err, err_len, "alb: header %s: the value must be a string",
                                  name);
        /* libconfig names cannot hold '-': write X_Beta for X-Beta */
        char *n2 = strdup(name);
        if (!n2)
            return -ENOMEM;
        for (char *c = n2; *c; c++)
            if (*c == '_')
                *c = '-';
        rt->header_names[rt->nheaders] = n2;
        const char *v;
        api->cfg_get_string(h, NULL, &v);
        if (!(rt->header_values[rt->nheaders++] = strdup(v)))
            return -ENOMEM;
    }
    return 0;
}

static int parse_route(const mp_host_api *api, const mp_config *r, int index, alb_config *cfg,
                       alb_cfg_route *rt, char *err, size_t err_len)
{
    if (api->cfg_kind(r) != MP_CFG_GROUP)
        return api->cfg_error(r, err, err_len, "alb: each route must be a group");
    int rc = api->cfg_check_keys(r, route_keys, err, err_len);
    char *prefix = NULL;
    if (rc == 0)
        rc = get_owned_str(api, r, "id", &rt->id, err, err_len);
    if (rc == 0)
        rc = get_owned_str(api, r, "host", &rt->host, err, err_len);
    if (rc == 0)
        rc = get_owned_str(api, r, "path", &rt->path, err, err_len);
    if (rc == 0)
        rc = get_owned_str(api, r, "path_prefix", &prefix, err, err_len);
    if (rc == 0)
        rc = get_owned_str(api, r, "methods", &rt->methods, err, err_len);
    if (rc == 0)
        rc = get_owned_str(api, r, "upstream", &rt->upstream, err, err_len);
    if (rc == 0)
        rc = get_owned_str(api, r, "host_rewrite", &rt->host_rewrite, err, err_len);
    if (rc < 0) {
        free(prefix);
        return rc;
    }
    if (prefix && rt->path) {
        free(prefix);
        return api->cfg_error(r, err, err_len, "alb: a route has path or path_prefix, not both");
    }
    if (prefix) { /* the first version's key: a plain prefix */
        if (prefix[0] != '/') {
            free(prefix);
            return api->cfg_error(api->cfg_lookup(r, "path_prefix"), err, err_len,
                                  "alb: path_prefix must be a string starting with '/'");
        }
        rt->path = prefix;
    }
    int64_t prio = 0;
    rc = api->cfg_get_int(r, "priority", &prio);
    if (rc == -EINVAL || prio < -1000000 || prio > 1000000)
        return api->cfg_error(api->cfg_lookup(r, "priority"), err, err_len,
                              "alb: priority must be an integer in -1000000..1000000");
    rt->priority = (int32_t)prio;
    if (!rt->id && asprintf(&rt->id, "route-%d", index + 1) < 0) {
        rt->id = NULL;
        return -ENOMEM;
    }
    const mp_config *hs = api->cfg_lookup(r, "headers");
    if (hs && (rc = parse_route_headers(api, hs, rt, err, err_len)) < 0)
        return rc;
    /* Compile it alone now, so a bad pattern is reported at its own line. */
    alb_route_spec spec;
    alb_config one = *cfg;
    one.routes = rt;
    one.nroutes = 1;
    alb_config_route_specs(&one, &spec);
    const char *names[cfg->nupstreams + 1];
    alb_config_upstream_names(cfg, names);
    alb_route_table *t = NULL;
    char why[512];
    rc = alb_routes_build(&spec, 1, names, cfg->nupstreams, NULL, &t, why, sizeof(why));
    alb_route_table_unref(t);
    if (rc < 0)
        return api->cfg_error(r, err, err_len, "alb: %s", why);
    return 0;
}

static int parse_routes(const mp_host_api *api, const mp_config *rts, alb_config *cfg,
                        char *err, size_t err_len)
{
    if (!rts)
        return 0; /* no routes: every request gets 404 until ModuleService adds some */
    mp_config_kind k = api->cfg_kind(rts);
    if (k == MP_CFG_ARRAY && api->cfg_count(rts) == 0)
        return 0; /* "routes = [];" */
    if (k != MP_CFG_LIST && k != MP_CFG_GROUP)
        return api->cfg_error(rts, err, err_len, "alb: routes must be a list of groups");
    int n = api->cfg_count(rts);
    if (n > ALB_ROUTES_MAX)
        return api->cfg_error(rts, err, err_len, "alb: at most %d routes", ALB_ROUTES_MAX);
    cfg->routes = calloc((size_t)(n ? n : 1), sizeof(alb_cfg_route));
    if (!cfg->routes)
        return -ENOMEM;
    for (int i = 0; i < n; i++) {
        cfg->nroutes = i + 1; /* so a failure frees what this route got */
        int rc = parse_route(api, api->cfg_child(rts, i), i, cfg, &cfg->routes[i], err,
                             err_len);
        if (rc < 0)
            return rc;
        for (int j = 0; j < i; j++)
            if (strcmp(cfg->routes[j].id, cfg->routes[i].id) == 0)
                return api->cfg_error(api->cfg_child(rts, i), err, err_len,
                                      "alb: route id '%s' is used twice", cfg->routes[i].id);
    }
    return 0;
}

static int parse_access_log(const mp_host_api *api, const mp_config *al, alb_config *cfg,
                            char *err, size_t err_len)
{
    if (!al)
        return 0;
    static const char *const keys[] = {"path", "format", NULL};
    if (api->cfg_kind(al) != MP_CFG_GROUP)
        return api->cfg_error(al, err, err_len,
                              "alb: access_log must be a group { path; format; }");
    int rc = api->cfg_check_keys(al, keys, err, err_len);
    if (rc < 0)
        return rc;
    const char *v;
    if (api->cfg_get_string(al, "path", &v) != 0 || !*v)
        return api->cfg_error(al, err, err_len,
                              "alb: access_log needs path = \"FILE\" (or \"stderr\")");
    if (!(cfg->access_log_path = strdup(v)))
        return -ENOMEM;
    cfg->access_log_format = ALB_LOG_COMBINED;
    rc = api->cfg_get_string(al, "format", &v);
    if (rc == 0 && strcmp(v, "json") == 0)
        cfg->access_log_format = ALB_LOG_JSON;
    else if ((rc == 0 && strcmp(v, "combined") != 0) || rc == -EINVAL)
        return api->cfg_error(api->cfg_lookup(al, "format"), err, err_len,
                              "alb: access_log.format must be \"combined\" or \"json\"");
    return 0;
}

void alb_config_route_specs(const alb_config *cfg, alb_route_spec *out)
{
    for (int i = 0; i < cfg->nroutes; i++) {
        const alb_cfg_route *r = &cfg->routes[i];
        out[i] = (alb_route_spec){
            .id = r->id, .priority = r->priority, .host = r->host, .path = r->path,
            .methods = r->methods, .nheaders = r->nheaders,
            .header_names = (const char *const *)r->header_names,
            .header_values = (const char *const *)r->header_values,
            .upstream = r->upstream, .host_rewrite = r->host_rewrite, .from_api = 0,
        };
    }
}

void alb_config_upstream_names(const alb_config *cfg, const char **out)
{
    for (int i = 0; i < cfg->nupstreams; i++)
        out[i] = cfg->upstreams[i].name;
    out[cfg->nupstreams] = NULL;
}

static void cfg_route_free(alb_cfg_route *r)
{
    free(r->id);
    free(r->host);
    free(r->path);
    free(r->methods);
    free(r->upstream);
    free(r->host_rewrite);
    for (size_t i = 0; i < r->nheaders; i++) {
        free(r->header_names[i]);
        free(r->header_values[i]);
    }
    free(r->header_names);
    free(r->header_values);
}

int alb_config_parse(const mp_host_api *api, const mp_config *s, alb_config *out, char *err,
                     size_t err_len)
{
    alb_config tmp;
    alb_config *cfg = out ? out : &tmp;
    memset(cfg, 0, sizeof(*cfg));
    int rc = api->cfg_check_keys(s, top_keys, err, err_len);
    const mp_config *t = api->cfg_lookup(s, "timeouts");
    if (rc == 0 && t && api->cfg_kind(t) != MP_CFG_GROUP)
        rc = api->cfg_error(t, err, err_len, "alb: timeouts must be a group");
    if (rc == 0 && t)
        rc = api->cfg_check_keys(t, timeout_keys, err, err_len);
    if (rc == 0)
        rc = get_timeout(api, t, "connect_ms", 2000, &cfg->connect_ms, err, err_len);
    if (rc == 0)
        rc = get_timeout(api, t, "header_ms", 10000, &cfg->header_ms, err, err_len);
    if (rc == 0)
        rc = get_timeout(api, t, "idle_ms", 60000, &cfg->idle_ms, err, err_len);
    if (rc == 0)
        rc = get_timeout(api, t, "response_ms", 30000, &cfg->response_ms, err, err_len);
    if (rc == 0)
        rc = parse_limits(api, api->cfg_lookup(s, "limits"), cfg, err, err_len);
    if (rc == 0)
        rc = parse_upstreams(api, s, api->cfg_lookup(s, "upstreams"), cfg, err, err_len);
    if (rc == 0)
        rc = parse_routes(api, api->cfg_lookup(s, "routes"), cfg, err, err_len);
    if (rc == 0)
        rc = parse_access_log(api, api->cfg_lookup(s, "access_log"), cfg, err, err_len);
    if (rc == 0)
        rc = parse_server_tls(api, api->cfg_lookup(s, "tls"), cfg, err, err_len);
    if (rc == -ENOMEM)
        snprintf(err, err_len, "alb: out of memory");
    if (rc < 0 || !out)
        alb_config_free(cfg);
    return rc;
}

void alb_config_free(alb_config *cfg)
{
    for (int i = 0; i < cfg->nupstreams; i++) {
        alb_pool_destroy(&cfg->upstreams[i].pool);
        alb_tls_client_ctx_unref(cfg->upstreams[i].tls);
    }
    free(cfg->upstreams);
    for (int i = 0; i < cfg->nroutes; i++)
        cfg_route_free(&cfg->routes[i]);
    free(cfg->routes);
    free(cfg->access_log_path);
    alb_tls_server_ctx_unref(cfg->tls_server);
    memset(cfg, 0, sizeof(*cfg));
}
