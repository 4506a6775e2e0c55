/*
 * ldb_plan.c — chooses an index for find and turns the filter's constraints on the
 * index's leading fields into byte ranges of index keys (see ldb_plan.h).
 *
 * What is used, field by field along the index: an equality or $in (points), then at
 * most one field of ranges ($gt/$gte/$lt/$lte within one type bracket). Anything the
 * index cannot answer exactly is either widened (numbers beyond 2^53 become the range
 * of their double; over-long keys their prefix) or not used at all: array operands,
 * regular expressions, $ne/$nin/$not/$exists/$type/$elemMatch never select an index,
 * because the matcher may accept documents whose index entries say otherwise.
 */
#include "ldb_plan.h"
#include "ldb_compare.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_RANGES 4096

/* Range operands the key order answers exactly: null, numbers, strings, binary,
 * ObjectId, bool, date, timestamp. */
static bool range_rank_ok(int r)
{
    return (r >= 2 && r <= 4) || (r >= 7 && r <= 11);
}

/* An equality operand the index can look up: the matcher compares it to each
 * element of an array as well as to the array itself, and index entries hold only
 * elements, so array operands are out; so are regexes in $in (pattern matches). */
static bool point_ok(const bson_value_t *v, bool in_list)
{
    if (v->value_type == BSON_TYPE_ARRAY || (in_list && v->value_type == BSON_TYPE_REGEX))
        return false;
    if (v->value_type == BSON_TYPE_DOCUMENT)
        return ldb_key_index_exact(v); /* nested big numbers cannot be widened */
    return true;
}

/* Encodes one point for one field; non-exact numbers keep only the bytes of their
 * double, which every equal value shares. *exact tells which. */
static int point_bytes(const bson_value_t *v, int dir, ldb_kbuf *out, bool *exact)
{
    size_t start = out->len;
    if (ldb_key_append_index(out, v, dir < 0) != 0)
        return -ENOMEM;
    *exact = ldb_key_index_exact(v);
    if (!*exact)
        out->len = start + LDB_KEY_NUM_PREFIX;
    return 0;
}

struct cands {
    ldb_kbuf *p; /* prefixes */
    size_t n;
};

static void cands_free(struct cands *c)
{
    for (size_t i = 0; i < c->n; i++)
        ldb_kbuf_free(&c->p[i]);
    free(c->p);
    c->p = NULL;
    c->n = 0;
}

/* The usable points for one field: from the first usable $eq, else the first usable
 * $in. NULL values/0 count when there is none. */
static size_t field_points(const ldb_constraint *cons, size_t ncons, const char *path,
                           const bson_value_t **eq, const bson_value_t **in)
{
    *eq = *in = NULL;
    for (size_t i = 0; i < ncons; i++) {
        if (strcmp(cons[i].path, path) != 0)
            continue;
        if (cons[i].op == LDB_C_EQ && !*eq && point_ok(cons[i].value, false))
            *eq = cons[i].value;
        if (cons[i].op == LDB_C_IN && !*in && cons[i].value->value_type == BSON_TYPE_ARRAY) {
            bson_iter_t it;
            bool ok = bson_iter_init_from_data(&it, cons[i].value->value.v_doc.data,
                                               cons[i].value->value.v_doc.data_len);
            size_t n = 0;
            while (ok && bson_iter_next(&it)) {
                ok = point_ok(bson_iter_value(&it), true);
                n++;
            }
            if (ok && n < MAX_RANGES)
                *in = cons[i].value;
        }
    }
    if (*eq) {
        *in = NULL;
        return 1;
    }
    if (*in) {
        bson_iter_t it;
        size_t n = 0;
        bson_iter_init_from_data(&it, (*in)->value.v_doc.data, (*in)->value.v_doc.data_len);
        while (bson_iter_next(&it))
            n++;
        return n == 0 ? SIZE_MAX : n; /* an empty $in matches nothing: zero ranges */
    }
    return 0;
}

/* The tightest lower and upper range operands on path within one type bracket (the
 * first range constraint's); each may be NULL. False when there is no usable one. */
static bool field_range(const ldb_constraint *cons, size_t ncons, const char *path,
                        const bson_value_t **lo, const bson_value_t **hi, int *rank)
{
    *lo = *hi = NULL;
    *rank = 0;
    for (size_t i = 0; i < ncons; i++) {
        const ldb_constraint *c = &cons[i];
        if (strcmp(c->path, path) != 0 || c->op == LDB_C_EQ || c->op == LDB_C_IN)
            continue;
        int r = ldb_type_rank(c->value->value_type);
        if (!range_rank_ok(r) || (*rank && r != *rank))
            continue;
        *rank = r;
        if (c->op == LDB_C_GT || c->op == LDB_C_GTE) {
            if (!*lo || ldb_value_cmp(c->value, *lo) > 0)
                *lo = c->value;
        } else if (!*hi || ldb_value_cmp(c->value, *hi) < 0) {
            *hi = c->value;
        }
    }
    return *rank != 0;
}

/* Ascending-order bounds of one field from its range operands. */
static int bound_bytes(const bson_value_t *v, int rank, ldb_kbuf *out)
{
    if (!v) {
        uint8_t r = (uint8_t)rank; /* the whole type bracket */
        return ldb_kbuf_append(out, &r, 1);
    }
    size_t start = out->len;
    if (ldb_key_append_index(out, v, false) != 0)
        return -ENOMEM;
    /* The double's bytes bound every number equal to v, whatever its remainder. */
    if (ldb_is_number(v->value_type))
        out->len = start + LDB_KEY_NUM_PREFIX;
    return 0;
}

static void invert(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)~p[i];
}

static int range_set(struct ldb_range *r, const uint8_t *lo, size_t lo_len, const uint8_t *hi,
                     size_t hi_len, bool has_hi)
{
    /* A bound cut to the stored prefix still orders before/after what it bounded. */
    lo_len = lo_len > LDB_IKEY_PREFIX ? LDB_IKEY_PREFIX : lo_len;
    hi_len = hi_len > LDB_IKEY_PREFIX ? LDB_IKEY_PREFIX : hi_len;
    /* One block: hi follows lo, so freeing lo frees both (ldb_plan_free). */
    r->lo = malloc(lo_len + hi_len + 1);
    if (!r->lo)
        return -ENOMEM;
    r->hi = r->lo + lo_len;
    if (lo_len)
        memcpy(r->lo, lo, lo_len);
    if (hi_len)
        memcpy(r->hi, hi, hi_len);
    r->lo_len = lo_len;
    r->hi_len = hi_len;
    r->has_hi = has_hi;
    return 0;
}

void ldb_plan_free(ldb_plan *p)
{
    ldb_keylist_free(&p->ids);
    for (size_t i = 0; i < p->n; i++) {
        free(p->ranges[i].lo);
    }
    free(p->ranges);
    memset(p, 0, sizeof *p);
    p->index = -1;
}

static int range_cmp(const void *a, const void *b)
{
    const struct ldb_range *x = a, *y = b;
    int c = ldb_bytes_cmp(x->lo, x->lo_len, y->lo, y->lo_len);
    return c ? c : ldb_bytes_cmp(x->hi, x->hi_len, y->hi, y->hi_len);
}

/* What one index offers for the filter. */
struct offer {
    int score;      /* 0: the filter does not narrow this index */
    bool all_exact; /* every point exact: ranges are disjoint */
    bool unique_hit;
};

/* Builds the ranges of ix for the constraints into *plan (when plan is non-NULL) and
 * scores it. */
static int index_ranges(const struct ldb_index *ix, const ldb_constraint *cons, size_t ncons,
                        ldb_plan *plan, struct offer *of)
{
    struct cands c = {0};
    int rc = -ENOMEM, f;
    bool exact = true, ranged = false;
    ldb_kbuf lo = {0}, hi = {0};
    const bson_value_t *rlo = NULL, *rhi = NULL;
    int rank = 0;
    size_t count = 1; /* candidate prefixes; only counted when scoring */
    memset(of, 0, sizeof *of);
    of->all_exact = true;
    if (plan && !(c.p = calloc(1, sizeof *c.p)))
        return -ENOMEM;
    c.n = plan ? 1 : 0;
    for (f = 0; f < ix->nfields && exact; f++) {
        const bson_value_t *eq, *in;
        size_t np = field_points(cons, ncons, ix->paths[f], &eq, &in);
        if (np == SIZE_MAX) {
            cands_free(&c); /* $in: [] */
            count = 0;
            of->score = 1000;
            break;
        }
        if (np > 0 && count * np <= MAX_RANGES && !plan) {
            /* Scoring needs only whether the points are exact, not their bytes. */
            if (eq) {
                exact &= ldb_key_index_exact(eq);
            } else {
                bson_iter_t it;
                bson_iter_init_from_data(&it, in->value.v_doc.data, in->value.v_doc.data_len);
                while (bson_iter_next(&it))
                    exact &= ldb_key_index_exact(bson_iter_value(&it));
            }
            count *= np;
            of->score += exact ? 4 : 2;
            continue;
        }
        if (np > 0 && plan && c.n * np <= MAX_RANGES) {
            struct cands next = {.p = calloc(c.n * np, sizeof *next.p)};
            if (!next.p)
                goto out;
            for (size_t i = 0; i < c.n; i++) {
                bson_iter_t it;
                if (in)
                    bson_iter_init_from_data(&it, in->value.v_doc.data, in->value.v_doc.data_len);
                for (size_t j = 0; j < np; j++) {
                    const bson_value_t *v = eq;
                    if (in) {
                        bson_iter_next(&it);
                        v = bson_iter_value(&it);
                    }
                    ldb_kbuf *dst = &next.p[next.n++];
                    bool ex;
                    if (ldb_kbuf_append(dst, c.p[i].data, c.p[i].len) != 0 ||
                        point_bytes(v, ix->dirs[f], dst, &ex) != 0) {
                        cands_free(&next);
                        goto out;
                    }
                    exact &= ex;
                }
            }
            cands_free(&c);
            c = next;
            of->score += exact ? 4 : 2;
            continue;
        }
        if (field_range(cons, ncons, ix->paths[f], &rlo, &rhi, &rank)) {
            /* {$gt: 5, $lt: 10} matches [3, 12] through different elements, so on a
             * multikey index the bounds cannot be intersected: keep one side. */
            if (ix->multikey && rlo)
                rhi = NULL;
            ranged = true;
            of->score += 2;
        }
        break;
    }
    of->all_exact = exact;
    of->unique_hit = ix->unique && exact && f == ix->nfields && !ranged;
    if (of->unique_hit)
        of->score += 1;
    if (!plan) {
        rc = 0;
        goto out;
    }
    plan->ranges = calloc(c.n ? c.n : 1, sizeof *plan->ranges);
    if (!plan->ranges)
        goto out;
    if (ranged && (bound_bytes(rlo, rank, &lo) != 0 || bound_bytes(rhi, rank, &hi) != 0))
        goto out;
    if (ranged && ix->dirs[f] < 0) {
        /* Inverted bytes reverse the order: the upper bound becomes the lower. */
        ldb_kbuf t = lo;
        lo = hi;
        hi = t;
        invert(lo.data, lo.len);
        invert(hi.data, hi.len);
    }
    for (size_t i = 0; i < c.n; i++) {
        ldb_kbuf *p = &c.p[i];
        size_t plen = p->len;
        struct ldb_range *r = &plan->ranges[plan->n++];
        if (!ranged) {
            rc = range_set(r, p->data, plen, p->data, plen, plen > 0);
        } else {
            ldb_kbuf l = {0}, h = {0};
            rc = ldb_kbuf_append(&l, p->data, plen);
            if (rc == 0)
                rc = ldb_kbuf_append(&l, lo.data, lo.len);
            if (rc == 0)
                rc = ldb_kbuf_append(&h, p->data, plen);
            if (rc == 0)
                rc = ldb_kbuf_append(&h, hi.data, hi.len);
            if (rc == 0)
                rc = range_set(r, l.data, l.len, h.data, h.len, true);
            ldb_kbuf_free(&l);
            ldb_kbuf_free(&h);
        }
        if (rc != 0)
            goto out;
    }
    /* In index order, and each range once ($in: [1, 1.0] is one point). */
    qsort(plan->ranges, plan->n, sizeof *plan->ranges, range_cmp);
    size_t m = 0;
    for (size_t i = 0; i < plan->n; i++) {
        if (m > 0 && range_cmp(&plan->ranges[i], &plan->ranges[m - 1]) == 0) {
            free(plan->ranges[i].lo);
            continue;
        }
        plan->ranges[m++] = plan->ranges[i];
    }
    plan->n = m;
    rc = 0;
out:
    cands_free(&c);
    ldb_kbuf_free(&lo);
    ldb_kbuf_free(&hi);
    return rc;
}

/* 1 forward, -1 backward, 0 when ix's order is not the sort's: same fields, all
 * directions equal or all opposite. A multikey index lists a document once per
 * element and a hashed long key loses its order, so neither serves a sort. */
static int sort_direction(const struct ldb_index *ix, const bson_t *sort)
{
    bson_iter_t it;
    int f = 0, way = 0;
    if (!sort || ix->multikey || ix->truncated || !bson_iter_init(&it, sort))
        return 0;
    while (bson_iter_next(&it)) {
        const bson_value_t *v = bson_iter_value(&it);
        double d = ldb_is_number(v->value_type) ? ldb_number_as_double(v) : 0;
        int dir = d > 0 ? 1 : -1;
        if (f >= ix->nfields || strcmp(bson_iter_key(&it), ix->paths[f]) != 0)
            return 0;
        int w = dir == ix->dirs[f] ? 1 : -1;
        if (way && w != way)
            return 0;
        way = w;
        f++;
    }
    return f == ix->nfields ? way : 0;
}

/* ---------------------------------------------------------------- _id lookups */

/* Decimal128 _ids are stored by their BSON bytes (ldb_key.h), so a numeric lookup
 * cannot find them; they sit among keys starting rank 3, type byte 0x13 and are the
 * only 18-byte keys there. A few huge negative doubles share the prefix; after a
 * handful of them assume the worst. */
static bool has_decimal_ids(MDB_txn *txn, MDB_dbi coll)
{
    MDB_cursor *c;
    uint8_t lo[2] = {3, BSON_TYPE_DECIMAL128};
    MDB_val k = {.mv_size = 2, .mv_data = lo}, v;
    bool found = true;
    if (mdb_cursor_open(txn, coll, &c) != 0)
        return true;
    int rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    for (int i = 0; i < 16; i++, rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (rc != 0 || k.mv_size < 2 || memcmp(k.mv_data, lo, 2) != 0) {
            found = rc != 0 && rc != MDB_NOTFOUND;
            break;
        }
        if (k.mv_size == 18)
            break;
    }
    mdb_cursor_close(c);
    return found;
}

/* Operand types whose ldb_key encoding every equal _id shares. */
static bool id_point_ok(const bson_value_t *v, bool numbers_ok)
{
    switch (v->value_type) {
    case BSON_TYPE_INT32:
    case BSON_TYPE_INT64:
    case BSON_TYPE_DOUBLE: return numbers_ok;
    case BSON_TYPE_UTF8:
    case BSON_TYPE_SYMBOL:
    case BSON_TYPE_OID:
    case BSON_TYPE_BOOL:
    case BSON_TYPE_DATE_TIME:
    case BSON_TYPE_NULL:
    case BSON_TYPE_MINKEY:
    case BSON_TYPE_MAXKEY:
    case BSON_TYPE_TIMESTAMP:
    case BSON_TYPE_BINARY: return true;
    default: return false;
    }
}

static int id_point_add(ldb_keylist *ids, const bson_value_t *v)
{
    ldb_key k;
    char scratch[64];
    /* An _id that cannot be a key (too long) matches nothing stored. */
    if (ldb_key_encode(v, &k, scratch, sizeof scratch) != 0)
        return 0;
    return ldb_keylist_add(ids, k.bytes, k.len);
}

/* 1 with out->ids filled when an _id $eq/$in can be answered by point lookups. */
static int id_plan(MDB_txn *txn, MDB_dbi coll, const ldb_constraint *cons, size_t ncons,
                   ldb_plan *out)
{
    int decimals = -1; /* looked up once, when a number needs it */
    for (size_t i = 0; i < ncons; i++) {
        const ldb_constraint *c = &cons[i];
        bson_iter_t it;
        bool ok = true;
        if (strcmp(c->path, "_id") != 0 || (c->op != LDB_C_EQ && c->op != LDB_C_IN))
            continue;
        if (c->op == LDB_C_IN &&
            (c->value->value_type != BSON_TYPE_ARRAY ||
             !bson_iter_init_from_data(&it, c->value->value.v_doc.data,
                                       c->value->value.v_doc.data_len)))
            continue;
        bool number = false;
        if (c->op == LDB_C_EQ) {
            ok = id_point_ok(c->value, true);
            number = ldb_is_number(c->value->value_type);
        } else {
            bson_iter_t scan = it;
            while (ok && bson_iter_next(&scan)) {
                ok = id_point_ok(bson_iter_value(&scan), true);
                number |= ldb_is_number(bson_iter_value(&scan)->value_type);
            }
        }
        if (!ok)
            continue;
        if (number && decimals < 0)
            decimals = has_decimal_ids(txn, coll);
        if (number && decimals)
            continue;
        int rc = 0;
        if (c->op == LDB_C_EQ)
            rc = id_point_add(&out->ids, c->value);
        else
            while (rc == 0 && bson_iter_next(&it))
                rc = id_point_add(&out->ids, bson_iter_value(&it));
        if (rc == 0)
            rc = ldb_keylist_sort(&out->ids);
        if (rc != 0)
            return rc;
        out->index = LDB_PLAN_ID;
        return 1;
    }
    return 0;
}

int ldb_plan_choose(MDB_txn *txn, MDB_dbi coll, const ldb_ixset *set, const ldb_matcher *m,
                    const bson_t *sort, ldb_plan *out, char *err, size_t err_len)
{
    const ldb_constraint *cons;
    size_t ncons = ldb_match_constraints(m, &cons);
    int best = -1, best_score = 0, best_dir = 0;
    bool best_unique = false;
    memset(out, 0, sizeof *out);
    out->index = -1;
    if (sort && bson_empty(sort))
        sort = NULL;
    /* The primary key beats any index: at most one document per point. */
    int rc = id_plan(txn, coll, cons, ncons, out);
    if (rc != 0) {
        if (rc < 0) {
            ldb_plan_free(out);
            snprintf(err, err_len, "out of memory");
        }
        return rc < 0 ? rc : 0;
    }
    for (size_t i = 0; i < set->n; i++) {
        const struct ldb_index *ix = &set->v[i];
        struct offer of;
        if (!ix->have_dbi)
            continue;
        if (index_ranges(ix, cons, ncons, NULL, &of) != 0) {
            snprintf(err, err_len, "out of memory");
            return -ENOMEM;
        }
        int dir = sort_direction(ix, sort);
        /* Points that may overlap cannot be read in order without repeats. */
        if (!of.all_exact)
            dir = 0;
        if (of.score == 0 && dir == 0)
            continue;
        bool better = of.score > best_score ||
                      (of.score == best_score && (dir && !best_dir)) ||
                      (of.score == best_score && !dir == !best_dir && of.unique_hit && !best_unique);
        if (best < 0 || better) {
            best = (int)i;
            best_score = of.score;
            best_dir = dir;
            best_unique = of.unique_hit;
        }
    }
    if (best < 0)
        return 0;
    struct offer of;
    out->index = best;
    if (index_ranges(&set->v[best], cons, ncons, out, &of) != 0) {
        ldb_plan_free(out);
        snprintf(err, err_len, "out of memory");
        return -ENOMEM;
    }
    out->serves_sort = best_dir != 0;
    out->backward = best_dir < 0;
    return 0;
}

bool ldb_range_below_hi(const struct ldb_range *r, const uint8_t *key, size_t len)
{
    if (!r->has_hi)
        return true;
    size_t kl = ldb_ikey_cmp_len(len);
    size_t m = kl < r->hi_len ? kl : r->hi_len;
    return memcmp(key, r->hi, m) <= 0;
}

bool ldb_range_above_lo(const struct ldb_range *r, const uint8_t *key, size_t len)
{
    if (r->lo_len == 0)
        return true;
    size_t kl = ldb_ikey_cmp_len(len);
    size_t m = kl < r->lo_len ? kl : r->lo_len;
    int c = memcmp(key, r->lo, m);
    return c > 0 || (c == 0 && kl >= r->lo_len);
}

bool ldb_range_has(const struct ldb_range *r, const uint8_t *key, size_t len)
{
    return ldb_range_above_lo(r, key, len) && ldb_range_below_hi(r, key, len);
}

/* Candidates gathered from an index beyond this many: a collection scan is cheaper. */
#define COLLECT_MAX (1u << 20)

int ldb_plan_collect(MDB_txn *txn, const ldb_ixset *set, const ldb_plan *plan, ldb_keylist *ids,
                     uint64_t *keys_examined, char *err, size_t err_len)
{
    MDB_cursor *c;
    MDB_val key, v;
    if (plan->index == LDB_PLAN_ID) {
        for (size_t i = 0; i < plan->ids.n; i++)
            if (ldb_keylist_add(ids, ldb_keylist_at(&plan->ids, i), plan->ids.v[i].len) != 0) {
                snprintf(err, err_len, "out of memory");
                return -ENOMEM;
            }
        *keys_examined += plan->ids.n;
        return 0;
    }
    const struct ldb_index *ix = &set->v[plan->index];
    int rc = mdb_cursor_open(txn, ix->dbi, &c);
    if (rc != 0)
        return ldb_mdb_err(rc, "index cursor", err, err_len);
    int result = 0;
    for (size_t i = 0; i < plan->n && result == 0; i++) {
        const struct ldb_range *r = &plan->ranges[i];
        key.mv_data = r->lo;
        key.mv_size = r->lo_len;
        for (rc = mdb_cursor_get(c, &key, &v, r->lo_len ? MDB_SET_RANGE : MDB_FIRST);
             rc == 0 && result == 0; rc = mdb_cursor_get(c, &key, &v, MDB_NEXT)) {
            if (!ldb_range_below_hi(r, key.mv_data, key.mv_size))
                break;
            ++*keys_examined;
            if (ids->n >= COLLECT_MAX)
                result = 1;
            else if (ldb_keylist_add(ids, v.mv_data, v.mv_size) != 0)
                result = -ENOMEM;
        }
        if (result == 0 && rc != 0 && rc != MDB_NOTFOUND)
            result = ldb_mdb_err(rc, "index scan", err, err_len);
    }
    mdb_cursor_close(c);
    /* A multikey document has one entry per element in the range: keep it once. */
    if (result == 0 && ldb_keylist_sort(ids) != 0)
        result = -ENOMEM;
    if (result == -ENOMEM)
        snprintf(err, err_len, "out of memory");
    if (result != 0)
        ldb_keylist_free(ids);
    return result;
}
