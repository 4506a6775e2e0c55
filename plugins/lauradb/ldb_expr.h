/*
 * ldb_expr.h — LauraDB's aggregation expressions: field paths ("$a.b"), $$ROOT and
 * $$CURRENT, literals, object and array expressions, and the operator set the pipeline
 * supports ($add ... $arrayElemAt). Compiled once per stage, evaluated per document.
 * Also the numeric widening rules (int32 -> int64 -> double) that $add and the $sum
 * accumulator share.
 */
#ifndef LDB_EXPR_H
#define LDB_EXPR_H

#include <bson/bson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ldb_expr ldb_expr;

/* Compiles spec (any BSON value) into an expression. Returns 0, or -EINVAL with a
 * message in err (e.g. "unrecognized expression operator '$foo'"), or -ENOMEM. */
int ldb_expr_compile(const bson_value_t *spec, ldb_expr **out, char *err, size_t err_len);

/* Evaluates e with root as $$ROOT/$$CURRENT. On success *out is an owned value (the
 * caller bson_value_destroy()s it); a missing result (absent field) is
 * BSON_TYPE_EOD. Errors (type errors, division by zero) return -EINVAL with a message;
 * *out is then BSON_TYPE_EOD. */
int ldb_expr_eval(const ldb_expr *e, const bson_t *root, bson_value_t *out, char *err,
                  size_t err_len);

void ldb_expr_free(ldb_expr *e);

/* True for a document whose first field name starts with '$' — an operator call such
 * as {$add: [...]} rather than a sub-document or nested projection. */
bool ldb_expr_is_operator(const bson_value_t *v);

/* MongoDB's truthiness: false, 0, null, undefined and missing are false. */
bool ldb_value_truthy(const bson_value_t *v);

/* A number as the arithmetic operators carry it. */
typedef enum { LDB_NUM_INT32, LDB_NUM_INT64, LDB_NUM_DOUBLE } ldb_num_kind;
typedef struct {
    ldb_num_kind kind;
    int64_t i; /* int32 and int64 */
    double d;  /* double */
} ldb_num;

/* False when v is not a number. Decimal128 is carried as a double (libbson has no
 * decimal arithmetic). */
bool ldb_num_from_value(const bson_value_t *v, ldb_num *out);
/* acc += x with MongoDB's widening: int32 overflows into int64, int64 into double, and
 * anything with a double is a double. */
void ldb_num_add(ldb_num *acc, const ldb_num *x);
double ldb_num_as_double(const ldb_num *n);
void ldb_num_to_value(const ldb_num *n, bson_value_t *out);

/* Moves a finished document or array builder into *out (type DOCUMENT or ARRAY). */
void ldb_value_take_bson(bson_t *b, bson_type_t type, bson_value_t *out);

#endif
