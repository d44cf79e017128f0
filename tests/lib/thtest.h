/*
 * Shared helpers for the cmocka unit tests: a fake wall clock, a per-run temp
 * directory, engines opened over a store uri with manual ticking, a fixture
 * that runs one suite against every store ("memory" and "sqlite"), and small
 * assertion helpers that report the caller's file and line.
 *
 * Every helper that can fail asserts (cmocka) rather than returning an error,
 * so tests read as a sequence of steps.
 */
#ifndef THTEST_H
#define THTEST_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <taskhive/taskhive.h>

/* The wall time every fake clock starts at (2023-11-14T22:13:20Z). */
#define THTEST_T0 1700000000000LL

/* A fake wall clock: `clock` reads `now`; only the test moves it. */
typedef struct thtest_clock {
    int64_t now;
    th_clock clock;
} thtest_clock;

/* Points clk->clock at clk and sets the time to `start_ms`. */
void thtest_clock_init(thtest_clock *clk, int64_t start_ms);
/* Moves the clock forward by `ms` (may be 0). */
void thtest_clock_advance(thtest_clock *clk, int64_t ms);

/* $TH_TEST_TMPDIR when set, otherwise a directory made once with mkdtemp
 * (removed at exit). Static; never NULL. */
const char *thtest_tmpdir(void);
/* "<tmpdir>/<name>"; the caller frees it. */
char *thtest_path(const char *name);
/* A fresh, unused file path "<tmpdir>/<prefix>-<pid>-<n><ext>"; caller frees. */
char *thtest_unique_path(const char *prefix, const char *ext);

/* Opens the store named by `uri` and an engine over it with manual_tick = 1
 * and `clk` as its clock; fails the test when either step fails. The clock
 * must outlive the engine. Free with th_engine_free. */
th_engine *thtest_engine(const char *uri, thtest_clock *clk);
/* Same, with options: `opts` may be NULL; its clock and manual_tick are
 * replaced by `clk` and 1 when `clk` is not NULL (otherwise used as given). */
th_engine *thtest_engine_opts(const char *uri, thtest_clock *clk, const th_engine_options *opts);

/* ---- running a suite against every store ------------------------------- */

/* The store the current suite runs against: "memory", "sqlite" or
 * "postgres". */
const char *thtest_store_kind(void);
/* A uri for a fresh store of `kind`: "memory", "sqlite:<unique path>.db", or
 * for "postgres" a fresh schema on the tests' private server (pgserver.h).
 * When `path_out` is not NULL it receives the file path (NULL for memory),
 * which the caller frees. The caller frees the uri. */
char *thtest_store_uri(const char *kind, char **path_out);
/* A uri for a fresh schema on the tests' private PostgreSQL server
 * (pgserver.h), started on first use; fails the test when there is none.
 * The caller frees it. */
char *thtest_pg_uri(void);
/* Removes a sqlite file and its -wal / -shm / -journal companions. */
void thtest_remove_db(const char *path);

/* Runs `tests` once per store kind (groups "<name>/memory", "<name>/sqlite",
 * "<name>/postgres").
 * Returns the total number of failed tests. */
int thtest_run_all_stores(const char *name, const struct CMUnitTest *tests, size_t n);
#define THTEST_RUN_ALL_STORES(name, tests)                                                         \
    thtest_run_all_stores((name), (tests), sizeof(tests) / sizeof((tests)[0]))

/* A test fixture: a fake clock at THTEST_T0 and an engine over a fresh store
 * of thtest_store_kind(). */
typedef struct thtest_fx {
    thtest_clock clk;
    char *uri;
    char *path;  /* sqlite file, or NULL */
    int durable; /* 1 when tasks outlive the engine (sqlite, postgres) */
    th_engine *e;
} thtest_fx;

/* cmocka setup / teardown creating and destroying a thtest_fx in *state. */
int thtest_fx_setup(void **state);
int thtest_fx_teardown(void **state);
/* Frees fx->e and opens a new engine over the same uri with `opts` (the clock
 * and manual_tick are forced). For memory the tasks are gone; for sqlite the
 * file is reopened, for postgres the same schema. */
void thtest_fx_reopen(thtest_fx *fx, const th_engine_options *opts);
/* Advances the fake clock by `ms` and runs th_engine_tick; returns its result. */
int thtest_fx_tick(thtest_fx *fx, int64_t ms);

/* ---- task helpers ------------------------------------------------------- */

/* A retry policy with jitter 0, so backoff times are exact. */
th_retry_policy thtest_retry(int max_retries, int64_t initial_ms, int64_t max_delay_ms,
                             double multiplier);

void thtest_submit_at(th_engine *e, const th_task_spec *spec, char id[TH_ID_SIZE], const char *file,
                      int line);
void thtest_submit_simple_at(th_engine *e, const char *queue, const char *payload,
                             char id[TH_ID_SIZE], const char *file, int line);
th_task *thtest_claim1_at(th_engine *e, const char *queue, int64_t lease_ms, const char *file,
                          int line);
int thtest_claim_count_at(th_engine *e, const char *queue, const char *file, int line);
th_task *thtest_get_at(th_engine *e, const char *id, const char *file, int line);
void thtest_assert_state_at(th_engine *e, const char *id, th_task_state expected, const char *file,
                            int line);

/* Submits `spec`; fails the test unless it returns 0 (a new task). */
#define thtest_submit(e, spec, id) thtest_submit_at((e), (spec), (id), __FILE__, __LINE__)
/* Submits a default task to `queue` with `payload` (JSON or NULL). */
#define thtest_submit_simple(e, queue, payload, id)                                                \
    thtest_submit_simple_at((e), (queue), (payload), (id), __FILE__, __LINE__)
/* Claims exactly one task from `queue` (NULL = any) without waiting; fails the
 * test when none is ready. lease_ms 0 = engine default. Free the result. */
#define thtest_claim1(e, queue, lease_ms)                                                          \
    thtest_claim1_at((e), (queue), (lease_ms), __FILE__, __LINE__)
/* Claims every ready task of `queue` (NULL = any) without waiting, frees the
 * snapshots and returns how many there were (tests usually expect 0). */
#define thtest_claim_count(e, queue) thtest_claim_count_at((e), (queue), __FILE__, __LINE__)
/* th_engine_get that fails the test on error. Free the result. */
#define thtest_get(e, id) thtest_get_at((e), (id), __FILE__, __LINE__)
/* Fails the test unless task `id` is in state `expected` (names both). */
#define thtest_assert_state(e, id, expected)                                                       \
    thtest_assert_state_at((e), (id), (expected), __FILE__, __LINE__)

/* Number of tasks th_engine_list reports with the given queue (NULL = any)
 * and state (-1 = any); pages through all of them. */
size_t thtest_list_count(th_engine *e, const char *queue, int state);

/* 1 when `haystack` (may be NULL) contains `needle`, ignoring case. */
int thtest_contains(const char *haystack, const char *needle);

/* Fails the test unless JSON texts `got` and `want` hold equal values (key
 * order and spacing ignored). `got` may be NULL, which never matches. */
void thtest_assert_json_at(const char *got, const char *want, const char *file, int line);
#define assert_json_equal(got, want) thtest_assert_json_at((got), (want), __FILE__, __LINE__)

#endif
