/*
 * rpc_server.c — the byte-level gRPC server on the C core.
 *
 * One completion queue, driven only by the control thread (mp_rpc_server_run): the C
 * core does no I/O for us unless a thread sits in grpc_completion_queue_next. Methods
 * known before start are registered with the core so their payload arrives with the
 * call; anything else (plugins loaded by a later Reload, unknown paths) comes through
 * one generic grpc_server_request_call that must always be outstanding, or unknown
 * methods would never be answered UNIMPLEMENTED.
 *
 * Calls may be answered from any thread. The send side of a call is serialised by the
 * call's mutex and only one send batch is in flight at a time (the core allows no
 * more); the receive side (RECV_CLOSE_ON_SERVER, the generic path's RECV_MESSAGE) is
 * started only by the control thread. A call is freed when its reference count drops
 * to zero: one reference for the outstanding RECV_CLOSE batch, one for the handler
 * until it finishes, one per send batch in flight.
 */
#include "rpc_server.h"

#include <errno.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "rpc_tls.h"

#define RPC_POLL_MS 50       /* upper bound on how late posted work and timers run */
#define RPC_DRAIN_LIMIT_MS 10000

enum tag_kind {
    TAG_NEW_REGISTERED = 1,
    TAG_NEW_GENERIC,
    TAG_RECV_MESSAGE,
    TAG_RECV_CLOSE,
    TAG_SEND,
    TAG_SHUTDOWN,
};

struct rs_tag {
    enum tag_kind kind;
    void *obj;
};

struct rs_method;

/* A message waiting for its turn to be sent. */
struct rs_msg {
    grpc_byte_buffer *bb;
    struct rs_msg *next;
};

struct mp_rpc_call {
    mp_rpc_server *srv;
    grpc_call *call;
    struct rs_method *method;
    grpc_metadata_array request_md;
    gpr_timespec deadline;
    grpc_byte_buffer *payload;

    pthread_mutex_t lock; /* guards everything below and the send-side batches */
    int refs;
    bool finished;         /* mp_rpc_finish called */
    bool status_started;   /* the batch carrying the status was started */
    bool initial_md_sent;
    bool send_in_flight;
    bool unary_sent;
    struct rs_msg *queue_head, *queue_tail;
    grpc_byte_buffer *in_flight_bb;
    grpc_status_code final_code;
    grpc_slice final_details;
    void (*on_cancel)(void *);
    void *on_cancel_arg;
    void (*release)(void *);
    void *release_arg;

    _Atomic int cancelled;
    int recv_close_cancelled; /* written by the core */

    struct rs_tag t_recv_close, t_send, t_recv_msg;
    grpc_op send_ops[3];
    struct mp_rpc_call *next_live, *prev_live; /* control-thread list of live calls */
};

/* A method path and where its calls go. Entries are never freed while the server
 * lives, because the core keeps the registered path pointer. */
struct rs_method {
    char *path;
    bool streaming;
    void *registered;   /* core handle, NULL when served via the generic path */
    mp_rpc_method_fn fn; /* NULL = dropped: UNAVAILABLE */
    void *ctx;
    const void *owner;
    /* The pending registered-call slot. */
    struct rs_tag t_new;
    grpc_call *pending_call;
    gpr_timespec pending_deadline;
    grpc_metadata_array pending_md;
    grpc_byte_buffer *pending_payload;
    struct rs_method *next;
};

struct mp_rpc_timer {
    uint64_t due_ms;
    void (*fn)(void *);
    void *arg;
    struct mp_rpc_timer *next;
};

struct rs_post {
    void (*fn)(void *);
    void *arg;
    struct rs_post *next;
};

struct mp_rpc_server {
    grpc_server *server;
    grpc_completion_queue *cq;
    grpc_server_credentials *creds;
    mp_rpc_tls *tls;
    char *address;
    bool started;

    pthread_mutex_t methods_lock; /* methods may be rebound from the control thread
                                     while plugin threads look nothing up; the lock
                                     keeps the list walk safe for the generic path */
    struct rs_method *methods;

    /* generic slot */
    struct rs_tag t_generic;
    grpc_call *generic_call;
    grpc_call_details generic_details;
    grpc_metadata_array generic_md;

    struct mp_rpc_call *live_calls;
    mp_rpc_timer *timers; /* sorted by due time; control thread only */

    pthread_mutex_t post_lock;
    struct rs_post *posts_head, *posts_tail;

    _Atomic int stop_requested;
    _Atomic int grace_ms;
    struct rs_tag t_shutdown;
    bool shutdown_started, shutdown_done;

    _Atomic uint64_t calls_started, calls_failed, calls_active, unknown_methods;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static gpr_timespec deadline_in_ms(int64_t ms)
{
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

/* ------------------------------------------------------------------ creation */

int mp_rpc_server_create(const mp_grpc_cfg *cfg, mp_rpc_server **out, char *err,
                         size_t err_len)
{
    mp_rpc_server *srv = calloc(1, sizeof(*srv));
    if (!srv)
        return -ENOMEM;
    pthread_mutex_init(&srv->methods_lock, NULL);
    pthread_mutex_init(&srv->post_lock, NULL);
    srv->address = strdup(cfg->address ? cfg->address : MP_DEFAULT_GRPC_ADDRESS);

    int max_msg = (int)(cfg->max_message_bytes > 0 ? cfg->max_message_bytes
                                                   : MP_DEFAULT_MAX_MESSAGE_BYTES);
    grpc_arg args[4];
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = max_msg;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[1].value.integer = max_msg;
    args[2].type = GRPC_ARG_INTEGER;
    args[2].key = (char *)GRPC_ARG_MAX_CONCURRENT_STREAMS;
    args[2].value.integer = cfg->max_concurrent_streams > 0 ? cfg->max_concurrent_streams : 100;
    /* A stale process still holding the port must make start fail loudly. */
    args[3].type = GRPC_ARG_INTEGER;
    args[3].key = (char *)GRPC_ARG_ALLOW_REUSEPORT;
    args[3].value.integer = 0;
    grpc_channel_args chargs = {.num_args = 4, .args = args};

    srv->server = grpc_server_create(&chargs, NULL);
    srv->cq = grpc_completion_queue_create_for_next(NULL);
    if (!srv->server || !srv->cq || !srv->address) {
        snprintf(err, err_len, "cannot create the gRPC server");
        mp_rpc_server_destroy(srv);
        return -ENOMEM;
    }
    grpc_server_register_completion_queue(srv->server, srv->cq, NULL);

    if (cfg->tls_cert) {
        int rc = mp_rpc_tls_create(cfg, &srv->tls, &srv->creds, err, err_len);
        if (rc < 0) {
            mp_rpc_server_destroy(srv);
            return rc;
        }
    } else {
        srv->creds = grpc_insecure_server_credentials_create();
    }
    *out = srv;
    return 0;
}

/* ------------------------------------------------------------------ methods */

static bool path_valid(const char *path)
{
    /* "/pkg.Service/Method": a leading slash, exactly one more slash, nothing empty. */
    if (!path || path[0] != '/')
        return false;
    const char *slash = strchr(path + 1, '/');
    return slash && slash > path + 1 && slash[1] && !strchr(slash + 1, '/') &&
           strlen(path) < 512;
}

static struct rs_method *find_method_locked(mp_rpc_server *srv, const char *path, size_t len)
{
    for (struct rs_method *m = srv->methods; m; m = m->next)
        if (strlen(m->path) == len && memcmp(m->path, path, len) == 0)
            return m;
    return NULL;
}

int mp_rpc_server_add_method(mp_rpc_server *srv, const char *path, bool server_streaming,
                             mp_rpc_method_fn fn, void *ctx, const void *owner)
{
    if (!path_valid(path) || !fn)
        return -EINVAL;
    pthread_mutex_lock(&srv->methods_lock);
    struct rs_method *m = find_method_locked(srv, path, strlen(path));
    if (m) {
        if (m->fn && m->owner != owner) {
            pthread_mutex_unlock(&srv->methods_lock);
            return -EEXIST;
        }
        if (m->streaming != server_streaming && m->registered) {
            /* A registered method's streaming nature is fixed by the core's
             * payload handling only; our own flag may change. */
        }
        m->streaming = server_streaming;
        m->fn = fn;
        m->ctx = ctx;
        m->owner = owner;
        pthread_mutex_unlock(&srv->methods_lock);
        return 0;
    }
    m = calloc(1, sizeof(*m));
    if (!m || !(m->path = strdup(path))) {
        free(m);
        pthread_mutex_unlock(&srv->methods_lock);
        return -ENOMEM;
    }
    m->streaming = server_streaming;
    m->fn = fn;
    m->ctx = ctx;
    m->owner = owner;
    m->t_new.kind = TAG_NEW_REGISTERED;
    m->t_new.obj = m;
    if (!srv->started) {
        m->registered = grpc_server_register_method(
            srv->server, m->path, NULL, GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
        if (!m->registered)
            mp_warn("gRPC core refused to register %s; serving it via the generic path",
                    m->path);
    }
    m->next = srv->methods;
    srv->methods = m;
    pthread_mutex_unlock(&srv->methods_lock);
    return 0;
}

void mp_rpc_server_drop_method(mp_rpc_server *srv, const char *path, const void *owner)
{
    pthread_mutex_lock(&srv->methods_lock);
    struct rs_method *m = find_method_locked(srv, path, strlen(path));
    if (m && m->owner == owner) {
        m->fn = NULL;
        m->ctx = NULL;
        m->owner = NULL;
    }
    pthread_mutex_unlock(&srv->methods_lock);
}

void mp_rpc_server_drop_owner(mp_rpc_server *srv, const void *owner)
{
    pthread_mutex_lock(&srv->methods_lock);
    for (struct rs_method *m = srv->methods; m; m = m->next)
        if (m->owner == owner) {
            m->fn = NULL;
            m->ctx = NULL;
            m->owner = NULL;
        }
    pthread_mutex_unlock(&srv->methods_lock);
}

/* ------------------------------------------------------------------ requesting calls */

static void request_registered(mp_rpc_server *srv, struct rs_method *m)
{
    grpc_metadata_array_init(&m->pending_md);
    m->pending_call = NULL;
    m->pending_payload = NULL;
    grpc_call_error e = grpc_server_request_registered_call(
        srv->server, m->registered, &m->pending_call, &m->pending_deadline, &m->pending_md,
        &m->pending_payload, srv->cq, srv->cq, &m->t_new);
    if (e != GRPC_CALL_OK)
        mp_err("cannot request calls for %s (grpc_call_error %d)", m->path, (int)e);
}

static void request_generic(mp_rpc_server *srv)
{
    grpc_call_details_init(&srv->generic_details);
    grpc_metadata_array_init(&srv->generic_md);
    srv->generic_call = NULL;
    grpc_call_error e = grpc_server_request_call(srv->server, &srv->generic_call,
                                                 &srv->generic_details, &srv->generic_md,
                                                 srv->cq, srv->cq, &srv->t_generic);
    if (e != GRPC_CALL_OK)
        mp_err("cannot request generic calls (grpc_call_error %d)", (int)e);
}

int mp_rpc_server_start(mp_rpc_server *srv, char *err, size_t err_len)
{
    int port = grpc_server_add_http2_port(srv->server, srv->address, srv->creds);
    if (port <= 0) {
        snprintf(err, err_len, "cannot listen for gRPC on %s (address in use or invalid)",
                 srv->address);
        return -EADDRINUSE;
    }
    grpc_server_start(srv->server);
    srv->started = true;
    srv->t_generic.kind = TAG_NEW_GENERIC;
    srv->t_generic.obj = srv;
    request_generic(srv);
    pthread_mutex_lock(&srv->methods_lock);
    for (struct rs_method *m = srv->methods; m; m = m->next)
        if (m->registered)
            request_registered(srv, m);
    pthread_mutex_unlock(&srv->methods_lock);
    return port;
}

/* ------------------------------------------------------------------ call lifetime */

static void call_release_locked(mp_rpc_call *c, bool *free_it)
{
    *free_it = (--c->refs == 0);
}

static void call_free(mp_rpc_call *c)
{
    mp_rpc_server *srv = c->srv;
    /* unlink from the live list (control thread only ever frees) */
    if (c->prev_live)
        c->prev_live->next_live = c->next_live;
    else
        srv->live_calls = c->next_live;
    if (c->next_live)
        c->next_live->prev_live = c->prev_live;
    while (c->queue_head) {
        struct rs_msg *m = c->queue_head;
        c->queue_head = m->next;
        grpc_byte_buffer_destroy(m->bb);
        free(m);
    }
    if (c->payload)
        grpc_byte_buffer_destroy(c->payload);
    grpc_slice_unref(c->final_details);
    grpc_metadata_array_destroy(&c->request_md);
    if (c->call)
        grpc_call_unref(c->call);
    pthread_mutex_destroy(&c->lock);
    atomic_fetch_sub(&srv->calls_active, 1);
    free(c);
}

/* Frees a call whose last reference was dropped by a thread that is not the control
 * thread: the live list belongs to the control thread, so the free is posted there. */
static void call_free_posted(void *arg) { call_free(arg); }

static void call_unref(mp_rpc_call *c, bool on_control_thread)
{
    bool free_it;
    pthread_mutex_lock(&c->lock);
    call_release_locked(c, &free_it);
    pthread_mutex_unlock(&c->lock);
    if (!free_it)
        return;
    if (on_control_thread)
        call_free(c);
    else if (mp_rpc_server_post(c->srv, call_free_posted, c) < 0)
        mp_err("out of memory freeing a gRPC call; leaking it");
}

static mp_rpc_call *call_new(mp_rpc_server *srv, grpc_call *gc, struct rs_method *m)
{
    mp_rpc_call *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->srv = srv;
    c->call = gc;
    c->method = m;
    pthread_mutex_init(&c->lock, NULL);
    c->refs = 2; /* RECV_CLOSE batch + the handler until it finishes */
    c->final_details = grpc_empty_slice();
    c->t_recv_close = (struct rs_tag){TAG_RECV_CLOSE, c};
    c->t_send = (struct rs_tag){TAG_SEND, c};
    c->t_recv_msg = (struct rs_tag){TAG_RECV_MESSAGE, c};
    grpc_metadata_array_init(&c->request_md);
    c->next_live = srv->live_calls;
    if (srv->live_calls)
        srv->live_calls->prev_live = c;
    srv->live_calls = c;
    atomic_fetch_add(&srv->calls_started, 1);
    atomic_fetch_add(&srv->calls_active, 1);
    return c;
}

static bool start_recv_close(mp_rpc_call *c)
{
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->recv_close_cancelled;
    return grpc_call_start_batch(c->call, &op, 1, &c->t_recv_close, NULL) == GRPC_CALL_OK;
}

/* Start the next send batch if none is in flight. Caller holds c->lock. Returns true
 * when a batch was started (and took a reference). */
static bool pump_locked(mp_rpc_call *c)
{
    if (c->send_in_flight || c->status_started)
        return false;
    size_t n = 0;
    memset(c->send_ops, 0, sizeof(c->send_ops));
    if (!c->initial_md_sent && (c->queue_head || c->finished)) {
        c->send_ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        n++;
    }
    if (c->queue_head) {
        struct rs_msg *m = c->queue_head;
        c->queue_head = m->next;
        if (!c->queue_head)
            c->queue_tail = NULL;
        c->in_flight_bb = m->bb;
        free(m);
        c->send_ops[n].op = GRPC_OP_SEND_MESSAGE;
        c->send_ops[n].data.send_message.send_message = c->in_flight_bb;
        n++;
    }
    bool with_status = c->finished && !c->queue_head;
    if (with_status) {
        c->send_ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        c->send_ops[n].data.send_status_from_server.status = c->final_code;
        c->send_ops[n].data.send_status_from_server.status_details =
            GRPC_SLICE_LENGTH(c->final_details) ? &c->final_details : NULL;
        n++;
    }
    if (n == 0)
        return false;
    grpc_call_error e = grpc_call_start_batch(c->call, c->send_ops, n, &c->t_send, NULL);
    if (e != GRPC_CALL_OK) {
        mp_err("%s: cannot start a send batch (grpc_call_error %d)", c->method->path, (int)e);
        if (c->in_flight_bb) {
            grpc_byte_buffer_destroy(c->in_flight_bb);
            c->in_flight_bb = NULL;
        }
        return false;
    }
    if (c->send_ops[0].op == GRPC_OP_SEND_INITIAL_METADATA)
        c->initial_md_sent = true;
    if (with_status)
        c->status_started = true;
    c->send_in_flight = true;
    c->refs++;
    return true;
}

int mp_rpc_send(mp_rpc_call *c, const void *msg, size_t len)
{
    if (atomic_load(&c->cancelled))
        return -ECANCELED;
    grpc_slice s = grpc_slice_from_copied_buffer(msg, len);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    struct rs_msg *m = malloc(sizeof(*m));
    if (!bb || !m) {
        if (bb)
            grpc_byte_buffer_destroy(bb);
        free(m);
        return -ENOMEM;
    }
    m->bb = bb;
    m->next = NULL;
    pthread_mutex_lock(&c->lock);
    if (c->finished || (!c->method->streaming && c->unary_sent)) {
        pthread_mutex_unlock(&c->lock);
        grpc_byte_buffer_destroy(bb);
        free(m);
        return -EPROTO;
    }
    if (c->queue_tail)
        c->queue_tail->next = m;
    else
        c->queue_head = m;
    c->queue_tail = m;
    if (c->method->streaming)
        pump_locked(c);
    else
        c->unary_sent = true; /* sent together with the status by finish */
    pthread_mutex_unlock(&c->lock);
    return 0;
}

void mp_rpc_finish(mp_rpc_call *c, mp_rpc_code code, const char *message)
{
    pthread_mutex_lock(&c->lock);
    if (c->finished) {
        pthread_mutex_unlock(&c->lock);
        mp_err("%s: call finished twice (ignored)", c->method->path);
        return;
    }
    if (code == MP_RPC_OK && !c->method->streaming && !c->unary_sent) {
        code = MP_RPC_INTERNAL;
        message = "handler finished a unary call without a response";
        mp_err("%s: %s", c->method->path, message);
    }
    c->finished = true;
    c->final_code = (grpc_status_code)code;
    if (message && *message)
        c->final_details = grpc_slice_from_copied_string(message);
    if (code != MP_RPC_OK)
        atomic_fetch_add(&c->srv->calls_failed, 1);
    pump_locked(c);
    void (*release)(void *) = c->release;
    void *release_arg = c->release_arg;
    c->release = NULL;
    pthread_mutex_unlock(&c->lock);
    if (release)
        release(release_arg);
    /* The handler's reference. Any thread may finish, so never free inline here:
     * the control thread owns the live-call list. */
    call_unref(c, false);
}

int mp_rpc_cancelled(const mp_rpc_call *c) { return atomic_load(&c->cancelled); }

void mp_rpc_call_on_cancel(mp_rpc_call *c, void (*fn)(void *), void *arg)
{
    pthread_mutex_lock(&c->lock);
    c->on_cancel = fn;
    c->on_cancel_arg = arg;
    pthread_mutex_unlock(&c->lock);
}

const char *mp_rpc_call_method(const mp_rpc_call *c) { return c->method->path; }

void mp_rpc_call_set_release(mp_rpc_call *c, void (*release)(void *), void *arg)
{
    pthread_mutex_lock(&c->lock);
    c->release = release;
    c->release_arg = arg;
    pthread_mutex_unlock(&c->lock);
}

mp_rpc_server *mp_rpc_call_server(const mp_rpc_call *c) { return c->srv; }

/* ------------------------------------------------------------------ dispatch */

/* Reads the (possibly compressed) payload and runs the handler. */
static void dispatch(mp_rpc_call *c)
{
    struct rs_method *m = c->method;
    if (!c->payload) {
        mp_rpc_finish(c, MP_RPC_INVALID_ARGUMENT, "request message missing");
        return;
    }
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, c->payload)) {
        mp_rpc_finish(c, MP_RPC_INVALID_ARGUMENT, "request message cannot be decompressed");
        return;
    }
    grpc_slice s = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);
    pthread_mutex_lock(&c->srv->methods_lock);
    mp_rpc_method_fn fn = m->fn;
    void *ctx = m->ctx;
    pthread_mutex_unlock(&c->srv->methods_lock);
    if (!fn)
        mp_rpc_finish(c, MP_RPC_UNAVAILABLE, "the module serving this method is not loaded");
    else
        fn(ctx, c, GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s));
    grpc_slice_unref(s);
}

/* A call that will never reach a handler: answer it with a status. */
static void answer_directly(mp_rpc_call *c, mp_rpc_code code, const char *msg)
{
    if (!start_recv_close(c))
        c->refs--;
    mp_rpc_finish(c, code, msg);
}

static void on_new_registered(mp_rpc_server *srv, struct rs_method *m, bool ok)
{
    if (!ok) /* shutdown */
        return;
    grpc_call *gc = m->pending_call;
    grpc_byte_buffer *payload = m->pending_payload;
    grpc_metadata_array md = m->pending_md;
    if (!srv->shutdown_started)
        request_registered(srv, m);
    mp_rpc_call *c = call_new(srv, gc, m);
    if (!c) {
        grpc_call_cancel_with_status(gc, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory",
                                     NULL);
        grpc_call_unref(gc);
        if (payload)
            grpc_byte_buffer_destroy(payload);
        grpc_metadata_array_destroy(&md);
        return;
    }
    c->payload = payload;
    grpc_metadata_array_destroy(&c->request_md);
    c->request_md = md;
    if (!start_recv_close(c)) {
        c->refs--;
    }
    dispatch(c);
}

static void on_new_generic(mp_rpc_server *srv, bool ok)
{
    if (!ok)
        return;
    grpc_call *gc = srv->generic_call;
    grpc_slice method = srv->generic_details.method;
    pthread_mutex_lock(&srv->methods_lock);
    struct rs_method *m = find_method_locked(srv, (const char *)GRPC_SLICE_START_PTR(method),
                                             GRPC_SLICE_LENGTH(method));
    pthread_mutex_unlock(&srv->methods_lock);
    char shown[160];
    snprintf(shown, sizeof(shown), "%.*s", (int)GRPC_SLICE_LENGTH(method),
             (const char *)GRPC_SLICE_START_PTR(method));
    grpc_call_details_destroy(&srv->generic_details);
    grpc_metadata_array_destroy(&srv->generic_md);
    if (!srv->shutdown_started)
        request_generic(srv);

    static struct rs_method unknown = {.path = "(unknown method)"};
    mp_rpc_call *c = call_new(srv, gc, m ? m : &unknown);
    if (!c) {
        grpc_call_cancel_with_status(gc, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory",
                                     NULL);
        grpc_call_unref(gc);
        return;
    }
    if (!m) {
        atomic_fetch_add(&srv->unknown_methods, 1);
        char msg[256];
        snprintf(msg, sizeof(msg), "unknown method %s", shown);
        mp_debug("gRPC: %s", msg);
        answer_directly(c, MP_RPC_UNIMPLEMENTED, msg);
        return;
    }
    if (!start_recv_close(c))
        c->refs--;
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->payload;
    c->refs++;
    if (grpc_call_start_batch(c->call, &op, 1, &c->t_recv_msg, NULL) != GRPC_CALL_OK) {
        c->refs--;
        mp_rpc_finish(c, MP_RPC_INTERNAL, "cannot read the request");
    }
}

static void on_recv_message(mp_rpc_call *c, bool ok)
{
    if (!ok)
        mp_rpc_finish(c, MP_RPC_CANCELLED, "request could not be read");
    else
        dispatch(c);
    call_unref(c, true);
}

static void on_recv_close(mp_rpc_call *c, bool ok)
{
    void (*cb)(void *) = NULL;
    void *arg = NULL;
    if (!ok || c->recv_close_cancelled) {
        atomic_store(&c->cancelled, 1);
        pthread_mutex_lock(&c->lock);
        if (!c->finished) {
            cb = c->on_cancel;
            arg = c->on_cancel_arg;
            c->on_cancel = NULL;
        }
        pthread_mutex_unlock(&c->lock);
    }
    if (cb)
        cb(arg);
    call_unref(c, true);
}

static void on_send_done(mp_rpc_call *c, bool ok)
{
    pthread_mutex_lock(&c->lock);
    c->send_in_flight = false;
    if (c->in_flight_bb) {
        grpc_byte_buffer_destroy(c->in_flight_bb);
        c->in_flight_bb = NULL;
    }
    if (!ok) {
        /* The stream is gone; drop what is queued so producers stop. */
        atomic_store(&c->cancelled, 1);
        while (c->queue_head) {
            struct rs_msg *m = c->queue_head;
            c->queue_head = m->next;
            grpc_byte_buffer_destroy(m->bb);
            free(m);
        }
        c->queue_tail = NULL;
    }
    pump_locked(c);
    pthread_mutex_unlock(&c->lock);
    call_unref(c, true);
}

/* ------------------------------------------------------------------ timers and posts */

mp_rpc_timer *mp_rpc_timer_add(mp_rpc_server *srv, uint64_t delay_ms, void (*fn)(void *),
                               void *arg)
{
    mp_rpc_timer *t = malloc(sizeof(*t));
    if (!t)
        return NULL;
    t->due_ms = now_ms() + delay_ms;
    t->fn = fn;
    t->arg = arg;
    mp_rpc_timer **pp = &srv->timers;
    while (*pp && (*pp)->due_ms <= t->due_ms)
        pp = &(*pp)->next;
    t->next = *pp;
    *pp = t;
    return t;
}

void mp_rpc_timer_cancel(mp_rpc_server *srv, mp_rpc_timer *t)
{
    for (mp_rpc_timer **pp = &srv->timers; *pp; pp = &(*pp)->next)
        if (*pp == t) {
            *pp = t->next;
            free(t);
            return;
        }
}

static void run_due_timers(mp_rpc_server *srv)
{
    uint64_t now = now_ms();
    while (srv->timers && srv->timers->due_ms <= now) {
        mp_rpc_timer *t = srv->timers;
        srv->timers = t->next;
        void (*fn)(void *) = t->fn;
        void *arg = t->arg;
        free(t);
        fn(arg);
    }
}

int mp_rpc_server_post(mp_rpc_server *srv, void (*fn)(void *), void *arg)
{
    struct rs_post *p = malloc(sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->fn = fn;
    p->arg = arg;
    p->next = NULL;
    pthread_mutex_lock(&srv->post_lock);
    if (srv->posts_tail)
        srv->posts_tail->next = p;
    else
        srv->posts_head = p;
    srv->posts_tail = p;
    pthread_mutex_unlock(&srv->post_lock);
    return 0;
}

static void run_posts(mp_rpc_server *srv)
{
    pthread_mutex_lock(&srv->post_lock);
    struct rs_post *p = srv->posts_head;
    srv->posts_head = srv->posts_tail = NULL;
    pthread_mutex_unlock(&srv->post_lock);
    while (p) {
        struct rs_post *next = p->next;
        p->fn(p->arg);
        free(p);
        p = next;
    }
}

/* ------------------------------------------------------------------ the loop */

static void handle_event(mp_rpc_server *srv, grpc_event ev)
{
    struct rs_tag *tag = ev.tag;
    bool ok = ev.success != 0;
    switch (tag->kind) {
    case TAG_NEW_REGISTERED:
        on_new_registered(srv, tag->obj, ok);
        break;
    case TAG_NEW_GENERIC:
        on_new_generic(srv, ok);
        break;
    case TAG_RECV_MESSAGE:
        on_recv_message(tag->obj, ok);
        break;
    case TAG_RECV_CLOSE:
        on_recv_close(tag->obj, ok);
        break;
    case TAG_SEND:
        on_send_done(tag->obj, ok);
        break;
    case TAG_SHUTDOWN:
        srv->shutdown_done = true;
        break;
    }
}

static int next_wait_ms(mp_rpc_server *srv)
{
    int wait = RPC_POLL_MS;
    if (srv->timers) {
        uint64_t now = now_ms();
        uint64_t due = srv->timers->due_ms;
        int until = due <= now ? 0 : (int)(due - now);
        if (until < wait)
            wait = until;
    }
    return wait;
}

void mp_rpc_server_run(mp_rpc_server *srv)
{
    uint64_t cancel_at = 0;
    bool cancelled_all = false;
    uint64_t give_up_at = 0;
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(srv->cq, deadline_in_ms(next_wait_ms(srv)),
                                                   NULL);
        if (ev.type == GRPC_OP_COMPLETE)
            handle_event(srv, ev);
        else if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        run_posts(srv);
        run_due_timers(srv);

        if (atomic_load(&srv->stop_requested) && !srv->shutdown_started) {
            srv->shutdown_started = true;
            srv->t_shutdown = (struct rs_tag){TAG_SHUTDOWN, srv};
            grpc_server_shutdown_and_notify(srv->server, srv->cq, &srv->t_shutdown);
            cancel_at = now_ms() + (uint64_t)atomic_load(&srv->grace_ms);
            give_up_at = cancel_at + RPC_DRAIN_LIMIT_MS;
        }
        if (srv->shutdown_started) {
            uint64_t now = now_ms();
            /* With no call in flight there is nothing to wait for; idle client
             * connections alone would otherwise hold the shutdown for the whole grace. */
            if (!cancelled_all && (now >= cancel_at || !srv->live_calls)) {
                /* Streams (StreamMetrics, Watch) never end by themselves. */
                grpc_server_cancel_all_calls(srv->server);
                cancelled_all = true;
            }
            if (srv->shutdown_done && !srv->live_calls)
                break;
            if (now >= give_up_at) {
                mp_warn("gRPC shutdown: %zu call(s) still not finished by their handlers",
                        (size_t)atomic_load(&srv->calls_active));
                break;
            }
        }
    }
}

void mp_rpc_server_stop(mp_rpc_server *srv, int grace_ms)
{
    atomic_store(&srv->grace_ms, grace_ms < 0 ? 0 : grace_ms);
    atomic_store(&srv->stop_requested, 1);
}

bool mp_rpc_server_stopping(const mp_rpc_server *srv)
{
    return atomic_load(&srv->stop_requested) != 0;
}

void mp_rpc_server_destroy(mp_rpc_server *srv)
{
    if (!srv)
        return;
    if (srv->server) {
        if (srv->started && !srv->shutdown_done) {
            if (!srv->shutdown_started) {
                srv->t_shutdown = (struct rs_tag){TAG_SHUTDOWN, srv};
                grpc_server_shutdown_and_notify(srv->server, srv->cq, &srv->t_shutdown);
                srv->shutdown_started = true;
            }
            grpc_server_cancel_all_calls(srv->server);
            /* Drain until the shutdown tag, bounded. */
            uint64_t limit = now_ms() + RPC_DRAIN_LIMIT_MS;
            while (!srv->shutdown_done && now_ms() < limit) {
                grpc_event ev = grpc_completion_queue_next(srv->cq, deadline_in_ms(100), NULL);
                if (ev.type == GRPC_OP_COMPLETE)
                    handle_event(srv, ev);
                run_posts(srv);
            }
        }
        grpc_server_destroy(srv->server);
    }
    if (srv->cq) {
        grpc_completion_queue_shutdown(srv->cq);
        for (;;) {
            grpc_event ev = grpc_completion_queue_next(srv->cq, deadline_in_ms(1000), NULL);
            if (ev.type == GRPC_QUEUE_SHUTDOWN)
                break;
            if (ev.type == GRPC_OP_COMPLETE)
                handle_event(srv, ev);
        }
        run_posts(srv);
        grpc_completion_queue_destroy(srv->cq);
    }
    while (srv->live_calls) /* handlers that never finished: free what we own */
        call_free(srv->live_calls);
    while (srv->timers)
        mp_rpc_timer_cancel(srv, srv->timers);
    run_posts(srv);
    while (srv->methods) {
        struct rs_method *m = srv->methods;
        srv->methods = m->next;
        free(m->path);
        free(m);
    }
    if (srv->creds)
        grpc_server_credentials_release(srv->creds);
    mp_rpc_tls_destroy(srv->tls);
    pthread_mutex_destroy(&srv->methods_lock);
    pthread_mutex_destroy(&srv->post_lock);
    free(srv->address);
    free(srv);
}

void mp_rpc_server_get_stats(const mp_rpc_server *srv, mp_rpc_server_stats *out)
{
    out->calls_started = atomic_load(&srv->calls_started);
    out->calls_failed = atomic_load(&srv->calls_failed);
    out->calls_active = atomic_load(&srv->calls_active);
    out->unknown_methods = atomic_load(&srv->unknown_methods);
}
