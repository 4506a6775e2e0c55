/*
 * alb_pool.c — picking an upstream member for a request (round robin, smooth weighted
 * round robin, least connections, consistent hashing on a weighted ring), skipping
 * members that active checks or passive ejection took out, falling back to backups,
 * and the outcome reports that eject a member after max_fails consecutive failures and
 * let one trial request through once fail_timeout has passed.
 *
 * Thread model: any worker calls any function at any time. Configured fields never
 * change after alb_pool_init; live fields are atomics; the smooth weighted state is
 * guarded by a mutex held only for the arithmetic of one pick.
 */
#include "alb_pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

enum { AV_NO = 0, AV_YES, AV_TRIAL };

#define SKIP_WORDS (ALB_POOL_MAX_MEMBERS / 64)

typedef struct skipset {
    uint64_t w[SKIP_WORDS];
} skipset;

static int skip_has(const skipset *s, int i) { return (s->w[i >> 6] >> (i & 63)) & 1u; }
static void skip_add(skipset *s, int i) { s->w[i >> 6] |= (uint64_t)1 << (i & 63); }

uint64_t alb_pool_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* FNV-1a over the bytes, then a 64-bit avalanche so nearby keys ("10.0.0.1",
 * "10.0.0.2") land far apart on the ring. */
uint64_t alb_pool_hash(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

void alb_pool_settings_default(alb_pool_settings *s)
{
    memset(s, 0, sizeof(*s));
    s->balance = ALB_BAL_ROUND_ROBIN;
    s->hash_src = ALB_HASH_CLIENT_IP;
    s->max_fails = 3;
    s->fail_timeout_ms = 10000;
}

int alb_pool_parse_balance(const char *v, alb_balance *out)
{
    static const struct {
        const char *name;
        alb_balance b;
    } tab[] = {{"round-robin", ALB_BAL_ROUND_ROBIN},
               {"weighted", ALB_BAL_WEIGHTED},
               {"least-conn", ALB_BAL_LEAST_CONN},
               {"hash", ALB_BAL_HASH}};
    for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++)
        if (!strcmp(v, tab[i].name)) {
            *out = tab[i].b;
            return 0;
        }
    return -EINVAL;
}

/* Header and cookie names: RFC 9110 token characters only. */
static int is_token(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr("!#$%&'*+-.^_`|~", *s)))
            return 0;
    return 1;
}

int alb_pool_parse_hash_key(const char *v, alb_pool_settings *s)
{
    const char *name = NULL;
    if (!strcmp(v, "client_ip")) {
        s->hash_src = ALB_HASH_CLIENT_IP;
        s->hash_name[0] = 0;
        return 0;
    }
    if (!strncmp(v, "header:", 7)) {
        s->hash_src = ALB_HASH_HEADER;
        name = v + 7;
    } else if (!strncmp(v, "cookie:", 7)) {
        s->hash_src = ALB_HASH_COOKIE;
        name = v + 7;
    } else {
        return -EINVAL;
    }
    if (!is_token(name) || strlen(name) >= sizeof(s->hash_name))
        return -EINVAL;
    snprintf(s->hash_name, sizeof(s->hash_name), "%s", name);
    return 0;
}

/* ------------------------------------------------------------ building */

static int point_cmp(const void *a, const void *b)
{
    const alb_ring_point *x = a, *y = b;
    if (x->h != y->h)
        return x->h < y->h ? -1 : 1;
    return x->member - y->member;
}

/* Points come from each member's configured address text, not its index, so removing
 * one member leaves every other member's points where they were. */
static int build_ring(alb_pool *p, int t)
{
    uint64_t total = 0;
    for (int j = 0; j < p->ntier[t]; j++)
        total += (uint64_t)ALB_POOL_VNODES * p->m[p->tier[t][j]].weight;
    if (!total)
        return 0;
    uint64_t cap = total > ALB_POOL_RING_MAX ? ALB_POOL_RING_MAX : total;
    alb_ring_point *r = malloc((size_t)(cap + (uint64_t)p->ntier[t]) * sizeof(*r));
    if (!r)
        return -ENOMEM;
    int n = 0;
    for (int j = 0; j < p->ntier[t]; j++) {
        int i = p->tier[t][j];
        uint64_t vn = (uint64_t)ALB_POOL_VNODES * p->m[i].weight * cap / total;
        if (vn < 1)
            vn = 1;
        for (uint64_t v = 0; v < vn; v++) {
            char buf[112];
            int l = snprintf(buf, sizeof(buf), "%s#%llu", p->m[i].text, (unsigned long long)v);
            r[n].h = alb_pool_hash(buf, (size_t)l);
            r[n].member = i;
            n++;
        }
    }
    qsort(r, (size_t)n, sizeof(*r), point_cmp);
    p->ring[t] = r;
    p->nring[t] = n;
    return 0;
}

int alb_pool_init(alb_pool *p, const alb_pool_settings *s, alb_member *members, int n,
                  char *err, size_t err_len)
{
    memset(p, 0, sizeof(*p));
    if (n < 1 || n > ALB_POOL_MAX_MEMBERS) {
        free(members);
        snprintf(err, err_len, "alb: an upstream needs 1..%d servers", ALB_POOL_MAX_MEMBERS);
        return -EINVAL;
    }
    p->set = *s;
    p->m = members;
    for (int t = 0; t < 2; t++) {
        p->tier[t] = malloc((size_t)n * sizeof(int));
        if (!p->tier[t])
            goto nomem;
    }
    for (int i = 0; i < n; i++) {
        alb_member *m = &members[i];
        if (m->weight < 1)
            m->weight = 1;
        atomic_init(&m->healthy, 1);
        atomic_init(&m->fails, 0);
        atomic_init(&m->ejected_until, 0);
        atomic_init(&m->active, 0);
        atomic_init(&m->picks, 0);
        atomic_init(&m->failures, 0);
        atomic_init(&m->ejections, 0);
        m->swrr_current = 0;
        int t = m->backup ? 1 : 0;
        p->tier[t][p->ntier[t]++] = i;
    }
    if (p->ntier[0] == 0) {
        snprintf(err, err_len, "alb: an upstream needs at least one server that is not a backup");
        alb_pool_destroy(p);
        return -EINVAL;
    }
    p->n = n;
    if (s->balance == ALB_BAL_HASH)
        for (int t = 0; t < 2; t++)
            if (build_ring(p, t) < 0)
                goto nomem;
    atomic_init(&p->rr[0], 0);
    atomic_init(&p->rr[1], 0);
    pthread_mutex_init(&p->lock, NULL);
    return 0;
nomem:
    p->n = 0;
    alb_pool_destroy(p);
    snprintf(err, err_len, "alb: out of memory");
    return -ENOMEM;
}

void alb_pool_destroy(alb_pool *p)
{
    if (p->n > 0)
        pthread_mutex_destroy(&p->lock);
    for (int t = 0; t < 2; t++) {
        free(p->tier[t]);
        free(p->ring[t]);
    }
    free(p->m);
    memset(p, 0, sizeof(*p));
}

/* ------------------------------------------------------------ keys */

static const char *trim(const char *s, const char *e, const char **end)
{
    while (s < e && (*s == ' ' || *s == '\t'))
        s++;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    *end = e;
    return s;
}

/* Value of cookie `name` in one Cookie field ("a=1; b=2"), or NULL. */
static const char *cookie_value(const char *v, size_t vl, const char *name, size_t *out_len)
{
    size_t nl = strlen(name);
    const char *p = v, *end = v + vl;
    while (p < end) {
        const char *semi = memchr(p, ';', (size_t)(end - p));
        const char *pe = semi ? semi : end, *ke;
        const char *k = trim(p, pe, &ke);
        const char *eq = memchr(k, '=', (size_t)(ke - k));
        if (eq) {
            const char *ne;
            const char *nm = trim(k, eq, &ne);
            if ((size_t)(ne - nm) == nl && !memcmp(nm, name, nl)) {
                const char *ve;
                const char *val = trim(eq + 1, ke, &ve);
                if (ve - val >= 2 && *val == '"' && ve[-1] == '"') {
                    val++;
                    ve--;
                }
                *out_len = (size_t)(ve - val);
                return val;
            }
        }
        p = pe + 1;
    }
    return NULL;
}

uint64_t alb_pool_request_key(const alb_pool *p, const struct alb_http_field *f, size_t nf,
                              const char *client_ip)
{
    if (p->set.balance != ALB_BAL_HASH)
        return 0;
    const char *v = NULL;
    size_t vl = 0;
    const char *want = p->set.hash_src == ALB_HASH_COOKIE ? "cookie" : p->set.hash_name;
    size_t wl = strlen(want);
    for (size_t i = 0; p->set.hash_src != ALB_HASH_CLIENT_IP && i < nf && !v; i++) {
        if (f[i].name_len != wl || strncasecmp(f[i].name, want, wl) != 0)
            continue;
        if (p->set.hash_src == ALB_HASH_HEADER) {
            if (f[i].value_len) {
                v = f[i].value;
                vl = f[i].value_len;
            }
        } else {
            v = cookie_value(f[i].value, f[i].value_len, p->set.hash_name, &vl);
            if (v && !vl)
                v = NULL;
        }
    }
    if (!v) {
        v = client_ip ? client_ip : "";
        vl = strlen(v);
    }
    return alb_pool_hash(v, vl);
}

/* ------------------------------------------------------------ picking */

static int avail(const alb_member *m, uint64_t now)
{
    if (!atomic_load_explicit(&m->healthy, memory_order_relaxed))
        return AV_NO;
    uint64_t u = atomic_load(&m->ejected_until);
    if (!u)
        return AV_YES;
    return now >= u ? AV_TRIAL : AV_NO;
}

static uint64_t eject_until(const alb_pool *p, uint64_t now)
{
    uint64_t u = now + p->set.fail_timeout_ms;
    return u ? u : 1;
}

/* Takes the member for this pick. For a member whose ejection ran out exactly one pick
 * wins: it moves the deadline on by fail_timeout while its trial request is out, and
 * the trial's report then clears or renews the ejection. */
static int claim(alb_pool *p, alb_member *m, uint64_t now)
{
    uint64_t u = atomic_load(&m->ejected_until);
    if (!u)
        return 1;
    if (now < u)
        return 0;
    return atomic_compare_exchange_strong(&m->ejected_until, &u, eject_until(p, now));
}

static int usable(const alb_pool *p, int i, const skipset *skip, uint64_t now)
{
    return !skip_has(skip, i) && avail(&p->m[i], now) != AV_NO;
}

static int sel_rr(alb_pool *p, int t, const skipset *skip, uint64_t now)
{
    int tn = p->ntier[t];
    uint64_t k = atomic_fetch_add(&p->rr[t], 1);
    for (int j = 0; j < tn; j++) {
        int i = p->tier[t][(k + (uint64_t)j) % (uint64_t)tn];
        if (usable(p, i, skip, now))
            return i;
    }
    return -1;
}

/* Fewest active requests per unit of weight; the scan starts at a rotating position so
 * ties go round instead of always to the first member. */
static int sel_least(alb_pool *p, int t, const skipset *skip, uint64_t now)
{
    int tn = p->ntier[t], best = -1;
    int64_t best_a = 0;
    uint64_t k = atomic_fetch_add(&p->rr[t], 1);
    for (int j = 0; j < tn; j++) {
        int i = p->tier[t][(k + (uint64_t)j) % (uint64_t)tn];
        if (!usable(p, i, skip, now))
            continue;
        int64_t a = atomic_load_explicit(&p->m[i].active, memory_order_relaxed);
        if (best < 0 || a * (int64_t)p->m[best].weight < best_a * (int64_t)p->m[i].weight) {
            best = i;
            best_a = a;
        }
    }
    return best;
}

/* Clockwise from the key's position to the first point whose member may be used. */
static int sel_hash(alb_pool *p, int t, uint64_t key, const skipset *skip, uint64_t now)
{
    int nr = p->nring[t];
    if (!nr)
        return -1;
    const alb_ring_point *r = p->ring[t];
    int lo = 0, hi = nr;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (r[mid].h < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    skipset rejected;
    memset(&rejected, 0, sizeof(rejected));
    int nrejected = 0;
    for (int j = 0; j < nr && nrejected < p->ntier[t]; j++) {
        int i = r[(lo + j) % nr].member;
        if (skip_has(&rejected, i))
            continue;
        if (usable(p, i, skip, now))
            return i;
        skip_add(&rejected, i);
        nrejected++;
    }
    return -1;
}

/* Smooth weighted round robin: every usable member gains its weight, the largest
 * current value wins and pays back the total. Over a cycle of sum(weights) picks each
 * member is chosen exactly weight times, spread out rather than in runs. */
static int sel_swrr(alb_pool *p, int t, skipset *skip, uint64_t now)
{
    int tn = p->ntier[t], best = -1;
    int cand[ALB_POOL_MAX_MEMBERS];
    pthread_mutex_lock(&p->lock);
    for (int tries = 0; tries <= tn; tries++) {
        int nc = 0;
        int64_t bestv = 0;
        best = -1;
        for (int j = 0; j < tn; j++) {
            int i = p->tier[t][j];
            if (!usable(p, i, skip, now))
                continue;
            cand[nc++] = i;
            int64_t v = p->m[i].swrr_current + p->m[i].weight;
            if (best < 0 || v > bestv) {
                best = i;
                bestv = v;
            }
        }
        if (best < 0)
            break;
        if (!claim(p, &p->m[best], now)) {
            skip_add(skip, best); /* another worker took its trial */
            best = -1;
            continue;
        }
        int64_t total = 0;
        for (int c = 0; c < nc; c++) {
            p->m[cand[c]].swrr_current += p->m[cand[c]].weight;
            total += p->m[cand[c]].weight;
        }
        p->m[best].swrr_current -= total;
        break;
    }
    pthread_mutex_unlock(&p->lock);
    return best;
}

static int pick_tier(alb_pool *p, int t, uint64_t key, skipset *skip, uint64_t now)
{
    if (!p->ntier[t])
        return -1;
    if (p->set.balance == ALB_BAL_WEIGHTED)
        return sel_swrr(p, t, skip, now); /* claims under its lock */
    for (int tries = 0; tries <= p->ntier[t]; tries++) {
        int i;
        switch (p->set.balance) {
        case ALB_BAL_LEAST_CONN: i = sel_least(p, t, skip, now); break;
        case ALB_BAL_HASH: i = sel_hash(p, t, key, skip, now); break;
        default: i = sel_rr(p, t, skip, now); break;
        }
        if (i < 0)
            return -1;
        if (claim(p, &p->m[i], now))
            return i;
        skip_add(skip, i);
    }
    return -1;
}

int alb_pool_pick(alb_pool *p, uint64_t key, const int *excl, int nexcl, uint64_t now_ms)
{
    if (p->n < 1)
        return ALB_POOL_NONE;
    skipset skip;
    memset(&skip, 0, sizeof(skip));
    for (int j = 0; excl && j < nexcl; j++)
        if (excl[j] >= 0 && excl[j] < p->n)
            skip_add(&skip, excl[j]);
    for (int t = 0; t < 2; t++) { /* backups only when no primary may be used */
        int i = pick_tier(p, t, key, &skip, now_ms);
        if (i >= 0) {
            atomic_fetch_add_explicit(&p->m[i].picks, 1, memory_order_relaxed);
            return i;
        }
    }
    return ALB_POOL_NONE;
}

/* ------------------------------------------------------------ accounting */

void alb_pool_begin(alb_pool *p, int i)
{
    if (i >= 0 && i < p->n)
        atomic_fetch_add(&p->m[i].active, 1);
}

void alb_pool_end(alb_pool *p, int i)
{
    if (i >= 0 && i < p->n)
        atomic_fetch_sub(&p->m[i].active, 1);
}

int alb_pool_report(alb_pool *p, int i, alb_outcome o, uint64_t now_ms)
{
    if (i < 0 || i >= p->n)
        return 0;
    alb_member *m = &p->m[i];
    if (o == ALB_OUT_OK) {
        /* Any success (the trial's, typically) puts the member back in service. */
        atomic_store(&m->fails, 0);
        if (atomic_load(&m->ejected_until))
            atomic_store(&m->ejected_until, 0);
        return 0;
    }
    atomic_fetch_add_explicit(&m->failures, 1, memory_order_relaxed);
    if (!p->set.max_fails)
        return 0;
    if (atomic_load(&m->ejected_until)) {
        /* A failed trial (or a late report from before the ejection): out again. */
        atomic_store(&m->ejected_until, eject_until(p, now_ms));
        return 0;
    }
    uint32_t f = atomic_fetch_add(&m->fails, 1) + 1;
    if (f < p->set.max_fails)
        return 0;
    uint64_t zero = 0;
    if (!atomic_compare_exchange_strong(&m->ejected_until, &zero, eject_until(p, now_ms)))
        return 0; /* another worker ejected it just now */
    atomic_store(&m->fails, 0);
    atomic_fetch_add_explicit(&m->ejections, 1, memory_order_relaxed);
    return 1;
}

const char *alb_pool_member_state(const alb_pool *p, int i, uint64_t now_ms)
{
    const alb_member *m = &p->m[i];
    if (!atomic_load(&m->healthy))
        return "unhealthy";
    uint64_t u = atomic_load(&m->ejected_until);
    return u && now_ms < u ? "ejected" : "healthy";
}

int alb_pool_member_ok(const alb_pool *p, int i, uint64_t now_ms)
{
    return i >= 0 && i < p->n && avail(&p->m[i], now_ms) == AV_YES;
}

int alb_pool_usable(const alb_pool *p, uint64_t now_ms)
{
    int n = 0;
    for (int i = 0; i < p->n; i++)
        n += avail(&p->m[i], now_ms) != AV_NO;
    return n;
}
