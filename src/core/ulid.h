/*
 * Task ids: ULIDs (48-bit millisecond time + 80 random bits, Crockford
 * base32). A generator is monotonic: ids it makes strictly increase even when
 * the clock stalls or steps back, so creation order equals id order.
 */
#ifndef TH_CORE_ULID_H
#define TH_CORE_ULID_H

#include <stdint.h>

#include "core/rng.h"
#include "taskhive/task.h"

typedef struct th__ulid_gen {
    uint64_t last_ms;
    uint64_t hi16, lo64; /* the 80 random bits of the last id */
    th__rng rng;
} th__ulid_gen;

void th__ulid_init(th__ulid_gen *g, uint64_t seed);
/* Writes the next id (26 chars + NUL) for wall time `now_ms`. */
void th__ulid_next(th__ulid_gen *g, int64_t now_ms, char out[TH_ID_SIZE]);
/* Makes the generator continue after `id` (used when reloading a store). */
void th__ulid_observe(th__ulid_gen *g, const char *id);
/* 1 when `s` is a well-formed id. */
int th__ulid_valid(const char *s);

#endif
