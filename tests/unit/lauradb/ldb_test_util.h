/*
 * ldb_test_util.h — shared helpers for the LauraDB unit tests: build documents from
 * (extended) JSON and compare result documents byte-for-byte against expected JSON, so
 * checks are type-exact (int32 vs int64 vs double) and print both sides on failure.
 */
#ifndef LDB_TEST_UTIL_H
#define LDB_TEST_UTIL_H

#include <bson/bson.h>
#include <stdio.h>
#include <stdlib.h>

/* Parses JSON or aborts the test binary: a typo in a fixture is a test bug. */
static inline bson_t *ldb_t_json(const char *json)
{
    bson_error_t e;
    bson_t *b = bson_new_from_json((const uint8_t *)json, -1, &e);
    if (!b) {
        fprintf(stderr, "bad test JSON %s: %s\n", json, e.message);
        abort();
    }
    return b;
}

/* True when got is byte-identical to the document expected_json describes. */
static inline bool ldb_t_doc_is(const bson_t *got, const char *expected_json, const char *file, int line)
{
    bson_t *want = ldb_t_json(expected_json);
    bool ok = got->len == want->len && memcmp(bson_get_data(got), bson_get_data(want), got->len) == 0;
    if (!ok) {
        char *g = bson_as_canonical_extended_json(got, NULL);
        char *w = bson_as_canonical_extended_json(want, NULL);
        fprintf(stderr, "%s:%d: document mismatch\n  got:  %s\n  want: %s\n", file, line, g, w);
        bson_free(g);
        bson_free(w);
    }
    bson_destroy(want);
    return ok;
}

#define LDB_CHECK_DOC(got, json) MP_CHECK(ldb_t_doc_is((got), (json), __FILE__, __LINE__))

#endif
