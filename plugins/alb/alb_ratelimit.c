/*
 * alb_ratelimit.c — see alb_ratelimit.h. Each limit owns a table of clients (IP ->
 * theoretical arrival time per window), split into shards with their own mutex so
 * workers rarely meet; a shard grows up to its share of ALB_RL_MAX_CLIENTS and then
 * forgets its idlest client in the probe window (one whose budget has refilled loses
 * nothing by being forgotten). Limits are checked in order and each one charges the
 * request as it lets it through, as nginx's successive limit_req zones do.
 */
#include "alb_ratelimit.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SHARDS 64
#define PROBE 16
#define SHARD_MAX (ALB_RL_MAX_CLIENTS / SHARDS)
#define WINDOWS 3

enum target_kind { T_ALL, T_ROUTE, T_CIDR };

typedef struct client {
    uint8_t key[17]; /* family byte + address (v4 in the first 4 bytes) */
    bool used;
    int64_t tat[WINDOWS]; /* microseconds */
} client;

typedef struct shard {
    pthread_mutex_t mu;
    client *slots;
    size_t cap, used;
} shard;

/* The clients of one limit; shared by successive sets while the limit is unchanged. */
typedef struct clients {
    _Atomic int refs;
    shard shards[SHARDS];
} clients;

typedef struct rule {
    char *id;
    char *target;
    enum target_kind kind;
    char *route;
    int family;
    uint8_t net[16];
    int prefix;
    int64_t interval_us[WINDOWS]; /* 0: window unset */
    int64_t burst;
    clients *cl;
} rule;

struct alb_ratelimits {
    _Atomic int refs;
    rule *rules;
    size_t n;
};

/* ------------------------------------------------------------------ clients */

static clients *clients_new(void)
{
    clients *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    atomic_init(&c->refs, 1);
    for (int i = 0; i < SHARDS; i++)
        pthread_mutex_init(&c->shards[i].mu, NULL);
    return c;
}

static void clients_unref(clients *c)
{
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    for (int i = 0; i < SHARDS; i++) {
        pthread_mutex_destroy(&c->shards[i].mu);
        free(c->shards[i].slots);
    }
    free(c);
}

static uint64_t hash_key(const uint8_t *k, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ k[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static int64_t latest(const client *c)
{
    int64_t m = c->tat[0];
    for (int w = 1; w < WINDOWS; w++)
        if (c->tat[w] > m)
            m = c->tat[w];
    return m;
}

/* Rehash into a table twice the size; false when memory is short (the shard then
 * keeps evicting at its present size). */
static bool shard_grow(shard *s)
{
    size_t cap = s->cap ? s->cap * 2 : 64;
    client *slots = calloc(cap, sizeof(*slots));
    if (!slots)
        return false;
    for (size_t i = 0; i < s->cap; i++) {
        if (!s->slots[i].used)
            continue;
        size_t at = (hash_key(s->slots[i].key, 17) >> 6) & (cap - 1);
        while (slots[at].used)
            at = (at + 1) & (cap - 1);
        slots[at] = s->slots[i];
    }
    free(s->slots);
    s->slots = slots;
    s->cap = cap;
    return true;
}

/* The client's slot, claimed when new. Called with the shard's lock held. */
static client *shard_find(shard *s, const uint8_t key[17], uint64_t h)
{
    if ((!s->cap || s->used * 10 >= s->cap * 7) && s->cap < SHARD_MAX)
        shard_grow(s);
    if (!s->cap)
        return NULL;
    size_t at = (h >> 6) & (s->cap - 1);
    client *idlest = NULL;
    for (int i = 0; i < PROBE; i++) {
        client *c = &s->slots[(at + (size_t)i) & (s->cap - 1)];
        if (!c->used) {
            memset(c, 0, sizeof(*c));
            memcpy(c->key, key, 17);
            c->used = true;
            s->used++;
            return c;
        }
        if (memcmp(c->key, key, 17) == 0)
            return c;
        if (!idlest || latest(c) < latest(idlest))
            idlest = c;
    }
    memset(idlest->tat, 0, sizeof(idlest->tat));
    memcpy(idlest->key, key, 17);
    return idlest;
}

/* ------------------------------------------------------------------ build */

static int parse_cidr(rule *r, const char *text, char *err, size_t err_len)
{
    char addr[64];
    const char *slash = strchr(text, '/');
    size_t alen = slash ? (size_t)(slash - text) : strlen(text);
    if (alen == 0 || alen >= sizeof(addr))
        goto bad;
    memcpy(addr, text, alen);
    addr[alen] = '\0';
    if (inet_pton(AF_INET, addr, r->net) == 1)
        r->family = AF_INET;
    else if (inet_pton(AF_INET6, addr, r->net) == 1)
        r->family = AF_INET6;
    else
        goto bad;
    int max = r->family == AF_INET ? 32 : 128;
    r->prefix = max;
    if (slash) {
        char *end;
        long p = strtol(slash + 1, &end, 10);
        if (!slash[1] || *end || p < 0 || p > max)
            goto bad;
        r->prefix = (int)p;
    }
    return 0;
bad:
    snprintf(err, err_len, "rate limit %s: \"ip:%s\" is not an address or CIDR", r->id, text);
    return -EINVAL;
}

static int parse_target(rule *r, const char *target, char *err, size_t err_len)
{
    if (!*target || strcmp(target, "*") == 0) {
        r->kind = T_ALL;
        return 0;
    }
    if (strncmp(target, "route:", 6) == 0 && target[6]) {
        r->kind = T_ROUTE;
        r->route = strdup(target + 6);
        return r->route ? 0 : -ENOMEM;
    }
    if (strncmp(target, "ip:", 3) == 0) {
        r->kind = T_CIDR;
        return parse_cidr(r, target + 3, err, err_len);
    }
    snprintf(err, err_len,
             "rate limit %s: target \"%s\" is not \"*\", \"route:<route_id>\" or "
             "\"ip:<cidr>\"",
             r->id, target);
    return -EINVAL;
}

static bool same_limit(const rule *a, const rule *b)
{
    return strcmp(a->id, b->id) == 0 && strcmp(a->target, b->target) == 0 &&
           memcmp(a->interval_us, b->interval_us, sizeof(a->interval_us)) == 0 &&
           a->burst == b->burst;
}

static void rule_free(rule *r)
{
    free(r->id);
    free(r->target);
    free(r->route);
    clients_unref(r->cl);
}

static int build_rule(rule *r, const mp_rate_limit_view *v, const alb_ratelimits *prev,
                      char *err, size_t err_len)
{
    if (!(r->id = strdup(v->limit_id)) || !(r->target = strdup(v->target)))
        return -ENOMEM;
    int rc = parse_target(r, v->target, err, err_len);
    if (rc < 0)
        return rc;
    const int64_t rates[WINDOWS] = {v->requests_per_second, v->requests_per_minute,
                                    v->requests_per_hour};
    const int64_t spans_us[WINDOWS] = {1000000, 60000000, 3600000000};
    bool any = false;
    for (int w = 0; w < WINDOWS; w++) {
        if (rates[w] < 0 || rates[w] > 10000000) {
            snprintf(err, err_len, "rate limit %s: rates must be 0..10000000", r->id);
            return -EINVAL;
        }
        r->interval_us[w] = rates[w] ? spans_us[w] / rates[w] : 0;
        if (rates[w] && !r->interval_us[w])
            r->interval_us[w] = 1;
        any |= rates[w] != 0;
    }
    if (!any) {
        snprintf(err, err_len, "rate limit %s: no requests_per_second, _minute or _hour", r->id);
        return -EINVAL;
    }
    r->burst = v->burst_size > 0 ? v->burst_size : 1;
    for (size_t i = 0; prev && i < prev->n; i++)
        if (same_limit(&prev->rules[i], r)) {
            r->cl = prev->rules[i].cl;
            atomic_fetch_add(&r->cl->refs, 1);
            return 0;
        }
    r->cl = clients_new();
    return r->cl ? 0 : -ENOMEM;
}

int alb_ratelimits_build(const mp_rate_limit_view *const *views, size_t n,
                         const alb_ratelimits *prev, alb_ratelimits **out, char *err,
                         size_t err_len)
{
    if (n > ALB_RL_MAX_LIMITS) {
        snprintf(err, err_len, "%zu rate limits (at most %d)", n, ALB_RL_MAX_LIMITS);
        return -E2BIG;
    }
    alb_ratelimits *rl = calloc(1, sizeof(*rl));
    if (!rl || !(rl->rules = calloc(n + 1, sizeof(*rl->rules)))) {
        free(rl);
        return -ENOMEM;
    }
    atomic_init(&rl->refs, 1);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (!views[i]->enabled)
            continue;
        rc = build_rule(&rl->rules[rl->n++], views[i], prev, err, err_len);
    }
    if (rc < 0) {
        alb_ratelimits_unref(rl);
        return rc;
    }
    *out = rl;
    return 0;
}

void alb_ratelimits_ref(alb_ratelimits *rl) { atomic_fetch_add(&rl->refs, 1); }

void alb_ratelimits_unref(alb_ratelimits *rl)
{
    if (!rl || atomic_fetch_sub(&rl->refs, 1) != 1)
        return;
    for (size_t i = 0; i < rl->n; i++)
        rule_free(&rl->rules[i]);
    free(rl->rules);
    free(rl);
}

size_t alb_ratelimits_count(const alb_ratelimits *rl) { return rl ? rl->n : 0; }

/* ------------------------------------------------------------------ check */

static bool peer_key(const struct sockaddr *sa, uint8_t key[17])
{
    memset(key, 0, 17);
    if (sa && sa->sa_family == AF_INET) {
        key[0] = 4;
        memcpy(key + 1, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return true;
    }
    if (sa && sa->sa_family == AF_INET6) {
        key[0] = 6;
        memcpy(key + 1, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
        return true;
    }
    return false;
}

static bool in_cidr(const rule *r, const uint8_t key[17])
{
    if ((r->family == AF_INET) != (key[0] == 4))
        return false;
    const uint8_t *a = key + 1;
    int full = r->prefix / 8, rest = r->prefix % 8;
    if (memcmp(a, r->net, (size_t)full) != 0)
        return false;
    if (rest) {
        uint8_t mask = (uint8_t)(0xff << (8 - rest));
        return (a[full] & mask) == (r->net[full] & mask);
    }
    return true;
}

static bool applies(const rule *r, const char *route_id, const uint8_t key[17])
{
    switch (r->kind) {
    case T_ALL:
        return true;
    case T_ROUTE:
        return route_id && strcmp(route_id, r->route) == 0;
    case T_CIDR:
        return in_cidr(r, key);
    }
    return false;
}

/* GCRA over every window of one limit for one client: all fit, or nothing changes. */
static int charge(rule *r, const uint8_t key[17], int64_t now_us, uint32_t *retry_s)
{
    uint64_t h = hash_key(key, 17);
    shard *s = &r->cl->shards[h & (SHARDS - 1)];
    pthread_mutex_lock(&s->mu);
    client *c = shard_find(s, key, h);
    if (!c) { /* no memory for a table: let traffic through rather than refuse all */
        pthread_mutex_unlock(&s->mu);
        return 0;
    }
    int64_t next[WINDOWS];
    int64_t wait_us = 0;
    for (int w = 0; w < WINDOWS; w++) {
        int64_t t = r->interval_us[w];
        if (!t)
            continue;
        int64_t tat = c->tat[w] > now_us ? c->tat[w] : now_us;
        next[w] = tat + t;
        int64_t over = next[w] - t * r->burst - now_us;
        if (over > wait_us)
            wait_us = over;
    }
    if (wait_us > 0) {
        pthread_mutex_unlock(&s->mu);
        *retry_s = (uint32_t)((wait_us + 999999) / 1000000);
        return 1;
    }
    for (int w = 0; w < WINDOWS; w++)
        if (r->interval_us[w])
            c->tat[w] = next[w];
    pthread_mutex_unlock(&s->mu);
    return 0;
}

int alb_ratelimits_check(alb_ratelimits *rl, const char *route_id, const struct sockaddr *peer,
                         uint64_t now_ms, alb_rl_verdict *out)
{
    uint8_t key[17];
    if (!rl || !rl->n || !peer_key(peer, key))
        return 0;
    int64_t now_us = (int64_t)now_ms * 1000;
    for (size_t i = 0; i < rl->n; i++) {
        rule *r = &rl->rules[i];
        if (!applies(r, route_id, key))
            continue;
        uint32_t retry = 1;
        if (charge(r, key, now_us, &retry)) {
            out->limit_id = r->id;
            out->retry_after_s = retry ? retry : 1;
            return 1;
        }
    }
    return 0;
}
