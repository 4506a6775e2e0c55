/*
 * ldb_state.c — the durable key-value store LauraDB offers the MarchProxy host (ABI
 * 1.2 state_store): one collection, "marchproxy.host_state", one document per key
 * {_id: key, value: BinData, updated: date}. Every put and remove is an ordinary
 * LauraDB write, so it is durable when it returns, appears in the oplog (and so will
 * replicate), and a crash leaves the old or the new value, never a mix.
 */
#include "ldb_state.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define STATE_NS "marchproxy.host_state"

static int key_check(const char *key, char *err, size_t err_len)
{
    size_t n = key ? strlen(key) : 0;
    if (n == 0 || n > LDB_STATE_KEY_MAX) {
        snprintf(err, err_len, "state key must be 1..%d bytes", LDB_STATE_KEY_MAX);
        return -EINVAL;
    }
    if (!bson_utf8_validate(key, n, false)) {
        snprintf(err, err_len, "state key is not valid UTF-8");
        return -EINVAL;
    }
    return 0;
}

int ldb_state_put(ldb_store *s, const char *key, const void *value, size_t len, char *err,
                  size_t err_len)
{
    int rc = key_check(key, err, err_len);
    if (rc < 0)
        return rc;
    if (len > LDB_STATE_VALUE_MAX) {
        snprintf(err, err_len, "state value of %zu bytes (at most %d)", len,
                 LDB_STATE_VALUE_MAX);
        return -EFBIG;
    }
    bson_t filter, doc;
    bson_init(&filter);
    BSON_APPEND_UTF8(&filter, "_id", key);
    bson_init(&doc);
    BSON_APPEND_UTF8(&doc, "_id", key);
    bson_append_binary(&doc, "value", 5, BSON_SUBTYPE_BINARY, value, (uint32_t)len);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    BSON_APPEND_DATE_TIME(&doc, "updated", (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000);
    ldb_write_result r = {0};
    rc = ldb_update(s, STATE_NS, &filter, &doc, false, true, &r, err, err_len);
    ldb_write_result_clear(&r);
    bson_destroy(&filter);
    bson_destroy(&doc);
    return rc;
}

int ldb_state_remove(ldb_store *s, const char *key, char *err, size_t err_len)
{
    int rc = key_check(key, err, err_len);
    if (rc < 0)
        return rc;
    bson_t filter;
    bson_init(&filter);
    BSON_APPEND_UTF8(&filter, "_id", key);
    ldb_write_result r = {0};
    rc = ldb_delete(s, STATE_NS, &filter, false, &r, err, err_len);
    size_t deleted = r.deleted;
    ldb_write_result_clear(&r);
    bson_destroy(&filter);
    if (rc == 0 && deleted == 0)
        return -ENOENT;
    return rc;
}

struct scan_ctx {
    const char *prefix;
    size_t prefix_len;
    ldb_state_scan_fn fn;
    void *ctx;
    int stopped;
};

static int scan_doc(const bson_t *doc, void *vctx)
{
    struct scan_ctx *sc = vctx;
    bson_iter_t it;
    if (!bson_iter_init_find(&it, doc, "_id") || !BSON_ITER_HOLDS_UTF8(&it))
        return 0;
    uint32_t klen;
    const char *key = bson_iter_utf8(&it, &klen);
    if (klen < sc->prefix_len || memcmp(key, sc->prefix, sc->prefix_len) != 0)
        return 0;
    const uint8_t *value = NULL;
    uint32_t vlen = 0;
    bson_subtype_t sub;
    if (bson_iter_init_find(&it, doc, "value") && BSON_ITER_HOLDS_BINARY(&it))
        bson_iter_binary(&it, &sub, &vlen, &value);
    int rc = sc->fn(sc->ctx, key, value ? value : (const uint8_t *)"", vlen);
    if (rc != 0) {
        sc->stopped = rc;
        return 1;
    }
    return 0;
}

int ldb_state_scan(ldb_store *s, const char *prefix, ldb_state_scan_fn fn, void *ctx,
                   char *err, size_t err_len)
{
    struct scan_ctx sc = {.prefix = prefix ? prefix : "", .fn = fn, .ctx = ctx};
    sc.prefix_len = strlen(sc.prefix);
    /* A range on _id: strings sort bytewise, and every key with the prefix is >= it.
     * The callback still checks the prefix, so the upper end can stay open. */
    bson_t filter, range;
    bson_init(&filter);
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "_id", &range);
    BSON_APPEND_UTF8(&range, "$gte", sc.prefix);
    bson_append_document_end(&filter, &range);
    int rc = ldb_find(s, STATE_NS, &filter, NULL, NULL, 0, 0, scan_doc, &sc, NULL, err,
                      err_len);
    bson_destroy(&filter);
    if (rc < 0)
        return rc;
    return sc.stopped;
}
