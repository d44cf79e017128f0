/*
 * Black-box tests of how the daemon refuses bad requests (docs/API.md,
 * "Errors"): a table of requests, each with the status, error.code and
 * error.field the contract promises; oversized bodies; wrong routes and
 * methods; and raw garbage on the socket. After every group the daemon must
 * still answer /healthz: bad input never crashes it.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "daemon.h"

#define D(state) ((thd_daemon *)*(state))
#define GHOST "01ARZ3NDEKTSV4RRFFQ69G5FAV" /* a well-formed id of no task */

typedef struct bad_case {
    const char *method;
    const char *path; /* "{id}", "{wid}", "{ghost}" are replaced */
    const char *body; /* NULL = none; "{lease}" is replaced */
    long status;
    const char *code;
    const char *field; /* NULL: not checked; "a|b": either */
} bad_case;

static const bad_case submit_cases[] = {
    /* malformed / not an object */
    {"POST", "/v1/tasks", "{\"queue\": ", 400, "EINVAL", ""},
    {"POST", "/v1/tasks", "{\"queue\": \"a\"} trailing", 400, "EINVAL", ""},
    {"POST", "/v1/tasks", "[{\"queue\": \"a\"}]", 400, "EINVAL", ""},
    {"POST", "/v1/tasks", "\"just a string\"", 400, "EINVAL", ""},
    {"POST", "/v1/tasks", "{\"queue\": \"a\xff\xfe\"}", 400, "EINVAL", NULL},
    /* required, unknown and wrong-typed fields */
    {"POST", "/v1/tasks", "{}", 400, "EINVAL", "queue"},
    {"POST", "/v1/tasks", "{\"payload\": 1}", 400, "EINVAL", "queue"},
    {"POST", "/v1/tasks", "{\"queue\": \"a\", \"priorty\": 5}", 400, "EINVAL", "priorty"},
    {"POST", "/v1/tasks", "{\"queue\": \"a\", \"priority\": \"urgent-ish\"}", 400, "EINVAL",
     "priority"},
    {"POST", "/v1/tasks", "{\"queue\": 5}", 400, "EINVAL", "queue"},
    {"POST", "/v1/tasks", "{\"queue\": null}", 400, "EINVAL", "queue"},
    {"POST", "/v1/tasks", "{\"queue\": \"a\", \"delay_ms\": \"soon\"}", 400, "EINVAL", "delay_ms"},
    {"POST", "/v1/tasks", "{\"queue\": \"a\", \"timeout_ms\": 1.5}", 400, "EINVAL", "timeout_ms"},
    {"POST", "/v1/tasks", "{\"queue\": \"a\", \"deps\": \"x\"}", 400, "EINVAL", "deps"},
    {"POST", "/v1/tasks", "{\"queue\": \"a\", \"deps\": [5]}", 400, "EINVAL", "deps[0]"},
    {"POST", "/v1/tasks", "{\"queue\": \"a\", \"retry\": 5}", 400, "EINVAL", "retry"},
    {"POST", "/v1/tasks", "{\"queue\": \"a\", \"retry\": {\"bogus\": 1}}", 400, "EINVAL",
     "retry.bogus"},
    {"POST", "/v1/tasks", "{\"queue\": \"a\", \"metadata\": 5}", 400, "EINVAL", "metadata"},
    {"POST", "/v1/tasks", "{\"queue\": \"a\", \"unique_key\": 5}", 400, "EINVAL", "unique_key"},
    /* bad values */
    {"POST", "/v1/tasks", "{\"queue\": \"bad queue!\"}", 400, "EINVAL", "queue"},
    {"POST", "/v1/tasks", "{\"queue\": \"\"}", 400, "EINVAL", "queue"},
    {"POST", "/v1/tasks",
     "{\"queue\": \"q12345678901234567890123456789012345678901234567890123456789012345\"}", 400,
     "EINVAL", "queue"},
    {"POST", "/v1/tasks", "{\"queue\": \"a\\u0000b\"}", 400, "EINVAL", NULL},
    {"POST", "/v1/tasks", "{\"queue\": \"a\", \"priority\": 101}", 400, "EINVAL", "priority"},
    {"POST", "/v1/tasks", "{\"queue\": \"a\", \"priority\": -1}", 400, "EINVAL", "priority"},
    {"POST", "/v1/tasks", "{\"queue\": \"a\", \"timeout_ms\": -5}", 400, "EINVAL", "timeout_ms"},
    {"POST", "/v1/tasks", "{\"queue\": \"a\", \"delay_ms\": -1}", 400, "EINVAL", "delay_ms"},
    {"POST", "/v1/tasks", "{\"queue\": \"a\", \"run_at\": -1}", 400, "EINVAL", "run_at"},
    {"POST", "/v1/tasks", "{\"queue\": \"a\", \"expires_at\": -1}", 400, "EINVAL", "expires_at"},
    {"POST", "/v1/tasks", "{\"queue\": \"a\", \"run_at\": 1700000000000, \"delay_ms\": 5}", 400,
     "EINVAL", "delay_ms|run_at"},
    {"POST", "/v1/tasks", "{\"queue\": \"a\", \"retry\": {\"multiplier\": 0.5}}", 400, "EINVAL",
     "retry.multiplier"},
    {"POST", "/v1/tasks", "{\"queue\": \"a\", \"retry\": {\"max_retries\": -1}}", 400, "EINVAL",
     "retry.max_retries"},
    {"POST", "/v1/tasks", "{\"queue\": \"a\", \"unique_key\": \"\"}", 400, "EINVAL", "unique_key"},
    {"POST", "/v1/tasks", "{\"queue\": \"a\", \"deps\": [\"xyz\"]}", 400, "EINVAL", "deps[0]"},
    {"POST", "/v1/tasks", "{\"queue\": \"a\", \"deps\": [\"$0\"]}", 400, "EINVAL", "deps[0]"},
    {"POST", "/v1/tasks", "{\"queue\": \"a\", \"deps\": [\"" GHOST "\"]}", 404, "ENOTFOUND",
     "deps[0]"},
    /* batches */
    {"POST", "/v1/tasks", "{\"tasks\": 5}", 400, "EINVAL", "tasks"},
    {"POST", "/v1/tasks", "{\"tasks\": [5]}", 400, "EINVAL", "tasks[0]"},
    {"POST", "/v1/tasks", "{\"tasks\": [{\"queue\": \"a\"}], \"x\": 1}", 400, "EINVAL", "x"},
    {"POST", "/v1/tasks",
     "{\"tasks\": [{\"queue\": \"ext-atomic\"}, {\"queue\": \"a\", \"priority\": \"x\"}]}", 400,
     "EINVAL", "tasks[1].priority"},
    {"POST", "/v1/tasks",
     "{\"tasks\": [{\"queue\": \"ext-atomic\"}, {\"queue\": \"a\", \"bogus\": 1}]}", 400, "EINVAL",
     "tasks[1].bogus"},
    {"POST", "/v1/tasks",
     "{\"tasks\": [{\"queue\": \"ext-atomic\", \"deps\": [\"$1\"]}, {\"queue\": \"a\"}]}", 400,
     "EINVAL", "tasks[0].deps[0]"},
    {"POST", "/v1/tasks",
     "{\"tasks\": [{\"queue\": \"ext-atomic\"}, {\"queue\": \"a\", \"deps\": [\"" GHOST "\"]}]}",
     404, "ENOTFOUND", "tasks[1].deps[0]"},
};

static const bad_case other_cases[] = {
    /* routes and methods */
    {"GET", "/v1/nope", NULL, 404, "EROUTE", ""},
    {"GET", "/nope", NULL, 404, "EROUTE", ""},
    {"GET", "/", NULL, 404, "EROUTE", ""},
    {"GET", "/v1/tasks/{id}/bogus", NULL, 404, "EROUTE", ""},
    {"GET", "/v1/tasks/{id}/logs/extra", NULL, 404, "EROUTE", ""},
    {"DELETE", "/v1/tasks", NULL, 405, "EMETHOD", ""},
    {"PUT", "/v1/tasks/{id}", "{}", 405, "EMETHOD", ""},
    {"GET", "/v1/tasks/{id}/cancel", NULL, 405, "EMETHOD", ""},
    {"POST", "/healthz", "{}", 405, "EMETHOD", ""},
    {"POST", "/v1/queues", "{}", 405, "EMETHOD", ""},
    {"GET", "/v1/queues/ext-x/pause", NULL, 405, "EMETHOD", ""},
    {"GET", "/v1/workers/{wid}/claim", NULL, 405, "EMETHOD", ""},
    {"POST", "/v1/events", "{}", 405, "EMETHOD", ""},
    /* task ids */
    {"GET", "/v1/tasks/not-an-id", NULL, 400, "EINVAL", "id"},
    {"GET", "/v1/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAVX", NULL, 400, "EINVAL", "id"},
    {"POST", "/v1/tasks/not-an-id/cancel", NULL, 400, "EINVAL", "id"},
    {"GET", "/v1/tasks/{ghost}", NULL, 404, "ENOTFOUND", NULL},
    {"GET", "/v1/tasks/{ghost}/logs", NULL, 404, "ENOTFOUND", NULL},
    {"GET", "/v1/tasks/{ghost}/graph", NULL, 404, "ENOTFOUND", NULL},
    {"GET", "/v1/tasks/{ghost}/result", NULL, 404, "ENOTFOUND", NULL},
    /* list and logs queries */
    {"GET", "/v1/tasks?limit=abc", NULL, 400, "EINVAL", "limit"},
    {"GET", "/v1/tasks?limit=-1", NULL, 400, "EINVAL", "limit"},
    {"GET", "/v1/tasks?state=bogus", NULL, 400, "EINVAL", "state"},
    {"GET", "/v1/tasks/{id}/logs?after=-1", NULL, 400, "EINVAL", "after"},
    /* cancel body */
    {"POST", "/v1/tasks/{id}/cancel", "{\"reason\": 5}", 400, "EINVAL", "reason"},
    {"POST", "/v1/tasks/{id}/cancel", "{\"why\": \"x\"}", 400, "EINVAL", "why"},
    {"POST", "/v1/tasks/{id}/cancel", "[1]", 400, "EINVAL", ""},
    /* worker calls */
    {"POST", "/v1/tasks/{ghost}/complete", "{\"lease\": 1}", 404, "ENOTFOUND", NULL},
    {"POST", "/v1/tasks/{ghost}/heartbeat", "{\"lease\": 1}", 404, "ENOTFOUND", NULL},
    {"POST", "/v1/tasks/{id}/complete", "{\"result\": 1}", 400, "EINVAL", "lease"},
    {"POST", "/v1/tasks/{id}/complete", "{\"lease\": \"abc\"}", 400, "EINVAL", "lease"},
    {"POST", "/v1/tasks/{id}/complete", "{\"lease\": -1}", 400, "EINVAL", "lease"},
    {"POST", "/v1/tasks/{id}/complete", "{\"lease\": {lease}, \"reslt\": 1}", 400, "EINVAL",
     "reslt"},
    {"POST", "/v1/tasks/{id}/complete", "{\"lease\": {lease}, \"result\": ", 400, "EINVAL", ""},
    {"POST", "/v1/tasks/{id}/heartbeat", "{\"lease\": {lease}, \"extend_ms\": -1}", 400, "EINVAL",
     "extend_ms"},
    {"POST", "/v1/tasks/{id}/progress", "{\"lease\": {lease}, \"percent\": 101}", 400, "EINVAL",
     "percent"},
    {"POST", "/v1/tasks/{id}/progress", "{\"lease\": {lease}, \"percent\": \"half\"}", 400,
     "EINVAL", "percent"},
    {"POST", "/v1/tasks/{id}/log", "{\"lease\": {lease}, \"level\": \"loud\", \"message\": \"m\"}",
     400, "EINVAL", "level"},
    {"POST", "/v1/tasks/{id}/log", "{\"lease\": {lease}, \"level\": \"info\"}", 400, "EINVAL",
     "message"},
    {"POST", "/v1/tasks/{id}/fail", "{\"lease\": {lease}, \"permanent\": \"yes\"}", 400, "EINVAL",
     "permanent"},
    {"POST", "/v1/workers", "{\"name\": 5, \"queues\": [\"a\"]}", 400, "EINVAL", "name"},
    {"POST", "/v1/workers", "{\"name\": \"w\", \"queues\": \"a\"}", 400, "EINVAL", "queues"},
    {"POST", "/v1/workers", "{\"name\": \"w\", \"queues\": [\"bad queue\"]}", 400, "EINVAL",
     "queues[0]"},
    {"POST", "/v1/workers", "{\"name\": \"w\", \"queues\": [\"a\"], \"x\": 1}", 400, "EINVAL", "x"},
    {"POST", "/v1/workers", "nope", 400, "EINVAL", ""},
    {"POST", "/v1/workers/{wid}/claim", "{\"max_tasks\": 0}", 400, "EINVAL", "max_tasks"},
    {"POST", "/v1/workers/{wid}/claim", "{\"lease_ms\": -1}", 400, "EINVAL", "lease_ms"},
    {"POST", "/v1/workers/{wid}/claim", "{\"wait_ms\": \"x\"}", 400, "EINVAL", "wait_ms"},
    {"POST", "/v1/workers/{wid}/claim", "{\"queues\": [\"bad!\"]}", 400, "EINVAL", "queues[0]"},
    {"POST", "/v1/workers/{wid}/claim", "{\"max_task\": 1}", 400, "EINVAL", "max_task"},
    {"POST", "/v1/workers/w-nobody/claim", "{\"wait_ms\": 0}", 404, "ENOTFOUND", NULL},
};

/* `tmpl` with {id}, {wid}, {ghost}, {lease} replaced (caller frees). */
static char *expand(const char *tmpl, const char *id, const char *wid, long long lease)
{
    if (!tmpl)
        return NULL;
    char lease_text[32];
    snprintf(lease_text, sizeof lease_text, "%lld", lease);
    const char *keys[] = {"{id}", "{wid}", "{ghost}", "{lease}"};
    const char *vals[] = {id, wid, GHOST, lease_text};
    size_t cap = strlen(tmpl) * 4 + 256, used = 0;
    char *out = malloc(cap);
    assert_non_null(out);
    for (const char *p = tmpl; *p;) {
        int hit = 0;
        for (int k = 0; k < 4; k++) {
            size_t kl = strlen(keys[k]);
            if (strncmp(p, keys[k], kl) == 0) {
                used += (size_t)snprintf(out + used, cap - used, "%s", vals[k]);
                p += kl;
                hit = 1;
                break;
            }
        }
        if (!hit)
            out[used++] = *p++;
    }
    out[used] = '\0';
    return out;
}

static void assert_alive_at(const thd_daemon *d, const char *after, const char *file, int line)
{
    thd_resp *r = thd_http(d->url, "GET", "/healthz", NULL, NULL, NULL, 0, 10000);
    if (r->status != 200) {
        thd_print_log(d, 4000);
        print_error("%s:%d: /healthz answered %ld after %s: the daemon died?\n", file, line,
                    r->status, after);
        thd_resp_free(r);
        _fail(file, line);
    }
    thd_resp_free(r);
}
#define assert_alive(d, after) assert_alive_at((d), (after), __FILE__, __LINE__)

/* 1 when `r` is the error answer `status` {"code": code, "field": field};
 * `field` NULL is not checked, "a|b" accepts either. */
static int error_matches(const thd_resp *r, long status, const char *code, const char *field)
{
    const char *got_code = thd_jstr(r->json, "error.code");
    const char *got_field = thd_jstr(r->json, "error.field");
    int ok = r->status == status && got_code && strcmp(got_code, code) == 0 &&
             thd_jstr(r->json, "error.message");
    if (ok && field) {
        const char *gf = got_field ? got_field : "";
        ok = 0;
        for (const char *f = field;; f++) {
            size_t fl = strcspn(f, "|");
            if (strlen(gf) == fl && strncmp(f, gf, fl) == 0)
                ok = 1;
            f += fl;
            if (!*f)
                break;
        }
    }
    return ok;
}

/* Like error_matches; prints the disagreement and returns 1 when it fails. */
static int check_error(const thd_resp *r, long status, const char *code, const char *field,
                       const char *what)
{
    if (error_matches(r, status, code, field))
        return 0;
    print_error("%s\n  want %ld %s field \"%s\"\n  got  %ld (curl %d) %.400s\n", what, status, code,
                field ? field : "(any)", r->status, r->curl_rc, r->body);
    return 1;
}

static int run_cases(const thd_daemon *d, const bad_case *cases, size_t n, const char *id,
                     const char *wid, long long lease)
{
    int failures = 0;
    for (size_t i = 0; i < n; i++) {
        const bad_case *c = &cases[i];
        char *path = expand(c->path, id, wid, lease);
        char *body = expand(c->body, id, wid, lease);
        thd_resp *r =
            thd_http(d->url, c->method, path, d->token, NULL, body, body ? strlen(body) : 0, 30000);
        char *what = thd_fmt("case %zu: %s %s %.200s", i, c->method, path, body ? body : "");
        int bad = check_error(r, c->status, c->code, c->field, what);
        if (!bad && c->status == 405) {
            char *allow = thd_header(r, "Allow");
            if (!allow || !*allow) {
                print_error("%s: 405 without an Allow header\n", what);
                bad = 1;
            }
            free(allow);
        }
        failures += bad;
        free(what);
        thd_resp_free(r);
        free(path);
        free(body);
    }
    assert_alive(d, "the table");
    return failures;
}

static void test_submit_table(void **state)
{
    thd_daemon *d = D(state);
    int failures = run_cases(d, submit_cases, sizeof submit_cases / sizeof submit_cases[0], GHOST,
                             "w-none", 1);
    /* Refused batches left nothing behind (all or none). */
    thd_resp *r = thd_req(d, "GET", "/v1/tasks?queue=ext-atomic", NULL);
    thd_assert_status(r, 200);
    assert_int_equal(json_array_size(thd_jget(r->json, "tasks")), 0);
    thd_resp_free(r);
    r = thd_req(d, "GET", "/v1/tasks", NULL);
    assert_int_equal(json_array_size(thd_jget(r->json, "tasks")), 0);
    thd_resp_free(r);
    if (failures)
        fail_msg("%d of %zu submit cases disagree with docs/API.md", failures,
                 sizeof submit_cases / sizeof submit_cases[0]);
}

static void test_other_table(void **state)
{
    thd_daemon *d = D(state);
    char *wid = thd_register(d, "w-bad", "ext-bad");
    char *id = thd_submit(d, "{\"queue\": \"ext-bad\"}");
    json_t *tasks = thd_claim(d, wid, "ext-bad", 600000, 20000);
    assert_int_equal(json_array_size(tasks), 1);
    long long lease = thd_jint(tasks, "[0].lease", 0);
    json_decref(tasks);
    int failures =
        run_cases(d, other_cases, sizeof other_cases / sizeof other_cases[0], id, wid, lease);

    /* 405 lists the right methods. */
    thd_resp *r = thd_req(d, "DELETE", "/v1/tasks", NULL);
    char *allow = thd_header(r, "Allow");
    if (!allow || !strstr(allow, "GET") || !strstr(allow, "POST")) {
        print_error("DELETE /v1/tasks: Allow \"%s\" (want GET and POST)\n", allow ? allow : "");
        failures++;
    }
    free(allow);
    thd_resp_free(r);
    r = thd_req(d, "GET", thd_p("/v1/tasks/%s/cancel", id), NULL);
    allow = thd_header(r, "Allow");
    if (!allow || !strstr(allow, "POST") || strstr(allow, "GET")) {
        print_error("GET /v1/tasks/{id}/cancel: Allow \"%s\" (want POST)\n", allow ? allow : "");
        failures++;
    }
    free(allow);
    thd_resp_free(r);

    /* The task survived all that: still running under its lease. */
    json_t *t = thd_task(d, id);
    assert_string_equal(thd_jstr(t, "state"), "running");
    json_decref(t);
    r = thd_req(d, "POST", thd_p("/v1/tasks/%s/complete", id),
                thd_p("{\"lease\": %lld, \"result\": 1}", lease));
    thd_assert_status(r, 200);
    thd_resp_free(r);
    free(id);
    free(wid);
    if (failures)
        fail_msg("%d of %zu cases disagree with docs/API.md", failures,
                 sizeof other_cases / sizeof other_cases[0]);
}

/* `pre`, `n` bytes of 'x', `post` (caller frees). */
static char *big(const char *pre, size_t n, const char *post)
{
    size_t a = strlen(pre), b = strlen(post);
    char *out = malloc(a + n + b + 1);
    assert_non_null(out);
    memcpy(out, pre, a);
    memset(out + a, 'x', n);
    memcpy(out + a + n, post, b + 1);
    return out;
}

static void test_limits(void **state)
{
    thd_daemon *d = D(state);
    int failures = 0;
    /* Payload just over 1 MiB (body well under 4 MiB): 413 naming the payload. */
    char *body = big("{\"queue\": \"ext-big\", \"payload\": \"", (1u << 20) + 16, "\"}");
    thd_resp *r = thd_req(d, "POST", "/v1/tasks", body);
    failures += check_error(r, 413, "ETOOBIG", "payload", "payload of 1 MiB + 16");
    thd_resp_free(r);
    free(body);
    /* Just under the limit is fine. */
    body = big("{\"queue\": \"ext-big\", \"payload\": \"", (1u << 20) - 1024, "\"}");
    free(thd_submit(d, body));
    free(body);

    /* A body over 4 MiB: 413. */
    body = big("{\"queue\": \"ext-big\", \"payload\": \"", 5u << 20, "\"}");
    r = thd_req(d, "POST", "/v1/tasks", body);
    failures += check_error(r, 413, "ETOOBIG", NULL, "a body of 5 MiB");
    thd_resp_free(r);
    free(body);
    assert_alive(d, "a 5 MiB body");

    /* A batch body over 16 MiB: 413 from the HTTP layer itself (libevent's
     * own page, not the JSON error: docs/API.md says so). */
    body = big("{\"tasks\": [{\"queue\": \"ext-big\", \"payload\": \"", 17u << 20, "\"}]}");
    r = thd_req(d, "POST", "/v1/tasks", body);
    if (r->status != 413) {
        print_error("a batch body of 17 MiB: want 413, got %ld\n", (long)r->status);
        failures++;
    }
    thd_resp_free(r);
    free(body);

    /* 1001 tasks in a batch: 400; 1000 are fine. */
    for (int n = 1001; n >= 1000; n--) {
        size_t cap = (size_t)n * 24 + 32, used = 0;
        char *b = malloc(cap);
        assert_non_null(b);
        used += (size_t)snprintf(b, cap, "{\"tasks\": [");
        for (int i = 0; i < n; i++)
            used +=
                (size_t)snprintf(b + used, cap - used, "%s{\"queue\": \"ext-b\"}", i ? "," : "");
        snprintf(b + used, cap - used, "]}");
        r = thd_req(d, "POST", "/v1/tasks", b);
        if (n == 1001) {
            failures += check_error(r, 400, "EINVAL", "tasks", "a batch of 1001");
        } else {
            thd_assert_status(r, 201);
            assert_int_equal(json_array_size(thd_jget(r->json, "ids")), 1000);
        }
        thd_resp_free(r);
        free(b);
    }
    r = thd_req(d, "GET", "/v1/tasks?queue=ext-b&limit=1000", NULL);
    assert_int_equal(json_array_size(thd_jget(r->json, "tasks")), 1000);
    thd_resp_free(r);

    /* A log message over 4096 bytes: 413 naming it. */
    char *wid = thd_register(d, "w-big", "ext-big");
    json_t *tasks = thd_claim(d, wid, "ext-big", 600000, 20000);
    assert_int_equal(json_array_size(tasks), 1);
    const char *id = thd_jstr(tasks, "[0].id");
    long long lease = thd_jint(tasks, "[0].lease", 0);
    char *head = thd_fmt("{\"lease\": %lld, \"level\": \"info\", \"message\": \"", lease);
    body = big(head, 5000, "\"}");
    r = thd_req(d, "POST", thd_p("/v1/tasks/%s/log", id), body);
    failures += check_error(r, 413, "ETOOBIG", "message", "a log message of 5000 bytes");
    thd_resp_free(r);
    free(body);
    free(head);
    json_decref(tasks);
    free(wid);

    /* Deep nesting: refused, not a stack overflow. */
    size_t depth = 100000;
    char *deep = malloc(2 * depth + 64);
    assert_non_null(deep);
    size_t used = (size_t)snprintf(deep, 64, "{\"queue\": \"ext-big\", \"payload\": ");
    memset(deep + used, '[', depth);
    memset(deep + used + depth, ']', depth);
    snprintf(deep + used + 2 * depth, 8, "}");
    r = thd_req(d, "POST", "/v1/tasks", deep);
    failures += check_error(r, 400, "EINVAL", NULL, "a payload nested 100000 deep");
    thd_resp_free(r);
    free(deep);
    assert_alive(d, "the limits");
    if (failures)
        fail_msg("%d limit checks disagree with docs/API.md", failures);
}

/* Sends raw bytes on a fresh connection, reads what comes back (bounded),
 * and returns it (caller frees; "" when nothing). */
static char *raw(const thd_daemon *d, const char *data, size_t len, int timeout_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)d->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    size_t off = 0;
    while (off < len) {
        ssize_t w = send(fd, data + off, len - off, MSG_NOSIGNAL);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    shutdown(fd, SHUT_WR);
    char *out = calloc(1, 65536);
    assert_non_null(out);
    size_t got = 0;
    long long end = thd_now_ms() + timeout_ms;
    while (got < 65535 && thd_now_ms() < end) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0)
            continue;
        ssize_t r = recv(fd, out + got, 65535 - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    return out;
}

static void test_garbage_on_the_wire(void **state)
{
    thd_daemon *d = D(state);
    static const char *const junk[] = {
        "GARBAGE\r\n\r\n",
        "GET\r\n\r\n",
        "GET /healthz HTTP/9.9\r\n\r\n",
        "POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"queue\"",
        "POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        "POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
        "POST /v1/tasks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "\x00\x01\x02\x03\xff\xfe\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
        size_t len = i == 7 ? 10 : strlen(junk[i]);
        free(raw(d, junk[i], len, 3000));
        assert_alive(d, "garbage on the wire");
    }
    /* Headers over 8 KiB: refused with a 4xx, not a crash. */
    char *h = malloc(20000);
    assert_non_null(h);
    int n = snprintf(h, 20000, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ");
    memset(h + n, 'a', 16000);
    snprintf(h + n + 16000, 20000 - (size_t)n - 16000, "\r\n\r\n");
    char *out = raw(d, h, strlen(h), 5000);
    if (strncmp(out, "HTTP/1.1 4", 10) != 0 && strncmp(out, "HTTP/1.0 4", 10) != 0 && out[0])
        fail_msg("16 KiB of headers: %.200s", out);
    free(out);
    free(h);
    /* A very long path. */
    char *p = big("/v1/tasks/", 20000, "");
    thd_resp *r = thd_req(d, "GET", p, NULL);
    assert_true(r->status == 0 || (r->status >= 400 && r->status < 500));
    thd_resp_free(r);
    free(p);
    assert_alive(d, "huge headers");
}

/* A full queue: 429 EBUSY with Retry-After: 1. The limit is [server]
 * max_queued (waiting tasks in the store); noop is paused so its tasks keep
 * waiting. */
static void test_queue_full(void **state)
{
    char *dir = thd_newdir("full");
    char *cfg = thd_fmt("%s/taskhive.ini", dir);
    thd_write_file(cfg, "[server]\nmax_queued = 2\n");
    const char *extra[] = {"--config", cfg, NULL};
    thd_daemon *d = thd_start(dir, extra);
    *state = d;
    thd_resp *r = thd_req(d, "POST", "/v1/queues/noop/pause", NULL);
    thd_assert_status(r, 200);
    thd_resp_free(r);
    free(thd_submit(d, "{\"queue\": \"noop\"}"));
    free(thd_submit(d, "{\"queue\": \"noop\"}"));
    r = thd_req(d, "POST", "/v1/tasks", "{\"queue\": \"noop\"}");
    int bad = check_error(r, 429, "EBUSY", NULL, "a third task for a full queue (max_queued 2)");
    char *ra = thd_header(r, "Retry-After");
    if (!bad && (!ra || strcmp(ra, "1") != 0)) {
        print_error("429 without Retry-After: 1 (got \"%s\")\n", ra ? ra : "");
        bad = 1;
    }
    free(ra);
    thd_resp_free(r);
    assert_alive(d, "a full queue");
    free(cfg);
    free(dir);
    if (bad)
        fail_msg("a full queue is not refused as docs/API.md says");
}

/* Past max_connections a new connection gets 503 EBUSY and is closed; once
 * the others close, requests are served again. */
static void test_connection_cap(void **state)
{
    char *dir = thd_newdir("conns");
    char *cfg = thd_fmt("%s/taskhive.ini", dir);
    thd_write_file(cfg, "[server]\nmax_connections = 3\n");
    const char *extra[] = {"--config", cfg, NULL};
    thd_daemon *d = thd_start(dir, extra);
    *state = d;
    /* Three connections held open by event streams. */
    thd_sse *streams[3];
    for (int i = 0; i < 3; i++) {
        streams[i] = thd_sse_open(d, "/v1/events", NULL);
        assert_int_equal(thd_sse_wait_connected(streams[i], THD_WAIT_MS), 200);
    }
    thd_resp *r = thd_http(d->url, "GET", "/healthz", NULL, NULL, NULL, 0, 10000);
    int bad = check_error(r, 503, "EBUSY", NULL, "a 4th connection with max_connections 3");
    thd_resp_free(r);
    for (int i = 0; i < 3; i++)
        thd_sse_close(streams[i]);
    long long end = thd_now_ms() + THD_WAIT_MS;
    long st = 0;
    while (thd_now_ms() < end) {
        r = thd_http(d->url, "GET", "/healthz", NULL, NULL, NULL, 0, 5000);
        st = r->status;
        thd_resp_free(r);
        if (st == 200)
            break;
        thd_sleep_ms(20);
    }
    assert_int_equal(st, 200);
    free(cfg);
    free(dir);
    if (bad)
        fail_msg("the connection cap does not answer as docs/API.md says");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_submit_table, thd_fx_setup, thd_fx_teardown),
        cmocka_unit_test_setup_teardown(test_other_table, thd_fx_setup, thd_fx_teardown),
        cmocka_unit_test_setup_teardown(test_limits, thd_fx_setup, thd_fx_teardown),
        cmocka_unit_test_setup_teardown(test_garbage_on_the_wire, thd_fx_setup, thd_fx_teardown),
        cmocka_unit_test_teardown(test_queue_full, thd_fx_teardown),
        cmocka_unit_test_teardown(test_connection_cap, thd_fx_teardown),
    };
    return cmocka_run_group_tests_name("daemon_bad_input", tests, NULL, NULL);
}
