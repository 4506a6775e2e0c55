/*
 * pb_util.c — see pb_util.h. Map entries are set through their field descriptors
 * (key = field 1, value = field 2) so no per-map code exists anywhere.
 */
#include "pb_util.h"

#include <string.h>
#include <time.h>

uint64_t mp_wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void *mp_pb_new(mp_arena *a, const ProtobufCMessageDescriptor *desc)
{
    void *m = mp_arena_alloc(a, desc->sizeof_message);
    desc->message_init(m);
    return m;
}

Google__Protobuf__Timestamp *mp_pb_timestamp(mp_arena *a, uint64_t unix_ns)
{
    Google__Protobuf__Timestamp *ts = mp_pb_new(a, &google__protobuf__timestamp__descriptor);
    ts->seconds = (int64_t)(unix_ns / 1000000000u);
    ts->nanos = (int32_t)(unix_ns % 1000000000u);
    return ts;
}

uint64_t mp_pb_timestamp_ns(const Google__Protobuf__Timestamp *ts)
{
    if (!ts || ts->seconds < 0)
        return 0;
    return (uint64_t)ts->seconds * 1000000000u + (uint64_t)(ts->nanos < 0 ? 0 : ts->nanos);
}

/* Grows an arena array of pointers by one slot; capacity doubles at powers of two so
 * appends stay amortised O(1) (old arrays are left in the arena). */
void mp_pb_append(mp_arena *a, void *arr, size_t *n, void *item)
{
    void ***parr = arr;
    size_t count = *n;
    if (count == 0 || (count & (count - 1)) == 0) {
        size_t cap = count ? count * 2 : 4;
        void **grown = mp_arena_alloc(a, cap * sizeof(void *));
        if (count)
            memcpy(grown, *parr, count * sizeof(void *));
        *parr = grown;
    }
    (*parr)[count] = item;
    *n = count + 1;
}

void mp_pb_repeated_reserve(mp_arena *a, void *arr, size_t *n, size_t count)
{
    void ***parr = arr;
    *parr = count ? mp_arena_alloc(a, count * sizeof(void *)) : NULL;
    *n = 0;
}

static void *new_entry(mp_arena *a, const ProtobufCMessageDescriptor *d, const char *key)
{
    void *e = mp_pb_new(a, d);
    *(char **)((char *)e + d->fields[0].offset) = mp_arena_strdup(a, key);
    return e;
}

void mp_pb_map_add_str(mp_arena *a, const ProtobufCMessageDescriptor *d, void *arr, size_t *n,
                       const char *key, const char *value)
{
    void *e = new_entry(a, d, key);
    *(char **)((char *)e + d->fields[1].offset) = mp_arena_strdup(a, value);
    mp_pb_append(a, arr, n, e);
}

void mp_pb_map_add_int(mp_arena *a, const ProtobufCMessageDescriptor *d, void *arr, size_t *n,
                       const char *key, int64_t value)
{
    void *e = new_entry(a, d, key);
    void *slot = (char *)e + d->fields[1].offset;
    switch (d->fields[1].type) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        *(int64_t *)slot = value;
        break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        *(uint64_t *)slot = (uint64_t)value;
        break;
    default: /* int32, enum and their kin are 32-bit */
        *(int32_t *)slot = (int32_t)value;
        break;
    }
    mp_pb_append(a, arr, n, e);
}

void mp_pb_map_add_msg(mp_arena *a, const ProtobufCMessageDescriptor *d, void *arr, size_t *n,
                       const char *key, const ProtobufCMessage *value)
{
    void *e = new_entry(a, d, key);
    *(const ProtobufCMessage **)((char *)e + d->fields[1].offset) = value;
    mp_pb_append(a, arr, n, e);
}

void mp_pb_map_entry_str(const void *entry, const char **key, const char **value)
{
    const ProtobufCMessage *e = entry;
    const ProtobufCMessageDescriptor *d = e->descriptor;
    *key = *(char *const *)((const char *)e + d->fields[0].offset);
    *value = *(char *const *)((const char *)e + d->fields[1].offset);
}

const char *mp_pb_map_get_str(void *const *entries, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++) {
        const char *k, *v;
        mp_pb_map_entry_str(entries[i], &k, &v);
        if (k && strcmp(k, key) == 0)
            return v;
    }
    return NULL;
}
