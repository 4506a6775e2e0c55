/*
 * conn.c — one TCP connection on a worker: multishot receive into provided buffers,
 * an ordered output queue sent with sendmsg (several segments per system call), high-
 * and low-water marks for backpressure and a hard limit against slow readers,
 * half-close, timers, outbound connect with a timeout, and the byte pump that joins two
 * connections without copying (a received buffer is sent from where the kernel put it
 * and recycled when the send completes).
 *
 * A connection is freed only when no operation of it is in flight: every SQE counts in
 * `inflight`, and the last completion after close finishes the job.
 */
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "dp.h"
#include "log.h"
#include "pb_util.h"
#include "valgrind_hints.h"

#define SEND_IOV_MAX 16
/* Payload room of a cached small segment: one DP_SMALL_SEG_BYTES block, header included. */
#define SMALL_SEG_ROOM (DP_SMALL_SEG_BYTES - sizeof(dp_seg))

/* Per-connection sendmsg state lives beside the connection so the kernel may read it
 * until the completion arrives. */
typedef struct conn_io {
    struct msghdr msg;
    struct iovec iov[SEND_IOV_MAX];
} conn_io;

typedef struct conn_full {
    mp_conn c;
    conn_io io;
} conn_full;

static void maybe_free(mp_conn *c);
static void kick_send(mp_conn *c);
static void release_output(mp_conn *c);

mp_conn *dp_conn_new(mp_worker *w, int fd)
{
    conn_full *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    mp_conn *c = &f->c;
    c->w = w;
    c->fd = fd;
    c->state = CONN_OPEN;
    c->opened_ns = mp_wall_ns();
    c->info.struct_size = sizeof(c->info);
    c->info.worker = w->index;
    c->info.listener = c->listener_name;
    c->info.route_id = c->route_id;
    c->info.sni = c->sni;
    c->info.alpn = c->alpn;
    c->info.peer = (const struct sockaddr *)&c->peer;
    c->info.local = (const struct sockaddr *)&c->local;
    c->listener_index = -1;
    c->next_live = w->live;
    if (w->live)
        w->live->prev_live = c;
    w->live = c;
    w->n_live++;
    atomic_fetch_add(&w->opened, 1);
    return c;
}

/* Every timer of a connection that is closing or leaving this worker. */
static void drop_timers(mp_conn *c)
{
    while (c->timers)
        dp_timer_cancel(c->timers);
    c->connect_timer = NULL; /* freed above: no later cancel may see them */
    c->sniff_timer = NULL;
}

/* ------------------------------------------------------------------ receiving */

void dp_conn_arm_recv(mp_conn *c)
{
    if (c->recv_armed || c->recv_held || c->peer_eof || c->state == CONN_CLOSED ||
        c->state == CONN_CLOSING || c->state == CONN_CONNECTING)
        return;
    struct io_uring_sqe *sqe = dp_sqe(c->w);
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = (uint16_t)c->w->bgid;
    io_uring_sqe_set_data64(sqe, UD(c, UD_RECV));
    c->recv_armed = true;
    c->inflight++;
}

void dp_conn_arm_recv_once(mp_conn *c)
{
    if (c->recv_armed || c->state == CONN_CLOSED)
        return;
    struct io_uring_sqe *sqe = dp_sqe(c->w);
    io_uring_prep_recv(sqe, c->fd, NULL, DP_BUF_SIZE, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = (uint16_t)c->w->bgid;
    io_uring_sqe_set_data64(sqe, UD(c, UD_RECV));
    c->recv_armed = true;
    c->inflight++;
}

void dp_conn_detach(mp_conn *c)
{
    c->fd = -1; /* maybe_free must not close it: another worker owns it now */
    c->handler = NULL;
    c->state = CONN_CLOSED;
    drop_timers(c);
    maybe_free(c);
}

static void cancel_recv(mp_conn *c)
{
    if (!c->recv_armed)
        return;
    struct io_uring_sqe *sqe = dp_sqe(c->w);
    io_uring_prep_cancel64(sqe, UD(c, UD_RECV), 0);
    io_uring_sqe_set_data64(sqe, UD(c->w, UD_IGNORE));
    io_uring_submit(&c->w->ring); /* now, not after the rest of this batch */
}

static dp_seg *seg_provided(mp_worker *w, uint16_t bid, size_t len)
{
    dp_seg *s = malloc(sizeof(*s));
    if (!s)
        return NULL;
    memset(s, 0, sizeof(*s));
    s->kind = SEG_PROVIDED;
    s->data = w->bufs + (size_t)bid * DP_BUF_SIZE;
    s->len = len;
    s->bid = bid;
    return s;
}

/* An owned segment with room for at least `len` bytes; small ones come from the
 * worker's cache, so a proxied request's sends cost no malloc. */
static dp_seg *seg_owned(mp_worker *w, size_t len)
{
    dp_seg *s;
    size_t cap = SMALL_SEG_ROOM;
    if (len <= cap && w->seg_cache) {
        s = w->seg_cache;
        w->seg_cache = s->next;
        w->seg_cache_n--;
    } else {
        if (len > cap)
            cap = len;
        s = malloc(sizeof(*s) + cap);
        if (!s)
            return NULL;
    }
    memset(s, 0, sizeof(*s));
    s->kind = SEG_OWNED;
    s->data = s->owned;
    s->cap = cap;
    return s;
}

static void seg_release(mp_worker *w, dp_seg *s)
{
    if (s->kind == SEG_PROVIDED) {
        dp_worker_recycle_buffer(w, s->bid);
    } else if (s->kind == SEG_ZC && s->done) {
        s->done(s->done_arg);
    } else if (s->kind == SEG_OWNED && s->cap == SMALL_SEG_ROOM &&
               w->seg_cache_n < DP_SMALL_SEG_CACHE) {
        s->next = w->seg_cache;
        w->seg_cache = s;
        w->seg_cache_n++;
        return;
    }
    free(s);
}

void dp_conn_free_seg_cache(mp_worker *w)
{
    while (w->seg_cache) {
        dp_seg *s = w->seg_cache;
        w->seg_cache = s->next;
        free(s);
    }
    w->seg_cache_n = 0;
}

/* Pump: both directions have ended and everything is written → close both. */
static void pump_check_done(mp_conn *c)
{
    mp_conn *p = c->pump_peer;
    if (!p)
        return;
    if (c->peer_eof && p->peer_eof && !c->out_head && !p->out_head)
        dp_conn_close(c, MP_CLOSE_PEER, 0, false); /* closes its partner too */
}

static void shutdown_write_when_flushed(mp_conn *c)
{
    if (c->want_shut_write && !c->write_shut && !c->out_head && c->state != CONN_CLOSED) {
        shutdown(c->fd, SHUT_WR);
        c->write_shut = true;
    }
}

static void on_peer_eof(mp_conn *c)
{
    c->peer_eof = true;
    if (c->pumping) {
        mp_conn *p = c->pump_peer;
        if (p && p->state != CONN_CLOSED) {
            p->want_shut_write = true;
            shutdown_write_when_flushed(p);
        }
        pump_check_done(c);
        return;
    }
    if (c->state == CONN_SNIFFING) {
        dp_conn_close(c, MP_CLOSE_PEER, 0, false);
        return;
    }
    if (c->paused || c->stash_head) {
        c->eof_pending = true; /* after the input that came before it */
        return;
    }
    if (c->handler && c->handler->on_eof)
        c->handler->on_eof(c->ctx, c);
    else
        dp_conn_close(c, MP_CLOSE_PEER, 0, false);
}

/* Input that arrived while the plugin has the connection paused, kept for resume. A
 * pause leaves the kernel's receive running, so pausing and resuming once per request
 * costs no cancel and no re-arm; only when the held input passes DP_STASH_SOFT_MAX is
 * the receive stopped, so a peer that keeps sending meets TCP's backpressure. Small
 * pieces are copied so they do not pin a 64 KiB receive buffer each. */
static void stash_input(mp_conn *c, uint16_t bid, size_t len)
{
    mp_worker *w = c->w;
    dp_seg *st;
    if (len <= SMALL_SEG_ROOM && (st = seg_owned(w, len))) {
        memcpy(st->owned, w->bufs + (size_t)bid * DP_BUF_SIZE, len);
        st->len = len;
        dp_worker_recycle_buffer(w, bid);
    } else if (!(st = seg_provided(w, bid, len))) {
        dp_worker_recycle_buffer(w, bid);
        dp_conn_close(c, MP_CLOSE_ERROR, ENOMEM, true);
        return;
    }
    if (c->stash_tail)
        c->stash_tail->next = st;
    else
        c->stash_head = st;
    c->stash_tail = st;
    c->stash_bytes += len;
    if (c->stash_bytes > DP_STASH_SOFT_MAX && !c->recv_held) {
        c->recv_held = true;
        cancel_recv(c);
    }
}

void dp_conn_on_recv(mp_conn *c, struct io_uring_cqe *cqe)
{
    mp_worker *w = c->w;
    dp_conn_hold(c);
    bool more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    if (!more) {
        c->recv_armed = false;
        c->inflight--;
    }
    int res = cqe->res;
    if (res > 0) {
        uint16_t bid = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
        const uint8_t *data = w->bufs + (size_t)bid * DP_BUF_SIZE;
        MP_MEM_WRITTEN_BY_KERNEL(data, (size_t)res);
        c->bytes_in += (uint64_t)res;
        if (c->state == CONN_CLOSED || (c->state == CONN_CLOSING && !c->pumping)) {
            dp_worker_recycle_buffer(w, bid);
        } else if (c->pumping) {
            mp_conn *p = c->pump_peer;
            dp_seg *s = p && p->state != CONN_CLOSED ? seg_provided(w, bid, (size_t)res) : NULL;
            if (!s) {
                dp_worker_recycle_buffer(w, bid);
                if (p && p->state != CONN_CLOSED)
                    dp_conn_close(p, MP_CLOSE_ERROR, ENOMEM, true);
                dp_conn_close(c, p ? MP_CLOSE_ERROR : MP_CLOSE_PEER, p ? ENOMEM : 0, !!p);
            } else if (dp_conn_queue(p, s) == 1 && !c->paused) {
                /* the far side is slow: stop reading until it drains */
                c->paused = true;
                c->recv_held = true;
                cancel_recv(c);
            }
        } else if (c->state == CONN_SNIFFING) {
            dp_dispatch_sniff_data(c, data, (size_t)res);
            dp_worker_recycle_buffer(w, bid);
        } else if (c->paused) {
            stash_input(c, bid, (size_t)res);
        } else {
            if (c->handler && c->handler->on_data)
                c->handler->on_data(c->ctx, c, data, (size_t)res);
            dp_worker_recycle_buffer(w, bid);
        }
    } else if (res == 0) {
        if (c->state != CONN_CLOSED)
            on_peer_eof(c);
    } else if (res == -ENOBUFS) {
        /* The worker's buffers are all in use (queued towards slow peers): wait for one
         * to come back rather than spin. */
        if (c->state != CONN_CLOSED && !c->recv_held && !c->on_rearm_list) {
            c->on_rearm_list = true;
            c->rearm_next = w->rearm_head;
            w->rearm_head = c;
        }
    } else if (res != -ECANCELED) {
        if (c->state != CONN_CLOSED)
            dp_conn_close(c, res == -ECONNRESET ? MP_CLOSE_PEER : MP_CLOSE_ERROR, -res, true);
    }
    /* A receive that ended (buffers ran dry aside) starts again unless the connection
     * is paused, at EOF or closing; a cancel that lost the race with resume lands here. */
    if (!more && res != -ENOBUFS) {
        if (c->state == CONN_SNIFFING)
            dp_conn_arm_recv_once(c);
        else
            dp_conn_arm_recv(c);
    }
    dp_conn_release(c);
}

/* ------------------------------------------------------------------ sending */

/* Counts `len` more bytes waiting to be sent: 0, 1 past the high-water mark (the
 * caller should stop producing), or -ENOBUFS past the hard limit (closed). */
static int count_queued(mp_conn *c, size_t len)
{
    c->out_bytes += len;
    if (c->out_bytes > DP_SEND_HARD_MAX) {
        dp_conn_close(c, MP_CLOSE_OVERFLOW, ENOBUFS, true);
        return -ENOBUFS;
    }
    if (c->out_bytes > DP_SEND_HWM) {
        c->backpressured = true;
        return 1;
    }
    return 0;
}

int dp_conn_queue(mp_conn *c, dp_seg *s)
{
    if (c->state == CONN_CLOSED || c->write_shut) {
        seg_release(c->w, s);
        return -EPIPE;
    }
    s->next = NULL;
    if (c->out_tail)
        c->out_tail->next = s;
    else
        c->out_head = s;
    c->out_tail = s;
    /* Not sent at once: what else this round queues (a response's head, then its
     * body) joins it in one sendmsg when the worker flushes before it waits. */
    if (!c->send_inflight && !c->on_flush_list) {
        c->on_flush_list = true;
        c->flush_next = c->w->flush_head;
        c->w->flush_head = c;
        dp_conn_hold(c); /* not freed while listed */
    }
    return count_queued(c, s->len);
}

static void kick_send(mp_conn *c)
{
    if (c->send_inflight || !c->out_head || c->state == CONN_CONNECTING ||
        c->state == CONN_CLOSED)
        return;
    conn_io *io = &((conn_full *)c)->io;
    int n = 0;
    for (dp_seg *s = c->out_head; s && n < SEND_IOV_MAX; s = s->next, n++) {
        io->iov[n].iov_base = (void *)(s->data + s->off);
        io->iov[n].iov_len = s->len - s->off;
    }
    struct io_uring_sqe *sqe = dp_sqe(c->w);
    if (n == 1) { /* the usual case: no msghdr for the kernel to copy in */
        io_uring_prep_send(sqe, c->fd, io->iov[0].iov_base, io->iov[0].iov_len, MSG_NOSIGNAL);
    } else {
        memset(&io->msg, 0, sizeof(io->msg));
        io->msg.msg_iov = io->iov;
        io->msg.msg_iovlen = (size_t)n;
        io_uring_prep_sendmsg(sqe, c->fd, &io->msg, MSG_NOSIGNAL);
    }
    io_uring_sqe_set_data64(sqe, UD(c, UD_SEND));
    c->send_inflight = true;
    c->inflight++;
}

void dp_conn_flush_sends(mp_worker *w)
{
    while (w->flush_head) {
        mp_conn *c = w->flush_head;
        w->flush_head = c->flush_next;
        c->flush_next = NULL;
        c->on_flush_list = false;
        kick_send(c);
        dp_conn_release(c);
    }
}

static void on_send(mp_conn *c, struct io_uring_cqe *cqe)
{
    c->inflight--;
    c->send_inflight = false;
    int res = cqe->res;
    if (res < 0 || c->state == CONN_CLOSED) {
        if (c->state != CONN_CLOSED)
            dp_conn_close(c, res == -EPIPE || res == -ECONNRESET ? MP_CLOSE_PEER : MP_CLOSE_ERROR,
                          -res, true);
        release_output(c);
        maybe_free(c);
        return;
    }
    size_t left = (size_t)res;
    c->bytes_out += left;
    while (left && c->out_head) {
        dp_seg *s = c->out_head;
        size_t avail = s->len - s->off;
        if (left < avail) {
            s->off += left;
            left = 0;
            break;
        }
        left -= avail;
        c->out_head = s->next;
        if (!c->out_head)
            c->out_tail = NULL;
        c->out_bytes -= s->len;
        seg_release(c->w, s);
    }
    if (c->state == CONN_CLOSED) {
        maybe_free(c);
        return;
    }
    if (c->backpressured && c->out_bytes < DP_SEND_LWM) {
        c->backpressured = false;
        if (c->pumping) {
            mp_conn *p = c->pump_peer;
            if (p && p->paused && p->state != CONN_CLOSED) {
                p->paused = false;
                p->recv_held = false;
                dp_conn_arm_recv(p);
            }
        } else if (c->handler && c->handler->on_drain) {
            c->handler->on_drain(c->ctx, c);
        }
    }
    if (c->state == CONN_CLOSED) { /* on_drain may have closed it */
        maybe_free(c);
        return;
    }
    shutdown_write_when_flushed(c);
    if (!c->out_head && c->state == CONN_CLOSING) {
        dp_conn_close(c, c->close_reason, c->close_err, false);
    } else {
        kick_send(c);
        if (c->pumping)
            pump_check_done(c);
    }
    maybe_free(c);
}

void dp_conn_on_send(mp_conn *c, struct io_uring_cqe *cqe)
{
    dp_conn_hold(c);
    on_send(c, cqe);
    dp_conn_release(c);
}

/* ------------------------------------------------------------------ closing */

static void release_output(mp_conn *c)
{
    while (c->stash_head) {
        dp_seg *st = c->stash_head;
        c->stash_head = st->next;
        seg_release(c->w, st);
    }
    c->stash_tail = NULL;
    c->stash_bytes = 0;
    while (c->out_head) {
        dp_seg *s = c->out_head;
        c->out_head = s->next;
        seg_release(c->w, s);
    }
    c->out_tail = NULL;
    c->out_bytes = 0;
}

static void unlink_live(mp_conn *c)
{
    mp_worker *w = c->w;
    if (c->prev_live)
        c->prev_live->next_live = c->next_live;
    else
        w->live = c->next_live;
    if (c->next_live)
        c->next_live->prev_live = c->prev_live;
    w->n_live--;
    if (c->on_rearm_list)
        for (mp_conn **pp = &w->rearm_head; *pp; pp = &(*pp)->rearm_next)
            if (*pp == c) {
                *pp = c->rearm_next;
                break;
            }
}

void dp_conn_hold(mp_conn *c) { c->busy++; }

void dp_conn_release(mp_conn *c)
{
    c->busy--;
    maybe_free(c);
}

static void maybe_free(mp_conn *c)
{
    if (c->state != CONN_CLOSED || c->inflight > 0 || c->busy > 0)
        return;
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    if (!c->close_notified && c->handler && c->handler->on_close) {
        c->close_notified = true;
        c->handler->on_close(c->ctx, c, c->close_reason, c->close_err);
    }
    if (c->inst && c->counted_instance)
        atomic_fetch_sub_explicit(&c->inst->stats.conns_active, 1, memory_order_relaxed);
    if (c->ext_counter) {
        atomic_fetch_sub(&c->ext_counter->value, 1);
        mp_counter_unref(c->ext_counter);
    }
    if (c->gen)
        mp_generation_unref(c->gen);
    release_output(c);
    free(c->sniff_buf);
    unlink_live(c);
    atomic_fetch_add(&c->w->closed, 1);
    if (c->outbound)
        atomic_fetch_add(&c->w->out_closed, 1);
    free((conn_full *)c);
}

void dp_conn_close(mp_conn *c, mp_close_reason reason, int err, bool abort)
{
    if (c->state == CONN_CLOSED)
        return;
    if (!abort && c->out_head && c->state != CONN_CONNECTING) {
        /* Graceful: stop reading, write what is queued, then close. */
        if (c->state != CONN_CLOSING) {
            c->state = CONN_CLOSING;
            c->close_reason = reason;
            c->close_err = err;
            cancel_recv(c);
        }
        return;
    }
    if (c->state != CONN_CLOSING) {
        c->close_reason = reason;
        c->close_err = err;
    }
    c->state = CONN_CLOSED;
    drop_timers(c);
    /* Segments a send in flight may still read are released when it completes
     * (the shutdown below makes it fail promptly). */
    if (!c->send_inflight)
        release_output(c);
    if (abort) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    /* Shutting the socket down completes a pending receive (0 bytes) and fails a
     * pending send, so in-flight operations end quickly; close(2) follows in maybe_free. */
    shutdown(c->fd, SHUT_RDWR);
    cancel_recv(c);
    mp_conn *p = c->pump_peer;
    if (p) {
        c->pump_peer = NULL;
        p->pump_peer = NULL;
        if (p->state != CONN_CLOSED) {
            /* whatever the other side still has queued is delivered, then it closes;
             * its handler (on_close only, since the pump began) still reports that */
            p->pumping = false;
            dp_conn_close(p, reason, err, false);
        }
    }
    maybe_free(c);
}

/* ------------------------------------------------------------------ connecting */

static void connect_timed_out(void *arg)
{
    mp_conn *c = arg;
    c->connect_timer = NULL;
    if (c->state != CONN_CONNECTING)
        return;
    struct io_uring_sqe *sqe = dp_sqe(c->w);
    io_uring_prep_cancel64(sqe, UD(c, UD_CONNECT), 0);
    io_uring_sqe_set_data64(sqe, UD(c->w, UD_IGNORE));
    c->close_reason = MP_CLOSE_TIMEOUT;
}

static void on_connect(mp_conn *c, struct io_uring_cqe *cqe)
{
    c->inflight--;
    if (c->connect_timer) {
        dp_timer_cancel(c->connect_timer);
        c->connect_timer = NULL;
    }
    int res = cqe->res;
    if (c->state == CONN_CLOSED) {
        maybe_free(c);
        return;
    }
    if (res == 0) {
        c->state = CONN_OPEN;
        socklen_t len = sizeof(c->local);
        getsockname(c->fd, (struct sockaddr *)&c->local, &len);
        c->info.local_len = len;
        if (c->handler && c->handler->on_connect)
            c->handler->on_connect(c->ctx, c, 0, NULL);
        if (c->state != CONN_CLOSED) {
            dp_conn_arm_recv(c);
            kick_send(c);
        }
    } else {
        bool timed_out = res == -ECANCELED && c->close_reason == MP_CLOSE_TIMEOUT;
        int e = timed_out ? ETIMEDOUT : -res;
        char reason[128];
        snprintf(reason, sizeof(reason), "connect failed: %s", strerror(e));
        if (c->handler && c->handler->on_connect)
            c->handler->on_connect(c->ctx, c, -e, reason);
        if (c->state != CONN_CLOSED) { /* the plugin may have closed it in the callback */
            c->state = CONN_OPEN;      /* so the close below takes the normal path */
            dp_conn_close(c, timed_out ? MP_CLOSE_TIMEOUT : MP_CLOSE_ERROR, e, true);
        }
    }
    maybe_free(c);
}

void dp_conn_on_connect(mp_conn *c, struct io_uring_cqe *cqe)
{
    dp_conn_hold(c);
    on_connect(c, cqe);
    dp_conn_release(c);
}

static int api_conn_connect(mp_conn *from, const struct sockaddr *addr, uint32_t addr_len,
                            uint32_t timeout_ms, const mp_conn_handler *h, void *ctx,
                            mp_conn **out)
{
    mp_worker *w = from ? from->w : dp_current_worker();
    if (!w || !addr || addr_len > sizeof(struct sockaddr_storage))
        return -EINVAL;
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    mp_conn *c = dp_conn_new(w, fd);
    if (!c) {
        close(fd);
        return -ENOMEM;
    }
    c->state = CONN_CONNECTING;
    c->outbound = true;
    atomic_fetch_add(&w->out_opened, 1);
    memcpy(&c->peer, addr, addr_len);
    c->info.peer_len = addr_len;
    if (h) {
        c->handler_copy = *h;
        c->handler = &c->handler_copy;
    }
    c->ctx = ctx;
    if (from) {
        c->inst = NULL; /* upstream connections are not counted as the instance's */
        snprintf(c->listener_name, sizeof(c->listener_name), "%s", from->listener_name);
        /* It runs the same plugin code as `from` (its handler) and may outlive it (a
         * keepalive pool), so it keeps that generation loaded too, and is closed with
         * its other connections when that generation's drain time runs out. */
        if (from->gen) {
            mp_generation_ref(from->gen);
            c->gen = from->gen;
        }
    }
    struct io_uring_sqe *sqe = dp_sqe(w);
    io_uring_prep_connect(sqe, fd, (const struct sockaddr *)&c->peer, addr_len);
    io_uring_sqe_set_data64(sqe, UD(c, UD_CONNECT));
    c->inflight++;
    c->connect_timer = dp_timer_add(w, c, timeout_ms ? timeout_ms : DP_CONNECT_TIMEOUT_MS,
                                    connect_timed_out, c);
    *out = c;
    return 0;
}

/* ------------------------------------------------------------------ the pump */

static int api_conn_pump(mp_conn *a, mp_conn *b)
{
    if (!a || !b || a == b || a->w != b->w || a->pumping || b->pumping ||
        a->state == CONN_CLOSED || b->state == CONN_CLOSED)
        return -EINVAL;
    a->pumping = b->pumping = true;
    a->pump_peer = b;
    b->pump_peer = a;
    /* From here only on_close reaches the plugin. */
    a->handler_copy = (mp_conn_handler){.struct_size = sizeof(mp_conn_handler),
                                        .on_close = a->handler ? a->handler->on_close : NULL};
    b->handler_copy = (mp_conn_handler){.struct_size = sizeof(mp_conn_handler),
                                        .on_close = b->handler ? b->handler->on_close : NULL};
    a->handler = &a->handler_copy;
    b->handler = &b->handler_copy;
    a->paused = b->paused = false;
    a->recv_held = b->recv_held = false;
    dp_conn_arm_recv(a);
    dp_conn_arm_recv(b);
    return 0;
}

/* ------------------------------------------------------------------ the ABI table */

static void api_set_handler(mp_conn *c, const mp_conn_handler *h, void *ctx)
{
    if (h) {
        memset(&c->handler_copy, 0, sizeof(c->handler_copy));
        memcpy(&c->handler_copy, h,
               h->struct_size < sizeof(c->handler_copy) ? h->struct_size : sizeof(c->handler_copy));
        c->handler = &c->handler_copy;
    } else {
        c->handler = NULL;
    }
    c->ctx = ctx;
}

static int api_send(mp_conn *c, const void *data, size_t len)
{
    if (c->state == CONN_CLOSED || c->state == CONN_CLOSING || c->want_shut_write)
        return -EPIPE;
    if (len == 0)
        return c->out_bytes > DP_SEND_HWM ? 1 : 0;
    /* While no send is in flight the kernel holds no pointer into the queue, so a
     * response head and its body join the last segment and leave as one piece. */
    dp_seg *t = c->out_tail;
    if (!c->send_inflight && t && t->kind == SEG_OWNED && t->cap - t->len >= len) {
        memcpy(t->owned + t->len, data, len);
        t->len += len;
        return count_queued(c, len);
    }
    dp_seg *s = seg_owned(c->w, len);
    if (!s)
        return -ENOMEM;
    memcpy(s->owned, data, len);
    s->len = len;
    return dp_conn_queue(c, s);
}

static int api_send_zc(mp_conn *c, const void *data, size_t len, void (*done)(void *),
                       void *arg)
{
    dp_seg *s = malloc(sizeof(*s));
    if (!s)
        return -ENOMEM;
    memset(s, 0, sizeof(*s));
    s->kind = SEG_ZC;
    s->data = data;
    s->len = len;
    s->done = done;
    s->done_arg = arg;
    if (c->state == CONN_CLOSING || c->want_shut_write) {
        seg_release(c->w, s);
        return -EPIPE;
    }
    return dp_conn_queue(c, s);
}

static void api_close(mp_conn *c) { dp_conn_close(c, MP_CLOSE_LOCAL, 0, false); }
static void api_abort(mp_conn *c) { dp_conn_close(c, MP_CLOSE_LOCAL, 0, true); }

static int api_shutdown_write(mp_conn *c)
{
    if (c->state == CONN_CLOSED)
        return -EPIPE;
    c->want_shut_write = true;
    shutdown_write_when_flushed(c);
    return 0;
}

/* Only delivery stops: the kernel receive runs on and stash_input keeps what comes. */
static void api_pause(mp_conn *c) { c->paused = true; }

static void api_resume(mp_conn *c)
{
    if (!c->paused)
        return;
    c->paused = false;
    dp_conn_hold(c);
    /* What arrived while paused goes first; the plugin may pause again meanwhile. */
    while (c->stash_head && !c->paused && c->state != CONN_CLOSED) {
        dp_seg *st = c->stash_head;
        c->stash_head = st->next;
        if (!c->stash_head)
            c->stash_tail = NULL;
        c->stash_bytes -= st->len;
        if (c->handler && c->handler->on_data)
            c->handler->on_data(c->ctx, c, st->data, st->len);
        seg_release(c->w, st);
    }
    if (!c->paused && !c->stash_head && c->state != CONN_CLOSED) {
        c->recv_held = false;
        if (c->eof_pending) {
            c->eof_pending = false;
            if (c->handler && c->handler->on_eof)
                c->handler->on_eof(c->ctx, c);
            else
                dp_conn_close(c, MP_CLOSE_PEER, 0, false);
        } else {
            dp_conn_arm_recv(c);
        }
    }
    dp_conn_release(c);
}

static mp_timer *api_timer_add(mp_conn *c, uint64_t ms, void (*fn)(void *), void *arg)
{
    if (!c || c->state == CONN_CLOSED)
        return NULL;
    return dp_timer_add(c->w, c, ms, fn, arg);
}

/* A timer the connection no longer holds (it fired, or the connection closed and took
 * its timers with it) is already gone: cancelling it then is a no-op, not a use of
 * freed memory, so a plugin may cancel from its on_close. */
static void api_timer_cancel(mp_conn *c, mp_timer *t)
{
    for (mp_timer *p = c ? c->timers : NULL; p; p = p->next_in_conn)
        if (p == t) {
            dp_timer_cancel(t);
            return;
        }
}

static const mp_conn_info *api_conn_info(const mp_conn *c) { return &c->info; }

static void **api_worker_slot(mp_instance *inst)
{
    mp_worker *w = dp_current_worker();
    if (!w || w->index >= MP_MAX_WORKERS)
        return NULL;
    return &inst->worker_slots[w->index];
}

void dp_conn_fill_api(mp_host_api *api)
{
    api->conn_set_handler = api_set_handler;
    api->conn_send = api_send;
    api->conn_send_zc = api_send_zc;
    api->conn_close = api_close;
    api->conn_abort = api_abort;
    api->conn_shutdown_write = api_shutdown_write;
    api->conn_pause = api_pause;
    api->conn_resume = api_resume;
    api->timer_add = api_timer_add;
    api->timer_cancel = api_timer_cancel;
    api->conn_connect = api_conn_connect;
    api->conn_pump = api_conn_pump;
    api->conn_info = api_conn_info;
    api->worker_slot = api_worker_slot;
}
