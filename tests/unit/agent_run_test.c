/*
 * The agent loop (src/agent/run.c) end to end through the real gateway: on
 * the mock provider (steps, streamed deltas, metrics, confidence, the tool
 * loop through "[[tool:NAME {json}]]", validation errors and refused tools
 * going back to the model, max_steps, cancellation, unknown providers and
 * tools, spending recorded under the agent and its budget refusing a run), and over the three HTTP
 * wire formats against the fake provider server (a tool call, its result sent back in the format's
 * shape, then the final answer).
 */
#include "thtest.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <taskhive/agent.h>

#include "agent/agent_impl.h"
#include "fakellm.h"

typedef struct seen {
    int steps[64];
    size_t nsteps;
    char deltas[4096];
    size_t ndeltas;
    int logs;
    int cancel_after; /* cancelled() says yes from this poll on; 0 = never */
    int polls;
} seen;

static void on_step(th_agent_step s, const char *detail, void *ud)
{
    seen *x = ud;
    (void)detail;
    if (x->nsteps < 64)
        x->steps[x->nsteps++] = (int)s;
}

static void on_delta(const char *text, size_t len, void *ud)
{
    seen *x = ud;
    if (x->ndeltas + len < sizeof x->deltas) {
        memcpy(x->deltas + x->ndeltas, text, len);
        x->ndeltas += len;
        x->deltas[x->ndeltas] = '\0';
    }
}

static void on_log(th_log_level level, const char *message, const char *data, void *ud)
{
    seen *x = ud;
    (void)level;
    (void)message;
    (void)data;
    x->logs++;
}

static int cancelled(void *ud)
{
    seen *x = ud;
    x->polls++;
    return x->cancel_after && x->polls >= x->cancel_after;
}

static th_llm_gateway *mock_gateway(void)
{
    th_error e = {0};
    th_llm_gateway *gw = th_llm_gateway_new(NULL, &e);
    assert_non_null(gw);
    th_llm_provider_options o;
    th_llm_provider_options_init(&o);
    o.name = "mock";
    o.format = TH_LLM_MOCK;
    o.mock_token_delay_ms = 0;
    o.health_interval_ms = 0;
    assert_int_equal(th_llm_gateway_add_provider(gw, &o, &e), 0);
    return gw;
}

static int echo_tool(th_tool_ctx *tc, const char *args, void *ud)
{
    (void)ud;
    char buf[256];
    snprintf(buf, sizeof buf, "{\"echoed\":%s}", args);
    return th_tool_set_result(tc, buf);
}

static th_agent_def *def_of(const char *json)
{
    th_agent_def *d = NULL;
    th_error e = {0};
    if (th_agent_def_from_json(json, NULL, &d, &e))
        fail_msg("def: %s: %s", e.field, e.message);
    return d;
}

/* Runs `def` on `input`; returns the code, the result in *out. */
static int run(th_llm_gateway *gw, th_tools *tools, const th_agent_def *d, const char *input,
               seen *x, char **out, th_agent_metrics *m, th_error *e)
{
    th_agent_run_opts o = {.gateway = gw,
                           .tools = tools,
                           .def = d,
                           .input = input,
                           .context = "today is Saturday",
                           .on_step = on_step,
                           .on_delta = on_delta,
                           .on_log = on_log,
                           .cancelled = cancelled,
                           .ud = x};
    memset(e, 0, sizeof *e);
    return th_agent_run(&o, out, m, e);
}

static void test_plain_answer(void **state)
{
    (void)state;
    th_llm_gateway *gw = mock_gateway();
    th_agent_def *d = def_of("{\"name\":\"scout\",\"provider\":\"mock\",\"role\":\"a scout\"}");
    seen x = {0};
    char *out = NULL;
    th_agent_metrics m;
    th_error e;
    assert_int_equal(run(gw, NULL, d, "Hello there friend. confidence: 0.75", &x, &out, &m, &e), 0);
    json_t *r = json_loads(out, 0, NULL);
    const char *output = json_string_value(json_object_get(r, "output"));
    assert_non_null(output);
    assert_true(strstr(output, "You said: Hello there friend.") != NULL);
    /* Every streamed delta reached on_delta: together they are the output. */
    assert_string_equal(x.deltas, output);
    assert_true(strstr(json_string_value(json_object_get(r, "summary")), "Hello there friend.") !=
                NULL);
    assert_true(json_number_value(json_object_get(r, "confidence")) == 0.75);
    assert_string_equal(json_string_value(json_object_get(r, "agent")), "scout");
    assert_string_equal(json_string_value(json_object_get(r, "provider")), "mock");
    json_t *met = json_object_get(r, "metrics");
    assert_int_equal(json_integer_value(json_object_get(met, "request_count")), 1);
    assert_int_equal(json_integer_value(json_object_get(met, "tool_calls")), 0);
    assert_int_equal(json_integer_value(json_object_get(met, "tokens_used")),
                     m.input_tokens + m.output_tokens);
    assert_true(m.input_tokens > 0 && m.output_tokens > 0);
    assert_non_null(json_object_get(met, "cost_usd"));
    assert_non_null(json_object_get(met, "execution_time_ms"));
    assert_int_equal(m.request_count, 1);
    /* The five steps in order (one model call). */
    int want[] = {1, 2, 3, 4, 5};
    assert_int_equal(x.nsteps, 5);
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(x.steps[i], want[i]);
    assert_true(x.logs >= 5);
    json_decref(r);
    th_agent_free(out);
    th_agent_def_free(d);
    th_llm_gateway_free(gw);
}

static void test_system_prompt_and_confidence(void **state)
{
    (void)state;
    th_agent_def *d =
        def_of("{\"name\":\"w\",\"provider\":\"p\",\"role\":\"an editor\","
               "\"backstory\":\"ten years at a paper\",\"instructions\":\"be terse\"}");
    char *p = th__agent_system_prompt(d, "ctx here");
    assert_true(strstr(p, "You are the agent w") != NULL);
    assert_true(strstr(p, "Role: an editor") != NULL);
    assert_true(strstr(p, "Backstory: ten years at a paper") != NULL);
    assert_true(strstr(p, "Instructions: be terse") != NULL);
    assert_true(strstr(p, "Context: ctx here") != NULL);
    th_agent_free(p);
    th_agent_def_free(d);
    double c = -1;
    assert_int_equal(th__agent_confidence("done. Confidence: 80%", &c), 1);
    assert_true(c == 0.8);
    assert_int_equal(th__agent_confidence("confidence: 0.2 then confidence=0.9", &c), 1);
    assert_true(c == 0.9);
    assert_int_equal(th__agent_confidence("confidence: 7", &c), 0);
    assert_int_equal(th__agent_confidence("no such thing", &c), 0);
    assert_int_equal(th__agent_confidence("confidence: high", &c), 0);
}

static void test_utf8_clean(void **state)
{
    (void)state;
    const char *cases[][2] = {
        {"plain", "plain"},
        {"caf\xc3\xa9 \xe2\x89\xa4 \xf0\x9f\x90\x9d", "caf\xc3\xa9 \xe2\x89\xa4 \xf0\x9f\x90\x9d"},
        {"a\xff"
         "b",
         "a?b"},
        {"cut \xe2\x89", "cut ??"},
        {"\xc0\xaf", "??"},           /* overlong */
        {"\xed\xa0\x80", "???"},      /* a surrogate */
        {"\xf4\x90\x80\x80", "????"}, /* past U+10FFFF */
        {"", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out = th__agent_utf8_clean(cases[i][0]);
        assert_string_equal(out, cases[i][1]);
        json_t *j = json_string(out);
        assert_non_null(j);
        json_decref(j);
        th_agent_free(out);
    }
}

static void test_retryable(void **state)
{
    (void)state;
    int retry[] = {TH_EUPSTREAM, TH_EUNAVAIL,  TH_EBUSY,   TH_ETIMEDOUT,
                   TH_ENOMEM,    TH_ECANCELED, TH_ECLOSED, TH_EIO};
    int final[] = {TH_EBUDGET, TH_EINVAL, TH_ENOTFOUND, TH_ETOOBIG, TH_ECONFLICT};
    for (size_t i = 0; i < sizeof retry / sizeof retry[0]; i++)
        assert_true(th__agent_retryable(retry[i]));
    for (size_t i = 0; i < sizeof final / sizeof final[0]; i++)
        assert_false(th__agent_retryable(final[i]));
}

static void test_budget(void **state)
{
    (void)state;
    th_llm_gateway *gw = mock_gateway();
    th_agent_def *d = def_of("{\"name\":\"spender\",\"provider\":\"mock\"}");
    assert_int_equal(th_llm_set_price(gw, "mock-1", 1000, 1000), 0);
    seen x = {0};
    char *out = NULL;
    th_agent_metrics m;
    th_error e;
    /* The calls are recorded under the agent's name. */
    assert_int_equal(run(gw, NULL, d, "spend a little", &x, &out, &m, &e), 0);
    th_agent_free(out);
    double today = 0, month = 0;
    assert_int_equal(th_llm_spent(gw, "agent:spender", &today, &month), 0);
    assert_true(today > 0);
    assert_true(fabs(today - m.cost_usd) < 1e-9);
    /* Its budget spent, the next run is refused before anything is sent. */
    assert_int_equal(th_llm_set_budget(gw, "agent:spender", today, 0), 0);
    assert_int_equal(run(gw, NULL, d, "spend more", &x, &out, &m, &e), TH_EBUDGET);
    assert_null(out);
    assert_int_equal(m.request_count, 0);
    assert_false(th__agent_retryable(TH_EBUDGET));
    th_agent_def_free(d);
    th_llm_gateway_free(gw);
}

typedef struct loop_fx {
    thtest_clock clk;
    th_engine *e;
    th_tools *tools;
    th_llm_gateway *gw;
} loop_fx;

static int loop_setup(void **state)
{
    loop_fx *fx = calloc(1, sizeof *fx);
    thtest_clock_init(&fx->clk, THTEST_T0);
    fx->e = thtest_engine("memory", &fx->clk);
    fx->tools = th_tools_new();
    assert_int_equal(th_tools_register_builtins(fx->tools, fx->e, NULL, NULL), 0);
    assert_int_equal(th_tools_register(fx->tools, "echo", "Echo", NULL, 0, echo_tool, NULL, NULL),
                     0);
    fx->gw = mock_gateway();
    *state = fx;
    return 0;
}

static int loop_teardown(void **state)
{
    loop_fx *fx = *state;
    th_llm_gateway_free(fx->gw);
    th_tools_free(fx->tools);
    th_engine_free(fx->e);
    free(fx);
    return 0;
}

/* Runs an agent allowed submit_task on `input`; returns the parsed result. */
static json_t *run_submitter(loop_fx *fx, const char *input, th_agent_metrics *m)
{
    th_agent_def *d =
        def_of("{\"name\":\"scout\",\"provider\":\"mock\",\"tools\":[\"submit_task\"]}");
    seen x = {0};
    char *out = NULL;
    th_error e;
    int rc = run(fx->gw, fx->tools, d, input, &x, &out, m, &e);
    if (rc)
        fail_msg("run: %d %s", rc, e.message);
    json_t *r = json_loads(out, 0, NULL);
    th_agent_free(out);
    th_agent_def_free(d);
    return r;
}

static void test_tool_loop_submits(void **state)
{
    loop_fx *fx = *state;
    th_agent_metrics m;
    json_t *r = run_submitter(
        fx, "Queue it [[tool:submit_task {\"queue\":\"work\",\"payload\":{\"x\":1}}]]", &m);
    assert_int_equal(m.request_count, 2);
    assert_int_equal(m.tool_calls, 1);
    const char *output = json_string_value(json_object_get(r, "output"));
    /* The mock's second answer reports the tool result it was sent. */
    assert_true(strstr(output, "Tool result: {\"id\":\"") != NULL);
    assert_int_equal(thtest_list_count(fx->e, "work", TH_TASK_PENDING), 1);
    th_task **tasks = NULL;
    size_t n = 0;
    th_list_filter f = {.queue = "work", .state = -1, .limit = 10};
    assert_int_equal(th_engine_list(fx->e, &f, &tasks, &n, NULL), 0);
    assert_int_equal(n, 1);
    assert_true(strstr(output, tasks[0]->id) != NULL);
    assert_json_equal(tasks[0]->payload, "{\"x\":1}");
    th_task_array_free(tasks, n);
    json_decref(r);
}

static void test_validation_error_goes_back(void **state)
{
    loop_fx *fx = *state;
    th_agent_metrics m;
    json_t *r = run_submitter(fx, "[[tool:submit_task {\"queue\":\"work\",\"priority\":500}]]", &m);
    const char *output = json_string_value(json_object_get(r, "output"));
    assert_true(strstr(output, "arguments.priority: must be an integer \u2264 100") != NULL);
    assert_true(strstr(output, "EINVAL") != NULL);
    assert_int_equal(m.tool_calls, 1);
    assert_int_equal(thtest_list_count(fx->e, "work", -1), 0);
    json_decref(r);
}

/* The "output" of result JSON `out`, in a static buffer. */
static const char *output_of(const char *out)
{
    static char buf[2048];
    json_t *r = json_loads(out, 0, NULL);
    snprintf(buf, sizeof buf, "%s", json_string_value(json_object_get(r, "output")));
    json_decref(r);
    return buf;
}

static void test_tool_not_allowed(void **state)
{
    loop_fx *fx = *state;
    th_agent_def *d = def_of("{\"name\":\"scout\",\"provider\":\"mock\",\"tools\":[\"echo\"]}");
    seen x = {0};
    char *out = NULL;
    th_error e;
    assert_int_equal(
        run(fx->gw, fx->tools, d, "[[tool:submit_task {\"queue\":\"work\"}]]", &x, &out, NULL, &e),
        0);
    assert_true(strstr(output_of(out), "tool \\\"submit_task\\\" is not available") != NULL);
    assert_int_equal(thtest_list_count(fx->e, "work", -1), 0);
    th_agent_free(out);
    /* An allowed tool answers. */
    assert_int_equal(run(fx->gw, fx->tools, d, "[[tool:echo {\"a\":[1,2]}]]", &x, &out, NULL, &e),
                     0);
    assert_true(strstr(output_of(out), "Tool result: {\"echoed\":{\"a\":[1,2]}}") != NULL);
    th_agent_free(out);
    th_agent_def_free(d);
}

static void test_failures(void **state)
{
    loop_fx *fx = *state;
    seen x = {0};
    char *out = NULL;
    th_agent_metrics m;
    th_error e;
    /* max_steps 1: the tool call needs a second model call. */
    th_agent_def *d =
        def_of("{\"name\":\"s\",\"provider\":\"mock\",\"tools\":[\"echo\"],\"max_steps\":1}");
    assert_int_equal(run(fx->gw, fx->tools, d, "[[tool:echo {}]]", &x, &out, &m, &e), TH_ETOOBIG);
    assert_null(out);
    assert_string_equal(e.field, "max_steps");
    assert_int_equal(m.request_count, 1);
    assert_int_equal(m.tool_calls, 1);
    th_agent_def_free(d);

    d = def_of("{\"name\":\"s\",\"provider\":\"nosuch\"}");
    assert_int_equal(run(fx->gw, fx->tools, d, "hi", &x, &out, &m, &e), TH_ENOTFOUND);
    th_agent_def_free(d);

    d = def_of("{\"name\":\"s\",\"provider\":\"mock\",\"tools\":[\"nosuch\"]}");
    assert_int_equal(run(fx->gw, fx->tools, d, "hi", &x, &out, &m, &e), TH_ENOTFOUND);
    assert_string_equal(e.field, "tools[0]");
    assert_int_equal(run(fx->gw, NULL, d, "hi", &x, &out, &m, &e), TH_ENOTFOUND);
    th_agent_def_free(d);

    d = def_of("{\"name\":\"s\",\"provider\":\"mock\"}");
    x.cancel_after = 1;
    assert_int_equal(run(fx->gw, fx->tools, d, "hi", &x, &out, &m, &e), TH_ECANCELED);
    assert_int_equal(m.request_count, 0);
    th_agent_run_opts o = {.gateway = fx->gw, .def = d};
    assert_int_equal(th_agent_run(&o, &out, NULL, &e), TH_EINVAL);
    assert_string_equal(e.field, "input");
    th_agent_def_free(d);
}

/* ---- HTTP wire formats ---------------------------------------------------- */

static void wire_loop(th_llm_format fmt, const char *path)
{
    fakellm *f = fakellm_start();
    th_error e = {0};
    th_llm_gateway *gw = th_llm_gateway_new(NULL, &e);
    th_llm_provider_options o;
    th_llm_provider_options_init(&o);
    o.name = "fake";
    o.format = fmt;
    o.base_url = fakellm_url(f, fmt);
    o.api_key = "sk-test";
    o.model = "fake-model";
    o.health_interval_ms = 0;
    o.retry_initial_ms = 10;
    assert_int_equal(th_llm_gateway_add_provider(gw, &o, &e), 0);
    th_tools *tools = th_tools_new();
    assert_int_equal(th_tools_register(tools, "echo", "Echo",
                                       "{\"type\":\"object\",\"properties\":"
                                       "{\"city\":{\"type\":\"string\"}}}",
                                       1000, echo_tool, NULL, NULL),
                     0);
    fakellm_reply call = {.kind = FAKE_TOOL_CALL,
                          .tool_name = "echo",
                          .tool_args = "{\"city\":\"Oslo\"}",
                          .tool_id = fmt == TH_LLM_OLLAMA ? NULL : "call_1"};
    fakellm_reply answer = {.kind = FAKE_OK, .text = "It is cold in Oslo. confidence: 0.6"};
    fakellm_push(f, &call);
    fakellm_push(f, &answer);
    th_agent_def *d = def_of("{\"name\":\"w\",\"provider\":\"fake\",\"tools\":[\"echo\"]}");
    seen x = {0};
    char *out = NULL;
    th_agent_metrics m;
    assert_int_equal(run(gw, tools, d, "Weather in Oslo?", &x, &out, &m, &e), 0);
    assert_int_equal(fakellm_count_path(f, path), 2);
    assert_int_equal(m.request_count, 2);
    assert_int_equal(m.tool_calls, 1);
    assert_int_equal(m.input_tokens, 2 * FAKELLM_INPUT_TOKENS);
    json_t *r = json_loads(out, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(r, "output")),
                        "It is cold in Oslo. confidence: 0.6");
    assert_string_equal(json_string_value(json_object_get(r, "summary")), "It is cold in Oslo.");
    assert_true(json_number_value(json_object_get(r, "confidence")) == 0.6);
    json_decref(r);
    /* The second request carries the tool's answer in the format's shape. */
    const fakellm_request *req = fakellm_request_at(f, 1);
    assert_non_null(req);
    assert_true(strstr(req->body, "echoed") != NULL);
    assert_true(strstr(req->body, "Oslo") != NULL);
    if (fmt == TH_LLM_ANTHROPIC)
        assert_true(strstr(req->body, "tool_result") != NULL);
    else
        assert_true(strstr(req->body, "\"tool\"") != NULL);
    if (fmt != TH_LLM_OLLAMA)
        assert_true(strstr(req->body, "call_1") != NULL);
    th_agent_free(out);
    th_agent_def_free(d);
    th_tools_free(tools);
    th_llm_gateway_free(gw);
    fakellm_free(f);
}

static void test_wire_openai(void **state)
{
    (void)state;
    wire_loop(TH_LLM_OPENAI, "/v1/chat/completions");
}

static void test_wire_anthropic(void **state)
{
    (void)state;
    wire_loop(TH_LLM_ANTHROPIC, "/v1/messages");
}

static void test_wire_ollama(void **state)
{
    (void)state;
    wire_loop(TH_LLM_OLLAMA, "/api/chat");
}

/* An agent whose provider fails for good falls back along its chain; the
 * answer says which provider and model gave it. */
static void test_fallbacks(void **state)
{
    (void)state;
    fakellm *f = fakellm_start();
    th_error e = {0};
    th_llm_gateway *gw = th_llm_gateway_new(NULL, &e);
    th_llm_provider_options o;
    th_llm_provider_options_init(&o);
    o.name = "down";
    o.format = TH_LLM_OPENAI;
    o.base_url = fakellm_url(f, TH_LLM_OPENAI);
    o.health_interval_ms = 0;
    o.max_retries = 0;
    assert_int_equal(th_llm_gateway_add_provider(gw, &o, &e), 0);
    th_llm_provider_options_init(&o);
    o.name = "mock";
    o.format = TH_LLM_MOCK;
    o.mock_token_delay_ms = 0;
    assert_int_equal(th_llm_gateway_add_provider(gw, &o, &e), 0);
    fakellm_reply fail = {.kind = FAKE_STATUS, .status = 503};
    fakellm_set_default(f, &fail);
    th_agent_def *d =
        def_of("{\"name\":\"fb\",\"provider\":\"down\",\"fallbacks\":[\"mock/mock-spare\"]}");
    assert_int_equal(d->nfallbacks, 1);
    seen x = {0};
    char *out = NULL;
    th_agent_metrics m;
    assert_int_equal(run(gw, NULL, d, "still there?", &x, &out, &m, &e), 0);
    json_t *r = json_loads(out, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(r, "provider")), "mock");
    assert_string_equal(json_string_value(json_object_get(r, "model")), "mock-spare");
    json_decref(r);
    th_agent_free(out);
    assert_int_equal(fakellm_count_path(f, "/v1/chat/completions"), 1);
    /* Without the fallback the same agent fails with the provider's error. */
    th_agent_def_free(d);
    d = def_of("{\"name\":\"fb\",\"provider\":\"down\"}");
    assert_int_equal(run(gw, NULL, d, "still there?", &x, &out, &m, &e), TH_EUPSTREAM);
    th_agent_def_free(d);

    /* Definitions: config text, JSON out, bad entries named. */
    d = th_agent_def_new();
    assert_int_equal(th_agent_def_set(d, "fallbacks", "openai/gpt-4o-mini, mock", &e), 0);
    assert_int_equal(d->nfallbacks, 2);
    assert_string_equal(d->fallbacks[1], "mock");
    th_agent_def_set(d, "name", "a", &e);
    th_agent_def_set(d, "provider", "p", &e);
    char *json = th_agent_def_to_json(d);
    assert_non_null(strstr(json, "\"fallbacks\":[\"openai/gpt-4o-mini\",\"mock\"]"));
    th_agent_free(json);
    assert_int_equal(th_agent_def_set(d, "fallbacks", "bad name!/m", &e), 0);
    assert_int_equal(th_agent_def_validate(d, NULL, &e), TH_EINVAL);
    assert_string_equal(e.field, "fallbacks[0]");
    assert_int_equal(th_agent_def_set(d, "fallbacks", "p/", &e), 0);
    assert_int_equal(th_agent_def_validate(d, NULL, &e), TH_EINVAL);
    th_agent_def_free(d);
    th_llm_gateway_free(gw);
    fakellm_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_answer),
        cmocka_unit_test(test_system_prompt_and_confidence),
        cmocka_unit_test(test_utf8_clean),
        cmocka_unit_test(test_retryable),
        cmocka_unit_test(test_budget),
        cmocka_unit_test_setup_teardown(test_tool_loop_submits, loop_setup, loop_teardown),
        cmocka_unit_test_setup_teardown(test_validation_error_goes_back, loop_setup, loop_teardown),
        cmocka_unit_test_setup_teardown(test_tool_not_allowed, loop_setup, loop_teardown),
        cmocka_unit_test_setup_teardown(test_failures, loop_setup, loop_teardown),
        cmocka_unit_test(test_wire_openai),
        cmocka_unit_test(test_wire_anthropic),
        cmocka_unit_test(test_wire_ollama),
        cmocka_unit_test(test_fallbacks),
    };
    return cmocka_run_group_tests_name("agent_run", tests, NULL, NULL);
}
