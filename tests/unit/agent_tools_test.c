/*
 * The tool registry (src/agent/tools.c) and the built-in tools
 * (src/agent/builtin_tools.c): registration rules, argument validation
 * before the call, tool errors and timeouts as return codes with messages,
 * definitions for the gateway, submit_task / get_task_result over a real
 * engine, search_memory / remember over a memory with a test embedder, and
 * confidence decay.
 */
#include "thtest.h"

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <taskhive/agent.h>

static int echo_tool(th_tool_ctx *tc, const char *args, void *ud)
{
    (void)ud;
    char buf[512];
    snprintf(buf, sizeof buf, "{\"args\":%s,\"agent\":\"%s\"}", args, th_tool_agent(tc));
    return th_tool_set_result(tc, buf);
}

static int failing_tool(th_tool_ctx *tc, const char *args, void *ud)
{
    (void)args;
    (void)ud;
    th_tool_set_error(tc, "the disk is full");
    return TH_EIO;
}

static int silent_tool(th_tool_ctx *tc, const char *args, void *ud)
{
    (void)tc;
    (void)args;
    (void)ud;
    return 0;
}

/* Sleeps until cancelled (counting how it ended in *ud). */
static int slow_tool(th_tool_ctx *tc, const char *args, void *ud)
{
    (void)args;
    atomic_int *saw_cancel = ud;
    for (int i = 0; i < 4000 && !th_tool_cancelled(tc); i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    if (th_tool_cancelled(tc))
        atomic_fetch_add(saw_cancel, 1);
    return th_tool_set_result(tc, "{\"late\":true}");
}

static const char count_schema[] =
    "{\"type\":\"object\",\"required\":[\"count\"],\"additionalProperties\":false,"
    "\"properties\":{\"count\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":10}}}";

static void test_register(void **state)
{
    (void)state;
    th_tools *t = th_tools_new();
    th_error e = {0};
    assert_int_equal(th_tools_register(t, "echo", "Echoes", count_schema, 0, echo_tool, NULL, &e),
                     0);
    assert_int_equal(th_tools_register(t, "echo", "again", NULL, 0, echo_tool, NULL, &e),
                     TH_ECONFLICT);
    assert_int_equal(th_tools_register(t, "bad name", "", NULL, 0, echo_tool, NULL, &e), TH_EINVAL);
    assert_string_equal(e.field, "name");
    assert_int_equal(th_tools_register(t, "", "", NULL, 0, echo_tool, NULL, &e), TH_EINVAL);
    assert_int_equal(th_tools_register(t, "x", "", NULL, 0, NULL, NULL, &e), TH_EINVAL);
    assert_string_equal(e.field, "fn");
    assert_int_equal(th_tools_register(t, "x", "", NULL, -1, echo_tool, NULL, &e), TH_EINVAL);
    assert_string_equal(e.field, "timeout_ms");
    /* Bad schemas are refused at registration, naming the keyword. */
    assert_int_equal(th_tools_register(t, "x", "",
                                       "{\"type\":\"object\",\"properties\":"
                                       "{\"n\":{\"type\":\"int\"}}}",
                                       0, echo_tool, NULL, &e),
                     TH_EINVAL);
    assert_string_equal(e.field, "schema.properties.n.type");
    assert_int_equal(th_tools_register(t, "x", "", "{\"type\":\"string\"}", 0, echo_tool, NULL, &e),
                     TH_EINVAL);
    assert_string_equal(e.field, "schema.type");
    assert_int_equal(th_tools_register(t, "x", "", "not json", 0, echo_tool, NULL, &e), TH_EINVAL);
    assert_int_equal(th_tools_count(t), 1);
    assert_true(th_tools_has(t, "echo"));
    assert_false(th_tools_has(t, "x"));
    assert_string_equal(th_tools_name(t, 0), "echo");
    assert_null(th_tools_name(t, 1));
    th_tools_free(t);
    th_tools_free(NULL);
}

static void test_call_validates(void **state)
{
    (void)state;
    th_tools *t = th_tools_new();
    assert_int_equal(th_tools_register(t, "echo", "Echoes", count_schema, 0, echo_tool, NULL, NULL),
                     0);
    char *out = NULL;
    th_error e = {0};
    assert_int_equal(th_tools_call(t, "echo", "{\"count\":3}", "scout", &out, &e), 0);
    assert_json_equal(out, "{\"args\":{\"count\":3},\"agent\":\"scout\"}");
    th_agent_free(out);

    assert_int_equal(th_tools_call(t, "echo", "{\"count\":11}", NULL, &out, &e), TH_EINVAL);
    assert_null(out);
    assert_string_equal(e.field, "arguments.count");
    assert_string_equal(e.message, "must be an integer \u2264 10");
    assert_int_equal(th_tools_call(t, "echo", "{}", NULL, &out, &e), TH_EINVAL);
    assert_string_equal(e.field, "arguments.count");
    assert_int_equal(th_tools_call(t, "echo", "{\"count\":1,\"x\":0}", NULL, &out, &e), TH_EINVAL);
    assert_string_equal(e.field, "arguments.x");
    assert_int_equal(th_tools_call(t, "echo", "{nope", NULL, &out, &e), TH_EINVAL);
    assert_string_equal(e.field, "arguments");
    assert_int_equal(th_tools_call(t, "nosuch", "{}", NULL, &out, &e), TH_ENOTFOUND);
    assert_true(thtest_contains(e.message, "nosuch"));
    th_tools_free(t);
}

static void test_tool_errors(void **state)
{
    (void)state;
    th_tools *t = th_tools_new();
    assert_int_equal(th_tools_register(t, "fail", "", NULL, 0, failing_tool, NULL, NULL), 0);
    assert_int_equal(
        th_tools_register(t, "fail_threaded", "", NULL, 5000, failing_tool, NULL, NULL), 0);
    assert_int_equal(th_tools_register(t, "silent", "", NULL, 0, silent_tool, NULL, NULL), 0);
    char *out = NULL;
    th_error e = {0};
    assert_int_equal(th_tools_call(t, "fail", "{}", NULL, &out, &e), TH_EIO);
    assert_string_equal(e.message, "the disk is full");
    assert_null(out);
    assert_int_equal(th_tools_call(t, "fail_threaded", NULL, NULL, &out, &e), TH_EIO);
    assert_string_equal(e.message, "the disk is full");
    /* A tool that sets no result answers {}. */
    assert_int_equal(th_tools_call(t, "silent", "", NULL, &out, &e), 0);
    assert_string_equal(out, "{}");
    th_agent_free(out);
    th_tools_free(t);
}

static void test_timeout(void **state)
{
    (void)state;
    atomic_int saw_cancel = 0;
    th_tools *t = th_tools_new();
    assert_int_equal(th_tools_register(t, "slow", "", NULL, 30, slow_tool, &saw_cancel, NULL), 0);
    assert_int_equal(th_tools_register(t, "echo", "", NULL, 5000, echo_tool, NULL, NULL), 0);
    char *out = NULL;
    th_error e = {0};
    assert_int_equal(th_tools_call(t, "slow", "{}", NULL, &out, &e), TH_ETIMEDOUT);
    assert_null(out);
    assert_string_equal(e.message, "tool \"slow\" timed out after 30 ms");
    /* A threaded tool that answers in time returns its result. */
    assert_int_equal(th_tools_call(t, "echo", "{\"a\":1}", "x", &out, &e), 0);
    assert_json_equal(out, "{\"args\":{\"a\":1},\"agent\":\"x\"}");
    th_agent_free(out);
    /* Freeing waits for the abandoned call, which saw its cancellation. */
    th_tools_free(t);
    assert_int_equal(atomic_load(&saw_cancel), 1);
}

static void test_defs(void **state)
{
    (void)state;
    th_tools *t = th_tools_new();
    assert_int_equal(th_tools_register(t, "a", "Tool A", count_schema, 0, echo_tool, NULL, NULL),
                     0);
    assert_int_equal(th_tools_register(t, "b", "Tool B", NULL, 0, echo_tool, NULL, NULL), 0);
    th_llm_tool_def defs[4];
    th_error e = {0};
    assert_int_equal(th_tools_defs(t, NULL, 0, defs, 4, &e), 2);
    assert_string_equal(defs[0].name, "a");
    assert_string_equal(defs[0].description, "Tool A");
    assert_string_equal(defs[0].parameters, count_schema);
    assert_string_equal(defs[1].parameters, "{\"type\":\"object\"}");
    const char *names[] = {"b", "zz"};
    assert_int_equal(th_tools_defs(t, names, 1, defs, 4, &e), 1);
    assert_string_equal(defs[0].name, "b");
    assert_int_equal(th_tools_defs(t, names, 2, defs, 4, &e), TH_ENOTFOUND);
    assert_string_equal(e.field, "tools[1]");
    assert_int_equal(th_tools_defs(t, NULL, 0, defs, 1, &e), TH_ETOOBIG);
    th_tools_free(t);
}

/* ---- built-in tools ------------------------------------------------------ */

/* A test embedder: one dimension per letter a..z, counting letters. */
static int letters_embed(const char *const *texts, size_t n, float **vectors, int *dim,
                         th_error *err, void *ud)
{
    (void)err;
    (void)ud;
    float *v = calloc(n * 26, sizeof *v);
    if (!v)
        return TH_ENOMEM;
    for (size_t i = 0; i < n; i++)
        for (const char *p = texts[i]; *p; p++)
            if (*p >= 'a' && *p <= 'z')
                v[i * 26 + (size_t)(*p - 'a')] += 1;
    *vectors = v;
    *dim = 26;
    return 0;
}

static void test_builtin_engine_tools(void **state)
{
    thtest_fx *fx = *state;
    th_tools *t = th_tools_new();
    assert_int_equal(th_tools_register_builtins(t, fx->e, NULL, NULL), 0);
    assert_true(th_tools_has(t, "submit_task"));
    assert_true(th_tools_has(t, "get_task_result"));
    assert_false(th_tools_has(t, "search_memory"));
    char *out = NULL;
    th_error e = {0};
    assert_int_equal(th_tools_call(t, "submit_task",
                                   "{\"queue\":\"work\",\"payload\":{\"n\":1},\"priority\":80,"
                                   "\"max_retries\":0}",
                                   "scout", &out, &e),
                     0);
    json_t *r = json_loads(out, 0, NULL);
    th_agent_free(out);
    const char *id = json_string_value(json_object_get(r, "id"));
    assert_non_null(id);
    assert_true(json_is_false(json_object_get(r, "duplicate")));
    th_task *task = thtest_get(fx->e, id);
    assert_string_equal(task->queue, "work");
    assert_int_equal(task->priority, 80);
    assert_int_equal(task->retry.max_retries, 0);
    assert_json_equal(task->payload, "{\"n\":1}");
    th_task_free(task);

    /* Pending: no result yet. */
    char args[64];
    snprintf(args, sizeof args, "{\"id\":\"%s\"}", id);
    assert_int_equal(th_tools_call(t, "get_task_result", args, NULL, &out, &e), 0);
    assert_true(thtest_contains(out, "\"state\":\"pending\""));
    th_agent_free(out);
    th_task *claimed = thtest_claim1(fx->e, "work", 0);
    assert_int_equal(th_engine_complete(fx->e, id, claimed->lease, "{\"answer\":42}", NULL), 0);
    th_task_free(claimed);
    assert_int_equal(th_tools_call(t, "get_task_result", args, NULL, &out, &e), 0);
    json_t *g = json_loads(out, 0, NULL);
    th_agent_free(out);
    assert_string_equal(json_string_value(json_object_get(g, "state")), "completed");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(g, "result"), "answer")),
                     42);
    json_decref(g);
    json_decref(r);

    /* Errors come back with the engine's field or message. */
    assert_int_equal(th_tools_call(t, "get_task_result", "{\"id\":\"01ARZ3NDEKTSV4RRFFQ69G5FAV\"}",
                                   NULL, &out, &e),
                     TH_ENOTFOUND);
    assert_int_equal(th_tools_call(t, "submit_task", "{\"queue\":\"bad queue!\"}", NULL, &out, &e),
                     TH_EINVAL);
    assert_true(thtest_contains(e.message, "queue"));
    assert_int_equal(
        th_tools_call(t, "submit_task", "{\"queue\":\"q\",\"priority\":101}", NULL, &out, &e),
        TH_EINVAL);
    assert_string_equal(e.field, "arguments.priority");
    th_tools_free(t);
}

static void test_builtin_memory_tools(void **state)
{
    (void)state;
    th_error e = {0};
    th_memory *m = th_memory_open(NULL, letters_embed, NULL, &e);
    assert_non_null(m);
    th_tools *t = th_tools_new();
    assert_int_equal(th_tools_register_builtins(t, NULL, m, NULL), 0);
    assert_false(th_tools_has(t, "submit_task"));
    char *out = NULL;
    assert_int_equal(th_tools_call(t, "remember", "{\"text\":\"zebra zoo\",\"metadata\":{\"s\":1}}",
                                   "scout", &out, &e),
                     0);
    assert_true(thtest_contains(out, "\"id\":"));
    th_agent_free(out);
    assert_int_equal(th_memory_add(m, "scout", "apples and bananas", NULL, NULL, &e), 0);
    assert_int_equal(th_memory_add(m, "other", "zebra zebra", NULL, NULL, &e), 0);
    /* Default namespace: the calling agent's. */
    assert_int_equal(
        th_tools_call(t, "search_memory", "{\"query\":\"zebras\",\"k\":1}", "scout", &out, &e), 0);
    json_t *r = json_loads(out, 0, NULL);
    th_agent_free(out);
    json_t *mems = json_object_get(r, "memories");
    assert_int_equal(json_array_size(mems), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(mems, 0), "text")),
                        "zebra zoo");
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(json_array_get(mems, 0), "metadata"), "s")),
                     1);
    json_decref(r);
    assert_int_equal(th_tools_call(t, "search_memory",
                                   "{\"query\":\"zebras\",\"k\":5,\"namespace\":\"other\"}",
                                   "scout", &out, &e),
                     0);
    assert_true(thtest_contains(out, "zebra zebra"));
    assert_false(thtest_contains(out, "zoo"));
    th_agent_free(out);
    assert_int_equal(th_tools_call(t, "search_memory", "{\"query\":\"\"}", "scout", &out, &e),
                     TH_EINVAL);
    assert_string_equal(e.field, "arguments.query");
    th_tools_free(t);
    th_memory_free(m);
}

static void test_confidence_decay(void **state)
{
    (void)state;
    const int64_t day = 86400000;
    assert_true(fabs(th_confidence_decay(0.8, 0, day) - 0.8) < 1e-12);
    assert_true(fabs(th_confidence_decay(0.8, day, day) - 0.4) < 1e-12);
    assert_true(fabs(th_confidence_decay(0.8, 2 * day, day) - 0.2) < 1e-12);
    assert_true(fabs(th_confidence_decay(1.0, day / 2, day) - sqrt(0.5)) < 1e-12);
    assert_true(fabs(th_confidence_decay(0.8, -5, day) - 0.8) < 1e-12);
    assert_true(fabs(th_confidence_decay(0.8, day, 0) - 0.8) < 1e-12);
    assert_true(fabs(th_confidence_decay(1.7, day, day) - 0.5) < 1e-12);
    assert_true(th_confidence_decay(-0.3, 0, day) == 0);
    assert_true(th_confidence_decay(NAN, 0, day) == 0);

    char *out = NULL;
    assert_int_equal(th_agent_result_decay("{\"output\":\"x\",\"confidence\":0.6}", day, day, &out),
                     0);
    json_t *v = json_loads(out, 0, NULL);
    th_agent_free(out);
    assert_true(fabs(json_number_value(json_object_get(v, "confidence_decayed")) - 0.3) < 1e-12);
    assert_true(fabs(json_number_value(json_object_get(v, "confidence")) - 0.6) < 1e-12);
    json_decref(v);
    assert_int_equal(th_agent_result_decay("{\"output\":\"x\"}", day, day, &out), 0);
    assert_json_equal(out, "{\"output\":\"x\"}");
    th_agent_free(out);
    assert_int_equal(th_agent_result_decay(NULL, day, day, &out), 0);
    assert_string_equal(out, "null");
    th_agent_free(out);
    assert_int_equal(th_agent_result_decay("{bad", day, day, &out), TH_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_register),
        cmocka_unit_test(test_call_validates),
        cmocka_unit_test(test_tool_errors),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_defs),
        cmocka_unit_test(test_builtin_memory_tools),
        cmocka_unit_test(test_confidence_decay),
    };
    const struct CMUnitTest engine_tests[] = {
        cmocka_unit_test_setup_teardown(test_builtin_engine_tools, thtest_fx_setup,
                                        thtest_fx_teardown),
    };
    int failed = cmocka_run_group_tests_name("agent_tools", tests, NULL, NULL);
    return failed + THTEST_RUN_ALL_STORES("agent_tools_engine", engine_tests);
}
