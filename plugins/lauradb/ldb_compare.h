/*
 * ldb_compare.h — LauraDB's total order over BSON values: MongoDB's documented
 * cross-type comparison order, numeric comparison across int32/int64/double/decimal128,
 * byte-wise strings, field-by-field documents, and the multi-key $sort comparator.
 * Everything above this layer (matching, projection, updates, the planner) compares
 * values only through here so that there is exactly one definition of "less than".
 */
#ifndef LDB_COMPARE_H
#define LDB_COMPARE_H

#include <bson/bson.h>
#include <stdbool.h>
#include <stddef.h>

/* Maximum nesting of documents/arrays any LauraDB routine will recurse through. */
#define LDB_MAX_DEPTH 100

/* Rank of a type in MongoDB's comparison order; equal ranks compare by value. */
int ldb_type_rank(bson_type_t t);

/* Human-readable MongoDB alias of a type ("int", "string", ...), for error messages. */
const char *ldb_type_name(bson_type_t t);

/* True for int32, int64, double and decimal128. */
bool ldb_is_number(bson_type_t t);

/* Numeric value as a double (decimal128 through its string form). */
double ldb_number_as_double(const bson_value_t *v);

/* <0, 0, >0. Values nested deeper than LDB_MAX_DEPTH compare as equal past the limit. */
int ldb_value_cmp(const bson_value_t *a, const bson_value_t *b);
bool ldb_value_eq(const bson_value_t *a, const bson_value_t *b);
int ldb_iter_cmp(const bson_iter_t *a, const bson_iter_t *b);

/* Compare two whole documents field by field (type rank, then name, then value). */
int ldb_doc_cmp(const bson_t *a, const bson_t *b);

/* True when path part s[0..n) is an array position ("0".."999999999"), in *out. */
bool ldb_path_index(const char *s, size_t n, uint32_t *out);

/* Look up a dotted path with MongoDB's array traversal and call fn for every value
 * found (arrays at the end are passed whole, not expanded). Returns how many were found. */
typedef void (*ldb_path_visit_fn)(const bson_value_t *v, void *ctx);
size_t ldb_path_values(const bson_t *doc, const char *path, ldb_path_visit_fn fn, void *ctx);

/* A compiled $sort specification such as {a: 1, "b.c": -1}. */
typedef struct ldb_sort ldb_sort;

int ldb_sort_compile(const bson_t *spec, ldb_sort **out, char *err, size_t err_len);
/* Orders documents; missing fields sort as null, arrays by their smallest element for
 * ascending keys and their largest for descending keys, as MongoDB does. */
int ldb_sort_cmp(const ldb_sort *s, const bson_t *a, const bson_t *b);
void ldb_sort_free(ldb_sort *s);

#endif
