/*
 * Black-box tests of the external-worker protocol of the daemon (docs/API.md,
 * "External workers"): register, long-poll claim, heartbeat, progress, log,
 * complete, fail with retries, stale leases, lease expiry and cancellation of
 * a running task. One fresh daemon per test; the queues are ones no built-in
 * handler serves, so only this test's worker takes their tasks.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"

#define D(state) ((thd_daemon *)*(state))

/* A claim answered in another thread (plain libcurl: no cmocka there). */
typedef struct claim_job {
    const thd_daemon *d;
    char path[128];
    char body[256];
    thd_resp *resp;
} claim_job;

static void *claim_main(void *arg)
{
    claim_job *j = arg;
    j->resp =
        thd_http(j->d->url, "POST", j->path, j->d->token, NULL, j->body, strlen(j->body), 90000);
    return NULL;
}

/* The lease token of claimed task `t` (asserts it is a positive integer). */
static long long lease_of(json_t *t)
{
    json_t *l = thd_jget(t, "lease");
    if (!json_is_integer(l) || json_integer_value(l) <= 0)
        fail_msg("claimed task without a positive integer \"lease\"");
    return (long long)json_integer_value(l);
}

/* POST /v1/tasks/ID/VERB with `body`. */
static thd_resp *task_post(const thd_daemon *d, const char *id, const char *verb, const char *body)
{
    return thd_req(d, "POST", thd_p("/v1/tasks/%s/%s", id, verb), body);
}

/* Claims one task of `queue` (waiting up to 20 s) and checks it is `id`. */
static json_t *claim_one(const thd_daemon *d, const char *wid, const char *queue, const char *id,
                         long lease_ms)
{
    json_t *tasks = thd_claim(d, wid, queue, lease_ms, 20000);
    assert_int_equal(json_array_size(tasks), 1);
    json_t *t = json_incref(json_array_get(tasks, 0));
    json_decref(tasks);
    if (id)
        assert_string_equal(thd_jstr(t, "id"), id);
    return t;
}

static void test_register_and_long_poll(void **state)
{
    thd_daemon *d = D(state);
    char *wid = thd_register(d, "resizer-1", "ext-images");

    /* Nothing ready, wait_ms 0: an empty answer at once; 300: empty after. */
    json_t *none = thd_claim(d, wid, "ext-images", 30000, 0);
    assert_int_equal(json_array_size(none), 0);
    json_decref(none);
    long long t0 = thd_now_ms();
    none = thd_claim(d, wid, "ext-images", 30000, 300);
    assert_int_equal(json_array_size(none), 0);
    assert_true(thd_now_ms() - t0 >= 250); /* it did hold the request */
    json_decref(none);

    /* A claim waiting (no "queues": the registered ones) is answered by a later submit. */
    claim_job job = {.d = d};
    snprintf(job.path, sizeof job.path, "/v1/workers/%s/claim", wid);
    snprintf(job.body, sizeof job.body,
             "{\"max_tasks\": 1, \"lease_ms\": 30000, \"wait_ms\": 30000}");
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, claim_main, &job), 0);
    thd_sleep_ms(300); /* let the claim park (not needed for correctness) */
    char *id = thd_submit(d, "{\"queue\": \"ext-images\", \"payload\": {\"img\": \"a.png\"}, "
                             "\"timeout_ms\": 5000, \"metadata\": {\"m\": 1}}");
    pthread_join(th, NULL);
    thd_assert_status(job.resp, 200);
    json_t *tasks = thd_jget(job.resp->json, "tasks");
    assert_int_equal(json_array_size(tasks), 1);
    json_t *t = json_array_get(tasks, 0);
    assert_string_equal(thd_jstr(t, "id"), id);
    assert_string_equal(thd_jstr(t, "queue"), "ext-images");
    assert_string_equal(thd_jstr(t, "payload.img"), "a.png");
    assert_int_equal(thd_jint(t, "attempt", -1), 1);
    assert_int_equal(thd_jint(t, "timeout_ms", -1), 5000);
    assert_int_equal(thd_jint(t, "metadata.m", -1), 1);
    assert_true(json_is_array(thd_jget(t, "deps")));
    lease_of(t);
    assert_true(thd_jint(t, "lease_expires_at", 0) > 1600000000000LL);
    thd_resp_free(job.resp);

    json_t *task = thd_task(d, id);
    assert_string_equal(thd_jstr(task, "state"), "running");
    assert_non_null(thd_jstr(task, "worker"));
    assert_true(thd_jint(task, "lease_expires_at", 0) > 0);
    json_decref(task);
    free(id);
    free(wid);
}

static void test_full_lifecycle(void **state)
{
    thd_daemon *d = D(state);
    char *wid = thd_register(d, "w-life", "ext-life");
    char *id = thd_submit(d, "{\"queue\": \"ext-life\", \"payload\": [1, 2, 3]}");
    json_t *t = claim_one(d, wid, "ext-life", id, 30000);
    long long lease = lease_of(t);
    json_decref(t);

    thd_resp *r =
        task_post(d, id, "heartbeat", thd_p("{\"lease\": %lld, \"extend_ms\": 0}", lease));
    thd_assert_status(r, 200);
    assert_int_equal(thd_jbool(r->json, "cancel_requested"), 0);
    thd_resp_free(r);
    json_t *before = thd_task(d, id);
    r = task_post(d, id, "heartbeat", thd_p("{\"lease\": %lld, \"extend_ms\": 600000}", lease));
    thd_assert_status(r, 200);
    thd_resp_free(r);
    json_t *after = thd_task(d, id);
    assert_true(thd_jint(after, "lease_expires_at", 0) > thd_jint(before, "lease_expires_at", 0));
    json_decref(before);
    json_decref(after);

    r = task_post(d, id, "progress",
                  thd_p("{\"lease\": %lld, \"percent\": 40, \"step\": 2, \"total_steps\": 5, "
                        "\"message\": \"fetching\"}",
                        lease));
    thd_assert_status(r, 200);
    thd_resp_free(r);
    t = thd_task(d, id);
    assert_int_equal(thd_jint(t, "progress.percent", -1), 40);
    assert_int_equal(thd_jint(t, "progress.step", -1), 2);
    assert_int_equal(thd_jint(t, "progress.total_steps", -1), 5);
    assert_string_equal(thd_jstr(t, "progress.message"), "fetching");
    json_decref(t);

    r = task_post(d, id, "log",
                  thd_p("{\"lease\": %lld, \"level\": \"warn\", \"message\": \"slow disk\", "
                        "\"data\": {\"ms\": 900}}",
                        lease));
    thd_assert_status(r, 200);
    thd_resp_free(r);
    r = task_post(d, id, "log",
                  thd_p("{\"lease\": %lld, \"level\": \"info\", \"message\": \"two\"}", lease));
    thd_assert_status(r, 200);
    thd_resp_free(r);

    r = thd_req(d, "GET", thd_p("/v1/tasks/%s/logs", id), NULL);
    thd_assert_status(r, 200);
    json_t *logs = thd_jget(r->json, "logs");
    assert_int_equal(json_array_size(logs), 2);
    assert_int_equal(thd_jint(logs, "[0].seq", -1), 1);
    assert_string_equal(thd_jstr(logs, "[0].level"), "warn");
    assert_string_equal(thd_jstr(logs, "[0].message"), "slow disk");
    assert_int_equal(thd_jint(logs, "[0].attempt", -1), 1);
    assert_int_equal(thd_jint(logs, "[0].data.ms", -1), 900);
    assert_true(thd_jint(logs, "[0].time", 0) > 1600000000000LL);
    assert_int_equal(thd_jint(logs, "[1].seq", -1), 2);
    assert_string_equal(thd_jstr(logs, "[1].message"), "two");
    thd_resp_free(r);
    r = thd_req(d, "GET", thd_p("/v1/tasks/%s/logs?after=1", id), NULL);
    thd_assert_status(r, 200);
    assert_int_equal(json_array_size(thd_jget(r->json, "logs")), 1);
    assert_int_equal(thd_jint(r->json, "logs[0].seq", -1), 2);
    thd_resp_free(r);
    r = thd_req(d, "GET", thd_p("/v1/tasks/%s/logs?limit=1", id), NULL);
    thd_assert_status(r, 200);
    assert_int_equal(json_array_size(thd_jget(r->json, "logs")), 1);
    assert_int_equal(thd_jint(r->json, "logs[0].seq", -1), 1);
    thd_resp_free(r);

    r = task_post(d, id, "complete",
                  thd_p("{\"lease\": %lld, \"result\": {\"thumb\": \"a-small.png\"}}", lease));
    thd_assert_status(r, 200);
    thd_resp_free(r);
    t = thd_task(d, id);
    assert_string_equal(thd_jstr(t, "state"), "completed");
    assert_string_equal(thd_jstr(t, "result.thumb"), "a-small.png");
    assert_true(thd_jint(t, "finished_at", 0) >= thd_jint(t, "started_at", 0));
    json_decref(t);
    r = thd_req(d, "GET", thd_p("/v1/tasks/%s/result", id), NULL);
    thd_assert_status(r, 200);
    assert_string_equal(thd_jstr(r->json, "state"), "completed");
    assert_string_equal(thd_jstr(r->json, "result.thumb"), "a-small.png");
    thd_resp_free(r);

    /* The same lease again: 409, not recorded twice. */
    r = task_post(d, id, "complete", thd_p("{\"lease\": %lld, \"result\": 2}", lease));
    assert_int_equal(r->status, 409);
    thd_resp_free(r);
    t = thd_task(d, id);
    assert_string_equal(thd_jstr(t, "result.thumb"), "a-small.png");
    json_decref(t);
    free(id);
    free(wid);
}

static void test_fail_retry_then_permanent(void **state)
{
    thd_daemon *d = D(state);
    char *wid = thd_register(d, "w-fail", "ext-fail");
    char *id = thd_submit(d, "{\"queue\": \"ext-fail\", \"retry\": {\"max_retries\": 2, "
                             "\"initial_delay_ms\": 0, \"max_delay_ms\": 0, \"multiplier\": 1, "
                             "\"jitter\": 0}}");

    /* Attempt 1 fails (retryable): back to pending, error kept. */
    json_t *t = claim_one(d, wid, "ext-fail", id, 30000);
    assert_int_equal(thd_jint(t, "attempt", -1), 1);
    long long lease = lease_of(t);
    json_decref(t);
    thd_resp *r =
        task_post(d, id, "fail",
                  thd_p("{\"lease\": %lld, \"error\": \"disk full\", \"permanent\": false, "
                        "\"timeout\": false}",
                        lease));
    thd_assert_status(r, 200);
    thd_resp_free(r);
    t = thd_task(d, id);
    assert_string_equal(thd_jstr(t, "state"), "pending");
    assert_string_equal(thd_jstr(t, "error"), "disk full");
    assert_int_equal(thd_jint(t, "attempt", -1), 1);
    json_decref(t);

    /* Attempt 2 fails for good. */
    t = claim_one(d, wid, "ext-fail", id, 30000);
    assert_int_equal(thd_jint(t, "attempt", -1), 2);
    long long lease2 = lease_of(t);
    assert_true(lease2 != lease);
    json_decref(t);
    /* The first attempt's lease is stale now. */
    r = task_post(d, id, "fail", thd_p("{\"lease\": %lld, \"error\": \"late\"}", lease));
    thd_assert_error(r, 409, "ESTALE", NULL);
    thd_resp_free(r);
    r = task_post(
        d, id, "fail",
        thd_p("{\"lease\": %lld, \"error\": \"bad input\", \"permanent\": true}", lease2));
    thd_assert_status(r, 200);
    thd_resp_free(r);
    t = thd_task(d, id);
    assert_string_equal(thd_jstr(t, "state"), "failed");
    assert_string_equal(thd_jstr(t, "error"), "bad input");
    json_decref(t);

    /* Retry runs it again, counting attempts afresh (docs/ARCHITECTURE.md). */
    r = task_post(d, id, "retry", NULL);
    thd_assert_status(r, 200);
    assert_string_equal(thd_jstr(r->json, "state"), "pending");
    assert_int_equal(thd_jint(r->json, "attempt", -1), 0);
    assert_true(json_is_null(thd_jget(r->json, "error")));
    thd_resp_free(r);
    t = claim_one(d, wid, "ext-fail", id, 30000);
    assert_int_equal(thd_jint(t, "attempt", -1), 1);
    lease = lease_of(t);
    json_decref(t);

    /* timeout: true ends it as timeout once out of attempts (permanent here). */
    r = task_post(d, id, "fail",
                  thd_p("{\"lease\": %lld, \"error\": \"too slow\", \"timeout\": true, "
                        "\"permanent\": true}",
                        lease));
    thd_assert_status(r, 200);
    thd_resp_free(r);
    t = thd_task(d, id);
    const char *st = thd_jstr(t, "state");
    assert_true(st && (strcmp(st, "timeout") == 0 || strcmp(st, "failed") == 0));
    json_decref(t);
    free(id);
    free(wid);
}

static void test_stale_lease(void **state)
{
    thd_daemon *d = D(state);
    char *wid = thd_register(d, "w-stale", "ext-stale");
    char *id = thd_submit(d, "{\"queue\": \"ext-stale\"}");
    json_t *t = claim_one(d, wid, "ext-stale", id, 30000);
    long long lease = lease_of(t);
    json_decref(t);

    static const char *const verbs[] = {"heartbeat", "progress", "log", "complete", "fail"};
    static const char *const extra[] = {"", ", \"percent\": 5", ", \"message\": \"m\"",
                                        ", \"result\": 1", ", \"error\": \"e\""};
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++) {
        thd_resp *r = task_post(d, id, verbs[i], thd_p("{\"lease\": %lld%s}", lease + 1, extra[i]));
        if (r->status != 409)
            fail_msg("%s with a wrong lease: status %ld (want 409 ESTALE): %s", verbs[i], r->status,
                     r->body);
        thd_assert_error(r, 409, "ESTALE", NULL);
        thd_resp_free(r);
    }
    /* Nothing was recorded: still running, and the right lease works. */
    t = thd_task(d, id);
    assert_string_equal(thd_jstr(t, "state"), "running");
    json_decref(t);
    thd_resp *r = task_post(d, id, "complete", thd_p("{\"lease\": %lld, \"result\": null}", lease));
    thd_assert_status(r, 200);
    thd_resp_free(r);
    json_decref(thd_wait_state(d, id, "completed"));
    free(id);
    free(wid);
}

static void test_lease_expiry(void **state)
{
    thd_daemon *d = D(state);
    char *wid = thd_register(d, "w-exp", "ext-exp");
    char *id = thd_submit(d, "{\"queue\": \"ext-exp\", \"retry\": {\"max_retries\": 3, "
                             "\"initial_delay_ms\": 0, \"max_delay_ms\": 0, \"multiplier\": 1, "
                             "\"jitter\": 0}}");
    json_t *t = claim_one(d, wid, "ext-exp", id, 500);
    long long lease1 = lease_of(t);
    json_decref(t);

    /* Never heartbeat: after the lease runs out the task is handed out again. */
    char *wid2 = thd_register(d, "w-exp-2", "ext-exp");
    t = claim_one(d, wid2, "ext-exp", id, 30000);
    assert_int_equal(thd_jint(t, "attempt", -1), 2);
    long long lease2 = lease_of(t);
    assert_true(lease2 != lease1);
    json_decref(t);

    /* The old lease cannot record anything. */
    thd_resp *r =
        task_post(d, id, "complete", thd_p("{\"lease\": %lld, \"result\": \"old\"}", lease1));
    thd_assert_error(r, 409, "ESTALE", NULL);
    thd_resp_free(r);
    r = task_post(d, id, "heartbeat", thd_p("{\"lease\": %lld}", lease1));
    thd_assert_error(r, 409, "ESTALE", NULL);
    thd_resp_free(r);

    r = task_post(d, id, "complete", thd_p("{\"lease\": %lld, \"result\": \"new\"}", lease2));
    thd_assert_status(r, 200);
    thd_resp_free(r);
    t = thd_task(d, id);
    assert_string_equal(thd_jstr(t, "state"), "completed");
    assert_string_equal(thd_jstr(t, "result"), "new");
    assert_int_equal(thd_jint(t, "attempt", -1), 2);
    json_decref(t);
    free(id);
    free(wid);
    free(wid2);
}

static void test_cancel_running(void **state)
{
    thd_daemon *d = D(state);
    char *wid = thd_register(d, "w-cancel", "ext-cancel");
    char *id = thd_submit(d, "{\"queue\": \"ext-cancel\"}");
    json_t *t = claim_one(d, wid, "ext-cancel", id, 30000);
    long long lease = lease_of(t);
    json_decref(t);

    thd_resp *r = task_post(d, id, "cancel", "{\"reason\": \"user asked\"}");
    thd_assert_status(r, 200);
    assert_string_equal(thd_jstr(r->json, "state"), "running");
    assert_int_equal(thd_jbool(r->json, "cancel_requested"), 1);
    thd_resp_free(r);
    t = thd_task(d, id);
    assert_string_equal(thd_jstr(t, "state"), "running");
    assert_int_equal(thd_jbool(t, "cancel_requested"), 1);
    json_decref(t);

    r = task_post(d, id, "heartbeat", thd_p("{\"lease\": %lld}", lease));
    thd_assert_status(r, 200);
    assert_int_equal(thd_jbool(r->json, "cancel_requested"), 1);
    thd_resp_free(r);

    r = task_post(d, id, "fail", thd_p("{\"lease\": %lld, \"error\": \"stopped\"}", lease));
    thd_assert_status(r, 200);
    thd_resp_free(r);
    t = thd_task(d, id);
    assert_string_equal(thd_jstr(t, "state"), "cancelled");
    json_decref(t);
    /* Not handed out again. */
    json_t *none = thd_claim(d, wid, "ext-cancel", 30000, 200);
    assert_int_equal(json_array_size(none), 0);
    json_decref(none);
    free(id);
    free(wid);
}

static void test_claim_batch_and_priority(void **state)
{
    thd_daemon *d = D(state);
    char *wid = thd_register(d, "w-batch", "ext-prio");
    char *low = thd_submit(d, "{\"queue\": \"ext-prio\", \"priority\": \"low\"}");
    char *crit = thd_submit(d, "{\"queue\": \"ext-prio\", \"priority\": \"critical\"}");
    char *mid = thd_submit(d, "{\"queue\": \"ext-prio\", \"priority\": 50}");
    thd_resp *r = thd_req(d, "POST", thd_p("/v1/workers/%s/claim", wid),
                          "{\"max_tasks\": 2, \"lease_ms\": 30000, \"wait_ms\": 0}");
    thd_assert_status(r, 200);
    json_t *tasks = thd_jget(r->json, "tasks");
    assert_int_equal(json_array_size(tasks), 2);
    assert_string_equal(thd_jstr(tasks, "[0].id"), crit);
    assert_string_equal(thd_jstr(tasks, "[1].id"), mid);
    assert_true(thd_jint(tasks, "[0].lease", 0) != thd_jint(tasks, "[1].lease", 0));
    thd_resp_free(r);
    json_t *t = claim_one(d, wid, "ext-prio", low, 30000);
    json_decref(t);
    free(low);
    free(crit);
    free(mid);
    free(wid);
}

/* A long-poll claim whose client hung up must not take the next task: that
 * lease would sit with nobody until it expires. */
static void test_abandoned_claim_gets_nothing(void **state)
{
    thd_daemon *d = D(state);
    char *wid = thd_register(d, "w-gone", "ext-gone");
    const char *body = "{\"max_tasks\": 1, \"lease_ms\": 60000, \"wait_ms\": 20000}";
    /* The client gives up after 300 ms; the server still holds the claim. */
    thd_resp *r = thd_http(d->url, "POST", thd_p("/v1/workers/%s/claim", wid), d->token, NULL, body,
                           strlen(body), 300);
    assert_int_equal(r->status, 0);
    thd_resp_free(r);
    thd_sleep_ms(200);
    char *id = thd_submit(d, "{\"queue\": \"ext-gone\"}");
    char *wid2 = thd_register(d, "w-here", "ext-gone");
    json_t *got = thd_claim(d, wid2, "ext-gone", 30000, 5000);
    if (json_array_size(got) != 1) {
        json_t *t = thd_task(d, id);
        char *dump = thd_jdump(t);
        fail_msg("the task went to a claim whose client had hung up: %s", dump);
    }
    assert_string_equal(thd_jstr(got, "[0].id"), id);
    assert_int_equal(thd_jint(got, "[0].attempt", -1), 1);
    json_decref(got);
    free(id);
    free(wid);
    free(wid2);
}

/* ---- many clients at once ---------------------------------------------------- */

enum { CN = 200, CSUB = 2, CWORK = 4 };

typedef struct conc {
    const thd_daemon *d;
    pthread_mutex_t mu;
    char wid[CWORK][64];
    char done[CN * 2][27]; /* completions answered 200 */
    size_t ndone;
    int errors; /* unexpected answers */
    long long deadline;
} conc;

typedef struct conc_arg {
    conc *c;
    int index;
} conc_arg;

static void *conc_submit(void *arg)
{
    conc_arg *a = arg;
    for (int i = 0; i < CN / CSUB; i++) {
        char body[96];
        snprintf(body, sizeof body, "{\"queue\": \"ext-conc\", \"payload\": %d}",
                 a->index * 1000 + i);
        thd_resp *r =
            thd_http(a->c->d->url, "POST", "/v1/tasks", NULL, NULL, body, strlen(body), 30000);
        if (r->status != 201) {
            pthread_mutex_lock(&a->c->mu);
            a->c->errors++;
            pthread_mutex_unlock(&a->c->mu);
        }
        thd_resp_free(r);
    }
    return NULL;
}

static void *conc_work(void *arg)
{
    conc_arg *a = arg;
    conc *c = a->c;
    char path[128];
    snprintf(path, sizeof path, "/v1/workers/%s/claim", c->wid[a->index]);
    const char *cb = "{\"max_tasks\": 2, \"lease_ms\": 60000, \"wait_ms\": 300}";
    for (;;) {
        pthread_mutex_lock(&c->mu);
        int over = c->ndone >= CN || thd_now_ms() > c->deadline;
        pthread_mutex_unlock(&c->mu);
        if (over)
            break;
        thd_resp *r = thd_http(c->d->url, "POST", path, NULL, NULL, cb, strlen(cb), 30000);
        json_t *tasks = thd_jget(r->json, "tasks"), *t;
        size_t i;
        json_array_foreach(tasks, i, t)
        {
            const char *id = thd_jstr(t, "id");
            char cpath[128], body[128];
            snprintf(cpath, sizeof cpath, "/v1/tasks/%s/complete", id ? id : "none");
            snprintf(body, sizeof body, "{\"lease\": %lld, \"result\": %d}",
                     thd_jint(t, "lease", 0), a->index);
            thd_resp *cr =
                thd_http(c->d->url, "POST", cpath, NULL, NULL, body, strlen(body), 30000);
            pthread_mutex_lock(&c->mu);
            if (cr->status == 200 && id && c->ndone < CN * 2)
                snprintf(c->done[c->ndone++], 27, "%s", id);
            else
                c->errors++;
            pthread_mutex_unlock(&c->mu);
            thd_resp_free(cr);
        }
        if (r->status != 200) {
            pthread_mutex_lock(&c->mu);
            c->errors++;
            pthread_mutex_unlock(&c->mu);
        }
        thd_resp_free(r);
    }
    return NULL;
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* Submitters, workers and an event stream at once: every task completes
 * exactly once, and the stream reports exactly one completion per task. */
static void test_concurrent_workers_exactly_once(void **state)
{
    thd_daemon *d = D(state);
    conc *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->d = d;
    c->deadline = thd_now_ms() + 120000;
    pthread_mutex_init(&c->mu, NULL);
    for (int i = 0; i < CWORK; i++) {
        char *wid = thd_register(d, thd_p("w-conc-%d", i), "ext-conc");
        snprintf(c->wid[i], sizeof c->wid[i], "%s", wid);
        free(wid);
    }
    thd_sse *s = thd_sse_open(d, "/v1/events?queue=ext-conc", NULL);
    assert_int_equal(thd_sse_wait_connected(s, THD_WAIT_MS), 200);

    pthread_t th[CSUB + CWORK];
    conc_arg args[CSUB + CWORK];
    for (int i = 0; i < CSUB + CWORK; i++) {
        args[i].c = c;
        args[i].index = i < CSUB ? i : i - CSUB;
        assert_int_equal(pthread_create(&th[i], NULL, i < CSUB ? conc_submit : conc_work, &args[i]),
                         0);
    }
    for (int i = 0; i < CSUB + CWORK; i++)
        pthread_join(th[i], NULL);
    if (c->errors || c->ndone != CN)
        fail_msg("%zu of %d completions, %d unexpected answers", c->ndone, CN, c->errors);
    qsort(c->done, c->ndone, sizeof c->done[0], cmp_id);
    for (size_t i = 1; i < c->ndone; i++)
        if (strcmp(c->done[i - 1], c->done[i]) == 0)
            fail_msg("task %s completed twice", c->done[i]);

    thd_resp *r = thd_req(d, "GET", "/v1/tasks?queue=ext-conc&state=completed&limit=1000", NULL);
    thd_assert_status(r, 200);
    assert_int_equal(json_array_size(thd_jget(r->json, "tasks")), CN);
    thd_resp_free(r);

    /* The stream: one completed event per task, ids increasing. */
    long long end = thd_now_ms() + THD_WAIT_MS;
    while (thd_sse_count_type(s, "completed") < CN && thd_now_ms() < end)
        thd_sleep_ms(20);
    thd_sleep_ms(200); /* duplicates would arrive here */
    thd_sse_stop(s);
    size_t ncomp = thd_sse_count_type(s, "completed");
    long long prev = 0;
    char(*seen)[27] = calloc(CN, sizeof *seen);
    size_t nseen = 0;
    for (size_t i = 0; i < thd_sse_count(s); i++) {
        const thd_event *e = thd_sse_event(s, i);
        if (e->id <= prev)
            fail_msg("event ids out of order: %lld after %lld", e->id, prev);
        prev = e->id;
        if (strcmp(e->type, "completed") == 0 && nseen < CN)
            snprintf(seen[nseen++], 27, "%s", thd_jstr(e->json, "task"));
    }
    qsort(seen, nseen, sizeof seen[0], cmp_id);
    for (size_t i = 1; i < nseen; i++)
        if (strcmp(seen[i - 1], seen[i]) == 0)
            fail_msg("two completed events for task %s", seen[i]);
    if (ncomp != CN)
        fail_msg("%zu completed events on the stream, want %d", ncomp, CN);
    free(seen);
    thd_sse_close(s);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_register_and_long_poll, thd_fx_setup, thd_fx_teardown),
        cmocka_unit_test_setup_teardown(test_full_lifecycle, thd_fx_setup, thd_fx_teardown),
        cmocka_unit_test_setup_teardown(test_fail_retry_then_permanent, thd_fx_setup,
                                        thd_fx_teardown),
        cmocka_unit_test_setup_teardown(test_stale_lease, thd_fx_setup, thd_fx_teardown),
        cmocka_unit_test_setup_teardown(test_lease_expiry, thd_fx_setup, thd_fx_teardown),
        cmocka_unit_test_setup_teardown(test_cancel_running, thd_fx_setup, thd_fx_teardown),
        cmocka_unit_test_setup_teardown(test_claim_batch_and_priority, thd_fx_setup,
                                        thd_fx_teardown),
        cmocka_unit_test_setup_teardown(test_abandoned_claim_gets_nothing, thd_fx_setup,
                                        thd_fx_teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_workers_exactly_once, thd_fx_setup,
                                        thd_fx_teardown),
    };
    return cmocka_run_group_tests_name("daemon_worker", tests, NULL, NULL);
}
