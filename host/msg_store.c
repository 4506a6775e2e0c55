/*
 * msg_store.c — see msg_store.h. A plain array: stores hold at most a few thousand
 * entries and are read far more often than written, so linear lookups keep the code
 * obvious; the data path reads compiled snapshots, never these stores.
 */
#include "msg_store.h"

#include <errno.h>
#include <stdbool.h>
#include <sys/types.h>
#include <stdlib.h>
#include <string.h>

#include "pb_util.h"

ProtobufCMessage *mp_pb_clone(const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t stack[1024];
    uint8_t *buf = n <= sizeof(stack) ? stack : malloc(n);
    if (!buf)
        return NULL;
    protobuf_c_message_pack(m, buf);
    ProtobufCMessage *copy = protobuf_c_message_unpack(m->descriptor, NULL, n, buf);
    if (buf != stack)
        free(buf);
    return copy;
}

int mp_msg_store_init(mp_msg_store *s, const ProtobufCMessageDescriptor *desc,
                      const char *key_field_name, size_t max_items)
{
    memset(s, 0, sizeof(*s));
    s->desc = desc;
    s->key_field = protobuf_c_message_descriptor_get_field_by_name(desc, key_field_name);
    s->max_items = max_items;
    if (!s->key_field || s->key_field->type != PROTOBUF_C_TYPE_STRING)
        return -EINVAL;
    return 0;
}

static const char *key_of(const mp_msg_store *s, const ProtobufCMessage *m)
{
    const char *k = *(char *const *)((const char *)m + s->key_field->offset);
    return k ? k : "";
}

static void item_drop_aux(mp_msg_item *it)
{
    if (it->aux && it->aux_free)
        it->aux_free(it->aux);
    it->aux = NULL;
    it->aux_free = NULL;
}

static void item_free(mp_msg_item *it)
{
    item_drop_aux(it);
    protobuf_c_message_free_unpacked(it->msg, NULL);
    free(it->owner);
    free(it);
}

static ssize_t index_of(const mp_msg_store *s, const char *key)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->items[i]->key, key) == 0)
            return (ssize_t)i;
    return -1;
}

mp_msg_item *mp_msg_store_find(const mp_msg_store *s, const char *key)
{
    ssize_t i = index_of(s, key);
    return i < 0 ? NULL : s->items[i];
}

int mp_msg_store_put(mp_msg_store *s, const ProtobufCMessage *msg, const char *owner,
                     mp_origin origin)
{
    const char *key = key_of(s, msg);
    if (!*key)
        return -EINVAL;
    ssize_t at = index_of(s, key);
    if (at < 0 && s->n >= s->max_items)
        return -ENOSPC;
    ProtobufCMessage *copy = mp_pb_clone(msg);
    char *owner_copy = owner ? strdup(owner) : NULL;
    if (!copy || (owner && !owner_copy)) {
        if (copy)
            protobuf_c_message_free_unpacked(copy, NULL);
        free(owner_copy);
        return -ENOMEM;
    }
    uint64_t now = mp_wall_ns();
    if (at >= 0) {
        mp_msg_item *it = s->items[at];
        item_drop_aux(it);
        protobuf_c_message_free_unpacked(it->msg, NULL);
        free(it->owner);
        it->msg = copy;
        it->key = key_of(s, copy);
        it->owner = owner_copy;
        it->origin = origin;
        it->updated_ns = now;
        return 0;
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        mp_msg_item **grown = realloc(s->items, cap * sizeof(*grown));
        if (!grown) {
            protobuf_c_message_free_unpacked(copy, NULL);
            free(owner_copy);
            return -ENOMEM;
        }
        s->items = grown;
        s->cap = cap;
    }
    mp_msg_item *it = calloc(1, sizeof(*it));
    if (!it) {
        protobuf_c_message_free_unpacked(copy, NULL);
        free(owner_copy);
        return -ENOMEM;
    }
    it->msg = copy;
    it->key = key_of(s, copy);
    it->owner = owner_copy;
    it->origin = origin;
    it->created_ns = it->updated_ns = now;
    it->seq = s->next_seq++;
    s->items[s->n++] = it;
    return 0;
}

int mp_msg_store_remove(mp_msg_store *s, const char *key)
{
    ssize_t at = index_of(s, key);
    if (at < 0)
        return -ENOENT;
    item_free(s->items[at]);
    memmove(&s->items[at], &s->items[at + 1], (s->n - (size_t)at - 1) * sizeof(s->items[0]));
    s->n--;
    return 0;
}

size_t mp_msg_store_remove_where(mp_msg_store *s, mp_origin origin, const char *owner)
{
    size_t kept = 0, removed = 0;
    for (size_t i = 0; i < s->n; i++) {
        mp_msg_item *it = s->items[i];
        bool match = it->origin == origin &&
                     (!owner || (it->owner && strcmp(it->owner, owner) == 0));
        if (match) {
            item_free(it);
            removed++;
        } else {
            s->items[kept++] = it;
        }
    }
    s->n = kept;
    return removed;
}

void mp_msg_store_clear(mp_msg_store *s)
{
    for (size_t i = 0; i < s->n; i++)
        item_free(s->items[i]);
    s->n = 0;
}

void mp_msg_store_destroy(mp_msg_store *s)
{
    mp_msg_store_clear(s);
    free(s->items);
    s->items = NULL;
    s->cap = 0;
}

int mp_msg_store_copy(mp_msg_store *dst, const mp_msg_store *src)
{
    *dst = *src;
    dst->items = NULL;
    dst->n = dst->cap = 0;
    if (!src->n)
        return 0;
    dst->items = calloc(src->n, sizeof(*dst->items));
    if (!dst->items)
        return -ENOMEM;
    dst->cap = src->n;
    for (size_t i = 0; i < src->n; i++) {
        const mp_msg_item *from = src->items[i];
        mp_msg_item *it = calloc(1, sizeof(*it));
        ProtobufCMessage *copy = it ? mp_pb_clone(from->msg) : NULL;
        char *owner = from->owner ? strdup(from->owner) : NULL;
        if (!copy || (from->owner && !owner)) {
            if (copy)
                protobuf_c_message_free_unpacked(copy, NULL);
            free(owner);
            free(it);
            mp_msg_store_destroy(dst);
            return -ENOMEM;
        }
        *it = *from;
        it->msg = copy;
        it->key = key_of(dst, copy);
        it->owner = owner;
        it->aux = NULL; /* derived state is rebuilt on demand */
        it->aux_free = NULL;
        dst->items[dst->n++] = it;
    }
    return 0;
}

void mp_msg_store_replace(mp_msg_store *dst, mp_msg_store *src)
{
    mp_msg_store_destroy(dst);
    *dst = *src;
    memset(src, 0, sizeof(*src));
}
