/*
 * ldb_match.h — MongoDB query filters for LauraDB: compile a filter document once into
 * a matcher tree, then test documents against it. Also exposes the top-level equality
 * and range constraints so the query planner can pick an index, and the upsert code can
 * seed a new document from the filter's equality fields.
 * Regular expressions use PCRE2 (Perl syntax, as MongoDB does).
 */
#ifndef LDB_MATCH_H
#define LDB_MATCH_H

#include <bson/bson.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct ldb_matcher ldb_matcher;

/* Returns 0, or -EINVAL with a message in err (e.g. "unknown operator $foo"), or -ENOMEM.
 * The matcher keeps its own copy of the filter; the caller's filter may be freed. */
int ldb_match_compile(const bson_t *filter, ldb_matcher **out, char *err, size_t err_len);
bool ldb_match(const ldb_matcher *m, const bson_t *doc);
/* Match a bare value against the matcher as though it were {"<field>": value}; used by
 * $pull, whose conditions apply to array elements rather than documents. */
bool ldb_match_value(const ldb_matcher *m, const char *field, const bson_value_t *v);
void ldb_matcher_free(ldb_matcher *m);

typedef enum {
    LDB_C_EQ,
    LDB_C_GT,
    LDB_C_GTE,
    LDB_C_LT,
    LDB_C_LTE,
    LDB_C_IN, /* value is the $in array */
} ldb_constraint_op;

/* A predicate that must hold for every matching document: it comes from the top level
 * of the filter or from a top-level $and, never from under $or/$nor/$not/$elemMatch. */
typedef struct {
    const char *path;
    ldb_constraint_op op;
    const bson_value_t *value; /* points into the matcher; valid until it is freed */
} ldb_constraint;

/* True when m is nothing but comparisons ($gt/$gte/$lt/$lte) on the one top-level
 * field `path` (no dots): a document matches exactly when the first value it has
 * there satisfies every one of them. Lets find skip re-checking documents whose
 * index key already proves that. */
bool ldb_match_only_ranges_on(const ldb_matcher *m, const char *path);

/* Number of constraints, and the array of them through *out (owned by the matcher). */
size_t ldb_match_constraints(const ldb_matcher *m, const ldb_constraint **out);

#endif
