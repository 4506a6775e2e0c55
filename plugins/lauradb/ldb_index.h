/*
 * ldb_index.h — secondary indexes inside the storage layer (not above it): the index
 * catalog, the keys a document produces for an index, and keeping every index in step
 * with the documents inside the same LMDB transaction. The planner (ldb_plan.h) and
 * find read indexes through the same definitions.
 *
 * Layout: the "__indexes" database maps "ns NUL name" to {key, unique, multikey,
 * truncated}; each index has its own MDB_DUPSORT database "i:<ns>$<name>" whose keys
 * are index keys (ldb_key_append_index per field, concatenated) and whose values are
 * the documents' encoded _ids (ldb_key_encode), so duplicates of one key come out in
 * _id order.
 *
 * Keys longer than LDB_IKEY_PREFIX bytes are stored as their first LDB_IKEY_PREFIX
 * bytes plus an 8-byte hash of the whole key: equal keys stay equal (unique indexes
 * still work) and a scan bounded by prefixes still finds them; the planner re-checks
 * every document against the filter, and does not serve sorts from such an index.
 */
#ifndef LDB_INDEX_H
#define LDB_INDEX_H

#include "ldb_key.h"
#include "ldb_store_int.h"

#define LDB_INDEX_FIELDS_MAX 32
#define LDB_INDEX_NAME_MAX 127
#define LDB_IKEY_PREFIX 502
#define LDB_IKEY_HASHED (LDB_IKEY_PREFIX + 8)

/* One index definition as loaded from the catalog. */
struct ldb_index {
    char name[LDB_INDEX_NAME_MAX + 1];
    char dbname[256];
    bson_t *keys; /* owned key pattern */
    int nfields;
    char *paths[LDB_INDEX_FIELDS_MAX]; /* owned */
    char **parts[LDB_INDEX_FIELDS_MAX]; /* owned: each path split at its dots */
    int nparts[LDB_INDEX_FIELDS_MAX];
    int dirs[LDB_INDEX_FIELDS_MAX];    /* 1 or -1 */
    bool unique;
    bool multikey;  /* some document had an array on an indexed path */
    bool truncated; /* some key was longer than LDB_IKEY_PREFIX */
    bool have_dbi;  /* its handle was open before the transaction began */
    MDB_dbi dbi;
};

typedef struct {
    struct ldb_index *v;
    size_t n;
} ldb_ixset;

/* The indexes of ns in txn's snapshot. An index whose handle is not cached yet has
 * have_dbi false (see ldb_index_prepare). */
int ldb_ixset_load(ldb_store *s, MDB_txn *txn, const char *ns, ldb_ixset *out, char *err,
                   size_t err_len);
void ldb_ixset_free(ldb_ixset *set);

/* Opens (and caches) the handles of every index of ns. Call before beginning the
 * transaction that will use them: LMDB hides handles opened after a transaction began.
 * Cheap when the collection's cached index set is current. */
int ldb_index_prepare(ldb_store *s, const char *ns, char *err, size_t err_len);

/* An index set shared by the finds of one catalog generation: immutable once
 * published, freed when the last reference goes. */
struct ldb_ixshared {
    _Atomic unsigned refs;
    uint64_t gen;
    ldb_ixset set;
};
void ldb_ixshared_release(struct ldb_ixshared *sh); /* NULL is ignored */

/* A read snapshot of one collection: a pooled read transaction and the collection's
 * index set as that snapshot has it, every index handle open. */
typedef struct {
    MDB_txn *txn;
    struct ldb_ixshared *ix;
} ldb_snap;

int ldb_snap_begin(ldb_store *s, struct ldb_coll *c, ldb_snap *out, char *err, size_t err_len);
/* Releases the transaction and the index set; safe on a zeroed or ended snap. */
void ldb_snap_end(ldb_store *s, ldb_snap *snap);

/* The stored keys one document produces for one index: sorted, without duplicates. */
struct ldb_ixkeys {
    ldb_keylist keys;
    bool multikey, truncated;
};

/* keys[0..set->n) for doc. -EINVAL with a message for parallel arrays or too many keys
 * (nothing written either way). */
int ldb_ix_doc_keys(const ldb_ixset *set, const bson_t *doc, struct ldb_ixkeys *keys, char *err,
                    size_t err_len);
void ldb_ixkeys_free(struct ldb_ixkeys *keys, size_t n);

/* Moves every index of set from old_keys to new_keys for the document with _id key id
 * (either side may be NULL: insert, delete). Checks unique indexes before writing
 * anything: -EEXIST with an "E11000 duplicate key error" message naming the index,
 * with new_doc used to show the key. Updates the multikey/truncated flags. Other
 * failures are LMDB errors that leave txn unusable. */
int ldb_ix_apply(ldb_store *s, MDB_txn *txn, const char *ns, ldb_ixset *set, const ldb_key *id,
                 const struct ldb_ixkeys *old_keys, const struct ldb_ixkeys *new_keys,
                 const bson_t *new_doc, char *err, size_t err_len);

/* New entries of non-unique indexes that an insert operation defers: written in key
 * order by ldb_ix_flush, they descend each index along pages already at hand instead
 * of one random path per document. Zero-initialise; ldb_ixqueue_free releases. */
struct ldb_ixq_ent;
typedef struct {
    struct ldb_ixq_ent *v;
    size_t n, cap;
    ldb_kbuf bytes;
} ldb_ixqueue;

/* ldb_ix_apply for a new document (no old keys), queueing the entries of non-unique
 * indexes in q; unique indexes are checked and written at once, as they must be for
 * the next document's check. */
int ldb_ix_insert_queued(ldb_store *s, MDB_txn *txn, const char *ns, ldb_ixset *set,
                         const ldb_key *id, const struct ldb_ixkeys *new_keys,
                         const bson_t *new_doc, ldb_ixqueue *q, char *err, size_t err_len);
/* Writes and empties q, in txn, before the operation ends. LMDB errors leave txn
 * unusable, as ldb_ix_apply's do. */
int ldb_ix_flush(MDB_txn *txn, const ldb_ixset *set, ldb_ixqueue *q, char *err, size_t err_len);
void ldb_ixqueue_free(ldb_ixqueue *q);

/* Where a stored key stops being comparable with a bound: hashed keys only up to the
 * prefix. */
static inline size_t ldb_ikey_cmp_len(size_t stored_len)
{
    return stored_len > LDB_IKEY_PREFIX ? LDB_IKEY_PREFIX : stored_len;
}

#endif
