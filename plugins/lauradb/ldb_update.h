/*
 * ldb_update.h — applies MongoDB update documents to LauraDB documents: either a
 * document of update operators ($set, $inc, $push, ...) or a replacement document.
 * Pure functions over bson_t: the storage layer reads the old document, calls this,
 * and writes the result back if it changed.
 */
#ifndef LDB_UPDATE_H
#define LDB_UPDATE_H

#include <bson/bson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    /* Milliseconds since the epoch used by $currentDate; 0 means read the real clock.
     * Lets callers (and tests) make one update see one consistent time. */
    int64_t now_ms;
} ldb_update_opts;

/* Applies `update` to `doc`. On success returns 0, initialises *out with the new document
 * (caller bson_destroy()s it) and sets *changed when it differs from `doc`. On error
 * returns -EINVAL (bad update, conflicting paths, type errors, changing _id), -ERANGE
 * (integer overflow) or -ENOMEM with a message in err; *out is then not initialised.
 * opts may be NULL. */
int ldb_update_apply(const bson_t *doc, const bson_t *update, const ldb_update_opts *opts,
                     bson_t *out, bool *changed, char *err, size_t err_len);

/* Builds the document an upsert inserts when `filter` matched nothing: the filter's
 * equality fields (top level and under $and), then the update applied with
 * $setOnInsert active; or, for a replacement, the replacement plus the filter's _id.
 * _id is placed first when present; generating a missing _id is the caller's job. */
int ldb_update_apply_upsert(const bson_t *filter, const bson_t *update,
                            const ldb_update_opts *opts, bson_t *out, char *err, size_t err_len);

#endif
