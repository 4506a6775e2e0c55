/*
 * stats_build.c — see stats_build.h. Owns how an instance's counters become
 * ModuleStats: microsecond histograms are shown in milliseconds, and the process-wide
 * CPU and RSS stand for every in-process instance, since they share one process and
 * any per-instance share of them would be invented.
 */
#include "stats_build.h"

#include <stdatomic.h>
#include <stdint.h>

#include "host.h"
#include "pb_util.h"

struct sink_ctx {
    mp_arena *a;
    Marchproxy__ModuleStats *out;
};

static void sink_add(void *ctx, const char *name, const char *value)
{
    struct sink_ctx *s = ctx;
    if (!name || !*name)
        return;
    mp_pb_map_add_str(s->a, &marchproxy__module_stats__custom_stats_entry__descriptor,
                      &s->out->custom_stats, &s->out->n_custom_stats, name, value ? value : "");
}

static double us_to_ms(double us) { return us / 1000.0; }

static int64_t counter(uint64_t v) { return v > INT64_MAX ? INT64_MAX : (int64_t)v; }

void mp_build_module_stats(mp_arena *a, mp_instance *inst, Marchproxy__ModuleStats *out)
{
    mp_instance_stats *st = &inst->stats;
    mp_hist_snapshot snap;
    marchproxy__module_stats__init(out);
    out->instance_id = mp_arena_strdup(a, inst->id);
    out->total_requests = counter(atomic_load(&st->requests));
    out->successful_requests = counter(atomic_load(&st->ok));
    out->failed_requests = counter(atomic_load(&st->failed));
    int64_t active = atomic_load(&st->conns_active);
    out->active_connections = active < 0 ? 0 : active;
    out->total_connections = counter(atomic_load(&st->conns_total));
    mp_hist_snapshot_take(&st->latency, &snap);
    out->avg_latency_ms = us_to_ms(mp_hist_mean(&snap));
    out->p50_latency_ms = us_to_ms(mp_hist_quantile(&snap, 0.50));
    out->p95_latency_ms = us_to_ms(mp_hist_quantile(&snap, 0.95));
    out->p99_latency_ms = us_to_ms(mp_hist_quantile(&snap, 0.99));
    out->bytes_received = counter(atomic_load(&st->bytes_in));
    out->bytes_sent = counter(atomic_load(&st->bytes_out));
    double cpu = mp_proc_cpu_percent(&inst->host->proc);
    out->cpu_usage_percent = cpu < 0 ? 0.0 : cpu;
    uint64_t rss;
    out->memory_usage_mb = mp_proc_rss_bytes(&rss) == 0 ? (double)rss / (1024.0 * 1024.0) : 0.0;
    uint64_t since = atomic_load(&st->since_ns);
    if (!since)
        since = inst->started_ns;
    if (since)
        out->since = mp_pb_timestamp(a, since);
    struct sink_ctx ctx = {a, out};
    /* the host's own counters first; the plugin's follow */
    char v[32];
    snprintf(v, sizeof(v), "%llu", (unsigned long long)atomic_load(&st->drained_forced));
    sink_add(&ctx, "connections_closed_at_drain", v);
    const mp_generation *g = inst->active;
    if (g && g->image && g->image->desc && g->image->desc->custom_stats) {
        mp_stats_sink sink = {.struct_size = sizeof(sink), .ctx = &ctx, .add = sink_add};
        g->image->desc->custom_stats(g->state, &sink);
    }
}
