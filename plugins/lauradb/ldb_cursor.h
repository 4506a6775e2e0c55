/*
 * ldb_cursor.h — server-side query cursors for RouterService/Query paging.
 *
 * A cursor remembers a query (namespace, filter, projection, sort, skip, limit) and how
 * far its results have been delivered. Results are read ahead from ldb_find into a
 * buffer of concatenated BSON documents, so a follow-up batch usually costs no scan.
 * Between calls a cursor keeps its read-ahead only while the table's memory budget
 * allows; otherwise it drops it and the next batch re-runs the query from the
 * delivered position (skip). Either way a cursor does not pin an LMDB snapshot: a
 * batch fetched after concurrent writes reflects them.
 *
 * Table operations are thread-safe; a checked-out cursor belongs to one thread.
 */
#ifndef LDB_CURSOR_H
#define LDB_CURSOR_H

#include <bson/bson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ldb_store.h"

#define LDB_CURSOR_ID_LEN 24 /* "c" + 16 hex digits, NUL included */

typedef struct ldb_cursor ldb_cursor;
typedef struct ldb_cursor_table ldb_cursor_table;

/* A growing buffer of concatenated BSON documents (a batch being built). */
typedef struct ldb_docbuf {
    uint8_t *data;
    size_t len, cap;
    size_t n; /* documents */
} ldb_docbuf;
void ldb_docbuf_free(ldb_docbuf *b);
int ldb_docbuf_append(ldb_docbuf *b, const uint8_t *doc, size_t len);
/* A BSON document's total length, from its little-endian header. */
size_t ldb_doc_len(const uint8_t *doc);

/* A cursor for one query, not yet in any table. filter/projection/sort may be NULL and
 * are copied. skip/limit >= 0 (limit 0 = all). fill_bytes bounds one read-ahead. */
int ldb_cursor_new(const char *ns, const bson_t *filter, const bson_t *projection,
                   const bson_t *sort, int64_t skip, int64_t limit, size_t fill_bytes,
                   ldb_cursor **out);
void ldb_cursor_free(ldb_cursor *c);

/* Appends the next documents to out: at most max_docs (0 = no count bound) and, past
 * the first, no more than max_bytes in total. *more says whether results remain. The
 * documents read from the collection go to *examined (added). */
int ldb_cursor_next_batch(ldb_cursor *c, ldb_store *s, size_t max_docs, size_t max_bytes,
                          ldb_docbuf *out, bool *more, uint64_t *examined, char *err,
                          size_t err_len);

const char *ldb_cursor_id(const ldb_cursor *c);

/* max: open cursors; timeout_ms: idle time before expiry; budget: read-ahead bytes all
 * idle cursors may keep. */
ldb_cursor_table *ldb_cursor_table_new(unsigned max, uint64_t timeout_ms, size_t budget);
/* Frees every cursor; none may be checked out. NULL is ignored. */
void ldb_cursor_table_free(ldb_cursor_table *t);

/* Gives c an id and files it (the table owns it afterwards, checked in). -ENOSPC when
 * max cursors are open (c is still the caller's then). */
int ldb_cursor_register(ldb_cursor_table *t, ldb_cursor *c);
/* Takes the cursor out for one batch: -ENOENT unknown or expired, -EBUSY another call is
 * using it, -EXDEV it belongs to another namespace. */
int ldb_cursor_checkout(ldb_cursor_table *t, const char *id, const char *ns, ldb_cursor **out);
/* Returns a checked-out cursor; with done it is closed and freed. */
void ldb_cursor_checkin(ldb_cursor_table *t, ldb_cursor *c, bool done);
/* Closes cursors idle longer than the timeout; returns how many. */
unsigned ldb_cursor_reap(ldb_cursor_table *t);

typedef struct ldb_cursor_counts {
    uint64_t open, opened_total, expired_total, buffered_bytes;
} ldb_cursor_counts;
void ldb_cursor_table_counts(ldb_cursor_table *t, ldb_cursor_counts *out);

#endif
