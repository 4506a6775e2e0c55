/*
 * config.h — the host's configuration: one libconfig file parsed into an immutable
 * mp_host_config. Owns the schema of the host-level sections (host, grpc, listeners,
 * routes, rate_limits, instances) and the FILE:LINE error reporting for them.
 * Plugin sections (instances.<id>.settings) are kept as libconfig subtrees and
 * validated by their plugins through the mp_config view (config_view.h).
 *
 * Ownership: mp_config_load returns a tree the caller owns and releases with
 * mp_config_free. Every string and array inside belongs to that tree.
 */
#ifndef MP_HOST_CONFIG_H
#define MP_HOST_CONFIG_H

#include <libconfig.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MP_DEFAULT_GRPC_ADDRESS "127.0.0.1:50051"
#define MP_DEFAULT_MAX_MESSAGE_BYTES (4 * 1024 * 1024)

typedef struct mp_grpc_cfg {
    char *address;             /* "host:port"; default MP_DEFAULT_GRPC_ADDRESS */
    int64_t max_message_bytes; /* receive and send limit; default 4 MiB, 1 KiB..64 MiB */
    int max_concurrent_streams; /* per connection; default 100 */
    /* TLS: all three paths absent = plaintext. cert+key = TLS. + client_ca = mTLS. */
    char *tls_cert;
    char *tls_key;
    char *tls_client_ca;
    bool require_client_cert; /* only with tls_client_ca; default true when it is set */
} mp_grpc_cfg;

typedef struct mp_listener_cfg {
    char *name;           /* unique */
    char *address;        /* "host:port", "[v6]:port" */
    char **modules;       /* instance ids allowed to receive traffic; n_modules may be 0 = any */
    size_t n_modules;
    char *default_module; /* for server-first protocols (MySQL); NULL if none */
    int64_t sniff_timeout_ms; /* default 5000 */
    int protocol;         /* marchproxy.Protocol the listener is bound to; 0 = sniff.
                           * Server-first protocols (mysql) need it: their clients wait
                           * for the server to speak. */
    int line;
} mp_listener_cfg;

typedef struct mp_route_cfg {
    char *id;            /* unique among config routes */
    int protocol;        /* marchproxy.Protocol number; 0 = any */
    char *source;        /* CIDR ("10.0.0.0/8", "::1/128") or NULL = any */
    char *destination;   /* host pattern or NULL */
    int32_t destination_port; /* 0 = any */
    char *path;          /* path prefix or NULL */
    int32_t priority;    /* higher wins; default 0 */
    char *target;        /* instance id that receives matching traffic; required */
    int line;
} mp_route_cfg;

typedef struct mp_rate_limit_cfg {
    char *id;            /* unique per instance */
    char *instance;      /* which instance it belongs to; required */
    char *target;        /* free-form selector, e.g. "*", "route:r1", "ip" */
    int64_t requests_per_second;
    int64_t requests_per_minute;
    int64_t requests_per_hour;
    int64_t burst_size;
    bool enabled;        /* default true */
    int line;
} mp_rate_limit_cfg;

typedef struct mp_instance_cfg {
    char *id;                     /* the group's name in "instances" */
    char *plugin;                 /* plugin name (descriptor name); default = id */
    bool enabled;                 /* default true */
    int32_t max_connections;      /* default 0 = unlimited */
    const config_setting_t *settings; /* the plugin's section; never NULL (may be an
                                       * empty group synthesised by the loader) */
    int line;
} mp_instance_cfg;

typedef struct mp_host_config {
    config_t lc;        /* owns the parsed libconfig tree */
    char *path;         /* the file as given */
    char *dir;          /* its directory, for relative paths */

    /* host { } */
    int workers;            /* 0 = online CPUs; max 256 */
    char *plugin_dir;       /* absolute after load; default "<dir>/plugins" */
    char *state_dir;        /* absolute after load; default "<dir>/state" */
    int log_level;          /* mp_log_level; "error" "warn" "info" "debug"; default info */
    bool autoload;          /* plugins in plugin_dir without an instance get one named
                             * after the plugin; default true */
    int64_t drain_timeout_ms; /* default 30000 */
    char *state_store;      /* instance whose plugin keeps the host's gRPC-made state
                             * (ABI 1.2 state_store); NULL = kept in memory only */
    int state_store_line;

    mp_grpc_cfg grpc;

    mp_listener_cfg *listeners;
    size_t n_listeners;
    mp_route_cfg *routes;
    size_t n_routes;
    mp_rate_limit_cfg *rate_limits;
    size_t n_rate_limits;
    mp_instance_cfg *instances;
    size_t n_instances;
} mp_host_config;

/* Parse and validate `path`. On success *out is a new tree and 0 is returned. On
 * failure returns -EINVAL (or -errno for I/O) with "FILE:LINE: reason" in err. */
int mp_config_load(const char *path, mp_host_config **out, char *err, size_t err_len);

/* Parse and validate from a string (UpdateNLBConfig); `name` stands in for the file
 * name in messages and `base_dir` resolves relative paths. */
int mp_config_load_string(const char *text, const char *name, const char *base_dir,
                          mp_host_config **out, char *err, size_t err_len);

void mp_config_free(mp_host_config *cfg);

/* host.workers, or one per online CPU when 0; at most MP_CONFIG_MAX_WORKERS. */
#define MP_CONFIG_MAX_WORKERS 256
int mp_config_worker_count(const mp_host_config *cfg);

/* Whether two configs listen differently (names or addresses): listening sockets are
 * opened at start, so such a change needs a restart. */
bool mp_config_listeners_differ(const mp_host_config *a, const mp_host_config *b);

/* Lookups; NULL when absent. */
const mp_instance_cfg *mp_config_find_instance(const mp_host_config *cfg, const char *id);

/* Parse "host:port" / "[v6]:port" into a sockaddr; 0 or -EINVAL with reason. Used for
 * listeners and the gRPC address. */
struct sockaddr_storage;
int mp_parse_address(const char *text, struct sockaddr_storage *out, unsigned *out_len,
                     char *err, size_t err_len);

/* Protocol names used in the config ("http", "postgres", ...) <-> Protocol numbers. */
int mp_protocol_from_name(const char *name); /* -1 if unknown */
const char *mp_protocol_name(int protocol);  /* "unspecified" for 0 / unknown */

#endif /* MP_HOST_CONFIG_H */
