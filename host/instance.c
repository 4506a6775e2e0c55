/*
 * instance.c — plugin instances and their generations: creation through the plugin's
 * create(), activation (which generation answers the plugin's RPC methods), retirement
 * and destruction once nothing references a generation any more.
 *
 * Reference counting crosses threads: a plugin may finish an RPC on its own thread,
 * and (with the data plane) connections end on worker threads. The last reference of a
 * retired generation is therefore only *noticed* anywhere; destruction is always
 * posted to the control thread, which owns the lists.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config_view.h"
#include "dp.h"
#include "host.h"
#include "log.h"
#include "marchproxy/module.pb-c.h"
#include "pb_util.h"
#include "plugin_loader.h"
#include "plugin_tables.h"

struct mp_instance *mp_host_find_instance(const mp_host *h, const char *id)
{
    if (!id)
        return NULL;
    for (struct mp_instance *i = h->instances; i; i = i->next)
        if (strcmp(i->id, id) == 0)
            return i;
    return NULL;
}

void mp_host_known_ids(const mp_host *h, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (struct mp_instance *i = h->instances; i && used + 1 < len; i = i->next) {
        int n = snprintf(buf + used, len - used, "%s%s", used ? ", " : "", i->id);
        if (n < 0)
            break;
        used += (size_t)n;
    }
    if (!h->instances)
        snprintf(buf, len, "(none loaded)");
}

size_t mp_host_instance_count(const mp_host *h)
{
    size_t n = 0;
    for (struct mp_instance *i = h->instances; i; i = i->next)
        n++;
    return n;
}

int mp_wire_module_type(mp_module_type t)
{
    return (t >= MP_MODULE_ALB && t <= MP_MODULE_NLB) ? (int)t : 0;
}

const char *mp_module_type_name(mp_module_type t)
{
    switch (t) {
    case MP_MODULE_ALB: return "alb";
    case MP_MODULE_DBLB: return "dblb";
    case MP_MODULE_AILB: return "ailb";
    case MP_MODULE_RTMP: return "rtmp";
    case MP_MODULE_NLB: return "nlb";
    case MP_MODULE_STORAGE: return "storage";
    default: return "unspecified";
    }
}

const char *mp_instance_version(const struct mp_instance *inst)
{
    return inst->active ? inst->active->version : "";
}

mp_generation *mp_instance_find_generation(const struct mp_instance *inst, const char *version)
{
    for (mp_generation *g = inst->gens; g; g = g->next)
        if (!atomic_load(&g->retired) && strcmp(g->version, version) == 0)
            return g;
    return NULL;
}

void mp_instance_refresh_health(struct mp_instance *inst, bool deep)
{
    mp_health before = inst->health;
    if (inst->shutting_down) {
        inst->health = MP_HEALTH_STOPPING;
        snprintf(inst->health_msg, sizeof(inst->health_msg), "shutting down");
    } else if (!inst->active) {
        inst->health = MP_HEALTH_UNHEALTHY;
        snprintf(inst->health_msg, sizeof(inst->health_msg), "no generation loaded%s%s",
                 inst->last_error[0] ? ": " : "", inst->last_error);
    } else if (inst->active->image->desc->health) {
        mp_health_report r;
        memset(&r, 0, sizeof(r));
        r.struct_size = sizeof(r);
        r.status = MP_HEALTH_HEALTHY;
        inst->active->image->desc->health(inst->active->state, deep, &r);
        r.message[sizeof(r.message) - 1] = '\0';
        inst->health = (r.status >= MP_HEALTH_HEALTHY && r.status <= MP_HEALTH_STOPPED)
                           ? r.status
                           : MP_HEALTH_UNHEALTHY;
        snprintf(inst->health_msg, sizeof(inst->health_msg), "%s", r.message);
    } else {
        inst->health = MP_HEALTH_HEALTHY;
        snprintf(inst->health_msg, sizeof(inst->health_msg), "running");
    }
    if (before != inst->health) {
        mp_host_touch(inst->host); /* routing takes traffic away or brings it back */
        if (before != MP_HEALTH_UNSPECIFIED)
            mp_logf(MP_LOG_INFO, inst->id, "health %d -> %d (%s)", (int)before,
                    (int)inst->health, inst->health_msg);
    }
}

void mp_instance_stats_reset(struct mp_instance *inst)
{
    mp_instance_stats *s = &inst->stats;
    mp_hist_reset(&s->latency);
    atomic_store(&s->requests, 0);
    atomic_store(&s->ok, 0);
    atomic_store(&s->failed, 0);
    atomic_store(&s->bytes_in, 0);
    atomic_store(&s->bytes_out, 0);
    atomic_store(&s->conns_total, 0);
    atomic_store(&s->drained_forced, 0);
    atomic_store(&s->since_ns, mp_wall_ns());
}

struct mp_instance *mp_instance_new(mp_host *h, const char *id, const char *plugin)
{
    struct mp_instance *inst = calloc(1, sizeof(*inst));
    if (!inst)
        return NULL;
    inst->host = h;
    inst->id = strdup(id);
    inst->plugin = strdup(plugin);
    if (!inst->id || !inst->plugin ||
        mp_msg_store_init(&inst->routes, &marchproxy__route__descriptor, "route_id",
                          MP_MAX_ROUTES_PER_INSTANCE) < 0 ||
        mp_msg_store_init(&inst->rate_limits, &marchproxy__rate_limit__descriptor, "limit_id",
                          MP_MAX_RATE_LIMITS_PER_INSTANCE) < 0) {
        free(inst->id);
        free(inst->plugin);
        free(inst);
        return NULL;
    }
    mp_hist_init(&inst->stats.latency);
    atomic_store(&inst->stats.since_ns, mp_wall_ns());
    inst->started_ns = mp_wall_ns();
    return inst;
}

static void drop_kept_copy(struct mp_instance *inst);

static void instance_free(struct mp_instance *inst)
{
    drop_kept_copy(inst);
    mp_msg_store_destroy(&inst->routes);
    mp_msg_store_destroy(&inst->rate_limits);
    free(inst->settings_text);
    free(inst->id);
    free(inst->plugin);
    free(inst);
}

/* ------------------------------------------------------------------ generations */

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Connections keep a retired generation alive until they end or the drain bound
 * (the Reload/Shutdown request's timeout, else drain_timeout_ms) runs out. */
static void drain_schedule(mp_generation *g)
{
    mp_host *h = g->inst->host;
    if (!h->n_workers || atomic_load(&g->refs) == 0)
        return;
    int64_t ms = h->drain_override_ms >= 0 ? h->drain_override_ms
                                            : (h->cfg ? h->cfg->drain_timeout_ms : 0);
    dp_drain *d = calloc(1, sizeof(*d));
    if (!d)
        return;
    d->g = g;
    d->deadline_ms = mono_ms() + (uint64_t)ms;
    d->next = h->draining;
    h->draining = d;
}

static void drain_forget(mp_generation *g)
{
    mp_host *h = g->inst->host;
    for (dp_drain **pp = &h->draining; *pp; pp = &(*pp)->next)
        if ((*pp)->g == g) {
            dp_drain *d = *pp;
            *pp = d->next;
            free(d);
            return;
        }
}

void mp_host_drain_due(mp_host *h)
{
    uint64_t now = mono_ms();
    for (dp_drain **pp = &h->draining; *pp;) {
        dp_drain *d = *pp;
        if (d->deadline_ms > now) {
            pp = &d->next;
            continue;
        }
        *pp = d->next;
        mp_logf(MP_LOG_INFO, d->g->inst->id,
                "generation %s: drain time is up, closing its %d remaining connection(s)",
                d->g->version, atomic_load(&d->g->refs));
        for (int i = 0; i < h->n_workers; i++) {
            mp_generation_ref(d->g); /* the message's; the worker drops it */
            if (dp_worker_post(&h->workers[i], MSG_DRAIN_GEN, d->g) < 0)
                mp_generation_unref(d->g);
        }
        free(d);
    }
}

static void generation_destroy(mp_generation *g)
{
    struct mp_instance *inst = g->inst;
    mp_host *h = inst->host;
    drain_forget(g);
    mp_logf(MP_LOG_INFO, inst->id, "generation %s destroyed", g->version);
    if (g->state)
        g->image->desc->destroy(g->state);
    for (mp_generation **pp = &inst->gens; *pp; pp = &(*pp)->next)
        if (*pp == g) {
            *pp = g->next;
            break;
        }
    if (inst->active == g)
        inst->active = NULL;
    for (size_t i = 0; i < g->n_rpc; i++)
        free(g->rpcs[i].path);
    mp_plugin_image_unref(h, g->image);
    free(g);
    if (inst->removed && !inst->gens)
        instance_free(inst);
}

static void generation_destroy_posted(void *arg) { generation_destroy(arg); }

/* Whoever wins the exchange destroys; the destruction itself runs on the control
 * thread (posted when we may be elsewhere). */
static void maybe_destroy(mp_generation *g, bool on_control_thread)
{
    if (!atomic_load(&g->retired) || atomic_load(&g->refs) != 0)
        return;
    if (atomic_exchange(&g->destroying, true))
        return;
    if (on_control_thread)
        generation_destroy(g);
    else if (mp_rpc_server_post(g->inst->host->rpc, generation_destroy_posted, g) < 0)
        mp_err("out of memory: generation %s leaked", g->version);
}

void mp_generation_ref(mp_generation *g) { atomic_fetch_add(&g->refs, 1); }

void mp_generation_unref(mp_generation *g)
{
    if (atomic_fetch_sub(&g->refs, 1) == 1)
        maybe_destroy(g, false);
}

static void generation_retire(mp_generation *g)
{
    if (atomic_exchange(&g->retired, true))
        return;
    g->weight = 0;
    mp_logf(MP_LOG_INFO, g->inst->id, "generation %s retired (%d reference(s) left)",
            g->version, atomic_load(&g->refs));
    mp_host_touch(g->inst->host); /* new connections stop going to it */
    drain_schedule(g);
    maybe_destroy(g, true);
}

void mp_instance_retire_others(struct mp_instance *inst, mp_generation *keep)
{
    mp_generation *g = inst->gens;
    while (g) {
        mp_generation *next = g->next; /* g may be destroyed below */
        if (g != keep)
            generation_retire(g);
        g = next;
    }
}

void mp_instance_settle(struct mp_instance *inst, mp_generation *active)
{
    mp_instance_retire_others(inst, active);
    active->weight = 100;
    inst->canary = false;
    inst->promoting[0] = '\0';
    if (inst->promotion_timer) {
        mp_rpc_timer_cancel(inst->host->rpc, inst->promotion_timer);
        inst->promotion_timer = NULL;
    }
}

/* Unlink a kept copy unless a loaded image still maps that file. */
static void drop_kept_copy(struct mp_instance *inst)
{
    if (!inst->kept_copy)
        return;
    bool in_use = false;
    for (mp_plugin_image *img = inst->host->images; img; img = img->next)
        if (img->copy_path && strcmp(img->copy_path, inst->kept_copy) == 0) {
            img->keep_copy = false; /* it goes when that image does */
            in_use = true;
        }
    if (!in_use)
        unlink(inst->kept_copy);
    free(inst->kept_copy);
    inst->kept_copy = NULL;
    inst->kept_version[0] = '\0';
}

void mp_instance_keep_previous(struct mp_instance *inst, const mp_generation *g)
{
    if (!g || !g->image->copy_path)
        return;
    if (inst->kept_copy && strcmp(inst->kept_copy, g->image->copy_path) == 0)
        return;
    drop_kept_copy(inst);
    inst->kept_copy = strdup(g->image->copy_path);
    if (!inst->kept_copy)
        return;
    g->image->keep_copy = true;
    snprintf(inst->kept_version, sizeof(inst->kept_version), "%s", g->version);
}

mp_generation *mp_instance_revive(struct mp_instance *inst, const char *version, char *err,
                                  size_t err_len)
{
    mp_generation *g = mp_instance_find_generation(inst, version);
    if (g)
        return g;
    if (!inst->kept_copy || strcmp(inst->kept_version, version) != 0) {
        snprintf(err, err_len, "%s has no version '%.*s' loaded or kept", inst->id,
                 MP_VERSION_LEN, version);
        return NULL;
    }
    mp_host *h = inst->host;
    mp_plugin_image *img;
    if (mp_plugin_image_load_private(h, inst->kept_copy, &img, err, err_len) < 0)
        return NULL;
    config_t lc;
    config_init(&lc);
    const char *text = inst->settings_text ? inst->settings_text : "";
    int rc = mp_config_text_parse(text, strlen(text), inst->id, &lc, err, err_len);
    if (rc == 0)
        rc = mp_generation_create(inst, img, mp_config_of(config_root_setting(&lc)), &g, err,
                                  err_len);
    config_destroy(&lc);
    mp_plugin_image_unref(h, img); /* the generation holds its own reference */
    if (rc < 0)
        return NULL;
    g->weight = 0;
    mp_host_touch(h);
    return g;
}

/* The server calls this with &g->rpcs[i]; the generation stays alive until the plugin
 * finishes the call, wherever that happens. */
static void gen_rpc_release(void *arg) { mp_generation_unref(arg); }

static void gen_rpc_dispatch(void *ctx, mp_rpc_call *call, const uint8_t *req, size_t len)
{
    struct mp_gen_rpc *r = ctx;
    mp_generation *g = r->gen;
    mp_generation_ref(g);
    mp_rpc_call_set_release(call, gen_rpc_release, g);
    r->fn(g->state, call, req, len);
}

void mp_instance_activate(struct mp_instance *inst, mp_generation *g)
{
    mp_host *h = inst->host;
    /* Dropping and re-adding on the control thread is atomic for clients: no call is
     * dispatched in between. */
    mp_rpc_server_drop_owner(h->rpc, inst);
    inst->active = g;
    if (!g)
        return;
    for (size_t i = 0; i < g->n_rpc; i++) {
        int rc = mp_rpc_server_add_method(h->rpc, g->rpcs[i].path, g->rpcs[i].streaming,
                                          gen_rpc_dispatch, &g->rpcs[i], inst);
        if (rc < 0)
            mp_logf(MP_LOG_ERROR, inst->id, "cannot serve %s: %s", g->rpcs[i].path,
                    rc == -EEXIST ? "another instance serves it" : strerror(-rc));
    }
}

int mp_generation_create(struct mp_instance *inst, mp_plugin_image *img,
                         const mp_config *settings, mp_generation **out, char *err,
                         size_t err_len)
{
    mp_host *h = inst->host;
    mp_generation *g = calloc(1, sizeof(*g));
    if (!g)
        return -ENOMEM;
    g->inst = inst;
    g->image = img;
    mp_plugin_image_ref(img);
    g->seq = ++h->generation_seq;
    g->created_ns = mp_wall_ns();
    g->weight = 100;
    snprintf(g->version, sizeof(g->version), "%s+%.8s", img->version, img->hash);

    err[0] = '\0';
    h->creating = g;
    int rc = img->desc->create(&h->api, inst, settings, &g->state, err, err_len);
    h->creating = NULL;
    if (rc < 0 || (rc == 0 && !g->state && false)) {
        if (!err[0])
            snprintf(err, err_len, "create failed: %s", strerror(-rc));
        for (size_t i = 0; i < g->n_rpc; i++)
            free(g->rpcs[i].path);
        mp_plugin_image_unref(h, img);
        free(g);
        return rc < 0 ? rc : -EINVAL;
    }
    g->next = inst->gens;
    inst->gens = g;
    mp_logf(MP_LOG_INFO, inst->id, "generation %s created from %s", g->version,
            img->src_path);
    char why[600];
    if (mp_tables_push_all(inst, g, why, sizeof(why)) < 0)
        mp_logf(MP_LOG_WARN, inst->id, "%s; it starts without them", why);
    *out = g;
    return 0;
}

void mp_instance_remove(struct mp_instance *inst)
{
    mp_host *h = inst->host;
    for (struct mp_instance **pp = &h->instances; *pp; pp = &(*pp)->next)
        if (*pp == inst) {
            *pp = inst->next;
            break;
        }
    inst->removed = true;
    inst->shutting_down = true;
    if (inst->promotion_timer) {
        mp_rpc_timer_cancel(h->rpc, inst->promotion_timer);
        inst->promotion_timer = NULL;
    }
    mp_rpc_server_drop_owner(h->rpc, inst);
    inst->active = NULL;
    if (!inst->gens) {
        instance_free(inst);
        return;
    }
    mp_instance_retire_others(inst, NULL); /* may free inst with its last generation */
}
