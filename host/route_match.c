/*
 * route_match.c — the pure half of routing: the validity rules for a wire Route and
 * the match of one entry against one request. No host state, no allocation, so the
 * unit tests link this file alone and the data path can call it from any thread.
 *
 * Addresses are compared as 16-byte IPv6 values with IPv4 mapped into ::ffff:0:0/96,
 * so an IPv4 CIDR also matches a client seen through a dual-stack socket
 * (::ffff:10.1.2.3) and the two families never match each other by accident.
 */
#include "route_match.h"

#include "netaddr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "netaddr.h"

/* ------------------------------------------------------------------ addresses */

bool mp_route_ip_valid(const char *text)
{
    uint8_t ip[16];
    bool v4;
    return text && mp_ip_parse(text, ip, &v4) == 0;
}


/* ------------------------------------------------------------------ validation */

struct problems {
    mp_route_problem_fn fn;
    void *ctx;
    size_t n;
    char who[96]; /* "route 'r1'" */
};

static void problem(struct problems *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void problem(struct problems *p, const char *fmt, ...)
{
    char what[512], line[640];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    snprintf(line, sizeof(line), "%s: %s", p->who, what);
    p->n++;
    if (p->fn)
        p->fn(p->ctx, line);
}

/* Client-supplied text goes into messages people read: keep it short and printable. */
static void printable(const char *s, char *out, size_t out_len, size_t max_chars)
{
    size_t o = 0, i = 0;
    for (; s[i] && i < max_chars && o + 1 < out_len; i++) {
        unsigned char c = (unsigned char)s[i];
        out[o++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (s[i] && o + 4 < out_len) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
}

static bool id_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == ':' || c == '-';
}

static bool host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '-' || c == '_' || c == ':' || c == '[' || c == ']';
}

static const char *str_or_empty(const char *s) { return s ? s : ""; }

static void check_id(struct problems *p, const char *id)
{
    size_t n = strlen(id);
    if (n == 0) {
        problem(p, "route_id is required");
        return;
    }
    if (n > MP_ROUTE_ID_MAX)
        problem(p, "route_id is %zu characters long (at most %d)", n, MP_ROUTE_ID_MAX);
    for (size_t i = 0; i < n; i++) {
        if (!id_char(id[i])) {
            unsigned char c = (unsigned char)id[i];
            if (c >= 0x20 && c < 0x7f)
                problem(p, "route_id contains '%c' (allowed: letters, digits . _ : -)", c);
            else
                problem(p, "route_id contains byte 0x%02x (allowed: letters, digits . _ : -)",
                        c);
            break;
        }
    }
}

static void check_destination(struct problems *p, const char *d)
{
    size_t n = strlen(d);
    char shown[80];
    if (n == 0 || strcmp(d, "*") == 0)
        return;
    printable(d, shown, sizeof(shown), 64);
    if (n > MP_ROUTE_DEST_MAX) {
        problem(p, "destination_pattern is %zu characters long (at most %d)", n,
                MP_ROUTE_DEST_MAX);
        return;
    }
    if (d[0] == '~')
        return; /* a regular expression, for L7 plugins; the NLB never matches it */
    const char *rest = d;
    if (strncmp(d, "*.", 2) == 0) {
        rest = d + 2;
        if (*rest == '\0') {
            problem(p, "destination_pattern '%s' needs a domain after \"*.\"", shown);
            return;
        }
    }
    for (const char *c = rest; *c; c++) {
        if (*c == '*') {
            problem(p, "destination_pattern '%s': '*' is only allowed as a leading \"*.\"",
                    shown);
            return;
        }
        if (!host_char(*c)) {
            problem(p,
                    "destination_pattern '%s' contains a character not allowed in a host "
                    "(letters, digits . - _ : [ ] and a leading \"*.\")",
                    shown);
            return;
        }
    }
}

static void check_headers(struct problems *p, const Marchproxy__Route *r)
{
    if (r->n_headers > MP_ROUTE_MAX_HEADERS) {
        problem(p, "%zu headers (at most %d)", r->n_headers, MP_ROUTE_MAX_HEADERS);
        return;
    }
    for (size_t i = 0; i < r->n_headers; i++) {
        const char *k = r->headers[i] ? str_or_empty(r->headers[i]->key) : "";
        const char *v = r->headers[i] ? str_or_empty(r->headers[i]->value) : "";
        char shown[80];
        size_t kn = strlen(k), vn = strlen(v);
        printable(k, shown, sizeof(shown), 64);
        if (kn == 0)
            problem(p, "headers: a header name is empty");
        else if (kn > MP_ROUTE_HEADER_NAME_MAX)
            problem(p, "headers: name '%s' is %zu characters long (at most %d)", shown, kn,
                    MP_ROUTE_HEADER_NAME_MAX);
        if (vn > MP_ROUTE_HEADER_VALUE_MAX)
            problem(p, "headers: value of '%s' is %zu characters long (at most %d)", shown, vn,
                    MP_ROUTE_HEADER_VALUE_MAX);
    }
}

size_t mp_route_validate_all(const Marchproxy__Route *r, mp_route_problem_fn fn, void *ctx)
{
    struct problems p = {.fn = fn, .ctx = ctx};
    if (!r) {
        snprintf(p.who, sizeof(p.who), "route");
        problem(&p, "missing");
        return p.n;
    }
    const char *id = str_or_empty(r->route_id);
    char shown[80];
    printable(id, shown, sizeof(shown), 64);
    if (*id)
        snprintf(p.who, sizeof(p.who), "route '%s'", shown);
    else
        snprintf(p.who, sizeof(p.who), "route (no id)");

    check_id(&p, id);
    if ((int)r->protocol < 0 || (int)r->protocol > MP_ROUTE_PROTOCOL_MAX)
        problem(&p, "protocol %d is not a known Protocol (0..%d)", (int)r->protocol,
                MP_ROUTE_PROTOCOL_MAX);
    if (r->source_port < 0 || r->source_port > 65535)
        problem(&p, "source_port %d is out of range (0..65535)", (int)r->source_port);
    if (r->destination_port < 0 || r->destination_port > 65535)
        problem(&p, "destination_port %d is out of range (0..65535)", (int)r->destination_port);

    const char *src = str_or_empty(r->source_pattern);
    if (*src && strcmp(src, "*") != 0) {
        uint8_t net[16];
        unsigned prefix;
        char why[128];
        if (mp_cidr_parse(src, false, net, &prefix, why, sizeof(why)) < 0) {
            printable(src, shown, sizeof(shown), 64);
            problem(&p, "source_pattern '%s': %s", shown, why);
        }
    }
    check_destination(&p, str_or_empty(r->destination_pattern));
    const char *path = str_or_empty(r->path_pattern);
    if (*path && path[0] != '/' && path[0] != '~' && !(path[0] == '=' && path[1] == '/')) {
        printable(path, shown, sizeof(shown), 64);
        problem(&p,
                "path_pattern '%s' must start with '/' (a prefix), \"=/\" (exact) or '~' "
                "(a regular expression)",
                shown);
    }
    check_headers(&p, r);
    return p.n;
}

struct first_problem {
    char *err;
    size_t err_len;
    bool have;
};

static void keep_first(void *ctx, const char *problem_text)
{
    struct first_problem *f = ctx;
    if (f->have)
        return;
    f->have = true;
    if (f->err && f->err_len)
        snprintf(f->err, f->err_len, "%s", problem_text);
}

int mp_route_validate(const Marchproxy__Route *r, char *err, size_t err_len)
{
    struct first_problem f = {err, err_len, false};
    return mp_route_validate_all(r, keep_first, &f) ? -EINVAL : 0;
}

/* ------------------------------------------------------------------ requests */

int mp_route_request_from_wire(const Marchproxy__Route *r, mp_route_request *q,
                               const char **names, const char **values, size_t cap)
{
    memset(q, 0, sizeof(*q));
    if (r->n_headers > cap)
        return -E2BIG;
    const char *src = str_or_empty(r->source_pattern);
    q->protocol = (int)r->protocol;
    q->dst_port = r->destination_port;
    /* "*" as a client address means the caller does not know it. */
    q->source_ip = (*src && strcmp(src, "*") != 0) ? src : NULL;
    q->host = str_or_empty(r->destination_pattern);
    q->path = str_or_empty(r->path_pattern);
    for (size_t i = 0; i < r->n_headers; i++) {
        names[i] = r->headers[i] ? str_or_empty(r->headers[i]->key) : "";
        values[i] = r->headers[i] ? str_or_empty(r->headers[i]->value) : "";
    }
    q->n_headers = r->n_headers;
    q->header_names = names;
    q->header_values = values;
    return 0;
}

static const char *const protocol_names[] = {
    "any",   "tcp",   "udp",      "http",    "https", "http2", "http3", "grpc", "websocket",
    "mysql", "postgres", "mongodb", "redis", "rtmp",  "rtmps", "hls",   "dash",
};

const char *mp_route_protocol_name(int protocol)
{
    if (protocol < 0 || protocol >= (int)(sizeof(protocol_names) / sizeof(protocol_names[0])))
        return "?";
    return protocol_names[protocol];
}

void mp_route_request_describe(const mp_route_request *q, char *buf, size_t len)
{
    size_t off = 0;
    if (!len)
        return;
    buf[0] = '\0';
#define DESCRIBE_ADD(...)                                                   \
    do {                                                                    \
        if (off < len) {                                                    \
            int w_ = snprintf(buf + off, len - off, __VA_ARGS__);           \
            off = w_ < 0 ? len : off + (size_t)w_;                          \
        }                                                                   \
    } while (0)
    DESCRIBE_ADD("protocol=%s", mp_route_protocol_name(q->protocol));
    if (q->dst_port)
        DESCRIBE_ADD(" port=%d", (int)q->dst_port);
    char shown[80];
    if (q->source_ip && *q->source_ip) {
        printable(q->source_ip, shown, sizeof(shown), 64);
        DESCRIBE_ADD(" source=%s", shown);
    }
    if (q->host && *q->host) {
        printable(q->host, shown, sizeof(shown), 64);
        DESCRIBE_ADD(" host=%s", shown);
    }
    if (q->path && *q->path) {
        printable(q->path, shown, sizeof(shown), 64);
        DESCRIBE_ADD(" path=%s", shown);
    }
    if (q->n_headers)
        DESCRIBE_ADD(" headers=%zu", q->n_headers);
#undef DESCRIBE_ADD
}

/* ------------------------------------------------------------------ matching */

static bool source_matches(const char *pattern, const char *client)
{
    uint8_t net[16], ip[16];
    unsigned prefix;
    bool v4;
    char why[128];
    if (!client || !*client)
        return false;
    if (mp_cidr_parse(pattern, false, net, &prefix, why, sizeof(why)) < 0)
        return false;
    if (mp_ip_parse(client, ip, &v4) < 0)
        return false;
    return mp_ip_in_net(ip, net, prefix);
}

/* A fully qualified name may end in a dot; "example.com." and "example.com" are the
 * same host. */
static size_t host_len(const char *s)
{
    size_t n = strlen(s);
    if (n > 1 && s[n - 1] == '.')
        n--;
    return n;
}

static bool host_matches(const char *pattern, const char *host)
{
    if (!host || !*host)
        return false;
    size_t hn = host_len(host), pn = host_len(pattern);
    if (strncmp(pattern, "*.", 2) == 0) {
        /* The suffix keeps its leading dot so "*.example.com" needs at least one whole
         * label before it: "a.example.com", "a.b.example.com", never "example.com". */
        const char *suffix = pattern + 1;
        size_t sn = pn - 1;
        return hn > sn && strncasecmp(host + hn - sn, suffix, sn) == 0;
    }
    return hn == pn && strncasecmp(host, pattern, pn) == 0;
}

static bool header_present(const mp_route_request *q, const char *name, const char *value)
{
    for (size_t i = 0; i < q->n_headers; i++) {
        const char *n = q->header_names[i], *v = q->header_values[i];
        if (n && strcasecmp(n, name) == 0 && strcmp(v ? v : "", value) == 0)
            return true;
    }
    return false;
}

/*
 * protocol and destination_port: 0 in the entry = any, otherwise equal.
 * source_pattern: "" or "*" = any, else the client IP must lie in the CIDR (an entry
 *   restricted by source never matches a request without one).
 * destination_pattern: "" or "*" = any, else the host equals it case-insensitively, or
 *   "*.suffix" matches one or more labels before the suffix.
 * path_pattern: "" = any, "=/x" exactly that path, else a literal prefix of the path.
 * Patterns starting with '~' (path or destination) are regular expressions that L7
 *   plugins such as the ALB evaluate; the NLB's own matcher never matches them.
 * headers: each entry header must be present with an equal value (names
 *   case-insensitive, values exact).
 * source_port is validated but never matched: a request carries no source port.
 */
bool mp_route_entry_matches(const Marchproxy__Route *e, const mp_route_request *q)
{
    if (e->protocol != 0 && (int)e->protocol != q->protocol)
        return false;
    if (e->destination_port != 0 && e->destination_port != q->dst_port)
        return false;
    const char *src = str_or_empty(e->source_pattern);
    if (*src && strcmp(src, "*") != 0 && !source_matches(src, q->source_ip))
        return false;
    const char *dst = str_or_empty(e->destination_pattern);
    if (dst[0] == '~')
        return false;
    if (*dst && strcmp(dst, "*") != 0 && !host_matches(dst, q->host))
        return false;
    const char *path = str_or_empty(e->path_pattern);
    if (path[0] == '~')
        return false;
    if (path[0] == '=') {
        if (!q->path || strcmp(q->path, path + 1) != 0)
            return false;
    } else if (*path) {
        if (!q->path || strncmp(q->path, path, strlen(path)) != 0)
            return false;
    }
    for (size_t i = 0; i < e->n_headers; i++) {
        if (!e->headers[i])
            continue;
        if (!header_present(q, str_or_empty(e->headers[i]->key),
                            str_or_empty(e->headers[i]->value)))
            return false;
    }
    return true;
}

int mp_route_field(const Marchproxy__Route *r, const char *field, char *buf, size_t len)
{
    if (!strcmp(field, "route_id"))
        snprintf(buf, len, "%s", str_or_empty(r->route_id));
    else if (!strcmp(field, "protocol"))
        snprintf(buf, len, "%d", (int)r->protocol);
    else if (!strcmp(field, "source_pattern"))
        snprintf(buf, len, "%s", str_or_empty(r->source_pattern));
    else if (!strcmp(field, "destination_pattern"))
        snprintf(buf, len, "%s", str_or_empty(r->destination_pattern));
    else if (!strcmp(field, "source_port"))
        snprintf(buf, len, "%d", (int)r->source_port);
    else if (!strcmp(field, "destination_port"))
        snprintf(buf, len, "%d", (int)r->destination_port);
    else if (!strcmp(field, "path_pattern"))
        snprintf(buf, len, "%s", str_or_empty(r->path_pattern));
    else if (!strcmp(field, "priority"))
        snprintf(buf, len, "%d", (int)r->priority);
    else
        return -ENOENT;
    return 0;
}

void mp_route_view_from_request(const mp_route_request *q, const char *route_id,
                                int32_t priority, mp_route_view *v)
{
    memset(v, 0, sizeof(*v));
    v->struct_size = sizeof(*v);
    v->route_id = route_id ? route_id : "";
    v->protocol = (mp_protocol)q->protocol;
    v->source_pattern = q->source_ip ? q->source_ip : "";
    v->destination_pattern = q->host ? q->host : "";
    v->destination_port = q->dst_port;
    v->path_pattern = q->path ? q->path : "";
    v->priority = priority;
    v->header_count = q->n_headers;
    v->header_names = q->header_names;
    v->header_values = q->header_values;
}
