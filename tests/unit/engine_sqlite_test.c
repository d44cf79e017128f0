/*
 * SQLite store tests through the engine: a database reopened after
 * th_engine_free holds every task exactly as it was (state, payload, result,
 * attempt, deps, logs, and a running task's lease, which still completes),
 * and th_store_open refuses files it must not touch — a file that is not a
 * database (TH_ECORRUPT) and a taskhive database from a newer schema
 * (TH_EVERSION) — without changing a byte of them.
 */
#include "thtest.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads a whole file; *len gets its size. The caller frees the result. */
static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    unsigned char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 65536;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    fclose(f);
    *len = n;
    return buf;
}

static char *sqlite_uri(const char *path)
{
    size_t len = strlen(path) + 8;
    char *uri = malloc(len);
    assert_non_null(uri);
    snprintf(uri, len, "sqlite:%s", path);
    return uri;
}

static int str_eq(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Fails unless two snapshots of the same task agree on everything stored. */
static void assert_same_task(const th_task *a, const th_task *b)
{
    assert_string_equal(a->id, b->id);
    assert_string_equal(a->queue, b->queue);
    assert_int_equal(a->state, b->state);
    assert_json_equal(b->payload, a->payload);
    if (a->metadata)
        assert_json_equal(b->metadata, a->metadata);
    else
        assert_null(b->metadata);
    assert_true(str_eq(a->unique_key, b->unique_key));
    assert_int_equal(a->priority, b->priority);
    assert_int_equal(a->attempt, b->attempt);
    assert_int_equal(a->retry.max_retries, b->retry.max_retries);
    assert_int_equal(a->retry.initial_delay_ms, b->retry.initial_delay_ms);
    assert_int_equal(a->timeout_ms, b->timeout_ms);
    assert_int_equal(a->created_at, b->created_at);
    assert_int_equal(a->run_at, b->run_at);
    assert_int_equal(a->expires_at, b->expires_at);
    assert_int_equal(a->started_at, b->started_at);
    assert_int_equal(a->finished_at, b->finished_at);
    assert_int_equal(a->lease_expires_at, b->lease_expires_at);
    assert_true(a->lease == b->lease);
    assert_true(str_eq(a->worker, b->worker));
    assert_int_equal(a->progress, b->progress);
    assert_int_equal(a->step, b->step);
    assert_int_equal(a->total_steps, b->total_steps);
    assert_true(str_eq(a->progress_message, b->progress_message));
    assert_true(str_eq(a->error, b->error));
    if (a->result)
        assert_json_equal(b->result, a->result);
    else
        assert_null(b->result);
    assert_int_equal(a->ndeps, b->ndeps);
    for (size_t i = 0; i < a->ndeps; i++)
        assert_string_equal(a->deps[i], b->deps[i]);
}

enum { P, S, C, F, R, B, NTASKS };

static void test_reopen_keeps_everything(void **state)
{
    thtest_clock clk;
    thtest_clock_init(&clk, THTEST_T0);
    char *path = thtest_unique_path("reopen", ".db");
    char *uri = sqlite_uri(path);
    th_engine *e = thtest_engine(uri, &clk);
    th_error err;
    char ids[NTASKS][TH_ID_SIZE];
    th_task_spec spec;

    th_task_spec_init(&spec, "pend");
    spec.payload = "{\"p\": [1, \"two\", null]}";
    spec.metadata = "{\"m\": true}";
    spec.priority = 80;
    spec.unique_key = "uk-p";
    spec.timeout_ms = 1234;
    thtest_submit(e, &spec, ids[P]);

    th_task_spec_init(&spec, "sched");
    spec.delay_ms = 60000;
    spec.expires_at_ms = THTEST_T0 + 3600000;
    thtest_submit(e, &spec, ids[S]);

    thtest_submit_simple(e, "done", "\"c\"", ids[C]);
    th_task *t = thtest_claim1(e, "done", 0);
    thtest_clock_advance(&clk, 3);
    assert_int_equal(th_engine_complete(e, ids[C], t->lease, "{\"r\": [1, 2, 3]}", &err), 0);
    th_task_free(t);

    thtest_submit_simple(e, "bad", NULL, ids[F]);
    t = thtest_claim1(e, "bad", 0);
    assert_int_equal(th_engine_fail(e, ids[F], t->lease, "kaput", TH_FAIL_PERMANENT, &err), 0);
    th_task_free(t);

    thtest_submit_simple(e, "run", "{\"r\": 1}", ids[R]);
    thtest_clock_advance(&clk, 5);
    t = thtest_claim1(e, "run", 60000);
    uint64_t lease = t->lease;
    th_task_free(t);
    assert_int_equal(th_engine_progress(e, ids[R], lease, 30, 1, 3, "warming up", &err), 0);
    assert_int_equal(th_engine_log(e, ids[R], lease, TH_LOG_INFO, "first", NULL, &err), 0);
    assert_int_equal(th_engine_log(e, ids[R], lease, TH_LOG_WARN, "second", "{\"d\": 2}", &err), 0);

    th_task_spec_init(&spec, "after");
    const char *deps[2] = {ids[R], ids[C]};
    spec.deps = deps;
    spec.ndeps = 2;
    thtest_submit(e, &spec, ids[B]);

    th_task *before[NTASKS];
    for (int i = 0; i < NTASKS; i++)
        before[i] = thtest_get(e, ids[i]);
    assert_int_equal(before[P]->state, TH_TASK_PENDING);
    assert_int_equal(before[S]->state, TH_TASK_SCHEDULED);
    assert_int_equal(before[C]->state, TH_TASK_COMPLETED);
    assert_int_equal(before[F]->state, TH_TASK_FAILED);
    assert_int_equal(before[R]->state, TH_TASK_RUNNING);
    assert_int_equal(before[B]->state, TH_TASK_BLOCKED);

    th_engine_free(e);
    e = thtest_engine(uri, &clk);

    for (int i = 0; i < NTASKS; i++) {
        th_task *after = thtest_get(e, ids[i]);
        assert_same_task(before[i], after);
        th_task_free(after);
        th_task_free(before[i]);
    }
    assert_int_equal(thtest_list_count(e, NULL, -1), NTASKS);

    th_log_entry *rows = NULL;
    size_t n = 0;
    assert_int_equal(th_engine_logs(e, ids[R], 0, 0, &rows, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(rows[0].seq, 1);
    assert_string_equal(rows[0].message, "first");
    assert_int_equal(rows[0].level, TH_LOG_INFO);
    assert_int_equal(rows[1].seq, 2);
    assert_string_equal(rows[1].message, "second");
    assert_json_equal(rows[1].data, "{\"d\":2}");
    assert_int_equal(rows[1].attempt, 1);
    th_log_entries_free(rows, n);

    /* Life goes on: the running task's lease still works, which readies B;
     * log numbering continues; the unique key still deduplicates; the
     * scheduled task is promoted at its run_at. */
    assert_int_equal(th_engine_log(e, ids[R], lease, TH_LOG_INFO, "third", NULL, &err), 0);
    assert_int_equal(th_engine_logs(e, ids[R], 2, 0, &rows, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(rows[0].seq, 3);
    th_log_entries_free(rows, n);
    assert_int_equal(th_engine_complete(e, ids[R], lease, "\"r done\"", &err), 0);
    thtest_assert_state(e, ids[B], TH_TASK_PENDING);

    char dup[TH_ID_SIZE];
    th_task_spec_init(&spec, "pend");
    spec.unique_key = "uk-p";
    assert_int_equal(th_engine_submit(e, &spec, dup, &err), 1);
    assert_string_equal(dup, ids[P]);

    thtest_clock_advance(&clk, 60000);
    assert_true(th_engine_tick(e) >= 1);
    thtest_assert_state(e, ids[S], TH_TASK_PENDING);

    /* New ids keep sorting after the old ones. */
    char later[TH_ID_SIZE];
    thtest_submit_simple(e, "pend", NULL, later);
    for (int i = 0; i < NTASKS; i++)
        assert_true(strcmp(later, ids[i]) > 0);

    th_engine_free(e);
    thtest_remove_db(path);
    free(uri);
    free(path);
}

static void test_reopen_expired_lease_after_restart(void **state)
{
    thtest_clock clk;
    thtest_clock_init(&clk, THTEST_T0);
    char *path = thtest_unique_path("lease", ".db");
    char *uri = sqlite_uri(path);
    th_engine *e = thtest_engine(uri, &clk);
    char id[TH_ID_SIZE];
    th_task_spec spec;
    th_task_spec_init(&spec, "q");
    spec.retry = thtest_retry(2, 500, 500, 2.0);
    thtest_submit(e, &spec, id);
    th_task *t = thtest_claim1(e, "q", 1000);
    uint64_t lease = t->lease;
    th_task_free(t);
    th_engine_free(e);

    /* The process "was down" past the lease: the reopened engine reclaims it. */
    thtest_clock_advance(&clk, 5000);
    e = thtest_engine(uri, &clk);
    th_engine_tick(e);
    t = thtest_get(e, id);
    assert_int_not_equal(t->state, TH_TASK_RUNNING);
    assert_int_equal(t->attempt, 1);
    th_task_free(t);
    th_error err;
    assert_int_equal(th_engine_complete(e, id, lease, NULL, &err), TH_ESTALE);
    thtest_clock_advance(&clk, 500);
    th_engine_tick(e);
    t = thtest_claim1(e, "q", 1000);
    assert_int_equal(t->attempt, 2);
    th_task_free(t);

    th_engine_free(e);
    thtest_remove_db(path);
    free(uri);
    free(path);
}

static void test_refuses_non_database(void **state)
{
    char *path = thtest_unique_path("garbage", ".db");
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    for (int i = 0; i < 512; i++)
        fprintf(f, "this is not a database, line %03d\n", i);
    fclose(f);
    size_t len0 = 0, len1 = 0;
    unsigned char *orig = slurp(path, &len0);

    char *uri = sqlite_uri(path);
    th_error err;
    memset(&err, 0, sizeof err);
    th_store *s = th_store_open(uri, NULL, &err);
    if (s) {
        th_store_free(s);
        fail_msg("a garbage file was opened as a store");
    }
    assert_int_equal(err.code, TH_ECORRUPT);

    unsigned char *now = slurp(path, &len1);
    assert_int_equal(len1, len0);
    assert_memory_equal(now, orig, len0);
    free(now);
    free(orig);
    thtest_remove_db(path);
    free(uri);
    free(path);
}

static void test_refuses_newer_schema(void **state)
{
    thtest_clock clk;
    thtest_clock_init(&clk, THTEST_T0);
    char *path = thtest_unique_path("future", ".db");
    char *uri = sqlite_uri(path);
    th_engine *e = thtest_engine(uri, &clk);
    char id[TH_ID_SIZE];
    thtest_submit_simple(e, "q", NULL, id);
    th_engine_free(e);

    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    char *msg = NULL;
    int rc = sqlite3_exec(db, "PRAGMA user_version = 999", NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        fail_msg("setting user_version: %s", msg ? msg : sqlite3_errstr(rc));
    assert_int_equal(sqlite3_close(db), SQLITE_OK);

    size_t len0 = 0, len1 = 0;
    unsigned char *orig = slurp(path, &len0);
    th_error err;
    memset(&err, 0, sizeof err);
    th_store *s = th_store_open(uri, NULL, &err);
    if (s) {
        th_store_free(s);
        fail_msg("a database with user_version 999 was opened");
    }
    assert_int_equal(err.code, TH_EVERSION);
    unsigned char *now = slurp(path, &len1);
    assert_int_equal(len1, len0);
    assert_memory_equal(now, orig, len0);

    /* Still a valid SQLite file with our marker. */
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 999);
    sqlite3_finalize(st);
    sqlite3_close(db);

    free(now);
    free(orig);
    thtest_remove_db(path);
    free(uri);
    free(path);
}

static void test_bad_uri(void **state)
{
    th_error err;
    memset(&err, 0, sizeof err);
    assert_null(th_store_open("nosuchstore:/x", NULL, &err));
    assert_int_equal(err.code, TH_EINVAL);
    memset(&err, 0, sizeof err);
    assert_null(th_store_open("sqlite:", NULL, &err));
    assert_int_equal(err.code, TH_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reopen_keeps_everything),
        cmocka_unit_test(test_reopen_expired_lease_after_restart),
        cmocka_unit_test(test_refuses_non_database),
        cmocka_unit_test(test_refuses_newer_schema),
        cmocka_unit_test(test_bad_uri),
    };
    return cmocka_run_group_tests_name("engine_sqlite", tests, NULL, NULL) != 0;
}
