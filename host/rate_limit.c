/*
 * rate_limit.c — owns the GCRA arithmetic, the target selector grammar and the bounded
 * per-source table behind "ip" targets. The limiter owns every allocation it makes;
 * nothing it returns points into it.
 *
 * GCRA. Each configured rate is a cell with an emission interval T (period / rate,
 * rounded up to whole ns so the long-run rate never exceeds the configured one) and a
 * tolerance tau = (burst - 1) * T. Its whole state is one 64-bit theoretical arrival
 * time (TAT); TAT 0 means idle. A request at time t conforms when
 * max(TAT, t) - t <= tau, i.e. when t >= TAT - tau, and passing sets
 * TAT = max(TAT, t) + T. From idle that admits exactly `burst` requests at one instant
 * and then one per T; a refused request would conform at TAT - tau.
 *
 * Several cells, no partial consumption. allow() first reads every cell and refuses
 * (with the exact retry-after, the latest of the cells' conform times) without writing
 * anything when any cell refuses; that is the common refusal and it costs no stores.
 * Otherwise it commits the cells one by one, each with a compare-and-swap loop that
 * re-checks conformance against the value it is replacing. Cells are kept slowest first
 * (largest T): from a common start every admission takes one slot from every cell and
 * a faster cell refills at least as fast, so the slowest cell always has the least
 * headroom and is where a racer is turned away, before it has taken anything. Should a
 * later cell still refuse (callers' clocks a little apart), the cells already taken
 * are handed back with a CAS that restores the old value only if nobody has touched
 * the cell since, and the whole decision starts again. If someone has touched it the
 * slot stays spent: the limiter then errs towards refusing, never towards admitting
 * more than the rates allow.
 *
 * Per-source table. max_sources entries at most, split over up to 64 shards chosen by a
 * keyed hash of the address (the key is random per limiter, so a remote client cannot
 * aim its addresses at one shard). A shard is a mutex, an entry array that grows by
 * doubling up to the shard's share of max_sources, a chained hash index and an LRU
 * list. The GCRA decision for a source runs under its shard's mutex (the same code, its
 * CAS just never fails), which also keeps an entry from being recycled mid-decision.
 * When a shard is full the victim is the least recently used idle entry (every TAT <=
 * now: it holds nothing a fresh entry would not) among the RL_EVICT_SCAN least recently
 * used; with no idle one there, the one that becomes idle soonest, which loses the
 * least state. The bound per source is MP_RATE_SOURCE_BYTES_MAX (checked below).
 */
#include "rate_limit.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "netaddr.h"

#define NS_PER_SECOND UINT64_C(1000000000)
/* Largest tolerance accepted (about 146 years), so TAT arithmetic never overflows for
 * any monotonic clock value a process can see. */
#define RL_MAX_TOLERANCE_NS (UINT64_C(1) << 62)

#define RL_NIL UINT32_MAX
#define RL_MAX_SHARDS 64u
/* Sources per shard before another shard is worth its mutex. */
#define RL_SOURCES_PER_SHARD 256u
#define RL_FIRST_ALLOC 16u
#define RL_EVICT_SCAN 64u
/* Allowed/refused counters are spread over stripes so worker threads do not all bounce
 * one cache line per connection. */
#define RL_STRIPES 16u

typedef struct rl_cell {
    uint64_t interval_ns;
    uint64_t tolerance_ns;
} rl_cell;

typedef struct rl_entry {
    uint8_t addr[16];
    uint32_t hash;  /* low half of the keyed hash: rebuilds the index without rehashing */
    uint32_t chain; /* next entry in the same hash bucket */
    uint32_t prev;  /* LRU neighbour towards the most recently used */
    uint32_t next;  /* LRU neighbour towards the least recently used */
    _Atomic uint64_t tat[MP_RATE_MAX_CELLS];
} rl_entry;

/* The documented per-source bound: one entry plus at most two index slots (the index
 * is the next power of two at or above the entry count). */
_Static_assert(sizeof(rl_entry) + 2 * sizeof(uint32_t) <= MP_RATE_SOURCE_BYTES_MAX,
               "per-source memory bound in rate_limit.h is out of date");

typedef struct rl_shard {
    alignas(64) pthread_mutex_t mu;
    rl_entry *ent;
    uint32_t *head;
    uint32_t n;     /* entries in use */
    uint32_t alloc; /* entries allocated */
    uint32_t cap;   /* this shard's share of max_sources */
    uint32_t mask;  /* index size - 1 */
    uint32_t mru;
    uint32_t lru;
} rl_shard;

typedef struct rl_stripe {
    alignas(64) _Atomic uint64_t allowed;
    _Atomic uint64_t refused;
} rl_stripe;

struct mp_rate_limiter {
    mp_rate_target target;
    unsigned ncells;
    rl_cell cell[MP_RATE_MAX_CELLS]; /* slowest first, see above */

    /* The one bucket of "*", "route:" and "cidr:" targets; alone on its line since
     * every worker writes it. */
    alignas(64) _Atomic uint64_t shared_tat[MP_RATE_MAX_CELLS];

    /* "ip" targets only. */
    alignas(64) rl_shard *shards;
    unsigned nshards;
    uint64_t key[2];
    _Atomic uint64_t tracked;
    _Atomic uint64_t evicted;
    _Atomic uint64_t evicted_busy;
    _Atomic uint64_t memory_bytes;

    rl_stripe stripe[RL_STRIPES];
};

/* ------------------------------------------------------------------ addresses */

/* "<address>" or "<address>/<len>" into net (host bits cleared) and a prefix over the
 * mapped form. `whole` is the full target string, for the message. */
static int parse_cidr(const char *text, const char *whole, uint8_t net[16],
                      unsigned *prefix, char *err, size_t err_len)
{
    char why[160];
    if (mp_cidr_parse(text, false, net, prefix, why, sizeof(why)) < 0) {
        snprintf(err, err_len, "rate-limit target \"%.200s\": %s", whole, why);
        return -EINVAL;
    }
    return 0;
}

int mp_rate_target_parse(const char *target, mp_rate_target *out, char *err, size_t err_len)
{
    memset(out, 0, sizeof(*out));
    if (!target || target[0] == '\0' || strcmp(target, "*") == 0) {
        out->kind = MP_RATE_TARGET_ALL;
        return 0;
    }
    if (strncmp(target, "route:", 6) == 0) {
        const char *id = target + 6;
        size_t len = strlen(id);
        if (len == 0) {
            snprintf(err, err_len, "rate-limit target \"route:\" needs a route id "
                     "(route:<route_id>)");
            return -EINVAL;
        }
        if (len > MP_RATE_ROUTE_ID_MAX) {
            snprintf(err, err_len, "rate-limit target \"route:%.32s...\": route id is %zu "
                     "bytes, at most %d", id, len, MP_RATE_ROUTE_ID_MAX);
            return -EINVAL;
        }
        out->kind = MP_RATE_TARGET_ROUTE;
        memcpy(out->route_id, id, len + 1);
        return 0;
    }
    if (strcmp(target, "ip") == 0) {
        out->kind = MP_RATE_TARGET_IP;
        return 0;
    }
    if (strncmp(target, "ip:", 3) == 0 || strncmp(target, "cidr:", 5) == 0) {
        bool per_ip = target[0] == 'i';
        int rc = parse_cidr(target + (per_ip ? 3 : 5), target, out->net, &out->prefix, err,
                            err_len);
        if (rc < 0) {
            memset(out, 0, sizeof(*out));
            return rc;
        }
        out->kind = per_ip ? MP_RATE_TARGET_IP : MP_RATE_TARGET_CIDR;
        out->has_net = true;
        return 0;
    }
    snprintf(err, err_len, "unknown rate-limit target \"%.200s\" (expected \"*\", "
             "\"route:<route_id>\", \"ip\", \"ip:<CIDR>\" or \"cidr:<CIDR>\")", target);
    return -EINVAL;
}

/* ------------------------------------------------------------------ spec */

typedef struct rl_plan {
    mp_rate_target target;
    unsigned ncells;
    rl_cell cell[MP_RATE_MAX_CELLS];
    uint32_t max_sources;
} rl_plan;

/* Everything validation decides, so new() cannot disagree with validate(). */
static int plan_spec(const mp_rate_spec *spec, rl_plan *plan, char *err, size_t err_len)
{
    /* The names are for messages; the cells' commit order is decided by interval
     * below, since "1000 per hour" is slower than "1 per second". */
    const struct {
        const char *name;
        int64_t rate;
        uint64_t period_ns;
    } rates[MP_RATE_MAX_CELLS] = {
        {"requests_per_hour", spec->per_hour, 3600 * NS_PER_SECOND},
        {"requests_per_minute", spec->per_minute, 60 * NS_PER_SECOND},
        {"requests_per_second", spec->per_second, NS_PER_SECOND},
    };

    memset(plan, 0, sizeof(*plan));
    int rc = mp_rate_target_parse(spec->target, &plan->target, err, err_len);
    if (rc < 0)
        return rc;

    for (unsigned i = 0; i < MP_RATE_MAX_CELLS; i++) {
        if (rates[i].rate < 0) {
            snprintf(err, err_len, "%s must not be negative (got %lld)", rates[i].name,
                     (long long)rates[i].rate);
            return -EINVAL;
        }
        if ((uint64_t)rates[i].rate > rates[i].period_ns) {
            snprintf(err, err_len, "%s %lld is finer than the 1 ns clock (at most %llu)",
                     rates[i].name, (long long)rates[i].rate,
                     (unsigned long long)rates[i].period_ns);
            return -EINVAL;
        }
    }
    if (spec->burst < 0) {
        snprintf(err, err_len, "burst_size must not be negative (got %lld)",
                 (long long)spec->burst);
        return -EINVAL;
    }
    uint64_t burst = (uint64_t)spec->burst;
    if (burst == 0)
        burst = spec->per_second > 0 ? (uint64_t)spec->per_second : 1;

    for (unsigned i = 0; i < MP_RATE_MAX_CELLS; i++) {
        if (rates[i].rate == 0)
            continue;
        uint64_t rate = (uint64_t)rates[i].rate;
        uint64_t interval = (rates[i].period_ns + rate - 1) / rate;
        if (burst - 1 > RL_MAX_TOLERANCE_NS / interval) {
            snprintf(err, err_len, "burst_size %llu is too large for %s %lld (the burst "
                     "would take over a century to refill)", (unsigned long long)burst,
                     rates[i].name, (long long)rates[i].rate);
            return -EINVAL;
        }
        rl_cell c = {interval, (burst - 1) * interval};
        /* Insertion by descending interval: "60 per minute" and "1 per second" tie,
         * and then either order is fine. */
        unsigned at = plan->ncells;
        while (at > 0 && plan->cell[at - 1].interval_ns < interval) {
            plan->cell[at] = plan->cell[at - 1];
            at--;
        }
        plan->cell[at] = c;
        plan->ncells++;
    }
    if (plan->ncells == 0) {
        snprintf(err, err_len, "rate limit sets no rate: at least one of "
                 "requests_per_second, requests_per_minute, requests_per_hour must be > 0");
        return -EINVAL;
    }

    uint32_t max = spec->max_sources ? spec->max_sources : MP_RATE_DEFAULT_MAX_SOURCES;
    if (max > MP_RATE_MAX_SOURCES_LIMIT) {
        snprintf(err, err_len, "max_sources %u is above the limit of %u", max,
                 MP_RATE_MAX_SOURCES_LIMIT);
        return -EINVAL;
    }
    plan->max_sources = max;
    return 0;
}

int mp_rate_spec_validate(const mp_rate_spec *spec, char *err, size_t err_len)
{
    rl_plan plan;
    return plan_spec(spec, &plan, err, err_len);
}

/* ------------------------------------------------------------------ GCRA */

/* Earliest time a request conforms to this cell. */
static uint64_t conform_at(const rl_cell *c, uint64_t tat)
{
    return tat > c->tolerance_ns ? tat - c->tolerance_ns : 0;
}

/* Take one slot from a cell. *seen holds the value last read; on success it holds the
 * value replaced and *put the value written. False when the cell no longer conforms. */
static bool commit_cell(const rl_cell *c, _Atomic uint64_t *tat, uint64_t *seen,
                        uint64_t now, uint64_t *put)
{
    for (;;) {
        if (conform_at(c, *seen) > now)
            return false;
        uint64_t base = *seen > now ? *seen : now;
        *put = base + c->interval_ns;
        /* Relaxed: the TAT publishes no other data, only its own value matters. */
        if (atomic_compare_exchange_weak_explicit(tat, seen, *put, memory_order_relaxed,
                                                  memory_order_relaxed))
            return true;
    }
}

static bool gcra_take(const mp_rate_limiter *rl, _Atomic uint64_t *tat, uint64_t now,
                      uint64_t *retry_after)
{
    uint64_t seen[MP_RATE_MAX_CELLS], put[MP_RATE_MAX_CELLS];
    unsigned n = rl->ncells;
    for (;;) {
        uint64_t ready = 0;
        for (unsigned i = 0; i < n; i++) {
            seen[i] = atomic_load_explicit(&tat[i], memory_order_relaxed);
            uint64_t at = conform_at(&rl->cell[i], seen[i]);
            if (at > ready)
                ready = at;
        }
        if (ready > now) {
            *retry_after = ready - now;
            return false;
        }
        unsigned done = 0;
        while (done < n && commit_cell(&rl->cell[done], &tat[done], &seen[done], now,
                                       &put[done]))
            done++;
        if (done == n) {
            *retry_after = 0;
            return true;
        }
        while (done-- > 0) {
            uint64_t expect = put[done];
            atomic_compare_exchange_strong_explicit(&tat[done], &expect, seen[done],
                                                    memory_order_relaxed,
                                                    memory_order_relaxed);
        }
    }
}

/* ------------------------------------------------------------------ per-source table */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= UINT64_C(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x *= UINT64_C(0xc4ceb9fe1a85ec53);
    x ^= x >> 33;
    return x;
}

static uint64_t key_hash(const mp_rate_limiter *rl, const uint8_t addr[16])
{
    uint64_t w0, w1;
    memcpy(&w0, addr, 8);
    memcpy(&w1, addr + 8, 8);
    return mix64(mix64(w0 ^ rl->key[0]) ^ w1 ^ rl->key[1]);
}

static rl_shard *shard_of(const mp_rate_limiter *rl, uint64_t h)
{
    /* Top bits pick the shard, the low 32 the bucket inside it. */
    return &rl->shards[(h >> 58) & (rl->nshards - 1)];
}

static uint64_t entry_idle_at(const mp_rate_limiter *rl, const rl_entry *e)
{
    uint64_t at = 0;
    for (unsigned i = 0; i < rl->ncells; i++) {
        uint64_t t = atomic_load_explicit(&e->tat[i], memory_order_relaxed);
        if (t > at)
            at = t;
    }
    return at;
}

static uint32_t shard_find(const rl_shard *s, const uint8_t addr[16], uint32_t h)
{
    if (!s->head)
        return RL_NIL;
    for (uint32_t i = s->head[h & s->mask]; i != RL_NIL; i = s->ent[i].chain)
        if (s->ent[i].hash == h && memcmp(s->ent[i].addr, addr, 16) == 0)
            return i;
    return RL_NIL;
}

static void lru_unlink(rl_shard *s, uint32_t i)
{
    rl_entry *e = &s->ent[i];
    if (e->prev != RL_NIL)
        s->ent[e->prev].next = e->next;
    else
        s->mru = e->next;
    if (e->next != RL_NIL)
        s->ent[e->next].prev = e->prev;
    else
        s->lru = e->prev;
    e->prev = e->next = RL_NIL;
}

static void lru_push_front(rl_shard *s, uint32_t i)
{
    rl_entry *e = &s->ent[i];
    e->prev = RL_NIL;
    e->next = s->mru;
    if (s->mru != RL_NIL)
        s->ent[s->mru].prev = i;
    s->mru = i;
    if (s->lru == RL_NIL)
        s->lru = i;
}

static void index_unlink(rl_shard *s, uint32_t i)
{
    uint32_t *link = &s->head[s->ent[i].hash & s->mask];
    while (*link != i)
        link = &s->ent[*link].chain;
    *link = s->ent[i].chain;
}

static void index_link(rl_shard *s, uint32_t i)
{
    uint32_t *head = &s->head[s->ent[i].hash & s->mask];
    s->ent[i].chain = *head;
    *head = i;
}

static uint32_t pow2_at_least(uint32_t v)
{
    uint32_t p = 1;
    while (p < v)
        p <<= 1;
    return p;
}

/* Double the entry array (up to cap) and rebuild the index for the new size. False on
 * allocation failure, with the shard unchanged. */
static bool shard_grow(mp_rate_limiter *rl, rl_shard *s)
{
    uint32_t want = s->alloc ? s->alloc * 2 : RL_FIRST_ALLOC;
    if (want > s->cap)
        want = s->cap;
    uint32_t slots = pow2_at_least(want);
    uint32_t *head = malloc((size_t)slots * sizeof(*head));
    if (!head)
        return false;
    rl_entry *ent = realloc(s->ent, (size_t)want * sizeof(*ent));
    if (!ent) {
        free(head);
        return false;
    }
    uint64_t before = (uint64_t)s->alloc * sizeof(*ent) +
                      (s->head ? ((uint64_t)s->mask + 1) * sizeof(*head) : 0);
    uint64_t after = (uint64_t)want * sizeof(*ent) + (uint64_t)slots * sizeof(*head);
    free(s->head);
    s->ent = ent;
    s->head = head;
    s->alloc = want;
    s->mask = slots - 1;
    for (uint32_t b = 0; b < slots; b++)
        head[b] = RL_NIL;
    for (uint32_t i = 0; i < s->n; i++)
        index_link(s, i);
    atomic_fetch_add_explicit(&rl->memory_bytes, after - before, memory_order_relaxed);
    return true;
}

/* The entry to recycle in a full shard: see the top of the file. */
static uint32_t pick_victim(const mp_rate_limiter *rl, const rl_shard *s, uint64_t now,
                            bool *busy)
{
    uint32_t best = RL_NIL;
    uint64_t best_idle_at = UINT64_MAX;
    unsigned looked = 0;
    for (uint32_t i = s->lru; i != RL_NIL && looked < RL_EVICT_SCAN;
         i = s->ent[i].prev, looked++) {
        uint64_t idle_at = entry_idle_at(rl, &s->ent[i]);
        if (idle_at <= now) {
            *busy = false;
            return i;
        }
        if (idle_at < best_idle_at) {
            best_idle_at = idle_at;
            best = i;
        }
    }
    *busy = true;
    return best;
}

/* A fresh entry for addr, recycling one when the shard is full. RL_NIL only when the
 * shard is empty and its first allocation failed. */
static uint32_t shard_insert(mp_rate_limiter *rl, rl_shard *s, const uint8_t addr[16],
                             uint32_t h, uint64_t now)
{
    uint32_t i;
    if (s->n < s->alloc || (s->n < s->cap && shard_grow(rl, s))) {
        i = s->n++;
        atomic_fetch_add_explicit(&rl->tracked, 1, memory_order_relaxed);
    } else {
        if (s->n == 0)
            return RL_NIL;
        bool busy;
        i = pick_victim(rl, s, now, &busy);
        index_unlink(s, i);
        lru_unlink(s, i);
        atomic_fetch_add_explicit(&rl->evicted, 1, memory_order_relaxed);
        if (busy)
            atomic_fetch_add_explicit(&rl->evicted_busy, 1, memory_order_relaxed);
    }
    rl_entry *e = &s->ent[i];
    memcpy(e->addr, addr, 16);
    e->hash = h;
    for (unsigned c = 0; c < MP_RATE_MAX_CELLS; c++)
        atomic_store_explicit(&e->tat[c], 0, memory_order_relaxed);
    index_link(s, i);
    lru_push_front(s, i);
    return i;
}

static bool source_take(mp_rate_limiter *rl, const uint8_t addr[16], uint64_t now,
                        uint64_t *retry_after)
{
    uint64_t h64 = key_hash(rl, addr);
    uint32_t h = (uint32_t)h64;
    rl_shard *s = shard_of(rl, h64);
    bool ok;
    pthread_mutex_lock(&s->mu);
    uint32_t i = shard_find(s, addr, h);
    if (i == RL_NIL)
        i = shard_insert(rl, s, addr, h, now);
    if (i == RL_NIL) {
        /* Out of memory with nothing to recycle: fail open rather than refuse every
         * new source this shard would hold. */
        *retry_after = 0;
        ok = true;
    } else {
        /* Refused sources are touched too: a client being turned away is the last one
         * whose debt should be forgotten. */
        if (s->mru != i) {
            lru_unlink(s, i);
            lru_push_front(s, i);
        }
        ok = gcra_take(rl, s->ent[i].tat, now, retry_after);
    }
    pthread_mutex_unlock(&s->mu);
    return ok;
}

/* ------------------------------------------------------------------ limiter */

static void random_key(uint64_t key[2])
{
    if (getrandom(key, 2 * sizeof(uint64_t), GRND_NONBLOCK) == (ssize_t)(2 * sizeof(uint64_t)))
        return;
    /* Early boot without entropy: unpredictable enough to spread addresses, which is
     * all the key is for. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    key[0] = mix64((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32));
    key[1] = mix64(key[0] ^ (uint64_t)(uintptr_t)key);
}

static int make_shards(mp_rate_limiter *rl, uint32_t max, char *err, size_t err_len)
{
    unsigned n = 1;
    while (n < RL_MAX_SHARDS && (uint64_t)n * 2 * RL_SOURCES_PER_SHARD <= max)
        n *= 2;
    size_t bytes = (size_t)n * sizeof(rl_shard);
    rl->shards = aligned_alloc(alignof(rl_shard), bytes);
    if (!rl->shards) {
        snprintf(err, err_len, "out of memory for the rate limiter's source table");
        return -ENOMEM;
    }
    memset(rl->shards, 0, bytes);
    for (unsigned i = 0; i < n; i++) {
        rl_shard *s = &rl->shards[i];
        int rc = pthread_mutex_init(&s->mu, NULL);
        if (rc != 0) {
            while (i-- > 0)
                pthread_mutex_destroy(&rl->shards[i].mu);
            free(rl->shards);
            rl->shards = NULL;
            snprintf(err, err_len, "rate limiter: pthread_mutex_init: %s", strerror(rc));
            return -rc;
        }
        /* Shares that add up to max exactly, so the bound is max and not n * ceil. */
        s->cap = max / n + (i < max % n ? 1 : 0);
        s->mru = s->lru = RL_NIL;
    }
    rl->nshards = n;
    random_key(rl->key);
    atomic_fetch_add_explicit(&rl->memory_bytes, bytes, memory_order_relaxed);
    return 0;
}

mp_rate_limiter *mp_rate_limiter_new(const mp_rate_spec *spec, char *err, size_t err_len)
{
    rl_plan plan;
    int rc = plan_spec(spec, &plan, err, err_len);
    if (rc < 0) {
        errno = -rc;
        return NULL;
    }
    mp_rate_limiter *rl = aligned_alloc(alignof(mp_rate_limiter), sizeof(*rl));
    if (!rl) {
        snprintf(err, err_len, "out of memory for a rate limiter");
        errno = ENOMEM;
        return NULL;
    }
    memset(rl, 0, sizeof(*rl));
    rl->target = plan.target;
    rl->ncells = plan.ncells;
    memcpy(rl->cell, plan.cell, sizeof(rl->cell));
    for (unsigned i = 0; i < MP_RATE_MAX_CELLS; i++)
        atomic_init(&rl->shared_tat[i], 0);
    atomic_init(&rl->memory_bytes, sizeof(*rl));
    if (plan.target.kind == MP_RATE_TARGET_IP) {
        rc = make_shards(rl, plan.max_sources, err, err_len);
        if (rc < 0) {
            free(rl);
            errno = -rc;
            return NULL;
        }
    }
    return rl;
}

void mp_rate_limiter_free(mp_rate_limiter *rl)
{
    if (!rl)
        return;
    for (unsigned i = 0; i < rl->nshards; i++) {
        pthread_mutex_destroy(&rl->shards[i].mu);
        free(rl->shards[i].ent);
        free(rl->shards[i].head);
    }
    free(rl->shards);
    free(rl);
}

static unsigned thread_stripe(void)
{
    static _Atomic unsigned next;
    static _Thread_local unsigned mine; /* stripe + 1; 0 = not yet chosen */
    if (mine == 0)
        mine = atomic_fetch_add_explicit(&next, 1, memory_order_relaxed) % RL_STRIPES + 1;
    return mine - 1;
}

bool mp_rate_limiter_allow(mp_rate_limiter *rl, const struct sockaddr *src,
                           const char *route_id, uint64_t now_ns, uint64_t *retry_after_ns)
{
    uint64_t retry = 0;
    uint8_t addr[16];
    bool ok;
    const mp_rate_target *t = &rl->target;

    switch (t->kind) {
    case MP_RATE_TARGET_ROUTE:
        if (!route_id || strcmp(route_id, t->route_id) != 0)
            goto not_covered;
        ok = gcra_take(rl, rl->shared_tat, now_ns, &retry);
        break;
    case MP_RATE_TARGET_CIDR:
        if (!mp_sockaddr_ip(src, addr) || !mp_ip_in_net(addr, t->net, t->prefix))
            goto not_covered;
        ok = gcra_take(rl, rl->shared_tat, now_ns, &retry);
        break;
    case MP_RATE_TARGET_IP:
        if (!mp_sockaddr_ip(src, addr) || (t->has_net && !mp_ip_in_net(addr, t->net, t->prefix)))
            goto not_covered;
        ok = source_take(rl, addr, now_ns, &retry);
        break;
    case MP_RATE_TARGET_ALL:
    default:
        ok = gcra_take(rl, rl->shared_tat, now_ns, &retry);
        break;
    }

    rl_stripe *st = &rl->stripe[thread_stripe()];
    atomic_fetch_add_explicit(ok ? &st->allowed : &st->refused, 1, memory_order_relaxed);
    if (retry_after_ns)
        *retry_after_ns = retry;
    return ok;

not_covered:
    if (retry_after_ns)
        *retry_after_ns = 0;
    return true;
}

void mp_rate_limiter_stats(const mp_rate_limiter *rl, mp_rate_stats *out)
{
    memset(out, 0, sizeof(*out));
    for (unsigned i = 0; i < RL_STRIPES; i++) {
        out->allowed += atomic_load_explicit(&rl->stripe[i].allowed, memory_order_relaxed);
        out->refused += atomic_load_explicit(&rl->stripe[i].refused, memory_order_relaxed);
    }
    out->sources_tracked = atomic_load_explicit(&rl->tracked, memory_order_relaxed);
    out->sources_evicted = atomic_load_explicit(&rl->evicted, memory_order_relaxed);
    out->sources_evicted_busy = atomic_load_explicit(&rl->evicted_busy, memory_order_relaxed);
    out->memory_bytes = atomic_load_explicit(&rl->memory_bytes, memory_order_relaxed);
}
