/*
 * Anthropic Messages: request bodies (system as a top-level field, tools
 * with input_schema, tool_use / tool_result content blocks), whole answers,
 * and the SSE stream of named events ending with message_stop.
 */
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "llm/wire_impl.h"

static json_t *tools_json(const th_llm_request *r, th_error *err)
{
    json_t *tools = json_array();
    if (!tools)
        return (void)NOMEM(err), NULL;
    for (size_t i = 0; i < r->ntools; i++) {
        const th_llm_tool_def *t = &r->tools[i];
        char field[64];
        snprintf(field, sizeof field, "tools[%zu].parameters", i);
        json_t *schema = t->parameters ? th__llm_parse_object(t->parameters)
                                       : json_pack("{s:s}", "type", "object");
        if (!schema || !t->name || !*t->name) {
            json_decref(schema);
            json_decref(tools);
            if (!schema)
                th__err(err, TH_EINVAL, field, "must be a JSON object");
            else
                th__err(err, TH_EINVAL, "tools.name", "must not be empty");
            return NULL;
        }
        json_t *tool = json_pack("{s:s, s:o}", "name", t->name, "input_schema", schema);
        if (tool && t->description)
            json_object_set_new(tool, "description", json_string(t->description));
        if (!tool || json_array_append_new(tools, tool)) {
            json_decref(tools);
            return (void)NOMEM(err), NULL;
        }
    }
    return tools;
}

/* Appends block to the last message when it has `role`, else a new one. */
static int add_block(json_t *msgs, const char *role, json_t *block)
{
    if (!block)
        return -1;
    json_t *last = json_array_get(msgs, json_array_size(msgs) - 1);
    const char *lr = last ? th__llm_jstr(last, "role") : NULL;
    if (!lr || strcmp(lr, role) != 0) {
        last = json_pack("{s:s, s:[]}", "role", role, "content");
        if (!last || json_array_append_new(msgs, last)) {
            json_decref(block);
            return -1;
        }
    }
    return json_array_append_new(json_object_get(last, "content"), block);
}

static int messages(const th_llm_request *r, json_t *msgs, th__llm_buf *sys, th_error *err)
{
    char field[96];
    for (size_t i = 0; i < r->nmessages; i++) {
        const th_llm_message *m = &r->messages[i];
        const char *text = m->content ? m->content : "";
        switch (m->role) {
        case TH_LLM_SYSTEM:
            if ((sys->len && th__llm_buf_add(sys, "\n\n", 2)) ||
                th__llm_buf_add(sys, text, strlen(text)))
                return NOMEM(err);
            break;
        case TH_LLM_USER:
            if (add_block(msgs, "user", json_pack("{s:s, s:s}", "type", "text", "text", text)))
                return NOMEM(err);
            break;
        case TH_LLM_TOOL:
            if (!m->tool_call_id || !*m->tool_call_id) {
                snprintf(field, sizeof field, "messages[%zu].tool_call_id", i);
                return th__err(err, TH_EINVAL, field, "a tool result needs the id of its call");
            }
            if (add_block(msgs, "user",
                          json_pack("{s:s, s:s, s:s}", "type", "tool_result", "tool_use_id",
                                    m->tool_call_id, "content", text)))
                return NOMEM(err);
            break;
        case TH_LLM_ASSISTANT:
            if (m->content && *m->content &&
                add_block(msgs, "assistant", json_pack("{s:s, s:s}", "type", "text", "text", text)))
                return NOMEM(err);
            for (size_t k = 0; k < m->ntool_calls; k++) {
                const th_llm_tool_call *c = &m->tool_calls[k];
                json_t *input = th__llm_parse_object(c->arguments ? c->arguments : "{}");
                if (!input) {
                    snprintf(field, sizeof field, "messages[%zu].tool_calls[%zu].arguments", i, k);
                    return th__err(err, TH_EINVAL, field, "must be a JSON object");
                }
                if (add_block(msgs, "assistant",
                              json_pack("{s:s, s:s, s:s, s:o}", "type", "tool_use", "id",
                                        c->id ? c->id : "", "name", c->name ? c->name : "", "input",
                                        input)))
                    return NOMEM(err);
            }
            if (!m->ntool_calls && !(m->content && *m->content) &&
                add_block(msgs, "assistant", json_pack("{s:s, s:s}", "type", "text", "text", "")))
                return NOMEM(err);
            break;
        }
    }
    return 0;
}

int th__anthropic_chat_http(const th__llm_wire_req *w, th__llm_http *out, th_error *err)
{
    const th_llm_request *r = w->req;
    th__llm_buf sys = {0};
    json_t *root = json_object(), *msgs = json_array();
    int rc;
    if (!root || !msgs || json_object_set(root, "messages", msgs))
        goto nomem;
    if (r->system && *r->system && th__llm_buf_add(&sys, r->system, strlen(r->system)))
        goto nomem;
    if ((rc = messages(r, msgs, &sys, err)) < 0)
        goto fail;
    json_object_set_new(root, "model", json_string(w->model ? w->model : ""));
    json_object_set_new(root, "max_tokens", json_integer(r->max_tokens > 0 ? r->max_tokens : 1024));
    if (sys.len)
        json_object_set_new(root, "system", json_string(sys.p));
    if (r->ntools) {
        json_t *tools = tools_json(r, err);
        if (!tools) {
            rc = err ? err->code : TH_EINVAL;
            goto fail;
        }
        json_object_set_new(root, "tools", tools);
    }
    if (r->temperature >= 0)
        json_object_set_new(root, "temperature", json_real(r->temperature));
    if (r->stream)
        json_object_set_new(root, "stream", json_true());
    if (th__llm_url(out, w->base_url, "/v1/messages") ||
        (w->api_key && th__llm_header(out, "x-api-key", w->api_key)) ||
        th__llm_header(out, "anthropic-version",
                       w->anthropic_version ? w->anthropic_version : "2023-06-01") ||
        th__llm_header(out, "Content-Type", "application/json"))
        goto nomem;
    th__llm_buf_free(&sys);
    json_decref(msgs);
    return th__llm_body(out, root, err);
nomem:
    rc = NOMEM(err);
fail:
    th__llm_buf_free(&sys);
    json_decref(msgs);
    json_decref(root);
    return rc;
}

static void usage(const json_t *u, th_llm_response *out)
{
    json_t *in = json_object_get(u, "input_tokens"), *o = json_object_get(u, "output_tokens");
    if (json_is_integer(in))
        out->usage.input_tokens = json_integer_value(in);
    if (json_is_integer(o))
        out->usage.output_tokens = json_integer_value(o);
}

int th__anthropic_parse_chat(const char *body, size_t len, th_llm_response *out, th_error *err)
{
    json_error_t je;
    json_t *root = json_loadb(body, len, 0, &je);
    if (!json_is_object(root)) {
        json_decref(root);
        return th__err(err, TH_EUPSTREAM, "", "malformed answer: %s", je.text);
    }
    json_t *content = json_object_get(root, "content");
    if (!json_is_array(content)) {
        json_decref(root);
        return th__err(err, TH_EUPSTREAM, "", "answer without content");
    }
    th__llm_buf text = {0};
    int rc = th__llm_buf_add(&text, "", 0);
    for (size_t i = 0; rc == 0 && i < json_array_size(content); i++) {
        json_t *b = json_array_get(content, i);
        const char *type = th__llm_jstr(b, "type");
        if (type && !strcmp(type, "text")) {
            const char *t = th__llm_jstr(b, "text");
            rc = t ? th__llm_buf_add(&text, t, strlen(t)) : 0;
        } else if (type && !strcmp(type, "tool_use")) {
            json_t *input = json_object_get(b, "input");
            char *args = input ? th__llm_dump(input) : NULL;
            if (input && !args)
                rc = TH_ENOMEM;
            else
                rc = th__llm_add_call(out, th__llm_jstr(b, "id"), th__llm_jstr(b, "name"), args);
            th__free(args);
        }
    }
    out->text = text.p;
    th__llm_set_finish(out, th__llm_jstr(root, "stop_reason"));
    usage(json_object_get(root, "usage"), out);
    json_decref(root);
    return rc < 0 ? NOMEM(err) : 0;
}

static int event_error(const json_t *root, th_error *err)
{
    json_t *e = json_object_get(root, "error");
    const char *m = th__llm_jstr(e, "message"), *t = th__llm_jstr(e, "type");
    return th__err(err, TH_EUPSTREAM, "", "%s%s%s", t ? t : "", t ? ": " : "",
                   m ? m : "error event");
}

int th__anthropic_event(th__llm_stream *s, const char *event, const char *data, size_t len,
                        th_error *err)
{
    if (s->done)
        return 0;
    json_error_t je;
    json_t *root = json_loadb(data, len, 0, &je);
    if (!json_is_object(root)) {
        json_decref(root);
        return th__err(err, TH_EUPSTREAM, "", "malformed stream event: %s", je.text);
    }
    /* The event name and the data's "type" agree; the data wins when the
     * event line is missing. */
    const char *type = th__llm_jstr(root, "type");
    if (!type || !*type)
        type = event;
    int rc = 0;
    json_t *idx = json_object_get(root, "index");
    int index = json_is_integer(idx) ? (int)json_integer_value(idx) : 0;
    if (!strcmp(type, "error")) {
        rc = event_error(root, err);
    } else if (!strcmp(type, "message_start")) {
        usage(json_object_get(json_object_get(root, "message"), "usage"), s->out);
    } else if (!strcmp(type, "content_block_start")) {
        json_t *b = json_object_get(root, "content_block");
        const char *bt = th__llm_jstr(b, "type");
        if (bt && !strcmp(bt, "tool_use")) {
            th__llm_pcall *c = th__llm_stream_call(s, index);
            const char *id = th__llm_jstr(b, "id"), *name = th__llm_jstr(b, "name");
            if (!c || (id && !c->id && !(c->id = th__strdup(id))) ||
                (name && !c->name && !(c->name = th__strdup(name))))
                rc = NOMEM(err);
        } else if (bt && !strcmp(bt, "text")) {
            const char *t = th__llm_jstr(b, "text");
            if (t && *t)
                rc = th__llm_stream_text(s, t, strlen(t), err);
        }
    } else if (!strcmp(type, "content_block_delta")) {
        json_t *d = json_object_get(root, "delta");
        const char *dt = th__llm_jstr(d, "type");
        if (dt && !strcmp(dt, "text_delta")) {
            const char *t = th__llm_jstr(d, "text");
            if (t)
                rc = th__llm_stream_text(s, t, strlen(t), err);
        } else if (dt && !strcmp(dt, "input_json_delta")) {
            const char *p = th__llm_jstr(d, "partial_json");
            th__llm_pcall *c = th__llm_stream_call(s, index);
            if (!c)
                rc = NOMEM(err);
            else if (p && th__llm_buf_add(&c->args, p, strlen(p)) < 0)
                rc = th__err(err, TH_EUPSTREAM, "", "tool input too long");
        }
    } else if (!strcmp(type, "message_delta")) {
        th__llm_set_finish(s->out, th__llm_jstr(json_object_get(root, "delta"), "stop_reason"));
        usage(json_object_get(root, "usage"), s->out);
    } else if (!strcmp(type, "message_stop")) {
        s->done = 1;
    } /* ping, content_block_stop and unknown events change nothing */
    json_decref(root);
    return rc;
}
