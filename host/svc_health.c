/*
 * svc_health.c — grpc.health.v1.Health for the host and each plugin instance.
 *
 * Service names answered: "" (the whole process), "marchproxy.ModuleService",
 * "marchproxy.NLBService", every gRPC service a plugin registered (e.g.
 * "lauradb.cluster.RouterService", healthy when its instance is), and each instance
 * id. Check on an unknown name is NOT_FOUND and Watch sends SERVICE_UNKNOWN, as the
 * protocol specifies. Watch re-evaluates once a second and sends only changes.
 */
#include <stdlib.h>
#include <string.h>

#include "grpc/health/v1/health.pb-c.h"
#include "host.h"
#include "pb_util.h"
#include "rpc_proto.h"

#define WATCH_PERIOD_MS 1000
#define MAX_SERVICE_NAME 256

typedef Grpc__Health__V1__HealthCheckResponse__ServingStatus serving_status;
#define ST_UNKNOWN GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__UNKNOWN
#define ST_SERVING GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
#define ST_NOT_SERVING GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
#define ST_SERVICE_UNKNOWN GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN

static serving_status of_instance(struct mp_instance *inst)
{
    mp_instance_refresh_health(inst, false);
    return inst->health == MP_HEALTH_HEALTHY || inst->health == MP_HEALTH_DEGRADED
               ? ST_SERVING
               : ST_NOT_SERVING;
}

/* Does `inst`'s serving generation register a method of gRPC service `svc`? */
static bool serves(const struct mp_instance *inst, const char *svc)
{
    if (!inst->active)
        return false;
    size_t n = strlen(svc);
    for (size_t i = 0; i < inst->active->n_rpc; i++) {
        const char *p = inst->active->rpcs[i].path; /* "/pkg.Svc/Method" */
        if (strncmp(p + 1, svc, n) == 0 && p[1 + n] == '/')
            return true;
    }
    return false;
}

static serving_status evaluate(mp_host *h, const char *svc)
{
    bool stopping = mp_rpc_server_stopping(h->rpc);
    if (!*svc || !strcmp(svc, "marchproxy.ModuleService") || !strcmp(svc, "marchproxy.NLBService"))
        return stopping ? ST_NOT_SERVING : ST_SERVING;
    for (struct mp_instance *inst = h->instances; inst; inst = inst->next)
        if (!strcmp(inst->id, svc) || serves(inst, svc))
            return stopping ? ST_NOT_SERVING : of_instance(inst);
    return ST_SERVICE_UNKNOWN;
}

static mp_rpc_code check(mp_pb_call *pc, const void *vreq, void *vresp)
{
    const Grpc__Health__V1__HealthCheckRequest *req = vreq;
    Grpc__Health__V1__HealthCheckResponse *resp = vresp;
    if (strlen(req->service) > MAX_SERVICE_NAME)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "service name too long");
    serving_status st = evaluate(mp_pb_ctx(pc), req->service);
    if (st == ST_SERVICE_UNKNOWN)
        return mp_pb_fail(pc, MP_RPC_NOT_FOUND, "unknown service '%s'", req->service);
    resp->status = st;
    return MP_RPC_OK;
}

typedef struct watch {
    mp_pb_call *pc;
    mp_host *h;
    const char *service; /* points into the request, which lives as long as pc */
    serving_status last;
    mp_rpc_timer *timer;
} watch;

static void watch_end(watch *w, mp_rpc_code code, const char *msg)
{
    if (w->timer)
        mp_rpc_timer_cancel(w->h->rpc, w->timer);
    mp_pb_stream_finish(w->pc, code, msg);
    free(w);
}

static void watch_tick(void *arg)
{
    watch *w = arg;
    w->timer = NULL;
    serving_status st = evaluate(w->h, w->service);
    if (st != w->last) {
        Grpc__Health__V1__HealthCheckResponse m = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
        m.status = st;
        if (mp_pb_stream_send(w->pc, &m.base) < 0) {
            watch_end(w, MP_RPC_CANCELLED, "client went away");
            return;
        }
        w->last = st;
    }
    w->timer = mp_rpc_timer_add(w->h->rpc, WATCH_PERIOD_MS, watch_tick, w);
}

static void watch_cancelled(mp_pb_call *pc, void *arg) { watch_end(arg, MP_RPC_CANCELLED, NULL); }

static mp_rpc_code watch_start(mp_pb_call *pc, const void *vreq)
{
    const Grpc__Health__V1__HealthCheckRequest *req = vreq;
    if (strlen(req->service) > MAX_SERVICE_NAME)
        return mp_pb_fail(pc, MP_RPC_INVALID_ARGUMENT, "service name too long");
    watch *w = calloc(1, sizeof(*w));
    if (!w)
        return mp_pb_fail(pc, MP_RPC_RESOURCE_EXHAUSTED, "out of memory");
    w->pc = pc;
    w->h = mp_pb_ctx(pc);
    w->service = req->service;
    w->last = ST_UNKNOWN; /* never a real answer here, so the first tick always sends */
    mp_pb_stream_on_cancel(pc, watch_cancelled, w);
    watch_tick(w);
    return MP_RPC_OK;
}

static const mp_pb_handler handlers[] = {
    {"Check", check, NULL},
    {"Watch", NULL, watch_start},
};

int mp_svc_health_bind(mp_host *h, char *err, size_t err_len)
{
    return mp_pb_bind_service(h->rpc, &grpc__health__v1__health__descriptor, handlers,
                              sizeof(handlers) / sizeof(handlers[0]), h, err, err_len);
}
