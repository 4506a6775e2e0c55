/*
 * state_persist.h — the host's gRPC-made state kept in a storage plugin's durable
 * key-value store (host.state_store, ABI 1.2 state_store): instance routes and rate
 * limits, NLB routes and external module registrations. Read back once at start,
 * written after every call that may have changed them. Control thread only.
 */
#ifndef MP_HOST_STATE_PERSIST_H
#define MP_HOST_STATE_PERSIST_H

#include <stddef.h>

#include "host.h"
#include "marchproxy/types.pb-c.h"

/* Checks that host.state_store names a running instance whose plugin offers a state
 * store, then loads what it holds into the instances and the NLB (entries the config
 * defines win over stored ones) and hands the instances their tables. 0 when there is
 * no state_store or everything loaded; a negative errno with the reason otherwise. */
int mp_state_restore(mp_host *h, char *err, size_t err_len);

/* Writes every table whose content changed since it was last written. Failures are
 * logged (the state stays in memory) and returned. */
int mp_state_save(mp_host *h);

/* Forget what was written (the host is shutting down). */
void mp_state_forget(mp_host *h);

/* svc_nlb.c: re-create a module registration read back from the state store. */
int mp_nlb_restore_module(mp_host *h, const Marchproxy__ModuleInstance *mi,
                          const char *registration_id, const Marchproxy__HealthCheckConfig *hc);

#endif
