/*
 * Supervisor input checks, without running services:
 *
 *   - cron: a table of expressions and the next time after a given UTC
 *     instant ("*\/5 * * * *", "0 9-17 * * 1-5", lists, steps, names,
 *     macros, day-of-month OR day-of-week, a leap day), and a table of
 *     invalid expressions each refused naming its field;
 *   - specs: a table of bad specs, each refused by th_supervisor_add with
 *     err.field naming the field; a good spec passes th_service_spec_check;
 *   - user: an unknown user is refused; a user other than our own is
 *     refused when not running as root (checked in a child that drops to
 *     nobody);
 *   - options: th_supervisor_new refuses a missing log_dir and bad knobs,
 *     and creates a missing log directory with its parents.
 */
#include "supervisor_helpers.h"

#include "supervise/cron.h"

/* Wall-clock ms of a UTC date. */
static int64_t utc(int y, int mo, int d, int h, int mi)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    return (int64_t)timegm(&tm) * 1000;
}

static void test_cron_next(void **state)
{
    (void)state;
    /* 2026-11-23 is a Monday. */
    const struct {
        const char *expr;
        int64_t after, want;
    } cases[] = {
        {"*/5 * * * *", utc(2026, 11, 23, 17, 2) + 30000, utc(2026, 11, 23, 17, 5)},
        {"*/5 * * * *", utc(2026, 11, 23, 17, 5), utc(2026, 11, 23, 17, 10)}, /* strictly after */
        {"*/5 * * * *", utc(2026, 12, 31, 23, 58), utc(2027, 1, 1, 0, 0)},
        {"* * * * *", utc(2026, 11, 23, 17, 0) + 59999, utc(2026, 11, 23, 17, 1)},
        {"0 9-17 * * 1-5", utc(2026, 11, 21, 10, 0), utc(2026, 11, 23, 9, 0)}, /* Sat -> Mon */
        {"0 9-17 * * 1-5", utc(2026, 11, 23, 16, 59), utc(2026, 11, 23, 17, 0)},
        {"0 9-17 * * 1-5", utc(2026, 11, 23, 17, 0), utc(2026, 11, 24, 9, 0)},
        {"0 9-17 * * 1-5", utc(2026, 11, 27, 17, 30), utc(2026, 11, 30, 9, 0)}, /* Fri -> Mon */
        {"0,30 * * * *", utc(2026, 11, 23, 17, 1), utc(2026, 11, 23, 17, 30)},
        {"15,45 8,20 * * *", utc(2026, 11, 23, 9, 0), utc(2026, 11, 23, 20, 15)},
        {"5-20/5 * * * *", utc(2026, 11, 23, 17, 20), utc(2026, 11, 23, 18, 5)},
        {"30/10 * * * *", utc(2026, 11, 23, 17, 51), utc(2026, 11, 23, 18, 30)},
        {"15 14 1 * *", utc(2026, 11, 23, 0, 0), utc(2026, 12, 1, 14, 15)},
        {"0 0 * * 0", utc(2026, 11, 23, 0, 0), utc(2026, 11, 29, 0, 0)},
        {"0 0 * * 7", utc(2026, 11, 23, 0, 0), utc(2026, 11, 29, 0, 0)}, /* 7 = Sunday */
        {"0 12 * jan,jul mon", utc(2026, 11, 23, 0, 0), utc(2027, 1, 4, 12, 0)},
        {"0 0 13 * 5", utc(2026, 11, 23, 0, 0), utc(2026, 11, 27, 0, 0)}, /* Friday or 13th */
        {"0 0 13 * 5", utc(2026, 11, 28, 0, 0), utc(2026, 12, 4, 0, 0)},
        {"0 0 29 2 *", utc(2026, 3, 1, 0, 0), utc(2028, 2, 29, 0, 0)}, /* a leap day */
        {"0 0 1 */3 *", utc(2026, 11, 23, 0, 0), utc(2027, 1, 1, 0, 0)},
        {"@hourly", utc(2026, 11, 23, 17, 2), utc(2026, 11, 23, 18, 0)},
        {"@daily", utc(2026, 11, 23, 17, 2), utc(2026, 11, 24, 0, 0)},
        {"@weekly", utc(2026, 11, 23, 17, 2), utc(2026, 11, 29, 0, 0)},
        {"@monthly", utc(2026, 11, 23, 17, 2), utc(2026, 12, 1, 0, 0)},
        {"@yearly", utc(2026, 11, 23, 17, 2), utc(2027, 1, 1, 0, 0)},
        {"  1  2  3  4  *  ", utc(2026, 11, 23, 0, 0), utc(2027, 4, 3, 2, 1)},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        th__cron c;
        th_error err;
        int rc = th__cron_parse(&c, cases[i].expr, &err);
        if (rc != 0)
            fail_msg("\"%s\": %s (%s)", cases[i].expr, err.message, err.field);
        int64_t got = th__cron_next(&c, cases[i].after, 1);
        if (got != cases[i].want)
            fail_msg("\"%s\" after %lld: got %lld, want %lld", cases[i].expr,
                     (long long)cases[i].after, (long long)got, (long long)cases[i].want);
    }
}

static void test_cron_invalid(void **state)
{
    (void)state;
    const struct {
        const char *expr, *field;
    } cases[] = {
        {"60 * * * *", "minute"},      {"* 24 * * *", "hour"},
        {"* * 0 * *", "day_of_month"}, {"* * 32 * *", "day_of_month"},
        {"* * * 13 *", "month"},       {"* * * 0 *", "month"},
        {"* * * * 8", "day_of_week"},  {"* * * *", "cron"},
        {"* * * * * *", "cron"},       {"", "cron"},
        {"*/0 * * * *", "minute"},     {"*/61 * * * *", "minute"},
        {"5-1 * * * *", "minute"},     {"a * * * *", "minute"},
        {"1,,2 * * * *", "minute"},    {"1- * * * *", "minute"},
        {"* * * foo *", "month"},      {"* * * * funday", "day_of_week"},
        {"0 0 30 2 *", "cron"},        {"@sometimes", "cron"},
        {"@daily 5", "cron"},          {"-1 * * * *", "minute"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        th__cron c;
        th_error err;
        memset(&err, 0, sizeof err);
        int rc = th__cron_parse(&c, cases[i].expr, &err);
        if (rc != TH_EINVAL || strcmp(err.field, cases[i].field) != 0)
            fail_msg("\"%s\": rc %d field \"%s\" (%s), want field \"%s\"", cases[i].expr, rc,
                     err.field, err.message, cases[i].field);
        assert_true(err.message[0] != '\0');
    }
    th_error err;
    assert_int_equal(th__cron_parse(&(th__cron){0}, NULL, &err), TH_EINVAL);
}

/* ---- bad specs ------------------------------------------------------------------------ */

static const char *const argv_ok[] = {"sleep", "1"};
static const char *const argv_null1[] = {"sleep", NULL};
static const char *const argv_missing[] = {"/no/such/program"};
static const char *const argv_nopath[] = {"no-such-program-xyz"};
static const char *const env_noeq[] = {"NOEQUALS"};
static const char *const env_badkey[] = {"A=1", "1A=b"};
static const char *const env_reserved[] = {"TH_INSTANCE=4"};
static const char *const deps_self[] = {"bad"};
static const char *const deps_dup[] = {"x", "x"};
static const char *const deps_badname[] = {"no spaces"};

typedef void (*spec_edit)(th_service_spec *s);

#define EDIT(name, body)                                                                           \
    static void name(th_service_spec *s)                                                           \
    {                                                                                              \
        body;                                                                                      \
    }

EDIT(e_name_null, s->name = NULL)
EDIT(e_name_space, s->name = "bad name")
EDIT(e_name_all, s->name = "all")
EDIT(e_name_long, s->name = "a123456789012345678901234567890123456789012345678901234567890123x")
EDIT(e_no_program, s->argv = NULL; s->argc = 0)
EDIT(e_shell_and_argv, s->use_shell = 1; s->command = "true")
EDIT(e_shell_no_cmd, s->argv = NULL; s->argc = 0; s->use_shell = 1)
EDIT(e_cmd_no_shell, s->command = "true")
EDIT(e_use_shell_2, s->use_shell = 2)
EDIT(e_argv_null, s->argv = NULL; s->argc = 1)
EDIT(e_argv1_null, s->argv = argv_null1; s->argc = 2)
EDIT(e_argv_missing, s->argv = argv_missing; s->argc = 1)
EDIT(e_argv_nopath, s->argv = argv_nopath; s->argc = 1)
EDIT(e_cwd, s->cwd = "/no/such/dir")
EDIT(e_env_noeq, s->env = env_noeq; s->nenv = 1)
EDIT(e_env_badkey, s->env = env_badkey; s->nenv = 2)
EDIT(e_env_reserved, s->env = env_reserved; s->nenv = 1)
EDIT(e_env_null, s->env = NULL; s->nenv = 1)
EDIT(e_user_unknown, s->user = "no-such-user-xyz")
EDIT(e_user_empty, s->user = "")
EDIT(e_instances_0, s->instances = 0)
EDIT(e_instances_65, s->instances = 65)
EDIT(e_type, s->type = (th_service_type)9)
EDIT(e_periodic_none, s->type = TH_SERVICE_PERIODIC)
EDIT(e_periodic_both, s->type = TH_SERVICE_PERIODIC; s->interval_ms = 1000; s->cron = "* * * * *")
EDIT(e_periodic_fast, s->type = TH_SERVICE_PERIODIC; s->interval_ms = 5)
EDIT(e_cron_minute, s->type = TH_SERVICE_PERIODIC; s->cron = "61 * * * *")
EDIT(e_cron_fields, s->type = TH_SERVICE_PERIODIC; s->cron = "* * *")
EDIT(e_interval_always, s->interval_ms = 1000)
EDIT(e_cron_oneshot, s->type = TH_SERVICE_ONESHOT; s->cron = "* * * * *")
EDIT(e_deps_self, s->deps = deps_self; s->ndeps = 1)
EDIT(e_deps_dup, s->deps = deps_dup; s->ndeps = 2)
EDIT(e_deps_name, s->deps = deps_badname; s->ndeps = 1)
EDIT(e_deps_null, s->deps = NULL; s->ndeps = 2)
EDIT(e_group, s->group = "bad group")
EDIT(e_restart, s->restart = (th_restart_policy)7)
EDIT(e_restart_always_oneshot, s->type = TH_SERVICE_ONESHOT; s->restart = TH_RESTART_ALWAYS)
EDIT(e_backoff_0, s->backoff_initial_ms = 0)
EDIT(e_backoff_max, s->backoff_initial_ms = 5000; s->backoff_max_ms = 1000)
EDIT(e_max_restarts, s->max_restarts = -2)
EDIT(e_window, s->restart_window_ms = 0)
EDIT(e_signal_0, s->stop_signal = 0)
EDIT(e_signal_99, s->stop_signal = 99)
EDIT(e_stop_timeout, s->stop_timeout_ms = -1)
EDIT(e_start_timeout, s->start_timeout_ms = 0)
EDIT(e_health_kind, s->health.kind = (th_health_kind)9)
EDIT(e_health_cmd, s->health.kind = TH_HEALTH_COMMAND)
EDIT(e_health_url, s->health.kind = TH_HEALTH_HTTP; s->health.url = "ftp://x/")
EDIT(e_health_host, s->health.kind = TH_HEALTH_TCP; s->health.port = 80)
EDIT(e_health_port, s->health.kind = TH_HEALTH_TCP; s->health.host = "localhost")
EDIT(e_health_interval, s->health.kind = TH_HEALTH_COMMAND; s->health.command = "true";
     s->health.interval_ms = 0)
EDIT(e_health_timeout, s->health.kind = TH_HEALTH_COMMAND; s->health.command = "true";
     s->health.timeout_ms = 0)
EDIT(e_health_failures, s->health.kind = TH_HEALTH_COMMAND; s->health.command = "true";
     s->health.failures_before_restart = 0)
EDIT(e_notify, s->notify = 2)
EDIT(e_memory, s->memory_limit = 100)
EDIT(e_log_max, s->log_max_bytes = 10)
EDIT(e_log_keep, s->log_keep = 101)
EDIT(e_log_keep_neg, s->log_keep = -1)

static void test_bad_specs(void **state)
{
    const struct {
        spec_edit edit;
        const char *field;
    } cases[] = {
        {e_name_null, "name"},
        {e_name_space, "name"},
        {e_name_all, "name"},
        {e_name_long, "name"},
        {e_no_program, "argv"},
        {e_shell_and_argv, "argv"},
        {e_shell_no_cmd, "command"},
        {e_cmd_no_shell, "command"},
        {e_use_shell_2, "use_shell"},
        {e_argv_null, "argv"},
        {e_argv1_null, "argv[1]"},
        {e_argv_missing, "argv[0]"},
        {e_argv_nopath, "argv[0]"},
        {e_cwd, "cwd"},
        {e_env_noeq, "env[0]"},
        {e_env_badkey, "env[1]"},
        {e_env_reserved, "env[0]"},
        {e_env_null, "env"},
        {e_user_unknown, "user"},
        {e_user_empty, "user"},
        {e_instances_0, "instances"},
        {e_instances_65, "instances"},
        {e_type, "type"},
        {e_periodic_none, "interval_ms"},
        {e_periodic_both, "cron"},
        {e_periodic_fast, "interval_ms"},
        {e_cron_minute, "cron.minute"},
        {e_cron_fields, "cron"},
        {e_interval_always, "interval_ms"},
        {e_cron_oneshot, "cron"},
        {e_deps_self, "deps[0]"},
        {e_deps_dup, "deps[1]"},
        {e_deps_name, "deps[0]"},
        {e_deps_null, "deps"},
        {e_group, "group"},
        {e_restart, "restart"},
        {e_restart_always_oneshot, "restart"},
        {e_backoff_0, "backoff_initial_ms"},
        {e_backoff_max, "backoff_max_ms"},
        {e_max_restarts, "max_restarts"},
        {e_window, "restart_window_ms"},
        {e_signal_0, "stop_signal"},
        {e_signal_99, "stop_signal"},
        {e_stop_timeout, "stop_timeout_ms"},
        {e_start_timeout, "start_timeout_ms"},
        {e_health_kind, "health.kind"},
        {e_health_cmd, "health.command"},
        {e_health_url, "health.url"},
        {e_health_host, "health.host"},
        {e_health_port, "health.port"},
        {e_health_interval, "health.interval_ms"},
        {e_health_timeout, "health.timeout_ms"},
        {e_health_failures, "health.failures_before_restart"},
        {e_notify, "notify"},
        {e_memory, "memory_limit"},
        {e_log_max, "log_max_bytes"},
        {e_log_keep, "log_keep"},
        {e_log_keep_neg, "log_keep"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        th_service_spec s;
        th_service_spec_init(&s, "bad");
        s.argv = argv_ok;
        s.argc = 2;
        cases[i].edit(&s);
        th_error err;
        memset(&err, 0, sizeof err);
        int rc = th_supervisor_add(FX->sv, &s, &err);
        if (rc != TH_EINVAL || strcmp(err.field, cases[i].field) != 0)
            fail_msg("case %zu: rc %s field \"%s\" (%s), want EINVAL field \"%s\"", i,
                     th_errname(rc), err.field, err.message, cases[i].field);
        assert_true(err.message[0] != '\0');
    }
    th_service_info *a = NULL;
    size_t n = 1;
    CALL_OK(th_supervisor_list, FX->sv, NULL, &a, &n);
    assert_int_equal(n, 0); /* nothing was added */
    th_service_info_free(a);

    /* The same spec without the fault is accepted. */
    th_service_spec s;
    th_service_spec_init(&s, "good");
    s.argv = argv_ok;
    s.argc = 2;
    s.instances = 2;
    s.type = TH_SERVICE_PERIODIC;
    s.cron = "0 9-17 * * 1-5";
    s.health.kind = TH_HEALTH_TCP;
    s.health.host = "localhost";
    s.health.port = 8080;
    assert_int_equal(th_service_spec_check(&s, NULL), 0);
    add_ok(FX->sv, &s);
    assert_int_equal(info_of(FX->sv, "good", 1).state, TH_SVC_INITIALIZED);
}

static void test_user_refused(void **state)
{
    th_service_spec s = shell_spec("as-user", "true");
    s.user = "no-such-user-xyz";
    th_error err;
    assert_int_equal(th_supervisor_add(FX->sv, &s, &err), TH_EINVAL);
    assert_string_equal(err.field, "user");
    assert_non_null(strstr(err.message, "no such user"));
    if (geteuid() != 0) {
        s.user = "root";
        assert_int_equal(th_service_spec_check(&s, &err), TH_EINVAL);
        assert_string_equal(err.field, "user");
        assert_non_null(strstr(err.message, "root"));
        return;
    }
    /* As root: a child that drops to nobody must be refused. */
    const char *args[] = {"--user-check-as-nobody", NULL};
    pid_t pid = spawn_self(args);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

static void test_options(void **state)
{
    th_supervisor_options o;
    th_supervisor_options_init(&o);
    th_error err;
    assert_null(th_supervisor_new(&o, &err));
    assert_int_equal(err.code, TH_EINVAL);
    assert_string_equal(err.field, "log_dir");
    char dir[1200];
    snprintf(dir, sizeof dir, "%s/deep/er/logs", FX->dir);
    o.log_dir = dir;
    o.sample_interval_ms = 1;
    assert_null(th_supervisor_new(&o, &err));
    assert_string_equal(err.field, "sample_interval_ms");
    o.sample_interval_ms = 1000;
    o.health_window_ms = 0;
    assert_null(th_supervisor_new(&o, &err));
    assert_string_equal(err.field, "health_window_ms");
    o.health_window_ms = 60000;
    th_supervisor *sv = th_supervisor_new(&o, &err);
    assert_non_null(sv);
    assert_true(file_exists(dir));
    th_supervisor_free(sv);
    th_supervisor_free(NULL);
    snprintf(dir, sizeof dir, "%s/afile", FX->dir);
    FILE *f = fopen(dir, "w");
    fclose(f);
    o.log_dir = dir;
    assert_null(th_supervisor_new(&o, &err));
    assert_int_equal(err.code, TH_EIO);
    assert_string_equal(err.field, "log_dir");
    assert_string_equal(th_service_state_name(TH_SVC_RESTARTING), "restarting");
    assert_string_equal(th_service_type_name(TH_SERVICE_EVENT), "event");
    assert_string_equal(th_supervisor_event_name(TH_SEV_LOG_ROTATED), "log_rotated");
}

int main(int argc, char **argv)
{
    helper_dispatch(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cron_next),
        cmocka_unit_test(test_cron_invalid),
        T(test_bad_specs),
        T(test_user_refused),
        T(test_options),
    };
    return cmocka_run_group_tests_name("supervisor_spec", tests, NULL, NULL);
}
