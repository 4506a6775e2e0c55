/*
 * rpc_proto.h — the one generic bridge between protobuf-c service descriptors and the
 * byte-level server: a service is bound by its descriptor plus a table of typed
 * handlers; requests are unpacked with the method's input descriptor (malformed bytes
 * become INVALID_ARGUMENT), responses are packed from the output descriptor.
 * protobuf-c does not record which methods stream, so the handler table says so, and
 * binding fails unless every method of the descriptor has a handler.
 */
#ifndef MP_HOST_RPC_PROTO_H
#define MP_HOST_RPC_PROTO_H

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>

#include "arena.h"
#include "rpc_server.h"

typedef struct mp_pb_call mp_pb_call;

/* Unary: fill `resp` (already initialised, of the method's output type; allocate
 * everything it points to from mp_pb_arena) and return MP_RPC_OK, or return the code
 * from mp_pb_fail. */
typedef mp_rpc_code (*mp_pb_unary_fn)(mp_pb_call *pc, const void *req, void *resp);

/* Server streaming: return MP_RPC_OK to keep the call open (then send with
 * mp_pb_stream_send and end with mp_pb_stream_finish, on the control thread), or
 * a failure code from mp_pb_fail to end it at once. */
typedef mp_rpc_code (*mp_pb_stream_fn)(mp_pb_call *pc, const void *req);

typedef struct mp_pb_handler {
    const char *method; /* as in the .proto, e.g. "GetStatus" */
    mp_pb_unary_fn unary;
    mp_pb_stream_fn stream;
} mp_pb_handler;

/* Register every method of `desc` with `srv`. `ctx` is handed to handlers. */
int mp_pb_bind_service(mp_rpc_server *srv, const ProtobufCServiceDescriptor *desc,
                       const mp_pb_handler *handlers, size_t n_handlers, void *ctx,
                       char *err, size_t err_len);

void *mp_pb_ctx(const mp_pb_call *pc);
mp_arena *mp_pb_arena(const mp_pb_call *pc);
mp_rpc_call *mp_pb_raw(const mp_pb_call *pc);
/* Record a failure status message; returns `code` for `return mp_pb_fail(...)`. */
mp_rpc_code mp_pb_fail(mp_pb_call *pc, mp_rpc_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Streaming only. Send one message (packed and copied); 0, -ECANCELED, -ENOMEM. */
int mp_pb_stream_send(mp_pb_call *pc, const ProtobufCMessage *msg);
/* End the stream and free pc (and the request it holds). */
void mp_pb_stream_finish(mp_pb_call *pc, mp_rpc_code code, const char *message);
/* Called (control thread) when the client cancels an open stream: the owner must stop
 * its timers and call mp_pb_stream_finish. */
void mp_pb_stream_on_cancel(mp_pb_call *pc, void (*fn)(mp_pb_call *pc, void *arg), void *arg);
/* Scratch slot for the stream's state. */
void **mp_pb_user(mp_pb_call *pc);

/* Run fn(arg, "Method") on the control thread after the handler of every unary call
 * of a bound service and before its answer is sent (the host marks its state changed
 * for the data plane and persists it). */
void mp_pb_set_after_unary(void (*fn)(void *arg, const char *method), void *arg);

/* Free every binding (at exit, after the server is destroyed). */
void mp_pb_unbind_all(void);

/* Pack any message into malloc'd bytes (for the persistence layer); 0 or -ENOMEM. */
int mp_pb_pack(const ProtobufCMessage *msg, uint8_t **out, size_t *out_len);

#endif
