/*
 * Helpers shared by the LLM wire-format tests (llm_wire_test.c,
 * llm_stream_test.c): a tool conversation, wire requests over the formats'
 * defaults, header and body checks, and a stream runner that feeds an answer
 * whole, byte by byte or in random splits. Static inline so each binary uses
 * what it needs without unused-function warnings.
 */
#ifndef LLM_WIRE_HELPERS_H
#define LLM_WIRE_HELPERS_H

#include "thtest.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "llm/wire.h"

/* Teardown of every test: a failed assertion never leaves the allocator
 * failing for the next one. */
static inline int reset_alloc(void **state)
{
    (void)state;
    th__alloc_fail_reset();
    return 0;
}

#define T(fn) cmocka_unit_test_teardown(fn, reset_alloc)

/* A deterministic xorshift64* generator for the random splits. */
static uint64_t rnd_state = 0x9E3779B97F4A7C15ULL;

static inline uint64_t rnd(void)
{
    rnd_state ^= rnd_state >> 12;
    rnd_state ^= rnd_state << 25;
    rnd_state ^= rnd_state >> 27;
    return rnd_state * 2685821657736338717ULL;
}

/* ---- helpers ------------------------------------------------------------- */

static const th_llm_tool_def weather_tool = {"get_weather", "Current weather in a city",
                                             "{\"type\":\"object\",\"properties\":{\"city\":{"
                                             "\"type\":\"string\"}},\"required\":[\"city\"]}"};

static const th_llm_tool_call past_call = {"call_abc", "get_weather", "{\"city\":\"Paris\"}"};

/* A conversation: user asks, assistant called a tool, the tool answered. */
static inline void tool_conversation(th_llm_request *r, th_llm_message m[3])
{
    memset(r, 0, sizeof *r);
    memset(m, 0, 3 * sizeof *m);
    m[0].role = TH_LLM_USER;
    m[0].content = "What is the weather in Paris?";
    m[1].role = TH_LLM_ASSISTANT;
    m[1].tool_calls = &past_call;
    m[1].ntool_calls = 1;
    m[2].role = TH_LLM_TOOL;
    m[2].content = "{\"temp\":21}";
    m[2].tool_call_id = "call_abc";
    m[2].tool_name = "get_weather";
    r->system = "Be brief.";
    r->messages = m;
    r->nmessages = 3;
    r->tools = &weather_tool;
    r->ntools = 1;
    r->temperature = 0.5;
    r->max_tokens = 200;
}

static inline th__llm_wire_req wire(th_llm_format f, const th_llm_request *r)
{
    th__llm_wire_req w = {
        f, th__llm_default_base_url(f), "sk-test", "2023-06-01", th__llm_default_model(f), r};
    return w;
}

static inline int has_header(const th__llm_http *h, const char *line)
{
    for (char **p = h->headers; p && *p; p++)
        if (!strcmp(*p, line))
            return 1;
    return 0;
}

static inline json_t *body_json(const th__llm_http *h)
{
    assert_non_null(h->body);
    json_t *j = json_loads(h->body, 0, NULL);
    assert_non_null(j);
    return j;
}

enum { FEED_WHOLE, FEED_BYTES, FEED_RANDOM };

/* Feeds `text` to a new stream of format f in the given way; returns the
 * rc of the first failing feed or of th__llm_stream_end. */
static inline int run_stream(th_llm_format f, const char *text, int mode, th_llm_response *out,
                             th_error *err)
{
    memset(out, 0, sizeof *out);
    th__llm_stream *s = th__llm_stream_new(f, out, NULL, NULL);
    assert_non_null(s);
    size_t len = strlen(text), off = 0;
    int rc = 0;
    while (off < len && rc == 0) {
        size_t n = mode == FEED_WHOLE ? len : mode == FEED_BYTES ? 1 : 1 + rnd() % 17;
        if (n > len - off)
            n = len - off;
        rc = th__llm_stream_feed(s, text + off, n, err);
        off += n;
    }
    if (rc == 0)
        rc = th__llm_stream_end(s, err);
    th__llm_stream_free(s);
    return rc;
}

static inline void assert_same(const th_llm_response *a, const th_llm_response *b)
{
    assert_string_equal(a->text, b->text);
    assert_string_equal(a->finish_reason, b->finish_reason);
    assert_int_equal(a->usage.input_tokens, b->usage.input_tokens);
    assert_int_equal(a->usage.output_tokens, b->usage.output_tokens);
    assert_int_equal(a->ntool_calls, b->ntool_calls);
    for (size_t i = 0; i < a->ntool_calls; i++) {
        assert_string_equal(a->tool_calls[i].id, b->tool_calls[i].id);
        assert_string_equal(a->tool_calls[i].name, b->tool_calls[i].name);
        assert_string_equal(a->tool_calls[i].arguments, b->tool_calls[i].arguments);
    }
}

/* Streams `text` whole, byte by byte and in 20 random splits; all give the
 * same answer, left in *out. */
static inline void stream_all_ways(th_llm_format f, const char *text, th_llm_response *out)
{
    th_error err;
    assert_int_equal(run_stream(f, text, FEED_WHOLE, out, &err), 0);
    for (int k = 0; k < 21; k++) {
        th_llm_response r2;
        int rc = run_stream(f, text, k == 0 ? FEED_BYTES : FEED_RANDOM, &r2, &err);
        if (rc)
            fail_msg("split %d: %s", k, err.message);
        assert_same(out, &r2);
        th_llm_response_free(&r2);
    }
}

/* Every proper prefix cut at a line end before the terminator fails. */
static inline void assert_cut_fails(th_llm_format f, const char *text, const char *term)
{
    const char *t = strstr(text, term);
    assert_non_null(t);
    size_t cut = (size_t)(t - text);
    char *prefix = th__strndup(text, cut);
    th_llm_response r;
    th_error err;
    assert_int_equal(run_stream(f, prefix, FEED_WHOLE, &r, &err), TH_EUPSTREAM);
    assert_non_null(strstr(err.message, "ended without"));
    th_llm_response_free(&r);
    th__free(prefix);
}
#endif
