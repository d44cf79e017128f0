/*
 * Engine state machine tests, run against every store ("memory" and
 * "sqlite"): each transition of docs' task life cycle through the public API,
 * with a fake clock and manual ticks so every deadline is exact.
 *
 *   pending -> running -> completed
 *   running -> scheduled (retry backoff) -> pending at run_at; -> failed when
 *     out of retries; TH_FAIL_PERMANENT; TH_FAIL_TIMEOUT; timeout_ms
 *   delay_ms / run_at_ms -> scheduled -> pending
 *   cancel (pending, scheduled, running, final); expires_at -> expired
 *   manual retry of final tasks; retry refused in other states
 *
 * Claim order, leases and stale completions: engine_claim_test.c.
 * Dependencies, unique keys, batches, validation: engine_submit_test.c.
 */
#include "thtest.h"

#include <string.h>

#define FX(state) ((thtest_fx *)*(state))
#define T(fn) cmocka_unit_test_setup_teardown(fn, thtest_fx_setup, thtest_fx_teardown)

/* Submits a task to "jobs" with retry policy `p` (and jitter 0). */
static void submit_with_retry(thtest_fx *fx, th_retry_policy p, char id[TH_ID_SIZE])
{
    th_task_spec spec;
    th_task_spec_init(&spec, "jobs");
    spec.retry = p;
    thtest_submit(fx->e, &spec, id);
}

/* Claims `id` (it must be the only ready task), checks the attempt number,
 * fails it with `flags` and returns the lease used. */
static uint64_t claim_and_fail(thtest_fx *fx, const char *id, int want_attempt, const char *msg,
                               int flags)
{
    th_task *t = thtest_claim1(fx->e, "jobs", 60000);
    assert_string_equal(t->id, id);
    assert_int_equal(t->attempt, want_attempt);
    uint64_t lease = t->lease;
    th_task_free(t);
    th_error err;
    memset(&err, 0, sizeof err);
    assert_int_equal(th_engine_fail(fx->e, id, lease, msg, flags, &err), 0);
    return lease;
}

/* ---- pending -> running -> completed ------------------------------------ */

static void test_submit_claim_complete(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char id[TH_ID_SIZE];
    th_task_spec spec;
    th_task_spec_init(&spec, "jobs");
    spec.payload = "{\"n\": 1}";
    thtest_submit(fx->e, &spec, id);
    assert_int_equal(strlen(id), TH_ID_LEN);
    assert_int_equal(strspn(id, "0123456789ABCDEFGHJKMNPQRSTVWXYZ"), TH_ID_LEN);

    th_task *t = thtest_get(fx->e, id);
    assert_int_equal(t->state, TH_TASK_PENDING);
    assert_string_equal(t->queue, "jobs");
    assert_json_equal(t->payload, "{\"n\":1}");
    assert_int_equal(t->priority, TH_PRIORITY_NORMAL);
    assert_int_equal(t->attempt, 0);
    assert_int_equal(t->created_at, THTEST_T0);
    assert_int_equal(t->started_at, 0);
    assert_int_equal(t->finished_at, 0);
    assert_true(t->lease == 0);
    assert_null(t->result);
    th_task_free(t);

    thtest_clock_advance(&fx->clk, 10);
    t = thtest_claim1(fx->e, "jobs", 5000);
    assert_string_equal(t->id, id);
    assert_int_equal(t->state, TH_TASK_RUNNING);
    assert_int_equal(t->attempt, 1);
    assert_true(t->lease != 0);
    assert_int_equal(t->started_at, THTEST_T0 + 10);
    assert_int_equal(t->lease_expires_at, THTEST_T0 + 10 + 5000);
    assert_string_equal(t->worker, "test-worker");
    assert_json_equal(t->payload, "{\"n\":1}");
    uint64_t lease = t->lease;
    th_task_free(t);

    t = thtest_get(fx->e, id);
    assert_int_equal(t->state, TH_TASK_RUNNING);
    assert_true(t->lease == lease);
    th_task_free(t);

    thtest_clock_advance(&fx->clk, 20);
    assert_int_equal(th_engine_complete(fx->e, id, lease, "{\"ok\": true}", &err), 0);
    t = thtest_get(fx->e, id);
    assert_int_equal(t->state, TH_TASK_COMPLETED);
    assert_true(th_task_state_is_final(t->state));
    assert_json_equal(t->result, "{\"ok\":true}");
    assert_int_equal(t->finished_at, THTEST_T0 + 30);
    assert_int_equal(t->attempt, 1);
    assert_true(t->lease == 0);
    assert_int_equal(t->lease_expires_at, 0);
    th_task_free(t);
    assert_int_equal(thtest_claim_count(fx->e, NULL), 0);
}

static void test_null_payload_and_result(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char id[TH_ID_SIZE];
    thtest_submit_simple(fx->e, "jobs", NULL, id);
    th_task *t = thtest_claim1(fx->e, NULL, 0);
    assert_json_equal(t->payload, "null");
    /* lease_ms 0 = the engine default (30 s). */
    assert_int_equal(t->lease_expires_at, THTEST_T0 + 30000);
    assert_int_equal(th_engine_complete(fx->e, id, t->lease, NULL, &err), 0);
    th_task_free(t);
    t = thtest_get(fx->e, id);
    assert_int_equal(t->state, TH_TASK_COMPLETED);
    assert_json_equal(t->result, "null");
    th_task_free(t);
}

static void test_get_unknown(void **state)
{
    thtest_fx *fx = FX(state);
    th_task *t = NULL;
    th_error err;
    memset(&err, 0, sizeof err);
    assert_int_equal(th_engine_get(fx->e, "01ARZ3NDEKTSV4RRFFQ69G5FAV", &t, &err), TH_ENOTFOUND);
    assert_null(t);
}

/* ---- retries ------------------------------------------------------------ */

/* Backoff k = min(max, initial * multiplier^(k-1)): 1000, 3000, 5000 (capped
 * from 9000); the 4th failed attempt (max_retries 3) is final. */
static void test_retry_backoff_then_failed(void **state)
{
    thtest_fx *fx = FX(state);
    char id[TH_ID_SIZE];
    submit_with_retry(fx, thtest_retry(3, 1000, 5000, 3.0), id);
    const int64_t backoff[3] = {1000, 3000, 5000};

    for (int k = 1; k <= 3; k++) {
        thtest_clock_advance(&fx->clk, 7);
        int64_t failed_at = fx->clk.now;
        claim_and_fail(fx, id, k, "boom", 0);

        th_task *t = thtest_get(fx->e, id);
        assert_int_equal(t->state, TH_TASK_SCHEDULED);
        assert_int_equal(t->run_at, failed_at + backoff[k - 1]);
        assert_int_equal(t->attempt, k);
        assert_true(thtest_contains(t->error, "boom"));
        assert_true(t->lease == 0);
        th_task_free(t);
        assert_int_equal(thtest_claim_count(fx->e, NULL), 0);

        /* Not due one millisecond early, due exactly at run_at. */
        thtest_fx_tick(fx, backoff[k - 1] - 1);
        thtest_assert_state(fx->e, id, TH_TASK_SCHEDULED);
        assert_int_equal(thtest_claim_count(fx->e, NULL), 0);
        thtest_fx_tick(fx, 1);
        thtest_assert_state(fx->e, id, TH_TASK_PENDING);
    }

    thtest_clock_advance(&fx->clk, 3);
    claim_and_fail(fx, id, 4, "last straw", 0);
    th_task *t = thtest_get(fx->e, id);
    assert_int_equal(t->state, TH_TASK_FAILED);
    assert_int_equal(t->attempt, 4);
    assert_int_equal(t->finished_at, fx->clk.now);
    assert_true(thtest_contains(t->error, "last straw"));
    th_task_free(t);
    thtest_fx_tick(fx, 3600 * 1000);
    thtest_assert_state(fx->e, id, TH_TASK_FAILED);
    assert_int_equal(thtest_claim_count(fx->e, NULL), 0);
}

static void test_max_retries_zero_fails_at_once(void **state)
{
    thtest_fx *fx = FX(state);
    char id[TH_ID_SIZE];
    submit_with_retry(fx, thtest_retry(0, 1000, 1000, 2.0), id);
    claim_and_fail(fx, id, 1, "nope", 0);
    thtest_assert_state(fx->e, id, TH_TASK_FAILED);
}

static void test_fail_permanent(void **state)
{
    thtest_fx *fx = FX(state);
    char id[TH_ID_SIZE];
    submit_with_retry(fx, thtest_retry(5, 1000, 1000, 2.0), id);
    claim_and_fail(fx, id, 1, "bad input", TH_FAIL_PERMANENT);
    th_task *t = thtest_get(fx->e, id);
    assert_int_equal(t->state, TH_TASK_FAILED);
    assert_int_equal(t->attempt, 1);
    assert_true(thtest_contains(t->error, "bad input"));
    assert_int_equal(t->finished_at, THTEST_T0);
    th_task_free(t);
}

static void test_fail_timeout_flag(void **state)
{
    thtest_fx *fx = FX(state);
    char last[TH_ID_SIZE], more[TH_ID_SIZE];

    /* Out of retries: the final state is timeout, not failed. */
    submit_with_retry(fx, thtest_retry(0, 1000, 1000, 2.0), last);
    claim_and_fail(fx, last, 1, "too slow", TH_FAIL_TIMEOUT);
    thtest_assert_state(fx->e, last, TH_TASK_TIMEOUT);

    /* With retries left it is retried like any failure. */
    submit_with_retry(fx, thtest_retry(2, 1000, 1000, 2.0), more);
    claim_and_fail(fx, more, 1, "too slow", TH_FAIL_TIMEOUT);
    th_task *t = thtest_get(fx->e, more);
    assert_int_equal(t->state, TH_TASK_SCHEDULED);
    assert_int_equal(t->run_at, fx->clk.now + 1000);
    th_task_free(t);
}

/* ---- task timeout_ms ---------------------------------------------------- */

static void test_task_timeout_retries_then_ends_timeout(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char id[TH_ID_SIZE];
    th_task_spec spec;
    th_task_spec_init(&spec, "jobs");
    spec.timeout_ms = 500;
    spec.retry = thtest_retry(1, 1000, 1000, 2.0);
    thtest_submit(fx->e, &spec, id);

    th_task *t = thtest_claim1(fx->e, "jobs", 60000);
    assert_int_equal(t->timeout_ms, 500);
    uint64_t lease1 = t->lease;
    th_task_free(t);

    thtest_fx_tick(fx, 499);
    thtest_assert_state(fx->e, id, TH_TASK_RUNNING);
    assert_true(thtest_fx_tick(fx, 2) >= 1); /* now T0 + 501: past the timeout */
    t = thtest_get(fx->e, id);
    assert_int_equal(t->state, TH_TASK_SCHEDULED);
    assert_int_equal(t->attempt, 1);
    assert_true(t->run_at >= THTEST_T0 + 500 + 1000 && t->run_at <= THTEST_T0 + 501 + 1000);
    assert_non_null(t->error);
    assert_true(thtest_contains(t->error, "time"));
    th_task_free(t);
    /* The timed-out attempt's lease is dead. */
    assert_int_equal(th_engine_complete(fx->e, id, lease1, NULL, &err), TH_ESTALE);

    thtest_fx_tick(fx, 1000);
    thtest_assert_state(fx->e, id, TH_TASK_PENDING);
    t = thtest_claim1(fx->e, "jobs", 60000);
    assert_int_equal(t->attempt, 2);
    th_task_free(t);
    thtest_fx_tick(fx, 501);
    t = thtest_get(fx->e, id);
    assert_int_equal(t->state, TH_TASK_TIMEOUT);
    assert_int_equal(t->attempt, 2);
    assert_int_equal(t->finished_at != 0, 1);
    th_task_free(t);
}

/* ---- delays ------------------------------------------------------------- */

static void test_delay_ms_schedules(void **state)
{
    thtest_fx *fx = FX(state);
    char id[TH_ID_SIZE];
    th_task_spec spec;
    th_task_spec_init(&spec, "jobs");
    spec.delay_ms = 5000;
    thtest_submit(fx->e, &spec, id);

    th_task *t = thtest_get(fx->e, id);
    assert_int_equal(t->state, TH_TASK_SCHEDULED);
    assert_int_equal(t->run_at, THTEST_T0 + 5000);
    th_task_free(t);
    assert_int_equal(thtest_claim_count(fx->e, NULL), 0);

    thtest_fx_tick(fx, 4999);
    thtest_assert_state(fx->e, id, TH_TASK_SCHEDULED);
    assert_int_equal(thtest_claim_count(fx->e, NULL), 0);
    assert_true(thtest_fx_tick(fx, 1) >= 1);
    thtest_assert_state(fx->e, id, TH_TASK_PENDING);
    t = thtest_claim1(fx->e, "jobs", 0);
    assert_string_equal(t->id, id);
    th_task_free(t);
}

static void test_run_at_schedules(void **state)
{
    thtest_fx *fx = FX(state);
    char id[TH_ID_SIZE];
    th_task_spec spec;
    th_task_spec_init(&spec, "jobs");
    spec.run_at_ms = THTEST_T0 + 3000;
    thtest_submit(fx->e, &spec, id);

    th_task *t = thtest_get(fx->e, id);
    assert_int_equal(t->state, TH_TASK_SCHEDULED);
    assert_int_equal(t->run_at, THTEST_T0 + 3000);
    th_task_free(t);
    thtest_fx_tick(fx, 2999);
    assert_int_equal(thtest_claim_count(fx->e, NULL), 0);
    thtest_fx_tick(fx, 1);
    thtest_assert_state(fx->e, id, TH_TASK_PENDING);
    t = thtest_claim1(fx->e, NULL, 0);
    assert_string_equal(t->id, id);
    th_task_free(t);
}

/* ---- cancellation ------------------------------------------------------- */

static void test_cancel_pending_and_scheduled(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char p[TH_ID_SIZE], s[TH_ID_SIZE];
    thtest_submit_simple(fx->e, "jobs", NULL, p);
    th_task_spec spec;
    th_task_spec_init(&spec, "jobs");
    spec.delay_ms = 1000;
    thtest_submit(fx->e, &spec, s);

    thtest_clock_advance(&fx->clk, 5);
    assert_int_equal(th_engine_cancel(fx->e, p, "no longer needed", &err), 0);
    th_task *t = thtest_get(fx->e, p);
    assert_int_equal(t->state, TH_TASK_CANCELLED);
    assert_true(thtest_contains(t->error, "no longer needed"));
    assert_int_equal(t->finished_at, THTEST_T0 + 5);
    th_task_free(t);

    assert_int_equal(th_engine_cancel(fx->e, s, "changed my mind", &err), 0);
    thtest_assert_state(fx->e, s, TH_TASK_CANCELLED);
    /* A cancelled scheduled task does not come back at its run_at. */
    thtest_fx_tick(fx, 2000);
    thtest_assert_state(fx->e, s, TH_TASK_CANCELLED);
    assert_int_equal(thtest_claim_count(fx->e, NULL), 0);

    /* Final: cancel is refused; unknown ids are not found. */
    memset(&err, 0, sizeof err);
    assert_int_equal(th_engine_cancel(fx->e, p, "again", &err), TH_ESTATE);
    assert_int_equal(th_engine_cancel(fx->e, "01ARZ3NDEKTSV4RRFFQ69G5FAV", "x", &err),
                     TH_ENOTFOUND);
}

static void test_cancel_running_is_requested(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char id[TH_ID_SIZE];
    submit_with_retry(fx, thtest_retry(3, 1000, 1000, 2.0), id);
    th_task *t = thtest_claim1(fx->e, "jobs", 10000);
    uint64_t lease = t->lease;
    th_task_free(t);

    int cr = -1;
    assert_int_equal(th_engine_heartbeat(fx->e, id, lease, 0, &cr, &err), 0);
    assert_int_equal(cr, 0);

    assert_int_equal(th_engine_cancel(fx->e, id, "user abort", &err), 1);
    t = thtest_get(fx->e, id);
    assert_int_equal(t->state, TH_TASK_RUNNING);
    assert_int_equal(t->cancel_requested, 1);
    th_task_free(t);

    cr = -1;
    assert_int_equal(th_engine_heartbeat(fx->e, id, lease, 0, &cr, &err), 0);
    assert_int_equal(cr, 1);

    /* The worker stops: although retries remain, the task ends cancelled. */
    assert_int_equal(th_engine_fail(fx->e, id, lease, "stopped on request", 0, &err), 0);
    t = thtest_get(fx->e, id);
    assert_int_equal(t->state, TH_TASK_CANCELLED);
    assert_true(t->finished_at != 0);
    th_task_free(t);
    thtest_fx_tick(fx, 5000);
    thtest_assert_state(fx->e, id, TH_TASK_CANCELLED);
    assert_int_equal(thtest_claim_count(fx->e, NULL), 0);
}

/* ---- expiry ------------------------------------------------------------- */

static void test_expires_before_start(void **state)
{
    thtest_fx *fx = FX(state);
    char pend[TH_ID_SIZE], late[TH_ID_SIZE], ok[TH_ID_SIZE];
    th_task_spec spec;

    th_task_spec_init(&spec, "idle");
    spec.expires_at_ms = THTEST_T0 + 2000;
    thtest_submit(fx->e, &spec, pend);

    /* Its delay ends after it expires: it never becomes pending. */
    th_task_spec_init(&spec, "idle");
    spec.expires_at_ms = THTEST_T0 + 2000;
    spec.delay_ms = 10000;
    thtest_submit(fx->e, &spec, late);

    /* Started in time: expiry no longer applies. */
    th_task_spec_init(&spec, "busy");
    spec.expires_at_ms = THTEST_T0 + 2000;
    thtest_submit(fx->e, &spec, ok);
    th_task *t = thtest_claim1(fx->e, "busy", 60000);
    th_task_free(t);

    th_task *g = thtest_get(fx->e, pend);
    assert_int_equal(g->expires_at, THTEST_T0 + 2000);
    th_task_free(g);

    thtest_fx_tick(fx, 1999);
    thtest_assert_state(fx->e, pend, TH_TASK_PENDING);
    thtest_assert_state(fx->e, late, TH_TASK_SCHEDULED);
    assert_true(thtest_fx_tick(fx, 2) >= 2);
    thtest_assert_state(fx->e, pend, TH_TASK_EXPIRED);
    thtest_assert_state(fx->e, late, TH_TASK_EXPIRED);
    thtest_assert_state(fx->e, ok, TH_TASK_RUNNING);
    g = thtest_get(fx->e, pend);
    assert_true(g->finished_at != 0);
    th_task_free(g);
    thtest_fx_tick(fx, 10000);
    thtest_assert_state(fx->e, late, TH_TASK_EXPIRED);
    assert_int_equal(thtest_claim_count(fx->e, "idle"), 0);
}

/* ---- manual retry ------------------------------------------------------- */

static void test_retry_final_tasks(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char failed[TH_ID_SIZE], cancelled[TH_ID_SIZE], timedout[TH_ID_SIZE], expired[TH_ID_SIZE];
    th_task_spec spec;

    /* failed after using up its budget (max_retries 1: two attempts) */
    submit_with_retry(fx, thtest_retry(1, 100, 100, 2.0), failed);
    claim_and_fail(fx, failed, 1, "one", 0);
    thtest_fx_tick(fx, 100);
    claim_and_fail(fx, failed, 2, "two", 0);
    thtest_assert_state(fx->e, failed, TH_TASK_FAILED);

    thtest_submit_simple(fx->e, "other", NULL, cancelled);
    assert_int_equal(th_engine_cancel(fx->e, cancelled, "stop", &err), 0);

    th_task_spec_init(&spec, "slow");
    spec.retry = thtest_retry(0, 100, 100, 2.0);
    thtest_submit(fx->e, &spec, timedout);
    th_task *t = thtest_claim1(fx->e, "slow", 0);
    assert_int_equal(th_engine_fail(fx->e, timedout, t->lease, "slow", TH_FAIL_TIMEOUT, &err), 0);
    th_task_free(t);
    thtest_assert_state(fx->e, timedout, TH_TASK_TIMEOUT);

    th_task_spec_init(&spec, "other");
    spec.expires_at_ms = fx->clk.now + 10;
    thtest_submit(fx->e, &spec, expired);
    thtest_fx_tick(fx, 11);
    thtest_assert_state(fx->e, expired, TH_TASK_EXPIRED);

    const char *ids[4] = {failed, cancelled, timedout, expired};
    for (int i = 0; i < 4; i++) {
        memset(&err, 0, sizeof err);
        assert_int_equal(th_engine_retry(fx->e, ids[i], &err), 0);
        t = thtest_get(fx->e, ids[i]);
        assert_int_equal(t->state, TH_TASK_PENDING);
        assert_int_equal(t->attempt, 0);
        assert_int_equal(t->finished_at, 0);
        th_task_free(t);
    }

    /* A fresh budget: the once-exhausted task retries again after failing. */
    claim_and_fail(fx, failed, 1, "three", 0);
    thtest_assert_state(fx->e, failed, TH_TASK_SCHEDULED);

    t = thtest_claim1(fx->e, "other", 0);
    assert_int_equal(t->attempt, 1);
    assert_int_equal(th_engine_complete(fx->e, t->id, t->lease, "1", &err), 0);
    thtest_assert_state(fx->e, t->id, TH_TASK_COMPLETED);
    th_task_free(t);
}

static void test_retry_refused_when_not_final(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char pending[TH_ID_SIZE], running[TH_ID_SIZE], done[TH_ID_SIZE], sched[TH_ID_SIZE];

    thtest_submit_simple(fx->e, "a", NULL, done);
    th_task *t = thtest_claim1(fx->e, "a", 0);
    assert_int_equal(th_engine_complete(fx->e, done, t->lease, "2", &err), 0);
    th_task_free(t);

    thtest_submit_simple(fx->e, "b", NULL, running);
    t = thtest_claim1(fx->e, "b", 0);
    th_task_free(t);

    thtest_submit_simple(fx->e, "c", NULL, pending);
    th_task_spec spec;
    th_task_spec_init(&spec, "c");
    spec.delay_ms = 1000;
    thtest_submit(fx->e, &spec, sched);

    memset(&err, 0, sizeof err);
    assert_int_equal(th_engine_retry(fx->e, pending, &err), TH_ESTATE);
    assert_int_equal(th_engine_retry(fx->e, done, &err), TH_ESTATE);
    assert_int_equal(th_engine_retry(fx->e, running, &err), TH_ESTATE);
    assert_int_equal(th_engine_retry(fx->e, sched, &err), TH_ESTATE);
    assert_int_equal(th_engine_retry(fx->e, "01ARZ3NDEKTSV4RRFFQ69G5FAV", &err), TH_ENOTFOUND);

    thtest_assert_state(fx->e, pending, TH_TASK_PENDING);
    thtest_assert_state(fx->e, done, TH_TASK_COMPLETED);
    thtest_assert_state(fx->e, running, TH_TASK_RUNNING);
    thtest_assert_state(fx->e, sched, TH_TASK_SCHEDULED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_submit_claim_complete),
        T(test_null_payload_and_result),
        T(test_get_unknown),
        T(test_retry_backoff_then_failed),
        T(test_max_retries_zero_fails_at_once),
        T(test_fail_permanent),
        T(test_fail_timeout_flag),
        T(test_task_timeout_retries_then_ends_timeout),
        T(test_delay_ms_schedules),
        T(test_run_at_schedules),
        T(test_cancel_pending_and_scheduled),
        T(test_cancel_running_is_requested),
        T(test_expires_before_start),
        T(test_retry_final_tasks),
        T(test_retry_refused_when_not_final),
    };
    return THTEST_RUN_ALL_STORES("engine", tests) != 0;
}
