/*
 * state_persist.c — see state_persist.h. Each table is one value under one key, so a
 * change is a single durable put and a crash leaves either the old or the new table,
 * never half of one:
 *
 *   mp/instance/<id>/routes       the instance's routes
 *   mp/instance/<id>/rate_limits  its rate limits set over gRPC (the config's are the
 *                                 config's)
 *   mp/nlb/routes                 NLB routes from UpdateRouting and module registrations
 *   mp/nlb/modules                registered external modules (owner = registration id)
 *   mp/nlb/module_health          their heartbeat settings (owner = module id)
 *
 * A value is "MPS1" then, per entry: origin (1 byte), owner length (u32 BE), owner,
 * message length (u32 BE), the packed protobuf message. Packed protobuf keeps fields
 * this build does not know, so a newer host's state survives an older one.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "marchproxy/module.pb-c.h"
#include "plugin_tables.h"
#include "state_persist.h"

#define MAGIC "MPS1"
#define KEY_MAX 300

/* What was last written under a key, to skip puts that would change nothing. */
typedef struct written {
    char key[KEY_MAX];
    uint64_t hash;
    struct written *next;
} written;

struct mp_state_cache {
    written *keys;
};

typedef struct {
    uint8_t *p;
    size_t len, cap;
    bool failed;
} buf;

static void buf_put(buf *b, const void *data, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void buf_u32(buf *b, size_t v)
{
    uint32_t be = htonl((uint32_t)v);
    buf_put(b, &be, 4);
}

static void buf_entry(buf *b, mp_origin origin, const char *owner, const ProtobufCMessage *m)
{
    uint8_t o = (uint8_t)origin;
    size_t olen = owner ? strlen(owner) : 0;
    size_t mlen = protobuf_c_message_get_packed_size(m);
    buf_put(b, &o, 1);
    buf_u32(b, olen);
    buf_put(b, owner, olen);
    buf_u32(b, mlen);
    if (b->failed || b->len + mlen > b->cap) {
        buf_put(b, NULL, 0);
        uint8_t *tmp = malloc(mlen ? mlen : 1);
        if (!tmp) {
            b->failed = true;
            return;
        }
        protobuf_c_message_pack(m, tmp);
        buf_put(b, tmp, mlen);
        free(tmp);
        return;
    }
    protobuf_c_message_pack(m, b->p + b->len);
    b->len += mlen;
}

/* One decoded entry; owner is NUL-terminated in a private copy, msg is unpacked. */
typedef int (*entry_fn)(mp_host *h, void *ctx, mp_origin origin, const char *owner,
                        ProtobufCMessage *msg);

static int blob_each(mp_host *h, const char *key, const uint8_t *p, size_t len,
                     const ProtobufCMessageDescriptor *desc, entry_fn fn, void *ctx)
{
    if (len < 4 || memcmp(p, MAGIC, 4) != 0) {
        mp_warn("state store: %s is not a MarchProxy table; ignored", key);
        return -EINVAL;
    }
    size_t off = 4;
    while (off < len) {
        uint32_t olen, mlen;
        if (len - off < 5)
            goto corrupt;
        mp_origin origin = (mp_origin)p[off++];
        memcpy(&olen, p + off, 4);
        olen = ntohl(olen);
        off += 4;
        if (len - off < (size_t)olen + 4)
            goto corrupt;
        char owner[256];
        if (olen >= sizeof(owner))
            goto corrupt;
        memcpy(owner, p + off, olen);
        owner[olen] = '\0';
        off += olen;
        memcpy(&mlen, p + off, 4);
        mlen = ntohl(mlen);
        off += 4;
        if (len - off < mlen)
            goto corrupt;
        ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, mlen, p + off);
        off += mlen;
        if (!m)
            goto corrupt;
        int rc = fn(h, ctx, origin, owner, m);
        protobuf_c_message_free_unpacked(m, NULL);
        if (rc < 0)
            mp_warn("state store: %s: an entry could not be restored: %s", key, strerror(-rc));
    }
    return 0;
corrupt:
    mp_warn("state store: %s is damaged after byte %zu; the rest is ignored", key, off);
    return -EINVAL;
}

/* ------------------------------------------------------------------ the store */

static mp_generation *store_gen(mp_host *h, const mp_state_store_ops **ops)
{
    if (!h->cfg || !h->cfg->state_store)
        return NULL;
    struct mp_instance *inst = mp_host_find_instance(h, h->cfg->state_store);
    if (!inst || !inst->active)
        return NULL;
    const mp_plugin_descriptor *d = inst->active->image->desc;
    if (!MP_HAS_MEMBER(mp_plugin_descriptor, d->struct_size, state_store) || !d->state_store)
        return NULL;
    *ops = d->state_store;
    return inst->active;
}

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static written *cache_slot(mp_host *h, const char *key)
{
    if (!h->state_cache && !(h->state_cache = calloc(1, sizeof(*h->state_cache))))
        return NULL;
    for (written *w = h->state_cache->keys; w; w = w->next)
        if (strcmp(w->key, key) == 0)
            return w;
    written *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    snprintf(w->key, sizeof(w->key), "%s", key);
    w->hash = 0; /* never written: the first save writes */
    w->next = h->state_cache->keys;
    h->state_cache->keys = w;
    return w;
}

/* Writes b under key unless the same bytes were written last time. */
static int put_if_changed(mp_host *h, const char *key, const buf *b)
{
    const mp_state_store_ops *ops;
    mp_generation *g = store_gen(h, &ops);
    if (!g)
        return 0;
    if (b->failed) {
        mp_err("state store: out of memory building %s; not saved", key);
        return -ENOMEM;
    }
    written *w = cache_slot(h, key);
    uint64_t hash = fnv1a(b->p, b->len) | 1; /* never 0, the "unwritten" mark */
    if (w && w->hash == hash)
        return 0;
    char err[512] = "";
    mp_generation_ref(g);
    int rc = ops->put(g->state, key, b->p, b->len, err, sizeof(err));
    mp_generation_unref(g);
    if (rc < 0) {
        mp_err("state store: cannot save %s: %s", key, err[0] ? err : strerror(-rc));
        return rc;
    }
    if (w)
        w->hash = hash;
    return 0;
}

typedef bool (*keep_fn)(const mp_msg_item *it);

static bool keep_all(const mp_msg_item *it)
{
    (void)it;
    return true;
}

static bool keep_api(const mp_msg_item *it) { return it->origin == MP_ORIGIN_API; }

static bool keep_not_config(const mp_msg_item *it) { return it->origin != MP_ORIGIN_CONFIG; }

static int save_store(mp_host *h, const char *key, const mp_msg_store *s, keep_fn keep)
{
    buf b = {0};
    buf_put(&b, MAGIC, 4);
    for (size_t i = 0; i < s->n; i++)
        if (keep(s->items[i]))
            buf_entry(&b, s->items[i]->origin, s->items[i]->owner, s->items[i]->msg);
    int rc = put_if_changed(h, key, &b);
    free(b.p);
    return rc;
}

static int save_modules(mp_host *h)
{
    buf mods = {0}, health = {0};
    buf_put(&mods, MAGIC, 4);
    buf_put(&health, MAGIC, 4);
    for (const mp_ext_module *m = h->nlb.ext; m; m = m->next) {
        mp_msg_item *it = mp_msg_store_find(&h->nlb.modules, m->instance_id);
        if (!it)
            continue;
        buf_entry(&mods, MP_ORIGIN_MODULE, m->registration_id, it->msg);
        Marchproxy__HealthCheckConfig hc = MARCHPROXY__HEALTH_CHECK_CONFIG__INIT;
        hc.interval_seconds = m->interval_s;
        hc.timeout_seconds = m->timeout_s;
        hc.unhealthy_threshold = m->unhealthy_threshold;
        hc.healthy_threshold = m->healthy_threshold;
        buf_entry(&health, MP_ORIGIN_MODULE, m->instance_id, &hc.base);
    }
    /* health first: a restore that finds a module without it uses the defaults */
    int rc = put_if_changed(h, "mp/nlb/module_health", &health);
    int rc2 = put_if_changed(h, "mp/nlb/modules", &mods);
    free(mods.p);
    free(health.p);
    return rc < 0 ? rc : rc2;
}

int mp_state_save(mp_host *h)
{
    const mp_state_store_ops *ops;
    if (!store_gen(h, &ops))
        return 0;
    int rc = 0, r;
    char key[KEY_MAX];
    for (struct mp_instance *inst = h->instances; inst; inst = inst->next) {
        snprintf(key, sizeof(key), "mp/instance/%s/routes", inst->id);
        if ((r = save_store(h, key, &inst->routes, keep_all)) < 0)
            rc = r;
        snprintf(key, sizeof(key), "mp/instance/%s/rate_limits", inst->id);
        if ((r = save_store(h, key, &inst->rate_limits, keep_api)) < 0)
            rc = r;
    }
    if ((r = save_store(h, "mp/nlb/routes", &h->nlb.routes, keep_not_config)) < 0)
        rc = r;
    if ((r = save_modules(h)) < 0)
        rc = r;
    return rc;
}

/* ------------------------------------------------------------------ restore */

static int restore_into(mp_host *h, void *ctx, mp_origin origin, const char *owner,
                        ProtobufCMessage *msg)
{
    (void)h;
    mp_msg_store *s = ctx;
    const mp_msg_item *it = mp_msg_store_find(s, *(char **)((char *)msg + s->key_field->offset));
    if (it && it->origin == MP_ORIGIN_CONFIG)
        return 0; /* the config file defines it now */
    return mp_msg_store_put(s, msg, *owner ? owner : NULL, origin);
}

typedef struct {
    char ids[MP_MAX_EXTERNAL_MODULES][128];
    Marchproxy__HealthCheckConfig *hc[MP_MAX_EXTERNAL_MODULES];
    size_t n;
} health_list;

static int collect_health(mp_host *h, void *ctx, mp_origin origin, const char *owner,
                          ProtobufCMessage *msg)
{
    (void)h;
    (void)origin;
    health_list *l = ctx;
    if (l->n >= MP_MAX_EXTERNAL_MODULES)
        return -ENOSPC;
    Marchproxy__HealthCheckConfig *copy = (Marchproxy__HealthCheckConfig *)mp_pb_clone(msg);
    if (!copy)
        return -ENOMEM;
    snprintf(l->ids[l->n], sizeof(l->ids[0]), "%s", owner);
    l->hc[l->n++] = copy;
    return 0;
}

static int restore_module(mp_host *h, void *ctx, mp_origin origin, const char *owner,
                          ProtobufCMessage *msg)
{
    (void)origin;
    health_list *l = ctx;
    const Marchproxy__ModuleInstance *mi = (const Marchproxy__ModuleInstance *)msg;
    const Marchproxy__HealthCheckConfig *hc = NULL;
    for (size_t i = 0; i < l->n; i++)
        if (mi->instance_id && strcmp(l->ids[i], mi->instance_id) == 0)
            hc = l->hc[i];
    int rc = mp_nlb_restore_module(h, mi, owner, hc);
    if (rc == 0)
        mp_info("state store: module %s restored; it keeps its registration id", mi->instance_id);
    return rc == -EEXIST ? 0 : rc;
}

typedef struct {
    mp_host *h;
    health_list *health;
    const uint8_t *modules;
    size_t modules_len;
    size_t loaded;
} restore_ctx;

static int restore_key(void *vctx, const char *key, const void *value, size_t len)
{
    restore_ctx *rc = vctx;
    mp_host *h = rc->h;
    rc->loaded++;
    /* what was read is what is stored: the first save writes only real changes */
    written *w = cache_slot(h, key);
    if (w)
        w->hash = fnv1a(value, len) | 1;
    if (strcmp(key, "mp/nlb/routes") == 0) {
        blob_each(h, key, value, len, &marchproxy__route__descriptor, restore_into,
                  &h->nlb.routes);
        return 0;
    }
    if (strcmp(key, "mp/nlb/module_health") == 0) {
        blob_each(h, key, value, len, &marchproxy__health_check_config__descriptor,
                  collect_health, rc->health);
        return 0;
    }
    if (strcmp(key, "mp/nlb/modules") == 0) {
        /* after module_health, which the scan's key order puts first */
        blob_each(h, key, value, len, &marchproxy__module_instance__descriptor, restore_module,
                  rc->health);
        return 0;
    }
    const char *rest = key + strlen("mp/instance/");
    if (strncmp(key, "mp/instance/", 12) != 0)
        return 0;
    const char *slash = strchr(rest, '/');
    if (!slash || slash - rest >= 128)
        return 0;
    char id[128];
    memcpy(id, rest, (size_t)(slash - rest));
    id[slash - rest] = '\0';
    struct mp_instance *inst = mp_host_find_instance(h, id);
    if (!inst) {
        mp_info("state store: %s belongs to no running instance; kept for when it returns", key);
        return 0;
    }
    if (strcmp(slash, "/routes") == 0)
        blob_each(h, key, value, len, &marchproxy__route__descriptor, restore_into,
                  &inst->routes);
    else if (strcmp(slash, "/rate_limits") == 0)
        blob_each(h, key, value, len, &marchproxy__rate_limit__descriptor, restore_into,
                  &inst->rate_limits);
    return 0;
}

int mp_state_restore(mp_host *h, char *err, size_t err_len)
{
    if (!h->cfg->state_store)
        return 0;
    struct mp_instance *inst = mp_host_find_instance(h, h->cfg->state_store);
    const mp_state_store_ops *ops;
    if (!inst || !inst->active) {
        snprintf(err, err_len, "%s:%d: host.state_store '%s' is not a running instance",
                 h->cfg->path, h->cfg->state_store_line, h->cfg->state_store);
        return -ENOENT;
    }
    mp_generation *g = store_gen(h, &ops);
    if (!g) {
        snprintf(err, err_len,
                 "%s:%d: host.state_store '%s': plugin %s offers no state store (ABI 1.2)",
                 h->cfg->path, h->cfg->state_store_line, inst->id, inst->plugin);
        return -EINVAL;
    }
    health_list *health = calloc(1, sizeof(*health));
    if (!health)
        return -ENOMEM;
    restore_ctx ctx = {.h = h, .health = health};
    char why[512] = "";
    int rc = ops->scan(g->state, "mp/", restore_key, &ctx, why, sizeof(why));
    for (size_t i = 0; i < health->n; i++)
        protobuf_c_message_free_unpacked(&health->hc[i]->base, NULL);
    free(health);
    if (rc < 0) {
        snprintf(err, err_len, "state store %s: cannot read: %s", inst->id,
                 why[0] ? why : strerror(-rc));
        return rc;
    }
    for (struct mp_instance *i = h->instances; i; i = i->next) {
        char refusal[600];
        if (mp_tables_push_all(i, NULL, refusal, sizeof(refusal)) < 0)
            mp_warn("state store: %s", refusal);
    }
    mp_info("state store: %zu table(s) read back from instance %s", ctx.loaded, inst->id);
    mp_state_save(h);
    mp_host_touch(h);
    return 0;
}

void mp_state_forget(mp_host *h)
{
    if (!h->state_cache)
        return;
    while (h->state_cache->keys) {
        written *w = h->state_cache->keys;
        h->state_cache->keys = w->next;
        free(w);
    }
    free(h->state_cache);
    h->state_cache = NULL;
}
