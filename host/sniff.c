/*
 * sniff.c — the NLB protocol sniffer: one strict detector per protocol, each answering
 * MATCH / NEED_MORE / NO_MATCH for the bytes seen so far, and mp_sniff() combining them
 * in a fixed order. The detectors check structure (lengths that agree with each other,
 * fields that real clients fill a known way) rather than a magic byte or two, so random
 * bytes do not match and a prefix is rejected as soon as it cannot become a valid
 * message.
 *
 * Nothing here allocates or keeps state; every read is bounded by len, which mp_sniff()
 * first clamps to the per-protocol cap (MP_SNIFF_MAX_BYTES, or MP_SNIFF_MAX_TLS_BYTES
 * for TLS). The facts used come from RFC 8446/6066/7301 (TLS), RFC 9113 (HTTP/2
 * preface), RFC 9112 (HTTP/1.1), the PostgreSQL frontend/backend protocol chapter, the
 * Redis RESP spec, Adobe's RTMP spec plus what ffmpeg sends (see the RTMP section),
 * the MongoDB wire protocol and BSON 1.1 specs. The HMAC-SHA256 the RTMP check needs
 * comes from OpenSSL.
 */
#include "sniff.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>

/* ------------------------------------------------------------------ small helpers */

static uint32_t rd_be16(const uint8_t *p)
{
    return ((uint32_t)p[0] << 8) | p[1];
}

static uint32_t rd_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint32_t rd_le32(const uint8_t *p)
{
    return ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | p[0];
}

static bool is_alpha(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static bool is_digit(uint8_t c)
{
    return c >= '0' && c <= '9';
}

static bool is_visible(uint8_t c)
{
    return c >= 0x21 && c <= 0x7e;
}

/* RFC 9110 tchar: what a method or header field name may be made of. */
static bool is_tchar(uint8_t c)
{
    if (is_alpha(c) || is_digit(c))
        return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Copies n bytes as a C string if they fit in cap (with the NUL); otherwise leaves dst
 * empty, because a cut-off name would route as a different name. */
static bool copy_whole(char *dst, size_t cap, const uint8_t *src, size_t n)
{
    if (n >= cap) {
        dst[0] = '\0';
        return false;
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
    return true;
}

/* Compares the bytes present against a fixed literal: the literal's prefix so far is
 * still alive, a difference anywhere is final. */
static mp_sniff_result match_literal(const uint8_t *buf, size_t len, const char *lit,
                                     size_t litlen)
{
    size_t n = len < litlen ? len : litlen;
    if (memcmp(buf, lit, n) != 0)
        return MP_SNIFF_NO_MATCH;
    return len >= litlen ? MP_SNIFF_MATCH : MP_SNIFF_NEED_MORE;
}

/* ------------------------------------------------------------------ TLS ClientHello */

/*
 * The ClientHello is read as one byte stream across however many handshake records
 * carry it (a client may fragment it, and large post-quantum key shares make that
 * likely), so the parser below never sees record boundaries. Every read either
 * succeeds or records why it could not: NEED_MORE when the buffer ended, NO_MATCH when
 * a record header or a length was wrong. The first failure sticks and ends the parse.
 */
typedef struct tls_rd {
    const uint8_t *buf;
    size_t len;
    size_t pos;        /* offset in buf of the next handshake byte */
    size_t rec_left;   /* handshake bytes still in the current record */
    size_t hs_off;     /* handshake bytes consumed so far */
    size_t hs_end;     /* hs_off may not pass this (the declared message end) */
    mp_sniff_result fail;
    size_t need;
} tls_rd;

#define TLS_RECORD_MAX 16384u
#define TLS_CONTENT_HANDSHAKE 0x16
#define TLS_HS_CLIENT_HELLO 1
#define TLS_EXT_SERVER_NAME 0
#define TLS_EXT_ALPN 16

static bool tls_failed(tls_rd *r, mp_sniff_result why, size_t need)
{
    if (r->fail == MP_SNIFF_MATCH) {
        r->fail = why;
        r->need = need;
    }
    return false;
}

/* Steps over a record header at r->pos. Versions 3.0-3.4 only: SSLv2-framed hellos
 * are long dead and would only widen what garbage can match. A zero-length handshake
 * record is forbidden (RFC 8446 5.1), and a record that could not fit in the TLS
 * budget means the hello never will either. */
static bool tls_next_record(tls_rd *r)
{
    const uint8_t *h = r->buf + r->pos;
    size_t have = r->len - r->pos;
    if (have >= 1 && h[0] != TLS_CONTENT_HANDSHAKE)
        return tls_failed(r, MP_SNIFF_NO_MATCH, 0);
    if (have >= 2 && h[1] != 0x03)
        return tls_failed(r, MP_SNIFF_NO_MATCH, 0);
    if (have >= 3 && h[2] > 0x04)
        return tls_failed(r, MP_SNIFF_NO_MATCH, 0);
    if (have >= 4 && h[3] > (TLS_RECORD_MAX >> 8))
        return tls_failed(r, MP_SNIFF_NO_MATCH, 0);
    if (have < 5)
        return tls_failed(r, MP_SNIFF_NEED_MORE, r->pos + 5);
    size_t rlen = rd_be16(h + 3);
    if (rlen == 0 || rlen > TLS_RECORD_MAX || r->pos + 5 + rlen > MP_SNIFF_MAX_TLS_BYTES)
        return tls_failed(r, MP_SNIFF_NO_MATCH, 0);
    r->pos += 5;
    r->rec_left = rlen;
    return true;
}

static bool tls_u8(tls_rd *r, uint8_t *v)
{
    if (r->fail != MP_SNIFF_MATCH)
        return false;
    if (r->hs_off >= r->hs_end)
        return tls_failed(r, MP_SNIFF_NO_MATCH, 0);
    if (r->rec_left == 0 && !tls_next_record(r))
        return false;
    if (r->pos >= r->len)
        return tls_failed(r, MP_SNIFF_NEED_MORE, r->pos + r->rec_left);
    *v = r->buf[r->pos++];
    r->rec_left--;
    r->hs_off++;
    return true;
}

static bool tls_u16(tls_rd *r, uint32_t *v)
{
    uint8_t a = 0, b = 0;
    if (!tls_u8(r, &a) || !tls_u8(r, &b))
        return false;
    *v = ((uint32_t)a << 8) | b;
    return true;
}

static bool tls_skip(tls_rd *r, size_t n)
{
    uint8_t c;
    while (n-- > 0)
        if (!tls_u8(r, &c))
            return false;
    return true;
}

/* RFC 6066 3: a list holding at most one host_name. Other name types are skipped as
 * the RFC asks; a host_name with a NUL in it is an attack on C string handling, not a
 * name, and makes the hello invalid. */
static bool tls_server_name(tls_rd *r, size_t ext_len, mp_sniff_info *out)
{
    uint32_t list_len = 0;
    if (ext_len < 2)
        return tls_failed(r, MP_SNIFF_NO_MATCH, 0);
    if (!tls_u16(r, &list_len))
        return false;
    if (list_len == 0 || list_len != ext_len - 2)
        return tls_failed(r, MP_SNIFF_NO_MATCH, 0);
    size_t end = r->hs_off + list_len;
    bool have_host = false;
    while (r->hs_off < end) {
        uint8_t type = 0;
        uint32_t name_len = 0;
        if (end - r->hs_off < 3)
            return tls_failed(r, MP_SNIFF_NO_MATCH, 0);
        if (!tls_u8(r, &type) || !tls_u16(r, &name_len))
            return false;
        if (name_len == 0 || name_len > end - r->hs_off)
            return tls_failed(r, MP_SNIFF_NO_MATCH, 0);
        if (type != 0) {
            if (!tls_skip(r, name_len))
                return false;
            continue;
        }
        if (have_host)
            return tls_failed(r, MP_SNIFF_NO_MATCH, 0);
        have_host = true;
        for (size_t i = 0; i < name_len; i++) {
            uint8_t c = 0;
            if (!tls_u8(r, &c))
                return false;
            if (c == 0)
                return tls_failed(r, MP_SNIFF_NO_MATCH, 0);
            if (name_len < sizeof(out->sni))
                out->sni[i] = (char)c;
        }
        if (name_len < sizeof(out->sni))
            out->sni[name_len] = '\0';
    }
    return true;
}

/* RFC 7301 3.1: a non-empty list of non-empty names. */
static bool tls_alpn(tls_rd *r, size_t ext_len, mp_sniff_info *out)
{
    uint32_t list_len = 0;
    if (ext_len < 2)
        return tls_failed(r, MP_SNIFF_NO_MATCH, 0);
    if (!tls_u16(r, &list_len))
        return false;
    if (list_len < 2 || list_len != ext_len - 2)
        return tls_failed(r, MP_SNIFF_NO_MATCH, 0);
    size_t end = r->hs_off + list_len;
    while (r->hs_off < end) {
        uint8_t plen = 0;
        if (!tls_u8(r, &plen))
            return false;
        if (plen == 0 || plen > end - r->hs_off)
            return tls_failed(r, MP_SNIFF_NO_MATCH, 0);
        bool keep = out->n_alpn < MP_SNIFF_ALPN_MAX && plen < MP_SNIFF_ALPN_LEN;
        char *dst = keep ? out->alpn[out->n_alpn] : NULL;
        for (size_t i = 0; i < plen; i++) {
            uint8_t c = 0;
            if (!tls_u8(r, &c))
                return false;
            if (c == 0)
                keep = false; /* legal in ALPN, but not representable as a C string */
            if (dst)
                dst[i] = (char)c;
        }
        if (keep) {
            dst[plen] = '\0';
            out->n_alpn++;
        } else if (dst) {
            dst[0] = '\0';
        }
    }
    return true;
}

static mp_sniff_result sniff_tls(const uint8_t *buf, size_t len, mp_sniff_info *out,
                                 size_t *hint)
{
    tls_rd r = {.buf = buf, .len = len, .hs_end = 4, .fail = MP_SNIFF_MATCH};
    uint8_t type = 0, b = 0;
    uint32_t v16 = 0;

    if (!tls_u8(&r, &type))
        goto out;
    if (type != TLS_HS_CLIENT_HELLO) {
        tls_failed(&r, MP_SNIFF_NO_MATCH, 0);
        goto out;
    }
    uint32_t body_len = 0;
    for (int i = 0; i < 3; i++) {
        if (!tls_u8(&r, &b))
            goto out;
        body_len = (body_len << 8) | b;
    }
    /* version(2) random(32) session_id(1+) cipher_suites(2+2) compression(1+1) */
    if (body_len < 41 || 5 + 4 + (size_t)body_len > MP_SNIFF_MAX_TLS_BYTES) {
        tls_failed(&r, MP_SNIFF_NO_MATCH, 0);
        goto out;
    }
    r.hs_end = 4 + (size_t)body_len;

    uint8_t vmaj = 0, vmin = 0;
    if (!tls_u8(&r, &vmaj) || !tls_u8(&r, &vmin))
        goto out;
    if (vmaj != 3 || vmin > 4) {
        tls_failed(&r, MP_SNIFF_NO_MATCH, 0);
        goto out;
    }
    if (!tls_skip(&r, 32))
        goto out;
    if (!tls_u8(&r, &b))
        goto out;
    if (b > 32) {
        tls_failed(&r, MP_SNIFF_NO_MATCH, 0);
        goto out;
    }
    if (!tls_skip(&r, b) || !tls_u16(&r, &v16))
        goto out;
    if (v16 < 2 || (v16 & 1)) {
        tls_failed(&r, MP_SNIFF_NO_MATCH, 0);
        goto out;
    }
    if (!tls_skip(&r, v16) || !tls_u8(&r, &b))
        goto out;
    if (b < 1) {
        tls_failed(&r, MP_SNIFF_NO_MATCH, 0);
        goto out;
    }
    if (!tls_skip(&r, b))
        goto out;

    /* Extensions are optional before TLS 1.3; when present their block must end
     * exactly where the handshake message does. */
    if (r.hs_off < r.hs_end) {
        uint32_t ext_total = 0;
        if (!tls_u16(&r, &ext_total))
            goto out;
        if (r.hs_off + ext_total != r.hs_end) {
            tls_failed(&r, MP_SNIFF_NO_MATCH, 0);
            goto out;
        }
        bool seen_sni = false, seen_alpn = false;
        while (r.hs_off < r.hs_end) {
            uint32_t etype = 0, elen = 0;
            if (r.hs_end - r.hs_off < 4) {
                tls_failed(&r, MP_SNIFF_NO_MATCH, 0);
                goto out;
            }
            if (!tls_u16(&r, &etype) || !tls_u16(&r, &elen))
                goto out;
            if (elen > r.hs_end - r.hs_off) {
                tls_failed(&r, MP_SNIFF_NO_MATCH, 0);
                goto out;
            }
            size_t ext_end = r.hs_off + elen;
            bool ok;
            if (etype == TLS_EXT_SERVER_NAME) {
                if (seen_sni) {
                    tls_failed(&r, MP_SNIFF_NO_MATCH, 0);
                    goto out;
                }
                seen_sni = true;
                ok = tls_server_name(&r, elen, out);
            } else if (etype == TLS_EXT_ALPN) {
                if (seen_alpn) {
                    tls_failed(&r, MP_SNIFF_NO_MATCH, 0);
                    goto out;
                }
                seen_alpn = true;
                ok = tls_alpn(&r, elen, out);
            } else {
                ok = tls_skip(&r, elen);
            }
            if (!ok)
                goto out;
            if (r.hs_off != ext_end) {
                tls_failed(&r, MP_SNIFF_NO_MATCH, 0);
                goto out;
            }
        }
    }
    /* The client sends nothing else before the server answers, so the hello ends its
     * record; bytes left over mean the lengths disagree. */
    if (r.rec_left != 0) {
        tls_failed(&r, MP_SNIFF_NO_MATCH, 0);
        goto out;
    }
    *hint = r.pos;
    return MP_SNIFF_MATCH;

out:
    *hint = r.need;
    return r.fail;
}

/* ------------------------------------------------------------------ HTTP/2 preface */

static const char h2_preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

static mp_sniff_result sniff_http2(const uint8_t *buf, size_t len, mp_sniff_info *out,
                                   size_t *hint)
{
    size_t n = sizeof(h2_preface) - 1;
    mp_sniff_result r = match_literal(buf, len, h2_preface, n);
    *hint = n;
    return r;
}

/* ------------------------------------------------------------------ HTTP/1.x */

static const char *const http_methods[] = {
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
};
#define N_HTTP_METHODS ((int)(sizeof(http_methods) / sizeof(http_methods[0])))
#define HTTP_METHOD_CONNECT 5
#define HTTP_METHOD_OPTIONS 6
#define HTTP_METHOD_LONGEST 7

enum { TARGET_ORIGIN, TARGET_ABSOLUTE, TARGET_AUTHORITY, TARGET_ASTERISK };

static bool is_scheme_char(uint8_t c)
{
    return is_alpha(c) || is_digit(c) || c == '+' || c == '-' || c == '.';
}

/*
 * RFC 9112 3.2: which of the four target forms t[0..n) is, given the method. complete
 * says whether the SP after it has been seen; a target still arriving is only refused
 * once no continuation could make it valid. Characters were already checked to be
 * visible ASCII.
 */
static mp_sniff_result http_target(const uint8_t *t, size_t n, bool complete, int method,
                                   int *form)
{
    const mp_sniff_result cont = complete ? MP_SNIFF_MATCH : MP_SNIFF_NEED_MORE;
    if (n == 0)
        return complete ? MP_SNIFF_NO_MATCH : MP_SNIFF_NEED_MORE;

    if (method == HTTP_METHOD_CONNECT) {
        /* authority-form: host ":" port, nothing else */
        size_t colon = n;
        for (size_t i = 0; i < n; i++) {
            if (t[i] == '/' || t[i] == '?' || t[i] == '#' || t[i] == '@')
                return MP_SNIFF_NO_MATCH;
            if (t[i] == ':')
                colon = i;
        }
        *form = TARGET_AUTHORITY;
        if (!complete)
            return cont;
        if (colon == 0 || colon >= n - 1)
            return MP_SNIFF_NO_MATCH;
        for (size_t i = colon + 1; i < n; i++)
            if (!is_digit(t[i]))
                return MP_SNIFF_NO_MATCH;
        return cont;
    }
    if (t[0] == '/') {
        *form = TARGET_ORIGIN;
        return cont;
    }
    if (t[0] == '*') {
        if (method != HTTP_METHOD_OPTIONS || n > 1)
            return MP_SNIFF_NO_MATCH;
        *form = TARGET_ASTERISK;
        return cont;
    }
    /* absolute-form, as a proxy sees it: scheme "://" authority [path] */
    if (!is_alpha(t[0]))
        return MP_SNIFF_NO_MATCH;
    size_t i = 1;
    while (i < n && t[i] != ':') {
        if (!is_scheme_char(t[i]))
            return MP_SNIFF_NO_MATCH;
        i++;
    }
    static const char sep[] = "://";
    for (size_t k = 0; k < 3; k++, i++) {
        if (i >= n)
            return complete ? MP_SNIFF_NO_MATCH : MP_SNIFF_NEED_MORE;
        if (t[i] != (uint8_t)sep[k])
            return MP_SNIFF_NO_MATCH;
    }
    *form = TARGET_ABSOLUTE;
    if (complete && (i >= n || t[i] == '/' || t[i] == '?' || t[i] == '#'))
        return MP_SNIFF_NO_MATCH; /* empty authority */
    return cont;
}

static void http_set_path(mp_sniff_info *out, const uint8_t *p, size_t n, bool slash)
{
    size_t cap = sizeof(out->path) - 1, at = 0;
    if (slash)
        out->path[at++] = '/';
    size_t room = cap - at;
    if (n > room) {
        n = room;
        out->path_truncated = true;
    }
    memcpy(out->path + at, p, n);
    out->path[at + n] = '\0';
}

/* Fills path and, for the forms that carry one, host from the request target. */
static bool http_fill_target(mp_sniff_info *out, const uint8_t *t, size_t n, int form)
{
    switch (form) {
    case TARGET_ORIGIN:
    case TARGET_ASTERISK:
        http_set_path(out, t, n, false);
        return false;
    case TARGET_AUTHORITY:
        copy_whole(out->host, sizeof(out->host), t, n);
        return true;
    default:
        break;
    }
    const uint8_t *a = (const uint8_t *)memchr(t, ':', n) + 3;
    const uint8_t *end = t + n, *p = a;
    while (p < end && *p != '/' && *p != '?' && *p != '#')
        p++;
    const uint8_t *h = a;
    for (const uint8_t *q = a; q < p; q++)
        if (*q == '@')
            h = q + 1; /* userinfo is not part of the host */
    copy_whole(out->host, sizeof(out->host), h, (size_t)(p - h));
    if (p == end)
        http_set_path(out, p, 0, true);
    else
        http_set_path(out, p, (size_t)(end - p), *p != '/');
    return true;
}

/* Looks through the complete header lines present for the first Host field. Stops at
 * the blank line, at a line still arriving, or at anything that is not a field line:
 * the request is already decided, so this only collects what is there. */
static void http_find_host(const uint8_t *buf, size_t len, size_t p, mp_sniff_info *out)
{
    while (p < len) {
        size_t e = p;
        while (e + 1 < len && !(buf[e] == '\r' && buf[e + 1] == '\n'))
            e++;
        if (e + 1 >= len || e == p)
            return;
        size_t c = p;
        while (c < e && is_tchar(buf[c]))
            c++;
        if (c == p || c >= e || buf[c] != ':')
            return;
        if (c - p == 4 && strncasecmp((const char *)buf + p, "host", 4) == 0) {
            size_t v0 = c + 1, v1 = e;
            while (v0 < v1 && (buf[v0] == ' ' || buf[v0] == '\t'))
                v0++;
            while (v1 > v0 && (buf[v1 - 1] == ' ' || buf[v1 - 1] == '\t'))
                v1--;
            for (size_t i = v0; i < v1; i++)
                if (!is_visible(buf[i]))
                    return;
            copy_whole(out->host, sizeof(out->host), buf + v0, v1 - v0);
            return;
        }
        p = e + 2;
    }
}

static mp_sniff_result sniff_http1(const uint8_t *buf, size_t len, mp_sniff_info *out,
                                   size_t *hint)
{
    *hint = len + 1;

    /* method SP: one of the known methods, exactly (methods are case-sensitive) */
    size_t scan = len < HTTP_METHOD_LONGEST + 1 ? len : HTTP_METHOD_LONGEST + 1;
    size_t sp = 0;
    while (sp < scan && buf[sp] != ' ')
        sp++;
    int method = -1;
    bool prefix_alive = false;
    for (int i = 0; i < N_HTTP_METHODS; i++) {
        size_t mlen = strlen(http_methods[i]);
        if (sp < scan) {
            if (sp == mlen && memcmp(buf, http_methods[i], mlen) == 0)
                method = i;
        } else if (sp <= mlen && memcmp(buf, http_methods[i], sp) == 0) {
            prefix_alive = true;
        }
    }
    if (sp >= scan)
        return prefix_alive ? MP_SNIFF_NEED_MORE : MP_SNIFF_NO_MATCH;
    if (method < 0)
        return MP_SNIFF_NO_MATCH;

    /* request-target SP */
    size_t t0 = sp + 1, t1 = t0;
    while (t1 < len && buf[t1] != ' ') {
        if (!is_visible(buf[t1]))
            return MP_SNIFF_NO_MATCH;
        t1++;
    }
    int form = TARGET_ORIGIN;
    mp_sniff_result tr = http_target(buf + t0, t1 - t0, t1 < len, method, &form);
    if (tr != MP_SNIFF_MATCH)
        return tr;

    /* "HTTP/1." DIGIT CRLF */
    size_t v0 = t1 + 1;
    static const char ver[] = "HTTP/1.";
    mp_sniff_result vr = match_literal(buf + v0, len - v0, ver, sizeof(ver) - 1);
    if (vr != MP_SNIFF_MATCH)
        return vr;
    size_t d = v0 + sizeof(ver) - 1;
    if (d >= len)
        return MP_SNIFF_NEED_MORE;
    if (!is_digit(buf[d]))
        return MP_SNIFF_NO_MATCH;
    mp_sniff_result er = match_literal(buf + d + 1, len - d - 1, "\r\n", 2);
    if (er != MP_SNIFF_MATCH)
        return er;

    size_t line_end = d + 3;
    memcpy(out->method, http_methods[method], strlen(http_methods[method]) + 1);
    out->http_minor = buf[d] - '0';
    bool host_from_target = http_fill_target(out, buf + t0, t1 - t0, form);
    if (!host_from_target)
        http_find_host(buf, len, line_end, out);
    *hint = line_end;
    return MP_SNIFF_MATCH;
}

/* ------------------------------------------------------------------ PostgreSQL */

#define PG_CODE_CANCEL 80877102u
#define PG_CODE_SSL 80877103u
#define PG_CODE_GSSENC 80877104u
#define PG_PROTO_MAJOR 3u
/* The server refuses larger startup packets (MAX_STARTUP_PACKET_LENGTH). */
#define PG_STARTUP_MAX 10000u
/* "user\0" "x\0" "\0" after length and version: the smallest useful startup. */
#define PG_STARTUP_MIN 16u
/* Protocol 3.2 made the cancel key 4..256 bytes after the 8 bytes of length, code
 * and process id. */
#define PG_CANCEL_MIN 16u
#define PG_CANCEL_MAX 268u

/* Could a message whose length field is L and whose code starts with the `have` bytes
 * at c still be valid? Used while the first 8 bytes are arriving. */
static bool pg_code_prefix_ok(uint32_t L, const uint8_t *c, size_t have)
{
    static const uint32_t fixed[] = {PG_CODE_SSL, PG_CODE_GSSENC, PG_CODE_CANCEL};
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        bool len_ok = fixed[i] == PG_CODE_CANCEL ? (L >= PG_CANCEL_MIN && L <= PG_CANCEL_MAX)
                                                 : L == 8;
        uint8_t want[4] = {(uint8_t)(fixed[i] >> 24), (uint8_t)(fixed[i] >> 16),
                           (uint8_t)(fixed[i] >> 8), (uint8_t)fixed[i]};
        if (len_ok && memcmp(c, want, have) == 0)
            return true;
    }
    if (L < PG_STARTUP_MIN)
        return false;
    static const uint8_t major[2] = {0, PG_PROTO_MAJOR};
    return memcmp(c, major, have < 2 ? have : 2) == 0;
}

/*
 * The startup message's parameters: name NUL value NUL pairs, then one NUL that must
 * be the message's last byte. Names are GUC-like identifiers (printable, no space);
 * values are any bytes. A startup message without a user is refused by every server,
 * so it is not taken for PostgreSQL.
 *
 * Only the first `have` bytes (<= L) are present. Running out before L is NEED_MORE,
 * unless the message is longer than the sniff budget and that budget is used up:
 * then the pairs seen so far decide.
 */
static mp_sniff_result pg_startup(const uint8_t *buf, size_t len, uint32_t L,
                                  mp_sniff_info *out, size_t *hint)
{
    size_t need = L < MP_SNIFF_MAX_BYTES ? L : MP_SNIFF_MAX_BYTES;
    size_t have = len < L ? len : L;
    size_t p = 8;
    bool user = false;
    *hint = need;

    for (;;) {
        if (p >= have)
            break;
        if (buf[p] == 0) {
            if (p != (size_t)L - 1)
                return MP_SNIFF_NO_MATCH;
            if (!user)
                return MP_SNIFF_NO_MATCH;
            *hint = L;
            return MP_SNIFF_MATCH;
        }
        size_t n0 = p;
        while (p < have && buf[p] != 0) {
            if (!is_visible(buf[p]))
                return MP_SNIFF_NO_MATCH;
            p++;
        }
        if (p >= have)
            break;
        size_t nlen = p - n0, v0 = ++p;
        while (p < have && buf[p] != 0)
            p++;
        if (p >= have)
            break;
        size_t vlen = p - v0;
        p++;
        if (p > (size_t)L - 1)
            return MP_SNIFF_NO_MATCH; /* the pair swallowed the terminator */
        if (nlen == 4 && memcmp(buf + n0, "user", 4) == 0 && !user && vlen > 0) {
            user = true;
            copy_whole(out->pg_user, sizeof(out->pg_user), buf + v0, vlen);
        } else if (nlen == 8 && memcmp(buf + n0, "database", 8) == 0 && !out->pg_database[0]) {
            copy_whole(out->pg_database, sizeof(out->pg_database), buf + v0, vlen);
        }
    }
    /* Out of bytes. */
    if (have >= L)
        return MP_SNIFF_NO_MATCH;
    if (len < need)
        return MP_SNIFF_NEED_MORE;
    return user ? MP_SNIFF_MATCH : MP_SNIFF_NO_MATCH;
}

static mp_sniff_result sniff_pg(const uint8_t *buf, size_t len, mp_sniff_info *out,
                                size_t *hint)
{
    *hint = 8;
    /* The length is big-endian and at most PG_STARTUP_MAX (0x2710). */
    if (buf[0] != 0 || (len >= 2 && buf[1] > (PG_STARTUP_MAX >> 16)))
        return MP_SNIFF_NO_MATCH;
    if (len >= 3 && buf[1] == 0 && buf[2] > (PG_STARTUP_MAX >> 8))
        return MP_SNIFF_NO_MATCH;
    if (len < 4)
        return MP_SNIFF_NEED_MORE;
    uint32_t L = rd_be32(buf);
    if (L != 8 && (L < PG_STARTUP_MIN || L > PG_STARTUP_MAX))
        return MP_SNIFF_NO_MATCH;
    if (len < 8)
        return pg_code_prefix_ok(L, buf + 4, len - 4) ? MP_SNIFF_NEED_MORE
                                                      : MP_SNIFF_NO_MATCH;
    uint32_t code = rd_be32(buf + 4);
    switch (code) {
    case PG_CODE_SSL:
    case PG_CODE_GSSENC:
        if (L != 8)
            return MP_SNIFF_NO_MATCH;
        if (code == PG_CODE_SSL)
            out->pg_ssl_request = true;
        else
            out->pg_gss_request = true;
        return MP_SNIFF_MATCH;
    case PG_CODE_CANCEL:
        if (L < PG_CANCEL_MIN || L > PG_CANCEL_MAX)
            return MP_SNIFF_NO_MATCH;
        *hint = L;
        if (len < L)
            return MP_SNIFF_NEED_MORE;
        out->pg_cancel = true;
        return MP_SNIFF_MATCH;
    default:
        break;
    }
    /* Any 3.x: servers answer a newer minor with NegotiateProtocolVersion, so a
     * client asking for 3.2 (PostgreSQL 18) or later is still speaking PostgreSQL. */
    if ((code >> 16) != PG_PROTO_MAJOR || L < PG_STARTUP_MIN)
        return MP_SNIFF_NO_MATCH;
    return pg_startup(buf, len, L, out, hint);
}

/* ------------------------------------------------------------------ Redis RESP */

/* Most elements an array may announce (redis' own multibulk limit), and the longest
 * command name taken: real names are short ("CLIENT", "JSON.SET", "FT._LIST"). */
#define RESP_MAX_ARGS 1048576u
#define RESP_MAX_CMD 64u

/* Parses decimal digits up to CRLF at *p into lo..hi. No sign, no leading zero: redis
 * itself rejects those in length fields. */
static mp_sniff_result resp_number(const uint8_t *buf, size_t len, size_t *p, uint32_t lo,
                                   uint32_t hi)
{
    size_t i = *p;
    uint64_t n = 0;
    size_t digits = 0;
    for (;;) {
        if (i >= len)
            return MP_SNIFF_NEED_MORE;
        uint8_t c = buf[i];
        if (c == '\r')
            break;
        if (!is_digit(c) || (digits == 0 && c == '0'))
            return MP_SNIFF_NO_MATCH;
        n = n * 10 + (uint64_t)(c - '0');
        if (n > hi)
            return MP_SNIFF_NO_MATCH;
        digits++;
        i++;
    }
    if (digits == 0 || n < lo)
        return MP_SNIFF_NO_MATCH;
    mp_sniff_result r = match_literal(buf + i, len - i, "\r\n", 2);
    if (r == MP_SNIFF_MATCH)
        *p = i + 2;
    return r;
}

static bool resp_cmd_char(uint8_t c, bool first)
{
    if (first)
        return is_alpha(c);
    return is_alpha(c) || is_digit(c) || c == '.' || c == '_' || c == '-';
}

/* "*" N CRLF "$" L CRLF name CRLF: the array of bulk strings redis-cli and every
 * client library send, checked through its first element, the command name. */
static mp_sniff_result sniff_resp(const uint8_t *buf, size_t len, mp_sniff_info *out,
                                  size_t *hint)
{
    *hint = len + 1;
    if (buf[0] != '*')
        return MP_SNIFF_NO_MATCH;
    size_t p = 1;
    mp_sniff_result r = resp_number(buf, len, &p, 1, RESP_MAX_ARGS);
    if (r != MP_SNIFF_MATCH)
        return r;
    if (p >= len)
        return MP_SNIFF_NEED_MORE;
    if (buf[p++] != '$')
        return MP_SNIFF_NO_MATCH;
    size_t l0 = p;
    r = resp_number(buf, len, &p, 1, RESP_MAX_CMD);
    if (r != MP_SNIFF_MATCH)
        return r;
    size_t name_len = 0;
    for (size_t i = l0; buf[i] != '\r'; i++)
        name_len = name_len * 10 + (size_t)(buf[i] - '0');
    for (size_t i = 0; i < name_len; i++, p++) {
        if (p >= len)
            return MP_SNIFF_NEED_MORE;
        if (!resp_cmd_char(buf[p], i == 0))
            return MP_SNIFF_NO_MATCH;
    }
    r = match_literal(buf + p, len - p, "\r\n", 2);
    if (r == MP_SNIFF_MATCH)
        *hint = p + 2;
    else if (r == MP_SNIFF_NEED_MORE)
        *hint = p + 2;
    return r;
}

/* ------------------------------------------------------------------ HMAC */

/* HMAC-SHA256 over the concatenation of two slices (the C1 around its digest), with
 * OpenSSL. Returns false if OpenSSL fails, which then counts as no digest. */
static bool hmac_sha256_2(const uint8_t *key, size_t klen, const uint8_t *a, size_t alen,
                          const uint8_t *b, size_t blen, uint8_t out[32])
{
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA256", 0),
                           OSSL_PARAM_construct_end()};
    size_t n = 0;
    bool ok = ctx && EVP_MAC_init(ctx, key, klen, params) && EVP_MAC_update(ctx, a, alen) &&
              EVP_MAC_update(ctx, b, blen) && EVP_MAC_final(ctx, out, &n, 32) && n == 32;
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
    return ok;
}

/* ------------------------------------------------------------------ RTMP */

/*
 * Adobe's spec describes C1 as time(4) zero(4) random(1528), and clients using that
 * "simple" handshake (librtmp, GStreamer's rtmp2) do send four zero bytes. ffmpeg, like
 * Flash Player, sends the "complex" handshake instead (checked against a capture of
 * ffmpeg 5.1): time 0, then its claimed player version 9.0.124.2 where the zeros
 * would be, and an HMAC-SHA256 digest keyed with "Genuine Adobe Flash Player 001"
 * placed at (sum of C1[8..11]) % 728 + 12, over all of C1 but the digest itself.
 * Servers (nginx-rtmp, SRS) look for that digest at that offset or at the alternate
 * one based on C1[772..775], and refuse a C1 with a version but no digest. So a C1 is
 * valid when its second word is zero or a digest verifies at either offset: anything
 * else is what servers themselves reject, and random bytes never pass.
 */
#define RTMP_C0_PLAIN 0x03
#define RTMP_C1_LEN 1536u
#define RTMP_DIGEST_LEN 32u

static const uint8_t rtmp_client_key[] = "Genuine Adobe Flash Player 001";

static bool rtmp_digest_at(const uint8_t *c1, size_t base)
{
    size_t off = ((size_t)c1[base] + c1[base + 1] + c1[base + 2] + c1[base + 3]) % 728 +
                 base + 4;
    uint8_t mac[32];
    return hmac_sha256_2(rtmp_client_key, sizeof(rtmp_client_key) - 1, c1, off,
                         c1 + off + RTMP_DIGEST_LEN, RTMP_C1_LEN - off - RTMP_DIGEST_LEN, mac) &&
           memcmp(mac, c1 + off, RTMP_DIGEST_LEN) == 0;
}

static mp_sniff_result sniff_rtmp(const uint8_t *buf, size_t len, mp_sniff_info *out,
                                  size_t *hint)
{
    *hint = 1 + RTMP_C1_LEN;
    /* 0x06 and 0x08 are RTMPE: encrypted, nothing a plain RTMP route can serve. */
    if (buf[0] != RTMP_C0_PLAIN)
        return MP_SNIFF_NO_MATCH;
    if (len < 1 + RTMP_C1_LEN)
        return MP_SNIFF_NEED_MORE;
    const uint8_t *c1 = buf + 1;
    if (rd_be32(c1 + 4) == 0)
        return MP_SNIFF_MATCH;
    if (rtmp_digest_at(c1, 8) || rtmp_digest_at(c1, 772))
        return MP_SNIFF_MATCH;
    return MP_SNIFF_NO_MATCH;
}

/* ------------------------------------------------------------------ MongoDB */

#define MONGO_OP_QUERY 2004u
#define MONGO_OP_MSG 2013u
#define MONGO_MIN_MSG 21u
/* The server's maxMessageSizeBytes (48,000,000, a little under 48 MiB). */
#define MONGO_MAX_MSG 48000000u
/* OP_MSG flagBits: checksumPresent(0), moreToCome(1) and exhaustAllowed(16) are the
 * only ones defined; the spec makes unknown bits 0-15 an error. */
#define MONGO_MSG_FLAGS_KNOWN 0x00010003u
#define MONGO_MSG_CHECKSUM 0x1u
/* OP_QUERY flags: bit 0 reserved, 1-7 defined, the rest reserved. */
#define MONGO_QUERY_FLAGS_KNOWN 0x000000feu

/*
 * Walks one BSON document's top-level elements (BSON 1.1). The document starts at
 * buf[d] and declares dlen bytes; only the bytes before `have` are present. Answers
 * MATCH when the whole document is well-formed, NEED_MORE when it is so far but
 * continues past `have`, NO_MATCH on a structural error. The first key is handed back
 * (as an offset into buf) for callers that care which command this is.
 */
static mp_sniff_result bson_walk(const uint8_t *buf, size_t have, size_t d, size_t dlen,
                                 size_t *first_key, size_t *first_key_len)
{
    size_t end = d + dlen;
    size_t lim = have < end ? have : end;
    const mp_sniff_result short_ = lim < end ? MP_SNIFF_NEED_MORE : MP_SNIFF_NO_MATCH;
    size_t p = d + 4;
    bool first = true;

    for (;;) {
        if (p >= lim)
            return short_;
        uint8_t type = buf[p++];
        if (type == 0)
            return p == end ? MP_SNIFF_MATCH : MP_SNIFF_NO_MATCH;
        size_t k0 = p;
        while (p < lim && buf[p] != 0)
            p++;
        if (p >= lim)
            return short_;
        if (first) {
            *first_key = k0;
            *first_key_len = p - k0;
            first = false;
        }
        p++;
        size_t vsize;
        switch (type) {
        case 0x01: /* double */
        case 0x09: /* UTC datetime */
        case 0x11: /* timestamp */
        case 0x12: /* int64 */
            vsize = 8;
            break;
        case 0x10: /* int32 */
            vsize = 4;
            break;
        case 0x07: /* ObjectId */
            vsize = 12;
            break;
        case 0x13: /* decimal128 */
            vsize = 16;
            break;
        case 0x08: /* bool */
            if (p < lim && buf[p] > 1)
                return MP_SNIFF_NO_MATCH;
            vsize = 1;
            break;
        case 0x06: /* undefined */
        case 0x0a: /* null */
        case 0x7f: /* max key */
        case 0xff: /* min key */
            vsize = 0;
            break;
        case 0x02: /* string */
        case 0x0d: /* JavaScript code */
        case 0x0e: /* symbol */
        case 0x0c: /* DBPointer: string then ObjectId */
        case 0x03: /* document */
        case 0x04: /* array */
        case 0x05: /* binary */
        case 0x0f: { /* code with scope */
            if (p + 4 > lim)
                return short_;
            uint32_t n = rd_le32(buf + p);
            if (n > end - p)
                return MP_SNIFF_NO_MATCH;
            if (type == 0x03 || type == 0x04) {
                if (n < 5)
                    return MP_SNIFF_NO_MATCH;
                vsize = n;
            } else if (type == 0x05) {
                vsize = 4 + 1 + (size_t)n;
            } else if (type == 0x0f) {
                if (n < 14)
                    return MP_SNIFF_NO_MATCH;
                vsize = n;
            } else {
                if (n < 1)
                    return MP_SNIFF_NO_MATCH;
                vsize = 4 + (size_t)n + (type == 0x0c ? 12 : 0);
                /* the string's own NUL, if it is here yet */
                if (p + 4 + n - 1 < lim && buf[p + 4 + n - 1] != 0)
                    return MP_SNIFF_NO_MATCH;
            }
            break;
        }
        case 0x0b: { /* regex: two C strings */
            int strings = 0;
            while (strings < 2) {
                if (p >= lim)
                    return short_;
                if (buf[p++] == 0)
                    strings++;
            }
            vsize = 0;
            break;
        }
        default:
            return MP_SNIFF_NO_MATCH;
        }
        /* The value must leave room for the document's closing NUL. */
        if (p >= end || vsize > end - 1 - p)
            return MP_SNIFF_NO_MATCH;
        if ((type == 0x03 || type == 0x04) && p + vsize - 1 < lim && buf[p + vsize - 1] != 0)
            return MP_SNIFF_NO_MATCH;
        p += vsize;
    }
}

/* Reads the length of a BSON document at buf[d] that must fit before msg_end; `have`
 * bytes of the message are present. */
static mp_sniff_result bson_doc(const uint8_t *buf, size_t have, size_t d, size_t msg_end,
                                size_t *dlen)
{
    if (d + 4 > msg_end)
        return MP_SNIFF_NO_MATCH;
    if (d + 4 > have)
        return MP_SNIFF_NEED_MORE;
    uint32_t n = rd_le32(buf + d);
    if (n < 5 || n > msg_end - d)
        return MP_SNIFF_NO_MATCH;
    *dlen = n;
    return MP_SNIFF_MATCH;
}

/* After OP_MSG's kind-0 body only kind-1 sections (document sequences) may follow:
 * kind byte, int32 size counting itself, identifier, documents. Only their framing is
 * checked, as far as the bytes go. */
static mp_sniff_result mongo_msg_sections(const uint8_t *buf, size_t len, size_t p,
                                          size_t body_end)
{
    while (p < body_end) {
        if (p >= len)
            return MP_SNIFF_NEED_MORE;
        if (buf[p] != 1 || p + 5 > body_end)
            return MP_SNIFF_NO_MATCH;
        if (p + 5 > len)
            return MP_SNIFF_NEED_MORE;
        uint32_t size = rd_le32(buf + p + 1);
        if (size < 5 || size > body_end - p - 1)
            return MP_SNIFF_NO_MATCH;
        p += 1 + (size_t)size;
    }
    return MP_SNIFF_MATCH;
}

/* Legacy OP_QUERY survives only as the connection handshake (servers since 5.1 refuse
 * anything else over it): a command on some "<db>.$cmd" whose first key names the
 * handshake, possibly wrapped in $query when a read preference rides along. */
static bool mongo_handshake_key(const uint8_t *k, size_t n)
{
    static const char *const keys[] = {"hello", "isMaster", "ismaster", "$query"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (n == strlen(keys[i]) && memcmp(k, keys[i], n) == 0)
            return true;
    return false;
}

static mp_sniff_result sniff_mongo(const uint8_t *buf, size_t len, mp_sniff_info *out,
                                   size_t *hint)
{
    *hint = 16;
    /* responseTo (bytes 8..11) is 0 in anything a client starts with. */
    for (size_t i = 8; i < 12 && i < len; i++)
        if (buf[i] != 0)
            return MP_SNIFF_NO_MATCH;
    if (len >= 4) {
        uint32_t L = rd_le32(buf);
        if (L < MONGO_MIN_MSG || L > MONGO_MAX_MSG)
            return MP_SNIFF_NO_MATCH;
    }
    if (len > 12) {
        static const uint8_t op_msg[4] = {0xdd, 0x07, 0, 0}, op_query[4] = {0xd4, 0x07, 0, 0};
        size_t n = len - 12 < 4 ? len - 12 : 4;
        if (memcmp(buf + 12, op_msg, n) != 0 && memcmp(buf + 12, op_query, n) != 0)
            return MP_SNIFF_NO_MATCH;
    }
    if (len < 16)
        return MP_SNIFF_NEED_MORE;

    size_t L = rd_le32(buf);
    uint32_t opcode = rd_le32(buf + 12);
    size_t need = L < MP_SNIFF_MAX_BYTES ? L : MP_SNIFF_MAX_BYTES;
    size_t have = len < L ? len : L;
    size_t key = 0, key_len = 0, dlen = 0;
    mp_sniff_result r;
    *hint = need;

    if (opcode == MONGO_OP_MSG) {
        if (have < 20)
            return MP_SNIFF_NEED_MORE;
        uint32_t flags = rd_le32(buf + 16);
        if (flags & ~MONGO_MSG_FLAGS_KNOWN)
            return MP_SNIFF_NO_MATCH;
        size_t body_end = L - ((flags & MONGO_MSG_CHECKSUM) ? 4 : 0);
        if (body_end < MONGO_MIN_MSG + 5)
            return MP_SNIFF_NO_MATCH;
        if (have < 21)
            return MP_SNIFF_NEED_MORE;
        if (buf[20] != 0)
            return MP_SNIFF_NO_MATCH;
        r = bson_doc(buf, have, 21, body_end, &dlen);
        if (r != MP_SNIFF_MATCH)
            return r;
        r = bson_walk(buf, have, 21, dlen, &key, &key_len);
        if (r == MP_SNIFF_MATCH)
            r = mongo_msg_sections(buf, have, 21 + dlen, body_end);
    } else {
        if (have < 20)
            return MP_SNIFF_NEED_MORE;
        if (rd_le32(buf + 16) & ~MONGO_QUERY_FLAGS_KNOWN)
            return MP_SNIFF_NO_MATCH;
        size_t p = 20;
        while (p < have && buf[p] != 0) {
            if (!is_visible(buf[p]))
                return MP_SNIFF_NO_MATCH;
            p++;
        }
        if (p >= have)
            return have < L ? MP_SNIFF_NEED_MORE : MP_SNIFF_NO_MATCH;
        static const char cmd[] = ".$cmd";
        size_t ns_len = p - 20, cmd_len = sizeof(cmd) - 1;
        if (ns_len <= cmd_len || memcmp(buf + p - cmd_len, cmd, cmd_len) != 0)
            return MP_SNIFF_NO_MATCH;
        size_t d = p + 1 + 8; /* numberToSkip, numberToReturn */
        if (d > L)
            return MP_SNIFF_NO_MATCH;
        r = bson_doc(buf, have, d, L, &dlen);
        if (r != MP_SNIFF_MATCH)
            return r;
        r = bson_walk(buf, have, d, dlen, &key, &key_len);
        if (key_len > 0 && !mongo_handshake_key(buf + key, key_len))
            return MP_SNIFF_NO_MATCH;
        /* An optional returnFieldsSelector may follow; its framing is the only check. */
        if (r == MP_SNIFF_MATCH && d + dlen < L) {
            size_t slen = 0;
            r = bson_doc(buf, have, d + dlen, L, &slen);
            if (r == MP_SNIFF_MATCH && d + dlen + slen != L)
                r = MP_SNIFF_NO_MATCH;
        }
    }
    /* A command document has at least its command's key. */
    if (r == MP_SNIFF_MATCH && key_len == 0)
        r = MP_SNIFF_NO_MATCH;
    if (r == MP_SNIFF_NEED_MORE && len >= need && need < L)
        r = key_len > 0 ? MP_SNIFF_MATCH : MP_SNIFF_NO_MATCH; /* past the sniff budget */
    if (r == MP_SNIFF_MATCH && have < L && len < need)
        r = MP_SNIFF_NEED_MORE;
    return r;
}

/* ------------------------------------------------------------------ the combination */

typedef mp_sniff_result (*sniff_fn)(const uint8_t *, size_t, mp_sniff_info *, size_t *);

static const struct {
    int protocol;
    sniff_fn fn;
    size_t cap;
} detectors[] = {
    {MP_PROTO_HTTPS, sniff_tls, MP_SNIFF_MAX_TLS_BYTES},
    {MP_PROTO_HTTP2, sniff_http2, MP_SNIFF_MAX_BYTES},
    {MP_PROTO_HTTP, sniff_http1, MP_SNIFF_MAX_BYTES},
    {MP_PROTO_POSTGRES, sniff_pg, MP_SNIFF_MAX_BYTES},
    {MP_PROTO_REDIS, sniff_resp, MP_SNIFF_MAX_BYTES},
    {MP_PROTO_RTMP, sniff_rtmp, MP_SNIFF_MAX_BYTES},
    {MP_PROTO_MONGODB, sniff_mongo, MP_SNIFF_MAX_BYTES},
};

/*
 * First match in the fixed order wins, even over an earlier detector still waiting:
 * the detectors are strict enough that no complete message of one protocol is a valid
 * prefix of another's (the unit tests walk every fixture's prefixes, and the fuzz
 * harness checks that a MATCH or NO_MATCH never changes as bytes are added), while
 * holding back a decided client could stall one that waits for the server, as psql
 * does after an SSLRequest.
 */
mp_sniff_result mp_sniff(const uint8_t *buf, size_t len, mp_sniff_info *out)
{
    size_t best_need = 0;
    bool any_need = false;

    memset(out, 0, sizeof(*out));
    if (len == 0 || !buf) {
        out->consumed_hint = 1;
        return len == 0 ? MP_SNIFF_NEED_MORE : MP_SNIFF_NO_MATCH;
    }
    for (size_t i = 0; i < sizeof(detectors) / sizeof(detectors[0]); i++) {
        size_t n = len < detectors[i].cap ? len : detectors[i].cap;
        size_t hint = 0;
        mp_sniff_result r = detectors[i].fn(buf, n, out, &hint);
        if (r == MP_SNIFF_MATCH) {
            out->protocol = detectors[i].protocol;
            out->consumed_hint = hint;
            return MP_SNIFF_MATCH;
        }
        memset(out, 0, sizeof(*out));
        if (r != MP_SNIFF_NEED_MORE)
            continue;
        /* A detector that would need more than its budget never decides. */
        if (hint <= n)
            hint = n + 1;
        if (hint > detectors[i].cap || n < len)
            continue;
        if (!any_need || hint < best_need)
            best_need = hint;
        any_need = true;
    }
    if (!any_need)
        return MP_SNIFF_NO_MATCH;
    out->consumed_hint = best_need;
    return MP_SNIFF_NEED_MORE;
}

static const char *const protocol_names[] = {
    "unspecified", "tcp",      "udp",       "http",  "https",    "http2",
    "http3",       "grpc",     "websocket", "mysql", "postgres", "mongodb",
    "redis",       "rtmp",     "rtmps",     "hls",   "dash",
};

const char *mp_sniff_protocol_name(int protocol)
{
    if (protocol < 0 || protocol >= (int)(sizeof(protocol_names) / sizeof(protocol_names[0])))
        return "?";
    return protocol_names[protocol];
}
