/*
 * alb_upool.h — the ALB's idle upstream connections, kept per worker like nginx's
 * upstream keepalive: a connection whose response ended cleanly waits here for the
 * next request to the same server from any client on that worker, up to `keepalive`
 * per upstream group and `keepalive_timeout_ms`. Only the worker that owns a set
 * touches it, so there are no locks.
 */
#ifndef ALB_UPOOL_H
#define ALB_UPOOL_H

#include "marchproxy/plugin.h"

typedef struct alb_upool alb_upool;

/* The calling worker's set (made on first use; NULL without memory). */
alb_upool *alb_upool_of(const mp_host_api *api, struct alb_upool **slots, int worker);
/* Frees the sets; every connection they held must have closed already (the host
 * closes a generation's connections before destroy). */
void alb_upool_free_all(struct alb_upool **slots, int n);

/* Parks u (an idle, clean, plain-TCP upstream connection of group `upstream`, member
 * `member`). 0, or -ENOSPC when `max` are already parked for that group (the caller
 * closes u then). The pool owns u until taken or closed. */
int alb_upool_put(alb_upool *p, mp_conn *u, int upstream, int member, unsigned max,
                  uint32_t idle_ms);
/* The most recently parked connection to that member, or NULL. The caller sets its
 * handler right away. */
mp_conn *alb_upool_take(alb_upool *p, int upstream, int member);
/* Counters for custom_stats: parked now, and reused so far. */
void alb_upool_counts(struct alb_upool **slots, int n, uint64_t *idle, uint64_t *reused);

#endif
