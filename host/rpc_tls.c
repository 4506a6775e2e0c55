/*
 * rpc_tls.c — certificate material for the gRPC server. The C core calls the fetcher
 * on its own threads once per handshake, so it only stat()s the files and re-reads
 * them when an mtime, size or inode changed; a failed re-read keeps the previous,
 * working certificates and says why in the log.
 */
#include "rpc_tls.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"

#define TLS_MAX_PEM_BYTES (1024 * 1024)

struct file_id {
    struct timespec mtime;
    off_t size;
    ino_t ino;
};

struct mp_rpc_tls {
    char *cert_path, *key_path, *ca_path;
    pthread_mutex_t lock;
    struct file_id ids[3];
    int loaded;
};

static int read_pem(const char *path, char **out, char *err, size_t err_len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        snprintf(err, err_len, "%s: %s", path, strerror(e));
        return -e;
    }
    char *buf = malloc(TLS_MAX_PEM_BYTES + 1);
    size_t n = buf ? fread(buf, 1, TLS_MAX_PEM_BYTES + 1, f) : 0;
    fclose(f);
    if (!buf)
        return -ENOMEM;
    if (n == 0 || n > TLS_MAX_PEM_BYTES || !strstr(buf, "-----BEGIN")) {
        free(buf);
        snprintf(err, err_len, "%s: %s", path,
                 n > TLS_MAX_PEM_BYTES ? "larger than 1 MiB" : "not a PEM file");
        return -EINVAL;
    }
    buf[n] = '\0';
    *out = buf;
    return 0;
}

static void stat_ids(const mp_rpc_tls *t, struct file_id ids[3])
{
    const char *paths[3] = {t->cert_path, t->key_path, t->ca_path};
    memset(ids, 0, sizeof(struct file_id) * 3);
    for (int i = 0; i < 3; i++) {
        struct stat st;
        if (paths[i] && stat(paths[i], &st) == 0) {
            ids[i].mtime = st.st_mtim;
            ids[i].size = st.st_size;
            ids[i].ino = st.st_ino;
        }
    }
}

/* Builds a core certificate config from the files; NULL with a reason on failure. */
static grpc_ssl_server_certificate_config *load_config(const mp_rpc_tls *t, char *err,
                                                       size_t err_len)
{
    char *cert = NULL, *key = NULL, *ca = NULL;
    grpc_ssl_server_certificate_config *cfg = NULL;
    if (read_pem(t->cert_path, &cert, err, err_len) < 0 ||
        read_pem(t->key_path, &key, err, err_len) < 0 ||
        (t->ca_path && read_pem(t->ca_path, &ca, err, err_len) < 0))
        goto out;
    grpc_ssl_pem_key_cert_pair pair = {.private_key = key, .cert_chain = cert};
    /* Debian's core asserts on NULL roots even when no client certificate is asked
     * for; the server's own chain is a harmless stand-in then. */
    cfg = grpc_ssl_server_certificate_config_create(ca ? ca : cert, &pair, 1);
    if (!cfg)
        snprintf(err, err_len, "gRPC rejected the certificate or key");
out:
    free(cert);
    if (key) {
        memset(key, 0, strlen(key)); /* key material does not linger in freed memory */
        free(key);
    }
    free(ca);
    return cfg;
}

static grpc_ssl_certificate_config_reload_status fetch(void *user,
                                                       grpc_ssl_server_certificate_config **cfg)
{
    mp_rpc_tls *t = user;
    struct file_id ids[3];
    stat_ids(t, ids);
    pthread_mutex_lock(&t->lock);
    if (t->loaded && memcmp(ids, t->ids, sizeof(ids)) == 0) {
        pthread_mutex_unlock(&t->lock);
        return GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_UNCHANGED;
    }
    char err[512];
    *cfg = load_config(t, err, sizeof(err));
    if (!*cfg) {
        int had = t->loaded;
        pthread_mutex_unlock(&t->lock);
        mp_logf(MP_LOG_ERROR, "grpc", "TLS certificate reload failed (%s)%s", err,
                had ? "; keeping the previous certificates" : "");
        return had ? GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_UNCHANGED
                   : GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_FAIL;
    }
    if (t->loaded)
        mp_logf(MP_LOG_INFO, "grpc", "TLS certificates reloaded from %s", t->cert_path);
    memcpy(t->ids, ids, sizeof(ids));
    t->loaded = 1;
    pthread_mutex_unlock(&t->lock);
    return GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_NEW;
}

int mp_rpc_tls_create(const mp_grpc_cfg *cfg, mp_rpc_tls **out, grpc_server_credentials **creds,
                      char *err, size_t err_len)
{
    mp_rpc_tls *t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    pthread_mutex_init(&t->lock, NULL);
    t->cert_path = strdup(cfg->tls_cert);
    t->key_path = cfg->tls_key ? strdup(cfg->tls_key) : NULL;
    t->ca_path = cfg->tls_client_ca ? strdup(cfg->tls_client_ca) : NULL;
    if (!t->cert_path || !t->key_path || (cfg->tls_client_ca && !t->ca_path)) {
        snprintf(err, err_len, "grpc.tls needs both cert and key");
        mp_rpc_tls_destroy(t);
        return -EINVAL;
    }
    /* Fail at start on unreadable or malformed files. */
    grpc_ssl_server_certificate_config *probe = load_config(t, err, err_len);
    if (!probe) {
        mp_rpc_tls_destroy(t);
        return -EINVAL;
    }
    grpc_ssl_server_certificate_config_destroy(probe);

    grpc_ssl_client_certificate_request_type req = GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
    if (t->ca_path)
        req = cfg->require_client_cert
                  ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                  : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY;
    grpc_ssl_server_credentials_options *opts =
        grpc_ssl_server_credentials_create_options_using_config_fetcher(req, fetch, t);
    *creds = opts ? grpc_ssl_server_credentials_create_with_options(opts) : NULL;
    if (!*creds) {
        snprintf(err, err_len, "cannot create TLS credentials for gRPC");
        mp_rpc_tls_destroy(t);
        return -EINVAL;
    }
    *out = t;
    return 0;
}

void mp_rpc_tls_destroy(mp_rpc_tls *t)
{
    if (!t)
        return;
    free(t->cert_path);
    free(t->key_path);
    free(t->ca_path);
    pthread_mutex_destroy(&t->lock);
    free(t);
}
