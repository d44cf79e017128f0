/*
 * The "agent" task handler: parses the payload, finds the agent, runs
 * th_agent_run with the task's context, and turns its steps, streamed text
 * and logs into the task's progress and log rows.
 *
 * Progress: configuring 5 %, preparing context 10 %, model calls from 20 %
 * to 80 % (each call and tool call moves it on, within max_steps), processing
 * results 90 %, finalising 95 %; the pool reports 100 % on completion.
 * Streamed text becomes progress messages ("model: ...the latest text"): the
 * first delta of each call at once, later ones at most every
 * STREAM_INTERVAL_MS, and the whole tail once the call ends, so a watcher
 * sees the answer arrive without a store write per token.
 */
#include "agent/agent_impl.h"

#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"

#define STREAM_INTERVAL_MS 100
#define STREAM_TAIL 240

typedef struct hrun {
    th_ctx *ctx;
    int max_steps;
    int model_events; /* model and tool steps seen, for the percentage */
    int percent;
    char tail[STREAM_TAIL + 1]; /* the latest streamed text */
    size_t tail_len;
    int unsent;          /* deltas not yet reported */
    int64_t last_report; /* monotonic ns */
} hrun;

/* Reports the tail; dropped bytes may have cut a UTF-8 character, so the
 * text is cleaned (the message must stay valid text for JSON events). */
static void report_stream(hrun *h)
{
    const char *t = h->tail;
    while (((unsigned char)*t & 0xC0) == 0x80)
        t++;
    char msg[STREAM_TAIL + 16];
    snprintf(msg, sizeof msg, "model: %s", t);
    char *clean = th__agent_utf8_clean(msg);
    th_ctx_progress(h->ctx, h->percent, TH_AGENT_STEP_MODEL, TH_AGENT_NSTEPS,
                    clean ? clean : "model: ...");
    th__free(clean);
    h->unsent = 0;
    h->last_report = th__mono_ns();
}

static void on_delta(const char *text, size_t len, void *ud)
{
    hrun *h = ud;
    if (len >= STREAM_TAIL) {
        text += len - STREAM_TAIL;
        len = STREAM_TAIL;
    }
    if (h->tail_len + len > STREAM_TAIL) { /* drop the oldest bytes */
        size_t drop = h->tail_len + len - STREAM_TAIL;
        memmove(h->tail, h->tail + drop, h->tail_len - drop);
        h->tail_len -= drop;
    }
    memcpy(h->tail + h->tail_len, text, len);
    h->tail_len += len;
    h->tail[h->tail_len] = '\0';
    int first = h->last_report == 0;
    h->unsent++;
    if (first || th__mono_ns() - h->last_report >= (int64_t)STREAM_INTERVAL_MS * 1000000)
        report_stream(h);
}

static void on_step(th_agent_step s, const char *detail, void *ud)
{
    hrun *h = ud;
    if (h->unsent) /* the end of the previous call's stream */
        report_stream(h);
    if (s == TH_AGENT_STEP_MODEL) {
        int span = 2 * h->max_steps; /* a call and a round of tools per step */
        h->percent = 20 + 60 * (h->model_events < span ? h->model_events : span) / span;
        h->model_events++;
        h->tail_len = 0;
        h->tail[0] = '\0';
        h->last_report = 0;
    } else {
        static const int pct[] = {0, 5, 10, 20, 90, 95};
        h->percent = pct[s];
    }
    char msg[256];
    snprintf(msg, sizeof msg, "%s%s%s", th_agent_step_name(s), detail ? ": " : "",
             detail ? detail : "");
    th_ctx_progress(h->ctx, h->percent, (int)s, TH_AGENT_NSTEPS, msg);
}

static void on_log(th_log_level level, const char *message, const char *data, void *ud)
{
    hrun *h = ud;
    th_ctx_log(h->ctx, level, message, data);
}

static int cancelled(void *ud)
{
    hrun *h = ud;
    return th_ctx_cancelled(h->ctx);
}

static int fail(th_ctx *ctx, int how, const char *field, const char *msg)
{
    th_ctx_set_error(ctx, "%s%s%s", field, *field ? ": " : "", msg);
    return how;
}

/* The definition the payload names or holds; a handler code on failure. */
static int resolve_agent(th_ctx *ctx, const th_agent_env *env, const json_t *agent,
                         th_agent_def **def)
{
    th_error e = {0};
    int rc;
    if (json_is_string(agent))
        rc = th_agents_get(env->agents, json_string_value(agent), def, &e);
    else if (json_is_object(agent))
        rc = th__agent_def_from_value(agent, NULL, def, &e);
    else
        return fail(ctx, TH_HANDLER_PERMANENT, "payload.agent",
                    "must be an agent name or a definition object");
    if (rc == TH_ENOMEM)
        return fail(ctx, TH_HANDLER_RETRY, "", "out of memory");
    if (rc) {
        char field[96];
        snprintf(field, sizeof field, "payload.agent%s%s", e.field[0] ? "." : "", e.field);
        if (rc == TH_ENOTFOUND)
            snprintf(field, sizeof field, "payload.agent");
        return fail(ctx, TH_HANDLER_PERMANENT, field, e.message);
    }
    return 0;
}

int th__agent_retryable(int rc)
{
    return rc == TH_EUPSTREAM || rc == TH_EUNAVAIL || rc == TH_EBUSY || rc == TH_ETIMEDOUT ||
           rc == TH_ENOMEM || rc == TH_ECANCELED || rc == TH_ECLOSED || rc == TH_EIO;
}

static int agent_handler(th_ctx *ctx, void *ud)
{
    const th_agent_env *env = ud;
    json_error_t je;
    json_t *p = json_loads(th_ctx_task(ctx)->payload, JSON_REJECT_DUPLICATES, &je);
    th_agent_def *def = NULL;
    char *result = NULL;
    int rc = 0;
    if (!json_is_object(p)) {
        rc = fail(ctx, TH_HANDLER_PERMANENT, "payload", "must be an object {agent, input}");
        goto done;
    }
    const char *key;
    json_t *v;
    json_object_foreach(p, key, v)
    {
        if (strcmp(key, "agent") && strcmp(key, "input") && strcmp(key, "context")) {
            char field[96];
            snprintf(field, sizeof field, "payload.%s", key);
            rc = fail(ctx, TH_HANDLER_PERMANENT, field, "unknown field");
            goto done;
        }
    }
    const char *input = json_string_value(json_object_get(p, "input"));
    json_t *context = json_object_get(p, "context");
    if (!input || !*input) {
        rc = fail(ctx, TH_HANDLER_PERMANENT, "payload.input", "must be a non-empty string");
        goto done;
    }
    if (context && !json_is_string(context)) {
        rc = fail(ctx, TH_HANDLER_PERMANENT, "payload.context", "must be a string");
        goto done;
    }
    if ((rc = resolve_agent(ctx, env, json_object_get(p, "agent"), &def)))
        goto done;
    hrun h = {.ctx = ctx, .max_steps = def->max_steps ? def->max_steps : TH_AGENT_DEFAULT_STEPS};
    th_agent_run_opts o = {.gateway = env->gateway,
                           .tools = env->tools,
                           .def = def,
                           .input = input,
                           .context = json_string_value(context),
                           .on_step = on_step,
                           .on_delta = on_delta,
                           .on_log = on_log,
                           .cancelled = cancelled,
                           .ud = &h};
    th_error e = {0};
    int run_rc = th_agent_run(&o, &result, NULL, &e);
    if (run_rc) {
        rc = fail(ctx, th__agent_retryable(run_rc) ? TH_HANDLER_RETRY : TH_HANDLER_PERMANENT,
                  th_errname(run_rc), e.message[0] ? e.message : th_strerror(run_rc));
        goto done;
    }
    if (th_ctx_set_result(ctx, result))
        rc = fail(ctx, TH_HANDLER_RETRY, "", "cannot store the result");
done:
    th_agent_free(result);
    th_agent_def_free(def);
    json_decref(p);
    return rc;
}

int th_agent_register_handler(th_pool *p, const th_agent_env *env, th_error *err)
{
    if (!env || !env->gateway || !env->agents)
        return th__err(err, TH_EINVAL, "env", "the agent handler needs a gateway and agents");
    return th_pool_register(p, "agent", agent_handler, (void *)env, err);
}
