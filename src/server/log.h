/*
 * Structured logs: one JSON object per line on stderr,
 *   {"time":"2026-11-23T17:00:00.123Z","level":"info","component":"server",
 *    "message":"listening","fields":{"addr":"127.0.0.1:7070"}}
 */
#ifndef TH_SERVER_LOG_H
#define TH_SERVER_LOG_H

#include <jansson.h>

#include "taskhive/task.h"

/* Lines below `level` are dropped. Thread-safe. */
void th__log_set_level(th_log_level level);
/* Writes one line. `fields` (may be NULL) is a JSON object; it is consumed
 * (its reference is stolen). */
void th__log(th_log_level level, const char *component, json_t *fields, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
