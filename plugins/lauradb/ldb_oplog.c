/*
 * ldb_oplog.c — LauraDB's oplog: one entry per document change, written in the same
 * LMDB transaction as the change, keyed by a dense, monotonically increasing op_id
 * (big-endian, so LMDB's byte order is numeric order). Entries are small BSON documents
 * carrying the wire OplogEntry fields: {op, ts, ns, t, doc?, q?, u?, txn}.
 */
#include "ldb_store_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static void op_key(uint8_t out[8], int64_t id)
{
    uint64_t v = (uint64_t)id;
    for (int i = 7; i >= 0; i--) {
        out[i] = (uint8_t)v;
        v >>= 8;
    }
}

static int64_t op_key_decode(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return (int64_t)v;
}

/* Past this size the reused entry buffer is released after use rather than kept. */
#define OPLOG_SCRATCH_KEEP (64 * 1024)

int ldb_oplog_append(ldb_store *s, MDB_txn *txn, const char *ns, ldb_op_type t,
                     const bson_t *doc, const bson_t *query, const bson_t *update,
                     int64_t *op_id, char *err, size_t err_len)
{
    int64_t id = s->last_op_id + 1;
    if (!s->oplog_scratch && !(s->oplog_scratch = bson_new())) {
        snprintf(err, err_len, "out of memory");
        return -ENOMEM;
    }
    bson_t *e = s->oplog_scratch;
    bson_reinit(e);
    bool ok = BSON_APPEND_INT64(e, "op", id) && BSON_APPEND_INT64(e, "ts", ldb_now_ms()) &&
              BSON_APPEND_UTF8(e, "ns", ns) && BSON_APPEND_INT32(e, "t", (int32_t)t);
    if (ok && doc)
        ok = BSON_APPEND_DOCUMENT(e, "doc", doc);
    if (ok && query)
        ok = BSON_APPEND_DOCUMENT(e, "q", query);
    if (ok && update)
        ok = BSON_APPEND_DOCUMENT(e, "u", update);
    /* Multi-document transactions do not exist yet; 0 means "none", as on the wire. */
    if (ok)
        ok = BSON_APPEND_INT64(e, "txn", 0);
    int rc = 0;
    if (ok) {
        uint8_t kb[8];
        op_key(kb, id);
        MDB_val k = {.mv_size = 8, .mv_data = kb};
        MDB_val v = {.mv_size = e->len, .mv_data = (void *)bson_get_data(e)};
        /* APPEND: keys only grow, so LMDB can skip the search and fill pages densely. */
        rc = mdb_put(txn, s->oplog, &k, &v, MDB_APPEND);
    }
    if (e->len > OPLOG_SCRATCH_KEEP) {
        bson_destroy(e);
        s->oplog_scratch = NULL;
    }
    if (!ok) {
        /* Not a document-level error: the change it would log is already in txn, so the
         * caller must roll the operation back, which -ENOMEM makes it do. */
        snprintf(err, err_len, "oplog entry could not be built");
        return -ENOMEM;
    }
    if (rc != 0) {
        /* KEYEXIST here would mean a stale op_id, never the caller's document: report
         * it as I/O so the writer rolls back rather than treating it as a duplicate. */
        int code = ldb_mdb_err(rc, "oplog append", err, err_len);
        return code == -EEXIST || code == -EINVAL ? -EIO : code;
    }
    s->last_op_id = id;
    if (op_id)
        *op_id = id;
    return 0;
}

static int last_in_txn(ldb_store *s, MDB_txn *txn, int64_t *out, char *err, size_t err_len)
{
    MDB_cursor *c;
    MDB_val k, v;
    int rc = mdb_cursor_open(txn, s->oplog, &c);
    if (rc != 0)
        return ldb_mdb_err(rc, "oplog cursor", err, err_len);
    rc = mdb_cursor_get(c, &k, &v, MDB_LAST);
    mdb_cursor_close(c);
    if (rc == MDB_NOTFOUND) {
        *out = 0;
        return 0;
    }
    if (rc != 0)
        return ldb_mdb_err(rc, "oplog last", err, err_len);
    if (k.mv_size != 8) {
        snprintf(err, err_len, "oplog: corrupt key of %zu bytes", k.mv_size);
        return -EIO;
    }
    *out = op_key_decode(k.mv_data);
    return 0;
}

int ldb_oplog_recover(ldb_store *s, MDB_txn *txn, char *err, size_t err_len)
{
    return last_in_txn(s, txn, &s->last_op_id, err, err_len);
}

int ldb_oplog_last_id(ldb_store *s, int64_t *out, char *err, size_t err_len)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc != 0)
        return ldb_mdb_err(rc, "read transaction", err, err_len);
    rc = last_in_txn(s, txn, out, err, err_len);
    mdb_txn_abort(txn);
    return rc;
}

/* Fills e from a stored entry; -EIO when a required field is missing or mistyped. */
static int parse_entry(const uint8_t *data, size_t len, ldb_oplog_entry *e)
{
    bson_t b;
    bson_iter_t it;
    uint32_t n;
    int seen = 0;
    if (!bson_init_static(&b, data, len) || !bson_iter_init(&it, &b))
        return -EIO;
    memset(e, 0, sizeof *e);
    while (bson_iter_next(&it)) {
        const char *key = bson_iter_key(&it);
        bson_type_t t = bson_iter_type(&it);
        if (!strcmp(key, "op") && t == BSON_TYPE_INT64) {
            e->op_id = bson_iter_int64(&it);
            seen |= 1;
        } else if (!strcmp(key, "ts") && t == BSON_TYPE_INT64) {
            e->timestamp_ms = bson_iter_int64(&it);
        } else if (!strcmp(key, "ns") && t == BSON_TYPE_UTF8) {
            e->ns = bson_iter_utf8(&it, NULL);
            seen |= 2;
        } else if (!strcmp(key, "t") && t == BSON_TYPE_INT32) {
            e->op_type = (ldb_op_type)bson_iter_int32(&it);
            seen |= 4;
        } else if (!strcmp(key, "doc") && t == BSON_TYPE_DOCUMENT) {
            bson_iter_document(&it, &n, &e->document);
            e->document_len = n;
        } else if (!strcmp(key, "q") && t == BSON_TYPE_DOCUMENT) {
            bson_iter_document(&it, &n, &e->query);
            e->query_len = n;
        } else if (!strcmp(key, "u") && t == BSON_TYPE_DOCUMENT) {
            bson_iter_document(&it, &n, &e->update);
            e->update_len = n;
        } else if (!strcmp(key, "txn") && t == BSON_TYPE_INT64) {
            e->txn_id = bson_iter_int64(&it);
        }
    }
    return seen == 7 ? 0 : -EIO;
}

int ldb_oplog_read(ldb_store *s, int64_t from_op_id, size_t max, ldb_oplog_fn fn, void *ctx,
                   char *err, size_t err_len)
{
    MDB_txn *txn;
    MDB_cursor *c;
    MDB_val k, v;
    uint8_t kb[8];
    size_t count = 0;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc != 0)
        return ldb_mdb_err(rc, "read transaction", err, err_len);
    rc = mdb_cursor_open(txn, s->oplog, &c);
    if (rc != 0) {
        mdb_txn_abort(txn);
        return ldb_mdb_err(rc, "oplog cursor", err, err_len);
    }
    op_key(kb, from_op_id < 0 ? 0 : from_op_id);
    k.mv_size = 8;
    k.mv_data = kb;
    int result = 0;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        ldb_oplog_entry e;
        if (max && count >= max)
            break;
        if (parse_entry(v.mv_data, v.mv_size, &e) != 0) {
            snprintf(err, err_len, "oplog: corrupt entry");
            result = -EIO;
            break;
        }
        count++;
        if (fn(&e, ctx) != 0)
            break;
    }
    if (result == 0 && rc != 0 && rc != MDB_NOTFOUND)
        result = ldb_mdb_err(rc, "oplog read", err, err_len);
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    return result;
}
