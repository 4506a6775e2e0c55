/*
 * dispatch.c — what happens to a connection a worker accepted: read its first bytes
 * until the sniffer recognises the protocol (or the listener binds one, or the sniff
 * timer runs out), describe it as a wire Route, let dp_select choose the target, pick
 * the generation by weight, check the connection limit and the rate limiters, then
 * hand it to the plugin's on_connection or forward it to an external module through
 * the byte pump. Refusals are counted and closed cleanly.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dp.h"
#include "log.h"

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void refuse(mp_conn *c, const char *why)
{
    mp_worker *w = c->w;
    atomic_fetch_add(&w->refused, 1);
    atomic_fetch_add(&w->host->nlb.refused, 1);
    char peer[INET6_ADDRSTRLEN] = "?";
    const struct sockaddr *sa = (const struct sockaddr *)&c->peer;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, peer, sizeof(peer));
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, peer, sizeof(peer));
    mp_debug("refused %s on %s: %s", peer, c->listener_name, why);
    dp_conn_close(c, MP_CLOSE_LOCAL, 0, false);
}

/* Picks one of a target's generations so that, per worker, every 100 consecutive
 * connections split exactly by the weights (61 is coprime with 100, so k*61 mod 100
 * visits every slot once per hundred). */
static mp_generation *pick_generation(mp_worker *w, const dp_target *t)
{
    if (t->n_gens == 1)
        return t->gens[0];
    uint64_t k = w->rr++;
    int slot = (int)((k * 61) % 100);
    int32_t total = t->weights[0] + t->weights[1];
    if (total <= 0)
        return t->gens[0];
    /* scale to 100 when the weights do not add up to it */
    return slot * total < t->weights[0] * 100 ? t->gens[0] : t->gens[1];
}

static bool rate_limited(const dp_target *t, mp_conn *c, const char *route_id)
{
    uint64_t now = mono_ns();
    for (size_t i = 0; i < t->n_limiters; i++)
        if (!mp_rate_limiter_allow(dp_limiter_get(t, i), (const struct sockaddr *)&c->peer,
                                   route_id, now, NULL))
            return true;
    return false;
}

static void hand_to_plugin(mp_conn *c, const dp_target *t)
{
    mp_worker *w = c->w;
    mp_generation *g = pick_generation(w, t);
    const mp_plugin_descriptor *d = g->image->desc;
    if (!MP_HAS_MEMBER(mp_plugin_descriptor, d->struct_size, on_connection) ||
        !d->on_connection) {
        refuse(c, "the instance takes no connections");
        return;
    }
    struct mp_instance *inst = t->inst;
    int64_t active = atomic_load_explicit(&inst->stats.conns_active, memory_order_relaxed);
    if (t->max_connections > 0 && active >= t->max_connections) {
        refuse(c, "instance at max_connections");
        return;
    }
    mp_generation_ref(g);
    c->gen = g;
    c->inst = inst;
    c->counted_instance = true;
    atomic_fetch_add_explicit(&inst->stats.conns_active, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&inst->stats.conns_total, 1, memory_order_relaxed);
    atomic_fetch_add(&w->host->nlb.routed, 1);
    uint8_t *early = c->sniff_buf;
    size_t early_len = c->sniff_len;
    c->sniff_buf = NULL;
    c->sniff_len = 0;
    c->state = CONN_OPEN;
    int rc = d->on_connection(g->state, c, &c->info);
    if (rc < 0) {
        free(early);
        atomic_fetch_add(&w->refused, 1);
        dp_conn_close(c, MP_CLOSE_LOCAL, -rc, false);
        return;
    }
    if (early_len && c->state == CONN_OPEN) {
        /* What the sniffer read comes first: to the plugin, or straight to the other
         * side when the plugin has already joined this connection to the pump. */
        if (c->pumping && c->pump_peer) {
            if (w->host->api.conn_send(c->pump_peer, early, early_len) < 0)
                dp_conn_close(c, MP_CLOSE_ERROR, EPIPE, true);
        } else if (c->handler && c->handler->on_data) {
            c->handler->on_data(c->ctx, c, early, early_len);
        }
    }
    free(early);
}

static void hand_to_external(mp_conn *c, const dp_target *t)
{
    mp_worker *w = c->w;
    mp_conn *up;
    int rc = w->host->api.conn_connect(c, (const struct sockaddr *)&t->addr, t->addr_len, 0,
                                       NULL, NULL, &up);
    if (rc < 0) {
        refuse(c, "cannot open a connection to the external module");
        return;
    }
    atomic_fetch_add(&w->host->nlb.routed, 1);
    if (t->counter) { /* least-conn and GetLoadDistribution count it until it closes */
        mp_counter_ref(t->counter);
        c->ext_counter = t->counter;
        atomic_fetch_add(&t->counter->value, 1);
    }
    c->state = CONN_OPEN;
    if (c->sniff_len && w->host->api.conn_send(up, c->sniff_buf, c->sniff_len) < 0) {
        dp_conn_close(up, MP_CLOSE_ERROR, ENOMEM, true);
        refuse(c, "out of memory");
        return;
    }
    free(c->sniff_buf);
    c->sniff_buf = NULL;
    c->sniff_len = 0;
    w->host->api.conn_pump(c, up);
}

static void route(mp_conn *c, const mp_sniff_info *si);

static void format_ip(const struct sockaddr_storage *ss, char *buf, size_t len)
{
    buf[0] = '\0';
    if (ss->ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, buf, (socklen_t)len);
    else if (ss->ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, buf, (socklen_t)len);
}

static int local_port(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return 0;
}

/* Scale: the instance is served by workers 0..n-1 only. Nothing of this connection is
 * in flight (sniffing uses single receives), so the socket and the bytes read so far
 * can move to a worker that serves it. */
static void hand_to_worker(mp_conn *c, const mp_sniff_info *si, int to)
{
    mp_worker *w = c->w;
    dp_adopt *a = calloc(1, sizeof(*a));
    if (!a) {
        refuse(c, "out of memory");
        return;
    }
    a->fd = c->fd;
    a->listener_index = c->listener_index;
    a->peer = c->peer;
    a->local = c->local;
    a->peer_len = c->info.peer_len;
    a->local_len = c->info.local_len;
    a->protocol = c->info.protocol;
    if (si) {
        a->sniffed = true;
        a->si = *si;
    }
    a->data = c->sniff_buf;
    a->len = c->sniff_len;
    c->sniff_buf = NULL;
    c->sniff_len = 0;
    if (dp_worker_post(&w->host->workers[to], MSG_ADOPT, a) < 0) {
        c->sniff_buf = a->data;
        c->sniff_len = a->len;
        free(a);
        refuse(c, "out of memory");
        return;
    }
    dp_conn_detach(c);
}

void dp_dispatch_adopt(mp_worker *w, dp_adopt *a)
{
    mp_conn *c = dp_conn_new(w, a->fd);
    if (!c) {
        close(a->fd);
        free(a->data);
        free(a);
        atomic_fetch_add(&w->refused, 1);
        return;
    }
    c->adopted = true;
    c->peer = a->peer;
    c->local = a->local;
    c->info.peer_len = a->peer_len;
    c->info.local_len = a->local_len;
    c->info.protocol = a->protocol;
    c->listener_index = a->listener_index;
    const dp_snapshot *s = w->snap;
    if (s && (size_t)a->listener_index < s->n_listeners)
        snprintf(c->listener_name, sizeof(c->listener_name), "%s",
                 s->listeners[a->listener_index].name);
    if (a->sniffed) {
        snprintf(c->sni, sizeof(c->sni), "%s", a->si.sni);
        if (a->si.n_alpn > 0)
            snprintf(c->alpn, sizeof(c->alpn), "%s", a->si.alpn[0]);
    }
    c->sniff_buf = a->data;
    c->sniff_len = a->len;
    c->state = CONN_SNIFFING; /* routed again below, on a worker that serves it */
    dp_conn_hold(c);
    route(c, a->sniffed ? &a->si : NULL);
    if (c->state == CONN_OPEN)
        dp_conn_arm_recv(c);
    dp_conn_release(c);
    free(a);
}

/* Route a connection whose protocol is known (0 when the sniffer gave up). */
static void route(mp_conn *c, const mp_sniff_info *si)
{
    mp_worker *w = c->w;
    const dp_snapshot *s = w->snap;
    if (c->sniff_timer) {
        dp_timer_cancel(c->sniff_timer);
        c->sniff_timer = NULL;
    }
    const dp_listener_view *lv =
        c->listener_index >= 0 && (size_t)c->listener_index < s->n_listeners
            ? &s->listeners[c->listener_index]
            : NULL;
    char ip[INET6_ADDRSTRLEN];
    format_ip(&c->peer, ip, sizeof(ip));
    Marchproxy__Route req = MARCHPROXY__ROUTE__INIT;
    req.protocol = (Marchproxy__Protocol)c->info.protocol;
    req.destination_port = local_port(&c->local);
    req.source_pattern = ip;
    req.destination_pattern = si && si->sni[0] ? (char *)si->sni
                              : si && si->host[0] ? (char *)si->host
                                                  : (char *)"";
    req.path_pattern = si && si->path[0] ? (char *)si->path : (char *)"";
    dp_decision d;
    dp_select(s, lv, &req, (const struct sockaddr *)&c->peer, &w->rr, &d);
    int target = d.target;
    if (target < 0 && lv && lv->default_target >= 0 &&
        s->targets[lv->default_target].available)
        target = lv->default_target; /* what nothing else claims */
    if (target < 0) {
        refuse(c, d.why);
        return;
    }
    const dp_target *t = &s->targets[target];
    if (d.route >= 0)
        snprintf(c->route_id, sizeof(c->route_id), "%s", s->routes[d.route].route->route_id);
    /* (A receive still in flight — a silent client routed by the sniff timer — would
     * race the new owner for the socket: such a connection stays here.) */
    if (!c->adopted && !c->recv_armed && !t->external && t->workers_allowed > 0 &&
        w->index >= t->workers_allowed && w->index < w->host->n_workers) {
        hand_to_worker(c, si, (int)(w->rr++ % (uint64_t)t->workers_allowed));
        return;
    }
    if (rate_limited(t, c, c->route_id)) {
        refuse(c, "rate limited");
        return;
    }
    if (t->external)
        hand_to_external(c, t);
    else
        hand_to_plugin(c, t);
}

static void sniff_timed_out(void *arg)
{
    mp_conn *c = arg;
    c->sniff_timer = NULL;
    if (c->state != CONN_SNIFFING)
        return;
    /* A silent client: a server-first protocol on a listener with a default module,
     * or nothing at all (then the default module or a refusal). */
    dp_conn_hold(c);
    route(c, NULL);
    dp_conn_release(c);
}

void dp_dispatch_sniff_data(mp_conn *c, const uint8_t *data, size_t len)
{
    size_t room = DP_SNIFF_BUF - c->sniff_len;
    size_t take = len < room ? len : room;
    memcpy(c->sniff_buf + c->sniff_len, data, take);
    c->sniff_len += take;
    mp_sniff_info si;
    mp_sniff_result r = mp_sniff(c->sniff_buf, c->sniff_len, &si);
    if (r == MP_SNIFF_NEED_MORE && c->sniff_len < DP_SNIFF_BUF && take == len)
        return;
    if (r == MP_SNIFF_MATCH) {
        c->info.protocol = si.protocol;
        snprintf(c->sni, sizeof(c->sni), "%s", si.sni);
        if (si.n_alpn > 0)
            snprintf(c->alpn, sizeof(c->alpn), "%s", si.alpn[0]);
        route(c, &si);
    } else {
        route(c, NULL); /* unknown protocol: only a default module can take it */
    }
    if (take < len && c->state == CONN_OPEN && c->handler && c->handler->on_data)
        c->handler->on_data(c->ctx, c, data + take, len - take);
}

void dp_dispatch_accept(mp_worker *w, int listen_index, int fd)
{
    mp_conn *c = dp_conn_new(w, fd);
    if (!c) {
        close(fd);
        atomic_fetch_add(&w->refused, 1);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    socklen_t len = sizeof(c->peer);
    getpeername(fd, (struct sockaddr *)&c->peer, &len);
    c->info.peer_len = len;
    len = sizeof(c->local);
    getsockname(fd, (struct sockaddr *)&c->local, &len);
    c->info.local_len = len;
    c->listener_index = listen_index;
    const dp_snapshot *s = w->snap;
    const dp_listener_view *lv = s && (size_t)listen_index < s->n_listeners
                                     ? &s->listeners[listen_index]
                                     : NULL;
    if (lv)
        snprintf(c->listener_name, sizeof(c->listener_name), "%s", lv->name);
    if (!s || !lv) {
        refuse(c, "no routing snapshot yet");
        return;
    }
    if (lv->bound_protocol) {
        /* The listener names the protocol (server-first ones cannot be sniffed). */
        c->info.protocol = lv->bound_protocol;
        dp_conn_hold(c);
        route(c, NULL);
        if (c->state == CONN_OPEN)
            dp_conn_arm_recv(c);
        dp_conn_release(c);
        return;
    }
    c->sniff_buf = malloc(DP_SNIFF_BUF);
    if (!c->sniff_buf) {
        refuse(c, "out of memory");
        return;
    }
    c->state = CONN_SNIFFING;
    c->sniff_timer = dp_timer_add(w, c, lv->sniff_timeout_ms, sniff_timed_out, c);
    dp_conn_arm_recv_once(c);
}
