/*
 * ldb_find.c — find() over the storage layer: a collection scan in an LMDB read
 * transaction (so it never waits for or blocks a writer), filtered by ldb_match, then
 * either streamed in _id order or collected, sorted with ldb_sort_cmp and cut to
 * skip/limit, and shaped by ldb_project on the way out.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* qsort_r */
#endif
#include "ldb_store_int.h"
#include "ldb_compare.h"
#include "ldb_match.h"
#include "ldb_project.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct query {
    ldb_matcher *m;
    ldb_projection *p;
    ldb_sort *sort;
    int64_t skip, limit;
    ldb_doc_fn fn;
    void *ctx;
    ldb_find_stats *stats;
    char *err;
    size_t err_len;
};

/* A collected document and its scan position, the tie-break that makes equal sort keys
 * come out in _id order, deterministically. */
struct held {
    bson_t *doc;
    size_t seq;
};

/* Projects doc and hands it to the caller. Returns 0 to continue, 1 to stop, <0 error. */
static int emit(struct query *q, const bson_t *doc)
{
    int stop;
    if (q->p) {
        bson_t out;
        int rc = ldb_project(q->p, doc, &out, q->err, q->err_len);
        if (rc != 0)
            return rc;
        stop = q->fn(&out, q->ctx);
        bson_destroy(&out);
    } else {
        stop = q->fn(doc, q->ctx);
    }
    q->stats->returned++;
    return stop ? 1 : 0;
}

static int held_cmp(const void *a, const void *b, void *arg)
{
    const struct held *x = a, *y = b;
    int c = ldb_sort_cmp(arg, x->doc, y->doc);
    if (c != 0)
        return c;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void held_free(struct held *h, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        bson_destroy(h[i].doc);
}

/* Scans the collection inside txn. Unsorted results go straight out; sorted ones are
 * copied into *held (the copies outlive the transaction). */
static int scan(struct query *q, MDB_txn *txn, MDB_dbi dbi, struct held **held_out,
                size_t *n_out)
{
    MDB_cursor *c;
    MDB_val k, v;
    struct held *held = NULL;
    size_t n = 0, cap = 0, seq = 0;
    /* With a limit only the best skip+limit documents can be returned; keep twice that
     * and trim by sorting when full, which bounds memory at O(skip + limit). */
    size_t keep = q->limit > 0 ? (size_t)q->skip + (size_t)q->limit : 0;
    /* A limit too large to bound anything is treated as none, so the refusal applies. */
    if (keep > LDB_SORT_MAX)
        keep = 0;
    int64_t skipped = 0;
    int rc = mdb_cursor_open(txn, dbi, &c);
    if (rc != 0)
        return ldb_mdb_err(rc, "cursor", q->err, q->err_len);
    int result = 0;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        bson_t doc;
        q->stats->examined++;
        if (!bson_init_static(&doc, v.mv_data, v.mv_size)) {
            snprintf(q->err, q->err_len, "corrupt document");
            result = -EIO;
            break;
        }
        if (!ldb_match(q->m, &doc))
            continue;
        if (!q->sort) {
            if (skipped < q->skip) {
                skipped++;
                continue;
            }
            result = emit(q, &doc);
            if (result != 0 || (q->limit > 0 && (int64_t)q->stats->returned >= q->limit))
                break;
            continue;
        }
        if (!keep && n >= LDB_SORT_MAX) {
            snprintf(q->err, q->err_len,
                     "sort exceeded %d documents without a limit; add a limit or a narrower "
                     "filter", LDB_SORT_MAX);
            result = -E2BIG;
            break;
        }
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            struct held *nh = realloc(held, ncap * sizeof *nh);
            if (!nh) {
                result = -ENOMEM;
                snprintf(q->err, q->err_len, "out of memory");
                break;
            }
            held = nh;
            cap = ncap;
        }
        held[n].doc = bson_copy(&doc);
        held[n].seq = seq++;
        n++;
        if (keep && n >= 2 * keep) {
            qsort_r(held, n, sizeof *held, held_cmp, q->sort);
            held_free(held, keep, n);
            n = keep;
        }
    }
    if (result == 0 && rc != 0 && rc != MDB_NOTFOUND)
        result = ldb_mdb_err(rc, "scan", q->err, q->err_len);
    mdb_cursor_close(c);
    if (result < 0) {
        held_free(held, 0, n);
        free(held);
        return result;
    }
    *held_out = held;
    *n_out = n;
    return 0;
}

static int run(ldb_store *s, MDB_dbi dbi, struct query *q)
{
    MDB_txn *txn;
    struct held *held = NULL;
    size_t n = 0;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc != 0)
        return ldb_mdb_err(rc, "read transaction", q->err, q->err_len);
    rc = scan(q, txn, dbi, &held, &n);
    /* Sorted results are copies; release the snapshot before calling back. */
    mdb_txn_abort(txn);
    if (rc < 0 || !q->sort)
        return rc < 0 ? rc : 0;
    qsort_r(held, n, sizeof *held, held_cmp, q->sort);
    size_t from = q->skip > 0 ? (size_t)q->skip : 0;
    size_t to = n;
    if (q->limit > 0 && from + (size_t)q->limit < to)
        to = from + (size_t)q->limit;
    for (size_t i = from; i < to && rc == 0; i++)
        rc = emit(q, held[i].doc);
    held_free(held, 0, n);
    free(held);
    return rc < 0 ? rc : 0;
}

int ldb_find(ldb_store *s, const char *ns, const bson_t *filter, const bson_t *projection,
             const bson_t *sort, int64_t skip, int64_t limit, ldb_doc_fn fn, void *ctx,
             ldb_find_stats *stats, char *err, size_t err_len)
{
    ldb_find_stats local;
    bson_t empty = BSON_INITIALIZER;
    struct query q = {.skip = skip, .limit = limit, .fn = fn, .ctx = ctx,
                      .stats = stats ? stats : &local, .err = err, .err_len = err_len};
    MDB_dbi dbi;
    int rc;
    memset(q.stats, 0, sizeof *q.stats);
    if (skip < 0 || limit < 0) {
        snprintf(err, err_len, "skip and limit must be non-negative");
        return -EINVAL;
    }
    rc = ldb_match_compile(filter ? filter : &empty, &q.m, err, err_len);
    if (rc == 0 && projection && !bson_empty(projection))
        rc = ldb_projection_compile(projection, &q.p, err, err_len);
    if (rc == 0 && sort && !bson_empty(sort))
        rc = ldb_sort_compile(sort, &q.sort, err, err_len);
    if (rc == 0) {
        rc = ldb_coll_dbi(s, ns, false, &dbi, err, err_len);
        if (rc == 0)
            rc = run(s, dbi, &q);
        else if (rc == -ENOENT)
            rc = 0; /* a collection that does not exist yet is empty */
    }
    if (q.sort)
        ldb_sort_free(q.sort);
    if (q.p)
        ldb_projection_free(q.p);
    if (q.m)
        ldb_matcher_free(q.m);
    return rc;
}
