/*
 * The LLM gateway: one object that sends chat and embedding requests to
 * model providers and keeps them in bounds.
 *
 * Providers speak one of four wire formats: OpenAI chat completions (and any
 * OpenAI-compatible base URL), Anthropic Messages, Ollama, and "mock", which
 * answers offline, deterministically, streaming its tokens with a small
 * delay. Every HTTP transfer runs on one gateway thread through libcurl's
 * multi interface, so thousands of requests can be in flight without a
 * thread each.
 *
 * Per provider the gateway enforces a concurrency limit with a bounded wait
 * queue (TH_EBUSY when full), request and token rate limits (token buckets,
 * and the provider's Retry-After / rate-limit headers), retries with
 * exponential backoff and jitter on 408, 409, 429, 5xx, 529, timeouts and
 * connection errors (only before the first streamed byte), and a circuit
 * breaker. A request names a chain of provider/model targets; when one fails
 * for good, or its breaker is open, the next is tried. Every answer carries
 * its token usage and cost from the gateway's price table.
 *
 * Threads: th_llm_chat may be called from any thread and blocks that
 * thread only; its delta callback runs on the calling thread. th_llm_start's
 * done callback runs on the gateway thread and must not block.
 */
#ifndef TASKHIVE_LLM_H
#define TASKHIVE_LLM_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "error.h"

typedef struct th_llm_gateway th_llm_gateway;
typedef struct th_llm_call th_llm_call;

typedef enum th_llm_format {
    TH_LLM_MOCK = 0,
    TH_LLM_OPENAI = 1,
    TH_LLM_ANTHROPIC = 2,
    TH_LLM_OLLAMA = 3,
} th_llm_format;

/* "mock", "openai", "anthropic", "ollama"; static. */
TH_EXPORT const char *th_llm_format_name(th_llm_format f);
/* Parses a format name; TH_EINVAL when unknown. */
TH_EXPORT int th_llm_format_parse(const char *name, th_llm_format *out);

typedef enum th_llm_breaker_state {
    TH_BREAKER_CLOSED = 0,
    TH_BREAKER_OPEN = 1,
    TH_BREAKER_HALF_OPEN = 2,
} th_llm_breaker_state;

/* "closed", "open", "half-open"; static. */
TH_EXPORT const char *th_llm_breaker_name(th_llm_breaker_state s);

/* A provider. Strings are copied by th_llm_gateway_add_provider. */
typedef struct th_llm_provider_options {
    const char *name; /* unique; [A-Za-z0-9_.-], at most 63 bytes */
    th_llm_format format;
    const char *base_url; /* NULL = the format's default */
    const char *api_key;  /* NULL = none (the secret never appears in logs or answers) */
    const char *model;    /* default chat model; NULL = the format's default */
    const char *embed_model;
    int max_concurrent;            /* 0 = the format's default: ollama 4, others 64 */
    size_t max_queue;              /* 10000 requests waiting for a slot */
    int64_t timeout_ms;            /* 120000: one attempt, first byte to last */
    int64_t connect_timeout_ms;    /* 10000 */
    int max_retries;               /* 3 */
    int64_t retry_initial_ms;      /* 500 */
    int64_t retry_max_ms;          /* 30000 */
    double retry_jitter;           /* 0.2 */
    double requests_per_min;       /* 0 = unlimited */
    double tokens_per_min;         /* 0 = unlimited */
    int breaker_failures;          /* 5 consecutive failures open the breaker */
    int64_t breaker_cooldown_ms;   /* 30000 open before a half-open probe */
    int breaker_successes;         /* 2 successes in half-open close it */
    int64_t health_interval_ms;    /* 30000; 0 = no health checks */
    int health_failures;           /* 3 consecutive failures: unhealthy */
    int64_t mock_token_delay_ms;   /* 2: mock only, between streamed tokens */
    const char *anthropic_version; /* "2023-06-01" */
    const char *key_name;          /* the key's name in usage and budgets; NULL = the provider's */
} th_llm_provider_options;

TH_EXPORT void th_llm_provider_options_init(th_llm_provider_options *o);

typedef enum th_llm_event_type {
    TH_LLM_EV_RETRY = 0,    /* an attempt failed and will be retried */
    TH_LLM_EV_FALLBACK,     /* a target failed; the next one is tried */
    TH_LLM_EV_BREAKER,      /* a breaker changed state (value = new state) */
    TH_LLM_EV_HEALTH,       /* health changed (value = 1 healthy, 0 not) */
    TH_LLM_EV_RATE_LIMITED, /* the provider answered 429 */
} th_llm_event_type;

typedef struct th_llm_event {
    th_llm_event_type type;
    const char *provider;
    const char *message;
    int value;
} th_llm_event;

typedef struct th_llm_gateway_options {
    uint64_t seed; /* jitter; 0 = random */
    /* A SQLite file where spending is kept (per day, provider, model,
     * agent and key), so budgets hold across restarts; NULL = memory only. */
    const char *usage_path;
    /* Called on the gateway thread for each event; must not block. */
    void (*on_event)(const th_llm_event *ev, void *ud);
    void *ud;
} th_llm_gateway_options;

TH_EXPORT void th_llm_gateway_options_init(th_llm_gateway_options *o);

/* Makes a gateway and starts its thread. NULL on failure (err filled).
 * Free with th_llm_gateway_free. */
TH_EXPORT th_llm_gateway *th_llm_gateway_new(const th_llm_gateway_options *opts, th_error *err);
/* Stops the thread; calls still running end with TH_ECLOSED. Accepts NULL. */
TH_EXPORT void th_llm_gateway_free(th_llm_gateway *gw);

/* Adds a provider; TH_EINVAL with err->field naming a bad option,
 * TH_ECONFLICT for a duplicate name. */
TH_EXPORT int th_llm_gateway_add_provider(th_llm_gateway *gw, const th_llm_provider_options *o,
                                          th_error *err);

/* Replaces the API key of provider `name` (key rotation): attempts started
 * from now on send the new key; NULL or "" removes it. TH_ENOTFOUND for an
 * unknown provider, TH_ENOMEM. The key is copied and never reported. */
TH_EXPORT int th_llm_set_api_key(th_llm_gateway *gw, const char *name, const char *api_key);

/* Sets the price of `model` in USD per million input / output tokens. A
 * model without a price costs 0. Built-in prices cover the mock model and a
 * few well-known models; this overrides them. */
TH_EXPORT int th_llm_set_price(th_llm_gateway *gw, const char *model, double input_per_m,
                               double output_per_m);
/* The price of `model`; TH_ENOTFOUND when none is known. */
TH_EXPORT int th_llm_get_price(th_llm_gateway *gw, const char *model, double *input_per_m,
                               double *output_per_m);

/* ---- requests ---------------------------------------------------------- */

typedef enum th_llm_role {
    TH_LLM_SYSTEM = 0,
    TH_LLM_USER,
    TH_LLM_ASSISTANT,
    TH_LLM_TOOL,
} th_llm_role;

/* One tool call the model asked for. `arguments` is a JSON object text. */
typedef struct th_llm_tool_call {
    char *id;
    char *name;
    char *arguments;
} th_llm_tool_call;

typedef struct th_llm_message {
    th_llm_role role;
    const char *content;                /* may be NULL for an assistant turn of tool calls only */
    const th_llm_tool_call *tool_calls; /* assistant turns */
    size_t ntool_calls;
    const char *tool_call_id; /* TH_LLM_TOOL: the call this answers */
    const char *tool_name;    /* TH_LLM_TOOL: the tool's name */
} th_llm_message;

typedef struct th_llm_tool_def {
    const char *name;
    const char *description;
    const char *parameters; /* JSON Schema object text */
} th_llm_tool_def;

/* One link of a fallback chain: a provider and a model (NULL = its default). */
typedef struct th_llm_target {
    const char *provider;
    const char *model;
} th_llm_target;

typedef struct th_llm_request {
    const th_llm_target *targets; /* tried in order; at least one */
    size_t ntargets;
    const char *system;
    const th_llm_message *messages;
    size_t nmessages;
    const th_llm_tool_def *tools;
    size_t ntools;
    double temperature; /* < 0 = the provider's default */
    int max_tokens;     /* 0 = 1024 */
    int stream;         /* stream the answer (deltas reach on_delta) */
    /* Streamed text; th_llm_chat calls it on the calling thread. */
    void (*on_delta)(const char *text, size_t len, void *ud);
    /* Polled by th_llm_chat every few ms; nonzero cancels the call. */
    int (*cancelled)(void *ud);
    void *ud;
    /* Who the call is for: usage is recorded under this agent, and the
     * agent's budget applies. NULL = no agent. */
    const char *agent;
} th_llm_request;

typedef struct th_llm_usage {
    int64_t input_tokens;
    int64_t output_tokens;
} th_llm_usage;

/* An answer. Free its contents with th_llm_response_free. */
typedef struct th_llm_response {
    char *text; /* never NULL after success ("" when only tool calls) */
    th_llm_tool_call *tool_calls;
    size_t ntool_calls;
    char finish_reason[32]; /* "stop", "length", "tool_calls", ... */
    th_llm_usage usage;
    double cost_usd;
    char provider[64];
    char model[128];
    int attempts;           /* HTTP attempts over every target */
    int64_t latency_ms;     /* call to answer */
    int64_t first_token_ms; /* call to first streamed byte; -1 when not streamed */
} th_llm_response;

TH_EXPORT void th_llm_response_free(th_llm_response *r);

/*
 * Sends `req` and waits for the answer, on the calling thread. On success
 * fills `out` (the caller frees it with th_llm_response_free). On failure
 * returns TH_EUPSTREAM (the provider failed or refused; err says how),
 * TH_EUNAVAIL (breakers open), TH_EBUSY (a queue is full), TH_ETIMEDOUT,
 * TH_ECANCELED, TH_EINVAL (a bad request, err->field names it) or
 * TH_ENOTFOUND (an unknown provider).
 */
TH_EXPORT int th_llm_chat(th_llm_gateway *gw, const th_llm_request *req, th_llm_response *out,
                          th_error *err);

/* Called once on the gateway thread when an asynchronous call ends. */
typedef void (*th_llm_done_fn)(th_llm_call *call, int rc, void *ud);

/*
 * Starts `req` without waiting (the request is copied; on_delta and
 * cancelled are ignored). `done` may be NULL. *out gets a handle to pass to
 * th_llm_call_wait / th_llm_call_result / th_llm_call_cancel and finally
 * th_llm_call_free (free it only after it ended).
 */
TH_EXPORT int th_llm_start(th_llm_gateway *gw, const th_llm_request *req, th_llm_done_fn done,
                           void *ud, th_llm_call **out, th_error *err);
/* Waits up to `timeout_ms` (-1 = forever) for the call to end: 0 when it
 * ended, TH_ETIMEDOUT otherwise. */
TH_EXPORT int th_llm_call_wait(th_llm_call *call, int64_t timeout_ms);
/* The outcome of an ended call: its code, the answer moved into `out` on
 * success (once), the error copied into `err`. */
TH_EXPORT int th_llm_call_result(th_llm_call *call, th_llm_response *out, th_error *err);
/* Asks the call to end with TH_ECANCELED; its transfer is stopped. */
TH_EXPORT void th_llm_call_cancel(th_llm_call *call);
/* Frees an ended call (cancel it and wait first otherwise). Accepts NULL. */
TH_EXPORT void th_llm_call_free(th_llm_call *call);

/*
 * Embeds `n` texts with the provider's embedding model (mock: a
 * deterministic bag-of-words vector). *vectors gets n * *dim floats
 * (free with th_llm_free). Same errors as th_llm_chat.
 */
TH_EXPORT int th_llm_embed(th_llm_gateway *gw, const char *provider, const char *model,
                           const char *const *texts, size_t n, float **vectors, int *dim,
                           th_llm_usage *usage, th_error *err);
TH_EXPORT void th_llm_free(void *p);

/* ---- spending and budgets ------------------------------------------------ */

/*
 * Sets a budget in USD for a scope: "agent:NAME", "key:NAME" (a provider's
 * key_name) or "total". 0 = no limit for that period. Days and months are
 * UTC. A call whose agent (or "total") budget is spent is refused with
 * TH_EBUDGET before anything is sent; a target whose key budget is spent is
 * skipped (the next target is tried). The check uses the spend so far plus
 * the call's worst case (estimated input and max_tokens at the model's
 * price). TH_EINVAL for a malformed scope or a negative amount.
 */
TH_EXPORT int th_llm_set_budget(th_llm_gateway *gw, const char *scope, double daily_usd,
                                double monthly_usd);

/* Spend of a scope (as above) today and this month, in USD. */
TH_EXPORT int th_llm_spent(th_llm_gateway *gw, const char *scope, double *today_usd,
                           double *month_usd);

/* One line of the spend ledger. */
typedef struct th_llm_spend_row {
    char day[11]; /* "YYYY-MM-DD", UTC */
    char provider[64];
    char model[128];
    char agent[64]; /* "" when the calls named no agent */
    char key[64];
    uint64_t requests;
    int64_t input_tokens, output_tokens;
    double cost_usd;
} th_llm_spend_row;

/* The ledger's lines from `since_day` ("YYYY-MM-DD"; NULL = all), ordered
 * by day, provider, model, agent, key. *rows is freed with th_llm_free. */
TH_EXPORT int th_llm_spend(th_llm_gateway *gw, const char *since_day, th_llm_spend_row **rows,
                           size_t *n);

/* ---- observing --------------------------------------------------------- */

typedef struct th_llm_provider_status {
    char name[64];
    th_llm_format format;
    char model[128];
    int healthy;
    int health_failures;    /* consecutive */
    int64_t last_health_ms; /* wall time of the last check; 0 = none yet */
    th_llm_breaker_state breaker;
    int breaker_failures; /* consecutive failures counted by the breaker */
    int in_flight, queued, max_concurrent;
    uint64_t requests, successes, failures, retries, rate_limited;
    int64_t input_tokens, output_tokens;
    double cost_usd;
} th_llm_provider_status;

/* Snapshot of up to `max` providers in the order they were added; returns
 * how many there are. */
TH_EXPORT int th_llm_providers(th_llm_gateway *gw, th_llm_provider_status *out, int max);

#endif
