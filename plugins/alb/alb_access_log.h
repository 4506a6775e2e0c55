/*
 * alb_access_log.h — the ALB's access log: one line per request in nginx's "combined"
 * format (which log tools already parse) or as one JSON object per line, written to a
 * file opened for appending or to stderr.
 */
#ifndef ALB_ACCESS_LOG_H
#define ALB_ACCESS_LOG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef enum { ALB_LOG_COMBINED = 0, ALB_LOG_JSON = 1 } alb_log_format;

typedef struct alb_access_log alb_access_log;

/* path "stderr" (or "-") logs to standard error. Returns 0 or a negative errno with
 * the reason (the file and strerror) in err. */
int alb_access_log_open(const char *path, alb_log_format format, alb_access_log **out,
                        char *err, size_t err_len);
void alb_access_log_close(alb_access_log *l); /* NULL is ignored */

/* One finished request. Strings are (pointer, length) and may hold any bytes: they
 * are escaped on the way out. NULL/0 fields print as "-" (combined) or "" (JSON). */
typedef struct alb_access_entry {
    const struct sockaddr *peer;
    uint64_t start_wall_us; /* when the request began, microseconds since the epoch */
    uint64_t latency_us;
    const char *method; size_t method_len;
    const char *target; size_t target_len;
    const char *host; size_t host_len;
    const char *referer; size_t referer_len;
    const char *user_agent; size_t user_agent_len;
    const char *route_id;   /* NUL-terminated or NULL */
    const char *upstream;   /* "127.0.0.1:8080" or NULL */
    int status;             /* 0: no response was sent */
    uint64_t bytes_in, bytes_out;
    int tls;                /* the client spoke TLS */
} alb_access_entry;

/* Formats and writes one line; thread-safe (one write(2) per line to an O_APPEND
 * descriptor, so lines from several workers never interleave). */
void alb_access_log_write(alb_access_log *l, const alb_access_entry *e);

/* Formats one line into buf (NUL-terminated, ends in '\n'); returns its length,
 * truncated lines still end in '\n'. Exposed for tests. */
size_t alb_access_log_format(alb_log_format f, const alb_access_entry *e, char *buf,
                             size_t len);

#endif
