/*
 * The built-in tools an agent may be allowed: submit_task and
 * get_task_result over an engine, search_memory and remember over a memory.
 * Arguments arrive validated against the schemas below.
 */
#include "agent/agent_impl.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"

#define BUILTIN_TIMEOUT_MS 30000

static const char submit_schema[] =
    "{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"queue\"],"
    "\"properties\":{"
    "\"queue\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":64,"
    "\"description\":\"the queue, which names the handler\"},"
    "\"payload\":{\"description\":\"the task's input, any JSON value\"},"
    "\"priority\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":100},"
    "\"delay_ms\":{\"type\":\"integer\",\"minimum\":0},"
    "\"timeout_ms\":{\"type\":\"integer\",\"minimum\":0},"
    "\"max_retries\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":1000},"
    "\"unique_key\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":256}}}";

static const char result_schema[] =
    "{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"id\"],"
    "\"properties\":{\"id\":{\"type\":\"string\",\"minLength\":26,\"maxLength\":26,"
    "\"description\":\"the task id\"}}}";

static const char search_schema[] =
    "{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"query\"],"
    "\"properties\":{\"query\":{\"type\":\"string\",\"minLength\":1},"
    "\"k\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":50},"
    "\"namespace\":{\"type\":\"string\",\"description\":\"default: this agent's own\"}}}";

static const char remember_schema[] =
    "{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"text\"],"
    "\"properties\":{\"text\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":16384},"
    "\"metadata\":{\"type\":\"object\"}}}";

/* Sets the result from `v` (consumed). */
static int reply(th_tool_ctx *tc, json_t *v)
{
    char *text = v ? th__agent_dump(v) : NULL;
    json_decref(v);
    int rc = text ? th_tool_set_result(tc, text) : TH_ENOMEM;
    th__free(text);
    return rc;
}

static int engine_error(th_tool_ctx *tc, int rc, const th_error *e)
{
    if (e->field[0])
        th_tool_set_error(tc, "%s: %s", e->field, e->message);
    else
        th_tool_set_error(tc, "%s", e->message[0] ? e->message : th_strerror(rc));
    return rc;
}

static int submit_task(th_tool_ctx *tc, const char *args, void *ud)
{
    th_engine *engine = ud;
    json_t *a = th__agent_parse(args);
    char *payload = NULL;
    th_error e = {0};
    int rc;
    if (!a)
        return TH_ENOMEM;
    th_task_spec spec;
    th_task_spec_init(&spec, json_string_value(json_object_get(a, "queue")));
    json_t *p = json_object_get(a, "payload");
    if (p && !(payload = th__agent_dump(p))) {
        rc = TH_ENOMEM;
        goto done;
    }
    spec.payload = payload;
    if (json_object_get(a, "priority"))
        spec.priority = (int)json_integer_value(json_object_get(a, "priority"));
    spec.delay_ms = json_integer_value(json_object_get(a, "delay_ms"));
    spec.timeout_ms = json_integer_value(json_object_get(a, "timeout_ms"));
    if (json_object_get(a, "max_retries"))
        spec.retry.max_retries = (int)json_integer_value(json_object_get(a, "max_retries"));
    spec.unique_key = json_string_value(json_object_get(a, "unique_key"));
    char id[TH_ID_SIZE];
    rc = th_engine_submit(engine, &spec, id, &e);
    if (rc < 0) {
        engine_error(tc, rc, &e);
        goto done;
    }
    rc = reply(tc, json_pack("{s:s, s:s, s:b}", "id", id, "queue", spec.queue, "duplicate", rc));
done:
    th__free(payload);
    json_decref(a);
    return rc;
}

static int get_task_result(th_tool_ctx *tc, const char *args, void *ud)
{
    th_engine *engine = ud;
    json_t *a = th__agent_parse(args);
    if (!a)
        return TH_ENOMEM;
    th_task *t = NULL;
    th_error e = {0};
    int rc = th_engine_get(engine, json_string_value(json_object_get(a, "id")), &t, &e);
    json_decref(a);
    if (rc)
        return engine_error(tc, rc, &e);
    json_t *result = t->result ? th__agent_parse(t->result) : json_null();
    json_t *v = json_pack("{s:s, s:s, s:s, s:i, s:o*, s:s?}", "id", t->id, "queue", t->queue,
                          "state", th_task_state_name(t->state), "progress", t->progress, "result",
                          result, "error", t->error);
    th_task_free(t);
    return reply(tc, v);
}

static int search_memory(th_tool_ctx *tc, const char *args, void *ud)
{
    th_memory *m = ud;
    json_t *a = th__agent_parse(args);
    if (!a)
        return TH_ENOMEM;
    const char *ns = json_string_value(json_object_get(a, "namespace"));
    json_int_t k = json_object_get(a, "k") ? json_integer_value(json_object_get(a, "k")) : 5;
    th_memory_hit *hits = NULL;
    size_t n = 0;
    th_error e = {0};
    int rc =
        th_memory_search(m, ns ? ns : th_tool_agent(tc),
                         json_string_value(json_object_get(a, "query")), (size_t)k, &hits, &n, &e);
    json_decref(a);
    if (rc)
        return engine_error(tc, rc, &e);
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++) {
        json_t *meta = hits[i].metadata ? th__agent_parse(hits[i].metadata) : NULL;
        json_t *o = json_pack("{s:I, s:s, s:f, s:I, s:o*}", "id", (json_int_t)hits[i].id, "text",
                              hits[i].text, "score", hits[i].score, "created_at",
                              (json_int_t)hits[i].created_at, "metadata", meta);
        if (!o || json_array_append_new(arr, o)) {
            json_decref(arr);
            arr = NULL;
        }
    }
    th_memory_hits_free(hits, n);
    return reply(tc, arr ? json_pack("{s:o}", "memories", arr) : NULL);
}

static int remember(th_tool_ctx *tc, const char *args, void *ud)
{
    th_memory *m = ud;
    json_t *a = th__agent_parse(args);
    if (!a)
        return TH_ENOMEM;
    json_t *meta = json_object_get(a, "metadata");
    char *meta_text = meta ? th__agent_dump(meta) : NULL;
    int64_t id = 0;
    th_error e = {0};
    int rc = meta && !meta_text
                 ? TH_ENOMEM
                 : th_memory_add(m, th_tool_agent(tc),
                                 json_string_value(json_object_get(a, "text")), meta_text, &id, &e);
    th__free(meta_text);
    json_decref(a);
    if (rc)
        return rc == TH_ENOMEM ? rc : engine_error(tc, rc, &e);
    return reply(tc, json_pack("{s:I}", "id", (json_int_t)id));
}

int th_tools_register_builtins(th_tools *t, th_engine *engine, th_memory *memory, th_error *err)
{
    int rc = 0;
    if (engine &&
        ((rc = th_tools_register(t, "submit_task",
                                 "Queue a background task; returns its id. Use get_task_result "
                                 "later to read what it produced.",
                                 submit_schema, BUILTIN_TIMEOUT_MS, submit_task, engine, err)) ||
         (rc = th_tools_register(t, "get_task_result",
                                 "Read a task's state, progress, result or error by id.",
                                 result_schema, BUILTIN_TIMEOUT_MS, get_task_result, engine, err))))
        return rc;
    if (memory &&
        ((rc = th_tools_register(t, "search_memory",
                                 "Find the stored memories most similar to a query (top k).",
                                 search_schema, BUILTIN_TIMEOUT_MS, search_memory, memory, err)) ||
         (rc = th_tools_register(t, "remember", "Store a text in this agent's memory.",
                                 remember_schema, BUILTIN_TIMEOUT_MS, remember, memory, err))))
        return rc;
    return 0;
}

/* ---- confidence decay -------------------------------------------------------- */

double th_confidence_decay(double confidence, int64_t age_ms, int64_t half_life_ms)
{
    if (!(confidence > 0)) /* also NaN */
        return 0;
    if (confidence > 1)
        confidence = 1;
    if (half_life_ms <= 0 || age_ms <= 0)
        return confidence;
    return confidence * exp2(-(double)age_ms / (double)half_life_ms);
}

int th_agent_result_decay(const char *result_json, int64_t age_ms, int64_t half_life_ms, char **out)
{
    *out = NULL;
    json_t *v = th__agent_parse(result_json ? result_json : "null");
    if (!v)
        return TH_EINVAL;
    json_t *c = json_object_get(v, "confidence");
    int rc = 0;
    if (json_is_number(c) && json_object_set_new(v, "confidence_decayed",
                                                 json_real(th_confidence_decay(
                                                     json_number_value(c), age_ms, half_life_ms))))
        rc = TH_ENOMEM;
    if (!rc && !(*out = th__agent_dump(v)))
        rc = TH_ENOMEM;
    json_decref(v);
    return rc;
}
