/*
 * test_alb_tls.c — unit tests for plugins/alb/alb_tls.c. Certificates are made at start
 * with the openssl CLI in a temporary directory (two CAs, leaves for a.test, *.b.test,
 * exact.b.test and a CN-only c.test). Most cases run an alb_tls server connection
 * against an alb_tls client connection purely in memory, moving the ciphertext each
 * side sends to the other; the last two talk to the real `openssl s_server` and
 * `openssl s_client` over 127.0.0.1.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* strcasestr, mkdtemp */
#endif
#include "alb_tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "mp_test.h"

static char dir[128];
static int certs_ok;

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static const char *path(const char *name)
{
    static char bufs[8][256];
    static int i;
    char *b = bufs[i++ % 8];
    snprintf(b, 256, "%s/%s", dir, name);
    return b;
}

#define EC "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2"

/* A leaf signed by ca: `san` may be "" for a certificate with only a CN. */
static int make_leaf(const char *name, const char *ca, const char *cn, const char *san,
                     const char *org)
{
    char ext[160] = "";
    if (*san)
        snprintf(ext, sizeof(ext), "-addext subjectAltName=%s", san);
    return sh("cd %s && openssl req -x509 " EC " -keyout %s.key -out %s.crt -subj '/O=%s/CN=%s'"
              " %s -addext basicConstraints=critical,CA:FALSE -CA %s.crt -CAkey %s.key"
              " >/dev/null 2>&1",
              dir, name, name, org, cn, ext, ca, ca);
}

__attribute__((constructor)) static void setup(void)
{
    signal(SIGPIPE, SIG_IGN);
    snprintf(dir, sizeof(dir), "/tmp/alb_tls_test_XXXXXX");
    if (!mkdtemp(dir))
        return;
    int rc = 0;
    rc |= sh("cd %s && openssl req -x509 " EC " -keyout ca.key -out ca.crt -subj /CN=alb-ca"
             " >/dev/null 2>&1", dir);
    rc |= sh("cd %s && openssl req -x509 " EC " -keyout ca2.key -out ca2.crt -subj /CN=other-ca"
             " >/dev/null 2>&1", dir);
    rc |= make_leaf("a", "ca", "a.test", "DNS:a.test", "v1");
    rc |= make_leaf("a2", "ca", "a.test", "DNS:a.test", "v2");
    rc |= make_leaf("b", "ca", "*.b.test", "DNS:*.b.test", "v1");
    rc |= make_leaf("e", "ca", "exact.b.test", "DNS:exact.b.test", "v1");
    rc |= make_leaf("c", "ca", "c.test", "", "v1");
    rc |= sh("cd %s && head -c 3000 /dev/urandom > junk.pem && cp a.crt cur.crt && "
             "cp a.key cur.key", dir);
    certs_ok = rc == 0;
    if (!certs_ok)
        fprintf(stderr, "cannot make test certificates with the openssl CLI\n");
}

__attribute__((destructor)) static void teardown(void)
{
    if (dir[0] && strncmp(dir, "/tmp/alb_tls_test_", 18) == 0)
        sh("rm -rf '%s'", dir);
}

/* ------------------------------------------------------------ in-memory ends */

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;

static void buf_add(buf *b, const void *p, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        b->cap = cap;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

typedef struct end {
    alb_tls_conn *t;
    buf wire; /* ciphertext sent, not yet given to the other side */
    buf got;  /* plaintext received */
    int pause;          /* plaintext callback answers 1 */
    int free_in_cb;     /* plaintext callback frees the connection */
    size_t max_chunk, calls;
    int sends, ready, rc;
} end;

static int e_send(void *arg, const uint8_t *p, size_t n)
{
    end *e = arg;
    buf_add(&e->wire, p, n);
    e->sends++;
    return 0;
}

static int e_plain(void *arg, const uint8_t *p, size_t n)
{
    end *e = arg;
    buf_add(&e->got, p, n);
    e->calls++;
    if (n > e->max_chunk)
        e->max_chunk = n;
    if (e->free_in_cb) {
        alb_tls_conn_free(e->t);
        e->t = NULL;
    }
    return e->pause ? 1 : 0;
}

static void e_ready(void *arg)
{
    ((end *)arg)->ready++;
}

static alb_tls_io io_of(end *e)
{
    alb_tls_io io = {.send = e_send, .plaintext = e_plain, .ready = e_ready, .arg = e};
    return io;
}

static void end_free(end *e)
{
    alb_tls_conn_free(e->t);
    free(e->wire.p);
    free(e->got.p);
    memset(e, 0, sizeof(*e));
}

static void pair_free(end *cl, end *sv)
{
    end_free(cl);
    end_free(sv);
}

static void pair_done(end *cl, end *sv, alb_tls_server_ctx *s, alb_tls_client_ctx *c)
{
    pair_free(cl, sv);
    alb_tls_server_ctx_unref(s);
    alb_tls_client_ctx_unref(c);
}

/* Moves queued ciphertext from one side to the other until both are quiet. */
static void deliver(end *from, end *to)
{
    if (!from->wire.n || !to->t)
        return;
    buf take = from->wire;
    memset(&from->wire, 0, sizeof(from->wire));
    to->rc = alb_tls_feed(to->t, take.p, take.n);
    free(take.p);
}

static void pump(end *cl, end *sv)
{
    for (int i = 0; i < 1000 && (cl->wire.n || sv->wire.n); i++) {
        deliver(cl, sv);
        deliver(sv, cl);
    }
}

static alb_tls_server_ctx *server_ctx(void)
{
    alb_tls_cert_files f[] = {
        {path("a.crt"), path("a.key")},
        {path("b.crt"), path("b.key")},
        {path("e.crt"), path("e.key")},
        {path("c.crt"), path("c.key")},
    };
    char err[256] = "";
    alb_tls_server_ctx *s = NULL;
    if (alb_tls_server_ctx_new(f, 4, &s, err, sizeof(err)) < 0)
        fprintf(stderr, "server ctx: %s\n", err);
    return s;
}

static alb_tls_client_ctx *client_ctx(const char *ca, const char *name, int no_verify)
{
    alb_tls_client_opts o = {.ca_file = ca ? path(ca) : NULL, .server_name = name,
                             .no_verify = no_verify};
    char err[256] = "";
    alb_tls_client_ctx *c = NULL;
    if (alb_tls_client_ctx_new(&o, &c, err, sizeof(err)) < 0)
        fprintf(stderr, "client ctx: %s\n", err);
    return c;
}

/* Creates both connections; the client's hook (may be NULL) runs before its start. */
static int open_pair(end *cl, end *sv, alb_tls_server_ctx *s, alb_tls_client_ctx *c,
                     const char *name, void (*hook)(SSL *))
{
    memset(cl, 0, sizeof(*cl));
    memset(sv, 0, sizeof(*sv));
    char err[256];
    alb_tls_io ci = io_of(cl), si = io_of(sv);
    if (!s || !c || alb_tls_conn_new_server(s, &si, &sv->t, err, sizeof(err)) < 0 ||
        alb_tls_conn_new_client(c, name, &ci, &cl->t, err, sizeof(err)) < 0)
        return -1;
    if (hook)
        hook(alb_tls_ssl(cl->t));
    cl->rc = alb_tls_start(cl->t);
    pump(cl, sv);
    return 0;
}

/* The usual set-up: all certificates, a verifying client for a.test, connected. */
static int std_pair(end *cl, end *sv, alb_tls_server_ctx **s, alb_tls_client_ctx **c,
                    void (*hook)(SSL *))
{
    *s = server_ctx();
    *c = client_ctx("ca.crt", "a.test", 0);
    return open_pair(cl, sv, *s, *c, NULL, hook);
}

static void peer_cn(end *cl, char *out, size_t len)
{
    out[0] = '\0';
    X509 *x = SSL_get0_peer_certificate(alb_tls_ssl(cl->t));
    if (x)
        X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, out, (int)len);
}

static void peer_org(end *cl, char *out, size_t len)
{
    out[0] = '\0';
    X509 *x = SSL_get0_peer_certificate(alb_tls_ssl(cl->t));
    if (x)
        X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_organizationName, out,
                                  (int)len);
}

#define REQUIRE_CERTS()          \
    do {                         \
        MP_CHECK(certs_ok);      \
        if (!certs_ok)           \
            return;              \
    } while (0)

/* ------------------------------------------------------------ handshakes and SNI */

MP_TEST(test_sni_exact_name)
{
    REQUIRE_CERTS();
    alb_tls_server_ctx *s;
    alb_tls_client_ctx *c;
    end cl, sv;
    MP_CHECK(std_pair(&cl, &sv, &s, &c, NULL) == 0);
    MP_CHECK_EQ_INT(alb_tls_state(cl.t), ALB_TLS_OPEN);
    MP_CHECK_EQ_INT(alb_tls_state(sv.t), ALB_TLS_OPEN);
    char cn[128];
    peer_cn(&cl, cn, sizeof(cn));
    MP_CHECK_STR(cn, "a.test");
    X509 *x = SSL_get0_peer_certificate(alb_tls_ssl(cl.t));
    MP_CHECK(x && X509_check_host(x, "a.test", 0, 0, NULL) == 1);
    MP_CHECK_STR(alb_tls_server_name(sv.t), "a.test");
    MP_CHECK_STR(alb_tls_server_name(cl.t), "a.test");
    MP_CHECK_STR(alb_tls_alpn(sv.t), "http/1.1");
    MP_CHECK_STR(alb_tls_alpn(cl.t), "http/1.1");
    MP_CHECK_STR(alb_tls_version(sv.t), "TLSv1.3");
    MP_CHECK(strncmp(alb_tls_cipher(sv.t), "TLS_", 4) == 0);
    MP_CHECK_STR(alb_tls_error(sv.t), "");
    MP_CHECK_EQ_INT(cl.ready, 1);
    MP_CHECK_EQ_INT(sv.ready, 1);
    /* Each flight went out as one send. */
    MP_CHECK_EQ_INT(sv.sends, 2); /* its flight, then the tickets after the client Finished */
    pair_done(&cl, &sv, s, c);
}

static void expect_cert_for(alb_tls_server_ctx *s, alb_tls_client_ctx *c, const char *name,
                            const char *want_cn, int *mp_test_failed_)
{
    end cl, sv;
    MP_CHECK(open_pair(&cl, &sv, s, c, name, NULL) == 0);
    MP_CHECK_EQ_INT(alb_tls_state(cl.t), ALB_TLS_OPEN);
    char cn[128];
    peer_cn(&cl, cn, sizeof(cn));
    if (strcmp(cn, want_cn) != 0)
        fprintf(stderr, "name %s: got cert %s, want %s\n", name ? name : "(none)", cn, want_cn);
    MP_CHECK_STR(cn, want_cn);
    pair_free(&cl, &sv);
}

MP_TEST(test_sni_wildcard_cn_and_default)
{
    REQUIRE_CERTS();
    alb_tls_server_ctx *s = server_ctx();
    alb_tls_client_ctx *verify = client_ctx("ca.crt", NULL, 0);
    alb_tls_client_ctx *any = client_ctx(NULL, NULL, 1);
    expect_cert_for(s, verify, "x.b.test", "*.b.test", mp_test_failed_);
    expect_cert_for(s, verify, "X.B.Test", "*.b.test", mp_test_failed_);
    /* exact.b.test is listed after *.b.test, but an exact name wins */
    expect_cert_for(s, verify, "exact.b.test", "exact.b.test", mp_test_failed_);
    /* CN-only certificate */
    expect_cert_for(s, verify, "c.test", "c.test", mp_test_failed_);
    /* a wildcard covers one label only: default */
    expect_cert_for(s, any, "deep.x.b.test", "a.test", mp_test_failed_);
    expect_cert_for(s, any, "b.test", "a.test", mp_test_failed_);
    expect_cert_for(s, any, "unknown.example", "a.test", mp_test_failed_);
    /* no SNI at all (and an IP literal, which is never sent as SNI) */
    expect_cert_for(s, verify, NULL, "a.test", mp_test_failed_);
    expect_cert_for(s, any, "127.0.0.1", "a.test", mp_test_failed_);
    alb_tls_server_ctx_unref(s);
    alb_tls_client_ctx_unref(verify);
    alb_tls_client_ctx_unref(any);
}

static void offer_h2_only(SSL *ssl)
{
    SSL_set_alpn_protos(ssl, (const unsigned char *)"\x02h2", 3);
}

static void offer_h2_then_h11(SSL *ssl)
{
    SSL_set_alpn_protos(ssl, (const unsigned char *)"\x02h2\x08http/1.1", 12);
}

static void no_alpn(SSL *ssl)
{
    SSL_set_alpn_protos(ssl, NULL, 0);
}

MP_TEST(test_alpn)
{
    REQUIRE_CERTS();
    alb_tls_server_ctx *s;
    alb_tls_client_ctx *c;
    end cl, sv;
    MP_CHECK(std_pair(&cl, &sv, &s, &c, offer_h2_only) == 0);
    MP_CHECK_EQ_INT(alb_tls_state(sv.t), ALB_TLS_OPEN); /* falls back, no failure */
    MP_CHECK_EQ_INT(alb_tls_state(cl.t), ALB_TLS_OPEN);
    MP_CHECK_STR(alb_tls_alpn(sv.t), "");
    MP_CHECK_STR(alb_tls_alpn(cl.t), "");
    pair_free(&cl, &sv);
    MP_CHECK(open_pair(&cl, &sv, s, c, NULL, offer_h2_then_h11) == 0);
    MP_CHECK_STR(alb_tls_alpn(sv.t), "http/1.1");
    MP_CHECK_STR(alb_tls_alpn(cl.t), "http/1.1");
    pair_free(&cl, &sv);
    MP_CHECK(open_pair(&cl, &sv, s, c, NULL, no_alpn) == 0);
    MP_CHECK_EQ_INT(alb_tls_state(sv.t), ALB_TLS_OPEN);
    MP_CHECK_STR(alb_tls_alpn(sv.t), "");
    pair_done(&cl, &sv, s, c);
}

static void tls12_only(SSL *ssl)
{
    SSL_set_max_proto_version(ssl, TLS1_2_VERSION);
}

static void tls12_cbc_only(SSL *ssl)
{
    SSL_set_max_proto_version(ssl, TLS1_2_VERSION);
    SSL_set_cipher_list(ssl, "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384");
}

static void tls11_only(SSL *ssl)
{
    SSL_set_security_level(ssl, 0);
    SSL_set_min_proto_version(ssl, TLS1_1_VERSION);
    SSL_set_max_proto_version(ssl, TLS1_1_VERSION);
    SSL_set_cipher_list(ssl, "ALL:@SECLEVEL=0");
}

MP_TEST(test_protocol_policy)
{
    REQUIRE_CERTS();
    alb_tls_server_ctx *s;
    alb_tls_client_ctx *c;
    end cl, sv;
    MP_CHECK(std_pair(&cl, &sv, &s, &c, tls12_only) == 0);
    MP_CHECK_EQ_INT(alb_tls_state(sv.t), ALB_TLS_OPEN);
    MP_CHECK_STR(alb_tls_version(sv.t), "TLSv1.2");
    /* server preference: the first suite of the list for an ECDSA key */
    MP_CHECK_STR(alb_tls_cipher(sv.t), "ECDHE-ECDSA-AES128-GCM-SHA256");
    MP_CHECK_STR(alb_tls_alpn(sv.t), "http/1.1");
    pair_free(&cl, &sv);
    /* CBC suites are not offered in 1.2 (a fresh client: no session to resume) */
    alb_tls_client_ctx_unref(c);
    c = client_ctx("ca.crt", "a.test", 0);
    MP_CHECK(open_pair(&cl, &sv, s, c, NULL, tls12_cbc_only) == 0);
    MP_CHECK_EQ_INT(alb_tls_state(sv.t), ALB_TLS_ERROR);
    MP_CHECK_CONTAINS(alb_tls_error(sv.t), "no shared cipher");
    MP_CHECK_EQ_INT(alb_tls_state(cl.t), ALB_TLS_ERROR);
    pair_free(&cl, &sv);
    /* TLS 1.1 is refused */
    MP_CHECK(open_pair(&cl, &sv, s, c, NULL, tls11_only) == 0);
    MP_CHECK(alb_tls_state(sv.t) != ALB_TLS_OPEN);
    MP_CHECK(alb_tls_state(cl.t) != ALB_TLS_OPEN);
    pair_done(&cl, &sv, s, c);
}

/* ------------------------------------------------------------ data */

static void fill(uint8_t *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = (uint8_t)(seed >> 16);
    }
}

/* Sends `n` bytes from `from` to `to`: first half in small writes (every other one
 * held with ALB_TLS_MORE), second half in 64 KiB writes. */
static void stream(end *from, end *to, end *cl, end *sv, const uint8_t *data, size_t n,
                   int *mp_test_failed_)
{
    size_t off = 0, k = 0;
    while (off < n / 2) {
        size_t len = 1 + (k * 37) % 700;
        if (len > n / 2 - off)
            len = n / 2 - off;
        MP_CHECK_EQ_INT(alb_tls_write(from->t, data + off, len, (k & 1) ? ALB_TLS_MORE : 0), 0);
        off += len;
        if (++k % 64 == 0)
            pump(cl, sv);
    }
    MP_CHECK_EQ_INT(alb_tls_flush(from->t), 0);
    while (off < n) {
        size_t len = n - off < 65536 ? n - off : 65536;
        MP_CHECK_EQ_INT(alb_tls_write(from->t, data + off, len, 0), 0);
        off += len;
        pump(cl, sv);
    }
    pump(cl, sv);
    MP_CHECK_EQ_INT(to->got.n, n);
    MP_CHECK(to->got.n == n && memcmp(to->got.p, data, n) == 0);
    MP_CHECK(to->max_chunk <= ALB_TLS_PLAIN_CHUNK);
}

MP_TEST(test_one_mib_each_way)
{
    REQUIRE_CERTS();
    alb_tls_server_ctx *s = server_ctx();
    alb_tls_client_ctx *c = client_ctx("ca.crt", "x.b.test", 0);
    end cl, sv;
    MP_CHECK(open_pair(&cl, &sv, s, c, NULL, NULL) == 0);
    const size_t n = 1 << 20;
    uint8_t *up = malloc(n), *down = malloc(n);
    fill(up, n, 1);
    fill(down, n, 2);
    int sends0 = cl.sends;
    stream(&cl, &sv, &cl, &sv, up, n, mp_test_failed_);
    /* held small writes go out together: far fewer records than writes */
    fprintf(stderr, "client: %d sends for 1 MiB\n", cl.sends - sends0);
    MP_CHECK(cl.sends - sends0 < 1000);
    stream(&sv, &cl, &cl, &sv, down, n, mp_test_failed_);
    MP_CHECK_EQ_INT(alb_tls_state(cl.t), ALB_TLS_OPEN);
    MP_CHECK_EQ_INT(alb_tls_state(sv.t), ALB_TLS_OPEN);
    free(up);
    free(down);
    pair_done(&cl, &sv, s, c);
}

MP_TEST(test_writes_before_handshake)
{
    REQUIRE_CERTS();
    alb_tls_server_ctx *s = server_ctx();
    alb_tls_client_ctx *c = client_ctx("ca.crt", "a.test", 0);
    end cl, sv;
    memset(&cl, 0, sizeof(cl));
    memset(&sv, 0, sizeof(sv));
    char err[256];
    alb_tls_io ci = io_of(&cl), si = io_of(&sv);
    MP_CHECK(alb_tls_conn_new_server(s, &si, &sv.t, err, sizeof(err)) == 0);
    MP_CHECK(alb_tls_conn_new_client(c, NULL, &ci, &cl.t, err, sizeof(err)) == 0);
    MP_CHECK_EQ_INT(alb_tls_start(cl.t), ALB_TLS_OK);
    MP_CHECK_EQ_INT(alb_tls_state(cl.t), ALB_TLS_HANDSHAKING);
    MP_CHECK_STR(alb_tls_version(cl.t), "");
    MP_CHECK_EQ_INT(alb_tls_write(cl.t, "GET / HTTP/1.1\r\n", 16, 0), 0);
    /* past the high-water mark the writer is told to wait for io.ready */
    size_t big = ALB_TLS_PENDING_HIGH;
    uint8_t *blob = malloc(big);
    fill(blob, big, 3);
    MP_CHECK_EQ_INT(alb_tls_write(cl.t, blob, big, 0), 1);
    MP_CHECK_EQ_INT(cl.ready, 0);
    pump(&cl, &sv);
    MP_CHECK_EQ_INT(cl.ready, 1);
    MP_CHECK_EQ_INT(sv.got.n, 16 + big);
    MP_CHECK(sv.got.n == 16 + big && memcmp(sv.got.p, "GET / HTTP/1.1\r\n", 16) == 0 &&
             memcmp(sv.got.p + 16, blob, big) == 0);
    free(blob);
    pair_done(&cl, &sv, s, c);
}

MP_TEST(test_backpressure_pause_resume)
{
    REQUIRE_CERTS();
    alb_tls_server_ctx *s;
    alb_tls_client_ctx *c;
    end cl, sv;
    MP_CHECK(std_pair(&cl, &sv, &s, &c, NULL) == 0);
    const size_t n = 200 * 1024;
    uint8_t *data = malloc(n);
    fill(data, n, 4);
    MP_CHECK_EQ_INT(alb_tls_write(cl.t, data, n, 0), 0);
    sv.pause = 1;
    deliver(&cl, &sv);
    MP_CHECK_EQ_INT(sv.rc, ALB_TLS_PAUSED);
    MP_CHECK_EQ_INT(sv.got.n, ALB_TLS_PLAIN_CHUNK); /* one record, nothing more */
    /* more bytes while paused are kept, not decrypted */
    MP_CHECK_EQ_INT(alb_tls_write(cl.t, data, 1000, 0), 0);
    deliver(&cl, &sv);
    MP_CHECK_EQ_INT(sv.rc, ALB_TLS_PAUSED);
    MP_CHECK_EQ_INT(sv.got.n, ALB_TLS_PLAIN_CHUNK);
    int rounds = 0, rc = ALB_TLS_PAUSED;
    while (rc == ALB_TLS_PAUSED && rounds < 100) {
        size_t before = sv.got.n;
        rc = alb_tls_resume(sv.t);
        MP_CHECK(sv.got.n - before <= ALB_TLS_PLAIN_CHUNK);
        rounds++;
    }
    /* 200 KiB in 13 records of 16 KiB, then the 1000-byte one; the last resume finds
     * no more input */
    MP_CHECK_EQ_INT(rc, ALB_TLS_OK);
    MP_CHECK_EQ_INT(sv.got.n, n + 1000);
    MP_CHECK(sv.got.n == n + 1000 && memcmp(sv.got.p, data, n) == 0 &&
             memcmp(sv.got.p + n, data, 1000) == 0);
    MP_CHECK(rounds >= 13);
    /* a caller that keeps feeding while paused is stopped at the bound */
    sv.pause = 1;
    MP_CHECK_EQ_INT(alb_tls_write(cl.t, data, 10, 0), 0);
    deliver(&cl, &sv);
    MP_CHECK_EQ_INT(sv.rc, ALB_TLS_PAUSED);
    int last = 0;
    for (int i = 0; i < 100 && last >= 0; i++)
        last = alb_tls_feed(sv.t, data, 16384);
    MP_CHECK_EQ_INT(last, -ENOBUFS);
    MP_CHECK_EQ_INT(alb_tls_state(sv.t), ALB_TLS_ERROR);
    free(data);
    pair_done(&cl, &sv, s, c);
}

MP_TEST(test_free_inside_callback)
{
    REQUIRE_CERTS();
    alb_tls_server_ctx *s;
    alb_tls_client_ctx *c;
    end cl, sv;
    MP_CHECK(std_pair(&cl, &sv, &s, &c, NULL) == 0);
    uint8_t data[40000];
    fill(data, sizeof(data), 5);
    MP_CHECK_EQ_INT(alb_tls_write(cl.t, data, sizeof(data), 0), 0);
    sv.free_in_cb = 1;
    deliver(&cl, &sv); /* three records; the first callback frees the connection */
    MP_CHECK_EQ_INT(sv.calls, 1);
    MP_CHECK(sv.t == NULL);
    MP_CHECK_EQ_INT(sv.rc, -ECANCELED);
    pair_done(&cl, &sv, s, c);
}

/* ------------------------------------------------------------ closing */

MP_TEST(test_close_notify_both_ways)
{
    REQUIRE_CERTS();
    alb_tls_server_ctx *s;
    alb_tls_client_ctx *c;
    end cl, sv;
    MP_CHECK(std_pair(&cl, &sv, &s, &c, NULL) == 0);
    MP_CHECK_EQ_INT(alb_tls_write(cl.t, "last request", 12, ALB_TLS_MORE), 0);
    MP_CHECK_EQ_INT(alb_tls_shutdown(cl.t), 0); /* sends the held bytes first */
    MP_CHECK_EQ_INT(alb_tls_state(cl.t), ALB_TLS_CLOSED);
    MP_CHECK_EQ_INT(alb_tls_write(cl.t, "x", 1, 0), -EPIPE);
    deliver(&cl, &sv);
    MP_CHECK_EQ_INT(sv.rc, ALB_TLS_EOF);
    MP_CHECK(sv.got.n == 12 && memcmp(sv.got.p, "last request", 12) == 0);
    MP_CHECK_EQ_INT(alb_tls_state(sv.t), ALB_TLS_CLOSED);
    MP_CHECK(alb_tls_peer_closed(sv.t));
    MP_CHECK_EQ_INT(alb_tls_eof(sv.t), ALB_TLS_EOF); /* TCP FIN after close_notify: clean */
    /* the server may still answer, then closes its side */
    MP_CHECK_EQ_INT(alb_tls_write(sv.t, "answer", 6, 0), 0);
    MP_CHECK_EQ_INT(alb_tls_shutdown(sv.t), 0);
    deliver(&sv, &cl);
    MP_CHECK_EQ_INT(cl.rc, ALB_TLS_EOF);
    MP_CHECK(cl.got.n == 6 && memcmp(cl.got.p, "answer", 6) == 0);
    MP_CHECK(alb_tls_peer_closed(cl.t));
    MP_CHECK_STR(alb_tls_error(cl.t), "");
    pair_free(&cl, &sv);

    /* a TCP FIN without close_notify is reported as such */
    MP_CHECK(open_pair(&cl, &sv, s, c, NULL, NULL) == 0);
    MP_CHECK_EQ_INT(alb_tls_eof(sv.t), -ECONNABORTED);
    MP_CHECK_EQ_INT(alb_tls_state(sv.t), ALB_TLS_ERROR);
    MP_CHECK_CONTAINS(alb_tls_error(sv.t), "without close_notify");
    pair_done(&cl, &sv, s, c);
}

/* ------------------------------------------------------------ bad input */

static void expect_garbage_fails(alb_tls_server_ctx *s, const void *p, size_t n,
                                 const char *reason, int *mp_test_failed_)
{
    end sv;
    memset(&sv, 0, sizeof(sv));
    char err[256];
    alb_tls_io si = io_of(&sv);
    MP_CHECK(alb_tls_conn_new_server(s, &si, &sv.t, err, sizeof(err)) == 0);
    int rc = alb_tls_feed(sv.t, p, n);
    MP_CHECK(rc < 0);
    MP_CHECK_EQ_INT(alb_tls_state(sv.t), ALB_TLS_ERROR);
    MP_CHECK(alb_tls_error(sv.t)[0] != '\0');
    if (reason)
        MP_CHECK_CONTAINS(alb_tls_error(sv.t), reason);
    MP_CHECK_EQ_INT(alb_tls_feed(sv.t, p, n), rc); /* stays failed */
    MP_CHECK(alb_tls_write(sv.t, "x", 1, 0) < 0);
    end_free(&sv);
}

MP_TEST(test_garbage_client_hello)
{
    REQUIRE_CERTS();
    alb_tls_server_ctx *s = server_ctx();
    static const char http[] = "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
    expect_garbage_fails(s, http, sizeof(http) - 1, "http request", mp_test_failed_);
    uint8_t junk[4096];
    fill(junk, sizeof(junk), 6);
    junk[0] = 0x16; /* looks like a handshake record, the rest is noise */
    junk[1] = 0x03;
    junk[2] = 0x01;
    expect_garbage_fails(s, junk, sizeof(junk), NULL, mp_test_failed_);

    /* A real ClientHello with one byte changed at many places: never a crash, and never
     * an open connection without a client. */
    alb_tls_client_ctx *c = client_ctx("ca.crt", "a.test", 0);
    end cl;
    memset(&cl, 0, sizeof(cl));
    char err[256];
    alb_tls_io ci = io_of(&cl);
    MP_CHECK(alb_tls_conn_new_client(c, NULL, &ci, &cl.t, err, sizeof(err)) == 0);
    alb_tls_start(cl.t);
    MP_CHECK(cl.wire.n > 100);
    int failed = 0;
    for (size_t i = 0; i < cl.wire.n && i < 400; i += 3) {
        uint8_t *hello = malloc(cl.wire.n);
        memcpy(hello, cl.wire.p, cl.wire.n);
        hello[i] ^= (uint8_t)(0x5a + i);
        end sv;
        memset(&sv, 0, sizeof(sv));
        alb_tls_io si = io_of(&sv);
        MP_CHECK(alb_tls_conn_new_server(s, &si, &sv.t, err, sizeof(err)) == 0);
        int rc = alb_tls_feed(sv.t, hello, cl.wire.n);
        if (rc < 0)
            failed++;
        MP_CHECK(alb_tls_state(sv.t) != ALB_TLS_OPEN);
        /* a truncated stream ends as an error, never silently */
        rc = alb_tls_eof(sv.t);
        MP_CHECK(rc < 0);
        free(hello);
        end_free(&sv);
    }
    fprintf(stderr, "changed ClientHellos refused at once: %d\n", failed);
    MP_CHECK(failed > 10);
    end_free(&cl);
    alb_tls_client_ctx_unref(c);
    alb_tls_server_ctx_unref(s);
}

/* ------------------------------------------------------------ verification */

MP_TEST(test_verify_failures)
{
    REQUIRE_CERTS();
    alb_tls_server_ctx *s = server_ctx();
    alb_tls_client_ctx *wrong_ca = client_ctx("ca2.crt", "a.test", 0);
    alb_tls_client_ctx *right_ca = client_ctx("ca.crt", "wrong.test", 0);
    alb_tls_client_ctx *sys = client_ctx(NULL, "a.test", 0); /* system store: ours is unknown */
    end cl, sv;
    MP_CHECK(open_pair(&cl, &sv, s, wrong_ca, NULL, NULL) == 0);
    MP_CHECK_EQ_INT(cl.rc, -EACCES);
    MP_CHECK_EQ_INT(alb_tls_state(cl.t), ALB_TLS_ERROR);
    MP_CHECK_CONTAINS(alb_tls_error(cl.t), "certificate verify failed");
    MP_CHECK_EQ_INT(alb_tls_state(sv.t), ALB_TLS_ERROR); /* got the client's alert */
    MP_CHECK(alb_tls_error(sv.t)[0] != '\0');
    pair_free(&cl, &sv);

    MP_CHECK(open_pair(&cl, &sv, s, right_ca, NULL, NULL) == 0);
    MP_CHECK_EQ_INT(cl.rc, -EACCES);
    MP_CHECK(strcasestr(alb_tls_error(cl.t), "hostname mismatch") != NULL);
    pair_free(&cl, &sv);

    /* the per-connection name overrides the context's */
    MP_CHECK(open_pair(&cl, &sv, s, right_ca, "a.test", NULL) == 0);
    MP_CHECK_EQ_INT(alb_tls_state(cl.t), ALB_TLS_OPEN);
    pair_free(&cl, &sv);

    if (sys) {
        MP_CHECK(open_pair(&cl, &sv, s, sys, NULL, NULL) == 0);
        MP_CHECK_EQ_INT(cl.rc, -EACCES);
        end_free(&cl);
        end_free(&sv);
    }
    alb_tls_server_ctx_unref(s);
    alb_tls_client_ctx_unref(wrong_ca);
    alb_tls_client_ctx_unref(right_ca);
    alb_tls_client_ctx_unref(sys);
}

/* ------------------------------------------------------------ loading and reload */

MP_TEST(test_bad_files_refused)
{
    REQUIRE_CERTS();
    char err[512];
    alb_tls_server_ctx *s = NULL;
    alb_tls_cert_files mismatch[] = {{path("a.crt"), path("b.key")}};
    MP_CHECK_EQ_INT(alb_tls_server_ctx_new(mismatch, 1, &s, err, sizeof(err)), -EINVAL);
    MP_CHECK(s == NULL);
    MP_CHECK_CONTAINS(err, path("b.key"));
    MP_CHECK_CONTAINS(err, "does not match");
    alb_tls_cert_files missing[] = {{path("a.crt"), path("a.key")},
                                    {path("nope.crt"), path("a.key")}};
    MP_CHECK_EQ_INT(alb_tls_server_ctx_new(missing, 2, &s, err, sizeof(err)), -EINVAL);
    MP_CHECK_CONTAINS(err, path("nope.crt"));
    MP_CHECK_CONTAINS(err, "No such file");
    alb_tls_cert_files junk[] = {{path("junk.pem"), path("a.key")}};
    MP_CHECK_EQ_INT(alb_tls_server_ctx_new(junk, 1, &s, err, sizeof(err)), -EINVAL);
    MP_CHECK_CONTAINS(err, path("junk.pem"));
    alb_tls_cert_files junk_key[] = {{path("a.crt"), path("junk.pem")}};
    MP_CHECK_EQ_INT(alb_tls_server_ctx_new(junk_key, 1, &s, err, sizeof(err)), -EINVAL);
    MP_CHECK_CONTAINS(err, path("junk.pem"));
    MP_CHECK_EQ_INT(alb_tls_server_ctx_new(NULL, 0, &s, err, sizeof(err)), -EINVAL);

    alb_tls_client_ctx *c = NULL;
    alb_tls_client_opts o = {.ca_file = path("nope-ca.crt")};
    MP_CHECK_EQ_INT(alb_tls_client_ctx_new(&o, &c, err, sizeof(err)), -EINVAL);
    MP_CHECK_CONTAINS(err, path("nope-ca.crt"));
    alb_tls_client_opts half = {.cert_file = path("a.crt")};
    MP_CHECK_EQ_INT(alb_tls_client_ctx_new(&half, &c, err, sizeof(err)), -EINVAL);
    alb_tls_client_opts bad_pair = {.cert_file = path("a.crt"), .key_file = path("c.key")};
    MP_CHECK_EQ_INT(alb_tls_client_ctx_new(&bad_pair, &c, err, sizeof(err)), -EINVAL);
    MP_CHECK_CONTAINS(err, path("c.key"));
    MP_CHECK(c == NULL);
}

static void swap_in(const char *from_base, int *mp_test_failed_)
{
    /* write beside, then rename: new inodes, as deploy tools do */
    MP_CHECK(sh("cd %s && cp %s.crt cur.crt.tmp && cp %s.key cur.key.tmp && "
                "mv cur.crt.tmp cur.crt && mv cur.key.tmp cur.key",
                dir, from_base, from_base) == 0);
}

MP_TEST(test_reload)
{
    REQUIRE_CERTS();
    swap_in("a", mp_test_failed_);
    char err[512];
    alb_tls_cert_files f[] = {{path("cur.crt"), path("cur.key")}};
    alb_tls_server_ctx *v1 = NULL, *v2 = NULL, *v3 = NULL;
    MP_CHECK(alb_tls_server_ctx_new(f, 1, &v1, err, sizeof(err)) == 0);
    if (!v1)
        return;
    MP_CHECK_EQ_INT(alb_tls_server_ctx_changed(v1), 0);
    alb_tls_client_ctx *c = client_ctx("ca.crt", "a.test", 0);
    end cl1, sv1, cl2, sv2;
    MP_CHECK(open_pair(&cl1, &sv1, v1, c, NULL, NULL) == 0);
    char org[64];
    peer_org(&cl1, org, sizeof(org));
    MP_CHECK_STR(org, "v1");

    swap_in("a2", mp_test_failed_);
    MP_CHECK_EQ_INT(alb_tls_server_ctx_changed(v1), 1);
    MP_CHECK(alb_tls_server_ctx_reload(v1, &v2, err, sizeof(err)) == 0);
    alb_tls_server_ctx_unref(v1); /* the proxy swaps; the old connection keeps its ref */
    MP_CHECK_EQ_INT(alb_tls_server_ctx_changed(v2), 0);
    MP_CHECK(open_pair(&cl2, &sv2, v2, c, NULL, NULL) == 0);
    peer_org(&cl2, org, sizeof(org));
    MP_CHECK_STR(org, "v2");

    /* the old connection still works both ways */
    MP_CHECK_EQ_INT(alb_tls_write(cl1.t, "ping", 4, 0), 0);
    MP_CHECK_EQ_INT(alb_tls_write(sv1.t, "pong", 4, 0), 0);
    pump(&cl1, &sv1);
    MP_CHECK(sv1.got.n == 4 && memcmp(sv1.got.p, "ping", 4) == 0);
    MP_CHECK(cl1.got.n == 4 && memcmp(cl1.got.p, "pong", 4) == 0);
    end_free(&cl1);
    end_free(&sv1);

    /* a broken reload keeps the working context and names the file */
    MP_CHECK(sh("cd %s && cp b.key cur.key.tmp && mv cur.key.tmp cur.key", dir) == 0);
    MP_CHECK_EQ_INT(alb_tls_server_ctx_reload(v2, &v3, err, sizeof(err)), -EINVAL);
    MP_CHECK(v3 == NULL);
    MP_CHECK_CONTAINS(err, path("cur.key"));
    MP_CHECK_CONTAINS(err, "does not match");
    end_free(&cl2);
    end_free(&sv2);
    MP_CHECK(open_pair(&cl2, &sv2, v2, c, NULL, NULL) == 0);
    MP_CHECK_EQ_INT(alb_tls_state(cl2.t), ALB_TLS_OPEN);
    peer_org(&cl2, org, sizeof(org));
    MP_CHECK_STR(org, "v2");
    end_free(&cl2);
    end_free(&sv2);
    alb_tls_server_ctx_unref(v2);
    alb_tls_client_ctx_unref(c);
}

MP_TEST(test_session_resumption)
{
    REQUIRE_CERTS();
    alb_tls_server_ctx *s;
    alb_tls_client_ctx *c;
    end cl, sv;
    MP_CHECK(std_pair(&cl, &sv, &s, &c, NULL) == 0);
    MP_CHECK_EQ_INT(alb_tls_resumed(cl.t), 0);
    pair_free(&cl, &sv);
    MP_CHECK(open_pair(&cl, &sv, s, c, NULL, NULL) == 0);
    MP_CHECK_EQ_INT(alb_tls_state(cl.t), ALB_TLS_OPEN);
    MP_CHECK_EQ_INT(alb_tls_resumed(cl.t), 1);
    MP_CHECK_EQ_INT(alb_tls_resumed(sv.t), 1);
    MP_CHECK_STR(alb_tls_server_name(sv.t), "a.test");
    pair_free(&cl, &sv);
    /* another name does not reuse a.test's session */
    MP_CHECK(open_pair(&cl, &sv, s, c, "x.b.test", NULL) == 0);
    MP_CHECK_EQ_INT(alb_tls_resumed(cl.t), 0);
    pair_free(&cl, &sv);
    /* a rebuilt server context has a new ticket key: full handshake, still fine */
    char err[256];
    alb_tls_server_ctx *s2 = NULL;
    MP_CHECK(alb_tls_server_ctx_reload(s, &s2, err, sizeof(err)) == 0);
    MP_CHECK(open_pair(&cl, &sv, s2, c, "x.b.test", NULL) == 0);
    MP_CHECK_EQ_INT(alb_tls_state(cl.t), ALB_TLS_OPEN);
    MP_CHECK_EQ_INT(alb_tls_resumed(cl.t), 0);
    pair_free(&cl, &sv);
    alb_tls_server_ctx_unref(s);
    alb_tls_server_ctx_unref(s2);
    alb_tls_client_ctx_unref(c);
}

/* ------------------------------------------------------------ real OpenSSL peers */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &l) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Moves bytes between the socket and the memory connection until `done` or ~10 s. */
static int bridge(int fd, end *e, int (*done)(end *))
{
    uint8_t b[16384];
    int eof = 0;
    for (int i = 0; i < 500; i++) {
        if (e->wire.n) {
            if (write_all(fd, e->wire.p, e->wire.n) < 0)
                return -1;
            e->wire.n = 0;
        }
        if (done(e))
            return 0;
        if (eof || e->rc < 0)
            return -1;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 20) <= 0)
            continue;
        ssize_t n = read(fd, b, sizeof(b));
        if (n > 0) {
            e->rc = alb_tls_feed(e->t, b, (size_t)n);
        } else {
            e->rc = alb_tls_eof(e->t);
            eof = 1;
        }
    }
    return -1;
}

static int got_reversed(end *e)
{
    return e->got.n >= 6 && memmem(e->got.p, e->got.n, "olleh", 5) != NULL;
}

MP_TEST(test_interop_openssl_s_server)
{
    REQUIRE_CERTS();
    int port = free_port();
    MP_CHECK(port > 0);
    pid_t pid = fork();
    if (pid == 0) {
        char acc[32];
        snprintf(acc, sizeof(acc), "127.0.0.1:%d", port);
        int nul = open("/dev/null", O_RDWR);
        dup2(nul, 0);
        dup2(nul, 1);
        dup2(nul, 2);
        execlp("openssl", "openssl", "s_server", "-accept", acc, "-cert", path("b.crt"),
               "-key", path("b.key"), "-rev", "-naccept", "1", (char *)NULL);
        _exit(127);
    }
    int fd = -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int i = 0; i < 200 && fd < 0; i++) { /* up to ~10 s for it to listen */
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
            close(fd);
            fd = -1;
            usleep(50000);
        }
    }
    MP_CHECK(fd >= 0);
    alb_tls_client_ctx *c = client_ctx("ca.crt", "www.b.test", 0);
    end cl;
    memset(&cl, 0, sizeof(cl));
    char err[256];
    alb_tls_io ci = io_of(&cl);
    if (fd >= 0 && c && alb_tls_conn_new_client(c, NULL, &ci, &cl.t, err, sizeof(err)) == 0) {
        alb_tls_start(cl.t);
        MP_CHECK_EQ_INT(alb_tls_write(cl.t, "hello\n", 6, 0), 0);
        MP_CHECK_EQ_INT(bridge(fd, &cl, got_reversed), 0);
        MP_CHECK(got_reversed(&cl));
        MP_CHECK_EQ_INT(alb_tls_state(cl.t), ALB_TLS_OPEN);
        MP_CHECK_STR(alb_tls_version(cl.t), "TLSv1.3");
        if (cl.rc < 0)
            fprintf(stderr, "client error: %s\n", alb_tls_error(cl.t));
        alb_tls_shutdown(cl.t);
        if (cl.wire.n)
            write_all(fd, cl.wire.p, cl.wire.n);
    }
    if (fd >= 0)
        close(fd);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    end_free(&cl);
    alb_tls_client_ctx_unref(c);
}

static int got_ping(end *e)
{
    return e->got.n >= 5 && memmem(e->got.p, e->got.n, "ping\n", 5) != NULL;
}

static int peer_done(end *e)
{
    return e->rc == ALB_TLS_EOF || e->rc < 0;
}

MP_TEST(test_interop_openssl_s_client)
{
    REQUIRE_CERTS();
    alb_tls_server_ctx *s = server_ctx();
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof(a);
    MP_CHECK(bind(lfd, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(lfd, 1) == 0 &&
             getsockname(lfd, (struct sockaddr *)&a, &l) == 0);
    int in[2];
    MP_CHECK(pipe(in) == 0);
    const char *outp = path("s_client.out");
    pid_t pid = fork();
    if (pid == 0) {
        char conn[32];
        snprintf(conn, sizeof(conn), "127.0.0.1:%d", ntohs(a.sin_port));
        int out = open(outp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(in[0], 0);
        dup2(out, 1);
        dup2(out, 2);
        close(in[1]);
        execlp("openssl", "openssl", "s_client", "-connect", conn, "-servername", "x.b.test",
               "-CAfile", path("ca.crt"), "-verify_return_error", "-alpn", "h2,http/1.1",
               "-ign_eof", (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    struct pollfd p = {.fd = lfd, .events = POLLIN};
    int fd = poll(&p, 1, 10000) == 1 ? accept(lfd, NULL, NULL) : -1;
    MP_CHECK(fd >= 0);
    end sv;
    memset(&sv, 0, sizeof(sv));
    char err[256];
    alb_tls_io si = io_of(&sv);
    if (fd >= 0 && s && alb_tls_conn_new_server(s, &si, &sv.t, err, sizeof(err)) == 0) {
        MP_CHECK(write(in[1], "ping\n", 5) == 5);
        MP_CHECK_EQ_INT(bridge(fd, &sv, got_ping), 0);
        MP_CHECK_STR(alb_tls_server_name(sv.t), "x.b.test");
        MP_CHECK_STR(alb_tls_alpn(sv.t), "http/1.1");
        MP_CHECK_EQ_INT(alb_tls_write(sv.t, "pong-from-alb\n", 14, 0), 0);
        /* close_notify: s_client prints what it got and leaves */
        MP_CHECK_EQ_INT(alb_tls_shutdown(sv.t), 0);
        MP_CHECK_EQ_INT(bridge(fd, &sv, peer_done), 0);
        close(in[1]);
        in[1] = -1;
    }
    if (in[1] >= 0)
        close(in[1]);
    int st = 0;
    for (int i = 0; i < 200 && waitpid(pid, &st, WNOHANG) == 0; i++)
        usleep(50000);
    if (waitpid(pid, &st, WNOHANG) == 0) {
        kill(pid, SIGTERM);
        waitpid(pid, &st, 0);
    }
    if (fd >= 0)
        close(fd);
    close(lfd);
    FILE *f = fopen(outp, "r");
    char text[65536] = "";
    if (f) {
        size_t n = fread(text, 1, sizeof(text) - 1, f);
        text[n] = '\0';
        fclose(f);
    }
    MP_CHECK_CONTAINS(text, "pong-from-alb");
    MP_CHECK_CONTAINS(text, "Verification: OK");
    MP_CHECK_CONTAINS(text, "ALPN protocol: http/1.1");
    MP_CHECK_CONTAINS(text, "CN = *.b.test");
    end_free(&sv);
    alb_tls_server_ctx_unref(s);
}

MP_TEST_MAIN(MP_CASE(test_sni_exact_name), MP_CASE(test_sni_wildcard_cn_and_default),
             MP_CASE(test_alpn), MP_CASE(test_protocol_policy), MP_CASE(test_one_mib_each_way),
             MP_CASE(test_writes_before_handshake), MP_CASE(test_backpressure_pause_resume),
             MP_CASE(test_free_inside_callback), MP_CASE(test_close_notify_both_ways),
             MP_CASE(test_garbage_client_hello), MP_CASE(test_verify_failures),
             MP_CASE(test_bad_files_refused), MP_CASE(test_reload),
             MP_CASE(test_session_resumption), MP_CASE(test_interop_openssl_s_server),
             MP_CASE(test_interop_openssl_s_client))
