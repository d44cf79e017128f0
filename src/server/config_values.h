/*
 * Value parsers shared by the configuration readers (config.c): durations
 * (ms, s, m, h; a bare number is ms), sizes (K, M, G as powers of 1024; a
 * bare number is bytes), integers in a range and booleans. Each returns 0,
 * or -1 for a value it cannot read.
 */
#ifndef TH_SERVER_CONFIG_VALUES_H
#define TH_SERVER_CONFIG_VALUES_H

#include <stddef.h>
#include <stdint.h>

int th__parse_int(const char *v, long min, long max, long *out);
int th__parse_double(const char *v, double min, double max, double *out);
int th__parse_duration(const char *v, int64_t *out);
int th__parse_size(const char *v, size_t *out);
int th__parse_bool(const char *v, int *out);
/* Replaces *slot (th__free'd) with a copy of `v`: 0, or -1 when out of
 * memory (*slot unchanged). */
int th__config_keep(char **slot, const char *v);

#endif
