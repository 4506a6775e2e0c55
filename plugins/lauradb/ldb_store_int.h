/*
 * ldb_store_int.h — what the storage layer's files (ldb_store.c, ldb_write.c,
 * ldb_find.c, ldb_oplog.c, ldb_index.c, ldb_plan.c) share and nothing above them sees:
 * the store structure, namespace/collection-handle lookup, the oplog append, running a
 * function inside the group commit, and LMDB error mapping.
 */
#ifndef LDB_STORE_INT_H
#define LDB_STORE_INT_H

#include "ldb_store.h"

#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>

struct ldb_ixshared; /* a cached, immutable index set (ldb_index.h) */

/* A collection's LMDB handle, cached because mdb_dbi_open may not run concurrently
 * with itself in one process (so readers must not call it on every find). Entries are
 * only added (at the head, published with a release store) and freed at close, so
 * readers walk the list without a lock. */
struct ldb_coll {
    char ns[LDB_NS_MAX + 1];
    MDB_dbi dbi;
    /* The collection's index set as last loaded for finds, valid while the store's
     * ix_gen still equals its gen (ldb_index.c). ix_mu guards the pointer. */
    pthread_mutex_t ix_mu;
    struct ldb_ixshared *ix;
    struct ldb_coll *next;
};

/* Reset read transactions kept for reuse: beginning one allocates and clears a
 * per-database table (max_dbs entries), renewing a reset one does not. Each pooled
 * one keeps an LMDB reader slot (of 126) but no snapshot, so writers never wait. */
#define LDB_RTXN_POOL 16

struct ldb_wop; /* a queued write, ldb_write.c */

/* An index's LMDB handle, cached like collections' (ldb_index.c). Handles are never
 * closed before the store is: a dropped index's database is emptied, not deleted, so a
 * reader holding an older snapshot can still use it. */
struct ldb_ixdbi {
    char dbname[256];
    MDB_dbi dbi;
    struct ldb_ixdbi *next;
};

struct ldb_store {
    MDB_env *env;
    MDB_dbi catalog; /* ns -> {created: date} */
    MDB_dbi oplog;   /* big-endian op_id -> oplog entry document */
    MDB_dbi indexes; /* ns NUL name -> index definition (ldb_index.c) */

    pthread_mutex_t dbi_mu; /* serialises mdb_dbi_open and adding to colls */
    _Atomic(struct ldb_coll *) colls;
    /* Index handles. Opening one is serialised by dbi_mu like any mdb_dbi_open; the
     * list has its own lock because the group-commit leader reads it inside its write
     * transaction, while dbi_mu may be held by a thread waiting for that transaction. */
    pthread_mutex_t ix_mu;
    struct ldb_ixdbi *ixdbis;

    /* The group-commit queue: writers append, one of them at a time (the leader) takes
     * a batch and commits it. */
    pthread_mutex_t q_mu;
    pthread_cond_t q_cv;
    struct ldb_wop *q_head, *q_tail;
    bool leader;
    unsigned max_batch;

    /* Only touched inside the write transaction, i.e. by one thread at a time; the
     * leader handoff through q_mu orders those accesses. */
    int64_t last_op_id;
    /* The oplog entry being built, reused so that an append allocates nothing once it
     * has grown (ldb_oplog.c); touched only inside the write transaction, like
     * last_op_id. NULL until the first append. */
    bson_t *oplog_scratch;

    /* The index catalog's generation, a sequence lock for the cached index sets: the
     * group-commit leader makes it odd before its transaction first writes "__indexes"
     * and even again once that transaction has committed or aborted. A reader that
     * sees the same even value before and after taking its snapshot knows the
     * snapshot's catalog is the one of that generation. */
    _Atomic uint64_t ix_gen;

    _Atomic(MDB_txn *) rtxns[LDB_RTXN_POOL];
};

/* The collection's cached entry, as ldb_coll_dbi (which it backs). */
int ldb_coll_get(ldb_store *s, const char *ns, bool create, struct ldb_coll **out, char *err,
                 size_t err_len);

/* A read transaction, renewed from the pool when one is there; 0 or <0 with err. */
int ldb_rtxn_get(ldb_store *s, MDB_txn **out, char *err, size_t err_len);
/* Ends a read transaction from ldb_rtxn_get: reset and pooled (its snapshot released,
 * so it holds no pages from writers), or aborted when the pool is full. */
void ldb_rtxn_put(ldb_store *s, MDB_txn *txn);

/* Called by the group-commit leader before it writes the index catalog. */
static inline void ldb_ix_catalog_writing(ldb_store *s)
{
    uint64_t g = atomic_load(&s->ix_gen);
    if (!(g & 1))
        atomic_store(&s->ix_gen, g + 1);
}

/* Maps an LMDB return code to a negative errno and writes "what: message" to err. */
int ldb_mdb_err(int rc, const char *what, char *err, size_t err_len);

/* 0, or -EINVAL with a message: "db.coll", <= LDB_NS_MAX bytes, both parts non-empty. */
int ldb_ns_check(const char *ns, char *err, size_t err_len);

/* The collection's handle, creating the collection (its own committed transaction, and
 * a catalog entry) when create is set. -ENOENT when absent and !create. Must not be
 * called while this thread has a write transaction open. */
int ldb_coll_dbi(ldb_store *s, const char *ns, bool create, MDB_dbi *out, char *err,
                 size_t err_len);

/* Appends one entry in txn with op_id s->last_op_id + 1 (then advancing it); doc, query
 * and update may be NULL. The op_id goes to *op_id when non-NULL. */
int ldb_oplog_append(ldb_store *s, MDB_txn *txn, const char *ns, ldb_op_type t,
                     const bson_t *doc, const bson_t *query, const bson_t *update,
                     int64_t *op_id, char *err, size_t err_len);

/* Reads the highest op_id in txn into s->last_op_id; called once at open. */
int ldb_oplog_recover(ldb_store *s, MDB_txn *txn, char *err, size_t err_len);

int64_t ldb_now_ms(void);

/* Runs fn inside the group commit, in its own nested transaction like any write (a
 * non-zero return rolls back what fn did). For catalog changes such as index builds. */
typedef int (*ldb_txn_fn)(ldb_store *s, MDB_txn *txn, void *ctx, char *err, size_t err_len);
int ldb_write_call(ldb_store *s, ldb_txn_fn fn, void *ctx, char *err, size_t err_len);

#endif
