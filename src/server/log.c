/*
 * JSON-lines logging; see log.h. One fputs per line under stdio's own lock
 * keeps lines whole when several threads log.
 */
#include "server/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static atomic_int min_level = TH_LOG_INFO;

void th__log_set_level(th_log_level level)
{
    atomic_store(&min_level, (int)level);
}

void th__log(th_log_level level, const char *component, json_t *fields, const char *fmt, ...)
{
    if ((int)level < atomic_load(&min_level)) {
        json_decref(fields);
        return;
    }
    char msg[1024], when[40];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + n, sizeof when - n, ".%03ldZ", ts.tv_nsec / 1000000);
    json_t *line = json_pack("{s:s,s:s,s:s,s:s}", "time", when, "level", th_log_level_name(level),
                             "component", component, "message", msg);
    if (line && fields)
        json_object_set(line, "fields", fields);
    json_decref(fields);
    char *text = line ? json_dumps(line, JSON_COMPACT) : NULL;
    if (text) {
        flockfile(stderr);
        fputs(text, stderr);
        fputc('\n', stderr);
        funlockfile(stderr);
        free(text);
    }
    json_decref(line);
}
