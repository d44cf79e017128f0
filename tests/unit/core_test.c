/*
 * Unit tests of src/core and the small value helpers of the public API:
 *
 *   - th__heap: random push / remove / update / pop against a brute-force
 *     model, checking after every step that each element's idx field names
 *     its slot, the heap property holds and the top is the model's minimum;
 *     removal of arbitrary elements (top, last, middle, only); two heaps over
 *     the same elements through different idx fields; reserve growth, its
 *     failure leaving the heap intact, and pushes into reserved room never
 *     allocating;
 *   - th__ulid: 26-character ids valid per th__ulid_valid, the time prefix,
 *     strict increase over 100k calls with a constant, decreasing or jumping
 *     clock, th__ulid_observe continuing after a given id (including a
 *     random part that is all ones), invalid strings rejected;
 *   - th__json_check: valid values, invalid JSON naming the field and the
 *     line / column, the size limit (TH_ETOOBIG), TH_JSON_OBJECT;
 *   - th__err / th__err_clear / th__err_prefix, th_strerror / th_errname;
 *   - th_priority_parse, th_task_state_parse / _name / _is_final,
 *     th_log_level_parse / _name;
 *   - th__alloc_fail_after / th__alloc_fail_reset and the allocator
 *     wrappers.
 *
 * Every test runs with a teardown that resets the allocation failure hook, so
 * a failed assertion in one test never starves the next of memory.
 */
#include "thtest.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "core/heap.h"
#include "core/json.h"
#include "core/ulid.h"

static int reset_alloc(void **state)
{
    (void)state;
    th__alloc_fail_reset();
    return 0;
}

#define T(fn) cmocka_unit_test_teardown(fn, reset_alloc)

/* A deterministic xorshift64* generator for the randomised tests. */
static uint64_t rnd_state = 0x9E3779B97F4A7C15ULL;

static uint64_t rnd(void)
{
    rnd_state ^= rnd_state >> 12;
    rnd_state ^= rnd_state << 25;
    rnd_state ^= rnd_state >> 27;
    return rnd_state * 0x2545F4914F6CDD1DULL;
}

static size_t rnd_below(size_t n)
{
    return (size_t)(rnd() % n);
}

/* ======================================================================== */
/* heap                                                                     */
/* ======================================================================== */

typedef struct hitem {
    int key;
    int id;
    size_t idx;  /* position in heap A */
    size_t idx2; /* position in heap B */
    int in;      /* model: currently in heap A */
    int in2;     /* model: currently in heap B */
} hitem;

static int key_less(const void *a, const void *b)
{
    return ((const hitem *)a)->key < ((const hitem *)b)->key;
}

/* A strict total order (ties broken by id), so a drain has one right answer. */
static int key_id_less(const void *a, const void *b)
{
    const hitem *x = a, *y = b;
    return x->key != y->key ? x->key < y->key : x->id < y->id;
}

#define HIDX(h, x) (*(const size_t *)((const char *)(x) + (h)->idx_off))

/* Checks every structural invariant of `h` against the model: the count, each
 * element's idx field, the heap property, and that the top is a minimum.
 * `in_off` locates the model's membership flag inside an item. */
static void check_heap(const th__heap *h, hitem *items, size_t nitems, size_t in_off)
{
    size_t expect_n = 0;
    int have_min = 0, min_key = 0;
    for (size_t i = 0; i < nitems; i++) {
        int in = *(const int *)((const char *)&items[i] + in_off);
        if (in) {
            expect_n++;
            if (!have_min || items[i].key < min_key)
                min_key = items[i].key;
            have_min = 1;
        } else {
            assert_true(HIDX(h, &items[i]) == TH_HEAP_NONE);
        }
    }
    assert_int_equal(h->n, expect_n);
    assert_true(h->n <= h->cap);
    for (size_t i = 0; i < h->n; i++) {
        const hitem *x = h->v[i];
        assert_int_equal(HIDX(h, x), i);
        assert_true(*(const int *)((const char *)x + in_off));
        if (i > 0)
            assert_false(h->less(x, h->v[(i - 1) / 2]));
    }
    if (have_min) {
        const hitem *top = th__heap_top(h);
        assert_non_null(top);
        assert_int_equal(top->key, min_key);
    } else {
        assert_null(th__heap_top(h));
    }
}

/* Picks a random item whose membership flag equals `want`; NULL if none. */
static hitem *pick(hitem *items, size_t nitems, size_t in_off, int want)
{
    size_t start = rnd_below(nitems);
    for (size_t k = 0; k < nitems; k++) {
        hitem *x = &items[(start + k) % nitems];
        if (*(int *)((char *)x + in_off) == want)
            return x;
    }
    return NULL;
}

static void test_heap_random_ops_match_model(void **state)
{
    (void)state;
    enum { NITEMS = 300, NOPS = 20000 };
    static hitem items[NITEMS];
    for (int i = 0; i < NITEMS; i++)
        items[i] = (hitem){.id = i, .idx = TH_HEAP_NONE, .idx2 = TH_HEAP_NONE};
    th__heap h;
    th__heap_init(&h, key_less, offsetof(hitem, idx));
    check_heap(&h, items, NITEMS, offsetof(hitem, in));
    rnd_state = 12345;
    size_t pushes = 0, removes = 0, updates = 0, pops = 0;
    for (int op = 0; op < NOPS; op++) {
        unsigned kind = (unsigned)rnd_below(10);
        if (kind < 4) { /* push */
            hitem *x = pick(items, NITEMS, offsetof(hitem, in), 0);
            if (!x)
                continue;
            x->key = (int)rnd_below(64); /* many ties */
            assert_int_equal(th__heap_reserve(&h, h.n + 1), 0);
            th__heap_push(&h, x);
            x->in = 1;
            pushes++;
        } else if (kind < 6) { /* remove an arbitrary element */
            hitem *x = pick(items, NITEMS, offsetof(hitem, in), 1);
            if (!x)
                continue;
            th__heap_remove(&h, x);
            assert_true(x->idx == TH_HEAP_NONE);
            x->in = 0;
            removes++;
        } else if (kind < 9) { /* change a key up or down */
            hitem *x = pick(items, NITEMS, offsetof(hitem, in), 1);
            if (!x)
                continue;
            x->key = (int)rnd_below(64);
            th__heap_update(&h, x);
            updates++;
        } else { /* pop the top */
            hitem *x = th__heap_top(&h);
            if (!x)
                continue;
            th__heap_remove(&h, x);
            x->in = 0;
            pops++;
        }
        check_heap(&h, items, NITEMS, offsetof(hitem, in));
    }
    /* Every kind of step ran many times. */
    assert_true(pushes > 1000 && removes > 1000 && updates > 1000 && pops > 500);
    /* Draining yields non-decreasing keys. */
    int last = INT_MIN;
    while (th__heap_top(&h)) {
        hitem *x = th__heap_top(&h);
        assert_true(x->key >= last);
        last = x->key;
        th__heap_remove(&h, x);
        x->in = 0;
        check_heap(&h, items, NITEMS, offsetof(hitem, in));
    }
    th__heap_free(&h);
}

static void test_heap_sorts_with_total_order(void **state)
{
    (void)state;
    enum { N = 500 };
    static hitem items[N];
    th__heap h;
    th__heap_init(&h, key_id_less, offsetof(hitem, idx));
    assert_int_equal(th__heap_reserve(&h, N), 0);
    rnd_state = 777;
    for (int i = 0; i < N; i++) {
        items[i] = (hitem){.key = (int)rnd_below(20), .id = i, .idx = TH_HEAP_NONE};
        th__heap_push(&h, &items[i]);
    }
    const hitem *prev = NULL;
    for (int i = 0; i < N; i++) {
        hitem *x = th__heap_top(&h);
        assert_non_null(x);
        if (prev)
            assert_true(key_id_less(prev, x));
        th__heap_remove(&h, x);
        assert_true(x->idx == TH_HEAP_NONE);
        prev = x;
    }
    assert_null(th__heap_top(&h));
    assert_int_equal(h.n, 0);
    th__heap_free(&h);
}

static void test_heap_remove_positions(void **state)
{
    (void)state;
    hitem a[8];
    th__heap h;
    th__heap_init(&h, key_less, offsetof(hitem, idx));

    /* The only element. */
    a[0] = (hitem){.key = 5, .idx = TH_HEAP_NONE};
    th__heap_push(&h, &a[0]);
    assert_int_equal(a[0].idx, 0);
    assert_ptr_equal(th__heap_top(&h), &a[0]);
    th__heap_remove(&h, &a[0]);
    assert_true(a[0].idx == TH_HEAP_NONE);
    assert_null(th__heap_top(&h));

    /* Keys 0..7 pushed in reverse; then remove the last slot, the top and a
     * middle element, checking every index after each step. */
    for (int i = 0; i < 8; i++) {
        a[i] = (hitem){.key = i, .id = i, .idx = TH_HEAP_NONE, .in = 0};
    }
    for (int i = 7; i >= 0; i--) {
        th__heap_push(&h, &a[i]);
        a[i].in = 1;
    }
    check_heap(&h, a, 8, offsetof(hitem, in));
    hitem *last = h.v[h.n - 1];
    th__heap_remove(&h, last);
    last->in = 0;
    check_heap(&h, a, 8, offsetof(hitem, in));
    hitem *top = th__heap_top(&h);
    assert_int_equal(top->key, 0);
    th__heap_remove(&h, top);
    top->in = 0;
    check_heap(&h, a, 8, offsetof(hitem, in));
    hitem *mid = h.v[h.n / 2];
    th__heap_remove(&h, mid);
    mid->in = 0;
    check_heap(&h, a, 8, offsetof(hitem, in));

    /* A replacement smaller than the removed element's parent moves up: make
     * the last slot hold the minimum, then remove a deep element. */
    for (int i = 0; i < 8; i++)
        if (a[i].in) {
            th__heap_remove(&h, &a[i]);
            a[i].in = 0;
        }
    int keys[] = {1, 50, 2, 60, 70, 3, 4};
    for (int i = 0; i < 7; i++) {
        a[i] = (hitem){.key = keys[i], .id = i, .idx = TH_HEAP_NONE};
        th__heap_push(&h, &a[i]);
        a[i].in = 1;
    }
    check_heap(&h, a, 7, offsetof(hitem, in));
    /* Layout [1,50,2,60,70,3,4]: removing 60 (slot 3) moves 4 into slot 3,
     * below 50, so it must rise past 50. */
    assert_ptr_equal(h.v[3], &a[3]);
    th__heap_remove(&h, &a[3]);
    a[3].in = 0;
    check_heap(&h, a, 7, offsetof(hitem, in));
    assert_int_equal(a[6].idx, 1);

    /* update() after lowering and raising a key. */
    a[4].key = 0;
    th__heap_update(&h, &a[4]);
    check_heap(&h, a, 7, offsetof(hitem, in));
    assert_ptr_equal(th__heap_top(&h), &a[4]);
    a[4].key = 100;
    th__heap_update(&h, &a[4]);
    check_heap(&h, a, 7, offsetof(hitem, in));
    assert_int_equal(((hitem *)th__heap_top(&h))->key, 1);
    /* update() with an unchanged key keeps everything in place. */
    size_t before = a[1].idx;
    th__heap_update(&h, &a[1]);
    assert_int_equal(a[1].idx, before);
    check_heap(&h, a, 7, offsetof(hitem, in));
    th__heap_free(&h);
}

static void test_heap_two_heaps_share_elements(void **state)
{
    (void)state;
    enum { N = 100, NOPS = 5000 };
    static hitem items[N];
    for (int i = 0; i < N; i++)
        items[i] = (hitem){.id = i, .key = i % 17, .idx = TH_HEAP_NONE, .idx2 = TH_HEAP_NONE};
    th__heap a, b;
    th__heap_init(&a, key_less, offsetof(hitem, idx));
    th__heap_init(&b, key_id_less, offsetof(hitem, idx2));
    assert_int_equal(th__heap_reserve(&a, N), 0);
    assert_int_equal(th__heap_reserve(&b, N), 0);
    rnd_state = 4242;
    for (int op = 0; op < NOPS; op++) {
        int which = (int)rnd_below(2);
        th__heap *h = which ? &b : &a;
        size_t in_off = which ? offsetof(hitem, in2) : offsetof(hitem, in);
        int want = (int)rnd_below(2);
        hitem *x = pick(items, N, in_off, want);
        if (!x)
            continue;
        int *in = (int *)((char *)x + in_off);
        if (want) {
            th__heap_remove(h, x);
            *in = 0;
        } else {
            th__heap_push(h, x);
            *in = 1;
        }
        if (op % 7 == 0 && x->in && x->in2) {
            /* A key change must be applied to every heap holding it. */
            x->key = (int)rnd_below(17);
            th__heap_update(&a, x);
            th__heap_update(&b, x);
        }
        check_heap(&a, items, N, offsetof(hitem, in));
        check_heap(&b, items, N, offsetof(hitem, in2));
    }
    th__heap_free(&a);
    th__heap_free(&b);
}

static void test_heap_reserve(void **state)
{
    (void)state;
    th__heap h;
    th__heap_init(&h, key_less, offsetof(hitem, idx));
    assert_null(h.v);
    assert_int_equal(h.n, 0);
    assert_int_equal(h.cap, 0);
    assert_null(th__heap_top(&h));

    /* Nothing to do: no allocation at all. */
    th__alloc_fail_after(0);
    assert_int_equal(th__heap_reserve(&h, 0), 0);
    assert_null(h.v);
    /* The first real reservation fails cleanly when memory runs out. */
    assert_int_equal(th__heap_reserve(&h, 1), TH_ENOMEM);
    assert_null(h.v);
    assert_int_equal(h.cap, 0);
    th__alloc_fail_reset();

    assert_int_equal(th__heap_reserve(&h, 1), 0);
    assert_non_null(h.v);
    assert_true(h.cap >= 1);
    size_t cap = h.cap;
    assert_int_equal(th__heap_reserve(&h, cap), 0); /* already room */
    assert_int_equal(h.cap, cap);
    assert_int_equal(th__heap_reserve(&h, cap + 1), 0);
    assert_true(h.cap >= cap + 1);
    assert_int_equal(th__heap_reserve(&h, 1000), 0);
    assert_true(h.cap >= 1000);
    cap = h.cap;

    /* Fill it without any allocation being possible: pushes into reserved
     * room must never allocate. */
    enum { N = 1000 };
    static hitem items[N];
    th__alloc_fail_after(0);
    for (int i = 0; i < N; i++) {
        items[i] = (hitem){.key = (i * 7919) % 1000, .id = i, .idx = TH_HEAP_NONE, .in = 1};
        th__heap_push(&h, &items[i]);
    }
    /* Growing past the capacity fails and leaves the heap as it was. */
    void **v = h.v;
    assert_int_equal(th__heap_reserve(&h, cap + 1), TH_ENOMEM);
    assert_ptr_equal(h.v, v);
    assert_int_equal(h.cap, cap);
    assert_int_equal(h.n, N);
    th__alloc_fail_reset();
    check_heap(&h, items, N, offsetof(hitem, in));

    /* Growing keeps the elements (realloc) and their indexes. */
    assert_int_equal(th__heap_reserve(&h, cap * 3), 0);
    assert_true(h.cap >= cap * 3);
    check_heap(&h, items, N, offsetof(hitem, in));

    /* An unreserved push grows the array itself while memory lasts. */
    th__heap_free(&h);
    assert_null(h.v);
    assert_int_equal(h.n, 0);
    assert_int_equal(h.cap, 0);
    for (int i = 0; i < N; i++) {
        items[i].idx = TH_HEAP_NONE;
        th__heap_push(&h, &items[i]);
    }
    check_heap(&h, items, N, offsetof(hitem, in));
    th__heap_free(&h);
    th__heap_free(&h); /* twice is harmless */
}

/* ======================================================================== */
/* ulid                                                                     */
/* ======================================================================== */

static const char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

static uint64_t decode_time(const char *id)
{
    uint64_t ms = 0;
    for (int i = 0; i < 10; i++) {
        const char *p = strchr(crockford, id[i]);
        assert_non_null(p);
        ms = (ms << 5) | (uint64_t)(p - crockford);
    }
    return ms;
}

static void assert_id_well_formed(const char *id)
{
    assert_int_equal(strlen(id), TH_ID_LEN);
    assert_int_equal(strspn(id, crockford), TH_ID_LEN);
    assert_true(id[0] <= '7');
    assert_true(th__ulid_valid(id));
}

static void test_ulid_format(void **state)
{
    (void)state;
    th__ulid_gen g;
    th__ulid_init(&g, 1);
    char id[TH_ID_SIZE];
    memset(id, 'x', sizeof id);
    th__ulid_next(&g, THTEST_T0, id);
    assert_id_well_formed(id);
    assert_int_equal(id[TH_ID_LEN], '\0');
    assert_true(decode_time(id) == (uint64_t)THTEST_T0);

    /* A later millisecond shows in the time prefix. */
    char id2[TH_ID_SIZE];
    th__ulid_next(&g, THTEST_T0 + 1234, id2);
    assert_id_well_formed(id2);
    assert_true(decode_time(id2) == (uint64_t)THTEST_T0 + 1234);
    assert_true(strcmp(id2, id) > 0);

    /* Two generators seeded differently give different ids in one ms. */
    th__ulid_gen g2;
    th__ulid_init(&g2, 2);
    char other[TH_ID_SIZE];
    th__ulid_next(&g2, THTEST_T0, other);
    assert_id_well_formed(other);
    assert_string_not_equal(other, id);

    /* A seed of 0 asks the OS for one; the ids are still well formed. */
    th__ulid_gen g0;
    th__ulid_init(&g0, 0);
    th__ulid_next(&g0, THTEST_T0, other);
    assert_id_well_formed(other);

    /* Extreme clocks: negative times count as 0, huge ones wrap to 48 bits. */
    th__ulid_gen ge;
    th__ulid_init(&ge, 3);
    th__ulid_next(&ge, -5, other);
    assert_id_well_formed(other);
    assert_true(decode_time(other) == 0);
    th__ulid_init(&ge, 3);
    th__ulid_next(&ge, INT64_MAX, other);
    assert_id_well_formed(other);
    assert_true(decode_time(other) == ((uint64_t)INT64_MAX & 0xFFFFFFFFFFFFULL));
}

/* Generates `n` ids with times from `now_of(i)` and checks each is valid and
 * strictly greater than the one before. */
static void check_monotonic(th__ulid_gen *g, int n, int64_t (*now_of)(int i))
{
    char prev[TH_ID_SIZE], cur[TH_ID_SIZE];
    uint64_t max_now = 0;
    prev[0] = '\0';
    for (int i = 0; i < n; i++) {
        int64_t now = now_of(i);
        th__ulid_next(g, now, cur);
        if (strlen(cur) != TH_ID_LEN || !th__ulid_valid(cur))
            fail_msg("call %d: invalid id '%s'", i, cur);
        if (i > 0 && strcmp(cur, prev) <= 0)
            fail_msg("call %d (now %lld): id %s is not greater than %s", i, (long long)now, cur,
                     prev);
        /* The time prefix never runs behind the latest clock reading. */
        if ((uint64_t)now > max_now)
            max_now = (uint64_t)now;
        if (decode_time(cur) < max_now)
            fail_msg("call %d: time prefix of %s is behind %llu", i, cur,
                     (unsigned long long)max_now);
        memcpy(prev, cur, TH_ID_SIZE);
    }
}

static int64_t now_constant(int i)
{
    (void)i;
    return THTEST_T0;
}

static int64_t now_decreasing(int i)
{
    return THTEST_T0 + 100000 - i;
}

static int64_t now_jumping(int i)
{
    /* Forward and backward steps of up to a second, trending forward. */
    static int64_t t = THTEST_T0;
    if (i == 0)
        t = THTEST_T0;
    t += (int64_t)rnd_below(2001) - 900;
    return t;
}

static void test_ulid_monotonic_same_ms(void **state)
{
    (void)state;
    th__ulid_gen g;
    th__ulid_init(&g, 7);
    check_monotonic(&g, 100000, now_constant);
    /* The clock stood still, so every id kept the same time prefix. */
    char id[TH_ID_SIZE];
    th__ulid_next(&g, THTEST_T0, id);
    assert_true(decode_time(id) == (uint64_t)THTEST_T0);
}

static void test_ulid_monotonic_decreasing_clock(void **state)
{
    (void)state;
    th__ulid_gen g;
    th__ulid_init(&g, 8);
    check_monotonic(&g, 100000, now_decreasing);
}

static void test_ulid_monotonic_jumping_clock(void **state)
{
    (void)state;
    th__ulid_gen g;
    th__ulid_init(&g, 9);
    rnd_state = 99;
    check_monotonic(&g, 100000, now_jumping);
}

static void test_ulid_observe(void **state)
{
    (void)state;
    th__ulid_gen a, b;
    th__ulid_init(&a, 11);
    th__ulid_init(&b, 12);
    char ida[TH_ID_SIZE], idb[TH_ID_SIZE], next[TH_ID_SIZE];

    /* An id from the future: b continues after it even at an older time. */
    th__ulid_next(&a, THTEST_T0 + 5000, ida);
    th__ulid_next(&b, THTEST_T0, idb);
    th__ulid_observe(&b, ida);
    th__ulid_next(&b, THTEST_T0, next);
    assert_id_well_formed(next);
    assert_true(strcmp(next, ida) > 0);
    assert_true(decode_time(next) == (uint64_t)THTEST_T0 + 5000);

    /* An older id does not move the generator back. */
    char last[TH_ID_SIZE];
    memcpy(last, next, TH_ID_SIZE);
    th__ulid_observe(&b, idb);
    th__ulid_next(&b, THTEST_T0, next);
    assert_true(strcmp(next, last) > 0);

    /* Invalid strings are ignored. */
    memcpy(last, next, TH_ID_SIZE);
    th__ulid_observe(&b, NULL);
    th__ulid_observe(&b, "");
    th__ulid_observe(&b, "ZZZZZZZZZZZZZZZZZZZZZZZZZZ"); /* first char > 7 */
    th__ulid_observe(&b, "7ZZZZZZZZZZZZZZZZZZZZZZZZU"); /* U is not base32 */
    th__ulid_observe(&b, "7ZZZZZZZZZZZZZZZZZZZZZZZZ");  /* 25 chars */
    th__ulid_next(&b, THTEST_T0, next);
    assert_true(strcmp(next, last) > 0);
    assert_true(decode_time(next) == (uint64_t)THTEST_T0 + 5000);

    /* Same millisecond, larger random part. */
    char crafted[TH_ID_SIZE];
    memcpy(crafted, next, 10);
    memcpy(crafted + 10, "YYYYYYYYYYYYYYYY", 16);
    crafted[26] = '\0';
    assert_true(th__ulid_valid(crafted));
    assert_true(strcmp(crafted, next) > 0);
    th__ulid_observe(&b, crafted);
    th__ulid_next(&b, THTEST_T0, next);
    assert_id_well_formed(next);
    assert_true(strcmp(next, crafted) > 0);
    assert_true(decode_time(next) == (uint64_t)THTEST_T0 + 5000);

    /* A random part of all ones: the next id borrows the next millisecond. */
    memcpy(crafted + 10, "ZZZZZZZZZZZZZZZZ", 16);
    th__ulid_observe(&b, crafted);
    th__ulid_next(&b, THTEST_T0, next);
    assert_id_well_formed(next);
    assert_true(strcmp(next, crafted) > 0);
    assert_true(decode_time(next) == (uint64_t)THTEST_T0 + 5001);
    assert_string_equal(next + 10, "0000000000000000");
    /* ... and keeps increasing from there. */
    memcpy(last, next, TH_ID_SIZE);
    th__ulid_next(&b, THTEST_T0 + 5001, next);
    assert_true(strcmp(next, last) > 0);

    /* Observing an id the generator itself made is a no-op. */
    memcpy(last, next, TH_ID_SIZE);
    th__ulid_observe(&b, last);
    th__ulid_next(&b, THTEST_T0, next);
    assert_true(strcmp(next, last) > 0);

    /* A fresh generator fed many ids continues after the greatest. */
    th__ulid_gen c;
    th__ulid_init(&c, 13);
    char greatest[TH_ID_SIZE] = "";
    th__ulid_gen src;
    th__ulid_init(&src, 14);
    for (int i = 0; i < 100; i++) {
        char id[TH_ID_SIZE];
        th__ulid_next(&src, THTEST_T0 + (i * 37) % 50, id);
        if (strcmp(id, greatest) > 0)
            memcpy(greatest, id, TH_ID_SIZE);
        th__ulid_observe(&c, id);
    }
    th__ulid_next(&c, THTEST_T0 - 1000, next);
    assert_true(strcmp(next, greatest) > 0);
}

static void test_ulid_valid(void **state)
{
    (void)state;
    assert_true(th__ulid_valid("01ARZ3NDEKTSV4RRFFQ69G5FAV"));
    assert_true(th__ulid_valid("00000000000000000000000000"));
    assert_true(th__ulid_valid("7ZZZZZZZZZZZZZZZZZZZZZZZZZ"));
    assert_true(th__ulid_valid("0123456789ABCDEFGHJKMNPQRS"));
    assert_true(th__ulid_valid("0TVWXYZ0000000000000000000"));

    /* Wrong length. */
    assert_false(th__ulid_valid(NULL));
    assert_false(th__ulid_valid(""));
    assert_false(th__ulid_valid("01ARZ3NDEKTSV4RRFFQ69G5FA"));   /* 25 */
    assert_false(th__ulid_valid("01ARZ3NDEKTSV4RRFFQ69G5FAVV")); /* 27 */
    assert_false(th__ulid_valid("0"));

    /* Letters Crockford base32 leaves out, anywhere in the id. */
    const char *bad = "UILO";
    for (const char *c = bad; *c; c++) {
        for (int pos = 0; pos < TH_ID_LEN; pos += 5) {
            char s[TH_ID_SIZE] = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
            s[pos] = *c;
            if (th__ulid_valid(s))
                fail_msg("'%s' (%c at %d) was accepted", s, *c, pos);
        }
        char s[TH_ID_SIZE] = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
        s[TH_ID_LEN - 1] = *c;
        assert_false(th__ulid_valid(s));
    }
    /* Other characters. */
    assert_false(th__ulid_valid("01ARZ3NDEKTSV4RRFFQ69G5FA-"));
    assert_false(th__ulid_valid("01ARZ3NDEKTSV4RRFFQ69G5FA "));
    assert_false(th__ulid_valid(" 1ARZ3NDEKTSV4RRFFQ69G5FAV"));
    assert_false(th__ulid_valid("01ARZ3NDEKTSV4RRFFQ69G5FA\x80"));
    assert_false(th__ulid_valid("$0"));

    /* The first character carries only 3 bits: anything above '7' overflows
     * the 128-bit value. */
    for (const char *c = "89ABCDEFGHJKMNPQRSTVWXYZ"; *c; c++) {
        char s[TH_ID_SIZE] = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
        s[0] = *c;
        if (th__ulid_valid(s))
            fail_msg("'%s' was accepted", s);
    }
    for (const char *c = "01234567"; *c; c++) {
        char s[TH_ID_SIZE] = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
        s[0] = *c;
        assert_true(th__ulid_valid(s));
    }
}

/* ======================================================================== */
/* json                                                                     */
/* ======================================================================== */

static void test_json_valid(void **state)
{
    (void)state;
    static const char *const any[] = {
        "{}",          "[]",
        "[1, 2, 3]",   "\"text\"",
        "0",           "-1.5e3",
        "null",        "true",
        "false",       " { \"a\" : [1, {\"b\": null}] } \n",
        "\"\\u00e9\"", "{\"a\":{\"a\":1}}",
    };
    for (size_t i = 0; i < sizeof any / sizeof any[0]; i++) {
        th_error err;
        memset(&err, 0x55, sizeof err);
        int rc = th__json_check(any[i], 1 << 20, TH_JSON_ANY, "payload", &err);
        if (rc != 0)
            fail_msg("'%s' refused: %d %s", any[i], rc, err.message);
    }
    static const char *const objects[] = {"{}", "{\"a\": 1}", " {\"k\": [\"v\"]} "};
    for (size_t i = 0; i < sizeof objects / sizeof objects[0]; i++)
        assert_int_equal(th__json_check(objects[i], 100, TH_JSON_OBJECT, "metadata", NULL), 0);
    /* err may be NULL on success and on failure. */
    assert_int_equal(th__json_check("[]", 100, TH_JSON_ANY, "payload", NULL), 0);
    assert_int_equal(th__json_check("[", 100, TH_JSON_ANY, "payload", NULL), TH_EINVAL);
}

static void test_json_invalid(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "   ",
        "{",
        "}",
        "[1, 2",
        "{\"a\":}",
        "{a: 1}",
        "'single'",
        "nul",
        "tru",
        "[1,]",
        "{\"a\":1,}",
        "{} {}",
        "1 2",
        "NaN",
        "\"unterminated",
        "{\"a\":1,\"a\":2}",
        "01",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        th_error err;
        memset(&err, 0, sizeof err);
        int rc = th__json_check(bad[i], 1 << 20, TH_JSON_ANY, "payload", &err);
        if (rc != TH_EINVAL)
            fail_msg("'%s' gave %d, want TH_EINVAL", bad[i], rc);
        assert_int_equal(err.code, TH_EINVAL);
        assert_string_equal(err.field, "payload");
        if (!thtest_contains(err.message, "payload") || !thtest_contains(err.message, "line") ||
            !thtest_contains(err.message, "column"))
            fail_msg("'%s': message lacks field or position: %s", bad[i], err.message);
    }

    /* The position points at the problem. */
    th_error err;
    memset(&err, 0, sizeof err);
    assert_int_equal(
        th__json_check("{\n  \"a\": 1,\n  \"b\": x\n}", 1000, TH_JSON_ANY, "data", &err),
        TH_EINVAL);
    assert_string_equal(err.field, "data");
    if (!thtest_contains(err.message, "line 3"))
        fail_msg("want line 3 in: %s", err.message);
    memset(&err, 0, sizeof err);
    assert_int_equal(th__json_check("[1, 2, ?]", 1000, TH_JSON_ANY, "result", &err), TH_EINVAL);
    assert_string_equal(err.field, "result");
    if (!thtest_contains(err.message, "line 1") || !thtest_contains(err.message, "column 8"))
        fail_msg("want line 1 column 8 in: %s", err.message);
}

static void test_json_size_limit(void **state)
{
    (void)state;
    /* A JSON string of exactly 100 bytes. */
    char text[101];
    memset(text, 'a', 100);
    text[0] = '"';
    text[99] = '"';
    text[100] = '\0';
    assert_int_equal(strlen(text), 100);
    assert_int_equal(th__json_check(text, 100, TH_JSON_ANY, "payload", NULL), 0);
    th_error err;
    memset(&err, 0, sizeof err);
    assert_int_equal(th__json_check(text, 99, TH_JSON_ANY, "payload", &err), TH_ETOOBIG);
    assert_int_equal(err.code, TH_ETOOBIG);
    assert_string_equal(err.field, "payload");
    assert_true(thtest_contains(err.message, "100"));
    assert_true(thtest_contains(err.message, "99"));
    /* The limit is checked before parsing: invalid and too big is TH_ETOOBIG. */
    assert_int_equal(th__json_check("{{{{{{", 3, TH_JSON_ANY, "payload", &err), TH_ETOOBIG);
    /* A limit of 0 refuses everything but the empty string, which is invalid. */
    assert_int_equal(th__json_check("1", 0, TH_JSON_ANY, "payload", &err), TH_ETOOBIG);
    assert_int_equal(th__json_check("", 0, TH_JSON_ANY, "payload", &err), TH_EINVAL);

    /* A large value within its limit. */
    size_t big = 1 << 20;
    char *s = malloc(big + 1);
    assert_non_null(s);
    memset(s, 'a', big);
    s[0] = '"';
    s[big - 1] = '"';
    s[big] = '\0';
    assert_int_equal(th__json_check(s, big, TH_JSON_ANY, "payload", NULL), 0);
    assert_int_equal(th__json_check(s, big - 1, TH_JSON_ANY, "payload", NULL), TH_ETOOBIG);
    free(s);
}

static void test_json_object_flag(void **state)
{
    (void)state;
    static const char *const not_objects[] = {"[]", "[{}]", "1", "\"{}\"", "null", "true"};
    for (size_t i = 0; i < sizeof not_objects / sizeof not_objects[0]; i++) {
        th_error err;
        memset(&err, 0, sizeof err);
        int rc = th__json_check(not_objects[i], 100, TH_JSON_OBJECT, "metadata", &err);
        if (rc != TH_EINVAL)
            fail_msg("'%s' gave %d, want TH_EINVAL", not_objects[i], rc);
        assert_string_equal(err.field, "metadata");
        assert_true(thtest_contains(err.message, "metadata"));
        assert_true(thtest_contains(err.message, "object"));
        /* The same text is fine without the flag. */
        assert_int_equal(th__json_check(not_objects[i], 100, TH_JSON_ANY, "metadata", NULL), 0);
    }
    /* Invalid JSON is reported as such, not as "not an object". */
    th_error err;
    memset(&err, 0, sizeof err);
    assert_int_equal(th__json_check("{", 100, TH_JSON_OBJECT, "metadata", &err), TH_EINVAL);
    assert_true(thtest_contains(err.message, "line"));
}

/* ======================================================================== */
/* errors                                                                   */
/* ======================================================================== */

static const int all_codes[] = {
    TH_OK,      TH_EINVAL,    TH_ENOMEM,  TH_ENOTFOUND, TH_EBUSY,    TH_ESTATE,
    TH_ESTALE,  TH_ETIMEDOUT, TH_ECLOSED, TH_EIO,       TH_ECORRUPT, TH_EVERSION,
    TH_ETOOBIG, TH_ECONFLICT, TH_EBUDGET, TH_EUPSTREAM, TH_EUNAVAIL, TH_ECANCELED,
};
#define NCODES (sizeof all_codes / sizeof all_codes[0])

static void test_error_names_and_texts(void **state)
{
    (void)state;
    /* The codes are 0, -1, ..., -17 with no gaps. */
    for (size_t i = 0; i < NCODES; i++)
        assert_int_equal(all_codes[i], -(int)i);
    for (size_t i = 0; i < NCODES; i++) {
        const char *name = th_errname(all_codes[i]);
        const char *text = th_strerror(all_codes[i]);
        assert_non_null(name);
        assert_non_null(text);
        assert_true(name[0] != '\0');
        assert_true(text[0] != '\0');
        assert_string_not_equal(name, "EUNKNOWN");
        if (thtest_contains(text, "unknown"))
            fail_msg("code %d has text '%s'", all_codes[i], text);
        if (all_codes[i] != TH_OK && name[0] != 'E')
            fail_msg("code %d has name '%s'", all_codes[i], name);
        for (size_t j = 0; j < i; j++) {
            if (strcmp(name, th_errname(all_codes[j])) == 0)
                fail_msg("codes %d and %d share the name %s", all_codes[i], all_codes[j], name);
            if (strcmp(text, th_strerror(all_codes[j])) == 0)
                fail_msg("codes %d and %d share the text '%s'", all_codes[i], all_codes[j], text);
        }
    }
    assert_string_equal(th_errname(TH_OK), "OK");
    assert_string_equal(th_errname(TH_EINVAL), "EINVAL");
    assert_string_equal(th_errname(TH_ENOMEM), "ENOMEM");
    assert_string_equal(th_errname(TH_ECONFLICT), "ECONFLICT");
    /* Codes that do not exist. */
    static const int unknown[] = {1, 12, -18, -100, INT_MIN, INT_MAX};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        assert_string_equal(th_errname(unknown[i]), "EUNKNOWN");
        assert_string_equal(th_strerror(unknown[i]), "unknown error");
    }
}

static void test_err_fill(void **state)
{
    (void)state;
    /* NULL err: just the code. */
    assert_int_equal(th__err(NULL, TH_EINVAL, "x", "y %d", 1), TH_EINVAL);

    th_error err;
    memset(&err, 0x7f, sizeof err);
    assert_int_equal(th__err(&err, TH_EINVAL, "priority", "priority must be %d..%d", 0, 100),
                     TH_EINVAL);
    assert_int_equal(err.code, TH_EINVAL);
    assert_string_equal(err.field, "priority");
    assert_string_equal(err.message, "priority must be 0..100");

    /* A NULL field is empty. */
    assert_int_equal(th__err(&err, TH_ENOMEM, NULL, "out of memory"), TH_ENOMEM);
    assert_int_equal(err.code, TH_ENOMEM);
    assert_string_equal(err.field, "");
    assert_string_equal(err.message, "out of memory");

    /* Long fields and messages are truncated and stay terminated. */
    char longs[600];
    memset(longs, 'f', sizeof longs - 1);
    longs[sizeof longs - 1] = '\0';
    assert_int_equal(th__err(&err, TH_ETOOBIG, longs, "%s", longs), TH_ETOOBIG);
    assert_int_equal(strlen(err.field), sizeof err.field - 1);
    assert_int_equal(strlen(err.message), sizeof err.message - 1);

    /* Clearing. */
    th__err_clear(&err);
    assert_int_equal(err.code, 0);
    assert_string_equal(err.field, "");
    assert_string_equal(err.message, "");
    th__err_clear(NULL);
}

static void test_err_prefix(void **state)
{
    (void)state;
    th_error err;
    th__err(&err, TH_EINVAL, "priority", "bad");
    th__err_prefix(&err, "tasks[3]");
    assert_string_equal(err.field, "tasks[3].priority");
    assert_int_equal(err.code, TH_EINVAL);
    assert_string_equal(err.message, "bad");

    /* Prefixes nest. */
    th__err_prefix(&err, "batch");
    assert_string_equal(err.field, "batch.tasks[3].priority");

    /* An empty field becomes the prefix itself. */
    th__err(&err, TH_ENOMEM, NULL, "oom");
    th__err_prefix(&err, "tasks[0]");
    assert_string_equal(err.field, "tasks[0]");

    /* Dotted fields keep their dots. */
    th__err(&err, TH_EINVAL, "retry.multiplier", "bad");
    th__err_prefix(&err, "tasks[12]");
    assert_string_equal(err.field, "tasks[12].retry.multiplier");

    /* Too long: truncated to the field size, still terminated. */
    char field[64];
    memset(field, 'a', sizeof field - 1);
    field[sizeof field - 1] = '\0';
    th__err(&err, TH_EINVAL, field, "bad");
    assert_int_equal(strlen(err.field), 63);
    th__err_prefix(&err, "tasks[999]");
    assert_int_equal(strlen(err.field), 63);
    assert_memory_equal(err.field, "tasks[999].aaaa", 15);

    th__err_prefix(NULL, "x");
}

/* ======================================================================== */
/* value parsers                                                            */
/* ======================================================================== */

static void test_priority_parse(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int value;
    } good[] = {
        {"low", TH_PRIORITY_LOW},
        {"normal", TH_PRIORITY_NORMAL},
        {"high", TH_PRIORITY_HIGH},
        {"critical", TH_PRIORITY_CRITICAL},
        {"0", 0},
        {"100", 100},
        {"42", 42},
        {"050", 50},
        {"1", 1},
        {"99", 99},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        int v = -12345;
        if (th_priority_parse(good[i].text, &v) != 0)
            fail_msg("'%s' refused", good[i].text);
        assert_int_equal(v, good[i].value);
    }
    assert_int_equal(TH_PRIORITY_LOW, 25);
    assert_int_equal(TH_PRIORITY_NORMAL, 50);
    assert_int_equal(TH_PRIORITY_HIGH, 75);
    assert_int_equal(TH_PRIORITY_CRITICAL, 100);

    static const char *const bad[] = {
        "",     "-1",  "101",   "1000", "12x",   "x12",        "1.5",
        "LOW",  "Low", "high ", "norm", "crit",  "0x10",       "99999999999999999999",
        "-0x1", "--1", "abc",   "1e2",  "50 50", "2147483648", "-2147483649",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int v = -12345;
        int rc = th_priority_parse(bad[i], &v);
        if (rc != TH_EINVAL)
            fail_msg("'%s' gave %d (value %d), want TH_EINVAL", bad[i], rc, v);
        assert_int_equal(v, -12345); /* untouched on failure */
    }
    int v = -12345;
    assert_int_equal(th_priority_parse(NULL, &v), TH_EINVAL);
    assert_int_equal(v, -12345);
}

static void test_task_state_names(void **state)
{
    (void)state;
    static const char *const names[TH_TASK_NSTATES] = {
        "pending", "scheduled", "blocked", "running", "completed",
        "failed",  "cancelled", "timeout", "expired",
    };
    for (int s = 0; s < TH_TASK_NSTATES; s++) {
        const char *name = th_task_state_name((th_task_state)s);
        assert_string_equal(name, names[s]);
        th_task_state back = (th_task_state)-1;
        assert_int_equal(th_task_state_parse(name, &back), 0);
        assert_int_equal(back, s);
        for (int t = 0; t < s; t++)
            assert_string_not_equal(name, th_task_state_name((th_task_state)t));
        assert_int_equal(th_task_state_is_final((th_task_state)s), s >= TH_TASK_COMPLETED);
    }
    assert_string_equal(th_task_state_name((th_task_state)TH_TASK_NSTATES), "unknown");
    assert_string_equal(th_task_state_name((th_task_state)-1), "unknown");
    assert_string_equal(th_task_state_name((th_task_state)1000), "unknown");
    assert_false(th_task_state_is_final((th_task_state)TH_TASK_NSTATES));
    assert_false(th_task_state_is_final((th_task_state)-1));

    static const char *const bad[] = {"",         "unknown", "Pending",  "PENDING", "pending ",
                                      " pending", "pend",    "canceled", "done"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        th_task_state st = TH_TASK_RUNNING;
        if (th_task_state_parse(bad[i], &st) != TH_EINVAL)
            fail_msg("'%s' was accepted", bad[i]);
        assert_int_equal(st, TH_TASK_RUNNING);
    }
    th_task_state st = TH_TASK_RUNNING;
    assert_int_equal(th_task_state_parse(NULL, &st), TH_EINVAL);
    assert_int_equal(st, TH_TASK_RUNNING);
}

static void test_log_level_names(void **state)
{
    (void)state;
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int l = TH_LOG_DEBUG; l <= TH_LOG_ERROR; l++) {
        assert_string_equal(th_log_level_name((th_log_level)l), names[l]);
        th_log_level back = (th_log_level)-1;
        assert_int_equal(th_log_level_parse(names[l], &back), 0);
        assert_int_equal(back, l);
    }
    assert_string_equal(th_log_level_name((th_log_level)4), "unknown");
    assert_string_equal(th_log_level_name((th_log_level)-1), "unknown");
    static const char *const bad[] = {"",    "warning", "INFO",  "Error",
                                      "err", "fatal",   "trace", "debug "};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        th_log_level l = TH_LOG_WARN;
        if (th_log_level_parse(bad[i], &l) != TH_EINVAL)
            fail_msg("'%s' was accepted", bad[i]);
        assert_int_equal(l, TH_LOG_WARN);
    }
    th_log_level l = TH_LOG_WARN;
    assert_int_equal(th_log_level_parse(NULL, &l), TH_EINVAL);
    assert_int_equal(l, TH_LOG_WARN);
}

static void test_version(void **state)
{
    (void)state;
    assert_string_equal(th_version(), TH_VERSION_STRING);
}

/* ======================================================================== */
/* allocation hook                                                          */
/* ======================================================================== */

static void test_alloc_fail_immediately(void **state)
{
    (void)state;
    void *p = th__malloc(16);
    assert_non_null(p);

    th__alloc_fail_after(0);
    assert_null(th__malloc(8));
    assert_null(th__calloc(2, 8));
    assert_null(th__strdup("x"));
    assert_null(th__strndup("xyz", 2));
    /* A failed realloc leaves the block alone. */
    memcpy(p, "0123456789abcde", 16);
    assert_null(th__realloc(p, 4096));
    assert_memory_equal(p, "0123456789abcde", 16);
    /* It keeps failing until reset. */
    for (int i = 0; i < 100; i++)
        assert_null(th__malloc(1));

    th__alloc_fail_reset();
    void *q = th__malloc(8);
    assert_non_null(q);
    char *s = th__strdup("hello");
    assert_non_null(s);
    assert_string_equal(s, "hello");
    th__free(s);
    th__free(q);
    th__free(p);
    th__free(NULL);
}

static void test_alloc_fail_after_n(void **state)
{
    (void)state;
    for (long n = 0; n <= 6; n++) {
        void *got[8] = {0};
        th__alloc_fail_after(n);
        for (long i = 0; i < 8; i++) {
            /* Every kind of allocation counts against the budget. */
            switch (i % 4) {
            case 0:
                got[i] = th__malloc(32);
                break;
            case 1:
                got[i] = th__calloc(4, 8);
                break;
            case 2:
                got[i] = th__strdup("abc");
                break;
            default:
                got[i] = th__realloc(NULL, 32);
                break;
            }
            if (i < n && !got[i])
                fail_msg("n=%ld: allocation %ld failed early", n, i);
            if (i >= n && got[i])
                fail_msg("n=%ld: allocation %ld succeeded past the budget", n, i);
        }
        th__alloc_fail_reset();
        for (int i = 0; i < 8; i++)
            th__free(got[i]);
    }

    /* A negative budget disables failures, like reset. */
    th__alloc_fail_after(0);
    assert_null(th__malloc(1));
    th__alloc_fail_after(-1);
    void *p = th__malloc(1);
    assert_non_null(p);
    th__free(p);

    /* strdup of NULL allocates nothing, so it spends no budget. */
    th__alloc_fail_after(1);
    assert_null(th__strdup(NULL));
    assert_null(th__strndup(NULL, 3));
    p = th__malloc(1);
    assert_non_null(p);
    assert_null(th__malloc(1));
    th__alloc_fail_reset();
    th__free(p);
}

static void test_alloc_wrappers(void **state)
{
    (void)state;
    /* Zero sizes still give a block that can be freed. */
    void *a = th__malloc(0);
    void *b = th__calloc(0, 0);
    void *c = th__calloc(0, 16);
    void *d = th__realloc(NULL, 0);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    assert_non_null(d);
    th__free(a);
    th__free(b);
    th__free(c);
    th__free(d);

    /* calloc zeroes. */
    unsigned char *z = th__calloc(64, 1);
    assert_non_null(z);
    for (int i = 0; i < 64; i++)
        assert_int_equal(z[i], 0);
    /* realloc keeps the contents. */
    memset(z, 0xAB, 64);
    z = th__realloc(z, 4096);
    assert_non_null(z);
    for (int i = 0; i < 64; i++)
        assert_int_equal(z[i], 0xAB);
    th__free(z);

    char *s = th__strndup("hello", 3);
    assert_string_equal(s, "hel");
    th__free(s);
    s = th__strndup("hi", 10);
    assert_string_equal(s, "hi");
    th__free(s);
    s = th__strndup("hi", 0);
    assert_string_equal(s, "");
    th__free(s);
    s = th__strdup("");
    assert_string_equal(s, "");
    th__free(s);
    assert_null(th__strdup(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_heap_random_ops_match_model),
        T(test_heap_sorts_with_total_order),
        T(test_heap_remove_positions),
        T(test_heap_two_heaps_share_elements),
        T(test_heap_reserve),
        T(test_ulid_format),
        T(test_ulid_monotonic_same_ms),
        T(test_ulid_monotonic_decreasing_clock),
        T(test_ulid_monotonic_jumping_clock),
        T(test_ulid_observe),
        T(test_ulid_valid),
        T(test_json_valid),
        T(test_json_invalid),
        T(test_json_size_limit),
        T(test_json_object_flag),
        T(test_error_names_and_texts),
        T(test_err_fill),
        T(test_err_prefix),
        T(test_priority_parse),
        T(test_task_state_names),
        T(test_log_level_names),
        T(test_version),
        T(test_alloc_fail_immediately),
        T(test_alloc_fail_after_n),
        T(test_alloc_wrappers),
    };
    return cmocka_run_group_tests_name("core", tests, NULL, NULL) != 0;
}
