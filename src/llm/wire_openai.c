/*
 * OpenAI chat completions (and OpenAI-compatible servers): request bodies,
 * whole answers, and the SSE stream of "chat.completion.chunk" objects
 * ending with "data: [DONE]".
 */
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "llm/wire_impl.h"

json_t *th__openai_tools(const th_llm_request *req, th_error *err)
{
    json_t *tools = json_array();
    if (!tools)
        return (void)NOMEM(err), NULL;
    for (size_t i = 0; i < req->ntools; i++) {
        const th_llm_tool_def *t = &req->tools[i];
        char field[64];
        snprintf(field, sizeof field, "tools[%zu].parameters", i);
        json_t *params = t->parameters ? th__llm_parse_object(t->parameters) : json_object();
        if (!params) {
            json_decref(tools);
            th__err(err, TH_EINVAL, field, "must be a JSON object");
            return NULL;
        }
        if (!t->name || !*t->name) {
            json_decref(params);
            json_decref(tools);
            snprintf(field, sizeof field, "tools[%zu].name", i);
            th__err(err, TH_EINVAL, field, "must not be empty");
            return NULL;
        }
        json_t *fn = json_pack("{s:s, s:o}", "name", t->name, "parameters", params);
        if (fn && t->description)
            json_object_set_new(fn, "description", json_string(t->description));
        json_t *tool = fn ? json_pack("{s:s, s:o}", "type", "function", "function", fn) : NULL;
        if (!tool || json_array_append_new(tools, tool)) {
            json_decref(tools);
            return (void)NOMEM(err), NULL;
        }
    }
    return tools;
}

static const char *role_name(th_llm_role r)
{
    switch (r) {
    case TH_LLM_SYSTEM:
        return "system";
    case TH_LLM_USER:
        return "user";
    case TH_LLM_ASSISTANT:
        return "assistant";
    case TH_LLM_TOOL:
        return "tool";
    }
    return "user";
}

/* One message in OpenAI's shape; NULL with err set. */
static json_t *message(const th_llm_message *m, size_t i, th_error *err)
{
    char field[64];
    json_t *j = json_object();
    if (!j)
        return (void)NOMEM(err), NULL;
    json_object_set_new(j, "role", json_string(role_name(m->role)));
    if (m->role == TH_LLM_TOOL) {
        if (!m->tool_call_id || !*m->tool_call_id) {
            json_decref(j);
            snprintf(field, sizeof field, "messages[%zu].tool_call_id", i);
            th__err(err, TH_EINVAL, field, "a tool message needs the id of its call");
            return NULL;
        }
        json_object_set_new(j, "tool_call_id", json_string(m->tool_call_id));
    }
    if (m->content)
        json_object_set_new(j, "content", json_string(m->content));
    else
        json_object_set_new(j, "content",
                            m->role == TH_LLM_ASSISTANT ? json_null() : json_string(""));
    if (m->role == TH_LLM_ASSISTANT && m->ntool_calls) {
        json_t *calls = json_array();
        json_object_set_new(j, "tool_calls", calls);
        for (size_t k = 0; k < m->ntool_calls; k++) {
            const th_llm_tool_call *c = &m->tool_calls[k];
            json_t *call = json_pack("{s:s, s:s, s:{s:s, s:s}}", "id", c->id ? c->id : "", "type",
                                     "function", "function", "name", c->name ? c->name : "",
                                     "arguments", c->arguments ? c->arguments : "{}");
            if (!call || json_array_append_new(calls, call)) {
                json_decref(j);
                return (void)NOMEM(err), NULL;
            }
        }
    }
    if (!json_is_string(json_object_get(j, "role"))) {
        json_decref(j);
        return (void)NOMEM(err), NULL;
    }
    return j;
}

json_t *th__openai_like_body(const th__llm_wire_req *w, th__llm_message_fn make_message, int *rc,
                             th_error *err)
{
    const th_llm_request *r = w->req;
    json_t *root = json_object(), *msgs = json_array();
    *rc = TH_ENOMEM;
    if (!root || !msgs || json_object_set(root, "messages", msgs))
        goto nomem;
    json_object_set_new(root, "model", json_string(w->model ? w->model : ""));
    if (r->system && *r->system &&
        json_array_append_new(msgs,
                              json_pack("{s:s, s:s}", "role", "system", "content", r->system)))
        goto nomem;
    for (size_t i = 0; i < r->nmessages; i++) {
        json_t *m = make_message(&r->messages[i], i, err);
        if (!m) {
            *rc = err ? err->code : TH_EINVAL;
            goto fail;
        }
        if (json_array_append_new(msgs, m))
            goto nomem;
    }
    if (r->ntools) {
        json_t *tools = th__openai_tools(r, err);
        if (!tools) {
            *rc = err ? err->code : TH_EINVAL;
            goto fail;
        }
        json_object_set_new(root, "tools", tools);
    }
    json_decref(msgs);
    return root;
nomem:
    *rc = NOMEM(err);
fail:
    json_decref(msgs);
    json_decref(root);
    return NULL;
}

int th__openai_chat_http(const th__llm_wire_req *w, th__llm_http *out, th_error *err)
{
    const th_llm_request *r = w->req;
    int rc;
    json_t *root = th__openai_like_body(w, message, &rc, err);
    if (!root)
        return rc;
    json_object_set_new(root, "max_tokens", json_integer(r->max_tokens > 0 ? r->max_tokens : 1024));
    if (r->temperature >= 0)
        json_object_set_new(root, "temperature", json_real(r->temperature));
    if (r->stream) {
        json_object_set_new(root, "stream", json_true());
        json_object_set_new(root, "stream_options", json_pack("{s:b}", "include_usage", 1));
    }
    if (th__llm_url(out, w->base_url, "/chat/completions") || th__llm_bearer(out, w->api_key) ||
        th__llm_header(out, "Content-Type", "application/json")) {
        json_decref(root);
        return NOMEM(err);
    }
    return th__llm_body(out, root, err);
}

static void usage(const json_t *u, th_llm_response *out)
{
    if (!json_is_object(u))
        return;
    out->usage.input_tokens = json_integer_value(json_object_get(u, "prompt_tokens"));
    out->usage.output_tokens = json_integer_value(json_object_get(u, "completion_tokens"));
}

int th__openai_parse_chat(const char *body, size_t len, th_llm_response *out, th_error *err)
{
    json_error_t je;
    json_t *root = json_loadb(body, len, 0, &je);
    if (!json_is_object(root)) {
        json_decref(root);
        return th__err(err, TH_EUPSTREAM, "", "malformed answer: %s", je.text);
    }
    json_t *choice = json_array_get(json_object_get(root, "choices"), 0);
    json_t *msg = json_object_get(choice, "message");
    if (!json_is_object(msg)) {
        json_decref(root);
        return th__err(err, TH_EUPSTREAM, "", "answer without choices[0].message");
    }
    int rc = 0;
    const char *text = th__llm_jstr(msg, "content");
    if (!(out->text = th__strdup(text ? text : "")))
        rc = TH_ENOMEM;
    json_t *calls = json_object_get(msg, "tool_calls");
    for (size_t i = 0; rc == 0 && i < json_array_size(calls); i++) {
        json_t *c = json_array_get(calls, i), *fn = json_object_get(c, "function");
        const char *name = th__llm_jstr(fn, "name");
        if (!name) {
            json_decref(root);
            return th__err(err, TH_EUPSTREAM, "", "tool call without a function name");
        }
        rc = th__llm_add_call(out, th__llm_jstr(c, "id"), name, th__llm_jstr(fn, "arguments"));
    }
    th__llm_set_finish(out, th__llm_jstr(choice, "finish_reason"));
    usage(json_object_get(root, "usage"), out);
    json_decref(root);
    return rc < 0 ? NOMEM(err) : 0;
}

int th__openai_error(const json_t *root, char *buf, size_t cap)
{
    json_t *e = json_object_get(root, "error");
    if (!e || json_is_null(e))
        return 0;
    const char *m = json_is_string(e) ? json_string_value(e) : th__llm_jstr(e, "message");
    snprintf(buf, cap, "%s", m ? m : "unknown error");
    return 1;
}

/* One tool_calls delta. */
static int call_delta(th__llm_stream *s, const json_t *d, th_error *err)
{
    json_t *idx = json_object_get(d, "index");
    int index = json_is_integer(idx) ? (int)json_integer_value(idx) : 0;
    th__llm_pcall *c = th__llm_stream_call(s, index);
    if (!c)
        return th__err(err, TH_EUPSTREAM, "", "too many tool calls or out of memory");
    json_t *fn = json_object_get(d, "function");
    const char *id = th__llm_jstr(d, "id"), *name = th__llm_jstr(fn, "name");
    const char *args = th__llm_jstr(fn, "arguments");
    if (id && !c->id && !(c->id = th__strdup(id)))
        return NOMEM(err);
    if (name && !c->name && !(c->name = th__strdup(name)))
        return NOMEM(err);
    if (args) {
        int rc = th__llm_buf_add(&c->args, args, strlen(args));
        if (rc < 0)
            return th__err(err, rc == TH_ENOMEM ? TH_ENOMEM : TH_EUPSTREAM, "",
                           "tool call arguments too long");
    }
    return 0;
}

int th__openai_event(th__llm_stream *s, const char *event, const char *data, size_t len,
                     th_error *err)
{
    (void)event;
    if (s->done)
        return 0; /* nothing counts after [DONE] */
    if (len == 6 && !memcmp(data, "[DONE]", 6)) {
        s->done = 1;
        return 0;
    }
    json_error_t je;
    json_t *root = json_loadb(data, len, 0, &je);
    if (!json_is_object(root)) {
        json_decref(root);
        return th__err(err, TH_EUPSTREAM, "", "malformed stream chunk: %s", je.text);
    }
    char msg[200];
    if (th__openai_error(root, msg, sizeof msg)) {
        json_decref(root);
        return th__err(err, TH_EUPSTREAM, "", "%s", msg);
    }
    int rc = 0;
    json_t *choices = json_object_get(root, "choices");
    for (size_t i = 0; rc == 0 && i < json_array_size(choices); i++) {
        json_t *ch = json_array_get(choices, i), *d = json_object_get(ch, "delta");
        const char *t = th__llm_jstr(d, "content");
        if (t)
            rc = th__llm_stream_text(s, t, strlen(t), err);
        json_t *calls = json_object_get(d, "tool_calls");
        for (size_t k = 0; rc == 0 && k < json_array_size(calls); k++)
            rc = call_delta(s, json_array_get(calls, k), err);
        th__llm_set_finish(s->out, th__llm_jstr(ch, "finish_reason"));
    }
    usage(json_object_get(root, "usage"), s->out);
    json_decref(root);
    return rc;
}
