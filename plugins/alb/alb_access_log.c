/*
 * alb_access_log.c — see alb_access_log.h. Each line is built in a stack buffer and
 * written with one write(2): appends to an O_APPEND file are atomic with respect to
 * each other, so workers need no lock. A line over the buffer is cut, never split.
 * Escaping follows nginx for combined (\" and \xHH for bytes outside printable ASCII)
 * and JSON's rules (bytes >= 0x80 as \u00XX, so the output is always valid UTF-8).
 */
#include "alb_access_log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES 8192
#define FIELD_MAX_BYTES 2048 /* per field, so a line is cut only in pathological cases */

struct alb_access_log {
    int fd;
    int owns_fd;
    alb_log_format format;
};

int alb_access_log_open(const char *path, alb_log_format format, alb_access_log **out,
                        char *err, size_t err_len)
{
    alb_access_log *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->format = format;
    if (strcmp(path, "stderr") == 0 || strcmp(path, "-") == 0) {
        l->fd = STDERR_FILENO;
    } else {
        l->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (l->fd < 0) {
            int e = errno;
            snprintf(err, err_len, "access log %s: %s", path, strerror(e));
            free(l);
            return -e;
        }
        l->owns_fd = 1;
    }
    *out = l;
    return 0;
}

void alb_access_log_close(alb_access_log *l)
{
    if (!l)
        return;
    if (l->owns_fd)
        close(l->fd);
    free(l);
}

typedef struct out {
    char *p;
    size_t len, cap; /* cap excludes the room kept for "\n\0" */
} out;

static void put(out *o, const char *s, size_t n)
{
    if (o->len + n > o->cap)
        n = o->cap - o->len;
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

static void putf(out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(out *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->p + o->len, o->cap - o->len + 1, fmt, ap);
    va_end(ap);
    if (n > 0)
        o->len += (size_t)n > o->cap - o->len ? o->cap - o->len : (size_t)n;
}

static void put_escaped(out *o, const char *s, size_t n, int json)
{
    static const char hex[] = "0123456789abcdef";
    if (n > FIELD_MAX_BYTES)
        n = FIELD_MAX_BYTES;
    for (size_t i = 0; i < n && o->len < o->cap; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        size_t el = 0;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            el = 2;
        } else if (c < 0x20 || c >= 0x7f) {
            if (json) {
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                el = 6;
            } else {
                esc[0] = '\\';
                esc[1] = 'x';
                esc[2] = hex[c >> 4];
                esc[3] = hex[c & 15];
                el = 4;
            }
        } else {
            esc[0] = (char)c;
            el = 1;
        }
        put(o, esc, el);
    }
}

/* A field of the combined format: its escaped bytes, or "-" when absent. */
static void put_field(out *o, const char *s, size_t n)
{
    if (!s || !n)
        put(o, "-", 1);
    else
        put_escaped(o, s, n, 0);
}

static void peer_text(const struct sockaddr *sa, char *buf, size_t len)
{
    if (sa && sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf, (socklen_t)len);
    else if (sa && sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, buf, (socklen_t)len);
    else
        snprintf(buf, len, "-");
}

static void json_str(out *o, const char *key, const char *s, size_t n, int comma)
{
    putf(o, "%s\"%s\":\"", comma ? "," : "", key);
    if (s)
        put_escaped(o, s, n, 1);
    put(o, "\"", 1);
}

size_t alb_access_log_format(alb_log_format f, const alb_access_entry *e, char *buf, size_t len)
{
    if (len < 3)
        return 0;
    out o = {buf, 0, len - 2};
    char addr[INET6_ADDRSTRLEN];
    peer_text(e->peer, addr, sizeof(addr));
    time_t secs = (time_t)(e->start_wall_us / 1000000);
    struct tm tm;
    localtime_r(&secs, &tm);
    if (f == ALB_LOG_COMBINED) {
        char when[64];
        strftime(when, sizeof(when), "%d/%b/%Y:%H:%M:%S %z", &tm);
        putf(&o, "%s - - [%s] \"", addr, when);
        put_field(&o, e->method, e->method_len);
        put(&o, " ", 1);
        put_field(&o, e->target, e->target_len);
        putf(&o, " HTTP/1.1\" %d %llu \"", e->status, (unsigned long long)e->bytes_out);
        put_field(&o, e->referer, e->referer_len);
        put(&o, "\" \"", 3);
        put_field(&o, e->user_agent, e->user_agent_len);
        put(&o, "\"", 1);
    } else {
        char when[64];
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
        char zone[8];
        strftime(zone, sizeof(zone), "%z", &tm);
        putf(&o, "{\"time\":\"%s.%03u%.3s:%s\"", when,
             (unsigned)(e->start_wall_us / 1000 % 1000), zone, zone + 3);
        json_str(&o, "remote_addr", addr, strlen(addr), 1);
        json_str(&o, "method", e->method, e->method_len, 1);
        json_str(&o, "uri", e->target, e->target_len, 1);
        json_str(&o, "host", e->host, e->host_len, 1);
        putf(&o, ",\"status\":%d,\"bytes_in\":%llu,\"bytes_out\":%llu,\"request_time\":%.6f",
             e->status, (unsigned long long)e->bytes_in, (unsigned long long)e->bytes_out,
             (double)e->latency_us / 1e6);
        json_str(&o, "referer", e->referer, e->referer_len, 1);
        json_str(&o, "user_agent", e->user_agent, e->user_agent_len, 1);
        json_str(&o, "route", e->route_id, e->route_id ? strlen(e->route_id) : 0, 1);
        json_str(&o, "upstream", e->upstream, e->upstream ? strlen(e->upstream) : 0, 1);
        putf(&o, ",\"scheme\":\"%s\"}", e->tls ? "https" : "http");
    }
    buf[o.len++] = '\n';
    buf[o.len] = '\0';
    return o.len;
}

void alb_access_log_write(alb_access_log *l, const alb_access_entry *e)
{
    if (!l)
        return;
    char line[LINE_MAX_BYTES];
    size_t n = alb_access_log_format(l->format, e, line, sizeof(line));
    /* a full disk loses log lines, never requests: the result is deliberately unused */
    ssize_t w = write(l->fd, line, n);
    (void)w;
}
