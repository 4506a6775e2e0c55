/*
 * route_match.h — routing decisions: what a valid Route is, whether one routing entry
 * matches one request, and (route_select.c) which target wins for a request across
 * the NLB table and every in-process instance's own routes. The gRPC API (RouteRequest,
 * ValidateRoute, CanHandle) and the data path share these so the two never disagree.
 *
 * route_match.c is pure (protobuf-c types only) so it can be unit-tested alone;
 * route_select.c needs the host state and runs on the control thread.
 */
#ifndef MP_HOST_ROUTE_MATCH_H
#define MP_HOST_ROUTE_MATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "marchproxy/plugin.h"
#include "marchproxy/types.pb-c.h"

#define MP_ROUTE_ID_MAX 128
#define MP_ROUTE_PROTOCOL_MAX 16
#define MP_ROUTE_DEST_MAX 253
#define MP_ROUTE_MAX_HEADERS 64
#define MP_ROUTE_HEADER_NAME_MAX 256
#define MP_ROUTE_HEADER_VALUE_MAX 4096

/* One request as routing sees it. NULL or "" strings mean "not known" (a TCP stream
 * has no host or path); an entry that restricts a field does not match a request that
 * lacks it. Strings are borrowed. */
typedef struct mp_route_request {
    int protocol;          /* marchproxy.Protocol; 0 = unknown */
    int32_t dst_port;      /* 0 = unknown */
    const char *source_ip; /* client address, IPv4 or IPv6 text */
    const char *host;      /* SNI / Host, without port */
    const char *path;
    size_t n_headers;
    const char *const *header_names;
    const char *const *header_values;
} mp_route_request;

/* Checks every rule and returns 0, or -EINVAL with the first problem in err
 * ("route 'r1': source_pattern '10.0.0.0/33': prefix must be 0..32"). */
int mp_route_validate(const Marchproxy__Route *r, char *err, size_t err_len);

/* Same rules, reporting every problem through fn; returns how many there were. */
typedef void (*mp_route_problem_fn)(void *ctx, const char *problem);
size_t mp_route_validate_all(const Marchproxy__Route *r, mp_route_problem_fn fn, void *ctx);

/* Describe a wire Route used as a request (RouteRequest/CanHandle): protocol,
 * destination_port, source_pattern = client IP, destination_pattern = host,
 * path_pattern = path, headers. names/values (room for `cap`) receive the header
 * pointers; strings stay borrowed from r. Returns 0, or -E2BIG when r has more than
 * `cap` headers (a request that large would be refused anyway). */
int mp_route_request_from_wire(const Marchproxy__Route *r, mp_route_request *q,
                               const char **names, const char **values, size_t cap);

/* True when `entry` accepts `q` (rules in route_match.c). */
bool mp_route_entry_matches(const Marchproxy__Route *entry, const mp_route_request *q);

/* True for an IPv4 or IPv6 address in text form (no prefix). */
bool mp_route_ip_valid(const char *text);

/* "protocol=http port=8080 source=1.2.3.4 host=a.example path=/x" — only the known
 * fields — for refusal messages. */
void mp_route_request_describe(const mp_route_request *q, char *buf, size_t len);

/* The text of a Route field for Query filters and sorting (route_id, protocol,
 * source_pattern, destination_pattern, source_port, destination_port, path_pattern,
 * priority); -ENOENT for other names. */
int mp_route_field(const Marchproxy__Route *r, const char *field, char *buf, size_t len);

/* Lower-case protocol name from the wire enum ("http"; "any" for 0, "?" if unknown). */
const char *mp_route_protocol_name(int protocol);

/* The plugin-facing view (mp_route_view) of a request; route_id names the entry that
 * brought the request to the plugin. Strings stay borrowed from q. */
void mp_route_view_from_request(const mp_route_request *q, const char *route_id,
                                int32_t priority, mp_route_view *v);

/* A routing decision in the control plane's terms (NLBService.RouteRequest), copied
 * so it outlives changes to the tables. Made by dp_route_request (dp.h). */
#define MP_ROUTE_TARGET_MAX 256
#define MP_ROUTE_ADDRESS_MAX 300
typedef struct mp_route_decision {
    char target_id[MP_ROUTE_TARGET_MAX];
    int module_type;                    /* wire ModuleType */
    char target_address[MP_ROUTE_ADDRESS_MAX]; /* "inproc:<id>" or the module's address */
    int32_t priority;
    char route_id[MP_ROUTE_ID_MAX + 1];
    mp_instance *inst;                  /* in-process target; NULL for external */
} mp_route_decision;

/* ---- an instance's verdict (instance_verdict.c; control thread) ---- */

/* The instance's own verdict on a route: the plugin's can_handle when it has one,
 * otherwise "yes" iff one of the instance's routes matches the route as a request
 * (priority = that route's priority; the highest-priority match is reported). *out is
 * fully overwritten; reason is always NUL-terminated. */
void mp_instance_verdict(mp_instance *inst, const Marchproxy__Route *route,
                         mp_can_handle_result *out);

#endif
