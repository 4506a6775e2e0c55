/*
 * ldb_store_stats.c — how much a store holds: documents and bytes per collection and in
 * total, from LMDB's own page counts (mdb_stat), so no collection is scanned. Used by
 * the plugin's health check and custom statistics.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ldb_store_int.h"

struct ns_list {
    char (*names)[LDB_NS_MAX + 1];
    size_t n, cap;
    bool oom;
};

static int collect_ns(const char *ns, void *arg)
{
    struct ns_list *l = arg;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        void *p = realloc(l->names, cap * sizeof(*l->names));
        if (!p) {
            l->oom = true;
            return 1;
        }
        l->names = p;
        l->cap = cap;
    }
    snprintf(l->names[l->n++], LDB_NS_MAX + 1, "%s", ns);
    return 0;
}

int ldb_store_usage(ldb_store *s,
                    int (*fn)(const char *ns, uint64_t docs, uint64_t bytes, void *ctx),
                    void *ctx, uint64_t *docs, uint64_t *bytes, uint64_t *collections,
                    char *err, size_t err_len)
{
    struct ns_list l = {0};
    uint64_t td = 0, tb = 0, tc = 0;
    /* Handles first: ldb_coll_dbi may open a transaction of its own. */
    int rc = ldb_list_namespaces(s, collect_ns, &l, err, err_len);
    if (rc == 0 && l.oom) {
        snprintf(err, err_len, "out of memory");
        rc = -ENOMEM;
    }
    MDB_dbi *dbis = l.n ? calloc(l.n, sizeof(*dbis)) : NULL;
    if (rc == 0 && l.n && !dbis) {
        snprintf(err, err_len, "out of memory");
        rc = -ENOMEM;
    }
    for (size_t i = 0; rc == 0 && i < l.n; i++)
        rc = ldb_coll_dbi(s, l.names[i], false, &dbis[i], err, err_len);
    MDB_txn *txn = NULL;
    if (rc == 0 && (rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)) != 0)
        rc = ldb_mdb_err(rc, "read transaction", err, err_len);
    for (size_t i = 0; rc == 0 && i < l.n; i++) {
        MDB_stat st;
        if ((rc = mdb_stat(txn, dbis[i], &st)) != 0) {
            rc = ldb_mdb_err(rc, "mdb_stat", err, err_len);
            break;
        }
        uint64_t b = (uint64_t)st.ms_psize *
                     (uint64_t)(st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages);
        td += st.ms_entries;
        tb += b;
        tc++;
        if (fn && fn(l.names[i], st.ms_entries, b, ctx) != 0)
            break;
    }
    if (txn)
        mdb_txn_abort(txn);
    free(dbis);
    free(l.names);
    if (rc == 0) {
        if (docs)
            *docs = td;
        if (bytes)
            *bytes = tb;
        if (collections)
            *collections = tc;
    }
    return rc;
}
