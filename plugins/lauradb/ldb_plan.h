/*
 * ldb_plan.h — the query planner: given a filter's guaranteed constraints
 * (ldb_match_constraints), an optional sort and the collection's indexes, picks an
 * index and the byte ranges of it to scan, or a collection scan. A plan only narrows
 * the candidates: find re-checks every fetched document against the whole filter, so
 * ranges may be wider than the filter but never narrower.
 */
#ifndef LDB_PLAN_H
#define LDB_PLAN_H

#include "ldb_index.h"
#include "ldb_match.h"

/* Index keys k with lo <= k (bytes; empty lo: from the first key) and, when has_hi,
 * k[0..m) <= hi[0..m) for m = min(comparable length of k, hi_len): every key that
 * starts with hi is inside, as is every key below it. Both bounds are at most
 * LDB_IKEY_PREFIX bytes. */
struct ldb_range {
    uint8_t *lo, *hi;
    size_t lo_len, hi_len;
    bool has_hi;
};

#define LDB_PLAN_ID (-2) /* point lookups on the primary key: ids holds the keys */

typedef struct {
    int index;                  /* into the ixset; -1 for a collection scan, LDB_PLAN_ID */
    ldb_keylist ids;             /* LDB_PLAN_ID: the _id keys to look up, sorted */
    struct ldb_range *ranges;   /* ascending, disjoint when serves_sort */
    size_t n;
    bool serves_sort;           /* index order is the sort's order: no sort needed */
    bool backward;              /* ... read from the last key to the first */
} ldb_plan;

/* sort may be NULL; txn and coll are the collection the plan is for (the primary key
 * is looked at to decide whether numeric _id lookups are exact). Returns 0 or <0. */
int ldb_plan_choose(MDB_txn *txn, MDB_dbi coll, const ldb_ixset *set, const ldb_matcher *m,
                    const bson_t *sort, ldb_plan *out, char *err, size_t err_len);

/* The candidate _ids of an index (or _id) plan, sorted and unique, counting index
 * entries read in *keys_examined. Returns 1 when there are more than a collection scan
 * is worth (then ids is empty and the caller scans), 0, or <0. */
int ldb_plan_collect(MDB_txn *txn, const ldb_ixset *set, const ldb_plan *plan, ldb_keylist *ids,
                     uint64_t *keys_examined, char *err, size_t err_len);
void ldb_plan_free(ldb_plan *p);

/* Whether a stored key is inside r (both bounds, whatever the scan direction). */
bool ldb_range_has(const struct ldb_range *r, const uint8_t *key, size_t len);
bool ldb_range_below_hi(const struct ldb_range *r, const uint8_t *key, size_t len);
bool ldb_range_above_lo(const struct ldb_range *r, const uint8_t *key, size_t len);

#endif
