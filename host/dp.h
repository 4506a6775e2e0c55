/*
 * dp.h — the data plane's internal contracts: workers (one thread, one io_uring each),
 * connections, listeners and the routing snapshot the workers read.
 *
 * Threading: everything in a worker (its ring, connections, timers, buffer ring) is
 * touched only by that worker's thread. The control thread talks to workers through
 * each worker's message queue (mutex + eventfd) and publishes immutable routing
 * snapshots; a worker switches to a new snapshot between events and acknowledges, and
 * the control thread frees the old one when every worker has moved on (quiescent-state
 * reclamation, no locks on the data path).
 */
#ifndef MP_HOST_DP_H
#define MP_HOST_DP_H

#include <liburing.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "host.h"
#include "marchproxy/types.pb-c.h"
#include "rate_limit.h"
#include "sniff.h"

#define DP_RING_ENTRIES 4096
#define DP_BUF_SIZE (64 * 1024)       /* one provided receive buffer */
#define DP_BUF_COUNT 256               /* per worker: 16 MiB of receive buffers */
#define DP_SEND_HWM (256 * 1024)       /* conn_send reports backpressure above this */
#define DP_SEND_LWM (64 * 1024)        /* on_drain / pump resume below this */
#define DP_SEND_HARD_MAX (16u << 20)   /* beyond this a connection is closed (overflow) */
#define DP_SNIFF_BUF 16384
#define DP_CONNECT_TIMEOUT_MS 5000
#define DP_MAX_LISTENERS 256
/* Owned send segments up to this size come from a per-worker cache instead of malloc,
 * and what one round sends on a connection is packed into them (conn.c). */
#define DP_SMALL_SEG_BYTES 4096
#define DP_SMALL_SEG_CACHE 256         /* per worker: at most 1 MiB kept */
#define DP_STASH_SOFT_MAX (64 * 1024)  /* input held for a paused connection before its
                                        * kernel receive is stopped */
#define DP_TIMER_CACHE 1024            /* per worker: freed timers kept for reuse */

typedef struct mp_worker mp_worker;
typedef struct dp_snapshot dp_snapshot;

/* ------------------------------------------------------------ the routing snapshot */

typedef struct dp_target {
    char id[130];
    bool external;
    struct sockaddr_storage addr; /* external modules: where connections go */
    socklen_t addr_len;
    struct mp_instance *inst;     /* in-process; kept alive by the generation refs */
    mp_generation *gens[2];       /* live generations with weight > 0 (refs held) */
    int32_t weights[2];
    int n_gens;
    bool available;               /* healthy, has a generation or is in rotation */
    char unavailable_why[160];    /* when not: "alb is unhealthy", "x missed heartbeats" */
    int32_t max_connections;      /* 0 = unlimited */
    int32_t workers_allowed;      /* Scale: workers 0..n-1 serve it (0 = all) */
    mp_module_type type;
    _Atomic int64_t *active;      /* live connections (instance stats or the module's
                                   * counter), for least-conn */
    mp_counter *counter;          /* external: the counter behind `active` (ref held) */
    int32_t weight;               /* for the weighted strategy (>= 1) */
    mp_rate_limiter **limiters;   /* refs held */
    size_t n_limiters;
} dp_target;

typedef struct dp_route {
    const Marchproxy__Route *route; /* owned by the snapshot (a clone) */
    int target;                     /* index into targets; -1 when the owner is gone */
    char *missing_owner;            /* then: the id it names (owned) */
    int origin_rank;                /* nlb routes before instance routes on ties */
    uint64_t seq;
} dp_route;

typedef struct dp_listener_view {
    char name[64];
    char **modules;      /* allowed instance ids (NULL = any) */
    size_t n_modules;
    int default_target;  /* index or -1 */
    int bound_protocol;  /* 0 = sniff */
    uint32_t sniff_timeout_ms;
} dp_listener_view;

struct dp_snapshot {
    _Atomic int refs;            /* one per worker using it + the control thread's */
    uint64_t version;
    dp_route *routes;            /* sorted: priority desc, origin, insertion */
    size_t n_routes;
    dp_target *targets;
    size_t n_targets;
    dp_listener_view *listeners;
    size_t n_listeners;
    int strategy;                /* 0 round-robin, 1 least-conn, 2 weighted */
};

/* A routing decision (the same code answers RouteRequest on the control thread). */
typedef struct dp_decision {
    bool matched;       /* some route matched (even if no target could take it) */
    int target;         /* index into snapshot targets, -1 = none */
    int route;          /* index into routes, -1 = default module */
    char why[1024];     /* why nothing was chosen: every skipped candidate's reason */
} dp_decision;

/* Build a snapshot from the control plane's state (control thread). */
dp_snapshot *dp_snapshot_build(mp_host *h);
/* NLBService.RouteRequest: dp_select on the newest snapshot (rebuilt first if the
 * control plane changed since), with the answer in the control plane's terms. 0,
 * -ENOENT (nothing matched), -EHOSTUNREACH (matched, no target could take it). */
struct mp_route_decision;
int dp_route_request(mp_host *h, const Marchproxy__Route *request, bool count_use,
                     struct mp_route_decision *out, char *why, size_t why_len);

/* Build and hand a new snapshot to every worker (control thread). */
void dp_publish(mp_host *h);
/* Republish within 50 ms of a change; run drain deadlines. */
void dp_start_publisher(mp_host *h);
void dp_stop_publisher(mp_host *h);
/* Whether a listener may hand connections to instance `id`. */
bool dp_listener_allows(const dp_listener_view *l, const char *id);
/* The i-th rate limiter of a target. */
mp_rate_limiter *dp_limiter_get(const dp_target *t, size_t i);
void dp_snapshot_unref(dp_snapshot *s);
/* Choose a target for a request (any thread; pure over the snapshot). `listener` may
 * be NULL (RouteRequest). The plugin's can_handle is consulted (thread-safe by ABI).
 * Available candidates that tie at the best priority are balanced by the snapshot's
 * strategy; `rr` is the caller's round-robin counter. */
void dp_select(const dp_snapshot *s, const dp_listener_view *listener,
               const Marchproxy__Route *request, const struct sockaddr *peer, uint64_t *rr,
               dp_decision *out);

/* A retired generation that still had connections: at `deadline_ms` (monotonic)
 * the workers close what is left of it. */
typedef struct dp_drain {
    mp_generation *g;
    uint64_t deadline_ms;
    struct dp_drain *next;
} dp_drain;

/* ------------------------------------------------------------ connections */

typedef enum dp_seg_kind { SEG_OWNED, SEG_PROVIDED, SEG_ZC } dp_seg_kind;

typedef struct dp_seg {
    struct dp_seg *next;
    dp_seg_kind kind;
    const uint8_t *data;
    size_t len, off;
    size_t cap;                   /* SEG_OWNED: room in `owned` (len <= cap) */
    uint16_t bid;                 /* SEG_PROVIDED: buffer to recycle */
    void (*done)(void *arg);      /* SEG_ZC */
    void *done_arg;
    uint8_t owned[];              /* SEG_OWNED payload */
} dp_seg;

typedef enum dp_conn_state {
    CONN_SNIFFING,    /* NLB reading the first bytes */
    CONN_CONNECTING,  /* outbound connect in flight */
    CONN_OPEN,
    CONN_CLOSING,     /* flushing output, then close */
    CONN_CLOSED,      /* fd shut; waiting for in-flight ops */
} dp_conn_state;

struct mp_conn {
    mp_worker *w;
    int fd;
    dp_conn_state state;
    const mp_conn_handler *handler;
    mp_conn_handler handler_copy;
    void *ctx;
    mp_conn_info info;
    struct sockaddr_storage peer, local;
    char listener_name[64], route_id[130], sni[256], alpn[64];

    int inflight;          /* SQEs whose CQE has not arrived */
    int busy;              /* callbacks of this connection on the stack: no free */
    bool recv_armed, recv_wanted, paused, peer_eof, write_shut, want_shut_write;
    bool recv_held;        /* the kernel receive is stopped on purpose (backpressure):
                            * `paused` alone only stops delivery (conn.c stash_input) */
    bool send_inflight, closing_abort, backpressured, close_notified;
    dp_seg *stash_head, *stash_tail; /* input that arrived after a pause */
    size_t stash_bytes;
    bool eof_pending;      /* EOF arrived behind stashed input: report it after that */
    bool adopted;          /* handed over by another worker: serve it here */
    bool outbound;         /* opened by conn_connect, not accepted */
    mp_counter *ext_counter; /* forwarded to an external module: its gauge (ref held) */
    mp_conn *rearm_next;   /* in the worker's list of connections waiting for buffers */
    bool on_rearm_list;
    mp_conn *flush_next;   /* in the worker's list of connections with output to send */
    bool on_flush_list;
    dp_seg *out_head, *out_tail;
    size_t out_bytes;

    mp_close_reason close_reason;
    int close_err;

    /* NLB */
    uint8_t *sniff_buf;    /* malloc'd while sniffing */
    size_t sniff_len;
    mp_timer *sniff_timer;
    const dp_listener_view *listener;
    int listener_index;

    /* ownership of traffic */
    mp_generation *gen;    /* ref held while the connection lives */
    struct mp_instance *inst;
    mp_conn *pump_peer;    /* byte pump partner */
    bool pumping;
    bool counted_instance; /* inst->stats.conns_active was incremented */
    uint64_t bytes_in, bytes_out;
    uint64_t opened_ns;

    uint32_t connect_timeout_ms;
    mp_timer *connect_timer;
    mp_timer *timers;      /* pending timers owned by the connection */
    mp_conn *next_live, *prev_live;
};

struct mp_timer {
    mp_worker *w;
    mp_conn *conn;
    void (*fn)(void *arg);
    void *arg;
    uint64_t deadline_ns; /* CLOCK_MONOTONIC */
    uint64_t seq;         /* order of adding: the tie-break, and a round's limit */
    size_t heap_index;    /* place in the worker's heap (worker_timers.c) */
    bool fired;           /* its callback is running */
    mp_timer *next_in_conn;
};

/* A connection handed to another worker because its instance is scaled to fewer
 * workers (Scale): the socket and everything read from it so far. */
typedef struct dp_adopt {
    int fd;
    int listener_index;
    struct sockaddr_storage peer, local;
    socklen_t peer_len, local_len;
    int protocol;
    bool sniffed;          /* si is valid */
    mp_sniff_info si;
    uint8_t *data;         /* the sniffed bytes (owned) */
    size_t len;
} dp_adopt;

/* ------------------------------------------------------------ workers */

typedef struct dp_msg {
    enum { MSG_SNAPSHOT, MSG_STOP_ACCEPT, MSG_DRAIN_GEN, MSG_QUIT, MSG_ADOPT } kind;
    void *ptr;
    struct dp_msg *next;
} dp_msg;

/* Aligned so its address can carry a 3-bit user_data tag like every other owner. */
typedef struct dp_listen {
    _Alignas(8) int fd;
    int index;            /* into the config's listeners */
    bool armed;
} dp_listen;

struct mp_worker {
    int index;
    mp_host *host;
    pthread_t thread;
    struct io_uring ring;
    bool ring_disabled;    /* made R_DISABLED: the worker thread enables it */
    bool ring_fd_registered; /* io_uring_register_ring_fd, by the worker thread */
    bool short_waits;      /* run by valgrind: short waits, then a yield (worker.c) */
    struct io_uring_buf_ring *br;
    uint8_t *bufs;
    int bgid;
    int efd;
    uint64_t efd_val;
    dp_listen listens[DP_MAX_LISTENERS];
    int n_listens;
    pthread_mutex_t q_lock;
    dp_msg *q_head, *q_tail;
    dp_snapshot *snap;
    mp_conn *live;
    size_t n_live;
    bool accepting, quitting;
    uint64_t rr;           /* round-robin / weighted pick counter */
    mp_conn *rearm_head;   /* connections waiting for receive buffers (via rearm_next) */
    mp_conn *flush_head;   /* connections whose queued output goes out before the next
                            * wait (via flush_next), so one callback's pieces leave in
                            * one send */
    mp_timer **theap;      /* pending timers, a min-heap by deadline (worker_timers.c) */
    size_t theap_n, theap_cap;
    uint64_t timer_seq;
    uint64_t now_ns;       /* CLOCK_MONOTONIC read when the last wait returned: the base
                            * of new timers' deadlines, so adding one reads no clock */
    mp_timer *timer_cache; /* freed timers for reuse (via next_in_conn) */
    size_t timer_cache_n;
    struct dp_seg *seg_cache; /* free small owned segments (via next) */
    size_t seg_cache_n;
    _Atomic uint64_t accepted, refused, opened, closed, drained_forced;
    _Atomic uint64_t out_opened, out_closed; /* the outbound share of opened/closed */
};

/* worker.c */
int dp_workers_start(mp_host *h, char *err, size_t err_len);
void dp_workers_stop(mp_host *h, int drain_ms);
int dp_worker_post(mp_worker *w, int kind, void *ptr);
mp_worker *dp_current_worker(void);
void dp_worker_recycle_buffer(mp_worker *w, uint16_t bid);
struct io_uring_sqe *dp_sqe(mp_worker *w);

/* user_data tags (low 3 bits of an 8-aligned pointer) */
_Static_assert(sizeof(struct dp_listen) % 8 == 0, "dp_listen must keep 8-byte alignment");
enum { UD_ACCEPT = 0, UD_RECV = 1, UD_SEND = 2, UD_CONNECT = 3, UD_TIMER = 4, UD_EVENT = 5,
       UD_IGNORE = 6, UD_TIMER_RM = 7 };
#define UD(ptr, tag) ((uint64_t)(uintptr_t)(ptr) | (tag))

/* conn.c */
mp_conn *dp_conn_new(mp_worker *w, int fd);
void dp_conn_arm_recv(mp_conn *c);
/* One receive (no multishot): while sniffing, so nothing is in flight when the
 * connection is routed and may move to another worker. */
void dp_conn_arm_recv_once(mp_conn *c);
/* Forget the socket without shutting it down (it lives on in another worker). */
void dp_conn_detach(mp_conn *c);
void dp_conn_on_recv(mp_conn *c, struct io_uring_cqe *cqe);
/* Starts the sends queued since the last round (worker loop, before it waits). */
void dp_conn_flush_sends(mp_worker *w);
void dp_conn_on_send(mp_conn *c, struct io_uring_cqe *cqe);
void dp_conn_on_connect(mp_conn *c, struct io_uring_cqe *cqe);
void dp_conn_close(mp_conn *c, mp_close_reason reason, int err, bool abort);
/* Bracket code that may close `c` and still touches it afterwards. */
void dp_conn_hold(mp_conn *c);
void dp_conn_release(mp_conn *c);
void dp_conn_fill_api(mp_host_api *api);
int dp_conn_queue(mp_conn *c, dp_seg *seg);
/* Frees the worker's cache of small send segments (the worker is ending). */
void dp_conn_free_seg_cache(mp_worker *w);
/* worker_timers.c */
mp_timer *dp_timer_add(mp_worker *w, mp_conn *c, uint64_t ms, void (*fn)(void *), void *arg);
void dp_timer_cancel(mp_timer *t);
/* How long until the earliest timer is due; false when none is pending. */
bool dp_timers_next(mp_worker *w, struct __kernel_timespec *wait);
/* Reads the clock new deadlines count from (the worker loop, after each wait). */
void dp_timers_clock(mp_worker *w);
/* Runs the callbacks of the timers that are due. */
void dp_timers_run(mp_worker *w);
/* Frees what is still pending (the worker is ending). */
void dp_timers_free(mp_worker *w);

/* dispatch.c */
void dp_dispatch_accept(mp_worker *w, int listen_index, int fd);
void dp_dispatch_adopt(mp_worker *w, dp_adopt *a);
/* Sniffer data (called from conn.c while CONN_SNIFFING). */
void dp_dispatch_sniff_data(mp_conn *c, const uint8_t *data, size_t len);

/* listener.c */
int dp_listen_socket(const mp_listener_cfg *l, char *err, size_t err_len);

#endif
