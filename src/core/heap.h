/*
 * An indexed binary min-heap of pointers. Each element stores its own
 * position (a size_t at `idx_off` inside it), so removal of any element is
 * O(log n) and needs no search. Pushing never allocates once th__heap_reserve
 * has made room, which lets callers reserve before a state change and then
 * apply it without a failure path.
 */
#ifndef TH_CORE_HEAP_H
#define TH_CORE_HEAP_H

#include <stddef.h>
#include <stdint.h>

#define TH_HEAP_NONE SIZE_MAX

typedef int (*th__heap_less)(const void *a, const void *b);

typedef struct th__heap {
    void **v;
    size_t n, cap;
    size_t idx_off;
    th__heap_less less;
} th__heap;

void th__heap_init(th__heap *h, th__heap_less less, size_t idx_off);
void th__heap_free(th__heap *h);
/* Makes room for `n` elements in all. Returns 0 or TH_ENOMEM. */
int th__heap_reserve(th__heap *h, size_t n);
/* Adds `x`; the caller has reserved room. */
void th__heap_push(th__heap *h, void *x);
/* Removes `x`, which must be in the heap. */
void th__heap_remove(th__heap *h, void *x);
/* Restores order after x's key changed. */
void th__heap_update(th__heap *h, void *x);

static inline void *th__heap_top(const th__heap *h)
{
    return h->n ? h->v[0] : NULL;
}

#endif
