/*
 * rate_limit.h — enforcement of the wire RateLimit on the data path: which connections
 * or requests one limit covers (the target selector) and whether the next one may pass
 * (GCRA over up to three rates). Any worker thread may call mp_rate_limiter_allow() on
 * the same limiter at once; the shared-bucket case is lock-free, the per-source table
 * takes one small per-shard mutex. No dependency on protobuf or host state, so the
 * control plane converts a RateLimit into an mp_rate_spec and owns the limiter.
 *
 * Targets (the RateLimit.target string):
 *   "*" or ""           one bucket for everything the limit's instance receives
 *   "route:<route_id>"  one bucket, only for connections/requests matched by that route
 *   "ip"                one bucket per source address
 *   "ip:<CIDR>"         one bucket per source address, only for sources inside CIDR
 *   "cidr:<CIDR>"       one bucket shared by every source inside CIDR
 * Addresses are compared in the 16-byte IPv6 form with IPv4 mapped into ::ffff:0:0/96,
 * so a client seen as ::ffff:10.1.2.3 on a dual-stack socket is the same source as
 * 10.1.2.3 and an IPv4 CIDR covers it. Host bits beyond a CIDR's prefix are ignored, as
 * route_match and the config loader ignore them. A bare address is a /32 or /128.
 *
 * A request the selector does not cover (another route, no route id, a source outside
 * the CIDR, a source that is not IPv4/IPv6 for an address target) is allowed without
 * touching any bucket or counter.
 */
#ifndef MP_HOST_RATE_LIMIT_H
#define MP_HOST_RATE_LIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define MP_RATE_ROUTE_ID_MAX 128
#define MP_RATE_MAX_CELLS 3 /* per second, per minute, per hour */

/* Per-source table bound for "ip" targets when the spec leaves it 0, and the largest
 * bound a spec may ask for. */
#define MP_RATE_DEFAULT_MAX_SOURCES 65536u
#define MP_RATE_MAX_SOURCES_LIMIT (1u << 24)
/* Upper bound on the bytes the per-source table spends per tracked source (entry plus
 * its share of the hash index); the table never holds more than max_sources entries,
 * so an "ip" limiter holds at most max_sources * this plus a fixed few KiB. */
#define MP_RATE_SOURCE_BYTES_MAX 64u

typedef enum mp_rate_target_kind {
    MP_RATE_TARGET_ALL = 0,
    MP_RATE_TARGET_ROUTE,
    MP_RATE_TARGET_IP,
    MP_RATE_TARGET_CIDR,
} mp_rate_target_kind;

typedef struct mp_rate_target {
    mp_rate_target_kind kind;
    /* IP: true for "ip:<CIDR>"; CIDR: always true; otherwise false. */
    bool has_net;
    uint8_t net[16];  /* mapped form, host bits cleared */
    unsigned prefix;  /* bits of net that count, over the 128-bit form (IPv4 /8 = 104) */
    char route_id[MP_RATE_ROUTE_ID_MAX + 1]; /* ROUTE only */
} mp_rate_target;

/* One limit as the data path needs it. Rates are requests per period; 0 = that period
 * is not limited, at least one must be set. burst is how many requests may pass
 * back-to-back from idle before the rest are spaced at the rate; 0 = per_second, or 1
 * when only a minute/hour rate is set. The same burst applies to every rate and a
 * request passes only when it conforms to all of them, which with one burst means the
 * slowest rate (per_hour/3600 vs per_minute/60 vs per_second) sets the spacing. */
typedef struct mp_rate_spec {
    int64_t per_second;
    int64_t per_minute;
    int64_t per_hour;
    int64_t burst;
    const char *target;   /* selector string as above; NULL = "*" */
    uint32_t max_sources; /* "ip" targets: table bound; 0 = MP_RATE_DEFAULT_MAX_SOURCES */
} mp_rate_spec;

/* Counters since the limiter was made. allowed/refused count covered requests only.
 * sources_evicted counts every entry recycled to make room; sources_evicted_busy the
 * subset that still held state (no idle entry was found), each of which lets that
 * source start again from a full burst. memory_bytes is everything the limiter holds. */
typedef struct mp_rate_stats {
    uint64_t allowed;
    uint64_t refused;
    uint64_t sources_tracked;
    uint64_t sources_evicted;
    uint64_t sources_evicted_busy;
    uint64_t memory_bytes;
} mp_rate_stats;

typedef struct mp_rate_limiter mp_rate_limiter;

/* Parse a target selector. Returns 0, or -EINVAL with a sentence in err. */
int mp_rate_target_parse(const char *target, mp_rate_target *out, char *err, size_t err_len);

/* Check a spec without building a limiter (for SetRateLimit). 0 or -EINVAL + err. */
int mp_rate_spec_validate(const mp_rate_spec *spec, char *err, size_t err_len);

/* NULL on failure with err filled and errno set (EINVAL for a bad spec, ENOMEM). */
mp_rate_limiter *mp_rate_limiter_new(const mp_rate_spec *spec, char *err, size_t err_len);
void mp_rate_limiter_free(mp_rate_limiter *rl);

/* Decide one new connection or request from src (may be NULL for non-address targets)
 * matched by route_id (may be NULL) at now_ns, a monotonic clock in nanoseconds that
 * callers on different threads must share. True = allowed. When refused and
 * retry_after_ns is not NULL it receives how long until a request would conform (for
 * an HTTP Retry-After); it is set to 0 when allowed. */
bool mp_rate_limiter_allow(mp_rate_limiter *rl, const struct sockaddr *src,
                           const char *route_id, uint64_t now_ns, uint64_t *retry_after_ns);

void mp_rate_limiter_stats(const mp_rate_limiter *rl, mp_rate_stats *out);

#endif
