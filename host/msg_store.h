/*
 * msg_store.h — an ordered set of protobuf messages of one type, keyed by one of their
 * string fields (Route.route_id, RateLimit.limit_id, ModuleInstance.instance_id).
 * Messages are deep copies (packed and unpacked), so the store owns them whole,
 * including fields added to the protos later. Insertion order is kept: it is the
 * tie-break wherever two entries rank equal. Control thread only.
 */
#ifndef MP_HOST_MSG_STORE_H
#define MP_HOST_MSG_STORE_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

/* Where an entry came from: the config file is re-read on reload and replaces its own
 * entries only; API entries survive reloads. */
typedef enum mp_origin { MP_ORIGIN_CONFIG = 1, MP_ORIGIN_API = 2, MP_ORIGIN_MODULE = 3 } mp_origin;

typedef struct mp_msg_item {
    ProtobufCMessage *msg; /* owned */
    const char *key;       /* points into msg */
    char *owner;           /* e.g. target instance id; owned, may be NULL */
    mp_origin origin;
    uint64_t created_ns, updated_ns, used_ns;
    uint64_t seq;          /* insertion order */
    void *aux;             /* derived state (e.g. a compiled rate limiter); dropped with
                            * aux_free whenever the message is replaced or removed */
    void (*aux_free)(void *aux);
} mp_msg_item;

typedef struct mp_msg_store {
    const ProtobufCMessageDescriptor *desc;
    const ProtobufCFieldDescriptor *key_field;
    size_t max_items;
    mp_msg_item **items;
    size_t n, cap;
    uint64_t next_seq;
} mp_msg_store;

/* key_field_name must name a string field of desc. */
int mp_msg_store_init(mp_msg_store *s, const ProtobufCMessageDescriptor *desc,
                      const char *key_field_name, size_t max_items);
void mp_msg_store_clear(mp_msg_store *s);   /* remove all */
void mp_msg_store_destroy(mp_msg_store *s); /* clear + free arrays */

/* Insert a copy of msg, or replace the entry with the same key (keeping its place and
 * creation time). Returns 0, -EINVAL (empty key), -ENOSPC (store full), -ENOMEM. */
int mp_msg_store_put(mp_msg_store *s, const ProtobufCMessage *msg, const char *owner,
                     mp_origin origin);
mp_msg_item *mp_msg_store_find(const mp_msg_store *s, const char *key);
int mp_msg_store_remove(mp_msg_store *s, const char *key); /* 0 or -ENOENT */
/* Remove every entry of one origin (and, if owner != NULL, of that owner). Returns how
 * many were removed. */
size_t mp_msg_store_remove_where(mp_msg_store *s, mp_origin origin, const char *owner);

/* A deep copy of src (entries, owners, origins, times; not aux) into an uninitialised
 * dst. 0 or -ENOMEM (dst then holds nothing). */
int mp_msg_store_copy(mp_msg_store *dst, const mp_msg_store *src);
/* dst's entries are destroyed and it takes over src's; src is left empty. */
void mp_msg_store_replace(mp_msg_store *dst, mp_msg_store *src);

/* Deep copy of any message (pack + unpack); NULL on failure. Free with
 * protobuf_c_message_free_unpacked(m, NULL). */
ProtobufCMessage *mp_pb_clone(const ProtobufCMessage *m);

#endif
