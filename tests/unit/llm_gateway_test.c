/*
 * The LLM gateway's normal paths, end to end over real sockets to the fake
 * provider (tests/lib/fakellm) and through the offline mock:
 *
 *   - the mock: answer, usage and exact cost from the price table; streamed
 *     deltas that add up to the answer; tool calls; embeddings;
 *   - each wire format (OpenAI, Anthropic, Ollama), whole and streamed:
 *     text, usage, cost, the request the provider saw (path, model, key
 *     header, stream flag), tool calls;
 *   - asynchronous calls with a done callback, and a call freed inside it;
 *   - validation: provider options refused naming the field, duplicate
 *     names, unknown providers, empty requests; keys never in status.
 */
#include "daemon.h"
#include "llm_gateway_helpers.h"

#include <math.h>
#include <stdlib.h>

typedef struct deltas {
    char buf[4096];
    size_t len;
    int calls;
} deltas;

static void on_delta(const char *t, size_t n, void *ud)
{
    deltas *d = ud;
    assert_true(d->len + n < sizeof d->buf);
    memcpy(d->buf + d->len, t, n);
    d->len += n;
    d->buf[d->len] = '\0';
    d->calls++;
}

static void test_mock_answer_and_cost(void **state)
{
    (void)state;
    th_llm_gateway *gw = gw_new(NULL);
    th_llm_provider_options o = gw_opts("m", TH_LLM_MOCK, NULL);
    gw_add(gw, &o);
    gw_req q;
    gw_req_init(&q, "hello there world", "m", NULL);
    th_llm_response r;
    th_error err;
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
    assert_string_equal(r.text, "[mock-1] You said: hello there world");
    assert_string_equal(r.provider, "m");
    assert_string_equal(r.model, "mock-1");
    assert_string_equal(r.finish_reason, "stop");
    assert_int_equal(r.usage.input_tokens, 3);
    assert_int_equal(r.usage.output_tokens, 6);
    assert_int_equal(r.attempts, 1);
    assert_int_equal(r.first_token_ms, -1);
    /* mock-1 costs 1 USD per million input tokens and 2 per million output. */
    assert_true(fabs(r.cost_usd - (3 * 1.0 + 6 * 2.0) / 1e6) < 1e-12);
    th_llm_response_free(&r);

    th_llm_provider_status s = gw_status(gw, "m");
    assert_int_equal(s.requests, 1);
    assert_int_equal(s.successes, 1);
    assert_int_equal(s.input_tokens, 3);
    assert_int_equal(s.output_tokens, 6);
    assert_true(fabs(s.cost_usd - 15e-6) < 1e-12);
    assert_int_equal(s.breaker, TH_BREAKER_CLOSED);
    assert_true(s.healthy);

    /* A price set by the caller replaces the built-in one. */
    assert_int_equal(th_llm_set_price(gw, "mock-1", 10, 20), 0);
    double in, out;
    assert_int_equal(th_llm_get_price(gw, "mock-1", &in, &out), 0);
    assert_true(in == 10 && out == 20);
    assert_int_equal(th_llm_get_price(gw, "no-such-model", &in, &out), TH_ENOTFOUND);
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
    assert_true(fabs(r.cost_usd - (3 * 10.0 + 6 * 20.0) / 1e6) < 1e-12);
    th_llm_response_free(&r);
    th_llm_gateway_free(gw);
}

static void test_mock_stream_and_tools(void **state)
{
    (void)state;
    th_llm_gateway *gw = gw_new(NULL);
    th_llm_provider_options o = gw_opts("m", TH_LLM_MOCK, NULL);
    o.mock_token_delay_ms = 5;
    gw_add(gw, &o);
    gw_req q;
    gw_req_init(&q, "stream these five words", "m", NULL);
    deltas d = {0};
    q.r.stream = 1;
    q.r.on_delta = on_delta;
    q.r.ud = &d;
    th_llm_response r;
    th_error err;
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
    assert_string_equal(d.buf, r.text);
    assert_true(d.calls >= 2); /* token by token (5 ms apart), not in one piece */
    assert_true(r.first_token_ms >= 0);
    th_llm_response_free(&r);

    /* A tool call, then the answer after the tool's result. */
    th_llm_tool_def tool = {"lookup", "looks things up",
                            "{\"type\":\"object\",\"properties\":{\"q\":{\"type\":\"string\"}}}"};
    gw_req_init(&q, "please [[tool:lookup {\"q\":\"cats\"}]]", "m", NULL);
    q.r.tools = &tool;
    q.r.ntools = 1;
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
    assert_int_equal(r.ntool_calls, 1);
    assert_string_equal(r.tool_calls[0].name, "lookup");
    assert_string_equal(r.tool_calls[0].arguments, "{\"q\":\"cats\"}");
    assert_string_equal(r.finish_reason, "tool_calls");
    th_llm_message msgs[3] = {
        q.m,
        {.role = TH_LLM_ASSISTANT, .tool_calls = r.tool_calls, .ntool_calls = 1},
        {.role = TH_LLM_TOOL,
         .content = "{\"found\":3}",
         .tool_call_id = r.tool_calls[0].id,
         .tool_name = "lookup"},
    };
    q.r.messages = msgs;
    q.r.nmessages = 3;
    th_llm_response r2;
    assert_int_equal(th_llm_chat(gw, &q.r, &r2, &err), 0);
    assert_int_equal(r2.ntool_calls, 0);
    assert_non_null(strstr(r2.text, "Tool result: {\"found\":3}"));
    th_llm_response_free(&r);
    th_llm_response_free(&r2);

    /* Embeddings: same words, same vector; unit length. */
    const char *texts[] = {"red apple", "Red APPLE", "blue sky"};
    float *v;
    int dim;
    th_llm_usage u;
    assert_int_equal(th_llm_embed(gw, "m", NULL, texts, 3, &v, &dim, &u, &err), 0);
    assert_true(dim > 0);
    double dot01 = 0, dot02 = 0, n0 = 0;
    for (int k = 0; k < dim; k++) {
        dot01 += v[k] * v[dim + k];
        dot02 += v[k] * v[2 * dim + k];
        n0 += v[k] * v[k];
    }
    assert_true(fabs(n0 - 1) < 1e-5);
    assert_true(fabs(dot01 - 1) < 1e-5);
    assert_true(dot02 < 0.9);
    assert_int_equal(u.input_tokens, 6);
    th_llm_free(v);
    th_llm_gateway_free(gw);
}

/* One format through the fakellm, whole and streamed. */
static void check_format(th_llm_format fmt, const char *path)
{
    fakellm *f = fakellm_start();
    th_llm_gateway *gw = gw_new(NULL);
    th_llm_provider_options o = gw_opts("p", fmt, f);
    o.model = "fake-model";
    gw_add(gw, &o);
    assert_int_equal(th_llm_set_price(gw, "fake-model", 3, 15), 0);
    gw_req q;
    gw_req_init(&q, "hi", "p", NULL);
    th_llm_response r;
    th_error err;
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
    assert_string_equal(r.text, FAKELLM_TEXT);
    assert_int_equal(r.usage.input_tokens, FAKELLM_INPUT_TOKENS);
    assert_int_equal(r.usage.output_tokens, FAKELLM_OUTPUT_TOKENS);
    double want = (FAKELLM_INPUT_TOKENS * 3.0 + FAKELLM_OUTPUT_TOKENS * 15.0) / 1e6;
    assert_true(fabs(r.cost_usd - want) < 1e-12);
    assert_string_equal(r.model, "fake-model");
    th_llm_response_free(&r);

    deltas d = {0};
    q.r.stream = 1;
    q.r.on_delta = on_delta;
    q.r.ud = &d;
    fakellm_reply rep = {.kind = FAKE_OK, .chunks = 4, .chunk_delay_ms = 30};
    fakellm_push(f, &rep);
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
    assert_string_equal(r.text, FAKELLM_TEXT);
    assert_string_equal(d.buf, FAKELLM_TEXT);
    assert_true(d.calls >= 2);
    assert_int_equal(r.usage.input_tokens, FAKELLM_INPUT_TOKENS);
    assert_int_equal(r.usage.output_tokens, FAKELLM_OUTPUT_TOKENS);
    assert_true(fabs(r.cost_usd - want) < 1e-12);
    assert_true(r.first_token_ms >= 0);
    th_llm_response_free(&r);

    /* A streamed tool call. */
    th_llm_tool_def tool = {FAKELLM_TOOL_NAME, "weather", "{\"type\":\"object\"}"};
    q.r.tools = &tool;
    q.r.ntools = 1;
    rep = (fakellm_reply){.kind = FAKE_TOOL_CALL, .chunks = 3};
    fakellm_push(f, &rep);
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
    assert_int_equal(r.ntool_calls, 1);
    assert_string_equal(r.tool_calls[0].name, FAKELLM_TOOL_NAME);
    json_t *a = json_loads(r.tool_calls[0].arguments, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(a, "city")), "Paris");
    json_decref(a);
    th_llm_response_free(&r);

    /* What the provider saw. */
    assert_int_equal(fakellm_count_path(f, path), 3);
    const fakellm_request *rq = fakellm_request_at(f, 1);
    assert_string_equal(rq->method, "POST");
    assert_string_equal(json_string_value(json_object_get(rq->json, "model")), "fake-model");
    assert_true(json_is_true(json_object_get(rq->json, "stream")));
    if (fmt == TH_LLM_ANTHROPIC) {
        assert_string_equal(fakellm_header(rq, "x-api-key"), "sk-test-secret");
        assert_string_equal(fakellm_header(rq, "anthropic-version"), "2023-06-01");
    } else {
        assert_string_equal(fakellm_header(rq, "authorization"), "Bearer sk-test-secret");
    }
    th_llm_gateway_free(gw);
    fakellm_free(f);
}

static void test_openai(void **state)
{
    (void)state;
    check_format(TH_LLM_OPENAI, "/v1/chat/completions");
}

static void test_anthropic(void **state)
{
    (void)state;
    check_format(TH_LLM_ANTHROPIC, "/v1/messages");
}

static void test_ollama(void **state)
{
    (void)state;
    check_format(TH_LLM_OLLAMA, "/api/chat");
}

static void test_embed_http(void **state)
{
    (void)state;
    fakellm *f = fakellm_start();
    th_llm_gateway *gw = gw_new(NULL);
    th_llm_provider_options o = gw_opts("oa", TH_LLM_OPENAI, f);
    gw_add(gw, &o);
    o = gw_opts("ol", TH_LLM_OLLAMA, f);
    gw_add(gw, &o);
    o = gw_opts("an", TH_LLM_ANTHROPIC, f);
    gw_add(gw, &o);
    const char *texts[] = {"a", "b"};
    float *v;
    int dim;
    th_llm_usage u;
    th_error err;
    assert_int_equal(th_llm_embed(gw, "oa", NULL, texts, 2, &v, &dim, &u, &err), 0);
    assert_int_equal(dim, FAKELLM_DIMS);
    th_llm_free(v);
    assert_int_equal(th_llm_embed(gw, "ol", "nomic", texts, 2, &v, &dim, &u, &err), 0);
    assert_int_equal(dim, FAKELLM_DIMS);
    th_llm_free(v);
    assert_int_equal(fakellm_count_path(f, "/v1/embeddings"), 1);
    assert_int_equal(fakellm_count_path(f, "/api/embed"), 1);
    assert_int_equal(th_llm_embed(gw, "an", NULL, texts, 2, &v, &dim, &u, &err), TH_EINVAL);
    assert_string_equal(err.field, "provider");
    assert_int_equal(th_llm_embed(gw, "nope", NULL, texts, 2, &v, &dim, &u, &err), TH_ENOTFOUND);
    th_llm_gateway_free(gw);
    fakellm_free(f);
}

typedef struct async_ud {
    pthread_mutex_t mu;
    int done, rc;
    char text[256];
    int free_inside;
} async_ud;

static void on_done(th_llm_call *c, int rc, void *ud)
{
    async_ud *a = ud;
    th_llm_response r;
    th_error err;
    int rc2 = th_llm_call_result(c, &r, &err);
    pthread_mutex_lock(&a->mu);
    a->done++;
    a->rc = rc;
    if (rc2 == 0)
        snprintf(a->text, sizeof a->text, "%s", r.text);
    pthread_mutex_unlock(&a->mu);
    th_llm_response_free(&r);
    if (a->free_inside)
        th_llm_call_free(c);
}

static void test_async(void **state)
{
    (void)state;
    th_llm_gateway *gw = gw_new(NULL);
    th_llm_provider_options o = gw_opts("m", TH_LLM_MOCK, NULL);
    gw_add(gw, &o);
    gw_req q;
    gw_req_init(&q, "async one", "m", NULL);
    async_ud a = {.mu = PTHREAD_MUTEX_INITIALIZER};
    th_llm_call *c;
    th_error err;
    assert_int_equal(th_llm_start(gw, &q.r, on_done, &a, &c, &err), 0);
    assert_int_equal(th_llm_call_wait(c, 5000), 0);
    assert_int_equal(a.done, 1);
    assert_int_equal(a.rc, 0);
    assert_string_equal(a.text, "[mock-1] You said: async one");
    /* The answer was moved out once; a second result is empty but OK. */
    th_llm_response r;
    assert_int_equal(th_llm_call_result(c, &r, &err), 0);
    assert_null(r.text);
    th_llm_call_free(c);

    /* Fire and forget: the callback frees the call. */
    a.free_inside = 1;
    for (int i = 0; i < 50; i++)
        assert_int_equal(th_llm_start(gw, &q.r, on_done, &a, &c, &err), 0);
    for (int i = 0; i < 500; i++) {
        pthread_mutex_lock(&a.mu);
        int n = a.done;
        pthread_mutex_unlock(&a.mu);
        if (n == 51)
            break;
        thd_sleep_ms(10);
    }
    assert_int_equal(a.done, 51);
    th_llm_gateway_free(gw);
}

static void test_validation(void **state)
{
    (void)state;
    th_llm_gateway *gw = gw_new(NULL);
    th_error err;
    th_llm_provider_options o = gw_opts("", TH_LLM_MOCK, NULL);
    assert_int_equal(th_llm_gateway_add_provider(gw, &o, &err), TH_EINVAL);
    assert_string_equal(err.field, "name");
    o = gw_opts("bad name!", TH_LLM_MOCK, NULL);
    assert_int_equal(th_llm_gateway_add_provider(gw, &o, &err), TH_EINVAL);
    assert_string_equal(err.field, "name");
    o = gw_opts("x", (th_llm_format)9, NULL);
    assert_int_equal(th_llm_gateway_add_provider(gw, &o, &err), TH_EINVAL);
    assert_string_equal(err.field, "format");
    o = gw_opts("x", TH_LLM_OPENAI, NULL);
    o.base_url = "ftp://example.com";
    assert_int_equal(th_llm_gateway_add_provider(gw, &o, &err), TH_EINVAL);
    assert_string_equal(err.field, "base_url");
    o = gw_opts("x", TH_LLM_MOCK, NULL);
    o.max_concurrent = -1;
    assert_int_equal(th_llm_gateway_add_provider(gw, &o, &err), TH_EINVAL);
    assert_string_equal(err.field, "max_concurrent");
    o = gw_opts("x", TH_LLM_MOCK, NULL);
    o.retry_jitter = 1.5;
    assert_int_equal(th_llm_gateway_add_provider(gw, &o, &err), TH_EINVAL);
    assert_string_equal(err.field, "retry_jitter");
    o = gw_opts("x", TH_LLM_MOCK, NULL);
    o.retry_max_ms = 1;
    o.retry_initial_ms = 5;
    assert_int_equal(th_llm_gateway_add_provider(gw, &o, &err), TH_EINVAL);
    assert_string_equal(err.field, "retry_max_ms");
    o = gw_opts("x", TH_LLM_MOCK, NULL);
    o.breaker_failures = 0;
    assert_int_equal(th_llm_gateway_add_provider(gw, &o, &err), TH_EINVAL);
    assert_string_equal(err.field, "breaker_failures");
    o = gw_opts("x", TH_LLM_MOCK, NULL);
    gw_add(gw, &o);
    assert_int_equal(th_llm_gateway_add_provider(gw, &o, &err), TH_ECONFLICT);

    gw_req q;
    gw_req_init(&q, "hi", "x", "ghost");
    th_llm_response r;
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), TH_ENOTFOUND);
    assert_string_equal(err.field, "targets[1].provider");
    gw_req_init(&q, "hi", "x", NULL);
    q.r.nmessages = 0;
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), TH_EINVAL);
    assert_string_equal(err.field, "messages");
    gw_req_init(&q, "hi", "x", NULL);
    q.r.ntargets = 0;
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), TH_EINVAL);
    assert_string_equal(err.field, "targets");
    gw_req_init(&q, "hi", "x", NULL);
    q.r.temperature = 3;
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), TH_EINVAL);
    assert_string_equal(err.field, "temperature");
    gw_req_init(&q, "hi", "x", NULL);
    q.r.max_tokens = -5;
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), TH_EINVAL);
    assert_string_equal(err.field, "max_tokens");

    /* Defaults: ollama allows 4 at once, others 64. */
    fakellm *f = fakellm_start();
    o = gw_opts("ol", TH_LLM_OLLAMA, f);
    gw_add(gw, &o);
    assert_int_equal(gw_status(gw, "ol").max_concurrent, 4);
    assert_int_equal(gw_status(gw, "x").max_concurrent, 64);
    assert_int_equal(th_llm_providers(gw, NULL, 0), 2);
    th_llm_gateway_free(gw);
    fakellm_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mock_answer_and_cost),
        cmocka_unit_test(test_mock_stream_and_tools),
        cmocka_unit_test(test_openai),
        cmocka_unit_test(test_anthropic),
        cmocka_unit_test(test_ollama),
        cmocka_unit_test(test_embed_http),
        cmocka_unit_test(test_async),
        cmocka_unit_test(test_validation),
    };
    if (getenv("TH_TEST_FILTER"))
        cmocka_set_test_filter(getenv("TH_TEST_FILTER"));
    return cmocka_run_group_tests_name("llm_gateway", tests, NULL, NULL);
}
