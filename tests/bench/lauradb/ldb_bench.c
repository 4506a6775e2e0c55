/*
 * ldb_bench.c — LauraDB's storage engine (libldbstore, the code the plugin serves) against
 * SQLite, both driven in-process from the same C threads with the same workloads, so the
 * figures compare the engines and not a client library or a wire protocol (run.sh adds
 * the gRPC end-to-end figures separately).
 *
 *   ldb_bench DIR [-t THREADS] [-d SECONDS] [-n DOCS] [-b BATCH]
 *
 * Both engines store the same documents {_id, k, g, v, pad} (LauraDB as BSON, SQLite as
 * JSON text through json1 with _id also as the INTEGER PRIMARY KEY) and keep a secondary
 * index on k (SQLite: an expression index on json_extract(doc, '$.k')). Both commit
 * durably: LauraDB with its defaults (fsync per group commit), SQLite in WAL mode with
 * synchronous=FULL (fsync of the WAL per commit). Workloads, in this order, each engine
 * in turn so machine noise hits both alike:
 *
 *   bulk    one thread loads DOCS documents in transactions of BATCH (the read data set)
 *   insert  THREADS threads each insert one document per durable commit for SECONDS
 *           (SQLite: a connection per thread, BEGIN IMMEDIATE + busy_timeout)
 *   point   THREADS threads look documents up by k (exactly one match each)
 *   range   THREADS threads: k in [x, x+2000) sorted by k, limit 20
 *   group   THREADS threads: $group by g with a count and a sum over all DOCS documents
 *           (SQLite: GROUP BY json_extract(doc, '$.g'))
 *
 * Every result is checked (one document per lookup, 20 in order per range, the group
 * counts and sums) and both engines must answer reads through their k index; a wrong
 * answer stops the run. Output: one "RESULT engine workload ops seconds" line per
 * measurement, for run.sh to tabulate. Exit 0, or 1 on any error.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ldb_agg.h"
#include "ldb_store.h"

#define BENCH_NS "bench.docs"        /* the bulk-loaded data set */
#define BENCH_NS_SINGLE "bench.single" /* single-document inserts */
#define BENCH_RANGE_SPAN 2000        /* k is a multiple of 10: about 200 matches */
#define BENCH_RANGE_LIMIT 20
#define BENCH_GROUPS 100
#define BENCH_ERR 512

static int g_threads = 8;
static double g_secs = 4;
static int64_t g_docs = 100000;
static int g_batch = 1000;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Document i of the data set: k is a permutation of 0..DOCS-1 (7919 is prime, so
 * coprime with any DOCS not a multiple of it) times 10, so every k is unique. */
static int64_t doc_k(int64_t i)
{
    return (i * 7919) % g_docs * 10;
}

static void doc_pad(int64_t i, char pad[65])
{
    for (int j = 0; j < 64; j++)
        pad[j] = (char)('a' + (i * 31 + j) % 26);
    pad[64] = '\0';
}

/* A thread-local xorshift generator: no shared state between the measuring threads. */
static uint64_t rnd_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* ------------------------------------------------------------------ engines */

typedef struct bench_engine {
    const char *name;
    /* A per-thread handle (SQLite: its own connection); NULL on failure with err set. */
    void *(*thread_open)(struct bench_engine *e, char *err);
    void (*thread_close)(void *th);
    int (*insert_batch)(void *th, const char *ns, int64_t first_id, int n, bool single,
                        char *err);
    int (*point)(void *th, int64_t k, char *err);
    int (*range)(void *th, int64_t lo, char *err);
    int (*group)(void *th, char *err);
    /* 0 when a k-lookup and a k-range use the k index; the plan goes to stdout. */
    int (*check_plans)(struct bench_engine *e, char *err);
    void *state;
} bench_engine;

/* ---- LauraDB */

static ldb_store *g_ldb;

static void *ldbe_thread_open(bench_engine *e, char *err)
{
    (void)e;
    (void)err;
    return g_ldb;
}

static void ldbe_thread_close(void *th)
{
    (void)th;
}

static void ldbe_doc(bson_t *b, int64_t id, int64_t k)
{
    char pad[65];
    doc_pad(id, pad);
    bson_init(b);
    BSON_APPEND_INT64(b, "_id", id);
    BSON_APPEND_INT64(b, "k", k);
    BSON_APPEND_INT32(b, "g", (int32_t)(id % BENCH_GROUPS));
    BSON_APPEND_DOUBLE(b, "v", (double)(id % 1000));
    BSON_APPEND_UTF8(b, "pad", pad);
}

static int ldbe_insert_batch(void *th, const char *ns, int64_t first_id, int n, bool single,
                             char *err)
{
    bson_t *docs = bson_aligned_alloc(BSON_ALIGNOF(bson_t), sizeof(bson_t) * (size_t)n);
    const bson_t **ptrs = malloc(sizeof(*ptrs) * (size_t)n);
    if (!docs || !ptrs) {
        snprintf(err, BENCH_ERR, "out of memory");
        bson_free(docs);
        free(ptrs);
        return -ENOMEM;
    }
    for (int i = 0; i < n; i++) {
        int64_t id = first_id + i;
        ldbe_doc(&docs[i], id, single ? id : doc_k(id));
        ptrs[i] = &docs[i];
    }
    ldb_write_result r = {0};
    int rc = ldb_insert(th, ns, ptrs, (size_t)n, true, &r, err, BENCH_ERR);
    if (rc == 0 && r.inserted != (size_t)n) {
        snprintf(err, BENCH_ERR, "inserted %zu of %d", r.inserted, n);
        rc = -EIO;
    }
    ldb_write_result_clear(&r);
    for (int i = 0; i < n; i++)
        bson_destroy(&docs[i]);
    bson_free(docs);
    free(ptrs);
    return rc;
}

struct ldbe_seen {
    int n;
    int64_t last_k;
    bool out_of_order;
    uint32_t sum; /* touches every result's bytes, as SQLite's reader does */
};

static int ldbe_seen_cb(const bson_t *doc, void *arg)
{
    struct ldbe_seen *s = arg;
    bson_iter_t it;
    int64_t k = bson_iter_init_find(&it, doc, "k") ? bson_iter_as_int64(&it) : -1;
    if (s->n > 0 && k < s->last_k)
        s->out_of_order = true;
    s->last_k = k;
    s->sum += bson_get_data(doc)[doc->len / 2];
    s->n++;
    return 0;
}

static int ldbe_point(void *th, int64_t k, char *err)
{
    bson_t f = BSON_INITIALIZER;
    BSON_APPEND_INT64(&f, "k", k);
    struct ldbe_seen s = {0};
    int rc = ldb_find(th, BENCH_NS, &f, NULL, NULL, 0, 0, ldbe_seen_cb, &s, NULL, err,
                      BENCH_ERR);
    bson_destroy(&f);
    if (rc == 0 && (s.n != 1 || s.last_k != k)) {
        snprintf(err, BENCH_ERR, "k=%" PRId64 ": %d documents", k, s.n);
        rc = -EIO;
    }
    return rc;
}

static void ldbe_range_query(int64_t lo, bson_t *f, bson_t *sort)
{
    bson_t cond;
    bson_init(f);
    BSON_APPEND_DOCUMENT_BEGIN(f, "k", &cond);
    BSON_APPEND_INT64(&cond, "$gte", lo);
    BSON_APPEND_INT64(&cond, "$lt", lo + BENCH_RANGE_SPAN);
    bson_append_document_end(f, &cond);
    bson_init(sort);
    BSON_APPEND_INT32(sort, "k", 1);
}

static int ldbe_range(void *th, int64_t lo, char *err)
{
    bson_t f, sort;
    ldbe_range_query(lo, &f, &sort);
    struct ldbe_seen s = {0};
    int rc = ldb_find(th, BENCH_NS, &f, NULL, &sort, 0, BENCH_RANGE_LIMIT, ldbe_seen_cb, &s,
                      NULL, err, BENCH_ERR);
    bson_destroy(&f);
    bson_destroy(&sort);
    if (rc == 0 && (s.n != BENCH_RANGE_LIMIT || s.out_of_order)) {
        snprintf(err, BENCH_ERR, "range from %" PRId64 ": %d documents%s", lo, s.n,
                 s.out_of_order ? ", out of order" : "");
        rc = -EIO;
    }
    return rc;
}

/* Group results, checked alike for both engines: every group has DOCS/100 documents
 * and the sum of v over group g is known in closed form. */
typedef struct {
    int groups;
    int64_t docs;
    bool bad_sum;
} bench_groups;

static void groups_add(bench_groups *gs, int64_t g, int64_t n, double tot)
{
    double want = 0;
    for (int64_t id = g; id < g_docs; id += BENCH_GROUPS)
        want += (double)(id % 1000);
    if (tot != want)
        gs->bad_sum = true;
    gs->groups++;
    gs->docs += n;
}

static int groups_check(const bench_groups *gs, char *err)
{
    if (gs->groups == BENCH_GROUPS && gs->docs == g_docs && !gs->bad_sum)
        return 0;
    snprintf(err, BENCH_ERR, "group: %d groups, %" PRId64 " documents%s", gs->groups, gs->docs,
             gs->bad_sum ? ", a wrong sum" : "");
    return -EIO;
}

static int ldbe_group_cb(const bson_t *doc, void *arg)
{
    bson_iter_t it;
    int64_t g = -1, n = 0;
    double tot = -1;
    if (bson_iter_init_find(&it, doc, "_id"))
        g = bson_iter_as_int64(&it);
    if (bson_iter_init_find(&it, doc, "n"))
        n = bson_iter_as_int64(&it);
    if (bson_iter_init_find(&it, doc, "tot"))
        tot = bson_iter_as_double(&it);
    groups_add(arg, g, n, tot);
    return 0;
}

static int ldbe_group(void *th, char *err)
{
    bson_error_t e;
    bson_t *stage = bson_new_from_json(
        (const uint8_t *)"{\"$group\": {\"_id\": \"$g\", \"n\": {\"$sum\": 1}, "
                         "\"tot\": {\"$sum\": \"$v\"}}}",
        -1, &e);
    if (!stage) {
        snprintf(err, BENCH_ERR, "%s", e.message);
        return -EINVAL;
    }
    const bson_t *stages[1] = {stage};
    bench_groups gs = {0};
    int rc = ldb_aggregate(th, BENCH_NS, stages, 1, ldbe_group_cb, &gs, NULL, err, BENCH_ERR);
    bson_destroy(stage);
    return rc < 0 ? rc : groups_check(&gs, err);
}

static int ldbe_check_plans(bench_engine *e, char *err)
{
    (void)e;
    ldb_find_stats st = {0};
    struct ldbe_seen s = {0};
    bson_t f = BSON_INITIALIZER, sort;
    BSON_APPEND_INT64(&f, "k", doc_k(7));
    int rc = ldb_find(g_ldb, BENCH_NS, &f, NULL, NULL, 0, 0, ldbe_seen_cb, &s, &st, err,
                      BENCH_ERR);
    bson_destroy(&f);
    printf("plan lauradb point: index '%s', %" PRIu64 " keys, %" PRIu64 " documents examined\n",
           st.index, st.keys_examined, st.examined);
    if (rc == 0 && !st.index[0]) {
        snprintf(err, BENCH_ERR, "a lookup by k does not use the k index");
        return -EIO;
    }
    memset(&st, 0, sizeof(st));
    ldbe_range_query(1000, &f, &sort);
    if (rc == 0)
        rc = ldb_find(g_ldb, BENCH_NS, &f, NULL, &sort, 0, BENCH_RANGE_LIMIT, ldbe_seen_cb, &s,
                      &st, err, BENCH_ERR);
    bson_destroy(&f);
    bson_destroy(&sort);
    printf("plan lauradb range: index '%s', %" PRIu64 " keys, %" PRIu64 " documents examined\n",
           st.index, st.keys_examined, st.examined);
    if (rc == 0 && !st.index[0]) {
        snprintf(err, BENCH_ERR, "a sorted range on k does not use the k index");
        return -EIO;
    }
    return rc;
}

static int ldbe_open(const char *dir, char *err)
{
    int rc = ldb_store_open(dir, NULL, &g_ldb, err, BENCH_ERR);
    bson_t keys = BSON_INITIALIZER;
    BSON_APPEND_INT32(&keys, "k", 1);
    if (rc == 0)
        rc = ldb_create_index(g_ldb, BENCH_NS, &keys, NULL, false, err, BENCH_ERR);
    if (rc == 0)
        rc = ldb_create_index(g_ldb, BENCH_NS_SINGLE, &keys, NULL, false, err, BENCH_ERR);
    bson_destroy(&keys);
    return rc;
}

/* ---- SQLite */

typedef struct {
    sqlite3 *db;
    sqlite3_stmt *ins, *ins_single, *point, *range, *group, *begin, *begin_imm, *commit,
        *rollback;
} sqle_conn;

static char g_sqlite_path[4096];

static int sqle_exec(sqlite3 *db, const char *sql, char *err)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) == SQLITE_OK)
        return 0;
    snprintf(err, BENCH_ERR, "%s: %s", sql, msg ? msg : sqlite3_errmsg(db));
    sqlite3_free(msg);
    return -EIO;
}

static void sqle_thread_close(void *th)
{
    sqle_conn *c = th;
    if (!c)
        return;
    sqlite3_stmt *all[] = {c->ins,   c->ins_single, c->point,  c->range,   c->group,
                           c->begin, c->begin_imm,  c->commit, c->rollback};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        sqlite3_finalize(all[i]);
    sqlite3_close(c->db);
    free(c);
}

/* Same settings on every connection: WAL, a durable commit, 10 s of waiting for the
 * write lock, and a page cache and mmap window so that reads are not disk-bound (LMDB
 * reads straight from its map). The busy timeout comes first: connections opened at
 * the same moment otherwise fail "database is locked" on the journal_mode pragma. */
static const char *const SQLE_PRAGMAS =
    "PRAGMA busy_timeout=10000; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; "
    "PRAGMA cache_size=-65536; PRAGMA mmap_size=1073741824;";

static void *sqle_thread_open(bench_engine *e, char *err)
{
    (void)e;
    sqle_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, BENCH_ERR, "out of memory");
        return NULL;
    }
    if (sqlite3_open_v2(g_sqlite_path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                        NULL) != SQLITE_OK) {
        snprintf(err, BENCH_ERR, "open %s: %s", g_sqlite_path, sqlite3_errmsg(c->db));
        sqle_thread_close(c);
        return NULL;
    }
    if (sqle_exec(c->db, SQLE_PRAGMAS, err) < 0) {
        sqle_thread_close(c);
        return NULL;
    }
    static const char *const sql[] = {
        "INSERT INTO docs(id, doc) VALUES (?1, json(?2))",
        "INSERT INTO single(id, doc) VALUES (?1, json(?2))",
        "SELECT doc FROM docs WHERE json_extract(doc, '$.k') = ?1",
        "SELECT doc, json_extract(doc, '$.k') FROM docs WHERE json_extract(doc, '$.k') >= ?1 "
        "AND json_extract(doc, '$.k') < ?2 ORDER BY json_extract(doc, '$.k') LIMIT ?3",
        "SELECT json_extract(doc, '$.g'), count(*), sum(json_extract(doc, '$.v')) FROM docs "
        "GROUP BY json_extract(doc, '$.g')",
        "BEGIN",
        "BEGIN IMMEDIATE",
        "COMMIT",
        "ROLLBACK",
    };
    sqlite3_stmt **out[] = {&c->ins,   &c->ins_single, &c->point,  &c->range,   &c->group,
                            &c->begin, &c->begin_imm,  &c->commit, &c->rollback};
    for (size_t i = 0; i < sizeof(sql) / sizeof(sql[0]); i++) {
        if (sqlite3_prepare_v2(c->db, sql[i], -1, out[i], NULL) != SQLITE_OK) {
            snprintf(err, BENCH_ERR, "prepare %s: %s", sql[i], sqlite3_errmsg(c->db));
            sqle_thread_close(c);
            return NULL;
        }
    }
    return c;
}

/* Runs a statement without rows to completion and resets it. */
static int sqle_step_done(sqle_conn *c, sqlite3_stmt *st, char *err)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc == SQLITE_DONE)
        return 0;
    snprintf(err, BENCH_ERR, "%s: %s", sqlite3_sql(st), sqlite3_errmsg(c->db));
    return -EIO;
}

static int sqle_insert_batch(void *th, const char *ns, int64_t first_id, int n, bool single,
                             char *err)
{
    sqle_conn *c = th;
    sqlite3_stmt *ins = strcmp(ns, BENCH_NS) == 0 ? c->ins : c->ins_single;
    /* A single-document writer must take the write lock up front: a deferred BEGIN that
     * upgrades later can deadlock against another writer and fail with SQLITE_BUSY. */
    int rc = sqle_step_done(c, single ? c->begin_imm : c->begin, err);
    for (int i = 0; rc == 0 && i < n; i++) {
        int64_t id = first_id + i, k = single ? id : doc_k(id);
        char pad[65], json[256];
        doc_pad(id, pad);
        int len = snprintf(json, sizeof(json),
                           "{\"_id\":%" PRId64 ",\"k\":%" PRId64 ",\"g\":%d,\"v\":%d.0,"
                           "\"pad\":\"%s\"}",
                           id, k, (int)(id % BENCH_GROUPS), (int)(id % 1000), pad);
        sqlite3_bind_int64(ins, 1, id);
        sqlite3_bind_text(ins, 2, json, len, SQLITE_STATIC);
        rc = sqle_step_done(c, ins, err);
    }
    if (rc == 0)
        rc = sqle_step_done(c, c->commit, err);
    if (rc < 0 && !sqlite3_get_autocommit(c->db)) {
        char ignored[BENCH_ERR];
        sqle_step_done(c, c->rollback, ignored);
    }
    return rc;
}

static int sqle_point(void *th, int64_t k, char *err)
{
    sqle_conn *c = th;
    sqlite3_bind_int64(c->point, 1, k);
    int n = 0, rc;
    uint32_t sum = 0;
    while ((rc = sqlite3_step(c->point)) == SQLITE_ROW) {
        const unsigned char *doc = sqlite3_column_text(c->point, 0);
        sum += doc[sqlite3_column_bytes(c->point, 0) / 2];
        n++;
    }
    sqlite3_reset(c->point);
    if (rc != SQLITE_DONE) {
        snprintf(err, BENCH_ERR, "point: %s", sqlite3_errmsg(c->db));
        return -EIO;
    }
    if (n != 1 || sum == 0) {
        snprintf(err, BENCH_ERR, "k=%" PRId64 ": %d documents", k, n);
        return -EIO;
    }
    return 0;
}

static int sqle_range(void *th, int64_t lo, char *err)
{
    sqle_conn *c = th;
    sqlite3_bind_int64(c->range, 1, lo);
    sqlite3_bind_int64(c->range, 2, lo + BENCH_RANGE_SPAN);
    sqlite3_bind_int(c->range, 3, BENCH_RANGE_LIMIT);
    int n = 0, rc;
    int64_t last = -1;
    bool out_of_order = false;
    uint32_t sum = 0;
    while ((rc = sqlite3_step(c->range)) == SQLITE_ROW) {
        const unsigned char *doc = sqlite3_column_text(c->range, 0);
        sum += doc[sqlite3_column_bytes(c->range, 0) / 2];
        int64_t k = sqlite3_column_int64(c->range, 1);
        if (k < last)
            out_of_order = true;
        last = k;
        n++;
    }
    sqlite3_reset(c->range);
    if (rc != SQLITE_DONE) {
        snprintf(err, BENCH_ERR, "range: %s", sqlite3_errmsg(c->db));
        return -EIO;
    }
    if (n != BENCH_RANGE_LIMIT || out_of_order || sum == 0) {
        snprintf(err, BENCH_ERR, "range from %" PRId64 ": %d documents%s", lo, n,
                 out_of_order ? ", out of order" : "");
        return -EIO;
    }
    return 0;
}

static int sqle_group(void *th, char *err)
{
    sqle_conn *c = th;
    bench_groups gs = {0};
    int rc;
    while ((rc = sqlite3_step(c->group)) == SQLITE_ROW)
        groups_add(&gs, sqlite3_column_int64(c->group, 0), sqlite3_column_int64(c->group, 1),
                   sqlite3_column_double(c->group, 2));
    sqlite3_reset(c->group);
    if (rc != SQLITE_DONE) {
        snprintf(err, BENCH_ERR, "group: %s", sqlite3_errmsg(c->db));
        return -EIO;
    }
    return groups_check(&gs, err);
}

/* Prints SQLite's plan for sql; 0 when some step searches the k index. */
static int sqle_plan(sqle_conn *c, const char *what, const char *sql, char *err)
{
    char q[512];
    snprintf(q, sizeof(q), "EXPLAIN QUERY PLAN %s", sql);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(c->db, q, -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, BENCH_ERR, "%s: %s", q, sqlite3_errmsg(c->db));
        return -EIO;
    }
    bool indexed = false;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *detail = (const char *)sqlite3_column_text(st, 3);
        printf("plan sqlite %s: %s\n", what, detail ? detail : "");
        if (detail && strstr(detail, "USING INDEX docs_k"))
            indexed = true;
    }
    sqlite3_finalize(st);
    if (!indexed) {
        snprintf(err, BENCH_ERR, "sqlite does not use docs_k for the %s query", what);
        return -EIO;
    }
    return 0;
}

static int sqle_check_plans(bench_engine *e, char *err)
{
    sqle_conn *c = sqle_thread_open(e, err);
    if (!c)
        return -EIO;
    int rc = sqle_plan(c, "point", sqlite3_sql(c->point), err);
    if (rc == 0)
        rc = sqle_plan(c, "range", sqlite3_sql(c->range), err);
    sqle_thread_close(c);
    return rc;
}

static int sqle_open(const char *dir, char *err)
{
    snprintf(g_sqlite_path, sizeof(g_sqlite_path), "%s/bench.sqlite", dir);
    sqlite3 *db;
    if (sqlite3_open(g_sqlite_path, &db) != SQLITE_OK) {
        snprintf(err, BENCH_ERR, "open %s: %s", g_sqlite_path, sqlite3_errmsg(db));
        sqlite3_close(db);
        return -EIO;
    }
    int rc = sqle_exec(db, SQLE_PRAGMAS, err);
    if (rc == 0)
        rc = sqle_exec(db,
                       "CREATE TABLE docs(id INTEGER PRIMARY KEY, doc TEXT NOT NULL);"
                       "CREATE INDEX docs_k ON docs(json_extract(doc, '$.k'));"
                       "CREATE TABLE single(id INTEGER PRIMARY KEY, doc TEXT NOT NULL);"
                       "CREATE INDEX single_k ON single(json_extract(doc, '$.k'));",
                       err);
    sqlite3_close(db);
    return rc;
}

/* ------------------------------------------------------------------ measuring */

typedef enum { W_INSERT, W_POINT, W_RANGE, W_GROUP } bench_work;

typedef struct {
    bench_engine *e;
    bench_work w;
    int idx;
    double deadline;
    pthread_barrier_t *start;
    uint64_t ops;
    int rc;
    char err[BENCH_ERR];
} bench_thread;

static void *bench_thread_main(void *arg)
{
    bench_thread *t = arg;
    void *th = t->e->thread_open(t->e, t->err);
    pthread_barrier_wait(t->start);
    if (!th) {
        t->rc = -EIO;
        return NULL;
    }
    uint64_t seed = 0x9e3779b97f4a7c15ull * (uint64_t)(t->idx + 1);
    /* Ids of the single inserts: a block of 10^9 per thread, so none collide. */
    int64_t next_id = (int64_t)(t->idx + 1) * 1000000000;
    while (t->rc == 0 && now_s() < t->deadline) {
        switch (t->w) {
        case W_INSERT:
            t->rc = t->e->insert_batch(th, BENCH_NS_SINGLE, next_id++, 1, true, t->err);
            break;
        case W_POINT:
            t->rc = t->e->point(th, doc_k((int64_t)(rnd_next(&seed) % (uint64_t)g_docs)),
                                t->err);
            break;
        case W_RANGE: {
            uint64_t top = (uint64_t)(g_docs * 10 - BENCH_RANGE_SPAN * 4);
            t->rc = t->e->range(th, (int64_t)(rnd_next(&seed) % top), t->err);
            break;
        }
        case W_GROUP:
            t->rc = t->e->group(th, t->err);
            break;
        }
        if (t->rc == 0)
            t->ops++;
    }
    t->e->thread_close(th);
    return NULL;
}

static const char *const work_names[] = {"insert", "point", "range", "group"};

/* Runs workload w on g_threads threads for g_secs; prints RESULT. */
static int measure(bench_engine *e, bench_work w)
{
    bench_thread *ts = calloc((size_t)g_threads, sizeof(*ts));
    pthread_t *tids = calloc((size_t)g_threads, sizeof(*tids));
    pthread_barrier_t start;
    if (!ts || !tids) {
        free(ts);
        free(tids);
        return -ENOMEM;
    }
    pthread_barrier_init(&start, NULL, (unsigned)g_threads + 1);
    int started = 0, rc = 0;
    for (int i = 0; i < g_threads; i++) {
        ts[i] = (bench_thread){.e = e, .w = w, .idx = i, .deadline = 1e300, .start = &start};
        if (pthread_create(&tids[i], NULL, bench_thread_main, &ts[i]) != 0) {
            fprintf(stderr, "ldb_bench: cannot start a thread\n");
            exit(1); /* the barrier would wait for it forever */
        }
        started++;
    }
    /* Every thread has its connection before the clock starts. */
    double t0 = now_s(), deadline = t0 + g_secs;
    for (int i = 0; i < g_threads; i++)
        ts[i].deadline = deadline;
    pthread_barrier_wait(&start);
    t0 = now_s();
    uint64_t ops = 0;
    for (int i = 0; i < started; i++) {
        pthread_join(tids[i], NULL);
        ops += ts[i].ops;
        if (ts[i].rc < 0 && rc == 0) {
            fprintf(stderr, "ldb_bench: %s %s: %s\n", e->name, work_names[w], ts[i].err);
            rc = ts[i].rc;
        }
    }
    double secs = now_s() - t0;
    pthread_barrier_destroy(&start);
    free(ts);
    free(tids);
    if (rc == 0)
        printf("RESULT %s %s %" PRIu64 " %.3f\n", e->name, work_names[w], ops, secs);
    fflush(stdout);
    return rc;
}

/* The bulk load: one thread, DOCS documents in batches; the result counts documents. */
static int bulk_load(bench_engine *e)
{
    char err[BENCH_ERR] = "";
    void *th = e->thread_open(e, err);
    if (!th) {
        fprintf(stderr, "ldb_bench: %s: %s\n", e->name, err);
        return -EIO;
    }
    double t0 = now_s();
    int rc = 0;
    for (int64_t id = 0; rc == 0 && id < g_docs; id += g_batch) {
        int n = (int)(g_docs - id < g_batch ? g_docs - id : g_batch);
        rc = e->insert_batch(th, BENCH_NS, id, n, false, err);
    }
    double secs = now_s() - t0;
    e->thread_close(th);
    if (rc < 0) {
        fprintf(stderr, "ldb_bench: %s bulk: %s\n", e->name, err);
        return rc;
    }
    printf("RESULT %s bulk %" PRId64 " %.3f\n", e->name, g_docs, secs);
    fflush(stdout);
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: ldb_bench DIR [-t THREADS] [-d SECONDS] [-n DOCS] [-b BATCH]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int opt;
    while ((opt = getopt(argc, argv, "t:d:n:b:")) != -1) {
        switch (opt) {
        case 't':
            g_threads = atoi(optarg);
            break;
        case 'd':
            g_secs = atof(optarg);
            break;
        case 'n':
            g_docs = atoll(optarg);
            break;
        case 'b':
            g_batch = atoi(optarg);
            break;
        default:
            usage();
        }
    }
    if (optind + 1 != argc || g_threads < 1 || g_threads > 256 || g_secs <= 0 ||
        g_docs < 1000 || g_docs % 7919 == 0 || g_docs % BENCH_GROUPS != 0 || g_batch < 1)
        usage();
    const char *dir = argv[optind];
    char err[BENCH_ERR] = "";
    char ldb_dir[4096];
    snprintf(ldb_dir, sizeof(ldb_dir), "%s/lauradb", dir);
    if (mkdir(ldb_dir, 0700) < 0 && errno != EEXIST) {
        fprintf(stderr, "ldb_bench: mkdir %s: %s\n", ldb_dir, strerror(errno));
        return 1;
    }
    if (ldbe_open(ldb_dir, err) < 0 || sqle_open(dir, err) < 0) {
        fprintf(stderr, "ldb_bench: %s\n", err);
        return 1;
    }
    printf("sqlite %s, threadsafe=%d\n", sqlite3_libversion(), sqlite3_threadsafe());
    bench_engine engines[2] = {
        {.name = "lauradb",
         .thread_open = ldbe_thread_open,
         .thread_close = ldbe_thread_close,
         .insert_batch = ldbe_insert_batch,
         .point = ldbe_point,
         .range = ldbe_range,
         .group = ldbe_group,
         .check_plans = ldbe_check_plans},
        {.name = "sqlite",
         .thread_open = sqle_thread_open,
         .thread_close = sqle_thread_close,
         .insert_batch = sqle_insert_batch,
         .point = sqle_point,
         .range = sqle_range,
         .group = sqle_group,
         .check_plans = sqle_check_plans},
    };
    int rc = 0;
    for (int i = 0; rc == 0 && i < 2; i++)
        rc = bulk_load(&engines[i]);
    for (int i = 0; rc == 0 && i < 2; i++)
        if ((rc = engines[i].check_plans(&engines[i], err)) < 0)
            fprintf(stderr, "ldb_bench: %s: %s\n", engines[i].name, err);
    for (bench_work w = W_INSERT; rc == 0 && w <= W_GROUP; w++)
        for (int i = 0; rc == 0 && i < 2; i++)
            rc = measure(&engines[i], w);
    ldb_store_close(g_ldb);
    return rc == 0 ? 0 : 1;
}
