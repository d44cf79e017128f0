/*
 * Worker pools: configuration, thread workers, the manager (lease
 * heartbeats, overrun detection, autoscaling, metrics) and graceful stop.
 * Process workers live in proc.c. See pool.h for the contract and
 * pool_impl.h for the lock order.
 *
 * A worker is a thread that claims from the engine (blocking, woken by the
 * engine when work arrives or by th_engine_wake_claims when it must stop),
 * runs the handler for the task's queue and reports the outcome. The manager
 * thread sleeps until its next deadline: a lease heartbeat, a task's
 * timeout, the once-a-second utilisation sample, or the metrics interval.
 */
#include "pool/pool_impl.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"

#define SCALE_SAMPLE_NS 1000000000LL

void th_pool_options_init(th_pool_options *o)
{
    memset(o, 0, sizeof *o);
    o->mode = TH_POOL_THREADS;
    o->min_workers = 2;
    o->max_workers = 8;
    o->max_queue = 1000;
    o->backpressure_threshold = 0.9;
    o->task_timeout_ms = 30000;
    o->timeout_grace_ms = 5000;
    o->health_check_interval_ms = 30000;
    o->worker_idle_timeout_ms = 300000;
    o->worker_memory_limit = (size_t)512 << 20;
    o->max_retries = 3;
    o->retry_delay_ms = 1000;
    o->autoscale = 1;
    o->scale_up_threshold = 0.7;
    o->scale_down_threshold = 0.3;
    o->scale_up_cooldown_ms = 30000;
    o->scale_down_cooldown_ms = 60000;
    o->recycle_after = 100;
    o->lease_ms = 30000;
    o->metrics_interval_ms = 5000;
    o->batch = 1;
}

static const char *const worker_states[] = {"idle", "busy", "unhealthy", "terminating",
                                            "terminated"};

const char *th_worker_state_name(th_worker_state s)
{
    return (unsigned)s < 5 ? worker_states[s] : "unknown";
}

static const char *const pev_names[TH_PEV_NTYPES] = {
    "taskSubmitted",   "taskAssigned",  "taskProgress",  "taskCompleted", "taskFailed",
    "taskTimeout",     "taskCancelled", "workerCreated", "workerExited",  "workerTerminated",
    "workerHeartbeat", "workerError",   "scaledUp",      "scaledDown",    "metricsUpdated",
    "backpressure",    "error",
};

const char *th_pool_event_name(th_pool_event_type t)
{
    return (unsigned)t < TH_PEV_NTYPES ? pev_names[t] : "unknown";
}

/* ---- options -------------------------------------------------------------- */

int th_pool_options_check(const th_pool_options *o, th_error *err)
{
#define BAD(field, ...) return th__err(err, TH_EINVAL, field, __VA_ARGS__)
    if (o->mode != TH_POOL_THREADS && o->mode != TH_POOL_PROCESSES)
        BAD("mode", "mode must be threads or processes");
    if (o->min_workers < 0 || o->min_workers > 1024)
        BAD("min_workers", "min_workers must be 0..1024");
    if (o->max_workers < 1 || o->max_workers > 1024 || o->max_workers < o->min_workers)
        BAD("max_workers", "max_workers must be 1..1024 and >= min_workers");
    if (o->max_queue < 1)
        BAD("max_queue", "max_queue must be at least 1");
    if (!(o->backpressure_threshold > 0 && o->backpressure_threshold <= 1))
        BAD("backpressure_threshold", "backpressure_threshold must be in (0, 1]");
    if (o->task_timeout_ms < 1)
        BAD("task_timeout_ms", "task_timeout_ms must be positive");
    if (o->timeout_grace_ms < 0)
        BAD("timeout_grace_ms", "timeout_grace_ms must not be negative");
    if (o->health_check_interval_ms < 1)
        BAD("health_check_interval_ms", "health_check_interval_ms must be positive");
    if (o->worker_idle_timeout_ms < 1)
        BAD("worker_idle_timeout_ms", "worker_idle_timeout_ms must be positive");
    if (o->worker_memory_limit < ((size_t)1 << 20))
        BAD("worker_memory_limit", "worker_memory_limit must be at least 1 MiB");
    if (o->max_retries < 0 || o->max_retries > 1000)
        BAD("max_retries", "max_retries must be 0..1000");
    if (o->retry_delay_ms < 0)
        BAD("retry_delay_ms", "retry_delay_ms must not be negative");
    if (!(o->scale_down_threshold >= 0 && o->scale_down_threshold < o->scale_up_threshold &&
          o->scale_up_threshold <= 1))
        BAD("scale_up_threshold", "need 0 <= scale_down_threshold < scale_up_threshold <= 1");
    if (o->scale_up_cooldown_ms < 0 || o->scale_down_cooldown_ms < 0)
        BAD(o->scale_up_cooldown_ms < 0 ? "scale_up_cooldown_ms" : "scale_down_cooldown_ms",
            "cooldowns must not be negative");
    if (o->recycle_after < 0)
        BAD("recycle_after", "recycle_after must not be negative");
    if (o->lease_ms < 100)
        BAD("lease_ms", "lease_ms must be at least 100");
    if (o->metrics_interval_ms < 1)
        BAD("metrics_interval_ms", "metrics_interval_ms must be positive");
    if (o->batch < 1 || o->batch > 64)
        BAD("batch", "batch must be 1..64");
#undef BAD
    return 0;
}

th_pool *th_pool_new(th_engine *engine, const th_pool_options *opts, th_error *err)
{
    th_pool_options defaults;
    if (!engine) {
        th__err(err, TH_EINVAL, "engine", "engine is NULL");
        return NULL;
    }
    if (!opts) {
        th_pool_options_init(&defaults);
        opts = &defaults;
    }
    if (th_pool_options_check(opts, err))
        return NULL;
    th_pool *p = th__calloc(1, sizeof *p);
    if (!p) {
        th__err(err, TH_ENOMEM, NULL, "out of memory");
        return NULL;
    }
    p->e = engine;
    p->o = *opts;
    p->refs = 1;
    pthread_mutex_init(&p->mu, NULL);
    th__cond_init_mono(&p->cv);
    pthread_mutex_init(&p->evmu, NULL);
    return p;
}

int th_pool_register(th_pool *p, const char *name, th_handler_fn fn, void *ud, th_error *err)
{
    if (p->started)
        return th__err(err, TH_ESTATE, "name", "register handlers before th_pool_start");
    size_t n = name ? strlen(name) : 0;
    if (!fn)
        return th__err(err, TH_EINVAL, "fn", "handler function is NULL");
    if (n == 0 || n > TH_QUEUE_NAME_MAX ||
        strspn(name, "abcdefghijklmnopqrstuvwxyz"
                     "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                     "0123456789_.:-") != n)
        return th__err(err, TH_EINVAL, "name", "handler name must be a valid queue name");
    for (size_t i = 0; i < p->nhandlers; i++)
        if (strcmp(p->handlers[i].name, name) == 0)
            return th__err(err, TH_ECONFLICT, "name", "handler %s is already registered", name);
    if (p->nhandlers == TH__MAX_HANDLERS)
        return th__err(err, TH_EBUSY, "name", "at most %d handlers", TH__MAX_HANDLERS);
    th__handler *h = &p->handlers[p->nhandlers];
    memcpy(h->name, name, n + 1);
    h->fn = fn;
    h->ud = ud;
    p->queues[p->nhandlers++] = h->name;
    return 0;
}

int th_pool_set_config(th_pool *p, const char *key, const char *value, th_error *err)
{
    if (p->started)
        return th__err(err, TH_ESTATE, "key", "set configuration before th_pool_start");
    if (!key || !*key || !value)
        return th__err(err, TH_EINVAL, key && *key ? "value" : "key", "key and value are required");
    for (size_t i = 0; i < p->nconfig; i++) {
        if (strcmp(p->config[i].key, key) == 0) {
            char *v = th__strdup(value);
            if (!v)
                return th__err(err, TH_ENOMEM, NULL, "out of memory");
            th__free(p->config[i].value);
            p->config[i].value = v;
            return 0;
        }
    }
    th__kv *cfg = th__realloc(p->config, (p->nconfig + 1) * sizeof *cfg);
    if (!cfg)
        return th__err(err, TH_ENOMEM, NULL, "out of memory");
    p->config = cfg;
    cfg[p->nconfig].key = th__strdup(key);
    cfg[p->nconfig].value = th__strdup(value);
    if (!cfg[p->nconfig].key || !cfg[p->nconfig].value) {
        th__free(cfg[p->nconfig].key);
        th__free(cfg[p->nconfig].value);
        return th__err(err, TH_ENOMEM, NULL, "out of memory");
    }
    p->nconfig++;
    return 0;
}

int th_pool_register_builtins(th_pool *p, th_error *err)
{
    static const struct {
        const char *name;
        th_handler_fn fn;
    } builtins[] = {
        {"noop", th_handler_noop},         {"sleep", th_handler_sleep},
        {"exec", th_handler_exec},         {"hash", th_handler_hash},
        {"compress", th_handler_compress}, {"decompress", th_handler_decompress},
        {"encrypt", th_handler_encrypt},   {"decrypt", th_handler_decrypt},
        {"http", th_handler_http},
    };
    for (size_t i = 0; i < sizeof builtins / sizeof builtins[0]; i++) {
        int rc = th_pool_register(p, builtins[i].name, builtins[i].fn, NULL, err);
        if (rc)
            return rc;
    }
    return 0;
}

const th__handler *th__pool_handler(const th_pool *p, const char *queue)
{
    for (size_t i = 0; i < p->nhandlers; i++)
        if (strcmp(p->handlers[i].name, queue) == 0)
            return &p->handlers[i];
    return NULL;
}

/* ---- events ---------------------------------------------------------------- */

int th_pool_subscribe(th_pool *p, th_pool_event_fn fn, void *ud)
{
    if (!fn)
        return TH_EINVAL;
    int id = TH_EBUSY;
    pthread_mutex_lock(&p->evmu);
    for (int k = 0; k < TH__MAX_POOL_SUBS; k++) {
        if (!p->subs[k].fn) {
            p->subs[k].fn = fn;
            p->subs[k].ud = ud;
            atomic_fetch_add(&p->nsubs, 1);
            id = k + 1;
            break;
        }
    }
    pthread_mutex_unlock(&p->evmu);
    return id;
}

void th__pool_emit(th_pool *p, th_pool_event_type type, int worker, const char *task,
                   const char *message, int value)
{
    if (atomic_load_explicit(&p->nsubs, memory_order_relaxed) == 0)
        return;
    th_pool_event ev = {
        .type = type,
        .time_ms = th__wall_ms(),
        .worker_id = worker,
        .task_id = task,
        .message = message,
        .value = value,
    };
    pthread_mutex_lock(&p->evmu);
    for (int k = 0; k < TH__MAX_POOL_SUBS; k++)
        if (p->subs[k].fn)
            p->subs[k].fn(&ev, p->subs[k].ud);
    pthread_mutex_unlock(&p->evmu);
}

/* ---- accounting --------------------------------------------------------------- */

void th__pool_account(th_pool *p, const th_task *t, int64_t run_ns, int ok, int64_t now_ns)
{
    p->run_ms_sum += (double)run_ns / 1e6;
    p->run_n++;
    int64_t ready = t->run_at > t->created_at ? t->run_at : t->created_at;
    if (t->started_at >= ready) {
        p->wait_ms_sum += (double)(t->started_at - ready);
        p->wait_n++;
    }
    if (ok) {
        p->completed++;
        int64_t sec = now_ns / 1000000000;
        int b = (int)(sec % 10);
        if (p->tp_sec[b] != sec) {
            p->tp_sec[b] = sec;
            p->tp_n[b] = 0;
        }
        p->tp_n[b]++;
    } else {
        p->failed++;
    }
}

void th__pool_finish(th__worker *w, th_task *t, int rc, const char *result, const char *error,
                     int timed_out, int64_t run_ns)
{
    th_pool *p = w->pool;
    th_error err;
    int erc;
    pthread_mutex_lock(&p->mu);
    int stopping_now = p->stopping && p->stop_deadline_ns && th__mono_ns() >= p->stop_deadline_ns;
    pthread_mutex_unlock(&p->mu);
    if (rc == TH_HANDLER_OK) {
        erc = th_engine_complete(p->e, t->id, t->lease, result, &err);
    } else {
        int flags = rc == TH_HANDLER_PERMANENT ? TH_FAIL_PERMANENT : 0;
        if (timed_out)
            flags |= TH_FAIL_TIMEOUT;
        else if (stopping_now)
            flags = TH_FAIL_RELEASE; /* stopped by shutdown: not the task's fault */
        erc = th_engine_fail(p->e, t->id, t->lease, error ? error : "handler failed", flags, &err);
    }
    int ok = rc == TH_HANDLER_OK && erc == 0;
    th__held_drop(w, t->id);
    pthread_mutex_lock(&p->mu);
    if (ok)
        w->completed++;
    else
        w->failed++;
    th__pool_account(p, t, run_ns, ok, th__mono_ns());
    pthread_mutex_unlock(&p->mu);
    if (erc == TH_ESTALE) {
        /* The engine settled the attempt first (its timeout, a lease
         * expiry, or the manager abandoning the worker). */
        th__pool_emit(p, timed_out ? TH_PEV_TASK_TIMEOUT : TH_PEV_WORKER_ERROR, w->id, t->id,
                      err.message, erc);
    } else if (erc != 0) {
        th__pool_emit(p, TH_PEV_ERROR, w->id, t->id, err.message, erc);
    } else if (ok) {
        th__pool_emit(p, TH_PEV_TASK_COMPLETED, w->id, t->id, NULL, 0);
    } else {
        th_task *now = NULL;
        th_task_state st = TH_TASK_FAILED;
        if (th_engine_get(p->e, t->id, &now, NULL) == 0) {
            st = now->state;
            th_task_free(now);
        }
        th_pool_event_type type = st == TH_TASK_CANCELLED ? TH_PEV_TASK_CANCELLED
                                  : timed_out             ? TH_PEV_TASK_TIMEOUT
                                                          : TH_PEV_TASK_FAILED;
        th__pool_emit(p, type, w->id, t->id, error, (int)st);
    }
}

void th__pool_nudge_locked(th_pool *p, int64_t deadline_ns)
{
    if (p->stopping || deadline_ns < p->manager_wake_ns)
        pthread_cond_broadcast(&p->cv);
}

void th__held_set(th__worker *w, th_task *const *tasks, int n)
{
    th_pool *p = w->pool;
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < n && w->nheld < TH__MAX_HELD; i++) {
        th__held *h = &w->held[w->nheld++];
        memcpy(h->id, tasks[i]->id, TH_ID_SIZE);
        h->lease = tasks[i]->lease;
        h->cancel = 0;
    }
    if (!w->next_hb_ns)
        w->next_hb_ns = th__mono_ns() + p->o.lease_ms * 1000000 / 3;
    th__pool_nudge_locked(p, w->next_hb_ns);
    pthread_mutex_unlock(&p->mu);
}

void th__held_drop(th__worker *w, const char *id)
{
    th_pool *p = w->pool;
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < w->nheld; i++) {
        if (strcmp(w->held[i].id, id) == 0) {
            w->held[i] = w->held[--w->nheld];
            break;
        }
    }
    if (!w->nheld)
        w->next_hb_ns = 0;
    pthread_mutex_unlock(&p->mu);
}

static int held_cancelled_locked(const th__worker *w, const char *id)
{
    for (int i = 0; i < w->nheld; i++)
        if (strcmp(w->held[i].id, id) == 0)
            return w->held[i].cancel;
    return 0;
}

int th__held_cancelled(th__worker *w, const char *id)
{
    pthread_mutex_lock(&w->pool->mu);
    int c = held_cancelled_locked(w, id);
    pthread_mutex_unlock(&w->pool->mu);
    return c;
}

void th__pool_release(th__worker *w, th_task *t, const char *why)
{
    th_engine_fail(w->pool->e, t->id, t->lease, why, TH_FAIL_RELEASE, NULL);
    th__held_drop(w, t->id);
}

/* ---- thread workers ------------------------------------------------------------ */

static int hook_progress(void *ud, int percent, int step, int total, const char *message)
{
    th__worker *w = ud;
    th_pool *p = w->pool;
    pthread_mutex_lock(&p->mu);
    int gone = w->abandoned;
    char id[TH_ID_SIZE];
    memcpy(id, w->current, sizeof id);
    uint64_t lease = w->lease;
    pthread_mutex_unlock(&p->mu);
    if (gone)
        return TH_ESTALE;
    int rc = th_engine_progress(p->e, id, lease, percent, step, total, message, NULL);
    if (rc == 0)
        th__pool_emit(p, TH_PEV_TASK_PROGRESS, w->id, id, message, percent);
    return rc;
}

static int hook_log(void *ud, th_log_level level, const char *message, const char *data)
{
    th__worker *w = ud;
    th_pool *p = w->pool;
    pthread_mutex_lock(&p->mu);
    int gone = w->abandoned;
    char id[TH_ID_SIZE];
    memcpy(id, w->current, sizeof id);
    uint64_t lease = w->lease;
    pthread_mutex_unlock(&p->mu);
    return gone ? TH_ESTALE : th_engine_log(p->e, id, lease, level, message, data, NULL);
}

static int64_t task_timeout_ms(const th_pool *p, const th_task *t)
{
    return t->timeout_ms > 0 ? t->timeout_ms : p->o.task_timeout_ms;
}

enum { RUN_DONE = 0, RUN_ABANDONED = 1, RUN_DEFERRED = 2 };

/* Runs one claimed task on this thread. Returns RUN_ABANDONED if the worker
 * was abandoned meanwhile (it must then leave without touching the pool),
 * RUN_DEFERRED when the handler succeeded and `defer` is set: the result
 * (NULL for null) is handed over in *result for a batched completion.
 * *end_ns gets the monotonic time the handler returned. */
static int run_in_thread(th__worker *w, th_task *t, int defer, char **result, int64_t *end_ns)
{
    th_pool *p = w->pool;
    const th__handler *h = th__pool_handler(p, t->queue);
    th__ctx_hooks hooks = {hook_progress, hook_log, w};
    th_ctx ctx;
    int64_t timeout = task_timeout_ms(p, t);
    int64_t t0 = th__mono_ns();
    th__ctx_init(&ctx, t, p->config, p->nconfig, &hooks, timeout, t0);
    pthread_mutex_lock(&p->mu);
    w->state = TH_WORKER_BUSY;
    w->ctx = &ctx;
    memcpy(w->current, t->id, TH_ID_SIZE);
    w->lease = t->lease;
    w->busy_since_ns = t0;
    w->deadline_ns = t0 + (timeout + p->o.timeout_grace_ms) * 1000000;
    /* Past the stop's grace, or cancelled while waiting its turn: stop at
     * once. (During the grace a task runs normally.) */
    if (p->stop_deadline_ns || held_cancelled_locked(w, t->id))
        atomic_store(&ctx.stop, 1);
    th__pool_nudge_locked(p, w->deadline_ns);
    pthread_mutex_unlock(&p->mu);
    th__pool_emit(p, TH_PEV_TASK_ASSIGNED, w->id, t->id, NULL, t->attempt);

    int rc;
    if (h) {
        rc = h->fn(&ctx, h->ud);
        if (rc != TH_HANDLER_OK && rc != TH_HANDLER_RETRY && rc != TH_HANDLER_PERMANENT) {
            th_ctx_set_error(&ctx, "handler %s returned %d, not a TH_HANDLER_* value", h->name, rc);
            rc = TH_HANDLER_PERMANENT;
        }
    } else {
        th_ctx_set_error(&ctx, "no handler for queue %s", t->queue);
        rc = TH_HANDLER_PERMANENT;
    }
    int64_t t1 = th__mono_ns(), run_ns = t1 - t0;
    *end_ns = t1;

    pthread_mutex_lock(&p->mu);
    int abandoned = w->abandoned;
    w->ctx = NULL;
    if (!abandoned) {
        w->state = TH_WORKER_IDLE;
        w->deadline_ns = 0;
        w->ran++;
        w->last_active_ns = t1;
    }
    pthread_mutex_unlock(&p->mu);
    if (!abandoned && defer && rc == TH_HANDLER_OK) {
        pthread_mutex_lock(&p->mu);
        memset(w->current, 0, sizeof w->current);
        w->lease = 0;
        th__pool_nudge_locked(p, INT64_MAX);
        pthread_mutex_unlock(&p->mu);
        *result = ctx.result;
        ctx.result = NULL;
        th__ctx_reset(&ctx);
        return RUN_DEFERRED;
    }
    if (!abandoned) {
        int timed_out = rc != TH_HANDLER_OK && run_ns >= timeout * 1000000;
        th__pool_finish(w, t, rc, ctx.result, ctx.error, timed_out, run_ns);
        pthread_mutex_lock(&p->mu);
        memset(w->current, 0, sizeof w->current);
        w->lease = 0;
        th__pool_nudge_locked(p, INT64_MAX);
        pthread_mutex_unlock(&p->mu);
    }
    th__ctx_reset(&ctx);
    return abandoned ? RUN_ABANDONED : RUN_DONE;
}

/* Successful tasks of a claimed batch, completed together: one engine call
 * (and, on sqlite, one commit) for the lot. */
typedef struct deferred {
    th_completion c[64];
    th_task *t[64];
    char *result[64];
    int n;
    int64_t oldest_ns;
} deferred;

/* How long a finished task may wait for its batch-mates before its
 * completion goes out anyway (its lease is no longer heartbeated). */
#define DEFER_MAX_NS 50000000LL

static void flush_deferred(th__worker *w, deferred *d)
{
    if (!d->n)
        return;
    th_pool *p = w->pool;
    int rc = th_engine_complete_batch(p->e, d->c, (size_t)d->n);
    int64_t now = th__mono_ns();
    for (int i = 0; i < d->n; i++) {
        int ok = rc >= 0 && d->c[i].rc == 0;
        pthread_mutex_lock(&p->mu);
        if (ok)
            w->completed++;
        else
            w->failed++;
        th__pool_account(p, d->t[i], 0, ok, now);
        pthread_mutex_unlock(&p->mu);
        th__held_drop(w, d->t[i]->id);
        th__pool_emit(p, ok ? TH_PEV_TASK_COMPLETED : TH_PEV_WORKER_ERROR, w->id, d->t[i]->id,
                      ok ? NULL : th_strerror(rc < 0 ? rc : d->c[i].rc), 0);
        th__free(d->result[i]);
        th_task_free(d->t[i]);
    }
    d->n = 0;
}

/* Decides, with mu held, whether an idle worker above the minimum retires. */
static int should_retire_idle(th_pool *p, th__worker *w)
{
    if (p->live > p->o.min_workers && w->counted) {
        w->counted = 0;
        p->live--;
        return 1;
    }
    return 0;
}

void th__pool_worker_exit(th__worker *w, const char *why)
{
    th_pool *p = w->pool;
    pthread_mutex_lock(&p->mu);
    if (w->counted) {
        w->counted = 0;
        p->live--;
    }
    w->state = TH_WORKER_TERMINATED;
    w->exited = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    th__pool_emit(p, TH_PEV_WORKER_EXITED, w->id, NULL, why, 0);
}

/* Leaves an abandoned worker: drops its reference on the pool, freeing the
 * pool if th_pool_free already gave up on this thread. */
static void abandoned_exit(th__worker *w)
{
    th_pool *p = w->pool;
    pthread_mutex_lock(&p->mu);
    w->exited = 1;
    int freed = p->freed;
    if (freed) {
        /* th_pool_free detached this thread: it cleans up after itself. */
        for (th__worker **at = &p->workers; *at; at = &(*at)->next) {
            if (*at == w) {
                *at = w->next;
                break;
            }
        }
        p->refs--;
    }
    int last = freed && p->refs == 0;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    if (freed)
        th__free(w);
    if (last) {
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->cv);
        pthread_mutex_destroy(&p->evmu);
        th__free(p);
    }
}

int th__pool_claim(th__worker *w, const char *name, th_task **tasks, const char **why)
{
    th_pool *p = w->pool;
    for (;;) {
        if (th__worker_stopping(w)) {
            *why = "stopped";
            return 0;
        }
        th_claim_options co = {
            .queues = p->queues,
            .nqueues = p->nhandlers,
            .max_tasks = (size_t)p->o.batch,
            .lease_ms = p->o.lease_ms,
            .wait_ms = p->o.worker_idle_timeout_ms,
            .worker = name,
            .stop = &w->stop,
        };
        th_error err;
        int n = th_engine_claim(p->e, &co, tasks, &err);
        if (n > 0)
            return n;
        if (n < 0) {
            th__pool_emit(p, TH_PEV_WORKER_ERROR, w->id, NULL, err.message, n);
            *why = "claim failed";
            return 0;
        }
        pthread_mutex_lock(&p->mu);
        int retire = !th__worker_stopping(w) && should_retire_idle(p, w);
        pthread_mutex_unlock(&p->mu);
        if (retire) {
            *why = "idle timeout";
            return 0;
        }
    }
}

static void *thread_worker_main(void *arg)
{
    th__worker *w = arg;
    th_pool *p = w->pool;
    char name[32];
    snprintf(name, sizeof name, "pool-worker-%d", w->id);
    const char *why = "stopped";
    th_task *tasks[64];
    for (;;) {
        int n = th__pool_claim(w, name, tasks, &why);
        if (n == 0)
            break;
        th__held_set(w, tasks, n);
        deferred d;
        d.n = 0;
        int64_t end_ns = 0;
        for (int i = 0; i < n; i++) {
            if (d.n && end_ns - d.oldest_ns > DEFER_MAX_NS)
                flush_deferred(w, &d);
            if (th__worker_stopping(w)) {
                /* Stopping: what has not started goes back untouched. */
                th__pool_release(w, tasks[i], "pool stopping");
                th_task_free(tasks[i]);
                continue;
            }
            char *result = NULL;
            int r = run_in_thread(w, tasks[i], n > 1, &result, &end_ns);
            if (r == RUN_DEFERRED) {
                if (!d.n)
                    d.oldest_ns = end_ns;
                d.c[d.n] = (th_completion){tasks[i]->id, tasks[i]->lease, result, 0};
                d.t[d.n] = tasks[i];
                d.result[d.n++] = result;
                continue;
            }
            if (r == RUN_ABANDONED) {
                /* Whoever abandoned this worker settled every task it held
                 * (the overrunning one timed out, the others were handed
                 * back), and the engine may be gone by now: touch nothing
                 * but our own memory. */
                for (int k = 0; k < d.n; k++) {
                    th__free(d.result[k]);
                    th_task_free(d.t[k]);
                }
                for (int k = i; k < n; k++)
                    th_task_free(tasks[k]);
                abandoned_exit(w);
                return NULL;
            }
            th_task_free(tasks[i]);
        }
        flush_deferred(w, &d);
        if (p->o.recycle_after && w->ran >= (uint64_t)p->o.recycle_after) {
            /* Replace 1:1 before leaving, so recycling never shrinks the pool. */
            pthread_mutex_lock(&p->mu);
            if (w->counted) { /* hand this worker's place to its replacement */
                w->counted = 0;
                p->live--;
            }
            int id = p->stopping ? 0 : th__pool_spawn_locked(p);
            pthread_mutex_unlock(&p->mu);
            if (id > 0)
                th__pool_emit(p, TH_PEV_WORKER_CREATED, id, NULL, "recycle", 0);
            why = "recycled";
            break;
        }
    }
    th__pool_worker_exit(w, why);
    return NULL;
}

/* ---- spawning -------------------------------------------------------------------- */

int th__pool_spawn_locked(th_pool *p)
{
    th__worker *w = th__calloc(1, sizeof *w);
    if (!w)
        return TH_ENOMEM;
    w->pool = p;
    w->id = ++p->next_id;
    w->state = TH_WORKER_IDLE;
    w->counted = 1;
    w->started_at = w->last_heartbeat_at = th__wall_ms();
    w->to_child = w->from_child = w->wake_fd = -1;
    void *(*body)(void *) =
        p->o.mode == TH_POOL_PROCESSES ? th__proc_worker_main : thread_worker_main;
    if (pthread_create(&w->thread, NULL, body, w) != 0) {
        th__free(w);
        return TH_ENOMEM;
    }
    w->next = p->workers;
    p->workers = w;
    p->live++;
    return w->id;
}

/* Joins and frees workers whose threads have returned (mu held; drops it
 * around the joins). */
static void reap_locked(th_pool *p)
{
    for (th__worker **at = &p->workers; *at;) {
        th__worker *w = *at;
        if (w->exited && !w->abandoned) {
            *at = w->next;
            pthread_mutex_unlock(&p->mu);
            pthread_join(w->thread, NULL);
            th__free(w);
            pthread_mutex_lock(&p->mu);
            at = &p->workers; /* the list may have changed */
        } else {
            at = &w->next;
        }
    }
}

/* ---- the manager ------------------------------------------------------------------ */

typedef struct hb_item {
    int worker;
    char id[TH_ID_SIZE];
    uint64_t lease;
    int overrun;
} hb_item;

static double utilisation_locked(th_pool *p, int *busy_out)
{
    int busy = 0, live = 0;
    for (th__worker *w = p->workers; w; w = w->next) {
        if (!w->counted)
            continue;
        live++;
        busy += w->state == TH_WORKER_BUSY;
    }
    *busy_out = busy;
    return live ? (double)busy / live : 1.0;
}

static int64_t waiting_tasks(th_pool *p)
{
    th_queue_counts *c;
    size_t n;
    if (th_engine_counts(p->e, &c, &n) != 0)
        return 0;
    int64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (!th__pool_handler(p, c[i].queue))
            continue;
        total += c[i].counts[TH_TASK_PENDING] + c[i].counts[TH_TASK_SCHEDULED] +
                 c[i].counts[TH_TASK_BLOCKED];
    }
    th__free(c);
    return total;
}

static void autoscale(th_pool *p, int64_t now)
{
    int64_t waiting = waiting_tasks(p);
    pthread_mutex_lock(&p->mu);
    int busy;
    double u = utilisation_locked(p, &busy);
    int up = 0, down = 0;
    if (p->live < p->o.max_workers && u >= p->o.scale_up_threshold && waiting > 0 &&
        now - p->last_up_ns >= p->o.scale_up_cooldown_ms * 1000000) {
        if (th__pool_spawn_locked(p) > 0) {
            p->last_up_ns = now;
            up = p->live;
        }
    } else if (p->live > p->o.min_workers && u <= p->o.scale_down_threshold &&
               now - p->last_down_ns >= p->o.scale_down_cooldown_ms * 1000000) {
        for (th__worker *w = p->workers; w; w = w->next) {
            if (w->counted && w->state == TH_WORKER_IDLE) {
                w->counted = 0;
                p->live--;
                w->state = TH_WORKER_TERMINATING;
                __atomic_store_n(&w->stop, 1, __ATOMIC_RELEASE);
                p->last_down_ns = now;
                down = p->live;
                break;
            }
        }
    }
    pthread_mutex_unlock(&p->mu);
    if (up) {
        th__pool_emit(p, TH_PEV_WORKER_CREATED, 0, NULL, "scale up", up);
        th__pool_emit(p, TH_PEV_SCALED_UP, 0, NULL, NULL, up);
    }
    if (down) {
        th_engine_wake_claims(p->e);
        th__pool_emit(p, TH_PEV_SCALED_DOWN, 0, NULL, NULL, down);
    }
}

static void sample_cpu(th_pool *p, int64_t now)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    int64_t cpu = (int64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000LL +
                  (int64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000LL;
    struct rusage rc;
    getrusage(RUSAGE_CHILDREN, &rc);
    cpu += (int64_t)(rc.ru_utime.tv_sec + rc.ru_stime.tv_sec) * 1000000000LL +
           (int64_t)(rc.ru_utime.tv_usec + rc.ru_stime.tv_usec) * 1000LL;
    pthread_mutex_lock(&p->mu);
    if (p->cpu_last_wall_ns && now > p->cpu_last_wall_ns) {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        p->cpu_util = (double)(cpu - p->cpu_last_ns) /
                      ((double)(now - p->cpu_last_wall_ns) * (double)(ncpu > 0 ? ncpu : 1));
    }
    p->cpu_last_ns = cpu;
    p->cpu_last_wall_ns = now;
    pthread_mutex_unlock(&p->mu);
}

/* 1 when process `pid` is gone or a zombie (died while idle). Reads
 * /proc rather than waitpid so the owning worker thread still reaps it. */
static int process_dead(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *rp = strrchr(buf, ')');
    return !rp || rp[1] != ' ' || rp[2] == 'Z' || rp[2] == 'X';
}

/* Health check: a process worker whose child died while idle is unhealthy;
 * it is told to stop and the manager's minimum keeps a replacement coming. */
static void health_check(th_pool *p)
{
    int sick[64], n = 0;
    pthread_mutex_lock(&p->mu);
    for (th__worker *w = p->workers; w && n < 64; w = w->next) {
        if (p->o.mode != TH_POOL_PROCESSES || w->exited || w->state != TH_WORKER_IDLE ||
            w->pid <= 0 || !process_dead(w->pid))
            continue;
        w->state = TH_WORKER_UNHEALTHY;
        __atomic_store_n(&w->stop, 1, __ATOMIC_RELEASE);
        sick[n++] = w->id;
    }
    pthread_mutex_unlock(&p->mu);
    if (n)
        th_engine_wake_claims(p->e);
    for (int i = 0; i < n; i++)
        th__pool_emit(p, TH_PEV_WORKER_ERROR, sick[i], NULL,
                      "health check: worker process died while idle", 0);
}

static void *manager_main(void *arg)
{
    th_pool *p = arg;
    int64_t next_health = th__mono_ns() + p->o.health_check_interval_ms * 1000000;
    int64_t next_scale = th__mono_ns() + SCALE_SAMPLE_NS;
    int64_t next_metrics = th__mono_ns() + p->o.metrics_interval_ms * 1000000;
    hb_item items[256];
    pthread_mutex_lock(&p->mu);
    while (!p->manager_stop) {
        int64_t now = th__mono_ns();
        int n = 0, respawn = 0;
        int64_t next = next_scale < next_metrics ? next_scale : next_metrics;
        if (next_health < next)
            next = next_health;
        for (th__worker *w = p->workers; w; w = w->next) {
            if (w->abandoned || w->exited)
                continue;
            int overrun = p->o.mode == TH_POOL_THREADS && w->state == TH_WORKER_BUSY &&
                          w->current[0] && w->deadline_ns && now >= w->deadline_ns;
            if (overrun) {
                /* The handler ignored its timeout: leave the thread to
                 * finish alone and put a fresh worker in its place. The
                 * running task times out; everything else the worker held
                 * goes back to the queue (the thread will not report it). */
                for (int k = 0; k < w->nheld && n < 256; k++, n++) {
                    items[n].worker = w->id;
                    memcpy(items[n].id, w->held[k].id, TH_ID_SIZE);
                    items[n].lease = w->held[k].lease;
                    items[n].overrun = strcmp(w->held[k].id, w->current) == 0 ? 1 : 2;
                }
                w->nheld = 0;
                w->abandoned = 1;
                w->state = TH_WORKER_UNHEALTHY;
                if (w->ctx)
                    atomic_store(&w->ctx->stop, 1);
                if (w->counted) {
                    w->counted = 0;
                    p->live--;
                }
                p->refs++;
                respawn++;
                continue;
            }
            if (w->nheld && now >= w->next_hb_ns) {
                /* Heartbeat every task the worker holds, not only the one
                 * running: batch-mates waiting their turn or their batched
                 * completion must keep their leases too. */
                for (int k = 0; k < w->nheld && n < 256; k++, n++) {
                    items[n].worker = w->id;
                    memcpy(items[n].id, w->held[k].id, TH_ID_SIZE);
                    items[n].lease = w->held[k].lease;
                    items[n].overrun = 0;
                }
                w->next_hb_ns = now + p->o.lease_ms * 1000000 / 3;
            }
            if (w->nheld && w->next_hb_ns < next)
                next = w->next_hb_ns;
            if (p->o.mode == TH_POOL_THREADS && w->state == TH_WORKER_BUSY && w->deadline_ns &&
                w->deadline_ns < next)
                next = w->deadline_ns;
        }
        reap_locked(p);
        /* Keep the minimum: replace workers that exited (recycled, crashed,
         * abandoned), unless stopping. */
        int created = 0, want = p->o.min_workers - p->live;
        if (want < respawn)
            want = respawn; /* an abandoned worker is replaced even above min */
        while (!p->stopping && want-- > 0 && p->live < p->o.max_workers &&
               th__pool_spawn_locked(p) > 0)
            created++;
        pthread_mutex_unlock(&p->mu);

        for (int i = 0; i < created; i++)
            th__pool_emit(p, TH_PEV_WORKER_CREATED, 0, NULL, "replacement", 0);
        for (int i = 0; i < n; i++) {
            th_error err;
            if (items[i].overrun == 2) {
                th_engine_fail(p->e, items[i].id, items[i].lease, "worker abandoned",
                               TH_FAIL_RELEASE, &err);
                continue;
            }
            if (items[i].overrun) {
                char msg[160];
                snprintf(msg, sizeof msg,
                         "handler overran its timeout by more than %lld ms; worker %d "
                         "abandoned",
                         (long long)p->o.timeout_grace_ms, items[i].worker);
                th_engine_fail(p->e, items[i].id, items[i].lease, msg, TH_FAIL_TIMEOUT, &err);
                th__pool_emit(p, TH_PEV_TASK_TIMEOUT, items[i].worker, items[i].id, msg, 0);
                th__pool_emit(p, TH_PEV_WORKER_TERMINATED, items[i].worker, NULL, msg, 0);
                continue;
            }
            int cancel = 0;
            int rc = th_engine_heartbeat(p->e, items[i].id, items[i].lease, 0, &cancel, &err);
            pthread_mutex_lock(&p->mu);
            for (th__worker *w = p->workers; w; w = w->next) {
                if (w->id != items[i].worker)
                    continue;
                w->last_heartbeat_at = th__wall_ms();
                if (!cancel && rc != TH_ESTALE)
                    break;
                /* Cancelled, or the lease is gone: a waiting task is skipped
                 * when its turn comes; a running one is stopped now. */
                for (int k = 0; k < w->nheld; k++)
                    if (strcmp(w->held[k].id, items[i].id) == 0)
                        w->held[k].cancel = 1;
                if (strcmp(w->current, items[i].id) == 0) {
                    if (w->ctx)
                        atomic_store(&w->ctx->stop, 1);
                    atomic_store(&w->cancel, 1);
                    if (w->wake_fd >= 0) {
                        uint64_t one = 1;
                        ssize_t wr = write(w->wake_fd, &one, sizeof one);
                        (void)wr;
                    }
                }
            }
            pthread_mutex_unlock(&p->mu);
            th__pool_emit(p, TH_PEV_WORKER_HEARTBEAT, items[i].worker, items[i].id,
                          rc ? err.message : NULL, cancel);
        }
        now = th__mono_ns();
        if (now >= next_scale) {
            /* With autoscaling off the sample still runs, so this deadline
             * always moves on (a stale one would make the manager spin). */
            if (p->o.autoscale && !p->stopping)
                autoscale(p, now);
            next_scale = now + SCALE_SAMPLE_NS;
        }
        if (now >= next_health) {
            health_check(p);
            next_health = now + p->o.health_check_interval_ms * 1000000;
        }
        if (now >= next_metrics) {
            sample_cpu(p, now);
            th__pool_emit(p, TH_PEV_METRICS_UPDATED, 0, NULL, NULL, 0);
            next_metrics = now + p->o.metrics_interval_ms * 1000000;
        }
        pthread_mutex_lock(&p->mu);
        if (created || p->manager_stop)
            continue;
        int64_t wait = next - th__mono_ns();
        if (wait > 0) {
            p->manager_wake_ns = next;
            struct timespec ts = th__mono_deadline((wait + 999999) / 1000000);
            pthread_cond_timedwait(&p->cv, &p->mu, &ts);
            p->manager_wake_ns = 0;
        }
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Engine events: a cancel request for a task a worker holds stops its
 * handler (or kills its child) now, not at the next heartbeat. Runs on the
 * engine thread that caused the event; lock order evmu -> pool.mu is safe
 * because the pool never holds mu while calling the engine. */
static void on_engine_event(const th_event *ev, void *ud)
{
    th_pool *p = ud;
    if (ev->type != TH_EV_CANCEL_REQUESTED)
        return;
    pthread_mutex_lock(&p->mu);
    for (th__worker *w = p->workers; w; w = w->next) {
        if (w->abandoned || w->exited)
            continue;
        for (int k = 0; k < w->nheld; k++) {
            if (strcmp(w->held[k].id, ev->task_id) != 0)
                continue;
            w->held[k].cancel = 1;
            if (strcmp(w->current, ev->task_id) == 0) {
                if (w->ctx)
                    atomic_store(&w->ctx->stop, 1);
                atomic_store(&w->cancel, 1);
                if (w->wake_fd >= 0) {
                    uint64_t one = 1;
                    ssize_t wr = write(w->wake_fd, &one, sizeof one);
                    (void)wr;
                }
            }
        }
    }
    pthread_mutex_unlock(&p->mu);
}

int th_pool_start(th_pool *p, th_error *err)
{
    if (p->started)
        return th__err(err, TH_ESTATE, NULL, "pool already started");
    if (p->nhandlers == 0)
        return th__err(err, TH_EINVAL, "handlers", "register at least one handler first");
    int64_t now = th__mono_ns();
    int sub = th_engine_subscribe(p->e, on_engine_event, p);
    if (sub < 0)
        return th__err(err, sub, NULL, "cannot subscribe to engine events");
    pthread_mutex_lock(&p->mu);
    p->engine_sub = sub;
    p->started = 1;
    p->last_up_ns = p->last_down_ns = now;
    int rc = 0, n = 0;
    for (int i = 0; i < p->o.min_workers && rc >= 0; i++)
        if ((rc = th__pool_spawn_locked(p)) > 0)
            n++;
    pthread_mutex_unlock(&p->mu);
    if (rc >= 0 && pthread_create(&p->manager, NULL, manager_main, p) == 0)
        p->has_manager = 1;
    if (!p->has_manager) {
        th_pool_stop(p, 0);
        return th__err(err, TH_ENOMEM, NULL, "cannot start workers");
    }
    for (int i = 0; i < n; i++)
        th__pool_emit(p, TH_PEV_WORKER_CREATED, 0, NULL, "start", 0);
    return 0;
}

/* ---- submitting and observing ------------------------------------------------------- */

int th_pool_submit(th_pool *p, const th_task_spec *spec, char id_out[TH_ID_SIZE], th_error *err)
{
    if (!spec)
        return th__err(err, TH_EINVAL, NULL, "task spec is NULL");
    int64_t waiting = waiting_tasks(p);
    if (waiting >= (int64_t)p->o.max_queue) {
        th__pool_emit(p, TH_PEV_BACKPRESSURE, 0, NULL, "queue full", (int)waiting);
        return th__err(err, TH_EBUSY, "queue",
                       "pool queue full: %lld tasks waiting (max_queue %zu)", (long long)waiting,
                       p->o.max_queue);
    }
    th_task_spec s = *spec;
    th_retry_policy def;
    th_retry_policy_init(&def);
    if (s.timeout_ms == 0)
        s.timeout_ms = p->o.task_timeout_ms;
    if (s.retry.max_retries == def.max_retries &&
        s.retry.initial_delay_ms == def.initial_delay_ms) {
        s.retry.max_retries = p->o.max_retries;
        s.retry.initial_delay_ms = p->o.retry_delay_ms;
        if (s.retry.max_delay_ms < s.retry.initial_delay_ms)
            s.retry.max_delay_ms = s.retry.initial_delay_ms;
    }
    int rc = th_engine_submit(p->e, &s, id_out, err);
    if (rc >= 0) {
        th__pool_emit(p, TH_PEV_TASK_SUBMITTED, 0, id_out, NULL, 0);
        if (waiting + 1 >= (int64_t)(p->o.backpressure_threshold * (double)p->o.max_queue))
            th__pool_emit(p, TH_PEV_BACKPRESSURE, 0, NULL, "queue nearly full", (int)waiting + 1);
    }
    return rc;
}

int th_pool_workers(th_pool *p, th_worker_info *out, int max)
{
    int n = 0;
    pthread_mutex_lock(&p->mu);
    for (th__worker *w = p->workers; w; w = w->next) {
        if (w->exited && !w->abandoned)
            continue;
        if (n < max) {
            th_worker_info *i = &out[n];
            memset(i, 0, sizeof *i);
            i->id = w->id;
            i->state = w->state;
            i->pid = (int)w->pid;
            memcpy(i->current_task, w->current, TH_ID_SIZE);
            i->tasks_completed = w->completed;
            i->tasks_failed = w->failed;
            i->healthy = w->state != TH_WORKER_UNHEALTHY;
            i->started_at = w->started_at;
            i->last_heartbeat_at = w->last_heartbeat_at;
            if (w->last_active_ns) {
                int64_t active = th__wall_ms() - (th__mono_ns() - w->last_active_ns) / 1000000;
                if (active > i->last_heartbeat_at)
                    i->last_heartbeat_at = active;
            }
            i->rss_bytes = w->rss;
        }
        n++;
    }
    pthread_mutex_unlock(&p->mu);
    return n;
}

static size_t self_rss(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, rss = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
            rss = 0;
        fclose(f);
    }
    return (size_t)rss * (size_t)sysconf(_SC_PAGESIZE);
}

int th_pool_metrics_get(th_pool *p, th_pool_metrics *m)
{
    memset(m, 0, sizeof *m);
    th_queue_counts *c;
    size_t nq;
    if (th_engine_counts(p->e, &c, &nq) == 0) {
        for (size_t i = 0; i < nq; i++) {
            if (!th__pool_handler(p, c[i].queue))
                continue;
            m->pending_tasks += c[i].counts[TH_TASK_PENDING] + c[i].counts[TH_TASK_SCHEDULED] +
                                c[i].counts[TH_TASK_BLOCKED];
            m->running_tasks += c[i].counts[TH_TASK_RUNNING];
        }
        th__free(c);
    }
    size_t rss = self_rss();
    pthread_mutex_lock(&p->mu);
    for (th__worker *w = p->workers; w; w = w->next) {
        if (w->exited && !w->abandoned)
            continue;
        m->total_workers++;
        if (w->state == TH_WORKER_BUSY)
            m->active_workers++;
        else if (w->state == TH_WORKER_IDLE)
            m->idle_workers++;
        else if (w->state == TH_WORKER_UNHEALTHY)
            m->unhealthy_workers++;
        rss += w->rss;
    }
    m->completed_tasks = (int64_t)p->completed;
    m->failed_tasks = (int64_t)p->failed;
    m->avg_task_duration_ms = p->run_n ? p->run_ms_sum / (double)p->run_n : 0;
    m->avg_queue_time_ms = p->wait_n ? p->wait_ms_sum / (double)p->wait_n : 0;
    int64_t sec = th__mono_ns() / 1000000000;
    uint64_t recent = 0;
    for (int b = 0; b < 10; b++)
        if (p->tp_sec[b] > sec - 10 && p->tp_sec[b] <= sec)
            recent += p->tp_n[b];
    m->throughput_per_s = (double)recent / 10.0;
    m->cpu_utilisation = p->cpu_util;
    int workers = m->total_workers ? m->total_workers : 1;
    m->memory_utilisation = (double)rss / ((double)p->o.worker_memory_limit * workers);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

/* ---- stopping ------------------------------------------------------------------------ */

int th_pool_stop(th_pool *p, int64_t grace_ms)
{
    if (grace_ms < 0)
        grace_ms = 0;
    pthread_mutex_lock(&p->mu);
    if (p->stopping) {
        pthread_mutex_unlock(&p->mu);
        return 0;
    }
    p->stopping = 1;
    int64_t deadline = th__mono_ns() + grace_ms * 1000000;
    for (th__worker *w = p->workers; w; w = w->next)
        __atomic_store_n(&w->stop, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&p->mu);
    th_engine_wake_claims(p->e);

    /* Let running tasks finish until the deadline. */
    pthread_mutex_lock(&p->mu);
    for (;;) {
        int busy = 0;
        for (th__worker *w = p->workers; w; w = w->next)
            busy += !w->exited && !w->abandoned && w->state == TH_WORKER_BUSY;
        if (!busy || th__mono_ns() >= deadline)
            break;
        struct timespec ts = th__mono_deadline((deadline - th__mono_ns() + 999999) / 1000000);
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    /* Past the deadline: ask handlers to stop (processes are killed by their
     * worker threads); their tasks go back to the queue. */
    p->stop_deadline_ns = th__mono_ns();
    for (th__worker *w = p->workers; w; w = w->next) {
        if (w->ctx)
            atomic_store(&w->ctx->stop, 1);
        atomic_store(&w->cancel, 1);
        if (w->wake_fd >= 0) {
            uint64_t one = 1;
            ssize_t wr = write(w->wake_fd, &one, sizeof one);
            (void)wr;
        }
    }
    /* A cooperative handler returns within the grace period; one that
     * doesn't is abandoned and what its worker held is released. Process
     * workers are never abandoned: their child gets SIGKILL after the same
     * grace, so their threads always come back; wait for them. */
    int64_t hard = th__mono_ns() + p->o.timeout_grace_ms * 1000000;
    for (;;) {
        int running = 0, procs = 0;
        for (th__worker *w = p->workers; w; w = w->next) {
            running += !w->exited && !w->abandoned;
            procs += !w->exited && p->o.mode == TH_POOL_PROCESSES;
        }
        if (!running || (!procs && th__mono_ns() >= hard))
            break;
        int64_t until = th__mono_ns() >= hard ? th__mono_ns() + 100000000 : hard;
        struct timespec ts = th__mono_deadline((until - th__mono_ns() + 999999) / 1000000);
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    hb_item stuck[256];
    int nstuck = 0;
    for (th__worker *w = p->workers; w; w = w->next) {
        if (w->exited || w->abandoned)
            continue;
        w->abandoned = 1;
        w->state = TH_WORKER_UNHEALTHY;
        p->refs++;
        for (int k = 0; k < w->nheld && nstuck < 256; k++, nstuck++) {
            memcpy(stuck[nstuck].id, w->held[k].id, TH_ID_SIZE);
            stuck[nstuck].lease = w->held[k].lease;
        }
        w->nheld = 0;
    }
    p->manager_stop = 1;
    int sub = p->engine_sub;
    p->engine_sub = 0;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    if (sub > 0) /* after this returns, on_engine_event is not running */
        th_engine_unsubscribe(p->e, sub);
    for (int i = 0; i < nstuck; i++)
        th_engine_fail(p->e, stuck[i].id, stuck[i].lease, "pool stopped; handler did not return",
                       TH_FAIL_RELEASE, NULL);
    if (p->has_manager) {
        pthread_join(p->manager, NULL);
        p->has_manager = 0;
    }
    pthread_mutex_lock(&p->mu);
    reap_locked(p);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

void th_pool_free(th_pool *p)
{
    if (!p)
        return;
    th_pool_stop(p, 0);
    for (size_t i = 0; i < p->nconfig; i++) {
        th__free(p->config[i].key);
        th__free(p->config[i].value);
    }
    th__free(p->config);
    p->config = NULL;
    p->nconfig = 0;
    pthread_mutex_lock(&p->mu);
    /* Abandoned threads still running keep the pool alive; the last frees it. */
    for (th__worker **at = &p->workers; *at;) {
        th__worker *w = *at;
        if (w->abandoned && w->exited) {
            *at = w->next;
            pthread_join(w->thread, NULL);
            th__free(w);
            p->refs--;
        } else {
            if (w->abandoned)
                pthread_detach(w->thread);
            at = &w->next;
        }
    }
    p->freed = 1;
    int last = --p->refs == 0;
    pthread_mutex_unlock(&p->mu);
    if (last) {
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->cv);
        pthread_mutex_destroy(&p->evmu);
        th__free(p);
    }
}
