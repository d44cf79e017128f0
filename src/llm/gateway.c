/*
 * The LLM gateway's public face (include/taskhive/llm.h): making and freeing
 * a gateway, providers and their validation, the price table, handing calls
 * to the gateway thread, waiting for them, embeddings and status snapshots.
 * The gateway thread itself is in gateway_loop.c.
 */
#include "llm/gateway.h"

#include <ctype.h>
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"

/* Prices in USD per million input / output tokens, as published by the
 * providers (late 2024). The mock model's price is made up, so that cost
 * accounting can be seen and tested offline. */
static const struct {
    const char *model;
    double in, out;
} builtin_prices[] = {
    {"mock-1", 1.00, 2.00},
    {"gpt-4o", 2.50, 10.00},
    {"gpt-4o-mini", 0.15, 0.60},
    {"gpt-4.1", 2.00, 8.00},
    {"gpt-4.1-mini", 0.40, 1.60},
    {"o3-mini", 1.10, 4.40},
    {"text-embedding-3-small", 0.02, 0},
    {"text-embedding-3-large", 0.13, 0},
    {"claude-3-5-haiku-latest", 0.80, 4.00},
    {"claude-3-5-sonnet-latest", 3.00, 15.00},
    {"claude-3-7-sonnet-latest", 3.00, 15.00},
    {"claude-3-opus-latest", 15.00, 75.00},
    {"deepseek-chat", 0.27, 1.10},
};

void th_llm_provider_options_init(th_llm_provider_options *o)
{
    *o = (th_llm_provider_options){
        .max_queue = 10000,
        .timeout_ms = 120000,
        .connect_timeout_ms = 10000,
        .max_retries = 3,
        .retry_initial_ms = 500,
        .retry_max_ms = 30000,
        .retry_jitter = 0.2,
        .breaker_failures = 5,
        .breaker_cooldown_ms = 30000,
        .breaker_successes = 2,
        .health_interval_ms = 30000,
        .health_failures = 3,
        .mock_token_delay_ms = 2,
    };
}

void th_llm_gateway_options_init(th_llm_gateway_options *o)
{
    *o = (th_llm_gateway_options){0};
}

static void provider_free(th__llm_provider *p)
{
    if (!p)
        return;
    th__free(p->name);
    th__free(p->base_url);
    if (p->api_key)
        sodium_memzero(p->api_key, strlen(p->api_key));
    th__free(p->api_key);
    th__free(p->model);
    th__free(p->embed_model);
    th__free(p->anthropic_version);
    th__free(p->key_name);
    th__free(p);
}

static int timer_less(const void *a, const void *b)
{
    return ((const struct th_llm_call *)a)->wake_ms < ((const struct th_llm_call *)b)->wake_ms;
}

th_llm_gateway *th_llm_gateway_new(const th_llm_gateway_options *opts, th_error *err)
{
    th_llm_gateway_options o;
    th_llm_gateway_options_init(&o);
    if (opts)
        o = *opts;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        th__err(err, TH_EIO, "", "libcurl failed to initialise");
        return NULL;
    }
    th_llm_gateway *gw = th__calloc(1, sizeof *gw);
    if (!gw)
        goto nomem;
    gw->epfd = gw->wakefd = -1;
    gw->on_event = o.on_event;
    gw->ud = o.ud;
    th__rng_seed(&gw->rng, o.seed);
    th__heap_init(&gw->timers, timer_less, offsetof(struct th_llm_call, heap_idx));
    for (size_t i = 0; i < sizeof builtin_prices / sizeof builtin_prices[0]; i++)
        if (th_llm_set_price(gw, builtin_prices[i].model, builtin_prices[i].in,
                             builtin_prices[i].out) < 0)
            goto nomem;
    if (!(gw->multi = curl_multi_init()) || th__llm_io_init(gw) < 0)
        goto nomem;
    if (pthread_mutex_init(&gw->mu, NULL) != 0)
        goto nomem;
    if (o.usage_path && th__llm_spend_open(gw, o.usage_path, err) < 0) {
        pthread_mutex_destroy(&gw->mu);
        goto fail;
    }
    if (pthread_create(&gw->thread, NULL, th__llm_loop, gw) != 0) {
        th__llm_spend_close(gw);
        pthread_mutex_destroy(&gw->mu);
        goto nomem;
    }
    gw->thread_started = 1;
    return gw;
nomem:
    th__err(err, TH_ENOMEM, "", "out of memory");
fail:
    if (gw) {
        th__llm_spend_close(gw);
        if (gw->multi)
            curl_multi_cleanup(gw->multi);
        th__llm_io_close(gw);
        for (size_t i = 0; i < gw->nprices; i++)
            th__free(gw->prices[i].model);
        th__free(gw->prices);
        th__heap_free(&gw->timers);
        th__free(gw);
    }
    curl_global_cleanup();
    return NULL;
}

void th_llm_gateway_free(th_llm_gateway *gw)
{
    if (!gw)
        return;
    pthread_mutex_lock(&gw->mu);
    gw->stop = 1;
    pthread_mutex_unlock(&gw->mu);
    th__llm_io_wake(gw);
    pthread_join(gw->thread, NULL);
    th__llm_spend_close(gw);
    curl_multi_cleanup(gw->multi);
    th__llm_io_close(gw);
    for (int i = 0; i < gw->nprov; i++)
        provider_free(gw->prov[i]);
    for (size_t i = 0; i < gw->nprices; i++)
        th__free(gw->prices[i].model);
    th__free(gw->prices);
    th__heap_free(&gw->timers);
    pthread_mutex_destroy(&gw->mu);
    th__free(gw);
    curl_global_cleanup();
}

/* ---- providers ------------------------------------------------------------- */

static int check_name(const char *name, th_error *err)
{
    if (!name || !*name)
        return th__err(err, TH_EINVAL, "name", "must not be empty");
    if (strlen(name) > TH__LLM_NAME_MAX)
        return th__err(err, TH_EINVAL, "name", "longer than %d bytes", TH__LLM_NAME_MAX);
    for (const char *p = name; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '.' && *p != '-')
            return th__err(err, TH_EINVAL, "name", "may only contain A-Z a-z 0-9 _ . -");
    return 0;
}

static int check_options(const th_llm_provider_options *o, th_error *err)
{
    int rc = check_name(o->name, err);
    if (rc < 0)
        return rc;
    if (o->format < TH_LLM_MOCK || o->format > TH_LLM_OLLAMA)
        return th__err(err, TH_EINVAL, "format", "must be mock, openai, anthropic or ollama");
    if (o->model && strlen(o->model) > 127)
        return th__err(err, TH_EINVAL, "model", "longer than 127 bytes");
    if (o->embed_model && strlen(o->embed_model) > 127)
        return th__err(err, TH_EINVAL, "embed_model", "longer than 127 bytes");
    if (o->key_name && strlen(o->key_name) > 63)
        return th__err(err, TH_EINVAL, "key_name", "longer than 63 bytes");
    if (o->base_url && strncmp(o->base_url, "http://", 7) != 0 &&
        strncmp(o->base_url, "https://", 8) != 0)
        return th__err(err, TH_EINVAL, "base_url", "must start with http:// or https://");
    struct {
        const char *field;
        double v, lo, hi;
    } r[] = {
        {"max_concurrent", o->max_concurrent, 0, 100000},
        {"max_queue", (double)o->max_queue, 1, 10000000},
        {"timeout_ms", (double)o->timeout_ms, 1, 86400000},
        {"connect_timeout_ms", (double)o->connect_timeout_ms, 1, 600000},
        {"max_retries", o->max_retries, 0, 100},
        {"retry_initial_ms", (double)o->retry_initial_ms, 0, 3600000},
        {"retry_max_ms", (double)o->retry_max_ms, (double)o->retry_initial_ms, 86400000},
        {"retry_jitter", o->retry_jitter, 0, 1},
        {"requests_per_min", o->requests_per_min, 0, 1e9},
        {"tokens_per_min", o->tokens_per_min, 0, 1e12},
        {"breaker_failures", o->breaker_failures, 1, 1000000},
        {"breaker_cooldown_ms", (double)o->breaker_cooldown_ms, 0, 86400000},
        {"breaker_successes", o->breaker_successes, 1, 1000000},
        {"health_interval_ms", (double)o->health_interval_ms, 0, 86400000},
        {"health_failures", o->health_failures, 1, 1000000},
        {"mock_token_delay_ms", (double)o->mock_token_delay_ms, 0, 60000},
    };
    for (size_t i = 0; i < sizeof r / sizeof r[0]; i++)
        if (!(r[i].v >= r[i].lo && r[i].v <= r[i].hi) || isnan(r[i].v))
            return th__err(err, TH_EINVAL, r[i].field, "must be between %g and %g", r[i].lo,
                           r[i].hi);
    return 0;
}

int th_llm_gateway_add_provider(th_llm_gateway *gw, const th_llm_provider_options *o, th_error *err)
{
    int rc = check_options(o, err);
    if (rc < 0)
        return rc;
    th__llm_provider *p = th__calloc(1, sizeof *p);
    if (!p)
        goto nomem;
    p->o = *o;
    const char *base = o->base_url ? o->base_url : th__llm_default_base_url(o->format);
    size_t blen = strlen(base);
    while (blen > 0 && base[blen - 1] == '/')
        blen--;
    const char *model = o->model && *o->model ? o->model : th__llm_default_model(o->format);
    const char *emodel = o->embed_model && *o->embed_model ? o->embed_model : model;
    if (o->format == TH_LLM_OPENAI && !(o->embed_model && *o->embed_model))
        emodel = "text-embedding-3-small";
    if (!(p->name = th__strdup(o->name)) || !(p->base_url = th__strndup(base, blen)) ||
        !(p->model = th__strdup(model)) || !(p->embed_model = th__strdup(emodel)) ||
        !(p->anthropic_version =
              th__strdup(o->anthropic_version ? o->anthropic_version : "2023-06-01")) ||
        !(p->key_name = th__strdup(o->key_name && *o->key_name ? o->key_name : o->name)) ||
        (o->api_key && *o->api_key && !(p->api_key = th__strdup(o->api_key))))
        goto nomem;
    /* The copies replace the caller's pointers, which may not outlive this
     * call; the key stays out of p->o so no snapshot can carry it. */
    p->o.name = p->name;
    p->o.base_url = p->base_url;
    p->o.model = p->model;
    p->o.embed_model = p->embed_model;
    p->o.anthropic_version = p->anthropic_version;
    p->o.api_key = NULL;
    p->o.key_name = p->key_name;
    if (p->o.max_concurrent == 0)
        p->o.max_concurrent = o->format == TH_LLM_OLLAMA ? 4 : 64;
    p->healthy = 1;
    int64_t now = th__mono_ns() / 1000000;
    p->req_bucket = (th__llm_bucket){.rate = o->requests_per_min, .at_ms = now};
    p->req_bucket.level = th__llm_bucket_cap(&p->req_bucket);
    p->tok_bucket = (th__llm_bucket){.rate = o->tokens_per_min, .at_ms = now};
    p->tok_bucket.level = th__llm_bucket_cap(&p->tok_bucket);
    p->next_health_ms = now + o->health_interval_ms;

    pthread_mutex_lock(&gw->mu);
    if (th__llm_find_provider(gw, p->name)) {
        pthread_mutex_unlock(&gw->mu);
        provider_free(p);
        return th__err(err, TH_ECONFLICT, "name", "provider %s already exists", o->name);
    }
    if (gw->nprov == TH__LLM_MAX_PROVIDERS) {
        pthread_mutex_unlock(&gw->mu);
        provider_free(p);
        return th__err(err, TH_EINVAL, "name", "at most %d providers", TH__LLM_MAX_PROVIDERS);
    }
    gw->prov[gw->nprov++] = p;
    pthread_mutex_unlock(&gw->mu);
    th__llm_io_wake(gw);
    return 0;
nomem:
    provider_free(p);
    return th__err(err, TH_ENOMEM, "", "out of memory");
}

int th_llm_set_api_key(th_llm_gateway *gw, const char *name, const char *api_key)
{
    char *k = NULL;
    if (api_key && *api_key && !(k = th__strdup(api_key)))
        return TH_ENOMEM;
    pthread_mutex_lock(&gw->mu);
    th__llm_provider *p = th__llm_find_provider(gw, name);
    if (p) {
        if (p->api_key)
            sodium_memzero(p->api_key, strlen(p->api_key));
        th__free(p->api_key);
        p->api_key = k;
        k = NULL;
    }
    pthread_mutex_unlock(&gw->mu);
    if (k)
        sodium_memzero(k, strlen(k));
    th__free(k);
    return p ? 0 : TH_ENOTFOUND;
}

/* ---- prices ----------------------------------------------------------------- */

int th_llm_set_price(th_llm_gateway *gw, const char *model, double input_per_m, double output_per_m)
{
    if (!model || !*model || !(input_per_m >= 0) || !(output_per_m >= 0))
        return TH_EINVAL;
    int locked = gw->thread_started;
    if (locked)
        pthread_mutex_lock(&gw->mu);
    int rc = 0;
    th__llm_price *p = th__llm_find_price(gw, model);
    if (!p) {
        if (gw->nprices == gw->capprices) {
            size_t cap = gw->capprices ? gw->capprices * 2 : 32;
            th__llm_price *np = th__realloc(gw->prices, cap * sizeof *np);
            if (!np) {
                rc = TH_ENOMEM;
                goto out;
            }
            gw->prices = np;
            gw->capprices = cap;
        }
        char *m = th__strdup(model);
        if (!m) {
            rc = TH_ENOMEM;
            goto out;
        }
        p = &gw->prices[gw->nprices++];
        p->model = m;
    }
    p->in_per_m = input_per_m;
    p->out_per_m = output_per_m;
out:
    if (locked)
        pthread_mutex_unlock(&gw->mu);
    return rc;
}

int th_llm_get_price(th_llm_gateway *gw, const char *model, double *input_per_m,
                     double *output_per_m)
{
    pthread_mutex_lock(&gw->mu);
    th__llm_price *p = th__llm_find_price(gw, model);
    if (p) {
        *input_per_m = p->in_per_m;
        *output_per_m = p->out_per_m;
    }
    pthread_mutex_unlock(&gw->mu);
    return p ? 0 : TH_ENOTFOUND;
}

/* ---- calls --------------------------------------------------------------------- */

static int check_request(th_llm_gateway *gw, const th_llm_request *req, th_error *err)
{
    if (!req)
        return th__err(err, TH_EINVAL, "", "no request");
    if (!req->targets || req->ntargets == 0)
        return th__err(err, TH_EINVAL, "targets", "at least one target is needed");
    for (size_t i = 0; i < req->ntargets; i++) {
        if (!th__llm_find_provider(gw, req->targets[i].provider)) {
            th__err(err, TH_ENOTFOUND, "", "unknown provider '%s'",
                    req->targets[i].provider ? req->targets[i].provider : "");
            if (err)
                snprintf(err->field, sizeof err->field, "targets[%zu].provider", i);
            return TH_ENOTFOUND;
        }
        if (req->targets[i].model && strlen(req->targets[i].model) > 127) {
            th__err(err, TH_EINVAL, "", "longer than 127 bytes");
            if (err)
                snprintf(err->field, sizeof err->field, "targets[%zu].model", i);
            return TH_EINVAL;
        }
    }
    if (req->nmessages == 0 || !req->messages)
        return th__err(err, TH_EINVAL, "messages", "at least one message is needed");
    for (size_t i = 0; i < req->nmessages; i++)
        if (req->messages[i].role < TH_LLM_SYSTEM || req->messages[i].role > TH_LLM_TOOL) {
            th__err(err, TH_EINVAL, "", "unknown role");
            if (err)
                snprintf(err->field, sizeof err->field, "messages[%zu].role", i);
            return TH_EINVAL;
        }
    if (req->ntools && !req->tools)
        return th__err(err, TH_EINVAL, "tools", "missing");
    if (req->temperature > 2 || isnan(req->temperature))
        return th__err(err, TH_EINVAL, "temperature", "must be between 0 and 2");
    if (req->max_tokens < 0 || req->max_tokens > 10000000)
        return th__err(err, TH_EINVAL, "max_tokens", "must be between 0 and 10000000");
    if (req->agent && (!*req->agent || strlen(req->agent) > 63))
        return th__err(err, TH_EINVAL, "agent", "must be 1 to 63 bytes");
    return 0;
}

/* Checks the request, then hands `c` to the gateway thread (taking it); on
 * failure frees it. */
static int submit(th_llm_gateway *gw, struct th_llm_call *c, const th_llm_request *check,
                  th_error *err)
{
    pthread_mutex_lock(&gw->mu);
    int rc = check ? check_request(gw, check, err) : 0;
    if (rc == 0 && gw->stop)
        rc = th__err(err, TH_ECLOSED, "", "the LLM gateway is shutting down");
    if (rc == 0 && th__heap_reserve(&gw->timers, gw->live + 1) < 0)
        rc = th__err(err, TH_ENOMEM, "", "out of memory");
    if (rc < 0) {
        pthread_mutex_unlock(&gw->mu);
        th__llm_call_destroy(c);
        return rc;
    }
    if (c->kind == TH__LLM_CHAT)
        c->est_tokens = th__llm_estimate_tokens(&c->req);
    c->state = TH__CALL_INBOX;
    gw->live++;
    th__llm_list_push(&gw->inbox, c);
    pthread_mutex_unlock(&gw->mu);
    th__llm_io_wake(gw);
    return 0;
}

int th_llm_start(th_llm_gateway *gw, const th_llm_request *req, th_llm_done_fn done, void *ud,
                 th_llm_call **out, th_error *err)
{
    *out = NULL;
    if (!req)
        return th__err(err, TH_EINVAL, "", "no request");
    struct th_llm_call *c = th__llm_call_new(gw, TH__LLM_CHAT, req, err);
    if (!c)
        return TH_ENOMEM;
    c->req.on_delta = NULL;
    c->req.cancelled = NULL;
    c->done = done;
    c->ud = ud;
    int rc = submit(gw, c, req, err);
    if (rc == 0)
        *out = c;
    return rc;
}

int th_llm_call_wait(th_llm_call *c, int64_t timeout_ms)
{
    pthread_mutex_lock(&c->mu);
    struct timespec dl = th__mono_deadline(timeout_ms < 0 ? 0 : timeout_ms);
    while (!c->ended) {
        if (timeout_ms < 0)
            pthread_cond_wait(&c->cv, &c->mu);
        else if (pthread_cond_timedwait(&c->cv, &c->mu, &dl) != 0)
            break;
    }
    int ended = c->ended;
    pthread_mutex_unlock(&c->mu);
    return ended ? 0 : TH_ETIMEDOUT;
}

int th_llm_call_result(th_llm_call *c, th_llm_response *out, th_error *err)
{
    if (out)
        memset(out, 0, sizeof *out);
    if (c->rc < 0) {
        if (err)
            *err = c->err;
        return c->rc;
    }
    th__err_clear(err);
    if (out && !c->taken) {
        *out = c->resp;
        memset(&c->resp, 0, sizeof c->resp);
        c->taken = 1;
    }
    return 0;
}

void th_llm_call_cancel(th_llm_call *c)
{
    if (!c)
        return;
    th_llm_gateway *gw = c->gw;
    atomic_store(&c->cancel, 1);
    pthread_mutex_lock(&gw->mu);
    if (c->state != TH__CALL_ENDED && !c->on_cancel_list) {
        c->on_cancel_list = 1;
        c->cnext = gw->cancels;
        gw->cancels = c;
    }
    pthread_mutex_unlock(&gw->mu);
    th__llm_io_wake(gw);
}

void th_llm_call_free(th_llm_call *c)
{
    if (!c)
        return;
    if (c->in_done && pthread_equal(pthread_self(), c->gw->thread)) {
        c->free_after_done = 1;
        return;
    }
    /* The done callback runs before the call counts as ended; a thread it
     * signalled may get here first, and must not free the call under it. */
    pthread_mutex_lock(&c->mu);
    while (!c->ended)
        pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
    th__llm_call_destroy(c);
}

/* Waits for a call handed over by th_llm_chat, passing its deltas to the
 * caller's on_delta and polling its cancelled callback. */
static void wait_sync(struct th_llm_call *c, const th_llm_request *req)
{
    int cancel_sent = 0;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        if (c->deltas.len) {
            th__llm_buf d = c->deltas;
            c->deltas = (th__llm_buf){.max = d.max};
            pthread_mutex_unlock(&c->mu);
            req->on_delta(d.p, d.len, req->ud);
            th__llm_buf_free(&d);
            pthread_mutex_lock(&c->mu);
            continue;
        }
        if (c->ended)
            break;
        if (req->cancelled && !cancel_sent) {
            pthread_mutex_unlock(&c->mu);
            if (req->cancelled(req->ud)) {
                th_llm_call_cancel(c);
                cancel_sent = 1;
            }
            pthread_mutex_lock(&c->mu);
            if (c->ended || c->deltas.len)
                continue;
            struct timespec dl = th__mono_deadline(10);
            pthread_cond_timedwait(&c->cv, &c->mu, &dl);
        } else {
            pthread_cond_wait(&c->cv, &c->mu);
        }
    }
    pthread_mutex_unlock(&c->mu);
}

int th_llm_chat(th_llm_gateway *gw, const th_llm_request *req, th_llm_response *out, th_error *err)
{
    memset(out, 0, sizeof *out);
    if (!req)
        return th__err(err, TH_EINVAL, "", "no request");
    struct th_llm_call *c = th__llm_call_new(gw, TH__LLM_CHAT, req, err);
    if (!c)
        return TH_ENOMEM;
    c->want_deltas = req->stream && req->on_delta;
    int rc = submit(gw, c, req, err);
    if (rc < 0)
        return rc;
    wait_sync(c, req);
    rc = th_llm_call_result(c, out, err);
    th__llm_call_destroy(c);
    return rc;
}

int th_llm_embed(th_llm_gateway *gw, const char *provider, const char *model,
                 const char *const *texts, size_t n, float **vectors, int *dim, th_llm_usage *usage,
                 th_error *err)
{
    *vectors = NULL;
    *dim = 0;
    if (n == 0 || !texts)
        return th__err(err, TH_EINVAL, "texts", "at least one text is needed");
    pthread_mutex_lock(&gw->mu);
    th__llm_provider *p = th__llm_find_provider(gw, provider);
    th_llm_format f = p ? p->o.format : TH_LLM_MOCK;
    pthread_mutex_unlock(&gw->mu);
    if (!p)
        return th__err(err, TH_ENOTFOUND, "provider", "unknown provider '%s'",
                       provider ? provider : "");
    if (f == TH_LLM_ANTHROPIC)
        return th__err(err, TH_EINVAL, "provider", "%s: anthropic has no embeddings API", provider);
    th_llm_target t = {.provider = provider, .model = model};
    th_llm_message m = {.role = TH_LLM_USER, .content = ""};
    th_llm_request req = {.targets = &t, .ntargets = 1, .messages = &m, .nmessages = 1};
    struct th_llm_call *c = th__llm_call_new(gw, TH__LLM_EMBED, &req, err);
    if (!c)
        return TH_ENOMEM;
    if (th__llm_call_set_texts(c, texts, n) < 0) {
        th__llm_call_destroy(c);
        return th__err(err, TH_ENOMEM, "", "out of memory");
    }
    int64_t est = 0;
    for (size_t i = 0; i < n; i++)
        est += (int64_t)strlen(texts[i] ? texts[i] : "") / 4 + 1;
    c->est_tokens = est;
    int rc = submit(gw, c, NULL, err);
    if (rc < 0)
        return rc;
    th_llm_call_wait(c, -1);
    rc = c->rc;
    if (rc < 0) {
        if (err)
            *err = c->err;
    } else {
        *vectors = c->vectors;
        *dim = c->dim;
        c->vectors = NULL;
        if (usage)
            *usage = c->embed_usage;
    }
    th__llm_call_destroy(c);
    return rc;
}

/* ---- status ------------------------------------------------------------------------ */

int th_llm_providers(th_llm_gateway *gw, th_llm_provider_status *out, int max)
{
    pthread_mutex_lock(&gw->mu);
    int n = gw->nprov;
    for (int i = 0; i < n && i < max; i++) {
        const th__llm_provider *p = gw->prov[i];
        th_llm_provider_status *s = &out[i];
        memset(s, 0, sizeof *s);
        snprintf(s->name, sizeof s->name, "%s", p->name);
        snprintf(s->model, sizeof s->model, "%s", p->model);
        s->format = p->o.format;
        s->healthy = p->healthy;
        s->health_failures = p->health_failures;
        s->last_health_ms = p->last_health_wall;
        s->breaker = p->breaker;
        s->breaker_failures = p->breaker_failures;
        s->in_flight = p->in_flight;
        s->queued = (int)p->queue.n;
        s->max_concurrent = p->o.max_concurrent;
        s->requests = p->requests;
        s->successes = p->successes;
        s->failures = p->failures;
        s->retries = p->retries;
        s->rate_limited = p->rate_limited;
        s->input_tokens = p->input_tokens;
        s->output_tokens = p->output_tokens;
        s->cost_usd = p->cost_usd;
    }
    pthread_mutex_unlock(&gw->mu);
    return n;
}
