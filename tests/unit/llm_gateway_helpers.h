/*
 * Helpers shared by the LLM gateway tests: a gateway with an event
 * recorder, providers pointed at a fakellm, and one-message requests.
 */
#ifndef THTEST_LLM_GATEWAY_HELPERS_H
#define THTEST_LLM_GATEWAY_HELPERS_H

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "fakellm.h"
#include "thtest.h"

#include <taskhive/llm.h>

#define GW_MAX_EVENTS 256

typedef struct gw_events {
    pthread_mutex_t mu;
    int n;
    th_llm_event_type type[GW_MAX_EVENTS];
    int value[GW_MAX_EVENTS];
    char provider[GW_MAX_EVENTS][64];
} gw_events;

static inline void gw_on_event(const th_llm_event *ev, void *ud)
{
    gw_events *e = ud;
    pthread_mutex_lock(&e->mu);
    if (e->n < GW_MAX_EVENTS) {
        e->type[e->n] = ev->type;
        e->value[e->n] = ev->value;
        snprintf(e->provider[e->n], sizeof e->provider[0], "%s", ev->provider);
        e->n++;
    }
    pthread_mutex_unlock(&e->mu);
}

/* How many events of `type` (with `value`, unless value < 0) were seen. */
static inline int gw_count(gw_events *e, th_llm_event_type type, int value)
{
    int n = 0;
    pthread_mutex_lock(&e->mu);
    for (int i = 0; i < e->n; i++)
        if (e->type[i] == type && (value < 0 || e->value[i] == value))
            n++;
    pthread_mutex_unlock(&e->mu);
    return n;
}

static inline th_llm_gateway *gw_new(gw_events *ev)
{
    th_llm_gateway_options o;
    th_llm_gateway_options_init(&o);
    o.seed = 42;
    if (ev) {
        memset(ev, 0, sizeof *ev);
        pthread_mutex_init(&ev->mu, NULL);
        o.on_event = gw_on_event;
        o.ud = ev;
    }
    th_error err;
    th_llm_gateway *gw = th_llm_gateway_new(&o, &err);
    assert_non_null(gw);
    return gw;
}

/* Provider options for `name` speaking `fmt` at the fakellm (or the mock
 * when f is NULL), with fast retries and no health checks. */
static inline th_llm_provider_options gw_opts(const char *name, th_llm_format fmt, fakellm *f)
{
    th_llm_provider_options o;
    th_llm_provider_options_init(&o);
    o.name = name;
    o.format = fmt;
    o.base_url = f ? fakellm_url(f, fmt) : NULL;
    o.api_key = f ? "sk-test-secret" : NULL;
    o.retry_initial_ms = 10;
    o.retry_max_ms = 50;
    o.health_interval_ms = 0;
    o.timeout_ms = 10000;
    o.mock_token_delay_ms = 0;
    return o;
}

static inline void gw_add(th_llm_gateway *gw, const th_llm_provider_options *o)
{
    th_error err;
    int rc = th_llm_gateway_add_provider(gw, o, &err);
    if (rc != 0)
        fail_msg("add_provider %s: %s (%s)", o->name, err.message, err.field);
}

/* A request of one user message to the providers named in `targets`. */
typedef struct gw_req {
    th_llm_target t[4];
    th_llm_message m;
    th_llm_request r;
} gw_req;

static inline void gw_req_init(gw_req *q, const char *text, const char *p1, const char *p2)
{
    memset(q, 0, sizeof *q);
    q->t[0].provider = p1;
    q->t[1].provider = p2;
    q->m.role = TH_LLM_USER;
    q->m.content = text;
    q->r.targets = q->t;
    q->r.ntargets = p2 ? 2 : 1;
    q->r.messages = &q->m;
    q->r.nmessages = 1;
    q->r.temperature = -1;
    q->r.max_tokens = 64;
}

static inline th_llm_provider_status gw_status(th_llm_gateway *gw, const char *name)
{
    th_llm_provider_status s[8];
    int n = th_llm_providers(gw, s, 8);
    for (int i = 0; i < n && i < 8; i++)
        if (strcmp(s[i].name, name) == 0)
            return s[i];
    fail_msg("no provider %s", name);
    return s[0];
}

#endif
