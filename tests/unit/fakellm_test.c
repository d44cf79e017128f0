/*
 * Tests of the fake LLM provider (tests/lib/fakellm.c) with plain libcurl
 * requests on loopback:
 *
 *   - each format's normal answer (OpenAI, Anthropic, Ollama chat;
 *     OpenAI and Ollama embeddings; the health paths) and its stream, parsed
 *     event by event: text, model echo, usage numbers, the terminator
 *     ("data: [DONE]", message_stop, the "done": true line) and the
 *     Content-Type;
 *   - tool-call answers and streams in each format (arguments split over
 *     several chunks, reassembled to the scripted JSON);
 *   - FAKE_STATUS: 429 with Retry-After / retry-after-ms headers and each
 *     provider's error body, 529 overloaded_error;
 *   - FAKE_HANG (the client times out; the server still stops cleanly with
 *     hung requests open), FAKE_CUT (no terminator, the connection closed),
 *     FAKE_MALFORMED, FAKE_DELAY with 200 concurrent requests through curl
 *     multi finishing in about one delay, chunk delays;
 *   - request recording: method, path, body, headers; the FIFO order and the
 *     default reply.
 */
#include "daemon.h"
#include "fakellm.h"
#include "thtest.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

static const char *const JSON_HDR[] = {"Authorization: Bearer sk-test", NULL};

static thd_resp *post(fakellm *f, th_llm_format fmt, const char *path, const char *body,
                      long timeout_ms)
{
    return thd_http(fakellm_url(f, fmt), "POST", path, NULL, JSON_HDR, body, strlen(body),
                    timeout_ms);
}

static thd_resp *openai(fakellm *f, const char *body)
{
    return post(f, TH_LLM_OPENAI, "/chat/completions", body, 10000);
}

static thd_resp *anthropic(fakellm *f, const char *body)
{
    return post(f, TH_LLM_ANTHROPIC, "/v1/messages", body, 10000);
}

static thd_resp *ollama(fakellm *f, const char *body)
{
    return post(f, TH_LLM_OLLAMA, "/api/chat", body, 10000);
}

#define OA_STREAM "{\"model\":\"gpt-x\",\"stream\":true,\"messages\":[]}"
#define AN_STREAM "{\"model\":\"claude-x\",\"stream\":true,\"max_tokens\":10,\"messages\":[]}"
#define OL_STREAM "{\"model\":\"llama-x\",\"messages\":[]}"

/* ---- stream parsing ------------------------------------------------------ */

typedef struct sse {
    size_t n;
    char type[64][48];
    json_t *data[64]; /* NULL for "[DONE]" or non-JSON */
    char *raw[64];
} sse;

/* Splits an SSE body into events ("event:" and one "data:" line each). */
static void sse_parse(const char *body, sse *out)
{
    memset(out, 0, sizeof *out);
    const char *p = body;
    while (*p && out->n < 64) {
        const char *end = strstr(p, "\n\n");
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char *ev = thd_fmt("%.*s", (int)len, p);
        char *type = strstr(ev, "event: ");
        char *data = strstr(ev, "data: ");
        if (type) {
            size_t tl = strcspn(type + 7, "\n");
            snprintf(out->type[out->n], sizeof out->type[0], "%.*s", (int)tl, type + 7);
        }
        out->raw[out->n] = data ? thd_fmt("%s", data + 6) : thd_fmt("%s", "");
        out->data[out->n] = json_loads(out->raw[out->n], 0, NULL);
        out->n++;
        free(ev);
        p += len;
        while (*p == '\n')
            p++;
    }
}

static void sse_free(sse *s)
{
    for (size_t i = 0; i < s->n; i++) {
        json_decref(s->data[i]);
        free(s->raw[i]);
    }
}

static void assert_ctype(const thd_resp *r, const char *want)
{
    char *ct = thd_header(r, "Content-Type");
    assert_non_null(ct);
    assert_string_equal(ct, want);
    free(ct);
}

/* ---- normal answers ------------------------------------------------------ */

static void test_openai_answer(void **state)
{
    fakellm *f = fakellm_start();
    fakellm_push(f, &(fakellm_reply){.text = "Bonjour", .input_tokens = 100, .output_tokens = 42});
    thd_resp *r = openai(f, "{\"model\":\"gpt-x\",\"messages\":[{\"role\":\"user\",\"content\":"
                            "\"hi\"}]}");
    assert_int_equal(r->status, 200);
    assert_ctype(r, "application/json");
    assert_non_null(r->json);
    assert_string_equal(thd_jstr(r->json, "object"), "chat.completion");
    assert_string_equal(thd_jstr(r->json, "model"), "gpt-x");
    assert_string_equal(thd_jstr(r->json, "choices[0].message.role"), "assistant");
    assert_string_equal(thd_jstr(r->json, "choices[0].message.content"), "Bonjour");
    assert_string_equal(thd_jstr(r->json, "choices[0].finish_reason"), "stop");
    assert_int_equal(thd_jint(r->json, "usage.prompt_tokens", -1), 100);
    assert_int_equal(thd_jint(r->json, "usage.completion_tokens", -1), 42);
    assert_int_equal(thd_jint(r->json, "usage.total_tokens", -1), 142);
    thd_resp_free(r);
    fakellm_free(f);
}

static void test_openai_stream(void **state)
{
    fakellm *f = fakellm_start();
    fakellm_push(
        f, &(fakellm_reply){
               .text = "one two three four", .chunks = 4, .input_tokens = 9, .output_tokens = 4});
    thd_resp *r = openai(f, OA_STREAM);
    assert_int_equal(r->status, 200);
    assert_ctype(r, "text/event-stream");
    char *te = thd_header(r, "Transfer-Encoding");
    assert_non_null(te);
    assert_string_equal(te, "chunked");
    free(te);
    sse s;
    sse_parse(r->body, &s);
    assert_true(s.n >= 4 + 4);
    assert_string_equal(s.raw[s.n - 1], "[DONE]");
    char text[256] = "";
    size_t content_chunks = 0;
    for (size_t i = 0; i + 2 < s.n; i++) {
        assert_non_null(s.data[i]);
        assert_string_equal(thd_jstr(s.data[i], "object"), "chat.completion.chunk");
        assert_string_equal(thd_jstr(s.data[i], "model"), "gpt-x");
        const char *c = thd_jstr(s.data[i], "choices[0].delta.content");
        if (c && *c) {
            content_chunks++;
            strncat(text, c, sizeof text - strlen(text) - 1);
        }
    }
    assert_string_equal(text, "one two three four");
    assert_int_equal(content_chunks, 4);
    assert_string_equal(thd_jstr(s.data[0], "choices[0].delta.role"), "assistant");
    assert_string_equal(thd_jstr(s.data[s.n - 3], "choices[0].finish_reason"), "stop");
    json_t *usage = s.data[s.n - 2];
    assert_int_equal(json_array_size(thd_jget(usage, "choices")), 0);
    assert_int_equal(thd_jint(usage, "usage.prompt_tokens", -1), 9);
    assert_int_equal(thd_jint(usage, "usage.completion_tokens", -1), 4);
    sse_free(&s);
    thd_resp_free(r);
    fakellm_free(f);
}

static void test_anthropic_answer(void **state)
{
    fakellm *f = fakellm_start();
    fakellm_push(f, &(fakellm_reply){.text = "Hi there", .input_tokens = 5, .output_tokens = -1});
    thd_resp *r = anthropic(f, "{\"model\":\"claude-x\",\"max_tokens\":10,\"messages\":[]}");
    assert_int_equal(r->status, 200);
    assert_string_equal(thd_jstr(r->json, "type"), "message");
    assert_string_equal(thd_jstr(r->json, "model"), "claude-x");
    assert_string_equal(thd_jstr(r->json, "content[0].type"), "text");
    assert_string_equal(thd_jstr(r->json, "content[0].text"), "Hi there");
    assert_string_equal(thd_jstr(r->json, "stop_reason"), "end_turn");
    assert_int_equal(thd_jint(r->json, "usage.input_tokens", -1), 5);
    assert_int_equal(thd_jint(r->json, "usage.output_tokens", -1), 0);
    thd_resp_free(r);
    fakellm_free(f);
}

static void test_anthropic_stream(void **state)
{
    fakellm *f = fakellm_start();
    fakellm_push(
        f, &(fakellm_reply){
               .text = "streamed words", .chunks = 2, .input_tokens = 25, .output_tokens = 15});
    thd_resp *r = anthropic(f, AN_STREAM);
    assert_int_equal(r->status, 200);
    assert_ctype(r, "text/event-stream");
    sse s;
    sse_parse(r->body, &s);
    const char *want[] = {"message_start",       "content_block_start", "ping",
                          "content_block_delta", "content_block_delta", "content_block_stop",
                          "message_delta",       "message_stop"};
    assert_int_equal(s.n, 8);
    char text[128] = "";
    for (size_t i = 0; i < s.n; i++) {
        assert_string_equal(s.type[i], want[i]);
        assert_non_null(s.data[i]);
        assert_string_equal(thd_jstr(s.data[i], "type"), want[i]);
        if (strcmp(want[i], "content_block_delta") == 0) {
            assert_string_equal(thd_jstr(s.data[i], "delta.type"), "text_delta");
            strncat(text, thd_jstr(s.data[i], "delta.text"), sizeof text - strlen(text) - 1);
        }
    }
    assert_string_equal(text, "streamed words");
    assert_string_equal(thd_jstr(s.data[0], "message.model"), "claude-x");
    assert_int_equal(thd_jint(s.data[0], "message.usage.input_tokens", -1), 25);
    assert_string_equal(thd_jstr(s.data[6], "delta.stop_reason"), "end_turn");
    assert_int_equal(thd_jint(s.data[6], "usage.output_tokens", -1), 15);
    sse_free(&s);
    thd_resp_free(r);
    fakellm_free(f);
}

/* NDJSON lines of an ollama stream, parsed; returns the count. */
static size_t ndjson_parse(const char *body, json_t **lines, size_t max)
{
    size_t n = 0;
    const char *p = body;
    while (*p && n < max) {
        size_t len = strcspn(p, "\n");
        lines[n++] = json_loadb(p, len, 0, NULL);
        p += len;
        if (*p == '\n')
            p++;
    }
    return n;
}

static void test_ollama_answer_and_stream(void **state)
{
    fakellm *f = fakellm_start();
    fakellm_push(f, &(fakellm_reply){.text = "abc", .input_tokens = 3, .output_tokens = 2});
    thd_resp *r = ollama(f, "{\"model\":\"llama-x\",\"stream\":false,\"messages\":[]}");
    assert_int_equal(r->status, 200);
    assert_ctype(r, "application/json");
    assert_string_equal(thd_jstr(r->json, "message.content"), "abc");
    assert_int_equal(thd_jbool(r->json, "done"), 1);
    assert_string_equal(thd_jstr(r->json, "done_reason"), "stop");
    assert_int_equal(thd_jint(r->json, "prompt_eval_count", -1), 3);
    assert_int_equal(thd_jint(r->json, "eval_count", -1), 2);
    thd_resp_free(r);

    /* No "stream" field: ollama streams. */
    fakellm_push(f, &(fakellm_reply){
                        .text = "hello world", .chunks = 3, .input_tokens = 4, .output_tokens = 3});
    r = ollama(f, OL_STREAM);
    assert_int_equal(r->status, 200);
    assert_ctype(r, "application/x-ndjson");
    json_t *l[16];
    size_t n = ndjson_parse(r->body, l, 16);
    assert_int_equal(n, 4);
    char text[64] = "";
    for (size_t i = 0; i < n; i++) {
        assert_non_null(l[i]);
        assert_string_equal(thd_jstr(l[i], "model"), "llama-x");
        assert_int_equal(thd_jbool(l[i], "done"), i == n - 1);
        strncat(text, thd_jstr(l[i], "message.content"), sizeof text - strlen(text) - 1);
    }
    assert_string_equal(text, "hello world");
    assert_string_equal(thd_jstr(l[n - 1], "done_reason"), "stop");
    assert_int_equal(thd_jint(l[n - 1], "prompt_eval_count", -1), 4);
    assert_int_equal(thd_jint(l[n - 1], "eval_count", -1), 3);
    for (size_t i = 0; i < n; i++)
        json_decref(l[i]);
    thd_resp_free(r);
    fakellm_free(f);
}

static void test_embeddings_and_health(void **state)
{
    fakellm *f = fakellm_start();
    fakellm_push(f, &(fakellm_reply){.dims = 8, .input_tokens = 6});
    thd_resp *r = post(f, TH_LLM_OPENAI, "/embeddings",
                       "{\"model\":\"emb\",\"input\":[\"a\",\"b\",\"c\"]}", 10000);
    assert_int_equal(r->status, 200);
    assert_int_equal(json_array_size(thd_jget(r->json, "data")), 3);
    assert_int_equal(json_array_size(thd_jget(r->json, "data[2].embedding")), 8);
    assert_int_equal(thd_jint(r->json, "data[1].index", -1), 1);
    assert_int_equal(thd_jint(r->json, "usage.prompt_tokens", -1), 6);
    thd_resp_free(r);

    r = post(f, TH_LLM_OLLAMA, "/api/embed", "{\"model\":\"emb\",\"input\":\"one\"}", 10000);
    assert_int_equal(r->status, 200);
    assert_int_equal(json_array_size(thd_jget(r->json, "embeddings")), 1);
    assert_int_equal(json_array_size(thd_jget(r->json, "embeddings[0]")), FAKELLM_DIMS);
    assert_string_equal(thd_jstr(r->json, "model"), "emb");
    thd_resp_free(r);

    r = thd_http(fakellm_url(f, TH_LLM_OPENAI), "GET", "/models", NULL, NULL, NULL, 0, 10000);
    assert_int_equal(r->status, 200);
    assert_string_equal(thd_jstr(r->json, "data[0].id"), FAKELLM_MODEL);
    thd_resp_free(r);
    r = thd_http(fakellm_url(f, TH_LLM_OLLAMA), "GET", "/api/tags", NULL, NULL, NULL, 0, 10000);
    assert_int_equal(r->status, 200);
    assert_string_equal(thd_jstr(r->json, "models[0].name"), FAKELLM_MODEL);
    thd_resp_free(r);
    fakellm_set_health(f, 503);
    fakellm_push(f, &(fakellm_reply){.text = "kept"});
    r = thd_http(fakellm_url(f, TH_LLM_OLLAMA), "GET", "/api/tags", NULL, NULL, NULL, 0, 10000);
    assert_int_equal(r->status, 503);
    assert_non_null(thd_jstr(r->json, "error"));
    thd_resp_free(r);
    assert_int_equal(fakellm_pending(f), 1);
    fakellm_set_health(f, 0);
    assert_int_equal(fakellm_count_path(f, "/api/tags"), 2);
    r = thd_http(fakellm_url(f, TH_LLM_OLLAMA), "GET", "/nope", NULL, NULL, NULL, 0, 10000);
    assert_int_equal(r->status, 404);
    thd_resp_free(r);
    fakellm_free(f);
}

/* ---- tool calls ---------------------------------------------------------- */

#define ARGS "{\"location\":\"San Francisco, CA\",\"days\":3}"

static void assert_args(const char *text)
{
    json_t *got = json_loads(text, 0, NULL);
    json_t *want = json_loads(ARGS, 0, NULL);
    assert_non_null(got);
    assert_true(json_equal(got, want));
    json_decref(got);
    json_decref(want);
}

static void test_tool_call_openai(void **state)
{
    fakellm *f = fakellm_start();
    fakellm_reply tc = {
        .kind = FAKE_TOOL_CALL, .tool_name = "weather", .tool_args = ARGS, .chunks = 4};
    fakellm_push(f, &tc);
    thd_resp *r = openai(f, "{\"model\":\"m\",\"messages\":[]}");
    assert_string_equal(thd_jstr(r->json, "choices[0].finish_reason"), "tool_calls");
    assert_string_equal(thd_jstr(r->json, "choices[0].message.tool_calls[0].function.name"),
                        "weather");
    assert_args(thd_jstr(r->json, "choices[0].message.tool_calls[0].function.arguments"));
    thd_resp_free(r);

    fakellm_push(f, &tc);
    r = openai(f, OA_STREAM);
    sse s;
    sse_parse(r->body, &s);
    assert_string_equal(s.raw[s.n - 1], "[DONE]");
    char args[256] = "";
    size_t pieces = 0;
    for (size_t i = 0; i + 1 < s.n; i++) {
        json_t *call = thd_jget(s.data[i], "choices[0].delta.tool_calls[0]");
        if (!call)
            continue;
        assert_int_equal(thd_jint(call, "index", -1), 0);
        if (thd_jstr(call, "function.name"))
            assert_string_equal(thd_jstr(call, "function.name"), "weather");
        const char *a = thd_jstr(call, "function.arguments");
        if (a && *a) {
            pieces++;
            strncat(args, a, sizeof args - strlen(args) - 1);
        }
    }
    assert_int_equal(pieces, 4);
    assert_args(args);
    assert_string_equal(thd_jstr(s.data[s.n - 3], "choices[0].finish_reason"), "tool_calls");
    sse_free(&s);
    thd_resp_free(r);
    fakellm_free(f);
}

static void test_tool_call_anthropic(void **state)
{
    fakellm *f = fakellm_start();
    fakellm_reply tc = {
        .kind = FAKE_TOOL_CALL, .tool_name = "weather", .tool_args = ARGS, .chunks = 3};
    fakellm_push(f, &tc);
    thd_resp *r = anthropic(f, "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[]}");
    assert_string_equal(thd_jstr(r->json, "stop_reason"), "tool_use");
    assert_string_equal(thd_jstr(r->json, "content[0].type"), "tool_use");
    assert_string_equal(thd_jstr(r->json, "content[0].name"), "weather");
    char *in = thd_jdump(thd_jget(r->json, "content[0].input"));
    assert_args(in);
    free(in);
    thd_resp_free(r);

    fakellm_push(f, &tc);
    r = anthropic(f, AN_STREAM);
    sse s;
    sse_parse(r->body, &s);
    assert_string_equal(s.type[s.n - 1], "message_stop");
    assert_string_equal(thd_jstr(s.data[1], "content_block.type"), "tool_use");
    assert_string_equal(thd_jstr(s.data[1], "content_block.name"), "weather");
    assert_non_null(thd_jstr(s.data[1], "content_block.id"));
    char args[256] = "";
    size_t pieces = 0;
    for (size_t i = 0; i < s.n; i++)
        if (strcmp(s.type[i], "content_block_delta") == 0) {
            assert_string_equal(thd_jstr(s.data[i], "delta.type"), "input_json_delta");
            strncat(args, thd_jstr(s.data[i], "delta.partial_json"),
                    sizeof args - strlen(args) - 1);
            pieces++;
        }
    assert_int_equal(pieces, 3);
    assert_args(args);
    assert_string_equal(thd_jstr(s.data[s.n - 2], "delta.stop_reason"), "tool_use");
    sse_free(&s);
    thd_resp_free(r);
    fakellm_free(f);
}

static void test_tool_call_ollama(void **state)
{
    fakellm *f = fakellm_start();
    fakellm_push(
        f, &(fakellm_reply){.kind = FAKE_TOOL_CALL, .tool_name = "weather", .tool_args = ARGS});
    thd_resp *r = ollama(f, OL_STREAM);
    json_t *l[8];
    size_t n = ndjson_parse(r->body, l, 8);
    assert_int_equal(n, 2);
    assert_int_equal(thd_jbool(l[0], "done"), 0);
    assert_string_equal(thd_jstr(l[0], "message.tool_calls[0].function.name"), "weather");
    char *a = thd_jdump(thd_jget(l[0], "message.tool_calls[0].function.arguments"));
    assert_args(a);
    free(a);
    assert_int_equal(thd_jbool(l[1], "done"), 1);
    for (size_t i = 0; i < n; i++)
        json_decref(l[i]);
    thd_resp_free(r);
    fakellm_free(f);
}

/* ---- errors and failures ------------------------------------------------- */

static void test_status(void **state)
{
    fakellm *f = fakellm_start();
    fakellm_push(f, &(fakellm_reply){.kind = FAKE_STATUS,
                                     .status = 429,
                                     .headers = {"Retry-After: 1", "retry-after-ms: 50"}});
    thd_resp *r = openai(f, OA_STREAM);
    assert_int_equal(r->status, 429);
    char *ra = thd_header(r, "Retry-After"), *ms = thd_header(r, "retry-after-ms");
    assert_string_equal(ra, "1");
    assert_string_equal(ms, "50");
    free(ra);
    free(ms);
    assert_string_equal(thd_jstr(r->json, "error.type"), "rate_limit_exceeded");
    assert_non_null(thd_jstr(r->json, "error.message"));
    thd_resp_free(r);

    fakellm_push(f, &(fakellm_reply){.kind = FAKE_STATUS, .status = 529});
    r = anthropic(f, AN_STREAM);
    assert_int_equal(r->status, 529);
    assert_string_equal(thd_jstr(r->json, "type"), "error");
    assert_string_equal(thd_jstr(r->json, "error.type"), "overloaded_error");
    thd_resp_free(r);

    fakellm_push(f, &(fakellm_reply){.kind = FAKE_STATUS, .error_message = "boom"});
    r = ollama(f, OL_STREAM);
    assert_int_equal(r->status, 500);
    assert_string_equal(thd_jstr(r->json, "error"), "boom");
    thd_resp_free(r);
    fakellm_free(f);
}

static void test_hang(void **state)
{
    fakellm *f = fakellm_start();
    fakellm_push(f, &(fakellm_reply){.kind = FAKE_HANG});
    long long t0 = thd_now_ms();
    thd_resp *r = post(f, TH_LLM_OPENAI, "/chat/completions", OA_STREAM, 300);
    assert_int_equal(r->curl_rc, CURLE_OPERATION_TIMEDOUT);
    assert_true(thd_now_ms() - t0 >= 250);
    thd_resp_free(r);
    /* The server saw the client leave. */
    long long until = thd_now_ms() + 10000;
    while (fakellm_active(f) > 0 && thd_now_ms() < until)
        thd_sleep_ms(10);
    assert_int_equal(fakellm_active(f), 0);
    /* Same for a delayed answer and a slow stream. */
    fakellm_push(f, &(fakellm_reply){.kind = FAKE_DELAY, .delay_ms = 60000});
    fakellm_push(f, &(fakellm_reply){.chunks = 10, .chunk_delay_ms = 1000});
    for (int i = 0; i < 2; i++) {
        r = post(f, TH_LLM_OLLAMA, "/api/chat", OL_STREAM, 300);
        assert_int_equal(r->curl_rc, CURLE_OPERATION_TIMEDOUT);
        thd_resp_free(r);
        until = thd_now_ms() + 10000;
        while (fakellm_active(f) > 0 && thd_now_ms() < until)
            thd_sleep_ms(10);
        assert_int_equal(fakellm_active(f), 0);
    }
    /* The server goes on answering. */
    r = openai(f, OA_STREAM);
    assert_int_equal(r->status, 200);
    thd_resp_free(r);
    fakellm_free(f);
}

/* A thread that sends one request and keeps its answer. */
typedef struct bg {
    fakellm *f;
    thd_resp *r;
    pthread_t t;
} bg;

static void *bg_run(void *arg)
{
    bg *b = arg;
    b->r = post(b->f, TH_LLM_ANTHROPIC, "/v1/messages", AN_STREAM, 20000);
    return NULL;
}

static void test_stop_with_hung_requests(void **state)
{
    fakellm *f = fakellm_start();
    bg b[3];
    for (int i = 0; i < 3; i++) {
        fakellm_push(f,
                     &(fakellm_reply){.kind = i == 2 ? FAKE_DELAY : FAKE_HANG, .delay_ms = 60000});
        b[i].f = f;
        assert_int_equal(pthread_create(&b[i].t, NULL, bg_run, &b[i]), 0);
    }
    assert_int_equal(fakellm_wait_requests(f, 3, 10000), 3);
    long long until = thd_now_ms() + 10000;
    while (fakellm_active(f) < 3 && thd_now_ms() < until)
        thd_sleep_ms(10);
    assert_int_equal(fakellm_active(f), 3);
    long long t0 = thd_now_ms();
    fakellm_stop(f);
    for (int i = 0; i < 3; i++) {
        pthread_join(b[i].t, NULL);
        assert_int_not_equal(b[i].r->curl_rc, CURLE_OK);
        thd_resp_free(b[i].r);
    }
    assert_true(thd_now_ms() - t0 < 10000);
    fakellm_stop(f);
    fakellm_free(f);
}

static void test_cut(void **state)
{
    fakellm *f = fakellm_start();
    fakellm_push(f, &(fakellm_reply){.kind = FAKE_CUT, .cut_after = 2, .chunks = 5});
    thd_resp *r = openai(f, OA_STREAM);
    assert_int_not_equal(r->curl_rc, CURLE_OK);
    assert_non_null(strstr(r->body, "data: {"));
    assert_null(strstr(r->body, "[DONE]"));
    sse s;
    sse_parse(r->body, &s);
    assert_int_equal(s.n, 2);
    sse_free(&s);
    thd_resp_free(r);

    fakellm_push(f, &(fakellm_reply){.kind = FAKE_CUT, .cut_after = 3, .chunk_delay_ms = 10});
    r = anthropic(f, AN_STREAM);
    assert_int_not_equal(r->curl_rc, CURLE_OK);
    assert_null(strstr(r->body, "message_stop"));
    assert_non_null(strstr(r->body, "event: ping"));
    thd_resp_free(r);

    fakellm_push(f, &(fakellm_reply){.kind = FAKE_CUT});
    r = ollama(f, OL_STREAM);
    assert_int_not_equal(r->curl_rc, CURLE_OK);
    assert_null(strstr(r->body, "\"done\":true"));
    thd_resp_free(r);

    /* The next request is served normally. */
    r = openai(f, OA_STREAM);
    assert_int_equal(r->curl_rc, CURLE_OK);
    assert_non_null(strstr(r->body, "data: [DONE]\n\n"));
    thd_resp_free(r);
    fakellm_free(f);
}

static void test_malformed(void **state)
{
    fakellm *f = fakellm_start();
    fakellm_push(f, &(fakellm_reply){.kind = FAKE_MALFORMED});
    thd_resp *r = openai(f, "{\"messages\":[]}");
    assert_int_equal(r->status, 200);
    assert_null(r->json);
    thd_resp_free(r);

    fakellm_push(f, &(fakellm_reply){.kind = FAKE_MALFORMED});
    r = openai(f, OA_STREAM);
    assert_int_equal(r->status, 200);
    sse s;
    sse_parse(r->body, &s);
    assert_non_null(s.data[0]);
    assert_null(s.data[1]);
    sse_free(&s);
    thd_resp_free(r);

    fakellm_push(f, &(fakellm_reply){.kind = FAKE_MALFORMED});
    r = ollama(f, OL_STREAM);
    json_t *l[16];
    size_t n = ndjson_parse(r->body, l, 16);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        bad += l[i] == NULL;
        json_decref(l[i]);
    }
    assert_int_equal(bad, 1);
    thd_resp_free(r);
    fakellm_free(f);
}

static size_t discard(char *p, size_t size, size_t n, void *arg)
{
    return size * n;
}

#define NCONC 200
#define DELAY_MS 300

static void test_delay_concurrent(void **state)
{
    thd_curl_init();
    fakellm *f = fakellm_start();
    for (int i = 0; i < NCONC; i++)
        fakellm_push(f, &(fakellm_reply){.kind = FAKE_DELAY, .delay_ms = DELAY_MS});
    CURLM *m = curl_multi_init();
    curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, 0L);
    CURL *e[NCONC];
    char *url = thd_fmt("%s/chat/completions", fakellm_url(f, TH_LLM_OPENAI));
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    for (int i = 0; i < NCONC; i++) {
        e[i] = curl_easy_init();
        curl_easy_setopt(e[i], CURLOPT_URL, url);
        curl_easy_setopt(e[i], CURLOPT_POSTFIELDS, OA_STREAM);
        curl_easy_setopt(e[i], CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(e[i], CURLOPT_TIMEOUT_MS, 30000L);
        curl_easy_setopt(e[i], CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e[i], CURLOPT_FORBID_REUSE, 1L);
        curl_easy_setopt(e[i], CURLOPT_WRITEFUNCTION, discard);
        curl_multi_add_handle(m, e[i]);
    }
    long long t0 = thd_now_ms();
    int running = 1;
    while (running) {
        curl_multi_perform(m, &running);
        if (running)
            curl_multi_poll(m, NULL, 0, 100, NULL);
    }
    long long took = thd_now_ms() - t0;
    int ok = 0;
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m, &left)))
        if (msg->msg == CURLMSG_DONE && msg->data.result == CURLE_OK) {
            long status = 0;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &status);
            ok += status == 200;
        }
    for (int i = 0; i < NCONC; i++) {
        curl_multi_remove_handle(m, e[i]);
        curl_easy_cleanup(e[i]);
    }
    curl_multi_cleanup(m);
    curl_slist_free_all(h);
    free(url);
    assert_int_equal(ok, NCONC);
    assert_true(took >= DELAY_MS - 20);
    assert_true(took < 5 * DELAY_MS);
    assert_int_equal(fakellm_requests(f), NCONC);
    fakellm_free(f);
}

static void test_chunk_delay(void **state)
{
    fakellm *f = fakellm_start();
    fakellm_push(f, &(fakellm_reply){.chunks = 4, .chunk_delay_ms = 50});
    long long t0 = thd_now_ms();
    thd_resp *r = ollama(f, OL_STREAM);
    assert_true(thd_now_ms() - t0 >= 4 * 50 - 20);
    assert_non_null(strstr(r->body, "\"done\":true"));
    thd_resp_free(r);
    fakellm_free(f);
}

/* ---- recording ----------------------------------------------------------- */

static void test_recording(void **state)
{
    fakellm *f = fakellm_start();
    const char *const hdrs[] = {"x-api-key: sk-ant-1", "anthropic-version: 2023-06-01", NULL};
    const char *body = "{\"model\":\"claude-x\",\"max_tokens\":10,\"messages\":[{\"role\":"
                       "\"user\",\"content\":\"ping\"}]}";
    thd_resp *r = thd_http(fakellm_url(f, TH_LLM_ANTHROPIC), "POST", "/v1/messages", NULL, hdrs,
                           body, strlen(body), 10000);
    assert_int_equal(r->status, 200);
    thd_resp_free(r);
    r = openai(f, OA_STREAM);
    thd_resp_free(r);
    r = thd_http(fakellm_url(f, TH_LLM_OLLAMA), "GET", "/api/tags?x=1", NULL, NULL, NULL, 0, 10000);
    thd_resp_free(r);

    assert_int_equal(fakellm_requests(f), 3);
    const fakellm_request *q = fakellm_request_at(f, 0);
    assert_string_equal(q->method, "POST");
    assert_string_equal(q->path, "/v1/messages");
    assert_string_equal(q->body, body);
    assert_int_equal(q->body_len, strlen(body));
    assert_string_equal(thd_jstr(q->json, "messages[0].content"), "ping");
    assert_string_equal(fakellm_header(q, "X-API-Key"), "sk-ant-1");
    assert_string_equal(fakellm_header(q, "anthropic-version"), "2023-06-01");
    assert_string_equal(fakellm_header(q, "content-type"), "application/json");
    assert_null(fakellm_header(q, "authorization"));
    q = fakellm_request_at(f, 1);
    assert_string_equal(q->path, "/v1/chat/completions");
    assert_string_equal(fakellm_header(q, "Authorization"), "Bearer sk-test");
    q = fakellm_request_at(f, 2);
    assert_string_equal(q->method, "GET");
    assert_string_equal(q->path, "/api/tags?x=1");
    assert_null(q->json);
    assert_null(fakellm_request_at(f, 3));
    fakellm_free(f);
}

static void test_fifo_and_default(void **state)
{
    fakellm *f = fakellm_start();
    fakellm_set_default(f, &(fakellm_reply){.text = "default"});
    fakellm_push(f, &(fakellm_reply){.text = "first"});
    fakellm_push(f, &(fakellm_reply){.text = "second", .model = "override"});
    assert_int_equal(fakellm_pending(f), 2);
    const char *want[] = {"first", "second", "default", "default"};
    for (int i = 0; i < 4; i++) {
        thd_resp *r = openai(f, "{\"model\":\"asked\",\"messages\":[]}");
        assert_string_equal(thd_jstr(r->json, "choices[0].message.content"), want[i]);
        assert_string_equal(thd_jstr(r->json, "model"), i == 1 ? "override" : "asked");
        thd_resp_free(r);
    }
    assert_int_equal(fakellm_pending(f), 0);
    fakellm_set_default(f, NULL);
    thd_resp *r = openai(f, "{\"messages\":[]}");
    assert_string_equal(thd_jstr(r->json, "choices[0].message.content"), FAKELLM_TEXT);
    assert_string_equal(thd_jstr(r->json, "model"), FAKELLM_MODEL);
    thd_resp_free(r);
    fakellm_free(f);
    fakellm_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openai_answer),
        cmocka_unit_test(test_openai_stream),
        cmocka_unit_test(test_anthropic_answer),
        cmocka_unit_test(test_anthropic_stream),
        cmocka_unit_test(test_ollama_answer_and_stream),
        cmocka_unit_test(test_embeddings_and_health),
        cmocka_unit_test(test_tool_call_openai),
        cmocka_unit_test(test_tool_call_anthropic),
        cmocka_unit_test(test_tool_call_ollama),
        cmocka_unit_test(test_status),
        cmocka_unit_test(test_hang),
        cmocka_unit_test(test_stop_with_hung_requests),
        cmocka_unit_test(test_cut),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_delay_concurrent),
        cmocka_unit_test(test_chunk_delay),
        cmocka_unit_test(test_recording),
        cmocka_unit_test(test_fifo_and_default),
    };
    return cmocka_run_group_tests_name("fakellm", tests, NULL, NULL) != 0;
}
