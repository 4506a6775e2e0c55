/*
 * ldb_index.c — secondary indexes: the catalog (create, drop, list, reload after
 * reopen), the index keys of a document with MongoDB's multikey rules, their
 * maintenance inside the writer's transaction, index builds, and ldb_index_check, the
 * two-way consistency check between a collection and its indexes. See ldb_index.h for
 * the layout; the planner lives in ldb_plan.c.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* qsort_r */
#endif
#include "ldb_index.h"
#include "ldb_compare.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IX_PREFIX "i:"
/* Keys one document may produce for one index (only shared-prefix arrays multiply). */
#define IX_KEYS_MAX (1u << 20)

/* ---------------------------------------------------------------- definitions */

static void index_clear(struct ldb_index *ix)
{
    for (int i = 0; i < ix->nfields; i++) {
        free(ix->paths[i]);
        for (int j = 0; ix->parts[i] && j < ix->nparts[i]; j++)
            free(ix->parts[i][j]);
        free(ix->parts[i]);
    }
    if (ix->keys)
        bson_destroy(ix->keys);
    memset(ix, 0, sizeof *ix);
}

void ldb_ixset_free(ldb_ixset *set)
{
    for (size_t i = 0; i < set->n; i++)
        index_clear(&set->v[i]);
    free(set->v);
    set->v = NULL;
    set->n = 0;
}

static bool valid_path(const char *p)
{
    if (!*p || *p == '$' || p[strlen(p) - 1] == '.')
        return false;
    return *p != '.' && !strstr(p, "..");
}

/* path's dot-separated components into *out (*n of them, each owned; *out may be
 * partly filled on -ENOMEM), split once per index rather than per document. */
static int split_path(const char *path, char ***out, int *n)
{
    int cnt = 1;
    for (const char *p = path; *p; p++)
        cnt += *p == '.';
    *n = 0;
    if (!(*out = calloc((size_t)cnt, sizeof **out)))
        return -ENOMEM;
    const char *s = path;
    for (int i = 0; i < cnt; i++) {
        const char *d = strchr(s, '.');
        size_t len = d ? (size_t)(d - s) : strlen(s);
        if (!((*out)[i] = strndup(s, len)))
            return -ENOMEM;
        *n = i + 1;
        s = d ? d + 1 : s + len;
    }
    return 0;
}

/* Fills ix's fields from a key pattern; -EINVAL with MongoDB-like messages. */
static int parse_keys(struct ldb_index *ix, const bson_t *keys, char *err, size_t err_len)
{
    bson_iter_t it;
    if (!bson_iter_init(&it, keys)) {
        snprintf(err, err_len, "index key pattern is not valid BSON");
        return -EINVAL;
    }
    while (bson_iter_next(&it)) {
        const char *path = bson_iter_key(&it);
        const bson_value_t *v = bson_iter_value(&it);
        double d = ldb_is_number(v->value_type) ? ldb_number_as_double(v) : 0;
        if (ix->nfields == LDB_INDEX_FIELDS_MAX) {
            snprintf(err, err_len, "Index key pattern has more than %d fields",
                     LDB_INDEX_FIELDS_MAX);
            return -EINVAL;
        }
        if (!valid_path(path)) {
            snprintf(err, err_len, "Index key contains an illegal field name: '%s'", path);
            return -EINVAL;
        }
        if (v->value_type == BSON_TYPE_UTF8) {
            snprintf(err, err_len, "Index type '%s' is not supported", v->value.v_utf8.str);
            return -EINVAL;
        }
        if (d != 1 && d != -1) {
            snprintf(err, err_len, "Values in the index key pattern must be 1 or -1 ('%s')", path);
            return -EINVAL;
        }
        for (int i = 0; i < ix->nfields; i++)
            if (strcmp(ix->paths[i], path) == 0) {
                snprintf(err, err_len, "Index key pattern repeats field '%s'", path);
                return -EINVAL;
            }
        int f = ix->nfields;
        if (!(ix->paths[f] = strdup(path))) {
            snprintf(err, err_len, "out of memory");
            return -ENOMEM;
        }
        ix->dirs[f] = d > 0 ? 1 : -1;
        ix->nfields++;
        if (split_path(path, &ix->parts[f], &ix->nparts[f]) != 0) {
            snprintf(err, err_len, "out of memory");
            return -ENOMEM;
        }
    }
    if (ix->nfields == 0) {
        snprintf(err, err_len, "Index key pattern must not be empty");
        return -EINVAL;
    }
    return 0;
}

/* MongoDB's default name: field_dir joined with '_' ("a_1_b.c_-1"). */
static int default_name(const struct ldb_index *ix, char *out, size_t len, char *err,
                        size_t err_len)
{
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; i < ix->nfields; i++) {
        int n = snprintf(out + used, len - used, "%s%s_%d", i ? "_" : "", ix->paths[i],
                         ix->dirs[i]);
        if (n < 0 || (size_t)n >= len - used) {
            snprintf(err, err_len, "default index name exceeds %d bytes; give a name",
                     LDB_INDEX_NAME_MAX);
            return -EINVAL;
        }
        used += (size_t)n;
    }
    return 0;
}

static bool same_pattern(const struct ldb_index *a, const struct ldb_index *b)
{
    if (a->nfields != b->nfields)
        return false;
    for (int i = 0; i < a->nfields; i++)
        if (a->dirs[i] != b->dirs[i] || strcmp(a->paths[i], b->paths[i]) != 0)
            return false;
    return true;
}

static void db_name(const char *ns, const char *name, char out[256])
{
    /* '$' cannot occur in a namespace, so the split is unambiguous. */
    snprintf(out, 256, IX_PREFIX "%s$%s", ns, name);
}

/* Catalog key "ns NUL name" into buf (large enough for both). */
static MDB_val cat_key(const char *ns, const char *name, char *buf)
{
    size_t nl = strlen(ns), ml = strlen(name);
    memcpy(buf, ns, nl + 1);
    memcpy(buf + nl + 1, name, ml);
    return (MDB_val){.mv_size = nl + 1 + ml, .mv_data = buf};
}

static int cat_put(ldb_store *s, MDB_txn *txn, const char *ns, const struct ldb_index *ix,
                   char *err, size_t err_len)
{
    char kb[LDB_NS_MAX + LDB_INDEX_NAME_MAX + 2];
    bson_t d = BSON_INITIALIZER;
    BSON_APPEND_DOCUMENT(&d, "key", ix->keys);
    BSON_APPEND_BOOL(&d, "unique", ix->unique);
    BSON_APPEND_BOOL(&d, "multikey", ix->multikey);
    BSON_APPEND_BOOL(&d, "truncated", ix->truncated);
    MDB_val k = cat_key(ns, ix->name, kb);
    MDB_val v = {.mv_size = d.len, .mv_data = (void *)bson_get_data(&d)};
    ldb_ix_catalog_writing(s);
    int rc = mdb_put(txn, s->indexes, &k, &v, 0);
    bson_destroy(&d);
    return rc ? ldb_mdb_err(rc, "index catalog", err, err_len) : 0;
}

static bool dbi_cached(ldb_store *s, const char *dbname, MDB_dbi *out)
{
    bool found = false;
    pthread_mutex_lock(&s->ix_mu);
    for (struct ldb_ixdbi *x = s->ixdbis; x; x = x->next)
        if (strcmp(x->dbname, dbname) == 0) {
            *out = x->dbi;
            found = true;
            break;
        }
    pthread_mutex_unlock(&s->ix_mu);
    return found;
}

/* Opens dbname (creating it with create) in its own committed transaction and caches
 * the handle. Must not run while this thread holds a write transaction. Holds dbi_mu
 * (mdb_dbi_open must not run concurrently) but takes ix_mu only to publish. */
static int dbi_open(ldb_store *s, const char *dbname, bool create, char *err, size_t err_len)
{
    MDB_txn *txn;
    MDB_dbi dbi;
    int rc = 0;
    pthread_mutex_lock(&s->dbi_mu);
    if (dbi_cached(s, dbname, &dbi))
        goto out;
    struct ldb_ixdbi *nx = calloc(1, sizeof *nx);
    if (!nx) {
        snprintf(err, err_len, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    rc = mdb_txn_begin(s->env, NULL, create ? 0 : MDB_RDONLY, &txn);
    if (rc == 0) {
        rc = mdb_dbi_open(txn, dbname, MDB_DUPSORT | (create ? MDB_CREATE : 0), &dbi);
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
    }
    if (rc != 0) {
        free(nx);
        rc = ldb_mdb_err(rc, "open index", err, err_len);
        goto out;
    }
    snprintf(nx->dbname, sizeof nx->dbname, "%s", dbname);
    nx->dbi = dbi;
    pthread_mutex_lock(&s->ix_mu);
    nx->next = s->ixdbis;
    s->ixdbis = nx;
    pthread_mutex_unlock(&s->ix_mu);
out:
    pthread_mutex_unlock(&s->dbi_mu);
    return rc;
}

/* Parses one catalog entry into ix (name given). */
static int load_entry(ldb_store *s, const char *ns, const char *name, size_t name_len,
                      const MDB_val *v, struct ldb_index *ix, char *err, size_t err_len)
{
    bson_t d;
    bson_iter_t it;
    memset(ix, 0, sizeof *ix);
    if (name_len > LDB_INDEX_NAME_MAX || !bson_init_static(&d, v->mv_data, v->mv_size) ||
        !bson_iter_init_find(&it, &d, "key") || !BSON_ITER_HOLDS_DOCUMENT(&it)) {
        snprintf(err, err_len, "corrupt index catalog entry in %s", ns);
        return -EIO;
    }
    memcpy(ix->name, name, name_len);
    ix->name[name_len] = '\0';
    uint32_t len;
    const uint8_t *data;
    bson_iter_document(&it, &len, &data);
    ix->keys = bson_new_from_data(data, len);
    if (!ix->keys) {
        snprintf(err, err_len, "corrupt index catalog entry in %s", ns);
        return -EIO;
    }
    int rc = parse_keys(ix, ix->keys, err, err_len);
    if (rc != 0)
        return rc;
    ix->unique = bson_iter_init_find(&it, &d, "unique") && bson_iter_as_bool(&it);
    ix->multikey = bson_iter_init_find(&it, &d, "multikey") && bson_iter_as_bool(&it);
    ix->truncated = bson_iter_init_find(&it, &d, "truncated") && bson_iter_as_bool(&it);
    db_name(ns, ix->name, ix->dbname);
    ix->have_dbi = dbi_cached(s, ix->dbname, &ix->dbi);
    return 0;
}

int ldb_ixset_load(ldb_store *s, MDB_txn *txn, const char *ns, ldb_ixset *out, char *err,
                   size_t err_len)
{
    MDB_cursor *c;
    MDB_val k, v;
    size_t nl = strlen(ns) + 1;
    int rc = mdb_cursor_open(txn, s->indexes, &c);
    out->v = NULL;
    out->n = 0;
    if (rc != 0)
        return ldb_mdb_err(rc, "index catalog", err, err_len);
    k.mv_size = nl;
    k.mv_data = (void *)ns;
    int result = 0;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size < nl || memcmp(k.mv_data, ns, nl) != 0)
            break;
        struct ldb_index *nv = realloc(out->v, (out->n + 1) * sizeof *nv);
        if (!nv) {
            snprintf(err, err_len, "out of memory");
            result = -ENOMEM;
            break;
        }
        out->v = nv;
        result = load_entry(s, ns, (const char *)k.mv_data + nl, k.mv_size - nl, &v,
                            &out->v[out->n], err, err_len);
        out->n++;
        if (result != 0)
            break;
    }
    if (result == 0 && rc != 0 && rc != MDB_NOTFOUND)
        result = ldb_mdb_err(rc, "index catalog", err, err_len);
    mdb_cursor_close(c);
    if (result != 0)
        ldb_ixset_free(out);
    return result;
}

void ldb_ixshared_release(struct ldb_ixshared *sh)
{
    if (sh && atomic_fetch_sub(&sh->refs, 1) == 1) {
        ldb_ixset_free(&sh->set);
        free(sh);
    }
}

/* The cached set when it is of generation gen, with a reference for the caller. */
static struct ldb_ixshared *cache_take(struct ldb_coll *c, uint64_t gen)
{
    struct ldb_ixshared *sh = NULL;
    pthread_mutex_lock(&c->ix_mu);
    if (c->ix && c->ix->gen == gen) {
        sh = c->ix;
        atomic_fetch_add(&sh->refs, 1);
    }
    pthread_mutex_unlock(&c->ix_mu);
    return sh;
}

static void cache_put(struct ldb_coll *c, struct ldb_ixshared *sh)
{
    atomic_fetch_add(&sh->refs, 1);
    pthread_mutex_lock(&c->ix_mu);
    struct ldb_ixshared *old = c->ix;
    c->ix = sh;
    pthread_mutex_unlock(&c->ix_mu);
    ldb_ixshared_release(old);
}

/* Opens the handles set lacks. The caller's transaction must be reset meanwhile and
 * renewed afterwards to see them. */
static int open_missing(ldb_store *s, const ldb_ixset *set, char *err, size_t err_len)
{
    int rc = 0;
    for (size_t i = 0; i < set->n && rc == 0; i++)
        if (!set->v[i].have_dbi)
            rc = dbi_open(s, set->v[i].dbname, false, err, err_len);
    return rc;
}

int ldb_snap_begin(ldb_store *s, struct ldb_coll *c, ldb_snap *out, char *err, size_t err_len)
{
    out->txn = NULL;
    out->ix = NULL;
    /* A round that opens a handle makes the next one find them all; more rounds happen
     * only while indexes are created concurrently, and the last uses the set as it is
     * (the planner skips an index without a handle, as it always has). */
    for (int round = 0; round < 4; round++) {
        /* The snapshot is taken between two reads of the catalog generation: equal and
         * even, no catalog commit was in flight, so the cached set of that generation
         * is the snapshot's. */
        uint64_t g1 = atomic_load(&s->ix_gen);
        struct ldb_ixshared *sh = (g1 & 1) ? NULL : cache_take(c, g1);
        int rc;
        if (!out->txn) {
            rc = ldb_rtxn_get(s, &out->txn, err, err_len);
            if (rc != 0)
                out->txn = NULL;
        } else if ((rc = mdb_txn_renew(out->txn)) != 0) {
            rc = ldb_mdb_err(rc, "read transaction", err, err_len);
        }
        if (rc != 0) {
            ldb_ixshared_release(sh);
            ldb_snap_end(s, out);
            return rc;
        }
        uint64_t g2 = atomic_load(&s->ix_gen);
        bool stable = g1 == g2 && !(g1 & 1);
        if (sh && stable) {
            out->ix = sh;
            return 0;
        }
        ldb_ixshared_release(sh);
        if (!(sh = calloc(1, sizeof *sh))) {
            ldb_snap_end(s, out);
            snprintf(err, err_len, "out of memory");
            return -ENOMEM;
        }
        atomic_init(&sh->refs, 1);
        sh->gen = g1;
        rc = ldb_ixset_load(s, out->txn, c->ns, &sh->set, err, err_len);
        bool missing = false;
        for (size_t i = 0; rc == 0 && i < sh->set.n; i++)
            missing |= !sh->set.v[i].have_dbi;
        if (rc == 0 && missing && round < 3) {
            mdb_txn_reset(out->txn); /* renewed by the next round */
            rc = open_missing(s, &sh->set, err, err_len);
            ldb_ixshared_release(sh);
            if (rc == 0)
                continue;
            ldb_snap_end(s, out);
            return rc;
        }
        if (rc != 0) {
            ldb_ixshared_release(sh);
            ldb_snap_end(s, out);
            return rc;
        }
        if (stable && !missing)
            cache_put(c, sh);
        out->ix = sh;
        return 0;
    }
    return 0; /* not reached: the last round returns */
}

void ldb_snap_end(ldb_store *s, ldb_snap *snap)
{
    if (snap->txn)
        ldb_rtxn_put(s, snap->txn);
    ldb_ixshared_release(snap->ix);
    snap->txn = NULL;
    snap->ix = NULL;
}

int ldb_index_prepare(ldb_store *s, const char *ns, char *err, size_t err_len)
{
    struct ldb_coll *c;
    ldb_snap snap;
    int rc = ldb_coll_get(s, ns, false, &c, err, err_len);
    if (rc != 0)
        return rc;
    rc = ldb_snap_begin(s, c, &snap, err, err_len);
    if (rc == 0)
        ldb_snap_end(s, &snap);
    return rc;
}

/* ---------------------------------------------------------------- document keys */

/* Values found at one indexed path, mirroring ldb_match's walk so that every value a
 * filter could match on is present: array leaves contribute their elements (an empty
 * array itself), a missing field contributes null. */
struct fvals {
    const char *path;
    char *const *parts; /* the index's */
    int nparts;
    bson_value_t *v; /* inl until more are needed */
    bson_value_t inl[2];
    size_t n, cap;
    int array_at; /* components before the first array met; -1 when none */
    bool oom;
};

static void fv_add(struct fvals *f, const bson_value_t *v)
{
    if (f->n == f->cap) {
        size_t cap = f->cap * 2;
        bson_value_t *nv = f->v == f->inl ? malloc(cap * sizeof *nv)
                                          : realloc(f->v, cap * sizeof *nv);
        if (!nv) {
            f->oom = true;
            return;
        }
        if (f->v == f->inl)
            memcpy(nv, f->inl, sizeof f->inl);
        f->v = nv;
        f->cap = cap;
    }
    f->v[f->n++] = *v;
}

static void fv_null(struct fvals *f)
{
    bson_value_t nul = {.value_type = BSON_TYPE_NULL};
    fv_add(f, &nul);
}

static void fv_array(struct fvals *f, int at)
{
    if (f->array_at < 0)
        f->array_at = at;
}

static void fv_walk(struct fvals *f, const bson_value_t *v, int i, int depth)
{
    bson_iter_t it;
    if (f->oom)
        return;
    if (!v || depth > LDB_MAX_DEPTH) {
        fv_null(f);
        return;
    }
    if (i == f->nparts) {
        if (v->value_type != BSON_TYPE_ARRAY) {
            fv_add(f, v);
            return;
        }
        fv_array(f, i);
        bool any = false;
        if (bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len))
            while (bson_iter_next(&it)) {
                fv_add(f, bson_iter_value(&it));
                any = true;
            }
        if (!any)
            fv_add(f, v);
        return;
    }
    if (v->value_type == BSON_TYPE_DOCUMENT) {
        if (bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len))
            while (bson_iter_next(&it))
                if (strcmp(bson_iter_key(&it), f->parts[i]) == 0) {
                    bson_value_t child = *bson_iter_value(&it);
                    fv_walk(f, &child, i + 1, depth + 1);
                    return;
                }
        fv_null(f);
        return;
    }
    if (v->value_type == BSON_TYPE_ARRAY) {
        uint32_t idx = 0;
        bool numeric = ldb_path_index(f->parts[i], strlen(f->parts[i]), &idx), any = false;
        fv_array(f, i);
        if (bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len))
            for (uint32_t k = 0; bson_iter_next(&it); k++) {
                bson_value_t e = *bson_iter_value(&it);
                if (numeric && k == idx) {
                    any = true;
                    fv_walk(f, &e, i + 1, depth + 1);
                }
                if (e.value_type == BSON_TYPE_DOCUMENT) {
                    any = true;
                    fv_walk(f, &e, i, depth + 1);
                }
            }
        if (!any)
            fv_null(f);
        return;
    }
    fv_null(f); /* a scalar has no sub-fields */
}

static void fv_free(struct fvals *f)
{
    if (f->v != f->inl)
        free(f->v);
}

static void fv_collect(struct fvals *f, const struct ldb_index *ix, int field, const bson_t *doc)
{
    memset(f, 0, sizeof *f);
    f->path = ix->paths[field];
    f->parts = ix->parts[field];
    f->nparts = ix->nparts[field];
    f->v = f->inl;
    f->cap = sizeof f->inl / sizeof f->inl[0];
    f->array_at = -1;
    bson_value_t root = {.value_type = BSON_TYPE_DOCUMENT};
    root.value.v_doc.data = (uint8_t *)bson_get_data(doc);
    root.value.v_doc.data_len = doc->len;
    fv_walk(f, &root, 0, 0);
}

/* The dotted prefix of f's path covering `at` components, for comparing where two
 * fields met their arrays. */
static size_t prefix_len(const struct fvals *f, int at)
{
    size_t len = 0;
    for (int i = 0; i < at; i++)
        len += strlen(f->parts[i]) + (i ? 1 : 0);
    return len;
}

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

/* Called with one combination of field values; returns non-zero to stop. */
typedef int (*combo_fn)(const bson_value_t *const *vals, void *ctx);

/* Gathers every field's values and checks MongoDB's parallel-array rule. */
static int index_fields(const struct ldb_index *ix, const bson_t *doc, struct fvals *f,
                        bool *multikey, char *err, size_t err_len)
{
    int first = -1;
    size_t total = 1;
    *multikey = false;
    for (int i = 0; i < ix->nfields; i++) {
        fv_collect(&f[i], ix, i, doc);
        if (f[i].oom) {
            snprintf(err, err_len, "out of memory");
            return -ENOMEM;
        }
        if (f[i].array_at < 0)
            continue;
        *multikey = true;
        if (first < 0) {
            first = i;
        } else {
            /* Arrays reached through the same path can pair up; arrays at different
             * places would multiply into a cross product, which MongoDB refuses. */
            size_t a = prefix_len(&f[first], f[first].array_at);
            size_t b = prefix_len(&f[i], f[i].array_at);
            if (a != b || strncmp(f[first].path, f[i].path, a) != 0) {
                snprintf(err, err_len, "cannot index parallel arrays [%.*s] [%.*s]", (int)b,
                         f[i].path, (int)a, f[first].path);
                return -EINVAL;
            }
        }
        total *= f[i].n;
        if (total > IX_KEYS_MAX) {
            snprintf(err, err_len, "document produces more than %u keys for index %s",
                     IX_KEYS_MAX, ix->name);
            return -EINVAL;
        }
    }
    return 0;
}

/* Calls fn for every combination (one value per field). */
static int for_combos(const struct ldb_index *ix, struct fvals *f, combo_fn fn, void *ctx)
{
    size_t pos[LDB_INDEX_FIELDS_MAX] = {0};
    const bson_value_t *vals[LDB_INDEX_FIELDS_MAX];
    for (;;) {
        for (int i = 0; i < ix->nfields; i++)
            vals[i] = &f[i].v[pos[i]];
        int rc = fn(vals, ctx);
        if (rc != 0)
            return rc;
        int i = ix->nfields - 1;
        while (i >= 0 && ++pos[i] == f[i].n)
            pos[i--] = 0;
        if (i < 0)
            return 0;
    }
}

/* The stored form of one combination into b (cleared first). */
static int encode_combo(const struct ldb_index *ix, const bson_value_t *const *vals, ldb_kbuf *b,
                        bool *truncated)
{
    b->len = 0;
    for (int i = 0; i < ix->nfields; i++)
        if (ldb_key_append_index(b, vals[i], ix->dirs[i] < 0) != 0)
            return -ENOMEM;
    *truncated = false;
    if (b->len > LDB_IKEY_PREFIX) {
        uint64_t h = fnv1a(b->data, b->len);
        for (int i = 0; i < 8; i++)
            b->data[LDB_IKEY_PREFIX + i] = (uint8_t)(h >> (56 - 8 * i));
        b->len = LDB_IKEY_HASHED;
        *truncated = true;
    }
    return 0;
}

struct keys_ctx {
    const struct ldb_index *ix;
    struct ldb_ixkeys *out;
    ldb_kbuf tmp;
};

static int keys_add(const bson_value_t *const *vals, void *arg)
{
    struct keys_ctx *c = arg;
    bool tr;
    if (encode_combo(c->ix, vals, &c->tmp, &tr) != 0)
        return -ENOMEM;
    c->out->truncated |= tr;
    return ldb_keylist_add(&c->out->keys, c->tmp.data, c->tmp.len);
}

static void fvals_free(struct fvals *f, int n)
{
    for (int i = 0; i < n; i++)
        fv_free(&f[i]);
}

static int one_index_keys(const struct ldb_index *ix, const bson_t *doc, struct ldb_ixkeys *out,
                          char *err, size_t err_len)
{
    struct fvals f[LDB_INDEX_FIELDS_MAX];
    memset(out, 0, sizeof *out);
    memset(f, 0, (size_t)ix->nfields * sizeof *f);
    int rc = index_fields(ix, doc, f, &out->multikey, err, err_len);
    if (rc == 0) {
        struct keys_ctx c = {.ix = ix, .out = out};
        rc = for_combos(ix, f, keys_add, &c);
        ldb_kbuf_free(&c.tmp);
        /* Sorted, and a: [1, 1] is one entry. */
        if (rc == 0)
            rc = ldb_keylist_sort(&out->keys);
        if (rc != 0)
            snprintf(err, err_len, "out of memory");
    }
    fvals_free(f, ix->nfields);
    return rc;
}

void ldb_ixkeys_free(struct ldb_ixkeys *keys, size_t n)
{
    if (!keys)
        return;
    for (size_t i = 0; i < n; i++)
        ldb_keylist_free(&keys[i].keys);
    free(keys);
}

int ldb_ix_doc_keys(const ldb_ixset *set, const bson_t *doc, struct ldb_ixkeys *keys, char *err,
                    size_t err_len)
{
    for (size_t i = 0; i < set->n; i++) {
        int rc = one_index_keys(&set->v[i], doc, &keys[i], err, err_len);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* ---------------------------------------------------------------- maintenance */

struct dup_ctx {
    const struct ldb_index *ix;
    const uint8_t *key;
    size_t key_len;
    ldb_kbuf tmp;
    bson_t shown;
    bool found;
};

/* Finds the combination that produced the duplicate key, to show it like MongoDB. */
static int dup_find(const bson_value_t *const *vals, void *arg)
{
    struct dup_ctx *c = arg;
    bool tr;
    if (encode_combo(c->ix, vals, &c->tmp, &tr) != 0)
        return -ENOMEM;
    if (ldb_bytes_cmp(c->tmp.data, c->tmp.len, c->key, c->key_len) != 0)
        return 0;
    for (int i = 0; i < c->ix->nfields; i++)
        bson_append_value(&c->shown, c->ix->paths[i], -1, vals[i]);
    c->found = true;
    return 1;
}

static void dup_message(const char *ns, const struct ldb_index *ix, const bson_t *doc,
                        const uint8_t *key, size_t key_len, char *err, size_t err_len)
{
    struct dup_ctx c = {.ix = ix, .key = key, .key_len = key_len};
    struct fvals f[LDB_INDEX_FIELDS_MAX];
    bool mk;
    char scratch[8];
    memset(f, 0, (size_t)ix->nfields * sizeof *f);
    bson_init(&c.shown);
    if (doc && index_fields(ix, doc, f, &mk, scratch, sizeof scratch) == 0)
        for_combos(ix, f, dup_find, &c);
    fvals_free(f, ix->nfields);
    ldb_kbuf_free(&c.tmp);
    char *js = c.found ? bson_as_relaxed_extended_json(&c.shown, NULL) : NULL;
    snprintf(err, err_len, "E11000 duplicate key error collection: %s index: %s dup key: %s", ns,
             ix->name, js ? js : "{ }");
    bson_free(js);
    bson_destroy(&c.shown);
}

/* In a but not in b (both sorted): calls fn for each. */
typedef int (*key_fn)(const uint8_t *key, size_t len, void *ctx);

static int key_diff(const struct ldb_ixkeys *a, const struct ldb_ixkeys *b, key_fn fn, void *ctx)
{
    size_t j = 0;
    for (size_t i = 0; a && i < a->keys.n; i++) {
        const uint8_t *ka = ldb_keylist_at(&a->keys, i);
        size_t al = a->keys.v[i].len;
        int c = 1;
        while (b && j < b->keys.n &&
               (c = ldb_bytes_cmp(ka, al, ldb_keylist_at(&b->keys, j), b->keys.v[j].len)) > 0)
            j++;
        if (b && j < b->keys.n && c == 0)
            continue;
        int rc = fn(ka, al, ctx);
        if (rc != 0)
            return rc;
    }
    return 0;
}

struct apply_ctx {
    MDB_txn *txn;
    const struct ldb_index *ix;
    MDB_val id;
    const uint8_t *dup_key;
    size_t dup_len;
    int mdb_rc;
};

/* A unique index already holding key for another document. */
static int check_unique(const uint8_t *key, size_t len, void *arg)
{
    struct apply_ctx *c = arg;
    MDB_cursor *cur;
    MDB_val k = {.mv_size = len, .mv_data = (void *)key}, v;
    int rc = mdb_cursor_open(c->txn, c->ix->dbi, &cur);
    if (rc != 0) {
        c->mdb_rc = rc;
        return -1;
    }
    int result = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_KEY); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT_DUP)) {
        if (ldb_bytes_cmp(v.mv_data, v.mv_size, c->id.mv_data, c->id.mv_size) != 0) {
            c->dup_key = key;
            c->dup_len = len;
            result = 1;
            break;
        }
    }
    if (result == 0 && rc != MDB_NOTFOUND) {
        c->mdb_rc = rc;
        result = -1;
    }
    mdb_cursor_close(cur);
    return result;
}

static int del_key(const uint8_t *key, size_t len, void *arg)
{
    struct apply_ctx *c = arg;
    MDB_val k = {.mv_size = len, .mv_data = (void *)key};
    int rc = mdb_del(c->txn, c->ix->dbi, &k, &c->id);
    if (rc != 0 && rc != MDB_NOTFOUND) {
        c->mdb_rc = rc;
        return -1;
    }
    return 0;
}

static int put_key(const uint8_t *key, size_t len, void *arg)
{
    struct apply_ctx *c = arg;
    MDB_val k = {.mv_size = len, .mv_data = (void *)key};
    int rc = mdb_put(c->txn, c->ix->dbi, &k, &c->id, MDB_NODUPDATA);
    if (rc != 0 && rc != MDB_KEYEXIST) {
        c->mdb_rc = rc;
        return -1;
    }
    return 0;
}

/* One queued entry: index set->v[ix], key and _id bytes in the queue's buffer. */
struct ldb_ixq_ent {
    size_t ix;
    size_t off;
    uint16_t klen, idlen;
};

void ldb_ixqueue_free(ldb_ixqueue *q)
{
    free(q->v);
    ldb_kbuf_free(&q->bytes);
    memset(q, 0, sizeof *q);
}

struct queue_ctx {
    ldb_ixqueue *q;
    size_t ix;
    const ldb_key *id;
};

static int queue_key(const uint8_t *key, size_t len, void *arg)
{
    struct queue_ctx *c = arg;
    ldb_ixqueue *q = c->q;
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 256;
        struct ldb_ixq_ent *nv = realloc(q->v, cap * sizeof *nv);
        if (!nv)
            return -1;
        q->v = nv;
        q->cap = cap;
    }
    /* Index keys are at most LDB_IKEY_HASHED bytes and _id keys LDB_KEY_MAX. */
    q->v[q->n] = (struct ldb_ixq_ent){.ix = c->ix, .off = q->bytes.len, .klen = (uint16_t)len,
                                      .idlen = (uint16_t)c->id->len};
    if (ldb_kbuf_append(&q->bytes, key, len) != 0 ||
        ldb_kbuf_append(&q->bytes, c->id->bytes, c->id->len) != 0)
        return -1;
    q->n++;
    return 0;
}

/* ldb_ix_apply, with the new entries of non-unique indexes going to q when q is set
 * (there is then no old document). */
static int apply(ldb_store *s, MDB_txn *txn, const char *ns, ldb_ixset *set, const ldb_key *id,
                 const struct ldb_ixkeys *old_keys, const struct ldb_ixkeys *new_keys,
                 const bson_t *new_doc, ldb_ixqueue *q, char *err, size_t err_len)
{
    MDB_val idv = {.mv_size = id->len, .mv_data = (void *)id->bytes};
    for (size_t i = 0; i < set->n; i++) {
        struct ldb_index *ix = &set->v[i];
        if (!ix->have_dbi) {
            snprintf(err, err_len, "index %s of %s is not open", ix->name, ns);
            return -EIO;
        }
        if (!ix->unique || !new_keys)
            continue;
        struct apply_ctx c = {.txn = txn, .ix = ix, .id = idv};
        int rc = key_diff(&new_keys[i], old_keys ? &old_keys[i] : NULL, check_unique, &c);
        if (rc < 0)
            return ldb_mdb_err(c.mdb_rc, "unique check", err, err_len);
        if (rc > 0) {
            dup_message(ns, ix, new_doc, c.dup_key, c.dup_len, err, err_len);
            return -EEXIST;
        }
    }
    for (size_t i = 0; i < set->n; i++) {
        struct ldb_index *ix = &set->v[i];
        struct apply_ctx c = {.txn = txn, .ix = ix, .id = idv};
        const struct ldb_ixkeys *o = old_keys ? &old_keys[i] : NULL;
        const struct ldb_ixkeys *n = new_keys ? &new_keys[i] : NULL;
        if (q && !ix->unique && !o) {
            struct queue_ctx qc = {.q = q, .ix = i, .id = id};
            if (key_diff(n, NULL, queue_key, &qc) != 0) {
                snprintf(err, err_len, "out of memory");
                return -ENOMEM;
            }
        } else if (key_diff(o, n, del_key, &c) != 0 || key_diff(n, o, put_key, &c) != 0) {
            return ldb_mdb_err(c.mdb_rc, "index write", err, err_len);
        }
        if (n && ((n->multikey && !ix->multikey) || (n->truncated && !ix->truncated))) {
            ix->multikey |= n->multikey;
            ix->truncated |= n->truncated;
            int rc = cat_put(s, txn, ns, ix, err, err_len);
            if (rc != 0)
                return rc;
        }
    }
    return 0;
}

int ldb_ix_apply(ldb_store *s, MDB_txn *txn, const char *ns, ldb_ixset *set, const ldb_key *id,
                 const struct ldb_ixkeys *old_keys, const struct ldb_ixkeys *new_keys,
                 const bson_t *new_doc, char *err, size_t err_len)
{
    return apply(s, txn, ns, set, id, old_keys, new_keys, new_doc, NULL, err, err_len);
}

int ldb_ix_insert_queued(ldb_store *s, MDB_txn *txn, const char *ns, ldb_ixset *set,
                         const ldb_key *id, const struct ldb_ixkeys *new_keys,
                         const bson_t *new_doc, ldb_ixqueue *q, char *err, size_t err_len)
{
    return apply(s, txn, ns, set, id, NULL, new_keys, new_doc, q, err, err_len);
}

static int queue_cmp(const void *a, const void *b, void *arg)
{
    const struct ldb_ixq_ent *x = a, *y = b;
    const uint8_t *base = arg;
    if (x->ix != y->ix)
        return x->ix < y->ix ? -1 : 1;
    int c = ldb_bytes_cmp(base + x->off, x->klen, base + y->off, y->klen);
    if (c == 0)
        c = ldb_bytes_cmp(base + x->off + x->klen, x->idlen, base + y->off + y->klen, y->idlen);
    return c;
}

int ldb_ix_flush(MDB_txn *txn, const ldb_ixset *set, ldb_ixqueue *q, char *err, size_t err_len)
{
    if (q->n > 1)
        qsort_r(q->v, q->n, sizeof *q->v, queue_cmp, q->bytes.data);
    MDB_cursor *c = NULL;
    size_t cur_ix = SIZE_MAX;
    int rc = 0;
    for (size_t i = 0; i < q->n && rc == 0; i++) {
        const struct ldb_ixq_ent *e = &q->v[i];
        if (e->ix != cur_ix) {
            if (c)
                mdb_cursor_close(c);
            c = NULL;
            cur_ix = e->ix;
            if ((rc = mdb_cursor_open(txn, set->v[cur_ix].dbi, &c)) != 0)
                break;
        }
        MDB_val k = {.mv_size = e->klen, .mv_data = q->bytes.data + e->off};
        MDB_val v = {.mv_size = e->idlen, .mv_data = q->bytes.data + e->off + e->klen};
        /* Through one cursor: LMDB looks for the next key on the page it is on first. */
        rc = mdb_cursor_put(c, &k, &v, MDB_NODUPDATA);
        if (rc == MDB_KEYEXIST)
            rc = 0;
    }
    if (c)
        mdb_cursor_close(c);
    q->n = 0;
    q->bytes.len = 0;
    return rc ? ldb_mdb_err(rc, "index write", err, err_len) : 0;
}

/* ---------------------------------------------------------------- create / drop */

struct create_op {
    const char *ns;
    MDB_dbi coll;
    struct ldb_index def; /* dbi opened by the caller */
    bool created;
};

/* Index every existing document into a new (emptied) index, inside the write. */
static int build(ldb_store *s, MDB_txn *txn, struct create_op *op, char *err, size_t err_len)
{
    ldb_ixset one = {.v = &op->def, .n = 1};
    MDB_cursor *c;
    MDB_val k, v;
    int rc = mdb_cursor_open(txn, op->coll, &c);
    if (rc != 0)
        return ldb_mdb_err(rc, "cursor", err, err_len);
    int result = 0;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0 && result == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        bson_t doc;
        ldb_key id;
        struct ldb_ixkeys *keys = calloc(1, sizeof *keys);
        if (!keys) {
            snprintf(err, err_len, "out of memory");
            result = -ENOMEM;
            break;
        }
        if (k.mv_size > LDB_KEY_MAX || !bson_init_static(&doc, v.mv_data, v.mv_size)) {
            snprintf(err, err_len, "corrupt document in %s", op->ns);
            result = -EIO;
        } else {
            memcpy(id.bytes, k.mv_data, k.mv_size);
            id.len = k.mv_size;
            /* The document is read before any index write can move pages under it;
             * ldb_ix_apply only needs it again for a duplicate's message, so keep a copy. */
            bson_t *copy = bson_copy(&doc);
            result = ldb_ix_doc_keys(&one, copy, keys, err, err_len);
            if (result == 0)
                result = ldb_ix_apply(s, txn, op->ns, &one, &id, NULL, keys, copy, err, err_len);
            bson_destroy(copy);
        }
        ldb_ixkeys_free(keys, 1);
    }
    if (result == 0 && rc != 0 && rc != MDB_NOTFOUND)
        result = ldb_mdb_err(rc, "scan", err, err_len);
    mdb_cursor_close(c);
    return result;
}

static int exec_create(ldb_store *s, MDB_txn *txn, void *arg, char *err, size_t err_len)
{
    struct create_op *op = arg;
    ldb_ixset set;
    int rc = ldb_ixset_load(s, txn, op->ns, &set, err, err_len);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < set.n && rc == 0; i++) {
        const struct ldb_index *ix = &set.v[i];
        bool same_name = strcmp(ix->name, op->def.name) == 0;
        bool same_keys = same_pattern(ix, &op->def);
        if (same_name && same_keys && ix->unique == op->def.unique) {
            rc = 1; /* already there: nothing to do */
        } else if (same_name) {
            snprintf(err, err_len,
                     "An existing index has the same name as the requested index but different "
                     "keys or options: %s", ix->name);
            rc = -EEXIST;
        } else if (same_keys) {
            snprintf(err, err_len, "Index already exists with a different name: %s", ix->name);
            rc = -EEXIST;
        }
    }
    ldb_ixset_free(&set);
    if (rc != 0)
        return rc > 0 ? 0 : rc;
    /* A failed build or an earlier drop leaves the database behind; start it empty. */
    rc = mdb_drop(txn, op->def.dbi, 0);
    if (rc != 0)
        return ldb_mdb_err(rc, "clear index", err, err_len);
    rc = build(s, txn, op, err, err_len);
    if (rc == 0)
        rc = cat_put(s, txn, op->ns, &op->def, err, err_len);
    if (rc == 0)
        op->created = true;
    return rc;
}

static bool is_id_pattern(const struct ldb_index *ix)
{
    return ix->nfields == 1 && ix->dirs[0] == 1 && strcmp(ix->paths[0], "_id") == 0;
}

int ldb_create_index(ldb_store *s, const char *ns, const bson_t *keys, const char *name,
                     bool unique, char *err, size_t err_len)
{
    struct create_op op = {.ns = ns};
    int rc = parse_keys(&op.def, keys, err, err_len);
    if (rc == 0 && name) {
        if (!*name || strlen(name) > LDB_INDEX_NAME_MAX) {
            snprintf(err, err_len, "index name must be 1..%d bytes", LDB_INDEX_NAME_MAX);
            rc = -EINVAL;
        } else {
            snprintf(op.def.name, sizeof op.def.name, "%s", name);
        }
    } else if (rc == 0 && is_id_pattern(&op.def)) {
        snprintf(op.def.name, sizeof op.def.name, "_id_");
    } else if (rc == 0) {
        rc = default_name(&op.def, op.def.name, sizeof op.def.name, err, err_len);
    }
    if (rc == 0 && (is_id_pattern(&op.def) || strcmp(op.def.name, "_id_") == 0)) {
        /* The _id index is the primary key: it always exists, as exactly that. */
        if (!is_id_pattern(&op.def) || strcmp(op.def.name, "_id_") != 0) {
            snprintf(err, err_len, "The _id index is {_id: 1} named _id_ and always exists");
            rc = -EEXIST;
        } else {
            rc = ldb_coll_dbi(s, ns, true, &op.coll, err, err_len);
        }
        index_clear(&op.def);
        return rc;
    }
    if (rc == 0 && !(op.def.keys = bson_copy(keys))) {
        snprintf(err, err_len, "out of memory");
        rc = -ENOMEM;
    }
    op.def.unique = unique;
    db_name(ns, op.def.name, op.def.dbname);
    if (rc == 0)
        rc = ldb_coll_dbi(s, ns, true, &op.coll, err, err_len);
    if (rc == 0)
        rc = ldb_index_prepare(s, ns, err, err_len);
    if (rc == 0)
        rc = dbi_open(s, op.def.dbname, true, err, err_len);
    if (rc == 0 && !(op.def.have_dbi = dbi_cached(s, op.def.dbname, &op.def.dbi))) {
        snprintf(err, err_len, "index handle missing");
        rc = -EIO;
    }
    if (rc == 0)
        rc = ldb_write_call(s, exec_create, &op, err, err_len);
    index_clear(&op.def);
    return rc;
}

struct drop_op {
    const char *ns;
    const char *name;
};

static int exec_drop(ldb_store *s, MDB_txn *txn, void *arg, char *err, size_t err_len)
{
    struct drop_op *op = arg;
    ldb_ixset set;
    int rc = ldb_ixset_load(s, txn, op->ns, &set, err, err_len);
    if (rc != 0)
        return rc;
    rc = -ENOENT;
    snprintf(err, err_len, "index not found with name [%s]", op->name);
    for (size_t i = 0; i < set.n; i++) {
        const struct ldb_index *ix = &set.v[i];
        if (strcmp(ix->name, op->name) != 0)
            continue;
        char kb[LDB_NS_MAX + LDB_INDEX_NAME_MAX + 2];
        MDB_val k = cat_key(op->ns, ix->name, kb);
        ldb_ix_catalog_writing(s);
        if (!ix->have_dbi) {
            snprintf(err, err_len, "index %s is not open", ix->name);
            rc = -EIO;
        } else if ((rc = mdb_drop(txn, ix->dbi, 0)) != 0 ||
                   (rc = mdb_del(txn, s->indexes, &k, NULL)) != 0) {
            rc = ldb_mdb_err(rc, "drop index", err, err_len);
        }
        break;
    }
    ldb_ixset_free(&set);
    return rc;
}

int ldb_drop_index(ldb_store *s, const char *ns, const char *name, char *err, size_t err_len)
{
    MDB_dbi coll;
    struct drop_op op = {.ns = ns, .name = name};
    if (!name || strcmp(name, "_id_") == 0) {
        snprintf(err, err_len, "cannot drop _id index");
        return -EINVAL;
    }
    int rc = ldb_coll_dbi(s, ns, false, &coll, err, err_len);
    if (rc == 0)
        rc = ldb_index_prepare(s, ns, err, err_len);
    if (rc == 0)
        rc = ldb_write_call(s, exec_drop, &op, err, err_len);
    return rc;
}

int ldb_list_indexes(ldb_store *s, const char *ns, ldb_index_fn fn, void *ctx, char *err,
                     size_t err_len)
{
    MDB_dbi coll;
    MDB_txn *txn;
    ldb_ixset set;
    int rc = ldb_coll_dbi(s, ns, false, &coll, err, err_len);
    if (rc != 0)
        return rc;
    rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc != 0)
        return ldb_mdb_err(rc, "read transaction", err, err_len);
    rc = ldb_ixset_load(s, txn, ns, &set, err, err_len);
    mdb_txn_abort(txn);
    if (rc != 0)
        return rc;
    bson_t id = BSON_INITIALIZER;
    BSON_APPEND_INT32(&id, "_id", 1);
    if (fn("_id_", &id, true, ctx) == 0)
        for (size_t i = 0; i < set.n; i++)
            if (fn(set.v[i].name, set.v[i].keys, set.v[i].unique, ctx) != 0)
                break;
    bson_destroy(&id);
    ldb_ixset_free(&set);
    return 0;
}

/* ---------------------------------------------------------------- consistency check */

static int check_index(MDB_txn *txn, MDB_dbi coll, const char *ns, struct ldb_index *ix,
                       char *err, size_t err_len)
{
    MDB_cursor *c = NULL, *ic = NULL;
    MDB_val k, v;
    size_t expected = 0, actual = 0;
    bool any_multikey = false, any_truncated = false;
    int rc, result = 0;
    if (!ix->have_dbi) {
        snprintf(err, err_len, "index %s is not open", ix->name);
        return -EIO;
    }
    if ((rc = mdb_cursor_open(txn, coll, &c)) != 0 ||
        (rc = mdb_cursor_open(txn, ix->dbi, &ic)) != 0) {
        if (c)
            mdb_cursor_close(c);
        return ldb_mdb_err(rc, "cursor", err, err_len);
    }
    /* Data -> index: every key of every document is present. */
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0 && result == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        bson_t doc;
        struct ldb_ixkeys keys;
        if (!bson_init_static(&doc, v.mv_data, v.mv_size)) {
            snprintf(err, err_len, "corrupt document in %s", ns);
            result = -EIO;
            break;
        }
        result = one_index_keys(ix, &doc, &keys, err, err_len);
        if (result != 0)
            break;
        any_multikey |= keys.multikey;
        any_truncated |= keys.truncated;
        for (size_t i = 0; i < keys.keys.n && result == 0; i++) {
            MDB_val ik = {.mv_size = keys.keys.v[i].len,
                          .mv_data = (void *)ldb_keylist_at(&keys.keys, i)};
            MDB_val iv = k;
            int g = mdb_cursor_get(ic, &ik, &iv, MDB_GET_BOTH);
            if (g == MDB_NOTFOUND) {
                char *js = bson_as_relaxed_extended_json(&doc, NULL);
                snprintf(err, err_len, "index %s misses an entry for document %.200s", ix->name,
                         js ? js : "?");
                bson_free(js);
                result = -EUCLEAN;
            } else if (g != 0) {
                result = ldb_mdb_err(g, "index lookup", err, err_len);
            }
        }
        expected += keys.keys.n;
        ldb_keylist_free(&keys.keys);
    }
    if (result == 0 && rc != MDB_NOTFOUND)
        result = ldb_mdb_err(rc, "scan", err, err_len);
    /* Index -> data: every entry names a document that produces that key. */
    for (rc = mdb_cursor_get(ic, &k, &v, MDB_FIRST); rc == 0 && result == 0;
         rc = mdb_cursor_get(ic, &k, &v, MDB_NEXT)) {
        MDB_val dv;
        bson_t doc;
        struct ldb_ixkeys keys;
        actual++;
        int g = mdb_get(txn, coll, &v, &dv);
        if (g != 0 || !bson_init_static(&doc, dv.mv_data, dv.mv_size)) {
            snprintf(err, err_len, "index %s has an entry for a document that does not exist",
                     ix->name);
            result = -EUCLEAN;
            break;
        }
        result = one_index_keys(ix, &doc, &keys, err, err_len);
        if (result != 0)
            break;
        bool found = false;
        for (size_t i = 0; i < keys.keys.n && !found; i++)
            found = ldb_bytes_cmp(ldb_keylist_at(&keys.keys, i), keys.keys.v[i].len, k.mv_data,
                                  k.mv_size) == 0;
        ldb_keylist_free(&keys.keys);
        if (!found) {
            snprintf(err, err_len, "index %s has a stale entry for a document", ix->name);
            result = -EUCLEAN;
        }
    }
    if (result == 0 && rc != MDB_NOTFOUND)
        result = ldb_mdb_err(rc, "index scan", err, err_len);
    if (result == 0 && actual != expected) {
        snprintf(err, err_len, "index %s has %zu entries, documents produce %zu", ix->name,
                 actual, expected);
        result = -EUCLEAN;
    }
    if (result == 0 && ((any_multikey && !ix->multikey) || (any_truncated && !ix->truncated))) {
        snprintf(err, err_len, "index %s is not flagged multikey/truncated but has such keys",
                 ix->name);
        result = -EUCLEAN;
    }
    mdb_cursor_close(ic);
    mdb_cursor_close(c);
    return result;
}

int ldb_index_check(ldb_store *s, const char *ns, char *err, size_t err_len)
{
    MDB_dbi coll;
    MDB_txn *txn;
    ldb_ixset set;
    int rc = ldb_coll_dbi(s, ns, false, &coll, err, err_len);
    if (rc == -ENOENT)
        return 0; /* no collection, no indexes to disagree with it */
    if (rc == 0)
        rc = ldb_index_prepare(s, ns, err, err_len);
    if (rc != 0)
        return rc;
    rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc != 0)
        return ldb_mdb_err(rc, "read transaction", err, err_len);
    rc = ldb_ixset_load(s, txn, ns, &set, err, err_len);
    for (size_t i = 0; rc == 0 && i < set.n; i++)
        rc = check_index(txn, coll, ns, &set.v[i], err, err_len);
    ldb_ixset_free(&set);
    mdb_txn_abort(txn);
    return rc;
}
