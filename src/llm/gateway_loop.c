/*
 * The gateway thread: takes new calls from the inbox, chooses each call's
 * target (skipping providers whose breaker is open or that are unhealthy),
 * admits it under the provider's concurrency limit and rate buckets or
 * queues it, runs attempts (curl transfers or the mock model), retries with
 * backoff, falls back to the next target, runs health checks, and finally
 * runs done callbacks. It sleeps in epoll_wait (gateway_http.c) until a
 * socket is ready, the next deadline comes, or another thread wakes it.
 *
 * Everything here runs with gw->mu held, except the socket work (whose
 * callbacks touch only their own call), the wait, and done callbacks.
 */
#include "llm/gateway.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"

static int64_t now_ms(void)
{
    return th__mono_ns() / 1000000;
}

th__llm_provider *th__llm_find_provider(th_llm_gateway *gw, const char *name)
{
    for (int i = 0; name && i < gw->nprov; i++)
        if (strcmp(gw->prov[i]->name, name) == 0)
            return gw->prov[i];
    return NULL;
}

th__llm_price *th__llm_find_price(th_llm_gateway *gw, const char *model)
{
    for (size_t i = 0; model && i < gw->nprices; i++)
        if (strcmp(gw->prices[i].model, model) == 0)
            return &gw->prices[i];
    return NULL;
}

static void emit(th_llm_gateway *gw, th_llm_event_type type, const th__llm_provider *p, int value,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void emit(th_llm_gateway *gw, th_llm_event_type type, const th__llm_provider *p, int value,
                 const char *fmt, ...)
{
    if (!gw->on_event)
        return;
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    th_llm_event ev = {.type = type, .provider = p->name, .message = msg, .value = value};
    gw->on_event(&ev, gw->ud);
}

/* ---- token buckets -------------------------------------------------------- */

/* A bucket holds one second's worth of its per-minute rate (at least one
 * token), so traffic is spread over the minute instead of spent in a burst
 * at its start; a call may take the level below zero (its actual usage was
 * larger than estimated), and the debt delays the calls after it. */
double th__llm_bucket_cap(const th__llm_bucket *b)
{
    double cap = b->rate / 60.0;
    return cap < 1 ? 1 : cap;
}

static void bucket_fill(th__llm_bucket *b, int64_t now)
{
    if (b->rate <= 0)
        return;
    if (now > b->at_ms) {
        double cap = th__llm_bucket_cap(b);
        b->level += (double)(now - b->at_ms) * b->rate / 60000.0;
        if (b->level > cap)
            b->level = cap;
    }
    b->at_ms = now;
}

/* Milliseconds until `need` tokens are there (0 = now). A call larger than
 * the bucket waits for a full bucket, so it is never refused forever. */
static int64_t bucket_wait(th__llm_bucket *b, double need, int64_t now)
{
    if (b->rate <= 0)
        return 0;
    bucket_fill(b, now);
    double cap = th__llm_bucket_cap(b);
    if (need > cap)
        need = cap;
    if (b->level >= need)
        return 0;
    return (int64_t)ceil((need - b->level) * 60000.0 / b->rate);
}

/* ---- the breaker ---------------------------------------------------------- */

static void breaker_set(th_llm_gateway *gw, th__llm_provider *p, th_llm_breaker_state s,
                        int64_t now)
{
    if (p->breaker == s)
        return;
    p->breaker = s;
    p->breaker_successes = 0;
    if (s == TH_BREAKER_OPEN)
        p->breaker_opened_ms = now;
    if (s == TH_BREAKER_CLOSED)
        p->breaker_failures = 0;
    emit(gw, TH_LLM_EV_BREAKER, p, (int)s, "circuit breaker %s", th_llm_breaker_name(s));
}

/* Whether the breaker lets a call through now; a half-open breaker lets one
 * probe through at a time (*probe set). */
static int breaker_admit(th_llm_gateway *gw, th__llm_provider *p, int64_t now, int *probe)
{
    *probe = 0;
    if (p->breaker == TH_BREAKER_OPEN) {
        if (now - p->breaker_opened_ms < p->o.breaker_cooldown_ms)
            return 0;
        breaker_set(gw, p, TH_BREAKER_HALF_OPEN, now);
    }
    if (p->breaker == TH_BREAKER_HALF_OPEN) {
        if (p->probes > 0)
            return 0;
        p->probes++;
        *probe = 1;
    }
    return 1;
}

/* Gives back the half-open probe the call held, if any. */
static void drop_probe(struct th_llm_call *c)
{
    if (c->probe) {
        c->p->probes--;
        c->probe = 0;
    }
}

static void breaker_result(th_llm_gateway *gw, struct th_llm_call *c, int ok, int counts,
                           int64_t now)
{
    th__llm_provider *p = c->p;
    int probe = c->probe;
    drop_probe(c);
    /* While half-open only the probes' outcomes count: calls admitted
     * before the breaker opened say nothing about the provider now. */
    if (p->breaker == TH_BREAKER_HALF_OPEN && !probe)
        return;
    if (ok) {
        if (p->breaker == TH_BREAKER_HALF_OPEN) {
            if (++p->breaker_successes >= p->o.breaker_successes)
                breaker_set(gw, p, TH_BREAKER_CLOSED, now);
        } else {
            p->breaker_failures = 0;
        }
        return;
    }
    if (!counts)
        return;
    p->breaker_failures++;
    if (p->breaker == TH_BREAKER_HALF_OPEN ||
        (p->breaker == TH_BREAKER_CLOSED && p->breaker_failures >= p->o.breaker_failures))
        breaker_set(gw, p, TH_BREAKER_OPEN, now);
}

/* ---- lists and timers ------------------------------------------------------ */

static void all_remove(th_llm_gateway *gw, struct th_llm_call *c)
{
    if (c->aprev)
        c->aprev->anext = c->anext;
    else if (gw->all == c)
        gw->all = c->anext;
    if (c->anext)
        c->anext->aprev = c->aprev;
    c->anext = c->aprev = NULL;
}

static void all_add(th_llm_gateway *gw, struct th_llm_call *c)
{
    c->aprev = NULL;
    c->anext = gw->all;
    if (gw->all)
        gw->all->aprev = c;
    gw->all = c;
}

static void timer_set(th_llm_gateway *gw, struct th_llm_call *c, int64_t at, int action)
{
    c->wake_ms = at;
    c->timer_action = action;
    c->state = TH__CALL_TIMER;
    /* Room for every live call was reserved when it was handed over. */
    th__heap_push(&gw->timers, c);
}

static void release_slot(struct th_llm_call *c)
{
    if (c->holds_slot) {
        c->p->in_flight--;
        c->holds_slot = 0;
    }
}

static void dispatch(th_llm_gateway *gw, th__llm_provider *p, int64_t now);

/* Gives back the tokens an attempt took from its provider's bucket when no
 * usage will be charged for it (it failed or was cancelled). */
static void refund_tokens(struct th_llm_call *c)
{
    if (c->tok_charged > 0 && c->p) {
        th__llm_bucket *b = &c->p->tok_bucket;
        b->level += c->tok_charged;
        if (b->level > th__llm_bucket_cap(b))
            b->level = th__llm_bucket_cap(b);
    }
    c->tok_charged = 0;
}

/* Ends a call: takes it out of wherever it waits and queues its done
 * callback. A health check updates its provider and is freed here. */
static void finish(th_llm_gateway *gw, struct th_llm_call *c, int rc, const th_error *err)
{
    th__llm_provider *p = c->p;
    if (c->state == TH__CALL_TIMER && c->heap_idx != TH_HEAP_NONE)
        th__heap_remove(&gw->timers, c);
    if (c->state == TH__CALL_QUEUED && p)
        th__llm_list_remove(&p->queue, c);
    th__llm_transfer_stop(gw, c);
    release_slot(c);
    refund_tokens(c);
    th__llm_budget_release(gw, c);
    drop_probe(c);
    if (c->on_cancel_list) {
        struct th_llm_call **pp = &gw->cancels;
        while (*pp && *pp != c)
            pp = &(*pp)->cnext;
        if (*pp)
            *pp = c->cnext;
        c->on_cancel_list = 0;
    }
    all_remove(gw, c);
    gw->live--;
    c->state = TH__CALL_ENDED;
    if (c->kind == TH__LLM_HEALTH) {
        int64_t now = now_ms();
        p->health_running = 0;
        p->next_health_ms = now + p->o.health_interval_ms;
        p->last_health_wall = th__wall_ms();
        if (rc == 0) {
            p->health_failures = 0;
            if (!p->healthy) {
                p->healthy = 1;
                emit(gw, TH_LLM_EV_HEALTH, p, 1, "healthy again");
            }
        } else if (++p->health_failures >= p->o.health_failures && p->healthy) {
            p->healthy = 0;
            emit(gw, TH_LLM_EV_HEALTH, p, 0, "unhealthy after %d failed checks: %s",
                 p->health_failures, err ? err->message : "");
        }
        th__llm_call_destroy(c);
        return;
    }
    c->rc = rc;
    if (rc < 0) {
        if (err)
            c->err = *err;
        else
            th__err(&c->err, rc, "", "%s", th_strerror(rc));
        th_llm_response_free(&c->resp);
        memset(&c->resp, 0, sizeof c->resp);
        th__free(c->vectors);
        c->vectors = NULL;
    } else {
        th__err_clear(&c->err);
    }
    th_llm_response *r = &c->resp;
    r->attempts = c->attempts;
    r->latency_ms = (th__mono_ns() - c->start_ns) / 1000000;
    r->first_token_ms = c->first_ns ? (c->first_ns - c->start_ns) / 1000000 : -1;
    th__llm_list_push(&gw->finished, c);
}

/* ---- choosing a target and admitting ------------------------------------------ */

/* Puts the call on the first target from c->ti on that can take it, or ends
 * it with the last reason a target could not. A target is skipped when its
 * provider is unhealthy, its breaker refuses, a budget the call is subject
 * to would be passed on it, its queue is full, or — when another target is
 * left — a rate-limit hold of more than a second keeps it back. */
static void begin_target(th_llm_gateway *gw, struct th_llm_call *c, int64_t now)
{
    th__llm_budget_release(gw, c);
    for (; c->ti < c->req.ntargets; c->ti++) {
        const th_llm_target *t = &c->req.targets[c->ti];
        th__llm_provider *p = th__llm_find_provider(gw, t->provider);
        int last = c->ti + 1 == c->req.ntargets;
        c->p = p;
        if (!p->healthy) {
            th__err(&c->last_err, TH_EUNAVAIL, "", "provider %s is unhealthy", p->name);
            continue;
        }
        if (!last && p->blocked_until_ms > now + 1000) {
            th__err(&c->last_err, TH_EBUSY, "", "provider %s is held back by its rate limits",
                    p->name);
            continue;
        }
        if (p->queue.n >= p->o.max_queue) {
            th__err(&c->last_err, TH_EBUSY, "", "provider %s: %zu requests already waiting",
                    p->name, p->queue.n);
            continue;
        }
        const char *m = t->model && *t->model ? t->model : NULL;
        c->model = m ? m : c->kind == TH__LLM_EMBED ? p->embed_model : p->model;
        if (th__llm_budget_reserve(gw, c, p, th__llm_worst_cost(gw, c, c->model), &c->last_err) < 0)
            continue;
        if (!breaker_admit(gw, p, now, &c->probe)) {
            th__llm_budget_release(gw, c);
            th__err(&c->last_err, TH_EUNAVAIL, "", "provider %s: circuit breaker is %s", p->name,
                    th_llm_breaker_name(p->breaker));
            continue;
        }
        c->tries = 0;
        c->state = TH__CALL_QUEUED;
        th__llm_list_push(&p->queue, c);
        dispatch(gw, p, now);
        return;
    }
    c->p = c->req.ntargets ? th__llm_find_provider(gw, c->req.targets[c->req.ntargets - 1].provider)
                           : c->p;
    finish(gw, c, c->last_err.code ? c->last_err.code : TH_EUNAVAIL, &c->last_err);
}

/* A queued call whose provider can no longer take it (its breaker opened or
 * it turned unhealthy while the call waited) moves on to the next target. */
static void reroute(th_llm_gateway *gw, struct th_llm_call *c, int64_t now)
{
    th__llm_provider *p = c->p;
    th__llm_list_remove(&p->queue, c);
    if (!p->healthy)
        th__err(&c->last_err, TH_EUNAVAIL, "", "provider %s is unhealthy", p->name);
    else
        th__err(&c->last_err, TH_EUNAVAIL, "", "provider %s: circuit breaker is %s", p->name,
                th_llm_breaker_name(p->breaker));
    c->ti++;
    c->state = TH__CALL_INBOX;
    begin_target(gw, c, now);
}

static void attempt_start(th_llm_gateway *gw, struct th_llm_call *c, int64_t now);

/* Starts the queued calls of `p` while it has free slots, its rate buckets
 * allow and no hold keeps it back. Only a breaker probe passes a breaker
 * that is not closed. */
static void dispatch(th_llm_gateway *gw, th__llm_provider *p, int64_t now)
{
    while (p->queue.head && p->in_flight < p->o.max_concurrent) {
        struct th_llm_call *c = p->queue.head;
        if (!p->healthy || (p->breaker != TH_BREAKER_CLOSED && !c->probe)) {
            reroute(gw, c, now);
            continue;
        }
        if (now < p->blocked_until_ms)
            return;
        /* A call larger than the bucket is charged a full bucket now and
         * the rest of its actual usage after the answer. */
        double charge = (double)c->est_tokens;
        if (p->tok_bucket.rate > 0 && charge > th__llm_bucket_cap(&p->tok_bucket))
            charge = th__llm_bucket_cap(&p->tok_bucket);
        int64_t w1 = bucket_wait(&p->req_bucket, 1, now);
        int64_t w2 = bucket_wait(&p->tok_bucket, charge, now);
        int64_t w = w1 > w2 ? w1 : w2;
        if (w > 0) {
            p->blocked_until_ms = now + w;
            return;
        }
        if (p->req_bucket.rate > 0)
            p->req_bucket.level -= 1;
        if (p->tok_bucket.rate > 0) {
            p->tok_bucket.level -= charge;
            c->tok_charged = charge;
        }
        th__llm_list_remove(&p->queue, c);
        p->in_flight++;
        c->holds_slot = 1;
        attempt_start(gw, c, now);
    }
}

static void attempt_start(th_llm_gateway *gw, struct th_llm_call *c, int64_t now)
{
    th__llm_provider *p = c->p;
    c->tries++;
    c->attempts++;
    p->requests++;
    c->state = TH__CALL_RUNNING;
    th_error err = {0};
    if (p->o.format == TH_LLM_MOCK) {
        /* The mock answers on a timer, one streamed token per tick, so it
         * behaves like a provider: concurrency, queueing and cancellation
         * all apply. */
        th_llm_response_free(&c->resp);
        memset(&c->resp, 0, sizeof c->resp);
        c->mock_off = 0;
        th__llm_wire_req w = {.format = TH_LLM_MOCK, .model = c->model, .req = &c->req};
        int rc = c->kind == TH__LLM_EMBED ? th__mock_embed((const char *const *)c->texts, c->ntexts,
                                                           &c->vectors, &c->dim, &c->embed_usage)
                                          : th__mock_chat(&w, &c->resp, &err);
        if (rc < 0) {
            th__err(&err, rc, "", "out of memory");
            finish(gw, c, rc, &err);
            return;
        }
        timer_set(gw, c, now, TH__TIMER_MOCK);
        return;
    }
    int rc = th__llm_transfer_start(gw, c, &err);
    if (rc < 0) {
        /* The request cannot be expressed (or memory ran out): the caller's
         * fault or ours, never the provider's, so no retry and no fallback.
         * finish() gives back the slot and any probe. */
        finish(gw, c, rc, &err);
    }
}

static int64_t backoff_ms(th_llm_gateway *gw, const th__llm_provider *p, int tries)
{
    double d = (double)p->o.retry_initial_ms;
    for (int i = 1; i < tries && d < (double)p->o.retry_max_ms; i++)
        d *= 2;
    if (d > (double)p->o.retry_max_ms)
        d = (double)p->o.retry_max_ms;
    d *= 1.0 + p->o.retry_jitter * (2.0 * th__rng_unit(&gw->rng) - 1.0);
    return d < 0 ? 0 : (int64_t)d;
}

double th__llm_worst_cost(th_llm_gateway *gw, const struct th_llm_call *c, const char *model)
{
    th__llm_price *pr = th__llm_find_price(gw, model);
    if (!pr)
        return 0;
    int64_t out = c->kind == TH__LLM_EMBED ? 0 : c->req.max_tokens > 0 ? c->req.max_tokens : 1024;
    int64_t in = c->est_tokens > out ? c->est_tokens - out : 0;
    return ((double)in * pr->in_per_m + (double)out * pr->out_per_m) / 1e6;
}

/* Records usage and cost of a successful attempt. */
static void account(th_llm_gateway *gw, struct th_llm_call *c)
{
    th__llm_provider *p = c->p;
    th_llm_usage u = c->kind == TH__LLM_EMBED ? c->embed_usage : c->resp.usage;
    th__llm_price *pr = th__llm_find_price(gw, c->model);
    double cost =
        pr ? ((double)u.input_tokens * pr->in_per_m + (double)u.output_tokens * pr->out_per_m) / 1e6
           : 0;
    p->input_tokens += u.input_tokens;
    p->output_tokens += u.output_tokens;
    p->cost_usd += cost;
    if (p->tok_bucket.rate > 0) {
        p->tok_bucket.level -= (double)(u.input_tokens + u.output_tokens) - c->tok_charged;
        c->tok_charged = 0;
        /* At most a minute of debt, however large one answer was. */
        if (p->tok_bucket.level < -p->tok_bucket.rate)
            p->tok_bucket.level = -p->tok_bucket.rate;
    }
    c->resp.usage = u;
    c->resp.cost_usd = cost;
    th__llm_spend_record(gw, p, c->model, c->req.agent, &u, cost);
    snprintf(c->resp.provider, sizeof c->resp.provider, "%s", p->name);
    snprintf(c->resp.model, sizeof c->resp.model, "%s", c->model ? c->model : "");
}

/* An attempt ended: success ends the call; a failure is retried after a
 * backoff, falls back to the next target, or ends the call. */
static void attempt_end(th_llm_gateway *gw, struct th_llm_call *c, int rc, int retriable,
                        int counts, const th_error *err, int64_t now)
{
    th__llm_provider *p = c->p;
    release_slot(c);
    const th__llm_limits *l = &c->limits;
    /* A 429's Retry-After, or a spent rate-limit window, holds back every
     * call to this provider, not only this one. */
    int64_t hold = l->retry_after_ms;
    if (hold < 0 && l->requests_remaining == 0 && l->requests_reset_ms > 0)
        hold = l->requests_reset_ms;
    if (hold < 0 && l->tokens_remaining == 0 && l->tokens_reset_ms > 0)
        hold = l->tokens_reset_ms;
    /* A provider asking for hours would hold every queued call that long:
     * no hold lasts longer than the longest backoff. */
    if (hold > p->o.retry_max_ms)
        hold = p->o.retry_max_ms;
    if (hold > 0 && now + hold > p->blocked_until_ms)
        p->blocked_until_ms = now + hold;
    if (rc == 0) {
        p->successes++;
        breaker_result(gw, c, 1, 0, now);
        account(gw, c);
        finish(gw, c, 0, NULL);
        dispatch(gw, p, now);
        return;
    }
    p->failures++;
    refund_tokens(c);
    c->last_err = *err;
    c->last_rc = rc;
    if (c->status == 429) {
        p->rate_limited++;
        emit(gw, TH_LLM_EV_RATE_LIMITED, p, (int)(l->retry_after_ms < 0 ? 0 : l->retry_after_ms),
             "rate limited (HTTP 429)");
    }
    breaker_result(gw, c, 0, counts, now);
    if (atomic_load(&c->cancel)) {
        finish(gw, c, TH_ECANCELED, NULL);
    } else if (retriable && !c->streamed && c->tries <= p->o.max_retries) {
        int64_t d = backoff_ms(gw, p, c->tries);
        int64_t ra = l->retry_after_ms > p->o.retry_max_ms ? p->o.retry_max_ms : l->retry_after_ms;
        if (ra > d)
            d = ra;
        p->retries++;
        emit(gw, TH_LLM_EV_RETRY, p, c->tries, "attempt %d failed, retrying in %lld ms: %s",
             c->tries, (long long)d, err->message);
        timer_set(gw, c, now + d, TH__TIMER_REQUEUE);
    } else if (!c->streamed && c->ti + 1 < c->req.ntargets && rc != TH_ENOMEM) {
        emit(gw, TH_LLM_EV_FALLBACK, p, (int)c->ti + 1, "falling back to %s: %s",
             c->req.targets[c->ti + 1].provider, err->message);
        c->ti++;
        c->state = TH__CALL_INBOX;
        begin_target(gw, c, now);
    } else {
        finish(gw, c, rc, err);
    }
    dispatch(gw, p, now);
}

static void on_timer(th_llm_gateway *gw, struct th_llm_call *c, int64_t now)
{
    if (c->timer_action == TH__TIMER_MOCK) {
        size_t n = c->req.stream && c->kind == TH__LLM_CHAT
                       ? th__mock_chunk(c->resp.text, c->mock_off)
                       : 0;
        if (n) {
            if (!c->first_ns)
                c->first_ns = th__mono_ns();
            c->streamed |= c->want_deltas;
            th__llm_call_push_delta(c, c->resp.text + c->mock_off, n);
            c->mock_off += n;
            if (c->resp.text[c->mock_off]) {
                timer_set(gw, c, now + c->p->o.mock_token_delay_ms, TH__TIMER_MOCK);
                return;
            }
        }
        c->state = TH__CALL_RUNNING;
        attempt_end(gw, c, 0, 0, 0, NULL, now);
        return;
    }
    /* A retry after its backoff: back through the breaker, to the head of
     * its provider's queue. */
    th__llm_provider *p = c->p;
    if (!breaker_admit(gw, p, now, &c->probe)) {
        th__err(&c->last_err, TH_EUNAVAIL, "", "provider %s: circuit breaker is %s", p->name,
                th_llm_breaker_name(p->breaker));
        c->ti++;
        c->state = TH__CALL_INBOX;
        begin_target(gw, c, now);
        return;
    }
    c->state = TH__CALL_QUEUED;
    th__llm_list_push_front(&p->queue, c);
    dispatch(gw, p, now);
}

static void transfer_done(th_llm_gateway *gw, struct th_llm_call *c, CURLcode cc, int64_t now)
{
    int retriable = 0, counts = 0;
    th_error err = {0};
    if (c->stream && th__llm_stream_started(c->stream) && !c->first_ns)
        c->first_ns = th__mono_ns();
    int rc = th__llm_transfer_outcome(c, cc, &retriable, &counts, &err);
    th__llm_transfer_stop(gw, c);
    if (c->kind == TH__LLM_HEALTH) {
        finish(gw, c, rc, &err);
        return;
    }
    attempt_end(gw, c, rc, retriable, counts, &err, now);
}

static void start_health(th_llm_gateway *gw, th__llm_provider *p, int64_t now)
{
    p->next_health_ms = now + p->o.health_interval_ms;
    struct th_llm_call *c = th__llm_call_new(gw, TH__LLM_HEALTH, NULL, NULL);
    if (!c)
        return; /* tried again at the next interval */
    c->p = p;
    c->state = TH__CALL_RUNNING;
    th_error err;
    if (th__heap_reserve(&gw->timers, gw->live + 1) < 0 ||
        th__llm_transfer_start(gw, c, &err) < 0) {
        th__llm_call_destroy(c);
        return;
    }
    p->health_running = 1;
    all_add(gw, c);
    gw->live++;
}

/* Runs done callbacks and wakes waiters, without gw->mu: a callback may
 * start another call. */
static void run_finished(th_llm_gateway *gw)
{
    while (gw->finished.head) {
        struct th_llm_call *c = th__llm_list_pop(&gw->finished);
        pthread_mutex_unlock(&gw->mu);
        if (c->done) {
            c->in_done = 1;
            c->done(c, c->rc, c->ud);
            c->in_done = 0;
        }
        if (c->free_after_done) {
            th__llm_call_destroy(c);
        } else {
            pthread_mutex_lock(&c->mu);
            c->ended = 1;
            pthread_cond_broadcast(&c->cv);
            pthread_mutex_unlock(&c->mu);
        }
        pthread_mutex_lock(&gw->mu);
    }
}

void th__llm_begin_call(th_llm_gateway *gw, struct th_llm_call *c, int64_t now)
{
    all_add(gw, c);
    if (atomic_load(&c->cancel)) {
        finish(gw, c, TH_ECANCELED, NULL);
        return;
    }
    begin_target(gw, c, now);
}

/* The next deadline in ms from now, at most 1 s. */
static long next_wait(th_llm_gateway *gw, int64_t now)
{
    int64_t next = now + 1000;
    struct th_llm_call *t = th__heap_top(&gw->timers);
    if (t && t->wake_ms < next)
        next = t->wake_ms;
    for (int i = 0; i < gw->nprov; i++) {
        th__llm_provider *p = gw->prov[i];
        if (p->queue.head && p->in_flight < p->o.max_concurrent && p->blocked_until_ms < next)
            next = p->blocked_until_ms;
        if (p->o.format != TH_LLM_MOCK && p->o.health_interval_ms > 0 && !p->health_running &&
            p->next_health_ms < next)
            next = p->next_health_ms;
    }
    return next <= now ? 0 : (long)(next - now);
}

void *th__llm_loop(void *arg)
{
    th_llm_gateway *gw = arg;
    pthread_mutex_lock(&gw->mu);
    while (!gw->stop) {
        int64_t now = now_ms();
        struct th_llm_call *c;
        while ((c = th__llm_list_pop(&gw->inbox)))
            th__llm_begin_call(gw, c, now);
        while ((c = gw->cancels)) {
            gw->cancels = c->cnext;
            c->on_cancel_list = 0;
            if (c->state != TH__CALL_ENDED)
                finish(gw, c, TH_ECANCELED, NULL);
        }
        while ((c = th__heap_top(&gw->timers)) && c->wake_ms <= now) {
            th__heap_remove(&gw->timers, c);
            on_timer(gw, c, now);
        }
        for (int i = 0; i < gw->nprov; i++) {
            th__llm_provider *p = gw->prov[i];
            if (p->o.format != TH_LLM_MOCK && p->o.health_interval_ms > 0 && !p->health_running &&
                now >= p->next_health_ms)
                start_health(gw, p, now);
            dispatch(gw, p, now);
        }
        run_finished(gw);

        if (gw->stop)
            break;
        long wait = gw->inbox.head || gw->cancels ? 0 : next_wait(gw, now);
        pthread_mutex_unlock(&gw->mu);
        /* Transfers move here, without the lock: only the sockets that are
         * ready (and curl's own timeouts) are worked on. */
        th__llm_io_run(gw, wait);
        pthread_mutex_lock(&gw->mu);
        now = now_ms();
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(gw->multi, &left))) {
            if (m->msg != CURLMSG_DONE)
                continue;
            void *priv = NULL;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
            transfer_done(gw, priv, m->data.result, now);
        }
        run_finished(gw);
    }
    /* Stopping: every call still alive ends with TH_ECLOSED. */
    th_error closed;
    th__err(&closed, TH_ECLOSED, "", "the LLM gateway is shutting down");
    struct th_llm_call *c;
    while ((c = th__llm_list_pop(&gw->inbox)))
        all_add(gw, c);
    while (gw->all)
        finish(gw, gw->all, TH_ECLOSED, &closed);
    run_finished(gw);
    pthread_mutex_unlock(&gw->mu);
    return NULL;
}
