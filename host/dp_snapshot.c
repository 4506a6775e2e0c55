/*
 * dp_snapshot.c — what the workers route by: an immutable picture of the routing table,
 * the targets (in-process instances with their live generations and weights, external
 * modules with their addresses), rate limiters and listener rules. The control thread
 * builds one whenever its state changed and hands a reference to every worker; nothing
 * in a snapshot changes after it is published, so workers read it without locks.
 *
 * dp_select is the one routing decision: the data path calls it for every connection
 * and NLBService.RouteRequest / ValidateRoute call it too.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dp.h"
#include "log.h"
#include "pb_util.h"
#include "plugin_tables.h"
#include "route_match.h"

#define DP_PUBLISH_PERIOD_MS 50

/* A rate limiter shared by the message store item that defines it and by every
 * snapshot that uses it; it outlives both until the last reference goes. */
typedef struct dp_limiter {
    _Atomic int refs;
    mp_rate_limiter *rl;
} dp_limiter;

static void limiter_unref(void *p)
{
    dp_limiter *l = p;
    if (atomic_fetch_sub(&l->refs, 1) == 1) {
        mp_rate_limiter_free(l->rl);
        free(l);
    }
}

static dp_limiter *limiter_for(mp_msg_item *it)
{
    if (it->aux)
        return it->aux;
    const Marchproxy__RateLimit *rl = (const Marchproxy__RateLimit *)it->msg;
    mp_rate_spec spec = {rl->requests_per_second, rl->requests_per_minute, rl->requests_per_hour,
                         rl->burst_size, rl->target, 0};
    char err[256];
    mp_rate_limiter *r = mp_rate_limiter_new(&spec, err, sizeof(err));
    if (!r) {
        mp_warn("rate limit %s not enforced: %s", rl->limit_id, err);
        return NULL;
    }
    dp_limiter *l = malloc(sizeof(*l));
    if (!l) {
        mp_rate_limiter_free(r);
        return NULL;
    }
    atomic_init(&l->refs, 1); /* the store item's */
    l->rl = r;
    it->aux = l;
    it->aux_free = limiter_unref;
    return l;
}

mp_rate_limiter *dp_limiter_get(const dp_target *t, size_t i)
{
    return ((dp_limiter *)(void *)t->limiters[i])->rl;
}

void dp_snapshot_unref(dp_snapshot *s)
{
    if (!s || atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    for (size_t i = 0; i < s->n_routes; i++) {
        protobuf_c_message_free_unpacked((ProtobufCMessage *)s->routes[i].route, NULL);
        free(s->routes[i].missing_owner);
    }
    for (size_t i = 0; i < s->n_targets; i++) {
        dp_target *t = &s->targets[i];
        for (int g = 0; g < t->n_gens; g++)
            mp_generation_unref(t->gens[g]);
        for (size_t l = 0; l < t->n_limiters; l++)
            limiter_unref(t->limiters[l]);
        free(t->limiters);
        mp_counter_unref(t->counter);
    }
    for (size_t i = 0; i < s->n_listeners; i++) {
        for (size_t m = 0; m < s->listeners[i].n_modules; m++)
            free(s->listeners[i].modules[m]);
        free(s->listeners[i].modules);
    }
    free(s->routes);
    free(s->targets);
    free(s->listeners);
    free(s);
}

static int target_index(const dp_snapshot *s, const char *id)
{
    for (size_t i = 0; i < s->n_targets; i++)
        if (strcmp(s->targets[i].id, id) == 0)
            return (int)i;
    return -1;
}

static bool health_takes_traffic(mp_health h)
{
    return h == MP_HEALTH_HEALTHY || h == MP_HEALTH_DEGRADED;
}

static const char *health_word(mp_health h)
{
    switch (h) {
    case MP_HEALTH_HEALTHY: return "healthy";
    case MP_HEALTH_DEGRADED: return "degraded";
    case MP_HEALTH_UNHEALTHY: return "unhealthy";
    case MP_HEALTH_STARTING: return "starting";
    case MP_HEALTH_STOPPING: return "stopping";
    case MP_HEALTH_STOPPED: return "stopped";
    default: return "of unknown health";
    }
}

static void add_instance_target(dp_snapshot *s, struct mp_instance *inst)
{
    dp_target *t = &s->targets[s->n_targets++];
    snprintf(t->id, sizeof(t->id), "%s", inst->id);
    t->inst = inst;
    for (mp_generation *g = inst->gens; g && t->n_gens < 2; g = g->next) {
        if (atomic_load(&g->retired) || g->weight <= 0)
            continue;
        mp_generation_ref(g);
        t->gens[t->n_gens] = g;
        t->weights[t->n_gens] = g->weight;
        t->n_gens++;
    }
    if (t->n_gens == 0 && inst->active && !atomic_load(&inst->active->retired)) {
        mp_generation_ref(inst->active); /* all weights 0: the active one still serves */
        t->gens[0] = inst->active;
        t->weights[0] = 100;
        t->n_gens = 1;
    }
    t->available = !inst->shutting_down && t->n_gens > 0 && health_takes_traffic(inst->health);
    if (inst->shutting_down)
        snprintf(t->unavailable_why, sizeof(t->unavailable_why), "%s is shutting down", t->id);
    else if (t->n_gens == 0)
        snprintf(t->unavailable_why, sizeof(t->unavailable_why), "%s has no running generation",
                 t->id);
    else if (!t->available)
        snprintf(t->unavailable_why, sizeof(t->unavailable_why), "%s is %s", t->id,
                 health_word(inst->health));
    t->max_connections = inst->max_connections;
    t->workers_allowed = inst->workers_desired;
    t->active = &inst->stats.conns_active;
    t->weight = 100;
    t->type = t->n_gens ? t->gens[0]->image->desc->module_type : MP_MODULE_UNSPECIFIED;
    t->limiters = calloc(inst->rate_limits.n + 1, sizeof(*t->limiters));
    /* a plugin that limits its requests itself has the limits; counting its
     * connections too would spend each client's budget twice */
    bool plugin_limits = t->n_gens && mp_generation_limits_requests(t->gens[0]);
    for (size_t i = 0; t->limiters && !plugin_limits && i < inst->rate_limits.n; i++) {
        mp_msg_item *it = inst->rate_limits.items[i];
        if (!((const Marchproxy__RateLimit *)it->msg)->enabled)
            continue;
        dp_limiter *l = limiter_for(it);
        if (!l)
            continue;
        atomic_fetch_add(&l->refs, 1);
        t->limiters[t->n_limiters++] = (mp_rate_limiter *)(void *)l;
    }
}

static void add_external_target(dp_snapshot *s, mp_host *h, const mp_msg_item *it)
{
    const Marchproxy__ModuleInstance *m = (const Marchproxy__ModuleInstance *)it->msg;
    dp_target *t = &s->targets[s->n_targets++];
    snprintf(t->id, sizeof(t->id), "%s", m->instance_id);
    t->external = true;
    t->type = (mp_module_type)m->module_type;
    char err[128];
    unsigned len = 0;
    bool addr_ok = mp_parse_address(m->address, &t->addr, &len, err, sizeof(err)) == 0;
    t->addr_len = len;
    mp_ext_module *ext = NULL;
    for (mp_ext_module *e = h->nlb.ext; e; e = e->next)
        if (strcmp(e->instance_id, m->instance_id) == 0)
            ext = e;
    bool reported_ok = !ext || ext->reported == MP_HEALTH_UNSPECIFIED ||
                       health_takes_traffic(ext->reported);
    t->available = addr_ok && ext && ext->in_rotation && reported_ok;
    if (ext && !ext->active)
        ext->active = mp_counter_new();
    if (ext && ext->active) {
        mp_counter_ref(ext->active);
        t->counter = ext->active;
        t->active = &ext->active->value;
    } else {
        t->available = false; /* cannot count its connections: out of memory */
    }
    t->weight = m->traffic_weight > 0 ? m->traffic_weight : 1;
    if (!addr_ok)
        snprintf(t->unavailable_why, sizeof(t->unavailable_why),
                 "%s registered an address that is not IP:port", t->id);
    else if (!ext || !ext->in_rotation)
        snprintf(t->unavailable_why, sizeof(t->unavailable_why),
                 "%s missed its heartbeats and is out of rotation", t->id);
    else if (!reported_ok)
        snprintf(t->unavailable_why, sizeof(t->unavailable_why), "%s reports itself %s",
                 t->id, health_word(ext->reported));
    t->max_connections = m->max_connections;
}

static int cmp_routes(const void *a, const void *b)
{
    const dp_route *x = a, *y = b;
    if (x->route->priority != y->route->priority)
        return x->route->priority > y->route->priority ? -1 : 1;
    if (x->origin_rank != y->origin_rank)
        return x->origin_rank - y->origin_rank;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void add_route(dp_snapshot *s, const mp_msg_item *it, int target, int rank)
{
    ProtobufCMessage *copy = mp_pb_clone(it->msg);
    if (!copy)
        return;
    dp_route *r = &s->routes[s->n_routes++];
    r->route = (const Marchproxy__Route *)copy;
    r->target = target;
    if (target < 0) /* kept so a refusal can say which target is gone */
        r->missing_owner = strdup(it->owner ? it->owner : "?");
    r->origin_rank = rank;
    r->seq = it->seq;
}

dp_snapshot *dp_snapshot_build(mp_host *h)
{
    static uint64_t version;
    dp_snapshot *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    atomic_init(&s->refs, 1);
    s->version = ++version;
    size_t n_inst = mp_host_instance_count(h);
    s->targets = calloc(n_inst + h->nlb.modules.n + 1, sizeof(*s->targets));
    size_t n_routes = h->nlb.routes.n;
    for (struct mp_instance *inst = h->instances; inst; inst = inst->next)
        n_routes += inst->routes.n;
    s->routes = calloc(n_routes + 1, sizeof(*s->routes));
    s->listeners = calloc(h->cfg->n_listeners + 1, sizeof(*s->listeners));
    if (!s->targets || !s->routes || !s->listeners) {
        dp_snapshot_unref(s);
        return NULL;
    }
    for (struct mp_instance *inst = h->instances; inst; inst = inst->next)
        add_instance_target(s, inst);
    for (size_t i = 0; i < h->nlb.modules.n; i++)
        add_external_target(s, h, h->nlb.modules.items[i]);

    for (size_t i = 0; i < h->nlb.routes.n; i++) {
        const mp_msg_item *it = h->nlb.routes.items[i];
        add_route(s, it, it->owner ? target_index(s, it->owner) : -1, 0);
    }
    for (struct mp_instance *inst = h->instances; inst; inst = inst->next) {
        int t = target_index(s, inst->id);
        for (size_t i = 0; i < inst->routes.n; i++)
            add_route(s, inst->routes.items[i], t, 1);
    }
    qsort(s->routes, s->n_routes, sizeof(*s->routes), cmp_routes);

    for (size_t i = 0; i < h->cfg->n_listeners; i++) {
        const mp_listener_cfg *lc = &h->cfg->listeners[i];
        dp_listener_view *v = &s->listeners[s->n_listeners++];
        snprintf(v->name, sizeof(v->name), "%s", lc->name);
        v->modules = lc->n_modules ? calloc(lc->n_modules, sizeof(char *)) : NULL;
        for (size_t m = 0; v->modules && m < lc->n_modules; m++)
            if ((v->modules[v->n_modules] = strdup(lc->modules[m])))
                v->n_modules++;
        v->default_target = lc->default_module ? target_index(s, lc->default_module) : -1;
        v->bound_protocol = lc->protocol;
        v->sniff_timeout_ms = (uint32_t)lc->sniff_timeout_ms;
    }
    if (!strcmp(h->nlb.strategy, "least-conn"))
        s->strategy = 1;
    else if (!strcmp(h->nlb.strategy, "weighted"))
        s->strategy = 2;
    return s;
}

bool dp_listener_allows(const dp_listener_view *l, const char *id)
{
    if (!l || l->n_modules == 0)
        return true;
    for (size_t i = 0; i < l->n_modules; i++)
        if (strcmp(l->modules[i], id) == 0)
            return true;
    return false;
}

/* The plugin's own verdict for an in-process target (the ABI makes can_handle safe to
 * call from any thread). */
static bool plugin_accepts(const dp_target *t, const mp_route_request *q, const dp_route *r,
                           char *why, size_t why_len)
{
    const mp_generation *g = t->gens[0];
    const mp_plugin_descriptor *d = g->image->desc;
    if (!d->can_handle)
        return true;
    mp_route_view v;
    mp_route_view_from_request(q, r->route->route_id, r->route->priority, &v);
    mp_can_handle_result res;
    memset(&res, 0, sizeof(res));
    res.struct_size = sizeof(res);
    d->can_handle(g->state, &v, &res);
    if (!res.can_handle) {
        res.reason[sizeof(res.reason) - 1] = '\0';
        snprintf(why, why_len, "%s declined: %s", t->id, res.reason);
    }
    return res.can_handle != 0;
}

/* Among candidates that tie at the best priority, the strategy decides. */
static int balance(const dp_snapshot *s, const int *cand, const int *cand_route, int n,
                   uint64_t *rr, int *route_out)
{
    int pick = 0;
    uint64_t k = rr ? (*rr)++ : 0;
    if (n > 1 && s->strategy == 1) { /* least-conn */
        int64_t best = INT64_MAX;
        for (int i = 0; i < n; i++) {
            const dp_target *t = &s->targets[cand[i]];
            int64_t a = t->active ? atomic_load_explicit(t->active, memory_order_relaxed) : 0;
            if (a < best) {
                best = a;
                pick = i;
            }
        }
    } else if (n > 1 && s->strategy == 2) { /* weighted */
        uint64_t total = 0;
        for (int i = 0; i < n; i++)
            total += (uint64_t)s->targets[cand[i]].weight;
        uint64_t slot = k % total;
        for (int i = 0; i < n; i++) {
            uint64_t w = (uint64_t)s->targets[cand[i]].weight;
            if (slot < w) {
                pick = i;
                break;
            }
            slot -= w;
        }
    } else if (n > 1) { /* round-robin */
        pick = (int)(k % (uint64_t)n);
    }
    *route_out = cand_route[pick];
    return cand[pick];
}

#define DP_MAX_TIES 64

void dp_select(const dp_snapshot *s, const dp_listener_view *listener,
               const Marchproxy__Route *request, const struct sockaddr *peer, uint64_t *rr,
               dp_decision *out)
{
    (void)peer;
    int cand[DP_MAX_TIES], cand_route[DP_MAX_TIES], n_cand = 0;
    int32_t cand_priority = 0;
    out->target = -1;
    out->route = -1;
    out->why[0] = '\0';
    const char *names[MP_ROUTE_MAX_HEADERS], *values[MP_ROUTE_MAX_HEADERS];
    mp_route_request q;
    if (mp_route_request_from_wire(request, &q, names, values, MP_ROUTE_MAX_HEADERS) < 0) {
        snprintf(out->why, sizeof(out->why), "too many headers to route");
        return;
    }
    bool matched = false;
    out->matched = false;
    for (size_t i = 0; i < s->n_routes; i++) {
        const dp_route *r = &s->routes[i];
        if (!mp_route_entry_matches(r->route, &q))
            continue;
        matched = out->matched = true;
        char why[200] = "";
        const dp_target *t = r->target >= 0 ? &s->targets[r->target] : NULL;
        if (!t)
            snprintf(why, sizeof(why),
                     "route %s matched but %s is neither a loaded instance nor a registered "
                     "module",
                     r->route->route_id, r->missing_owner ? r->missing_owner : "?");
        else if (!dp_listener_allows(listener, t->id))
            snprintf(why, sizeof(why), "route %s matched but listener %s does not serve %s",
                     r->route->route_id, listener->name, t->id);
        else if (!t->available)
            snprintf(why, sizeof(why), "route %s matched but %s", r->route->route_id,
                     t->unavailable_why);
        else if (!t->external && !plugin_accepts(t, &q, r, why, sizeof(why)))
            ;
        else {
            if (n_cand && r->route->priority != cand_priority)
                break; /* routes are sorted: no more ties */
            bool dup = false;
            for (int k = 0; k < n_cand; k++)
                dup |= cand[k] == r->target;
            if (!dup && n_cand < DP_MAX_TIES) {
                cand_priority = r->route->priority;
                cand[n_cand] = r->target;
                cand_route[n_cand++] = (int)i;
            }
            continue;
        }
        size_t used = strlen(out->why);
        if (why[0] && used + 3 < sizeof(out->why))
            snprintf(out->why + used, sizeof(out->why) - used, "%s%s", used ? "; " : "", why);
    }
    if (n_cand) {
        out->target = balance(s, cand, cand_route, n_cand, rr, &out->route);
        out->why[0] = '\0';
        return;
    }
    if (!matched) {
        char desc[200];
        mp_route_request_describe(&q, desc, sizeof(desc));
        snprintf(out->why, sizeof(out->why), "no route matches %s", desc);
    }
}

int dp_route_request(mp_host *h, const Marchproxy__Route *request, bool count_use,
                     struct mp_route_decision *out, char *why, size_t why_len)
{
    if (h->dp_dirty || !h->dp_snap)
        dp_publish(h); /* answer from what the data path will use next */
    const dp_snapshot *s = h->dp_snap;
    if (!s)
        return -ENOMEM;
    dp_decision d;
    static uint64_t rr; /* the control thread's own round-robin position */
    dp_select(s, NULL, request, NULL, &rr, &d);
    if (d.target < 0) {
        snprintf(why, why_len, "%s", d.why);
        if (count_use)
            atomic_fetch_add(&h->nlb.refused, 1);
        return d.matched ? -EHOSTUNREACH : -ENOENT;
    }
    const dp_target *t = &s->targets[d.target];
    const Marchproxy__Route *r = s->routes[d.route].route;
    memset(out, 0, sizeof(*out));
    snprintf(out->target_id, sizeof(out->target_id), "%s", t->id);
    out->module_type = mp_wire_module_type(t->type);
    out->priority = r->priority;
    snprintf(out->route_id, sizeof(out->route_id), "%s", r->route_id);
    out->inst = t->external ? NULL : t->inst;
    if (t->external) {
        const mp_msg_item *it = mp_msg_store_find(&h->nlb.modules, t->id);
        snprintf(out->target_address, sizeof(out->target_address), "%s",
                 it ? ((const Marchproxy__ModuleInstance *)it->msg)->address : "");
    } else {
        snprintf(out->target_address, sizeof(out->target_address), "inproc:%s", t->id);
    }
    if (count_use) {
        atomic_fetch_add(&h->nlb.routed, 1);
        mp_msg_item *it = mp_msg_store_find(&h->nlb.routes, r->route_id);
        if (!it && t->inst)
            it = mp_msg_store_find(&t->inst->routes, r->route_id);
        if (it)
            it->used_ns = mp_wall_ns();
    }
    return 0;
}

/* ------------------------------------------------------------------ publishing */

void dp_publish(mp_host *h)
{
    dp_snapshot *s = dp_snapshot_build(h);
    if (!s) {
        mp_err("out of memory building the routing snapshot; workers keep the previous one");
        return;
    }
    for (int i = 0; i < h->n_workers; i++) {
        atomic_fetch_add(&s->refs, 1);
        if (dp_worker_post(&h->workers[i], MSG_SNAPSHOT, s) < 0)
            dp_snapshot_unref(s);
    }
    dp_snapshot *old = h->dp_snap;
    h->dp_snap = s;
    if (old)
        dp_snapshot_unref(old);
    h->dp_dirty = false;
}

void mp_host_touch(mp_host *h) { h->dp_dirty = true; }

/* Control-thread tick: republish after changes (health is refreshed by the NLB's
 * watchdog, which marks changes), close what overran its drain time. */
static void dp_tick(void *arg)
{
    mp_host *h = arg;
    if (h->dp_dirty)
        dp_publish(h);
    mp_host_drain_due(h);
    h->dp_timer = mp_rpc_timer_add(h->rpc, DP_PUBLISH_PERIOD_MS, dp_tick, h);
}

void dp_start_publisher(mp_host *h)
{
    h->dp_timer = mp_rpc_timer_add(h->rpc, DP_PUBLISH_PERIOD_MS, dp_tick, h);
}

void dp_stop_publisher(mp_host *h)
{
    if (h->dp_timer)
        mp_rpc_timer_cancel(h->rpc, h->dp_timer);
    h->dp_timer = NULL;
    dp_snapshot_unref(h->dp_snap);
    h->dp_snap = NULL;
}
