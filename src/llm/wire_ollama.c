/*
 * Ollama /api/chat: request bodies (tool call arguments as objects,
 * options.temperature / options.num_predict), whole answers and the NDJSON
 * stream whose last line has "done": true.
 */
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "llm/wire_impl.h"

static const char *role_name(th_llm_role r)
{
    static const char *names[] = {"system", "user", "assistant", "tool"};
    return (unsigned)r < 4 ? names[r] : "user";
}

static json_t *message(const th_llm_message *m, size_t i, th_error *err)
{
    json_t *j = json_pack("{s:s, s:s}", "role", role_name(m->role), "content",
                          m->content ? m->content : "");
    if (!j)
        return (void)NOMEM(err), NULL;
    if (m->role == TH_LLM_TOOL && m->tool_name)
        json_object_set_new(j, "tool_name", json_string(m->tool_name));
    if (m->role == TH_LLM_ASSISTANT && m->ntool_calls) {
        json_t *calls = json_array();
        json_object_set_new(j, "tool_calls", calls);
        for (size_t k = 0; k < m->ntool_calls; k++) {
            const th_llm_tool_call *c = &m->tool_calls[k];
            json_t *args = th__llm_parse_object(c->arguments ? c->arguments : "{}");
            if (!args) {
                char field[96];
                json_decref(j);
                snprintf(field, sizeof field, "messages[%zu].tool_calls[%zu].arguments", i, k);
                th__err(err, TH_EINVAL, field, "must be a JSON object");
                return NULL;
            }
            json_t *call = json_pack("{s:{s:s, s:o}}", "function", "name", c->name ? c->name : "",
                                     "arguments", args);
            if (!call || json_array_append_new(calls, call)) {
                json_decref(j);
                return (void)NOMEM(err), NULL;
            }
        }
    }
    return j;
}

int th__ollama_chat_http(const th__llm_wire_req *w, th__llm_http *out, th_error *err)
{
    const th_llm_request *r = w->req;
    int rc;
    json_t *root = th__openai_like_body(w, message, &rc, err), *opts = json_object();
    if (!root || !opts) {
        json_decref(opts);
        json_decref(root);
        return root ? NOMEM(err) : rc;
    }
    json_object_set_new(root, "stream", json_boolean(r->stream));
    if (r->temperature >= 0)
        json_object_set_new(opts, "temperature", json_real(r->temperature));
    json_object_set_new(opts, "num_predict",
                        json_integer(r->max_tokens > 0 ? r->max_tokens : 1024));
    if (json_object_set(root, "options", opts))
        goto nomem;
    if (th__llm_url(out, w->base_url, "/api/chat") || th__llm_bearer(out, w->api_key) ||
        th__llm_header(out, "Content-Type", "application/json"))
        goto nomem;
    json_decref(opts);
    return th__llm_body(out, root, err);
nomem:
    json_decref(opts);
    json_decref(root);
    return NOMEM(err);
}

/* Tool calls of one message: Ollama gives no ids, so they are numbered
 * "call_<n>" in the order they arrive. */
static int calls(const json_t *msg, th_llm_response *out, th_error *err)
{
    json_t *list = json_object_get(msg, "tool_calls");
    for (size_t i = 0; i < json_array_size(list); i++) {
        json_t *c = json_array_get(list, i), *fn = json_object_get(c, "function");
        const char *name = th__llm_jstr(fn, "name");
        if (!name)
            return th__err(err, TH_EUPSTREAM, "", "tool call without a function name");
        json_t *a = json_object_get(fn, "arguments");
        char *args = NULL;
        if (json_is_string(a))
            args = th__strdup(json_string_value(a));
        else if (a)
            args = th__llm_dump(a);
        if (a && !args)
            return NOMEM(err);
        char id[32];
        const char *given = th__llm_jstr(c, "id");
        snprintf(id, sizeof id, "call_%zu", out->ntool_calls);
        int rc = th__llm_add_call(out, given ? given : id, name, args);
        th__free(args);
        if (rc < 0)
            return NOMEM(err);
    }
    return 0;
}

static void finish(const json_t *root, th_llm_response *out)
{
    json_t *p = json_object_get(root, "prompt_eval_count"),
           *e = json_object_get(root, "eval_count");
    if (json_is_integer(p))
        out->usage.input_tokens = json_integer_value(p);
    if (json_is_integer(e))
        out->usage.output_tokens = json_integer_value(e);
    const char *r = th__llm_jstr(root, "done_reason");
    th__llm_set_finish(out, r ? r : "stop");
    if (out->ntool_calls && !strcmp(out->finish_reason, "stop"))
        th__llm_set_finish(out, "tool_calls");
}

int th__ollama_parse_chat(const char *body, size_t len, th_llm_response *out, th_error *err)
{
    json_error_t je;
    json_t *root = json_loadb(body, len, 0, &je);
    if (!json_is_object(root)) {
        json_decref(root);
        return th__err(err, TH_EUPSTREAM, "", "malformed answer: %s", je.text);
    }
    const char *e = th__llm_jstr(root, "error");
    json_t *msg = json_object_get(root, "message");
    if (e || !json_is_object(msg)) {
        int rc = th__err(err, TH_EUPSTREAM, "", "%s", e ? e : "answer without message");
        json_decref(root);
        return rc;
    }
    const char *text = th__llm_jstr(msg, "content");
    int rc = 0;
    if (!(out->text = th__strdup(text ? text : "")))
        rc = NOMEM(err);
    if (!rc)
        rc = calls(msg, out, err);
    if (!rc)
        finish(root, out);
    json_decref(root);
    return rc;
}

int th__ollama_line(th__llm_stream *s, const char *line, size_t len, th_error *err)
{
    if (s->done)
        return 0;
    json_error_t je;
    json_t *root = json_loadb(line, len, 0, &je);
    if (!json_is_object(root)) {
        json_decref(root);
        return th__err(err, TH_EUPSTREAM, "", "malformed stream line: %s", je.text);
    }
    int rc = 0;
    const char *e = th__llm_jstr(root, "error");
    json_t *msg = json_object_get(root, "message");
    const char *t = th__llm_jstr(msg, "content");
    if (e)
        rc = th__err(err, TH_EUPSTREAM, "", "%s", e);
    if (!rc && t && *t)
        rc = th__llm_stream_text(s, t, strlen(t), err);
    if (!rc && json_array_size(json_object_get(msg, "tool_calls"))) {
        s->started = 1;
        rc = calls(msg, s->out, err);
    }
    if (!rc && json_is_true(json_object_get(root, "done"))) {
        finish(root, s->out);
        s->done = 1;
    }
    json_decref(root);
    return rc;
}
