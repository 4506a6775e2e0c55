/*
 * alb_config.c — the ALB plugin's settings: parsing and checking the section
 * (upstreams, routes, timeouts) with FILE:LINE errors, and route matching. The parsed
 * form is immutable once built, so workers read it without locks.
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

static const char *const top_keys[] = {"upstreams", "routes", "timeouts", NULL};
static const char *const upstream_keys[] = {"servers", "balance", NULL};
static const char *const route_keys[] = {"host", "path_prefix", "upstream", NULL};
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
        if (rc < 0)
            return rc;
        const char *bal;
        rc = api->cfg_get_string(u, "balance", &bal);
        if (rc == -EINVAL || (rc == 0 && strcmp(bal, "round-robin") != 0))
            return api->cfg_error(api->cfg_lookup(u, "balance"), err, err_len,
                                  "alb: balance must be \"round-robin\"");
        const mp_config *sv = api->cfg_lookup(u, "servers");
        mp_config_kind k = sv ? api->cfg_kind(sv) : MP_CFG_NONE;
        if (!sv || (k != MP_CFG_ARRAY && k != MP_CFG_LIST) || api->cfg_count(sv) < 1)
            return api->cfg_error(sv ? sv : u, err, err_len,
                                  "alb: upstream '%s' needs servers = [ \"ip:port\", ... ]",
                                  name);
        up->nservers = api->cfg_count(sv);
        up->servers = calloc((size_t)up->nservers, sizeof(alb_server));
        if (!up->servers)
            return -ENOMEM;
        for (int j = 0; j < up->nservers; j++) {
            const mp_config *e = api->cfg_child(sv, j);
            const char *txt;
            if (api->cfg_get_string(e, NULL, &txt) != 0 && api->cfg_kind(e) != MP_CFG_STRING)
                return api->cfg_error(e, err, err_len, "alb: a server must be a string");
            if (api->cfg_get_string(e, NULL, &txt) != 0 || parse_server(txt, &up->servers[j]))
                return api->cfg_error(e, err, err_len,
                                      "alb: server must be \"IPv4:port\" or \"[IPv6]:port\"");
        }
    }
    return 0;
}

static int find_upstream(const alb_config *cfg, const char *name)
{
    for (int i = 0; i < cfg->nupstreams; i++)
        if (!strcmp(cfg->upstreams[i].name, name))
            return i;
    return -1;
}

static int parse_routes(const mp_host_api *api, const mp_config *s, const mp_config *rts,
                        alb_config *cfg, char *err, size_t err_len)
{
    if (!rts)
        return 0; /* no routes: every request gets 404 */
    mp_config_kind k = api->cfg_kind(rts);
    if (k != MP_CFG_LIST && k != MP_CFG_GROUP)
        return api->cfg_error(rts, err, err_len, "alb: routes must be a list of groups");
    int n = api->cfg_count(rts);
    cfg->routes = calloc((size_t)(n ? n : 1), sizeof(alb_route));
    if (!cfg->routes)
        return -ENOMEM;
    cfg->nroutes = n;
    for (int i = 0; i < n; i++) {
        const mp_config *r = api->cfg_child(rts, i);
        alb_route *rt = &cfg->routes[i];
        if (api->cfg_kind(r) != MP_CFG_GROUP)
            return api->cfg_error(r, err, err_len, "alb: each route must be a group");
        int rc = api->cfg_check_keys(r, route_keys, err, err_len);
        if (rc < 0)
            return rc;
        const char *v;
        rc = api->cfg_get_string(r, "host", &v);
        if (rc == -EINVAL || (rc == 0 && strlen(v) >= ALB_HOST_MAX) ||
            (rc == 0 && strchr(v, '*') && (strncmp(v, "*.", 2) != 0 || strchr(v + 1, '*'))))
            return api->cfg_error(api->cfg_lookup(r, "host"), err, err_len,
                                  "alb: host must be a name or \"*.suffix\"");
        if (rc == 0) {
            rt->host_wildcard = v[0] == '*';
            snprintf(rt->host, sizeof(rt->host), "%s", rt->host_wildcard ? v + 1 : v);
        }
        rc = api->cfg_get_string(r, "path_prefix", &v);
        if (rc == -EINVAL || (rc == 0 && (strlen(v) >= ALB_PREFIX_MAX || v[0] != '/')))
            return api->cfg_error(api->cfg_lookup(r, "path_prefix"), err, err_len,
                                  "alb: path_prefix must be a string starting with '/'");
        if (rc == 0) {
            snprintf(rt->prefix, sizeof(rt->prefix), "%s", v);
            rt->prefix_len = strlen(v);
        }
        if (api->cfg_get_string(r, "upstream", &v) != 0)
            return api->cfg_error(r, err, err_len, "alb: route needs upstream = \"name\"");
        rt->upstream = find_upstream(cfg, v);
        if (rt->upstream < 0)
            return api->cfg_error(api->cfg_lookup(r, "upstream"), err, err_len,
                                  "alb: unknown upstream '%s'", v);
    }
    return 0;
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
        rc = parse_upstreams(api, s, api->cfg_lookup(s, "upstreams"), cfg, err, err_len);
    if (rc == 0)
        rc = parse_routes(api, s, api->cfg_lookup(s, "routes"), cfg, err, err_len);
    if (rc == -ENOMEM)
        snprintf(err, err_len, "alb: out of memory");
    if (rc < 0 || !out)
        alb_config_free(cfg);
    return rc;
}

void alb_config_free(alb_config *cfg)
{
    for (int i = 0; i < cfg->nupstreams; i++)
        free(cfg->upstreams[i].servers);
    free(cfg->upstreams);
    free(cfg->routes);
    memset(cfg, 0, sizeof(*cfg));
}

static int host_matches(const alb_route *rt, const char *h, size_t hl)
{
    if (!rt->host[0])
        return 1;
    size_t rl = strlen(rt->host);
    if (rt->host_wildcard) /* rt->host is ".suffix": at least one label before it */
        return hl > rl && strncasecmp(h + hl - rl, rt->host, rl) == 0;
    return hl == rl && strncasecmp(h, rt->host, rl) == 0;
}

int alb_config_match(const alb_config *cfg, const char *authority, size_t alen,
                     const char *target, size_t tlen)
{
    /* Host without the port; a bracketed IPv6 literal keeps its brackets. */
    size_t hl = alen;
    for (size_t i = alen; i > 0; i--) {
        char ch = authority[i - 1];
        if (ch == ':') {
            hl = i - 1;
            break;
        }
        if (ch < '0' || ch > '9')
            break;
    }
    /* Absolute-form: match on the path part only. */
    const char *path = target;
    size_t pl = tlen;
    const char *sch = memmem(target, tlen, "://", 3);
    if (sch && target[0] != '/') {
        const char *a = sch + 3;
        const char *slash = memchr(a, '/', tlen - (size_t)(a - target));
        path = slash ? slash : "/";
        pl = slash ? tlen - (size_t)(slash - target) : 1;
    }
    for (int i = 0; i < cfg->nroutes; i++) {
        const alb_route *rt = &cfg->routes[i];
        if (!host_matches(rt, authority, hl))
            continue;
        if (rt->prefix_len && (pl < rt->prefix_len || memcmp(path, rt->prefix, rt->prefix_len)))
            continue;
        return i;
    }
    return -1;
}
