/*
 * Engine submission tests, run against every store ("memory" and "sqlite")
 * with a fake clock and manual ticks:
 *
 *   - dependencies: chains run in order, fan-in waits for every dependency, a
 *     failed or cancelled dependency cancels its dependents (transitively)
 *     with the reason, unknown dependencies are refused naming "deps[i]", a
 *     task can read its dependency's result;
 *   - unique keys: a second submit with the same key returns 1 and the id;
 *   - batches: all or nothing, with the failing item named "tasks[i]...";
 *     an item may depend on an earlier item of the same batch;
 *   - validation: every bad field refused with a negative code and its name;
 *   - backpressure: max_queued refuses with TH_EBUSY.
 */
#include "thtest.h"

#include <stdio.h>
#include <string.h>

#define FX(state) ((thtest_fx *)*(state))
#define T(fn) cmocka_unit_test_setup_teardown(fn, thtest_fx_setup, thtest_fx_teardown)

#define UNKNOWN_ID "01ARZ3NDEKTSV4RRFFQ69G5FAV"

/* How a batch item names an earlier item of the same batch as a dependency. */
#define BATCH_REF(i) ("$" #i)

static void submit_deps(thtest_fx *fx, const char *queue, const char *const *deps, size_t ndeps,
                        char id[TH_ID_SIZE])
{
    th_task_spec spec;
    th_task_spec_init(&spec, queue);
    spec.deps = deps;
    spec.ndeps = ndeps;
    thtest_submit(fx->e, &spec, id);
}

/* Claims `id` (which must be the next ready task of `queue`) and completes
 * it with `result`. */
static void run_to_completion(thtest_fx *fx, const char *queue, const char *id, const char *result)
{
    th_error err;
    th_task *t = thtest_claim1(fx->e, queue, 0);
    assert_string_equal(t->id, id);
    memset(&err, 0, sizeof err);
    assert_int_equal(th_engine_complete(fx->e, id, t->lease, result, &err), 0);
    th_task_free(t);
}

/* ---- dependencies ------------------------------------------------------- */

static void test_dependency_chain_runs_in_order(void **state)
{
    thtest_fx *fx = FX(state);
    char a[TH_ID_SIZE], b[TH_ID_SIZE], c[TH_ID_SIZE];
    thtest_submit_simple(fx->e, "q", NULL, a);
    const char *da[1] = {a};
    submit_deps(fx, "q", da, 1, b);
    const char *db[1] = {b};
    submit_deps(fx, "q", db, 1, c);

    thtest_assert_state(fx->e, a, TH_TASK_PENDING);
    thtest_assert_state(fx->e, b, TH_TASK_BLOCKED);
    thtest_assert_state(fx->e, c, TH_TASK_BLOCKED);
    th_task *t = thtest_get(fx->e, c);
    assert_int_equal(t->ndeps, 1);
    assert_string_equal(t->deps[0], b);
    th_task_free(t);

    /* Only A is ready; blocked tasks are not claimable, not even after ticks. */
    th_task *ta = thtest_claim1(fx->e, "q", 0);
    assert_string_equal(ta->id, a);
    thtest_fx_tick(fx, 1000);
    assert_int_equal(thtest_claim_count(fx->e, "q"), 0);
    th_error err;
    assert_int_equal(th_engine_complete(fx->e, a, ta->lease, "1", &err), 0);
    th_task_free(ta);

    thtest_assert_state(fx->e, b, TH_TASK_PENDING);
    thtest_assert_state(fx->e, c, TH_TASK_BLOCKED);
    run_to_completion(fx, "q", b, "2");
    thtest_assert_state(fx->e, c, TH_TASK_PENDING);
    run_to_completion(fx, "q", c, "3");
    thtest_assert_state(fx->e, c, TH_TASK_COMPLETED);
}

static void test_fan_in_waits_for_all(void **state)
{
    thtest_fx *fx = FX(state);
    char a[TH_ID_SIZE], b[TH_ID_SIZE], c[TH_ID_SIZE], d[TH_ID_SIZE];
    thtest_submit_simple(fx->e, "a", NULL, a);
    thtest_submit_simple(fx->e, "b", NULL, b);
    thtest_submit_simple(fx->e, "c", NULL, c);
    const char *deps[3] = {a, b, c};
    submit_deps(fx, "d", deps, 3, d);

    th_task *t = thtest_get(fx->e, d);
    assert_int_equal(t->state, TH_TASK_BLOCKED);
    assert_int_equal(t->ndeps, 3);
    for (int i = 0; i < 3; i++)
        assert_string_equal(t->deps[i], deps[i]);
    th_task_free(t);

    run_to_completion(fx, "b", b, "\"b\"");
    thtest_assert_state(fx->e, d, TH_TASK_BLOCKED);
    run_to_completion(fx, "a", a, "\"a\"");
    thtest_assert_state(fx->e, d, TH_TASK_BLOCKED);
    assert_int_equal(thtest_claim_count(fx->e, "d"), 0);
    run_to_completion(fx, "c", c, "\"c\"");
    thtest_assert_state(fx->e, d, TH_TASK_PENDING);
    run_to_completion(fx, "d", d, "\"d\"");
}

static void test_failed_dependency_cancels_dependents(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char a[TH_ID_SIZE], b[TH_ID_SIZE], c[TH_ID_SIZE], other[TH_ID_SIZE];
    th_task_spec spec;
    th_task_spec_init(&spec, "q");
    spec.retry = thtest_retry(3, 1000, 1000, 2.0);
    thtest_submit(fx->e, &spec, a);
    const char *da[1] = {a};
    submit_deps(fx, "q", da, 1, b);
    const char *db[1] = {b};
    submit_deps(fx, "q", db, 1, c);
    thtest_submit_simple(fx->e, "unrelated", NULL, other);

    th_task *t = thtest_claim1(fx->e, "q", 0);
    assert_string_equal(t->id, a);
    assert_int_equal(th_engine_fail(fx->e, a, t->lease, "disk on fire", TH_FAIL_PERMANENT, &err),
                     0);
    th_task_free(t);

    thtest_assert_state(fx->e, a, TH_TASK_FAILED);
    t = thtest_get(fx->e, b);
    assert_int_equal(t->state, TH_TASK_CANCELLED);
    if (!thtest_contains(t->error, a))
        fail_msg("B's error '%s' does not name A %s", t->error ? t->error : "(null)", a);
    assert_true(t->finished_at != 0);
    th_task_free(t);
    t = thtest_get(fx->e, c);
    assert_int_equal(t->state, TH_TASK_CANCELLED);
    if (!thtest_contains(t->error, a) && !thtest_contains(t->error, b))
        fail_msg("C's error '%s' names neither A nor B", t->error ? t->error : "(null)");
    th_task_free(t);
    thtest_assert_state(fx->e, other, TH_TASK_PENDING);

    /* A dependent of a failed task cannot be retried on its own. */
    memset(&err, 0, sizeof err);
    assert_int_equal(th_engine_retry(fx->e, b, &err), TH_ESTATE);
    assert_int_equal(thtest_claim_count(fx->e, "q"), 0);
}

static void test_dependency_failing_after_retries_cancels(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char a[TH_ID_SIZE], b[TH_ID_SIZE];
    th_task_spec spec;
    th_task_spec_init(&spec, "q");
    spec.retry = thtest_retry(1, 100, 100, 2.0);
    thtest_submit(fx->e, &spec, a);
    const char *da[1] = {a};
    submit_deps(fx, "q", da, 1, b);

    th_task *t = thtest_claim1(fx->e, "q", 0);
    assert_int_equal(th_engine_fail(fx->e, a, t->lease, "try 1", 0, &err), 0);
    th_task_free(t);
    /* A retry is not a final failure: B still waits. */
    thtest_assert_state(fx->e, b, TH_TASK_BLOCKED);
    thtest_fx_tick(fx, 100);
    t = thtest_claim1(fx->e, "q", 0);
    assert_string_equal(t->id, a);
    assert_int_equal(th_engine_fail(fx->e, a, t->lease, "try 2", 0, &err), 0);
    th_task_free(t);
    thtest_assert_state(fx->e, a, TH_TASK_FAILED);
    thtest_assert_state(fx->e, b, TH_TASK_CANCELLED);
}

static void test_cancel_propagates_to_dependents(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char a[TH_ID_SIZE], b[TH_ID_SIZE], c[TH_ID_SIZE];
    thtest_submit_simple(fx->e, "q", NULL, a);
    const char *da[1] = {a};
    submit_deps(fx, "q", da, 1, b);
    const char *db[1] = {b};
    submit_deps(fx, "q", db, 1, c);

    /* Cancelling a blocked task cancels its own dependents, not its deps. */
    assert_int_equal(th_engine_cancel(fx->e, b, "not wanted", &err), 0);
    thtest_assert_state(fx->e, b, TH_TASK_CANCELLED);
    thtest_assert_state(fx->e, c, TH_TASK_CANCELLED);
    thtest_assert_state(fx->e, a, TH_TASK_PENDING);
}

static void test_submit_after_dependency_outcome(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char failed[TH_ID_SIZE], cancelled[TH_ID_SIZE], done[TH_ID_SIZE];
    char on_failed[TH_ID_SIZE], on_cancelled[TH_ID_SIZE], on_done[TH_ID_SIZE];

    th_task_spec spec;
    th_task_spec_init(&spec, "f");
    thtest_submit(fx->e, &spec, failed);
    th_task *t = thtest_claim1(fx->e, "f", 0);
    assert_int_equal(th_engine_fail(fx->e, failed, t->lease, "broken", TH_FAIL_PERMANENT, &err), 0);
    th_task_free(t);
    thtest_submit_simple(fx->e, "x", NULL, cancelled);
    assert_int_equal(th_engine_cancel(fx->e, cancelled, "gone", &err), 0);
    thtest_submit_simple(fx->e, "d", NULL, done);
    run_to_completion(fx, "d", done, "7");

    const char *d1[1] = {failed};
    submit_deps(fx, "q", d1, 1, on_failed);
    t = thtest_get(fx->e, on_failed);
    assert_int_equal(t->state, TH_TASK_CANCELLED);
    assert_true(thtest_contains(t->error, failed));
    th_task_free(t);

    const char *d2[1] = {cancelled};
    submit_deps(fx, "q", d2, 1, on_cancelled);
    thtest_assert_state(fx->e, on_cancelled, TH_TASK_CANCELLED);

    /* Already completed: ready at once. */
    const char *d3[1] = {done};
    submit_deps(fx, "q", d3, 1, on_done);
    thtest_assert_state(fx->e, on_done, TH_TASK_PENDING);
}

static void test_unknown_dependency_refused(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char a[TH_ID_SIZE], id[TH_ID_SIZE];
    thtest_submit_simple(fx->e, "q", NULL, a);

    th_task_spec spec;
    th_task_spec_init(&spec, "q");
    const char *d1[1] = {UNKNOWN_ID};
    spec.deps = d1;
    spec.ndeps = 1;
    memset(&err, 0, sizeof err);
    assert_int_equal(th_engine_submit(fx->e, &spec, id, &err), TH_ENOTFOUND);
    assert_int_equal(err.code, TH_ENOTFOUND);
    assert_string_equal(err.field, "deps[0]");

    const char *d2[2] = {a, UNKNOWN_ID};
    spec.deps = d2;
    spec.ndeps = 2;
    memset(&err, 0, sizeof err);
    assert_int_equal(th_engine_submit(fx->e, &spec, id, &err), TH_ENOTFOUND);
    assert_string_equal(err.field, "deps[1]");

    assert_int_equal(thtest_list_count(fx->e, NULL, -1), 1);
}

static void test_dependent_reads_dependency_result(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char a[TH_ID_SIZE], b[TH_ID_SIZE];
    thtest_submit_simple(fx->e, "q", "{\"x\": 6}", a);
    const char *da[1] = {a};
    submit_deps(fx, "q", da, 1, b);
    run_to_completion(fx, "q", a, "{\"answer\": 42, \"items\": [1, 2]}");

    th_task *t = thtest_claim1(fx->e, "q", 0);
    assert_string_equal(t->id, b);
    assert_int_equal(t->ndeps, 1);
    th_task *dep = thtest_get(fx->e, t->deps[0]);
    assert_int_equal(dep->state, TH_TASK_COMPLETED);
    assert_json_equal(dep->result, "{\"answer\":42,\"items\":[1,2]}");
    th_task_free(dep);
    assert_int_equal(th_engine_complete(fx->e, b, t->lease, "43", &err), 0);
    th_task_free(t);
}

/* ---- unique keys -------------------------------------------------------- */

static void test_unique_key_deduplicates(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char first[TH_ID_SIZE], second[TH_ID_SIZE], other[TH_ID_SIZE];
    th_task_spec spec;
    th_task_spec_init(&spec, "q");
    spec.unique_key = "invoice-17";
    spec.payload = "1";
    memset(&err, 0, sizeof err);
    assert_int_equal(th_engine_submit(fx->e, &spec, first, &err), 0);

    spec.payload = "2";
    memset(second, 0, sizeof second);
    assert_int_equal(th_engine_submit(fx->e, &spec, second, &err), 1);
    assert_string_equal(second, first);
    assert_int_equal(thtest_list_count(fx->e, NULL, -1), 1);
    th_task *t = thtest_get(fx->e, first);
    assert_json_equal(t->payload, "1");
    assert_string_equal(t->unique_key, "invoice-17");
    th_task_free(t);

    spec.unique_key = "invoice-18";
    assert_int_equal(th_engine_submit(fx->e, &spec, other, &err), 0);
    assert_string_not_equal(other, first);
    assert_int_equal(thtest_list_count(fx->e, NULL, -1), 2);
}

/* ---- batches ------------------------------------------------------------ */

static void test_batch_is_atomic(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    th_task_spec specs[3];
    char ids[3][TH_ID_SIZE];
    th_task_spec_init(&specs[0], "good");
    th_task_spec_init(&specs[1], "good");
    th_task_spec_init(&specs[2], "bad queue");
    memset(&err, 0, sizeof err);
    int rc = th_engine_submit_batch(fx->e, specs, 3, ids, &err);
    assert_true(rc < 0);
    assert_int_equal(rc, TH_EINVAL);
    assert_int_equal(err.code, rc);
    if (!strstr(err.field, "tasks[2]"))
        fail_msg("err.field '%s' does not name tasks[2]", err.field);
    assert_int_equal(thtest_list_count(fx->e, NULL, -1), 0);
    assert_int_equal(thtest_claim_count(fx->e, NULL), 0);

    /* A failure found later (an unknown dependency) also leaves nothing. */
    const char *dep[1] = {UNKNOWN_ID};
    th_task_spec_init(&specs[2], "good");
    specs[2].deps = dep;
    specs[2].ndeps = 1;
    memset(&err, 0, sizeof err);
    assert_int_equal(th_engine_submit_batch(fx->e, specs, 3, ids, &err), TH_ENOTFOUND);
    assert_true(strstr(err.field, "tasks[2]") != NULL);
    assert_int_equal(thtest_list_count(fx->e, NULL, -1), 0);

    /* Fixed, the same batch goes in whole. */
    specs[2].ndeps = 0;
    specs[2].deps = NULL;
    assert_int_equal(th_engine_submit_batch(fx->e, specs, 3, ids, &err), 0);
    assert_int_equal(thtest_list_count(fx->e, "good", TH_TASK_PENDING), 3);
    for (int i = 0; i < 3; i++)
        thtest_assert_state(fx->e, ids[i], TH_TASK_PENDING);
}

static void test_batch_dependency_on_earlier_item(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    th_task_spec specs[2];
    char ids[2][TH_ID_SIZE];
    th_task_spec_init(&specs[0], "q");
    th_task_spec_init(&specs[1], "q");
    const char *dep[1] = {BATCH_REF(0)};
    specs[1].deps = dep;
    specs[1].ndeps = 1;
    memset(&err, 0, sizeof err);
    int rc = th_engine_submit_batch(fx->e, specs, 2, ids, &err);
    if (rc != 0)
        fail_msg("batch with a dependency on item 0: %s field '%s': %s", th_errname(rc), err.field,
                 err.message);
    th_task *t = thtest_get(fx->e, ids[1]);
    assert_int_equal(t->state, TH_TASK_BLOCKED);
    assert_int_equal(t->ndeps, 1);
    assert_string_equal(t->deps[0], ids[0]);
    th_task_free(t);
    run_to_completion(fx, "q", ids[0], "0");
    thtest_assert_state(fx->e, ids[1], TH_TASK_PENDING);
}

static void test_batch_deduplicates_unique_keys(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char first[TH_ID_SIZE];
    th_task_spec spec;
    th_task_spec_init(&spec, "q");
    spec.unique_key = "k";
    thtest_submit(fx->e, &spec, first);

    th_task_spec specs[2];
    char ids[2][TH_ID_SIZE];
    th_task_spec_init(&specs[0], "q");
    specs[0].unique_key = "k";
    th_task_spec_init(&specs[1], "q");
    assert_int_equal(th_engine_submit_batch(fx->e, specs, 2, ids, &err), 0);
    assert_string_equal(ids[0], first);
    assert_string_not_equal(ids[1], first);
    assert_int_equal(thtest_list_count(fx->e, NULL, -1), 2);
}

/* ---- validation --------------------------------------------------------- */

/* Submits `spec`, expects `code` with err.field containing `field`, and no
 * task created. */
static void expect_refused(thtest_fx *fx, const th_task_spec *spec, int code, const char *field)
{
    th_error err;
    char id[TH_ID_SIZE];
    size_t before = thtest_list_count(fx->e, NULL, -1);
    memset(&err, 0, sizeof err);
    int rc = th_engine_submit(fx->e, spec, id, &err);
    if (rc != code)
        fail_msg("expected %s for field %s, got %d (%s): %s", th_errname(code), field, rc,
                 th_errname(rc), err.message);
    assert_int_equal(err.code, code);
    if (!strstr(err.field, field))
        fail_msg("err.field '%s' does not name '%s' (%s)", err.field, field, err.message);
    assert_int_equal(thtest_list_count(fx->e, NULL, -1), before);
}

static void test_validation_queue_name(void **state)
{
    thtest_fx *fx = FX(state);
    char name65[66], name64[65], id[TH_ID_SIZE];
    memset(name65, 'a', 65);
    name65[65] = '\0';
    memset(name64, 'b', 64);
    name64[64] = '\0';
    th_task_spec spec;

    const char *bad[4] = {"", "has space", name65, "slash/not-ok"};
    for (int i = 0; i < 4; i++) {
        th_task_spec_init(&spec, bad[i]);
        expect_refused(fx, &spec, TH_EINVAL, "queue");
    }
    /* The whole allowed alphabet, and exactly 64 characters, pass. */
    th_task_spec_init(&spec, "Az09_.:-");
    thtest_submit(fx->e, &spec, id);
    th_task_spec_init(&spec, name64);
    thtest_submit(fx->e, &spec, id);
}

static void test_validation_payload_and_metadata(void **state)
{
    thtest_fx *fx = FX(state);
    th_engine_options o;
    th_engine_options_init(&o);
    o.max_payload_bytes = 64;
    thtest_fx_reopen(fx, &o);

    char big[128], id[TH_ID_SIZE];
    big[0] = '"';
    memset(big + 1, 'x', 100);
    big[101] = '"';
    big[102] = '\0';
    th_task_spec spec;
    th_task_spec_init(&spec, "q");
    spec.payload = big;
    expect_refused(fx, &spec, TH_ETOOBIG, "payload");

    spec.payload = "{\"a\":";
    expect_refused(fx, &spec, TH_EINVAL, "payload");
    spec.payload = "{\"a\": 1} trailing";
    expect_refused(fx, &spec, TH_EINVAL, "payload");

    spec.payload = "{\"small\": true}";
    spec.metadata = "[1, 2]";
    expect_refused(fx, &spec, TH_EINVAL, "metadata");
    spec.metadata = "42";
    expect_refused(fx, &spec, TH_EINVAL, "metadata");
    spec.metadata = "{\"owner\": ";
    expect_refused(fx, &spec, TH_EINVAL, "metadata");

    spec.metadata = "{\"owner\": \"me\"}";
    thtest_submit(fx->e, &spec, id);
    th_task *t = thtest_get(fx->e, id);
    assert_json_equal(t->metadata, "{\"owner\":\"me\"}");
    assert_json_equal(t->payload, "{\"small\":true}");
    th_task_free(t);
}

static void test_validation_numbers(void **state)
{
    thtest_fx *fx = FX(state);
    char id[TH_ID_SIZE];
    th_task_spec spec;

    th_task_spec_init(&spec, "q");
    spec.priority = 101;
    expect_refused(fx, &spec, TH_EINVAL, "priority");
    spec.priority = -1;
    expect_refused(fx, &spec, TH_EINVAL, "priority");

    th_task_spec_init(&spec, "q");
    spec.timeout_ms = -1;
    expect_refused(fx, &spec, TH_EINVAL, "timeout_ms");

    th_task_spec_init(&spec, "q");
    spec.retry.multiplier = 0;
    expect_refused(fx, &spec, TH_EINVAL, "retry.multiplier");

    th_task_spec_init(&spec, "q");
    spec.retry.max_retries = -1;
    expect_refused(fx, &spec, TH_EINVAL, "retry.max_retries");

    th_task_spec_init(&spec, "q");
    spec.retry.jitter = 1.5;
    expect_refused(fx, &spec, TH_EINVAL, "retry.jitter");

    /* The edges of the ranges are allowed. */
    th_task_spec_init(&spec, "q");
    spec.priority = TH_PRIORITY_MAX;
    thtest_submit(fx->e, &spec, id);
    spec.priority = TH_PRIORITY_MIN;
    spec.retry.multiplier = 1;
    spec.retry.jitter = 1;
    thtest_submit(fx->e, &spec, id);
    assert_int_equal(thtest_list_count(fx->e, NULL, -1), 2);
}

/* ---- backpressure ------------------------------------------------------- */

static void test_max_queued_refuses(void **state)
{
    thtest_fx *fx = FX(state);
    th_engine_options o;
    th_engine_options_init(&o);
    o.max_queued = 2;
    thtest_fx_reopen(fx, &o);

    th_error err;
    char a[TH_ID_SIZE], b[TH_ID_SIZE], c[TH_ID_SIZE];
    thtest_submit_simple(fx->e, "q", NULL, a);
    th_task_spec spec;
    th_task_spec_init(&spec, "q");
    spec.delay_ms = 10000; /* scheduled counts too */
    thtest_submit(fx->e, &spec, b);

    th_task_spec_init(&spec, "q");
    memset(&err, 0, sizeof err);
    assert_int_equal(th_engine_submit(fx->e, &spec, c, &err), TH_EBUSY);
    assert_int_equal(err.code, TH_EBUSY);
    assert_int_equal(thtest_list_count(fx->e, NULL, -1), 2);

    /* A running task is no longer queued: there is room again. */
    th_task *t = thtest_claim1(fx->e, "q", 0);
    th_task_free(t);
    assert_int_equal(th_engine_submit(fx->e, &spec, c, &err), 0);
    assert_int_equal(th_engine_submit(fx->e, &spec, c, &err), TH_EBUSY);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_dependency_chain_runs_in_order),
        T(test_fan_in_waits_for_all),
        T(test_failed_dependency_cancels_dependents),
        T(test_dependency_failing_after_retries_cancels),
        T(test_cancel_propagates_to_dependents),
        T(test_submit_after_dependency_outcome),
        T(test_unknown_dependency_refused),
        T(test_dependent_reads_dependency_result),
        T(test_unique_key_deduplicates),
        T(test_batch_is_atomic),
        T(test_batch_dependency_on_earlier_item),
        T(test_batch_deduplicates_unique_keys),
        T(test_validation_queue_name),
        T(test_validation_payload_and_metadata),
        T(test_validation_numbers),
        T(test_max_queued_refuses),
    };
    return THTEST_RUN_ALL_STORES("engine_submit", tests) != 0;
}
