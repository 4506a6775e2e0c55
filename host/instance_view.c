/*
 * instance_view.c — see instance_view.h. Latency quantiles come from the instance's
 * histogram in microseconds and are shown in milliseconds, as the wire fields say.
 */
#include "instance_view.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pb_util.h"

mp_module_type mp_instance_module_type(const struct mp_instance *inst)
{
    const mp_generation *g = inst->active ? inst->active : inst->gens;
    return g ? g->image->desc->module_type : MP_MODULE_UNSPECIFIED;
}

Marchproxy__ModuleInstance *mp_view_module_instance(mp_arena *a, struct mp_instance *inst)
{
    Marchproxy__ModuleInstance *m = mp_pb_new(a, &marchproxy__module_instance__descriptor);
    mp_module_type type = mp_instance_module_type(inst);
    m->instance_id = mp_arena_strdup(a, inst->id);
    m->module_type = (Marchproxy__ModuleType)mp_wire_module_type(type);
    m->address = mp_arena_printf(a, "inproc:%s", inst->id);
    m->health_status = (Marchproxy__HealthStatus)inst->health;
    const ProtobufCMessageDescriptor *md = &marchproxy__module_instance__metadata_entry__descriptor;
    mp_pb_map_add_str(a, md, &m->metadata, &m->n_metadata, "plugin", inst->plugin);
    mp_pb_map_add_str(a, md, &m->metadata, &m->n_metadata, "kind", "in-process");
    mp_pb_map_add_str(a, md, &m->metadata, &m->n_metadata, "type", mp_module_type_name(type));
    mp_pb_map_add_str(a, md, &m->metadata, &m->n_metadata, "autoloaded",
                      inst->autoloaded ? "true" : "false");
    m->started_at = mp_pb_timestamp(a, inst->started_ns);
    int64_t conns = atomic_load(&inst->stats.conns_active);
    m->current_connections = (int32_t)(conns < 0 ? 0 : conns);
    m->max_connections = inst->max_connections;
    m->version = mp_arena_strdup(a, mp_instance_version(inst));
    m->traffic_weight = inst->active ? inst->active->weight : 0;
    return m;
}

Marchproxy__BlueGreenConfig *mp_view_blue_green(mp_arena *a, const struct mp_instance *inst)
{
    Marchproxy__BlueGreenConfig *b = mp_pb_new(a, &marchproxy__blue_green_config__descriptor);
    /* Blue is the stable version; green the other live one (candidate or standby). */
    const mp_generation *blue = mp_instance_find_generation(inst, inst->stable_version);
    const mp_generation *green = NULL;
    for (const mp_generation *g = inst->gens; g; g = g->next)
        if (!atomic_load(&g->retired) && g != blue) {
            green = g;
            break;
        }
    b->blue_version = mp_arena_strdup(a, blue ? blue->version : "");
    b->blue_weight = blue ? blue->weight : 0;
    b->green_version = mp_arena_strdup(a, green ? green->version : "");
    b->green_weight = green ? green->weight : 0;
    b->active_version = mp_arena_strdup(a, mp_instance_version(inst));
    b->canary_enabled = inst->canary;
    b->canary_percent = inst->canary && green ? green->weight : 0;
    if (inst->deployment_started_ns)
        b->deployment_started = mp_pb_timestamp(a, inst->deployment_started_ns);
    return b;
}

static bool wanted_name(char *const *names, size_t n, const char *name)
{
    if (n == 0)
        return true;
    for (size_t i = 0; i < n; i++)
        if (strcmp(names[i], name) == 0)
            return true;
    return false;
}

static void add_point(mp_arena *a, Marchproxy__ModuleMetrics *mm, char *const *names,
                      size_t n_names, const char *name, double value, const char *instance_id,
                      Google__Protobuf__Timestamp *ts)
{
    if (!wanted_name(names, n_names, name))
        return;
    Marchproxy__MetricDataPoint *p = mp_pb_new(a, &marchproxy__metric_data_point__descriptor);
    p->name = mp_arena_strdup(a, name);
    p->value = value;
    p->timestamp = ts;
    mp_pb_map_add_str(a, &marchproxy__metric_data_point__labels_entry__descriptor, &p->labels,
                      &p->n_labels, "instance_id", instance_id);
    mp_pb_append(a, &mm->metrics, &mm->n_metrics, p);
}

struct plugin_points {
    mp_arena *a;
    Marchproxy__ModuleMetrics *mm;
    char *const *names;
    size_t n_names;
    const char *instance_id;
    Google__Protobuf__Timestamp *ts;
};

/* A plugin counter whose whole value is a number becomes a data point of its name;
 * text values (states, lists) stay in GetStats only. */
static void plugin_point(void *ctx, const char *name, const char *value)
{
    struct plugin_points *pp = ctx;
    if (!name || !value || !*value)
        return;
    char *end;
    double v = strtod(value, &end);
    if (*end || !isfinite(v))
        return;
    add_point(pp->a, pp->mm, pp->names, pp->n_names, name, v, pp->instance_id, pp->ts);
}

Marchproxy__ModuleMetrics *mp_view_module_metrics(mp_arena *a, struct mp_instance *inst,
                                                  char *const *names, size_t n_names)
{
    Marchproxy__ModuleMetrics *mm = mp_pb_new(a, &marchproxy__module_metrics__descriptor);
    uint64_t now = mp_wall_ns();
    Google__Protobuf__Timestamp *ts = mp_pb_timestamp(a, now);
    mm->instance_id = mp_arena_strdup(a, inst->id);
    mm->module_type = (Marchproxy__ModuleType)mp_wire_module_type(mp_instance_module_type(inst));
    mm->collected_at = ts;
    mp_instance_stats *s = &inst->stats;
    mp_hist_snapshot snap;
    mp_hist_snapshot_take(&s->latency, &snap);
    struct {
        const char *name;
        double value;
    } points[] = {
        {"requests_total", (double)atomic_load(&s->requests)},
        {"requests_ok_total", (double)atomic_load(&s->ok)},
        {"requests_failed_total", (double)atomic_load(&s->failed)},
        {"bytes_in_total", (double)atomic_load(&s->bytes_in)},
        {"bytes_out_total", (double)atomic_load(&s->bytes_out)},
        {"connections_total", (double)atomic_load(&s->conns_total)},
        {"active_connections", (double)atomic_load(&s->conns_active)},
        {"latency_avg_ms", mp_hist_mean(&snap) / 1000.0},
        {"latency_p50_ms", mp_hist_quantile(&snap, 0.50) / 1000.0},
        {"latency_p95_ms", mp_hist_quantile(&snap, 0.95) / 1000.0},
        {"latency_p99_ms", mp_hist_quantile(&snap, 0.99) / 1000.0},
        {"routes", (double)inst->routes.n},
        {"rate_limits", (double)inst->rate_limits.n},
        {"healthy", inst->health == MP_HEALTH_HEALTHY ? 1.0 : 0.0},
    };
    for (size_t i = 0; i < sizeof(points) / sizeof(points[0]); i++)
        add_point(a, mm, names, n_names, points[i].name, points[i].value, inst->id, ts);
    /* and every numeric counter the plugin reports (its custom stats) */
    const mp_generation *g = inst->active;
    if (g && g->image && g->image->desc && g->image->desc->custom_stats) {
        struct plugin_points pp = {a, mm, names, n_names, inst->id, ts};
        mp_stats_sink sink = {.struct_size = sizeof(sink), .ctx = &pp, .add = plugin_point};
        g->image->desc->custom_stats(g->state, &sink);
    }
    return mm;
}
