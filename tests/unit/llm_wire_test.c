/*
 * Unit tests of the LLM wire formats' requests and whole answers
 * (src/llm/wire*.c) and of the mock model (src/llm/mock.c), against the
 * providers' documented wire formats, with no network:
 *
 *   - request bodies and headers for openai, anthropic and ollama, with
 *     tools, assistant tool calls and tool results; requests a format cannot
 *     express (TH_EINVAL naming the field); every allocation failing in turn;
 *   - whole answers: text, tool calls, usage, normalised finish reasons;
 *   - error bodies, rate-limit headers (Retry-After, OpenAI durations,
 *     Anthropic RFC 3339 reset times), embeddings, health requests, token
 *     estimates, format and breaker names;
 *   - the mock model: determinism, [[tool:NAME {json}]], chunks, embeddings.
 *
 * Streams are tested in llm_stream_test.c.
 */
#include "llm_wire_helpers.h"

/* ---- requests ------------------------------------------------------------ */

static void test_openai_request(void **state)
{
    (void)state;
    th_llm_request r;
    th_llm_message m[3];
    tool_conversation(&r, m);
    r.stream = 1;
    th__llm_wire_req w = wire(TH_LLM_OPENAI, &r);
    th__llm_http h;
    th_error err;
    assert_int_equal(th__llm_chat_http(&w, &h, &err), 0);
    assert_string_equal(h.url, "https://api.openai.com/v1/chat/completions");
    assert_true(has_header(&h, "Authorization: Bearer sk-test"));
    assert_true(has_header(&h, "Content-Type: application/json"));
    json_t *j = body_json(&h);
    json_t *model;
    assert_int_equal(json_unpack(j, "{s:o}", "model", &model), 0);
    assert_string_equal(json_string_value(model), "gpt-4o-mini");
    json_t *msgs = json_object_get(j, "messages");
    assert_int_equal(json_array_size(msgs), 4);
    json_t *m0 = json_array_get(msgs, 0);
    assert_string_equal(json_string_value(json_object_get(m0, "role")), "system");
    assert_string_equal(json_string_value(json_object_get(m0, "content")), "Be brief.");
    json_t *asst = json_array_get(msgs, 2);
    assert_true(json_is_null(json_object_get(asst, "content")));
    json_t *call = json_array_get(json_object_get(asst, "tool_calls"), 0);
    assert_string_equal(json_string_value(json_object_get(call, "id")), "call_abc");
    assert_string_equal(json_string_value(json_object_get(call, "type")), "function");
    json_t *fn = json_object_get(call, "function");
    assert_string_equal(json_string_value(json_object_get(fn, "name")), "get_weather");
    /* function.arguments is a JSON string, not an object */
    assert_string_equal(json_string_value(json_object_get(fn, "arguments")),
                        "{\"city\":\"Paris\"}");
    json_t *tool = json_array_get(msgs, 3);
    assert_string_equal(json_string_value(json_object_get(tool, "role")), "tool");
    assert_string_equal(json_string_value(json_object_get(tool, "tool_call_id")), "call_abc");
    assert_string_equal(json_string_value(json_object_get(tool, "content")), "{\"temp\":21}");
    json_t *t0 = json_array_get(json_object_get(j, "tools"), 0);
    assert_string_equal(json_string_value(json_object_get(t0, "type")), "function");
    json_t *params = json_object_get(json_object_get(t0, "function"), "parameters");
    assert_string_equal(json_string_value(json_object_get(params, "type")), "object");
    assert_int_equal(json_integer_value(json_object_get(j, "max_tokens")), 200);
    assert_true(fabs(json_real_value(json_object_get(j, "temperature")) - 0.5) < 1e-9);
    assert_true(json_is_true(json_object_get(j, "stream")));
    assert_true(
        json_is_true(json_object_get(json_object_get(j, "stream_options"), "include_usage")));
    json_decref(j);
    th__llm_http_free(&h);

    /* not streamed: no stream fields */
    r.stream = 0;
    assert_int_equal(th__llm_chat_http(&w, &h, &err), 0);
    j = body_json(&h);
    assert_null(json_object_get(j, "stream"));
    assert_null(json_object_get(j, "stream_options"));
    json_decref(j);
    th__llm_http_free(&h);

    /* a tool message without its call id cannot be expressed */
    m[2].tool_call_id = NULL;
    assert_int_equal(th__llm_chat_http(&w, &h, &err), TH_EINVAL);
    assert_string_equal(err.field, "messages[2].tool_call_id");
    assert_null(h.url);
    m[2].tool_call_id = "call_abc";
    th_llm_tool_def bad = {"x", NULL, "[1,2]"};
    r.tools = &bad;
    assert_int_equal(th__llm_chat_http(&w, &h, &err), TH_EINVAL);
    assert_string_equal(err.field, "tools[0].parameters");
}

static void test_anthropic_request(void **state)
{
    (void)state;
    th_llm_request r;
    th_llm_message m[4];
    tool_conversation(&r, m);
    m[3] = m[2]; /* a second result of the same turn joins the same user message */
    m[3].content = "second";
    r.nmessages = 4;
    r.max_tokens = 0;
    r.temperature = -1;
    th__llm_wire_req w = wire(TH_LLM_ANTHROPIC, &r);
    th__llm_http h;
    th_error err;
    assert_int_equal(th__llm_chat_http(&w, &h, &err), 0);
    assert_string_equal(h.url, "https://api.anthropic.com/v1/messages");
    assert_true(has_header(&h, "x-api-key: sk-test"));
    assert_true(has_header(&h, "anthropic-version: 2023-06-01"));
    assert_true(has_header(&h, "Content-Type: application/json"));
    json_t *j = body_json(&h);
    assert_string_equal(json_string_value(json_object_get(j, "model")), "claude-3-5-haiku-latest");
    assert_string_equal(json_string_value(json_object_get(j, "system")), "Be brief.");
    assert_int_equal(json_integer_value(json_object_get(j, "max_tokens")), 1024);
    assert_null(json_object_get(j, "temperature"));
    assert_null(json_object_get(j, "stream"));
    json_t *msgs = json_object_get(j, "messages");
    assert_int_equal(json_array_size(msgs), 3);
    json_t *u = json_array_get(msgs, 0);
    assert_string_equal(json_string_value(json_object_get(u, "role")), "user");
    json_t *b = json_array_get(json_object_get(u, "content"), 0);
    assert_string_equal(json_string_value(json_object_get(b, "type")), "text");
    json_t *a = json_array_get(msgs, 1);
    assert_string_equal(json_string_value(json_object_get(a, "role")), "assistant");
    b = json_array_get(json_object_get(a, "content"), 0);
    assert_string_equal(json_string_value(json_object_get(b, "type")), "tool_use");
    assert_string_equal(json_string_value(json_object_get(b, "id")), "call_abc");
    assert_string_equal(json_string_value(json_object_get(b, "name")), "get_weather");
    assert_string_equal(json_string_value(json_object_get(json_object_get(b, "input"), "city")),
                        "Paris");
    json_t *res = json_array_get(msgs, 2);
    assert_string_equal(json_string_value(json_object_get(res, "role")), "user");
    assert_int_equal(json_array_size(json_object_get(res, "content")), 2);
    b = json_array_get(json_object_get(res, "content"), 0);
    assert_string_equal(json_string_value(json_object_get(b, "type")), "tool_result");
    assert_string_equal(json_string_value(json_object_get(b, "tool_use_id")), "call_abc");
    assert_string_equal(json_string_value(json_object_get(b, "content")), "{\"temp\":21}");
    json_t *t0 = json_array_get(json_object_get(j, "tools"), 0);
    assert_string_equal(json_string_value(json_object_get(t0, "name")), "get_weather");
    assert_non_null(json_object_get(json_object_get(t0, "input_schema"), "properties"));
    json_decref(j);
    th__llm_http_free(&h);

    r.stream = 1;
    assert_int_equal(th__llm_chat_http(&w, &h, &err), 0);
    j = body_json(&h);
    assert_true(json_is_true(json_object_get(j, "stream")));
    json_decref(j);
    th__llm_http_free(&h);

    th_llm_tool_call badcall = {"c", "f", "not json"};
    m[1].tool_calls = &badcall;
    assert_int_equal(th__llm_chat_http(&w, &h, &err), TH_EINVAL);
    assert_string_equal(err.field, "messages[1].tool_calls[0].arguments");
}

static void test_ollama_request(void **state)
{
    (void)state;
    th_llm_request r;
    th_llm_message m[3];
    tool_conversation(&r, m);
    th__llm_wire_req w = wire(TH_LLM_OLLAMA, &r);
    w.api_key = NULL;
    th__llm_http h;
    th_error err;
    assert_int_equal(th__llm_chat_http(&w, &h, &err), 0);
    assert_string_equal(h.url, "http://127.0.0.1:11434/api/chat");
    assert_true(has_header(&h, "Content-Type: application/json"));
    for (char **p = h.headers; *p; p++)
        assert_null(strstr(*p, "Authorization"));
    json_t *j = body_json(&h);
    assert_string_equal(json_string_value(json_object_get(j, "model")), "llama3.2");
    assert_true(json_is_false(json_object_get(j, "stream")));
    json_t *o = json_object_get(j, "options");
    assert_true(fabs(json_real_value(json_object_get(o, "temperature")) - 0.5) < 1e-9);
    assert_int_equal(json_integer_value(json_object_get(o, "num_predict")), 200);
    json_t *msgs = json_object_get(j, "messages");
    assert_int_equal(json_array_size(msgs), 4);
    json_t *call = json_array_get(json_object_get(json_array_get(msgs, 2), "tool_calls"), 0);
    json_t *args = json_object_get(json_object_get(call, "function"), "arguments");
    assert_true(json_is_object(args)); /* an object, not a string */
    assert_string_equal(json_string_value(json_object_get(args, "city")), "Paris");
    json_t *tool = json_array_get(msgs, 3);
    assert_string_equal(json_string_value(json_object_get(tool, "role")), "tool");
    assert_string_equal(json_string_value(json_object_get(tool, "tool_name")), "get_weather");
    assert_int_equal(json_array_size(json_object_get(j, "tools")), 1);
    json_decref(j);
    th__llm_http_free(&h);

    r.stream = 1;
    assert_int_equal(th__llm_chat_http(&w, &h, &err), 0);
    j = body_json(&h);
    assert_true(json_is_true(json_object_get(j, "stream")));
    json_decref(j);
    th__llm_http_free(&h);

    w.format = TH_LLM_MOCK;
    assert_int_equal(th__llm_chat_http(&w, &h, &err), TH_EINVAL);
}

static void test_requests_under_oom(void **state)
{
    (void)state;
    th_llm_request r;
    th_llm_message m[3];
    tool_conversation(&r, m);
    th_llm_format fs[] = {TH_LLM_OPENAI, TH_LLM_ANTHROPIC, TH_LLM_OLLAMA};
    for (size_t k = 0; k < 3; k++) {
        th__llm_wire_req w = wire(fs[k], &r);
        for (long n = 0; n < 100; n++) {
            th__llm_http h;
            th_error err;
            th__alloc_fail_after(n);
            int rc = th__llm_chat_http(&w, &h, &err);
            th__alloc_fail_reset();
            if (rc == 0) {
                th__llm_http_free(&h);
                break;
            }
            assert_int_equal(rc, TH_ENOMEM);
        }
    }
}

/* ---- whole answers ------------------------------------------------------- */

static void test_parse_openai(void **state)
{
    (void)state;
    const char *body =
        "{\"id\":\"chatcmpl-123\",\"object\":\"chat.completion\",\"created\":1677652288,"
        "\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
        "\"content\":\"Hello there, how may I assist you today?\"},\"logprobs\":null,"
        "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":12,"
        "\"total_tokens\":21}}";
    th_llm_response r = {0};
    th_error err;
    assert_int_equal(th__llm_parse_chat(TH_LLM_OPENAI, body, strlen(body), &r, &err), 0);
    assert_string_equal(r.text, "Hello there, how may I assist you today?");
    assert_string_equal(r.finish_reason, "stop");
    assert_int_equal(r.usage.input_tokens, 9);
    assert_int_equal(r.usage.output_tokens, 12);
    th_llm_response_free(&r);

    const char *tools =
        "{\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":null,"
        "\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":"
        "\"get_weather\",\"arguments\":\"{\\\"city\\\":\\\"Boston\\\"}\"}}]},"
        "\"finish_reason\":\"tool_calls\"}],\"usage\":{\"prompt_tokens\":82,"
        "\"completion_tokens\":17}}";
    assert_int_equal(th__llm_parse_chat(TH_LLM_OPENAI, tools, strlen(tools), &r, &err), 0);
    assert_string_equal(r.text, "");
    assert_int_equal(r.ntool_calls, 1);
    assert_string_equal(r.tool_calls[0].id, "call_1");
    assert_string_equal(r.tool_calls[0].name, "get_weather");
    assert_string_equal(r.tool_calls[0].arguments, "{\"city\":\"Boston\"}");
    assert_string_equal(r.finish_reason, "tool_calls");
    th_llm_response_free(&r);

    assert_int_equal(th__llm_parse_chat(TH_LLM_OPENAI, "{\"choices\":", 11, &r, &err),
                     TH_EUPSTREAM);
    assert_int_equal(th__llm_parse_chat(TH_LLM_OPENAI, "{}", 2, &r, &err), TH_EUPSTREAM);
    assert_null(r.text);
}

static void test_parse_anthropic(void **state)
{
    (void)state;
    const char *body =
        "{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"model\":"
        "\"claude-3-5-haiku-latest\",\"content\":[{\"type\":\"text\",\"text\":\"I'll check.\"},"
        "{\"type\":\"tool_use\",\"id\":\"toolu_01\",\"name\":\"get_weather\",\"input\":{\"city\":"
        "\"San Francisco\"}}],\"stop_reason\":\"tool_use\",\"stop_sequence\":null,\"usage\":"
        "{\"input_tokens\":472,\"output_tokens\":91}}";
    th_llm_response r = {0};
    th_error err;
    assert_int_equal(th__llm_parse_chat(TH_LLM_ANTHROPIC, body, strlen(body), &r, &err), 0);
    assert_string_equal(r.text, "I'll check.");
    assert_int_equal(r.ntool_calls, 1);
    assert_string_equal(r.tool_calls[0].id, "toolu_01");
    assert_string_equal(r.tool_calls[0].name, "get_weather");
    assert_string_equal(r.tool_calls[0].arguments, "{\"city\":\"San Francisco\"}");
    assert_string_equal(r.finish_reason, "tool_calls");
    assert_int_equal(r.usage.input_tokens, 472);
    assert_int_equal(r.usage.output_tokens, 91);
    th_llm_response_free(&r);

    const char *len = "{\"content\":[{\"type\":\"text\",\"text\":\"Hi\"}],\"stop_reason\":"
                      "\"max_tokens\",\"usage\":{\"input_tokens\":1,\"output_tokens\":2}}";
    assert_int_equal(th__llm_parse_chat(TH_LLM_ANTHROPIC, len, strlen(len), &r, &err), 0);
    assert_string_equal(r.finish_reason, "length");
    th_llm_response_free(&r);
    const char *end = "{\"content\":[],\"stop_reason\":\"end_turn\"}";
    assert_int_equal(th__llm_parse_chat(TH_LLM_ANTHROPIC, end, strlen(end), &r, &err), 0);
    assert_string_equal(r.finish_reason, "stop");
    assert_string_equal(r.text, "");
    th_llm_response_free(&r);
    assert_int_equal(th__llm_parse_chat(TH_LLM_ANTHROPIC, "{\"x\":1}", 7, &r, &err), TH_EUPSTREAM);
}

static void test_parse_ollama(void **state)
{
    (void)state;
    const char *body =
        "{\"model\":\"llama3.2\",\"created_at\":\"2023-12-12T14:13:43.416799Z\",\"message\":"
        "{\"role\":\"assistant\",\"content\":\"Hello! How are you today?\"},\"done\":true,"
        "\"done_reason\":\"stop\",\"total_duration\":5191566416,\"prompt_eval_count\":26,"
        "\"eval_count\":298}";
    th_llm_response r = {0};
    th_error err;
    assert_int_equal(th__llm_parse_chat(TH_LLM_OLLAMA, body, strlen(body), &r, &err), 0);
    assert_string_equal(r.text, "Hello! How are you today?");
    assert_string_equal(r.finish_reason, "stop");
    assert_int_equal(r.usage.input_tokens, 26);
    assert_int_equal(r.usage.output_tokens, 298);
    th_llm_response_free(&r);

    const char *tools =
        "{\"model\":\"llama3.2\",\"message\":{\"role\":\"assistant\",\"content\":\"\","
        "\"tool_calls\":[{\"function\":{\"name\":\"get_weather\",\"arguments\":{\"city\":"
        "\"Toronto\"}}}]},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":5,"
        "\"eval_count\":7}";
    assert_int_equal(th__llm_parse_chat(TH_LLM_OLLAMA, tools, strlen(tools), &r, &err), 0);
    assert_int_equal(r.ntool_calls, 1);
    assert_string_equal(r.tool_calls[0].id, "call_0");
    assert_string_equal(r.tool_calls[0].arguments, "{\"city\":\"Toronto\"}");
    assert_string_equal(r.finish_reason, "tool_calls");
    th_llm_response_free(&r);

    const char *lenr = "{\"message\":{\"content\":\"a\"},\"done\":true,\"done_reason\":\"length\"}";
    assert_int_equal(th__llm_parse_chat(TH_LLM_OLLAMA, lenr, strlen(lenr), &r, &err), 0);
    assert_string_equal(r.finish_reason, "length");
    th_llm_response_free(&r);
}

/* ---- errors, limits, embeddings, estimates ------------------------------- */

static void test_error_message(void **state)
{
    (void)state;
    char buf[128];
    const char *o = "{\"error\":{\"message\":\"Rate limit reached for gpt-4o-mini\",\"type\":"
                    "\"requests\",\"code\":\"rate_limit_exceeded\"}}";
    th__llm_error_message(TH_LLM_OPENAI, 429, o, strlen(o), buf, sizeof buf);
    assert_string_equal(buf, "Rate limit reached for gpt-4o-mini");
    const char *a = "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":"
                    "\"Overloaded\"}}";
    th__llm_error_message(TH_LLM_ANTHROPIC, 529, a, strlen(a), buf, sizeof buf);
    assert_string_equal(buf, "Overloaded");
    const char *l = "{\"error\":\"model 'x' not found\"}";
    th__llm_error_message(TH_LLM_OLLAMA, 404, l, strlen(l), buf, sizeof buf);
    assert_string_equal(buf, "model 'x' not found");
    th__llm_error_message(TH_LLM_OPENAI, 502, "<html>Bad\ngateway</html>", 24, buf, sizeof buf);
    assert_string_equal(buf, "HTTP 502: <html>Bad gateway</html>");
    th__llm_error_message(TH_LLM_OPENAI, 500, NULL, 0, buf, sizeof buf);
    assert_non_null(strstr(buf, "500"));
    char tiny[8];
    th__llm_error_message(TH_LLM_OPENAI, 429, o, strlen(o), tiny, sizeof tiny);
    assert_string_equal(tiny, "Rate li");
}

static void hdr(th__llm_limits *l, const char *line, int64_t now)
{
    th__llm_limits_header(l, line, strlen(line), now);
}

static void test_limits(void **state)
{
    (void)state;
    th__llm_limits l;
    int64_t now = THTEST_T0; /* 2023-11-14T22:13:20Z */
    th__llm_limits_init(&l);
    assert_int_equal(l.retry_after_ms, -1);
    assert_int_equal(l.requests_remaining, -1);
    assert_int_equal(l.tokens_reset_ms, -1);
    hdr(&l, "Retry-After: 20\r\n", now);
    assert_int_equal(l.retry_after_ms, 20000);
    hdr(&l, "retry-after: Tue, 14 Nov 2023 22:13:50 GMT\r\n", now);
    assert_int_equal(l.retry_after_ms, 30000);
    hdr(&l, "retry-after: Tue, 14 Nov 2023 22:13:00 GMT\r\n", now);
    assert_int_equal(l.retry_after_ms, 0);
    hdr(&l, "retry-after-ms: 1500\r\n", now);
    assert_int_equal(l.retry_after_ms, 1500);
    hdr(&l, "x-ratelimit-remaining-requests: 59\r\n", now);
    hdr(&l, "X-RateLimit-Remaining-Tokens:149984\r\n", now);
    assert_int_equal(l.requests_remaining, 59);
    assert_int_equal(l.tokens_remaining, 149984);
    struct {
        const char *v;
        int64_t ms;
    } d[] = {{"1s", 1000},          {"6m0s", 360000}, {"20ms", 20},
             {"1h2m3.5s", 3723500}, {"0.5s", 500},    {"7.66s", 7660}};
    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++) {
        char line[96];
        snprintf(line, sizeof line, "x-ratelimit-reset-requests: %s\r\n", d[i].v);
        hdr(&l, line, now);
        assert_int_equal(l.requests_reset_ms, d[i].ms);
        snprintf(line, sizeof line, "x-ratelimit-reset-tokens: %s\r\n", d[i].v);
        hdr(&l, line, now);
        assert_int_equal(l.tokens_reset_ms, d[i].ms);
    }
    hdr(&l, "x-ratelimit-reset-tokens: soon\r\n", now);
    assert_int_equal(l.tokens_reset_ms, -1);

    th__llm_limits_init(&l);
    hdr(&l, "anthropic-ratelimit-requests-remaining: 49\r\n", now);
    hdr(&l, "anthropic-ratelimit-tokens-remaining: 39000\r\n", now);
    hdr(&l, "anthropic-ratelimit-requests-reset: 2023-11-14T22:13:25Z\r\n", now);
    hdr(&l, "anthropic-ratelimit-tokens-reset: 2023-11-14T23:13:21.250+01:00\r\n", now);
    assert_int_equal(l.requests_remaining, 49);
    assert_int_equal(l.tokens_remaining, 39000);
    assert_int_equal(l.requests_reset_ms, 5000);
    assert_int_equal(l.tokens_reset_ms, 1250);
    hdr(&l, "anthropic-ratelimit-requests-reset: 2020-01-01T00:00:00Z\r\n", now);
    assert_int_equal(l.requests_reset_ms, 0);
    /* unknown and malformed headers change nothing */
    th__llm_limits before = l;
    hdr(&l, "content-type: application/json\r\n", now);
    hdr(&l, "HTTP/1.1 429 Too Many Requests\r\n", now);
    hdr(&l, "\r\n", now);
    assert_memory_equal(&before, &l, sizeof l);
}

static void test_embeddings(void **state)
{
    (void)state;
    const char *texts[] = {"hello", "world"};
    th_llm_request req = {0};
    th__llm_wire_req w = wire(TH_LLM_OPENAI, &req);
    w.model = "text-embedding-3-small";
    th__llm_http h;
    th_error err;
    assert_int_equal(th__llm_embed_http(&w, texts, 2, &h, &err), 0);
    assert_string_equal(h.url, "https://api.openai.com/v1/embeddings");
    json_t *j = body_json(&h);
    assert_int_equal(json_array_size(json_object_get(j, "input")), 2);
    json_decref(j);
    th__llm_http_free(&h);
    w = wire(TH_LLM_OLLAMA, &req);
    assert_int_equal(th__llm_embed_http(&w, texts, 2, &h, &err), 0);
    assert_string_equal(h.url, "http://127.0.0.1:11434/api/embed");
    th__llm_http_free(&h);
    w = wire(TH_LLM_ANTHROPIC, &req);
    assert_int_equal(th__llm_embed_http(&w, texts, 2, &h, &err), TH_EINVAL);

    const char *ob = "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":1,"
                     "\"embedding\":[0.5,0.25]},{\"object\":\"embedding\",\"index\":0,"
                     "\"embedding\":[1,2]}],\"model\":\"m\",\"usage\":{\"prompt_tokens\":8,"
                     "\"total_tokens\":8}}";
    float *v;
    int dim;
    th_llm_usage u;
    assert_int_equal(th__llm_parse_embed(TH_LLM_OPENAI, ob, strlen(ob), 2, &v, &dim, &u, &err), 0);
    assert_int_equal(dim, 2);
    assert_true(v[0] == 1.0f && v[1] == 2.0f && v[2] == 0.5f && v[3] == 0.25f);
    assert_int_equal(u.input_tokens, 8);
    th_llm_free(v);
    const char *lb = "{\"model\":\"all-minilm\",\"embeddings\":[[0.1,0.2,0.3],[0.4,0.5,0.6]],"
                     "\"prompt_eval_count\":8}";
    assert_int_equal(th__llm_parse_embed(TH_LLM_OLLAMA, lb, strlen(lb), 2, &v, &dim, &u, &err), 0);
    assert_int_equal(dim, 3);
    th_llm_free(v);
    assert_int_equal(th__llm_parse_embed(TH_LLM_OLLAMA, lb, strlen(lb), 3, &v, &dim, &u, &err),
                     TH_EUPSTREAM);
    const char *ragged = "{\"embeddings\":[[0.1,0.2],[0.4]]}";
    assert_int_equal(
        th__llm_parse_embed(TH_LLM_OLLAMA, ragged, strlen(ragged), 2, &v, &dim, &u, &err),
        TH_EUPSTREAM);
    assert_null(v);

    assert_int_equal(
        th__llm_health_http(TH_LLM_ANTHROPIC, "https://api.anthropic.com", "k", NULL, &h), 0);
    assert_string_equal(h.url, "https://api.anthropic.com/v1/models");
    assert_true(has_header(&h, "anthropic-version: 2023-06-01"));
    th__llm_http_free(&h);
    assert_int_equal(th__llm_health_http(TH_LLM_OLLAMA, "http://x", NULL, NULL, &h), 0);
    assert_string_equal(h.url, "http://x/api/tags");
    th__llm_http_free(&h);
    assert_int_equal(th__llm_health_http(TH_LLM_OPENAI, "http://x/v1", "k", NULL, &h), 0);
    assert_string_equal(h.url, "http://x/v1/models");
    assert_true(has_header(&h, "Authorization: Bearer k"));
    th__llm_http_free(&h);
}

static void test_names_defaults_estimate(void **state)
{
    (void)state;
    th_llm_format f;
    const char *names[] = {"mock", "openai", "anthropic", "ollama"};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(th_llm_format_parse(names[i], &f), 0);
        assert_int_equal((int)f, i);
        assert_string_equal(th_llm_format_name(f), names[i]);
    }
    assert_int_equal(th_llm_format_parse("gemini", &f), TH_EINVAL);
    assert_int_equal(th_llm_format_parse(NULL, &f), TH_EINVAL);
    assert_string_equal(th_llm_breaker_name(TH_BREAKER_HALF_OPEN), "half-open");
    assert_string_equal(th_llm_breaker_name(TH_BREAKER_OPEN), "open");
    assert_string_equal(th_llm_breaker_name(TH_BREAKER_CLOSED), "closed");
    assert_string_equal(th__llm_default_base_url(TH_LLM_MOCK), "mock://");
    assert_string_equal(th__llm_default_model(TH_LLM_MOCK), "mock-1");

    th_llm_message m = {TH_LLM_USER, "12345678", NULL, 0, NULL, NULL};
    th_llm_request r = {0};
    r.system = "abcd";
    r.messages = &m;
    r.nmessages = 1;
    assert_int_equal(th__llm_estimate_tokens(&r), 3 + 1024);
    r.max_tokens = 10;
    assert_int_equal(th__llm_estimate_tokens(&r), 13);
    th_llm_response_free(NULL);
    th__llm_http_free(NULL);
    th__llm_stream_free(NULL);
}

/* ---- mock ---------------------------------------------------------------- */

static void test_mock_chat(void **state)
{
    (void)state;
    th_llm_message m[3] = {{TH_LLM_USER, "hello there friend", NULL, 0, NULL, NULL}};
    th_llm_request r = {0};
    r.messages = m;
    r.nmessages = 1;
    th__llm_wire_req w = wire(TH_LLM_MOCK, &r);
    th_llm_response a = {0}, b = {0};
    th_error err;
    assert_int_equal(th__mock_chat(&w, &a, &err), 0);
    assert_int_equal(th__mock_chat(&w, &b, &err), 0);
    assert_same(&a, &b);
    assert_non_null(strstr(a.text, "mock-1"));
    assert_non_null(strstr(a.text, "hello there friend"));
    assert_string_equal(a.finish_reason, "stop");
    assert_int_equal(a.usage.input_tokens, 3);
    assert_true(a.usage.output_tokens >= 3);
    assert_int_equal(a.ntool_calls, 0);
    th_llm_response_free(&b);

    /* chunks: one word and its trailing space each, covering the text */
    size_t off = 0, n, chunks = 0;
    char rebuilt[256] = "";
    while ((n = th__mock_chunk(a.text, off)) > 0) {
        assert_true(off + n <= strlen(a.text));
        strncat(rebuilt, a.text + off, n);
        off += n;
        chunks++;
    }
    assert_string_equal(rebuilt, a.text);
    assert_int_equal(chunks, (size_t)a.usage.output_tokens);
    assert_int_equal(th__mock_chunk("one two", 0), 4);
    assert_int_equal(th__mock_chunk("one two", 4), 3);
    assert_int_equal(th__mock_chunk("one two", 7), 0);
    th_llm_response_free(&a);

    /* a tool request is a call when tools are offered */
    m[0].content = "Weather? [[tool:get_weather {\"city\": \"Paris\", \"d\": [[1]]}]] please";
    assert_int_equal(th__mock_chat(&w, &a, &err), 0);
    assert_int_equal(a.ntool_calls, 0); /* no tools offered */
    th_llm_response_free(&a);
    r.tools = &weather_tool;
    r.ntools = 1;
    assert_int_equal(th__mock_chat(&w, &a, &err), 0);
    assert_int_equal(a.ntool_calls, 1);
    assert_string_equal(a.tool_calls[0].name, "get_weather");
    assert_string_equal(a.tool_calls[0].arguments, "{\"city\":\"Paris\",\"d\":[[1]]}");
    assert_string_equal(a.finish_reason, "tool_calls");
    assert_string_equal(a.text, "");
    assert_int_equal(th__mock_chat(&w, &b, &err), 0);
    assert_same(&a, &b);
    th_llm_response_free(&b);

    /* once the result follows, the mock answers in text */
    m[1].role = TH_LLM_ASSISTANT;
    m[1].tool_calls = a.tool_calls;
    m[1].ntool_calls = 1;
    m[2].role = TH_LLM_TOOL;
    m[2].content = "sunny";
    m[2].tool_call_id = a.tool_calls[0].id;
    r.nmessages = 3;
    assert_int_equal(th__mock_chat(&w, &b, &err), 0);
    assert_int_equal(b.ntool_calls, 0);
    assert_non_null(strstr(b.text, "sunny"));
    assert_string_equal(b.finish_reason, "stop");
    th_llm_response_free(&b);
    th_llm_response_free(&a);

    /* no arguments: {} */
    m[0].content = "[[tool:get_weather]]";
    r.nmessages = 1;
    assert_int_equal(th__mock_chat(&w, &a, &err), 0);
    assert_int_equal(a.ntool_calls, 1);
    assert_string_equal(a.tool_calls[0].arguments, "{}");
    th_llm_response_free(&a);
    w.model = "mock-big";
    m[0].content = "x";
    assert_int_equal(th__mock_chat(&w, &a, &err), 0);
    assert_non_null(strstr(a.text, "mock-big"));
    th_llm_response_free(&a);
}

static double cosine(const float *a, const float *b, int dim)
{
    double s = 0;
    for (int i = 0; i < dim; i++)
        s += (double)a[i] * b[i];
    return s;
}

static void test_mock_embed(void **state)
{
    (void)state;
    const char *texts[] = {"The cat sat on the mat", "the CAT sat on a mat!",
                           "Quantum chromodynamics lectures", ""};
    float *v, *v2;
    int dim;
    th_llm_usage u;
    assert_int_equal(th__mock_embed(texts, 4, &v, &dim, &u), 0);
    assert_int_equal(dim, TH__MOCK_EMBED_DIM);
    assert_int_equal(u.input_tokens, 6 + 6 + 3);
    assert_true(fabs(cosine(v, v, dim) - 1.0) < 1e-5);
    double near = cosine(v, v + dim, dim), far = cosine(v, v + 2 * dim, dim);
    assert_true(near > 0.7);
    assert_true(near > far);
    assert_true(cosine(v + 3 * dim, v + 3 * dim, dim) == 0.0);
    assert_int_equal(th__mock_embed(texts, 4, &v2, &dim, NULL), 0);
    assert_memory_equal(v, v2, 4 * (size_t)dim * sizeof *v);
    th_llm_free(v);
    th_llm_free(v2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_openai_request),
        T(test_anthropic_request),
        T(test_ollama_request),
        T(test_requests_under_oom),
        T(test_parse_openai),
        T(test_parse_anthropic),
        T(test_parse_ollama),
        T(test_error_message),
        T(test_limits),
        T(test_embeddings),
        T(test_names_defaults_estimate),
        T(test_mock_chat),
        T(test_mock_embed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
