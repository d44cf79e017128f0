/*
 * The "agent" pool handler (src/agent/handler.c) end to end: a threads pool
 * over a real engine, the mock LLM provider behind a real gateway, agents
 * in a registry and the built-in tools. An agent task reports the five
 * steps and the streamed text as progress events, logs each step and ends
 * with {summary, output, metrics}; a tool call through
 * "[[tool:submit_task {...}]]" queues a task; an inline definition works;
 * an unknown agent, a bad payload, an unknown provider or a spent budget
 * fail the task for good; a cancel stops a slow run; the memory opened through the gateway
 * embeds with the mock and persists.
 */
#include "pool_helpers.h"

#include <jansson.h>

#include <taskhive/agent.h>

typedef struct progress_rec {
    pthread_mutex_t mu;
    char msgs[256][160];
    int steps[256];
    size_t n;
} progress_rec;

static void on_event(const th_event *ev, void *ud)
{
    progress_rec *r = ud;
    if (ev->type != TH_EV_PROGRESS || strcmp(ev->queue, "agent") != 0)
        return;
    pthread_mutex_lock(&r->mu);
    if (r->n < 256)
        snprintf(r->msgs[r->n++], sizeof r->msgs[0], "%s", ev->message ? ev->message : "");
    pthread_mutex_unlock(&r->mu);
}

/* Index of the first progress message containing `s` at or after `from`,
 * or -1. */
static int progress_find(progress_rec *r, const char *s, int from)
{
    int at = -1;
    pthread_mutex_lock(&r->mu);
    for (size_t i = (size_t)from; i < r->n && at < 0; i++)
        if (strstr(r->msgs[i], s))
            at = (int)i;
    pthread_mutex_unlock(&r->mu);
    return at;
}

typedef struct hfx {
    pfx *f;
    th_llm_gateway *gw;
    th_tools *tools;
    th_agents *agents;
    th_agent_env env;
    progress_rec prog;
} hfx;

static void add_agent(hfx *h, const char *json)
{
    th_agent_def *d = NULL;
    th_error e = {0};
    if (th_agent_def_from_json(json, NULL, &d, &e) || th_agents_create(h->agents, d, &e))
        fail_msg("agent: %s: %s", e.field, e.message);
    th_agent_def_free(d);
}

static hfx *hfx_new(int64_t token_delay_ms)
{
    hfx *h = calloc(1, sizeof *h);
    pthread_mutex_init(&h->prog.mu, NULL);
    h->f = pfx_new("memory");
    assert_true(th_engine_subscribe(h->f->e, on_event, &h->prog) > 0);
    th_error e = {0};
    h->gw = th_llm_gateway_new(NULL, &e);
    assert_non_null(h->gw);
    th_llm_provider_options o;
    th_llm_provider_options_init(&o);
    o.name = "mock";
    o.format = TH_LLM_MOCK;
    o.mock_token_delay_ms = token_delay_ms;
    o.health_interval_ms = 0;
    assert_int_equal(th_llm_gateway_add_provider(h->gw, &o, &e), 0);
    h->tools = th_tools_new();
    assert_int_equal(th_tools_register_builtins(h->tools, h->f->e, NULL, &e), 0);
    h->agents = th_agents_new(h->tools);
    add_agent(h, "{\"name\":\"scout\",\"provider\":\"mock\",\"role\":\"a scout\","
                 "\"tools\":[\"submit_task\",\"get_task_result\"]}");
    h->env = (th_agent_env){h->gw, h->agents, h->tools};
    th_pool_options po = quiet_options(2);
    th_pool *p = pfx_pool(h->f, &po);
    assert_int_equal(th_agent_register_handler(p, &h->env, &e), 0);
    pool_start(p);
    return h;
}

static void hfx_free(hfx *h)
{
    th_pool_free(h->f->p);
    h->f->p = NULL;
    th_agents_free(h->agents);
    th_tools_free(h->tools);
    th_llm_gateway_free(h->gw);
    pfx_free(h->f);
    pthread_mutex_destroy(&h->prog.mu);
    free(h);
}

/* Submits an agent task with `payload` and waits for its end. */
static th_task *run_task(hfx *h, const char *payload)
{
    th_task_spec s = one_shot("agent", payload, 0);
    char id[TH_ID_SIZE];
    pool_submit(h->f->p, &s, id);
    return wait_final(h->f->e, id);
}

static void test_agent_task(void **state)
{
    (void)state;
    hfx *h = hfx_new(1);
    th_task *t =
        run_task(h, "{\"agent\":\"scout\",\"input\":\"Find the answer please. confidence: 90%\"}");
    assert_int_equal(t->state, TH_TASK_COMPLETED);
    json_t *r = json_loads(t->result, 0, NULL);
    assert_non_null(r);
    assert_true(strstr(json_string_value(json_object_get(r, "output")),
                       "You said: Find the answer please.") != NULL);
    assert_string_equal(json_string_value(json_object_get(r, "summary")),
                        "[mock-1] You said: Find the answer please.");
    assert_true(json_number_value(json_object_get(r, "confidence")) == 0.9);
    json_t *m = json_object_get(r, "metrics");
    assert_int_equal(json_integer_value(json_object_get(m, "request_count")), 1);
    assert_true(json_integer_value(json_object_get(m, "tokens_used")) > 0);
    assert_non_null(json_object_get(m, "cost_usd"));
    json_decref(r);

    /* Progress: the five steps in order, with streamed text while calling. */
    int a = progress_find(&h->prog, "configuring provider: mock/default", 0);
    int b = progress_find(&h->prog, "preparing context", a);
    int c = progress_find(&h->prog, "calling the model: model call 1", b);
    int s = progress_find(&h->prog, "model: ", c + 1);
    int d = progress_find(&h->prog, "processing results", s);
    int e = progress_find(&h->prog, "finalising", d);
    if (a < 0 || b < 0 || c < 0 || s < 0 || d < 0 || e < 0)
        fail_msg("progress order: %d %d %d %d %d %d", a, b, c, s, d, e);
    /* The last streamed report holds the end of the answer. */
    int last = s, next;
    while ((next = progress_find(&h->prog, "model: ", last + 1)) >= 0 && next < d)
        last = next;
    assert_true(progress_find(&h->prog, "confidence: 90%", last) == last);

    /* Logs: one per step at least. */
    th_log_entry *logs = NULL;
    size_t n = 0;
    assert_int_equal(th_engine_logs(h->f->e, t->id, 0, 0, &logs, &n, NULL), 0);
    const char *want[] = {"step 1/5", "step 2/5", "step 3/5", "model call 1 answered",
                          "step 4/5", "step 5/5"};
    size_t at = 0;
    for (size_t i = 0; i < n && at < 6; i++)
        if (strstr(logs[i].message, want[at]))
            at++;
    if (at != 6)
        fail_msg("log \"%s\" missing (of %zu rows)", want[at], n);
    th_log_entries_free(logs, n);
    th_task_free(t);
    hfx_free(h);
}

static void test_tool_call_task(void **state)
{
    (void)state;
    hfx *h = hfx_new(0);
    th_task *t = run_task(h, "{\"agent\":\"scout\",\"input\":\"[[tool:submit_task "
                             "{\\\"queue\\\":\\\"work\\\",\\\"payload\\\":[1]}]]\"}");
    assert_int_equal(t->state, TH_TASK_COMPLETED);
    assert_true(strstr(t->result, "Tool result: {\\\"id\\\":") != NULL);
    assert_true(strstr(t->result, "\"request_count\":2") != NULL);
    assert_true(strstr(t->result, "\"tool_calls\":1") != NULL);
    assert_int_equal(thtest_list_count(h->f->e, "work", TH_TASK_PENDING), 1);
    assert_true(progress_find(&h->prog, "running tool submit_task", 0) >= 0);
    th_task_free(t);

    /* A validation error goes back to the model; the task still completes. */
    t = run_task(h, "{\"agent\":\"scout\",\"input\":\"[[tool:submit_task {\\\"queue\\\":7}]]\"}");
    assert_int_equal(t->state, TH_TASK_COMPLETED);
    assert_true(strstr(t->result, "arguments.queue: must be a string") != NULL);
    assert_int_equal(thtest_list_count(h->f->e, "work", -1), 1);
    th_task_free(t);

    /* An inline definition. */
    t = run_task(h, "{\"agent\":{\"name\":\"inline\",\"provider\":\"mock\",\"model\":\"m2\"},"
                    "\"input\":\"hi\",\"context\":\"c\"}");
    assert_int_equal(t->state, TH_TASK_COMPLETED);
    assert_true(strstr(t->result, "[m2] You said: hi") != NULL);
    assert_true(strstr(t->result, "\"agent\":\"inline\"") != NULL);
    th_task_free(t);
    hfx_free(h);
}

/* Expects the task to fail for good (one attempt) with `msg` in its error. */
static void assert_fails(hfx *h, const char *payload, const char *msg)
{
    th_task_spec s = one_shot("agent", payload, 0);
    s.retry = thtest_retry(3, 0, 0, 1); /* retries allowed: none must happen */
    char id[TH_ID_SIZE];
    pool_submit(h->f->p, &s, id);
    th_task *t = wait_final(h->f->e, id);
    assert_int_equal(t->state, TH_TASK_FAILED);
    assert_int_equal(t->attempt, 1);
    if (!t->error || !strstr(t->error, msg))
        fail_msg("error \"%s\" lacks \"%s\"", t->error ? t->error : "(none)", msg);
    th_task_free(t);
}

static void test_permanent_failures(void **state)
{
    (void)state;
    hfx *h = hfx_new(0);
    assert_fails(h, "{\"agent\":\"nobody\",\"input\":\"hi\"}", "payload.agent: no agent");
    assert_fails(h, "{\"agent\":\"scout\"}", "payload.input");
    assert_fails(h, "[1]", "payload: must be an object");
    assert_fails(h, "{\"agent\":\"scout\",\"input\":\"x\",\"colour\":1}", "payload.colour");
    assert_fails(h, "{\"agent\":3,\"input\":\"x\"}", "payload.agent");
    assert_fails(h, "{\"agent\":{\"name\":\"x\"},\"input\":\"x\"}", "payload.agent.provider");
    assert_fails(h, "{\"agent\":{\"name\":\"x\",\"provider\":\"nosuch\"},\"input\":\"x\"}",
                 "ENOTFOUND");
    /* A budget refusal is final too, and says so. */
    assert_int_equal(th_llm_set_price(h->gw, "mock-1", 1000, 1000), 0);
    assert_int_equal(th_llm_set_budget(h->gw, "agent:scout", 1e-9, 0), 0);
    assert_fails(h, "{\"agent\":\"scout\",\"input\":\"hi\"}", "EBUDGET");
    hfx_free(h);
}

static void test_cancel(void **state)
{
    (void)state;
    hfx *h = hfx_new(200); /* 200 ms per streamed token */
    th_task_spec s = one_shot("agent",
                              "{\"agent\":\"scout\",\"input\":\"one two three four five six seven "
                              "eight nine ten eleven twelve thirteen fourteen fifteen\"}",
                              0);
    char id[TH_ID_SIZE];
    pool_submit(h->f->p, &s, id);
    WAIT_FOR(progress_find(&h->prog, "model: ", 0) >= 0);
    assert_int_equal(th_engine_cancel(h->f->e, id, "enough", NULL), 1);
    th_task *t = wait_final(h->f->e, id);
    assert_int_equal(t->state, TH_TASK_CANCELLED);
    assert_null(t->result);
    th_task_free(t);
    hfx_free(h);
}

static void test_memory_through_gateway(void **state)
{
    (void)state;
    hfx *h = hfx_new(0);
    char *path = thtest_unique_path("agent-memory", ".db");
    th_error e = {0};
    th_memory *m = th_memory_open_llm(path, h->gw, "mock", NULL, &e);
    assert_non_null(m);
    assert_int_equal(th_memory_add(m, "scout", "the red fox jumps", NULL, NULL, &e), 0);
    assert_int_equal(th_memory_add(m, "scout", "a blue whale swims", NULL, NULL, &e), 0);
    th_memory_free(m);
    m = th_memory_open_llm(path, h->gw, "mock", NULL, &e);
    assert_non_null(m);
    th_memory_hit *hits = NULL;
    size_t n = 0;
    assert_int_equal(th_memory_search(m, "scout", "whale", 1, &hits, &n, &e), 0);
    assert_int_equal(n, 1);
    assert_string_equal(hits[0].text, "a blue whale swims");
    th_memory_hits_free(hits, n);
    assert_int_equal(th_memory_search(m, "scout", "red fox", 1, &hits, &n, &e), 0);
    assert_string_equal(hits[0].text, "the red fox jumps");
    th_memory_hits_free(hits, n);
    th_memory_free(m);
    assert_null(th_memory_open_llm(path, h->gw, NULL, NULL, &e));
    assert_string_equal(e.field, "provider");
    m = th_memory_open_llm(NULL, h->gw, "nosuch", NULL, &e);
    assert_non_null(m);
    assert_int_equal(th_memory_add(m, "a", "text", NULL, NULL, &e), TH_ENOTFOUND);
    th_memory_free(m);
    thtest_remove_db(path);
    free(path);
    hfx_free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_agent_task),
        cmocka_unit_test(test_tool_call_task),
        cmocka_unit_test(test_permanent_failures),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_memory_through_gateway),
    };
    return cmocka_run_group_tests_name("agent_handler", tests, NULL, NULL);
}
