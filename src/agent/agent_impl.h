/*
 * Private helpers shared by the agent module's files (src/agent/): JSON
 * helpers into th__ memory, the compiled schema's tree, and the step names.
 */
#ifndef TH_AGENT_IMPL_H
#define TH_AGENT_IMPL_H

#include <jansson.h>

#include "taskhive/agent.h"

/* Dumps `v` compactly (any JSON value) into th__ memory; NULL on OOM. */
char *th__agent_dump(const json_t *v);

/* Parses JSON text (any value); NULL when it is not JSON. New reference. */
json_t *th__agent_parse(const char *text);

/* Makes room for element n of array *v (capacity *cap, elements of `size`),
 * doubling it; 0 or TH_ENOMEM (the array is unchanged). */
int th__agent_grow(void **v, size_t *cap, size_t n, size_t size);

/* A th__ copy of `s` with every byte that is not part of valid UTF-8
 * replaced by '?', so it can become a JSON string; NULL on OOM. */
char *th__agent_utf8_clean(const char *s);

/* Replaces th__ string *dst with a copy of `s` (NULL clears); TH_ENOMEM
 * leaves *dst alone. */
int th__agent_set_str(char **dst, const char *s);

/* Validates `value` against `s`, paths starting at `root`. */
int th__schema_check(const th_schema *s, const json_t *value, const char *root, th_error *err);

/* A definition from a parsed JSON object (see th_agent_def_from_json). */
int th__agent_def_from_value(const json_t *obj, const th_agent_def *base, th_agent_def **out,
                             th_error *err);
/* A definition as a JSON object (new reference), or NULL on OOM. */
json_t *th__agent_def_value(const th_agent_def *d);

/* th_memory_open with a destructor for `ud`, called when the memory is
 * freed (and on failure). */
th_memory *th__memory_open(const char *path, th_embed_fn embed, void *ud, void (*ud_free)(void *ud),
                           th_error *err);

/* The system prompt of a run (th__ memory), or NULL on OOM. */
char *th__agent_system_prompt(const th_agent_def *d, const char *context);
/* Whether a run that failed with `rc` may succeed on another attempt:
 * provider trouble, full queues, timeouts, cancellation, memory. Bad
 * input, unknown names, budgets and max_steps are final. */
int th__agent_retryable(int rc);
/* Finds the last "confidence: X" (or "X%") in text: 1 and *out in [0, 1]. */
int th__agent_confidence(const char *text, double *out);

#endif
