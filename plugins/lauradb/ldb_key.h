/*
 * ldb_key.h — the byte encoding of a document's _id used as its LMDB key. LMDB orders
 * keys with memcmp (shorter first on a common prefix), so the encoding is chosen to make
 * that order agree with ldb_compare's for the usual _id types, and to make values that
 * ldb_compare calls equal (1, 1.0, NumberLong(1)) encode identically, so that they
 * collide as duplicate keys exactly as they do in MongoDB.
 */
#ifndef LDB_KEY_H
#define LDB_KEY_H

#include <bson/bson.h>
#include <stddef.h>
#include <stdint.h>

/* LMDB's default maximum key size (mdb_env_get_maxkeysize); longer _ids are refused. */
#define LDB_KEY_MAX 511

typedef struct {
    uint8_t bytes[LDB_KEY_MAX];
    size_t len;
} ldb_key;

/* Encodes v into *k. Returns 0, or -EINVAL with a message for values that cannot be an
 * _id (arrays, undefined, regular expressions) or whose encoding exceeds LDB_KEY_MAX.
 *
 * Layout: one byte of ldb_type_rank, then
 *   numbers:   order-preserving big-endian double, then for int64 values a double
 *              cannot hold exactly an 8-byte signed remainder (so 2^53+1 stays
 *              distinct from 2^53 and still sorts after it); NaN sorts first;
 *   strings:   the raw UTF-8 bytes (byte-wise order, as ldb_compare);
 *   ObjectId:  the 12 bytes;  bool: one byte;  date: order-preserving int64;
 *   anything else: the BSON type byte and the value's BSON bytes — unique, and grouped
 *              by type in the right place, but not value-ordered within the type. */
int ldb_key_encode(const bson_value_t *v, ldb_key *k, char *err, size_t err_len);

#endif
