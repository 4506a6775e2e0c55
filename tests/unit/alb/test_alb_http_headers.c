/*
 * test_alb_http_headers.c — unit tests for plugins/alb/alb_http_headers.c: the
 * upstream request head is compared byte-for-byte for each rewrite rule (hop-by-hop
 * removal, re-framing, X-Forwarded-*, Via, Host, target form), the size limit is
 * checked at every capacity, and one case runs the real parser in front of it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem (the build defines it already) */
#endif
#include "alb_http_headers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mp_test.h"

#define F(n, v) {n, sizeof(n) - 1, v, sizeof(v) - 1}

static struct alb_fwd_request origin_req(const struct alb_http_field *f, size_t n)
{
    struct alb_fwd_request rq = {"GET", 3, "/x?y=1", 6, ALB_HTTP_TARGET_ORIGIN, f, n,
                                 "a.example", 9, 0};
    return rq;
}

static struct alb_fwd_opts base_opts(void)
{
    struct alb_fwd_opts o;
    memset(&o, 0, sizeof(o));
    o.client_addr = "10.0.0.1";
    o.via_name = "alb";
    return o;
}

/* Builds into a heap buffer of exactly cap bytes (ASan catches overruns). */
static enum alb_hdr_rc build(const struct alb_fwd_request *rq, const struct alb_fwd_opts *o,
                             size_t cap, char **out, size_t *len)
{
    *out = malloc(cap ? cap : 1);
    *len = 0;
    return alb_http_build_upstream_head(rq, o, *out, cap, len);
}

#define EXPECT_HEAD(rq, o, want)                                                        \
    do {                                                                                \
        char *out_;                                                                     \
        size_t len_;                                                                    \
        MP_CHECK_EQ_INT(build((rq), (o), 4096, &out_, &len_), ALB_HDR_OK);              \
        MP_CHECK_EQ_INT(len_, strlen(want));                                            \
        if (len_ != strlen(want) || memcmp(out_, (want), len_) != 0) {                  \
            fprintf(stderr, "got:\n%.*s\nwant:\n%s\n", (int)len_, out_, (want));        \
            *mp_test_failed_ = 1;                                                       \
        }                                                                               \
        free(out_);                                                                     \
    } while (0)

MP_TEST(test_basic)
{
    static const struct alb_http_field f[] = {F("Host", "a.example"), F("Accept", "*/*"),
                                              F("User-Agent", "t/1")};
    struct alb_fwd_request rq = origin_req(f, 3);
    struct alb_fwd_opts o = base_opts();
    EXPECT_HEAD(&rq, &o,
                "GET /x?y=1 HTTP/1.1\r\nHost: a.example\r\nAccept: */*\r\nUser-Agent: t/1\r\n"
                "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: a.example\r\nVia: 1.1 alb\r\n\r\n");
    o.client_tls = 1;
    o.via_name = NULL;
    o.upstream_host = "backend:8080";
    EXPECT_HEAD(&rq, &o,
                "GET /x?y=1 HTTP/1.1\r\nHost: backend:8080\r\nAccept: */*\r\nUser-Agent: t/1\r\n"
                "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n"
                "X-Forwarded-Host: a.example\r\n\r\n");
}

MP_TEST(test_hop_by_hop)
{
    static const struct alb_http_field f[] = {
        F("Host", "a.example"),
        F("Connection", "keep-alive, X-Hop, te"),
        F("X-Hop", "secret"),
        F("Keep-Alive", "timeout=5"),
        F("Proxy-Connection", "keep-alive"),
        F("TE", "trailers, deflate;q=0.5"),
        F("Trailer", "X-Sum"),
        F("Upgrade", "h2c"),
        F("Transfer-Encoding", "chunked"),
        F("connection", "X-Other"),
        F("x-other", "1"),
        F("Cookie", "a=b"),
    };
    struct alb_fwd_request rq = origin_req(f, sizeof(f) / sizeof(f[0]));
    rq.method = "POST";
    rq.method_len = 4;
    struct alb_fwd_opts o = base_opts();
    o.framing = ALB_FWD_BODY_CHUNKED;
    EXPECT_HEAD(&rq, &o,
                "POST /x?y=1 HTTP/1.1\r\nHost: a.example\r\nCookie: a=b\r\n"
                "Transfer-Encoding: chunked\r\nConnection: te\r\nTE: trailers\r\n"
                "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: a.example\r\nVia: 1.1 alb\r\n\r\n");
    /* Content-Length re-framing: the client's value is replaced by ours */
    static const struct alb_http_field g[] = {F("Host", "a.example"),
                                              F("Content-Length", "005"), F("X", "y")};
    rq = origin_req(g, 3);
    o.framing = ALB_FWD_BODY_LENGTH;
    o.content_length = 5;
    EXPECT_HEAD(&rq, &o,
                "GET /x?y=1 HTTP/1.1\r\nHost: a.example\r\nX: y\r\nContent-Length: 5\r\n"
                "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: a.example\r\nVia: 1.1 alb\r\n\r\n");
}

MP_TEST(test_forwarded_append)
{
    static const struct alb_http_field f[] = {
        F("Host", "a.example"),
        F("X-Forwarded-For", "1.1.1.1"),
        F("X-Forwarded-Proto", "https"),
        F("X-Forwarded-Host", "spoofed"),
        F("Via", "1.0 fred"),
        F("X-Forwarded-For", "2.2.2.2, 3.3.3.3"),
        F("via", "1.1 p.example (x)"),
    };
    struct alb_fwd_request rq = origin_req(f, sizeof(f) / sizeof(f[0]));
    struct alb_fwd_opts o = base_opts();
    EXPECT_HEAD(&rq, &o,
                "GET /x?y=1 HTTP/1.1\r\nHost: a.example\r\n"
                "X-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.1\r\n"
                "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a.example\r\n"
                "Via: 1.0 fred, 1.1 p.example (x), 1.1 alb\r\n\r\n");
    o.xff_replace = 1;
    o.via_name = NULL;
    EXPECT_HEAD(&rq, &o,
                "GET /x?y=1 HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-For: 10.0.0.1\r\n"
                "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a.example\r\n"
                "Via: 1.0 fred, 1.1 p.example (x)\r\n\r\n");
    /* a client naming X-Forwarded-For in Connection only loses its own entries */
    static const struct alb_http_field g[] = {F("Host", "a.example"),
                                              F("Connection", "X-Forwarded-For"),
                                              F("X-Forwarded-For", "9.9.9.9")};
    rq = origin_req(g, 3);
    o = base_opts();
    EXPECT_HEAD(&rq, &o,
                "GET /x?y=1 HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-For: 10.0.0.1\r\n"
                "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a.example\r\n"
                "Via: 1.1 alb\r\n\r\n");
}

MP_TEST(test_target_forms)
{
    static const struct alb_http_field f[] = {F("Host", "evil.example")};
    struct alb_fwd_request rq = origin_req(f, 1);
    struct alb_fwd_opts o = base_opts();
    o.via_name = NULL;
    /* absolute-form: origin-form upstream, Host from the target's authority */
    rq.target = "http://b.example:81/p/q?r";
    rq.target_len = strlen(rq.target);
    rq.form = ALB_HTTP_TARGET_ABSOLUTE;
    rq.authority = "b.example:81";
    rq.authority_len = 12;
    EXPECT_HEAD(&rq, &o,
                "GET /p/q?r HTTP/1.1\r\nHost: b.example:81\r\nX-Forwarded-For: 10.0.0.1\r\n"
                "X-Forwarded-Proto: http\r\nX-Forwarded-Host: b.example:81\r\n\r\n");
    rq.target = "https://b.example?r";
    rq.target_len = strlen(rq.target);
    rq.authority = "b.example";
    rq.authority_len = 9;
    EXPECT_HEAD(&rq, &o,
                "GET /?r HTTP/1.1\r\nHost: b.example\r\nX-Forwarded-For: 10.0.0.1\r\n"
                "X-Forwarded-Proto: http\r\nX-Forwarded-Host: b.example\r\n\r\n");
    rq.target = "http://b.example";
    rq.target_len = strlen(rq.target);
    EXPECT_HEAD(&rq, &o,
                "GET / HTTP/1.1\r\nHost: b.example\r\nX-Forwarded-For: 10.0.0.1\r\n"
                "X-Forwarded-Proto: http\r\nX-Forwarded-Host: b.example\r\n\r\n");
    rq.method = "OPTIONS";
    rq.method_len = 7;
    rq.target = "*";
    rq.target_len = 1;
    rq.form = ALB_HTTP_TARGET_ASTERISK;
    rq.authority = "";
    rq.authority_len = 0;
    EXPECT_HEAD(&rq, &o,
                "OPTIONS * HTTP/1.1\r\nHost: \r\nX-Forwarded-For: 10.0.0.1\r\n"
                "X-Forwarded-Proto: http\r\n\r\n");
}

MP_TEST(test_upgrade_passthrough)
{
    static const struct alb_http_field f[] = {
        F("Host", "a.example"),          F("Connection", "Upgrade"),
        F("Upgrade", "websocket"),       F("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        F("Sec-WebSocket-Version", "13"), F("TE", "trailers"),
    };
    struct alb_fwd_request rq = origin_req(f, sizeof(f) / sizeof(f[0]));
    rq.upgrade = 1;
    struct alb_fwd_opts o = base_opts();
    o.pass_upgrade = 1;
    EXPECT_HEAD(&rq, &o,
                "GET /x?y=1 HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                "Connection: upgrade, te\r\nTE: trailers\r\nX-Forwarded-For: 10.0.0.1\r\n"
                "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a.example\r\nVia: 1.1 alb\r\n\r\n");
    o.pass_upgrade = 0;
    EXPECT_HEAD(&rq, &o,
                "GET /x?y=1 HTTP/1.1\r\nHost: a.example\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                "Connection: te\r\nTE: trailers\r\nX-Forwarded-For: 10.0.0.1\r\n"
                "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a.example\r\nVia: 1.1 alb\r\n\r\n");
}

MP_TEST(test_size_limit)
{
    static const struct alb_http_field f[] = {F("Host", "a.example"), F("X-Forwarded-For", "1.2.3.4"),
                                              F("Via", "1.0 x"), F("Accept", "*/*")};
    struct alb_fwd_request rq = origin_req(f, 4);
    struct alb_fwd_opts o = base_opts();
    o.framing = ALB_FWD_BODY_LENGTH;
    o.content_length = 18446744073709551615ull;
    char *out;
    size_t full;
    MP_CHECK_EQ_INT(build(&rq, &o, 4096, &out, &full), ALB_HDR_OK);
    MP_CHECK_CONTAINS(out, "Content-Length: 18446744073709551615\r\n");
    free(out);
    for (size_t cap = 0; cap < full; cap++) {
        size_t len;
        MP_CHECK_EQ_INT(build(&rq, &o, cap, &out, &len), ALB_HDR_E_NOSPACE);
        free(out);
    }
    size_t len;
    MP_CHECK_EQ_INT(build(&rq, &o, full, &out, &len), ALB_HDR_OK);
    MP_CHECK_EQ_INT(len, full);
    free(out);
    o.via_name = NULL; /* existing Via only: same boundary behaviour */
    MP_CHECK_EQ_INT(build(&rq, &o, 4096, &out, &full), ALB_HDR_OK);
    free(out);
    for (size_t cap = 0; cap < full; cap++) {
        MP_CHECK_EQ_INT(build(&rq, &o, cap, &out, &len), ALB_HDR_E_NOSPACE);
        free(out);
    }
}

MP_TEST(test_invalid_injected_values)
{
    static const struct alb_http_field f[] = {F("Host", "a.example")};
    struct alb_fwd_request rq = origin_req(f, 1);
    struct alb_fwd_opts o = base_opts();
    char *out;
    size_t len;
    static const char *const bad[] = {"", "1.2.3.4\r\nX: y", "a b", "a,b", "\x7f"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        o = base_opts();
        o.client_addr = bad[i];
        MP_CHECK_EQ_INT(build(&rq, &o, 4096, &out, &len), ALB_HDR_E_INVALID);
        free(out);
        o = base_opts();
        o.via_name = bad[i];
        MP_CHECK_EQ_INT(build(&rq, &o, 4096, &out, &len), ALB_HDR_E_INVALID);
        free(out);
        o = base_opts();
        o.upstream_host = bad[i];
        MP_CHECK_EQ_INT(build(&rq, &o, 4096, &out, &len), ALB_HDR_E_INVALID);
        free(out);
    }
    o = base_opts();
    o.client_addr = NULL;
    MP_CHECK_EQ_INT(build(&rq, &o, 4096, &out, &len), ALB_HDR_E_INVALID);
    free(out);
    /* request parts that would split the head are refused too */
    o = base_opts();
    static const struct alb_http_field inj[][2] = {
        {F("Host", "a.example"), F("X", "a\r\nEvil: 1")},
        {F("Host", "a.example"), F("X\r\nEvil", "1")},
        {F("Host", "a.example"), F("X:Y", "1")},
        {F("Host", "a.example"), F("", "1")},
    };
    for (size_t i = 0; i < sizeof(inj) / sizeof(inj[0]); i++) {
        rq = origin_req(inj[i], 2);
        MP_CHECK_EQ_INT(build(&rq, &o, 4096, &out, &len), ALB_HDR_E_INVALID);
        free(out);
    }
    rq = origin_req(f, 1);
    rq.target = "/a b";
    rq.target_len = 4;
    MP_CHECK_EQ_INT(build(&rq, &o, 4096, &out, &len), ALB_HDR_E_INVALID);
    free(out);
    /* a tab inside a value is legal and kept */
    static const struct alb_http_field tab[] = {F("Host", "a.example"), F("X", "a\tb")};
    rq = origin_req(tab, 2);
    MP_CHECK_EQ_INT(build(&rq, &o, 4096, &out, &len), ALB_HDR_OK);
    MP_CHECK(len > 0 && memmem(out, len, "X: a\tb\r\n", 8) != NULL);
    free(out);
}

MP_TEST(test_list_has)
{
    MP_CHECK(alb_http_list_has("a, B ,c", 7, "b", 1));
    MP_CHECK(alb_http_list_has(",,trailers;q=1", 14, "trailers", 8));
    MP_CHECK(!alb_http_list_has("xtrailers", 9, "trailers", 8));
    MP_CHECK(!alb_http_list_has("", 0, "a", 1));
    MP_CHECK(alb_http_list_has(" \tkeep-alive\t", 13, "keep-alive", 10));
}

/* Parser in front of the rewrite: collect fields as the proxy would, then build. */
struct collect {
    char store[2048];
    size_t used;
    struct alb_http_field f[16];
    size_t n;
    char method[16], target[256];
    size_t mlen, tlen;
};

static const char *keep(struct collect *c, const char *s, size_t n)
{
    char *d = c->store + c->used;
    memcpy(d, s, n);
    c->used += n;
    return d;
}

static int c_start(alb_http_parser *p, const struct alb_http_start_line *sl)
{
    struct collect *c = p->user;
    memcpy(c->method, sl->method.p, sl->method.len);
    c->mlen = sl->method.len;
    memcpy(c->target, sl->target.p, sl->target.len);
    c->tlen = sl->target.len;
    return 0;
}

static int c_header(alb_http_parser *p, const char *n, size_t nl, const char *v, size_t vl)
{
    struct collect *c = p->user;
    if (c->n == 16 || c->used + nl + vl > sizeof(c->store)) return -1;
    struct alb_http_field *f = &c->f[c->n++];
    f->name = keep(c, n, nl);
    f->name_len = nl;
    f->value = keep(c, v, vl);
    f->value_len = vl;
    return 0;
}

MP_TEST(test_with_parser)
{
    static const struct alb_http_callbacks cbs = {.on_start_line = c_start,
                                                  .on_header = c_header};
    struct collect c;
    memset(&c, 0, sizeof(c));
    alb_http_parser p;
    alb_http_parser_init(&p, ALB_HTTP_REQUEST, NULL, &cbs, &c);
    const char *m = "POST http://api.example/v1 HTTP/1.1\r\nHost: other.example\r\n"
                    "Connection: close\r\nTransfer-Encoding: chunked\r\n"
                    "X-Forwarded-For: 192.0.2.1\r\nContent-Type: text/plain\r\n\r\n";
    size_t used;
    MP_CHECK_EQ_INT(alb_http_parser_execute(&p, m, strlen(m), &used), ALB_HTTP_OK);
    MP_CHECK(p.msg.host_differs);
    struct alb_fwd_request rq = {c.method, c.mlen, c.target, c.tlen, p.msg.form, c.f, c.n,
                                 p.msg.authority, p.msg.authority_len, p.msg.upgrade};
    struct alb_fwd_opts o = base_opts();
    o.client_tls = 1;
    o.framing = ALB_FWD_BODY_CHUNKED;
    EXPECT_HEAD(&rq, &o,
                "POST /v1 HTTP/1.1\r\nHost: api.example\r\nContent-Type: text/plain\r\n"
                "Transfer-Encoding: chunked\r\nX-Forwarded-For: 192.0.2.1, 10.0.0.1\r\n"
                "X-Forwarded-Proto: https\r\nX-Forwarded-Host: api.example\r\n"
                "Via: 1.1 alb\r\n\r\n");
}

MP_TEST_MAIN(MP_CASE(test_basic), MP_CASE(test_hop_by_hop), MP_CASE(test_forwarded_append),
             MP_CASE(test_target_forms), MP_CASE(test_upgrade_passthrough),
             MP_CASE(test_size_limit), MP_CASE(test_invalid_injected_values),
             MP_CASE(test_list_has), MP_CASE(test_with_parser))
