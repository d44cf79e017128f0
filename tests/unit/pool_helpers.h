/*
 * Helpers shared by the worker-pool tests (pool_test.c, pool_knobs_test.c,
 * pool_proc_test.c): a real engine (system clock, timer thread) over a fresh
 * store, a recorder of pool events, bounded waits on conditions, and small
 * task helpers. Everything is static inline so each test binary uses what it
 * needs without unused-function warnings.
 *
 * The tests never assert on speed: they wait for a condition, polling every
 * few milliseconds, and fail only when it has not held after WAIT_LIMIT_MS.
 */
#ifndef POOL_HELPERS_H
#define POOL_HELPERS_H

#include "thtest.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <taskhive/pool.h>

/* Generous: a missing event fails after this long instead of hanging, and a
 * slow sanitizer build still gets there. */
#define WAIT_LIMIT_MS 20000

static inline int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* Polls `cond` every 5 ms; fails the test (naming the condition) when it is
 * still false after WAIT_LIMIT_MS. */
#define WAIT_FOR(cond)                                                                             \
    do {                                                                                           \
        int64_t wait_until_ = mono_ms() + WAIT_LIMIT_MS;                                           \
        while (!(cond)) {                                                                          \
            if (mono_ms() > wait_until_)                                                           \
                fail_msg("condition not met after %d ms: %s", WAIT_LIMIT_MS, #cond);               \
            sleep_ms(5);                                                                           \
        }                                                                                          \
    } while (0)

/* ---- recording pool events ------------------------------------------------ */

typedef struct rec_event {
    th_pool_event_type type;
    int worker;
    char task[TH_ID_SIZE];
    char message[256];
    int value;
} rec_event;

typedef struct evrec {
    pthread_mutex_t mu;
    rec_event *ev;
    size_t n, cap;
} evrec;

static inline void evrec_init(evrec *r)
{
    pthread_mutex_init(&r->mu, NULL);
    r->ev = NULL;
    r->n = r->cap = 0;
}

static inline void evrec_destroy(evrec *r)
{
    free(r->ev);
    r->ev = NULL;
    r->n = r->cap = 0;
    pthread_mutex_destroy(&r->mu);
}

static inline void evrec_cb(const th_pool_event *ev, void *ud)
{
    evrec *r = ud;
    pthread_mutex_lock(&r->mu);
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 256;
        rec_event *grown = realloc(r->ev, cap * sizeof *grown);
        if (!grown) {
            pthread_mutex_unlock(&r->mu);
            return;
        }
        r->ev = grown;
        r->cap = cap;
    }
    rec_event *e = &r->ev[r->n++];
    memset(e, 0, sizeof *e);
    e->type = ev->type;
    e->worker = ev->worker_id;
    if (ev->task_id)
        snprintf(e->task, sizeof e->task, "%s", ev->task_id);
    if (ev->message)
        snprintf(e->message, sizeof e->message, "%s", ev->message);
    e->value = ev->value;
    pthread_mutex_unlock(&r->mu);
}

/* Events of `type` whose message contains `msg` (NULL = any) and whose task
 * is `task` (NULL = any). */
static inline int evrec_count(evrec *r, th_pool_event_type type, const char *msg, const char *task)
{
    int n = 0;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n; i++) {
        const rec_event *e = &r->ev[i];
        if (e->type != type)
            continue;
        if (msg && !thtest_contains(e->message, msg))
            continue;
        if (task && strcmp(e->task, task) != 0)
            continue;
        n++;
    }
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* Copies the first matching event into *out; 1 when found. */
static inline int evrec_find(evrec *r, th_pool_event_type type, const char *task, rec_event *out)
{
    int found = 0;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n && !found; i++) {
        if (r->ev[i].type == type && (!task || strcmp(r->ev[i].task, task) == 0)) {
            *out = r->ev[i];
            found = 1;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return found;
}

/* ---- a pool over a real engine -------------------------------------------- */

typedef struct pfx {
    char *uri;
    char *path; /* sqlite file or NULL */
    th_engine *e;
    th_pool *p;
    evrec rec;
} pfx;

/* Opens a real engine (system clock, timer thread) over a fresh store. */
static inline pfx *pfx_new(const char *kind)
{
    pfx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    evrec_init(&f->rec);
    f->uri = thtest_store_uri(kind, &f->path);
    f->e = thtest_engine_opts(f->uri, NULL, NULL);
    return f;
}

/* Stops and frees the pool (when still there) and the engine. */
static inline void pfx_free(pfx *f)
{
    if (!f)
        return;
    th_pool_free(f->p);
    f->p = NULL;
    th_engine_free(f->e);
    thtest_remove_db(f->path);
    free(f->path);
    free(f->uri);
    evrec_destroy(&f->rec);
    free(f);
}

/* th_pool_new over the fixture's engine, subscribed to the recorder. */
static inline th_pool *pfx_pool(pfx *f, const th_pool_options *o)
{
    th_error err;
    memset(&err, 0, sizeof err);
    f->p = th_pool_new(f->e, o, &err);
    if (!f->p)
        fail_msg("th_pool_new: %s field '%s': %s", th_errname(err.code), err.field, err.message);
    assert_true(th_pool_subscribe(f->p, evrec_cb, &f->rec) > 0);
    return f->p;
}

static inline void pool_register(th_pool *p, const char *name, th_handler_fn fn, void *ud)
{
    th_error err;
    memset(&err, 0, sizeof err);
    int rc = th_pool_register(p, name, fn, ud, &err);
    if (rc)
        fail_msg("th_pool_register(%s): %s: %s", name, th_errname(rc), err.message);
}

static inline void pool_start(th_pool *p)
{
    th_error err;
    memset(&err, 0, sizeof err);
    int rc = th_pool_start(p, &err);
    if (rc)
        fail_msg("th_pool_start: %s: %s", th_errname(rc), err.message);
}

/* Options with everything slow turned off: no autoscaling, no recycling,
 * short timeouts, and one worker unless the test says otherwise. */
static inline th_pool_options quiet_options(int workers)
{
    th_pool_options o;
    th_pool_options_init(&o);
    o.min_workers = workers;
    o.max_workers = workers;
    o.autoscale = 0;
    o.recycle_after = 0;
    o.timeout_grace_ms = 2000;
    o.task_timeout_ms = 15000;
    return o;
}

/* Submits through the pool; fails the test unless it returns 0. */
#define pool_submit(p, spec, id) pool_submit_at((p), (spec), (id), __FILE__, __LINE__)
static inline void pool_submit_at(th_pool *p, const th_task_spec *spec, char id[TH_ID_SIZE],
                                  const char *file, int line)
{
    th_error err;
    memset(&err, 0, sizeof err);
    int rc = th_pool_submit(p, spec, id, &err);
    if (rc != 0) {
        print_error("th_pool_submit(%s) returned %d (%s) field '%s': %s\n", spec->queue, rc,
                    th_errname(rc), err.field, err.message);
        _fail(file, line);
    }
}

/* A spec for `queue` with `payload`, no retries and the given timeout
 * (0 = the pool's default). */
static inline th_task_spec one_shot(const char *queue, const char *payload, int64_t timeout_ms)
{
    th_task_spec s;
    th_task_spec_init(&s, queue);
    s.payload = payload;
    s.timeout_ms = timeout_ms;
    s.retry = thtest_retry(0, 0, 0, 1);
    return s;
}

/* The task's state, or -1 when it cannot be read. */
static inline int task_state(th_engine *e, const char *id)
{
    th_task *t = NULL;
    if (th_engine_get(e, id, &t, NULL) != 0)
        return -1;
    int st = (int)t->state;
    th_task_free(t);
    return st;
}

static inline int task_is_final(th_engine *e, const char *id)
{
    int st = task_state(e, id);
    return st >= 0 && th_task_state_is_final((th_task_state)st);
}

/* Waits until task `id` is final and returns its snapshot (caller frees). */
static inline th_task *wait_final(th_engine *e, const char *id)
{
    WAIT_FOR(task_is_final(e, id));
    return thtest_get(e, id);
}

/* Number of tasks of the engine in `state`, every queue. */
static inline int64_t count_state(th_engine *e, th_task_state state)
{
    th_engine_metrics m;
    if (th_engine_metrics_get(e, &m) != 0)
        return -1;
    return m.counts[state];
}

/* The pool's worker list (at most 64). */
typedef struct wlist {
    int n;
    th_worker_info w[64];
} wlist;

static inline wlist workers_of(th_pool *p)
{
    wlist l;
    memset(&l, 0, sizeof l);
    l.n = th_pool_workers(p, l.w, 64);
    return l;
}

static inline int worker_count(th_pool *p)
{
    th_worker_info w[1];
    return th_pool_workers(p, w, 0);
}

/* Log rows of a task containing `needle` in their message. */
static inline int log_count(th_engine *e, const char *id, const char *needle)
{
    th_log_entry *rows = NULL;
    size_t n = 0;
    if (th_engine_logs(e, id, 0, 0, &rows, &n, NULL) != 0)
        return -1;
    int k = 0;
    for (size_t i = 0; i < n; i++)
        k += thtest_contains(rows[i].message, needle);
    th_log_entries_free(rows, n);
    return k;
}

#endif
