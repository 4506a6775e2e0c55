/*
 * ldb_test_util.h — shared helpers for the LauraDB unit tests: build documents from
 * (extended) JSON and compare result documents byte-for-byte against expected JSON, so
 * checks are type-exact (int32 vs int64 vs double) and print both sides on failure;
 * make and remove the scratch directory a test store lives in.
 */
#ifndef LDB_TEST_UTIL_H
#define LDB_TEST_UTIL_H

#include <bson/bson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A new empty directory /tmp/ldb_<tag>_test.XXXXXX in dir, or the test binary aborts. */
static inline void ldb_t_mkdir(char *dir, size_t len, const char *tag)
{
    snprintf(dir, len, "/tmp/ldb_%s_test.XXXXXX", tag);
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        abort();
    }
}

/* Removes a closed store's files (LMDB's data.mdb and lock.mdb) and its directory. */
static inline void ldb_t_rmdir(const char *dir)
{
    static const char *const files[] = {"data.mdb", "lock.mdb"};
    char p[512];
    for (size_t i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
}

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
