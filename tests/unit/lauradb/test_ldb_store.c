/*
 * test_ldb_store.c — LauraDB's LMDB storage layer: insert/update/delete semantics as
 * MongoDB reports them (duplicate _id, ordered vs unordered, upserts, multi), the
 * oplog (contents, dense op_ids, continuity across reopen, rollback of failed
 * operations), find's filter/projection/sort/skip/limit, size limits, _id key order,
 * group commit under 8 threads, and acknowledged writes surviving kill -9.
 * Each test works in its own temporary directory.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "ldb_store.h"
#include "ldb_compare.h"
#include "mp_test.h"
#include "ldb_test_util.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char errbuf[512];

/* ---------------------------------------------------------------- helpers */

static ldb_store *open_store(const char *dir, const ldb_store_opts *o)
{
    ldb_store *s = NULL;
    if (ldb_store_open(dir, o, &s, errbuf, sizeof errbuf) != 0) {
        fprintf(stderr, "open %s: %s\n", dir, errbuf);
        abort();
    }
    return s;
}

/* Tests run without fsync except where durability or its cost is the point. */
static const ldb_store_opts fast = {.no_sync = true};

static int insert_json(ldb_store *s, const char *ns, const char *json, ldb_write_result *r)
{
    bson_t *d = ldb_t_json(json);
    const bson_t *docs[1] = {d};
    int rc = ldb_insert(s, ns, docs, 1, true, r, errbuf, sizeof errbuf);
    bson_destroy(d);
    return rc;
}

/* Results of a find as "json;json;..." (relaxed extended JSON), for compact checks. */
struct collect {
    char buf[8192];
    size_t n;
};

static int collect_fn(const bson_t *doc, void *ctx)
{
    struct collect *c = ctx;
    char *js = bson_as_relaxed_extended_json(doc, NULL);
    size_t used = strlen(c->buf);
    snprintf(c->buf + used, sizeof c->buf - used, "%s%s", c->n ? ";" : "", js);
    bson_free(js);
    c->n++;
    return 0;
}

static int find_str(ldb_store *s, const char *ns, const char *filter, const char *proj,
                    const char *sort, int64_t skip, int64_t limit, struct collect *c,
                    ldb_find_stats *st)
{
    bson_t *f = filter ? ldb_t_json(filter) : NULL;
    bson_t *p = proj ? ldb_t_json(proj) : NULL;
    bson_t *so = sort ? ldb_t_json(sort) : NULL;
    memset(c, 0, sizeof *c);
    int rc = ldb_find(s, ns, f, p, so, skip, limit, collect_fn, c, st, errbuf, sizeof errbuf);
    if (f)
        bson_destroy(f);
    if (p)
        bson_destroy(p);
    if (so)
        bson_destroy(so);
    return rc;
}

static int update_json(ldb_store *s, const char *ns, const char *filter, const char *update,
                       bool multi, bool upsert, ldb_write_result *r)
{
    bson_t *f = ldb_t_json(filter), *u = ldb_t_json(update);
    int rc = ldb_update(s, ns, f, u, multi, upsert, r, errbuf, sizeof errbuf);
    bson_destroy(f);
    bson_destroy(u);
    return rc;
}

static int delete_json(ldb_store *s, const char *ns, const char *filter, bool multi,
                       ldb_write_result *r)
{
    bson_t *f = ldb_t_json(filter);
    int rc = ldb_delete(s, ns, f, multi, r, errbuf, sizeof errbuf);
    bson_destroy(f);
    return rc;
}

static int64_t last_op(ldb_store *s)
{
    int64_t id = -1;
    if (ldb_oplog_last_id(s, &id, errbuf, sizeof errbuf) != 0)
        return -1;
    return id;
}

/* ---------------------------------------------------------------- insert */

MP_TEST(insert_and_find)
{
    char dir[64];
    struct collect c;
    ldb_write_result r = {0};
    ldb_t_mkdir(dir, sizeof dir, "store");
    ldb_store *s = open_store(dir, &fast);

    MP_CHECK_EQ_INT(insert_json(s, "app.users", "{\"_id\": 1, \"a\": 1}", &r), 0);
    MP_CHECK_EQ_INT(r.inserted, 1);
    MP_CHECK_EQ_INT(r.last_op_id, 1);
    ldb_write_result_clear(&r);
    /* No _id: an ObjectId is generated and stored first. */
    MP_CHECK_EQ_INT(insert_json(s, "app.users", "{\"a\": 2, \"b\": \"x\"}", &r), 0);
    ldb_write_result_clear(&r);
    /* _id not first in the input: stored first, as MongoDB does. */
    MP_CHECK_EQ_INT(insert_json(s, "app.users", "{\"z\": 3, \"_id\": \"k\"}", &r), 0);
    ldb_write_result_clear(&r);

    MP_CHECK_EQ_INT(find_str(s, "app.users", "{\"_id\": 1}", NULL, NULL, 0, 0, &c, NULL), 0);
    MP_CHECK_STR(c.buf, "{ \"_id\" : 1, \"a\" : 1 }");
    MP_CHECK_EQ_INT(find_str(s, "app.users", "{\"a\": 2}", NULL, NULL, 0, 0, &c, NULL), 0);
    MP_CHECK_EQ_INT(c.n, 1);
    MP_CHECK(strncmp(c.buf, "{ \"_id\" : { \"$oid\" : \"", 22) == 0);
    MP_CHECK_EQ_INT(find_str(s, "app.users", "{\"_id\": \"k\"}", NULL, NULL, 0, 0, &c, NULL), 0);
    MP_CHECK_STR(c.buf, "{ \"_id\" : \"k\", \"z\" : 3 }");
    /* A collection never written to is empty, not an error. */
    MP_CHECK_EQ_INT(find_str(s, "app.none", NULL, NULL, NULL, 0, 0, &c, NULL), 0);
    MP_CHECK_EQ_INT(c.n, 0);

    ldb_store_close(s);
    ldb_t_rmdir(dir);
}

MP_TEST(duplicate_ordered_unordered)
{
    char dir[64];
    struct collect c;
    ldb_write_result r = {0};
    ldb_t_mkdir(dir, sizeof dir, "store");
    ldb_store *s = open_store(dir, &fast);
    bson_t *d[4] = {ldb_t_json("{\"_id\": 1}"), ldb_t_json("{\"_id\": 1.0}"),
                    ldb_t_json("{\"_id\": 2}"), ldb_t_json("{\"_id\": {\"$numberLong\": \"2\"}}")};
    const bson_t *docs[4] = {d[0], d[1], d[2], d[3]};

    /* Ordered: stops at the first failure, keeps what came before it. 1 and 1.0 are the
     * same _id, as in MongoDB. */
    MP_CHECK_EQ_INT(ldb_insert(s, "t.ord", docs, 4, true, &r, errbuf, sizeof errbuf), -EEXIST);
    MP_CHECK_CONTAINS(errbuf, "E11000 duplicate key");
    MP_CHECK_CONTAINS(errbuf, "t.ord");
    MP_CHECK_EQ_INT(r.inserted, 1);
    MP_CHECK_EQ_INT(r.n_errors, 1);
    if (r.n_errors == 1) {
        MP_CHECK_EQ_INT(r.errors[0].index, 1);
        MP_CHECK_EQ_INT(r.errors[0].code, LDB_E_DUPLICATE_KEY);
    }
    ldb_write_result_clear(&r);
    MP_CHECK_EQ_INT(find_str(s, "t.ord", NULL, NULL, NULL, 0, 0, &c, NULL), 0);
    MP_CHECK_STR(c.buf, "{ \"_id\" : 1 }");

    /* Unordered: every document is attempted. */
    MP_CHECK_EQ_INT(ldb_insert(s, "t.un", docs, 4, false, &r, errbuf, sizeof errbuf), -EEXIST);
    MP_CHECK_EQ_INT(r.inserted, 2);
    MP_CHECK_EQ_INT(r.n_errors, 2);
    if (r.n_errors == 2) {
        MP_CHECK_EQ_INT(r.errors[0].index, 1);
        MP_CHECK_EQ_INT(r.errors[1].index, 3);
    }
    ldb_write_result_clear(&r);
    MP_CHECK_EQ_INT(find_str(s, "t.un", NULL, NULL, NULL, 0, 0, &c, NULL), 0);
    MP_CHECK_STR(c.buf, "{ \"_id\" : 1 };{ \"_id\" : 2 }");
    /* Only the inserted documents were logged. */
    MP_CHECK_EQ_INT(last_op(s), 3);

    /* Arrays cannot be _ids. */
    MP_CHECK_EQ_INT(insert_json(s, "t.un", "{\"_id\": [1]}", &r), -EINVAL);
    MP_CHECK_CONTAINS(errbuf, "array");
    ldb_write_result_clear(&r);

    for (int i = 0; i < 4; i++)
        bson_destroy(d[i]);
    ldb_store_close(s);
    ldb_t_rmdir(dir);
}

/* ---------------------------------------------------------------- update / delete */

MP_TEST(update_semantics)
{
    char dir[64];
    struct collect c;
    ldb_write_result r = {0};
    ldb_t_mkdir(dir, sizeof dir, "store");
    ldb_store *s = open_store(dir, &fast);
    for (int i = 1; i <= 3; i++) {
        char js[64];
        snprintf(js, sizeof js, "{\"_id\": %d, \"g\": \"x\", \"n\": %d}", i, i);
        insert_json(s, "u.c", js, &r);
        ldb_write_result_clear(&r);
    }

    /* Single: the first match in _id order. */
    MP_CHECK_EQ_INT(update_json(s, "u.c", "{\"g\": \"x\"}", "{\"$inc\": {\"n\": 10}}", false, false, &r), 0);
    MP_CHECK_EQ_INT(r.matched, 1);
    MP_CHECK_EQ_INT(r.modified, 1);
    ldb_write_result_clear(&r);
    MP_CHECK_EQ_INT(find_str(s, "u.c", NULL, "{\"n\": 1, \"_id\": 0}", NULL, 0, 0, &c, NULL), 0);
    MP_CHECK_STR(c.buf, "{ \"n\" : 11 };{ \"n\" : 2 };{ \"n\" : 3 }");

    /* Multi, with one document already in the target state: matched 3, modified 2. */
    MP_CHECK_EQ_INT(update_json(s, "u.c", "{}", "{\"$set\": {\"n\": 2}}", true, false, &r), 0);
    MP_CHECK_EQ_INT(r.matched, 3);
    MP_CHECK_EQ_INT(r.modified, 2);
    MP_CHECK(!r.upserted);
    ldb_write_result_clear(&r);

    /* Replacement keeps _id. */
    MP_CHECK_EQ_INT(update_json(s, "u.c", "{\"_id\": 3}", "{\"r\": true}", false, false, &r), 0);
    ldb_write_result_clear(&r);
    MP_CHECK_EQ_INT(find_str(s, "u.c", "{\"_id\": 3}", NULL, NULL, 0, 0, &c, NULL), 0);
    MP_CHECK_STR(c.buf, "{ \"_id\" : 3, \"r\" : true }");

    /* An error on the second document rolls back the first one's change too, and its
     * oplog entries. */
    int64_t before = last_op(s);
    MP_CHECK_EQ_INT(update_json(s, "u.c", "{}", "{\"$inc\": {\"g\": 1}}", true, false, &r), -EINVAL);
    MP_CHECK_EQ_INT(r.matched, 0);
    ldb_write_result_clear(&r);
    MP_CHECK_EQ_INT(last_op(s), before);
    MP_CHECK_EQ_INT(find_str(s, "u.c", NULL, NULL, NULL, 0, 0, &c, NULL), 0);
    MP_CHECK_STR(c.buf, "{ \"_id\" : 1, \"g\" : \"x\", \"n\" : 2 };"
                        "{ \"_id\" : 2, \"g\" : \"x\", \"n\" : 2 };{ \"_id\" : 3, \"r\" : true }");

    /* Changing _id is refused. */
    MP_CHECK_EQ_INT(update_json(s, "u.c", "{\"_id\": 1}", "{\"$set\": {\"_id\": 9}}", false, false, &r), -EINVAL);
    ldb_write_result_clear(&r);

    /* Upsert without _id in the filter: a generated ObjectId, filter fields seeded. */
    MP_CHECK_EQ_INT(update_json(s, "u.c", "{\"g\": \"new\"}", "{\"$set\": {\"k\": 1}}", false, true, &r), 0);
    MP_CHECK(r.upserted);
    MP_CHECK_EQ_INT(r.matched, 0);
    MP_CHECK(r.upserted_id.value_type == BSON_TYPE_OID);
    ldb_write_result_clear(&r);
    MP_CHECK_EQ_INT(find_str(s, "u.c", "{\"g\": \"new\"}", "{\"_id\": 0}", NULL, 0, 0, &c, NULL), 0);
    MP_CHECK_STR(c.buf, "{ \"g\" : \"new\", \"k\" : 1 }");
    /* Upsert with _id in the filter uses it. */
    MP_CHECK_EQ_INT(update_json(s, "u.c", "{\"_id\": 42}", "{\"$set\": {\"k\": 2}}", false, true, &r), 0);
    MP_CHECK(r.upserted && r.upserted_id.value_type == BSON_TYPE_INT32 &&
             r.upserted_id.value.v_int32 == 42);
    ldb_write_result_clear(&r);
    /* An upsert that matches updates instead. */
    MP_CHECK_EQ_INT(update_json(s, "u.c", "{\"_id\": 42}", "{\"$set\": {\"k\": 3}}", false, true, &r), 0);
    MP_CHECK(!r.upserted);
    MP_CHECK_EQ_INT(r.modified, 1);
    ldb_write_result_clear(&r);
    /* Updating a missing collection without upsert matches nothing and creates nothing. */
    MP_CHECK_EQ_INT(update_json(s, "u.none", "{}", "{\"$set\": {\"a\": 1}}", true, false, &r), 0);
    MP_CHECK_EQ_INT(r.matched, 0);
    ldb_write_result_clear(&r);

    ldb_store_close(s);
    ldb_t_rmdir(dir);
}

static int count_ns(const char *ns, void *ctx)
{
    (void)ns;
    (*(int *)ctx)++;
    return 0;
}

MP_TEST(delete_semantics)
{
    char dir[64];
    struct collect c;
    ldb_write_result r = {0};
    int nns = 0;
    ldb_t_mkdir(dir, sizeof dir, "store");
    ldb_store *s = open_store(dir, &fast);
    for (int i = 1; i <= 5; i++) {
        char js[64];
        snprintf(js, sizeof js, "{\"_id\": %d, \"odd\": %s}", i, i % 2 ? "true" : "false");
        insert_json(s, "d.c", js, &r);
        ldb_write_result_clear(&r);
    }
    MP_CHECK_EQ_INT(delete_json(s, "d.c", "{\"odd\": true}", false, &r), 0);
    MP_CHECK_EQ_INT(r.deleted, 1);
    ldb_write_result_clear(&r);
    MP_CHECK_EQ_INT(find_str(s, "d.c", NULL, "{\"odd\": 0}", NULL, 0, 0, &c, NULL), 0);
    MP_CHECK_STR(c.buf, "{ \"_id\" : 2 };{ \"_id\" : 3 };{ \"_id\" : 4 };{ \"_id\" : 5 }");
    /* Multi deletes adjacent records: the cursor must not skip the one after a delete. */
    MP_CHECK_EQ_INT(delete_json(s, "d.c", "{\"_id\": {\"$gte\": 2}}", true, &r), 0);
    MP_CHECK_EQ_INT(r.deleted, 4);
    ldb_write_result_clear(&r);
    MP_CHECK_EQ_INT(find_str(s, "d.c", NULL, NULL, NULL, 0, 0, &c, NULL), 0);
    MP_CHECK_EQ_INT(c.n, 0);
    MP_CHECK_EQ_INT(delete_json(s, "d.none", "{}", true, &r), 0);
    MP_CHECK_EQ_INT(r.deleted, 0);
    ldb_write_result_clear(&r);
    MP_CHECK_EQ_INT(delete_json(s, "d.c", "{\"$bogus\": 1}", true, &r), -EINVAL);
    ldb_write_result_clear(&r);
    /* Deleting from a missing collection does not create it. */
    MP_CHECK_EQ_INT(ldb_list_namespaces(s, count_ns, &nns, errbuf, sizeof errbuf), 0);
    MP_CHECK_EQ_INT(nns, 1);
    ldb_store_close(s);
    ldb_t_rmdir(dir);
}

/* ---------------------------------------------------------------- oplog */

struct oplog_seen {
    int64_t ids[64];
    int types[64];
    char docs[64][128];
    char queries[64][128];
    char ns[64][32];
    bool ts_ok;
    size_t n;
};

static int oplog_fn(const ldb_oplog_entry *e, void *ctx)
{
    struct oplog_seen *o = ctx;
    if (o->n >= 64)
        return 1;
    o->ids[o->n] = e->op_id;
    o->types[o->n] = e->op_type;
    o->docs[o->n][0] = o->queries[o->n][0] = '\0';
    bson_t b;
    if (e->document && bson_init_static(&b, e->document, e->document_len)) {
        char *js = bson_as_relaxed_extended_json(&b, NULL);
        snprintf(o->docs[o->n], 128, "%s", js);
        bson_free(js);
    }
    if (e->query && bson_init_static(&b, e->query, e->query_len)) {
        char *js = bson_as_relaxed_extended_json(&b, NULL);
        snprintf(o->queries[o->n], 128, "%s", js);
        bson_free(js);
    }
    snprintf(o->ns[o->n], sizeof o->ns[0], "%s", e->ns);
    o->ts_ok &= e->timestamp_ms > 1600000000000LL && e->txn_id == 0;
    o->n++;
    return 0;
}

MP_TEST(oplog_contents_and_reopen)
{
    char dir[64];
    ldb_write_result r = {0};
    struct oplog_seen o = {.ts_ok = true};
    ldb_t_mkdir(dir, sizeof dir, "store");
    ldb_store *s = open_store(dir, &fast);
    insert_json(s, "o.c", "{\"_id\": 1, \"a\": 1}", &r);
    ldb_write_result_clear(&r);
    update_json(s, "o.c", "{\"_id\": 1}", "{\"$set\": {\"a\": 2}}", false, false, &r);
    ldb_write_result_clear(&r);
    delete_json(s, "o.c", "{\"_id\": 1}", false, &r);
    MP_CHECK_EQ_INT(r.last_op_id, 3);
    ldb_write_result_clear(&r);

    MP_CHECK_EQ_INT(ldb_oplog_read(s, 0, 0, oplog_fn, &o, errbuf, sizeof errbuf), 0);
    MP_CHECK_EQ_INT(o.n, 3);
    MP_CHECK(o.ts_ok);
    if (o.n == 3) {
        MP_CHECK_EQ_INT(o.ids[0], 1);
        MP_CHECK_EQ_INT(o.ids[2], 3);
        MP_CHECK_EQ_INT(o.types[0], LDB_OP_INSERT);
        MP_CHECK_EQ_INT(o.types[1], LDB_OP_UPDATE);
        MP_CHECK_EQ_INT(o.types[2], LDB_OP_DELETE);
        MP_CHECK_STR(o.ns[1], "o.c");
        MP_CHECK_STR(o.docs[0], "{ \"_id\" : 1, \"a\" : 1 }");
        MP_CHECK_STR(o.docs[1], "{ \"_id\" : 1, \"a\" : 2 }");
        MP_CHECK_STR(o.queries[1], "{ \"_id\" : 1 }");
        MP_CHECK_STR(o.queries[2], "{ \"_id\" : 1 }");
    }
    ldb_store_close(s);

    /* op_ids continue after reopen. */
    s = open_store(dir, &fast);
    MP_CHECK_EQ_INT(last_op(s), 3);
    insert_json(s, "o.c", "{\"_id\": 2}", &r);
    MP_CHECK_EQ_INT(r.last_op_id, 4);
    ldb_write_result_clear(&r);
    memset(&o, 0, sizeof o);
    MP_CHECK_EQ_INT(ldb_oplog_read(s, 2, 2, oplog_fn, &o, errbuf, sizeof errbuf), 0);
    MP_CHECK_EQ_INT(o.n, 2);
    MP_CHECK_EQ_INT(o.ids[0], 2);
    MP_CHECK_EQ_INT(o.ids[1], 3);
    ldb_store_close(s);
    ldb_t_rmdir(dir);
}

/* ---------------------------------------------------------------- find */

MP_TEST(find_projection_sort_skip_limit)
{
    char dir[64];
    struct collect c;
    ldb_write_result r = {0};
    ldb_find_stats st;
    ldb_t_mkdir(dir, sizeof dir, "store");
    ldb_store *s = open_store(dir, &fast);
    for (int i = 0; i < 10; i++) {
        char js[64];
        snprintf(js, sizeof js, "{\"_id\": %d, \"a\": %d, \"b\": \"x\"}", i, i % 3);
        insert_json(s, "f.c", js, &r);
        ldb_write_result_clear(&r);
    }
    /* a ascending, _id descending: a=0: 9 6 3 0; a=1: 7 4 1; ... skip 2 limit 3. */
    MP_CHECK_EQ_INT(find_str(s, "f.c", NULL, "{\"b\": 0}", "{\"a\": 1, \"_id\": -1}", 2, 3, &c, &st), 0);
    MP_CHECK_STR(c.buf, "{ \"_id\" : 3, \"a\" : 0 };{ \"_id\" : 0, \"a\" : 0 };{ \"_id\" : 7, \"a\" : 1 }");
    MP_CHECK_EQ_INT(st.examined, 10);
    MP_CHECK_EQ_INT(st.returned, 3);
    /* Unsorted: _id order, stops scanning at the limit. */
    MP_CHECK_EQ_INT(find_str(s, "f.c", "{\"a\": 1}", "{\"_id\": 1}", NULL, 1, 1, &c, &st), 0);
    MP_CHECK_STR(c.buf, "{ \"_id\" : 4 }");
    MP_CHECK_EQ_INT(st.examined, 5);
    MP_CHECK_EQ_INT(st.returned, 1);
    /* Errors from the compilers come back with their messages. */
    MP_CHECK_EQ_INT(find_str(s, "f.c", NULL, "{\"a\": 1, \"b\": 0}", NULL, 0, 0, &c, NULL), -EINVAL);
    MP_CHECK_EQ_INT(find_str(s, "f.c", "{\"a\": {\"$nope\": 1}}", NULL, NULL, 0, 0, &c, NULL), -EINVAL);
    MP_CHECK_EQ_INT(find_str(s, "f.c", NULL, NULL, NULL, -1, 0, &c, NULL), -EINVAL);
    ldb_store_close(s);
    ldb_t_rmdir(dir);
}

struct ids {
    int64_t *v;
    size_t n;
};

static int take_b(const bson_t *doc, void *ctx)
{
    struct ids *x = ctx;
    bson_iter_t it;
    if (bson_iter_init_find(&it, doc, "b"))
        x->v[x->n++] = bson_iter_as_int64(&it);
    return 0;
}

/* Sorting with a limit keeps only skip+limit documents; without one, more than
 * LDB_SORT_MAX matches are refused. */
MP_TEST(find_sort_bounds)
{
    char dir[64];
    ldb_write_result r = {0};
    int64_t got[8];
    struct ids x = {got, 0};
    ldb_t_mkdir(dir, sizeof dir, "store");
    ldb_store *s = open_store(dir, &fast);
    size_t n = LDB_SORT_MAX + 1;
    bson_t *d = calloc(n, sizeof *d);
    const bson_t **docs = calloc(n, sizeof *docs);
    for (size_t i = 0; i < n; i++) {
        bson_init(&d[i]);
        BSON_APPEND_INT64(&d[i], "_id", (int64_t)i);
        /* b is a permutation of 0..n-1, so the sort has real work to do. */
        BSON_APPEND_INT64(&d[i], "b", (int64_t)((i * 7919) % n));
        docs[i] = &d[i];
    }
    MP_CHECK_EQ_INT(ldb_insert(s, "b.c", docs, n, true, &r, errbuf, sizeof errbuf), 0);
    MP_CHECK_EQ_INT(r.inserted, n);
    ldb_write_result_clear(&r);
    bson_t *sort = ldb_t_json("{\"b\": -1}");
    MP_CHECK_EQ_INT(ldb_find(s, "b.c", NULL, NULL, sort, 3, 5, take_b, &x, NULL, errbuf, sizeof errbuf), 0);
    MP_CHECK_EQ_INT(x.n, 5);
    for (size_t i = 0; i < x.n; i++)
        MP_CHECK_EQ_INT(got[i], (int64_t)(n - 4 - i));
    x.n = 0;
    MP_CHECK_EQ_INT(ldb_find(s, "b.c", NULL, NULL, sort, 0, 0, take_b, &x, NULL, errbuf, sizeof errbuf), -E2BIG);
    MP_CHECK_CONTAINS(errbuf, "without a limit");
    MP_CHECK_EQ_INT(x.n, 0);
    bson_destroy(sort);
    for (size_t i = 0; i < n; i++)
        bson_destroy(&d[i]);
    free(d);
    free(docs);
    ldb_store_close(s);
    ldb_t_rmdir(dir);
}

/* ---------------------------------------------------------------- limits and keys */

MP_TEST(size_limits)
{
    char dir[64];
    char ns[200];
    ldb_write_result r = {0};
    ldb_t_mkdir(dir, sizeof dir, "store");
    ldb_store *s = open_store(dir, &fast);

    memset(ns, 'x', sizeof ns);
    ns[0] = 'd';
    ns[1] = '.';
    ns[LDB_NS_MAX] = '\0';
    MP_CHECK_EQ_INT(insert_json(s, ns, "{}", &r), 0);
    ldb_write_result_clear(&r);
    ns[LDB_NS_MAX] = 'x';
    ns[LDB_NS_MAX + 1] = '\0';
    MP_CHECK_EQ_INT(insert_json(s, ns, "{}", &r), -EINVAL);
    MP_CHECK_CONTAINS(errbuf, "namespace");
    MP_CHECK_EQ_INT(insert_json(s, "nodot", "{}", &r), -EINVAL);
    MP_CHECK_EQ_INT(insert_json(s, "a.", "{}", &r), -EINVAL);
    MP_CHECK_EQ_INT(insert_json(s, "a.b$c", "{}", &r), -EINVAL);

    /* A 16 MiB + 1 document is refused, a just-under-the-limit one accepted. */
    size_t big = LDB_DOC_MAX;
    char *str = malloc(big);
    memset(str, 'y', big);
    str[big - 1] = '\0';
    bson_t doc = BSON_INITIALIZER;
    bson_append_utf8(&doc, "s", 1, str, (int)(big - 1 - 64));
    const bson_t *docs[1] = {&doc};
    MP_CHECK_EQ_INT(ldb_insert(s, "l.c", docs, 1, true, &r, errbuf, sizeof errbuf), 0);
    ldb_write_result_clear(&r);
    bson_reinit(&doc);
    bson_append_utf8(&doc, "s", 1, str, (int)(big - 1));
    MP_CHECK(doc.len > LDB_DOC_MAX);
    MP_CHECK_EQ_INT(ldb_insert(s, "l.c", docs, 1, true, &r, errbuf, sizeof errbuf), -EFBIG);
    MP_CHECK_CONTAINS(errbuf, "too large");
    MP_CHECK_EQ_INT(r.n_errors, 1);
    if (r.n_errors)
        MP_CHECK_EQ_INT(r.errors[0].code, LDB_E_TOO_LARGE);
    ldb_write_result_clear(&r);
    /* An update that grows a document past the limit fails and changes nothing. */
    bson_t *f = ldb_t_json("{}");
    bson_t upd = BSON_INITIALIZER, set;
    BSON_APPEND_DOCUMENT_BEGIN(&upd, "$set", &set);
    bson_append_utf8(&set, "t", 1, str, 1000);
    bson_append_document_end(&upd, &set);
    MP_CHECK_EQ_INT(ldb_update(s, "l.c", f, &upd, false, false, &r, errbuf, sizeof errbuf), -EFBIG);
    MP_CHECK_EQ_INT(r.modified, 0);
    ldb_write_result_clear(&r);
    bson_destroy(&upd);
    bson_destroy(f);
    bson_destroy(&doc);
    free(str);
    ldb_store_close(s);
    ldb_t_rmdir(dir);
}

/* A write that does not fit the map fails alone: its nested transaction is rolled
 * back, the batch's transaction still commits, and later writes work. */
MP_TEST(map_full_fails_only_that_write)
{
    char dir[64];
    ldb_write_result r = {0};
    ldb_store_opts o = {.no_sync = true, .map_size = 4u << 20};
    ldb_t_mkdir(dir, sizeof dir, "store");
    ldb_store *s = open_store(dir, &o);
    MP_CHECK_EQ_INT(insert_json(s, "m.c", "{\"_id\": 1}", &r), 0);
    ldb_write_result_clear(&r);
    size_t big = 3u << 20;
    char *str = malloc(big);
    memset(str, 'z', big);
    bson_t doc = BSON_INITIALIZER;
    bson_append_utf8(&doc, "s", 1, str, (int)big);
    const bson_t *docs[1] = {&doc};
    /* 3 MiB in the document plus 3 MiB in its oplog entry exceed the 4 MiB map. */
    MP_CHECK_EQ_INT(ldb_insert(s, "m.c", docs, 1, true, &r, errbuf, sizeof errbuf), -ENOSPC);
    MP_CHECK_CONTAINS(errbuf, "MDB_MAP_FULL");
    MP_CHECK_EQ_INT(r.inserted, 0);
    ldb_write_result_clear(&r);
    MP_CHECK_EQ_INT(insert_json(s, "m.c", "{\"_id\": 2}", &r), 0);
    MP_CHECK_EQ_INT(r.last_op_id, 2);
    ldb_write_result_clear(&r);
    struct collect c;
    MP_CHECK_EQ_INT(find_str(s, "m.c", NULL, NULL, NULL, 0, 0, &c, NULL), 0);
    MP_CHECK_STR(c.buf, "{ \"_id\" : 1 };{ \"_id\" : 2 }");
    bson_destroy(&doc);
    free(str);
    ldb_store_close(s);
    ldb_t_rmdir(dir);
}

struct idlist {
    bson_value_t v[32];
    size_t n;
};

static int take_id(const bson_t *doc, void *ctx)
{
    struct idlist *l = ctx;
    bson_iter_t it;
    if (l->n < 32 && bson_iter_init_find(&it, doc, "_id"))
        bson_value_copy(bson_iter_value(&it), &l->v[l->n++]);
    return 0;
}

/* _id order in storage (the LMDB key order) agrees with ldb_value_cmp. */
MP_TEST(key_order_matches_compare)
{
    char dir[64];
    ldb_write_result r = {0};
    struct idlist l = {.n = 0};
    static const char *ids[] = {
        "\"b\"", "{\"$numberLong\": \"9007199254740993\"}", "{\"$numberLong\": \"9007199254740992\"}",
        "{\"$numberDouble\": \"NaN\"}", "-5", "1.5", "{\"$numberLong\": \"-9223372036854775808\"}",
        "{\"$numberLong\": \"9223372036854775807\"}", "{\"$numberDouble\": \"-Infinity\"}", "2",
        "\"a\"", "\"ab\"", "\"\"", "{\"$oid\": \"000000000000000000000002\"}",
        "{\"$oid\": \"000000000000000000000001\"}", "true", "false", "null", "{\"$minKey\": 1}",
        "{\"$maxKey\": 1}", "{\"$date\": {\"$numberLong\": \"-5\"}}", "{\"$date\": 5}",
        "{\"x\": 1}", "{\"$binary\": {\"base64\": \"AA==\", \"subType\": \"00\"}}"};
    size_t n = sizeof ids / sizeof ids[0];
    ldb_t_mkdir(dir, sizeof dir, "store");
    ldb_store *s = open_store(dir, &fast);
    for (size_t i = 0; i < n; i++) {
        char js[128];
        snprintf(js, sizeof js, "{\"_id\": %s}", ids[i]);
        MP_CHECK_EQ_INT(insert_json(s, "k.c", js, &r), 0);
        ldb_write_result_clear(&r);
    }
    /* -0.0 is 0; 2.0 is 2. */
    MP_CHECK_EQ_INT(insert_json(s, "k.c", "{\"_id\": 2.0}", &r), -EEXIST);
    ldb_write_result_clear(&r);
    MP_CHECK_EQ_INT(ldb_find(s, "k.c", NULL, NULL, NULL, 0, 0, take_id, &l, NULL, errbuf, sizeof errbuf), 0);
    MP_CHECK_EQ_INT(l.n, n);
    for (size_t i = 1; i < l.n; i++) {
        if (ldb_value_cmp(&l.v[i - 1], &l.v[i]) >= 0) {
            fprintf(stderr, "key order wrong at %zu (types %d, %d)\n", i, l.v[i - 1].value_type,
                    l.v[i].value_type);
            MP_CHECK(0);
        }
    }
    for (size_t i = 0; i < l.n; i++)
        bson_value_destroy(&l.v[i]);
    ldb_store_close(s);
    ldb_t_rmdir(dir);
}

/* ---------------------------------------------------------------- group commit */

#define GC_THREADS 8

struct gc_arg {
    ldb_store *s;
    int t, per;
    int failures;
};

static void *gc_writer(void *p)
{
    struct gc_arg *a = p;
    char err[256];
    for (int i = 0; i < a->per; i++) {
        bson_t d = BSON_INITIALIZER;
        ldb_write_result r = {0};
        BSON_APPEND_INT32(&d, "_id", a->t * 1000000 + i);
        BSON_APPEND_INT32(&d, "t", a->t);
        const bson_t *docs[1] = {&d};
        if (ldb_insert(a->s, "g.c", docs, 1, true, &r, err, sizeof err) != 0 || r.inserted != 1)
            a->failures++;
        ldb_write_result_clear(&r);
        bson_destroy(&d);
    }
    return NULL;
}

/* Runs threads x per single-document inserts; returns the elapsed seconds. */
static double run_writers(ldb_store *s, int threads, int per, int *failures)
{
    pthread_t th[GC_THREADS];
    struct gc_arg a[GC_THREADS];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int t = 0; t < threads; t++) {
        a[t] = (struct gc_arg){.s = s, .t = t, .per = per};
        pthread_create(&th[t], NULL, gc_writer, &a[t]);
    }
    *failures = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(th[t], NULL);
        *failures += a[t].failures;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
}

struct dense {
    int64_t expect;
    bool ok;
    int32_t *seen_ids;
    size_t n;
};

static int dense_fn(const ldb_oplog_entry *e, void *ctx)
{
    struct dense *d = ctx;
    bson_t b;
    bson_iter_t it;
    if (e->op_id != d->expect++)
        d->ok = false;
    if (e->document && bson_init_static(&b, e->document, e->document_len) &&
        bson_iter_init_find(&it, &b, "_id"))
        d->seen_ids[d->n++] = bson_iter_int32(&it);
    return 0;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

MP_TEST(group_commit_8_threads)
{
    char dir[64];
    const int per = 150;
    int failures;
    ldb_t_mkdir(dir, sizeof dir, "store");
    /* Real fsyncs: the point is that concurrent writers share them. */
    ldb_store *s = open_store(dir, NULL);
    run_writers(s, GC_THREADS, per, &failures);
    MP_CHECK_EQ_INT(failures, 0);

    ldb_find_stats st;
    struct collect c;
    MP_CHECK_EQ_INT(find_str(s, "g.c", "{\"t\": {\"$gte\": 0}}", "{\"_id\": 1}", "{\"_id\": 1}", 0, 1, &c, &st), 0);
    MP_CHECK_EQ_INT(st.examined, GC_THREADS * per);
    MP_CHECK_STR(c.buf, "{ \"_id\" : 0 }");

    /* One entry per insert, op_ids 1..N without gaps, each document exactly once. */
    struct dense d = {.expect = 1, .ok = true, .seen_ids = calloc(GC_THREADS * per, sizeof(int32_t))};
    MP_CHECK_EQ_INT(ldb_oplog_read(s, 1, 0, dense_fn, &d, errbuf, sizeof errbuf), 0);
    MP_CHECK(d.ok);
    MP_CHECK_EQ_INT(d.expect - 1, GC_THREADS * per);
    MP_CHECK_EQ_INT(d.n, GC_THREADS * per);
    qsort(d.seen_ids, d.n, sizeof(int32_t), cmp_i32);
    for (size_t i = 1; i < d.n; i++)
        MP_CHECK(d.seen_ids[i] != d.seen_ids[i - 1]);
    free(d.seen_ids);
    ldb_store_close(s);
    ldb_t_rmdir(dir);
}

/* Not a correctness check: prints ops/s with and without group commit (fsync on). */
MP_TEST(group_commit_throughput)
{
    const char *env = getenv("LDB_BENCH_PER_THREAD");
    int per = env ? atoi(env) : 100;
    for (int grouped = 1; grouped >= 0; grouped--) {
        char dir[64];
        int failures;
        ldb_store_opts o = {.no_group_commit = !grouped};
        ldb_t_mkdir(dir, sizeof dir, "store");
        ldb_store *s = open_store(dir, &o);
        double secs = run_writers(s, GC_THREADS, per, &failures);
        MP_CHECK_EQ_INT(failures, 0);
        fprintf(stderr, "# %s: %d threads x %d inserts in %.3f s = %.0f ops/s\n",
                grouped ? "group commit" : "one commit per write", GC_THREADS, per, secs,
                GC_THREADS * per / secs);
        ldb_store_close(s);
        ldb_t_rmdir(dir);
    }
}

/* ---------------------------------------------------------------- kill -9 */

/* Child: insert forever, printing each _id once ldb_insert has returned (committed). */
static void crash_child(const char *dir, int round, int fd)
{
    char err[256];
    ldb_store *s = NULL;
    if (ldb_store_open(dir, NULL, &s, err, sizeof err) != 0)
        _exit(2);
    for (int i = 0;; i++) {
        char id[32], line[40];
        bson_t d = BSON_INITIALIZER;
        ldb_write_result r = {0};
        snprintf(id, sizeof id, "r%d-%07d", round, i);
        BSON_APPEND_UTF8(&d, "_id", id);
        BSON_APPEND_INT32(&d, "i", i);
        const bson_t *docs[1] = {&d};
        int rc = ldb_insert(s, "crash.c", docs, 1, true, &r, err, sizeof err);
        ldb_write_result_clear(&r);
        bson_destroy(&d);
        if (rc != 0)
            _exit(3);
        int len = snprintf(line, sizeof line, "%s\n", id);
        if (write(fd, line, (size_t)len) != len)
            _exit(4);
    }
}

struct idset {
    char **v;
    size_t n, cap;
};

static int take_str_id(const bson_t *doc, void *ctx)
{
    struct idset *s = ctx;
    bson_iter_t it;
    if (bson_iter_init_find(&it, doc, "_id") && BSON_ITER_HOLDS_UTF8(&it)) {
        if (s->n == s->cap) {
            s->cap = s->cap ? s->cap * 2 : 1024;
            s->v = realloc(s->v, s->cap * sizeof *s->v);
        }
        s->v[s->n++] = strdup(bson_iter_utf8(&it, NULL));
    }
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool has_id(const struct idset *s, const char *id)
{
    return bsearch(&id, s->v, s->n, sizeof *s->v, cmp_str) != NULL;
}

struct oplog_check {
    const struct idset *present;
    size_t entries, missing;
};

static int oplog_doc_present(const ldb_oplog_entry *e, void *ctx)
{
    struct oplog_check *c = ctx;
    bson_t b;
    bson_iter_t it;
    c->entries++;
    if (!e->document || !bson_init_static(&b, e->document, e->document_len) ||
        !bson_iter_init_find(&it, &b, "_id") || !has_id(c->present, bson_iter_utf8(&it, NULL)))
        c->missing++;
    return 0;
}

MP_TEST(kill9_acknowledged_writes_survive)
{
    char dir[64];
    size_t acked_total = 0;
    ldb_t_mkdir(dir, sizeof dir, "store");
    for (int round = 0; round < 5; round++) {
        int p[2];
        if (pipe(p) != 0)
            abort();
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            close(p[0]);
            crash_child(dir, round, p[1]);
        }
        close(p[1]);
        struct timespec half = {0, 500 * 1000 * 1000};
        nanosleep(&half, NULL);
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        MP_CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

        /* Every complete line is an acknowledged insert; a torn last line is not. */
        FILE *f = fdopen(p[0], "r");
        char line[64];
        char **acked = NULL;
        size_t nacked = 0, cap = 0;
        while (fgets(line, sizeof line, f)) {
            size_t len = strlen(line);
            if (len == 0 || line[len - 1] != '\n')
                break;
            line[len - 1] = '\0';
            if (nacked == cap) {
                cap = cap ? cap * 2 : 1024;
                acked = realloc(acked, cap * sizeof *acked);
            }
            acked[nacked++] = strdup(line);
        }
        fclose(f);
        acked_total += nacked;

        ldb_store *s = open_store(dir, NULL);
        struct idset present = {0};
        MP_CHECK_EQ_INT(ldb_find(s, "crash.c", NULL, NULL, NULL, 0, 0, take_str_id, &present, NULL,
                                 errbuf, sizeof errbuf), 0);
        qsort(present.v, present.n, sizeof *present.v, cmp_str);
        size_t lost = 0;
        for (size_t i = 0; i < nacked; i++)
            if (!has_id(&present, acked[i]))
                lost++;
        MP_CHECK_EQ_INT(lost, 0);
        MP_CHECK(present.n >= acked_total);
        MP_CHECK(last_op(s) >= (int64_t)acked_total);
        struct oplog_check oc = {.present = &present};
        MP_CHECK_EQ_INT(ldb_oplog_read(s, 1, 0, oplog_doc_present, &oc, errbuf, sizeof errbuf), 0);
        MP_CHECK_EQ_INT(oc.missing, 0);
        MP_CHECK_EQ_INT(oc.entries, present.n);
        fprintf(stderr, "# kill -9 round %d: %zu acknowledged, %zu stored\n", round, nacked,
                present.n);
        ldb_store_close(s);
        for (size_t i = 0; i < present.n; i++)
            free(present.v[i]);
        free(present.v);
        for (size_t i = 0; i < nacked; i++)
            free(acked[i]);
        free(acked);
    }
    MP_CHECK(acked_total > 0);
    ldb_t_rmdir(dir);
}

MP_TEST_MAIN(MP_CASE(insert_and_find), MP_CASE(duplicate_ordered_unordered),
             MP_CASE(update_semantics), MP_CASE(delete_semantics),
             MP_CASE(oplog_contents_and_reopen), MP_CASE(find_projection_sort_skip_limit),
             MP_CASE(find_sort_bounds), MP_CASE(size_limits), MP_CASE(map_full_fails_only_that_write),
             MP_CASE(key_order_matches_compare),
             MP_CASE(group_commit_8_threads), MP_CASE(group_commit_throughput),
             MP_CASE(kill9_acknowledged_writes_survive))
