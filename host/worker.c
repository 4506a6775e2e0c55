/*
 * worker.c — the worker threads. Each owns an io_uring, a ring of provided receive
 * buffers, its own SO_REUSEPORT listening sockets with multishot accept, and every
 * connection it accepted or opened. The loop waits for completions and hands each to
 * its owner; messages from the control thread arrive through an eventfd read kept on
 * the ring.
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "dp.h"
#include "log.h"

static __thread mp_worker *current;

mp_worker *dp_current_worker(void) { return current; }

/* An SQE, submitting first when the submission queue is full. */
struct io_uring_sqe *dp_sqe(mp_worker *w)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
    if (!sqe) {
        io_uring_submit(&w->ring);
        sqe = io_uring_get_sqe(&w->ring);
    }
    if (!sqe) { /* cannot happen after a submit with an empty queue */
        mp_err("worker %d: io_uring submission queue exhausted", w->index);
        abort();
    }
    return sqe;
}

void dp_worker_recycle_buffer(mp_worker *w, uint16_t bid)
{
    io_uring_buf_ring_add(w->br, w->bufs + (size_t)bid * DP_BUF_SIZE, DP_BUF_SIZE, bid,
                          io_uring_buf_ring_mask(DP_BUF_COUNT), 0);
    io_uring_buf_ring_advance(w->br, 1);
    /* Connections whose multishot receive ended for want of buffers start again; one
     * per recycled buffer is enough to keep them all moving. */
    mp_conn *c = w->rearm_head;
    if (c) {
        w->rearm_head = c->rearm_next;
        c->rearm_next = NULL;
        c->on_rearm_list = false;
        dp_conn_arm_recv(c);
    }
}

static int setup_buffers(mp_worker *w, char *err, size_t err_len)
{
    size_t ring_bytes = DP_BUF_COUNT * sizeof(struct io_uring_buf);
    void *mem = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (mem == MAP_FAILED) {
        snprintf(err, err_len, "worker %d: cannot map the buffer ring: %s", w->index,
                 strerror(errno));
        return -ENOMEM;
    }
    w->bufs = malloc((size_t)DP_BUF_COUNT * DP_BUF_SIZE);
    if (!w->bufs) {
        munmap(mem, ring_bytes);
        snprintf(err, err_len, "worker %d: out of memory for receive buffers", w->index);
        return -ENOMEM;
    }
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (unsigned long)mem;
    reg.ring_entries = DP_BUF_COUNT;
    reg.bgid = (uint16_t)w->bgid;
    int rc = io_uring_register_buf_ring(&w->ring, &reg, 0);
    if (rc < 0) {
        snprintf(err, err_len,
                 "io_uring provided buffer rings are not available (kernel 5.19+ needed): %s",
                 strerror(-rc));
        munmap(mem, ring_bytes);
        free(w->bufs);
        w->bufs = NULL;
        return rc;
    }
    w->br = mem;
    io_uring_buf_ring_init(w->br);
    for (int i = 0; i < DP_BUF_COUNT; i++)
        io_uring_buf_ring_add(w->br, w->bufs + (size_t)i * DP_BUF_SIZE, DP_BUF_SIZE,
                              (uint16_t)i, io_uring_buf_ring_mask(DP_BUF_COUNT), i);
    io_uring_buf_ring_advance(w->br, DP_BUF_COUNT);
    return 0;
}

static void arm_event(mp_worker *w)
{
    struct io_uring_sqe *sqe = dp_sqe(w);
    io_uring_prep_read(sqe, w->efd, &w->efd_val, sizeof(w->efd_val), 0);
    io_uring_sqe_set_data64(sqe, UD(w, UD_EVENT));
}

static void arm_accept(mp_worker *w, dp_listen *l)
{
    struct io_uring_sqe *sqe = dp_sqe(w);
    io_uring_prep_multishot_accept(sqe, l->fd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, UD(l, UD_ACCEPT));
    l->armed = true;
}

int dp_worker_post(mp_worker *w, int kind, void *ptr)
{
    dp_msg *m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    m->kind = kind;
    m->ptr = ptr;
    pthread_mutex_lock(&w->q_lock);
    if (w->q_tail)
        w->q_tail->next = m;
    else
        w->q_head = m;
    w->q_tail = m;
    pthread_mutex_unlock(&w->q_lock);
    uint64_t one = 1;
    ssize_t n = write(w->efd, &one, sizeof(one));
    (void)n;
    return 0;
}

static void stop_accepting(mp_worker *w)
{
    if (!w->accepting)
        return;
    w->accepting = false;
    for (int i = 0; i < w->n_listens; i++)
        if (w->listens[i].fd >= 0) {
            /* Closing drops the kernel's queue for this worker's socket only; the other
             * workers' sockets on the same port keep theirs until they close too. */
            struct io_uring_sqe *sqe = dp_sqe(w);
            io_uring_prep_cancel64(sqe, UD(&w->listens[i], UD_ACCEPT), 0);
            io_uring_sqe_set_data64(sqe, UD(w, UD_IGNORE));
            close(w->listens[i].fd);
            w->listens[i].fd = -1;
        }
}

static void close_generation(mp_worker *w, mp_generation *g)
{
    for (mp_conn *c = w->live, *next; c; c = next) {
        next = c->next_live;
        if (c->gen == g && c->state != CONN_CLOSED) {
            atomic_fetch_add(&w->drained_forced, 1);
            if (c->inst)
                atomic_fetch_add(&c->inst->stats.drained_forced, 1);
            dp_conn_close(c, MP_CLOSE_SHUTDOWN, 0, false);
        }
    }
    mp_generation_unref(g); /* the message's reference */
}

static void handle_messages(mp_worker *w)
{
    pthread_mutex_lock(&w->q_lock);
    dp_msg *m = w->q_head;
    w->q_head = w->q_tail = NULL;
    pthread_mutex_unlock(&w->q_lock);
    while (m) {
        dp_msg *next = m->next;
        switch (m->kind) {
        case MSG_SNAPSHOT: {
            dp_snapshot *old = w->snap;
            w->snap = m->ptr; /* the control thread took a reference for us */
            if (old)
                dp_snapshot_unref(old);
            break;
        }
        case MSG_STOP_ACCEPT:
            stop_accepting(w);
            break;
        case MSG_DRAIN_GEN:
            close_generation(w, m->ptr);
            break;
        case MSG_ADOPT:
            dp_dispatch_adopt(w, m->ptr);
            break;
        case MSG_QUIT:
            stop_accepting(w);
            w->quitting = true;
            for (mp_conn *c = w->live, *nc; c; c = nc) {
                nc = c->next_live;
                if (c->state != CONN_CLOSED)
                    dp_conn_close(c, MP_CLOSE_SHUTDOWN, 0, false);
            }
            break;
        }
        free(m);
        m = next;
    }
}

static void on_accept(mp_worker *w, dp_listen *l, struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE))
        l->armed = false;
    if (cqe->res >= 0) {
        if (!w->accepting) {
            close(cqe->res);
        } else {
            atomic_fetch_add(&w->accepted, 1);
            dp_dispatch_accept(w, l->index, cqe->res);
        }
    } else if (cqe->res != -ECANCELED && cqe->res != -EBADF && w->accepting) {
        static _Atomic uint64_t last_warn;
        uint64_t now = (uint64_t)time(NULL);
        if (atomic_exchange(&last_warn, now) != now) /* at most one line a second */
            mp_warn("worker %d: accept failed: %s", w->index, strerror(-cqe->res));
    }
    if (!l->armed && w->accepting && l->fd >= 0)
        arm_accept(w, l);
}

static void handle_cqe(mp_worker *w, struct io_uring_cqe *cqe)
{
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    void *ptr = (void *)(uintptr_t)(ud & ~(uint64_t)7);
    switch (ud & 7) {
    case UD_ACCEPT:
        on_accept(w, ptr, cqe);
        break;
    case UD_RECV:
        dp_conn_on_recv(ptr, cqe);
        break;
    case UD_SEND:
        dp_conn_on_send(ptr, cqe);
        break;
    case UD_CONNECT:
        dp_conn_on_connect(ptr, cqe);
        break;
    case UD_EVENT:
        handle_messages(w);
        if (!w->quitting || w->live)
            arm_event(w);
        break;
    default: /* cancellations and removals whose outcome needs no action */
        break;
    }
}

/* io_uring_enable_rings is declared by liburing 2.3 but missing from its exported
 * symbols, so the register call is made directly. */
static int enable_ring(struct io_uring *ring)
{
    long rc = syscall(__NR_io_uring_register, ring->ring_fd, IORING_REGISTER_ENABLE_RINGS,
                      NULL, 0);
    return rc < 0 ? -errno : 0;
}

/* valgrind runs one thread at a time and, in the version Debian 12 ships (3.19), keeps
 * its lock while a thread waits in io_uring_enter: an idle worker would stop every
 * other thread. Run by valgrind, a worker waits at most VALGRIND_WAIT_NS at a time and
 * yields after each wait. valgrind's preload library in LD_PRELOAD tells. */
#define VALGRIND_WAIT_NS 10000000ll
static bool under_valgrind(void)
{
    const char *p = getenv("LD_PRELOAD");
    return p && strstr(p, "vgpreload");
}

static void *worker_main(void *arg)
{
    mp_worker *w = arg;
    current = w;
    if (w->ring_disabled) {
        /* SINGLE_ISSUER binds the ring to the thread that enables it: this one. */
        int rc = enable_ring(&w->ring);
        if (rc < 0) {
            mp_err("worker %d: cannot enable its io_uring: %s", w->index, strerror(-rc));
            abort();
        }
    }
    /* Each wait then skips looking the ring's fd up; a kernel without it just lacks
     * the shortcut. */
    w->ring_fd_registered = io_uring_register_ring_fd(&w->ring) == 1;
    dp_timers_clock(w);
    arm_event(w);
    for (int i = 0; i < w->n_listens; i++)
        arm_accept(w, &w->listens[i]);
    for (;;) {
        if (w->quitting && !w->live)
            break;
        dp_conn_flush_sends(w);
        struct __kernel_timespec wait;
        struct io_uring_cqe *cqe;
        bool timed = dp_timers_next(w, &wait);
        if (w->short_waits && (!timed || wait.tv_sec > 0 || wait.tv_nsec > VALGRIND_WAIT_NS)) {
            wait.tv_sec = 0;
            wait.tv_nsec = VALGRIND_WAIT_NS;
            timed = true;
        }
        int rc = timed ? io_uring_submit_and_wait_timeout(&w->ring, &cqe, 1, &wait, NULL)
                       : io_uring_submit_and_wait(&w->ring, 1);
        if (w->short_waits)
            sched_yield();
        if (rc < 0 && rc != -EINTR && rc != -ETIME && rc != -EBUSY) {
            mp_err("worker %d: io_uring_submit_and_wait: %s", w->index, strerror(-rc));
            break;
        }
        dp_timers_clock(w);
        unsigned head, n = 0;
        io_uring_for_each_cqe(&w->ring, head, cqe)
        {
            handle_cqe(w, cqe);
            n++;
        }
        io_uring_cq_advance(&w->ring, n);
        dp_timers_run(w);
    }
    dp_timers_free(w);
    dp_conn_free_seg_cache(w);
    if (w->ring_fd_registered)
        io_uring_unregister_ring_fd(&w->ring); /* registered by and for this thread */
    current = NULL;
    return NULL;
}

static int worker_init(mp_host *h, mp_worker *w, int index, char *err, size_t err_len)
{
    memset(w, 0, sizeof(*w));
    w->index = index;
    w->host = h;
    w->bgid = 1;
    w->accepting = true;
    w->short_waits = under_valgrind();
    pthread_mutex_init(&w->q_lock, NULL);
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    /* The ring is made here, on the main thread, so that a refusal is reported before
     * anything starts. It starts disabled and the worker thread enables it, which makes
     * that thread its single issuer (worker_main). DEFER_TASKRUN then runs completion
     * work only when the worker asks for events, in one batch, instead of interrupting
     * it (6.1+); older kernels get COOP_TASKRUN (5.19+), then no flags. */
    static const unsigned flag_sets[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED,
        IORING_SETUP_COOP_TASKRUN,
        0,
    };
    int rc = -EINVAL;
    for (size_t i = 0; i < sizeof(flag_sets) / sizeof(flag_sets[0]) && rc == -EINVAL; i++) {
        memset(&p, 0, sizeof(p));
        p.flags = flag_sets[i];
        rc = io_uring_queue_init_params(DP_RING_ENTRIES, &w->ring, &p);
        if (rc == 0)
            w->ring_disabled = (p.flags & IORING_SETUP_R_DISABLED) != 0;
    }
    if (rc < 0) {
        snprintf(err, err_len,
                 "io_uring is not available (%s): this kernel or its seccomp policy refuses "
                 "io_uring_setup, and marchproxy has no other I/O backend",
                 strerror(-rc));
        return rc;
    }
    if ((rc = setup_buffers(w, err, err_len)) < 0) {
        io_uring_queue_exit(&w->ring);
        return rc;
    }
    w->efd = eventfd(0, EFD_CLOEXEC);
    if (w->efd < 0) {
        snprintf(err, err_len, "eventfd: %s", strerror(errno));
        return -errno;
    }
    const mp_host_config *cfg = h->cfg;
    for (size_t i = 0; i < cfg->n_listeners && i < DP_MAX_LISTENERS; i++) {
        int fd = dp_listen_socket(&cfg->listeners[i], err, err_len);
        if (fd < 0)
            return fd;
        w->listens[w->n_listens].fd = fd;
        w->listens[w->n_listens].index = (int)i;
        w->n_listens++;
    }
    return 0;
}

static void worker_free(mp_worker *w)
{
    for (int i = 0; i < w->n_listens; i++)
        if (w->listens[i].fd >= 0)
            close(w->listens[i].fd);
    if (w->snap)
        dp_snapshot_unref(w->snap);
    if (w->br) {
        io_uring_unregister_buf_ring(&w->ring, w->bgid);
        munmap(w->br, DP_BUF_COUNT * sizeof(struct io_uring_buf));
    }
    if (w->ring.ring_fd > 0)
        io_uring_queue_exit(&w->ring);
    free(w->bufs);
    if (w->efd > 0)
        close(w->efd);
    while (w->q_head) {
        dp_msg *m = w->q_head;
        w->q_head = m->next;
        if (m->kind == MSG_SNAPSHOT)
            dp_snapshot_unref(m->ptr);
        else if (m->kind == MSG_DRAIN_GEN)
            mp_generation_unref(m->ptr);
        else if (m->kind == MSG_ADOPT) {
            dp_adopt *a = m->ptr;
            close(a->fd);
            free(a->data);
            free(a);
        }
        free(m);
    }
    pthread_mutex_destroy(&w->q_lock);
}

int dp_workers_start(mp_host *h, char *err, size_t err_len)
{
    if (h->cfg->n_listeners == 0) {
        /* Nothing can arrive; plugins only open connections from connections. */
        mp_info("no listeners configured: the data plane stays idle");
        return 0;
    }
    int n = mp_config_worker_count(h->cfg);
    h->workers = calloc((size_t)n, sizeof(mp_worker));
    if (!h->workers)
        return -ENOMEM;
    h->n_workers = (int)n;
    for (int i = 0; i < h->n_workers; i++) {
        int rc = worker_init(h, &h->workers[i], i, err, err_len);
        if (rc < 0) {
            for (int j = 0; j <= i; j++)
                worker_free(&h->workers[j]);
            free(h->workers);
            h->workers = NULL;
            h->n_workers = 0;
            return rc;
        }
    }
    dp_publish(h); /* every worker starts with a snapshot */
    for (int i = 0; i < h->n_workers; i++) {
        mp_worker *w = &h->workers[i];
        /* The snapshot message is already queued; the loop reads it first. */
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            snprintf(err, err_len, "cannot start worker thread %d", i);
            return -EAGAIN;
        }
    }
    mp_info("%d worker(s) with io_uring, %zu listener(s)", h->n_workers, h->cfg->n_listeners);
    return 0;
}

/* Connections clients still hold. Outbound ones (to upstreams) do not count: an idle
 * one a plugin keeps for reuse would otherwise hold every shutdown to its full drain
 * time; whatever is left of them is closed with the rest. */
static size_t live_connections(mp_host *h)
{
    size_t n = 0;
    for (int i = 0; i < h->n_workers; i++) {
        mp_worker *w = &h->workers[i];
        n += (atomic_load(&w->opened) - atomic_load(&w->closed)) -
             (atomic_load(&w->out_opened) - atomic_load(&w->out_closed));
    }
    return n;
}

void dp_workers_stop(mp_host *h, int drain_ms)
{
    if (!h->workers)
        return;
    for (int i = 0; i < h->n_workers; i++)
        dp_worker_post(&h->workers[i], MSG_STOP_ACCEPT, NULL);
    /* Let connections finish by themselves, up to the drain timeout. */
    for (int waited = 0; waited < drain_ms && live_connections(h) > 0; waited += 20)
        usleep(20 * 1000);
    size_t left = live_connections(h);
    if (left)
        mp_warn("closing %zu connection(s) still open after %d ms", left, drain_ms);
    for (int i = 0; i < h->n_workers; i++)
        dp_worker_post(&h->workers[i], MSG_QUIT, NULL);
    for (int i = 0; i < h->n_workers; i++)
        pthread_join(h->workers[i].thread, NULL);
    for (int i = 0; i < h->n_workers; i++)
        worker_free(&h->workers[i]);
    free(h->workers);
    h->workers = NULL;
    h->n_workers = 0;
}
