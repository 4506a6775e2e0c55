/*
 * arena.h — a bump allocator for building one RPC response: every string, array and
 * sub-message of a response comes from the call's arena and is freed at once when the
 * response has been packed, so handlers never free piecemeal.
 */
#ifndef MP_HOST_ARENA_H
#define MP_HOST_ARENA_H

#include <stdarg.h>
#include <stddef.h>

typedef struct mp_arena mp_arena;

mp_arena *mp_arena_new(void);
void mp_arena_free(mp_arena *a); /* NULL-safe */

/* Zeroed memory; aborts the process on exhaustion rather than returning NULL, since
 * every caller would only turn NULL into the same failure. */
void *mp_arena_alloc(mp_arena *a, size_t size);
char *mp_arena_strdup(mp_arena *a, const char *s); /* NULL -> "" */
char *mp_arena_strndup(mp_arena *a, const char *s, size_t n);
char *mp_arena_printf(mp_arena *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void *mp_arena_memdup(mp_arena *a, const void *p, size_t n);

#endif
