/*
 * ldb_compare.c — the single definition of BSON value ordering used by LauraDB.
 * Follows MongoDB's "Comparison/Sort Order": MinKey < Null < Numbers < Symbol/String
 * < Object < Array < BinData < ObjectId < Boolean < Date < Timestamp < Regex < MaxKey.
 * Also owns dotted-path lookup for sorting and the $sort comparator.
 */
#include "ldb_compare.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int ldb_type_rank(bson_type_t t)
{
    switch (t) {
    case BSON_TYPE_MINKEY: return 1;
    /* undefined is deprecated; MongoDB treats it like null for ordering. */
    case BSON_TYPE_UNDEFINED:
    case BSON_TYPE_NULL: return 2;
    case BSON_TYPE_INT32:
    case BSON_TYPE_INT64:
    case BSON_TYPE_DOUBLE:
    case BSON_TYPE_DECIMAL128: return 3;
    case BSON_TYPE_SYMBOL:
    case BSON_TYPE_UTF8: return 4;
    case BSON_TYPE_DOCUMENT: return 5;
    case BSON_TYPE_ARRAY: return 6;
    case BSON_TYPE_BINARY: return 7;
    case BSON_TYPE_OID: return 8;
    case BSON_TYPE_BOOL: return 9;
    case BSON_TYPE_DATE_TIME: return 10;
    case BSON_TYPE_TIMESTAMP: return 11;
    case BSON_TYPE_REGEX: return 12;
    /* Not placed by the documentation; the server puts them between Regex and MaxKey. */
    case BSON_TYPE_DBPOINTER: return 13;
    case BSON_TYPE_CODE: return 14;
    case BSON_TYPE_CODEWSCOPE: return 15;
    case BSON_TYPE_MAXKEY: return 16;
    default: return 0;
    }
}

const char *ldb_type_name(bson_type_t t)
{
    switch (t) {
    case BSON_TYPE_DOUBLE: return "double";
    case BSON_TYPE_UTF8: return "string";
    case BSON_TYPE_DOCUMENT: return "object";
    case BSON_TYPE_ARRAY: return "array";
    case BSON_TYPE_BINARY: return "binData";
    case BSON_TYPE_UNDEFINED: return "undefined";
    case BSON_TYPE_OID: return "objectId";
    case BSON_TYPE_BOOL: return "bool";
    case BSON_TYPE_DATE_TIME: return "date";
    case BSON_TYPE_NULL: return "null";
    case BSON_TYPE_REGEX: return "regex";
    case BSON_TYPE_DBPOINTER: return "dbPointer";
    case BSON_TYPE_CODE: return "javascript";
    case BSON_TYPE_SYMBOL: return "symbol";
    case BSON_TYPE_CODEWSCOPE: return "javascriptWithScope";
    case BSON_TYPE_INT32: return "int";
    case BSON_TYPE_TIMESTAMP: return "timestamp";
    case BSON_TYPE_INT64: return "long";
    case BSON_TYPE_DECIMAL128: return "decimal";
    case BSON_TYPE_MINKEY: return "minKey";
    case BSON_TYPE_MAXKEY: return "maxKey";
    default: return "unknown";
    }
}

bool ldb_is_number(bson_type_t t)
{
    return t == BSON_TYPE_INT32 || t == BSON_TYPE_INT64 || t == BSON_TYPE_DOUBLE ||
           t == BSON_TYPE_DECIMAL128;
}

double ldb_number_as_double(const bson_value_t *v)
{
    switch (v->value_type) {
    case BSON_TYPE_INT32: return v->value.v_int32;
    case BSON_TYPE_INT64: return (double)v->value.v_int64;
    case BSON_TYPE_DOUBLE: return v->value.v_double;
    case BSON_TYPE_DECIMAL128: {
        /* libbson has no decimal arithmetic; going through the string keeps the value
         * exact up to double precision, which is all ordering across types needs. */
        char buf[BSON_DECIMAL128_STRING];
        bson_decimal128_to_string(&v->value.v_decimal128, buf);
        return strtod(buf, NULL);
    }
    default: return 0;
    }
}

static int cmp_i64(int64_t a, int64_t b) { return a < b ? -1 : a > b ? 1 : 0; }

/* Exact int64-vs-double comparison: converting the integer to double would round
 * values above 2^53 and make distinct numbers compare equal. */
static int cmp_i64_double(int64_t i, double d)
{
    if (isnan(d))
        return 1; /* NaN sorts below every other number */
    if (d >= 9223372036854775808.0)
        return -1;
    if (d < -9223372036854775808.0)
        return 1;
    double t = trunc(d);
    int64_t ti = (int64_t)t;
    if (i != ti)
        return cmp_i64(i, ti);
    double frac = d - t;
    return frac > 0 ? -1 : frac < 0 ? 1 : 0;
}

static int cmp_double(double a, double b)
{
    if (isnan(a) || isnan(b))
        return isnan(a) ? (isnan(b) ? 0 : -1) : 1;
    return a < b ? -1 : a > b ? 1 : 0;
}

static int cmp_numbers(const bson_value_t *a, const bson_value_t *b)
{
    bson_type_t ta = a->value_type, tb = b->value_type;
    if (ta == BSON_TYPE_DECIMAL128 || tb == BSON_TYPE_DECIMAL128)
        return cmp_double(ldb_number_as_double(a), ldb_number_as_double(b));
    bool ia = ta != BSON_TYPE_DOUBLE, ib = tb != BSON_TYPE_DOUBLE;
    int64_t ai = ta == BSON_TYPE_INT32 ? a->value.v_int32 : ta == BSON_TYPE_INT64 ? a->value.v_int64 : 0;
    int64_t bi = tb == BSON_TYPE_INT32 ? b->value.v_int32 : tb == BSON_TYPE_INT64 ? b->value.v_int64 : 0;
    if (ia && ib)
        return cmp_i64(ai, bi);
    if (ia)
        return cmp_i64_double(ai, b->value.v_double);
    if (ib)
        return -cmp_i64_double(bi, a->value.v_double);
    return cmp_double(a->value.v_double, b->value.v_double);
}

static int cmp_bytes(const void *a, size_t al, const void *b, size_t bl)
{
    size_t n = al < bl ? al : bl;
    int c = n ? memcmp(a, b, n) : 0;
    if (c)
        return c < 0 ? -1 : 1;
    return al < bl ? -1 : al > bl ? 1 : 0;
}

static int value_cmp_depth(const bson_value_t *a, const bson_value_t *b, int depth);

/* Documents and arrays: pairwise by type rank, then field name (documents only), then
 * value; a prefix sorts first. */
static int container_cmp(const uint8_t *ad, uint32_t al, const uint8_t *bd, uint32_t bl,
                         bool names, int depth)
{
    if (depth > LDB_MAX_DEPTH)
        return 0;
    bson_iter_t ia, ib;
    if (!bson_iter_init_from_data(&ia, ad, al) || !bson_iter_init_from_data(&ib, bd, bl))
        return cmp_bytes(ad, al, bd, bl);
    for (;;) {
        bool na = bson_iter_next(&ia), nb = bson_iter_next(&ib);
        if (!na || !nb)
            return na ? 1 : nb ? -1 : 0;
        int ra = ldb_type_rank(bson_iter_type(&ia)), rb = ldb_type_rank(bson_iter_type(&ib));
        if (ra != rb)
            return ra < rb ? -1 : 1;
        if (names) {
            int c = strcmp(bson_iter_key(&ia), bson_iter_key(&ib));
            if (c)
                return c < 0 ? -1 : 1;
        }
        const bson_value_t *va = bson_iter_value(&ia), *vb = bson_iter_value(&ib);
        int c = value_cmp_depth(va, vb, depth + 1);
        if (c)
            return c;
    }
}

static int value_cmp_depth(const bson_value_t *a, const bson_value_t *b, int depth)
{
    int ra = ldb_type_rank(a->value_type), rb = ldb_type_rank(b->value_type);
    if (ra != rb)
        return ra < rb ? -1 : 1;
    switch (a->value_type) {
    case BSON_TYPE_MINKEY:
    case BSON_TYPE_MAXKEY:
    case BSON_TYPE_NULL:
    case BSON_TYPE_UNDEFINED:
        return 0;
    case BSON_TYPE_INT32:
    case BSON_TYPE_INT64:
    case BSON_TYPE_DOUBLE:
    case BSON_TYPE_DECIMAL128:
        return cmp_numbers(a, b);
    case BSON_TYPE_UTF8:
    case BSON_TYPE_SYMBOL: {
        /* Symbol (deprecated) orders as a string; each side is read through its own
         * union member because the two layouts are not guaranteed to coincide. */
        const char *as = a->value_type == BSON_TYPE_UTF8 ? a->value.v_utf8.str : a->value.v_symbol.symbol;
        size_t al = a->value_type == BSON_TYPE_UTF8 ? a->value.v_utf8.len : a->value.v_symbol.len;
        const char *bs = b->value_type == BSON_TYPE_UTF8 ? b->value.v_utf8.str : b->value.v_symbol.symbol;
        size_t bl = b->value_type == BSON_TYPE_UTF8 ? b->value.v_utf8.len : b->value.v_symbol.len;
        return cmp_bytes(as, al, bs, bl);
    }
    case BSON_TYPE_DOCUMENT:
    case BSON_TYPE_ARRAY:
        return container_cmp(a->value.v_doc.data, a->value.v_doc.data_len, b->value.v_doc.data,
                             b->value.v_doc.data_len, a->value_type == BSON_TYPE_DOCUMENT, depth);
    case BSON_TYPE_BINARY: {
        /* MongoDB: length first, then subtype, then bytes. */
        if (a->value.v_binary.data_len != b->value.v_binary.data_len)
            return a->value.v_binary.data_len < b->value.v_binary.data_len ? -1 : 1;
        if (a->value.v_binary.subtype != b->value.v_binary.subtype)
            return a->value.v_binary.subtype < b->value.v_binary.subtype ? -1 : 1;
        return cmp_bytes(a->value.v_binary.data, a->value.v_binary.data_len,
                         b->value.v_binary.data, b->value.v_binary.data_len);
    }
    case BSON_TYPE_OID:
        return cmp_bytes(a->value.v_oid.bytes, 12, b->value.v_oid.bytes, 12);
    case BSON_TYPE_BOOL:
        return (int)a->value.v_bool - (int)b->value.v_bool;
    case BSON_TYPE_DATE_TIME:
        return cmp_i64(a->value.v_datetime, b->value.v_datetime);
    case BSON_TYPE_TIMESTAMP:
        if (a->value.v_timestamp.timestamp != b->value.v_timestamp.timestamp)
            return a->value.v_timestamp.timestamp < b->value.v_timestamp.timestamp ? -1 : 1;
        return a->value.v_timestamp.increment < b->value.v_timestamp.increment ? -1
               : a->value.v_timestamp.increment > b->value.v_timestamp.increment ? 1 : 0;
    case BSON_TYPE_REGEX: {
        int c = strcmp(a->value.v_regex.regex, b->value.v_regex.regex);
        if (c)
            return c < 0 ? -1 : 1;
        c = strcmp(a->value.v_regex.options ? a->value.v_regex.options : "",
                   b->value.v_regex.options ? b->value.v_regex.options : "");
        return c < 0 ? -1 : c > 0 ? 1 : 0;
    }
    case BSON_TYPE_CODE:
        return cmp_bytes(a->value.v_code.code, a->value.v_code.code_len, b->value.v_code.code,
                         b->value.v_code.code_len);
    case BSON_TYPE_CODEWSCOPE: {
        int c = cmp_bytes(a->value.v_codewscope.code, a->value.v_codewscope.code_len,
                          b->value.v_codewscope.code, b->value.v_codewscope.code_len);
        if (c)
            return c;
        return container_cmp(a->value.v_codewscope.scope_data, a->value.v_codewscope.scope_len,
                             b->value.v_codewscope.scope_data, b->value.v_codewscope.scope_len,
                             true, depth);
    }
    case BSON_TYPE_DBPOINTER: {
        int c = cmp_bytes(a->value.v_dbpointer.collection, a->value.v_dbpointer.collection_len,
                          b->value.v_dbpointer.collection, b->value.v_dbpointer.collection_len);
        return c ? c : cmp_bytes(a->value.v_dbpointer.oid.bytes, 12, b->value.v_dbpointer.oid.bytes, 12);
    }
    default:
        return 0;
    }
}

int ldb_value_cmp(const bson_value_t *a, const bson_value_t *b)
{
    return value_cmp_depth(a, b, 0);
}

bool ldb_value_eq(const bson_value_t *a, const bson_value_t *b)
{
    return value_cmp_depth(a, b, 0) == 0;
}

int ldb_iter_cmp(const bson_iter_t *a, const bson_iter_t *b)
{
    /* bson_iter_value() takes a non-const iterator, so work on copies. */
    bson_iter_t ca = *a, cb = *b;
    return value_cmp_depth(bson_iter_value(&ca), bson_iter_value(&cb), 0);
}

int ldb_doc_cmp(const bson_t *a, const bson_t *b)
{
    return container_cmp(bson_get_data(a), a->len, bson_get_data(b), b->len, true, 0);
}

/* ---- dotted paths --------------------------------------------------------------- */

bool ldb_path_index(const char *s, size_t n, uint32_t *out)
{
    if (n == 0 || n > 9)
        return false;
    uint32_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (uint32_t)(s[i] - '0');
    }
    *out = v;
    return true;
}

static size_t path_walk(const bson_value_t *v, const char *rest, ldb_path_visit_fn fn, void *ctx,
                        int depth)
{
    if (depth > LDB_MAX_DEPTH)
        return 0;
    if (!*rest) {
        fn(v, ctx);
        return 1;
    }
    const char *dot = strchr(rest, '.');
    size_t n = dot ? (size_t)(dot - rest) : strlen(rest);
    const char *next = dot ? dot + 1 : rest + n;
    bson_iter_t it;
    size_t found = 0;
    if (v->value_type == BSON_TYPE_DOCUMENT) {
        if (!bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len))
            return 0;
        while (bson_iter_next(&it)) {
            if (strlen(bson_iter_key(&it)) == n && memcmp(bson_iter_key(&it), rest, n) == 0)
                return path_walk(bson_iter_value(&it), next, fn, ctx, depth + 1);
        }
        return 0;
    }
    if (v->value_type == BSON_TYPE_ARRAY) {
        uint32_t idx = 0;
        bool numeric = ldb_path_index(rest, n, &idx);
        if (!bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len))
            return 0;
        for (uint32_t i = 0; bson_iter_next(&it); i++) {
            const bson_value_t *e = bson_iter_value(&it);
            if (numeric && i == idx)
                found += path_walk(e, next, fn, ctx, depth + 1);
            else if (e->value_type == BSON_TYPE_DOCUMENT)
                found += path_walk(e, rest, fn, ctx, depth + 1);
        }
    }
    return found;
}

size_t ldb_path_values(const bson_t *doc, const char *path, ldb_path_visit_fn fn, void *ctx)
{
    bson_value_t root;
    root.value_type = BSON_TYPE_DOCUMENT;
    root.value.v_doc.data = (uint8_t *)bson_get_data(doc);
    root.value.v_doc.data_len = doc->len;
    return path_walk(&root, path, fn, ctx, 0);
}

/* ---- $sort ---------------------------------------------------------------------- */

struct ldb_sort_key {
    char *path;
    int dir; /* 1 or -1 */
};

struct ldb_sort {
    struct ldb_sort_key *keys;
    size_t n;
};

int ldb_sort_compile(const bson_t *spec, ldb_sort **out, char *err, size_t err_len)
{
    bson_iter_t it;
    *out = NULL;
    if (!bson_iter_init(&it, spec)) {
        snprintf(err, err_len, "$sort specification is not valid BSON");
        return -EINVAL;
    }
    ldb_sort *s = calloc(1, sizeof(*s));
    uint32_t count = bson_count_keys(spec);
    if (!s || !(s->keys = calloc(count ? count : 1, sizeof(*s->keys)))) {
        free(s);
        snprintf(err, err_len, "out of memory");
        return -ENOMEM;
    }
    while (bson_iter_next(&it)) {
        const bson_value_t *v = bson_iter_value(&it);
        double d = ldb_is_number(v->value_type) ? ldb_number_as_double(v) : 0;
        if (d != 1 && d != -1) {
            snprintf(err, err_len, "$sort key ordering for '%s' must be 1 or -1", bson_iter_key(&it));
            ldb_sort_free(s);
            return -EINVAL;
        }
        s->keys[s->n].path = strdup(bson_iter_key(&it));
        if (!s->keys[s->n].path) {
            ldb_sort_free(s);
            snprintf(err, err_len, "out of memory");
            return -ENOMEM;
        }
        s->keys[s->n++].dir = d > 0 ? 1 : -1;
    }
    if (s->n == 0) {
        snprintf(err, err_len, "$sort specification must not be empty");
        ldb_sort_free(s);
        return -EINVAL;
    }
    *out = s;
    return 0;
}

void ldb_sort_free(ldb_sort *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++)
        free(s->keys[i].path);
    free(s->keys);
    free(s);
}

/* Picks the sort key for one document: the min (asc) or max (desc) over every value at
 * the path, with array values contributing their elements. */
struct pick {
    int dir;
    bool have;
    bson_value_t best; /* points into the document being sorted */
};

static void pick_one(struct pick *p, const bson_value_t *v)
{
    if (!p->have || ldb_value_cmp(v, &p->best) * p->dir < 0) {
        p->best = *v;
        p->have = true;
    }
}

static void pick_visit(const bson_value_t *v, void *ctx)
{
    struct pick *p = ctx;
    if (v->value_type != BSON_TYPE_ARRAY) {
        pick_one(p, v);
        return;
    }
    bson_iter_t it;
    bool any = false;
    if (bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len)) {
        while (bson_iter_next(&it)) {
            pick_one(p, bson_iter_value(&it));
            any = true;
        }
    }
    if (!any) {
        /* An empty array sorts as missing/null (decision; MongoDB puts [] just below null). */
        bson_value_t nul = {.value_type = BSON_TYPE_NULL};
        pick_one(p, &nul);
    }
}

int ldb_sort_cmp(const ldb_sort *s, const bson_t *a, const bson_t *b)
{
    for (size_t i = 0; i < s->n; i++) {
        struct pick pa = {.dir = s->keys[i].dir}, pb = {.dir = s->keys[i].dir};
        ldb_path_values(a, s->keys[i].path, pick_visit, &pa);
        ldb_path_values(b, s->keys[i].path, pick_visit, &pb);
        if (!pa.have)
            pa.best.value_type = BSON_TYPE_NULL;
        if (!pb.have)
            pb.best.value_type = BSON_TYPE_NULL;
        int c = ldb_value_cmp(&pa.best, &pb.best) * s->keys[i].dir;
        if (c)
            return c;
    }
    return 0;
}
