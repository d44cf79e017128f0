/*
 * Black-box tests of the daemon's HTTP API (docs/API.md): every endpoint
 * against a real `taskhive serve` child process, one fresh daemon (own
 * directory, own port) per test. Tasks the test works itself go to queues no
 * built-in handler serves ("ext-..."); "noop" and "sleep" are run by the
 * daemon's pool.
 */
#include <stdlib.h>
#include <string.h>

#include "daemon.h"

#define D(state) ((thd_daemon *)*(state))

/* ---- small helpers ------------------------------------------------------- */

/* 1 when `name` is a key of one of the objects in `objs` (NULL-terminated). */
static int has_key(json_t *const *objs, const char *name)
{
    for (size_t i = 0; objs[i]; i++)
        if (json_is_object(objs[i]) && json_object_get(objs[i], name))
            return 1;
    return 0;
}

/* The queue entry named `name` in a GET /v1/queues answer, or NULL. */
static json_t *find_queue(json_t *answer, const char *name)
{
    json_t *qs = thd_jget(answer, "queues"), *q;
    size_t i;
    json_array_foreach(qs, i, q)
    {
        const char *n = thd_jstr(q, "name");
        if (n && strcmp(n, name) == 0)
            return q;
    }
    return NULL;
}

static void assert_content_type_json(const thd_resp *r)
{
    char *ct = thd_header(r, "Content-Type");
    assert_non_null(ct);
    assert_true(thtest_contains(ct, "application/json"));
    free(ct);
}

/* ---- health, readiness, metrics ------------------------------------------ */

static void test_healthz_readyz(void **state)
{
    thd_daemon *d = D(state);
    thd_resp *r = thd_req(d, "GET", "/healthz", NULL);
    thd_assert_status(r, 200);
    assert_string_equal(thd_jstr(r->json, "status"), "ok");
    assert_content_type_json(r);
    thd_resp_free(r);

    r = thd_req(d, "GET", "/readyz", NULL);
    thd_assert_status(r, 200);
    thd_resp_free(r);
}

static void test_metrics_prometheus(void **state)
{
    thd_daemon *d = D(state);
    char *id = thd_submit(d, "{\"queue\": \"noop\"}");
    json_decref(thd_wait_state(d, id, "completed"));
    free(id);

    thd_resp *r = thd_req(d, "GET", "/metrics", NULL);
    thd_assert_status(r, 200);
    char *ct = thd_header(r, "Content-Type");
    assert_non_null(ct);
    assert_true(thtest_contains(ct, "text/plain"));
    free(ct);
    /* Lines that start with taskhive_, and the names the doc promises. */
    size_t samples = 0;
    for (const char *p = r->body; p && *p;) {
        if (strncmp(p, "taskhive_", 9) == 0)
            samples++;
        const char *nl = strchr(p, '\n');
        p = nl ? nl + 1 : NULL;
    }
    if (samples == 0)
        fail_msg("/metrics has no taskhive_ sample lines:\n%.2000s", r->body);
    static const char *const names[] = {"\ntaskhive_tasks{", "\ntaskhive_tasks_completed_total",
                                        "\ntaskhive_workers{"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strstr(r->body, names[i]))
            fail_msg("/metrics lacks %s:\n%.3000s", names[i] + 1, r->body);
    /* The completed noop task is counted in a queue="noop" state="completed" sample. */
    assert_non_null(strstr(r->body, "queue=\"noop\""));
    thd_resp_free(r);
}

/* ---- submit and get ---------------------------------------------------- */

static void test_submit_and_get(void **state)
{
    thd_daemon *d = D(state);
    thd_resp *r = thd_req(d, "POST", "/v1/tasks",
                          "{\"queue\": \"ext-get\", \"payload\": {\"to\": \"ada@example.com\", "
                          "\"n\": [1, 2]}, \"priority\": \"high\", \"timeout_ms\": 60000, "
                          "\"metadata\": {\"tenant\": \"t1\"}, \"unique_key\": \"order-42\", "
                          "\"retry\": {\"max_retries\": 5, \"initial_delay_ms\": 200, "
                          "\"max_delay_ms\": 4000, \"multiplier\": 3.0, \"jitter\": 0.0}}");
    thd_assert_status(r, 201);
    assert_content_type_json(r);
    assert_int_equal(thd_jbool(r->json, "deduplicated"), 0);
    char *id = strdup(thd_jstr(r->json, "id"));
    assert_int_equal(strlen(id), 26);
    thd_resp_free(r);

    json_t *t = thd_task(d, id);
    assert_string_equal(thd_jstr(t, "id"), id);
    assert_string_equal(thd_jstr(t, "queue"), "ext-get");
    assert_string_equal(thd_jstr(t, "state"), "pending");
    assert_int_equal(thd_jint(t, "priority", -1), 75);
    assert_int_equal(thd_jint(t, "attempt", -1), 0);
    assert_int_equal(thd_jint(t, "timeout_ms", -1), 60000);
    assert_string_equal(thd_jstr(t, "payload.to"), "ada@example.com");
    assert_int_equal(thd_jint(t, "payload.n[1]", -1), 2);
    assert_string_equal(thd_jstr(t, "metadata.tenant"), "t1");
    assert_string_equal(thd_jstr(t, "unique_key"), "order-42");
    assert_int_equal(thd_jint(t, "retry.max_retries", -1), 5);
    assert_int_equal(thd_jint(t, "retry.initial_delay_ms", -1), 200);
    assert_int_equal(thd_jint(t, "retry.max_delay_ms", -1), 4000);
    assert_true(json_number_value(thd_jget(t, "retry.multiplier")) == 3.0);
    assert_true(json_is_number(thd_jget(t, "retry.jitter")));
    assert_true(thd_jint(t, "created_at", 0) > 1600000000000LL);
    assert_true(thd_jint(t, "run_at", 0) >= thd_jint(t, "created_at", 0));
    assert_int_equal(thd_jint(t, "finished_at", -1), 0);
    assert_int_equal(thd_jbool(t, "cancel_requested"), 0);
    assert_true(json_is_null(thd_jget(t, "result")));
    assert_true(json_is_null(thd_jget(t, "error")));
    assert_true(json_is_array(thd_jget(t, "deps")));
    assert_int_equal(json_array_size(thd_jget(t, "deps")), 0);
    assert_null(thd_jget(t, "lease")); /* never shown */
    json_decref(t);

    /* The same unique_key: 200, deduplicated, the first id. */
    r = thd_req(d, "POST", "/v1/tasks", "{\"queue\": \"ext-get\", \"unique_key\": \"order-42\"}");
    thd_assert_status(r, 200);
    assert_int_equal(thd_jbool(r->json, "deduplicated"), 1);
    assert_string_equal(thd_jstr(r->json, "id"), id);
    thd_resp_free(r);

    /* Defaults: only the queue given. */
    char *id2 = thd_submit(d, "{\"queue\": \"ext-get\"}");
    t = thd_task(d, id2);
    assert_int_equal(thd_jint(t, "priority", -1), 50);
    assert_true(json_is_null(thd_jget(t, "payload")));
    assert_int_equal(thd_jint(t, "retry.max_retries", -1), 3);
    json_decref(t);

    /* retry may give a subset of its fields; the rest keep their defaults. */
    char *id4 = thd_submit(d, "{\"queue\": \"ext-get\", \"retry\": {\"max_retries\": 7}}");
    t = thd_task(d, id4);
    assert_int_equal(thd_jint(t, "retry.max_retries", -1), 7);
    assert_int_equal(thd_jint(t, "retry.initial_delay_ms", -1), 1000);
    assert_int_equal(thd_jint(t, "retry.max_delay_ms", -1), 300000);
    assert_true(json_number_value(thd_jget(t, "retry.multiplier")) == 2.0);
    json_decref(t);
    free(id4);

    /* A delay makes it scheduled. */
    char *id3 = thd_submit(d, "{\"queue\": \"ext-get\", \"delay_ms\": 3600000, \"priority\": 7}");
    t = thd_task(d, id3);
    assert_string_equal(thd_jstr(t, "state"), "scheduled");
    assert_int_equal(thd_jint(t, "priority", -1), 7);
    assert_true(thd_jint(t, "run_at", 0) >= thd_jint(t, "created_at", 0) + 3600000 - 1000);
    json_decref(t);
    free(id);
    free(id2);
    free(id3);
}

static void test_noop_result(void **state)
{
    thd_daemon *d = D(state);
    char *id = thd_submit(d, "{\"queue\": \"noop\", \"payload\": {\"x\": 1}}");
    json_t *t = thd_wait_state(d, id, "completed");
    assert_int_equal(thd_jint(t, "attempt", -1), 1);
    assert_true(thd_jint(t, "finished_at", 0) > 0);
    assert_int_equal(thd_jbool(t, "result.ok"), 1);
    json_decref(t);

    thd_resp *r = thd_req(d, "GET", thd_p("/v1/tasks/%s/result", id), NULL);
    thd_assert_status(r, 200);
    assert_string_equal(thd_jstr(r->json, "state"), "completed");
    assert_int_equal(thd_jbool(r->json, "result.ok"), 1);
    thd_resp_free(r);

    /* Not completed: 409 ESTATE. */
    char *id2 = thd_submit(d, "{\"queue\": \"ext-result\"}");
    r = thd_req(d, "GET", thd_p("/v1/tasks/%s/result", id2), NULL);
    thd_assert_error(r, 409, "ESTATE", NULL);
    thd_resp_free(r);
    free(id);
    free(id2);
}

/* ---- batches, dependencies, graph ------------------------------------------ */

static void test_batch_deps_graph(void **state)
{
    thd_daemon *d = D(state);
    thd_resp *r =
        thd_req(d, "POST", "/v1/tasks",
                "{\"tasks\": [{\"queue\": \"ext-batch\", \"payload\": 0},"
                "{\"queue\": \"ext-batch\", \"payload\": 1, \"deps\": [\"$0\"]},"
                "{\"queue\": \"ext-batch\", \"payload\": 2, \"deps\": [\"$1\", \"$0\"]}]}");
    thd_assert_status(r, 201);
    json_t *ids = thd_jget(r->json, "ids");
    assert_int_equal(json_array_size(ids), 3);
    char id[3][27];
    for (int i = 0; i < 3; i++) {
        const char *s = json_string_value(json_array_get(ids, (size_t)i));
        assert_non_null(s);
        assert_int_equal(strlen(s), 26);
        snprintf(id[i], sizeof id[i], "%s", s);
    }
    thd_resp_free(r);
    assert_true(strcmp(id[0], id[1]) < 0 && strcmp(id[1], id[2]) < 0);

    json_t *t = thd_task(d, id[0]);
    assert_string_equal(thd_jstr(t, "state"), "pending");
    json_decref(t);
    t = thd_task(d, id[1]);
    assert_string_equal(thd_jstr(t, "state"), "blocked");
    assert_int_equal(thd_jint(t, "payload", -1), 1);
    assert_int_equal(json_array_size(thd_jget(t, "deps")), 1);
    assert_string_equal(thd_jstr(t, "deps[0]"), id[0]); /* "$0" resolved */
    json_decref(t);
    t = thd_task(d, id[2]);
    assert_string_equal(thd_jstr(t, "deps[0]"), id[1]);
    assert_string_equal(thd_jstr(t, "deps[1]"), id[0]);
    json_decref(t);

    /* Graph of the last: all three nodes, three edges dep -> task. */
    r = thd_req(d, "GET", thd_p("/v1/tasks/%s/graph", id[2]), NULL);
    thd_assert_status(r, 200);
    json_t *nodes = thd_jget(r->json, "nodes"), *edges = thd_jget(r->json, "edges");
    assert_int_equal(json_array_size(nodes), 3);
    assert_int_equal(json_array_size(edges), 3);
    int seen[3] = {0};
    size_t i;
    json_t *v;
    json_array_foreach(nodes, i, v)
    {
        for (int k = 0; k < 3; k++)
            if (thd_jstr(v, "id") && strcmp(thd_jstr(v, "id"), id[k]) == 0)
                seen[k]++;
        assert_string_equal(thd_jstr(v, "queue"), "ext-batch");
        assert_non_null(thd_jstr(v, "state"));
        assert_non_null(thd_jget(v, "error"));
    }
    assert_true(seen[0] == 1 && seen[1] == 1 && seen[2] == 1);
    int e01 = 0, e12 = 0, e02 = 0;
    json_array_foreach(edges, i, v)
    {
        const char *from = thd_jstr(v, "from"), *to = thd_jstr(v, "to");
        assert_true(from && to);
        e01 += strcmp(from, id[0]) == 0 && strcmp(to, id[1]) == 0;
        e12 += strcmp(from, id[1]) == 0 && strcmp(to, id[2]) == 0;
        e02 += strcmp(from, id[0]) == 0 && strcmp(to, id[2]) == 0;
    }
    assert_true(e01 == 1 && e12 == 1 && e02 == 1);
    thd_resp_free(r);

    /* Graph of the first: itself only. */
    r = thd_req(d, "GET", thd_p("/v1/tasks/%s/graph", id[0]), NULL);
    thd_assert_status(r, 200);
    assert_int_equal(json_array_size(thd_jget(r->json, "nodes")), 1);
    assert_int_equal(json_array_size(thd_jget(r->json, "edges")), 0);
    thd_resp_free(r);

    /* Cancelling the root cancels the dependents, with the reason in the graph. */
    r = thd_req(d, "POST", thd_p("/v1/tasks/%s/cancel", id[0]), "{\"reason\": \"not needed\"}");
    thd_assert_status(r, 200);
    assert_string_equal(thd_jstr(r->json, "state"), "cancelled");
    thd_resp_free(r);
    json_decref(thd_wait_state(d, id[1], "cancelled"));
    json_decref(thd_wait_state(d, id[2], "cancelled"));
    r = thd_req(d, "GET", thd_p("/v1/tasks/%s/graph", id[2]), NULL);
    thd_assert_status(r, 200);
    json_array_foreach(thd_jget(r->json, "nodes"), i, v)
    {
        assert_string_equal(thd_jstr(v, "state"), "cancelled");
        const char *err = thd_jstr(v, "error");
        if (strcmp(thd_jstr(v, "id"), id[0]) != 0 && !(err && thtest_contains(err, "dependency")))
            fail_msg("node %s: error should name the failed dependency, got %s", thd_jstr(v, "id"),
                     err ? err : "null");
    }
    thd_resp_free(r);
}

/* ---- list ------------------------------------------------------------------ */

static void test_list_filters_paging(void **state)
{
    thd_daemon *d = D(state);
    char ids[7][27];
    for (int i = 0; i < 7; i++) {
        char *id = thd_submit(d, "{\"queue\": \"ext-list-a\"}");
        snprintf(ids[i], sizeof ids[i], "%s", id);
        free(id);
    }
    for (int i = 0; i < 3; i++)
        free(thd_submit(d, "{\"queue\": \"ext-list-b\"}"));
    for (int i = 0; i < 2; i++) {
        thd_resp *r = thd_req(d, "POST", thd_p("/v1/tasks/%s/cancel", ids[i]), NULL);
        thd_assert_status(r, 200);
        thd_resp_free(r);
    }

    /* Pages of 3 over queue a: 3 + 3 + 1, in id order, next null at the end. */
    char after[64] = "";
    int got = 0, pages = 0;
    for (;;) {
        const char *path = after[0] ? thd_p("/v1/tasks?queue=ext-list-a&limit=3&after=%s", after)
                                    : "/v1/tasks?queue=ext-list-a&limit=3";
        thd_resp *r = thd_req(d, "GET", path, NULL);
        thd_assert_status(r, 200);
        json_t *tasks = thd_jget(r->json, "tasks");
        assert_true(json_is_array(tasks));
        assert_true(json_array_size(tasks) <= 3);
        size_t i;
        json_t *t;
        json_array_foreach(tasks, i, t)
        {
            assert_true(got < 7);
            assert_string_equal(thd_jstr(t, "id"), ids[got]);
            assert_string_equal(thd_jstr(t, "queue"), "ext-list-a");
            got++;
        }
        pages++;
        json_t *next = thd_jget(r->json, "next");
        assert_non_null(next); /* present: an id or null */
        if (json_is_null(next) || json_array_size(tasks) == 0) {
            thd_resp_free(r);
            break;
        }
        assert_true(json_is_string(next));
        snprintf(after, sizeof after, "%s", json_string_value(next));
        thd_resp_free(r);
        assert_true(pages < 10);
    }
    assert_int_equal(got, 7);
    assert_true(pages == 3 || pages == 4); /* a last empty page is allowed */

    thd_resp *r = thd_req(d, "GET", "/v1/tasks?queue=ext-list-a&state=cancelled", NULL);
    thd_assert_status(r, 200);
    assert_int_equal(json_array_size(thd_jget(r->json, "tasks")), 2);
    assert_string_equal(thd_jstr(r->json, "tasks[0].id"), ids[0]);
    assert_string_equal(thd_jstr(r->json, "tasks[1].state"), "cancelled");
    assert_true(json_is_null(thd_jget(r->json, "next")));
    thd_resp_free(r);

    r = thd_req(d, "GET", "/v1/tasks?state=pending&queue=ext-list-b", NULL);
    thd_assert_status(r, 200);
    assert_int_equal(json_array_size(thd_jget(r->json, "tasks")), 3);
    thd_resp_free(r);

    r = thd_req(d, "GET", "/v1/tasks?state=pending", NULL);
    thd_assert_status(r, 200);
    assert_int_equal(json_array_size(thd_jget(r->json, "tasks")), 8);
    thd_resp_free(r);

    /* Bad query values. */
    r = thd_req(d, "GET", "/v1/tasks?limit=0", NULL);
    thd_assert_error(r, 400, "EINVAL", "limit");
    thd_resp_free(r);
    r = thd_req(d, "GET", "/v1/tasks?limit=1001", NULL);
    thd_assert_error(r, 400, "EINVAL", "limit");
    thd_resp_free(r);
    r = thd_req(d, "GET", "/v1/tasks?state=bogus", NULL);
    thd_assert_error(r, 400, "EINVAL", "state");
    thd_resp_free(r);
    r = thd_req(d, "GET", "/v1/tasks?after=nope", NULL);
    thd_assert_error(r, 400, "EINVAL", "after");
    thd_resp_free(r);
}

/* ---- cancel and retry ------------------------------------------------------- */

/* A daemon whose pool heartbeats every second (lease 3 s), so a cancel
 * request reaches a running pool task quickly. */
static int fast_heartbeat_setup(void **state)
{
    char *dir = thd_newdir("hb");
    char *cfg = thd_fmt("%s/taskhive.ini", dir);
    thd_write_file(cfg, "[pool]\nlease = 3s\n");
    const char *extra[] = {"--config", cfg, NULL};
    *state = thd_start(dir, extra);
    free(cfg);
    free(dir);
    return 0;
}

static void test_cancel_and_retry(void **state)
{
    thd_daemon *d = D(state);
    /* Pending: cancelled at once. */
    char *id = thd_submit(d, "{\"queue\": \"ext-cancel\"}");
    thd_resp *r = thd_req(d, "POST", thd_p("/v1/tasks/%s/cancel", id), "{\"reason\": \"nope\"}");
    thd_assert_status(r, 200);
    assert_string_equal(thd_jstr(r->json, "state"), "cancelled");
    thd_resp_free(r);
    json_t *t = thd_task(d, id);
    assert_string_equal(thd_jstr(t, "state"), "cancelled");
    assert_true(thd_jint(t, "finished_at", 0) > 0);
    json_decref(t);
    /* Cancel of a final task: 409 ESTATE. */
    r = thd_req(d, "POST", thd_p("/v1/tasks/%s/cancel", id), NULL);
    thd_assert_error(r, 409, "ESTATE", NULL);
    thd_resp_free(r);

    /* Retry: the task object, pending again. */
    r = thd_req(d, "POST", thd_p("/v1/tasks/%s/retry", id), NULL);
    thd_assert_status(r, 200);
    assert_string_equal(thd_jstr(r->json, "id"), id);
    assert_string_equal(thd_jstr(r->json, "state"), "pending");
    thd_resp_free(r);
    /* Retry of a pending task: 409 ESTATE. */
    r = thd_req(d, "POST", thd_p("/v1/tasks/%s/retry", id), NULL);
    thd_assert_error(r, 409, "ESTATE", NULL);
    thd_resp_free(r);
    free(id);

    /* Running (the built-in sleep handler): cancel_requested, then cancelled. */
    id = thd_submit(d, "{\"queue\": \"sleep\", \"payload\": {\"ms\": 120000}}");
    json_decref(thd_wait_state(d, id, "running"));
    r = thd_req(d, "POST", thd_p("/v1/tasks/%s/cancel", id), NULL);
    thd_assert_status(r, 200);
    assert_string_equal(thd_jstr(r->json, "state"), "running");
    assert_int_equal(thd_jbool(r->json, "cancel_requested"), 1);
    thd_resp_free(r);
    t = thd_wait_state(d, id, "cancelled");
    assert_int_equal(thd_jbool(t, "cancel_requested"), 1);
    json_decref(t);

    /* A cancelled sleep retried runs again; cancel it again. */
    r = thd_req(d, "POST", thd_p("/v1/tasks/%s/retry", id), NULL);
    thd_assert_status(r, 200);
    thd_resp_free(r);
    t = thd_wait_state(d, id, "running");
    assert_int_equal(thd_jint(t, "attempt", -1), 1);
    json_decref(t);
    r = thd_req(d, "POST", thd_p("/v1/tasks/%s/cancel", id), NULL);
    thd_assert_status(r, 200);
    thd_resp_free(r);
    json_decref(thd_wait_state(d, id, "cancelled"));
    free(id);

    /* Unknown (well-formed) ids: 404 ENOTFOUND. */
    const char *ghost = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    r = thd_req(d, "POST", thd_p("/v1/tasks/%s/cancel", ghost), NULL);
    thd_assert_error(r, 404, "ENOTFOUND", NULL);
    thd_resp_free(r);
    r = thd_req(d, "POST", thd_p("/v1/tasks/%s/retry", ghost), NULL);
    thd_assert_error(r, 404, "ENOTFOUND", NULL);
    thd_resp_free(r);
    r = thd_req(d, "GET", thd_p("/v1/tasks/%s", ghost), NULL);
    thd_assert_error(r, 404, "ENOTFOUND", NULL);
    thd_resp_free(r);
}

/* ---- queues ------------------------------------------------------------------ */

static void test_queues_counts_pause_purge(void **state)
{
    thd_daemon *d = D(state);
    for (int i = 0; i < 3; i++)
        free(thd_submit(d, "{\"queue\": \"ext-q\"}"));
    free(thd_submit(d, "{\"queue\": \"ext-q\", \"delay_ms\": 3600000}"));
    char *root = thd_submit(d, "{\"queue\": \"ext-q-root\"}");
    char *blocked = thd_submit(d, thd_p("{\"queue\": \"ext-q\", \"deps\": [\"%s\"]}", root));

    thd_resp *r = thd_req(d, "GET", "/v1/queues", NULL);
    thd_assert_status(r, 200);
    json_t *q = find_queue(r->json, "ext-q");
    if (!q)
        fail_msg("GET /v1/queues lacks ext-q: %.2000s", r->body);
    assert_int_equal(thd_jbool(q, "paused"), 0);
    assert_int_equal(thd_jint(q, "counts.pending", -1), 3);
    assert_int_equal(thd_jint(q, "counts.scheduled", -1), 1);
    assert_int_equal(thd_jint(q, "counts.blocked", -1), 1);
    static const char *const states[] = {"running",   "completed", "failed",
                                         "cancelled", "timeout",   "expired"};
    for (size_t i = 0; i < sizeof states / sizeof states[0]; i++)
        assert_int_equal(thd_jint(q, thd_p("counts.%s", states[i]), -1), 0);
    thd_resp_free(r);

    /* Pause the noop queue: tasks are accepted but not handed out. */
    r = thd_req(d, "POST", "/v1/queues/noop/pause", NULL);
    thd_assert_status(r, 200);
    assert_string_equal(thd_jstr(r->json, "name"), "noop");
    assert_int_equal(thd_jbool(r->json, "paused"), 1);
    thd_resp_free(r);
    char *held = thd_submit(d, "{\"queue\": \"noop\"}");
    thd_sleep_ms(500); /* long enough for an idle pool worker to have claimed it */
    json_t *t = thd_task(d, held);
    assert_string_equal(thd_jstr(t, "state"), "pending");
    json_decref(t);
    r = thd_req(d, "GET", "/v1/queues", NULL);
    q = find_queue(r->json, "noop");
    assert_non_null(q);
    assert_int_equal(thd_jbool(q, "paused"), 1);
    thd_resp_free(r);
    /* An external claim on a paused queue gets nothing either. */
    char *wid = thd_register(d, "pz", "ext-q");
    r = thd_req(d, "POST", "/v1/queues/ext-q/pause", NULL);
    thd_assert_status(r, 200);
    thd_resp_free(r);
    json_t *got = thd_claim(d, wid, "ext-q", 30000, 300);
    assert_int_equal(json_array_size(got), 0);
    json_decref(got);

    r = thd_req(d, "POST", "/v1/queues/noop/resume", NULL);
    thd_assert_status(r, 200);
    assert_string_equal(thd_jstr(r->json, "name"), "noop");
    assert_int_equal(thd_jbool(r->json, "paused"), 0);
    thd_resp_free(r);
    json_decref(thd_wait_state(d, held, "completed"));
    free(held);

    /* Purge ext-q: the 3 pending, the scheduled and the blocked one. */
    r = thd_req(d, "POST", "/v1/queues/ext-q/purge", NULL);
    thd_assert_status(r, 200);
    assert_int_equal(thd_jint(r->json, "purged", -1), 5);
    thd_resp_free(r);
    t = thd_task(d, blocked);
    assert_string_equal(thd_jstr(t, "state"), "cancelled");
    json_decref(t);
    t = thd_task(d, root);
    assert_string_equal(thd_jstr(t, "state"), "pending"); /* another queue */
    json_decref(t);
    r = thd_req(d, "GET", "/v1/queues", NULL);
    q = find_queue(r->json, "ext-q");
    assert_non_null(q);
    assert_int_equal(thd_jint(q, "counts.pending", -1), 0);
    assert_int_equal(thd_jint(q, "counts.cancelled", -1), 5);
    assert_int_equal(thd_jbool(q, "paused"), 1);
    thd_resp_free(r);
    free(wid);
    free(root);
    free(blocked);
}

/* ---- workers and stats ------------------------------------------------------- */

static void test_workers_and_stats(void **state)
{
    thd_daemon *d = D(state);
    char *wid = thd_register(d, "resizer-1", "ext-images");
    assert_true(strlen(wid) > 0);

    thd_resp *r = thd_req(d, "GET", "/v1/workers", NULL);
    thd_assert_status(r, 200);
    json_t *ws = thd_jget(r->json, "workers"), *w;
    assert_true(json_is_array(ws));
    size_t i;
    int pool = 0, ext = 0;
    json_array_foreach(ws, i, w)
    {
        const char *kind = thd_jstr(w, "kind");
        assert_non_null(kind);
        if (strcmp(kind, "pool") == 0) {
            pool++;
            static const char *const keys[] = {
                "id",      "state",        "pid",        "current_task",     "tasks_completed",
                "healthy", "tasks_failed", "started_at", "last_heartbeat_at"};
            for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
                if (!json_object_get(w, keys[k]))
                    fail_msg("pool worker lacks \"%s\": %s", keys[k], r->body);
        } else if (strcmp(kind, "external") == 0) {
            ext++;
            assert_string_equal(thd_jstr(w, "name"), "resizer-1");
            assert_string_equal(thd_jstr(w, "queues[0]"), "ext-images");
            assert_non_null(thd_jget(w, "last_seen_at"));
            if (!json_is_integer(thd_jget(w, "registered_at")))
                fail_msg("external worker without registered_at: %s", r->body);
            const char *id = thd_jstr(w, "id");
            if (id)
                assert_string_equal(id, wid);
        } else {
            fail_msg("unknown worker kind %s", kind);
        }
    }
    assert_true(pool >= 1); /* the default pool starts min_workers (2) */
    assert_int_equal(ext, 1);
    thd_resp_free(r);
    free(wid);

    r = thd_req(d, "GET", "/v1/stats", NULL);
    thd_assert_status(r, 200);
    json_t *engine = thd_jget(r->json, "engine");
    json_t *objs[] = {thd_jget(r->json, "pool"), NULL};
    assert_true(json_is_object(engine));
    assert_true(json_is_object(objs[0]));
    static const char *const ekeys[] = {
        "tasks",        "submittedTotal", "completedTotal", "failedAttemptsTotal",
        "retriesTotal", "throughput",     "averageRunTime", "averageWaitTime",
        "uptime"};
    for (size_t k = 0; k < sizeof ekeys / sizeof ekeys[0]; k++)
        if (!json_object_get(engine, ekeys[k]))
            fail_msg("GET /v1/stats: engine lacks %s: %.2000s", ekeys[k], r->body);
    assert_true(json_is_object(json_object_get(engine, "tasks")));
    static const char *const seed[] = {"totalWorkers",     "activeWorkers", "idleWorkers",
                                       "unhealthyWorkers", "pendingTasks",  "runningTasks",
                                       "completedTasks",   "failedTasks",   "averageTaskDuration",
                                       "averageQueueTime", "throughput",    "cpuUtilization",
                                       "memoryUtilization"};
    for (size_t k = 0; k < sizeof seed / sizeof seed[0]; k++)
        if (!has_key(objs, seed[k]))
            fail_msg("GET /v1/stats: pool lacks the seed metric %s: %.2000s", seed[k], r->body);
    thd_resp_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_healthz_readyz, thd_fx_setup, thd_fx_teardown),
        cmocka_unit_test_setup_teardown(test_metrics_prometheus, thd_fx_setup, thd_fx_teardown),
        cmocka_unit_test_setup_teardown(test_submit_and_get, thd_fx_setup, thd_fx_teardown),
        cmocka_unit_test_setup_teardown(test_noop_result, thd_fx_setup, thd_fx_teardown),
        cmocka_unit_test_setup_teardown(test_batch_deps_graph, thd_fx_setup, thd_fx_teardown),
        cmocka_unit_test_setup_teardown(test_list_filters_paging, thd_fx_setup, thd_fx_teardown),
        cmocka_unit_test_setup_teardown(test_cancel_and_retry, fast_heartbeat_setup,
                                        thd_fx_teardown),
        cmocka_unit_test_setup_teardown(test_queues_counts_pause_purge, thd_fx_setup,
                                        thd_fx_teardown),
        cmocka_unit_test_setup_teardown(test_workers_and_stats, thd_fx_setup, thd_fx_teardown),
    };
    return cmocka_run_group_tests_name("daemon_api", tests, NULL, NULL);
}
