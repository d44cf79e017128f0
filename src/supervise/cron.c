/*
 * Cron expressions: parsing into bit sets and finding the next matching
 * minute. See cron.h for the syntax.
 */
#include "supervise/cron.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/error.h"

#define EXPR_MAX 256

typedef struct field_def {
    const char *name;
    int lo, hi;
    const char *const *names; /* names[i] is value lo + i, or NULL */
} field_def;

static const char *const month_names[] = {"jan", "feb", "mar", "apr", "may", "jun", "jul",
                                          "aug", "sep", "oct", "nov", "dec", NULL};
static const char *const dow_names[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat", NULL};

static const field_def fields[5] = {
    {"minute", 0, 59, NULL},          {"hour", 0, 23, NULL},
    {"day_of_month", 1, 31, NULL},    {"month", 1, 12, month_names},
    {"day_of_week", 0, 7, dow_names},
};

static const struct {
    const char *macro, *expr;
} macros[] = {
    {"@yearly", "0 0 1 1 *"}, {"@annually", "0 0 1 1 *"}, {"@monthly", "0 0 1 * *"},
    {"@weekly", "0 0 * * 0"}, {"@daily", "0 0 * * *"},    {"@midnight", "0 0 * * *"},
    {"@hourly", "0 * * * *"},
};

/* Reads a number or a name at *p; advances *p. Returns 0 or -1. */
static int parse_value(const field_def *f, const char **p, int *out)
{
    const char *s = *p;
    if (isdigit((unsigned char)*s)) {
        long v = 0;
        while (isdigit((unsigned char)*s)) {
            v = v * 10 + (*s - '0');
            if (v > 1000)
                return -1;
            s++;
        }
        *out = (int)v;
        *p = s;
        return 0;
    }
    if (f->names && isalpha((unsigned char)s[0]) && isalpha((unsigned char)s[1]) &&
        isalpha((unsigned char)s[2]) && !isalpha((unsigned char)s[3])) {
        for (int i = 0; f->names[i]; i++)
            if (strncasecmp(s, f->names[i], 3) == 0) {
                *out = f->lo + i;
                *p = s + 3;
                return 0;
            }
    }
    return -1;
}

/* Parses one field (NUL-terminated text) into the bit set *bits. */
static int parse_field(const field_def *f, const char *text, uint64_t *bits, th_error *err)
{
    if (!*text)
        return th__err(err, TH_EINVAL, f->name, "%s: empty", f->name);
    *bits = 0;
    const char *p = text;
    for (;;) {
        int lo, hi, step = 1;
        int star = 0;
        if (*p == '*') {
            star = 1;
            lo = f->lo;
            hi = f->hi;
            p++;
        } else {
            if (parse_value(f, &p, &lo))
                return th__err(err, TH_EINVAL, f->name, "%s: \"%s\": expected a number%s", f->name,
                               text, f->names ? " or a name" : "");
            hi = lo;
            if (*p == '-') {
                p++;
                if (parse_value(f, &p, &hi))
                    return th__err(err, TH_EINVAL, f->name, "%s: \"%s\": bad range end", f->name,
                                   text);
            }
        }
        if (*p == '/') {
            p++;
            if (!isdigit((unsigned char)*p))
                return th__err(err, TH_EINVAL, f->name, "%s: \"%s\": bad step", f->name, text);
            long v = 0;
            while (isdigit((unsigned char)*p)) {
                v = v * 10 + (*p - '0');
                if (v > 1000)
                    break;
                p++;
            }
            if (v < 1 || v > f->hi - f->lo + 1 || isdigit((unsigned char)*p))
                return th__err(err, TH_EINVAL, f->name, "%s: \"%s\": step out of range 1-%d",
                               f->name, text, f->hi - f->lo + 1);
            step = (int)v;
            if (!star && hi == lo)
                hi = f->hi; /* "5/15" means 5-max/15 */
        }
        if (lo < f->lo || lo > f->hi || hi < f->lo || hi > f->hi)
            return th__err(err, TH_EINVAL, f->name, "%s: \"%s\": out of range %d-%d", f->name, text,
                           f->lo, f->hi);
        if (hi < lo)
            return th__err(err, TH_EINVAL, f->name, "%s: \"%s\": range %d-%d runs backwards",
                           f->name, text, lo, hi);
        for (int v = lo; v <= hi; v += step)
            *bits |= (uint64_t)1 << v;
        if (*p == '\0')
            return 0;
        if (*p != ',')
            return th__err(err, TH_EINVAL, f->name, "%s: \"%s\": unexpected '%c'", f->name, text,
                           *p);
        p++;
    }
}

int th__cron_parse(th__cron *c, const char *expr, th_error *err)
{
    memset(c, 0, sizeof *c);
    if (!expr)
        return th__err(err, TH_EINVAL, "cron", "no expression");
    while (isspace((unsigned char)*expr))
        expr++;
    if (*expr == '@') {
        size_t n = strcspn(expr, " \t\r\n");
        for (size_t i = 0; i < sizeof macros / sizeof macros[0]; i++)
            if (strlen(macros[i].macro) == n && strncasecmp(expr, macros[i].macro, n) == 0) {
                const char *rest = expr + n;
                while (isspace((unsigned char)*rest))
                    rest++;
                if (*rest)
                    return th__err(err, TH_EINVAL, "cron", "nothing may follow %s",
                                   macros[i].macro);
                return th__cron_parse(c, macros[i].expr, err);
            }
        return th__err(err, TH_EINVAL, "cron", "unknown macro \"%.*s\"", (int)(n > 40 ? 40 : n),
                       expr);
    }
    if (strlen(expr) >= EXPR_MAX)
        return th__err(err, TH_EINVAL, "cron", "longer than %d characters", EXPR_MAX - 1);
    char buf[EXPR_MAX];
    snprintf(buf, sizeof buf, "%s", expr);
    char *part[6];
    int n = 0;
    char *p = buf;
    while (*p && n < 6) {
        while (isspace((unsigned char)*p))
            p++;
        if (!*p)
            break;
        part[n++] = p;
        while (*p && !isspace((unsigned char)*p))
            p++;
        if (*p)
            *p++ = '\0';
    }
    while (isspace((unsigned char)*p))
        p++;
    if (n != 5 || *p)
        return th__err(err, TH_EINVAL, "cron",
                       "expected 5 fields \"minute hour day-of-month month day-of-week\"");
    uint64_t bits[5];
    for (int i = 0; i < 5; i++) {
        int rc = parse_field(&fields[i], part[i], &bits[i], err);
        if (rc)
            return rc;
    }
    c->minute = bits[0];
    c->hour = (uint32_t)bits[1];
    c->dom = (uint32_t)bits[2];
    c->month = (uint32_t)bits[3];
    c->dow = (uint32_t)(bits[4] & 0x7f);
    if (bits[4] & (1u << 7))
        c->dow |= 1; /* 7 is Sunday too */
    c->dom_star = part[2][0] == '*';
    c->dow_star = part[4][0] == '*';
    if (th__cron_next(c, 0, 1) < 0) /* five years from 1970 include a leap day */
        return th__err(err, TH_EINVAL, "cron", "\"%s\" never fires", expr);
    return 0;
}

static int day_matches(const th__cron *c, const struct tm *tm)
{
    int dom = (c->dom >> tm->tm_mday) & 1;
    int dow = (c->dow >> tm->tm_wday) & 1;
    if (!c->dom_star && !c->dow_star)
        return dom || dow;
    return dom && dow;
}

/* Normalises *tm after a field was bumped and returns its time_t. */
static time_t normalise(struct tm *tm, int utc)
{
    time_t t;
    if (utc) {
        t = timegm(tm);
        gmtime_r(&t, tm);
    } else {
        tm->tm_isdst = -1;
        t = mktime(tm);
        localtime_r(&t, tm);
    }
    return t;
}

int64_t th__cron_next(const th__cron *c, int64_t after_ms, int utc)
{
    time_t start = (time_t)(after_ms / 1000);
    time_t t = start - start % 60 + 60;
    struct tm tm;
    if (utc)
        gmtime_r(&t, &tm);
    else
        localtime_r(&t, &tm);
    tm.tm_sec = 0;
    int last_year = tm.tm_year + 5;
    for (int iter = 0; iter < 100000 && tm.tm_year <= last_year; iter++) {
        if (!((c->month >> (tm.tm_mon + 1)) & 1)) {
            tm.tm_mon++;
            tm.tm_mday = 1;
            tm.tm_hour = tm.tm_min = 0;
            t = normalise(&tm, utc);
            continue;
        }
        if (!day_matches(c, &tm)) {
            tm.tm_mday++;
            tm.tm_hour = tm.tm_min = 0;
            t = normalise(&tm, utc);
            continue;
        }
        if (!((c->hour >> tm.tm_hour) & 1)) {
            tm.tm_hour++;
            tm.tm_min = 0;
            t = normalise(&tm, utc);
            continue;
        }
        if (!((c->minute >> tm.tm_min) & 1)) {
            tm.tm_min++;
            t = normalise(&tm, utc);
            continue;
        }
        t = normalise(&tm, utc);
        if ((int64_t)t * 1000 <= after_ms) { /* a repeated local hour (DST ends) */
            tm.tm_min++;
            t = normalise(&tm, utc);
            continue;
        }
        return (int64_t)t * 1000;
    }
    return -1;
}
