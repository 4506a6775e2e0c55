/*
 * ldb_state.h — a small durable key-value store on top of a LauraDB store, which the
 * plugin offers the host as its state store (marchproxy/plugin.h mp_state_store_ops).
 */
#ifndef LDB_STATE_H
#define LDB_STATE_H

#include "ldb_store.h"

#define LDB_STATE_KEY_MAX 256
#define LDB_STATE_VALUE_MAX (16 * 1024 * 1024 - 4096) /* a document's limit, less framing */

/* Durable when it returns. 0 or a negative errno with the reason in err. */
int ldb_state_put(ldb_store *s, const char *key, const void *value, size_t len, char *err,
                  size_t err_len);
/* 0, -ENOENT when the key is absent, or another negative errno. */
int ldb_state_remove(ldb_store *s, const char *key, char *err, size_t err_len);

/* fn for every key starting with prefix, in key (byte) order; the pointers are valid
 * during the call only. A non-zero return from fn stops the scan and is returned. */
typedef int (*ldb_state_scan_fn)(void *ctx, const char *key, const void *value, size_t len);
int ldb_state_scan(ldb_store *s, const char *prefix, ldb_state_scan_fn fn, void *ctx,
                   char *err, size_t err_len);

#endif
