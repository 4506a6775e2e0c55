/*
 * alb_plugin.c — the ALB plugin's descriptor and instance lifecycle: validate/create/
 * destroy, health and custom stats. The HTTP proxying itself lives in alb_proxy.c and
 * the settings in alb_config.c.
 *
 * No reconfigure: connections read the parsed settings without locks, so a change of
 * settings takes a reload (a new generation), whose old connections drain on the old
 * settings.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alb_internal.h"

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
    api->log(inst, MP_LOG_INFO, "alb ready: %d upstreams, %d routes", st->cfg.nupstreams,
             st->cfg.nroutes);
    *state = st;
    return 0;
}

static void destroy(void *state)
{
    alb_state *st = state;
    alb_config_free(&st->cfg);
    free(st);
}

static void health(void *state, int deep, mp_health_report *out)
{
    alb_state *st = state;
    out->status = MP_HEALTH_HEALTHY;
    snprintf(out->message, sizeof(out->message), "alb: %d upstreams, %d routes",
             st->cfg.nupstreams, st->cfg.nroutes);
}

static void put_counter(const mp_stats_sink *sink, const char *name, uint64_t v)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)v);
    sink->add(sink->ctx, name, buf);
}

static void custom_stats(void *state, const mp_stats_sink *sink)
{
    alb_state *st = state;
    put_counter(sink, "connections_total", atomic_load(&st->connections));
    put_counter(sink, "requests_proxied", atomic_load(&st->requests));
    put_counter(sink, "local_errors", atomic_load(&st->local_errors));
    put_counter(sink, "upstream_errors", atomic_load(&st->upstream_errors));
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
    .custom_stats = custom_stats,
    .on_connection = on_connection,
};

MP_PLUGIN_DEFINE(descriptor)
