/*
 * ldb_store.c — the LMDB environment's lifetime and the catalog: opening and closing
 * the store, recovering the last op_id, validating namespaces, and creating/looking up
 * the per-collection LMDB databases. Writes live in ldb_write.c, reads in ldb_find.c,
 * the oplog format in ldb_oplog.c.
 */
#include "ldb_store_int.h"
#include "ldb_index.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_MAP_SIZE ((size_t)1 << 30)
#define DEFAULT_MAX_DBS 4096
#define DEFAULT_MAX_BATCH 1024

/* LMDB database names; collections get a prefix so no namespace can collide with them. */
#define CATALOG_DB "__catalog"
#define OPLOG_DB "__oplog"
#define INDEXES_DB "__indexes"
#define COLL_PREFIX "c:"

int ldb_mdb_err(int rc, const char *what, char *err, size_t err_len)
{
    snprintf(err, err_len, "%s: %s", what, mdb_strerror(rc));
    switch (rc) {
    case MDB_MAP_FULL:
    case MDB_DBS_FULL:
    case MDB_TXN_FULL: return -ENOSPC;
    case MDB_KEYEXIST: return -EEXIST;
    case MDB_NOTFOUND: return -ENOENT;
    case MDB_BAD_VALSIZE: return -EINVAL;
    default: return rc > 0 && rc < MDB_KEYEXIST ? -rc : -EIO;
    }
}

int64_t ldb_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int ldb_ns_check(const char *ns, char *err, size_t err_len)
{
    size_t len = ns ? strlen(ns) : 0;
    const char *dot = ns ? strchr(ns, '.') : NULL;
    if (len == 0 || len > LDB_NS_MAX) {
        snprintf(err, err_len, "invalid namespace: length must be 1..%d bytes", LDB_NS_MAX);
        return -EINVAL;
    }
    if (!dot || dot == ns || dot[1] == '\0') {
        snprintf(err, err_len, "invalid namespace '%s': expected \"db.collection\"", ns);
        return -EINVAL;
    }
    /* MongoDB reserves '$' in collection names; database names may not contain spaces
     * or path characters. */
    if (strchr(ns, '$') || strcspn(ns, "/\\ \"") < (size_t)(dot - ns)) {
        snprintf(err, err_len, "invalid namespace '%s': illegal character", ns);
        return -EINVAL;
    }
    return 0;
}

static struct ldb_coll *coll_find(ldb_store *s, const char *ns)
{
    for (struct ldb_coll *c = atomic_load_explicit(&s->colls, memory_order_acquire); c;
         c = c->next)
        if (strcmp(c->ns, ns) == 0)
            return c;
    return NULL;
}

int ldb_coll_get(ldb_store *s, const char *ns, bool create, struct ldb_coll **out, char *err,
                 size_t err_len)
{
    char name[sizeof COLL_PREFIX + LDB_NS_MAX];
    MDB_txn *txn = NULL;
    MDB_dbi dbi;
    /* Only namespaces that passed the check are cached, so a hit needs no check. */
    struct ldb_coll *c = ns ? coll_find(s, ns) : NULL;
    if (c) {
        *out = c;
        return 0;
    }
    int rc = ldb_ns_check(ns, err, err_len);
    if (rc != 0)
        return rc;
    snprintf(name, sizeof name, COLL_PREFIX "%s", ns);

    pthread_mutex_lock(&s->dbi_mu);
    c = coll_find(s, ns);
    if (c) {
        *out = c;
        pthread_mutex_unlock(&s->dbi_mu);
        return 0;
    }
    struct ldb_coll *nc = calloc(1, sizeof *nc);
    if (!nc) {
        pthread_mutex_unlock(&s->dbi_mu);
        snprintf(err, err_len, "out of memory");
        return -ENOMEM;
    }
    /* A read transaction suffices to open an existing database; only creation needs the
     * writer lock (and then waits for any group commit in progress). */
    rc = mdb_txn_begin(s->env, NULL, create ? 0 : MDB_RDONLY, &txn);
    if (rc != 0) {
        rc = ldb_mdb_err(rc, "begin", err, err_len);
        goto fail;
    }
    rc = mdb_dbi_open(txn, name, 0, &dbi);
    if (rc == MDB_NOTFOUND && create) {
        rc = mdb_dbi_open(txn, name, MDB_CREATE, &dbi);
        if (rc == 0) {
            bson_t meta = BSON_INITIALIZER;
            BSON_APPEND_DATE_TIME(&meta, "created", ldb_now_ms());
            MDB_val k = {.mv_size = strlen(ns), .mv_data = (void *)ns};
            MDB_val v = {.mv_size = meta.len, .mv_data = (void *)bson_get_data(&meta)};
            rc = mdb_put(txn, s->catalog, &k, &v, 0);
            bson_destroy(&meta);
        }
    }
    if (rc == MDB_NOTFOUND) {
        snprintf(err, err_len, "namespace %s does not exist", ns);
        rc = -ENOENT;
        goto fail;
    }
    if (rc != 0) {
        rc = ldb_mdb_err(rc, "open collection", err, err_len);
        goto fail;
    }
    /* Committing (even a read-only transaction) is what keeps the handle open. */
    rc = mdb_txn_commit(txn);
    txn = NULL;
    if (rc != 0) {
        rc = ldb_mdb_err(rc, "create collection", err, err_len);
        goto fail;
    }
    memcpy(nc->ns, ns, strlen(ns) + 1);
    nc->dbi = dbi;
    pthread_mutex_init(&nc->ix_mu, NULL);
    nc->next = atomic_load_explicit(&s->colls, memory_order_relaxed);
    atomic_store_explicit(&s->colls, nc, memory_order_release);
    *out = nc;
    pthread_mutex_unlock(&s->dbi_mu);
    return 0;

fail:
    if (txn)
        mdb_txn_abort(txn);
    pthread_mutex_unlock(&s->dbi_mu);
    free(nc);
    return rc;
}

int ldb_coll_dbi(ldb_store *s, const char *ns, bool create, MDB_dbi *out, char *err,
                 size_t err_len)
{
    struct ldb_coll *c;
    int rc = ldb_coll_get(s, ns, create, &c, err, err_len);
    if (rc == 0)
        *out = c->dbi;
    return rc;
}

/* A per-thread starting slot spreads the threads over the pool. */
static unsigned rtxn_slot(void)
{
    static _Atomic unsigned next_slot;
    static _Thread_local unsigned slot = UINT32_MAX;
    if (slot == UINT32_MAX)
        slot = atomic_fetch_add(&next_slot, 1) % LDB_RTXN_POOL;
    return slot;
}

int ldb_rtxn_get(ldb_store *s, MDB_txn **out, char *err, size_t err_len)
{
    unsigned first = rtxn_slot();
    for (unsigned i = 0; i < LDB_RTXN_POOL; i++) {
        _Atomic(MDB_txn *) *slot = &s->rtxns[(first + i) % LDB_RTXN_POOL];
        if (!atomic_load_explicit(slot, memory_order_relaxed))
            continue;
        MDB_txn *txn = atomic_exchange(slot, NULL);
        if (!txn)
            continue;
        if (mdb_txn_renew(txn) == 0) {
            *out = txn;
            return 0;
        }
        mdb_txn_abort(txn); /* then begin a fresh one, which reports any real error */
        break;
    }
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, out);
    return rc ? ldb_mdb_err(rc, "read transaction", err, err_len) : 0;
}

void ldb_rtxn_put(ldb_store *s, MDB_txn *txn)
{
    unsigned first = rtxn_slot();
    mdb_txn_reset(txn);
    for (unsigned i = 0; i < LDB_RTXN_POOL; i++) {
        MDB_txn *expect = NULL;
        if (atomic_compare_exchange_strong(&s->rtxns[(first + i) % LDB_RTXN_POOL], &expect,
                                           txn))
            return;
    }
    mdb_txn_abort(txn);
}

int ldb_store_open(const char *dir, const ldb_store_opts *o, ldb_store **out, char *err,
                   size_t err_len)
{
    static const ldb_store_opts defaults;
    MDB_txn *txn = NULL;
    int rc;
    if (!o)
        o = &defaults;
    ldb_store *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, err_len, "out of memory");
        return -ENOMEM;
    }
    pthread_mutex_init(&s->dbi_mu, NULL);
    pthread_mutex_init(&s->ix_mu, NULL);
    pthread_mutex_init(&s->q_mu, NULL);
    pthread_cond_init(&s->q_cv, NULL);
    s->max_batch = o->no_group_commit ? 1 : o->max_batch ? o->max_batch : DEFAULT_MAX_BATCH;

    rc = mdb_env_create(&s->env);
    if (rc != 0) {
        s->env = NULL;
        rc = ldb_mdb_err(rc, "mdb_env_create", err, err_len);
        goto fail;
    }
    if ((rc = mdb_env_set_mapsize(s->env, o->map_size ? o->map_size : DEFAULT_MAP_SIZE)) != 0 ||
        (rc = mdb_env_set_maxdbs(s->env, o->max_dbs ? o->max_dbs : DEFAULT_MAX_DBS)) != 0) {
        rc = ldb_mdb_err(rc, "configure environment", err, err_len);
        goto fail;
    }
    /* NOTLS: a read transaction belongs to the find call, not to the thread, and
     * writers hand batches between threads. Sync on commit stays on unless asked. */
    unsigned flags = MDB_NOTLS | (o->no_sync ? MDB_NOSYNC : 0);
    rc = mdb_env_open(s->env, dir, flags, 0640);
    if (rc != 0) {
        rc = ldb_mdb_err(rc, dir, err, err_len);
        goto fail;
    }
    rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc == 0)
        rc = mdb_dbi_open(txn, CATALOG_DB, MDB_CREATE, &s->catalog);
    if (rc == 0)
        rc = mdb_dbi_open(txn, OPLOG_DB, MDB_CREATE, &s->oplog);
    if (rc == 0)
        rc = mdb_dbi_open(txn, INDEXES_DB, MDB_CREATE, &s->indexes);
    if (rc != 0) {
        rc = ldb_mdb_err(rc, "open catalog", err, err_len);
        goto fail;
    }
    rc = ldb_oplog_recover(s, txn, err, err_len);
    if (rc != 0)
        goto fail;
    rc = mdb_txn_commit(txn);
    txn = NULL;
    if (rc != 0) {
        rc = ldb_mdb_err(rc, "open commit", err, err_len);
        goto fail;
    }
    *out = s;
    return 0;

fail:
    if (txn)
        mdb_txn_abort(txn);
    ldb_store_close(s);
    return rc;
}

void ldb_store_close(ldb_store *s)
{
    if (!s)
        return;
    for (unsigned i = 0; i < LDB_RTXN_POOL; i++) {
        MDB_txn *txn = atomic_exchange(&s->rtxns[i], NULL);
        if (txn)
            mdb_txn_abort(txn);
    }
    for (struct ldb_coll *c = atomic_load(&s->colls), *nx; c; c = nx) {
        nx = c->next;
        ldb_ixshared_release(c->ix);
        pthread_mutex_destroy(&c->ix_mu);
        free(c);
    }
    while (s->ixdbis) {
        struct ldb_ixdbi *x = s->ixdbis;
        s->ixdbis = x->next;
        free(x);
    }
    if (s->oplog_scratch)
        bson_destroy(s->oplog_scratch);
    /* Closing the environment closes every database handle with it. */
    if (s->env)
        mdb_env_close(s->env);
    pthread_cond_destroy(&s->q_cv);
    pthread_mutex_destroy(&s->q_mu);
    pthread_mutex_destroy(&s->dbi_mu);
    pthread_mutex_destroy(&s->ix_mu);
    free(s);
}

int ldb_list_namespaces(ldb_store *s, ldb_ns_fn fn, void *ctx, char *err, size_t err_len)
{
    MDB_txn *txn;
    MDB_cursor *c;
    MDB_val k, v;
    char ns[LDB_NS_MAX + 1];
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc != 0)
        return ldb_mdb_err(rc, "read transaction", err, err_len);
    rc = mdb_cursor_open(txn, s->catalog, &c);
    if (rc != 0) {
        mdb_txn_abort(txn);
        return ldb_mdb_err(rc, "catalog cursor", err, err_len);
    }
    int result = 0;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size > LDB_NS_MAX)
            continue;
        memcpy(ns, k.mv_data, k.mv_size);
        ns[k.mv_size] = '\0';
        if (fn(ns, ctx) != 0)
            break;
    }
    if (rc != 0 && rc != MDB_NOTFOUND)
        result = ldb_mdb_err(rc, "catalog read", err, err_len);
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    return result;
}
