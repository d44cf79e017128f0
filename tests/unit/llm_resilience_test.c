/*
 * The LLM gateway when providers misbehave, against the fake provider on
 * loopback:
 *
 *   - retries on 429 (honouring Retry-After / retry-after-ms), 500, 529 and
 *     timeouts, and none on 400 or malformed answers; a retry budget that
 *     runs out;
 *   - no retry once a stream has delivered text (a cut stream fails);
 *   - the circuit breaker: closed -> open after N failures (calls refused
 *     without a request), half-open after the cooldown, closed after N
 *     successful probes, open again when a probe fails;
 *   - fallback to the next target, and its event;
 *   - concurrency limits with a wait queue, a full queue refused with
 *     TH_EBUSY, request-rate buckets, the providers' rate-limit headers
 *     (x-ratelimit-*, anthropic-ratelimit-*) holding calls back, token
 *     buckets charged with actual usage;
 *   - cancellation of hung and queued calls (the connection is closed);
 *   - health checks: unhealthy after N failed checks (calls refused), healthy
 *     again when the checks pass;
 *   - freeing the gateway with calls in flight ends them with TH_ECLOSED.
 */
#include "daemon.h"
#include "llm_gateway_helpers.h"

#include <stdlib.h>

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static fakellm_reply status_reply(int status)
{
    return (fakellm_reply){.kind = FAKE_STATUS, .status = status};
}

static void test_retry_statuses(void **state)
{
    (void)state;
    fakellm *f = fakellm_start();
    gw_events ev;
    th_llm_gateway *gw = gw_new(&ev);
    th_llm_provider_options o = gw_opts("oa", TH_LLM_OPENAI, f);
    o.retry_max_ms = 1000; /* holds and Retry-After waits are capped by it */
    gw_add(gw, &o);
    gw_req q;
    gw_req_init(&q, "hi", "oa", NULL);
    th_llm_response r;
    th_error err;

    /* 429 with retry-after-ms: the retry waits at least that long. */
    fakellm_reply rep = status_reply(429);
    rep.headers[0] = "retry-after-ms: 150";
    fakellm_push(f, &rep);
    int64_t t0 = mono_ms();
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
    assert_true(mono_ms() - t0 >= 150);
    assert_int_equal(r.attempts, 2);
    assert_string_equal(r.text, FAKELLM_TEXT);
    th_llm_response_free(&r);
    assert_int_equal(gw_count(&ev, TH_LLM_EV_RATE_LIMITED, -1), 1);
    assert_int_equal(gw_count(&ev, TH_LLM_EV_RETRY, -1), 1);

    /* 500 then 529 then success. */
    rep = status_reply(500);
    fakellm_push(f, &rep);
    rep = status_reply(529);
    fakellm_push(f, &rep);
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
    assert_int_equal(r.attempts, 3);
    th_llm_response_free(&r);

    /* 400 is the caller's fault: no retry. */
    rep = status_reply(400);
    rep.error_message = "bad field";
    fakellm_push(f, &rep);
    size_t before = fakellm_count_path(f, "/v1/chat/completions");
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), TH_EUPSTREAM);
    assert_non_null(strstr(err.message, "HTTP 400"));
    assert_non_null(strstr(err.message, "bad field"));
    assert_int_equal(fakellm_count_path(f, "/v1/chat/completions"), before + 1);

    /* A malformed answer is not retried either. */
    rep = (fakellm_reply){.kind = FAKE_MALFORMED};
    fakellm_push(f, &rep);
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), TH_EUPSTREAM);
    assert_int_equal(fakellm_count_path(f, "/v1/chat/completions"), before + 2);

    /* Out of retries: 1 + max_retries attempts, then the last error. */
    rep = status_reply(503);
    for (int i = 0; i < 4; i++)
        fakellm_push(f, &rep);
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), TH_EUPSTREAM);
    assert_non_null(strstr(err.message, "HTTP 503"));
    assert_int_equal(fakellm_count_path(f, "/v1/chat/completions"), before + 6);
    assert_int_equal(fakellm_pending(f), 0);

    th_llm_provider_status s = gw_status(gw, "oa");
    assert_int_equal(s.rate_limited, 1);
    assert_int_equal(s.retries, 1 + 2 + 3);
    assert_int_equal(s.successes, 2);
    /* The key never shows in what the gateway reports. */
    assert_null(strstr(err.message, "sk-test-secret"));
    th_llm_gateway_free(gw);
    fakellm_free(f);
}

static void count_delta(const char *t, size_t n, void *ud)
{
    (void)t;
    *(size_t *)ud += n;
}

static void test_timeout_and_cut_stream(void **state)
{
    (void)state;
    fakellm *f = fakellm_start();
    th_llm_gateway *gw = gw_new(NULL);
    th_llm_provider_options o = gw_opts("an", TH_LLM_ANTHROPIC, f);
    o.timeout_ms = 200;
    o.max_retries = 1;
    gw_add(gw, &o);
    gw_req q;
    gw_req_init(&q, "hi", "an", NULL);
    th_llm_response r;
    th_error err;

    /* A hang times out and is retried; the retry succeeds. */
    fakellm_reply rep = {.kind = FAKE_HANG};
    fakellm_push(f, &rep);
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
    assert_int_equal(r.attempts, 2);
    th_llm_response_free(&r);
    /* Two hangs: out of retries, TH_ETIMEDOUT; the connections are gone. */
    fakellm_push(f, &rep);
    fakellm_push(f, &rep);
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), TH_ETIMEDOUT);
    assert_non_null(strstr(err.message, "200 ms"));
    for (int i = 0; i < 100 && fakellm_active(f); i++)
        thd_sleep_ms(10);
    assert_int_equal(fakellm_active(f), 0);

    /* A stream cut after text reached the caller (message_start,
     * content_block_start, ping, then a text delta): not retried. */
    size_t seen = 0;
    q.r.stream = 1;
    q.r.on_delta = count_delta;
    q.r.ud = &seen;
    rep = (fakellm_reply){.kind = FAKE_CUT, .cut_after = 4, .chunks = 4};
    fakellm_push(f, &rep);
    size_t before = fakellm_count_path(f, "/v1/messages");
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), TH_EUPSTREAM);
    assert_int_equal(fakellm_count_path(f, "/v1/messages"), before + 1);
    assert_true(seen > 0);
    /* The same cut with nobody reading the deltas: nothing was delivered,
     * so it is retried, and the retry succeeds. */
    q.r.on_delta = NULL;
    fakellm_push(f, &rep);
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
    assert_int_equal(r.attempts, 2);
    th_llm_response_free(&r);
    q.r.on_delta = count_delta;
    /* Cut before any text: retried, and the retry succeeds. */
    rep = (fakellm_reply){.kind = FAKE_CUT, .cut_after = 1, .chunks = 4};
    fakellm_push(f, &rep);
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
    assert_string_equal(r.text, FAKELLM_TEXT);
    assert_int_equal(r.attempts, 2);
    th_llm_response_free(&r);
    th_llm_gateway_free(gw);
    fakellm_free(f);
}

static void test_breaker(void **state)
{
    (void)state;
    fakellm *f = fakellm_start();
    gw_events ev;
    th_llm_gateway *gw = gw_new(&ev);
    th_llm_provider_options o = gw_opts("ol", TH_LLM_OLLAMA, f);
    o.max_retries = 0;
    o.breaker_failures = 3;
    o.breaker_cooldown_ms = 200;
    o.breaker_successes = 2;
    gw_add(gw, &o);
    gw_req q;
    gw_req_init(&q, "hi", "ol", NULL);
    th_llm_response r;
    th_error err;
    fakellm_reply rep = status_reply(500);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(gw_status(gw, "ol").breaker, TH_BREAKER_CLOSED);
        fakellm_push(f, &rep);
        assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), TH_EUPSTREAM);
    }
    assert_int_equal(gw_status(gw, "ol").breaker, TH_BREAKER_OPEN);
    assert_int_equal(gw_count(&ev, TH_LLM_EV_BREAKER, TH_BREAKER_OPEN), 1);
    /* Open: refused at once, nothing sent. */
    size_t sent = fakellm_count_path(f, "/api/chat");
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), TH_EUNAVAIL);
    assert_non_null(strstr(err.message, "circuit breaker is open"));
    assert_int_equal(fakellm_count_path(f, "/api/chat"), sent);

    /* After the cooldown a probe goes through; a failed probe reopens. */
    thd_sleep_ms(250);
    fakellm_push(f, &rep);
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), TH_EUPSTREAM);
    assert_int_equal(gw_status(gw, "ol").breaker, TH_BREAKER_OPEN);
    assert_int_equal(gw_count(&ev, TH_LLM_EV_BREAKER, TH_BREAKER_HALF_OPEN), 1);
    assert_int_equal(gw_count(&ev, TH_LLM_EV_BREAKER, TH_BREAKER_OPEN), 2);

    /* Two good probes close it. */
    thd_sleep_ms(250);
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
    th_llm_response_free(&r);
    assert_int_equal(gw_status(gw, "ol").breaker, TH_BREAKER_HALF_OPEN);
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
    th_llm_response_free(&r);
    assert_int_equal(gw_status(gw, "ol").breaker, TH_BREAKER_CLOSED);
    assert_int_equal(gw_count(&ev, TH_LLM_EV_BREAKER, TH_BREAKER_CLOSED), 1);
    /* 429s do not count against the breaker. */
    rep = status_reply(429);
    for (int i = 0; i < 4; i++) {
        fakellm_push(f, &rep);
        assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), TH_EUPSTREAM);
    }
    assert_int_equal(gw_status(gw, "ol").breaker, TH_BREAKER_CLOSED);
    th_llm_gateway_free(gw);
    fakellm_free(f);
}

static void test_fallback(void **state)
{
    (void)state;
    fakellm *f = fakellm_start();
    gw_events ev;
    th_llm_gateway *gw = gw_new(&ev);
    th_llm_provider_options o = gw_opts("primary", TH_LLM_OPENAI, f);
    o.max_retries = 1;
    gw_add(gw, &o);
    o = gw_opts("backup", TH_LLM_MOCK, NULL);
    gw_add(gw, &o);
    gw_req q;
    gw_req_init(&q, "fall back please", "primary", "backup");
    q.t[1].model = "mock-backup";
    fakellm_reply rep = status_reply(502);
    fakellm_push(f, &rep);
    fakellm_push(f, &rep);
    th_llm_response r;
    th_error err;
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
    assert_string_equal(r.provider, "backup");
    assert_string_equal(r.model, "mock-backup");
    assert_string_equal(r.text, "[mock-backup] You said: fall back please");
    assert_int_equal(r.attempts, 3);
    th_llm_response_free(&r);
    assert_int_equal(gw_count(&ev, TH_LLM_EV_FALLBACK, -1), 1);
    assert_int_equal(gw_status(gw, "primary").failures, 2);
    assert_int_equal(gw_status(gw, "backup").successes, 1);
    /* With the primary healthy again, it answers. */
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
    assert_string_equal(r.provider, "primary");
    th_llm_response_free(&r);
    th_llm_gateway_free(gw);
    fakellm_free(f);
}

/* Calls queued behind a provider whose breaker opens go to the next
 * target instead of to the failing provider. */
static void test_breaker_reroutes_queued(void **state);

typedef struct counter {
    pthread_mutex_t mu;
    int done, ok, busy;
} counter;

static void count_done(th_llm_call *c, int rc, void *ud)
{
    counter *k = ud;
    pthread_mutex_lock(&k->mu);
    k->done++;
    k->ok += rc == 0;
    k->busy += rc == TH_EBUSY;
    pthread_mutex_unlock(&k->mu);
}

static void test_concurrency_and_queue(void **state)
{
    (void)state;
    fakellm *f = fakellm_start();
    th_llm_gateway *gw = gw_new(NULL);
    th_llm_provider_options o = gw_opts("ol", TH_LLM_OLLAMA, f);
    o.max_concurrent = 2;
    o.max_queue = 3;
    gw_add(gw, &o);
    fakellm_reply rep = {.kind = FAKE_DELAY, .delay_ms = 150};
    fakellm_set_default(f, &rep);
    gw_req q;
    gw_req_init(&q, "hi", "ol", NULL);
    counter k = {.mu = PTHREAD_MUTEX_INITIALIZER};
    th_llm_call *calls[6];
    th_error err;
    for (int i = 0; i < 6; i++)
        assert_int_equal(th_llm_start(gw, &q.r, count_done, &k, &calls[i], &err), 0);
    /* Two in flight, three waiting, the sixth refused. */
    int max_active = 0;
    for (int i = 0; i < 100; i++) {
        int a = (int)fakellm_active(f);
        if (a > max_active)
            max_active = a;
        th_llm_provider_status s = gw_status(gw, "ol");
        assert_true(s.in_flight <= 2);
        pthread_mutex_lock(&k.mu);
        int done = k.done;
        pthread_mutex_unlock(&k.mu);
        if (done == 6)
            break;
        thd_sleep_ms(10);
    }
    assert_true(max_active >= 1 && max_active <= 2);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(th_llm_call_wait(calls[i], 5000), 0);
        th_llm_call_free(calls[i]);
    }
    assert_int_equal(k.ok, 5);
    assert_int_equal(k.busy, 1);
    th_llm_gateway_free(gw);
    fakellm_free(f);
}

static void test_breaker_reroutes_queued(void **state)
{
    (void)state;
    fakellm *f = fakellm_start();
    th_llm_gateway *gw = gw_new(NULL);
    th_llm_provider_options o = gw_opts("flaky", TH_LLM_OPENAI, f);
    o.max_concurrent = 1;
    o.max_retries = 0;
    o.breaker_failures = 1;
    o.breaker_cooldown_ms = 60000;
    gw_add(gw, &o);
    o = gw_opts("backup", TH_LLM_MOCK, NULL);
    gw_add(gw, &o);
    fakellm_reply rep = {.kind = FAKE_STATUS, .status = 500, .delay_ms = 150};
    fakellm_set_default(f, &rep);
    gw_req q;
    gw_req_init(&q, "hi", "flaky", "backup");
    counter k = {.mu = PTHREAD_MUTEX_INITIALIZER};
    th_llm_call *calls[4];
    th_error err;
    for (int i = 0; i < 4; i++)
        assert_int_equal(th_llm_start(gw, &q.r, count_done, &k, &calls[i], &err), 0);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(th_llm_call_wait(calls[i], 10000), 0);
        th_llm_response r;
        assert_int_equal(th_llm_call_result(calls[i], &r, &err), 0);
        assert_string_equal(r.provider, "backup");
        th_llm_response_free(&r);
        th_llm_call_free(calls[i]);
    }
    /* Only the first call reached the failing provider. */
    assert_int_equal(fakellm_count_path(f, "/v1/chat/completions"), 1);
    assert_int_equal(gw_status(gw, "flaky").breaker, TH_BREAKER_OPEN);
    th_llm_gateway_free(gw);
    fakellm_free(f);
}

static void test_rate_bucket(void **state)
{
    (void)state;
    th_llm_gateway *gw = gw_new(NULL);
    /* 600 a minute: 10 at once, then 10 a second. */
    th_llm_provider_options o = gw_opts("m", TH_LLM_MOCK, NULL);
    o.requests_per_min = 600;
    gw_add(gw, &o);
    gw_req q;
    gw_req_init(&q, "hi", "m", NULL);
    counter k = {.mu = PTHREAD_MUTEX_INITIALIZER};
    th_llm_call *calls[15];
    th_error err;
    int64_t t0 = mono_ms();
    for (int i = 0; i < 15; i++)
        assert_int_equal(th_llm_start(gw, &q.r, count_done, &k, &calls[i], &err), 0);
    for (int i = 0; i < 15; i++) {
        assert_int_equal(th_llm_call_wait(calls[i], 10000), 0);
        th_llm_call_free(calls[i]);
    }
    /* The last five waited for tokens: at least 400 ms in all. */
    assert_true(mono_ms() - t0 >= 400);
    assert_int_equal(k.ok, 15);
    th_llm_gateway_free(gw);
}

/* A provider that says its request window is spent holds back the next
 * call until the window resets; the token bucket spaces calls by their
 * estimated size. */
static void test_rate_headers_and_tokens(void **state)
{
    (void)state;
    fakellm *f = fakellm_start();
    th_llm_gateway *gw = gw_new(NULL);
    th_llm_provider_options o = gw_opts("oa", TH_LLM_OPENAI, f);
    o.retry_max_ms = 2000;
    gw_add(gw, &o);
    gw_req q;
    gw_req_init(&q, "hi", "oa", NULL);
    th_llm_response r;
    th_error err;
    fakellm_reply rep = {.kind = FAKE_OK};
    rep.headers[0] = "x-ratelimit-remaining-requests: 0";
    rep.headers[1] = "x-ratelimit-reset-requests: 300ms";
    fakellm_push(f, &rep);
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
    th_llm_response_free(&r);
    int64_t t0 = mono_ms();
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
    assert_true(mono_ms() - t0 >= 250);
    assert_int_equal(r.attempts, 1);
    th_llm_response_free(&r);

    /* Anthropic's headers: the same hold. */
    o = gw_opts("an", TH_LLM_ANTHROPIC, f);
    o.retry_max_ms = 2000;
    gw_add(gw, &o);
    gw_req_init(&q, "hi", "an", NULL);
    rep = (fakellm_reply){.kind = FAKE_OK};
    rep.headers[0] = "anthropic-ratelimit-tokens-remaining: 0";
    rep.headers[1] = "retry-after: 1";
    fakellm_push(f, &rep);
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
    th_llm_response_free(&r);
    t0 = mono_ms();
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
    assert_true(mono_ms() - t0 >= 900);
    th_llm_response_free(&r);

    /* A provider asking for 12 hours holds calls no longer than the
     * longest backoff (2 s here), so the call is not stuck. */
    rep = (fakellm_reply){.kind = FAKE_STATUS, .status = 429};
    rep.headers[0] = "retry-after: 43200";
    fakellm_push(f, &rep);
    gw_req_init(&q, "hi", "oa", NULL);
    t0 = mono_ms();
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
    assert_int_equal(r.attempts, 2);
    assert_true(mono_ms() - t0 < 10000);
    th_llm_response_free(&r);

    /* 60,000 tokens a minute: at most 1,000 held, 1,000 a second more. Each
     * call uses about 400 tokens (the mock echoes 200 words), charged after
     * the answer: before the sixth call starts, five have used ~2,000, so
     * the bucket must have refilled ~1,000 tokens: a second at least. */
    o = gw_opts("m", TH_LLM_MOCK, NULL);
    o.tokens_per_min = 60000;
    gw_add(gw, &o);
    char words[401];
    for (int i = 0; i < 200; i++)
        memcpy(words + 2 * i, "w ", 2);
    words[400] = '\0';
    gw_req_init(&q, words, "m", NULL);
    t0 = mono_ms();
    int64_t used = 0;
    for (int i = 0; i < 6; i++) {
        assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
        used += r.usage.input_tokens + r.usage.output_tokens;
        th_llm_response_free(&r);
    }
    assert_true(used > 2000);
    assert_true(mono_ms() - t0 >= 1000);
    th_llm_gateway_free(gw);
    fakellm_free(f);
}

static int cancel_after(void *ud)
{
    int *n = ud;
    return ++*n > 5;
}

static void test_cancel(void **state)
{
    (void)state;
    fakellm *f = fakellm_start();
    th_llm_gateway *gw = gw_new(NULL);
    th_llm_provider_options o = gw_opts("oa", TH_LLM_OPENAI, f);
    o.max_concurrent = 1;
    gw_add(gw, &o);
    fakellm_reply rep = {.kind = FAKE_HANG};
    fakellm_push(f, &rep);
    gw_req q;
    gw_req_init(&q, "hi", "oa", NULL);
    th_llm_call *hung, *queued;
    th_error err;
    assert_int_equal(th_llm_start(gw, &q.r, NULL, NULL, &hung, &err), 0);
    assert_int_equal(fakellm_wait_requests(f, 1, 5000), 1);
    assert_int_equal(th_llm_start(gw, &q.r, NULL, NULL, &queued, &err), 0);
    assert_int_equal(th_llm_call_wait(queued, 100), TH_ETIMEDOUT);
    th_llm_call_cancel(queued);
    assert_int_equal(th_llm_call_wait(queued, 5000), 0);
    assert_int_equal(th_llm_call_result(queued, NULL, &err), TH_ECANCELED);
    th_llm_call_free(queued);
    th_llm_call_cancel(hung);
    assert_int_equal(th_llm_call_wait(hung, 5000), 0);
    assert_int_equal(th_llm_call_result(hung, NULL, &err), TH_ECANCELED);
    th_llm_call_free(hung);
    for (int i = 0; i < 100 && fakellm_active(f); i++)
        thd_sleep_ms(10);
    assert_int_equal(fakellm_active(f), 0);
    assert_int_equal(gw_status(gw, "oa").in_flight, 0);

    /* A synchronous call cancelled through its callback. */
    fakellm_push(f, &rep);
    int polls = 0;
    q.r.cancelled = cancel_after;
    q.r.ud = &polls;
    th_llm_response r;
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), TH_ECANCELED);
    assert_true(polls > 5);
    /* The slot is free again. */
    q.r.cancelled = NULL;
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
    th_llm_response_free(&r);
    th_llm_gateway_free(gw);
    fakellm_free(f);
}

static void test_health(void **state)
{
    (void)state;
    fakellm *f = fakellm_start();
    gw_events ev;
    th_llm_gateway *gw = gw_new(&ev);
    th_llm_provider_options o = gw_opts("ol", TH_LLM_OLLAMA, f);
    o.health_interval_ms = 30;
    o.health_failures = 3;
    gw_add(gw, &o);
    fakellm_set_health(f, 503);
    for (int i = 0; i < 300 && gw_count(&ev, TH_LLM_EV_HEALTH, 0) == 0; i++)
        thd_sleep_ms(10);
    assert_int_equal(gw_count(&ev, TH_LLM_EV_HEALTH, 0), 1);
    th_llm_provider_status s = gw_status(gw, "ol");
    assert_false(s.healthy);
    assert_true(s.health_failures >= 3);
    assert_true(s.last_health_ms > 0);
    assert_true(fakellm_count_path(f, "/api/tags") >= 3);
    gw_req q;
    gw_req_init(&q, "hi", "ol", NULL);
    th_llm_response r;
    th_error err;
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), TH_EUNAVAIL);
    assert_non_null(strstr(err.message, "unhealthy"));
    fakellm_set_health(f, 200);
    for (int i = 0; i < 300 && gw_count(&ev, TH_LLM_EV_HEALTH, 1) == 0; i++)
        thd_sleep_ms(10);
    assert_true(gw_status(gw, "ol").healthy);
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
    th_llm_response_free(&r);
    th_llm_gateway_free(gw);
    fakellm_free(f);
}

static void test_free_with_calls_in_flight(void **state)
{
    (void)state;
    fakellm *f = fakellm_start();
    th_llm_gateway *gw = gw_new(NULL);
    th_llm_provider_options o = gw_opts("oa", TH_LLM_OPENAI, f);
    o.max_concurrent = 2;
    gw_add(gw, &o);
    fakellm_reply rep = {.kind = FAKE_HANG};
    fakellm_set_default(f, &rep);
    gw_req q;
    gw_req_init(&q, "hi", "oa", NULL);
    counter k = {.mu = PTHREAD_MUTEX_INITIALIZER};
    th_llm_call *calls[4];
    th_error err;
    for (int i = 0; i < 4; i++)
        assert_int_equal(th_llm_start(gw, &q.r, count_done, &k, &calls[i], &err), 0);
    assert_int_equal(fakellm_wait_requests(f, 2, 5000), 2);
    th_llm_gateway_free(gw);
    assert_int_equal(k.done, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(th_llm_call_result(calls[i], NULL, &err), TH_ECLOSED);
        th_llm_call_free(calls[i]);
    }
    fakellm_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retry_statuses),
        cmocka_unit_test(test_timeout_and_cut_stream),
        cmocka_unit_test(test_breaker),
        cmocka_unit_test(test_fallback),
        cmocka_unit_test(test_concurrency_and_queue),
        cmocka_unit_test(test_breaker_reroutes_queued),
        cmocka_unit_test(test_rate_bucket),
        cmocka_unit_test(test_rate_headers_and_tokens),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_health),
        cmocka_unit_test(test_free_with_calls_in_flight),
    };
    if (getenv("TH_TEST_FILTER"))
        cmocka_set_test_filter(getenv("TH_TEST_FILTER"));
    return cmocka_run_group_tests_name("llm_resilience", tests, NULL, NULL);
}
