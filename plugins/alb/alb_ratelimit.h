/*
 * alb_ratelimit.h — the ALB's per-request rate limits, from ModuleService SetRateLimit
 * (handed over by rate_limits_changed). Every limit counts per client IP, as nginx's
 * limit_req keyed by $binary_remote_addr does; its target picks the requests it
 * applies to:
 *   "*"            every request of the instance
 *   "route:<id>"   requests the route <id> matched
 *   "ip:<cidr>"    requests from clients inside <cidr> (each client its own budget)
 * A limit may set requests_per_second, _minute and _hour: a request must fit all of
 * them. burst_size is how many requests may arrive back to back (0 means 1). The
 * algorithm is GCRA (a token bucket without a refill timer); a refused request learns
 * when to come back (Retry-After).
 */
#ifndef ALB_RATELIMIT_H
#define ALB_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "marchproxy/plugin.h"

#define ALB_RL_MAX_LIMITS 1000
#define ALB_RL_MAX_CLIENTS 65536 /* tracked clients per limit; the idlest are forgotten */

typedef struct alb_ratelimits alb_ratelimits;

/* Builds the set for views[0..n) (one reference for the caller). Limits whose id,
 * target and rates are unchanged from `prev` (may be NULL) keep their clients'
 * state, so an unrelated SetRateLimit does not hand everyone a fresh burst. Refuses
 * an unknown target form or a bad CIDR with "rate limit <id>: <reason>". */
int alb_ratelimits_build(const mp_rate_limit_view *const *views, size_t n,
                         const alb_ratelimits *prev, alb_ratelimits **out, char *err,
                         size_t err_len);
void alb_ratelimits_ref(alb_ratelimits *rl);
void alb_ratelimits_unref(alb_ratelimits *rl); /* NULL is ignored */
size_t alb_ratelimits_count(const alb_ratelimits *rl);

typedef struct alb_rl_verdict {
    const char *limit_id;    /* the limit that refused */
    uint32_t retry_after_s;  /* >= 1 */
} alb_rl_verdict;

/* 0 when every applicable limit lets the request through (each charges it), 1 when
 * one refuses (limits checked before it keep their charge, as with nginx's successive
 * limit_req zones). route_id may be NULL. Thread-safe. */
int alb_ratelimits_check(alb_ratelimits *rl, const char *route_id, const struct sockaddr *peer,
                         uint64_t now_ms, alb_rl_verdict *out);

#endif
