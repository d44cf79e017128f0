/*
 * Black-box tests of the daemon as a process: its command line (--help,
 * --check-config, refusing to listen openly without tokens), bearer-token
 * authentication with scopes, a SIGTERM drain that loses nothing across a
 * restart on the same SQLite data dir, and SIGKILL under load: every
 * acknowledged submit survives, every acknowledged completion is recorded
 * exactly once, and the rest finish after the restart.
 */
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "daemon.h"

/* ---- command line ------------------------------------------------------------ */

static void test_help_and_check_config(void **state)
{
    (void)state;
    char *out = NULL;
    const char *help[] = {thd_bin(), "serve", "--help", NULL};
    assert_int_equal(thd_run(help, 20000, &out), 0);
    static const char *const flags[] = {"--listen", "--port-file", "--data-dir", "--config",
                                        "--check-config"};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        if (!strstr(out, flags[i]))
            fail_msg("--help does not mention %s:\n%s", flags[i], out);
    free(out);

    char *dir = thd_newdir("cfg");
    char *good = thd_fmt("%s/good.ini", dir), *bad = thd_fmt("%s/bad.ini", dir);
    thd_write_file(good, "[server]\nmax_batch = 10\n\n[pool]\nmin_workers = 1\n");
    thd_write_file(bad, "[server]\nmax_batch = 10\nbogus_key = 1\n");
    const char *check_good[] = {thd_bin(), "serve", "--check-config", "--config", good, NULL};
    assert_int_equal(thd_run(check_good, 20000, &out), 0);
    free(out);
    const char *check_bad[] = {thd_bin(), "serve", "--check-config", "--config", bad, NULL};
    int rc = thd_run(check_bad, 20000, &out);
    if (rc != 1 || !strstr(out, "bad.ini:3") || !strstr(out, "bogus_key"))
        fail_msg("--check-config of a bad file: exit %d (want 1), output:\n%s", rc, out);
    free(out);

    const char *unknown[] = {thd_bin(), "serve", "--no-such-flag", NULL};
    assert_int_equal(thd_run(unknown, 20000, &out), 2);
    free(out);

    /* Listening beyond loopback without tokens is refused at start. */
    char *data = thd_fmt("%s/data", dir);
    const char *open_listen[] = {thd_bin(),    "serve", "--listen", "0.0.0.0:0",
                                 "--data-dir", data,    NULL};
    rc = thd_run(open_listen, 20000, &out);
    if (rc != 1)
        fail_msg("--listen 0.0.0.0:0 without tokens: exit %d (want 1), output:\n%s", rc, out);
    free(out);
    free(data);
    free(good);
    free(bad);
    free(dir);
}

/* ---- authentication ---------------------------------------------------------- */

/* "token.NAME = SHA256HEX:SCOPES\n" for `secret`. */
static char *token_line(const char *name, const char *secret, const char *scopes)
{
    unsigned char h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(h, (const unsigned char *)secret, strlen(secret));
    char hex[2 * sizeof h + 1];
    sodium_bin2hex(hex, sizeof hex, h, sizeof h);
    return thd_fmt("token.%s = %s:%s\n", name, hex, scopes);
}

/* Fails unless `method path` with `token` answers `status` (and, for 401 /
 * 403, the matching error code). */
static void expect_at(const thd_daemon *d, const char *token, const char *method, const char *path,
                      const char *body, long status, const char *file, int line)
{
    thd_resp *r = thd_http(d->url, method, path, token, NULL, body, body ? strlen(body) : 0, 30000);
    const char *code = thd_jstr(r->json, "error.code");
    int ok = r->status == status;
    if (ok && status == 401)
        ok = code && strcmp(code, "EAUTH") == 0;
    if (ok && status == 403)
        ok = code && strcmp(code, "EFORBIDDEN") == 0;
    if (!ok) {
        print_error("%s:%d: %s %s with token %s: got %ld %.300s, want %ld\n", file, line, method,
                    path, token ? token : "(none)", r->status, r->body, status);
        thd_resp_free(r);
        _fail(file, line);
    }
    thd_resp_free(r);
}
#define expect(d, token, method, path, body, status)                                               \
    expect_at((d), (token), (method), (path), (body), (status), __FILE__, __LINE__)

static void test_auth_scopes(void **state)
{
    assert_true(sodium_init() >= 0);
    char *dir = thd_newdir("auth");
    char *cfg = thd_fmt("%s/auth.ini", dir);
    char *l1 = token_line("reader", "read-secret", "read");
    char *l2 = token_line("submitter", "submit-secret", "submit");
    char *l3 = token_line("worker", "worker-secret", "worker");
    char *l4 = token_line("admin", "admin-secret", "admin");
    char *text = thd_fmt("[auth]\n%s%s%s%s", l1, l2, l3, l4);
    thd_write_file(cfg, text);
    const char *check[] = {thd_bin(), "serve", "--check-config", "--config", cfg, NULL};
    char *out = NULL;
    assert_int_equal(thd_run(check, 20000, &out), 0);
    free(out);

    const char *extra[] = {"--config", cfg, NULL};
    thd_daemon *d = thd_start(dir, extra);
    *state = d;
    const char *R = "read-secret", *S = "submit-secret", *W = "worker-secret", *A = "admin-secret";
    const char *task = "{\"queue\": \"ext-auth\"}";

    /* Open endpoints. */
    expect(d, NULL, "GET", "/healthz", NULL, 200);
    expect(d, NULL, "GET", "/readyz", NULL, 200);
    expect(d, "wrong", "GET", "/healthz", NULL, 200);
    /* No token / an unknown one / not a bearer token: 401. */
    expect(d, NULL, "GET", "/v1/tasks", NULL, 401);
    expect(d, NULL, "POST", "/v1/tasks", task, 401);
    expect(d, NULL, "GET", "/metrics", NULL, 401);
    expect(d, NULL, "GET", "/v1/events", NULL, 401);
    expect(d, "wrong-secret", "GET", "/v1/tasks", NULL, 401);
    expect(d, "read-secretX", "GET", "/v1/tasks", NULL, 401);
    thd_resp *r = thd_http(d->url, "GET", "/v1/tasks", NULL,
                           (const char *const[]){"Authorization: Basic cmVhZDpzZWNyZXQ=", NULL},
                           NULL, 0, 30000);
    thd_assert_error(r, 401, "EAUTH", NULL);
    thd_resp_free(r);

    /* read: every GET, nothing else. */
    expect(d, R, "GET", "/v1/tasks", NULL, 200);
    expect(d, R, "GET", "/v1/queues", NULL, 200);
    expect(d, R, "GET", "/v1/workers", NULL, 200);
    expect(d, R, "GET", "/v1/stats", NULL, 200);
    expect(d, R, "GET", "/metrics", NULL, 200);
    expect(d, R, "POST", "/v1/tasks", task, 403);
    expect(d, R, "POST", "/v1/workers", "{\"name\": \"r\", \"queues\": [\"ext-auth\"]}", 403);
    expect(d, R, "POST", "/v1/queues/ext-auth/pause", NULL, 403);

    /* submit: submit, cancel, retry, read; not worker or admin calls. */
    d->token = S;
    char *id = thd_submit(d, task);
    d->token = NULL;
    expect(d, S, "GET", thd_p("/v1/tasks/%s", id), NULL, 200);
    expect(d, R, "GET", thd_p("/v1/tasks/%s", id), NULL, 200);
    expect(d, R, "POST", thd_p("/v1/tasks/%s/cancel", id), NULL, 403);
    expect(d, S, "POST", "/v1/queues/ext-auth/pause", NULL, 403);
    expect(d, S, "POST", "/v1/workers", "{\"name\": \"s\", \"queues\": [\"ext-auth\"]}", 403);

    /* worker: the worker endpoints and reads, not submit or admin. */
    d->token = W;
    char *wid = thd_register(d, "w-auth", "ext-auth");
    json_t *tasks = thd_claim(d, wid, "ext-auth", 30000, 20000);
    assert_int_equal(json_array_size(tasks), 1);
    assert_string_equal(thd_jstr(tasks, "[0].id"), id);
    long long lease = thd_jint(tasks, "[0].lease", 0);
    json_decref(tasks);
    d->token = NULL;
    expect(d, W, "POST", thd_p("/v1/tasks/%s/heartbeat", id), thd_p("{\"lease\": %lld}", lease),
           200);
    expect(d, R, "POST", thd_p("/v1/tasks/%s/heartbeat", id), thd_p("{\"lease\": %lld}", lease),
           403);
    expect(d, S, "POST", thd_p("/v1/tasks/%s/complete", id), thd_p("{\"lease\": %lld}", lease),
           403);
    expect(d, W, "GET", "/v1/tasks", NULL, 200);
    expect(d, W, "POST", "/v1/tasks", task, 403);
    expect(d, W, "POST", "/v1/queues/ext-auth/pause", NULL, 403);
    expect(d, W, "POST", thd_p("/v1/tasks/%s/complete", id),
           thd_p("{\"lease\": %lld, \"result\": 1}", lease), 200);
    expect(d, S, "POST", thd_p("/v1/tasks/%s/retry", id), NULL, 409); /* allowed, wrong state */

    /* admin: everything. */
    expect(d, A, "POST", "/v1/queues/ext-auth/pause", NULL, 200);
    expect(d, A, "POST", "/v1/queues/ext-auth/resume", NULL, 200);
    expect(d, A, "POST", "/v1/queues/ext-auth/purge", NULL, 200);
    expect(d, A, "POST", "/v1/tasks", task, 201);
    expect(d, A, "GET", "/v1/tasks", NULL, 200);
    expect(d, A, "POST", "/v1/workers", "{\"name\": \"a\", \"queues\": [\"ext-auth\"]}", 201);

    /* The event stream with a read token. */
    d->token = R;
    thd_sse *s = thd_sse_open(d, "/v1/events", "0");
    assert_int_equal(thd_sse_wait_connected(s, THD_WAIT_MS), 200);
    thd_sse_close(s);
    d->token = NULL;

    free(wid);
    free(id);
    free(text);
    free(l1);
    free(l2);
    free(l3);
    free(l4);
    free(cfg);
    free(dir);
}

/* ---- SIGTERM drain ----------------------------------------------------------- */

static void test_sigterm_drain_loses_nothing(void **state)
{
    char *dir = thd_newdir("drain");
    thd_daemon *d = thd_start(dir, NULL);
    *state = d;
    enum { N = 200, NS = 20 };
    char(*ids)[27] = calloc(N + NS, sizeof *ids);
    assert_non_null(ids);
    for (int i = 0; i < N + NS; i++) {
        char *id = i < N ? thd_submit(d, thd_p("{\"queue\": \"ext-drain\", \"payload\": %d}", i))
                         : thd_submit(d, "{\"queue\": \"sleep\", \"payload\": {\"ms\": 20}}");
        snprintf(ids[i], sizeof ids[i], "%s", id);
        free(id);
    }
    thd_stop(d); /* exit status 0 */
    thd_free(d);
    *state = NULL;

    d = thd_start(dir, NULL);
    *state = d;
    for (int i = 0; i < N; i++) {
        json_t *t = thd_task(d, ids[i]);
        assert_string_equal(thd_jstr(t, "queue"), "ext-drain");
        assert_string_equal(thd_jstr(t, "state"), "pending");
        assert_int_equal(thd_jint(t, "payload", -1), i);
        json_decref(t);
    }
    thd_resp *r = thd_req(d, "GET", "/v1/tasks?queue=ext-drain&limit=1000", NULL);
    thd_assert_status(r, 200);
    assert_int_equal(json_array_size(thd_jget(r->json, "tasks")), N);
    thd_resp_free(r);
    for (int i = N; i < N + NS; i++)
        json_decref(thd_wait_state(d, ids[i], "completed"));
    free(ids);
    free(dir);
}

/* SIGTERM while a pool task runs: /readyz answers 503 while draining
 * (docs/API.md), the daemon exits 0, and the task is not lost: it finished
 * during the drain or runs again after the restart. */
static void test_drain_with_running_work(void **state)
{
    char *dir = thd_newdir("drain-run");
    thd_daemon *d = thd_start(dir, NULL);
    *state = d;
    char *id = thd_submit(d, "{\"queue\": \"sleep\", \"payload\": {\"ms\": 3000}}");
    json_decref(thd_wait_state(d, id, "running"));
    kill(d->pid, SIGTERM);
    long last = 200;
    int curl_rc = 0;
    long long end = thd_now_ms() + THD_STOP_MS;
    while (thd_now_ms() < end) {
        thd_resp *r = thd_http(d->url, "GET", "/readyz", NULL, NULL, NULL, 0, 1000);
        last = r->status;
        curl_rc = r->curl_rc;
        thd_resp_free(r);
        if (last != 200)
            break;
        thd_sleep_ms(10);
    }
    if (last != 503)
        fail_msg("GET /readyz during the drain (a 3 s task running): status %ld, curl error %d "
                 "(28 = no answer within 1 s, 7 = refused); want 503 while draining",
                 last, curl_rc);
    int st = thd_signal_wait(d, 0, THD_STOP_MS); /* signal 0: just wait */
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
        thd_print_log(d, 4000);
        fail_msg("exit status 0x%x after SIGTERM with a running task (want exit 0)", st);
    }
    thd_free(d);
    *state = NULL;

    d = thd_start(dir, NULL);
    *state = d;
    json_t *t = thd_wait_state(d, id, "completed");
    assert_int_equal(thd_jint(t, "result.slept_ms", -1), 3000);
    json_decref(t);
    free(id);
    free(dir);
}

/* ---- SIGKILL under load ------------------------------------------------------ */

enum { KN = 300, KILL_AT = 150 };

typedef struct load {
    const thd_daemon *d;
    char wid[128];
    pthread_mutex_t mu;
    char (*done)[27]; /* ids whose complete answered 200, in order */
    size_t ndone;
    int conflicts; /* complete answered 409 */
    int stop;
} load;

static void *worker_main(void *arg)
{
    load *l = arg;
    int dead = 0;
    char path[160], body[256];
    snprintf(path, sizeof path, "/v1/workers/%s/claim", l->wid);
    for (;;) {
        pthread_mutex_lock(&l->mu);
        int stop = l->stop;
        pthread_mutex_unlock(&l->mu);
        if (stop || dead >= 3)
            break;
        const char *cb = "{\"max_tasks\": 1, \"lease_ms\": 3000, \"wait_ms\": 200}";
        thd_resp *r = thd_http(l->d->url, "POST", path, NULL, NULL, cb, strlen(cb), 10000);
        if (r->status != 200) {
            dead += r->status == 0;
            thd_resp_free(r);
            thd_sleep_ms(20);
            continue;
        }
        dead = 0;
        const char *id = thd_jstr(r->json, "tasks[0].id");
        if (id) {
            char cpath[160];
            snprintf(cpath, sizeof cpath, "/v1/tasks/%s/complete", id);
            snprintf(body, sizeof body, "{\"lease\": %lld, \"result\": \"%s\"}",
                     thd_jint(r->json, "tasks[0].lease", 0), id);
            thd_resp *c = thd_http(l->d->url, "POST", cpath, NULL, NULL, body, strlen(body), 10000);
            pthread_mutex_lock(&l->mu);
            if (c->status == 200)
                snprintf(l->done[l->ndone++], 27, "%s", id);
            else if (c->status == 409)
                l->conflicts++;
            pthread_mutex_unlock(&l->mu);
            thd_resp_free(c);
        }
        thd_resp_free(r);
    }
    return NULL;
}

static int in_list(char (*list)[27], size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i], id) == 0)
            return 1;
    return 0;
}

static void test_sigkill_under_load(void **state)
{
    char *dir = thd_newdir("kill");
    thd_daemon *d = thd_start(dir, NULL);
    *state = d;
    load l = {.d = d};
    pthread_mutex_init(&l.mu, NULL);
    l.done = calloc(2 * KN, sizeof *l.done);
    char(*acked)[27] = calloc(KN, sizeof *acked);
    assert_true(l.done && acked);
    char *wid = thd_register(d, "w-load", "ext-load");
    snprintf(l.wid, sizeof l.wid, "%s", wid);
    free(wid);

    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, worker_main, &l), 0);
    size_t nacked = 0;
    for (int i = 0; i < KN; i++) {
        if (i == KILL_AT)
            thd_signal_wait(d, SIGKILL, 10000);
        const char *b = thd_p("{\"queue\": \"ext-load\", \"payload\": %d}", i);
        thd_resp *r = thd_http(d->url, "POST", "/v1/tasks", NULL, NULL, b, strlen(b), 10000);
        if (r->status == 201)
            snprintf(acked[nacked++], 27, "%s", thd_jstr(r->json, "id"));
        else if (i < KILL_AT)
            fail_msg("submit %d before the kill: %ld %s", i, r->status, r->body);
        thd_resp_free(r);
    }
    pthread_mutex_lock(&l.mu);
    l.stop = 1;
    pthread_mutex_unlock(&l.mu);
    pthread_join(th, NULL);
    assert_int_equal(nacked, KILL_AT);
    size_t before = l.ndone;
    print_message("before the kill: %zu submitted, %zu completed, %d conflicts\n", nacked, before,
                  l.conflicts);
    for (size_t i = 0; i < before; i++)
        for (size_t k = i + 1; k < before; k++)
            if (strcmp(l.done[i], l.done[k]) == 0)
                fail_msg("task %s completed twice before the kill", l.done[i]);
    thd_free(d);
    *state = NULL;

    /* Restart on the same data: everything acknowledged is there. */
    d = thd_start(dir, NULL);
    *state = d;
    for (size_t i = 0; i < nacked; i++) {
        json_t *t = thd_task(d, acked[i]);
        const char *st = thd_jstr(t, "state");
        if (in_list(l.done, before, acked[i])) {
            if (strcmp(st, "completed") != 0)
                fail_msg("task %s: completion acknowledged before SIGKILL, now %s", acked[i], st);
            assert_string_equal(thd_jstr(t, "result"), acked[i]);
        }
        json_decref(t);
    }

    /* Work off the rest; nothing completed before may be handed out again. */
    wid = thd_register(d, "w-load-2", "ext-load");
    long long end = thd_now_ms() + 120000;
    for (;;) {
        thd_resp *r =
            thd_req(d, "GET", "/v1/tasks?queue=ext-load&state=completed&limit=1000", NULL);
        thd_assert_status(r, 200);
        size_t ncomp = json_array_size(thd_jget(r->json, "tasks"));
        thd_resp_free(r);
        r = thd_req(d, "GET", "/v1/tasks?queue=ext-load&limit=1000", NULL);
        size_t nall = json_array_size(thd_jget(r->json, "tasks"));
        thd_resp_free(r);
        if (ncomp == nall)
            break;
        if (thd_now_ms() > end)
            fail_msg("after the restart only %zu of %zu tasks completed", ncomp, nall);
        json_t *tasks = thd_claim(d, wid, "ext-load", 30000, 1000);
        const char *id = thd_jstr(tasks, "[0].id");
        if (id) {
            if (in_list(l.done, l.ndone, id))
                fail_msg("task %s handed out again after its completion was acknowledged", id);
            thd_resp *c = thd_reqf(d, "POST", thd_p("/v1/tasks/%s/complete", id),
                                   "{\"lease\": %lld, \"result\": \"%s\"}",
                                   thd_jint(tasks, "[0].lease", 0), id);
            thd_assert_status(c, 200);
            thd_resp_free(c);
            snprintf(l.done[l.ndone++], 27, "%s", id);
        }
        json_decref(tasks);
    }
    for (size_t i = 0; i < nacked; i++) {
        json_t *t = thd_task(d, acked[i]);
        assert_string_equal(thd_jstr(t, "state"), "completed");
        assert_string_equal(thd_jstr(t, "result"), acked[i]);
        json_decref(t);
    }
    free(wid);
    free(l.done);
    free(acked);
    pthread_mutex_destroy(&l.mu);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help_and_check_config),
        cmocka_unit_test_teardown(test_auth_scopes, thd_fx_teardown),
        cmocka_unit_test_teardown(test_sigterm_drain_loses_nothing, thd_fx_teardown),
        cmocka_unit_test_teardown(test_drain_with_running_work, thd_fx_teardown),
        cmocka_unit_test_teardown(test_sigkill_under_load, thd_fx_teardown),
    };
    return cmocka_run_group_tests_name("daemon_lifecycle", tests, NULL, NULL);
}
