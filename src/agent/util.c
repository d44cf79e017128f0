/*
 * Small helpers shared by the agent module: freeing what it returns, JSON
 * text in and out of th__ memory, and growing arrays.
 */
#include "agent/agent_impl.h"

#include <stdlib.h>
#include <string.h>

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

/* Length of the valid UTF-8 sequence at s[0..n), or 0 (as jansson judges:
 * no overlong forms, no surrogates, nothing past U+10FFFF). */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || len > n)
        return 0;
    for (size_t k = 1; k < len; k++)
        if ((s[k] & 0xC0) != 0x80)
            return 0;
    if ((len == 2 && c < 0xC2) || (len == 3 && c == 0xE0 && s[1] < 0xA0) ||
        (len == 3 && c == 0xED && s[1] >= 0xA0) || (len == 4 && c == 0xF0 && s[1] < 0x90) ||
        (len == 4 && (c > 0xF4 || (c == 0xF4 && s[1] >= 0x90))))
        return 0;
    return len;
}

char *th__agent_utf8_clean(const char *s)
{
    size_t n = strlen(s), o = 0;
    char *out = th__malloc(n + 1);
    if (!out)
        return NULL;
    for (size_t i = 0; i < n;) {
        size_t len = utf8_seq((const unsigned char *)s + i, n - i);
        if (len) {
            memcpy(out + o, s + i, len);
            o += len;
            i += len;
        } else {
            out[o++] = '?';
            i++;
        }
    }
    out[o] = '\0';
    return out;
}
