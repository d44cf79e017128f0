/*
 * The engine: request validation, blocking claims, the timer thread and event
 * dispatch over a store (store/store.h). The state machine itself lives in
 * the store, so every store runs the same engine.
 *
 * Threads: callers' threads run operations; one timer thread (unless
 * manual_tick) applies deadlines. Nothing polls: a consumer with nothing to
 * claim sleeps on its own condition variable until a store step reports that
 * one of its queues gained a ready task; the timer thread sleeps until the
 * earliest deadline and is kicked when a step creates an earlier one.
 *
 * Locks, in the order they may be taken:
 *   dmu   guards the delivery order: ev_next, pending batches, skips.
 *         Never held while callbacks run.
 *   evmu  (recursive) guards the subscriber table and is held while
 *         callbacks run, so unsubscribe returns only when none is running.
 *         Never held while calling the store.
 *   wmu   guards the waiter list, ready_gen, closing and nclaimers.
 *   tmu   guards the timer's sleep (timer_kick, timer_stop).
 * The store's own lock is taken only inside store calls, with none of these
 * held. dmu and evmu are never held together, nor with wmu or tmu.
 */
#include "taskhive/engine.h"
#include "engine/workers.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/json.h"
#include "core/ulid.h"
#include "store/store.h"

#define MAX_SUBS 64
#define MAX_CLAIM 1000
#define MAX_QUEUES_PER_CLAIM 64
#define MAX_DURATION_MS (30LL * 24 * 3600 * 1000) /* 30 days */
#define MAX_LIST 10000

typedef struct waiter {
    struct waiter *prev, *next;
    pthread_cond_t cv;
    const char *const *queues;
    size_t nqueues;
    int woken;
} waiter;

/* A batch of numbered events waiting for an earlier batch to be delivered. */
typedef struct chunk {
    struct chunk *next;
    uint64_t first, last;
    th__ev *v;
    size_t n;
} chunk;

/* Batches that could not be kept (out of memory) are skipped by number. */
#define MAX_SKIPS 64

typedef struct sub {
    th_event_fn fn;
    void *ud;
    int id;
} sub;

struct th_engine {
    th_store *store;
    th_engine_options opt;
    th_clock clock;
    int64_t started_mono_ns;

    pthread_mutex_t wmu;
    waiter *waiters;
    atomic_uint_fast64_t ready_gen;
    int closing;
    int nclaimers;
    pthread_cond_t drained;

    pthread_t timer;
    int has_timer;
    pthread_mutex_t tmu;
    pthread_cond_t tcv;
    int timer_kick;
    int timer_stop;
    atomic_int_fast64_t timer_next;

    pthread_mutex_t evmu;
    sub subs[MAX_SUBS];
    int next_sub_id;
    atomic_int nsubs;

    _Atomic uint64_t ev_counter; /* last number given to an event */
    pthread_mutex_t dmu;
    uint64_t ev_next; /* the number to deliver next */
    chunk *pending;   /* batches waiting for an earlier one, by number */
    uint64_t skip_first[MAX_SKIPS], skip_last[MAX_SKIPS];
    int nskips;
};

static int64_t system_now(void *ud)
{
    return th__wall_ms();
}

static const th_clock system_clock = {system_now, NULL};

static int64_t now_ms(th_engine *e)
{
    return e->clock.now_ms(e->clock.ud);
}

void th_engine_options_init(th_engine_options *o)
{
    memset(o, 0, sizeof *o);
    o->max_payload_bytes = 1 << 20;
    o->max_result_bytes = 16 << 20;
    o->max_logs_per_task = 10000;
    o->default_lease_ms = 30000;
}

/* ---- publishing what a store step reported ------------------------------ */

static int matches(const waiter *w, const char *queue)
{
    if (!w->nqueues)
        return 1;
    for (size_t i = 0; i < w->nqueues; i++)
        if (strcmp(w->queues[i], queue) == 0)
            return 1;
    return 0;
}

/* Wakes one waiting consumer per task that became ready, choosing a consumer
 * that claims from that task's queue. */
static void wake(th_engine *e, const th__evbuf *ev)
{
    pthread_mutex_lock(&e->wmu);
    atomic_fetch_add(&e->ready_gen, 1);
    if (ev->ready_all) {
        for (waiter *w = e->waiters; w; w = w->next) {
            w->woken = 1;
            pthread_cond_signal(&w->cv);
        }
    } else {
        for (size_t i = 0; i < ev->nready; i++) {
            for (waiter *w = e->waiters; w; w = w->next) {
                if (!w->woken && matches(w, ev->ready[i])) {
                    w->woken = 1;
                    pthread_cond_signal(&w->cv);
                    break;
                }
            }
        }
    }
    pthread_mutex_unlock(&e->wmu);
}

/* Called from a shared store's own thread when another process made tasks
 * of `queue` (NULL: of any queue) ready: wakes every consumer of it, since
 * the notice does not say how many tasks there are. */
static void remote_ready(void *ud, const char *queue)
{
    th_engine *e = ud;
    pthread_mutex_lock(&e->wmu);
    atomic_fetch_add(&e->ready_gen, 1);
    for (waiter *w = e->waiters; w; w = w->next) {
        if (!queue || matches(w, queue)) {
            w->woken = 1;
            pthread_cond_signal(&w->cv);
        }
    }
    pthread_mutex_unlock(&e->wmu);
}

static void publish(th_engine *e, th__evbuf *ev);

/* Called from a shared store's own thread with an event of another
 * process's operation: numbered here and delivered like a local one. */
static void remote_event(void *ud, const th__ev *x)
{
    th_engine *e = ud;
    if (atomic_load(&e->nsubs) == 0)
        return;
    th__evbuf ev;
    th__evbuf_init(&ev, 1, &e->ev_counter);
    th__evbuf_add(&ev, x->type, x->id, x->queue, x->state, x->attempt, x->progress, x->message,
                  x->time_ms);
    publish(e, &ev);
    th__evbuf_free(&ev);
}

static void kick_timer(th_engine *e, int64_t deadline)
{
    int64_t next = atomic_load(&e->timer_next);
    if (!e->has_timer || (next != INT64_MIN && deadline >= next))
        return;
    pthread_mutex_lock(&e->tmu);
    e->timer_kick = 1;
    pthread_cond_signal(&e->tcv);
    pthread_mutex_unlock(&e->tmu);
}

/* Calls every subscriber for events v[0..n), under evmu. */
static void deliver(th_engine *e, const th__ev *v, size_t n)
{
    pthread_mutex_lock(&e->evmu);
    for (size_t i = 0; i < n; i++) {
        const th__ev *x = &v[i];
        th_event out = {
            .seq = x->seq,
            .type = x->type,
            .time_ms = x->time_ms,
            .task_id = x->id,
            .queue = x->queue,
            .state = x->state,
            .attempt = x->attempt,
            .progress = x->progress,
            .message = x->message,
        };
        for (int k = 0; k < MAX_SUBS; k++)
            if (e->subs[k].fn)
                e->subs[k].fn(&out, e->subs[k].ud);
    }
    pthread_mutex_unlock(&e->evmu);
}

static void chunk_free(chunk *c)
{
    for (size_t i = 0; i < c->n; i++)
        th__free(c->v[i].message);
    th__free(c->v);
    th__free(c);
}

/*
 * Delivers the events of one store step in number order across threads.
 * Numbers were given under the store's lock, so they follow the order of the
 * changes. The thread holding the next number delivers its batch and then
 * every deferred batch that follows on; a thread whose batch is not next
 * leaves it in `pending` for that thread and returns at once. No thread
 * waits for another's commit.
 */
static void dispatch(th_engine *e, th__evbuf *ev)
{
    uint64_t first = ev->v[0].seq, last = ev->v[ev->n - 1].seq;
    pthread_mutex_lock(&e->dmu);
    if (first != e->ev_next) {
        chunk *c = th__malloc(sizeof *c);
        if (c) {
            *c = (chunk){.first = first, .last = last, .v = ev->v, .n = ev->n};
            ev->v = NULL;
            ev->n = ev->cap = 0;
            chunk **at = &e->pending;
            while (*at && (*at)->first < first)
                at = &(*at)->next;
            c->next = *at;
            *at = c;
        } else if (e->nskips < MAX_SKIPS) {
            e->skip_first[e->nskips] = first;
            e->skip_last[e->nskips++] = last;
        }
        pthread_mutex_unlock(&e->dmu);
        return;
    }
    pthread_mutex_unlock(&e->dmu);
    deliver(e, ev->v, ev->n);
    pthread_mutex_lock(&e->dmu);
    e->ev_next = last + 1;
    for (;;) {
        chunk *c = e->pending;
        if (c && c->first == e->ev_next) {
            e->pending = c->next;
            pthread_mutex_unlock(&e->dmu);
            deliver(e, c->v, c->n);
            pthread_mutex_lock(&e->dmu);
            e->ev_next = c->last + 1;
            chunk_free(c);
            continue;
        }
        int k = 0;
        while (k < e->nskips && e->skip_first[k] != e->ev_next)
            k++;
        if (k == e->nskips)
            break;
        e->ev_next = e->skip_last[k] + 1;
        e->skip_first[k] = e->skip_first[--e->nskips];
        e->skip_last[k] = e->skip_last[e->nskips];
    }
    pthread_mutex_unlock(&e->dmu);
}

static void publish(th_engine *e, th__evbuf *ev)
{
    if (ev->nready || ev->ready_all)
        wake(e, ev);
    if (ev->deadline != INT64_MAX)
        kick_timer(e, ev->deadline);
    if (ev->n)
        dispatch(e, ev);
    th__evbuf_reset(ev);
}

static void evbuf_begin(th_engine *e, th__evbuf *ev)
{
    th__evbuf_init(ev, atomic_load(&e->nsubs) > 0, &e->ev_counter);
}

/* ---- the timer --------------------------------------------------------- */

static void *timer_main(void *arg)
{
    th_engine *e = arg;
    th__evbuf ev;
    evbuf_begin(e, &ev);
    for (;;) {
        int64_t next = INT64_MAX;
        ev.record = atomic_load(&e->nsubs) > 0;
        int64_t now = now_ms(e);
        /* Until this tick's next deadline is known, any new deadline kicks. */
        atomic_store(&e->timer_next, INT64_MIN);
        e->store->ops->tick(e->store, now, &next, &ev);
        publish(e, &ev);
        pthread_mutex_lock(&e->tmu);
        atomic_store(&e->timer_next, next);
        if (!e->timer_kick && !e->timer_stop) {
            int64_t wait = next == INT64_MAX ? 60000 : next - now_ms(e);
            if (wait > 60000)
                wait = 60000;
            /* A shared store also changes under other processes. */
            if (e->store->ops->poll_ms > 0 && wait > e->store->ops->poll_ms)
                wait = e->store->ops->poll_ms;
            if (wait > 0) {
                struct timespec ts = th__mono_deadline(wait);
                pthread_cond_timedwait(&e->tcv, &e->tmu, &ts);
            }
        }
        e->timer_kick = 0;
        int stop = e->timer_stop;
        pthread_mutex_unlock(&e->tmu);
        if (stop)
            break;
    }
    th__evbuf_free(&ev);
    return NULL;
}

/* ---- lifecycle ---------------------------------------------------------- */

th_engine *th_engine_new(th_store *store, const th_engine_options *opts, th_error *err)
{
    th_engine_options defaults;
    if (!store) {
        th__err(err, TH_EINVAL, "store", "store is NULL");
        return NULL;
    }
    if (!opts) {
        th_engine_options_init(&defaults);
        opts = &defaults;
    }
    if (opts->default_lease_ms <= 0 || opts->default_lease_ms > MAX_DURATION_MS) {
        th__err(err, TH_EINVAL, "default_lease_ms", "default_lease_ms must be in 1..30 days");
        goto fail;
    }
    if (opts->max_payload_bytes == 0 || opts->max_result_bytes == 0) {
        th__err(err, TH_EINVAL, opts->max_payload_bytes ? "max_result_bytes" : "max_payload_bytes",
                "size limits must be positive");
        goto fail;
    }
    th_engine *e = th__calloc(1, sizeof *e);
    if (!e) {
        th__err(err, TH_ENOMEM, NULL, "out of memory");
        goto fail;
    }
    e->store = store;
    e->opt = *opts;
    e->clock = opts->clock ? *opts->clock : system_clock;
    e->started_mono_ns = th__mono_ns();
    pthread_mutex_init(&e->wmu, NULL);
    pthread_cond_init(&e->drained, NULL);
    pthread_mutex_init(&e->tmu, NULL);
    th__cond_init_mono(&e->tcv);
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&e->evmu, &ma);
    pthread_mutexattr_destroy(&ma);
    pthread_mutex_init(&e->dmu, NULL);
    e->ev_next = 1;
    atomic_store(&e->timer_next, INT64_MAX);
    th__store_config cfg = {
        .max_queued = opts->max_queued,
        .max_logs_per_task = opts->max_logs_per_task,
        .seed = opts->seed,
    };
    store->ops->configure(store, &cfg);
    if (store->ops->set_hooks) {
        th__store_hooks hooks = {remote_ready, remote_event, e};
        store->ops->set_hooks(store, &hooks);
    }
    if (!opts->manual_tick) {
        if (pthread_create(&e->timer, NULL, timer_main, e) != 0) {
            th__err(err, TH_ENOMEM, NULL, "cannot start the timer thread");
            e->store = NULL;
            th_engine_free(e);
            goto fail;
        }
        e->has_timer = 1;
    }
    return e;
fail:
    th_store_free(store);
    return NULL;
}

void th_engine_free(th_engine *e)
{
    if (!e)
        return;
    pthread_mutex_lock(&e->wmu);
    e->closing = 1;
    for (waiter *w = e->waiters; w; w = w->next)
        pthread_cond_signal(&w->cv);
    while (e->nclaimers > 0)
        pthread_cond_wait(&e->drained, &e->wmu);
    pthread_mutex_unlock(&e->wmu);
    if (e->has_timer) {
        pthread_mutex_lock(&e->tmu);
        e->timer_stop = 1;
        pthread_cond_signal(&e->tcv);
        pthread_mutex_unlock(&e->tmu);
        pthread_join(e->timer, NULL);
    }
    if (e->store) {
        e->store->ops->flush(e->store);
        e->store->ops->free(e->store);
    }
    pthread_mutex_destroy(&e->wmu);
    pthread_cond_destroy(&e->drained);
    pthread_mutex_destroy(&e->tmu);
    pthread_cond_destroy(&e->tcv);
    pthread_mutex_destroy(&e->evmu);
    pthread_mutex_destroy(&e->dmu);
    while (e->pending) {
        chunk *c = e->pending;
        e->pending = c->next;
        chunk_free(c);
    }
    th__free(e);
}

/* ---- validation --------------------------------------------------------- */

static int valid_queue_name(const char *q)
{
    size_t n = q ? strlen(q) : 0;
    if (n == 0 || n > TH_QUEUE_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = q[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '.' || ch == ':' || ch == '-'))
            return 0;
    }
    return 1;
}

static int check_queue(const char *q, const char *field, th_error *err)
{
    if (!valid_queue_name(q))
        return th__err(err, TH_EINVAL, field, "%s must be 1-%d characters of A-Z a-z 0-9 _ . : -",
                       field, TH_QUEUE_NAME_MAX);
    return 0;
}

static int check_duration(int64_t v, const char *field, th_error *err)
{
    if (v < 0 || v > MAX_DURATION_MS)
        return th__err(err, TH_EINVAL, field, "%s must be between 0 and 30 days in ms", field);
    return 0;
}

static int check_retry(const th_retry_policy *p, th_error *err)
{
    if (p->max_retries < 0 || p->max_retries > 1000)
        return th__err(err, TH_EINVAL, "retry.max_retries", "retry.max_retries must be 0..1000");
    int rc;
    if ((rc = check_duration(p->initial_delay_ms, "retry.initial_delay_ms", err)) ||
        (rc = check_duration(p->max_delay_ms, "retry.max_delay_ms", err)))
        return rc;
    if (p->max_delay_ms < p->initial_delay_ms)
        return th__err(err, TH_EINVAL, "retry.max_delay_ms",
                       "retry.max_delay_ms must be >= retry.initial_delay_ms");
    if (!(p->multiplier >= 1.0 && p->multiplier <= 100.0))
        return th__err(err, TH_EINVAL, "retry.multiplier", "retry.multiplier must be 1..100");
    if (!(p->jitter >= 0.0 && p->jitter <= 1.0))
        return th__err(err, TH_EINVAL, "retry.jitter", "retry.jitter must be 0..1");
    return 0;
}

static int check_spec(th_engine *e, const th_task_spec *s, size_t index, int64_t now,
                      int64_t *run_at, th_error *err)
{
    int rc;
    if (!s)
        return th__err(err, TH_EINVAL, NULL, "task spec is NULL");
    if ((rc = check_queue(s->queue, "queue", err)))
        return rc;
    if (s->payload &&
        (rc = th__json_check(s->payload, e->opt.max_payload_bytes, TH_JSON_ANY, "payload", err)))
        return rc;
    if (s->metadata && (rc = th__json_check(s->metadata, e->opt.max_payload_bytes, TH_JSON_OBJECT,
                                            "metadata", err)))
        return rc;
    if (s->priority < TH_PRIORITY_MIN || s->priority > TH_PRIORITY_MAX)
        return th__err(err, TH_EINVAL, "priority", "priority must be %d..%d", TH_PRIORITY_MIN,
                       TH_PRIORITY_MAX);
    if (s->run_at_ms < 0)
        return th__err(err, TH_EINVAL, "run_at", "run_at must not be negative");
    if (s->run_at_ms && s->delay_ms)
        return th__err(err, TH_EINVAL, "delay_ms", "set run_at or delay_ms, not both");
    if ((rc = check_duration(s->delay_ms, "delay_ms", err)) ||
        (rc = check_duration(s->timeout_ms, "timeout_ms", err)))
        return rc;
    if (s->expires_at_ms < 0)
        return th__err(err, TH_EINVAL, "expires_at", "expires_at must not be negative");
    if ((rc = check_retry(&s->retry, err)))
        return rc;
    if (s->ndeps > TH_MAX_DEPS)
        return th__err(err, TH_EINVAL, "deps", "at most %d dependencies", TH_MAX_DEPS);
    if (s->ndeps && !s->deps)
        return th__err(err, TH_EINVAL, "deps", "deps is NULL but ndeps is %zu", s->ndeps);
    for (size_t i = 0; i < s->ndeps; i++) {
        char field[32];
        snprintf(field, sizeof field, "deps[%zu]", i);
        const char *d = s->deps[i];
        if (d && d[0] == '$') {
            char *end;
            errno = 0;
            unsigned long j = strtoul(d + 1, &end, 10);
            if (d[1] < '0' || d[1] > '9' || *end || errno || j >= index)
                return th__err(err, TH_EINVAL, field,
                               "%s: \"$N\" must name an earlier item of the same batch", field);
        } else if (!th__ulid_valid(d)) {
            return th__err(err, TH_EINVAL, field, "%s is not a task id", field);
        }
    }
    if (s->unique_key && (!*s->unique_key || strlen(s->unique_key) > TH_UNIQUE_KEY_MAX))
        return th__err(err, TH_EINVAL, "unique_key", "unique_key must be 1..%d bytes",
                       TH_UNIQUE_KEY_MAX);
    *run_at = s->run_at_ms ? s->run_at_ms : now + s->delay_ms;
    return 0;
}

static int check_id(const char *id, th_error *err)
{
    if (!th__ulid_valid(id))
        return th__err(err, TH_EINVAL, "id", "not a task id: %.40s", id ? id : "(null)");
    return 0;
}

static int check_message(const char *m, const char *field, th_error *err)
{
    if (m && strlen(m) > TH_MESSAGE_MAX)
        return th__err(err, TH_ETOOBIG, field, "%s is longer than %d bytes", field, TH_MESSAGE_MAX);
    return 0;
}

/* Names the store's bare code for the caller when the store gave no detail. */
static int store_err(int rc, const char *id, th_error *err)
{
    switch (rc) {
    case TH_ENOTFOUND:
        return th__err(err, rc, "id", "task %s does not exist", id);
    case TH_ESTALE:
        return th__err(err, rc, "lease",
                       "task %s is not running under this lease (expired, finished, or "
                       "claimed again)",
                       id);
    case TH_ESTATE:
        return th__err(err, rc, "state", "task %s is already finished", id);
    default:
        return th__err(err, rc, NULL, "%s", th_strerror(rc));
    }
}

/* ---- submitting ---------------------------------------------------------- */

int th_engine_submit_batch(th_engine *e, const th_task_spec *specs, size_t n,
                           char (*ids_out)[TH_ID_SIZE], th_error *err)
{
    th__err_clear(err);
    if (n == 0)
        return 0;
    if (!specs || !ids_out)
        return th__err(err, TH_EINVAL, "tasks", "tasks is NULL");
    int64_t now = now_ms(e);
    th__submit local[8], *items = local;
    if (n > 8 && !(items = th__calloc(n, sizeof *items)))
        return th__err(err, TH_ENOMEM, NULL, "out of memory");
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        items[i].spec = &specs[i];
        if ((rc = check_spec(e, &specs[i], i, now, &items[i].run_at, err))) {
            if (n > 1) {
                char prefix[32];
                snprintf(prefix, sizeof prefix, "tasks[%zu]", i);
                th__err_prefix(err, prefix);
            }
            goto out;
        }
    }
    th__evbuf ev;
    evbuf_begin(e, &ev);
    rc = e->store->ops->submit(e->store, items, n, now, &ev, err);
    if (rc == 0) {
        for (size_t i = 0; i < n; i++)
            memcpy(ids_out[i], items[i].id, TH_ID_SIZE);
        rc = n == 1 && items[0].deduplicated;
    }
    publish(e, &ev);
    th__evbuf_free(&ev);
out:
    if (items != local)
        th__free(items);
    return rc;
}

int th_engine_submit(th_engine *e, const th_task_spec *spec, char id_out[TH_ID_SIZE], th_error *err)
{
    char ids[1][TH_ID_SIZE];
    int rc = th_engine_submit_batch(e, spec, 1, ids, err);
    if (rc >= 0)
        memcpy(id_out, ids[0], TH_ID_SIZE);
    return rc;
}

/* ---- claiming ------------------------------------------------------------ */

static int check_claim(th_engine *e, const th_claim_options *o, th_error *err)
{
    if (!o)
        return th__err(err, TH_EINVAL, NULL, "claim options are NULL");
    if (o->max_tasks < 1 || o->max_tasks > MAX_CLAIM)
        return th__err(err, TH_EINVAL, "max_tasks", "max_tasks must be 1..%d", MAX_CLAIM);
    if (o->nqueues > MAX_QUEUES_PER_CLAIM || (o->nqueues && !o->queues))
        return th__err(err, TH_EINVAL, "queues", "queues must list 0..%d names",
                       MAX_QUEUES_PER_CLAIM);
    for (size_t i = 0; i < o->nqueues; i++) {
        char field[32];
        snprintf(field, sizeof field, "queues[%zu]", i);
        int rc = check_queue(o->queues[i], field, err);
        if (rc)
            return rc;
    }
    if (o->lease_ms < 0 || o->lease_ms > MAX_DURATION_MS)
        return th__err(err, TH_EINVAL, "lease_ms", "lease_ms must be 0..30 days");
    if (o->wait_ms < -1)
        return th__err(err, TH_EINVAL, "wait_ms", "wait_ms must be -1, 0 or positive");
    if (o->worker && strlen(o->worker) > 256)
        return th__err(err, TH_EINVAL, "worker", "worker name is longer than 256 bytes");
    return 0;
}

int th_engine_claim(th_engine *e, const th_claim_options *o, th_task **out, th_error *err)
{
    th__err_clear(err);
    int rc = check_claim(e, o, err);
    if (rc)
        return rc;
    th__claim cl = {
        .queues = o->queues,
        .nqueues = o->nqueues,
        .max_tasks = o->max_tasks,
        .lease_ms = o->lease_ms ? o->lease_ms : e->opt.default_lease_ms,
        .worker = o->worker,
    };
    int64_t deadline = o->wait_ms > 0 ? th__mono_ns() + o->wait_ms * 1000000 : 0;
    pthread_mutex_lock(&e->wmu);
    if (e->closing) {
        pthread_mutex_unlock(&e->wmu);
        return th__err(err, TH_ECLOSED, NULL, "engine is shutting down");
    }
    e->nclaimers++;
    pthread_mutex_unlock(&e->wmu);

    th__evbuf ev;
    evbuf_begin(e, &ev);
    waiter w = {.queues = o->queues, .nqueues = o->nqueues};
    int have_cv = 0;
    for (int last = 0;;) {
        uint64_t gen = atomic_load(&e->ready_gen);
        ev.record = atomic_load(&e->nsubs) > 0;
        rc = e->store->ops->claim(e->store, &cl, now_ms(e), out, &ev);
        publish(e, &ev);
        if (rc != 0 || o->wait_ms == 0 || last)
            break;
        pthread_mutex_lock(&e->wmu);
        if (e->closing) {
            pthread_mutex_unlock(&e->wmu);
            rc = th__err(err, TH_ECLOSED, NULL, "engine is shutting down");
            break;
        }
        if (atomic_load(&e->ready_gen) != gen) {
            pthread_mutex_unlock(&e->wmu);
            continue;
        }
        if (o->stop && __atomic_load_n(o->stop, __ATOMIC_ACQUIRE)) {
            pthread_mutex_unlock(&e->wmu);
            break; /* rc is 0: nothing claimed */
        }
        if (!have_cv) {
            th__cond_init_mono(&w.cv);
            have_cv = 1;
        }
        w.woken = 0;
        w.prev = NULL;
        w.next = e->waiters;
        if (e->waiters)
            e->waiters->prev = &w;
        e->waiters = &w;
        int64_t poll = e->store->ops->poll_ms; /* a lost notice costs latency only */
        if (o->wait_ms < 0 && poll <= 0) {
            pthread_cond_wait(&w.cv, &e->wmu);
        } else if (o->wait_ms < 0) {
            struct timespec ts = th__mono_deadline(poll);
            pthread_cond_timedwait(&w.cv, &e->wmu, &ts);
        } else {
            int64_t left = deadline - th__mono_ns();
            if (poll > 0 && left > poll * 1000000)
                left = poll * 1000000;
            if (left > 0) {
                struct timespec ts = th__mono_deadline((left + 999999) / 1000000);
                pthread_cond_timedwait(&w.cv, &e->wmu, &ts);
            }
            if (th__mono_ns() >= deadline)
                last = 1; /* one more look, then give up */
        }
        if (w.prev)
            w.prev->next = w.next;
        else
            e->waiters = w.next;
        if (w.next)
            w.next->prev = w.prev;
        pthread_mutex_unlock(&e->wmu);
    }
    th__evbuf_free(&ev);
    if (have_cv)
        pthread_cond_destroy(&w.cv);
    pthread_mutex_lock(&e->wmu);
    if (--e->nclaimers == 0 && e->closing)
        pthread_cond_broadcast(&e->drained);
    pthread_mutex_unlock(&e->wmu);
    if (rc < 0 && (!err || err->code == 0))
        th__err(err, rc, NULL, "claim failed: %s", th_strerror(rc));
    return rc;
}

void th_engine_wake_claims(th_engine *e)
{
    /* Taking wmu orders this after any claimer's check of its stop flag. */
    pthread_mutex_lock(&e->wmu);
    for (waiter *w = e->waiters; w; w = w->next)
        pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&e->wmu);
}

/* ---- working ------------------------------------------------------------- */

int th_engine_heartbeat(th_engine *e, const char *id, uint64_t lease, int64_t extend_ms,
                        int *cancel_requested, th_error *err)
{
    th__err_clear(err);
    int rc = check_id(id, err);
    if (rc)
        return rc;
    if (extend_ms < 0 || extend_ms > MAX_DURATION_MS)
        return th__err(err, TH_EINVAL, "extend_ms", "extend_ms must be 0..30 days");
    th__evbuf ev;
    evbuf_begin(e, &ev);
    rc = e->store->ops->heartbeat(e->store, id, lease, extend_ms, now_ms(e), cancel_requested, &ev);
    publish(e, &ev);
    th__evbuf_free(&ev);
    return rc ? store_err(rc, id, err) : 0;
}

int th_engine_progress(th_engine *e, const char *id, uint64_t lease, int percent, int step,
                       int total_steps, const char *message, th_error *err)
{
    th__err_clear(err);
    int rc = check_id(id, err);
    if (rc)
        return rc;
    if (percent < 0 || percent > 100)
        return th__err(err, TH_EINVAL, "percent", "percent must be 0..100");
    if (step < 0 || total_steps < 0 || step > total_steps)
        return th__err(err, TH_EINVAL, "step", "step must be 0..total_steps");
    if ((rc = check_message(message, "message", err)))
        return rc;
    th__evbuf ev;
    evbuf_begin(e, &ev);
    rc = e->store->ops->progress(e->store, id, lease, percent, step, total_steps, message,
                                 now_ms(e), &ev);
    publish(e, &ev);
    th__evbuf_free(&ev);
    return rc ? store_err(rc, id, err) : 0;
}

int th_engine_log(th_engine *e, const char *id, uint64_t lease, th_log_level level,
                  const char *message, const char *data, th_error *err)
{
    th__err_clear(err);
    int rc = check_id(id, err);
    if (rc)
        return rc;
    if ((unsigned)level > TH_LOG_ERROR)
        return th__err(err, TH_EINVAL, "level", "level must be debug, info, warn or error");
    if (!message)
        return th__err(err, TH_EINVAL, "message", "message is required");
    if ((rc = check_message(message, "message", err)))
        return rc;
    if (data && (rc = th__json_check(data, e->opt.max_payload_bytes, TH_JSON_ANY, "data", err)))
        return rc;
    rc = e->store->ops->log(e->store, id, lease, level, message, data, now_ms(e));
    return rc ? store_err(rc, id, err) : 0;
}

int th_engine_complete_batch(th_engine *e, th_completion *items, size_t n)
{
    if (!items && n)
        return TH_EINVAL;
    /* Items that fail validation are marked and skipped by the store. */
    th_completion local[16], *valid = local;
    size_t *map = NULL, nv = 0;
    if (n > 16 && (!(valid = th__malloc(n * sizeof *valid))))
        return TH_ENOMEM;
    if (!(map = th__malloc((n ? n : 1) * sizeof *map))) {
        if (valid != local)
            th__free(valid);
        return TH_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        items[i].rc = check_id(items[i].id, NULL);
        if (!items[i].rc && items[i].result)
            items[i].rc = th__json_check(items[i].result, e->opt.max_result_bytes, TH_JSON_ANY,
                                         "result", NULL);
        if (!items[i].rc) {
            map[nv] = i;
            valid[nv++] = items[i];
        }
    }
    int ok = 0;
    if (nv) {
        th__evbuf ev;
        evbuf_begin(e, &ev);
        ok = e->store->ops->complete(e->store, valid, nv, now_ms(e), &ev);
        publish(e, &ev);
        th__evbuf_free(&ev);
        for (size_t k = 0; k < nv; k++)
            items[map[k]].rc = ok < 0 ? ok : valid[k].rc;
    }
    th__free(map);
    if (valid != local)
        th__free(valid);
    return ok;
}

int th_engine_complete(th_engine *e, const char *id, uint64_t lease, const char *result,
                       th_error *err)
{
    th__err_clear(err);
    int rc = check_id(id, err);
    if (rc)
        return rc;
    if (result &&
        (rc = th__json_check(result, e->opt.max_result_bytes, TH_JSON_ANY, "result", err)))
        return rc;
    th_completion c = {.id = id, .lease = lease, .result = result};
    rc = th_engine_complete_batch(e, &c, 1);
    if (rc < 0)
        return store_err(rc, id, err);
    return c.rc ? store_err(c.rc, id, err) : 0;
}

int th_engine_fail(th_engine *e, const char *id, uint64_t lease, const char *message, int flags,
                   th_error *err)
{
    th__err_clear(err);
    int rc = check_id(id, err);
    if (rc)
        return rc;
    if (flags & ~(TH_FAIL_PERMANENT | TH_FAIL_TIMEOUT | TH_FAIL_RELEASE))
        return th__err(err, TH_EINVAL, "flags", "unknown flags 0x%x", (unsigned)flags);
    if ((rc = check_message(message, "message", err)))
        return rc;
    th__evbuf ev;
    evbuf_begin(e, &ev);
    rc = e->store->ops->fail(e->store, id, lease, message, flags, now_ms(e), &ev);
    publish(e, &ev);
    th__evbuf_free(&ev);
    return rc ? store_err(rc, id, err) : 0;
}

/* ---- managing ------------------------------------------------------------ */

int th_engine_cancel(th_engine *e, const char *id, const char *reason, th_error *err)
{
    th__err_clear(err);
    int rc = check_id(id, err);
    if (rc || (rc = check_message(reason, "reason", err)))
        return rc;
    th__evbuf ev;
    evbuf_begin(e, &ev);
    rc = e->store->ops->cancel(e->store, id, reason, now_ms(e), &ev);
    publish(e, &ev);
    th__evbuf_free(&ev);
    return rc < 0 ? store_err(rc, id, err) : rc;
}

int th_engine_retry(th_engine *e, const char *id, th_error *err)
{
    th__err_clear(err);
    int rc = check_id(id, err);
    if (rc)
        return rc;
    th__evbuf ev;
    evbuf_begin(e, &ev);
    rc = e->store->ops->retry(e->store, id, now_ms(e), &ev, err);
    publish(e, &ev);
    th__evbuf_free(&ev);
    return rc;
}

int th_engine_get(th_engine *e, const char *id, th_task **out, th_error *err)
{
    th__err_clear(err);
    int rc = check_id(id, err);
    if (rc)
        return rc;
    rc = e->store->ops->get(e->store, id, out);
    return rc ? store_err(rc, id, err) : 0;
}

int th_engine_list(th_engine *e, const th_list_filter *f, th_task ***out, size_t *n, th_error *err)
{
    th__err_clear(err);
    if (!f || !out || !n)
        return th__err(err, TH_EINVAL, NULL, "filter and outputs are required");
    if (f->limit < 1 || f->limit > MAX_LIST)
        return th__err(err, TH_EINVAL, "limit", "limit must be 1..%d", MAX_LIST);
    if (f->queue && check_queue(f->queue, "queue", err))
        return TH_EINVAL;
    if (f->state < -1 || f->state >= TH_TASK_NSTATES)
        return th__err(err, TH_EINVAL, "state", "unknown state %d", f->state);
    if (f->after_id && !th__ulid_valid(f->after_id))
        return th__err(err, TH_EINVAL, "after", "after must be a task id");
    int rc = e->store->ops->list(e->store, f, out, n);
    return rc ? th__err(err, rc, NULL, "%s", th_strerror(rc)) : 0;
}

int th_engine_logs(th_engine *e, const char *id, int64_t after_seq, size_t limit,
                   th_log_entry **out, size_t *n, th_error *err)
{
    th__err_clear(err);
    int rc = check_id(id, err);
    if (rc)
        return rc;
    if (after_seq < 0)
        return th__err(err, TH_EINVAL, "after", "after must not be negative");
    rc = e->store->ops->logs(e->store, id, after_seq, limit, out, n);
    return rc ? store_err(rc, id, err) : 0;
}

int th_engine_counts(th_engine *e, th_queue_counts **out, size_t *n)
{
    return e->store->ops->counts(e->store, out, n);
}

int th_engine_prune(th_engine *e, int64_t finished_before_ms)
{
    return e->store->ops->prune(e->store, finished_before_ms, now_ms(e));
}

int th_engine_queue_pause(th_engine *e, const char *queue, int paused, th_error *err)
{
    th__err_clear(err);
    int rc = check_queue(queue, "queue", err);
    if (rc)
        return rc;
    th__evbuf ev;
    evbuf_begin(e, &ev);
    rc = e->store->ops->queue_pause(e->store, queue, paused, &ev);
    publish(e, &ev);
    th__evbuf_free(&ev);
    return rc ? th__err(err, rc, NULL, "%s", th_strerror(rc)) : 0;
}

int th_engine_queue_purge(th_engine *e, const char *queue, const char *reason, th_error *err)
{
    th__err_clear(err);
    int rc = check_queue(queue, "queue", err);
    if (rc || (rc = check_message(reason, "reason", err)))
        return rc;
    th__evbuf ev;
    evbuf_begin(e, &ev);
    rc = e->store->ops->queue_purge(e->store, queue, reason, now_ms(e), &ev);
    publish(e, &ev);
    th__evbuf_free(&ev);
    return rc < 0 ? th__err(err, rc, NULL, "%s", th_strerror(rc)) : rc;
}

int th_engine_tick(th_engine *e)
{
    th__evbuf ev;
    evbuf_begin(e, &ev);
    int64_t next;
    int n = e->store->ops->tick(e->store, now_ms(e), &next, &ev);
    publish(e, &ev);
    th__evbuf_free(&ev);
    return n;
}

int th_engine_flush(th_engine *e)
{
    return e->store->ops->flush(e->store);
}

/* ---- observing ------------------------------------------------------------ */

static const char *const ev_names[TH_EV_NTYPES] = {
    "submitted", "ready",    "assigned", "started",   "progress",         "completed",
    "failed",    "retrying", "timeout",  "cancelled", "cancel_requested", "expired",
};

const char *th_event_type_name(th_event_type t)
{
    return (unsigned)t < TH_EV_NTYPES ? ev_names[t] : "unknown";
}

int th_engine_subscribe(th_engine *e, th_event_fn fn, void *ud)
{
    if (!fn)
        return TH_EINVAL;
    int id = TH_EBUSY;
    pthread_mutex_lock(&e->evmu);
    for (int k = 0; k < MAX_SUBS; k++) {
        if (!e->subs[k].fn) {
            e->subs[k] = (sub){fn, ud, ++e->next_sub_id};
            id = e->subs[k].id;
            atomic_fetch_add(&e->nsubs, 1);
            break;
        }
    }
    pthread_mutex_unlock(&e->evmu);
    return id;
}

int th_engine_unsubscribe(th_engine *e, int id)
{
    int rc = TH_ENOTFOUND;
    pthread_mutex_lock(&e->evmu);
    for (int k = 0; k < MAX_SUBS; k++) {
        if (e->subs[k].fn && e->subs[k].id == id) {
            e->subs[k].fn = NULL;
            atomic_fetch_sub(&e->nsubs, 1);
            rc = 0;
            break;
        }
    }
    pthread_mutex_unlock(&e->evmu);
    return rc;
}

int th_engine_metrics_get(th_engine *e, th_engine_metrics *m)
{
    th__store_stats st;
    int rc = e->store->ops->stats(e->store, now_ms(e), &st);
    if (rc)
        return rc;
    memset(m, 0, sizeof *m);
    memcpy(m->counts, st.counts, sizeof m->counts);
    m->submitted_total = st.submitted_total;
    m->completed_total = st.completed_total;
    m->failed_attempts_total = st.failed_attempts_total;
    m->retries_total = st.retries_total;
    m->avg_run_ms = st.run_n ? st.run_ms_sum / (double)st.run_n : 0;
    m->avg_wait_ms = st.wait_n ? st.wait_ms_sum / (double)st.wait_n : 0;
    m->uptime_ms = (th__mono_ns() - e->started_mono_ns) / 1000000;
    double window =
        m->uptime_ms < 10000 ? (double)(m->uptime_ms > 1000 ? m->uptime_ms : 1000) / 1000.0 : 10.0;
    m->throughput_per_s = (double)st.completed_last_10s / window;
    return 0;
}

/* ---- the shared worker registry (private: src/engine/workers.h) ----------- */

int th__engine_workers_shared(const th_engine *e)
{
    return e->store->ops->worker_put != NULL;
}

int th__engine_worker_put(th_engine *e, const char *id, const char *info)
{
    if (!e->store->ops->worker_put)
        return TH_ENOTFOUND;
    return e->store->ops->worker_put(e->store, id, info, now_ms(e));
}

int th__engine_worker_get(th_engine *e, const char *id, char **info)
{
    *info = NULL;
    if (!e->store->ops->worker_get)
        return TH_ENOTFOUND;
    return e->store->ops->worker_get(e->store, id, info);
}

int th__engine_worker_list(th_engine *e, char **json)
{
    *json = NULL;
    if (!e->store->ops->worker_list)
        return TH_ENOTFOUND;
    return e->store->ops->worker_list(e->store, json);
}
