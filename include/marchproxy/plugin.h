/*
 * marchproxy/plugin.h — the MarchProxy plugin ABI, the only header a plugin includes.
 *
 * A plugin is a shared object that exports one function, MP_PLUGIN_ENTRY_SYMBOL,
 * returning a pointer to a static, immutable mp_plugin_descriptor. The host checks
 * the descriptor (magic, ABI major equal, ABI minor not newer than the host's, struct
 * size), then drives the plugin through the descriptor's callbacks and hands it a
 * function table (mp_host_api) for everything it needs from the host. The plugin never
 * links against host symbols: it is loaded with RTLD_LOCAL.
 *
 * Compatibility rules:
 *  - Every struct that crosses the boundary begins with its own size (struct_size).
 *    New members are only ever appended; readers check struct_size before touching a
 *    member that a newer minor added (MP_HAS_MEMBER).
 *  - abi_major changes only when something is removed or changes meaning.
 *  - No liburing, gRPC, protobuf-c or libconfig type appears here: opaque handles,
 *    (pointer, length) buffers and plain C structs only.
 *
 * Threads: lifecycle callbacks (validate_config, create, reconfigure, destroy) and the
 * control-plane callbacks (health, can_handle, stats) run on the host's control thread.
 * RPC handlers run on the control thread too and may answer later from any thread.
 *
 * Ownership: a pointer the host passes into a callback is borrowed for the duration
 * of that call unless the comment says otherwise. A pointer a plugin passes to the host
 * is copied by the host before the host function returns unless the comment says
 * otherwise.
 */
#ifndef MARCHPROXY_PLUGIN_H
#define MARCHPROXY_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

struct sockaddr;

#ifdef __cplusplus
extern "C" {
#endif

#define MP_PLUGIN_MAGIC 0x4c504d4du /* "MMPL" read as little-endian bytes */
#define MP_ABI_MAJOR 1
#define MP_ABI_MINOR 3

/* The one symbol a plugin exports. */
#define MP_PLUGIN_ENTRY_SYMBOL "mp_plugin_entry"

/* True when a struct of size `size` (its struct_size) contains `member`. */
#define MP_HAS_MEMBER(type, size, member) \
    ((size) >= offsetof(type, member) + sizeof(((type *)0)->member))

/* Module types, numbered as marchproxy.ModuleType on the wire. Storage plugins such
 * as LauraDB have no wire type and use MP_MODULE_STORAGE, which the host reports as
 * MODULE_TYPE_UNSPECIFIED over gRPC and "storage" in metadata. */
typedef enum mp_module_type {
    MP_MODULE_UNSPECIFIED = 0,
    MP_MODULE_ALB = 1,
    MP_MODULE_DBLB = 2,
    MP_MODULE_AILB = 3,
    MP_MODULE_RTMP = 4,
    MP_MODULE_NLB = 5,
    MP_MODULE_STORAGE = 100,
} mp_module_type;

/* Health, numbered as marchproxy.HealthStatus on the wire. */
typedef enum mp_health {
    MP_HEALTH_UNSPECIFIED = 0,
    MP_HEALTH_HEALTHY = 1,
    MP_HEALTH_DEGRADED = 2,
    MP_HEALTH_UNHEALTHY = 3,
    MP_HEALTH_STARTING = 4,
    MP_HEALTH_STOPPING = 5,
    MP_HEALTH_STOPPED = 6,
} mp_health;

/* Protocols, numbered as marchproxy.Protocol on the wire. */
typedef enum mp_protocol {
    MP_PROTO_UNSPECIFIED = 0,
    MP_PROTO_TCP = 1,
    MP_PROTO_UDP = 2,
    MP_PROTO_HTTP = 3,
    MP_PROTO_HTTPS = 4,
    MP_PROTO_HTTP2 = 5,
    MP_PROTO_HTTP3 = 6,
    MP_PROTO_GRPC = 7,
    MP_PROTO_WEBSOCKET = 8,
    MP_PROTO_MYSQL = 9,
    MP_PROTO_POSTGRES = 10,
    MP_PROTO_MONGODB = 11,
    MP_PROTO_REDIS = 12,
    MP_PROTO_RTMP = 13,
    MP_PROTO_RTMPS = 14,
    MP_PROTO_HLS = 15,
    MP_PROTO_DASH = 16,
} mp_protocol;

/* gRPC status codes a plugin RPC handler may finish a call with. */
typedef enum mp_rpc_code {
    MP_RPC_OK = 0,
    MP_RPC_CANCELLED = 1,
    MP_RPC_UNKNOWN = 2,
    MP_RPC_INVALID_ARGUMENT = 3,
    MP_RPC_DEADLINE_EXCEEDED = 4,
    MP_RPC_NOT_FOUND = 5,
    MP_RPC_ALREADY_EXISTS = 6,
    MP_RPC_PERMISSION_DENIED = 7,
    MP_RPC_RESOURCE_EXHAUSTED = 8,
    MP_RPC_FAILED_PRECONDITION = 9,
    MP_RPC_ABORTED = 10,
    MP_RPC_OUT_OF_RANGE = 11,
    MP_RPC_UNIMPLEMENTED = 12,
    MP_RPC_INTERNAL = 13,
    MP_RPC_UNAVAILABLE = 14,
    MP_RPC_DATA_LOSS = 15,
    MP_RPC_UNAUTHENTICATED = 16,
} mp_rpc_code;

typedef enum mp_log_level {
    MP_LOG_ERROR = 0,
    MP_LOG_WARN = 1,
    MP_LOG_INFO = 2,
    MP_LOG_DEBUG = 3,
} mp_log_level;

/* Opaque handles. Their lifetimes are stated where they are handed out. */
typedef struct mp_instance mp_instance; /* host's view of one plugin instance */
typedef struct mp_config mp_config;     /* a node of the instance's config section */
typedef struct mp_rpc_call mp_rpc_call; /* one gRPC call to a plugin-registered method */
typedef struct mp_conn mp_conn;         /* one TCP connection, owned by one worker (1.1) */
typedef struct mp_timer mp_timer;       /* a one-shot timer on a worker (1.1) */

/* Why a connection ended (on_close's `reason`). */
typedef enum mp_close_reason {
    MP_CLOSE_LOCAL = 0,    /* conn_close / conn_abort by the plugin or host */
    MP_CLOSE_PEER = 1,     /* the peer closed (after EOF in both directions, or reset) */
    MP_CLOSE_ERROR = 2,    /* a socket error; `err` has the errno */
    MP_CLOSE_TIMEOUT = 3,  /* connect or host-enforced timeout */
    MP_CLOSE_SHUTDOWN = 4, /* the host is stopping or the generation's drain timed out */
    MP_CLOSE_OVERFLOW = 5, /* output backlog passed the hard limit (slow reader) */
} mp_close_reason;

/* Callbacks of one connection, set with conn_set_handler. They run on the connection's
 * worker thread, never concurrently for one connection. Any may be NULL. */
typedef struct mp_conn_handler {
    uint32_t struct_size;
    /* Bytes arrived. `data` is borrowed until the callback returns. */
    void (*on_data)(void *ctx, mp_conn *c, const uint8_t *data, size_t len);
    /* The peer finished sending (half-close). Sending is still possible. */
    void (*on_eof)(void *ctx, mp_conn *c);
    /* Queued output fell below the low-water mark after conn_send reported
     * backpressure (returned 1): produce more now. */
    void (*on_drain)(void *ctx, mp_conn *c);
    /* An outbound conn_connect finished: err 0, or negative errno with `reason`. */
    void (*on_connect)(void *ctx, mp_conn *c, int err, const char *reason);
    /* Last callback: the connection is gone and `c` is invalid afterwards. */
    void (*on_close)(void *ctx, mp_conn *c, mp_close_reason reason, int err);
} mp_conn_handler;

/* What the NLB learned about a connection before handing it over (borrowed, valid for
 * the connection's lifetime). */
typedef struct mp_conn_info {
    uint32_t struct_size;
    int protocol;               /* mp_protocol the sniffer saw (or the listener binds) */
    const char *listener;       /* listener name */
    const char *route_id;       /* NLB route that matched ("" if the default module) */
    const char *sni;            /* TLS server name ("" if none) */
    const char *alpn;           /* first ALPN protocol offered ("" if none) */
    const struct sockaddr *peer;
    const struct sockaddr *local;
    uint32_t peer_len, local_len;
    int worker;                 /* index of the worker thread, 0..workers-1 */
} mp_conn_info;

/* Kinds of config node, as libconfig knows them. */
typedef enum mp_config_kind {
    MP_CFG_NONE = 0,
    MP_CFG_GROUP = 1, /* named children */
    MP_CFG_LIST = 2,  /* ( a, b ) of any kinds */
    MP_CFG_ARRAY = 3, /* [ a, b ] of one scalar kind */
    MP_CFG_INT = 4,   /* 32- or 64-bit integer */
    MP_CFG_FLOAT = 5,
    MP_CFG_STRING = 6,
    MP_CFG_BOOL = 7,
} mp_config_kind;

/*
 * An RPC handler for a method the plugin registered with register_rpc. It runs on the
 * control thread. `request` is borrowed until the handler returns. The handler must
 * eventually call rpc_finish exactly once, either before returning or later from any
 * thread; `call` stays valid until then. Unary methods send one message with
 * rpc_send before finishing with MP_RPC_OK. Streaming methods may send any number.
 */
typedef void (*mp_rpc_handler)(void *instance_state, mp_rpc_call *call,
                               const uint8_t *request, size_t request_len);

/*
 * The host function table. Passed to every callback that needs it; valid for as long as
 * the plugin is loaded. Append-only: check struct_size before using a member that a
 * later minor version added.
 */
typedef struct mp_host_api {
    uint32_t struct_size;
    uint16_t abi_major;
    uint16_t abi_minor;

    /* Logging, to the host's log with the instance id prefixed. `inst` may be NULL
     * (then the plugin name is used). Never pass secrets. */
    void (*log)(mp_instance *inst, mp_log_level level, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

    /* --- Configuration (read-only view of the instance's section) ---
     * Nodes are borrowed from the host and valid until the callback that received the
     * section returns; copy what you keep. Lookup paths are dot-separated
     * ("upstream.timeout"). */
    mp_config_kind (*cfg_kind)(const mp_config *node);
    const mp_config *(*cfg_lookup)(const mp_config *node, const char *path);
    /* Typed reads: 0 on success, -ENOENT if absent, -EINVAL if of another kind. */
    int (*cfg_get_int)(const mp_config *node, const char *path, int64_t *out);
    int (*cfg_get_float)(const mp_config *node, const char *path, double *out);
    int (*cfg_get_bool)(const mp_config *node, const char *path, int *out);
    int (*cfg_get_string)(const mp_config *node, const char *path, const char **out);
    /* Children of a group, list or array. */
    int (*cfg_count)(const mp_config *node);
    const mp_config *(*cfg_child)(const mp_config *node, int index);
    const char *(*cfg_name)(const mp_config *node); /* NULL for list/array elements */
    int (*cfg_line)(const mp_config *node);          /* 0 when unknown */
    /* Writes "FILE:LINE: message" for `node` into err; returns -EINVAL so a validator
     * can `return api->cfg_error(...)`. */
    int (*cfg_error)(const mp_config *node, char *err, size_t err_len, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));
    /* Checks that every child name of the group `node` is in the NULL-terminated
     * `allowed` list; on the first unknown one writes "FILE:LINE: unknown key 'x'"
     * and returns -EINVAL. */
    int (*cfg_check_keys)(const mp_config *node, const char *const *allowed, char *err,
                          size_t err_len);

    /* --- Extra gRPC services ---
     * Register a method served by the host's gRPC server, e.g.
     * "/lauradb.cluster.RouterService/Query". Only valid during create(). The name is
     * copied. Returns 0, -EEXIST if another instance owns it, -EINVAL if malformed.
     * Requests and responses are protobuf bytes; the host never parses them. */
    int (*register_rpc)(mp_instance *inst, const char *full_method, int server_streaming,
                        mp_rpc_handler handler);
    /* Queue one response message (copied). Any thread. 0, or -ECANCELED when the client
     * has gone (stop producing), -EPROTO if a unary call already sent one. */
    int (*rpc_send)(mp_rpc_call *call, const void *msg, size_t len);
    /* End the call with a status (message may be NULL). Any thread; exactly once. The
     * call handle is invalid afterwards. */
    void (*rpc_finish)(mp_rpc_call *call, mp_rpc_code code, const char *message);
    /* Nonzero once the client cancelled or its deadline passed. Any thread. */
    int (*rpc_cancelled)(const mp_rpc_call *call);

    /* --- Statistics (any thread; lock-free) ---
     * One finished request: latency in microseconds, success flag, bytes each way.
     * Feeds ModuleService.GetStats/GetMetrics for the instance. */
    void (*stats_request)(mp_instance *inst, uint64_t latency_us, int ok, uint64_t bytes_in,
                          uint64_t bytes_out);
    /* Connection gauge: +1 when one opens, -1 when it closes. */
    void (*stats_connection)(mp_instance *inst, int delta);

    /* --- Identity --- */
    const char *(*instance_id)(const mp_instance *inst); /* valid while inst lives */
    /* The host's state directory for this instance (created on demand, mode 0700).
     * The string is valid until the next call on the same thread: copy it. NULL if it
     * cannot be created (the reason is logged). */
    const char *(*instance_state_dir)(const mp_instance *inst);

    /* ---- Connections (ABI 1.1). Only on the connection's worker thread. ---- */
    /* Install callbacks and their context (replaces any earlier ones). */
    void (*conn_set_handler)(mp_conn *c, const mp_conn_handler *h, void *ctx);
    /* Queue bytes for sending (copied). Returns 0, 1 when the backlog passed the
     * high-water mark (pause producing until on_drain), or -EPIPE when the connection
     * is closing. Past the hard limit the host closes it (MP_CLOSE_OVERFLOW): a slow
     * reader never makes the host buffer without bound. */
    int (*conn_send)(mp_conn *c, const void *data, size_t len);
    /* Same without copying: `data` must stay valid until `done(arg)` runs (on this
     * worker, also when the connection closes first). */
    int (*conn_send_zc)(mp_conn *c, const void *data, size_t len, void (*done)(void *arg),
                        void *arg);
    /* Close after queued output is written (graceful) / at once with a reset. */
    void (*conn_close)(mp_conn *c);
    void (*conn_abort)(mp_conn *c);
    /* Half-close: send FIN once queued output is written. */
    int (*conn_shutdown_write)(mp_conn *c);
    /* Stop / restart delivering on_data (backpressure towards the peer). */
    void (*conn_pause)(mp_conn *c);
    void (*conn_resume)(mp_conn *c);
    /* One-shot timer bound to the connection: fn(arg) runs on its worker after `ms`,
     * unless cancelled first or the connection closes (then it never runs). */
    mp_timer *(*timer_add)(mp_conn *c, uint64_t ms, void (*fn)(void *arg), void *arg);
    void (*timer_cancel)(mp_conn *c, mp_timer *t);
    /* Open an outbound TCP connection on the same worker as `from`. on_connect reports
     * the outcome (timeout_ms 0 = the host default). *out is valid at once (sending
     * before on_connect queues). 0 or negative errno. */
    int (*conn_connect)(mp_conn *from, const struct sockaddr *addr, uint32_t addr_len,
                        uint32_t timeout_ms, const mp_conn_handler *h, void *ctx,
                        mp_conn **out);
    /* Hand both connections to the host's byte pump: bytes flow a->b and b->a with
     * backpressure and without copies until both directions ended; then both close.
     * The plugin gets only on_close afterwards. 0 or negative errno. */
    int (*conn_pump)(mp_conn *a, mp_conn *b);
    /* What the NLB knew about it. */
    const mp_conn_info *(*conn_info)(const mp_conn *c);
    /* A pointer-sized slot per (instance, worker) for plugin state that lives per
     * worker and needs no locks: valid on the calling worker only. */
    void **(*worker_slot)(mp_instance *inst);
} mp_host_api;

/* What health() reports. The host presets struct_size; the plugin fills the rest. */
typedef struct mp_health_report {
    uint32_t struct_size;
    mp_health status;
    char message[256];
} mp_health_report;

/* A route as CanHandle sees it: the wire Route without its maps, plus header pairs.
 * All strings are borrowed, NUL-terminated, never NULL (empty when unset). */
typedef struct mp_route_view {
    uint32_t struct_size;
    const char *route_id;
    mp_protocol protocol;
    const char *source_pattern;
    const char *destination_pattern;
    int32_t source_port;
    int32_t destination_port;
    const char *path_pattern;
    int32_t priority;
    size_t header_count;
    const char *const *header_names;
    const char *const *header_values;
    /* ---- ABI 1.2: the Route's metadata map (e.g. the ALB's "upstream"). Check
     * MP_HAS_MEMBER against struct_size before reading. */
    size_t metadata_count;
    const char *const *metadata_names;
    const char *const *metadata_values;
} mp_route_view;

/* A rate limit as ModuleService.SetRateLimit stored it (1.2). Strings are borrowed and
 * never NULL. `target` is "*" for the whole instance; other forms are the plugin's to
 * define (the ALB reads "route:<route_id>" and "ip:<cidr>"). Rates of 0 are unset. */
typedef struct mp_rate_limit_view {
    uint32_t struct_size;
    const char *limit_id;
    const char *target;
    int64_t requests_per_second;
    int64_t requests_per_minute;
    int64_t requests_per_hour;
    int64_t burst_size;
    int enabled;
} mp_rate_limit_view;

/* A durable key-value store a storage plugin offers the host (1.2). The host keeps its
 * gRPC-made state in it (routes, rate limits, external registrations) and reads it back
 * at start. Keys are NUL-terminated UTF-8 up to 256 bytes; values are opaque, up to
 * 16 MiB. put/remove return only once the change is durable. Called on the control
 * thread; state is the storage instance's create() state. */
typedef int (*mp_state_scan_fn)(void *ctx, const char *key, const void *value, size_t len);
typedef struct mp_state_store_ops {
    uint32_t struct_size;
    int (*put)(void *state, const char *key, const void *value, size_t len, char *err,
               size_t err_len);
    /* 0, or -ENOENT when the key is absent (not an error for the host). */
    int (*remove)(void *state, const char *key, char *err, size_t err_len);
    /* fn for every key starting with prefix, in key order; the pointers are valid only
     * during the call. Non-zero from fn stops the scan and is returned. */
    int (*scan)(void *state, const char *prefix, mp_state_scan_fn fn, void *ctx, char *err,
                size_t err_len);
} mp_state_store_ops;

typedef struct mp_can_handle_result {
    uint32_t struct_size;
    int can_handle;
    int32_t priority;
    char reason[256];
} mp_can_handle_result;

/* Plugin-specific counters shown in ModuleStats.custom_stats. The plugin calls `add`
 * once per counter; name and value are copied. */
typedef struct mp_stats_sink {
    uint32_t struct_size;
    void *ctx;
    void (*add)(void *ctx, const char *name, const char *value);
} mp_stats_sink;

/*
 * The descriptor. Static and immutable in the plugin; the host reads it once per load.
 * Optional callbacks may be NULL.
 */
typedef struct mp_plugin_descriptor {
    uint32_t magic;       /* MP_PLUGIN_MAGIC */
    uint16_t abi_major;   /* MP_ABI_MAJOR the plugin was built with */
    uint16_t abi_minor;   /* MP_ABI_MINOR the plugin was built with */
    uint32_t struct_size; /* sizeof(mp_plugin_descriptor) as the plugin saw it */
    const char *name;     /* [a-z0-9_-]{1,32}; the default instance id */
    const char *version;  /* free-form, e.g. "1.2.0" */
    mp_module_type module_type;

    /* Check an instance's config section without side effects. `section` is a group
     * (possibly empty). Return 0, or negative errno with a reason in err (use
     * cfg_error so the reason carries FILE:LINE). Required. */
    int (*validate_config)(const mp_host_api *api, const mp_config *section, char *err,
                           size_t err_len);

    /* Build an instance from a validated section. On success store the instance state
     * in *state (owned by the plugin until destroy) and return 0. On failure return
     * negative errno with a reason; the host carries on without this instance. Required.
     */
    int (*create)(const mp_host_api *api, mp_instance *inst, const mp_config *section,
                  void **state, char *err, size_t err_len);

    /* Release everything create() made. Called once, after the last call into the
     * instance has returned. Required. */
    void (*destroy)(void *state);

    /* Apply a new, already validated section to a live instance. Optional: without it
     * a config change needs a reload (a new generation). */
    int (*reconfigure)(void *state, const mp_config *section, char *err, size_t err_len);

    /* Fill *out with the instance's current health. `deep` asks for the expensive
     * checks (upstreams, disk). Optional: without it the instance is HEALTHY. */
    void (*health)(void *state, int deep, mp_health_report *out);

    /* The module's own verdict on a route. Optional: without it the host decides from
     * the module's routes alone. Called from the control thread and (1.1) from worker
     * threads while routing connections: must be thread-safe and quick. */
    void (*can_handle)(void *state, const mp_route_view *route, mp_can_handle_result *out);

    /* Add plugin-specific counters. Optional. */
    void (*custom_stats)(void *state, const mp_stats_sink *sink);

    /* ---- ABI 1.1 ---- */
    /* A connection the NLB routed to this instance. Runs on the connection's worker;
     * call conn_set_handler before returning. Bytes the sniffer already read arrive
     * through on_data right after. Return 0 to take it, negative errno to refuse (the
     * host closes it and counts a refusal). Optional: without it the instance
     * receives no traffic. */
    int (*on_connection)(void *state, mp_conn *c, const mp_conn_info *info);

    /* ---- ABI 1.2 ---- */
    /* The instance's whole route table (ModuleService UpdateRoutes/DeleteRoute, or the
     * table restored at start or handed to a new generation). Control thread; the views
     * are valid only during the call, so copy what is kept. Return 0 to accept, or a
     * negative errno with the reason in err to refuse: the RPC then fails with that
     * reason and the previous table stays in force. Optional. */
    int (*routes_changed)(void *state, const mp_route_view *const *routes, size_t n,
                          char *err, size_t err_len);
    /* The same for the instance's rate limits (SetRateLimit/RemoveRateLimit). */
    int (*rate_limits_changed)(void *state, const mp_rate_limit_view *const *limits,
                               size_t n, char *err, size_t err_len);
    /* Non-NULL when the plugin can be the host's state store (host.state_store names
     * the instance). Static, like the descriptor. */
    const mp_state_store_ops *state_store;

    /* ---- ABI 1.3 ---- */
    /* A Reload found this instance's plugin file and settings unchanged, so no new
     * generation starts: re-read what the instance loads from files its settings name
     * (certificates and keys), as `nginx -s reload` would. Control thread. Return 0, or
     * a negative errno with the reason in err: the Reload answer carries it and the
     * instance goes on with what it had. Optional. */
    int (*reload_files)(void *state, char *err, size_t err_len);
} mp_plugin_descriptor;

/* The entry point's type. The returned pointer must stay valid while loaded. */
typedef const mp_plugin_descriptor *(*mp_plugin_entry_fn)(void);

/* The entry point every plugin defines (with MP_PLUGIN_DEFINE). */
const mp_plugin_descriptor *mp_plugin_entry(void);

/* Plugins define their entry with this macro so the symbol name and visibility are
 * right: MP_PLUGIN_DEFINE(my_descriptor); */
#define MP_PLUGIN_DEFINE(descriptor_var)                                         \
    __attribute__((visibility("default"))) const mp_plugin_descriptor *          \
    mp_plugin_entry(void)                                                        \
    {                                                                            \
        return &(descriptor_var);                                                \
    }

#ifdef __cplusplus
}
#endif

#endif /* MARCHPROXY_PLUGIN_H */
