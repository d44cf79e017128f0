/*
 * The LLM sections of the daemon configuration: providers, prices, budgets
 * and agents (see llm_config.h). Values are checked here as far as a value
 * alone can be; the gateway checks each provider again when the daemon
 * adds it, naming the same keys.
 */
#include "server/llm_config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "server/config_values.h"
#include "taskhive/agent.h"

static int name_ok(const char *n)
{
    size_t len = strlen(n);
    if (len == 0 || len > 63)
        return 0;
    for (const char *p = n; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-' || *p == '.'))
            return 0;
    return 1;
}

static th__provider_conf *provider(th__llm_conf *c, const char *name)
{
    for (size_t i = 0; i < c->nproviders; i++)
        if (strcmp(c->providers[i].name, name) == 0)
            return &c->providers[i];
    th__provider_conf *n = th__realloc(c->providers, (c->nproviders + 1) * sizeof *n);
    if (!n)
        return NULL;
    c->providers = n;
    th__provider_conf *p = &n[c->nproviders++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    th_llm_provider_options_init(&p->o);
    p->o.format = (th_llm_format)-1; /* required */
    return p;
}

#define BAD(...) (snprintf(err, errlen, __VA_ARGS__), 0)

/* A duration key of a provider: name and where it goes. */
static int provider_duration(th__provider_conf *p, const char *k, const char *v, int *done,
                             char *err, size_t errlen)
{
    static const struct {
        const char *key;
        size_t off;
        int64_t min;
    } d[] = {
        {"timeout", offsetof(th_llm_provider_options, timeout_ms), 1},
        {"connect_timeout", offsetof(th_llm_provider_options, connect_timeout_ms), 1},
        {"retry_initial", offsetof(th_llm_provider_options, retry_initial_ms), 0},
        {"retry_max", offsetof(th_llm_provider_options, retry_max_ms), 0},
        {"breaker_cooldown", offsetof(th_llm_provider_options, breaker_cooldown_ms), 0},
        {"health_interval", offsetof(th_llm_provider_options, health_interval_ms), 0},
        {"mock_token_delay", offsetof(th_llm_provider_options, mock_token_delay_ms), 0},
    };
    *done = 0;
    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++) {
        if (strcmp(k, d[i].key) != 0)
            continue;
        *done = 1;
        int64_t ms;
        if (th__parse_duration(v, &ms) || ms < d[i].min)
            return BAD("%s: '%s' must be a duration (500ms, 30s, 2m)", k, v);
        memcpy((char *)&p->o + d[i].off, &ms, sizeof ms);
        return 1;
    }
    return 1;
}

static int provider_key(th__provider_conf *p, const char *k, const char *v, char *err,
                        size_t errlen)
{
    long n;
    double x;
    int done;
    if (!provider_duration(p, k, v, &done, err, errlen))
        return 0;
    if (done)
        return 1;
    if (strcmp(k, "format") == 0) {
        th_llm_format f;
        if (th_llm_format_parse(v, &f))
            return BAD("format: '%s' must be openai, anthropic, ollama or mock", v);
        p->o.format = f;
        return 1;
    }
    char **str = strcmp(k, "base_url") == 0            ? &p->base_url
                 : strcmp(k, "model") == 0             ? &p->model
                 : strcmp(k, "embed_model") == 0       ? &p->embed_model
                 : strcmp(k, "api_key_env") == 0       ? &p->api_key_env
                 : strcmp(k, "api_key_store") == 0     ? &p->api_key_store
                 : strcmp(k, "key_name") == 0          ? &p->key_name
                 : strcmp(k, "anthropic_version") == 0 ? &p->anthropic_version
                 : strcmp(k, "restart_service") == 0   ? &p->restart_service
                                                       : NULL;
    if (str) {
        if (!*v)
            return BAD("%s: must not be empty", k);
        if (strcmp(k, "base_url") == 0 && strncmp(v, "http://", 7) != 0 &&
            strncmp(v, "https://", 8) != 0)
            return BAD("base_url: '%s' must start with http:// or https://", v);
        return th__config_keep(str, v) ? BAD("out of memory") : 1;
    }
    if (strcmp(k, "api_key") == 0)
        return BAD("api_key: keys do not belong in the file; set api_key_env = VARIABLE or "
                   "api_key_store = NAME (taskhive keys set NAME)%s",
                   "");
    struct {
        const char *key;
        long min, max;
        int *slot;
    } ints[] = {
        {"max_concurrent", 1, 100000, &p->o.max_concurrent},
        {"max_retries", 0, 100, &p->o.max_retries},
        {"breaker_failures", 1, 1000000, &p->o.breaker_failures},
        {"breaker_successes", 1, 1000000, &p->o.breaker_successes},
        {"health_failures", 1, 1000000, &p->o.health_failures},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (strcmp(k, ints[i].key) == 0) {
            if (th__parse_int(v, ints[i].min, ints[i].max, &n))
                return BAD("%s: '%s' must be an integer from %ld to %ld", k, v, ints[i].min,
                           ints[i].max);
            *ints[i].slot = (int)n;
            return 1;
        }
    if (strcmp(k, "max_queue") == 0) {
        if (th__parse_int(v, 1, 10000000, &n))
            return BAD("max_queue: '%s' must be an integer from 1 to 10000000", v);
        p->o.max_queue = (size_t)n;
        return 1;
    }
    struct {
        const char *key;
        double max;
        double *slot;
    } dbl[] = {
        {"retry_jitter", 1, &p->o.retry_jitter},
        {"requests_per_min", 1e9, &p->o.requests_per_min},
        {"tokens_per_min", 1e12, &p->o.tokens_per_min},
        {"budget_daily", 1e9, &p->budget_daily},
        {"budget_monthly", 1e9, &p->budget_monthly},
    };
    for (size_t i = 0; i < sizeof dbl / sizeof dbl[0]; i++)
        if (strcmp(k, dbl[i].key) == 0) {
            if (th__parse_double(v, 0, dbl[i].max, &x))
                return BAD("%s: '%s' must be a number from 0 to %g", k, v, dbl[i].max);
            *dbl[i].slot = x;
            return 1;
        }
    return BAD("unknown key '%s' in [provider.%s]", k, p->name);
}

static int llm_key(th__llm_conf *c, const char *k, const char *v, char *err, size_t errlen)
{
    double x;
    if (strcmp(k, "usage_db") == 0 || strcmp(k, "memory_db") == 0 ||
        strcmp(k, "default_provider") == 0) {
        if (!*v)
            return BAD("%s: must not be empty", k);
        char **slot = k[0] == 'u'   ? &c->usage_db
                      : k[0] == 'm' ? &c->memory_db
                                    : &c->default_provider;
        return th__config_keep(slot, v) ? BAD("out of memory") : 1;
    }
    if (strcmp(k, "budget_daily") == 0 || strcmp(k, "budget_monthly") == 0) {
        if (th__parse_double(v, 0, 1e9, &x))
            return BAD("%s: '%s' must be a number of USD from 0 to 1e9", k, v);
        *(strcmp(k, "budget_daily") == 0 ? &c->budget_daily : &c->budget_monthly) = x;
        return 1;
    }
    if (strcmp(k, "confidence_half_life") == 0) {
        if (th__parse_duration(v, &c->half_life_ms) || c->half_life_ms < 0)
            return BAD("confidence_half_life: '%s' must be a duration (1h, 7d is 168h)", v);
        return 1;
    }
    return BAD("unknown key '%s' in [llm]", k);
}

static int price_key(th__llm_conf *c, const char *model, const char *v, char *err, size_t errlen)
{
    char *end;
    double in = strtod(v, &end);
    while (*end == ' ')
        end++;
    if (end == v || *end != ',')
        return BAD("%s: '%s' must be INPUT, OUTPUT (USD per million tokens)", model, v);
    const char *o = end + 1;
    double out = strtod(o, &end);
    while (*end == ' ')
        end++;
    if (end == o || *end || !(in >= 0) || !(out >= 0) || in > 1e6 || out > 1e6)
        return BAD("%s: '%s' must be INPUT, OUTPUT (USD per million tokens)", model, v);
    th__price_conf *n = th__realloc(c->prices, (c->nprices + 1) * sizeof *n);
    if (!n)
        return BAD("out of memory");
    c->prices = n;
    if (!(n[c->nprices].model = th__strdup(model)))
        return BAD("out of memory");
    n[c->nprices].in_per_m = in;
    n[c->nprices++].out_per_m = out;
    return 1;
}

static int agent_key(th__llm_conf *c, const char *name, const char *k, const char *v, char *err,
                     size_t errlen)
{
    th__agent_conf *a = NULL;
    for (size_t i = 0; i < c->nagents; i++)
        if (strcmp(c->agents[i].name, name) == 0)
            a = &c->agents[i];
    if (!a) {
        th__agent_conf *n = th__realloc(c->agents, (c->nagents + 1) * sizeof *n);
        if (!n)
            return BAD("out of memory");
        c->agents = n;
        a = &n[c->nagents++];
        memset(a, 0, sizeof *a);
        snprintf(a->name, sizeof a->name, "%s", name);
    }
    th__kv *kv = th__realloc(a->kv, (a->nkv + 1) * sizeof *kv);
    if (!kv)
        return BAD("out of memory");
    a->kv = kv;
    kv[a->nkv].key = th__strdup(k);
    kv[a->nkv].value = th__strdup(v);
    if (!kv[a->nkv].key || !kv[a->nkv].value) {
        th__free(kv[a->nkv].key);
        th__free(kv[a->nkv].value);
        return BAD("out of memory");
    }
    a->nkv++;
    return 1;
}

int th__llm_config_key(th__llm_conf *c, const char *section, const char *key, const char *value,
                       char *err, size_t errlen)
{
    if (strcmp(section, "llm") == 0)
        return llm_key(c, key, value, err, errlen);
    if (strcmp(section, "prices") == 0)
        return price_key(c, key, value, err, errlen);
    const char *name = strchr(section, '.') + 1;
    if (!name_ok(name))
        return BAD("[%s]: the name must be 1-63 of A-Z a-z 0-9 _ . -", section);
    if (strncmp(section, "agent.", 6) == 0)
        return agent_key(c, name, key, value, err, errlen);
    th__provider_conf *p = provider(c, name);
    if (!p)
        return BAD("out of memory");
    return provider_key(p, key, value, err, errlen);
}

int th__llm_config_finish(th__llm_conf *c, char *err, size_t errlen)
{
    for (size_t i = 0; i < c->nproviders; i++) {
        th__provider_conf *p = &c->providers[i];
        if ((int)p->o.format < 0) {
            snprintf(err, errlen,
                     "[provider.%s]: format is required (openai, anthropic, ollama, mock)",
                     p->name);
            return -1;
        }
        if (p->api_key_env && p->api_key_store) {
            snprintf(err, errlen, "[provider.%s]: api_key_env and api_key_store exclude each other",
                     p->name);
            return -1;
        }
        p->o.name = p->name;
        p->o.base_url = p->base_url;
        p->o.model = p->model;
        p->o.embed_model = p->embed_model;
        p->o.key_name = p->key_name;
        p->o.anthropic_version = p->anthropic_version;
    }
    /* Agent keys are checked now, so --check-config catches them; the
     * definitions are made when the daemon starts (agents.c). */
    for (size_t i = 0; i < c->nagents; i++) {
        th_agent_def *d = th_agent_def_new();
        th_error e = {0};
        int bad = !d;
        for (size_t k = 0; !bad && k < c->agents[i].nkv; k++) {
            const char *key = c->agents[i].kv[k].key, *v = c->agents[i].kv[k].value;
            double x;
            if (strcmp(key, "budget_daily") == 0 || strcmp(key, "budget_monthly") == 0) {
                if (th__parse_double(v, 0, 1e9, &x)) {
                    snprintf(e.field, sizeof e.field, "%s", key);
                    snprintf(e.message, sizeof e.message, "'%s' must be a number of USD", v);
                    bad = 1;
                }
            } else if (strcmp(key, "name") == 0) {
                snprintf(e.field, sizeof e.field, "name");
                snprintf(e.message, sizeof e.message, "comes from the section: [agent.NAME]");
                bad = 1;
            } else {
                bad = th_agent_def_set(d, key, v, &e) != 0;
            }
        }
        th_agent_def_free(d);
        if (bad) {
            snprintf(err, errlen, "[agent.%s] %s: %s", c->agents[i].name, e.field, e.message);
            return -1;
        }
    }
    if (c->default_provider) {
        int found = strcmp(c->default_provider, "mock") == 0;
        for (size_t i = 0; i < c->nproviders; i++)
            found |= strcmp(c->providers[i].name, c->default_provider) == 0;
        if (!found) {
            snprintf(err, errlen, "[llm] default_provider: no provider named '%s'",
                     c->default_provider);
            return -1;
        }
    }
    return 0;
}

void th__llm_config_free(th__llm_conf *c)
{
    for (size_t i = 0; i < c->nproviders; i++) {
        th__provider_conf *p = &c->providers[i];
        th__free(p->base_url);
        th__free(p->model);
        th__free(p->embed_model);
        th__free(p->api_key_env);
        th__free(p->api_key_store);
        th__free(p->key_name);
        th__free(p->anthropic_version);
        th__free(p->restart_service);
    }
    for (size_t i = 0; i < c->nprices; i++)
        th__free(c->prices[i].model);
    for (size_t i = 0; i < c->nagents; i++) {
        for (size_t k = 0; k < c->agents[i].nkv; k++) {
            th__free(c->agents[i].kv[k].key);
            th__free(c->agents[i].kv[k].value);
        }
        th__free(c->agents[i].kv);
    }
    th__free(c->providers);
    th__free(c->prices);
    th__free(c->agents);
    th__free(c->usage_db);
    th__free(c->memory_db);
    th__free(c->default_provider);
    memset(c, 0, sizeof *c);
}
