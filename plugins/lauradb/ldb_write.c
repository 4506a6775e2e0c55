/*
 * ldb_write.c — insert, update and delete, and the group commit that runs them.
 * A caller builds a write operation, queues it and waits. Whichever waiting caller
 * finds no commit in progress becomes the leader: it takes the queued operations (up to
 * max_batch), runs each in a nested LMDB transaction under one top-level transaction,
 * commits once (one fsync for the batch) and wakes the waiters. A failing operation's
 * nested transaction is aborted, undoing only that operation and its oplog entries.
 */
#include "ldb_store_int.h"
#include "ldb_compare.h"
#include "ldb_key.h"
#include "ldb_match.h"
#include "ldb_update.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum wop_kind { WOP_INSERT, WOP_UPDATE, WOP_DELETE };

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
    if (doc->len > LDB_DOC_MAX)
        return too_large(doc->len, err, err_len);
    int rc = doc_key(doc, &k, &id, err, err_len);
    if (rc != 0)
        return rc == -ENOENT ? -EINVAL : rc;
    MDB_val kv = {.mv_size = k.len, .mv_data = k.bytes};
    MDB_val vv = {.mv_size = doc->len, .mv_data = (void *)bson_get_data(doc)};
    rc = mdb_put(txn, op->dbi, &kv, &vv, MDB_NOOVERWRITE);
    if (rc == MDB_KEYEXIST) {
        dup_message(op->ns, &id, err, err_len);
        return -EEXIST;
    }
    if (rc != 0)
        return ldb_mdb_err(rc, "insert", err, err_len);
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

/* -------------------------------------------------------------- the operations */

/* Each exec_* runs inside txn (a nested transaction) and returns 0 to keep its changes
 * or a negative errno to have them rolled back. Insert reports document failures in
 * op->rc and the result instead, since earlier documents stay inserted. */

static int exec_insert(ldb_store *s, MDB_txn *txn, struct ldb_wop *op)
{
    char msg[256];
    for (size_t i = 0; i < op->n; i++) {
        bson_t doc;
        int rc;
        if (op->docs[i]->len > LDB_DOC_MAX) {
            /* Checked first so an oversized document is not copied just to be refused. */
            rc = too_large(op->docs[i]->len, msg, sizeof msg);
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
    int rc = mdb_cursor_open(txn, op->dbi, &c);
    if (rc != 0)
        return ldb_mdb_err(rc, "cursor", op->err, op->err_len);
    int result = 0;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
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
            if (out.len > LDB_DOC_MAX) {
                result = too_large(out.len, op->err, op->err_len);
                bson_destroy(&out);
                break;
            }
            /* ldb_update_apply refuses to change _id, so the key stays the same. */
            MDB_val nv = {.mv_size = out.len, .mv_data = (void *)bson_get_data(&out)};
            rc = mdb_cursor_put(c, &k, &nv, MDB_CURRENT);
            if (rc != 0) {
                result = ldb_mdb_err(rc, "update", op->err, op->err_len);
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
    if (result == 0 && op->r->matched == 0 && op->upsert)
        result = exec_upsert(s, txn, op);
    return result;
}

static int exec_delete(ldb_store *s, MDB_txn *txn, struct ldb_wop *op)
{
    MDB_cursor *c;
    MDB_val k, v;
    int rc = mdb_cursor_open(txn, op->dbi, &c);
    if (rc != 0)
        return ldb_mdb_err(rc, "cursor", op->err, op->err_len);
    int result = 0;
    MDB_cursor_op step = MDB_FIRST;
    while ((rc = mdb_cursor_get(c, &k, &v, step)) == 0) {
        bson_t doc, q;
        bson_iter_t id;
        step = MDB_NEXT;
        if (!bson_init_static(&doc, v.mv_data, v.mv_size)) {
            snprintf(op->err, op->err_len, "corrupt document in %s", op->ns);
            result = -EIO;
            break;
        }
        if (!ldb_match(op->m, &doc))
            continue;
        /* Log before deleting: the value pointer is into pages the delete may free. */
        bson_iter_init_find(&id, &doc, "_id");
        id_doc(&id, &q);
        result = ldb_oplog_append(s, txn, op->ns, LDB_OP_DELETE, NULL, &q, NULL,
                                  &op->r->last_op_id, op->err, op->err_len);
        bson_destroy(&q);
        if (result != 0)
            break;
        /* The oplog put was on another database; the cursor still sits on this record.
         * After a delete LMDB's MDB_NEXT yields the record that followed it. */
        rc = mdb_cursor_del(c, 0);
        if (rc != 0) {
            result = ldb_mdb_err(rc, "delete", op->err, op->err_len);
            break;
        }
        op->r->deleted++;
        if (!op->multi)
            break;
    }
    if (result == 0 && rc != 0 && rc != MDB_NOTFOUND)
        result = ldb_mdb_err(rc, "scan", op->err, op->err_len);
    mdb_cursor_close(c);
    return result;
}

static int exec_op(ldb_store *s, MDB_txn *txn, struct ldb_wop *op)
{
    switch (op->kind) {
    case WOP_INSERT: return exec_insert(s, txn, op);
    case WOP_UPDATE: return exec_update(s, txn, op);
    case WOP_DELETE: return exec_delete(s, txn, op);
    }
    return -EINVAL;
}

/* An operation whose changes were discarded reports nothing done. */
static void op_failed(struct ldb_wop *op, int rc)
{
    ldb_write_result_clear(op->r);
    op->rolled_back = true;
    op->rc = rc;
}

/* -------------------------------------------------------------- group commit */

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
    for (struct ldb_wop *op = batch; op; op = op->next) {
        MDB_txn *child;
        int64_t op_start = s->last_op_id;
        rc = mdb_txn_begin(s->env, txn, 0, &child);
        if (rc != 0) {
            op_failed(op, ldb_mdb_err(rc, "begin nested", op->err, op->err_len));
            continue;
        }
        rc = exec_op(s, child, op);
        if (rc == 0) {
            rc = mdb_txn_commit(child);
            if (rc != 0)
                rc = ldb_mdb_err(rc, "nested commit", op->err, op->err_len);
        } else {
            mdb_txn_abort(child);
        }
        if (rc != 0) {
            /* Its oplog entries were rolled back with it: reuse their op_ids so the
             * oplog stays dense. */
            s->last_op_id = op_start;
            op_failed(op, rc);
        }
    }
    rc = mdb_txn_commit(txn);
    if (rc != 0) {
        s->last_op_id = batch_start;
        for (struct ldb_wop *op = batch; op; op = op->next)
            if (!op->rolled_back)
                op_failed(op, ldb_mdb_err(rc, "commit", op->err, op->err_len));
    }
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
    if (rc != 0)
        return rc;
    if (n == 0)
        return 0;
    return submit(s, &op);
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
