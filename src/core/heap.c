/*
 * Indexed binary heap; see heap.h.
 */
#include "core/heap.h"

#include "core/alloc.h"
#include "taskhive/error.h"

#define IDX(h, x) (*(size_t *)((char *)(x) + (h)->idx_off))

void th__heap_init(th__heap *h, th__heap_less less, size_t idx_off)
{
    h->v = NULL;
    h->n = h->cap = 0;
    h->idx_off = idx_off;
    h->less = less;
}

void th__heap_free(th__heap *h)
{
    th__free(h->v);
    h->v = NULL;
    h->n = h->cap = 0;
}

int th__heap_reserve(th__heap *h, size_t n)
{
    if (n <= h->cap)
        return 0;
    size_t cap = h->cap ? h->cap : 64;
    while (cap < n)
        cap *= 2;
    void **v = th__realloc(h->v, cap * sizeof *v);
    if (!v)
        return TH_ENOMEM;
    h->v = v;
    h->cap = cap;
    return 0;
}

static void set(th__heap *h, size_t i, void *x)
{
    h->v[i] = x;
    IDX(h, x) = i;
}

static void sift_up(th__heap *h, size_t i)
{
    void *x = h->v[i];
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!h->less(x, h->v[p]))
            break;
        set(h, i, h->v[p]);
        i = p;
    }
    set(h, i, x);
}

static void sift_down(th__heap *h, size_t i)
{
    void *x = h->v[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && h->less(h->v[c + 1], h->v[c]))
            c++;
        if (!h->less(h->v[c], x))
            break;
        set(h, i, h->v[c]);
        i = c;
    }
    set(h, i, x);
}

void th__heap_push(th__heap *h, void *x)
{
    /* Callers reserve first; an unreserved push is a bug, not an OOM path. */
    if (h->n == h->cap && th__heap_reserve(h, h->n + 1) != 0)
        __builtin_trap();
    h->v[h->n] = x;
    sift_up(h, h->n++);
}

void th__heap_remove(th__heap *h, void *x)
{
    size_t i = IDX(h, x);
    IDX(h, x) = TH_HEAP_NONE;
    if (i == --h->n)
        return;
    set(h, i, h->v[h->n]);
    th__heap_update(h, h->v[i]);
}

void th__heap_update(th__heap *h, void *x)
{
    size_t i = IDX(h, x);
    if (i > 0 && h->less(x, h->v[(i - 1) / 2]))
        sift_up(h, i);
    else
        sift_down(h, i);
}
