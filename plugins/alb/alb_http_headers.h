/*
 * alb_http_headers.h — builds the request head the ALB proxy sends upstream from a
 * parsed client request: strips hop-by-hop fields, re-frames the body, adds the
 * X-Forwarded-* and Via fields and sets Host. Pure function over caller memory: it
 * writes into a caller buffer with a hard size limit and never allocates.
 */
#ifndef ALB_HTTP_HEADERS_H
#define ALB_HTTP_HEADERS_H

#include <stddef.h>
#include <stdint.h>

#include "alb_http_parser.h"

struct alb_http_field {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

/* How the proxy frames the body it sends upstream; incoming Content-Length and
 * Transfer-Encoding are always dropped and replaced by this. */
enum alb_fwd_framing {
    ALB_FWD_BODY_NONE = 0, /* no framing field */
    ALB_FWD_BODY_LENGTH,   /* Content-Length: content_length */
    ALB_FWD_BODY_CHUNKED,  /* Transfer-Encoding: chunked */
};

struct alb_fwd_request {
    const char *method;
    size_t method_len;
    const char *target;
    size_t target_len;
    enum alb_http_target_form form;
    const struct alb_http_field *fields; /* client header fields in received order */
    size_t nfields;
    const char *authority; /* parser's msg.authority (effective client-facing host) */
    size_t authority_len;
    int upgrade; /* parser's msg.upgrade */
};

struct alb_fwd_opts {
    const char *client_addr;   /* textual client IP for X-Forwarded-For; required */
    int client_tls;            /* X-Forwarded-Proto: https if set, else http */
    const char *via_name;      /* "Via: 1.1 <via_name>"; NULL: no Via added */
    const char *upstream_host; /* NULL keeps the client authority as Host */
    int pass_upgrade;          /* forward Upgrade (+ Connection: upgrade) if requested */
    int xff_replace;           /* 1: drop client-supplied X-Forwarded-For */
    enum alb_fwd_framing framing;
    uint64_t content_length;
};

enum alb_hdr_rc {
    ALB_HDR_OK = 0,
    ALB_HDR_E_NOSPACE = -1, /* would exceed cap: caller answers 431/502 */
    ALB_HDR_E_INVALID = -2, /* an opts value holds CTL/SP/comma or is missing, or a
                             * request part / field holds CR, LF or other CTLs */
};

/* v in decimal into out, which has room for 20 digits; no terminator. Returns the
 * number of digits. */
size_t alb_http_u64_dec(char *out, uint64_t v);

/* Writes the upstream request head (request line ... final CRLF) to out[0..cap).
 * On success *out_len is the length; on error out's contents are unspecified. */
enum alb_hdr_rc alb_http_build_upstream_head(const struct alb_fwd_request *rq,
                                             const struct alb_fwd_opts *o, char *out,
                                             size_t cap, size_t *out_len);

/* 1 when the comma-separated list (v,vl) contains token (t,tl), case-insensitively,
 * ignoring ";params" after an element. Exposed for the response-side rewrite. */
int alb_http_list_has(const char *v, size_t vl, const char *t, size_t tl);

#endif
