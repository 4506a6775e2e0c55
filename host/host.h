/*
 * host.h — the state of one marchproxy process as the control plane sees it: the
 * running config, plugin images, instances and their generations, the NLB routing
 * table and the registry of external modules. All of it is owned by the control
 * thread; other threads only touch the atomics in mp_instance_stats and generation
 * reference counts.
 *
 * Vocabulary:
 *   image       one loaded .so version (dlopen handle of a private, hash-named copy)
 *   instance    one configured use of a plugin, with an id ("alb", "alb-internal")
 *   generation  an instance's state created by one image; reloads make new ones, and
 *               blue/green keeps two serving side by side with weights
 */
#ifndef MP_HOST_HOST_H
#define MP_HOST_HOST_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "histogram.h"
#include "marchproxy/plugin.h"
#include "msg_store.h"
#include "proc_stats.h"
#include "rpc_server.h"

#define MP_MAX_ROUTES_PER_INSTANCE 10000
#define MP_MAX_RATE_LIMITS_PER_INSTANCE 10000
#define MP_MAX_NLB_ROUTES 100000
#define MP_MAX_EXTERNAL_MODULES 1024
#define MP_MAX_RPC_PER_GENERATION 64
#define MP_VERSION_LEN 96
#define MP_MAX_WORKERS MP_CONFIG_MAX_WORKERS

typedef struct mp_host mp_host;
typedef struct mp_plugin_image mp_plugin_image;
typedef struct mp_generation mp_generation;

struct mp_plugin_image {
    char *name;       /* descriptor name */
    char *version;    /* descriptor version */
    char *src_path;   /* the file in plugin_dir it was read from */
    char *copy_path;  /* the private copy that was dlopen'ed */
    char hash[65];    /* SHA-256 of the file, hex */
    void *dl;
    const mp_plugin_descriptor *desc;
    int refs;         /* generations using it + 1 while it is its file's current image */
    bool keep_copy;   /* an instance keeps the private copy for Rollback: do not unlink */
    mp_plugin_image *next;
};

struct mp_generation {
    struct mp_instance *inst;
    mp_plugin_image *image;
    void *state;                /* the plugin's, from create() */
    uint64_t seq;               /* host-wide creation order */
    char version[MP_VERSION_LEN]; /* "<plugin version>+<hash prefix>" — unique per image */
    int32_t weight;             /* share of new connections, 0..100 */
    _Atomic int refs;           /* calls and connections in flight */
    _Atomic bool retired;       /* takes no new work; destroyed when refs reach 0 */
    _Atomic bool destroying;    /* claimed by whoever saw refs == 0 after retirement */
    uint64_t created_ns;
    struct mp_gen_rpc {          /* methods registered by create(); the ctx the server */
        mp_generation *gen;      /* hands back to the dispatcher is &rpcs[i] */
        char *path;              /* owned */
        bool streaming;
        mp_rpc_handler fn;
    } rpcs[MP_MAX_RPC_PER_GENERATION];
    size_t n_rpc;
    mp_generation *next;
};

typedef struct mp_instance_stats {
    mp_histogram latency;
    _Atomic uint64_t requests, ok, failed, bytes_in, bytes_out, conns_total;
    _Atomic int64_t conns_active;
    _Atomic uint64_t drained_forced; /* closed because their generation's drain ran out */
    _Atomic uint64_t since_ns; /* last reset */
} mp_instance_stats;

/* The plugin's opaque mp_instance is this struct. */
struct mp_instance {
    mp_host *host;
    char *id;
    char *plugin;                /* plugin name it runs */
    bool autoloaded;             /* created by autoload, not by an instances section */
    int32_t max_connections;

    mp_generation *active;       /* receives RPCs and, without weights, all traffic */
    mp_generation *gens;         /* every live generation, newest first */
    char stable_version[MP_VERSION_LEN];   /* what Rollback returns to */
    char previous_version[MP_VERSION_LEN]; /* the stable one before the last promotion */
    char *kept_copy;             /* private .so of a retired version kept for Rollback */
    char kept_version[MP_VERSION_LEN];
    bool canary;                 /* two generations split traffic by weight */
    char promoting[MP_VERSION_LEN]; /* stepwise PromoteVersion target, "" when none */
    int32_t promotion_step;      /* weight points added per step */
    mp_rpc_timer *promotion_timer;
    uint64_t deployment_started_ns;

    char *settings_text;         /* current settings section as libconfig text; owned */
    uint64_t config_updated_ns;

    mp_msg_store routes;         /* Marchproxy__Route by route_id */
    mp_msg_store rate_limits;    /* Marchproxy__RateLimit by limit_id */
    mp_instance_stats stats;

    mp_health health;            /* last known, refreshed by mp_instance_refresh_health */
    char health_msg[256];
    uint64_t started_ns;
    char last_error[512];        /* last failed reload/create, for GetStatus details */

    int32_t workers_desired;     /* Scale: workers serving it (0 = all) */
    int32_t scale_min, scale_max;
    bool shutting_down;
    bool removed;                /* out of h->instances; freed with its last generation */
    void *worker_slots[MP_MAX_WORKERS]; /* mp_host_api.worker_slot, one per worker */
    struct mp_instance *next;
};

/* A shared, refcounted gauge (live connections to an external module): the module's
 * bookkeeping, routing snapshots and connections each hold a reference. */
typedef struct mp_counter {
    _Atomic int refs;
    _Atomic int64_t value;
} mp_counter;
mp_counter *mp_counter_new(void);
void mp_counter_ref(mp_counter *c);
void mp_counter_unref(mp_counter *c);

/* A module registered over NLBService.RegisterModule (runs in another process). */
typedef struct mp_ext_module {
    char *instance_id;
    char registration_id[40];   /* UUID */
    uint64_t registered_ns, last_heartbeat_ns;
    int32_t interval_s, timeout_s, unhealthy_threshold, healthy_threshold;
    int missed;                 /* consecutive missed heartbeat intervals */
    int good;                   /* consecutive heartbeats since it went unhealthy */
    mp_health reported;         /* what the module says in its heartbeats */
    bool in_rotation;           /* false after missed heartbeats */
    /* TriggerScaling asked for this module to scale; handed over (once) in the answer to
     * its next Heartbeat as should_scale + instructions. */
    bool scale_pending;
    int32_t scale_target;       /* wanted instance count; 0 = one step in scale_action */
    char scale_action[16];      /* "scale_up" | "scale_down" | "set" */
    mp_counter *active;         /* connections forwarded to it right now */
    struct mp_ext_module *next;
} mp_ext_module;

/* Free one external module's bookkeeping (nlb.c). */
void mp_ext_module_free(mp_ext_module *m);

typedef struct mp_nlb {
    mp_msg_store routes;        /* Marchproxy__Route by route_id; owner = target instance */
    mp_msg_store modules;       /* Marchproxy__ModuleInstance by instance_id (external) */
    mp_msg_store module_stats;  /* Marchproxy__ModuleStats from heartbeats, by instance_id */
    mp_msg_store reported;      /* Marchproxy__ModuleMetrics from ReportMetrics */
    mp_ext_module *ext;         /* heartbeat bookkeeping, one per entry in `modules` */
    char strategy[32];          /* "round-robin" | "least-conn" | "weighted" */
    _Atomic uint64_t routed, refused, active_connections;
    mp_rpc_timer *heartbeat_timer;
} mp_nlb;

struct mp_host {
    char *config_path;
    mp_host_config *cfg;        /* the running config; owned */
    const mp_host_config *applying_cfg; /* the one being applied, while it is */
    char *config_text;          /* the bytes it was parsed from (GetNLBConfig); owned */
    size_t config_text_len;
    uint64_t config_loaded_ns;
    mp_rpc_server *rpc;
    mp_host_api api;            /* the table handed to plugins */
    mp_plugin_image *images;
    struct mp_instance *instances; /* in config order */
    mp_nlb nlb;
    uint64_t started_ns;
    uint64_t generation_seq;
    uint64_t reloads, reload_failures;
    mp_proc_sampler proc;       /* CPU sampling for stats (control thread) */
    /* set during a create() so register_rpc knows which generation is being built */
    mp_generation *creating;
    struct mp_state_cache *state_cache; /* what state_persist.c last wrote */

    /* the data plane (worker.c, dp_snapshot.c) */
    struct mp_worker *workers;
    int n_workers;
    struct dp_snapshot *dp_snap;  /* the newest published snapshot (control's ref) */
    bool dp_dirty;                /* control-plane state changed since it was built */
    mp_rpc_timer *dp_timer;
    struct dp_drain *draining;    /* retired generations with live connections */
    int64_t drain_override_ms;    /* set by a Reload/Shutdown RPC for its duration; -1 */
};

/* ---- lifecycle (host.c) ---- */
int mp_host_init(mp_host *h, const char *config_path, char *err, size_t err_len);
/* Re-read the config and plugin_dir and reconcile (reload.c). The summary of what
 * changed, or every reason something was refused, goes to msg. Returns 0 when
 * everything requested was applied, -EINVAL/-errno when anything was refused (what
 * could be applied still was; what failed keeps its old generation). `only_id`
 * restricts image/instance changes to one instance (NULL = all). */
int mp_host_reload(mp_host *h, const char *only_id, char *msg, size_t msg_len);
/* Reconcile against an already parsed config (UpdateNLBConfig). Takes ownership of
 * cfg on success and on failure. */
int mp_host_apply_config(mp_host *h, mp_host_config *cfg, const char *only_id, char *msg,
                         size_t msg_len);
/* mp_host_apply_config, and on success the running config's text becomes `text`
 * (malloc'd; taken over in every case). */
int mp_host_adopt_config(mp_host *h, mp_host_config *cfg, char *text, size_t text_len,
                         const char *only_id, char *msg, size_t msg_len);
void mp_host_shutdown(mp_host *h);
/* Stop accepting, let connections finish for up to drain_ms, close the rest and stop
 * the workers. Idempotent; mp_host_shutdown calls it with 0. */
void mp_host_stop_traffic(mp_host *h, int drain_ms);
/* Ask every worker to stop accepting (any thread). */
void mp_host_stop_accepting(mp_host *h);
/* Parse `path` into a config plus the exact text it came from (both owned by the
 * caller); errors as "FILE:LINE: reason". */
int mp_host_read_config(const char *path, mp_host_config **cfg, char **text, size_t *text_len,
                        char *err, size_t err_len);
/* UpdateConfig: validate and apply a new settings section to one running instance
 * (reconfigure() when the plugin has it, else a new generation of the same image). */
int mp_host_apply_instance_settings(mp_host *h, struct mp_instance *inst,
                                    const config_setting_t *settings, char *msg,
                                    size_t msg_len);
/* Create state_dir (with its parents) and its plugin-cache; the cache path goes to
 * cache_dir. 0 or -errno with the reason. */
int mp_state_dirs_ensure(const mp_host_config *cfg, char *cache_dir, size_t cache_len,
                         char *err, size_t err_len);
/* `marchproxy -t`: parse the config, load every plugin in plugin_dir (from a temporary
 * copy) and have each instance's plugin validate its settings. Nothing is created. */
int mp_host_check_config(const char *path, char *err, size_t err_len);

/* Mark the control-plane state changed: the data plane gets a new routing snapshot
 * within 50 ms (dp_snapshot.c). */
void mp_host_touch(mp_host *h);
/* Close what is left of generations whose drain time ran out (control thread). */
void mp_host_drain_due(mp_host *h);

/* ---- instances (instance.c) ---- */
struct mp_instance *mp_host_find_instance(const mp_host *h, const char *id);
/* "alb, lauradb" — for NOT_FOUND messages. */
void mp_host_known_ids(const mp_host *h, char *buf, size_t len);
size_t mp_host_instance_count(const mp_host *h);
/* Ask the active generation (HEALTHY without a health callback; UNHEALTHY without a
 * generation; STOPPING while shutting down). */
void mp_instance_refresh_health(struct mp_instance *inst, bool deep);
/* The version string of the active generation ("" without one). */
const char *mp_instance_version(const struct mp_instance *inst);
mp_generation *mp_instance_find_generation(const struct mp_instance *inst,
                                           const char *version);
void mp_instance_stats_reset(struct mp_instance *inst);
/* Take a reference on a generation for the duration of a call or connection. */
void mp_generation_ref(mp_generation *g);
void mp_generation_unref(mp_generation *g); /* may destroy a retired generation */
/* Retire every generation but `keep`; destroyed as their references drop. */
void mp_instance_retire_others(struct mp_instance *inst, mp_generation *keep);
/* After a deployment: `active` takes all new traffic and every other generation is
 * retired (its connections drain, then its .so is unloaded). Ends any canary or
 * stepwise promotion. */
void mp_instance_settle(struct mp_instance *inst, mp_generation *active);
/* Keep `g`'s private .so copy on disk (not loaded) so Rollback, SetTrafficWeight and
 * PromoteVersion can bring its version back; replaces the previously kept one. */
void mp_instance_keep_previous(struct mp_instance *inst, const mp_generation *g);
/* The live generation of `version`, or a new one loaded from the kept copy (weight 0).
 * NULL with a reason when the version is neither live nor kept. */
mp_generation *mp_instance_revive(struct mp_instance *inst, const char *version, char *err,
                                  size_t err_len);
/* Make `g` the one that serves RPCs (rebinds its registered methods). */
void mp_instance_activate(struct mp_instance *inst, mp_generation *g);
/* New generation of `inst` from `img` (takes its own image reference) built from
 * `settings`; not active until mp_instance_activate. */
int mp_generation_create(struct mp_instance *inst, mp_plugin_image *img,
                         const mp_config *settings, mp_generation **out, char *err,
                         size_t err_len);
struct mp_instance *mp_instance_new(mp_host *h, const char *id, const char *plugin);
/* Take `inst` out of service: retire its generations; freed when the last is gone. */
void mp_instance_remove(struct mp_instance *inst);

/* ---- the plugin-facing function table (host_api.c) ---- */
void mp_host_api_init(mp_host *h, mp_host_api *api);

/* ---- module types ---- */
/* Wire ModuleType for a plugin's type (storage -> UNSPECIFIED). */
int mp_wire_module_type(mp_module_type t);
const char *mp_module_type_name(mp_module_type t); /* "alb", "storage" ... */

/* ---- services (svc_*.c) ---- */
int mp_svc_module_bind(mp_host *h, char *err, size_t err_len);
int mp_svc_nlb_bind(mp_host *h, char *err, size_t err_len);
int mp_svc_health_bind(mp_host *h, char *err, size_t err_len);
/* NLB bookkeeping that reload and shutdown need. */
int mp_nlb_init(mp_host *h);
void mp_nlb_destroy(mp_host *h);
/* Replace the config-origin routes with the running config's. */
int mp_nlb_load_config_routes(mp_host *h, char *err, size_t err_len);

#endif
