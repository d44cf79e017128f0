/*
 * Error codes, their names and descriptions, and th_error filling.
 */
#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const struct {
    int code;
    const char *name;
    const char *text;
} codes[] = {
    {TH_OK, "OK", "success"},
    {TH_EINVAL, "EINVAL", "invalid argument"},
    {TH_ENOMEM, "ENOMEM", "out of memory"},
    {TH_ENOTFOUND, "ENOTFOUND", "not found"},
    {TH_EBUSY, "EBUSY", "busy: queue full or resource in use"},
    {TH_ESTATE, "ESTATE", "not allowed in the task's current state"},
    {TH_ESTALE, "ESTALE", "stale lease: the task is no longer leased with this token"},
    {TH_ETIMEDOUT, "ETIMEDOUT", "timed out"},
    {TH_ECLOSED, "ECLOSED", "shutting down"},
    {TH_EIO, "EIO", "storage I/O error"},
    {TH_ECORRUPT, "ECORRUPT", "database is damaged or not a taskhive database"},
    {TH_EVERSION, "EVERSION", "database was written by a newer version of taskhive"},
    {TH_ETOOBIG, "ETOOBIG", "value too large"},
    {TH_ECONFLICT, "ECONFLICT", "conflicting request"},
    {TH_EBUDGET, "EBUDGET", "budget exceeded"},
    {TH_EUPSTREAM, "EUPSTREAM", "upstream provider failed"},
    {TH_EUNAVAIL, "EUNAVAIL", "provider unavailable (circuit open or unhealthy)"},
    {TH_ECANCELED, "ECANCELED", "cancelled"},
};

const char *th_strerror(int code)
{
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (codes[i].code == code)
            return codes[i].text;
    return "unknown error";
}

const char *th_errname(int code)
{
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (codes[i].code == code)
            return codes[i].name;
    return "EUNKNOWN";
}

int th__err(th_error *err, int code, const char *field, const char *fmt, ...)
{
    if (!err)
        return code;
    err->code = code;
    snprintf(err->field, sizeof err->field, "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return code;
}

void th__err_clear(th_error *err)
{
    if (err) {
        err->code = 0;
        err->field[0] = '\0';
        err->message[0] = '\0';
    }
}

void th__err_prefix(th_error *err, const char *prefix)
{
    if (!err)
        return;
    char tmp[2 * sizeof err->field + 2];
    if (err->field[0])
        snprintf(tmp, sizeof tmp, "%s.%s", prefix, err->field);
    else
        snprintf(tmp, sizeof tmp, "%s", prefix);
    snprintf(err->field, sizeof err->field, "%.63s", tmp);
}
