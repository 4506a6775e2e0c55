/*
 * config_view.h — the plugin-facing, read-only view (mp_config) of libconfig settings,
 * and conversions of a section to and from libconfig text (GetConfig / UpdateConfig).
 * An mp_config pointer is a config_setting_t pointer in disguise; plugins never see
 * libconfig types.
 */
#ifndef MP_HOST_CONFIG_VIEW_H
#define MP_HOST_CONFIG_VIEW_H

#include <libconfig.h>
#include <stddef.h>

#include "marchproxy/plugin.h"

static inline const mp_config *mp_config_of(const config_setting_t *s)
{
    return (const mp_config *)s;
}

/* Fills the cfg_* members of a host API table with the view's functions. */
void mp_config_view_fill_api(mp_host_api *api);

/* The section `s` (a group) rendered as libconfig text, e.g. "port = 80;\nname = \"x\";\n"
 * (the group's children, not the group itself). *out is malloc'd, caller frees.
 * 0 or -ENOMEM. */
int mp_config_section_to_text(const config_setting_t *s, char **out, size_t *out_len);

/* Parse libconfig text (a list of settings, as mp_config_section_to_text writes) into
 * `lc`, which the caller has initialised with config_init and later destroys. The root
 * setting of `lc` is then the section. `name` stands in for the file name in errors:
 * on a syntax error returns -EINVAL with "NAME:LINE: reason" in err. */
int mp_config_text_parse(const char *text, size_t len, const char *name, config_t *lc,
                         char *err, size_t err_len);

/* The checks behind cfg_check_keys and cfg_error, for host code too. */
int mp_config_check_keys(const config_setting_t *s, const char *const *allowed, char *err,
                         size_t err_len);
int mp_config_error(const config_setting_t *s, char *err, size_t err_len, const char *fmt,
                    ...) __attribute__((format(printf, 4, 5)));

#endif
