/*
 * Agent tasks in the real daemon, end to end on the offline mock provider:
 * an agent from the configuration runs as a task of the "agent" queue, its
 * five steps stream as progress events, its result carries the output and
 * metrics, and its spending shows in /v1/spend under its name; a tool call
 * (submit_task) creates a real task; a stated confidence is reported
 * decayed; an agent over its budget fails with that reason; /v1/agents
 * creates, updates and deletes definitions, refuses bad ones naming the
 * field, and keeps those made through the API across a restart.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"

static const char *INI = "[llm]\nconfidence_half_life = 1h\n"
                         "[agent.helper]\nrole = a helpful assistant\n"
                         "instructions = Answer briefly.\ntools = submit_task, get_task_result\n"
                         "[agent.spender]\nrole = expensive\nbudget_daily = 0.0000001\n";

static thd_daemon *start(const char *dir)
{
    char *ini = thd_fmt("%s/taskhive.ini", dir);
    thd_write_file(ini, INI);
    const char *extra[] = {"--config", ini, NULL};
    thd_daemon *d = thd_start(dir, extra);
    free(ini);
    return d;
}

static char *run_agent(thd_daemon *d, const char *agent, const char *input)
{
    json_t *b =
        json_pack("{s:s,s:{s:s,s:s}}", "queue", "agent", "payload", "agent", agent, "input", input);
    char *body = thd_jdump(b);
    json_decref(b);
    char *id = thd_submit(d, body);
    free(body);
    return id;
}

static void test_agent_task(void **state)
{
    (void)state;
    char *dir = thd_newdir("agent");
    thd_daemon *d = start(dir);
    thd_sse *ev = thd_sse_open(d, "/v1/events?queue=agent", NULL);
    assert_int_equal(thd_sse_wait_connected(ev, THD_WAIT_MS), 200);

    char *id = run_agent(d, "helper", "Say hello to the queue.");
    json_t *t = thd_wait_state(d, id, "completed");
    json_decref(t);
    assert_true(thd_sse_wait_for(ev, "completed", id, THD_WAIT_MS));
    thd_sse_stop(ev);
    /* Progress through the five steps, with streamed text while the model
     * answers. */
    int steps_seen = 0, max_step = 0, final_step = 0, streamed = 0;
    for (size_t i = 0; i < thd_sse_count(ev); i++) {
        const thd_event *e = thd_sse_event(ev, i);
        if (strcmp(e->type, "progress") != 0 || !e->json)
            continue;
        const char *task = thd_jstr(e->json, "task");
        if (!task || strcmp(task, id) != 0)
            continue;
        steps_seen++;
        const char *msg = thd_jstr(e->json, "message");
        final_step |= msg && strncmp(msg, "finalising", 10) == 0;
        streamed |= msg && strncmp(msg, "model: ", 7) == 0;
        long long p = thd_jint(e->json, "progress", 0);
        if (p > max_step)
            max_step = (int)p;
    }
    assert_true(steps_seen >= 5);
    assert_int_equal(max_step, 95);
    assert_true(final_step);
    assert_true(streamed);
    thd_sse_close(ev);

    thd_resp *r = thd_req(d, "GET", thd_p("/v1/tasks/%s/result", id), NULL);
    thd_assert_status(r, 200);
    assert_string_equal(thd_jstr(r->json, "result.output"),
                        "[mock-1] You said: Say hello to the queue.");
    assert_string_equal(thd_jstr(r->json, "result.agent"), "helper");
    assert_true(thd_jint(r->json, "result.metrics.tokens_used", 0) > 0);
    assert_int_equal(thd_jint(r->json, "result.metrics.request_count", 0), 1);
    double cost = json_real_value(thd_jget(r->json, "result.metrics.cost_usd"));
    assert_true(cost > 0);
    thd_resp_free(r);
    /* Every step is in the task's log. */
    r = thd_req(d, "GET", thd_p("/v1/tasks/%s/logs", id), NULL);
    assert_non_null(strstr(r->body, "step 1/5"));
    assert_non_null(strstr(r->body, "step 5/5"));
    thd_resp_free(r);
    /* The spend ledger has the agent's line with that cost. */
    r = thd_req(d, "GET", "/v1/spend", NULL);
    assert_string_equal(thd_jstr(r->json, "rows[0].agent"), "helper");
    assert_true(fabs(json_real_value(thd_jget(r->json, "rows[0].cost_usd")) - cost) < 1e-12);
    thd_resp_free(r);
    free(id);

    /* A tool call: the agent submits a real task. */
    id = run_agent(d, "helper", "[[tool:submit_task {\"queue\":\"noop\",\"payload\":{}}]]");
    json_decref(thd_wait_state(d, id, "completed"));
    r = thd_req(d, "GET", thd_p("/v1/tasks/%s/result", id), NULL);
    assert_int_equal(thd_jint(r->json, "result.metrics.tool_calls", 0), 1);
    assert_int_equal(thd_jint(r->json, "result.metrics.request_count", 0), 2);
    assert_non_null(strstr(thd_jstr(r->json, "result.output"), "Tool result"));
    thd_resp_free(r);
    r = thd_req(d, "GET", "/v1/tasks?queue=noop", NULL);
    assert_int_equal(json_array_size(json_object_get(r->json, "tasks")), 1);
    thd_resp_free(r);
    free(id);

    /* A stated confidence comes back decayed by the result's age. */
    id = run_agent(d, "helper", "I am sure. confidence: 0.8");
    json_decref(thd_wait_state(d, id, "completed"));
    r = thd_req(d, "GET", thd_p("/v1/tasks/%s/result", id), NULL);
    double c = json_real_value(thd_jget(r->json, "result.confidence"));
    double cd = json_number_value(thd_jget(r->json, "result.confidence_decayed"));
    assert_true(fabs(c - 0.8) < 1e-9);
    assert_true(cd <= 0.8 && cd > 0.79);
    thd_resp_free(r);
    free(id);

    /* Over budget: the task fails at once with the reason. */
    id = run_agent(d, "spender", "spend");
    t = thd_wait_state(d, id, "failed");
    assert_non_null(strstr(thd_jstr(t, "error"), "budget"));
    assert_int_equal(thd_jint(t, "attempt", 0), 1);
    json_decref(t);
    free(id);
    /* An unknown agent fails permanently, naming it. */
    id = run_agent(d, "ghost", "hello?");
    t = thd_wait_state(d, id, "failed");
    assert_non_null(strstr(thd_jstr(t, "error"), "ghost"));
    json_decref(t);
    free(id);
    thd_stop(d);
    thd_free(d);
    free(dir);
}

static void test_agents_api(void **state)
{
    (void)state;
    char *dir = thd_newdir("agentapi");
    thd_daemon *d = start(dir);
    thd_resp *r = thd_req(d, "GET", "/v1/agents", NULL);
    thd_assert_status(r, 200);
    assert_int_equal(json_array_size(json_object_get(r->json, "agents")), 2);
    assert_string_equal(thd_jstr(r->json, "agents[0].name"), "helper");
    assert_string_equal(thd_jstr(r->json, "agents[0].provider"), "mock");
    thd_resp_free(r);

    r = thd_req(d, "POST", "/v1/agents", "{\"name\":\"critic\",\"role\":\"a critic\"}");
    thd_assert_status(r, 201);
    assert_string_equal(thd_jstr(r->json, "provider"), "mock");
    thd_resp_free(r);
    r = thd_req(d, "POST", "/v1/agents", "{\"name\":\"critic\"}");
    thd_assert_error(r, 409, "ECONFLICT", NULL);
    thd_resp_free(r);
    r = thd_req(d, "POST", "/v1/agents", "{\"name\":\"x\",\"colour\":\"red\"}");
    thd_assert_error(r, 400, "EINVAL", "colour");
    thd_resp_free(r);
    r = thd_req(d, "POST", "/v1/agents", "{\"name\":\"x\",\"temperature\":7}");
    thd_assert_error(r, 400, "EINVAL", "temperature");
    thd_resp_free(r);
    r = thd_req(d, "POST", "/v1/agents", "{\"name\":\"x\",\"tools\":[\"rm_rf\"]}");
    assert_true(r->status == 400 || r->status == 404);
    assert_non_null(strstr(r->body, "tools[0]"));
    thd_resp_free(r);
    r = thd_req(d, "POST", "/v1/agents", "{\"name\":");
    thd_assert_error(r, 400, "EINVAL", NULL);
    thd_resp_free(r);

    r = thd_req(d, "PATCH", "/v1/agents/critic", "{\"max_steps\":4,\"role\":null}");
    thd_assert_status(r, 200);
    assert_int_equal(thd_jint(r->json, "max_steps", 0), 4);
    assert_true(json_is_null(thd_jget(r->json, "role")));
    thd_resp_free(r);
    r = thd_req(d, "PATCH", "/v1/agents/critic", "{\"name\":\"other\"}");
    thd_assert_error(r, 400, "EINVAL", "name");
    thd_resp_free(r);
    r = thd_req(d, "PATCH", "/v1/agents/nobody", "{}");
    thd_assert_error(r, 404, "ENOTFOUND", NULL);
    thd_resp_free(r);
    r = thd_req(d, "POST", "/v1/agents/critic", "{}");
    thd_assert_error(r, 405, "EMETHOD", NULL);
    thd_resp_free(r);

    /* Made through the API: still there after a restart. */
    thd_stop(d);
    thd_free(d);
    d = start(dir);
    r = thd_req(d, "GET", "/v1/agents/critic", NULL);
    thd_assert_status(r, 200);
    assert_int_equal(thd_jint(r->json, "max_steps", 0), 4);
    thd_resp_free(r);
    r = thd_req(d, "DELETE", "/v1/agents/critic", NULL);
    thd_assert_status(r, 200);
    thd_resp_free(r);
    r = thd_req(d, "GET", "/v1/agents/critic", NULL);
    thd_assert_error(r, 404, "ENOTFOUND", NULL);
    thd_resp_free(r);
    thd_stop(d);
    thd_free(d);
    free(dir);
}

static void test_bad_agent_config(void **state)
{
    (void)state;
    char *dir = thd_newdir("agentcfg");
    char *ini = thd_fmt("%s/taskhive.ini", dir);
    thd_write_file(ini, "[agent.a]\ntemperature = hot\n");
    const char *argv[] = {thd_bin(), "serve", "--config", ini, "--check-config", NULL};
    char *out = NULL;
    assert_int_equal(thd_run(argv, 10000, &out), 1);
    assert_non_null(strstr(out, "[agent.a] temperature"));
    free(out);
    thd_write_file(ini, "[agent.a]\nbudget_daily = lots\n");
    assert_int_equal(thd_run(argv, 10000, &out), 1);
    assert_non_null(strstr(out, "budget_daily"));
    free(out);
    free(ini);
    free(dir);
}

int main(void)
{
    thd_curl_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_agent_task, thd_teardown),
        cmocka_unit_test_teardown(test_agents_api, thd_teardown),
        cmocka_unit_test(test_bad_agent_config),
    };
    return cmocka_run_group_tests_name("daemon_agent", tests, NULL, NULL);
}
