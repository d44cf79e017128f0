/*
 * Clocks: the wall clock (task times, persisted) and the monotonic clock
 * (waits and timeouts inside one process).
 */
#ifndef TH_CORE_CLOCK_H
#define TH_CORE_CLOCK_H

#include <stdint.h>
#include <time.h>

int64_t th__wall_ms(void);
int64_t th__mono_ns(void);
/* An absolute CLOCK_MONOTONIC timespec `ms` from now, for timed waits on
 * condition variables created with th__cond_init_mono. */
struct timespec th__mono_deadline(int64_t ms);
/* The same, `us` microseconds from now. */
struct timespec th__mono_deadline_us(int64_t us);

#include <pthread.h>
/* Initialises a condition variable that times out on CLOCK_MONOTONIC. */
int th__cond_init_mono(pthread_cond_t *c);

#endif
