/*
 * alb_proxy.c — one client connection of the ALB: parses its requests, routes each to an
 * upstream server, forwards the rewritten head and the re-framed body, parses the
 * response and streams it back re-framed for the client. Requests on one connection are
 * served one at a time (pipelined ones wait, parser paused); the client keeps one
 * upstream connection for its keep-alive requests while the route's upstream stays the
 * same. Everything runs on the connection's worker; a session is freed only when the
 * client connection is gone, the upstream is detached, and no callback is on the stack
 * (close may report on_close synchronously from inside another callback).
 *
 * TLS (alb_tls.h) sits between the wire and the HTTP code on either side: ciphertext
 * from on_data goes to the engine, whose plaintext callback is the HTTP entry point, and
 * everything written goes through alb_tls_write. While the client side is paused (a
 * request waits for its answer, or the upstream is backed up) the client's plaintext
 * callback returns 1, so the engine keeps the undecrypted rest and the stash holds at
 * most one record; un-pausing resumes the engine before the connection. A WebSocket
 * upgrade with TLS on either side is relayed here (P_TUNNEL), since the host's pump
 * moves raw bytes.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "alb_http_headers.h"
#include "alb_http_parser.h"
#include "alb_internal.h"
#include "alb_upool.h"

#define VIA_NAME "marchproxy-alb"
#define MAX_FIELDS 256 /* parser default caps at 100 header lines */
#define ALB_TRIES_MAX 12 /* first attempt + retries (a setting, at most 10) */

/* Fields of one message head, copied out of the parser's borrowed spans. Offsets, not
 * pointers, so the buffer may grow while the head arrives. */
typedef struct head_store {
    char *buf;
    size_t len, cap;
    size_t n;
    struct {
        size_t no, nl, vo, vl;
    } f[MAX_FIELDS];
    size_t mo, ml, to, tl; /* request method / target, or response reason in mo/ml */
} head_store;

enum phase { P_IDLE, P_REQ, P_DONE, P_TUNNEL };
enum resp_mode { R_NONE, R_RAW, R_CHUNK };
enum ctimer { CT_NONE, CT_IDLE, CT_HEADER };

/* A host timer armed to fire at `armed`, timing `deadline` (monotonic ms), which may
 * have moved later since: see "timers" below. */
typedef struct lazy_timer {
    mp_timer *t;
    uint64_t deadline, armed;
} lazy_timer;

/* The most request body the proxy reads and drops to keep a connection it answered
 * itself (404, 429); past it the answer closes the connection instead. */
#define ALB_DISCARD_MAX (1024 * 1024)

typedef struct sess {
    alb_state *st;
    const mp_host_api *api;
    mp_conn *c, *u;
    int u_upstream; /* upstream group u belongs to */
    alb_http_parser rq, rs;
    head_store rqh, rsh;
    char client_ip[INET6_ADDRSTRLEN];
    enum phase phase;
    int local_status; /* set by a request callback: answer this locally and close */
    int quiet_status; /* 404 / 429 for a well-formed request: answered once its body has
                       * been read and dropped, and the connection kept */
    uint64_t discarded; /* body bytes of that request dropped so far */
    int in_message;   /* request bytes seen since the last complete request */
    int req_done, resp_started, client_close, client_ka, client_v10, upgrade_req;
    int req_chunked;
    enum alb_http_method req_method;
    enum resp_mode rmode;
    int rstatus;
    uint64_t t_start, bytes_in, bytes_out;
    uint8_t *stash; /* client bytes after a complete request, parsed once it is answered */
    size_t stash_len;
    int hold, c_bp, u_bp, c_paused, u_paused;
    /* Lazy timers (see "timers" below) on the client and upstream connections; what
     * they time is c_timer_kind and u_waiting. */
    lazy_timer ct, ut;
    enum ctimer c_timer_kind;
    int u_waiting;
    int busy, c_gone;
    /* Pool bookkeeping for the current request (alb_pool.h). */
    int u_member;          /* member of upstream u_upstream that u is connected to */
    alb_upstream *req_up;  /* upstream and member the current request went to */
    int req_member;        /* -1 before it was dispatched */
    int m_active;          /* the request holds an active count on req_member */
    int reported;          /* its outcome was reported to the pool */
    uint64_t req_key;      /* hash key for hash pools */
    int tried[ALB_TRIES_MAX]; /* members this request tried, excluded from retries */
    int ntried;
    char *fwd_head;        /* upstream request head, kept to resend on a retry */
    size_t fwd_len, fwd_cap;
    uint64_t body_sent;    /* request body bytes queued upstream (0: a retry is safe) */
    /* The live tables this connection holds (alb_tables.c) and the current request's
     * route, valid while `routes` is held. */
    alb_route_table *routes;
    alb_ratelimits *limits;
    uint64_t tables_ver;
    alb_route_result route;
    int routed;
    uint32_t retry_after;  /* seconds, for a 429 */
    int accounted;         /* the current request was counted and logged */
    struct sockaddr_storage peer;
    int tls;               /* the client connection is TLS (X-Forwarded-Proto, logs) */
    alb_tls_conn *ctls;    /* the client side's TLS, or NULL for plain HTTP */
    alb_tls_conn *utls;    /* the upstream connection's TLS, or NULL */
    int tls_undecided;     /* TLS configured, NLB protocol unknown: the first byte says */
    int c_tls_held;        /* ctls stopped decrypting (plaintext callback said 1) */
    int c_tcp_eof, c_ended; /* the client's TCP stream ended / its end was handled */
    int t_c_done, t_u_done; /* P_TUNNEL: the client's / upstream's direction ended */
    int u_idle;            /* u finished a response cleanly and carries no request */
    int worker;            /* the worker this connection lives on */
} sess;

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* "Content-Length: N\r\n" into buf (48 bytes), without printf's cost per response. */
static const char *content_length_field(char *buf, uint64_t n)
{
    memcpy(buf, "Content-Length: ", 16);
    size_t len = 16 + alb_http_u64_dec(buf + 16, n);
    memcpy(buf + len, "\r\n", 3); /* with the terminator */
    return buf;
}

/* ------------------------------------------------------------ head store */

static int hs_put(head_store *h, const char *p, size_t n, size_t *off)
{
    if (h->len + n > h->cap) {
        size_t cap = h->cap ? h->cap : 2048;
        while (cap < h->len + n)
            cap *= 2;
        char *b = realloc(h->buf, cap);
        if (!b)
            return -1;
        h->buf = b;
        h->cap = cap;
    }
    memcpy(h->buf + h->len, p, n);
    *off = h->len;
    h->len += n;
    return 0;
}

static void hs_reset(head_store *h)
{
    h->len = 0;
    h->n = 0;
    h->mo = h->ml = h->to = h->tl = 0;
}

static int hs_field(head_store *h, const char *name, size_t nl, const char *v, size_t vl)
{
    if (h->n == MAX_FIELDS)
        return -1;
    size_t no, vo;
    if (hs_put(h, name, nl, &no) || hs_put(h, v, vl, &vo))
        return -1;
    h->f[h->n].no = no;
    h->f[h->n].nl = nl;
    h->f[h->n].vo = vo;
    h->f[h->n].vl = vl;
    h->n++;
    return 0;
}

static int name_is(const head_store *h, size_t i, const char *name)
{
    size_t l = strlen(name);
    return h->f[i].nl == l && strncasecmp(h->buf + h->f[i].no, name, l) == 0;
}

/* ------------------------------------------------------------ lifetime */

static const mp_conn_handler client_handler, up_handler, dead_handler;
static const struct alb_http_callbacks rs_callbacks;
static int u_tls_start(sess *s, const alb_upstream *up, const alb_server *sv);

static void sess_free(sess *s)
{
    alb_tls_conn_free(s->ctls);
    alb_tls_conn_free(s->utls);
    alb_route_table_unref(s->routes);
    alb_ratelimits_unref(s->limits);
    free(s->rqh.buf);
    free(s->rsh.buf);
    free(s->stash);
    free(s->fwd_head);
    free(s);
}

static void enter(sess *s) { s->busy++; }

static void leave(sess *s)
{
    if (--s->busy == 0 && s->c_gone && !s->u)
        sess_free(s);
}

static void c_tls_after(sess *s, int rc);

static void set_c_paused(sess *s)
{
    if (!s->c)
        return;
    int want = s->hold || s->c_bp;
    if (want && !s->c_paused) {
        s->c_paused = 1;
        s->api->conn_pause(s->c);
    } else if (!want && s->c_paused) {
        s->c_paused = 0;
        if (s->c_tls_held) {
            /* Records the engine kept come before anything the host holds; they may
             * pause the client again (a pipelined request) or end it. */
            s->c_tls_held = 0;
            c_tls_after(s, alb_tls_resume(s->ctls));
            if (!s->c || s->c_paused)
                return;
        }
        s->api->conn_resume(s->c); /* may deliver held bytes right here */
    }
}

static void set_u_paused(sess *s)
{
    if (!s->u)
        return;
    if (s->u_bp && !s->u_paused) {
        s->u_paused = 1;
        s->api->conn_pause(s->u);
    } else if (!s->u_bp && s->u_paused) {
        s->u_paused = 0;
        s->api->conn_resume(s->u);
    }
}

/* Removes the client timer from the host: before the session lets go of the client
 * connection's callbacks (close, tunnel), after which it must never fire. */
static void cancel_c_timer(sess *s)
{
    if (s->ct.t && s->c)
        s->api->timer_cancel(s->c, s->ct.t);
    s->ct.t = NULL;
    s->c_timer_kind = CT_NONE;
}

/* The same for the upstream timer, before the session lets go of that connection. */
static void cancel_u_timer(sess *s)
{
    if (s->ut.t && s->u)
        s->api->timer_cancel(s->u, s->ut.t);
    s->ut.t = NULL;
    s->u_waiting = 0;
}

/* Lazy stops: the armed timer stays and finds nothing to do when it fires. */
static void stop_c_timer(sess *s) { s->c_timer_kind = CT_NONE; }
static void stop_u_timer(sess *s) { s->u_waiting = 0; }

/* The current request no longer occupies its member (least-conn counts). */
static void member_end(sess *s)
{
    if (s->m_active && s->req_up)
        alb_pool_end(&s->req_up->pool, s->req_member);
    s->m_active = 0;
}

/* Reports the current request's outcome to its pool once; logs an ejection. */
static void member_report(sess *s, alb_outcome o)
{
    if (!s->req_up || s->req_member < 0 || s->reported)
        return;
    s->reported = 1;
    alb_pool *p = &s->req_up->pool;
    if (alb_pool_report(p, s->req_member, o, alb_pool_now_ms()))
        s->api->log(s->st->inst, MP_LOG_WARN,
                    "alb: upstream %s server %s ejected for %u ms after %u failures",
                    s->req_up->name, p->m[s->req_member].text, p->set.fail_timeout_ms,
                    p->set.max_fails);
}

/* Lets go of the upstream connection. `close_it` is 0 only while the host is already
 * closing it (failed connect), where closing again from the callback is not wanted. */
static void drop_u(sess *s, int close_it)
{
    mp_conn *u = s->u;
    if (!u)
        return;
    member_end(s);
    cancel_u_timer(s);
    /* A clean idle plain connection waits for the next request to its server from any
     * client of this worker (upstream keepalive), unless the set for it is full. */
    int parked = 0;
    if (close_it && s->u_idle && !s->utls && !s->u_paused && s->u_upstream >= 0) {
        const alb_upstream *up = &s->st->cfg.upstreams[s->u_upstream];
        alb_upool *pool = alb_upool_of(s->api, s->st->upools, s->worker);
        parked = up->keepalive &&
                 alb_upool_put(pool, u, s->u_upstream, s->u_member, up->keepalive,
                               up->keepalive_timeout_ms) == 0;
    }
    s->u_idle = 0;
    alb_tls_conn_free(s->utls); /* deferred by the engine when inside its callback */
    s->utls = NULL;
    s->u = NULL;
    s->u_paused = s->u_bp = 0;
    if (!parked)
        s->api->conn_set_handler(u, &dead_handler, NULL);
    if (close_it && !parked)
        s->api->conn_abort(u);
    if (s->c_bp) { /* the client was paused only for this upstream's sake */
        s->c_bp = 0;
        if (!s->c_gone)
            set_c_paused(s);
    }
}

static void close_client(sess *s)
{
    if (!s->c)
        return;
    cancel_c_timer(s);
    s->phase = P_DONE;
    s->hold = 1;
    if (s->ctls)
        alb_tls_shutdown(s->ctls); /* held bytes and close_notify go out first */
    s->api->conn_close(s->c); /* after the queued response is written */
}

/* To the client; flags ALB_TLS_MORE when another piece follows at once (one record). */
static void c_write(sess *s, const void *p, size_t n, int flags)
{
    if (!s->c || !n)
        return;
    s->bytes_out += n;
    int rc = s->ctls ? alb_tls_write(s->ctls, p, n, flags) : s->api->conn_send(s->c, p, n);
    if (rc == 1 && s->u) {
        s->u_bp = 1; /* the client reads slowly: stop reading the upstream */
        set_u_paused(s);
    }
}

static void c_send(sess *s, const void *p, size_t n)
{
    c_write(s, p, n, 0);
}

static void u_write(sess *s, const void *p, size_t n, int flags)
{
    if (!s->u || !n)
        return;
    int rc = s->utls ? alb_tls_write(s->utls, p, n, flags) : s->api->conn_send(s->u, p, n);
    if (rc == 1) {
        s->c_bp = 1; /* the upstream reads slowly: stop reading the client */
        set_c_paused(s);
    }
}

static void u_send(sess *s, const void *p, size_t n)
{
    u_write(s, p, n, 0);
}

/* The value of the current request's first field called `name` (case-insensitive). */
static const char *req_header(void *ctx, const char *name, size_t *len)
{
    const head_store *h = &((sess *)ctx)->rqh;
    for (size_t i = 0; i < h->n; i++)
        if (name_is(h, i, name)) {
            *len = h->f[i].vl;
            return h->buf + h->f[i].vo;
        }
    return NULL;
}

/* Counts the current request once on its route and writes its access log line; `lat`
 * is its latency in microseconds. */
static void account_latency(sess *s, int status, uint64_t lat)
{
    if (s->accounted)
        return;
    s->accounted = 1;
    if (s->routed)
        alb_route_stats_record(s->route.stats, status, lat, s->bytes_in, s->bytes_out);
    if (!s->st->access_log)
        return;
    const head_store *h = &s->rqh;
    alb_access_entry e = {
        .peer = (const struct sockaddr *)&s->peer,
        .latency_us = lat,
        .method = h->buf + h->mo, .method_len = h->ml,
        .target = h->buf + h->to, .target_len = h->tl,
        .route_id = s->routed ? s->route.id : NULL,
        .status = status, .bytes_in = s->bytes_in, .bytes_out = s->bytes_out,
        .tls = s->tls,
    };
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    e.start_wall_us = (uint64_t)wall.tv_sec * 1000000u + (uint64_t)wall.tv_nsec / 1000u - lat;
    e.host = req_header(s, "host", &e.host_len);
    e.referer = req_header(s, "referer", &e.referer_len);
    e.user_agent = req_header(s, "user-agent", &e.user_agent_len);
    if (s->req_up && s->req_member >= 0)
        e.upstream = s->req_up->pool.m[s->req_member].text;
    alb_access_log_write(s->st->access_log, &e);
}

static void account(sess *s, int status)
{
    if (!s->accounted)
        account_latency(s, status, s->t_start ? now_us() - s->t_start : 0);
}

static const char *reason_of(int st)
{
    switch (st) {
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 408: return "Request Timeout";
    case 429: return "Too Many Requests";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

/* Writes the proxy's own answer to the current request and counts it. */
static void write_local(sess *s, int status, int keep_alive)
{
    char body[96], head[320], extra[48] = "";
    int bl = snprintf(body, sizeof(body), "%d %s\n", status, reason_of(status));
    if (status == 429)
        snprintf(extra, sizeof(extra), "Retry-After: %u\r\n", s->retry_after);
    const char *conn = !keep_alive     ? "Connection: close\r\n"
                       : s->client_v10 ? "Connection: keep-alive\r\n"
                                       : "";
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                      "%s%s\r\n",
                      status, reason_of(status), bl, extra, conn);
    int has_body = s->req_method != ALB_HTTP_M_HEAD;
    c_write(s, head, (size_t)hl, has_body ? ALB_TLS_MORE : 0);
    if (has_body)
        c_send(s, body, (size_t)bl);
    atomic_fetch_add(&s->st->local_errors, 1);
    if (status == 502 || status == 504)
        atomic_fetch_add(&s->st->upstream_errors, 1);
    s->api->stats_request(s->st->inst, s->t_start ? now_us() - s->t_start : 0, status < 500,
                          s->bytes_in, s->bytes_out);
    account(s, status);
}

/* Answers the current request from the proxy itself and closes the client: after an
 * error the rest of the connection's bytes cannot be trusted to be framed right. */
static void send_local(sess *s, int status)
{
    if (status == 502 || status == 504)
        member_report(s, ALB_OUT_HTTP_5XX); /* no usable response from the member */
    drop_u(s, 1);
    if (!s->c || s->phase == P_DONE)
        return;
    write_local(s, status, 0);
    close_client(s);
}

/* ------------------------------------------------------------ timers */

/* Each request would otherwise cancel and add three timers (header, response, idle).
 * Instead a session keeps one host timer per connection and moves a deadline: a timer
 * that fires before its deadline is armed again for the rest, one that fires with
 * nothing to time does nothing. A timer is armed anew only when the new deadline comes
 * before the armed one (see c_timer_cap for why that is rare). Deadlines use the coarse
 * monotonic clock: it costs no clock read per call, and a jiffy is nothing to timeouts
 * of a millisecond or more. */
static uint64_t coarse_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Arms lt on connection c for its deadline, but for at most `cap` ms (0: no cap).
 * Returns 0 when the host could not add a timer. */
static int lt_arm(sess *s, mp_conn *c, lazy_timer *lt, uint64_t now, uint64_t cap,
                  void (*fn)(void *))
{
    uint64_t ms = lt->deadline - now;
    if (cap && ms > cap)
        ms = cap;
    lt->t = s->api->timer_add(c, ms, fn, s);
    lt->armed = now + ms;
    return lt->t != NULL;
}

/* Times `ms` from now: the armed timer stays when it fires no later than that. */
static int lt_start(sess *s, mp_conn *c, lazy_timer *lt, uint64_t ms, uint64_t cap,
                    void (*fn)(void *))
{
    uint64_t now = coarse_ms();
    lt->deadline = now + ms;
    if (lt->t && lt->armed <= lt->deadline)
        return 1; /* it fires first, and then looks at the deadline */
    if (lt->t)
        s->api->timer_cancel(c, lt->t);
    return lt_arm(s, c, lt, now, cap, fn);
}

/* A fired timer whose deadline moved on since it was armed is armed again for the
 * rest: 1 then (with *ok 0 if that failed), 0 when the deadline has come. */
static int lt_refire_early(sess *s, mp_conn *c, lazy_timer *lt, uint64_t cap,
                           void (*fn)(void *), int *ok)
{
    uint64_t now = coarse_ms();
    if (lt->deadline <= now + 1)
        return 0;
    *ok = lt_arm(s, c, lt, now, cap, fn);
    return 1;
}

/* The client timer runs at most this long, so that the header deadline of the next
 * request on a kept connection never comes before what the idle wait armed. */
static uint64_t c_timer_cap(const sess *s)
{
    uint32_t h = s->st->cfg.header_ms, i = s->st->cfg.idle_ms;
    return h < i ? h : i;
}

static void c_timer_fired(void *arg)
{
    sess *s = arg;
    enter(s);
    s->ct.t = NULL;
    enum ctimer kind = s->c_timer_kind;
    int ok = 1;
    if (kind != CT_NONE && lt_refire_early(s, s->c, &s->ct, c_timer_cap(s), c_timer_fired, &ok)) {
        if (!ok)
            s->c_timer_kind = CT_NONE;
    } else {
        s->c_timer_kind = CT_NONE;
        if (kind == CT_HEADER)
            send_local(s, 408);
        else if (kind == CT_IDLE)
            close_client(s);
    }
    leave(s);
}

static void start_c_timer(sess *s, enum ctimer kind, uint32_t ms)
{
    if (!s->c)
        return;
    s->c_timer_kind = kind;
    if (!lt_start(s, s->c, &s->ct, ms, c_timer_cap(s), c_timer_fired))
        s->c_timer_kind = CT_NONE;
}

static void u_timer_fired(void *arg)
{
    sess *s = arg;
    enter(s);
    s->ut.t = NULL;
    int ok = 1;
    if (s->u_waiting && lt_refire_early(s, s->u, &s->ut, 0, u_timer_fired, &ok)) {
        if (!ok)
            s->u_waiting = 0;
    } else if (s->u_waiting) {
        s->u_waiting = 0;
        if (!s->resp_started)
            send_local(s, 504);
    }
    leave(s);
}

/* The upstream has `response_ms` from now to start its answer. */
static void start_u_timer(sess *s)
{
    if (!s->u)
        return;
    s->u_waiting = 1;
    if (!lt_start(s, s->u, &s->ut, s->st->cfg.response_ms, 0, u_timer_fired))
        s->u_waiting = 0;
}

/* ------------------------------------------------------------ request side */

static int rq_begin(alb_http_parser *p)
{
    sess *s = p->user;
    hs_reset(&s->rqh);
    s->t_start = now_us();
    s->bytes_in = s->bytes_out = 0;
    s->req_done = s->resp_started = s->upgrade_req = s->req_chunked = 0;
    s->rstatus = 0;
    s->rmode = R_NONE;
    s->in_message = 1;
    s->routed = 0;
    s->accounted = 0;
    s->quiet_status = 0;
    s->discarded = 0;
    if (!s->m_active) {
        s->req_up = NULL;
        s->req_member = -1;
    }
    start_c_timer(s, CT_HEADER, s->st->cfg.header_ms);
    return 0;
}

static int rq_start(alb_http_parser *p, const struct alb_http_start_line *sl)
{
    sess *s = p->user;
    if (hs_put(&s->rqh, sl->method.p, sl->method.len, &s->rqh.mo) ||
        hs_put(&s->rqh, sl->target.p, sl->target.len, &s->rqh.to))
        return -1;
    s->rqh.ml = sl->method.len;
    s->rqh.tl = sl->target.len;
    s->req_method = sl->method_id;
    s->bytes_in += sl->method.len + sl->target.len + 12;
    return 0;
}

static int rq_header(alb_http_parser *p, const char *n, size_t nl, const char *v, size_t vl)
{
    sess *s = p->user;
    s->bytes_in += nl + vl + 4;
    return hs_field(&s->rqh, n, nl, v, vl);
}

static void up_start_response(sess *s)
{
    alb_http_parser_set_request_method(&s->rs, s->req_method);
    start_u_timer(s);
}

/* Counts the request on member `mi` of `up` from now on. */
static void dispatch_to(sess *s, alb_upstream *up, int mi)
{
    s->u_idle = 0;
    s->req_up = up;
    s->req_member = mi;
    s->reported = 0;
    alb_pool_begin(&up->pool, mi);
    s->m_active = 1;
}

/* A failed connect may be retried on another member: only idempotent methods, only
 * before any body byte went out and within the upstream's retries. */
static int may_retry(const sess *s, const alb_upstream *up)
{
    switch (s->req_method) {
    case ALB_HTTP_M_GET: case ALB_HTTP_M_HEAD: case ALB_HTTP_M_OPTIONS:
    case ALB_HTTP_M_PUT: case ALB_HTTP_M_DELETE: case ALB_HTTP_M_TRACE:
        break;
    default:
        return 0;
    }
    return s->ntried <= (int)up->retries && s->ntried < ALB_TRIES_MAX && !s->body_sent &&
           !s->resp_started;
}

/* Connects to member `mi` of group `ui` (a fresh pick when mi < 0) and, while connects
 * fail at once and retries allow, to further members. 0 or an HTTP status: 503 when
 * the pool had no usable member to begin with, 502 when the tried ones failed. */
static int connect_next(sess *s, int ui, int mi)
{
    alb_upstream *up = &s->st->cfg.upstreams[ui];
    for (;;) {
        if (mi < 0)
            mi = alb_pool_pick(&up->pool, s->req_key, s->tried, s->ntried, alb_pool_now_ms());
        if (mi < 0)
            return s->ntried ? 502 : 503;
        s->tried[s->ntried++] = mi;
        const alb_server *sv = &up->pool.m[mi];
        mp_conn *u = up->tls ? NULL
                             : alb_upool_take(alb_upool_of(s->api, s->st->upools, s->worker),
                                              ui, mi);
        int rc = 0;
        if (u) /* an idle connection to that server from the worker's keepalive set */
            s->api->conn_set_handler(u, &up_handler, s);
        else
            rc = s->api->conn_connect(s->c, (const struct sockaddr *)&sv->addr, sv->addr_len,
                                      s->st->cfg.connect_ms, &up_handler, s, &u);
        if (rc == 0) {
            s->u = u;
            s->u_upstream = ui;
            s->u_member = mi;
            dispatch_to(s, up, mi);
            alb_http_parser_init(&s->rs, ALB_HTTP_RESPONSE, NULL, &rs_callbacks, s);
            if (up->tls && u_tls_start(s, up, sv) < 0) {
                drop_u(s, 1);
                return 502;
            }
            return 0;
        }
        s->api->log(s->st->inst, MP_LOG_WARN, "alb: connect to %s failed: %s", sv->text,
                    strerror(-rc));
        s->req_up = up;
        s->req_member = mi;
        s->reported = 0;
        member_report(s, ALB_OUT_CONNECT_ERROR);
        if (!may_retry(s, up))
            return 502;
        mi = -1;
    }
}

/* Picks a member of group `ui` for this request and connects to it, or keeps the
 * current upstream connection when it belongs to the same group and its member is
 * still in service (for hash pools: is still the member the key maps to). */
static int ensure_upstream(sess *s, int ui)
{
    alb_upstream *up = &s->st->cfg.upstreams[ui];
    int mi = -1;
    s->ntried = 0;
    s->body_sent = 0;
    if (s->u && s->u_upstream == ui) {
        uint64_t now = alb_pool_now_ms();
        if (up->pool.set.balance == ALB_BAL_HASH)
            mi = alb_pool_pick(&up->pool, s->req_key, NULL, 0, now);
        else if (alb_pool_member_ok(&up->pool, s->u_member, now))
            mi = s->u_member;
        if (mi >= 0 && mi == s->u_member) {
            s->tried[s->ntried++] = mi;
            dispatch_to(s, up, mi);
            return 0;
        }
        if (mi < 0 && up->pool.set.balance == ALB_BAL_HASH)
            return 503;
    }
    drop_u(s, 1);
    return connect_next(s, ui, mi);
}

/* A well-formed request the proxy refuses itself (no route, rate limited): its body is
 * read and dropped, up to a bound and within the header timeout, and the answer keeps
 * the connection, as nginx and HAProxy do. A body over the bound gets the same answer
 * and the connection closes. */
static int answer_after_body(sess *s, int status)
{
    const struct alb_http_msg *m = &s->rq.msg;
    /* A client waiting for "100 Continue" gets the answer at once, and the close. */
    if (m->upgrade || m->expect_continue ||
        (m->framing == ALB_HTTP_BODY_LENGTH && m->content_length > ALB_DISCARD_MAX)) {
        s->local_status = status;
        return ALB_HTTP_CB_PAUSE;
    }
    s->quiet_status = status;
    start_c_timer(s, CT_HEADER, s->st->cfg.header_ms);
    return 0;
}

static int rq_headers_complete(alb_http_parser *p)
{
    sess *s = p->user;
    const struct alb_http_msg *m = &p->msg;
    stop_c_timer(s);
    s->client_ka = m->keep_alive;
    s->client_v10 = m->version_minor == 0;
    s->upgrade_req = m->upgrade;
    if (m->method == ALB_HTTP_M_CONNECT) {
        s->local_status = 501; /* not a forward proxy */
        return ALB_HTTP_CB_PAUSE;
    }
    head_store *h = &s->rqh;
    if (atomic_load_explicit(&s->st->tables_ver, memory_order_acquire) != s->tables_ver) {
        alb_route_table_unref(s->routes);
        alb_ratelimits_unref(s->limits);
        alb_tables_get(s->st, &s->routes, &s->limits, &s->tables_ver);
    }
    alb_route_req rr = {m->authority, m->authority_len, h->buf + h->to, h->tl,
                        h->buf + h->mo, h->ml, req_header, s};
    if (alb_routes_match(s->routes, &rr, &s->route) < 0) {
        atomic_fetch_add(&s->st->not_found, 1);
        return answer_after_body(s, 404);
    }
    s->routed = 1;
    alb_rl_verdict verdict;
    if (s->limits && alb_ratelimits_check(s->limits, s->route.id,
                                          (const struct sockaddr *)&s->peer,
                                          alb_pool_now_ms(), &verdict)) {
        atomic_fetch_add(&s->st->rate_limited, 1);
        if (s->route.stats)
            atomic_fetch_add(&s->route.stats->rate_limited, 1);
        s->retry_after = verdict.retry_after_s;
        return answer_after_body(s, 429);
    }
    struct alb_http_field fields[MAX_FIELDS];
    for (size_t i = 0; i < h->n; i++)
        fields[i] = (struct alb_http_field){h->buf + h->f[i].no, h->f[i].nl,
                                            h->buf + h->f[i].vo, h->f[i].vl};
    struct alb_fwd_request fr = {
        .method = h->buf + h->mo, .method_len = h->ml, .target = h->buf + h->to,
        .target_len = h->tl, .form = m->form, .fields = fields, .nfields = h->n,
        .authority = m->authority, .authority_len = m->authority_len, .upgrade = m->upgrade,
    };
    struct alb_fwd_opts o = {
        .client_addr = s->client_ip, .via_name = VIA_NAME, .pass_upgrade = 1,
        .upstream_host = s->route.host_rewrite, .client_tls = s->tls,
        .framing = m->framing == ALB_HTTP_BODY_CHUNKED  ? ALB_FWD_BODY_CHUNKED
                   : m->framing == ALB_HTTP_BODY_LENGTH ? ALB_FWD_BODY_LENGTH
                                                        : ALB_FWD_BODY_NONE,
        .content_length = m->content_length,
    };
    s->req_chunked = o.framing == ALB_FWD_BODY_CHUNKED;
    if (s->st->cfg.max_body_bytes && o.framing == ALB_FWD_BODY_LENGTH &&
        m->content_length > s->st->cfg.max_body_bytes) {
        atomic_fetch_add(&s->st->body_too_large, 1);
        s->local_status = 413;
        return ALB_HTTP_CB_PAUSE;
    }
    /* The head is kept until the next request, to resend on a retry; its buffer stays
     * with the session and only grows. */
    size_t cap = h->len + h->n * 4 + 2 * m->authority_len + 1024, olen = 0;
    if (cap > s->fwd_cap) {
        char *grown = realloc(s->fwd_head, cap);
        if (!grown) {
            s->local_status = 500;
            return ALB_HTTP_CB_PAUSE;
        }
        s->fwd_head = grown;
        s->fwd_cap = cap;
    }
    s->fwd_len = 0;
    enum alb_hdr_rc hr = alb_http_build_upstream_head(&fr, &o, s->fwd_head, cap, &olen);
    if (hr != ALB_HDR_OK) {
        s->local_status = hr == ALB_HDR_E_NOSPACE ? 431 : 400;
        return ALB_HTTP_CB_PAUSE;
    }
    int ui = s->route.upstream;
    s->fwd_len = olen;
    s->req_key = alb_pool_request_key(&s->st->cfg.upstreams[ui].pool, fields, h->n,
                                      s->client_ip);
    int st = ensure_upstream(s, ui);
    if (st) {
        s->local_status = st;
        return ALB_HTTP_CB_PAUSE;
    }
    s->phase = P_REQ;
    up_start_response(s);
    u_send(s, s->fwd_head, s->fwd_len);
    return 0;
}

static int rq_body(alb_http_parser *p, const char *d, size_t n)
{
    sess *s = p->user;
    if (s->quiet_status) {
        s->bytes_in += n;
        s->discarded += n;
        if (s->discarded > ALB_DISCARD_MAX) { /* a chunked body that would not end */
            s->local_status = s->quiet_status;
            return ALB_HTTP_CB_PAUSE;
        }
        return 0;
    }
    uint64_t max = s->st->cfg.max_body_bytes;
    if (max && s->body_sent + n > max) { /* a chunked body that grew past the limit */
        atomic_fetch_add(&s->st->body_too_large, 1);
        s->local_status = 413;
        return ALB_HTTP_CB_PAUSE;
    }
    s->bytes_in += n;
    s->body_sent += n;
    if (s->req_chunked) {
        char hx[24];
        int hl = snprintf(hx, sizeof(hx), "%zx\r\n", n);
        u_write(s, hx, (size_t)hl, ALB_TLS_MORE);
        u_write(s, d, n, ALB_TLS_MORE);
        u_send(s, "\r\n", 2);
    } else {
        u_send(s, d, n);
    }
    return 0;
}

static int rq_complete(alb_http_parser *p)
{
    sess *s = p->user;
    s->in_message = 0;
    if (s->local_status)
        return ALB_HTTP_CB_PAUSE;
    if (s->quiet_status) {
        s->req_done = 1;
        return ALB_HTTP_CB_PAUSE;
    }
    if (s->req_chunked)
        u_send(s, "0\r\n\r\n", 5);
    s->req_done = 1;
    return ALB_HTTP_CB_PAUSE; /* the next pipelined request waits for this response */
}

static const struct alb_http_callbacks rq_callbacks = {
    .on_message_begin = rq_begin,
    .on_start_line = rq_start,
    .on_header = rq_header,
    .on_headers_complete = rq_headers_complete,
    .on_body = rq_body,
    .on_message_complete = rq_complete,
};

static void stash_add(sess *s, const uint8_t *d, size_t n)
{
    if (!n)
        return;
    uint8_t *b = realloc(s->stash, s->stash_len + n);
    if (!b) {
        send_local(s, 500);
        return;
    }
    memcpy(b + s->stash_len, d, n);
    s->stash = b;
    s->stash_len += n;
}

/* Feeds client bytes to the request parser until they are used up or a request waits.
 * Requests the proxy answers itself without closing (answer_after_body) are answered
 * here in turn, in a loop rather than by recursion, however many were pipelined. */
static void feed_client(sess *s, const uint8_t *d, size_t n)
{
    if (s->hold) {
        stash_add(s, d, n);
        return;
    }
    size_t used = 0;
    enum alb_http_rc rc = alb_http_parser_execute(&s->rq, (const char *)d, n, &used);
    while (s->quiet_status && s->req_done && !s->local_status && s->c &&
           s->phase != P_DONE && (rc == ALB_HTTP_PAUSED || rc == ALB_HTTP_CLOSED)) {
        int status = s->quiet_status;
        s->quiet_status = 0;
        stop_c_timer(s);
        int keep = s->client_ka && !s->client_close && rc != ALB_HTTP_CLOSED;
        write_local(s, status, keep);
        if (!keep) {
            close_client(s);
            return;
        }
        s->phase = P_IDLE;
        start_c_timer(s, CT_IDLE, s->st->cfg.idle_ms);
        d += used;
        n -= used;
        used = 0;
        rc = n ? alb_http_parser_execute(&s->rq, (const char *)d, n, &used) : ALB_HTTP_OK;
    }
    if (!s->c || s->phase == P_DONE)
        return;
    if (s->local_status) {
        if (s->resp_started) { /* too late for an answer of our own: cut it short */
            drop_u(s, 1);
            s->api->conn_abort(s->c);
        } else {
            send_local(s, s->local_status);
        }
        return;
    }
    switch (rc) {
    case ALB_HTTP_OK:
        return;
    case ALB_HTTP_PAUSED:
    case ALB_HTTP_UPGRADE:
        if (!s->req_done && rc == ALB_HTTP_PAUSED)
            return; /* cannot happen: only rq_complete pauses without local_status */
        s->hold = 1;
        stash_add(s, d + used, n - used);
        set_c_paused(s);
        return;
    case ALB_HTTP_CLOSED:
        s->client_close = 1; /* the client said this was its last request */
        s->hold = 1;
        set_c_paused(s);
        return;
    case ALB_HTTP_ERROR: {
        enum alb_http_err e = alb_http_parser_error(&s->rq);
        s->api->log(s->st->inst, MP_LOG_DEBUG, "alb: bad request from %s: %s", s->client_ip,
                    alb_http_err_name(e));
        if ((int)e >= 0 && e < ALB_HTTP_E__COUNT)
            atomic_fetch_add_explicit(&s->st->refused[e], 1, memory_order_relaxed);
        if (s->resp_started) {
            drop_u(s, 1);
            s->api->conn_abort(s->c);
        } else {
            send_local(s, alb_http_err_status(e));
        }
        return;
    }
    }
}

/* ------------------------------------------------------------ response side */

static int rs_begin(alb_http_parser *p)
{
    sess *s = p->user;
    hs_reset(&s->rsh);
    return 0;
}

static int rs_start(alb_http_parser *p, const struct alb_http_start_line *sl)
{
    sess *s = p->user;
    s->rstatus = sl->status;
    s->rsh.ml = sl->reason.len;
    return hs_put(&s->rsh, sl->reason.p, sl->reason.len, &s->rsh.mo);
}

static int rs_header(alb_http_parser *p, const char *n, size_t nl, const char *v, size_t vl)
{
    sess *s = p->user;
    return hs_field(&s->rsh, n, nl, v, vl);
}

/* A response field that does not cross the proxy: hop-by-hop ones, those the upstream's
 * Connection names, and the framing fields, which are re-made for the client. */
static int resp_field_dropped(const head_store *h, size_t i, int keep_framing, int keep_upgrade)
{
    static const char *const hop[] = {"connection", "keep-alive", "proxy-connection", "te",
                                      "trailer", NULL};
    for (int k = 0; hop[k]; k++)
        if (name_is(h, i, hop[k]))
            return 1;
    if (name_is(h, i, "upgrade"))
        return !keep_upgrade;
    if (name_is(h, i, "content-length") || name_is(h, i, "transfer-encoding"))
        return !keep_framing;
    for (size_t j = 0; j < h->n; j++)
        if (name_is(h, j, "connection") &&
            alb_http_list_has(h->buf + h->f[j].vo, h->f[j].vl, h->buf + h->f[i].no, h->f[i].nl))
            return 1;
    return 0;
}

static int rs_headers_complete(alb_http_parser *p)
{
    sess *s = p->user;
    const struct alb_http_msg *m = &p->msg;
    head_store *h = &s->rsh;
    int st = s->rstatus;
    stop_u_timer(s);
    int informational = st < 200 && st != 101;
    if (!informational)
        member_report(s, st >= 500 ? ALB_OUT_HTTP_5XX : ALB_OUT_OK);
    int upgrade = st == 101 && s->upgrade_req;
    if (st == 101 && !s->upgrade_req)
        return -1; /* 101 to a request that asked for no upgrade: broken upstream */
    if (informational && s->client_v10)
        return 0; /* HTTP/1.0 clients get no 1xx (RFC 9110 15.2) */
    int keep_framing = 0;
    const char *framing = "";
    char clbuf[48];
    if (!informational && !upgrade) {
        s->resp_started = 1;
        if (s->req_method == ALB_HTTP_M_HEAD || st == 304) {
            keep_framing = 1; /* they describe the body a GET would have had */
            s->rmode = R_NONE;
        } else if (m->framing == ALB_HTTP_BODY_NONE) {
            s->rmode = R_NONE;
            if (st != 204 && st >= 200)
                framing = "Content-Length: 0\r\n";
        } else if (m->framing == ALB_HTTP_BODY_LENGTH) {
            s->rmode = R_RAW;
            framing = content_length_field(clbuf, m->content_length);
        } else if (!s->client_v10) {
            s->rmode = R_CHUNK; /* chunked or close-delimited upstream: chunk for the client */
            framing = "Transfer-Encoding: chunked\r\n";
        } else {
            s->rmode = R_RAW; /* an HTTP/1.0 client reads to the close */
            s->client_close = 1;
        }
        if (!s->client_ka)
            s->client_close = 1;
    }
    /* Build the head: status line, surviving fields, framing, Connection, Via. Most
     * heads fit on the stack; a larger one gets the heap. */
    char stack_head[4096];
    size_t cap = h->len + h->n * 4 + 256, len = 0;
    char *out = cap <= sizeof(stack_head) ? stack_head : malloc(cap);
    if (!out)
        return -1;
    memcpy(out, "HTTP/1.1 ", 9);
    out[9] = (char)('0' + st / 100);
    out[10] = (char)('0' + st / 10 % 10);
    out[11] = (char)('0' + st % 10);
    out[12] = ' ';
    len = 13;
    memcpy(out + len, h->buf + h->mo, h->ml);
    len += h->ml;
    memcpy(out + len, "\r\n", 2);
    len += 2;
    for (size_t i = 0; i < h->n; i++) {
        if (resp_field_dropped(h, i, keep_framing, upgrade))
            continue;
        memcpy(out + len, h->buf + h->f[i].no, h->f[i].nl);
        len += h->f[i].nl;
        memcpy(out + len, ": ", 2);
        len += 2;
        memcpy(out + len, h->buf + h->f[i].vo, h->f[i].vl);
        len += h->f[i].vl;
        memcpy(out + len, "\r\n", 2);
        len += 2;
    }
    const char *conn = "";
    if (upgrade)
        conn = "Connection: upgrade\r\n";
    else if (!informational && s->client_close)
        conn = "Connection: close\r\n";
    else if (!informational && s->client_v10)
        conn = "Connection: keep-alive\r\n";
    static const char via[] = "Via: 1.1 " VIA_NAME "\r\n\r\n";
    size_t fl = strlen(framing), cl = strlen(conn);
    memcpy(out + len, framing, fl); /* the 256 spare bytes of cap hold these three */
    len += fl;
    memcpy(out + len, conn, cl);
    len += cl;
    memcpy(out + len, via, sizeof(via) - 1);
    len += sizeof(via) - 1;
    /* With TLS the head waits for the first body piece to share a record with it;
     * up_data_done flushes it when no body came with this read. */
    c_write(s, out, len, ALB_TLS_MORE);
    if (out != stack_head)
        free(out);
    return 0;
}

static int rs_body(alb_http_parser *p, const char *d, size_t n)
{
    sess *s = p->user;
    if (s->rmode == R_CHUNK) {
        char hx[24];
        int hl = snprintf(hx, sizeof(hx), "%zx\r\n", n);
        c_write(s, hx, (size_t)hl, ALB_TLS_MORE);
        c_write(s, d, n, ALB_TLS_MORE);
        c_send(s, "\r\n", 2);
    } else if (s->rmode == R_RAW) {
        c_send(s, d, n);
    }
    return 0;
}

static int rs_complete(alb_http_parser *p)
{
    sess *s = p->user;
    if (s->rstatus < 200 && s->rstatus != 101)
        return 0; /* the final response follows */
    if (s->rmode == R_CHUNK)
        c_send(s, "0\r\n\r\n", 5);
    return ALB_HTTP_CB_PAUSE;
}

static const struct alb_http_callbacks rs_callbacks = {
    .on_message_begin = rs_begin,
    .on_start_line = rs_start,
    .on_header = rs_header,
    .on_headers_complete = rs_headers_complete,
    .on_body = rs_body,
    .on_message_complete = rs_complete,
};

/* The response was sent in full: account it, then keep or drop each side. */
static void finish_exchange(sess *s, int upstream_reusable)
{
    atomic_fetch_add(&s->st->requests, 1);
    uint64_t lat = now_us() - s->t_start;
    s->api->stats_request(s->st->inst, lat, s->rstatus < 500, s->bytes_in, s->bytes_out);
    account_latency(s, s->rstatus, lat);
    stop_u_timer(s);
    member_end(s);
    if (!s->req_done) {
        /* Answered before the request body ended: the rest of it is still on both
         * connections, so neither can carry another request. */
        upstream_reusable = 0;
        s->client_close = 1;
    }
    if (!upstream_reusable)
        drop_u(s, 1);
    else
        s->u_idle = 1; /* kept for this client, or parked for others when it leaves */
    if (s->client_close || !s->client_ka) {
        close_client(s);
        return;
    }
    s->phase = P_IDLE;
    s->hold = 0;
    s->local_status = 0;
    start_c_timer(s, CT_IDLE, s->st->cfg.idle_ms);
    uint8_t *pending = s->stash;
    size_t plen = s->stash_len;
    s->stash = NULL;
    s->stash_len = 0;
    if (plen)
        feed_client(s, pending, plen);
    free(pending);
    if (s->c && !s->c_gone)
        set_c_paused(s);
}

static void upgrade_to_pump(sess *s, const uint8_t *rest, size_t rest_len)
{
    /* Bytes already read on either side go first, in order; then the host pumps. */
    c_send(s, rest, rest_len);
    if (s->stash_len)
        u_send(s, s->stash, s->stash_len);
    free(s->stash);
    s->stash = NULL;
    s->stash_len = 0;
    atomic_fetch_add(&s->st->requests, 1);
    s->api->stats_request(s->st->inst, now_us() - s->t_start, 1, s->bytes_in, s->bytes_out);
    cancel_u_timer(s);
    cancel_c_timer(s);
    member_end(s); /* a tunnel is not a request in flight */
    if (s->ctls || s->utls) {
        /* The host's pump would move ciphertext from one TLS session into the other:
         * relay the plaintext here instead, with the usual pause/drain rules. */
        s->phase = P_TUNNEL;
        s->hold = 0;
        set_u_paused(s);
        set_c_paused(s); /* lets the client's held records and bytes through */
        return;
    }
    mp_conn *c = s->c, *u = s->u;
    s->phase = P_DONE;
    if (s->c_paused)
        s->api->conn_resume(c);
    if (s->u_paused)
        s->api->conn_resume(u);
    s->c_paused = s->u_paused = 0;
    /* The pump keeps only on_close, and the host drops the partner's handler when one
     * side closes, so the client's on_close may never come: the session lets go of
     * both connections here and is freed when this callback unwinds. */
    s->api->conn_set_handler(u, &dead_handler, NULL);
    s->api->conn_set_handler(c, &dead_handler, NULL);
    s->u = NULL;
    s->ut.t = NULL;
    s->c = NULL;
    s->c_gone = 1;
    if (s->api->conn_pump(c, u) < 0) {
        s->api->conn_abort(u);
        s->api->conn_abort(c);
    }
}

static void feed_upstream(sess *s, const uint8_t *d, size_t n)
{
    if (s->phase != P_REQ) {
        drop_u(s, 1); /* bytes nobody asked for: the connection is not trustworthy */
        return;
    }
    size_t used = 0;
    enum alb_http_rc rc = alb_http_parser_execute(&s->rs, (const char *)d, n, &used);
    if (!s->u || !s->c)
        return;
    switch (rc) {
    case ALB_HTTP_OK:
        return;
    case ALB_HTTP_UPGRADE:
        if (s->rstatus == 101) {
            upgrade_to_pump(s, d + used, n - used);
            return;
        }
        /* a CONNECT tunnel is never forwarded (refused earlier) */
        send_local(s, 502);
        return;
    case ALB_HTTP_PAUSED:
    case ALB_HTTP_CLOSED:
        if (s->upgrade_req && s->rstatus != 101)
            alb_http_parser_resume_http(&s->rq); /* upgrade refused: still HTTP */
        finish_exchange(s, rc == ALB_HTTP_PAUSED && used == n && s->rs.msg.keep_alive);
        return;
    case ALB_HTTP_ERROR:
        s->api->log(s->st->inst, MP_LOG_WARN, "alb: bad response from upstream: %s",
                    alb_http_err_name(alb_http_parser_error(&s->rs)));
        if (!s->resp_started) {
            send_local(s, 502);
        } else {
            drop_u(s, 1);
            s->api->conn_abort(s->c);
        }
        return;
    }
}

/* ------------------------------------------------------------ tunnel (TLS upgrade) */

/* One direction of a relayed upgrade ended: pass the end on (close_notify, then FIN);
 * once both did, close both connections. */
static void tunnel_end(sess *s, int client_side)
{
    if (client_side) {
        s->t_c_done = 1;
        if (s->u) {
            if (s->utls)
                alb_tls_shutdown(s->utls);
            s->api->conn_shutdown_write(s->u);
        }
    } else {
        s->t_u_done = 1;
        if (s->c) {
            if (s->ctls)
                alb_tls_shutdown(s->ctls);
            s->api->conn_shutdown_write(s->c);
        }
    }
    if (!s->t_c_done || !s->t_u_done)
        return;
    mp_conn *u = s->u;
    if (u) {
        alb_tls_conn_free(s->utls);
        s->utls = NULL;
        s->u = NULL;
        s->api->conn_set_handler(u, &dead_handler, NULL);
        s->api->conn_close(u);
    }
    close_client(s);
}

/* ------------------------------------------------------------ client side */

/* The client finished sending (TCP EOF, or close_notify): answer what is in flight,
 * then close. Runs once. */
static void c_end(sess *s)
{
    if (s->c_ended || !s->c)
        return;
    s->c_ended = 1;
    if (s->phase == P_TUNNEL) {
        tunnel_end(s, 1);
    } else if (s->phase == P_REQ) {
        s->client_close = 1; /* half-closed after its request: answer, then close */
        if (!s->req_done && !s->hold) {
            /* the body was cut short */
            if (alb_http_parser_finish(&s->rq) == ALB_HTTP_ERROR) {
                if (s->resp_started) {
                    drop_u(s, 1);
                    s->api->conn_abort(s->c);
                } else {
                    send_local(s, 400);
                }
            }
        }
    } else if (s->phase == P_IDLE) {
        if (s->in_message && !s->hold)
            send_local(s, 400); /* a truncated request head */
        else
            close_client(s);
    }
}

/* What a call into the client's TLS engine returned. */
static void c_tls_after(sess *s, int rc)
{
    if (rc == -ECANCELED || !s->ctls || !s->c)
        return;
    if (rc == ALB_TLS_OK && s->c_tcp_eof && !s->c_tls_held)
        rc = alb_tls_eof(s->ctls); /* the end met while paused: report it now */
    if (rc == ALB_TLS_EOF || (rc == -ECONNABORTED && s->c_tcp_eof)) {
        /* close_notify, or a plain FIN (harmless after a complete request) */
        c_end(s);
    } else if (rc < 0) {
        s->api->log(s->st->inst, MP_LOG_DEBUG, "alb: TLS with %s: %s", s->client_ip,
                    alb_tls_error(s->ctls));
        drop_u(s, 1);
        if (s->c)
            s->api->conn_abort(s->c);
    }
}

static int c_tls_wire(void *arg, const uint8_t *d, size_t n)
{
    sess *s = arg;
    return s->c ? s->api->conn_send(s->c, d, n) : -EPIPE;
}

/* Decrypted client bytes: today's HTTP entry point (or the tunnel). 1 stops the engine
 * while the client is paused, so at most this record ends up in the stash. */
static int c_tls_plain(void *arg, const uint8_t *d, size_t n)
{
    sess *s = arg;
    if (s->phase == P_TUNNEL) {
        u_send(s, d, n);
    } else {
        if (s->phase == P_IDLE && !s->in_message)
            stop_c_timer(s); /* a request begins (the idle timer covered the handshake) */
        feed_client(s, d, n);
    }
    if (!s->c || s->c_paused || s->phase == P_DONE) {
        s->c_tls_held = 1;
        return 1;
    }
    return 0;
}

static int c_tls_begin(sess *s)
{
    alb_tls_io io = {.send = c_tls_wire, .plaintext = c_tls_plain, .ready = NULL, .arg = s};
    char why[256];
    int rc = alb_state_tls_accept(s->st, &io, &s->ctls, why, sizeof(why));
    if (rc < 0) {
        s->api->log(s->st->inst, MP_LOG_WARN, "alb: TLS for %s: %s", s->client_ip, why);
        return rc;
    }
    s->tls = 1;
    return 0;
}

/* ------------------------------------------------------------ connection callbacks */

static void c_data(void *ctx, mp_conn *c, const uint8_t *d, size_t n)
{
    sess *s = ctx;
    enter(s);
    if (s->tls_undecided) {
        /* 0x16 opens a TLS handshake record; no HTTP method starts with it */
        s->tls_undecided = 0;
        if (n && d[0] == 0x16 && c_tls_begin(s) < 0) {
            drop_u(s, 1);
            s->api->conn_abort(c);
            leave(s);
            return;
        }
    }
    if (s->ctls) {
        c_tls_after(s, alb_tls_feed(s->ctls, d, n));
    } else if (s->phase == P_TUNNEL) {
        u_send(s, d, n);
    } else {
        if (s->phase == P_IDLE && !s->in_message)
            stop_c_timer(s);
        feed_client(s, d, n);
    }
    leave(s);
}

static void c_eof(void *ctx, mp_conn *c)
{
    sess *s = ctx;
    enter(s);
    s->c_tcp_eof = 1;
    if (s->ctls)
        c_tls_after(s, alb_tls_eof(s->ctls)); /* PAUSED: the resume reports the end */
    else
        c_end(s);
    leave(s);
}

static void c_drain(void *ctx, mp_conn *c)
{
    sess *s = ctx;
    enter(s);
    s->u_bp = 0;
    set_u_paused(s);
    leave(s);
}

static void c_closed(void *ctx, mp_conn *c, mp_close_reason reason, int err)
{
    sess *s = ctx;
    enter(s);
    s->ct.t = NULL; /* the host cancelled the connection's timers */
    s->c = NULL;
    s->c_gone = 1;
    s->phase = P_DONE;
    drop_u(s, 1);
    leave(s);
}

/* ------------------------------------------------------------ upstream side */

static const char *u_member_text(const sess *s)
{
    if (s->u_upstream < 0 || s->u_member < 0)
        return "?";
    return s->st->cfg.upstreams[s->u_upstream].pool.m[s->u_member].text;
}

static void u_lost(sess *s);

/* The upstream finished sending (FIN, or close_notify). */
static void u_end(sess *s)
{
    if (s->phase == P_TUNNEL) {
        tunnel_end(s, 0);
        return;
    }
    u_lost(s);
    drop_u(s, 1);
}

/* What a call into the upstream's TLS engine returned. */
static void u_tls_after(sess *s, int rc)
{
    if (rc == -ECANCELED || rc == ALB_TLS_OK || rc == ALB_TLS_PAUSED || !s->u)
        return;
    if (rc == ALB_TLS_EOF) {
        u_end(s);
        return;
    }
    s->api->log(s->st->inst, MP_LOG_WARN, "alb: upstream %s server %s: TLS: %s",
                s->st->cfg.upstreams[s->u_upstream].name, u_member_text(s),
                s->utls ? alb_tls_error(s->utls) : strerror(-rc));
    if (s->phase == P_REQ && !s->resp_started) {
        send_local(s, 502); /* e.g. its certificate failed verification */
        return;
    }
    int in_use = s->phase == P_REQ || s->phase == P_TUNNEL;
    drop_u(s, 1);
    if (in_use && s->c)
        s->api->conn_abort(s->c); /* a response (or tunnel) cut short */
}

/* After a read from the upstream: send a response head that waited for body bytes. */
static void up_data_done(sess *s)
{
    if (s->ctls && s->c)
        alb_tls_flush(s->ctls);
}

static int u_tls_wire(void *arg, const uint8_t *d, size_t n)
{
    sess *s = arg;
    return s->u ? s->api->conn_send(s->u, d, n) : -EPIPE;
}

static int u_tls_plain(void *arg, const uint8_t *d, size_t n)
{
    sess *s = arg;
    if (s->phase == P_TUNNEL)
        c_send(s, d, n);
    else
        feed_upstream(s, d, n);
    return 0; /* the host's pause of the upstream bounds what one read decrypts */
}

/* The handshake finished and the request bytes written during it went out. */
static void u_tls_ready(void *arg)
{
    sess *s = arg;
    if (s->c_bp) {
        s->c_bp = 0;
        set_c_paused(s);
    }
}

/* Wraps the new upstream connection s->u in TLS and queues the ClientHello (the host
 * keeps it until the TCP connect finished). */
static int u_tls_start(sess *s, const alb_upstream *up, const alb_server *sv)
{
    alb_tls_io io = {.send = u_tls_wire, .plaintext = u_tls_plain, .ready = u_tls_ready,
                     .arg = s};
    char why[256];
    int rc = alb_tls_conn_new_client(up->tls, NULL, &io, &s->utls, why, sizeof(why));
    if (rc == 0 && (rc = alb_tls_start(s->utls)) < 0)
        snprintf(why, sizeof(why), "%s", alb_tls_error(s->utls));
    if (rc < 0) {
        s->api->log(s->st->inst, MP_LOG_WARN, "alb: upstream %s server %s: TLS: %s", up->name,
                    sv->text, why);
        return rc;
    }
    return 0;
}

static void u_connected(void *ctx, mp_conn *u, int err, const char *reason)
{
    sess *s = ctx;
    if (err == 0 || u != s->u)
        return;
    enter(s);
    if (s->req_up && s->req_member >= 0)
        s->api->log(s->st->inst, MP_LOG_WARN, "alb: upstream %s server %s: %s",
                    s->req_up->name, s->req_up->pool.m[s->req_member].text,
                    reason ? reason : "connect failed");
    else
        s->api->log(s->st->inst, MP_LOG_WARN, "alb: upstream %s", reason ? reason : "failed");
    drop_u(s, 0); /* the host closes it after this callback */
    member_report(s, ALB_OUT_CONNECT_ERROR);
    int status = err == -ETIMEDOUT ? 504 : 502;
    if (s->c && s->phase == P_REQ && s->req_up && may_retry(s, s->req_up)) {
        status = connect_next(s, s->u_upstream, -1); /* another member */
        if (status == 0) {
            up_start_response(s);
            u_send(s, s->fwd_head, s->fwd_len);
            leave(s);
            return;
        }
    }
    if (!s->resp_started)
        send_local(s, status);
    else if (s->c)
        s->api->conn_abort(s->c);
    leave(s);
}

static void u_data(void *ctx, mp_conn *u, const uint8_t *d, size_t n)
{
    sess *s = ctx;
    enter(s);
    if (s->utls)
        u_tls_after(s, alb_tls_feed(s->utls, d, n));
    else if (s->phase == P_TUNNEL)
        c_send(s, d, n);
    else
        feed_upstream(s, d, n);
    up_data_done(s);
    leave(s);
}

static void u_lost(sess *s)
{
    if (s->phase != P_REQ) {
        drop_u(s, 1); /* an idle keep-alive connection the upstream closed */
        return;
    }
    enum alb_http_rc rc = alb_http_parser_finish(&s->rs);
    if (rc == ALB_HTTP_CLOSED && s->resp_started) {
        finish_exchange(s, 0); /* a close-delimited response ended */
        return;
    }
    if (!s->resp_started) {
        send_local(s, 502);
    } else {
        drop_u(s, 1);
        if (s->c)
            s->api->conn_abort(s->c);
    }
}

static void u_eof(void *ctx, mp_conn *u)
{
    sess *s = ctx;
    enter(s);
    s->u_idle = 0; /* a connection the server ended is no one's to reuse */
    if (!s->utls) {
        u_end(s);
    } else {
        int rc = alb_tls_eof(s->utls);
        if (rc == -ECONNABORTED && s->phase == P_REQ && s->resp_started &&
            s->rs.msg.framing == ALB_HTTP_BODY_EOF) {
            /* A body delimited by the close, ended without close_notify: it may have
             * been cut short, so the client must not take it as complete. */
            s->api->log(s->st->inst, MP_LOG_WARN,
                        "alb: upstream server %s closed without close_notify mid-response",
                        u_member_text(s));
            drop_u(s, 1);
            if (s->c)
                s->api->conn_abort(s->c);
        } else if (rc == -ECONNABORTED) {
            u_end(s);
        } else {
            u_tls_after(s, rc);
        }
    }
    up_data_done(s);
    leave(s);
}

static void u_drain(void *ctx, mp_conn *u)
{
    sess *s = ctx;
    enter(s);
    s->c_bp = 0;
    set_c_paused(s);
    leave(s);
}

static void u_closed(void *ctx, mp_conn *u, mp_close_reason reason, int err)
{
    sess *s = ctx;
    if (u == s->u)
        s->u_idle = 0;
    if (u != s->u) {
        /* after conn_pump both close through here; the client side owns the session */
        return;
    }
    enter(s);
    s->ut.t = NULL; /* the host cancelled the connection's timers */
    s->u_paused = s->u_bp = 0;
    s->u = NULL;
    alb_tls_conn_free(s->utls);
    s->utls = NULL;
    member_end(s);
    if (s->c_bp) {
        s->c_bp = 0;
        set_c_paused(s);
    }
    if (s->phase == P_TUNNEL) {
        if (s->c)
            close_client(s);
    } else {
        u_lost(s);
    }
    leave(s);
}

static void dead_closed(void *ctx, mp_conn *c, mp_close_reason reason, int err) {}

static const mp_conn_handler client_handler = {
    .struct_size = sizeof(mp_conn_handler),
    .on_data = c_data,
    .on_eof = c_eof,
    .on_drain = c_drain,
    .on_close = c_closed,
};

static const mp_conn_handler up_handler = {
    .struct_size = sizeof(mp_conn_handler),
    .on_data = u_data,
    .on_eof = u_eof,
    .on_drain = u_drain,
    .on_connect = u_connected,
    .on_close = u_closed,
};

static const mp_conn_handler dead_handler = {
    .struct_size = sizeof(mp_conn_handler),
    .on_close = dead_closed,
};

/* With tls { } configured, a connection is TLS when the NLB saw (or the listener binds)
 * https, plain when it saw another HTTP-family protocol, and for a tcp listener or an
 * unsniffed connection the first byte decides (c_data). Without it, TLS connections
 * are refused: the plugin has no certificate to answer them with. */
int alb_proxy_on_connection(alb_state *st, mp_conn *c, const mp_conn_info *info)
{
    int proto = info ? info->protocol : MP_PROTO_UNSPECIFIED;
    if (proto == MP_PROTO_HTTPS && !st->cfg.tls_server) {
        st->api->log(st->inst, MP_LOG_DEBUG,
                     "alb: a TLS connection, but this instance has no tls settings: refused");
        return -EPROTONOSUPPORT;
    }
    sess *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->st = st;
    s->api = st->api;
    s->c = c;
    s->u_upstream = -1;
    s->u_member = -1;
    s->req_member = -1;
    s->phase = P_IDLE;
    snprintf(s->client_ip, sizeof(s->client_ip), "unknown");
    if (info && info->peer) {
        memcpy(&s->peer, info->peer, info->peer->sa_family == AF_INET6
                                         ? sizeof(struct sockaddr_in6)
                                         : sizeof(struct sockaddr_in));
        if (info->peer->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)info->peer)->sin_addr,
                      s->client_ip, sizeof(s->client_ip));
        else if (info->peer->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)info->peer)->sin6_addr,
                      s->client_ip, sizeof(s->client_ip));
    }
    alb_http_parser_init(&s->rq, ALB_HTTP_REQUEST, &st->cfg.limits, &rq_callbacks, s);
    s->worker = info && info->worker >= 0 && info->worker < ALB_MAX_WORKERS ? info->worker : -1;
    alb_http_parser_init(&s->rs, ALB_HTTP_RESPONSE, NULL, &rs_callbacks, s);
    if (st->cfg.tls_server) {
        if (proto == MP_PROTO_HTTPS) {
            int rc = c_tls_begin(s);
            if (rc < 0) {
                sess_free(s);
                return rc;
            }
        } else if (proto == MP_PROTO_UNSPECIFIED || proto == MP_PROTO_TCP) {
            s->tls_undecided = 1;
        }
    }
    atomic_fetch_add(&st->connections, 1); /* the host keeps the live gauge itself */
    st->api->conn_set_handler(c, &client_handler, s);
    start_c_timer(s, CT_IDLE, st->cfg.idle_ms);
    return 0;
}
