/*
 * Small helpers shared by the agent module: freeing what it returns, JSON
 * text in and out of th__ memory, and growing arrays.
 */
#include "agent/agent_impl.h"

#include <stdlib.h>

#include "core/alloc.h"

void th_agent_free(void *p)
{
    th__free(p);
}

char *th__agent_dump(const json_t *v)
{
    char *j = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    char *out = j ? th__strdup(j) : NULL;
    free(j);
    return out;
}

json_t *th__agent_parse(const char *text)
{
    json_error_t je;
    return text ? json_loads(text, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je) : NULL;
}

int th__agent_grow(void **v, size_t *cap, size_t n, size_t size)
{
    if (n < *cap)
        return 0;
    size_t c = *cap ? *cap * 2 : 8;
    void *g = th__realloc(*v, c * size);
    if (!g)
        return TH_ENOMEM;
    *v = g;
    *cap = c;
    return 0;
}

int th__agent_set_str(char **dst, const char *s)
{
    char *copy = NULL;
    if (s && !(copy = th__strdup(s)))
        return TH_ENOMEM;
    th__free(*dst);
    *dst = copy;
    return 0;
}
