/*
 * main.c — the marchproxy command: options, signal handling and the thread layout.
 *
 * Signals are blocked in every thread before gRPC starts its own (they inherit the
 * mask), and one thread takes them with sigwait: SIGHUP reloads, SIGTERM/SIGINT stop.
 * The main thread becomes the control thread that drives the gRPC completion queue.
 */
#include <errno.h>
#include <getopt.h>
#include <grpc/grpc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host.h"
#include "log.h"

#ifndef MP_DEFAULT_CONFIG
#define MP_DEFAULT_CONFIG "/etc/marchproxy/marchproxy.conf"
#endif

static void usage(FILE *to)
{
    fprintf(to,
            "usage: marchproxy [-c FILE] [-t] [-v] [-h]\n"
            "  -c FILE   configuration file (default %s)\n"
            "  -t        check the configuration and the plugins it names, then exit\n"
            "            (0 when valid, 1 with FILE:LINE: reason otherwise)\n"
            "  -v        print the version and plugin ABI, then exit\n"
            "  -h        this help\n"
            "Signals: SIGHUP re-reads the configuration and the plugin directory;\n"
            "SIGTERM or SIGINT stop after in-flight work finishes.\n",
            MP_DEFAULT_CONFIG);
}

typedef struct signal_ctx {
    mp_host *host;
    sigset_t set;
} signal_ctx;

static void reload_on_control_thread(void *arg)
{
    mp_host *h = arg;
    char msg[8192];
    mp_info("SIGHUP: reloading");
    mp_host_reload(h, NULL, msg, sizeof(msg)); /* logs its own outcome */
}

static void *signal_thread(void *arg)
{
    signal_ctx *s = arg;
    for (;;) {
        int sig;
        if (sigwait(&s->set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            if (mp_rpc_server_post(s->host->rpc, reload_on_control_thread, s->host) < 0)
                mp_err("SIGHUP: out of memory, reload skipped");
            continue;
        }
        if (sig == SIGTERM || sig == SIGINT) {
            int grace = (int)(s->host->cfg->drain_timeout_ms < 5000 ? s->host->cfg->drain_timeout_ms
                                                                    : 5000);
            mp_info("%s: stopping; open connections get %lld ms to finish", strsignal(sig),
                    (long long)s->host->cfg->drain_timeout_ms);
            mp_host_stop_accepting(s->host);
            mp_rpc_server_stop(s->host->rpc, grace);
            return NULL;
        }
        if (sig == SIGUSR1) /* sent by main to end this thread after a stop */
            return NULL;
    }
}

int main(int argc, char **argv)
{
    const char *config = MP_DEFAULT_CONFIG;
    bool check_only = false;
    int opt;
    while ((opt = getopt(argc, argv, "c:tvh")) != -1) {
        switch (opt) {
        case 'c':
            config = optarg;
            break;
        case 't':
            check_only = true;
            break;
        case 'v':
            printf("marchproxy %s (plugin ABI %d.%d)\n", MP_VERSION, MP_ABI_MAJOR, MP_ABI_MINOR);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "marchproxy: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }

    char err[8192];
    if (check_only) {
        mp_log_set_level(MP_LOG_WARN);
        if (mp_host_check_config(config, err, sizeof(err)) < 0) {
            fprintf(stderr, "%s\n", err);
            fprintf(stderr, "marchproxy: configuration file %s test failed\n", config);
            return 1;
        }
        printf("marchproxy: configuration file %s test is successful\n", config);
        return 0;
    }

    signal_ctx sc;
    sigemptyset(&sc.set);
    sigaddset(&sc.set, SIGHUP);
    sigaddset(&sc.set, SIGTERM);
    sigaddset(&sc.set, SIGINT);
    sigaddset(&sc.set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &sc.set, NULL);
    signal(SIGPIPE, SIG_IGN); /* peers that vanish are errors on the socket, not death */

    grpc_init();
    static mp_host host;
    sc.host = &host;
    if (mp_host_init(&host, config, err, sizeof(err)) < 0) {
        fprintf(stderr, "marchproxy: %s\n", err);
        mp_host_shutdown(&host);
        grpc_shutdown();
        return 1;
    }
    pthread_t sig_tid;
    if (pthread_create(&sig_tid, NULL, signal_thread, &sc) != 0) {
        fprintf(stderr, "marchproxy: cannot start the signal thread\n");
        mp_host_shutdown(&host);
        grpc_shutdown();
        return 1;
    }

    mp_rpc_server_run(host.rpc); /* until SIGTERM/SIGINT */

    pthread_kill(sig_tid, SIGUSR1); /* harmless if it already returned */
    pthread_join(sig_tid, NULL);
    mp_host_stop_traffic(&host, (int)host.cfg->drain_timeout_ms);
    mp_host_shutdown(&host);
    grpc_shutdown();
    mp_info("stopped");
    return 0;
}
