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
#include <stdbool.h>
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

/* ---- secondary index keys (ldb_index.c)
 *
 * A second, prefix-free encoding that orders every BSON type exactly as ldb_value_cmp
 * does, so that an index key can concatenate several fields and still compare field by
 * field with memcmp. Layout: one byte of ldb_type_rank, then
 *   numbers:   order-preserving double (8 bytes) and a 2-byte signed remainder that is
 *              non-zero only for int64 values a double cannot hold (|rem| <= 1024);
 *              decimal128 goes through its double. All numbers therefore take 11 bytes
 *              and values ldb_compare calls equal encode identically, except an int64
 *              beyond 2^53 against a decimal128 (compared through doubles) — see
 *              ldb_key_index_exact;
 *   strings/symbols/code: bytes with 0x00 escaped as 00 FF, terminated by 00 00;
 *   documents/arrays: per element its rank, (documents) its name and a NUL, its body;
 *              then a 00 end marker — the order of ldb_compare's container walk;
 *   binary: 4-byte length, subtype, bytes; timestamps: seconds then increment;
 *   ObjectId, bool, date as in ldb_key_encode; null/undefined/min/max: rank only.
 * A descending field has all of its bytes inverted, which reverses its order and keeps
 * it prefix-free. */
typedef struct {
    uint8_t *data;
    size_t len, cap;
} ldb_kbuf;

/* Bytes of a number's encoding that identify its double: rank + 8. */
#define LDB_KEY_NUM_PREFIX 9

/* Appends v's index encoding to b. Returns 0 or -ENOMEM. */
int ldb_key_append_index(ldb_kbuf *b, const bson_value_t *v, bool descending);
int ldb_kbuf_append(ldb_kbuf *b, const void *p, size_t n);
void ldb_kbuf_free(ldb_kbuf *b);

/* A list of byte strings (index keys, encoded _ids) in one buffer. */
typedef struct {
    ldb_kbuf bytes;
    struct {
        size_t off, len;
    } *v;
    size_t n, cap;
} ldb_keylist;

int ldb_keylist_add(ldb_keylist *l, const void *p, size_t len);
/* Sorts by bytes, shorter first on a common prefix (LMDB's key order), and drops
 * repeats. Returns 0 or -ENOMEM. */
int ldb_keylist_sort(ldb_keylist *l);
static inline const uint8_t *ldb_keylist_at(const ldb_keylist *l, size_t i)
{
    return l->bytes.data + l->v[i].off;
}
/* memcmp order of two byte strings, a proper prefix first. */
int ldb_bytes_cmp(const void *a, size_t al, const void *b, size_t bl);
void ldb_keylist_free(ldb_keylist *l);

/* True when every value ldb_compare calls equal to v has exactly v's index encoding.
 * False for numbers of magnitude >= 2^53 (an int64 remainder may differ) and for
 * documents/arrays holding such numbers. */
bool ldb_key_index_exact(const bson_value_t *v);

#endif
