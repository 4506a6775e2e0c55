/*
 * host_api.c — the function table plugins receive (mp_host_api): logging, the config
 * view, RPC registration and replies, statistics and identity. Each entry checks what
 * a plugin could get wrong (NULLs, calls at the wrong time) and says so in the log
 * rather than crashing the host.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "config_view.h"
#include "dp.h"
#include "host.h"
#include "log.h"

static void api_log(mp_instance *inst, mp_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    mp_vlogf(level, inst ? inst->id : "plugin", fmt, ap);
    va_end(ap);
}

static int api_register_rpc(mp_instance *inst, const char *full_method, int server_streaming,
                            mp_rpc_handler handler)
{
    if (!inst || !handler || !full_method)
        return -EINVAL;
    mp_generation *g = inst->host->creating;
    if (!g || g->inst != inst) {
        mp_logf(MP_LOG_ERROR, inst->id, "register_rpc(%s) outside create() refused",
                full_method);
        return -EPERM;
    }
    if (full_method[0] != '/' || !strchr(full_method + 1, '/') ||
        strncmp(full_method, "/marchproxy.", 12) == 0 ||
        strncmp(full_method, "/grpc.", 6) == 0) {
        mp_logf(MP_LOG_ERROR, inst->id,
                "register_rpc(%s): need \"/pkg.Service/Method\" outside the marchproxy "
                "and grpc packages",
                full_method);
        return -EINVAL;
    }
    if (g->n_rpc == MP_MAX_RPC_PER_GENERATION)
        return -ENOSPC;
    for (size_t i = 0; i < g->n_rpc; i++)
        if (strcmp(g->rpcs[i].path, full_method) == 0)
            return -EEXIST;
    /* Another instance serving the same method would make routing ambiguous. */
    for (struct mp_instance *o = inst->host->instances; o; o = o->next) {
        if (o == inst || !o->active)
            continue;
        for (size_t i = 0; i < o->active->n_rpc; i++)
            if (strcmp(o->active->rpcs[i].path, full_method) == 0)
                return -EEXIST;
    }
    char *path = strdup(full_method);
    if (!path)
        return -ENOMEM;
    g->rpcs[g->n_rpc].gen = g;
    g->rpcs[g->n_rpc].path = path;
    g->rpcs[g->n_rpc].streaming = server_streaming != 0;
    g->rpcs[g->n_rpc].fn = handler;
    g->n_rpc++;
    return 0;
}

static void api_stats_request(mp_instance *inst, uint64_t latency_us, int ok, uint64_t bytes_in,
                              uint64_t bytes_out)
{
    mp_instance_stats *s = &inst->stats;
    atomic_fetch_add_explicit(&s->requests, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(ok ? &s->ok : &s->failed, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->bytes_in, bytes_in, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->bytes_out, bytes_out, memory_order_relaxed);
    mp_hist_record(&s->latency, latency_us);
}

static void api_stats_connection(mp_instance *inst, int delta)
{
    atomic_fetch_add_explicit(&inst->stats.conns_active, delta, memory_order_relaxed);
    if (delta > 0)
        atomic_fetch_add_explicit(&inst->stats.conns_total, (uint64_t)delta,
                                  memory_order_relaxed);
}

static const char *api_instance_id(const mp_instance *inst) { return inst->id; }

/* The per-instance directory under state_dir/instances/, made on first request. The
 * ABI promises the string only until the next call on the same thread, so a
 * thread-local buffer is enough. */
static const char *api_instance_state_dir(const mp_instance *inst)
{
    static __thread char path[4096];
    const mp_host *h = inst->host;
    const char *base = (h->applying_cfg ? h->applying_cfg : h->cfg)->state_dir;
    snprintf(path, sizeof(path), "%s/instances", base);
    mkdir(path, 0700);
    snprintf(path, sizeof(path), "%s/instances/%s", base, inst->id);
    if (mkdir(path, 0700) < 0 && errno != EEXIST) {
        mp_logf(MP_LOG_ERROR, inst->id, "cannot create %s: %s", path, strerror(errno));
        return NULL;
    }
    return path;
}

void mp_host_api_init(mp_host *h, mp_host_api *api)
{
    (void)h;
    memset(api, 0, sizeof(*api));
    api->struct_size = sizeof(*api);
    api->abi_major = MP_ABI_MAJOR;
    api->abi_minor = MP_ABI_MINOR;
    api->log = api_log;
    mp_config_view_fill_api(api);
    api->register_rpc = api_register_rpc;
    api->rpc_send = mp_rpc_send;
    api->rpc_finish = mp_rpc_finish;
    api->rpc_cancelled = mp_rpc_cancelled;
    api->stats_request = api_stats_request;
    api->stats_connection = api_stats_connection;
    api->instance_id = api_instance_id;
    api->instance_state_dir = api_instance_state_dir;
    dp_conn_fill_api(api);
}
