/*
 * ldb_cursor.c — server-side query cursors (see ldb_cursor.h): the read-ahead buffer
 * that batches are cut from, and the table of open cursors with idle expiry, a count
 * limit and a memory budget for what idle cursors keep buffered.
 */
#include "ldb_cursor.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

struct ldb_cursor {
    char id[LDB_CURSOR_ID_LEN];
    char ns[LDB_NS_MAX + 1];
    bson_t *filter, *projection, *sort; /* owned copies, NULL when absent */
    int64_t skip, limit;
    size_t fill_bytes;
    uint64_t scanned;   /* results fetched into buf so far, counted after skip */
    uint64_t delivered; /* results handed out in batches */
    ldb_docbuf buf;     /* read-ahead: documents [off, len) are not delivered yet */
    size_t off;
    bool exhausted;     /* the scan has nothing after what buf holds */
    bool busy;          /* checked out */
    uint64_t last_used_ns;
    struct ldb_cursor *next;
};

struct ldb_cursor_table {
    pthread_mutex_t mu;
    ldb_cursor *head;
    unsigned n, max;
    uint64_t timeout_ns;
    size_t budget, buffered;
    uint64_t opened_total, expired_total;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void ldb_docbuf_free(ldb_docbuf *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

int ldb_docbuf_append(ldb_docbuf *b, const uint8_t *doc, size_t len)
{
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len)
            cap *= 2;
        uint8_t *p = realloc(b->data, cap);
        if (!p)
            return -ENOMEM;
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, doc, len);
    b->len += len;
    b->n++;
    return 0;
}

size_t ldb_doc_len(const uint8_t *p)
{
    return (size_t)p[0] | (size_t)p[1] << 8 | (size_t)p[2] << 16 | (size_t)p[3] << 24;
}

static bson_t *copy_or_null(const bson_t *b)
{
    return b && !bson_empty(b) ? bson_copy(b) : NULL;
}

int ldb_cursor_new(const char *ns, const bson_t *filter, const bson_t *projection,
                   const bson_t *sort, int64_t skip, int64_t limit, size_t fill_bytes,
                   ldb_cursor **out)
{
    if (strlen(ns) > LDB_NS_MAX || skip < 0 || limit < 0)
        return -EINVAL;
    ldb_cursor *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    snprintf(c->ns, sizeof(c->ns), "%s", ns);
    c->filter = copy_or_null(filter);
    c->projection = copy_or_null(projection);
    c->sort = copy_or_null(sort);
    c->skip = skip;
    c->limit = limit;
    c->fill_bytes = fill_bytes ? fill_bytes : 1u << 20;
    c->last_used_ns = now_ns();
    *out = c;
    return 0;
}

void ldb_cursor_free(ldb_cursor *c)
{
    if (!c)
        return;
    if (c->filter)
        bson_destroy(c->filter);
    if (c->projection)
        bson_destroy(c->projection);
    if (c->sort)
        bson_destroy(c->sort);
    ldb_docbuf_free(&c->buf);
    free(c);
}

const char *ldb_cursor_id(const ldb_cursor *c) { return c->id; }

struct fill_ctx {
    ldb_cursor *c;
    size_t added_bytes;
    bool stopped;
    int rc;
};

static int fill_cb(const bson_t *doc, void *arg)
{
    struct fill_ctx *f = arg;
    int rc = ldb_docbuf_append(&f->c->buf, bson_get_data(doc), doc->len);
    if (rc < 0) {
        f->rc = rc;
        return 1;
    }
    f->c->scanned++;
    f->added_bytes += doc->len;
    if (f->added_bytes >= f->c->fill_bytes) {
        f->stopped = true;
        return 1;
    }
    return 0;
}

/* Reads the next results after what was scanned into the buffer (one ldb_find, resumed
 * by skip). Marks the cursor exhausted when the scan ran to its end. */
static int fill(ldb_cursor *c, ldb_store *s, uint64_t *examined, char *err, size_t err_len)
{
    if (c->limit > 0 && c->scanned >= (uint64_t)c->limit) {
        c->exhausted = true;
        return 0;
    }
    /* Drop what was delivered so the buffer holds only the read-ahead. */
    if (c->off > 0) {
        memmove(c->buf.data, c->buf.data + c->off, c->buf.len - c->off);
        c->buf.len -= c->off;
        c->off = 0;
    }
    struct fill_ctx f = {.c = c};
    ldb_find_stats st = {0};
    int64_t limit = c->limit > 0 ? c->limit - (int64_t)c->scanned : 0;
    int rc = ldb_find(s, c->ns, c->filter, c->projection, c->sort, c->skip + (int64_t)c->scanned,
                      limit, fill_cb, &f, &st, err, err_len);
    *examined += st.examined;
    if (rc == 0 && f.rc < 0) {
        snprintf(err, err_len, "out of memory reading query results");
        rc = f.rc;
    }
    if (rc < 0)
        return rc;
    if (!f.stopped)
        c->exhausted = true;
    return 0;
}

int ldb_cursor_next_batch(ldb_cursor *c, ldb_store *s, size_t max_docs, size_t max_bytes,
                          ldb_docbuf *out, bool *more, uint64_t *examined, char *err,
                          size_t err_len)
{
    size_t taken = 0, bytes = 0;
    int rc = 0;
    /* Each pass either hands out a document or fills; a fill that adds nothing marks
     * the cursor exhausted, so this ends. */
    while (max_docs == 0 || taken < max_docs) {
        if (c->off == c->buf.len) {
            if (c->exhausted)
                break;
            if ((rc = fill(c, s, examined, err, err_len)) < 0)
                return rc;
            continue;
        }
        const uint8_t *doc = c->buf.data + c->off;
        size_t len = ldb_doc_len(doc);
        /* Protobuf framing costs a few bytes per document on top of the document. */
        if (taken > 0 && bytes + len + 8 > max_bytes)
            break;
        if ((rc = ldb_docbuf_append(out, doc, len)) < 0) {
            snprintf(err, err_len, "out of memory building a batch");
            return rc;
        }
        c->off += len;
        c->delivered++;
        taken++;
        bytes += len + 8;
    }
    /* Look ahead so that more_available is exact rather than a guess. */
    if (c->off == c->buf.len && !c->exhausted && (rc = fill(c, s, examined, err, err_len)) < 0)
        return rc;
    *more = c->off < c->buf.len;
    c->last_used_ns = now_ns();
    return 0;
}

/* ------------------------------------------------------------------ the table */

ldb_cursor_table *ldb_cursor_table_new(unsigned max, uint64_t timeout_ms, size_t budget)
{
    ldb_cursor_table *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    pthread_mutex_init(&t->mu, NULL);
    t->max = max;
    t->timeout_ns = timeout_ms * 1000000u;
    t->budget = budget;
    return t;
}

void ldb_cursor_table_free(ldb_cursor_table *t)
{
    if (!t)
        return;
    while (t->head) {
        ldb_cursor *c = t->head;
        t->head = c->next;
        ldb_cursor_free(c);
    }
    pthread_mutex_destroy(&t->mu);
    free(t);
}

static size_t held_bytes(const ldb_cursor *c) { return c->buf.len - c->off; }

int ldb_cursor_register(ldb_cursor_table *t, ldb_cursor *c)
{
    uint8_t rnd[8];
    /* Unguessable ids: a cursor is only reachable by whoever received its id. */
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
        return -EIO;
    snprintf(c->id, sizeof(c->id), "c%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2],
             rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    ldb_cursor_reap(t);
    pthread_mutex_lock(&t->mu);
    if (t->n >= t->max) {
        pthread_mutex_unlock(&t->mu);
        return -ENOSPC;
    }
    c->busy = true; /* the registering call still holds it: check it in when done */
    c->next = t->head;
    t->head = c;
    t->n++;
    t->opened_total++;
    pthread_mutex_unlock(&t->mu);
    return 0;
}

int ldb_cursor_checkout(ldb_cursor_table *t, const char *id, const char *ns, ldb_cursor **out)
{
    int rc = -ENOENT;
    uint64_t now = now_ns();
    pthread_mutex_lock(&t->mu);
    for (ldb_cursor *c = t->head; c; c = c->next) {
        if (strcmp(c->id, id) != 0)
            continue;
        if (c->busy)
            rc = -EBUSY;
        else if (strcmp(c->ns, ns) != 0)
            rc = -EXDEV;
        else if (now - c->last_used_ns > t->timeout_ns)
            rc = -ENOENT; /* expired; the reaper frees it */
        else {
            c->busy = true;
            t->buffered -= held_bytes(c);
            *out = c;
            rc = 0;
        }
        break;
    }
    pthread_mutex_unlock(&t->mu);
    return rc;
}

static void unlink_locked(ldb_cursor_table *t, ldb_cursor *c)
{
    for (ldb_cursor **pp = &t->head; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            t->n--;
            return;
        }
}

void ldb_cursor_checkin(ldb_cursor_table *t, ldb_cursor *c, bool done)
{
    pthread_mutex_lock(&t->mu);
    if (done) {
        unlink_locked(t, c);
        pthread_mutex_unlock(&t->mu);
        ldb_cursor_free(c);
        return;
    }
    /* Over budget: forget the read-ahead; the next batch re-reads from delivered. */
    if (t->buffered + held_bytes(c) > t->budget) {
        c->scanned = c->delivered;
        c->exhausted = false;
        ldb_docbuf_free(&c->buf);
        c->off = 0;
    }
    t->buffered += held_bytes(c);
    c->busy = false;
    c->last_used_ns = now_ns();
    pthread_mutex_unlock(&t->mu);
}

unsigned ldb_cursor_reap(ldb_cursor_table *t)
{
    ldb_cursor *dead = NULL;
    unsigned n = 0;
    uint64_t now = now_ns();
    pthread_mutex_lock(&t->mu);
    for (ldb_cursor **pp = &t->head; *pp;) {
        ldb_cursor *c = *pp;
        if (!c->busy && now - c->last_used_ns > t->timeout_ns) {
            *pp = c->next;
            t->n--;
            t->buffered -= held_bytes(c);
            t->expired_total++;
            c->next = dead;
            dead = c;
            n++;
        } else {
            pp = &c->next;
        }
    }
    pthread_mutex_unlock(&t->mu);
    while (dead) {
        ldb_cursor *c = dead;
        dead = c->next;
        ldb_cursor_free(c);
    }
    return n;
}

void ldb_cursor_table_counts(ldb_cursor_table *t, ldb_cursor_counts *out)
{
    pthread_mutex_lock(&t->mu);
    out->open = t->n;
    out->opened_total = t->opened_total;
    out->expired_total = t->expired_total;
    out->buffered_bytes = t->buffered;
    pthread_mutex_unlock(&t->mu);
}
