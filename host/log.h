/*
 * log.h — the host's log: one line per event on stderr, with time, level and origin.
 * Thread-safe (one write(2) per line). Owns the global log level.
 */
#ifndef MP_HOST_LOG_H
#define MP_HOST_LOG_H

#include <stdarg.h>

#include "marchproxy/plugin.h"

void mp_log_set_level(mp_log_level level);
mp_log_level mp_log_get_level(void);
/* Parses "error" "warn" "info" "debug"; -1 if unknown. */
int mp_log_level_from_name(const char *name);

/* origin: "host", "grpc", an instance id... */
void mp_logf(mp_log_level level, const char *origin, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void mp_vlogf(mp_log_level level, const char *origin, const char *fmt, va_list ap);

#define mp_err(...) mp_logf(MP_LOG_ERROR, "host", __VA_ARGS__)
#define mp_warn(...) mp_logf(MP_LOG_WARN, "host", __VA_ARGS__)
#define mp_info(...) mp_logf(MP_LOG_INFO, "host", __VA_ARGS__)
#define mp_debug(...) mp_logf(MP_LOG_DEBUG, "host", __VA_ARGS__)

#endif
