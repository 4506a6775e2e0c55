/*
 * test_ldb_update.c — LauraDB update operators, replacement updates and upserts,
 * checked against MongoDB's documented results: exact resulting documents (types
 * included), the changed flag, and the error for each invalid update.
 */
#include "ldb_update.h"
#include "mp_test.h"
#include "ldb_test_util.h"

#include <errno.h>

static char errbuf[256];
static const ldb_update_opts fixed_clock = {.now_ms = 1700000000123};

/* Applies update_json to doc_json; returns the errno-style result. On success *out is
 * initialised and must be destroyed. */
static int upd_b(const char *doc_json, const bson_t *update, bson_t *out, bool *changed)
{
    bson_t *d = ldb_t_json(doc_json);
    int rc = ldb_update_apply(d, update, &fixed_clock, out, changed, errbuf, sizeof(errbuf));
    bson_destroy(d);
    return rc;
}

static int upd(const char *doc_json, const char *update_json, bson_t *out, bool *changed)
{
    bson_t *u = ldb_t_json(update_json);
    int rc = upd_b(doc_json, u, out, changed);
    bson_destroy(u);
    return rc;
}

/* Checks that applying the update gives exactly want_json. */
#define CHECK_UPD(doc, update, want)                                              \
    do {                                                                          \
        bson_t out_;                                                              \
        bool ch_;                                                                 \
        int rc_ = upd((doc), (update), &out_, &ch_);                              \
        MP_CHECK_EQ_INT(rc_, 0);                                                  \
        if (rc_ == 0) {                                                           \
            LDB_CHECK_DOC(&out_, (want));                                         \
            bson_destroy(&out_);                                                  \
        } else {                                                                  \
            fprintf(stderr, "  error: %s\n", errbuf);                             \
        }                                                                         \
    } while (0)

/* Checks that the update fails with -EINVAL (or erange) and a message containing msg. */
#define CHECK_UPD_ERR(doc, update, want_rc, msg)                                  \
    do {                                                                          \
        bson_t out_;                                                              \
        bool ch_;                                                                 \
        int rc_ = upd((doc), (update), &out_, &ch_);                              \
        MP_CHECK_EQ_INT(rc_, (want_rc));                                          \
        if (rc_ == 0)                                                             \
            bson_destroy(&out_);                                                  \
        else                                                                      \
            MP_CHECK_CONTAINS(errbuf, (msg));                                     \
    } while (0)

MP_TEST(set_and_unset)
{
    CHECK_UPD("{\"_id\": 1, \"a\": 1}", "{\"$set\": {\"a\": 2, \"b\": \"x\"}}", "{\"_id\": 1, \"a\": 2, \"b\": \"x\"}");
    CHECK_UPD("{\"_id\": 1}", "{\"$set\": {\"a.b.c\": 1}}", "{\"_id\": 1, \"a\": {\"b\": {\"c\": 1}}}");
    CHECK_UPD("{\"_id\": 1, \"a\": {\"x\": 1}}", "{\"$set\": {\"a.y\": 2}}", "{\"_id\": 1, \"a\": {\"x\": 1, \"y\": 2}}");
    CHECK_UPD("{\"a\": [1, 2, 3]}", "{\"$set\": {\"a.1\": 9}}", "{\"a\": [1, 9, 3]}");
    /* Setting past the end pads with nulls. */
    CHECK_UPD("{\"a\": [1]}", "{\"$set\": {\"a.3\": 9}}", "{\"a\": [1, null, null, 9]}");
    CHECK_UPD("{\"a\": [{\"b\": 1}]}", "{\"$set\": {\"a.0.b\": 2}}", "{\"a\": [{\"b\": 2}]}");
    CHECK_UPD("{\"a\": 1}", "{\"$set\": {\"a\": {\"n\": [1, {\"m\": 2}]}}}", "{\"a\": {\"n\": [1, {\"m\": 2}]}}");
    CHECK_UPD("{\"a\": 1, \"b\": 2}", "{\"$unset\": {\"a\": \"\"}}", "{\"b\": 2}");
    CHECK_UPD("{\"a\": {\"b\": 1, \"c\": 2}}", "{\"$unset\": {\"a.b\": 1}}", "{\"a\": {\"c\": 2}}");
    CHECK_UPD("{\"a\": 1}", "{\"$unset\": {\"zz\": 1, \"a.b\": 1}}", "{\"a\": 1}");
    /* Unsetting an array element leaves null in its place. */
    CHECK_UPD("{\"a\": [1, 2, 3]}", "{\"$unset\": {\"a.1\": 1}}", "{\"a\": [1, null, 3]}");
    CHECK_UPD_ERR("{\"a\": 5}", "{\"$set\": {\"a.b\": 1}}", -EINVAL, "cannot create field 'b'");
    CHECK_UPD_ERR("{\"a\": [1]}", "{\"$set\": {\"a.x\": 1}}", -EINVAL, "cannot create field 'x' in an array");
}

MP_TEST(changed_flag)
{
    bson_t out;
    bool ch = true;
    MP_CHECK_EQ_INT(upd("{\"a\": 1}", "{\"$set\": {\"a\": 1}}", &out, &ch), 0);
    MP_CHECK(!ch);
    bson_destroy(&out);
    /* Same number, different type: MongoDB stores the new type, so it changed. */
    MP_CHECK_EQ_INT(upd("{\"a\": 1}", "{\"$set\": {\"a\": 1.0}}", &out, &ch), 0);
    MP_CHECK(ch);
    LDB_CHECK_DOC(&out, "{\"a\": 1.0}");
    bson_destroy(&out);
    MP_CHECK_EQ_INT(upd("{\"a\": 1}", "{\"$unset\": {\"b\": 1}}", &out, &ch), 0);
    MP_CHECK(!ch);
    bson_destroy(&out);
    MP_CHECK_EQ_INT(upd("{\"a\": [1]}", "{\"$addToSet\": {\"a\": 1}}", &out, &ch), 0);
    MP_CHECK(!ch);
    bson_destroy(&out);
    MP_CHECK_EQ_INT(upd("{\"a\": 1}", "{\"$inc\": {\"a\": 1}}", &out, &ch), 0);
    MP_CHECK(ch);
    bson_destroy(&out);
}

MP_TEST(inc_mul)
{
    CHECK_UPD("{\"a\": 1}", "{\"$inc\": {\"a\": 2}}", "{\"a\": 3}");
    CHECK_UPD("{\"a\": 1}", "{\"$inc\": {\"a\": -5}}", "{\"a\": -4}");
    CHECK_UPD("{}", "{\"$inc\": {\"a.b\": 2}}", "{\"a\": {\"b\": 2}}");
    CHECK_UPD("{\"a\": 1}", "{\"$inc\": {\"a\": 0.5}}", "{\"a\": 1.5}");
    CHECK_UPD("{\"a\": 1.5}", "{\"$inc\": {\"a\": 1}}", "{\"a\": 2.5}");
    CHECK_UPD("{\"a\": 1}", "{\"$inc\": {\"a\": {\"$numberLong\": \"1\"}}}", "{\"a\": {\"$numberLong\": \"2\"}}");
    /* int32 overflow widens to int64; int64 overflow is an error. */
    CHECK_UPD("{\"a\": 2147483647}", "{\"$inc\": {\"a\": 1}}", "{\"a\": {\"$numberLong\": \"2147483648\"}}");
    CHECK_UPD("{\"a\": -2147483648}", "{\"$inc\": {\"a\": -1}}", "{\"a\": {\"$numberLong\": \"-2147483649\"}}");
    CHECK_UPD_ERR("{\"a\": {\"$numberLong\": \"9223372036854775807\"}}", "{\"$inc\": {\"a\": 1}}", -ERANGE, "overflows");
    CHECK_UPD("{\"a\": 3}", "{\"$mul\": {\"a\": 4}}", "{\"a\": 12}");
    CHECK_UPD("{\"a\": 3}", "{\"$mul\": {\"a\": 0.5}}", "{\"a\": 1.5}");
    CHECK_UPD("{\"a\": 65536}", "{\"$mul\": {\"a\": 65536}}", "{\"a\": {\"$numberLong\": \"4294967296\"}}");
    /* $mul on a missing field stores 0 of the multiplier's type. */
    CHECK_UPD("{}", "{\"$mul\": {\"a\": 5}}", "{\"a\": 0}");
    CHECK_UPD("{}", "{\"$mul\": {\"a\": {\"$numberLong\": \"5\"}}}", "{\"a\": {\"$numberLong\": \"0\"}}");
    CHECK_UPD("{}", "{\"$mul\": {\"a\": 2.5}}", "{\"a\": 0.0}");
    CHECK_UPD_ERR("{\"a\": {\"$numberLong\": \"4611686018427387904\"}}", "{\"$mul\": {\"a\": 2}}", -ERANGE, "overflows");
    CHECK_UPD_ERR("{\"a\": \"x\"}", "{\"$inc\": {\"a\": 1}}", -EINVAL, "non-numeric type string");
    CHECK_UPD_ERR("{\"a\": 1}", "{\"$inc\": {\"a\": \"1\"}}", -EINVAL, "$inc needs a numeric argument");
    CHECK_UPD_ERR("{\"a\": 1}", "{\"$mul\": {\"a\": null}}", -EINVAL, "$mul needs a numeric argument");
    CHECK_UPD_ERR("{\"a\": {\"$numberDecimal\": \"1\"}}", "{\"$inc\": {\"a\": 1}}", -EINVAL, "decimal128");
}

MP_TEST(min_max)
{
    CHECK_UPD("{\"a\": 5}", "{\"$min\": {\"a\": 3}}", "{\"a\": 3}");
    CHECK_UPD("{\"a\": 5}", "{\"$min\": {\"a\": 7}}", "{\"a\": 5}");
    CHECK_UPD("{\"a\": 5}", "{\"$max\": {\"a\": 7}}", "{\"a\": 7}");
    CHECK_UPD("{\"a\": 5}", "{\"$max\": {\"a\": 5.0}}", "{\"a\": 5}"); /* equal: unchanged */
    CHECK_UPD("{}", "{\"$min\": {\"a\": 1}}", "{\"a\": 1}");
    /* Across types by BSON order: null < numbers < strings. */
    CHECK_UPD("{\"a\": 5}", "{\"$min\": {\"a\": null}}", "{\"a\": null}");
    CHECK_UPD("{\"a\": 5}", "{\"$max\": {\"a\": \"x\"}}", "{\"a\": \"x\"}");
    CHECK_UPD("{\"a\": \"x\"}", "{\"$min\": {\"a\": 100}}", "{\"a\": 100}");
    CHECK_UPD("{\"d\": {\"$date\": {\"$numberLong\": \"10\"}}}", "{\"$max\": {\"d\": {\"$date\": {\"$numberLong\": \"20\"}}}}",
              "{\"d\": {\"$date\": {\"$numberLong\": \"20\"}}}");
}

MP_TEST(rename_field)
{
    CHECK_UPD("{\"a\": 1, \"b\": 2}", "{\"$rename\": {\"a\": \"c\"}}", "{\"b\": 2, \"c\": 1}");
    CHECK_UPD("{\"a\": 1, \"b\": 2}", "{\"$rename\": {\"a\": \"b\"}}", "{\"b\": 1}");
    CHECK_UPD("{\"a\": 1}", "{\"$rename\": {\"a\": \"x.y.z\"}}", "{\"x\": {\"y\": {\"z\": 1}}}");
    CHECK_UPD("{\"n\": {\"f\": \"v\", \"g\": 1}}", "{\"$rename\": {\"n.f\": \"first\"}}", "{\"n\": {\"g\": 1}, \"first\": \"v\"}");
    CHECK_UPD("{\"a\": 1}", "{\"$rename\": {\"zz\": \"y\"}}", "{\"a\": 1}");
    CHECK_UPD_ERR("{\"a\": [{\"b\": 1}]}", "{\"$rename\": {\"a.0.b\": \"c\"}}", -EINVAL, "array");
    CHECK_UPD_ERR("{\"a\": 1}", "{\"$rename\": {\"a\": 5}}", -EINVAL, "must be a string");
    CHECK_UPD_ERR("{\"a\": 1}", "{\"$rename\": {\"a\": \"a\"}}", -EINVAL, "conflict");
    CHECK_UPD_ERR("{\"a\": {\"b\": 1}}", "{\"$rename\": {\"a\": \"a.c\"}}", -EINVAL, "conflict");
}

MP_TEST(current_date)
{
    CHECK_UPD("{\"a\": 1}", "{\"$currentDate\": {\"d\": true}}",
              "{\"a\": 1, \"d\": {\"$date\": {\"$numberLong\": \"1700000000123\"}}}");
    /* {$type: ...} documents are built with BCON: libbson's JSON parser reads that shape
     * as legacy binary. */
    bson_t out0, *u0 = BCON_NEW("$currentDate", "{", "d", "{", "$type", BCON_UTF8("date"), "}", "}");
    bool ch0;
    MP_CHECK_EQ_INT(upd_b("{}", u0, &out0, &ch0), 0);
    LDB_CHECK_DOC(&out0, "{\"d\": {\"$date\": {\"$numberLong\": \"1700000000123\"}}}");
    bson_destroy(&out0);
    bson_destroy(u0);
    u0 = BCON_NEW("$currentDate", "{", "t", "{", "$type", BCON_UTF8("timestamp"), "}", "}");
    MP_CHECK_EQ_INT(upd_b("{\"t\": 1}", u0, &out0, &ch0), 0);
    LDB_CHECK_DOC(&out0, "{\"t\": {\"$timestamp\": {\"t\": 1700000000, \"i\": 1}}}");
    MP_CHECK(ch0);
    bson_destroy(&out0);
    bson_destroy(u0);
    u0 = BCON_NEW("$currentDate", "{", "t", "{", "$type", BCON_UTF8("clock"), "}", "}");
    MP_CHECK_EQ_INT(upd_b("{}", u0, &out0, &ch0), -EINVAL);
    MP_CHECK_CONTAINS(errbuf, "\"date\" or \"timestamp\"");
    bson_destroy(u0);
    CHECK_UPD_ERR("{}", "{\"$currentDate\": {\"t\": 5}}", -EINVAL, "$currentDate");
    /* With the real clock: a date close to now. */
    bson_t *d = ldb_t_json("{}"), *u = ldb_t_json("{\"$currentDate\": {\"d\": true}}"), out;
    bool ch;
    MP_CHECK_EQ_INT(ldb_update_apply(d, u, NULL, &out, &ch, errbuf, sizeof(errbuf)), 0);
    bson_iter_t it;
    MP_CHECK(bson_iter_init_find(&it, &out, "d") && BSON_ITER_HOLDS_DATE_TIME(&it) &&
             bson_iter_date_time(&it) > 1700000000000LL);
    bson_destroy(&out);
    bson_destroy(d);
    bson_destroy(u);
}

MP_TEST(push)
{
    CHECK_UPD("{\"a\": [1]}", "{\"$push\": {\"a\": 2}}", "{\"a\": [1, 2]}");
    CHECK_UPD("{}", "{\"$push\": {\"a\": 2}}", "{\"a\": [2]}");
    CHECK_UPD("{\"a\": [1]}", "{\"$push\": {\"a\": [2, 3]}}", "{\"a\": [1, [2, 3]]}");
    CHECK_UPD("{\"a\": [1]}", "{\"$push\": {\"a\": {\"$each\": [2, 3]}}}", "{\"a\": [1, 2, 3]}");
    CHECK_UPD("{\"a\": [1, 2]}", "{\"$push\": {\"a\": {\"$each\": [9], \"$position\": 0}}}", "{\"a\": [9, 1, 2]}");
    CHECK_UPD("{\"a\": [1, 2]}", "{\"$push\": {\"a\": {\"$each\": [9], \"$position\": 1}}}", "{\"a\": [1, 9, 2]}");
    CHECK_UPD("{\"a\": [1, 2]}", "{\"$push\": {\"a\": {\"$each\": [9], \"$position\": 50}}}", "{\"a\": [1, 2, 9]}");
    /* Negative positions count from the end: -1 is before the last element. */
    CHECK_UPD("{\"a\": [1, 2, 3]}", "{\"$push\": {\"a\": {\"$each\": [8, 9], \"$position\": -1}}}", "{\"a\": [1, 2, 8, 9, 3]}");
    CHECK_UPD("{\"a\": [1, 2]}", "{\"$push\": {\"a\": {\"$each\": [9], \"$position\": -10}}}", "{\"a\": [9, 1, 2]}");
    CHECK_UPD("{\"a\": [1, 2, 3]}", "{\"$push\": {\"a\": {\"$each\": [4], \"$slice\": 2}}}", "{\"a\": [1, 2]}");
    CHECK_UPD("{\"a\": [1, 2, 3]}", "{\"$push\": {\"a\": {\"$each\": [4], \"$slice\": -2}}}", "{\"a\": [3, 4]}");
    CHECK_UPD("{\"a\": [1, 2, 3]}", "{\"$push\": {\"a\": {\"$each\": [], \"$slice\": 0}}}", "{\"a\": []}");
    CHECK_UPD("{\"a\": [1]}", "{\"$push\": {\"a\": {\"$each\": [2], \"$slice\": -5}}}", "{\"a\": [1, 2]}");
    CHECK_UPD("{\"a\": [3, 1]}", "{\"$push\": {\"a\": {\"$each\": [2], \"$sort\": 1}}}", "{\"a\": [1, 2, 3]}");
    CHECK_UPD("{\"a\": [3, 1]}", "{\"$push\": {\"a\": {\"$each\": [2], \"$sort\": -1, \"$slice\": 2}}}", "{\"a\": [3, 2]}");
    /* $sort happens before $slice regardless of the order they are written in. */
    CHECK_UPD("{\"a\": [3, 1]}", "{\"$push\": {\"a\": {\"$slice\": 1, \"$each\": [2], \"$sort\": 1}}}", "{\"a\": [1]}");
    CHECK_UPD("{\"q\": [{\"s\": 5, \"n\": \"a\"}, {\"s\": 1, \"n\": \"b\"}]}",
              "{\"$push\": {\"q\": {\"$each\": [{\"s\": 3, \"n\": \"c\"}], \"$sort\": {\"s\": -1}, \"$slice\": -2}}}",
              "{\"q\": [{\"s\": 3, \"n\": \"c\"}, {\"s\": 1, \"n\": \"b\"}]}");
    CHECK_UPD("{\"a\": [\"b\", 2, null]}", "{\"$push\": {\"a\": {\"$each\": [], \"$sort\": 1}}}", "{\"a\": [null, 2, \"b\"]}");
    /* A document without $each is pushed as a value. */
    CHECK_UPD("{\"a\": []}", "{\"$push\": {\"a\": {\"x\": 1}}}", "{\"a\": [{\"x\": 1}]}");
    CHECK_UPD_ERR("{\"a\": 1}", "{\"$push\": {\"a\": 2}}", -EINVAL, "needs an array at 'a' but found int");
    CHECK_UPD_ERR("{\"a\": []}", "{\"$push\": {\"a\": {\"$each\": 1}}}", -EINVAL, "$each for 'a' needs an array");
    CHECK_UPD_ERR("{\"a\": []}", "{\"$push\": {\"a\": {\"$each\": [], \"$slice\": \"x\"}}}", -EINVAL, "$slice");
    CHECK_UPD_ERR("{\"a\": []}", "{\"$push\": {\"a\": {\"$each\": [], \"$position\": 1.5}}}", -EINVAL, "$position");
    CHECK_UPD_ERR("{\"a\": []}", "{\"$push\": {\"a\": {\"$each\": [], \"$sort\": 2}}}", -EINVAL, "$sort");
    CHECK_UPD_ERR("{\"a\": []}", "{\"$push\": {\"a\": {\"$each\": [], \"$bad\": 2}}}", -EINVAL, "unrecognized $push modifier $bad");
}

MP_TEST(add_to_set)
{
    CHECK_UPD("{\"a\": [1, 2]}", "{\"$addToSet\": {\"a\": 2}}", "{\"a\": [1, 2]}");
    CHECK_UPD("{\"a\": [1, 2]}", "{\"$addToSet\": {\"a\": 3}}", "{\"a\": [1, 2, 3]}");
    CHECK_UPD("{\"a\": [1, 2]}", "{\"$addToSet\": {\"a\": 2.0}}", "{\"a\": [1, 2]}"); /* numerically equal */
    CHECK_UPD("{}", "{\"$addToSet\": {\"a\": \"x\"}}", "{\"a\": [\"x\"]}");
    CHECK_UPD("{\"a\": [1]}", "{\"$addToSet\": {\"a\": {\"$each\": [1, 2, 2, 3]}}}", "{\"a\": [1, 2, 3]}");
    CHECK_UPD("{\"a\": [1]}", "{\"$addToSet\": {\"a\": [1]}}", "{\"a\": [1, [1]]}");
    /* Documents: duplicates only with identical fields in identical order. */
    CHECK_UPD("{\"a\": [{\"x\": 1, \"y\": 2}]}", "{\"$addToSet\": {\"a\": {\"x\": 1, \"y\": 2}}}", "{\"a\": [{\"x\": 1, \"y\": 2}]}");
    CHECK_UPD("{\"a\": [{\"x\": 1, \"y\": 2}]}", "{\"$addToSet\": {\"a\": {\"y\": 2, \"x\": 1}}}",
              "{\"a\": [{\"x\": 1, \"y\": 2}, {\"y\": 2, \"x\": 1}]}");
    CHECK_UPD_ERR("{\"a\": \"s\"}", "{\"$addToSet\": {\"a\": 1}}", -EINVAL, "needs an array");
    CHECK_UPD_ERR("{\"a\": []}", "{\"$addToSet\": {\"a\": {\"$each\": 1}}}", -EINVAL, "needs an array");
}

MP_TEST(pull_pullall_pop)
{
    CHECK_UPD("{\"a\": [1, 2, 1, 3]}", "{\"$pull\": {\"a\": 1}}", "{\"a\": [2, 3]}");
    CHECK_UPD("{\"a\": [1, 6, 8, 3]}", "{\"$pull\": {\"a\": {\"$gte\": 6}}}", "{\"a\": [1, 3]}");
    CHECK_UPD("{\"a\": [\"apple\", \"kiwi\", \"avocado\"]}",
              "{\"$pull\": {\"a\": {\"$regularExpression\": {\"pattern\": \"^a\", \"options\": \"\"}}}}", "{\"a\": [\"kiwi\"]}");
    CHECK_UPD("{\"a\": [1, 2, 3]}", "{\"$pull\": {\"a\": {\"$in\": [1, 3]}}}", "{\"a\": [2]}");
    /* A document condition is a query on element documents (extra fields allowed). */
    CHECK_UPD("{\"r\": [{\"i\": \"A\", \"s\": 5}, {\"i\": \"B\", \"s\": 8, \"c\": \"x\"}, 7]}",
              "{\"$pull\": {\"r\": {\"s\": 8, \"i\": \"B\"}}}", "{\"r\": [{\"i\": \"A\", \"s\": 5}, 7]}");
    CHECK_UPD("{\"r\": [{\"s\": 5}, {\"s\": 9}]}", "{\"$pull\": {\"r\": {\"s\": {\"$gt\": 6}}}}", "{\"r\": [{\"s\": 5}]}");
    CHECK_UPD("{\"a\": [[1, 2], [1]]}", "{\"$pull\": {\"a\": [1, 2]}}", "{\"a\": [[1]]}");
    CHECK_UPD("{\"b\": 1}", "{\"$pull\": {\"a\": 1}}", "{\"b\": 1}");
    CHECK_UPD("{\"a\": [0, 5, 5, 1, 7]}", "{\"$pullAll\": {\"a\": [5, 7]}}", "{\"a\": [0, 1]}");
    CHECK_UPD("{\"a\": [{\"x\": 1}, {\"x\": 1, \"y\": 1}]}", "{\"$pullAll\": {\"a\": [{\"x\": 1}]}}", "{\"a\": [{\"x\": 1, \"y\": 1}]}");
    CHECK_UPD_ERR("{\"a\": [1]}", "{\"$pullAll\": {\"a\": 1}}", -EINVAL, "$pullAll for 'a' needs an array");
    CHECK_UPD_ERR("{\"a\": 1}", "{\"$pull\": {\"a\": 1}}", -EINVAL, "needs an array");
    CHECK_UPD("{\"a\": [1, 2, 3]}", "{\"$pop\": {\"a\": 1}}", "{\"a\": [1, 2]}");
    CHECK_UPD("{\"a\": [1, 2, 3]}", "{\"$pop\": {\"a\": -1}}", "{\"a\": [2, 3]}");
    CHECK_UPD("{\"a\": []}", "{\"$pop\": {\"a\": 1}}", "{\"a\": []}");
    CHECK_UPD("{}", "{\"$pop\": {\"a\": 1}}", "{}");
    CHECK_UPD_ERR("{\"a\": [1]}", "{\"$pop\": {\"a\": 2}}", -EINVAL, "needs 1 (last) or -1 (first)");
    CHECK_UPD_ERR("{\"a\": 3}", "{\"$pop\": {\"a\": 1}}", -EINVAL, "needs an array");
}

MP_TEST(conflicts_and_id)
{
    CHECK_UPD_ERR("{\"a\": 1}", "{\"$set\": {\"a\": 1}, \"$inc\": {\"a\": 1}}", -EINVAL, "conflict");
    CHECK_UPD_ERR("{\"a\": {}}", "{\"$set\": {\"a.b\": 1}, \"$unset\": {\"a\": 1}}", -EINVAL, "conflict");
    CHECK_UPD_ERR("{}", "{\"$set\": {\"a\": 1, \"a.b\": 2}}", -EINVAL, "conflict");
    CHECK_UPD("{}", "{\"$set\": {\"ab\": 1, \"a\": 2}}", "{\"ab\": 1, \"a\": 2}"); /* not a prefix at a dot */
    CHECK_UPD_ERR("{\"_id\": 1}", "{\"$set\": {\"_id\": 2}}", -EINVAL, "immutable field '_id'");
    CHECK_UPD_ERR("{\"_id\": 1}", "{\"$unset\": {\"_id\": 1}}", -EINVAL, "immutable field '_id'");
    CHECK_UPD_ERR("{\"_id\": {\"a\": 1}}", "{\"$set\": {\"_id.a\": 2}}", -EINVAL, "immutable field '_id'");
    CHECK_UPD_ERR("{\"_id\": 1}", "{\"$inc\": {\"_id\": 1}}", -EINVAL, "immutable field '_id'");
    CHECK_UPD("{\"_id\": 1, \"a\": 1}", "{\"$set\": {\"_id\": 1, \"a\": 2}}", "{\"_id\": 1, \"a\": 2}"); /* same value */
    CHECK_UPD_ERR("{}", "{\"$foo\": {\"a\": 1}}", -EINVAL, "unknown update operator $foo");
    CHECK_UPD_ERR("{}", "{\"$set\": 5}", -EINVAL, "$set needs a document");
    CHECK_UPD_ERR("{}", "{\"$set\": {\"a\": 1}, \"b\": 2}", -EINVAL, "mixes operators");
    CHECK_UPD_ERR("{}", "{\"$set\": {\"a.$.b\": 1}}", -EINVAL, "positional operator");
    CHECK_UPD_ERR("{}", "{\"$set\": {\"a..b\": 1}}", -EINVAL, "empty field name");
    /* An error leaves nothing half-applied: the caller still has the old document. */
    CHECK_UPD_ERR("{\"a\": 1, \"b\": \"x\"}", "{\"$set\": {\"a\": 2}, \"$inc\": {\"b\": 1}}", -EINVAL, "non-numeric");
    /* $setOnInsert does nothing on a plain update. */
    CHECK_UPD("{\"a\": 1}", "{\"$setOnInsert\": {\"b\": 1}}", "{\"a\": 1}");
}

MP_TEST(replacement)
{
    CHECK_UPD("{\"_id\": 7, \"a\": 1, \"b\": 2}", "{\"c\": 3}", "{\"_id\": 7, \"c\": 3}");
    CHECK_UPD("{\"_id\": 7, \"a\": 1}", "{\"c\": 3, \"_id\": 7}", "{\"_id\": 7, \"c\": 3}");
    CHECK_UPD("{\"_id\": 7, \"a\": 1}", "{}", "{\"_id\": 7}");
    CHECK_UPD("{\"a\": 1}", "{\"b\": 1}", "{\"b\": 1}");
    CHECK_UPD_ERR("{\"_id\": 7, \"a\": 1}", "{\"_id\": 8, \"c\": 3}", -EINVAL, "immutable field '_id'");
    bson_t out;
    bool ch = true;
    MP_CHECK_EQ_INT(upd("{\"_id\": 7, \"a\": 1}", "{\"a\": 1}", &out, &ch), 0);
    MP_CHECK(!ch);
    bson_destroy(&out);
}

static int ups(const char *filter, const char *update, bson_t *out)
{
    bson_t *f = ldb_t_json(filter), *u = ldb_t_json(update);
    int rc = ldb_update_apply_upsert(f, u, &fixed_clock, out, errbuf, sizeof(errbuf));
    bson_destroy(f);
    bson_destroy(u);
    return rc;
}

#define CHECK_UPSERT(filter, update, want)                                        \
    do {                                                                          \
        bson_t out_;                                                              \
        int rc_ = ups((filter), (update), &out_);                                 \
        MP_CHECK_EQ_INT(rc_, 0);                                                  \
        if (rc_ == 0) {                                                           \
            LDB_CHECK_DOC(&out_, (want));                                         \
            bson_destroy(&out_);                                                  \
        } else {                                                                  \
            fprintf(stderr, "  error: %s\n", errbuf);                             \
        }                                                                         \
    } while (0)

MP_TEST(upsert)
{
    CHECK_UPSERT("{\"a\": 1, \"b\": {\"$gt\": 5}}", "{\"$set\": {\"c\": 2}}", "{\"a\": 1, \"c\": 2}");
    CHECK_UPSERT("{\"a\": 1}", "{\"$setOnInsert\": {\"created\": true}, \"$inc\": {\"n\": 1}}",
                 "{\"a\": 1, \"created\": true, \"n\": 1}");
    CHECK_UPSERT("{\"x.y\": 1, \"$and\": [{\"z\": \"q\"}], \"$or\": [{\"o\": 1}]}", "{\"$set\": {\"x.w\": 2}}",
                 "{\"x\": {\"y\": 1, \"w\": 2}, \"z\": \"q\"}");
    CHECK_UPSERT("{\"a\": {\"$eq\": 4}}", "{\"$inc\": {\"a\": 1}}", "{\"a\": 5}");
    /* _id comes first. */
    CHECK_UPSERT("{\"a\": 1, \"_id\": 9}", "{\"$set\": {\"b\": 1}}", "{\"_id\": 9, \"a\": 1, \"b\": 1}");
    CHECK_UPSERT("{\"a\": 1}", "{\"$setOnInsert\": {\"_id\": 3}}", "{\"_id\": 3, \"a\": 1}");
    /* Replacement upsert: the replacement plus the filter's _id only. */
    CHECK_UPSERT("{\"_id\": 9, \"a\": 1}", "{\"b\": 2}", "{\"_id\": 9, \"b\": 2}");
    CHECK_UPSERT("{\"a\": 1}", "{\"b\": 2}", "{\"b\": 2}");
    CHECK_UPSERT("{\"t\": {\"$all\": [1, 2]}}", "{\"$set\": {\"b\": 1}}", "{\"b\": 1}");
    bson_t out;
    MP_CHECK_EQ_INT(ups("{\"_id\": 9}", "{\"$set\": {\"_id\": 10}}", &out), -EINVAL);
    MP_CHECK_CONTAINS(errbuf, "immutable field '_id'");
    MP_CHECK_EQ_INT(ups("{\"a\": {\"$bogus\": 1}}", "{\"$set\": {\"b\": 1}}", &out), -EINVAL);
    MP_CHECK_CONTAINS(errbuf, "unknown operator $bogus");
}

MP_TEST(depth_limit)
{
    /* A document nested past 100 levels is refused by operator updates. */
    bson_t *cur = BCON_NEW("x", BCON_INT32(1));
    for (int i = 0; i < 110; i++) {
        bson_t *outer = bson_new();
        bson_append_document(outer, "n", -1, cur);
        bson_destroy(cur);
        cur = outer;
    }
    bson_t *u = ldb_t_json("{\"$set\": {\"a\": 1}}"), out;
    bool ch;
    MP_CHECK_EQ_INT(ldb_update_apply(cur, u, &fixed_clock, &out, &ch, errbuf, sizeof(errbuf)), -EINVAL);
    MP_CHECK_CONTAINS(errbuf, "exceeds 100 levels");
    bson_destroy(cur);
    bson_destroy(u);
}

MP_TEST_MAIN(MP_CASE(set_and_unset), MP_CASE(changed_flag), MP_CASE(inc_mul), MP_CASE(min_max),
             MP_CASE(rename_field), MP_CASE(current_date), MP_CASE(push), MP_CASE(add_to_set),
             MP_CASE(pull_pullall_pop), MP_CASE(conflicts_and_id), MP_CASE(replacement),
             MP_CASE(upsert), MP_CASE(depth_limit))
