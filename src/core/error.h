/*
 * Internal helpers for filling th_error.
 */
#ifndef TH_CORE_ERROR_H
#define TH_CORE_ERROR_H

#include "taskhive/error.h"

/* Fills `err` (may be NULL) and returns `code`, so a caller can write
 * `return th__err(err, TH_EINVAL, "queue", "must not be empty");`. */
int th__err(th_error *err, int code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Clears `err` (may be NULL) to "no error". */
void th__err_clear(th_error *err);

/* Prefixes err->field with `prefix` ("tasks[3]" + "priority" ->
 * "tasks[3].priority"). */
void th__err_prefix(th_error *err, const char *prefix);

#endif
