/*
 * tcp_load.c — the client of the L4 forwarding benchmark (tests/bench/nlb/run.sh).
 *
 *   tcp_load conn   -p PORT [-H ADDR] [-c CONC] [-d SECS] [-w WARMUP] [-s SIZE]
 *                   [-n NSRC] [-T TIMEOUT_MS] [-E MAX_ERR_PER_MILLION]
 *   tcp_load stream -p PORT [-H ADDR] [-d SECS] [-b WRITE_BYTES]
 *
 * conn: CONC connections in flight at all times from one epoll thread, each doing
 *   connect -> send SIZE bytes -> read SIZE bytes back (checked against what was sent)
 *   -> close. Completions in the WARMUP seconds are not counted; then for SECS seconds
 *   completions are counted and their latency (connect() call to last echo byte) goes
 *   into a histogram. Connections still open at the end are dropped uncounted.
 *   Sources rotate over 127.0.0.2 .. 127.0.0.(NSRC+1): at tens of thousands of
 *   connections a second a single source address runs out of ports that are not in
 *   TIME_WAIT, which would measure the kernel's port allocator, not the proxy.
 * stream: one blocking connection writing WRITE_BYTES at a time for SECS seconds, then
 *   shutdown(SHUT_WR) and wait for tcp_backend's 8-byte count of bytes it received.
 *   Throughput = that count / (first write .. count received): only bytes that crossed
 *   the path count, none left in socket buffers.
 *
 * Prints one "RESULT key=value ..." line on stdout (run.sh parses it) and any errors by
 * kind on stderr. Exit 0 ok, 1 errors above the threshold, 2 usage or setup failure.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MAX_CONC 4096
#define MAX_SIZE 16384
#define MAX_SRC 200

/* Latency histogram in microseconds: 1 us steps below 10 ms, 100 us steps to 1 s, then
 * one overflow bucket (its values are still seen by max). */
#define H_FINE_LIMIT 10000
#define H_COARSE_STEP 100
#define H_COARSE_LIMIT 1000000
#define H_BUCKETS (H_FINE_LIMIT + (H_COARSE_LIMIT - H_FINE_LIMIT) / H_COARSE_STEP + 1)

static uint64_t g_hist[H_BUCKETS];
static uint64_t g_hist_n, g_hist_max;

static void hist_add(uint64_t us)
{
    size_t b;
    if (us < H_FINE_LIMIT)
        b = us;
    else if (us < H_COARSE_LIMIT)
        b = H_FINE_LIMIT + (us - H_FINE_LIMIT) / H_COARSE_STEP;
    else
        b = H_BUCKETS - 1;
    g_hist[b]++;
    g_hist_n++;
    if (us > g_hist_max)
        g_hist_max = us;
}

/* The value of a bucket: its lower edge for 1 us buckets, the middle for coarse ones. */
static uint64_t hist_pct(double p)
{
    if (g_hist_n == 0)
        return 0;
    uint64_t want = (uint64_t)(p * (double)g_hist_n + 0.999999);
    if (want < 1)
        want = 1;
    uint64_t acc = 0;
    for (size_t b = 0; b < H_BUCKETS; b++) {
        acc += g_hist[b];
        if (acc >= want) {
            if (b < H_FINE_LIMIT)
                return b;
            if (b == H_BUCKETS - 1)
                return g_hist_max;
            return H_FINE_LIMIT + (b - H_FINE_LIMIT) * H_COARSE_STEP + H_COARSE_STEP / 2;
        }
    }
    return g_hist_max;
}

/* This process's CPU use (user + system) as a percentage of one core over the wall time
 * since t0: shows when the client itself, not the path, was the limit. */
static double cpu_pct(uint64_t t0, uint64_t t1)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) < 0 || t1 <= t0)
        return 0;
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    return 100.0 * cpu / ((double)(t1 - t0) / 1e9);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Error kinds, counted separately so a report says what went wrong, not just that. */
enum err {
    E_SOCKET,    /* socket()/bind() failed */
    E_CONNECT,   /* connect() refused, or failed later (SO_ERROR) */
    E_ADDR,      /* EADDRNOTAVAIL: no free local port */
    E_SEND,      /* send failed or was short */
    E_RESET,     /* recv error (reset) while waiting for the echo */
    E_EOF,       /* the other side closed before the whole echo came back */
    E_MISMATCH,  /* the echo differs from what was sent */
    E_TIMEOUT,   /* no completion within the per-connection timeout */
    E_KINDS
};
static const char *const err_names[E_KINDS] = {
    "socket", "connect", "addr_not_avail", "send", "reset", "eof_early", "mismatch", "timeout",
};
static uint64_t g_err[E_KINDS];

static void usage(void)
{
    fprintf(stderr,
            "usage: tcp_load conn -p PORT [-H ADDR] [-c CONC] [-d SECS] [-w WARMUP] [-s SIZE]\n"
            "                     [-n NSRC] [-T TIMEOUT_MS] [-E MAX_ERR_PER_MILLION]\n"
            "       tcp_load stream -p PORT [-H ADDR] [-d SECS] [-b WRITE_BYTES]\n");
    exit(2);
}

/* ------------------------------------------------------------------ conn mode */

enum state { S_IDLE, S_CONNECTING, S_READING };

struct slot {
    int fd;
    enum state st;
    uint64_t t0;       /* when connect() was called */
    uint64_t retry_at; /* S_IDLE: do not start before this */
    uint64_t seq;
    size_t got;
    unsigned src;
    uint8_t want[MAX_SIZE];
    uint8_t buf[MAX_SIZE];
};

struct conn_opts {
    struct sockaddr_in dst;
    int conc, size, nsrc, timeout_ms, max_err_ppm;
    double secs, warmup;
};

static struct slot *g_slots;
static int g_ep;
static uint64_t g_seq;

static void fill_payload(uint8_t *p, size_t n, uint64_t seq)
{
    uint64_t x = seq * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (uint8_t)x;
    }
}

static void slot_close(struct slot *s, uint64_t now, uint64_t backoff_ns)
{
    if (s->fd >= 0)
        close(s->fd); /* also leaves the epoll set */
    s->fd = -1;
    s->st = S_IDLE;
    s->retry_at = now + backoff_ns;
}

static void slot_fail(struct slot *s, enum err e, uint64_t now)
{
    g_err[e]++;
    /* A short pause after a failure keeps a broken target from turning this into a
     * busy loop of failing connects. */
    slot_close(s, now, 1000000);
}

static void slot_start(struct slot *s, const struct conn_opts *o, uint64_t now)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        slot_fail(s, E_SOCKET, now);
        return;
    }
    s->fd = fd;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    /* Port chosen at connect() with the whole 4-tuple known, not at bind(). */
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    struct sockaddr_in src = { .sin_family = AF_INET };
    src.sin_addr.s_addr = htonl(0x7f000002u + s->src);
    s->src = (s->src + 1) % (unsigned)o->nsrc;
    if (bind(fd, (struct sockaddr *)&src, sizeof(src)) < 0) {
        slot_fail(s, errno == EADDRNOTAVAIL ? E_ADDR : E_SOCKET, now);
        return;
    }
    s->seq = g_seq++;
    fill_payload(s->want, (size_t)o->size, s->seq);
    s->got = 0;
    s->t0 = now;
    if (connect(fd, (struct sockaddr *)&o->dst, sizeof(o->dst)) < 0 && errno != EINPROGRESS) {
        slot_fail(s, errno == EADDRNOTAVAIL ? E_ADDR : E_CONNECT, now);
        return;
    }
    s->st = S_CONNECTING;
    struct epoll_event e = { .events = EPOLLOUT, .data.ptr = s };
    if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &e) < 0)
        slot_fail(s, E_SOCKET, now);
}

/* Returns 1 when the connection completed (echo checked), 0 otherwise. */
static int slot_event(struct slot *s, const struct conn_opts *o, uint32_t ev, uint64_t now,
                      uint64_t *lat_ns)
{
    if (s->st == S_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0) {
            slot_fail(s, err == EADDRNOTAVAIL ? E_ADDR : E_CONNECT, now);
            return 0;
        }
        /* A fresh socket's send buffer takes SIZE (<= 16 KiB) bytes at once. */
        ssize_t n = send(s->fd, s->want, (size_t)o->size, MSG_NOSIGNAL);
        if (n != o->size) {
            slot_fail(s, E_SEND, now);
            return 0;
        }
        s->st = S_READING;
        struct epoll_event e = { .events = EPOLLIN | EPOLLRDHUP, .data.ptr = s };
        if (epoll_ctl(g_ep, EPOLL_CTL_MOD, s->fd, &e) < 0)
            slot_fail(s, E_SOCKET, now);
        return 0;
    }
    if (s->st != S_READING)
        return 0;
    (void)ev;
    ssize_t n = recv(s->fd, s->buf + s->got, (size_t)o->size - s->got, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        slot_fail(s, E_RESET, now);
        return 0;
    }
    if (n == 0) {
        slot_fail(s, E_EOF, now);
        return 0;
    }
    s->got += (size_t)n;
    if (s->got < (size_t)o->size)
        return 0;
    if (memcmp(s->buf, s->want, (size_t)o->size) != 0) {
        slot_fail(s, E_MISMATCH, now);
        return 0;
    }
    *lat_ns = now - s->t0;
    slot_close(s, now, 0);
    return 1;
}

static int run_conn(const struct conn_opts *o)
{
    g_slots = calloc((size_t)o->conc, sizeof(*g_slots));
    if (!g_slots) {
        perror("calloc");
        return 2;
    }
    g_ep = epoll_create1(EPOLL_CLOEXEC);
    if (g_ep < 0) {
        perror("epoll_create1");
        return 2;
    }
    uint64_t start = now_ns();
    uint64_t win_from = start + (uint64_t)(o->warmup * 1e9);
    uint64_t win_to = win_from + (uint64_t)(o->secs * 1e9);
    uint64_t timeout_ns = (uint64_t)o->timeout_ms * 1000000u;
    uint64_t completed = 0, completed_all = 0, last_scan = start;
    for (int i = 0; i < o->conc; i++) {
        g_slots[i].fd = -1;
        g_slots[i].st = S_IDLE;
        /* Different first sources so the slots spread over the addresses at once. */
        g_slots[i].src = (unsigned)i % (unsigned)o->nsrc;
    }
    struct epoll_event evs[256];
    uint64_t now = start;
    /* Bounded by the clock: the loop ends at win_to whatever the target does. */
    while (now < win_to) {
        for (int i = 0; i < o->conc; i++)
            if (g_slots[i].st == S_IDLE && g_slots[i].retry_at <= now)
                slot_start(&g_slots[i], o, now);
        int n = epoll_wait(g_ep, evs, 256, 5);
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            return 2;
        }
        now = now_ns();
        for (int i = 0; i < n; i++) {
            uint64_t lat = 0;
            if (!slot_event(evs[i].data.ptr, o, evs[i].events, now, &lat))
                continue;
            completed_all++;
            if (now >= win_from && now < win_to) {
                completed++;
                hist_add(lat / 1000);
            }
        }
        if (now - last_scan > 100000000u) {
            last_scan = now;
            for (int i = 0; i < o->conc; i++)
                if (g_slots[i].st != S_IDLE && now - g_slots[i].t0 > timeout_ns)
                    slot_fail(&g_slots[i], E_TIMEOUT, now);
        }
    }
    int in_flight = 0;
    for (int i = 0; i < o->conc; i++) {
        if (g_slots[i].st != S_IDLE)
            in_flight++;
        if (g_slots[i].fd >= 0)
            close(g_slots[i].fd);
    }
    uint64_t errors = 0;
    for (int k = 0; k < E_KINDS; k++)
        errors += g_err[k];
    double rate = (double)completed / o->secs;
    printf("RESULT mode=conn conc=%d size=%d secs=%.1f completed=%llu conn_per_s=%.0f "
           "p50_us=%llu p90_us=%llu p99_us=%llu p999_us=%llu max_us=%llu errors=%llu "
           "in_flight_dropped=%d client_cpu_pct=%.0f\n",
           o->conc, o->size, o->secs, (unsigned long long)completed, rate,
           (unsigned long long)hist_pct(0.50), (unsigned long long)hist_pct(0.90),
           (unsigned long long)hist_pct(0.99), (unsigned long long)hist_pct(0.999),
           (unsigned long long)g_hist_max, (unsigned long long)errors, in_flight,
           cpu_pct(start, now_ns()));
    if (errors) {
        fprintf(stderr, "tcp_load: %llu errors in %llu connections (warmup included):",
                (unsigned long long)errors, (unsigned long long)(completed_all + errors));
        for (int k = 0; k < E_KINDS; k++)
            if (g_err[k])
                fprintf(stderr, " %s=%llu", err_names[k], (unsigned long long)g_err[k]);
        fprintf(stderr, "\n");
    }
    uint64_t allowed = (completed_all * (uint64_t)o->max_err_ppm) / 1000000u;
    if (completed == 0 || errors > allowed) {
        fprintf(stderr, "tcp_load: FAIL: %llu errors, %llu allowed (%d per million); "
                "%llu completed in the window\n", (unsigned long long)errors,
                (unsigned long long)allowed, o->max_err_ppm, (unsigned long long)completed);
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ stream mode */

static int run_stream(struct sockaddr_in *dst, double secs, size_t wsize)
{
    uint8_t *buf = malloc(wsize);
    if (!buf) {
        perror("malloc");
        return 2;
    }
    fill_payload(buf, wsize, 42);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)dst, sizeof(*dst)) < 0) {
        fprintf(stderr, "tcp_load: stream: connect: %s\n", strerror(errno));
        printf("RESULT mode=stream errors=1\n");
        return 1;
    }
    /* A stalled path must not hang the benchmark: writes and the final read time out. */
    struct timeval tv = { .tv_sec = 10 };
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    uint64_t t0 = now_ns(), until = t0 + (uint64_t)(secs * 1e9), now = t0;
    uint64_t sent = 0;
    const char *err = NULL;
    while (now < until) {
        ssize_t n = send(fd, buf, wsize, MSG_NOSIGNAL);
        if (n <= 0) {
            err = n < 0 ? strerror(errno) : "send returned 0";
            break;
        }
        sent += (uint64_t)n;
        now = now_ns();
    }
    uint64_t t_sent = now_ns();
    uint64_t count = 0;
    if (!err && shutdown(fd, SHUT_WR) < 0)
        err = strerror(errno);
    if (!err) {
        uint8_t c[8];
        size_t got = 0;
        for (int tries = 0; got < 8 && tries < 8; tries++) {
            ssize_t n = recv(fd, c + got, 8 - got, 0);
            if (n <= 0) {
                err = n < 0 ? strerror(errno) : "closed before the byte count came back";
                break;
            }
            got += (size_t)n;
        }
        if (got == 8)
            for (int k = 0; k < 8; k++)
                count = count << 8 | c[k];
        else if (!err)
            err = "short byte count";
    }
    uint64_t t_end = now_ns();
    close(fd);
    free(buf);
    double dur = (double)(t_end - t0) / 1e9;
    double gbps = dur > 0 ? (double)count * 8 / dur / 1e9 : 0;
    double send_gbps = (double)sent * 8 / ((double)(t_sent - t0) / 1e9) / 1e9;
    if (!err && count != sent)
        err = "the backend counted a different number of bytes than were sent";
    printf("RESULT mode=stream secs=%.2f write_bytes=%zu sent=%llu received=%llu gbit_s=%.3f "
           "send_gbit_s=%.3f drain_ms=%.1f errors=%d client_cpu_pct=%.0f\n",
           dur, wsize, (unsigned long long)sent, (unsigned long long)count, gbps, send_gbps,
           (double)(t_end - t_sent) / 1e6, err ? 1 : 0, cpu_pct(t0, t_end));
    if (err) {
        fprintf(stderr, "tcp_load: stream: %s (sent %llu, backend counted %llu)\n", err,
                (unsigned long long)sent, (unsigned long long)count);
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    const char *mode = argv[1];
    const char *host = "127.0.0.1";
    struct conn_opts o = { .conc = 64, .size = 64, .nsrc = 16, .timeout_ms = 5000,
                           .max_err_ppm = 100, .secs = 10, .warmup = 1 };
    long port = 0, wsize = 256 * 1024;
    for (int i = 2; i < argc; i++) {
        if (i + 1 >= argc || argv[i][0] != '-' || strlen(argv[i]) != 2)
            usage();
        const char *v = argv[++i];
        switch (argv[i - 1][1]) {
        case 'H': host = v; break;
        case 'p': port = atol(v); break;
        case 'c': o.conc = atoi(v); break;
        case 'd': o.secs = atof(v); break;
        case 'w': o.warmup = atof(v); break;
        case 's': o.size = atoi(v); break;
        case 'n': o.nsrc = atoi(v); break;
        case 'T': o.timeout_ms = atoi(v); break;
        case 'E': o.max_err_ppm = atoi(v); break;
        case 'b': wsize = atol(v); break;
        default: usage();
        }
    }
    if (port <= 0 || port > 65535 || o.conc < 1 || o.conc > MAX_CONC || o.size < 1 ||
        o.size > MAX_SIZE || o.nsrc < 1 || o.nsrc > MAX_SRC || o.secs <= 0 || o.warmup < 0 ||
        o.timeout_ms < 1 || o.max_err_ppm < 0 || wsize < 1 || wsize > (64L << 20))
        usage();
    o.dst.sin_family = AF_INET;
    o.dst.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &o.dst.sin_addr) != 1)
        usage();
    signal(SIGPIPE, SIG_IGN);
    if (strcmp(mode, "conn") == 0)
        return run_conn(&o);
    if (strcmp(mode, "stream") == 0)
        return run_stream(&o.dst, o.secs, (size_t)wsize);
    usage();
    return 2;
}
