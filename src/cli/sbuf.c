/*
 * A growable string with a hard limit, for URLs, answer bodies, event-stream
 * lines and screen frames: whatever the network can grow has a bound.
 */
#include "cli/cli.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

void th__sbuf_init(th__sbuf *b, size_t limit)
{
    memset(b, 0, sizeof *b);
    b->limit = limit;
}

void th__sbuf_free(th__sbuf *b)
{
    if (!b)
        return;
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* Makes room for `extra` more bytes plus the terminating NUL. */
static int reserve(th__sbuf *b, size_t extra)
{
    if (b->failed)
        return -1;
    if (extra > b->limit || b->len > b->limit - extra) {
        b->failed = 1;
        return -1;
    }
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) {
        b->failed = 1;
        return -1;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

int th__sbuf_add(th__sbuf *b, const char *s, size_t n)
{
    if (reserve(b, n) != 0)
        return -1;
    if (n)
        memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int th__sbuf_adds(th__sbuf *b, const char *s)
{
    return th__sbuf_add(b, s, strlen(s));
}

int th__sbuf_addf(th__sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || reserve(b, (size_t)n) != 0) {
        va_end(ap2);
        b->failed = 1;
        return -1;
    }
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    b->len += (size_t)n;
    return 0;
}

int th__sbuf_add_escaped(th__sbuf *b, const char *s)
{
    char *e = curl_easy_escape(NULL, s, 0);
    if (!e) {
        b->failed = 1;
        return -1;
    }
    int rc = th__sbuf_adds(b, e);
    curl_free(e);
    return rc;
}

int th__sbuf_add_query(th__sbuf *b, const char *name, const char *value)
{
    if (!value)
        return 0;
    int first = !b->data || !strchr(b->data, '?');
    if (th__sbuf_addf(b, "%c%s=", first ? '?' : '&', name) != 0)
        return -1;
    return th__sbuf_add_escaped(b, value);
}

const char *th__sbuf_str(const th__sbuf *b)
{
    return b->data ? b->data : "";
}
