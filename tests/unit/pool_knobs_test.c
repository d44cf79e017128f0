/*
 * Worker pool configuration knobs, thread mode, against a real engine: each
 * knob has a test that shows its effect.
 *
 *   - invalid option values are refused with err.field naming the knob;
 *     th_pool_options_init gives the documented defaults;
 *   - min_workers: the workers at start (0 works with autoscaling);
 *   - max_workers: autoscaling under sustained load never goes past it;
 *   - autoscale up (busy workers + waiting tasks -> scaledUp, more workers)
 *     and down (idle -> scaledDown, back to min); autoscale = 0 and a long
 *     scale_up_cooldown_ms keep the pool at its size;
 *   - worker_idle_timeout_ms: idle workers above min exit ("idle timeout");
 *   - max_queue / backpressure_threshold: TH_EBUSY at max_queue, the
 *     backpressure event from the threshold on;
 *   - recycle_after: a worker leaves "recycled" after N tasks and is
 *     replaced one for one;
 *   - batch: a worker claims several tasks at once; with a short lease, the
 *     batch-mates a worker holds keep their leases while it runs a long
 *     handler, and a finished one keeps it until its batched completion;
 *   - metrics_interval_ms: metricsUpdated events arrive;
 *   - th_pool_metrics_get: completed / failed counts, worker figures,
 *     pending / running tasks.
 *
 * Autoscaling samples once a second, so the scaling tests take a few seconds;
 * they wait for events with a bounded poll, never assert on speed.
 */
#include "pool_helpers.h"

static atomic_int g_calls;
static atomic_int g_entered;
static atomic_int g_release;

static int setup(void **state)
{
    atomic_store(&g_calls, 0);
    atomic_store(&g_entered, 0);
    atomic_store(&g_release, 0);
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

static int h_quick(th_ctx *ctx, void *ud)
{
    (void)ud;
    atomic_fetch_add(&g_calls, 1);
    th_ctx_set_result(ctx, "1");
    return TH_HANDLER_OK;
}

static int h_fail(th_ctx *ctx, void *ud)
{
    (void)ud;
    atomic_fetch_add(&g_calls, 1);
    th_ctx_set_error(ctx, "no");
    return TH_HANDLER_PERMANENT;
}

/* Runs until the test releases it (or the pool stops it). */
static int h_block(th_ctx *ctx, void *ud)
{
    (void)ud;
    atomic_fetch_add(&g_entered, 1);
    int64_t until = mono_ms() + 2 * WAIT_LIMIT_MS;
    while (!atomic_load(&g_release) && !th_ctx_cancelled(ctx) && mono_ms() < until)
        sleep_ms(2);
    atomic_fetch_add(&g_calls, 1);
    return TH_HANDLER_OK;
}

/* Submits n tasks to `queue` through the pool (no retries). */
static void submit_n(th_pool *p, const char *queue, int n, char (*ids)[TH_ID_SIZE])
{
    for (int i = 0; i < n; i++) {
        char id[TH_ID_SIZE];
        th_task_spec s = one_shot(queue, NULL, 0);
        pool_submit(p, &s, ids ? ids[i] : id);
    }
}

static void wait_all_final(th_engine *e, char (*ids)[TH_ID_SIZE], int n, th_task_state want)
{
    for (int i = 0; i < n; i++) {
        th_task *t = wait_final(e, ids[i]);
        assert_int_equal(t->state, want);
        th_task_free(t);
    }
}

/* Options for the scaling tests: autoscale on, short cooldowns. */
static th_pool_options scaling_options(int min, int max)
{
    th_pool_options o = quiet_options(min);
    o.max_workers = max;
    o.autoscale = 1;
    o.scale_up_threshold = 0.5;
    o.scale_down_threshold = 0.3;
    o.scale_up_cooldown_ms = 0;
    o.scale_down_cooldown_ms = 100;
    return o;
}

/* ---- options ----------------------------------------------------------------- */

static void test_defaults(void **state)
{
    (void)state;
    th_pool_options o;
    memset(&o, 0x5a, sizeof o);
    th_pool_options_init(&o);
    assert_int_equal(o.mode, TH_POOL_THREADS);
    assert_int_equal(o.min_workers, 2);
    assert_int_equal(o.max_workers, 8);
    assert_int_equal(o.max_queue, 1000);
    assert_true(o.backpressure_threshold == 0.9);
    assert_int_equal(o.task_timeout_ms, 30000);
    assert_int_equal(o.timeout_grace_ms, 5000);
    assert_int_equal(o.health_check_interval_ms, 30000);
    assert_int_equal(o.worker_idle_timeout_ms, 300000);
    assert_int_equal(o.worker_memory_limit, (size_t)512 << 20);
    assert_int_equal(o.max_retries, 3);
    assert_int_equal(o.retry_delay_ms, 1000);
    assert_int_equal(o.autoscale, 1);
    assert_true(o.scale_up_threshold == 0.7);
    assert_true(o.scale_down_threshold == 0.3);
    assert_int_equal(o.scale_up_cooldown_ms, 30000);
    assert_int_equal(o.scale_down_cooldown_ms, 60000);
    assert_int_equal(o.recycle_after, 100);
    assert_int_equal(o.lease_ms, 30000);
    assert_int_equal(o.metrics_interval_ms, 5000);
    assert_int_equal(o.batch, 1);
}

typedef struct bad_case {
    const char *field; /* expected err.field */
    void (*apply)(th_pool_options *o);
} bad_case;

static void bad_min(th_pool_options *o)
{
    o->min_workers = -1;
}
static void bad_max(th_pool_options *o)
{
    o->min_workers = 4;
    o->max_workers = 2;
}
static void bad_max_zero(th_pool_options *o)
{
    o->min_workers = 0;
    o->max_workers = 0;
}
static void bad_queue(th_pool_options *o)
{
    o->max_queue = 0;
}
static void bad_bp(th_pool_options *o)
{
    o->backpressure_threshold = 0;
}
static void bad_bp_high(th_pool_options *o)
{
    o->backpressure_threshold = 1.5;
}
static void bad_timeout(th_pool_options *o)
{
    o->task_timeout_ms = 0;
}
static void bad_grace(th_pool_options *o)
{
    o->timeout_grace_ms = -1;
}
static void bad_health(th_pool_options *o)
{
    o->health_check_interval_ms = 0;
}
static void bad_idle(th_pool_options *o)
{
    o->worker_idle_timeout_ms = 0;
}
static void bad_lease(th_pool_options *o)
{
    o->lease_ms = 10;
}
static void bad_batch(th_pool_options *o)
{
    o->batch = 0;
}
static void bad_batch_big(th_pool_options *o)
{
    o->batch = 65;
}
static void bad_scale(th_pool_options *o)
{
    o->scale_up_threshold = 0.3;
    o->scale_down_threshold = 0.7;
}
static void bad_memory(th_pool_options *o)
{
    o->worker_memory_limit = 4096;
}
static void bad_recycle(th_pool_options *o)
{
    o->recycle_after = -1;
}
static void bad_mode(th_pool_options *o)
{
    o->mode = (th_pool_mode)7;
}
static void bad_retries(th_pool_options *o)
{
    o->max_retries = -1;
}
static void bad_delay(th_pool_options *o)
{
    o->retry_delay_ms = -1;
}
static void bad_up_cooldown(th_pool_options *o)
{
    o->scale_up_cooldown_ms = -1;
}
static void bad_down_cooldown(th_pool_options *o)
{
    o->scale_down_cooldown_ms = -1;
}
static void bad_metrics(th_pool_options *o)
{
    o->metrics_interval_ms = 0;
}

static void test_invalid_options_refused(void **state)
{
    pfx *f = FX;
    static const bad_case cases[] = {
        {"min_workers", bad_min},
        {"max_workers", bad_max},
        {"max_workers", bad_max_zero},
        {"max_queue", bad_queue},
        {"backpressure_threshold", bad_bp},
        {"backpressure_threshold", bad_bp_high},
        {"task_timeout_ms", bad_timeout},
        {"timeout_grace_ms", bad_grace},
        {"health_check_interval_ms", bad_health},
        {"worker_idle_timeout_ms", bad_idle},
        {"lease_ms", bad_lease},
        {"batch", bad_batch},
        {"batch", bad_batch_big},
        {"scale_*_threshold", bad_scale},
        {"worker_memory_limit", bad_memory},
        {"recycle_after", bad_recycle},
        {"mode", bad_mode},
        {"max_retries", bad_retries},
        {"retry_delay_ms", bad_delay},
        {"scale_up_cooldown_ms", bad_up_cooldown},
        {"scale_down_cooldown_ms", bad_down_cooldown},
        {"metrics_interval_ms", bad_metrics},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        th_pool_options o;
        th_pool_options_init(&o);
        cases[i].apply(&o);
        th_error err;
        memset(&err, 0, sizeof err);
        th_pool *p = th_pool_new(f->e, &o, &err);
        if (p) {
            th_pool_free(p);
            fail_msg("case %zu (%s): bad options accepted", i, cases[i].field);
        }
        assert_int_equal(err.code, TH_EINVAL);
        if (strcmp(cases[i].field, "scale_*_threshold") == 0) {
            if (strcmp(err.field, "scale_up_threshold") != 0 &&
                strcmp(err.field, "scale_down_threshold") != 0)
                fail_msg("case %zu: field '%s' names no scale threshold", i, err.field);
        } else if (strcmp(err.field, cases[i].field) != 0) {
            fail_msg("case %zu: field '%s', expected '%s' (%s)", i, err.field, cases[i].field,
                     err.message);
        }
        assert_true(err.message[0] != '\0');
    }

    /* The defaults, NULL options and the edges of each range are accepted. */
    th_error err;
    th_pool *p = th_pool_new(f->e, NULL, &err);
    assert_non_null(p);
    th_pool_free(p);
    th_pool_options o;
    th_pool_options_init(&o);
    o.min_workers = 0;
    o.max_workers = 1;
    o.max_queue = 1;
    o.backpressure_threshold = 1;
    o.lease_ms = 100;
    o.batch = 64;
    o.recycle_after = 0;
    o.timeout_grace_ms = 0;
    o.worker_memory_limit = (size_t)1 << 20;
    o.mode = TH_POOL_PROCESSES;
    p = th_pool_new(f->e, &o, &err);
    assert_non_null(p);
    th_pool_free(p);
    memset(&err, 0, sizeof err);
    assert_null(th_pool_new(NULL, &o, &err));
    assert_int_equal(err.code, TH_EINVAL);
    assert_string_equal(err.field, "engine");
}

/* ---- worker counts and scaling ------------------------------------------------------ */

static void test_min_workers(void **state)
{
    pfx *f = FX;
    th_pool_options o = scaling_options(3, 5);
    o.scale_up_cooldown_ms = 3600000;
    o.scale_down_cooldown_ms = 3600000;
    th_pool *p = pfx_pool(f, &o);
    pool_register(p, "quick", h_quick, NULL);
    assert_int_equal(worker_count(p), 0); /* none before start */
    pool_start(p);
    assert_int_equal(worker_count(p), 3);
    assert_int_equal(evrec_count(&f->rec, TH_PEV_WORKER_CREATED, "start", NULL), 3);
    wlist wl = workers_of(p);
    for (int i = 0; i < wl.n; i++) {
        assert_true(wl.w[i].id > 0);
        assert_int_equal(wl.w[i].healthy, 1);
        assert_int_equal(wl.w[i].current_task[0], '\0');
    }
    th_pool_metrics m;
    WAIT_FOR(th_pool_metrics_get(p, &m) == 0 && m.idle_workers == 3);
    assert_int_equal(m.total_workers, 3);
    assert_int_equal(m.active_workers, 0);
}

static void test_min_workers_zero_scales_from_nothing(void **state)
{
    pfx *f = FX;
    th_pool_options o = scaling_options(0, 2);
    th_pool *p = pfx_pool(f, &o);
    pool_register(p, "quick", h_quick, NULL);
    pool_start(p);
    assert_int_equal(worker_count(p), 0);
    char ids[1][TH_ID_SIZE];
    submit_n(p, "quick", 1, ids);
    wait_all_final(f->e, ids, 1, TH_TASK_COMPLETED);
    assert_true(evrec_count(&f->rec, TH_PEV_SCALED_UP, NULL, NULL) >= 1);
}

static void test_max_workers_caps_autoscaling(void **state)
{
    pfx *f = FX;
    th_pool_options o = scaling_options(1, 3);
    th_pool *p = pfx_pool(f, &o);
    pool_register(p, "block", h_block, NULL);
    pool_start(p);
    char ids[12][TH_ID_SIZE];
    submit_n(p, "block", 12, ids);

    int most = 0;
    int64_t until = 0;
    int64_t give_up = mono_ms() + WAIT_LIMIT_MS;
    /* Watch until the pool reached max and then for three more scaling
     * samples of full load: it must never go past max. */
    for (;;) {
        int n = worker_count(p);
        if (n > most)
            most = n;
        assert_true(n <= 3);
        if (n == 3 && !until)
            until = mono_ms() + 3200;
        if (until && mono_ms() > until)
            break;
        if (!until && mono_ms() > give_up)
            fail_msg("the pool never reached max_workers (3); it has %d", n);
        sleep_ms(5);
    }
    assert_int_equal(most, 3);
    assert_int_equal(atomic_load(&g_entered), 3);
    assert_int_equal(evrec_count(&f->rec, TH_PEV_SCALED_UP, NULL, NULL), 2);
    pthread_mutex_lock(&f->rec.mu);
    for (size_t i = 0; i < f->rec.n; i++)
        if (f->rec.ev[i].type == TH_PEV_SCALED_UP)
            assert_true(f->rec.ev[i].value <= 3);
    pthread_mutex_unlock(&f->rec.mu);
    th_pool_metrics m;
    th_pool_metrics_get(p, &m);
    assert_int_equal(m.total_workers, 3);
    assert_int_equal(m.active_workers, 3);
    assert_int_equal(m.pending_tasks, 9);
    assert_int_equal(m.running_tasks, 3);

    atomic_store(&g_release, 1);
    wait_all_final(f->e, ids, 12, TH_TASK_COMPLETED);
}

static void test_autoscale_up_and_down(void **state)
{
    pfx *f = FX;
    th_pool_options o = scaling_options(1, 2);
    th_pool *p = pfx_pool(f, &o);
    pool_register(p, "block", h_block, NULL);
    pool_start(p);
    char ids[4][TH_ID_SIZE];
    submit_n(p, "block", 4, ids);

    /* Busy and tasks waiting: one more worker, which takes a task. */
    WAIT_FOR(evrec_count(&f->rec, TH_PEV_SCALED_UP, NULL, NULL) == 1);
    rec_event ev;
    assert_true(evrec_find(&f->rec, TH_PEV_SCALED_UP, NULL, &ev));
    assert_int_equal(ev.value, 2);
    assert_int_equal(evrec_count(&f->rec, TH_PEV_WORKER_CREATED, "scale up", NULL), 1);
    assert_int_equal(worker_count(p), 2);
    WAIT_FOR(atomic_load(&g_entered) == 2);

    /* Work done, workers idle: back down to min. */
    atomic_store(&g_release, 1);
    wait_all_final(f->e, ids, 4, TH_TASK_COMPLETED);
    WAIT_FOR(evrec_count(&f->rec, TH_PEV_SCALED_DOWN, NULL, NULL) == 1);
    assert_true(evrec_find(&f->rec, TH_PEV_SCALED_DOWN, NULL, &ev));
    assert_int_equal(ev.value, 1);
    WAIT_FOR(worker_count(p) == 1);
    WAIT_FOR(evrec_count(&f->rec, TH_PEV_WORKER_EXITED, NULL, NULL) == 1);
    /* Never below min: a second scale-down does not come. */
    sleep_ms(1200);
    assert_int_equal(evrec_count(&f->rec, TH_PEV_SCALED_DOWN, NULL, NULL), 1);
    assert_int_equal(worker_count(p), 1);
}

static void test_no_scaling_when_off_or_cooling_down(void **state)
{
    /* Two pools under the same load side by side: one with autoscale off,
     * one with a long scale-up cooldown. Neither grows. (With cooldown 0 the
     * same load scales up: test_autoscale_up_and_down.) */
    pfx *f = FX;
    pfx *g = pfx_new("memory");
    th_pool_options off = scaling_options(1, 4);
    off.autoscale = 0;
    th_pool_options cool = scaling_options(1, 4);
    cool.scale_up_cooldown_ms = 3600000;
    th_pool *p = pfx_pool(f, &off);
    th_pool *q = pfx_pool(g, &cool);
    pool_register(p, "block", h_block, NULL);
    pool_register(q, "block", h_block, NULL);
    pool_start(p);
    pool_start(q);
    submit_n(p, "block", 4, NULL);
    submit_n(q, "block", 4, NULL);
    WAIT_FOR(atomic_load(&g_entered) == 2);
    int64_t until = mono_ms() + 2500; /* two scaling samples at least */
    while (mono_ms() < until) {
        assert_int_equal(worker_count(p), 1);
        assert_int_equal(worker_count(q), 1);
        sleep_ms(10);
    }
    assert_int_equal(evrec_count(&f->rec, TH_PEV_SCALED_UP, NULL, NULL), 0);
    assert_int_equal(evrec_count(&g->rec, TH_PEV_SCALED_UP, NULL, NULL), 0);
    assert_int_equal(atomic_load(&g_entered), 2);
    atomic_store(&g_release, 1);
    pfx_free(g);
}

static void test_worker_idle_timeout(void **state)
{
    pfx *f = FX;
    th_pool_options o = scaling_options(1, 2);
    o.scale_down_cooldown_ms = 3600000; /* only the idle timeout can shrink it */
    o.worker_idle_timeout_ms = 200;
    th_pool *p = pfx_pool(f, &o);
    pool_register(p, "block", h_block, NULL);
    pool_start(p);
    char ids[3][TH_ID_SIZE];
    submit_n(p, "block", 3, ids);
    WAIT_FOR(worker_count(p) == 2 && atomic_load(&g_entered) == 2);
    atomic_store(&g_release, 1);
    wait_all_final(f->e, ids, 3, TH_TASK_COMPLETED);

    WAIT_FOR(evrec_count(&f->rec, TH_PEV_WORKER_EXITED, "idle timeout", NULL) == 1);
    WAIT_FOR(worker_count(p) == 1);
    /* The last worker is the minimum: it stays, however long it idles. */
    sleep_ms(600);
    assert_int_equal(worker_count(p), 1);
    assert_int_equal(evrec_count(&f->rec, TH_PEV_WORKER_EXITED, NULL, NULL), 1);
    assert_int_equal(evrec_count(&f->rec, TH_PEV_SCALED_DOWN, NULL, NULL), 0);
    /* ... and still works. */
    char id[1][TH_ID_SIZE];
    submit_n(p, "block", 1, id);
    wait_all_final(f->e, id, 1, TH_TASK_COMPLETED);
}

/* ---- queue limit ------------------------------------------------------------------------ */

static void test_max_queue_and_backpressure(void **state)
{
    pfx *f = FX;
    th_pool_options o = quiet_options(1);
    o.max_queue = 4;
    o.backpressure_threshold = 0.5; /* from 2 waiting tasks on */
    th_pool *p = pfx_pool(f, &o);
    pool_register(p, "block", h_block, NULL);
    pool_start(p);

    /* One task occupies the only worker; it is running, not waiting. */
    char ids[5][TH_ID_SIZE];
    th_task_spec s = one_shot("block", NULL, 0);
    pool_submit(p, &s, ids[0]);
    WAIT_FOR(atomic_load(&g_entered) == 1);
    /* Tasks of queues the pool does not serve do not count. */
    th_task_spec other = one_shot("elsewhere", NULL, 0);
    for (int i = 0; i < 3; i++) {
        char oid[TH_ID_SIZE];
        pool_submit(p, &other, oid);
    }
    assert_int_equal(evrec_count(&f->rec, TH_PEV_BACKPRESSURE, NULL, NULL), 0);

    pool_submit(p, &s, ids[1]); /* 1 waiting */
    assert_int_equal(evrec_count(&f->rec, TH_PEV_BACKPRESSURE, NULL, NULL), 0);
    pool_submit(p, &s, ids[2]); /* 2 waiting: threshold */
    assert_int_equal(evrec_count(&f->rec, TH_PEV_BACKPRESSURE, NULL, NULL), 1);
    rec_event ev;
    assert_true(evrec_find(&f->rec, TH_PEV_BACKPRESSURE, NULL, &ev));
    assert_int_equal(ev.value, 2);
    pool_submit(p, &s, ids[3]);
    pool_submit(p, &s, ids[4]); /* 4 waiting: full */

    char extra[TH_ID_SIZE];
    th_error err;
    memset(&err, 0, sizeof err);
    assert_int_equal(th_pool_submit(p, &s, extra, &err), TH_EBUSY);
    assert_int_equal(err.code, TH_EBUSY);
    assert_true(thtest_contains(err.message, "max_queue"));
    assert_int_equal(th_pool_submit(p, &s, extra, &err), TH_EBUSY);
    assert_int_equal(count_state(f->e, TH_TASK_PENDING), 3 + 4); /* nothing was added */
    assert_int_equal(evrec_count(&f->rec, TH_PEV_TASK_SUBMITTED, NULL, NULL), 3 + 5);
    assert_int_equal(evrec_count(&f->rec, TH_PEV_BACKPRESSURE, "queue full", NULL), 2);
    assert_string_equal(th_pool_event_name(TH_PEV_BACKPRESSURE), "backpressure");

    /* Once the queue drains, submissions are accepted again. */
    atomic_store(&g_release, 1);
    wait_all_final(f->e, ids, 5, TH_TASK_COMPLETED);
    pool_submit(p, &s, extra);
    th_task *t = wait_final(f->e, extra);
    assert_int_equal(t->state, TH_TASK_COMPLETED);
    th_task_free(t);
}

/* ---- recycling, batching ------------------------------------------------------------------ */

static void test_recycle_after(void **state)
{
    pfx *f = FX;
    th_pool_options o = quiet_options(1);
    o.recycle_after = 3;
    th_pool *p = pfx_pool(f, &o);
    pool_register(p, "quick", h_quick, NULL);
    pool_start(p);
    int first = workers_of(p).w[0].id;

    /* One at a time, so the order of workers is the order of tasks. */
    int worker_of[7];
    for (int i = 0; i < 7; i++) {
        char ids[1][TH_ID_SIZE];
        submit_n(p, "quick", 1, ids);
        wait_all_final(f->e, ids, 1, TH_TASK_COMPLETED);
        rec_event ev;
        WAIT_FOR(evrec_find(&f->rec, TH_PEV_TASK_ASSIGNED, ids[0], &ev));
        worker_of[i] = ev.worker;
    }
    assert_int_equal(worker_of[0], first);
    assert_int_equal(worker_of[1], first);
    assert_int_equal(worker_of[2], first);
    assert_int_not_equal(worker_of[3], first);
    assert_int_equal(worker_of[4], worker_of[3]);
    assert_int_equal(worker_of[5], worker_of[3]);
    assert_int_not_equal(worker_of[6], worker_of[3]);
    assert_int_not_equal(worker_of[6], first);

    WAIT_FOR(evrec_count(&f->rec, TH_PEV_WORKER_EXITED, "recycled", NULL) == 2);
    assert_int_equal(evrec_count(&f->rec, TH_PEV_WORKER_CREATED, "recycle", NULL), 2);
    WAIT_FOR(worker_count(p) == 1); /* replaced one for one */
    wlist wl = workers_of(p);
    assert_int_equal(wl.w[0].id, worker_of[6]);
    assert_int_equal(wl.w[0].tasks_completed, 1);
}

static void test_batch_claims_several(void **state)
{
    pfx *f = FX;
    /* batch 1 for comparison: one task running at a time. */
    pfx *g = pfx_new("memory");
    th_pool_options one = quiet_options(1);
    th_pool *q = pfx_pool(g, &one);
    pool_register(q, "block", h_block, NULL);
    submit_n(q, "block", 6, NULL);
    pool_start(q);
    WAIT_FOR(atomic_load(&g_entered) == 1);
    assert_int_equal(count_state(g->e, TH_TASK_RUNNING), 1);
    assert_int_equal(count_state(g->e, TH_TASK_PENDING), 5);
    th_pool_free(q);
    g->p = NULL;
    pfx_free(g);

    /* batch 4: the worker takes four in one claim, runs them one by one. */
    atomic_store(&g_entered, 0);
    atomic_store(&g_release, 0);
    th_pool_options o = quiet_options(1);
    o.batch = 4;
    th_pool *p = pfx_pool(f, &o);
    pool_register(p, "block", h_block, NULL);
    char ids[6][TH_ID_SIZE];
    submit_n(p, "block", 6, ids);
    pool_start(p);
    WAIT_FOR(atomic_load(&g_entered) == 1);
    assert_int_equal(count_state(f->e, TH_TASK_RUNNING), 4);
    assert_int_equal(count_state(f->e, TH_TASK_PENDING), 2);
    th_task *first = thtest_get(f->e, ids[0]);
    assert_non_null(first->worker);
    for (int i = 1; i < 4; i++) {
        th_task *t = thtest_get(f->e, ids[i]);
        assert_int_equal(t->state, TH_TASK_RUNNING);
        assert_non_null(t->worker);
        assert_string_equal(t->worker, first->worker); /* one claim, one worker */
        th_task_free(t);
    }
    th_task_free(first);
    atomic_store(&g_release, 1);
    wait_all_final(f->e, ids, 6, TH_TASK_COMPLETED);
    assert_int_equal(atomic_load(&g_calls), 6 + 1);
}

/* ---- metrics --------------------------------------------------------------------------------- */

static void test_metrics_interval(void **state)
{
    pfx *f = FX;
    th_pool_options o = quiet_options(1);
    o.metrics_interval_ms = 50;
    th_pool *p = pfx_pool(f, &o);
    pool_register(p, "quick", h_quick, NULL);
    pool_start(p);
    /* With the default interval (5 s) the third would take 15 s, past the
     * wait limit. */
    WAIT_FOR(evrec_count(&f->rec, TH_PEV_METRICS_UPDATED, NULL, NULL) >= 3);
    assert_string_equal(th_pool_event_name(TH_PEV_METRICS_UPDATED), "metricsUpdated");
}

static void test_metrics_figures(void **state)
{
    pfx *f = FX;
    th_pool_options o = quiet_options(2);
    th_pool *p = pfx_pool(f, &o);
    pool_register(p, "quick", h_quick, NULL);
    pool_register(p, "fail", h_fail, NULL);
    pool_register(p, "block", h_block, NULL);
    pool_start(p);

    th_pool_metrics m;
    assert_int_equal(th_pool_metrics_get(p, &m), 0);
    assert_int_equal(m.total_workers, 2);
    assert_int_equal(m.completed_tasks, 0);
    assert_int_equal(m.failed_tasks, 0);

    char ok[3][TH_ID_SIZE], bad[2][TH_ID_SIZE];
    submit_n(p, "quick", 3, ok);
    submit_n(p, "fail", 2, bad);
    wait_all_final(f->e, ok, 3, TH_TASK_COMPLETED);
    wait_all_final(f->e, bad, 2, TH_TASK_FAILED);
    WAIT_FOR(th_pool_metrics_get(p, &m) == 0 && m.completed_tasks + m.failed_tasks == 5 &&
             m.idle_workers == 2);
    assert_int_equal(m.completed_tasks, 3);
    assert_int_equal(m.failed_tasks, 2);
    assert_int_equal(m.total_workers, 2);
    assert_int_equal(m.active_workers, 0);
    assert_int_equal(m.unhealthy_workers, 0);
    assert_int_equal(m.pending_tasks, 0);
    assert_int_equal(m.running_tasks, 0);
    assert_true(m.avg_task_duration_ms >= 0);
    assert_true(m.throughput_per_s > 0);
    wlist wl = workers_of(p);
    uint64_t done = 0, failed = 0;
    for (int i = 0; i < wl.n; i++) {
        done += wl.w[i].tasks_completed;
        failed += wl.w[i].tasks_failed;
    }
    assert_int_equal(done, 3);
    assert_int_equal(failed, 2);

    /* Both workers blocked, one task waiting. */
    char blk[3][TH_ID_SIZE];
    submit_n(p, "block", 3, blk);
    WAIT_FOR(atomic_load(&g_entered) == 2);
    WAIT_FOR(th_pool_metrics_get(p, &m) == 0 && m.active_workers == 2);
    assert_int_equal(m.idle_workers, 0);
    assert_int_equal(m.running_tasks, 2);
    assert_int_equal(m.pending_tasks, 1);
    atomic_store(&g_release, 1);
    wait_all_final(f->e, blk, 3, TH_TASK_COMPLETED);
    WAIT_FOR(th_pool_metrics_get(p, &m) == 0 && m.completed_tasks == 6);
}

/* Runs about a second, then completes. */
static int h_second(th_ctx *ctx, void *ud)
{
    (void)ud;
    sleep_ms(1000);
    th_ctx_set_result(ctx, "\"slow\"");
    return TH_HANDLER_OK;
}

/* A batch of a quick and a one-second task with a 300 ms lease: whatever the
 * order, both complete on their first attempt (the pool keeps the leases of
 * the batch-mates it holds alive). */
static void batch_with_short_lease(pfx *f, int slow_first)
{
    th_pool_options o = quiet_options(1);
    o.batch = 2;
    o.lease_ms = 300;
    th_pool *p = pfx_pool(f, &o);
    pool_register(p, "quick", h_quick, NULL);
    pool_register(p, "slow", h_second, NULL);
    char ids[2][TH_ID_SIZE];
    th_task_spec a = one_shot(slow_first ? "slow" : "quick", NULL, 0);
    th_task_spec b = one_shot(slow_first ? "quick" : "slow", NULL, 0);
    pool_submit(p, &a, ids[0]);
    pool_submit(p, &b, ids[1]);
    pool_start(p);
    for (int i = 0; i < 2; i++) {
        th_task *t = wait_final(f->e, ids[i]);
        if (t->state != TH_TASK_COMPLETED || t->attempt != 1)
            fail_msg("task %d (%s) ended %s after %d attempt(s): %s", i,
                     i == slow_first ? "quick" : "slow", th_task_state_name(t->state), t->attempt,
                     t->error ? t->error : "-");
        th_task_free(t);
    }
    assert_int_equal(atomic_load(&g_calls), 1);
}

static void test_batch_mate_waiting_keeps_lease(void **state)
{
    batch_with_short_lease(FX, 1);
}

static void test_batch_deferred_completion_keeps_lease(void **state)
{
    batch_with_short_lease(FX, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_defaults),
        T(test_invalid_options_refused),
        T(test_min_workers),
        T(test_min_workers_zero_scales_from_nothing),
        T(test_max_workers_caps_autoscaling),
        T(test_autoscale_up_and_down),
        T(test_no_scaling_when_off_or_cooling_down),
        T(test_worker_idle_timeout),
        T(test_max_queue_and_backpressure),
        T(test_recycle_after),
        T(test_batch_claims_several),
        T(test_batch_mate_waiting_keeps_lease),
        T(test_batch_deferred_completion_keeps_lease),
        T(test_metrics_interval),
        T(test_metrics_figures),
    };
    return cmocka_run_group_tests_name("pool_knobs", tests, NULL, NULL);
}
