/*
 * The agent loop: one run of an agent on one input, on the calling thread.
 *
 * The conversation is an array of th_llm_message that borrows its strings
 * from storage the run owns: every answer of the model is kept whole (its
 * text and tool calls back the assistant turns), and every tool answer is
 * kept in a list of owned strings. All of it is freed when the run ends.
 *
 *   configure   validate the definition, resolve the allowed tools
 *   context     system prompt from role, backstory, instructions, context
 *   model       chat (streamed) -> tool calls? run each, append, chat again
 *   results     summary, confidence, metrics
 *   finalise    the result JSON
 */
#include "agent/agent_impl.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"

#define SUMMARY_MAX 200

typedef struct run {
    const th_agent_run_opts *o;
    const th_agent_def *def;
    th_llm_tool_def tools[TH_AGENT_MAX_TOOLS];
    size_t ntools;
    char *system;
    th_llm_message *msgs;
    size_t nmsgs, capmsgs;
    th_llm_response *answers; /* every answer, owned */
    size_t nanswers, capanswers;
    char **strings; /* tool answers, owned */
    size_t nstrings, capstrings;
    th_agent_metrics *m;
} run;

static const char *const step_names[] = {"",
                                         "configuring provider",
                                         "preparing context",
                                         "calling the model",
                                         "processing results",
                                         "finalising"};

const char *th_agent_step_name(th_agent_step s)
{
    return s >= TH_AGENT_STEP_CONFIGURE && s <= TH_AGENT_STEP_FINALISE ? step_names[s] : "unknown";
}

static void step(run *r, th_agent_step s, const char *detail)
{
    if (r->o->on_step)
        r->o->on_step(s, detail, r->o->ud);
}

static void logf_(run *r, th_log_level level, json_t *data, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Logs a message with optional data (consumed). */
static void logf_(run *r, th_log_level level, json_t *data, const char *fmt, ...)
{
    if (r->o->on_log) {
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        char *text = data ? th__agent_dump(data) : NULL;
        r->o->on_log(level, msg, text, r->o->ud);
        th__free(text);
    }
    json_decref(data);
}

static int push_msg(run *r, th_llm_message m)
{
    if (th__agent_grow((void **)&r->msgs, &r->capmsgs, r->nmsgs, sizeof *r->msgs))
        return TH_ENOMEM;
    r->msgs[r->nmsgs++] = m;
    return 0;
}

/* Keeps `s` (th__ memory, may be NULL = OOM) until the run ends. */
static const char *keep(run *r, char *s)
{
    if (!s ||
        th__agent_grow((void **)&r->strings, &r->capstrings, r->nstrings, sizeof *r->strings)) {
        th__free(s);
        return NULL;
    }
    r->strings[r->nstrings++] = s;
    return s;
}

/* Appends text to a th__ buffer; on OOM frees it and leaves NULL. */
static void append(char **buf, size_t *len, const char *label, const char *text)
{
    if (!*buf || !text || !*text)
        return;
    size_t add = strlen(label) + strlen(text) + 2;
    char *g = th__realloc(*buf, *len + add + 1);
    if (!g) {
        th__free(*buf);
        *buf = NULL;
        return;
    }
    *buf = g;
    *len += (size_t)snprintf(*buf + *len, add + 1, "%s%s\n\n", label, text);
}

char *th__agent_system_prompt(const th_agent_def *d, const char *context)
{
    char *p = th__strdup("");
    size_t len = 0;
    append(&p, &len, "You are the agent ", d->name);
    append(&p, &len, "Role: ", d->role);
    append(&p, &len, "Backstory: ", d->backstory);
    append(&p, &len, "Instructions: ", d->instructions);
    append(&p, &len, "Context: ", context);
    append(&p, &len, "",
           "Use the tools offered when they help. When you are done, answer in plain text; "
           "you may end with a line \"confidence: X\" (X from 0 to 1).");
    return p;
}

/* ---- results ---------------------------------------------------------------- */

/* The first sentence or line of `text`, at most SUMMARY_MAX bytes. */
static json_t *summary_of(const char *text)
{
    while (isspace((unsigned char)*text))
        text++;
    size_t n = 0;
    while (text[n] && text[n] != '\n' && n < SUMMARY_MAX) {
        n++;
        if (strchr(".!?", text[n - 1]) && (!text[n] || isspace((unsigned char)text[n])))
            break;
    }
    while (n > 0 && ((unsigned char)text[n] & 0xC0) == 0x80) /* whole UTF-8 characters */
        n--;
    return json_stringn(text, n);
}

int th__agent_confidence(const char *text, double *out)
{
    const char *found = NULL;
    for (const char *p = text; (p = strcasestr(p, "confidence")); p += 10)
        found = p;
    if (!found)
        return 0;
    const char *p = found + 10;
    while (*p == ' ' || *p == ':' || *p == '=')
        p++;
    char *end;
    double v = strtod(p, &end);
    if (end == p)
        return 0;
    if (*end == '%')
        v /= 100;
    if (!(v >= 0 && v <= 1))
        return 0;
    *out = v;
    return 1;
}

static char *result_json(run *r, const char *output, const th_llm_response *last)
{
    const th_agent_metrics *m = r->m;
    json_t *metrics =
        json_pack("{s:I, s:I, s:I, s:i, s:i, s:I, s:f}", "tokens_used",
                  (json_int_t)(m->input_tokens + m->output_tokens), "input_tokens",
                  (json_int_t)m->input_tokens, "output_tokens", (json_int_t)m->output_tokens,
                  "request_count", m->request_count, "tool_calls", m->tool_calls,
                  "execution_time_ms", (json_int_t)m->execution_ms, "cost_usd", m->cost_usd);
    json_t *v = json_pack("{s:o, s:s, s:s, s:s, s:s, s:i, s:o}", "summary", summary_of(output),
                          "output", output, "agent", r->def->name, "provider", last->provider,
                          "model", last->model, "steps", m->request_count, "metrics", metrics);
    double c;
    if (v && th__agent_confidence(output, &c) &&
        json_object_set_new(v, "confidence", json_real(c))) {
        json_decref(v);
        v = NULL;
    }
    char *s = v ? th__agent_dump(v) : NULL;
    json_decref(v);
    return s;
}

/* ---- the loop ---------------------------------------------------------------- */

static int is_allowed(const th_agent_def *d, const char *name)
{
    for (size_t i = 0; i < d->ntools; i++)
        if (strcmp(d->tools[i], name) == 0)
            return 1;
    return 0;
}

/* Runs one tool call and appends its answer. */
static int run_tool(run *r, const th_llm_tool_call *c)
{
    char *result = NULL;
    th_error te = {0};
    int rc = TH_ENOTFOUND;
    r->m->tool_calls++;
    if (is_allowed(r->def, c->name))
        rc = th_tools_call(r->o->tools, c->name, c->arguments, r->def->name, &result, &te);
    else
        snprintf(te.message, sizeof te.message, "tool \"%s\" is not available", c->name);
    const char *content;
    if (rc == 0) {
        content = keep(r, result);
        logf_(r, TH_LOG_INFO, json_pack("{s:s, s:s}", "tool", c->name, "arguments", c->arguments),
              "tool %s answered", c->name);
    } else {
        char msg[400];
        if (te.field[0])
            snprintf(msg, sizeof msg, "%s: %s", te.field, te.message);
        else
            snprintf(msg, sizeof msg, "%s", te.message);
        json_t *e = json_pack("{s:s, s:s}", "error", msg, "code", th_errname(rc));
        content = keep(r, e ? th__agent_dump(e) : NULL);
        json_decref(e);
        logf_(r, TH_LOG_WARN, json_pack("{s:s, s:s}", "tool", c->name, "error", msg),
              "tool %s failed: %s", c->name, msg);
    }
    if (!content)
        return TH_ENOMEM;
    return push_msg(r, (th_llm_message){.role = TH_LLM_TOOL,
                                        .content = content,
                                        .tool_call_id = c->id,
                                        .tool_name = c->name});
}

/* One model call; *final is set when the answer has no tool calls. */
static int call_model(run *r, const th_llm_response **final, th_error *err)
{
    if (th__agent_grow((void **)&r->answers, &r->capanswers, r->nanswers, sizeof *r->answers))
        return th__err(err, TH_ENOMEM, "", "out of memory");
    /* The agent's provider, then its fallbacks ("provider" or
     * "provider/model"), as the gateway's chain of targets. */
    th_llm_target targets[1 + TH_AGENT_MAX_FALLBACKS];
    char names[TH_AGENT_MAX_FALLBACKS][64];
    size_t nt = 0;
    targets[nt++] = (th_llm_target){r->def->provider, r->def->model};
    for (size_t i = 0; i < r->def->nfallbacks && i < TH_AGENT_MAX_FALLBACKS; i++) {
        const char *f = r->def->fallbacks[i], *slash = strchr(f, '/');
        size_t plen = slash ? (size_t)(slash - f) : strlen(f);
        snprintf(names[i], sizeof names[i], "%.*s", (int)plen, f);
        targets[nt++] = (th_llm_target){names[i], slash ? slash + 1 : NULL};
    }
    th_llm_request req = {.targets = targets,
                          .ntargets = nt,
                          .system = r->system,
                          .messages = r->msgs,
                          .nmessages = r->nmsgs,
                          .tools = r->ntools ? r->tools : NULL,
                          .ntools = r->ntools,
                          .temperature = r->def->temperature,
                          .max_tokens = r->def->max_tokens,
                          .stream = 1,
                          .on_delta = r->o->on_delta,
                          .cancelled = r->o->cancelled,
                          .ud = r->o->ud,
                          .agent = r->def->name};
    th_llm_response *a = &r->answers[r->nanswers];
    memset(a, 0, sizeof *a);
    int rc = th_llm_chat(r->o->gateway, &req, a, err);
    if (rc)
        return rc;
    r->nanswers++;
    r->m->request_count++;
    r->m->input_tokens += a->usage.input_tokens;
    r->m->output_tokens += a->usage.output_tokens;
    r->m->cost_usd += a->cost_usd;
    logf_(r, TH_LOG_INFO,
          json_pack("{s:s, s:s, s:s, s:I, s:I, s:i, s:f}", "provider", a->provider, "model",
                    a->model, "finish_reason", a->finish_reason, "input_tokens",
                    (json_int_t)a->usage.input_tokens, "output_tokens",
                    (json_int_t)a->usage.output_tokens, "tool_calls", (int)a->ntool_calls,
                    "cost_usd", a->cost_usd),
          "model call %d answered (%s)", r->m->request_count, a->finish_reason);
    if (!a->ntool_calls) {
        *final = a;
        return 0;
    }
    rc = push_msg(r, (th_llm_message){.role = TH_LLM_ASSISTANT,
                                      .content = a->text && *a->text ? a->text : NULL,
                                      .tool_calls = a->tool_calls,
                                      .ntool_calls = a->ntool_calls});
    for (size_t i = 0; !rc && i < a->ntool_calls; i++) {
        char detail[160];
        snprintf(detail, sizeof detail, "running tool %s", a->tool_calls[i].name);
        step(r, TH_AGENT_STEP_MODEL, detail);
        rc = run_tool(r, &a->tool_calls[i]);
    }
    return rc ? th__err(err, rc, "", "out of memory") : 0;
}

static int configure(run *r, th_error *err)
{
    const th_agent_def *d = r->def;
    char detail[256];
    snprintf(detail, sizeof detail, "%s/%s", d->provider, d->model ? d->model : "default");
    step(r, TH_AGENT_STEP_CONFIGURE, detail);
    int rc = th_agent_def_validate(d, NULL, err);
    if (rc)
        return rc;
    if (!r->o->gateway)
        return th__err(err, TH_EINVAL, "gateway", "no LLM gateway");
    if (d->ntools && !r->o->tools)
        return th__err(err, TH_ENOTFOUND, "tools[0]", "unknown tool \"%s\"", d->tools[0]);
    if (d->ntools) {
        rc = th_tools_defs(r->o->tools, (const char *const *)d->tools, d->ntools, r->tools,
                           TH_AGENT_MAX_TOOLS, err);
        if (rc < 0)
            return rc;
        r->ntools = (size_t)rc;
    }
    logf_(r, TH_LOG_INFO,
          json_pack("{s:s, s:s?, s:i}", "provider", d->provider, "model", d->model, "tools",
                    (int)r->ntools),
          "step 1/%d: %s: %s", TH_AGENT_NSTEPS, step_names[1], detail);
    return 0;
}

static int converse(run *r, const th_llm_response **final, th_error *err)
{
    step(r, TH_AGENT_STEP_CONTEXT, NULL);
    if (!(r->system = th__agent_system_prompt(r->def, r->o->context)) ||
        push_msg(r, (th_llm_message){.role = TH_LLM_USER, .content = r->o->input}))
        return th__err(err, TH_ENOMEM, "", "out of memory");
    logf_(r, TH_LOG_INFO, json_pack("{s:s}", "system", r->system), "step 2/%d: %s", TH_AGENT_NSTEPS,
          step_names[2]);
    int max = r->def->max_steps ? r->def->max_steps : TH_AGENT_DEFAULT_STEPS;
    for (int i = 0; i < max && !*final; i++) {
        char detail[64];
        snprintf(detail, sizeof detail, "model call %d", i + 1);
        step(r, TH_AGENT_STEP_MODEL, detail);
        logf_(r, TH_LOG_INFO, NULL, "step 3/%d: %s (%s)", TH_AGENT_NSTEPS, step_names[3], detail);
        if (r->o->cancelled && r->o->cancelled(r->o->ud))
            return th__err(err, TH_ECANCELED, "", "cancelled");
        int rc = call_model(r, final, err);
        if (rc)
            return rc;
    }
    if (!*final)
        return th__err(err, TH_ETOOBIG, "max_steps",
                       "no final answer after %d model calls (max_steps)", max);
    return 0;
}

int th_agent_run(const th_agent_run_opts *o, char **result, th_agent_metrics *metrics,
                 th_error *err)
{
    th_agent_metrics local = {0};
    th_error local_err = {0};
    if (!err)
        err = &local_err;
    run r = {.o = o, .def = o ? o->def : NULL, .m = metrics ? metrics : &local};
    memset(r.m, 0, sizeof *r.m);
    *result = NULL;
    if (!o || !o->def || !o->input)
        return th__err(err, TH_EINVAL, o && o->def ? "input" : "agent", "missing");
    int64_t t0 = th__mono_ns();
    const th_llm_response *final = NULL;
    int rc = configure(&r, err);
    if (!rc)
        rc = converse(&r, &final, err);
    if (!rc) {
        step(&r, TH_AGENT_STEP_RESULTS, NULL);
        logf_(&r, TH_LOG_INFO, NULL, "step 4/%d: %s", TH_AGENT_NSTEPS, step_names[4]);
        r.m->execution_ms = (th__mono_ns() - t0) / 1000000;
        char *output = th__agent_utf8_clean(final->text ? final->text : "");
        if (!output || !(*result = result_json(&r, output, final)))
            rc = th__err(err, TH_ENOMEM, "", "out of memory");
        th__free(output);
    }
    r.m->execution_ms = (th__mono_ns() - t0) / 1000000;
    if (!rc) {
        step(&r, TH_AGENT_STEP_FINALISE, NULL);
        logf_(&r, TH_LOG_INFO, NULL, "step 5/%d: %s", TH_AGENT_NSTEPS, step_names[5]);
    } else {
        logf_(&r, TH_LOG_ERROR, NULL, "agent %s failed: %s", r.def ? r.def->name : "?",
              err->message[0] ? err->message : th_strerror(rc));
    }
    for (size_t i = 0; i < r.nanswers; i++)
        th_llm_response_free(&r.answers[i]);
    for (size_t i = 0; i < r.nstrings; i++)
        th__free(r.strings[i]);
    th__free(r.answers);
    th__free(r.strings);
    th__free(r.msgs);
    th__free(r.system);
    return rc;
}
