/*
 * Two real daemons (`taskhive serve --store postgres://...`) on one database
 * (the tests' private server, one schema per test):
 *
 *  - tasks submitted through both daemons are run by the pools of both, and
 *    each task ends completed after exactly one attempt, seen the same from
 *    either daemon; a task submitted through one shows in the other's
 *    event stream;
 *  - a daemon killed with SIGKILL while its pool runs tasks leaves them
 *    leased; the other daemon runs them again once the leases (2 s here)
 *    expire, and they complete on attempt 2;
 *  - an external worker registered on one daemon is known to the other: it
 *    claims there (default queues from its registration) and both list it.
 *
 * Every wait is bounded (daemon.h); nothing asserts on speed.
 */
#include "daemon.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "pgserver.h"

#define SHARED 300 /* tasks in the sharing test, in batches of 100 */

/* Starts a daemon on `uri` with a 2 s lease (heartbeats every ~0.7 s) and
 * four workers taking one task at a time, so three tasks run at once. */
static thd_daemon *start_on(const char *uri)
{
    char *dir = thd_newdir("pgd");
    char ini[4200];
    snprintf(ini, sizeof ini, "%s/taskhive.ini", dir);
    thd_write_file(ini, "[pool]\nlease = 2s\nmin_workers = 4\nmax_workers = 4\nbatch = 1\n");
    const char *extra[] = {"--store", uri, "--config", ini, NULL};
    thd_daemon *d = thd_start(dir, extra);
    free(dir);
    return d;
}

static void test_two_daemons_share_tasks(void **state)
{
    (void)state;
    char *uri = thtest_pg_uri();
    thd_daemon *a = start_on(uri), *b = start_on(uri);
    thd_sse *stream = thd_sse_open(b, "/v1/events", NULL);
    assert_int_equal(thd_sse_wait_connected(stream, THD_WAIT_MS), 200);
    char *ids[SHARED];
    size_t n = 0;
    for (int batch = 0; batch < SHARED / 100; batch++) {
        char body[100 * 40 + 32];
        size_t len = (size_t)snprintf(body, sizeof body, "{\"tasks\": [");
        for (int i = 0; i < 100; i++)
            len += (size_t)snprintf(body + len, sizeof body - len, "%s{\"queue\": \"noop\"}",
                                    i ? ", " : "");
        snprintf(body + len, sizeof body - len, "]}");
        thd_resp *r = thd_req(batch % 2 ? b : a, "POST", "/v1/tasks", body);
        thd_assert_status(r, 201);
        json_t *list = thd_jget(r->json, "ids");
        assert_non_null(list);
        assert_int_equal(json_array_size(list), 100);
        for (size_t i = 0; i < 100; i++) {
            const char *id = json_string_value(json_array_get(list, i));
            assert_non_null(id);
            ids[n++] = strdup(id);
        }
        thd_resp_free(r);
    }
    /* The first batch went through a: b's stream carries its events. */
    assert_true(thd_sse_wait_for(stream, "submitted", ids[0], THD_WAIT_MS));
    assert_true(thd_sse_wait_for(stream, "completed", ids[0], THD_WAIT_MS));
    thd_sse_close(stream);
    for (size_t i = 0; i < n; i++) {
        json_t *t = thd_wait_state(i % 2 ? a : b, ids[i], "completed");
        assert_int_equal(thd_jint(t, "attempt", -1), 1);
        json_decref(t);
        json_t *other = thd_task(i % 2 ? b : a, ids[i]);
        assert_string_equal(thd_jstr(other, "state"), "completed");
        json_decref(other);
        free(ids[i]);
    }
    thd_stop(a);
    thd_stop(b);
    thd_free(a);
    thd_free(b);
    free(uri);
}

static void test_sigkilled_daemon_tasks_finish_elsewhere(void **state)
{
    (void)state;
    enum { K = 3 };
    char *uri = thtest_pg_uri();
    thd_daemon *a = start_on(uri);
    char *ids[K];
    for (int i = 0; i < K; i++)
        ids[i] = thd_submit(a, "{\"queue\": \"sleep\", \"payload\": {\"ms\": 4000}}");
    for (int i = 0; i < K; i++)
        json_decref(thd_wait_state(a, ids[i], "running"));
    int st = thd_signal_wait(a, SIGKILL, THD_STOP_MS);
    assert_true(WIFSIGNALED(st));
    thd_daemon *b = start_on(uri);
    for (int i = 0; i < K; i++) {
        json_t *t = thd_task(b, ids[i]);
        assert_int_equal(thd_jint(t, "attempt", -1), 1); /* still the dead node's lease */
        json_decref(t);
    }
    for (int i = 0; i < K; i++) {
        json_t *t = thd_wait_state(b, ids[i], "completed");
        assert_int_equal(thd_jint(t, "attempt", -1), 2);
        json_decref(t);
        free(ids[i]);
    }
    thd_stop(b);
    thd_free(a);
    thd_free(b);
    free(uri);
}

static void test_shared_worker_registry(void **state)
{
    (void)state;
    char *uri = thtest_pg_uri();
    thd_daemon *a = start_on(uri), *b = start_on(uri);
    char *wid = thd_register(a, "resizer", "images");
    char *id = thd_submit(b, "{\"queue\": \"images\"}");
    /* On b, which never saw the registration: its default queues apply. */
    thd_resp *r = thd_req(b, "POST", thd_p("/v1/workers/%s/claim", wid),
                          "{\"max_tasks\": 1, \"wait_ms\": 5000}");
    thd_assert_status(r, 200);
    assert_string_equal(thd_jstr(r->json, "tasks[0].id"), id);
    thd_resp_free(r);
    for (int k = 0; k < 2; k++) {
        r = thd_req(k ? b : a, "GET", "/v1/workers", NULL);
        thd_assert_status(r, 200);
        int found = 0;
        json_t *list = json_object_get(r->json, "workers");
        for (size_t i = 0; i < json_array_size(list); i++) {
            json_t *w = json_array_get(list, i);
            const char *wi = thd_jstr(w, "id");
            if (wi && strcmp(wi, wid) == 0) {
                found = 1;
                assert_string_equal(thd_jstr(w, "name"), "resizer");
                assert_string_equal(thd_jstr(w, "queues[0]"), "images");
            }
        }
        assert_true(found);
        thd_resp_free(r);
    }
    /* An unknown worker is still refused. */
    r = thd_req(b, "POST", "/v1/workers/w-0000000000000000/claim", "{}");
    assert_int_equal(r->status, 404);
    thd_resp_free(r);
    free(wid);
    free(id);
    thd_stop(a);
    thd_stop(b);
    thd_free(a);
    thd_free(b);
    free(uri);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_two_daemons_share_tasks, thd_teardown),
        cmocka_unit_test_teardown(test_sigkilled_daemon_tasks_finish_elsewhere, thd_teardown),
        cmocka_unit_test_teardown(test_shared_worker_registry, thd_teardown),
    };
    return cmocka_run_group_tests_name("pg_daemon", tests, NULL, NULL) != 0;
}
