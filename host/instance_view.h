/*
 * instance_view.h — the wire pictures of an in-process instance: ModuleInstance,
 * BlueGreenConfig and ModuleMetrics, built in a call's arena. Every RPC that shows an
 * instance (GetStatus, GetInstances, ListModules, GetModuleInfo, GetMetrics,
 * GetNLBMetrics ...) builds it here, so they never disagree.
 */
#ifndef MP_HOST_INSTANCE_VIEW_H
#define MP_HOST_INSTANCE_VIEW_H

#include "arena.h"
#include "host.h"
#include "marchproxy/types.pb-c.h"

/* The plugin's module type, or UNSPECIFIED without a generation. */
mp_module_type mp_instance_module_type(const struct mp_instance *inst);

Marchproxy__ModuleInstance *mp_view_module_instance(mp_arena *a, struct mp_instance *inst);
Marchproxy__BlueGreenConfig *mp_view_blue_green(mp_arena *a, const struct mp_instance *inst);
/* names/n_names filter the data points (none = all). */
Marchproxy__ModuleMetrics *mp_view_module_metrics(mp_arena *a, struct mp_instance *inst,
                                                  char *const *names, size_t n_names);

#endif
