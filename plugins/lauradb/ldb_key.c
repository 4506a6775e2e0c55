/*
 * ldb_key.c — encodes _id values as order-preserving LMDB keys (see ldb_key.h for the
 * layout and for which types sort exactly).
 */
#include "ldb_key.h"
#include "ldb_compare.h"

#include <errno.h>
#include <stdlib.h>
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

/* ---------------------------------------------------------------- index keys */

int ldb_kbuf_append(ldb_kbuf *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *d = realloc(b->data, cap);
        if (!d)
            return -ENOMEM;
        b->data = d;
        b->cap = cap;
    }
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void ldb_kbuf_free(ldb_kbuf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

static int kb_byte(ldb_kbuf *b, uint8_t c)
{
    return ldb_kbuf_append(b, &c, 1);
}

/* Escaped bytes: 00 -> 00 FF, then 00 00, so a string never prefixes another's code. */
static int kb_escaped(ldb_kbuf *b, const char *s, size_t n)
{
    static const uint8_t esc[2] = {0x00, 0xFF}, end[2] = {0x00, 0x00};
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\0')
            continue;
        if (ldb_kbuf_append(b, s + run, i - run) != 0 || ldb_kbuf_append(b, esc, 2) != 0)
            return -ENOMEM;
        run = i + 1;
    }
    if (ldb_kbuf_append(b, s + run, n - run) != 0)
        return -ENOMEM;
    return ldb_kbuf_append(b, end, 2);
}

static int kb_be32(ldb_kbuf *b, uint32_t v)
{
    uint8_t o[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    return ldb_kbuf_append(b, o, 4);
}

static int kb_value(ldb_kbuf *b, const bson_value_t *v, int depth);
static int kb_body(ldb_kbuf *b, const bson_value_t *v, int depth);

/* Elements of a document or array (names only for documents), then the 00 end marker.
 * Past LDB_MAX_DEPTH ldb_compare stops comparing, so the encoding stops too. */
static int kb_container(ldb_kbuf *b, const uint8_t *data, uint32_t len, bool names, int depth)
{
    bson_iter_t it;
    if (depth <= LDB_MAX_DEPTH && bson_iter_init_from_data(&it, data, len)) {
        while (bson_iter_next(&it)) {
            if (names) {
                const char *key = bson_iter_key(&it);
                uint8_t r = (uint8_t)ldb_type_rank(bson_iter_type(&it));
                /* ldb_compare's order for elements: rank, then name, then value. */
                if (kb_byte(b, r) != 0 || ldb_kbuf_append(b, key, strlen(key) + 1) != 0 ||
                    kb_body(b, bson_iter_value(&it), depth + 1) != 0)
                    return -ENOMEM;
            } else if (kb_value(b, bson_iter_value(&it), depth + 1) != 0) {
                return -ENOMEM;
            }
        }
    }
    return kb_byte(b, 0);
}

static int kb_value(ldb_kbuf *b, const bson_value_t *v, int depth)
{
    if (kb_byte(b, (uint8_t)ldb_type_rank(v->value_type)) != 0)
        return -ENOMEM;
    return kb_body(b, v, depth);
}

static int kb_body(ldb_kbuf *b, const bson_value_t *v, int depth)
{
    uint8_t o[8];
    switch (v->value_type) {
    case BSON_TYPE_INT32:
    case BSON_TYPE_INT64:
    case BSON_TYPE_DOUBLE:
    case BSON_TYPE_DECIMAL128: {
        double d = ldb_number_as_double(v);
        int64_t rem = 0;
        if (v->value_type == BSON_TYPE_INT64)
            rem = (int64_t)((__int128)v->value.v_int64 - (__int128)d);
        sortable_double(o, d);
        uint16_t r = (uint16_t)((uint16_t)(int16_t)rem ^ 0x8000u);
        uint8_t rb[2] = {(uint8_t)(r >> 8), (uint8_t)r};
        if (ldb_kbuf_append(b, o, 8) != 0)
            return -ENOMEM;
        return ldb_kbuf_append(b, rb, 2);
    }
    case BSON_TYPE_UTF8: return kb_escaped(b, v->value.v_utf8.str, v->value.v_utf8.len);
    case BSON_TYPE_SYMBOL: return kb_escaped(b, v->value.v_symbol.symbol, v->value.v_symbol.len);
    case BSON_TYPE_CODE: return kb_escaped(b, v->value.v_code.code, v->value.v_code.code_len);
    case BSON_TYPE_DOCUMENT:
    case BSON_TYPE_ARRAY:
        return kb_container(b, v->value.v_doc.data, v->value.v_doc.data_len,
                            v->value_type == BSON_TYPE_DOCUMENT, depth);
    case BSON_TYPE_BINARY:
        if (kb_be32(b, v->value.v_binary.data_len) != 0 ||
            kb_byte(b, (uint8_t)v->value.v_binary.subtype) != 0)
            return -ENOMEM;
        return ldb_kbuf_append(b, v->value.v_binary.data, v->value.v_binary.data_len);
    case BSON_TYPE_OID: return ldb_kbuf_append(b, v->value.v_oid.bytes, 12);
    case BSON_TYPE_BOOL: return kb_byte(b, v->value.v_bool ? 1 : 0);
    case BSON_TYPE_DATE_TIME:
        sortable_i64(o, v->value.v_datetime);
        return ldb_kbuf_append(b, o, 8);
    case BSON_TYPE_TIMESTAMP:
        if (kb_be32(b, v->value.v_timestamp.timestamp) != 0)
            return -ENOMEM;
        return kb_be32(b, v->value.v_timestamp.increment);
    case BSON_TYPE_REGEX: {
        const char *opt = v->value.v_regex.options ? v->value.v_regex.options : "";
        if (ldb_kbuf_append(b, v->value.v_regex.regex, strlen(v->value.v_regex.regex) + 1) != 0)
            return -ENOMEM;
        return ldb_kbuf_append(b, opt, strlen(opt) + 1);
    }
    case BSON_TYPE_DBPOINTER:
        if (kb_escaped(b, v->value.v_dbpointer.collection, v->value.v_dbpointer.collection_len) != 0)
            return -ENOMEM;
        return ldb_kbuf_append(b, v->value.v_dbpointer.oid.bytes, 12);
    case BSON_TYPE_CODEWSCOPE:
        if (kb_escaped(b, v->value.v_codewscope.code, v->value.v_codewscope.code_len) != 0)
            return -ENOMEM;
        return kb_container(b, v->value.v_codewscope.scope_data, v->value.v_codewscope.scope_len,
                            true, depth);
    default: return 0; /* null, undefined, minKey, maxKey: the rank is the value */
    }
}

int ldb_key_append_index(ldb_kbuf *b, const bson_value_t *v, bool descending)
{
    size_t start = b->len;
    if (kb_value(b, v, 0) != 0)
        return -ENOMEM;
    if (descending)
        for (size_t i = start; i < b->len; i++)
            b->data[i] = (uint8_t)~b->data[i];
    return 0;
}

static bool exact_depth(const bson_value_t *v, int depth)
{
    if (ldb_is_number(v->value_type)) {
        double d = ldb_number_as_double(v);
        return !isfinite(d) || fabs(d) < 9007199254740992.0; /* 2^53 */
    }
    if ((v->value_type != BSON_TYPE_DOCUMENT && v->value_type != BSON_TYPE_ARRAY) ||
        depth > LDB_MAX_DEPTH)
        return true;
    bson_iter_t it;
    if (!bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len))
        return false;
    while (bson_iter_next(&it))
        if (!exact_depth(bson_iter_value(&it), depth + 1))
            return false;
    return true;
}

bool ldb_key_index_exact(const bson_value_t *v)
{
    return exact_depth(v, 0);
}

/* ---------------------------------------------------------------- key lists */

int ldb_bytes_cmp(const void *a, size_t al, const void *b, size_t bl)
{
    int c = memcmp(a, b, al < bl ? al : bl);
    return c ? c : al < bl ? -1 : al > bl;
}

int ldb_keylist_add(ldb_keylist *l, const void *p, size_t len)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        void *nv = realloc(l->v, cap * sizeof *l->v);
        if (!nv)
            return -ENOMEM;
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n].off = l->bytes.len;
    l->v[l->n].len = len;
    if (ldb_kbuf_append(&l->bytes, p, len) != 0)
        return -ENOMEM;
    l->n++;
    return 0;
}

static int entry_cmp(const void *a, const void *b, void *arg)
{
    const ldb_keylist *l = arg;
    const size_t *x = a, *y = b;
    return ldb_bytes_cmp(ldb_keylist_at(l, *x), l->v[*x].len, ldb_keylist_at(l, *y),
                         l->v[*y].len);
}

int ldb_keylist_sort(ldb_keylist *l)
{
    if (l->n < 2)
        return 0;
    size_t *ord = malloc(l->n * sizeof *ord);
    void *nv = malloc(l->n * sizeof *l->v);
    if (!ord || !nv) {
        free(ord);
        free(nv);
        return -ENOMEM;
    }
    for (size_t i = 0; i < l->n; i++)
        ord[i] = i;
    qsort_r(ord, l->n, sizeof *ord, entry_cmp, l);
    size_t m = 0;
    for (size_t i = 0; i < l->n; i++)
        if (m == 0 || entry_cmp(&ord[i], &ord[i - 1], l) != 0)
            memcpy((char *)nv + m++ * sizeof *l->v, &l->v[ord[i]], sizeof *l->v);
    free(ord);
    free(l->v);
    l->v = nv;
    l->n = l->cap = m;
    return 0;
}

void ldb_keylist_free(ldb_keylist *l)
{
    ldb_kbuf_free(&l->bytes);
    free(l->v);
    memset(l, 0, sizeof *l);
}
