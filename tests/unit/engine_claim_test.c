/*
 * Engine claim and lease tests, run against every store ("memory" and
 * "sqlite") with a fake clock and manual ticks:
 *
 *   - claim order: priority (critical > high > normal > low, and numeric
 *     values between), FIFO within a priority; claims limited to a list of
 *     queues; max_tasks > 1;
 *   - leases: an expired lease puts the task back as a failed attempt and the
 *     old lease is refused; heartbeat and progress extend a lease;
 *   - exactly-once outcome: duplicate, stale-lease and unknown completions are
 *     refused, also through th_engine_complete_batch.
 */
#include "thtest.h"

#include <string.h>

#define FX(state) ((thtest_fx *)*(state))
#define T(fn) cmocka_unit_test_setup_teardown(fn, thtest_fx_setup, thtest_fx_teardown)

#define UNKNOWN_ID "01ARZ3NDEKTSV4RRFFQ69G5FAV"

static void submit_prio(thtest_fx *fx, const char *queue, int priority, char id[TH_ID_SIZE])
{
    th_task_spec spec;
    th_task_spec_init(&spec, queue);
    spec.priority = priority;
    thtest_submit(fx->e, &spec, id);
}

/* Claims with `o`; fails the test on error. Returns the count. */
static int claim(thtest_fx *fx, const th_claim_options *o, th_task **out)
{
    th_error err;
    memset(&err, 0, sizeof err);
    int n = th_engine_claim(fx->e, o, out, &err);
    if (n < 0)
        fail_msg("claim: %s: %s", th_errname(n), err.message);
    return n;
}

/* ---- order -------------------------------------------------------------- */

static void test_priority_order(void **state)
{
    thtest_fx *fx = FX(state);
    char low[TH_ID_SIZE], normal[TH_ID_SIZE], crit[TH_ID_SIZE], p60[TH_ID_SIZE];
    char high[TH_ID_SIZE], zero[TH_ID_SIZE];
    submit_prio(fx, "q", TH_PRIORITY_LOW, low);
    submit_prio(fx, "q", TH_PRIORITY_NORMAL, normal);
    submit_prio(fx, "q", TH_PRIORITY_CRITICAL, crit);
    submit_prio(fx, "q", 60, p60);
    submit_prio(fx, "q", TH_PRIORITY_HIGH, high);
    submit_prio(fx, "q", TH_PRIORITY_MIN, zero);

    const char *want[6] = {crit, high, p60, normal, low, zero};
    for (int i = 0; i < 6; i++) {
        th_task *t = thtest_claim1(fx->e, "q", 0);
        if (strcmp(t->id, want[i]) != 0)
            fail_msg("claim %d got the task of priority %d", i, t->priority);
        th_task_free(t);
    }
    assert_int_equal(thtest_claim_count(fx->e, "q"), 0);
}

static void test_fifo_within_priority(void **state)
{
    thtest_fx *fx = FX(state);
    char ids[6][TH_ID_SIZE];
    /* Same millisecond for all: order must follow submission, not chance. */
    for (int i = 0; i < 5; i++)
        thtest_submit_simple(fx->e, "q", NULL, ids[i]);
    /* A later, higher-priority task still jumps the line. */
    thtest_clock_advance(&fx->clk, 1);
    submit_prio(fx, "q", TH_PRIORITY_HIGH, ids[5]);

    th_task *t = thtest_claim1(fx->e, "q", 0);
    assert_string_equal(t->id, ids[5]);
    th_task_free(t);
    for (int i = 0; i < 5; i++) {
        t = thtest_claim1(fx->e, "q", 0);
        if (strcmp(t->id, ids[i]) != 0)
            fail_msg("claim %d: got %s, expected the %d-th submitted %s", i, t->id, i, ids[i]);
        th_task_free(t);
    }
}

static void test_claim_only_listed_queues(void **state)
{
    thtest_fx *fx = FX(state);
    char id[TH_ID_SIZE];
    const char *names[3] = {"alpha", "beta", "gamma"};
    for (int i = 0; i < 6; i++)
        thtest_submit_simple(fx->e, names[i % 3], NULL, id);

    const char *want[2] = {"alpha", "gamma"};
    th_claim_options o;
    memset(&o, 0, sizeof o);
    o.queues = want;
    o.nqueues = 2;
    o.max_tasks = 10;
    th_task *out[10];
    int n = claim(fx, &o, out);
    assert_int_equal(n, 4);
    for (int i = 0; i < n; i++) {
        assert_true(strcmp(out[i]->queue, "alpha") == 0 || strcmp(out[i]->queue, "gamma") == 0);
        assert_int_equal(out[i]->state, TH_TASK_RUNNING);
        th_task_free(out[i]);
    }
    assert_int_equal(thtest_claim_count(fx->e, "alpha"), 0);

    const char *only_beta[1] = {"beta"};
    o.queues = only_beta;
    o.nqueues = 1;
    n = claim(fx, &o, out);
    assert_int_equal(n, 2);
    for (int i = 0; i < n; i++) {
        assert_string_equal(out[i]->queue, "beta");
        th_task_free(out[i]);
    }
    /* A queue nobody submitted to: nothing, no error. */
    const char *none[1] = {"delta"};
    o.queues = none;
    assert_int_equal(claim(fx, &o, out), 0);
}

static void test_claim_many(void **state)
{
    thtest_fx *fx = FX(state);
    char ids[5][TH_ID_SIZE];
    const int prio[5] = {10, 90, 50, 70, 30};
    for (int i = 0; i < 5; i++)
        submit_prio(fx, "q", prio[i], ids[i]);

    th_claim_options o;
    memset(&o, 0, sizeof o);
    o.max_tasks = 3;
    o.lease_ms = 2000;
    th_task *out[3];
    int n = claim(fx, &o, out);
    assert_int_equal(n, 3);
    int seen = 0;
    for (int i = 0; i < n; i++) {
        assert_int_equal(out[i]->state, TH_TASK_RUNNING);
        assert_int_equal(out[i]->attempt, 1);
        assert_true(out[i]->lease != 0);
        assert_int_equal(out[i]->lease_expires_at, THTEST_T0 + 2000);
        assert_true(out[i]->priority >= 50); /* the three highest: 90, 70, 50 */
        seen |= 1 << (out[i]->priority / 10);
        for (int j = 0; j < i; j++)
            assert_string_not_equal(out[i]->id, out[j]->id);
    }
    assert_int_equal(seen, (1 << 9) | (1 << 7) | (1 << 5));
    for (int i = 0; i < n; i++)
        th_task_free(out[i]);
    /* The remaining two. */
    assert_int_equal(thtest_claim_count(fx->e, NULL), 2);
}

/* ---- leases ------------------------------------------------------------- */

static void test_lease_expiry_puts_task_back(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char id[TH_ID_SIZE];
    th_task_spec spec;
    th_task_spec_init(&spec, "q");
    spec.retry = thtest_retry(3, 1000, 1000, 2.0);
    thtest_submit(fx->e, &spec, id);

    th_task *t = thtest_claim1(fx->e, "q", 1000);
    uint64_t old = t->lease;
    th_task_free(t);

    thtest_fx_tick(fx, 999);
    thtest_assert_state(fx->e, id, TH_TASK_RUNNING);
    assert_true(thtest_fx_tick(fx, 2) >= 1); /* T0 + 1001 */
    t = thtest_get(fx->e, id);
    assert_int_equal(t->state, TH_TASK_SCHEDULED);
    assert_int_equal(t->attempt, 1);
    assert_true(t->lease == 0);
    assert_true(thtest_contains(t->error, "lease"));
    assert_true(t->run_at >= THTEST_T0 + 1000 + 1000 && t->run_at <= THTEST_T0 + 1001 + 1000);
    th_task_free(t);

    /* The old lease is dead for every lease-checked call. */
    memset(&err, 0, sizeof err);
    assert_int_equal(th_engine_complete(fx->e, id, old, "1", &err), TH_ESTALE);
    assert_int_equal(th_engine_heartbeat(fx->e, id, old, 0, NULL, &err), TH_ESTALE);
    assert_int_equal(th_engine_fail(fx->e, id, old, "late", 0, &err), TH_ESTALE);
    assert_int_equal(th_engine_progress(fx->e, id, old, 10, 0, 0, NULL, &err), TH_ESTALE);
    thtest_assert_state(fx->e, id, TH_TASK_SCHEDULED);

    thtest_fx_tick(fx, 1000);
    t = thtest_claim1(fx->e, "q", 1000);
    assert_string_equal(t->id, id);
    assert_int_equal(t->attempt, 2);
    assert_true(t->lease != old);
    assert_int_equal(th_engine_complete(fx->e, id, old, "1", &err), TH_ESTALE);
    assert_int_equal(th_engine_complete(fx->e, id, t->lease, "2", &err), 0);
    th_task_free(t);
    t = thtest_get(fx->e, id);
    assert_int_equal(t->state, TH_TASK_COMPLETED);
    assert_json_equal(t->result, "2");
    th_task_free(t);
}

static void test_lease_expiry_without_backoff_is_claimable(void **state)
{
    thtest_fx *fx = FX(state);
    char id[TH_ID_SIZE];
    th_task_spec spec;
    th_task_spec_init(&spec, "q");
    spec.retry = thtest_retry(2, 0, 0, 1.0);
    thtest_submit(fx->e, &spec, id);
    th_task *t = thtest_claim1(fx->e, "q", 1000);
    th_task_free(t);
    thtest_fx_tick(fx, 1001);
    /* A zero backoff may pass through scheduled; one more tick at the same
     * time must make it ready. */
    thtest_fx_tick(fx, 0);
    thtest_assert_state(fx->e, id, TH_TASK_PENDING);
    t = thtest_claim1(fx->e, "q", 1000);
    assert_int_equal(t->attempt, 2);
    th_task_free(t);
}

static void test_heartbeat_extends_lease(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char id[TH_ID_SIZE];
    thtest_submit_simple(fx->e, "q", NULL, id);
    th_task *t = thtest_claim1(fx->e, "q", 1000);
    uint64_t lease = t->lease;
    th_task_free(t);

    thtest_clock_advance(&fx->clk, 800);
    int cr = -1;
    assert_int_equal(th_engine_heartbeat(fx->e, id, lease, 0, &cr, &err), 0);
    assert_int_equal(cr, 0);
    t = thtest_get(fx->e, id);
    assert_true(t->lease_expires_at >= THTEST_T0 + 1800);
    assert_true(t->lease == lease);
    th_task_free(t);

    thtest_fx_tick(fx, 800); /* T0 + 1600: past the original lease */
    thtest_assert_state(fx->e, id, TH_TASK_RUNNING);

    /* An explicit extension. */
    assert_int_equal(th_engine_heartbeat(fx->e, id, lease, 5000, NULL, &err), 0);
    t = thtest_get(fx->e, id);
    assert_true(t->lease_expires_at >= THTEST_T0 + 6600);
    th_task_free(t);
    thtest_fx_tick(fx, 4900); /* T0 + 6500 */
    thtest_assert_state(fx->e, id, TH_TASK_RUNNING);

    /* Progress also extends the lease. */
    t = thtest_get(fx->e, id);
    int64_t before = t->lease_expires_at;
    th_task_free(t);
    assert_int_equal(th_engine_progress(fx->e, id, lease, 40, 0, 0, NULL, &err), 0);
    t = thtest_get(fx->e, id);
    assert_true(t->lease_expires_at >= fx->clk.now + 1000);
    assert_true(t->lease_expires_at >= before);
    th_task_free(t);

    assert_int_equal(th_engine_complete(fx->e, id, lease, "true", &err), 0);
    thtest_assert_state(fx->e, id, TH_TASK_COMPLETED);
    /* A heartbeat after the outcome is stale. */
    assert_int_equal(th_engine_heartbeat(fx->e, id, lease, 0, NULL, &err), TH_ESTALE);
}

static void test_unextended_lease_expires_despite_other_tasks(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char a[TH_ID_SIZE], b[TH_ID_SIZE];
    thtest_submit_simple(fx->e, "q", NULL, a);
    thtest_submit_simple(fx->e, "q", NULL, b);
    th_task *ta = thtest_claim1(fx->e, "q", 1000);
    th_task *tb = thtest_claim1(fx->e, "q", 1000);
    thtest_clock_advance(&fx->clk, 900);
    /* Only b's worker is alive. */
    assert_int_equal(th_engine_heartbeat(fx->e, tb->id, tb->lease, 0, NULL, &err), 0);
    thtest_fx_tick(fx, 200);
    th_task *g = thtest_get(fx->e, ta->id);
    assert_int_not_equal(g->state, TH_TASK_RUNNING);
    assert_true(g->attempt == 1);
    th_task_free(g);
    thtest_assert_state(fx->e, tb->id, TH_TASK_RUNNING);
    th_task_free(ta);
    th_task_free(tb);
}

/* ---- exactly-once outcome ----------------------------------------------- */

static void test_duplicate_and_stale_completion(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char id[TH_ID_SIZE];
    thtest_submit_simple(fx->e, "q", NULL, id);
    th_task *t = thtest_claim1(fx->e, "q", 0);
    uint64_t lease = t->lease;
    th_task_free(t);

    memset(&err, 0, sizeof err);
    assert_int_equal(th_engine_complete(fx->e, id, lease + 1, "\"wrong\"", &err), TH_ESTALE);
    assert_int_equal(err.code, TH_ESTALE);
    thtest_assert_state(fx->e, id, TH_TASK_RUNNING);
    assert_int_equal(th_engine_fail(fx->e, id, lease + 1, "wrong", 0, &err), TH_ESTALE);
    thtest_assert_state(fx->e, id, TH_TASK_RUNNING);

    assert_int_equal(th_engine_complete(fx->e, id, lease, "\"first\"", &err), 0);
    assert_int_equal(th_engine_complete(fx->e, id, lease, "\"second\"", &err), TH_ESTALE);
    assert_int_equal(th_engine_fail(fx->e, id, lease, "after the fact", 0, &err), TH_ESTALE);
    t = thtest_get(fx->e, id);
    assert_int_equal(t->state, TH_TASK_COMPLETED);
    assert_json_equal(t->result, "\"first\"");
    th_task_free(t);

    memset(&err, 0, sizeof err);
    assert_int_equal(th_engine_complete(fx->e, UNKNOWN_ID, lease, NULL, &err), TH_ENOTFOUND);
}

static void test_complete_batch_per_item(void **state)
{
    thtest_fx *fx = FX(state);
    char a[TH_ID_SIZE], b[TH_ID_SIZE];
    thtest_submit_simple(fx->e, "q", NULL, a);
    thtest_submit_simple(fx->e, "q", NULL, b);
    th_task *ta = thtest_claim1(fx->e, "q", 0);
    th_task *tb = thtest_claim1(fx->e, "q", 0);

    th_completion items[3] = {
        {ta->id, ta->lease, "{\"a\":1}", 99},
        {tb->id, tb->lease + 7, "{\"b\":1}", 99},
        {UNKNOWN_ID, 1, NULL, 99},
    };
    assert_int_equal(th_engine_complete_batch(fx->e, items, 3), 1);
    assert_int_equal(items[0].rc, 0);
    assert_int_equal(items[1].rc, TH_ESTALE);
    assert_int_equal(items[2].rc, TH_ENOTFOUND);
    thtest_assert_state(fx->e, ta->id, TH_TASK_COMPLETED);
    thtest_assert_state(fx->e, tb->id, TH_TASK_RUNNING);

    /* The same completion again is a duplicate. */
    th_completion again[1] = {{ta->id, ta->lease, "{\"a\":2}", 99}};
    assert_int_equal(th_engine_complete_batch(fx->e, again, 1), 0);
    assert_int_equal(again[0].rc, TH_ESTALE);
    th_task *g = thtest_get(fx->e, ta->id);
    assert_json_equal(g->result, "{\"a\":1}");
    th_task_free(g);
    th_task_free(ta);
    th_task_free(tb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_priority_order),
        T(test_fifo_within_priority),
        T(test_claim_only_listed_queues),
        T(test_claim_many),
        T(test_lease_expiry_puts_task_back),
        T(test_lease_expiry_without_backoff_is_claimable),
        T(test_heartbeat_extends_lease),
        T(test_unextended_lease_expires_despite_other_tasks),
        T(test_duplicate_and_stale_completion),
        T(test_complete_batch_per_item),
    };
    return THTEST_RUN_ALL_STORES("engine_claim", tests) != 0;
}
