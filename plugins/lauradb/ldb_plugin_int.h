/*
 * ldb_plugin_int.h — what the LauraDB plugin's own files share (not part of any ABI):
 * the parsed settings, the instance state with its request-thread pool and store
 * handle (ldb_plugin.c), the RouterService methods (ldb_router.c), server-side cursors
 * (ldb_cursor.c) and the plugin's small latency histogram.
 */
#ifndef LDB_PLUGIN_INT_H
#define LDB_PLUGIN_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ldb_store.h"
#include "marchproxy/plugin.h"

#define LDB_NAME_MAX 128
#define LDB_PATH_MAX 4096

/* One secondary index the instance makes sure exists when it opens the store (the wire
 * contract has no createIndex): the settings' `indexes = ( { ns; keys; unique; name } )`. */
#define LDB_INDEX_SETTINGS_MAX 16
#define LDB_INDEX_KEYS_MAX 512 /* bytes of the keys pattern as JSON */
typedef struct ldb_index_setting {
    char ns[LDB_NS_MAX + 1];            /* "db.collection" */
    char keys_json[LDB_INDEX_KEYS_MAX]; /* e.g. {"a": 1, "b": -1} */
    char name[LDB_NAME_MAX];            /* "" = the default name */
    bool unique;
} ldb_index_setting;

typedef struct ldb_settings {
    char data_dir[LDB_PATH_MAX]; /* "" = the instance's state directory */
    uint64_t map_size_mb;
    unsigned max_batch;          /* group-commit batch; 0 = the store's default */
    unsigned threads;            /* request threads */
    unsigned queue_depth;        /* calls waiting for a thread before RESOURCE_EXHAUSTED */
    uint64_t cursor_timeout_ms;
    unsigned max_cursors;
    unsigned batch_size;         /* documents in a query's first batch */
    size_t max_response_bytes;   /* documents' bytes in one response */
    size_t cursor_memory_bytes;  /* read-ahead all cursors may hold between batches */
    char node_id[LDB_NAME_MAX];  /* "" = the instance id */
    char shard_id[LDB_NAME_MAX]; /* "" = "shard-" + node id */
    char advertise_host[256];
    int advertise_port;
    ldb_index_setting indexes[LDB_INDEX_SETTINGS_MAX];
    unsigned n_indexes;
} ldb_settings;

/* Parses and checks a settings section with FILE:LINE errors; out may be NULL. */
int ldb_settings_parse(const mp_host_api *api, const mp_config *s, ldb_settings *out,
                       char *err, size_t err_len);

/* ---- latency histogram: 4 buckets per power of two of microseconds, lock-free */
#define LDB_HIST_BUCKETS 160
typedef struct ldb_hist {
    _Atomic uint64_t b[LDB_HIST_BUCKETS];
} ldb_hist;
void ldb_hist_record(ldb_hist *h, uint64_t us);
/* The upper bound (µs) of the bucket holding quantile q (0..1); 0 when empty. */
uint64_t ldb_hist_quantile(const ldb_hist *h, double q);

/* ---- the RouterService methods, indexes into ldb_methods[] */
enum {
    LDB_M_QUERY,
    LDB_M_INSERT,
    LDB_M_UPDATE,
    LDB_M_DELETE,
    LDB_M_AGGREGATE,
    LDB_M_SHARDMAP,
    LDB_M_COUNT
};

typedef struct ldb_op_stats {
    _Atomic uint64_t calls, failed;
} ldb_op_stats;

struct ldb_cursor_table;

/* One call waiting for a request thread. Owns its copy of the request. */
typedef struct ldb_job {
    struct ldb_job *next;
    mp_rpc_call *call;
    int method;
    uint8_t *req;
    size_t req_len;
    uint64_t start_ns;
} ldb_job;

typedef enum { LDB_STORE_OPENING, LDB_STORE_OPEN, LDB_STORE_FAILED } ldb_store_state;

typedef struct ldb_svc {
    const mp_host_api *api;
    mp_instance *inst;
    ldb_settings cfg;
    char node_id[LDB_NAME_MAX];
    char shard_id[LDB_NAME_MAX];
    char data_dir[LDB_PATH_MAX];

    /* The store opens in create() unless the previous generation of this instance still
     * holds the data directory (a reload: LMDB must never be open twice in a process);
     * then a background opener waits for the directory lock. */
    pthread_mutex_t store_mu;
    pthread_cond_t store_cv;
    ldb_store_state store_state;
    char store_err[256];
    ldb_store *store;
    int lock_fd; /* flock(LOCK_EX) on data_dir/lauradb.lock while the store is ours */
    /* One maintenance thread: opens a store the previous generation still held, then
     * expires idle cursors and refreshes the usage figures custom_stats shows (so the
     * control thread never waits on the store's locks). */
    pthread_t maint;
    bool maint_running;
    pthread_cond_t maint_cv; /* with q_mu: wakes it for stopping */
    _Atomic uint64_t u_docs, u_bytes, u_colls;
    _Atomic bool u_valid;

    /* The request queue and its threads. */
    pthread_mutex_t q_mu;
    pthread_cond_t q_cv;
    ldb_job *q_head, *q_tail;
    unsigned q_len;
    bool stopping;
    pthread_t *threads;
    unsigned n_threads;

    struct ldb_cursor_table *cursors;

    ldb_op_stats ops[LDB_M_COUNT];
    _Atomic uint64_t docs_inserted, docs_returned, docs_updated, docs_deleted;
    _Atomic uint64_t rejected_full, bad_requests;
    ldb_hist latency;
} ldb_svc;

/* Full gRPC method names, indexed by LDB_M_*. */
extern const char *const ldb_method_names[LDB_M_COUNT];

/* Ends a call: rpc_finish with code/msg, statistics (latency since the job was queued,
 * bytes each way) and frees the job. Any thread. */
void ldb_job_done(ldb_svc *svc, ldb_job *job, mp_rpc_code code, const char *msg,
                  size_t bytes_out);

/* Runs one call to completion on a request thread: decodes, executes against store,
 * answers with rpc_send + rpc_finish and records statistics. */
void ldb_router_execute(ldb_svc *svc, ldb_store *store, ldb_job *job);

/* Milliseconds / nanoseconds on CLOCK_MONOTONIC. */
uint64_t ldb_mono_ns(void);

#endif
