/*
 * host.c — start-up and tear-down of the control plane in the order the parts depend
 * on each other: config, state directories, gRPC server, services, plugins (whose
 * create() registers methods before the server starts, so those get the core's fast
 * path), then listening. Tear-down runs the other way round.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dp.h"
#include "host.h"
#include "log.h"
#include "pb_util.h"
#include "plugin_loader.h"
#include "rpc_proto.h"
#include "state_persist.h"

/* Private plugin copies left by a process that was killed are never in use at start. */
static void clean_plugin_cache(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        unlink(path);
    }
    closedir(d);
}

/* Calls that only read leave the routing snapshot alone; anything else may have
 * changed routes, limits, weights or registrations. */
static void after_call(void *arg, const char *method)
{
    static const char *const readers[] = {"Get", "List", "Check", "Health", "Validate",
                                          "CanHandle", "RouteRequest", "ReportMetrics", NULL};
    for (const char *const *r = readers; *r; r++)
        if (strncmp(method, *r, strlen(*r)) == 0)
            return;
    mp_host_touch(arg);
    /* Heartbeats change liveness only, which is not kept across restarts */
    if (strcmp(method, "Heartbeat") != 0)
        mp_state_save(arg);
}

int mp_host_init(mp_host *h, const char *config_path, char *err, size_t err_len)
{
    memset(h, 0, sizeof(*h));
    h->started_ns = mp_wall_ns();
    h->drain_override_ms = -1;
    h->config_path = strdup(config_path);
    if (!h->config_path)
        return -ENOMEM;

    mp_host_config *cfg;
    int rc = mp_host_read_config(config_path, &cfg, &h->config_text, &h->config_text_len, err,
                                 err_len);
    if (rc < 0)
        return rc;
    mp_log_set_level((mp_log_level)cfg->log_level);

    char cache[4096];
    if ((rc = mp_state_dirs_ensure(cfg, cache, sizeof(cache), err, err_len)) < 0) {
        mp_config_free(cfg);
        return rc;
    }
    clean_plugin_cache(cache);

    if ((rc = mp_rpc_server_create(&cfg->grpc, &h->rpc, err, err_len)) < 0) {
        mp_config_free(cfg);
        return rc;
    }
    mp_host_api_init(h, &h->api);
    if ((rc = mp_nlb_init(h)) < 0) {
        snprintf(err, err_len, "cannot initialise the NLB: %s", strerror(-rc));
        mp_config_free(cfg);
        return rc;
    }
    if ((rc = mp_svc_module_bind(h, err, err_len)) < 0 ||
        (rc = mp_svc_nlb_bind(h, err, err_len)) < 0 ||
        (rc = mp_svc_health_bind(h, err, err_len)) < 0) {
        mp_config_free(cfg);
        return rc;
    }

    char msg[4096];
    rc = mp_host_apply_config(h, cfg, NULL, msg, sizeof(msg));
    if (!h->cfg) { /* nothing could be applied: not even a usable plugin_dir */
        snprintf(err, err_len, "%s", msg);
        return rc;
    }
    if (rc < 0)
        mp_warn("started with problems: %s", msg);
    else
        mp_info("plugins: %s", msg);
    if ((rc = mp_state_restore(h, err, err_len)) < 0)
        return rc;

    /* Workers (and their listening sockets) before the control plane answers, so a
     * client that sees SERVING can connect to the listeners. */
    if ((rc = dp_workers_start(h, err, err_len)) < 0)
        return rc;
    dp_start_publisher(h);
    mp_pb_set_after_unary(after_call, h);

    rc = mp_rpc_server_start(h->rpc, err, err_len);
    if (rc < 0)
        return rc;
    mp_info("gRPC control plane listening on %s", h->cfg->grpc.address);
    return 0;
}

void mp_host_stop_accepting(mp_host *h)
{
    for (int i = 0; i < h->n_workers; i++)
        dp_worker_post(&h->workers[i], MSG_STOP_ACCEPT, NULL);
}

void mp_host_stop_traffic(mp_host *h, int drain_ms)
{
    dp_workers_stop(h, drain_ms);
    if (h->rpc)
        dp_stop_publisher(h);
}

void mp_host_shutdown(mp_host *h)
{
    mp_host_stop_traffic(h, 0);
    mp_state_forget(h);
    while (h->instances)
        mp_instance_remove(h->instances);
    if (h->rpc)
        mp_nlb_destroy(h);
    mp_rpc_server_destroy(h->rpc);
    h->rpc = NULL;
    mp_pb_unbind_all();
    if (h->images)
        mp_warn("plugin images still referenced at exit");
    mp_config_free(h->cfg);
    h->cfg = NULL;
    free(h->config_text);
    free(h->config_path);
}
