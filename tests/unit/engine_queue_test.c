/*
 * Queue controls: pause stops hand-out (but not submission), resume wakes
 * consumers, purge cancels every waiting task of one queue (and their
 * dependents elsewhere), the paused flag survives a reopen, and a schema
 * version 1 file is migrated to version 2 in place. Runs against both stores.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#include "taskhive/taskhive.h"
#include "thtest.h"

#define FX(state) ((thtest_fx *)*(state))
#define T(fn) cmocka_unit_test_setup_teardown(fn, thtest_fx_setup, thtest_fx_teardown)

static int paused_of(th_engine *e, const char *queue)
{
    th_queue_counts *c;
    size_t n;
    assert_int_equal(th_engine_counts(e, &c, &n), 0);
    int paused = -1;
    for (size_t i = 0; i < n; i++)
        if (strcmp(c[i].queue, queue) == 0)
            paused = c[i].paused;
    free(c);
    return paused;
}

static void test_pause_stops_hand_out(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char a[TH_ID_SIZE], b[TH_ID_SIZE];
    assert_int_equal(th_engine_queue_pause(fx->e, "held", 1, &err), 0);
    assert_int_equal(paused_of(fx->e, "held"), 1);
    thtest_submit_simple(fx->e, "held", NULL, a);
    thtest_submit_simple(fx->e, "free", NULL, b);
    /* Neither a claim naming the queue nor an any-queue claim gets it. */
    assert_int_equal(thtest_claim_count(fx->e, "held"), 0);
    th_task *t = thtest_claim1(fx->e, NULL, 0);
    assert_string_equal(t->id, b);
    th_task_free(t);
    assert_int_equal(thtest_claim_count(fx->e, NULL), 0);
    thtest_assert_state(fx->e, a, TH_TASK_PENDING);

    assert_int_equal(th_engine_queue_pause(fx->e, "held", 0, &err), 0);
    assert_int_equal(paused_of(fx->e, "held"), 0);
    t = thtest_claim1(fx->e, "held", 0);
    assert_string_equal(t->id, a);
    th_task_free(t);
}

static void test_pause_bad_name(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    assert_int_equal(th_engine_queue_pause(fx->e, "bad name", 1, &err), TH_EINVAL);
    assert_string_equal(err.field, "queue");
    assert_int_equal(th_engine_queue_purge(fx->e, "", NULL, &err), TH_EINVAL);
}

static void test_purge_cancels_waiting_only(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char p1[TH_ID_SIZE], p2[TH_ID_SIZE], run[TH_ID_SIZE], other[TH_ID_SIZE], dep[TH_ID_SIZE];
    thtest_submit_simple(fx->e, "junk", NULL, run);
    th_task *t = thtest_claim1(fx->e, "junk", 0); /* running: purge leaves it */
    assert_string_equal(t->id, run);
    thtest_submit_simple(fx->e, "junk", NULL, p1);
    th_task_spec spec;
    th_task_spec_init(&spec, "junk");
    spec.delay_ms = 60000; /* scheduled */
    thtest_submit(fx->e, &spec, p2);
    thtest_submit_simple(fx->e, "keep", NULL, other);
    const char *deps[] = {p1};
    th_task_spec_init(&spec, "keep"); /* blocked on a purged task, in another queue */
    spec.deps = deps;
    spec.ndeps = 1;
    thtest_submit(fx->e, &spec, dep);

    assert_int_equal(th_engine_queue_purge(fx->e, "junk", "clearing out", &err), 2);
    thtest_assert_state(fx->e, p1, TH_TASK_CANCELLED);
    thtest_assert_state(fx->e, p2, TH_TASK_CANCELLED);
    thtest_assert_state(fx->e, run, TH_TASK_RUNNING);
    thtest_assert_state(fx->e, other, TH_TASK_PENDING);
    thtest_assert_state(fx->e, dep, TH_TASK_CANCELLED);
    th_task *g = thtest_get(fx->e, p1);
    assert_string_equal(g->error, "clearing out");
    th_task_free(g);
    assert_int_equal(th_engine_complete(fx->e, run, t->lease, NULL, &err), 0);
    th_task_free(t);
    assert_int_equal(th_engine_queue_purge(fx->e, "nothing-here", NULL, &err), 0);
}

static void test_pause_survives_reopen(void **state)
{
    thtest_fx *fx = FX(state);
    th_error err;
    char id[TH_ID_SIZE];
    assert_int_equal(th_engine_queue_pause(fx->e, "held", 1, &err), 0);
    thtest_submit_simple(fx->e, "held", NULL, id);
    thtest_fx_reopen(fx, NULL);
    if (!fx->durable) {
        assert_int_equal(paused_of(fx->e, "held"), -1); /* memory: all gone */
        return;
    }
    assert_int_equal(paused_of(fx->e, "held"), 1);
    assert_int_equal(thtest_claim_count(fx->e, "held"), 0);
    assert_int_equal(th_engine_queue_pause(fx->e, "held", 0, &err), 0);
    thtest_fx_reopen(fx, NULL);
    assert_int_equal(paused_of(fx->e, "held"), 0);
    assert_int_equal(thtest_claim_count(fx->e, "held"), 1);
}

/* A file written by schema version 1 (no queues table) opens, is migrated,
 * and keeps its tasks. */
static void test_migrates_version_1(void **state)
{
    thtest_fx *fx = FX(state);
    if (strcmp(thtest_store_kind(), "sqlite") != 0)
        return; /* sqlite only: it edits the file's schema */
    char id[TH_ID_SIZE];
    thtest_submit_simple(fx->e, "old", "{\"v\":1}", id);
    th_engine_free(fx->e);
    fx->e = NULL;
    sqlite3 *db;
    assert_int_equal(sqlite3_open(fx->path, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(db, "DROP TABLE queues; PRAGMA user_version=1;", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    thtest_fx_reopen(fx, NULL);
    th_task *t = thtest_get(fx->e, id);
    assert_string_equal(t->payload, "{\"v\":1}");
    th_task_free(t);
    th_error err;
    assert_int_equal(th_engine_queue_pause(fx->e, "old", 1, &err), 0);
    th_engine_free(fx->e);
    fx->e = NULL;
    assert_int_equal(sqlite3_open(fx->path, &db), SQLITE_OK);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 2);
    sqlite3_finalize(st);
    sqlite3_close(db);
    thtest_fx_reopen(fx, NULL);
    assert_int_equal(paused_of(fx->e, "old"), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_pause_stops_hand_out),       T(test_pause_bad_name),
        T(test_purge_cancels_waiting_only), T(test_pause_survives_reopen),
        T(test_migrates_version_1),
    };
    return THTEST_RUN_ALL_STORES("engine_queue", tests) ? 1 : 0;
}
