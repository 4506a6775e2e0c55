/*
 * query.h — the wire Query (filters, sort, pagination) applied to any in-memory list.
 * Records are opaque; a field accessor turns (record, field name) into text. Used by
 * every RPC that lists things (GetRoutes, ListModules, GetRoutingTable ...).
 */
#ifndef MP_HOST_QUERY_H
#define MP_HOST_QUERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Writes the record's value for `field` into buf (NUL-terminated) and returns 0, or
 * returns -ENOENT when the record type has no such field. */
typedef int (*mp_query_field_fn)(const void *record, const char *field, char *buf,
                                 size_t buf_len);

typedef struct mp_query_filter {
    const char *field;
    const char *op;    /* see query.c: eq ne lt le gt ge contains prefix in (and symbols) */
    const char *value;
} mp_query_filter;

typedef struct mp_query_spec {
    const mp_query_filter *filters;
    size_t n_filters;
    const char *sort_by;  /* NULL or "" = keep input order */
    bool sort_desc;
    int32_t page;         /* 1-based; <= 0 means 1 */
    int32_t page_size;    /* <= 0 means MP_QUERY_DEFAULT_PAGE_SIZE */
} mp_query_spec;

#define MP_QUERY_DEFAULT_PAGE_SIZE 100
#define MP_QUERY_MAX_PAGE_SIZE 1000
#define MP_QUERY_MAX_FILTERS 32

typedef struct mp_query_result {
    const void **items;   /* the page, in order; malloc'd, caller frees (records borrowed) */
    size_t n_items;
    size_t total_items;   /* matches before paging */
    int32_t page;
    int32_t page_size;
    int32_t total_pages;
} mp_query_result;

/* Filter, sort (stable; numbers compare numerically when both values parse as numbers)
 * and page `records`. Returns 0, or -EINVAL with a reason in err for an unknown
 * operator, unknown field, too many filters or page_size over the maximum. */
int mp_query_apply(const void *const *records, size_t n, mp_query_field_fn field,
                   const mp_query_spec *spec, mp_query_result *out, char *err, size_t err_len);

void mp_query_result_free(mp_query_result *r);

#endif
