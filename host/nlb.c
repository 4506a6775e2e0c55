/*
 * nlb.c — the NLB's bookkeeping outside any one RPC: its stores (routing table,
 * external modules, their stats and reported metrics), the heartbeat watchdog that
 * takes silent external modules out of rotation, and loading the config file's routes
 * into the table. svc_nlb.c serves the RPCs over the same state. The same tick keeps
 * the in-process instances' health current for routing.
 *
 * Liveness is measured in whole missed intervals since the last heartbeat; a module
 * comes back only through heartbeats (svc_nlb.c counts them), never by the watchdog.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host.h"
#include "log.h"
#include "marchproxy/types.pb-c.h"
#include "pb_util.h"
#include "route_match.h"

#define HEARTBEAT_CHECK_MS 500

static void heartbeat_tick(void *arg);

static void arm_watchdog(mp_host *h)
{
    h->nlb.heartbeat_timer = mp_rpc_timer_add(h->rpc, HEARTBEAT_CHECK_MS, heartbeat_tick, h);
    if (!h->nlb.heartbeat_timer)
        mp_err("NLB: cannot re-arm the heartbeat watchdog (out of memory); external modules "
               "will no longer be taken out of rotation");
}

static void check_heartbeats(mp_host *h, uint64_t now)
{
    for (mp_ext_module *m = h->nlb.ext; m; m = m->next) {
        uint64_t interval_ns = (uint64_t)(m->interval_s > 0 ? m->interval_s : 1) * 1000000000u;
        /* A clock stepped backwards must not count as missed beats. */
        uint64_t silent = now > m->last_heartbeat_ns ? now - m->last_heartbeat_ns : 0;
        uint64_t missed = silent / interval_ns;
        m->missed = missed > (uint64_t)INT32_MAX ? INT32_MAX : (int)missed;
        if (m->in_rotation && m->missed >= m->unhealthy_threshold) {
            m->in_rotation = false;
            m->good = 0;
            mp_host_touch(h);
            mp_warn("NLB: module %s missed %d heartbeats (every %d s): out of rotation until "
                    "%d consecutive heartbeats arrive",
                    m->instance_id, m->missed, m->interval_s, m->healthy_threshold);
        }
    }
}

/* Routing judges in-process instances by their last refreshed health (it never waits on
 * a probe), so that word must not go stale: without this, a plugin whose health changed
 * (on its own, or through a reconfigure, which does not re-ask) kept its old standing in
 * RouteRequest until some unrelated RPC happened to refresh it. A shallow check is the
 * cheap one plugins answer from memory. */
static void refresh_instances(mp_host *h)
{
    for (struct mp_instance *inst = h->instances; inst; inst = inst->next)
        mp_instance_refresh_health(inst, false);
}

/* Runs on the control thread; the timer handle is spent once we are called. */
static void heartbeat_tick(void *arg)
{
    mp_host *h = arg;
    h->nlb.heartbeat_timer = NULL;
    check_heartbeats(h, mp_wall_ns());
    refresh_instances(h);
    if (!mp_rpc_server_stopping(h->rpc))
        arm_watchdog(h);
}

mp_counter *mp_counter_new(void)
{
    mp_counter *c = calloc(1, sizeof(*c));
    if (c)
        atomic_init(&c->refs, 1);
    return c;
}

void mp_counter_ref(mp_counter *c) { atomic_fetch_add(&c->refs, 1); }

void mp_counter_unref(mp_counter *c)
{
    if (c && atomic_fetch_sub(&c->refs, 1) == 1)
        free(c);
}

void mp_ext_module_free(mp_ext_module *m)
{
    mp_counter_unref(m->active);
    free(m->instance_id);
    free(m);
}

static void ext_free_all(mp_nlb *n)
{
    while (n->ext) {
        mp_ext_module *m = n->ext;
        n->ext = m->next;
        mp_ext_module_free(m);
    }
}

int mp_nlb_init(mp_host *h)
{
    mp_nlb *n = &h->nlb;
    int rc;
    memset(n, 0, sizeof(*n));
    if ((rc = mp_msg_store_init(&n->routes, &marchproxy__route__descriptor, "route_id",
                                MP_MAX_NLB_ROUTES)) < 0 ||
        (rc = mp_msg_store_init(&n->modules, &marchproxy__module_instance__descriptor,
                                "instance_id", MP_MAX_EXTERNAL_MODULES)) < 0 ||
        (rc = mp_msg_store_init(&n->module_stats, &marchproxy__module_stats__descriptor,
                                "instance_id", MP_MAX_EXTERNAL_MODULES)) < 0 ||
        /* ReportMetrics is accepted from in-process instances too. */
        (rc = mp_msg_store_init(&n->reported, &marchproxy__module_metrics__descriptor,
                                "instance_id", 2 * MP_MAX_EXTERNAL_MODULES)) < 0)
        return rc;
    snprintf(n->strategy, sizeof(n->strategy), "round-robin");
    /* Without a server (config check mode) there are no heartbeats to watch. */
    if (h->rpc) {
        n->heartbeat_timer = mp_rpc_timer_add(h->rpc, HEARTBEAT_CHECK_MS, heartbeat_tick, h);
        if (!n->heartbeat_timer)
            return -ENOMEM;
    }
    return 0;
}

void mp_nlb_destroy(mp_host *h)
{
    mp_nlb *n = &h->nlb;
    /* Must run before mp_rpc_server_destroy: the timer lives in the server. */
    if (n->heartbeat_timer && h->rpc)
        mp_rpc_timer_cancel(h->rpc, n->heartbeat_timer);
    n->heartbeat_timer = NULL;
    mp_msg_store_destroy(&n->routes);
    mp_msg_store_destroy(&n->modules);
    mp_msg_store_destroy(&n->module_stats);
    mp_msg_store_destroy(&n->reported);
    ext_free_all(n);
}

/* The wire form of one config route; strings are borrowed from the config (the store
 * takes its own copy). */
static void route_from_cfg(const mp_route_cfg *c, Marchproxy__Route *r,
                           Marchproxy__Route__MetadataEntry *target,
                           Marchproxy__Route__MetadataEntry **md)
{
    marchproxy__route__init(r);
    marchproxy__route__metadata_entry__init(target);
    r->route_id = c->id ? c->id : (char *)"";
    r->protocol = (Marchproxy__Protocol)c->protocol;
    r->source_pattern = c->source ? c->source : (char *)"";
    r->destination_pattern = c->destination ? c->destination : (char *)"";
    r->destination_port = c->destination_port;
    r->path_pattern = c->path ? c->path : (char *)"";
    r->priority = c->priority;
    target->key = (char *)"target";
    target->value = c->target ? c->target : (char *)"";
    md[0] = target;
    r->metadata = md;
    r->n_metadata = 1;
}

static bool in_config(const mp_host_config *cfg, const char *id)
{
    for (size_t i = 0; cfg && i < cfg->n_routes; i++)
        if (cfg->routes[i].id && strcmp(cfg->routes[i].id, id) == 0)
            return true;
    return false;
}

/* Routes the file still has are replaced in place, so a reload does not move them
 * behind API routes of equal priority (insertion order breaks ties). */
int mp_nlb_load_config_routes(mp_host *h, char *err, size_t err_len)
{
    const mp_host_config *cfg = h->cfg;
    mp_nlb *n = &h->nlb;
    size_t n_cfg = cfg ? cfg->n_routes : 0;

    /* Check everything before touching the table so a bad file leaves the old routes. */
    size_t after = 0;
    for (size_t i = 0; i < n->routes.n; i++) {
        const mp_msg_item *it = n->routes.items[i];
        if (it->origin != MP_ORIGIN_CONFIG && !in_config(cfg, it->key))
            after++;
    }
    after += n_cfg;
    for (size_t i = 0; i < n_cfg; i++) {
        const mp_route_cfg *c = &cfg->routes[i];
        Marchproxy__Route r;
        Marchproxy__Route__MetadataEntry target, *md[1];
        char why[512];
        route_from_cfg(c, &r, &target, md);
        if (mp_route_validate(&r, why, sizeof(why)) < 0) {
            snprintf(err, err_len, "%s:%d: %s", cfg->path ? cfg->path : "config", c->line, why);
            return -EINVAL;
        }
        if (!c->target || !*c->target) {
            snprintf(err, err_len, "%s:%d: route '%s' has no target",
                     cfg->path ? cfg->path : "config", c->line, c->id);
            return -EINVAL;
        }
    }
    if (after > n->routes.max_items) {
        snprintf(err, err_len, "the routing table would hold %zu routes (at most %zu)", after,
                 n->routes.max_items);
        return -ENOSPC;
    }

    for (size_t i = n->routes.n; i-- > 0;) {
        const mp_msg_item *it = n->routes.items[i];
        if (it->origin == MP_ORIGIN_CONFIG && !in_config(cfg, it->key)) {
            char id[MP_ROUTE_ID_MAX + 1];
            snprintf(id, sizeof(id), "%s", it->key);
            mp_msg_store_remove(&n->routes, id);
        }
    }
    for (size_t i = 0; i < n_cfg; i++) {
        const mp_route_cfg *c = &cfg->routes[i];
        Marchproxy__Route r;
        Marchproxy__Route__MetadataEntry target, *md[1];
        route_from_cfg(c, &r, &target, md);
        mp_msg_item *it = mp_msg_store_find(&n->routes, c->id);
        if (it && it->origin != MP_ORIGIN_CONFIG)
            /* The file is authoritative for its ids: an API or module route that took
             * the same id gives way, loudly. */
            mp_warn("NLB: config route '%s' replaces the %s route of the same id", c->id,
                    it->origin == MP_ORIGIN_API ? "API" : "module");
        int rc = mp_msg_store_put(&n->routes, &r.base, c->target, MP_ORIGIN_CONFIG);
        if (rc < 0) {
            snprintf(err, err_len, "cannot store config route '%s': %s", c->id, strerror(-rc));
            return rc;
        }
    }
    return 0;
}
