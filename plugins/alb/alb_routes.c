/*
 * alb_routes.c — see alb_routes.h. Compiling happens on the control thread (settings,
 * routes_changed); matching on workers, against a table nobody mutates. Regular
 * expressions are PCRE2, JIT-compiled when the platform allows.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "alb_routes.h"

#include <errno.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum host_kind { HOST_ANY, HOST_EXACT, HOST_SUFFIX, HOST_REGEX };
enum path_kind { PATH_ANY, PATH_PREFIX, PATH_EXACT, PATH_REGEX };
enum hdr_kind { HDR_PRESENT, HDR_EXACT, HDR_REGEX };

#define MAX_METHODS 16

typedef struct hdr_rule {
    char *name;
    enum hdr_kind kind;
    char *value;
    size_t value_len;
    pcre2_code *re;
} hdr_rule;

struct alb_route_rule {
    char id[ALB_ROUTE_ID_MAX];
    int32_t priority;
    size_t order;
    enum host_kind host_kind;
    char *host; /* lowercased; for HOST_SUFFIX the ".example.com" part */
    size_t host_len;
    pcre2_code *host_re;
    enum path_kind path_kind;
    char *path;
    size_t path_len;
    pcre2_code *path_re;
    char *methods[MAX_METHODS];
    size_t nmethods;
    hdr_rule headers[ALB_ROUTE_MAX_HEADERS];
    size_t nheaders;
    int upstream;
    char *host_rewrite;
    alb_route_stats *stats;
};

struct alb_route_table {
    _Atomic int refs;
    alb_route_rule *rules;
    size_t n;
};

/* ------------------------------------------------------------------ stats registry */

struct alb_route_stats_set {
    pthread_mutex_t mu; /* build (control thread) vs. stats readers */
    alb_route_stats **v;
    size_t n, cap;
};

alb_route_stats_set *alb_route_stats_set_new(void)
{
    alb_route_stats_set *s = calloc(1, sizeof(*s));
    if (s)
        pthread_mutex_init(&s->mu, NULL);
    return s;
}

void alb_route_stats_set_free(alb_route_stats_set *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static alb_route_stats *stats_for(alb_route_stats_set *s, const char *id)
{
    if (!s)
        return NULL;
    alb_route_stats *found = NULL;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->n && !found; i++)
        if (strcmp(s->v[i]->id, id) == 0)
            found = s->v[i];
    /* Counters of deleted routes stay (bounded: ids beyond the cap go uncounted), so
     * a route deleted and re-added keeps its history, as a Prometheus user expects. */
    if (!found && s->n < 4 * ALB_ROUTES_MAX) {
        if (s->n == s->cap) {
            size_t cap = s->cap ? s->cap * 2 : 16;
            alb_route_stats **v = realloc(s->v, cap * sizeof(*v));
            if (v) {
                s->v = v;
                s->cap = cap;
            }
        }
        if (s->n < s->cap && (found = calloc(1, sizeof(*found)))) {
            snprintf(found->id, sizeof(found->id), "%s", id);
            s->v[s->n++] = found;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return found;
}

void alb_route_stats_each(alb_route_stats_set *s, void (*fn)(void *ctx, alb_route_stats *rs),
                          void *ctx)
{
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->n; i++)
        fn(ctx, s->v[i]);
    pthread_mutex_unlock(&s->mu);
}

void alb_route_stats_record(alb_route_stats *rs, int status, uint64_t latency_us,
                            uint64_t bytes_in, uint64_t bytes_out)
{
    if (!rs)
        return;
    atomic_fetch_add_explicit(&rs->requests, 1, memory_order_relaxed);
    int cls = status >= 100 && status < 600 ? status / 100 : 0;
    atomic_fetch_add_explicit(&rs->status[cls], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&rs->bytes_in, bytes_in, memory_order_relaxed);
    atomic_fetch_add_explicit(&rs->bytes_out, bytes_out, memory_order_relaxed);
    int b = 0;
    while (b < 39 && (1ull << b) < latency_us)
        b++;
    atomic_fetch_add_explicit(&rs->lat_buckets[b], 1, memory_order_relaxed);
}

uint64_t alb_route_stats_quantile(const alb_route_stats *rs, double q)
{
    uint64_t total = 0, counts[40];
    for (int b = 0; b < 40; b++)
        total += counts[b] = atomic_load_explicit(&rs->lat_buckets[b], memory_order_relaxed);
    if (!total)
        return 0;
    /* nearest rank: the ceil(q * N)-th smallest sample */
    double rank = q * (double)total;
    uint64_t want = (uint64_t)rank;
    if ((double)want < rank)
        want++;
    want = want ? want - 1 : 0;
    if (want >= total)
        want = total - 1;
    uint64_t seen = 0;
    for (int b = 0; b < 40; b++) {
        seen += counts[b];
        if (seen > want)
            return 1ull << b;
    }
    return 1ull << 39;
}

/* ------------------------------------------------------------------ compile */

static pcre2_code *compile_re(const char *pattern, uint32_t flags, const char *id,
                              const char *what, char *err, size_t err_len)
{
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                                   flags | PCRE2_UTF, &code, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(code, msg, sizeof(msg));
        snprintf(err, err_len, "route %s: %s regex \"%s\" at offset %zu: %s", id, what,
                 pattern, (size_t)off, (const char *)msg);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* best effort: the interpreter works too */
    return re;
}

static void rule_free(alb_route_rule *r)
{
    free(r->host);
    pcre2_code_free(r->host_re);
    free(r->path);
    pcre2_code_free(r->path_re);
    for (size_t i = 0; i < r->nmethods; i++)
        free(r->methods[i]);
    for (size_t i = 0; i < r->nheaders; i++) {
        free(r->headers[i].name);
        free(r->headers[i].value);
        pcre2_code_free(r->headers[i].re);
    }
    free(r->host_rewrite);
}

static char *dup_lower(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (!d)
        return NULL;
    for (size_t i = 0; i < n; i++)
        d[i] = (s[i] >= 'A' && s[i] <= 'Z') ? (char)(s[i] + 32) : s[i];
    d[n] = '\0';
    return d;
}

static int compile_host(alb_route_rule *r, const char *host, char *err, size_t err_len)
{
    if (!*host || strcmp(host, "*") == 0) {
        r->host_kind = HOST_ANY;
        return 0;
    }
    if (host[0] == '~') {
        r->host_kind = HOST_REGEX;
        r->host_re = compile_re(host + 1, PCRE2_CASELESS, r->id, "host", err, err_len);
        return r->host_re ? 0 : -EINVAL;
    }
    if (host[0] == '*' && host[1] == '.' && host[2]) {
        r->host_kind = HOST_SUFFIX;
        host++; /* keep the dot: "*.example.com" matches "a.example.com", not "example.com" */
    } else if (strchr(host, '*')) {
        snprintf(err, err_len, "route %s: host \"%s\": '*' only as a leading \"*.\" label",
                 r->id, host);
        return -EINVAL;
    } else {
        r->host_kind = HOST_EXACT;
    }
    r->host_len = strlen(host);
    r->host = dup_lower(host, r->host_len);
    return r->host ? 0 : -ENOMEM;
}

static int compile_path(alb_route_rule *r, const char *path, char *err, size_t err_len)
{
    if (!*path || strcmp(path, "/") == 0) {
        r->path_kind = PATH_ANY;
        return 0;
    }
    if (path[0] == '~') {
        r->path_kind = PATH_REGEX;
        r->path_re = compile_re(path + 1, 0, r->id, "path", err, err_len);
        return r->path_re ? 0 : -EINVAL;
    }
    r->path_kind = PATH_PREFIX;
    if (path[0] == '=') {
        r->path_kind = PATH_EXACT;
        path++;
    }
    if (path[0] != '/') {
        snprintf(err, err_len,
                 "route %s: path \"%s\" must start with '/' (or '=' for exact, '~' for a regex)",
                 r->id, path);
        return -EINVAL;
    }
    r->path_len = strlen(path);
    r->path = strdup(path);
    return r->path ? 0 : -ENOMEM;
}

static int compile_methods(alb_route_rule *r, const char *methods, char *err, size_t err_len)
{
    const char *p = methods;
    while (*p) {
        while (*p == ',' || *p == ' ')
            p++;
        size_t n = strcspn(p, ", ");
        if (!n)
            break;
        for (size_t i = 0; i < n; i++)
            if (!((p[i] >= 'A' && p[i] <= 'Z') || p[i] == '-' || p[i] == '_')) {
                snprintf(err, err_len, "route %s: methods \"%s\": not a method list", r->id,
                         methods);
                return -EINVAL;
            }
        if (r->nmethods == MAX_METHODS) {
            snprintf(err, err_len, "route %s: more than %d methods", r->id, MAX_METHODS);
            return -EINVAL;
        }
        if (!(r->methods[r->nmethods++] = strndup(p, n)))
            return -ENOMEM;
        p += n;
    }
    return 0;
}

static int compile_headers(alb_route_rule *r, const alb_route_spec *sp, char *err,
                           size_t err_len)
{
    if (sp->nheaders > ALB_ROUTE_MAX_HEADERS) {
        snprintf(err, err_len, "route %s: %zu header conditions (at most %d)", r->id,
                 sp->nheaders, ALB_ROUTE_MAX_HEADERS);
        return -EINVAL;
    }
    for (size_t i = 0; i < sp->nheaders; i++) {
        hdr_rule *h = &r->headers[r->nheaders++];
        const char *name = sp->header_names[i] ? sp->header_names[i] : "";
        const char *value = sp->header_values[i] ? sp->header_values[i] : "";
        if (!*name) {
            snprintf(err, err_len, "route %s: a header condition without a name", r->id);
            return -EINVAL;
        }
        if (!(h->name = strdup(name)))
            return -ENOMEM;
        if (!*value || strcmp(value, "*") == 0) {
            h->kind = HDR_PRESENT;
        } else if (value[0] == '~') {
            h->kind = HDR_REGEX;
            if (!(h->re = compile_re(value + 1, 0, r->id, "header", err, err_len)))
                return -EINVAL;
        } else {
            h->kind = HDR_EXACT;
            h->value_len = strlen(value);
            if (!(h->value = strdup(value)))
                return -ENOMEM;
        }
    }
    return 0;
}

static int compile_rule(alb_route_rule *r, const alb_route_spec *sp, size_t order,
                        const char *const *upstreams, int nupstreams,
                        alb_route_stats_set *stats, char *err, size_t err_len)
{
    const char *id = sp->id ? sp->id : "";
    if (!*id || strlen(id) >= ALB_ROUTE_ID_MAX) {
        snprintf(err, err_len, "route \"%.40s\": the id must be 1..%d characters", id,
                 ALB_ROUTE_ID_MAX - 1);
        return -EINVAL;
    }
    snprintf(r->id, sizeof(r->id), "%s", id);
    r->priority = sp->priority;
    r->order = order;
    r->upstream = -1;
    const char *up = sp->upstream ? sp->upstream : "";
    for (int i = 0; i < nupstreams; i++)
        if (strcmp(upstreams[i], up) == 0)
            r->upstream = i;
    if (r->upstream < 0) {
        char known[256] = "";
        size_t used = 0;
        for (int i = 0; i < nupstreams && used < sizeof(known); i++)
            used += (size_t)snprintf(known + used, sizeof(known) - used, "%s%s", i ? ", " : "",
                                     upstreams[i]);
        snprintf(err, err_len, "route %s: %s upstream \"%s\" (upstreams: %s)", id,
                 *up ? "unknown" : "no", up, nupstreams ? known : "none configured");
        return -EINVAL;
    }
    int rc;
    if ((rc = compile_host(r, sp->host ? sp->host : "", err, err_len)) < 0 ||
        (rc = compile_path(r, sp->path ? sp->path : "", err, err_len)) < 0 ||
        (rc = compile_methods(r, sp->methods ? sp->methods : "", err, err_len)) < 0 ||
        (rc = compile_headers(r, sp, err, err_len)) < 0)
        return rc;
    if (sp->host_rewrite && *sp->host_rewrite) {
        for (const char *c = sp->host_rewrite; *c; c++)
            if ((unsigned char)*c <= ' ' || *c == 0x7f) {
                snprintf(err, err_len, "route %s: host_rewrite has a space or control byte",
                         id);
                return -EINVAL;
            }
        if (!(r->host_rewrite = strdup(sp->host_rewrite)))
            return -ENOMEM;
    }
    r->stats = stats_for(stats, id);
    return 0;
}

/* Literal path length: a longer prefix is the more specific rule on equal priority. */
static size_t specificity(const alb_route_rule *r)
{
    return r->path_kind == PATH_EXACT ? SIZE_MAX / 2 : r->path_kind == PATH_PREFIX ? r->path_len : 0;
}

static int rule_cmp(const void *a, const void *b)
{
    const alb_route_rule *x = a, *y = b;
    if (x->priority != y->priority)
        return x->priority > y->priority ? -1 : 1;
    size_t sx = specificity(x), sy = specificity(y);
    if (sx != sy)
        return sx > sy ? -1 : 1;
    bool ex = x->host_kind == HOST_EXACT, ey = y->host_kind == HOST_EXACT;
    if (ex != ey)
        return ex ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

int alb_routes_build(const alb_route_spec *specs, size_t n, const char *const *upstreams,
                     int nupstreams, alb_route_stats_set *stats, alb_route_table **out,
                     char *err, size_t err_len)
{
    if (n > ALB_ROUTES_MAX) {
        snprintf(err, err_len, "%zu routes (at most %d)", n, ALB_ROUTES_MAX);
        return -E2BIG;
    }
    alb_route_table *t = calloc(1, sizeof(*t));
    if (!t || !(t->rules = calloc(n + 1, sizeof(*t->rules)))) {
        free(t);
        return -ENOMEM;
    }
    atomic_init(&t->refs, 1);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        for (size_t j = 0; j < i; j++)
            if (specs[i].id && specs[j].id && strcmp(specs[i].id, specs[j].id) == 0) {
                snprintf(err, err_len, "route %s: the id is used twice", specs[i].id);
                rc = -EINVAL;
                break;
            }
        if (rc == 0)
            rc = compile_rule(&t->rules[i], &specs[i], i, upstreams, nupstreams, stats, err,
                              err_len);
        t->n = i + 1;
    }
    if (rc < 0) {
        alb_route_table_unref(t);
        return rc;
    }
    qsort(t->rules, t->n, sizeof(*t->rules), rule_cmp);
    *out = t;
    return 0;
}

void alb_route_table_ref(alb_route_table *t) { atomic_fetch_add(&t->refs, 1); }

void alb_route_table_unref(alb_route_table *t)
{
    if (!t || atomic_fetch_sub(&t->refs, 1) != 1)
        return;
    for (size_t i = 0; i < t->n; i++)
        rule_free(&t->rules[i]);
    free(t->rules);
    free(t);
}

size_t alb_route_table_size(const alb_route_table *t) { return t ? t->n : 0; }

/* ------------------------------------------------------------------ match */

/* Match data per call: a thread-local block would outlive the plugin on worker
 * threads (it is unloaded on reload while they run on), and regex rules are the
 * expensive kind anyway. */
static bool re_match(const pcre2_code *re, const char *s, size_t n)
{
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!md)
        return false;
    bool hit = pcre2_match(re, (PCRE2_SPTR)s, n, 0, 0, md, NULL) >= 0;
    pcre2_match_data_free(md);
    return hit;
}

static bool host_ok(const alb_route_rule *r, const char *h, size_t n)
{
    switch (r->host_kind) {
    case HOST_ANY:
        return true;
    case HOST_EXACT:
        return n == r->host_len && strncasecmp(h, r->host, n) == 0;
    case HOST_SUFFIX:
        return n > r->host_len && strncasecmp(h + n - r->host_len, r->host, r->host_len) == 0;
    case HOST_REGEX:
        return re_match(r->host_re, h, n);
    }
    return false;
}

static bool path_ok(const alb_route_rule *r, const char *p, size_t n)
{
    switch (r->path_kind) {
    case PATH_ANY:
        return true;
    case PATH_PREFIX:
        return n >= r->path_len && memcmp(p, r->path, r->path_len) == 0;
    case PATH_EXACT:
        return n == r->path_len && memcmp(p, r->path, n) == 0;
    case PATH_REGEX:
        return re_match(r->path_re, p, n);
    }
    return false;
}

static bool rest_ok(const alb_route_rule *r, const alb_route_req *rq)
{
    if (r->nmethods) {
        bool any = false;
        for (size_t i = 0; i < r->nmethods && !any; i++)
            any = strlen(r->methods[i]) == rq->method_len &&
                  memcmp(r->methods[i], rq->method, rq->method_len) == 0;
        if (!any)
            return false;
    }
    for (size_t i = 0; i < r->nheaders; i++) {
        const hdr_rule *h = &r->headers[i];
        size_t vl = 0;
        const char *v = rq->header ? rq->header(rq->ctx, h->name, &vl) : NULL;
        if (!v)
            return false;
        if (h->kind == HDR_EXACT && (vl != h->value_len || memcmp(v, h->value, vl) != 0))
            return false;
        if (h->kind == HDR_REGEX && !re_match(h->re, v, vl))
            return false;
    }
    return true;
}

int alb_routes_match(const alb_route_table *t, const alb_route_req *rq, alb_route_result *out)
{
    if (!t)
        return -ENOENT;
    /* host without port; an IPv6 literal keeps its brackets */
    size_t hn = rq->host_len;
    const char *colon = hn ? memrchr(rq->host, ':', hn) : NULL;
    if (colon && !memchr(colon, ']', hn - (size_t)(colon - rq->host)))
        hn = (size_t)(colon - rq->host);
    /* absolute-form ("http://host/path"): the path part; "*" (OPTIONS) stays itself */
    const char *path = rq->target;
    size_t pn = rq->target_len;
    const char *sch = pn && path[0] != '/' ? memmem(path, pn, "://", 3) : NULL;
    if (sch) {
        const char *a = sch + 3;
        const char *slash = memchr(a, '/', pn - (size_t)(a - path));
        pn = slash ? pn - (size_t)(slash - path) : 1;
        path = slash ? slash : "/";
    }
    const char *q = pn ? memchr(path, '?', pn) : NULL;
    if (q)
        pn = (size_t)(q - path);
    for (size_t i = 0; i < t->n; i++) {
        const alb_route_rule *r = &t->rules[i];
        if (host_ok(r, rq->host, hn) && path_ok(r, path, pn) && rest_ok(r, rq)) {
            out->id = r->id;
            out->upstream = r->upstream;
            out->host_rewrite = r->host_rewrite;
            out->stats = r->stats;
            out->priority = r->priority;
            return 0;
        }
    }
    return -ENOENT;
}
