/*
 * alb_http_parser.h — incremental, strict HTTP/1.1 message parser for the ALB plugin
 * (RFC 9110 / RFC 9112). It owns message syntax and framing only: no I/O, no allocation
 * (the caller allocates one alb_http_parser per direction of a connection), and every
 * length it keeps is bounded by alb_http_limits or a compile-time cap below.
 *
 * API: push data with alb_http_parser_execute() in chunks of any size; the parser calls
 * the callbacks in struct alb_http_callbacks as events complete and never re-scans
 * bytes it has already seen. Lines (start line, field lines, chunk-size lines) are
 * handed out as (ptr,len) into the caller's buffer when the whole line arrived in one
 * chunk, or into the parser's own line buffer when it straddled chunks; either way a
 * pointer is only valid during the callback. Body bytes are always (ptr,len) into the
 * caller's buffer, never buffered.
 *
 * Decisions where RFC 9112 leaves a choice are listed in alb_http_parser.c's header
 * comment; error codes map to a status with alb_http_err_status().
 */
#ifndef ALB_HTTP_PARSER_H
#define ALB_HTTP_PARSER_H

#include <stddef.h>
#include <stdint.h>

/* Hard cap on any single line; configured line limits are clamped to it so the line
 * buffer inside the parser struct can be fixed-size. */
#define ALB_HTTP_LINE_CAP 16384
/* Longest authority (host[:port]) kept: 255-byte DNS name + brackets + ":65535". */
#define ALB_HTTP_AUTHORITY_MAX 264
/* Empty lines (CRLF) tolerated before a start line (RFC 9112 2.2 "at least one"). */
#define ALB_HTTP_MAX_EMPTY_LINES 4
/* Bounded numeric fields: digits beyond these are refused, so no overflow is possible. */
#define ALB_HTTP_CHUNK_HEX_MAX 16
#define ALB_HTTP_CL_DIGITS_MAX 18

enum alb_http_type { ALB_HTTP_REQUEST = 0, ALB_HTTP_RESPONSE = 1 };

enum alb_http_method {
    ALB_HTTP_M_OTHER = 0,
    ALB_HTTP_M_GET,
    ALB_HTTP_M_HEAD,
    ALB_HTTP_M_POST,
    ALB_HTTP_M_PUT,
    ALB_HTTP_M_DELETE,
    ALB_HTTP_M_CONNECT,
    ALB_HTTP_M_OPTIONS,
    ALB_HTTP_M_TRACE,
    ALB_HTTP_M_PATCH,
};

enum alb_http_target_form {
    ALB_HTTP_TARGET_NONE = 0, /* responses */
    ALB_HTTP_TARGET_ORIGIN,   /* /path?query */
    ALB_HTTP_TARGET_ABSOLUTE, /* http://authority/path */
    ALB_HTTP_TARGET_AUTHORITY, /* host:port, CONNECT only */
    ALB_HTTP_TARGET_ASTERISK, /* *, OPTIONS only */
};

enum alb_http_framing {
    ALB_HTTP_BODY_NONE = 0,
    ALB_HTTP_BODY_LENGTH,  /* Content-Length */
    ALB_HTTP_BODY_CHUNKED, /* Transfer-Encoding: chunked (decoded: on_body gets the data) */
    ALB_HTTP_BODY_EOF,     /* response delimited by connection close */
};

enum alb_http_rc {
    ALB_HTTP_OK = 0,  /* all input consumed; feed more */
    ALB_HTTP_PAUSED,  /* a callback returned ALB_HTTP_CB_PAUSE; call execute with the rest */
    ALB_HTTP_UPGRADE, /* CONNECT / Upgrade / 101: bytes after *consumed are not HTTP (yet) */
    ALB_HTTP_CLOSED,  /* message ended the connection (close / EOF body); nothing more parsed */
    ALB_HTTP_ERROR,   /* see alb_http_parser_error(); the parser stays in error */
};

enum alb_http_err {
    ALB_HTTP_E_NONE = 0,
    /* line syntax */
    ALB_HTTP_E_BARE_LF,
    ALB_HTTP_E_BARE_CR,
    ALB_HTTP_E_OBS_FOLD,
    ALB_HTTP_E_START_LINE_TOO_LONG, /* 414 for requests */
    ALB_HTTP_E_BAD_REQUEST_LINE,
    ALB_HTTP_E_BAD_METHOD,
    ALB_HTTP_E_BAD_TARGET,
    ALB_HTTP_E_BAD_VERSION, /* 505 */
    ALB_HTTP_E_BAD_STATUS,
    /* field syntax */
    ALB_HTTP_E_HEADERS_TOO_LARGE, /* 431: section or single line over the limit */
    ALB_HTTP_E_TOO_MANY_HEADERS,  /* 431 */
    ALB_HTTP_E_HEADER_NAME_INVALID,
    ALB_HTTP_E_HEADER_WS_BEFORE_COLON,
    ALB_HTTP_E_HEADER_NO_COLON,
    ALB_HTTP_E_HEADER_VALUE_INVALID,
    /* framing / smuggling */
    ALB_HTTP_E_CL_INVALID,
    ALB_HTTP_E_CL_CONFLICT,
    ALB_HTTP_E_CL_AND_TE,
    ALB_HTTP_E_TE_INVALID,
    ALB_HTTP_E_TE_NOT_CHUNKED,
    ALB_HTTP_E_TE_CHUNKED_NOT_LAST,
    ALB_HTTP_E_TE_CHUNKED_TWICE,
    ALB_HTTP_E_TE_UNSUPPORTED, /* 501 */
    ALB_HTTP_E_TE_HTTP10,
    ALB_HTTP_E_HOST_MISSING,
    ALB_HTTP_E_HOST_DUPLICATE,
    ALB_HTTP_E_HOST_INVALID,
    ALB_HTTP_E_CONNECT_BODY,
    /* chunked body */
    ALB_HTTP_E_CHUNK_SIZE_INVALID,
    ALB_HTTP_E_CHUNK_SIZE_TOO_LARGE,
    ALB_HTTP_E_CHUNK_EXT_INVALID,
    ALB_HTTP_E_CHUNK_LINE_TOO_LONG,
    ALB_HTTP_E_CHUNK_DATA_CRLF,
    /* other */
    ALB_HTTP_E_UNEXPECTED_EOF,
    ALB_HTTP_E_CALLBACK,
    ALB_HTTP_E__COUNT
};

struct alb_http_limits {
    uint32_t max_start_line;   /* bytes, without CRLF; default 8192; over -> 414 */
    uint32_t max_field_line;   /* one field line, without CRLF; default 8192; over -> 431 */
    uint32_t max_header_bytes; /* field lines + CRLFs + final CRLF; default 65536 -> 431 */
    uint32_t max_headers;      /* field lines; default 100 -> 431 */
    uint32_t max_chunk_line;   /* chunk-size + extensions, without CRLF; default 4096 */
};

struct alb_http_span {
    const char *p;
    size_t len;
};

struct alb_http_start_line {
    struct alb_http_span method; /* requests */
    struct alb_http_span target; /* requests */
    struct alb_http_span reason; /* responses (may be empty) */
    enum alb_http_method method_id;
    enum alb_http_target_form form;
    int version_minor; /* 0 or 1 */
    int status;        /* responses: 100..599 */
};

/* Per-message results, valid from on_headers_complete until the next message begins. */
struct alb_http_msg {
    enum alb_http_method method; /* request method (for responses: the one set by caller) */
    enum alb_http_target_form form;
    int version_minor;
    int status;
    enum alb_http_framing framing;
    uint64_t content_length;
    unsigned keep_alive : 1;      /* connection persists after this message */
    unsigned upgrade : 1;         /* request: Upgrade + Connection: upgrade, HTTP/1.1 */
    unsigned websocket : 1;       /* upgrade and Upgrade lists "websocket" */
    unsigned expect_continue : 1; /* HTTP/1.1 request with Expect: 100-continue */
    unsigned expect_other : 1;    /* some other Expect value (caller may answer 417) */
    unsigned tunnel : 1;          /* after this message the bytes are not HTTP: see UPGRADE */
    unsigned host_differs : 1;    /* absolute-form target authority != Host (target wins) */
    unsigned has_host : 1;
    uint32_t nheaders;
    /* Effective authority: absolute/authority-form target, else the Host value. */
    size_t authority_len;
    char authority[ALB_HTTP_AUTHORITY_MAX];
};

typedef struct alb_http_parser alb_http_parser;

/* Callback return: 0 continue, ALB_HTTP_CB_PAUSE stop after this event (execute returns
 * ALB_HTTP_PAUSED), negative abort with ALB_HTTP_E_CALLBACK. Any may be NULL. */
#define ALB_HTTP_CB_PAUSE 1
struct alb_http_callbacks {
    int (*on_message_begin)(alb_http_parser *p);
    int (*on_start_line)(alb_http_parser *p, const struct alb_http_start_line *sl);
    int (*on_header)(alb_http_parser *p, const char *name, size_t nlen, const char *value,
                     size_t vlen);
    int (*on_headers_complete)(alb_http_parser *p);
    int (*on_chunk_header)(alb_http_parser *p, uint64_t size);
    int (*on_body)(alb_http_parser *p, const char *data, size_t len);
    int (*on_trailer)(alb_http_parser *p, const char *name, size_t nlen, const char *value,
                      size_t vlen);
    int (*on_message_complete)(alb_http_parser *p);
};

struct alb_http_parser {
    /* configuration (set by init; user may be changed freely) */
    enum alb_http_type type;
    struct alb_http_limits limits;
    const struct alb_http_callbacks *cb;
    void *user;
    /* responses: method of the request this response answers (HEAD/CONNECT matter);
     * set it with alb_http_parser_set_request_method before each response. */
    enum alb_http_method req_method;
    /* results */
    struct alb_http_msg msg;
    enum alb_http_err error;
    /* private */
    int state;
    int pause;
    uint32_t empty_lines;
    uint32_t sect_bytes;
    uint32_t sect_fields;
    uint64_t remaining;
    uint64_t cl_value;
    unsigned cl_seen : 1, te_seen : 1, te_final_chunked : 1, te_other : 1;
    unsigned conn_close : 1, conn_keepalive : 1, conn_upgrade : 1, upgrade_hdr : 1;
    unsigned ws_token : 1, expect_100 : 1;
    uint32_t te_chunked_count;
    uint32_t host_count;
    size_t line_len;
    char line[ALB_HTTP_LINE_CAP + 2];
};

void alb_http_limits_default(struct alb_http_limits *l);
/* limits may be NULL for defaults; values are clamped to [1, ALB_HTTP_LINE_CAP] for
 * line limits. */
void alb_http_parser_init(alb_http_parser *p, enum alb_http_type type,
                          const struct alb_http_limits *limits,
                          const struct alb_http_callbacks *cb, void *user);
void alb_http_parser_set_request_method(alb_http_parser *p, enum alb_http_method m);
/* Feed len bytes; *consumed says how many were used (less than len only for PAUSED,
 * UPGRADE, CLOSED and ERROR). */
enum alb_http_rc alb_http_parser_execute(alb_http_parser *p, const char *data, size_t len,
                                         size_t *consumed);
/* The peer closed: completes a close-delimited body, or reports a truncated message. */
enum alb_http_rc alb_http_parser_finish(alb_http_parser *p);
/* After ALB_HTTP_UPGRADE for a request whose upgrade/CONNECT the upstream refused:
 * continue parsing HTTP on this connection. */
void alb_http_parser_resume_http(alb_http_parser *p);
enum alb_http_err alb_http_parser_error(const alb_http_parser *p);
enum alb_http_method alb_http_method_from(const char *s, size_t n);
const char *alb_http_err_name(enum alb_http_err e);
/* Status a server answers a request parse error with (400/414/431/501/505); for
 * response parse errors a proxy answers 502 instead. */
int alb_http_err_status(enum alb_http_err e);

#endif
