/*
 * alb_upool.c — see alb_upool.h. A parked connection gets a handler of its own: any
 * byte or end of stream from the server while it is idle makes it unusable, so it is
 * closed, and its close takes it out of the set. An idle timer closes it the same way.
 */
#include "alb_upool.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct idle {
    struct alb_upool *pool;
    mp_conn *u;
    int upstream, member;
    mp_timer *timer;
    struct idle *prev, *next;
} idle;

struct alb_upool {
    const mp_host_api *api;
    idle *head;
    unsigned n_by_group[64]; /* groups beyond 64 share the last count */
    uint64_t parked, reused; /* updated with atomics: custom_stats reads them */
};

static unsigned *group_count(alb_upool *p, int upstream)
{
    return &p->n_by_group[upstream < 63 ? upstream : 63];
}

static void unlink_idle(idle *e)
{
    alb_upool *p = e->pool;
    if (e->prev)
        e->prev->next = e->next;
    else
        p->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    (*group_count(p, e->upstream))--;
    __atomic_fetch_sub(&p->parked, 1, __ATOMIC_RELAXED);
}

static void idle_close(idle *e)
{
    /* on_close below unlinks and frees it */
    e->pool->api->conn_close(e->u);
}

static void idle_data(void *ctx, mp_conn *c, const uint8_t *d, size_t n)
{
    (void)c, (void)d, (void)n;
    idle_close(ctx); /* a server that talks between requests is not to be trusted */
}

static void idle_eof(void *ctx, mp_conn *c)
{
    (void)c;
    idle_close(ctx);
}

static void idle_closed(void *ctx, mp_conn *c, mp_close_reason reason, int err)
{
    (void)c, (void)reason, (void)err;
    idle *e = ctx;
    e->timer = NULL; /* the host cancelled the connection's timers */
    unlink_idle(e);
    free(e);
}

static void idle_expired(void *arg)
{
    idle *e = arg;
    e->timer = NULL;
    idle_close(e);
}

static const mp_conn_handler idle_handler = {
    .struct_size = sizeof(mp_conn_handler),
    .on_data = idle_data,
    .on_eof = idle_eof,
    .on_close = idle_closed,
};

alb_upool *alb_upool_of(const mp_host_api *api, struct alb_upool **slots, int worker)
{
    if (worker < 0)
        return NULL;
    if (!slots[worker]) {
        slots[worker] = calloc(1, sizeof(alb_upool));
        if (slots[worker])
            slots[worker]->api = api;
    }
    return slots[worker];
}

void alb_upool_free_all(struct alb_upool **slots, int n)
{
    for (int i = 0; i < n; i++) {
        alb_upool *p = slots[i];
        if (!p)
            continue;
        /* closed connections already unlinked themselves; anything left would be a
         * connection the host still has, so only the bookkeeping goes */
        while (p->head) {
            idle *e = p->head;
            p->head = e->next;
            free(e);
        }
        free(p);
        slots[i] = NULL;
    }
}

int alb_upool_put(alb_upool *p, mp_conn *u, int upstream, int member, unsigned max,
                  uint32_t idle_ms)
{
    if (!p || *group_count(p, upstream) >= max)
        return -ENOSPC;
    idle *e = calloc(1, sizeof(*e));
    if (!e)
        return -ENOMEM;
    e->pool = p;
    e->u = u;
    e->upstream = upstream;
    e->member = member;
    e->next = p->head;
    if (p->head)
        p->head->prev = e;
    p->head = e;
    (*group_count(p, upstream))++;
    __atomic_fetch_add(&p->parked, 1, __ATOMIC_RELAXED);
    p->api->conn_set_handler(u, &idle_handler, e);
    e->timer = p->api->timer_add(u, idle_ms, idle_expired, e);
    return 0;
}

mp_conn *alb_upool_take(alb_upool *p, int upstream, int member)
{
    if (!p)
        return NULL;
    for (idle *e = p->head; e; e = e->next) {
        if (e->upstream != upstream || e->member != member)
            continue;
        mp_conn *u = e->u;
        if (e->timer)
            p->api->timer_cancel(u, e->timer);
        unlink_idle(e);
        free(e);
        __atomic_fetch_add(&p->reused, 1, __ATOMIC_RELAXED);
        return u;
    }
    return NULL;
}

void alb_upool_counts(struct alb_upool **slots, int n, uint64_t *idle_now, uint64_t *reused)
{
    /* read from the control thread while workers change them: approximate, as gauges */
    *idle_now = *reused = 0;
    for (int i = 0; i < n; i++)
        if (slots[i]) {
            *idle_now += __atomic_load_n(&slots[i]->parked, __ATOMIC_RELAXED);
            *reused += __atomic_load_n(&slots[i]->reused, __ATOMIC_RELAXED);
        }
}
