/*
 * ldb_store.h — LauraDB's storage layer on LMDB: one environment per data directory, a
 * catalog of namespaces ("db.collection"), one LMDB database per collection keyed by
 * the encoded _id (ldb_key.h) with BSON documents as values, and an oplog written in
 * the same transaction as every change it records.
 *
 * Writes are synchronous for the caller but group-committed: concurrent writers queue
 * their operations and one of them commits the whole queue in one LMDB transaction (one
 * fsync), each operation inside its own nested transaction so that a failure undoes
 * only that operation. A write that returned has been committed to disk.
 * Reads run in LMDB read transactions and never block or wait for writers.
 */
#ifndef LDB_STORE_H
#define LDB_STORE_H

#include <bson/bson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LDB_NS_MAX 120                      /* bytes in "db.collection" */
#define LDB_DOC_MAX (16 * 1024 * 1024)      /* bytes in one document, as MongoDB */
#define LDB_SORT_MAX 100000                 /* documents an unlimited sort may hold */

/* MongoDB's error codes, reported per document in write results. */
#define LDB_E_DUPLICATE_KEY 11000
#define LDB_E_TOO_LARGE 10334
#define LDB_E_BAD_VALUE 2
#define LDB_E_INTERNAL 1

typedef struct {
    size_t map_size;        /* LMDB map size in bytes; 0 means 1 GiB */
    unsigned max_dbs;       /* LMDB named databases; 0 means 4096 */
    bool no_group_commit;   /* commit every write in its own transaction (benchmarks) */
    unsigned max_batch;     /* operations per group commit; 0 means 1024 */
    bool no_sync;           /* MDB_NOSYNC: lose durability for speed; tests only */
} ldb_store_opts;

typedef struct ldb_store ldb_store;

/* Opens (creating when needed) the store in directory dir, which must exist. opts may
 * be NULL for the defaults. Returns 0 or a negative errno with a message in err. */
int ldb_store_open(const char *dir, const ldb_store_opts *opts, ldb_store **out, char *err,
                   size_t err_len);
/* Every write must have returned and no find may be running. NULL is ignored. */
void ldb_store_close(ldb_store *s);

/* One failed document (insert) or operation (update upsert). */
typedef struct {
    size_t index; /* position in the caller's docs[] */
    int code;     /* LDB_E_* */
    char msg[256]; /* truncated if longer */
} ldb_write_error;

/* What a write did. Zero-initialise before the call; ldb_write_result_clear() releases
 * what the call allocated (errors, upserted_id) whatever the return code. */
typedef struct {
    size_t inserted;
    size_t matched;
    size_t modified;
    size_t deleted;
    bool upserted;
    bson_value_t upserted_id; /* valid when upserted; owned by the result */
    ldb_write_error *errors;  /* per-document insert errors, in docs[] order */
    size_t n_errors;
    int64_t last_op_id;       /* op_id of the last oplog entry written, 0 if none */
} ldb_write_result;

void ldb_write_result_clear(ldb_write_result *r);

/* Inserts docs[0..n). A document without _id gets a fresh ObjectId placed first (the
 * stored document, not the caller's). Documents that fail (duplicate _id: "E11000
 * duplicate key", too large, bad _id) are listed in r->errors; ordered stops at the
 * first failure, unordered carries on. The documents inserted stay inserted either way.
 * Returns 0 when all were inserted; otherwise the first failure's negative errno
 * (-EEXIST, -EFBIG, -EINVAL) with its message in err, or an operation-level error
 * (bad namespace, I/O, map full) in which case nothing was inserted. */
int ldb_insert(ldb_store *s, const char *ns, const bson_t *const *docs, size_t n, bool ordered,
               ldb_write_result *r, char *err, size_t err_len);

/* Applies update (operators or a replacement) to the first document matching filter in
 * _id order, or to all of them with multi. With upsert and no match, inserts the
 * document ldb_update_apply_upsert builds, with a generated ObjectId _id if it has none,
 * and reports it in r->upserted_id. Any error (bad update, a result over 16 MiB, a
 * duplicate upserted _id) undoes the whole operation. */
int ldb_update(ldb_store *s, const char *ns, const bson_t *filter, const bson_t *update,
               bool multi, bool upsert, ldb_write_result *r, char *err, size_t err_len);

/* Deletes the first matching document in _id order, or all of them with multi. */
int ldb_delete(ldb_store *s, const char *ns, const bson_t *filter, bool multi,
               ldb_write_result *r, char *err, size_t err_len);

/* ---- reads */

typedef struct {
    uint64_t examined; /* documents read from the collection */
    uint64_t returned; /* documents passed to the callback */
    uint64_t keys_examined; /* index entries read (0 for a collection scan) */
    char index[128];        /* name of the index used; "" for a collection scan */
} ldb_find_stats;

/* Called once per result; doc is valid only during the call. Non-zero stops the scan
 * (ldb_find then returns 0). */
typedef int (*ldb_doc_fn)(const bson_t *doc, void *ctx);

/* Documents matching filter (NULL = all), ordered by sort (NULL = _id order), skipping
 * skip, at most limit (0 = no limit), shaped by projection (NULL = whole). The planner
 * (ldb_plan.c) reads candidates through _id or a secondary index when the filter or the
 * sort allows, else scans the collection; results are the same either way. A sort not
 * served by an index refuses more than LDB_SORT_MAX matches without a limit (-E2BIG);
 * with a limit it keeps only skip+limit documents in memory. A missing collection is
 * empty. stats may be NULL. */
int ldb_find(ldb_store *s, const char *ns, const bson_t *filter, const bson_t *projection,
             const bson_t *sort, int64_t skip, int64_t limit, ldb_doc_fn fn, void *ctx,
             ldb_find_stats *stats, char *err, size_t err_len);

/* Lists the namespaces in the catalog, in byte order. */
typedef int (*ldb_ns_fn)(const char *ns, void *ctx);
int ldb_list_namespaces(ldb_store *s, ldb_ns_fn fn, void *ctx, char *err, size_t err_len);

/* ---- secondary indexes (ldb_index.c)
 *
 * Indexes follow MongoDB: keys is a pattern such as {a: 1, "b.c": -1} (up to 32
 * fields, 1 or -1), name NULL gives the default "a_1_b.c_-1". Array values index one
 * entry per element (multikey); a missing field indexes as null; a document with
 * arrays under two different indexed paths is refused ("cannot index parallel
 * arrays"). Every write maintains every index in the same transaction, and a unique
 * index refuses duplicates as LDB_E_DUPLICATE_KEY ("E11000 ... index: <name> ...").
 * find() uses an index when the filter or the sort allows (see ldb_find_stats). */

/* Builds the index over the existing documents (creating the collection if needed).
 * An identical existing index makes this a no-op; the same name with other keys or
 * options, or the same keys under another name, is -EEXIST. A unique build that meets
 * a duplicate fails with -EEXIST and leaves no index. {_id: 1} "_id_" always exists. */
int ldb_create_index(ldb_store *s, const char *ns, const bson_t *keys, const char *name,
                     bool unique, char *err, size_t err_len);
/* -ENOENT when ns or the index does not exist; the _id_ index cannot be dropped. */
int ldb_drop_index(ldb_store *s, const char *ns, const char *name, char *err, size_t err_len);

/* Called for "_id_" first, then each index in name order; non-zero stops. */
typedef int (*ldb_index_fn)(const char *name, const bson_t *keys, bool unique, void *ctx);
/* -ENOENT when the collection does not exist. */
int ldb_list_indexes(ldb_store *s, const char *ns, ldb_index_fn fn, void *ctx, char *err,
                     size_t err_len);

/* Walks the collection and each of its indexes both ways (every document's keys are in
 * the index; every index entry belongs to a document producing that key; the counts
 * agree; multikey flags are set). 0 when consistent, -EUCLEAN with the first
 * disagreement in err, or another negative errno. A missing collection is consistent. */
int ldb_index_check(ldb_store *s, const char *ns, char *err, size_t err_len);

/* ---- oplog (ldb_oplog.c) */

typedef enum { LDB_OP_INSERT = 1, LDB_OP_UPDATE = 2, LDB_OP_DELETE = 3 } ldb_op_type;

/* One entry as the wire OplogEntry has it. Byte fields are BSON documents (NULL/0 when
 * absent) pointing into LMDB's map: valid only during the callback. */
typedef struct {
    int64_t op_id;
    int64_t timestamp_ms;
    const char *ns;
    ldb_op_type op_type;
    const uint8_t *document;
    size_t document_len;
    const uint8_t *query;
    size_t query_len;
    const uint8_t *update;
    size_t update_len;
    int64_t txn_id;
} ldb_oplog_entry;

typedef int (*ldb_oplog_fn)(const ldb_oplog_entry *e, void *ctx);

/* Calls fn for entries with op_id >= from_op_id in order, at most max of them (0 = all);
 * non-zero from fn stops early. Returns 0 or a negative errno. */
int ldb_oplog_read(ldb_store *s, int64_t from_op_id, size_t max, ldb_oplog_fn fn, void *ctx,
                   char *err, size_t err_len);
/* The highest op_id committed so far (0 for an empty oplog), through *out. */
int ldb_oplog_last_id(ldb_store *s, int64_t *out, char *err, size_t err_len);

/* ---- usage (ldb_store_stats.c): documents and bytes (LMDB pages) per collection through
 * fn (may be NULL; non-zero stops) and in total; any out pointer may be NULL. */
int ldb_store_usage(ldb_store *s,
                    int (*fn)(const char *ns, uint64_t docs, uint64_t bytes, void *ctx),
                    void *ctx, uint64_t *docs, uint64_t *bytes, uint64_t *collections,
                    char *err, size_t err_len);

#endif
