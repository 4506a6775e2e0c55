/*
 * svc_nlb.c — marchproxy.NLBService over the host's real state: external modules
 * register, heartbeat and report here; the routing table (config, API and module
 * routes plus every in-process instance's own) is read and changed here; and the
 * host-level metrics, health, config and load views are answered from live counters.
 *
 * Conventions: a malformed or invalid request fails the call (INVALID_ARGUMENT), an
 * unknown id in a request aimed at one instance fails with NOT_FOUND and the known ids;
 * business outcomes (refusals, unknown ids in Unregister/Heartbeat) are reported in the
 * response's success/error fields. Every handler runs on the control thread, so stored
 * messages may be borrowed into a response: it is packed before anything can change.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "dp.h"
#include "host.h"
#include "instance_view.h"
#include "log.h"
#include "marchproxy/nlb.pb-c.h"
#include "pb_util.h"
#include "query.h"
#include "route_match.h"
#include "rpc_proto.h"
#include "state_persist.h"
#include "stats_build.h"

#ifndef MP_VERSION
#define MP_VERSION "unknown"
#endif

#define MODULE_ID_MAX 128
#define ADDRESS_MAX 261 /* 253-character host, brackets, ':' and a port */
#define DEFAULT_HB_INTERVAL_S 10
#define DEFAULT_HB_TIMEOUT_S 5
#define DEFAULT_UNHEALTHY 3
#define DEFAULT_HEALTHY 2
#define STREAM_MAX_INTERVAL_S 3600

typedef Marchproxy__StatusCode status_code;
#define SC(name) MARCHPROXY__STATUS_CODE__STATUS_CODE_##name
#define HS(name) MARCHPROXY__HEALTH_STATUS__HEALTH_STATUS_##name

/* ------------------------------------------------------------------ small helpers */

static mp_host *host_of(mp_pb_call *pc) { return mp_pb_ctx(pc); }

static Marchproxy__Error *make_error(mp_arena *a, status_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static Marchproxy__Error *make_error(mp_arena *a, status_code code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    Marchproxy__Error *e = mp_pb_new(a, &marchproxy__error__descriptor);
    e->code = code;
    e->message = mp_arena_strdup(a, msg);
    e->occurred_at = mp_pb_timestamp(a, mp_wall_ns());
    return e;
}

static void add_str(mp_arena *a, char ***arr, size_t *n, const char *s)
{
    mp_pb_append(a, arr, n, mp_arena_strdup(a, s));
}

static const char *nz(const char *s) { return s ? s : ""; }

static mp_ext_module *find_ext(const mp_host *h, const char *id)
{
    for (mp_ext_module *m = h->nlb.ext; m; m = m->next)
        if (strcmp(m->instance_id, id) == 0)
            return m;
    return NULL;
}

static const Marchproxy__ModuleInstance *ext_stored(const mp_host *h, const char *id)
{
    mp_msg_item *it = mp_msg_store_find(&h->nlb.modules, id);
    return it ? (const Marchproxy__ModuleInstance *)it->msg : NULL;
}

/* "alb, lauradb, ext-1": in-process ids, then external ones. */
static void known_ids(const mp_host *h, char *buf, size_t len)
{
    buf[0] = '\0';
    if (h->instances)
        mp_host_known_ids(h, buf, len);
    size_t off = strnlen(buf, len);
    for (const mp_ext_module *m = h->nlb.ext; m && off + 1 < len; m = m->next) {
        int w = snprintf(buf + off, len - off, "%s%s", off ? ", " : "", m->instance_id);
        off = w < 0 ? len : off + (size_t)w;
    }
    if (!buf[0])
        snprintf(buf, len, "none");
}

static mp_rpc_code not_found(mp_pb_call *pc, const char *id)
{
    char known[1024];
    known_ids(host_of(pc), known, sizeof(known));
    return mp_pb_fail(pc, MP_RPC_NOT_FOUND, "unknown instance '%s' (known: %s)", id, known);
}

static int32_t clamp_i32(int64_t v)
{
    return v < INT32_MIN ? INT32_MIN : v > INT32_MAX ? INT32_MAX : (int32_t)v;
}

static int64_t inst_active(const mp_instance *inst)
{
    int64_t v = atomic_load(&inst->stats.conns_active);
    return v < 0 ? 0 : v;
}

/* An external module's health as routing sees it: silence beats what it says. */
static Marchproxy__HealthStatus ext_health(const mp_ext_module *m,
                                          const Marchproxy__ModuleInstance *mi)
{
    if (!m || !m->in_rotation)
        return HS(UNHEALTHY);
    if (m->reported != MP_HEALTH_UNSPECIFIED)
        return (Marchproxy__HealthStatus)m->reported;
    return mi ? mi->health_status : HS(UNSPECIFIED);
}

static const Marchproxy__ModuleStats *ext_stats(const mp_host *h, const char *id)
{
    mp_msg_item *it = mp_msg_store_find(&h->nlb.module_stats, id);
    return it ? (const Marchproxy__ModuleStats *)it->msg : NULL;
}

static int64_t ext_active(const mp_host *h, const char *id)
{
    const Marchproxy__ModuleStats *s = ext_stats(h, id);
    if (s)
        return s->active_connections < 0 ? 0 : s->active_connections;
    const Marchproxy__ModuleInstance *mi = ext_stored(h, id);
    return mi && mi->current_connections > 0 ? mi->current_connections : 0;
}

/* The stored registration as a response sees it: a shallow copy (strings borrowed from
 * the store) with the live health and metadata kind=external. */
static Marchproxy__ModuleInstance *ext_view(mp_arena *a, const mp_host *h,
                                            const Marchproxy__ModuleInstance *src)
{
    const ProtobufCMessageDescriptor *md = &marchproxy__module_instance__metadata_entry__descriptor;
    Marchproxy__ModuleInstance *m = mp_arena_memdup(a, src, sizeof(*src));
    m->health_status = ext_health(find_ext(h, nz(src->instance_id)), src);
    m->metadata = NULL;
    m->n_metadata = 0;
    for (size_t i = 0; i < src->n_metadata; i++)
        if (src->metadata[i] && strcmp(nz(src->metadata[i]->key), "kind") != 0)
            mp_pb_append(a, &m->metadata, &m->n_metadata, src->metadata[i]);
    mp_pb_map_add_str(a, md, &m->metadata, &m->n_metadata, "kind", "external");
    return m;
}

/* Health is refreshed (shallow) first so listings show the plugin's current word. */
static Marchproxy__ModuleInstance *inproc_view(mp_arena *a, mp_instance *inst)
{
    mp_instance_refresh_health(inst, false);
    return mp_view_module_instance(a, inst);
}

static int inst_wire_type(const mp_instance *inst)
{
    return mp_wire_module_type(mp_instance_module_type(inst));
}

static bool id_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == ':' || c == '-';
}

static int check_module_id(const char *id, char *why, size_t why_len)
{
    size_t n = strlen(id);
    if (n == 0) {
        snprintf(why, why_len, "is required");
        return -EINVAL;
    }
    if (n > MODULE_ID_MAX) {
        snprintf(why, why_len, "is %zu characters long (at most %d)", n, MODULE_ID_MAX);
        return -EINVAL;
    }
    for (size_t i = 0; i < n; i++)
        if (!id_char(id[i])) {
            snprintf(why, why_len, "may only contain letters, digits and . _ : -");
            return -EINVAL;
        }
    return 0;
}

static bool host_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '-' || c == '_';
}

/* "host:port" or "[v6]:port"; names are not resolved (the module may live where this
 * host cannot resolve it yet). */
static int check_address(const char *s, char *why, size_t why_len)
{
    size_t n = strlen(s);
    const char *colon;
    if (n == 0) {
        snprintf(why, why_len, "is required (host:port) for an external module");
        return -EINVAL;
    }
    if (n > ADDRESS_MAX) {
        snprintf(why, why_len, "is %zu characters long (at most %d)", n, ADDRESS_MAX);
        return -EINVAL;
    }
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        char v6[64];
        size_t hn = close ? (size_t)(close - s - 1) : 0;
        if (!close || hn == 0 || hn >= sizeof(v6) || close[1] != ':') {
            snprintf(why, why_len, "'%s' is not [ipv6]:port", s);
            return -EINVAL;
        }
        memcpy(v6, s + 1, hn);
        v6[hn] = '\0';
        struct in6_addr a6;
        /* Brackets are for IPv6 only: "[10.0.0.1]:80" is not an address anyone dials. */
        if (inet_pton(AF_INET6, v6, &a6) != 1) {
            snprintf(why, why_len, "'%s': '%s' is not an IPv6 address", s, v6);
            return -EINVAL;
        }
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon || colon == s) {
            snprintf(why, why_len, "'%s' is not host:port", s);
            return -EINVAL;
        }
        for (const char *c = s; c < colon; c++)
            if (!host_name_char(*c)) {
                snprintf(why, why_len, "'%s': the host may only contain letters, digits . - _ "
                         "(write IPv6 as [addr]:port)", s);
                return -EINVAL;
            }
    }
    const char *p = colon + 1;
    unsigned long port = 0;
    size_t digits = 0;
    for (; *p; p++, digits++) {
        if (*p < '0' || *p > '9' || digits >= 5) {
            digits = 0;
            break;
        }
        port = port * 10 + (unsigned long)(*p - '0');
    }
    if (digits == 0 || port == 0 || port > 65535) {
        snprintf(why, why_len, "'%s': the port must be 1..65535", s);
        return -EINVAL;
    }
    return 0;
}

static int uuid_v4(char out[40])
{
    unsigned char b[16];
    if (RAND_bytes(b, sizeof(b)) != 1)
        return -EIO;
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(out, 40,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
    return 0;
}

static const char *enum_name(const ProtobufCEnumDescriptor *d, int value, const char *dflt)
{
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(d, value);
    return v ? v->name : dflt;
}

static size_t total_routes(const mp_host *h)
{
    size_t n = h->nlb.routes.n;
    for (const mp_instance *inst = h->instances; inst; inst = inst->next)
        n += inst->routes.n;
    return n;
}

/* Case-insensitive substring: hosts compare that way everywhere else. */
static bool contains_ci(const char *hay, const char *needle)
{
    size_t nn = strlen(needle);
    if (nn == 0)
        return true;
    for (; *hay; hay++)
        if (strncasecmp(hay, needle, nn) == 0)
            return true;
    return false;
}

/* ------------------------------------------------------------------ query plumbing */

static mp_rpc_code run_query(mp_pb_call *pc, const Marchproxy__Query *wq,
                             const void *const *recs, size_t n, mp_query_field_fn fn,
                             mp_query_result *res, Marchproxy__Pagination **pag)
{
    mp_arena *a = mp_pb_arena(pc);
    mp_query_spec spec = {0};
    if (wq) {
        if (wq->n_filters) {
            mp_query_filter *f = mp_arena_alloc(a, wq->n_filters * sizeof(*f));
            for (size_t i = 0; i < wq->n_filters; i++) {
                const Marchproxy__Filter *wf = wq->filters[i];
                f[i].field = wf ? nz(wf->field) : "";
                f[i].op = wf ? nz(wf->operator_) : "";
                f[i].value = wf ? nz(wf->value) : "";
            }
            spec.filters = f;
            spec.n_filters = wq->n_filters;
        }
        spec.sort_by = wq->sort_by;
        spec.sort_desc = wq->sort_desc;
        if (wq->pagination) {
            spec.page = wq->pagination->page;
            spec.page_size = wq->pagination->page_size;
        }
    }
    char err[256] = "";
    if (mp_query_apply(recs, n, fn, &spec, res, err, sizeof(err)) < 0)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "query: %s", err);
    Marchproxy__Pagination *p = mp_pb_new(a, &marchproxy__pagination__descriptor);
    p->page = res->page;
    p->page_size = res->page_size;
    p->total_items = clamp_i32((int64_t)res->total_items);
    p->total_pages = res->total_pages;
    *pag = p;
    return MP_RPC_OK;
}

static const char *md_get(Marchproxy__ModuleInstance__MetadataEntry *const *md, size_t n,
                          const char *key)
{
    return mp_pb_map_get_str((void *const *)md, n, key);
}

static int module_field(const void *rec, const char *field, char *buf, size_t len)
{
    const Marchproxy__ModuleInstance *m = rec;
    if (strcmp(field, "instance_id") == 0)
        snprintf(buf, len, "%s", nz(m->instance_id));
    else if (strcmp(field, "module_type") == 0)
        snprintf(buf, len, "%d", (int)m->module_type);
    else if (strcmp(field, "address") == 0)
        snprintf(buf, len, "%s", nz(m->address));
    else if (strcmp(field, "health_status") == 0)
        snprintf(buf, len, "%d", (int)m->health_status);
    else if (strcmp(field, "version") == 0)
        snprintf(buf, len, "%s", nz(m->version));
    else if (strcmp(field, "current_connections") == 0)
        snprintf(buf, len, "%d", (int)m->current_connections);
    else if (strcmp(field, "max_connections") == 0)
        snprintf(buf, len, "%d", (int)m->max_connections);
    else if (strcmp(field, "traffic_weight") == 0)
        snprintf(buf, len, "%d", (int)m->traffic_weight);
    else if (strcmp(field, "kind") == 0)
        snprintf(buf, len, "%s", nz(md_get(m->metadata, m->n_metadata, "kind")));
    else
        return -ENOENT;
    return 0;
}

static int routing_field(const void *rec, const char *field, char *buf, size_t len)
{
    const Marchproxy__RoutingEntry *e = rec;
    if (strcmp(field, "target_instance_id") == 0) {
        snprintf(buf, len, "%s", nz(e->target_instance_id));
        return 0;
    }
    return mp_route_field(e->route, field, buf, len);
}

/* ------------------------------------------------------------------ RegisterModule */

struct problem_list {
    mp_arena *a;
    char **v;
    size_t n;
};

static void collect_problem(void *ctx, const char *problem)
{
    struct problem_list *l = ctx;
    add_str(l->a, &l->v, &l->n, problem);
}

static char *join(mp_arena *a, char *const *v, size_t n, const char *sep)
{
    size_t len = 1;
    for (size_t i = 0; i < n; i++)
        len += strlen(v[i]) + strlen(sep);
    char *out = mp_arena_alloc(a, len);
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(v[i]);
        if (i) {
            memcpy(out + off, sep, strlen(sep));
            off += strlen(sep);
        }
        memcpy(out + off, v[i], l);
        off += l;
    }
    out[off] = '\0';
    return out;
}

static const char *origin_word(mp_origin o)
{
    return o == MP_ORIGIN_CONFIG ? "config" : o == MP_ORIGIN_API ? "API" : "module";
}

static int32_t positive_or(int32_t v, int32_t dflt) { return v > 0 ? v : dflt; }

/* Drop what a module registered: its registration, its own routes, its stats. */
static size_t forget_module(mp_host *h, const char *id)
{
    size_t routes = mp_msg_store_remove_where(&h->nlb.routes, MP_ORIGIN_MODULE, id);
    mp_msg_store_remove(&h->nlb.modules, id);
    mp_msg_store_remove(&h->nlb.module_stats, id);
    mp_msg_store_remove(&h->nlb.reported, id);
    for (mp_ext_module **pp = &h->nlb.ext; *pp; pp = &(*pp)->next)
        if (strcmp((*pp)->instance_id, id) == 0) {
            mp_ext_module *m = *pp;
            *pp = m->next;
            mp_ext_module_free(m);
            break;
        }
    return routes;
}

/* The heartbeat bookkeeping of a registered module, appended so listings keep
 * registration order; `now` counts as its first sign of life. */
static int ext_add(mp_host *h, const char *id, const char *reg_id,
                   const Marchproxy__HealthCheckConfig *hc, uint64_t now, mp_ext_module **out)
{
    mp_ext_module *m = calloc(1, sizeof(*m));
    if (!m || !(m->instance_id = strdup(id))) {
        free(m);
        return -ENOMEM;
    }
    snprintf(m->registration_id, sizeof(m->registration_id), "%s", reg_id);
    m->registered_ns = now;
    m->last_heartbeat_ns = now;
    m->interval_s = positive_or(hc ? hc->interval_seconds : 0, DEFAULT_HB_INTERVAL_S);
    m->timeout_s = positive_or(hc ? hc->timeout_seconds : 0, DEFAULT_HB_TIMEOUT_S);
    m->unhealthy_threshold = positive_or(hc ? hc->unhealthy_threshold : 0, DEFAULT_UNHEALTHY);
    m->healthy_threshold = positive_or(hc ? hc->healthy_threshold : 0, DEFAULT_HEALTHY);
    m->reported = MP_HEALTH_HEALTHY;
    m->in_rotation = true;
    mp_ext_module **tail = &h->nlb.ext;
    while (*tail)
        tail = &(*tail)->next;
    *tail = m;
    *out = m;
    return 0;
}

int mp_nlb_restore_module(mp_host *h, const Marchproxy__ModuleInstance *mi,
                          const char *registration_id, const Marchproxy__HealthCheckConfig *hc)
{
    const char *id = nz(mi->instance_id);
    if (!*id || !registration_id || find_ext(h, id) || mp_host_find_instance(h, id))
        return -EEXIST;
    int rc = mp_msg_store_put(&h->nlb.modules, &mi->base, NULL, MP_ORIGIN_MODULE);
    mp_ext_module *m;
    if (rc == 0 && (rc = ext_add(h, id, registration_id, hc, mp_wall_ns(), &m)) < 0)
        mp_msg_store_remove(&h->nlb.modules, id);
    return rc;
}

static mp_rpc_code h_register_module(mp_pb_call *pc, const void *vreq, void *vresp)
{
    mp_host *h = host_of(pc);
    mp_arena *a = mp_pb_arena(pc);
    const Marchproxy__RegisterModuleRequest *req = vreq;
    Marchproxy__RegisterModuleResponse *resp = vresp;
    const Marchproxy__ModuleInstance *mi = req->instance;
    char why[512];
    if (!mi)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "instance is required");
    const char *id = nz(mi->instance_id);
    if (check_module_id(id, why, sizeof(why)) < 0)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "instance.instance_id %s", why);
    if (check_address(nz(mi->address), why, sizeof(why)) < 0)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "instance.address %s", why);
    if ((int)mi->module_type < 1 || (int)mi->module_type > 5)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT,
                          "instance.module_type must be 1..5 (MODULE_TYPE_ALB..MODULE_TYPE_NLB), "
                          "got %d",
                          (int)mi->module_type);
    if (mp_host_find_instance(h, id)) {
        resp->success = false;
        resp->message = mp_arena_printf(a, "'%s' is an in-process instance of this host", id);
        resp->error = make_error(a, SC(ALREADY_EXISTS), "%s", resp->message);
        return MP_RPC_OK;
    }

    /* Every initial route must be valid and its id free (or already this module's). */
    struct problem_list bad = {a, NULL, 0};
    for (size_t i = 0; i < req->n_initial_routes; i++) {
        const Marchproxy__Route *r = req->initial_routes[i];
        if (mp_route_validate_all(r, collect_problem, &bad) > 0)
            continue;
        for (size_t j = 0; j < i; j++)
            if (strcmp(nz(req->initial_routes[j]->route_id), r->route_id) == 0) {
                add_str(a, &bad.v, &bad.n,
                        mp_arena_printf(a, "route '%s': listed twice", r->route_id));
                break;
            }
        mp_msg_item *it = mp_msg_store_find(&h->nlb.routes, r->route_id);
        if (it && (it->origin != MP_ORIGIN_MODULE || !it->owner || strcmp(it->owner, id) != 0))
            add_str(a, &bad.v, &bad.n,
                    mp_arena_printf(a, "route '%s': the id is taken by a %s route of '%s'",
                                    r->route_id, origin_word(it->origin), nz(it->owner)));
    }
    if (bad.n)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "invalid initial_routes: %s",
                          join(a, bad.v, bad.n, "; "));

    mp_ext_module *old = find_ext(h, id);
    if (!old && h->nlb.modules.n >= h->nlb.modules.max_items) {
        resp->message = mp_arena_printf(a, "cannot register '%s': %zu modules are registered "
                                        "(the maximum)", id, h->nlb.modules.n);
        resp->error = make_error(a, SC(RESOURCE_EXHAUSTED), "%s", resp->message);
        return MP_RPC_OK;
    }
    size_t own_old = 0;
    for (size_t i = 0; i < h->nlb.routes.n; i++) {
        const mp_msg_item *it = h->nlb.routes.items[i];
        if (it->origin == MP_ORIGIN_MODULE && it->owner && strcmp(it->owner, id) == 0)
            own_old++;
    }
    /* Re-registration drops every route the module owned before adding the new set. */
    size_t after = h->nlb.routes.n - own_old + req->n_initial_routes;
    if (after > h->nlb.routes.max_items) {
        resp->message = mp_arena_printf(a, "cannot register '%s': the routing table would "
                                        "hold %zu routes (at most %zu)",
                                        id, after, h->nlb.routes.max_items);
        resp->error = make_error(a, SC(RESOURCE_EXHAUSTED), "%s", resp->message);
        return MP_RPC_OK;
    }
    char reg_id[40];
    if (uuid_v4(reg_id) < 0)
        return mp_pb_fail(pc, MP_RPC_INTERNAL, "cannot generate a registration id");

    uint64_t now = mp_wall_ns();
    Marchproxy__ModuleInstance stored = *mi;
    stored.health_status = HS(HEALTHY);
    if (!stored.started_at)
        stored.started_at = mp_pb_timestamp(a, now);
    if (old)
        forget_module(h, id);
    int rc = mp_msg_store_put(&h->nlb.modules, &stored.base, NULL, MP_ORIGIN_MODULE);
    for (size_t i = 0; rc == 0 && i < req->n_initial_routes; i++)
        rc = mp_msg_store_put(&h->nlb.routes, &req->initial_routes[i]->base, id,
                              MP_ORIGIN_MODULE);
    mp_ext_module *m = NULL;
    if (rc == 0)
        rc = ext_add(h, id, reg_id, req->health_config, now, &m);
    if (rc < 0) {
        forget_module(h, id);
        resp->message = mp_arena_printf(a, "cannot register '%s': %s", id, strerror(-rc));
        resp->error = make_error(a, rc == -ENOSPC ? SC(RESOURCE_EXHAUSTED) : SC(ERROR), "%s",
                                 resp->message);
        return MP_RPC_OK;
    }

    mp_info("NLB: module %s (%s at %s) %sregistered with %zu route(s)", id,
            enum_name(&marchproxy__module_type__descriptor, (int)mi->module_type, "?"),
            mi->address, old ? "re-" : "", req->n_initial_routes);
    resp->success = true;
    resp->message = mp_arena_printf(a, "%s '%s' with %zu route(s); heartbeat every %d s",
                                    old ? "re-registered" : "registered", id,
                                    req->n_initial_routes, m->interval_s);
    resp->registration_id = mp_arena_strdup(a, reg_id);
    resp->registered_at = mp_pb_timestamp(a, now);
    return MP_RPC_OK;
}

/* ------------------------------------------------------------------ UnregisterModule */

static mp_rpc_code h_unregister_module(mp_pb_call *pc, const void *vreq, void *vresp)
{
    mp_host *h = host_of(pc);
    mp_arena *a = mp_pb_arena(pc);
    const Marchproxy__UnregisterModuleRequest *req = vreq;
    Marchproxy__UnregisterModuleResponse *resp = vresp;
    const char *id = nz(req->instance_id);
    if (!*id)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "instance_id is required");
    mp_ext_module *m = find_ext(h, id);
    if (!m) {
        if (mp_host_find_instance(h, id)) {
            resp->message = mp_arena_printf(a, "'%s' is an in-process instance; remove it from "
                                            "the config instead", id);
            resp->error = make_error(a, SC(INVALID_ARGUMENT), "%s", resp->message);
        } else {
            resp->message = mp_arena_printf(a, "no module '%s' is registered", id);
            resp->error = make_error(a, SC(NOT_FOUND), "%s", resp->message);
        }
        return MP_RPC_OK;
    }
    if (req->registration_id && *req->registration_id &&
        strcmp(req->registration_id, m->registration_id) != 0) {
        resp->message = mp_arena_printf(a, "registration_id does not match the current "
                                        "registration of '%s'", id);
        resp->error = make_error(a, SC(PERMISSION_DENIED), "%s", resp->message);
        return MP_RPC_OK;
    }
    size_t routes = forget_module(h, id);
    mp_info("NLB: module %s unregistered (%zu route(s) removed)", id, routes);
    resp->success = true;
    resp->message = mp_arena_printf(a, "unregistered '%s'; removed %zu route(s)", id, routes);
    /* Nothing to drain yet: the L4 data plane does not exist, so no connection of ours
     * goes to an external module. graceful/drain_timeout_seconds take effect with it. */
    resp->active_connections_drained = 0;
    return MP_RPC_OK;
}

/* ------------------------------------------------------------------ Heartbeat */

static mp_rpc_code h_heartbeat(mp_pb_call *pc, const void *vreq, void *vresp)
{
    mp_host *h = host_of(pc);
    mp_arena *a = mp_pb_arena(pc);
    const Marchproxy__HeartbeatRequest *req = vreq;
    Marchproxy__HeartbeatResponse *resp = vresp;
    const char *id = nz(req->instance_id);
    uint64_t now = mp_wall_ns();
    resp->server_time = mp_pb_timestamp(a, now);
    resp->should_reload = false;
    mp_ext_module *m = find_ext(h, id);
    if (!m) {
        resp->message = mp_host_find_instance(h, id)
                            ? mp_arena_printf(a, "'%s' is an in-process instance; it sends no "
                                              "heartbeats", id)
                            : mp_arena_printf(a, "no module '%s' is registered; register first",
                                              id);
        return MP_RPC_OK;
    }
    if (strcmp(nz(req->registration_id), m->registration_id) != 0) {
        resp->message = mp_arena_printf(a, "registration_id does not match the current "
                                        "registration of '%s'; register again", id);
        return MP_RPC_OK;
    }
    const char *note = "ok";
    if (!m->in_rotation) {
        /* Recovery needs consecutive beats: one arriving after a silence longer than an
         * interval plus the timeout starts the count again. */
        uint64_t gap = now > m->last_heartbeat_ns ? now - m->last_heartbeat_ns : 0;
        uint64_t allowed = ((uint64_t)m->interval_s + (uint64_t)m->timeout_s) * 1000000000u;
        m->good = gap > allowed ? 1 : m->good + 1;
        if (m->good >= m->healthy_threshold) {
            m->in_rotation = true;
            m->good = 0;
            note = "back in rotation";
            mp_info("NLB: module %s is back in rotation", id);
        } else {
            note = mp_arena_printf(a, "out of rotation: %d of %d heartbeats needed", m->good,
                                   m->healthy_threshold);
        }
    }
    m->last_heartbeat_ns = now;
    m->missed = 0;
    if (req->status != HS(UNSPECIFIED))
        m->reported = (mp_health)req->status;
    if (req->current_stats) {
        Marchproxy__ModuleStats st = *req->current_stats;
        st.instance_id = (char *)id;
        mp_msg_store_put(&h->nlb.module_stats, &st.base, id, MP_ORIGIN_MODULE);
        mp_msg_item *it = mp_msg_store_find(&h->nlb.modules, id);
        if (it)
            ((Marchproxy__ModuleInstance *)it->msg)->current_connections =
                clamp_i32(st.active_connections);
    }
    resp->acknowledged = true;
    resp->message = mp_arena_strdup(a, note);
    if (m->scale_pending) {
        const ProtobufCMessageDescriptor *d =
            &marchproxy__heartbeat_response__instructions_entry__descriptor;
        resp->should_scale = true;
        mp_pb_map_add_str(a, d, &resp->instructions, &resp->n_instructions, "scaling_action",
                          m->scale_action);
        if (m->scale_target > 0)
            mp_pb_map_add_str(a, d, &resp->instructions, &resp->n_instructions,
                              "target_instances", mp_arena_printf(a, "%d", m->scale_target));
        m->scale_pending = false;
    }
    return MP_RPC_OK;
}

/* ------------------------------------------------------------------ ListModules */

/* Every module as a ModuleInstance: in-process instances first (config order), then
 * external ones (registration order). */
static Marchproxy__ModuleInstance **all_modules(mp_arena *a, mp_host *h, size_t *n)
{
    Marchproxy__ModuleInstance **v = NULL;
    *n = 0;
    for (mp_instance *inst = h->instances; inst; inst = inst->next)
        mp_pb_append(a, &v, n, inproc_view(a, inst));
    for (const mp_ext_module *m = h->nlb.ext; m; m = m->next) {
        const Marchproxy__ModuleInstance *mi = ext_stored(h, m->instance_id);
        if (mi)
            mp_pb_append(a, &v, n, ext_view(a, h, mi));
    }
    return v;
}

static mp_rpc_code h_list_modules(mp_pb_call *pc, const void *vreq, void *vresp)
{
    mp_host *h = host_of(pc);
    mp_arena *a = mp_pb_arena(pc);
    const Marchproxy__ListModulesRequest *req = vreq;
    Marchproxy__ListModulesResponse *resp = vresp;
    size_t n_all;
    Marchproxy__ModuleInstance **all = all_modules(a, h, &n_all);
    const void **keep = mp_arena_alloc(a, (n_all ? n_all : 1) * sizeof(*keep));
    size_t n = 0;
    for (size_t i = 0; i < n_all; i++) {
        if (req->module_type_filter && all[i]->module_type != req->module_type_filter)
            continue;
        if (req->status_filter && all[i]->health_status != req->status_filter)
            continue;
        keep[n++] = all[i];
    }
    mp_query_result res;
    mp_rpc_code code = run_query(pc, req->query, keep, n, module_field, &res, &resp->pagination);
    if (code != MP_RPC_OK)
        return code;
    mp_pb_repeated_reserve(a, &resp->modules, &resp->n_modules, res.n_items);
    for (size_t i = 0; i < res.n_items; i++)
        resp->modules[resp->n_modules++] = (Marchproxy__ModuleInstance *)res.items[i];
    resp->total_modules = clamp_i32((int64_t)res.total_items);
    mp_query_result_free(&res);
    return MP_RPC_OK;
}

/* ------------------------------------------------------------------ GetModuleInfo */

static void details_add(mp_arena *a, Marchproxy__GetModuleInfoResponse *r, const char *k,
                        const char *v)
{
    mp_pb_map_add_str(a, &marchproxy__get_module_info_response__details_entry__descriptor,
                      &r->details, &r->n_details, k, v);
}

static mp_rpc_code h_get_module_info(mp_pb_call *pc, const void *vreq, void *vresp)
{
    mp_host *h = host_of(pc);
    mp_arena *a = mp_pb_arena(pc);
    const Marchproxy__GetModuleInfoRequest *req = vreq;
    Marchproxy__GetModuleInfoResponse *resp = vresp;
    const char *id = nz(req->instance_id);
    if (!*id)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "instance_id is required");
    mp_instance *inst = mp_host_find_instance(h, id);
    if (inst) {
        resp->instance = inproc_view(a, inst);
        mp_pb_repeated_reserve(a, &resp->routes, &resp->n_routes, inst->routes.n);
        for (size_t i = 0; i < inst->routes.n; i++)
            resp->routes[resp->n_routes++] = (Marchproxy__Route *)inst->routes.items[i]->msg;
        resp->stats = mp_arena_alloc(a, sizeof(*resp->stats));
        mp_build_module_stats(a, inst, resp->stats);
        resp->deployment_config = mp_view_blue_green(a, inst);
        size_t gens = 0;
        for (const mp_generation *g = inst->gens; g; g = g->next)
            gens++;
        details_add(a, resp, "kind", "in-process");
        details_add(a, resp, "plugin", nz(inst->plugin));
        details_add(a, resp, "health_message", inst->health_msg);
        details_add(a, resp, "generations", mp_arena_printf(a, "%zu", gens));
        details_add(a, resp, "routes", mp_arena_printf(a, "%zu", inst->routes.n));
        details_add(a, resp, "rate_limits", mp_arena_printf(a, "%zu", inst->rate_limits.n));
        details_add(a, resp, "workers_desired",
                    inst->workers_desired ? mp_arena_printf(a, "%d", inst->workers_desired)
                                          : "all");
        details_add(a, resp, "autoloaded", inst->autoloaded ? "true" : "false");
        if (inst->last_error[0])
            details_add(a, resp, "last_error", inst->last_error);
        return MP_RPC_OK;
    }
    mp_ext_module *m = find_ext(h, id);
    const Marchproxy__ModuleInstance *mi = ext_stored(h, id);
    if (!m || !mi)
        return not_found(pc, id);
    resp->instance = ext_view(a, h, mi);
    for (size_t i = 0; i < h->nlb.routes.n; i++) {
        const mp_msg_item *it = h->nlb.routes.items[i];
        if (it->owner && strcmp(it->owner, id) == 0)
            mp_pb_append(a, &resp->routes, &resp->n_routes, it->msg);
    }
    const Marchproxy__ModuleStats *st = ext_stats(h, id);
    if (st) {
        resp->stats = (Marchproxy__ModuleStats *)st;
    } else {
        resp->stats = mp_pb_new(a, &marchproxy__module_stats__descriptor);
        resp->stats->instance_id = mp_arena_strdup(a, id);
    }
    uint64_t now = mp_wall_ns();
    uint64_t age = now > m->last_heartbeat_ns ? now - m->last_heartbeat_ns : 0;
    details_add(a, resp, "kind", "external");
    details_add(a, resp, "in_rotation", m->in_rotation ? "true" : "false");
    details_add(a, resp, "missed_heartbeats", mp_arena_printf(a, "%d", m->missed));
    details_add(a, resp, "last_heartbeat_age_ms",
                mp_arena_printf(a, "%llu", (unsigned long long)(age / 1000000u)));
    details_add(a, resp, "heartbeat_interval_s", mp_arena_printf(a, "%d", m->interval_s));
    details_add(a, resp, "reported_status",
                enum_name(&marchproxy__health_status__descriptor, (int)m->reported, "?"));
    return MP_RPC_OK;
}

/* ------------------------------------------------------------------ UpdateRouting */

static bool target_known(mp_host *h, const char *id)
{
    return mp_host_find_instance(h, id) || find_ext(h, id);
}

static mp_rpc_code h_update_routing(mp_pb_call *pc, const void *vreq, void *vresp)
{
    mp_host *h = host_of(pc);
    mp_arena *a = mp_pb_arena(pc);
    const Marchproxy__UpdateRoutingRequest *req = vreq;
    Marchproxy__UpdateRoutingResponse *resp = vresp;
    const char *source = nz(req->source_instance_id);
    struct problem_list bad = {a, NULL, 0};
    const char **targets = mp_arena_alloc(a, (req->n_routes ? req->n_routes : 1) * sizeof(char *));
    size_t fresh = 0;

    for (size_t i = 0; i < req->n_routes; i++) {
        const Marchproxy__Route *r = req->routes[i];
        if (mp_route_validate_all(r, collect_problem, &bad) > 0)
            continue;
        const char *t = mp_pb_map_get_str((void *const *)r->metadata, r->n_metadata, "target");
        if (!t || !*t)
            t = source;
        targets[i] = t;
        if (!*t) {
            add_str(a, &bad.v, &bad.n,
                    mp_arena_printf(a, "route '%s': no target (set metadata[\"target\"] or "
                                    "source_instance_id)", r->route_id));
            continue;
        }
        if (!target_known(h, t))
            add_str(a, &bad.v, &bad.n,
                    mp_arena_printf(a, "route '%s': target '%s' is neither a loaded instance "
                                    "nor a registered module", r->route_id, t));
        for (size_t j = 0; j < i; j++)
            if (strcmp(nz(req->routes[j]->route_id), r->route_id) == 0) {
                add_str(a, &bad.v, &bad.n,
                        mp_arena_printf(a, "route '%s': listed twice", r->route_id));
                break;
            }
        /* API routes may replace API routes, and a module may take over its own routes;
         * config routes belong to the file and other modules' routes to them. */
        mp_msg_item *it = mp_msg_store_find(&h->nlb.routes, r->route_id);
        if (!it) {
            fresh++;
        } else if (it->origin == MP_ORIGIN_CONFIG) {
            add_str(a, &bad.v, &bad.n,
                    mp_arena_printf(a, "route '%s': defined in the config file; change it "
                                    "there", r->route_id));
        } else if (it->origin == MP_ORIGIN_MODULE &&
                   !(it->owner && *source && strcmp(it->owner, source) == 0)) {
            add_str(a, &bad.v, &bad.n,
                    mp_arena_printf(a, "route '%s': registered by module '%s'", r->route_id,
                                    nz(it->owner)));
        } else if (it->origin == MP_ORIGIN_MODULE && strcmp(t, source) != 0) {
            /* A module route's owner is also its target: aimed elsewhere it would outlive
             * the module's unregistration and belong to the new target instead. */
            add_str(a, &bad.v, &bad.n,
                    mp_arena_printf(a, "route '%s': a route registered by module '%s' can "
                                    "only target that module, not '%s'", r->route_id, source,
                                    t));
        }
    }
    if (bad.n) {
        resp->success = false;
        resp->validation_errors = bad.v;
        resp->n_validation_errors = bad.n;
        resp->message = mp_arena_printf(a, "%zu problem(s); nothing was changed", bad.n);
        resp->error = make_error(a, SC(INVALID_ARGUMENT), "%s", join(a, bad.v, bad.n, "; "));
        return MP_RPC_OK;
    }
    if (req->validate_only) {
        resp->success = true;
        resp->message = mp_arena_printf(a, "%zu route(s) valid (validate_only: nothing changed)",
                                        req->n_routes);
        return MP_RPC_OK;
    }
    /* Room check before any change: replace_all frees the API routes not re-sent. */
    size_t api = 0, api_resent = 0;
    for (size_t i = 0; i < h->nlb.routes.n; i++)
        if (h->nlb.routes.items[i]->origin == MP_ORIGIN_API)
            api++;
    if (req->replace_all)
        for (size_t i = 0; i < req->n_routes; i++) {
            mp_msg_item *it = mp_msg_store_find(&h->nlb.routes, req->routes[i]->route_id);
            if (it && it->origin == MP_ORIGIN_API)
                api_resent++;
        }
    size_t after = h->nlb.routes.n + fresh - (req->replace_all ? api - api_resent : 0);
    if (after > h->nlb.routes.max_items) {
        resp->message = mp_arena_printf(a, "the routing table would hold %zu routes (at most "
                                        "%zu); nothing was changed", after,
                                        h->nlb.routes.max_items);
        resp->error = make_error(a, SC(RESOURCE_EXHAUSTED), "%s", resp->message);
        return MP_RPC_OK;
    }
    size_t removed = req->replace_all ? mp_msg_store_remove_where(&h->nlb.routes, MP_ORIGIN_API,
                                                                  NULL)
                                      : 0;
    int32_t updated = 0;
    for (size_t i = 0; i < req->n_routes; i++) {
        const Marchproxy__Route *r = req->routes[i];
        mp_msg_item *it = mp_msg_store_find(&h->nlb.routes, r->route_id);
        mp_origin origin = it && it->origin == MP_ORIGIN_MODULE ? MP_ORIGIN_MODULE : MP_ORIGIN_API;
        int rc = mp_msg_store_put(&h->nlb.routes, &r->base, targets[i], origin);
        if (rc < 0) {
            resp->routes_updated = updated;
            resp->message = mp_arena_printf(a, "stored %d of %zu route(s), then failed on '%s'",
                                            updated, req->n_routes, r->route_id);
            resp->error = make_error(a, rc == -ENOSPC ? SC(RESOURCE_EXHAUSTED) : SC(ERROR),
                                     "%s: %s", resp->message, strerror(-rc));
            return MP_RPC_OK;
        }
        updated++;
    }
    resp->success = true;
    resp->routes_updated = updated;
    if (req->replace_all)
        resp->message = mp_arena_printf(a, "replaced %zu API route(s) with %d", removed, updated);
    else
        resp->message = mp_arena_printf(a, "updated %d route(s)", updated);
    return MP_RPC_OK;
}

/* ------------------------------------------------------------------ GetRoutingTable */

static Marchproxy__RoutingEntry *routing_entry(mp_arena *a, mp_host *h, const mp_msg_item *it,
                                               const char *target)
{
    Marchproxy__RoutingEntry *e = mp_pb_new(a, &marchproxy__routing_entry__descriptor);
    e->route = (Marchproxy__Route *)it->msg;
    e->target_instance_id = mp_arena_strdup(a, target);
    mp_instance *inst = mp_host_find_instance(h, target);
    if (inst) {
        e->target_module_type = (Marchproxy__ModuleType)inst_wire_type(inst);
        e->current_connections = clamp_i32(inst_active(inst));
    } else {
        const Marchproxy__ModuleInstance *mi = ext_stored(h, target);
        e->target_module_type =
            mi ? mi->module_type : MARCHPROXY__MODULE_TYPE__MODULE_TYPE_UNSPECIFIED;
        /* Connections to external modules are theirs; we hold none until the data
         * plane proxies to them. */
        e->current_connections = 0;
    }
    e->created_at = mp_pb_timestamp(a, it->created_ns);
    if (it->used_ns)
        e->last_used = mp_pb_timestamp(a, it->used_ns);
    return e;
}

static bool entry_wanted(const Marchproxy__GetRoutingTableRequest *req,
                         const Marchproxy__Route *r)
{
    if (req->protocol_filter && r->protocol != req->protocol_filter)
        return false;
    if (req->destination_filter && *req->destination_filter &&
        !contains_ci(nz(r->destination_pattern), req->destination_filter))
        return false;
    return true;
}

static mp_rpc_code h_get_routing_table(mp_pb_call *pc, const void *vreq, void *vresp)
{
    mp_host *h = host_of(pc);
    mp_arena *a = mp_pb_arena(pc);
    const Marchproxy__GetRoutingTableRequest *req = vreq;
    Marchproxy__GetRoutingTableResponse *resp = vresp;
    const void **recs = NULL;
    size_t n = 0;
    for (size_t i = 0; i < h->nlb.routes.n; i++) {
        const mp_msg_item *it = h->nlb.routes.items[i];
        if (entry_wanted(req, (const Marchproxy__Route *)it->msg))
            mp_pb_append(a, &recs, &n, routing_entry(a, h, it, nz(it->owner)));
    }
    for (mp_instance *inst = h->instances; inst; inst = inst->next)
        for (size_t i = 0; i < inst->routes.n; i++) {
            const mp_msg_item *it = inst->routes.items[i];
            if (entry_wanted(req, (const Marchproxy__Route *)it->msg))
                mp_pb_append(a, &recs, &n, routing_entry(a, h, it, inst->id));
        }
    mp_query_result res;
    mp_rpc_code code = run_query(pc, req->query, recs, n, routing_field, &res, &resp->pagination);
    if (code != MP_RPC_OK)
        return code;
    mp_pb_repeated_reserve(a, &resp->entries, &resp->n_entries, res.n_items);
    for (size_t i = 0; i < res.n_items; i++)
        resp->entries[resp->n_entries++] = (Marchproxy__RoutingEntry *)res.items[i];
    resp->total_entries = clamp_i32((int64_t)res.total_items);
    mp_query_result_free(&res);
    return MP_RPC_OK;
}

/* ------------------------------------------------------------------ RouteRequest */

/* A RouteRequest's route describes a request, not a routing entry: only what would make
 * the description meaningless is refused. */
static mp_rpc_code request_from(mp_pb_call *pc, const Marchproxy__Route *r, mp_route_request *q,
                                const char **names, const char **values)
{
    if (!r)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "route is required");
    if ((int)r->protocol < 0 || (int)r->protocol > MP_ROUTE_PROTOCOL_MAX)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "route.protocol %d is not a Protocol",
                          (int)r->protocol);
    if (r->destination_port < 0 || r->destination_port > 65535)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT,
                          "route.destination_port %d is out of range (0..65535)",
                          (int)r->destination_port);
    if (mp_route_request_from_wire(r, q, names, values, MP_ROUTE_MAX_HEADERS) < 0)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "route has %zu headers (at most %d)",
                          r->n_headers, MP_ROUTE_MAX_HEADERS);
    if (q->source_ip && !mp_route_ip_valid(q->source_ip))
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT,
                          "route.source_pattern must be the client's IP address, got '%s'",
                          q->source_ip);
    return MP_RPC_OK;
}

static mp_rpc_code h_route_request(mp_pb_call *pc, const void *vreq, void *vresp)
{
    mp_host *h = host_of(pc);
    mp_arena *a = mp_pb_arena(pc);
    const Marchproxy__RouteRequestRequest *req = vreq;
    Marchproxy__RouteRequestResponse *resp = vresp;
    const char *names[MP_ROUTE_MAX_HEADERS], *values[MP_ROUTE_MAX_HEADERS];
    mp_route_request q;
    mp_rpc_code code = request_from(pc, req->route, &q, names, values);
    if (code != MP_RPC_OK)
        return code;
    mp_route_decision d;
    char why[1024];
    /* The data path's own decision, on the snapshot the workers route by. */
    int rc = dp_route_request(h, req->route, !req->dry_run, &d, why, sizeof(why));
    if (rc == -ENOMEM)
        return mp_pb_fail(pc, MP_RPC_RESOURCE_EXHAUSTED, "out of memory");
    if (rc < 0) {
        resp->routed = false;
        resp->message = mp_arena_strdup(a, why);
        resp->error = make_error(a, rc == -ENOENT ? SC(NOT_FOUND) : SC(UNAVAILABLE), "%s", why);
        return MP_RPC_OK;
    }
    resp->routed = true;
    resp->target_instance_id = mp_arena_strdup(a, d.target_id);
    resp->target_module_type = (Marchproxy__ModuleType)d.module_type;
    resp->target_address = mp_arena_strdup(a, d.target_address);
    resp->priority = d.priority;
    resp->message = mp_arena_printf(a, "%s to %s by route %s (priority %d)",
                                    req->dry_run ? "would route" : "routed", d.target_id,
                                    d.route_id, (int)d.priority);
    return MP_RPC_OK;
}

/* ------------------------------------------------------------------ ValidateRoute */

static bool str_in(char *const *v, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i], s) == 0)
            return true;
    return false;
}

static mp_rpc_code h_validate_route(mp_pb_call *pc, const void *vreq, void *vresp)
{
    mp_host *h = host_of(pc);
    mp_arena *a = mp_pb_arena(pc);
    const Marchproxy__ValidateRouteRequest *req = vreq;
    Marchproxy__ValidateRouteResponse *resp = vresp;
    const ProtobufCMessageDescriptor *dd =
        &marchproxy__validate_route_response__details_entry__descriptor;
    struct problem_list bad = {a, NULL, 0};
    mp_route_validate_all(req->route, collect_problem, &bad);
    resp->valid = bad.n == 0;
    resp->validation_errors = bad.v;
    resp->n_validation_errors = bad.n;

    const char *names[MP_ROUTE_MAX_HEADERS], *values[MP_ROUTE_MAX_HEADERS];
    mp_route_request q;
    if (!req->route ||
        mp_route_request_from_wire(req->route, &q, names, values, MP_ROUTE_MAX_HEADERS) < 0) {
        mp_pb_map_add_str(a, dd, &resp->details, &resp->n_details, "matching_routes", "");
        return MP_RPC_OK;
    }
    /* Which table entries would take it, and so which targets stand behind them. */
    char **matching = NULL, **nlb_targets = NULL;
    size_t n_matching = 0, n_nlb_targets = 0;
    for (size_t i = 0; i < h->nlb.routes.n; i++) {
        const mp_msg_item *it = h->nlb.routes.items[i];
        if (!mp_route_entry_matches((const Marchproxy__Route *)it->msg, &q))
            continue;
        add_str(a, &matching, &n_matching, it->key);
        if (it->owner && !str_in(nlb_targets, n_nlb_targets, it->owner))
            add_str(a, &nlb_targets, &n_nlb_targets, it->owner);
    }
    for (mp_instance *inst = h->instances; inst; inst = inst->next)
        for (size_t i = 0; i < inst->routes.n; i++) {
            const mp_msg_item *it = inst->routes.items[i];
            if (mp_route_entry_matches((const Marchproxy__Route *)it->msg, &q))
                add_str(a, &matching, &n_matching, it->key);
        }
    /* In-process: the plugin's verdict when it has one; without one, its own routes or
     * an NLB entry aimed at it. External: an NLB entry aimed at it. */
    for (mp_instance *inst = h->instances; inst; inst = inst->next) {
        mp_can_handle_result v;
        mp_instance_verdict(inst, req->route, &v);
        bool plugin_decides = inst->active && inst->active->image &&
                              inst->active->image->desc && inst->active->image->desc->can_handle;
        bool capable = v.can_handle ||
                       (!plugin_decides && inst->active &&
                        str_in(nlb_targets, n_nlb_targets, inst->id));
        if (capable)
            add_str(a, &resp->capable_instances, &resp->n_capable_instances, inst->id);
        mp_pb_map_add_str(a, dd, &resp->details, &resp->n_details,
                          mp_arena_printf(a, "verdict.%s", inst->id),
                          capable && !v.can_handle ? "targeted by a matching route" : v.reason);
    }
    for (const mp_ext_module *m = h->nlb.ext; m; m = m->next)
        if (str_in(nlb_targets, n_nlb_targets, m->instance_id))
            add_str(a, &resp->capable_instances, &resp->n_capable_instances, m->instance_id);
    resp->has_handler = resp->n_capable_instances > 0;
    mp_pb_map_add_str(a, dd, &resp->details, &resp->n_details, "matching_routes",
                      join(a, matching, n_matching, ","));
    return MP_RPC_OK;
}

/* ------------------------------------------------------------------ ReportMetrics */

static mp_rpc_code h_report_metrics(mp_pb_call *pc, const void *vreq, void *vresp)
{
    mp_host *h = host_of(pc);
    mp_arena *a = mp_pb_arena(pc);
    const Marchproxy__ReportMetricsRequest *req = vreq;
    Marchproxy__ReportMetricsResponse *resp = vresp;
    const char *id = nz(req->instance_id);
    uint64_t now = mp_wall_ns();
    resp->processed_at = mp_pb_timestamp(a, now);
    if (!*id || !target_known(h, id)) {
        resp->message = mp_arena_printf(a, "unknown instance '%s': neither loaded nor "
                                        "registered", id);
        return MP_RPC_OK;
    }
    Marchproxy__ModuleMetrics mm;
    if (req->metrics)
        mm = *req->metrics;
    else
        marchproxy__module_metrics__init(&mm);
    mm.instance_id = (char *)id;
    if (!mm.collected_at)
        mm.collected_at = req->reported_at ? req->reported_at : resp->processed_at;
    int rc = mp_msg_store_put(&h->nlb.reported, &mm.base, id, MP_ORIGIN_MODULE);
    if (rc < 0) {
        resp->message = mp_arena_printf(a, "cannot store the metrics: %s", strerror(-rc));
        return MP_RPC_OK;
    }
    resp->acknowledged = true;
    resp->message = mp_arena_printf(a, "stored %zu data point(s)", mm.n_metrics);
    return MP_RPC_OK;
}

/* ------------------------------------------------------------------ host metrics */

static bool name_wanted(char *const *names, size_t n, const char *name)
{
    if (n == 0)
        return true;
    for (size_t i = 0; i < n; i++)
        if (names[i] && strcmp(names[i], name) == 0)
            return true;
    return false;
}

static void host_points(mp_arena *a, mp_host *h, char *const *names, size_t n_names,
                        Marchproxy__MetricDataPoint ***arr, size_t *n)
{
    uint64_t now = mp_wall_ns();
    mp_rpc_server_stats rs = {0};
    if (h->rpc)
        mp_rpc_server_get_stats(h->rpc, &rs);
    uint64_t rss = 0;
    mp_proc_rss_bytes(&rss);
    double cpu = mp_proc_cpu_percent(&h->proc);
    const struct {
        const char *name;
        double value;
    } points[] = {
        {"nlb_routed_total", (double)atomic_load(&h->nlb.routed)},
        {"nlb_refused_total", (double)atomic_load(&h->nlb.refused)},
        {"nlb_active_connections", (double)atomic_load(&h->nlb.active_connections)},
        {"grpc_calls_total", (double)rs.calls_started},
        {"grpc_calls_failed_total", (double)rs.calls_failed},
        {"grpc_calls_active", (double)rs.calls_active},
        {"process_cpu_percent", cpu < 0 ? 0.0 : cpu},
        {"process_rss_mb", (double)rss / (1024.0 * 1024.0)},
        {"modules_registered", (double)h->nlb.modules.n},
        {"instances_loaded", (double)mp_host_instance_count(h)},
        {"routes_total", (double)total_routes(h)},
    };
    *arr = NULL;
    *n = 0;
    for (size_t i = 0; i < sizeof(points) / sizeof(points[0]); i++) {
        if (!name_wanted(names, n_names, points[i].name))
            continue;
        Marchproxy__MetricDataPoint *p = mp_pb_new(a, &marchproxy__metric_data_point__descriptor);
        p->name = (char *)points[i].name;
        p->value = points[i].value;
        p->timestamp = mp_pb_timestamp(a, now);
        mp_pb_append(a, arr, n, p);
    }
}

/* An external module's last ReportMetrics, narrowed to `names`; an empty ModuleMetrics
 * when it has reported nothing yet. */
static Marchproxy__ModuleMetrics *ext_metrics(mp_arena *a, mp_host *h, const char *id,
                                              char *const *names, size_t n_names)
{
    mp_msg_item *it = mp_msg_store_find(&h->nlb.reported, id);
    Marchproxy__ModuleMetrics *m;
    if (it) {
        const Marchproxy__ModuleMetrics *src = (const Marchproxy__ModuleMetrics *)it->msg;
        m = mp_arena_memdup(a, src, sizeof(*src));
        if (n_names) {
            m->metrics = NULL;
            m->n_metrics = 0;
            for (size_t i = 0; i < src->n_metrics; i++)
                if (src->metrics[i] && name_wanted(names, n_names, nz(src->metrics[i]->name)))
                    mp_pb_append(a, &m->metrics, &m->n_metrics, src->metrics[i]);
        }
    } else {
        m = mp_pb_new(a, &marchproxy__module_metrics__descriptor);
        m->instance_id = mp_arena_strdup(a, id);
    }
    const Marchproxy__ModuleInstance *mi = ext_stored(h, id);
    if (mi && !m->module_type)
        m->module_type = mi->module_type;
    return m;
}

/* An in-process instance's live metrics plus what was reported for it over ReportMetrics
 * (accepted for in-process ids too); a reported point never hides a live one of the
 * same name. */
static Marchproxy__ModuleMetrics *inproc_metrics(mp_arena *a, mp_host *h, mp_instance *inst,
                                                 char *const *names, size_t n_names)
{
    Marchproxy__ModuleMetrics *m = mp_view_module_metrics(a, inst, names, n_names);
    mp_msg_item *it = mp_msg_store_find(&h->nlb.reported, inst->id);
    if (!it)
        return m;
    const Marchproxy__ModuleMetrics *src = (const Marchproxy__ModuleMetrics *)it->msg;
    size_t live = m->n_metrics;
    for (size_t i = 0; i < src->n_metrics; i++) {
        const Marchproxy__MetricDataPoint *p = src->metrics[i];
        if (!p || !name_wanted(names, n_names, nz(p->name)))
            continue;
        bool shadowed = false;
        for (size_t j = 0; j < live && !shadowed; j++)
            shadowed = strcmp(nz(m->metrics[j]->name), nz(p->name)) == 0;
        if (!shadowed)
            mp_pb_append(a, &m->metrics, &m->n_metrics, (void *)p);
    }
    return m;
}

static void module_metrics_map(mp_arena *a, mp_host *h, char *const *names, size_t n_names,
                               const ProtobufCMessageDescriptor *entry_desc, void *arr,
                               size_t *n)
{
    for (mp_instance *inst = h->instances; inst; inst = inst->next) {
        Marchproxy__ModuleMetrics *m = inproc_metrics(a, h, inst, names, n_names);
        mp_pb_map_add_msg(a, entry_desc, arr, n, inst->id, &m->base);
    }
    for (const mp_ext_module *e = h->nlb.ext; e; e = e->next) {
        Marchproxy__ModuleMetrics *m = ext_metrics(a, h, e->instance_id, names, n_names);
        mp_pb_map_add_msg(a, entry_desc, arr, n, e->instance_id, &m->base);
    }
}

static mp_rpc_code h_get_nlb_metrics(mp_pb_call *pc, const void *vreq, void *vresp)
{
    mp_host *h = host_of(pc);
    mp_arena *a = mp_pb_arena(pc);
    const Marchproxy__GetNLBMetricsRequest *req = vreq;
    Marchproxy__GetNLBMetricsResponse *resp = vresp;
    /* start_time/end_time/aggregate: only current values exist; no history is kept. */
    host_points(a, h, req->metric_names, req->n_metric_names, &resp->metrics, &resp->n_metrics);
    module_metrics_map(a, h, req->metric_names, req->n_metric_names,
                       &marchproxy__get_nlbmetrics_response__module_metrics_entry__descriptor,
                       &resp->module_metrics, &resp->n_module_metrics);
    resp->collected_at = mp_pb_timestamp(a, mp_wall_ns());
    return MP_RPC_OK;
}

static mp_rpc_code h_get_module_metrics(mp_pb_call *pc, const void *vreq, void *vresp)
{
    mp_host *h = host_of(pc);
    mp_arena *a = mp_pb_arena(pc);
    const Marchproxy__GetModuleMetricsRequest *req = vreq;
    Marchproxy__GetModuleMetricsResponse *resp = vresp;
    const char *id = nz(req->instance_id);
    if (!*id)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "instance_id is required");
    mp_instance *inst = mp_host_find_instance(h, id);
    if (inst) {
        resp->metrics = inproc_metrics(a, h, inst, req->metric_names, req->n_metric_names);
    } else if (find_ext(h, id)) {
        resp->metrics = ext_metrics(a, h, id, req->metric_names, req->n_metric_names);
    } else {
        return not_found(pc, id);
    }
    resp->collected_at = mp_pb_timestamp(a, mp_wall_ns());
    return MP_RPC_OK;
}

/* ------------------------------------------------------------------ StreamNLBMetrics */

/* One open stream. Owned by the stream: freed by whichever of the timer (send failed,
 * server stopping) or the cancel callback ends it. */
struct nlb_stream {
    mp_host *h;
    mp_pb_call *pc;
    const Marchproxy__StreamNLBMetricsRequest *req; /* held by pc until it finishes */
    mp_rpc_timer *timer;
    uint64_t interval_ms;
};

/* Each message gets its own arena: the call's arena would grow for as long as the
 * stream stays open. */
static int stream_send_one(mp_host *h, mp_pb_call *pc,
                           const Marchproxy__StreamNLBMetricsRequest *req)
{
    mp_arena *a = mp_arena_new();
    if (!a)
        return -ENOMEM;
    Marchproxy__StreamNLBMetricsResponse *m =
        mp_pb_new(a, &marchproxy__stream_nlbmetrics_response__descriptor);
    host_points(a, h, req->metric_names, req->n_metric_names, &m->metrics, &m->n_metrics);
    if (req->include_modules)
        module_metrics_map(
            a, h, req->metric_names, req->n_metric_names,
            &marchproxy__stream_nlbmetrics_response__module_metrics_entry__descriptor,
            &m->module_metrics, &m->n_module_metrics);
    m->timestamp = mp_pb_timestamp(a, mp_wall_ns());
    int rc = mp_pb_stream_send(pc, &m->base);
    mp_arena_free(a);
    return rc;
}

static void stream_end(struct nlb_stream *s, mp_rpc_code code, const char *msg)
{
    if (s->timer)
        mp_rpc_timer_cancel(s->h->rpc, s->timer);
    mp_pb_stream_finish(s->pc, code, msg);
    free(s);
}

static void stream_tick(void *arg)
{
    struct nlb_stream *s = arg;
    s->timer = NULL;
    if (mp_rpc_server_stopping(s->h->rpc)) {
        stream_end(s, MP_RPC_UNAVAILABLE, "server is stopping");
        return;
    }
    int rc = stream_send_one(s->h, s->pc, s->req);
    if (rc < 0) {
        stream_end(s, rc == -ECANCELED ? MP_RPC_CANCELLED : MP_RPC_INTERNAL,
                   rc == -ECANCELED ? "cancelled" : "cannot send metrics");
        return;
    }
    s->timer = mp_rpc_timer_add(s->h->rpc, s->interval_ms, stream_tick, s);
    if (!s->timer)
        stream_end(s, MP_RPC_RESOURCE_EXHAUSTED, "out of memory");
}

static void stream_cancelled(mp_pb_call *pc, void *arg)
{
    stream_end(arg, MP_RPC_CANCELLED, "cancelled");
}

static mp_rpc_code h_stream_nlb_metrics(mp_pb_call *pc, const void *vreq)
{
    mp_host *h = host_of(pc);
    const Marchproxy__StreamNLBMetricsRequest *req = vreq;
    int32_t interval = req->interval_seconds <= 0 ? 1 : req->interval_seconds;
    if (req->interval_seconds > STREAM_MAX_INTERVAL_S)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT,
                          "interval_seconds %d is over the maximum (%d)",
                          (int)req->interval_seconds, STREAM_MAX_INTERVAL_S);
    int rc = stream_send_one(h, pc, req);
    if (rc < 0)
        return mp_pb_fail(pc, rc == -ECANCELED ? MP_RPC_CANCELLED : MP_RPC_INTERNAL,
                          "cannot send metrics");
    struct nlb_stream *s = calloc(1, sizeof(*s));
    if (!s)
        return mp_pb_fail(pc, MP_RPC_RESOURCE_EXHAUSTED, "out of memory");
    s->h = h;
    s->pc = pc;
    s->req = req;
    s->interval_ms = (uint64_t)interval * 1000u;
    s->timer = mp_rpc_timer_add(h->rpc, s->interval_ms, stream_tick, s);
    if (!s->timer) {
        free(s);
        return mp_pb_fail(pc, MP_RPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    *mp_pb_user(pc) = s;
    mp_pb_stream_on_cancel(pc, stream_cancelled, s);
    return MP_RPC_OK;
}

/* ------------------------------------------------------------------ health and status */

struct host_health {
    Marchproxy__HealthStatus status;
    size_t instances, unhealthy, ext_in, ext_out;
    char unhealthy_ids[512];
};

/* Refreshes every instance (deep when asked) and summarises. */
static void host_health(mp_host *h, bool deep, struct host_health *out)
{
    memset(out, 0, sizeof(*out));
    size_t off = 0;
    for (mp_instance *inst = h->instances; inst; inst = inst->next) {
        mp_instance_refresh_health(inst, deep);
        out->instances++;
        if (inst->health == MP_HEALTH_UNHEALTHY) {
            out->unhealthy++;
            if (off + 1 < sizeof(out->unhealthy_ids)) {
                int w = snprintf(out->unhealthy_ids + off, sizeof(out->unhealthy_ids) - off,
                                 "%s%s", off ? ", " : "", inst->id);
                off = w < 0 ? sizeof(out->unhealthy_ids) : off + (size_t)w;
            }
        }
    }
    for (const mp_ext_module *m = h->nlb.ext; m; m = m->next) {
        if (m->in_rotation)
            out->ext_in++;
        else
            out->ext_out++;
    }
    if (h->rpc && mp_rpc_server_stopping(h->rpc))
        out->status = HS(STOPPING);
    else if (out->unhealthy)
        out->status = HS(DEGRADED);
    else
        out->status = HS(HEALTHY);
}

static mp_rpc_code h_check_health(mp_pb_call *pc, const void *vreq, void *vresp)
{
    mp_host *h = host_of(pc);
    mp_arena *a = mp_pb_arena(pc);
    const Marchproxy__CheckHealthRequest *req = vreq;
    Marchproxy__CheckHealthResponse *resp = vresp;
    const ProtobufCMessageDescriptor *cd =
        &marchproxy__check_health_response__checks_entry__descriptor;
    struct host_health hh;
    host_health(h, req->deep_check, &hh);
    resp->status = hh.status;
    if (hh.status == HS(STOPPING))
        resp->message = mp_arena_strdup(a, "the server is stopping");
    else if (hh.unhealthy)
        resp->message = mp_arena_printf(a, "unhealthy instance(s): %s", hh.unhealthy_ids);
    else
        resp->message = mp_arena_strdup(a, "healthy");
    if (req->check_modules) {
        const ProtobufCMessageDescriptor *md =
            &marchproxy__check_health_response__module_health_entry__descriptor;
        for (mp_instance *inst = h->instances; inst; inst = inst->next)
            mp_pb_map_add_int(a, md, &resp->module_health, &resp->n_module_health, inst->id,
                              inst->health);
        for (const mp_ext_module *m = h->nlb.ext; m; m = m->next)
            mp_pb_map_add_int(a, md, &resp->module_health, &resp->n_module_health,
                              m->instance_id, ext_health(m, ext_stored(h, m->instance_id)));
    }
    mp_pb_map_add_str(a, cd, &resp->checks, &resp->n_checks, "grpc",
                      hh.status == HS(STOPPING) ? "stopping" : "ok");
    mp_pb_map_add_str(a, cd, &resp->checks, &resp->n_checks, "instances",
                      hh.unhealthy ? mp_arena_printf(a, "%zu loaded, %zu unhealthy", hh.instances,
                                                     hh.unhealthy)
                                   : mp_arena_printf(a, "%zu loaded", hh.instances));
    mp_pb_map_add_str(a, cd, &resp->checks, &resp->n_checks, "external_modules",
                      hh.ext_out ? mp_arena_printf(a, "%zu in rotation, %zu out of rotation",
                                                   hh.ext_in, hh.ext_out)
                                 : mp_arena_printf(a, "%zu in rotation", hh.ext_in));
    resp->checked_at = mp_pb_timestamp(a, mp_wall_ns());
    return MP_RPC_OK;
}

static mp_rpc_code h_get_nlb_status(mp_pb_call *pc, const void *vreq, void *vresp)
{
    mp_host *h = host_of(pc);
    mp_arena *a = mp_pb_arena(pc);
    const Marchproxy__GetNLBStatusRequest *req = vreq;
    Marchproxy__GetNLBStatusResponse *resp = vresp;
    const ProtobufCMessageDescriptor *td =
        &marchproxy__get_nlbstatus_response__modules_by_type_entry__descriptor;
    const ProtobufCMessageDescriptor *dd =
        &marchproxy__get_nlbstatus_response__details_entry__descriptor;
    struct host_health hh;
    host_health(h, false, &hh);
    resp->status = hh.status;
    resp->version = (char *)MP_VERSION;
    if (h->started_ns)
        resp->started_at = mp_pb_timestamp(a, h->started_ns);
    resp->total_requests = (int64_t)atomic_load(&h->nlb.routed);
    /* Connections held by everything behind the NLB: in-process instances count their
     * own, external modules report theirs in heartbeats. */
    int64_t active = 0;
    int32_t by_type[6] = {0};
    size_t n_mods;
    Marchproxy__ModuleInstance **mods = all_modules(a, h, &n_mods);
    for (mp_instance *inst = h->instances; inst; inst = inst->next)
        active += inst_active(inst);
    for (const mp_ext_module *m = h->nlb.ext; m; m = m->next)
        active += ext_active(h, m->instance_id);
    for (size_t i = 0; i < n_mods; i++) {
        int t = (int)mods[i]->module_type;
        by_type[t >= 0 && t <= 5 ? t : 0]++;
    }
    resp->active_connections = active;
    resp->registered_modules = clamp_i32((int64_t)n_mods);
    for (int t = 0; t <= 5; t++)
        if (by_type[t])
            mp_pb_map_add_int(a, td, &resp->modules_by_type, &resp->n_modules_by_type,
                              enum_name(&marchproxy__module_type__descriptor, t, "?"),
                              by_type[t]);
    if (req->include_modules) {
        resp->modules = mods;
        resp->n_modules = n_mods;
    }
    mp_pb_map_add_str(a, dd, &resp->details, &resp->n_details, "config", nz(h->config_path));
    mp_pb_map_add_str(a, dd, &resp->details, &resp->n_details, "reloads",
                      mp_arena_printf(a, "%llu", (unsigned long long)h->reloads));
    mp_pb_map_add_str(a, dd, &resp->details, &resp->n_details, "reload_failures",
                      mp_arena_printf(a, "%llu", (unsigned long long)h->reload_failures));
    mp_pb_map_add_str(a, dd, &resp->details, &resp->n_details, "strategy", h->nlb.strategy);
    return MP_RPC_OK;
}

/* ------------------------------------------------------------------ config */

static int sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    if (EVP_Digest(data, len, md, &md_len, EVP_sha256(), NULL) != 1 || md_len != 32)
        return -EIO;
    for (unsigned i = 0; i < md_len; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return 0;
}

static bool config_type_ok(const char *t) { return !t || !*t || strcmp(t, "libconfig") == 0; }

static mp_rpc_code h_get_nlb_config(mp_pb_call *pc, const void *vreq, void *vresp)
{
    mp_host *h = host_of(pc);
    mp_arena *a = mp_pb_arena(pc);
    const Marchproxy__GetNLBConfigRequest *req = vreq;
    Marchproxy__GetNLBConfigResponse *resp = vresp;
    if (h->config_loaded_ns)
        resp->last_updated = mp_pb_timestamp(a, h->config_loaded_ns);
    if (!config_type_ok(req->config_type))
        return MP_RPC_OK;
    char hex[65];
    const char *text = h->config_text ? h->config_text : "";
    size_t len = h->config_text ? h->config_text_len : 0;
    if (sha256_hex(text, len, hex) < 0)
        return mp_pb_fail(pc, MP_RPC_INTERNAL, "cannot compute the config checksum");
    Marchproxy__ConfigUpdate *c = mp_pb_new(a, &marchproxy__config_update__descriptor);
    c->config_id = (char *)"host";
    c->config_type = (char *)"libconfig";
    c->config_data.data = (uint8_t *)text;
    c->config_data.len = len;
    c->checksum = mp_arena_printf(a, "sha256:%s", hex);
    if (h->config_loaded_ns)
        c->updated_at = mp_pb_timestamp(a, h->config_loaded_ns);
    mp_pb_map_add_str(a, &marchproxy__config_update__metadata_entry__descriptor, &c->metadata,
                      &c->n_metadata, "path", nz(h->config_path));
    mp_pb_append(a, &resp->configs, &resp->n_configs, c);
    return MP_RPC_OK;
}

static bool str_differs(const char *x, const char *y) { return strcmp(nz(x), nz(y)) != 0; }

/* What a running server cannot take without a restart: the listening socket and its
 * TLS/limits are fixed when the server is created, workers when they are spawned. */
static void restart_reasons(const mp_host_config *old, const mp_host_config *cur, char *buf,
                            size_t len)
{
    size_t off = 0;
    buf[0] = '\0';
#define RESTART_IF(cond, name)                                                  \
    do {                                                                        \
        if ((cond) && off + 1 < len) {                                          \
            int w_ = snprintf(buf + off, len - off, "%s%s", off ? ", " : "", name); \
            off = w_ < 0 ? len : off + (size_t)w_;                              \
        }                                                                       \
    } while (0)
    RESTART_IF(str_differs(old->grpc.address, cur->grpc.address), "grpc.address");
    RESTART_IF(str_differs(old->grpc.tls_cert, cur->grpc.tls_cert), "grpc.tls.cert");
    RESTART_IF(str_differs(old->grpc.tls_key, cur->grpc.tls_key), "grpc.tls.key");
    RESTART_IF(str_differs(old->grpc.tls_client_ca, cur->grpc.tls_client_ca),
               "grpc.tls.client_ca");
    RESTART_IF(old->grpc.require_client_cert != cur->grpc.require_client_cert,
               "grpc.tls.require_client_cert");
    RESTART_IF(old->grpc.max_message_bytes != cur->grpc.max_message_bytes,
               "grpc.max_message_bytes");
    RESTART_IF(old->grpc.max_concurrent_streams != cur->grpc.max_concurrent_streams,
               "grpc.max_concurrent_streams");
    RESTART_IF(old->workers != cur->workers, "host.workers");
    RESTART_IF(mp_config_listeners_differ(old, cur), "listeners");
#undef RESTART_IF
}

static char *config_dir(mp_arena *a, const mp_host *h)
{
    if (h->cfg && h->cfg->dir)
        return mp_arena_strdup(a, h->cfg->dir);
    const char *p = nz(h->config_path);
    const char *slash = strrchr(p, '/');
    if (!slash)
        return mp_arena_strdup(a, ".");
    if (slash == p)
        return mp_arena_strdup(a, "/");
    return mp_arena_strndup(a, p, (size_t)(slash - p));
}

static void update_failed(mp_arena *a, Marchproxy__UpdateNLBConfigResponse *resp,
                          const char *problem)
{
    resp->success = false;
    resp->validation_passed = false;
    add_str(a, &resp->validation_errors, &resp->n_validation_errors, problem);
    resp->message = mp_arena_strdup(a, problem);
    resp->error = make_error(a, SC(INVALID_ARGUMENT), "%s", problem);
}

static mp_rpc_code h_update_nlb_config(mp_pb_call *pc, const void *vreq, void *vresp)
{
    mp_host *h = host_of(pc);
    mp_arena *a = mp_pb_arena(pc);
    const Marchproxy__UpdateNLBConfigRequest *req = vreq;
    Marchproxy__UpdateNLBConfigResponse *resp = vresp;
    const Marchproxy__ConfigUpdate *c = req->config;
    if (!c) {
        update_failed(a, resp, "config is required");
        return MP_RPC_OK;
    }
    if (!config_type_ok(c->config_type)) {
        update_failed(a, resp, mp_arena_printf(a, "config_type '%s' is not supported (use "
                                               "\"libconfig\")", c->config_type));
        return MP_RPC_OK;
    }
    const uint8_t *data = c->config_data.data;
    size_t len = c->config_data.len;
    /* An empty text would parse as a config with nothing in it and unload everything;
     * that is never what a caller means. */
    if (len == 0) {
        update_failed(a, resp, "config_data is empty");
        return MP_RPC_OK;
    }
    if (memchr(data, '\0', len)) {
        update_failed(a, resp, "config_data contains a NUL byte; it must be libconfig text");
        return MP_RPC_OK;
    }
    if (c->checksum && *c->checksum) {
        char hex[65];
        if (strncmp(c->checksum, "sha256:", 7) != 0) {
            update_failed(a, resp, "checksum must be \"sha256:<hex>\"");
            return MP_RPC_OK;
        }
        if (sha256_hex(len ? (const void *)data : "", len, hex) < 0)
            return mp_pb_fail(pc, MP_RPC_INTERNAL, "cannot compute the checksum");
        if (strcasecmp(c->checksum + 7, hex) != 0) {
            update_failed(a, resp, mp_arena_printf(a, "checksum mismatch: the data hashes to "
                                                   "sha256:%s", hex));
            return MP_RPC_OK;
        }
    }
    char *text = mp_arena_strndup(a, len ? (const char *)data : "", len);
    /* @include would let a caller make the host read any file it can: a config sent
     * over the wire must be self-contained. */
    for (const char *line = text; line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        line += strspn(line, " \t");
        if (strncmp(line, "@include", 8) == 0) {
            update_failed(a, resp, "@include is not allowed in a config sent over gRPC");
            return MP_RPC_OK;
        }
    }
    mp_host_config *cfg = NULL;
    char err[1024] = "";
    if (mp_config_load_string(text, "<UpdateNLBConfig>", config_dir(a, h), &cfg, err,
                              sizeof(err)) < 0) {
        update_failed(a, resp, err[0] ? err : "the config does not parse");
        return MP_RPC_OK;
    }
    resp->validation_passed = true;
    char restart[256] = "";
    if (h->cfg)
        restart_reasons(h->cfg, cfg, restart, sizeof(restart));
    resp->requires_restart = restart[0] != '\0';
    if (req->validate_only) {
        mp_config_free(cfg);
        resp->success = true;
        resp->message = resp->requires_restart
                            ? mp_arena_printf(a, "valid (validate_only); applying it would need "
                                              "a restart for: %s", restart)
                            : mp_arena_strdup(a, "valid (validate_only: nothing changed)");
        return MP_RPC_OK;
    }
    /* The text is copied before apply takes the config, so GetNLBConfig can show the
     * bytes the running config came from. */
    char *keep = malloc(len + 1);
    if (!keep) {
        mp_config_free(cfg);
        return mp_pb_fail(pc, MP_RPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    memcpy(keep, text, len + 1);
    char msg[2048] = "";
    int rc = mp_host_adopt_config(h, cfg, keep, len, NULL, msg, sizeof(msg));
    if (rc < 0) {
        resp->success = false;
        resp->message = mp_arena_strdup(a, msg[0] ? msg : "the config was not applied");
        resp->error = make_error(a, SC(ERROR), "%s", resp->message);
        return MP_RPC_OK;
    }
    resp->success = true;
    resp->message = resp->requires_restart
                        ? mp_arena_printf(a, "%s (restart needed for: %s)",
                                          msg[0] ? msg : "applied", restart)
                        : mp_arena_strdup(a, msg[0] ? msg : "applied");
    return MP_RPC_OK;
}

/* ------------------------------------------------------------------ load */

static bool strategy_ok(const char *s)
{
    return !*s || strcmp(s, "round-robin") == 0 || strcmp(s, "least-conn") == 0 ||
           strcmp(s, "weighted") == 0;
}

static void distribution(mp_arena *a, mp_host *h, char *const *only, size_t n_only,
                         const ProtobufCMessageDescriptor *d, void *arr, size_t *n)
{
    for (mp_instance *inst = h->instances; inst; inst = inst->next)
        if (!n_only || str_in(only, n_only, inst->id))
            mp_pb_map_add_int(a, d, arr, n, inst->id, clamp_i32(inst_active(inst)));
    for (const mp_ext_module *m = h->nlb.ext; m; m = m->next)
        if (!n_only || str_in(only, n_only, m->instance_id))
            mp_pb_map_add_int(a, d, arr, n, m->instance_id,
                              clamp_i32(ext_active(h, m->instance_id)));
}

static mp_rpc_code h_rebalance_load(mp_pb_call *pc, const void *vreq, void *vresp)
{
    mp_host *h = host_of(pc);
    mp_arena *a = mp_pb_arena(pc);
    const Marchproxy__RebalanceLoadRequest *req = vreq;
    Marchproxy__RebalanceLoadResponse *resp = vresp;
    const char *strategy = nz(req->strategy);
    if (!strategy_ok(strategy)) {
        resp->message = mp_arena_printf(a, "unknown strategy '%s' (round-robin, least-conn or "
                                        "weighted)", strategy);
        resp->error = make_error(a, SC(INVALID_ARGUMENT), "%s", resp->message);
        return MP_RPC_OK;
    }
    for (size_t i = 0; i < req->n_target_instances; i++)
        if (!target_known(h, nz(req->target_instances[i]))) {
            char known[1024];
            known_ids(h, known, sizeof(known));
            resp->message = mp_arena_printf(a, "unknown instance '%s' (known: %s)",
                                            nz(req->target_instances[i]), known);
            resp->error = make_error(a, SC(NOT_FOUND), "%s", resp->message);
            return MP_RPC_OK;
        }
    distribution(a, h, req->target_instances, req->n_target_instances,
                 &marchproxy__rebalance_load_response__previous_distribution_entry__descriptor,
                 &resp->previous_distribution, &resp->n_previous_distribution);
    if (*strategy)
        snprintf(h->nlb.strategy, sizeof(h->nlb.strategy), "%s", strategy);
    /* The strategy steers new connections only: L4 connections are never migrated, so
     * the distribution right after a rebalance is the one before it. */
    distribution(a, h, req->target_instances, req->n_target_instances,
                 &marchproxy__rebalance_load_response__new_distribution_entry__descriptor,
                 &resp->new_distribution, &resp->n_new_distribution);
    resp->success = true;
    resp->message = mp_arena_printf(a, "strategy %s applies to new connections; existing "
                                    "connections are not moved", h->nlb.strategy);
    return MP_RPC_OK;
}

/*
 * requests_per_second is measured between consecutive GetLoadDistribution calls: each
 * id keeps the counter and time seen last. A call less than a second after the previous
 * one repeats that rate rather than divide by a tiny window; the first call measures
 * since the counters' start. The table is fixed-size and reuses the least recently
 * seen slot, so ids that come and go cost nothing.
 */
#define RATE_SLOTS (MP_MAX_EXTERNAL_MODULES + 64)
#define RATE_MIN_WINDOW_NS 1000000000ull

struct rate_slot {
    char id[MODULE_ID_MAX + 1];
    uint64_t requests, at_ns, seen_ns;
    int64_t last_rate;
};
static struct rate_slot rate_slots[RATE_SLOTS];

static int64_t requests_per_second(const char *id, uint64_t requests, uint64_t since_ns,
                                   uint64_t now)
{
    struct rate_slot *slot = NULL, *oldest = &rate_slots[0];
    for (size_t i = 0; i < RATE_SLOTS; i++) {
        if (rate_slots[i].id[0] && strcmp(rate_slots[i].id, id) == 0) {
            slot = &rate_slots[i];
            break;
        }
        if (rate_slots[i].seen_ns < oldest->seen_ns)
            oldest = &rate_slots[i];
    }
    uint64_t base_req = 0, base_ns = since_ns ? since_ns : now;
    if (slot) {
        if (now >= slot->at_ns && now - slot->at_ns < RATE_MIN_WINDOW_NS) {
            slot->seen_ns = now;
            return slot->last_rate;
        }
        /* A counter that went down was reset: measure from the reset instead. */
        if (requests >= slot->requests && now > slot->at_ns) {
            base_req = slot->requests;
            base_ns = slot->at_ns;
        }
    } else {
        slot = oldest;
        memset(slot, 0, sizeof(*slot));
        snprintf(slot->id, sizeof(slot->id), "%s", id);
    }
    int64_t rate = 0;
    if (now > base_ns)
        rate = (int64_t)llround((double)(requests - base_req) * 1e9 / (double)(now - base_ns));
    slot->requests = requests;
    slot->at_ns = now;
    slot->seen_ns = now;
    slot->last_rate = rate;
    return rate;
}

static double load_score(int64_t active, int32_t max_conns)
{
    /* Unlimited instances are scored against a nominal 1000 connections. */
    return max_conns > 0 ? (double)active / (double)max_conns : (double)active / 1000.0;
}

static mp_rpc_code h_get_load_distribution(mp_pb_call *pc, const void *vreq, void *vresp)
{
    mp_host *h = host_of(pc);
    mp_arena *a = mp_pb_arena(pc);
    const Marchproxy__GetLoadDistributionRequest *req = vreq;
    Marchproxy__GetLoadDistributionResponse *resp = vresp;
    const ProtobufCMessageDescriptor *dd =
        &marchproxy__get_load_distribution_response__distribution_entry__descriptor;
    uint64_t now = mp_wall_ns();
    uint64_t rss = 0;
    mp_proc_rss_bytes(&rss);
    double cpu = mp_proc_cpu_percent(&h->proc);
    double sum = 0, sum_sq = 0;
    size_t count = 0;
    /* include_historical: no history is kept; the answer is always the current view. */
    for (mp_instance *inst = h->instances; inst; inst = inst->next) {
        int wire = inst_wire_type(inst);
        if (req->module_type_filter && wire != (int)req->module_type_filter)
            continue;
        Marchproxy__LoadInfo *li = mp_pb_new(a, &marchproxy__load_info__descriptor);
        mp_hist_snapshot snap;
        mp_hist_snapshot_take(&inst->stats.latency, &snap);
        int64_t active = inst_active(inst);
        uint64_t since = atomic_load(&inst->stats.since_ns);
        li->instance_id = mp_arena_strdup(a, inst->id);
        li->active_connections = clamp_i32(active);
        /* Every in-process instance shares this process: its CPU and memory are the
         * process's, not a made-up share of them. */
        li->cpu_usage_percent = cpu < 0 ? 0.0 : cpu;
        li->memory_usage_mb = (double)rss / (1024.0 * 1024.0);
        li->requests_per_second = requests_per_second(
            inst->id, atomic_load(&inst->stats.requests), since ? since : inst->started_ns, now);
        li->avg_latency_ms = mp_hist_mean(&snap) / 1000.0;
        li->queue_depth = 0;
        li->load_score = load_score(active, inst->max_connections);
        mp_pb_map_add_msg(a, dd, &resp->distribution, &resp->n_distribution, inst->id, &li->base);
        sum += (double)active;
        sum_sq += (double)active * (double)active;
        count++;
    }
    for (const mp_ext_module *m = h->nlb.ext; m; m = m->next) {
        const Marchproxy__ModuleInstance *mi = ext_stored(h, m->instance_id);
        if (!mi || (req->module_type_filter && mi->module_type != req->module_type_filter))
            continue;
        const Marchproxy__ModuleStats *st = ext_stats(h, m->instance_id);
        Marchproxy__LoadInfo *li = mp_pb_new(a, &marchproxy__load_info__descriptor);
        int64_t active = ext_active(h, m->instance_id);
        li->instance_id = mp_arena_strdup(a, m->instance_id);
        li->active_connections = clamp_i32(active);
        if (st) {
            uint64_t since = mp_pb_timestamp_ns(st->since);
            li->cpu_usage_percent = st->cpu_usage_percent;
            li->memory_usage_mb = st->memory_usage_mb;
            li->avg_latency_ms = st->avg_latency_ms;
            li->requests_per_second = requests_per_second(
                m->instance_id, st->total_requests > 0 ? (uint64_t)st->total_requests : 0,
                since ? since : m->registered_ns, now);
        }
        li->queue_depth = 0;
        li->load_score = load_score(active, mi->max_connections);
        mp_pb_map_add_msg(a, dd, &resp->distribution, &resp->n_distribution, m->instance_id,
                          &li->base);
        sum += (double)active;
        sum_sq += (double)active * (double)active;
        count++;
    }
    double score = 1.0;
    if (count && sum > 0) {
        double mean = sum / (double)count;
        double var = sum_sq / (double)count - mean * mean;
        double cv = sqrt(var > 0 ? var : 0) / mean;
        score = 1.0 - cv;
        score = score < 0 ? 0 : score > 1 ? 1 : score;
    }
    resp->balance_score = score;
    resp->measured_at = mp_pb_timestamp(a, now);
    return MP_RPC_OK;
}

/* ------------------------------------------------------------------ TriggerScaling */


static mp_rpc_code h_trigger_scaling(mp_pb_call *pc, const void *vreq, void *vresp)
{
    mp_host *h = host_of(pc);
    mp_arena *a = mp_pb_arena(pc);
    const Marchproxy__TriggerScalingRequest *req = vreq;
    Marchproxy__TriggerScalingResponse *resp = vresp;
    const char *id = nz(req->instance_id);
    const char *action = nz(req->scaling_action);
    if (!*id)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "instance_id is required");
    if (!*action && req->target_instances > 0)
        action = "set";
    resp->scaling_action = mp_arena_strdup(a, action);
    if (strcmp(action, "scale_up") != 0 && strcmp(action, "scale_down") != 0 &&
        strcmp(action, "set") != 0) {
        resp->message = mp_arena_printf(a, "scaling_action must be scale_up, scale_down or set "
                                        "(or empty with target_instances > 0), got '%s'",
                                        action);
        resp->error = make_error(a, SC(INVALID_ARGUMENT), "%s", resp->message);
        return MP_RPC_OK;
    }
    if (strcmp(action, "set") == 0 && req->target_instances <= 0) {
        resp->message = mp_arena_strdup(a, "set needs target_instances > 0");
        resp->error = make_error(a, SC(INVALID_ARGUMENT), "%s", resp->message);
        return MP_RPC_OK;
    }
    const Marchproxy__ScalingConfig *sc = req->config;
    if (sc && sc->min_instances > 0 && sc->max_instances > 0 &&
        sc->min_instances > sc->max_instances) {
        resp->message = mp_arena_printf(a, "config.min_instances %d is above max_instances %d",
                                        (int)sc->min_instances, (int)sc->max_instances);
        resp->error = make_error(a, SC(INVALID_ARGUMENT), "%s", resp->message);
        return MP_RPC_OK;
    }
    mp_instance *inst = mp_host_find_instance(h, id);
    if (!inst) {
        mp_ext_module *m = find_ext(h, id);
        if (!m)
            return not_found(pc, id);
        /* The host cannot start processes for a module it does not run; it asks. */
        m->scale_pending = true;
        m->scale_target = req->target_instances > 0 ? req->target_instances : 0;
        snprintf(m->scale_action, sizeof(m->scale_action), "%s", action);
        resp->success = false;
        resp->target_instances = m->scale_target;
        resp->message = mp_arena_printf(a, "external modules scale themselves; '%s' is asked to "
                                        "in its next heartbeat", id);
        resp->error = make_error(a, SC(ERROR), "%s", resp->message);
        return MP_RPC_OK;
    }
    int32_t workers = mp_config_worker_count(h->cfg);
    if (sc && sc->min_instances > 0)
        inst->scale_min = sc->min_instances;
    if (sc && sc->max_instances > 0)
        inst->scale_max = sc->max_instances;
    int32_t lo = inst->scale_min > 1 ? inst->scale_min : 1;
    int32_t hi = inst->scale_max > 0 && inst->scale_max < workers ? inst->scale_max : workers;
    if (lo > hi)
        lo = hi;
    int32_t current = inst->workers_desired > 0 ? inst->workers_desired : workers;
    int32_t want;
    if (req->target_instances > 0)
        want = req->target_instances;
    else if (strcmp(action, "scale_up") == 0)
        want = current + 1;
    else
        want = current - 1;
    int32_t target = want < lo ? lo : want > hi ? hi : want;
    inst->workers_desired = target;
    /* Until the data plane exists nothing has to catch up: the new count is in effect as
     * soon as it is recorded. */
    resp->success = true;
    resp->current_instances = target;
    resp->target_instances = target;
    if (target != want)
        resp->message = mp_arena_printf(a, "'%s' now served by %d worker(s) (asked %d; bounded "
                                        "to %d..%d)", id, target, want, lo, hi);
    else
        resp->message = mp_arena_printf(a, "'%s' now served by %d of %d worker(s)", id, target,
                                        workers);
    mp_info("scaling: instance %s -> %d worker(s)", id, target);
    return MP_RPC_OK;
}

/* ------------------------------------------------------------------ binding */

static const mp_pb_handler handlers[] = {
    {"RegisterModule", h_register_module, NULL},
    {"UnregisterModule", h_unregister_module, NULL},
    {"Heartbeat", h_heartbeat, NULL},
    {"ListModules", h_list_modules, NULL},
    {"GetModuleInfo", h_get_module_info, NULL},
    {"UpdateRouting", h_update_routing, NULL},
    {"GetRoutingTable", h_get_routing_table, NULL},
    {"RouteRequest", h_route_request, NULL},
    {"ValidateRoute", h_validate_route, NULL},
    {"ReportMetrics", h_report_metrics, NULL},
    {"GetNLBMetrics", h_get_nlb_metrics, NULL},
    {"GetModuleMetrics", h_get_module_metrics, NULL},
    {"StreamNLBMetrics", NULL, h_stream_nlb_metrics},
    {"CheckHealth", h_check_health, NULL},
    {"GetNLBStatus", h_get_nlb_status, NULL},
    {"UpdateNLBConfig", h_update_nlb_config, NULL},
    {"GetNLBConfig", h_get_nlb_config, NULL},
    {"RebalanceLoad", h_rebalance_load, NULL},
    {"GetLoadDistribution", h_get_load_distribution, NULL},
    {"TriggerScaling", h_trigger_scaling, NULL},
};

int mp_svc_nlb_bind(mp_host *h, char *err, size_t err_len)
{
    return mp_pb_bind_service(h->rpc, &marchproxy__nlbservice__descriptor, handlers,
                              sizeof(handlers) / sizeof(handlers[0]), h, err, err_len);
}
