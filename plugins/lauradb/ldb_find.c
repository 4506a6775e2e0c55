/*
 * ldb_find.c — find() over the storage layer, in an LMDB read transaction (so it never
 * waits for or blocks a writer): the plan (ldb_plan.c) gives a collection scan, _id or
 * index candidates fetched in _id order, or an index read in the sort's order; every
 * document is filtered by ldb_match, then either streamed or collected, sorted with
 * ldb_sort_cmp and cut to skip/limit, and shaped by ldb_project on the way out.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* qsort_r */
#endif
#include "ldb_store_int.h"
#include "ldb_compare.h"
#include "ldb_index.h"
#include "ldb_match.h"
#include "ldb_plan.h"
#include "ldb_project.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Filters that are only numeric bounds on an index's first field, for index reads:
 * a key whose number lies strictly between the bounds proves the document matches
 * (doubles round monotonically, so strictly inside as a double is strictly inside as
 * the exact value), and the filter is not evaluated again for it. */
#define INNER_MAX 4
struct inner {
    int n; /* 0: always evaluate the filter */
    uint8_t enc[INNER_MAX][LDB_KEY_NUM_PREFIX]; /* the bounds' key bytes (rank + double) */
    bool lower[INNER_MAX];                       /* $gt/$gte, else $lt/$lte */
};

struct query {
    ldb_matcher *m;
    struct inner inner;
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

/* Where matching documents go: straight out (unsorted, or already in sort order) or
 * into the held array for sorting. */
struct sink {
    struct held *held;
    size_t n, cap, seq;
    size_t keep; /* with a limit, the best skip+limit are all that can be returned */
    int64_t skipped;
    bool stream;
};

static void sink_init(struct sink *k, const struct query *q, bool sorted_already)
{
    memset(k, 0, sizeof *k);
    k->stream = !q->sort || sorted_already;
    /* With a limit only the best skip+limit documents can be returned; keep twice that
     * and trim by sorting when full, which bounds memory at O(skip + limit). */
    k->keep = q->limit > 0 ? (size_t)q->skip + (size_t)q->limit : 0;
    /* A limit too large to bound anything is treated as none, so the refusal applies. */
    if (k->keep > LDB_SORT_MAX)
        k->keep = 0;
}

static void sink_free(struct sink *k)
{
    held_free(k->held, 0, k->n);
    free(k->held);
    k->held = NULL;
    k->n = 0;
}

/* Sets q->inner up for reading ix when the filter allows (see struct inner): only
 * bounds on ix's first, ascending field, at least one on each side, all of them
 * numbers a double holds exactly, on an index without arrays or hashed keys. */
static void inner_setup(struct query *q, const struct ldb_index *ix)
{
    const ldb_constraint *cons;
    size_t n = ldb_match_constraints(q->m, &cons);
    bool lo = false, hi = false;
    q->inner.n = 0;
    if (ix->multikey || ix->truncated || ix->dirs[0] != 1 || n == 0 || n > INNER_MAX ||
        !ldb_match_only_ranges_on(q->m, ix->paths[0]))
        return;
    for (size_t i = 0; i < n; i++) {
        const bson_value_t *v = cons[i].value;
        bool lower = cons[i].op == LDB_C_GT || cons[i].op == LDB_C_GTE;
        bool upper = cons[i].op == LDB_C_LT || cons[i].op == LDB_C_LTE;
        if ((!lower && !upper) || !ldb_is_number(v->value_type) ||
            v->value_type == BSON_TYPE_DECIMAL128 || !ldb_key_index_exact(v) ||
            (v->value_type == BSON_TYPE_DOUBLE && isnan(v->value.v_double)))
            return;
        ldb_kbuf b = {0};
        if (ldb_key_append_index(&b, v, false) != 0 || b.len < LDB_KEY_NUM_PREFIX) {
            ldb_kbuf_free(&b);
            return;
        }
        memcpy(q->inner.enc[i], b.data, LDB_KEY_NUM_PREFIX);
        ldb_kbuf_free(&b);
        q->inner.lower[i] = lower;
        lo |= lower;
        hi |= upper;
    }
    /* Both sides: a one-sided test would let keys of other types through. */
    if (lo && hi)
        q->inner.n = (int)n;
}

/* Whether the index key alone proves the document matches (struct inner). */
static bool inner_has(const struct inner *in, const uint8_t *key, size_t len)
{
    if (in->n == 0 || len < LDB_KEY_NUM_PREFIX)
        return false;
    for (int i = 0; i < in->n; i++) {
        int c = memcmp(key, in->enc[i], LDB_KEY_NUM_PREFIX);
        if (in->lower[i] ? c <= 0 : c >= 0)
            return false;
    }
    return true;
}

/* One candidate document, in scan order; `matched` when it is known to match. Returns
 * 0 to go on, 1 to stop, <0 error. */
static int consume_known(struct query *q, struct sink *k, const bson_t *doc, bool matched)
{
    if (!matched && !ldb_match(q->m, doc))
        return 0;
    if (k->stream) {
        if (k->skipped < q->skip) {
            k->skipped++;
            return 0;
        }
        int rc = emit(q, doc);
        if (rc != 0)
            return rc;
        return q->limit > 0 && (int64_t)q->stats->returned >= q->limit ? 1 : 0;
    }
    if (!k->keep && k->n >= LDB_SORT_MAX) {
        snprintf(q->err, q->err_len,
                 "sort exceeded %d documents without a limit; add a limit or a narrower "
                 "filter", LDB_SORT_MAX);
        return -E2BIG;
    }
    if (k->n == k->cap) {
        size_t ncap = k->cap ? k->cap * 2 : 64;
        struct held *nh = realloc(k->held, ncap * sizeof *nh);
        if (!nh) {
            snprintf(q->err, q->err_len, "out of memory");
            return -ENOMEM;
        }
        k->held = nh;
        k->cap = ncap;
    }
    if (!(k->held[k->n].doc = bson_copy(doc))) {
        snprintf(q->err, q->err_len, "out of memory");
        return -ENOMEM;
    }
    k->held[k->n].seq = k->seq++;
    k->n++;
    if (k->keep && k->n >= 2 * k->keep) {
        qsort_r(k->held, k->n, sizeof *k->held, held_cmp, q->sort);
        held_free(k->held, k->keep, k->n);
        k->n = k->keep;
    }
    return 0;
}

static int consume(struct query *q, struct sink *k, const bson_t *doc)
{
    return consume_known(q, k, doc, false);
}

static int doc_of(struct query *q, const MDB_val *v, bson_t *doc)
{
    q->stats->examined++;
    if (bson_init_static(doc, v->mv_data, v->mv_size))
        return 0;
    snprintf(q->err, q->err_len, "corrupt document");
    return -EIO;
}

/* Scans the collection inside txn in _id order. */
static int scan(struct query *q, MDB_txn *txn, MDB_dbi dbi, struct sink *k)
{
    MDB_cursor *c;
    MDB_val key, v;
    int rc = mdb_cursor_open(txn, dbi, &c);
    if (rc != 0)
        return ldb_mdb_err(rc, "cursor", q->err, q->err_len);
    int result = 0;
    for (rc = mdb_cursor_get(c, &key, &v, MDB_FIRST); rc == 0 && result == 0;
         rc = mdb_cursor_get(c, &key, &v, MDB_NEXT)) {
        bson_t doc;
        result = doc_of(q, &v, &doc);
        if (result == 0)
            result = consume(q, k, &doc);
    }
    if (result == 0 && rc != 0 && rc != MDB_NOTFOUND)
        result = ldb_mdb_err(rc, "scan", q->err, q->err_len);
    mdb_cursor_close(c);
    return result < 0 ? result : 0;
}

/* The document an index entry names; its absence means index and data disagree. */
static int fetch(struct query *q, MDB_txn *txn, MDB_dbi dbi, const MDB_val *id, bson_t *doc)
{
    MDB_val key = *id, v;
    int rc = mdb_get(txn, dbi, &key, &v);
    if (rc == MDB_NOTFOUND) {
        snprintf(q->err, q->err_len, "index %s names a missing document", q->stats->index);
        return -EUCLEAN;
    }
    if (rc != 0)
        return ldb_mdb_err(rc, "fetch", q->err, q->err_len);
    return doc_of(q, &v, doc);
}

/* Reads the plan's ranges in index order (backward when the plan says), handing each
 * document to the sink: the index's order is the sort's, and skip/limit stop early.
 * Within one key, duplicates are read in _id order either way, which is the
 * collection scan's tie-break. */
static int index_stream(struct query *q, MDB_txn *txn, MDB_dbi dbi, const struct ldb_index *ix,
                        const ldb_plan *plan, struct sink *k)
{
    MDB_cursor *c;
    MDB_val key, v;
    int rc = mdb_cursor_open(txn, ix->dbi, &c);
    if (rc != 0)
        return ldb_mdb_err(rc, "index cursor", q->err, q->err_len);
    int result = 0;
    for (size_t i = 0; i < plan->n && result == 0; i++) {
        const struct ldb_range *r = &plan->ranges[plan->backward ? plan->n - 1 - i : i];
        if (!plan->backward) {
            key.mv_data = r->lo;
            key.mv_size = r->lo_len;
            rc = mdb_cursor_get(c, &key, &v, r->lo_len ? MDB_SET_RANGE : MDB_FIRST);
            for (; rc == 0 && result == 0; rc = mdb_cursor_get(c, &key, &v, MDB_NEXT)) {
                bson_t doc;
                if (!ldb_range_below_hi(r, key.mv_data, key.mv_size))
                    break;
                q->stats->keys_examined++;
                bool known = inner_has(&q->inner, key.mv_data, key.mv_size);
                result = fetch(q, txn, dbi, &v, &doc);
                if (result == 0)
                    result = consume_known(q, k, &doc, known);
            }
        } else {
            /* Start after every key that has hi as a prefix: at hi's successor. */
            uint8_t succ[LDB_IKEY_PREFIX];
            size_t sl = r->has_hi ? r->hi_len : 0;
            memcpy(succ, r->hi, sl);
            while (sl > 0 && succ[sl - 1] == 0xFF)
                sl--;
            if (sl > 0) {
                succ[sl - 1]++;
                key.mv_data = succ;
                key.mv_size = sl;
                rc = mdb_cursor_get(c, &key, &v, MDB_SET_RANGE);
                if (rc == 0)
                    rc = mdb_cursor_get(c, &key, &v, MDB_PREV_NODUP);
                else if (rc == MDB_NOTFOUND)
                    rc = mdb_cursor_get(c, &key, &v, MDB_LAST); /* nothing after succ */
            } else {
                rc = mdb_cursor_get(c, &key, &v, MDB_LAST);
            }
            for (; rc == 0 && result == 0; rc = mdb_cursor_get(c, &key, &v, MDB_PREV_NODUP)) {
                if (!ldb_range_above_lo(r, key.mv_data, key.mv_size))
                    break;
                /* Re-seek the key rather than MDB_FIRST_DUP: after MDB_LAST the cursor
                 * is flagged at the end, and LMDB then refuses MDB_NEXT_DUP. */
                uint8_t kb[LDB_KEY_MAX];
                memcpy(kb, key.mv_data, key.mv_size);
                key.mv_data = kb;
                rc = mdb_cursor_get(c, &key, &v, MDB_SET_KEY);
                for (; rc == 0 && result == 0; rc = mdb_cursor_get(c, &key, &v, MDB_NEXT_DUP)) {
                    bson_t doc;
                    q->stats->keys_examined++;
                    result = fetch(q, txn, dbi, &v, &doc);
                    if (result == 0)
                        result = consume(q, k, &doc);
                }
                if (rc != MDB_NOTFOUND)
                    break;
                rc = 0;
            }
        }
        if (result == 0 && rc != 0 && rc != MDB_NOTFOUND)
            result = ldb_mdb_err(rc, "index scan", q->err, q->err_len);
    }
    mdb_cursor_close(c);
    return result < 0 ? result : 0;
}

/* Fetches the candidates in _id order — the collection scan's order, so results and
 * tie-breaks are the same — each once. An _id lookup may name nothing. */
static int fetch_all(struct query *q, MDB_txn *txn, MDB_dbi dbi, const ldb_keylist *ids,
                     bool may_miss, struct sink *k)
{
    int result = 0;
    for (size_t i = 0; i < ids->n && result == 0; i++) {
        MDB_val id = {.mv_size = ids->v[i].len, .mv_data = (void *)ldb_keylist_at(ids, i)}, v;
        bson_t doc;
        if (may_miss) {
            int rc = mdb_get(txn, dbi, &id, &v);
            if (rc == MDB_NOTFOUND)
                continue;
            result = rc ? ldb_mdb_err(rc, "fetch", q->err, q->err_len) : doc_of(q, &v, &doc);
        } else {
            result = fetch(q, txn, dbi, &id, &doc);
        }
        if (result == 0)
            result = consume(q, k, &doc);
    }
    return result < 0 ? result : 0;
}

/* Plans and runs the query in the snapshot; results that were not streamed stay in k. */
static int execute(MDB_txn *txn, MDB_dbi dbi, const ldb_ixset *set, struct query *q,
                   const bson_t *sort, struct sink *k)
{
    ldb_plan plan;
    int rc = ldb_plan_choose(txn, dbi, set, q->m, q->sort ? sort : NULL, &plan, q->err,
                             q->err_len);
    if (rc == 0 && plan.index != -1) {
        const char *name = plan.index == LDB_PLAN_ID ? "_id_" : set->v[plan.index].name;
        size_t nl = strnlen(name, sizeof q->stats->index - 1);
        memcpy(q->stats->index, name, nl);
        q->stats->index[nl] = '\0';
        sink_init(k, q, plan.serves_sort);
        if (plan.serves_sort) {
            inner_setup(q, &set->v[plan.index]);
            rc = index_stream(q, txn, dbi, &set->v[plan.index], &plan, k);
        } else {
            ldb_keylist ids = {0};
            rc = ldb_plan_collect(txn, set, &plan, &ids, &q->stats->keys_examined, q->err,
                                  q->err_len);
            if (rc == 0)
                rc = fetch_all(q, txn, dbi, &ids, plan.index == LDB_PLAN_ID, k);
            ldb_keylist_free(&ids);
            if (rc == 1) {
                /* Too many candidates for the index to pay off. */
                q->stats->index[0] = '\0';
                rc = scan(q, txn, dbi, k);
            }
        }
    } else if (rc == 0) {
        sink_init(k, q, false);
        rc = scan(q, txn, dbi, k);
    }
    ldb_plan_free(&plan);
    return rc;
}

static int run(ldb_store *s, struct ldb_coll *c, struct query *q, const bson_t *sort)
{
    ldb_snap snap;
    struct sink k;
    memset(&k, 0, sizeof k);
    /* Index handles are opened before the snapshot begins, to be usable in it. */
    int rc = ldb_snap_begin(s, c, &snap, q->err, q->err_len);
    if (rc != 0)
        return rc;
    rc = execute(snap.txn, c->dbi, &snap.ix->set, q, sort, &k);
    /* Sorted results are copies; release the snapshot before calling back. */
    ldb_snap_end(s, &snap);
    if (rc < 0 || k.stream) {
        sink_free(&k);
        return rc < 0 ? rc : 0;
    }
    if (k.n > 1)
        qsort_r(k.held, k.n, sizeof *k.held, held_cmp, q->sort);
    size_t from = q->skip > 0 ? (size_t)q->skip : 0;
    size_t to = k.n;
    if (q->limit > 0 && from + (size_t)q->limit < to)
        to = from + (size_t)q->limit;
    for (size_t i = from; i < to && rc == 0; i++)
        rc = emit(q, k.held[i].doc);
    sink_free(&k);
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
    struct ldb_coll *c;
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
        rc = ldb_coll_get(s, ns, false, &c, err, err_len);
        if (rc == 0)
            rc = run(s, c, &q, sort);
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
