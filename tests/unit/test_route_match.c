/*
 * test_route_match.c — the routing rules every RPC and the data path share: what makes
 * a Route invalid (and that the message names the route and the field), and when one
 * entry matches one request — protocol, port, IPv4/IPv6 CIDRs including mapped
 * addresses, exact and wildcard hosts, path prefixes and headers.
 */
#include "route_match.h"
#include "mp_test.h"

#include <errno.h>

/* A Route with room for headers, built on the stack by each test. */
struct troute {
    Marchproxy__Route r;
    Marchproxy__Route__HeadersEntry h[70];
    Marchproxy__Route__HeadersEntry *hp[70];
};

static void troute_init(struct troute *t, const char *id)
{
    marchproxy__route__init(&t->r);
    t->r.route_id = (char *)id;
    t->r.source_pattern = (char *)"";
    t->r.destination_pattern = (char *)"";
    t->r.path_pattern = (char *)"";
    t->r.headers = t->hp;
    t->r.n_headers = 0;
}

static void troute_header(struct troute *t, const char *k, const char *v)
{
    size_t i = t->r.n_headers++;
    marchproxy__route__headers_entry__init(&t->h[i]);
    t->h[i].key = (char *)k;
    t->h[i].value = (char *)v;
    t->hp[i] = &t->h[i];
}

static char err[1024];

static int validate(const Marchproxy__Route *r)
{
    err[0] = '\0';
    return mp_route_validate(r, err, sizeof(err));
}

/* n copies of c into buf (which must hold n + 1). */
static char *fill(char *buf, char c, size_t n)
{
    memset(buf, c, n);
    buf[n] = '\0';
    return buf;
}

MP_TEST(valid_minimal_and_full)
{
    struct troute t;
    troute_init(&t, "r1");
    MP_CHECK_EQ_INT(validate(&t.r), 0);
    troute_init(&t, "Abc.def_ghi:jkl-0");
    t.r.protocol = MARCHPROXY__PROTOCOL__PROTOCOL_DASH;
    t.r.source_pattern = (char *)"10.0.0.0/8";
    t.r.destination_pattern = (char *)"*.example.com";
    t.r.source_port = 65535;
    t.r.destination_port = 443;
    t.r.path_pattern = (char *)"/api";
    t.r.priority = -5;
    troute_header(&t, "X-Env", "prod");
    MP_CHECK_EQ_INT(validate(&t.r), 0);
    MP_CHECK_STR(err, "");
}

MP_TEST(route_id_rules)
{
    struct troute t;
    troute_init(&t, "");
    MP_CHECK_EQ_INT(validate(&t.r), -EINVAL);
    MP_CHECK_STR(err, "route (no id): route_id is required");
    char long_id[200];
    troute_init(&t, fill(long_id, 'a', 128));
    MP_CHECK_EQ_INT(validate(&t.r), 0);
    fill(long_id, 'a', 129);
    troute_init(&t, long_id);
    MP_CHECK_EQ_INT(validate(&t.r), -EINVAL);
    MP_CHECK_CONTAINS(err, "route_id is 129 characters long (at most 128)");
    troute_init(&t, "bad/id");
    MP_CHECK_EQ_INT(validate(&t.r), -EINVAL);
    MP_CHECK_CONTAINS(err, "route 'bad/id': route_id contains '/'");
    troute_init(&t, "tab\there");
    MP_CHECK_EQ_INT(validate(&t.r), -EINVAL);
    MP_CHECK_CONTAINS(err, "route 'tab?here'"); /* control bytes never reach a message */
    MP_CHECK_CONTAINS(err, "byte 0x09");
    t.r.route_id = NULL; /* as if never set */
    MP_CHECK_EQ_INT(validate(&t.r), -EINVAL);
    MP_CHECK_CONTAINS(err, "route_id is required");
    MP_CHECK_EQ_INT(validate(NULL), -EINVAL);
}

MP_TEST(protocol_and_ports)
{
    struct troute t;
    troute_init(&t, "p");
    t.r.protocol = 16;
    MP_CHECK_EQ_INT(validate(&t.r), 0);
    t.r.protocol = 17;
    MP_CHECK_EQ_INT(validate(&t.r), -EINVAL);
    MP_CHECK_STR(err, "route 'p': protocol 17 is not a known Protocol (0..16)");
    t.r.protocol = -1;
    MP_CHECK_EQ_INT(validate(&t.r), -EINVAL);
    t.r.protocol = 0;
    t.r.source_port = -1;
    MP_CHECK_EQ_INT(validate(&t.r), -EINVAL);
    MP_CHECK_CONTAINS(err, "source_port -1 is out of range");
    t.r.source_port = 65536;
    MP_CHECK_EQ_INT(validate(&t.r), -EINVAL);
    t.r.source_port = 0;
    t.r.destination_port = 65536;
    MP_CHECK_EQ_INT(validate(&t.r), -EINVAL);
    MP_CHECK_CONTAINS(err, "route 'p': destination_port 65536");
    t.r.destination_port = -3;
    MP_CHECK_EQ_INT(validate(&t.r), -EINVAL);
    t.r.destination_port = 65535;
    MP_CHECK_EQ_INT(validate(&t.r), 0);
}

MP_TEST(source_patterns)
{
    static const char *const good[] = {"", "*", "10.0.0.1", "10.0.0.0/8", "0.0.0.0/0",
                                       "1.2.3.4/32", "::1", "::1/128", "::/0", "fe80::/10",
                                       "2001:db8::/32", "10.1.2.3/8", "::ffff:10.0.0.0/104"};
    static const char *const bad[] = {"abc",        "10.0.0.0/33", "10.0.0.0/",  "10.0.0.0/x",
                                      "10.0.0.0/0008", "::1/129",   "/8",         "10.0.0/8",
                                      "10.0.0.0/-1", "1.2.3.4 ",   "localhost", "10.0.0.0/8/8"};
    struct troute t;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        troute_init(&t, "s");
        t.r.source_pattern = (char *)good[i];
        if (validate(&t.r) != 0) {
            fprintf(stderr, "expected valid: '%s' (%s)\n", good[i], err);
            MP_CHECK(0);
        }
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        troute_init(&t, "s");
        t.r.source_pattern = (char *)bad[i];
        if (validate(&t.r) != -EINVAL) {
            fprintf(stderr, "expected invalid: '%s'\n", bad[i]);
            MP_CHECK(0);
        }
        MP_CHECK_CONTAINS(err, "route 's': source_pattern");
    }
    troute_init(&t, "s");
    t.r.source_pattern = (char *)"10.0.0.0/33";
    validate(&t.r);
    MP_CHECK_STR(err, "route 's': source_pattern '10.0.0.0/33': prefix length 33 is out of "
                      "range 0..32 for an IPv4 address");
    t.r.source_pattern = (char *)"::/129";
    validate(&t.r);
    MP_CHECK_CONTAINS(err, "out of range 0..128");
}

MP_TEST(destination_patterns)
{
    struct troute t;
    char name[300];
    troute_init(&t, "d");
    static const char *const good[] = {"", "*", "example.com", "*.example.com", "EXAMPLE.com",
                                       "10.0.0.1", "[::1]", "a-b_c.example", "*.a.b.c"};
    static const char *const bad[] = {"*.", "a.*.com", "*example.com", "ex ample.com",
                                      "example.com/x", "**.example.com", "exa*mple"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        t.r.destination_pattern = (char *)good[i];
        if (validate(&t.r) != 0) {
            fprintf(stderr, "expected valid: '%s' (%s)\n", good[i], err);
            MP_CHECK(0);
        }
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        t.r.destination_pattern = (char *)bad[i];
        if (validate(&t.r) != -EINVAL) {
            fprintf(stderr, "expected invalid: '%s'\n", bad[i]);
            MP_CHECK(0);
        }
        MP_CHECK_CONTAINS(err, "route 'd': destination_pattern");
    }
    fill(name, 'a', 253);
    t.r.destination_pattern = name;
    MP_CHECK_EQ_INT(validate(&t.r), 0);
    fill(name, 'a', 254);
    MP_CHECK_EQ_INT(validate(&t.r), -EINVAL);
    MP_CHECK_CONTAINS(err, "destination_pattern is 254 characters long (at most 253)");
}

MP_TEST(path_patterns)
{
    struct troute t;
    troute_init(&t, "x");
    t.r.path_pattern = (char *)"/";
    MP_CHECK_EQ_INT(validate(&t.r), 0);
    t.r.path_pattern = (char *)"/api/v1";
    MP_CHECK_EQ_INT(validate(&t.r), 0);
    t.r.path_pattern = (char *)"=/login";
    MP_CHECK_EQ_INT(validate(&t.r), 0);
    t.r.path_pattern = (char *)"~\\.png$";
    MP_CHECK_EQ_INT(validate(&t.r), 0);
    t.r.path_pattern = (char *)"=login";
    MP_CHECK_EQ_INT(validate(&t.r), -EINVAL);
    t.r.path_pattern = (char *)"api";
    MP_CHECK_EQ_INT(validate(&t.r), -EINVAL);
    MP_CHECK_STR(err, "route 'x': path_pattern 'api' must start with '/' (a prefix), \"=/\" "
                      "(exact) or '~' (a regular expression)");
}

MP_TEST(header_rules)
{
    struct troute t;
    char name[300], value[5000];
    troute_init(&t, "h");
    for (int i = 0; i < 64; i++)
        troute_header(&t, "X-A", "v");
    MP_CHECK_EQ_INT(validate(&t.r), 0);
    troute_header(&t, "X-A", "v");
    MP_CHECK_EQ_INT(validate(&t.r), -EINVAL);
    MP_CHECK_STR(err, "route 'h': 65 headers (at most 64)");

    troute_init(&t, "h");
    troute_header(&t, "", "v");
    MP_CHECK_EQ_INT(validate(&t.r), -EINVAL);
    MP_CHECK_CONTAINS(err, "a header name is empty");

    troute_init(&t, "h");
    fill(name, 'n', 256);
    fill(value, 'v', 4096);
    troute_header(&t, name, value);
    MP_CHECK_EQ_INT(validate(&t.r), 0);
    fill(name, 'n', 257);
    MP_CHECK_EQ_INT(validate(&t.r), -EINVAL);
    MP_CHECK_CONTAINS(err, "is 257 characters long (at most 256)");
    snprintf(name, sizeof(name), "X-Big");
    fill(value, 'v', 4097);
    MP_CHECK_EQ_INT(validate(&t.r), -EINVAL);
    MP_CHECK_CONTAINS(err, "value of 'X-Big' is 4097 characters long (at most 4096)");
}

static size_t n_problems, n_named;
static void count_problem(void *ctx, const char *p)
{
    (void)ctx;
    n_problems++;
    if (strncmp(p, "route 'multi': ", 15) == 0)
        n_named++;
}

MP_TEST(validate_all_reports_every_problem)
{
    struct troute t;
    troute_init(&t, "multi");
    t.r.protocol = 99;
    t.r.destination_port = 70000;
    t.r.source_pattern = (char *)"nope";
    t.r.path_pattern = (char *)"x";
    n_problems = n_named = 0;
    MP_CHECK_EQ_INT(mp_route_validate_all(&t.r, count_problem, NULL), 4);
    MP_CHECK_EQ_INT(n_problems, 4);
    MP_CHECK_EQ_INT(n_named, 4);
    /* The single-error form keeps the first one. */
    MP_CHECK_EQ_INT(validate(&t.r), -EINVAL);
    MP_CHECK_CONTAINS(err, "protocol 99");
}

/* ---------------------------------------------------------------- matching */

static mp_route_request req(int proto, int port, const char *src, const char *host,
                            const char *path)
{
    mp_route_request q = {.protocol = proto, .dst_port = port, .source_ip = src, .host = host,
                          .path = path};
    return q;
}

MP_TEST(match_protocol_and_port)
{
    struct troute t;
    troute_init(&t, "e");
    mp_route_request q = req(3, 8080, NULL, NULL, NULL);
    MP_CHECK(mp_route_entry_matches(&t.r, &q)); /* all-any entry takes anything */
    t.r.protocol = 3;
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
    t.r.protocol = 4;
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    t.r.protocol = 0;
    t.r.destination_port = 8080;
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
    t.r.destination_port = 80;
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    /* A request whose protocol/port are unknown does not meet a restricted entry. */
    q = req(0, 0, NULL, NULL, NULL);
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    t.r.destination_port = 0;
    t.r.protocol = 3;
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    /* source_port is never matched: a request has none. */
    t.r.protocol = 0;
    t.r.source_port = 1234;
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
}

MP_TEST(match_ipv4_cidr)
{
    struct troute t;
    troute_init(&t, "e");
    t.r.source_pattern = (char *)"10.0.0.0/8";
    mp_route_request q = req(0, 0, "10.200.3.4", NULL, NULL);
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
    q.source_ip = "11.0.0.1";
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    q.source_ip = "::ffff:10.1.2.3"; /* dual-stack socket view of an IPv4 client */
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
    q.source_ip = "::1";
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    q.source_ip = NULL; /* restricted entry, request without source */
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    q.source_ip = "";
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    q.source_ip = "garbage";
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));

    t.r.source_pattern = (char *)"192.168.1.128/25";
    q.source_ip = "192.168.1.200";
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
    q.source_ip = "192.168.1.127";
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    t.r.source_pattern = (char *)"10.1.2.3/8"; /* host bits are ignored */
    q.source_ip = "10.9.9.9";
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
    t.r.source_pattern = (char *)"1.2.3.4"; /* bare address = /32 */
    q.source_ip = "1.2.3.4";
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
    q.source_ip = "1.2.3.5";
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    t.r.source_pattern = (char *)"0.0.0.0/0"; /* every IPv4 client, no IPv6 one */
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
    q.source_ip = "2001:db8::1";
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    t.r.source_pattern = (char *)"*";
    q.source_ip = NULL;
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
}

MP_TEST(match_ipv6_cidr)
{
    struct troute t;
    troute_init(&t, "e");
    t.r.source_pattern = (char *)"2001:db8::/32";
    mp_route_request q = req(0, 0, "2001:db8:1::5", NULL, NULL);
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
    q.source_ip = "2001:db9::5";
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    q.source_ip = "10.0.0.1";
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    t.r.source_pattern = (char *)"::1/128";
    q.source_ip = "::1";
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
    q.source_ip = "::2";
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    t.r.source_pattern = (char *)"fe80::/10";
    q.source_ip = "febf::1";
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
    q.source_ip = "fec0::1";
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    t.r.source_pattern = (char *)"::/0"; /* every IPv6 client, and mapped IPv4 too */
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
    q.source_ip = "10.0.0.1";
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
    t.r.source_pattern = (char *)"::ffff:0:0/96"; /* the IPv4 space, written as IPv6 */
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
    q.source_ip = "::1";
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
}

MP_TEST(match_hosts)
{
    struct troute t;
    troute_init(&t, "e");
    t.r.destination_pattern = (char *)"Example.COM";
    mp_route_request q = req(0, 0, NULL, "example.com", NULL);
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
    q.host = "example.com."; /* fully qualified form */
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
    q.host = "www.example.com";
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    q.host = "example.co";
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    q.host = NULL;
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    q.host = "";
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));

    t.r.destination_pattern = (char *)"*.example.com";
    q.host = "a.example.com";
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
    q.host = "A.B.EXAMPLE.com"; /* more than one label */
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
    q.host = "example.com"; /* the bare domain is not a subdomain */
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    q.host = "badexample.com";
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    q.host = "a.example.com.evil";
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    q.host = "x.example.com.";
    MP_CHECK(mp_route_entry_matches(&t.r, &q));

    t.r.destination_pattern = (char *)"*";
    q.host = NULL;
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
}

/* "=/x" is exact; '~' patterns belong to L7 plugins and never match in the NLB. */
MP_TEST(match_exact_and_regex_paths)
{
    struct troute t;
    troute_init(&t, "e");
    t.r.path_pattern = (char *)"=/login";
    mp_route_request q = req(0, 0, NULL, "a.test", "/login");
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
    q.path = "/login/x";
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    t.r.path_pattern = (char *)"~^/login";
    q.path = "/login";
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    t.r.path_pattern = (char *)"";
    t.r.destination_pattern = (char *)"~^a\\.test$";
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    MP_CHECK_EQ_INT(validate(&t.r), 0);
}

MP_TEST(match_paths)
{
    struct troute t;
    troute_init(&t, "e");
    t.r.path_pattern = (char *)"/api";
    mp_route_request q = req(0, 0, NULL, NULL, "/api/v1/users");
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
    q.path = "/api";
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
    q.path = "/apix"; /* a literal prefix, not a segment match */
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
    q.path = "/ap";
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    q.path = "/API";
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    q.path = NULL;
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    t.r.path_pattern = (char *)"";
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
}

MP_TEST(match_headers)
{
    struct troute t;
    troute_init(&t, "e");
    troute_header(&t, "X-Env", "prod");
    troute_header(&t, "x-tenant", "a");
    const char *names[] = {"x-env", "X-TENANT", "Other"};
    const char *values[] = {"prod", "a", "z"};
    mp_route_request q = req(0, 0, NULL, NULL, NULL);
    q.n_headers = 3;
    q.header_names = names;
    q.header_values = values;
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
    values[0] = "Prod"; /* values are exact */
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    values[0] = "prod";
    q.n_headers = 1; /* x-tenant missing */
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));
    /* A repeated header matches when any of its values does. */
    const char *names2[] = {"X-Env", "X-Env", "x-tenant"};
    const char *values2[] = {"dev", "prod", "a"};
    q.n_headers = 3;
    q.header_names = names2;
    q.header_values = values2;
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
}

MP_TEST(match_everything_together)
{
    struct troute t;
    troute_init(&t, "e");
    t.r.protocol = 3;
    t.r.destination_port = 8080;
    t.r.source_pattern = (char *)"127.0.0.0/8";
    t.r.destination_pattern = (char *)"*.local";
    t.r.path_pattern = (char *)"/v1";
    troute_header(&t, "Host-Kind", "web");
    struct troute w;
    troute_init(&w, "request");
    w.r.protocol = 3;
    w.r.destination_port = 8080;
    w.r.source_pattern = (char *)"127.0.0.1";
    w.r.destination_pattern = (char *)"svc.local";
    w.r.path_pattern = (char *)"/v1/x";
    troute_header(&w, "host-kind", "web");
    const char *names[MP_ROUTE_MAX_HEADERS], *values[MP_ROUTE_MAX_HEADERS];
    mp_route_request q;
    MP_CHECK_EQ_INT(mp_route_request_from_wire(&w.r, &q, names, values, MP_ROUTE_MAX_HEADERS), 0);
    MP_CHECK_STR(q.source_ip, "127.0.0.1");
    MP_CHECK_STR(q.host, "svc.local");
    MP_CHECK_EQ_INT(q.n_headers, 1);
    MP_CHECK(mp_route_entry_matches(&t.r, &q));
    w.r.destination_port = 8081;
    mp_route_request_from_wire(&w.r, &q, names, values, MP_ROUTE_MAX_HEADERS);
    MP_CHECK(!mp_route_entry_matches(&t.r, &q));

    /* "*" as the client address means unknown. */
    w.r.source_pattern = (char *)"*";
    mp_route_request_from_wire(&w.r, &q, names, values, MP_ROUTE_MAX_HEADERS);
    MP_CHECK(q.source_ip == NULL);
    /* More headers than room is refused rather than silently cut. */
    troute_header(&w, "a", "b");
    MP_CHECK_EQ_INT(mp_route_request_from_wire(&w.r, &q, names, values, 1), -E2BIG);
}

MP_TEST(describe_and_names)
{
    char buf[256];
    mp_route_request q = req(3, 8080, "1.2.3.4", NULL, NULL);
    mp_route_request_describe(&q, buf, sizeof(buf));
    MP_CHECK_STR(buf, "protocol=http port=8080 source=1.2.3.4");
    q = req(0, 0, NULL, "a.example", "/p");
    mp_route_request_describe(&q, buf, sizeof(buf));
    MP_CHECK_STR(buf, "protocol=any host=a.example path=/p");
    mp_route_request_describe(&q, buf, 10); /* truncation stays terminated */
    MP_CHECK_EQ_INT(strlen(buf), 9);
    MP_CHECK_STR(mp_route_protocol_name(9), "mysql");
    MP_CHECK_STR(mp_route_protocol_name(16), "dash");
    MP_CHECK_STR(mp_route_protocol_name(17), "?");
    MP_CHECK(mp_route_ip_valid("::1"));
    MP_CHECK(mp_route_ip_valid("8.8.8.8"));
    MP_CHECK(!mp_route_ip_valid("8.8.8"));
    MP_CHECK(!mp_route_ip_valid("10.0.0.0/8"));
    MP_CHECK(!mp_route_ip_valid(NULL));
}

MP_TEST_MAIN(MP_CASE(valid_minimal_and_full), MP_CASE(route_id_rules),
             MP_CASE(protocol_and_ports), MP_CASE(source_patterns),
             MP_CASE(destination_patterns), MP_CASE(path_patterns), MP_CASE(header_rules),
             MP_CASE(validate_all_reports_every_problem), MP_CASE(match_protocol_and_port),
             MP_CASE(match_ipv4_cidr), MP_CASE(match_ipv6_cidr), MP_CASE(match_hosts),
             MP_CASE(match_paths), MP_CASE(match_exact_and_regex_paths), MP_CASE(match_headers), MP_CASE(match_everything_together),
             MP_CASE(describe_and_names))
