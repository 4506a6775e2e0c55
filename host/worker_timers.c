/*
 * worker_timers.c — one worker's timers: a binary min-heap of deadlines kept in user
 * space. The worker's wait for completions ends at the earliest deadline
 * (io_uring_submit_and_wait_timeout), and expired timers run after the completions of
 * that round. Adding or cancelling a timer is a heap operation, not a submission: a
 * proxied HTTP request arms and cancels several (header, response, idle), and a
 * kernel timeout each would cost two submissions and two completions.
 *
 * Lifetime: a timer is freed when it fires (after its callback returns) or when it is
 * cancelled; either way the caller's pointer is dead afterwards. Freed timers go to a
 * per-worker cache and come back from the next add.
 *
 * Clock: deadlines count from the time the worker's last wait returned (dp_timers_clock),
 * not from a fresh clock read per add; a timer may so fire up to one round early, which
 * millisecond timeouts do not notice.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dp.h"

static uint64_t mono_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Freed timers are kept for the next add: a proxied request adds and cancels several. */
static void timer_free(mp_worker *w, mp_timer *t)
{
    if (w->timer_cache_n < DP_TIMER_CACHE) {
        t->next_in_conn = w->timer_cache;
        w->timer_cache = t;
        w->timer_cache_n++;
    } else {
        free(t);
    }
}

void dp_timers_clock(mp_worker *w) { w->now_ns = mono_now_ns(); }

static bool earlier(const mp_timer *a, const mp_timer *b)
{
    /* equal deadlines fire in the order they were added */
    return a->deadline_ns < b->deadline_ns ||
           (a->deadline_ns == b->deadline_ns && a->seq < b->seq);
}

static void heap_set(mp_worker *w, size_t i, mp_timer *t)
{
    w->theap[i] = t;
    t->heap_index = i;
}

static void sift_up(mp_worker *w, size_t i)
{
    mp_timer *t = w->theap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!earlier(t, w->theap[parent]))
            break;
        heap_set(w, i, w->theap[parent]);
        i = parent;
    }
    heap_set(w, i, t);
}

static void sift_down(mp_worker *w, size_t i)
{
    mp_timer *t = w->theap[i];
    for (;;) {
        size_t l = 2 * i + 1, best = i;
        mp_timer *bt = t;
        if (l < w->theap_n && earlier(w->theap[l], bt)) {
            best = l;
            bt = w->theap[l];
        }
        if (l + 1 < w->theap_n && earlier(w->theap[l + 1], bt)) {
            best = l + 1;
            bt = w->theap[l + 1];
        }
        if (best == i)
            break;
        heap_set(w, i, bt);
        i = best;
    }
    heap_set(w, i, t);
}

static void heap_remove(mp_worker *w, mp_timer *t)
{
    size_t i = t->heap_index;
    mp_timer *last = w->theap[--w->theap_n];
    if (i < w->theap_n) {
        heap_set(w, i, last);
        sift_down(w, i);
        sift_up(w, last->heap_index);
    }
}

static void conn_unlink(mp_timer *t)
{
    if (!t->conn)
        return;
    for (mp_timer **pp = &t->conn->timers; *pp; pp = &(*pp)->next_in_conn)
        if (*pp == t) {
            *pp = t->next_in_conn;
            break;
        }
    t->conn = NULL;
}

mp_timer *dp_timer_add(mp_worker *w, mp_conn *c, uint64_t ms, void (*fn)(void *), void *arg)
{
    if (w->theap_n == w->theap_cap) {
        size_t cap = w->theap_cap ? w->theap_cap * 2 : 256;
        mp_timer **grown = realloc(w->theap, cap * sizeof(*grown));
        if (!grown)
            return NULL;
        w->theap = grown;
        w->theap_cap = cap;
    }
    mp_timer *t = w->timer_cache;
    if (t) {
        w->timer_cache = t->next_in_conn;
        w->timer_cache_n--;
        memset(t, 0, sizeof(*t));
    } else if (!(t = calloc(1, sizeof(*t)))) {
        return NULL;
    }
    t->w = w;
    t->conn = c;
    t->fn = fn;
    t->arg = arg;
    if (!w->now_ns)
        w->now_ns = mono_now_ns();
    t->deadline_ns = w->now_ns + ms * 1000000ull;
    t->seq = w->timer_seq++;
    if (c) {
        t->next_in_conn = c->timers;
        c->timers = t;
    }
    w->theap[w->theap_n++] = t;
    sift_up(w, w->theap_n - 1);
    return t;
}

void dp_timer_cancel(mp_timer *t)
{
    if (!t || t->fired)
        return; /* a timer whose callback is running is freed by dp_timers_run */
    conn_unlink(t);
    heap_remove(t->w, t);
    timer_free(t->w, t);
}

bool dp_timers_next(mp_worker *w, struct __kernel_timespec *wait)
{
    if (!w->theap_n)
        return false;
    uint64_t now = mono_now_ns(), due = w->theap[0]->deadline_ns;
    uint64_t left = due > now ? due - now : 0;
    wait->tv_sec = (long long)(left / 1000000000ull);
    wait->tv_nsec = (long long)(left % 1000000000ull);
    return true;
}

void dp_timers_run(mp_worker *w)
{
    if (!w->theap_n)
        return;
    uint64_t now = w->now_ns;
    /* Only timers due now: one added by a callback with a 0 ms delay waits for the next
     * round, so a callback that re-arms itself cannot keep the worker here. */
    uint64_t limit = w->timer_seq;
    while (w->theap_n && w->theap[0]->deadline_ns <= now && w->theap[0]->seq < limit) {
        mp_timer *t = w->theap[0];
        heap_remove(w, t);
        conn_unlink(t);
        t->fired = true;
        t->fn(t->arg);
        timer_free(w, t);
    }
}

void dp_timers_free(mp_worker *w)
{
    while (w->theap_n) {
        mp_timer *t = w->theap[--w->theap_n];
        conn_unlink(t);
        free(t);
    }
    free(w->theap);
    w->theap = NULL;
    w->theap_cap = 0;
    while (w->timer_cache) {
        mp_timer *t = w->timer_cache;
        w->timer_cache = t->next_in_conn;
        free(t);
    }
    w->timer_cache_n = 0;
}
