/*
 * tcp_backend.c — the far end of the L4 forwarding benchmark (tests/bench/nlb/run.sh).
 *
 *   tcp_backend echo|sink -p PORT [-a ADDR] [-t THREADS]     (-p 0: any free port)
 *
 * echo: every byte read is written back on the same connection; EOF closes it.
 * sink: bytes are read and thrown away; at EOF (the client's shutdown(SHUT_WR)) the
 *       total for that connection is sent back as 8 bytes, big-endian, then it closes.
 *       tcp_load's stream mode waits for that count, so throughput is measured on bytes
 *       that really crossed the proxy, not on bytes parked in socket buffers.
 *
 * One thread per CPU by default, each with its own listening socket (SO_REUSEPORT, so
 * the kernel spreads connections) and its own epoll loop: the backend must never be
 * what limits the figures. Nothing is pinned. Prints "ready MODE ADDR PORT ..." on
 * stdout once listening; runs until SIGTERM/SIGINT.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_THREADS 64
#define MAX_EVENTS 256
#define ECHO_BUF (64 * 1024)
#define SINK_BUF (1024 * 1024)
/* Accepts per wakeup: enough to drain a burst, small enough that reads still get a turn. */
#define ACCEPT_BATCH 64
/* Reads per readiness event in sink mode before going back to epoll (fairness between
 * connections; one bulk stream would otherwise never yield). */
#define SINK_READS_PER_EVENT 64

enum mode { MODE_ECHO, MODE_SINK };

/* Per-connection state. In echo mode, `pend`/`plen`/`poff` hold bytes the socket would
 * not take yet; while any are pending the connection stops reading (backpressure rather
 * than unbounded buffering). */
struct conn {
    int fd;
    uint64_t bytes;
    size_t plen, poff;
    char *pend;
};

struct worker {
    pthread_t tid;
    int lfd, ep;
};

static enum mode g_mode;
static struct sockaddr_in g_addr;
static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void die(const char *what)
{
    fprintf(stderr, "tcp_backend: %s: %s\n", what, strerror(errno));
    exit(2);
}

static int make_listener(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
        die("setsockopt(SO_REUSEPORT)");
    if (bind(fd, (struct sockaddr *)&g_addr, sizeof(g_addr)) < 0)
        die("bind");
    if (listen(fd, 4096) < 0)
        die("listen");
    /* With -p 0 the first socket gets a port from the kernel and the others join it:
     * no window in which a port picked elsewhere could be taken by someone else. */
    if (g_addr.sin_port == 0) {
        socklen_t len = sizeof(g_addr);
        if (getsockname(fd, (struct sockaddr *)&g_addr, &len) < 0)
            die("getsockname");
    }
    return fd;
}

static void conn_close(struct worker *w, struct conn *c)
{
    epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pend);
    free(c);
}

static int set_events(struct worker *w, struct conn *c, uint32_t ev)
{
    struct epoll_event e = { .events = ev, .data.ptr = c };
    return epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &e);
}

static void accept_some(struct worker *w)
{
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        int fd = accept4(w->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ECONNABORTED)
                fprintf(stderr, "tcp_backend: accept: %s\n", strerror(errno));
            return;
        }
        int one = 1;
        /* The short-connection workload is request/response: no Nagle delay on the echo. */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct conn *c = calloc(1, sizeof(*c));
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        struct epoll_event e = { .events = EPOLLIN | EPOLLRDHUP, .data.ptr = c };
        if (epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &e) < 0) {
            close(fd);
            free(c);
        }
    }
}

/* Sends what is pending. Returns 1 when all is out, 0 when the socket is full, -1 on error. */
static int flush_pending(struct conn *c)
{
    while (c->poff < c->plen) {
        ssize_t n = send(c->fd, c->pend + c->poff, c->plen - c->poff, MSG_NOSIGNAL);
        if (n < 0)
            return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
        c->poff += (size_t)n;
    }
    c->plen = c->poff = 0;
    return 1;
}

static void echo_event(struct worker *w, struct conn *c, uint32_t ev, char *buf)
{
    if (ev & EPOLLOUT) {
        int r = flush_pending(c);
        if (r < 0) {
            conn_close(w, c);
            return;
        }
        if (r == 0)
            return;
        if (set_events(w, c, EPOLLIN | EPOLLRDHUP) < 0) {
            conn_close(w, c);
            return;
        }
    }
    if (!(ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
        return;
    ssize_t n = recv(c->fd, buf, ECHO_BUF, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
        conn_close(w, c);
        return;
    }
    if (n < 0)
        return;
    ssize_t sent = send(c->fd, buf, (size_t)n, MSG_NOSIGNAL);
    if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        conn_close(w, c);
        return;
    }
    if (sent < 0)
        sent = 0;
    if (sent < n) {
        /* Keep the rest and wait for room; no more reads until it is out. */
        if (!c->pend && !(c->pend = malloc(ECHO_BUF))) {
            conn_close(w, c);
            return;
        }
        memcpy(c->pend, buf + sent, (size_t)(n - sent));
        c->plen = (size_t)(n - sent);
        c->poff = 0;
        if (set_events(w, c, EPOLLOUT) < 0)
            conn_close(w, c);
    }
}

static void sink_event(struct worker *w, struct conn *c, char *buf)
{
    for (int i = 0; i < SINK_READS_PER_EVENT; i++) {
        ssize_t n = recv(c->fd, buf, SINK_BUF, 0);
        if (n > 0) {
            c->bytes += (uint64_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n == 0) {
            /* 8 bytes into an idle socket's empty send buffer always fit at once. */
            uint8_t out[8];
            for (int k = 0; k < 8; k++)
                out[k] = (uint8_t)(c->bytes >> (56 - 8 * k));
            if (send(c->fd, out, sizeof(out), MSG_NOSIGNAL) != (ssize_t)sizeof(out))
                fprintf(stderr, "tcp_backend: could not send the byte count: %s\n",
                        strerror(errno));
        }
        conn_close(w, c);
        return;
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    char *buf = malloc(g_mode == MODE_SINK ? SINK_BUF : ECHO_BUF);
    if (!buf)
        die("malloc");
    struct epoll_event evs[MAX_EVENTS];
    while (!g_stop) {
        /* A timeout so a stop request is seen even when idle. */
        int n = epoll_wait(w->ep, evs, MAX_EVENTS, 200);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                accept_some(w);
                continue;
            }
            struct conn *c = evs[i].data.ptr;
            if (g_mode == MODE_ECHO)
                echo_event(w, c, evs[i].events, buf);
            else
                sink_event(w, c, buf);
        }
    }
    free(buf);
    return NULL;
}

static void usage(void)
{
    fprintf(stderr, "usage: tcp_backend echo|sink -p PORT [-a ADDR] [-t THREADS]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    if (strcmp(argv[1], "echo") == 0)
        g_mode = MODE_ECHO;
    else if (strcmp(argv[1], "sink") == 0)
        g_mode = MODE_SINK;
    else
        usage();
    const char *addr = "127.0.0.1";
    int port = 0;
    long threads = sysconf(_SC_NPROCESSORS_ONLN);
    for (int i = 2; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        if (strcmp(argv[i], "-p") == 0)
            port = atoi(argv[++i]);
        else if (strcmp(argv[i], "-a") == 0)
            addr = argv[++i];
        else if (strcmp(argv[i], "-t") == 0)
            threads = atol(argv[++i]);
        else
            usage();
    }
    if (port < 0 || port > 65535)
        usage();
    if (threads < 1)
        threads = 1;
    if (threads > MAX_THREADS)
        threads = MAX_THREADS;
    g_addr.sin_family = AF_INET;
    g_addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, addr, &g_addr.sin_addr) != 1)
        usage();

    struct sigaction sa = { .sa_handler = on_signal };
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    static struct worker ws[MAX_THREADS];
    for (long i = 0; i < threads; i++) {
        ws[i].lfd = make_listener();
        ws[i].ep = epoll_create1(EPOLL_CLOEXEC);
        if (ws[i].ep < 0)
            die("epoll_create1");
        /* data.ptr NULL marks the listener. */
        struct epoll_event e = { .events = EPOLLIN, .data.ptr = NULL };
        if (epoll_ctl(ws[i].ep, EPOLL_CTL_ADD, ws[i].lfd, &e) < 0)
            die("epoll_ctl(listener)");
    }
    for (long i = 0; i < threads; i++)
        if (pthread_create(&ws[i].tid, NULL, worker_main, &ws[i]) != 0)
            die("pthread_create");
    printf("ready %s %s %d threads=%ld\n", argv[1], addr, ntohs(g_addr.sin_port), threads);
    fflush(stdout);
    for (long i = 0; i < threads; i++)
        pthread_join(ws[i].tid, NULL);
    return 0;
}
