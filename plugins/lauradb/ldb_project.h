/*
 * ldb_project.h — find() projections for LauraDB: {a: 1, "b.c": 1} (inclusion) or
 * {a: 0} (exclusion), with _id included unless {_id: 0}. Compiled once per query and
 * applied to each result document.
 */
#ifndef LDB_PROJECT_H
#define LDB_PROJECT_H

#include <bson/bson.h>
#include <stddef.h>

typedef struct ldb_projection ldb_projection;

/* 0, or -EINVAL with a message (mixing inclusion and exclusion, path collisions,
 * unsupported projection operators), or -ENOMEM. An empty spec returns documents whole. */
int ldb_projection_compile(const bson_t *spec, ldb_projection **out, char *err, size_t err_len);
/* Initialises *out (the caller bson_destroy()s it on success only). */
int ldb_project(const ldb_projection *p, const bson_t *doc, bson_t *out, char *err, size_t err_len);
void ldb_projection_free(ldb_projection *p);

#endif
