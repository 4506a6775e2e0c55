/*
 * config.c — owns the host's configuration schema: reads a libconfig file (or text),
 * checks every host-level section against the schema with "FILE:LINE: reason" errors,
 * and builds the immutable mp_host_config tree. Also owns the address and protocol-name
 * parsers the rest of the host uses for the same values. Plugin sections are not read
 * here beyond guaranteeing each instance has one.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <libgen.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config_view.h"
#include "marchproxy/plugin.h"
#include "netaddr.h"

#define MAX_LISTENERS 256
#define MAX_ROUTES 10000

/* ------------------------------------------------------------------ protocols */

/* Indexed by marchproxy.Protocol number. */
static const char *const protocol_names[] = {
    "unspecified", "tcp",      "udp",     "http",  "https", "http2",
    "http3",       "grpc",     "websocket", "mysql", "postgres",
    "mongodb",     "redis",    "rtmp",    "rtmps", "hls",   "dash",
};
#define N_PROTOCOLS ((int)(sizeof(protocol_names) / sizeof(protocol_names[0])))

int mp_protocol_from_name(const char *name)
{
    if (!name)
        return -1;
    if (strcmp(name, "any") == 0)
        return MP_PROTO_UNSPECIFIED;
    for (int i = 0; i < N_PROTOCOLS; i++)
        if (strcmp(name, protocol_names[i]) == 0)
            return i;
    return -1;
}

const char *mp_protocol_name(int protocol)
{
    if (protocol < 0 || protocol >= N_PROTOCOLS)
        return protocol_names[0];
    return protocol_names[protocol];
}

/* ------------------------------------------------------------------ addresses */

static int parse_port(const char *s, unsigned *port)
{
    unsigned v = 0;
    size_t n = 0;
    for (; s[n]; n++) {
        if (s[n] < '0' || s[n] > '9' || n >= 5)
            return -EINVAL;
        v = v * 10 + (unsigned)(s[n] - '0');
    }
    if (n == 0 || v > 65535)
        return -EINVAL;
    *port = v;
    return 0;
}

static bool only_digits_and_dots(const char *s)
{
    for (; *s; s++)
        if ((*s < '0' || *s > '9') && *s != '.')
            return false;
    return true;
}

__attribute__((format(printf, 3, 4))) static int addr_fail(char *err, size_t err_len,
                                                          const char *fmt, ...)
{
    if (err && err_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_len, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

int mp_parse_address(const char *text, struct sockaddr_storage *out, unsigned *out_len,
                     char *err, size_t err_len)
{
    char host[INET6_ADDRSTRLEN + 8];
    const char *port_text;
    bool v6 = false;

    if (!text || !*text)
        return addr_fail(err, err_len, "address is empty");
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (!close)
            return addr_fail(err, err_len, "address '%s': missing ']'", text);
        size_t n = (size_t)(close - text - 1);
        if (n == 0 || n >= sizeof(host))
            return addr_fail(err, err_len, "address '%s': bad IPv6 address", text);
        memcpy(host, text + 1, n);
        host[n] = '\0';
        if (close[1] != ':')
            return addr_fail(err, err_len, "address '%s': missing :port", text);
        port_text = close + 2;
        v6 = true;
    } else {
        const char *colon = strrchr(text, ':');
        if (!colon)
            return addr_fail(err, err_len, "address '%s': missing :port", text);
        size_t n = (size_t)(colon - text);
        if (memchr(text, ':', n))
            return addr_fail(err, err_len,
                             "address '%s': write IPv6 addresses in brackets, e.g. [::1]:%s",
                             text, colon + 1);
        if (n == 0)
            return addr_fail(err, err_len, "address '%s': missing host (use *:port for any)",
                             text);
        if (n >= sizeof(host))
            return addr_fail(err, err_len, "address '%s': use an IP literal", text);
        memcpy(host, text, n);
        host[n] = '\0';
        port_text = colon + 1;
    }

    unsigned port;
    if (parse_port(port_text, &port) < 0)
        return addr_fail(err, err_len, "address '%s': port must be a number 0..65535",
                         text);

    struct sockaddr_storage ss;
    unsigned len;
    memset(&ss, 0, sizeof(ss));
    if (v6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
            return addr_fail(err, err_len, "address '%s': bad IPv6 address '%s'", text,
                             host);
        len = sizeof(*sin6);
    } else {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        if (strcmp(host, "*") == 0)
            sin->sin_addr.s_addr = htonl(INADDR_ANY);
        else if (strcmp(host, "localhost") == 0)
            sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        else if (inet_pton(AF_INET, host, &sin->sin_addr) != 1) {
            /* Resolving names here would make the config's meaning depend on DNS at
             * load time; say which of the two mistakes it was. */
            if (only_digits_and_dots(host))
                return addr_fail(err, err_len, "address '%s': bad IPv4 address '%s'", text,
                                 host);
            return addr_fail(err, err_len, "address '%s': use an IP literal", text);
        }
        len = sizeof(*sin);
    }
    if (out)
        memcpy(out, &ss, sizeof(ss));
    if (out_len)
        *out_len = len;
    return 0;
}

static bool same_sockaddr(const struct sockaddr_storage *a, unsigned alen,
                          const struct sockaddr_storage *b, unsigned blen)
{
    /* mp_parse_address zeroes the storage first, so equal endpoints compare equal. */
    return alen == blen && memcmp(a, b, alen) == 0;
}

/* ------------------------------------------------------------------ CIDR */

static int check_cidr(const char *text)
{
    uint8_t net[16];
    unsigned bits;
    char why[128];
    return mp_cidr_parse(text, true, net, &bits, why, sizeof(why));
}

/* ------------------------------------------------------------------ loader state */

typedef struct loader {
    mp_host_config *cfg;
    char *err;
    size_t err_len;
} loader;

static int fail_nomem(loader *ld, const config_setting_t *s)
{
    mp_config_error(s, ld->err, ld->err_len, "out of memory");
    return -ENOMEM;
}

static int dup_into(loader *ld, const config_setting_t *s, const char *v, char **out)
{
    *out = strdup(v);
    return *out ? 0 : fail_nomem(ld, s);
}

/* Joins a relative path onto the config's directory; the result belongs to the tree. */
static int resolve_path(loader *ld, const config_setting_t *s, const char *p, char **out)
{
    if (p[0] == '/')
        return dup_into(ld, s, p, out);
    while (p[0] == '.' && p[1] == '/')
        p += 2;
    const char *dir = ld->cfg->dir;
    size_t dl = strlen(dir);
    const char *sep = (dl && dir[dl - 1] == '/') ? "" : "/";
    size_t need = dl + strlen(sep) + strlen(p) + 1;
    char *r = malloc(need);
    if (!r)
        return fail_nomem(ld, s);
    snprintf(r, need, "%s%s%s", dir, sep, p);
    *out = r;
    return 0;
}

static int check_keys(loader *ld, const config_setting_t *grp, const char *const *allowed,
                      const char *where)
{
    int rc = mp_config_check_keys(grp, allowed, ld->err, ld->err_len);
    if (rc < 0 && ld->err && ld->err_len) {
        size_t n = strlen(ld->err);
        snprintf(ld->err + n, ld->err_len - n, " in %s", where);
    }
    return rc;
}

/* The getters leave *out alone when the key is absent, so callers preload defaults. */

static int get_int(loader *ld, const config_setting_t *grp, const char *where,
                   const char *key, int64_t lo, int64_t hi, int64_t *out)
{
    const config_setting_t *s = config_setting_get_member(grp, key);
    if (!s)
        return 0;
    int t = config_setting_type(s);
    if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
        return mp_config_error(s, ld->err, ld->err_len, "%s.%s must be an integer", where,
                               key);
    long long v = config_setting_get_int64(s);
    if (v < lo || v > hi) {
        if (hi == INT64_MAX)
            return mp_config_error(s, ld->err, ld->err_len,
                                   "%s.%s must be at least %lld (got %lld)", where, key,
                                   (long long)lo, v);
        return mp_config_error(s, ld->err, ld->err_len,
                               "%s.%s must be between %lld and %lld (got %lld)", where, key,
                               (long long)lo, (long long)hi, v);
    }
    *out = (int64_t)v;
    return 0;
}

static int get_bool(loader *ld, const config_setting_t *grp, const char *where,
                    const char *key, bool *out)
{
    const config_setting_t *s = config_setting_get_member(grp, key);
    if (!s)
        return 0;
    if (config_setting_type(s) != CONFIG_TYPE_BOOL)
        return mp_config_error(s, ld->err, ld->err_len,
                               "%s.%s must be a boolean (true or false)", where, key);
    *out = config_setting_get_bool(s) != 0;
    return 0;
}

/* Borrowed from the libconfig tree. Empty strings are refused everywhere in the host
 * schema: none of its strings has a meaningful empty value. */
static int get_str(loader *ld, const config_setting_t *grp, const char *where,
                   const char *key, bool required, const char **out,
                   const config_setting_t **node)
{
    const config_setting_t *s = config_setting_get_member(grp, key);
    if (node)
        *node = s;
    if (!s) {
        if (required)
            return mp_config_error(grp, ld->err, ld->err_len, "%s.%s is required", where,
                                   key);
        return 0;
    }
    if (config_setting_type(s) != CONFIG_TYPE_STRING)
        return mp_config_error(s, ld->err, ld->err_len, "%s.%s must be a string", where,
                               key);
    const char *v = config_setting_get_string(s);
    if (!v || !*v)
        return mp_config_error(s, ld->err, ld->err_len, "%s.%s must not be empty", where,
                               key);
    *out = v;
    return 0;
}

/* A string copied into the tree; *out stays NULL when an optional one is absent. */
static int dup_str(loader *ld, const config_setting_t *grp, const char *where,
                   const char *key, bool required, char **out)
{
    const char *v = NULL;
    const config_setting_t *s;
    int rc = get_str(ld, grp, where, key, required, &v, &s);
    if (rc < 0 || !v)
        return rc;
    return dup_into(ld, s, v, out);
}

static int optional_path(loader *ld, const config_setting_t *grp, const char *where,
                         const char *key, char **out)
{
    const char *v = NULL;
    const config_setting_t *s;
    int rc = get_str(ld, grp, where, key, false, &v, &s);
    if (rc < 0 || !v)
        return rc;
    return resolve_path(ld, s, v, out);
}

static const config_setting_t *section(const config_setting_t *root, const char *key)
{
    return config_setting_get_member(root, key);
}

static int need_type(loader *ld, const config_setting_t *s, int type, const char *what,
                     const char *expected)
{
    if (config_setting_type(s) == type)
        return 0;
    return mp_config_error(s, ld->err, ld->err_len, "%s must be %s", what, expected);
}

/* ------------------------------------------------------------------ host { } */

static const char *const log_level_names[] = {"error", "warn", "info", "debug"};

static int load_host(loader *ld, const config_setting_t *root)
{
    static const char *const keys[] = {"workers",   "plugin_dir", "state_dir",
                                       "log_level", "autoload",   "drain_timeout_ms",
                                       "state_store", NULL};
    mp_host_config *cfg = ld->cfg;
    const config_setting_t *h = section(root, "host");
    int rc;

    cfg->workers = 0;
    cfg->log_level = MP_LOG_INFO;
    cfg->autoload = true;
    cfg->drain_timeout_ms = 30000;

    if (h) {
        if ((rc = need_type(ld, h, CONFIG_TYPE_GROUP, "host", "a group")) < 0 ||
            (rc = check_keys(ld, h, keys, "host")) < 0)
            return rc;
        int64_t workers = 0;
        if ((rc = get_int(ld, h, "host", "workers", 0, 256, &workers)) < 0)
            return rc;
        cfg->workers = (int)workers;
        if ((rc = optional_path(ld, h, "host", "plugin_dir", &cfg->plugin_dir)) < 0 ||
            (rc = optional_path(ld, h, "host", "state_dir", &cfg->state_dir)) < 0)
            return rc;
        const char *level = NULL;
        const config_setting_t *ls;
        if ((rc = get_str(ld, h, "host", "log_level", false, &level, &ls)) < 0)
            return rc;
        if (level) {
            int found = -1;
            for (int i = 0; i < 4; i++)
                if (strcmp(level, log_level_names[i]) == 0)
                    found = i;
            if (found < 0)
                return mp_config_error(ls, ld->err, ld->err_len,
                                       "host.log_level '%s' is not one of error, warn, "
                                       "info, debug",
                                       level);
            cfg->log_level = found;
        }
        const char *store = NULL;
        const config_setting_t *ss;
        if ((rc = get_str(ld, h, "host", "state_store", false, &store, &ss)) < 0)
            return rc;
        if (store) {
            if (!*store)
                return mp_config_error(ss, ld->err, ld->err_len,
                                       "host.state_store must name an instance");
            if (!(cfg->state_store = strdup(store)))
                return -ENOMEM;
            cfg->state_store_line = config_setting_source_line(ss);
        }
        if ((rc = get_bool(ld, h, "host", "autoload", &cfg->autoload)) < 0 ||
            (rc = get_int(ld, h, "host", "drain_timeout_ms", 0, 3600000,
                          &cfg->drain_timeout_ms)) < 0)
            return rc;
    }
    if (!cfg->plugin_dir && (rc = resolve_path(ld, root, "plugins", &cfg->plugin_dir)) < 0)
        return rc;
    if (!cfg->state_dir && (rc = resolve_path(ld, root, "state", &cfg->state_dir)) < 0)
        return rc;
    return 0;
}

/* ------------------------------------------------------------------ grpc { } */

static int load_tls(loader *ld, const config_setting_t *g)
{
    static const char *const keys[] = {"cert", "key", "client_ca", "require_client_cert",
                                       NULL};
    mp_grpc_cfg *gc = &ld->cfg->grpc;
    const config_setting_t *t = config_setting_get_member(g, "tls");
    int rc;
    if (!t)
        return 0;
    if ((rc = need_type(ld, t, CONFIG_TYPE_GROUP, "grpc.tls", "a group")) < 0 ||
        (rc = check_keys(ld, t, keys, "grpc.tls")) < 0 ||
        (rc = optional_path(ld, t, "grpc.tls", "cert", &gc->tls_cert)) < 0 ||
        (rc = optional_path(ld, t, "grpc.tls", "key", &gc->tls_key)) < 0 ||
        (rc = optional_path(ld, t, "grpc.tls", "client_ca", &gc->tls_client_ca)) < 0)
        return rc;
    if (gc->tls_cert && !gc->tls_key)
        return mp_config_error(config_setting_get_member(t, "cert"), ld->err, ld->err_len,
                               "grpc.tls.cert is set but grpc.tls.key is not");
    if (gc->tls_key && !gc->tls_cert)
        return mp_config_error(config_setting_get_member(t, "key"), ld->err, ld->err_len,
                               "grpc.tls.key is set but grpc.tls.cert is not");
    if (gc->tls_client_ca && !gc->tls_cert)
        return mp_config_error(config_setting_get_member(t, "client_ca"), ld->err,
                               ld->err_len,
                               "grpc.tls.client_ca needs grpc.tls.cert and grpc.tls.key");
    const config_setting_t *req = config_setting_get_member(t, "require_client_cert");
    gc->require_client_cert = gc->tls_client_ca != NULL;
    if (req) {
        if ((rc = get_bool(ld, t, "grpc.tls", "require_client_cert",
                           &gc->require_client_cert)) < 0)
            return rc;
        if (!gc->tls_client_ca)
            return mp_config_error(req, ld->err, ld->err_len,
                                   "grpc.tls.require_client_cert needs grpc.tls.client_ca");
    }
    return 0;
}

static int load_grpc(loader *ld, const config_setting_t *root)
{
    static const char *const keys[] = {"address", "max_message_bytes",
                                       "max_concurrent_streams", "tls", NULL};
    mp_grpc_cfg *gc = &ld->cfg->grpc;
    const config_setting_t *g = section(root, "grpc");
    const config_setting_t *as = NULL;
    const char *address = MP_DEFAULT_GRPC_ADDRESS;
    int64_t streams = 100;
    int rc;

    gc->max_message_bytes = MP_DEFAULT_MAX_MESSAGE_BYTES;
    if (g) {
        if ((rc = need_type(ld, g, CONFIG_TYPE_GROUP, "grpc", "a group")) < 0 ||
            (rc = check_keys(ld, g, keys, "grpc")) < 0 ||
            (rc = get_str(ld, g, "grpc", "address", false, &address, &as)) < 0 ||
            (rc = get_int(ld, g, "grpc", "max_message_bytes", 1024, 64 * 1024 * 1024,
                          &gc->max_message_bytes)) < 0 ||
            (rc = get_int(ld, g, "grpc", "max_concurrent_streams", 1, 10000, &streams)) <
                0 ||
            (rc = load_tls(ld, g)) < 0)
            return rc;
    }
    gc->max_concurrent_streams = (int)streams;
    char why[256];
    if (mp_parse_address(address, NULL, NULL, why, sizeof(why)) < 0)
        return mp_config_error(as ? as : root, ld->err, ld->err_len, "grpc: %s", why);
    return dup_into(ld, as ? as : root, address, &gc->address);
}

/* ------------------------------------------------------------------ listeners */

static const char *where_file(const config_setting_t *s)
{
    for (; s; s = config_setting_parent(s))
        if (config_setting_source_file(s))
            return config_setting_source_file(s);
    return "<config>";
}

static int load_modules(loader *ld, const config_setting_t *grp, const char *where,
                        mp_listener_cfg *l)
{
    const config_setting_t *m = config_setting_get_member(grp, "modules");
    if (!m)
        return 0;
    int t = config_setting_type(m);
    if (t != CONFIG_TYPE_ARRAY && t != CONFIG_TYPE_LIST)
        return mp_config_error(m, ld->err, ld->err_len,
                               "%s.modules must be an array of strings", where);
    int n = config_setting_length(m);
    if (n == 0)
        return 0;
    l->modules = calloc((size_t)n, sizeof(*l->modules));
    if (!l->modules)
        return fail_nomem(ld, m);
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(m, (unsigned)i);
        if (config_setting_type(e) != CONFIG_TYPE_STRING)
            return mp_config_error(e, ld->err, ld->err_len,
                                   "%s.modules must be an array of strings", where);
        const char *v = config_setting_get_string(e);
        if (!v || !*v)
            return mp_config_error(e, ld->err, ld->err_len,
                                   "%s.modules[%d] must not be empty", where, i);
        int rc = dup_into(ld, e, v, &l->modules[i]);
        if (rc < 0)
            return rc;
        l->n_modules++;
    }
    return 0;
}

static int get_protocol(loader *ld, const config_setting_t *e, const char *where, int *out);

static int load_listeners(loader *ld, const config_setting_t *root)
{
    static const char *const keys[] = {"name",           "address",          "modules",
                                       "default_module", "sniff_timeout_ms", "protocol",
                                       NULL};
    mp_host_config *cfg = ld->cfg;
    const config_setting_t *list = section(root, "listeners");
    int rc;
    if (!list)
        return 0;
    if ((rc = need_type(ld, list, CONFIG_TYPE_LIST, "listeners",
                        "a list of groups: ( { ... }, ... )")) < 0)
        return rc;
    int n = config_setting_length(list);
    if (n > MAX_LISTENERS)
        return mp_config_error(list, ld->err, ld->err_len,
                               "too many listeners (%d, at most %d)", n, MAX_LISTENERS);
    if (n == 0)
        return 0;
    cfg->listeners = calloc((size_t)n, sizeof(*cfg->listeners));
    struct sockaddr_storage *addrs = calloc((size_t)n, sizeof(*addrs));
    unsigned *lens = calloc((size_t)n, sizeof(*lens));
    if (!cfg->listeners || !addrs || !lens) {
        rc = fail_nomem(ld, list);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(list, (unsigned)i);
        mp_listener_cfg *l = &cfg->listeners[i];
        char where[32];
        snprintf(where, sizeof(where), "listeners[%d]", i);
        cfg->n_listeners++; /* counted first so mp_config_free sees partial entries */
        l->line = (int)config_setting_source_line(e);
        l->sniff_timeout_ms = 5000;
        if ((rc = need_type(ld, e, CONFIG_TYPE_GROUP, where, "a group")) < 0 ||
            (rc = check_keys(ld, e, keys, where)) < 0 ||
            (rc = dup_str(ld, e, where, "name", true, &l->name)) < 0 ||
            (rc = dup_str(ld, e, where, "address", true, &l->address)) < 0 ||
            (rc = load_modules(ld, e, where, l)) < 0 ||
            (rc = dup_str(ld, e, where, "default_module", false, &l->default_module)) < 0 ||
            (rc = get_int(ld, e, where, "sniff_timeout_ms", 1, 600000,
                          &l->sniff_timeout_ms)) < 0 ||
            (rc = get_protocol(ld, e, where, &l->protocol)) < 0)
            goto out;
        const config_setting_t *ns = config_setting_get_member(e, "name");
        const config_setting_t *as = config_setting_get_member(e, "address");
        char why[256];
        if (mp_parse_address(l->address, &addrs[i], &lens[i], why, sizeof(why)) < 0) {
            rc = mp_config_error(as, ld->err, ld->err_len, "%s: %s", where, why);
            goto out;
        }
        for (int j = 0; j < i; j++) {
            const config_setting_t *prev = config_setting_get_elem(list, (unsigned)j);
            if (strcmp(cfg->listeners[j].name, l->name) == 0) {
                const config_setting_t *pn = config_setting_get_member(prev, "name");
                rc = mp_config_error(ns, ld->err, ld->err_len,
                                     "duplicate listener name '%s' (first defined at %s:%u)",
                                     l->name, where_file(pn),
                                     config_setting_source_line(pn));
                goto out;
            }
            if (same_sockaddr(&addrs[j], lens[j], &addrs[i], lens[i])) {
                const config_setting_t *pa = config_setting_get_member(prev, "address");
                rc = mp_config_error(as, ld->err, ld->err_len,
                                     "listener '%s' uses the same address as listener '%s' "
                                     "(%s:%u)",
                                     l->name, cfg->listeners[j].name, where_file(pa),
                                     config_setting_source_line(pa));
                goto out;
            }
        }
    }
    rc = 0;
out:
    free(addrs);
    free(lens);
    return rc;
}

/* ------------------------------------------------------------------ routes */

static void protocol_list(char *buf, size_t len)
{
    size_t off = 0;
    for (int i = 0; i < N_PROTOCOLS && off < len; i++) {
        int n = snprintf(buf + off, len - off, "%s%s", i ? ", " : "", protocol_names[i]);
        if (n < 0)
            return;
        off += (size_t)n;
    }
    if (off < len)
        snprintf(buf + off, len - off, " (or any)");
}

/* An optional "protocol" name key; *out stays 0 (any) when absent. */
static int get_protocol(loader *ld, const config_setting_t *e, const char *where, int *out)
{
    const char *proto = NULL;
    const config_setting_t *ps;
    int rc = get_str(ld, e, where, "protocol", false, &proto, &ps);
    if (rc < 0 || !proto)
        return rc;
    *out = mp_protocol_from_name(proto);
    if (*out < 0) {
        char names[256];
        protocol_list(names, sizeof(names));
        return mp_config_error(ps, ld->err, ld->err_len,
                               "%s.protocol: unknown protocol '%s' (valid: %s)", where, proto,
                               names);
    }
    return 0;
}

static int load_routes(loader *ld, const config_setting_t *root)
{
    static const char *const keys[] = {"id",   "protocol", "source", "destination",
                                       "destination_port", "path", "priority", "target",
                                       NULL};
    mp_host_config *cfg = ld->cfg;
    const config_setting_t *list = section(root, "routes");
    int rc;
    if (!list)
        return 0;
    if ((rc = need_type(ld, list, CONFIG_TYPE_LIST, "routes",
                        "a list of groups: ( { ... }, ... )")) < 0)
        return rc;
    int n = config_setting_length(list);
    if (n > MAX_ROUTES)
        return mp_config_error(list, ld->err, ld->err_len, "too many routes (%d, at most %d)",
                               n, MAX_ROUTES);
    if (n == 0)
        return 0;
    cfg->routes = calloc((size_t)n, sizeof(*cfg->routes));
    if (!cfg->routes)
        return fail_nomem(ld, list);
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(list, (unsigned)i);
        mp_route_cfg *r = &cfg->routes[i];
        char where[32];
        snprintf(where, sizeof(where), "routes[%d]", i);
        cfg->n_routes++;
        r->line = (int)config_setting_source_line(e);
        int64_t port = 0, priority = 0;
        if ((rc = need_type(ld, e, CONFIG_TYPE_GROUP, where, "a group")) < 0 ||
            (rc = check_keys(ld, e, keys, where)) < 0 ||
            (rc = dup_str(ld, e, where, "id", true, &r->id)) < 0 ||
            (rc = get_protocol(ld, e, where, &r->protocol)) < 0 ||
            (rc = dup_str(ld, e, where, "source", false, &r->source)) < 0 ||
            (rc = dup_str(ld, e, where, "destination", false, &r->destination)) < 0 ||
            (rc = get_int(ld, e, where, "destination_port", 0, 65535, &port)) < 0 ||
            (rc = dup_str(ld, e, where, "path", false, &r->path)) < 0 ||
            (rc = get_int(ld, e, where, "priority", INT32_MIN, INT32_MAX, &priority)) < 0 ||
            (rc = dup_str(ld, e, where, "target", true, &r->target)) < 0)
            return rc;
        r->destination_port = (int32_t)port;
        r->priority = (int32_t)priority;
        if (r->source && check_cidr(r->source) < 0)
            return mp_config_error(config_setting_get_member(e, "source"), ld->err,
                                   ld->err_len,
                                   "%s.source '%s' is not a CIDR like 10.0.0.0/8 or ::1/128",
                                   where, r->source);
        for (int j = 0; j < i; j++) {
            if (strcmp(cfg->routes[j].id, r->id) == 0) {
                const config_setting_t *prev = config_setting_get_elem(list, (unsigned)j);
                const config_setting_t *pi = config_setting_get_member(prev, "id");
                return mp_config_error(config_setting_get_member(e, "id"), ld->err,
                                       ld->err_len,
                                       "duplicate route id '%s' (first defined at %s:%u)",
                                       r->id, where_file(pi), config_setting_source_line(pi));
            }
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ rate_limits */

static int load_rate_limits(loader *ld, const config_setting_t *root)
{
    static const char *const keys[] = {"id",
                                       "instance",
                                       "target",
                                       "requests_per_second",
                                       "requests_per_minute",
                                       "requests_per_hour",
                                       "burst_size",
                                       "enabled",
                                       NULL};
    mp_host_config *cfg = ld->cfg;
    const config_setting_t *list = section(root, "rate_limits");
    int rc;
    if (!list)
        return 0;
    if ((rc = need_type(ld, list, CONFIG_TYPE_LIST, "rate_limits",
                        "a list of groups: ( { ... }, ... )")) < 0)
        return rc;
    int n = config_setting_length(list);
    if (n == 0)
        return 0;
    cfg->rate_limits = calloc((size_t)n, sizeof(*cfg->rate_limits));
    if (!cfg->rate_limits)
        return fail_nomem(ld, list);
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(list, (unsigned)i);
        mp_rate_limit_cfg *r = &cfg->rate_limits[i];
        char where[32];
        snprintf(where, sizeof(where), "rate_limits[%d]", i);
        cfg->n_rate_limits++;
        r->line = (int)config_setting_source_line(e);
        r->enabled = true;
        if ((rc = need_type(ld, e, CONFIG_TYPE_GROUP, where, "a group")) < 0 ||
            (rc = check_keys(ld, e, keys, where)) < 0 ||
            (rc = dup_str(ld, e, where, "id", true, &r->id)) < 0 ||
            (rc = dup_str(ld, e, where, "instance", true, &r->instance)) < 0 ||
            (rc = dup_str(ld, e, where, "target", false, &r->target)) < 0 ||
            (rc = get_int(ld, e, where, "requests_per_second", 0, INT64_MAX,
                          &r->requests_per_second)) < 0 ||
            (rc = get_int(ld, e, where, "requests_per_minute", 0, INT64_MAX,
                          &r->requests_per_minute)) < 0 ||
            (rc = get_int(ld, e, where, "requests_per_hour", 0, INT64_MAX,
                          &r->requests_per_hour)) < 0 ||
            (rc = get_int(ld, e, where, "burst_size", 0, INT64_MAX, &r->burst_size)) < 0 ||
            (rc = get_bool(ld, e, where, "enabled", &r->enabled)) < 0)
            return rc;
        if (!r->target && (rc = dup_into(ld, e, "*", &r->target)) < 0)
            return rc;
        if (r->requests_per_second <= 0 && r->requests_per_minute <= 0 &&
            r->requests_per_hour <= 0)
            return mp_config_error(e, ld->err, ld->err_len,
                                   "%s needs requests_per_second, requests_per_minute or "
                                   "requests_per_hour greater than 0",
                                   where);
        for (int j = 0; j < i; j++) {
            const mp_rate_limit_cfg *p = &cfg->rate_limits[j];
            if (strcmp(p->id, r->id) == 0 && strcmp(p->instance, r->instance) == 0) {
                const config_setting_t *prev = config_setting_get_elem(list, (unsigned)j);
                const config_setting_t *pi = config_setting_get_member(prev, "id");
                return mp_config_error(config_setting_get_member(e, "id"), ld->err,
                                       ld->err_len,
                                       "duplicate rate limit '%s' for instance '%s' (first "
                                       "defined at %s:%u)",
                                       r->id, r->instance, where_file(pi),
                                       config_setting_source_line(pi));
            }
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ instances */

/* 1..max characters from [a-z0-9_-]; '_' and '-' may lead only when dash_first
 * (instance ids may not start with one, descriptor names may). */
static bool valid_name(const char *s, size_t max, bool dash_first)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (!alnum && !((c == '_' || c == '-') && (i > 0 || dash_first)))
            return false;
    }
    return true;
}

static int load_instances(loader *ld, const config_setting_t *root)
{
    static const char *const keys[] = {"plugin", "enabled", "max_connections", "settings",
                                       NULL};
    mp_host_config *cfg = ld->cfg;
    const config_setting_t *grp = section(root, "instances");
    int rc;
    if (!grp)
        return 0;
    if ((rc = need_type(ld, grp, CONFIG_TYPE_GROUP, "instances",
                        "a group: instances: { id: { ... }; }")) < 0)
        return rc;
    int n = config_setting_length(grp);
    if (n == 0)
        return 0;
    cfg->instances = calloc((size_t)n, sizeof(*cfg->instances));
    if (!cfg->instances)
        return fail_nomem(ld, grp);
    for (int i = 0; i < n; i++) {
        config_setting_t *e = config_setting_get_elem(grp, (unsigned)i);
        mp_instance_cfg *in = &cfg->instances[i];
        const char *id = config_setting_name(e);
        cfg->n_instances++;
        in->line = (int)config_setting_source_line(e);
        in->enabled = true;
        if (!valid_name(id, 63, false))
            return mp_config_error(e, ld->err, ld->err_len,
                                   "instance id '%s' must match [a-z0-9][a-z0-9_-]{0,62}", id);
        char where[96];
        snprintf(where, sizeof(where), "instances.%s", id);
        if ((rc = need_type(ld, e, CONFIG_TYPE_GROUP, where, "a group")) < 0 ||
            (rc = check_keys(ld, e, keys, where)) < 0 ||
            (rc = dup_into(ld, e, id, &in->id)) < 0)
            return rc;
        const char *plugin = id;
        const config_setting_t *ps = e;
        int64_t maxc = 0;
        if ((rc = get_str(ld, e, where, "plugin", false, &plugin, &ps)) < 0 ||
            (rc = get_bool(ld, e, where, "enabled", &in->enabled)) < 0 ||
            (rc = get_int(ld, e, where, "max_connections", 0, INT32_MAX, &maxc)) < 0)
            return rc;
        /* The plugin name ends up in file lookups, so it gets the descriptor's own
         * character set and nothing that could climb out of plugin_dir. */
        if (!valid_name(plugin, 32, true))
            return mp_config_error(ps ? ps : e, ld->err, ld->err_len,
                                   "%s.plugin '%s' must match [a-z0-9_-]{1,32}", where,
                                   plugin);
        if ((rc = dup_into(ld, ps ? ps : e, plugin, &in->plugin)) < 0)
            return rc;
        in->max_connections = (int32_t)maxc;
        config_setting_t *settings = config_setting_get_member(e, "settings");
        if (settings) {
            if (!config_setting_is_group(settings))
                return mp_config_error(settings, ld->err, ld->err_len,
                                       "%s.settings must be a group: settings: { ... }",
                                       where);
        } else {
            settings = config_setting_add(e, "settings", CONFIG_TYPE_GROUP);
            if (!settings)
                return fail_nomem(ld, e);
            /* A synthesised group has no source position; borrow the instance's so
             * a plugin's complaint about a missing key points somewhere useful. */
            settings->line = e->line;
            settings->file = e->file;
        }
        in->settings = settings;
    }
    return 0;
}

const mp_instance_cfg *mp_config_find_instance(const mp_host_config *cfg, const char *id)
{
    if (!cfg || !id)
        return NULL;
    for (size_t i = 0; i < cfg->n_instances; i++)
        if (cfg->instances[i].id && strcmp(cfg->instances[i].id, id) == 0)
            return &cfg->instances[i];
    return NULL;
}

/* ------------------------------------------------------------------ load */

static int validate(loader *ld)
{
    static const char *const keys[] = {"host",        "grpc",      "listeners", "routes",
                                       "rate_limits", "instances", NULL};
    const config_setting_t *root = config_root_setting(&ld->cfg->lc);
    int rc;
    if ((rc = check_keys(ld, root, keys, "top level")) < 0 || (rc = load_host(ld, root)) < 0 ||
        (rc = load_grpc(ld, root)) < 0 || (rc = load_listeners(ld, root)) < 0 ||
        (rc = load_routes(ld, root)) < 0 || (rc = load_rate_limits(ld, root)) < 0 ||
        (rc = load_instances(ld, root)) < 0)
        return rc;
    return 0;
}

static int parse_error(const mp_host_config *cfg, const char *name, char *err,
                       size_t err_len)
{
    const char *file = config_error_file(&cfg->lc);
    const char *why = config_error_text(&cfg->lc);
    if (err && err_len)
        snprintf(err, err_len, "%s:%d: %s", file ? file : name, config_error_line(&cfg->lc),
                 why ? why : "syntax error");
    return -EINVAL;
}

static mp_host_config *new_config(void)
{
    mp_host_config *cfg = calloc(1, sizeof(*cfg));
    if (!cfg)
        return NULL;
    config_init(&cfg->lc);
    config_set_options(&cfg->lc, 0);
    return cfg;
}

int mp_config_load(const char *path, mp_host_config **out, char *err, size_t err_len)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!path || !*path) {
        if (err && err_len)
            snprintf(err, err_len, "<config>:0: no configuration file given");
        return -EINVAL;
    }
    /* Checked here because libconfig reports a missing file without its name or errno. */
    struct stat st;
    int serr = stat(path, &st) < 0 ? errno : S_ISDIR(st.st_mode) ? EISDIR : 0;
    if (serr) {
        int e = serr;
        if (err && err_len)
            snprintf(err, err_len, "%s:0: cannot read: %s", path, strerror(e));
        return -e;
    }

    mp_host_config *cfg = new_config();
    if (!cfg) {
        if (err && err_len)
            snprintf(err, err_len, "%s:0: out of memory", path);
        return -ENOMEM;
    }
    int rc = -ENOMEM;
    char *copy = strdup(path);
    cfg->path = strdup(path);
    if (!copy || !cfg->path) {
        if (err && err_len)
            snprintf(err, err_len, "%s:0: out of memory", path);
        goto fail;
    }
    cfg->dir = realpath(dirname(copy), NULL);
    free(copy);
    if (!cfg->dir) {
        rc = -errno;
        if (err && err_len)
            snprintf(err, err_len, "%s:0: cannot resolve its directory: %s", path,
                     strerror(-rc));
        goto fail;
    }
    /* @include "x" then means the same thing whatever the working directory is. */
    config_set_include_dir(&cfg->lc, cfg->dir);
    if (!config_read_file(&cfg->lc, path)) {
        if (config_error_type(&cfg->lc) == CONFIG_ERR_FILE_IO) {
            rc = -EIO;
            if (err && err_len)
                snprintf(err, err_len, "%s:0: cannot read: %s", path, strerror(EIO));
        } else {
            rc = parse_error(cfg, path, err, err_len);
        }
        goto fail;
    }
    loader ld = {cfg, err, err_len};
    if ((rc = validate(&ld)) < 0)
        goto fail;
    *out = cfg;
    return 0;
fail:
    mp_config_free(cfg);
    return rc;
}

/* String input has no file; point every node at the caller's name so that both our
 * messages and the plugins' cfg_error say where the text came from. Nodes from an
 * @include keep the included file's name. */
static void stamp_file(config_setting_t *s, const char *name)
{
    if (!config_setting_source_file(s))
        s->file = name;
    if (config_setting_is_aggregate(s)) {
        int n = config_setting_length(s);
        for (int i = 0; i < n; i++)
            stamp_file(config_setting_get_elem(s, (unsigned)i), name);
    }
}

int mp_config_load_string(const char *text, const char *name, const char *base_dir,
                          mp_host_config **out, char *err, size_t err_len)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!name || !*name)
        name = "<config>";
    if (!text) {
        if (err && err_len)
            snprintf(err, err_len, "%s:0: no configuration text given", name);
        return -EINVAL;
    }
    mp_host_config *cfg = new_config();
    if (!cfg) {
        if (err && err_len)
            snprintf(err, err_len, "%s:0: out of memory", name);
        return -ENOMEM;
    }
    int rc = -ENOMEM;
    cfg->path = strdup(name);
    if (!cfg->path) {
        if (err && err_len)
            snprintf(err, err_len, "%s:0: out of memory", name);
        goto fail;
    }
    cfg->dir = realpath(base_dir ? base_dir : ".", NULL);
    if (!cfg->dir) {
        rc = -errno;
        if (err && err_len)
            snprintf(err, err_len, "%s:0: base directory '%s': %s", name,
                     base_dir ? base_dir : ".", strerror(-rc));
        goto fail;
    }
    /* The host re-reads its own file through here, so @include must work as it does
     * for mp_config_load. */
    config_set_include_dir(&cfg->lc, cfg->dir);
    if (!config_read_string(&cfg->lc, text)) {
        rc = parse_error(cfg, cfg->path, err, err_len);
        goto fail;
    }
    stamp_file(config_root_setting(&cfg->lc), cfg->path);
    loader ld = {cfg, err, err_len};
    if ((rc = validate(&ld)) < 0)
        goto fail;
    *out = cfg;
    return 0;
fail:
    mp_config_free(cfg);
    return rc;
}

void mp_config_free(mp_host_config *cfg)
{
    if (!cfg)
        return;
    /* The libconfig tree goes first: string input's nodes point at cfg->path. */
    config_destroy(&cfg->lc);
    free(cfg->grpc.address);
    free(cfg->grpc.tls_cert);
    free(cfg->grpc.tls_key);
    free(cfg->grpc.tls_client_ca);
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        mp_listener_cfg *l = &cfg->listeners[i];
        free(l->name);
        free(l->address);
        for (size_t j = 0; j < l->n_modules; j++)
            free(l->modules[j]);
        free(l->modules);
        free(l->default_module);
    }
    free(cfg->listeners);
    for (size_t i = 0; i < cfg->n_routes; i++) {
        mp_route_cfg *r = &cfg->routes[i];
        free(r->id);
        free(r->source);
        free(r->destination);
        free(r->path);
        free(r->target);
    }
    free(cfg->routes);
    for (size_t i = 0; i < cfg->n_rate_limits; i++) {
        mp_rate_limit_cfg *r = &cfg->rate_limits[i];
        free(r->id);
        free(r->instance);
        free(r->target);
    }
    free(cfg->rate_limits);
    for (size_t i = 0; i < cfg->n_instances; i++) {
        free(cfg->instances[i].id);
        free(cfg->instances[i].plugin);
    }
    free(cfg->instances);
    free(cfg->plugin_dir);
    free(cfg->state_dir);
    free(cfg->state_store);
    free(cfg->dir);
    free(cfg->path);
    free(cfg);
}

bool mp_config_listeners_differ(const mp_host_config *a, const mp_host_config *b)
{
    if (a->n_listeners != b->n_listeners)
        return true;
    for (size_t i = 0; i < a->n_listeners; i++) {
        const mp_listener_cfg *x = &a->listeners[i], *y = &b->listeners[i];
        if (strcmp(x->name, y->name) || strcmp(x->address, y->address))
            return true;
    }
    return false;
}

int mp_config_worker_count(const mp_host_config *cfg)
{
    long n = cfg && cfg->workers > 0 ? cfg->workers : sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        n = 1;
    return n > MP_CONFIG_MAX_WORKERS ? MP_CONFIG_MAX_WORKERS : (int)n;
}
