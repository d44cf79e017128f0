/*
 * Shared helpers for the cmocka unit tests; see thtest.h. Failures are reported
 * at the caller's file and line (the *_at functions) so a broken step points
 * at the test, not at this file.
 */
#include "thtest.h"

#include "pgserver.h"

#include <ftw.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* ---- fake clock --------------------------------------------------------- */

static int64_t fake_now(void *ud)
{
    const thtest_clock *clk = ud;
    return clk->now;
}

void thtest_clock_init(thtest_clock *clk, int64_t start_ms)
{
    clk->now = start_ms;
    clk->clock.now_ms = fake_now;
    clk->clock.ud = clk;
}

void thtest_clock_advance(thtest_clock *clk, int64_t ms)
{
    clk->now += ms;
}

/* ---- temp files --------------------------------------------------------- */

static char g_tmpdir[4096];
static int g_tmpdir_made; /* 1 when we created it and must remove it */
static unsigned g_unique;

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void remove_tmpdir(void)
{
    if (g_tmpdir_made)
        nftw(g_tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

const char *thtest_tmpdir(void)
{
    if (g_tmpdir[0])
        return g_tmpdir;
    const char *env = getenv("TH_TEST_TMPDIR");
    if (env && *env) {
        snprintf(g_tmpdir, sizeof g_tmpdir, "%s", env);
        return g_tmpdir;
    }
    const char *base = getenv("TMPDIR");
    snprintf(g_tmpdir, sizeof g_tmpdir, "%s/thtest.XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(g_tmpdir)) {
        snprintf(g_tmpdir, sizeof g_tmpdir, "/tmp/thtest.XXXXXX");
        if (!mkdtemp(g_tmpdir)) {
            perror("thtest: mkdtemp");
            abort();
        }
    }
    g_tmpdir_made = 1;
    atexit(remove_tmpdir);
    return g_tmpdir;
}

char *thtest_path(const char *name)
{
    const char *dir = thtest_tmpdir();
    size_t len = strlen(dir) + 1 + strlen(name) + 1;
    char *p = malloc(len);
    assert_non_null(p);
    snprintf(p, len, "%s/%s", dir, name);
    return p;
}

char *thtest_unique_path(const char *prefix, const char *ext)
{
    char name[256];
    snprintf(name, sizeof name, "%s-%ld-%u%s", prefix, (long)getpid(), ++g_unique, ext ? ext : "");
    return thtest_path(name);
}

/* ---- engines ------------------------------------------------------------ */

th_engine *thtest_engine_opts(const char *uri, thtest_clock *clk, const th_engine_options *opts)
{
    th_error err;
    memset(&err, 0, sizeof err);
    th_store *store = th_store_open(uri, NULL, &err);
    if (!store)
        fail_msg("th_store_open(%s): %s [%s] field '%s': %s", uri, th_errname(err.code),
                 th_strerror(err.code), err.field, err.message);
    th_engine_options o;
    if (opts)
        o = *opts;
    else
        th_engine_options_init(&o);
    if (clk) {
        o.clock = &clk->clock;
        o.manual_tick = 1;
        if (o.seed == 0)
            o.seed = 42;
    }
    memset(&err, 0, sizeof err);
    th_engine *e = th_engine_new(store, &o, &err);
    if (!e)
        fail_msg("th_engine_new(%s): %s field '%s': %s", uri, th_errname(err.code), err.field,
                 err.message);
    return e;
}

th_engine *thtest_engine(const char *uri, thtest_clock *clk)
{
    return thtest_engine_opts(uri, clk, NULL);
}

/* ---- store kinds and the fixture ---------------------------------------- */

static const char *g_kind = "memory";

const char *thtest_store_kind(void)
{
    return g_kind;
}

char *thtest_store_uri(const char *kind, char **path_out)
{
    if (path_out)
        *path_out = NULL;
    if (strcmp(kind, "memory") == 0) {
        char *uri = strdup("memory");
        assert_non_null(uri);
        return uri;
    }
    if (strcmp(kind, "postgres") == 0)
        return thtest_pg_uri();
    assert_string_equal(kind, "sqlite");
    char *path = thtest_unique_path("th", ".db");
    size_t len = strlen("sqlite:") + strlen(path) + 1;
    char *uri = malloc(len);
    assert_non_null(uri);
    snprintf(uri, len, "sqlite:%s", path);
    if (path_out)
        *path_out = path;
    else
        free(path);
    return uri;
}

void thtest_remove_db(const char *path)
{
    static const char *const suffix[] = {"", "-wal", "-shm", "-journal"};
    char buf[4200];
    if (!path)
        return;
    for (size_t i = 0; i < sizeof suffix / sizeof suffix[0]; i++) {
        snprintf(buf, sizeof buf, "%s%s", path, suffix[i]);
        unlink(buf);
    }
}

char *thtest_pg_uri(void)
{
    char *uri = thpg_new_schema();
    if (!uri)
        fail_msg("no PostgreSQL schema for the test (see the pgserver lines above)");
    return uri;
}

int thtest_run_all_stores(const char *name, const struct CMUnitTest *tests, size_t n)
{
    static const char *const kinds[] = {"memory", "sqlite", "postgres"};
    int failed = 0;
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        char group[256];
        g_kind = kinds[i];
        snprintf(group, sizeof group, "%s/%s", name, kinds[i]);
        failed += _cmocka_run_group_tests(group, tests, n, NULL, NULL);
    }
    g_kind = "memory";
    return failed;
}

int thtest_fx_setup(void **state)
{
    thtest_fx *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    thtest_clock_init(&fx->clk, THTEST_T0);
    fx->uri = thtest_store_uri(g_kind, &fx->path);
    fx->durable = strcmp(g_kind, "memory") != 0;
    fx->e = thtest_engine(fx->uri, &fx->clk);
    *state = fx;
    return 0;
}

int thtest_fx_teardown(void **state)
{
    thtest_fx *fx = *state;
    if (!fx)
        return 0;
    th_engine_free(fx->e);
    thtest_remove_db(fx->path);
    free(fx->path);
    free(fx->uri);
    free(fx);
    *state = NULL;
    return 0;
}

void thtest_fx_reopen(thtest_fx *fx, const th_engine_options *opts)
{
    th_engine_free(fx->e);
    fx->e = NULL;
    fx->e = thtest_engine_opts(fx->uri, &fx->clk, opts);
}

int thtest_fx_tick(thtest_fx *fx, int64_t ms)
{
    thtest_clock_advance(&fx->clk, ms);
    int rc = th_engine_tick(fx->e);
    assert_true(rc >= 0);
    return rc;
}

/* ---- task helpers ------------------------------------------------------- */

th_retry_policy thtest_retry(int max_retries, int64_t initial_ms, int64_t max_delay_ms,
                             double multiplier)
{
    th_retry_policy p;
    th_retry_policy_init(&p);
    p.max_retries = max_retries;
    p.initial_delay_ms = initial_ms;
    p.max_delay_ms = max_delay_ms;
    p.multiplier = multiplier;
    p.jitter = 0;
    return p;
}

void thtest_submit_at(th_engine *e, const th_task_spec *spec, char id[TH_ID_SIZE], const char *file,
                      int line)
{
    th_error err;
    memset(&err, 0, sizeof err);
    int rc = th_engine_submit(e, spec, id, &err);
    if (rc != 0) {
        print_error("submit to '%s' returned %d (%s) field '%s': %s\n",
                    spec->queue ? spec->queue : "(null)", rc, th_errname(rc), err.field,
                    err.message);
        _fail(file, line);
    }
}

void thtest_submit_simple_at(th_engine *e, const char *queue, const char *payload,
                             char id[TH_ID_SIZE], const char *file, int line)
{
    th_task_spec spec;
    th_task_spec_init(&spec, queue);
    spec.payload = payload;
    thtest_submit_at(e, &spec, id, file, line);
}

th_task *thtest_claim1_at(th_engine *e, const char *queue, int64_t lease_ms, const char *file,
                          int line)
{
    th_claim_options o;
    memset(&o, 0, sizeof o);
    const char *qs[1] = {queue};
    if (queue) {
        o.queues = qs;
        o.nqueues = 1;
    }
    o.max_tasks = 1;
    o.lease_ms = lease_ms;
    o.wait_ms = 0;
    o.worker = "test-worker";
    th_task *out[1] = {NULL};
    th_error err;
    memset(&err, 0, sizeof err);
    int n = th_engine_claim(e, &o, out, &err);
    if (n != 1) {
        print_error("claim from '%s' returned %d (%s), expected one task: %s\n",
                    queue ? queue : "(any)", n, n < 0 ? th_errname(n) : "count", err.message);
        if (n > 0)
            th_task_free(out[0]);
        _fail(file, line);
    }
    return out[0];
}

int thtest_claim_count_at(th_engine *e, const char *queue, const char *file, int line)
{
    th_claim_options o;
    memset(&o, 0, sizeof o);
    const char *qs[1] = {queue};
    if (queue) {
        o.queues = qs;
        o.nqueues = 1;
    }
    o.max_tasks = 64;
    o.wait_ms = 0;
    th_task *out[64];
    th_error err;
    memset(&err, 0, sizeof err);
    int n = th_engine_claim(e, &o, out, &err);
    if (n < 0) {
        print_error("claim from '%s' returned %d (%s): %s\n", queue ? queue : "(any)", n,
                    th_errname(n), err.message);
        _fail(file, line);
    }
    for (int i = 0; i < n; i++)
        th_task_free(out[i]);
    return n;
}

th_task *thtest_get_at(th_engine *e, const char *id, const char *file, int line)
{
    th_task *t = NULL;
    th_error err;
    memset(&err, 0, sizeof err);
    int rc = th_engine_get(e, id, &t, &err);
    if (rc != 0 || !t) {
        print_error("get %s returned %d (%s): %s\n", id, rc, th_errname(rc), err.message);
        _fail(file, line);
    }
    return t;
}

void thtest_assert_state_at(th_engine *e, const char *id, th_task_state expected, const char *file,
                            int line)
{
    th_task *t = thtest_get_at(e, id, file, line);
    th_task_state got = t->state;
    char error[160];
    snprintf(error, sizeof error, "%s", t->error ? t->error : "(none)");
    th_task_free(t);
    if (got != expected) {
        print_error("task %s is %s, expected %s (error: %s)\n", id, th_task_state_name(got),
                    th_task_state_name(expected), error);
        _fail(file, line);
    }
}

size_t thtest_list_count(th_engine *e, const char *queue, int state)
{
    size_t total = 0;
    char after[TH_ID_SIZE] = "";
    for (;;) {
        th_list_filter f;
        memset(&f, 0, sizeof f);
        f.queue = queue;
        f.state = state;
        f.after_id = after[0] ? after : NULL;
        f.limit = 100;
        th_task **tasks = NULL;
        size_t n = 0;
        th_error err;
        memset(&err, 0, sizeof err);
        int rc = th_engine_list(e, &f, &tasks, &n, &err);
        if (rc < 0)
            fail_msg("list returned %d (%s): %s", rc, th_errname(rc), err.message);
        total += n;
        if (n > 0)
            memcpy(after, tasks[n - 1]->id, TH_ID_SIZE);
        th_task_array_free(tasks, n);
        if (n < f.limit)
            break;
    }
    return total;
}

int thtest_contains(const char *haystack, const char *needle)
{
    return haystack && strcasestr(haystack, needle) != NULL;
}

void thtest_assert_json_at(const char *got, const char *want, const char *file, int line)
{
    json_error_t jerr;
    json_t *w = json_loads(want, JSON_DECODE_ANY, &jerr);
    if (!w) {
        print_error("test bug: expected text is not JSON: %s\n", want);
        _fail(file, line);
    }
    json_t *g = got ? json_loads(got, JSON_DECODE_ANY, &jerr) : NULL;
    int same = g && json_equal(g, w);
    json_decref(g);
    json_decref(w);
    if (!same) {
        print_error("JSON %s != expected %s\n", got ? got : "(NULL)", want);
        _fail(file, line);
    }
}
