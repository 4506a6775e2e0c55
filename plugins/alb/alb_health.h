/*
 * alb_health.h — active health checks for the ALB's upstream members: one thread per
 * ALB instance sends "GET <path>" to every member of every pool that has checks
 * configured, on its own schedule, and flips the member's `healthy` flag after
 * healthy_threshold consecutive successes / unhealthy_threshold consecutive failures.
 * Members start healthy (as nginx does), so traffic flows before the first verdict.
 */
#ifndef ALB_HEALTH_H
#define ALB_HEALTH_H

#include <stddef.h>
#include <stdint.h>

#include "alb_pool.h"
#include "marchproxy/plugin.h"

#define ALB_HC_PATH_MAX 256
#define ALB_HC_EXPECT_MAX 8

/* One upstream's check settings (HealthCheckConfig in the wire spec, in ms). */
typedef struct alb_hc_config {
    char path[ALB_HC_PATH_MAX]; /* starts with '/' */
    uint16_t port;              /* 0: each member's own port (health_check_port) */
    uint32_t interval_ms, timeout_ms;
    uint32_t healthy_threshold, unhealthy_threshold;
    int nexpect; /* accepted status ranges, from "2xx", "200", "2xx,301" */
    struct {
        uint16_t lo, hi;
    } expect[ALB_HC_EXPECT_MAX];
} alb_hc_config;

/* Defaults: "/", 2000 ms interval, 1000 ms timeout, thresholds 2 / 3, expect "2xx". */
void alb_hc_config_default(alb_hc_config *hc);
/* Parses expect_status ("2xx", "204", "2xx,3xx", ...); 0 or -EINVAL. */
int alb_hc_parse_expect(const char *s, alb_hc_config *hc);
int alb_hc_status_ok(const alb_hc_config *hc, int status);

/* What the checker watches: a pool, its settings, a name for logs. All borrowed and
 * kept until alb_health_stop returns. */
typedef struct alb_health_target {
    alb_pool *pool;
    const alb_hc_config *hc;
    const char *name;
} alb_health_target;

typedef struct alb_health alb_health;

/* Starts the checker thread over `targets` (copied). With no targets it starts
 * nothing and sets *out to NULL. Transitions are logged through api->log(inst, ...).
 * 0 or negative errno. */
int alb_health_start(const mp_host_api *api, mp_instance *inst,
                     const alb_health_target *targets, int ntargets, alb_health **out,
                     char *err, size_t err_len);
/* Wakes the thread at once (no waiting out an interval), joins it, closes its sockets
 * and frees everything. NULL is fine. */
void alb_health_stop(alb_health *h);
/* Completed checks so far (for tests and stats). */
uint64_t alb_health_checks_done(const alb_health *h);

#endif
