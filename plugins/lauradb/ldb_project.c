/*
 * ldb_project.c — builds projected copies of documents. The spec is compiled into a
 * tree of path components; applying it walks the document and the tree together,
 * fanning out over arrays of documents the way MongoDB does for dotted paths.
 */
#include "ldb_project.h"
#include "ldb_compare.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct pnode {
    char *name;
    bool leaf; /* the whole value at this path is included/excluded */
    struct pnode **kids;
    size_t nkids;
};

struct ldb_projection {
    struct pnode *root;
    bool inclusion; /* otherwise exclusion */
    bool include_id;
    bool whole; /* empty spec: return documents unchanged */
};

static void pnode_free(struct pnode *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->nkids; i++)
        pnode_free(n->kids[i]);
    free(n->kids);
    free(n->name);
    free(n);
}

void ldb_projection_free(ldb_projection *p)
{
    if (!p)
        return;
    pnode_free(p->root);
    free(p);
}

static struct pnode *find_kid(const struct pnode *n, const char *name, size_t len)
{
    for (size_t i = 0; i < n->nkids; i++)
        if (strlen(n->kids[i]->name) == len && memcmp(n->kids[i]->name, name, len) == 0)
            return n->kids[i];
    return NULL;
}

/* Adds a dotted path; two paths where one is a prefix of the other are a collision. */
static int add_path(struct pnode *root, const char *path, char *err, size_t err_len)
{
    struct pnode *cur = root;
    const char *s = path;
    for (;;) {
        const char *dot = strchr(s, '.');
        size_t len = dot ? (size_t)(dot - s) : strlen(s);
        if (len == 0) {
            snprintf(err, err_len, "invalid projection path '%s'", path);
            return -EINVAL;
        }
        struct pnode *k = find_kid(cur, s, len);
        if (k && (k->leaf || !dot)) {
            snprintf(err, err_len, "path collision at '%s'", path);
            return -EINVAL;
        }
        if (!k) {
            struct pnode **nk = realloc(cur->kids, (cur->nkids + 1) * sizeof(*nk));
            if (!nk)
                goto oom;
            cur->kids = nk;
            k = calloc(1, sizeof(*k));
            if (!k || !(k->name = strndup(s, len))) {
                free(k);
                goto oom;
            }
            cur->kids[cur->nkids++] = k;
        }
        if (!dot) {
            k->leaf = true;
            return 0;
        }
        cur = k;
        s = dot + 1;
    }
oom:
    snprintf(err, err_len, "out of memory");
    return -ENOMEM;
}

int ldb_projection_compile(const bson_t *spec, ldb_projection **out, char *err, size_t err_len)
{
    *out = NULL;
    ldb_projection *p = calloc(1, sizeof(*p));
    if (!p || !(p->root = calloc(1, sizeof(*p->root)))) {
        free(p);
        snprintf(err, err_len, "out of memory");
        return -ENOMEM;
    }
    p->include_id = true;
    bson_iter_t it;
    int mode = -1; /* -1 unknown, 1 inclusion, 0 exclusion (from non-_id fields) */
    int id_mode = -1;
    int rc = 0;
    if (!bson_iter_init(&it, spec)) {
        snprintf(err, err_len, "projection is not valid BSON");
        rc = -EINVAL;
        goto out;
    }
    while (bson_iter_next(&it)) {
        const char *key = bson_iter_key(&it);
        bson_type_t t = bson_iter_type(&it);
        if (t != BSON_TYPE_BOOL && !ldb_is_number(t)) {
            snprintf(err, err_len, "unsupported projection value for '%s': only 0/1/true/false are supported", key);
            rc = -EINVAL;
            goto out;
        }
        if (key[0] == '$') {
            snprintf(err, err_len, "projection field '%s' may not start with '$'", key);
            rc = -EINVAL;
            goto out;
        }
        int incl = bson_iter_as_bool(&it) ? 1 : 0;
        if (strcmp(key, "_id") == 0) {
            id_mode = incl;
            continue;
        }
        if (mode != -1 && mode != incl) {
            snprintf(err, err_len, "cannot mix inclusion and exclusion in a projection "
                                   "(only _id: 0 may be combined with inclusions)");
            rc = -EINVAL;
            goto out;
        }
        mode = incl;
        if ((rc = add_path(p->root, key, err, err_len)) < 0)
            goto out;
    }
    if (mode == -1 && id_mode == -1) {
        p->whole = true;
    } else if (mode == -1) {
        /* Only _id given: {_id: 1} keeps just _id, {_id: 0} drops just _id. */
        p->inclusion = id_mode == 1;
        p->include_id = id_mode == 1;
    } else {
        p->inclusion = mode == 1;
        p->include_id = id_mode != 0;
    }
out:
    if (rc < 0) {
        ldb_projection_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

static int project_doc(const ldb_projection *p, const struct pnode *n, const uint8_t *data,
                       uint32_t len, bson_t *out, bool top, int depth);

/* Arrays: document elements are projected with the same sub-tree; in inclusion mode
 * scalars are dropped (they cannot hold the named sub-field), in exclusion mode kept. */
static int project_array(const ldb_projection *p, const struct pnode *n, const bson_value_t *v,
                         bson_t *out, int depth)
{
    if (depth > LDB_MAX_DEPTH)
        return -ELOOP;
    bson_iter_t it;
    if (!bson_iter_init_from_data(&it, v->value.v_doc.data, v->value.v_doc.data_len))
        return -EINVAL;
    uint32_t idx = 0;
    while (bson_iter_next(&it)) {
        const bson_value_t *e = bson_iter_value(&it);
        char kb[16];
        const char *key;
        size_t kl = bson_uint32_to_string(idx, &key, kb, sizeof(kb));
        int rc = 0;
        if (e->value_type == BSON_TYPE_DOCUMENT) {
            bson_t sub;
            bson_append_document_begin(out, key, (int)kl, &sub);
            rc = project_doc(p, n, e->value.v_doc.data, e->value.v_doc.data_len, &sub, false, depth + 1);
            bson_append_document_end(out, &sub);
        } else if (e->value_type == BSON_TYPE_ARRAY) {
            bson_t sub;
            bson_append_array_begin(out, key, (int)kl, &sub);
            rc = project_array(p, n, e, &sub, depth + 1);
            bson_append_array_end(out, &sub);
        } else if (!p->inclusion) {
            bson_append_value(out, key, (int)kl, e);
        } else {
            continue;
        }
        if (rc < 0)
            return rc;
        idx++;
    }
    return 0;
}

static int project_doc(const ldb_projection *p, const struct pnode *n, const uint8_t *data,
                       uint32_t len, bson_t *out, bool top, int depth)
{
    if (depth > LDB_MAX_DEPTH)
        return -ELOOP;
    bson_iter_t it;
    if (!bson_iter_init_from_data(&it, data, len))
        return -EINVAL;
    while (bson_iter_next(&it)) {
        const char *key = bson_iter_key(&it);
        const bson_value_t *v = bson_iter_value(&it);
        int rc = 0;
        if (top && strcmp(key, "_id") == 0) {
            if (p->include_id)
                bson_append_value(out, key, -1, v);
            continue;
        }
        const struct pnode *k = find_kid(n, key, strlen(key));
        if (!k) {
            if (!p->inclusion)
                bson_append_value(out, key, -1, v);
            continue;
        }
        if (k->leaf) {
            if (p->inclusion)
                bson_append_value(out, key, -1, v);
            continue;
        }
        if (v->value_type == BSON_TYPE_DOCUMENT) {
            bson_t sub;
            bson_append_document_begin(out, key, -1, &sub);
            rc = project_doc(p, k, v->value.v_doc.data, v->value.v_doc.data_len, &sub, false, depth + 1);
            bson_append_document_end(out, &sub);
        } else if (v->value_type == BSON_TYPE_ARRAY) {
            bson_t sub;
            bson_append_array_begin(out, key, -1, &sub);
            rc = project_array(p, k, v, &sub, depth + 1);
            bson_append_array_end(out, &sub);
        } else if (!p->inclusion) {
            bson_append_value(out, key, -1, v);
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

int ldb_project(const ldb_projection *p, const bson_t *doc, bson_t *out, char *err, size_t err_len)
{
    if (p->whole) {
        bson_copy_to(doc, out);
        return 0;
    }
    bson_init(out);
    int rc = project_doc(p, p->root, bson_get_data(doc), doc->len, out, true, 0);
    if (rc < 0) {
        bson_destroy(out);
        snprintf(err, err_len, rc == -ELOOP ? "document nesting exceeds %d levels"
                                            : "document is not valid BSON (limit %d levels)",
                 LDB_MAX_DEPTH);
        return rc;
    }
    return 0;
}
