/*
 * ldb_agg.c — the aggregation pipeline. Stages are compiled up front (so a malformed
 * pipeline fails before any reading), the leading $match/$sort/$skip/$limit are turned
 * into one ldb_find call (so the planner and its indexes serve them), and the rest run
 * as a push chain: each stage hands documents to the next, blocking stages ($group,
 * $sort, $count) hold theirs until the input ends and then flush downstream; a $sort
 * followed by $limit keeps only the top documents. $group and $sort refuse to hold more
 * than LDB_AGG_MEM_MAX bytes.
 * $group keys live in an open-addressing hash table keyed by a hash that agrees with
 * ldb_value_cmp equality (1, 1.0 and NumberLong(1) are one group, as in MongoDB).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* qsort_r, strndup */
#endif
#include "ldb_agg.h"
#include "ldb_compare.h"
#include "ldb_expr.h"
#include "ldb_match.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#define AGG_STOP 1 /* a stage needs no more input */

/* An empty BSON document, for building computed-only sub-documents. */
static const uint8_t empty_doc[5] = {5, 0, 0, 0, 0};

static int agg_oom(char *err, size_t err_len)
{
    snprintf(err, err_len, "out of memory");
    return -ENOMEM;
}

/* Splits "a.b.c" into owned components; empty components are an error. */
static int split_dotted(const char *what, const char *path, char ***parts_out, size_t *n_out,
                        char *err, size_t err_len)
{
    size_t n = 1;
    for (const char *c = path; *c; c++)
        n += *c == '.';
    char **parts = calloc(n, sizeof *parts);
    if (!parts)
        return agg_oom(err, err_len);
    const char *s = path;
    for (size_t i = 0; i < n; i++) {
        const char *dot = strchr(s, '.');
        size_t len = dot ? (size_t)(dot - s) : strlen(s);
        if (len == 0 || s[0] == '$') {
            snprintf(err, err_len, "%s: invalid field path '%s'", what, path);
            for (size_t j = 0; j < i; j++)
                free(parts[j]);
            free(parts);
            return -EINVAL;
        }
        parts[i] = strndup(s, len);
        if (!parts[i]) {
            for (size_t j = 0; j < i; j++)
                free(parts[j]);
            free(parts);
            return agg_oom(err, err_len);
        }
        s = dot ? dot + 1 : s + len;
    }
    *parts_out = parts;
    *n_out = n;
    return 0;
}

static void free_parts(char **parts, size_t n)
{
    for (size_t i = 0; i < n && parts; i++)
        free(parts[i]);
    free(parts);
}

static const char *key_for(uint32_t idx, char *buf, size_t len, int *kl)
{
    const char *key;
    *kl = (int)bson_uint32_to_string(idx, &key, buf, len);
    return key;
}

/* A name-to-kind table entry: stage names, accumulator names. */
struct named {
    const char *name;
    int kind;
};

static const struct named *find_named(const struct named *t, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(t[i].name, name) == 0)
            return &t[i];
    return NULL;
}

/* The only field of a one-field document (iterator values borrowed from data). */
static bool one_field(const uint8_t *data, uint32_t len, const char **key,
                      const bson_value_t **val)
{
    bson_iter_t it, probe;
    if (!bson_iter_init_from_data(&it, data, len) || !bson_iter_next(&it))
        return false;
    probe = it;
    if (bson_iter_next(&probe))
        return false;
    *key = bson_iter_key(&it);
    *val = bson_iter_value(&it);
    return true;
}

/* Approximate bytes a value holds, for the memory limits. */
static size_t value_bytes(const bson_value_t *v)
{
    switch (v->value_type) {
    case BSON_TYPE_DOCUMENT:
    case BSON_TYPE_ARRAY:
        return 16 + v->value.v_doc.data_len;
    case BSON_TYPE_UTF8:
        return 16 + v->value.v_utf8.len;
    case BSON_TYPE_BINARY:
        return 16 + v->value.v_binary.data_len;
    default:
        return 16;
    }
}

/* ================================================================ value hash set */

/* Values in insertion order plus an open-addressing index over them (slot = idx + 1,
 * 0 = empty, at most half full). Serves $group keys and $addToSet. */
struct vset {
    bson_value_t *vals;
    uint64_t *hashes;
    size_t n, cap;
    uint32_t *slots;
    size_t nslots; /* a power of two */
};

static uint64_t mix(uint64_t h, uint64_t x)
{
    x *= 0x9E3779B97F4A7C15ULL;
    x ^= x >> 29;
    return (h ^ x) * 0x100000001B3ULL + 0x7F4A7C15ULL;
}

static uint64_t hash_bytes(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t f = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++)
        f = (f ^ b[i]) * 0x100000001B3ULL;
    return mix(h, f);
}

/* Equal under ldb_value_cmp implies equal hashes: numbers hash by value whatever their
 * type, strings and symbols alike, null and undefined alike. */
static uint64_t hash_value(const bson_value_t *v, int depth)
{
    uint64_t h = (uint64_t)ldb_type_rank(v->value_type);
    switch (v->value_type) {
    case BSON_TYPE_INT32:
        return mix(h, (uint64_t)(int64_t)v->value.v_int32);
    case BSON_TYPE_INT64:
        return mix(h, (uint64_t)v->value.v_int64);
    case BSON_TYPE_DOUBLE:
    case BSON_TYPE_DECIMAL128: {
        double d = ldb_number_as_double(v);
        if (isnan(d))
            return mix(h, 0x7ff8000000000000ULL);
        if (d == trunc(d) && d >= -9223372036854775808.0 && d < 9223372036854775808.0)
            return mix(h, (uint64_t)(int64_t)d);
        uint64_t bits;
        memcpy(&bits, &d, sizeof bits);
        return mix(h, bits);
    }
    case BSON_TYPE_UTF8:
        return hash_bytes(h, v->value.v_utf8.str, v->value.v_utf8.len);
    case BSON_TYPE_SYMBOL:
        return hash_bytes(h, v->value.v_symbol.symbol, v->value.v_symbol.len);
    case BSON_TYPE_DOCUMENT:
    case BSON_TYPE_ARRAY: {
        bson_iter_t it;
        if (depth > LDB_MAX_DEPTH ||
            !bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len))
            return h;
        while (bson_iter_next(&it)) {
            if (v->value_type == BSON_TYPE_DOCUMENT)
                h = hash_bytes(h, bson_iter_key(&it), strlen(bson_iter_key(&it)));
            h = mix(h, hash_value(bson_iter_value(&it), depth + 1));
        }
        return h;
    }
    case BSON_TYPE_OID:
        return hash_bytes(h, v->value.v_oid.bytes, 12);
    case BSON_TYPE_BOOL:
        return mix(h, v->value.v_bool);
    case BSON_TYPE_DATE_TIME:
        return mix(h, (uint64_t)v->value.v_datetime);
    case BSON_TYPE_TIMESTAMP:
        return mix(mix(h, v->value.v_timestamp.timestamp), v->value.v_timestamp.increment);
    case BSON_TYPE_BINARY:
        return hash_bytes(h, v->value.v_binary.data, v->value.v_binary.data_len);
    default:
        return h; /* rare types: equality decides */
    }
}

static void vset_free(struct vset *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++)
        bson_value_destroy(&s->vals[i]);
    free(s->vals);
    free(s->hashes);
    free(s->slots);
    memset(s, 0, sizeof *s);
}

static void vset_place(struct vset *s, size_t idx)
{
    size_t mask = s->nslots - 1;
    for (size_t j = s->hashes[idx] & mask;; j = (j + 1) & mask) {
        if (!s->slots[j]) {
            s->slots[j] = (uint32_t)idx + 1;
            return;
        }
    }
}

/* Finds v, or appends a copy of it. *idx is its position; *added says which. */
static int vset_insert(struct vset *s, const bson_value_t *v, size_t *idx, bool *added)
{
    uint64_t h = hash_value(v, 0);
    *added = false;
    if (s->nslots) {
        size_t mask = s->nslots - 1;
        for (size_t j = h & mask; s->slots[j]; j = (j + 1) & mask) {
            size_t i = s->slots[j] - 1;
            if (s->hashes[i] == h && ldb_value_cmp(&s->vals[i], v) == 0) {
                *idx = i;
                return 0;
            }
        }
    }
    if (s->n >= UINT32_MAX - 1)
        return -E2BIG;
    if (s->n == s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 16;
        bson_value_t *nv = realloc(s->vals, ncap * sizeof *nv);
        if (!nv)
            return -ENOMEM;
        s->vals = nv;
        uint64_t *nh = realloc(s->hashes, ncap * sizeof *nh);
        if (!nh)
            return -ENOMEM;
        s->hashes = nh;
        s->cap = ncap;
    }
    if ((s->n + 1) * 2 > s->nslots) {
        size_t nn = s->nslots ? s->nslots * 2 : 32;
        uint32_t *ns = calloc(nn, sizeof *ns);
        if (!ns)
            return -ENOMEM;
        free(s->slots);
        s->slots = ns;
        s->nslots = nn;
        for (size_t i = 0; i < s->n; i++)
            vset_place(s, i);
    }
    bson_value_copy(v, &s->vals[s->n]);
    s->hashes[s->n] = h;
    vset_place(s, s->n);
    *idx = s->n++;
    *added = true;
    return 0;
}

/* Appends the set's values as an array field. */
static void vset_append_array(const struct vset *s, bson_t *out, const char *name)
{
    bson_t arr;
    char kb[16];
    int kl;
    bson_append_array_begin(out, name, -1, &arr);
    for (size_t i = 0; s && i < s->n; i++) {
        const char *key = key_for((uint32_t)i, kb, sizeof kb, &kl);
        bson_append_value(&arr, key, kl, &s->vals[i]);
    }
    bson_append_array_end(out, &arr);
}

/* ================================================================ $project / $addFields */

enum sn_kind { SN_SUB, SN_INCLUDE, SN_EXCLUDE, SN_EXPR };
enum sh_mode { SH_INCLUSION, SH_EXCLUSION, SH_ADD };

struct snode {
    char *name;
    enum sn_kind kind;
    ldb_expr *expr;
    struct snode **kids;
    size_t nkids;
    bool has_expr; /* this subtree computes something */
};

struct shape {
    struct snode root;
    enum sh_mode mode;
    const char *stage; /* "$project" or "$addFields", for messages */
    bool saw_include, saw_exclude;
    char first_exclude[128];
};

static void snode_clear(struct snode *n)
{
    for (size_t i = 0; i < n->nkids; i++) {
        snode_clear(n->kids[i]);
        free(n->kids[i]);
    }
    free(n->kids);
    free(n->name);
    ldb_expr_free(n->expr);
}

static void shape_free(struct shape *sh)
{
    if (!sh)
        return;
    snode_clear(&sh->root);
    free(sh);
}

static struct snode *snode_kid(const struct snode *n, const char *name)
{
    for (size_t i = 0; i < n->nkids; i++)
        if (strcmp(n->kids[i]->name, name) == 0)
            return n->kids[i];
    return NULL;
}

static struct snode *snode_add(struct snode *n, const char *name)
{
    struct snode **nk = realloc(n->kids, (n->nkids + 1) * sizeof *nk);
    if (!nk)
        return NULL;
    n->kids = nk;
    struct snode *k = calloc(1, sizeof *k);
    if (!k || !(k->name = strdup(name))) {
        free(k);
        return NULL;
    }
    n->kids[n->nkids++] = k;
    return k;
}

static int shape_parse_doc(struct shape *sh, struct snode *parent, const bson_value_t *spec,
                           bool top, int depth, char *err, size_t err_len);

/* One "key: value" of the spec, key possibly dotted. */
static int shape_parse_field(struct shape *sh, struct snode *parent, const char *key,
                             const bson_value_t *v, bool top, int depth, char *err,
                             size_t err_len)
{
    char **parts;
    size_t np;
    int rc = split_dotted(sh->stage, key, &parts, &np, err, err_len);
    if (rc < 0)
        return rc;
    struct snode *cur = parent;
    for (size_t i = 0; i + 1 < np && rc == 0; i++) {
        struct snode *k = snode_kid(cur, parts[i]);
        if (k && k->kind != SN_SUB) {
            snprintf(err, err_len, "Invalid %s :: caused by :: Path collision at %s", sh->stage, key);
            rc = -EINVAL;
        } else if (!k && !(k = snode_add(cur, parts[i]))) {
            rc = agg_oom(err, err_len);
        }
        cur = k;
    }
    const char *last = parts[np - 1];
    bool nested = v->value_type == BSON_TYPE_DOCUMENT && !ldb_expr_is_operator(v) &&
                  !(sh->mode == SH_ADD && v->value.v_doc.data_len <= 5);
    struct snode *k = rc == 0 ? snode_kid(cur, last) : NULL;
    if (rc == 0 && k && !(nested && k->kind == SN_SUB)) {
        snprintf(err, err_len, "Invalid %s :: caused by :: Path collision at %s", sh->stage, key);
        rc = -EINVAL;
    }
    if (rc == 0 && !k && !(k = snode_add(cur, last)))
        rc = agg_oom(err, err_len);
    if (rc == 0 && nested) {
        if (v->value.v_doc.data_len <= 5) {
            snprintf(err, err_len, "Invalid %s :: caused by :: an empty object is not a valid "
                     "value. Found empty object at path %s", sh->stage, key);
            rc = -EINVAL;
        } else {
            k->kind = SN_SUB;
            rc = shape_parse_doc(sh, k, v, false, depth + 1, err, err_len);
        }
    } else if (rc == 0 && sh->mode != SH_ADD &&
               (v->value_type == BSON_TYPE_BOOL || ldb_is_number(v->value_type))) {
        bool incl = ldb_value_truthy(v);
        k->kind = incl ? SN_INCLUDE : SN_EXCLUDE;
        if (!(top && np == 1 && strcmp(last, "_id") == 0)) {
            if (incl) {
                sh->saw_include = true;
            } else if (!sh->saw_exclude) {
                sh->saw_exclude = true;
                snprintf(sh->first_exclude, sizeof sh->first_exclude, "%s", key);
            }
        }
    } else if (rc == 0) {
        k->kind = SN_EXPR;
        sh->saw_include = true;
        rc = ldb_expr_compile(v, &k->expr, err, err_len);
    }
    free_parts(parts, np);
    return rc;
}

static int shape_parse_doc(struct shape *sh, struct snode *parent, const bson_value_t *spec,
                           bool top, int depth, char *err, size_t err_len)
{
    bson_iter_t it;
    if (depth > LDB_MAX_DEPTH) {
        snprintf(err, err_len, "%s specification nests too deeply", sh->stage);
        return -EINVAL;
    }
    if (!bson_iter_init_from_data(&it, spec->value.v_doc.data, spec->value.v_doc.data_len))
        return -EINVAL;
    while (bson_iter_next(&it)) {
        const char *key = bson_iter_key(&it);
        if (key[0] == '$') {
            snprintf(err, err_len, "Invalid %s :: caused by :: FieldPath field names may not "
                     "start with '$': '%s'", sh->stage, key);
            return -EINVAL;
        }
        int rc = shape_parse_field(sh, parent, key, bson_iter_value(&it), top, depth, err, err_len);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static bool snode_mark(struct snode *n)
{
    bool any = n->kind == SN_EXPR;
    for (size_t i = 0; i < n->nkids; i++)
        any |= snode_mark(n->kids[i]);
    n->has_expr = any;
    return any;
}

static int shape_compile(const bson_value_t *spec, enum sh_mode mode, struct shape **out,
                         char *err, size_t err_len)
{
    struct shape *sh = calloc(1, sizeof *sh);
    if (!sh)
        return agg_oom(err, err_len);
    sh->mode = mode;
    sh->stage = mode == SH_ADD ? "$addFields" : "$project";
    int rc = shape_parse_doc(sh, &sh->root, spec, true, 0, err, err_len);
    if (rc == 0 && mode != SH_ADD) {
        struct snode *id = snode_kid(&sh->root, "_id");
        if (sh->saw_include && sh->saw_exclude) {
            snprintf(err, err_len, "Invalid $project :: caused by :: Cannot do exclusion on field "
                     "%s in inclusion projection", sh->first_exclude);
            rc = -EINVAL;
        } else if (sh->saw_include) {
            sh->mode = SH_INCLUSION;
            if (!id && !snode_add(&sh->root, "_id"))
                rc = agg_oom(err, err_len);
            else if (!id)
                sh->root.kids[sh->root.nkids - 1]->kind = SN_INCLUDE;
        } else if (sh->saw_exclude) {
            sh->mode = SH_EXCLUSION;
        } else if (id) {
            sh->mode = id->kind == SN_EXCLUDE ? SH_EXCLUSION : SH_INCLUSION;
        } else {
            snprintf(err, err_len, "Invalid $project :: caused by :: projection specification "
                     "must have at least one field");
            rc = -EINVAL;
        }
    } else if (rc == 0 && sh->root.nkids == 0) {
        snprintf(err, err_len, "Invalid $addFields :: caused by :: specification must have at "
                 "least one field");
        rc = -EINVAL;
    }
    snode_mark(&sh->root);
    if (rc < 0) {
        shape_free(sh);
        return rc;
    }
    *out = sh;
    return 0;
}

struct shape_ctx {
    const struct shape *sh;
    const bson_t *root;
    char *err;
    size_t err_len;
};

static int shape_doc(const struct shape_ctx *c, const struct snode *n, const uint8_t *data,
                     uint32_t len, bson_t *out, int depth);

/* Evaluates a computed field and appends it unless it is missing. */
static int shape_eval(const struct shape_ctx *c, const struct snode *k, bson_t *out,
                      const char *key, int kl)
{
    bson_value_t v;
    int rc = ldb_expr_eval(k->expr, c->root, &v, c->err, c->err_len);
    if (rc < 0)
        return rc;
    if (v.value_type != BSON_TYPE_EOD)
        bson_append_value(out, key, kl, &v);
    bson_value_destroy(&v);
    return 0;
}

static int shape_array(const struct shape_ctx *c, const struct snode *k, const bson_value_t *v,
                       bson_t *out, int depth);

/* Applies sub-tree k to value v found under key; *appended says whether it produced
 * anything (inclusion drops scalars the sub-tree cannot reach into). */
static int shape_value(const struct shape_ctx *c, const struct snode *k, const bson_value_t *v,
                       bson_t *out, const char *key, int kl, bool *appended, int depth)
{
    bson_t sub;
    int rc = 0;
    *appended = true;
    if (depth > LDB_MAX_DEPTH) {
        snprintf(c->err, c->err_len, "document nesting exceeds %d levels", LDB_MAX_DEPTH);
        return -EINVAL;
    }
    if (v->value_type == BSON_TYPE_DOCUMENT) {
        bson_append_document_begin(out, key, kl, &sub);
        rc = shape_doc(c, k, v->value.v_doc.data, v->value.v_doc.data_len, &sub, depth + 1);
        bson_append_document_end(out, &sub);
    } else if (v->value_type == BSON_TYPE_ARRAY) {
        bson_append_array_begin(out, key, kl, &sub);
        rc = shape_array(c, k, v, &sub, depth + 1);
        bson_append_array_end(out, &sub);
    } else if (c->sh->mode == SH_EXCLUSION) {
        bson_append_value(out, key, kl, v);
    } else if (k->has_expr) {
        /* A scalar where computed sub-fields go is replaced by a document of them. */
        bson_append_document_begin(out, key, kl, &sub);
        rc = shape_doc(c, k, empty_doc, sizeof empty_doc, &sub, depth + 1);
        bson_append_document_end(out, &sub);
    } else {
        *appended = false;
    }
    return rc;
}

static int shape_array(const struct shape_ctx *c, const struct snode *k, const bson_value_t *v,
                       bson_t *out, int depth)
{
    bson_iter_t it;
    uint32_t idx = 0;
    if (!bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len))
        return 0;
    while (bson_iter_next(&it)) {
        char kb[16];
        int kl;
        const char *key = key_for(idx, kb, sizeof kb, &kl);
        bool appended;
        int rc = shape_value(c, k, bson_iter_value(&it), out, key, kl, &appended, depth);
        if (rc < 0)
            return rc;
        idx += appended;
    }
    return 0;
}

static bool doc_has(const uint8_t *data, uint32_t len, const char *name)
{
    bson_iter_t it;
    return bson_iter_init_from_data(&it, data, len) &&
           bson_iter_find_w_len(&it, name, (int)strlen(name));
}

/* Walks the document in its own field order; computed fields that were not in it come
 * after, in specification order. */
static int shape_doc(const struct shape_ctx *c, const struct snode *n, const uint8_t *data,
                     uint32_t len, bson_t *out, int depth)
{
    enum sh_mode mode = c->sh->mode;
    bson_iter_t it;
    /* A computed _id still comes first, as MongoDB places it. */
    const struct snode *id = n == &c->sh->root && mode == SH_INCLUSION ? snode_kid(n, "_id") : NULL;
    if (id && id->kind == SN_EXPR) {
        int rc = shape_eval(c, id, out, "_id", 3);
        if (rc < 0)
            return rc;
    }
    if (!bson_iter_init_from_data(&it, data, len))
        return 0;
    while (bson_iter_next(&it)) {
        const char *key = bson_iter_key(&it);
        const struct snode *k = snode_kid(n, key);
        int rc = 0;
        bool appended;
        if (!k) {
            if (mode != SH_INCLUSION)
                bson_append_iter(out, NULL, 0, &it);
            continue;
        }
        switch (k->kind) {
        case SN_INCLUDE:
            bson_append_iter(out, NULL, 0, &it);
            break;
        case SN_EXCLUDE:
            break;
        case SN_EXPR:
            if (mode == SH_ADD)
                rc = shape_eval(c, k, out, key, -1); /* replaced in place */
            break;
        case SN_SUB:
            rc = shape_value(c, k, bson_iter_value(&it), out, key, -1, &appended, depth);
            break;
        }
        if (rc < 0)
            return rc;
    }
    if (mode == SH_EXCLUSION)
        return 0;
    for (size_t i = 0; i < n->nkids; i++) {
        const struct snode *k = n->kids[i];
        int rc = 0;
        if (k == id)
            continue;
        if (k->kind == SN_EXPR && (mode == SH_INCLUSION || !doc_has(data, len, k->name))) {
            rc = shape_eval(c, k, out, k->name, -1);
        } else if (k->kind == SN_SUB && k->has_expr && !doc_has(data, len, k->name)) {
            bson_t sub;
            bson_append_document_begin(out, k->name, -1, &sub);
            rc = shape_doc(c, k, empty_doc, sizeof empty_doc, &sub, depth + 1);
            bson_append_document_end(out, &sub);
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* ================================================================ $group */

enum acc_op { ACC_SUM, ACC_AVG, ACC_MIN, ACC_MAX, ACC_FIRST, ACC_LAST, ACC_PUSH, ACC_ADDTOSET,
              ACC_COUNT };

static const struct named acc_names[] = {
    {"$sum", ACC_SUM},   {"$avg", ACC_AVG},   {"$min", ACC_MIN},
    {"$max", ACC_MAX},   {"$first", ACC_FIRST}, {"$last", ACC_LAST},
    {"$push", ACC_PUSH}, {"$addToSet", ACC_ADDTOSET}, {"$count", ACC_COUNT},
};

struct acc_spec {
    char *name;
    enum acc_op op;
    ldb_expr *expr;
};

struct acc_state {
    ldb_num num;       /* $sum, $avg, $count */
    uint64_t count;    /* $avg: numbers seen */
    bool have;         /* $min $max $first $last: v is set */
    bson_value_t v;
    bson_t *arr;       /* $push */
    uint32_t arr_n;
    struct vset *set;  /* $addToSet */
};

struct group {
    ldb_expr *id;
    struct acc_spec *accs;
    size_t nacc;
    struct vset keys;
    struct acc_state *states; /* keys.n * nacc */
    size_t states_cap;        /* in groups */
    size_t bytes;
};

static void group_free(struct group *g)
{
    if (!g)
        return;
    for (size_t i = 0; g->states && i < g->keys.n * g->nacc; i++) {
        struct acc_state *st = &g->states[i];
        bson_value_destroy(&st->v);
        if (st->arr)
            bson_destroy(st->arr);
        if (st->set) {
            vset_free(st->set);
            free(st->set);
        }
    }
    free(g->states);
    vset_free(&g->keys);
    for (size_t i = 0; i < g->nacc; i++) {
        free(g->accs[i].name);
        ldb_expr_free(g->accs[i].expr);
    }
    free(g->accs);
    ldb_expr_free(g->id);
    free(g);
}

static int group_parse_acc(struct acc_spec *a, const char *field, const bson_value_t *v,
                           char *err, size_t err_len)
{
    const char *op;
    const bson_value_t *arg;
    if (v->value_type != BSON_TYPE_DOCUMENT ||
        !one_field(v->value.v_doc.data, v->value.v_doc.data_len, &op, &arg)) {
        snprintf(err, err_len, "the group aggregate field '%s' must be defined as an "
                 "expression inside an object with one accumulator", field);
        return -EINVAL;
    }
    const struct named *nm = find_named(acc_names, sizeof acc_names / sizeof acc_names[0], op);
    if (!nm) {
        snprintf(err, err_len, "unknown group operator '%s'", op);
        return -EINVAL;
    }
    a->op = (enum acc_op)nm->kind;
    if (!(a->name = strdup(field)))
        return agg_oom(err, err_len);
    if (a->op == ACC_COUNT) {
        if (arg->value_type != BSON_TYPE_DOCUMENT || arg->value.v_doc.data_len > 5) {
            snprintf(err, err_len, "$count takes no arguments, i.e. $count:{}");
            return -EINVAL;
        }
        bson_value_t one = {.value_type = BSON_TYPE_INT32, .value.v_int32 = 1};
        return ldb_expr_compile(&one, &a->expr, err, err_len);
    }
    if (arg->value_type == BSON_TYPE_ARRAY) {
        snprintf(err, err_len, "the %s accumulator is a unary operator", op);
        return -EINVAL;
    }
    return ldb_expr_compile(arg, &a->expr, err, err_len);
}

static int group_compile(const bson_value_t *spec, struct group **out, char *err, size_t err_len)
{
    bson_iter_t it;
    bson_t d;
    struct group *g = calloc(1, sizeof *g);
    if (!g)
        return agg_oom(err, err_len);
    int rc = 0;
    if (!bson_init_static(&d, spec->value.v_doc.data, spec->value.v_doc.data_len) ||
        !bson_iter_init(&it, &d)) {
        rc = -EINVAL;
        snprintf(err, err_len, "invalid BSON");
    } else if (!(g->accs = calloc(bson_count_keys(&d) + 1, sizeof *g->accs))) {
        rc = agg_oom(err, err_len);
    }
    bool have_id = false;
    while (rc == 0 && bson_iter_next(&it)) {
        const char *k = bson_iter_key(&it);
        if (strcmp(k, "_id") == 0) {
            if (have_id) {
                snprintf(err, err_len, "_id specified more than once");
                rc = -EINVAL;
                break;
            }
            have_id = true;
            rc = ldb_expr_compile(bson_iter_value(&it), &g->id, err, err_len);
            continue;
        }
        if (k[0] == '$' || strchr(k, '.')) {
            snprintf(err, err_len, "the group aggregate field name '%s' cannot be used "
                     "because $group's field names cannot start with '$' or contain '.'", k);
            rc = -EINVAL;
            break;
        }
        rc = group_parse_acc(&g->accs[g->nacc], k, bson_iter_value(&it), err, err_len);
        g->nacc++; /* counted even on failure so that group_free releases its name */
    }
    if (rc == 0 && !have_id) {
        snprintf(err, err_len, "a group specification must specify an _id");
        rc = -EINVAL;
    }
    if (rc < 0) {
        group_free(g);
        return rc;
    }
    *out = g;
    return 0;
}

static int group_limit_err(char *err, size_t err_len)
{
    snprintf(err, err_len, "$group exceeded memory limit of %zu bytes; reduce the number of "
             "groups or what they accumulate", LDB_AGG_MEM_MAX);
    return -E2BIG;
}

/* Feeds one accumulator with v (owned; consumed). */
static int acc_feed(struct group *g, const struct acc_spec *a, struct acc_state *st,
                    bson_value_t *v)
{
    ldb_num n;
    int rc = 0;
    switch (a->op) {
    case ACC_SUM:
    case ACC_COUNT:
    case ACC_AVG:
        /* Non-numeric values (strings, arrays, null, missing) are ignored. */
        if (ldb_num_from_value(v, &n)) {
            ldb_num_add(&st->num, &n);
            st->count++;
        }
        break;
    case ACC_MIN:
    case ACC_MAX: {
        if (v->value_type == BSON_TYPE_EOD || v->value_type == BSON_TYPE_NULL ||
            v->value_type == BSON_TYPE_UNDEFINED)
            break;
        int c = st->have ? ldb_value_cmp(v, &st->v) : 0;
        if (st->have && !(a->op == ACC_MIN ? c < 0 : c > 0))
            break;
        if (st->have) {
            g->bytes -= value_bytes(&st->v);
            bson_value_destroy(&st->v);
        }
        st->v = *v;
        st->have = true;
        g->bytes += value_bytes(v);
        return 0; /* ownership moved */
    }
    case ACC_FIRST:
    case ACC_LAST:
        if (a->op == ACC_FIRST && st->have)
            break;
        if (st->have) {
            g->bytes -= value_bytes(&st->v);
            bson_value_destroy(&st->v);
        }
        if (v->value_type == BSON_TYPE_EOD)
            v->value_type = BSON_TYPE_NULL; /* a missing value accumulates as null */
        st->v = *v;
        st->have = true;
        g->bytes += value_bytes(v);
        return 0;
    case ACC_PUSH:
        if (v->value_type == BSON_TYPE_EOD)
            break;
        if (!st->arr && !(st->arr = bson_new())) {
            rc = -ENOMEM;
            break;
        }
        {
            char kb[16];
            int kl;
            const char *key = key_for(st->arr_n++, kb, sizeof kb, &kl);
            if (!bson_append_value(st->arr, key, kl, v))
                rc = -E2BIG; /* past what one BSON array can hold */
        }
        g->bytes += value_bytes(v);
        break;
    case ACC_ADDTOSET: {
        size_t idx;
        bool added;
        if (v->value_type == BSON_TYPE_EOD)
            break;
        if (!st->set && !(st->set = calloc(1, sizeof *st->set))) {
            rc = -ENOMEM;
            break;
        }
        rc = vset_insert(st->set, v, &idx, &added);
        if (added)
            g->bytes += value_bytes(v) + 16;
        break;
    }
    }
    bson_value_destroy(v);
    return rc;
}

static int group_push(struct group *g, const bson_t *doc, char *err, size_t err_len)
{
    bson_value_t key;
    int rc = ldb_expr_eval(g->id, doc, &key, err, err_len);
    if (rc < 0)
        return rc;
    if (key.value_type == BSON_TYPE_EOD)
        key.value_type = BSON_TYPE_NULL; /* a missing _id groups as null */
    size_t gi;
    bool added;
    rc = vset_insert(&g->keys, &key, &gi, &added);
    if (rc == 0 && added) {
        g->bytes += value_bytes(&key) + 32 + g->nacc * sizeof(struct acc_state);
        if (g->keys.n > g->states_cap) {
            size_t ncap = g->states_cap ? g->states_cap * 2 : 64;
            struct acc_state *ns = realloc(g->states, ncap * g->nacc * sizeof *ns + 1);
            if (!ns) {
                g->keys.n--; /* keep states in step with keys for group_free */
                bson_value_destroy(&g->keys.vals[g->keys.n]);
                rc = -ENOMEM;
            } else {
                g->states = ns;
                g->states_cap = ncap;
            }
        }
        if (rc == 0) {
            memset(&g->states[gi * g->nacc], 0, g->nacc * sizeof *g->states);
            for (size_t a = 0; a < g->nacc; a++)
                g->states[gi * g->nacc + a].num.kind = LDB_NUM_INT32;
        }
    }
    bson_value_destroy(&key);
    if (rc < 0)
        return rc == -ENOMEM ? agg_oom(err, err_len) : group_limit_err(err, err_len);
    for (size_t a = 0; a < g->nacc; a++) {
        bson_value_t v;
        rc = ldb_expr_eval(g->accs[a].expr, doc, &v, err, err_len);
        if (rc < 0)
            return rc;
        rc = acc_feed(g, &g->accs[a], &g->states[gi * g->nacc + a], &v);
        if (rc < 0)
            return rc == -ENOMEM ? agg_oom(err, err_len) : group_limit_err(err, err_len);
    }
    if (g->bytes > LDB_AGG_MEM_MAX)
        return group_limit_err(err, err_len);
    return 0;
}

/* Builds group gi's output document into out (initialised here). */
static void group_result(const struct group *g, size_t gi, bson_t *out)
{
    bson_init(out);
    bson_append_value(out, "_id", 3, &g->keys.vals[gi]);
    for (size_t a = 0; a < g->nacc; a++) {
        const struct acc_spec *as = &g->accs[a];
        const struct acc_state *st = &g->states[gi * g->nacc + a];
        bson_value_t v = {.value_type = BSON_TYPE_NULL};
        switch (as->op) {
        case ACC_SUM:
        case ACC_COUNT:
            ldb_num_to_value(&st->num, &v);
            break;
        case ACC_AVG:
            if (st->count) {
                v.value_type = BSON_TYPE_DOUBLE;
                v.value.v_double = ldb_num_as_double(&st->num) / (double)st->count;
            }
            break;
        case ACC_MIN:
        case ACC_MAX:
        case ACC_FIRST:
        case ACC_LAST:
            if (st->have)
                v = st->v; /* borrowed: appended (copied) below */
            break;
        case ACC_PUSH:
            if (st->arr)
                bson_append_array(out, as->name, -1, st->arr);
            else
                vset_append_array(NULL, out, as->name);
            continue;
        case ACC_ADDTOSET:
            vset_append_array(st->set, out, as->name);
            continue;
        }
        bson_append_value(out, as->name, -1, &v);
    }
}

/* ================================================================ $unwind helpers */

/* The value at a dotted path through sub-documents only (as $unwind resolves it);
 * borrowed from doc. */
static bool doc_get_path(const uint8_t *data, uint32_t len, char *const *parts, size_t n,
                         bson_value_t *out)
{
    bson_iter_t it;
    for (size_t i = 0; i < n; i++) {
        if (!bson_iter_init_from_data(&it, data, len) ||
            !bson_iter_find_w_len(&it, parts[i], (int)strlen(parts[i])))
            return false;
        const bson_value_t *v = bson_iter_value(&it);
        if (i + 1 == n) {
            *out = *v;
            return true;
        }
        if (v->value_type != BSON_TYPE_DOCUMENT)
            return false;
        data = v->value.v_doc.data;
        len = v->value.v_doc.data_len;
    }
    return false;
}

/* Copies the document with the value at parts set to v (BSON_TYPE_EOD removes it),
 * in place when present, appended (creating sub-documents) when not. */
static void doc_set_path(const uint8_t *data, uint32_t len, char *const *parts, size_t n,
                         const bson_value_t *v, bson_t *out, int depth)
{
    bson_iter_t it;
    bool found = false;
    if (depth > LDB_MAX_DEPTH || !bson_iter_init_from_data(&it, data, len))
        return;
    while (bson_iter_next(&it)) {
        if (found || strcmp(bson_iter_key(&it), parts[0]) != 0) {
            bson_append_iter(out, NULL, 0, &it);
            continue;
        }
        found = true;
        const bson_value_t *cur = bson_iter_value(&it);
        if (n == 1) {
            if (v->value_type != BSON_TYPE_EOD)
                bson_append_value(out, parts[0], -1, v);
        } else if (cur->value_type == BSON_TYPE_DOCUMENT || v->value_type != BSON_TYPE_EOD) {
            bson_t sub;
            bool isdoc = cur->value_type == BSON_TYPE_DOCUMENT;
            bson_append_document_begin(out, parts[0], -1, &sub);
            doc_set_path(isdoc ? cur->value.v_doc.data : empty_doc,
                         isdoc ? cur->value.v_doc.data_len : sizeof empty_doc, parts + 1, n - 1,
                         v, &sub, depth + 1);
            bson_append_document_end(out, &sub);
        } else {
            bson_append_iter(out, NULL, 0, &it);
        }
    }
    if (found || v->value_type == BSON_TYPE_EOD)
        return;
    if (n == 1) {
        bson_append_value(out, parts[0], -1, v);
        return;
    }
    bson_t sub;
    bson_append_document_begin(out, parts[0], -1, &sub);
    doc_set_path(empty_doc, sizeof empty_doc, parts + 1, n - 1, v, &sub, depth + 1);
    bson_append_document_end(out, &sub);
}

/* ================================================================ stages */

enum st_kind { ST_MATCH, ST_PROJECT, ST_ADDFIELDS, ST_GROUP, ST_SORT, ST_SKIP, ST_LIMIT,
               ST_UNWIND, ST_COUNT };

struct held {
    bson_t *doc;
    size_t seq;
};

struct stage {
    enum st_kind kind;
    const char *name;  /* as written ("$set" or "$addFields"), for messages */
    bool closed;       /* wants no more input */
    /* A document argument ($match, $sort), pointing into the caller's stage; kept as
     * bytes because a bson_t member would demand 128-byte alignment of calloc. */
    const uint8_t *arg_data;
    uint32_t arg_len;
    ldb_matcher *m;
    struct shape *shape;
    struct group *g;
    ldb_sort *sort;
    struct held *held;
    size_t nheld, cap, bytes;
    size_t topk;       /* $sort followed by [$skip] $limit: only this many can come out */
    size_t seq;
    int64_t n, seen;   /* $skip/$limit amount; documents passed; $count total */
    char **upath, **ipath;
    size_t nupath, nipath;
    bool preserve;
    char *count_name;
};

struct pipeline {
    struct stage *st;
    size_t n;
    size_t start;     /* first stage that runs on the stream */
    ldb_doc_fn fn;
    void *ctx;
    uint64_t returned;
    bool sink_closed;
    bool fed;         /* the scan produced at least one document */
    bool err_named;   /* err already says which stage failed */
    int rc;           /* error raised inside the scan callback */
    char *err;
    size_t err_len;
};

static void stage_clear(struct stage *s)
{
    if (s->m)
        ldb_matcher_free(s->m);
    shape_free(s->shape);
    group_free(s->g);
    if (s->sort)
        ldb_sort_free(s->sort);
    for (size_t i = 0; i < s->nheld; i++)
        bson_destroy(s->held[i].doc);
    free(s->held);
    free_parts(s->upath, s->nupath);
    free_parts(s->ipath, s->nipath);
    free(s->count_name);
}

/* A $skip/$limit amount: an integral number (doubles like 2.0 included). */
static bool integral_arg(const bson_value_t *v, int64_t *out)
{
    ldb_num n;
    if (!ldb_num_from_value(v, &n))
        return false;
    if (n.kind != LDB_NUM_DOUBLE) {
        *out = n.i;
        return true;
    }
    if (n.d != trunc(n.d) || n.d < -9.2e18 || n.d > 9.2e18)
        return false;
    *out = (int64_t)n.d;
    return true;
}

static int parse_unwind(struct stage *s, const bson_value_t *v, char *err, size_t err_len)
{
    const char *path = NULL, *index = NULL;
    if (v->value_type == BSON_TYPE_UTF8) {
        path = v->value.v_utf8.str;
    } else if (v->value_type == BSON_TYPE_DOCUMENT) {
        bson_iter_t it;
        if (!bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len))
            return -EINVAL;
        while (bson_iter_next(&it)) {
            const char *k = bson_iter_key(&it);
            bson_type_t t = bson_iter_type(&it);
            if (strcmp(k, "path") == 0 && t == BSON_TYPE_UTF8) {
                path = bson_iter_utf8(&it, NULL);
            } else if (strcmp(k, "includeArrayIndex") == 0 && t == BSON_TYPE_UTF8) {
                index = bson_iter_utf8(&it, NULL);
            } else if (strcmp(k, "preserveNullAndEmptyArrays") == 0 && t == BSON_TYPE_BOOL) {
                s->preserve = bson_iter_bool(&it);
            } else {
                snprintf(err, err_len, "unrecognized option '%s' or wrong type (%s)", k,
                         ldb_type_name(t));
                return -EINVAL;
            }
        }
        if (!path) {
            snprintf(err, err_len, "no path specified to $unwind stage");
            return -EINVAL;
        }
    } else {
        snprintf(err, err_len, "expected either a string or an object as "
                 "specification, got %s", ldb_type_name(v->value_type));
        return -EINVAL;
    }
    if (path[0] != '$' || path[1] == '\0') {
        snprintf(err, err_len, "path option to $unwind stage should be prefixed with "
                 "a '$': %s", path);
        return -EINVAL;
    }
    int rc = split_dotted("$unwind", path + 1, &s->upath, &s->nupath, err, err_len);
    if (rc == 0 && index) {
        if (index[0] == '$' || index[0] == '\0') {
            snprintf(err, err_len, "includeArrayIndex must be a non-empty field name "
                     "not starting with '$': '%s'", index);
            return -EINVAL;
        }
        rc = split_dotted("$unwind", index, &s->ipath, &s->nipath, err, err_len);
    }
    return rc;
}

static int parse_count(struct stage *s, const bson_value_t *v, char *err, size_t err_len)
{
    if (v->value_type != BSON_TYPE_UTF8 || v->value.v_utf8.len == 0) {
        snprintf(err, err_len, "the count field must be a non-empty string");
        return -EINVAL;
    }
    if (v->value.v_utf8.str[0] == '$') {
        snprintf(err, err_len, "the count field cannot be a $-prefixed path");
        return -EINVAL;
    }
    if (strchr(v->value.v_utf8.str, '.')) {
        snprintf(err, err_len, "the count field cannot contain '.'");
        return -EINVAL;
    }
    if (!(s->count_name = strdup(v->value.v_utf8.str)))
        return agg_oom(err, err_len);
    return 0;
}

static const struct named stage_names[] = {
    {"$match", ST_MATCH},   {"$project", ST_PROJECT}, {"$addFields", ST_ADDFIELDS},
    {"$set", ST_ADDFIELDS}, {"$group", ST_GROUP},     {"$sort", ST_SORT},
    {"$skip", ST_SKIP},     {"$limit", ST_LIMIT},     {"$unwind", ST_UNWIND},
    {"$count", ST_COUNT},
};

static int stage_parse(struct stage *s, const bson_t *spec, size_t pos, char *err, size_t err_len)
{
    const char *name;
    const bson_value_t *v;
    if (!spec || !one_field(bson_get_data(spec), spec->len, &name, &v)) {
        snprintf(err, err_len, "pipeline stage %zu: a pipeline stage specification object must "
                 "contain exactly one field", pos);
        return -EINVAL;
    }
    const struct named *nm =
        find_named(stage_names, sizeof stage_names / sizeof stage_names[0], name);
    if (!nm) {
        snprintf(err, err_len, "Unrecognized pipeline stage name: '%s'", name);
        return -EINVAL;
    }
    s->kind = (enum st_kind)nm->kind;
    s->name = nm->name;
    bool wants_doc = s->kind == ST_MATCH || s->kind == ST_PROJECT || s->kind == ST_ADDFIELDS ||
                     s->kind == ST_GROUP || s->kind == ST_SORT;
    bson_t arg;
    if (wants_doc) {
        if (v->value_type != BSON_TYPE_DOCUMENT ||
            !bson_init_static(&arg, v->value.v_doc.data, v->value.v_doc.data_len)) {
            snprintf(err, err_len, "%s: the stage's specification must be an object, not %s",
                     name, ldb_type_name(v->value_type));
            return -EINVAL;
        }
        s->arg_data = v->value.v_doc.data;
        s->arg_len = v->value.v_doc.data_len;
    }
    int rc = 0;
    char sub[256];
    switch (s->kind) {
    case ST_MATCH:
        rc = ldb_match_compile(&arg, &s->m, sub, sizeof sub);
        if (rc < 0)
            snprintf(err, err_len, "$match: %s", sub);
        return rc;
    case ST_SORT:
        rc = ldb_sort_compile(&arg, &s->sort, sub, sizeof sub);
        if (rc < 0)
            snprintf(err, err_len, "$sort: %s", sub);
        return rc;
    case ST_PROJECT:
    case ST_ADDFIELDS:
        return shape_compile(v, s->kind == ST_PROJECT ? SH_INCLUSION : SH_ADD, &s->shape, err,
                             err_len);
    case ST_GROUP:
        return group_compile(v, &s->g, err, err_len);
    case ST_SKIP:
        if (!integral_arg(v, &s->n) || s->n < 0) {
            snprintf(err, err_len, "$skip: the skip must be a non-negative integer");
            return -EINVAL;
        }
        return 0;
    case ST_LIMIT:
        if (!integral_arg(v, &s->n) || s->n <= 0) {
            snprintf(err, err_len, "$limit: the limit must be a positive integer");
            return -EINVAL;
        }
        return 0;
    case ST_UNWIND:
        return parse_unwind(s, v, err, err_len);
    case ST_COUNT:
        return parse_count(s, v, err, err_len);
    }
    return 0;
}

static int push(struct pipeline *p, size_t i, const bson_t *doc);

/* Makes err start with the stage's name (expression errors do not know their stage). */
static void name_err(const char *stage, char *err, size_t err_len)
{
    size_t sl = strlen(stage);
    if (!err_len || strncmp(err, stage, sl) == 0)
        return;
    char *tmp = strdup(err);
    if (tmp) {
        snprintf(err, err_len, "%s: %s", stage, tmp);
        free(tmp);
    }
}

static int sort_limit_err(char *err, size_t err_len)
{
    snprintf(err, err_len, "$sort exceeded memory limit of %zu bytes; add a $limit or a more "
             "selective $match", LDB_AGG_MEM_MAX);
    return -E2BIG;
}

static int held_cmp(const void *a, const void *b, void *arg)
{
    const struct held *x = a, *y = b;
    int c = ldb_sort_cmp(arg, x->doc, y->doc);
    if (c)
        return c;
    return x->seq < y->seq ? -1 : x->seq > y->seq; /* stable: input order breaks ties */
}

static size_t held_bytes(const bson_t *doc) { return doc->len + sizeof(struct held) + 32; }

/* Holds a copy of doc. With a top-k bound, whenever 2k are held the best k are kept
 * (as MongoDB coalesces $sort + $limit), so memory follows k, not the input. */
static int sort_push(struct pipeline *p, struct stage *s, const bson_t *doc)
{
    if (s->nheld == s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 64;
        struct held *nh = realloc(s->held, ncap * sizeof *nh);
        if (!nh)
            return agg_oom(p->err, p->err_len);
        s->held = nh;
        s->cap = ncap;
    }
    s->bytes += held_bytes(doc);
    if (s->bytes > LDB_AGG_MEM_MAX)
        return sort_limit_err(p->err, p->err_len);
    if (!(s->held[s->nheld].doc = bson_copy(doc)))
        return agg_oom(p->err, p->err_len);
    s->held[s->nheld].seq = s->seq++;
    s->nheld++;
    if (s->topk && s->nheld >= 2 * s->topk) {
        qsort_r(s->held, s->nheld, sizeof *s->held, held_cmp, s->sort);
        for (size_t k = s->topk; k < s->nheld; k++) {
            s->bytes -= held_bytes(s->held[k].doc);
            bson_destroy(s->held[k].doc);
        }
        s->nheld = s->topk;
    }
    return 0;
}

/* Gives each stream $sort directly followed by $skip*... $limit its top-k bound. */
static void plan_topk(struct pipeline *p)
{
    for (size_t i = 0; i < p->n; i++) {
        if (p->st[i].kind != ST_SORT)
            continue;
        int64_t k = 0;
        for (size_t j = i + 1; j < p->n; j++) {
            const struct stage *t = &p->st[j];
            if (t->kind == ST_SKIP && !__builtin_add_overflow(k, t->n, &k))
                continue;
            if (t->kind == ST_LIMIT && !__builtin_add_overflow(k, t->n, &k) &&
                (uint64_t)k < SIZE_MAX / 4)
                p->st[i].topk = (size_t)k;
            break;
        }
    }
}

static int unwind_push(struct pipeline *p, size_t i, const bson_t *doc)
{
    struct stage *s = &p->st[i];
    bson_value_t v;
    bson_value_t none = {.value_type = BSON_TYPE_NULL};
    bool found = doc_get_path(bson_get_data(doc), doc->len, s->upath, s->nupath, &v);
    int rc = 0;
    if (found && v.value_type == BSON_TYPE_ARRAY) {
        bson_iter_t it;
        int64_t idx = 0;
        if (!bson_iter_init_from_data(&it, v.value.v_doc.data, v.value.v_doc.data_len))
            return 0;
        while (rc == 0 && bson_iter_next(&it)) {
            bson_t out = BSON_INITIALIZER;
            doc_set_path(bson_get_data(doc), doc->len, s->upath, s->nupath,
                         bson_iter_value(&it), &out, 0);
            if (s->ipath) {
                bson_t out2 = BSON_INITIALIZER;
                bson_value_t iv = {.value_type = BSON_TYPE_INT64, .value.v_int64 = idx};
                doc_set_path(bson_get_data(&out), out.len, s->ipath, s->nipath, &iv, &out2, 0);
                bson_destroy(&out);
                out = out2;
            }
            rc = push(p, i + 1, &out);
            bson_destroy(&out);
            idx++;
        }
        if (idx > 0 || !s->preserve)
            return rc;
        /* An empty array kept by preserveNullAndEmptyArrays loses the field. */
    } else if ((!found || v.value_type == BSON_TYPE_NULL || v.value_type == BSON_TYPE_UNDEFINED) &&
               !s->preserve) {
        return 0;
    }
    /* Passed through unchanged: a scalar (a one-element array to MongoDB), or a
     * null/missing/empty value under preserveNullAndEmptyArrays. */
    bool emptied = found && v.value_type == BSON_TYPE_ARRAY;
    if (!emptied && !s->ipath)
        return push(p, i + 1, doc);
    bson_t out = BSON_INITIALIZER;
    if (emptied) {
        bson_value_t gone = {.value_type = BSON_TYPE_EOD};
        doc_set_path(bson_get_data(doc), doc->len, s->upath, s->nupath, &gone, &out, 0);
    } else {
        bson_concat(&out, doc);
    }
    if (s->ipath) {
        bson_t out2 = BSON_INITIALIZER;
        doc_set_path(bson_get_data(&out), out.len, s->ipath, s->nipath, &none, &out2, 0);
        bson_destroy(&out);
        out = out2;
    }
    rc = push(p, i + 1, &out);
    bson_destroy(&out);
    return rc;
}

static int stage_push(struct pipeline *p, size_t i, const bson_t *doc)
{
    struct stage *s = &p->st[i];
    switch (s->kind) {
    case ST_MATCH:
        return ldb_match(s->m, doc) ? push(p, i + 1, doc) : 0;
    case ST_PROJECT:
    case ST_ADDFIELDS: {
        bson_t out = BSON_INITIALIZER;
        struct shape_ctx c = {.sh = s->shape, .root = doc, .err = p->err, .err_len = p->err_len};
        int rc = shape_doc(&c, &s->shape->root, bson_get_data(doc), doc->len, &out, 0);
        if (rc == 0)
            rc = push(p, i + 1, &out);
        bson_destroy(&out);
        return rc;
    }
    case ST_GROUP:
        return group_push(s->g, doc, p->err, p->err_len);
    case ST_SORT:
        return sort_push(p, s, doc);
    case ST_SKIP:
        if (s->seen < s->n) {
            s->seen++;
            return 0;
        }
        return push(p, i + 1, doc);
    case ST_LIMIT: {
        if (s->seen >= s->n)
            return AGG_STOP;
        s->seen++;
        int rc = push(p, i + 1, doc);
        return rc == 0 && s->seen >= s->n ? AGG_STOP : rc;
    }
    case ST_UNWIND:
        return unwind_push(p, i, doc);
    case ST_COUNT:
        s->seen++;
        return 0;
    }
    return 0;
}

static int push(struct pipeline *p, size_t i, const bson_t *doc)
{
    if (i == p->n) {
        if (p->sink_closed)
            return AGG_STOP;
        p->returned++;
        if (p->fn(doc, p->ctx)) {
            p->sink_closed = true;
            return AGG_STOP;
        }
        return 0;
    }
    struct stage *s = &p->st[i];
    if (s->closed)
        return AGG_STOP;
    int rc = stage_push(p, i, doc);
    if (rc == AGG_STOP)
        s->closed = true;
    if (rc < 0 && !p->err_named) {
        /* The innermost failing frame names its stage; the frames above keep that. */
        name_err(s->name, p->err, p->err_len);
        p->err_named = true;
    }
    return rc;
}

/* End of input for stage i: blocking stages emit what they hold. */
static int stage_flush(struct pipeline *p, size_t i)
{
    struct stage *s = &p->st[i];
    int rc = 0;
    switch (s->kind) {
    case ST_GROUP:
        for (size_t gi = 0; gi < s->g->keys.n && rc == 0; gi++) {
            bson_t out;
            group_result(s->g, gi, &out);
            if (out.len > LDB_DOC_MAX) {
                snprintf(p->err, p->err_len, "$group: result document for group %zu exceeds "
                         "%d bytes", gi, LDB_DOC_MAX);
                rc = -EFBIG;
            } else {
                rc = push(p, i + 1, &out);
            }
            bson_destroy(&out);
        }
        return rc;
    case ST_SORT:
        qsort_r(s->held, s->nheld, sizeof *s->held, held_cmp, s->sort);
        for (size_t k = 0; k < s->nheld && rc == 0; k++)
            rc = push(p, i + 1, s->held[k].doc);
        return rc;
    case ST_COUNT:
        if (s->seen > 0) {
            bson_t out = BSON_INITIALIZER;
            if (s->seen <= INT32_MAX)
                BSON_APPEND_INT32(&out, s->count_name, (int32_t)s->seen);
            else
                BSON_APPEND_INT64(&out, s->count_name, s->seen);
            rc = push(p, i + 1, &out);
            bson_destroy(&out);
        }
        return rc;
    default:
        return 0;
    }
}

static int scan_cb(const bson_t *doc, void *ctx)
{
    struct pipeline *p = ctx;
    p->fed = true;
    int rc = push(p, p->start, doc);
    if (rc < 0) {
        p->rc = rc;
        return 1;
    }
    return rc == AGG_STOP;
}

/* What the leading stages hand to ldb_find. */
struct pushdown {
    size_t end;        /* first stage left for the stream */
    ssize_t sort_idx;  /* the pushed $sort, or -1 */
    int64_t skip, limit;
    bson_t filter;     /* initialised; empty = all */
};

/* Takes $match* [$sort $match*] ($skip | $limit)*: $match commutes with $sort, and a
 * $skip/$limit run folds into one skip and one limit. */
static void plan_pushdown(const struct pipeline *p, struct pushdown *pd)
{
    size_t i = 0, nmatch = 0;
    bson_t first, list;
    bson_init(&pd->filter);
    pd->sort_idx = -1;
    pd->skip = pd->limit = 0;
    bson_append_array_begin(&pd->filter, "$and", 4, &list);
    for (;; i++) {
        if (i < p->n && p->st[i].kind == ST_SORT && pd->sort_idx < 0) {
            pd->sort_idx = (ssize_t)i;
            continue;
        }
        if (i >= p->n || p->st[i].kind != ST_MATCH)
            break;
        char kb[16];
        int kl;
        const char *key = key_for((uint32_t)nmatch, kb, sizeof kb, &kl);
        bson_init_static(&first, p->st[i].arg_data, p->st[i].arg_len);
        bson_append_document(&list, key, kl, &first);
        nmatch++;
    }
    bson_append_array_end(&pd->filter, &list);
    if (nmatch <= 1) {
        bson_reinit(&pd->filter);
        if (nmatch)
            bson_concat(&pd->filter, &first);
    }
    for (; i < p->n; i++) {
        const struct stage *s = &p->st[i];
        if (s->kind == ST_LIMIT) {
            pd->limit = pd->limit ? (s->n < pd->limit ? s->n : pd->limit) : s->n;
        } else if (s->kind == ST_SKIP) {
            int64_t sum;
            if (pd->limit && pd->limit <= s->n)
                break; /* everything skipped: let the stream stages say so */
            if (__builtin_add_overflow(pd->skip, s->n, &sum))
                break;
            pd->skip = sum;
            if (pd->limit)
                pd->limit -= s->n;
        } else {
            break;
        }
    }
    pd->end = i;
}

int ldb_aggregate(ldb_store *s, const char *ns, const bson_t *const *stages, size_t n,
                  ldb_doc_fn fn, void *ctx, ldb_find_stats *stats, char *err, size_t err_len)
{
    ldb_find_stats fstats = {0};
    struct pipeline p = {.n = n, .fn = fn, .ctx = ctx, .err = err, .err_len = err_len};
    int rc = 0;
    if (stats)
        memset(stats, 0, sizeof *stats);
    if (n && !(p.st = calloc(n, sizeof *p.st)))
        return agg_oom(err, err_len);
    for (size_t i = 0; i < n && rc == 0; i++) {
        rc = stage_parse(&p.st[i], stages[i], i, err, err_len);
        if (rc < 0 && p.st[i].name)
            name_err(p.st[i].name, err, err_len);
    }
    if (rc == 0) {
        struct pushdown pd;
        plan_topk(&p);
        plan_pushdown(&p, &pd);
        p.start = pd.end;
        const bson_t *filter = bson_empty(&pd.filter) ? NULL : &pd.filter;
        bson_t sort_spec;
        const bson_t *sort = NULL;
        if (pd.sort_idx >= 0 && bson_init_static(&sort_spec, p.st[pd.sort_idx].arg_data,
                                                 p.st[pd.sort_idx].arg_len))
            sort = &sort_spec;
        rc = ldb_find(s, ns, filter, NULL, sort, pd.skip, pd.limit, scan_cb, &p, &fstats, err,
                      err_len);
        if (rc == -E2BIG && sort && !p.fed) {
            /* The store refuses large unindexed sorts; the pipeline's own $sort holds up
             * to the aggregation memory limit instead. The $match stages after the sort
             * run again on the stream, which changes nothing. */
            ldb_find_stats again = {0};
            p.start = (size_t)pd.sort_idx;
            rc = ldb_find(s, ns, filter, NULL, NULL, 0, 0, scan_cb, &p, &again, err, err_len);
            fstats.examined += again.examined;
        }
        bson_destroy(&pd.filter);
        if (rc == 0 && p.rc < 0)
            rc = p.rc;
        for (size_t i = p.start; i < n && rc == 0; i++) {
            if (p.st[i].closed)
                continue;
            rc = stage_flush(&p, i);
            if (rc == AGG_STOP) {
                p.st[i].closed = true;
                rc = 0;
            }
        }
    }
    for (size_t i = 0; i < n; i++)
        stage_clear(&p.st[i]);
    free(p.st);
    if (stats) {
        stats->examined = fstats.examined;
        stats->returned = p.returned;
    }
    return rc < 0 ? rc : 0;
}
