/*
 * alb_http_parser.c — the incremental HTTP/1.1 parser declared in alb_http_parser.h.
 * It owns line assembly across chunk boundaries, start-line / field syntax, and message
 * framing with the request-smuggling defenses below. Written from RFC 9110/9112.
 *
 * Decisions where the RFCs leave a choice (all chosen for "one unambiguous reading"):
 *  - Line endings: CRLF only. Bare LF and bare CR anywhere in the head, chunk-size
 *    lines or after chunk data are errors (RFC 9112 2.2 allows lenient LF; we do not).
 *  - Up to ALB_HTTP_MAX_EMPTY_LINES empty lines before a start line are skipped
 *    (RFC 9112 2.2), more is a bad request line.
 *  - Request line: exactly one SP between parts; only HTTP/1.0 and HTTP/1.1 (anything
 *    else shaped like HTTP/x.y -> 505). Targets: VCHAR only, no '#'. Absolute-form only
 *    for http/https, authority without userinfo. "*" only with OPTIONS; CONNECT needs
 *    authority-form with a port.
 *  - Status line: a missing SP/reason after the code is accepted (harmless to framing).
 *  - Field values: obs-text (0x80-0xFF) accepted, other CTLs except HTAB refused.
 *    obs-fold (and whitespace before the first field) refused, also in responses
 *    (RFC 9112 5.2 allows a proxy to replace it; we answer 502 instead).
 *  - Content-Length: 1*DIGIT, at most 18 digits. Repeated fields or a list are accepted
 *    when every value is numerically equal (RFC 9112 6.3 rule 5); otherwise refused.
 *    Empty list elements in Content-Length are refused.
 *  - Transfer-Encoding: requests accept exactly "chunked" once (empty list elements
 *    ignored per RFC 9110 5.6.1). Final coding not chunked -> 400 (RFC 9112 6.3 rule 4,
 *    covers "xchunked", "chunked, identity"); chunked twice -> 400; another coding
 *    before chunked -> 501 (we never decode codings). Parameters on chunked or quoted
 *    parameters are refused. Responses: final non-chunked coding -> close-delimited
 *    body (rule 4), chunked not last -> error.
 *  - Content-Length with Transfer-Encoding is refused in requests and in responses
 *    (RFC 9112 6.3 rule 3 says "ought to be handled as an error").
 *  - Transfer-Encoding in an HTTP/1.0 message is refused (RFC 9112 6.1: framing faulty).
 *  - Host: required for HTTP/1.1 requests, at most one, syntax-checked; an empty value
 *    is accepted (RFC 9112 3.2). With an absolute-form target the target's authority
 *    wins (RFC 9112 3.2.2) and msg.host_differs is set; the proxy rewrites Host from
 *    msg.authority so the upstream never sees the disagreeing value.
 *  - CONNECT requests with Content-Length > 0 or Transfer-Encoding are refused.
 *  - Expect: 100-continue sets expect_continue (ignored for HTTP/1.0, RFC 9110 10.1.1);
 *    other values only set expect_other so the caller may send 417.
 *  - Upgrade is honoured only in HTTP/1.1 requests with "upgrade" in Connection
 *    (RFC 9110 7.8). After such a request (and CONNECT) the parser stops with
 *    ALB_HTTP_UPGRADE; alb_http_parser_resume_http() continues if the upgrade failed.
 *  - Trailer fields are validated like header fields, counted against fresh copies of
 *    the header limits, and reported via on_trailer; they never affect framing.
 *  - Chunk extensions are syntax-checked (token / quoted-string) and dropped.
 *  - After a request or response that ends the connection (Connection: close, HTTP/1.0
 *    without keep-alive, close-delimited body) nothing more is parsed: ALB_HTTP_CLOSED.
 */
#include "alb_http_parser.h"

#include <string.h>

enum {
    S_START = 0, /* before a start line (skipping empty lines) */
    S_HEADER,
    S_BODY_LEN,
    S_CHUNK_LINE,
    S_CHUNK_DATA,
    S_CHUNK_CR,
    S_CHUNK_LF,
    S_TRAILER,
    S_BODY_EOF,
    S_UPGRADE,
    S_CLOSED,
    S_ERROR,
};

/* tchar per RFC 9110 5.6.2 */
static const unsigned char tchar_tab[256] = {
    ['0' ... '9'] = 1, ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1, ['!'] = 1, ['#'] = 1,
    ['$'] = 1,         ['%'] = 1,         ['&'] = 1,         ['\''] = 1, ['*'] = 1,
    ['+'] = 1,         ['-'] = 1,         ['.'] = 1,         ['^'] = 1, ['_'] = 1,
    ['`'] = 1,         ['|'] = 1,         ['~'] = 1,
};

static int is_tchar(char c) { return tchar_tab[(unsigned char)c]; }
static int is_ows(char c) { return c == ' ' || c == '\t'; }
static int is_digit(char c) { return c >= '0' && c <= '9'; }

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static char lower(char c) { return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c; }

/* Case-insensitive equality of (s,n) with a lowercase literal. */
static int ci_eq(const char *s, size_t n, const char *lit)
{
    size_t l = strlen(lit);
    if (n != l) return 0;
    for (size_t i = 0; i < n; i++)
        if (lower(s[i]) != lit[i]) return 0;
    return 1;
}

static int ci_eq2(const char *a, size_t an, const char *b, size_t bn)
{
    if (an != bn) return 0;
    for (size_t i = 0; i < an; i++)
        if (lower(a[i]) != lower(b[i])) return 0;
    return 1;
}

void alb_http_limits_default(struct alb_http_limits *l)
{
    l->max_start_line = 8192;
    l->max_field_line = 8192;
    l->max_header_bytes = 65536;
    l->max_headers = 100;
    l->max_chunk_line = 4096;
}

static uint32_t clamp_line(uint32_t v)
{
    if (v == 0) return 1;
    return v > ALB_HTTP_LINE_CAP ? ALB_HTTP_LINE_CAP : v;
}

void alb_http_parser_init(alb_http_parser *p, enum alb_http_type type,
                          const struct alb_http_limits *limits,
                          const struct alb_http_callbacks *cb, void *user)
{
    memset(p, 0, offsetof(alb_http_parser, line));
    p->type = type;
    if (limits)
        p->limits = *limits;
    else
        alb_http_limits_default(&p->limits);
    p->limits.max_start_line = clamp_line(p->limits.max_start_line);
    p->limits.max_field_line = clamp_line(p->limits.max_field_line);
    p->limits.max_chunk_line = clamp_line(p->limits.max_chunk_line);
    if (p->limits.max_header_bytes < 2) p->limits.max_header_bytes = 2;
    p->cb = cb;
    p->user = user;
    p->state = S_START;
    p->req_method = ALB_HTTP_M_GET;
}

void alb_http_parser_set_request_method(alb_http_parser *p, enum alb_http_method m)
{
    p->req_method = m;
}

enum alb_http_err alb_http_parser_error(const alb_http_parser *p) { return p->error; }

enum alb_http_method alb_http_method_from(const char *s, size_t n)
{
    /* Methods are case-sensitive (RFC 9110 9.1). */
    static const struct {
        const char *name;
        enum alb_http_method id;
    } tab[] = {
        {"GET", ALB_HTTP_M_GET},         {"HEAD", ALB_HTTP_M_HEAD},
        {"POST", ALB_HTTP_M_POST},       {"PUT", ALB_HTTP_M_PUT},
        {"DELETE", ALB_HTTP_M_DELETE},   {"CONNECT", ALB_HTTP_M_CONNECT},
        {"OPTIONS", ALB_HTTP_M_OPTIONS}, {"TRACE", ALB_HTTP_M_TRACE},
        {"PATCH", ALB_HTTP_M_PATCH},
    };
    for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++)
        if (strlen(tab[i].name) == n && memcmp(tab[i].name, s, n) == 0) return tab[i].id;
    return ALB_HTTP_M_OTHER;
}

/* Call an optional callback; a negative return aborts, a positive one pauses. */
#define CALL(p, fn, ...)                                                   \
    do {                                                                   \
        if ((p)->cb && (p)->cb->fn) {                                      \
            int cb_r_ = (p)->cb->fn((p), ##__VA_ARGS__);                   \
            if (cb_r_ < 0) return ALB_HTTP_E_CALLBACK;                     \
            if (cb_r_ > 0) (p)->pause = 1;                                 \
        }                                                                  \
    } while (0)

/*
 * Assemble one CRLF-terminated line. Only the bytes not yet seen are scanned, and at
 * most limit+2 bytes of a line are ever looked at, so an over-long line is refused as
 * soon as it is provably too long. A line wholly inside the caller's chunk is returned
 * in place; only a line split across chunks is copied (never more than limit+1 bytes).
 * Returns 1 (line ready, CRLF stripped), 0 (all input buffered), -1 (too long),
 * -2 (LF without CR).
 */
static int take_line(alb_http_parser *p, const char *d, size_t n, size_t *pos, size_t limit,
                     const char **out, size_t *out_len)
{
    size_t avail = n - *pos;
    size_t window = limit + 2 - p->line_len; /* line_len <= limit+1 by construction */
    size_t scan = avail < window ? avail : window;
    const char *s = d + *pos;
    const char *lf = memchr(s, '\n', scan);
    if (!lf) {
        if (avail >= window) return -1;
        memcpy(p->line + p->line_len, s, avail);
        p->line_len += avail;
        *pos = n;
        return 0;
    }
    size_t take = (size_t)(lf - s);
    const char *line;
    size_t ll;
    if (p->line_len == 0) {
        line = s;
        ll = take;
    } else {
        memcpy(p->line + p->line_len, s, take);
        ll = p->line_len + take;
        line = p->line;
    }
    *pos += take + 1;
    p->line_len = 0;
    if (ll == 0 || line[ll - 1] != '\r') return -2;
    ll--;
    if (ll > limit) return -1;
    *out = line;
    *out_len = ll;
    return 1;
}

/* host[:port] as in RFC 3986 authority minus userinfo. Returns 0 when valid. */
static int check_authority(const char *s, size_t n, int port_required)
{
    size_t i = 0;
    if (n == 0 || n >= ALB_HTTP_AUTHORITY_MAX) return -1;
    if (s[0] == '[') {
        i = 1;
        while (i < n && s[i] != ']') {
            char c = s[i];
            if (!(hexval(c) >= 0 || c == ':' || c == '.')) return -1;
            i++;
        }
        if (i == n || i < 3) return -1;
        i++;
    } else {
        while (i < n && s[i] != ':') {
            char c = s[i];
            int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) ||
                     (c != 0 && strchr("-._~%!$&'()*+,;=", c) != NULL);
            if (!ok) return -1;
            i++;
        }
        if (i == 0) return -1;
    }
    if (i == n) return port_required ? -1 : 0;
    if (s[i] != ':') return -1;
    i++;
    size_t digits = n - i;
    if (digits > 5 || (port_required && digits == 0)) return -1;
    unsigned port = 0;
    for (; i < n; i++) {
        if (!is_digit(s[i])) return -1;
        port = port * 10 + (unsigned)(s[i] - '0');
    }
    if (port > 65535) return -1;
    return 0;
}

static void set_authority(alb_http_parser *p, const char *s, size_t n)
{
    /* callers validated n < ALB_HTTP_AUTHORITY_MAX */
    memcpy(p->msg.authority, s, n);
    p->msg.authority[n] = '\0';
    p->msg.authority_len = n;
}

static void reset_message(alb_http_parser *p)
{
    memset(&p->msg, 0, sizeof(p->msg));
    p->sect_bytes = 0;
    p->sect_fields = 0;
    p->remaining = 0;
    p->cl_value = 0;
    p->cl_seen = p->te_seen = p->te_final_chunked = p->te_other = 0;
    p->conn_close = p->conn_keepalive = p->conn_upgrade = p->upgrade_hdr = 0;
    p->ws_token = p->expect_100 = 0;
    p->te_chunked_count = 0;
    p->host_count = 0;
}

static enum alb_http_err parse_target(alb_http_parser *p, const char *t, size_t n,
                                      enum alb_http_method m, enum alb_http_target_form *form)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)t[i];
        if (c <= 0x20 || c >= 0x7f || c == '#') return ALB_HTTP_E_BAD_TARGET;
    }
    if (m == ALB_HTTP_M_CONNECT) {
        if (check_authority(t, n, 1) != 0) return ALB_HTTP_E_BAD_TARGET;
        set_authority(p, t, n);
        *form = ALB_HTTP_TARGET_AUTHORITY;
        return ALB_HTTP_E_NONE;
    }
    if (n == 1 && t[0] == '*') {
        if (m != ALB_HTTP_M_OPTIONS) return ALB_HTTP_E_BAD_TARGET;
        *form = ALB_HTTP_TARGET_ASTERISK;
        return ALB_HTTP_E_NONE;
    }
    if (t[0] == '/') {
        *form = ALB_HTTP_TARGET_ORIGIN;
        return ALB_HTTP_E_NONE;
    }
    /* absolute-form: http or https scheme, "//" authority, then path / query */
    size_t i;
    if (n > 7 && ci_eq(t, 7, "http://"))
        i = 7;
    else if (n > 8 && ci_eq(t, 8, "https://"))
        i = 8;
    else
        return ALB_HTTP_E_BAD_TARGET;
    size_t a = i;
    while (i < n && t[i] != '/' && t[i] != '?') i++;
    if (check_authority(t + a, i - a, 0) != 0) return ALB_HTTP_E_BAD_TARGET;
    set_authority(p, t + a, i - a);
    *form = ALB_HTTP_TARGET_ABSOLUTE;
    return ALB_HTTP_E_NONE;
}

static int version_minor(const char *v, size_t n)
{
    if (n == 8 && memcmp(v, "HTTP/1.", 7) == 0 && (v[7] == '0' || v[7] == '1'))
        return v[7] - '0';
    if (n == 8 && memcmp(v, "HTTP/", 5) == 0 && is_digit(v[5]) && v[6] == '.' &&
        is_digit(v[7]))
        return -2; /* well-formed but unsupported */
    return -1;
}

static enum alb_http_err start_line(alb_http_parser *p, const char *s, size_t n)
{
    struct alb_http_start_line sl;
    memset(&sl, 0, sizeof(sl));
    if (memchr(s, '\r', n)) return ALB_HTTP_E_BARE_CR;
    reset_message(p);
    if (p->type == ALB_HTTP_REQUEST) {
        size_t i = 0;
        while (i < n && is_tchar(s[i])) i++;
        if (i == 0 || i == n || s[i] != ' ') return ALB_HTTP_E_BAD_METHOD;
        sl.method.p = s;
        sl.method.len = i;
        sl.method_id = alb_http_method_from(s, i);
        size_t t = ++i;
        while (i < n && s[i] != ' ') i++;
        if (i == t) return ALB_HTTP_E_BAD_TARGET;
        if (i == n) return ALB_HTTP_E_BAD_REQUEST_LINE;
        sl.target.p = s + t;
        sl.target.len = i - t;
        int vm = version_minor(s + i + 1, n - i - 1);
        if (vm == -2) return ALB_HTTP_E_BAD_VERSION;
        if (vm < 0) return ALB_HTTP_E_BAD_REQUEST_LINE;
        sl.version_minor = vm;
        enum alb_http_err e = parse_target(p, sl.target.p, sl.target.len, sl.method_id, &sl.form);
        if (e) return e;
        p->msg.method = sl.method_id;
        p->msg.form = sl.form;
    } else {
        if (n < 12 || s[8] != ' ') {
            /* distinguish an unsupported version from garbage */
            if (n >= 8 && version_minor(s, 8) == -2) return ALB_HTTP_E_BAD_VERSION;
            return ALB_HTTP_E_BAD_STATUS;
        }
        int vm = version_minor(s, 8);
        if (vm == -2) return ALB_HTTP_E_BAD_VERSION;
        if (vm < 0) return ALB_HTTP_E_BAD_STATUS;
        sl.version_minor = vm;
        if (!is_digit(s[9]) || !is_digit(s[10]) || !is_digit(s[11]))
            return ALB_HTTP_E_BAD_STATUS;
        sl.status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
        if (sl.status < 100 || sl.status > 599) return ALB_HTTP_E_BAD_STATUS;
        if (n > 12) {
            if (s[12] != ' ') return ALB_HTTP_E_BAD_STATUS;
            for (size_t i = 13; i < n; i++) {
                unsigned char c = (unsigned char)s[i];
                if (!(c == '\t' || (c >= 0x20 && c != 0x7f))) return ALB_HTTP_E_BAD_STATUS;
            }
            sl.reason.p = s + 13;
            sl.reason.len = n - 13;
        } else {
            sl.reason.p = s + n;
        }
        p->msg.method = p->req_method;
        p->msg.status = sl.status;
    }
    p->msg.version_minor = sl.version_minor;
    p->state = S_HEADER;
    CALL(p, on_message_begin);
    CALL(p, on_start_line, &sl);
    return ALB_HTTP_E_NONE;
}

static enum alb_http_err parse_content_length(alb_http_parser *p, const char *v, size_t n)
{
    size_t i = 0;
    for (;;) {
        while (i < n && is_ows(v[i])) i++;
        size_t d0 = i;
        uint64_t val = 0;
        while (i < n && is_digit(v[i])) {
            val = val * 10 + (uint64_t)(v[i] - '0');
            i++;
            if (i - d0 > ALB_HTTP_CL_DIGITS_MAX) return ALB_HTTP_E_CL_INVALID;
        }
        if (i == d0) return ALB_HTTP_E_CL_INVALID;
        while (i < n && is_ows(v[i])) i++;
        if (p->cl_seen && p->cl_value != val) return ALB_HTTP_E_CL_CONFLICT;
        p->cl_seen = 1;
        p->cl_value = val;
        if (i == n) return ALB_HTTP_E_NONE;
        if (v[i] != ',') return ALB_HTTP_E_CL_INVALID;
        i++;
    }
}

static enum alb_http_err parse_transfer_encoding(alb_http_parser *p, const char *v, size_t n)
{
    size_t i = 0;
    int codings = 0;
    for (;;) {
        while (i < n && (is_ows(v[i]) || v[i] == ',')) i++; /* empty elements */
        if (i == n) break;
        size_t s = i;
        while (i < n && is_tchar(v[i])) i++;
        if (i == s) return ALB_HTTP_E_TE_INVALID;
        int chunked = ci_eq(v + s, i - s, "chunked");
        while (i < n && is_ows(v[i])) i++;
        while (i < n && v[i] == ';') {
            /* transfer-parameter = token BWS "=" BWS token; chunked takes none */
            if (chunked) return ALB_HTTP_E_TE_INVALID;
            i++;
            while (i < n && is_ows(v[i])) i++;
            size_t k = i;
            while (i < n && is_tchar(v[i])) i++;
            if (i == k) return ALB_HTTP_E_TE_INVALID;
            while (i < n && is_ows(v[i])) i++;
            if (i == n || v[i] != '=') return ALB_HTTP_E_TE_INVALID;
            i++;
            while (i < n && is_ows(v[i])) i++;
            k = i;
            while (i < n && is_tchar(v[i])) i++;
            if (i == k) return ALB_HTTP_E_TE_INVALID;
            while (i < n && is_ows(v[i])) i++;
        }
        if (i < n && v[i] != ',') return ALB_HTTP_E_TE_INVALID;
        codings++;
        if (chunked) {
            p->te_chunked_count++;
            p->te_final_chunked = 1;
        } else {
            if (p->te_chunked_count == 0) p->te_other = 1;
            p->te_final_chunked = 0;
        }
    }
    if (codings == 0) return ALB_HTTP_E_TE_INVALID;
    p->te_seen = 1;
    return ALB_HTTP_E_NONE;
}

/* Calls fn(p, elem, len) for each non-empty element of a comma list. */
static void for_each_elem(alb_http_parser *p, const char *v, size_t n,
                          void (*fn)(alb_http_parser *, const char *, size_t))
{
    size_t i = 0;
    while (i < n) {
        while (i < n && (is_ows(v[i]) || v[i] == ',')) i++;
        size_t s = i;
        while (i < n && v[i] != ',') i++;
        size_t e = i;
        while (e > s && is_ows(v[e - 1])) e--;
        if (e > s) fn(p, v + s, e - s);
    }
}

static void conn_elem(alb_http_parser *p, const char *s, size_t n)
{
    if (ci_eq(s, n, "close")) p->conn_close = 1;
    else if (ci_eq(s, n, "keep-alive")) p->conn_keepalive = 1;
    else if (ci_eq(s, n, "upgrade")) p->conn_upgrade = 1;
}

static void upgrade_elem(alb_http_parser *p, const char *s, size_t n)
{
    /* protocol-name [ "/" protocol-version ] */
    size_t k = 0;
    while (k < n && s[k] != '/') k++;
    if (ci_eq(s, k, "websocket")) p->ws_token = 1;
}

static enum alb_http_err header_semantics(alb_http_parser *p, const char *name, size_t nl,
                                          const char *v, size_t vl)
{
    switch (lower(name[0])) {
    case 'c':
        if (ci_eq(name, nl, "content-length")) return parse_content_length(p, v, vl);
        if (ci_eq(name, nl, "connection")) for_each_elem(p, v, vl, conn_elem);
        break;
    case 't':
        if (ci_eq(name, nl, "transfer-encoding")) return parse_transfer_encoding(p, v, vl);
        break;
    case 'h':
        if (p->type == ALB_HTTP_REQUEST && ci_eq(name, nl, "host")) {
            if (++p->host_count > 1) return ALB_HTTP_E_HOST_DUPLICATE;
            if (vl > 0 && check_authority(v, vl, 0) != 0) return ALB_HTTP_E_HOST_INVALID;
            p->msg.has_host = 1;
            if (p->msg.form == ALB_HTTP_TARGET_ABSOLUTE ||
                p->msg.form == ALB_HTTP_TARGET_AUTHORITY) {
                if (!ci_eq2(v, vl, p->msg.authority, p->msg.authority_len))
                    p->msg.host_differs = 1;
            } else {
                set_authority(p, v, vl);
            }
        }
        break;
    case 'u':
        if (ci_eq(name, nl, "upgrade")) {
            p->upgrade_hdr = 1;
            for_each_elem(p, v, vl, upgrade_elem);
        }
        break;
    case 'e':
        if (p->type == ALB_HTTP_REQUEST && ci_eq(name, nl, "expect")) {
            if (ci_eq(v, vl, "100-continue"))
                p->expect_100 = 1;
            else
                p->msg.expect_other = 1;
        }
        break;
    default:
        break;
    }
    return ALB_HTTP_E_NONE;
}

static enum alb_http_err field_line(alb_http_parser *p, const char *s, size_t n, int trailer)
{
    if (memchr(s, '\r', n)) return ALB_HTTP_E_BARE_CR;
    if (is_ows(s[0])) return ALB_HTTP_E_OBS_FOLD;
    if (++p->sect_fields > p->limits.max_headers) return ALB_HTTP_E_TOO_MANY_HEADERS;
    size_t i = 0;
    while (i < n && is_tchar(s[i])) i++;
    if (i == n) return ALB_HTTP_E_HEADER_NO_COLON;
    if (s[i] != ':') {
        if (is_ows(s[i])) {
            size_t j = i;
            while (j < n && is_ows(s[j])) j++;
            if (j < n && s[j] == ':') return ALB_HTTP_E_HEADER_WS_BEFORE_COLON;
        }
        return ALB_HTTP_E_HEADER_NAME_INVALID;
    }
    if (i == 0) return ALB_HTTP_E_HEADER_NAME_INVALID;
    size_t nl = i;
    size_t v = i + 1, e = n;
    while (v < e && is_ows(s[v])) v++;
    while (e > v && is_ows(s[e - 1])) e--;
    for (size_t k = v; k < e; k++) {
        unsigned char c = (unsigned char)s[k];
        if (!(c == '\t' || (c >= 0x20 && c != 0x7f))) return ALB_HTTP_E_HEADER_VALUE_INVALID;
    }
    if (trailer) {
        CALL(p, on_trailer, s, nl, s + v, e - v);
        return ALB_HTTP_E_NONE;
    }
    enum alb_http_err err = header_semantics(p, s, nl, s + v, e - v);
    if (err) return err;
    p->msg.nheaders++;
    CALL(p, on_header, s, nl, s + v, e - v);
    return ALB_HTTP_E_NONE;
}

static enum alb_http_err finish_message(alb_http_parser *p)
{
    if (p->msg.tunnel)
        p->state = S_UPGRADE;
    else if (p->type == ALB_HTTP_RESPONSE && p->msg.status < 200)
        p->state = S_START; /* the final response follows on the same request */
    else if (!p->msg.keep_alive)
        p->state = S_CLOSED;
    else
        p->state = S_START;
    p->empty_lines = 0;
    CALL(p, on_message_complete);
    return ALB_HTTP_E_NONE;
}

/* Framing checks common to both directions; sets *chunked / *eof for TE. */
static enum alb_http_err te_framing(alb_http_parser *p, int *chunked, int *eof)
{
    *chunked = *eof = 0;
    if (!p->te_seen) return ALB_HTTP_E_NONE;
    if (p->msg.version_minor == 0) return ALB_HTTP_E_TE_HTTP10;
    if (p->cl_seen) return ALB_HTTP_E_CL_AND_TE;
    if (p->te_chunked_count > 1) return ALB_HTTP_E_TE_CHUNKED_TWICE;
    if (p->te_chunked_count == 1 && !p->te_final_chunked) return ALB_HTTP_E_TE_CHUNKED_NOT_LAST;
    if (p->type == ALB_HTTP_REQUEST) {
        if (!p->te_final_chunked) return ALB_HTTP_E_TE_NOT_CHUNKED;
        if (p->te_other) return ALB_HTTP_E_TE_UNSUPPORTED;
        *chunked = 1;
    } else if (p->te_final_chunked) {
        *chunked = 1;
    } else {
        *eof = 1;
    }
    return ALB_HTTP_E_NONE;
}

static enum alb_http_err headers_done(alb_http_parser *p)
{
    struct alb_http_msg *m = &p->msg;
    int v11 = m->version_minor == 1, chunked, eof;
    if (p->type == ALB_HTTP_REQUEST && v11 && p->host_count == 0) return ALB_HTTP_E_HOST_MISSING;
    enum alb_http_err e = te_framing(p, &chunked, &eof);
    if (e) return e;
    m->keep_alive = v11 ? !p->conn_close : (p->conn_keepalive && !p->conn_close);
    m->framing = ALB_HTTP_BODY_NONE;
    if (p->type == ALB_HTTP_REQUEST) {
        if (chunked)
            m->framing = ALB_HTTP_BODY_CHUNKED;
        else if (p->cl_seen && p->cl_value > 0)
            m->framing = ALB_HTTP_BODY_LENGTH;
        if (m->method == ALB_HTTP_M_CONNECT) {
            if (m->framing != ALB_HTTP_BODY_NONE) return ALB_HTTP_E_CONNECT_BODY;
            m->tunnel = 1;
        } else if (v11 && p->upgrade_hdr && p->conn_upgrade) {
            m->upgrade = 1;
            m->websocket = p->ws_token;
            m->tunnel = 1;
        }
        m->expect_continue = v11 && p->expect_100;
    } else {
        int st = m->status;
        if (st == 101) {
            m->tunnel = 1;
        } else if (m->method == ALB_HTTP_M_CONNECT && st >= 200 && st < 300) {
            m->tunnel = 1;
        } else if (st < 200 || st == 204 || st == 304 || m->method == ALB_HTTP_M_HEAD) {
            /* no content, whatever the framing fields say (RFC 9112 6.3 rule 1) */
        } else if (chunked) {
            m->framing = ALB_HTTP_BODY_CHUNKED;
        } else if (eof) {
            m->framing = ALB_HTTP_BODY_EOF;
        } else if (p->cl_seen) {
            if (p->cl_value > 0) m->framing = ALB_HTTP_BODY_LENGTH;
        } else {
            m->framing = ALB_HTTP_BODY_EOF;
        }
        if (m->framing == ALB_HTTP_BODY_EOF) m->keep_alive = 0;
    }
    if (p->cl_seen) m->content_length = p->cl_value;
    p->remaining = m->content_length;

    switch (m->framing) {
    case ALB_HTTP_BODY_LENGTH: p->state = S_BODY_LEN; break;
    case ALB_HTTP_BODY_CHUNKED: p->state = S_CHUNK_LINE; break;
    case ALB_HTTP_BODY_EOF: p->state = S_BODY_EOF; break;
    default: break;
    }
    CALL(p, on_headers_complete);
    if (m->framing == ALB_HTTP_BODY_NONE) return finish_message(p);
    return ALB_HTTP_E_NONE;
}

static enum alb_http_err chunk_line(alb_http_parser *p, const char *s, size_t n)
{
    if (memchr(s, '\r', n)) return ALB_HTTP_E_BARE_CR;
    size_t i = 0;
    uint64_t size = 0;
    while (i < n && hexval(s[i]) >= 0) {
        if (i == ALB_HTTP_CHUNK_HEX_MAX) return ALB_HTTP_E_CHUNK_SIZE_TOO_LARGE;
        size = (size << 4) | (uint64_t)hexval(s[i]);
        i++;
    }
    if (i == 0) return ALB_HTTP_E_CHUNK_SIZE_INVALID;
    if (size > (uint64_t)INT64_MAX) return ALB_HTTP_E_CHUNK_SIZE_TOO_LARGE;
    /* chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ( token / quoted-string ) ] ) */
    int ext_seen = 0;
    while (i < n) {
        while (i < n && is_ows(s[i])) i++;
        if (i == n) return ALB_HTTP_E_CHUNK_SIZE_INVALID; /* trailing whitespace */
        if (s[i] != ';') return ext_seen ? ALB_HTTP_E_CHUNK_EXT_INVALID
                                         : ALB_HTTP_E_CHUNK_SIZE_INVALID;
        ext_seen = 1;
        i++;
        while (i < n && is_ows(s[i])) i++;
        size_t k = i;
        while (i < n && is_tchar(s[i])) i++;
        if (i == k) return ALB_HTTP_E_CHUNK_EXT_INVALID;
        size_t j = i;
        while (j < n && is_ows(s[j])) j++;
        if (j < n && s[j] == '=') {
            i = j + 1;
            while (i < n && is_ows(s[i])) i++;
            if (i < n && s[i] == '"') {
                i++;
                for (;;) {
                    if (i == n) return ALB_HTTP_E_CHUNK_EXT_INVALID;
                    unsigned char c = (unsigned char)s[i];
                    if (c == '"') { i++; break; }
                    if (c == '\\') {
                        if (++i == n) return ALB_HTTP_E_CHUNK_EXT_INVALID;
                        c = (unsigned char)s[i];
                    }
                    if (!(c == '\t' || (c >= 0x20 && c != 0x7f)))
                        return ALB_HTTP_E_CHUNK_EXT_INVALID;
                    i++;
                }
            } else {
                k = i;
                while (i < n && is_tchar(s[i])) i++;
                if (i == k) return ALB_HTTP_E_CHUNK_EXT_INVALID;
            }
        }
    }
    CALL(p, on_chunk_header, size);
    if (size == 0) {
        p->state = S_TRAILER;
        p->sect_bytes = 0;
        p->sect_fields = 0;
    } else {
        p->remaining = size;
        p->state = S_CHUNK_DATA;
    }
    return ALB_HTTP_E_NONE;
}

/* One unit of progress: a line or a run of body bytes. Requires *pos < n. */
static enum alb_http_err step(alb_http_parser *p, const char *d, size_t n, size_t *pos)
{
    const char *l;
    size_t ll;
    int r;
    switch (p->state) {
    case S_START:
        r = take_line(p, d, n, pos, p->limits.max_start_line, &l, &ll);
        if (r == 0) return ALB_HTTP_E_NONE;
        if (r == -1) return ALB_HTTP_E_START_LINE_TOO_LONG;
        if (r == -2) return ALB_HTTP_E_BARE_LF;
        if (ll == 0) {
            if (++p->empty_lines > ALB_HTTP_MAX_EMPTY_LINES) return ALB_HTTP_E_BAD_REQUEST_LINE;
            return ALB_HTTP_E_NONE;
        }
        return start_line(p, l, ll);
    case S_HEADER:
    case S_TRAILER: {
        uint32_t budget = p->limits.max_header_bytes - p->sect_bytes;
        if (budget < 2) return ALB_HTTP_E_HEADERS_TOO_LARGE;
        size_t limit = p->limits.max_field_line;
        if (limit > budget - 2) limit = budget - 2;
        r = take_line(p, d, n, pos, limit, &l, &ll);
        if (r == 0) return ALB_HTTP_E_NONE;
        if (r == -1) return ALB_HTTP_E_HEADERS_TOO_LARGE;
        if (r == -2) return ALB_HTTP_E_BARE_LF;
        p->sect_bytes += (uint32_t)ll + 2;
        if (ll > 0) return field_line(p, l, ll, p->state == S_TRAILER);
        if (p->state == S_TRAILER) return finish_message(p);
        return headers_done(p);
    }
    case S_CHUNK_LINE:
        r = take_line(p, d, n, pos, p->limits.max_chunk_line, &l, &ll);
        if (r == 0) return ALB_HTTP_E_NONE;
        if (r == -1) return ALB_HTTP_E_CHUNK_LINE_TOO_LONG;
        if (r == -2) return ALB_HTTP_E_BARE_LF;
        return chunk_line(p, l, ll);
    case S_BODY_LEN:
    case S_CHUNK_DATA:
    case S_BODY_EOF: {
        size_t take = n - *pos;
        if (p->state != S_BODY_EOF && take > p->remaining) take = (size_t)p->remaining;
        const char *b = d + *pos;
        *pos += take;
        if (p->state != S_BODY_EOF) p->remaining -= take;
        if (p->remaining == 0 && p->state == S_CHUNK_DATA) p->state = S_CHUNK_CR;
        CALL(p, on_body, b, take);
        if (p->remaining == 0 && p->state == S_BODY_LEN) return finish_message(p);
        return ALB_HTTP_E_NONE;
    }
    case S_CHUNK_CR:
        if (d[*pos] != '\r') return ALB_HTTP_E_CHUNK_DATA_CRLF;
        (*pos)++;
        p->state = S_CHUNK_LF;
        return ALB_HTTP_E_NONE;
    case S_CHUNK_LF:
        if (d[*pos] != '\n') return ALB_HTTP_E_CHUNK_DATA_CRLF;
        (*pos)++;
        p->state = S_CHUNK_LINE;
        return ALB_HTTP_E_NONE;
    default:
        return ALB_HTTP_E_NONE;
    }
}

static enum alb_http_rc rc_for_state(const alb_http_parser *p)
{
    switch (p->state) {
    case S_ERROR: return ALB_HTTP_ERROR;
    case S_UPGRADE: return ALB_HTTP_UPGRADE;
    case S_CLOSED: return ALB_HTTP_CLOSED;
    default: return ALB_HTTP_OK;
    }
}

enum alb_http_rc alb_http_parser_execute(alb_http_parser *p, const char *data, size_t len,
                                         size_t *consumed)
{
    size_t pos = 0;
    enum alb_http_rc rc;
    p->pause = 0;
    for (;;) {
        rc = rc_for_state(p);
        if (rc != ALB_HTTP_OK) break;
        if (p->pause) {
            rc = ALB_HTTP_PAUSED;
            break;
        }
        if (pos == len) break;
        enum alb_http_err e = step(p, data, len, &pos);
        if (e) {
            p->error = e;
            p->state = S_ERROR;
        }
    }
    if (consumed) *consumed = pos;
    return rc;
}

enum alb_http_rc alb_http_parser_finish(alb_http_parser *p)
{
    enum alb_http_err e = ALB_HTTP_E_NONE;
    p->pause = 0;
    switch (p->state) {
    case S_BODY_EOF:
        p->msg.keep_alive = 0;
        e = finish_message(p);
        break;
    case S_START:
        if (p->line_len == 0) {
            p->state = S_CLOSED;
            break;
        }
        e = ALB_HTTP_E_UNEXPECTED_EOF;
        break;
    case S_ERROR:
    case S_UPGRADE:
    case S_CLOSED:
        break;
    default:
        e = ALB_HTTP_E_UNEXPECTED_EOF;
        break;
    }
    if (e) {
        p->error = e;
        p->state = S_ERROR;
    }
    return rc_for_state(p);
}

void alb_http_parser_resume_http(alb_http_parser *p)
{
    if (p->state != S_UPGRADE) return;
    p->msg.tunnel = 0;
    p->state = p->msg.keep_alive ? S_START : S_CLOSED;
}

const char *alb_http_err_name(enum alb_http_err e)
{
    static const char *const names[ALB_HTTP_E__COUNT] = {
        [ALB_HTTP_E_NONE] = "none",
        [ALB_HTTP_E_BARE_LF] = "bare_lf",
        [ALB_HTTP_E_BARE_CR] = "bare_cr",
        [ALB_HTTP_E_OBS_FOLD] = "obs_fold",
        [ALB_HTTP_E_START_LINE_TOO_LONG] = "start_line_too_long",
        [ALB_HTTP_E_BAD_REQUEST_LINE] = "bad_request_line",
        [ALB_HTTP_E_BAD_METHOD] = "bad_method",
        [ALB_HTTP_E_BAD_TARGET] = "bad_target",
        [ALB_HTTP_E_BAD_VERSION] = "bad_version",
        [ALB_HTTP_E_BAD_STATUS] = "bad_status",
        [ALB_HTTP_E_HEADERS_TOO_LARGE] = "headers_too_large",
        [ALB_HTTP_E_TOO_MANY_HEADERS] = "too_many_headers",
        [ALB_HTTP_E_HEADER_NAME_INVALID] = "header_name_invalid",
        [ALB_HTTP_E_HEADER_WS_BEFORE_COLON] = "header_ws_before_colon",
        [ALB_HTTP_E_HEADER_NO_COLON] = "header_no_colon",
        [ALB_HTTP_E_HEADER_VALUE_INVALID] = "header_value_invalid",
        [ALB_HTTP_E_CL_INVALID] = "cl_invalid",
        [ALB_HTTP_E_CL_CONFLICT] = "cl_conflict",
        [ALB_HTTP_E_CL_AND_TE] = "cl_and_te",
        [ALB_HTTP_E_TE_INVALID] = "te_invalid",
        [ALB_HTTP_E_TE_NOT_CHUNKED] = "te_not_chunked",
        [ALB_HTTP_E_TE_CHUNKED_NOT_LAST] = "te_chunked_not_last",
        [ALB_HTTP_E_TE_CHUNKED_TWICE] = "te_chunked_twice",
        [ALB_HTTP_E_TE_UNSUPPORTED] = "te_unsupported",
        [ALB_HTTP_E_TE_HTTP10] = "te_http10",
        [ALB_HTTP_E_HOST_MISSING] = "host_missing",
        [ALB_HTTP_E_HOST_DUPLICATE] = "host_duplicate",
        [ALB_HTTP_E_HOST_INVALID] = "host_invalid",
        [ALB_HTTP_E_CONNECT_BODY] = "connect_body",
        [ALB_HTTP_E_CHUNK_SIZE_INVALID] = "chunk_size_invalid",
        [ALB_HTTP_E_CHUNK_SIZE_TOO_LARGE] = "chunk_size_too_large",
        [ALB_HTTP_E_CHUNK_EXT_INVALID] = "chunk_ext_invalid",
        [ALB_HTTP_E_CHUNK_LINE_TOO_LONG] = "chunk_line_too_long",
        [ALB_HTTP_E_CHUNK_DATA_CRLF] = "chunk_data_crlf",
        [ALB_HTTP_E_UNEXPECTED_EOF] = "unexpected_eof",
        [ALB_HTTP_E_CALLBACK] = "callback",
    };
    if ((unsigned)e >= ALB_HTTP_E__COUNT || !names[e]) return "unknown";
    return names[e];
}

int alb_http_err_status(enum alb_http_err e)
{
    switch (e) {
    case ALB_HTTP_E_NONE: return 0;
    case ALB_HTTP_E_START_LINE_TOO_LONG: return 414;
    case ALB_HTTP_E_HEADERS_TOO_LARGE:
    case ALB_HTTP_E_TOO_MANY_HEADERS: return 431;
    case ALB_HTTP_E_TE_UNSUPPORTED: return 501;
    case ALB_HTTP_E_BAD_VERSION: return 505;
    case ALB_HTTP_E_CALLBACK: return 500;
    default: return 400;
    }
}
