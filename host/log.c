/*
 * log.c — formats log lines and writes each with a single write(2) so lines from
 * different threads never interleave.
 */
#include "log.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static _Atomic int log_level = MP_LOG_INFO;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void mp_log_set_level(mp_log_level level) { atomic_store(&log_level, (int)level); }

mp_log_level mp_log_get_level(void) { return (mp_log_level)atomic_load(&log_level); }

int mp_log_level_from_name(const char *name)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
        if (strcasecmp(name, level_names[i]) == 0)
            return (int)i;
    return -1;
}

void mp_vlogf(mp_log_level level, const char *origin, const char *fmt, va_list ap)
{
    if ((int)level > atomic_load(&log_level))
        return;
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s [%s] ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, level_names[level], origin ? origin : "-");
    if (n < 0)
        return;
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

void mp_logf(mp_log_level level, const char *origin, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    mp_vlogf(level, origin, fmt, ap);
    va_end(ap);
}
