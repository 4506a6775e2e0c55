/*
 * ldb_update.c — update operators and replacement updates. The document is loaded into
 * a small mutable tree (struct un), every operator edits the tree, and the tree is
 * serialised back; an error anywhere simply discards the tree, so an update is applied
 * completely or not at all. Numeric types follow MongoDB: int32 arithmetic that
 * overflows widens to int64, int64 overflow is an error, any double makes a double.
 */
#include "ldb_update.h"
#include "ldb_compare.h"
#include "ldb_match.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* A node of the mutable document tree. Containers keep children; scalars own a copy of
 * their value (bson_value_copy). Array children have no key: indexes are positional. */
struct un {
    char *key;
    bson_type_t type;
    bson_value_t val; /* scalars only */
    struct un **kids;
    size_t n, cap;
};

struct uctx {
    char *err;
    size_t err_len;
    int rc;
    int64_t now_ms;
    bool inserting;
};

static int fail(struct uctx *c, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(struct uctx *c, int rc, const char *fmt, ...)
{
    if (c->rc == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err, c->err_len, fmt, ap);
        va_end(ap);
        c->rc = rc;
    }
    return c->rc;
}

static bool is_container(bson_type_t t) { return t == BSON_TYPE_DOCUMENT || t == BSON_TYPE_ARRAY; }

static void un_free(struct un *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->n; i++)
        un_free(n->kids[i]);
    free(n->kids);
    if (!is_container(n->type))
        bson_value_destroy(&n->val);
    free(n->key);
    free(n);
}

static int un_push(struct uctx *c, struct un *p, struct un *k, size_t at)
{
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 4;
        struct un **nk = realloc(p->kids, cap * sizeof(*nk));
        if (!nk)
            return fail(c, -ENOMEM, "out of memory");
        p->kids = nk;
        p->cap = cap;
    }
    if (at > p->n)
        at = p->n;
    memmove(&p->kids[at + 1], &p->kids[at], (p->n - at) * sizeof(*p->kids));
    p->kids[at] = k;
    p->n++;
    return 0;
}

static struct un *un_detach(struct un *p, size_t i)
{
    struct un *k = p->kids[i];
    memmove(&p->kids[i], &p->kids[i + 1], (p->n - i - 1) * sizeof(*p->kids));
    p->n--;
    return k;
}

static struct un *un_new(struct uctx *c, const char *key, bson_type_t t)
{
    struct un *n = calloc(1, sizeof(*n));
    if (!n || (key && !(n->key = strdup(key)))) {
        free(n);
        fail(c, -ENOMEM, "out of memory");
        return NULL;
    }
    n->type = t;
    n->val.value_type = t;
    return n;
}

static struct un *un_from_value(struct uctx *c, const char *key, const bson_value_t *v, int depth)
{
    if (depth > LDB_MAX_DEPTH) {
        fail(c, -EINVAL, "document nesting exceeds %d levels", LDB_MAX_DEPTH);
        return NULL;
    }
    struct un *n = un_new(c, key, v->value_type);
    if (!n)
        return NULL;
    if (!is_container(v->value_type)) {
        bson_value_copy(v, &n->val);
        return n;
    }
    bson_iter_t it;
    if (!bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len)) {
        un_free(n);
        fail(c, -EINVAL, "document is not valid BSON");
        return NULL;
    }
    bool arr = v->value_type == BSON_TYPE_ARRAY;
    while (bson_iter_next(&it)) {
        struct un *k = un_from_value(c, arr ? NULL : bson_iter_key(&it), bson_iter_value(&it), depth + 1);
        if (!k || un_push(c, n, k, n->n) < 0) {
            un_free(k);
            un_free(n);
            return NULL;
        }
    }
    return n;
}

static struct un *un_from_doc(struct uctx *c, const bson_t *doc)
{
    bson_value_t v = {.value_type = BSON_TYPE_DOCUMENT};
    v.value.v_doc.data = (uint8_t *)bson_get_data(doc);
    v.value.v_doc.data_len = doc->len;
    return un_from_value(c, NULL, &v, 0);
}

static void un_append_kids(bson_t *b, const struct un *n);

static void un_append(bson_t *b, const char *key, int klen, const struct un *n)
{
    bson_t sub;
    if (n->type == BSON_TYPE_DOCUMENT) {
        bson_append_document_begin(b, key, klen, &sub);
        un_append_kids(&sub, n);
        bson_append_document_end(b, &sub);
    } else if (n->type == BSON_TYPE_ARRAY) {
        bson_append_array_begin(b, key, klen, &sub);
        un_append_kids(&sub, n);
        bson_append_array_end(b, &sub);
    } else {
        bson_append_value(b, key, klen, &n->val);
    }
}

static void un_append_kids(bson_t *b, const struct un *n)
{
    for (size_t i = 0; i < n->n; i++) {
        if (n->type == BSON_TYPE_ARRAY) {
            char kb[16];
            const char *key;
            size_t kl = bson_uint32_to_string((uint32_t)i, &key, kb, sizeof(kb));
            un_append(b, key, (int)kl, n->kids[i]);
        } else {
            un_append(b, n->kids[i]->key, -1, n->kids[i]);
        }
    }
}

/* A bson_value_t view of a node; containers are serialised into tmp, which the caller
 * bson_destroy()s after using the value. */
static void un_value(const struct un *n, bson_t *tmp, bson_value_t *out)
{
    bson_init(tmp);
    if (!is_container(n->type)) {
        *out = n->val;
        return;
    }
    un_append_kids(tmp, n);
    out->value_type = n->type;
    out->value.v_doc.data = (uint8_t *)bson_get_data(tmp);
    out->value.v_doc.data_len = tmp->len;
}

static int un_cmp_value(const struct un *n, const bson_value_t *v)
{
    bson_t tmp;
    bson_value_t nv;
    un_value(n, &tmp, &nv);
    int c = ldb_value_cmp(&nv, v);
    bson_destroy(&tmp);
    return c;
}

static int un_cmp(const struct un *a, const struct un *b)
{
    bson_t tb;
    bson_value_t vb;
    un_value(b, &tb, &vb);
    int c = un_cmp_value(a, &vb);
    bson_destroy(&tb);
    return c;
}

/* ---- paths ---------------------------------------------------------------------- */

struct path {
    char *parts[LDB_MAX_DEPTH + 1];
    int n;
    const char *text;
};

static void path_free(struct path *p)
{
    for (int i = 0; i < p->n; i++)
        free(p->parts[i]);
    p->n = 0;
}

static int path_split(struct uctx *c, const char *text, struct path *p)
{
    p->n = 0;
    p->text = text;
    const char *s = text;
    for (;;) {
        const char *d = strchr(s, '.');
        size_t len = d ? (size_t)(d - s) : strlen(s);
        if (len == 0) {
            path_free(p);
            return fail(c, -EINVAL, "invalid update path '%s': empty field name", text);
        }
        if (s[0] == '$') {
            path_free(p);
            return fail(c, -EINVAL, "positional operator in '%s' is not supported", text);
        }
        if (p->n > LDB_MAX_DEPTH) {
            path_free(p);
            return fail(c, -EINVAL, "update path '%s' exceeds %d levels", text, LDB_MAX_DEPTH);
        }
        if (!(p->parts[p->n] = strndup(s, len))) {
            path_free(p);
            return fail(c, -ENOMEM, "out of memory");
        }
        p->n++;
        if (!d)
            return 0;
        s = d + 1;
    }
}

static bool parse_index(const char *s, size_t *out)
{
    uint32_t v;
    if (!ldb_path_index(s, strlen(s), &v))
        return false;
    *out = v;
    return true;
}

/* Index of child `part` in container p, or -1. */
static long find_kid(const struct un *p, const char *part)
{
    if (p->type == BSON_TYPE_DOCUMENT) {
        for (size_t i = 0; i < p->n; i++)
            if (strcmp(p->kids[i]->key, part) == 0)
                return (long)i;
        return -1;
    }
    size_t idx;
    if (p->type == BSON_TYPE_ARRAY && parse_index(part, &idx) && idx < p->n)
        return (long)idx;
    return -1;
}

/* Walks to the container that holds the last component. With create, missing
 * intermediate documents are made (and arrays padded with nulls, as MongoDB does);
 * without it *parent is NULL when the path does not exist. no_arrays rejects paths that
 * go through arrays ($rename). */
static int resolve(struct uctx *c, struct un *root, const struct path *p, bool create,
                   bool no_arrays, struct un **parent)
{
    struct un *cur = root;
    *parent = NULL;
    for (int i = 0; i < p->n - 1; i++) {
        if (cur->type == BSON_TYPE_ARRAY && no_arrays)
            return fail(c, -EINVAL, "'%s' goes through an array, which $rename does not support", p->text);
        long k = find_kid(cur, p->parts[i]);
        if (k < 0) {
            if (!create)
                return 0;
            size_t idx = 0;
            if (cur->type == BSON_TYPE_ARRAY && !parse_index(p->parts[i], &idx))
                return fail(c, -EINVAL, "cannot create field '%s' in an array (path '%s')", p->parts[i], p->text);
            struct un *nd;
            if (cur->type == BSON_TYPE_ARRAY) {
                while (cur->n < idx) {
                    struct un *nul = un_new(c, NULL, BSON_TYPE_NULL);
                    if (!nul || un_push(c, cur, nul, cur->n) < 0) {
                        un_free(nul);
                        return c->rc;
                    }
                }
            }
            nd = un_new(c, cur->type == BSON_TYPE_ARRAY ? NULL : p->parts[i], BSON_TYPE_DOCUMENT);
            if (!nd || un_push(c, cur, nd, cur->n) < 0) {
                un_free(nd);
                return c->rc;
            }
            k = (long)cur->n - 1;
        }
        struct un *next = cur->kids[k];
        if (!is_container(next->type)) {
            if (!create)
                return 0;
            return fail(c, -EINVAL, "cannot create field '%s' in element '%s' of type %s (path '%s')",
                        p->parts[i + 1], p->parts[i], ldb_type_name(next->type), p->text);
        }
        cur = next;
    }
    if (cur->type == BSON_TYPE_ARRAY) {
        size_t idx;
        if (no_arrays)
            return fail(c, -EINVAL, "'%s' goes through an array, which $rename does not support", p->text);
        if (!parse_index(p->parts[p->n - 1], &idx)) {
            if (!create)
                return 0;
            return fail(c, -EINVAL, "cannot create field '%s' in an array (path '%s')", p->parts[p->n - 1], p->text);
        }
    }
    *parent = cur;
    return 0;
}

/* Puts node k (whose key is ignored for arrays) at the last component, replacing any
 * existing value. Takes ownership of k. */
static int place(struct uctx *c, struct un *parent, const char *last, struct un *k)
{
    long i = find_kid(parent, last);
    if (parent->type == BSON_TYPE_ARRAY) {
        free(k->key);
        k->key = NULL;
    } else if (!k->key || strcmp(k->key, last) != 0) {
        free(k->key);
        if (!(k->key = strdup(last))) {
            un_free(k);
            return fail(c, -ENOMEM, "out of memory");
        }
    }
    if (i >= 0) {
        un_free(parent->kids[i]);
        parent->kids[i] = k;
        return 0;
    }
    if (parent->type == BSON_TYPE_ARRAY) {
        size_t idx = 0;
        parse_index(last, &idx);
        while (parent->n < idx) {
            struct un *nul = un_new(c, NULL, BSON_TYPE_NULL);
            if (!nul || un_push(c, parent, nul, parent->n) < 0) {
                un_free(nul);
                un_free(k);
                return c->rc;
            }
        }
    }
    if (un_push(c, parent, k, parent->n) < 0) {
        un_free(k);
        return c->rc;
    }
    return 0;
}

static int set_value(struct uctx *c, struct un *root, const struct path *p, const bson_value_t *v)
{
    struct un *parent;
    if (resolve(c, root, p, true, false, &parent) < 0)
        return c->rc;
    struct un *k = un_from_value(c, NULL, v, p->n);
    if (!k)
        return c->rc;
    return place(c, parent, p->parts[p->n - 1], k);
}

/* The node at the path, or NULL when it does not exist. */
static struct un *lookup(struct uctx *c, struct un *root, const struct path *p)
{
    struct un *parent;
    if (resolve(c, root, p, false, false, &parent) < 0 || !parent)
        return NULL;
    long i = find_kid(parent, p->parts[p->n - 1]);
    return i < 0 ? NULL : parent->kids[i];
}

/* ---- arithmetic ----------------------------------------------------------------- */

static int64_t as_i64(const bson_value_t *v)
{
    return v->value_type == BSON_TYPE_INT32 ? v->value.v_int32 : v->value.v_int64;
}

static int arith(struct uctx *c, const char *op, const char *path, const bson_value_t *a,
                 const bson_value_t *b, bson_value_t *r)
{
    if (a->value_type == BSON_TYPE_DECIMAL128 || b->value_type == BSON_TYPE_DECIMAL128)
        return fail(c, -EINVAL, "%s on '%s': decimal128 arithmetic is not supported", op, path);
    bool mul = strcmp(op, "$mul") == 0;
    if (a->value_type == BSON_TYPE_DOUBLE || b->value_type == BSON_TYPE_DOUBLE) {
        double x = ldb_number_as_double(a), y = ldb_number_as_double(b);
        r->value_type = BSON_TYPE_DOUBLE;
        r->value.v_double = mul ? x * y : x + y;
        return 0;
    }
    int64_t x = as_i64(a), y = as_i64(b), z;
    bool ovf = mul ? __builtin_mul_overflow(x, y, &z) : __builtin_add_overflow(x, y, &z);
    if (ovf)
        return fail(c, -ERANGE, "%s on '%s' overflows a 64-bit integer", op, path);
    if (a->value_type == BSON_TYPE_INT32 && b->value_type == BSON_TYPE_INT32 && z >= INT32_MIN &&
        z <= INT32_MAX) {
        r->value_type = BSON_TYPE_INT32;
        r->value.v_int32 = (int32_t)z;
    } else {
        r->value_type = BSON_TYPE_INT64;
        r->value.v_int64 = z;
    }
    return 0;
}

/* ---- operators ------------------------------------------------------------------ */

static int op_arith(struct uctx *c, struct un *root, const struct path *p, const char *op,
                    const bson_value_t *arg)
{
    if (!ldb_is_number(arg->value_type))
        return fail(c, -EINVAL, "%s needs a numeric argument for '%s', got %s", op, p->text,
                    ldb_type_name(arg->value_type));
    struct un *cur = lookup(c, root, p);
    if (c->rc)
        return c->rc;
    bson_value_t r;
    if (!cur) {
        if (strcmp(op, "$inc") == 0) {
            r = *arg;
        } else {
            /* $mul on a missing field stores zero of the multiplier's type. */
            bson_value_t zero = {.value_type = BSON_TYPE_INT32};
            if (arith(c, op, p->text, arg, &zero, &r) < 0)
                return c->rc;
        }
        return set_value(c, root, p, &r);
    }
    if (!ldb_is_number(cur->type))
        return fail(c, -EINVAL, "cannot apply %s to '%s' of non-numeric type %s", op, p->text,
                    ldb_type_name(cur->type));
    if (arith(c, op, p->text, &cur->val, arg, &r) < 0)
        return c->rc;
    cur->type = r.value_type;
    cur->val = r;
    return 0;
}

static int op_unset(struct uctx *c, struct un *root, const struct path *p)
{
    struct un *parent;
    if (resolve(c, root, p, false, false, &parent) < 0 || !parent)
        return c->rc;
    long i = find_kid(parent, p->parts[p->n - 1]);
    if (i < 0)
        return 0;
    if (parent->type == BSON_TYPE_ARRAY) {
        /* MongoDB keeps array positions stable: an unset element becomes null. */
        struct un *nul = un_new(c, NULL, BSON_TYPE_NULL);
        if (!nul)
            return c->rc;
        un_free(parent->kids[i]);
        parent->kids[i] = nul;
        return 0;
    }
    un_free(un_detach(parent, (size_t)i));
    return 0;
}

static int op_minmax(struct uctx *c, struct un *root, const struct path *p, bool is_max,
                     const bson_value_t *arg)
{
    struct un *cur = lookup(c, root, p);
    if (c->rc)
        return c->rc;
    if (cur) {
        int cmp = un_cmp_value(cur, arg); /* cross-type, by MongoDB's BSON order */
        if (is_max ? cmp >= 0 : cmp <= 0)
            return 0;
    }
    return set_value(c, root, p, arg);
}

static int op_rename(struct uctx *c, struct un *root, const struct path *p, const bson_value_t *arg)
{
    if (arg->value_type != BSON_TYPE_UTF8)
        return fail(c, -EINVAL, "$rename target for '%s' must be a string", p->text);
    struct path dst;
    if (path_split(c, arg->value.v_utf8.str, &dst) < 0)
        return c->rc;
    struct un *parent;
    int rc = 0;
    if (resolve(c, root, p, false, true, &parent) < 0 || !parent)
        goto out;
    long i = find_kid(parent, p->parts[p->n - 1]);
    if (i < 0)
        goto out;
    struct un *moved = un_detach(parent, (size_t)i);
    struct un *dparent;
    if (resolve(c, root, &dst, true, true, &dparent) < 0) {
        un_free(moved);
        goto out;
    }
    rc = place(c, dparent, dst.parts[dst.n - 1], moved);
out:
    path_free(&dst);
    return c->rc ? c->rc : rc;
}

static int op_current_date(struct uctx *c, struct un *root, const struct path *p, const bson_value_t *arg)
{
    bool ts = false;
    if (arg->value_type == BSON_TYPE_DOCUMENT) {
        bson_iter_t it;
        if (!bson_iter_init_from_data(&it, arg->value.v_doc.data, arg->value.v_doc.data_len) ||
            !bson_iter_find(&it, "$type") || !BSON_ITER_HOLDS_UTF8(&it))
            return fail(c, -EINVAL, "$currentDate for '%s' needs true or {$type: \"date\"|\"timestamp\"}", p->text);
        const char *t = bson_iter_utf8(&it, NULL);
        if (strcmp(t, "timestamp") == 0)
            ts = true;
        else if (strcmp(t, "date") != 0)
            return fail(c, -EINVAL, "$currentDate $type must be \"date\" or \"timestamp\", not \"%s\"", t);
    } else if (arg->value_type != BSON_TYPE_BOOL) {
        return fail(c, -EINVAL, "$currentDate for '%s' needs true or {$type: \"date\"|\"timestamp\"}", p->text);
    }
    bson_value_t v;
    if (ts) {
        /* Seconds plus an increment of 1: there is no oplog to order writes by. */
        v.value_type = BSON_TYPE_TIMESTAMP;
        v.value.v_timestamp.timestamp = (uint32_t)(c->now_ms / 1000);
        v.value.v_timestamp.increment = 1;
    } else {
        v.value_type = BSON_TYPE_DATE_TIME;
        v.value.v_datetime = c->now_ms;
    }
    return set_value(c, root, p, &v);
}

/* The array at the path, creating an empty one when missing (create) — NULL when
 * missing and !create. Non-arrays are an error. */
static struct un *array_at(struct uctx *c, struct un *root, const struct path *p, const char *op,
                           bool create)
{
    struct un *cur = lookup(c, root, p);
    if (c->rc)
        return NULL;
    if (!cur) {
        if (!create)
            return NULL;
        bson_value_t empty = {.value_type = BSON_TYPE_ARRAY};
        static const uint8_t empty_doc[5] = {5, 0, 0, 0, 0};
        empty.value.v_doc.data = (uint8_t *)empty_doc;
        empty.value.v_doc.data_len = 5;
        if (set_value(c, root, p, &empty) < 0)
            return NULL;
        return lookup(c, root, p);
    }
    if (cur->type != BSON_TYPE_ARRAY) {
        fail(c, -EINVAL, "%s needs an array at '%s' but found %s", op, p->text, ldb_type_name(cur->type));
        return NULL;
    }
    return cur;
}

static bool whole_number(const bson_value_t *v, int64_t *out)
{
    if (v->value_type == BSON_TYPE_INT32 || v->value_type == BSON_TYPE_INT64) {
        *out = as_i64(v);
        return true;
    }
    if (v->value_type != BSON_TYPE_DOUBLE && v->value_type != BSON_TYPE_DECIMAL128)
        return false;
    double d = ldb_number_as_double(v);
    if (!isfinite(d) || d != trunc(d) || fabs(d) > 9.2e18)
        return false;
    *out = (int64_t)d;
    return true;
}

/* Each element of a $each array (or the single value) appended to a new vector. */
/* What $push / $addToSet add: the elements of `each` ($each), or else `arg` itself. */
static int load_incoming(struct uctx *c, const bson_value_t *each, const bson_value_t *arg,
                         struct un *into)
{
    bson_iter_t it;
    if (each && !bson_iter_init_from_data(&it, each->value.v_doc.data, each->value.v_doc.data_len))
        return fail(c, -EINVAL, "$each is not valid BSON");
    while (each ? bson_iter_next(&it) : into->n == 0) {
        struct un *k = un_from_value(c, NULL, each ? bson_iter_value(&it) : arg, 1);
        if (!k || un_push(c, into, k, into->n) < 0) {
            un_free(k);
            return c->rc ? c->rc : fail(c, -ENOMEM, "out of memory");
        }
    }
    return 0;
}

struct sort_item {
    struct un *node;
    bson_t doc;        /* element as a document (empty for non-documents) */
    bson_value_t val;  /* element as a value; points into doc for containers */
};

static int op_push(struct uctx *c, struct un *root, const struct path *p, const bson_value_t *arg)
{
    /* Copies, not bson_iter_value() pointers: those live inside the iterator. */
    const bson_value_t *each = NULL;
    bson_value_t each_v, slice = {0}, position = {0}, sortv = {0};
    bool has_slice = false, has_pos = false, has_sort = false;
    if (arg->value_type == BSON_TYPE_DOCUMENT) {
        bson_iter_t it;
        bson_iter_init_from_data(&it, arg->value.v_doc.data, arg->value.v_doc.data_len);
        bson_iter_t f = it;
        if (bson_iter_find(&f, "$each")) {
            while (bson_iter_next(&it)) {
                const char *k = bson_iter_key(&it);
                const bson_value_t *v = bson_iter_value(&it);
                if (!strcmp(k, "$each")) {
                    if (v->value_type != BSON_TYPE_ARRAY)
                        return fail(c, -EINVAL, "$each for '%s' needs an array", p->text);
                    each_v = *v;
                    each = &each_v;
                } else if (!strcmp(k, "$slice")) {
                    slice = *v;
                    has_slice = true;
                } else if (!strcmp(k, "$position")) {
                    position = *v;
                    has_pos = true;
                } else if (!strcmp(k, "$sort")) {
                    sortv = *v;
                    has_sort = true;
                } else {
                    return fail(c, -EINVAL, "unrecognized $push modifier %s for '%s'", k, p->text);
                }
            }
        }
    }
    int64_t slice_n = 0, pos_n = 0;
    if (has_slice && !whole_number(&slice, &slice_n))
        return fail(c, -EINVAL, "$slice for '%s' needs an integer", p->text);
    if (has_pos && !whole_number(&position, &pos_n))
        return fail(c, -EINVAL, "$position for '%s' needs an integer", p->text);
    ldb_sort *spec = NULL;
    int sort_dir = 0;
    if (has_sort) {
        int64_t d;
        if (sortv.value_type == BSON_TYPE_DOCUMENT) {
            bson_t sd;
            bson_init_static(&sd, sortv.value.v_doc.data, sortv.value.v_doc.data_len);
            char e2[200];
            if (ldb_sort_compile(&sd, &spec, e2, sizeof(e2)) < 0)
                return fail(c, -EINVAL, "$push on '%s': %s", p->text, e2);
        } else if (whole_number(&sortv, &d) && (d == 1 || d == -1)) {
            sort_dir = (int)d;
        } else {
            return fail(c, -EINVAL, "$sort for '%s' needs 1, -1 or a sort document", p->text);
        }
    }

    struct un *arr = array_at(c, root, p, "$push", true);
    struct un incoming = {.type = BSON_TYPE_ARRAY};
    int rc = 0;
    if (!arr)
        goto out;
    if (load_incoming(c, each, arg, &incoming) < 0)
        goto out;
    /* $position counts from the end when negative (-1 inserts before the last element). */
    size_t at = arr->n;
    if (has_pos) {
        if (pos_n < 0)
            at = (size_t)(pos_n + (int64_t)arr->n < 0 ? 0 : pos_n + (int64_t)arr->n);
        else if ((uint64_t)pos_n < arr->n)
            at = (size_t)pos_n;
    }
    for (size_t i = 0; i < incoming.n; i++) {
        if (un_push(c, arr, incoming.kids[i], at + i) < 0)
            goto out;
        incoming.kids[i] = NULL;
    }
    if (has_sort && arr->n > 1) {
        struct sort_item *items = calloc(arr->n, sizeof(*items));
        if (!items) {
            fail(c, -ENOMEM, "out of memory");
            goto out;
        }
        for (size_t i = 0; i < arr->n; i++) {
            items[i].node = arr->kids[i];
            un_value(arr->kids[i], &items[i].doc, &items[i].val);
        }
        /* Stable insertion sort: arrays are small and equal keys keep their order. */
        for (size_t i = 1; i < arr->n; i++) {
            struct sort_item tmp = items[i];
            size_t j = i;
            while (j > 0) {
                int cmp;
                if (spec) {
                    bson_t ea = BSON_INITIALIZER, eb = BSON_INITIALIZER;
                    const bson_t *da = items[j - 1].node->type == BSON_TYPE_DOCUMENT ? &items[j - 1].doc : &ea;
                    const bson_t *db = tmp.node->type == BSON_TYPE_DOCUMENT ? &tmp.doc : &eb;
                    cmp = ldb_sort_cmp(spec, da, db);
                } else {
                    cmp = ldb_value_cmp(&items[j - 1].val, &tmp.val) * sort_dir;
                }
                if (cmp <= 0)
                    break;
                items[j] = items[j - 1];
                j--;
            }
            items[j] = tmp;
        }
        for (size_t i = 0; i < arr->n; i++) {
            arr->kids[i] = items[i].node;
            bson_destroy(&items[i].doc);
        }
        free(items);
    }
    if (has_slice) {
        /* Positive keeps the first n, negative the last n, zero empties the array. */
        size_t keep = (size_t)(slice_n < 0 ? -slice_n : slice_n);
        if (keep < arr->n) {
            size_t drop = arr->n - keep;
            if (slice_n < 0) {
                for (size_t i = 0; i < drop; i++)
                    un_free(un_detach(arr, 0));
            } else {
                while (arr->n > keep)
                    un_free(un_detach(arr, arr->n - 1));
            }
        }
    }
out:
    for (size_t i = 0; i < incoming.n; i++)
        un_free(incoming.kids[i]);
    free(incoming.kids);
    ldb_sort_free(spec);
    return c->rc ? c->rc : rc;
}

static int op_add_to_set(struct uctx *c, struct un *root, const struct path *p, const bson_value_t *arg)
{
    const bson_value_t *each = NULL;
    bson_value_t each_v;
    bson_iter_t it;
    if (arg->value_type == BSON_TYPE_DOCUMENT &&
        bson_iter_init_from_data(&it, arg->value.v_doc.data, arg->value.v_doc.data_len) &&
        bson_iter_next(&it) && strcmp(bson_iter_key(&it), "$each") == 0) {
        if (!BSON_ITER_HOLDS_ARRAY(&it))
            return fail(c, -EINVAL, "$each for '%s' needs an array", p->text);
        each_v = *bson_iter_value(&it);
        each = &each_v;
        if (bson_iter_next(&it))
            return fail(c, -EINVAL, "$addToSet only supports the $each modifier, not %s", bson_iter_key(&it));
    }
    struct un *arr = array_at(c, root, p, "$addToSet", true);
    if (!arr)
        return c->rc;
    struct un incoming = {.type = BSON_TYPE_ARRAY};
    if (load_incoming(c, each, arg, &incoming) < 0)
        goto out;
    for (size_t i = 0; i < incoming.n; i++) {
        bool dup = false;
        /* Documents are equal only with the same fields in the same order, as in MongoDB. */
        for (size_t j = 0; j < arr->n && !dup; j++)
            dup = un_cmp(arr->kids[j], incoming.kids[i]) == 0;
        if (dup)
            continue;
        if (un_push(c, arr, incoming.kids[i], arr->n) < 0)
            goto out;
        incoming.kids[i] = NULL;
    }
out:
    for (size_t i = 0; i < incoming.n; i++)
        un_free(incoming.kids[i]);
    free(incoming.kids);
    return c->rc;
}

static bool value_is_op_doc(const bson_value_t *v)
{
    bson_iter_t it;
    return v->value_type == BSON_TYPE_DOCUMENT &&
           bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len) &&
           bson_iter_next(&it) && bson_iter_key(&it)[0] == '$';
}

static int op_pull(struct uctx *c, struct un *root, const struct path *p, const bson_value_t *arg,
                   bool all)
{
    if (all && arg->value_type != BSON_TYPE_ARRAY)
        return fail(c, -EINVAL, "$pullAll for '%s' needs an array", p->text);
    struct un *arr = array_at(c, root, p, all ? "$pullAll" : "$pull", false);
    if (!arr)
        return c->rc;
    /* Conditions ({$gte: 6}) and regexes test each element as a value; a plain document
     * is a query run against document elements; anything else is exact equality. */
    ldb_matcher *m = NULL;
    bool doc_query = false;
    char e2[200];
    if (!all && (value_is_op_doc(arg) || arg->value_type == BSON_TYPE_REGEX)) {
        bson_t q = BSON_INITIALIZER;
        bson_append_value(&q, "v", 1, arg);
        int rc = ldb_match_compile(&q, &m, e2, sizeof(e2));
        bson_destroy(&q);
        if (rc < 0)
            return fail(c, rc, "$pull on '%s': %s", p->text, e2);
    } else if (!all && arg->value_type == BSON_TYPE_DOCUMENT) {
        bson_t q;
        bson_init_static(&q, arg->value.v_doc.data, arg->value.v_doc.data_len);
        int rc = ldb_match_compile(&q, &m, e2, sizeof(e2));
        if (rc < 0)
            return fail(c, rc, "$pull on '%s': %s", p->text, e2);
        doc_query = true;
    }
    for (size_t i = arr->n; i-- > 0;) {
        struct un *e = arr->kids[i];
        bson_t tmp;
        bson_value_t ev;
        un_value(e, &tmp, &ev);
        bool remove = false;
        if (all) {
            bson_iter_t it;
            bson_iter_init_from_data(&it, arg->value.v_doc.data, arg->value.v_doc.data_len);
            while (!remove && bson_iter_next(&it))
                remove = ldb_value_eq(&ev, bson_iter_value(&it));
        } else if (doc_query) {
            remove = e->type == BSON_TYPE_DOCUMENT && ldb_match(m, &tmp);
        } else if (m) {
            remove = ldb_match_value(m, "v", &ev);
        } else {
            remove = ldb_value_eq(&ev, arg);
        }
        bson_destroy(&tmp);
        if (remove)
            un_free(un_detach(arr, i));
    }
    ldb_matcher_free(m);
    return 0;
}

static int op_pop(struct uctx *c, struct un *root, const struct path *p, const bson_value_t *arg)
{
    int64_t d;
    if (!whole_number(arg, &d) || (d != 1 && d != -1))
        return fail(c, -EINVAL, "$pop for '%s' needs 1 (last) or -1 (first)", p->text);
    struct un *arr = array_at(c, root, p, "$pop", false);
    if (!arr || arr->n == 0)
        return c->rc;
    un_free(un_detach(arr, d == 1 ? arr->n - 1 : 0));
    return 0;
}

/* ---- driver --------------------------------------------------------------------- */

static const char *const known_ops[] = {
    "$set", "$unset", "$inc", "$mul", "$min", "$max", "$rename", "$currentDate",
    "$setOnInsert", "$push", "$addToSet", "$pull", "$pullAll", "$pop",
};

static bool known_op(const char *op)
{
    for (size_t i = 0; i < sizeof(known_ops) / sizeof(known_ops[0]); i++)
        if (!strcmp(op, known_ops[i]))
            return true;
    return false;
}

/* Two paths conflict when equal or when one is a prefix of the other at a dot. */
static bool paths_conflict(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), n = la < lb ? la : lb;
    if (memcmp(a, b, n) != 0)
        return false;
    return la == lb || (la < lb ? b[la] == '.' : a[lb] == '.');
}

static int check_conflicts(struct uctx *c, const bson_t *update)
{
    const char **paths = NULL;
    size_t n = 0, cap = 0;
    bson_iter_t it, f;
    bson_iter_init(&it, update);
    while (bson_iter_next(&it)) {
        const char *op = bson_iter_key(&it);
        if (!known_op(op)) {
            fail(c, -EINVAL, "unknown update operator %s", op);
            goto out;
        }
        if (!BSON_ITER_HOLDS_DOCUMENT(&it) || !bson_iter_recurse(&it, &f)) {
            fail(c, -EINVAL, "%s needs a document of fields", op);
            goto out;
        }
        while (bson_iter_next(&f)) {
            for (int pass = 0; pass < 2; pass++) {
                const char *path = bson_iter_key(&f);
                if (pass == 1) {
                    if (strcmp(op, "$rename") != 0 || !BSON_ITER_HOLDS_UTF8(&f))
                        break;
                    path = bson_iter_utf8(&f, NULL);
                }
                for (size_t i = 0; i < n; i++) {
                    if (paths_conflict(paths[i], path)) {
                        fail(c, -EINVAL, "updating the path '%s' would create a conflict at '%s'", path, paths[i]);
                        goto out;
                    }
                }
                if (n == cap) {
                    cap = cap ? cap * 2 : 16;
                    const char **np = realloc(paths, cap * sizeof(*np));
                    if (!np) {
                        fail(c, -ENOMEM, "out of memory");
                        goto out;
                    }
                    paths = np;
                }
                paths[n++] = path;
            }
        }
    }
out:
    free(paths);
    return c->rc;
}

static int apply_ops(struct uctx *c, struct un *root, const bson_t *update)
{
    if (check_conflicts(c, update) < 0)
        return c->rc;
    bson_iter_t it, f;
    bson_iter_init(&it, update);
    while (bson_iter_next(&it)) {
        const char *op = bson_iter_key(&it);
        if (!strcmp(op, "$setOnInsert") && !c->inserting)
            continue;
        bson_iter_recurse(&it, &f);
        while (bson_iter_next(&f)) {
            struct path p;
            const bson_value_t *arg = bson_iter_value(&f);
            if (path_split(c, bson_iter_key(&f), &p) < 0)
                return c->rc;
            if (!strcmp(op, "$set") || !strcmp(op, "$setOnInsert"))
                set_value(c, root, &p, arg);
            else if (!strcmp(op, "$unset"))
                op_unset(c, root, &p);
            else if (!strcmp(op, "$inc") || !strcmp(op, "$mul"))
                op_arith(c, root, &p, op, arg);
            else if (!strcmp(op, "$min") || !strcmp(op, "$max"))
                op_minmax(c, root, &p, op[2] == 'a', arg);
            else if (!strcmp(op, "$rename"))
                op_rename(c, root, &p, arg);
            else if (!strcmp(op, "$currentDate"))
                op_current_date(c, root, &p, arg);
            else if (!strcmp(op, "$push"))
                op_push(c, root, &p, arg);
            else if (!strcmp(op, "$addToSet"))
                op_add_to_set(c, root, &p, arg);
            else if (!strcmp(op, "$pull") || !strcmp(op, "$pullAll"))
                op_pull(c, root, &p, arg, op[5] == 'A');
            else if (!strcmp(op, "$pop"))
                op_pop(c, root, &p, arg);
            path_free(&p);
            if (c->rc)
                return c->rc;
        }
    }
    return 0;
}

/* 1 when every top-level key is an operator, 0 when none is, -1 when mixed. */
static int update_kind(const bson_t *update)
{
    bson_iter_t it;
    int ops = 0, fields = 0;
    if (!bson_iter_init(&it, update))
        return -1;
    while (bson_iter_next(&it)) {
        if (bson_iter_key(&it)[0] == '$')
            ops++;
        else
            fields++;
    }
    return ops && fields ? -1 : ops ? 1 : 0;
}

static long id_index(const struct un *root)
{
    return find_kid(root, "_id");
}

/* _id may be set to its current value but never changed or removed. */
static int check_id(struct uctx *c, const struct un *root, const bson_value_t *old_id)
{
    if (!old_id)
        return 0;
    long i = id_index(root);
    if (i < 0 || un_cmp_value(root->kids[i], old_id) != 0 || root->kids[i]->type != old_id->value_type)
        return fail(c, -EINVAL, "performing an update on the path '_id' would modify the immutable field '_id'");
    return 0;
}

static int replace_doc(struct uctx *c, const bson_t *doc, const bson_t *repl, bson_t *out)
{
    bson_iter_t it, rid;
    bool has_old = doc && bson_iter_init_find(&it, doc, "_id");
    bool has_new = bson_iter_init_find(&rid, repl, "_id");
    if (has_old && has_new) {
        bson_iter_t a = it;
        if (ldb_iter_cmp(&a, &rid) != 0 || bson_iter_type(&a) != bson_iter_type(&rid))
            return fail(c, -EINVAL, "the replacement would modify the immutable field '_id'");
    }
    bson_init(out);
    if (has_old)
        bson_append_iter(out, "_id", 3, &it);
    else if (has_new)
        bson_append_iter(out, "_id", 3, &rid);
    bson_iter_init(&it, repl);
    while (bson_iter_next(&it)) {
        if (strcmp(bson_iter_key(&it), "_id") != 0)
            bson_append_iter(out, NULL, 0, &it);
    }
    return 0;
}

static int64_t now_ms(const ldb_update_opts *opts)
{
    if (opts && opts->now_ms)
        return opts->now_ms;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void finish(struct un *root, bson_t *out)
{
    bson_init(out);
    un_append_kids(out, root);
    un_free(root);
}

int ldb_update_apply(const bson_t *doc, const bson_t *update, const ldb_update_opts *opts,
                     bson_t *out, bool *changed, char *err, size_t err_len)
{
    struct uctx c = {.err = err, .err_len = err_len, .now_ms = now_ms(opts)};
    if (err_len)
        err[0] = '\0';
    if (changed)
        *changed = false;
    int kind = update_kind(update);
    if (kind < 0)
        return fail(&c, -EINVAL, "update document mixes operators and plain fields (or is not valid BSON)");
    if (kind == 0) {
        if (replace_doc(&c, doc, update, out) < 0)
            return c.rc;
    } else {
        struct un *root = un_from_doc(&c, doc);
        if (!root)
            return c.rc;
        bson_iter_t idit;
        bson_value_t old_id;
        bool has_id = bson_iter_init_find(&idit, doc, "_id");
        if (has_id)
            old_id = *bson_iter_value(&idit);
        if (apply_ops(&c, root, update) < 0 || check_id(&c, root, has_id ? &old_id : NULL) < 0) {
            un_free(root);
            return c.rc;
        }
        finish(root, out);
    }
    if (changed)
        *changed = out->len != doc->len || memcmp(bson_get_data(out), bson_get_data(doc), doc->len) != 0;
    return 0;
}

int ldb_update_apply_upsert(const bson_t *filter, const bson_t *update,
                            const ldb_update_opts *opts, bson_t *out, char *err, size_t err_len)
{
    struct uctx c = {.err = err, .err_len = err_len, .now_ms = now_ms(opts), .inserting = true};
    if (err_len)
        err[0] = '\0';
    int kind = update_kind(update);
    if (kind < 0)
        return fail(&c, -EINVAL, "update document mixes operators and plain fields (or is not valid BSON)");
    ldb_matcher *m;
    char e2[256];
    int rc = ldb_match_compile(filter, &m, e2, sizeof(e2));
    if (rc < 0)
        return fail(&c, rc, "upsert filter: %s", e2);
    const ldb_constraint *cons;
    size_t ncons = ldb_match_constraints(m, &cons);
    struct un *root = un_new(&c, NULL, BSON_TYPE_DOCUMENT);
    if (!root)
        goto fail;
    for (size_t i = 0; i < ncons; i++) {
        if (cons[i].op != LDB_C_EQ)
            continue;
        if (kind == 0 && strcmp(cons[i].path, "_id") != 0)
            continue; /* a replacement takes only _id from the filter */
        struct path p;
        if (path_split(&c, cons[i].path, &p) < 0)
            goto fail;
        bool seen = lookup(&c, root, &p) != NULL; /* a path repeated in $and: first wins */
        if (!seen && !c.rc)
            set_value(&c, root, &p, cons[i].value);
        path_free(&p);
        if (c.rc)
            goto fail;
    }
    ldb_matcher_free(m);
    m = NULL;
    if (kind == 0) {
        bson_t seed;
        finish(root, &seed);
        root = NULL;
        rc = replace_doc(&c, &seed, update, out);
        bson_destroy(&seed);
        return rc < 0 ? c.rc : 0;
    }
    bson_t *seed_id_holder = NULL;
    bson_t id_tmp;
    bson_value_t old_id;
    long idi = id_index(root);
    if (idi >= 0) {
        un_value(root->kids[idi], &id_tmp, &old_id);
        seed_id_holder = &id_tmp;
    }
    rc = apply_ops(&c, root, update);
    if (rc == 0)
        check_id(&c, root, seed_id_holder ? &old_id : NULL);
    if (seed_id_holder)
        bson_destroy(seed_id_holder);
    if (c.rc)
        goto fail;
    idi = id_index(root);
    if (idi > 0) {
        /* MongoDB stores _id first. */
        struct un *id = un_detach(root, (size_t)idi);
        un_push(&c, root, id, 0);
    }
    finish(root, out);
    return 0;
fail:
    ldb_matcher_free(m);
    un_free(root);
    return c.rc;
}
