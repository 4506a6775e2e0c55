/*
 * alb_pool.h — one upstream's members and how a request picks one: round robin,
 * smooth weighted round robin, least connections and consistent hashing, all skipping
 * members the active checker marked unhealthy or that passive ejection took out, with
 * backup members as the last resort. Outcome reports drive passive ejection.
 *
 * A pool is built once with the settings and then shared by every worker thread: the
 * configured parts are immutable, the live parts are atomics, and smooth weighted round
 * robin alone takes a short mutex (never held across I/O). Time comes in as an
 * argument (monotonic milliseconds) so the logic stays pure and testable.
 */
#ifndef ALB_POOL_H
#define ALB_POOL_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "alb_http_headers.h"

#define ALB_POOL_MAX_MEMBERS 1024
#define ALB_POOL_WEIGHT_MAX 100
#define ALB_POOL_VNODES 128         /* ring points per unit of weight */
#define ALB_POOL_RING_MAX (1 << 18) /* total ring points, scaled down past this */

/* What alb_pool_pick returns when no member may take the request (all unhealthy,
 * ejected or excluded): the proxy answers 503 without trying anything. */
#define ALB_POOL_NONE (-EHOSTUNREACH)

typedef enum alb_balance {
    ALB_BAL_ROUND_ROBIN = 0,
    ALB_BAL_WEIGHTED,
    ALB_BAL_LEAST_CONN,
    ALB_BAL_HASH,
} alb_balance;

typedef enum alb_hash_src {
    ALB_HASH_CLIENT_IP = 0,
    ALB_HASH_HEADER, /* hash_name is the header name */
    ALB_HASH_COOKIE, /* hash_name is the cookie name */
} alb_hash_src;

typedef enum alb_outcome {
    ALB_OUT_OK = 0,
    ALB_OUT_CONNECT_ERROR,
    ALB_OUT_HTTP_5XX,
} alb_outcome;

typedef struct alb_member {
    /* configured */
    struct sockaddr_storage addr;
    socklen_t addr_len;
    char text[80]; /* as configured, for logs and stats */
    uint32_t weight;
    int backup;
    /* live, written by any worker (and the health checker) */
    _Atomic int healthy;            /* active checks' verdict; 1 until a checker says not */
    _Atomic uint32_t fails;         /* consecutive failed outcomes */
    _Atomic uint64_t ejected_until; /* monotonic ms; 0 = in service */
    _Atomic int64_t active;         /* requests between begin and end */
    _Atomic uint64_t picks, failures, ejections;
    int64_t swrr_current; /* smooth weighted round robin, under the pool's lock */
} alb_member;

typedef struct alb_pool_settings {
    alb_balance balance;
    alb_hash_src hash_src;
    char hash_name[64];
    uint32_t max_fails;       /* consecutive failures that eject; 0 = never eject */
    uint32_t fail_timeout_ms; /* how long an ejection lasts before one trial request */
} alb_pool_settings;

typedef struct alb_ring_point {
    uint64_t h;
    int member;
} alb_ring_point;

typedef struct alb_pool {
    alb_pool_settings set;
    alb_member *m; /* owned */
    int n;
    int *tier[2]; /* member indexes: [0] primaries, [1] backups (owned) */
    int ntier[2];
    alb_ring_point *ring[2]; /* hash only: sorted points per tier (owned) */
    int nring[2];
    _Atomic uint64_t rr[2]; /* rotation per tier, shared by all workers */
    pthread_mutex_t lock; /* smooth weighted round robin state */
} alb_pool;

/* Defaults: round robin, max_fails 3, fail_timeout 10 s. */
void alb_pool_settings_default(alb_pool_settings *s);

/* Builds `p` over `members` (n of them, taking ownership of the malloc'd array; it is
 * freed on failure too). Live fields are reset here. 0 or negative errno. */
int alb_pool_init(alb_pool *p, const alb_pool_settings *s, alb_member *members, int n,
                  char *err, size_t err_len);
void alb_pool_destroy(alb_pool *p);

/* The hash key of a request for a hash pool: the configured header's or cookie's
 * value, or the client IP when that is absent (or the pool hashes by client IP).
 * Returns 0 for pools that do not hash. */
uint64_t alb_pool_request_key(const alb_pool *p, const struct alb_http_field *fields,
                              size_t nfields, const char *client_ip);
/* The hash used for keys and ring points (exposed for tests). */
uint64_t alb_pool_hash(const void *data, size_t len);

/* Picks a member for one request: its index, or ALB_POOL_NONE. `excl` lists member
 * indexes that must not be picked (already tried); it may be NULL. A member whose
 * ejection has run out is handed to exactly one pick as a trial. */
int alb_pool_pick(alb_pool *p, uint64_t key, const int *excl, int nexcl, uint64_t now_ms);

/* A request starts / ends on member i (least connections counts these). */
void alb_pool_begin(alb_pool *p, int i);
void alb_pool_end(alb_pool *p, int i);

/* The outcome of a request on member i. Returns 1 when this report ejected the member
 * (so the caller can log it), else 0. */
int alb_pool_report(alb_pool *p, int i, alb_outcome o, uint64_t now_ms);

/* "healthy", "unhealthy" (active checks) or "ejected" (passive), for stats and logs. */
const char *alb_pool_member_state(const alb_pool *p, int i, uint64_t now_ms);
/* 1 when member i is healthy and not ejected (a kept upstream connection to it may
 * carry another request). */
int alb_pool_member_ok(const alb_pool *p, int i, uint64_t now_ms);
/* Members a pick could use right now (trial-ready ones count). */
int alb_pool_usable(const alb_pool *p, uint64_t now_ms);

/* Parses a balance / hash_key setting value; 0 or -EINVAL. */
int alb_pool_parse_balance(const char *v, alb_balance *out);
int alb_pool_parse_hash_key(const char *v, alb_pool_settings *s);

/* Monotonic clock in milliseconds (what the proxy passes as now_ms). */
uint64_t alb_pool_now_ms(void);

#endif
