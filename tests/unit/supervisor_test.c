/*
 * The supervisor with real child processes (/bin/sh scripts):
 *
 *   - a crash loop restarts with growing delays (seen in restarting
 *     events, and no restart comes before its delay), then the service is
 *     disabled after max_restarts within the window and an alert fires;
 *     health reports it;
 *   - health: the score counts healthy / enabled services, 1 of 5 failed
 *     is healthy (0.8) without the failed-services alert, 2 of 5 raise it;
 *   - dependency order: b (depends on a) starts after a, d waits for the
 *     oneshot c to exit 0, stop_all stops b before a;
 *   - a dependency cycle is refused naming it; an unknown dependency is
 *     refused naming it (err.field "deps[0]"); nothing starts;
 *   - periodic: a 200 ms interval runs repeatedly (never more often than
 *     the elapsed time allows); a cron schedule shows its next run;
 *   - oneshot runs once; event services run on th_supervisor_trigger, and
 *     triggers during a run coalesce into one more run;
 *   - a child that ignores SIGTERM is SIGKILLed after stop_timeout_ms, and
 *     the signal reaches its own child (process group);
 *   - the stop signal goes to the whole process group; what a process
 *     leaves behind when it exits is killed;
 *   - instances = 3 gives 3 processes with TH_INSTANCE 0, 1, 2;
 *   - restart by name replaces the process; remove refuses a needed service;
 *   - the supervisor's process dying (SIGKILL) takes its children along
 *     (PR_SET_PDEATHSIG).
 */
#include "supervisor_helpers.h"

#include <sys/prctl.h>

static void test_crash_loop_disables(void **state)
{
    th_service_spec s = shell_spec("crashy", "echo boom; exit 3");
    s.backoff_initial_ms = 100;
    s.backoff_max_ms = 1000;
    s.max_restarts = 3;
    s.restart_window_ms = 60000;
    add_ok(FX->sv, &s);
    CALL_OK(th_supervisor_start_all, FX->sv);
    REC_WAIT(&FX->rec, TH_SEV_DISABLED, "crashy", 1);
    REC_WAIT(&FX->rec, TH_SEV_ALERT, "crashy", 1);

    /* Three restarts, each after twice the delay of the one before. */
    assert_int_equal(rec_count(&FX->rec, TH_SEV_RESTARTING, "crashy"), 3);
    int64_t want[] = {100, 200, 400};
    for (size_t k = 0; k < 3; k++) {
        rec_ev r = rec_get(&FX->rec, TH_SEV_RESTARTING, "crashy", k, NULL);
        assert_int_equal(r.delay_ms, want[k]);
        rec_ev ex = rec_get(&FX->rec, TH_SEV_EXITED, "crashy", k, NULL);
        rec_ev st = rec_get(&FX->rec, TH_SEV_STARTED, "crashy", k + 1, NULL);
        assert_int_equal(ex.exit_code, 3);
        assert_true(st.time_ms - ex.time_ms >= want[k] - 5); /* not before its delay */
    }
    assert_int_equal(rec_count(&FX->rec, TH_SEV_EXITED, "crashy"), 4);
    assert_int_equal(rec_count(&FX->rec, TH_SEV_STARTED, "crashy"), 4);
    rec_ev alert = rec_get(&FX->rec, TH_SEV_ALERT, "crashy", 0, NULL);
    assert_non_null(strstr(alert.message, "disabled"));

    th_service_info i = info_of(FX->sv, "crashy", 0);
    assert_int_equal(i.state, TH_SVC_DISABLED);
    assert_int_equal(i.pid, 0);
    assert_int_equal(i.restarts, 3);
    assert_int_equal(i.last_exit_code, 3);
    assert_int_equal(i.last_exit_signal, 0);

    th_supervisor_health_info h;
    assert_int_equal(th_supervisor_health(FX->sv, &h), 0);
    assert_int_equal(h.services_enabled, 1);
    assert_int_equal(h.services_failed, 1);
    assert_true(h.score < 0.01);
    assert_false(h.healthy);
    assert_true(h.alert_failed);
    assert_true(h.alert_error_rate);
    assert_int_equal(h.exits, 4);
    assert_int_equal(h.failed_exits, 4);
    /* The error-rate alert fired supervisor-wide too. */
    REC_WAIT(&FX->rec, TH_SEV_ALERT, "", 1);

    /* Starting it again clears "disabled" and runs it. */
    CALL_OK(th_supervisor_start, FX->sv, "crashy");
    REC_WAIT(&FX->rec, TH_SEV_STARTED, "crashy", 5);
    REC_WAIT(&FX->rec, TH_SEV_DISABLED, "crashy", 2);
}

static void test_health_score(void **state)
{
    char name[16];
    for (int k = 0; k < 4; k++) {
        snprintf(name, sizeof name, "good%d", k);
        th_service_spec s = shell_spec(name, "exec sleep 30");
        add_ok(FX->sv, &s);
    }
    th_service_spec bad = shell_spec("bad1", "exit 1");
    bad.max_restarts = 0;
    add_ok(FX->sv, &bad);
    CALL_OK(th_supervisor_start_all, FX->sv);
    REC_WAIT(&FX->rec, TH_SEV_DISABLED, "bad1", 1);
    for (int k = 0; k < 4; k++) {
        snprintf(name, sizeof name, "good%d", k);
        REC_WAIT(&FX->rec, TH_SEV_READY, name, 1);
    }
    th_supervisor_health_info h;
    assert_int_equal(th_supervisor_health(FX->sv, &h), 0);
    assert_int_equal(h.services_enabled, 5);
    assert_int_equal(h.services_healthy, 4);
    assert_int_equal(h.services_failed, 1);
    assert_true(h.score > 0.79 && h.score < 0.81);
    assert_true(h.healthy);
    assert_false(h.alert_failed); /* 20 % is not more than 20 % */

    th_service_spec bad2 = shell_spec("bad2", "exit 2");
    bad2.max_restarts = 0;
    add_ok(FX->sv, &bad2);
    CALL_OK(th_supervisor_start, FX->sv, "bad2");
    REC_WAIT(&FX->rec, TH_SEV_DISABLED, "bad2", 1);
    assert_int_equal(th_supervisor_health(FX->sv, &h), 0);
    assert_int_equal(h.services_enabled, 6);
    assert_int_equal(h.services_failed, 2);
    assert_false(h.healthy);
    assert_true(h.alert_failed);
    assert_non_null(strstr(h.message, "2 of 6 services"));
}

static void test_dependency_order(void **state)
{
    const char *dep_a[] = {"a"}, *dep_c[] = {"c"};
    /* b takes a while to stop: stopped in order, a still goes last. */
    th_service_spec b = shell_spec("b", "trap 'sleep 0.3; exit 0' TERM; "
                                        "while :; do sleep 0.05; done");
    b.deps = dep_a;
    b.ndeps = 1;
    th_service_spec a = shell_spec("a", "exec sleep 30");
    th_service_spec d = shell_spec("d", "exec sleep 30");
    d.deps = dep_c;
    d.ndeps = 1;
    th_service_spec c = shell_spec("c", "sleep 0.2; exit 0");
    c.type = TH_SERVICE_ONESHOT;
    add_ok(FX->sv, &b); /* added before what it needs */
    add_ok(FX->sv, &d);
    add_ok(FX->sv, &a);
    add_ok(FX->sv, &c);
    CALL_OK(th_supervisor_start_all, FX->sv);
    REC_WAIT(&FX->rec, TH_SEV_READY, "b", 1);
    REC_WAIT(&FX->rec, TH_SEV_READY, "d", 1);
    size_t ia, ib, ic, id;
    rec_get(&FX->rec, TH_SEV_READY, "a", 0, &ia);
    rec_get(&FX->rec, TH_SEV_STARTED, "b", 0, &ib);
    assert_true(ia < ib);
    rec_ev cx = rec_get(&FX->rec, TH_SEV_EXITED, "c", 0, &ic);
    rec_get(&FX->rec, TH_SEV_STARTED, "d", 0, &id);
    assert_int_equal(cx.exit_code, 0);
    assert_true(ic < id);
    assert_int_equal(state_of(FX->sv, "c", 0), TH_SVC_STOPPED);

    CALL_OK(th_supervisor_stop_all, FX->sv);
    size_t xa, xb;
    rec_get(&FX->rec, TH_SEV_EXITED, "a", 0, &xa);
    rec_get(&FX->rec, TH_SEV_EXITED, "b", 0, &xb);
    assert_true(xb < xa); /* the dependent first */
    assert_int_equal(rec_get(&FX->rec, TH_SEV_EXITED, "b", 0, NULL).exit_code, 0);
    const char *names[] = {"a", "b", "d"};
    for (int k = 0; k < 3; k++) {
        th_service_info i = info_of(FX->sv, names[k], 0);
        assert_int_equal(i.state, TH_SVC_STOPPED);
        assert_int_equal(i.pid, 0);
    }
}

static void test_dependency_cycle_refused(void **state)
{
    const char *da[] = {"b"}, *db[] = {"c"}, *dc[] = {"a"};
    th_service_spec a = shell_spec("a", "exec sleep 30");
    a.deps = da;
    a.ndeps = 1;
    th_service_spec b = shell_spec("b", "exec sleep 30");
    b.deps = db;
    b.ndeps = 1;
    th_service_spec c = shell_spec("c", "exec sleep 30");
    c.deps = dc;
    c.ndeps = 1;
    th_service_spec free_one = shell_spec("loner", "exec sleep 30");
    add_ok(FX->sv, &free_one);
    add_ok(FX->sv, &a);
    add_ok(FX->sv, &b);
    add_ok(FX->sv, &c);
    th_error err;
    assert_int_equal(th_supervisor_start_all(FX->sv, &err), TH_EINVAL);
    assert_string_equal(err.field, "deps");
    assert_non_null(strstr(err.message, "a -> b -> c -> a"));
    assert_int_equal(th_supervisor_start(FX->sv, "b", &err), TH_EINVAL);
    assert_non_null(strstr(err.message, "b -> c -> a -> b"));
    sleep_ms(100);
    assert_int_equal(rec_count(&FX->rec, TH_SEV_STARTED, NULL), 0);
    assert_int_equal(state_of(FX->sv, "loner", 0), TH_SVC_INITIALIZED);
    /* Breaking the cycle lets everything start. */
    CALL_OK(th_supervisor_remove, FX->sv, "loner");
    assert_int_equal(th_supervisor_remove(FX->sv, "a", &err), TH_EBUSY);
    assert_non_null(strstr(err.message, "c depends on a"));
}

static void test_unknown_dependency_refused(void **state)
{
    const char *deps[] = {"ghost"};
    th_service_spec x = shell_spec("x", "exec sleep 30");
    x.deps = deps;
    x.ndeps = 1;
    add_ok(FX->sv, &x);
    th_error err;
    assert_int_equal(th_supervisor_start_all(FX->sv, &err), TH_ENOTFOUND);
    assert_string_equal(err.field, "deps[0]");
    assert_non_null(strstr(err.message, "\"ghost\""));
    assert_non_null(strstr(err.message, "x"));
    assert_int_equal(th_supervisor_start(FX->sv, "x", &err), TH_ENOTFOUND);
    assert_string_equal(err.field, "deps[0]");
    assert_int_equal(state_of(FX->sv, "x", 0), TH_SVC_INITIALIZED);
    assert_int_equal(th_supervisor_start(FX->sv, "nobody", &err), TH_ENOTFOUND);
    assert_string_equal(err.field, "name");
}

static void test_periodic_interval(void **state)
{
    th_service_spec s = shell_spec("tick", "echo tick");
    s.type = TH_SERVICE_PERIODIC;
    s.interval_ms = 200;
    add_ok(FX->sv, &s);
    th_service_spec c = shell_spec("cronjob", "echo cron");
    c.type = TH_SERVICE_PERIODIC;
    c.cron = "*/5 * * * *";
    add_ok(FX->sv, &c);
    int64_t t0 = mono_ms();
    CALL_OK(th_supervisor_start_all, FX->sv);
    REC_WAIT(&FX->rec, TH_SEV_EXITED, "tick", 4);
    int64_t elapsed = mono_ms() - t0;
    size_t runs = rec_count(&FX->rec, TH_SEV_STARTED, "tick");
    /* The first run is at start, then one per interval at most. */
    assert_true(runs <= (size_t)(elapsed / 200) + 2);
    for (size_t k = 0; k < 4; k++)
        assert_int_equal(rec_get(&FX->rec, TH_SEV_EXITED, "tick", k, NULL).exit_code, 0);
    th_service_info i = info_of(FX->sv, "tick", 0);
    assert_int_equal(i.type, TH_SERVICE_PERIODIC);
    assert_true(i.next_run_at > 0);

    th_service_info ci = info_of(FX->sv, "cronjob", 0);
    int64_t now = (int64_t)time(NULL) * 1000;
    assert_true(ci.next_run_at > now - 1000);
    assert_true(ci.next_run_at <= now + 5 * 60 * 1000);
    assert_int_equal(ci.next_run_at % 60000, 0);
    assert_int_equal(ci.state, TH_SVC_STOPPED);
    /* A trigger runs it now. */
    CALL_OK(th_supervisor_trigger, FX->sv, "cronjob");
    REC_WAIT(&FX->rec, TH_SEV_EXITED, "cronjob", 1);
}

static void test_oneshot_runs_once(void **state)
{
    th_service_spec s = shell_spec("once", "echo once");
    s.type = TH_SERVICE_ONESHOT;
    add_ok(FX->sv, &s);
    CALL_OK(th_supervisor_start_all, FX->sv);
    REC_WAIT(&FX->rec, TH_SEV_EXITED, "once", 1);
    sleep_ms(300);
    assert_int_equal(rec_count(&FX->rec, TH_SEV_STARTED, "once"), 1);
    th_service_info i = info_of(FX->sv, "once", 0);
    assert_int_equal(i.state, TH_SVC_STOPPED);
    assert_int_equal(i.last_exit_code, 0);
    assert_int_equal(i.restarts, 0);
    /* start_all again does not rerun a oneshot that succeeded... */
    CALL_OK(th_supervisor_start_all, FX->sv);
    sleep_ms(100);
    assert_int_equal(rec_count(&FX->rec, TH_SEV_STARTED, "once"), 1);
    /* ...starting it by name does. */
    CALL_OK(th_supervisor_start, FX->sv, "once");
    REC_WAIT(&FX->rec, TH_SEV_EXITED, "once", 2);
}

static void test_event_trigger(void **state)
{
    th_service_spec s = shell_spec("onevent", "echo ran; sleep 0.3");
    s.type = TH_SERVICE_EVENT;
    add_ok(FX->sv, &s);
    th_service_spec al = shell_spec("daemon", "exec sleep 30");
    add_ok(FX->sv, &al);
    th_error err;
    assert_int_equal(th_supervisor_trigger(FX->sv, "onevent", &err), TH_ESTATE);
    assert_int_equal(th_supervisor_trigger(FX->sv, "ghost", &err), TH_ENOTFOUND);
    assert_int_equal(th_supervisor_trigger(FX->sv, "daemon", &err), TH_EINVAL);
    assert_string_equal(err.field, "type");
    CALL_OK(th_supervisor_start_all, FX->sv);
    sleep_ms(200);
    assert_int_equal(rec_count(&FX->rec, TH_SEV_STARTED, "onevent"), 0);
    assert_int_equal(state_of(FX->sv, "onevent", 0), TH_SVC_STOPPED);

    CALL_OK(th_supervisor_trigger, FX->sv, "onevent");
    REC_WAIT(&FX->rec, TH_SEV_EXITED, "onevent", 1);
    assert_int_equal(rec_get(&FX->rec, TH_SEV_EXITED, "onevent", 0, NULL).exit_code, 0);

    /* Three triggers in a row: one run now, one more after it. */
    CALL_OK(th_supervisor_trigger, FX->sv, "onevent");
    CALL_OK(th_supervisor_trigger, FX->sv, "onevent");
    CALL_OK(th_supervisor_trigger, FX->sv, "onevent");
    REC_WAIT(&FX->rec, TH_SEV_EXITED, "onevent", 3);
    sleep_ms(500);
    assert_int_equal(rec_count(&FX->rec, TH_SEV_STARTED, "onevent"), 3);
    char log[1200];
    snprintf(log, sizeof log, "%s/onevent.log", FX->logdir);
    assert_true(file_contains(log, " stdout ran"));
}

static void test_stop_timeout_kills(void **state)
{
    char script[1100], pidf[1100], childf[1100], body[8192];
    fx_path(FX, "stubborn.pid", pidf, sizeof pidf);
    fx_path(FX, "stubborn.child", childf, sizeof childf);
    snprintf(body, sizeof body,
             "trap '' TERM\n"
             "sleep 60 &\n"
             "echo $! > %s\n"
             "echo $$ > %s.tmp && mv %s.tmp %s\n" /* whole when it appears */
             "while :; do sleep 0.05; done",
             childf, pidf, pidf, pidf);
    write_script(FX, "stubborn.sh", body, script, sizeof script);
    th_service_spec s;
    th_service_spec_init(&s, "stubborn");
    const char *argv[] = {script};
    s.argv = argv;
    s.argc = 1;
    s.stop_timeout_ms = 300;
    add_ok(FX->sv, &s);
    CALL_OK(th_supervisor_start_all, FX->sv);
    WAIT_FOR(file_exists(pidf));
    int pid = (int)read_pid_file(pidf), child = (int)read_pid_file(childf);
    assert_int_equal(pid, pid_of(FX->sv, "stubborn", 0));
    assert_true(child > 0);
    int64_t t0 = mono_ms();
    CALL_OK(th_supervisor_stop, FX->sv, "stubborn"); /* returns once it is gone */
    assert_true(mono_ms() - t0 >= 290);
    rec_ev ex = rec_get(&FX->rec, TH_SEV_EXITED, "stubborn", 0, NULL);
    assert_int_equal(ex.signal, SIGKILL);
    assert_int_equal(ex.exit_code, -1);
    th_service_info i = info_of(FX->sv, "stubborn", 0);
    assert_int_equal(i.state, TH_SVC_STOPPED);
    assert_int_equal(i.last_exit_signal, SIGKILL);
    assert_int_equal(rec_count(&FX->rec, TH_SEV_STOPPED, "stubborn"), 1);
    assert_int_equal(rec_count(&FX->rec, TH_SEV_RESTARTING, "stubborn"), 0);
    WAIT_FOR(process_gone(child)); /* the group got the signals too */
    char log[1200];
    snprintf(log, sizeof log, "%s/stubborn.log", FX->logdir);
    assert_true(file_contains(log, "sending SIGKILL"));
}

static void test_process_group(void **state)
{
    char script[1100], mark[1100], kidf[1100], leftf[1100], body[8192];
    fx_path(FX, "family.mark", mark, sizeof mark);
    fx_path(FX, "family.kid", kidf, sizeof kidf);
    fx_path(FX, "leaver.pid", leftf, sizeof leftf);
    /* The parent waits for its child on SIGTERM; only a signal to the whole
     * group lets the child write its mark. */
    snprintf(body, sizeof body,
             "sh -c 'trap \"echo got-term > %s; exit 0\" TERM; "
             "while :; do sleep 0.05; done' &\n"
             "kid=$!\n"
             "trap 'wait $kid; exit 0' TERM\n"
             "echo $kid > %s.tmp && mv %s.tmp %s\n"
             "while :; do sleep 0.05; done",
             mark, kidf, kidf, kidf);
    write_script(FX, "family.sh", body, script, sizeof script);
    th_service_spec fam;
    th_service_spec_init(&fam, "family");
    const char *argv[] = {script};
    fam.argv = argv;
    fam.argc = 1;
    fam.stop_timeout_ms = 5000;
    add_ok(FX->sv, &fam);
    /* A oneshot that leaves a process behind: swept when it exits. */
    char cmd[1300];
    snprintf(cmd, sizeof cmd, "sleep 60 & echo $! > %s; exit 0", leftf);
    th_service_spec leaver = shell_spec("leaver", cmd);
    leaver.type = TH_SERVICE_ONESHOT;
    add_ok(FX->sv, &leaver);
    CALL_OK(th_supervisor_start_all, FX->sv);
    WAIT_FOR(file_exists(kidf));
    sleep_ms(100); /* the traps are set */
    int kid = (int)read_pid_file(kidf);
    CALL_OK(th_supervisor_stop, FX->sv, "family");
    assert_true(file_contains(mark, "got-term"));
    assert_int_equal(rec_get(&FX->rec, TH_SEV_EXITED, "family", 0, NULL).exit_code, 0);
    WAIT_FOR(process_gone(kid));
    REC_WAIT(&FX->rec, TH_SEV_EXITED, "leaver", 1);
    int left = (int)read_pid_file(leftf);
    assert_true(left > 0);
    WAIT_FOR(process_gone(left));
}

static void test_instances(void **state)
{
    th_service_spec s = shell_spec("multi", "echo \"instance $TH_INSTANCE of $TH_SERVICE\"; exec "
                                            "sleep 30");
    s.instances = 3;
    add_ok(FX->sv, &s);
    CALL_OK(th_supervisor_start_all, FX->sv);
    REC_WAIT(&FX->rec, TH_SEV_READY, "multi", 3);
    th_service_info *a = NULL;
    size_t n = 0;
    CALL_OK(th_supervisor_list, FX->sv, "multi", &a, &n);
    assert_int_equal(n, 3);
    for (size_t k = 0; k < 3; k++) {
        assert_int_equal(a[k].instance, (int)k);
        assert_int_equal(a[k].state, TH_SVC_RUNNING);
        assert_true(a[k].pid > 0);
        assert_true(a[k].healthy);
        for (size_t j = 0; j < k; j++)
            assert_int_not_equal(a[k].pid, a[j].pid);
    }
    th_service_info_free(a);
    char log[1200];
    snprintf(log, sizeof log, "%s/multi.log", FX->logdir);
    WAIT_FOR(file_contains(log, "stdout[0] instance 0 of multi") &&
             file_contains(log, "stdout[1] instance 1 of multi") &&
             file_contains(log, "stdout[2] instance 2 of multi"));
    /* The samples fill in RSS (and uptime grows). */
    WAIT_FOR(info_of(FX->sv, "multi", 1).rss_bytes > 0);
    assert_true(info_of(FX->sv, "multi", 1).uptime_ms >= 0);
    th_supervisor_list(FX->sv, NULL, &a, &n, NULL);
    assert_int_equal(n, 3);
    th_service_info_free(a);
    th_service_info_free(NULL);
}

static void test_restart_and_remove(void **state)
{
    th_service_spec s = shell_spec("svc", "exec sleep 30");
    add_ok(FX->sv, &s);
    th_error err;
    assert_int_equal(th_supervisor_add(FX->sv, &s, &err), TH_ECONFLICT);
    assert_string_equal(err.field, "name");
    CALL_OK(th_supervisor_start, FX->sv, "svc");
    WAIT_FOR(running_new_pid(FX->sv, "svc", 0, 0));
    int old = pid_of(FX->sv, "svc", 0);
    CALL_OK(th_supervisor_restart, FX->sv, "svc");
    WAIT_FOR(running_new_pid(FX->sv, "svc", 0, old));
    assert_int_equal(info_of(FX->sv, "svc", 0).restarts, 1);
    rec_ev ex = rec_get(&FX->rec, TH_SEV_EXITED, "svc", 0, NULL);
    assert_int_equal(ex.signal, SIGTERM);
    int pid = pid_of(FX->sv, "svc", 0);
    CALL_OK(th_supervisor_remove, FX->sv, "svc");
    assert_true(process_gone(pid));
    th_service_info *a = NULL;
    size_t n = 9;
    assert_int_equal(th_supervisor_list(FX->sv, "svc", &a, &n, &err), TH_ENOTFOUND);
    assert_null(a);
    assert_int_equal(n, 0);
    assert_int_equal(th_supervisor_remove(FX->sv, "svc", &err), TH_ENOTFOUND);
}

/* Not a fixture test: the supervisor lives in a child process we kill. */
static void test_no_orphans(void **state)
{
    (void)state;
    char dir[1100], ready[1200];
    char *d = thtest_unique_path("orphans", "");
    snprintf(dir, sizeof dir, "%s", d);
    free(d);
    mkdir_p(dir);
    snprintf(ready, sizeof ready, "%s/ready", dir);
    /* Orphans are re-parented to us, so we can see how they ended. */
    assert_int_equal(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
    const char *args[] = {"--orphan-parent", dir, NULL};
    pid_t parent = spawn_self(args);
    WAIT_FOR(file_exists(ready));
    int victim = (int)read_pid_file(ready);
    assert_true(victim > 0);
    kill(parent, SIGKILL);
    int st;
    assert_int_equal(waitpid(parent, &st, 0), parent);
    int64_t until = mono_ms() + WAIT_LIMIT_MS;
    pid_t got;
    while ((got = waitpid(victim, &st, WNOHANG)) == 0 && mono_ms() < until)
        sleep_ms(5);
    prctl(PR_SET_CHILD_SUBREAPER, 0);
    assert_int_equal(got, victim);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGTERM);
}

int main(int argc, char **argv)
{
    helper_dispatch(argc, argv);
    const struct CMUnitTest tests[] = {
        T(test_crash_loop_disables),
        T(test_health_score),
        T(test_dependency_order),
        T(test_dependency_cycle_refused),
        T(test_unknown_dependency_refused),
        T(test_periodic_interval),
        T(test_oneshot_runs_once),
        T(test_event_trigger),
        T(test_stop_timeout_kills),
        T(test_process_group),
        T(test_instances),
        T(test_restart_and_remove),
        cmocka_unit_test(test_no_orphans),
    };
    return cmocka_run_group_tests_name("supervisor", tests, NULL, NULL);
}
