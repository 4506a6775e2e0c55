/*
 * svc_module.c — marchproxy.ModuleService for every in-process plugin instance,
 * dispatched by instance_id. Transport and validation problems are gRPC status codes
 * (INVALID_ARGUMENT, NOT_FOUND with the known ids); business outcomes fill the
 * responses' success / error fields.
 *
 * What needs the data plane (draining on Reload/Shutdown, weights splitting new
 * connections, rate limits enforced on traffic, workers per instance) is recorded here
 * and takes effect in the data-plane code.
 */
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config_view.h"
#include "host.h"
#include "instance_view.h"
#include "log.h"
#include "marchproxy/module.pb-c.h"
#include "pb_util.h"
#include "plugin_tables.h"
#include "query.h"
#include "route_match.h"
#include "rpc_proto.h"
#include "stats_build.h"

#define MAX_ID_LEN 128
#define MAX_STREAM_INTERVAL_S 3600

static mp_host *host_of(mp_pb_call *pc) { return mp_pb_ctx(pc); }

/* The instance a request names, or a failure status explaining what exists. */
static struct mp_instance *need_instance(mp_pb_call *pc, const char *id, mp_rpc_code *code)
{
    mp_host *h = host_of(pc);
    char known[1024];
    mp_host_known_ids(h, known, sizeof(known));
    if (!id || !*id) {
        *code = mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "instance_id is required (known: %s)",
                           known);
        return NULL;
    }
    struct mp_instance *inst = mp_host_find_instance(h, id);
    if (!inst)
        *code = mp_pb_fail(pc, MP_RPC_NOT_FOUND, "unknown instance_id '%.*s' (known: %s)",
                           MAX_ID_LEN, id, known);
    return inst;
}

#define NEED_INSTANCE(var, id)                                \
    mp_rpc_code need_code_;                                   \
    struct mp_instance *var = need_instance(pc, id, &need_code_); \
    if (!var)                                                 \
        return need_code_

static Marchproxy__Error *wire_error(mp_arena *a, Marchproxy__StatusCode code, const char *msg)
{
    Marchproxy__Error *e = mp_pb_new(a, &marchproxy__error__descriptor);
    e->code = code;
    e->message = mp_arena_strdup(a, msg);
    e->occurred_at = mp_pb_timestamp(a, mp_wall_ns());
    return e;
}

static void sha256_hex(const void *data, size_t len, char out[72])
{
    unsigned char d[32];
    unsigned int n = 0;
    EVP_Digest(data, len, d, &n, EVP_sha256(), NULL);
    strcpy(out, "sha256:");
    for (unsigned i = 0; i < n; i++)
        sprintf(out + 7 + 2 * i, "%02x", d[i]);
}

/* ------------------------------------------------------------------ lifecycle */

static mp_rpc_code get_status(mp_pb_call *pc, const void *vreq, void *vresp)
{
    const Marchproxy__GetStatusRequest *req = vreq;
    Marchproxy__GetStatusResponse *resp = vresp;
    mp_arena *a = mp_pb_arena(pc);
    NEED_INSTANCE(inst, req->instance_id);
    mp_instance_refresh_health(inst, false);
    resp->instance = mp_view_module_instance(a, inst);
    resp->status = (Marchproxy__HealthStatus)inst->health;
    resp->message = mp_arena_strdup(a, inst->health_msg);
    resp->last_updated = mp_pb_timestamp(a, mp_wall_ns());
    const ProtobufCMessageDescriptor *d = &marchproxy__get_status_response__details_entry__descriptor;
    size_t live = 0;
    for (mp_generation *g = inst->gens; g; g = g->next)
        live += !atomic_load(&g->retired);
    mp_pb_map_add_str(a, d, &resp->details, &resp->n_details, "plugin", inst->plugin);
    if (inst->active) {
        mp_pb_map_add_str(a, d, &resp->details, &resp->n_details, "plugin_version",
                          inst->active->image->version);
        mp_pb_map_add_str(a, d, &resp->details, &resp->n_details, "plugin_sha256",
                          inst->active->image->hash);
        mp_pb_map_add_str(a, d, &resp->details, &resp->n_details, "plugin_file",
                          inst->active->image->src_path);
    }
    mp_pb_map_add_str(a, d, &resp->details, &resp->n_details, "generations",
                      mp_arena_printf(a, "%zu", live));
    mp_pb_map_add_str(a, d, &resp->details, &resp->n_details, "routes",
                      mp_arena_printf(a, "%zu", inst->routes.n));
    mp_pb_map_add_str(a, d, &resp->details, &resp->n_details, "rate_limits",
                      mp_arena_printf(a, "%zu", inst->rate_limits.n));
    if (inst->last_error[0])
        mp_pb_map_add_str(a, d, &resp->details, &resp->n_details, "last_error",
                          inst->last_error);
    return MP_RPC_OK;
}

static mp_rpc_code reload(mp_pb_call *pc, const void *vreq, void *vresp)
{
    const Marchproxy__ReloadRequest *req = vreq;
    Marchproxy__ReloadResponse *resp = vresp;
    mp_host *h = host_of(pc);
    mp_arena *a = mp_pb_arena(pc);
    if (req->timeout_seconds < 0 || req->timeout_seconds > 86400)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "timeout_seconds must be 0..86400");
    /* "" and "*" reload everything; an id limits plugin and settings changes to it (it
     * may be an instance the config file has just gained). */
    const char *only = req->instance_id && *req->instance_id && strcmp(req->instance_id, "*")
                           ? req->instance_id
                           : NULL;
    char msg[8192];
    /* graceful: retired generations keep their connections until they end or the
     * timeout (default drain_timeout_ms); otherwise they are closed at once. */
    h->drain_override_ms = !req->graceful ? 0
                           : req->timeout_seconds > 0 ? (int64_t)req->timeout_seconds * 1000
                                                      : -1;
    int rc = mp_host_reload(h, only, msg, sizeof(msg));
    h->drain_override_ms = -1;
    if (rc == -ENOENT && only && !mp_host_find_instance(h, only))
        return mp_pb_fail(pc, MP_RPC_NOT_FOUND, "%s", msg);
    resp->success = rc == 0;
    resp->message = mp_arena_strdup(a, msg);
    if (rc < 0)
        resp->error = wire_error(a, MARCHPROXY__STATUS_CODE__STATUS_CODE_ERROR, msg);
    return MP_RPC_OK;
}

static mp_rpc_code shutdown_instance(mp_pb_call *pc, const void *vreq, void *vresp)
{
    const Marchproxy__ShutdownRequest *req = vreq;
    Marchproxy__ShutdownResponse *resp = vresp;
    mp_arena *a = mp_pb_arena(pc);
    NEED_INSTANCE(inst, req->instance_id);
    if (req->timeout_seconds < 0 || req->timeout_seconds > 86400)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "timeout_seconds must be 0..86400");
    int64_t conns = atomic_load(&inst->stats.conns_active);
    char *id = mp_arena_strdup(a, inst->id);
    mp_logf(MP_LOG_INFO, id, "shutdown requested over gRPC (%s)",
            req->graceful ? "graceful" : "immediate");
    mp_host *h = host_of(pc);
    h->drain_override_ms = !req->graceful ? 0
                           : req->timeout_seconds > 0 ? (int64_t)req->timeout_seconds * 1000
                                                      : -1;
    mp_instance_remove(inst); /* generations finish their calls, then are destroyed */
    h->drain_override_ms = -1;
    resp->success = true;
    resp->message = mp_arena_printf(a,
                                    "instance %s stopped (%lld connection(s) %s); Reload "
                                    "starts it again",
                                    id, (long long)conns, req->graceful ? "draining" : "closed");
    return MP_RPC_OK;
}

/* ------------------------------------------------------------------ routes */

/* Ends a change to one of inst's tables: its plugins get the new table, and a refusal
 * (the old table is back) becomes the response. */
static bool table_refused(mp_arena *a, struct mp_instance *inst, mp_msg_store *table,
                          mp_table_change *change, protobuf_c_boolean *success, char **message,
                          Marchproxy__Error **error)
{
    char why[600];
    if (mp_table_change_commit(inst, table, change, why, sizeof(why)) == 0)
        return false;
    *success = false;
    *message = mp_arena_strdup(a, why);
    *error = wire_error(a, MARCHPROXY__STATUS_CODE__STATUS_CODE_INVALID_ARGUMENT, why);
    return true;
}

static mp_rpc_code can_handle(mp_pb_call *pc, const void *vreq, void *vresp)
{
    const Marchproxy__CanHandleRequest *req = vreq;
    Marchproxy__CanHandleResponse *resp = vresp;
    mp_host *h = host_of(pc);
    mp_arena *a = mp_pb_arena(pc);
    if (!req->route)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "route is required");
    /* The request carries no instance_id field: the caller names the module in the
     * context map, otherwise every instance is asked and the best answer wins. */
    const char *only = mp_pb_map_get_str((void *const *)req->context, req->n_context,
                                         "instance_id");
    if (!only)
        only = mp_pb_map_get_str((void *const *)req->route->metadata, req->route->n_metadata,
                                 "target");
    if (only && !mp_host_find_instance(h, only)) {
        char known[1024];
        mp_host_known_ids(h, known, sizeof(known));
        return mp_pb_fail(pc, MP_RPC_NOT_FOUND, "unknown instance_id '%.*s' (known: %s)",
                          MAX_ID_LEN, only, known);
    }
    struct mp_instance *best = NULL;
    mp_can_handle_result best_r = {0};
    for (struct mp_instance *inst = h->instances; inst; inst = inst->next) {
        if (only && strcmp(inst->id, only) != 0)
            continue;
        mp_can_handle_result r;
        memset(&r, 0, sizeof(r));
        r.struct_size = sizeof(r);
        mp_instance_verdict(inst, req->route, &r);
        r.reason[sizeof(r.reason) - 1] = '\0';
        if (!best || (r.can_handle && (!best_r.can_handle || r.priority > best_r.priority))) {
            best = inst;
            best_r = r;
        }
    }
    if (!best) {
        resp->can_handle = false;
        resp->reason = mp_arena_strdup(a, "no module instance is loaded");
        return MP_RPC_OK;
    }
    resp->can_handle = best_r.can_handle != 0;
    resp->priority = best_r.priority;
    resp->reason = mp_arena_printf(a, "%s: %s", best->id, best_r.reason);
    mp_pb_map_add_str(a, &marchproxy__can_handle_response__metadata_entry__descriptor,
                      &resp->metadata, &resp->n_metadata, "instance_id", best->id);
    return MP_RPC_OK;
}

/* Query accessor over Route messages. */
static int route_field(const void *rec, const char *field, char *buf, size_t len)
{
    return mp_route_field(rec, field, buf, len);
}

/* Applies a wire Query to message pointers; fills the wire Pagination. */
static mp_rpc_code run_query(mp_pb_call *pc, const Marchproxy__Query *q,
                             const void *const *recs, size_t n, mp_query_field_fn field,
                             mp_query_result *res, Marchproxy__Pagination **pg)
{
    mp_arena *a = mp_pb_arena(pc);
    mp_query_spec spec;
    memset(&spec, 0, sizeof(spec));
    mp_query_filter *filters = NULL;
    if (q) {
        if (q->n_filters > MP_QUERY_MAX_FILTERS)
            return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "at most %d filters",
                              MP_QUERY_MAX_FILTERS);
        filters = mp_arena_alloc(a, (q->n_filters + 1) * sizeof(*filters));
        for (size_t i = 0; i < q->n_filters; i++)
            filters[i] = (mp_query_filter){q->filters[i]->field, q->filters[i]->operator_,
                                           q->filters[i]->value};
        spec.filters = filters;
        spec.n_filters = q->n_filters;
        spec.sort_by = q->sort_by;
        spec.sort_desc = q->sort_desc;
        if (q->pagination) {
            spec.page = q->pagination->page;
            spec.page_size = q->pagination->page_size;
        }
    }
    char err[256];
    if (mp_query_apply(recs, n, field, &spec, res, err, sizeof(err)) < 0)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "query: %s", err);
    Marchproxy__Pagination *p = mp_pb_new(a, &marchproxy__pagination__descriptor);
    p->page = res->page;
    p->page_size = res->page_size;
    p->total_items = (int32_t)res->total_items;
    p->total_pages = res->total_pages;
    *pg = p;
    return MP_RPC_OK;
}

static const void **store_messages(mp_arena *a, const mp_msg_store *s)
{
    const void **v = mp_arena_alloc(a, (s->n + 1) * sizeof(void *));
    for (size_t i = 0; i < s->n; i++)
        v[i] = s->items[i]->msg;
    return v;
}

static mp_rpc_code get_routes(mp_pb_call *pc, const void *vreq, void *vresp)
{
    const Marchproxy__GetRoutesRequest *req = vreq;
    Marchproxy__GetRoutesResponse *resp = vresp;
    mp_arena *a = mp_pb_arena(pc);
    NEED_INSTANCE(inst, req->instance_id);
    mp_query_result res;
    mp_rpc_code code = run_query(pc, req->query, store_messages(a, &inst->routes),
                                 inst->routes.n, route_field, &res, &resp->pagination);
    if (code != MP_RPC_OK)
        return code;
    /* The response points at the stored messages: packing happens before this call
     * returns, on the control thread that alone mutates the store. */
    resp->routes = (Marchproxy__Route **)mp_arena_memdup(a, res.items,
                                                         res.n_items * sizeof(void *));
    resp->n_routes = res.n_items;
    resp->total_routes = (int32_t)res.total_items;
    mp_query_result_free(&res);
    return MP_RPC_OK;
}

static mp_rpc_code update_routes(mp_pb_call *pc, const void *vreq, void *vresp)
{
    const Marchproxy__UpdateRoutesRequest *req = vreq;
    Marchproxy__UpdateRoutesResponse *resp = vresp;
    mp_arena *a = mp_pb_arena(pc);
    NEED_INSTANCE(inst, req->instance_id);
    if (req->n_routes > MP_MAX_ROUTES_PER_INSTANCE)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "at most %d routes per request",
                          MP_MAX_ROUTES_PER_INSTANCE);
    /* All or nothing: validate everything first. */
    char *errors = NULL;
    for (size_t i = 0; i < req->n_routes; i++) {
        char err[300];
        if (mp_route_validate(req->routes[i], err, sizeof(err)) < 0)
            errors = errors ? mp_arena_printf(a, "%s; %s", errors, err) : mp_arena_strdup(a, err);
        for (size_t j = 0; j < i && !errors; j++)
            if (strcmp(req->routes[i]->route_id, req->routes[j]->route_id) == 0)
                errors = mp_arena_printf(a, "route_id '%s' appears twice",
                                         req->routes[i]->route_id);
    }
    size_t after = req->replace_all ? 0 : inst->routes.n;
    for (size_t i = 0; i < req->n_routes && !errors; i++)
        if (req->replace_all || !mp_msg_store_find(&inst->routes, req->routes[i]->route_id))
            after++;
    if (!errors && after > MP_MAX_ROUTES_PER_INSTANCE) {
        resp->success = false;
        resp->message = mp_arena_printf(a, "would exceed %d routes", MP_MAX_ROUTES_PER_INSTANCE);
        resp->error = wire_error(a, MARCHPROXY__STATUS_CODE__STATUS_CODE_RESOURCE_EXHAUSTED,
                                 resp->message);
        return MP_RPC_OK;
    }
    if (errors) {
        resp->success = false;
        resp->message = errors;
        resp->error = wire_error(a, MARCHPROXY__STATUS_CODE__STATUS_CODE_INVALID_ARGUMENT, errors);
        return MP_RPC_OK;
    }
    mp_table_change change;
    if (mp_table_change_begin(inst, &inst->routes, &change) < 0)
        return mp_pb_fail(pc, MP_RPC_RESOURCE_EXHAUSTED, "out of memory");
    if (req->replace_all)
        mp_msg_store_clear(&inst->routes);
    int updated = 0;
    for (size_t i = 0; i < req->n_routes; i++)
        if (mp_msg_store_put(&inst->routes, &req->routes[i]->base, inst->id, MP_ORIGIN_API) == 0)
            updated++;
    if (table_refused(a, inst, &inst->routes, &change, &resp->success, &resp->message,
                      &resp->error))
        return MP_RPC_OK;
    resp->success = updated == (int)req->n_routes;
    resp->routes_updated = updated;
    resp->message = mp_arena_printf(a, "%d route(s) stored; %zu in total", updated,
                                    inst->routes.n);
    if (!resp->success)
        resp->error = wire_error(a, MARCHPROXY__STATUS_CODE__STATUS_CODE_ERROR, "out of memory");
    return MP_RPC_OK;
}

static mp_rpc_code delete_route(mp_pb_call *pc, const void *vreq, void *vresp)
{
    const Marchproxy__DeleteRouteRequest *req = vreq;
    Marchproxy__DeleteRouteResponse *resp = vresp;
    mp_arena *a = mp_pb_arena(pc);
    NEED_INSTANCE(inst, req->instance_id);
    if (!mp_msg_store_find(&inst->routes, req->route_id)) {
        resp->success = false;
        resp->message = mp_arena_printf(a, "no route '%.*s' on %s", MAX_ID_LEN, req->route_id,
                                        inst->id);
        resp->error = wire_error(a, MARCHPROXY__STATUS_CODE__STATUS_CODE_NOT_FOUND, resp->message);
        return MP_RPC_OK;
    }
    mp_table_change change;
    if (mp_table_change_begin(inst, &inst->routes, &change) < 0)
        return mp_pb_fail(pc, MP_RPC_RESOURCE_EXHAUSTED, "out of memory");
    mp_msg_store_remove(&inst->routes, req->route_id);
    if (table_refused(a, inst, &inst->routes, &change, &resp->success, &resp->message,
                      &resp->error))
        return MP_RPC_OK;
    resp->success = true;
    resp->message = mp_arena_printf(a, "route %s deleted", req->route_id);
    return MP_RPC_OK;
}

/* ------------------------------------------------------------------ rate limits */

static mp_rpc_code get_rate_limits(mp_pb_call *pc, const void *vreq, void *vresp)
{
    const Marchproxy__GetRateLimitsRequest *req = vreq;
    Marchproxy__GetRateLimitsResponse *resp = vresp;
    mp_arena *a = mp_pb_arena(pc);
    NEED_INSTANCE(inst, req->instance_id);
    mp_pb_repeated_reserve(a, &resp->limits, &resp->n_limits, inst->rate_limits.n);
    for (size_t i = 0; i < inst->rate_limits.n; i++) {
        Marchproxy__RateLimit *rl = (Marchproxy__RateLimit *)inst->rate_limits.items[i]->msg;
        if (req->target && *req->target && strcmp(rl->target, req->target) != 0)
            continue;
        resp->limits[resp->n_limits++] = rl;
    }
    resp->total_limits = (int32_t)resp->n_limits;
    return MP_RPC_OK;
}

static int rate_limit_validate(const Marchproxy__RateLimit *rl, char *err, size_t len)
{
    size_t idlen = strlen(rl->limit_id);
    if (idlen == 0 || idlen > MAX_ID_LEN) {
        snprintf(err, len, "limit_id must be 1..%d characters", MAX_ID_LEN);
        return -EINVAL;
    }
    if (rl->requests_per_second < 0 || rl->requests_per_minute < 0 ||
        rl->requests_per_hour < 0 || rl->burst_size < 0) {
        snprintf(err, len, "rate limit %s: rates and burst_size must not be negative",
                 rl->limit_id);
        return -EINVAL;
    }
    if (rl->enabled && !rl->requests_per_second && !rl->requests_per_minute &&
        !rl->requests_per_hour) {
        snprintf(err, len,
                 "rate limit %s: an enabled limit needs requests_per_second, _minute or _hour",
                 rl->limit_id);
        return -EINVAL;
    }
    if (strlen(rl->target) > 512) {
        snprintf(err, len, "rate limit %s: target longer than 512 characters", rl->limit_id);
        return -EINVAL;
    }
    return 0;
}

static mp_rpc_code set_rate_limit(mp_pb_call *pc, const void *vreq, void *vresp)
{
    const Marchproxy__SetRateLimitRequest *req = vreq;
    Marchproxy__SetRateLimitResponse *resp = vresp;
    mp_arena *a = mp_pb_arena(pc);
    NEED_INSTANCE(inst, req->instance_id);
    if (!req->limit)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "limit is required");
    char err[300];
    if (rate_limit_validate(req->limit, err, sizeof(err)) < 0) {
        resp->success = false;
        resp->message = mp_arena_strdup(a, err);
        resp->error = wire_error(a, MARCHPROXY__STATUS_CODE__STATUS_CODE_INVALID_ARGUMENT, err);
        return MP_RPC_OK;
    }
    Marchproxy__RateLimit copy = *req->limit;
    if (!*copy.target)
        copy.target = "*";
    mp_table_change change;
    if (mp_table_change_begin(inst, &inst->rate_limits, &change) < 0)
        return mp_pb_fail(pc, MP_RPC_RESOURCE_EXHAUSTED, "out of memory");
    int rc = mp_msg_store_put(&inst->rate_limits, &copy.base, inst->id, MP_ORIGIN_API);
    if (table_refused(a, inst, &inst->rate_limits, &change, &resp->success, &resp->message,
                      &resp->error))
        return MP_RPC_OK;
    resp->success = rc == 0;
    if (rc < 0) {
        resp->message = mp_arena_printf(a, "cannot store: %s",
                                        rc == -ENOSPC ? "too many rate limits" : strerror(-rc));
        resp->error = wire_error(a, rc == -ENOSPC
                                        ? MARCHPROXY__STATUS_CODE__STATUS_CODE_RESOURCE_EXHAUSTED
                                        : MARCHPROXY__STATUS_CODE__STATUS_CODE_ERROR,
                                 resp->message);
    } else {
        resp->message = mp_arena_printf(a, "rate limit %s set on %s", copy.limit_id, inst->id);
    }
    return MP_RPC_OK;
}

static mp_rpc_code remove_rate_limit(mp_pb_call *pc, const void *vreq, void *vresp)
{
    const Marchproxy__RemoveRateLimitRequest *req = vreq;
    Marchproxy__RemoveRateLimitResponse *resp = vresp;
    mp_arena *a = mp_pb_arena(pc);
    NEED_INSTANCE(inst, req->instance_id);
    if (!mp_msg_store_find(&inst->rate_limits, req->limit_id)) {
        resp->success = false;
        resp->message = mp_arena_printf(a, "no rate limit '%.*s' on %s", MAX_ID_LEN,
                                        req->limit_id, inst->id);
        resp->error = wire_error(a, MARCHPROXY__STATUS_CODE__STATUS_CODE_NOT_FOUND, resp->message);
        return MP_RPC_OK;
    }
    mp_table_change change;
    if (mp_table_change_begin(inst, &inst->rate_limits, &change) < 0)
        return mp_pb_fail(pc, MP_RPC_RESOURCE_EXHAUSTED, "out of memory");
    mp_msg_store_remove(&inst->rate_limits, req->limit_id);
    if (table_refused(a, inst, &inst->rate_limits, &change, &resp->success, &resp->message,
                      &resp->error))
        return MP_RPC_OK;
    resp->success = true;
    resp->message = mp_arena_printf(a, "rate limit %s removed", req->limit_id);
    return MP_RPC_OK;
}

/* ------------------------------------------------------------------ metrics, scaling */

static mp_rpc_code get_metrics(mp_pb_call *pc, const void *vreq, void *vresp)
{
    const Marchproxy__GetMetricsRequest *req = vreq;
    Marchproxy__GetMetricsResponse *resp = vresp;
    mp_arena *a = mp_pb_arena(pc);
    NEED_INSTANCE(inst, req->instance_id);
    /* Counters are cumulative since start or the last reset; start/end times cannot
     * select history that is not kept, so they are only checked for sense. */
    uint64_t start = mp_pb_timestamp_ns(req->start_time), end = mp_pb_timestamp_ns(req->end_time);
    if (start && end && end < start)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "end_time is before start_time");
    mp_instance_refresh_health(inst, false);
    resp->metrics = mp_view_module_metrics(a, inst, req->metric_names, req->n_metric_names);
    resp->collected_at = resp->metrics->collected_at;
    return MP_RPC_OK;
}


static mp_rpc_code scale(mp_pb_call *pc, const void *vreq, void *vresp)
{
    const Marchproxy__ScaleRequest *req = vreq;
    Marchproxy__ScaleResponse *resp = vresp;
    mp_host *h = host_of(pc);
    mp_arena *a = mp_pb_arena(pc);
    NEED_INSTANCE(inst, req->instance_id);
    if (!req->config)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "config is required");
    const Marchproxy__ScalingConfig *c = req->config;
    int32_t workers = mp_config_worker_count(h->cfg);
    int32_t current = inst->workers_desired > 0 ? inst->workers_desired : workers;
    if (c->min_instances < 0 || c->max_instances < 0 ||
        (c->max_instances && c->min_instances > c->max_instances)) {
        resp->success = false;
        resp->message = mp_arena_strdup(a, "need 0 <= min_instances <= max_instances");
        resp->error = wire_error(a, MARCHPROXY__STATUS_CODE__STATUS_CODE_INVALID_ARGUMENT,
                                 resp->message);
        return MP_RPC_OK;
    }
    /* For an in-process module an "instance" is a worker thread serving it. */
    int32_t lo = c->min_instances > 0 ? c->min_instances : 1;
    int32_t hi = c->max_instances > 0 ? c->max_instances : workers;
    if (hi > workers)
        hi = workers;
    if (lo > hi)
        lo = hi;
    int32_t desired = current < lo ? lo : current > hi ? hi : current;
    inst->scale_min = lo;
    inst->scale_max = hi;
    inst->workers_desired = desired;
    resp->success = true;
    resp->current_instances = current;
    resp->desired_instances = desired;
    resp->message = mp_arena_printf(a, "%s served by %d of %d worker(s) (bounds %d..%d)%s",
                                    inst->id, desired, workers, lo, hi,
                                    req->immediate ? "" : "; applies to new connections");
    return MP_RPC_OK;
}

static mp_rpc_code get_instances(mp_pb_call *pc, const void *vreq, void *vresp)
{
    const Marchproxy__GetInstancesRequest *req = vreq;
    Marchproxy__GetInstancesResponse *resp = vresp;
    mp_host *h = host_of(pc);
    mp_arena *a = mp_pb_arena(pc);
    for (struct mp_instance *inst = h->instances; inst; inst = inst->next) {
        mp_instance_refresh_health(inst, false);
        Marchproxy__ModuleInstance *m = mp_view_module_instance(a, inst);
        if (req->module_type && m->module_type != req->module_type)
            continue;
        if (req->status_filter && m->health_status != req->status_filter)
            continue;
        mp_pb_append(a, &resp->instances, &resp->n_instances, m);
    }
    /* Modules in other processes that registered over NLBService count too. */
    for (size_t i = 0; i < h->nlb.modules.n; i++) {
        Marchproxy__ModuleInstance *m = (Marchproxy__ModuleInstance *)h->nlb.modules.items[i]->msg;
        if (req->module_type && m->module_type != req->module_type)
            continue;
        if (req->status_filter && m->health_status != req->status_filter)
            continue;
        mp_pb_append(a, &resp->instances, &resp->n_instances, m);
    }
    resp->total_instances = (int32_t)resp->n_instances;
    return MP_RPC_OK;
}

/* ------------------------------------------------------------------ blue/green */

static void fill_weights_map(mp_arena *a, const struct mp_instance *inst, void *arr, size_t *n)
{
    for (const mp_generation *g = inst->gens; g; g = g->next)
        if (!atomic_load(&g->retired))
            mp_pb_map_add_int(a,
                              &marchproxy__get_active_version_response__version_weights_entry__descriptor,
                              arr, n, g->version, g->weight);
}

/* The live generation other than g, if any. */
static mp_generation *other_generation(const struct mp_instance *inst, const mp_generation *g)
{
    for (mp_generation *o = inst->gens; o; o = o->next)
        if (o != g && !atomic_load(&o->retired))
            return o;
    return NULL;
}

/* The generation with the larger weight answers RPCs; the stable one on a tie. */
static void activate_heavier(struct mp_instance *inst)
{
    mp_generation *stable = mp_instance_find_generation(inst, inst->stable_version);
    mp_generation *best = stable;
    for (mp_generation *g = inst->gens; g; g = g->next)
        if (!atomic_load(&g->retired) && (!best || g->weight > best->weight))
            best = g;
    if (best && best != inst->active)
        mp_instance_activate(inst, best);
}

static mp_rpc_code bad_version(mp_pb_call *pc, mp_arena *a, const struct mp_instance *inst,
                               const char *version, char **message, Marchproxy__Error **error)
{
    char *live = mp_arena_strdup(a, "");
    for (const mp_generation *g = inst->gens; g; g = g->next)
        if (!atomic_load(&g->retired))
            live = mp_arena_printf(a, "%s%s%s", live, *live ? ", " : "", g->version);
    *message = mp_arena_printf(a, "%s has no version '%.*s' (loaded: %s; kept for rollback: %s)",
                               inst->id, MP_VERSION_LEN, version, live,
                               inst->kept_version[0] ? inst->kept_version : "none");
    *error = wire_error(a, MARCHPROXY__STATUS_CODE__STATUS_CODE_NOT_FOUND, *message);
    return MP_RPC_OK;
}

static mp_rpc_code set_traffic_weight(mp_pb_call *pc, const void *vreq, void *vresp)
{
    const Marchproxy__SetTrafficWeightRequest *req = vreq;
    Marchproxy__SetTrafficWeightResponse *resp = vresp;
    mp_arena *a = mp_pb_arena(pc);
    NEED_INSTANCE(inst, req->instance_id);
    if (req->weight < 0 || req->weight > 100)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "weight must be 0..100, got %d",
                          req->weight);
    char err[512];
    mp_generation *g = mp_instance_revive(inst, req->version, err, sizeof(err));
    if (!g)
        return bad_version(pc, a, inst, req->version, &resp->message, &resp->error);
    mp_generation *o = other_generation(inst, g);
    if (!o && req->weight != 100) {
        /* the other side of the split: the stable version, or the one kept from before */
        const char *want = strcmp(g->version, inst->stable_version) != 0 ? inst->stable_version
                                                                          : inst->kept_version;
        if (*want)
            o = mp_instance_revive(inst, want, err, sizeof(err));
    }
    if (!o && req->weight != 100) {
        resp->success = false;
        resp->message = mp_arena_printf(a,
                                        "%s is the only loaded version of %s: nothing would "
                                        "take the other %d%%",
                                        g->version, inst->id, 100 - req->weight);
        resp->error = wire_error(a, MARCHPROXY__STATUS_CODE__STATUS_CODE_INVALID_ARGUMENT,
                                 resp->message);
        resp->current_config = mp_view_blue_green(a, inst);
        return MP_RPC_OK;
    }
    if (inst->promotion_timer) { /* a manual weight ends a stepwise promotion */
        mp_rpc_timer_cancel(inst->host->rpc, inst->promotion_timer);
        inst->promotion_timer = NULL;
        inst->promoting[0] = '\0';
    }
    g->weight = req->weight;
    if (o)
        o->weight = 100 - req->weight;
    inst->canary = req->weight != 0 && req->weight != 100;
    if (inst->canary && !inst->deployment_started_ns)
        inst->deployment_started_ns = mp_wall_ns();
    activate_heavier(inst);
    resp->success = true;
    resp->message = mp_arena_printf(a, "%s: %s gets %d%%%s%s%s", inst->id, g->version,
                                    req->weight, o ? ", " : "", o ? o->version : "",
                                    o ? mp_arena_printf(a, " gets %d%%", o->weight) : "");
    resp->current_config = mp_view_blue_green(a, inst);
    return MP_RPC_OK;
}

static mp_rpc_code get_active_version(mp_pb_call *pc, const void *vreq, void *vresp)
{
    const Marchproxy__GetActiveVersionRequest *req = vreq;
    Marchproxy__GetActiveVersionResponse *resp = vresp;
    mp_arena *a = mp_pb_arena(pc);
    NEED_INSTANCE(inst, req->instance_id);
    resp->active_version = mp_arena_strdup(a, mp_instance_version(inst));
    resp->config = mp_view_blue_green(a, inst);
    fill_weights_map(a, inst, &resp->version_weights, &resp->n_version_weights);
    return MP_RPC_OK;
}

/* Make g the stable version with all traffic; the previous stable one drains away and
 * its copy is kept for the next Rollback. */
static void promote_now(struct mp_instance *inst, mp_generation *g)
{
    mp_generation *old = mp_instance_find_generation(inst, inst->stable_version);
    if (old != g) {
        snprintf(inst->previous_version, sizeof(inst->previous_version), "%s",
                 inst->stable_version);
        snprintf(inst->stable_version, sizeof(inst->stable_version), "%s", g->version);
        mp_instance_keep_previous(inst, old);
    }
    mp_instance_activate(inst, g);
    mp_instance_settle(inst, g);
    inst->deployment_started_ns = 0;
    mp_logf(MP_LOG_INFO, inst->id, "version %s promoted to 100%%", g->version);
}

/* One step of a stepwise promotion, on the control thread. */
static void promotion_step(void *arg)
{
    struct mp_instance *inst = arg;
    inst->promotion_timer = NULL;
    mp_generation *g = mp_instance_find_generation(inst, inst->promoting);
    if (!g) {
        inst->promoting[0] = '\0';
        return;
    }
    mp_generation *o = other_generation(inst, g);
    g->weight = g->weight + inst->promotion_step >= 100 ? 100 : g->weight + inst->promotion_step;
    if (o)
        o->weight = 100 - g->weight;
    if (g->weight >= 100) {
        promote_now(inst, g);
        return;
    }
    activate_heavier(inst);
    inst->promotion_timer = mp_rpc_timer_add(inst->host->rpc, 1000, promotion_step, inst);
}

static mp_rpc_code promote_version(mp_pb_call *pc, const void *vreq, void *vresp)
{
    const Marchproxy__PromoteVersionRequest *req = vreq;
    Marchproxy__PromoteVersionResponse *resp = vresp;
    mp_arena *a = mp_pb_arena(pc);
    NEED_INSTANCE(inst, req->instance_id);
    if (req->promotion_rate < 0 || req->promotion_rate > 100)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "promotion_rate must be 0..100");
    char err[512];
    mp_generation *g = mp_instance_revive(inst, req->version, err, sizeof(err));
    if (!g)
        return bad_version(pc, a, inst, req->version, &resp->message, &resp->error);
    if (!other_generation(inst, g) && g->weight < 100)
        g->weight = 100; /* nothing else is serving: a stepwise climb has no other side */
    resp->promoted_version = mp_arena_strdup(a, g->version);
    resp->success = true;
    if (req->immediate || req->promotion_rate == 0 || g->weight >= 100) {
        promote_now(inst, g);
        resp->message = mp_arena_printf(a, "%s now takes 100%% of %s", g->version, inst->id);
        return MP_RPC_OK;
    }
    if (inst->promotion_timer)
        mp_rpc_timer_cancel(inst->host->rpc, inst->promotion_timer);
    snprintf(inst->promoting, sizeof(inst->promoting), "%s", g->version);
    inst->promotion_step = req->promotion_rate;
    inst->canary = true;
    if (!inst->deployment_started_ns)
        inst->deployment_started_ns = mp_wall_ns();
    inst->promotion_timer = mp_rpc_timer_add(inst->host->rpc, 1000, promotion_step, inst);
    resp->message = mp_arena_printf(a, "%s: %s rises by %d points per second from %d%%",
                                    inst->id, g->version, req->promotion_rate, g->weight);
    return MP_RPC_OK;
}

static mp_rpc_code rollback(mp_pb_call *pc, const void *vreq, void *vresp)
{
    const Marchproxy__RollbackRequest *req = vreq;
    Marchproxy__RollbackResponse *resp = vresp;
    mp_arena *a = mp_pb_arena(pc);
    NEED_INSTANCE(inst, req->instance_id);
    const char *before = mp_arena_strdup(a, mp_instance_version(inst));
    mp_generation *target;
    char err[512];
    bool in_canary = inst->canary || inst->promoting[0];
    if (req->target_version && *req->target_version)
        target = mp_instance_revive(inst, req->target_version, err, sizeof(err));
    else if (in_canary) /* abandon the canary: the stable version takes everything */
        target = mp_instance_find_generation(inst, inst->stable_version);
    else
        target = mp_instance_revive(inst, inst->previous_version, err, sizeof(err));
    if (!target) {
        const char *want = req->target_version && *req->target_version ? req->target_version
                           : in_canary                                 ? inst->stable_version
                                                                       : inst->previous_version;
        if (!*want) {
            resp->success = false;
            resp->message = mp_arena_printf(a, "%s has no previous version to roll back to",
                                            inst->id);
            resp->error = wire_error(a, MARCHPROXY__STATUS_CODE__STATUS_CODE_NOT_FOUND,
                                     resp->message);
            return MP_RPC_OK;
        }
        return bad_version(pc, a, inst, want, &resp->message, &resp->error);
    }
    if (in_canary && target == mp_instance_find_generation(inst, inst->stable_version)) {
        mp_instance_activate(inst, target);
        mp_instance_settle(inst, target); /* the canary drains away */
        inst->deployment_started_ns = 0;
    } else {
        promote_now(inst, target);
    }
    resp->success = true;
    resp->previous_version = mp_arena_strdup(a, before);
    resp->current_version = mp_arena_strdup(a, target->version);
    resp->message = mp_arena_printf(a, "%s rolled back from %s to %s", inst->id, before,
                                    target->version);
    mp_logf(MP_LOG_INFO, inst->id, "%s", resp->message);
    return MP_RPC_OK;
}

/* ------------------------------------------------------------------ health, stats */

static mp_rpc_code health_check(mp_pb_call *pc, const void *vreq, void *vresp)
{
    const Marchproxy__HealthCheckRequest *req = vreq;
    Marchproxy__HealthCheckResponse *resp = vresp;
    mp_arena *a = mp_pb_arena(pc);
    NEED_INSTANCE(inst, req->instance_id);
    mp_instance_refresh_health(inst, req->deep_check);
    resp->status = (Marchproxy__HealthStatus)inst->health;
    resp->message = mp_arena_strdup(a, inst->health_msg);
    resp->checked_at = mp_pb_timestamp(a, mp_wall_ns());
    const ProtobufCMessageDescriptor *d = &marchproxy__health_check_response__checks_entry__descriptor;
    mp_pb_map_add_str(a, d, &resp->checks, &resp->n_checks, "generation",
                      inst->active ? inst->active->version : "none");
    mp_pb_map_add_str(a, d, &resp->checks, &resp->n_checks, "plugin",
                      inst->active && inst->active->image->desc->health ? "reported"
                                                                        : "no health callback");
    mp_pb_map_add_str(a, d, &resp->checks, &resp->n_checks, "deep",
                      req->deep_check ? "yes" : "no");
    if (inst->last_error[0])
        mp_pb_map_add_str(a, d, &resp->checks, &resp->n_checks, "last_error", inst->last_error);
    return MP_RPC_OK;
}

static mp_rpc_code get_stats(mp_pb_call *pc, const void *vreq, void *vresp)
{
    const Marchproxy__GetStatsRequest *req = vreq;
    Marchproxy__GetStatsResponse *resp = vresp;
    mp_arena *a = mp_pb_arena(pc);
    NEED_INSTANCE(inst, req->instance_id);
    resp->stats = mp_pb_new(a, &marchproxy__module_stats__descriptor);
    mp_build_module_stats(a, inst, resp->stats);
    if (req->reset_counters)
        mp_instance_stats_reset(inst); /* after the snapshot: nothing is lost */
    return MP_RPC_OK;
}

/* StreamMetrics: one message now, then one per interval until the client goes. */
typedef struct metrics_stream {
    mp_pb_call *pc;
    mp_host *host;
    char id[MAX_ID_LEN + 1];
    char **names;
    size_t n_names;
    uint32_t interval_ms;
    mp_rpc_timer *timer;
} metrics_stream;

static void metrics_stream_end(metrics_stream *ms, mp_rpc_code code, const char *msg)
{
    if (ms->timer)
        mp_rpc_timer_cancel(ms->host->rpc, ms->timer);
    mp_pb_stream_finish(ms->pc, code, msg);
    free(ms);
}

static void metrics_stream_tick(void *arg)
{
    metrics_stream *ms = arg;
    ms->timer = NULL;
    struct mp_instance *inst = mp_host_find_instance(ms->host, ms->id);
    if (!inst) {
        metrics_stream_end(ms, MP_RPC_NOT_FOUND, "the instance was removed");
        return;
    }
    mp_arena *a = mp_arena_new();
    Marchproxy__StreamMetricsResponse m = MARCHPROXY__STREAM_METRICS_RESPONSE__INIT;
    m.metrics = mp_view_module_metrics(a, inst, ms->names, ms->n_names);
    m.timestamp = m.metrics->collected_at;
    int rc = mp_pb_stream_send(ms->pc, &m.base);
    mp_arena_free(a);
    if (rc < 0) {
        metrics_stream_end(ms, MP_RPC_CANCELLED, "client went away");
        return;
    }
    ms->timer = mp_rpc_timer_add(ms->host->rpc, ms->interval_ms, metrics_stream_tick, ms);
}

static void metrics_stream_cancelled(mp_pb_call *pc, void *arg)
{
    metrics_stream_end(arg, MP_RPC_CANCELLED, "cancelled");
}

static mp_rpc_code stream_metrics(mp_pb_call *pc, const void *vreq)
{
    const Marchproxy__StreamMetricsRequest *req = vreq;
    NEED_INSTANCE(inst, req->instance_id);
    if (req->interval_seconds < 0 || req->interval_seconds > MAX_STREAM_INTERVAL_S)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "interval_seconds must be 0..%d",
                          MAX_STREAM_INTERVAL_S);
    metrics_stream *ms = calloc(1, sizeof(*ms));
    if (!ms)
        return mp_pb_fail(pc, MP_RPC_RESOURCE_EXHAUSTED, "out of memory");
    ms->pc = pc;
    ms->host = host_of(pc);
    snprintf(ms->id, sizeof(ms->id), "%s", inst->id);
    ms->names = req->metric_names; /* the request lives as long as the stream */
    ms->n_names = req->n_metric_names;
    ms->interval_ms = (uint32_t)(req->interval_seconds > 0 ? req->interval_seconds : 1) * 1000u;
    mp_pb_stream_on_cancel(pc, metrics_stream_cancelled, ms);
    metrics_stream_tick(ms);
    return MP_RPC_OK;
}

/* ------------------------------------------------------------------ config */

static bool config_type_ok(const char *t) { return !t || !*t || strcmp(t, "libconfig") == 0; }

static mp_rpc_code get_config(mp_pb_call *pc, const void *vreq, void *vresp)
{
    const Marchproxy__GetConfigRequest *req = vreq;
    Marchproxy__GetConfigResponse *resp = vresp;
    mp_arena *a = mp_pb_arena(pc);
    NEED_INSTANCE(inst, req->instance_id);
    uint64_t updated = inst->config_updated_ns ? inst->config_updated_ns : inst->started_ns;
    resp->last_updated = mp_pb_timestamp(a, updated);
    if (!config_type_ok(req->config_type))
        return MP_RPC_OK; /* no config of that type: an empty list */
    Marchproxy__ConfigUpdate *c = mp_pb_new(a, &marchproxy__config_update__descriptor);
    const char *text = inst->settings_text ? inst->settings_text : "";
    c->config_id = mp_arena_strdup(a, inst->id);
    c->config_type = mp_arena_strdup(a, "libconfig");
    c->config_data.data = (uint8_t *)mp_arena_strdup(a, text);
    c->config_data.len = strlen(text);
    char sum[72];
    sha256_hex(text, strlen(text), sum);
    c->checksum = mp_arena_strdup(a, sum);
    c->updated_at = mp_pb_timestamp(a, updated);
    mp_pb_map_add_str(a, &marchproxy__config_update__metadata_entry__descriptor, &c->metadata,
                      &c->n_metadata, "plugin", inst->plugin);
    mp_pb_append(a, &resp->configs, &resp->n_configs, c);
    return MP_RPC_OK;
}

static void add_validation_error(mp_arena *a, Marchproxy__UpdateConfigResponse *resp,
                                 const char *msg)
{
    char **v = mp_arena_alloc(a, (resp->n_validation_errors + 1) * sizeof(char *));
    if (resp->n_validation_errors)
        memcpy(v, resp->validation_errors, resp->n_validation_errors * sizeof(char *));
    v[resp->n_validation_errors++] = mp_arena_strdup(a, msg);
    resp->validation_errors = v;
}

static mp_rpc_code update_config(mp_pb_call *pc, const void *vreq, void *vresp)
{
    const Marchproxy__UpdateConfigRequest *req = vreq;
    Marchproxy__UpdateConfigResponse *resp = vresp;
    mp_host *h = host_of(pc);
    mp_arena *a = mp_pb_arena(pc);
    NEED_INSTANCE(inst, req->instance_id);
    if (!req->config)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "config is required");
    const Marchproxy__ConfigUpdate *c = req->config;
    if (!config_type_ok(c->config_type))
        add_validation_error(a, resp, mp_arena_printf(a, "config_type '%.*s' unsupported "
                                                         "(use \"libconfig\")",
                                                      64, c->config_type));
    if (c->checksum && *c->checksum) {
        char sum[72];
        sha256_hex(c->config_data.data, c->config_data.len, sum);
        if (strcmp(sum, c->checksum) != 0)
            add_validation_error(a, resp, mp_arena_printf(a, "checksum mismatch: data is %s",
                                                          sum));
    }
    if (!inst->active)
        add_validation_error(a, resp, "the instance has no running generation");
    config_t lc;
    config_init(&lc);
    char err[1024];
    char *name = mp_arena_printf(a, "<UpdateConfig %s>", inst->id);
    if (!resp->n_validation_errors &&
        mp_config_text_parse((const char *)c->config_data.data, c->config_data.len, name, &lc,
                             err, sizeof(err)) < 0)
        add_validation_error(a, resp, err);
    if (!resp->n_validation_errors) {
        err[0] = '\0';
        if (inst->active->image->desc->validate_config(&h->api, mp_config_of(config_root_setting(&lc)),
                                                       err, sizeof(err)) < 0)
            add_validation_error(a, resp, err[0] ? err : "settings rejected by the plugin");
    }
    resp->validation_passed = resp->n_validation_errors == 0;
    if (!resp->validation_passed) {
        config_destroy(&lc);
        resp->success = false;
        resp->message = mp_arena_printf(a, "%zu validation error(s)", resp->n_validation_errors);
        resp->error = wire_error(a, MARCHPROXY__STATUS_CODE__STATUS_CODE_INVALID_ARGUMENT,
                                 resp->validation_errors[0]);
        return MP_RPC_OK;
    }
    if (req->validate_only) {
        config_destroy(&lc);
        resp->success = true;
        resp->message = mp_arena_strdup(a, "valid; nothing applied (validate_only)");
        return MP_RPC_OK;
    }
    char msg[4096];
    int rc = mp_host_apply_instance_settings(h, inst, config_root_setting(&lc), msg, sizeof(msg));
    config_destroy(&lc);
    resp->success = rc == 0;
    resp->message = mp_arena_strdup(a, msg);
    if (rc < 0)
        resp->error = wire_error(a, MARCHPROXY__STATUS_CODE__STATUS_CODE_ERROR, msg);
    return MP_RPC_OK;
}

static const mp_pb_handler handlers[] = {
    {"GetStatus", get_status, NULL},
    {"Reload", reload, NULL},
    {"Shutdown", shutdown_instance, NULL},
    {"CanHandle", can_handle, NULL},
    {"GetRoutes", get_routes, NULL},
    {"UpdateRoutes", update_routes, NULL},
    {"DeleteRoute", delete_route, NULL},
    {"GetRateLimits", get_rate_limits, NULL},
    {"SetRateLimit", set_rate_limit, NULL},
    {"RemoveRateLimit", remove_rate_limit, NULL},
    {"GetMetrics", get_metrics, NULL},
    {"Scale", scale, NULL},
    {"GetInstances", get_instances, NULL},
    {"SetTrafficWeight", set_traffic_weight, NULL},
    {"GetActiveVersion", get_active_version, NULL},
    {"Rollback", rollback, NULL},
    {"PromoteVersion", promote_version, NULL},
    {"HealthCheck", health_check, NULL},
    {"GetStats", get_stats, NULL},
    {"StreamMetrics", NULL, stream_metrics},
    {"GetConfig", get_config, NULL},
    {"UpdateConfig", update_config, NULL},
};

int mp_svc_module_bind(mp_host *h, char *err, size_t err_len)
{
    return mp_pb_bind_service(h->rpc, &marchproxy__module_service__descriptor, handlers,
                              sizeof(handlers) / sizeof(handlers[0]), h, err, err_len);
}
