/*
 * reload.c — bringing the running state in line with a config and the plugin
 * directory: at start, on the Reload RPC, on SIGHUP and on UpdateNLBConfig.
 *
 * The rule everywhere: validate before touching anything, and on any failure keep what
 * is serving. A broken .so, a settings section its plugin rejects, or a create() that
 * fails leaves the instance on its previous generation and the reason in the result.
 */
#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config_view.h"
#include "dp.h"
#include "host.h"
#include "log.h"
#include "marchproxy/types.pb-c.h"
#include "pb_util.h"
#include "plugin_loader.h"
#include "plugin_tables.h"

/* Collects human-readable outcome lines into one message. */
typedef struct outcome {
    char *buf;
    size_t len, used;
    int errors;
} outcome;

static void __attribute__((format(printf, 3, 4))) note(outcome *o, bool is_error, const char *fmt, ...)
{
    if (is_error)
        o->errors++;
    if (o->used + 3 >= o->len)
        return;
    if (o->used) {
        o->buf[o->used++] = ';';
        o->buf[o->used++] = ' ';
        o->buf[o->used] = '\0';
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->buf + o->used, o->len - o->used, fmt, ap);
    va_end(ap);
    if (n > 0)
        o->used += (size_t)n < o->len - o->used ? (size_t)n : o->len - o->used - 1;
}

/* One image per plugin name found in plugin_dir for this pass; each holds a reference
 * that is dropped at the end of the pass. */
typedef struct scanned {
    mp_plugin_image **images;
    size_t n;
} scanned;

static mp_plugin_image *scanned_find(const scanned *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->images[i]->name, name) == 0)
            return s->images[i];
    return NULL;
}

static void scanned_release(mp_host *h, scanned *s)
{
    for (size_t i = 0; i < s->n; i++)
        mp_plugin_image_unref(h, s->images[i]);
    free(s->images);
    s->images = NULL;
    s->n = 0;
}

static int scan_plugins(mp_host *h, const mp_host_config *cfg, const char *cache_dir,
                        scanned *out, outcome *o)
{
    char err[1024];
    int rc = mp_plugin_dir_check(cfg->plugin_dir, err, sizeof(err));
    if (rc < 0) {
        note(o, true, "%s", err);
        return rc;
    }
    char **paths;
    if ((rc = mp_plugin_list(cfg->plugin_dir, &paths, err, sizeof(err))) < 0) {
        note(o, true, "%s", err);
        return rc;
    }
    size_t count = 0;
    while (paths[count])
        count++;
    out->images = calloc(count ? count : 1, sizeof(*out->images));
    out->n = 0;
    if (!out->images) {
        mp_plugin_list_free(paths);
        return -ENOMEM;
    }
    for (size_t i = 0; i < count; i++) {
        mp_plugin_image *img;
        if (mp_plugin_image_load(h, paths[i], cache_dir, &img, err, sizeof(err)) < 0) {
            mp_err("%s", err);
            note(o, true, "%s", err);
            continue;
        }
        mp_plugin_image *dup = scanned_find(out, img->name);
        if (dup) {
            note(o, true, "%s: plugin '%s' is also provided by %s; ignoring this file",
                 paths[i], img->name, dup->src_path);
            mp_plugin_image_unref(h, img);
            continue;
        }
        out->images[out->n++] = img;
    }
    mp_plugin_list_free(paths);
    return 0;
}

/* What the config asks to run: configured instances plus autoloaded plugins. */
typedef struct wanted {
    const char *id;
    const char *plugin;
    const config_setting_t *settings;
    int32_t max_connections;
    bool autoload;
} wanted;

static size_t collect_wanted(const mp_host_config *cfg, const scanned *s, config_t *empty,
                             wanted *w, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < cfg->n_instances && n < cap; i++) {
        const mp_instance_cfg *ic = &cfg->instances[i];
        if (!ic->enabled)
            continue;
        w[n++] = (wanted){ic->id, ic->plugin, ic->settings, ic->max_connections, false};
    }
    if (!cfg->autoload)
        return n;
    for (size_t j = 0; j < s->n && n < cap; j++) {
        const char *name = s->images[j]->name;
        bool taken = false;
        for (size_t i = 0; i < cfg->n_instances; i++)
            if (strcmp(cfg->instances[i].id, name) == 0 ||
                strcmp(cfg->instances[i].plugin, name) == 0)
                taken = true;
        if (!taken)
            w[n++] = (wanted){name, name, config_root_setting(empty), 0, true};
    }
    return n;
}

static void append_instance(mp_host *h, struct mp_instance *inst)
{
    struct mp_instance **pp = &h->instances;
    while (*pp)
        pp = &(*pp)->next;
    *pp = inst;
}

static void apply_config_rate_limits(mp_host *h, const mp_host_config *cfg)
{
    for (struct mp_instance *inst = h->instances; inst; inst = inst->next)
        mp_msg_store_remove_where(&inst->rate_limits, MP_ORIGIN_CONFIG, NULL);
    for (size_t i = 0; i < cfg->n_rate_limits; i++) {
        const mp_rate_limit_cfg *rc = &cfg->rate_limits[i];
        struct mp_instance *inst = mp_host_find_instance(h, rc->instance);
        if (!inst) {
            mp_warn("rate limit %s (line %d): instance '%s' is not running", rc->id, rc->line,
                    rc->instance);
            continue;
        }
        Marchproxy__RateLimit rl = MARCHPROXY__RATE_LIMIT__INIT;
        rl.limit_id = rc->id;
        rl.target = rc->target ? rc->target : "*";
        rl.requests_per_second = rc->requests_per_second;
        rl.requests_per_minute = rc->requests_per_minute;
        rl.requests_per_hour = rc->requests_per_hour;
        rl.burst_size = rc->burst_size;
        rl.enabled = rc->enabled;
        mp_msg_item *existing = mp_msg_store_find(&inst->rate_limits, rc->id);
        if (existing && existing->origin == MP_ORIGIN_API)
            continue; /* set over gRPC since: the operator's later word wins */
        if (mp_msg_store_put(&inst->rate_limits, &rl.base, NULL, MP_ORIGIN_CONFIG) < 0)
            mp_warn("rate limit %s: cannot store", rc->id);
    }
    /* the config's limits were validated generically; a plugin that enforces them
     * itself may still refuse a target form it does not know */
    for (struct mp_instance *inst = h->instances; inst; inst = inst->next) {
        char err[600];
        if (mp_tables_push_rate_limits(inst, NULL, err, sizeof(err)) < 0)
            mp_warn("%s", err);
    }
}

/* Bring one instance to (image, settings). */
static void reconcile_instance(mp_host *h, const wanted *w, mp_plugin_image *img, outcome *o)
{
    char err[1024] = "";
    struct mp_instance *inst = mp_host_find_instance(h, w->id);
    const mp_config *settings = mp_config_of(w->settings);

    if (img->desc->validate_config(&h->api, settings, err, sizeof(err)) < 0) {
        if (!err[0])
            snprintf(err, sizeof(err), "settings rejected");
        note(o, true, "%s: %s", w->id, err);
        if (inst)
            snprintf(inst->last_error, sizeof(inst->last_error), "%s", err);
        return;
    }
    char *text = NULL;
    size_t text_len = 0;
    if (mp_config_section_to_text(w->settings, &text, &text_len) < 0) {
        note(o, true, "%s: out of memory", w->id);
        return;
    }

    bool created = false;
    if (!inst) {
        inst = mp_instance_new(h, w->id, img->name);
        if (!inst) {
            free(text);
            note(o, true, "%s: out of memory", w->id);
            return;
        }
        inst->autoloaded = w->autoload;
        append_instance(h, inst);
        created = true;
    }
    inst->max_connections = w->max_connections;

    mp_generation *cur = inst->active;
    bool same_image = cur && cur->image == img;
    bool same_settings = inst->settings_text && strcmp(inst->settings_text, text) == 0;
    if (same_image && same_settings) {
        free(text);
        const mp_plugin_descriptor *d = img->desc;
        if (MP_HAS_MEMBER(mp_plugin_descriptor, d->struct_size, reload_files) &&
            d->reload_files) {
            err[0] = '\0';
            int rc = d->reload_files(cur->state, err, sizeof(err));
            if (rc < 0)
                note(o, true, "%s: files not re-read: %s", w->id, err[0] ? err : strerror(-rc));
            else
                note(o, false, "%s: settings unchanged, files re-read", w->id);
        }
        return;
    }
    if (same_image && img->desc->reconfigure) {
        int rc = img->desc->reconfigure(cur->state, settings, err, sizeof(err));
        if (rc < 0) {
            note(o, true, "%s: new settings refused: %s", w->id, err[0] ? err : strerror(-rc));
            snprintf(inst->last_error, sizeof(inst->last_error), "%s", err);
            free(text);
            return;
        }
        free(inst->settings_text);
        inst->settings_text = text;
        inst->config_updated_ns = mp_wall_ns();
        note(o, false, "%s: settings applied", w->id);
        return;
    }

    mp_generation *g;
    int rc = mp_generation_create(inst, img, settings, &g, err, sizeof(err));
    if (rc < 0) {
        mp_logf(MP_LOG_ERROR, w->id, "create failed: %s", err);
        note(o, true, "%s: %s %s failed to start: %s%s", w->id, img->name, img->version, err,
             cur ? " (previous generation keeps serving)" : "");
        snprintf(inst->last_error, sizeof(inst->last_error), "%s", err);
        mp_instance_refresh_health(inst, false);
        free(text);
        return;
    }
    char old_version[MP_VERSION_LEN];
    snprintf(old_version, sizeof(old_version), "%s", cur ? cur->version : "");
    free(inst->settings_text);
    inst->settings_text = text;
    inst->config_updated_ns = mp_wall_ns();
    inst->last_error[0] = '\0';
    mp_instance_activate(inst, g);
    if (!cur || strcmp(cur->version, g->version) != 0) {
        snprintf(inst->previous_version, sizeof(inst->previous_version), "%s", old_version);
        snprintf(inst->stable_version, sizeof(inst->stable_version), "%s", g->version);
    }
    /* The old generation drains and is unloaded; its private copy stays on disk so
     * Rollback and SetTrafficWeight can bring that version back. */
    if (cur && cur->image != img)
        mp_instance_keep_previous(inst, cur);
    mp_instance_settle(inst, g);
    mp_instance_refresh_health(inst, false);
    if (created || !old_version[0])
        note(o, false, "%s: started %s", w->id, g->version);
    else
        note(o, false, "%s: %s -> %s", w->id, old_version, g->version);
}

/* mkdir -p: missing parents get 0755, the directory itself 0700 (it holds private
 * plugin copies and instance data). */
static int make_dirs(const char *path, char *err, size_t err_len)
{
    char buf[4096];
    if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf)) {
        snprintf(err, err_len, "path too long: %.64s...", path);
        return -ENAMETOOLONG;
    }
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) < 0 && errno != EEXIST) {
            int e = errno;
            snprintf(err, err_len, "cannot create %s: %s", buf, strerror(e));
            return -e;
        }
        *p = '/';
    }
    if (mkdir(buf, 0700) < 0 && errno != EEXIST) {
        int e = errno;
        snprintf(err, err_len, "cannot create %s: %s", buf, strerror(e));
        return -e;
    }
    return 0;
}

int mp_state_dirs_ensure(const mp_host_config *cfg, char *cache_dir, size_t cache_len,
                         char *err, size_t err_len)
{
    int rc = make_dirs(cfg->state_dir, err, err_len);
    if (rc < 0)
        return rc;
    snprintf(cache_dir, cache_len, "%s/plugin-cache", cfg->state_dir);
    return make_dirs(cache_dir, err, err_len);
}

int mp_host_apply_config(mp_host *h, mp_host_config *cfg, const char *only_id, char *msg,
                         size_t msg_len)
{
    outcome o = {.buf = msg, .len = msg_len, .used = 0, .errors = 0};
    msg[0] = '\0';
    char err[1024];
    char cache_dir[4096];
    if (mp_state_dirs_ensure(cfg, cache_dir, sizeof(cache_dir), err, sizeof(err)) < 0) {
        note(&o, true, "%s", err);
        mp_config_free(cfg);
        return -EIO;
    }
    if (only_id && !mp_host_find_instance(h, only_id) && !mp_config_find_instance(cfg, only_id)) {
        char ids[512];
        mp_host_known_ids(h, ids, sizeof(ids));
        note(&o, true, "unknown instance '%s' (known: %s)", only_id, ids);
        mp_config_free(cfg);
        return -ENOENT;
    }

    scanned s = {0};
    if (scan_plugins(h, cfg, cache_dir, &s, &o) < 0 && !s.images) {
        /* Without a readable plugin_dir nothing can be reconciled; keep everything. */
        mp_config_free(cfg);
        return -EIO;
    }

    config_t empty;
    config_init(&empty);
    size_t cap = cfg->n_instances + s.n + 1;
    wanted *w = calloc(cap, sizeof(*w));
    size_t n_w = w ? collect_wanted(cfg, &s, &empty, w, cap) : 0;

    h->applying_cfg = cfg; /* what create() sees through instance_state_dir */
    for (size_t i = 0; i < n_w; i++) {
        if (only_id && strcmp(w[i].id, only_id) != 0)
            continue;
        mp_plugin_image *img = scanned_find(&s, w[i].plugin);
        if (!img) {
            struct mp_instance *inst = mp_host_find_instance(h, w[i].id);
            note(&o, true, "%s: no plugin named '%s' in %s%s", w[i].id, w[i].plugin,
                 cfg->plugin_dir, inst && inst->active ? " (current generation keeps serving)" : "");
            continue;
        }
        reconcile_instance(h, &w[i], img, &o);
    }
    /* Instances the config no longer asks for. */
    for (struct mp_instance *inst = h->instances, *next; inst; inst = next) {
        next = inst->next;
        if (only_id && strcmp(inst->id, only_id) != 0)
            continue;
        bool keep = false;
        for (size_t i = 0; i < n_w; i++)
            if (strcmp(w[i].id, inst->id) == 0)
                keep = true;
        if (!keep) {
            note(&o, false, "%s: removed", inst->id);
            mp_instance_remove(inst);
        }
    }
    free(w);
    config_destroy(&empty);

    mp_host_config *old = h->cfg;
    if (old && mp_config_listeners_differ(old, cfg))
        note(&o, false, "listener changes take effect after a restart");
    h->cfg = cfg;
    h->applying_cfg = NULL;
    h->config_loaded_ns = mp_wall_ns();
    mp_log_set_level((mp_log_level)cfg->log_level);
    apply_config_rate_limits(h, cfg);
    if (mp_nlb_load_config_routes(h, err, sizeof(err)) < 0)
        note(&o, true, "routes: %s", err);
    mp_config_free(old);
    scanned_release(h, &s);
    /* Workers switch to the new generations now rather than at the next tick; the old
     * snapshot's references are what keeps retired code loaded. */
    if (h->n_workers)
        dp_publish(h);
    if (!o.used)
        note(&o, false, "no changes");
    return o.errors ? -EINVAL : 0;
}

/* Reads the whole config file (bounded) so the bytes served by GetNLBConfig are the
 * ones that were parsed. */
static int read_file(const char *path, char **out, size_t *out_len, char *err, size_t err_len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        snprintf(err, err_len, "%s: %s", path, strerror(e));
        return -e;
    }
    const size_t limit = 16u << 20;
    char *buf = malloc(limit + 1);
    size_t n = buf ? fread(buf, 1, limit + 1, f) : 0;
    int failed = ferror(f);
    fclose(f);
    if (!buf)
        return -ENOMEM;
    if (failed || n > limit) {
        free(buf);
        snprintf(err, err_len, "%s: %s", path, failed ? "read error" : "larger than 16 MiB");
        return -EIO;
    }
    buf[n] = '\0';
    *out = buf;
    *out_len = n;
    return 0;
}

int mp_host_read_config(const char *path, mp_host_config **cfg, char **text, size_t *text_len,
                        char *err, size_t err_len)
{
    int rc = read_file(path, text, text_len, err, err_len);
    if (rc < 0)
        return rc;
    char *copy = strdup(path);
    char *resolved = copy ? realpath(dirname(copy), NULL) : NULL;
    free(copy);
    if (!resolved) {
        snprintf(err, err_len, "%s: cannot resolve its directory", path);
        free(*text);
        *text = NULL;
        return -ENOENT;
    }
    rc = mp_config_load_string(*text, path, resolved, cfg, err, err_len);
    free(resolved);
    if (rc < 0) {
        free(*text);
        *text = NULL;
    }
    return rc;
}

int mp_host_adopt_config(mp_host *h, mp_host_config *cfg, char *text, size_t text_len,
                         const char *only_id, char *msg, size_t msg_len)
{
    uint64_t loaded_before = h->config_loaded_ns;
    int rc = mp_host_apply_config(h, cfg, only_id, msg, msg_len);
    /* Apply makes the config the running one even when parts were refused (those keep
     * their old generation); GetNLBConfig must then show the bytes it came from. */
    if (h->config_loaded_ns != loaded_before) {
        free(h->config_text);
        h->config_text = text;
        h->config_text_len = text_len;
    } else {
        free(text);
    }
    return rc;
}

int mp_host_reload(mp_host *h, const char *only_id, char *msg, size_t msg_len)
{
    mp_host_config *cfg;
    char *text;
    size_t len;
    h->reloads++;
    int rc = mp_host_read_config(h->config_path, &cfg, &text, &len, msg, msg_len);
    if (rc < 0) {
        h->reload_failures++;
        mp_err("reload refused, the running configuration stays: %s", msg);
        return rc;
    }
    rc = mp_host_adopt_config(h, cfg, text, len, only_id, msg, msg_len);
    if (rc < 0) {
        h->reload_failures++;
        mp_err("reload: %s", msg);
    } else {
        mp_info("reload: %s", msg);
    }
    return rc;
}

int mp_host_check_config(const char *path, char *err, size_t err_len)
{
    mp_host_config *cfg;
    char *text;
    size_t len;
    int rc = mp_host_read_config(path, &cfg, &text, &len, err, err_len);
    if (rc < 0)
        return rc;
    free(text);

    /* A throwaway host: images load from a temporary cache so a check never writes
     * into the real state_dir. */
    mp_host h;
    memset(&h, 0, sizeof(h));
    mp_host_api_init(&h, &h.api);
    char cache[] = "/tmp/marchproxy-check-XXXXXX";
    if (!mkdtemp(cache)) {
        snprintf(err, err_len, "cannot create a temporary directory: %s", strerror(errno));
        mp_config_free(cfg);
        return -EIO;
    }
    outcome o = {.buf = err, .len = err_len, .used = 0, .errors = 0};
    err[0] = '\0';
    scanned s = {0};
    scan_plugins(&h, cfg, cache, &s, &o);
    config_t empty;
    config_init(&empty);
    size_t cap = cfg->n_instances + s.n + 1;
    wanted *w = calloc(cap, sizeof(*w));
    size_t n_w = w ? collect_wanted(cfg, &s, &empty, w, cap) : 0;
    for (size_t i = 0; i < n_w; i++) {
        mp_plugin_image *img = scanned_find(&s, w[i].plugin);
        char why[1024] = "";
        if (!img)
            note(&o, true, "%s:%d: instance %s: no plugin named '%s' in %s", cfg->path,
                 mp_config_find_instance(cfg, w[i].id) ? mp_config_find_instance(cfg, w[i].id)->line : 0,
                 w[i].id, w[i].plugin, cfg->plugin_dir);
        else if (img->desc->validate_config(&h.api, mp_config_of(w[i].settings), why,
                                            sizeof(why)) < 0)
            note(&o, true, "%s", why[0] ? why : "settings rejected");
    }
    free(w);
    config_destroy(&empty);
    scanned_release(&h, &s);
    rmdir(cache);
    mp_config_free(cfg);
    return o.errors ? -EINVAL : 0;
}

int mp_host_apply_instance_settings(mp_host *h, struct mp_instance *inst,
                                    const config_setting_t *settings, char *msg, size_t msg_len)
{
    outcome o = {.buf = msg, .len = msg_len, .used = 0, .errors = 0};
    msg[0] = '\0';
    if (!inst->active) {
        note(&o, true, "%s has no running generation to configure", inst->id);
        return -ENOENT;
    }
    wanted w = {inst->id, inst->plugin, settings, inst->max_connections, inst->autoloaded};
    mp_plugin_image *img = inst->active->image;
    mp_plugin_image_ref(img); /* reconcile may retire the generation holding it */
    reconcile_instance(h, &w, img, &o);
    mp_plugin_image_unref(h, img);
    if (!o.used)
        note(&o, false, "settings unchanged");
    return o.errors ? -EINVAL : 0;
}
