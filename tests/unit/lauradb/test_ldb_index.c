/*
 * test_ldb_index.c — LauraDB's secondary indexes and planner: the catalog (create,
 * list, drop, reopen), a differential test (thousands of random queries over random
 * mixed-type data give identical results on a store with indexes and one without,
 * before and after random updates and deletes), index use visible in find stats,
 * unique indexes on insert/update/upsert/build, parallel arrays, over-long keys, the
 * two-way consistency check (including that it detects a damaged index) and a point
 * lookup in 100k documents examining only the matches.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "ldb_store.h"
#include "mp_test.h"
#include "ldb_test_util.h"

#include <errno.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

static char errbuf[512];
static const ldb_store_opts nosync = {.no_sync = true};

/* ---------------------------------------------------------------- helpers */

static ldb_store *store_at(const char *dir)
{
    ldb_store *s = NULL;
    if (ldb_store_open(dir, &nosync, &s, errbuf, sizeof errbuf) != 0) {
        fprintf(stderr, "open %s: %s\n", dir, errbuf);
        abort();
    }
    return s;
}

static int put_json(ldb_store *s, const char *ns, const char *json, ldb_write_result *r)
{
    bson_t *d = ldb_t_json(json);
    const bson_t *docs[1] = {d};
    int rc = ldb_insert(s, ns, docs, 1, true, r, errbuf, sizeof errbuf);
    bson_destroy(d);
    return rc;
}

static int index_json(ldb_store *s, const char *ns, const char *keys, const char *name,
                      bool unique)
{
    bson_t *k = ldb_t_json(keys);
    int rc = ldb_create_index(s, ns, k, name, unique, errbuf, sizeof errbuf);
    bson_destroy(k);
    return rc;
}

/* Results as canonical extended JSON joined by '\n': type-exact and order-exact. */
struct out {
    char *s;
    size_t len, cap;
};

static int out_fn(const bson_t *doc, void *ctx)
{
    struct out *o = ctx;
    char *js = bson_as_canonical_extended_json(doc, NULL);
    if (!js) {
        /* libbson will not render some values (NUL inside a string): use the bytes. */
        js = bson_malloc(doc->len * 2 + 1);
        for (uint32_t i = 0; i < doc->len; i++)
            snprintf(js + 2 * i, 3, "%02x", bson_get_data(doc)[i]);
    }
    size_t n = strlen(js) + 1;
    if (o->len + n + 1 > o->cap) {
        o->cap = (o->len + n + 1) * 2;
        o->s = realloc(o->s, o->cap);
    }
    memcpy(o->s + o->len, js, n - 1);
    o->len += n;
    o->s[o->len - 1] = '\n';
    o->s[o->len] = '\0';
    bson_free(js);
    return 0;
}

static int find_json(ldb_store *s, const char *ns, const char *filter, const char *sort,
                     int64_t skip, int64_t limit, struct out *o, ldb_find_stats *st)
{
    bson_t *f = filter ? ldb_t_json(filter) : NULL;
    bson_t *so = sort ? ldb_t_json(sort) : NULL;
    o->len = 0;
    if (o->s)
        o->s[0] = '\0';
    int rc = ldb_find(s, ns, f, NULL, so, skip, limit, out_fn, o, st, errbuf, sizeof errbuf);
    if (f)
        bson_destroy(f);
    if (so)
        bson_destroy(so);
    return rc;
}

struct names {
    char buf[1024];
};

static int name_fn(const char *name, const bson_t *keys, bool unique, void *ctx)
{
    struct names *n = ctx;
    char *js = bson_as_relaxed_extended_json(keys, NULL);
    size_t used = strlen(n->buf);
    snprintf(n->buf + used, sizeof n->buf - used, "%s%s=%s%s", used ? ";" : "", name, js,
             unique ? "!" : "");
    bson_free(js);
    return 0;
}

static const char *list(ldb_store *s, const char *ns, struct names *n)
{
    n->buf[0] = '\0';
    if (ldb_list_indexes(s, ns, name_fn, n, errbuf, sizeof errbuf) != 0)
        snprintf(n->buf, sizeof n->buf, "error: %s", errbuf);
    return n->buf;
}

/* ---------------------------------------------------------------- catalog */

MP_TEST(create_list_drop_reopen)
{
    char dir[64];
    struct names n;
    ldb_write_result r = {0};
    ldb_t_mkdir(dir, sizeof dir, "index");
    ldb_store *s = store_at(dir);

    MP_CHECK_EQ_INT(ldb_list_indexes(s, "db.none", name_fn, &n, errbuf, sizeof errbuf), -ENOENT);
    MP_CHECK_EQ_INT(put_json(s, "db.c", "{\"_id\": 1, \"a\": 1, \"b\": {\"c\": 2}}", &r), 0);
    MP_CHECK_EQ_INT(index_json(s, "db.c", "{\"a\": 1, \"b.c\": -1}", NULL, false), 0);
    MP_CHECK_EQ_INT(index_json(s, "db.c", "{\"d\": 1}", "by_d", true), 0);
    MP_CHECK_STR(list(s, "db.c", &n),
                 "_id_={ \"_id\" : 1 }!;a_1_b.c_-1={ \"a\" : 1, \"b.c\" : -1 };by_d={ \"d\" : 1 }!");
    /* Identical again: no-op. Same name, other keys; same keys, other name: refused. */
    MP_CHECK_EQ_INT(index_json(s, "db.c", "{\"a\": 1, \"b.c\": -1}", NULL, false), 0);
    MP_CHECK_EQ_INT(index_json(s, "db.c", "{\"e\": 1}", "by_d", true), -EEXIST);
    MP_CHECK_CONTAINS(errbuf, "same name");
    MP_CHECK_EQ_INT(index_json(s, "db.c", "{\"d\": 1}", "other", true), -EEXIST);
    MP_CHECK_CONTAINS(errbuf, "different name: by_d");
    MP_CHECK_EQ_INT(index_json(s, "db.c", "{\"d\": 1}", "by_d", false), -EEXIST);
    MP_CHECK_EQ_INT(index_json(s, "db.c", "{\"_id\": 1}", NULL, false), 0);
    /* Bad patterns. */
    MP_CHECK_EQ_INT(index_json(s, "db.c", "{}", NULL, false), -EINVAL);
    MP_CHECK_EQ_INT(index_json(s, "db.c", "{\"a\": 2}", NULL, false), -EINVAL);
    MP_CHECK_EQ_INT(index_json(s, "db.c", "{\"a\": \"text\"}", NULL, false), -EINVAL);
    MP_CHECK_EQ_INT(index_json(s, "db.c", "{\"a..b\": 1}", NULL, false), -EINVAL);
    MP_CHECK_EQ_INT(index_json(s, "db.c", "{\"$a\": 1}", NULL, false), -EINVAL);
    MP_CHECK_EQ_INT(index_json(s, "db.c", "{\"a\": 1}", "_id_", false), -EEXIST);
    /* 33 fields is one too many. */
    char big[1024] = "{";
    for (int i = 0; i < 33; i++)
        snprintf(big + strlen(big), sizeof big - strlen(big), "%s\"f%d\": 1", i ? "," : "", i);
    strcat(big, "}");
    MP_CHECK_EQ_INT(index_json(s, "db.c", big, NULL, false), -EINVAL);
    MP_CHECK_EQ_INT(ldb_index_check(s, "db.c", errbuf, sizeof errbuf), 0);
    ldb_store_close(s);

    /* The catalog survives a reopen, indexes stay maintained and used. */
    s = store_at(dir);
    MP_CHECK_STR(list(s, "db.c", &n),
                 "_id_={ \"_id\" : 1 }!;a_1_b.c_-1={ \"a\" : 1, \"b.c\" : -1 };by_d={ \"d\" : 1 }!");
    MP_CHECK_EQ_INT(put_json(s, "db.c", "{\"_id\": 2, \"a\": 5, \"d\": 1}", &r), 0);
    MP_CHECK_EQ_INT(put_json(s, "db.c", "{\"_id\": 3, \"a\": 6, \"d\": 1}", &r), -EEXIST);
    MP_CHECK_EQ_INT(r.n_errors, 1);
    MP_CHECK_EQ_INT(r.errors[0].code, LDB_E_DUPLICATE_KEY);
    MP_CHECK_CONTAINS(r.errors[0].msg,
                      "E11000 duplicate key error collection: db.c index: by_d dup key: { \"d\" : 1 }");
    ldb_write_result_clear(&r);
    struct out o = {0};
    ldb_find_stats st;
    MP_CHECK_EQ_INT(find_json(s, "db.c", "{\"a\": 5}", NULL, 0, 0, &o, &st), 0);
    MP_CHECK_STR(st.index, "a_1_b.c_-1");
    MP_CHECK_EQ_INT(st.examined, 1);
    MP_CHECK_EQ_INT(st.keys_examined, 1);
    MP_CHECK_CONTAINS(o.s, "\"_id\" : { \"$numberInt\" : \"2\" }");
    MP_CHECK_EQ_INT(ldb_index_check(s, "db.c", errbuf, sizeof errbuf), 0);

    /* Drop: gone from the list, no longer used, the _id index and unknown names refused. */
    MP_CHECK_EQ_INT(ldb_drop_index(s, "db.c", "a_1_b.c_-1", errbuf, sizeof errbuf), 0);
    MP_CHECK_EQ_INT(ldb_drop_index(s, "db.c", "a_1_b.c_-1", errbuf, sizeof errbuf), -ENOENT);
    MP_CHECK_EQ_INT(ldb_drop_index(s, "db.c", "_id_", errbuf, sizeof errbuf), -EINVAL);
    MP_CHECK_EQ_INT(ldb_drop_index(s, "db.none", "x", errbuf, sizeof errbuf), -ENOENT);
    MP_CHECK_STR(list(s, "db.c", &n), "_id_={ \"_id\" : 1 }!;by_d={ \"d\" : 1 }!");
    MP_CHECK_EQ_INT(find_json(s, "db.c", "{\"a\": 5}", NULL, 0, 0, &o, &st), 0);
    MP_CHECK_STR(st.index, "");
    MP_CHECK_EQ_INT(st.examined, 2);
    MP_CHECK_CONTAINS(o.s, "\"_id\" : { \"$numberInt\" : \"2\" }");
    /* Recreated after the drop it starts from the current documents only. */
    MP_CHECK_EQ_INT(index_json(s, "db.c", "{\"a\": 1, \"b.c\": -1}", NULL, false), 0);
    MP_CHECK_EQ_INT(ldb_index_check(s, "db.c", errbuf, sizeof errbuf), 0);
    ldb_store_close(s);
    s = store_at(dir);
    MP_CHECK_STR(list(s, "db.c", &n),
                 "_id_={ \"_id\" : 1 }!;a_1_b.c_-1={ \"a\" : 1, \"b.c\" : -1 };by_d={ \"d\" : 1 }!");
    ldb_store_close(s);
    free(o.s);
    ldb_t_rmdir(dir);
}

/* ---------------------------------------------------------------- random data */

static uint64_t rng_state;

static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state % n);
}

static void long_string(char *buf, size_t len, int variant)
{
    /* 700 shared bytes, then a distinguishing tail: longer than an index key. */
    memset(buf, 'L', len);
    snprintf(buf + 700, len - 700, "tail%d", variant);
}

/* A random scalar; scalars_only keeps arrays and documents out. */
/* Fields b and c never hold strings longer than a key, so indexes on them stay exact
 * enough to serve sorts. */
static bool short_only(const char *k)
{
    return strcmp(k, "b") == 0 || strcmp(k, "c") == 0;
}

static void append_scalar(bson_t *d, const char *k)
{
    static const char *strs[] = {"", "a", "ab", "abc", "b", "B", "zz", "\xc3\xa9"};
    static const char nul_str[4] = {'a', '\0', 'b', '\0'};
    char lbuf[800];
    bson_oid_t oid;
    switch (rnd(short_only(k) ? 12 : 14)) {
    case 0: BSON_APPEND_INT32(d, k, (int32_t)rnd(9) - 4); break;
    case 1: BSON_APPEND_DOUBLE(d, k, ((double)rnd(17) - 8) / 2); break;
    case 2: BSON_APPEND_INT64(d, k, (int64_t)rnd(9) - 4); break;
    case 3: BSON_APPEND_INT64(d, k, (INT64_C(1) << 53) + (int64_t)rnd(4)); break;
    case 4: {
        const char *str = strs[rnd(8)]; /* the macro evaluates its argument twice */
        BSON_APPEND_UTF8(d, k, str);
        break;
    }
    case 5: BSON_APPEND_NULL(d, k); break;
    case 6: BSON_APPEND_BOOL(d, k, rnd(2)); break;
    case 7: BSON_APPEND_DATE_TIME(d, k, 1700000000000 + rnd(3)); break;
    case 8:
        bson_oid_init_from_string(&oid, rnd(2) ? "65a000000000000000000001" : "65a000000000000000000002");
        BSON_APPEND_OID(d, k, &oid);
        break;
    case 9: {
        bson_decimal128_t dec;
        bson_decimal128_from_string(rnd(2) ? "1" : "2.5", &dec);
        BSON_APPEND_DECIMAL128(d, k, &dec);
        break;
    }
    case 10: BSON_APPEND_DOUBLE(d, k, (INT64_C(1) << 53) + 0.0); break;
    case 11: bson_append_undefined(d, k, -1); break;
    case 12:
        long_string(lbuf, sizeof lbuf, (int)rnd(3));
        BSON_APPEND_UTF8(d, k, lbuf);
        break;
    default:
        /* An embedded NUL must order and escape correctly. */
        bson_append_utf8(d, k, -1, nul_str, rnd(2) ? 3 : 2);
        break;
    }
}

static void append_value(bson_t *d, const char *k, int depth)
{
    uint32_t r = rnd(10);
    if (depth < 2 && r == 0) {
        bson_t sub;
        BSON_APPEND_DOCUMENT_BEGIN(d, k, &sub);
        if (rnd(3))
            append_scalar(&sub, "x");
        if (rnd(2))
            append_value(&sub, "y", depth + 1);
        bson_append_document_end(d, &sub);
    } else if (depth < 2 && r == 1) {
        bson_t sub;
        char key[16];
        BSON_APPEND_ARRAY_BEGIN(d, k, &sub);
        uint32_t n = rnd(4);
        for (uint32_t i = 0; i < n; i++) {
            snprintf(key, sizeof key, "%u", i);
            if (rnd(4) == 0)
                append_value(&sub, key, depth + 1);
            else
                append_scalar(&sub, key);
        }
        bson_append_array_end(d, &sub);
    } else {
        append_scalar(d, k);
    }
}

/* Fields: a (anything), b and c (scalars, never arrays: {b, c} and {tags, b} are
 * compound), n (document, array of documents, scalar or missing), tags (array or
 * scalar), s (strings, some longer than a key). */
static bson_t *random_doc(int id)
{
    bson_t *d = bson_new();
    BSON_APPEND_INT32(d, "_id", id);
    if (rnd(8))
        append_value(d, "a", 0);
    if (rnd(6))
        append_scalar(d, "b");
    if (rnd(6))
        append_scalar(d, "c");
    uint32_t nk = rnd(5);
    if (nk == 1 || nk == 2) {
        bson_t sub;
        BSON_APPEND_DOCUMENT_BEGIN(d, "n", &sub);
        if (rnd(4))
            append_scalar(&sub, "x");
        bson_append_document_end(d, &sub);
    } else if (nk == 3) {
        bson_t arr, e;
        BSON_APPEND_ARRAY_BEGIN(d, "n", &arr);
        for (uint32_t i = 0, m = rnd(3); i < m; i++) {
            char key[16];
            snprintf(key, sizeof key, "%u", i);
            BSON_APPEND_DOCUMENT_BEGIN(&arr, key, &e);
            if (rnd(3))
                append_scalar(&e, "x");
            bson_append_document_end(&arr, &e);
        }
        bson_append_array_end(d, &arr);
    } else if (nk == 4) {
        append_scalar(d, "n");
    }
    if (rnd(4)) {
        bson_t arr;
        BSON_APPEND_ARRAY_BEGIN(d, "tags", &arr);
        for (uint32_t i = 0, m = rnd(4); i < m; i++) {
            char key[16];
            snprintf(key, sizeof key, "%u", i);
            append_scalar(&arr, key);
        }
        bson_append_array_end(d, &arr);
    }
    if (rnd(3)) {
        char lbuf[800];
        if (rnd(3) == 0) {
            long_string(lbuf, sizeof lbuf, (int)rnd(3));
            BSON_APPEND_UTF8(d, "s", lbuf);
        } else {
            append_scalar(d, "s");
        }
    }
    return d;
}

static const char *fields[] = {"a", "b", "c", "n.x", "tags", "s", "a.x", "_id"};

/* A random operand: mostly scalars, sometimes a document or an array (which the
 * planner must not use an index for, yet must answer correctly). */
static void operand(bson_t *d, const char *k)
{
    if (rnd(12) == 0)
        append_value(d, k, 1);
    else
        append_scalar(d, k);
}

static void random_predicate(bson_t *f)
{
    const char *field = fields[rnd(sizeof fields / sizeof *fields)];
    bson_t ops, arr;
    uint32_t kind = rnd(9);
    if (kind == 0) {
        operand(f, field);
        return;
    }
    BSON_APPEND_DOCUMENT_BEGIN(f, field, &ops);
    switch (kind) {
    case 1: operand(&ops, "$eq"); break;
    case 2: {
        BSON_APPEND_ARRAY_BEGIN(&ops, "$in", &arr);
        for (uint32_t i = 0, m = rnd(4); i < m; i++) {
            char key[16];
            snprintf(key, sizeof key, "%u", i);
            operand(&arr, key);
        }
        bson_append_array_end(&ops, &arr);
        break;
    }
    case 3: operand(&ops, rnd(2) ? "$gt" : "$gte"); break;
    case 4: operand(&ops, rnd(2) ? "$lt" : "$lte"); break;
    case 5:
        operand(&ops, rnd(2) ? "$gt" : "$gte");
        operand(&ops, rnd(2) ? "$lt" : "$lte");
        break;
    case 6: operand(&ops, "$ne"); break;
    case 7: BSON_APPEND_BOOL(&ops, "$exists", rnd(2)); break;
    default:
        bson_append_null(&ops, rnd(2) ? "$gte" : "$lte", -1);
        break;
    }
    bson_append_document_end(f, &ops);
}

static bson_t *random_filter(void)
{
    bson_t *f = bson_new();
    uint32_t n = rnd(3);
    for (uint32_t i = 0; i < n; i++)
        random_predicate(f);
    return f;
}

static const char *sorts[] = {NULL, NULL, "{\"b\": -1, \"c\": 1}", "{\"b\": 1, \"c\": -1}",
                              "{\"a\": 1}", "{\"s\": -1}", "{\"c\": 1}", "{\"c\": -1}",
                              "{\"b\": 1}"};

struct diff_stats {
    size_t queries, used_index, stopped_early;
};

/* Runs one random query on both stores; false (and prints it) when they differ. */
static bool same_answer(ldb_store *plain, ldb_store *indexed, struct diff_stats *ds)
{
    bson_t *f = random_filter();
    const char *sort_json = sorts[rnd(sizeof sorts / sizeof *sorts)];
    bson_t *sort = sort_json ? ldb_t_json(sort_json) : NULL;
    int64_t skip = rnd(4) == 0 ? rnd(5) : 0, limit = rnd(3) == 0 ? 1 + rnd(6) : 0;
    struct out a = {0}, b = {0};
    ldb_find_stats sa, sb;
    char ea[512], eb[512];
    int ra = ldb_find(plain, "db.r", f, NULL, sort, skip, limit, out_fn, &a, &sa, ea, sizeof ea);
    int rb = ldb_find(indexed, "db.r", f, NULL, sort, skip, limit, out_fn, &b, &sb, eb, sizeof eb);
    bool same = ra == rb && (a.s == NULL) == (b.s == NULL) && (!a.s || strcmp(a.s, b.s) == 0);
    ds->queries++;
    if (sb.index[0])
        ds->used_index++;
    /* Only an index read in sort order can stop before the matches run out. */
    if (sort && limit && sb.index[0] && sb.examined < sa.examined && sb.examined < 700 / 2)
        ds->stopped_early++;
    if (!same) {
        char *js = bson_as_canonical_extended_json(f, NULL);
        fprintf(stderr, "differ: filter %s sort %s skip %lld limit %lld index '%s' rc %d/%d\n"
                "  plain:   %s\n  indexed: %s\n",
                js, sort_json ? sort_json : "-", (long long)skip, (long long)limit, sb.index, ra,
                rb, a.s ? a.s : "", b.s ? b.s : "");
        bson_free(js);
    }
    if (sort)
        bson_destroy(sort);
    bson_destroy(f);
    free(a.s);
    free(b.s);
    return same;
}

static void random_write(ldb_store *plain, ldb_store *indexed, int max_id, int *failed)
{
    ldb_write_result ra = {0}, rb = {0};
    char ea[512] = "", eb[512] = "";
    bson_t *q, *u = bson_new();
    /* By _id, or by any predicate (the planner picks candidates through an index). */
    bool by_id = rnd(2);
    if (by_id) {
        q = bson_new();
        BSON_APPEND_INT32(q, "_id", (int32_t)rnd((uint32_t)max_id));
    } else {
        q = random_filter();
    }
    bool multi = !by_id && rnd(2);
    uint32_t kind = rnd(6);
    int rca, rcb;
    if (kind == 0) {
        rca = ldb_delete(plain, "db.r", q, false, &ra, ea, sizeof ea);
        rcb = ldb_delete(indexed, "db.r", q, false, &rb, eb, sizeof eb);
    } else {
        bson_t set;
        const char *fl[] = {"a", "b", "c", "s", "n.x"};
        if (kind == 1) {
            BSON_APPEND_DOCUMENT_BEGIN(u, "$unset", &set);
            bson_append_int32(&set, fl[rnd(5)], -1, 1);
        } else if (kind == 2) {
            BSON_APPEND_DOCUMENT_BEGIN(u, "$set", &set);
            append_value(&set, "a", 0);
        } else {
            BSON_APPEND_DOCUMENT_BEGIN(u, "$set", &set);
            append_scalar(&set, fl[1 + rnd(4)]);
        }
        bson_append_document_end(u, &set);
        rca = ldb_update(plain, "db.r", q, u, multi, false, &ra, ea, sizeof ea);
        rcb = ldb_update(indexed, "db.r", q, u, multi, false, &rb, eb, sizeof eb);
    }
    /* Updates through "n.x" onto a scalar n fail the same way on both. */
    if (rca != rcb || ra.matched != rb.matched || ra.modified != rb.modified ||
        ra.deleted != rb.deleted) {
        char *qj = bson_as_canonical_extended_json(q, NULL), *uj = bson_as_canonical_extended_json(u, NULL);
        fprintf(stderr, "write differs: %s %s multi %d: rc %d/%d matched %zu/%zu modified %zu/%zu "
                "deleted %zu/%zu (%s / %s)\n", qj, uj, multi, rca, rcb, ra.matched, rb.matched,
                ra.modified, rb.modified, ra.deleted, rb.deleted, ea, eb);
        bson_free(qj);
        bson_free(uj);
        *failed = 1;
    }
    ldb_write_result_clear(&ra);
    ldb_write_result_clear(&rb);
    bson_destroy(q);
    bson_destroy(u);
}

MP_TEST(differential_random_queries)
{
    char d1[64], d2[64];
    const int ndocs = 700;
    ldb_t_mkdir(d1, sizeof d1, "index");
    ldb_t_mkdir(d2, sizeof d2, "index");
    ldb_store *plain = store_at(d1), *indexed = store_at(d2);
    rng_state = (uint64_t)time(NULL) * 2654435761u + 1;
    const char *env = getenv("LDB_INDEX_SEED");
    if (env)
        rng_state = strtoull(env, NULL, 10);
    fprintf(stderr, "# seed %llu (set LDB_INDEX_SEED to replay)\n", (unsigned long long)rng_state);

    static const struct {
        const char *keys;
        bool unique;
    } specs[] = {{"{\"a\": 1}", false},       {"{\"b\": -1, \"c\": 1}", false},
                 {"{\"n.x\": 1}", false},     {"{\"tags\": 1, \"b\": 1}", false},
                 {"{\"s\": -1}", false},      {"{\"c\": -1}", false},
                 {"{\"a.x\": 1, \"c\": -1}", false}};
    /* Half the documents before the indexes exist (the build indexes them), half after
     * (insert maintains them). */
    for (int i = 0; i < ndocs; i++) {
        if (i == ndocs / 2)
            for (size_t k = 0; k < sizeof specs / sizeof *specs; k++)
                MP_CHECK_EQ_INT(index_json(indexed, "db.r", specs[k].keys, NULL, specs[k].unique), 0);
        bson_t *d = random_doc(i);
        const bson_t *docs[1] = {d};
        ldb_write_result ra = {0}, rb = {0};
        int rca = ldb_insert(plain, "db.r", docs, 1, true, &ra, errbuf, sizeof errbuf);
        int rcb = ldb_insert(indexed, "db.r", docs, 1, true, &rb, errbuf, sizeof errbuf);
        MP_CHECK_EQ_INT(rca, rcb);
        if (rcb != 0)
            fprintf(stderr, "insert: %s\n", errbuf);
        ldb_write_result_clear(&ra);
        ldb_write_result_clear(&rb);
        bson_destroy(d);
    }
    MP_CHECK_EQ_INT(ldb_index_check(indexed, "db.r", errbuf, sizeof errbuf), 0);

    struct diff_stats ds = {0};
    size_t differ = 0;
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 1500; i++)
            differ += !same_answer(plain, indexed, &ds);
        for (int i = 0; i < 300; i++) {
            random_write(plain, indexed, ndocs, mp_test_failed_);
            if (i % 50 == 49 && ldb_index_check(indexed, "db.r", errbuf, sizeof errbuf) != 0) {
                fprintf(stderr, "check after write %d: %s\n", i, errbuf);
                *mp_test_failed_ = 1;
            }
        }
        if (round == 1) {
            /* A decimal _id equal to an int _id: numeric _id lookups must still find it. */
            bson_t *d = ldb_t_json("{\"_id\": {\"$numberDecimal\": \"3\"}, \"a\": 1}");
            const bson_t *docs[1] = {d};
            ldb_write_result ra = {0}, rb = {0};
            MP_CHECK_EQ_INT(ldb_insert(plain, "db.r", docs, 1, true, &ra, errbuf, sizeof errbuf), 0);
            MP_CHECK_EQ_INT(ldb_insert(indexed, "db.r", docs, 1, true, &rb, errbuf, sizeof errbuf), 0);
            ldb_write_result_clear(&ra);
            ldb_write_result_clear(&rb);
            bson_destroy(d);
        }
        int rc = ldb_index_check(indexed, "db.r", errbuf, sizeof errbuf);
        if (rc != 0)
            fprintf(stderr, "check: %s\n", errbuf);
        MP_CHECK_EQ_INT(rc, 0);
    }
    fprintf(stderr, "# %zu queries, %zu used an index, %zu sorted by one and stopped early, "
                    "%zu differ\n", ds.queries, ds.used_index, ds.stopped_early, differ);
    MP_CHECK_EQ_INT(differ, 0);
    MP_CHECK(ds.queries >= 4500);
    /* A good share of random filters has a usable predicate on a leading field. */
    MP_CHECK(ds.used_index * 4 >= ds.queries);
    MP_CHECK(ds.stopped_early > 50);
    ldb_store_close(plain);
    ldb_store_close(indexed);
    ldb_t_rmdir(d1);
    ldb_t_rmdir(d2);
}

/* ---------------------------------------------------------------- planner use */

MP_TEST(planner_uses_index)
{
    char dir[64];
    struct out o = {0};
    ldb_find_stats st;
    ldb_t_mkdir(dir, sizeof dir, "index");
    ldb_store *s = store_at(dir);
    for (int i = 0; i < 200; i++) {
        char js[160];
        ldb_write_result r = {0};
        snprintf(js, sizeof js, "{\"_id\": %d, \"k\": %d, \"g\": %d, \"t\": [%d, %d], \"str\": \"s%03d\"}",
                 i, i % 50, i % 7, i, i + 1000, i);
        MP_CHECK_EQ_INT(put_json(s, "db.p", js, &r), 0);
        ldb_write_result_clear(&r);
    }
    MP_CHECK_EQ_INT(index_json(s, "db.p", "{\"k\": 1}", NULL, false), 0);
    MP_CHECK_EQ_INT(index_json(s, "db.p", "{\"g\": -1, \"k\": 1}", NULL, false), 0);
    MP_CHECK_EQ_INT(index_json(s, "db.p", "{\"t\": 1}", NULL, false), 0);
    MP_CHECK_EQ_INT(index_json(s, "db.p", "{\"str\": 1}", NULL, true), 0);

    /* Equality: 4 documents have k == 3. */
    MP_CHECK_EQ_INT(find_json(s, "db.p", "{\"k\": 3}", NULL, 0, 0, &o, &st), 0);
    MP_CHECK_STR(st.index, "k_1");
    MP_CHECK_EQ_INT(st.examined, 4);
    MP_CHECK_EQ_INT(st.returned, 4);
    /* 1, 1.0 and NumberLong(1) are one key. */
    MP_CHECK_EQ_INT(find_json(s, "db.p", "{\"k\": {\"$numberLong\": \"3\"}}", NULL, 0, 0, &o, &st), 0);
    MP_CHECK_EQ_INT(st.returned, 4);
    MP_CHECK_EQ_INT(find_json(s, "db.p", "{\"k\": 3.0}", NULL, 0, 0, &o, &st), 0);
    MP_CHECK_EQ_INT(st.returned, 4);
    /* Compound: equality on both fields, the unique string, $in, a range. */
    MP_CHECK_EQ_INT(find_json(s, "db.p", "{\"g\": 3, \"k\": 3}", NULL, 0, 0, &o, &st), 0);
    MP_CHECK_STR(st.index, "g_-1_k_1");
    MP_CHECK_EQ_INT(st.examined, st.returned);
    MP_CHECK_EQ_INT(find_json(s, "db.p", "{\"str\": \"s042\"}", NULL, 0, 0, &o, &st), 0);
    MP_CHECK_STR(st.index, "str_1");
    MP_CHECK_EQ_INT(st.examined, 1);
    MP_CHECK_EQ_INT(find_json(s, "db.p", "{\"k\": {\"$in\": [1, 2, 99]}}", NULL, 0, 0, &o, &st), 0);
    MP_CHECK_STR(st.index, "k_1");
    MP_CHECK_EQ_INT(st.examined, 8);
    MP_CHECK_EQ_INT(find_json(s, "db.p", "{\"k\": {\"$gte\": 10, \"$lt\": 12}}", NULL, 0, 0, &o, &st), 0);
    MP_CHECK_STR(st.index, "k_1");
    /* Bounds are inclusive prefixes (an exclusive end is re-checked by the filter). */
    MP_CHECK(st.examined >= 8 && st.examined <= 12);
    MP_CHECK_EQ_INT(st.returned, 8);
    /* Type bracketing: a string bound never reaches the numbers. */
    MP_CHECK_EQ_INT(find_json(s, "db.p", "{\"k\": {\"$gt\": \"\"}}", NULL, 0, 0, &o, &st), 0);
    MP_CHECK_EQ_INT(st.examined, 0);
    MP_CHECK_EQ_INT(st.returned, 0);
    /* Multikey: each document once although two entries of t fall in the range. */
    MP_CHECK_EQ_INT(find_json(s, "db.p", "{\"t\": {\"$gte\": 5}}", NULL, 0, 3, &o, &st), 0);
    MP_CHECK_STR(st.index, "t_1");
    MP_CHECK_EQ_INT(st.returned, 3);
    MP_CHECK_EQ_INT(find_json(s, "db.p", "{\"t\": {\"$gte\": 5, \"$lt\": 1003}}", NULL, 0, 0, &o, &st), 0);
    MP_CHECK_EQ_INT(st.returned, 200); /* 0..2 through their second element */
    MP_CHECK_EQ_INT(st.examined, 200);
    /* Sort served by the index both ways: limit stops the scan early. */
    MP_CHECK_EQ_INT(find_json(s, "db.p", NULL, "{\"str\": -1}", 2, 3, &o, &st), 0);
    MP_CHECK_STR(st.index, "str_1");
    MP_CHECK_EQ_INT(st.examined, 5);
    MP_CHECK(strstr(o.s, "s197") && strstr(o.s, "s195") && strstr(o.s, "s197") < strstr(o.s, "s195"));
    MP_CHECK_EQ_INT(find_json(s, "db.p", "{\"g\": {\"$lte\": 2}}", "{\"g\": 1, \"k\": -1}", 0, 2, &o, &st), 0);
    MP_CHECK_STR(st.index, "g_-1_k_1");
    MP_CHECK_EQ_INT(st.examined, 2);
    /* What the index cannot answer is scanned: $ne, $exists, $regex, array operands. */
    MP_CHECK_EQ_INT(find_json(s, "db.p", "{\"k\": {\"$ne\": 3}}", NULL, 0, 0, &o, &st), 0);
    MP_CHECK_STR(st.index, "");
    MP_CHECK_EQ_INT(st.returned, 196);
    MP_CHECK_EQ_INT(find_json(s, "db.p", "{\"str\": {\"$regex\": \"^s00\"}}", NULL, 0, 0, &o, &st), 0);
    MP_CHECK_STR(st.index, "");
    MP_CHECK_EQ_INT(st.returned, 10);
    MP_CHECK_EQ_INT(find_json(s, "db.p", "{\"t\": [4, 1004]}", NULL, 0, 0, &o, &st), 0);
    MP_CHECK_STR(st.index, "");
    MP_CHECK_EQ_INT(st.returned, 1);
    /* An empty $in matches nothing and reads nothing. */
    MP_CHECK_EQ_INT(find_json(s, "db.p", "{\"k\": {\"$in\": []}}", NULL, 0, 0, &o, &st), 0);
    MP_CHECK_EQ_INT(st.returned, 0);
    MP_CHECK_EQ_INT(st.examined, 0);
    ldb_store_close(s);
    free(o.s);
    ldb_t_rmdir(dir);
}

MP_TEST(null_missing_and_nested)
{
    char dir[64];
    struct out o = {0};
    ldb_find_stats st;
    ldb_write_result r = {0};
    ldb_t_mkdir(dir, sizeof dir, "index");
    ldb_store *s = store_at(dir);
    const char *docs[] = {
        "{\"_id\": 1, \"a\": {\"b\": 1}}",       "{\"_id\": 2, \"a\": {\"b\": null}}",
        "{\"_id\": 3, \"a\": {}}",               "{\"_id\": 4}",
        "{\"_id\": 5, \"a\": [{\"b\": 2}, {}]}", "{\"_id\": 6, \"a\": []}",
        "{\"_id\": 7, \"a\": 5}",                "{\"_id\": 8, \"a\": [{\"b\": [3, 4]}]}",
        "{\"_id\": 9, \"a\": {\"b\": {\"$undefined\": true}}}",
    };
    MP_CHECK_EQ_INT(index_json(s, "db.n", "{\"a.b\": 1}", NULL, false), 0);
    for (size_t i = 0; i < sizeof docs / sizeof *docs; i++) {
        MP_CHECK_EQ_INT(put_json(s, "db.n", docs[i], &r), 0);
        ldb_write_result_clear(&r);
    }
    /* null matches null, undefined, missing, and missing inside array elements. */
    MP_CHECK_EQ_INT(find_json(s, "db.n", "{\"a.b\": null}", NULL, 0, 0, &o, &st), 0);
    MP_CHECK_STR(st.index, "a.b_1");
    MP_CHECK_EQ_INT(st.returned, 7);
    MP_CHECK_EQ_INT(find_json(s, "db.n", "{\"a.b\": {\"$in\": [3, 2]}}", NULL, 0, 0, &o, &st), 0);
    MP_CHECK_EQ_INT(st.returned, 2);
    MP_CHECK_EQ_INT(find_json(s, "db.n", "{\"a.b\": {\"$gt\": 1}}", NULL, 0, 0, &o, &st), 0);
    MP_CHECK_EQ_INT(st.returned, 2);
    MP_CHECK_EQ_INT(find_json(s, "db.n", "{\"a\": {\"b\": 1}}", NULL, 0, 0, &o, &st), 0);
    MP_CHECK_EQ_INT(st.returned, 1);
    MP_CHECK_EQ_INT(ldb_index_check(s, "db.n", errbuf, sizeof errbuf), 0);
    ldb_store_close(s);
    free(o.s);
    ldb_t_rmdir(dir);
}

/* ---------------------------------------------------------------- unique, arrays */

MP_TEST(unique_violations)
{
    char dir[64];
    ldb_write_result r = {0};
    struct names n;
    ldb_t_mkdir(dir, sizeof dir, "index");
    ldb_store *s = store_at(dir);
    MP_CHECK_EQ_INT(index_json(s, "db.u", "{\"e\": 1}", NULL, true), 0);
    MP_CHECK_EQ_INT(put_json(s, "db.u", "{\"_id\": 1, \"e\": \"x\", \"m\": [1, 1]}", &r), 0);
    ldb_write_result_clear(&r);
    /* Insert: the duplicate fails, unordered carries on with the rest. */
    bson_t *d[3] = {ldb_t_json("{\"_id\": 2, \"e\": \"y\"}"), ldb_t_json("{\"_id\": 3, \"e\": \"x\"}"),
                    ldb_t_json("{\"_id\": 4, \"e\": \"z\"}")};
    MP_CHECK_EQ_INT(ldb_insert(s, "db.u", (const bson_t *const *)d, 3, false, &r, errbuf,
                               sizeof errbuf), -EEXIST);
    MP_CHECK_EQ_INT(r.inserted, 2);
    MP_CHECK_EQ_INT(r.n_errors, 1);
    MP_CHECK_EQ_INT(r.errors[0].index, 1);
    MP_CHECK_EQ_INT(r.errors[0].code, LDB_E_DUPLICATE_KEY);
    MP_CHECK_CONTAINS(r.errors[0].msg, "index: e_1 dup key: { \"e\" : \"x\" }");
    ldb_write_result_clear(&r);
    /* Ordered stops at it. */
    MP_CHECK_EQ_INT(ldb_insert(s, "db.u", (const bson_t *const *)d + 1, 2, true, &r, errbuf,
                               sizeof errbuf), -EEXIST);
    MP_CHECK_EQ_INT(r.inserted, 0);
    ldb_write_result_clear(&r);
    for (int i = 0; i < 3; i++)
        bson_destroy(d[i]);
    /* Update into a duplicate: refused, nothing changed. */
    bson_t *q = ldb_t_json("{\"_id\": 2}"), *u = ldb_t_json("{\"$set\": {\"e\": \"z\", \"f\": 1}}");
    MP_CHECK_EQ_INT(ldb_update(s, "db.u", q, u, false, false, &r, errbuf, sizeof errbuf), -EEXIST);
    MP_CHECK_CONTAINS(errbuf, "E11000 duplicate key error collection: db.u index: e_1");
    MP_CHECK_EQ_INT(r.modified, 0);
    ldb_write_result_clear(&r);
    struct out o = {0};
    MP_CHECK_EQ_INT(find_json(s, "db.u", "{\"_id\": 2}", NULL, 0, 0, &o, NULL), 0);
    MP_CHECK_STR(o.s, "{ \"_id\" : { \"$numberInt\" : \"2\" }, \"e\" : \"y\" }\n");
    /* Updating a document to its own key again is fine. */
    bson_destroy(u);
    u = ldb_t_json("{\"$set\": {\"e\": \"y\", \"f\": 2}}");
    MP_CHECK_EQ_INT(ldb_update(s, "db.u", q, u, false, false, &r, errbuf, sizeof errbuf), 0);
    MP_CHECK_EQ_INT(r.modified, 1);
    ldb_write_result_clear(&r);
    /* Upsert of a duplicate. */
    bson_destroy(q);
    bson_destroy(u);
    q = ldb_t_json("{\"_id\": 9}");
    u = ldb_t_json("{\"$set\": {\"e\": \"x\"}}");
    MP_CHECK_EQ_INT(ldb_update(s, "db.u", q, u, false, true, &r, errbuf, sizeof errbuf), -EEXIST);
    MP_CHECK_CONTAINS(errbuf, "index: e_1");
    MP_CHECK(!r.upserted);
    ldb_write_result_clear(&r);
    bson_destroy(q);
    bson_destroy(u);
    /* Missing counts as null: only one document may lack the field. */
    MP_CHECK_EQ_INT(put_json(s, "db.u", "{\"_id\": 10}", &r), 0);
    ldb_write_result_clear(&r);
    MP_CHECK_EQ_INT(put_json(s, "db.u", "{\"_id\": 11, \"e\": null}", &r), -EEXIST);
    ldb_write_result_clear(&r);
    /* Numbers equal by value collide whatever their type. */
    MP_CHECK_EQ_INT(put_json(s, "db.u", "{\"_id\": 12, \"e\": 1}", &r), 0);
    ldb_write_result_clear(&r);
    MP_CHECK_EQ_INT(put_json(s, "db.u", "{\"_id\": 13, \"e\": {\"$numberLong\": \"1\"}}", &r), -EEXIST);
    ldb_write_result_clear(&r);
    MP_CHECK_EQ_INT(put_json(s, "db.u", "{\"_id\": 14, \"e\": 1.0}", &r), -EEXIST);
    ldb_write_result_clear(&r);
    MP_CHECK_EQ_INT(ldb_index_check(s, "db.u", errbuf, sizeof errbuf), 0);

    /* A unique build over duplicates fails and leaves nothing behind. */
    MP_CHECK_EQ_INT(put_json(s, "db.u2", "{\"_id\": 20, \"e\": 20, \"g\": 5}", &r), 0);
    ldb_write_result_clear(&r);
    MP_CHECK_EQ_INT(put_json(s, "db.u2", "{\"_id\": 21, \"e\": 21, \"g\": 5}", &r), 0);
    ldb_write_result_clear(&r);
    MP_CHECK_EQ_INT(index_json(s, "db.u2", "{\"g\": 1}", NULL, true), -EEXIST);
    MP_CHECK_CONTAINS(errbuf, "E11000 duplicate key error collection: db.u2 index: g_1 dup key: { \"g\" : 5 }");
    MP_CHECK_STR(list(s, "db.u2", &n), "_id_={ \"_id\" : 1 }!");
    /* ... and a later non-unique one of that name works. */
    MP_CHECK_EQ_INT(index_json(s, "db.u2", "{\"g\": 1}", NULL, false), 0);
    ldb_find_stats st;
    MP_CHECK_EQ_INT(find_json(s, "db.u2", "{\"g\": 5}", NULL, 0, 0, &o, &st), 0);
    MP_CHECK_EQ_INT(st.returned, 2);
    MP_CHECK_STR(st.index, "g_1");
    /* A compound unique index: unique on the combination only. */
    MP_CHECK_EQ_INT(index_json(s, "db.u3", "{\"p\": 1, \"q\": -1}", NULL, true), 0);
    MP_CHECK_EQ_INT(put_json(s, "db.u3", "{\"_id\": 30, \"e\": 30, \"p\": 1, \"q\": 1}", &r), 0);
    ldb_write_result_clear(&r);
    MP_CHECK_EQ_INT(put_json(s, "db.u3", "{\"_id\": 31, \"e\": 31, \"p\": 1, \"q\": 2}", &r), 0);
    ldb_write_result_clear(&r);
    MP_CHECK_EQ_INT(put_json(s, "db.u3", "{\"_id\": 32, \"e\": 32, \"p\": 1, \"q\": 2}", &r), -EEXIST);
    MP_CHECK_CONTAINS(errbuf, "dup key: { \"p\" : 1, \"q\" : 2 }");
    ldb_write_result_clear(&r);
    MP_CHECK_EQ_INT(ldb_index_check(s, "db.u2", errbuf, sizeof errbuf), 0);
    ldb_store_close(s);
    free(o.s);
    ldb_t_rmdir(dir);
}

MP_TEST(parallel_arrays_refused)
{
    char dir[64];
    ldb_write_result r = {0};
    ldb_t_mkdir(dir, sizeof dir, "index");
    ldb_store *s = store_at(dir);
    MP_CHECK_EQ_INT(index_json(s, "db.pa", "{\"x\": 1, \"y\": 1}", NULL, false), 0);
    MP_CHECK_EQ_INT(put_json(s, "db.pa", "{\"_id\": 1, \"x\": [1, 2], \"y\": 3}", &r), 0);
    ldb_write_result_clear(&r);
    MP_CHECK_EQ_INT(put_json(s, "db.pa", "{\"_id\": 2, \"x\": [1], \"y\": [2]}", &r), -EINVAL);
    MP_CHECK_EQ_INT(r.n_errors, 1);
    MP_CHECK_CONTAINS(r.errors[0].msg, "cannot index parallel arrays");
    ldb_write_result_clear(&r);
    /* An update making them parallel fails and changes nothing. */
    bson_t *q = ldb_t_json("{\"_id\": 1}"), *u = ldb_t_json("{\"$set\": {\"y\": [7, 8]}}");
    MP_CHECK_EQ_INT(ldb_update(s, "db.pa", q, u, false, false, &r, errbuf, sizeof errbuf), -EINVAL);
    MP_CHECK_CONTAINS(errbuf, "cannot index parallel arrays");
    ldb_write_result_clear(&r);
    struct out o = {0};
    MP_CHECK_EQ_INT(find_json(s, "db.pa", "{\"y\": 3}", NULL, 0, 0, &o, NULL), 0);
    MP_CHECK_CONTAINS(o.s, "\"_id\" : { \"$numberInt\" : \"1\" }");
    /* Arrays of documents under one shared path are not parallel. */
    MP_CHECK_EQ_INT(index_json(s, "db.pa2", "{\"a.b\": 1, \"a.c\": 1}", NULL, false), 0);
    MP_CHECK_EQ_INT(put_json(s, "db.pa2", "{\"_id\": 1, \"a\": [{\"b\": 1, \"c\": 2}, {\"b\": 3, \"c\": 4}]}", &r), 0);
    ldb_write_result_clear(&r);
    ldb_find_stats st;
    MP_CHECK_EQ_INT(find_json(s, "db.pa2", "{\"a.b\": 3, \"a.c\": 2}", NULL, 0, 0, &o, &st), 0);
    MP_CHECK_EQ_INT(st.returned, 1);
    MP_CHECK_STR(st.index, "a.b_1_a.c_1");
    /* A build over parallel arrays fails. */
    MP_CHECK_EQ_INT(put_json(s, "db.pa3", "{\"_id\": 1, \"x\": [1], \"y\": [2]}", &r), 0);
    ldb_write_result_clear(&r);
    MP_CHECK_EQ_INT(index_json(s, "db.pa3", "{\"x\": 1, \"y\": 1}", NULL, false), -EINVAL);
    MP_CHECK_CONTAINS(errbuf, "cannot index parallel arrays");
    MP_CHECK_EQ_INT(ldb_index_check(s, "db.pa", errbuf, sizeof errbuf), 0);
    bson_destroy(q);
    bson_destroy(u);
    ldb_store_close(s);
    free(o.s);
    ldb_t_rmdir(dir);
}

MP_TEST(long_keys)
{
    char dir[64], js[4200], big[2000];
    ldb_write_result r = {0};
    struct out o = {0};
    ldb_find_stats st;
    ldb_t_mkdir(dir, sizeof dir, "index");
    ldb_store *s = store_at(dir);
    MP_CHECK_EQ_INT(index_json(s, "db.l", "{\"v\": 1}", NULL, true), 0);
    memset(big, 'q', sizeof big - 10);
    for (int i = 0; i < 5; i++) {
        snprintf(big + sizeof big - 10, 10, "%d", i);
        snprintf(js, sizeof js, "{\"_id\": %d, \"v\": \"%s\"}", i, big);
        MP_CHECK_EQ_INT(put_json(s, "db.l", js, &r), 0); /* same 1990-byte prefix: no clash */
        ldb_write_result_clear(&r);
    }
    snprintf(big + sizeof big - 10, 10, "%d", 3);
    snprintf(js, sizeof js, "{\"_id\": 9, \"v\": \"%s\"}", big);
    MP_CHECK_EQ_INT(put_json(s, "db.l", js, &r), -EEXIST); /* but equal ones do */
    ldb_write_result_clear(&r);
    snprintf(js, sizeof js, "{\"v\": \"%s\"}", big);
    MP_CHECK_EQ_INT(find_json(s, "db.l", js, NULL, 0, 0, &o, &st), 0);
    MP_CHECK_STR(st.index, "v_1");
    MP_CHECK_EQ_INT(st.returned, 1);
    MP_CHECK_CONTAINS(o.s, "\"_id\" : { \"$numberInt\" : \"3\" }");
    snprintf(js, sizeof js, "{\"v\": {\"$gt\": \"%s\"}}", big);
    MP_CHECK_EQ_INT(find_json(s, "db.l", js, NULL, 0, 0, &o, &st), 0);
    MP_CHECK_EQ_INT(st.returned, 1);
    /* Sorting by a truncated index is left to memory, still right. */
    MP_CHECK_EQ_INT(find_json(s, "db.l", NULL, "{\"v\": -1}", 0, 2, &o, &st), 0);
    MP_CHECK_STR(st.index, "");
    MP_CHECK(strstr(o.s, "\"$numberInt\" : \"4\"") < strstr(o.s, "\"$numberInt\" : \"3\""));
    MP_CHECK_EQ_INT(ldb_index_check(s, "db.l", errbuf, sizeof errbuf), 0);
    ldb_store_close(s);
    free(o.s);
    ldb_t_rmdir(dir);
}

/* ---------------------------------------------------------------- consistency */

/* Removes one entry of the index behind the store's back; the check must notice. */
MP_TEST(check_detects_damage)
{
    char dir[64];
    ldb_write_result r = {0};
    ldb_t_mkdir(dir, sizeof dir, "index");
    ldb_store *s = store_at(dir);
    MP_CHECK_EQ_INT(index_json(s, "db.k", "{\"a\": 1}", NULL, false), 0);
    for (int i = 0; i < 10; i++) {
        char js[64];
        snprintf(js, sizeof js, "{\"_id\": %d, \"a\": [%d, %d]}", i, i, i * 2);
        MP_CHECK_EQ_INT(put_json(s, "db.k", js, &r), 0);
        ldb_write_result_clear(&r);
    }
    bson_t *q = ldb_t_json("{\"_id\": {\"$lt\": 3}}");
    MP_CHECK_EQ_INT(ldb_delete(s, "db.k", q, true, &r, errbuf, sizeof errbuf), 0);
    MP_CHECK_EQ_INT(r.deleted, 3);
    ldb_write_result_clear(&r);
    bson_destroy(q);
    MP_CHECK_EQ_INT(ldb_index_check(s, "db.k", errbuf, sizeof errbuf), 0);
    ldb_store_close(s);

    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_cursor *c;
    MDB_val k, v;
    MP_CHECK_EQ_INT(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 64);
    MP_CHECK_EQ_INT(mdb_env_open(env, dir, 0, 0640), 0);
    MP_CHECK_EQ_INT(mdb_txn_begin(env, NULL, 0, &txn), 0);
    MP_CHECK_EQ_INT(mdb_dbi_open(txn, "i:db.k$a_1", MDB_DUPSORT, &dbi), 0);
    MP_CHECK_EQ_INT(mdb_cursor_open(txn, dbi, &c), 0);
    MP_CHECK_EQ_INT(mdb_cursor_get(c, &k, &v, MDB_FIRST), 0);
    MP_CHECK_EQ_INT(mdb_cursor_del(c, 0), 0);
    mdb_cursor_close(c);
    MP_CHECK_EQ_INT(mdb_txn_commit(txn), 0);
    mdb_env_close(env);

    s = store_at(dir);
    MP_CHECK_EQ_INT(ldb_index_check(s, "db.k", errbuf, sizeof errbuf), -EUCLEAN);
    MP_CHECK_CONTAINS(errbuf, "index a_1");
    ldb_store_close(s);
    ldb_t_rmdir(dir);
}

MP_TEST(point_lookup_100k)
{
    char dir[64];
    ldb_t_mkdir(dir, sizeof dir, "index");
    ldb_store *s = store_at(dir);
    enum { N = 100000, BATCH = 1000 };
    bson_t *docs[BATCH];
    for (int b = 0; b < N / BATCH; b++) {
        for (int i = 0; i < BATCH; i++) {
            int id = b * BATCH + i;
            docs[i] = bson_new();
            BSON_APPEND_INT32(docs[i], "_id", id);
            BSON_APPEND_INT32(docs[i], "k", id % 25000); /* 4 documents per value */
            BSON_APPEND_UTF8(docs[i], "pad", "some payload");
        }
        ldb_write_result r = {0};
        MP_CHECK_EQ_INT(ldb_insert(s, "db.big", (const bson_t *const *)docs, BATCH, true, &r,
                                   errbuf, sizeof errbuf), 0);
        ldb_write_result_clear(&r);
        for (int i = 0; i < BATCH; i++)
            bson_destroy(docs[i]);
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    MP_CHECK_EQ_INT(index_json(s, "db.big", "{\"k\": 1}", NULL, false), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double build_ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;

    struct out o = {0};
    ldb_find_stats st;
    MP_CHECK_EQ_INT(find_json(s, "db.big", "{\"k\": 12345}", NULL, 0, 0, &o, &st), 0);
    MP_CHECK_EQ_INT(st.returned, 4);
    MP_CHECK_EQ_INT(st.examined, 4);
    MP_CHECK_EQ_INT(st.keys_examined, 4);
    MP_CHECK_STR(st.index, "k_1");
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 1000; i++)
        MP_CHECK_EQ_INT(find_json(s, "db.big", "{\"k\": 777}", NULL, 0, 0, &o, &st), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double lookup_us = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / 1e3 / 1000;
    MP_CHECK_EQ_INT(ldb_drop_index(s, "db.big", "k_1", errbuf, sizeof errbuf), 0);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    MP_CHECK_EQ_INT(find_json(s, "db.big", "{\"k\": 777}", NULL, 0, 0, &o, &st), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double scan_us = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / 1e3;
    MP_CHECK_EQ_INT(st.examined, N);
    fprintf(stderr, "# 100k docs: index build %.0f ms, indexed point lookup %.1f us, "
                    "collection scan %.0f us\n", build_ms, lookup_us, scan_us);
    ldb_store_close(s);
    free(o.s);
    ldb_t_rmdir(dir);
}

/* A multi update that resizes records several to a page: each put must not read its
 * key from a page an earlier put of the same transaction rewrote. */
MP_TEST(multi_update_resizes_records)
{
    char dir[64];
    ldb_write_result r = {0};
    ldb_t_mkdir(dir, sizeof dir, "index");
    ldb_store *s = store_at(dir);
    for (int i = 0; i < 300; i++) {
        char js[96];
        snprintf(js, sizeof js, "{\"_id\": %d, \"k\": %d, \"pad\": \"%0*d\"}", i, i % 3, 1 + i % 40, 0);
        MP_CHECK_EQ_INT(put_json(s, "db.m", js, &r), 0);
        ldb_write_result_clear(&r);
    }
    MP_CHECK_EQ_INT(index_json(s, "db.m", "{\"k\": 1}", NULL, false), 0);
    const char *filters[] = {"{}", "{\"k\": 1}"};
    for (int f = 0; f < 2; f++) {
        bson_t *q = ldb_t_json(filters[f]);
        bson_t *u = ldb_t_json(f ? "{\"$set\": {\"pad\": \"x\"}}" : "{\"$set\": {\"grown\": \"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\"}}");
        MP_CHECK_EQ_INT(ldb_update(s, "db.m", q, u, true, false, &r, errbuf, sizeof errbuf), 0);
        MP_CHECK_EQ_INT(r.modified, f ? 100 : 300);
        ldb_write_result_clear(&r);
        bson_destroy(q);
        bson_destroy(u);
    }
    /* Every document is still found under its own _id. */
    int missing = 0;
    for (int i = 0; i < 300; i++) {
        char js[48];
        struct out o = {0};
        ldb_find_stats st;
        snprintf(js, sizeof js, "{\"_id\": %d}", i);
        MP_CHECK_EQ_INT(find_json(s, "db.m", js, NULL, 0, 0, &o, &st), 0);
        missing += st.returned != 1;
        free(o.s);
    }
    MP_CHECK_EQ_INT(missing, 0);
    MP_CHECK_EQ_INT(ldb_index_check(s, "db.m", errbuf, sizeof errbuf), 0);
    ldb_store_close(s);
    ldb_t_rmdir(dir);
}

/* Writers keep inserting, updating and deleting while indexes are created and
 * dropped: each write sees the index set of its own transaction, so nothing is missed. */
struct writer {
    ldb_store *s;
    int id;
    int failures;
};

static void *writer_run(void *arg)
{
    struct writer *w = arg;
    char err[256];
    for (int i = 0; i < 400; i++) {
        bson_t *d = bson_new();
        BSON_APPEND_INT32(d, "_id", w->id * 100000 + i);
        BSON_APPEND_INT32(d, "k", i % 17);
        BSON_APPEND_INT32(d, "w", w->id);
        const bson_t *docs[1] = {d};
        ldb_write_result r = {0};
        w->failures += ldb_insert(w->s, "db.cc", docs, 1, true, &r, err, sizeof err) != 0;
        ldb_write_result_clear(&r);
        bson_destroy(d);
        if (i % 10 == 9) {
            bson_t *q = bson_new(), *u = ldb_t_json("{\"$inc\": {\"k\": 1}}");
            BSON_APPEND_INT32(q, "w", w->id);
            w->failures += ldb_update(w->s, "db.cc", q, u, true, false, &r, err, sizeof err) != 0;
            ldb_write_result_clear(&r);
            bson_destroy(u);
            bson_reinit(q);
            BSON_APPEND_INT32(q, "_id", w->id * 100000 + i - 5);
            w->failures += ldb_delete(w->s, "db.cc", q, false, &r, err, sizeof err) != 0;
            ldb_write_result_clear(&r);
            bson_destroy(q);
        }
    }
    return NULL;
}

MP_TEST(indexes_change_under_concurrent_writes)
{
    char dir[64];
    ldb_t_mkdir(dir, sizeof dir, "index");
    ldb_store *s = store_at(dir);
    struct writer w[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (struct writer){.s = s, .id = i + 1};
        pthread_create(&t[i], NULL, writer_run, &w[i]);
    }
    for (int round = 0; round < 6; round++) {
        MP_CHECK_EQ_INT(index_json(s, "db.cc", "{\"k\": 1, \"w\": -1}", NULL, false), 0);
        MP_CHECK_EQ_INT(index_json(s, "db.cc", "{\"w\": 1}", NULL, false), 0);
        MP_CHECK_EQ_INT(ldb_index_check(s, "db.cc", errbuf, sizeof errbuf), 0);
        MP_CHECK_EQ_INT(ldb_drop_index(s, "db.cc", round % 2 ? "w_1" : "k_1_w_-1", errbuf, sizeof errbuf), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        MP_CHECK_EQ_INT(w[i].failures, 0);
    }
    MP_CHECK_EQ_INT(ldb_index_check(s, "db.cc", errbuf, sizeof errbuf), 0);
    struct out o = {0};
    ldb_find_stats st;
    MP_CHECK_EQ_INT(find_json(s, "db.cc", "{\"w\": 3}", NULL, 0, 0, &o, &st), 0);
    MP_CHECK_EQ_INT(st.returned, 400 - 40);
    free(o.s);
    ldb_store_close(s);
    ldb_t_rmdir(dir);
}

MP_TEST_MAIN(MP_CASE(create_list_drop_reopen), MP_CASE(planner_uses_index),
             MP_CASE(null_missing_and_nested), MP_CASE(unique_violations),
             MP_CASE(parallel_arrays_refused), MP_CASE(long_keys),
             MP_CASE(check_detects_damage), MP_CASE(multi_update_resizes_records),
             MP_CASE(indexes_change_under_concurrent_writes), MP_CASE(differential_random_queries),
             MP_CASE(point_lookup_100k))
