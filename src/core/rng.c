/*
 * PRNG seeding; see rng.h.
 */
#include "core/rng.h"

#include <sys/random.h>
#include <time.h>

void th__rng_seed(th__rng *r, uint64_t seed)
{
    if (seed == 0) {
        if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32);
        }
    }
    r->s = seed;
}
