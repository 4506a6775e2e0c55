/*
 * ldb_write.c — insert, update and delete, and the group commit that runs them.
 * A caller builds a write operation, queues it and waits. Whichever waiting caller
 * finds no commit in progress becomes the leader: it takes the queued operations (up to
 * max_batch), runs each in a nested LMDB transaction under one top-level transaction,
 * commits once (one fsync for the batch) and wakes the waiters. A failing operation's
 * nested transaction is aborted, undoing only that operation and its oplog entries.
 * Each operation also moves the collection's index entries (ldb_index.c) in that same
 * nested transaction, and updates/deletes visit only the planner's candidates.
 */
#include "ldb_store_int.h"
#include "ldb_compare.h"
#include "ldb_index.h"
#include "ldb_key.h"
#include "ldb_match.h"
#include "ldb_plan.h"
#include "ldb_update.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum wop_kind { WOP_INSERT, WOP_UPDATE, WOP_DELETE, WOP_CALL };

struct ldb_wop {
    enum wop_kind kind;
    const char *ns;
    MDB_dbi dbi;
    /* insert */
    const bson_t *const *docs;
    size_t n;
    bool ordered;
    /* update / delete; the matcher is compiled by the caller, before queueing */
    const bson_t *filter;
    const bson_t *update;
    const ldb_matcher *m;
    bool multi, upsert;
    /* call */
    ldb_txn_fn fn;
    void *fn_ctx;
    /* the collection's indexes, loaded inside the operation's transaction */
    ldb_ixset ix;
    ldb_ixqueue *ixq; /* insert: non-unique index entries written at the end */
    /* outcome */
    ldb_write_result *r;
    int rc;
    char *err;
    size_t err_len;
    bool done;
    bool rolled_back; /* its nested transaction was aborted */
    struct ldb_wop *next;
};

void ldb_write_result_clear(ldb_write_result *r)
{
    if (!r)
        return;
    if (r->upserted)
        bson_value_destroy(&r->upserted_id);
    free(r->errors);
    memset(r, 0, sizeof *r);
}

/* -------------------------------------------------------------- documents and keys */

static void id_doc(const bson_iter_t *id, bson_t *q)
{
    bson_init(q);
    bson_append_iter(q, "_id", 3, id);
}

/* The _id of doc as its key; -EINVAL for bad _ids, -ENOENT when absent. */
static int doc_key(const bson_t *doc, ldb_key *k, bson_iter_t *id, char *err, size_t err_len)
{
    if (!bson_iter_init_find(id, doc, "_id"))
        return -ENOENT;
    return ldb_key_encode(bson_iter_value(id), k, err, err_len);
}

/* *out becomes doc with _id first (generating an ObjectId when missing), which is how
 * MongoDB stores documents. *out is always initialised. */
static void with_id_first(const bson_t *doc, bson_t *out)
{
    bson_iter_t it;
    bson_init(out);
    if (bson_iter_init_find(&it, doc, "_id")) {
        bson_append_iter(out, "_id", 3, &it);
    } else {
        bson_oid_t oid;
        bson_oid_init(&oid, NULL);
        BSON_APPEND_OID(out, "_id", &oid);
    }
    bson_iter_init(&it, doc);
    while (bson_iter_next(&it))
        if (strcmp(bson_iter_key(&it), "_id") != 0)
            bson_append_iter(out, bson_iter_key(&it), (int)bson_iter_key_len(&it), &it);
}

/* True when doc already is what with_id_first would make of it: _id first, no other
 * _id, and every element readable. Such a document is stored as it is, uncopied. */
static bool id_already_first(const bson_t *doc)
{
    bson_iter_t it;
    if (!bson_iter_init(&it, doc) || !bson_iter_next(&it) || strcmp(bson_iter_key(&it), "_id"))
        return false;
    while (bson_iter_next(&it))
        if (strcmp(bson_iter_key(&it), "_id") == 0)
            return false;
    return it.err_off == 0;
}

static void dup_message(const char *ns, const bson_iter_t *id, char *err, size_t err_len)
{
    bson_t q;
    id_doc(id, &q);
    char *js = bson_as_relaxed_extended_json(&q, NULL);
    snprintf(err, err_len, "E11000 duplicate key error collection: %s index: _id_ dup key: %s",
             ns, js ? js : "{}");
    bson_free(js);
    bson_destroy(&q);
}

static int too_large(size_t len, char *err, size_t err_len)
{
    snprintf(err, err_len, "document is too large: %zu bytes (limit %d)", len, LDB_DOC_MAX);
    return -EFBIG;
}

/* Stores a complete document (with _id) as a new record and logs it. Document-level
 * failures return -EEXIST/-EFBIG/-EINVAL having changed nothing; anything else is an
 * LMDB failure that leaves txn unusable. */
static int put_new(ldb_store *s, MDB_txn *txn, struct ldb_wop *op, const bson_t *doc,
                   int64_t *op_id, char *err, size_t err_len)
{
    ldb_key k;
    bson_iter_t id;
    struct ldb_ixkeys *keys = NULL;
    if (doc->len > LDB_DOC_MAX)
        return too_large(doc->len, err, err_len);
    int rc = doc_key(doc, &k, &id, err, err_len);
    if (rc != 0)
        return rc == -ENOENT ? -EINVAL : rc;
    /* Index keys first: a document the indexes refuse (parallel arrays) changes nothing. */
    if (op->ix.n) {
        if (!(keys = calloc(op->ix.n, sizeof *keys))) {
            snprintf(err, err_len, "out of memory");
            return -ENOMEM;
        }
        rc = ldb_ix_doc_keys(&op->ix, doc, keys, err, err_len);
        if (rc != 0) {
            ldb_ixkeys_free(keys, op->ix.n);
            return rc;
        }
    }
    MDB_val kv = {.mv_size = k.len, .mv_data = k.bytes};
    MDB_val vv = {.mv_size = doc->len, .mv_data = (void *)bson_get_data(doc)};
    rc = mdb_put(txn, op->dbi, &kv, &vv, MDB_NOOVERWRITE);
    if (rc == MDB_KEYEXIST) {
        ldb_ixkeys_free(keys, op->ix.n);
        dup_message(op->ns, &id, err, err_len);
        return -EEXIST;
    }
    if (rc != 0) {
        ldb_ixkeys_free(keys, op->ix.n);
        return ldb_mdb_err(rc, "insert", err, err_len);
    }
    if (keys) {
        rc = op->ixq ? ldb_ix_insert_queued(s, txn, op->ns, &op->ix, &k, keys, doc, op->ixq, err,
                                            err_len)
                     : ldb_ix_apply(s, txn, op->ns, &op->ix, &k, NULL, keys, doc, err, err_len);
        ldb_ixkeys_free(keys, op->ix.n);
        /* A unique index refused it: ldb_ix_apply wrote nothing, so removing the
         * document undoes the insert and the batch carries on. */
        if (rc == -EEXIST) {
            int d = mdb_del(txn, op->dbi, &kv, NULL);
            return d ? ldb_mdb_err(d, "undo insert", err, err_len) : rc;
        }
        if (rc != 0)
            return rc;
    }
    return ldb_oplog_append(s, txn, op->ns, LDB_OP_INSERT, doc, NULL, NULL, op_id, err, err_len);
}

static bool doc_level(int rc)
{
    return rc == -EEXIST || rc == -EFBIG || rc == -EINVAL;
}

static int error_code(int rc)
{
    return rc == -EEXIST ? LDB_E_DUPLICATE_KEY : rc == -EFBIG ? LDB_E_TOO_LARGE : LDB_E_BAD_VALUE;
}

static int add_error(ldb_write_result *r, size_t index, int rc, const char msg[256])
{
    ldb_write_error *e = realloc(r->errors, (r->n_errors + 1) * sizeof *e);
    if (!e)
        return -ENOMEM;
    r->errors = e;
    e += r->n_errors++;
    e->index = index;
    e->code = error_code(rc);
    /* Same size as the caller's buffer; copy, not format, so no truncation warning. */
    memcpy(e->msg, msg, sizeof e->msg);
    e->msg[sizeof e->msg - 1] = '\0';
    return 0;
}

/* -------------------------------------------------------------- index upkeep */

/* The index keys of a stored document, taken before anything is written: doc points
 * into LMDB pages that later writes in this transaction may move. Also copies its _id
 * key. *keys stays NULL when the collection has no index. */
static int keys_before_write(struct ldb_wop *op, const MDB_val *k, const bson_t *doc,
                             struct ldb_ixkeys **keys, ldb_key *id)
{
    *keys = NULL;
    if (op->ix.n == 0)
        return 0;
    if (k->mv_size > LDB_KEY_MAX) {
        snprintf(op->err, op->err_len, "corrupt key in %s", op->ns);
        return -EIO;
    }
    memcpy(id->bytes, k->mv_data, k->mv_size);
    id->len = k->mv_size;
    if (!(*keys = calloc(op->ix.n, sizeof **keys))) {
        snprintf(op->err, op->err_len, "out of memory");
        return -ENOMEM;
    }
    int rc = ldb_ix_doc_keys(&op->ix, doc, *keys, op->err, op->err_len);
    if (rc != 0) {
        ldb_ixkeys_free(*keys, op->ix.n);
        *keys = NULL;
    }
    return rc;
}

/* Which documents an update or delete visits: every one in _id order, or only the
 * candidates the planner finds through _id or an index — also in _id order, so "the
 * first match" is the same document either way. The candidates are gathered before
 * the operation changes anything. */
struct visit {
    ldb_keylist ids;
    bool all;
    bool started;
    size_t i;
};

/* Gathers the candidates and opens the cursor that visits them (*c); on failure
 * nothing is left to release. */
static int visit_begin(MDB_txn *txn, struct ldb_wop *op, struct visit *vs, MDB_cursor **c)
{
    ldb_plan plan;
    uint64_t keys = 0;
    memset(vs, 0, sizeof *vs);
    vs->all = true;
    int rc = ldb_plan_choose(txn, op->dbi, &op->ix, op->m, NULL, &plan, op->err, op->err_len);
    if (rc == 0 && plan.index != -1) {
        rc = ldb_plan_collect(txn, &op->ix, &plan, &vs->ids, &keys, op->err, op->err_len);
        vs->all = rc != 0;
        if (rc == 1)
            rc = 0; /* too many: visit everything */
    }
    ldb_plan_free(&plan);
    if (rc != 0)
        return rc;
    rc = mdb_cursor_open(txn, op->dbi, c);
    if (rc != 0) {
        ldb_keylist_free(&vs->ids);
        return ldb_mdb_err(rc, "cursor", op->err, op->err_len);
    }
    return 0;
}

/* Positions c on the next document to visit; MDB_NOTFOUND at the end. After a
 * mdb_cursor_del, LMDB's MDB_NEXT yields the record that followed the deleted one. */
static int visit_next(struct visit *vs, MDB_cursor *c, MDB_val *k, MDB_val *v)
{
    if (vs->all) {
        MDB_cursor_op step = vs->started ? MDB_NEXT : MDB_FIRST;
        vs->started = true;
        return mdb_cursor_get(c, k, v, step);
    }
    while (vs->i < vs->ids.n) {
        size_t i = vs->i++;
        k->mv_size = vs->ids.v[i].len;
        k->mv_data = (void *)ldb_keylist_at(&vs->ids, i);
        int rc = mdb_cursor_get(c, k, v, MDB_SET_KEY);
        if (rc != MDB_NOTFOUND)
            return rc;
    }
    return MDB_NOTFOUND;
}

/* -------------------------------------------------------------- the operations */

static int insert_docs(ldb_store *s, MDB_txn *txn, struct ldb_wop *op);

/* Each exec_* runs inside txn (a nested transaction) and returns 0 to keep its changes
 * or a negative errno to have them rolled back. Insert reports document failures in
 * op->rc and the result instead, since earlier documents stay inserted. */

static int exec_insert(ldb_store *s, MDB_txn *txn, struct ldb_wop *op)
{
    ldb_ixqueue q = {0};
    /* Several documents' index entries are written together, in key order. */
    op->ixq = op->n > 1 && op->ix.n ? &q : NULL;
    int rc = insert_docs(s, txn, op);
    if (rc == 0 && op->ixq)
        rc = ldb_ix_flush(txn, &op->ix, op->ixq, op->err, op->err_len);
    op->ixq = NULL;
    ldb_ixqueue_free(&q);
    return rc;
}

static int insert_docs(ldb_store *s, MDB_txn *txn, struct ldb_wop *op)
{
    char msg[256];
    for (size_t i = 0; i < op->n; i++) {
        bson_t doc;
        int rc;
        if (op->docs[i]->len > LDB_DOC_MAX) {
            /* Checked first so an oversized document is not copied just to be refused. */
            rc = too_large(op->docs[i]->len, msg, sizeof msg);
        } else if (id_already_first(op->docs[i])) {
            rc = put_new(s, txn, op, op->docs[i], &op->r->last_op_id, msg, sizeof msg);
        } else {
            with_id_first(op->docs[i], &doc);
            rc = put_new(s, txn, op, &doc, &op->r->last_op_id, msg, sizeof msg);
            bson_destroy(&doc);
        }
        if (rc == 0) {
            op->r->inserted++;
            continue;
        }
        if (!doc_level(rc)) {
            snprintf(op->err, op->err_len, "%s", msg);
            return rc;
        }
        if (add_error(op->r, i, rc, msg) != 0) {
            snprintf(op->err, op->err_len, "out of memory");
            return -ENOMEM;
        }
        if (op->rc == 0) {
            op->rc = rc;
            snprintf(op->err, op->err_len, "%s", msg);
        }
        if (op->ordered)
            break;
    }
    return 0;
}

static int exec_upsert(ldb_store *s, MDB_txn *txn, struct ldb_wop *op)
{
    bson_t seed, doc;
    bson_iter_t id;
    int rc = ldb_update_apply_upsert(op->filter, op->update, NULL, &seed, op->err, op->err_len);
    if (rc != 0)
        return rc;
    with_id_first(&seed, &doc);
    bson_destroy(&seed);
    rc = put_new(s, txn, op, &doc, &op->r->last_op_id, op->err, op->err_len);
    if (rc == 0 && bson_iter_init_find(&id, &doc, "_id")) {
        bson_value_copy(bson_iter_value(&id), &op->r->upserted_id);
        op->r->upserted = true;
    }
    bson_destroy(&doc);
    return rc;
}

static int exec_update(ldb_store *s, MDB_txn *txn, struct ldb_wop *op)
{
    MDB_cursor *c;
    MDB_val k, v;
    struct visit vs;
    int rc = visit_begin(txn, op, &vs, &c);
    if (rc != 0)
        return rc;
    int result = 0;
    while ((rc = visit_next(&vs, c, &k, &v)) == 0) {
        bson_t doc, out, q;
        bool changed;
        bson_iter_t id;
        if (!bson_init_static(&doc, v.mv_data, v.mv_size)) {
            snprintf(op->err, op->err_len, "corrupt document in %s", op->ns);
            result = -EIO;
            break;
        }
        if (!ldb_match(op->m, &doc))
            continue;
        op->r->matched++;
        result = ldb_update_apply(&doc, op->update, NULL, &out, &changed, op->err, op->err_len);
        if (result != 0)
            break;
        if (changed) {
            struct ldb_ixkeys *old_keys = NULL, *new_keys = NULL;
            ldb_key idk;
            if (out.len > LDB_DOC_MAX) {
                result = too_large(out.len, op->err, op->err_len);
                bson_destroy(&out);
                break;
            }
            result = keys_before_write(op, &k, &doc, &old_keys, &idk);
            if (result == 0)
                result = keys_before_write(op, &k, &out, &new_keys, &idk);
            /* ldb_update_apply refuses to change _id, so the key stays the same. The key
             * is passed from our own copy: k points into the page, which may already be
             * dirty in this transaction, and a put that resizes the record rewrites
             * that page under it. */
            uint8_t kcopy[LDB_KEY_MAX];
            MDB_val nv = {.mv_size = out.len, .mv_data = (void *)bson_get_data(&out)};
            MDB_val kv = {.mv_size = k.mv_size, .mv_data = kcopy};
            if (result == 0 && k.mv_size > sizeof kcopy) {
                snprintf(op->err, op->err_len, "corrupt key in %s", op->ns);
                result = -EIO;
            }
            if (result == 0)
                memcpy(kcopy, k.mv_data, k.mv_size);
            if (result == 0 && (rc = mdb_cursor_put(c, &kv, &nv, MDB_CURRENT)) != 0)
                result = ldb_mdb_err(rc, "update", op->err, op->err_len);
            /* Only entries that changed are touched; a duplicate on a unique index
             * fails the whole operation, which rolls the document back too. */
            if (result == 0 && new_keys)
                result = ldb_ix_apply(s, txn, op->ns, &op->ix, &idk, old_keys, new_keys, &out,
                                      op->err, op->err_len);
            ldb_ixkeys_free(old_keys, op->ix.n);
            ldb_ixkeys_free(new_keys, op->ix.n);
            if (result != 0) {
                bson_destroy(&out);
                break;
            }
            bson_iter_init_find(&id, &out, "_id");
            id_doc(&id, &q);
            result = ldb_oplog_append(s, txn, op->ns, LDB_OP_UPDATE, &out, &q, op->update,
                                      &op->r->last_op_id, op->err, op->err_len);
            bson_destroy(&q);
            if (result != 0) {
                bson_destroy(&out);
                break;
            }
            op->r->modified++;
        }
        bson_destroy(&out);
        if (!op->multi)
            break;
    }
    if (result == 0 && rc != 0 && rc != MDB_NOTFOUND)
        result = ldb_mdb_err(rc, "scan", op->err, op->err_len);
    mdb_cursor_close(c);
    ldb_keylist_free(&vs.ids);
    if (result == 0 && op->r->matched == 0 && op->upsert)
        result = exec_upsert(s, txn, op);
    return result;
}

static int exec_delete(ldb_store *s, MDB_txn *txn, struct ldb_wop *op)
{
    MDB_cursor *c;
    MDB_val k, v;
    struct visit vs;
    int rc = visit_begin(txn, op, &vs, &c);
    if (rc != 0)
        return rc;
    int result = 0;
    while ((rc = visit_next(&vs, c, &k, &v)) == 0) {
        bson_t doc, q;
        bson_iter_t id;
        if (!bson_init_static(&doc, v.mv_data, v.mv_size)) {
            snprintf(op->err, op->err_len, "corrupt document in %s", op->ns);
            result = -EIO;
            break;
        }
        if (!ldb_match(op->m, &doc))
            continue;
        struct ldb_ixkeys *old_keys;
        ldb_key idk;
        result = keys_before_write(op, &k, &doc, &old_keys, &idk);
        if (result != 0)
            break;
        /* Log before deleting: the value pointer is into pages the delete may free. */
        bson_iter_init_find(&id, &doc, "_id");
        id_doc(&id, &q);
        result = ldb_oplog_append(s, txn, op->ns, LDB_OP_DELETE, NULL, &q, NULL,
                                  &op->r->last_op_id, op->err, op->err_len);
        bson_destroy(&q);
        /* The oplog put was on another database; the cursor still sits on this record.
         * After a delete LMDB's MDB_NEXT yields the record that followed it. */
        if (result == 0 && (rc = mdb_cursor_del(c, 0)) != 0)
            result = ldb_mdb_err(rc, "delete", op->err, op->err_len);
        if (result == 0 && old_keys)
            result = ldb_ix_apply(s, txn, op->ns, &op->ix, &idk, old_keys, NULL, NULL, op->err,
                                  op->err_len);
        ldb_ixkeys_free(old_keys, op->ix.n);
        if (result != 0)
            break;
        op->r->deleted++;
        if (!op->multi)
            break;
    }
    if (result == 0 && rc != 0 && rc != MDB_NOTFOUND)
        result = ldb_mdb_err(rc, "scan", op->err, op->err_len);
    mdb_cursor_close(c);
    ldb_keylist_free(&vs.ids);
    return result;
}

static int exec_op(ldb_store *s, MDB_txn *txn, struct ldb_wop *op)
{
    int rc;
    if (op->kind == WOP_CALL)
        return op->fn(s, txn, op->fn_ctx, op->err, op->err_len);
    /* Read in this transaction, so an index created by an earlier operation of the
     * batch is maintained too. */
    rc = ldb_ixset_load(s, txn, op->ns, &op->ix, op->err, op->err_len);
    if (rc != 0)
        return rc;
    switch (op->kind) {
    case WOP_INSERT: rc = exec_insert(s, txn, op); break;
    case WOP_UPDATE: rc = exec_update(s, txn, op); break;
    case WOP_DELETE: rc = exec_delete(s, txn, op); break;
    default: rc = -EINVAL; break;
    }
    ldb_ixset_free(&op->ix);
    return rc;
}

/* An operation whose changes were discarded reports nothing done. */
static void op_failed(struct ldb_wop *op, int rc)
{
    ldb_write_result_clear(op->r);
    op->rolled_back = true;
    op->rc = rc;
}

/* -------------------------------------------------------------- group commit */

/* The batch's transaction has committed or is gone: an index catalog change it made
 * is settled (ldb_ix_catalog_writing). */
static void batch_settled(ldb_store *s)
{
    uint64_t g = atomic_load(&s->ix_gen);
    if (g & 1)
        atomic_store(&s->ix_gen, g + 1);
}

/* Runs op in txn (its own: the batch's when alone, else a nested one) and commits txn,
 * or aborts it when op fails. */
static void run_op(ldb_store *s, MDB_txn *txn, struct ldb_wop *op, const char *what)
{
    int64_t op_start = s->last_op_id;
    int rc = exec_op(s, txn, op);
    if (rc == 0) {
        rc = mdb_txn_commit(txn);
        if (rc != 0)
            rc = ldb_mdb_err(rc, what, op->err, op->err_len);
    } else {
        mdb_txn_abort(txn);
    }
    if (rc != 0) {
        /* Its oplog entries were rolled back with it: reuse their op_ids so the oplog
         * stays dense. */
        s->last_op_id = op_start;
        op_failed(op, rc);
    }
}

static void run_batch(ldb_store *s, struct ldb_wop *batch)
{
    MDB_txn *txn;
    int64_t batch_start = s->last_op_id;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc != 0) {
        for (struct ldb_wop *op = batch; op; op = op->next)
            op_failed(op, ldb_mdb_err(rc, "begin write", op->err, op->err_len));
        return;
    }
    if (!batch->next) {
        /* Alone in its batch, an operation needs no nested transaction: undoing it is
         * aborting the batch, which also spares LMDB's per-nested-transaction tables. */
        run_op(s, txn, batch, "commit");
        batch_settled(s);
        return;
    }
    for (struct ldb_wop *op = batch; op; op = op->next) {
        MDB_txn *child;
        rc = mdb_txn_begin(s->env, txn, 0, &child);
        if (rc != 0)
            op_failed(op, ldb_mdb_err(rc, "begin nested", op->err, op->err_len));
        else
            run_op(s, child, op, "nested commit");
    }
    rc = mdb_txn_commit(txn);
    if (rc != 0) {
        s->last_op_id = batch_start;
        for (struct ldb_wop *op = batch; op; op = op->next)
            if (!op->rolled_back)
                op_failed(op, ldb_mdb_err(rc, "commit", op->err, op->err_len));
    }
    batch_settled(s);
}

/* Queues op and returns once a batch containing it has committed (or failed). */
static int submit(ldb_store *s, struct ldb_wop *op)
{
    pthread_mutex_lock(&s->q_mu);
    op->next = NULL;
    if (s->q_tail)
        s->q_tail->next = op;
    else
        s->q_head = op;
    s->q_tail = op;
    while (!op->done) {
        if (s->leader) {
            pthread_cond_wait(&s->q_cv, &s->q_mu);
            continue;
        }
        /* No commit in progress and ours is not done, so ours is still queued: lead. */
        struct ldb_wop *batch = s->q_head, *last = batch;
        for (unsigned i = 1; i < s->max_batch && last->next; i++)
            last = last->next;
        s->q_head = last->next;
        if (!s->q_head)
            s->q_tail = NULL;
        last->next = NULL;
        s->leader = true;
        pthread_mutex_unlock(&s->q_mu);

        run_batch(s, batch);

        pthread_mutex_lock(&s->q_mu);
        for (struct ldb_wop *o = batch, *nx; o; o = nx) {
            nx = o->next; /* o may return to its caller as soon as it is marked done */
            o->done = true;
        }
        s->leader = false;
        pthread_cond_broadcast(&s->q_cv);
    }
    pthread_mutex_unlock(&s->q_mu);
    return op->rc;
}

/* -------------------------------------------------------------- public entry points */

int ldb_insert(ldb_store *s, const char *ns, const bson_t *const *docs, size_t n, bool ordered,
               ldb_write_result *r, char *err, size_t err_len)
{
    struct ldb_wop op = {.kind = WOP_INSERT, .ns = ns, .docs = docs, .n = n,
                         .ordered = ordered, .r = r, .err = err, .err_len = err_len};
    int rc = ldb_coll_dbi(s, ns, true, &op.dbi, err, err_len);
    if (rc == 0)
        rc = ldb_index_prepare(s, ns, err, err_len);
    if (rc != 0)
        return rc;
    if (n == 0)
        return 0;
    return submit(s, &op);
}

int ldb_write_call(ldb_store *s, ldb_txn_fn fn, void *ctx, char *err, size_t err_len)
{
    ldb_write_result r = {0};
    struct ldb_wop op = {.kind = WOP_CALL, .fn = fn, .fn_ctx = ctx, .r = &r, .err = err,
                         .err_len = err_len};
    int rc = submit(s, &op);
    ldb_write_result_clear(&r);
    return rc;
}

static int filtered(ldb_store *s, struct ldb_wop *op, bool create)
{
    ldb_matcher *m;
    bson_t empty = BSON_INITIALIZER;
    int rc = ldb_match_compile(op->filter ? op->filter : &empty, &m, op->err, op->err_len);
    if (rc != 0)
        return rc;
    op->m = m;
    rc = ldb_coll_dbi(s, op->ns, create, &op->dbi, op->err, op->err_len);
    if (rc == 0)
        rc = ldb_index_prepare(s, op->ns, op->err, op->err_len);
    if (rc == 0)
        rc = submit(s, op);
    else if (rc == -ENOENT && !create)
        rc = 0; /* nothing to delete in a collection that does not exist */
    ldb_matcher_free(m);
    return rc;
}

int ldb_update(ldb_store *s, const char *ns, const bson_t *filter, const bson_t *update,
               bool multi, bool upsert, ldb_write_result *r, char *err, size_t err_len)
{
    struct ldb_wop op = {.kind = WOP_UPDATE, .ns = ns, .filter = filter, .update = update,
                         .multi = multi, .upsert = upsert, .r = r, .err = err,
                         .err_len = err_len};
    /* MongoDB refuses a malformed update (unknown operator, a non-number to $inc,
     * operators mixed with fields, conflicting paths) before matching anything, so the
     * same call cannot succeed or fail depending on what the collection holds: try it
     * on an empty document first. Errors that depend on a document's values ($inc of a
     * string field) can only show when that document is updated. */
    bson_t empty = BSON_INITIALIZER, probe;
    bool changed;
    int rc = ldb_update_apply(&empty, update, NULL, &probe, &changed, err, err_len);
    if (rc < 0)
        return rc;
    bson_destroy(&probe);
    /* Only an upsert can create the collection (MongoDB's implicit creation). */
    return filtered(s, &op, upsert);
}

int ldb_delete(ldb_store *s, const char *ns, const bson_t *filter, bool multi,
               ldb_write_result *r, char *err, size_t err_len)
{
    struct ldb_wop op = {.kind = WOP_DELETE, .ns = ns, .filter = filter, .multi = multi,
                         .r = r, .err = err, .err_len = err_len};
    return filtered(s, &op, false);
}
