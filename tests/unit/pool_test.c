/*
 * Worker pool, thread mode, against a real engine (system clock, timer
 * thread):
 *
 *   - th_pool_event_name / th_worker_state_name;
 *   - tasks run on pool workers and complete with the handler's result; the
 *     pool's events (taskSubmitted, taskAssigned, taskCompleted) arrive;
 *   - progress and log calls of a handler reach the engine (th_engine_get,
 *     th_engine_logs) and taskProgress is published;
 *   - TH_HANDLER_RETRY retries per the task's policy, then fails;
 *     TH_HANDLER_PERMANENT (and a bogus return value) fails at once;
 *   - handler registration errors, a task of a queue without a handler is
 *     left alone;
 *   - th_pool_submit fills in the pool's retry and timeout defaults;
 *   - cooperative timeout: a handler polling th_ctx_cancelled stops at its
 *     timeout, the task ends timeout and the worker stays healthy;
 *   - a handler ignoring its timeout past the grace period: its worker is
 *     marked unhealthy and replaced, the task ends timeout;
 *   - cancel of a running task reaches the handler (through the engine's
 *     cancel_requested event) and the task ends cancelled;
 *   - graceful shutdown over sqlite: after th_pool_stop mid-run and a reopen,
 *     every task is completed or back in the queue with its attempt count
 *     unchanged; none is left running. The same with batch 4 and a grace
 *     longer than a handler: batch-mates not yet started go back untouched.
 *
 * Handlers coordinate with the tests through the atomics below, reset before
 * every test. Handlers that block also poll th_ctx_cancelled, so a failing
 * test still tears its pool down.
 */
#include "pool_helpers.h"

static atomic_int g_calls;    /* handler invocations */
static atomic_int g_entered;  /* handlers that started (blocking ones) */
static atomic_int g_returned; /* handlers that returned (blocking ones) */
static atomic_int g_release;  /* the test lets blocked handlers finish */
static atomic_int g_saw_cancel;
static atomic_int g_inflight; /* slow handlers running now */
static atomic_int g_hold;     /* slow handlers starting now wait (for the stop) */
static atomic_int g_held;     /* slow handlers waiting in g_hold */
static atomic_llong g_remaining;

static int setup(void **state)
{
    atomic_store(&g_calls, 0);
    atomic_store(&g_entered, 0);
    atomic_store(&g_returned, 0);
    atomic_store(&g_release, 0);
    atomic_store(&g_saw_cancel, 0);
    atomic_store(&g_inflight, 0);
    atomic_store(&g_hold, 0);
    atomic_store(&g_held, 0);
    atomic_store(&g_remaining, -1);
    *state = pfx_new("memory");
    return 0;
}

static int teardown(void **state)
{
    atomic_store(&g_release, 1);
    pfx_free(*state);
    *state = NULL;
    return 0;
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
#define FX ((pfx *)*state)

/* ---- handlers -------------------------------------------------------------- */

/* Completes with {"payload": <payload>, "attempt": n}. */
static int h_echo(th_ctx *ctx, void *ud)
{
    const th_task *t = th_ctx_task(ctx);
    char buf[512];
    snprintf(buf, sizeof buf, "{\"payload\":%s,\"attempt\":%d,\"ud\":\"%s\"}", t->payload,
             t->attempt, ud ? (const char *)ud : "");
    atomic_fetch_add(&g_calls, 1);
    return th_ctx_set_result(ctx, buf) == 0 ? TH_HANDLER_OK : TH_HANDLER_PERMANENT;
}

/* Sleeps in small steps until the test releases it or it is cancelled. */
static void wait_release(th_ctx *ctx, int honour_cancel)
{
    int64_t until = mono_ms() + 2 * WAIT_LIMIT_MS;
    while (!atomic_load(&g_release) && mono_ms() < until) {
        if (honour_cancel && th_ctx_cancelled(ctx))
            break;
        sleep_ms(2);
    }
}

/* Reports progress and a log row, then waits for the test. */
static int h_report(th_ctx *ctx, void *ud)
{
    (void)ud;
    /* cmocka asserts only on the test's thread: record, the test checks. */
    int bad = 0;
    bad += th_ctx_progress(ctx, 50, 1, 2, "half way") != 0;
    bad += th_ctx_log(ctx, TH_LOG_WARN, "hello from the handler", "{\"n\":7}") != 0;
    /* Invalid values are refused without reaching the engine. */
    bad += th_ctx_progress(ctx, 101, 0, 0, NULL) != TH_EINVAL;
    bad += th_ctx_log(ctx, TH_LOG_INFO, NULL, NULL) != TH_EINVAL;
    atomic_store(&g_calls, bad);
    atomic_fetch_add(&g_entered, 1);
    wait_release(ctx, 1);
    th_ctx_set_result(ctx, "{\"done\":true}");
    return TH_HANDLER_OK;
}

static int h_flaky(th_ctx *ctx, void *ud)
{
    (void)ud;
    int n = atomic_fetch_add(&g_calls, 1) + 1;
    th_ctx_set_error(ctx, "boom on call %d (attempt %d)", n, th_ctx_task(ctx)->attempt);
    return TH_HANDLER_RETRY;
}

static int h_permanent(th_ctx *ctx, void *ud)
{
    (void)ud;
    atomic_fetch_add(&g_calls, 1);
    th_ctx_set_error(ctx, "bad input");
    return TH_HANDLER_PERMANENT;
}

static int h_bogus(th_ctx *ctx, void *ud)
{
    (void)ctx;
    (void)ud;
    atomic_fetch_add(&g_calls, 1);
    return 42;
}

/* Polls th_ctx_cancelled until it says stop (timeout, cancel or shutdown). */
static int h_cooperative(th_ctx *ctx, void *ud)
{
    (void)ud;
    atomic_fetch_add(&g_entered, 1);
    int64_t until = mono_ms() + 2 * WAIT_LIMIT_MS;
    while (!th_ctx_cancelled(ctx) && mono_ms() < until)
        sleep_ms(2);
    atomic_store(&g_saw_cancel, th_ctx_cancelled(ctx));
    atomic_store(&g_remaining, (long long)th_ctx_remaining_ms(ctx));
    th_ctx_set_error(ctx, "stopped early");
    atomic_fetch_add(&g_returned, 1);
    return TH_HANDLER_RETRY;
}

/* Ignores th_ctx_cancelled: runs until the test releases it. */
static int h_stuck(th_ctx *ctx, void *ud)
{
    (void)ud;
    atomic_fetch_add(&g_entered, 1);
    wait_release(ctx, 0);
    atomic_fetch_add(&g_returned, 1);
    return TH_HANDLER_OK;
}

/* ~50 ms of work in 5 ms steps; gives up when asked to stop. With g_hold
 * set it first waits until asked to stop. */
static int h_slow(th_ctx *ctx, void *ud)
{
    (void)ud;
    atomic_fetch_add(&g_inflight, 1);
    if (atomic_load(&g_hold)) {
        atomic_fetch_add(&g_held, 1);
        int64_t until = mono_ms() + 2 * WAIT_LIMIT_MS;
        while (!th_ctx_cancelled(ctx) && mono_ms() < until)
            sleep_ms(1);
    }
    int rc = TH_HANDLER_OK;
    for (int i = 0; i < 10; i++) {
        if (th_ctx_cancelled(ctx)) {
            th_ctx_set_error(ctx, "interrupted");
            rc = TH_HANDLER_RETRY;
            break;
        }
        sleep_ms(5);
    }
    if (rc == TH_HANDLER_OK)
        th_ctx_set_result(ctx, "{\"slow\":true}");
    atomic_fetch_sub(&g_inflight, 1);
    return rc;
}

/* ---- names ------------------------------------------------------------------- */

static void test_event_and_state_names(void **state)
{
    (void)state;
    static const char *const want[TH_PEV_NTYPES] = {
        "taskSubmitted",   "taskAssigned",  "taskProgress",  "taskCompleted", "taskFailed",
        "taskTimeout",     "taskCancelled", "workerCreated", "workerExited",  "workerTerminated",
        "workerHeartbeat", "workerError",   "scaledUp",      "scaledDown",    "metricsUpdated",
        "backpressure",    "error",
    };
    for (int i = 0; i < TH_PEV_NTYPES; i++)
        assert_string_equal(th_pool_event_name((th_pool_event_type)i), want[i]);
    assert_string_equal(th_pool_event_name((th_pool_event_type)TH_PEV_NTYPES), "unknown");
    assert_string_equal(th_pool_event_name((th_pool_event_type)-1), "unknown");
    assert_string_equal(th_worker_state_name(TH_WORKER_IDLE), "idle");
    assert_string_equal(th_worker_state_name(TH_WORKER_BUSY), "busy");
    assert_string_equal(th_worker_state_name(TH_WORKER_UNHEALTHY), "unhealthy");
    assert_string_equal(th_worker_state_name(TH_WORKER_TERMINATING), "terminating");
    assert_string_equal(th_worker_state_name(TH_WORKER_TERMINATED), "terminated");
    assert_string_equal(th_worker_state_name((th_worker_state)99), "unknown");
}

/* ---- running tasks -------------------------------------------------------------- */

static void test_tasks_complete_with_result(void **state)
{
    pfx *f = FX;
    th_pool_options o = quiet_options(2);
    th_pool *p = pfx_pool(f, &o);
    pool_register(p, "echo", h_echo, "ud-seen");
    pool_start(p);

    char ids[3][TH_ID_SIZE];
    for (int i = 0; i < 3; i++) {
        char payload[32];
        snprintf(payload, sizeof payload, "{\"i\":%d}", i);
        th_task_spec s = one_shot("echo", payload, 0);
        pool_submit(p, &s, ids[i]);
    }
    for (int i = 0; i < 3; i++) {
        th_task *t = wait_final(f->e, ids[i]);
        assert_int_equal(t->state, TH_TASK_COMPLETED);
        assert_int_equal(t->attempt, 1);
        char want[128];
        snprintf(want, sizeof want, "{\"payload\":{\"i\":%d},\"attempt\":1,\"ud\":\"ud-seen\"}", i);
        assert_json_equal(t->result, want);
        assert_non_null(t->worker);
        th_task_free(t);
    }
    assert_int_equal(atomic_load(&g_calls), 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(evrec_count(&f->rec, TH_PEV_TASK_SUBMITTED, NULL, ids[i]), 1);
        WAIT_FOR(evrec_count(&f->rec, TH_PEV_TASK_COMPLETED, NULL, ids[i]) == 1);
        rec_event ev;
        assert_true(evrec_find(&f->rec, TH_PEV_TASK_ASSIGNED, ids[i], &ev));
        assert_true(ev.worker > 0);
        assert_int_equal(ev.value, 1); /* the attempt */
    }
    assert_int_equal(evrec_count(&f->rec, TH_PEV_TASK_FAILED, NULL, NULL), 0);
    assert_int_equal(evrec_count(&f->rec, TH_PEV_WORKER_CREATED, NULL, NULL), 2);
    assert_string_equal(th_pool_event_name(TH_PEV_TASK_COMPLETED), "taskCompleted");
}

static void test_progress_and_logs_reach_engine(void **state)
{
    pfx *f = FX;
    th_pool_options o = quiet_options(1);
    th_pool *p = pfx_pool(f, &o);
    pool_register(p, "report", h_report, NULL);
    pool_start(p);

    char id[TH_ID_SIZE];
    th_task_spec s = one_shot("report", NULL, 0);
    pool_submit(p, &s, id);
    WAIT_FOR(atomic_load(&g_entered) == 1);
    assert_int_equal(atomic_load(&g_calls), 0); /* every th_ctx_* call returned as expected */

    /* While the handler runs: progress is on the task, the log row is there. */
    th_task *t = thtest_get(f->e, id);
    assert_int_equal(t->state, TH_TASK_RUNNING);
    assert_int_equal(t->progress, 50);
    assert_int_equal(t->step, 1);
    assert_int_equal(t->total_steps, 2);
    assert_string_equal(t->progress_message, "half way");
    th_task_free(t);

    th_log_entry *rows = NULL;
    size_t n = 0;
    assert_int_equal(th_engine_logs(f->e, id, 0, 0, &rows, &n, NULL), 0);
    int found = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(rows[i].message, "hello from the handler") == 0) {
            found++;
            assert_int_equal(rows[i].level, TH_LOG_WARN);
            assert_int_equal(rows[i].attempt, 1);
            assert_json_equal(rows[i].data, "{\"n\":7}");
        }
    }
    th_log_entries_free(rows, n);
    assert_int_equal(found, 1);

    rec_event ev;
    assert_true(evrec_find(&f->rec, TH_PEV_TASK_PROGRESS, id, &ev));
    assert_int_equal(ev.value, 50);
    assert_string_equal(ev.message, "half way");

    /* A busy worker shows its task. */
    wlist wl = workers_of(p);
    assert_int_equal(wl.n, 1);
    assert_int_equal(wl.w[0].state, TH_WORKER_BUSY);
    assert_string_equal(wl.w[0].current_task, id);
    assert_int_equal(wl.w[0].pid, 0);

    atomic_store(&g_release, 1);
    t = wait_final(f->e, id);
    assert_int_equal(t->state, TH_TASK_COMPLETED);
    assert_json_equal(t->result, "{\"done\":true}");
    th_task_free(t);
}

static void test_retry_then_fail(void **state)
{
    pfx *f = FX;
    th_pool_options o = quiet_options(1);
    th_pool *p = pfx_pool(f, &o);
    pool_register(p, "flaky", h_flaky, NULL);
    pool_start(p);

    char id[TH_ID_SIZE];
    th_task_spec s;
    th_task_spec_init(&s, "flaky");
    s.retry = thtest_retry(2, 10, 10, 1); /* three attempts, 10 ms apart */
    pool_submit(p, &s, id);
    th_task *t = wait_final(f->e, id);
    assert_int_equal(t->state, TH_TASK_FAILED);
    assert_int_equal(t->attempt, 3);
    assert_non_null(t->error);
    assert_true(thtest_contains(t->error, "boom on call 3 (attempt 3)"));
    th_task_free(t);
    assert_int_equal(atomic_load(&g_calls), 3);
    WAIT_FOR(evrec_count(&f->rec, TH_PEV_TASK_FAILED, NULL, id) == 3);
    assert_int_equal(evrec_count(&f->rec, TH_PEV_TASK_FAILED, "boom on call 1", id), 1);
    assert_int_equal(evrec_count(&f->rec, TH_PEV_TASK_COMPLETED, NULL, NULL), 0);
    th_pool_metrics m;
    assert_int_equal(th_pool_metrics_get(p, &m), 0);
    assert_int_equal(m.failed_tasks, 3);
    assert_int_equal(m.completed_tasks, 0);
}

static void test_permanent_fails_at_once(void **state)
{
    pfx *f = FX;
    th_pool_options o = quiet_options(1);
    th_pool *p = pfx_pool(f, &o);
    pool_register(p, "perm", h_permanent, NULL);
    pool_register(p, "bogus", h_bogus, NULL);
    pool_start(p);

    char id[TH_ID_SIZE], id2[TH_ID_SIZE];
    th_task_spec s;
    th_task_spec_init(&s, "perm");
    s.retry = thtest_retry(5, 10, 10, 1);
    pool_submit(p, &s, id);
    th_task *t = wait_final(f->e, id);
    assert_int_equal(t->state, TH_TASK_FAILED);
    assert_int_equal(t->attempt, 1);
    assert_true(thtest_contains(t->error, "bad input"));
    th_task_free(t);

    /* A return value that is not a TH_HANDLER_* code fails for good too. */
    s.queue = "bogus";
    pool_submit(p, &s, id2);
    t = wait_final(f->e, id2);
    assert_int_equal(t->state, TH_TASK_FAILED);
    assert_int_equal(t->attempt, 1);
    assert_true(thtest_contains(t->error, "returned 42"));
    th_task_free(t);
    assert_int_equal(atomic_load(&g_calls), 2);
}

static void test_unknown_queue_and_registration(void **state)
{
    pfx *f = FX;
    th_pool_options o = quiet_options(1);
    th_pool *p = pfx_pool(f, &o);
    th_error err;

    /* Starting with no handler is refused. */
    memset(&err, 0, sizeof err);
    assert_int_equal(th_pool_start(p, &err), TH_EINVAL);
    assert_string_equal(err.field, "handlers");

    memset(&err, 0, sizeof err);
    assert_int_equal(th_pool_register(p, "bad name!", h_echo, NULL, &err), TH_EINVAL);
    assert_string_equal(err.field, "name");
    assert_int_equal(th_pool_register(p, "", h_echo, NULL, &err), TH_EINVAL);
    assert_int_equal(th_pool_register(p, NULL, h_echo, NULL, &err), TH_EINVAL);
    memset(&err, 0, sizeof err);
    assert_int_equal(th_pool_register(p, "echo", NULL, NULL, &err), TH_EINVAL);
    assert_string_equal(err.field, "fn");
    pool_register(p, "echo", h_echo, NULL);
    assert_int_equal(th_pool_register(p, "echo", h_echo, NULL, &err), TH_ECONFLICT);
    pool_start(p);
    memset(&err, 0, sizeof err);
    assert_int_equal(th_pool_register(p, "late", h_echo, NULL, &err), TH_ESTATE);
    assert_int_equal(th_pool_set_config(p, "k", "v", &err), TH_ESTATE);
    assert_int_equal(th_pool_start(p, &err), TH_ESTATE);

    /* A task of a queue without a handler is not taken; others run. */
    char orphan[TH_ID_SIZE], ok[TH_ID_SIZE];
    th_task_spec s = one_shot("nobody", NULL, 0);
    pool_submit(p, &s, orphan);
    s.queue = "echo";
    pool_submit(p, &s, ok);
    th_task *t = wait_final(f->e, ok);
    assert_int_equal(t->state, TH_TASK_COMPLETED);
    th_task_free(t);
    sleep_ms(50);
    assert_int_equal(task_state(f->e, orphan), TH_TASK_PENDING);
    assert_int_equal(atomic_load(&g_calls), 1);
    /* ... and does not count toward the pool's queue. */
    th_pool_metrics m;
    assert_int_equal(th_pool_metrics_get(p, &m), 0);
    assert_int_equal(m.pending_tasks, 0);
}

static void test_submit_applies_defaults(void **state)
{
    pfx *f = FX;
    th_pool_options o = quiet_options(1);
    o.max_retries = 5;
    o.retry_delay_ms = 1234;
    o.task_timeout_ms = 4567;
    th_pool *p = pfx_pool(f, &o);
    pool_register(p, "other", h_echo, NULL);
    pool_start(p);

    /* Left at th_task_spec_init values: the pool's defaults apply. */
    char id[TH_ID_SIZE];
    th_task_spec s;
    th_task_spec_init(&s, "idle");
    pool_submit(p, &s, id);
    th_task *t = thtest_get(f->e, id);
    assert_int_equal(t->retry.max_retries, 5);
    assert_int_equal(t->retry.initial_delay_ms, 1234);
    assert_true(t->retry.max_delay_ms >= 1234);
    assert_int_equal(t->timeout_ms, 4567);
    th_task_free(t);

    /* Set by the submitter: kept. */
    char id2[TH_ID_SIZE];
    th_task_spec_init(&s, "idle");
    s.timeout_ms = 999;
    s.retry = thtest_retry(1, 7, 70, 2);
    pool_submit(p, &s, id2);
    t = thtest_get(f->e, id2);
    assert_int_equal(t->retry.max_retries, 1);
    assert_int_equal(t->retry.initial_delay_ms, 7);
    assert_int_equal(t->retry.max_delay_ms, 70);
    assert_int_equal(t->timeout_ms, 999);
    th_task_free(t);

    /* A retry delay above the default max delay raises the max delay. */
    th_pool_free(p);
    f->p = NULL;
    o.retry_delay_ms = 600000;
    p = pfx_pool(f, &o);
    pool_register(p, "other", h_echo, NULL);
    th_task_spec_init(&s, "idle");
    pool_submit(p, &s, id);
    t = thtest_get(f->e, id);
    assert_int_equal(t->retry.initial_delay_ms, 600000);
    assert_true(t->retry.max_delay_ms >= 600000);
    th_task_free(t);

    th_error err;
    assert_int_equal(th_pool_submit(p, NULL, id, &err), TH_EINVAL);
}

/* ---- timeouts and cancel --------------------------------------------------------------- */

static void test_cooperative_timeout(void **state)
{
    pfx *f = FX;
    th_pool_options o = quiet_options(1);
    o.timeout_grace_ms = 5000; /* well past the handler's own stop */
    th_pool *p = pfx_pool(f, &o);
    pool_register(p, "coop", h_cooperative, NULL);
    pool_start(p);

    char id[TH_ID_SIZE];
    th_task_spec s = one_shot("coop", NULL, 200);
    pool_submit(p, &s, id);
    th_task *t = wait_final(f->e, id);
    assert_int_equal(t->state, TH_TASK_TIMEOUT);
    assert_int_equal(t->attempt, 1);
    th_task_free(t);
    WAIT_FOR(atomic_load(&g_returned) == 1);
    assert_int_equal(atomic_load(&g_saw_cancel), 1);
    assert_int_equal(atomic_load(&g_remaining), 0);
    WAIT_FOR(evrec_count(&f->rec, TH_PEV_TASK_TIMEOUT, NULL, id) >= 1);

    /* The worker was not abandoned: still one, healthy, and it runs more. */
    assert_int_equal(evrec_count(&f->rec, TH_PEV_WORKER_TERMINATED, NULL, NULL), 0);
    wlist wl = workers_of(p);
    assert_int_equal(wl.n, 1);
    assert_int_equal(wl.w[0].healthy, 1);
    char id2[TH_ID_SIZE];
    th_task_spec s2 = one_shot("coop", NULL, 100);
    pool_submit(p, &s2, id2);
    t = wait_final(f->e, id2);
    assert_int_equal(t->state, TH_TASK_TIMEOUT);
    th_task_free(t);
    WAIT_FOR(atomic_load(&g_returned) == 2);
    assert_int_equal(worker_count(p), 1);
}

static void test_overrun_abandons_worker(void **state)
{
    pfx *f = FX;
    th_pool_options o = quiet_options(1);
    o.timeout_grace_ms = 100;
    th_pool *p = pfx_pool(f, &o);
    pool_register(p, "stuck", h_stuck, NULL);
    pool_register(p, "echo", h_echo, NULL);
    pool_start(p);
    int first = workers_of(p).w[0].id;

    char id[TH_ID_SIZE];
    th_task_spec s = one_shot("stuck", NULL, 100);
    pool_submit(p, &s, id);
    th_task *t = wait_final(f->e, id);
    assert_int_equal(t->state, TH_TASK_TIMEOUT);
    th_task_free(t);

    /* Past timeout + grace the worker is given up on and replaced. */
    WAIT_FOR(evrec_count(&f->rec, TH_PEV_WORKER_TERMINATED, "abandoned", NULL) == 1);
    WAIT_FOR(evrec_count(&f->rec, TH_PEV_WORKER_CREATED, "replacement", NULL) == 1);
    WAIT_FOR(evrec_count(&f->rec, TH_PEV_TASK_TIMEOUT, NULL, id) >= 1);
    assert_int_equal(atomic_load(&g_returned), 0); /* still stuck */
    wlist wl = workers_of(p);
    assert_int_equal(wl.n, 2);
    int unhealthy = 0, fresh = 0;
    for (int i = 0; i < wl.n; i++) {
        if (wl.w[i].id == first) {
            unhealthy++;
            assert_int_equal(wl.w[i].healthy, 0);
            assert_int_equal(wl.w[i].state, TH_WORKER_UNHEALTHY);
        } else {
            fresh++;
            assert_int_equal(wl.w[i].healthy, 1);
        }
    }
    assert_int_equal(unhealthy, 1);
    assert_int_equal(fresh, 1);
    th_pool_metrics m;
    th_pool_metrics_get(p, &m);
    assert_int_equal(m.unhealthy_workers, 1);

    /* The replacement runs tasks. */
    char id2[TH_ID_SIZE];
    th_task_spec s2 = one_shot("echo", "1", 0);
    pool_submit(p, &s2, id2);
    t = wait_final(f->e, id2);
    assert_int_equal(t->state, TH_TASK_COMPLETED);
    th_task_free(t);

    /* Let the stuck handler finish; its late outcome changes nothing. */
    atomic_store(&g_release, 1);
    WAIT_FOR(atomic_load(&g_returned) == 1);
    sleep_ms(20);
    assert_int_equal(task_state(f->e, id), TH_TASK_TIMEOUT);
}

static void test_cancel_reaches_handler(void **state)
{
    pfx *f = FX;
    th_pool_options o = quiet_options(1);
    o.lease_ms = 300; /* heartbeats every 100 ms keep the lease meanwhile */
    th_pool *p = pfx_pool(f, &o);
    pool_register(p, "coop", h_cooperative, NULL);
    pool_start(p);

    char id[TH_ID_SIZE];
    th_task_spec s = one_shot("coop", NULL, 0);
    s.retry = thtest_retry(3, 10, 10, 1); /* a cancel is final anyway */
    pool_submit(p, &s, id);
    WAIT_FOR(atomic_load(&g_entered) == 1);
    assert_int_equal(atomic_load(&g_returned), 0);
    th_error err;
    assert_int_equal(th_engine_cancel(f->e, id, "test cancels", &err), 1);
    th_task *t = wait_final(f->e, id);
    assert_int_equal(t->state, TH_TASK_CANCELLED);
    assert_int_equal(t->attempt, 1);
    th_task_free(t);
    WAIT_FOR(atomic_load(&g_returned) == 1);
    assert_int_equal(atomic_load(&g_saw_cancel), 1);
    assert_int_equal(atomic_load(&g_entered), 1); /* not retried */
    /* The request reaches the handler through the engine's cancel_requested
     * event, without waiting for the next lease heartbeat. */
    WAIT_FOR(evrec_count(&f->rec, TH_PEV_TASK_CANCELLED, NULL, id) == 1);
}

/* ---- graceful shutdown ------------------------------------------------------------------- */

static void shutdown_midway(void **state, int batch, int64_t grace_ms, int hold)
{
    pfx *f = FX;
    char *path = NULL;
    char *uri = thtest_store_uri("sqlite", &path);
    th_engine *e = thtest_engine_opts(uri, NULL, NULL);
    evrec rec;
    evrec_init(&rec);
    th_pool_options o = quiet_options(2);
    o.batch = batch;
    o.timeout_grace_ms = 2000;
    th_error err;
    th_pool *p = th_pool_new(e, &o, &err);
    assert_non_null(p);
    th_pool_subscribe(p, evrec_cb, &rec);
    pool_register(p, "slow", h_slow, NULL);

    enum { N = 24 };
    char ids[N][TH_ID_SIZE];
    for (int i = 0; i < N; i++) {
        th_task_spec s;
        th_task_spec_init(&s, "slow");
        pool_submit(p, &s, ids[i]);
    }
    pool_start(p);
    WAIT_FOR(evrec_count(&rec, TH_PEV_TASK_COMPLETED, NULL, NULL) >= 4);
    if (hold) {
        /* Stop while both workers are inside a handler that outlives the
         * grace period: the stop interrupts them. */
        atomic_store(&g_hold, 1);
        WAIT_FOR(atomic_load(&g_held) == 2);
    } else {
        WAIT_FOR(atomic_load(&g_inflight) > 0);
    }
    assert_int_equal(th_pool_stop(p, grace_ms), 0);
    assert_int_equal(th_pool_stop(p, grace_ms), 0); /* idempotent */
    assert_int_equal(atomic_load(&g_inflight), 0);
    th_pool_free(p);
    th_engine_free(e);
    evrec_destroy(&rec);

    /* Reopen without ticking: exactly what the pool left behind. */
    thtest_clock clk;
    thtest_clock_init(&clk, (int64_t)time(NULL) * 1000);
    e = thtest_engine_opts(uri, &clk, NULL);
    int completed = 0, released = 0, untouched = 0;
    for (int i = 0; i < N; i++) {
        th_task *t = thtest_get(e, ids[i]);
        if (t->state == TH_TASK_COMPLETED) {
            completed++;
            assert_int_equal(t->attempt, 1);
            assert_json_equal(t->result, "{\"slow\":true}");
        } else {
            if (t->state != TH_TASK_PENDING && t->state != TH_TASK_SCHEDULED)
                fail_msg("task %d left %s (attempt %d, error %s)", i, th_task_state_name(t->state),
                         t->attempt, t->error ? t->error : "none");
            if (t->attempt != 0)
                fail_msg("task %d handed back with attempt %d (error %s)", i, t->attempt,
                         t->error ? t->error : "none");
            if (t->started_at)
                released++;
            else
                untouched++;
        }
        th_task_free(t);
    }
    th_engine_free(e);
    thtest_remove_db(path);
    free(path);
    free(uri);
    (void)f;
    assert_true(completed >= 4);
    if (hold)
        assert_int_equal(released, 2); /* the two interrupted handlers */
    assert_true(untouched >= 1);
    assert_int_equal(completed + released + untouched, N);
}

static void test_graceful_shutdown_sqlite(void **state)
{
    shutdown_midway(state, 1, 10, 1);
}

/* With batch 4 and a grace longer than a handler, the tasks of the batch
 * not yet started when th_pool_stop came must go back to the queue too. */
static void test_graceful_shutdown_sqlite_batch(void **state)
{
    shutdown_midway(state, 4, 500, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_event_and_state_names),          T(test_tasks_complete_with_result),
        T(test_progress_and_logs_reach_engine), T(test_retry_then_fail),
        T(test_permanent_fails_at_once),        T(test_unknown_queue_and_registration),
        T(test_submit_applies_defaults),        T(test_cooperative_timeout),
        T(test_overrun_abandons_worker),        T(test_cancel_reaches_handler),
        T(test_graceful_shutdown_sqlite),       T(test_graceful_shutdown_sqlite_batch),
    };
    return cmocka_run_group_tests_name("pool", tests, NULL, NULL);
}
