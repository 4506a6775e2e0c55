/*
 * sniff.h — the NLB protocol sniffer: given the first bytes a client sent on a
 * listener, decide which protocol it speaks (TLS, HTTP/2 prior knowledge, HTTP/1.x,
 * PostgreSQL, Redis RESP, RTMP, MongoDB) and pull out what routing needs (SNI, ALPN,
 * Host, path, PostgreSQL user/database).
 *
 * Pure: no allocation, no state between calls, never reads past len. The data path
 * calls it again with the longer buffer each time more bytes arrive, so every answer
 * is a function of the bytes alone.
 */
#ifndef MP_HOST_SNIFF_H
#define MP_HOST_SNIFF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "marchproxy/plugin.h"

typedef enum mp_sniff_result {
    MP_SNIFF_NEED_MORE = 0, /* a valid prefix of something: read more and call again */
    MP_SNIFF_MATCH = 1,     /* out->protocol and its details are filled */
    MP_SNIFF_NO_MATCH = 2,  /* cannot become any known protocol: stop sniffing */
} mp_sniff_result;

#define MP_SNIFF_SNI_MAX 256
#define MP_SNIFF_ALPN_MAX 8
#define MP_SNIFF_ALPN_LEN 64
#define MP_SNIFF_METHOD_MAX 16
#define MP_SNIFF_PATH_MAX 1024
#define MP_SNIFF_HOST_MAX 256
#define MP_SNIFF_PG_NAME_MAX 64

typedef struct mp_sniff_info {
    int protocol; /* mp_protocol number; 0 unless MATCH */

    /* TLS ClientHello (the host does not terminate it). A server_name longer than
     * 255 bytes cannot be a DNS name and is left empty; ALPN names of 64 bytes or
     * more, and those after the 8th, are skipped. */
    char sni[MP_SNIFF_SNI_MAX];
    char alpn[MP_SNIFF_ALPN_MAX][MP_SNIFF_ALPN_LEN];
    int n_alpn;

    /* HTTP/1.x. path is the origin-form target (query included), or the path part of
     * an absolute-form target ("/" when it has none), or "" for CONNECT; it is cut to
     * 1023 bytes with path_truncated set. host is the Host header's value (OWS
     * trimmed, port kept) when a complete Host line is among the bytes seen; for an
     * absolute-form or CONNECT target it is the target's authority, which RFC 9112
     * says wins over the header. */
    char method[MP_SNIFF_METHOD_MAX];
    char path[MP_SNIFF_PATH_MAX];
    char host[MP_SNIFF_HOST_MAX];
    int http_minor;
    bool path_truncated;

    /* PostgreSQL. pg_user/pg_database are "" unless the startup message carried them
     * (and they fit). */
    bool pg_ssl_request;
    bool pg_gss_request;
    bool pg_cancel;
    char pg_user[MP_SNIFF_PG_NAME_MAX];
    char pg_database[MP_SNIFF_PG_NAME_MAX];

    /* MATCH: how many leading bytes the decision rested on (the ClientHello's records,
     * the request line, the whole startup message, ...). NEED_MORE: the smallest total
     * length worth calling again with (always > len). NO_MATCH: 0. */
    size_t consumed_hint;
} mp_sniff_info;

/* Beyond this many bytes without a decision the answer is NO_MATCH. RTMP needs 1537
 * (C0 + C1), which is within it. A TLS ClientHello alone may use up to
 * MP_SNIFF_MAX_TLS_BYTES (post-quantum key shares make it several KiB): a data path
 * must be ready to buffer that much while the answer is NEED_MORE. */
#define MP_SNIFF_MAX_BYTES 4096
#define MP_SNIFF_MAX_TLS_BYTES 16384

/* Classifies buf[0..len). out is always overwritten. Detectors are tried in the
 * order TLS, HTTP/2 preface, HTTP/1.x, PostgreSQL, RESP, RTMP, MongoDB; the first
 * that matches wins, otherwise NEED_MORE if any of them could still match. */
mp_sniff_result mp_sniff(const uint8_t *buf, size_t len, mp_sniff_info *out);

/* The config name of a protocol number ("https", "postgres", ...); "?" if unknown. */
const char *mp_sniff_protocol_name(int protocol);

#endif
