/*
 * config_view.c — owns the plugin-facing mp_config view (the cfg_* members of
 * mp_host_api) over libconfig settings, the "FILE:LINE: message" error format shared
 * with the host's own loader, and the renderer/parser pair that turns a section into
 * libconfig text and back for GetConfig / UpdateConfig.
 */
#include "config_view.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const config_setting_t *setting_of(const mp_config *node)
{
    return (const config_setting_t *)node;
}

/* Settings created by config_setting_add and the values of string input carry no file
 * of their own; the nearest ancestor that has one is the best answer we can give. */
static const char *node_file(const config_setting_t *s)
{
    for (; s; s = config_setting_parent(s))
        if (config_setting_source_file(s))
            return config_setting_source_file(s);
    return NULL;
}

static int node_line(const config_setting_t *s)
{
    if (!s)
        return 0;
    unsigned line = config_setting_source_line(s);
    return line > INT_MAX ? INT_MAX : (int)line;
}

static int verror(const config_setting_t *s, char *err, size_t err_len, const char *fmt,
                  va_list ap)
{
    if (!err || err_len == 0)
        return -EINVAL;
    const char *file = node_file(s);
    int n = snprintf(err, err_len, "%s:%d: ", file ? file : "<config>", node_line(s));
    if (n >= 0 && (size_t)n < err_len)
        vsnprintf(err + n, err_len - (size_t)n, fmt, ap);
    return -EINVAL;
}

int mp_config_error(const config_setting_t *s, char *err, size_t err_len, const char *fmt,
                    ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = verror(s, err, err_len, fmt, ap);
    va_end(ap);
    return rc;
}

int mp_config_check_keys(const config_setting_t *s, const char *const *allowed, char *err,
                         size_t err_len)
{
    /* An absent section has no keys, so nothing in it can be unknown. */
    if (!s)
        return 0;
    if (!config_setting_is_group(s))
        return mp_config_error(s, err, err_len, "expected a group");
    int n = config_setting_length(s);
    for (int i = 0; i < n; i++) {
        const config_setting_t *child = config_setting_get_elem(s, (unsigned)i);
        const char *name = config_setting_name(child);
        bool known = false;
        for (const char *const *a = allowed; a && *a && !known; a++)
            known = name && strcmp(name, *a) == 0;
        if (!known)
            return mp_config_error(child, err, err_len, "unknown key '%s'",
                                   name ? name : "");
    }
    return 0;
}

/* ------------------------------------------------------------------ the view */

static mp_config_kind view_kind(const mp_config *node)
{
    const config_setting_t *s = setting_of(node);
    if (!s)
        return MP_CFG_NONE;
    switch (config_setting_type(s)) {
    case CONFIG_TYPE_GROUP: return MP_CFG_GROUP;
    case CONFIG_TYPE_LIST: return MP_CFG_LIST;
    case CONFIG_TYPE_ARRAY: return MP_CFG_ARRAY;
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_INT64: return MP_CFG_INT;
    case CONFIG_TYPE_FLOAT: return MP_CFG_FLOAT;
    case CONFIG_TYPE_STRING: return MP_CFG_STRING;
    case CONFIG_TYPE_BOOL: return MP_CFG_BOOL;
    default: return MP_CFG_NONE;
    }
}

static const mp_config *view_lookup(const mp_config *node, const char *path)
{
    if (!node || !path)
        return NULL;
    /* libconfig's lookup never modifies the tree; its prototype just lacks const. */
    return mp_config_of(config_setting_lookup((config_setting_t *)setting_of(node), path));
}

/* The typed getters read `node` itself when path is NULL or empty, so a plugin can
 * read list elements it reached with cfg_child. */
static const config_setting_t *resolve(const mp_config *node, const char *path)
{
    if (!node)
        return NULL;
    if (!path || !*path)
        return setting_of(node);
    return setting_of(view_lookup(node, path));
}

static int view_get_int(const mp_config *node, const char *path, int64_t *out)
{
    const config_setting_t *s = resolve(node, path);
    if (!s)
        return -ENOENT;
    int t = config_setting_type(s);
    if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
        return -EINVAL;
    if (out)
        *out = (int64_t)config_setting_get_int64(s);
    return 0;
}

static int view_get_float(const mp_config *node, const char *path, double *out)
{
    const config_setting_t *s = resolve(node, path);
    if (!s)
        return -ENOENT;
    double v;
    switch (config_setting_type(s)) {
    case CONFIG_TYPE_FLOAT: v = config_setting_get_float(s); break;
    /* "timeout = 5;" is a fine way to write 5.0, and autoconvert is off. */
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_INT64: v = (double)config_setting_get_int64(s); break;
    default: return -EINVAL;
    }
    if (out)
        *out = v;
    return 0;
}

static int view_get_bool(const mp_config *node, const char *path, int *out)
{
    const config_setting_t *s = resolve(node, path);
    if (!s)
        return -ENOENT;
    if (config_setting_type(s) != CONFIG_TYPE_BOOL)
        return -EINVAL;
    if (out)
        *out = config_setting_get_bool(s) ? 1 : 0;
    return 0;
}

static int view_get_string(const mp_config *node, const char *path, const char **out)
{
    const config_setting_t *s = resolve(node, path);
    if (!s)
        return -ENOENT;
    if (config_setting_type(s) != CONFIG_TYPE_STRING)
        return -EINVAL;
    if (out)
        *out = config_setting_get_string(s);
    return 0;
}

static int view_count(const mp_config *node)
{
    const config_setting_t *s = setting_of(node);
    if (!s || !config_setting_is_aggregate(s))
        return 0;
    return config_setting_length(s);
}

static const mp_config *view_child(const mp_config *node, int index)
{
    if (index < 0 || index >= view_count(node))
        return NULL;
    return mp_config_of(config_setting_get_elem(setting_of(node), (unsigned)index));
}

static const char *view_name(const mp_config *node)
{
    const config_setting_t *s = setting_of(node);
    return s ? config_setting_name(s) : NULL;
}

static int view_line(const mp_config *node) { return node_line(setting_of(node)); }

__attribute__((format(printf, 4, 5))) static int
view_error(const mp_config *node, char *err, size_t err_len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = verror(setting_of(node), err, err_len, fmt, ap);
    va_end(ap);
    return rc;
}

static int view_check_keys(const mp_config *node, const char *const *allowed, char *err,
                           size_t err_len)
{
    return mp_config_check_keys(setting_of(node), allowed, err, err_len);
}

void mp_config_view_fill_api(mp_host_api *api)
{
    if (!api)
        return;
    api->cfg_kind = view_kind;
    api->cfg_lookup = view_lookup;
    api->cfg_get_int = view_get_int;
    api->cfg_get_float = view_get_float;
    api->cfg_get_bool = view_get_bool;
    api->cfg_get_string = view_get_string;
    api->cfg_count = view_count;
    api->cfg_child = view_child;
    api->cfg_name = view_name;
    api->cfg_line = view_line;
    api->cfg_error = view_error;
    api->cfg_check_keys = view_check_keys;
}

/* ------------------------------------------------------------------ rendering */

/* Growable output; the first failure sticks so callers check once at the end. */
typedef struct text_buf {
    char *p;
    size_t len;
    size_t cap;
    int rc;
} text_buf;

static void put(text_buf *b, const char *s, size_t n)
{
    if (b->rc)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->rc = -ENOMEM;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void puts_(text_buf *b, const char *s) { put(b, s, strlen(s)); }

static void indent(text_buf *b, int depth)
{
    for (int i = 0; i < depth; i++)
        put(b, "  ", 2);
}

static void put_string(text_buf *b, const char *s)
{
    put(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)(s ? s : ""); *c; c++) {
        char esc[5];
        switch (*c) {
        case '"': puts_(b, "\\\""); break;
        case '\\': puts_(b, "\\\\"); break;
        case '\n': puts_(b, "\\n"); break;
        case '\r': puts_(b, "\\r"); break;
        case '\t': puts_(b, "\\t"); break;
        case '\f': puts_(b, "\\f"); break;
        default:
            /* Raw control bytes would survive libconfig's scanner, but a newline-free,
             * printable rendering keeps line numbers and terminals sane. UTF-8 passes
             * through untouched. */
            if (*c < 0x20 || *c == 0x7f) {
                snprintf(esc, sizeof(esc), "\\x%02X", *c);
                puts_(b, esc);
            } else {
                put(b, (const char *)c, 1);
            }
        }
    }
    put(b, "\"", 1);
}

static void put_float(text_buf *b, double v)
{
    char num[40];
    if (isnan(v)) {
        /* libconfig has no spelling for NaN; parsing never produces one. */
        if (!b->rc)
            b->rc = -EINVAL;
        return;
    }
    if (isinf(v)) {
        /* strtod turns an overflowing literal into infinity, which is how libconfig read
         * it in the first place. */
        puts_(b, v < 0 ? "-1e999" : "1e999");
        return;
    }
    snprintf(num, sizeof(num), "%.17g", v);
    puts_(b, num);
    /* Without '.' or an exponent libconfig would read the number back as an integer. */
    if (!strpbrk(num, ".e"))
        puts_(b, ".0");
}

static void put_value(text_buf *b, const config_setting_t *s, int depth);

static void put_member(text_buf *b, const config_setting_t *s, int depth)
{
    indent(b, depth);
    puts_(b, config_setting_name(s));
    puts_(b, config_setting_is_group(s) ? ": " : " = ");
    put_value(b, s, depth);
    puts_(b, ";\n");
}

static void put_value(text_buf *b, const config_setting_t *s, int depth)
{
    char num[32];
    int n = config_setting_is_aggregate(s) ? config_setting_length(s) : 0;
    switch (config_setting_type(s)) {
    case CONFIG_TYPE_GROUP:
        if (n == 0) {
            puts_(b, "{ }");
            break;
        }
        puts_(b, "{\n");
        for (int i = 0; i < n; i++)
            put_member(b, config_setting_get_elem(s, (unsigned)i), depth + 1);
        indent(b, depth);
        puts_(b, "}");
        break;
    case CONFIG_TYPE_LIST:
        if (n == 0) {
            puts_(b, "( )");
            break;
        }
        puts_(b, "(\n");
        for (int i = 0; i < n; i++) {
            indent(b, depth + 1);
            put_value(b, config_setting_get_elem(s, (unsigned)i), depth + 1);
            puts_(b, i + 1 < n ? ",\n" : "\n");
        }
        indent(b, depth);
        puts_(b, ")");
        break;
    case CONFIG_TYPE_ARRAY:
        if (n == 0) {
            puts_(b, "[ ]");
            break;
        }
        puts_(b, "[ ");
        for (int i = 0; i < n; i++) {
            if (i)
                puts_(b, ", ");
            put_value(b, config_setting_get_elem(s, (unsigned)i), depth + 1);
        }
        puts_(b, " ]");
        break;
    case CONFIG_TYPE_INT:
        snprintf(num, sizeof(num), "%d", config_setting_get_int(s));
        puts_(b, num);
        break;
    case CONFIG_TYPE_INT64:
        /* Always suffixed, not only outside int32: the type then survives the round
         * trip, and an array of 64-bit values must not come back with mixed types
         * (libconfig rejects "[1L, 2]"). */
        snprintf(num, sizeof(num), "%lldL", config_setting_get_int64(s));
        puts_(b, num);
        break;
    case CONFIG_TYPE_FLOAT: put_float(b, config_setting_get_float(s)); break;
    case CONFIG_TYPE_STRING: put_string(b, config_setting_get_string(s)); break;
    case CONFIG_TYPE_BOOL: puts_(b, config_setting_get_bool(s) ? "true" : "false"); break;
    default:
        if (!b->rc)
            b->rc = -EINVAL;
        break;
    }
}

int mp_config_section_to_text(const config_setting_t *s, char **out, size_t *out_len)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (out_len)
        *out_len = 0;
    if (s && !config_setting_is_group(s))
        return -EINVAL;
    text_buf b = {0};
    put(&b, "", 0); /* an empty section still yields a valid, empty string */
    int n = s ? config_setting_length(s) : 0;
    for (int i = 0; i < n; i++)
        put_member(&b, config_setting_get_elem(s, (unsigned)i), 0);
    if (b.rc) {
        free(b.p);
        return b.rc;
    }
    *out = b.p;
    if (out_len)
        *out_len = b.len;
    return 0;
}

/* ------------------------------------------------------------------ parsing */

/* Text reaching us over gRPC must not make the host read local files, and libconfig
 * honours @include in strings too. The scanner only sees the directive at the start of a
 * line, so refusing every such line is enough (a multi-line string that happens to
 * contain one is refused too, which is harmless). Returns the line, or 0 if none. */
static int include_line(const char *text, size_t len)
{
    int line = 1;
    size_t i = 0;
    while (i < len) {
        size_t j = i;
        while (j < len && (text[j] == ' ' || text[j] == '\t'))
            j++;
        if (len - j >= 8 && memcmp(text + j, "@include", 8) == 0)
            return line;
        const char *nl = memchr(text + i, '\n', len - i);
        if (!nl)
            break;
        i = (size_t)(nl - text) + 1;
        line++;
    }
    return 0;
}

static int line_at(const char *text, size_t off)
{
    int line = 1;
    for (size_t i = 0; i < off; i++)
        line += text[i] == '\n';
    return line;
}

int mp_config_text_parse(const char *text, size_t len, const char *name, config_t *lc,
                         char *err, size_t err_len)
{
    const char *label = name ? name : "<config>";
    if (!lc || (!text && len)) {
        if (err && err_len)
            snprintf(err, err_len, "%s:0: no text to parse", label);
        return -EINVAL;
    }
    if (!text)
        text = "";
    const char *nul = memchr(text, '\0', len);
    if (nul) {
        if (err && err_len)
            snprintf(err, err_len, "%s:%d: NUL byte in configuration text", label,
                     line_at(text, (size_t)(nul - text)));
        return -EINVAL;
    }
    int inc = include_line(text, len);
    if (inc) {
        if (err && err_len)
            snprintf(err, err_len, "%s:%d: @include is not allowed in configuration text",
                     label, inc);
        return -EINVAL;
    }
    /* The caller's bytes need not be NUL-terminated; libconfig wants a C string. */
    char *copy = malloc(len + 1);
    if (!copy) {
        if (err && err_len)
            snprintf(err, err_len, "%s:0: out of memory", label);
        return -ENOMEM;
    }
    memcpy(copy, text, len);
    copy[len] = '\0';
    int ok = config_read_string(lc, copy);
    free(copy);
    if (!ok) {
        if (err && err_len) {
            const char *file = config_error_file(lc);
            const char *why = config_error_text(lc);
            snprintf(err, err_len, "%s:%d: %s", file ? file : label, config_error_line(lc),
                     why ? why : "syntax error");
        }
        return -EINVAL;
    }
    return 0;
}
