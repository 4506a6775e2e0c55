/*
 * test_ldb_snap.c — finds against concurrent index changes: find reuses pooled read
 * transactions and a per-collection cache of the index set (ldb_index.c), invalidated
 * by the catalog generation. Readers run while another thread creates and drops
 * indexes (each build also flags the index multikey); every answer must be what the
 * data says, whichever index set a snapshot has. A stale cached set shows up as
 * missing documents (a dropped index is emptied) or as duplicates (an index flagged
 * multikey in the snapshot but not in the cache would be used to serve a sort).
 * Also the sorted range read that trusts index keys strictly inside numeric bounds
 * instead of re-checking the filter: its answers must equal a collection scan's on
 * values at, around and outside the bounds, of every type that sorts near numbers.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "ldb_store.h"
#include "mp_test.h"
#include "ldb_test_util.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#define SNAP_DOCS 2000
#define SNAP_GROUPS 50 /* a = _id % SNAP_GROUPS: SNAP_DOCS / SNAP_GROUPS per value */
#define SNAP_READERS 4
#define SNAP_DDL_ROUNDS 25
#define SNAP_NS "t.snap"

static char errbuf[512];

struct counter {
    int n;
    int64_t ids[4];
};

static int count_doc(const bson_t *doc, void *arg)
{
    struct counter *c = arg;
    bson_iter_t it;
    if (c->n < 4 && bson_iter_init_find(&it, doc, "_id"))
        c->ids[c->n] = bson_iter_as_int64(&it);
    c->n++;
    return 0;
}

struct reader {
    ldb_store *s;
    atomic_bool *stop;
    int rounds, bad_eq, bad_sorted, errors;
    char err[256];
};

static void *reader_main(void *arg)
{
    struct reader *r = arg;
    /* Bounded: the DDL thread stops the readers, the cap only guards against a hang. */
    for (int i = 0; i < 1000000 && !atomic_load(r->stop); i++) {
        int x = i % SNAP_GROUPS;
        bson_t f = BSON_INITIALIZER;
        BSON_APPEND_INT32(&f, "a", x);
        struct counter c = {0};
        if (ldb_find(r->s, SNAP_NS, &f, NULL, NULL, 0, 0, count_doc, &c, NULL, r->err,
                     sizeof r->err) != 0)
            r->errors++;
        else if (c.n != SNAP_DOCS / SNAP_GROUPS)
            r->bad_eq++;
        bson_destroy(&f);

        /* Only the multikey document has a >= 1000; sorted by a it must come once. */
        bson_t *g = ldb_t_json("{\"a\": {\"$gte\": 1000}}");
        bson_t *sort = ldb_t_json("{\"a\": 1}");
        struct counter m = {0};
        if (ldb_find(r->s, SNAP_NS, g, NULL, sort, 0, 10, count_doc, &m, NULL, r->err,
                     sizeof r->err) != 0)
            r->errors++;
        else if (m.n != 1 || m.ids[0] != -1)
            r->bad_sorted++;
        bson_destroy(g);
        bson_destroy(sort);
        r->rounds++;
    }
    return NULL;
}

/* A store in a new directory holding n documents {_id: i, a: i % groups} and, when
 * extra_json is set, that document too. NULL (the test failed) when it cannot be made. */
static ldb_store *loaded_store(char dir[64], int n, int groups, const char *extra_json)
{
    ldb_store_opts o = {.no_sync = true};
    ldb_store *s = NULL;
    ldb_t_mkdir(dir, 64, "snap");
    if (ldb_store_open(dir, &o, &s, errbuf, sizeof errbuf) != 0)
        return NULL;
    bson_t **docs = calloc((size_t)n + 1, sizeof *docs);
    int total = 0;
    for (int i = 0; docs && i < n; i++) {
        docs[total] = bson_new();
        BSON_APPEND_INT64(docs[total], "_id", i);
        BSON_APPEND_INT32(docs[total++], "a", i % groups);
    }
    if (docs && extra_json)
        docs[total++] = ldb_t_json(extra_json);
    ldb_write_result wr = {0};
    int rc = docs ? ldb_insert(s, SNAP_NS, (const bson_t *const *)docs, (size_t)total, true, &wr,
                               errbuf, sizeof errbuf)
                  : -ENOMEM;
    ldb_write_result_clear(&wr);
    for (int i = 0; i < total; i++)
        bson_destroy(docs[i]);
    free(docs);
    if (rc != 0) {
        ldb_store_close(s);
        return NULL;
    }
    return s;
}

MP_TEST(finds_during_index_create_drop)
{
    char dir[64];
    ldb_store *s = loaded_store(dir, SNAP_DOCS, SNAP_GROUPS,
                                "{\"_id\": {\"$numberLong\": \"-1\"}, \"a\": [1000, 1001]}");
    MP_CHECK(s != NULL);
    if (!s)
        return;
    /* Readers start with an index in place, so a set cached then would, if kept past
     * the drop, send them to an emptied index. */
    bson_t *up = ldb_t_json("{\"a\": 1}"), *down = ldb_t_json("{\"a\": -1}");
    MP_CHECK_EQ_INT(ldb_create_index(s, SNAP_NS, up, NULL, false, errbuf, sizeof errbuf), 0);
    atomic_bool stop = false;
    struct reader rd[SNAP_READERS];
    pthread_t th[SNAP_READERS];
    for (int i = 0; i < SNAP_READERS; i++) {
        rd[i] = (struct reader){.s = s, .stop = &stop};
        pthread_create(&th[i], NULL, reader_main, &rd[i]);
    }
    int ddl_errors = 0;
    usleep(5000);
    for (int round = 0; round < SNAP_DDL_ROUNDS; round++) {
        /* Drop the index in place (a_1 on even rounds), read without one, then build
         * the other direction. */
        bool asc = round % 2 == 0;
        if (ldb_drop_index(s, SNAP_NS, asc ? "a_1" : "a_-1", errbuf, sizeof errbuf))
            ddl_errors++;
        usleep(1000);
        if (ldb_create_index(s, SNAP_NS, asc ? down : up, NULL, false, errbuf, sizeof errbuf))
            ddl_errors++;
        usleep(2000);
    }
    usleep(20000);
    atomic_store(&stop, true);
    int rounds = 0;
    for (int i = 0; i < SNAP_READERS; i++) {
        pthread_join(th[i], NULL);
        MP_CHECK_EQ_INT(rd[i].errors, 0);
        MP_CHECK_EQ_INT(rd[i].bad_eq, 0);
        MP_CHECK_EQ_INT(rd[i].bad_sorted, 0);
        if (rd[i].errors)
            fprintf(stderr, "reader: %s\n", rd[i].err);
        rounds += rd[i].rounds;
    }
    MP_CHECK_EQ_INT(ddl_errors, 0);
    MP_CHECK(rounds > 0);
    fprintf(stderr, "# %d reader rounds over %d index create/drop rounds\n", rounds,
            SNAP_DDL_ROUNDS);

    /* The index left in place is used and is consistent with the data. */
    ldb_find_stats st;
    struct counter c = {0};
    bson_t *f = ldb_t_json("{\"a\": 7}");
    MP_CHECK_EQ_INT(ldb_find(s, SNAP_NS, f, NULL, NULL, 0, 0, count_doc, &c, &st, errbuf,
                             sizeof errbuf),
                    0);
    MP_CHECK_EQ_INT(c.n, SNAP_DOCS / SNAP_GROUPS);
    MP_CHECK_STR(st.index, SNAP_DDL_ROUNDS % 2 ? "a_-1" : "a_1");
    MP_CHECK_EQ_INT(ldb_index_check(s, SNAP_NS, errbuf, sizeof errbuf), 0);
    bson_destroy(f);
    bson_destroy(up);
    bson_destroy(down);
    ldb_store_close(s);
    ldb_t_rmdir(dir);
}

/* Many more concurrent finds than pooled read transactions, each nesting another find
 * from its callback: the pool hands out and takes back transactions without losing or
 * sharing one, and the store closes with the pool full. */
struct nest_arg {
    ldb_store *s;
    int bad;
};

static int nested_find(const bson_t *doc, void *arg)
{
    struct nest_arg *a = arg;
    bson_iter_t it;
    bson_t f = BSON_INITIALIZER;
    if (bson_iter_init_find(&it, doc, "_id"))
        BSON_APPEND_INT64(&f, "_id", bson_iter_as_int64(&it));
    struct counter c = {0};
    char err[256];
    if (ldb_find(a->s, SNAP_NS, &f, NULL, NULL, 0, 0, count_doc, &c, NULL, err, sizeof err) != 0 ||
        c.n != 1)
        a->bad++;
    bson_destroy(&f);
    return 0;
}

static void *nest_main(void *arg)
{
    struct nest_arg *a = arg;
    char err[256];
    for (int i = 0; i < 20; i++) {
        bson_t *f = ldb_t_json("{\"a\": {\"$lt\": 3}}");
        if (ldb_find(a->s, SNAP_NS, f, NULL, NULL, 0, 0, nested_find, a, NULL, err, sizeof err))
            a->bad++;
        bson_destroy(f);
    }
    return NULL;
}

#define NEST_THREADS 40 /* more than LDB_RTXN_POOL */

MP_TEST(read_txn_pool_under_many_threads)
{
    char dir[64];
    ldb_store *s = loaded_store(dir, 100, 10, NULL);
    MP_CHECK(s != NULL);
    if (!s)
        return;
    struct nest_arg a[NEST_THREADS];
    pthread_t th[NEST_THREADS];
    for (int i = 0; i < NEST_THREADS; i++) {
        a[i] = (struct nest_arg){.s = s};
        pthread_create(&th[i], NULL, nest_main, &a[i]);
    }
    for (int i = 0; i < NEST_THREADS; i++) {
        pthread_join(th[i], NULL);
        MP_CHECK_EQ_INT(a[i].bad, 0);
    }
    ldb_store_close(s);
    ldb_t_rmdir(dir);
}

struct ids {
    int n;
    char v[64][48];
};

static int collect_ids(const bson_t *doc, void *arg)
{
    struct ids *ids = arg;
    bson_iter_t it;
    if (ids->n < 64 && bson_iter_init_find(&it, doc, "_id")) {
        char *js = bson_as_canonical_extended_json(doc, NULL);
        snprintf(ids->v[ids->n], sizeof ids->v[0], "%s", js ? js : "?");
        bson_free(js);
    }
    ids->n++;
    return 0;
}

MP_TEST(sorted_numeric_ranges_match_scan)
{
    static const char *vals[] = {
        "5", "{\"$numberLong\": \"5\"}", "5.0", "4.999999", "5.000001", "10", "9.99999",
        "{\"$numberLong\": \"10\"}", "7", "-7", "0", "-0.0", "{\"$numberDouble\": \"NaN\"}",
        "{\"$numberDouble\": \"Infinity\"}", "{\"$numberDouble\": \"-Infinity\"}",
        "{\"$numberLong\": \"9007199254740993\"}", "9007199254740992.0",
        "{\"$numberLong\": \"9007199254740990\"}", "{\"$numberDecimal\": \"7\"}",
        "{\"$numberDecimal\": \"5\"}", "\"7\"", "null", "true", "{\"x\": 7}",
        "{\"$date\": {\"$numberLong\": \"7\"}}"};
    static const char *queries[] = {
        "{\"k\": {\"$gt\": 5, \"$lt\": 10}}",
        "{\"k\": {\"$gte\": 5, \"$lte\": 10}}",
        "{\"k\": {\"$gte\": {\"$numberLong\": \"5\"}, \"$lt\": 10.0}}",
        "{\"k\": {\"$gt\": -10, \"$lt\": 0}}",
        "{\"k\": {\"$gt\": -1, \"$lte\": 0}}",
        "{\"k\": {\"$gt\": 9007199254740989, \"$lt\": 9007199254740991}}",
        "{\"k\": {\"$gt\": 4.9999995, \"$lt\": 5.0000005}}",
        "{\"k\": {\"$gt\": 1, \"$gte\": 5, \"$lt\": 100, \"$lte\": 9.99999}}",
        "{\"k\": {\"$gt\": 1}}",
        "{\"k\": {\"$lt\": 6}}",
        "{\"k\": {\"$gt\": 1, \"$lt\": \"z\"}}",
    };
    char d1[64], d2[64];
    ldb_t_mkdir(d1, sizeof d1, "snap");
    ldb_t_mkdir(d2, sizeof d2, "snap");
    ldb_store_opts o = {.no_sync = true};
    ldb_store *plain = NULL, *indexed = NULL;
    MP_CHECK_EQ_INT(ldb_store_open(d1, &o, &plain, errbuf, sizeof errbuf), 0);
    MP_CHECK_EQ_INT(ldb_store_open(d2, &o, &indexed, errbuf, sizeof errbuf), 0);
    if (!plain || !indexed)
        return;
    bson_t *keys = ldb_t_json("{\"k\": 1}");
    MP_CHECK_EQ_INT(ldb_create_index(indexed, SNAP_NS, keys, NULL, false, errbuf, sizeof errbuf), 0);
    size_t nv = sizeof vals / sizeof *vals;
    for (size_t i = 0; i < nv; i++) {
        char js[160];
        snprintf(js, sizeof js, "{\"_id\": %zu, \"k\": %s}", i, vals[i]);
        bson_t *d = ldb_t_json(js);
        const bson_t *one[1] = {d};
        ldb_write_result r1 = {0}, r2 = {0};
        MP_CHECK_EQ_INT(ldb_insert(plain, SNAP_NS, one, 1, true, &r1, errbuf, sizeof errbuf), 0);
        MP_CHECK_EQ_INT(ldb_insert(indexed, SNAP_NS, one, 1, true, &r2, errbuf, sizeof errbuf), 0);
        ldb_write_result_clear(&r1);
        ldb_write_result_clear(&r2);
        bson_destroy(d);
    }
    bson_t *sort = ldb_t_json("{\"k\": 1}");
    for (size_t qi = 0; qi < sizeof queries / sizeof *queries; qi++) {
        bson_t *f = ldb_t_json(queries[qi]);
        struct ids a = {0}, b = {0};
        ldb_find_stats sb;
        MP_CHECK_EQ_INT(ldb_find(plain, SNAP_NS, f, NULL, sort, 0, 0, collect_ids, &a, NULL,
                                 errbuf, sizeof errbuf),
                        0);
        MP_CHECK_EQ_INT(ldb_find(indexed, SNAP_NS, f, NULL, sort, 0, 0, collect_ids, &b, &sb,
                                 errbuf, sizeof errbuf),
                        0);
        MP_CHECK_STR(sb.index, "k_1");
        bool same = a.n == b.n;
        for (int i = 0; same && i < a.n && i < 64; i++)
            same = strcmp(a.v[i], b.v[i]) == 0;
        if (!same) {
            fprintf(stderr, "query %s: scan %d documents, index %d\n", queries[qi], a.n, b.n);
            for (int i = 0; i < a.n || i < b.n; i++)
                fprintf(stderr, "  %s | %s\n", i < a.n ? a.v[i] : "", i < b.n ? b.v[i] : "");
        }
        MP_CHECK(same);
        MP_CHECK(a.n > 0 || strstr(queries[qi], "\"z\""));
        bson_destroy(f);
    }
    bson_destroy(sort);
    bson_destroy(keys);
    ldb_store_close(plain);
    ldb_store_close(indexed);
    ldb_t_rmdir(d1);
    ldb_t_rmdir(d2);
}

MP_TEST_MAIN(MP_CASE(finds_during_index_create_drop), MP_CASE(read_txn_pool_under_many_threads),
             MP_CASE(sorted_numeric_ranges_match_scan))
