/*
 * Agent definitions: making, copying, validating, JSON in and out, config
 * values, and the thread-safe registry of definitions by name.
 */
#include "agent/agent_impl.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"

/* ---- one definition ------------------------------------------------------- */

th_agent_def *th_agent_def_new(void)
{
    th_agent_def *d = th__calloc(1, sizeof *d);
    if (d)
        d->temperature = -1;
    return d;
}

static void free_tools(char **tools, size_t n)
{
    for (size_t i = 0; i < n; i++)
        th__free(tools[i]);
    th__free(tools);
}

void th_agent_def_free(th_agent_def *d)
{
    if (!d)
        return;
    th__free(d->name);
    th__free(d->role);
    th__free(d->backstory);
    th__free(d->instructions);
    th__free(d->provider);
    th__free(d->model);
    free_tools(d->tools, d->ntools);
    free_tools(d->fallbacks, d->nfallbacks);
    th__free(d);
}

/* Copies `s` into *dst (NULL stays NULL); 0 or TH_ENOMEM. */
static int dup_field(char **dst, const char *s)
{
    *dst = NULL;
    if (s && !(*dst = th__strdup(s)))
        return TH_ENOMEM;
    return 0;
}

th_agent_def *th_agent_def_copy(const th_agent_def *d)
{
    th_agent_def *c = th_agent_def_new();
    if (!c || !d)
        return c;
    c->temperature = d->temperature;
    c->max_tokens = d->max_tokens;
    c->max_steps = d->max_steps;
    if (dup_field(&c->name, d->name) || dup_field(&c->role, d->role) ||
        dup_field(&c->backstory, d->backstory) || dup_field(&c->instructions, d->instructions) ||
        dup_field(&c->provider, d->provider) || dup_field(&c->model, d->model))
        goto fail;
    if (d->ntools) {
        if (!(c->tools = th__calloc(d->ntools, sizeof *c->tools)))
            goto fail;
        for (; c->ntools < d->ntools; c->ntools++)
            if (dup_field(&c->tools[c->ntools], d->tools[c->ntools]) || !c->tools[c->ntools])
                goto fail;
    }
    if (d->nfallbacks) {
        if (!(c->fallbacks = th__calloc(d->nfallbacks, sizeof *c->fallbacks)))
            goto fail;
        for (; c->nfallbacks < d->nfallbacks; c->nfallbacks++)
            if (dup_field(&c->fallbacks[c->nfallbacks], d->fallbacks[c->nfallbacks]) ||
                !c->fallbacks[c->nfallbacks])
                goto fail;
    }
    return c;
fail:
    th_agent_def_free(c);
    return NULL;
}

static int name_ok(const char *s, size_t max)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-' && s[i] != '.')
            return 0;
    return 1;
}

static int text_ok(const char *s, const char *field, th_error *err)
{
    if (s && strlen(s) > TH_AGENT_TEXT_MAX)
        return th__err(err, TH_EINVAL, field, "longer than %d bytes", TH_AGENT_TEXT_MAX);
    return 0;
}

int th_agent_def_validate(const th_agent_def *d, const th_tools *tools, th_error *err)
{
    int rc;
    if (!d)
        return th__err(err, TH_EINVAL, "", "no definition");
    if (!name_ok(d->name, TH_AGENT_NAME_MAX))
        return th__err(err, TH_EINVAL, "name", "must be 1-%d characters of [A-Za-z0-9_.-]",
                       TH_AGENT_NAME_MAX);
    if (!name_ok(d->provider, 63))
        return th__err(err, TH_EINVAL, "provider", "must name a provider ([A-Za-z0-9_.-]{1,63})");
    if (d->model && (!*d->model || strlen(d->model) > 127))
        return th__err(err, TH_EINVAL, "model", "must be 1-127 bytes");
    if ((rc = text_ok(d->role, "role", err)) || (rc = text_ok(d->backstory, "backstory", err)) ||
        (rc = text_ok(d->instructions, "instructions", err)))
        return rc;
    if (d->temperature != -1 && !(d->temperature >= 0 && d->temperature <= 2))
        return th__err(err, TH_EINVAL, "temperature", "must be in [0, 2] (or -1: the default)");
    if (d->max_tokens < 0 || d->max_tokens > 1000000)
        return th__err(err, TH_EINVAL, "max_tokens", "must be in [0, 1000000]");
    if (d->max_steps < 0 || d->max_steps > TH_AGENT_MAX_STEPS)
        return th__err(err, TH_EINVAL, "max_steps", "must be in [0, %d]", TH_AGENT_MAX_STEPS);
    if (d->ntools > TH_AGENT_MAX_TOOLS)
        return th__err(err, TH_EINVAL, "tools", "more than %d tools", TH_AGENT_MAX_TOOLS);
    if (d->nfallbacks > TH_AGENT_MAX_FALLBACKS)
        return th__err(err, TH_EINVAL, "fallbacks", "more than %d fallbacks",
                       TH_AGENT_MAX_FALLBACKS);
    for (size_t i = 0; i < d->nfallbacks; i++) {
        char field[32], prov[64];
        snprintf(field, sizeof field, "fallbacks[%zu]", i);
        const char *f = d->fallbacks[i] ? d->fallbacks[i] : "";
        const char *slash = strchr(f, '/');
        size_t plen = slash ? (size_t)(slash - f) : strlen(f);
        if (plen >= sizeof prov)
            plen = sizeof prov - 1;
        memcpy(prov, f, plen);
        prov[plen] = '\0';
        if (!name_ok(prov, 63) || (slash && (!slash[1] || strlen(slash + 1) > 127)))
            return th__err(err, TH_EINVAL, field, "must be \"provider\" or \"provider/model\"");
    }
    for (size_t i = 0; i < d->ntools; i++) {
        char field[32];
        snprintf(field, sizeof field, "tools[%zu]", i);
        if (!d->tools[i] || !*d->tools[i])
            return th__err(err, TH_EINVAL, field, "must be a tool name");
        if (tools && !th_tools_has(tools, d->tools[i]))
            return th__err(err, TH_EINVAL, field, "unknown tool \"%s\"", d->tools[i]);
        for (size_t j = 0; j < i; j++)
            if (strcmp(d->tools[i], d->tools[j]) == 0)
                return th__err(err, TH_EINVAL, field, "\"%s\" is listed twice", d->tools[i]);
    }
    return 0;
}

/* ---- JSON ------------------------------------------------------------------- */

static char **string_field(th_agent_def *d, const char *key)
{
    if (strcmp(key, "name") == 0)
        return &d->name;
    if (strcmp(key, "role") == 0)
        return &d->role;
    if (strcmp(key, "backstory") == 0)
        return &d->backstory;
    if (strcmp(key, "instructions") == 0)
        return &d->instructions;
    if (strcmp(key, "provider") == 0)
        return &d->provider;
    if (strcmp(key, "model") == 0)
        return &d->model;
    return NULL;
}

/* The string list `key` of d ("tools" or "fallbacks"), or NULL. */
static char ***list_field(th_agent_def *d, const char *key, size_t **n)
{
    if (strcmp(key, "tools") == 0) {
        *n = &d->ntools;
        return &d->tools;
    }
    if (strcmp(key, "fallbacks") == 0) {
        *n = &d->nfallbacks;
        return &d->fallbacks;
    }
    return NULL;
}

/* Replaces d's list `key` with the strings of `arr` (a JSON array). */
static int set_list_json(th_agent_def *d, const char *key, const json_t *arr, th_error *err)
{
    size_t *count = NULL;
    char ***slot = list_field(d, key, &count);
    if (!slot || !json_is_array(arr))
        return th__err(err, TH_EINVAL, key, "must be an array of strings");
    size_t n = json_array_size(arr);
    char **list = n ? th__calloc(n, sizeof *list) : NULL;
    if (n && !list)
        return th__err(err, TH_ENOMEM, "", "out of memory");
    for (size_t i = 0; i < n; i++) {
        const char *s = json_string_value(json_array_get(arr, i));
        if (!s) {
            free_tools(list, n);
            char field[32];
            snprintf(field, sizeof field, "%s[%zu]", key, i);
            return th__err(err, TH_EINVAL, field, "must be a string");
        }
        if (!(list[i] = th__strdup(s))) {
            free_tools(list, n);
            return th__err(err, TH_ENOMEM, "", "out of memory");
        }
    }
    free_tools(*slot, *count);
    *slot = list;
    *count = n;
    return 0;
}

static int set_int_json(int *dst, const json_t *v, const char *key, th_error *err)
{
    if (json_is_null(v)) {
        *dst = 0;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < INT32_MIN ||
        json_integer_value(v) > INT32_MAX)
        return th__err(err, TH_EINVAL, key, "must be an integer");
    *dst = (int)json_integer_value(v);
    return 0;
}

/* One member of a definition object (or a patch). */
static int set_json(th_agent_def *d, const char *key, const json_t *v, th_error *err)
{
    char **s = string_field(d, key);
    if (s) {
        if (!json_is_string(v) && !json_is_null(v))
            return th__err(err, TH_EINVAL, key, "must be a string");
        if (th__agent_set_str(s, json_string_value(v)))
            return th__err(err, TH_ENOMEM, "", "out of memory");
        return 0;
    }
    if (strcmp(key, "temperature") == 0) {
        if (json_is_null(v))
            d->temperature = -1;
        else if (json_is_number(v))
            d->temperature = json_number_value(v);
        else
            return th__err(err, TH_EINVAL, key, "must be a number");
        return 0;
    }
    if (strcmp(key, "max_tokens") == 0)
        return set_int_json(&d->max_tokens, v, key, err);
    if (strcmp(key, "max_steps") == 0)
        return set_int_json(&d->max_steps, v, key, err);
    size_t *n;
    if (list_field(d, key, &n)) {
        if (json_is_null(v)) {
            json_t *empty = json_array();
            int rc = set_list_json(d, key, empty, err);
            json_decref(empty);
            return rc;
        }
        return set_list_json(d, key, v, err);
    }
    return th__err(err, TH_EINVAL, key, "unknown field");
}

int th__agent_def_from_value(const json_t *obj, const th_agent_def *base, th_agent_def **out,
                             th_error *err)
{
    *out = NULL;
    if (!json_is_object(obj))
        return th__err(err, TH_EINVAL, "", "an agent must be a JSON object");
    th_agent_def *d = base ? th_agent_def_copy(base) : th_agent_def_new();
    if (!d)
        return th__err(err, TH_ENOMEM, "", "out of memory");
    int rc = 0;
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)obj, k, v)
    {
        if ((rc = set_json(d, k, v, err)))
            goto fail;
    }
    if ((rc = th_agent_def_validate(d, NULL, err)))
        goto fail;
    *out = d;
    return 0;
fail:
    th_agent_def_free(d);
    return rc;
}

int th_agent_def_from_json(const char *json_text, const th_agent_def *base, th_agent_def **out,
                           th_error *err)
{
    json_error_t je;
    json_t *obj = json_loads(json_text ? json_text : "", JSON_REJECT_DUPLICATES, &je);
    if (!obj) {
        *out = NULL;
        return th__err(err, TH_EINVAL, "", "not JSON: %s", je.text);
    }
    int rc = th__agent_def_from_value(obj, base, out, err);
    json_decref(obj);
    return rc;
}

json_t *th__agent_def_value(const th_agent_def *d)
{
    json_t *o = json_object(), *tools = json_array(), *fb = json_array();
    if (!o || !tools || !fb)
        goto fail;
    const char *keys[] = {"name", "role", "backstory", "instructions", "provider", "model"};
    const char *vals[] = {d->name, d->role, d->backstory, d->instructions, d->provider, d->model};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (json_object_set_new(o, keys[i], vals[i] ? json_string(vals[i]) : json_null()))
            goto fail;
    for (size_t i = 0; i < d->ntools; i++)
        if (json_array_append_new(tools, json_string(d->tools[i])))
            goto fail;
    for (size_t i = 0; i < d->nfallbacks; i++)
        if (json_array_append_new(fb, json_string(d->fallbacks[i])))
            goto fail;
    if (json_object_set_new(o, "temperature",
                            d->temperature < 0 ? json_null() : json_real(d->temperature)) ||
        json_object_set_new(o, "max_tokens", json_integer(d->max_tokens)) ||
        json_object_set_new(o, "max_steps", json_integer(d->max_steps)) ||
        json_object_set(o, "tools", tools) || json_object_set(o, "fallbacks", fb))
        goto fail;
    json_decref(tools);
    json_decref(fb);
    return o;
fail:
    json_decref(tools);
    json_decref(fb);
    json_decref(o);
    return NULL;
}

char *th_agent_def_to_json(const th_agent_def *d)
{
    if (!d)
        return NULL;
    json_t *o = th__agent_def_value(d);
    char *s = o ? th__agent_dump(o) : NULL;
    json_decref(o);
    return s;
}

/* ---- config values --------------------------------------------------------- */

static int parse_int_text(const char *value, long min, long max, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (errno || end == value || *end || v < min || v > max)
        return TH_EINVAL;
    *out = (int)v;
    return 0;
}

/* Splits "a, b,c" into the list `key`. */
static int set_list_text(th_agent_def *d, const char *key, const char *value, th_error *err)
{
    json_t *arr = json_array();
    const char *p = value;
    while (arr && *p) {
        while (*p == ',' || isspace((unsigned char)*p))
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        const char *t = e;
        while (t > p && isspace((unsigned char)t[-1]))
            t--;
        if (t > p && json_array_append_new(arr, json_stringn(p, (size_t)(t - p))))
            break;
        p = e;
    }
    int rc = arr ? set_list_json(d, key, arr, err) : th__err(err, TH_ENOMEM, "", "out of memory");
    json_decref(arr);
    return rc;
}

int th_agent_def_set(th_agent_def *d, const char *key, const char *value, th_error *err)
{
    if (!key || !value)
        return th__err(err, TH_EINVAL, key ? key : "", "missing value");
    char **s = string_field(d, key);
    if (s)
        return th__agent_set_str(s, value) ? th__err(err, TH_ENOMEM, "", "out of memory") : 0;
    if (strcmp(key, "temperature") == 0) {
        char *end;
        double t = strtod(value, &end);
        if (end == value || *end || !isfinite(t))
            return th__err(err, TH_EINVAL, key, "must be a number");
        d->temperature = t;
        return 0;
    }
    if (strcmp(key, "max_tokens") == 0 && parse_int_text(value, 0, 1000000, &d->max_tokens))
        return th__err(err, TH_EINVAL, key, "must be an integer in [0, 1000000]");
    if (strcmp(key, "max_steps") == 0 &&
        parse_int_text(value, 0, TH_AGENT_MAX_STEPS, &d->max_steps))
        return th__err(err, TH_EINVAL, key, "must be an integer in [0, %d]", TH_AGENT_MAX_STEPS);
    if (strcmp(key, "tools") == 0 || strcmp(key, "fallbacks") == 0)
        return set_list_text(d, key, value, err);
    if (strcmp(key, "max_tokens") && strcmp(key, "max_steps"))
        return th__err(err, TH_EINVAL, key, "unknown agent setting");
    return 0;
}
