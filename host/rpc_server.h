/*
 * rpc_server.h — the gRPC C-core server at byte level: one completion queue driven by
 * the control thread, methods looked up by full path ("/pkg.Service/Method"), calls
 * answered with (bytes, status) from any thread, control-thread timers and a post
 * queue for work handed over by other threads. It knows nothing of protobuf; see
 * rpc_proto.h for the typed layer built on it.
 *
 * An mp_rpc_call is the same object a plugin sees through mp_host_api (plugin.h).
 */
#ifndef MP_HOST_RPC_SERVER_H
#define MP_HOST_RPC_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "marchproxy/plugin.h"

typedef struct mp_rpc_server mp_rpc_server;
typedef struct mp_rpc_timer mp_rpc_timer;

/* A method's handler. Runs on the control thread. `request` is borrowed for the call.
 * It must lead to exactly one mp_rpc_finish, now or later, from any thread. */
typedef void (*mp_rpc_method_fn)(void *ctx, mp_rpc_call *call, const uint8_t *request,
                                 size_t request_len);

/* Create the server from the grpc section (address, limits, TLS). Does not listen yet. */
int mp_rpc_server_create(const mp_grpc_cfg *cfg, mp_rpc_server **out, char *err,
                         size_t err_len);

/* Add or rebind a method. Before start the method is registered with the C core (its
 * payload arrives with the call); after start it is served through the generic path.
 * Rebinding an existing path replaces fn/ctx (used when a plugin generation changes);
 * `owner` tags who may rebind or drop it. Returns 0, -EEXIST if another owner has the
 * path, -EINVAL if the path is malformed, -ENOMEM. The path is copied. */
int mp_rpc_server_add_method(mp_rpc_server *srv, const char *path, bool server_streaming,
                             mp_rpc_method_fn fn, void *ctx, const void *owner);
/* Stop routing `path` (calls then get UNAVAILABLE until rebound); only its owner may. */
void mp_rpc_server_drop_method(mp_rpc_server *srv, const char *path, const void *owner);
/* Drop every method `owner` holds. */
void mp_rpc_server_drop_owner(mp_rpc_server *srv, const void *owner);

/* Bind the address and start serving. Returns the bound port (> 0) or -errno. */
int mp_rpc_server_start(mp_rpc_server *srv, char *err, size_t err_len);

/* Drive the completion queue, timers and posted work on the calling (control) thread
 * until mp_rpc_server_stop is requested; then shut down in the order the C core needs:
 * stop accepting, give calls `grace_ms` to finish, cancel the rest, drain. */
void mp_rpc_server_run(mp_rpc_server *srv);
/* Ask run() to return after shutting down. Any thread; async-signal-unsafe. */
void mp_rpc_server_stop(mp_rpc_server *srv, int grace_ms);
bool mp_rpc_server_stopping(const mp_rpc_server *srv);
/* Release everything once run() has returned. */
void mp_rpc_server_destroy(mp_rpc_server *srv);

/* Hand `fn(arg)` to the control thread (runs within ~50 ms). Any thread. 0 or -ENOMEM. */
int mp_rpc_server_post(mp_rpc_server *srv, void (*fn)(void *arg), void *arg);

/* Control-thread timers. The callback runs once on the control thread; the handle is
 * invalid after it runs or is cancelled. Control thread only. */
mp_rpc_timer *mp_rpc_timer_add(mp_rpc_server *srv, uint64_t delay_ms, void (*fn)(void *arg),
                               void *arg);
void mp_rpc_timer_cancel(mp_rpc_server *srv, mp_rpc_timer *t);

/* --- per call (the plugin ABI exposes the same four) --- */
int mp_rpc_send(mp_rpc_call *call, const void *msg, size_t len);
void mp_rpc_finish(mp_rpc_call *call, mp_rpc_code code, const char *message);
int mp_rpc_cancelled(const mp_rpc_call *call);

/* Run `fn(arg)` on the control thread if the client cancels (or the server shuts down)
 * before the call is finished. Set it once, from the handler. */
void mp_rpc_call_on_cancel(mp_rpc_call *call, void (*fn)(void *arg), void *arg);
/* The method path and the peer ("ipv4:127.0.0.1:5555"), for logs. */
const char *mp_rpc_call_method(const mp_rpc_call *call);
/* A slot the call's owner may use (the host keeps the plugin generation a call runs
 * against here); `release`, if set, runs once when the call is finished. */
void mp_rpc_call_set_release(mp_rpc_call *call, void (*release)(void *arg), void *arg);
mp_rpc_server *mp_rpc_call_server(const mp_rpc_call *call);

/* Counters for the control plane's own stats. */
typedef struct mp_rpc_server_stats {
    uint64_t calls_started;
    uint64_t calls_failed;    /* finished with a non-OK status */
    uint64_t calls_active;
    uint64_t unknown_methods; /* answered UNIMPLEMENTED */
} mp_rpc_server_stats;
void mp_rpc_server_get_stats(const mp_rpc_server *srv, mp_rpc_server_stats *out);

#endif
