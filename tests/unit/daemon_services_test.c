/*
 * The supervisor inside the daemon, driven over HTTP: services from the
 * configuration start in dependency order, show up in /v1/services with
 * their pids, capture their output (/logs), stop and start through the API,
 * an event service runs when a task becomes ready in its trigger queue,
 * health is reported, SIGTERM stops every service (no process left), and a
 * configuration with a dependency cycle is refused naming it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "daemon.h"

/* Polls /v1/services/NAME until instance 0 is in `state`, up to THD_WAIT_MS;
 * returns its pid. */
static long wait_state(thd_daemon *d, const char *name, const char *state)
{
    char *path = thd_fmt("/v1/services/%s", name);
    long pid = -1;
    for (int waited = 0; waited < THD_WAIT_MS; waited += 20) {
        thd_resp *r = thd_req(d, "GET", path, NULL);
        json_t *row = r->json ? json_array_get(json_object_get(r->json, "services"), 0) : NULL;
        const char *st = row ? json_string_value(json_object_get(row, "state")) : NULL;
        if (st && strcmp(st, state) == 0) {
            pid = (long)json_integer_value(json_object_get(row, "pid"));
            thd_resp_free(r);
            break;
        }
        thd_resp_free(r);
        thd_sleep_ms(20);
    }
    free(path);
    if (pid < 0)
        fail_msg("service %s never reached state %s", name, state);
    return pid;
}

static char *write_script(const char *dir, const char *name, const char *body)
{
    char *path = thd_fmt("%s/%s", dir, name);
    thd_write_file(path, body);
    chmod(path, 0755);
    return path;
}

static void test_services_lifecycle(void **state)
{
    char *dir = thd_newdir("svc");
    char *loop = write_script(dir, "loop.sh",
                              "#!/bin/sh\necho \"up $TH_SERVICE\"\n"
                              "trap 'echo bye; exit 0' TERM\nwhile :; do sleep 0.05; done\n");
    char *once = write_script(dir, "once.sh", "#!/bin/sh\necho \"triggered run\"\n");
    char *cfg = thd_fmt("%s/taskhive.ini", dir);
    char *text = thd_fmt("[supervisor]\nlog_dir = %s/logs\n"
                         "[service.base]\nargv = [\"%s\"]\n"
                         "[service.top]\nargv = [\"%s\"]\ndeps = base\nstop_timeout = 2s\n"
                         "[service.onqueue]\nargv = [\"%s\"]\ntype = event\n"
                         "trigger_queue = jobs-in\n",
                         dir, loop, loop, once);
    thd_write_file(cfg, text);
    const char *extra[] = {"--config", cfg, NULL};
    thd_daemon *d = thd_start(dir, extra);
    *state = d;

    long base = wait_state(d, "base", "running");
    long top = wait_state(d, "top", "running");
    assert_true(base > 0 && top > 0 && base != top);
    assert_int_equal(kill((pid_t)top, 0), 0);

    thd_resp *r = thd_req(d, "GET", "/v1/services", NULL);
    thd_assert_status(r, 200);
    assert_int_equal(json_array_size(json_object_get(r->json, "services")), 3);
    thd_resp_free(r);

    r = thd_req(d, "GET", "/v1/services/health", NULL);
    thd_assert_status(r, 200);
    assert_int_equal(thd_jint(r->json, "services", -1), 3);
    thd_resp_free(r);

    /* The service's output is captured with timestamps. */
    int seen = 0;
    for (int waited = 0; waited < THD_WAIT_MS && !seen; waited += 20) {
        r = thd_req(d, "GET", "/v1/services/base/logs?lines=50", NULL);
        seen = r->body && strstr(r->body, "up base") != NULL;
        thd_resp_free(r);
        if (!seen)
            thd_sleep_ms(20);
    }
    assert_true(seen);

    /* Stop through the API: the process is gone; start brings a new one. */
    r = thd_req(d, "POST", "/v1/services/top/stop", NULL);
    thd_assert_status(r, 200);
    thd_resp_free(r);
    wait_state(d, "top", "stopped");
    for (int waited = 0; waited < THD_WAIT_MS && kill((pid_t)top, 0) == 0; waited += 20)
        thd_sleep_ms(20);
    assert_int_equal(kill((pid_t)top, 0), -1);
    r = thd_req(d, "POST", "/v1/services/top/start", NULL);
    thd_assert_status(r, 200);
    thd_resp_free(r);
    long top2 = wait_state(d, "top", "running");
    assert_true(top2 > 0 && top2 != top);

    /* A task that becomes ready in the trigger queue runs the event service. */
    free(thd_submit(d, "{\"queue\": \"jobs-in\"}"));
    seen = 0;
    for (int waited = 0; waited < THD_WAIT_MS && !seen; waited += 20) {
        r = thd_req(d, "GET", "/v1/services/onqueue/logs", NULL);
        seen = r->body && strstr(r->body, "triggered run") != NULL;
        thd_resp_free(r);
        if (!seen)
            thd_sleep_ms(20);
    }
    assert_true(seen);

    /* Unknown services and actions. */
    r = thd_req(d, "POST", "/v1/services/nope/restart", NULL);
    thd_assert_error(r, 404, "ENOTFOUND", "name");
    thd_resp_free(r);
    r = thd_req(d, "POST", "/v1/services/top/explode", NULL);
    thd_assert_error(r, 404, "EROUTE", "");
    thd_resp_free(r);
    r = thd_req(d, "GET", "/v1/services/top/restart", NULL);
    thd_assert_error(r, 405, "EMETHOD", "");
    thd_resp_free(r);

    /* SIGTERM: every service is stopped before the daemon exits. */
    assert_int_equal(thd_signal_wait(d, SIGTERM, THD_STOP_MS), 0);
    assert_int_equal(kill((pid_t)base, 0), -1);
    assert_int_equal(kill((pid_t)top2, 0), -1);
    thd_free(d);
    *state = NULL;
    free(text);
    free(cfg);
    free(once);
    free(loop);
    free(dir);
}

/* Services added and removed at run time through the API. */
static void test_add_remove(void **state)
{
    char *dir = thd_newdir("svcadd");
    thd_daemon *d = thd_start(dir, NULL);
    *state = d;
    thd_resp *r =
        thd_req(d, "POST", "/v1/services", "{\"name\": \"extra\", \"argv\": [\"sleep\", \"300\"]}");
    thd_assert_status(r, 201);
    thd_resp_free(r);
    long pid = wait_state(d, "extra", "running");
    assert_true(pid > 0);
    assert_int_equal(kill((pid_t)pid, 0), 0);

    r = thd_req(d, "POST", "/v1/services", "{\"name\": \"extra\", \"argv\": [\"true\"]}");
    thd_assert_error(r, 409, "ECONFLICT", "name");
    thd_resp_free(r);
    r = thd_req(d, "POST", "/v1/services",
                "{\"name\": \"bad\", \"argv\": [\"true\"], "
                "\"health\": {\"kind\": \"http\"}}");
    thd_assert_error(r, 400, "EINVAL", "health.url");
    thd_resp_free(r);
    r = thd_req(d, "POST", "/v1/services",
                "{\"name\": \"bad\", \"argv\": [\"true\"], "
                "\"colour\": 1}");
    thd_assert_error(r, 400, "EINVAL", "colour");
    thd_resp_free(r);

    /* An unknown dependency is refused and leaves nothing behind. */
    r = thd_req(d, "POST", "/v1/services",
                "{\"name\": \"orphan\", \"argv\": [\"true\"], \"deps\": [\"ghost\"]}");
    thd_assert_error(r, 400, "EINVAL", "deps[0]");
    thd_resp_free(r);
    r = thd_req(d, "GET", "/v1/services/orphan", NULL);
    thd_assert_error(r, 404, "ENOTFOUND", "name");
    thd_resp_free(r);

    /* A dependent blocks removal; removed, its process is gone. */
    r = thd_req(d, "POST", "/v1/services",
                "{\"name\": \"needs\", \"argv\": [\"sleep\", \"300\"], \"deps\": [\"extra\"]}");
    thd_assert_status(r, 201);
    thd_resp_free(r);
    r = thd_req(d, "DELETE", "/v1/services/extra", NULL);
    thd_assert_error(r, 409, "EBUSY", "name");
    thd_resp_free(r);
    r = thd_req(d, "DELETE", "/v1/services/needs", NULL);
    thd_assert_status(r, 200);
    thd_resp_free(r);
    r = thd_req(d, "DELETE", "/v1/services/extra", NULL);
    thd_assert_status(r, 200);
    thd_resp_free(r);
    for (int waited = 0; waited < THD_WAIT_MS && kill((pid_t)pid, 0) == 0; waited += 20)
        thd_sleep_ms(20);
    assert_int_equal(kill((pid_t)pid, 0), -1);
    r = thd_req(d, "GET", "/v1/services/extra", NULL);
    thd_assert_error(r, 404, "ENOTFOUND", "name");
    thd_resp_free(r);
    thd_stop(d);
    thd_free(d);
    *state = NULL;
    free(dir);
}

static void test_cycle_refused(void **state)
{
    char *dir = thd_newdir("cycle");
    char *cfg = thd_fmt("%s/taskhive.ini", dir);
    thd_write_file(cfg, "[service.a]\nargv = [\"/bin/true\"]\ndeps = b\n"
                        "[service.b]\nargv = [\"/bin/true\"]\ndeps = a\n");
    const char *argv[] = {thd_bin(), "serve", "--config", cfg, "--check-config", NULL};
    char *out = NULL;
    int rc = thd_run(argv, 10000, &out);
    assert_int_equal(rc, 1);
    assert_non_null(out);
    assert_non_null(strstr(out, "dependency cycle: a -> b -> a"));
    free(out);
    free(cfg);
    free(dir);
}

int main(void)
{
    thd_curl_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_services_lifecycle, thd_teardown),
        cmocka_unit_test_teardown(test_add_remove, thd_teardown),
        cmocka_unit_test(test_cycle_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
