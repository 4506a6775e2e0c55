/*
 * alb_tls.h — TLS for the ALB over memory: the host's data plane owns the sockets and
 * moves raw bytes (on_data in, conn_send out), so this module runs OpenSSL on bytes the
 * caller hands it and gives back bytes for the caller to send. It owns the server and
 * client contexts (certificates, SNI selection, ALPN, protocol policy, reload) and the
 * per-connection TLS state machine; it never touches an mp_conn itself.
 *
 * ======================================================================================
 * How the proxy (alb_proxy.c) wires it in
 * ======================================================================================
 *
 * Contexts (control thread):
 *   create()/reconfigure(): build one alb_tls_server_ctx per TLS listener from its
 *     certificate list with alb_tls_server_ctx_new() (first certificate = default), and
 *     one alb_tls_client_ctx per upstream group that speaks TLS. Keep the pointers in the
 *     instance state behind an atomic pointer (or read them only under the settings'
 *     generation); workers take their own reference per connection.
 *   Reload / reconfigure: alb_tls_server_ctx_reload(cur, &fresh, err, len) re-reads the
 *     same files. On success swap the instance's pointer to `fresh` and
 *     alb_tls_server_ctx_unref(old): connections in progress hold their own reference
 *     (taken by alb_tls_conn_new_*) and finish on the old certificates. On failure keep
 *     `cur` and log `err` (it names the file). alb_tls_server_ctx_changed() tells
 *     cheaply (stat only) whether any file changed, for a periodic check.
 *
 * Client side connection (worker), per accepted mp_conn on a TLS listener:
 *   on_connection: alb_tls_conn_new_server(ctx, &io, &s->tls, err, len) with
 *       io.send      = conn_send(s->c, p, n)       (returns 0 / 1 backpressure / <0)
 *       io.plaintext = feed_client(s, p, n)        (today's HTTP entry point)
 *       io.arg       = s
 *   c_data(d, n):   rc = alb_tls_feed(s->tls, d, n)   instead of feed_client(s, d, n).
 *   c_eof:          rc = alb_tls_eof(s->tls); then today's c_eof logic (an EOF without
 *                   close_notify after a complete request is harmless; the rc only
 *                   matters for logs).
 *   c_send(p, n):   alb_tls_write(s->tls, p, n, more) instead of conn_send; a return of
 *                   1 means the same as conn_send's 1 (pause the producer until on_drain).
 *                   Pass ALB_TLS_MORE for a piece that is followed at once by another
 *                   (chunk size line, chunk data, CRLF): they go out as one TLS record.
 *   close_client:   alb_tls_shutdown(s->tls) (sends close_notify) before conn_close.
 *   sess_free:      alb_tls_conn_free(s->tls) (safe even from inside a TLS callback).
 *   For X-Forwarded-Proto use "https"; alb_tls_server_name/alpn/version/cipher for logs.
 *   upgrade_to_pump: conn_pump moves raw bytes, so it must not be used when either side
 *   is TLS; keep relaying instead (plaintext callback of one side → alb_tls_write or
 *   conn_send of the other, with the same pause/drain rules).
 *
 * Return codes of alb_tls_feed / alb_tls_resume / alb_tls_eof:
 *   ALB_TLS_OK      all input consumed (some may wait inside for the rest of a record).
 *   ALB_TLS_PAUSED  io.plaintext returned 1: decryption stopped, unread ciphertext is
 *                   kept. Call conn_pause(c); later alb_tls_resume() continues, and when
 *                   it returns ALB_TLS_OK call conn_resume(c).
 *   ALB_TLS_EOF     the peer sent close_notify: no more plaintext will come.
 *   < 0             the connection failed (alb_tls_error() says why, an alert has been
 *                   sent through io.send): -EPROTO protocol error, -EACCES the peer's
 *                   certificate failed verification, -ECONNABORTED EOF without
 *                   close_notify, -EPIPE io.send failed, -ENOBUFS the caller kept feeding
 *                   while paused past ALB_TLS_MAX_BUFFERED. Close the mp_conn.
 *                   -ECANCELED: a callback freed the connection (it is gone now).
 *   alb_tls_feed called from inside io.plaintext/io.ready of the same connection (e.g.
 *   conn_resume delivering held bytes at once) only queues the bytes and returns
 *   ALB_TLS_OK; the outer call decrypts them next and reports.
 *
 * Backpressure:
 *   Towards the peer (plaintext in): alb_tls_feed decrypts one record at a time into a
 *   fixed 16 KiB buffer and hands it to io.plaintext; it never holds more plaintext than
 *   that. The proxy today accepts everything (it stashes and pauses by itself), which
 *   is allowed: then io.plaintext returns 0 and nothing is kept here. To stop earlier,
 *   return 1 from io.plaintext, call conn_pause, and alb_tls_resume later.
 *   Towards the peer (plaintext out): alb_tls_write encrypts at once and calls io.send;
 *   its return is 1 when io.send said 1 (the host's backlog passed the high-water
 *   mark), or while the handshake is not finished and more than ALB_TLS_PENDING_HIGH
 *   bytes wait for it; in the latter case io.ready fires when they went out.
 *
 * Upstream side (worker):
 *   ensure_upstream: after conn_connect, alb_tls_conn_new_client(cctx, NULL, &io,
 *     &s->utls, ...) with io.send = conn_send(s->u, ...), io.plaintext = feed_upstream,
 *     then alb_tls_start(s->utls) (queues the ClientHello; sending before on_connect
 *     queues in the host). u_send → alb_tls_write(s->utls, ...): bytes written before
 *     the handshake finished are kept and sent when it does. u_data → alb_tls_feed,
 *     u_eof → alb_tls_eof (-ECONNABORTED: a close-delimited response may be truncated),
 *     drop_u → alb_tls_conn_free. A negative rc from alb_tls_start/feed before any
 *     response byte means 502 (log alb_tls_error(): e.g. "certificate verify failed:
 *     hostname mismatch").
 *
 * Rules: all calls on one connection come from one thread (the connection's worker).
 * io.send runs inside OpenSSL: it must not call back into this connection. io.plaintext
 * and io.ready may call alb_tls_write/shutdown/feed/free on the same connection.
 * Contexts are immutable and refcounted: any thread may ref/unref them.
 *
 * Policy: TLS 1.2 and 1.3 only; for 1.2 only ECDHE key exchange with AEAD ciphers
 * (AES-GCM, ChaCha20-Poly1305), server preference; no compression, no renegotiation;
 * session tickets on with a key per server context (a reload starts a new key, so old
 * tickets fall back to a full handshake). ALPN: the server selects "http/1.1" when the
 * client offers it; a client offering only other protocols (e.g. only "h2") gets no
 * ALPN answer and the handshake goes on (RFC 7301 allows a server to ignore ALPN rather
 * than fail; such a client then either speaks HTTP/1.1 or closes). The client offers
 * "http/1.1".
 */
#ifndef ALB_TLS_H
#define ALB_TLS_H

#include <stddef.h>
#include <stdint.h>

#define ALB_TLS_PLAIN_CHUNK 16384         /* largest plaintext handed out at once */
#define ALB_TLS_PENDING_HIGH (64 * 1024)  /* writes kept during the handshake: then 1 */
#define ALB_TLS_MAX_BUFFERED (256 * 1024) /* ciphertext kept while paused: then -ENOBUFS */

/* alb_tls_write flag: more bytes follow at once, hold these for one record (up to
 * ALB_TLS_PLAIN_CHUNK bytes are kept; any write without it sends them). */
#define ALB_TLS_MORE 1

enum alb_tls_rc {
    ALB_TLS_OK = 0,
    ALB_TLS_PAUSED = 1,
    ALB_TLS_EOF = 2,
};

enum alb_tls_state {
    ALB_TLS_HANDSHAKING = 0,
    ALB_TLS_OPEN = 1,
    ALB_TLS_CLOSED = 2, /* close_notify received or sent (see alb_tls_peer_closed) */
    ALB_TLS_ERROR = 3,
};

typedef struct alb_tls_server_ctx alb_tls_server_ctx;
typedef struct alb_tls_client_ctx alb_tls_client_ctx;
typedef struct alb_tls_conn alb_tls_conn;
struct ssl_st;

/* One certificate of a server context: PEM files; cert_file may carry the chain after
 * the leaf. */
typedef struct alb_tls_cert_files {
    const char *cert_file;
    const char *key_file;
} alb_tls_cert_files;

/* ---- server contexts ---- */

/* Loads the certificates (copied paths; the first is the default). -EINVAL with a
 * message naming the file when one is unreadable, malformed, or its key does not match;
 * -ENOMEM. *out has one reference. */
int alb_tls_server_ctx_new(const alb_tls_cert_files *certs, size_t ncerts,
                           alb_tls_server_ctx **out, char *err, size_t err_len);
/* A new context from the same files, read again; `cur` is untouched either way. */
int alb_tls_server_ctx_reload(const alb_tls_server_ctx *cur, alb_tls_server_ctx **out,
                              char *err, size_t err_len);
/* 1 when any file's mtime, size or inode differs from when `ctx` read it. */
int alb_tls_server_ctx_changed(const alb_tls_server_ctx *ctx);
alb_tls_server_ctx *alb_tls_server_ctx_ref(alb_tls_server_ctx *ctx);
void alb_tls_server_ctx_unref(alb_tls_server_ctx *ctx); /* NULL is fine */

/* ---- client contexts (upstream TLS) ---- */

typedef struct alb_tls_client_opts {
    const char *ca_file;     /* PEM bundle to trust; NULL: the system's default store */
    int no_verify;           /* 0 (default): verify the chain, and the name if given */
    const char *server_name; /* SNI and hostname (or IP literal) check; NULL: neither */
    const char *cert_file;   /* optional client certificate (PEM, chain allowed) */
    const char *key_file;    /* its key; required with cert_file */
} alb_tls_client_opts;

int alb_tls_client_ctx_new(const alb_tls_client_opts *opts, alb_tls_client_ctx **out,
                           char *err, size_t err_len);
int alb_tls_client_ctx_reload(const alb_tls_client_ctx *cur, alb_tls_client_ctx **out,
                              char *err, size_t err_len);
alb_tls_client_ctx *alb_tls_client_ctx_ref(alb_tls_client_ctx *ctx);
void alb_tls_client_ctx_unref(alb_tls_client_ctx *ctx);

/* ---- connections ---- */

typedef struct alb_tls_io {
    /* Ciphertext for the wire, borrowed until return. 0, 1 (taken, but the wire is
     * backed up) or negative errno (the connection is gone). Required. */
    int (*send)(void *arg, const uint8_t *data, size_t len);
    /* Plaintext from the peer, borrowed until return (at most ALB_TLS_PLAIN_CHUNK).
     * 0 for more, 1 to stop (see ALB_TLS_PAUSED). Required. */
    int (*plaintext)(void *arg, const uint8_t *data, size_t len);
    /* The handshake finished and writes kept for it went out. Optional. */
    void (*ready)(void *arg);
    void *arg;
} alb_tls_io;

/* New connection holding a reference on its context. 0 or -ENOMEM (with reason). */
int alb_tls_conn_new_server(alb_tls_server_ctx *ctx, const alb_tls_io *io,
                            alb_tls_conn **out, char *err, size_t err_len);
/* server_name overrides the context's (NULL: the context's). */
int alb_tls_conn_new_client(alb_tls_client_ctx *ctx, const char *server_name,
                            const alb_tls_io *io, alb_tls_conn **out, char *err,
                            size_t err_len);
void alb_tls_conn_free(alb_tls_conn *c); /* NULL is fine; deferred inside callbacks */

/* Starts the handshake: a client sends its ClientHello now. A server needs no call
 * (it answers the first bytes fed). Return codes as alb_tls_feed. */
int alb_tls_start(alb_tls_conn *c);
/* Ciphertext from the peer (borrowed). */
int alb_tls_feed(alb_tls_conn *c, const uint8_t *data, size_t len);
/* Continues after ALB_TLS_PAUSED. */
int alb_tls_resume(alb_tls_conn *c);
/* The peer's TCP stream ended. ALB_TLS_EOF after close_notify, else -ECONNABORTED. */
int alb_tls_eof(alb_tls_conn *c);
/* Plaintext to the peer (borrowed). 0, 1 (backpressure, see above) or negative errno:
 * -EPIPE after alb_tls_shutdown or a failed send, the stored error after a failure. */
int alb_tls_write(alb_tls_conn *c, const void *data, size_t len, int flags);
/* Sends held (ALB_TLS_MORE) bytes now. */
int alb_tls_flush(alb_tls_conn *c);
/* Sends held bytes and close_notify. 0, or negative errno. Before the handshake
 * finished nothing is sent (the caller just closes). */
int alb_tls_shutdown(alb_tls_conn *c);

enum alb_tls_state alb_tls_state(const alb_tls_conn *c);
int alb_tls_peer_closed(const alb_tls_conn *c); /* close_notify received */
/* Why it failed, for logs (never key material); "" while it has not. */
const char *alb_tls_error(const alb_tls_conn *c);
/* Negotiated values, "" until known: SNI name (as sent by/to the client), ALPN
 * protocol, "TLSv1.3"-style version, OpenSSL cipher name. */
const char *alb_tls_server_name(const alb_tls_conn *c);
const char *alb_tls_alpn(const alb_tls_conn *c);
const char *alb_tls_version(const alb_tls_conn *c);
const char *alb_tls_cipher(const alb_tls_conn *c);
int alb_tls_resumed(const alb_tls_conn *c); /* 1 when a session was resumed */
/* The OpenSSL object, for tests and diagnostics (peer certificate). */
struct ssl_st *alb_tls_ssl(alb_tls_conn *c);

#endif
