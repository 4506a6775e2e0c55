/*
 * rpc_proto.c — typed calls over the byte-level server. One mp_pb_call lives for the
 * duration of one call: its arena holds the response being built; for streams it also
 * holds the unpacked request until the stream ends.
 */
#include "rpc_proto.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

struct pb_binding {
    const ProtobufCMethodDescriptor *method;
    const ProtobufCServiceDescriptor *service;
    mp_pb_handler handler;
    void *ctx;
    struct pb_binding *next;
};

struct mp_pb_call {
    struct pb_binding *b;
    mp_rpc_call *raw;
    mp_arena *arena;
    ProtobufCMessage *req;
    char status_msg[512];
    void (*on_cancel)(mp_pb_call *, void *);
    void *on_cancel_arg;
    void *user;
};

/* Bindings live as long as the process: the server keeps pointers to them. They are
 * reclaimed at exit by mp_pb_unbind_all (called from main's teardown). */
static struct pb_binding *all_bindings;
static void (*after_unary)(void *, const char *);
static void *after_unary_arg;

void mp_pb_set_after_unary(void (*fn)(void *, const char *), void *arg)
{
    after_unary = fn;
    after_unary_arg = arg;
}

void mp_pb_unbind_all(void)
{
    while (all_bindings) {
        struct pb_binding *b = all_bindings;
        all_bindings = b->next;
        free(b);
    }
}

void *mp_pb_ctx(const mp_pb_call *pc) { return pc->b->ctx; }
mp_arena *mp_pb_arena(const mp_pb_call *pc) { return pc->arena; }
mp_rpc_call *mp_pb_raw(const mp_pb_call *pc) { return pc->raw; }
void **mp_pb_user(mp_pb_call *pc) { return &pc->user; }

mp_rpc_code mp_pb_fail(mp_pb_call *pc, mp_rpc_code code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pc->status_msg, sizeof(pc->status_msg), fmt, ap);
    va_end(ap);
    return code;
}

int mp_pb_pack(const ProtobufCMessage *msg, uint8_t **out, size_t *out_len)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return -ENOMEM;
    protobuf_c_message_pack(msg, buf);
    *out = buf;
    *out_len = n;
    return 0;
}

static void pb_call_free(mp_pb_call *pc)
{
    if (pc->req)
        protobuf_c_message_free_unpacked(pc->req, NULL);
    mp_arena_free(pc->arena);
    free(pc);
}

static int send_message(mp_rpc_call *raw, const ProtobufCMessage *msg)
{
    uint8_t *buf;
    size_t len;
    int rc = mp_pb_pack(msg, &buf, &len);
    if (rc < 0)
        return rc;
    rc = mp_rpc_send(raw, buf, len);
    free(buf);
    return rc;
}

static void on_raw_cancel(void *arg)
{
    mp_pb_call *pc = arg;
    if (pc->on_cancel)
        pc->on_cancel(pc, pc->on_cancel_arg);
    else
        mp_pb_stream_finish(pc, MP_RPC_CANCELLED, "cancelled");
}

static void pb_dispatch(void *ctx, mp_rpc_call *raw, const uint8_t *data, size_t len)
{
    struct pb_binding *b = ctx;
    mp_pb_call *pc = calloc(1, sizeof(*pc));
    if (!pc) {
        mp_rpc_finish(raw, MP_RPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    pc->b = b;
    pc->raw = raw;
    pc->arena = mp_arena_new();
    pc->req = protobuf_c_message_unpack(b->method->input, NULL, len, data);
    if (!pc->req) {
        char msg[256];
        snprintf(msg, sizeof(msg), "malformed request: the bytes are not a valid %s",
                 b->method->input->name);
        pb_call_free(pc);
        mp_rpc_finish(raw, MP_RPC_INVALID_ARGUMENT, msg);
        return;
    }
    if (b->handler.stream) {
        mp_rpc_call_on_cancel(raw, on_raw_cancel, pc);
        mp_rpc_code code = b->handler.stream(pc, pc->req);
        if (code != MP_RPC_OK)
            mp_pb_stream_finish(pc, code, pc->status_msg);
        return;
    }
    const ProtobufCMessageDescriptor *od = b->method->output;
    ProtobufCMessage *resp = mp_arena_alloc(pc->arena, od->sizeof_message);
    od->message_init(resp);
    mp_rpc_code code = b->handler.unary(pc, pc->req, resp);
    /* Before the answer leaves: a change the client sees acknowledged must already be
     * persisted (state_persist.c), so a crash right after cannot lose it. */
    if (after_unary)
        after_unary(after_unary_arg, b->method->name);
    if (code == MP_RPC_OK) {
        int rc = send_message(raw, resp);
        if (rc < 0 && rc != -ECANCELED) {
            code = MP_RPC_INTERNAL;
            snprintf(pc->status_msg, sizeof(pc->status_msg), "cannot send the response");
        }
    }
    mp_rpc_finish(raw, code, code == MP_RPC_OK ? NULL : pc->status_msg);
    pb_call_free(pc);
}

int mp_pb_stream_send(mp_pb_call *pc, const ProtobufCMessage *msg)
{
    return send_message(pc->raw, msg);
}

void mp_pb_stream_finish(mp_pb_call *pc, mp_rpc_code code, const char *message)
{
    mp_rpc_finish(pc->raw, code, message);
    pb_call_free(pc);
}

void mp_pb_stream_on_cancel(mp_pb_call *pc, void (*fn)(mp_pb_call *, void *), void *arg)
{
    pc->on_cancel = fn;
    pc->on_cancel_arg = arg;
}

int mp_pb_bind_service(mp_rpc_server *srv, const ProtobufCServiceDescriptor *desc,
                       const mp_pb_handler *handlers, size_t n_handlers, void *ctx,
                       char *err, size_t err_len)
{
    for (unsigned i = 0; i < desc->n_methods; i++) {
        const ProtobufCMethodDescriptor *md = &desc->methods[i];
        const mp_pb_handler *h = NULL;
        for (size_t j = 0; j < n_handlers; j++)
            if (strcmp(handlers[j].method, md->name) == 0)
                h = &handlers[j];
        if (!h || (!h->unary == !h->stream)) {
            snprintf(err, err_len, "%s.%s has no handler (or both kinds)", desc->name,
                     md->name);
            return -EINVAL;
        }
        struct pb_binding *b = calloc(1, sizeof(*b));
        if (!b)
            return -ENOMEM;
        b->method = md;
        b->service = desc;
        b->handler = *h;
        b->ctx = ctx;
        b->next = all_bindings;
        all_bindings = b;
        char path[256];
        snprintf(path, sizeof(path), "/%s/%s", desc->name, md->name);
        int rc = mp_rpc_server_add_method(srv, path, h->stream != NULL, pb_dispatch, b, desc);
        if (rc < 0) {
            snprintf(err, err_len, "cannot register %s: %s", path, strerror(-rc));
            return rc;
        }
    }
    return 0;
}
