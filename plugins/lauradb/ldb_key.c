/*
 * ldb_key.c — encodes _id values as order-preserving LMDB keys (see ldb_key.h for the
 * layout and for which types sort exactly).
 */
#include "ldb_key.h"
#include "ldb_compare.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static int put(ldb_key *k, const void *p, size_t n, char *err, size_t err_len)
{
    if (k->len + n > LDB_KEY_MAX) {
        snprintf(err, err_len, "_id is too large to index (key would exceed %d bytes)", LDB_KEY_MAX);
        return -EINVAL;
    }
    memcpy(k->bytes + k->len, p, n);
    k->len += n;
    return 0;
}

static void be64(uint8_t out[8], uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        out[i] = (uint8_t)v;
        v >>= 8;
    }
}

/* Flipping the sign bit makes two's complement integers compare as unsigned bytes. */
static void sortable_i64(uint8_t out[8], int64_t v)
{
    be64(out, (uint64_t)v ^ (UINT64_C(1) << 63));
}

/* IEEE doubles: positives get the sign bit set, negatives are inverted entirely, so
 * larger values give larger unsigned bit patterns. NaN takes all-zero, below -inf
 * (whose pattern is 0x000FFF...), matching MongoDB's "NaN is the smallest number". */
static void sortable_double(uint8_t out[8], double d)
{
    uint64_t bits;
    if (isnan(d)) {
        memset(out, 0, 8);
        return;
    }
    if (d == 0)
        d = 0; /* -0.0 equals 0.0, so they must share a key */
    memcpy(&bits, &d, sizeof bits);
    bits = (bits & (UINT64_C(1) << 63)) ? ~bits : bits | (UINT64_C(1) << 63);
    be64(out, bits);
}

static int encode_number(const bson_value_t *v, ldb_key *k, char *err, size_t err_len)
{
    uint8_t b[8];
    double d;
    __int128 rem = 0;

    switch (v->value_type) {
    case BSON_TYPE_INT32: d = v->value.v_int32; break;
    case BSON_TYPE_DOUBLE: d = v->value.v_double; break;
    case BSON_TYPE_INT64:
        d = (double)v->value.v_int64;
        /* 128-bit arithmetic: (double)INT64_MAX rounds to 2^63, which int64 can't hold. */
        rem = (__int128)v->value.v_int64 - (__int128)d;
        break;
    default: return -EINVAL;
    }
    sortable_double(b, d);
    int rc = put(k, b, 8, err, err_len);
    /* Only int64s that a double cannot represent get the remainder, so every value equal
     * to some double keeps exactly that double's key. The remainder is tiny (< 2^11). */
    if (rc == 0 && rem != 0) {
        sortable_i64(b, (int64_t)rem);
        rc = put(k, b, 8, err, err_len);
    }
    return rc;
}

/* Writes the value's BSON encoding (without element name) after its type byte, by
 * appending it to a scratch document under an empty key and slicing it out. */
static int encode_fallback(const bson_value_t *v, ldb_key *k, char *err, size_t err_len)
{
    bson_t tmp = BSON_INITIALIZER;
    uint8_t t = (uint8_t)v->value_type;
    int rc;
    if (!bson_append_value(&tmp, "", 0, v)) {
        bson_destroy(&tmp);
        snprintf(err, err_len, "_id is too large to index");
        return -EINVAL;
    }
    /* document: int32 length, then type byte, "" NUL, value bytes..., trailing NUL */
    const uint8_t *data = bson_get_data(&tmp);
    size_t vlen = tmp.len - 4 - 1 - 1 - 1;
    rc = put(k, &t, 1, err, err_len);
    if (rc == 0)
        rc = put(k, data + 6, vlen, err, err_len);
    bson_destroy(&tmp);
    return rc;
}

int ldb_key_encode(const bson_value_t *v, ldb_key *k, char *err, size_t err_len)
{
    uint8_t rank = (uint8_t)ldb_type_rank(v->value_type);
    uint8_t b[8];
    k->len = 0;

    switch (v->value_type) {
    case BSON_TYPE_ARRAY:
        snprintf(err, err_len, "The '_id' value cannot be of type array");
        return -EINVAL;
    case BSON_TYPE_UNDEFINED:
        snprintf(err, err_len, "can't use a undefined for _id");
        return -EINVAL;
    case BSON_TYPE_REGEX:
        snprintf(err, err_len, "can't use a regex for _id");
        return -EINVAL;
    default: break;
    }
    if (rank == 0) {
        snprintf(err, err_len, "unsupported _id type %d", (int)v->value_type);
        return -EINVAL;
    }
    put(k, &rank, 1, err, err_len);

    switch (v->value_type) {
    case BSON_TYPE_INT32:
    case BSON_TYPE_INT64:
    case BSON_TYPE_DOUBLE: return encode_number(v, k, err, err_len);
    case BSON_TYPE_UTF8: return put(k, v->value.v_utf8.str, v->value.v_utf8.len, err, err_len);
    case BSON_TYPE_SYMBOL:
        return put(k, v->value.v_symbol.symbol, v->value.v_symbol.len, err, err_len);
    case BSON_TYPE_OID: return put(k, v->value.v_oid.bytes, 12, err, err_len);
    case BSON_TYPE_BOOL:
        b[0] = v->value.v_bool ? 1 : 0;
        return put(k, b, 1, err, err_len);
    case BSON_TYPE_DATE_TIME:
        sortable_i64(b, v->value.v_datetime);
        return put(k, b, 8, err, err_len);
    case BSON_TYPE_NULL:
    case BSON_TYPE_MINKEY:
    case BSON_TYPE_MAXKEY: return 0; /* single-valued types: the rank says it all */
    default: return encode_fallback(v, k, err, err_len);
    }
}
