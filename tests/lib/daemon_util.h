/*
 * Small helpers shared by the daemon test library's files (daemon.c,
 * daemon_sse.c); not for tests themselves. Allocation failures abort: a test
 * helper has nothing better to do.
 */
#ifndef THTEST_DAEMON_UTIL_H
#define THTEST_DAEMON_UTIL_H

#include <stddef.h>

/* strdup that aborts on failure; NULL gives "". */
char *thd_xstrdup(const char *s);

/* Growable byte buffer, always NUL-terminated. */
typedef struct buf {
    char *p;
    size_t n, cap;
} buf;

void thd_buf_add(buf *b, const char *data, size_t n);

#endif
