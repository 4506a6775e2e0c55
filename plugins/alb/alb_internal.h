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

#include "marchproxy/plugin.h"

#define ALB_NAME_MAX 64
#define ALB_HOST_MAX 256
#define ALB_PREFIX_MAX 1024

typedef struct alb_server {
    struct sockaddr_storage addr;
    socklen_t addr_len;
    char text[80]; /* as configured, for logs */
} alb_server;

typedef struct alb_upstream {
    char name[ALB_NAME_MAX];
    alb_server *servers;
    int nservers;
    /* Shared by all workers: an atomic counter keeps the rotation exact across them. */
    _Atomic uint64_t rr;
} alb_upstream;

typedef struct alb_route {
    char host[ALB_HOST_MAX]; /* "" any host; "*.x" any name ending in ".x" */
    int host_wildcard;
    char prefix[ALB_PREFIX_MAX]; /* "" any path */
    size_t prefix_len;
    int upstream; /* index into alb_config.upstreams */
} alb_route;

typedef struct alb_config {
    alb_upstream *upstreams;
    int nupstreams;
    alb_route *routes;
    int nroutes;
    uint32_t connect_ms, header_ms, idle_ms, response_ms;
} alb_config;

/* Parses and checks a settings section; out may be NULL to only validate. */
int alb_config_parse(const mp_host_api *api, const mp_config *s, alb_config *out, char *err,
                     size_t err_len);
void alb_config_free(alb_config *cfg);
/* First route matching the request's authority (host[:port]) and target; -1 if none. */
int alb_config_match(const alb_config *cfg, const char *authority, size_t alen,
                     const char *target, size_t tlen);

typedef struct alb_state {
    const mp_host_api *api;
    mp_instance *inst;
    alb_config cfg;
    _Atomic uint64_t connections, requests, local_errors, upstream_errors;
} alb_state;

int alb_proxy_on_connection(alb_state *st, mp_conn *c, const mp_conn_info *info);

#endif
