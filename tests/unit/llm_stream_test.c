/*
 * Unit tests of streamed LLM answers (src/llm/wire_stream.c and the formats'
 * stream parsers), from the providers' documented chunks and events:
 *
 *   - every stream fed whole, byte by byte and in random splits gives the
 *     same answer; CRLF and bare CR line ends, comments, multi-line data,
 *     ignored fields;
 *   - tool-call streams: openai index deltas, anthropic input_json_delta,
 *     ollama tool_calls lines;
 *   - streams cut before their terminator, malformed chunks, error events
 *     and over-long lines fail with TH_EUPSTREAM;
 *   - every allocation failing in turn for streams, parsers and the mock.
 */
#include "llm_wire_helpers.h"

/* ---- streams ------------------------------------------------------------- */

static const char openai_text_stream[] =
    ": keep-alive comment\r\n"
    "\r\n"
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,"
    "\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
    "\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\r\n"
    "\r\n"
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
    "\"delta\":{\"content\":\"Hello\"},\"finish_reason\":null}],\"usage\":null}\n"
    "\n"
    "data:{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
    "\"delta\":{\"content\":\" wor\\u006cd\"},\"finish_reason\":null}],\"usage\":null}\n"
    "\n"
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
    "\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n"
    "\n"
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[],"
    "\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":2,\"total_tokens\":10}}\n"
    "\n"
    "data: [DONE]\n"
    "\n";

struct deltas {
    char buf[256];
    size_t len;
    int calls;
};

static void on_delta(const char *t, size_t n, void *ud)
{
    struct deltas *d = ud;
    assert_true(d->len + n < sizeof d->buf);
    memcpy(d->buf + d->len, t, n);
    d->len += n;
    d->buf[d->len] = '\0';
    d->calls++;
}

static void test_openai_stream(void **state)
{
    (void)state;
    th_llm_response r;
    stream_all_ways(TH_LLM_OPENAI, openai_text_stream, &r);
    assert_string_equal(r.text, "Hello world");
    assert_string_equal(r.finish_reason, "stop");
    assert_int_equal(r.usage.input_tokens, 8);
    assert_int_equal(r.usage.output_tokens, 2);
    assert_int_equal(r.ntool_calls, 0);
    th_llm_response_free(&r);

    /* deltas reach the callback in order */
    struct deltas d = {{0}, 0, 0};
    memset(&r, 0, sizeof r);
    th__llm_stream *s = th__llm_stream_new(TH_LLM_OPENAI, &r, on_delta, &d);
    th_error err;
    assert_false(th__llm_stream_started(s));
    assert_int_equal(th__llm_stream_feed(s, openai_text_stream, strlen(openai_text_stream), &err),
                     0);
    assert_true(th__llm_stream_started(s));
    assert_int_equal(th__llm_stream_end(s, &err), 0);
    th__llm_stream_free(s);
    assert_string_equal(d.buf, "Hello world");
    assert_int_equal(d.calls, 2);
    th_llm_response_free(&r);

    assert_cut_fails(TH_LLM_OPENAI, openai_text_stream, "data: [DONE]");
}

static const char openai_tool_stream[] =
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,"
    "\"tool_calls\":[{\"index\":0,\"id\":\"call_A\",\"type\":\"function\",\"function\":"
    "{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n"
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":"
    "{\"arguments\":\"{\\\"ci\"}}]},\"finish_reason\":null}]}\n\n"
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_B\","
    "\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"{}\"}}]},"
    "\"finish_reason\":null}]}\n\n"
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":"
    "{\"arguments\":\"ty\\\": \\\"Paris\\\"}\"}}]},\"finish_reason\":null}]}\n\n"
    "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n"
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":30,\"completion_tokens\":20}}\n\n"
    "data: [DONE]\n\n";

static void test_openai_tool_stream(void **state)
{
    (void)state;
    th_llm_response r;
    stream_all_ways(TH_LLM_OPENAI, openai_tool_stream, &r);
    assert_string_equal(r.text, "");
    assert_int_equal(r.ntool_calls, 2);
    assert_string_equal(r.tool_calls[0].id, "call_A");
    assert_string_equal(r.tool_calls[0].name, "get_weather");
    assert_string_equal(r.tool_calls[0].arguments, "{\"city\": \"Paris\"}");
    assert_string_equal(r.tool_calls[1].id, "call_B");
    assert_string_equal(r.tool_calls[1].name, "get_time");
    assert_string_equal(r.tool_calls[1].arguments, "{}");
    assert_string_equal(r.finish_reason, "tool_calls");
    assert_int_equal(r.usage.input_tokens, 30);
    th_llm_response_free(&r);
    assert_cut_fails(TH_LLM_OPENAI, openai_tool_stream, "data: [DONE]");
}

static const char anthropic_stream[] =
    "event: message_start\n"
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\","
    "\"role\":\"assistant\",\"content\":[],\"model\":\"claude-3-5-haiku-latest\","
    "\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,"
    "\"output_tokens\":1}}}\n"
    "\n"
    "event: content_block_start\n"
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\","
    "\"text\":\"\"}}\n"
    "\n"
    "event: ping\n"
    "data: {\"type\": \"ping\"}\n"
    "\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
    "\"text\":\"Let me \"}}\n"
    "\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":0,\n"
    "data: \"delta\":{\"type\":\"text_delta\",\"text\":\"check.\"}}\n"
    "\n"
    "event: content_block_stop\n"
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n"
    "\n"
    "event: content_block_start\n"
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":"
    "\"tool_use\",\"id\":\"toolu_1\",\"name\":\"get_weather\",\"input\":{}}}\n"
    "\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":"
    "\"input_json_delta\",\"partial_json\":\"\"}}\n"
    "\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":"
    "\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \\\"San\"}}\n"
    "\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":"
    "\"input_json_delta\",\"partial_json\":\" Francisco\\\"}\"}}\n"
    "\n"
    "event: content_block_stop\n"
    "data: {\"type\":\"content_block_stop\",\"index\":1}\n"
    "\n"
    "event: message_delta\n"
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\","
    "\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n"
    "\n"
    "event: message_stop\n"
    "data: {\"type\":\"message_stop\"}\n"
    "\n";

static void test_anthropic_stream(void **state)
{
    (void)state;
    th_llm_response r;
    stream_all_ways(TH_LLM_ANTHROPIC, anthropic_stream, &r);
    assert_string_equal(r.text, "Let me check.");
    assert_int_equal(r.ntool_calls, 1);
    assert_string_equal(r.tool_calls[0].id, "toolu_1");
    assert_string_equal(r.tool_calls[0].name, "get_weather");
    assert_string_equal(r.tool_calls[0].arguments, "{\"city\": \"San Francisco\"}");
    assert_string_equal(r.finish_reason, "tool_calls");
    assert_int_equal(r.usage.input_tokens, 25);
    assert_int_equal(r.usage.output_tokens, 89);
    th_llm_response_free(&r);
    assert_cut_fails(TH_LLM_ANTHROPIC, anthropic_stream, "event: message_stop");

    /* the terminator's event without its blank line is not dispatched */
    size_t n = strlen(anthropic_stream) - 1;
    char *nofinal = th__strndup(anthropic_stream, n);
    th_error err;
    assert_int_equal(run_stream(TH_LLM_ANTHROPIC, nofinal, FEED_WHOLE, &r, &err), TH_EUPSTREAM);
    th_llm_response_free(&r);
    th__free(nofinal);
}

static void test_anthropic_error_event(void **state)
{
    (void)state;
    const char *text = "event: message_start\n"
                       "data: {\"type\":\"message_start\",\"message\":{\"usage\":"
                       "{\"input_tokens\":3,\"output_tokens\":0}}}\n\n"
                       "event: error\n"
                       "data: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", "
                       "\"message\": \"Overloaded\"}}\n\n";
    th_llm_response r;
    th_error err;
    for (int mode = 0; mode < 3; mode++) {
        assert_int_equal(run_stream(TH_LLM_ANTHROPIC, text, mode, &r, &err), TH_EUPSTREAM);
        assert_non_null(strstr(err.message, "Overloaded"));
        th_llm_response_free(&r);
    }
}

static void test_openai_error_and_malformed(void **state)
{
    (void)state;
    const char *errchunk =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n"
        "data: {\"error\":{\"message\":\"The server had an error while processing your "
        "request.\",\"type\":\"server_error\"}}\n\n";
    th_llm_response r;
    th_error err;
    assert_int_equal(run_stream(TH_LLM_OPENAI, errchunk, FEED_BYTES, &r, &err), TH_EUPSTREAM);
    assert_non_null(strstr(err.message, "server had an error"));
    th_llm_response_free(&r);

    const char *bad = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n"
                      "data: {\"choices\":[{\"index\":0,\"delta\":\n\n"
                      "data: [DONE]\n\n";
    assert_int_equal(run_stream(TH_LLM_OPENAI, bad, FEED_WHOLE, &r, &err), TH_EUPSTREAM);
    assert_non_null(strstr(err.message, "malformed"));
    th_llm_response_free(&r);

    const char *badanth = "event: content_block_delta\ndata: {nope}\n\n";
    assert_int_equal(run_stream(TH_LLM_ANTHROPIC, badanth, FEED_WHOLE, &r, &err), TH_EUPSTREAM);
    th_llm_response_free(&r);
    assert_int_equal(run_stream(TH_LLM_OLLAMA, "{\"message\":\n", FEED_WHOLE, &r, &err),
                     TH_EUPSTREAM);
    th_llm_response_free(&r);

    /* a failed stream stays failed */
    memset(&r, 0, sizeof r);
    th__llm_stream *s = th__llm_stream_new(TH_LLM_OPENAI, &r, NULL, NULL);
    assert_int_equal(th__llm_stream_feed(s, "data: x\n\n", 9, &err), TH_EUPSTREAM);
    assert_int_equal(th__llm_stream_feed(s, "data: [DONE]\n\n", 14, &err), TH_EUPSTREAM);
    assert_int_equal(th__llm_stream_end(s, &err), TH_EUPSTREAM);
    th__llm_stream_free(s);
    th_llm_response_free(&r);
}

static void test_line_limit(void **state)
{
    (void)state;
    size_t n = TH__LLM_LINE_MAX + 16;
    char *big = malloc(n);
    assert_non_null(big);
    memset(big, 'a', n);
    memcpy(big, "data: ", 6);
    th_llm_response r = {0};
    th_error err;
    th__llm_stream *s = th__llm_stream_new(TH_LLM_OPENAI, &r, NULL, NULL);
    int rc = 0;
    for (size_t off = 0; off < n && rc == 0; off += 65536)
        rc = th__llm_stream_feed(s, big + off, n - off < 65536 ? n - off : 65536, &err);
    assert_int_equal(rc, TH_EUPSTREAM);
    assert_non_null(strstr(err.message, "line over"));
    th__llm_stream_free(s);
    th_llm_response_free(&r);
    free(big);
}

static const char ollama_stream[] =
    "{\"model\":\"llama3.2\",\"created_at\":\"2023-08-04T08:52:19.385406455-07:00\","
    "\"message\":{\"role\":\"assistant\",\"content\":\"The\"},\"done\":false}\n"
    "{\"model\":\"llama3.2\",\"created_at\":\"2023-08-04T08:52:19.5Z\",\"message\":{\"role\":"
    "\"assistant\",\"content\":\" sky\"},\"done\":false}\r\n"
    "\n"
    "{\"model\":\"llama3.2\",\"message\":{\"role\":\"assistant\",\"content\":\" is blue.\"},"
    "\"done\":false}\n"
    "{\"model\":\"llama3.2\",\"created_at\":\"2023-08-04T19:22:45.499127Z\",\"message\":"
    "{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"length\","
    "\"total_duration\":4883583458,\"prompt_eval_count\":26,\"eval_count\":290}\n";

static void test_ollama_stream(void **state)
{
    (void)state;
    th_llm_response r;
    stream_all_ways(TH_LLM_OLLAMA, ollama_stream, &r);
    assert_string_equal(r.text, "The sky is blue.");
    assert_string_equal(r.finish_reason, "length");
    assert_int_equal(r.usage.input_tokens, 26);
    assert_int_equal(r.usage.output_tokens, 290);
    th_llm_response_free(&r);
    assert_cut_fails(TH_LLM_OLLAMA, ollama_stream,
                     "{\"model\":\"llama3.2\",\"created_at\":"
                     "\"2023-08-04T19");

    /* the last line may lack its newline */
    char *nonl = th__strndup(ollama_stream, strlen(ollama_stream) - 1);
    th_error err;
    assert_int_equal(run_stream(TH_LLM_OLLAMA, nonl, FEED_BYTES, &r, &err), 0);
    assert_string_equal(r.text, "The sky is blue.");
    th_llm_response_free(&r);
    th__free(nonl);

    const char *tools = "{\"message\":{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":"
                        "[{\"function\":{\"name\":\"get_weather\",\"arguments\":{\"city\":"
                        "\"Oslo\"}}}]},\"done\":false}\n"
                        "{\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,"
                        "\"done_reason\":\"stop\",\"prompt_eval_count\":1,\"eval_count\":2}\n";
    stream_all_ways(TH_LLM_OLLAMA, tools, &r);
    assert_int_equal(r.ntool_calls, 1);
    assert_string_equal(r.tool_calls[0].arguments, "{\"city\":\"Oslo\"}");
    assert_string_equal(r.finish_reason, "tool_calls");
    th_llm_response_free(&r);

    assert_int_equal(
        run_stream(TH_LLM_OLLAMA, "{\"error\":\"model not found\"}\n", FEED_WHOLE, &r, &err),
        TH_EUPSTREAM);
    assert_non_null(strstr(err.message, "model not found"));
    th_llm_response_free(&r);
}

/* Every allocation of parsers, streams and the mock failing in turn: each
 * call fails cleanly (ASan proves no leak) until enough memory succeeds. */
static void test_answers_under_oom(void **state)
{
    (void)state;
    const char *body = "{\"content\":[{\"type\":\"text\",\"text\":\"Hi\"},{\"type\":"
                       "\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{\"a\":1}}],"
                       "\"stop_reason\":\"tool_use\"}";
    struct {
        th_llm_format f;
        const char *text;
    } streams[] = {{TH_LLM_OPENAI, openai_tool_stream},
                   {TH_LLM_OPENAI, openai_text_stream},
                   {TH_LLM_ANTHROPIC, anthropic_stream},
                   {TH_LLM_OLLAMA, ollama_stream}};
    for (long n = 0;; n++) {
        th_llm_response r = {0};
        th_error err;
        th__alloc_fail_after(n);
        int rc = th__llm_parse_chat(TH_LLM_ANTHROPIC, body, strlen(body), &r, &err);
        th__alloc_fail_reset();
        th_llm_response_free(&r);
        if (rc == 0)
            break;
        assert_int_equal(rc, TH_ENOMEM);
    }
    for (size_t k = 0; k < sizeof streams / sizeof streams[0]; k++) {
        for (long n = 0;; n++) {
            th_llm_response r = {0};
            th_error err;
            th__alloc_fail_after(n);
            th__llm_stream *s = th__llm_stream_new(streams[k].f, &r, NULL, NULL);
            int rc = TH_ENOMEM;
            if (s) {
                rc = th__llm_stream_feed(s, streams[k].text, strlen(streams[k].text), &err);
                if (rc == 0)
                    rc = th__llm_stream_end(s, &err);
            }
            th__alloc_fail_reset();
            th__llm_stream_free(s);
            th_llm_response_free(&r);
            if (rc == 0)
                break;
            assert_true(rc == TH_ENOMEM || rc == TH_EUPSTREAM);
            assert_true(n < 10000);
        }
    }
    th_llm_message m = {TH_LLM_USER, "[[tool:get_weather {\"city\":\"Rome\"}]]", NULL, 0, NULL,
                        NULL};
    th_llm_request req = {0};
    req.messages = &m;
    req.nmessages = 1;
    req.tools = &weather_tool;
    req.ntools = 1;
    th__llm_wire_req w = wire(TH_LLM_MOCK, &req);
    for (long n = 0;; n++) {
        th_llm_response r = {0};
        th_error err;
        th__alloc_fail_after(n);
        int rc = th__mock_chat(&w, &r, &err);
        th__alloc_fail_reset();
        th_llm_response_free(&r);
        if (rc == 0)
            break;
        assert_int_equal(rc, TH_ENOMEM);
    }
}

/* SSE details: bare CR line ends, id / retry / unknown fields ignored, an
 * event with no data line dispatches nothing, "data" without a colon is an
 * empty data line. */
static void test_sse_details(void **state)
{
    (void)state;
    const char *text = "id: 1\rretry: 1000\r: note\rdata: {\"choices\":[{\"index\":0,"
                       "\"delta\":{\"content\":\"a\"}}]}\r\r"
                       "event: ignored\rfoo: bar\r\r"
                       "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"},"
                       "\"finish_reason\":\"length\"}]}\r\n\r\n"
                       "data: [DONE]\r\r";
    th_llm_response r;
    stream_all_ways(TH_LLM_OPENAI, text, &r);
    assert_string_equal(r.text, "ab");
    assert_string_equal(r.finish_reason, "length");
    th_llm_response_free(&r);

    /* "data" alone joins an empty line: "{\n}" is still one object */
    const char *joined = "data: {\"type\":\"message_stop\"\ndata\ndata: }\n\n";
    stream_all_ways(TH_LLM_ANTHROPIC, joined, &r);
    th_llm_response_free(&r);

    /* NULL err is allowed everywhere */
    th_llm_request req;
    th_llm_message m[3];
    tool_conversation(&req, m);
    m[2].tool_call_id = NULL;
    th__llm_wire_req w = wire(TH_LLM_OPENAI, &req);
    th__llm_http h;
    assert_int_equal(th__llm_chat_http(&w, &h, NULL), TH_EINVAL);
    assert_int_equal(run_stream(TH_LLM_OPENAI, "data: [DONE]\n", FEED_WHOLE, &r, NULL),
                     TH_EUPSTREAM);
    th_llm_response_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_openai_stream),
        T(test_openai_tool_stream),
        T(test_anthropic_stream),
        T(test_anthropic_error_event),
        T(test_openai_error_and_malformed),
        T(test_line_limit),
        T(test_ollama_stream),
        T(test_sse_details),
        T(test_answers_under_oom),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
