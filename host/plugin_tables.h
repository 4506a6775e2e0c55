/*
 * plugin_tables.h — pushing an instance's routes and rate limits to its plugin
 * generations (ABI 1.2 routes_changed / rate_limits_changed). Control thread only.
 */
#ifndef MP_HOST_PLUGIN_TABLES_H
#define MP_HOST_PLUGIN_TABLES_H

#include <stdbool.h>
#include <stddef.h>

#include "host.h"

/* The plugin takes its route table (routes_changed). */
bool mp_generation_takes_routes(const mp_generation *g);
/* The plugin enforces its rate limits per request itself (rate_limits_changed), so the
 * data plane does not also limit its connections. */
bool mp_generation_limits_requests(const mp_generation *g);

/* Hand the instance's current table to every live generation (only = NULL) or to one.
 * 0, or the first refusal's negative errno with "<id> (<version>) refused the routes:
 * <reason>" in err; generations without the callback are skipped. */
int mp_tables_push_routes(struct mp_instance *inst, mp_generation *only, char *err,
                          size_t err_len);
int mp_tables_push_rate_limits(struct mp_instance *inst, mp_generation *only, char *err,
                               size_t err_len);
/* Both tables (a new generation's start). */
int mp_tables_push_all(struct mp_instance *inst, mp_generation *only, char *err,
                       size_t err_len);

/* A change to one of the instance's tables that its plugins may refuse:
 *     mp_table_change_begin(inst, &inst->routes, &t);   (saves the table)
 *     ... edit inst->routes ...
 *     rc = mp_table_change_commit(inst, &inst->routes, &t, err, len);
 * commit pushes the new table; on a refusal the saved one is put back (and pushed
 * again) and the refusal returned. Nothing is saved when no plugin takes the table. */
typedef struct mp_table_change {
    mp_msg_store saved;
    bool saved_valid;
} mp_table_change;
int mp_table_change_begin(struct mp_instance *inst, mp_msg_store *table, mp_table_change *t);
int mp_table_change_commit(struct mp_instance *inst, mp_msg_store *table, mp_table_change *t,
                           char *err, size_t err_len);

#endif
