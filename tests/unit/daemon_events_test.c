/*
 * Black-box tests of GET /v1/events (docs/API.md, Server-Sent Events): the
 * events of a task arrive in seq order from submitted to completed, the task
 * and queue filters keep only what they name, and a reconnect with
 * Last-Event-ID (header or query) gets exactly the events after that id. The
 * stream is read by libcurl in a background thread (tests/lib/daemon.c);
 * every wait is bounded.
 */
#include <stdlib.h>
#include <string.h>

#include "daemon.h"

#define D(state) ((thd_daemon *)*(state))

/* Opens `path` and fails unless the answer starts as an event stream. */
static thd_sse *open_stream(const thd_daemon *d, const char *path, const char *last_id)
{
    thd_sse *s = thd_sse_open(d, path, last_id);
    long st = thd_sse_wait_connected(s, THD_WAIT_MS);
    if (st != 200)
        fail_msg("GET %s: status %ld, curl %d (want 200 and a stream)", path, st,
                 thd_sse_curl_rc(s));
    /* Every stream opens with a ": connected" comment. */
    long long end = thd_now_ms() + THD_WAIT_MS;
    while (thd_sse_comments(s) == 0 && thd_now_ms() < end)
        thd_sleep_ms(5);
    if (thd_sse_comments(s) == 0)
        fail_msg("GET %s: no opening comment", path);
    const char *ct = thd_sse_content_type(s);
    if (!thtest_contains(ct, "text/event-stream"))
        fail_msg("GET %s: Content-Type \"%s\" (want text/event-stream)", path, ct);
    return s;
}

/* Fails unless the ids of the stream's events strictly increase, each event
 * has an id, and data.seq / data.type agree with the id: / event: lines. */
static void assert_well_formed(thd_sse *s)
{
    long long prev = -1;
    for (size_t i = 0; i < thd_sse_count(s); i++) {
        const thd_event *e = thd_sse_event(s, i);
        if (strcmp(e->type, "gap") == 0)
            continue;
        if (e->id < 0 || !e->json)
            fail_msg("event %zu (%s) has no id or no JSON data: %s", i, e->type, e->data);
        if (e->id <= prev)
            fail_msg("event %zu: id %lld after %lld (not in seq order)", i, e->id, prev);
        prev = e->id;
        assert_int_equal(thd_jint(e->json, "seq", -1), e->id);
        const char *type = thd_jstr(e->json, "type");
        if (!type || strcmp(type, e->type) != 0)
            fail_msg("event %lld: \"event: %s\" but data.type %s", e->id, e->type,
                     type ? type : "(none)");
        assert_true(thd_jint(e->json, "time", 0) > 1600000000000LL);
        assert_non_null(thd_jstr(e->json, "task"));
        assert_non_null(thd_jstr(e->json, "queue"));
        assert_non_null(thd_jstr(e->json, "state"));
    }
}

/* "submitted,ready,..." for the events of `task` (any task when NULL). */
static char *type_list(thd_sse *s, const char *task)
{
    size_t cap = 64 * thd_sse_count(s) + 1, used = 0;
    char *out = calloc(1, cap);
    assert_non_null(out);
    for (size_t i = 0; i < thd_sse_count(s); i++) {
        const thd_event *e = thd_sse_event(s, i);
        const char *t = thd_jstr(e->json, "task");
        if (task && (!t || strcmp(t, task) != 0))
            continue;
        used += (size_t)snprintf(out + used, cap - used, "%s%s", used ? "," : "", e->type);
    }
    return out;
}

static void test_task_lifecycle_in_order(void **state)
{
    thd_daemon *d = D(state);
    char *wid = thd_register(d, "ev-worker", "ext-ev");
    thd_sse *s = open_stream(d, "/v1/events?queue=ext-ev", NULL);

    char *id = thd_submit(d, "{\"queue\": \"ext-ev\", \"payload\": 1}");
    json_t *tasks = thd_claim(d, wid, "ext-ev", 30000, 20000);
    assert_int_equal(json_array_size(tasks), 1);
    long long lease = thd_jint(tasks, "[0].lease", 0);
    json_decref(tasks);
    thd_resp *r =
        thd_req(d, "POST", thd_p("/v1/tasks/%s/progress", id),
                thd_p("{\"lease\": %lld, \"percent\": 50, \"message\": \"half\"}", lease));
    thd_assert_status(r, 200);
    thd_resp_free(r);
    r = thd_req(d, "POST", thd_p("/v1/tasks/%s/complete", id),
                thd_p("{\"lease\": %lld, \"result\": 7}", lease));
    thd_assert_status(r, 200);
    thd_resp_free(r);

    assert_true(thd_sse_wait_for(s, "completed", id, THD_WAIT_MS));
    thd_sse_stop(s);
    assert_well_formed(s);
    char *types = type_list(s, NULL);
    assert_string_equal(types, "submitted,ready,assigned,started,progress,completed");
    free(types);
    for (size_t i = 0; i < thd_sse_count(s); i++) {
        const thd_event *e = thd_sse_event(s, i);
        assert_string_equal(thd_jstr(e->json, "task"), id);
        assert_string_equal(thd_jstr(e->json, "queue"), "ext-ev");
        if (strcmp(e->type, "progress") == 0) {
            assert_int_equal(thd_jint(e->json, "progress", -1), 50);
            assert_string_equal(thd_jstr(e->json, "message"), "half");
        }
        if (strcmp(e->type, "assigned") == 0)
            assert_string_equal(thd_jstr(e->json, "message"), wid); /* the worker id */
        if (strcmp(e->type, "completed") == 0) {
            assert_string_equal(thd_jstr(e->json, "state"), "completed");
            assert_int_equal(thd_jint(e->json, "attempt", -1), 1);
        }
        if (strcmp(e->type, "submitted") == 0)
            assert_string_equal(thd_jstr(e->json, "state"), "pending");
    }
    thd_sse_close(s);
    free(id);
    free(wid);
}

static void test_filters(void **state)
{
    thd_daemon *d = D(state);
    char *a = thd_submit(d, "{\"queue\": \"ext-f1\"}");
    char *b = thd_submit(d, "{\"queue\": \"ext-f1\"}");
    char *c = thd_submit(d, "{\"queue\": \"ext-f2\"}");
    thd_sse *by_task = open_stream(d, thd_p("/v1/events?task=%s", a), NULL);
    thd_sse *by_queue = open_stream(d, "/v1/events?queue=ext-f2", NULL);
    thd_sse *all = open_stream(d, "/v1/events", NULL);

    const char *order[] = {b, c, a};
    for (int i = 0; i < 3; i++) {
        thd_resp *r = thd_req(d, "POST", thd_p("/v1/tasks/%s/cancel", order[i]), NULL);
        thd_assert_status(r, 200);
        thd_resp_free(r);
    }
    /* The unfiltered stream sees all three; then the filtered ones must be done too. */
    assert_true(thd_sse_wait_for(all, "cancelled", a, THD_WAIT_MS));
    assert_true(thd_sse_wait_for(by_task, "cancelled", a, THD_WAIT_MS));
    assert_true(thd_sse_wait_for(by_queue, "cancelled", c, THD_WAIT_MS));
    thd_sleep_ms(300); /* room for anything that should not be there */
    thd_sse_stop(by_task);
    thd_sse_stop(by_queue);
    thd_sse_stop(all);
    assert_well_formed(by_task);
    assert_well_formed(by_queue);
    assert_well_formed(all);

    char *t = type_list(by_task, NULL);
    assert_string_equal(t, "cancelled");
    assert_string_equal(thd_jstr(thd_sse_event(by_task, 0)->json, "task"), a);
    free(t);
    t = type_list(by_queue, NULL);
    assert_string_equal(t, "cancelled");
    assert_string_equal(thd_jstr(thd_sse_event(by_queue, 0)->json, "task"), c);
    assert_string_equal(thd_jstr(thd_sse_event(by_queue, 0)->json, "queue"), "ext-f2");
    free(t);
    t = type_list(all, NULL);
    assert_string_equal(t, "cancelled,cancelled,cancelled");
    free(t);
    assert_string_equal(thd_jstr(thd_sse_event(all, 0)->json, "task"), b);
    assert_string_equal(thd_jstr(thd_sse_event(all, 2)->json, "task"), a);

    thd_sse_close(by_task);
    thd_sse_close(by_queue);
    thd_sse_close(all);
    free(a);
    free(b);
    free(c);
}

/* Fails unless `got` holds exactly the events of `want` whose id > after. */
static void assert_tail(thd_sse *want, thd_sse *got, long long after)
{
    size_t k = 0;
    for (size_t i = 0; i < thd_sse_count(want); i++) {
        const thd_event *w = thd_sse_event(want, i);
        if (w->id <= after)
            continue;
        const thd_event *g = thd_sse_event(got, k++);
        if (!g)
            fail_msg("resumed after %lld: event %lld (%s) missing", after, w->id, w->type);
        if (g->id != w->id || strcmp(g->type, w->type) != 0 || strcmp(g->data, w->data) != 0)
            fail_msg("resumed after %lld: got %lld %s %s, want %lld %s %s", after, g->id, g->type,
                     g->data, w->id, w->type, w->data);
    }
    if (k != thd_sse_count(got))
        fail_msg("resumed after %lld: %zu events, want %zu (duplicates or extra: first extra "
                 "%lld %s)",
                 after, thd_sse_count(got), k, thd_sse_event(got, k)->id,
                 thd_sse_event(got, k)->type);
}

static void test_resume_last_event_id(void **state)
{
    thd_daemon *d = D(state);
    thd_sse *first = open_stream(d, "/v1/events?queue=noop", NULL);
    char *ids[3];
    for (int i = 0; i < 3; i++)
        ids[i] = thd_submit(d, "{\"queue\": \"noop\"}");
    for (int i = 0; i < 3; i++)
        assert_true(thd_sse_wait_for(first, "completed", ids[i], THD_WAIT_MS));
    thd_sleep_ms(200);
    thd_sse_stop(first);
    assert_well_formed(first);
    size_t n = thd_sse_count(first);
    assert_true(n >= 3 * 5); /* submitted ready assigned started completed */
    for (int i = 0; i < 3; i++) {
        char *t = type_list(first, ids[i]);
        if (strncmp(t, "submitted,ready,assigned,started", 32) != 0 ||
            strcmp(t + strlen(t) - 9, "completed") != 0)
            fail_msg("task %d events: %s", i, t);
        free(t);
    }

    /* Resume from several points, by header and by query parameter. */
    size_t picks[] = {0, n / 2, n - 2, n - 1};
    for (size_t p = 0; p < sizeof picks / sizeof picks[0]; p++) {
        long long after = thd_sse_event(first, picks[p])->id;
        size_t want = n - picks[p] - 1;
        char idtext[32];
        snprintf(idtext, sizeof idtext, "%lld", after);
        for (int how = 0; how < 2; how++) {
            thd_sse *again =
                how == 0
                    ? open_stream(d, "/v1/events?queue=noop", idtext)
                    : open_stream(d, thd_p("/v1/events?queue=noop&last_event_id=%s", idtext), NULL);
            thd_sse_wait_count(again, want, THD_WAIT_MS);
            thd_sleep_ms(200); /* duplicates would show up here */
            thd_sse_stop(again);
            assert_well_formed(again);
            assert_tail(first, again, after);
            thd_sse_close(again);
        }
    }

    /* Last-Event-ID 0: everything the server holds for the queue. */
    thd_sse *all = open_stream(d, "/v1/events?queue=noop", "0");
    thd_sse_wait_count(all, n, THD_WAIT_MS);
    thd_sleep_ms(200);
    thd_sse_stop(all);
    assert_tail(first, all, 0);
    thd_sse_close(all);

    /* A resumed stream continues live. */
    long long last = thd_sse_event(first, n - 1)->id;
    thd_sse *live = open_stream(d, "/v1/events?queue=noop", thd_p("%lld", last));
    char *more = thd_submit(d, "{\"queue\": \"noop\"}");
    assert_true(thd_sse_wait_for(live, "completed", more, THD_WAIT_MS));
    thd_sse_stop(live);
    assert_well_formed(live);
    assert_true(thd_sse_event(live, 0)->id > last);
    char *t = type_list(live, NULL);
    assert_int_equal(strncmp(t, "submitted,ready", 15), 0);
    free(t);
    thd_sse_close(live);
    free(more);
    for (int i = 0; i < 3; i++)
        free(ids[i]);
    thd_sse_close(first);
}

/* With a small buffer, resuming from an id already dropped starts with gap. */
static void test_gap_when_dropped(void **state)
{
    (void)state;
    char *dir = thd_newdir("gap");
    char *cfg = thd_fmt("%s/taskhive.ini", dir);
    thd_write_file(cfg, "[server]\nevent_buffer = 16\n");
    const char *extra[] = {"--config", cfg, NULL};
    thd_daemon *d = thd_start(dir, extra);
    *state = d;
    thd_sse *first = open_stream(d, "/v1/events", NULL);
    char *last = NULL;
    for (int i = 0; i < 20; i++) { /* 40+ events: submitted + ready + cancelled */
        free(last);
        last = thd_submit(d, "{\"queue\": \"ext-gap\"}");
        thd_resp *r = thd_req(d, "POST", thd_p("/v1/tasks/%s/cancel", last), NULL);
        thd_assert_status(r, 200);
        thd_resp_free(r);
    }
    assert_true(thd_sse_wait_for(first, "cancelled", last, THD_WAIT_MS));
    thd_sse_stop(first);
    long long first_id = thd_sse_event(first, 0)->id;
    thd_sse *resumed = open_stream(d, "/v1/events", thd_p("%lld", first_id));
    assert_true(thd_sse_wait_for(resumed, "cancelled", last, THD_WAIT_MS));
    thd_sleep_ms(200);
    thd_sse_stop(resumed);
    assert_true(thd_sse_count(resumed) >= 2);
    const thd_event *gap = thd_sse_event(resumed, 0);
    assert_string_equal(gap->type, "gap");
    assert_int_equal(gap->id, -1); /* no id: line */
    /* data names the first event still held: the one that follows. */
    assert_int_equal(thd_jint(gap->json, "first_available", -1), thd_sse_event(resumed, 1)->id);
    assert_true(thd_jbool(gap->json, "restarted") != 1);
    assert_true(thd_sse_count(resumed) <= 17);
    assert_well_formed(resumed);
    /* What follows the gap is the newest tail of the first stream. */
    const thd_event *last_ev = thd_sse_event(resumed, thd_sse_count(resumed) - 1);
    assert_int_equal(last_ev->id, thd_sse_event(first, thd_sse_count(first) - 1)->id);
    thd_sse_close(resumed);
    thd_sse_close(first);
    free(last);
    free(cfg);
    free(dir);
}

/* An idle stream gets a ": keepalive" comment every 15 s (the count skips
 * whatever comments arrive in the first second, e.g. a greeting). */
static void test_keepalive(void **state)
{
    thd_daemon *d = D(state);
    thd_sse *s = open_stream(d, "/v1/events?queue=ext-quiet", NULL);
    thd_sleep_ms(1000);
    size_t first = thd_sse_comments(s);
    long long end = thd_now_ms() + 25000;
    while (thd_sse_comments(s) == first && thd_now_ms() < end)
        thd_sleep_ms(100);
    thd_sse_stop(s);
    if (thd_sse_comments(s) == first)
        fail_msg("no comment line on an idle stream within 26 s (docs: every 15 s)");
    assert_int_equal(thd_sse_count(s), 0);
    thd_sse_close(s);
}

/* An id this process never reached (a client of the previous run): a gap
 * saying "restarted", then every event held. */
static void test_gap_after_restart(void **state)
{
    thd_daemon *d = D(state);
    thd_sse *first = open_stream(d, "/v1/events", NULL);
    char *a = thd_submit(d, "{\"queue\": \"ext-rs\"}");
    char *b = thd_submit(d, "{\"queue\": \"ext-rs\"}");
    assert_true(thd_sse_wait_for(first, "ready", b, THD_WAIT_MS));
    thd_sse_stop(first);
    size_t n = thd_sse_count(first);
    thd_sse *s = open_stream(d, "/v1/events", "1000000");
    thd_sse_wait_count(s, n + 1, THD_WAIT_MS);
    thd_sleep_ms(200);
    thd_sse_stop(s);
    assert_true(thd_sse_count(s) >= 1);
    const thd_event *gap = thd_sse_event(s, 0);
    assert_string_equal(gap->type, "gap");
    assert_int_equal(thd_jbool(gap->json, "restarted"), 1);
    assert_int_equal(thd_sse_count(s), n + 1);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(thd_sse_event(s, i + 1)->id, thd_sse_event(first, i)->id);
        assert_string_equal(thd_sse_event(s, i + 1)->type, thd_sse_event(first, i)->type);
    }
    assert_int_equal(thd_jint(gap->json, "first_available", -1), thd_sse_event(first, 0)->id);
    thd_sse_close(s);
    thd_sse_close(first);
    free(a);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_task_lifecycle_in_order, thd_fx_setup,
                                        thd_fx_teardown),
        cmocka_unit_test_setup_teardown(test_filters, thd_fx_setup, thd_fx_teardown),
        cmocka_unit_test_setup_teardown(test_resume_last_event_id, thd_fx_setup, thd_fx_teardown),
        cmocka_unit_test_teardown(test_gap_when_dropped, thd_fx_teardown),
        cmocka_unit_test_setup_teardown(test_gap_after_restart, thd_fx_setup, thd_fx_teardown),
        cmocka_unit_test_setup_teardown(test_keepalive, thd_fx_setup, thd_fx_teardown),
    };
    return cmocka_run_group_tests_name("daemon_events", tests, NULL, NULL);
}
