/*
 * test_query.c — checks the Query semantics the RPCs rely on: every operator spelling,
 * numeric against byte-wise ordering, the error texts a client sees, stable sorting and
 * page arithmetic.
 */
#include "query.h"
#include "mp_test.h"

#include <errno.h>

struct rec {
    int id;
    const char *name;
    const char *port; /* text, so tests can mix numbers and words */
    const char *group;
};

static int rec_field(const void *record, const char *field, char *buf, size_t buf_len)
{
    const struct rec *r = record;
    if (strcmp(field, "id") == 0)
        snprintf(buf, buf_len, "%d", r->id);
    else if (strcmp(field, "name") == 0)
        snprintf(buf, buf_len, "%s", r->name);
    else if (strcmp(field, "port") == 0)
        snprintf(buf, buf_len, "%s", r->port);
    else if (strcmp(field, "group") == 0)
        snprintf(buf, buf_len, "%s", r->group);
    else if (strcmp(field, "long") == 0) {
        /* 2000 'x' into whatever room there is: exercises truncation. */
        size_t n = buf_len - 1 < 2000 ? buf_len - 1 : 2000;
        memset(buf, 'x', n);
        buf[n] = '\0';
    } else if (strcmp(field, "broken") == 0)
        return -EIO;
    else
        return -ENOENT;
    return 0;
}

static const struct rec recs[] = {
    {1, "alpha", "80", "web"},  {2, "beta", "9", "db"},     {3, "gamma", "10", "web"},
    {4, "delta", "443", "db"},  {5, "epsilon", "x", "web"}, {6, "Alpha", "8080", "cache"},
};
#define NRECS (sizeof(recs) / sizeof(recs[0]))

static const void *rec_ptrs[NRECS];

static void init_ptrs(void)
{
    for (size_t i = 0; i < NRECS; i++)
        rec_ptrs[i] = &recs[i];
}

/* Runs a query and renders the ids of the page as "1,2,3" ("" for none, "ERR" on error)
 * so each expectation is one string comparison. */
static char ids[256];
static char err[256];
static mp_query_result res;

static const char *run(const mp_query_filter *f, size_t nf, const char *sort_by, bool desc,
                       int page, int page_size)
{
    init_ptrs();
    mp_query_spec spec = {f, nf, sort_by, desc, page, page_size};
    err[0] = '\0';
    int rc = mp_query_apply(rec_ptrs, NRECS, rec_field, &spec, &res, err, sizeof(err));
    ids[0] = '\0';
    if (rc < 0) {
        snprintf(ids, sizeof(ids), "ERR");
        mp_query_result_free(&res);
        return ids;
    }
    size_t len = 0;
    for (size_t i = 0; i < res.n_items; i++) {
        const struct rec *r = res.items[i];
        len += (size_t)snprintf(ids + len, sizeof(ids) - len, "%s%d", i ? "," : "", r->id);
    }
    mp_query_result_free(&res);
    return ids;
}

static const char *filter1(const char *field, const char *op, const char *value)
{
    mp_query_filter f = {field, op, value};
    return run(&f, 1, NULL, false, 0, 0);
}

MP_TEST(no_filters_keeps_input_order)
{
    MP_CHECK_STR(run(NULL, 0, NULL, false, 0, 0), "1,2,3,4,5,6");
    MP_CHECK_STR(run(NULL, 0, "", false, 0, 0), "1,2,3,4,5,6");
    /* A NULL spec means "everything, default paging". */
    init_ptrs();
    MP_CHECK_EQ_INT(mp_query_apply(rec_ptrs, NRECS, rec_field, NULL, &res, err, sizeof(err)), 0);
    MP_CHECK_EQ_INT(res.n_items, NRECS);
    MP_CHECK_EQ_INT(res.page, 1);
    MP_CHECK_EQ_INT(res.page_size, MP_QUERY_DEFAULT_PAGE_SIZE);
    mp_query_result_free(&res);
}

MP_TEST(eq_spellings)
{
    MP_CHECK_STR(filter1("group", "eq", "web"), "1,3,5");
    MP_CHECK_STR(filter1("group", "=", "web"), "1,3,5");
    MP_CHECK_STR(filter1("group", "==", "web"), "1,3,5");
    MP_CHECK_STR(filter1("group", "EQ", "web"), "1,3,5");
    MP_CHECK_STR(filter1("group", "", "web"), "1,3,5");
    MP_CHECK_STR(filter1("group", NULL, "web"), "1,3,5");
    /* Values are case-sensitive; only operator names are not. */
    MP_CHECK_STR(filter1("name", "eq", "alpha"), "1");
    MP_CHECK_STR(filter1("group", "eq", "WEB"), "");
    /* eq is exact text, not numeric. */
    MP_CHECK_STR(filter1("port", "eq", "80.0"), "");
    MP_CHECK_STR(filter1("port", "eq", "80"), "1");
}

MP_TEST(ne_spellings)
{
    MP_CHECK_STR(filter1("group", "ne", "web"), "2,4,6");
    MP_CHECK_STR(filter1("group", "!=", "web"), "2,4,6");
    MP_CHECK_STR(filter1("group", "Ne", "db"), "1,3,5,6");
}

MP_TEST(numeric_ordering)
{
    /* Numerically 10 > 9; as text "10" < "9". Record 5 ("x") is not a number and
     * compares byte-wise: "x" > "9". */
    MP_CHECK_STR(filter1("port", "gt", "9"), "1,3,4,5,6");
    MP_CHECK_STR(filter1("port", ">", "9"), "1,3,4,5,6");
    MP_CHECK_STR(filter1("port", "ge", "10"), "1,3,4,5,6");
    MP_CHECK_STR(filter1("port", "gte", "80"), "1,4,5,6");
    MP_CHECK_STR(filter1("port", ">=", "80"), "1,4,5,6");
    MP_CHECK_STR(filter1("port", "lt", "80"), "2,3");
    MP_CHECK_STR(filter1("port", "<", "10"), "2");
    MP_CHECK_STR(filter1("port", "le", "80"), "1,2,3");
    MP_CHECK_STR(filter1("port", "lte", "9"), "2");
    MP_CHECK_STR(filter1("port", "<=", "9.0"), "2");
    MP_CHECK_STR(filter1("id", "GT", "4"), "5,6");
}

MP_TEST(string_ordering)
{
    MP_CHECK_STR(filter1("name", "gt", "b"), "2,3,4,5");
    MP_CHECK_STR(filter1("name", "lt", "b"), "1,6"); /* "Alpha" < "b": 'A' sorts first */
    MP_CHECK_STR(filter1("name", "ge", "delta"), "3,4,5");
    MP_CHECK_STR(filter1("name", "le", "beta"), "1,2,6");
    /* Filter value is not a number, so even numeric records compare as text:
     * "80" "9" "10" "443" "8080" are all < "a", "x" is not. */
    MP_CHECK_STR(filter1("port", "lt", "a"), "1,2,3,4,6");
}

MP_TEST(contains_prefix_in)
{
    MP_CHECK_STR(filter1("name", "contains", "lph"), "1,6");
    MP_CHECK_STR(filter1("name", "CONTAINS", "a"), "1,2,3,4,6");
    MP_CHECK_STR(filter1("name", "contains", ""), "1,2,3,4,5,6");
    MP_CHECK_STR(filter1("name", "prefix", "al"), "1");
    MP_CHECK_STR(filter1("name", "starts_with", "Al"), "6");
    MP_CHECK_STR(filter1("port", "prefix", "80"), "1,6");
    MP_CHECK_STR(filter1("name", "in", "beta,delta"), "2,4");
    MP_CHECK_STR(filter1("name", "IN", "gamma, alpha ,nope"), "1,3");
    MP_CHECK_STR(filter1("name", "in", "alp,bet"), ""); /* whole items only */
    MP_CHECK_STR(filter1("port", "in", "9"), "2");
}

MP_TEST(filters_are_anded)
{
    mp_query_filter f[] = {{"group", "eq", "web"}, {"port", "gt", "9"}, {"name", "ne", "x"}};
    MP_CHECK_STR(run(f, 3, NULL, false, 0, 0), "1,3,5");
    mp_query_filter g[] = {{"group", "eq", "web"}, {"port", "lt", "50"}};
    MP_CHECK_STR(run(g, 2, NULL, false, 0, 0), "3");
    mp_query_filter h[] = {{"group", "eq", "web"}, {"group", "eq", "db"}};
    MP_CHECK_STR(run(h, 2, NULL, false, 0, 0), "");
}

MP_TEST(unknown_operator_is_rejected)
{
    MP_CHECK_STR(filter1("name", "like", "a%"), "ERR");
    MP_CHECK_CONTAINS(err, "unknown filter operator 'like'");
    MP_CHECK_CONTAINS(err, "(use eq, ne, lt, le, gt, ge, contains, prefix, in)");
    init_ptrs();
    mp_query_filter f = {"name", "~", "a"};
    mp_query_spec spec = {&f, 1, NULL, false, 1, 10};
    MP_CHECK_EQ_INT(mp_query_apply(rec_ptrs, NRECS, rec_field, &spec, &res, err, sizeof(err)),
                    -EINVAL);
    MP_CHECK(res.items == NULL && res.n_items == 0);
    mp_query_result_free(&res);
}

MP_TEST(unknown_field_is_rejected)
{
    MP_CHECK_STR(filter1("colour", "eq", "red"), "ERR");
    MP_CHECK_STR(err, "unknown field 'colour'");
    MP_CHECK_STR(run(NULL, 0, "colour", false, 0, 0), "ERR");
    MP_CHECK_STR(err, "unknown field 'colour'");
    /* Even when the filters leave nothing to sort. */
    mp_query_filter f = {"name", "eq", "nobody"};
    MP_CHECK_STR(run(&f, 1, "size", true, 0, 0), "ERR");
    MP_CHECK_STR(err, "unknown field 'size'");
    /* Any other accessor failure is passed through with its errno. */
    init_ptrs();
    mp_query_spec spec = {NULL, 0, "broken", false, 0, 0};
    MP_CHECK_EQ_INT(mp_query_apply(rec_ptrs, NRECS, rec_field, &spec, &res, err, sizeof(err)),
                    -EIO);
    MP_CHECK_CONTAINS(err, "broken");
}

MP_TEST(too_many_filters)
{
    mp_query_filter f[MP_QUERY_MAX_FILTERS + 1];
    for (size_t i = 0; i < MP_QUERY_MAX_FILTERS + 1; i++)
        f[i] = (mp_query_filter){"id", "ge", "1"};
    MP_CHECK_STR(run(f, MP_QUERY_MAX_FILTERS, NULL, false, 0, 0), "1,2,3,4,5,6");
    MP_CHECK_STR(run(f, MP_QUERY_MAX_FILTERS + 1, NULL, false, 0, 0), "ERR");
    MP_CHECK_CONTAINS(err, "too many filters");
}

MP_TEST(sort_numeric_and_text)
{
    /* Numbers numerically (9 < 10 < 80 < 443 < 8080), then the non-number "x". */
    MP_CHECK_STR(run(NULL, 0, "port", false, 0, 0), "2,3,1,4,6,5");
    MP_CHECK_STR(run(NULL, 0, "port", true, 0, 0), "5,6,4,1,3,2");
    MP_CHECK_STR(run(NULL, 0, "name", false, 0, 0), "6,1,2,4,5,3");
    MP_CHECK_STR(run(NULL, 0, "name", true, 0, 0), "3,5,4,2,1,6");
    mp_query_filter f = {"group", "ne", "cache"};
    MP_CHECK_STR(run(&f, 1, "port", false, 0, 0), "2,3,1,4,5");
}

MP_TEST(sort_is_stable_both_ways)
{
    /* Ties keep input order whether ascending or descending. */
    MP_CHECK_STR(run(NULL, 0, "group", false, 0, 0), "6,2,4,1,3,5");
    MP_CHECK_STR(run(NULL, 0, "group", true, 0, 0), "1,3,5,2,4,6");

    /* A larger set with many ties, checked against the rule directly. */
    enum { N = 500 };
    static struct rec many[N];
    static const void *ptrs[N];
    static char ports[N][8];
    for (int i = 0; i < N; i++) {
        snprintf(ports[i], sizeof(ports[i]), "%d", (i * 7) % 13);
        many[i] = (struct rec){i, "n", ports[i], "g"};
        ptrs[i] = &many[i];
    }
    for (int desc = 0; desc <= 1; desc++) {
        mp_query_spec spec = {NULL, 0, "port", desc, 1, 1000};
        MP_CHECK_EQ_INT(mp_query_apply(ptrs, N, rec_field, &spec, &res, err, sizeof(err)), 0);
        MP_CHECK_EQ_INT(res.n_items, N);
        int bad = 0;
        for (size_t i = 1; i < res.n_items; i++) {
            const struct rec *a = res.items[i - 1], *b = res.items[i];
            int pa = atoi(a->port), pb = atoi(b->port);
            if (desc ? pa < pb : pa > pb)
                bad++;
            if (pa == pb && a->id > b->id)
                bad++;
        }
        MP_CHECK_EQ_INT(bad, 0);
        mp_query_result_free(&res);
    }
}

MP_TEST(pagination)
{
    MP_CHECK_STR(run(NULL, 0, NULL, false, 1, 4), "1,2,3,4");
    MP_CHECK_EQ_INT(res.total_items, 6);
    MP_CHECK_EQ_INT(res.total_pages, 2);
    MP_CHECK_EQ_INT(res.page, 1);
    MP_CHECK_EQ_INT(res.page_size, 4);
    MP_CHECK_STR(run(NULL, 0, NULL, false, 2, 4), "5,6");
    MP_CHECK_EQ_INT(res.total_pages, 2);
    /* Past the end: no items, not an error, totals still right. */
    MP_CHECK_STR(run(NULL, 0, NULL, false, 3, 4), "");
    MP_CHECK_EQ_INT(res.total_items, 6);
    MP_CHECK_EQ_INT(res.total_pages, 2);
    MP_CHECK_EQ_INT(res.page, 3);
    MP_CHECK_STR(run(NULL, 0, NULL, false, 1000000, 1000), "");
    /* page <= 0 is page 1. */
    MP_CHECK_STR(run(NULL, 0, NULL, false, 0, 2), "1,2");
    MP_CHECK_STR(run(NULL, 0, NULL, false, -3, 2), "1,2");
    MP_CHECK_EQ_INT(res.page, 1);
    MP_CHECK_EQ_INT(res.total_pages, 3);
    /* Paging applies after sorting and filtering. */
    mp_query_filter f = {"group", "ne", "cache"};
    MP_CHECK_STR(run(&f, 1, "port", true, 2, 2), "1,3");
    MP_CHECK_EQ_INT(res.total_items, 5);
    MP_CHECK_EQ_INT(res.total_pages, 3);
    /* Nothing matched: zero pages. */
    mp_query_filter none = {"name", "eq", "nobody"};
    MP_CHECK_STR(run(&none, 1, NULL, false, 1, 10), "");
    MP_CHECK_EQ_INT(res.total_items, 0);
    MP_CHECK_EQ_INT(res.total_pages, 0);
}

MP_TEST(page_size_limits)
{
    MP_CHECK_STR(run(NULL, 0, NULL, false, 1, MP_QUERY_MAX_PAGE_SIZE + 1), "ERR");
    MP_CHECK_CONTAINS(err, "page_size");
    MP_CHECK_STR(run(NULL, 0, NULL, false, 1, MP_QUERY_MAX_PAGE_SIZE), "1,2,3,4,5,6");
    MP_CHECK_EQ_INT(res.total_pages, 1);

    enum { N = 250 };
    static struct rec many[N];
    static const void *ptrs[N];
    for (int i = 0; i < N; i++) {
        many[i] = (struct rec){i, "n", "1", "g"};
        ptrs[i] = &many[i];
    }
    for (int ps = -1; ps <= 0; ps++) {
        mp_query_spec spec = {NULL, 0, NULL, false, 1, ps};
        MP_CHECK_EQ_INT(mp_query_apply(ptrs, N, rec_field, &spec, &res, err, sizeof(err)), 0);
        MP_CHECK_EQ_INT(res.n_items, MP_QUERY_DEFAULT_PAGE_SIZE);
        MP_CHECK_EQ_INT(res.page_size, MP_QUERY_DEFAULT_PAGE_SIZE);
        MP_CHECK_EQ_INT(res.total_pages, 3);
        mp_query_result_free(&res);
    }
    mp_query_spec last = {NULL, 0, NULL, false, 3, 0};
    MP_CHECK_EQ_INT(mp_query_apply(ptrs, N, rec_field, &last, &res, err, sizeof(err)), 0);
    MP_CHECK_EQ_INT(res.n_items, 50);
    MP_CHECK(res.n_items > 0 && ((const struct rec *)res.items[0])->id == 200);
    mp_query_result_free(&res);
}

MP_TEST(empty_input_and_free)
{
    mp_query_spec spec = {NULL, 0, "name", false, 1, 10};
    MP_CHECK_EQ_INT(mp_query_apply(NULL, 0, rec_field, &spec, &res, err, sizeof(err)), 0);
    MP_CHECK(res.items == NULL);
    MP_CHECK_EQ_INT(res.n_items, 0);
    MP_CHECK_EQ_INT(res.total_items, 0);
    MP_CHECK_EQ_INT(res.total_pages, 0);
    mp_query_result_free(&res);
    mp_query_result_free(&res); /* idempotent */
    mp_query_result_free(NULL);
}

MP_TEST(long_values_truncate)
{
    char want[1024];
    memset(want, 'x', sizeof(want) - 1);
    want[sizeof(want) - 1] = '\0';
    MP_CHECK_STR(filter1("long", "eq", want), "1,2,3,4,5,6");
    MP_CHECK_STR(filter1("long", "prefix", "xxx"), "1,2,3,4,5,6");
}

MP_TEST_MAIN(MP_CASE(no_filters_keeps_input_order), MP_CASE(eq_spellings),
             MP_CASE(ne_spellings), MP_CASE(numeric_ordering), MP_CASE(string_ordering),
             MP_CASE(contains_prefix_in), MP_CASE(filters_are_anded),
             MP_CASE(unknown_operator_is_rejected), MP_CASE(unknown_field_is_rejected),
             MP_CASE(too_many_filters), MP_CASE(sort_numeric_and_text),
             MP_CASE(sort_is_stable_both_ways), MP_CASE(pagination),
             MP_CASE(page_size_limits), MP_CASE(empty_input_and_free),
             MP_CASE(long_values_truncate))
