/*
 * ldb_plugin.c — the LauraDB plugin's descriptor and instance lifecycle: settings,
 * create/destroy, the request-thread pool that RouterService calls are handed to, the
 * store's opening (waiting for a previous generation to let go of the data directory),
 * health and custom statistics. The methods themselves are in ldb_router.c.
 *
 * Why a thread pool: RPC handlers run on the host's gRPC control thread, which must
 * never block, while every write waits for its group commit's fsync. Handlers only
 * queue the call; request threads execute and answer it (the ABI allows rpc_send and
 * rpc_finish from any thread). Several threads waiting on writes at once is what lets
 * the store commit them as one group.
 *
 * No reconfigure: a settings change is a new generation (a reload), which reopens the
 * same data directory once the old generation has closed it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ldb_cursor.h"
#include "ldb_plugin_int.h"
#include "ldb_state.h"

#define LDB_OPEN_WAIT_MS 15000 /* how long a call waits for the store to open */
#define LDB_LOCK_POLL_MS 20

const char *const ldb_method_names[LDB_M_COUNT] = {
    [LDB_M_QUERY] = "/lauradb.cluster.RouterService/Query",
    [LDB_M_INSERT] = "/lauradb.cluster.RouterService/Insert",
    [LDB_M_UPDATE] = "/lauradb.cluster.RouterService/Update",
    [LDB_M_DELETE] = "/lauradb.cluster.RouterService/Delete",
    [LDB_M_AGGREGATE] = "/lauradb.cluster.RouterService/Aggregate",
    [LDB_M_SHARDMAP] = "/lauradb.cluster.RouterService/GetShardMap",
};

static const char *const op_names[LDB_M_COUNT] = {"query",  "insert",    "update",
                                                  "delete", "aggregate", "get_shard_map"};

uint64_t ldb_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------ histogram */

/* Bucket 4k+j holds values in [2^k * (1 + j/4), 2^k * (1 + (j+1)/4)); 0 and 1 share 0. */
static unsigned hist_bucket(uint64_t v)
{
    if (v < 2)
        return 0;
    unsigned k = 63u - (unsigned)__builtin_clzll(v);
    unsigned j = k >= 2 ? (unsigned)((v >> (k - 2)) & 3u) : (unsigned)((v << (2 - k)) & 3u);
    unsigned b = 4 * k + j;
    return b < LDB_HIST_BUCKETS ? b : LDB_HIST_BUCKETS - 1;
}

static uint64_t hist_upper(unsigned b)
{
    unsigned k = b / 4, j = b % 4;
    if (k >= 62)
        return UINT64_MAX;
    return ((uint64_t)1 << k) + (((uint64_t)1 << k) * (j + 1)) / 4;
}

void ldb_hist_record(ldb_hist *h, uint64_t us)
{
    atomic_fetch_add_explicit(&h->b[hist_bucket(us)], 1, memory_order_relaxed);
}

uint64_t ldb_hist_quantile(const ldb_hist *h, double q)
{
    uint64_t counts[LDB_HIST_BUCKETS], total = 0;
    for (unsigned i = 0; i < LDB_HIST_BUCKETS; i++) {
        counts[i] = atomic_load_explicit(&h->b[i], memory_order_relaxed);
        total += counts[i];
    }
    if (total == 0)
        return 0;
    uint64_t rank = (uint64_t)ceil(q * (double)total), seen = 0;
    if (rank == 0)
        rank = 1;
    for (unsigned i = 0; i < LDB_HIST_BUCKETS; i++) {
        seen += counts[i];
        if (seen >= rank)
            return hist_upper(i);
    }
    return hist_upper(LDB_HIST_BUCKETS - 1);
}

/* ------------------------------------------------------------------ settings */

static const char *const setting_keys[] = {
    "data_dir", "map_size_mb", "max_batch", "threads", "queue_depth", "cursor_timeout_ms",
    "max_cursors", "batch_size", "max_response_bytes", "cursor_memory_mb", "node_id",
    "shard_id", "advertise_host", "advertise_port", "indexes", NULL};
static const char *const index_keys[] = {"ns", "keys", "unique", "name", NULL};

/* An optional integer in [lo, hi]; absent leaves *out at its default. */
static int get_int(const mp_host_api *api, const mp_config *s, const char *key, int64_t lo,
                   int64_t hi, int64_t *out, char *err, size_t err_len)
{
    int64_t v;
    int rc = api->cfg_get_int(s, key, &v);
    if (rc == -ENOENT)
        return 0;
    if (rc < 0 || v < lo || v > hi)
        return api->cfg_error(api->cfg_lookup(s, key), err, err_len,
                              "lauradb: %s must be an integer %lld..%lld", key, (long long)lo,
                              (long long)hi);
    *out = v;
    return 0;
}

static int get_str(const mp_host_api *api, const mp_config *s, const char *key, char *out,
                   size_t out_len, bool name, char *err, size_t err_len)
{
    const char *v;
    int rc = api->cfg_get_string(s, key, &v);
    if (rc == -ENOENT)
        return 0;
    if (rc < 0 || strlen(v) >= out_len || (name && !v[0]))
        return api->cfg_error(api->cfg_lookup(s, key), err, err_len,
                              "lauradb: %s must be a%s string of at most %zu bytes", key,
                              name ? " non-empty" : "", out_len - 1);
    if (name && strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:") !=
                    strlen(v))
        return api->cfg_error(api->cfg_lookup(s, key), err, err_len,
                              "lauradb: %s may hold only letters, digits and -_.:", key);
    snprintf(out, out_len, "%s", v);
    return 0;
}

/* The keys pattern of an index setting: a JSON object of 1..32 fields, each 1 or -1.
 * What only the store can judge (a name already taken, say) fails when it opens. */
static int check_index_keys(const char *json, char *why, size_t why_len)
{
    bson_error_t e;
    bson_t *keys = bson_new_from_json((const uint8_t *)json, -1, &e);
    if (!keys) {
        snprintf(why, why_len, "is not JSON: %s", e.message);
        return -EINVAL;
    }
    bson_iter_t it;
    uint32_t n = 0;
    int rc = 0;
    bson_iter_init(&it, keys);
    while (rc == 0 && bson_iter_next(&it)) {
        double d = BSON_ITER_HOLDS_NUMBER(&it) ? bson_iter_as_double(&it) : 0;
        if (d != 1 && d != -1) {
            snprintf(why, why_len, "field '%.64s' must be 1 or -1", bson_iter_key(&it));
            rc = -EINVAL;
        }
        n++;
    }
    if (rc == 0 && (n == 0 || n > 32)) {
        snprintf(why, why_len, "must name 1 to 32 fields");
        rc = -EINVAL;
    }
    bson_destroy(keys);
    return rc;
}

static int parse_index(const mp_host_api *api, const mp_config *node, ldb_index_setting *ix,
                       char *err, size_t err_len)
{
    const char *ns = NULL, *keys = NULL, *name = NULL;
    int unique = 0;
    char why[200];
    if (api->cfg_kind(node) != MP_CFG_GROUP)
        return api->cfg_error(node, err, err_len,
                              "lauradb: each of indexes must be a group { ns; keys; }");
    int rc = api->cfg_check_keys(node, index_keys, err, err_len);
    if (rc < 0)
        return rc;
    if (api->cfg_get_string(node, "ns", &ns) < 0 || api->cfg_get_string(node, "keys", &keys) < 0)
        return api->cfg_error(node, err, err_len,
                              "lauradb: an index needs ns (\"db.collection\") and keys "
                              "(a JSON pattern such as \"{\\\"a\\\": 1}\")");
    const char *dot = strchr(ns, '.');
    if (!dot || dot == ns || !dot[1] || strlen(ns) > LDB_NS_MAX || strchr(ns, '$'))
        return api->cfg_error(api->cfg_lookup(node, "ns"), err, err_len,
                              "lauradb: index ns '%.64s' must be \"db.collection\" (at most "
                              "%d bytes, no $)",
                              ns, LDB_NS_MAX);
    if (strlen(keys) >= sizeof(ix->keys_json) ||
        check_index_keys(keys, why, sizeof(why)) < 0)
        return api->cfg_error(api->cfg_lookup(node, "keys"), err, err_len,
                              "lauradb: index keys %s",
                              strlen(keys) >= sizeof(ix->keys_json) ? "is too long" : why);
    rc = api->cfg_get_string(node, "name", &name);
    if (rc == -EINVAL || (rc == 0 && (!name[0] || strlen(name) >= sizeof(ix->name))))
        return api->cfg_error(api->cfg_lookup(node, "name"), err, err_len,
                              "lauradb: index name must be a non-empty string of at most %zu "
                              "bytes",
                              sizeof(ix->name) - 1);
    if (api->cfg_get_bool(node, "unique", &unique) == -EINVAL)
        return api->cfg_error(api->cfg_lookup(node, "unique"), err, err_len,
                              "lauradb: index unique must be true or false");
    snprintf(ix->ns, sizeof(ix->ns), "%s", ns);
    snprintf(ix->keys_json, sizeof(ix->keys_json), "%s", keys);
    snprintf(ix->name, sizeof(ix->name), "%s", name ? name : "");
    ix->unique = unique != 0;
    return 0;
}

static int parse_indexes(const mp_host_api *api, const mp_config *s, ldb_settings *c, char *err,
                         size_t err_len)
{
    const mp_config *list = api->cfg_lookup(s, "indexes");
    if (!list)
        return 0;
    mp_config_kind k = api->cfg_kind(list);
    if (k != MP_CFG_LIST || api->cfg_count(list) > LDB_INDEX_SETTINGS_MAX)
        return api->cfg_error(list, err, err_len,
                              "lauradb: indexes must be a list ( { ns; keys; }, ... ) of at "
                              "most %d entries",
                              LDB_INDEX_SETTINGS_MAX);
    int n = api->cfg_count(list);
    for (int i = 0; i < n; i++) {
        int rc = parse_index(api, api->cfg_child(list, i), &c->indexes[i], err, err_len);
        if (rc < 0)
            return rc;
        c->n_indexes = (unsigned)i + 1;
    }
    return 0;
}

int ldb_settings_parse(const mp_host_api *api, const mp_config *s, ldb_settings *out, char *err,
                       size_t err_len)
{
    ldb_settings tmp;
    ldb_settings *c = out ? out : &tmp;
    memset(c, 0, sizeof(*c));
    /* The integer settings with their defaults and ranges, read in one pass. */
    enum { MAP, BATCH, THREADS, QUEUE, TIMEOUT, CURSORS, FIRST, RESP, CURMEM, PORT, N_INT };
    static const struct {
        const char *key;
        int64_t def, lo, hi;
    } ints[N_INT] = {
        [MAP] = {"map_size_mb", 1024, 1, 1024 * 1024},
        [BATCH] = {"max_batch", 0, 1, 100000},
        [THREADS] = {"threads", 8, 1, 256},
        [QUEUE] = {"queue_depth", 4096, 1, 1000000},
        [TIMEOUT] = {"cursor_timeout_ms", 600000, 100, 86400000},
        [CURSORS] = {"max_cursors", 1000, 1, 1000000},
        [FIRST] = {"batch_size", 101, 1, 1000000},
        /* Under the host's default grpc.max_message_bytes (4 MiB) with room for framing. */
        [RESP] = {"max_response_bytes", 4 * 1024 * 1024 - 64 * 1024, 64 * 1024,
                  64 * 1024 * 1024},
        [CURMEM] = {"cursor_memory_mb", 256, 0, 1024 * 1024},
        [PORT] = {"advertise_port", 50051, 1, 65535},
    };
    int64_t v[N_INT];
    int rc = api->cfg_check_keys(s, setting_keys, err, err_len);
    for (int i = 0; i < N_INT; i++) {
        v[i] = ints[i].def;
        if (rc == 0)
            rc = get_int(api, s, ints[i].key, ints[i].lo, ints[i].hi, &v[i], err, err_len);
    }
    if (rc == 0)
        rc = get_str(api, s, "data_dir", c->data_dir, sizeof(c->data_dir), false, err, err_len);
    if (rc == 0 && c->data_dir[0] && c->data_dir[0] != '/')
        rc = api->cfg_error(api->cfg_lookup(s, "data_dir"), err, err_len,
                            "lauradb: data_dir must be an absolute path");
    if (rc == 0)
        rc = get_str(api, s, "node_id", c->node_id, sizeof(c->node_id), true, err, err_len);
    if (rc == 0)
        rc = get_str(api, s, "shard_id", c->shard_id, sizeof(c->shard_id), true, err, err_len);
    snprintf(c->advertise_host, sizeof(c->advertise_host), "127.0.0.1");
    if (rc == 0)
        rc = get_str(api, s, "advertise_host", c->advertise_host, sizeof(c->advertise_host),
                     true, err, err_len);
    c->map_size_mb = (uint64_t)v[MAP];
    c->max_batch = (unsigned)v[BATCH];
    c->threads = (unsigned)v[THREADS];
    c->queue_depth = (unsigned)v[QUEUE];
    c->cursor_timeout_ms = (uint64_t)v[TIMEOUT];
    c->max_cursors = (unsigned)v[CURSORS];
    c->batch_size = (unsigned)v[FIRST];
    c->max_response_bytes = (size_t)v[RESP];
    c->cursor_memory_bytes = (size_t)v[CURMEM] * 1024 * 1024;
    c->advertise_port = (int)v[PORT];
    if (rc == 0)
        rc = parse_indexes(api, s, c, err, err_len);
    return rc;
}

/* ------------------------------------------------------------------ the store */

/* mkdir -p with 0700 for what it creates. */
static int make_dirs(const char *path, char *err, size_t err_len)
{
    char buf[LDB_PATH_MAX];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        if (mkdir(buf, 0700) < 0 && errno != EEXIST) {
            int e = errno;
            snprintf(err, err_len, "lauradb: cannot create %s: %s", buf, strerror(e));
            return -e;
        }
        if (c == '\0')
            return 0;
        *p = c;
    }
}

/* Makes sure every index of the settings exists (a no-op for one that does), before any
 * call can see the store. */
static int create_setting_indexes(ldb_svc *svc, ldb_store *st, char *err, size_t err_len)
{
    for (unsigned i = 0; i < svc->cfg.n_indexes; i++) {
        const ldb_index_setting *ix = &svc->cfg.indexes[i];
        char why[256] = "";
        bson_error_t e;
        bson_t *keys = bson_new_from_json((const uint8_t *)ix->keys_json, -1, &e);
        int rc = keys ? ldb_create_index(st, ix->ns, keys, ix->name[0] ? ix->name : NULL,
                                         ix->unique, why, sizeof(why))
                      : -EINVAL;
        bson_destroy(keys);
        if (rc < 0) {
            snprintf(err, err_len, "lauradb: index %s on %s: %s", ix->keys_json, ix->ns,
                     keys ? why : e.message);
            return rc;
        }
    }
    return 0;
}

static int store_open_locked_dir(ldb_svc *svc, char *err, size_t err_len)
{
    ldb_store_opts o = {.map_size = (size_t)svc->cfg.map_size_mb * 1024 * 1024,
                        .max_batch = svc->cfg.max_batch};
    ldb_store *st = NULL;
    int rc = ldb_store_open(svc->data_dir, &o, &st, err, err_len);
    if (rc == 0 && (rc = create_setting_indexes(svc, st, err, err_len)) < 0) {
        ldb_store_close(st);
        st = NULL;
    }
    pthread_mutex_lock(&svc->store_mu);
    if (rc == 0) {
        svc->store = st;
        svc->store_state = LDB_STORE_OPEN;
    } else {
        svc->store_state = LDB_STORE_FAILED;
        snprintf(svc->store_err, sizeof(svc->store_err), "%s", err);
    }
    pthread_cond_broadcast(&svc->store_cv);
    pthread_mutex_unlock(&svc->store_mu);
    return rc;
}

static void refresh_usage(ldb_svc *svc)
{
    pthread_mutex_lock(&svc->store_mu);
    ldb_store *st = svc->store_state == LDB_STORE_OPEN ? svc->store : NULL;
    pthread_mutex_unlock(&svc->store_mu);
    uint64_t docs, bytes, colls;
    char err[200];
    if (st && ldb_store_usage(st, NULL, NULL, &docs, &bytes, &colls, err, sizeof(err)) == 0) {
        atomic_store(&svc->u_docs, docs);
        atomic_store(&svc->u_bytes, bytes);
        atomic_store(&svc->u_colls, colls);
        atomic_store(&svc->u_valid, true);
    }
}

/* Sleeps up to ms unless destroy() starts; returns false once stopping. */
static bool maint_sleep(ldb_svc *svc, long ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_nsec += ms * 1000000L;
    dl.tv_sec += dl.tv_nsec / 1000000000L;
    dl.tv_nsec %= 1000000000L;
    pthread_mutex_lock(&svc->q_mu);
    if (!svc->stopping)
        pthread_cond_timedwait(&svc->maint_cv, &svc->q_mu, &dl);
    bool go_on = !svc->stopping;
    pthread_mutex_unlock(&svc->q_mu);
    return go_on;
}

static void *maint_main(void *arg)
{
    ldb_svc *svc = arg;
    char err[256];
    pthread_mutex_lock(&svc->store_mu);
    bool opening = svc->store_state == LDB_STORE_OPENING;
    pthread_mutex_unlock(&svc->store_mu);
    /* The previous generation still has the directory: wait for its destroy() to
     * release the lock (it finishes its calls first), then open. */
    while (opening) {
        if (flock(svc->lock_fd, LOCK_EX | LOCK_NB) == 0) {
            if (store_open_locked_dir(svc, err, sizeof(err)) < 0)
                svc->api->log(svc->inst, MP_LOG_ERROR, "lauradb: %s", err);
            else
                svc->api->log(svc->inst, MP_LOG_INFO, "lauradb: store %s opened",
                              svc->data_dir);
            break;
        }
        if (!maint_sleep(svc, LDB_LOCK_POLL_MS))
            return NULL;
    }
    do {
        ldb_cursor_reap(svc->cursors);
        refresh_usage(svc);
    } while (maint_sleep(svc, 500));
    return NULL;
}

/* Waits (bounded) for the store; NULL with a reason when it is not available. */
static ldb_store *await_store(ldb_svc *svc, const char **why)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += LDB_OPEN_WAIT_MS / 1000;
    pthread_mutex_lock(&svc->store_mu);
    int rc = 0;
    while (svc->store_state == LDB_STORE_OPENING && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&svc->store_cv, &svc->store_mu, &dl);
    ldb_store *st = svc->store_state == LDB_STORE_OPEN ? svc->store : NULL;
    *why = svc->store_state == LDB_STORE_FAILED
               ? svc->store_err
               : "lauradb: the data directory is still held by the previous generation";
    pthread_mutex_unlock(&svc->store_mu);
    return st;
}

/* ------------------------------------------------------------------ request threads */

static void job_free(ldb_job *j)
{
    free(j->req);
    free(j);
}

void ldb_job_done(ldb_svc *svc, ldb_job *j, mp_rpc_code code, const char *msg,
                  size_t bytes_out)
{
    svc->api->rpc_finish(j->call, code, msg);
    uint64_t us = (ldb_mono_ns() - j->start_ns) / 1000;
    svc->api->stats_request(svc->inst, us, code == MP_RPC_OK, j->req_len, bytes_out);
    atomic_fetch_add(&svc->ops[j->method].calls, 1);
    if (code != MP_RPC_OK)
        atomic_fetch_add(&svc->ops[j->method].failed, 1);
    ldb_hist_record(&svc->latency, us);
    job_free(j);
}

static void finish_job(ldb_svc *svc, ldb_job *j, mp_rpc_code code, const char *msg)
{
    ldb_job_done(svc, j, code, msg, 0);
}

static void *worker_main(void *arg)
{
    ldb_svc *svc = arg;
    for (;;) {
        pthread_mutex_lock(&svc->q_mu);
        while (!svc->q_head && !svc->stopping)
            pthread_cond_wait(&svc->q_cv, &svc->q_mu);
        ldb_job *j = svc->q_head;
        if (!j) { /* stopping and nothing left */
            pthread_mutex_unlock(&svc->q_mu);
            return NULL;
        }
        svc->q_head = j->next;
        if (!svc->q_head)
            svc->q_tail = NULL;
        svc->q_len--;
        pthread_mutex_unlock(&svc->q_mu);

        const char *why;
        ldb_store *st;
        if (svc->api->rpc_cancelled(j->call))
            finish_job(svc, j, MP_RPC_CANCELLED, "the client went away");
        else if (!(st = await_store(svc, &why)))
            finish_job(svc, j, MP_RPC_UNAVAILABLE, why);
        else
            ldb_router_execute(svc, st, j); /* answers and frees the job */
    }
}

/* An RPC handler, on the control thread: copy the request and queue it. */
static void enqueue(ldb_svc *svc, mp_rpc_call *call, int method, const uint8_t *req,
                    size_t len)
{
    ldb_job *j = calloc(1, sizeof(*j));
    uint8_t *copy = malloc(len ? len : 1);
    if (!j || !copy) {
        free(j);
        free(copy);
        svc->api->rpc_finish(call, MP_RPC_RESOURCE_EXHAUSTED, "lauradb: out of memory");
        return;
    }
    memcpy(copy, req, len);
    j->call = call;
    j->method = method;
    j->req = copy;
    j->req_len = len;
    j->start_ns = ldb_mono_ns();
    pthread_mutex_lock(&svc->q_mu);
    if (svc->stopping || svc->q_len >= svc->cfg.queue_depth) {
        bool stopping = svc->stopping;
        pthread_mutex_unlock(&svc->q_mu);
        if (!stopping)
            atomic_fetch_add(&svc->rejected_full, 1);
        finish_job(svc, j,
                   stopping ? MP_RPC_UNAVAILABLE : MP_RPC_RESOURCE_EXHAUSTED,
                   stopping ? "lauradb: instance is stopping"
                            : "lauradb: too many queued requests (queue_depth)");
        return;
    }
    if (svc->q_tail)
        svc->q_tail->next = j;
    else
        svc->q_head = j;
    svc->q_tail = j;
    svc->q_len++;
    pthread_cond_signal(&svc->q_cv);
    pthread_mutex_unlock(&svc->q_mu);
}

#define LDB_HANDLER(name, idx)                                                          \
    static void name(void *state, mp_rpc_call *call, const uint8_t *req, size_t len)    \
    {                                                                                   \
        enqueue(state, call, idx, req, len);                                            \
    }
LDB_HANDLER(on_query, LDB_M_QUERY)
LDB_HANDLER(on_insert, LDB_M_INSERT)
LDB_HANDLER(on_update, LDB_M_UPDATE)
LDB_HANDLER(on_delete, LDB_M_DELETE)
LDB_HANDLER(on_aggregate, LDB_M_AGGREGATE)
LDB_HANDLER(on_shardmap, LDB_M_SHARDMAP)

static const mp_rpc_handler handlers[LDB_M_COUNT] = {
    [LDB_M_QUERY] = on_query,         [LDB_M_INSERT] = on_insert,
    [LDB_M_UPDATE] = on_update,       [LDB_M_DELETE] = on_delete,
    [LDB_M_AGGREGATE] = on_aggregate, [LDB_M_SHARDMAP] = on_shardmap,
};

/* ------------------------------------------------------------------ lifecycle */

static int validate(const mp_host_api *api, const mp_config *s, char *err, size_t len)
{
    return ldb_settings_parse(api, s, NULL, err, len);
}

static void destroy(void *state)
{
    ldb_svc *svc = state;
    pthread_mutex_lock(&svc->q_mu);
    svc->stopping = true;
    pthread_cond_broadcast(&svc->q_cv);
    pthread_cond_broadcast(&svc->maint_cv);
    pthread_mutex_unlock(&svc->q_mu);
    /* The threads drain the queue before leaving; the host destroys only after every
     * call finished, so normally there is nothing left. */
    for (unsigned i = 0; i < svc->n_threads; i++)
        pthread_join(svc->threads[i], NULL);
    if (svc->maint_running)
        pthread_join(svc->maint, NULL);
    while (svc->q_head) {
        ldb_job *j = svc->q_head;
        svc->q_head = j->next;
        finish_job(svc, j, MP_RPC_UNAVAILABLE, "lauradb: instance is stopping");
    }
    ldb_cursor_table_free(svc->cursors);
    ldb_store_close(svc->store);
    /* Only now may the next generation open the directory. */
    if (svc->lock_fd >= 0)
        close(svc->lock_fd);
    free(svc->threads);
    pthread_mutex_destroy(&svc->q_mu);
    pthread_cond_destroy(&svc->q_cv);
    pthread_cond_destroy(&svc->maint_cv);
    pthread_mutex_destroy(&svc->store_mu);
    pthread_cond_destroy(&svc->store_cv);
    free(svc);
}

static int create(const mp_host_api *api, mp_instance *inst, const mp_config *s, void **state,
                  char *err, size_t len)
{
    ldb_svc *svc = calloc(1, sizeof(*svc));
    if (!svc)
        return -ENOMEM;
    svc->api = api;
    svc->inst = inst;
    svc->lock_fd = -1;
    pthread_mutex_init(&svc->q_mu, NULL);
    pthread_cond_init(&svc->q_cv, NULL);
    pthread_cond_init(&svc->maint_cv, NULL);
    pthread_mutex_init(&svc->store_mu, NULL);
    pthread_cond_init(&svc->store_cv, NULL);
    svc->store_state = LDB_STORE_OPENING;

    int rc = ldb_settings_parse(api, s, &svc->cfg, err, len);
    if (rc < 0)
        goto fail;
    snprintf(svc->node_id, sizeof(svc->node_id), "%s",
             svc->cfg.node_id[0] ? svc->cfg.node_id : api->instance_id(inst));
    if (svc->cfg.shard_id[0])
        snprintf(svc->shard_id, sizeof(svc->shard_id), "%s", svc->cfg.shard_id);
    else
        snprintf(svc->shard_id, sizeof(svc->shard_id), "shard-%.100s", svc->node_id);
    if (svc->cfg.data_dir[0]) {
        snprintf(svc->data_dir, sizeof(svc->data_dir), "%s", svc->cfg.data_dir);
    } else {
        const char *d = api->instance_state_dir(inst);
        if (!d) {
            snprintf(err, len, "lauradb: no data_dir and no instance state directory");
            rc = -EIO;
            goto fail;
        }
        snprintf(svc->data_dir, sizeof(svc->data_dir), "%s", d);
    }
    if ((rc = make_dirs(svc->data_dir, err, len)) < 0)
        goto fail;

    svc->cursors = ldb_cursor_table_new(svc->cfg.max_cursors, svc->cfg.cursor_timeout_ms,
                                        svc->cfg.cursor_memory_bytes);
    svc->threads = calloc(svc->cfg.threads, sizeof(pthread_t));
    if (!svc->cursors || !svc->threads) {
        snprintf(err, len, "lauradb: out of memory");
        rc = -ENOMEM;
        goto fail;
    }
    for (int i = 0; i < LDB_M_COUNT; i++) {
        rc = api->register_rpc(inst, ldb_method_names[i], 0, handlers[i]);
        if (rc < 0) {
            snprintf(err, len, "lauradb: cannot register %s: %s", ldb_method_names[i],
                     rc == -EEXIST ? "another instance serves it" : strerror(-rc));
            goto fail;
        }
    }

    char lock_path[LDB_PATH_MAX + 16];
    snprintf(lock_path, sizeof(lock_path), "%s/lauradb.lock", svc->data_dir);
    svc->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (svc->lock_fd < 0) {
        rc = -errno;
        snprintf(err, len, "lauradb: cannot open %s: %s", lock_path, strerror(-rc));
        goto fail;
    }
    if (flock(svc->lock_fd, LOCK_EX | LOCK_NB) == 0) {
        /* The usual case: open now, so a bad directory fails create() visibly. */
        if ((rc = store_open_locked_dir(svc, err, len)) < 0)
            goto fail;
    } else if (errno == EWOULDBLOCK) {
        api->log(inst, MP_LOG_INFO,
                 "lauradb: %s is held by the previous generation; opening when it is released",
                 svc->data_dir);
    } else {
        rc = -errno;
        snprintf(err, len, "lauradb: cannot lock %s: %s", lock_path, strerror(-rc));
        goto fail;
    }

    if ((rc = -pthread_create(&svc->maint, NULL, maint_main, svc)) < 0) {
        snprintf(err, len, "lauradb: cannot start a thread: %s", strerror(-rc));
        goto fail;
    }
    svc->maint_running = true;
    for (unsigned i = 0; i < svc->cfg.threads; i++) {
        if ((rc = -pthread_create(&svc->threads[i], NULL, worker_main, svc)) < 0) {
            snprintf(err, len, "lauradb: cannot start request threads: %s", strerror(-rc));
            goto fail;
        }
        svc->n_threads++;
    }
    api->log(inst, MP_LOG_INFO, "lauradb ready: data_dir %s, %u request threads, node %s",
             svc->data_dir, svc->n_threads, svc->node_id);
    *state = svc;
    return 0;

fail:
    destroy(svc);
    return rc < 0 ? rc : -EINVAL;
}

static int count_ns(const char *ns, void *arg)
{
    (*(uint64_t *)arg)++;
    return 0;
}

static void health(void *state, int deep, mp_health_report *out)
{
    ldb_svc *svc = state;
    pthread_mutex_lock(&svc->store_mu);
    ldb_store_state stt = svc->store_state;
    char why[sizeof(svc->store_err)];
    snprintf(why, sizeof(why), "%s", svc->store_err);
    ldb_store *st = svc->store;
    pthread_mutex_unlock(&svc->store_mu);
    if (stt == LDB_STORE_OPENING) {
        out->status = MP_HEALTH_STARTING;
        snprintf(out->message, sizeof(out->message),
                 "lauradb: waiting for the previous generation to release %s", svc->data_dir);
        return;
    }
    if (stt == LDB_STORE_FAILED) {
        out->status = MP_HEALTH_UNHEALTHY;
        snprintf(out->message, sizeof(out->message), "lauradb: store failed: %s", why);
        return;
    }
    /* A read transaction proves the environment answers; readers never wait. */
    uint64_t colls = 0;
    char err[200];
    if (ldb_list_namespaces(st, count_ns, &colls, err, sizeof(err)) < 0) {
        out->status = MP_HEALTH_UNHEALTHY;
        snprintf(out->message, sizeof(out->message), "lauradb: read failed: %s", err);
        return;
    }
    out->status = MP_HEALTH_HEALTHY;
    snprintf(out->message, sizeof(out->message), "lauradb: %llu collections in %s",
             (unsigned long long)colls, svc->data_dir);
}

static void put_u64(const mp_stats_sink *sink, const char *name, uint64_t v)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)v);
    sink->add(sink->ctx, name, buf);
}

static void custom_stats(void *state, const mp_stats_sink *sink)
{
    ldb_svc *svc = state;
    char name[64];
    if (atomic_load(&svc->u_valid)) { /* refreshed by the maintenance thread */
        put_u64(sink, "documents", atomic_load(&svc->u_docs));
        put_u64(sink, "data_bytes", atomic_load(&svc->u_bytes));
        put_u64(sink, "collections", atomic_load(&svc->u_colls));
    }
    for (int i = 0; i < LDB_M_COUNT; i++) {
        snprintf(name, sizeof(name), "ops_%s", op_names[i]);
        put_u64(sink, name, atomic_load(&svc->ops[i].calls));
        snprintf(name, sizeof(name), "ops_%s_failed", op_names[i]);
        put_u64(sink, name, atomic_load(&svc->ops[i].failed));
    }
    put_u64(sink, "docs_inserted", atomic_load(&svc->docs_inserted));
    put_u64(sink, "docs_returned", atomic_load(&svc->docs_returned));
    put_u64(sink, "docs_updated", atomic_load(&svc->docs_updated));
    put_u64(sink, "docs_deleted", atomic_load(&svc->docs_deleted));
    put_u64(sink, "requests_rejected_queue_full", atomic_load(&svc->rejected_full));
    put_u64(sink, "requests_invalid", atomic_load(&svc->bad_requests));
    ldb_cursor_counts cc;
    ldb_cursor_table_counts(svc->cursors, &cc);
    put_u64(sink, "cursors_open", cc.open);
    put_u64(sink, "cursors_opened_total", cc.opened_total);
    put_u64(sink, "cursors_expired_total", cc.expired_total);
    put_u64(sink, "cursor_buffered_bytes", cc.buffered_bytes);
    pthread_mutex_lock(&svc->q_mu);
    unsigned qlen = svc->q_len;
    pthread_mutex_unlock(&svc->q_mu);
    put_u64(sink, "queue_length", qlen);
    put_u64(sink, "latency_p50_us", ldb_hist_quantile(&svc->latency, 0.50));
    put_u64(sink, "latency_p95_us", ldb_hist_quantile(&svc->latency, 0.95));
    put_u64(sink, "latency_p99_us", ldb_hist_quantile(&svc->latency, 0.99));
}

/* ------------------------------------------------------------------ host state store */

/* The host's state store (ABI 1.2) on this instance's database: durable writes on the
 * control thread, which waits (bounded) while a reload hands the store over. */
static ldb_store *state_store_of(void *state, char *err, size_t err_len)
{
    const char *why = NULL;
    ldb_store *st = await_store(state, &why);
    if (!st)
        snprintf(err, err_len, "%s", why ? why : "lauradb: the store is not open");
    return st;
}

static int state_put(void *state, const char *key, const void *value, size_t len, char *err,
                     size_t err_len)
{
    ldb_store *st = state_store_of(state, err, err_len);
    return st ? ldb_state_put(st, key, value, len, err, err_len) : -EAGAIN;
}

static int state_remove(void *state, const char *key, char *err, size_t err_len)
{
    ldb_store *st = state_store_of(state, err, err_len);
    return st ? ldb_state_remove(st, key, err, err_len) : -EAGAIN;
}

static int state_scan(void *state, const char *prefix, mp_state_scan_fn fn, void *ctx,
                      char *err, size_t err_len)
{
    ldb_store *st = state_store_of(state, err, err_len);
    return st ? ldb_state_scan(st, prefix, fn, ctx, err, err_len) : -EAGAIN;
}

static const mp_state_store_ops state_store_ops = {
    .struct_size = sizeof(mp_state_store_ops),
    .put = state_put,
    .remove = state_remove,
    .scan = state_scan,
};

static const mp_plugin_descriptor descriptor = {
    .magic = MP_PLUGIN_MAGIC,
    .abi_major = MP_ABI_MAJOR,
    .abi_minor = MP_ABI_MINOR,
    .struct_size = sizeof(mp_plugin_descriptor),
    .name = "lauradb",
    .version = "0.1.0",
    .module_type = MP_MODULE_STORAGE,
    .validate_config = validate,
    .create = create,
    .destroy = destroy,
    .health = health,
    .custom_stats = custom_stats,
    .state_store = &state_store_ops,
};

MP_PLUGIN_DEFINE(descriptor)
