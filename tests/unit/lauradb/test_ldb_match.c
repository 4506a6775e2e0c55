/*
 * test_ldb_match.c — LauraDB query matching against MongoDB's documented semantics:
 * every operator, dotted paths through arrays, null versus missing, type bracketing,
 * the BSON comparison order, $sort keys, planner constraints and error messages.
 */
#include "ldb_compare.h"
#include "ldb_match.h"
#include "mp_test.h"
#include "ldb_test_util.h"

#include <errno.h>

static char errbuf[256];

/* 1 = match, 0 = no match, -1 = the filter did not compile (message in errbuf). */
static int match_b(const bson_t *filter, const char *doc_json)
{
    ldb_matcher *m;
    if (ldb_match_compile(filter, &m, errbuf, sizeof(errbuf)) < 0)
        return -1;
    bson_t *d = ldb_t_json(doc_json);
    int r = ldb_match(m, d) ? 1 : 0;
    bson_destroy(d);
    ldb_matcher_free(m);
    return r;
}

static int match(const char *filter_json, const char *doc_json)
{
    bson_t *f = ldb_t_json(filter_json);
    int r = match_b(f, doc_json);
    bson_destroy(f);
    return r;
}

/* Compile error text for a filter, or "" if it compiled. */
static const char *compile_err(const char *filter_json)
{
    bson_t *f = ldb_t_json(filter_json);
    ldb_matcher *m = NULL;
    int rc = ldb_match_compile(f, &m, errbuf, sizeof(errbuf));
    bson_destroy(f);
    if (rc == 0) {
        ldb_matcher_free(m);
        return "";
    }
    return rc == -EINVAL ? errbuf : "wrong errno";
}

MP_TEST(implicit_equality_and_paths)
{
    MP_CHECK_EQ_INT(match("{\"a\": 5}", "{\"a\": 5}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": 5}", "{\"a\": 5.0}"), 1); /* numbers compare across types */
    MP_CHECK_EQ_INT(match("{\"a\": 5}", "{\"a\": {\"$numberLong\": \"5\"}}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": 5}", "{\"a\": \"5\"}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": 5}", "{\"b\": 5}"), 0);
    MP_CHECK_EQ_INT(match("{}", "{\"b\": 5}"), 1);
    MP_CHECK_EQ_INT(match("{\"a.b\": 1}", "{\"a\": {\"b\": 1}}"), 1);
    MP_CHECK_EQ_INT(match("{\"a.b.c\": 1}", "{\"a\": {\"b\": {\"c\": 1}}}"), 1);
    MP_CHECK_EQ_INT(match("{\"a.b\": 1}", "{\"a\": 1}"), 0);
    /* Embedded documents compare exactly, field order included. */
    MP_CHECK_EQ_INT(match("{\"a\": {\"x\": 1, \"y\": 2}}", "{\"a\": {\"x\": 1, \"y\": 2}}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"x\": 1, \"y\": 2}}", "{\"a\": {\"y\": 2, \"x\": 1}}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": {\"x\": 1}}", "{\"a\": {\"x\": 1, \"y\": 2}}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": 1, \"b\": 2}", "{\"a\": 1, \"b\": 2}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": 1, \"b\": 2}", "{\"a\": 1, \"b\": 3}"), 0);
}

MP_TEST(arrays_implicit_and_indexes)
{
    MP_CHECK_EQ_INT(match("{\"tags\": \"x\"}", "{\"tags\": [\"x\", \"y\"]}"), 1);
    MP_CHECK_EQ_INT(match("{\"tags\": \"z\"}", "{\"tags\": [\"x\", \"y\"]}"), 0);
    /* Whole-array equality, order-sensitive. */
    MP_CHECK_EQ_INT(match("{\"tags\": [\"x\", \"y\"]}", "{\"tags\": [\"x\", \"y\"]}"), 1);
    MP_CHECK_EQ_INT(match("{\"tags\": [\"y\", \"x\"]}", "{\"tags\": [\"x\", \"y\"]}"), 0);
    /* An array value also matches an element that is that array. */
    MP_CHECK_EQ_INT(match("{\"a\": [1, 2]}", "{\"a\": [[1, 2], 3]}"), 1);
    /* Elements of nested arrays are not expanded by implicit matching. */
    MP_CHECK_EQ_INT(match("{\"a\": 1}", "{\"a\": [[1, 2], 3]}"), 0);
    /* Arrays of documents fan out. */
    MP_CHECK_EQ_INT(match("{\"a.b\": 1}", "{\"a\": [{\"b\": 2}, {\"b\": 1}]}"), 1);
    MP_CHECK_EQ_INT(match("{\"a.b\": 3}", "{\"a\": [{\"b\": 2}, {\"b\": 1}]}"), 0);
    MP_CHECK_EQ_INT(match("{\"a.b\": 5}", "{\"a\": [{\"b\": [4, 5]}]}"), 1);
    /* Positional paths. */
    MP_CHECK_EQ_INT(match("{\"a.0.b\": 2}", "{\"a\": [{\"b\": 2}, {\"b\": 1}]}"), 1);
    MP_CHECK_EQ_INT(match("{\"a.1.b\": 2}", "{\"a\": [{\"b\": 2}, {\"b\": 1}]}"), 0);
    MP_CHECK_EQ_INT(match("{\"a.1\": \"y\"}", "{\"a\": [\"x\", \"y\"]}"), 1);
    MP_CHECK_EQ_INT(match("{\"a.5\": \"y\"}", "{\"a\": [\"x\", \"y\"]}"), 0);
}

MP_TEST(null_and_missing)
{
    MP_CHECK_EQ_INT(match("{\"a\": null}", "{\"b\": 1}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": null}", "{\"a\": null}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": null}", "{\"a\": 0}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": null}", "{\"a\": [1, null]}"), 1);
    MP_CHECK_EQ_INT(match("{\"a.b\": null}", "{\"a\": [{\"b\": 1}, {\"c\": 1}]}"), 1);
    MP_CHECK_EQ_INT(match("{\"a.b\": null}", "{\"a\": [{\"b\": 1}]}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$ne\": null}}", "{\"b\": 1}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$ne\": null}}", "{\"a\": 1}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$gte\": null}}", "{\"b\": 1}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$lt\": null}}", "{\"b\": 1}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$in\": [null]}}", "{\"b\": 1}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$nin\": [null]}}", "{\"b\": 1}"), 0);
}

MP_TEST(comparisons_and_type_bracketing)
{
    MP_CHECK_EQ_INT(match("{\"a\": {\"$gt\": 5}}", "{\"a\": 6}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$gt\": 5}}", "{\"a\": 5}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$gte\": 5}}", "{\"a\": 5.0}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$lt\": 5}}", "{\"a\": 4.5}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$lte\": 5}}", "{\"a\": {\"$numberLong\": \"5\"}}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$lt\": 5}}", "{\"a\": {\"$numberDecimal\": \"4.9\"}}"), 1);
    /* No cross-type matches: a string is never $gt a number even though it sorts after. */
    MP_CHECK_EQ_INT(match("{\"a\": {\"$gt\": 5}}", "{\"a\": \"zzz\"}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$lt\": \"b\"}}", "{\"a\": 1}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$lt\": \"b\"}}", "{\"a\": \"abc\"}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$gt\": 5}}", "{\"b\": 9}"), 0);
    /* Arrays: any element may satisfy; each condition separately. */
    MP_CHECK_EQ_INT(match("{\"a\": {\"$gt\": 5}}", "{\"a\": [1, 7]}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$gt\": 5, \"$lt\": 7}}", "{\"a\": [4, 8]}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$gt\": 5, \"$lt\": 7}}", "{\"a\": 8}"), 0);
    /* Large int64 against double: exact, not rounded through double. */
    MP_CHECK_EQ_INT(match("{\"a\": {\"$gt\": 9007199254740992.0}}",
                          "{\"a\": {\"$numberLong\": \"9007199254740993\"}}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$eq\": 5}}", "{\"a\": 5}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$ne\": 5}}", "{\"a\": [5, 6]}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$ne\": 5}}", "{\"a\": [4, 6]}"), 1);
    /* Dates compare with dates. */
    MP_CHECK_EQ_INT(match("{\"d\": {\"$gt\": {\"$date\": {\"$numberLong\": \"1000\"}}}}",
                          "{\"d\": {\"$date\": {\"$numberLong\": \"2000\"}}}"), 1);
    /* $eq with a regex operand compares regexes, it does not search. */
    MP_CHECK_EQ_INT(match("{\"a\": {\"$eq\": {\"$regularExpression\": {\"pattern\": \"x\", \"options\": \"\"}}}}",
                          "{\"a\": \"xyz\"}"), 0);
}

MP_TEST(bson_comparison_order)
{
    const char *ordered[] = {
        "{\"v\": {\"$minKey\": 1}}",
        "{\"v\": null}",
        "{\"v\": {\"$numberDouble\": \"NaN\"}}",
        "{\"v\": -1}",
        "{\"v\": 1.5}",
        "{\"v\": {\"$numberLong\": \"2\"}}",
        "{\"v\": \"\"}",
        "{\"v\": \"a\"}",
        "{\"v\": \"ab\"}",
        "{\"v\": \"b\"}",
        "{\"v\": {}}",
        "{\"v\": {\"a\": 1}}",
        "{\"v\": {\"b\": 1}}", /* field types compare before field names */
        "{\"v\": {\"a\": \"x\"}}",
        "{\"v\": []}",
        "{\"v\": [1]}",
        "{\"v\": [1, 2]}",
        "{\"v\": {\"$binary\": {\"base64\": \"AQ==\", \"subType\": \"00\"}}}",
        "{\"v\": {\"$binary\": {\"base64\": \"AQ==\", \"subType\": \"80\"}}}",
        "{\"v\": {\"$binary\": {\"base64\": \"AAA=\", \"subType\": \"00\"}}}",
        "{\"v\": {\"$oid\": \"000000000000000000000001\"}}",
        "{\"v\": {\"$oid\": \"100000000000000000000000\"}}",
        "{\"v\": false}",
        "{\"v\": true}",
        "{\"v\": {\"$date\": {\"$numberLong\": \"-5\"}}}",
        "{\"v\": {\"$date\": {\"$numberLong\": \"5\"}}}",
        "{\"v\": {\"$timestamp\": {\"t\": 1, \"i\": 9}}}",
        "{\"v\": {\"$timestamp\": {\"t\": 2, \"i\": 1}}}",
        "{\"v\": {\"$regularExpression\": {\"pattern\": \"a\", \"options\": \"\"}}}",
        "{\"v\": {\"$maxKey\": 1}}",
    };
    size_t n = sizeof(ordered) / sizeof(ordered[0]);
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < n; j++) {
            bson_t *a = ldb_t_json(ordered[i]), *b = ldb_t_json(ordered[j]);
            bson_iter_t ia, ib;
            bson_iter_init_find(&ia, a, "v");
            bson_iter_init_find(&ib, b, "v");
            int c = ldb_iter_cmp(&ia, &ib);
            int want = i < j ? -1 : i > j ? 1 : 0;
            if ((c < 0 ? -1 : c > 0 ? 1 : 0) != want) {
                fprintf(stderr, "order: %s vs %s gave %d\n", ordered[i], ordered[j], c);
                *mp_test_failed_ = 1;
            }
            bson_destroy(a);
            bson_destroy(b);
        }
    }
    /* Numbers of different types that are equal compare equal. */
    bson_t *a = ldb_t_json("{\"v\": 3, \"w\": {\"$numberDecimal\": \"3.0\"}, \"x\": 3.0}");
    bson_iter_t i1, i2, i3;
    bson_iter_init_find(&i1, a, "v");
    bson_iter_init_find(&i2, a, "w");
    bson_iter_init_find(&i3, a, "x");
    MP_CHECK_EQ_INT(ldb_iter_cmp(&i1, &i2), 0);
    MP_CHECK_EQ_INT(ldb_iter_cmp(&i1, &i3), 0);
    bson_destroy(a);
}

MP_TEST(in_nin)
{
    MP_CHECK_EQ_INT(match("{\"a\": {\"$in\": [1, 2]}}", "{\"a\": 2}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$in\": [1, 2]}}", "{\"a\": 3}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$in\": [1, 2]}}", "{\"a\": [3, 1]}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$in\": []}}", "{\"a\": 1}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$in\": [{\"$regularExpression\": {\"pattern\": \"^ab\", \"options\": \"\"}}, 5]}}",
                          "{\"a\": \"abc\"}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$in\": [{\"$regularExpression\": {\"pattern\": \"^ab\", \"options\": \"\"}}, 5]}}",
                          "{\"a\": \"cab\"}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$in\": [{\"$regularExpression\": {\"pattern\": \"^ab\", \"options\": \"\"}}, 5]}}",
                          "{\"a\": 5}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$nin\": [1, 2]}}", "{\"a\": 3}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$nin\": [1, 2]}}", "{\"a\": [3, 2]}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$nin\": [1, 2]}}", "{\"b\": 1}"), 1); /* missing matches */
    MP_CHECK_EQ_INT(match("{\"a\": {\"$in\": [[1, 2]]}}", "{\"a\": [1, 2]}"), 1);
}

MP_TEST(logical)
{
    MP_CHECK_EQ_INT(match("{\"$and\": [{\"a\": 1}, {\"b\": 2}]}", "{\"a\": 1, \"b\": 2}"), 1);
    MP_CHECK_EQ_INT(match("{\"$and\": [{\"a\": 1}, {\"b\": 2}]}", "{\"a\": 1, \"b\": 3}"), 0);
    MP_CHECK_EQ_INT(match("{\"$or\": [{\"a\": 1}, {\"b\": 2}]}", "{\"a\": 0, \"b\": 2}"), 1);
    MP_CHECK_EQ_INT(match("{\"$or\": [{\"a\": 1}, {\"b\": 2}]}", "{\"a\": 0, \"b\": 0}"), 0);
    MP_CHECK_EQ_INT(match("{\"$nor\": [{\"a\": 1}, {\"b\": 2}]}", "{\"a\": 0, \"b\": 0}"), 1);
    MP_CHECK_EQ_INT(match("{\"$nor\": [{\"a\": 1}, {\"b\": 2}]}", "{\"a\": 1}"), 0);
    MP_CHECK_EQ_INT(match("{\"$nor\": [{\"a\": 1}]}", "{}"), 1);
    MP_CHECK_EQ_INT(match("{\"$or\": [{\"$and\": [{\"a\": 1}, {\"b\": 1}]}, {\"c\": 1}]}", "{\"a\": 1, \"b\": 1}"), 1);
    /* $not: negates, and matches when the field is missing. */
    MP_CHECK_EQ_INT(match("{\"a\": {\"$not\": {\"$gt\": 5}}}", "{\"a\": 3}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$not\": {\"$gt\": 5}}}", "{\"a\": 6}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$not\": {\"$gt\": 5}}}", "{\"b\": 6}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$not\": {\"$gt\": 5}}}", "{\"a\": \"str\"}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$not\": {\"$regularExpression\": {\"pattern\": \"^x\", \"options\": \"\"}}}}",
                          "{\"a\": \"xy\"}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$not\": {\"$regularExpression\": {\"pattern\": \"^x\", \"options\": \"\"}}}}",
                          "{\"a\": \"yx\"}"), 1);
    MP_CHECK_EQ_INT(match("{\"$comment\": \"hi\", \"a\": 1}", "{\"a\": 1}"), 1);
}

/* $type filters are built with BCON: libbson's JSON parser reads {"$type": ...} as the
 * legacy binary syntax. alias NULL means use the numeric code. */
static int type_match(const char *alias, int code, const char *doc)
{
    bson_t *f = alias ? BCON_NEW("a", "{", "$type", BCON_UTF8(alias), "}")
                      : BCON_NEW("a", "{", "$type", BCON_INT32(code), "}");
    int r = match_b(f, doc);
    bson_destroy(f);
    return r;
}

MP_TEST(exists_and_type)
{
    MP_CHECK_EQ_INT(match("{\"a\": {\"$exists\": true}}", "{\"a\": null}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$exists\": true}}", "{\"b\": 1}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$exists\": false}}", "{\"b\": 1}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$exists\": 0}}", "{\"a\": 1}"), 0);
    MP_CHECK_EQ_INT(match("{\"a.b\": {\"$exists\": true}}", "{\"a\": [{\"c\": 1}, {\"b\": 1}]}"), 1);
    MP_CHECK_EQ_INT(match("{\"a.b\": {\"$exists\": false}}", "{\"a\": [{\"c\": 1}, {\"b\": 1}]}"), 0);
    MP_CHECK_EQ_INT(type_match("string", 0, "{\"a\": \"x\"}"), 1);
    MP_CHECK_EQ_INT(type_match(NULL, 2, "{\"a\": \"x\"}"), 1);
    MP_CHECK_EQ_INT(type_match("string", 0, "{\"a\": 1}"), 0);
    MP_CHECK_EQ_INT(type_match("number", 0, "{\"a\": 1.5}"), 1);
    MP_CHECK_EQ_INT(type_match("number", 0, "{\"a\": {\"$numberDecimal\": \"1\"}}"), 1);
    MP_CHECK_EQ_INT(type_match("int", 0, "{\"a\": {\"$numberLong\": \"1\"}}"), 0);
    MP_CHECK_EQ_INT(type_match("long", 0, "{\"a\": {\"$numberLong\": \"1\"}}"), 1);
    {
        bson_t *f = BCON_NEW("a", "{", "$type", "[", BCON_UTF8("bool"), BCON_UTF8("null"), "]", "}");
        MP_CHECK_EQ_INT(match_b(f, "{\"a\": null}"), 1);
        MP_CHECK_EQ_INT(match_b(f, "{\"a\": true}"), 1);
        MP_CHECK_EQ_INT(match_b(f, "{\"a\": 1}"), 0);
        bson_destroy(f);
    }
    MP_CHECK_EQ_INT(type_match("null", 0, "{\"b\": 1}"), 0);
    MP_CHECK_EQ_INT(type_match("minKey", 0, "{\"a\": {\"$minKey\": 1}}"), 1);
    MP_CHECK_EQ_INT(type_match(NULL, -1, "{\"a\": {\"$minKey\": 1}}"), 1);
    MP_CHECK_EQ_INT(type_match("maxKey", 0, "{\"a\": {\"$maxKey\": 1}}"), 1);
    /* With arrays: "array" matches the array, other types match its elements. */
    MP_CHECK_EQ_INT(type_match("array", 0, "{\"a\": [1]}"), 1);
    MP_CHECK_EQ_INT(type_match("array", 0, "{\"a\": []}"), 1);
    MP_CHECK_EQ_INT(type_match("array", 0, "{\"a\": 1}"), 0);
    MP_CHECK_EQ_INT(type_match("string", 0, "{\"a\": [1, \"x\"]}"), 1);
    MP_CHECK_EQ_INT(type_match("object", 0, "{\"a\": [{\"b\": 1}]}"), 1);
}

MP_TEST(regex)
{
    bson_t *f;
    /* {$regex: "string", $options} is built by hand: libbson's JSON parser reads that
     * shape as a legacy regex literal. */
    f = BCON_NEW("a", "{", "$regex", BCON_UTF8("^ab"), "$options", BCON_UTF8("i"), "}");
    MP_CHECK_EQ_INT(match_b(f, "{\"a\": \"ABc\"}"), 1);
    MP_CHECK_EQ_INT(match_b(f, "{\"a\": \"cab\"}"), 0);
    bson_destroy(f);
    f = BCON_NEW("a", "{", "$regex", BCON_UTF8("^ab"), "}");
    MP_CHECK_EQ_INT(match_b(f, "{\"a\": \"ABc\"}"), 0);
    MP_CHECK_EQ_INT(match_b(f, "{\"a\": [\"x\", \"abc\"]}"), 1);
    MP_CHECK_EQ_INT(match_b(f, "{\"a\": 5}"), 0);
    MP_CHECK_EQ_INT(match_b(f, "{\"b\": \"abc\"}"), 0);
    bson_destroy(f);
    /* m: ^ matches after newlines. */
    f = BCON_NEW("a", "{", "$regex", BCON_UTF8("^b"), "$options", BCON_UTF8("m"), "}");
    MP_CHECK_EQ_INT(match_b(f, "{\"a\": \"a\\nb\"}"), 1);
    bson_destroy(f);
    f = BCON_NEW("a", "{", "$regex", BCON_UTF8("^b"), "}");
    MP_CHECK_EQ_INT(match_b(f, "{\"a\": \"a\\nb\"}"), 0);
    bson_destroy(f);
    /* x: whitespace and comments in the pattern are ignored. */
    f = BCON_NEW("a", "{", "$regex", BCON_UTF8("a b # comment\n c"), "$options", BCON_UTF8("x"), "}");
    MP_CHECK_EQ_INT(match_b(f, "{\"a\": \"abc\"}"), 1);
    bson_destroy(f);
    /* s: dot matches newline. */
    f = BCON_NEW("a", "{", "$regex", BCON_UTF8("a.b"), "$options", BCON_UTF8("s"), "}");
    MP_CHECK_EQ_INT(match_b(f, "{\"a\": \"a\\nb\"}"), 1);
    bson_destroy(f);
    f = BCON_NEW("a", "{", "$regex", BCON_UTF8("a.b"), "}");
    MP_CHECK_EQ_INT(match_b(f, "{\"a\": \"a\\nb\"}"), 0);
    bson_destroy(f);
    /* Perl syntax via PCRE2 (lookahead, \d). */
    MP_CHECK_EQ_INT(match("{\"a\": {\"$regularExpression\": {\"pattern\": \"^(?=.*\\\\d)x\", \"options\": \"\"}}}",
                          "{\"a\": \"x1\"}"), 1);
    /* Implicit regex with options from the literal. */
    MP_CHECK_EQ_INT(match("{\"a\": {\"$regularExpression\": {\"pattern\": \"B\", \"options\": \"i\"}}}",
                          "{\"a\": \"abc\"}"), 1);
    /* $regex given a regex value, $options overrides its flags. */
    f = BCON_NEW("a", "{", "$regex", BCON_REGEX("B", ""), "$options", BCON_UTF8("i"), "}");
    MP_CHECK_EQ_INT(match_b(f, "{\"a\": \"abc\"}"), 1);
    bson_destroy(f);
    /* Symbols are searched too. */
    MP_CHECK_EQ_INT(match("{\"a\": {\"$regularExpression\": {\"pattern\": \"b\", \"options\": \"\"}}}",
                          "{\"a\": {\"$symbol\": \"abc\"}}"), 1);
    f = BCON_NEW("a", "{", "$regex", BCON_UTF8("("), "}");
    MP_CHECK_EQ_INT(match_b(f, "{}"), -1);
    MP_CHECK_CONTAINS(errbuf, "invalid regex");
    bson_destroy(f);
    f = BCON_NEW("a", "{", "$regex", BCON_UTF8("a"), "$options", BCON_UTF8("q"), "}");
    MP_CHECK_EQ_INT(match_b(f, "{}"), -1);
    MP_CHECK_CONTAINS(errbuf, "invalid regex option 'q'");
    bson_destroy(f);
}

MP_TEST(all_elemmatch_size_mod)
{
    MP_CHECK_EQ_INT(match("{\"t\": {\"$all\": [\"a\", \"b\"]}}", "{\"t\": [\"b\", \"c\", \"a\"]}"), 1);
    MP_CHECK_EQ_INT(match("{\"t\": {\"$all\": [\"a\", \"b\"]}}", "{\"t\": [\"a\", \"c\"]}"), 0);
    MP_CHECK_EQ_INT(match("{\"t\": {\"$all\": [\"a\"]}}", "{\"t\": \"a\"}"), 1);
    MP_CHECK_EQ_INT(match("{\"t\": {\"$all\": []}}", "{\"t\": [\"a\"]}"), 0);
    MP_CHECK_EQ_INT(match("{\"t\": {\"$all\": [[\"a\", \"b\"]]}}", "{\"t\": [\"a\", \"b\"]}"), 1);
    MP_CHECK_EQ_INT(match("{\"t\": {\"$all\": [{\"$elemMatch\": {\"x\": 1}}, {\"$elemMatch\": {\"y\": 2}}]}}",
                          "{\"t\": [{\"x\": 1}, {\"y\": 2}]}"), 1);
    /* $elemMatch requires one element to satisfy every condition... */
    MP_CHECK_EQ_INT(match("{\"a\": {\"$elemMatch\": {\"$gt\": 5, \"$lt\": 7}}}", "{\"a\": [4, 8]}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$elemMatch\": {\"$gt\": 5, \"$lt\": 7}}}", "{\"a\": [4, 6]}"), 1);
    /* ...and the field must be an array. */
    MP_CHECK_EQ_INT(match("{\"a\": {\"$elemMatch\": {\"$gt\": 5}}}", "{\"a\": 6}"), 0);
    MP_CHECK_EQ_INT(match("{\"r\": {\"$elemMatch\": {\"p\": \"x\", \"s\": {\"$gte\": 8}}}}",
                          "{\"r\": [{\"p\": \"x\", \"s\": 5}, {\"p\": \"y\", \"s\": 9}]}"), 0);
    /* The implicit form lets different elements satisfy different conditions. */
    MP_CHECK_EQ_INT(match("{\"r.p\": \"x\", \"r.s\": {\"$gte\": 8}}",
                          "{\"r\": [{\"p\": \"x\", \"s\": 5}, {\"p\": \"y\", \"s\": 9}]}"), 1);
    MP_CHECK_EQ_INT(match("{\"r\": {\"$elemMatch\": {\"p\": \"x\", \"s\": {\"$gte\": 8}}}}",
                          "{\"r\": [{\"p\": \"x\", \"s\": 9}]}"), 1);
    MP_CHECK_EQ_INT(match("{\"r\": {\"$elemMatch\": {\"p\": \"x\"}}}", "{\"r\": [1, \"x\"]}"), 0);
    MP_CHECK_EQ_INT(match("{\"a.b\": {\"$elemMatch\": {\"$eq\": 2}}}", "{\"a\": [{\"b\": [1, 2]}]}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$size\": 2}}", "{\"a\": [1, [2, 3]]}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$size\": 1}}", "{\"a\": [1, [2, 3]]}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$size\": 0}}", "{\"a\": []}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$size\": 0}}", "{\"b\": 1}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$size\": 0}}", "{\"a\": 0}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$size\": 2.0}}", "{\"a\": [1, 2]}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$mod\": [4, 0]}}", "{\"a\": 8}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$mod\": [4, 0]}}", "{\"a\": 9}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$mod\": [4, 1]}}", "{\"a\": 9.7}"), 1); /* truncated */
    MP_CHECK_EQ_INT(match("{\"a\": {\"$mod\": [3, -2]}}", "{\"a\": -5}"), 1); /* sign of dividend */
    MP_CHECK_EQ_INT(match("{\"a\": {\"$mod\": [-3, 2]}}", "{\"a\": 5}"), 1);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$mod\": [3, 1]}}", "{\"a\": -5}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$mod\": [4, 0]}}", "{\"a\": \"8\"}"), 0);
    MP_CHECK_EQ_INT(match("{\"a\": {\"$mod\": [4, 0]}}", "{\"a\": [3, 4]}"), 1);
}

/* {"$and": [{"$and": [ ... {"a": 1} ... ]}]} with `levels` $and wrappers. */
static bson_t *nested_and(int levels)
{
    bson_t *cur = BCON_NEW("a", BCON_INT32(1));
    for (int i = 0; i < levels; i++) {
        bson_t *outer = bson_new(), arr;
        bson_append_array_begin(outer, "$and", -1, &arr);
        bson_append_document(&arr, "0", -1, cur);
        bson_append_array_end(outer, &arr);
        bson_destroy(cur);
        cur = outer;
    }
    return cur;
}

MP_TEST(errors)
{
    MP_CHECK_CONTAINS(compile_err("{\"a\": {\"$foo\": 1}}"), "unknown operator $foo");
    MP_CHECK_CONTAINS(compile_err("{\"$where\": \"x\"}"), "unknown top-level operator $where");
    MP_CHECK_CONTAINS(compile_err("{\"a\": {\"$in\": 1}}"), "$in needs an array");
    MP_CHECK_CONTAINS(compile_err("{\"a\": {\"$nin\": {}}}"), "$nin needs an array");
    MP_CHECK_CONTAINS(compile_err("{\"a\": {\"$in\": [{\"$gt\": 1}]}}"), "$in cannot contain operator $gt");
    MP_CHECK_CONTAINS(compile_err("{\"a\": {\"$size\": -1}}"), "$size needs a non-negative integer");
    MP_CHECK_CONTAINS(compile_err("{\"a\": {\"$size\": 1.5}}"), "$size needs a non-negative integer");
    MP_CHECK_CONTAINS(compile_err("{\"a\": {\"$size\": \"1\"}}"), "$size needs a non-negative integer");
    MP_CHECK_CONTAINS(compile_err("{\"a\": {\"$mod\": [0, 1]}}"), "divisor cannot be 0");
    MP_CHECK_CONTAINS(compile_err("{\"a\": {\"$mod\": [1]}}"), "$mod needs an array");
    MP_CHECK_CONTAINS(compile_err("{\"a\": {\"$mod\": [\"x\", 1]}}"), "must be numbers");
    MP_CHECK_CONTAINS(compile_err("{\"$and\": []}"), "$and needs a non-empty array");
    MP_CHECK_CONTAINS(compile_err("{\"$or\": [1]}"), "$or needs a non-empty array");
    MP_CHECK_CONTAINS(compile_err("{\"$nor\": {}}"), "$nor needs a non-empty array");
    MP_CHECK_EQ_INT(type_match("strung", 0, "{}"), -1);
    MP_CHECK_CONTAINS(errbuf, "unknown $type alias 'strung'");
    MP_CHECK_EQ_INT(type_match(NULL, 99, "{}"), -1);
    MP_CHECK_CONTAINS(errbuf, "$type needs");
    MP_CHECK_CONTAINS(compile_err("{\"a\": {\"$not\": 5}}"), "$not needs a regex or a document");
    MP_CHECK_CONTAINS(compile_err("{\"a\": {\"$not\": {\"b\": 1}}}"), "$not needs");
    MP_CHECK_CONTAINS(compile_err("{\"a\": {\"$elemMatch\": 1}}"), "$elemMatch needs an object");
    MP_CHECK_CONTAINS(compile_err("{\"a\": {\"$all\": 1}}"), "$all needs an array");
    MP_CHECK_CONTAINS(compile_err("{\"a\": {\"$gt\": 1, \"b\": 1}}"), "unknown operator b");
    MP_CHECK_CONTAINS(compile_err("{\"a\": {\"$ne\": {\"$regularExpression\": {\"pattern\": \"x\", \"options\": \"\"}}}}"), "$ne cannot take a regex");
    MP_CHECK_CONTAINS(compile_err("{\"a..b\": 1}"), "empty component");
    MP_CHECK_STR(compile_err("{\"a\": {\"$gt\": 1}}"), "");

    /* Nesting beyond 100 levels is refused, not recursed into; 20 levels are fine.
     * Built with the BSON API: libbson's JSON parser has its own, lower depth limit. */
    bson_t *deep = nested_and(120), *shallow = nested_and(20);
    MP_CHECK_EQ_INT(match_b(deep, "{\"a\": 1}"), -1);
    MP_CHECK_CONTAINS(errbuf, "exceeds 100 levels");
    MP_CHECK_EQ_INT(match_b(shallow, "{\"a\": 1}"), 1);
    MP_CHECK_EQ_INT(match_b(shallow, "{\"a\": 2}"), 0);
    bson_destroy(deep);
    bson_destroy(shallow);
}

MP_TEST(constraints_for_planner)
{
    bson_t *f = ldb_t_json("{\"a\": 1, \"b\": {\"$gte\": 2, \"$lt\": 9}, \"c\": {\"$in\": [1, 2]},"
                           " \"$and\": [{\"d.e\": \"x\"}], \"$or\": [{\"z\": 1}, {\"y\": 2}],"
                           " \"n\": {\"$ne\": 3}, \"t\": {\"$all\": [1, 2]}}");
    ldb_matcher *m;
    MP_CHECK_EQ_INT(ldb_match_compile(f, &m, errbuf, sizeof(errbuf)), 0);
    bson_destroy(f); /* the matcher owns its own copy */
    const ldb_constraint *c;
    size_t n = ldb_match_constraints(m, &c);
    MP_CHECK_EQ_INT(n, 5);
    if (n == 5) {
        MP_CHECK_STR(c[0].path, "a");
        MP_CHECK_EQ_INT(c[0].op, LDB_C_EQ);
        MP_CHECK_EQ_INT(c[0].value->value.v_int32, 1);
        MP_CHECK_STR(c[1].path, "b");
        MP_CHECK_EQ_INT(c[1].op, LDB_C_GTE);
        MP_CHECK_EQ_INT(c[2].op, LDB_C_LT);
        MP_CHECK_EQ_INT(c[2].value->value.v_int32, 9);
        MP_CHECK_STR(c[3].path, "c");
        MP_CHECK_EQ_INT(c[3].op, LDB_C_IN);
        MP_CHECK_EQ_INT(c[3].value->value_type, BSON_TYPE_ARRAY);
        MP_CHECK_STR(c[4].path, "d.e");
        MP_CHECK_STR(c[4].value->value.v_utf8.str, "x");
    }
    ldb_matcher_free(m);
}

static int sort_cmp_json(const char *spec, const char *a, const char *b)
{
    bson_t *s = ldb_t_json(spec), *da = ldb_t_json(a), *db = ldb_t_json(b);
    ldb_sort *srt;
    int r = 99;
    if (ldb_sort_compile(s, &srt, errbuf, sizeof(errbuf)) == 0) {
        int c = ldb_sort_cmp(srt, da, db);
        r = c < 0 ? -1 : c > 0 ? 1 : 0;
        ldb_sort_free(srt);
    }
    bson_destroy(s);
    bson_destroy(da);
    bson_destroy(db);
    return r;
}

MP_TEST(sort_keys)
{
    MP_CHECK_EQ_INT(sort_cmp_json("{\"a\": 1}", "{\"a\": 1}", "{\"a\": 2}"), -1);
    MP_CHECK_EQ_INT(sort_cmp_json("{\"a\": -1}", "{\"a\": 1}", "{\"a\": 2}"), 1);
    /* Missing sorts as null: before numbers ascending. */
    MP_CHECK_EQ_INT(sort_cmp_json("{\"a\": 1}", "{}", "{\"a\": 0}"), -1);
    MP_CHECK_EQ_INT(sort_cmp_json("{\"a\": 1}", "{}", "{\"a\": null}"), 0);
    /* Arrays: min element ascending, max element descending. */
    MP_CHECK_EQ_INT(sort_cmp_json("{\"a\": 1}", "{\"a\": [5, 1]}", "{\"a\": 2}"), -1);
    MP_CHECK_EQ_INT(sort_cmp_json("{\"a\": -1}", "{\"a\": [5, 1]}", "{\"a\": 2}"), -1);
    MP_CHECK_EQ_INT(sort_cmp_json("{\"a\": 1, \"b\": -1}", "{\"a\": 1, \"b\": 1}", "{\"a\": 1, \"b\": 2}"), 1);
    MP_CHECK_EQ_INT(sort_cmp_json("{\"a.b\": 1}", "{\"a\": [{\"b\": 3}, {\"b\": 0}]}", "{\"a\": {\"b\": 1}}"), -1);
    MP_CHECK_EQ_INT(sort_cmp_json("{\"a\": 1}", "{\"a\": \"x\"}", "{\"a\": 100}"), 1);
    MP_CHECK_EQ_INT(sort_cmp_json("{\"a\": 2}", "{}", "{}"), 99);
    MP_CHECK_CONTAINS(errbuf, "must be 1 or -1");
}

MP_TEST_MAIN(MP_CASE(implicit_equality_and_paths), MP_CASE(arrays_implicit_and_indexes),
             MP_CASE(null_and_missing), MP_CASE(comparisons_and_type_bracketing),
             MP_CASE(bson_comparison_order), MP_CASE(in_nin), MP_CASE(logical),
             MP_CASE(exists_and_type), MP_CASE(regex), MP_CASE(all_elemmatch_size_mod),
             MP_CASE(errors), MP_CASE(constraints_for_planner), MP_CASE(sort_keys))
