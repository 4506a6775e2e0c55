/*
 * test_alb_http_parser.c — unit tests for plugins/alb/alb_http_parser.c. Every parse
 * records its callbacks as a text log; each case checks the log (or the error code),
 * and most cases are then re-run split at every byte position and fed one byte at a
 * time, requiring the identical log, return code and error — that is what proves the
 * parser resumes across chunk boundaries. Each fed piece is a heap copy of exactly
 * its bytes, so under AddressSanitizer any read past a piece is caught.
 */
#include "alb_http_parser.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mp_test.h"

/* ------------------------------------------------------------------ recorder */

struct rec {
    char *log;
    size_t len, cap;
    int in_body;
    int pause_on_headers;
    int pause_on_message;
};

static void rec_put(struct rec *r, const char *s, size_t n)
{
    if (r->len + n + 1 > r->cap) {
        size_t nc = r->cap ? r->cap : 256;
        while (r->len + n + 1 > nc) nc *= 2;
        r->log = realloc(r->log, nc);
        if (!r->log) abort();
        r->cap = nc;
    }
    memcpy(r->log + r->len, s, n);
    r->len += n;
    r->log[r->len] = '\0';
}

static void rec_printf(struct rec *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void rec_printf(struct rec *r, const char *fmt, ...)
{
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0) abort();
    rec_put(r, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* Body bytes from consecutive on_body calls merge into one "D:" entry, so the log does
 * not depend on how the input was split. */
static struct rec *R(alb_http_parser *p)
{
    struct rec *r = p->user;
    if (r->in_body) {
        rec_put(r, "|", 1);
        r->in_body = 0;
    }
    return r;
}

static int cb_begin(alb_http_parser *p)
{
    rec_put(R(p), "B|", 2);
    return 0;
}

static int cb_start(alb_http_parser *p, const struct alb_http_start_line *sl)
{
    struct rec *r = R(p);
    if (p->type == ALB_HTTP_REQUEST)
        rec_printf(r, "R:%.*s %.*s %d f%d|", (int)sl->method.len, sl->method.p,
                   (int)sl->target.len, sl->target.p, sl->version_minor, (int)sl->form);
    else
        rec_printf(r, "S:%d %.*s %d|", sl->status, (int)sl->reason.len, sl->reason.p,
                   sl->version_minor);
    return 0;
}

static int cb_header(alb_http_parser *p, const char *n, size_t nl, const char *v, size_t vl)
{
    rec_printf(R(p), "H:%.*s=%.*s|", (int)nl, n, (int)vl, v);
    return 0;
}

static int cb_trailer(alb_http_parser *p, const char *n, size_t nl, const char *v, size_t vl)
{
    rec_printf(R(p), "T:%.*s=%.*s|", (int)nl, n, (int)vl, v);
    return 0;
}

static int cb_headers_done(alb_http_parser *p)
{
    struct rec *r = R(p);
    const struct alb_http_msg *m = &p->msg;
    rec_printf(r, "C:fr%d cl%llu ka%d up%d ws%d ex%d tu%d hd%d au=%s|", (int)m->framing,
               (unsigned long long)m->content_length, m->keep_alive, m->upgrade, m->websocket,
               m->expect_continue, m->tunnel, m->host_differs, m->authority);
    return r->pause_on_headers ? ALB_HTTP_CB_PAUSE : 0;
}

static int cb_chunk(alb_http_parser *p, uint64_t size)
{
    rec_printf(R(p), "K:%llu|", (unsigned long long)size);
    return 0;
}

static int cb_body(alb_http_parser *p, const char *d, size_t n)
{
    struct rec *r = p->user;
    if (!r->in_body) rec_put(r, "D:", 2);
    r->in_body = 1;
    rec_put(r, d, n);
    return 0;
}

static int cb_done(alb_http_parser *p)
{
    struct rec *r = R(p);
    rec_put(r, "M|", 2);
    return r->pause_on_message ? ALB_HTTP_CB_PAUSE : 0;
}

static const struct alb_http_callbacks CBS = {
    .on_message_begin = cb_begin,
    .on_start_line = cb_start,
    .on_header = cb_header,
    .on_headers_complete = cb_headers_done,
    .on_chunk_header = cb_chunk,
    .on_body = cb_body,
    .on_trailer = cb_trailer,
    .on_message_complete = cb_done,
};

/* ------------------------------------------------------------------ driver */

struct opts {
    enum alb_http_type type;
    enum alb_http_method req_method;
    const struct alb_http_limits *limits;
    int eof; /* call finish() after the input */
};

struct result {
    char *log;
    enum alb_http_rc rc;
    enum alb_http_err err;
    size_t consumed;
    int pauses;
};

static void result_free(struct result *r) { free(r->log); }

/* Feeds msg in pieces ending at cuts[0..ncuts) then at n. PAUSED is resumed at once;
 * UPGRADE, CLOSED and ERROR stop feeding. */
static struct result run_cuts(const struct opts *o, const char *msg, size_t n,
                              const size_t *cuts, size_t ncuts)
{
    struct rec rec;
    memset(&rec, 0, sizeof(rec));
    rec_put(&rec, "", 0);
    alb_http_parser p;
    alb_http_parser_init(&p, o->type, o->limits, &CBS, &rec);
    alb_http_parser_set_request_method(&p, o->req_method ? o->req_method : ALB_HTTP_M_GET);
    struct result res = {NULL, ALB_HTTP_OK, ALB_HTTP_E_NONE, 0, 0};
    size_t start = 0;
    for (size_t c = 0; c <= ncuts && res.rc == ALB_HTTP_OK; c++) {
        size_t end = c < ncuts ? cuts[c] : n;
        size_t plen = end - start;
        char *piece = malloc(plen ? plen : 1);
        memcpy(piece, msg + start, plen);
        size_t off = 0;
        for (;;) {
            size_t used = 0;
            res.rc = alb_http_parser_execute(&p, piece + off, plen - off, &used);
            off += used;
            res.consumed += used;
            if (res.rc == ALB_HTTP_PAUSED) {
                res.pauses++;
                res.rc = ALB_HTTP_OK;
                if (off == plen) break;
                continue;
            }
            break;
        }
        free(piece);
        start = end;
    }
    if (o->eof && res.rc == ALB_HTTP_OK) res.rc = alb_http_parser_finish(&p);
    R(&p);
    res.err = alb_http_parser_error(&p);
    res.log = rec.log;
    return res;
}

static struct result run1(const struct opts *o, const char *msg, size_t n)
{
    return run_cuts(o, msg, n, NULL, 0);
}

static int same(const struct result *a, const struct result *b)
{
    if (strcmp(a->log, b->log) != 0 || a->rc != b->rc || a->err != b->err) return 0;
    if (a->rc != ALB_HTTP_ERROR && a->consumed != b->consumed) return 0;
    return 1;
}

/* Every 2-way split and byte-at-a-time must match the one-shot parse. */
static int splits_agree(const struct opts *o, const char *msg, size_t n)
{
    struct result whole = run1(o, msg, n);
    int ok = 1;
    for (size_t cut = 0; cut <= n && ok; cut++) {
        struct result r = run_cuts(o, msg, n, &cut, 1);
        if (!same(&whole, &r)) {
            fprintf(stderr, "split at %zu differs:\n  whole: %s (rc %d err %s)\n  split: %s "
                            "(rc %d err %s)\n",
                    cut, whole.log, whole.rc, alb_http_err_name(whole.err), r.log, r.rc,
                    alb_http_err_name(r.err));
            ok = 0;
        }
        result_free(&r);
    }
    size_t *cuts = calloc(n + 1, sizeof(*cuts));
    for (size_t i = 0; i < n; i++) cuts[i] = i + 1;
    struct result r = run_cuts(o, msg, n, cuts, n ? n - 1 : 0);
    if (ok && !same(&whole, &r)) {
        fprintf(stderr, "bytewise differs:\n  whole: %s\n  bytes: %s\n", whole.log, r.log);
        ok = 0;
    }
    free(cuts);
    result_free(&r);
    result_free(&whole);
    return ok;
}

static const struct opts REQ = {ALB_HTTP_REQUEST, ALB_HTTP_M_GET, NULL, 0};

/* Parse, compare log and rc, then require split independence. */
#define EXPECT_LOG(o, msg, rc_, log_)                                                   \
    do {                                                                                \
        struct result r_ = run1((o), (msg), strlen(msg));                               \
        MP_CHECK_STR(r_.log, (log_));                                                   \
        MP_CHECK_EQ_INT(r_.rc, (rc_));                                                  \
        if (r_.rc == ALB_HTTP_ERROR)                                                    \
            fprintf(stderr, "  unexpected error %s\n", alb_http_err_name(r_.err));      \
        result_free(&r_);                                                               \
        MP_CHECK(splits_agree((o), (msg), strlen(msg)));                                \
    } while (0)

#define EXPECT_ERR_N(o, msg, n, err_)                                                   \
    do {                                                                                \
        struct result r_ = run1((o), (msg), (n));                                       \
        MP_CHECK_EQ_INT(r_.rc, ALB_HTTP_ERROR);                                         \
        if (r_.err != (err_))                                                           \
            fprintf(stderr, "  got %s want %s\n", alb_http_err_name(r_.err),            \
                    alb_http_err_name(err_));                                           \
        MP_CHECK_EQ_INT(r_.err, (err_));                                                \
        result_free(&r_);                                                               \
        MP_CHECK(splits_agree((o), (msg), (n)));                                        \
    } while (0)

#define EXPECT_ERR(o, msg, err_) EXPECT_ERR_N(o, msg, strlen(msg), err_)

#define HOST "Host: a.example\r\n"
#define CDONE(fr, cl, ka) "C:fr" #fr " cl" #cl " ka" #ka

/* ------------------------------------------------------------------ accepted forms */

MP_TEST(test_origin_form)
{
    EXPECT_LOG(&REQ, "GET /a/b?c=d&e HTTP/1.1\r\nHost: a.example\r\nAccept: */*\r\n\r\n",
               ALB_HTTP_OK,
               "B|R:GET /a/b?c=d&e 1 f1|H:Host=a.example|H:Accept=*/*|"
               "C:fr0 cl0 ka1 up0 ws0 ex0 tu0 hd0 au=a.example|M|");
}

MP_TEST(test_absolute_form)
{
    EXPECT_LOG(&REQ, "GET http://a.example:8080/x?y HTTP/1.1\r\nHost: a.example:8080\r\n\r\n",
               ALB_HTTP_OK,
               "B|R:GET http://a.example:8080/x?y 1 f2|H:Host=a.example:8080|"
               "C:fr0 cl0 ka1 up0 ws0 ex0 tu0 hd0 au=a.example:8080|M|");
    /* Host disagrees: the target wins, the disagreement is flagged */
    EXPECT_LOG(&REQ, "GET HTTPS://b.example?q HTTP/1.1\r\nHost: evil.example\r\n\r\n",
               ALB_HTTP_OK,
               "B|R:GET HTTPS://b.example?q 1 f2|H:Host=evil.example|"
               "C:fr0 cl0 ka1 up0 ws0 ex0 tu0 hd1 au=b.example|M|");
    EXPECT_LOG(&REQ, "GET http://[::1]:80/ HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", ALB_HTTP_OK,
               "B|R:GET http://[::1]:80/ 1 f2|H:Host=[::1]:80|"
               "C:fr0 cl0 ka1 up0 ws0 ex0 tu0 hd0 au=[::1]:80|M|");
}

MP_TEST(test_authority_and_asterisk_form)
{
    EXPECT_LOG(&REQ, "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\nTLSBYTES",
               ALB_HTTP_UPGRADE,
               "B|R:CONNECT a.example:443 1 f3|H:Host=a.example:443|"
               "C:fr0 cl0 ka1 up0 ws0 ex0 tu1 hd0 au=a.example:443|M|");
    struct result r = run1(&REQ, "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\nX",
                           56);
    MP_CHECK_EQ_INT(r.consumed, 55); /* the tunnel bytes are left to the caller */
    result_free(&r);
    EXPECT_LOG(&REQ, "OPTIONS * HTTP/1.1\r\n" HOST "\r\n", ALB_HTTP_OK,
               "B|R:OPTIONS * 1 f4|H:Host=a.example|"
               "C:fr0 cl0 ka1 up0 ws0 ex0 tu0 hd0 au=a.example|M|");
}

MP_TEST(test_http10)
{
    /* no Host needed, not persistent by default: nothing after it is parsed */
    EXPECT_LOG(&REQ, "GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n", ALB_HTTP_CLOSED,
               "B|R:GET / 0 f1|C:fr0 cl0 ka0 up0 ws0 ex0 tu0 hd0 au=|M|");
    EXPECT_LOG(&REQ, "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", ALB_HTTP_OK,
               "B|R:GET / 0 f1|H:Connection=Keep-Alive|"
               "C:fr0 cl0 ka1 up0 ws0 ex0 tu0 hd0 au=|M|");
    /* Expect and Upgrade are ignored in HTTP/1.0 */
    EXPECT_LOG(&REQ, "POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
               ALB_HTTP_CLOSED,
               "B|R:POST / 0 f1|H:Expect=100-continue|H:Content-Length=1|"
               "C:fr1 cl1 ka0 up0 ws0 ex0 tu0 hd0 au=|D:x|M|");
}

MP_TEST(test_connection_close)
{
    const char *m = "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\n";
    EXPECT_LOG(&REQ, m, ALB_HTTP_CLOSED,
               "B|R:GET / 1 f1|H:Host=a|H:Connection=close|"
               "C:fr0 cl0 ka0 up0 ws0 ex0 tu0 hd0 au=a|M|");
    struct result r = run1(&REQ, m, strlen(m));
    MP_CHECK_EQ_INT(r.consumed, 46);
    result_free(&r);
}

MP_TEST(test_ows_and_obs_text)
{
    EXPECT_LOG(&REQ, "GET / HTTP/1.1\r\nHost:a\r\nX-A: \t v a l \t \r\nX-B:\r\nX-C: \xc3\xa9\r\n\r\n",
               ALB_HTTP_OK,
               "B|R:GET / 1 f1|H:Host=a|H:X-A=v a l|H:X-B=|H:X-C=\xc3\xa9|"
               "C:fr0 cl0 ka1 up0 ws0 ex0 tu0 hd0 au=a|M|");
}

MP_TEST(test_leading_empty_lines)
{
    EXPECT_LOG(&REQ, "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", ALB_HTTP_OK,
               "B|R:GET / 1 f1|H:Host=a|C:fr0 cl0 ka1 up0 ws0 ex0 tu0 hd0 au=a|M|");
    EXPECT_ERR(&REQ, "\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
               ALB_HTTP_E_BAD_REQUEST_LINE);
}

MP_TEST(test_content_length_body)
{
    EXPECT_LOG(&REQ, "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
               ALB_HTTP_OK,
               "B|R:POST /p 1 f1|H:Host=a|H:Content-Length=5|"
               "C:fr1 cl5 ka1 up0 ws0 ex0 tu0 hd0 au=a|D:hello|M|");
    /* identical duplicates and an identical list are one length (RFC 9112 6.3) */
    EXPECT_LOG(&REQ,
               "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 003\r\n"
               "Content-Length: 3 , 3\r\n\r\nabc",
               ALB_HTTP_OK,
               "B|R:POST / 1 f1|H:Host=a|H:Content-Length=3|H:Content-Length=003|"
               "H:Content-Length=3 , 3|C:fr1 cl3 ka1 up0 ws0 ex0 tu0 hd0 au=a|D:abc|M|");
    EXPECT_LOG(&REQ, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", ALB_HTTP_OK,
               "B|R:POST / 1 f1|H:Host=a|H:Content-Length=0|"
               "C:fr0 cl0 ka1 up0 ws0 ex0 tu0 hd0 au=a|M|");
}

MP_TEST(test_chunked_ext_trailers)
{
    EXPECT_LOG(&REQ,
               "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
               "5;name=val;q=\"a \\\" b\" ; x\r\nhello\r\n"
               "1A\r\nabcdefghijklmnopqrstuvwxyz\r\n"
               "0;last\r\nX-Sum: 42\r\nX-T: t\r\n\r\n",
               ALB_HTTP_OK,
               "B|R:POST / 1 f1|H:Host=a|H:Transfer-Encoding=chunked|"
               "C:fr2 cl0 ka1 up0 ws0 ex0 tu0 hd0 au=a|K:5|D:hello|K:26|"
               "D:abcdefghijklmnopqrstuvwxyz|K:0|T:X-Sum=42|T:X-T=t|M|");
    /* OWS around chunked, empty list elements, case-insensitive */
    EXPECT_LOG(&REQ,
               "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  , CHUNKED \t\r\n\r\n"
               "0\r\n\r\n",
               ALB_HTTP_OK,
               "B|R:POST / 1 f1|H:Host=a|H:Transfer-Encoding=, CHUNKED|"
               "C:fr2 cl0 ka1 up0 ws0 ex0 tu0 hd0 au=a|K:0|M|");
}

MP_TEST(test_expect_continue)
{
    EXPECT_LOG(&REQ,
               "PUT /u HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\nok",
               ALB_HTTP_OK,
               "B|R:PUT /u 1 f1|H:Host=a|H:Expect=100-Continue|H:Content-Length=2|"
               "C:fr1 cl2 ka1 up0 ws0 ex1 tu0 hd0 au=a|D:ok|M|");
    /* pausing at end of headers lets the proxy decide to send 100 Continue */
    struct rec rec;
    memset(&rec, 0, sizeof(rec));
    rec.pause_on_headers = 1;
    alb_http_parser p;
    alb_http_parser_init(&p, ALB_HTTP_REQUEST, NULL, &CBS, &rec);
    const char *m = "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok";
    size_t used = 0;
    MP_CHECK_EQ_INT(alb_http_parser_execute(&p, m, strlen(m), &used), ALB_HTTP_PAUSED);
    MP_CHECK_EQ_INT(used, strlen(m) - 2);
    MP_CHECK(p.msg.expect_continue);
    size_t used2 = 0;
    MP_CHECK_EQ_INT(alb_http_parser_execute(&p, m + used, 2, &used2), ALB_HTTP_OK);
    MP_CHECK_EQ_INT(used2, 2);
    R(&p);
    MP_CHECK_CONTAINS(rec.log, "D:ok|M|");
    free(rec.log);
}

MP_TEST(test_upgrade_websocket)
{
    const char *m = "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
                    "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n";
    EXPECT_LOG(&REQ, m, ALB_HTTP_UPGRADE,
               "B|R:GET /ws 1 f1|H:Host=a|H:Connection=keep-alive, Upgrade|"
               "H:Upgrade=websocket|H:Sec-WebSocket-Version=13|"
               "C:fr0 cl0 ka1 up1 ws1 ex0 tu1 hd0 au=a|M|");
    /* Upgrade without the Connection option is not an upgrade */
    EXPECT_LOG(&REQ, "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", ALB_HTTP_OK,
               "B|R:GET / 1 f1|H:Host=a|H:Upgrade=websocket|"
               "C:fr0 cl0 ka1 up0 ws0 ex0 tu0 hd0 au=a|M|");
    /* upstream refused the upgrade: parsing continues as HTTP */
    struct rec rec;
    memset(&rec, 0, sizeof(rec));
    alb_http_parser p;
    alb_http_parser_init(&p, ALB_HTTP_REQUEST, NULL, &CBS, &rec);
    char buf[512];
    snprintf(buf, sizeof(buf), "%sGET /next HTTP/1.1\r\nHost: a\r\n\r\n", m);
    size_t used = 0, used2 = 0;
    MP_CHECK_EQ_INT(alb_http_parser_execute(&p, buf, strlen(buf), &used), ALB_HTTP_UPGRADE);
    MP_CHECK_EQ_INT(used, strlen(m));
    alb_http_parser_resume_http(&p);
    MP_CHECK_EQ_INT(alb_http_parser_execute(&p, buf + used, strlen(buf) - used, &used2),
                    ALB_HTTP_OK);
    MP_CHECK_EQ_INT(used + used2, strlen(buf));
    MP_CHECK_CONTAINS(rec.log, "R:GET /next 1 f1|");
    free(rec.log);
}

MP_TEST(test_pipelining)
{
    EXPECT_LOG(&REQ,
               "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
               "POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nxyz"
               "POST /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
               "GET /4 HTTP/1.1\r\nHost: a\r\n\r\n",
               ALB_HTTP_OK,
               "B|R:GET /1 1 f1|H:Host=a|C:fr0 cl0 ka1 up0 ws0 ex0 tu0 hd0 au=a|M|"
               "B|R:POST /2 1 f1|H:Host=a|H:Content-Length=3|C:fr1 cl3 ka1 up0 ws0 ex0 tu0 hd0 au=a|D:xyz|M|"
               "B|R:POST /3 1 f1|H:Host=a|H:Transfer-Encoding=chunked|C:fr2 cl0 ka1 up0 ws0 ex0 tu0 hd0 au=a|K:2|D:hi|K:0|M|"
               "B|R:GET /4 1 f1|H:Host=a|C:fr0 cl0 ka1 up0 ws0 ex0 tu0 hd0 au=a|M|");
    /* pausing after each message hands them to the caller one at a time */
    struct rec rec;
    memset(&rec, 0, sizeof(rec));
    rec.pause_on_message = 1;
    alb_http_parser p;
    alb_http_parser_init(&p, ALB_HTTP_REQUEST, NULL, &CBS, &rec);
    const char *m = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n";
    size_t used = 0;
    MP_CHECK_EQ_INT(alb_http_parser_execute(&p, m, strlen(m), &used), ALB_HTTP_PAUSED);
    MP_CHECK_EQ_INT(used, 28);
    free(rec.log);
}

/* ------------------------------------------------------------------ smuggling */

MP_TEST(test_cl_te)
{
    EXPECT_ERR(&REQ, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", ALB_HTTP_E_CL_AND_TE);
    EXPECT_ERR(&REQ, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                     "Content-Length: 4\r\n\r\n0\r\n\r\n", ALB_HTTP_E_CL_AND_TE);
}

MP_TEST(test_cl_conflict_invalid)
{
    EXPECT_ERR(&REQ, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
               ALB_HTTP_E_CL_CONFLICT);
    EXPECT_ERR(&REQ, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 5\r\n\r\n",
               ALB_HTTP_E_CL_CONFLICT);
    static const char *const bad[] = {"-1", "+5", "0x10", "1 2", "", "5,", ",5", "1e3",
                                      "1234567890123456789", "4;", "\"4\""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char m[256];
        snprintf(m, sizeof(m), "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %s\r\n\r\n", bad[i]);
        EXPECT_ERR(&REQ, m, ALB_HTTP_E_CL_INVALID);
    }
    /* 18 digits is the longest accepted */
    const char *m18 = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 123456789012345678\r\n\r\n";
    struct result r = run1(&REQ, m18, strlen(m18));
    MP_CHECK_EQ_INT(r.rc, ALB_HTTP_OK);
    result_free(&r);
}

MP_TEST(test_te_variants)
{
    static const struct {
        const char *te;
        enum alb_http_err err;
    } cases[] = {
        {"chunked, identity", ALB_HTTP_E_TE_CHUNKED_NOT_LAST},
        {"chunked, gzip", ALB_HTTP_E_TE_CHUNKED_NOT_LAST},
        {"xchunked", ALB_HTTP_E_TE_NOT_CHUNKED},
        {"chunkedx", ALB_HTTP_E_TE_NOT_CHUNKED},
        {"identity", ALB_HTTP_E_TE_NOT_CHUNKED},
        {"gzip, chunked", ALB_HTTP_E_TE_UNSUPPORTED},
        {"chunked, chunked", ALB_HTTP_E_TE_CHUNKED_TWICE},
        {"chunked;x=1", ALB_HTTP_E_TE_INVALID},
        {"\"chunked\"", ALB_HTTP_E_TE_INVALID},
        {"chunked\x0b", ALB_HTTP_E_HEADER_VALUE_INVALID},
        {"", ALB_HTTP_E_TE_INVALID},
        {" , ", ALB_HTTP_E_TE_INVALID},
        {"chun ked", ALB_HTTP_E_TE_INVALID},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char m[256];
        snprintf(m, sizeof(m), "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: %s\r\n\r\n0\r\n\r\n",
                 cases[i].te);
        EXPECT_ERR(&REQ, m, cases[i].err);
    }
    EXPECT_ERR(&REQ, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", ALB_HTTP_E_TE_CHUNKED_TWICE);
    EXPECT_ERR(&REQ, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                     "Transfer-Encoding: identity\r\n\r\n0\r\n\r\n", ALB_HTTP_E_TE_CHUNKED_NOT_LAST);
    EXPECT_ERR(&REQ, "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
               ALB_HTTP_E_TE_HTTP10);
    /* leading whitespace: on the line it is obs-fold, inside the value it is OWS */
    EXPECT_ERR(&REQ, "POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: a\r\n\r\n",
               ALB_HTTP_E_OBS_FOLD);
    EXPECT_ERR(&REQ, "POST / HTTP/1.1\r\nHost: a\r\n Transfer-Encoding: chunked\r\n\r\n",
               ALB_HTTP_E_OBS_FOLD);
    EXPECT_ERR(&REQ, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
               ALB_HTTP_E_HEADER_WS_BEFORE_COLON);
    EXPECT_ERR(&REQ, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n",
               ALB_HTTP_E_HEADER_WS_BEFORE_COLON);
    EXPECT_LOG(&REQ, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\t chunked\r\n\r\n0\r\n\r\n",
               ALB_HTTP_OK,
               "B|R:POST / 1 f1|H:Host=a|H:Transfer-Encoding=chunked|"
               "C:fr2 cl0 ka1 up0 ws0 ex0 tu0 hd0 au=a|K:0|M|");
}

MP_TEST(test_line_endings_and_chars)
{
    EXPECT_ERR(&REQ, "GET / HTTP/1.1\nHost: a\n\n", ALB_HTTP_E_BARE_LF);
    EXPECT_ERR(&REQ, "GET / HTTP/1.1\r\nHost: a\n\r\n", ALB_HTTP_E_BARE_LF);
    EXPECT_ERR(&REQ, "GET / HTTP/1.1\r\nHost: a\r\n\n", ALB_HTTP_E_BARE_LF);
    EXPECT_ERR(&REQ, "\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", ALB_HTTP_E_BARE_LF);
    EXPECT_ERR(&REQ, "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", ALB_HTTP_E_BARE_CR);
    EXPECT_ERR(&REQ, "GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", ALB_HTTP_E_BARE_CR);
    EXPECT_ERR(&REQ, "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", ALB_HTTP_E_OBS_FOLD);
    EXPECT_ERR(&REQ, "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n", ALB_HTTP_E_OBS_FOLD);
    static const char nulv[] = "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n";
    static const char nuln[] = "GET / HTTP/1.1\r\nHost: a\r\nX\0: ab\r\n\r\n";
    EXPECT_ERR_N(&REQ, nulv, sizeof(nulv) - 1, ALB_HTTP_E_HEADER_VALUE_INVALID);
    EXPECT_ERR_N(&REQ, nuln, sizeof(nuln) - 1, ALB_HTTP_E_HEADER_NAME_INVALID);
    EXPECT_ERR(&REQ, "GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", ALB_HTTP_E_HEADER_VALUE_INVALID);
    EXPECT_ERR(&REQ, "GET / HTTP/1.1\r\nHost: a\r\nX: a\x01\r\n\r\n", ALB_HTTP_E_HEADER_VALUE_INVALID);
    EXPECT_ERR(&REQ, "GET / HTTP/1.1\r\nHost: a\r\nX-\xc3\xa9: a\r\n\r\n", ALB_HTTP_E_HEADER_NAME_INVALID);
    EXPECT_ERR(&REQ, "GET / HTTP/1.1\r\nHost: a\r\n: a\r\n\r\n", ALB_HTTP_E_HEADER_NAME_INVALID);
    EXPECT_ERR(&REQ, "GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", ALB_HTTP_E_HEADER_NO_COLON);
    EXPECT_ERR(&REQ, "GET / HTTP/1.1\r\nHost: a\r\nX Y: a\r\n\r\n", ALB_HTTP_E_HEADER_NAME_INVALID);
}

MP_TEST(test_host_rules)
{
    EXPECT_ERR(&REQ, "GET / HTTP/1.1\r\n\r\n", ALB_HTTP_E_HOST_MISSING);
    EXPECT_ERR(&REQ, "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", ALB_HTTP_E_HOST_DUPLICATE);
    EXPECT_ERR(&REQ, "GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", ALB_HTTP_E_HOST_DUPLICATE);
    EXPECT_ERR(&REQ, "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", ALB_HTTP_E_HOST_INVALID);
    EXPECT_ERR(&REQ, "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", ALB_HTTP_E_HOST_INVALID);
    EXPECT_ERR(&REQ, "GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n", ALB_HTTP_E_HOST_INVALID);
    EXPECT_ERR(&REQ, "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", ALB_HTTP_E_HOST_INVALID);
    /* empty Host is valid (RFC 9112 3.2) */
    EXPECT_LOG(&REQ, "GET / HTTP/1.1\r\nHost:\r\n\r\n", ALB_HTTP_OK,
               "B|R:GET / 1 f1|H:Host=|C:fr0 cl0 ka1 up0 ws0 ex0 tu0 hd0 au=|M|");
}

MP_TEST(test_request_line_errors)
{
    EXPECT_ERR(&REQ, "GET / HTTP/2.0\r\nHost: a\r\n\r\n", ALB_HTTP_E_BAD_VERSION);
    EXPECT_ERR(&REQ, "GET / HTTP/1.2\r\nHost: a\r\n\r\n", ALB_HTTP_E_BAD_VERSION);
    EXPECT_ERR(&REQ, "GET / http/1.1\r\nHost: a\r\n\r\n", ALB_HTTP_E_BAD_REQUEST_LINE);
    EXPECT_ERR(&REQ, "GET / HTTP/1.1 \r\nHost: a\r\n\r\n", ALB_HTTP_E_BAD_REQUEST_LINE);
    EXPECT_ERR(&REQ, "GET /\r\n\r\n", ALB_HTTP_E_BAD_REQUEST_LINE);
    EXPECT_ERR(&REQ, "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", ALB_HTTP_E_BAD_TARGET);
    EXPECT_ERR(&REQ, " GET / HTTP/1.1\r\nHost: a\r\n\r\n", ALB_HTTP_E_BAD_METHOD);
    EXPECT_ERR(&REQ, "G(T / HTTP/1.1\r\nHost: a\r\n\r\n", ALB_HTTP_E_BAD_METHOD);
    EXPECT_ERR(&REQ, "GET * HTTP/1.1\r\nHost: a\r\n\r\n", ALB_HTTP_E_BAD_TARGET);
    EXPECT_ERR(&REQ, "GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", ALB_HTTP_E_BAD_TARGET);
    EXPECT_ERR(&REQ, "GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", ALB_HTTP_E_BAD_TARGET);
    EXPECT_ERR(&REQ, "GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", ALB_HTTP_E_BAD_TARGET);
    EXPECT_ERR(&REQ, "GET http://u:p@a/ HTTP/1.1\r\nHost: a\r\n\r\n", ALB_HTTP_E_BAD_TARGET);
    EXPECT_ERR(&REQ, "GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", ALB_HTTP_E_BAD_TARGET);
    EXPECT_ERR(&REQ, "CONNECT a.example HTTP/1.1\r\nHost: a\r\n\r\n", ALB_HTTP_E_BAD_TARGET);
    EXPECT_ERR(&REQ, "CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n", ALB_HTTP_E_BAD_TARGET);
    EXPECT_ERR(&REQ, "CONNECT a:443 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx",
               ALB_HTTP_E_CONNECT_BODY);
}

MP_TEST(test_chunk_errors)
{
#define CH "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    EXPECT_ERR(&REQ, CH "FFFFFFFFFFFFFFFFF\r\n", ALB_HTTP_E_CHUNK_SIZE_TOO_LARGE);
    EXPECT_ERR(&REQ, CH "00000000000000001\r\nx\r\n0\r\n\r\n", ALB_HTTP_E_CHUNK_SIZE_TOO_LARGE);
    EXPECT_ERR(&REQ, CH "FFFFFFFFFFFFFFFF\r\n", ALB_HTTP_E_CHUNK_SIZE_TOO_LARGE);
    EXPECT_ERR(&REQ, CH "-1\r\n", ALB_HTTP_E_CHUNK_SIZE_INVALID);
    EXPECT_ERR(&REQ, CH "\r\n", ALB_HTTP_E_CHUNK_SIZE_INVALID);
    EXPECT_ERR(&REQ, CH "0x5\r\n", ALB_HTTP_E_CHUNK_SIZE_INVALID);
    EXPECT_ERR(&REQ, CH "5 \r\nhello\r\n0\r\n\r\n", ALB_HTTP_E_CHUNK_SIZE_INVALID);
    EXPECT_ERR(&REQ, CH "5;\r\nhello\r\n0\r\n\r\n", ALB_HTTP_E_CHUNK_EXT_INVALID);
    EXPECT_ERR(&REQ, CH "5;a=\"x\r\nhello\r\n0\r\n\r\n", ALB_HTTP_E_CHUNK_EXT_INVALID);
    EXPECT_ERR(&REQ, CH "5;a=b c\r\nhello\r\n0\r\n\r\n", ALB_HTTP_E_CHUNK_EXT_INVALID);
    EXPECT_ERR(&REQ, CH "5\nhello\r\n0\r\n\r\n", ALB_HTTP_E_BARE_LF);
    EXPECT_ERR(&REQ, CH "5\r\nhelloX\r\n0\r\n\r\n", ALB_HTTP_E_CHUNK_DATA_CRLF);
    EXPECT_ERR(&REQ, CH "5\r\nhello\n0\r\n\r\n", ALB_HTTP_E_CHUNK_DATA_CRLF);
    EXPECT_ERR(&REQ, CH "0\r\nX : y\r\n\r\n", ALB_HTTP_E_HEADER_WS_BEFORE_COLON);
    EXPECT_ERR(&REQ, CH "0\r\n\n", ALB_HTTP_E_BARE_LF);
    /* extensions are bounded by max_chunk_line */
    struct alb_http_limits l;
    alb_http_limits_default(&l);
    l.max_chunk_line = 10;
    struct opts o = {ALB_HTTP_REQUEST, ALB_HTTP_M_GET, &l, 0};
    EXPECT_LOG(&o, CH "1;abcdefgh\r\nx\r\n0\r\n\r\n", ALB_HTTP_OK,
               "B|R:POST / 1 f1|H:Host=a|H:Transfer-Encoding=chunked|"
               "C:fr2 cl0 ka1 up0 ws0 ex0 tu0 hd0 au=a|K:1|D:x|K:0|M|");
    EXPECT_ERR(&o, CH "1;abcdefghi\r\nx\r\n0\r\n\r\n", ALB_HTTP_E_CHUNK_LINE_TOO_LONG);
#undef CH
}

/* ------------------------------------------------------------------ limits */

static char *make_request(size_t target_len, size_t extra_hdr_value)
{
    /* "GET /aaa HTTP/1.1" with a target of target_len bytes, then Host and an optional
     * X: header with extra_hdr_value bytes of value */
    size_t cap = target_len + extra_hdr_value + 128;
    char *m = malloc(cap);
    size_t n = 0;
    n += (size_t)sprintf(m + n, "GET /");
    memset(m + n, 'a', target_len - 1);
    n += target_len - 1;
    n += (size_t)sprintf(m + n, " HTTP/1.1\r\nHost: a\r\n");
    if (extra_hdr_value) {
        n += (size_t)sprintf(m + n, "X: ");
        memset(m + n, 'v', extra_hdr_value);
        n += extra_hdr_value;
        n += (size_t)sprintf(m + n, "\r\n");
    }
    sprintf(m + n, "\r\n");
    return m;
}

MP_TEST(test_limit_request_line)
{
    /* request line = 4 ("GET ") + target + 9 (" HTTP/1.1") */
    struct alb_http_limits l;
    alb_http_limits_default(&l);
    l.max_start_line = 40;
    struct opts o = {ALB_HTTP_REQUEST, ALB_HTTP_M_GET, &l, 0};
    char *ok = make_request(27, 0), *bad = make_request(28, 0);
    struct result r = run1(&o, ok, strlen(ok));
    MP_CHECK_EQ_INT(r.rc, ALB_HTTP_OK);
    result_free(&r);
    MP_CHECK(splits_agree(&o, ok, strlen(ok)));
    EXPECT_ERR(&o, bad, ALB_HTTP_E_START_LINE_TOO_LONG);
    MP_CHECK_EQ_INT(alb_http_err_status(ALB_HTTP_E_START_LINE_TOO_LONG), 414);
    free(ok);
    free(bad);
    /* defaults: 8192 */
    ok = make_request(8192 - 13, 0);
    bad = make_request(8192 - 12, 0);
    r = run1(&REQ, ok, strlen(ok));
    MP_CHECK_EQ_INT(r.rc, ALB_HTTP_OK);
    result_free(&r);
    r = run1(&REQ, bad, strlen(bad));
    MP_CHECK_EQ_INT(r.err, ALB_HTTP_E_START_LINE_TOO_LONG);
    result_free(&r);
    /* byte-at-a-time near the default limit */
    size_t cuts[64];
    for (size_t i = 0; i < 64; i++) cuts[i] = 8150 + i;
    r = run_cuts(&REQ, bad, strlen(bad), cuts, 64);
    MP_CHECK_EQ_INT(r.err, ALB_HTTP_E_START_LINE_TOO_LONG);
    result_free(&r);
    free(ok);
    free(bad);
}

MP_TEST(test_limit_header_bytes)
{
    /* section = "Host: a\r\n" (9) + "X: " + v + "\r\n" (5+v) + "\r\n" (2) = 16 + v */
    struct alb_http_limits l;
    alb_http_limits_default(&l);
    l.max_header_bytes = 64;
    struct opts o = {ALB_HTTP_REQUEST, ALB_HTTP_M_GET, &l, 0};
    char *ok = make_request(1, 48), *bad = make_request(1, 49);
    struct result r = run1(&o, ok, strlen(ok));
    MP_CHECK_EQ_INT(r.rc, ALB_HTTP_OK);
    result_free(&r);
    MP_CHECK(splits_agree(&o, ok, strlen(ok)));
    EXPECT_ERR(&o, bad, ALB_HTTP_E_HEADERS_TOO_LARGE);
    MP_CHECK_EQ_INT(alb_http_err_status(ALB_HTTP_E_HEADERS_TOO_LARGE), 431);
    free(ok);
    free(bad);
    /* single field line: "X: " + v <= max_field_line */
    alb_http_limits_default(&l);
    l.max_field_line = 30;
    ok = make_request(1, 27);
    bad = make_request(1, 28);
    r = run1(&o, ok, strlen(ok));
    MP_CHECK_EQ_INT(r.rc, ALB_HTTP_OK);
    result_free(&r);
    EXPECT_ERR(&o, bad, ALB_HTTP_E_HEADERS_TOO_LARGE);
    free(ok);
    free(bad);
    /* defaults: 64 KiB section via many 8 KiB-ish lines */
    size_t cap = 70000, n = 0;
    char *m = malloc(cap);
    n += (size_t)sprintf(m, "GET / HTTP/1.1\r\nHost: a\r\n");
    size_t section = 9;
    for (int i = 0; i < 7; i++) { /* 7 lines of 8192 bytes + CRLF */
        n += (size_t)sprintf(m + n, "X%d: ", i);
        memset(m + n, 'v', 8192 - 4);
        n += 8192 - 4;
        n += (size_t)sprintf(m + n, "\r\n");
        section += 8194;
    }
    /* fill to exactly 65536 with one more line, then the final CRLF */
    size_t rest = 65536 - section - 2 - 2; /* minus final CRLF, minus this line's CRLF */
    n += (size_t)sprintf(m + n, "Y: ");
    memset(m + n, 'w', rest - 3);
    n += rest - 3;
    n += (size_t)sprintf(m + n, "\r\n\r\n");
    r = run1(&REQ, m, n);
    MP_CHECK_EQ_INT(r.rc, ALB_HTTP_OK);
    result_free(&r);
    /* one more byte in Y */
    memmove(m + n - 4 + 1, m + n - 4, 4);
    m[n - 4] = 'w';
    r = run1(&REQ, m, n + 1);
    MP_CHECK_EQ_INT(r.err, ALB_HTTP_E_HEADERS_TOO_LARGE);
    result_free(&r);
    free(m);
}

MP_TEST(test_limit_header_count)
{
    struct alb_http_limits l;
    alb_http_limits_default(&l);
    l.max_headers = 3;
    struct opts o = {ALB_HTTP_REQUEST, ALB_HTTP_M_GET, &l, 0};
    const char *m3 = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
    struct result r = run1(&o, m3, strlen(m3));
    MP_CHECK_EQ_INT(r.rc, ALB_HTTP_OK);
    result_free(&r);
    EXPECT_ERR(&o, "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
               ALB_HTTP_E_TOO_MANY_HEADERS);
    /* default 100 */
    char m[4096];
    size_t n = (size_t)sprintf(m, "GET / HTTP/1.1\r\nHost: a\r\n");
    for (int i = 0; i < 99; i++) n += (size_t)sprintf(m + n, "H%d: x\r\n", i);
    sprintf(m + n, "\r\n");
    r = run1(&REQ, m, strlen(m));
    MP_CHECK_EQ_INT(r.rc, ALB_HTTP_OK);
    result_free(&r);
    n += (size_t)sprintf(m + n, "Z: x\r\n\r\n");
    r = run1(&REQ, m, n);
    MP_CHECK_EQ_INT(r.err, ALB_HTTP_E_TOO_MANY_HEADERS);
    MP_CHECK_EQ_INT(alb_http_err_status(r.err), 431);
    result_free(&r);
}

/* ------------------------------------------------------------------ responses */

static struct opts resp(enum alb_http_method m, int eof)
{
    struct opts o = {ALB_HTTP_RESPONSE, m, NULL, eof};
    return o;
}

MP_TEST(test_response_framing)
{
    struct opts get = resp(ALB_HTTP_M_GET, 0), head = resp(ALB_HTTP_M_HEAD, 0);
    struct opts conn = resp(ALB_HTTP_M_CONNECT, 0), geteof = resp(ALB_HTTP_M_GET, 1);
    EXPECT_LOG(&get, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", ALB_HTTP_OK,
               "B|S:200 OK 1|H:Content-Length=3|C:fr1 cl3 ka1 up0 ws0 ex0 tu0 hd0 au=|D:abc|M|");
    /* HEAD: Content-Length describes the would-be body; the next response follows */
    EXPECT_LOG(&head, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nHTTP/1.1 404 \r\n\r\n",
               ALB_HTTP_OK,
               "B|S:200 OK 1|H:Content-Length=10|C:fr0 cl10 ka1 up0 ws0 ex0 tu0 hd0 au=|M|"
               "B|S:404  1|C:fr0 cl0 ka1 up0 ws0 ex0 tu0 hd0 au=|M|");
    EXPECT_LOG(&get, "HTTP/1.1 204 No Content\r\n\r\n", ALB_HTTP_OK,
               "B|S:204 No Content 1|C:fr0 cl0 ka1 up0 ws0 ex0 tu0 hd0 au=|M|");
    EXPECT_LOG(&get, "HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n", ALB_HTTP_OK,
               "B|S:304 Not Modified 1|H:Content-Length=99|C:fr0 cl99 ka1 up0 ws0 ex0 tu0 hd0 au=|M|");
    EXPECT_LOG(&get, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n"
                     "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz",
               ALB_HTTP_OK,
               "B|S:100 Continue 1|C:fr0 cl0 ka1 up0 ws0 ex0 tu0 hd0 au=|M|"
               "B|S:103 Early Hints 1|H:Link=</s>|C:fr0 cl0 ka1 up0 ws0 ex0 tu0 hd0 au=|M|"
               "B|S:200 OK 1|H:Content-Length=1|C:fr1 cl1 ka1 up0 ws0 ex0 tu0 hd0 au=|D:z|M|");
    /* close-delimited: the message ends at EOF */
    EXPECT_LOG(&geteof, "HTTP/1.1 200 OK\r\n\r\nall of this until close", ALB_HTTP_CLOSED,
               "B|S:200 OK 1|C:fr3 cl0 ka0 up0 ws0 ex0 tu0 hd0 au=|D:all of this until close|M|");
    EXPECT_LOG(&geteof, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz", ALB_HTTP_CLOSED,
               "B|S:200 OK 1|H:Transfer-Encoding=gzip|C:fr3 cl0 ka0 up0 ws0 ex0 tu0 hd0 au=|D:zz|M|");
    EXPECT_LOG(&get, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                     "2\r\nzz\r\n0\r\nEtag: x\r\n\r\n",
               ALB_HTTP_OK,
               "B|S:200 OK 1|H:Transfer-Encoding=gzip, chunked|C:fr2 cl0 ka1 up0 ws0 ex0 tu0 hd0 au=|"
               "K:2|D:zz|K:0|T:Etag=x|M|");
    EXPECT_LOG(&get, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\n\r\n\x81\x05hello",
               ALB_HTTP_UPGRADE,
               "B|S:101 Switching Protocols 1|H:Upgrade=websocket|H:Connection=Upgrade|"
               "C:fr0 cl0 ka1 up0 ws0 ex0 tu1 hd0 au=|M|");
    EXPECT_LOG(&conn, "HTTP/1.1 200 Connection established\r\n\r\nTLS", ALB_HTTP_UPGRADE,
               "B|S:200 Connection established 1|C:fr0 cl0 ka1 up0 ws0 ex0 tu1 hd0 au=|M|");
    /* HTTP/1.0 response: not persistent unless keep-alive */
    EXPECT_LOG(&get, "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.0", ALB_HTTP_CLOSED,
               "B|S:200 OK 0|H:Content-Length=1|C:fr1 cl1 ka0 up0 ws0 ex0 tu0 hd0 au=|D:x|M|");
    EXPECT_LOG(&get, "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", ALB_HTTP_OK,
               "B|S:200  1|H:Content-Length=0|C:fr0 cl0 ka1 up0 ws0 ex0 tu0 hd0 au=|M|");
}

MP_TEST(test_response_errors)
{
    struct opts get = resp(ALB_HTTP_M_GET, 0), geteof = resp(ALB_HTTP_M_GET, 1);
    EXPECT_ERR(&get, "HTTP/1.1 600 X\r\n\r\n", ALB_HTTP_E_BAD_STATUS);
    EXPECT_ERR(&get, "HTTP/1.1 099 X\r\n\r\n", ALB_HTTP_E_BAD_STATUS);
    EXPECT_ERR(&get, "HTTP/1.1 20 X\r\n\r\n", ALB_HTTP_E_BAD_STATUS);
    EXPECT_ERR(&get, "HTTP/1.1 200X\r\n\r\n", ALB_HTTP_E_BAD_STATUS);
    EXPECT_ERR(&get, "HTTP/2.0 200 OK\r\n\r\n", ALB_HTTP_E_BAD_VERSION);
    EXPECT_ERR(&get, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
               ALB_HTTP_E_CL_AND_TE);
    EXPECT_ERR(&get, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
               ALB_HTTP_E_TE_CHUNKED_NOT_LAST);
    EXPECT_ERR(&get, "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", ALB_HTTP_E_OBS_FOLD);
    /* truncated bodies are errors at EOF, an idle connection is not */
    EXPECT_ERR(&geteof, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc", ALB_HTTP_E_UNEXPECTED_EOF);
    EXPECT_ERR(&geteof, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
               ALB_HTTP_E_UNEXPECTED_EOF);
    EXPECT_ERR(&geteof, "HTTP/1.1 200 OK\r\nContent-", ALB_HTTP_E_UNEXPECTED_EOF);
    EXPECT_LOG(&geteof, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", ALB_HTTP_CLOSED,
               "B|S:200 OK 1|H:Content-Length=1|C:fr1 cl1 ka1 up0 ws0 ex0 tu0 hd0 au=|D:x|M|");
}

MP_TEST(test_error_is_sticky_and_status_map)
{
    alb_http_parser p;
    alb_http_parser_init(&p, ALB_HTTP_REQUEST, NULL, NULL, NULL);
    size_t used;
    MP_CHECK_EQ_INT(alb_http_parser_execute(&p, "GET / HTTP/1.1\n", 15, &used), ALB_HTTP_ERROR);
    MP_CHECK_EQ_INT(alb_http_parser_execute(&p, "GET / HTTP/1.1\r\n", 16, &used), ALB_HTTP_ERROR);
    MP_CHECK_EQ_INT(used, 0);
    MP_CHECK_EQ_INT(alb_http_err_status(ALB_HTTP_E_TE_UNSUPPORTED), 501);
    MP_CHECK_EQ_INT(alb_http_err_status(ALB_HTTP_E_BAD_VERSION), 505);
    MP_CHECK_EQ_INT(alb_http_err_status(ALB_HTTP_E_CL_AND_TE), 400);
    for (int e = 0; e < ALB_HTTP_E__COUNT; e++)
        MP_CHECK(strcmp(alb_http_err_name((enum alb_http_err)e), "unknown") != 0);
}

MP_TEST(test_split_sweep_corpus)
{
    /* a mixed corpus swept at every split point (in addition to the per-case sweeps) */
    static const char *const reqs[] = {
        ("POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
         "3;e=\"q\\\"x\"\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: 1\r\n\r\n"
         "GET /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
        ("\r\nPUT /c HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"
         "0123456789GET /d HTTP/1.1\r\nHost: h\r\n\r\n"),
        "GET /e HTTP/1.1\r\nHost: h\r\nX: a\r\n\r\nGET /f HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++)
        MP_CHECK(splits_agree(&REQ, reqs[i], strlen(reqs[i])));
    struct opts geteof = resp(ALB_HTTP_M_GET, 1);
    const char *r = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "4\r\nwiki\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n\r\nrest until close";
    MP_CHECK(splits_agree(&geteof, r, strlen(r)));
}

MP_TEST_MAIN(MP_CASE(test_origin_form), MP_CASE(test_absolute_form),
             MP_CASE(test_authority_and_asterisk_form), MP_CASE(test_http10),
             MP_CASE(test_connection_close), MP_CASE(test_ows_and_obs_text),
             MP_CASE(test_leading_empty_lines), MP_CASE(test_content_length_body),
             MP_CASE(test_chunked_ext_trailers), MP_CASE(test_expect_continue),
             MP_CASE(test_upgrade_websocket), MP_CASE(test_pipelining), MP_CASE(test_cl_te),
             MP_CASE(test_cl_conflict_invalid), MP_CASE(test_te_variants),
             MP_CASE(test_line_endings_and_chars), MP_CASE(test_host_rules),
             MP_CASE(test_request_line_errors), MP_CASE(test_chunk_errors),
             MP_CASE(test_limit_request_line), MP_CASE(test_limit_header_bytes),
             MP_CASE(test_limit_header_count), MP_CASE(test_response_framing),
             MP_CASE(test_response_errors), MP_CASE(test_error_is_sticky_and_status_map),
             MP_CASE(test_split_sweep_corpus))
