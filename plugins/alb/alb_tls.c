/*
 * alb_tls.c — OpenSSL over memory for the ALB: server contexts (certificates picked by
 * SNI, ALPN "http/1.1", the protocol policy, reload by rebuilding), client contexts for
 * upstream TLS (verification, SNI, one cached session for resumption) and the
 * per-connection engine that turns ciphertext fed by the caller into plaintext
 * callbacks and plaintext writes into ciphertext sends. The API and the way the proxy
 * uses it are described in alb_tls.h.
 *
 * Copies: ciphertext the caller feeds is read by OpenSSL straight from the caller's
 * buffer through a small custom BIO (it is copied only when decryption is paused and
 * the rest must outlive the call); records OpenSSL encrypts go from its own write
 * buffer straight to io.send. Steady state allocates nothing: OpenSSL keeps its record
 * buffers (no SSL_MODE_RELEASE_BUFFERS) and plaintext is read into a buffer inside the
 * connection. Only handshake flights are gathered, so one flight is one send.
 */
#include "alb_tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* TLS 1.2 suites: ECDHE key exchange and AEAD only, AES-128-GCM first per key type
 * (hardware AES makes it the fastest, and 128 bits is ample). TLS 1.3 suites are all
 * AEAD: the same order, so the server's preference does not pick AES-256 by default. */
#define ALB_TLS12_CIPHERS                                                          \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                   \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define ALB_TLS13_SUITES \
    "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"
#define ALB_TLS_GROUPS "X25519:P-256:P-384"

static const unsigned char alpn_http11[] = "\x08http/1.1";

/* ------------------------------------------------------------ files */

struct file_id {
    struct timespec mtime;
    off_t size;
    ino_t ino;
};

static void id_of(const struct stat *st, struct file_id *id)
{
    memset(id, 0, sizeof(*id));
    id->mtime = st->st_mtim;
    id->size = st->st_size;
    id->ino = st->st_ino;
}

/* Opens the file once so an unreadable path gets the system's reason, and notes its
 * identity for alb_tls_server_ctx_changed. */
static int probe_file(const char *path, const char *what, struct file_id *id, char *err,
                      size_t err_len)
{
    if (!path || !*path) {
        snprintf(err, err_len, "no %s file given", what);
        return -EINVAL;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        snprintf(err, err_len, "%s file %s: %s", what, path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -EINVAL;
    }
    close(fd);
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, err_len, "%s file %s: not a regular file", what, path);
        return -EINVAL;
    }
    if (id)
        id_of(&st, id);
    return 0;
}

/* The reason of OpenSSL's last error, without the numeric prefix when it has a text. */
static const char *ssl_reason(char *buf, size_t len)
{
    unsigned long e = ERR_peek_last_error();
    if (!e)
        return "unknown OpenSSL error";
    const char *r = ERR_reason_error_string(e);
    if (r)
        return r;
    ERR_error_string_n(e, buf, len);
    return buf;
}

static int ssl_fail(char *err, size_t err_len, const char *fmt_what, const char *file)
{
    char tmp[128];
    snprintf(err, err_len, "%s %s: %s", fmt_what, file, ssl_reason(tmp, sizeof(tmp)));
    ERR_clear_error();
    return -EINVAL;
}

/* Encrypted keys would make OpenSSL prompt on the terminal: refuse them instead. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    return 0;
}

static int load_pair(SSL_CTX *x, const char *cert, const char *key, struct file_id ids[2],
                     char *err, size_t err_len)
{
    int rc = probe_file(cert, "certificate", &ids[0], err, err_len);
    if (rc == 0)
        rc = probe_file(key, "key", &ids[1], err, err_len);
    if (rc < 0)
        return rc;
    ERR_clear_error();
    SSL_CTX_set_default_passwd_cb(x, no_passphrase);
    if (SSL_CTX_use_certificate_chain_file(x, cert) != 1)
        return ssl_fail(err, err_len, "cannot load certificate", cert);
    if (SSL_CTX_use_PrivateKey_file(x, key, SSL_FILETYPE_PEM) != 1) {
        unsigned long e = ERR_peek_last_error();
        int r = ERR_GET_REASON(e);
        if (r == X509_R_KEY_VALUES_MISMATCH || r == X509_R_KEY_TYPE_MISMATCH) {
            snprintf(err, err_len, "key file %s does not match certificate %s", key, cert);
            ERR_clear_error();
            return -EINVAL;
        }
        return ssl_fail(err, err_len, "cannot load key", key);
    }
    if (SSL_CTX_check_private_key(x) != 1) {
        snprintf(err, err_len, "key file %s does not match certificate %s", key, cert);
        ERR_clear_error();
        return -EINVAL;
    }
    return 0;
}

/* What every context shares: versions, 1.2 suites, groups, no compression or
 * renegotiation, and no buffer release (it would mean a malloc per record). */
static int apply_policy(SSL_CTX *x, char *err, size_t err_len)
{
    if (SSL_CTX_set_min_proto_version(x, TLS1_2_VERSION) != 1 ||
        SSL_CTX_set_cipher_list(x, ALB_TLS12_CIPHERS) != 1 ||
        SSL_CTX_set_ciphersuites(x, ALB_TLS13_SUITES) != 1 ||
        SSL_CTX_set1_groups_list(x, ALB_TLS_GROUPS) != 1) {
        char tmp[128];
        snprintf(err, err_len, "TLS policy rejected: %s", ssl_reason(tmp, sizeof(tmp)));
        ERR_clear_error();
        return -EINVAL;
    }
    SSL_CTX_set_options(x, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_clear_mode(x, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_read_ahead(x, 1); /* fewer BIO reads: whole records in one go */
    return 0;
}

/* ------------------------------------------------------------ server contexts */

struct alb_tls_server_ctx {
    atomic_int refs;
    size_t n;
    SSL_CTX **ctxs;        /* one per certificate; [0] is the default and starts every SSL */
    char **paths;          /* cert, key, cert, key, ... */
    struct file_id *ids;   /* as read, same order as paths */
};

static void server_ctx_destroy(alb_tls_server_ctx *s)
{
    for (size_t i = 0; i < s->n; i++) {
        SSL_CTX_free(s->ctxs[i]);
        free(s->paths[2 * i]);
        free(s->paths[2 * i + 1]);
    }
    free(s->ctxs);
    free(s->paths);
    free(s->ids);
    free(s);
}

/* SNI: an exact name first, then a wildcard, in configured order; none → default. */
static int sni_select(SSL *ssl, int *alert, void *arg)
{
    const alb_tls_server_ctx *s = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!name || !*name || s->n < 2)
        return SSL_TLSEXT_ERR_OK;
    static const unsigned int pass_flags[2] = {
        X509_CHECK_FLAG_NO_WILDCARDS,
        X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS,
    };
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < s->n; i++) {
            X509 *leaf = SSL_CTX_get0_certificate(s->ctxs[i]);
            if (leaf && X509_check_host(leaf, name, 0, pass_flags[pass], NULL) == 1) {
                if (i != 0)
                    SSL_set_SSL_CTX(ssl, s->ctxs[i]);
                return SSL_TLSEXT_ERR_OK;
            }
        }
    }
    return SSL_TLSEXT_ERR_OK;
}

/* ALPN: "http/1.1" when offered; otherwise no answer and the handshake goes on. */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    unsigned char *sel = NULL, sel_len = 0;
    if (SSL_select_next_proto(&sel, &sel_len, alpn_http11, sizeof(alpn_http11) - 1, in,
                              inlen) == OPENSSL_NPN_NEGOTIATED) {
        *out = sel;
        *outlen = sel_len;
        return SSL_TLSEXT_ERR_OK;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

static int server_ctx_build(alb_tls_server_ctx *s, char *err, size_t err_len)
{
    /* One ticket key for all of this context's SSL_CTXs: a session resumed after SNI
     * moved it to another certificate's SSL_CTX still decrypts. */
    unsigned char keys[80];
    if (RAND_priv_bytes(keys, sizeof(keys)) != 1) {
        snprintf(err, err_len, "no randomness for session ticket keys");
        return -EIO;
    }
    int rc = 0;
    for (size_t i = 0; i < s->n && rc == 0; i++) {
        SSL_CTX *x = SSL_CTX_new(TLS_server_method());
        if (!x) {
            snprintf(err, err_len, "cannot create a TLS context");
            rc = -ENOMEM;
            break;
        }
        s->ctxs[i] = x;
        rc = apply_policy(x, err, err_len);
        if (rc < 0)
            break;
        SSL_CTX_set_options(x, SSL_OP_CIPHER_SERVER_PREFERENCE);
        /* Stateless tickets only: no shared session cache to lock across workers. */
        SSL_CTX_set_session_cache_mode(x, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_session_id_context(x, (const unsigned char *)"alb", 3);
        if (SSL_CTX_set_tlsext_ticket_keys(x, keys, sizeof(keys)) != 1) {
            snprintf(err, err_len, "cannot set session ticket keys");
            rc = -EINVAL;
            break;
        }
        SSL_CTX_set_alpn_select_cb(x, alpn_select, NULL);
        SSL_CTX_set_tlsext_servername_callback(x, sni_select);
        SSL_CTX_set_tlsext_servername_arg(x, s);
        rc = load_pair(x, s->paths[2 * i], s->paths[2 * i + 1], &s->ids[2 * i], err, err_len);
    }
    OPENSSL_cleanse(keys, sizeof(keys));
    return rc;
}

/* Copies the paths, builds, and returns the new context or a reason. */
static int server_ctx_make(const char *const *paths, size_t ncerts, alb_tls_server_ctx **out,
                           char *err, size_t err_len)
{
    *out = NULL;
    if (ncerts == 0) {
        snprintf(err, err_len, "a TLS listener needs at least one certificate");
        return -EINVAL;
    }
    alb_tls_server_ctx *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    atomic_init(&s->refs, 1);
    s->ctxs = calloc(ncerts, sizeof(*s->ctxs));
    s->paths = calloc(2 * ncerts, sizeof(*s->paths));
    s->ids = calloc(2 * ncerts, sizeof(*s->ids));
    if (!s->ctxs || !s->paths || !s->ids) {
        server_ctx_destroy(s);
        return -ENOMEM;
    }
    s->n = ncerts;
    for (size_t i = 0; i < 2 * ncerts; i++) {
        s->paths[i] = strdup(paths[i] ? paths[i] : "");
        if (!s->paths[i]) {
            server_ctx_destroy(s);
            return -ENOMEM;
        }
    }
    int rc = server_ctx_build(s, err, err_len);
    if (rc < 0) {
        server_ctx_destroy(s);
        return rc;
    }
    *out = s;
    return 0;
}

int alb_tls_server_ctx_new(const alb_tls_cert_files *certs, size_t ncerts,
                           alb_tls_server_ctx **out, char *err, size_t err_len)
{
    const char **paths = calloc(ncerts ? 2 * ncerts : 1, sizeof(*paths));
    if (!paths)
        return -ENOMEM;
    for (size_t i = 0; i < ncerts; i++) {
        paths[2 * i] = certs[i].cert_file;
        paths[2 * i + 1] = certs[i].key_file;
    }
    int rc = server_ctx_make(paths, ncerts, out, err, err_len);
    free(paths);
    return rc;
}

int alb_tls_server_ctx_reload(const alb_tls_server_ctx *cur, alb_tls_server_ctx **out,
                              char *err, size_t err_len)
{
    return server_ctx_make((const char *const *)cur->paths, cur->n, out, err, err_len);
}

int alb_tls_server_ctx_changed(const alb_tls_server_ctx *s)
{
    for (size_t i = 0; i < 2 * s->n; i++) {
        struct stat st;
        struct file_id now;
        if (stat(s->paths[i], &st) < 0)
            return 1;
        id_of(&st, &now);
        if (memcmp(&now, &s->ids[i], sizeof(now)) != 0)
            return 1;
    }
    return 0;
}

alb_tls_server_ctx *alb_tls_server_ctx_ref(alb_tls_server_ctx *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

void alb_tls_server_ctx_unref(alb_tls_server_ctx *s)
{
    if (s && atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
        server_ctx_destroy(s);
}

/* ------------------------------------------------------------ client contexts */

struct alb_tls_client_ctx {
    atomic_int refs;
    SSL_CTX *ctx;
    char *ca_file, *server_name, *cert_file, *key_file;
    int no_verify;
    /* The latest session the upstream gave, for the next connection to the same name.
     * The only mutable part; workers share it under the lock. */
    pthread_mutex_t lock;
    SSL_SESSION *session;
    char session_name[256];
};

static void client_ctx_destroy(alb_tls_client_ctx *cc)
{
    SSL_CTX_free(cc->ctx);
    SSL_SESSION_free(cc->session);
    pthread_mutex_destroy(&cc->lock);
    free(cc->ca_file);
    free(cc->server_name);
    free(cc->cert_file);
    free(cc->key_file);
    free(cc);
}

static int dup_opt(const char *in, char **out)
{
    *out = NULL;
    if (!in)
        return 0;
    *out = strdup(in);
    return *out ? 0 : -ENOMEM;
}

static int client_new_session(SSL *ssl, SSL_SESSION *sess);

int alb_tls_client_ctx_new(const alb_tls_client_opts *o, alb_tls_client_ctx **out, char *err,
                           size_t err_len)
{
    *out = NULL;
    if ((o->cert_file != NULL) != (o->key_file != NULL)) {
        snprintf(err, err_len, "a client certificate needs both cert_file and key_file");
        return -EINVAL;
    }
    if (o->server_name && strlen(o->server_name) >= sizeof(((alb_tls_client_ctx *)0)->session_name)) {
        snprintf(err, err_len, "server name too long");
        return -EINVAL;
    }
    alb_tls_client_ctx *cc = calloc(1, sizeof(*cc));
    if (!cc)
        return -ENOMEM;
    atomic_init(&cc->refs, 1);
    pthread_mutex_init(&cc->lock, NULL);
    cc->no_verify = o->no_verify;
    int rc = 0;
    if (dup_opt(o->ca_file, &cc->ca_file) || dup_opt(o->server_name, &cc->server_name) ||
        dup_opt(o->cert_file, &cc->cert_file) || dup_opt(o->key_file, &cc->key_file)) {
        rc = -ENOMEM;
        goto fail;
    }
    cc->ctx = SSL_CTX_new(TLS_client_method());
    if (!cc->ctx) {
        snprintf(err, err_len, "cannot create a TLS context");
        rc = -ENOMEM;
        goto fail;
    }
    rc = apply_policy(cc->ctx, err, err_len);
    if (rc < 0)
        goto fail;
    if (SSL_CTX_set_alpn_protos(cc->ctx, alpn_http11, sizeof(alpn_http11) - 1) != 0) {
        snprintf(err, err_len, "cannot set ALPN");
        rc = -ENOMEM;
        goto fail;
    }
    if (!cc->no_verify) {
        SSL_CTX_set_verify(cc->ctx, SSL_VERIFY_PEER, NULL);
        ERR_clear_error();
        if (cc->ca_file) {
            rc = probe_file(cc->ca_file, "CA", NULL, err, err_len);
            if (rc < 0)
                goto fail;
            if (SSL_CTX_load_verify_file(cc->ctx, cc->ca_file) != 1) {
                rc = ssl_fail(err, err_len, "cannot load CA file", cc->ca_file);
                goto fail;
            }
        } else if (SSL_CTX_set_default_verify_paths(cc->ctx) != 1) {
            rc = ssl_fail(err, err_len, "cannot load the system trust store", "(default paths)");
            goto fail;
        }
    }
    if (cc->cert_file) {
        struct file_id ids[2];
        rc = load_pair(cc->ctx, cc->cert_file, cc->key_file, ids, err, err_len);
        if (rc < 0)
            goto fail;
    }
    SSL_CTX_set_session_cache_mode(cc->ctx,
                                   SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(cc->ctx, client_new_session);
    SSL_CTX_set_app_data(cc->ctx, cc);
    *out = cc;
    return 0;
fail:
    client_ctx_destroy(cc);
    return rc;
}

int alb_tls_client_ctx_reload(const alb_tls_client_ctx *cur, alb_tls_client_ctx **out,
                              char *err, size_t err_len)
{
    alb_tls_client_opts o = {
        .ca_file = cur->ca_file, .no_verify = cur->no_verify,
        .server_name = cur->server_name, .cert_file = cur->cert_file,
        .key_file = cur->key_file,
    };
    return alb_tls_client_ctx_new(&o, out, err, err_len);
}

alb_tls_client_ctx *alb_tls_client_ctx_ref(alb_tls_client_ctx *cc)
{
    atomic_fetch_add_explicit(&cc->refs, 1, memory_order_relaxed);
    return cc;
}

void alb_tls_client_ctx_unref(alb_tls_client_ctx *cc)
{
    if (cc && atomic_fetch_sub_explicit(&cc->refs, 1, memory_order_acq_rel) == 1)
        client_ctx_destroy(cc);
}

/* ------------------------------------------------------------ connections */

struct alb_tls_conn {
    SSL *ssl;
    alb_tls_server_ctx *sctx; /* exactly one of the two holds a reference */
    alb_tls_client_ctx *cctx;
    alb_tls_io io;
    enum alb_tls_state state; /* HANDSHAKING, OPEN or ERROR; CLOSED is derived */
    int err_code;
    int paused, peer_closed, sent_close, in_eof, send_bp, send_err;
    int gather; /* inside SSL_do_handshake/SSL_read of run(): gather what it sends */
    int depth, free_pending;
    /* Input: the caller's bytes of the current alb_tls_feed (borrowed), then kept ones. */
    const uint8_t *b_p;
    size_t b_n;
    uint8_t *in;
    size_t in_off, in_len, in_cap;
    /* Plaintext waiting to be encrypted: during the handshake, or held by ALB_TLS_MORE. */
    uint8_t *out;
    size_t out_len, out_cap;
    /* Ciphertext OpenSSL sent from inside run() (flights, tickets, alerts), sent as one
     * piece when run() ends. */
    uint8_t *hs;
    size_t hs_len, hs_cap;
    char sni[256];
    char alpn[32];
    char err[192];
    uint8_t pt[ALB_TLS_PLAIN_CHUNK];
};

static int grow(uint8_t **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap : 4096;
    while (ncap < need)
        ncap *= 2;
    uint8_t *nb = realloc(*buf, ncap);
    if (!nb)
        return -ENOMEM;
    *buf = nb;
    *cap = ncap;
    return 0;
}

static int append(uint8_t **buf, size_t *len, size_t *cap, const void *p, size_t n)
{
    if (!n)
        return 0;
    if (grow(buf, cap, *len + n) < 0)
        return -ENOMEM;
    memcpy(*buf + *len, p, n);
    *len += n;
    return 0;
}

static size_t kept_in(const alb_tls_conn *c)
{
    return c->in_len - c->in_off;
}

/* Appends to the kept input, compacting first so the buffer does not creep. */
static int keep_input(alb_tls_conn *c, const uint8_t *p, size_t n)
{
    if (c->in_off) {
        memmove(c->in, c->in + c->in_off, kept_in(c));
        c->in_len -= c->in_off;
        c->in_off = 0;
    }
    return append(&c->in, &c->in_len, &c->in_cap, p, n);
}

/* The unread rest of the caller's bytes goes in front of what was kept meanwhile. */
static int keep_borrowed(alb_tls_conn *c)
{
    size_t n = c->b_n;
    const uint8_t *p = c->b_p;
    c->b_p = NULL;
    c->b_n = 0;
    if (!n)
        return 0;
    size_t have = kept_in(c);
    if (grow(&c->in, &c->in_cap, have + n) < 0)
        return -ENOMEM;
    memmove(c->in + n, c->in + c->in_off, have);
    memcpy(c->in, p, n);
    c->in_off = 0;
    c->in_len = have + n;
    return 0;
}

static void flush_hs(alb_tls_conn *c)
{
    if (!c->hs_len || c->free_pending)
        return;
    size_t n = c->hs_len;
    c->hs_len = 0;
    if (c->send_err)
        return;
    int r = c->io.send(c->io.arg, c->hs, n);
    if (r < 0)
        c->send_err = r;
    else if (r == 1)
        c->send_bp = 1;
}

/* --- the BIO between OpenSSL and the caller's buffers */

static int bio_write(BIO *b, const char *p, int len)
{
    alb_tls_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (c->send_err || c->free_pending || len < 0)
        return -1;
    if (c->gather) {
        /* A flight, the tickets after it or an alert: one send when run() ends. */
        if (append(&c->hs, &c->hs_len, &c->hs_cap, p, (size_t)len) < 0) {
            c->send_err = -ENOMEM;
            return -1;
        }
        return len;
    }
    flush_hs(c); /* keep order if anything is still gathered */
    int r = c->send_err ? c->send_err : c->io.send(c->io.arg, (const uint8_t *)p, (size_t)len);
    if (r < 0) {
        c->send_err = r;
        return -1;
    }
    if (r == 1)
        c->send_bp = 1;
    return len;
}

static int bio_read(BIO *b, char *out, int len)
{
    alb_tls_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    size_t want = len > 0 ? (size_t)len : 0, got = 0;
    if (c->b_n && want) {
        size_t n = c->b_n < want ? c->b_n : want;
        memcpy(out, c->b_p, n);
        c->b_p += n;
        c->b_n -= n;
        got = n;
    }
    if (got < want && kept_in(c)) {
        size_t n = kept_in(c) < want - got ? kept_in(c) : want - got;
        memcpy(out + got, c->in + c->in_off, n);
        c->in_off += n;
        got += n;
        if (c->in_off == c->in_len)
            c->in_off = c->in_len = 0;
    }
    if (got)
        return (int)got;
    if (c->in_eof)
        return 0;
    BIO_set_retry_read(b);
    return -1;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    alb_tls_conn *c = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        /* Nothing is sent during run() before it ends; otherwise nothing waits. */
        return c->send_err ? 0 : 1;
    case BIO_CTRL_PENDING:
        return (long)(c->b_n + kept_in(c));
    case BIO_CTRL_WPENDING:
        return 0;
    case BIO_CTRL_EOF:
        return c->in_eof && !c->b_n && !kept_in(c);
    default:
        return 0;
    }
}

static BIO_METHOD *bio_method;
static pthread_once_t bio_method_once = PTHREAD_ONCE_INIT;

static void bio_method_make(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "alb_tls");
    if (m && (!BIO_meth_set_write(m, bio_write) || !BIO_meth_set_read(m, bio_read) ||
              !BIO_meth_set_ctrl(m, bio_ctrl))) {
        BIO_meth_free(m);
        m = NULL;
    }
    bio_method = m;
}

/* The plugin may be unloaded: the method goes with it. */
__attribute__((destructor)) static void bio_method_free(void)
{
    BIO_meth_free(bio_method);
    bio_method = NULL;
}

/* --- lifetime */

static void conn_destroy(alb_tls_conn *c)
{
    /* OpenSSL drops the session of a connection freed without a shutdown as if it had
     * failed; one that ended in good order (even by a bare TCP close) stays resumable. */
    if (c->state == ALB_TLS_OPEN)
        SSL_set_shutdown(c->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(c->ssl);
    alb_tls_server_ctx_unref(c->sctx);
    alb_tls_client_ctx_unref(c->cctx);
    free(c->in);
    if (c->out)
        OPENSSL_cleanse(c->out, c->out_cap);
    free(c->out);
    free(c->hs);
    OPENSSL_cleanse(c->pt, sizeof(c->pt));
    free(c);
}

void alb_tls_conn_free(alb_tls_conn *c)
{
    if (!c)
        return;
    if (c->depth > 0) {
        c->free_pending = 1; /* inside one of its callbacks: the outermost call frees */
        return;
    }
    conn_destroy(c);
}

static void enter(alb_tls_conn *c)
{
    c->depth++;
}

static int leave(alb_tls_conn *c, int rc)
{
    if (--c->depth == 0 && c->free_pending) {
        conn_destroy(c);
        return -ECANCELED;
    }
    return rc;
}

static int conn_alloc(SSL_CTX *x, const alb_tls_io *io, alb_tls_conn **out, char *err,
                      size_t err_len)
{
    *out = NULL;
    if (!io || !io->send || !io->plaintext) {
        snprintf(err, err_len, "TLS connection without send/plaintext callbacks");
        return -EINVAL;
    }
    pthread_once(&bio_method_once, bio_method_make);
    alb_tls_conn *c = malloc(sizeof(*c));
    if (!c || !bio_method) {
        free(c);
        snprintf(err, err_len, "out of memory for a TLS connection");
        return -ENOMEM;
    }
    memset(c, 0, offsetof(alb_tls_conn, pt)); /* the plaintext buffer needs no clearing */
    c->io = *io;
    c->state = ALB_TLS_HANDSHAKING;
    c->ssl = SSL_new(x);
    BIO *b = c->ssl ? BIO_new(bio_method) : NULL;
    if (!b) {
        SSL_free(c->ssl);
        free(c);
        ERR_clear_error();
        snprintf(err, err_len, "out of memory for a TLS connection");
        return -ENOMEM;
    }
    BIO_set_data(b, c);
    BIO_set_init(b, 1);
    SSL_set_bio(c->ssl, b, b);
    SSL_set_app_data(c->ssl, c);
    *out = c;
    return 0;
}

int alb_tls_conn_new_server(alb_tls_server_ctx *ctx, const alb_tls_io *io,
                            alb_tls_conn **out, char *err, size_t err_len)
{
    int rc = conn_alloc(ctx->ctxs[0], io, out, err, err_len);
    if (rc < 0)
        return rc;
    (*out)->sctx = alb_tls_server_ctx_ref(ctx);
    SSL_set_accept_state((*out)->ssl);
    return 0;
}

static int is_ip_literal(const char *s)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

int alb_tls_conn_new_client(alb_tls_client_ctx *ctx, const char *server_name,
                            const alb_tls_io *io, alb_tls_conn **out, char *err,
                            size_t err_len)
{
    const char *name = server_name ? server_name : ctx->server_name;
    if (name && strlen(name) >= sizeof((*out)->sni)) {
        snprintf(err, err_len, "server name too long");
        return -EINVAL;
    }
    int rc = conn_alloc(ctx->ctx, io, out, err, err_len);
    if (rc < 0)
        return rc;
    alb_tls_conn *c = *out;
    c->cctx = alb_tls_client_ctx_ref(ctx);
    SSL_set_connect_state(c->ssl);
    int ok = 1;
    if (name && *name) {
        snprintf(c->sni, sizeof(c->sni), "%s", name);
        int ip = is_ip_literal(name);
        if (!ip)
            ok = SSL_set_tlsext_host_name(c->ssl, name) == 1; /* no SNI for addresses */
        if (ok && !ctx->no_verify) {
            if (ip) {
                ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), name) == 1;
            } else {
                SSL_set_hostflags(c->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
                ok = SSL_set1_host(c->ssl, name) == 1;
            }
        }
    }
    if (!ok) {
        snprintf(err, err_len, "invalid server name '%s'", name);
        ERR_clear_error();
        alb_tls_conn_free(c);
        *out = NULL;
        return -EINVAL;
    }
    pthread_mutex_lock(&ctx->lock);
    if (ctx->session && strcmp(ctx->session_name, c->sni) == 0)
        SSL_set_session(c->ssl, ctx->session);
    pthread_mutex_unlock(&ctx->lock);
    return 0;
}

/* A session the upstream handed out (TLS 1.3: after the handshake, on a later read). */
static int client_new_session(SSL *ssl, SSL_SESSION *sess)
{
    alb_tls_client_ctx *cc = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    const alb_tls_conn *c = SSL_get_app_data(ssl);
    if (!cc || !c)
        return 0;
    pthread_mutex_lock(&cc->lock);
    SSL_SESSION *old = cc->session;
    cc->session = sess; /* returning 1 hands our reference over */
    snprintf(cc->session_name, sizeof(cc->session_name), "%s", c->sni);
    pthread_mutex_unlock(&cc->lock);
    SSL_SESSION_free(old);
    return 1;
}

/* --- the engine */

static int fail(alb_tls_conn *c, int ssl_err)
{
    unsigned long e = ERR_peek_last_error();
    int code = -EPROTO;
    char tmp[128];
    if (c->send_err) {
        code = -EPIPE;
        snprintf(c->err, sizeof(c->err), "sending failed: %s", strerror(-c->send_err));
    } else if (e && ERR_GET_LIB(e) == ERR_LIB_SSL &&
               ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED) {
        code = -EACCES;
        snprintf(c->err, sizeof(c->err), "certificate verify failed: %s",
                 X509_verify_cert_error_string(SSL_get_verify_result(c->ssl)));
    } else if (e && ERR_GET_LIB(e) == ERR_LIB_SSL &&
               ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
        code = -ECONNABORTED;
        snprintf(c->err, sizeof(c->err), "peer closed the connection without close_notify%s",
                 c->state == ALB_TLS_HANDSHAKING ? " during the handshake" : "");
    } else if (e) {
        snprintf(c->err, sizeof(c->err), "%s", ssl_reason(tmp, sizeof(tmp)));
    } else if (c->in_eof) {
        code = -ECONNABORTED;
        snprintf(c->err, sizeof(c->err), "peer closed the connection without close_notify");
    } else {
        snprintf(c->err, sizeof(c->err), "TLS failure (SSL error %d)", ssl_err);
    }
    ERR_clear_error();
    c->state = ALB_TLS_ERROR;
    c->err_code = code;
    c->out_len = 0;
    return code;
}

static int encrypt(alb_tls_conn *c, const void *p, size_t n)
{
    size_t w = 0;
    if (!n)
        return 0;
    ERR_clear_error();
    if (SSL_write_ex(c->ssl, p, n, &w) != 1)
        return fail(c, SSL_get_error(c->ssl, 0));
    return 0;
}

static int handshake_done(alb_tls_conn *c)
{
    c->state = ALB_TLS_OPEN;
    const unsigned char *a = NULL;
    unsigned int alen = 0;
    SSL_get0_alpn_selected(c->ssl, &a, &alen);
    if (a && alen < sizeof(c->alpn)) {
        memcpy(c->alpn, a, alen);
        c->alpn[alen] = '\0';
    }
    flush_hs(c);
    if (c->send_err)
        return fail(c, SSL_ERROR_SYSCALL);
    if (c->out_len) {
        size_t n = c->out_len;
        c->out_len = 0;
        int rc = encrypt(c, c->out, n);
        if (rc < 0)
            return rc;
    }
    if (c->io.ready && !c->free_pending)
        c->io.ready(c->io.arg);
    return 0;
}

/* Drives the handshake and reads records until input runs out, the reader pauses,
 * the peer closes, or something fails. Each turn consumes input or ends the loop. */
static int run(alb_tls_conn *c)
{
    int rc = ALB_TLS_OK;
    for (;;) {
        if (c->free_pending) {
            rc = -ECANCELED;
            break;
        }
        if (c->state == ALB_TLS_ERROR) {
            rc = c->err_code;
            break;
        }
        if (c->state == ALB_TLS_HANDSHAKING) {
            ERR_clear_error();
            c->gather = 1;
            int r = SSL_do_handshake(c->ssl);
            c->gather = 0;
            if (r == 1) {
                handshake_done(c);
                continue;
            }
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ && !c->send_err)
                break;
            rc = fail(c, e);
            break;
        }
        if (c->peer_closed) {
            rc = ALB_TLS_EOF;
            break;
        }
        if (c->paused) {
            rc = ALB_TLS_PAUSED;
            break;
        }
        /* With no ciphertext left and no decrypted bytes held, a read could only say
         * "want more": skip it (and its error-queue reset), once per request saved. */
        if (!c->b_n && !kept_in(c) && !c->in_eof && !SSL_has_pending(c->ssl))
            break;
        size_t n = 0;
        ERR_clear_error();
        c->gather = 1;
        int ok = SSL_read_ex(c->ssl, c->pt, sizeof(c->pt), &n);
        c->gather = 0;
        if (ok == 1) {
            if (c->io.plaintext(c->io.arg, c->pt, n) == 1)
                c->paused = 1;
            continue;
        }
        int e = SSL_get_error(c->ssl, 0);
        if (e == SSL_ERROR_WANT_READ && !c->send_err)
            break;
        if (e == SSL_ERROR_ZERO_RETURN) {
            c->peer_closed = 1;
            continue;
        }
        rc = fail(c, e);
        break;
    }
    flush_hs(c);
    if (c->hs && c->state != ALB_TLS_HANDSHAKING) {
        /* the handshake's scratch is not kept on a long-lived connection; reads in the
         * steady state send nothing, so it is not made again */
        free(c->hs);
        c->hs = NULL;
        c->hs_cap = 0;
    }
    return rc;
}

int alb_tls_start(alb_tls_conn *c)
{
    enter(c);
    return leave(c, run(c));
}

int alb_tls_feed(alb_tls_conn *c, const uint8_t *data, size_t len)
{
    if (c->state == ALB_TLS_ERROR)
        return c->err_code;
    if (c->peer_closed)
        return ALB_TLS_EOF; /* nothing may follow close_notify */
    if (c->depth > 0 || c->paused) {
        /* Called from inside one of our callbacks (the outer call reads these next)
         * or while paused: keep the bytes, within a bound. */
        if (c->b_n + kept_in(c) + len > ALB_TLS_MAX_BUFFERED) {
            snprintf(c->err, sizeof(c->err), "more than %d bytes fed while paused",
                     ALB_TLS_MAX_BUFFERED);
            c->state = ALB_TLS_ERROR;
            c->err_code = -ENOBUFS;
            return -ENOBUFS;
        }
        if (keep_input(c, data, len) < 0)
            return -ENOMEM;
        return c->paused ? ALB_TLS_PAUSED : ALB_TLS_OK;
    }
    enter(c);
    int rc = 0;
    if (kept_in(c))
        rc = keep_input(c, data, len); /* order: older kept bytes first */
    else {
        c->b_p = data;
        c->b_n = len;
    }
    if (rc == 0)
        rc = run(c);
    if (!c->free_pending && c->state != ALB_TLS_ERROR && keep_borrowed(c) < 0)
        rc = -ENOMEM;
    c->b_p = NULL;
    c->b_n = 0;
    return leave(c, rc);
}

int alb_tls_resume(alb_tls_conn *c)
{
    if (c->depth > 0) {
        c->paused = 0; /* from inside a callback: the running loop goes on */
        return ALB_TLS_OK;
    }
    c->paused = 0;
    enter(c);
    return leave(c, run(c));
}

int alb_tls_eof(alb_tls_conn *c)
{
    c->in_eof = 1;
    if (c->state == ALB_TLS_ERROR)
        return c->err_code;
    if (c->paused)
        return ALB_TLS_PAUSED; /* the kept bytes come first; resume reports the end */
    if (c->depth > 0)
        return ALB_TLS_OK; /* from a callback: the running loop meets the end */
    enter(c);
    int rc = run(c);
    if (rc == ALB_TLS_OK) {
        /* A handshake or read that still waits for bytes sees EOF through the BIO;
         * reaching here means OpenSSL did not look: say it plainly. */
        c->state = ALB_TLS_ERROR;
        c->err_code = rc = -ECONNABORTED;
        snprintf(c->err, sizeof(c->err), "peer closed the connection without close_notify");
    }
    return leave(c, rc);
}

int alb_tls_write(alb_tls_conn *c, const void *data, size_t len, int flags)
{
    if (c->state == ALB_TLS_ERROR)
        return c->err_code;
    if (c->sent_close || c->free_pending)
        return -EPIPE;
    enter(c);
    c->send_bp = 0;
    int rc = 0;
    if (c->state == ALB_TLS_HANDSHAKING) {
        rc = append(&c->out, &c->out_len, &c->out_cap, data, len);
        if (rc == 0 && c->out_len > ALB_TLS_PENDING_HIGH)
            rc = 1;
        return leave(c, rc);
    }
    if (c->out_len && c->out_len + len > ALB_TLS_PLAIN_CHUNK) {
        size_t n = c->out_len;
        c->out_len = 0;
        rc = encrypt(c, c->out, n);
    }
    if (rc == 0) {
        if ((flags & ALB_TLS_MORE) && c->out_len + len <= ALB_TLS_PLAIN_CHUNK) {
            rc = append(&c->out, &c->out_len, &c->out_cap, data, len);
        } else if (c->out_len) {
            /* held bytes and these fit one record together */
            rc = append(&c->out, &c->out_len, &c->out_cap, data, len);
            size_t n = c->out_len;
            c->out_len = 0;
            if (rc == 0)
                rc = encrypt(c, c->out, n);
        } else {
            rc = encrypt(c, data, len);
        }
    }
    if (rc == 0 && c->send_bp)
        rc = 1;
    return leave(c, rc);
}

int alb_tls_flush(alb_tls_conn *c)
{
    if (c->state != ALB_TLS_OPEN || !c->out_len)
        return c->state == ALB_TLS_ERROR ? c->err_code : 0;
    return alb_tls_write(c, NULL, 0, 0);
}

int alb_tls_shutdown(alb_tls_conn *c)
{
    if (c->state == ALB_TLS_ERROR)
        return c->err_code;
    if (c->sent_close)
        return 0;
    enter(c);
    int rc = 0;
    if (c->state == ALB_TLS_HANDSHAKING) {
        c->out_len = 0; /* no keys yet: nothing can be said securely */
    } else {
        if (c->out_len) {
            size_t n = c->out_len;
            c->out_len = 0;
            rc = encrypt(c, c->out, n);
        }
        if (rc == 0) {
            ERR_clear_error();
            if (SSL_shutdown(c->ssl) < 0)
                rc = fail(c, SSL_get_error(c->ssl, -1));
        }
    }
    if (rc == 0)
        c->sent_close = 1;
    return leave(c, rc);
}

/* ------------------------------------------------------------ what was negotiated */

enum alb_tls_state alb_tls_state(const alb_tls_conn *c)
{
    if (c->state == ALB_TLS_ERROR)
        return ALB_TLS_ERROR;
    if (c->peer_closed || c->sent_close)
        return ALB_TLS_CLOSED;
    return c->state;
}

int alb_tls_peer_closed(const alb_tls_conn *c)
{
    return c->peer_closed;
}

const char *alb_tls_error(const alb_tls_conn *c)
{
    return c->err;
}

const char *alb_tls_server_name(const alb_tls_conn *c)
{
    if (c->cctx)
        return c->sni;
    const char *n = SSL_get_servername(c->ssl, TLSEXT_NAMETYPE_host_name);
    return n ? n : "";
}

const char *alb_tls_alpn(const alb_tls_conn *c)
{
    return c->alpn;
}

/* Version and cipher are only meaningful once keys were agreed. */
static int negotiated(const alb_tls_conn *c)
{
    return SSL_is_init_finished(c->ssl);
}

const char *alb_tls_version(const alb_tls_conn *c)
{
    return negotiated(c) ? SSL_get_version(c->ssl) : "";
}

const char *alb_tls_cipher(const alb_tls_conn *c)
{
    const char *n = negotiated(c) ? SSL_get_cipher_name(c->ssl) : NULL;
    return n ? n : "";
}

int alb_tls_resumed(const alb_tls_conn *c)
{
    return SSL_session_reused(c->ssl);
}

struct ssl_st *alb_tls_ssl(alb_tls_conn *c)
{
    return c->ssl;
}
