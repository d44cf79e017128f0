/*
 * A small, fast PRNG (splitmix64) for jitter, lease tokens and id entropy.
 * Not for secrets. Callers hold whatever lock guards the state.
 */
#ifndef TH_CORE_RNG_H
#define TH_CORE_RNG_H

#include <stdint.h>

typedef struct th__rng {
    uint64_t s;
} th__rng;

/* Seeds from `seed`, or from the OS when seed is 0. */
void th__rng_seed(th__rng *r, uint64_t seed);

static inline uint64_t th__rng_next(th__rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform double in [0, 1). */
static inline double th__rng_unit(th__rng *r)
{
    return (double)(th__rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

#endif
