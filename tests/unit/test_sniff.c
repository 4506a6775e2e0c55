/*
 * test_sniff.c — unit tests for host/sniff.c, the NLB protocol sniffer. The fixtures
 * in fixtures/sniff/ are the first bytes real clients sent (see the README there and
 * tests/tools/capture-sniff-fixtures.sh); the tests check that each is recognised with
 * its details, that every shorter prefix only asks for more, that random and mutated
 * bytes never match, and a set of hand-written near misses.
 *
 * Every call hands mp_sniff a heap copy of exactly the bytes under test, so under
 * AddressSanitizer any read past len is caught.
 */
#include "sniff.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mp_test.h"

#ifndef MP_TEST_FIXTURES
#error "MP_TEST_FIXTURES must name the unit-test fixture directory"
#endif
#define SNIFF_DIR MP_TEST_FIXTURES "/sniff"

/* ------------------------------------------------------------------ helpers */

typedef struct blob {
    uint8_t *data;
    size_t len;
} blob;

static blob load_fixture(const char *name)
{
    char path[512];
    blob b = {NULL, 0};
    snprintf(path, sizeof(path), "%s/%s", SNIFF_DIR, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        return b;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (n > 0) {
        b.data = malloc((size_t)n);
        if (b.data && fread(b.data, 1, (size_t)n, f) == (size_t)n)
            b.len = (size_t)n;
    }
    fclose(f);
    return b;
}

/* mp_sniff on an exact-size heap copy, so ASan sees any over-read. */
static mp_sniff_result sniff_exact(const uint8_t *data, size_t len, mp_sniff_info *info)
{
    uint8_t *copy = malloc(len ? len : 1);
    if (len)
        memcpy(copy, data, len);
    mp_sniff_result r = mp_sniff(copy, len, info);
    free(copy);
    return r;
}

static mp_sniff_result sniff_str(const char *s, mp_sniff_info *info)
{
    return sniff_exact((const uint8_t *)s, strlen(s), info);
}

static mp_sniff_result sniff_mem(const void *s, size_t n, mp_sniff_info *info)
{
    return sniff_exact((const uint8_t *)s, n, info);
}

/* xorshift64*: a fixed, portable stream so failures reproduce everywhere. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static void put_be16(uint8_t *p, size_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* ------------------------------------------------------------------ fixture table */

typedef struct fixture {
    const char *file;
    int protocol;
    size_t decide_at; /* shortest prefix that may MATCH; 0 = the whole file */
} fixture;

static const fixture fixtures[] = {
    {"http1_curl.bin", MP_PROTO_HTTP, 20}, /* "GET /path HTTP/1.1\r\n" */
    {"http2_prior_knowledge_curl.bin", MP_PROTO_HTTP2, 24},
    {"tls_clienthello_openssl.bin", MP_PROTO_HTTPS, 0},
    {"tls_clienthello_curl.bin", MP_PROTO_HTTPS, 0},
    {"pg_startup_psql.bin", MP_PROTO_POSTGRES, 0},
    {"pg_sslrequest_psql.bin", MP_PROTO_POSTGRES, 0},
    {"resp_rediscli.bin", MP_PROTO_REDIS, 0},
    {"rtmp_c0c1_ffmpeg.bin", MP_PROTO_RTMP, 0},
    {"mongodb_hello_pymongo.bin", MP_PROTO_MONGODB, 0},
    {"mongodb_opmsg_ping_pymongo.bin", MP_PROTO_MONGODB, 0},
};
#define N_FIXTURES (sizeof(fixtures) / sizeof(fixtures[0]))

/* ------------------------------------------------------------------ fixtures match */

MP_TEST(test_fixture_http1_curl)
{
    blob b = load_fixture("http1_curl.bin");
    mp_sniff_info in;
    MP_CHECK(b.len > 0);
    MP_CHECK_EQ_INT(sniff_mem(b.data, b.len, &in), MP_SNIFF_MATCH);
    MP_CHECK_EQ_INT(in.protocol, MP_PROTO_HTTP);
    MP_CHECK_STR(in.method, "GET");
    MP_CHECK_STR(in.path, "/path");
    MP_CHECK_STR(in.host, "example.test");
    MP_CHECK_EQ_INT(in.http_minor, 1);
    MP_CHECK(!in.path_truncated);
    MP_CHECK_EQ_INT(in.consumed_hint, 20);
    free(b.data);
}

MP_TEST(test_fixture_http2_curl)
{
    blob b = load_fixture("http2_prior_knowledge_curl.bin");
    mp_sniff_info in;
    MP_CHECK(b.len > 24);
    MP_CHECK_EQ_INT(sniff_mem(b.data, b.len, &in), MP_SNIFF_MATCH);
    MP_CHECK_EQ_INT(in.protocol, MP_PROTO_HTTP2);
    MP_CHECK_EQ_INT(in.consumed_hint, 24);
    MP_CHECK_STR(mp_sniff_protocol_name(in.protocol), "http2");
    free(b.data);
}

MP_TEST(test_fixture_tls_openssl)
{
    blob b = load_fixture("tls_clienthello_openssl.bin");
    mp_sniff_info in;
    MP_CHECK(b.len > 0);
    MP_CHECK_EQ_INT(sniff_mem(b.data, b.len, &in), MP_SNIFF_MATCH);
    MP_CHECK_EQ_INT(in.protocol, MP_PROTO_HTTPS);
    MP_CHECK_STR(in.sni, "api.example.test");
    MP_CHECK_EQ_INT(in.n_alpn, 2);
    MP_CHECK_STR(in.alpn[0], "h2");
    MP_CHECK_STR(in.alpn[1], "http/1.1");
    MP_CHECK_EQ_INT(in.consumed_hint, b.len);
    free(b.data);
}

MP_TEST(test_fixture_tls_curl)
{
    blob b = load_fixture("tls_clienthello_curl.bin");
    mp_sniff_info in;
    MP_CHECK(b.len > 0);
    MP_CHECK_EQ_INT(sniff_mem(b.data, b.len, &in), MP_SNIFF_MATCH);
    MP_CHECK_EQ_INT(in.protocol, MP_PROTO_HTTPS);
    MP_CHECK_STR(in.sni, "api.example.test");
    /* curl built with nghttp2 offers h2 first, then http/1.1 */
    MP_CHECK_EQ_INT(in.n_alpn, 2);
    MP_CHECK_STR(in.alpn[0], "h2");
    MP_CHECK_STR(in.alpn[1], "http/1.1");
    MP_CHECK_EQ_INT(in.consumed_hint, b.len);
    free(b.data);
}

MP_TEST(test_fixture_pg)
{
    blob b = load_fixture("pg_startup_psql.bin");
    mp_sniff_info in;
    MP_CHECK(b.len > 0);
    MP_CHECK_EQ_INT(sniff_mem(b.data, b.len, &in), MP_SNIFF_MATCH);
    MP_CHECK_EQ_INT(in.protocol, MP_PROTO_POSTGRES);
    MP_CHECK_STR(in.pg_user, "alice");
    MP_CHECK_STR(in.pg_database, "shop");
    MP_CHECK(!in.pg_ssl_request && !in.pg_gss_request && !in.pg_cancel);
    MP_CHECK_EQ_INT(in.consumed_hint, b.len);
    free(b.data);

    b = load_fixture("pg_sslrequest_psql.bin");
    MP_CHECK_EQ_INT(b.len, 8);
    MP_CHECK_EQ_INT(sniff_mem(b.data, b.len, &in), MP_SNIFF_MATCH);
    MP_CHECK_EQ_INT(in.protocol, MP_PROTO_POSTGRES);
    MP_CHECK(in.pg_ssl_request);
    MP_CHECK(!in.pg_gss_request && !in.pg_cancel);
    MP_CHECK_STR(in.pg_user, "");
    MP_CHECK_EQ_INT(in.consumed_hint, 8);
    free(b.data);
}

MP_TEST(test_fixture_redis_rtmp_mongo)
{
    mp_sniff_info in;
    blob b = load_fixture("resp_rediscli.bin");
    MP_CHECK_EQ_INT(sniff_mem(b.data, b.len, &in), MP_SNIFF_MATCH);
    MP_CHECK_EQ_INT(in.protocol, MP_PROTO_REDIS);
    MP_CHECK_EQ_INT(in.consumed_hint, b.len);
    free(b.data);

    b = load_fixture("rtmp_c0c1_ffmpeg.bin");
    MP_CHECK_EQ_INT(b.len, 1537);
    MP_CHECK_EQ_INT(sniff_mem(b.data, b.len, &in), MP_SNIFF_MATCH);
    MP_CHECK_EQ_INT(in.protocol, MP_PROTO_RTMP);
    MP_CHECK_EQ_INT(in.consumed_hint, 1537);
    free(b.data);

    b = load_fixture("mongodb_hello_pymongo.bin");
    MP_CHECK_EQ_INT(sniff_mem(b.data, b.len, &in), MP_SNIFF_MATCH);
    MP_CHECK_EQ_INT(in.protocol, MP_PROTO_MONGODB);
    MP_CHECK_EQ_INT(in.consumed_hint, b.len);
    free(b.data);

    b = load_fixture("mongodb_opmsg_ping_pymongo.bin");
    MP_CHECK_EQ_INT(sniff_mem(b.data, b.len, &in), MP_SNIFF_MATCH);
    MP_CHECK_EQ_INT(in.protocol, MP_PROTO_MONGODB);
    MP_CHECK_EQ_INT(in.consumed_hint, b.len);
    free(b.data);
}

/* Every strict prefix asks for more (and says it needs a longer buffer); from the
 * point where the message is decidable on, it matches as the same protocol. Bytes
 * after a complete first message (a request body, a pipelined command) change nothing. */
MP_TEST(test_fixture_prefixes)
{
    for (size_t f = 0; f < N_FIXTURES; f++) {
        blob b = load_fixture(fixtures[f].file);
        MP_CHECK(b.len > 0);
        size_t decide = fixtures[f].decide_at ? fixtures[f].decide_at : b.len;
        size_t bad = 0;
        for (size_t k = 0; k <= b.len; k++) {
            mp_sniff_info in;
            mp_sniff_result r = sniff_mem(b.data, k, &in);
            bool ok = k < decide ? (r == MP_SNIFF_NEED_MORE && in.consumed_hint > k)
                                 : (r == MP_SNIFF_MATCH && in.protocol == fixtures[f].protocol);
            if (!ok && bad++ < 3)
                fprintf(stderr, "%s: prefix %zu gave %d (protocol %d)\n", fixtures[f].file,
                        k, (int)r, in.protocol);
        }
        MP_CHECK_EQ_INT(bad, 0);

        uint8_t *more = malloc(b.len + 300);
        memcpy(more, b.data, b.len);
        memset(more + b.len, 'x', 300);
        mp_sniff_info in;
        MP_CHECK_EQ_INT(sniff_mem(more, b.len + 300, &in), MP_SNIFF_MATCH);
        MP_CHECK_EQ_INT(in.protocol, fixtures[f].protocol);
        free(more);
        free(b.data);
    }
}

/* ------------------------------------------------------------------ garbage */

MP_TEST(test_random_garbage_never_matches)
{
    enum { N = 200000, MAXLEN = 2048 };
    static uint8_t buf[MAXLEN];
    size_t matches = 0, need = 0;
    rng_state = 0x5eed5eed12345678ull;
    for (int i = 0; i < N; i++) {
        size_t len = 1 + (size_t)(rng() % MAXLEN);
        for (size_t k = 0; k < len; k++)
            buf[k] = (uint8_t)rng();
        mp_sniff_info in;
        mp_sniff_result r = sniff_mem(buf, len, &in);
        if (r == MP_SNIFF_MATCH) {
            if (matches++ < 3)
                fprintf(stderr, "random buffer %d (len %zu) matched protocol %d\n", i, len,
                        in.protocol);
        } else if (r == MP_SNIFF_NEED_MORE) {
            need++;
        }
    }
    MP_CHECK_EQ_INT(matches, 0);
    printf("# random: %d buffers, 0 matched, %zu still NEED_MORE\n", N, need);
}

/* Random tails behind each protocol's opening bytes reach deep into every parser; none
 * may be taken for a real message. */
MP_TEST(test_plausible_garbage_never_matches)
{
    static const struct {
        const char *head;
        size_t n;
    } heads[] = {
        {"\x16\x03\x01", 3},
        {"\x16\x03\x01\x01\x00\x01\x00\x00\xfc\x03\x03", 11},
        {"PRI * HTTP/2.0\r\n", 16},
        {"GET /", 5},
        {"POST http://", 12},
        {"\x00\x00\x00\x38\x00\x03\x00\x00", 8},
        {"\x00\x00\x00\x38\x00\x03\x00\x00user\x00", 13},
        {"*", 1},
        {"*2\r\n$", 5},
        {"\x03", 1},
        {"\x03\x00\x00\x00\x00\x09\x00\x7c\x02", 9},
        {"\x40\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\xdd\x07\x00\x00", 16},
        {"\x40\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\xdd\x07\x00\x00\x00\x00\x00\x00\x00",
         21},
        {"\x40\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\xd4\x07\x00\x00", 16},
    };
    static uint8_t buf[2048];
    size_t matches = 0;
    rng_state = 0x0123456789abcdefull;
    for (size_t h = 0; h < sizeof(heads) / sizeof(heads[0]); h++) {
        for (int i = 0; i < 20000; i++) {
            size_t len = heads[h].n + (size_t)(rng() % (sizeof(buf) - heads[h].n));
            memcpy(buf, heads[h].head, heads[h].n);
            for (size_t k = heads[h].n; k < len; k++)
                buf[k] = (uint8_t)rng();
            mp_sniff_info in;
            if (sniff_mem(buf, len, &in) == MP_SNIFF_MATCH && matches++ < 3)
                fprintf(stderr, "head %zu + random (len %zu) matched protocol %d\n", h, len,
                        in.protocol);
        }
    }
    MP_CHECK_EQ_INT(matches, 0);
}

/* One flipped byte anywhere in the first 64 (the headers and lengths) may leave the
 * message valid or make it invalid or incomplete, but must never turn it into another
 * protocol, and must never crash. */
MP_TEST(test_mutated_fixtures)
{
    static const uint8_t flips[] = {0x01, 0x02, 0x10, 0x80, 0xff};
    size_t total = 0, rejected = 0, wrong = 0;
    for (size_t f = 0; f < N_FIXTURES; f++) {
        blob b = load_fixture(fixtures[f].file);
        size_t region = b.len < 64 ? b.len : 64;
        for (size_t pos = 0; pos < region; pos++) {
            for (size_t x = 0; x < sizeof(flips); x++) {
                b.data[pos] ^= flips[x];
                mp_sniff_info in;
                mp_sniff_result r = sniff_mem(b.data, b.len, &in);
                b.data[pos] ^= flips[x];
                total++;
                if (r != MP_SNIFF_MATCH) {
                    rejected++;
                } else if (in.protocol != fixtures[f].protocol) {
                    if (wrong++ < 3)
                        fprintf(stderr, "%s: flip %02x at %zu became protocol %d\n",
                                fixtures[f].file, flips[x], pos, in.protocol);
                }
            }
        }
        /* the first byte always carries the protocol's identity */
        b.data[0] ^= 0x01;
        mp_sniff_info in;
        MP_CHECK(sniff_mem(b.data, b.len, &in) != MP_SNIFF_MATCH);
        free(b.data);
    }
    MP_CHECK_EQ_INT(wrong, 0);
    printf("# mutations: %zu tried, %zu no longer match\n", total, rejected);
}

/* ------------------------------------------------------------------ HTTP/1 */

MP_TEST(test_http1_near_misses)
{
    mp_sniff_info in;
    MP_CHECK_EQ_INT(sniff_str("G", &in), MP_SNIFF_NEED_MORE);
    MP_CHECK_EQ_INT(sniff_str("GET", &in), MP_SNIFF_NEED_MORE);
    MP_CHECK_EQ_INT(sniff_str("GET / HTTP/1.1", &in), MP_SNIFF_NEED_MORE);
    MP_CHECK_EQ_INT(sniff_str("GET / HTTP/1.1\r", &in), MP_SNIFF_NEED_MORE);
    MP_CHECK_EQ_INT(sniff_str("GET /\r\n\r\n", &in), MP_SNIFF_NO_MATCH); /* HTTP/0.9 */
    MP_CHECK_EQ_INT(sniff_str("GET / \r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("get / HTTP/1.1\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("GETS / HTTP/1.1\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("FOO / HTTP/1.1\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("GET  / HTTP/1.1\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("GET / HTTP/1.1\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("GET / HTTP/2.0\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("GET / HTTP/1.x\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("GET / http/1.1\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("GET /a\tb HTTP/1.1\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("GET * HTTP/1.1\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("GET example.test HTTP/1.1\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("GET http:/x HTTP/1.1\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("GET http:// HTTP/1.1\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("GET http", &in), MP_SNIFF_NEED_MORE);
    MP_CHECK_EQ_INT(sniff_str("CONNECT host HTTP/1.1\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("CONNECT /x:1 HTTP/1.1\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("PRI * HTTP/1.1\r\n", &in), MP_SNIFF_NO_MATCH);

    MP_CHECK_EQ_INT(sniff_str("HEAD /x?y=1 HTTP/1.0\r\n", &in), MP_SNIFF_MATCH);
    MP_CHECK_STR(in.method, "HEAD");
    MP_CHECK_STR(in.path, "/x?y=1");
    MP_CHECK_EQ_INT(in.http_minor, 0);
    MP_CHECK_STR(in.host, "");

    MP_CHECK_EQ_INT(sniff_str("OPTIONS * HTTP/1.1\r\n", &in), MP_SNIFF_MATCH);
    MP_CHECK_STR(in.path, "*");

    MP_CHECK_EQ_INT(sniff_str("CONNECT example.test:443 HTTP/1.1\r\nHost: other\r\n", &in),
                    MP_SNIFF_MATCH);
    MP_CHECK_STR(in.method, "CONNECT");
    MP_CHECK_STR(in.host, "example.test:443");
    MP_CHECK_STR(in.path, "");

    MP_CHECK_EQ_INT(
        sniff_str("GET http://u@example.test:8080/a?b HTTP/1.1\r\nHost: other\r\n\r\n", &in),
        MP_SNIFF_MATCH);
    MP_CHECK_STR(in.host, "example.test:8080");
    MP_CHECK_STR(in.path, "/a?b");
    MP_CHECK_EQ_INT(sniff_str("GET https://example.test?q HTTP/1.1\r\n", &in), MP_SNIFF_MATCH);
    MP_CHECK_STR(in.host, "example.test");
    MP_CHECK_STR(in.path, "/?q");

    /* Host only from complete header lines; OWS trimmed; case-insensitive name */
    MP_CHECK_EQ_INT(sniff_str("GET / HTTP/1.1\r\nHost: exa", &in), MP_SNIFF_MATCH);
    MP_CHECK_STR(in.host, "");
    MP_CHECK_EQ_INT(sniff_str("PUT /u HTTP/1.1\r\nAccept: */*\r\nhOsT: \t a.test:81 \r\n", &in),
                    MP_SNIFF_MATCH);
    MP_CHECK_STR(in.host, "a.test:81");
    MP_CHECK_EQ_INT(sniff_str("GET / HTTP/1.1\r\n\r\nHost: late\r\n", &in), MP_SNIFF_MATCH);
    MP_CHECK_STR(in.host, "");
}

MP_TEST(test_http1_long_lines)
{
    mp_sniff_info in;
    static char buf[MP_SNIFF_MAX_BYTES + 600];
    /* a request line that never ends within the budget */
    memset(buf, 'a', sizeof(buf));
    memcpy(buf, "GET /", 5);
    MP_CHECK_EQ_INT(sniff_mem(buf, MP_SNIFF_MAX_BYTES - 1, &in), MP_SNIFF_NEED_MORE);
    MP_CHECK_EQ_INT(sniff_mem(buf, MP_SNIFF_MAX_BYTES, &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_mem(buf, sizeof(buf), &in), MP_SNIFF_NO_MATCH);
    /* a long target that does end: the path is cut and flagged */
    size_t n = 3000;
    memcpy(buf + n, " HTTP/1.1\r\n", 11);
    MP_CHECK_EQ_INT(sniff_mem(buf, n + 11, &in), MP_SNIFF_MATCH);
    MP_CHECK(in.path_truncated);
    MP_CHECK_EQ_INT(strlen(in.path), MP_SNIFF_PATH_MAX - 1);
    MP_CHECK_EQ_INT(in.consumed_hint, n + 11);
    /* and more bytes past the budget do not hide a line decided inside it */
    MP_CHECK_EQ_INT(sniff_mem(buf, sizeof(buf), &in), MP_SNIFF_MATCH);
}

MP_TEST(test_http2_preface)
{
    mp_sniff_info in;
    MP_CHECK_EQ_INT(sniff_str("PRI * HTTP/2.0\r\n\r\nSM\r\n", &in), MP_SNIFF_NEED_MORE);
    MP_CHECK_EQ_INT(sniff_str("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &in), MP_SNIFF_MATCH);
    MP_CHECK_EQ_INT(in.protocol, MP_PROTO_HTTP2);
    MP_CHECK_EQ_INT(sniff_str("PRI * HTTP/2.0\r\n\r\nSN\r\n\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("P", &in), MP_SNIFF_NEED_MORE);
    MP_CHECK_EQ_INT(sniff_str("PR", &in), MP_SNIFF_NEED_MORE);
    MP_CHECK_EQ_INT(sniff_str("PO", &in), MP_SNIFF_NEED_MORE);
    /* under 4 bytes anything may still be a MongoDB length, so decide on 4 */
    MP_CHECK_EQ_INT(sniff_str("PX", &in), MP_SNIFF_NEED_MORE);
    MP_CHECK_EQ_INT(sniff_str("PXYZ", &in), MP_SNIFF_NO_MATCH);
}

/* ------------------------------------------------------------------ TLS */

/* Builds a ClientHello (SNI, ALPN "h2", and an opaque extension of pad bytes standing
 * in for big post-quantum key shares) and frames it in records of at most rec_max
 * payload bytes. Returns the total length. */
static size_t build_hello(uint8_t *out, size_t cap, const char *sni, size_t pad,
                          size_t rec_max)
{
    static uint8_t hs[70000];
    size_t sni_len = strlen(sni), p = 4;
    hs[p++] = 3;
    hs[p++] = 3;
    memset(hs + p, 0x11, 32);
    p += 32;
    hs[p++] = 0;                /* session id */
    put_be16(hs + p, 4);        /* cipher suites */
    hs[p + 2] = 0x13, hs[p + 3] = 0x01, hs[p + 4] = 0x13, hs[p + 5] = 0x02;
    p += 6;
    hs[p++] = 1, hs[p++] = 0;   /* compression: null */
    size_t ext_at = p;
    p += 2;
    put_be16(hs + p, 0), put_be16(hs + p + 2, sni_len + 5);
    put_be16(hs + p + 4, sni_len + 3);
    hs[p + 6] = 0;
    put_be16(hs + p + 7, sni_len);
    memcpy(hs + p + 9, sni, sni_len);
    p += 9 + sni_len;
    put_be16(hs + p, 16), put_be16(hs + p + 2, 5), put_be16(hs + p + 4, 3);
    hs[p + 6] = 2, hs[p + 7] = 'h', hs[p + 8] = '2';
    p += 9;
    put_be16(hs + p, 0x0033), put_be16(hs + p + 2, pad);
    memset(hs + p + 4, 0x5a, pad);
    p += 4 + pad;
    put_be16(hs + ext_at, p - ext_at - 2);
    hs[0] = 1;
    hs[1] = (uint8_t)((p - 4) >> 16), hs[2] = (uint8_t)((p - 4) >> 8), hs[3] = (uint8_t)(p - 4);

    size_t o = 0;
    for (size_t at = 0; at < p;) {
        size_t n = p - at < rec_max ? p - at : rec_max;
        if (o + 5 + n > cap)
            return 0;
        out[o] = 0x16, out[o + 1] = 3, out[o + 2] = 1;
        put_be16(out + o + 3, n);
        memcpy(out + o + 5, hs + at, n);
        o += 5 + n;
        at += n;
    }
    return o;
}

/* Re-frames a captured single-record hello into records of the given sizes (the
 * last one takes the rest). */
static size_t reframe(const blob *b, const size_t *sizes, size_t nsizes, uint8_t *out)
{
    const uint8_t *hs = b->data + 5;
    size_t left = b->len - 5, o = 0, i = 0;
    while (left > 0) {
        size_t n = i < nsizes && sizes[i] < left ? sizes[i] : left;
        out[o] = 0x16, out[o + 1] = 3, out[o + 2] = 1;
        put_be16(out + o + 3, n);
        memcpy(out + o + 5, hs, n);
        o += 5 + n;
        hs += n;
        left -= n;
        i++;
    }
    return o;
}

MP_TEST(test_tls_split_records)
{
    blob b = load_fixture("tls_clienthello_openssl.bin");
    static uint8_t buf[8192];
    static const size_t split3[] = {10, 100};
    size_t ones[400];
    for (size_t i = 0; i < 400; i++)
        ones[i] = 1;
    const struct {
        const size_t *sizes;
        size_t n;
    } cases[] = {{split3, 2}, {ones, 400}};
    for (size_t c = 0; c < 2; c++) {
        size_t n = reframe(&b, cases[c].sizes, cases[c].n, buf);
        mp_sniff_info in;
        MP_CHECK_EQ_INT(sniff_mem(buf, n, &in), MP_SNIFF_MATCH);
        MP_CHECK_STR(in.sni, "api.example.test");
        MP_CHECK_EQ_INT(in.n_alpn, 2);
        MP_CHECK_EQ_INT(in.consumed_hint, n);
        size_t bad = 0;
        for (size_t k = 0; k < n; k++)
            if (sniff_mem(buf, k, &in) != MP_SNIFF_NEED_MORE)
                bad++;
        MP_CHECK_EQ_INT(bad, 0);
    }
    /* a record in the middle that is not a handshake record */
    size_t n = reframe(&b, split3, 2, buf);
    buf[15] = 0x17;
    mp_sniff_info in;
    MP_CHECK_EQ_INT(sniff_mem(buf, n, &in), MP_SNIFF_NO_MATCH);
    /* a zero-length record */
    buf[15] = 0x16;
    static const size_t split0[] = {10, 0};
    n = reframe(&b, split0, 2, buf);
    MP_CHECK_EQ_INT(sniff_mem(buf, n, &in), MP_SNIFF_NO_MATCH);
    free(b.data);
}

MP_TEST(test_tls_large_hello)
{
    static uint8_t buf[MP_SNIFF_MAX_TLS_BYTES + 4096];
    mp_sniff_info in;
    /* ~6 KiB in one record: bigger than MP_SNIFF_MAX_BYTES, still decided */
    size_t n = build_hello(buf, sizeof(buf), "pq.example.test", 6000, 16384);
    MP_CHECK(n > MP_SNIFF_MAX_BYTES);
    MP_CHECK_EQ_INT(sniff_mem(buf, MP_SNIFF_MAX_BYTES, &in), MP_SNIFF_NEED_MORE);
    MP_CHECK_EQ_INT(in.consumed_hint, n);
    MP_CHECK_EQ_INT(sniff_mem(buf, n - 1, &in), MP_SNIFF_NEED_MORE);
    MP_CHECK_EQ_INT(sniff_mem(buf, n, &in), MP_SNIFF_MATCH);
    MP_CHECK_STR(in.sni, "pq.example.test");
    MP_CHECK_EQ_INT(in.n_alpn, 1);
    MP_CHECK_STR(in.alpn[0], "h2");
    /* the same across many records */
    n = build_hello(buf, sizeof(buf), "pq.example.test", 9000, 1000);
    MP_CHECK_EQ_INT(sniff_mem(buf, n, &in), MP_SNIFF_MATCH);
    MP_CHECK_STR(in.sni, "pq.example.test");
    /* one that cannot fit in the TLS budget is refused as soon as its length shows */
    n = build_hello(buf, sizeof(buf), "pq.example.test", 16500, 16384);
    MP_CHECK(n > MP_SNIFF_MAX_TLS_BYTES);
    MP_CHECK_EQ_INT(sniff_mem(buf, 9, &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_mem(buf, n, &in), MP_SNIFF_NO_MATCH);
    /* a 256-byte server_name is not a DNS name: still TLS, but no SNI */
    char longname[300];
    memset(longname, 'a', 256);
    longname[256] = '\0';
    n = build_hello(buf, sizeof(buf), longname, 10, 16384);
    MP_CHECK_EQ_INT(sniff_mem(buf, n, &in), MP_SNIFF_MATCH);
    MP_CHECK_STR(in.sni, "");
    longname[255] = '\0';
    n = build_hello(buf, sizeof(buf), longname, 10, 16384);
    MP_CHECK_EQ_INT(sniff_mem(buf, n, &in), MP_SNIFF_MATCH);
    MP_CHECK_EQ_INT(strlen(in.sni), 255);
}

MP_TEST(test_tls_near_misses)
{
    blob b = load_fixture("tls_clienthello_openssl.bin");
    mp_sniff_info in;
    MP_CHECK(b.len > 100);
    if (b.len <= 100) {
        free(b.data);
        return;
    }
    uint8_t *m = malloc(b.len);
#define RESET() memcpy(m, b.data, b.len)
    RESET();
    m[5] = 2; /* ServerHello */
    MP_CHECK_EQ_INT(sniff_mem(m, b.len, &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_mem(m, 12, &in), MP_SNIFF_NO_MATCH);
    RESET();
    m[0] = 0x17; /* application data */
    MP_CHECK_EQ_INT(sniff_mem(m, b.len, &in), MP_SNIFF_NO_MATCH);
    RESET();
    m[2] = 0x05; /* record version 3.5 */
    MP_CHECK_EQ_INT(sniff_mem(m, 12, &in), MP_SNIFF_NO_MATCH);
    RESET();
    m[1] = 0x02; /* SSL 2-ish major */
    MP_CHECK_EQ_INT(sniff_mem(m, b.len, &in), MP_SNIFF_NO_MATCH);
    RESET();
    m[8] += 1; /* handshake length one more than the record holds: the extensions
                * block then no longer ends with the message */
    MP_CHECK_EQ_INT(sniff_mem(m, b.len, &in), MP_SNIFF_NO_MATCH);
    RESET();
    m[4] += 1; /* record longer than the hello: decided before the extra byte comes */
    MP_CHECK_EQ_INT(sniff_mem(m, b.len, &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_mem(m, b.len - 1, &in), MP_SNIFF_NEED_MORE);
    RESET();
    m[9] = 0x02; /* ClientHello legacy_version 2.3 */
    MP_CHECK_EQ_INT(sniff_mem(m, b.len, &in), MP_SNIFF_NO_MATCH);
    RESET();
    m[43] = 33; /* session id longer than 32 */
    MP_CHECK_EQ_INT(sniff_mem(m, b.len, &in), MP_SNIFF_NO_MATCH);

    /* SNI with a NUL inside, and a second host_name entry */
    size_t sni_at = 0;
    for (size_t i = 0; i + 16 <= b.len; i++)
        if (memcmp(b.data + i, "api.example.test", 16) == 0)
            sni_at = i;
    MP_CHECK(sni_at > 0);
    RESET();
    m[sni_at + 3] = 0;
    MP_CHECK_EQ_INT(sniff_mem(m, b.len, &in), MP_SNIFF_NO_MATCH);
    /* ALPN list length off by one */
    size_t alpn_at = 0;
    for (size_t i = 0; i + 4 <= b.len; i++)
        if (memcmp(b.data + i, "\x02h2\x08", 4) == 0)
            alpn_at = i;
    MP_CHECK(alpn_at > 0);
    if (alpn_at > 0) {
        RESET();
        m[alpn_at - 1] += 1;
        MP_CHECK_EQ_INT(sniff_mem(m, b.len, &in), MP_SNIFF_NO_MATCH);
        RESET();
        m[alpn_at] = 0; /* empty protocol name */
        MP_CHECK_EQ_INT(sniff_mem(m, b.len, &in), MP_SNIFF_NO_MATCH);
    }
#undef RESET
    free(m);
    free(b.data);

    /* an SSLv2-framed hello is not taken */
    MP_CHECK_EQ_INT(sniff_mem("\x80\x2e\x01\x03\x01", 5, &in), MP_SNIFF_NO_MATCH);

    /* the oldest shape: no extensions at all */
    uint8_t old[5 + 4 + 2 + 32 + 1 + 4 + 2];
    size_t p = 0;
    old[p++] = 0x16, old[p++] = 3, old[p++] = 0;
    put_be16(old + p, sizeof(old) - 5), p += 2;
    old[p++] = 1, old[p++] = 0, old[p++] = 0, old[p++] = (uint8_t)(sizeof(old) - 9);
    old[p++] = 3, old[p++] = 0;
    memset(old + p, 0x42, 32), p += 32;
    old[p++] = 0;
    put_be16(old + p, 2), old[p + 2] = 0, old[p + 3] = 0x2f, p += 4;
    old[p++] = 1, old[p++] = 0;
    MP_CHECK_EQ_INT(p, sizeof(old));
    MP_CHECK_EQ_INT(sniff_mem(old, sizeof(old), &in), MP_SNIFF_MATCH);
    MP_CHECK_EQ_INT(in.protocol, MP_PROTO_HTTPS);
    MP_CHECK_STR(in.sni, "");
    MP_CHECK_EQ_INT(in.n_alpn, 0);
}

/* ------------------------------------------------------------------ PostgreSQL */

/* A startup message with the given protocol word and parameter block (pairs, then
 * the final NUL, written by the caller). */
static size_t pg_msg(uint8_t *out, uint32_t proto, const char *params, size_t plen)
{
    size_t L = 8 + plen;
    out[0] = (uint8_t)(L >> 24), out[1] = (uint8_t)(L >> 16);
    out[2] = (uint8_t)(L >> 8), out[3] = (uint8_t)L;
    out[4] = (uint8_t)(proto >> 24), out[5] = (uint8_t)(proto >> 16);
    out[6] = (uint8_t)(proto >> 8), out[7] = (uint8_t)proto;
    memcpy(out + 8, params, plen);
    return L;
}

MP_TEST(test_pg_near_misses)
{
    static uint8_t m[12000];
    mp_sniff_info in;
    static const char ok[] = "user\0bob\0\0";
    size_t n = pg_msg(m, 0x00030000, ok, sizeof(ok) - 1);
    MP_CHECK_EQ_INT(sniff_mem(m, n, &in), MP_SNIFF_MATCH);
    MP_CHECK_STR(in.pg_user, "bob");
    MP_CHECK_STR(in.pg_database, "");

    n = pg_msg(m, 0x00020000, ok, sizeof(ok) - 1); /* protocol 2.0 */
    MP_CHECK_EQ_INT(sniff_mem(m, n, &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_mem(m, 6, &in), MP_SNIFF_NO_MATCH);
    n = pg_msg(m, 0x00030002, ok, sizeof(ok) - 1); /* 3.2, PostgreSQL 18 */
    MP_CHECK_EQ_INT(sniff_mem(m, n, &in), MP_SNIFF_MATCH);

    static const char nouser[] = "database\0x\0\0";
    n = pg_msg(m, 0x00030000, nouser, sizeof(nouser) - 1);
    MP_CHECK_EQ_INT(sniff_mem(m, n, &in), MP_SNIFF_NO_MATCH);
    static const char emptyuser[] = "user\0\0database\0x\0\0";
    n = pg_msg(m, 0x00030000, emptyuser, sizeof(emptyuser) - 1);
    MP_CHECK_EQ_INT(sniff_mem(m, n, &in), MP_SNIFF_NO_MATCH);
    static const char noterm[] = "user\0bob\0x\0";
    n = pg_msg(m, 0x00030000, noterm, sizeof(noterm) - 1);
    MP_CHECK_EQ_INT(sniff_mem(m, n, &in), MP_SNIFF_NO_MATCH);
    static const char early[] = "user\0bob\0\0\0\0";
    n = pg_msg(m, 0x00030000, early, sizeof(early) - 1);
    MP_CHECK_EQ_INT(sniff_mem(m, n, &in), MP_SNIFF_NO_MATCH);
    static const char badname[] = "us er\0bob\0user\0bob\0\0";
    n = pg_msg(m, 0x00030000, badname, sizeof(badname) - 1);
    MP_CHECK_EQ_INT(sniff_mem(m, n, &in), MP_SNIFF_NO_MATCH);

    /* long names are left empty rather than cut */
    char longp[200];
    size_t lp = 0;
    memcpy(longp, "user\0", 5), lp = 5;
    memset(longp + lp, 'u', 64), lp += 64;
    longp[lp++] = 0;
    memcpy(longp + lp, "database\0db\0", 12), lp += 12;
    longp[lp++] = 0;
    n = pg_msg(m, 0x00030000, longp, lp);
    MP_CHECK_EQ_INT(sniff_mem(m, n, &in), MP_SNIFF_MATCH);
    MP_CHECK_STR(in.pg_user, "");
    MP_CHECK_STR(in.pg_database, "db");

    /* SSLRequest, GSSENCRequest, CancelRequest and their exact lengths */
    MP_CHECK_EQ_INT(sniff_mem("\0\0\0\x08\x04\xd2\x16\x30", 8, &in), MP_SNIFF_MATCH);
    MP_CHECK(in.pg_gss_request && !in.pg_ssl_request);
    MP_CHECK_EQ_INT(sniff_mem("\0\0\0\x09\x04\xd2\x16\x2f\0", 9, &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_mem("\0\0\0\x10\x04\xd2\x16\x2f", 8, &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_mem("\0\0\0\x10\x04\xd2\x16\x2e\0\0\0\x01\x12\x34\x56", 15, &in),
                    MP_SNIFF_NEED_MORE);
    MP_CHECK_EQ_INT(sniff_mem("\0\0\0\x10\x04\xd2\x16\x2e\0\0\0\x01\x12\x34\x56\x78", 16, &in),
                    MP_SNIFF_MATCH);
    MP_CHECK(in.pg_cancel);
    uint8_t cancel32[8 + 4 + 32] = {0, 0, 0, 44, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 7};
    MP_CHECK_EQ_INT(sniff_mem(cancel32, sizeof(cancel32), &in), MP_SNIFF_MATCH);
    MP_CHECK(in.pg_cancel);
    MP_CHECK_EQ_INT(sniff_mem("\0\0\0\x0c\x04\xd2\x16\x2e\0\0\0\x01", 12, &in),
                    MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_mem("\0\0\0\x08\x04\xd2\x16\x31", 8, &in), MP_SNIFF_NO_MATCH);
    /* length field beyond the server's startup limit */
    MP_CHECK_EQ_INT(sniff_mem("\0\0\x27\x11", 4, &in), MP_SNIFF_NO_MATCH);

    /* a startup message longer than the sniff budget is decided on what fits */
    size_t plen = 0;
    static char big[9000];
    memcpy(big, "user\0bob\0options\0", 17), plen = 17;
    memset(big + plen, 'o', 8000), plen += 8000;
    big[plen++] = 0;
    big[plen++] = 0;
    n = pg_msg(m, 0x00030000, big, plen);
    MP_CHECK(n > MP_SNIFF_MAX_BYTES);
    MP_CHECK_EQ_INT(sniff_mem(m, MP_SNIFF_MAX_BYTES - 1, &in), MP_SNIFF_NEED_MORE);
    MP_CHECK_EQ_INT(in.consumed_hint, MP_SNIFF_MAX_BYTES);
    MP_CHECK_EQ_INT(sniff_mem(m, MP_SNIFF_MAX_BYTES, &in), MP_SNIFF_MATCH);
    MP_CHECK_STR(in.pg_user, "bob");
}

/* ------------------------------------------------------------------ Redis */

MP_TEST(test_resp_near_misses)
{
    mp_sniff_info in;
    MP_CHECK_EQ_INT(sniff_str("*abc", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("*", &in), MP_SNIFF_NEED_MORE);
    MP_CHECK_EQ_INT(sniff_str("*0\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("*-1\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("*01\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("*1\n$", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("*1\r\n:4\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("*1\r\n$0\r\n\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("*1\r\n$65\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("*1\r\n$4\r\nPI\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("*1\r\n$4\r\nPINGX", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("*1\r\n$4\r\n1NG\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("*1\r\n$4\r\nPI", &in), MP_SNIFF_NEED_MORE);
    MP_CHECK_EQ_INT(sniff_str("*99999999\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_str("PING\r\n", &in), MP_SNIFF_NO_MATCH); /* inline: not taken */

    MP_CHECK_EQ_INT(sniff_str("*3\r\n$3\r\nset\r\n$1\r\nk\r\n$1\r\nv\r\n", &in), MP_SNIFF_MATCH);
    MP_CHECK_EQ_INT(in.protocol, MP_PROTO_REDIS);
    MP_CHECK_EQ_INT(in.consumed_hint, 13);
    MP_CHECK_EQ_INT(sniff_str("*2\r\n$8\r\nJSON.GET\r\n", &in), MP_SNIFF_MATCH);
}

/* ------------------------------------------------------------------ RTMP */

MP_TEST(test_rtmp_near_misses)
{
    blob b = load_fixture("rtmp_c0c1_ffmpeg.bin");
    mp_sniff_info in;
    MP_CHECK_EQ_INT(b.len, 1537);
    /* what ffmpeg sends: time 0, version 9.0.124.2, a digest at the scheme-0 offset */
    MP_CHECK(b.data[0] == 3 && b.data[5] == 9 && b.data[6] == 0 && b.data[7] == 124 &&
             b.data[8] == 2);

    b.data[0] = 0x06; /* RTMPE */
    MP_CHECK_EQ_INT(sniff_mem(b.data, b.len, &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_mem(b.data, 4, &in), MP_SNIFF_NO_MATCH);
    b.data[0] = 0x03;

    /* one random byte of C1 changed: the digest no longer verifies */
    b.data[1000] ^= 0x01;
    MP_CHECK_EQ_INT(sniff_mem(b.data, b.len, &in), MP_SNIFF_NO_MATCH);
    b.data[1000] ^= 0x01;
    /* the digest's position depends on C1[8..11]: move it and it is lost */
    b.data[9] ^= 0x01;
    MP_CHECK_EQ_INT(sniff_mem(b.data, b.len, &in), MP_SNIFF_NO_MATCH);
    b.data[9] ^= 0x01;
    MP_CHECK_EQ_INT(sniff_mem(b.data, b.len, &in), MP_SNIFF_MATCH);

    /* the simple handshake of the spec: zero word, random rest */
    b.data[5] = b.data[6] = b.data[7] = b.data[8] = 0;
    MP_CHECK_EQ_INT(sniff_mem(b.data, b.len, &in), MP_SNIFF_MATCH);
    MP_CHECK_EQ_INT(in.protocol, MP_PROTO_RTMP);
    MP_CHECK_EQ_INT(sniff_mem(b.data, 1536, &in), MP_SNIFF_NEED_MORE);
    MP_CHECK_EQ_INT(in.consumed_hint, 1537);
    free(b.data);
}

/* ------------------------------------------------------------------ MongoDB */

MP_TEST(test_mongo_near_misses)
{
    blob q = load_fixture("mongodb_hello_pymongo.bin");
    blob m = load_fixture("mongodb_opmsg_ping_pymongo.bin");
    mp_sniff_info in;
    uint8_t *x = malloc(q.len > m.len ? q.len : m.len);

    memcpy(x, m.data, m.len);
    x[8] = 1; /* responseTo != 0 */
    MP_CHECK_EQ_INT(sniff_mem(x, m.len, &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(sniff_mem(x, 9, &in), MP_SNIFF_NO_MATCH);
    memcpy(x, m.data, m.len);
    put_le32(x + 12, 2012); /* OP_COMPRESSED cannot come before the hello */
    MP_CHECK_EQ_INT(sniff_mem(x, m.len, &in), MP_SNIFF_NO_MATCH);
    memcpy(x, m.data, m.len);
    put_le32(x, 20); /* too short to hold anything */
    MP_CHECK_EQ_INT(sniff_mem(x, m.len, &in), MP_SNIFF_NO_MATCH);
    put_le32(x, 48000001);
    MP_CHECK_EQ_INT(sniff_mem(x, m.len, &in), MP_SNIFF_NO_MATCH);
    memcpy(x, m.data, m.len);
    x[16] = 0x04; /* unknown required flag bit */
    MP_CHECK_EQ_INT(sniff_mem(x, m.len, &in), MP_SNIFF_NO_MATCH);
    memcpy(x, m.data, m.len);
    x[18] = 0x01; /* exhaustAllowed is fine */
    MP_CHECK_EQ_INT(sniff_mem(x, m.len, &in), MP_SNIFF_MATCH);
    memcpy(x, m.data, m.len);
    x[20] = 1; /* a document sequence first */
    MP_CHECK_EQ_INT(sniff_mem(x, m.len, &in), MP_SNIFF_NO_MATCH);
    memcpy(x, m.data, m.len);
    put_le32(x + 21, (uint32_t)m.len); /* body declared longer than the message */
    MP_CHECK_EQ_INT(sniff_mem(x, m.len, &in), MP_SNIFF_NO_MATCH);
    memcpy(x, m.data, m.len);
    x[m.len - 1] = 1; /* body's closing NUL */
    MP_CHECK_EQ_INT(sniff_mem(x, m.len, &in), MP_SNIFF_NO_MATCH);
    memcpy(x, m.data, m.len);
    x[25] = 0x42; /* element type that does not exist */
    MP_CHECK_EQ_INT(sniff_mem(x, m.len, &in), MP_SNIFF_NO_MATCH);

    memcpy(x, q.data, q.len);
    memcpy(x + 20, "admin.$cme", 10); /* not a command namespace */
    MP_CHECK_EQ_INT(sniff_mem(x, q.len, &in), MP_SNIFF_NO_MATCH);
    memcpy(x, q.data, q.len);
    memcpy(x + 44, "isnaste", 7); /* not a handshake command (first key is "ismaster") */
    MP_CHECK_EQ_INT(sniff_mem(x, q.len, &in), MP_SNIFF_NO_MATCH);
    memcpy(x, q.data, q.len);
    x[16] = 0x01; /* reserved OP_QUERY flag */
    MP_CHECK_EQ_INT(sniff_mem(x, q.len, &in), MP_SNIFF_NO_MATCH);

    /* the smallest OP_MSG a client could send: {ping: 1} */
    uint8_t tiny[16 + 4 + 1 + 15] = {0};
    put_le32(tiny, sizeof(tiny));
    put_le32(tiny + 4, 7);
    put_le32(tiny + 12, 2013);
    put_le32(tiny + 21, 15);
    memcpy(tiny + 25, "\x10ping\0\x01\0\0\0\0", 11);
    MP_CHECK_EQ_INT(sniff_mem(tiny, sizeof(tiny), &in), MP_SNIFF_MATCH);
    MP_CHECK_EQ_INT(in.protocol, MP_PROTO_MONGODB);
    uint8_t empty[16 + 4 + 1 + 5] = {0};
    put_le32(empty, sizeof(empty));
    put_le32(empty + 12, 2013);
    put_le32(empty + 21, 5);
    MP_CHECK_EQ_INT(sniff_mem(empty, sizeof(empty), &in), MP_SNIFF_NO_MATCH);

    free(x);
    free(q.data);
    free(m.data);
}

/* ------------------------------------------------------------------ misc */

MP_TEST(test_edges_and_names)
{
    mp_sniff_info in;
    MP_CHECK_EQ_INT(mp_sniff((const uint8_t *)"", 0, &in), MP_SNIFF_NEED_MORE);
    MP_CHECK_EQ_INT(in.consumed_hint, 1);
    MP_CHECK_EQ_INT(in.protocol, 0);
    MP_CHECK_EQ_INT(sniff_str("\x05", &in), MP_SNIFF_NEED_MORE); /* could be Mongo length */
    MP_CHECK_EQ_INT(sniff_str("hello world\r\n", &in), MP_SNIFF_NO_MATCH);
    MP_CHECK_EQ_INT(in.consumed_hint, 0);
    MP_CHECK_STR(mp_sniff_protocol_name(MP_PROTO_HTTPS), "https");
    MP_CHECK_STR(mp_sniff_protocol_name(MP_PROTO_HTTP), "http");
    MP_CHECK_STR(mp_sniff_protocol_name(MP_PROTO_POSTGRES), "postgres");
    MP_CHECK_STR(mp_sniff_protocol_name(MP_PROTO_REDIS), "redis");
    MP_CHECK_STR(mp_sniff_protocol_name(MP_PROTO_RTMP), "rtmp");
    MP_CHECK_STR(mp_sniff_protocol_name(MP_PROTO_MONGODB), "mongodb");
    MP_CHECK_STR(mp_sniff_protocol_name(-1), "?");
    MP_CHECK_STR(mp_sniff_protocol_name(99), "?");
}

MP_TEST_MAIN(MP_CASE(test_fixture_http1_curl), MP_CASE(test_fixture_http2_curl),
             MP_CASE(test_fixture_tls_openssl), MP_CASE(test_fixture_tls_curl),
             MP_CASE(test_fixture_pg), MP_CASE(test_fixture_redis_rtmp_mongo),
             MP_CASE(test_fixture_prefixes), MP_CASE(test_random_garbage_never_matches),
             MP_CASE(test_plausible_garbage_never_matches), MP_CASE(test_mutated_fixtures),
             MP_CASE(test_http1_near_misses), MP_CASE(test_http1_long_lines),
             MP_CASE(test_http2_preface), MP_CASE(test_tls_split_records),
             MP_CASE(test_tls_large_hello), MP_CASE(test_tls_near_misses),
             MP_CASE(test_pg_near_misses), MP_CASE(test_resp_near_misses),
             MP_CASE(test_rtmp_near_misses), MP_CASE(test_mongo_near_misses),
             MP_CASE(test_edges_and_names))
