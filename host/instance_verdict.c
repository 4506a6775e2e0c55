/*
 * instance_verdict.c — one in-process instance's opinion of a route (ModuleService.
 * CanHandle, NLBService.ValidateRoute): the plugin's can_handle when it has one,
 * otherwise whether one of the instance's own routes matches. Control thread.
 */
#include "route_match.h"

#include <stdio.h>
#include <string.h>

#include "host.h"

void mp_instance_verdict(mp_instance *inst, const Marchproxy__Route *route,
                         mp_can_handle_result *out)
{
    const char *names[MP_ROUTE_MAX_HEADERS], *values[MP_ROUTE_MAX_HEADERS];
    mp_route_request q;
    memset(out, 0, sizeof(*out));
    out->struct_size = sizeof(*out);
    if (!route) {
        snprintf(out->reason, sizeof(out->reason), "no route given");
        return;
    }
    if (mp_route_request_from_wire(route, &q, names, values, MP_ROUTE_MAX_HEADERS) < 0) {
        snprintf(out->reason, sizeof(out->reason), "the route has more than %d headers",
                 MP_ROUTE_MAX_HEADERS);
        return;
    }
    if (!inst->active) {
        snprintf(out->reason, sizeof(out->reason), "instance %s has no active generation",
                 inst->id);
        return;
    }
    const mp_plugin_descriptor *d = inst->active->image->desc;
    if (d->can_handle) {
        mp_route_view v;
        mp_route_view_from_request(&q, route->route_id, route->priority, &v);
        d->can_handle(inst->active->state, &v, out);
        out->reason[sizeof(out->reason) - 1] = '\0';
        return;
    }
    const Marchproxy__Route *best = NULL;
    for (size_t i = 0; i < inst->routes.n; i++) {
        const Marchproxy__Route *r = (const Marchproxy__Route *)inst->routes.items[i]->msg;
        if (mp_route_entry_matches(r, &q) && (!best || r->priority > best->priority))
            best = r;
    }
    if (best) {
        out->can_handle = 1;
        out->priority = best->priority;
        snprintf(out->reason, sizeof(out->reason), "matches route %s of instance %s",
                 best->route_id, inst->id);
    } else if (inst->routes.n == 0) {
        snprintf(out->reason, sizeof(out->reason),
                 "instance %s has no routes and its plugin has no can_handle", inst->id);
    } else {
        snprintf(out->reason, sizeof(out->reason), "none of the %zu routes of instance %s "
                 "matches", inst->routes.n, inst->id);
    }
}
