/*
 * test_ldb_agg.c — LauraDB's aggregation pipeline over a real (temporary, no-sync)
 * store: every stage, accumulator and expression operator with MongoDB's documented
 * edge cases (missing/null/arrays/mixed numeric types/type order), pushdown of the
 * leading $match/$sort/$skip/$limit into ldb_find (seen through stats.examined), error
 * messages for malformed pipelines, the 100 MiB memory limit of $group and $sort, and a
 * timed 100k-document $group. Results are compared type-exactly (int32 vs int64 vs
 * double) against expected JSON.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "ldb_agg.h"
#include "mp_test.h"
#include "ldb_test_util.h"

#include <errno.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

static char errbuf[512];
static ldb_store *S;

/* ---------------------------------------------------------------- helpers */

static void load_docs(const char *ns, const char *json_array)
{
    char *wrapped;
    if (asprintf(&wrapped, "{\"d\": %s}", json_array) < 0)
        abort();
    bson_t *w = ldb_t_json(wrapped);
    free(wrapped);
    bson_iter_t it, sub;
    if (!bson_iter_init_find(&it, w, "d") || !bson_iter_recurse(&it, &sub))
        abort();
    while (bson_iter_next(&sub)) {
        uint32_t len;
        const uint8_t *data;
        bson_t d;
        bson_iter_document(&sub, &len, &data);
        bson_init_static(&d, data, len);
        const bson_t *docs[1] = {&d};
        ldb_write_result r = {0};
        if (ldb_insert(S, ns, docs, 1, true, &r, errbuf, sizeof errbuf) != 0) {
            fprintf(stderr, "insert into %s: %s\n", ns, errbuf);
            abort();
        }
        ldb_write_result_clear(&r);
    }
    bson_destroy(w);
}

/* Appends each result to an array, so a whole result set compares in one go. */
struct results {
    bson_t arr;
    uint32_t n;
    uint32_t stop_after; /* 0 = never stop */
};

static int collect(const bson_t *doc, void *ctx)
{
    struct results *r = ctx;
    char kb[16];
    const char *key;
    size_t kl = bson_uint32_to_string(r->n, &key, kb, sizeof kb);
    bson_append_document(&r->arr, key, (int)kl, doc);
    r->n++;
    return r->stop_after && r->n >= r->stop_after;
}

/* Runs the pipeline (a JSON array of stages) and leaves the results in *out as
 * {"r": [...]}, initialised whatever the outcome. */
static int run_agg(const char *ns, const char *pipeline, bson_t *out, ldb_find_stats *st,
                   uint32_t stop_after)
{
    char *wrapped;
    if (asprintf(&wrapped, "{\"p\": %s}", pipeline) < 0)
        abort();
    bson_t *w = ldb_t_json(wrapped);
    free(wrapped);
    bson_iter_t it, sub;
    bson_t stage_docs[32];
    const bson_t *stages[32];
    size_t n = 0;
    if (!bson_iter_init_find(&it, w, "p") || !bson_iter_recurse(&it, &sub))
        abort();
    while (bson_iter_next(&sub) && n < 32) {
        uint32_t len;
        const uint8_t *data;
        if (BSON_ITER_HOLDS_DOCUMENT(&sub)) {
            bson_iter_document(&sub, &len, &data);
            bson_init_static(&stage_docs[n], data, len);
            stages[n] = &stage_docs[n];
        } else {
            stages[n] = NULL; /* a non-document stage: must be refused */
        }
        n++;
    }
    struct results r = {.stop_after = stop_after};
    bson_init(out);
    bson_append_array_begin(out, "r", 1, &r.arr);
    errbuf[0] = '\0';
    int rc = ldb_aggregate(S, ns, stages, n, collect, &r, st, errbuf, sizeof errbuf);
    bson_append_array_end(out, &r.arr);
    bson_destroy(w);
    return rc;
}

static bool agg_is(const char *ns, const char *pipeline, const char *want_array, const char *file,
                   int line)
{
    bson_t out;
    int rc = run_agg(ns, pipeline, &out, NULL, 0);
    bool ok = rc == 0;
    if (!ok) {
        fprintf(stderr, "%s:%d: aggregate %s failed: %d %s\n", file, line, pipeline, rc, errbuf);
    } else {
        char *want;
        if (asprintf(&want, "{\"r\": %s}", want_array) < 0)
            abort();
        ok = ldb_t_doc_is(&out, want, file, line);
        if (!ok)
            fprintf(stderr, "  pipeline: %s\n", pipeline);
        free(want);
    }
    bson_destroy(&out);
    return ok;
}

#define CHECK_AGG(ns, pipeline, want) MP_CHECK(agg_is((ns), (pipeline), (want), __FILE__, __LINE__))

#define CHECK_AGG_ERR(ns, pipeline, want_rc, msg)                                  \
    do {                                                                           \
        bson_t out_;                                                               \
        int rc_ = run_agg((ns), (pipeline), &out_, NULL, 0);                       \
        MP_CHECK_EQ_INT(rc_, (want_rc));                                           \
        MP_CHECK_CONTAINS(errbuf, (msg));                                          \
        bson_destroy(&out_);                                                       \
    } while (0)

/* Evaluates one expression on one document through $project. */
#define CHECK_EXPR(doc, expr, want_value)                                          \
    do {                                                                           \
        load_docs("t.expr", "[" doc "]");                                          \
        CHECK_AGG("t.expr", "[{\"$project\": {\"_id\": 0, \"v\": " expr "}}]",    \
                  "[{\"v\": " want_value "}]");                                    \
        clear_ns("t.expr");                                                        \
    } while (0)

/* The result when the expression is missing: v is left out. */
#define CHECK_EXPR_MISSING(doc, expr)                                              \
    do {                                                                           \
        load_docs("t.expr", "[" doc "]");                                          \
        CHECK_AGG("t.expr", "[{\"$project\": {\"_id\": 0, \"v\": " expr "}}]",    \
                  "[{}]");                                                         \
        clear_ns("t.expr");                                                        \
    } while (0)

#define CHECK_EXPR_ERR(doc, expr, msg)                                             \
    do {                                                                           \
        load_docs("t.expr", "[" doc "]");                                          \
        CHECK_AGG_ERR("t.expr", "[{\"$project\": {\"v\": " expr "}}]", -EINVAL, (msg)); \
        clear_ns("t.expr");                                                        \
    } while (0)

static void clear_ns(const char *ns)
{
    ldb_write_result r = {0};
    bson_t empty = BSON_INITIALIZER;
    if (ldb_delete(S, ns, &empty, true, &r, errbuf, sizeof errbuf) != 0) {
        fprintf(stderr, "delete: %s\n", errbuf);
        abort();
    }
    ldb_write_result_clear(&r);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---------------------------------------------------------------- fixtures */

static const char *sales =
    "[{\"_id\": 1, \"city\": \"Oslo\", \"year\": 2020, \"qty\": 5, \"price\": 10, \"tags\": [\"a\", \"b\"]},"
    " {\"_id\": 2, \"city\": \"Rome\", \"year\": 2020, \"qty\": 2, \"price\": 2.5, \"tags\": [\"b\"]},"
    " {\"_id\": 3, \"city\": \"Oslo\", \"year\": 2021, \"qty\": 1, \"price\": 7, \"tags\": []},"
    " {\"_id\": 4, \"city\": \"Rome\", \"year\": 2020, \"qty\": 3, \"price\": 4},"
    " {\"_id\": 5, \"city\": null, \"year\": 2021, \"qty\": \"many\", \"price\": 1}]";

/* ---------------------------------------------------------------- stages */

MP_TEST(match_and_pushdown)
{
    load_docs("t.pd", "[{\"_id\": 1, \"a\": 1}, {\"_id\": 2, \"a\": 2}, {\"_id\": 3, \"a\": 1},"
                      " {\"_id\": 4, \"a\": 2}, {\"_id\": 5, \"a\": 1}, {\"_id\": 6, \"a\": 2},"
                      " {\"_id\": 7, \"a\": 1}, {\"_id\": 8, \"a\": 2}, {\"_id\": 9, \"a\": 1},"
                      " {\"_id\": 10, \"a\": 2}]");
    CHECK_AGG("t.pd", "[{\"$match\": {\"a\": 1, \"_id\": {\"$gt\": 4}}}]",
              "[{\"_id\": 5, \"a\": 1}, {\"_id\": 7, \"a\": 1}, {\"_id\": 9, \"a\": 1}]");
    /* Two leading $match stages combine. */
    CHECK_AGG("t.pd", "[{\"$match\": {\"a\": 2}}, {\"$match\": {\"_id\": {\"$lt\": 5}}}]",
              "[{\"_id\": 2, \"a\": 2}, {\"_id\": 4, \"a\": 2}]");
    /* $limit/$skip runs fold: docs 3..5, then [limit 5, skip 2] = docs 3..5 as well. */
    CHECK_AGG("t.pd", "[{\"$skip\": 2}, {\"$limit\": 3}, {\"$project\": {\"a\": 0}}]",
              "[{\"_id\": 3}, {\"_id\": 4}, {\"_id\": 5}]");
    CHECK_AGG("t.pd", "[{\"$limit\": 5}, {\"$skip\": 2}, {\"$project\": {\"a\": 0}}]",
              "[{\"_id\": 3}, {\"_id\": 4}, {\"_id\": 5}]");
    CHECK_AGG("t.pd", "[{\"$limit\": 2}, {\"$skip\": 5}]", "[]");
    CHECK_AGG("t.pd", "[{\"$sort\": {\"a\": -1, \"_id\": 1}}, {\"$limit\": 3}]",
              "[{\"_id\": 2, \"a\": 2}, {\"_id\": 4, \"a\": 2}, {\"_id\": 6, \"a\": 2}]");
    /* $match after $sort is pushed too (it commutes with the sort). */
    CHECK_AGG("t.pd", "[{\"$sort\": {\"_id\": -1}}, {\"$match\": {\"a\": 1}}, {\"$limit\": 2}]",
              "[{\"_id\": 9, \"a\": 1}, {\"_id\": 7, \"a\": 1}]");

    /* A limit without sort stops the scan early. */
    ldb_find_stats st;
    bson_t out;
    MP_CHECK_EQ_INT(run_agg("t.pd", "[{\"$limit\": 3}]", &out, &st, 0), 0);
    MP_CHECK_EQ_INT(st.examined, 3);
    MP_CHECK_EQ_INT(st.returned, 3);
    bson_destroy(&out);
    MP_CHECK_EQ_INT(run_agg("t.pd", "[{\"$match\": {\"a\": 2}}, {\"$limit\": 2}, "
                            "{\"$project\": {\"a\": 1}}]", &out, &st, 0), 0);
    MP_CHECK_EQ_INT(st.examined, 4); /* _id 1..4: the second a=2 is _id 4 */
    MP_CHECK_EQ_INT(st.returned, 2);
    bson_destroy(&out);
    /* Without pushdown a limit after $project still stops the scan. */
    MP_CHECK_EQ_INT(run_agg("t.pd", "[{\"$project\": {\"a\": 1}}, {\"$limit\": 2}]", &out, &st, 0), 0);
    MP_CHECK_EQ_INT(st.examined, 2);
    bson_destroy(&out);
    /* The caller's callback stopping ends everything. */
    MP_CHECK_EQ_INT(run_agg("t.pd", "[{\"$project\": {\"a\": 1}}]", &out, &st, 4), 0);
    MP_CHECK_EQ_INT(st.returned, 4);
    MP_CHECK_EQ_INT(st.examined, 4);
    bson_destroy(&out);

    /* A later $match runs on the stream, here on a computed field. */
    CHECK_AGG("t.pd", "[{\"$project\": {\"twice\": {\"$multiply\": [\"$a\", 2]}}}, "
                      "{\"$match\": {\"twice\": 4, \"_id\": {\"$lte\": 4}}}]",
              "[{\"_id\": 2, \"twice\": 4}, {\"_id\": 4, \"twice\": 4}]");
    /* A missing collection is empty. */
    CHECK_AGG("t.nosuch", "[{\"$match\": {}}]", "[]");
    CHECK_AGG("t.pd", "[]", "[{\"_id\": 1, \"a\": 1}, {\"_id\": 2, \"a\": 2}, {\"_id\": 3, \"a\": 1}, "
              "{\"_id\": 4, \"a\": 2}, {\"_id\": 5, \"a\": 1}, {\"_id\": 6, \"a\": 2}, "
              "{\"_id\": 7, \"a\": 1}, {\"_id\": 8, \"a\": 2}, {\"_id\": 9, \"a\": 1}, "
              "{\"_id\": 10, \"a\": 2}]");
}

MP_TEST(project_stage)
{
    load_docs("t.proj", "[{\"_id\": 1, \"a\": 1, \"b\": {\"c\": 2, \"d\": 3}, "
                        "\"e\": [{\"f\": 1, \"g\": 2}, 5, {\"g\": 3}], \"h\": \"x\"}]");
    CHECK_AGG("t.proj", "[{\"$project\": {\"h\": 1, \"a\": 1}}]", "[{\"_id\": 1, \"a\": 1, \"h\": \"x\"}]");
    CHECK_AGG("t.proj", "[{\"$project\": {\"a\": 1, \"_id\": 0}}]", "[{\"a\": 1}]");
    CHECK_AGG("t.proj", "[{\"$project\": {\"_id\": 0}}]",
              "[{\"a\": 1, \"b\": {\"c\": 2, \"d\": 3}, \"e\": [{\"f\": 1, \"g\": 2}, 5, {\"g\": 3}], \"h\": \"x\"}]");
    CHECK_AGG("t.proj", "[{\"$project\": {\"_id\": 1}}]", "[{\"_id\": 1}]");
    CHECK_AGG("t.proj", "[{\"$project\": {\"b\": 0, \"e\": 0}}]", "[{\"_id\": 1, \"a\": 1, \"h\": \"x\"}]");
    /* Dotted and nested-document forms, through arrays of documents. */
    CHECK_AGG("t.proj", "[{\"$project\": {\"b.c\": 1, \"e.g\": 1}}]",
              "[{\"_id\": 1, \"b\": {\"c\": 2}, \"e\": [{\"g\": 2}, {\"g\": 3}]}]");
    CHECK_AGG("t.proj", "[{\"$project\": {\"b\": {\"d\": true}}}]", "[{\"_id\": 1, \"b\": {\"d\": 3}}]");
    CHECK_AGG("t.proj", "[{\"$project\": {\"e.g\": 0, \"b.c\": 0, \"_id\": 0, \"a\": 0}}]",
              "[{\"b\": {\"d\": 3}, \"e\": [{\"f\": 1}, 5, {}], \"h\": \"x\"}]");
    /* Computed fields come after the included ones, in specification order. */
    CHECK_AGG("t.proj", "[{\"$project\": {\"total\": {\"$add\": [\"$a\", \"$b.c\"]}, \"x\": \"$b.d\", "
                        "\"lit\": {\"$literal\": \"$notapath\"}, \"h\": 1, \"n\": 5, \"s\": \"plain\"}}]",
              "[{\"_id\": 1, \"h\": \"x\", \"total\": 3, \"x\": 3, \"lit\": \"$notapath\", "
              "\"s\": \"plain\"}]");
    /* (n: 5 above is an inclusion, as any number is in $project; there is no n to include.) */
    /* Missing computed values are left out; a computed dotted field builds a document. */
    CHECK_AGG("t.proj", "[{\"$project\": {\"_id\": 0, \"m\": \"$nosuch\", \"b.sum\": {\"$add\": [\"$b.c\", \"$b.d\"]}}}]",
              "[{\"b\": {\"sum\": 5}}]");
    /* "$e.g" over an array of documents gives an array. */
    CHECK_AGG("t.proj", "[{\"$project\": {\"_id\": 0, \"gs\": \"$e.g\", \"fs\": \"$e.f\"}}]",
              "[{\"gs\": [2, 3], \"fs\": [1]}]");
    CHECK_AGG("t.proj", "[{\"$project\": {\"_id\": \"$h\", \"a\": 1}}]", "[{\"_id\": \"x\", \"a\": 1}]");
    CHECK_AGG_ERR("t.proj", "[{\"$project\": {\"a\": 1, \"b\": 0}}]", -EINVAL,
                  "Cannot do exclusion on field b in inclusion projection");
    CHECK_AGG_ERR("t.proj", "[{\"$project\": {\"b\": 0, \"x\": \"$a\"}}]", -EINVAL,
                  "Cannot do exclusion on field b");
    CHECK_AGG_ERR("t.proj", "[{\"$project\": {}}]", -EINVAL, "at least one field");
    CHECK_AGG_ERR("t.proj", "[{\"$project\": {\"a\": 1, \"a.b\": 1}}]", -EINVAL, "Path collision");
    CHECK_AGG_ERR("t.proj", "[{\"$project\": {\"a\": {}}}]", -EINVAL, "empty object");
    CHECK_AGG_ERR("t.proj", "[{\"$project\": \"a\"}]", -EINVAL, "$project");
}

MP_TEST(addfields_stage)
{
    load_docs("t.add", "[{\"_id\": 1, \"a\": 1, \"b\": {\"c\": 2}, \"arr\": [{\"x\": 1}, 7, {\"x\": 2}]}]");
    /* Existing fields are replaced in place, new ones appended; numbers are literals. */
    CHECK_AGG("t.add", "[{\"$addFields\": {\"z\": 1, \"a\": {\"$add\": [\"$a\", 10]}}}]",
              "[{\"_id\": 1, \"a\": 11, \"b\": {\"c\": 2}, \"arr\": [{\"x\": 1}, 7, {\"x\": 2}], \"z\": 1}]");
    CHECK_AGG("t.add", "[{\"$set\": {\"b.d\": \"$a\", \"arr.y\": true}}, {\"$project\": {\"_id\": 0, \"a\": 0}}]",
              "[{\"b\": {\"c\": 2, \"d\": 1}, \"arr\": [{\"x\": 1, \"y\": true}, {\"y\": true}, "
              "{\"x\": 2, \"y\": true}]}]");
    /* Nested document form merges into the existing sub-document. */
    CHECK_AGG("t.add", "[{\"$addFields\": {\"b\": {\"e\": 5}, \"new\": {\"k\": \"$a\"}}}, "
                       "{\"$project\": {\"b\": 1, \"new\": 1, \"_id\": 0}}]",
              "[{\"b\": {\"c\": 2, \"e\": 5}, \"new\": {\"k\": 1}}]");
    /* A missing value ($$REMOVE, or an absent field) removes / does not add. */
    CHECK_AGG("t.add", "[{\"$addFields\": {\"a\": \"$$REMOVE\", \"q\": \"$nosuch\"}}, {\"$project\": {\"arr\": 0}}]",
              "[{\"_id\": 1, \"b\": {\"c\": 2}}]");
    CHECK_AGG("t.add", "[{\"$addFields\": {\"e\": {}}}, {\"$project\": {\"e\": 1, \"_id\": 0}}]",
              "[{\"e\": {}}]");
    CHECK_AGG_ERR("t.add", "[{\"$addFields\": {\"$bad\": 1}}]", -EINVAL, "may not start with '$'");
    CHECK_AGG_ERR("t.add", "[{\"$set\": {\"x\": {\"$toUpper\": {\"$date\": 0}}}}]", -EINVAL, "$set: ");
}

MP_TEST(group_stage)
{
    load_docs("t.g", sales);
    CHECK_AGG("t.g", "[{\"$group\": {\"_id\": \"$city\", \"n\": {\"$sum\": 1}, \"qty\": {\"$sum\": \"$qty\"}}}, "
                     "{\"$sort\": {\"_id\": 1}}]",
              "[{\"_id\": null, \"n\": 1, \"qty\": 0}, {\"_id\": \"Oslo\", \"n\": 2, \"qty\": 6}, "
              "{\"_id\": \"Rome\", \"n\": 2, \"qty\": 5}]");
    /* A $match after $group filters the groups. */
    CHECK_AGG("t.g", "[{\"$group\": {\"_id\": \"$city\", \"n\": {\"$sum\": 1}}}, {\"$match\": {\"n\": {\"$gte\": 2}}}, "
                     "{\"$sort\": {\"_id\": -1}}]",
              "[{\"_id\": \"Rome\", \"n\": 2}, {\"_id\": \"Oslo\", \"n\": 2}]");
    /* _id null: one group over everything; compound _id documents. */
    CHECK_AGG("t.g", "[{\"$group\": {\"_id\": null, \"total\": {\"$sum\": {\"$multiply\": [\"$price\", 2]}}, "
                     "\"avg\": {\"$avg\": \"$qty\"}, \"c\": {\"$count\": {}}}}]",
              "[{\"_id\": null, \"total\": 49.0, \"avg\": 2.75, \"c\": 5}]");
    CHECK_AGG("t.g", "[{\"$group\": {\"_id\": {\"y\": \"$year\", \"c\": \"$city\"}, \"ids\": {\"$push\": \"$_id\"}}}, "
                     "{\"$sort\": {\"_id.y\": 1, \"_id.c\": -1}}]",
              "[{\"_id\": {\"y\": 2020, \"c\": \"Rome\"}, \"ids\": [2, 4]}, "
              "{\"_id\": {\"y\": 2020, \"c\": \"Oslo\"}, \"ids\": [1]}, "
              "{\"_id\": {\"y\": 2021, \"c\": \"Oslo\"}, \"ids\": [3]}, "
              "{\"_id\": {\"y\": 2021, \"c\": null}, \"ids\": [5]}]");
    /* A missing _id field groups as null; a missing key in a document _id is left out. */
    CHECK_AGG("t.g", "[{\"$group\": {\"_id\": \"$nosuch\", \"n\": {\"$sum\": 1}}}]", "[{\"_id\": null, \"n\": 5}]");
    CHECK_AGG("t.g", "[{\"$match\": {\"_id\": 1}}, {\"$group\": {\"_id\": {\"k\": \"$nosuch\"}}}]", "[{\"_id\": {}}]");
    /* $first/$last in input order, $min/$max skipping null and missing. */
    CHECK_AGG("t.g", "[{\"$sort\": {\"qty\": -1}}, {\"$group\": {\"_id\": \"$year\", \"first\": {\"$first\": \"$_id\"}, "
                     "\"last\": {\"$last\": \"$_id\"}, \"mn\": {\"$min\": \"$city\"}, \"mx\": {\"$max\": \"$tags\"}}}, "
                     "{\"$sort\": {\"_id\": 1}}]",
              "[{\"_id\": 2020, \"first\": 1, \"last\": 2, \"mn\": \"Oslo\", \"mx\": [\"b\"]}, "
              "{\"_id\": 2021, \"first\": 5, \"last\": 3, \"mn\": \"Oslo\", \"mx\": []}]");
    CHECK_AGG("t.g", "[{\"$group\": {\"_id\": \"$year\", \"tags\": {\"$addToSet\": \"$tags\"}, "
                     "\"mn\": {\"$min\": \"$nosuch\"}, \"f\": {\"$first\": \"$nosuch\"}, "
                     "\"p\": {\"$push\": \"$nosuch\"}, \"avg\": {\"$avg\": \"$city\"}}}, {\"$sort\": {\"_id\": -1}}]",
              "[{\"_id\": 2021, \"tags\": [[]], \"mn\": null, \"f\": null, \"p\": [], \"avg\": null}, "
              "{\"_id\": 2020, \"tags\": [[\"a\", \"b\"], [\"b\"]], \"mn\": null, \"f\": null, \"p\": [], \"avg\": null}]");
    clear_ns("t.g");

    /* Numeric groups: 1, 1.0 and NumberLong(1) are one key; $sum widens like MongoDB. */
    load_docs("t.g", "[{\"_id\": 1, \"k\": 1, \"v\": 2147483647}, {\"_id\": 2, \"k\": 1.0, \"v\": 1},"
                     " {\"_id\": 3, \"k\": {\"$numberLong\": \"1\"}, \"v\": \"str\"},"
                     " {\"_id\": 4, \"k\": \"1\", \"v\": 1}, {\"_id\": 5, \"k\": \"1\", \"v\": 2},"
                     " {\"_id\": 6, \"k\": [1], \"v\": 0.5}, {\"_id\": 7, \"k\": [1], \"v\": 1}]");
    CHECK_AGG("t.g", "[{\"$group\": {\"_id\": \"$k\", \"s\": {\"$sum\": \"$v\"}, \"n\": {\"$sum\": 1}, "
                     "\"set\": {\"$addToSet\": \"$k\"}, \"mn\": {\"$min\": \"$v\"}, \"mx\": {\"$max\": \"$v\"}}}]",
              "[{\"_id\": 1, \"s\": {\"$numberLong\": \"2147483648\"}, \"n\": 3, \"set\": [1], \"mn\": 1, \"mx\": \"str\"}, "
              "{\"_id\": \"1\", \"s\": 3, \"n\": 2, \"set\": [\"1\"], \"mn\": 1, \"mx\": 2}, "
              "{\"_id\": [1], \"s\": 1.5, \"n\": 2, \"set\": [[1]], \"mn\": 0.5, \"mx\": 1}]");
    /* $avg of ints is a double. */
    CHECK_AGG("t.g", "[{\"$match\": {\"k\": \"1\"}}, {\"$group\": {\"_id\": 0, \"a\": {\"$avg\": \"$v\"}}}]",
              "[{\"_id\": 0, \"a\": 1.5}]");
    /* Nothing in, nothing out — even for _id: null. */
    CHECK_AGG("t.g", "[{\"$match\": {\"k\": 99}}, {\"$group\": {\"_id\": null, \"n\": {\"$sum\": 1}}}]", "[]");

    CHECK_AGG_ERR("t.g", "[{\"$group\": {\"n\": {\"$sum\": 1}}}]", -EINVAL, "must specify an _id");
    CHECK_AGG_ERR("t.g", "[{\"$group\": {\"_id\": 1, \"n\": {\"$median\": 1}}}]", -EINVAL,
                  "$group: unknown group operator '$median'");
    CHECK_AGG_ERR("t.g", "[{\"$group\": {\"_id\": 1, \"n\": 5}}]", -EINVAL, "must be defined as an expression");
    CHECK_AGG_ERR("t.g", "[{\"$group\": {\"_id\": 1, \"a.b\": {\"$sum\": 1}}}]", -EINVAL, "cannot");
    CHECK_AGG_ERR("t.g", "[{\"$group\": {\"_id\": 1, \"n\": {\"$sum\": [1, 2]}}}]", -EINVAL, "unary");
    CHECK_AGG_ERR("t.g", "[{\"$group\": {\"_id\": 1, \"n\": {\"$count\": 1}}}]", -EINVAL, "$count takes no arguments");
    CHECK_AGG_ERR("t.g", "[{\"$group\": {\"_id\": {\"$foo\": 1}}}]", -EINVAL,
                  "$group: unrecognized expression operator '$foo'");
}

MP_TEST(sum_overflow_widening)
{
    load_docs("t.ov", "[{\"_id\": 1, \"v\": {\"$numberLong\": \"9223372036854775807\"}}, {\"_id\": 2, \"v\": 1}]");
    CHECK_AGG("t.ov", "[{\"$group\": {\"_id\": null, \"s\": {\"$sum\": \"$v\"}}}]",
              "[{\"_id\": null, \"s\": 9.2233720368547758e+18}]");
}

MP_TEST(sort_stage)
{
    load_docs("t.s", "[{\"_id\": 1, \"v\": \"b\"}, {\"_id\": 2, \"v\": 3}, {\"_id\": 3},"
                     " {\"_id\": 4, \"v\": null}, {\"_id\": 5, \"v\": {\"x\": 1}}, {\"_id\": 6, \"v\": 2.5},"
                     " {\"_id\": 7, \"v\": true}, {\"_id\": 8, \"v\": \"a\"}, {\"_id\": 9, \"v\": 3}]");
    /* MongoDB type order: null/missing < numbers < strings < objects < booleans. Put the
     * sort after a $project so the pipeline's own $sort runs, not the store's. */
    CHECK_AGG("t.s", "[{\"$project\": {\"v\": 1}}, {\"$sort\": {\"v\": 1, \"_id\": -1}}, {\"$project\": {\"v\": 0}}]",
              "[{\"_id\": 4}, {\"_id\": 3}, {\"_id\": 6}, {\"_id\": 9}, {\"_id\": 2}, {\"_id\": 8}, "
              "{\"_id\": 1}, {\"_id\": 5}, {\"_id\": 7}]");
    /* Equal keys keep input order (stable). */
    CHECK_AGG("t.s", "[{\"$project\": {\"v\": 1}}, {\"$sort\": {\"v\": -1}}, {\"$project\": {\"v\": 0}}]",
              "[{\"_id\": 7}, {\"_id\": 5}, {\"_id\": 1}, {\"_id\": 8}, {\"_id\": 2}, {\"_id\": 9}, "
              "{\"_id\": 6}, {\"_id\": 3}, {\"_id\": 4}]");
    /* The same order from the pushed-down sort. */
    CHECK_AGG("t.s", "[{\"$sort\": {\"v\": 1, \"_id\": -1}}, {\"$project\": {\"v\": 0}}]",
              "[{\"_id\": 4}, {\"_id\": 3}, {\"_id\": 6}, {\"_id\": 9}, {\"_id\": 2}, {\"_id\": 8}, "
              "{\"_id\": 1}, {\"_id\": 5}, {\"_id\": 7}]");
    CHECK_AGG_ERR("t.s", "[{\"$sort\": {\"v\": 2}}]", -EINVAL, "$sort");
    CHECK_AGG_ERR("t.s", "[{\"$sort\": {}}]", -EINVAL, "$sort");
}

MP_TEST(unwind_stage)
{
    load_docs("t.u", "[{\"_id\": 1, \"a\": [1, 2]}, {\"_id\": 2, \"a\": []}, {\"_id\": 3, \"a\": null},"
                     " {\"_id\": 4}, {\"_id\": 5, \"a\": \"s\"}, {\"_id\": 6, \"n\": {\"a\": [{\"x\": 1}]}}]");
    CHECK_AGG("t.u", "[{\"$unwind\": \"$a\"}]",
              "[{\"_id\": 1, \"a\": 1}, {\"_id\": 1, \"a\": 2}, {\"_id\": 5, \"a\": \"s\"}]");
    CHECK_AGG("t.u", "[{\"$unwind\": {\"path\": \"$a\", \"includeArrayIndex\": \"i\"}}]",
              "[{\"_id\": 1, \"a\": 1, \"i\": {\"$numberLong\": \"0\"}}, "
              "{\"_id\": 1, \"a\": 2, \"i\": {\"$numberLong\": \"1\"}}, {\"_id\": 5, \"a\": \"s\", \"i\": null}]");
    /* preserveNullAndEmptyArrays: an empty array drops the field, null stays null. */
    CHECK_AGG("t.u", "[{\"$unwind\": {\"path\": \"$a\", \"preserveNullAndEmptyArrays\": true, "
                     "\"includeArrayIndex\": \"i\"}}, {\"$match\": {\"_id\": {\"$lte\": 5}}}]",
              "[{\"_id\": 1, \"a\": 1, \"i\": {\"$numberLong\": \"0\"}}, "
              "{\"_id\": 1, \"a\": 2, \"i\": {\"$numberLong\": \"1\"}}, {\"_id\": 2, \"i\": null}, "
              "{\"_id\": 3, \"a\": null, \"i\": null}, {\"_id\": 4, \"i\": null}, {\"_id\": 5, \"a\": \"s\", \"i\": null}]");
    CHECK_AGG("t.u", "[{\"$unwind\": \"$n.a\"}]", "[{\"_id\": 6, \"n\": {\"a\": {\"x\": 1}}}]");
    CHECK_AGG("t.u", "[{\"$unwind\": \"$a\"}, {\"$group\": {\"_id\": null, \"s\": {\"$sum\": \"$a\"}}}]",
              "[{\"_id\": null, \"s\": 3}]");
    CHECK_AGG_ERR("t.u", "[{\"$unwind\": \"a\"}]", -EINVAL, "$unwind: path option to $unwind stage should be prefixed with a '$'");
    CHECK_AGG_ERR("t.u", "[{\"$unwind\": {\"includeArrayIndex\": \"i\"}}]", -EINVAL, "no path");
    CHECK_AGG_ERR("t.u", "[{\"$unwind\": {\"path\": \"$a\", \"preserveNullAndEmptyArrays\": 1}}]", -EINVAL,
                  "preserveNullAndEmptyArrays");
    CHECK_AGG_ERR("t.u", "[{\"$unwind\": 5}]", -EINVAL, "$unwind");
}

MP_TEST(count_skip_limit_stages)
{
    load_docs("t.c", "[{\"_id\": 1, \"a\": 1}, {\"_id\": 2, \"a\": 2}, {\"_id\": 3, \"a\": 3}]");
    CHECK_AGG("t.c", "[{\"$count\": \"n\"}]", "[{\"n\": 3}]");
    CHECK_AGG("t.c", "[{\"$match\": {\"a\": {\"$gt\": 1}}}, {\"$count\": \"n\"}]", "[{\"n\": 2}]");
    /* $count of nothing outputs nothing, as MongoDB. */
    CHECK_AGG("t.c", "[{\"$match\": {\"a\": 9}}, {\"$count\": \"n\"}]", "[]");
    CHECK_AGG("t.c", "[{\"$project\": {\"a\": 1}}, {\"$skip\": 1}, {\"$limit\": 1}]", "[{\"_id\": 2, \"a\": 2}]");
    CHECK_AGG("t.c", "[{\"$project\": {\"a\": 1}}, {\"$skip\": 5}]", "[]");
    CHECK_AGG("t.c", "[{\"$group\": {\"_id\": \"$a\"}}, {\"$sort\": {\"_id\": -1}}, {\"$limit\": 2}, {\"$count\": \"k\"}]",
              "[{\"k\": 2}]");
    CHECK_AGG_ERR("t.c", "[{\"$count\": \"\"}]", -EINVAL, "non-empty string");
    CHECK_AGG_ERR("t.c", "[{\"$count\": \"$n\"}]", -EINVAL, "$-prefixed");
    CHECK_AGG_ERR("t.c", "[{\"$count\": \"a.b\"}]", -EINVAL, "'.'");
    CHECK_AGG_ERR("t.c", "[{\"$limit\": 0}]", -EINVAL, "the limit must be a positive integer");
    CHECK_AGG_ERR("t.c", "[{\"$limit\": 1.5}]", -EINVAL, "the limit must be a positive integer");
    CHECK_AGG_ERR("t.c", "[{\"$skip\": -1}]", -EINVAL, "non-negative");
    CHECK_AGG_ERR("t.c", "[{\"$skip\": \"x\"}]", -EINVAL, "non-negative");
}

MP_TEST(bad_pipelines)
{
    CHECK_AGG_ERR("t.c", "[{\"$match\": {}, \"$limit\": 1}]", -EINVAL, "exactly one field");
    CHECK_AGG_ERR("t.c", "[{}]", -EINVAL, "exactly one field");
    CHECK_AGG_ERR("t.c", "[5]", -EINVAL, "exactly one field");
    CHECK_AGG_ERR("t.c", "[{\"$lookup\": {}}]", -EINVAL, "Unrecognized pipeline stage name: '$lookup'");
    CHECK_AGG_ERR("t.c", "[{\"$match\": {\"a\": {\"$bogus\": 1}}}]", -EINVAL, "$match");
    CHECK_AGG_ERR("t.c", "[{\"$match\": 1}]", -EINVAL, "$match");
    /* A bad stage anywhere fails before anything is read or returned. */
    bson_t out;
    ldb_find_stats st;
    MP_CHECK_EQ_INT(run_agg("t.c", "[{\"$limit\": 1}, {\"$project\": {\"v\": {\"$foo\": 1}}}]", &out, &st, 0),
                    -EINVAL);
    MP_CHECK_CONTAINS(errbuf, "$project: unrecognized expression operator '$foo'");
    MP_CHECK_EQ_INT(st.returned, 0);
    MP_CHECK_EQ_INT(st.examined, 0);
    bson_destroy(&out);
    /* An evaluation error mid-stream stops with the error. */
    CHECK_AGG_ERR("t.c", "[{\"$project\": {\"v\": {\"$divide\": [1, {\"$subtract\": [\"$a\", 2]}]}}}]", -EINVAL,
                  "$project: can't $divide by zero");
}

/* ---------------------------------------------------------------- expressions */

MP_TEST(expr_arithmetic)
{
    CHECK_EXPR("{\"a\": 1, \"b\": 2}", "{\"$add\": [\"$a\", \"$b\"]}", "3");
    CHECK_EXPR("{\"a\": 2147483647}", "{\"$add\": [\"$a\", 1]}", "{\"$numberLong\": \"2147483648\"}");
    CHECK_EXPR("{\"a\": 1}", "{\"$add\": [\"$a\", 0.5]}", "1.5");
    CHECK_EXPR("{\"a\": {\"$numberLong\": \"5\"}}", "{\"$add\": [\"$a\", 1]}", "{\"$numberLong\": \"6\"}");
    CHECK_EXPR("{\"a\": 1}", "{\"$add\": [\"$a\", null]}", "null");
    CHECK_EXPR("{\"a\": 1}", "{\"$add\": [\"$a\", \"$nosuch\"]}", "null");
    CHECK_EXPR("{\"d\": {\"$date\": {\"$numberLong\": \"1000\"}}}", "{\"$add\": [\"$d\", 500]}",
               "{\"$date\": {\"$numberLong\": \"1500\"}}");
    CHECK_EXPR_ERR("{\"a\": 1}", "{\"$add\": [\"$a\", \"x\"]}", "$add only supports numeric or date types, not string");
    CHECK_EXPR("{\"a\": 5, \"b\": 7}", "{\"$subtract\": [\"$a\", \"$b\"]}", "-2");
    CHECK_EXPR("{\"a\": {\"$date\": {\"$numberLong\": \"5000\"}}, \"b\": {\"$date\": {\"$numberLong\": \"2000\"}}}",
               "{\"$subtract\": [\"$a\", \"$b\"]}", "{\"$numberLong\": \"3000\"}");
    CHECK_EXPR_ERR("{\"a\": 1}", "{\"$subtract\": [\"$a\"]}", "takes exactly 2 arguments");
    CHECK_EXPR("{\"a\": 65536}", "{\"$multiply\": [\"$a\", \"$a\"]}", "{\"$numberLong\": \"4294967296\"}");
    CHECK_EXPR("{\"a\": 3}", "{\"$multiply\": [\"$a\", 1.5, 2]}", "9.0");
    CHECK_EXPR("{\"a\": 7}", "{\"$divide\": [\"$a\", 2]}", "3.5");
    CHECK_EXPR("{\"a\": 8}", "{\"$divide\": [\"$a\", 2]}", "4.0");
    CHECK_EXPR_ERR("{\"a\": 8}", "{\"$divide\": [\"$a\", 0]}", "can't $divide by zero");
    CHECK_EXPR("{\"a\": 7}", "{\"$mod\": [\"$a\", 3]}", "1");
    CHECK_EXPR("{\"a\": -7}", "{\"$mod\": [\"$a\", {\"$numberLong\": \"3\"}]}", "{\"$numberLong\": \"-1\"}");
    CHECK_EXPR("{\"a\": 7.5}", "{\"$mod\": [\"$a\", 2]}", "1.5");
    CHECK_EXPR_ERR("{\"a\": 7}", "{\"$mod\": [\"$a\", 0]}", "can't $mod by zero");
    CHECK_EXPR("{\"a\": 7}", "{\"$mod\": [null, 2]}", "null");
}

MP_TEST(expr_compare_logic)
{
    CHECK_EXPR("{\"a\": 1}", "{\"$eq\": [\"$a\", 1.0]}", "true");
    CHECK_EXPR("{\"a\": 1}", "{\"$ne\": [\"$a\", \"1\"]}", "true");
    /* Missing is not null in expressions; missing equals missing. */
    CHECK_EXPR("{\"a\": 1}", "{\"$eq\": [\"$nosuch\", null]}", "false");
    CHECK_EXPR("{\"a\": 1}", "{\"$lt\": [\"$nosuch\", null]}", "true");
    CHECK_EXPR("{\"a\": 1}", "{\"$eq\": [\"$nosuch\", \"$other\"]}", "true");
    /* Type order: any string is greater than any number. */
    CHECK_EXPR("{\"a\": 1}", "{\"$gt\": [\"a\", 1000]}", "true");
    CHECK_EXPR("{\"a\": 1}", "{\"$gte\": [\"$a\", 1]}", "true");
    CHECK_EXPR("{\"a\": 1}", "{\"$lte\": [\"$a\", 0]}", "false");
    CHECK_EXPR("{\"a\": 1}", "{\"$cmp\": [\"$a\", 2]}", "-1");
    CHECK_EXPR("{\"a\": 1}", "{\"$cmp\": [\"b\", \"a\"]}", "1");
    CHECK_EXPR("{\"a\": 1}", "{\"$cmp\": [[1, 2], [1, 2]]}", "0");
    CHECK_EXPR("{\"a\": 1}", "{\"$and\": [1, \"$a\", \"\", []]}", "true");
    CHECK_EXPR("{\"a\": 0}", "{\"$and\": [true, \"$a\"]}", "false");
    CHECK_EXPR("{\"a\": 0}", "{\"$and\": []}", "true");
    CHECK_EXPR("{\"a\": 0}", "{\"$or\": [null, \"$a\", \"$nosuch\"]}", "false");
    CHECK_EXPR("{\"a\": 0}", "{\"$or\": [null, {\"$eq\": [\"$a\", 0]}]}", "true");
    CHECK_EXPR("{\"a\": 0}", "{\"$not\": [\"$a\"]}", "true");
    CHECK_EXPR("{\"a\": 0}", "{\"$not\": \"$nosuch\"}", "true");
    CHECK_EXPR("{\"a\": 5}", "{\"$cond\": [{\"$gt\": [\"$a\", 3]}, \"big\", \"small\"]}", "\"big\"");
    CHECK_EXPR("{\"a\": 1}", "{\"$cond\": {\"if\": {\"$gt\": [\"$a\", 3]}, \"then\": \"big\", \"else\": \"$a\"}}", "1");
    CHECK_EXPR_ERR("{\"a\": 1}", "{\"$cond\": {\"if\": true, \"then\": 1}}", "Missing 'else' parameter to $cond");
    CHECK_EXPR_ERR("{\"a\": 1}", "{\"$cond\": [true, 1]}", "takes exactly 3 arguments");
    CHECK_EXPR("{\"a\": null}", "{\"$ifNull\": [\"$a\", \"dflt\"]}", "\"dflt\"");
    CHECK_EXPR("{\"a\": null}", "{\"$ifNull\": [\"$nosuch\", \"$a\", 3]}", "3");
    CHECK_EXPR("{\"a\": 0}", "{\"$ifNull\": [\"$a\", \"dflt\"]}", "0");
    /* Only the chosen branch is evaluated. */
    CHECK_EXPR("{\"a\": 0}", "{\"$cond\": [true, 1, {\"$divide\": [1, 0]}]}", "1");
}

MP_TEST(expr_strings_arrays_paths)
{
    CHECK_EXPR("{\"a\": \"x\", \"b\": \"y\"}", "{\"$concat\": [\"$a\", \"-\", \"$b\"]}", "\"x-y\"");
    CHECK_EXPR("{\"a\": \"x\"}", "{\"$concat\": [\"$a\", \"$nosuch\"]}", "null");
    CHECK_EXPR_ERR("{\"a\": 1}", "{\"$concat\": [\"$a\"]}", "$concat only supports strings, not int");
    CHECK_EXPR("{\"a\": \"MiXeD\"}", "{\"$toLower\": \"$a\"}", "\"mixed\"");
    CHECK_EXPR("{\"a\": \"MiXeD\"}", "{\"$toUpper\": [\"$a\"]}", "\"MIXED\"");
    CHECK_EXPR("{\"a\": 1}", "{\"$toUpper\": \"$nosuch\"}", "\"\"");
    CHECK_EXPR("{\"a\": 2.5}", "{\"$toLower\": \"$a\"}", "\"2.5\"");
    CHECK_EXPR("{\"a\": [1, 2, 3]}", "{\"$size\": \"$a\"}", "3");
    CHECK_EXPR_ERR("{\"a\": 1}", "{\"$size\": \"$nosuch\"}", "The argument to $size must be an array. Type of argument: missing");
    CHECK_EXPR("{\"a\": [1, 2, 3]}", "{\"$arrayElemAt\": [\"$a\", 0]}", "1");
    CHECK_EXPR("{\"a\": [1, 2, 3]}", "{\"$arrayElemAt\": [\"$a\", -1]}", "3");
    CHECK_EXPR_MISSING("{\"a\": [1, 2, 3]}", "{\"$arrayElemAt\": [\"$a\", 3]}");
    CHECK_EXPR("{\"a\": [1, 2, 3]}", "{\"$arrayElemAt\": [\"$nosuch\", 0]}", "null");
    CHECK_EXPR_ERR("{\"a\": \"s\"}", "{\"$arrayElemAt\": [\"$a\", 0]}", "first argument must be an array");
    CHECK_EXPR_ERR("{\"a\": [1]}", "{\"$arrayElemAt\": [\"$a\", 0.5]}", "32-bit integer");
    /* Paths through arrays of documents (nested arrays stay nested, scalars drop out). */
    CHECK_EXPR("{\"a\": [{\"b\": {\"c\": 1}}, {\"b\": {\"c\": 2}}, 5, {\"x\": 1}, [{\"b\": {\"c\": 3}}]]}",
               "\"$a.b.c\"", "[1, 2, [3]]");
    CHECK_EXPR("{\"a\": {\"b\": [1, 2]}}", "\"$a.b\"", "[1, 2]");
    CHECK_EXPR("{\"a\": {\"b\": [1, 2]}}", "{\"$size\": \"$a.b\"}", "2");
    CHECK_EXPR_MISSING("{\"a\": 5}", "\"$a.b\"");
    CHECK_EXPR("{\"_id\": 7, \"a\": 1}", "\"$$ROOT\"", "{\"_id\": 7, \"a\": 1}");
    CHECK_EXPR("{\"_id\": 7, \"a\": {\"b\": 2}}", "\"$$CURRENT.a.b\"", "2");
    CHECK_EXPR("{\"a\": 1}", "{\"$literal\": \"$a\"}", "\"$a\"");
    CHECK_EXPR("{\"a\": 1}", "[\"$a\", \"$nosuch\", {\"k\": \"$a\", \"m\": \"$nosuch\"}]", "[1, null, {\"k\": 1}]");
    CHECK_EXPR("{\"a\": 1}", "{\"$add\": [{\"$multiply\": [\"$a\", 10]}, {\"$size\": [[1, 2]]}]}", "12");
    CHECK_EXPR_ERR("{\"a\": 1}", "{\"$foo\": 1}", "unrecognized expression operator '$foo'");
    CHECK_EXPR_ERR("{\"a\": 1}", "{\"$add\": [1], \"$sub\": 2}", "exactly one field");
    CHECK_EXPR_ERR("{\"a\": 1}", "\"$$NOPE\"", "undefined variable");
    CHECK_EXPR_ERR("{\"a\": 1}", "\"$\"", "not a valid FieldPath");
}

/* ---------------------------------------------------------------- limits and scale */

/* One document whose $unwind over u yields copies that each carry a ~110 KB "pad":
 * n of them are about n * 110 KB held by a $group or $sort. */
static void load_big(const char *ns, int n)
{
    bson_t d = BSON_INITIALIZER, pad, u;
    char s[101];
    memset(s, 'p', 100);
    s[100] = '\0';
    BSON_APPEND_INT32(&d, "_id", n);
    bson_append_array_begin(&d, "pad", -1, &pad);
    for (uint32_t i = 0; i < 1000; i++) {
        char kb[16];
        const char *key;
        size_t kl = bson_uint32_to_string(i, &key, kb, sizeof kb);
        bson_append_utf8(&pad, key, (int)kl, s, 100);
    }
    bson_append_array_end(&d, &pad);
    bson_append_array_begin(&d, "u", -1, &u);
    for (uint32_t i = 0; i < (uint32_t)n; i++) {
        char kb[16];
        const char *key;
        size_t kl = bson_uint32_to_string(i, &key, kb, sizeof kb);
        bson_append_int32(&u, key, (int)kl, (int32_t)i);
    }
    bson_append_array_end(&d, &u);
    const bson_t *docs[1] = {&d};
    ldb_write_result r = {0};
    if (ldb_insert(S, ns, docs, 1, true, &r, errbuf, sizeof errbuf) != 0)
        abort();
    ldb_write_result_clear(&r);
    bson_destroy(&d);
}

MP_TEST(memory_limits)
{
    load_big("t.big1000", 1000); /* ~110 MB once unwound: over 100 MiB */
    load_big("t.big800", 800);   /* ~88 MB: under */
    CHECK_AGG_ERR("t.big1000", "[{\"$unwind\": \"$u\"}, {\"$group\": {\"_id\": null, \"all\": {\"$push\": \"$$ROOT\"}}}]",
                  -E2BIG, "$group exceeded memory limit");
    CHECK_AGG_ERR("t.big1000", "[{\"$unwind\": \"$u\"}, {\"$sort\": {\"u\": -1}}, {\"$count\": \"n\"}]",
                  -E2BIG, "$sort exceeded memory limit");
    /* $sort + $limit keeps only the top documents, so the same input fits. */
    CHECK_AGG("t.big1000", "[{\"$unwind\": \"$u\"}, {\"$sort\": {\"u\": -1}}, {\"$skip\": 1}, {\"$limit\": 2}, "
                           "{\"$project\": {\"u\": 1}}]",
              "[{\"_id\": 1000, \"u\": 998}, {\"_id\": 1000, \"u\": 997}]");
    /* Top-k keeps ties in input order. */
    CHECK_AGG("t.big1000", "[{\"$unwind\": \"$u\"}, {\"$project\": {\"u\": 1, \"m\": {\"$mod\": [\"$u\", 3]}}}, "
                           "{\"$sort\": {\"m\": 1}}, {\"$limit\": 3}, {\"$project\": {\"_id\": 0, \"u\": 1}}]",
              "[{\"u\": 0}, {\"u\": 3}, {\"u\": 6}]");
    CHECK_AGG("t.big800", "[{\"$unwind\": \"$u\"}, {\"$sort\": {\"u\": -1}}, {\"$limit\": 1}, {\"$project\": {\"u\": 1}}]",
              "[{\"_id\": 800, \"u\": 799}]");
    /* 800 groups each holding a copy of pad: ~88 MB in total, every result small. */
    CHECK_AGG("t.big800", "[{\"$unwind\": \"$u\"}, {\"$group\": {\"_id\": \"$u\", \"p\": {\"$first\": \"$pad\"}}}, "
                          "{\"$count\": \"n\"}]",
              "[{\"n\": 800}]");
}

MP_TEST(group_100k_timing)
{
    /* 100,050 documents: k = i % 100, v = i. Also more than the store's unindexed sort
     * refuses (LDB_SORT_MAX), so a leading unlimited $sort must fall back to the
     * pipeline's own sort. */
    const int N = 100050;
    bson_t **docs = calloc((size_t)N, sizeof *docs);
    for (int i = 0; i < N; i++) {
        docs[i] = bson_new();
        BSON_APPEND_INT32(docs[i], "_id", i);
        BSON_APPEND_INT32(docs[i], "k", i % 100);
        BSON_APPEND_INT32(docs[i], "v", i);
        BSON_APPEND_UTF8(docs[i], "s", i % 2 ? "odd" : "even");
    }
    ldb_write_result r = {0};
    MP_CHECK_EQ_INT(ldb_insert(S, "t.big", (const bson_t *const *)docs, (size_t)N, true, &r, errbuf,
                               sizeof errbuf), 0);
    ldb_write_result_clear(&r);
    for (int i = 0; i < N; i++)
        bson_destroy(docs[i]);
    free(docs);

    bson_t out;
    ldb_find_stats st;
    double t0 = now_s();
    int rc = run_agg("t.big", "[{\"$group\": {\"_id\": \"$k\", \"n\": {\"$sum\": 1}, \"s\": {\"$sum\": \"$v\"}, "
                              "\"avg\": {\"$avg\": \"$v\"}, \"mx\": {\"$max\": \"$v\"}}}, {\"$sort\": {\"_id\": 1}}]",
                     &out, &st, 0);
    double dt = now_s() - t0;
    MP_CHECK_EQ_INT(rc, 0);
    MP_CHECK_EQ_INT(st.examined, N);
    MP_CHECK_EQ_INT(st.returned, 100);
    printf("# $group of %d documents into 100 groups: %.1f ms\n", N, dt * 1000);
    /* Check every group against the arithmetic it must produce. */
    bson_iter_t it, arr, g;
    int groups = 0;
    if (bson_iter_init_find(&it, &out, "r") && bson_iter_recurse(&it, &arr)) {
        while (bson_iter_next(&arr)) {
            bson_iter_recurse(&arr, &g);
            int k = -1, n = 0, mx = 0;
            int64_t sum = 0;
            while (bson_iter_next(&g)) {
                const char *key = bson_iter_key(&g);
                if (!strcmp(key, "_id"))
                    k = bson_iter_int32(&g);
                else if (!strcmp(key, "n"))
                    n = bson_iter_int32(&g);
                else if (!strcmp(key, "s"))
                    sum = bson_iter_as_int64(&g);
                else if (!strcmp(key, "mx"))
                    mx = bson_iter_int32(&g);
            }
            int want_n = N / 100 + (k < N % 100);
            int64_t want_sum = (int64_t)k * want_n + (int64_t)100 * want_n * (want_n - 1) / 2;
            MP_CHECK_EQ_INT(k, groups);
            MP_CHECK_EQ_INT(n, want_n);
            MP_CHECK_EQ_INT(sum, want_sum);
            MP_CHECK_EQ_INT(mx, k + 100 * (want_n - 1));
            groups++;
        }
    }
    MP_CHECK_EQ_INT(groups, 100);
    bson_destroy(&out);
    /* Loose bound: an O(n^2) grouping would take minutes, not seconds. */
    MP_CHECK(dt < 5.0);

    /* 100k distinct groups is still linear. */
    t0 = now_s();
    rc = run_agg("t.big", "[{\"$group\": {\"_id\": \"$_id\", \"v\": {\"$first\": \"$v\"}}}, {\"$count\": \"n\"}]",
                 &out, &st, 0);
    dt = now_s() - t0;
    MP_CHECK_EQ_INT(rc, 0);
    printf("# $group of %d documents into %d groups: %.1f ms\n", N, N, dt * 1000);
    bson_destroy(&out);
    MP_CHECK(dt < 5.0);

    /* A leading unlimited $sort over more than the store sorts by itself. */
    CHECK_AGG("t.big", "[{\"$sort\": {\"v\": -1}}, {\"$skip\": 100048}, {\"$project\": {\"v\": 1}}]",
              "[{\"_id\": 1, \"v\": 1}, {\"_id\": 0, \"v\": 0}]");
    /* With a limit the store's bounded sort does it. */
    MP_CHECK_EQ_INT(run_agg("t.big", "[{\"$sort\": {\"v\": -1}}, {\"$limit\": 1}, {\"$project\": {\"v\": 1}}]",
                            &out, &st, 0), 0);
    LDB_CHECK_DOC(&out, "{\"r\": [{\"_id\": 100049, \"v\": 100049}]}");
    bson_destroy(&out);
    CHECK_AGG("t.big", "[{\"$match\": {\"k\": 7, \"s\": \"odd\"}}, {\"$count\": \"n\"}]", "[{\"n\": 1001}]");
}

static char dir[64];

static void cleanup(void)
{
    ldb_store_close(S);
    ldb_t_rmdir(dir);
}

__attribute__((constructor)) static void setup(void)
{
    ldb_t_mkdir(dir, sizeof dir, "agg");
    ldb_store_opts o = {.no_sync = true, .map_size = (size_t)2 << 30};
    if (ldb_store_open(dir, &o, &S, errbuf, sizeof errbuf) != 0) {
        fprintf(stderr, "open: %s\n", errbuf);
        abort();
    }
    atexit(cleanup);
}

MP_TEST_MAIN(MP_CASE(match_and_pushdown), MP_CASE(project_stage), MP_CASE(addfields_stage),
             MP_CASE(group_stage), MP_CASE(sum_overflow_widening), MP_CASE(sort_stage),
             MP_CASE(unwind_stage), MP_CASE(count_skip_limit_stages), MP_CASE(bad_pipelines),
             MP_CASE(expr_arithmetic), MP_CASE(expr_compare_logic),
             MP_CASE(expr_strings_arrays_paths), MP_CASE(memory_limits),
             MP_CASE(group_100k_timing))
