/*
 * ldb_expr.c — compiles aggregation expressions into a small tree and evaluates it per
 * document. Every evaluation result is an owned bson_value_t (missing = BSON_TYPE_EOD),
 * which keeps ownership trivial at the cost of copying field values once.
 * Semantics follow MongoDB's documentation: field paths through arrays of documents
 * yield arrays, arithmetic on null/missing yields null, comparisons use the BSON order
 * of ldb_compare with "missing" just below null.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "ldb_expr.h"
#include "ldb_compare.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { EK_LIT, EK_PATH, EK_OBJ, EK_ARR, EK_OP } ldb_expr_kind;

struct op_def;

struct ldb_expr {
    ldb_expr_kind kind;
    bson_value_t lit;       /* EK_LIT (owned) */
    char **parts;           /* EK_PATH components; none for $$ROOT itself */
    size_t nparts;
    bool remove;            /* $$REMOVE: always missing */
    char **names;           /* EK_OBJ field names, parallel to args */
    ldb_expr **args;        /* EK_OBJ values, EK_ARR elements, EK_OP operands */
    size_t nargs;
    const struct op_def *op;
};

typedef int (*op_fn)(const ldb_expr *e, const bson_t *root, bson_value_t *out, char *err,
                     size_t err_len);

struct op_def {
    const char *name;
    int min_args, max_args; /* max -1: any number */
    op_fn fn;
    int variant; /* selects among operators sharing fn ($eq/$lt/..., $and/$or, case) */
};

/* ---------------------------------------------------------------- small helpers */

static int oom(char *err, size_t err_len)
{
    snprintf(err, err_len, "out of memory");
    return -ENOMEM;
}

static void set_missing(bson_value_t *v) { v->value_type = BSON_TYPE_EOD; }
static void set_null(bson_value_t *v) { v->value_type = BSON_TYPE_NULL; }

static void set_bool(bson_value_t *v, bool b)
{
    v->value_type = BSON_TYPE_BOOL;
    v->value.v_bool = b;
}

static void set_int32(bson_value_t *v, int32_t i)
{
    v->value_type = BSON_TYPE_INT32;
    v->value.v_int32 = i;
}

/* Takes ownership of s (bson_malloc'd, NUL-terminated, len bytes). */
static void set_str_owned(bson_value_t *v, char *s, size_t len)
{
    v->value_type = BSON_TYPE_UTF8;
    v->value.v_utf8.str = s;
    v->value.v_utf8.len = (uint32_t)len;
}

static bool is_nullish(const bson_value_t *v)
{
    return v->value_type == BSON_TYPE_EOD || v->value_type == BSON_TYPE_NULL ||
           v->value_type == BSON_TYPE_UNDEFINED;
}

static const char *tname(const bson_value_t *v)
{
    return v->value_type == BSON_TYPE_EOD ? "missing" : ldb_type_name(v->value_type);
}

void ldb_value_take_bson(bson_t *b, bson_type_t type, bson_value_t *out)
{
    uint32_t len = 0;
    uint8_t *data = bson_destroy_with_steal(b, true, &len);
    out->value_type = type;
    out->value.v_doc.data = data;
    out->value.v_doc.data_len = len;
}

bool ldb_value_truthy(const bson_value_t *v)
{
    switch (v->value_type) {
    case BSON_TYPE_EOD:
    case BSON_TYPE_NULL:
    case BSON_TYPE_UNDEFINED:
        return false;
    case BSON_TYPE_BOOL:
        return v->value.v_bool;
    case BSON_TYPE_INT32:
        return v->value.v_int32 != 0;
    case BSON_TYPE_INT64:
        return v->value.v_int64 != 0;
    case BSON_TYPE_DOUBLE:
    case BSON_TYPE_DECIMAL128:
        return ldb_number_as_double(v) != 0;
    default:
        return true;
    }
}

bool ldb_expr_is_operator(const bson_value_t *v)
{
    bson_iter_t it;
    if (v->value_type != BSON_TYPE_DOCUMENT ||
        !bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len) ||
        !bson_iter_next(&it))
        return false;
    return bson_iter_key(&it)[0] == '$';
}

/* Comparison with "missing" ranked just above MinKey and below null, as MongoDB's
 * expression comparisons do (so {$eq: ["$nosuch", null]} is false). */
static int cmp_expr_values(const bson_value_t *a, const bson_value_t *b)
{
    bool ma = a->value_type == BSON_TYPE_EOD, mb = b->value_type == BSON_TYPE_EOD;
    if (ma || mb) {
        if (ma && mb)
            return 0;
        const bson_value_t *other = ma ? b : a;
        int c = other->value_type == BSON_TYPE_MINKEY ? 1 : -1; /* missing vs other */
        return ma ? c : -c;
    }
    return ldb_value_cmp(a, b);
}

/* ---------------------------------------------------------------- numbers */

bool ldb_num_from_value(const bson_value_t *v, ldb_num *out)
{
    switch (v->value_type) {
    case BSON_TYPE_INT32:
        *out = (ldb_num){.kind = LDB_NUM_INT32, .i = v->value.v_int32};
        return true;
    case BSON_TYPE_INT64:
        *out = (ldb_num){.kind = LDB_NUM_INT64, .i = v->value.v_int64};
        return true;
    case BSON_TYPE_DOUBLE:
    case BSON_TYPE_DECIMAL128:
        *out = (ldb_num){.kind = LDB_NUM_DOUBLE, .d = ldb_number_as_double(v)};
        return true;
    default:
        return false;
    }
}

double ldb_num_as_double(const ldb_num *n)
{
    return n->kind == LDB_NUM_DOUBLE ? n->d : (double)n->i;
}

/* An integer result of kind at least k, or a double when it left the int64 range. */
static void num_int_result(ldb_num *acc, ldb_num_kind k, int64_t r, bool overflow, double exact)
{
    if (overflow) {
        acc->kind = LDB_NUM_DOUBLE;
        acc->d = exact;
        return;
    }
    if (k == LDB_NUM_INT32 && (r < INT32_MIN || r > INT32_MAX))
        k = LDB_NUM_INT64;
    acc->kind = k;
    acc->i = r;
}

static ldb_num_kind wider(ldb_num_kind a, ldb_num_kind b) { return a > b ? a : b; }

void ldb_num_add(ldb_num *acc, const ldb_num *x)
{
    ldb_num_kind k = wider(acc->kind, x->kind);
    if (k == LDB_NUM_DOUBLE) {
        acc->d = ldb_num_as_double(acc) + ldb_num_as_double(x);
        acc->kind = LDB_NUM_DOUBLE;
        return;
    }
    int64_t r;
    bool ov = __builtin_add_overflow(acc->i, x->i, &r);
    num_int_result(acc, k, r, ov, (double)acc->i + (double)x->i);
}

static void num_sub(ldb_num *acc, const ldb_num *x)
{
    ldb_num_kind k = wider(acc->kind, x->kind);
    if (k == LDB_NUM_DOUBLE) {
        acc->d = ldb_num_as_double(acc) - ldb_num_as_double(x);
        acc->kind = LDB_NUM_DOUBLE;
        return;
    }
    int64_t r;
    bool ov = __builtin_sub_overflow(acc->i, x->i, &r);
    num_int_result(acc, k, r, ov, (double)acc->i - (double)x->i);
}

static void num_mul(ldb_num *acc, const ldb_num *x)
{
    ldb_num_kind k = wider(acc->kind, x->kind);
    if (k == LDB_NUM_DOUBLE) {
        acc->d = ldb_num_as_double(acc) * ldb_num_as_double(x);
        acc->kind = LDB_NUM_DOUBLE;
        return;
    }
    int64_t r;
    bool ov = __builtin_mul_overflow(acc->i, x->i, &r);
    num_int_result(acc, k, r, ov, (double)acc->i * (double)x->i);
}

void ldb_num_to_value(const ldb_num *n, bson_value_t *out)
{
    switch (n->kind) {
    case LDB_NUM_INT32:
        set_int32(out, (int32_t)n->i);
        break;
    case LDB_NUM_INT64:
        out->value_type = BSON_TYPE_INT64;
        out->value.v_int64 = n->i;
        break;
    default:
        out->value_type = BSON_TYPE_DOUBLE;
        out->value.v_double = n->d;
        break;
    }
}

/* ---------------------------------------------------------------- evaluation core */

static int eval(const ldb_expr *e, const bson_t *root, bson_value_t *out, char *err,
                size_t err_len, int depth);

/* The operators evaluate their own operands so that $and/$or/$cond/$ifNull can stop
 * early; this is the common "evaluate operand i" step. */
static int arg(const ldb_expr *e, size_t i, const bson_t *root, bson_value_t *out, char *err,
               size_t err_len)
{
    return ldb_expr_eval(e->args[i], root, out, err, err_len);
}

/* Appends v (missing becomes null, as inside MongoDB array expressions) at index idx. */
static void append_elem(bson_t *arr, uint32_t idx, const bson_value_t *v)
{
    char kb[16];
    const char *key;
    size_t kl = bson_uint32_to_string(idx, &key, kb, sizeof kb);
    if (v->value_type == BSON_TYPE_EOD)
        bson_append_null(arr, key, (int)kl);
    else
        bson_append_value(arr, key, (int)kl, v);
}

static void path_walk(const bson_value_t *v, char *const *parts, size_t n, bson_value_t *out,
                      int depth);

/* "$arr.x" over an array: each document element contributes its x (when present), a
 * nested array contributes its own array of results, scalars contribute nothing. */
static void path_walk_array(const bson_value_t *arr, char *const *parts, size_t n,
                            bson_value_t *out, int depth)
{
    bson_t res = BSON_INITIALIZER;
    bson_iter_t it;
    uint32_t idx = 0;
    if (depth <= LDB_MAX_DEPTH &&
        bson_iter_init_from_data(&it, arr->value.v_doc.data, arr->value.v_doc.data_len)) {
        while (bson_iter_next(&it)) {
            const bson_value_t *e = bson_iter_value(&it);
            bson_value_t r;
            if (e->value_type == BSON_TYPE_DOCUMENT)
                path_walk(e, parts, n, &r, depth + 1);
            else if (e->value_type == BSON_TYPE_ARRAY)
                path_walk_array(e, parts, n, &r, depth + 1);
            else
                continue;
            if (r.value_type != BSON_TYPE_EOD)
                append_elem(&res, idx++, &r);
            bson_value_destroy(&r);
        }
    }
    ldb_value_take_bson(&res, BSON_TYPE_ARRAY, out);
}

static void path_walk(const bson_value_t *v, char *const *parts, size_t n, bson_value_t *out,
                      int depth)
{
    set_missing(out);
    if (n == 0) {
        bson_value_copy(v, out);
        return;
    }
    if (v->value_type == BSON_TYPE_ARRAY) {
        path_walk_array(v, parts, n, out, depth);
        return;
    }
    bson_iter_t it;
    if (v->value_type != BSON_TYPE_DOCUMENT || depth > LDB_MAX_DEPTH ||
        !bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len) ||
        !bson_iter_find_w_len(&it, parts[0], (int)strlen(parts[0])))
        return;
    path_walk(bson_iter_value(&it), parts + 1, n - 1, out, depth + 1);
}

static int eval(const ldb_expr *e, const bson_t *root, bson_value_t *out, char *err,
                size_t err_len, int depth)
{
    set_missing(out);
    switch (e->kind) {
    case EK_LIT:
        bson_value_copy(&e->lit, out);
        return 0;
    case EK_PATH: {
        if (e->remove)
            return 0;
        bson_value_t r = {.value_type = BSON_TYPE_DOCUMENT};
        r.value.v_doc.data = (uint8_t *)bson_get_data(root);
        r.value.v_doc.data_len = root->len;
        path_walk(&r, e->parts, e->nparts, out, 0);
        return 0;
    }
    case EK_OBJ:
    case EK_ARR: {
        bson_t b = BSON_INITIALIZER;
        for (size_t i = 0; i < e->nargs; i++) {
            bson_value_t v;
            int rc = eval(e->args[i], root, &v, err, err_len, depth + 1);
            if (rc < 0) {
                bson_destroy(&b);
                return rc;
            }
            if (e->kind == EK_ARR)
                append_elem(&b, (uint32_t)i, &v);
            else if (v.value_type != BSON_TYPE_EOD)
                bson_append_value(&b, e->names[i], -1, &v);
            bson_value_destroy(&v);
        }
        ldb_value_take_bson(&b, e->kind == EK_ARR ? BSON_TYPE_ARRAY : BSON_TYPE_DOCUMENT, out);
        return 0;
    }
    case EK_OP:
        return e->op->fn(e, root, out, err, err_len);
    }
    return 0;
}

int ldb_expr_eval(const ldb_expr *e, const bson_t *root, bson_value_t *out, char *err,
                  size_t err_len)
{
    int rc = eval(e, root, out, err, err_len, 0);
    if (rc < 0) {
        bson_value_destroy(out);
        set_missing(out);
    }
    return rc;
}

/* ---------------------------------------------------------------- arithmetic */

/* $add (variant 0: numbers plus at most one date, giving a date) and $multiply
 * (variant 1: numbers only) fold their operands left to right; a null or missing
 * operand makes the result null. */
static int op_add_mul(const ldb_expr *e, const bson_t *root, bson_value_t *out, char *err,
                      size_t err_len)
{
    bool mul = e->op->variant != 0;
    ldb_num acc = {.kind = LDB_NUM_INT32, .i = mul ? 1 : 0};
    bool have_date = false;
    int64_t date = 0;
    for (size_t i = 0; i < e->nargs; i++) {
        bson_value_t v;
        ldb_num n;
        int rc = arg(e, i, root, &v, err, err_len);
        if (rc < 0)
            return rc;
        if (is_nullish(&v)) {
            set_null(out);
            return 0;
        }
        if (!mul && v.value_type == BSON_TYPE_DATE_TIME) {
            if (have_date) {
                snprintf(err, err_len, "only one date allowed in an $add expression");
                return -EINVAL;
            }
            have_date = true;
            date = v.value.v_datetime;
            continue;
        }
        if (!ldb_num_from_value(&v, &n)) {
            snprintf(err, err_len, "%s only supports numeric%s types, not %s", e->op->name,
                     mul ? "" : " or date", tname(&v));
            bson_value_destroy(&v);
            return -EINVAL;
        }
        if (mul)
            num_mul(&acc, &n);
        else
            ldb_num_add(&acc, &n);
    }
    if (have_date) {
        out->value_type = BSON_TYPE_DATE_TIME;
        out->value.v_datetime = date + (acc.kind == LDB_NUM_DOUBLE ? llround(acc.d) : acc.i);
        return 0;
    }
    ldb_num_to_value(&acc, out);
    return 0;
}

/* Evaluates both operands of a binary operator; *null_out is set when either is
 * null/missing (the operator's result is then null). */
static int two_args(const ldb_expr *e, const bson_t *root, bson_value_t *a, bson_value_t *b,
                    bool *null_out, char *err, size_t err_len)
{
    int rc = arg(e, 0, root, a, err, err_len);
    if (rc < 0)
        return rc;
    rc = arg(e, 1, root, b, err, err_len);
    if (rc < 0) {
        bson_value_destroy(a);
        return rc;
    }
    *null_out = is_nullish(a) || is_nullish(b);
    return 0;
}

static void destroy2(bson_value_t *a, bson_value_t *b)
{
    bson_value_destroy(a);
    bson_value_destroy(b);
}

static int op_subtract(const ldb_expr *e, const bson_t *root, bson_value_t *out, char *err,
                       size_t err_len)
{
    bson_value_t a, b;
    bool nul;
    ldb_num x, y;
    int rc = two_args(e, root, &a, &b, &nul, err, err_len);
    if (rc < 0)
        return rc;
    if (nul) {
        set_null(out);
    } else if (ldb_num_from_value(&a, &x) && ldb_num_from_value(&b, &y)) {
        num_sub(&x, &y);
        ldb_num_to_value(&x, out);
    } else if (a.value_type == BSON_TYPE_DATE_TIME && b.value_type == BSON_TYPE_DATE_TIME) {
        out->value_type = BSON_TYPE_INT64;
        out->value.v_int64 = a.value.v_datetime - b.value.v_datetime;
    } else if (a.value_type == BSON_TYPE_DATE_TIME && ldb_num_from_value(&b, &y)) {
        out->value_type = BSON_TYPE_DATE_TIME;
        out->value.v_datetime =
            a.value.v_datetime - (y.kind == LDB_NUM_DOUBLE ? llround(y.d) : y.i);
    } else {
        snprintf(err, err_len, "can't $subtract %s from %s", tname(&b), tname(&a));
        rc = -EINVAL;
    }
    destroy2(&a, &b);
    return rc;
}

/* $divide and $mod: two numbers, the divisor non-zero. */
static int div_args(const ldb_expr *e, const bson_t *root, const char *name, ldb_num *x,
                    ldb_num *y, bool *nul, char *err, size_t err_len)
{
    bson_value_t a, b;
    int rc = two_args(e, root, &a, &b, nul, err, err_len);
    if (rc < 0 || *nul) {
        if (rc == 0)
            destroy2(&a, &b);
        return rc;
    }
    if (!ldb_num_from_value(&a, x) || !ldb_num_from_value(&b, y)) {
        snprintf(err, err_len, "%s only supports numeric types, not %s and %s", name, tname(&a),
                 tname(&b));
        rc = -EINVAL;
    } else if (ldb_num_as_double(y) == 0) {
        snprintf(err, err_len, "can't %s by zero", name);
        rc = -EINVAL;
    }
    destroy2(&a, &b);
    return rc;
}

/* $divide (variant 0) always gives a double; $mod (variant 1) keeps integer types. */
static int op_divmod(const ldb_expr *e, const bson_t *root, bson_value_t *out, char *err,
                     size_t err_len)
{
    ldb_num x, y, r;
    bool nul;
    int rc = div_args(e, root, e->op->name, &x, &y, &nul, err, err_len);
    if (rc < 0)
        return rc;
    if (nul) {
        set_null(out);
        return 0;
    }
    if (e->op->variant == 0) {
        r.kind = LDB_NUM_DOUBLE;
        r.d = ldb_num_as_double(&x) / ldb_num_as_double(&y);
    } else if (x.kind == LDB_NUM_DOUBLE || y.kind == LDB_NUM_DOUBLE) {
        r.kind = LDB_NUM_DOUBLE;
        r.d = fmod(ldb_num_as_double(&x), ldb_num_as_double(&y));
    } else {
        r.kind = wider(x.kind, y.kind);
        r.i = y.i == -1 ? 0 : x.i % y.i; /* INT64_MIN % -1 traps */
    }
    ldb_num_to_value(&r, out);
    return 0;
}

/* ---------------------------------------------------------------- comparison, logic */

enum cmp_op { CMP_EQ, CMP_NE, CMP_GT, CMP_GTE, CMP_LT, CMP_LTE, CMP_CMP };

static int op_compare(const ldb_expr *e, const bson_t *root, bson_value_t *out, char *err,
                      size_t err_len)
{
    enum cmp_op op = (enum cmp_op)e->op->variant;
    bson_value_t a, b;
    bool nul;
    int rc = two_args(e, root, &a, &b, &nul, err, err_len);
    if (rc < 0)
        return rc;
    int c = cmp_expr_values(&a, &b);
    destroy2(&a, &b);
    switch (op) {
    case CMP_EQ: set_bool(out, c == 0); break;
    case CMP_NE: set_bool(out, c != 0); break;
    case CMP_GT: set_bool(out, c > 0); break;
    case CMP_GTE: set_bool(out, c >= 0); break;
    case CMP_LT: set_bool(out, c < 0); break;
    case CMP_LTE: set_bool(out, c <= 0); break;
    case CMP_CMP: set_int32(out, c < 0 ? -1 : c > 0); break;
    }
    return 0;
}


/* Truthiness of operand i, through *t. */
static int arg_truthy(const ldb_expr *e, size_t i, const bson_t *root, bool *t, char *err,
                      size_t err_len)
{
    bson_value_t v;
    int rc = arg(e, i, root, &v, err, err_len);
    if (rc < 0)
        return rc;
    *t = ldb_value_truthy(&v);
    bson_value_destroy(&v);
    return 0;
}

/* $and (variant 0) stops at the first false operand, $or (variant 1) at the first
 * true one. */
static int op_and_or(const ldb_expr *e, const bson_t *root, bson_value_t *out, char *err,
                     size_t err_len)
{
    bool stop_on = e->op->variant != 0;
    for (size_t i = 0; i < e->nargs; i++) {
        bool t;
        int rc = arg_truthy(e, i, root, &t, err, err_len);
        if (rc < 0)
            return rc;
        if (t == stop_on) {
            set_bool(out, stop_on);
            return 0;
        }
    }
    set_bool(out, !stop_on);
    return 0;
}

static int op_not(const ldb_expr *e, const bson_t *root, bson_value_t *out, char *err,
                  size_t err_len)
{
    bool t;
    int rc = arg_truthy(e, 0, root, &t, err, err_len);
    if (rc == 0)
        set_bool(out, !t);
    return rc;
}

/* Operands are [if, then, else] whichever form was written (compile normalises). */
static int op_cond(const ldb_expr *e, const bson_t *root, bson_value_t *out, char *err,
                   size_t err_len)
{
    bool t;
    int rc = arg_truthy(e, 0, root, &t, err, err_len);
    if (rc < 0)
        return rc;
    return arg(e, t ? 1 : 2, root, out, err, err_len);
}

static int op_ifnull(const ldb_expr *e, const bson_t *root, bson_value_t *out, char *err,
                     size_t err_len)
{
    for (size_t i = 0; i + 1 < e->nargs; i++) {
        int rc = arg(e, i, root, out, err, err_len);
        if (rc < 0)
            return rc;
        if (!is_nullish(out))
            return 0;
        bson_value_destroy(out);
    }
    return arg(e, e->nargs - 1, root, out, err, err_len);
}

/* ---------------------------------------------------------------- strings, arrays */

static int op_concat(const ldb_expr *e, const bson_t *root, bson_value_t *out, char *err,
                     size_t err_len)
{
    bson_string_t *s = bson_string_new(NULL);
    for (size_t i = 0; i < e->nargs; i++) {
        bson_value_t v;
        int rc = arg(e, i, root, &v, err, err_len);
        if (rc < 0) {
            bson_string_free(s, true);
            return rc;
        }
        if (is_nullish(&v)) {
            bson_string_free(s, true);
            set_null(out);
            return 0;
        }
        if (v.value_type != BSON_TYPE_UTF8) {
            snprintf(err, err_len, "$concat only supports strings, not %s", tname(&v));
            bson_value_destroy(&v);
            bson_string_free(s, true);
            return -EINVAL;
        }
        bson_string_append(s, v.value.v_utf8.str);
        bson_value_destroy(&v);
    }
    size_t len = s->len;
    set_str_owned(out, bson_string_free(s, false), len);
    return 0;
}

/* Shortest decimal form of d that reads back as d ("0.1", not "0.10000000000000001"). */
static void format_double(double d, char *buf, size_t len)
{
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, len, "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            return;
    }
}

/* $toLower/$toUpper: null and missing give "", numbers their decimal form, ASCII only
 * (as MongoDB). */
static int op_case(const ldb_expr *e, const bson_t *root, bson_value_t *out, char *err,
                   size_t err_len)
{
    bool upper = e->op->variant != 0;
    bson_value_t v;
    int rc = arg(e, 0, root, &v, err, err_len);
    if (rc < 0)
        return rc;
    char num[64];
    const char *src = NULL;
    size_t len = 0;
    switch (v.value_type) {
    case BSON_TYPE_EOD:
    case BSON_TYPE_NULL:
    case BSON_TYPE_UNDEFINED:
        src = "";
        break;
    case BSON_TYPE_UTF8:
        src = v.value.v_utf8.str;
        len = v.value.v_utf8.len;
        break;
    case BSON_TYPE_INT32:
        snprintf(num, sizeof num, "%" PRId32, v.value.v_int32);
        src = num;
        break;
    case BSON_TYPE_INT64:
        snprintf(num, sizeof num, "%" PRId64, v.value.v_int64);
        src = num;
        break;
    case BSON_TYPE_DOUBLE:
        format_double(v.value.v_double, num, sizeof num);
        src = num;
        break;
    default:
        snprintf(err, err_len, "%s can't convert from BSON type %s to String",
                 upper ? "$toUpper" : "$toLower", tname(&v));
        bson_value_destroy(&v);
        return -EINVAL;
    }
    if (v.value_type != BSON_TYPE_UTF8)
        len = strlen(src);
    char *s = bson_malloc(len + 1);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)src[i];
        s[i] = (char)(c < 0x80 ? (upper ? toupper(c) : tolower(c)) : c);
    }
    s[len] = '\0';
    bson_value_destroy(&v);
    set_str_owned(out, s, len);
    return 0;
}

static int op_size(const ldb_expr *e, const bson_t *root, bson_value_t *out, char *err,
                   size_t err_len)
{
    bson_value_t v;
    int rc = arg(e, 0, root, &v, err, err_len);
    if (rc < 0)
        return rc;
    if (v.value_type != BSON_TYPE_ARRAY) {
        snprintf(err, err_len, "The argument to $size must be an array. Type of argument: %s",
                 tname(&v));
        bson_value_destroy(&v);
        return -EINVAL;
    }
    bson_t a;
    int32_t n = 0;
    if (bson_init_static(&a, v.value.v_doc.data, v.value.v_doc.data_len))
        n = (int32_t)bson_count_keys(&a);
    bson_value_destroy(&v);
    set_int32(out, n);
    return 0;
}

static int op_arrayelemat(const ldb_expr *e, const bson_t *root, bson_value_t *out, char *err,
                          size_t err_len)
{
    bson_value_t a, b;
    bool nul;
    int rc = two_args(e, root, &a, &b, &nul, err, err_len);
    if (rc < 0)
        return rc;
    if (nul) {
        set_null(out);
        destroy2(&a, &b);
        return 0;
    }
    ldb_num idx;
    if (a.value_type != BSON_TYPE_ARRAY) {
        snprintf(err, err_len, "$arrayElemAt's first argument must be an array, but is %s",
                 tname(&a));
        rc = -EINVAL;
    } else if (!ldb_num_from_value(&b, &idx)) {
        snprintf(err, err_len, "$arrayElemAt's second argument must be a numeric value, but is %s",
                 tname(&b));
        rc = -EINVAL;
    } else if (idx.kind == LDB_NUM_DOUBLE ? (idx.d != trunc(idx.d) || idx.d < INT32_MIN ||
                                             idx.d > INT32_MAX)
                                          : (idx.i < INT32_MIN || idx.i > INT32_MAX)) {
        snprintf(err, err_len,
                 "$arrayElemAt's second argument must be representable as a 32-bit integer");
        rc = -EINVAL;
    } else {
        int64_t i = idx.kind == LDB_NUM_DOUBLE ? (int64_t)idx.d : idx.i;
        bson_t arr;
        bson_iter_t it;
        if (bson_init_static(&arr, a.value.v_doc.data, a.value.v_doc.data_len)) {
            int64_t n = bson_count_keys(&arr);
            if (i < 0)
                i += n;
            if (i >= 0 && i < n && bson_iter_init(&it, &arr)) {
                for (int64_t k = 0; bson_iter_next(&it); k++) {
                    if (k == i) {
                        bson_value_copy(bson_iter_value(&it), out);
                        break;
                    }
                }
            }
        }
    }
    destroy2(&a, &b);
    return rc;
}

/* ---------------------------------------------------------------- compilation */

static const struct op_def ops[] = {
    {"$add", 0, -1, op_add_mul, 0},
    {"$subtract", 2, 2, op_subtract, 0},
    {"$multiply", 0, -1, op_add_mul, 1},
    {"$divide", 2, 2, op_divmod, 0},
    {"$mod", 2, 2, op_divmod, 1},
    {"$eq", 2, 2, op_compare, CMP_EQ},
    {"$ne", 2, 2, op_compare, CMP_NE},
    {"$gt", 2, 2, op_compare, CMP_GT},
    {"$gte", 2, 2, op_compare, CMP_GTE},
    {"$lt", 2, 2, op_compare, CMP_LT},
    {"$lte", 2, 2, op_compare, CMP_LTE},
    {"$cmp", 2, 2, op_compare, CMP_CMP},
    {"$and", 0, -1, op_and_or, 0},
    {"$or", 0, -1, op_and_or, 1},
    {"$not", 1, 1, op_not, 0},
    {"$cond", 3, 3, op_cond, 0},
    {"$ifNull", 2, -1, op_ifnull, 0},
    {"$concat", 0, -1, op_concat, 0},
    {"$toLower", 1, 1, op_case, 0},
    {"$toUpper", 1, 1, op_case, 1},
    {"$size", 1, 1, op_size, 0},
    {"$arrayElemAt", 2, 2, op_arrayelemat, 0},
};

void ldb_expr_free(ldb_expr *e)
{
    if (!e)
        return;
    if (e->kind == EK_LIT)
        bson_value_destroy(&e->lit);
    for (size_t i = 0; i < e->nparts; i++)
        free(e->parts[i]);
    free(e->parts);
    for (size_t i = 0; i < e->nargs; i++) {
        ldb_expr_free(e->args[i]);
        if (e->names)
            free(e->names[i]);
    }
    free(e->names);
    free(e->args);
    free(e);
}

static int compile(const bson_value_t *spec, ldb_expr **out, char *err, size_t err_len,
                   int depth);

/* Splits "a.b.c" into e->parts. */
static int split_path(ldb_expr *e, const char *path, const char *whole, char *err,
                      size_t err_len)
{
    size_t n = 1;
    for (const char *p = path; *p; p++)
        n += *p == '.';
    e->parts = calloc(n, sizeof *e->parts);
    if (!e->parts)
        return oom(err, err_len);
    const char *s = path;
    for (size_t i = 0; i < n; i++) {
        const char *dot = strchr(s, '.');
        size_t len = dot ? (size_t)(dot - s) : strlen(s);
        if (len == 0) {
            snprintf(err, err_len, "FieldPath '%s' must not contain an empty field name", whole);
            return -EINVAL;
        }
        if (s[0] == '$') {
            snprintf(err, err_len, "FieldPath field names may not start with '$': '%s'", whole);
            return -EINVAL;
        }
        if (!(e->parts[i] = strndup(s, len)))
            return oom(err, err_len);
        e->nparts++;
        s = dot ? dot + 1 : s + len;
    }
    return 0;
}

/* "$a.b" (a field of $$CURRENT) or "$$ROOT[.a.b]", "$$CURRENT[.a.b]", "$$REMOVE". */
static int compile_path(ldb_expr *e, const char *s, char *err, size_t err_len)
{
    e->kind = EK_PATH;
    if (s[1] != '$') {
        if (s[1] == '\0') {
            snprintf(err, err_len, "'$' by itself is not a valid FieldPath");
            return -EINVAL;
        }
        return split_path(e, s + 1, s, err, err_len);
    }
    const char *var = s + 2;
    const char *dot = strchr(var, '.');
    size_t vlen = dot ? (size_t)(dot - var) : strlen(var);
    if ((vlen == 4 && memcmp(var, "ROOT", 4) == 0) || (vlen == 7 && memcmp(var, "CURRENT", 7) == 0))
        return dot ? split_path(e, dot + 1, s, err, err_len) : 0;
    if (vlen == 6 && memcmp(var, "REMOVE", 6) == 0 && !dot) {
        e->remove = true;
        return 0;
    }
    snprintf(err, err_len, "Use of undefined variable: %.*s", (int)vlen, var);
    return -EINVAL;
}

/* Compiles the elements of an array (or one value) into e->args. */
static int compile_args(ldb_expr *e, const bson_value_t *v, bool as_list, char *err,
                        size_t err_len, int depth)
{
    bson_iter_t it;
    size_t n = 1;
    if (as_list) {
        bson_t a;
        if (!bson_init_static(&a, v->value.v_doc.data, v->value.v_doc.data_len)) {
            snprintf(err, err_len, "invalid BSON array");
            return -EINVAL;
        }
        n = bson_count_keys(&a);
    }
    e->args = calloc(n ? n : 1, sizeof *e->args);
    if (!e->args)
        return oom(err, err_len);
    if (!as_list) {
        int rc = compile(v, &e->args[0], err, err_len, depth + 1);
        if (rc == 0)
            e->nargs = 1;
        return rc;
    }
    if (!bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len))
        return -EINVAL;
    while (e->nargs < n && bson_iter_next(&it)) {
        int rc = compile(bson_iter_value(&it), &e->args[e->nargs], err, err_len, depth + 1);
        if (rc < 0)
            return rc;
        e->nargs++;
    }
    return 0;
}

/* {$cond: {if:, then:, else:}} becomes the operand list [if, then, else]. */
static int compile_cond_doc(ldb_expr *e, const bson_value_t *v, char *err, size_t err_len,
                            int depth)
{
    static const char *const names[3] = {"if", "then", "else"};
    bson_iter_t it;
    if (!(e->args = calloc(3, sizeof *e->args)))
        return oom(err, err_len);
    e->nargs = 3;
    if (!bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len))
        return -EINVAL;
    while (bson_iter_next(&it)) {
        const char *k = bson_iter_key(&it);
        int slot = -1;
        for (int i = 0; i < 3; i++)
            if (strcmp(k, names[i]) == 0)
                slot = i;
        if (slot < 0) {
            snprintf(err, err_len, "Unrecognized parameter to $cond: %s", k);
            return -EINVAL;
        }
        ldb_expr_free(e->args[slot]);
        e->args[slot] = NULL;
        int rc = compile(bson_iter_value(&it), &e->args[slot], err, err_len, depth + 1);
        if (rc < 0)
            return rc;
    }
    for (int i = 0; i < 3; i++) {
        if (!e->args[i]) {
            snprintf(err, err_len, "Missing '%s' parameter to $cond", names[i]);
            return -EINVAL;
        }
    }
    return 0;
}

static int compile_op(ldb_expr *e, const char *name, const bson_value_t *v, char *err,
                      size_t err_len, int depth)
{
    if (strcmp(name, "$literal") == 0) {
        e->kind = EK_LIT;
        bson_value_copy(v, &e->lit);
        return 0;
    }
    e->kind = EK_OP;
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (strcmp(ops[i].name, name) == 0)
            e->op = &ops[i];
    if (!e->op) {
        snprintf(err, err_len, "unrecognized expression operator '%s'", name);
        return -EINVAL;
    }
    int rc;
    if (strcmp(name, "$cond") == 0 && v->value_type == BSON_TYPE_DOCUMENT &&
        !ldb_expr_is_operator(v))
        rc = compile_cond_doc(e, v, err, err_len, depth);
    else
        rc = compile_args(e, v, v->value_type == BSON_TYPE_ARRAY, err, err_len, depth);
    if (rc < 0)
        return rc;
    if ((int)e->nargs < e->op->min_args || (e->op->max_args >= 0 && (int)e->nargs > e->op->max_args)) {
        if (e->op->min_args == e->op->max_args)
            snprintf(err, err_len, "Expression %s takes exactly %d arguments. %zu were passed in.",
                     name, e->op->min_args, e->nargs);
        else
            snprintf(err, err_len, "Expression %s takes at least %d arguments, and %zu were passed in.",
                     name, e->op->min_args, e->nargs);
        return -EINVAL;
    }
    return 0;
}

/* {a: expr, b: expr} builds a document; a missing value leaves its field out. */
static int compile_object(ldb_expr *e, const bson_value_t *v, char *err, size_t err_len,
                          int depth)
{
    bson_t d;
    bson_iter_t it;
    e->kind = EK_OBJ;
    if (!bson_init_static(&d, v->value.v_doc.data, v->value.v_doc.data_len) ||
        !bson_iter_init(&it, &d)) {
        snprintf(err, err_len, "invalid BSON document");
        return -EINVAL;
    }
    size_t n = bson_count_keys(&d);
    e->args = calloc(n ? n : 1, sizeof *e->args);
    e->names = calloc(n ? n : 1, sizeof *e->names);
    if (!e->args || !e->names)
        return oom(err, err_len);
    while (e->nargs < n && bson_iter_next(&it)) {
        const char *k = bson_iter_key(&it);
        if (k[0] == '$') {
            snprintf(err, err_len,
                     "an expression specification must contain exactly one field, the name of "
                     "the expression, but found '%s' among other fields", k);
            return -EINVAL;
        }
        if (strchr(k, '.')) {
            snprintf(err, err_len, "FieldPath field names may not contain '.': '%s'", k);
            return -EINVAL;
        }
        if (!(e->names[e->nargs] = strdup(k)))
            return oom(err, err_len);
        int rc = compile(bson_iter_value(&it), &e->args[e->nargs], err, err_len, depth + 1);
        if (rc < 0) {
            free(e->names[e->nargs]);
            e->names[e->nargs] = NULL;
            return rc;
        }
        e->nargs++;
    }
    return 0;
}

static int compile(const bson_value_t *spec, ldb_expr **out, char *err, size_t err_len,
                   int depth)
{
    *out = NULL;
    if (depth > LDB_MAX_DEPTH) {
        snprintf(err, err_len, "expression nesting exceeds %d levels", LDB_MAX_DEPTH);
        return -EINVAL;
    }
    ldb_expr *e = calloc(1, sizeof *e);
    if (!e)
        return oom(err, err_len);
    int rc = 0;
    if (spec->value_type == BSON_TYPE_UTF8 && spec->value.v_utf8.str[0] == '$') {
        rc = compile_path(e, spec->value.v_utf8.str, err, err_len);
    } else if (spec->value_type == BSON_TYPE_ARRAY) {
        e->kind = EK_ARR;
        rc = compile_args(e, spec, true, err, err_len, depth);
    } else if (spec->value_type == BSON_TYPE_DOCUMENT && ldb_expr_is_operator(spec)) {
        bson_iter_t it;
        bson_t d;
        if (!bson_init_static(&d, spec->value.v_doc.data, spec->value.v_doc.data_len) ||
            !bson_iter_init(&it, &d) || !bson_iter_next(&it)) {
            rc = -EINVAL;
        } else if (bson_count_keys(&d) != 1) {
            snprintf(err, err_len,
                     "an expression specification must contain exactly one field, the name of "
                     "the expression, but found %u fields", bson_count_keys(&d));
            rc = -EINVAL;
        } else {
            rc = compile_op(e, bson_iter_key(&it), bson_iter_value(&it), err, err_len, depth);
        }
    } else if (spec->value_type == BSON_TYPE_DOCUMENT) {
        rc = compile_object(e, spec, err, err_len, depth);
    } else {
        e->kind = EK_LIT;
        bson_value_copy(spec, &e->lit);
    }
    if (rc < 0) {
        ldb_expr_free(e);
        return rc;
    }
    *out = e;
    return 0;
}

int ldb_expr_compile(const bson_value_t *spec, ldb_expr **out, char *err, size_t err_len)
{
    return compile(spec, out, err, err_len, 0);
}
