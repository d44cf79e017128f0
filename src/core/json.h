/*
 * JSON validation of the text fields clients send (payload, metadata,
 * results, log data), with jansson. The engine stores JSON as text; it only
 * needs to know that text is well-formed and within its size limit.
 */
#ifndef TH_CORE_JSON_H
#define TH_CORE_JSON_H

#include <stddef.h>

#include "taskhive/error.h"

enum {
    TH_JSON_ANY = 0,
    TH_JSON_OBJECT = 1, /* must be an object */
};

/* Returns 0 when `text` is one well-formed JSON value of at most `max`
 * bytes (and an object with TH_JSON_OBJECT); otherwise TH_EINVAL or
 * TH_ETOOBIG with `err` naming `field` and the position of the problem. */
int th__json_check(const char *text, size_t max, int flags, const char *field, th_error *err);

#endif
