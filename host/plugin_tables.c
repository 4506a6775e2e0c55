/*
 * plugin_tables.c — handing an instance's ModuleService tables (routes and rate limits)
 * to its plugin generations through ABI 1.2's routes_changed / rate_limits_changed.
 * The stored protobuf messages stay the host's; a plugin sees flat views that live in
 * an arena for the duration of the call. A plugin that refuses a table keeps the one it
 * had, and the RPC that tried to change it fails with the plugin's reason.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "arena.h"
#include "marchproxy/module.pb-c.h"
#include "pb_util.h"
#include "log.h"
#include "plugin_tables.h"

static const mp_plugin_descriptor *desc_of(const mp_generation *g)
{
    return g->image->desc;
}

bool mp_generation_takes_routes(const mp_generation *g)
{
    const mp_plugin_descriptor *d = desc_of(g);
    return MP_HAS_MEMBER(mp_plugin_descriptor, d->struct_size, routes_changed) &&
           d->routes_changed;
}

bool mp_generation_limits_requests(const mp_generation *g)
{
    const mp_plugin_descriptor *d = desc_of(g);
    return MP_HAS_MEMBER(mp_plugin_descriptor, d->struct_size, rate_limits_changed) &&
           d->rate_limits_changed;
}

/* A map<string, string> field as two parallel string arrays. */
static void map_arrays(mp_arena *a, void *const *entries, size_t n, const char *const **names,
                       const char *const **values)
{
    const char **k = mp_arena_alloc(a, (n + 1) * sizeof(char *));
    const char **v = mp_arena_alloc(a, (n + 1) * sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        mp_pb_map_entry_str(entries[i], &k[i], &v[i]);
        k[i] = k[i] ? k[i] : "";
        v[i] = v[i] ? v[i] : "";
    }
    *names = k;
    *values = v;
}

static const mp_route_view *route_view(mp_arena *a, const Marchproxy__Route *r)
{
    mp_route_view *v = mp_arena_alloc(a, sizeof(*v));
    memset(v, 0, sizeof(*v));
    v->struct_size = sizeof(*v);
    v->route_id = r->route_id;
    v->protocol = (mp_protocol)r->protocol;
    v->source_pattern = r->source_pattern;
    v->destination_pattern = r->destination_pattern;
    v->source_port = r->source_port;
    v->destination_port = r->destination_port;
    v->path_pattern = r->path_pattern;
    v->priority = r->priority;
    v->header_count = r->n_headers;
    map_arrays(a, (void *const *)r->headers, r->n_headers, &v->header_names,
               &v->header_values);
    v->metadata_count = r->n_metadata;
    map_arrays(a, (void *const *)r->metadata, r->n_metadata, &v->metadata_names,
               &v->metadata_values);
    return v;
}

static const mp_rate_limit_view *limit_view(mp_arena *a, const Marchproxy__RateLimit *rl)
{
    mp_rate_limit_view *v = mp_arena_alloc(a, sizeof(*v));
    memset(v, 0, sizeof(*v));
    v->struct_size = sizeof(*v);
    v->limit_id = rl->limit_id;
    v->target = *rl->target ? rl->target : "*";
    v->requests_per_second = rl->requests_per_second;
    v->requests_per_minute = rl->requests_per_minute;
    v->requests_per_hour = rl->requests_per_hour;
    v->burst_size = rl->burst_size;
    v->enabled = rl->enabled;
    return v;
}

typedef enum { TABLE_ROUTES, TABLE_LIMITS } table_kind;

/* Calls the generation's callback for `kind` with the views of `store`. 0 when the
 * plugin has no such callback. */
static int push_one(mp_generation *g, table_kind kind, const mp_msg_store *store, char *err,
                    size_t err_len)
{
    if (kind == TABLE_ROUTES ? !mp_generation_takes_routes(g) : !mp_generation_limits_requests(g))
        return 0;
    mp_arena *a = mp_arena_new();
    if (!a)
        return -ENOMEM;
    const void **views = mp_arena_alloc(a, (store->n + 1) * sizeof(void *));
    for (size_t i = 0; i < store->n; i++)
        views[i] = kind == TABLE_ROUTES
                       ? (const void *)route_view(a, (const Marchproxy__Route *)store->items[i]->msg)
                       : (const void *)limit_view(a, (const Marchproxy__RateLimit *)store->items[i]->msg);
    err[0] = '\0';
    const mp_plugin_descriptor *d = desc_of(g);
    int rc = kind == TABLE_ROUTES
                 ? d->routes_changed(g->state, (const mp_route_view *const *)views, store->n,
                                     err, err_len)
                 : d->rate_limits_changed(g->state, (const mp_rate_limit_view *const *)views,
                                          store->n, err, err_len);
    mp_arena_free(a);
    if (rc < 0 && !err[0])
        snprintf(err, err_len, "refused (%s)", strerror(-rc));
    return rc < 0 ? rc : 0;
}

/* Every live generation of inst (or only `only`) gets the table. A refusal stops at
 * that generation; the caller restores the previous table and pushes it again, so
 * the generations that had accepted return to it. */
static int push_table(struct mp_instance *inst, table_kind kind, const mp_msg_store *store,
                      mp_generation *only, char *err, size_t err_len)
{
    for (mp_generation *g = inst->gens; g; g = g->next) {
        if ((only && g != only) || atomic_load(&g->retired))
            continue;
        char why[512];
        int rc = push_one(g, kind, store, why, sizeof(why));
        if (rc < 0) {
            snprintf(err, err_len, "%s (%s) refused the %s: %s", inst->id, g->version,
                     kind == TABLE_ROUTES ? "routes" : "rate limits", why);
            return rc;
        }
    }
    return 0;
}

int mp_tables_push_routes(struct mp_instance *inst, mp_generation *only, char *err,
                          size_t err_len)
{
    return push_table(inst, TABLE_ROUTES, &inst->routes, only, err, err_len);
}

int mp_tables_push_rate_limits(struct mp_instance *inst, mp_generation *only, char *err,
                               size_t err_len)
{
    return push_table(inst, TABLE_LIMITS, &inst->rate_limits, only, err, err_len);
}

int mp_tables_push_all(struct mp_instance *inst, mp_generation *only, char *err,
                       size_t err_len)
{
    int rc = mp_tables_push_routes(inst, only, err, err_len);
    if (rc == 0)
        rc = mp_tables_push_rate_limits(inst, only, err, err_len);
    return rc;
}

/* Whether any live generation of inst takes the table `store` belongs to. */
static bool anyone_takes(const struct mp_instance *inst, table_kind kind)
{
    for (const mp_generation *g = inst->gens; g; g = g->next)
        if (!atomic_load(&g->retired) &&
            (kind == TABLE_ROUTES ? mp_generation_takes_routes(g)
                                  : mp_generation_limits_requests(g)))
            return true;
    return false;
}

static table_kind kind_of(const struct mp_instance *inst, const mp_msg_store *table)
{
    return table == &inst->routes ? TABLE_ROUTES : TABLE_LIMITS;
}

int mp_table_change_begin(struct mp_instance *inst, mp_msg_store *table, mp_table_change *t)
{
    memset(t, 0, sizeof(*t));
    if (!anyone_takes(inst, kind_of(inst, table)))
        return 0;
    int rc = mp_msg_store_copy(&t->saved, table);
    if (rc == 0)
        t->saved_valid = true;
    return rc;
}

int mp_table_change_commit(struct mp_instance *inst, mp_msg_store *table, mp_table_change *t,
                           char *err, size_t err_len)
{
    if (!t->saved_valid)
        return 0;
    table_kind kind = kind_of(inst, table);
    int rc = push_table(inst, kind, table, NULL, err, err_len);
    if (rc < 0) {
        mp_msg_store_replace(table, &t->saved);
        char again[512];
        if (push_table(inst, kind, table, NULL, again, sizeof(again)) < 0)
            mp_logf(MP_LOG_ERROR, inst->id, "the previous table was refused too: %s", again);
    } else {
        mp_msg_store_destroy(&t->saved);
    }
    t->saved_valid = false;
    return rc;
}
