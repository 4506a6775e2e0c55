/*
 * route_select.c — the host half of routing: gathers candidates from the NLB table and
 * every in-process instance's own routes, ranks them and picks the first target that
 * can take traffic; and asks one instance for its verdict on a route. Reads the host's
 * stores, so control thread only (the data path will read compiled snapshots).
 *
 * Availability is judged from what is already known (last refreshed health, heartbeat
 * bookkeeping) so a routing decision never waits on a plugin's health probe; only the
 * plugin's can_handle is called, because that is the plugin's own routing opinion.
 */
#include "route_match.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host.h"
#include "instance_view.h"
#include "pb_util.h"

struct candidate {
    const Marchproxy__Route *route;
    mp_msg_item *item;
    const char *target;     /* instance or module id */
    mp_instance *inst;      /* set when the entry is the instance's own */
    size_t order;           /* NLB entries first, then instances in config order */
};

struct cand_list {
    struct candidate *v;
    size_t n, cap;
};

static int cand_push(struct cand_list *l, const struct candidate *c)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        struct candidate *grown = realloc(l->v, cap * sizeof(*grown));
        if (!grown)
            return -ENOMEM;
        l->v = grown;
        l->cap = cap;
    }
    l->v[l->n++] = *c;
    return 0;
}

static int cand_cmp(const void *pa, const void *pb)
{
    const struct candidate *a = pa, *b = pb;
    if (a->route->priority != b->route->priority)
        return a->route->priority > b->route->priority ? -1 : 1;
    return a->order < b->order ? -1 : a->order > b->order ? 1 : 0;
}

static mp_ext_module *find_ext(const mp_host *h, const char *id)
{
    for (mp_ext_module *m = h->nlb.ext; m; m = m->next)
        if (strcmp(m->instance_id, id) == 0)
            return m;
    return NULL;
}

static const char *health_word(mp_health hs)
{
    switch (hs) {
    case MP_HEALTH_UNHEALTHY:
        return "unhealthy";
    case MP_HEALTH_STOPPED:
        return "stopped";
    case MP_HEALTH_STOPPING:
        return "stopping";
    default:
        return "not available";
    }
}

/* Build the plugin-facing view of a request. route_id names the entry that matched so
 * the plugin sees which of the host's routes brought the request to it. */
static void view_from_request(const mp_route_request *q, const char *route_id,
                              int32_t priority, mp_route_view *v)
{
    memset(v, 0, sizeof(*v));
    v->struct_size = sizeof(*v);
    v->route_id = route_id ? route_id : "";
    v->protocol = (mp_protocol)q->protocol;
    v->source_pattern = q->source_ip ? q->source_ip : "";
    v->destination_pattern = q->host ? q->host : "";
    v->destination_port = q->dst_port;
    v->path_pattern = q->path ? q->path : "";
    v->priority = priority;
    v->header_count = q->n_headers;
    v->header_names = q->header_names;
    v->header_values = q->header_values;
}

static void ask_plugin(const mp_generation *g, const mp_route_view *v, mp_can_handle_result *res)
{
    memset(res, 0, sizeof(*res));
    res->struct_size = sizeof(*res);
    g->image->desc->can_handle(g->state, v, res);
    res->reason[sizeof(res->reason) - 1] = '\0';
}

static bool has_can_handle(const mp_generation *g)
{
    return g && g->image && g->image->desc && g->image->desc->can_handle;
}

/* Can this in-process instance take the request now? On refusal, `reason` says why. */
static bool inproc_available(mp_instance *inst, const struct candidate *c,
                             const mp_route_request *q, char *reason, size_t reason_len)
{
    if (!inst->active) {
        snprintf(reason, reason_len, "instance %s has no active generation", inst->id);
        return false;
    }
    if (inst->shutting_down) {
        snprintf(reason, reason_len, "instance %s is shutting down", inst->id);
        return false;
    }
    if (inst->health == MP_HEALTH_UNHEALTHY || inst->health == MP_HEALTH_STOPPED) {
        snprintf(reason, reason_len, "instance %s is %s", inst->id, health_word(inst->health));
        return false;
    }
    if (has_can_handle(inst->active)) {
        mp_route_view v;
        mp_can_handle_result res;
        view_from_request(q, c->route->route_id, c->route->priority, &v);
        ask_plugin(inst->active, &v, &res);
        if (!res.can_handle) {
            snprintf(reason, reason_len, "instance %s declined it%s%s", inst->id,
                     res.reason[0] ? ": " : "", res.reason);
            return false;
        }
    }
    return true;
}

static bool ext_available(mp_host *h, const char *id, const Marchproxy__ModuleInstance **mi,
                          char *reason, size_t reason_len)
{
    mp_ext_module *m = find_ext(h, id);
    mp_msg_item *it = mp_msg_store_find(&h->nlb.modules, id);
    if (!m || !it) {
        snprintf(reason, reason_len, "target %s is neither a loaded instance nor a registered "
                 "module", id);
        return false;
    }
    if (!m->in_rotation) {
        snprintf(reason, reason_len, "module %s is out of rotation (%d missed heartbeats)", id,
                 m->missed);
        return false;
    }
    /* A module that says it is unhealthy is treated like an unhealthy in-process
     * instance, whatever its heartbeats do. */
    if (m->reported == MP_HEALTH_UNHEALTHY || m->reported == MP_HEALTH_STOPPED ||
        m->reported == MP_HEALTH_STOPPING) {
        snprintf(reason, reason_len, "module %s reports itself %s", id, health_word(m->reported));
        return false;
    }
    *mi = (const Marchproxy__ModuleInstance *)it->msg;
    return true;
}

static void decide(mp_route_decision *out, const struct candidate *c, const char *target,
                   int module_type, const char *address, mp_instance *inst)
{
    memset(out, 0, sizeof(*out));
    snprintf(out->target_id, sizeof(out->target_id), "%s", target);
    out->module_type = module_type;
    snprintf(out->target_address, sizeof(out->target_address), "%s", address);
    out->priority = c->route->priority;
    snprintf(out->route_id, sizeof(out->route_id), "%s",
             c->route->route_id ? c->route->route_id : "");
    out->inst = inst;
}

static void why_append(char *why, size_t why_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void why_append(char *why, size_t why_len, const char *fmt, ...)
{
    if (!why || !why_len)
        return;
    size_t off = strnlen(why, why_len);
    if (off + 1 >= why_len)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why + off, why_len - off, fmt, ap);
    va_end(ap);
}

static int gather(mp_host *h, const mp_route_request *q, struct cand_list *l)
{
    size_t order = 0;
    for (size_t i = 0; i < h->nlb.routes.n; i++) {
        mp_msg_item *it = h->nlb.routes.items[i];
        const Marchproxy__Route *r = (const Marchproxy__Route *)it->msg;
        if (!mp_route_entry_matches(r, q)) {
            order++;
            continue;
        }
        struct candidate c = {r, it, it->owner ? it->owner : "", NULL, order++};
        if (cand_push(l, &c) < 0)
            return -ENOMEM;
    }
    for (mp_instance *inst = h->instances; inst; inst = inst->next) {
        for (size_t i = 0; i < inst->routes.n; i++) {
            mp_msg_item *it = inst->routes.items[i];
            const Marchproxy__Route *r = (const Marchproxy__Route *)it->msg;
            if (!mp_route_entry_matches(r, q)) {
                order++;
                continue;
            }
            struct candidate c = {r, it, inst->id, inst, order++};
            if (cand_push(l, &c) < 0)
                return -ENOMEM;
        }
    }
    return 0;
}

int mp_route_select(mp_host *h, const mp_route_request *q, bool count_use,
                    mp_route_decision *out, char *why, size_t why_len)
{
    struct cand_list l = {0};
    if (why && why_len)
        why[0] = '\0';
    if (gather(h, q, &l) < 0) {
        free(l.v);
        snprintf(why, why_len, "out of memory while routing");
        return -ENOMEM;
    }
    if (l.n == 0) {
        char desc[512];
        mp_route_request_describe(q, desc, sizeof(desc));
        snprintf(why, why_len, "no route matches %s", desc);
        if (count_use)
            atomic_fetch_add(&h->nlb.refused, 1);
        return -ENOENT;
    }
    qsort(l.v, l.n, sizeof(l.v[0]), cand_cmp);
    for (size_t i = 0; i < l.n; i++) {
        const struct candidate *c = &l.v[i];
        char reason[320];
        mp_instance *inst = c->inst ? c->inst : mp_host_find_instance(h, c->target);
        bool ok;
        if (inst) {
            ok = inproc_available(inst, c, q, reason, sizeof(reason));
            if (ok) {
                char addr[MP_ROUTE_ADDRESS_MAX];
                snprintf(addr, sizeof(addr), "inproc:%s", inst->id);
                decide(out, c, inst->id, mp_wire_module_type(mp_instance_module_type(inst)), addr,
                       inst);
            }
        } else {
            const Marchproxy__ModuleInstance *mi = NULL;
            ok = ext_available(h, c->target, &mi, reason, sizeof(reason));
            if (ok)
                decide(out, c, c->target, (int)mi->module_type, mi->address ? mi->address : "",
                       NULL);
        }
        if (ok) {
            if (count_use) {
                atomic_fetch_add(&h->nlb.routed, 1);
                c->item->used_ns = mp_wall_ns();
            }
            free(l.v);
            return 0;
        }
        why_append(why, why_len, "%sroute %s matched but %s", i ? "; " : "",
                   c->route->route_id ? c->route->route_id : "", reason);
    }
    free(l.v);
    if (count_use)
        atomic_fetch_add(&h->nlb.refused, 1);
    return -EHOSTUNREACH;
}

void mp_instance_verdict(mp_instance *inst, const Marchproxy__Route *route,
                         mp_can_handle_result *out)
{
    const char *names[MP_ROUTE_MAX_HEADERS], *values[MP_ROUTE_MAX_HEADERS];
    mp_route_request q;
    memset(out, 0, sizeof(*out));
    out->struct_size = sizeof(*out);
    if (!route) {
        snprintf(out->reason, sizeof(out->reason), "no route given");
        return;
    }
    if (mp_route_request_from_wire(route, &q, names, values, MP_ROUTE_MAX_HEADERS) < 0) {
        snprintf(out->reason, sizeof(out->reason), "the route has more than %d headers",
                 MP_ROUTE_MAX_HEADERS);
        return;
    }
    if (!inst->active) {
        snprintf(out->reason, sizeof(out->reason), "instance %s has no active generation",
                 inst->id);
        return;
    }
    if (has_can_handle(inst->active)) {
        mp_route_view v;
        view_from_request(&q, route->route_id, route->priority, &v);
        ask_plugin(inst->active, &v, out);
        return;
    }
    const Marchproxy__Route *best = NULL;
    for (size_t i = 0; i < inst->routes.n; i++) {
        const Marchproxy__Route *r = (const Marchproxy__Route *)inst->routes.items[i]->msg;
        if (mp_route_entry_matches(r, &q) && (!best || r->priority > best->priority))
            best = r;
    }
    if (best) {
        out->can_handle = 1;
        out->priority = best->priority;
        snprintf(out->reason, sizeof(out->reason), "matches route %s of instance %s",
                 best->route_id, inst->id);
    } else if (inst->routes.n == 0) {
        snprintf(out->reason, sizeof(out->reason),
                 "instance %s has no routes and its plugin has no can_handle", inst->id);
    } else {
        snprintf(out->reason, sizeof(out->reason), "none of the %zu routes of instance %s "
                 "matches", inst->routes.n, inst->id);
    }
}
