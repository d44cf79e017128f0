/*
 * A small cron expression parser and next-time calculator for periodic
 * services: five fields "minute hour day-of-month month day-of-week", each a
 * comma list of '*', values, ranges "a-b" and steps "x/n" (x a '*', value or
 * range), with month names (jan..dec) and weekday names (sun..sat; 0 and 7
 * are Sunday), plus the macros @yearly (@annually), @monthly, @weekly,
 * @daily (@midnight) and @hourly.
 *
 * As in Vixie cron, when both day fields are restricted (neither starts
 * with '*') a day matches if either matches; otherwise both must.
 */
#ifndef TH_SUPERVISE_CRON_H
#define TH_SUPERVISE_CRON_H

#include <stdint.h>

#include "taskhive/error.h"

typedef struct th__cron {
    uint64_t minute; /* bit m for minute m, 0-59 */
    uint32_t hour;   /* bits 0-23 */
    uint32_t dom;    /* bits 1-31 */
    uint32_t month;  /* bits 1-12 */
    uint32_t dow;    /* bits 0-6, Sunday = 0 */
    int dom_star;    /* the day-of-month field starts with '*' */
    int dow_star;
} th__cron;

/*
 * Parses `expr` into *c. TH_EINVAL with err->field naming the cron field at
 * fault ("minute", "hour", "day_of_month", "month", "day_of_week"), or
 * "cron" for the expression as a whole (wrong number of fields, unknown
 * macro, a schedule that never fires).
 */
int th__cron_parse(th__cron *c, const char *expr, th_error *err);

/*
 * The first matching minute strictly after `after_ms` (wall-clock ms), as
 * wall-clock ms, in UTC when `utc` is set and in local time otherwise; -1
 * when nothing matches within five years (e.g. "0 0 30 2 *").
 */
int64_t th__cron_next(const th__cron *c, int64_t after_ms, int utc);

#endif
