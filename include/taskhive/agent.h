/*
 * The agent layer, built on the LLM gateway (llm.h) and the engine:
 *
 *   schemas   a JSON Schema subset that checks tool arguments
 *   tools     a registry of named tools, each with a schema and a timeout
 *   agents    agent definitions (role, backstory, instructions, model...)
 *             and a registry of them
 *   runs      the agent loop: prompt, chat, tool calls, final answer, metrics
 *   handler   the "agent" task handler for a worker pool
 *   memory    texts with embeddings, searched by cosine similarity,
 *             persisted in a SQLite file
 *   decay     a result's confidence, decayed by its age
 *
 * Strings a function returns through `char **` are allocated by the library
 * and freed with th_agent_free. Every function returning int returns 0 or a
 * negative TH_E* code, and fills an optional th_error naming the bad field.
 */
#ifndef TASKHIVE_AGENT_H
#define TASKHIVE_AGENT_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "engine.h"
#include "error.h"
#include "llm.h"
#include "pool.h"

/* Frees a string (or array) the agent functions returned. Accepts NULL. */
TH_EXPORT void th_agent_free(void *p);

/* ---- JSON Schema --------------------------------------------------------
 *
 * The subset understood: type (object, array, string, number, integer,
 * boolean, null, or an array of these), properties, required,
 * additionalProperties (false, or a schema), enum, minimum, maximum,
 * minLength, maxLength (in UTF-8 characters), items, minItems, maxItems, and
 * description / title / default / $schema / examples, which are ignored. Any
 * other keyword is refused when the schema is compiled, so a schema never
 * promises a check it does not make.
 */
typedef struct th_schema th_schema;

/* Compiles schema text. NULL on a bad schema, with err naming the keyword's
 * path ("properties.count.minimum: must be a number"). Free with
 * th_schema_free. */
TH_EXPORT th_schema *th_schema_new(const char *json_text, th_error *err);
TH_EXPORT void th_schema_free(th_schema *s);

/* Checks JSON `json_text` against `s`. 0 when it conforms; TH_EINVAL
 * otherwise, with err->field the path of the first bad value under `root`
 * ("arguments.count") and err->message what is wrong ("must be an integer
 * <= 10"). Text that is not JSON is TH_EINVAL with field `root`. */
TH_EXPORT int th_schema_validate(const th_schema *s, const char *json_text, const char *root,
                                 th_error *err);

/* ---- tools -------------------------------------------------------------- */

typedef struct th_tools th_tools;
/* What a running tool sees. */
typedef struct th_tool_ctx th_tool_ctx;

/* A tool. `args` is the validated argument object as JSON text. Return 0
 * after th_tool_set_result (no result means {}), or a negative TH_E* code
 * after th_tool_set_error. Runs on a thread of its own when the tool has a
 * timeout: it must poll th_tool_cancelled in long work. */
typedef int (*th_tool_fn)(th_tool_ctx *tc, const char *args, void *ud);

/* Sets the result (JSON text; copied; the last call wins). TH_EINVAL when
 * it is not JSON. */
TH_EXPORT int th_tool_set_result(th_tool_ctx *tc, const char *json);
/* Sets the error message (copied) sent back to the model. */
TH_EXPORT int th_tool_set_error(th_tool_ctx *tc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* 1 once the call timed out or its caller went away: stop early. */
TH_EXPORT int th_tool_cancelled(const th_tool_ctx *tc);
/* The namespace of the calling agent (its name), or "" outside an agent. */
TH_EXPORT const char *th_tool_agent(const th_tool_ctx *tc);

TH_EXPORT th_tools *th_tools_new(void);
/* Waits for abandoned (timed-out) tool threads to end, then frees. Accepts
 * NULL. */
TH_EXPORT void th_tools_free(th_tools *t);

/*
 * Registers a tool. `name` is [A-Za-z0-9_-]{1,64}; `schema` is a JSON
 * Schema object text (NULL = any object) for the arguments, whose top-level
 * type must be "object"; timeout_ms > 0 runs each call on its own thread and
 * gives up after that long, 0 runs it on the caller's thread without a
 * limit. Strings are copied; `ud` is borrowed. TH_ECONFLICT for a
 * duplicate name, TH_EINVAL (err->field "schema.<path>" for a bad schema).
 * Register every tool before running agents: the registry is read without
 * locks afterwards.
 */
TH_EXPORT int th_tools_register(th_tools *t, const char *name, const char *description,
                                const char *schema, int64_t timeout_ms, th_tool_fn fn, void *ud,
                                th_error *err);
/* 1 when `name` is registered. */
TH_EXPORT int th_tools_has(const th_tools *t, const char *name);
/* Number of tools; their names in registration order through th_tools_name. */
TH_EXPORT size_t th_tools_count(const th_tools *t);
TH_EXPORT const char *th_tools_name(const th_tools *t, size_t i);

/*
 * Fills `out` (capacity `max`) with the definitions of the tools named in
 * `names` (all tools when names is NULL), for th_llm_request.tools. The
 * strings are borrowed from the registry. Returns the count, or TH_ENOTFOUND
 * with err->field "tools[i]" for an unknown name.
 */
TH_EXPORT int th_tools_defs(const th_tools *t, const char *const *names, size_t nnames,
                            th_llm_tool_def *out, size_t max, th_error *err);

/*
 * Calls tool `name` with `args` (JSON object text) on behalf of agent
 * `agent` (may be NULL). Validates the arguments first. On 0, *result is
 * the tool's JSON text (th_agent_free). Errors: TH_ENOTFOUND (no such tool),
 * TH_EINVAL (not JSON, or the schema refused it: err->field
 * "arguments.<path>"), TH_ETIMEDOUT, TH_ENOMEM, or the tool's own code with
 * its message in err.
 */
TH_EXPORT int th_tools_call(th_tools *t, const char *name, const char *args, const char *agent,
                            char **result, th_error *err);

/* Registers the built-in tools over `engine` (submit_task, get_task_result)
 * and `memory` (search_memory, remember); either may be NULL to leave
 * those out. Both are borrowed and must outlive the registry. */
typedef struct th_memory th_memory;
TH_EXPORT int th_tools_register_builtins(th_tools *t, th_engine *engine, th_memory *memory,
                                         th_error *err);

/* ---- agent definitions -------------------------------------------------- */

#define TH_AGENT_NAME_MAX 64     /* [A-Za-z0-9_.-] */
#define TH_AGENT_TEXT_MAX 16384  /* role, backstory, instructions */
#define TH_AGENT_MAX_TOOLS 64    /* allowed tools per agent */
#define TH_AGENT_MAX_STEPS 100   /* model calls per run */
#define TH_AGENT_DEFAULT_STEPS 8 /* when max_steps is 0 */
#define TH_AGENT_MAX_FALLBACKS 8 /* fallback targets per agent */

/* An agent. Every string is owned by the definition (th_agent_def_free). */
typedef struct th_agent_def {
    char *name;         /* required */
    char *role;         /* "a careful research assistant"; may be NULL */
    char *backstory;    /* may be NULL */
    char *instructions; /* may be NULL */
    char *provider;     /* required: a gateway provider name */
    char *model;        /* NULL = the provider's default */
    double temperature; /* [0, 2]; < 0 = the provider's default */
    int max_tokens;     /* [0, 1000000]; 0 = the gateway's default */
    int max_steps;      /* [0, TH_AGENT_MAX_STEPS]; 0 = TH_AGENT_DEFAULT_STEPS */
    char **tools;       /* allowed tool names */
    size_t ntools;
    /* Tried in order when the provider fails for good (after its retries) or
     * its circuit is open: "provider" or "provider/model". At most
     * TH_AGENT_MAX_FALLBACKS. */
    char **fallbacks;
    size_t nfallbacks;
} th_agent_def;

/* A definition with every field empty and the defaults (temperature -1).
 * NULL when out of memory. */
TH_EXPORT th_agent_def *th_agent_def_new(void);
TH_EXPORT void th_agent_def_free(th_agent_def *d);
/* A deep copy, or NULL. */
TH_EXPORT th_agent_def *th_agent_def_copy(const th_agent_def *d);

/* Checks every field; TH_EINVAL with err->field naming the first bad one.
 * With `tools` not NULL, every allowed tool must be registered there. */
TH_EXPORT int th_agent_def_validate(const th_agent_def *d, const th_tools *tools, th_error *err);

/*
 * Parses a JSON object {"name", "role", "backstory", "instructions",
 * "provider", "model", "temperature", "max_tokens", "max_steps", "tools":
 * [...], "fallbacks": ["provider/model", ...]} into a new definition (*out, th_agent_def_free).
 * Unknown fields and wrong types are refused by name; the result is also validated (without a tool
 * registry). With `base` not NULL, the object is a patch: fields it has replace base's, null clears
 * an optional field.
 */
TH_EXPORT int th_agent_def_from_json(const char *json_text, const th_agent_def *base,
                                     th_agent_def **out, th_error *err);
/* The definition as a JSON object text (th_agent_free), or NULL. */
TH_EXPORT char *th_agent_def_to_json(const th_agent_def *d);
/* Sets one field from text, as a config file gives it: "temperature" =
 * "0.2", "tools" = "submit_task, search_memory", "fallbacks" =
 * "openai/gpt-4o-mini, mock". TH_EINVAL naming `key`
 * for an unknown key or a bad value. */
TH_EXPORT int th_agent_def_set(th_agent_def *d, const char *key, const char *value, th_error *err);

/* A thread-safe registry of definitions, keyed by name. */
typedef struct th_agents th_agents;

/* `tools` (may be NULL) is borrowed: definitions must only allow tools
 * registered there. NULL when out of memory. */
TH_EXPORT th_agents *th_agents_new(const th_tools *tools);
TH_EXPORT void th_agents_free(th_agents *a);
/* A registry kept in SQLite file `path` (created when missing; "" =
 * in memory only): every stored definition is loaded now and every change
 * below is written through before it takes effect (TH_EIO when it cannot
 * be, with nothing changed). A stored definition is checked without
 * `tools`, so one naming a tool that is gone loads, and fails when run.
 * NULL on failure (TH_EIO, TH_ECORRUPT, TH_ENOMEM in err). */
TH_EXPORT th_agents *th_agents_open(const char *path, const th_tools *tools, th_error *err);
/* Adds a copy of `d` after validating it; TH_ECONFLICT when the name exists. */
TH_EXPORT int th_agents_create(th_agents *a, const th_agent_def *d, th_error *err);
/* Replaces the definition named d->name with a copy of `d`; TH_ENOTFOUND. */
TH_EXPORT int th_agents_update(th_agents *a, const th_agent_def *d, th_error *err);
/* Adds or replaces (for definitions from the configuration). */
TH_EXPORT int th_agents_put(th_agents *a, const th_agent_def *d, th_error *err);
TH_EXPORT int th_agents_delete(th_agents *a, const char *name, th_error *err);
/* A copy of the definition named `name` (*out, th_agent_def_free). */
TH_EXPORT int th_agents_get(th_agents *a, const char *name, th_agent_def **out, th_error *err);
/* Every definition as a JSON array text sorted by name (th_agent_free). */
TH_EXPORT int th_agents_list_json(th_agents *a, char **out);
TH_EXPORT size_t th_agents_count(th_agents *a);

/* ---- running an agent --------------------------------------------------- */

/* The steps a run reports, in order. */
typedef enum th_agent_step {
    TH_AGENT_STEP_CONFIGURE = 1, /* configuring provider */
    TH_AGENT_STEP_CONTEXT,       /* preparing context */
    TH_AGENT_STEP_MODEL,         /* calling the model (and tools) */
    TH_AGENT_STEP_RESULTS,       /* processing results */
    TH_AGENT_STEP_FINALISE,      /* finalising */
} th_agent_step;
#define TH_AGENT_NSTEPS 5

/* "configuring provider", ...; static. */
TH_EXPORT const char *th_agent_step_name(th_agent_step s);

typedef struct th_agent_metrics {
    int64_t input_tokens, output_tokens;
    int request_count;    /* model calls */
    int tool_calls;       /* tools run (including refused ones) */
    int64_t execution_ms; /* the whole run */
    double cost_usd;
} th_agent_metrics;

typedef struct th_agent_run_opts {
    th_llm_gateway *gateway; /* required */
    th_tools *tools;         /* may be NULL when the agent allows none */
    const th_agent_def *def; /* required */
    const char *input;       /* the task: what the user asks; required */
    const char *context;     /* extra context text for the prompt; may be NULL */
    /* All optional; called on the running thread. */
    void (*on_step)(th_agent_step step, const char *detail, void *ud);
    void (*on_delta)(const char *text, size_t len, void *ud);
    void (*on_log)(th_log_level level, const char *message, const char *data, void *ud);
    int (*cancelled)(void *ud);
    void *ud;
} th_agent_run_opts;

/*
 * Runs the agent loop on the calling thread: builds the system prompt from
 * the definition (and `context`), sends the input with the allowed tools,
 * runs each tool call the model asks for (a refused or failed call goes
 * back to the model as the tool's answer), and repeats until the model
 * answers without tool calls or max_steps model calls were made. On 0,
 * *result (th_agent_free) is
 *   {"summary": S, "output": TEXT, "agent": NAME, "provider": P, "model": M,
 *    "steps": N (model calls),
 *    "metrics": {"tokens_used", "input_tokens", "output_tokens",
 *                "request_count", "tool_calls", "execution_time_ms",
 *                "cost_usd"}, "confidence": C (only when the answer states
 *    one as "confidence: 0.8" or "confidence: 80%")}.
 * The summary is the answer's first sentence (at most 200 bytes); text
 * that is not valid UTF-8 has its bad bytes replaced by '?'. The calls are
 * made with the agent's name as th_llm_request.agent, so spend is recorded
 * under it and an "agent:NAME" budget applies.
 * `metrics` (may be NULL) is filled on success and failure. Errors: the
 * gateway's (TH_EBUDGET, TH_EUPSTREAM, TH_ENOTFOUND for an unknown
 * provider...), TH_ENOTFOUND for an unknown allowed tool, TH_ECANCELED,
 * TH_ETOOBIG when max_steps ran out (err says so), TH_EINVAL.
 */
TH_EXPORT int th_agent_run(const th_agent_run_opts *o, char **result, th_agent_metrics *metrics,
                           th_error *err);

/* ---- the pool handler --------------------------------------------------- */

/* What the "agent" handler runs with; borrowed, it must outlive the pool. */
typedef struct th_agent_env {
    th_llm_gateway *gateway;
    th_agents *agents;
    th_tools *tools; /* may be NULL */
} th_agent_env;

/*
 * Registers the handler "agent" on `p` (a threads pool: the gateway is not
 * usable in a forked child). Its payload is {"agent": NAME, "input": TEXT,
 * "context": TEXT?} or {"agent": {an inline definition}, "input": ...}. It
 * reports the five steps as progress (with streamed text as progress
 * messages while the model answers), logs each step, honours cancellation,
 * and sets th_agent_run's result. An unknown agent, a bad payload, an
 * unknown provider or a budget refusal fail the task permanently; other
 * gateway failures are retried per the task's policy.
 */
TH_EXPORT int th_agent_register_handler(th_pool *p, const th_agent_env *env, th_error *err);

/* ---- memory ------------------------------------------------------------- */

/* Embeds `n` texts into *vectors (n * *dim floats, malloc'ed: the memory
 * frees them with free()). Returns 0 or a negative code with err filled. */
typedef int (*th_embed_fn)(const char *const *texts, size_t n, float **vectors, int *dim,
                           th_error *err, void *ud);

/*
 * Opens (creating it when missing) the memory file `path` and loads every
 * memory; "" or ":memory:" keeps nothing on disk. `embed` turns texts into
 * vectors; `ud` is borrowed. NULL on failure with err filled (TH_EIO,
 * TH_ECORRUPT). Thread-safe. Free with th_memory_free.
 */
TH_EXPORT th_memory *th_memory_open(const char *path, th_embed_fn embed, void *ud, th_error *err);
/* The same, embedding through the gateway's `provider` (and `model`, NULL =
 * its embedding model); the strings are copied, `gw` is borrowed. */
TH_EXPORT th_memory *th_memory_open_llm(const char *path, th_llm_gateway *gw, const char *provider,
                                        const char *model, th_error *err);
TH_EXPORT void th_memory_free(th_memory *m);

/* Stores `text` under `ns` (an agent name or any namespace; NULL = "") with
 * `metadata` (JSON object text or NULL), durably; *id_out (may be NULL)
 * gets its id (> 0). */
TH_EXPORT int th_memory_add(th_memory *m, const char *ns, const char *text, const char *metadata,
                            int64_t *id_out, th_error *err);

typedef struct th_memory_hit {
    int64_t id;
    char *ns, *text, *metadata; /* metadata may be NULL */
    int64_t created_at;         /* wall ms */
    double score;               /* cosine similarity, -1..1 */
} th_memory_hit;

/* The `k` memories of namespace `ns` (NULL = every namespace) most similar
 * to `query`, best first, into *hits (*n of them; th_memory_hits_free). */
TH_EXPORT int th_memory_search(th_memory *m, const char *ns, const char *query, size_t k,
                               th_memory_hit **hits, size_t *n, th_error *err);
TH_EXPORT void th_memory_hits_free(th_memory_hit *hits, size_t n);
/* Deletes a memory; TH_ENOTFOUND. */
TH_EXPORT int th_memory_delete(th_memory *m, int64_t id, th_error *err);
TH_EXPORT size_t th_memory_count(th_memory *m);

/* ---- confidence decay --------------------------------------------------- */

/*
 * Exponential decay by half-life:
 *   confidence * 0.5 ^ (age_ms / half_life_ms)
 * so a result loses half its confidence every half_life_ms. The confidence
 * is clamped to [0, 1] first; a negative age counts as 0; half_life_ms <= 0
 * means no decay.
 */
TH_EXPORT double th_confidence_decay(double confidence, int64_t age_ms, int64_t half_life_ms);

/*
 * For the API: a copy of result JSON text with "confidence_decayed" added
 * (the decay of its "confidence" at `age_ms`) when it is an object with a
 * numeric "confidence"; otherwise an unchanged copy. *out: th_agent_free.
 */
TH_EXPORT int th_agent_result_decay(const char *result_json, int64_t age_ms, int64_t half_life_ms,
                                    char **out);

#endif
