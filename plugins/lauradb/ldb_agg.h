/*
 * ldb_agg.h — LauraDB's aggregation pipeline: $match $project $addFields $group $sort
 * $skip $limit $unwind $count over one collection, with a leading $match/$sort (and the
 * $skip/$limit right after them) handed to ldb_find so that indexes serve them.
 */
#ifndef LDB_AGG_H
#define LDB_AGG_H

#include "ldb_store.h"

/* Bytes a blocking stage ($group, $sort) may hold, as MongoDB without allowDiskUse. */
#define LDB_AGG_MEM_MAX ((size_t)100 * 1024 * 1024)

/* Runs stages[0..n) (each a one-key document such as {"$match": {...}}) over ns and
 * calls fn once per output document (valid only during the call; non-zero stops).
 * stats (may be NULL) counts documents read from the collection and returned.
 * Returns 0, or a negative errno with a message in err: -EINVAL for a malformed
 * pipeline (unknown stage or operator, wrong argument type), -E2BIG when a blocking
 * stage ($group, $sort) would hold more than its memory limit. */
int ldb_aggregate(ldb_store *s, const char *ns, const bson_t *const *stages, size_t n,
                  ldb_doc_fn fn, void *ctx, ldb_find_stats *stats, char *err, size_t err_len);

#endif
