/*
 * alb_health.c — the ALB's active health checker: one thread per instance runs every
 * member's check as a small nonblocking state machine (connect, send the request, read
 * the status line) in a single poll() loop, so a slow member never delays the others'
 * schedule. Verdicts go into the member's atomic `healthy` flag that pool picks read.
 * An eventfd in the poll set makes stopping immediate.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "alb_health.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

enum hc_phase { HC_IDLE, HC_CONNECT, HC_SEND, HC_READ };

typedef struct hc_check {
    alb_pool *pool;
    const alb_hc_config *hc;
    const char *name;
    int member;
    struct sockaddr_storage addr;
    socklen_t alen;
    char req[ALB_HC_PATH_MAX + 256];
    size_t req_len, sent;
    enum hc_phase phase;
    int fd;
    uint64_t due, deadline;
    char buf[128];
    size_t blen;
    uint32_t ok_run, fail_run;
} hc_check;

struct alb_health {
    const mp_host_api *api;
    mp_instance *inst;
    hc_check *c;
    int n;
    struct pollfd *pfd;
    int *pidx;
    int wake_fd;
    pthread_t thread;
    _Atomic int stop;
    _Atomic uint64_t done;
};

/* ------------------------------------------------------------ settings */

void alb_hc_config_default(alb_hc_config *hc)
{
    memset(hc, 0, sizeof(*hc));
    snprintf(hc->path, sizeof(hc->path), "/");
    hc->interval_ms = 2000;
    hc->timeout_ms = 1000;
    hc->healthy_threshold = 2;
    hc->unhealthy_threshold = 3;
    hc->nexpect = 1;
    hc->expect[0].lo = 200;
    hc->expect[0].hi = 299;
}

int alb_hc_parse_expect(const char *s, alb_hc_config *hc)
{
    int n = 0;
    const char *p = s;
    for (;;) {
        while (*p == ' ')
            p++;
        if (n == ALB_HC_EXPECT_MAX || p[0] < '1' || p[0] > '5')
            return -EINVAL;
        int lo, hi;
        if ((p[1] == 'x' || p[1] == 'X') && (p[2] == 'x' || p[2] == 'X')) {
            lo = (p[0] - '0') * 100;
            hi = lo + 99;
        } else if (p[1] >= '0' && p[1] <= '9' && p[2] >= '0' && p[2] <= '9') {
            lo = hi = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
        } else {
            return -EINVAL;
        }
        hc->expect[n].lo = (uint16_t)lo;
        hc->expect[n].hi = (uint16_t)hi;
        n++;
        p += 3;
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        if (*p++ != ',')
            return -EINVAL;
    }
    hc->nexpect = n;
    return 0;
}

int alb_hc_status_ok(const alb_hc_config *hc, int status)
{
    for (int i = 0; i < hc->nexpect; i++)
        if (status >= hc->expect[i].lo && status <= hc->expect[i].hi)
            return 1;
    return 0;
}

/* ------------------------------------------------------------ one check */

/* "HTTP/1.x DDD" at the start of the buffer: the status, 0 if not there yet, -1 if it
 * cannot be an HTTP/1 status line. */
static int status_of(const char *b, size_t n, int complete)
{
    static const char pfx[] = "HTTP/1.";
    size_t pl = sizeof(pfx) - 1;
    if (memcmp(b, pfx, n < pl ? n : pl) != 0)
        return -1;
    if (n < 13) /* "HTTP/1.1 200" plus the byte after it */
        return complete ? -1 : 0;
    if (b[7] < '0' || b[7] > '9' || b[8] != ' ')
        return -1;
    for (int i = 9; i < 12; i++)
        if (b[i] < '0' || b[i] > '9')
            return -1;
    if (b[12] != ' ' && b[12] != '\r' && b[12] != '\n')
        return -1;
    return (b[9] - '0') * 100 + (b[10] - '0') * 10 + (b[11] - '0');
}

static void hc_finish(alb_health *h, hc_check *c, int ok, const char *why, uint64_t now)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->phase = HC_IDLE;
    c->due = now + c->hc->interval_ms;
    atomic_fetch_add(&h->done, 1);
    alb_member *m = &c->pool->m[c->member];
    int healthy = atomic_load(&m->healthy);
    if (ok) {
        c->fail_run = 0;
        if (c->ok_run < UINT32_MAX)
            c->ok_run++;
        if (!healthy && c->ok_run >= c->hc->healthy_threshold) {
            atomic_store(&m->healthy, 1);
            h->api->log(h->inst, MP_LOG_INFO,
                        "alb: upstream %s server %s is healthy again (%u good checks)", c->name,
                        m->text, c->ok_run);
        }
    } else {
        c->ok_run = 0;
        if (c->fail_run < UINT32_MAX)
            c->fail_run++;
        if (healthy && c->fail_run >= c->hc->unhealthy_threshold) {
            atomic_store(&m->healthy, 0);
            h->api->log(h->inst, MP_LOG_WARN,
                        "alb: upstream %s server %s is unhealthy: %s (%u failed checks)",
                        c->name, m->text, why, c->fail_run);
        }
    }
}

static void hc_begin(alb_health *h, hc_check *c, uint64_t now)
{
    char why[96];
    c->sent = c->blen = 0;
    c->deadline = now + c->hc->timeout_ms;
    c->fd = socket(c->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        snprintf(why, sizeof(why), "socket: %s", strerror(errno));
        hc_finish(h, c, 0, why, now);
        return;
    }
    if (connect(c->fd, (const struct sockaddr *)&c->addr, c->alen) == 0) {
        c->phase = HC_SEND;
    } else if (errno == EINPROGRESS) {
        c->phase = HC_CONNECT;
    } else {
        snprintf(why, sizeof(why), "connect: %s", strerror(errno));
        hc_finish(h, c, 0, why, now);
    }
}

/* After send/recv returned n: 1 when the step ends here (would block, or failed and
 * the check was finished as a failure), 0 to go on with n bytes. */
static int io_stalled(alb_health *h, hc_check *c, ssize_t n, const char *op, uint64_t now)
{
    if (n >= 0)
        return 0;
    if (errno != EAGAIN && errno != EINTR) {
        char why[96];
        snprintf(why, sizeof(why), "%s: %s", op, strerror(errno));
        hc_finish(h, c, 0, why, now);
    }
    return 1;
}

/* Advances a check after poll() reported its socket ready. */
static void hc_step(alb_health *h, hc_check *c, uint64_t now)
{
    char why[96];
    if (c->phase == HC_CONNECT) {
        int e = 0;
        socklen_t el = sizeof(e);
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &el) < 0)
            e = errno;
        if (e) {
            snprintf(why, sizeof(why), "connect: %s", strerror(e));
            hc_finish(h, c, 0, why, now);
            return;
        }
        c->phase = HC_SEND;
    }
    if (c->phase == HC_SEND) {
        ssize_t w = send(c->fd, c->req + c->sent, c->req_len - c->sent, MSG_NOSIGNAL);
        if (io_stalled(h, c, w, "send", now))
            return;
        c->sent += (size_t)w;
        if (c->sent == c->req_len)
            c->phase = HC_READ;
        return;
    }
    if (c->phase != HC_READ)
        return;
    ssize_t r = recv(c->fd, c->buf + c->blen, sizeof(c->buf) - c->blen, 0);
    if (io_stalled(h, c, r, "recv", now))
        return;
    c->blen += (size_t)r;
    int st = status_of(c->buf, c->blen, r == 0 || c->blen == sizeof(c->buf));
    if (st == 0)
        return; /* the status line is still arriving */
    if (st < 0) {
        hc_finish(h, c, 0, r == 0 && !c->blen ? "closed without a response" : "not HTTP", now);
        return;
    }
    int ok = alb_hc_status_ok(c->hc, st);
    snprintf(why, sizeof(why), "status %d", st);
    hc_finish(h, c, ok, why, now);
}

/* ------------------------------------------------------------ the thread */

static void *hc_thread(void *arg)
{
    alb_health *h = arg;
    uint64_t now = alb_pool_now_ms();
    for (int i = 0; i < h->n; i++)
        h->c[i].due = now; /* first round at once */
    while (!atomic_load(&h->stop)) {
        now = alb_pool_now_ms();
        for (int i = 0; i < h->n; i++) {
            hc_check *c = &h->c[i];
            if (c->phase == HC_IDLE && now >= c->due)
                hc_begin(h, c, now);
            else if (c->phase != HC_IDLE && now >= c->deadline)
                hc_finish(h, c, 0, "timed out", now);
        }
        int np = 0;
        int64_t wait = 60000;
        h->pfd[np].fd = h->wake_fd;
        h->pfd[np].events = POLLIN;
        h->pfd[np++].revents = 0;
        for (int i = 0; i < h->n; i++) {
            hc_check *c = &h->c[i];
            uint64_t at = c->phase == HC_IDLE ? c->due : c->deadline;
            int64_t w = at > now ? (int64_t)(at - now) : 0;
            if (w < wait)
                wait = w;
            if (c->phase == HC_IDLE)
                continue;
            h->pfd[np].fd = c->fd;
            h->pfd[np].events = c->phase == HC_READ ? POLLIN : POLLOUT;
            h->pfd[np].revents = 0;
            h->pidx[np++] = i;
        }
        int rc = poll(h->pfd, (nfds_t)np, (int)wait);
        if (rc < 0 && errno != EINTR)
            break;
        if (rc <= 0)
            continue;
        if (h->pfd[0].revents)
            break; /* stop */
        now = alb_pool_now_ms();
        for (int j = 1; j < np; j++)
            if (h->pfd[j].revents)
                hc_step(h, &h->c[h->pidx[j]], now);
    }
    return NULL;
}

static void hc_free(alb_health *h)
{
    for (int i = 0; i < h->n; i++)
        if (h->c[i].fd >= 0)
            close(h->c[i].fd);
    if (h->wake_fd >= 0)
        close(h->wake_fd);
    free(h->c);
    free(h->pfd);
    free(h->pidx);
    free(h);
}

/* The address a member is checked on (its own, or the configured port instead). */
static void hc_setup(hc_check *c, const alb_health_target *t, int member)
{
    const alb_member *m = &t->pool->m[member];
    memset(c, 0, sizeof(*c));
    c->pool = t->pool;
    c->hc = t->hc;
    c->name = t->name;
    c->member = member;
    c->fd = -1;
    c->addr = m->addr;
    c->alen = m->addr_len;
    char ip[INET6_ADDRSTRLEN] = "";
    uint16_t port;
    if (c->addr.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&c->addr;
        if (t->hc->port)
            a->sin6_port = htons(t->hc->port);
        port = ntohs(a->sin6_port);
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&c->addr;
        if (t->hc->port)
            a->sin_port = htons(t->hc->port);
        port = ntohs(a->sin_port);
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
    }
    int l = snprintf(c->req, sizeof(c->req),
                     "GET %s HTTP/1.1\r\nHost: %s%s%s:%u\r\nConnection: close\r\n"
                     "User-Agent: marchproxy-health\r\n\r\n",
                     t->hc->path, c->addr.ss_family == AF_INET6 ? "[" : "", ip,
                     c->addr.ss_family == AF_INET6 ? "]" : "", (unsigned)port);
    c->req_len = l < 0 ? 0 : (size_t)l >= sizeof(c->req) ? sizeof(c->req) - 1 : (size_t)l;
}

int alb_health_start(const mp_host_api *api, mp_instance *inst,
                     const alb_health_target *targets, int ntargets, alb_health **out,
                     char *err, size_t err_len)
{
    *out = NULL;
    int n = 0;
    for (int t = 0; t < ntargets; t++)
        n += targets[t].pool->n;
    if (!n)
        return 0;
    alb_health *h = calloc(1, sizeof(*h));
    if (!h)
        goto nomem;
    h->api = api;
    h->inst = inst;
    h->wake_fd = -1;
    h->c = calloc((size_t)n, sizeof(hc_check));
    h->pfd = calloc((size_t)n + 1, sizeof(struct pollfd));
    h->pidx = calloc((size_t)n + 1, sizeof(int));
    if (!h->c || !h->pfd || !h->pidx) {
        hc_free(h);
        goto nomem;
    }
    for (int t = 0; t < ntargets; t++)
        for (int i = 0; i < targets[t].pool->n; i++)
            hc_setup(&h->c[h->n++], &targets[t], i);
    h->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (h->wake_fd < 0) {
        int e = errno;
        hc_free(h);
        snprintf(err, err_len, "alb: health checker eventfd: %s", strerror(e));
        return -e;
    }
    /* The thread takes no signals: the host's threads handle those. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&h->thread, NULL, hc_thread, h);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        hc_free(h);
        snprintf(err, err_len, "alb: health checker thread: %s", strerror(rc));
        return -rc;
    }
    *out = h;
    return 0;
nomem:
    snprintf(err, err_len, "alb: out of memory");
    return -ENOMEM;
}

void alb_health_stop(alb_health *h)
{
    if (!h)
        return;
    atomic_store(&h->stop, 1);
    uint64_t one = 1;
    ssize_t w = write(h->wake_fd, &one, sizeof(one));
    (void)w; /* a full counter still wakes poll */
    pthread_join(h->thread, NULL);
    hc_free(h);
}

uint64_t alb_health_checks_done(const alb_health *h)
{
    return h ? atomic_load(&h->done) : 0;
}
