/*
 * Out-of-memory pass: the engine never crashes, leaks or lies when an
 * allocation fails. Every taskhive allocation goes through th__malloc & co
 * (core/alloc.h), and th__alloc_fail_after(n) makes the (n+1)-th one and all
 * later ones fail until th__alloc_fail_reset(). (SQLite and jansson allocate
 * with their own allocators, which never fail here.)
 *
 * For each store ("memory" and "sqlite:<tmp>/oom-<n>.db") and n = 0, 1, 2...
 * until the scenario completes without reaching allocation n:
 *
 *   open a store and an engine (manual tick, fake clock), subscribe to events,
 *   arm th__alloc_fail_after(n), then run the scenario: a batch of 3 tasks
 *   A, B, C (C depends on "$0"; B has a unique key), a duplicate submit, a
 *   claim of A and B, log / progress / heartbeat / logs / complete on A, log /
 *   permanent fail / retry on B, a task D depending on B, cancel B (which
 *   cascades to D), cancel C, get, list, counts, metrics, tick, prune.
 *
 * Every return value must be the planned success or a clean failure:
 * TH_ENOMEM, or TH_EIO from the sqlite store (once a journal record cannot be
 * allocated the store refuses every further change). Calls taking a th_error
 * must fill it with the same code. A model tracks what each task's state must
 * be: a call that failed with TH_ENOMEM must have changed nothing (after a
 * TH_EIO the model stops comparing states, since the change that hit the
 * failure was made in memory and later ones were refused). After
 * th__alloc_fail_reset() the engine must agree with the model, counts must
 * agree with a full list and with the metrics, and it must still work
 * (submit + claim + complete; for sqlite unless the store switched to
 * TH_EIO). A sqlite file is then reopened and must load; when the store
 * stayed healthy it must hold exactly what the engine held. Under ASan +
 * LeakSanitizer this proves nothing leaks.
 *
 * A baseline run with no failure armed checks the scenario does what the
 * model says. The in-process loops warm the store first (one task with a
 * unique key in its own queue), so the first hash-table allocations happen
 * before arming; the forked loops below cover a fresh store.
 *
 * Two loops run in forked children (a child goes on through the indices and
 * checks for leaks when it ends, so a leak is narrowed down afterwards): the
 * same scenario on a fresh, unwarmed store, and reopening a populated sqlite
 * file with only the load short of memory. A child whose library calls
 * exit() (as uthash's default out-of-memory handler did) prints the stack
 * and fails the test, as does a crash, a leak, a wrong return code or state
 * that disagrees with the model, as does a reload that cannot allocate a
 * dependents list yet succeeds (the blocked task would never be released)
 * and th_engine_claim returning an error with err left empty. (A claim snapshot
 * whose worker copy failed comes back with worker NULL; qcore.c allows that,
 * so it is only counted.)
 *
 * Finally, opening stores and engines under OOM: failures are clean.
 */
#include "thtest.h"

#include <errno.h>
#include <execinfo.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/ulid.h"

#if defined(__SANITIZE_ADDRESS__)
#define OOM_HAVE_LSAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define OOM_HAVE_LSAN 1
#endif
#endif
#ifdef OOM_HAVE_LSAN
#include <sanitizer/lsan_interface.h>
#endif

/* Upper bound on the allocation index; the scenario makes a few hundred. */
#define OOM_CAP 5000

/* Seconds since `start` (CLOCK_MONOTONIC), for the summaries. */
static double elapsed_s(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + (double)(now.tv_nsec - start->tv_nsec) / 1e9;
}

/* ---- run context and checks ------------------------------------------------ */

typedef struct oom_run {
    const char *kind; /* "memory" or "sqlite" */
    int sqlite;
    int strict; /* no failure armed: every call must succeed as planned */
    long n;     /* the armed allocation index, -1 for none */
    const char *what;
} oom_run;

/* What the failing check belongs to, for messages. */
static const oom_run *g_run;
/* 1 in a forked child: a failed check prints and exits instead of using
 * cmocka, whose state belongs to the parent. */
static int g_child;
static volatile int g_in_body;

/* Exit codes of a forked child. */
enum {
    CHILD_HIT = 10,         /* every run reached its allocation n */
    CHILD_DONE = 11,        /* a run never reached its allocation n: finished */
    CHILD_STRANDED = 85,    /* known bug: reloaded blocked task never released */
    CHILD_EXIT_CALLED = 86, /* the library called exit() (stack printed) */
    CHILD_CHECK = 87,       /* a check failed (printed) */
    CHILD_LEAK = 88,        /* LeakSanitizer found a leak (printed) */
    CHILD_STRAY_EXIT = 89,  /* exit() outside the body */
};

static void check_failed(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));

static void check_failed(const char *file, int line, const char *fmt, ...)
{
    long n = g_run ? g_run->n : -2;
    th__alloc_fail_reset();
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s:%d: [%s %s, allocation failure armed at n=%ld] %s\n", file, line,
            g_run ? g_run->kind : "?", g_run && g_run->what ? g_run->what : "?", n, msg);
    if (g_child)
        _exit(CHILD_CHECK);
    _fail(file, line);
    abort(); /* _fail does not return inside a test */
}

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond))                                                                               \
            check_failed(__FILE__, __LINE__, __VA_ARGS__);                                         \
    } while (0)

/* Fails unless `rc` is a planned success in [lo, hi] or, unless strict, a
 * clean failure: TH_ENOMEM, or TH_EIO from the sqlite store. When `err` is
 * given and rc < 0 it must hold rc and a message. Returns rc. */
static int rc_ok_at(const oom_run *r, int rc, int lo, int hi, const th_error *err, const char *what,
                    const char *file, int line)
{
    int clean =
        (rc >= lo && rc <= hi) || (!r->strict && (rc == TH_ENOMEM || (r->sqlite && rc == TH_EIO)));
    if (!clean)
        check_failed(file, line, "%s returned %d (%s), want %d..%d%s; err: %s '%s'", what, rc,
                     th_errname(rc), lo, hi, r->strict ? "" : " or a clean failure",
                     err ? th_errname(err->code) : "-", err ? err->message : "");
    if (rc < 0 && err && (err->code != rc || !err->message[0]))
        check_failed(file, line, "%s returned %d (%s) but err holds %d (%s) '%s'", what, rc,
                     th_errname(rc), err->code, th_errname(err->code), err->message);
    return rc;
}
#define EXPECT_RC(r, rc, lo, hi, err, what)                                                        \
    rc_ok_at((r), (rc), (lo), (hi), (err), (what), __FILE__, __LINE__)

/* ---- events ------------------------------------------------------------------- */

typedef struct ev_counts {
    int n[TH_EV_NTYPES];
    int bad;
} ev_counts;

static void on_event(const th_event *ev, void *ud)
{
    ev_counts *c = ud;
    if ((unsigned)ev->type < TH_EV_NTYPES)
        c->n[ev->type]++;
    else
        c->bad++;
    if (!ev->task_id || !th__ulid_valid(ev->task_id) || !ev->queue || !ev->queue[0])
        c->bad++;
}

/* ---- the model ------------------------------------------------------------------- */

enum { TA, TB, TC, TD, NT };
static const char task_names[NT] = {'A', 'B', 'C', 'D'};

typedef struct model {
    char id[NT][TH_ID_SIZE];
    int known[NT]; /* 1: exists under id[]; 0: never created */
    th_task_state st[NT];
    int pruned[NT];
    uint64_t lease[NT];
    int nlogs[NT];
    int unknown;         /* sqlite answered TH_EIO: states are no longer predicted */
    int warm;            /* the warm-up task exists */
    int worker_lost;     /* a claim snapshot came back without its worker */
    int claim_err_empty; /* a claim failed with TH_EIO and left err empty */
    int store_failed;    /* sqlite answered TH_EIO at some point */
} model;

/* Whether a state-changing call took effect. 0: yes. TH_EIO from the sqlite
 * store: perhaps (it refuses every change once a journal record could not be
 * written, but the change that hit the failure was made in memory), so the
 * model follows the plan but stops comparing states. Anything else: no. */
static int applied(model *m, int rc)
{
    if (rc == TH_EIO)
        m->unknown = 1;
    return rc == 0 || rc == TH_EIO;
}

static int live(const model *m, int i)
{
    return m->known[i] == 1 && !m->pruned[i];
}

static int id_index(const model *m, const char *id)
{
    for (int i = 0; i < NT; i++)
        if (m->known[i] == 1 && strcmp(m->id[i], id) == 0)
            return i;
    return -1;
}

/* ---- opening ---------------------------------------------------------------------- */

static th_engine *open_engine(const char *uri, thtest_clock *clk)
{
    th_error err;
    memset(&err, 0, sizeof err);
    th_store *s = th_store_open(uri, NULL, &err);
    CHECK(s, "th_store_open(%s): %s '%s'", uri, th_errname(err.code), err.message);
    th_engine_options o;
    th_engine_options_init(&o);
    o.clock = &clk->clock;
    o.manual_tick = 1;
    o.seed = 42;
    th_engine *e = th_engine_new(s, &o, &err);
    CHECK(e, "th_engine_new(%s): %s '%s'", uri, th_errname(err.code), err.message);
    return e;
}

/* "<tmpdir>/<prefix>-<n>.db" into buf (no allocation). */
static void db_path(char *buf, size_t size, const char *prefix, long n)
{
    snprintf(buf, size, "%s/%s-%ld.db", thtest_tmpdir(), prefix, n);
}

static void remove_db(const char *path)
{
    static const char *const suffix[] = {"", "-wal", "-shm", "-journal"};
    char buf[4200];
    for (size_t i = 0; i < sizeof suffix / sizeof suffix[0]; i++) {
        snprintf(buf, sizeof buf, "%s%s", path, suffix[i]);
        unlink(buf);
    }
}

/* One task that creates the store's hash tables (ids, unique keys, queues). */
static void warm_up(th_engine *e, model *m)
{
    th_task_spec spec;
    th_task_spec_init(&spec, "warm");
    spec.unique_key = "warm-key";
    char id[TH_ID_SIZE];
    th_error err;
    int rc = th_engine_submit(e, &spec, id, &err);
    CHECK(rc == 0, "warm-up submit: %d %s", rc, err.message);
    m->warm = 1;
}

/* ---- the scenario ------------------------------------------------------------------ */

static void check_get(th_engine *e, const oom_run *r, const model *m, int i)
{
    th_error err;
    th_task *t = NULL;
    int rc = th_engine_get(e, m->id[i], &t, &err);
    if (m->unknown) {
        CHECK(rc == 0 || rc == TH_ENOTFOUND || (rc == TH_ENOMEM && !r->strict),
              "get of task %c: %d (%s)", task_names[i], rc, th_errname(rc));
        if (rc == 0)
            CHECK(strcmp(t->id, m->id[i]) == 0, "get %c returned %s", task_names[i], t->id);
        th_task_free(t);
        return;
    }
    if (m->pruned[i]) {
        CHECK(rc == TH_ENOTFOUND, "get of pruned task %c: %d", task_names[i], rc);
        return;
    }
    EXPECT_RC(r, rc, 0, 0, &err, "get");
    if (rc != 0)
        return;
    CHECK(t, "get returned 0 without a task");
    CHECK(strcmp(t->id, m->id[i]) == 0, "get %c returned %s", task_names[i], t->id);
    CHECK(t->state == m->st[i], "task %c is %s, the model says %s", task_names[i],
          th_task_state_name(t->state), th_task_state_name(m->st[i]));
    CHECK(t->queue && strcmp(t->queue, "oom") == 0, "task %c queue", task_names[i]);
    CHECK(t->payload != NULL, "task %c has no payload", task_names[i]);
    if (i == TC)
        CHECK(t->ndeps == 1 && t->deps && strcmp(t->deps[0], m->id[TA]) == 0,
              "task C should depend on A");
    if (i == TB)
        CHECK(t->unique_key && strcmp(t->unique_key, "oom-key") == 0 && t->metadata,
              "task B lost its unique key or metadata");
    if (m->st[i] == TH_TASK_COMPLETED)
        CHECK(t->result != NULL, "completed task %c has no result", task_names[i]);
    th_task_free(t);
}

static int count_state(const model *m, th_task_state s)
{
    int k = 0;
    for (int i = 0; i < NT; i++)
        if (live(m, i) && m->st[i] == s)
            k++;
    return k;
}

static int count_live(const model *m)
{
    int k = 0;
    for (int i = 0; i < NT; i++)
        k += live(m, i);
    return k;
}

static void scenario(th_engine *e, thtest_clock *clk, const oom_run *r, model *m)
{
    th_error err;
    int rc;

    /* 1. A batch: A, B (unique key, metadata), C depending on "$0" (A). */
    const char *dep0[] = {"$0"};
    th_task_spec specs[3];
    th_task_spec_init(&specs[0], "oom");
    specs[0].payload = "{\"task\":\"A\"}";
    th_task_spec_init(&specs[1], "oom");
    specs[1].payload = "{\"task\":\"B\"}";
    specs[1].metadata = "{\"owner\":\"oom\"}";
    specs[1].unique_key = "oom-key";
    th_task_spec_init(&specs[2], "oom");
    specs[2].payload = "[\"C\"]";
    specs[2].deps = dep0;
    specs[2].ndeps = 1;
    specs[2].priority = TH_PRIORITY_HIGH;
    char ids[3][TH_ID_SIZE];
    memset(&err, 0, sizeof err);
    rc = th_engine_submit_batch(e, specs, 3, ids, &err);
    EXPECT_RC(r, rc, 0, 0, &err, "submit_batch");
    if (rc == 0) {
        for (int i = 0; i < 3; i++) {
            CHECK(th__ulid_valid(ids[i]), "batch id %d '%s' is not an id", i, ids[i]);
            memcpy(m->id[i], ids[i], TH_ID_SIZE);
            m->known[i] = 1;
        }
        m->st[TA] = m->st[TB] = TH_TASK_PENDING;
        m->st[TC] = TH_TASK_BLOCKED;
    } else if (rc == TH_EIO) {
        m->unknown = 1;
    }

    /* 2. The same unique key again: deduplicated to B, never a new task. */
    if (m->known[TB]) {
        th_task_spec dup;
        th_task_spec_init(&dup, "oom");
        dup.unique_key = "oom-key";
        char did[TH_ID_SIZE];
        rc = th_engine_submit(e, &dup, did, &err);
        EXPECT_RC(r, rc, 1, 1, &err, "submit with a duplicate unique key");
        if (rc == 1)
            CHECK(strcmp(did, m->id[TB]) == 0, "duplicate key gave %s, want B %s", did, m->id[TB]);
    }

    /* 3. Claim: A then B (FIFO); C is blocked although its priority is higher.
     * Under OOM the second snapshot may fail, leaving B pending. */
    th_task *got[4] = {0};
    const char *queues[] = {"oom"};
    th_claim_options co = {
        .queues = queues, .nqueues = 1, .max_tasks = 4, .lease_ms = 60000, .worker = "w1"};
    int lo = m->known[TA] ? (r->strict ? 2 : 1) : 0;
    int hi = m->known[TA] ? 2 : m->unknown ? 3 : 0;
    memset(&err, 0, sizeof err);
    rc = th_engine_claim(e, &co, got, &err);
    if (rc == TH_EIO && r->sqlite && err.code == 0) {
        /* Known bug: th_engine_claim fills err only for TH_ENOMEM, so a store
         * error such as TH_EIO comes back with err empty. */
        m->claim_err_empty = 1;
        EXPECT_RC(r, rc, lo, hi, NULL, "claim");
    } else {
        EXPECT_RC(r, rc, lo, hi, &err, "claim");
    }
    for (int k = 0; k < rc; k++) {
        th_task *t = got[k];
        CHECK(t, "claim slot %d is NULL", k);
        int i = id_index(m, t->id);
        if (m->known[TA])
            CHECK(i == (k == 0 ? TA : TB), "claim %d returned %s (task %c)", k, t->id,
                  i >= 0 ? task_names[i] : '?');
        CHECK(t->state == TH_TASK_RUNNING && t->attempt == 1 && t->lease != 0,
              "claimed snapshot: state %s attempt %d lease %llu", th_task_state_name(t->state),
              t->attempt, (unsigned long long)t->lease);
        CHECK(t->queue && strcmp(t->queue, "oom") == 0, "claimed snapshot queue");
        if (!t->worker)
            m->worker_lost = 1;
        else
            CHECK(strcmp(t->worker, "w1") == 0, "worker '%s'", t->worker);
        if (i >= 0) {
            m->st[i] = TH_TASK_RUNNING;
            m->lease[i] = t->lease;
        }
        th_task_free(t);
    }

    /* 4. A: log, progress, heartbeat, read the log back, complete. */
    if (live(m, TA) && m->st[TA] == TH_TASK_RUNNING) {
        const char *a = m->id[TA];
        uint64_t lease = m->lease[TA];
        rc = th_engine_log(e, a, lease, TH_LOG_INFO, "starting", "{\"step\":1}", &err);
        if (EXPECT_RC(r, rc, 0, 0, &err, "log A") == 0)
            m->nlogs[TA]++;
        rc = th_engine_progress(e, a, lease, 50, 1, 2, "half way", &err);
        EXPECT_RC(r, rc, 0, 0, &err, "progress A");
        int cancel = -1;
        rc = th_engine_heartbeat(e, a, lease, 0, &cancel, &err);
        if (EXPECT_RC(r, rc, 0, 0, &err, "heartbeat A") == 0)
            CHECK(cancel == 0, "heartbeat says cancel %d", cancel);
        th_log_entry *ent = NULL;
        size_t nent = 0;
        rc = th_engine_logs(e, a, 0, 0, &ent, &nent, &err);
        if (EXPECT_RC(r, rc, 0, 0, &err, "logs A") == 0) {
            CHECK(nent == (size_t)m->nlogs[TA], "A has %zu log rows, want %d", nent, m->nlogs[TA]);
            if (nent)
                CHECK(ent[0].seq == 1 && strcmp(ent[0].message, "starting") == 0 && ent[0].data &&
                          ent[0].attempt == 1 && ent[0].level == TH_LOG_INFO,
                      "A's log row is wrong");
            th_log_entries_free(ent, nent);
        }
        rc = th_engine_complete(e, a, lease, "{\"ok\":true}", &err);
        if (applied(m, EXPECT_RC(r, rc, 0, 0, &err, "complete A"))) {
            m->st[TA] = TH_TASK_COMPLETED;
            if (live(m, TC) && m->st[TC] == TH_TASK_BLOCKED)
                m->st[TC] = TH_TASK_PENDING;
        }
    }

    /* 5. B: log, fail for good, retry by hand. */
    if (live(m, TB) && m->st[TB] == TH_TASK_RUNNING) {
        rc = th_engine_log(e, m->id[TB], m->lease[TB], TH_LOG_WARN, "about to fail", NULL, &err);
        if (EXPECT_RC(r, rc, 0, 0, &err, "log B") == 0)
            m->nlogs[TB]++;
        rc = th_engine_fail(e, m->id[TB], m->lease[TB], "boom", TH_FAIL_PERMANENT, &err);
        if (applied(m, EXPECT_RC(r, rc, 0, 0, &err, "fail B")))
            m->st[TB] = TH_TASK_FAILED;
    }
    if (live(m, TB) && m->st[TB] == TH_TASK_FAILED) {
        rc = th_engine_retry(e, m->id[TB], &err);
        if (applied(m, EXPECT_RC(r, rc, 0, 0, &err, "retry B")))
            m->st[TB] = TH_TASK_PENDING;
    }

    /* 6. D depends on B; cancelling B cancels D too. */
    if (live(m, TB) && m->st[TB] == TH_TASK_PENDING) {
        th_task_spec d;
        th_task_spec_init(&d, "oom");
        d.payload = "\"D\"";
        const char *depb[] = {m->id[TB]};
        d.deps = depb;
        d.ndeps = 1;
        char idd[TH_ID_SIZE];
        rc = th_engine_submit(e, &d, idd, &err);
        EXPECT_RC(r, rc, 0, 0, &err, "submit D");
        if (rc == 0) {
            memcpy(m->id[TD], idd, TH_ID_SIZE);
            m->known[TD] = 1;
            m->st[TD] = TH_TASK_BLOCKED;
        } else if (rc == TH_EIO) {
            m->unknown = 1;
        }
        rc = th_engine_cancel(e, m->id[TB], "stop", &err);
        if (applied(m, EXPECT_RC(r, rc, 0, 0, &err, "cancel B"))) {
            m->st[TB] = TH_TASK_CANCELLED;
            if (live(m, TD))
                m->st[TD] = TH_TASK_CANCELLED;
        }
    }

    /* 7. Cancel C (blocked, or pending once A completed). */
    if (live(m, TC) && !th_task_state_is_final(m->st[TC])) {
        rc = th_engine_cancel(e, m->id[TC], "no longer needed", &err);
        if (applied(m, EXPECT_RC(r, rc, 0, 0, &err, "cancel C")))
            m->st[TC] = TH_TASK_CANCELLED;
    }

    /* 8. Read everything back. */
    for (int i = 0; i < NT; i++)
        if (m->known[i] == 1)
            check_get(e, r, m, i);

    th_list_filter f = {.queue = "oom", .state = -1, .limit = 100};
    th_task **list = NULL;
    size_t nlist = 0;
    rc = th_engine_list(e, &f, &list, &nlist, &err);
    if (EXPECT_RC(r, rc, 0, 0, &err, "list") == 0) {
        if (!m->unknown)
            CHECK(nlist == (size_t)count_live(m), "list has %zu tasks, want %d", nlist,
                  count_live(m));
        for (size_t k = 0; k < nlist; k++) {
            int i = id_index(m, list[k]->id);
            if (i >= 0 && !m->unknown)
                CHECK(list[k]->state == m->st[i], "listed %c is %s, want %s", task_names[i],
                      th_task_state_name(list[k]->state), th_task_state_name(m->st[i]));
            if (k > 0)
                CHECK(strcmp(list[k - 1]->id, list[k]->id) < 0, "list is not in id order");
        }
        th_task_array_free(list, nlist);
    }
    f.state = TH_TASK_CANCELLED;
    rc = th_engine_list(e, &f, &list, &nlist, &err);
    if (EXPECT_RC(r, rc, 0, 0, &err, "list cancelled") == 0) {
        if (!m->unknown)
            CHECK(nlist == (size_t)count_state(m, TH_TASK_CANCELLED), "%zu cancelled, want %d",
                  nlist, count_state(m, TH_TASK_CANCELLED));
        th_task_array_free(list, nlist);
    }

    th_queue_counts *qc = NULL;
    size_t nq = 0;
    rc = th_engine_counts(e, &qc, &nq);
    if (EXPECT_RC(r, rc, 0, 0, NULL, "counts") == 0) {
        for (size_t k = 0; k < nq && !m->unknown; k++) {
            if (strcmp(qc[k].queue, "oom") != 0)
                continue;
            for (int s = 0; s < TH_TASK_NSTATES; s++)
                CHECK(qc[k].counts[s] == count_state(m, (th_task_state)s),
                      "counts say %lld %s, want %d", (long long)qc[k].counts[s],
                      th_task_state_name((th_task_state)s), count_state(m, (th_task_state)s));
        }
        free(qc);
    }

    th_engine_metrics met;
    rc = th_engine_metrics_get(e, &met);
    EXPECT_RC(r, rc, 0, 0, NULL, "metrics");

    thtest_clock_advance(clk, 1);
    rc = th_engine_tick(e);
    EXPECT_RC(r, rc, 0, 0, NULL, "tick (nothing due)");

    /* 9. Prune every final task. */
    int finals = 0;
    for (int i = 0; i < NT; i++)
        if (live(m, i) && th_task_state_is_final(m->st[i]))
            finals++;
    rc = th_engine_prune(e, clk->now + 1);
    if (m->unknown)
        EXPECT_RC(r, rc, finals, NT, NULL, "prune");
    else
        EXPECT_RC(r, rc, finals, finals, NULL, "prune");
    if (rc == TH_EIO)
        m->unknown = 1;
    if (rc >= 0)
        for (int i = 0; i < NT; i++)
            if (live(m, i) && th_task_state_is_final(m->st[i]))
                m->pruned[i] = 1;
    for (int i = 0; i < NT; i++)
        if (m->known[i] == 1 && m->pruned[i])
            check_get(e, r, m, i);
}

/* ---- after the reset --------------------------------------------------------------- */

/* Lists every task; checks counts and metrics agree with the list and, when
 * known, with the model. */
static void check_consistent(th_engine *e, const oom_run *r, const model *m)
{
    th_error err;
    th_list_filter f = {.state = -1, .limit = 10000};
    th_task **list = NULL;
    size_t n = 0;
    int rc = th_engine_list(e, &f, &list, &n, &err);
    CHECK(rc == 0, "list after reset: %d %s", rc, err.message);
    int64_t by_state[TH_TASK_NSTATES] = {0};
    for (size_t k = 0; k < n; k++) {
        CHECK((unsigned)list[k]->state < TH_TASK_NSTATES, "bad state");
        by_state[list[k]->state]++;
        int i = id_index(m, list[k]->id);
        if (i >= 0 && !m->unknown)
            CHECK(!m->pruned[i] && list[k]->state == m->st[i], "task %c: %s, model %s%s",
                  task_names[i], th_task_state_name(list[k]->state), th_task_state_name(m->st[i]),
                  m->pruned[i] ? " (pruned)" : "");
    }
    if (!m->unknown)
        CHECK(n == (size_t)(count_live(m) + m->warm), "%zu tasks, want %d", n,
              count_live(m) + m->warm);
    th_task_array_free(list, n);

    th_queue_counts *qc = NULL;
    size_t nq = 0;
    CHECK(th_engine_counts(e, &qc, &nq) == 0, "counts after reset");
    int64_t sum[TH_TASK_NSTATES] = {0};
    for (size_t k = 0; k < nq; k++)
        for (int s = 0; s < TH_TASK_NSTATES; s++) {
            CHECK(qc[k].counts[s] >= 0, "negative count");
            sum[s] += qc[k].counts[s];
        }
    free(qc);
    th_engine_metrics met;
    CHECK(th_engine_metrics_get(e, &met) == 0, "metrics after reset");
    for (int s = 0; s < TH_TASK_NSTATES; s++) {
        CHECK(sum[s] == by_state[s], "counts say %lld %s, list says %lld", (long long)sum[s],
              th_task_state_name((th_task_state)s), (long long)by_state[s]);
        CHECK(met.counts[s] == by_state[s], "metrics say %lld %s, list says %lld",
              (long long)met.counts[s], th_task_state_name((th_task_state)s),
              (long long)by_state[s]);
    }
    (void)r;
}

/* Submit + claim + complete on a fresh queue. Returns 1 when it worked, 0
 * when the sqlite store refused with TH_EIO (allowed only for sqlite). */
static int check_usable(th_engine *e, const oom_run *r)
{
    th_error err;
    th_task_spec spec;
    th_task_spec_init(&spec, "after");
    spec.payload = "{\"after\":true}";
    char id[TH_ID_SIZE];
    int rc = th_engine_submit(e, &spec, id, &err);
    if (rc == TH_EIO && r->sqlite)
        return 0;
    CHECK(rc == 0, "submit after reset: %d (%s) %s", rc, th_errname(rc), err.message);
    const char *queues[] = {"after"};
    th_claim_options co = {.queues = queues, .nqueues = 1, .max_tasks = 4, .lease_ms = 1000};
    th_task *got[4] = {0};
    rc = th_engine_claim(e, &co, got, &err);
    CHECK(rc == 1, "claim after reset: %d (%s) %s", rc, th_errname(rc), err.message);
    CHECK(strcmp(got[0]->id, id) == 0, "claimed the wrong task");
    uint64_t lease = got[0]->lease;
    th_task_free(got[0]);
    rc = th_engine_complete(e, id, lease, "1", &err);
    CHECK(rc == 0, "complete after reset: %d (%s) %s", rc, th_errname(rc), err.message);
    th_task *t = NULL;
    CHECK(th_engine_get(e, id, &t, &err) == 0 && t->state == TH_TASK_COMPLETED,
          "task after reset did not complete");
    th_task_free(t);
    return 1;
}

/* What a store holds, to compare across a reopen. */
typedef struct task_row {
    char id[TH_ID_SIZE];
    th_task_state state;
    int attempt;
} task_row;

static size_t snapshot_rows(th_engine *e, task_row *rows, size_t cap)
{
    th_list_filter f = {.state = -1, .limit = 10000};
    th_task **list = NULL;
    size_t n = 0;
    th_error err;
    CHECK(th_engine_list(e, &f, &list, &n, &err) == 0, "list: %s", err.message);
    CHECK(n <= cap, "too many tasks: %zu", n);
    for (size_t k = 0; k < n; k++) {
        memcpy(rows[k].id, list[k]->id, TH_ID_SIZE);
        rows[k].state = list[k]->state;
        rows[k].attempt = list[k]->attempt;
    }
    th_task_array_free(list, n);
    return n;
}

static void check_rows_equal(const task_row *a, size_t na, const task_row *b, size_t nb,
                             const char *what)
{
    CHECK(na == nb, "%s: %zu tasks, want %zu", what, nb, na);
    for (size_t k = 0; k < na; k++)
        CHECK(strcmp(a[k].id, b[k].id) == 0 && a[k].state == b[k].state &&
                  a[k].attempt == b[k].attempt,
              "%s: task %s is %s attempt %d, want %s %s attempt %d", what, b[k].id,
              th_task_state_name(b[k].state), b[k].attempt, a[k].id, th_task_state_name(a[k].state),
              a[k].attempt);
}

/* ---- one run of the scenario -------------------------------------------------------- */

typedef struct scen_cfg {
    const char *kind;
    const char *prefix; /* sqlite file name prefix */
    int warm;
    int notes_worker_lost; /* out: runs whose claim snapshot lost its worker */
    int notes_claim_err;   /* out: runs whose failed claim left err empty */
    int notes_store_failed;
} scen_cfg;

/* Runs the scenario once with the failure armed at `n` (-1: none, strict).
 * Returns 1 when allocation n was reached. */
static int scenario_once(long n, void *arg)
{
    scen_cfg *cfg = arg;
    oom_run run = {
        .kind = cfg->kind,
        .sqlite = strcmp(cfg->kind, "sqlite") == 0,
        .strict = n < 0,
        .n = n,
        .what = cfg->warm ? "scenario" : "scenario on a fresh store",
    };
    g_run = &run;
    char path[4096] = "", uri[4200];
    if (run.sqlite) {
        db_path(path, sizeof path, cfg->prefix, n);
        remove_db(path);
        snprintf(uri, sizeof uri, "sqlite:%s", path);
    } else {
        snprintf(uri, sizeof uri, "memory");
    }
    thtest_clock clk;
    thtest_clock_init(&clk, THTEST_T0);
    th_engine *e = open_engine(uri, &clk);
    model m;
    memset(&m, 0, sizeof m);
    if (cfg->warm)
        warm_up(e, &m);
    ev_counts evc;
    memset(&evc, 0, sizeof evc);
    int sub = th_engine_subscribe(e, on_event, &evc);
    CHECK(sub > 0, "subscribe: %d", sub);

    th__alloc_fail_after(n);
    scenario(e, &clk, &run, &m);
    void *probe = th__malloc(1);
    int hit = probe == NULL;
    th__free(probe);
    th__alloc_fail_reset();

    CHECK(evc.bad == 0, "%d malformed events", evc.bad);
    if (run.strict) {
        /* The plan, step by step, with nothing failing. */
        CHECK(count_live(&m) == 0 && m.known[TD] == 1, "baseline: every task should be pruned");
        CHECK(evc.n[TH_EV_SUBMITTED] == 4, "submitted events: %d", evc.n[TH_EV_SUBMITTED]);
        CHECK(evc.n[TH_EV_COMPLETED] == 1, "completed events: %d", evc.n[TH_EV_COMPLETED]);
        CHECK(evc.n[TH_EV_FAILED] == 1, "failed events: %d", evc.n[TH_EV_FAILED]);
        CHECK(evc.n[TH_EV_CANCELLED] == 3, "cancelled events: %d", evc.n[TH_EV_CANCELLED]);
        CHECK(evc.n[TH_EV_RETRYING] == 1, "retrying events: %d", evc.n[TH_EV_RETRYING]);
        CHECK(evc.n[TH_EV_PROGRESS] == 1, "progress events: %d", evc.n[TH_EV_PROGRESS]);
        CHECK(evc.n[TH_EV_STARTED] == 2, "started events: %d", evc.n[TH_EV_STARTED]);
        CHECK(!m.worker_lost, "baseline lost a worker");
    }
    if (m.worker_lost)
        cfg->notes_worker_lost++;
    if (m.claim_err_empty)
        cfg->notes_claim_err++;

    /* Allocation is back: the engine agrees with the model and still works. */
    oom_run after = run;
    after.what = cfg->warm ? "after the reset" : "after the reset (fresh store)";
    g_run = &after;
    for (int i = 0; i < NT; i++)
        if (m.known[i] == 1)
            check_get(e, &after, &m, i);
    check_consistent(e, &after, &m);
    int healthy = check_usable(e, &after);
    if (!run.sqlite)
        CHECK(healthy, "the memory store must work after the reset");
    if (!healthy)
        cfg->notes_store_failed++;
    int trc = th_engine_tick(e);
    CHECK(trc >= 0 || (run.sqlite && !healthy && trc == TH_EIO), "tick after reset: %d", trc);
    CHECK(th_engine_unsubscribe(e, sub) == 0, "unsubscribe");

    static task_row before[64], reopened[64];
    size_t nbefore = run.sqlite ? snapshot_rows(e, before, 64) : 0;
    th_engine_free(e);

    if (run.sqlite) {
        /* The file loads; when the store stayed healthy it holds exactly
         * what the engine held. */
        after.what = "reopening the file";
        thtest_clock clk2;
        thtest_clock_init(&clk2, clk.now);
        th_engine *e2 = open_engine(uri, &clk2);
        size_t nre = snapshot_rows(e2, reopened, 64);
        if (healthy)
            check_rows_equal(before, nbefore, reopened, nre, "reopened file");
        th_engine_free(e2);
        remove_db(path);
    }
    g_run = NULL;
    return hit;
}

/* ---- forked children ------------------------------------------------------------------ */

typedef int (*oom_body)(long n, void *arg);

static void child_atexit(void)
{
    if (g_in_body) {
        fprintf(stderr,
                "oom: exit() was called inside the library (%s %s, allocation failure armed at "
                "n=%ld); stack:\n",
                g_run ? g_run->kind : "?", g_run && g_run->what ? g_run->what : "?",
                g_run ? g_run->n : -2);
        void *bt[64];
        int k = backtrace(bt, 64);
        backtrace_symbols_fd(bt, k, 2);
        _exit(CHILD_EXIT_CALLED);
    }
    _exit(CHILD_STRAY_EXIT);
}

static int leak_check(void)
{
#ifdef OOM_HAVE_LSAN
    return __lsan_do_recoverable_leak_check();
#else
    return 0;
#endif
}

/* The run a child is in, shared with the parent so it knows where a child
 * that died stopped. */
static volatile long *g_child_at;

/* Runs body(n, arg) for n = from, from + step, ... <= to in one child, until
 * a run finishes without reaching allocation n (CHILD_DONE) or the range is
 * used up (CHILD_HIT); then checks for leaks. Returns the child's exit code,
 * or -signal; *g_child_at holds the n it was at. */
static int run_child(long from, long to, long step, oom_body body, void *arg)
{
    *g_child_at = from;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        g_child = 1;
        /* Crashes must kill the child, not be caught by cmocka's handlers. */
        static const int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP, SIGSYS};
        for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
            signal(sigs[i], SIG_DFL);
        atexit(child_atexit);
        int code = CHILD_HIT;
        for (long n = from; n <= to; n += step) {
            *g_child_at = n;
            g_in_body = 1;
            int hit = body(n, arg);
            g_in_body = 0;
            th__alloc_fail_reset();
            if (!hit) {
                code = CHILD_DONE;
                break;
            }
        }
        if (leak_check()) {
            fprintf(stderr, "oom: leak with the allocation failure armed at n=%ld..%ld\n", from,
                    *g_child_at);
            _exit(CHILD_LEAK);
        }
        _exit(code);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        assert_int_equal(errno, EINTR);
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return WIFSIGNALED(status) ? -WTERMSIG(status) : -1000;
}

/* Appends n to a short list for the report. */
static void note_index(char *buf, size_t size, size_t *count, long n)
{
    size_t len = strlen(buf);
    if (*count < 40 && len + 24 < size)
        snprintf(buf + len, size - len, "%s%ld", *count ? " " : "", n);
    else if (*count == 40 && len + 5 < size)
        snprintf(buf + len, size - len, " ...");
    (*count)++;
}

/* Runs body for n = 0, step, 2 step... in forked children until a run
 * finishes without reaching allocation n. A child goes on through the
 * indices until a run ends it early (a known bug: the next child starts at
 * the next index) and checks for leaks at its end; a leak is then narrowed
 * down to one index with a child per index. Any of these fails the test. */
static void forked_loop(const char *what, oom_body body, void *arg, long step)
{
    (void)thtest_tmpdir(); /* made once, in the parent */
    /* Children inherit the parent's heap: leaks an earlier test left behind
     * would be blamed on them. */
    if (leak_check())
        fail_msg("%s: memory leaked before this test started (see the report above)", what);
    g_child_at =
        mmap(NULL, sizeof *g_child_at, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(g_child_at != MAP_FAILED);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    const char *v = getenv("TH_OOM_VERBOSE");
    int verbose = v && *v && strcmp(v, "0") != 0;
    char stranded[512] = "";
    size_t nstranded = 0;
    int children = 0;
    long n = 0, at = 0;
    for (;;) {
        if (n > OOM_CAP)
            fail_msg("%s: still reaching allocation %d; the loop did not finish", what, OOM_CAP);
        int st = run_child(n, OOM_CAP, step, body, arg);
        children++;
        at = *g_child_at;
        if (verbose)
            print_message("%s: child for n=%ld.. ended at n=%ld with status %d\n", what, n, at, st);
        if (st == CHILD_DONE)
            break;
        if (st == CHILD_EXIT_CALLED)
            fail_msg("%s: the library called exit() with the failure armed at n=%ld (stack "
                     "above)",
                     what, at);
        if (st == CHILD_STRANDED) {
            note_index(stranded, sizeof stranded, &nstranded, at);
            n = at + step;
            continue;
        }
        if (st == CHILD_HIT)
            fail_msg("%s: still reaching allocation %d; the loop did not finish", what, OOM_CAP);
        if (st == CHILD_LEAK) {
            for (long k = n; k <= at; k += step)
                if (run_child(k, k, step, body, arg) == CHILD_LEAK)
                    fail_msg("%s: memory leaked after an allocation failure at n=%ld", what, k);
            fail_msg("%s: memory leaked in the runs n=%ld..%ld", what, n, at);
        }
        if (st < 0)
            fail_msg("%s: the child crashed with signal %d at n=%ld", what, -st, at);
        fail_msg("%s: the child failed (exit %d) at n=%ld; see the message above", what, st, at);
    }
    munmap((void *)g_child_at, sizeof *g_child_at);
    g_child_at = NULL;
    print_message("%s: %ld allocation indices checked (step %ld) in %d children, %.2f s\n", what,
                  at / step + 1, step, children, elapsed_s(&t0));
    if (!nstranded)
        return;
    print_message("BUG (%s): reload succeeded but a blocked task was never released "
                  "after its dependency completed, failure armed at n = %s\n",
                  what, stranded);
    fail_msg("%s: out-of-memory bugs found (see the indices above)", what);
}

/* ---- tests: the scenario -------------------------------------------------------------- */

static int reset_alloc(void **state)
{
    (void)state;
    th__alloc_fail_reset();
    g_run = NULL;
    return 0;
}

static void baseline(const char *kind)
{
    scen_cfg cfg = {.kind = kind, .prefix = "oom-base", .warm = 1};
    assert_int_equal(scenario_once(-1, &cfg), 0);
    scen_cfg fresh = {.kind = kind, .prefix = "oom-base-fresh", .warm = 0};
    assert_int_equal(scenario_once(-1, &fresh), 0);
}

static void test_baseline_memory(void **state)
{
    (void)state;
    baseline("memory");
}

static void test_baseline_sqlite(void **state)
{
    (void)state;
    baseline("sqlite");
}

static void report_notes(const char *what, const scen_cfg *cfg)
{
    if (cfg->notes_worker_lost)
        print_message("note (%s): in %d runs th_engine_claim returned a snapshot without its "
                      "worker (the copy failed; qcore.c documents this as allowed)\n",
                      what, cfg->notes_worker_lost);
    if (cfg->notes_claim_err)
        if (cfg->notes_claim_err)
            fail_msg("%s: th_engine_claim returned an error with err left empty", what);
}

static void inprocess_loop(const char *kind, long step)
{
    scen_cfg cfg = {.kind = kind, .prefix = "oom", .warm = 1};
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long n;
    for (n = 0; n <= OOM_CAP; n += step)
        if (!scenario_once(n, &cfg))
            break;
    if (n > OOM_CAP)
        fail_msg("%s: still reaching allocation %d", kind, OOM_CAP);
    print_message("%s: %ld allocation indices checked (step %ld) in %.2f s; %d runs ended with "
                  "the store refusing writes\n",
                  kind, n / step + 1, step, elapsed_s(&t0), cfg.notes_store_failed);
    report_notes(kind, &cfg);
}

static void test_oom_scenario_memory(void **state)
{
    (void)state;
    inprocess_loop("memory", 1);
}

static void test_oom_scenario_sqlite(void **state)
{
    (void)state;
    inprocess_loop("sqlite", 1);
}

static void test_oom_fresh_store_memory(void **state)
{
    (void)state;
    scen_cfg cfg = {.kind = "memory", .prefix = "oomfresh", .warm = 0};
    forked_loop("fresh memory store", scenario_once, &cfg, 1);
}

static void test_oom_fresh_store_sqlite(void **state)
{
    (void)state;
    scen_cfg cfg = {.kind = "sqlite", .prefix = "oomfresh", .warm = 0};
    forked_loop("fresh sqlite store", scenario_once, &cfg, 1);
}

/* ---- tests: reopening a populated sqlite file under OOM ------------------------------ */

typedef struct reopen_cfg {
    char src[4096];
    task_row rows[32];
    size_t nrows;
    char dep[TH_ID_SIZE];     /* pending, queue "dep" */
    char blocked[TH_ID_SIZE]; /* blocked on dep */
} reopen_cfg;

static void submit_to(th_engine *e, const char *queue, th_task_spec *spec, char id[TH_ID_SIZE])
{
    th_error err;
    spec->queue = queue;
    int rc = th_engine_submit(e, spec, id, &err);
    CHECK(rc == 0, "populate: submit to %s: %d %s", queue, rc, err.message);
}

static uint64_t claim_from(th_engine *e, const char *queue, const char *id)
{
    th_error err;
    const char *queues[] = {queue};
    th_claim_options co = {.queues = queues, .nqueues = 1, .max_tasks = 1, .lease_ms = 600000};
    th_task *t = NULL;
    int rc = th_engine_claim(e, &co, &t, &err);
    CHECK(rc == 1 && strcmp(t->id, id) == 0, "claim from %s: %d %s", queue, rc, err.message);
    uint64_t lease = t->lease;
    th_task_free(t);
    return lease;
}

/* A file with a task in every kind of state, logs, unique keys, metadata and
 * dependencies. */
static void populate(reopen_cfg *cfg)
{
    oom_run run = {.kind = "sqlite", .sqlite = 1, .strict = 1, .n = -1, .what = "populate"};
    g_run = &run;
    db_path(cfg->src, sizeof cfg->src, "oom-reopen-src", 0);
    remove_db(cfg->src);
    char uri[4200];
    snprintf(uri, sizeof uri, "sqlite:%s", cfg->src);
    thtest_clock clk;
    thtest_clock_init(&clk, THTEST_T0);
    th_engine *e = open_engine(uri, &clk);
    th_error err;
    th_task_spec spec;
    char id[TH_ID_SIZE];

    th_task_spec_init(&spec, NULL);
    spec.payload = "{\"p\":1}";
    submit_to(e, "dep", &spec, cfg->dep);
    th_task_spec_init(&spec, NULL);
    const char *deps[] = {cfg->dep};
    spec.deps = deps;
    spec.ndeps = 1;
    spec.unique_key = "blocked-key";
    spec.metadata = "{\"m\":1}";
    submit_to(e, "work", &spec, cfg->blocked);

    th_task_spec_init(&spec, NULL);
    spec.delay_ms = 60000;
    spec.unique_key = "scheduled-key";
    submit_to(e, "later", &spec, id);

    th_task_spec_init(&spec, NULL);
    spec.payload = "[1,2,3]";
    spec.timeout_ms = 300000;
    submit_to(e, "run", &spec, id);
    uint64_t lease = claim_from(e, "run", id);
    CHECK(th_engine_log(e, id, lease, TH_LOG_INFO, "one", "{\"k\":1}", &err) == 0, "log");
    CHECK(th_engine_log(e, id, lease, TH_LOG_ERROR, "two", NULL, &err) == 0, "log");
    CHECK(th_engine_progress(e, id, lease, 10, 1, 10, "going", &err) == 0, "progress");

    th_task_spec_init(&spec, NULL);
    submit_to(e, "done", &spec, id);
    lease = claim_from(e, "done", id);
    CHECK(th_engine_log(e, id, lease, TH_LOG_DEBUG, "d", "[]", &err) == 0, "log");
    CHECK(th_engine_complete(e, id, lease, "{\"r\":true}", &err) == 0, "complete");

    th_task_spec_init(&spec, NULL);
    char failed[TH_ID_SIZE];
    submit_to(e, "bad", &spec, failed);
    lease = claim_from(e, "bad", failed);
    CHECK(th_engine_fail(e, failed, lease, "no", TH_FAIL_PERMANENT, &err) == 0, "fail");

    th_task_spec_init(&spec, NULL);
    submit_to(e, "gone", &spec, id);
    CHECK(th_engine_cancel(e, id, "why", &err) == 0, "cancel");

    th_task_spec_init(&spec, NULL);
    const char *fdeps[] = {failed};
    spec.deps = fdeps;
    spec.ndeps = 1;
    submit_to(e, "work", &spec, id); /* cancelled at once: its dependency failed */

    cfg->nrows = snapshot_rows(e, cfg->rows, 32);
    th_engine_free(e);
    g_run = NULL;
}

static void copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb");
    if (!in) {
        CHECK(errno == ENOENT, "open %s: %s", from, strerror(errno));
        return;
    }
    FILE *out = fopen(to, "wb");
    CHECK(out, "create %s: %s", to, strerror(errno));
    char buf[65536];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, in)) > 0)
        CHECK(fwrite(buf, 1, got, out) == got, "write %s", to);
    fclose(in);
    CHECK(fclose(out) == 0, "close %s", to);
}

static int reopen_once(long n, void *arg)
{
    reopen_cfg *cfg = arg;
    oom_run run = {.kind = "sqlite", .sqlite = 1, .strict = 0, .n = n, .what = "reopen"};
    g_run = &run;
    char path[4096], uri[4200], from[4200], to[4200];
    db_path(path, sizeof path, "oomreopen", n);
    remove_db(path);
    static const char *const suffix[] = {"", "-wal"};
    for (size_t i = 0; i < 2; i++) {
        snprintf(from, sizeof from, "%s%s", cfg->src, suffix[i]);
        snprintf(to, sizeof to, "%s%s", path, suffix[i]);
        copy_file(from, to);
    }
    snprintf(uri, sizeof uri, "sqlite:%s", path);
    thtest_clock clk;
    thtest_clock_init(&clk, THTEST_T0 + 1000);
    th_engine_options o;
    th_engine_options_init(&o);
    o.clock = &clk.clock;
    o.manual_tick = 1;
    o.seed = 42;

    th_error err;
    memset(&err, 0, sizeof err);
    /* Only the load runs short of memory: an engine allocates after it, which
     * would fail too and hide a load that silently lost something. */
    th__alloc_fail_after(n);
    th_store *s = th_store_open(uri, NULL, &err);
    void *probe = th__malloc(1);
    int hit = probe == NULL;
    th__free(probe);
    th__alloc_fail_reset();
    th_engine *e = NULL;
    if (s) {
        e = th_engine_new(s, &o, &err);
        CHECK(e, "th_engine_new after the reset: %d %s", err.code, err.message);
    } else {
        CHECK(err.code == TH_ENOMEM && err.message[0], "th_store_open: %d (%s) '%s'", err.code,
              th_errname(err.code), err.message);
    }

    if (e) {
        /* Loaded under OOM and accepted: it must be the whole file. */
        static task_row rows[32];
        size_t nr = snapshot_rows(e, rows, 32);
        check_rows_equal(cfg->rows, cfg->nrows, rows, nr, "file loaded under OOM");
        /* ... and behave: completing the dependency releases its dependent. */
        uint64_t lease = claim_from(e, "dep", cfg->dep);
        CHECK(th_engine_complete(e, cfg->dep, lease, NULL, &err) == 0, "complete dep: %s",
              err.message);
        th_task *t = NULL;
        CHECK(th_engine_get(e, cfg->blocked, &t, &err) == 0, "get blocked: %s", err.message);
        th_task_state st = t->state;
        th_task_free(t);
        if (st == TH_TASK_BLOCKED) {
            fprintf(stderr,
                    "oom: reload with the failure armed at n=%ld succeeded, but task %s stays "
                    "blocked after its dependency %s completed\n",
                    n, cfg->blocked, cfg->dep);
            th_engine_free(e);
            remove_db(path);
            if (g_child) {
                g_in_body = 0;
                if (leak_check())
                    _exit(CHILD_LEAK);
                _exit(CHILD_STRANDED);
            }
            check_failed(__FILE__, __LINE__, "blocked task stranded after reload");
        }
        CHECK(st == TH_TASK_PENDING, "dependent is %s after its dependency completed",
              th_task_state_name(st));
        th_engine_free(e);
    }
    remove_db(path);
    g_run = NULL;
    return hit;
}

static void test_oom_reopen_sqlite(void **state)
{
    (void)state;
    static reopen_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    populate(&cfg);
    assert_int_equal(cfg.nrows, 8);
    /* With nothing failing the copy loads completely and works. */
    assert_int_equal(reopen_once(-1, &cfg), 0);
    forked_loop("reopening a populated sqlite file", reopen_once, &cfg, 1);
    remove_db(cfg.src);
}

/* ---- tests: opening under OOM --------------------------------------------------------- */

static void open_under_oom(const char *kind)
{
    long n;
    for (n = 0; n <= OOM_CAP; n++) {
        oom_run run = {.kind = kind, .sqlite = strcmp(kind, "sqlite") == 0, .n = n, .what = "open"};
        g_run = &run;
        char path[4096] = "", uri[4200];
        if (run.sqlite) {
            db_path(path, sizeof path, "oomopen", n);
            remove_db(path);
            snprintf(uri, sizeof uri, "sqlite:%s", path);
        } else {
            snprintf(uri, sizeof uri, "memory");
        }
        thtest_clock clk;
        thtest_clock_init(&clk, THTEST_T0);
        th_engine_options o;
        th_engine_options_init(&o);
        o.clock = &clk.clock;
        o.manual_tick = 1;
        th_error err;
        memset(&err, 0, sizeof err);
        th__alloc_fail_after(n);
        th_store *s = th_store_open(uri, NULL, &err);
        th_engine *e = NULL;
        if (s) {
            e = th_engine_new(s, &o, &err);
            if (!e)
                CHECK(err.code == TH_ENOMEM && err.message[0], "th_engine_new: %d '%s'", err.code,
                      err.message);
        } else {
            CHECK(err.code == TH_ENOMEM && err.message[0], "th_store_open: %d (%s) '%s'", err.code,
                  th_errname(err.code), err.message);
        }
        void *probe = th__malloc(1);
        int hit = probe == NULL;
        th__free(probe);
        th__alloc_fail_reset();
        if (e) {
            CHECK(check_usable(e, &run), "engine opened under OOM does not work");
            th_engine_free(e);
        }
        if (run.sqlite)
            remove_db(path);
        if (!hit)
            break;
    }
    g_run = NULL;
    if (n > OOM_CAP)
        fail_msg("open: still reaching allocation %d", OOM_CAP);
    print_message("open %s: %ld allocation indices checked\n", kind, n + 1);
}

static void test_oom_open_memory(void **state)
{
    (void)state;
    open_under_oom("memory");
}

static void test_oom_open_sqlite(void **state)
{
    (void)state;
    open_under_oom("sqlite");
}

#define T(fn) cmocka_unit_test_teardown(fn, reset_alloc)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_baseline_memory),        T(test_baseline_sqlite),        T(test_oom_open_memory),
        T(test_oom_open_sqlite),        T(test_oom_scenario_memory),    T(test_oom_scenario_sqlite),
        T(test_oom_fresh_store_memory), T(test_oom_fresh_store_sqlite), T(test_oom_reopen_sqlite),
    };
    return cmocka_run_group_tests_name("oom", tests, NULL, NULL) != 0;
}
