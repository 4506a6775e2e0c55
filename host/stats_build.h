/*
 * stats_build.h — ModuleStats for one in-process instance, shared by
 * NLBService.GetModuleInfo and ModuleService.GetStats so both report the same numbers.
 * (ModuleInstance, BlueGreenConfig and ModuleMetrics views live in instance_view.h.)
 */
#ifndef MP_HOST_STATS_BUILD_H
#define MP_HOST_STATS_BUILD_H

#include "arena.h"
#include "marchproxy/plugin.h"
#include "marchproxy/types.pb-c.h"

/* Counters since the last reset, latency average and quantiles in ms from the
 * histogram, process CPU and RSS (in-process instances share the process), and the
 * plugin's custom stats. Strings and sub-messages come from the arena; *out is
 * initialised here, so fresh arena memory will do. Control thread only (it samples the
 * host's CPU sampler and calls the plugin). */
void mp_build_module_stats(mp_arena *a, mp_instance *inst, Marchproxy__ModuleStats *out);

#endif
