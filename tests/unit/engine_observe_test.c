/*
 * Engine observation tests, run against every store ("memory" and "sqlite")
 * with a fake clock and manual ticks: progress and execution logs (order,
 * paging, validation), listing with filters and paging, counts per queue and
 * state, pruning of old final tasks, the event stream (order, sequence
 * numbers, unsubscribe) and metrics.
 */
#include "thtest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FX(state) ((thtest_fx *)*(state))
#define T(fn) cmocka_unit_test_setup_teardown(fn, thtest_fx_setup, thtest_fx_teardown)

static void complete_ok(thtest_fx *fx, const char *id, uint64_t lease, const char *result)
{
    th_error err;
    memset(&err, 0, sizeof err);
    int rc = th_engine_complete(fx->e, id, lease, result, &err);
    if (rc != 0)
        fail_msg("complete %s: %s: %s", id, th_errname(rc), err.message);
}

/* Claims the next task of `queue` and completes it; returns nothing. */
static void run_next(thtest_fx *fx, const char *queue, const char *result)
{
    th_task *t = thtest_claim1(fx->e, queue, 0);
    complete_ok(fx, t->id, t->lease, result);
    th_task_free(t);
}

/* ---- progress and logs -------------------------------------------------- */

static void test_progress_visible(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char id[TH_ID_SIZE];
    thtest_submit_simple(fx->e, "q", NULL, id);
    th_task *t = thtest_claim1(fx->e, "q", 0);
    uint64_t lease = t->lease;
    th_task_free(t);

    assert_int_equal(th_engine_progress(fx->e, id, lease, 50, 1, 4, "step", &err), 0);
    t = thtest_get(fx->e, id);
    assert_int_equal(t->progress, 50);
    assert_int_equal(t->step, 1);
    assert_int_equal(t->total_steps, 4);
    assert_string_equal(t->progress_message, "step");
    th_task_free(t);

    memset(&err, 0, sizeof err);
    assert_int_equal(th_engine_progress(fx->e, id, lease, 101, 0, 0, NULL, &err), TH_EINVAL);
    assert_int_equal(th_engine_progress(fx->e, id, lease, -1, 0, 0, NULL, &err), TH_EINVAL);
    assert_int_equal(th_engine_progress(fx->e, id, lease + 1, 60, 0, 0, NULL, &err), TH_ESTALE);
    t = thtest_get(fx->e, id);
    assert_int_equal(t->progress, 50);
    th_task_free(t);

    assert_int_equal(th_engine_progress(fx->e, id, lease, 75, 3, 4, NULL, &err), 0);
    t = thtest_get(fx->e, id);
    assert_int_equal(t->progress, 75);
    assert_int_equal(t->step, 3);
    th_task_free(t);
}

static void test_logs_in_order_and_paged(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char id[TH_ID_SIZE];
    thtest_submit_simple(fx->e, "q", NULL, id);
    th_task *t = thtest_claim1(fx->e, "q", 0);
    uint64_t lease = t->lease;
    th_task_free(t);

    assert_int_equal(th_engine_log(fx->e, id, lease, TH_LOG_INFO, "one", NULL, &err), 0);
    thtest_clock_advance(&fx->clk, 5);
    assert_int_equal(th_engine_log(fx->e, id, lease, TH_LOG_WARN, "two", "{\"k\": [2]}", &err), 0);
    thtest_clock_advance(&fx->clk, 5);
    assert_int_equal(th_engine_log(fx->e, id, lease, TH_LOG_ERROR, "three", NULL, &err), 0);

    /* Refused rows are not stored. */
    memset(&err, 0, sizeof err);
    assert_int_equal(th_engine_log(fx->e, id, lease, TH_LOG_INFO, "bad", "{oops", &err), TH_EINVAL);
    assert_int_equal(err.code, TH_EINVAL);
    assert_int_equal(th_engine_log(fx->e, id, lease + 1, TH_LOG_INFO, "stale", NULL, &err),
                     TH_ESTALE);

    th_log_entry *rows = NULL;
    size_t n = 0;
    assert_int_equal(th_engine_logs(fx->e, id, 0, 0, &rows, &n, &err), 0);
    assert_int_equal(n, 3);
    const char *msg[3] = {"one", "two", "three"};
    const th_log_level lvl[3] = {TH_LOG_INFO, TH_LOG_WARN, TH_LOG_ERROR};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(rows[i].seq, (int64_t)i + 1);
        assert_string_equal(rows[i].message, msg[i]);
        assert_int_equal(rows[i].level, lvl[i]);
        assert_int_equal(rows[i].attempt, 1);
        assert_int_equal(rows[i].time_ms, THTEST_T0 + 5 * (int64_t)i);
    }
    assert_null(rows[0].data);
    assert_json_equal(rows[1].data, "{\"k\":[2]}");
    th_log_entries_free(rows, n);

    assert_int_equal(th_engine_logs(fx->e, id, 1, 0, &rows, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(rows[0].seq, 2);
    assert_int_equal(rows[1].seq, 3);
    th_log_entries_free(rows, n);

    assert_int_equal(th_engine_logs(fx->e, id, 1, 1, &rows, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(rows[0].seq, 2);
    assert_string_equal(rows[0].message, "two");
    th_log_entries_free(rows, n);

    assert_int_equal(th_engine_logs(fx->e, id, 3, 0, &rows, &n, &err), 0);
    assert_int_equal(n, 0);
    th_log_entries_free(rows, n);

    /* lease 0: a system note, accepted without the lease check. */
    assert_int_equal(th_engine_log(fx->e, id, 0, TH_LOG_DEBUG, "note", NULL, &err), 0);
    assert_int_equal(th_engine_logs(fx->e, id, 0, 0, &rows, &n, &err), 0);
    assert_int_equal(n, 4);
    assert_int_equal(rows[3].seq, 4);
    assert_string_equal(rows[3].message, "note");
    th_log_entries_free(rows, n);
    complete_ok(fx, id, lease, NULL);

    memset(&err, 0, sizeof err);
    assert_int_equal(th_engine_logs(fx->e, "01ARZ3NDEKTSV4RRFFQ69G5FAV", 0, 0, &rows, &n, &err),
                     TH_ENOTFOUND);
}

/* ---- list, counts, prune ------------------------------------------------ */

static const th_queue_counts *find_counts(const th_queue_counts *c, size_t n, const char *q)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(c[i].queue, q) == 0)
            return &c[i];
    fail_msg("no counts for queue %s", q);
    return NULL;
}

static void test_list_filters_paging_counts(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char ids[5][TH_ID_SIZE];
    const char *queue[5] = {"q1", "q2", "q1", "q2", "q1"};
    for (int i = 0; i < 5; i++) {
        thtest_submit_simple(fx->e, queue[i], NULL, ids[i]);
        thtest_clock_advance(&fx->clk, 1); /* distinct creation times */
    }
    run_next(fx, "q1", "1");                    /* ids[0] completed */
    th_task *t = thtest_claim1(fx->e, "q2", 0); /* ids[1] running */
    assert_string_equal(t->id, ids[1]);
    th_task_free(t);

    assert_int_equal(thtest_list_count(fx->e, "q1", -1), 3);
    assert_int_equal(thtest_list_count(fx->e, "q2", -1), 2);
    assert_int_equal(thtest_list_count(fx->e, NULL, TH_TASK_PENDING), 3);
    assert_int_equal(thtest_list_count(fx->e, "q1", TH_TASK_COMPLETED), 1);
    assert_int_equal(thtest_list_count(fx->e, "q2", TH_TASK_RUNNING), 1);
    assert_int_equal(thtest_list_count(fx->e, "q2", TH_TASK_COMPLETED), 0);
    assert_int_equal(thtest_list_count(fx->e, "nope", -1), 0);

    /* Pages of 2 in id order: 2 + 2 + 1, the submission order. */
    th_list_filter f;
    memset(&f, 0, sizeof f);
    f.state = -1;
    f.limit = 2;
    size_t seen = 0;
    char after[TH_ID_SIZE] = "";
    for (int page = 0; page < 3; page++) {
        th_task **tasks = NULL;
        size_t n = 0;
        f.after_id = page ? after : NULL;
        assert_int_equal(th_engine_list(fx->e, &f, &tasks, &n, &err), 0);
        assert_int_equal(n, page < 2 ? 2 : 1);
        for (size_t i = 0; i < n; i++)
            assert_string_equal(tasks[i]->id, ids[seen++]);
        memcpy(after, tasks[n - 1]->id, TH_ID_SIZE);
        th_task_array_free(tasks, n);
    }
    th_task **tasks = NULL;
    size_t n = 99;
    f.after_id = after;
    assert_int_equal(th_engine_list(fx->e, &f, &tasks, &n, &err), 0);
    assert_int_equal(n, 0);
    th_task_array_free(tasks, n);

    /* Paging combined with a filter. */
    f.queue = "q1";
    f.after_id = ids[0];
    f.limit = 10;
    assert_int_equal(th_engine_list(fx->e, &f, &tasks, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(tasks[0]->id, ids[2]);
    assert_string_equal(tasks[1]->id, ids[4]);
    th_task_array_free(tasks, n);

    th_queue_counts *c = NULL;
    size_t nc = 0;
    assert_int_equal(th_engine_counts(fx->e, &c, &nc), 0);
    assert_int_equal(nc, 2);
    const th_queue_counts *q1 = find_counts(c, nc, "q1");
    const th_queue_counts *q2 = find_counts(c, nc, "q2");
    assert_int_equal(q1->counts[TH_TASK_PENDING], 2);
    assert_int_equal(q1->counts[TH_TASK_COMPLETED], 1);
    assert_int_equal(q1->counts[TH_TASK_RUNNING], 0);
    assert_int_equal(q2->counts[TH_TASK_PENDING], 1);
    assert_int_equal(q2->counts[TH_TASK_RUNNING], 1);
    assert_int_equal(q2->counts[TH_TASK_COMPLETED], 0);
    for (int s = 0; s < TH_TASK_NSTATES; s++)
        if (s != TH_TASK_PENDING && s != TH_TASK_RUNNING && s != TH_TASK_COMPLETED)
            assert_int_equal(q1->counts[s] + q2->counts[s], 0);
    free(c);
}

static void test_prune_removes_old_final_tasks(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char old_done[TH_ID_SIZE], new_done[TH_ID_SIZE], old_failed[TH_ID_SIZE];
    char waiting[TH_ID_SIZE], running[TH_ID_SIZE];

    thtest_submit_simple(fx->e, "a", NULL, old_done);
    thtest_submit_simple(fx->e, "b", NULL, old_failed);
    thtest_submit_simple(fx->e, "c", NULL, new_done);
    thtest_submit_simple(fx->e, "d", NULL, waiting);
    thtest_submit_simple(fx->e, "e", NULL, running);

    thtest_clock_advance(&fx->clk, 100); /* T0 + 100 */
    th_task *t = thtest_claim1(fx->e, "a", 0);
    assert_int_equal(th_engine_log(fx->e, old_done, t->lease, TH_LOG_INFO, "x", NULL, &err), 0);
    complete_ok(fx, old_done, t->lease, "1");
    th_task_free(t);
    t = thtest_claim1(fx->e, "b", 0);
    assert_int_equal(th_engine_fail(fx->e, old_failed, t->lease, "x", TH_FAIL_PERMANENT, &err), 0);
    th_task_free(t);
    t = thtest_claim1(fx->e, "e", 0);
    th_task_free(t);

    thtest_clock_advance(&fx->clk, 1900); /* T0 + 2000 */
    run_next(fx, "c", "2");

    assert_int_equal(th_engine_prune(fx->e, THTEST_T0 + 1000), 2);
    th_task *g = NULL;
    memset(&err, 0, sizeof err);
    assert_int_equal(th_engine_get(fx->e, old_done, &g, &err), TH_ENOTFOUND);
    assert_int_equal(th_engine_get(fx->e, old_failed, &g, &err), TH_ENOTFOUND);
    th_log_entry *rows = NULL;
    size_t n = 0;
    assert_int_equal(th_engine_logs(fx->e, old_done, 0, 0, &rows, &n, &err), TH_ENOTFOUND);
    thtest_assert_state(fx->e, new_done, TH_TASK_COMPLETED);
    thtest_assert_state(fx->e, waiting, TH_TASK_PENDING);
    thtest_assert_state(fx->e, running, TH_TASK_RUNNING);
    assert_int_equal(thtest_list_count(fx->e, NULL, -1), 3);

    /* A far cutoff takes the remaining final task, never live ones. */
    thtest_clock_advance(&fx->clk, 100000);
    assert_int_equal(th_engine_prune(fx->e, fx->clk.now), 1);
    assert_int_equal(thtest_list_count(fx->e, NULL, -1), 2);
    thtest_assert_state(fx->e, waiting, TH_TASK_PENDING);
    assert_int_equal(th_engine_prune(fx->e, fx->clk.now), 0);
}

/* ---- events ------------------------------------------------------------- */

typedef struct recorder {
    size_t n;
    th_event_type type[256];
    uint64_t seq[256];
    th_task_state st[256];
    char task[256][TH_ID_SIZE];
    char queue[256][TH_QUEUE_NAME_MAX + 1];
} recorder;

static void record(const th_event *ev, void *ud)
{
    recorder *r = ud;
    if (r->n >= 256)
        return;
    r->type[r->n] = ev->type;
    r->seq[r->n] = ev->seq;
    r->st[r->n] = ev->state;
    snprintf(r->task[r->n], TH_ID_SIZE, "%s", ev->task_id ? ev->task_id : "");
    snprintf(r->queue[r->n], sizeof r->queue[0], "%s", ev->queue ? ev->queue : "");
    r->n++;
}

/* Index of the first event of `type` for `id` at or after `from`, or -1. */
static int find_event(const recorder *r, size_t from, th_event_type type, const char *id)
{
    for (size_t i = from; i < r->n; i++)
        if (r->type[i] == type && strcmp(r->task[i], id) == 0)
            return (int)i;
    return -1;
}

static void test_events_in_order(void **state)
{
    thtest_fx *fx = FX(state);
    recorder *r = calloc(1, sizeof *r);
    assert_non_null(r);
    int sub = th_engine_subscribe(fx->e, record, r);
    assert_true(sub > 0);

    char id[TH_ID_SIZE];
    thtest_submit_simple(fx->e, "evq", NULL, id);
    run_next(fx, "evq", "\"done\"");

    const th_event_type want[5] = {TH_EV_SUBMITTED, TH_EV_READY, TH_EV_ASSIGNED, TH_EV_STARTED,
                                   TH_EV_COMPLETED};
    size_t from = 0;
    for (int k = 0; k < 5; k++) {
        int at = find_event(r, from, want[k], id);
        if (at < 0)
            fail_msg("no '%s' event for the task after position %zu (%zu events)",
                     th_event_type_name(want[k]), from, r->n);
        assert_string_equal(r->queue[at], "evq");
        from = (size_t)at + 1;
    }
    int done = find_event(r, 0, TH_EV_COMPLETED, id);
    assert_int_equal(r->st[done], TH_TASK_COMPLETED);
    for (size_t i = 1; i < r->n; i++)
        if (r->seq[i] != r->seq[i - 1] + 1)
            fail_msg("event %zu has seq %llu after %llu", i, (unsigned long long)r->seq[i],
                     (unsigned long long)r->seq[i - 1]);

    /* A failed attempt that will be retried. */
    size_t before = r->n;
    char f[TH_ID_SIZE];
    th_task_spec spec;
    th_task_spec_init(&spec, "evq");
    spec.retry = thtest_retry(2, 100, 100, 2.0);
    thtest_submit(fx->e, &spec, f);
    th_task *t = thtest_claim1(fx->e, "evq", 0);
    th_error err;
    assert_int_equal(th_engine_fail(fx->e, f, t->lease, "oops", 0, &err), 0);
    th_task_free(t);
    assert_true(find_event(r, before, TH_EV_FAILED, f) >= 0);
    assert_true(find_event(r, before, TH_EV_RETRYING, f) >= 0);

    assert_int_equal(th_engine_unsubscribe(fx->e, sub), 0);
    size_t n = r->n;
    char id2[TH_ID_SIZE];
    thtest_submit_simple(fx->e, "evq", NULL, id2);
    run_next(fx, "evq", NULL);
    assert_int_equal(r->n, n);
    free(r);
}

/* ---- metrics ------------------------------------------------------------ */

static void test_metrics_count_completions(void **state)
{
    thtest_fx *fx = FX(state);
    char id[TH_ID_SIZE];
    for (int i = 0; i < 5; i++)
        thtest_submit_simple(fx->e, "m", NULL, id);
    thtest_submit_simple(fx->e, "idle", NULL, id);
    for (int i = 0; i < 5; i++) {
        thtest_clock_advance(&fx->clk, 10);
        run_next(fx, "m", "true");
    }

    th_engine_metrics m;
    memset(&m, 0, sizeof m);
    assert_int_equal(th_engine_metrics_get(fx->e, &m), 0);
    assert_int_equal(m.completed_total, 5);
    assert_int_equal(m.submitted_total, 6);
    assert_int_equal(m.counts[TH_TASK_COMPLETED], 5);
    assert_int_equal(m.counts[TH_TASK_PENDING], 1);
    assert_int_equal(m.counts[TH_TASK_RUNNING], 0);
    assert_int_equal(m.failed_attempts_total, 0);
    assert_true(m.avg_run_ms >= 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_progress_visible),
        T(test_logs_in_order_and_paged),
        T(test_list_filters_paging_counts),
        T(test_prune_removes_old_final_tasks),
        T(test_events_in_order),
        T(test_metrics_count_completions),
    };
    return THTEST_RUN_ALL_STORES("engine_observe", tests) != 0;
}
