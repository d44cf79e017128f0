/*
 * Supervisor groups and logs, with real child processes:
 *
 *   - one-for-one: killing g2 (SIGKILL) restarts only g2;
 *   - one-for-all: every service of the group gets a new process;
 *   - rest-for-one: g2 and g3 (added after it) restart, g1 keeps its pid;
 *   - groups: unknown group refused (field "group"), a second strategy for
 *     a name refused (TH_ECONFLICT);
 *   - logs: stdout and stderr lines land in <log_dir>/<name>.log with a UTC
 *     time stamp ("2026-11-23T17:00:00.123Z stdout ...");
 *   - rotation: with a small log_max_bytes, <name>.log.1 .. .N exist,
 *     never more than log_keep, each within the size; log_rotated fires.
 */
#include "supervisor_helpers.h"

#include <ctype.h>

static const char *const group_names[] = {"g1", "g2", "g3"};

static void start_group(svfx *fx, th_group_strategy st)
{
    CALL_OK(th_supervisor_group, fx->sv, "grp", st);
    for (int k = 0; k < 3; k++) {
        th_service_spec s = shell_spec(group_names[k], "exec sleep 30");
        s.group = "grp";
        add_ok(fx->sv, &s);
    }
    CALL_OK(th_supervisor_start_all, fx->sv);
    for (int k = 0; k < 3; k++)
        WAIT_FOR(running_new_pid(fx->sv, group_names[k], 0, 0));
}

/* Kills g2 and checks which services got new processes. */
static void kill_g2_expect(svfx *fx, const int restarted[3])
{
    int before[3];
    for (int k = 0; k < 3; k++)
        before[k] = pid_of(fx->sv, group_names[k], 0);
    assert_int_equal(kill(before[1], SIGKILL), 0);
    for (int k = 0; k < 3; k++)
        if (restarted[k])
            WAIT_FOR(running_new_pid(fx->sv, group_names[k], 0, before[k]));
    sleep_ms(300); /* a wrong restart would have happened by now */
    for (int k = 0; k < 3; k++) {
        th_service_info i = info_of(fx->sv, group_names[k], 0);
        assert_int_equal(i.state, TH_SVC_RUNNING);
        if (restarted[k]) {
            assert_int_not_equal(i.pid, before[k]);
            assert_int_equal(i.restarts, 1);
        } else {
            assert_int_equal(i.pid, before[k]);
            assert_int_equal(i.restarts, 0);
        }
    }
    rec_ev ex = rec_get(&fx->rec, TH_SEV_EXITED, "g2", 0, NULL);
    assert_int_equal(ex.signal, SIGKILL);
}

static void test_one_for_one(void **state)
{
    start_group(FX, TH_GROUP_ONE_FOR_ONE);
    const int want[3] = {0, 1, 0};
    kill_g2_expect(FX, want);
}

static void test_one_for_all(void **state)
{
    start_group(FX, TH_GROUP_ONE_FOR_ALL);
    const int want[3] = {1, 1, 1};
    kill_g2_expect(FX, want);
    /* The siblings were stopped by the supervisor (SIGTERM), not failed. */
    assert_int_equal(rec_get(&FX->rec, TH_SEV_EXITED, "g1", 0, NULL).signal, SIGTERM);
    assert_non_null(
        strstr(rec_get(&FX->rec, TH_SEV_RESTARTING, "g1", 0, NULL).message, "one-for-all"));
}

static void test_rest_for_one(void **state)
{
    start_group(FX, TH_GROUP_REST_FOR_ONE);
    const int want[3] = {0, 1, 1};
    kill_g2_expect(FX, want);
}

static void test_group_errors(void **state)
{
    th_error err;
    th_service_spec s = shell_spec("lost", "exec sleep 30");
    s.group = "nogroup";
    assert_int_equal(th_supervisor_add(FX->sv, &s, &err), TH_ENOTFOUND);
    assert_string_equal(err.field, "group");
    CALL_OK(th_supervisor_group, FX->sv, "grp", TH_GROUP_ONE_FOR_ALL);
    CALL_OK(th_supervisor_group, FX->sv, "grp", TH_GROUP_ONE_FOR_ALL);
    assert_int_equal(th_supervisor_group(FX->sv, "grp", TH_GROUP_REST_FOR_ONE, &err), TH_ECONFLICT);
    assert_int_equal(th_supervisor_group(FX->sv, "bad name", TH_GROUP_ONE_FOR_ONE, &err),
                     TH_EINVAL);
    assert_string_equal(err.field, "name");
    assert_int_equal(th_supervisor_group(FX->sv, "g", (th_group_strategy)7, &err), TH_EINVAL);
    assert_string_equal(err.field, "strategy");
}

/* "2026-11-23T17:00:00.123Z " at the start of `line`. */
static int has_stamp(const char *line)
{
    const char *shape = "dddd-dd-ddTdd:dd:dd.dddZ ";
    for (size_t i = 0; shape[i]; i++) {
        if (shape[i] == 'd' ? !isdigit((unsigned char)line[i]) : line[i] != shape[i])
            return 0;
    }
    return 1;
}

/* Every line of `path` is stamped; returns the number of lines. */
static int check_lines(const char *path)
{
    char *s = slurp(path);
    assert_non_null(s);
    int n = 0;
    for (char *line = s; *line;) {
        char *end = strchr(line, '\n');
        assert_non_null(end); /* complete lines only */
        *end = '\0';
        if (!has_stamp(line))
            fail_msg("%s: line without a time stamp: \"%s\"", path, line);
        n++;
        line = end + 1;
    }
    free(s);
    return n;
}

static void test_log_capture(void **state)
{
    th_service_spec s = shell_spec("talker", "echo hello out; echo oops err >&2; "
                                             "printf 'no newline'; exec sleep 30");
    add_ok(FX->sv, &s);
    CALL_OK(th_supervisor_start_all, FX->sv);
    char log[1200];
    snprintf(log, sizeof log, "%s/talker.log", FX->logdir);
    WAIT_FOR(file_contains(log, " stdout hello out\n") && file_contains(log, " stderr oops err\n"));
    assert_true(check_lines(log) >= 3);
    assert_true(file_contains(log, " supervisor started pid "));
    /* A partial line is written when the process ends. */
    CALL_OK(th_supervisor_stop, FX->sv, "talker");
    assert_true(file_contains(log, " stdout no newline\n"));
    assert_true(file_contains(log, " supervisor pid "));
    check_lines(log);
}

static void test_log_rotation(void **state)
{
    th_service_spec s = shell_spec("chatty", "i=0; while [ $i -lt 300 ]; do "
                                             "echo \"line $i padding padding padding\"; "
                                             "i=$((i+1)); done; echo done; exec sleep 30");
    s.log_max_bytes = 1024;
    s.log_keep = 3;
    add_ok(FX->sv, &s);
    CALL_OK(th_supervisor_start_all, FX->sv);
    char log[1200], path[1300];
    snprintf(log, sizeof log, "%s/chatty.log", FX->logdir);
    WAIT_FOR(file_contains(log, " stdout done\n"));
    /* ~18 KB of output through 1 KiB files: many rotations. */
    assert_true(rec_count(&FX->rec, TH_SEV_LOG_ROTATED, "chatty") >= 10);
    rec_ev r = rec_get(&FX->rec, TH_SEV_LOG_ROTATED, "chatty", 0, NULL);
    assert_non_null(strstr(r.message, "chatty.log"));
    for (int k = 1; k <= 4; k++) {
        snprintf(path, sizeof path, "%s.%d", log, k);
        if (k <= 3) {
            assert_true(file_exists(path));
            struct stat st;
            assert_int_equal(stat(path, &st), 0);
            assert_true(st.st_size > 0 && st.st_size <= 1024);
            check_lines(path);
        } else {
            assert_false(file_exists(path)); /* never more than log_keep */
        }
    }
    struct stat st;
    assert_int_equal(stat(log, &st), 0);
    assert_true(st.st_size <= 1024);
    /* The newest lines are in the live file or the first rotated one. */
    snprintf(path, sizeof path, "%s.1", log);
    assert_true(file_contains(log, "line 299 ") || file_contains(path, "line 299 "));
    assert_false(file_contains(log, "line 0 "));
}

int main(int argc, char **argv)
{
    helper_dispatch(argc, argv);
    const struct CMUnitTest tests[] = {
        T(test_one_for_one),  T(test_one_for_all), T(test_rest_for_one),
        T(test_group_errors), T(test_log_capture), T(test_log_rotation),
    };
    return cmocka_run_group_tests_name("supervisor_group", tests, NULL, NULL);
}
