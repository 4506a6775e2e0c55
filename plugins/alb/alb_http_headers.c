/*
 * alb_http_headers.c — upstream request-head rewrite for the ALB proxy (see
 * alb_http_headers.h). Owns which client fields cross the proxy and in what form.
 *
 * Decisions:
 *  - Output order: request line, Host, surviving client fields in received order,
 *    framing field, Connection, TE, X-Forwarded-For, X-Forwarded-Proto,
 *    X-Forwarded-Host, Via. Deterministic so tests (and caches) see stable bytes.
 *  - Always HTTP/1.1 upstream (RFC 9110 2.5: an intermediary sends its own version);
 *    an absolute-form target becomes origin-form (RFC 9112 3.2.1), other forms pass.
 *  - Content-Length / Transfer-Encoding are never forwarded: the body is re-framed
 *    from opts.framing, so no ambiguity the parser accepted can reach the upstream.
 *  - Hop-by-hop: Connection, every field it names, Keep-Alive, Proxy-Connection, TE,
 *    Trailer, Upgrade (kept only with opts.pass_upgrade on a parsed upgrade request).
 *    TE "trailers" is re-sent as "TE: trailers" with "Connection: te" (RFC 9110 10.1.4).
 *  - X-Forwarded-Proto / X-Forwarded-Host are always replaced (client values are
 *    untrusted); X-Forwarded-For is appended to unless opts.xff_replace; existing Via
 *    values are merged into one field and ours appended. A field the client named in
 *    Connection is dropped even if it is one we regenerate (so it only loses its
 *    client-supplied part).
 *  - Host: opts.upstream_host if given, else the parser's effective authority (which
 *    for absolute-form is the target's, RFC 9112 3.2.2).
 */
#include "alb_http_headers.h"

#include <string.h>

struct wbuf {
    char *b;
    size_t cap;
    size_t len;
    int overflow;
};

static void put(struct wbuf *w, const char *s, size_t n)
{
    if (n == 0) return;
    if (w->overflow || n > w->cap - w->len) {
        w->overflow = 1;
        return;
    }
    memcpy(w->b + w->len, s, n);
    w->len += n;
}

static void puts_(struct wbuf *w, const char *s) { put(w, s, strlen(s)); }

size_t alb_http_u64_dec(char *out, uint64_t v)
{
    char tmp[20];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    memcpy(out, tmp + i, sizeof(tmp) - i);
    return sizeof(tmp) - i;
}

static void put_u64(struct wbuf *w, uint64_t v)
{
    char tmp[20];
    put(w, tmp, alb_http_u64_dec(tmp, v));
}

static char lower(char c) { return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c; }

static int ci_eq(const char *a, size_t an, const char *b, size_t bn)
{
    if (an != bn) return 0;
    for (size_t i = 0; i < an; i++)
        if (lower(a[i]) != lower(b[i])) return 0;
    return 1;
}

static int name_is(const struct alb_http_field *f, const char *lit)
{
    return ci_eq(f->name, f->name_len, lit, strlen(lit));
}

int alb_http_list_has(const char *v, size_t vl, const char *t, size_t tl)
{
    size_t i = 0;
    while (i < vl) {
        while (i < vl && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) i++;
        size_t s = i;
        while (i < vl && v[i] != ',' && v[i] != ';') i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t')) e--;
        if (e > s && ci_eq(v + s, e - s, t, tl)) return 1;
        while (i < vl && v[i] != ',') i++; /* skip parameters */
    }
    return 0;
}

/* Injected values end up inside a field value or list: no CTL, SP, DEL or comma. */
static int safe_value(const char *s)
{
    if (!s || !*s) return 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= 0x20 || c >= 0x7f || c == ',') return 0;
    }
    return 1;
}

/* Defense in depth: request parts normally come from alb_http_parser, which already
 * refused these bytes, but a CR/LF slipping through here would split the request. */
static int visible(const char *s, size_t n, int allow_empty)
{
    if (n == 0) return allow_empty;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c == 0x7f) return 0;
    }
    return 1;
}

static int field_ok(const struct alb_http_field *f)
{
    if (!visible(f->name, f->name_len, 0) || memchr(f->name, ':', f->name_len)) return 0;
    for (size_t i = 0; i < f->value_len; i++) {
        unsigned char c = (unsigned char)f->value[i];
        if (!(c == '\t' || (c >= 0x20 && c != 0x7f))) return 0;
    }
    return 1;
}

static int listed_in_connection(const struct alb_fwd_request *rq, const char *n, size_t nl)
{
    for (size_t i = 0; i < rq->nfields; i++) {
        const struct alb_http_field *f = &rq->fields[i];
        if (name_is(f, "connection") && alb_http_list_has(f->value, f->value_len, n, nl))
            return 1;
    }
    return 0;
}

static int is_regenerated(const struct alb_http_field *f)
{
    static const char *const names[] = {
        "host", "content-length", "transfer-encoding", "connection", "keep-alive",
        "proxy-connection", "te", "trailer", "x-forwarded-for", "x-forwarded-proto",
        "x-forwarded-host", "via",
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (name_is(f, names[i])) return 1;
    return 0;
}

/* Joins the values of every surviving field called lit, comma-separated. */
static int put_joined(struct wbuf *w, const struct alb_fwd_request *rq, const char *lit)
{
    int any = 0;
    size_t ll = strlen(lit);
    if (listed_in_connection(rq, lit, ll)) return 0;
    for (size_t i = 0; i < rq->nfields; i++) {
        const struct alb_http_field *f = &rq->fields[i];
        if (!name_is(f, lit) || f->value_len == 0) continue;
        if (any) puts_(w, ", ");
        put(w, f->value, f->value_len);
        any = 1;
    }
    return any;
}

enum alb_hdr_rc alb_http_build_upstream_head(const struct alb_fwd_request *rq,
                                             const struct alb_fwd_opts *o, char *out,
                                             size_t cap, size_t *out_len)
{
    struct wbuf w = {out, cap, 0, 0};
    if (!safe_value(o->client_addr)) return ALB_HDR_E_INVALID;
    if (o->via_name && !safe_value(o->via_name)) return ALB_HDR_E_INVALID;
    if (o->upstream_host && !safe_value(o->upstream_host)) return ALB_HDR_E_INVALID;
    if (!visible(rq->method, rq->method_len, 0) || !visible(rq->target, rq->target_len, 0) ||
        !visible(rq->authority, rq->authority_len, 1))
        return ALB_HDR_E_INVALID;
    for (size_t i = 0; i < rq->nfields; i++)
        if (!field_ok(&rq->fields[i])) return ALB_HDR_E_INVALID;
    int pass_upgrade = o->pass_upgrade && rq->upgrade;

    /* request line */
    put(&w, rq->method, rq->method_len);
    puts_(&w, " ");
    if (rq->form == ALB_HTTP_TARGET_ABSOLUTE) {
        /* skip "scheme://authority"; the parser guaranteed the shape */
        const char *t = rq->target, *end = t + rq->target_len;
        const char *a = memchr(t, ':', rq->target_len);
        const char *p = (a && end - a >= 3) ? a + 3 : t;
        while (p < end && *p != '/' && *p != '?') p++;
        if (p == end || *p == '?') puts_(&w, "/");
        put(&w, p, (size_t)(end - p));
    } else {
        put(&w, rq->target, rq->target_len);
    }
    puts_(&w, " HTTP/1.1\r\n");

    puts_(&w, "Host: ");
    if (o->upstream_host)
        puts_(&w, o->upstream_host);
    else
        put(&w, rq->authority, rq->authority_len);
    puts_(&w, "\r\n");

    int te_trailers = 0;
    for (size_t i = 0; i < rq->nfields; i++) {
        const struct alb_http_field *f = &rq->fields[i];
        if (name_is(f, "te") && alb_http_list_has(f->value, f->value_len, "trailers", 8))
            te_trailers = 1;
        if (is_regenerated(f)) continue;
        if (name_is(f, "upgrade")) {
            if (!pass_upgrade) continue;
        } else if (listed_in_connection(rq, f->name, f->name_len)) {
            continue;
        }
        put(&w, f->name, f->name_len);
        puts_(&w, ": ");
        put(&w, f->value, f->value_len);
        puts_(&w, "\r\n");
    }

    if (o->framing == ALB_FWD_BODY_LENGTH) {
        puts_(&w, "Content-Length: ");
        put_u64(&w, o->content_length);
        puts_(&w, "\r\n");
    } else if (o->framing == ALB_FWD_BODY_CHUNKED) {
        puts_(&w, "Transfer-Encoding: chunked\r\n");
    }
    if (pass_upgrade || te_trailers) {
        puts_(&w, "Connection: ");
        if (pass_upgrade) puts_(&w, te_trailers ? "upgrade, te" : "upgrade");
        else puts_(&w, "te");
        puts_(&w, "\r\n");
    }
    if (te_trailers) puts_(&w, "TE: trailers\r\n");

    puts_(&w, "X-Forwarded-For: ");
    if (!o->xff_replace && put_joined(&w, rq, "x-forwarded-for")) puts_(&w, ", ");
    puts_(&w, o->client_addr);
    puts_(&w, "\r\n");
    puts_(&w, o->client_tls ? "X-Forwarded-Proto: https\r\n" : "X-Forwarded-Proto: http\r\n");
    if (rq->authority_len > 0) {
        puts_(&w, "X-Forwarded-Host: ");
        put(&w, rq->authority, rq->authority_len);
        puts_(&w, "\r\n");
    }
    if (o->via_name) {
        puts_(&w, "Via: ");
        if (put_joined(&w, rq, "via")) puts_(&w, ", ");
        puts_(&w, "1.1 ");
        puts_(&w, o->via_name);
        puts_(&w, "\r\n");
    } else {
        /* we are not adding ourselves, but existing entries still pass through */
        struct wbuf probe = {NULL, 0, 0, 0};
        if (put_joined(&probe, rq, "via")) {
            puts_(&w, "Via: ");
            put_joined(&w, rq, "via");
            puts_(&w, "\r\n");
        }
    }
    puts_(&w, "\r\n");
    if (w.overflow) return ALB_HDR_E_NOSPACE;
    *out_len = w.len;
    return ALB_HDR_OK;
}
