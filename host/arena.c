/*
 * arena.c — chunked bump allocation. Large requests get a chunk of their own so one
 * big string does not waste a standard chunk.
 */
#include "arena.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define ARENA_CHUNK 8192
#define ARENA_ALIGN 16

struct chunk {
    struct chunk *next;
    size_t used, cap;
    _Alignas(ARENA_ALIGN) unsigned char data[];
};

struct mp_arena {
    struct chunk *head;
};

mp_arena *mp_arena_new(void)
{
    mp_arena *a = calloc(1, sizeof(*a));
    if (!a) {
        mp_err("out of memory");
        abort();
    }
    return a;
}

void mp_arena_free(mp_arena *a)
{
    if (!a)
        return;
    while (a->head) {
        struct chunk *c = a->head;
        a->head = c->next;
        free(c);
    }
    free(a);
}

void *mp_arena_alloc(mp_arena *a, size_t size)
{
    size = (size + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    if (size == 0)
        size = ARENA_ALIGN;
    struct chunk *c = a->head;
    if (!c || c->cap - c->used < size) {
        size_t cap = size > ARENA_CHUNK / 2 ? size : ARENA_CHUNK;
        struct chunk *n = malloc(sizeof(*n) + cap);
        if (!n) {
            mp_err("out of memory (arena of %zu bytes)", cap);
            abort();
        }
        n->used = 0;
        n->cap = cap;
        if (c && cap == size) {
            /* Keep the partly used chunk in front for the small allocations. */
            n->next = c->next;
            c->next = n;
        } else {
            n->next = c;
            a->head = n;
        }
        c = n;
    }
    void *p = c->data + c->used;
    c->used += size;
    memset(p, 0, size);
    return p;
}

void *mp_arena_memdup(mp_arena *a, const void *p, size_t n)
{
    void *d = mp_arena_alloc(a, n ? n : 1);
    if (n)
        memcpy(d, p, n);
    return d;
}

char *mp_arena_strndup(mp_arena *a, const char *s, size_t n)
{
    char *d = mp_arena_alloc(a, n + 1);
    if (n)
        memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *mp_arena_strdup(mp_arena *a, const char *s)
{
    return s ? mp_arena_strndup(a, s, strlen(s)) : mp_arena_strndup(a, "", 0);
}

char *mp_arena_printf(mp_arena *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return mp_arena_strdup(a, "");
    char *d = mp_arena_alloc(a, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(d, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return d;
}
