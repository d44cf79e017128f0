/*
 * The one allocation choke point. Every heap allocation in taskhive goes
 * through these functions so a test can make the Nth one fail and prove the
 * code neither crashes nor leaks when memory runs out.
 */
#ifndef TH_CORE_ALLOC_H
#define TH_CORE_ALLOC_H

#include <stddef.h>

void *th__malloc(size_t n);
void *th__calloc(size_t count, size_t size);
void *th__realloc(void *p, size_t n);
/* Copies `s` (NULL gives NULL); the copy is freed with th__free. */
char *th__strdup(const char *s);
/* Copies at most n bytes of `s` and NUL-terminates. */
char *th__strndup(const char *s, size_t n);
void th__free(void *p);

/* Test hook: after `n` more successful allocations, every allocation fails
 * until th__alloc_fail_reset(). n < 0 disables. Not thread-safe by design:
 * set it before starting threads. */
void th__alloc_fail_after(long n);
void th__alloc_fail_reset(void);

#endif
