/*
 * Opening the PostgreSQL store (the tests' private server): the schema is
 * created once and reused, a database whose schema is newer than this build
 * is refused unchanged, an unreachable server is an error naming the cause,
 * and tasks outlive the store that wrote them.
 */
#include "thtest.h"

#include <stdlib.h>
#include <string.h>

#include "pgserver.h"

static th_store *open_ok(const char *uri)
{
    th_error err;
    memset(&err, 0, sizeof err);
    th_store *s = th_store_open(uri, NULL, &err);
    if (!s)
        fail_msg("th_store_open(%s): %s: %s", uri, th_errname(err.code), err.message);
    assert_string_equal(th_store_kind(s), "postgres");
    return s;
}

static void test_schema_created_once_and_kept(void **state)
{
    (void)state;
    char *uri = thtest_pg_uri();
    th_store_free(open_ok(uri));
    th_store_free(open_ok(uri)); /* the second open finds version 2 and changes nothing */
    assert_int_equal(thpg_exec(uri, "DO $$ BEGIN IF (SELECT count(*) FROM th_schema_version)"
                                    " <> 1 OR (SELECT version FROM th_schema_version) <> 2 THEN"
                                    " RAISE EXCEPTION 'bad version rows'; END IF; END $$"),
                     0);
    /* A database of version 1 (no worker registry) is migrated to 2. */
    assert_int_equal(
        thpg_exec(uri, "DROP TABLE th_workers; UPDATE th_schema_version SET version = 1"), 0);
    th_store_free(open_ok(uri));
    assert_int_equal(thpg_exec(uri, "DO $$ BEGIN IF (SELECT version FROM th_schema_version) <> 2"
                                    " OR to_regclass('th_workers') IS NULL THEN"
                                    " RAISE EXCEPTION 'not migrated'; END IF; END $$"),
                     0);
    free(uri);
}

static void test_newer_schema_refused_unchanged(void **state)
{
    (void)state;
    char *uri = thtest_pg_uri();
    th_store_free(open_ok(uri));
    assert_int_equal(thpg_exec(uri, "UPDATE th_schema_version SET version = 999"), 0);
    th_error err;
    memset(&err, 0, sizeof err);
    assert_null(th_store_open(uri, NULL, &err));
    assert_int_equal(err.code, TH_EVERSION);
    assert_true(thtest_contains(err.message, "999"));
    assert_int_equal(thpg_exec(uri, "DO $$ BEGIN IF (SELECT version FROM th_schema_version)"
                                    " <> 999 THEN RAISE EXCEPTION 'changed'; END IF; END $$"),
                     0);
    free(uri);
}

static void test_unreachable_server(void **state)
{
    (void)state;
    th_error err;
    memset(&err, 0, sizeof err);
    /* Port 1 on loopback: nothing listens there. */
    assert_null(th_store_open("postgresql://nobody@127.0.0.1:1/none", NULL, &err));
    assert_int_equal(err.code, TH_EIO);
    assert_true(thtest_contains(err.message, "connect"));
}

/* A task and its log survive the store that wrote them, with every field. */
static void test_reopen_keeps_tasks(void **state)
{
    (void)state;
    char *uri = thtest_pg_uri();
    thtest_clock clk;
    thtest_clock_init(&clk, THTEST_T0);
    th_engine *e = thtest_engine(uri, &clk);
    th_task_spec spec;
    th_task_spec_init(&spec, "keep");
    spec.payload = "{\"k\": [1, \"two\", null]}";
    spec.metadata = "{\"m\": true}";
    spec.priority = 77;
    spec.unique_key = "only-once";
    spec.timeout_ms = 5000;
    char id[TH_ID_SIZE];
    thtest_submit(e, &spec, id);
    th_task *t = thtest_claim1(e, "keep", 60000);
    th_error err;
    assert_int_equal(th_engine_log(e, id, t->lease, TH_LOG_WARN, "a line", "{\"d\": 1}", &err), 0);
    uint64_t lease = t->lease;
    th_task_free(t);
    th_engine_free(e);

    e = thtest_engine(uri, &clk);
    t = thtest_get(e, id);
    assert_int_equal(t->state, TH_TASK_RUNNING);
    assert_int_equal(t->priority, 77);
    assert_int_equal(t->timeout_ms, 5000);
    assert_string_equal(t->unique_key, "only-once");
    assert_json_equal(t->payload, "{\"k\": [1, \"two\", null]}");
    assert_json_equal(t->metadata, "{\"m\": true}");
    assert_string_equal(t->worker, "test-worker");
    th_task_free(t);
    th_log_entry *logs = NULL;
    size_t n = 0;
    assert_int_equal(th_engine_logs(e, id, 0, 0, &logs, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(logs[0].message, "a line");
    assert_int_equal(logs[0].level, TH_LOG_WARN);
    th_log_entries_free(logs, n);
    /* The lease handed out before the reopen still completes the task. */
    assert_int_equal(th_engine_complete(e, id, lease, "\"done\"", &err), 0);
    thtest_assert_state(e, id, TH_TASK_COMPLETED);
    th_engine_free(e);
    free(uri);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schema_created_once_and_kept),
        cmocka_unit_test(test_newer_schema_refused_unchanged),
        cmocka_unit_test(test_unreachable_server),
        cmocka_unit_test(test_reopen_keeps_tasks),
    };
    return cmocka_run_group_tests_name("pg_store", tests, NULL, NULL) != 0;
}
