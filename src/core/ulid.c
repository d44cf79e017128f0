/*
 * ULID generation and validation; see ulid.h.
 */
#include "core/ulid.h"

#include <string.h>

static const char b32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

static int b32val(char c)
{
    const char *p = c ? strchr(b32, c) : NULL;
    return p ? (int)(p - b32) : -1;
}

void th__ulid_init(th__ulid_gen *g, uint64_t seed)
{
    memset(g, 0, sizeof *g);
    th__rng_seed(&g->rng, seed);
}

static void encode(uint64_t ms, uint64_t hi16, uint64_t lo64, char out[TH_ID_SIZE])
{
    /* 128 bits: 48 time | 16 hi | 64 lo; 26 chars x 5 bits = 130, top 2 zero. */
    for (int i = 9; i >= 0; i--) {
        out[i] = b32[ms & 31];
        ms >>= 5;
    }
    /* 80 random bits -> 16 chars. */
    for (int i = 25; i >= 10; i--) {
        out[i] = b32[lo64 & 31];
        lo64 = (lo64 >> 5) | ((hi16 & 31) << 59);
        hi16 >>= 5;
    }
    out[26] = '\0';
}

void th__ulid_next(th__ulid_gen *g, int64_t now_ms, char out[TH_ID_SIZE])
{
    uint64_t ms = now_ms < 0 ? 0 : (uint64_t)now_ms & 0xFFFFFFFFFFFFULL;
    if (ms > g->last_ms) {
        g->last_ms = ms;
        g->hi16 = th__rng_next(&g->rng) & 0x7FFF; /* leave room to count up */
        g->lo64 = th__rng_next(&g->rng);
    } else if (++g->lo64 == 0 && ++g->hi16 > 0xFFFF) {
        /* 2^80 ids in one millisecond: borrow the next millisecond. */
        g->last_ms++;
        g->hi16 = 0;
    }
    encode(g->last_ms, g->hi16, g->lo64, out);
}

void th__ulid_observe(th__ulid_gen *g, const char *id)
{
    if (!th__ulid_valid(id))
        return;
    uint64_t ms = 0, hi = 0, lo = 0;
    for (int i = 0; i < 10; i++)
        ms = (ms << 5) | (uint64_t)b32val(id[i]);
    for (int i = 10; i < 26; i++) {
        hi = (hi << 5) | (lo >> 59);
        lo = (lo << 5) | (uint64_t)b32val(id[i]);
    }
    hi &= 0xFFFF;
    if (ms > g->last_ms ||
        (ms == g->last_ms && (hi > g->hi16 || (hi == g->hi16 && lo > g->lo64)))) {
        g->last_ms = ms;
        g->hi16 = hi;
        g->lo64 = lo;
    }
}

int th__ulid_valid(const char *s)
{
    if (!s || strlen(s) != TH_ID_LEN || b32val(s[0]) > 7)
        return 0;
    for (int i = 0; i < TH_ID_LEN; i++)
        if (b32val(s[i]) < 0)
            return 0;
    return 1;
}
