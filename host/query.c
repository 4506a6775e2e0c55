/*
 * query.c — owns the meaning of the wire Query: the filter operators and their
 * spellings, how values compare (numbers as numbers, everything else byte-wise), the
 * stable sort and the page arithmetic. Records stay opaque; every value is read through
 * the caller's field accessor into a fixed buffer.
 */
#include "query.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Values longer than this are compared truncated; field values are short (ids, names,
 * addresses) and a fixed buffer keeps filtering allocation-free. */
#define FIELD_BUF 1024

enum query_op { OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_CONTAINS, OP_PREFIX, OP_IN };

static const struct {
    const char *name;
    enum query_op op;
} op_names[] = {
    {"eq", OP_EQ},       {"=", OP_EQ},        {"==", OP_EQ},
    {"ne", OP_NE},       {"!=", OP_NE},
    {"lt", OP_LT},       {"<", OP_LT},
    {"le", OP_LE},       {"lte", OP_LE},      {"<=", OP_LE},
    {"gt", OP_GT},       {">", OP_GT},
    {"ge", OP_GE},       {"gte", OP_GE},      {">=", OP_GE},
    {"contains", OP_CONTAINS},
    {"prefix", OP_PREFIX}, {"starts_with", OP_PREFIX},
    {"in", OP_IN},
};

struct compiled_filter {
    const char *field;
    const char *value;
    size_t value_len;
    enum query_op op;
    bool is_num;
    double num;
};

struct sort_key {
    const void *rec;
    size_t text_off; /* into the text arena; strings only */
    double num;
    bool is_num;
};

static void set_err(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t err_len, const char *fmt, ...)
{
    if (!err || err_len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

/* A value is a number only if strtod consumes all of it. NaN is refused because it
 * compares unordered and would make the sort inconsistent. */
static bool parse_number(const char *s, double *out)
{
    if (*s == '\0')
        return false;
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || isnan(v))
        return false;
    *out = v;
    return true;
}

static int sign_of_strcmp(const char *a, const char *b)
{
    int c = strcmp(a, b);
    return (c > 0) - (c < 0);
}

static int lookup_op(const char *name, enum query_op *op)
{
    if (!name || *name == '\0') {
        *op = OP_EQ;
        return 0;
    }
    for (size_t i = 0; i < sizeof(op_names) / sizeof(op_names[0]); i++) {
        if (strcasecmp(name, op_names[i].name) == 0) {
            *op = op_names[i].op;
            return 0;
        }
    }
    return -EINVAL;
}

/* Calls the accessor and guarantees a terminated buffer whatever it wrote. Turns
 * -ENOENT into the user-facing "unknown field" error. */
static int read_field(mp_query_field_fn fn, const void *rec, const char *field, char *buf,
                      char *err, size_t err_len)
{
    buf[0] = '\0';
    int rc = fn(rec, field, buf, FIELD_BUF);
    buf[FIELD_BUF - 1] = '\0';
    if (rc == -ENOENT) {
        set_err(err, err_len, "unknown field '%s'", field);
        return -EINVAL;
    }
    if (rc < 0) {
        set_err(err, err_len, "reading field '%s' failed: %s", field, strerror(-rc));
        return rc;
    }
    return 0;
}

/* "in": the filter value is a comma-separated list. Blanks around items are dropped
 * because people write "a, b"; otherwise an item must match exactly. */
static bool in_list(const char *list, const char *v)
{
    size_t vlen = strlen(v);
    const char *p = list;
    for (;;) {
        const char *comma = strchr(p, ',');
        const char *end = comma ? comma : p + strlen(p);
        const char *b = p, *e = end;
        while (b < e && (*b == ' ' || *b == '\t'))
            b++;
        while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if ((size_t)(e - b) == vlen && memcmp(b, v, vlen) == 0)
            return true;
        if (!comma)
            return false;
        p = comma + 1;
    }
}

static bool filter_matches(const struct compiled_filter *f, const char *v)
{
    switch (f->op) {
    case OP_EQ:
        return strcmp(v, f->value) == 0;
    case OP_NE:
        return strcmp(v, f->value) != 0;
    case OP_CONTAINS:
        return strstr(v, f->value) != NULL;
    case OP_PREFIX:
        return strncmp(v, f->value, f->value_len) == 0;
    case OP_IN:
        return in_list(f->value, v);
    case OP_LT:
    case OP_LE:
    case OP_GT:
    case OP_GE:
        break;
    }
    double vn;
    int c;
    if (f->is_num && parse_number(v, &vn))
        c = (vn > f->num) - (vn < f->num);
    else
        c = sign_of_strcmp(v, f->value);
    switch (f->op) {
    case OP_LT:
        return c < 0;
    case OP_LE:
        return c <= 0;
    case OP_GT:
        return c > 0;
    default:
        return c >= 0;
    }
}

/* Sort order: numbers numerically, strings byte-wise, and numbers before strings when
 * the two kinds meet. Mixing "numeric when both are numbers" with strcmp otherwise is
 * not transitive ("9" < "10" < "5a" < "9"), and a sort needs a total order. */
static int key_cmp(const struct sort_key *a, const struct sort_key *b, const char *arena)
{
    if (a->is_num && b->is_num)
        return (a->num > b->num) - (a->num < b->num);
    if (a->is_num != b->is_num)
        return a->is_num ? -1 : 1;
    return sign_of_strcmp(arena + a->text_off, arena + b->text_off);
}

/* Top-down merge sort: stable because the merge takes from the left run on ties, so
 * equal keys keep input order in both directions. */
static void merge_sort(struct sort_key *k, struct sort_key *tmp, size_t n, const char *arena,
                       bool desc)
{
    if (n < 2)
        return;
    size_t mid = n / 2;
    merge_sort(k, tmp, mid, arena, desc);
    merge_sort(k + mid, tmp, n - mid, arena, desc);
    size_t i = 0, j = mid, o = 0;
    while (i < mid && j < n) {
        int c = key_cmp(&k[i], &k[j], arena);
        if (desc)
            c = -c;
        tmp[o++] = c <= 0 ? k[i++] : k[j++];
    }
    while (i < mid)
        tmp[o++] = k[i++];
    while (j < n)
        tmp[o++] = k[j++];
    memcpy(k, tmp, n * sizeof(*k));
}

/* Reorders recs[0..n) by the sort_by field. */
static int sort_records(const void **recs, size_t n, mp_query_field_fn fn, const char *field,
                        bool desc, char *err, size_t err_len)
{
    if (n < 2)
        return 0;
    int rc = 0;
    char buf[FIELD_BUF];
    char *arena = NULL;
    size_t arena_len = 0, arena_cap = 0;
    struct sort_key *keys = calloc(n, sizeof(*keys));
    struct sort_key *tmp = calloc(n, sizeof(*tmp));
    if (!keys || !tmp) {
        rc = -ENOMEM;
        set_err(err, err_len, "out of memory sorting %zu records", n);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        rc = read_field(fn, recs[i], field, buf, err, err_len);
        if (rc < 0)
            goto out;
        keys[i].rec = recs[i];
        keys[i].is_num = parse_number(buf, &keys[i].num);
        if (keys[i].is_num)
            continue;
        size_t len = strlen(buf) + 1;
        if (arena_len + len > arena_cap) {
            size_t cap = arena_cap ? arena_cap * 2 : 4096;
            while (cap < arena_len + len)
                cap *= 2;
            char *grown = realloc(arena, cap);
            if (!grown) {
                rc = -ENOMEM;
                set_err(err, err_len, "out of memory sorting %zu records", n);
                goto out;
            }
            arena = grown;
            arena_cap = cap;
        }
        memcpy(arena + arena_len, buf, len);
        keys[i].text_off = arena_len;
        arena_len += len;
    }
    merge_sort(keys, tmp, n, arena, desc);
    for (size_t i = 0; i < n; i++)
        recs[i] = keys[i].rec;
out:
    free(arena);
    free(tmp);
    free(keys);
    return rc;
}

int mp_query_apply(const void *const *records, size_t n, mp_query_field_fn field,
                   const mp_query_spec *spec, mp_query_result *out, char *err, size_t err_len)
{
    static const mp_query_spec no_spec = {0};
    if (err && err_len)
        err[0] = '\0';
    if (!out) {
        set_err(err, err_len, "no result to fill");
        return -EINVAL;
    }
    memset(out, 0, sizeof(*out));
    if (!field || (n > 0 && !records)) {
        set_err(err, err_len, "no records or field accessor");
        return -EINVAL;
    }
    if (!spec)
        spec = &no_spec;

    if (spec->n_filters > MP_QUERY_MAX_FILTERS) {
        set_err(err, err_len, "too many filters: %zu (at most %d)", spec->n_filters,
                MP_QUERY_MAX_FILTERS);
        return -EINVAL;
    }
    if (spec->n_filters > 0 && !spec->filters) {
        set_err(err, err_len, "%zu filters announced but none given", spec->n_filters);
        return -EINVAL;
    }
    if (spec->page_size > MP_QUERY_MAX_PAGE_SIZE) {
        set_err(err, err_len, "page_size %d is over the maximum of %d", (int)spec->page_size,
                MP_QUERY_MAX_PAGE_SIZE);
        return -EINVAL;
    }
    int32_t page = spec->page > 0 ? spec->page : 1;
    int32_t page_size = spec->page_size > 0 ? spec->page_size : MP_QUERY_DEFAULT_PAGE_SIZE;
    const char *sort_by = spec->sort_by && *spec->sort_by ? spec->sort_by : NULL;

    struct compiled_filter filters[MP_QUERY_MAX_FILTERS];
    size_t nf = spec->n_filters;
    for (size_t i = 0; i < nf; i++) {
        const mp_query_filter *in = &spec->filters[i];
        struct compiled_filter *f = &filters[i];
        if (!in->field || *in->field == '\0') {
            set_err(err, err_len, "filter %zu has no field", i + 1);
            return -EINVAL;
        }
        if (lookup_op(in->op, &f->op) < 0) {
            set_err(err, err_len,
                    "unknown filter operator '%s' (use eq, ne, lt, le, gt, ge, contains, "
                    "prefix, in)",
                    in->op);
            return -EINVAL;
        }
        f->field = in->field;
        f->value = in->value ? in->value : "";
        f->value_len = strlen(f->value);
        f->is_num = parse_number(f->value, &f->num);
    }

    char buf[FIELD_BUF];
    /* Check field names on the first record before filtering, so a misspelt sort_by is
     * reported even when the filters happen to leave nothing to sort. With no records
     * there is nothing to ask and any name passes. */
    if (n > 0) {
        for (size_t i = 0; i < nf; i++) {
            int rc = read_field(field, records[0], filters[i].field, buf, err, err_len);
            if (rc < 0)
                return rc;
        }
        if (sort_by) {
            int rc = read_field(field, records[0], sort_by, buf, err, err_len);
            if (rc < 0)
                return rc;
        }
    }

    /* One array holds the matches, then is sorted and trimmed to the page in place and
     * handed to the result: it has one owner at every step. */
    const void **match = NULL;
    size_t total = 0;
    if (n > 0) {
        match = malloc(n * sizeof(*match));
        if (!match) {
            set_err(err, err_len, "out of memory filtering %zu records", n);
            return -ENOMEM;
        }
    }
    for (size_t r = 0; r < n; r++) {
        bool keep = true;
        for (size_t i = 0; i < nf && keep; i++) {
            int rc = read_field(field, records[r], filters[i].field, buf, err, err_len);
            if (rc < 0) {
                free(match);
                return rc;
            }
            keep = filter_matches(&filters[i], buf);
        }
        if (keep)
            match[total++] = records[r];
    }

    if (sort_by) {
        int rc = sort_records(match, total, field, sort_by, spec->sort_desc, err, err_len);
        if (rc < 0) {
            free(match);
            return rc;
        }
    }

    uint64_t pages = ((uint64_t)total + (uint64_t)page_size - 1) / (uint64_t)page_size;
    uint64_t start = (uint64_t)(page - 1) * (uint64_t)page_size;
    size_t n_items = 0;
    if (start < total) {
        n_items = total - (size_t)start;
        if (n_items > (size_t)page_size)
            n_items = (size_t)page_size;
    }
    if (n_items == 0) {
        free(match);
        match = NULL;
    } else {
        if (start > 0)
            memmove(match, match + start, n_items * sizeof(*match));
        /* Shrinking can only fail by keeping the larger block, which is still valid. */
        const void **shrunk = realloc(match, n_items * sizeof(*match));
        if (shrunk)
            match = shrunk;
    }

    out->items = match;
    out->n_items = n_items;
    out->total_items = total;
    out->page = page;
    out->page_size = page_size;
    out->total_pages = pages > INT32_MAX ? INT32_MAX : (int32_t)pages;
    return 0;
}

void mp_query_result_free(mp_query_result *r)
{
    if (!r)
        return;
    free(r->items);
    r->items = NULL;
    r->n_items = 0;
}
