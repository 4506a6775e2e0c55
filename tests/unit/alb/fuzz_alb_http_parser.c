/*
 * fuzz_alb_http_parser.c — libFuzzer harness for plugins/alb/alb_http_parser.c (and the
 * header rewrite behind it). Besides crashes / sanitizer reports it checks one
 * property: parsing the input in one piece and in pseudo-random pieces (sizes drawn
 * from the input) yields the same event stream, return code and error — the parser's
 * resume-across-chunks contract. Body bytes are hashed as one stream so split bodies
 * compare equal.
 *
 * Input: byte 0 = flags (bit0 response, bit1 EOF at end, bit2 small limits,
 * bits3-5 request method for responses, bit6 the split run also pauses after every
 * header / body / message callback), byte 1 = split seed, rest = the message.
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -Iplugins/alb \
 *        plugins/alb/alb_http_*.c tests/unit/alb/fuzz_alb_http_parser.c
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "alb_http_headers.h"
#include "alb_http_parser.h"

struct st {
    uint64_t h;
    int in_body;
    struct alb_http_field f[32];
    size_t nf;
    char store[4096];
    size_t used;
    char method[32], target[512];
    size_t mlen, tlen;
    int have_line;
    int pause;
};

static void mix(struct st *s, const void *d, size_t n)
{
    const unsigned char *p = d;
    for (size_t i = 0; i < n; i++) s->h = (s->h ^ p[i]) * 1099511628211ull;
}

static struct st *S(alb_http_parser *p)
{
    struct st *s = p->user;
    if (s->in_body) {
        mix(s, "|", 1);
        s->in_body = 0;
    }
    return s;
}

static int f_begin(alb_http_parser *p)
{
    struct st *s = S(p);
    mix(s, "B", 1);
    s->nf = 0;
    s->used = 0;
    s->have_line = 0;
    return 0;
}

static int f_start(alb_http_parser *p, const struct alb_http_start_line *sl)
{
    struct st *s = S(p);
    mix(s, "S", 1);
    mix(s, sl->method.p ? sl->method.p : "", sl->method.len);
    mix(s, sl->target.p ? sl->target.p : "", sl->target.len);
    mix(s, sl->reason.p ? sl->reason.p : "", sl->reason.len);
    mix(s, &sl->status, sizeof(sl->status));
    if (sl->method.len <= sizeof(s->method) && sl->target.len <= sizeof(s->target)) {
        memcpy(s->method, sl->method.p, sl->method.len);
        memcpy(s->target, sl->target.p, sl->target.len);
        s->mlen = sl->method.len;
        s->tlen = sl->target.len;
        s->have_line = p->type == ALB_HTTP_REQUEST;
    }
    return 0;
}

static int f_field(alb_http_parser *p, const char *n, size_t nl, const char *v, size_t vl)
{
    struct st *s = S(p);
    mix(s, "H", 1);
    mix(s, n, nl);
    mix(s, "=", 1);
    mix(s, v, vl);
    if (s->nf < 32 && s->used + nl + vl <= sizeof(s->store)) {
        struct alb_http_field *f = &s->f[s->nf++];
        memcpy(s->store + s->used, n, nl);
        f->name = s->store + s->used;
        f->name_len = nl;
        s->used += nl;
        memcpy(s->store + s->used, v, vl);
        f->value = s->store + s->used;
        f->value_len = vl;
        s->used += vl;
    }
    return s->pause ? ALB_HTTP_CB_PAUSE : 0;
}

static int f_trailer(alb_http_parser *p, const char *n, size_t nl, const char *v, size_t vl)
{
    struct st *s = S(p);
    mix(s, "T", 1);
    mix(s, n, nl);
    mix(s, v, vl);
    return 0;
}

static int f_hdone(alb_http_parser *p)
{
    struct st *s = S(p);
    const struct alb_http_msg *m = &p->msg;
    int bits[] = {(int)m->framing, m->keep_alive, m->upgrade, m->websocket, m->tunnel,
                  m->expect_continue, m->host_differs};
    mix(s, "C", 1);
    mix(s, bits, sizeof(bits));
    mix(s, &m->content_length, sizeof(m->content_length));
    mix(s, m->authority, m->authority_len);
    if (s->have_line) {
        struct alb_fwd_request rq = {s->method, s->mlen, s->target, s->tlen, m->form,
                                     s->f, s->nf, m->authority, m->authority_len, m->upgrade};
        struct alb_fwd_opts o = {"192.0.2.7", 1, "alb", NULL, 1, 0,
                                 m->framing == ALB_HTTP_BODY_CHUNKED ? ALB_FWD_BODY_CHUNKED
                                                                     : ALB_FWD_BODY_LENGTH,
                                 m->content_length};
        static char out[8192];
        size_t len = 0;
        if (alb_http_build_upstream_head(&rq, &o, out, sizeof(out), &len) == ALB_HDR_OK) {
            if (len < 4 || memcmp(out + len - 4, "\r\n\r\n", 4) != 0) abort();
            /* the head ends exactly once: no CRLFCRLF before the end */
            for (size_t i = 0; i + 4 < len; i++)
                if (memcmp(out + i, "\r\n\r\n", 4) == 0) abort();
        }
    }
    return s->pause ? ALB_HTTP_CB_PAUSE : 0;
}

static int f_chunk(alb_http_parser *p, uint64_t sz)
{
    struct st *s = S(p);
    mix(s, "K", 1);
    mix(s, &sz, sizeof(sz));
    return 0;
}

static int f_body(alb_http_parser *p, const char *d, size_t n)
{
    struct st *s = p->user;
    if (n == 0) abort(); /* never deliver empty body events */
    if (!s->in_body) mix(s, "D", 1);
    s->in_body = 1;
    mix(s, d, n);
    return s->pause ? ALB_HTTP_CB_PAUSE : 0;
}

static int f_done(alb_http_parser *p)
{
    struct st *s = S(p);
    mix(s, "M", 1);
    return s->pause ? ALB_HTTP_CB_PAUSE : 0;
}

static const struct alb_http_callbacks CBS = {f_begin, f_start,  f_field, f_hdone,
                                              f_chunk, f_body, f_trailer, f_done};

struct outcome {
    uint64_t h;
    enum alb_http_rc rc;
    enum alb_http_err err;
};

static struct outcome run(const uint8_t *d, size_t n, uint8_t flags, uint8_t seed, int split)
{
    static struct st s;
    memset(&s, 0, sizeof(s));
    s.h = 1469598103934665603ull;
    s.pause = split && (flags & 64);
    struct alb_http_limits lim;
    alb_http_limits_default(&lim);
    if (flags & 4) {
        lim.max_start_line = 64;
        lim.max_field_line = 48;
        lim.max_header_bytes = 160;
        lim.max_headers = 6;
        lim.max_chunk_line = 24;
    }
    static alb_http_parser p;
    alb_http_parser_init(&p, (flags & 1) ? ALB_HTTP_RESPONSE : ALB_HTTP_REQUEST, &lim, &CBS, &s);
    alb_http_parser_set_request_method(&p, (enum alb_http_method)((flags >> 3) % 10));
    size_t pos = 0;
    uint32_t r = seed * 2654435761u + 1;
    enum alb_http_rc rc = ALB_HTTP_OK;
    while (pos < n && rc == ALB_HTTP_OK) {
        size_t len = n - pos;
        if (split) {
            r = r * 1103515245u + 12345u;
            size_t want = 1 + (r >> 16) % 17;
            if (want < len) len = want;
        }
        /* heap copy of exactly this piece so over-reads are caught */
        char *piece = malloc(len);
        memcpy(piece, d + pos, len);
        size_t used = 0;
        rc = alb_http_parser_execute(&p, piece, len, &used);
        free(piece);
        if (used > len) abort();
        if (rc == ALB_HTTP_OK && used != len) abort();
        if (rc == ALB_HTTP_PAUSED) {
            if (!s.pause) abort();
            rc = ALB_HTTP_OK;
        }
        pos += used;
    }
    if ((flags & 2) && rc == ALB_HTTP_OK) rc = alb_http_parser_finish(&p);
    S(&p);
    struct outcome o = {s.h, rc, alb_http_parser_error(&p)};
    if ((rc == ALB_HTTP_ERROR) != (o.err != ALB_HTTP_E_NONE)) abort();
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    uint8_t flags = data[0], seed = data[1];
    struct outcome a = run(data + 2, size - 2, flags, seed, 0);
    struct outcome b = run(data + 2, size - 2, flags, seed, 1);
    if (a.h != b.h || a.rc != b.rc || a.err != b.err) abort();
    return 0;
}
