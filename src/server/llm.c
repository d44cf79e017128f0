/*
 * The daemon's LLM gateway: made from the [llm], [provider.NAME] and
 * [prices] sections at start, and served under /v1/providers and /v1/spend.
 *
 * Providers: every configured one, plus "mock" (offline) unless a provider
 * of that name is configured, so the daemon answers agent tasks with no key
 * and no network. With no [provider.*] at all, OPENAI_API_KEY and
 * ANTHROPIC_API_KEY in the environment add "openai" and "anthropic".
 *
 * Gateway events (retries, fallbacks, breaker and health changes) become
 * log lines; a provider that turns unhealthy and names a restart_service
 * gets that supervised service restarted, from a short-lived thread so the
 * gateway thread never waits for the supervisor.
 */
#include "server/llm.h"

#include <errno.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "server/keys.h"
#include "server/log.h"

/* A restart of a local provider's service, off the gateway thread. */
typedef struct restart_job {
    th_supervisor *sv;
    char name[128];
} restart_job;

/* Restart threads still running; th__llm_stop waits for them, so none
 * outlives the supervisor. */
static atomic_int restarts_running;

static void *restart_main(void *arg)
{
    restart_job *j = arg;
    th_error e;
    if (th_supervisor_restart(j->sv, j->name, &e) != 0)
        th__log(TH_LOG_ERROR, "llm", json_pack("{s:s,s:s}", "service", j->name, "error", e.message),
                "could not restart the provider's service");
    else
        th__log(TH_LOG_WARN, "llm", json_pack("{s:s}", "service", j->name),
                "restarted the provider's service after failed health checks");
    th__free(j);
    atomic_fetch_sub(&restarts_running, 1);
    return NULL;
}

static void on_llm_event(const th_llm_event *ev, void *ud)
{
    th__server *s = ud;
    static const char *const names[] = {"retry", "fallback", "breaker", "health", "rate_limited"};
    th_log_level lvl = ev->type == TH_LLM_EV_RETRY || ev->type == TH_LLM_EV_RATE_LIMITED
                           ? TH_LOG_INFO
                           : TH_LOG_WARN;
    th__log(lvl, "llm",
            json_pack("{s:s,s:s,s:i}", "event", names[ev->type], "provider", ev->provider, "value",
                      ev->value),
            "%s", ev->message);
    th_supervisor *sv = __atomic_load_n(&s->sv, __ATOMIC_ACQUIRE);
    if (ev->type != TH_LLM_EV_HEALTH || ev->value != 0 || !sv)
        return;
    for (size_t i = 0; i < s->cfg.llm.nproviders; i++) {
        const th__provider_conf *p = &s->cfg.llm.providers[i];
        if (strcmp(p->name, ev->provider) != 0 || !p->restart_service)
            continue;
        restart_job *j = th__calloc(1, sizeof *j);
        pthread_t t;
        if (!j)
            return;
        j->sv = sv;
        snprintf(j->name, sizeof j->name, "%s", p->restart_service);
        atomic_fetch_add(&restarts_running, 1);
        if (pthread_create(&t, NULL, restart_main, j) == 0) {
            pthread_detach(t);
        } else {
            atomic_fetch_sub(&restarts_running, 1);
            th__free(j);
        }
    }
}

static int add(th__server *s, th_llm_provider_options *o, char *err, size_t errlen)
{
    th_error e;
    if (th_llm_gateway_add_provider(s->gw, o, &e) != 0) {
        snprintf(err, errlen, "[provider.%s] %s: %s", o->name, e.field, e.message);
        return -1;
    }
    return 0;
}

/* The key store, opened on first use. NULL with `err`. */
static th__keys *keys(th__server *s, char *err, size_t errlen)
{
    if (!s->keys) {
        if (mkdir(s->cfg.data_dir, 0700) != 0 && errno != EEXIST) {
            snprintf(err, errlen, "cannot create %s: %s", s->cfg.data_dir, strerror(errno));
            return NULL;
        }
        s->keys = th__keys_open(s->cfg.data_dir, err, errlen);
    }
    return s->keys;
}

int th__llm_start(th__server *s, char *err, size_t errlen)
{
    th__llm_conf *c = &s->cfg.llm;
    char usage[4200];
    th_llm_gateway_options go;
    th_llm_gateway_options_init(&go);
    go.on_event = on_llm_event;
    go.ud = s;
    if (c->usage_db) {
        go.usage_path = c->usage_db;
    } else if (!s->cfg.store || strncmp(s->cfg.store, "sqlite:", 7) == 0) {
        snprintf(usage, sizeof usage, "%s/llm-usage.db", s->cfg.data_dir);
        go.usage_path = usage;
    }
    th_error e;
    if (!(s->gw = th_llm_gateway_new(&go, &e))) {
        snprintf(err, errlen, "LLM gateway: %s", e.message);
        return -1;
    }
    int has_mock = 0;
    for (size_t i = 0; i < c->nproviders; i++) {
        th__provider_conf *p = &c->providers[i];
        th_llm_provider_options o = p->o;
        if (p->api_key_env) {
            const char *k = getenv(p->api_key_env);
            if (!k || !*k) {
                snprintf(err, errlen, "[provider.%s] api_key_env: %s is not set", p->name,
                         p->api_key_env);
                return -1;
            }
            o.api_key = k;
        }
        char *stored = NULL;
        if (p->api_key_store) {
            char kerr[300];
            th__keys *ks = keys(s, kerr, sizeof kerr);
            int rc = ks ? th__keys_get(ks, p->api_key_store, &stored) : TH_EIO;
            if (rc != 0) {
                snprintf(err, errlen, "[provider.%s] api_key_store: %s", p->name,
                         !ks                  ? kerr
                         : rc == TH_ENOTFOUND ? "no such key (taskhive keys set NAME)"
                         : rc == TH_ECORRUPT  ? "cannot be decrypted with this master key"
                                              : "cannot read the key store");
                return -1;
            }
            o.api_key = stored;
        }
        int rc = add(s, &o, err, errlen);
        if (stored) {
            sodium_memzero(stored, strlen(stored));
            th__free(stored);
        }
        if (rc)
            return -1;
        has_mock |= strcmp(p->name, "mock") == 0;
        char scope[80];
        snprintf(scope, sizeof scope, "key:%s", p->key_name ? p->key_name : p->name);
        if ((p->budget_daily > 0 || p->budget_monthly > 0) &&
            th_llm_set_budget(s->gw, scope, p->budget_daily, p->budget_monthly) != 0) {
            snprintf(err, errlen, "[provider.%s] budget: out of memory", p->name);
            return -1;
        }
    }
    th_llm_provider_options o;
    if (!has_mock) {
        th_llm_provider_options_init(&o);
        o.name = "mock";
        o.format = TH_LLM_MOCK;
        if (add(s, &o, err, errlen))
            return -1;
    }
    const char *fallback_default = NULL;
    static const struct {
        const char *name, *env;
        th_llm_format f;
    } autos[] = {{"openai", "OPENAI_API_KEY", TH_LLM_OPENAI},
                 {"anthropic", "ANTHROPIC_API_KEY", TH_LLM_ANTHROPIC}};
    for (size_t i = 0; c->nproviders == 0 && i < 2; i++) {
        const char *k = getenv(autos[i].env);
        if (!k || !*k)
            continue;
        th_llm_provider_options_init(&o);
        o.name = autos[i].name;
        o.format = autos[i].f;
        o.api_key = k;
        if (add(s, &o, err, errlen))
            return -1;
        if (!fallback_default)
            fallback_default = autos[i].name;
    }
    const char *def = c->default_provider ? c->default_provider
                      : c->nproviders     ? c->providers[0].name
                      : fallback_default  ? fallback_default
                                          : "mock";
    snprintf(s->default_provider, sizeof s->default_provider, "%s", def);
    for (size_t i = 0; i < c->nprices; i++)
        if (th_llm_set_price(s->gw, c->prices[i].model, c->prices[i].in_per_m,
                             c->prices[i].out_per_m) != 0) {
            snprintf(err, errlen, "[prices] %s: out of memory", c->prices[i].model);
            return -1;
        }
    if ((c->budget_daily > 0 || c->budget_monthly > 0) &&
        th_llm_set_budget(s->gw, "total", c->budget_daily, c->budget_monthly) != 0) {
        snprintf(err, errlen, "[llm] budget: out of memory");
        return -1;
    }
    th__log(TH_LOG_INFO, "llm",
            json_pack("{s:i,s:s,s:s}", "providers", th_llm_providers(s->gw, NULL, 0), "default",
                      s->default_provider, "usage_db", go.usage_path ? go.usage_path : ""),
            "LLM gateway ready");
    return 0;
}

void th__llm_stop(th__server *s)
{
    th_llm_gateway_free(s->gw);
    s->gw = NULL;
    /* No new restart starts once the gateway is gone; wait for those
     * running (bounded by the supervisor's own stop timeouts). */
    while (atomic_load(&restarts_running) > 0)
        usleep(10000);
    th__keys_free(s->keys);
    s->keys = NULL;
}

/* ---- routes ---------------------------------------------------------------- */

static json_t *provider_json(const th_llm_provider_status *p)
{
    return json_pack(
        "{s:s,s:s,s:s,s:b,s:i,s:I,s:s,s:i,s:i,s:i,s:i,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f}", "name",
        p->name, "format", th_llm_format_name(p->format), "model", p->model, "healthy", p->healthy,
        "health_failures", p->health_failures, "last_health_ms", (json_int_t)p->last_health_ms,
        "breaker", th_llm_breaker_name(p->breaker), "breaker_failures", p->breaker_failures,
        "in_flight", p->in_flight, "queued", p->queued, "max_concurrent", p->max_concurrent,
        "requests", (json_int_t)p->requests, "successes", (json_int_t)p->successes, "failures",
        (json_int_t)p->failures, "retries", (json_int_t)p->retries, "rate_limited",
        (json_int_t)p->rate_limited, "input_tokens", (json_int_t)p->input_tokens, "output_tokens",
        (json_int_t)p->output_tokens, "cost_usd", p->cost_usd);
}

static void providers(th__req *q, const char *name)
{
    th_llm_provider_status st[64];
    int n = th_llm_providers(q->s->gw, st, 64);
    if (n > 64)
        n = 64;
    if (name) {
        for (int i = 0; i < n; i++)
            if (strcmp(st[i].name, name) == 0) {
                th__reply_json(q, 200, provider_json(&st[i]));
                return;
            }
        th__reply_error(q, 404, "ENOTFOUND", "", "no provider %s", name);
        return;
    }
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, provider_json(&st[i]));
    th__reply_json(q, 200,
                   json_pack("{s:o,s:s}", "providers", a, "default", q->s->default_provider));
}

static int valid_day(const char *d)
{
    if (strlen(d) != 10 || d[4] != '-' || d[7] != '-')
        return 0;
    for (int i = 0; i < 10; i++)
        if (i != 4 && i != 7 && (d[i] < '0' || d[i] > '9'))
            return 0;
    return 1;
}

static void spend(th__req *q)
{
    const char *since = th__req_param(q, "since");
    if (since && !valid_day(since)) {
        th__reply_error(q, 400, "EINVAL", "since", "must be a day, YYYY-MM-DD");
        return;
    }
    th_llm_spend_row *rows;
    size_t n;
    if (th_llm_spend(q->s->gw, since, &rows, &n) != 0) {
        th__reply_error(q, 500, "ENOMEM", "", "out of memory");
        return;
    }
    json_t *a = json_array();
    double total = 0;
    for (size_t i = 0; i < n; i++) {
        const th_llm_spend_row *r = &rows[i];
        total += r->cost_usd;
        json_array_append_new(a, json_pack("{s:s,s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:f}", "day", r->day,
                                           "provider", r->provider, "model", r->model, "agent",
                                           r->agent, "key", r->key, "requests",
                                           (json_int_t)r->requests, "input_tokens",
                                           (json_int_t)r->input_tokens, "output_tokens",
                                           (json_int_t)r->output_tokens, "cost_usd", r->cost_usd));
    }
    th_llm_free(rows);
    double today, month;
    th_llm_spent(q->s->gw, "total", &today, &month);
    th__reply_json(q, 200,
                   json_pack("{s:o,s:f,s:f,s:f}", "rows", a, "total_usd", total, "today_usd", today,
                             "month_usd", month));
}

/* The providers whose key is stored under `name`, as a JSON array. */
static json_t *users(th__server *s, const char *name)
{
    json_t *a = json_array();
    for (size_t i = 0; i < s->cfg.llm.nproviders; i++) {
        const th__provider_conf *p = &s->cfg.llm.providers[i];
        if (p->api_key_store && strcmp(p->api_key_store, name) == 0)
            json_array_append_new(a, json_string(p->name));
    }
    return a;
}

static void keys_route(th__req *q, enum evhttp_cmd_type method)
{
    char err[300];
    th__keys *k = keys(q->s, err, sizeof err);
    if (!k) {
        th__reply_error(q, 500, "EIO", "", "key store: %s", err);
        return;
    }
    if (q->nseg == 2) {
        if (method != EVHTTP_REQ_GET) {
            th__reply_method(q, "GET");
            return;
        }
        json_t *list = th__keys_list(k);
        size_t i;
        json_t *row;
        json_array_foreach(list, i, row)
        {
            json_object_set_new(row, "providers",
                                users(q->s, json_string_value(json_object_get(row, "name"))));
        }
        th__reply_json(q, 200, json_pack("{s:o}", "keys", list));
        return;
    }
    const char *name = q->seg[2];
    if (method == EVHTTP_REQ_DELETE) {
        json_t *u = users(q->s, name);
        if (json_array_size(u)) {
            th__reply_error(q, 409, "EBUSY", "name", "key %s is used by provider %s", name,
                            json_string_value(json_array_get(u, 0)));
            json_decref(u);
            return;
        }
        json_decref(u);
        int rc = th__keys_delete(k, name);
        if (rc == TH_ENOTFOUND)
            th__reply_error(q, 404, "ENOTFOUND", "name", "no key %s", name);
        else if (rc)
            th__reply_error(q, 500, "EIO", "", "cannot delete key %s", name);
        else
            th__reply_json(q, 200, json_pack("{s:s,s:b}", "name", name, "deleted", 1));
        return;
    }
    if (method != EVHTTP_REQ_PUT) {
        th__reply_method(q, "PUT, DELETE");
        return;
    }
    json_t *body = th__req_body(q, 64 * 1024);
    if (!body)
        return;
    static const char *const fields[] = {"value", NULL};
    json_t *v = json_object_get(body, "value");
    if (th__req_known_fields(q, body, fields, "") != 0) {
        json_decref(body);
        return;
    }
    int printable = json_is_string(v) && json_string_length(v) > 0 && json_string_length(v) <= 4096;
    for (size_t i = 0; printable && i < json_string_length(v); i++) {
        unsigned char ch = (unsigned char)json_string_value(v)[i];
        printable = ch > 0x20 && ch < 0x7f; /* no spaces, CR, LF or NUL in a header */
    }
    if (!printable) {
        json_decref(body);
        th__reply_error(q, 400, "EINVAL", "value",
                        "must be 1 to 4096 printable ASCII characters without spaces");
        return;
    }
    int existed = 0;
    int rc = th__keys_put(k, name, json_string_value(v), &existed);
    json_t *u = users(q->s, name);
    size_t i;
    json_t *pn;
    /* Rotation: every provider using this key sends the new one from now. */
    json_array_foreach(u, i, pn)
    {
        if (rc == 0)
            th_llm_set_api_key(q->s->gw, json_string_value(pn), json_string_value(v));
    }
    sodium_memzero((void *)json_string_value(v), json_string_length(v));
    json_decref(body);
    if (rc) {
        json_decref(u);
        th__reply_error(q, 500, "EIO", "", "cannot store key %s", name);
        return;
    }
    th__log(TH_LOG_INFO, "keys", json_pack("{s:s,s:b}", "name", name, "rotated", existed),
            "key stored");
    th__reply_json(q, existed ? 200 : 201,
                   json_pack("{s:s,s:b,s:o}", "name", name, "rotated", existed, "providers", u));
}

int th__route_llm(th__req *q, enum evhttp_cmd_type method)
{
    if (SEG(1, "keys") && q->nseg <= 3) {
        if (th__req_allow(q, TH_SCOPE_ADMIN))
            keys_route(q, method);
        return 1;
    }
    int get = method == EVHTTP_REQ_GET || method == EVHTTP_REQ_HEAD;
    if (SEG(1, "providers") && q->nseg <= 3) {
        if (!get) {
            th__reply_method(q, "GET");
            return 1;
        }
        if (th__req_allow(q, TH_SCOPE_READ))
            providers(q, q->nseg == 3 ? q->seg[2] : NULL);
        return 1;
    }
    if (SEG(1, "spend") && q->nseg == 2) {
        if (!get) {
            th__reply_method(q, "GET");
            return 1;
        }
        if (th__req_allow(q, TH_SCOPE_READ))
            spend(q);
        return 1;
    }
    return 0;
}
