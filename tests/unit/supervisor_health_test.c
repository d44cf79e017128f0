/*
 * Supervisor health checks, readiness and memory limits, with real child
 * processes:
 *
 *   - command check: the service is "starting" until the first passing
 *     check; when the check starts failing, health_failed fires
 *     failures_before_restart times and the process is replaced;
 *   - http check against a loopback server run by the test: 200 makes it
 *     ready, 503 restarts it;
 *   - tcp check: a listening port makes it ready, a closed one restarts it;
 *   - readiness: with notify = 1 the instance stays "starting" until the
 *     child (this binary, re-executed) sends READY=1 to $NOTIFY_SOCKET; its
 *     STATUS= shows in the list;
 *   - memory limit: a child touching 100 MiB under a 20 MiB limit is
 *     restarted with the reason logged; an idle one under the same limit
 *     is left alone;
 *   - start timeout: a notify service that never says READY=1 is failed.
 */
#include "supervisor_helpers.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdatomic.h>

/* ---- a tiny loopback HTTP server -------------------------------------------------- */

typedef struct web {
    int fd;
    int port;
    atomic_int status; /* the answer's status code */
    atomic_int stop;
    atomic_int requests;
    pthread_t thread;
} web;

static void *web_main(void *arg)
{
    web *w = arg;
    while (!atomic_load(&w->stop)) {
        struct pollfd pf = {w->fd, POLLIN, 0};
        if (poll(&pf, 1, 20) <= 0)
            continue;
        int c = accept(w->fd, NULL, NULL);
        if (c < 0)
            continue;
        char buf[2048];
        size_t n = 0;
        struct pollfd cf = {c, POLLIN, 0};
        while (n < sizeof buf - 1 && poll(&cf, 1, 1000) > 0) {
            ssize_t k = read(c, buf + n, sizeof buf - 1 - n);
            if (k <= 0)
                break;
            n += (size_t)k;
            buf[n] = '\0';
            if (strstr(buf, "\r\n\r\n"))
                break;
        }
        if (n) {
            char reply[160];
            int st = atomic_load(&w->status);
            int len =
                snprintf(reply, sizeof reply,
                         "HTTP/1.1 %d X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", st);
            ssize_t k = write(c, reply, (size_t)len);
            (void)k;
            atomic_fetch_add(&w->requests, 1);
        }
        close(c);
    }
    return NULL;
}

static void web_start(web *w, int status)
{
    memset(w, 0, sizeof *w);
    atomic_store(&w->status, status);
    w->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(w->fd >= 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(w->fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(w->fd, 64), 0);
    socklen_t len = sizeof sa;
    getsockname(w->fd, (struct sockaddr *)&sa, &len);
    w->port = ntohs(sa.sin_port);
    assert_int_equal(pthread_create(&w->thread, NULL, web_main, w), 0);
}

static void web_stop(web *w)
{
    if (w->fd < 0)
        return;
    atomic_store(&w->stop, 1);
    pthread_join(w->thread, NULL);
    close(w->fd);
    w->fd = -1;
}

/* ---- tests ---------------------------------------------------------------------------- */

static void test_command_check_restarts(void **state)
{
    char flag[1100], env[1200];
    fx_path(FX, "healthy", flag, sizeof flag);
    snprintf(env, sizeof env, "HFILE=%s", flag);
    const char *envv[] = {env};
    th_service_spec s = shell_spec("checked", "touch \"$HFILE\"; exec sleep 30");
    s.env = envv;
    s.nenv = 1;
    s.health.kind = TH_HEALTH_COMMAND;
    s.health.command = "test -f \"$HFILE\" && test \"$TH_MAIN_PID\" -gt 0";
    s.health.interval_ms = 100;
    s.health.timeout_ms = 2000;
    s.health.failures_before_restart = 2;
    add_ok(FX->sv, &s);
    CALL_OK(th_supervisor_start_all, FX->sv);
    REC_WAIT(&FX->rec, TH_SEV_READY, "checked", 1); /* the first passing check */
    th_service_info i = info_of(FX->sv, "checked", 0);
    assert_int_equal(i.state, TH_SVC_RUNNING);
    assert_true(i.healthy);
    assert_int_equal(rec_count(&FX->rec, TH_SEV_HEALTH_FAILED, "checked"), 0);
    int old = i.pid;
    assert_int_equal(unlink(flag), 0);
    REC_WAIT(&FX->rec, TH_SEV_RESTARTING, "checked", 1);
    assert_int_equal(rec_count(&FX->rec, TH_SEV_HEALTH_FAILED, "checked"), 2);
    rec_ev f2 = rec_get(&FX->rec, TH_SEV_HEALTH_FAILED, "checked", 1, NULL);
    assert_int_equal(f2.value, 2);
    assert_non_null(strstr(f2.message, "exited with status 1"));
    rec_ev ex = rec_get(&FX->rec, TH_SEV_EXITED, "checked", 0, NULL);
    assert_non_null(strstr(ex.message, "health check failed 2 times"));
    /* The new process makes the file again and passes. */
    WAIT_FOR(running_new_pid(FX->sv, "checked", 0, old));
    assert_int_equal(info_of(FX->sv, "checked", 0).restarts, 1);
}

static void test_http_check(void **state)
{
    web w;
    web_start(&w, 200);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/health", w.port);
    th_service_spec s = shell_spec("webby", "exec sleep 30");
    s.health.kind = TH_HEALTH_HTTP;
    s.health.url = url;
    s.health.interval_ms = 100;
    s.health.timeout_ms = 2000;
    s.health.failures_before_restart = 2;
    add_ok(FX->sv, &s);
    CALL_OK(th_supervisor_start_all, FX->sv);
    REC_WAIT(&FX->rec, TH_SEV_READY, "webby", 1);
    assert_true(atomic_load(&w.requests) >= 1);
    int old = pid_of(FX->sv, "webby", 0);
    atomic_store(&w.status, 503);
    REC_WAIT(&FX->rec, TH_SEV_RESTARTING, "webby", 1);
    rec_ev f = rec_get(&FX->rec, TH_SEV_HEALTH_FAILED, "webby", 0, NULL);
    assert_non_null(strstr(f.message, "HTTP 503"));
    atomic_store(&w.status, 204);
    WAIT_FOR(running_new_pid(FX->sv, "webby", 0, old));
    assert_true(info_of(FX->sv, "webby", 0).healthy);
    web_stop(&w);
}

static void test_tcp_check(void **state)
{
    web w;
    web_start(&w, 200); /* accepts connections: enough for a tcp check */
    th_service_spec s = shell_spec("tcpsvc", "exec sleep 30");
    s.health.kind = TH_HEALTH_TCP;
    s.health.host = "127.0.0.1";
    s.health.port = w.port;
    s.health.interval_ms = 100;
    s.health.timeout_ms = 1000;
    s.health.failures_before_restart = 2;
    s.max_restarts = -1;
    add_ok(FX->sv, &s);
    CALL_OK(th_supervisor_start_all, FX->sv);
    REC_WAIT(&FX->rec, TH_SEV_READY, "tcpsvc", 1);
    web_stop(&w); /* the port is closed: connections are refused */
    REC_WAIT(&FX->rec, TH_SEV_RESTARTING, "tcpsvc", 1);
    rec_ev f = rec_get(&FX->rec, TH_SEV_HEALTH_FAILED, "tcpsvc", 0, NULL);
    assert_non_null(strstr(f.message, "connect to 127.0.0.1"));
    /* Restarted, it stays "starting": nothing listens any more. */
    REC_WAIT(&FX->rec, TH_SEV_STARTED, "tcpsvc", 2);
    sleep_ms(300);
    assert_int_equal(state_of(FX->sv, "tcpsvc", 0), TH_SVC_STARTING);
    assert_non_null(strstr(info_of(FX->sv, "tcpsvc", 0).status, "health check"));
}

static void test_notify_ready(void **state)
{
    char flag[1100];
    fx_path(FX, "go", flag, sizeof flag);
    th_service_spec s;
    th_service_spec_init(&s, "notifier");
    const char *argv[] = {self_exe(), "--notify-ready", flag, "serving requests"};
    s.argv = argv;
    s.argc = 4;
    s.notify = 1;
    add_ok(FX->sv, &s);
    CALL_OK(th_supervisor_start_all, FX->sv);
    REC_WAIT(&FX->rec, TH_SEV_STARTED, "notifier", 1);
    sleep_ms(100);
    th_service_info i = info_of(FX->sv, "notifier", 0);
    assert_int_equal(i.state, TH_SVC_STARTING); /* the child waits for `flag` */
    assert_false(i.healthy);
    assert_int_equal(rec_count(&FX->rec, TH_SEV_READY, "notifier"), 0);
    FILE *f = fopen(flag, "w");
    assert_non_null(f);
    fclose(f);
    REC_WAIT(&FX->rec, TH_SEV_READY, "notifier", 1);
    i = info_of(FX->sv, "notifier", 0);
    assert_int_equal(i.state, TH_SVC_RUNNING);
    assert_string_equal(i.status, "serving requests");
    assert_true(i.healthy);
    char log[1200];
    snprintf(log, sizeof log, "%s/notifier.log", FX->logdir);
    WAIT_FOR(file_contains(log, " stdout notified\n"));
}

static void test_start_timeout(void **state)
{
    char flag[1100];
    fx_path(FX, "never", flag, sizeof flag);
    th_service_spec s;
    th_service_spec_init(&s, "silent");
    const char *argv[] = {self_exe(), "--notify-ready", flag, "x"};
    s.argv = argv;
    s.argc = 4;
    s.notify = 1;
    s.start_timeout_ms = 300;
    s.restart = TH_RESTART_NEVER;
    s.stop_timeout_ms = 2000;
    add_ok(FX->sv, &s);
    CALL_OK(th_supervisor_start_all, FX->sv);
    REC_WAIT(&FX->rec, TH_SEV_EXITED, "silent", 1);
    rec_ev ex = rec_get(&FX->rec, TH_SEV_EXITED, "silent", 0, NULL);
    assert_non_null(strstr(ex.message, "not ready after 300 ms"));
    assert_int_equal(ex.signal, SIGTERM);
    th_service_info i = info_of(FX->sv, "silent", 0);
    assert_int_equal(i.state, TH_SVC_FAILED);
    assert_int_equal(rec_count(&FX->rec, TH_SEV_RESTARTING, "silent"), 0);
}

static void test_memory_limit(void **state)
{
    const char *hog_argv[] = {self_exe(), "--hog", "100"};
    const char *idle_argv[] = {self_exe(), "--hog", "0"};
    th_service_spec hog, idle;
    th_service_spec_init(&hog, "hog");
    hog.argv = hog_argv;
    hog.argc = 3;
    hog.memory_limit = (size_t)20 << 20;
    hog.backoff_initial_ms = 50;
    hog.max_restarts = 1;
    th_service_spec_init(&idle, "idle");
    idle.argv = idle_argv;
    idle.argc = 3;
    idle.memory_limit = (size_t)20 << 20;
    add_ok(FX->sv, &idle);
    add_ok(FX->sv, &hog);
    CALL_OK(th_supervisor_start_all, FX->sv);
    REC_WAIT(&FX->rec, TH_SEV_RESTARTING, "hog", 1);
    rec_ev r = rec_get(&FX->rec, TH_SEV_RESTARTING, "hog", 0, NULL);
    assert_non_null(strstr(r.message, "memory limit exceeded"));
    rec_ev ex = rec_get(&FX->rec, TH_SEV_EXITED, "hog", 0, NULL);
    assert_int_equal(ex.signal, SIGTERM);
    char log[1200];
    snprintf(log, sizeof log, "%s/hog.log", FX->logdir);
    assert_true(file_contains(log, "memory limit exceeded: RSS"));
    /* The second breach disables it (max_restarts 1). */
    REC_WAIT(&FX->rec, TH_SEV_DISABLED, "hog", 1);
    /* The idle one, sampled all along, is under the limit and untouched. */
    th_service_info i = info_of(FX->sv, "idle", 0);
    assert_int_equal(i.state, TH_SVC_RUNNING);
    assert_int_equal(i.restarts, 0);
    assert_true(i.rss_bytes > 0 && i.rss_bytes < ((size_t)20 << 20));
    assert_int_equal(rec_count(&FX->rec, TH_SEV_EXITED, "idle"), 0);
}

int main(int argc, char **argv)
{
    helper_dispatch(argc, argv);
    const struct CMUnitTest tests[] = {
        T(test_command_check_restarts), T(test_http_check),    T(test_tcp_check),
        T(test_notify_ready),           T(test_start_timeout), T(test_memory_limit),
    };
    return cmocka_run_group_tests_name("supervisor_health", tests, NULL, NULL);
}
