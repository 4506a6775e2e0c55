/*
 * ldb_match.c — compiles MongoDB query filters into a tree of predicate nodes and
 * evaluates them. Owns the query semantics: dotted paths through documents and arrays,
 * implicit matching of array elements, null-matches-missing, type bracketing for
 * comparisons, and the negating operators ($ne, $nin, $not, $nor) that also match
 * documents where the field is missing.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "ldb_match.h"
#include "ldb_compare.h"

#include <errno.h>
#include <math.h>
#include <pcre2.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

enum kind {
    K_AND, K_OR, K_NOR, K_NOT, K_FALSE,
    K_EQ, K_GT, K_GTE, K_LT, K_LTE, K_IN, K_EXISTS, K_TYPE, K_REGEX, K_ELEMMATCH, K_SIZE, K_MOD,
};

#define TYPE_NUMBER 0x100 /* the "number" alias in a $type list */

struct node {
    enum kind kind;
    char **parts; /* field path split at dots; NULL/0 for logical nodes */
    int nparts;
    const char *path; /* the dotted path, pointing into the matcher's filter copy */
    bson_value_t val; /* operand; points into the matcher's filter copy */
    struct node **kids;
    size_t nkids, cap;
    /* $in: one compiled regex per element of val (NULL where the element is not a regex) */
    pcre2_code **in_res;
    size_t nin;
    pcre2_code *re;
    int *types;
    size_t ntypes;
    int64_t num_a, num_b; /* $size: a; $mod: divisor a, remainder b */
    bool elem_doc_mode;   /* $elemMatch with a query on element documents */
    bool from_all;        /* the conjunction built for $all: not planner/upsert equality */
};

struct ldb_matcher {
    /* Copy of the filter's bytes, allocated with the matcher; every operand points
     * into it. Plain bytes, not a bson_t, whose 128-byte alignment would cost an
     * aligned allocation per query. */
    uint8_t *filter;
    uint32_t filter_len;
    struct node *root;
    ldb_constraint *cons;
    size_t ncons, cons_cap;
};

struct cctx {
    char *err;
    size_t err_len;
    int rc;
};

static int fail(struct cctx *c, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(struct cctx *c, int rc, const char *fmt, ...)
{
    if (c->rc == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err, c->err_len, fmt, ap);
        va_end(ap);
        c->rc = rc;
    }
    return rc;
}

static void node_free(struct node *n)
{
    if (!n)
        return;
    free(n->parts); /* the components live in the same block */
    for (size_t i = 0; i < n->nkids; i++)
        node_free(n->kids[i]);
    free(n->kids);
    for (size_t i = 0; i < n->nin; i++)
        if (n->in_res[i])
            pcre2_code_free(n->in_res[i]);
    free(n->in_res);
    if (n->re)
        pcre2_code_free(n->re);
    free(n->types);
    free(n);
}

static struct node *node_new(struct cctx *c, enum kind k, const char *path)
{
    struct node *n = calloc(1, sizeof(*n));
    if (!n) {
        fail(c, -ENOMEM, "out of memory");
        return NULL;
    }
    n->kind = k;
    n->path = path;
    if (path && *path) {
        int cnt = 1;
        for (const char *p = path; *p; p++)
            cnt += *p == '.';
        /* One block: the component pointers, then a copy of the path cut at its dots
         * (one allocation per node however deep the path). */
        size_t plen = strlen(path);
        n->parts = malloc((size_t)cnt * sizeof(char *) + plen + 1);
        if (!n->parts) {
            free(n);
            fail(c, -ENOMEM, "out of memory");
            return NULL;
        }
        char *s = (char *)(n->parts + cnt);
        memcpy(s, path, plen + 1);
        for (int i = 0; i < cnt; i++) {
            char *d = strchr(s, '.');
            size_t len = d ? (size_t)(d - s) : strlen(s);
            if (len == 0) {
                node_free(n);
                fail(c, -EINVAL, "invalid field path '%s': empty component", path);
                return NULL;
            }
            if (d)
                *d = '\0';
            n->parts[i] = s;
            n->nparts = i + 1;
            s = d ? d + 1 : s + len;
        }
    }
    return n;
}

static int add_kid(struct cctx *c, struct node *p, struct node *k)
{
    if (!k)
        return c->rc ? c->rc : -ENOMEM;
    if (p->nkids == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 4;
        struct node **nk = realloc(p->kids, cap * sizeof(*nk));
        if (!nk) {
            node_free(k);
            return fail(c, -ENOMEM, "out of memory");
        }
        p->kids = nk;
        p->cap = cap;
    }
    p->kids[p->nkids++] = k;
    return 0;
}

/* ---- compilation ---------------------------------------------------------------- */

static int compile_doc(struct cctx *c, const bson_value_t *doc, struct node *into, int depth);
static int compile_ops(struct cctx *c, const char *path, const bson_value_t *ops, struct node *into,
                       int depth);

static pcre2_code *compile_regex(struct cctx *c, const char *pattern, const char *options)
{
    uint32_t flags = PCRE2_UTF;
    for (const char *o = options ? options : ""; *o; o++) {
        switch (*o) {
        case 'i': flags |= PCRE2_CASELESS; break;
        case 'm': flags |= PCRE2_MULTILINE; break;
        case 'x': flags |= PCRE2_EXTENDED; break;
        case 's': flags |= PCRE2_DOTALL; break;
        case 'u': break; /* UTF is always on */
        default:
            fail(c, -EINVAL, "invalid regex option '%c'", *o);
            return NULL;
        }
    }
    int ecode;
    PCRE2_SIZE eoff;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, flags, &ecode, &eoff, NULL);
    if (!re) {
        PCRE2_UCHAR msg[128];
        pcre2_get_error_message(ecode, msg, sizeof(msg));
        fail(c, -EINVAL, "invalid regex /%s/: %s at offset %zu", pattern, (const char *)msg, (size_t)eoff);
    }
    return re;
}

static bool is_whole(const bson_value_t *v, int64_t *out)
{
    if (!ldb_is_number(v->value_type))
        return false;
    double d = ldb_number_as_double(v);
    if (v->value_type == BSON_TYPE_INT64) {
        *out = v->value.v_int64;
        return true;
    }
    if (!isfinite(d) || d != trunc(d) || fabs(d) > 9.2e18)
        return false;
    *out = (int64_t)d;
    return true;
}

static const struct {
    const char *alias;
    int code;
} type_aliases[] = {
    {"double", 1}, {"string", 2}, {"object", 3}, {"array", 4}, {"binData", 5},
    {"undefined", 6}, {"objectId", 7}, {"bool", 8}, {"date", 9}, {"null", 10},
    {"regex", 11}, {"dbPointer", 12}, {"javascript", 13}, {"symbol", 14},
    {"javascriptWithScope", 15}, {"int", 16}, {"timestamp", 17}, {"long", 18},
    {"decimal", 19}, {"minKey", -1}, {"maxKey", 127}, {"number", TYPE_NUMBER},
};

static int type_code(struct cctx *c, const bson_value_t *v, int *out)
{
    int64_t n;
    if (v->value_type == BSON_TYPE_UTF8) {
        for (size_t i = 0; i < sizeof(type_aliases) / sizeof(type_aliases[0]); i++)
            if (strcmp(type_aliases[i].alias, v->value.v_utf8.str) == 0) {
                *out = type_aliases[i].code;
                return 0;
            }
        return fail(c, -EINVAL, "unknown $type alias '%s'", v->value.v_utf8.str);
    }
    if (is_whole(v, &n) && ((n >= 1 && n <= 19) || n == -1 || n == 127)) {
        *out = (int)(n == -1 ? 0xFF : n); /* BSON's minKey byte is 0xFF */
        return 0;
    }
    return fail(c, -EINVAL, "$type needs a type alias or BSON type number");
}

static int compile_type(struct cctx *c, struct node *n, const bson_value_t *v)
{
    if (v->value_type != BSON_TYPE_ARRAY) {
        n->types = calloc(1, sizeof(int));
        if (!n->types)
            return fail(c, -ENOMEM, "out of memory");
        n->ntypes = 1;
        int code;
        if (type_code(c, v, &code) < 0)
            return c->rc;
        if (code == -1)
            code = 0xFF;
        n->types[0] = code;
        return 0;
    }
    bson_iter_t it;
    if (!bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len))
        return fail(c, -EINVAL, "$type array is not valid BSON");
    size_t cnt = 0;
    while (bson_iter_next(&it))
        cnt++;
    if (cnt == 0)
        return fail(c, -EINVAL, "$type needs at least one type");
    n->types = calloc(cnt, sizeof(int));
    if (!n->types)
        return fail(c, -ENOMEM, "out of memory");
    bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len);
    while (bson_iter_next(&it)) {
        int code;
        if (type_code(c, bson_iter_value(&it), &code) < 0)
            return c->rc;
        n->types[n->ntypes++] = code == -1 ? 0xFF : code;
    }
    return 0;
}

static int compile_in(struct cctx *c, struct node *n, const char *op)
{
    if (n->val.value_type != BSON_TYPE_ARRAY)
        return fail(c, -EINVAL, "%s needs an array", op);
    bson_iter_t it;
    if (!bson_iter_init_from_data(&it, n->val.value.v_doc.data, n->val.value.v_doc.data_len))
        return fail(c, -EINVAL, "%s array is not valid BSON", op);
    size_t cnt = 0;
    while (bson_iter_next(&it))
        cnt++;
    n->in_res = calloc(cnt ? cnt : 1, sizeof(pcre2_code *));
    if (!n->in_res)
        return fail(c, -ENOMEM, "out of memory");
    bson_iter_init_from_data(&it, n->val.value.v_doc.data, n->val.value.v_doc.data_len);
    while (bson_iter_next(&it)) {
        const bson_value_t *e = bson_iter_value(&it);
        if (e->value_type == BSON_TYPE_DOCUMENT) {
            bson_iter_t f;
            if (bson_iter_init_from_data(&f, e->value.v_doc.data, e->value.v_doc.data_len) &&
                bson_iter_next(&f) && bson_iter_key(&f)[0] == '$')
                return fail(c, -EINVAL, "%s cannot contain operator %s", op, bson_iter_key(&f));
        }
        size_t i = n->nin++;
        if (e->value_type == BSON_TYPE_REGEX) {
            n->in_res[i] = compile_regex(c, e->value.v_regex.regex, e->value.v_regex.options);
            if (!n->in_res[i])
                return c->rc;
        }
    }
    return 0;
}

/* A node on `path` wrapped in a negation, for $ne/$nin/$not/$exists:false. */
static struct node *negate(struct cctx *c, struct node *inner)
{
    if (!inner)
        return NULL;
    struct node *n = node_new(c, K_NOT, NULL);
    if (!n || add_kid(c, n, inner) < 0) {
        if (!n)
            node_free(inner);
        node_free(n);
        return NULL;
    }
    return n;
}

static bool value_is_op_doc(const bson_value_t *v)
{
    bson_iter_t it;
    return v->value_type == BSON_TYPE_DOCUMENT &&
           bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len) &&
           bson_iter_next(&it) && bson_iter_key(&it)[0] == '$';
}

static int compile_elem_match(struct cctx *c, const char *path, const bson_value_t *v,
                              struct node *into, int depth)
{
    if (v->value_type != BSON_TYPE_DOCUMENT)
        return fail(c, -EINVAL, "$elemMatch needs an object");
    struct node *n = node_new(c, K_ELEMMATCH, path);
    if (!n)
        return c->rc;
    struct node *body = node_new(c, K_AND, NULL);
    if (!body || add_kid(c, n, body) < 0) {
        node_free(n);
        return c->rc;
    }
    int rc;
    if (value_is_op_doc(v)) {
        /* {$elemMatch: {$gte: 80, $lt: 85}}: conditions on the element value itself. */
        rc = compile_ops(c, "", v, body, depth + 1);
    } else {
        n->elem_doc_mode = true;
        rc = compile_doc(c, v, body, depth + 1);
    }
    if (rc < 0) {
        node_free(n);
        return rc;
    }
    return add_kid(c, into, n);
}

static int compile_ops(struct cctx *c, const char *path, const bson_value_t *ops, struct node *into,
                       int depth)
{
    if (depth > LDB_MAX_DEPTH)
        return fail(c, -EINVAL, "query nesting exceeds %d levels", LDB_MAX_DEPTH);
    bson_iter_t it;
    if (!bson_iter_init_from_data(&it, ops->value.v_doc.data, ops->value.v_doc.data_len))
        return fail(c, -EINVAL, "operator object is not valid BSON");
    /* $options is a sibling of $regex, so find it first. */
    const char *options = NULL;
    bool have_regex = false;
    bson_iter_t scan = it;
    while (bson_iter_next(&scan)) {
        if (strcmp(bson_iter_key(&scan), "$options") == 0) {
            if (!BSON_ITER_HOLDS_UTF8(&scan))
                return fail(c, -EINVAL, "$options needs a string");
            options = bson_iter_utf8(&scan, NULL);
        } else if (strcmp(bson_iter_key(&scan), "$regex") == 0) {
            have_regex = true;
        }
    }
    if (options && !have_regex)
        return fail(c, -EINVAL, "$options needs a $regex");

    while (bson_iter_next(&it)) {
        const char *op = bson_iter_key(&it);
        const bson_value_t *v = bson_iter_value(&it);
        struct node *n = NULL;
        if (op[0] != '$')
            return fail(c, -EINVAL, "unknown operator %s: cannot mix operators and fields under '%s'", op, path);
        if (!strcmp(op, "$eq") || !strcmp(op, "$ne")) {
            if (!strcmp(op, "$ne") && v->value_type == BSON_TYPE_REGEX)
                return fail(c, -EINVAL, "$ne cannot take a regex");
            n = node_new(c, K_EQ, path);
            if (n)
                n->val = *v;
            if (op[1] == 'n')
                n = negate(c, n);
        } else if (!strcmp(op, "$gt") || !strcmp(op, "$gte") || !strcmp(op, "$lt") || !strcmp(op, "$lte")) {
            enum kind k = !strcmp(op, "$gt") ? K_GT : !strcmp(op, "$gte") ? K_GTE : !strcmp(op, "$lt") ? K_LT : K_LTE;
            n = node_new(c, k, path);
            if (n)
                n->val = *v;
        } else if (!strcmp(op, "$in") || !strcmp(op, "$nin")) {
            n = node_new(c, K_IN, path);
            if (n) {
                n->val = *v;
                if (compile_in(c, n, op) < 0) {
                    node_free(n);
                    return c->rc;
                }
            }
            if (op[1] == 'n')
                n = negate(c, n);
        } else if (!strcmp(op, "$exists")) {
            bool want = bson_iter_as_bool(&it);
            n = node_new(c, K_EXISTS, path);
            if (!want)
                n = negate(c, n);
        } else if (!strcmp(op, "$type")) {
            n = node_new(c, K_TYPE, path);
            if (n && compile_type(c, n, v) < 0) {
                node_free(n);
                return c->rc;
            }
        } else if (!strcmp(op, "$regex")) {
            const char *pat, *opts = options;
            if (v->value_type == BSON_TYPE_UTF8) {
                pat = v->value.v_utf8.str;
            } else if (v->value_type == BSON_TYPE_REGEX) {
                pat = v->value.v_regex.regex;
                if (!opts)
                    opts = v->value.v_regex.options;
            } else {
                return fail(c, -EINVAL, "$regex needs a string or regex");
            }
            n = node_new(c, K_REGEX, path);
            if (n) {
                n->re = compile_regex(c, pat, opts);
                if (!n->re) {
                    node_free(n);
                    return c->rc;
                }
            }
        } else if (!strcmp(op, "$options")) {
            continue; /* consumed with $regex */
        } else if (!strcmp(op, "$all")) {
            if (v->value_type != BSON_TYPE_ARRAY)
                return fail(c, -EINVAL, "$all needs an array");
            /* {$all: [x, y]} is {$and: [{f: x}, {f: y}]}; an empty $all matches nothing. */
            n = node_new(c, K_AND, NULL);
            if (!n)
                return c->rc;
            n->from_all = true;
            bson_iter_t ai;
            bson_iter_init_from_data(&ai, v->value.v_doc.data, v->value.v_doc.data_len);
            bool any = false;
            while (bson_iter_next(&ai)) {
                const bson_value_t *e = bson_iter_value(&ai);
                any = true;
                int rc;
                if (value_is_op_doc(e)) {
                    bson_iter_t ei;
                    bson_iter_init_from_data(&ei, e->value.v_doc.data, e->value.v_doc.data_len);
                    bson_iter_next(&ei);
                    if (strcmp(bson_iter_key(&ei), "$elemMatch") != 0) {
                        node_free(n);
                        return fail(c, -EINVAL, "$all can only contain values or $elemMatch, not %s", bson_iter_key(&ei));
                    }
                    rc = compile_elem_match(c, path, bson_iter_value(&ei), n, depth + 1);
                } else if (e->value_type == BSON_TYPE_REGEX) {
                    struct node *r = node_new(c, K_REGEX, path);
                    if (r && !(r->re = compile_regex(c, e->value.v_regex.regex, e->value.v_regex.options))) {
                        node_free(r);
                        r = NULL;
                    }
                    rc = add_kid(c, n, r);
                } else {
                    struct node *q = node_new(c, K_EQ, path);
                    if (q)
                        q->val = *e;
                    rc = add_kid(c, n, q);
                }
                if (rc < 0) {
                    node_free(n);
                    return c->rc;
                }
            }
            if (!any)
                n->kind = K_FALSE;
        } else if (!strcmp(op, "$elemMatch")) {
            if (compile_elem_match(c, path, v, into, depth) < 0)
                return c->rc;
            continue;
        } else if (!strcmp(op, "$size")) {
            int64_t sz;
            if (!is_whole(v, &sz) || sz < 0)
                return fail(c, -EINVAL, "$size needs a non-negative integer");
            n = node_new(c, K_SIZE, path);
            if (n)
                n->num_a = sz;
        } else if (!strcmp(op, "$mod")) {
            bson_iter_t mi;
            const bson_value_t *dv = NULL, *rv = NULL;
            int cnt = 0;
            if (v->value_type != BSON_TYPE_ARRAY)
                return fail(c, -EINVAL, "$mod needs an array of [divisor, remainder]");
            bson_iter_init_from_data(&mi, v->value.v_doc.data, v->value.v_doc.data_len);
            bson_value_t tmp[2];
            while (bson_iter_next(&mi)) {
                if (cnt < 2)
                    tmp[cnt] = *bson_iter_value(&mi);
                cnt++;
            }
            if (cnt != 2)
                return fail(c, -EINVAL, "$mod needs an array of [divisor, remainder]");
            dv = &tmp[0];
            rv = &tmp[1];
            if (!ldb_is_number(dv->value_type) || !ldb_is_number(rv->value_type))
                return fail(c, -EINVAL, "$mod divisor and remainder must be numbers");
            double dd = ldb_number_as_double(dv), rd = ldb_number_as_double(rv);
            if (!isfinite(dd) || !isfinite(rd) || fabs(dd) > 9.2e18 || fabs(rd) > 9.2e18)
                return fail(c, -EINVAL, "$mod divisor and remainder must be finite 64-bit values");
            /* Non-integral operands are truncated toward zero, as MongoDB 5.1+ does. */
            int64_t d = dv->value_type == BSON_TYPE_INT64 ? dv->value.v_int64 : (int64_t)dd;
            int64_t r = rv->value_type == BSON_TYPE_INT64 ? rv->value.v_int64 : (int64_t)rd;
            if (d == 0)
                return fail(c, -EINVAL, "$mod divisor cannot be 0");
            n = node_new(c, K_MOD, path);
            if (n) {
                n->num_a = d;
                n->num_b = r;
            }
        } else if (!strcmp(op, "$not")) {
            if (v->value_type == BSON_TYPE_REGEX) {
                n = node_new(c, K_REGEX, path);
                if (n && !(n->re = compile_regex(c, v->value.v_regex.regex, v->value.v_regex.options))) {
                    node_free(n);
                    return c->rc;
                }
            } else if (v->value_type == BSON_TYPE_DOCUMENT) {
                if (!value_is_op_doc(v))
                    return fail(c, -EINVAL, "$not needs a regex or a document of operators");
                n = node_new(c, K_AND, NULL);
                if (n && compile_ops(c, path, v, n, depth + 1) < 0) {
                    node_free(n);
                    return c->rc;
                }
            } else {
                return fail(c, -EINVAL, "$not needs a regex or a document");
            }
            n = negate(c, n);
        } else {
            return fail(c, -EINVAL, "unknown operator %s", op);
        }
        if (add_kid(c, into, n) < 0)
            return c->rc ? c->rc : -ENOMEM;
    }
    return 0;
}

static int compile_logical(struct cctx *c, const char *op, const bson_value_t *v, struct node *into,
                           int depth)
{
    enum kind k = !strcmp(op, "$and") ? K_AND : !strcmp(op, "$or") ? K_OR : K_NOR;
    bson_iter_t it;
    if (v->value_type != BSON_TYPE_ARRAY ||
        !bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len))
        return fail(c, -EINVAL, "%s needs a non-empty array of documents", op);
    struct node *n = node_new(c, k, NULL);
    if (!n)
        return c->rc;
    while (bson_iter_next(&it)) {
        const bson_value_t *e = bson_iter_value(&it);
        if (e->value_type != BSON_TYPE_DOCUMENT) {
            node_free(n);
            return fail(c, -EINVAL, "%s needs a non-empty array of documents", op);
        }
        struct node *sub = node_new(c, K_AND, NULL);
        if (!sub || add_kid(c, n, sub) < 0 || compile_doc(c, e, sub, depth + 1) < 0) {
            node_free(n);
            return c->rc;
        }
    }
    if (n->nkids == 0) {
        node_free(n);
        return fail(c, -EINVAL, "%s needs a non-empty array of documents", op);
    }
    return add_kid(c, into, n);
}

static int compile_doc(struct cctx *c, const bson_value_t *doc, struct node *into, int depth)
{
    if (depth > LDB_MAX_DEPTH)
        return fail(c, -EINVAL, "query nesting exceeds %d levels", LDB_MAX_DEPTH);
    bson_iter_t it;
    if (!bson_iter_init_from_data(&it, doc->value.v_doc.data, doc->value.v_doc.data_len))
        return fail(c, -EINVAL, "filter is not valid BSON");
    while (bson_iter_next(&it)) {
        const char *key = bson_iter_key(&it);
        const bson_value_t *v = bson_iter_value(&it);
        int rc = 0;
        if (key[0] == '$') {
            if (!strcmp(key, "$and") || !strcmp(key, "$or") || !strcmp(key, "$nor"))
                rc = compile_logical(c, key, v, into, depth);
            else if (!strcmp(key, "$comment"))
                continue;
            else
                return fail(c, -EINVAL, "unknown top-level operator %s", key);
        } else if (value_is_op_doc(v)) {
            rc = compile_ops(c, key, v, into, depth + 1);
        } else if (v->value_type == BSON_TYPE_REGEX) {
            struct node *n = node_new(c, K_REGEX, key);
            if (n && !(n->re = compile_regex(c, v->value.v_regex.regex, v->value.v_regex.options))) {
                node_free(n);
                return c->rc;
            }
            rc = add_kid(c, into, n);
        } else {
            struct node *n = node_new(c, K_EQ, key);
            if (n)
                n->val = *v;
            rc = add_kid(c, into, n);
        }
        if (rc < 0)
            return c->rc ? c->rc : rc;
    }
    return 0;
}

static int add_constraint(struct ldb_matcher *m, const struct node *n, ldb_constraint_op op)
{
    if (m->ncons == m->cons_cap) {
        size_t cap = m->cons_cap ? m->cons_cap * 2 : 8;
        ldb_constraint *nc = realloc(m->cons, cap * sizeof(*nc));
        if (!nc)
            return -ENOMEM;
        m->cons = nc;
        m->cons_cap = cap;
    }
    m->cons[m->ncons++] = (ldb_constraint){.path = n->path, .op = op, .value = &n->val};
    return 0;
}

/* Only conjunctions are walked: anything below $or/$nor/$not is not guaranteed. */
static int collect_constraints(struct ldb_matcher *m, const struct node *n)
{
    int rc = 0;
    switch (n->kind) {
    case K_AND:
        if (n->from_all)
            return 0;
        for (size_t i = 0; i < n->nkids && rc == 0; i++)
            rc = collect_constraints(m, n->kids[i]);
        return rc;
    case K_EQ: return add_constraint(m, n, LDB_C_EQ);
    case K_GT: return add_constraint(m, n, LDB_C_GT);
    case K_GTE: return add_constraint(m, n, LDB_C_GTE);
    case K_LT: return add_constraint(m, n, LDB_C_LT);
    case K_LTE: return add_constraint(m, n, LDB_C_LTE);
    case K_IN: return add_constraint(m, n, LDB_C_IN);
    default: return 0;
    }
}

int ldb_match_compile(const bson_t *filter, ldb_matcher **out, char *err, size_t err_len)
{
    struct cctx c = {.err = err, .err_len = err_len};
    *out = NULL;
    if (err_len)
        err[0] = '\0';
    ldb_matcher *m = calloc(1, sizeof(*m) + filter->len);
    if (!m) {
        fail(&c, -ENOMEM, "out of memory");
        return c.rc;
    }
    m->filter = (uint8_t *)(m + 1);
    m->root = node_new(&c, K_AND, NULL);
    bson_value_t root = {.value_type = BSON_TYPE_DOCUMENT};
    memcpy(m->filter, bson_get_data(filter), filter->len);
    m->filter_len = filter->len;
    root.value.v_doc.data = m->filter;
    root.value.v_doc.data_len = m->filter_len;
    if (!m->root || compile_doc(&c, &root, m->root, 0) < 0 ||
        collect_constraints(m, m->root) < 0) {
        if (c.rc == 0)
            fail(&c, -ENOMEM, "out of memory");
        ldb_matcher_free(m);
        return c.rc;
    }
    *out = m;
    return 0;
}

void ldb_matcher_free(ldb_matcher *m)
{
    if (!m)
        return;
    node_free(m->root);
    free(m->cons);
    free(m);
}

size_t ldb_match_constraints(const ldb_matcher *m, const ldb_constraint **out)
{
    *out = m->cons;
    return m->ncons;
}

bool ldb_match_only_ranges_on(const ldb_matcher *m, const char *path)
{
    const struct node *r = m->root;
    if (r->kind != K_AND || r->from_all || r->nkids == 0)
        return false;
    for (size_t i = 0; i < r->nkids; i++) {
        const struct node *n = r->kids[i];
        if ((n->kind != K_GT && n->kind != K_GTE && n->kind != K_LT && n->kind != K_LTE) ||
            n->nparts != 1 || strcmp(n->path, path) != 0)
            return false;
    }
    return true;
}

/* ---- evaluation ----------------------------------------------------------------- */

static bool eval(const struct node *n, const bson_value_t *root, int depth);

static bool is_nullish(const bson_value_t *v)
{
    return !v || v->value_type == BSON_TYPE_NULL || v->value_type == BSON_TYPE_UNDEFINED;
}

static bool regex_ok(const pcre2_code *re, const bson_value_t *v)
{
    const char *s;
    size_t len;
    if (v->value_type == BSON_TYPE_UTF8) {
        s = v->value.v_utf8.str;
        len = v->value.v_utf8.len;
    } else if (v->value_type == BSON_TYPE_SYMBOL) {
        s = v->value.v_symbol.symbol;
        len = v->value.v_symbol.len;
    } else {
        return false;
    }
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    if (!md)
        return false;
    int rc = pcre2_match(re, (PCRE2_SPTR)s, len, 0, 0, md, NULL);
    pcre2_match_data_free(md);
    return rc >= 0;
}

static bool eq_ok(const bson_value_t *operand, const bson_value_t *v)
{
    if (operand->value_type == BSON_TYPE_NULL)
        return is_nullish(v);
    return v && ldb_value_eq(operand, v);
}

/* Does the single value v (NULL = missing) satisfy leaf n? `expanded` says v is an
 * element of an array found at the path rather than the value at the path itself. */
static bool leaf_ok(const struct node *n, const bson_value_t *v, bool expanded, int depth)
{
    switch (n->kind) {
    case K_EQ:
        return eq_ok(&n->val, v);
    case K_GT:
    case K_GTE:
    case K_LT:
    case K_LTE: {
        if (!v || ldb_type_rank(v->value_type) != ldb_type_rank(n->val.value_type))
            /* Type bracketing; null operands also match missing fields for $gte/$lte. */
            return (n->kind == K_GTE || n->kind == K_LTE) && is_nullish(&n->val) && is_nullish(v);
        int cmp = ldb_value_cmp(v, &n->val);
        return n->kind == K_GT ? cmp > 0 : n->kind == K_GTE ? cmp >= 0 : n->kind == K_LT ? cmp < 0 : cmp <= 0;
    }
    case K_IN: {
        bson_iter_t it;
        if (!bson_iter_init_from_data(&it, n->val.value.v_doc.data, n->val.value.v_doc.data_len))
            return false;
        for (size_t i = 0; bson_iter_next(&it); i++) {
            if (i < n->nin && n->in_res[i]) {
                if (v && regex_ok(n->in_res[i], v))
                    return true;
            } else if (eq_ok(bson_iter_value(&it), v)) {
                return true;
            }
        }
        return false;
    }
    case K_EXISTS:
        return v != NULL;
    case K_TYPE:
        if (!v)
            return false;
        for (size_t i = 0; i < n->ntypes; i++) {
            if (n->types[i] == TYPE_NUMBER ? ldb_is_number(v->value_type)
                                           : (int)v->value_type == n->types[i])
                return true;
        }
        return false;
    case K_REGEX:
        /* Only strings and symbols are searched; a stored regex value never matches a
         * pattern (MongoDB would compare it for identity — use $eq for that). */
        return v && regex_ok(n->re, v);
    case K_SIZE: {
        if (!v || v->value_type != BSON_TYPE_ARRAY || expanded)
            return false;
        bson_iter_t it;
        int64_t cnt = 0;
        if (bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len))
            while (bson_iter_next(&it))
                cnt++;
        return cnt == n->num_a;
    }
    case K_MOD: {
        if (!v || !ldb_is_number(v->value_type))
            return false;
        int64_t x;
        if (v->value_type == BSON_TYPE_INT32)
            x = v->value.v_int32;
        else if (v->value_type == BSON_TYPE_INT64)
            x = v->value.v_int64;
        else {
            double d = ldb_number_as_double(v);
            if (!isfinite(d) || fabs(d) > 9.2e18)
                return false;
            x = (int64_t)d; /* truncated toward zero, as MongoDB does */
        }
        if (n->num_a == -1)
            return n->num_b == 0; /* avoids INT64_MIN % -1 */
        return x % n->num_a == n->num_b;
    }
    case K_ELEMMATCH: {
        if (!v || v->value_type != BSON_TYPE_ARRAY || expanded)
            return false;
        bson_iter_t it;
        if (!bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len))
            return false;
        while (bson_iter_next(&it)) {
            const bson_value_t *e = bson_iter_value(&it);
            if (n->elem_doc_mode && e->value_type != BSON_TYPE_DOCUMENT)
                continue;
            if (eval(n->kids[0], e, depth + 1))
                return true;
        }
        return false;
    }
    default:
        return false;
    }
}

/* True when any value reachable at n's path (from part i on, starting at v) satisfies
 * the leaf; arrays along the way fan out to their document elements. */
static bool walk(const struct node *n, const bson_value_t *v, int i, int depth)
{
    if (depth > LDB_MAX_DEPTH)
        return false;
    if (i == n->nparts) {
        if (leaf_ok(n, v, false, depth))
            return true;
        if (v && v->value_type == BSON_TYPE_ARRAY) {
            bson_iter_t it;
            if (bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len))
                while (bson_iter_next(&it))
                    if (leaf_ok(n, bson_iter_value(&it), true, depth))
                        return true;
        }
        return false;
    }
    if (!v)
        return leaf_ok(n, NULL, false, depth);
    bson_iter_t it;
    if (v->value_type == BSON_TYPE_DOCUMENT) {
        if (!bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len))
            return false;
        while (bson_iter_next(&it))
            if (strcmp(bson_iter_key(&it), n->parts[i]) == 0)
                return walk(n, bson_iter_value(&it), i + 1, depth + 1);
        return walk(n, NULL, n->nparts, depth + 1);
    }
    if (v->value_type == BSON_TYPE_ARRAY) {
        uint32_t idx = 0;
        bool numeric = ldb_path_index(n->parts[i], strlen(n->parts[i]), &idx), any = false;
        if (!bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len))
            return false;
        for (uint32_t k = 0; bson_iter_next(&it); k++) {
            const bson_value_t *e = bson_iter_value(&it);
            if (numeric && k == idx) {
                any = true;
                if (walk(n, e, i + 1, depth + 1))
                    return true;
            }
            if (e->value_type == BSON_TYPE_DOCUMENT) {
                any = true;
                if (walk(n, e, i, depth + 1))
                    return true;
            }
        }
        return any ? false : leaf_ok(n, NULL, false, depth);
    }
    return leaf_ok(n, NULL, false, depth); /* a scalar has no sub-fields */
}

static bool eval(const struct node *n, const bson_value_t *root, int depth)
{
    if (depth > LDB_MAX_DEPTH)
        return false;
    switch (n->kind) {
    case K_AND:
        for (size_t i = 0; i < n->nkids; i++)
            if (!eval(n->kids[i], root, depth + 1))
                return false;
        return true;
    case K_OR:
        for (size_t i = 0; i < n->nkids; i++)
            if (eval(n->kids[i], root, depth + 1))
                return true;
        return false;
    case K_NOR:
        for (size_t i = 0; i < n->nkids; i++)
            if (eval(n->kids[i], root, depth + 1))
                return false;
        return true;
    case K_NOT:
        return !eval(n->kids[0], root, depth + 1);
    case K_FALSE:
        return false;
    default:
        return walk(n, root, 0, depth);
    }
}

bool ldb_match(const ldb_matcher *m, const bson_t *doc)
{
    bson_value_t root = {.value_type = BSON_TYPE_DOCUMENT};
    root.value.v_doc.data = (uint8_t *)bson_get_data(doc);
    root.value.v_doc.data_len = doc->len;
    return eval(m->root, &root, 0);
}

bool ldb_match_value(const ldb_matcher *m, const char *field, const bson_value_t *v)
{
    bson_t tmp = BSON_INITIALIZER;
    bool ok = bson_append_value(&tmp, field, -1, v) && ldb_match(m, &tmp);
    bson_destroy(&tmp);
    return ok;
}
