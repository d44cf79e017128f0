/*
 * Engine wake-up tests with REAL engines (system clock, timer thread), run
 * against every store ("memory" and "sqlite"): a claim blocked waiting for
 * work returns the task a submit makes ready, a delayed task is handed to a
 * blocked claim by the timer thread, several waiters get distinct tasks, and
 * th_engine_free wakes a blocked claim with TH_ECLOSED.
 *
 * Assertions are on what a claim returns, never on how long it took; the
 * waits are long (10-20 s) so a missing wake-up fails instead of hanging.
 */
#include "thtest.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* A real engine over a fresh store of the current kind. */
typedef struct rfx {
    char *uri;
    char *path;
    th_engine *e;
} rfx;

static int rfx_setup(void **state)
{
    rfx *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    f->uri = thtest_store_uri(thtest_store_kind(), &f->path);
    f->e = thtest_engine_opts(f->uri, NULL, NULL); /* manual_tick 0, system clock */
    *state = f;
    return 0;
}

static int rfx_teardown(void **state)
{
    rfx *f = *state;
    th_engine_free(f->e);
    thtest_remove_db(f->path);
    free(f->path);
    free(f->uri);
    free(f);
    return 0;
}

#define RFX(state) ((rfx *)*(state))
#define T(fn) cmocka_unit_test_setup_teardown(fn, rfx_setup, rfx_teardown)

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* A claim running on its own thread. */
typedef struct waiter {
    th_engine *e;
    const char *queue;
    int64_t wait_ms;
    atomic_int entered; /* set just before calling th_engine_claim */
    int rc;
    th_task *task;
    pthread_t thread;
} waiter;

static void *waiter_main(void *arg)
{
    waiter *w = arg;
    const char *qs[1] = {w->queue};
    th_claim_options o;
    memset(&o, 0, sizeof o);
    o.queues = qs;
    o.nqueues = 1;
    o.max_tasks = 1;
    o.wait_ms = w->wait_ms;
    o.lease_ms = 60000;
    th_error err;
    memset(&err, 0, sizeof err);
    atomic_store(&w->entered, 1);
    w->rc = th_engine_claim(w->e, &o, &w->task, &err);
    return NULL;
}

static void waiter_start(waiter *w, th_engine *e, const char *queue, int64_t wait_ms)
{
    memset(w, 0, sizeof *w);
    w->e = e;
    w->queue = queue;
    w->wait_ms = wait_ms;
    atomic_init(&w->entered, 0);
    assert_int_equal(pthread_create(&w->thread, NULL, waiter_main, w), 0);
    while (!atomic_load(&w->entered))
        sleep_ms(1);
    sleep_ms(100); /* let it get into the wait (not needed for correctness) */
}

static void test_blocked_claim_wakes_on_submit(void **state)
{
    rfx *f = RFX(state);
    waiter w;
    waiter_start(&w, f->e, "wake", 10000);
    char id[TH_ID_SIZE];
    thtest_submit_simple(f->e, "wake", "{\"hello\": 1}", id);
    pthread_join(w.thread, NULL);
    if (w.rc != 1)
        fail_msg("blocked claim returned %d (%s), expected the submitted task", w.rc,
                 w.rc < 0 ? th_errname(w.rc) : "count");
    assert_string_equal(w.task->id, id);
    assert_int_equal(w.task->state, TH_TASK_RUNNING);
    th_error err;
    assert_int_equal(th_engine_complete(f->e, id, w.task->lease, NULL, &err), 0);
    th_task_free(w.task);
}

static void test_blocked_claim_ignores_other_queues(void **state)
{
    rfx *f = RFX(state);
    waiter w;
    waiter_start(&w, f->e, "mine", 10000);
    char other[TH_ID_SIZE], mine[TH_ID_SIZE];
    thtest_submit_simple(f->e, "theirs", NULL, other);
    sleep_ms(50);
    thtest_submit_simple(f->e, "mine", NULL, mine);
    pthread_join(w.thread, NULL);
    assert_int_equal(w.rc, 1);
    assert_string_equal(w.task->id, mine);
    th_task_free(w.task);
    thtest_assert_state(f->e, other, TH_TASK_PENDING);
}

static void test_delayed_task_reaches_blocked_claim(void **state)
{
    rfx *f = RFX(state);
    char id[TH_ID_SIZE];
    th_task_spec spec;
    th_task_spec_init(&spec, "later");
    spec.delay_ms = 50;
    thtest_submit(f->e, &spec, id);
    thtest_assert_state(f->e, id, TH_TASK_SCHEDULED);

    th_claim_options o;
    memset(&o, 0, sizeof o);
    const char *qs[1] = {"later"};
    o.queues = qs;
    o.nqueues = 1;
    o.max_tasks = 1;
    o.wait_ms = 10000;
    th_task *t = NULL;
    th_error err;
    memset(&err, 0, sizeof err);
    int rc = th_engine_claim(f->e, &o, &t, &err);
    if (rc != 1)
        fail_msg("claim of a delayed task returned %d (%s): %s", rc,
                 rc < 0 ? th_errname(rc) : "count", err.message);
    assert_string_equal(t->id, id);
    th_task_free(t);
}

static void test_two_waiters_get_distinct_tasks(void **state)
{
    rfx *f = RFX(state);
    waiter w[2];
    waiter_start(&w[0], f->e, "pair", 10000);
    waiter_start(&w[1], f->e, "pair", 10000);
    char a[TH_ID_SIZE], b[TH_ID_SIZE];
    thtest_submit_simple(f->e, "pair", NULL, a);
    thtest_submit_simple(f->e, "pair", NULL, b);
    pthread_join(w[0].thread, NULL);
    pthread_join(w[1].thread, NULL);
    assert_int_equal(w[0].rc, 1);
    assert_int_equal(w[1].rc, 1);
    assert_string_not_equal(w[0].task->id, w[1].task->id);
    for (int i = 0; i < 2; i++) {
        assert_true(strcmp(w[i].task->id, a) == 0 || strcmp(w[i].task->id, b) == 0);
        th_task_free(w[i].task);
    }
}

static void test_free_wakes_blocked_claim(void **state)
{
    rfx *f = RFX(state);
    waiter w;
    waiter_start(&w, f->e, "never", 20000);
    th_engine_free(f->e);
    f->e = NULL;
    pthread_join(w.thread, NULL);
    if (w.rc != TH_ECLOSED)
        fail_msg("claim blocked during th_engine_free returned %d (%s), expected ECLOSED", w.rc,
                 th_errname(w.rc));
    assert_null(w.task);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_blocked_claim_wakes_on_submit),      T(test_blocked_claim_ignores_other_queues),
        T(test_delayed_task_reaches_blocked_claim), T(test_two_waiters_get_distinct_tasks),
        T(test_free_wakes_blocked_claim),
    };
    return THTEST_RUN_ALL_STORES("engine_thread", tests) != 0;
}
