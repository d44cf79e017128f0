/*
 * Allocation choke point; see alloc.h. The failure countdown is an atomic so
 * threaded code under test sees a consistent budget.
 */
#include "core/alloc.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static atomic_long fail_countdown = -1;

static int should_fail(void)
{
    long v = atomic_load_explicit(&fail_countdown, memory_order_relaxed);
    if (v < 0)
        return 0;
    if (v == 0)
        return 1;
    return atomic_fetch_sub(&fail_countdown, 1) <= 0;
}

void *th__malloc(size_t n)
{
    if (should_fail())
        return NULL;
    return malloc(n ? n : 1);
}

void *th__calloc(size_t count, size_t size)
{
    if (should_fail())
        return NULL;
    return calloc(count ? count : 1, size ? size : 1);
}

void *th__realloc(void *p, size_t n)
{
    if (should_fail())
        return NULL;
    return realloc(p, n ? n : 1);
}

char *th__strdup(const char *s)
{
    return s ? th__strndup(s, strlen(s)) : NULL;
}

char *th__strndup(const char *s, size_t n)
{
    if (!s)
        return NULL;
    size_t len = strnlen(s, n);
    char *d = th__malloc(len + 1);
    if (d) {
        memcpy(d, s, len);
        d[len] = '\0';
    }
    return d;
}

void th__free(void *p)
{
    free(p);
}

void th__alloc_fail_after(long n)
{
    atomic_store(&fail_countdown, n);
}

void th__alloc_fail_reset(void)
{
    atomic_store(&fail_countdown, -1);
}
