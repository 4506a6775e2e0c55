/*
 * pb_util.h — small helpers for building protobuf-c messages in an arena: timestamps,
 * map entries (map<K,V> is a repeated entry message in protobuf-c; entries are filled
 * through their descriptor so one helper serves every map type) and repeated fields.
 */
#ifndef MP_HOST_PB_UTIL_H
#define MP_HOST_PB_UTIL_H

#include <protobuf-c/protobuf-c.h>
#include <stdint.h>

#include "arena.h"
#include "google/protobuf/timestamp.pb-c.h"

/* Wall-clock time in nanoseconds since the epoch. */
uint64_t mp_wall_ns(void);
Google__Protobuf__Timestamp *mp_pb_timestamp(mp_arena *a, uint64_t unix_ns);
uint64_t mp_pb_timestamp_ns(const Google__Protobuf__Timestamp *ts); /* 0 for NULL */

/* Append one entry to a map field. `arr`/`n` are the message's entry array and count
 * (e.g. &m->metadata, &m->n_metadata); `entry_desc` the entry's descriptor (e.g.
 * &marchproxy__module_instance__metadata_entry__descriptor). The array grows in the
 * arena. Values: string maps use _str, integer/enum maps _int, message maps _msg. */
void mp_pb_map_add_str(mp_arena *a, const ProtobufCMessageDescriptor *entry_desc, void *arr,
                       size_t *n, const char *key, const char *value);
void mp_pb_map_add_int(mp_arena *a, const ProtobufCMessageDescriptor *entry_desc, void *arr,
                       size_t *n, const char *key, int64_t value);
void mp_pb_map_add_msg(mp_arena *a, const ProtobufCMessageDescriptor *entry_desc, void *arr,
                       size_t *n, const char *key, const ProtobufCMessage *value);
/* The key and value of one entry of a map<string, string>. */
void mp_pb_map_entry_str(const void *entry, const char **key, const char **value);
/* Look up a string map's value by key; NULL if absent. */
const char *mp_pb_map_get_str(void *const *entries, size_t n, const char *key);

/* Make room for `count` pointers in a repeated message field: *arr gets an arena
 * array, *n is set to 0 (the caller appends). */
void mp_pb_repeated_reserve(mp_arena *a, void *arr, size_t *n, size_t count);

/* Append one pointer to a repeated field (arena-grown). */
void mp_pb_append(mp_arena *a, void *arr, size_t *n, void *item);

/* A new message of `desc`'s type in the arena, initialised. */
void *mp_pb_new(mp_arena *a, const ProtobufCMessageDescriptor *desc);

#endif
