/*
 * test_ldb_project.c — LauraDB projections: inclusion, exclusion, _id handling, dotted
 * paths through sub-documents and arrays of documents, and the errors for invalid specs.
 */
#include "ldb_project.h"
#include "mp_test.h"
#include "ldb_test_util.h"

#include <errno.h>

static char errbuf[256];

/* Projects doc_json with spec_json into *out; returns the errno-style result. */
static int proj(const char *spec_json, const char *doc_json, bson_t *out)
{
    bson_t *s = ldb_t_json(spec_json), *d = ldb_t_json(doc_json);
    ldb_projection *p;
    int rc = ldb_projection_compile(s, &p, errbuf, sizeof(errbuf));
    if (rc == 0) {
        rc = ldb_project(p, d, out, errbuf, sizeof(errbuf));
        ldb_projection_free(p);
    }
    bson_destroy(s);
    bson_destroy(d);
    return rc;
}

#define CHECK_PROJ(spec, doc, want)                                               \
    do {                                                                          \
        bson_t out_;                                                              \
        int rc_ = proj((spec), (doc), &out_);                                     \
        MP_CHECK_EQ_INT(rc_, 0);                                                  \
        if (rc_ == 0) {                                                           \
            LDB_CHECK_DOC(&out_, (want));                                         \
            bson_destroy(&out_);                                                  \
        } else {                                                                  \
            fprintf(stderr, "  error: %s\n", errbuf);                             \
        }                                                                         \
    } while (0)

#define CHECK_PROJ_ERR(spec, msg)                                                 \
    do {                                                                          \
        bson_t out_;                                                              \
        int rc_ = proj((spec), "{}", &out_);                                      \
        MP_CHECK_EQ_INT(rc_, -EINVAL);                                            \
        if (rc_ == 0)                                                             \
            bson_destroy(&out_);                                                  \
        else                                                                      \
            MP_CHECK_CONTAINS(errbuf, (msg));                                     \
    } while (0)

static const char *doc = "{\"_id\": 1, \"a\": 1, \"b\": {\"c\": 2, \"d\": 3}, \"e\": [{\"f\": 1, \"g\": 2}, 5, {\"g\": 3}], \"h\": \"x\"}";

MP_TEST(inclusion)
{
    CHECK_PROJ("{\"a\": 1}", doc, "{\"_id\": 1, \"a\": 1}");
    CHECK_PROJ("{\"a\": true, \"h\": 1}", doc, "{\"_id\": 1, \"a\": 1, \"h\": \"x\"}");
    /* Output keeps the document's field order, not the spec's. */
    CHECK_PROJ("{\"h\": 1, \"a\": 1}", doc, "{\"_id\": 1, \"a\": 1, \"h\": \"x\"}");
    CHECK_PROJ("{\"a\": 1, \"_id\": 0}", doc, "{\"a\": 1}");
    CHECK_PROJ("{\"b.c\": 1}", doc, "{\"_id\": 1, \"b\": {\"c\": 2}}");
    CHECK_PROJ("{\"b.zz\": 1}", doc, "{\"_id\": 1, \"b\": {}}");
    CHECK_PROJ("{\"a.zz\": 1}", doc, "{\"_id\": 1}"); /* scalar has no sub-field */
    /* Arrays of documents: project each document element, drop scalars. */
    CHECK_PROJ("{\"e.g\": 1}", doc, "{\"_id\": 1, \"e\": [{\"g\": 2}, {\"g\": 3}]}");
    CHECK_PROJ("{\"e\": 1}", doc, "{\"_id\": 1, \"e\": [{\"f\": 1, \"g\": 2}, 5, {\"g\": 3}]}");
    CHECK_PROJ("{\"missing\": 1}", doc, "{\"_id\": 1}");
    CHECK_PROJ("{\"_id\": 1}", doc, "{\"_id\": 1}");
    CHECK_PROJ("{\"a\": 1}", "{\"a\": 2}", "{\"a\": 2}"); /* no _id in the document */
    CHECK_PROJ("{\"a\": 2.5}", doc, "{\"_id\": 1, \"a\": 1}"); /* any non-zero number includes */
}

MP_TEST(exclusion)
{
    CHECK_PROJ("{\"a\": 0}", doc, "{\"_id\": 1, \"b\": {\"c\": 2, \"d\": 3}, \"e\": [{\"f\": 1, \"g\": 2}, 5, {\"g\": 3}], \"h\": \"x\"}");
    CHECK_PROJ("{\"a\": false, \"b\": 0, \"e\": 0, \"_id\": 0}", doc, "{\"h\": \"x\"}");
    CHECK_PROJ("{\"_id\": 0}", "{\"_id\": 1, \"a\": 1}", "{\"a\": 1}");
    CHECK_PROJ("{\"b.c\": 0}", "{\"_id\": 1, \"b\": {\"c\": 2, \"d\": 3}}", "{\"_id\": 1, \"b\": {\"d\": 3}}");
    /* Exclusion through arrays keeps scalar elements. */
    CHECK_PROJ("{\"e.g\": 0, \"_id\": 0}", "{\"e\": [{\"f\": 1, \"g\": 2}, 5]}", "{\"e\": [{\"f\": 1}, 5]}");
    CHECK_PROJ("{\"zz\": 0}", "{\"a\": 1}", "{\"a\": 1}");
    /* An empty projection returns the document unchanged. */
    CHECK_PROJ("{}", doc, doc);
}

MP_TEST(errors)
{
    CHECK_PROJ_ERR("{\"a\": 1, \"b\": 0}", "cannot mix inclusion and exclusion");
    CHECK_PROJ_ERR("{\"a\": 0, \"b\": 1}", "cannot mix inclusion and exclusion");
    CHECK_PROJ_ERR("{\"a\": 1, \"a.b\": 1}", "path collision");
    CHECK_PROJ_ERR("{\"a.b\": 1, \"a\": 1}", "path collision");
    CHECK_PROJ_ERR("{\"a\": \"x\"}", "unsupported projection value for 'a'");
    CHECK_PROJ_ERR("{\"a\": {\"$slice\": 1}}", "unsupported projection value");
    CHECK_PROJ_ERR("{\"a..b\": 1}", "invalid projection path");
    CHECK_PROJ_ERR("{\"$a\": 1}", "may not start with '$'");
    /* _id: 0 may be combined with inclusions, _id: 1 with exclusions. */
    bson_t out;
    MP_CHECK_EQ_INT(proj("{\"a\": 1, \"_id\": 0}", "{}", &out), 0);
    bson_destroy(&out);
    MP_CHECK_EQ_INT(proj("{\"a\": 0, \"_id\": 1}", "{\"_id\": 2, \"a\": 1, \"b\": 1}", &out), 0);
    LDB_CHECK_DOC(&out, "{\"_id\": 2, \"b\": 1}");
    bson_destroy(&out);
}

MP_TEST(depth_limit)
{
    bson_t *cur = BCON_NEW("x", BCON_INT32(1));
    for (int i = 0; i < 110; i++) {
        bson_t *outer = bson_new();
        bson_append_document(outer, "n", -1, cur);
        bson_destroy(cur);
        cur = outer;
    }
    /* Projecting n.n.n...x (deeper than 100 levels) fails cleanly instead of recursing on. */
    char path[400] = "";
    for (int i = 0; i < 110; i++)
        strcat(path, "n.");
    strcat(path, "x");
    bson_t *spec = BCON_NEW(path, BCON_INT32(1)), out;
    ldb_projection *p;
    MP_CHECK_EQ_INT(ldb_projection_compile(spec, &p, errbuf, sizeof(errbuf)), 0);
    MP_CHECK(ldb_project(p, cur, &out, errbuf, sizeof(errbuf)) < 0);
    MP_CHECK_CONTAINS(errbuf, "exceeds 100 levels");
    ldb_projection_free(p);
    bson_destroy(spec);
    bson_destroy(cur);
}

MP_TEST_MAIN(MP_CASE(inclusion), MP_CASE(exclusion), MP_CASE(errors), MP_CASE(depth_limit))
