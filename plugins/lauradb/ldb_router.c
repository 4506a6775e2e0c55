/*
 * ldb_router.c — lauradb.cluster.RouterService on one node: Query (with server-side
 * cursors), Insert, Update, Delete, Aggregate and GetShardMap. Runs on the plugin's
 * request threads: decodes the protobuf request, checks names and BSON, calls the
 * store and answers the call.
 *
 * Paging protocol (the wire contract has no GetMore and QueryRequest no cursor_id, and
 * the contract may not change): a QueryResponse with more_available carries cursor_id;
 * the next batch is asked for with a QueryRequest on the same database and collection
 * whose query is the BSON document {"$getMore": "<cursor_id>"}. In such a request
 * limit > 0 bounds that batch's documents (MongoDB's getMore batchSize); projection,
 * sort and skip are the cursor's and are ignored. "$getMore" is no query operator, so
 * no real filter is ever mistaken for one. A cursor closes when exhausted and expires
 * after cursor_timeout_ms without use: then NOT_FOUND.
 *
 * Batches: the first holds at most batch_size documents (or limit if smaller), later
 * ones any number; every response stays under max_response_bytes of documents (one
 * document always goes, whatever its size).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lauradb/routing.pb-c.h"
#include "ldb_agg.h"
#include "ldb_cursor.h"
#include "ldb_plugin_int.h"

#define MSG_LEN 512

typedef struct {
    ldb_svc *svc;
    ldb_store *st;
    ldb_job *job;
    char msg[MSG_LEN]; /* the status message of a failed call */
    uint8_t *out;      /* the packed response */
    size_t out_len;
} ldb_ctx;

static mp_rpc_code fail(ldb_ctx *x, mp_rpc_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static mp_rpc_code fail(ldb_ctx *x, mp_rpc_code code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->msg, sizeof(x->msg), fmt, ap);
    va_end(ap);
    return code;
}

/* A store error (negative errno) as a gRPC status. */
static mp_rpc_code store_code(int rc)
{
    switch (rc) {
    case -EINVAL:
    case -EFBIG:
        return MP_RPC_INVALID_ARGUMENT;
    case -EEXIST:
        return MP_RPC_ALREADY_EXISTS;
    case -E2BIG:
    case -ENOSPC:
    case -ENOMEM:
        return MP_RPC_RESOURCE_EXHAUSTED;
    case -ENOSYS:
        return MP_RPC_UNIMPLEMENTED;
    default:
        return MP_RPC_INTERNAL;
    }
}

static mp_rpc_code pack(ldb_ctx *x, const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    x->out = malloc(n ? n : 1);
    if (!x->out)
        return fail(x, MP_RPC_RESOURCE_EXHAUSTED, "lauradb: out of memory");
    x->out_len = protobuf_c_message_pack(m, x->out);
    return MP_RPC_OK;
}

#define UNPACK(x, type, fn, name)                                                         \
    type *req = fn(NULL, (x)->job->req_len, (x)->job->req);                               \
    if (!req)                                                                             \
        return fail(x, MP_RPC_INVALID_ARGUMENT, "lauradb: request is not a valid " name);

/* "db.collection" from the request's names, refusing what MongoDB refuses. */
static mp_rpc_code make_ns(ldb_ctx *x, const char *db, const char *coll, char ns[LDB_NS_MAX + 1])
{
    if (!db[0])
        return fail(x, MP_RPC_INVALID_ARGUMENT, "lauradb: database name is empty");
    if (!coll[0])
        return fail(x, MP_RPC_INVALID_ARGUMENT, "lauradb: collection name is empty");
    if (strpbrk(db, "./\\ \"$"))
        return fail(x, MP_RPC_INVALID_ARGUMENT,
                    "lauradb: database name '%.64s' may not contain . / \\ space \" or $", db);
    if (strchr(coll, '$'))
        return fail(x, MP_RPC_INVALID_ARGUMENT,
                    "lauradb: collection name '%.64s' may not contain $", coll);
    if (strlen(db) + 1 + strlen(coll) > LDB_NS_MAX)
        return fail(x, MP_RPC_INVALID_ARGUMENT,
                    "lauradb: namespace '%.32s.%.32s...' is longer than %d bytes", db, coll,
                    LDB_NS_MAX);
    snprintf(ns, LDB_NS_MAX + 1, "%s.%s", db, coll);
    return MP_RPC_OK;
}

/* A BSON field of the request: absent (empty bytes) leaves *present false. */
static mp_rpc_code get_bson(ldb_ctx *x, const ProtobufCBinaryData *d, const char *field,
                            bson_t *out, bool *present)
{
    size_t off = 0;
    *present = false;
    if (d->len == 0)
        return MP_RPC_OK;
    if (!bson_init_static(out, d->data, d->len))
        return fail(x, MP_RPC_INVALID_ARGUMENT,
                    "lauradb: %s is malformed BSON (%zu bytes; its length header does not "
                    "match)",
                    field, d->len);
    if (!bson_validate(out, BSON_VALIDATE_NONE, &off))
        return fail(x, MP_RPC_INVALID_ARGUMENT, "lauradb: %s is malformed BSON (at byte %zu)",
                    field, off);
    *present = true;
    return MP_RPC_OK;
}

/* An array of n bson_t: libbson declares bson_t 128-byte aligned, which calloc is not. */
static bson_t *bson_array_new(size_t n)
{
    void *p = NULL;
    size_t size = (n ? n : 1) * sizeof(bson_t);
    if (posix_memalign(&p, BSON_ALIGNOF(bson_t), size) != 0)
        return NULL;
    memset(p, 0, size);
    return p;
}

/* ------------------------------------------------------------------ Query */

/* The cursor id of {"$getMore": "<id>"}, or NULL for an ordinary filter. */
static const char *getmore_id(const bson_t *q)
{
    bson_iter_t it;
    if (bson_count_keys(q) != 1 || !bson_iter_init_find(&it, q, "$getMore") ||
        !BSON_ITER_HOLDS_UTF8(&it))
        return NULL;
    return bson_iter_utf8(&it, NULL);
}

/* The documents of a batch as protobuf bytes fields pointing into b. */
static ProtobufCBinaryData *split_docs(const ldb_docbuf *b)
{
    ProtobufCBinaryData *items = calloc(b->n ? b->n : 1, sizeof(*items));
    size_t off = 0;
    for (size_t i = 0; items && i < b->n; i++) {
        items[i].data = b->data + off;
        items[i].len = ldb_doc_len(b->data + off);
        off += items[i].len;
    }
    return items;
}

static mp_rpc_code query_answer(ldb_ctx *x, const char *request_id, ldb_docbuf *docs,
                                bool more, const char *cursor_id, uint64_t examined)
{
    ProtobufCBinaryData *items = split_docs(docs);
    if (!items)
        return fail(x, MP_RPC_RESOURCE_EXHAUSTED, "lauradb: out of memory");
    char *shards[1] = {x->svc->node_id};
    Lauradb__Cluster__QueryStats stats = LAURADB__CLUSTER__QUERY_STATS__INIT;
    stats.documents_examined = examined > INT32_MAX ? INT32_MAX : (int32_t)examined;
    stats.documents_returned = (int32_t)docs->n;
    stats.execution_time_ms = (int64_t)((ldb_mono_ns() - x->job->start_ns) / 1000000u);
    stats.n_shards_queried = 1;
    stats.shards_queried = shards;
    Lauradb__Cluster__QueryResponse resp = LAURADB__CLUSTER__QUERY_RESPONSE__INIT;
    resp.request_id = (char *)request_id;
    resp.n_documents = docs->n;
    resp.documents = items;
    resp.more_available = more;
    resp.cursor_id = (char *)(more ? cursor_id : "");
    resp.stats = &stats;
    mp_rpc_code code = pack(x, &resp.base);
    free(items);
    atomic_fetch_add(&x->svc->docs_returned, docs->n);
    return code;
}

static mp_rpc_code cursor_error(ldb_ctx *x, int rc, const char *id)
{
    switch (rc) {
    case -ENOENT:
        return fail(x, MP_RPC_NOT_FOUND,
                    "lauradb: cursor %.40s not found (exhausted, expired after "
                    "cursor_timeout_ms, or never issued)",
                    id);
    case -EBUSY:
        return fail(x, MP_RPC_ABORTED, "lauradb: cursor %.40s is in use by another call", id);
    default:
        return fail(x, MP_RPC_INVALID_ARGUMENT,
                    "lauradb: cursor %.40s belongs to another database or collection", id);
    }
}

static mp_rpc_code get_more(ldb_ctx *x, const Lauradb__Cluster__QueryRequest *req,
                            const char *ns, const char *id)
{
    ldb_cursor *c;
    char err[256] = "";
    if (req->limit < 0)
        return fail(x, MP_RPC_INVALID_ARGUMENT, "lauradb: limit must not be negative");
    int rc = ldb_cursor_checkout(x->svc->cursors, id, ns, &c);
    if (rc < 0)
        return cursor_error(x, rc, id);
    ldb_docbuf docs = {0};
    bool more = false;
    uint64_t examined = 0;
    rc = ldb_cursor_next_batch(c, x->st, (size_t)req->limit, x->svc->cfg.max_response_bytes,
                               &docs, &more, &examined, err, sizeof(err));
    mp_rpc_code code = rc < 0 ? fail(x, store_code(rc), "lauradb: %s", err)
                              : query_answer(x, req->request_id, &docs, more, id, examined);
    ldb_cursor_checkin(x->svc->cursors, c, rc < 0 || !more || code != MP_RPC_OK);
    ldb_docbuf_free(&docs);
    return code;
}

static mp_rpc_code do_query(ldb_ctx *x)
{
    UNPACK(x, Lauradb__Cluster__QueryRequest, lauradb__cluster__query_request__unpack,
           "QueryRequest");
    char ns[LDB_NS_MAX + 1], err[256] = "";
    bson_t q, proj, sort;
    bool has_q, has_proj, has_sort;
    mp_rpc_code code = make_ns(x, req->database, req->collection, ns);
    if (code == MP_RPC_OK)
        code = get_bson(x, &req->query, "query", &q, &has_q);
    const char *gm = code == MP_RPC_OK && has_q ? getmore_id(&q) : NULL;
    if (gm) {
        code = get_more(x, req, ns, gm);
        goto out;
    }
    if (code == MP_RPC_OK)
        code = get_bson(x, &req->projection, "projection", &proj, &has_proj);
    if (code == MP_RPC_OK)
        code = get_bson(x, &req->sort, "sort", &sort, &has_sort);
    if (code == MP_RPC_OK && (req->skip < 0 || req->limit < 0))
        code = fail(x, MP_RPC_INVALID_ARGUMENT, "lauradb: skip and limit must not be negative");
    if (code != MP_RPC_OK)
        goto out;

    ldb_cursor *c;
    int rc = ldb_cursor_new(ns, has_q ? &q : NULL, has_proj ? &proj : NULL,
                            has_sort ? &sort : NULL, req->skip, req->limit,
                            x->svc->cfg.max_response_bytes, &c);
    if (rc < 0) {
        code = fail(x, store_code(rc), "lauradb: cannot start the query");
        goto out;
    }
    size_t first = x->svc->cfg.batch_size;
    if (req->limit > 0 && (uint64_t)req->limit < first)
        first = (size_t)req->limit;
    ldb_docbuf docs = {0};
    bool more = false;
    uint64_t examined = 0;
    rc = ldb_cursor_next_batch(c, x->st, first, x->svc->cfg.max_response_bytes, &docs, &more,
                               &examined, err, sizeof(err));
    if (rc < 0) {
        code = fail(x, store_code(rc), "lauradb: %s", err);
        ldb_cursor_free(c);
    } else if (!more) {
        code = query_answer(x, req->request_id, &docs, false, "", examined);
        ldb_cursor_free(c);
    } else if ((rc = ldb_cursor_register(x->svc->cursors, c)) < 0) {
        code = fail(x, MP_RPC_RESOURCE_EXHAUSTED,
                    "lauradb: too many open cursors (max_cursors = %u); exhaust or let "
                    "others expire",
                    x->svc->cfg.max_cursors);
        ldb_cursor_free(c);
    } else {
        code = query_answer(x, req->request_id, &docs, true, ldb_cursor_id(c), examined);
        ldb_cursor_checkin(x->svc->cursors, c, code != MP_RPC_OK);
    }
    ldb_docbuf_free(&docs);
out:
    lauradb__cluster__query_request__free_unpacked(req, NULL);
    return code;
}

/* ------------------------------------------------------------------ writes */

static mp_rpc_code do_insert(ldb_ctx *x)
{
    UNPACK(x, Lauradb__Cluster__InsertRequest, lauradb__cluster__insert_request__unpack,
           "InsertRequest");
    char ns[LDB_NS_MAX + 1], err[256] = "";
    size_t n = req->n_documents;
    bson_t *docs = NULL;
    const bson_t **ptrs = NULL;
    Lauradb__Cluster__InsertError *errs = NULL, **errp = NULL;
    ldb_write_result r = {0};
    mp_rpc_code code = make_ns(x, req->database, req->collection, ns);
    if (code == MP_RPC_OK && n == 0)
        code = fail(x, MP_RPC_INVALID_ARGUMENT, "lauradb: documents is empty");
    if (code != MP_RPC_OK)
        goto out;
    docs = bson_array_new(n);
    ptrs = calloc(n, sizeof(*ptrs));
    if (!docs || !ptrs) {
        code = fail(x, MP_RPC_RESOURCE_EXHAUSTED, "lauradb: out of memory");
        goto out;
    }
    for (size_t i = 0; i < n && code == MP_RPC_OK; i++) {
        char field[48];
        bool present;
        snprintf(field, sizeof(field), "documents[%zu]", i);
        code = get_bson(x, &req->documents[i], field, &docs[i], &present);
        if (code == MP_RPC_OK && !present)
            code = fail(x, MP_RPC_INVALID_ARGUMENT, "lauradb: %s is empty (not BSON)", field);
        ptrs[i] = &docs[i];
    }
    if (code != MP_RPC_OK)
        goto out;
    int rc = ldb_insert(x->st, ns, ptrs, n, req->ordered, &r, err, sizeof(err));
    if (rc < 0 && r.n_errors == 0) { /* the operation itself failed: nothing inserted */
        code = fail(x, store_code(rc), "lauradb: insert into %s: %s", ns, err);
        goto out;
    }
    atomic_fetch_add(&x->svc->docs_inserted, r.inserted);
    errs = calloc(r.n_errors ? r.n_errors : 1, sizeof(*errs));
    errp = calloc(r.n_errors ? r.n_errors : 1, sizeof(*errp));
    if (!errs || !errp) {
        code = fail(x, MP_RPC_RESOURCE_EXHAUSTED, "lauradb: out of memory");
        goto out;
    }
    for (size_t i = 0; i < r.n_errors; i++) {
        lauradb__cluster__insert_error__init(&errs[i]);
        errs[i].index = (int32_t)r.errors[i].index;
        errs[i].error = r.errors[i].msg;
        errp[i] = &errs[i];
    }
    Lauradb__Cluster__InsertResponse resp = LAURADB__CLUSTER__INSERT_RESPONSE__INIT;
    resp.request_id = req->request_id;
    resp.inserted_count = (int32_t)r.inserted;
    resp.n_errors = r.n_errors;
    resp.errors = errp;
    code = pack(x, &resp.base);
out:
    ldb_write_result_clear(&r);
    free(errs);
    free(errp);
    free(docs);
    free(ptrs);
    lauradb__cluster__insert_request__free_unpacked(req, NULL);
    return code;
}

static mp_rpc_code do_update(ldb_ctx *x)
{
    UNPACK(x, Lauradb__Cluster__UpdateRequest, lauradb__cluster__update_request__unpack,
           "UpdateRequest");
    char ns[LDB_NS_MAX + 1], err[256] = "";
    bson_t q, u, empty = BSON_INITIALIZER;
    bool has_q, has_u;
    ldb_write_result r = {0};
    mp_rpc_code code = make_ns(x, req->database, req->collection, ns);
    if (code == MP_RPC_OK)
        code = get_bson(x, &req->query, "query", &q, &has_q);
    if (code == MP_RPC_OK)
        code = get_bson(x, &req->update, "update", &u, &has_u);
    if (code == MP_RPC_OK && !has_u)
        code = fail(x, MP_RPC_INVALID_ARGUMENT, "lauradb: update is required");
    if (code != MP_RPC_OK)
        goto out;
    int rc = ldb_update(x->st, ns, has_q ? &q : &empty, &u, req->multi, req->upsert, &r, err,
                        sizeof(err));
    if (rc < 0) {
        code = fail(x, store_code(rc), "lauradb: update of %s: %s", ns, err);
        goto out;
    }
    atomic_fetch_add(&x->svc->docs_updated, r.modified + (r.upserted ? 1 : 0));
    Lauradb__Cluster__UpdateResponse resp = LAURADB__CLUSTER__UPDATE_RESPONSE__INIT;
    resp.request_id = req->request_id;
    resp.matched_count = (int32_t)r.matched;
    resp.modified_count = (int32_t)r.modified;
    resp.upserted_count = r.upserted ? 1 : 0;
    code = pack(x, &resp.base);
out:
    ldb_write_result_clear(&r);
    lauradb__cluster__update_request__free_unpacked(req, NULL);
    return code;
}

static mp_rpc_code do_delete(ldb_ctx *x)
{
    UNPACK(x, Lauradb__Cluster__DeleteRequest, lauradb__cluster__delete_request__unpack,
           "DeleteRequest");
    char ns[LDB_NS_MAX + 1], err[256] = "";
    bson_t q, empty = BSON_INITIALIZER;
    bool has_q;
    ldb_write_result r = {0};
    mp_rpc_code code = make_ns(x, req->database, req->collection, ns);
    if (code == MP_RPC_OK)
        code = get_bson(x, &req->query, "query", &q, &has_q);
    if (code != MP_RPC_OK)
        goto out;
    int rc = ldb_delete(x->st, ns, has_q ? &q : &empty, req->multi, &r, err, sizeof(err));
    if (rc < 0) {
        code = fail(x, store_code(rc), "lauradb: delete from %s: %s", ns, err);
        goto out;
    }
    atomic_fetch_add(&x->svc->docs_deleted, r.deleted);
    Lauradb__Cluster__DeleteResponse resp = LAURADB__CLUSTER__DELETE_RESPONSE__INIT;
    resp.request_id = req->request_id;
    resp.deleted_count = (int32_t)r.deleted;
    code = pack(x, &resp.base);
out:
    ldb_write_result_clear(&r);
    lauradb__cluster__delete_request__free_unpacked(req, NULL);
    return code;
}

/* ------------------------------------------------------------------ Aggregate */

struct agg_out {
    ldb_docbuf docs;
    size_t max_bytes, bytes;
    bool too_big, oom;
};

static int agg_cb(const bson_t *doc, void *arg)
{
    struct agg_out *a = arg;
    if (a->bytes + doc->len + 8 > a->max_bytes) {
        a->too_big = true;
        return 1;
    }
    if (ldb_docbuf_append(&a->docs, bson_get_data(doc), doc->len) < 0) {
        a->oom = true;
        return 1;
    }
    a->bytes += doc->len + 8;
    return 0;
}

static mp_rpc_code do_aggregate(ldb_ctx *x)
{
    UNPACK(x, Lauradb__Cluster__AggregationRequest,
           lauradb__cluster__aggregation_request__unpack, "AggregationRequest");
    char ns[LDB_NS_MAX + 1], err[256] = "";
    size_t n = req->n_pipeline;
    bson_t *stages = bson_array_new(n);
    const bson_t **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
    ProtobufCBinaryData *items = NULL;
    struct agg_out a = {.max_bytes = x->svc->cfg.max_response_bytes};
    mp_rpc_code code = make_ns(x, req->database, req->collection, ns);
    if (code == MP_RPC_OK && (!stages || !ptrs))
        code = fail(x, MP_RPC_RESOURCE_EXHAUSTED, "lauradb: out of memory");
    for (size_t i = 0; i < n && code == MP_RPC_OK; i++) {
        char field[48];
        bool present;
        snprintf(field, sizeof(field), "pipeline[%zu]", i);
        code = get_bson(x, &req->pipeline[i], field, &stages[i], &present);
        if (code == MP_RPC_OK && !present)
            code = fail(x, MP_RPC_INVALID_ARGUMENT, "lauradb: %s is empty (not a stage)",
                        field);
        ptrs[i] = &stages[i];
    }
    if (code != MP_RPC_OK)
        goto out;
    ldb_find_stats st = {0};
    int rc = ldb_aggregate(x->st, ns, ptrs, n, agg_cb, &a, &st, err, sizeof(err));
    if (rc == 0 && a.oom)
        rc = -ENOMEM, snprintf(err, sizeof(err), "out of memory");
    if (rc < 0) {
        code = fail(x, store_code(rc), "lauradb: aggregate on %s: %s", ns, err);
        goto out;
    }
    if (a.too_big) {
        code = fail(x, MP_RPC_RESOURCE_EXHAUSTED,
                    "lauradb: aggregation result exceeds max_response_bytes (%zu); add "
                    "$limit or narrow $match",
                    a.max_bytes);
        goto out;
    }
    items = split_docs(&a.docs);
    if (!items) {
        code = fail(x, MP_RPC_RESOURCE_EXHAUSTED, "lauradb: out of memory");
        goto out;
    }
    atomic_fetch_add(&x->svc->docs_returned, a.docs.n);
    Lauradb__Cluster__AggregationResponse resp = LAURADB__CLUSTER__AGGREGATION_RESPONSE__INIT;
    resp.request_id = req->request_id;
    resp.n_results = a.docs.n;
    resp.results = items;
    code = pack(x, &resp.base);
out:
    free(items);
    ldb_docbuf_free(&a.docs);
    free(stages);
    free(ptrs);
    lauradb__cluster__aggregation_request__free_unpacked(req, NULL);
    return code;
}

/* ------------------------------------------------------------------ GetShardMap */

/* One node holds everything: one shard, no chunks, no shard key. */
static mp_rpc_code do_shard_map(ldb_ctx *x)
{
    UNPACK(x, Lauradb__Cluster__GetShardMapRequest,
           lauradb__cluster__get_shard_map_request__unpack, "GetShardMapRequest");
    Lauradb__Cluster__ShardRouteInfo shard = LAURADB__CLUSTER__SHARD_ROUTE_INFO__INIT;
    shard.shard_id = x->svc->shard_id;
    shard.node_id = x->svc->node_id;
    shard.host = x->svc->cfg.advertise_host;
    shard.port = x->svc->cfg.advertise_port;
    Lauradb__Cluster__ShardRouteInfo *shards[1] = {&shard};
    Lauradb__Cluster__GetShardMapResponse resp = LAURADB__CLUSTER__GET_SHARD_MAP_RESPONSE__INIT;
    resp.version = 1;
    resp.n_shards = 1;
    resp.shards = shards;
    resp.strategy = LAURADB__CLUSTER__SHARDING_STRATEGY__UNKNOWN_STRATEGY;
    mp_rpc_code code = pack(x, &resp.base);
    lauradb__cluster__get_shard_map_request__free_unpacked(req, NULL);
    return code;
}

/* ------------------------------------------------------------------ dispatch */

void ldb_router_execute(ldb_svc *svc, ldb_store *store, ldb_job *job)
{
    static mp_rpc_code (*const ops[LDB_M_COUNT])(ldb_ctx *) = {
        [LDB_M_QUERY] = do_query,         [LDB_M_INSERT] = do_insert,
        [LDB_M_UPDATE] = do_update,       [LDB_M_DELETE] = do_delete,
        [LDB_M_AGGREGATE] = do_aggregate, [LDB_M_SHARDMAP] = do_shard_map,
    };
    ldb_ctx x = {.svc = svc, .st = store, .job = job};
    mp_rpc_code code = ops[job->method](&x);
    if (code == MP_RPC_OK) {
        int rc = svc->api->rpc_send(job->call, x.out, x.out_len);
        if (rc < 0)
            code = fail(&x, rc == -ECANCELED ? MP_RPC_CANCELLED : MP_RPC_INTERNAL,
                        "lauradb: the response could not be sent");
    } else if (code == MP_RPC_INVALID_ARGUMENT) {
        atomic_fetch_add(&svc->bad_requests, 1);
    }
    ldb_job_done(svc, job, code, code == MP_RPC_OK ? NULL : x.msg,
                 code == MP_RPC_OK ? x.out_len : 0);
    free(x.out);
}
