/*
 * qcore: the task state machine in memory; see qcore.h and the state diagram
 * in docs/ARCHITECTURE.md.
 *
 * Every task is in exactly one place its state decides: the ready heap of its
 * queue (pending), the delayed heap (scheduled), the running heap (running,
 * keyed by the earlier of lease expiry and timeout), or no heap (blocked and
 * final). Pending, scheduled and blocked tasks with an expires_at are also in
 * the expiry heap. leave() and enter() are the only code that moves tasks
 * between these places and keeps the per-state counts, so the invariant lives
 * in one spot.
 *
 * Heaps are reserved to hold every task before a submit or load changes
 * anything, so moving a task between heaps never allocates and a state change
 * never fails half-way.
 *
 * Lock order: mu only. Journal callbacks run under mu and take only their own
 * lock.
 */
#include "store/qcore.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/ulid.h"

_Thread_local int th__hash_oom;

typedef struct qqueue {
    char name[TH_QUEUE_NAME_MAX + 1];
    UT_hash_handle hh;
    th__heap ready;
    int64_t counts[TH_TASK_NSTATES];
    size_t ntasks;
    int paused; /* claims skip it */
} qqueue;

#define TP_BUCKETS 10

typedef struct qcore {
    th_store base;
    th__store_ops ops;
    pthread_mutex_t mu;
    qtask *by_id, *by_key;
    qqueue *queues;
    qtask *head, *tail;
    size_t ntasks;
    th__heap delayed, running, expiry;
    int64_t counts[TH_TASK_NSTATES];
    th__ulid_gen ids;
    th__rng rng;
    uint64_t next_seq;
    th__journal j;
    th__store_config cfg;
    th__store_stats st;
    int64_t tp_sec[TP_BUCKETS];
    uint64_t tp_n[TP_BUCKETS];
} qcore;

#define CORE(s) ((qcore *)(s))
#define JOURNAL(c, what, ...)                                                                      \
    do {                                                                                           \
        if ((c)->j.what)                                                                           \
            (c)->j.what((c)->j.ud, __VA_ARGS__);                                                   \
    } while (0)

/* ---- ordering -------------------------------------------------------- */

static int ready_less(const void *a, const void *b)
{
    const qtask *x = a, *y = b;
    return x->priority != y->priority ? x->priority > y->priority : x->seq < y->seq;
}

static int delayed_less(const void *a, const void *b)
{
    const qtask *x = a, *y = b;
    return x->run_at != y->run_at ? x->run_at < y->run_at : x->seq < y->seq;
}

static int64_t running_key(const qtask *t)
{
    return t->timeout_at && t->timeout_at < t->lease_expires_at ? t->timeout_at
                                                                : t->lease_expires_at;
}

static int running_less(const void *a, const void *b)
{
    return running_key(a) < running_key(b);
}

static int expiry_less(const void *a, const void *b)
{
    const qtask *x = a, *y = b;
    return x->expires_at < y->expires_at;
}

static int is_failure(th_task_state s)
{
    return s == TH_TASK_FAILED || s == TH_TASK_CANCELLED || s == TH_TASK_TIMEOUT ||
           s == TH_TASK_EXPIRED;
}

/* ---- placement: the only code that moves tasks between heaps ---------- */

static void leave(qcore *c, qtask *t)
{
    switch (t->state) {
    case TH_TASK_PENDING:
        th__heap_remove(&t->q->ready, t);
        break;
    case TH_TASK_SCHEDULED:
        th__heap_remove(&c->delayed, t);
        break;
    case TH_TASK_RUNNING:
        th__heap_remove(&c->running, t);
        break;
    default:
        break;
    }
    if (t->xidx != TH_HEAP_NONE)
        th__heap_remove(&c->expiry, t);
    c->counts[t->state]--;
    t->q->counts[t->state]--;
}

static void enter(qcore *c, qtask *t, th_task_state s, int64_t now, th__evbuf *ev)
{
    t->state = s;
    c->counts[s]++;
    t->q->counts[s]++;
    switch (s) {
    case TH_TASK_PENDING:
        t->ready_at = now;
        th__heap_push(&t->q->ready, t);
        th__evbuf_ready(ev, t->q->name);
        break;
    case TH_TASK_SCHEDULED:
        th__heap_push(&c->delayed, t);
        th__evbuf_deadline(ev, t->run_at);
        break;
    case TH_TASK_RUNNING:
        th__heap_push(&c->running, t);
        th__evbuf_deadline(ev, running_key(t));
        break;
    default:
        break;
    }
    if (t->expires_at && (s == TH_TASK_PENDING || s == TH_TASK_SCHEDULED || s == TH_TASK_BLOCKED)) {
        th__heap_push(&c->expiry, t);
        th__evbuf_deadline(ev, t->expires_at);
    }
}

static void move(qcore *c, qtask *t, th_task_state s, int64_t now, th__evbuf *ev)
{
    leave(c, t);
    enter(c, t, s, now, ev);
}

static void emit(th__evbuf *ev, th_event_type type, const qtask *t, const char *msg, int64_t now)
{
    th__evbuf_add(ev, type, t->id, t->q->name, t->state, t->attempt, t->progress, msg, now);
}

/* Pending when run_at has come, else scheduled. */
static void release(qcore *c, qtask *t, int64_t now, th__evbuf *ev)
{
    if (t->run_at > now) {
        move(c, t, TH_TASK_SCHEDULED, now, ev);
    } else {
        move(c, t, TH_TASK_PENDING, now, ev);
        emit(ev, TH_EV_READY, t, NULL, now);
    }
}

static void set_str(char **slot, const char *s)
{
    th__free(*slot);
    *slot = s ? th__strdup(s) : NULL;
}

static qtask *find(qcore *c, const char *id)
{
    qtask *t = NULL;
    if (id)
        HASH_FIND(hh, c->by_id, id, strlen(id), t);
    return t;
}

static qqueue *queue_get(qcore *c, const char *name, int create)
{
    qqueue *q = NULL;
    HASH_FIND_STR(c->queues, name, q);
    if (q || !create)
        return q;
    q = th__calloc(1, sizeof *q);
    if (!q)
        return NULL;
    snprintf(q->name, sizeof q->name, "%s", name);
    th__heap_init(&q->ready, ready_less, offsetof(qtask, hidx));
    HASH_ADD_STR(c->queues, name, q);
    if (th__hash_oom) {
        th__hash_oom = 0;
        th__free(q);
        return NULL;
    }
    return q;
}

static int reserve_heaps(qcore *c, qqueue *q, size_t extra)
{
    size_t n = c->ntasks + extra;
    if (th__heap_reserve(&c->delayed, n) || th__heap_reserve(&c->running, n) ||
        th__heap_reserve(&c->expiry, n) || th__heap_reserve(&q->ready, q->ntasks + extra))
        return TH_ENOMEM;
    return 0;
}

static int reserve_dependent(qtask *d, uint32_t extra)
{
    uint32_t need = d->ndependents + extra;
    if (need <= d->capdependents)
        return 0;
    uint32_t cap = d->capdependents ? d->capdependents * 2 : 4;
    while (cap < need)
        cap *= 2;
    void *v = th__realloc(d->dependents, (size_t)cap * TH_ID_SIZE);
    if (!v)
        return TH_ENOMEM;
    d->dependents = v;
    d->capdependents = cap;
    return 0;
}

static void add_dependent(qtask *d, const qtask *t)
{
    for (uint32_t i = 0; i < d->ndependents; i++)
        if (memcmp(d->dependents[i], t->id, TH_ID_SIZE) == 0)
            return;
    memcpy(d->dependents[d->ndependents++], t->id, TH_ID_SIZE);
}

/* Cancels, transitively, every blocked task that waits on `root`, which has
 * just ended without completing. Uses the tasks' `scratch` link as the work
 * stack so it cannot run out of memory. */
static void cascade(qcore *c, qtask *root, int64_t now, th__evbuf *ev)
{
    root->scratch = NULL;
    for (qtask *t = root; t;) {
        qtask *next = t->scratch;
        for (uint32_t i = 0; i < t->ndependents; i++) {
            qtask *d = find(c, t->dependents[i]);
            if (!d || d->state != TH_TASK_BLOCKED)
                continue;
            char msg[128];
            snprintf(msg, sizeof msg, "dependency %s ended %s", t->id,
                     th_task_state_name(t->state));
            set_str(&d->error, msg);
            d->finished_at = now;
            move(c, d, TH_TASK_CANCELLED, now, ev);
            JOURNAL(c, update, d);
            emit(ev, TH_EV_CANCELLED, d, msg, now);
            d->scratch = next;
            next = d;
        }
        t->ndependents = 0;
        t = next;
    }
}

/* Releases the blocked dependents of `t`, which just completed, whose
 * dependencies are now all complete. A dependency no longer in the store was
 * pruned after it finished; only completed tasks can have left a blocked
 * dependent behind, so it counts as met. */
static void unblock(qcore *c, qtask *t, int64_t now, th__evbuf *ev)
{
    for (uint32_t i = 0; i < t->ndependents; i++) {
        qtask *d = find(c, t->dependents[i]);
        if (!d || d->state != TH_TASK_BLOCKED)
            continue;
        int met = 1;
        for (uint32_t k = 0; k < d->ndeps && met; k++) {
            qtask *x = find(c, d->deps[k]);
            met = !x || x->state == TH_TASK_COMPLETED;
        }
        if (met) {
            release(c, d, now, ev);
            JOURNAL(c, update, d);
        }
    }
    t->ndependents = 0;
}

static int64_t backoff(qcore *c, const qtask *t)
{
    const th_retry_policy *p = &t->retry;
    double d =
        (double)p->initial_delay_ms * pow(p->multiplier, t->attempt > 0 ? t->attempt - 1 : 0);
    if (d > (double)p->max_delay_ms)
        d = (double)p->max_delay_ms;
    if (p->jitter > 0)
        d *= 1.0 + p->jitter * (2.0 * th__rng_unit(&c->rng) - 1.0);
    return d < 0 ? 0 : (int64_t)d;
}

static void end_lease(qtask *t)
{
    t->lease = 0;
    t->lease_expires_at = 0;
    t->timeout_at = 0;
}

/* Ends the current attempt of a running task that did not complete: cancelled
 * when that was asked for, else retried per its policy, else final. */
static void finish_attempt(qcore *c, qtask *t, int flags, int64_t now, th__evbuf *ev)
{
    end_lease(t);
    if ((flags & TH_FAIL_RELEASE) && !t->cancel_requested) {
        /* Handed back unfinished: the attempt does not count. */
        t->attempt--;
        t->run_at = now;
        move(c, t, TH_TASK_PENDING, now, ev);
        emit(ev, TH_EV_READY, t, t->error, now);
        JOURNAL(c, update, t);
        return;
    }
    c->st.failed_attempts_total++;
    if (t->cancel_requested) {
        t->finished_at = now;
        move(c, t, TH_TASK_CANCELLED, now, ev);
        emit(ev, TH_EV_CANCELLED, t, t->error, now);
        JOURNAL(c, update, t);
        cascade(c, t, now, ev);
    } else if (!(flags & TH_FAIL_PERMANENT) && t->attempt <= t->retry.max_retries) {
        t->run_at = now + backoff(c, t);
        c->st.retries_total++;
        th_task_state next = t->run_at > now ? TH_TASK_SCHEDULED : TH_TASK_PENDING;
        leave(c, t);
        /* The failure and the retry are announced with the state the task
         * goes to; enter() below puts it there. */
        th__evbuf_add(ev, TH_EV_FAILED, t->id, t->q->name, next, t->attempt, t->progress, t->error,
                      now);
        th__evbuf_add(ev, TH_EV_RETRYING, t->id, t->q->name, next, t->attempt, t->progress, NULL,
                      now);
        enter(c, t, next, now, ev);
        if (next == TH_TASK_PENDING)
            emit(ev, TH_EV_READY, t, NULL, now);
        JOURNAL(c, update, t);
    } else {
        th_task_state final = (flags & TH_FAIL_TIMEOUT) ? TH_TASK_TIMEOUT : TH_TASK_FAILED;
        t->finished_at = now;
        move(c, t, final, now, ev);
        emit(ev, TH_EV_FAILED, t, t->error, now);
        JOURNAL(c, update, t);
        cascade(c, t, now, ev);
    }
}

static void expire(qcore *c, qtask *t, int64_t now, th__evbuf *ev)
{
    set_str(&t->error, "expired before it could run");
    t->finished_at = now;
    move(c, t, TH_TASK_EXPIRED, now, ev);
    emit(ev, TH_EV_EXPIRED, t, t->error, now);
    JOURNAL(c, update, t);
    cascade(c, t, now, ev);
}

/* ---- snapshots --------------------------------------------------------- */

static th_task *snapshot(const qtask *t)
{
    th_task *s = th__calloc(1, sizeof *s);
    if (!s)
        return NULL;
    memcpy(s->id, t->id, TH_ID_SIZE);
    s->state = t->state;
    s->priority = t->priority;
    s->attempt = t->attempt;
    s->retry = t->retry;
    s->timeout_ms = t->timeout_ms;
    s->created_at = t->created_at;
    s->run_at = t->run_at;
    s->expires_at = t->expires_at;
    s->started_at = t->started_at;
    s->finished_at = t->finished_at;
    s->lease_expires_at = t->lease_expires_at;
    s->lease = t->lease;
    s->cancel_requested = t->cancel_requested;
    s->progress = t->progress;
    s->step = t->step;
    s->total_steps = t->total_steps;
    int bad = 0;
#define DUP(f)                                                                                     \
    do {                                                                                           \
        if (t->f && !(s->f = th__strdup(t->f)))                                                    \
            bad = 1;                                                                               \
    } while (0)
    if (!(s->queue = th__strdup(t->q->name)))
        bad = 1;
    DUP(payload);
    DUP(metadata);
    DUP(unique_key);
    DUP(worker);
    DUP(progress_message);
    DUP(error);
    DUP(result);
#undef DUP
    if (t->ndeps) {
        char **v = th__malloc(t->ndeps * (sizeof(char *) + TH_ID_SIZE));
        if (v) {
            char *ids = (char *)(v + t->ndeps);
            for (uint32_t i = 0; i < t->ndeps; i++) {
                v[i] = ids + (size_t)i * TH_ID_SIZE;
                memcpy(v[i], t->deps[i], TH_ID_SIZE);
            }
            s->deps = v;
            s->ndeps = t->ndeps;
        } else {
            bad = 1;
        }
    }
    if (bad) {
        th_task_free(s);
        return NULL;
    }
    return s;
}

/* ---- tasks ------------------------------------------------------------- */

qtask *th__qcore_task_alloc(void)
{
    qtask *t = th__calloc(1, sizeof *t);
    if (t)
        t->hidx = t->xidx = TH_HEAP_NONE;
    return t;
}

void th__qcore_task_free(qtask *t)
{
    if (!t)
        return;
    th__free(t->payload);
    th__free(t->metadata);
    th__free(t->unique_key);
    th__free(t->worker);
    th__free(t->progress_message);
    th__free(t->error);
    th__free(t->result);
    th__free(t->deps);
    th__free(t->dependents);
    for (size_t i = 0; i < t->nlogs; i++) {
        th__free(t->logs[i].message);
        th__free(t->logs[i].data);
    }
    th__free(t->logs);
    th__free(t);
}

/* Adds a task to the id and unique-key indexes; TH_ENOMEM leaves it in
 * neither. */
static int index_task(qcore *c, qtask *t)
{
    HASH_ADD(hh, c->by_id, id, strlen(t->id), t);
    if (th__hash_oom) {
        th__hash_oom = 0;
        return TH_ENOMEM;
    }
    if (t->unique_key) {
        HASH_ADD_KEYPTR(kh, c->by_key, t->unique_key, strlen(t->unique_key), t);
        if (th__hash_oom) {
            th__hash_oom = 0;
            HASH_DELETE(hh, c->by_id, t);
            return TH_ENOMEM;
        }
    }
    return 0;
}

static void unindex_task(qcore *c, qtask *t)
{
    HASH_DELETE(hh, c->by_id, t);
    if (t->unique_key)
        HASH_DELETE(kh, c->by_key, t);
}

/* Puts an indexed task on its queue and the id-ordered list. */
static void link_task(qcore *c, qtask *t, qqueue *q)
{
    t->q = q;
    q->ntasks++;
    c->ntasks++;
    t->prev = c->tail;
    t->next = NULL;
    if (c->tail)
        c->tail->next = t;
    else
        c->head = t;
    c->tail = t;
}

static void unlink_task(qcore *c, qtask *t)
{
    leave(c, t);
    unindex_task(c, t);
    if (t->prev)
        t->prev->next = t->next;
    else
        c->head = t->next;
    if (t->next)
        t->next->prev = t->prev;
    else
        c->tail = t->prev;
    t->q->ntasks--;
    c->ntasks--;
}

static size_t queued_count(const qcore *c)
{
    return (size_t)(c->counts[TH_TASK_PENDING] + c->counts[TH_TASK_SCHEDULED] +
                    c->counts[TH_TASK_BLOCKED]);
}

/* ---- operations --------------------------------------------------------- */

static int qc_configure(th_store *s, const th__store_config *cfg)
{
    qcore *c = CORE(s);
    pthread_mutex_lock(&c->mu);
    c->cfg = *cfg;
    th__rng_seed(&c->rng, cfg->seed);
    /* Logs loaded from a file written under a larger limit. */
    size_t max = cfg->max_logs_per_task;
    for (qtask *t = c->head; max && t; t = t->next) {
        if (t->nlogs <= max)
            continue;
        size_t drop = t->nlogs - max;
        int64_t upto = t->logs[drop - 1].seq;
        for (size_t i = 0; i < drop; i++) {
            th__free(t->logs[i].message);
            th__free(t->logs[i].data);
        }
        memmove(t->logs, t->logs + drop, (t->nlogs - drop) * sizeof *t->logs);
        t->nlogs -= drop;
        JOURNAL(c, log_trim, t, upto);
    }
    pthread_mutex_unlock(&c->mu);
    return 0;
}

static qtask *new_task(qcore *c, const th__submit *it, int64_t now)
{
    const th_task_spec *sp = it->spec;
    qtask *t = th__qcore_task_alloc();
    if (!t)
        return NULL;
    th__ulid_next(&c->ids, now, t->id);
    t->priority = sp->priority;
    t->retry = sp->retry;
    t->timeout_ms = sp->timeout_ms;
    t->created_at = now;
    t->run_at = it->run_at;
    t->expires_at = sp->expires_at_ms;
    t->payload = th__strdup(sp->payload ? sp->payload : "null");
    int bad = !t->payload;
    if (sp->metadata && !(t->metadata = th__strdup(sp->metadata)))
        bad = 1;
    if (sp->unique_key && !(t->unique_key = th__strdup(sp->unique_key)))
        bad = 1;
    if (sp->ndeps) {
        t->deps = th__malloc(sp->ndeps * TH_ID_SIZE);
        if (t->deps) {
            for (size_t k = 0; k < sp->ndeps; k++) /* "$N" refs are shorter than ids */
                snprintf(t->deps[k], TH_ID_SIZE, "%s", sp->deps[k]);
            t->ndeps = (uint32_t)sp->ndeps;
        } else {
            bad = 1;
        }
    }
    if (bad) {
        th__qcore_task_free(t);
        return NULL;
    }
    return t;
}

static int qc_submit(th_store *s, th__submit *items, size_t n, int64_t now, th__evbuf *ev,
                     th_error *err)
{
    qcore *c = CORE(s);
    int rc = 0;
    qtask **nt = th__calloc(n, sizeof *nt);
    if (!nt)
        return th__err(err, TH_ENOMEM, NULL, "out of memory");
    pthread_mutex_lock(&c->mu);
    if (c->cfg.max_queued && queued_count(c) + n > c->cfg.max_queued) {
        rc = th__err(err, TH_EBUSY, NULL, "queue full: %zu tasks waiting (limit %zu)",
                     queued_count(c), c->cfg.max_queued);
        goto fail;
    }
    /* Phase 1: allocate, index, resolve and reserve. Indexing first lets
     * later items find earlier ones (dependencies, unique keys); on failure
     * everything is unindexed again, so no other caller ever sees a part. */
    for (size_t i = 0; i < n; i++) {
        const th_task_spec *sp = items[i].spec;
        char prefix[32] = "";
        if (n > 1)
            snprintf(prefix, sizeof prefix, "tasks[%zu].", i);
        items[i].deduplicated = 0;
        if (sp->unique_key) {
            qtask *dup = NULL;
            HASH_FIND(kh, c->by_key, sp->unique_key, strlen(sp->unique_key), dup);
            if (dup) {
                memcpy(items[i].id, dup->id, TH_ID_SIZE);
                items[i].deduplicated = 1;
                continue;
            }
        }
        qtask *t;
        if (!queue_get(c, sp->queue, 1) || !(t = new_task(c, &items[i], now))) {
            rc = th__err(err, TH_ENOMEM, NULL, "out of memory");
            goto fail;
        }
        if (index_task(c, t)) {
            th__qcore_task_free(t);
            rc = th__err(err, TH_ENOMEM, NULL, "out of memory");
            goto fail;
        }
        nt[i] = t;
        memcpy(items[i].id, t->id, TH_ID_SIZE);
        for (size_t k = 0; k < sp->ndeps; k++) {
            if (sp->deps[k][0] == '$') /* "$j": item j of this batch, checked by the engine */
                memcpy(t->deps[k], items[strtoul(sp->deps[k] + 1, NULL, 10)].id, TH_ID_SIZE);
            qtask *d = find(c, t->deps[k]);
            if (!d) {
                char field[64];
                snprintf(field, sizeof field, "%sdeps[%zu]", prefix, k);
                rc = th__err(err, TH_ENOTFOUND, field, "dependency %s does not exist", t->deps[k]);
                goto fail;
            }
            if (reserve_dependent(d, d->reserved + 1)) {
                rc = th__err(err, TH_ENOMEM, NULL, "out of memory");
                goto fail;
            }
            d->reserved++;
        }
    }
    for (size_t i = 0; i < n; i++) {
        qqueue *q = nt[i] ? queue_get(c, items[i].spec->queue, 0) : NULL;
        if (q && reserve_heaps(c, q, n)) {
            rc = th__err(err, TH_ENOMEM, NULL, "out of memory");
            goto fail;
        }
    }
    /* Phase 2: link; cannot fail. */
    for (size_t i = 0; i < n; i++) {
        qtask *t = nt[i];
        if (!t)
            continue;
        t->seq = c->next_seq++;
        link_task(c, t, queue_get(c, items[i].spec->queue, 0));
        const qtask *failed_dep = NULL;
        int unmet = 0;
        for (uint32_t k = 0; k < t->ndeps; k++) {
            qtask *d = find(c, t->deps[k]);
            d->reserved = 0;
            if (is_failure(d->state)) {
                failed_dep = d;
            } else if (d->state != TH_TASK_COMPLETED) {
                unmet++;
                add_dependent(d, t);
            }
        }
        th_task_state first = failed_dep        ? TH_TASK_CANCELLED
                              : unmet           ? TH_TASK_BLOCKED
                              : t->run_at > now ? TH_TASK_SCHEDULED
                                                : TH_TASK_PENDING;
        th__evbuf_add(ev, TH_EV_SUBMITTED, t->id, t->q->name, first, 0, 0, NULL, now);
        if (failed_dep) {
            char msg[128];
            snprintf(msg, sizeof msg, "dependency %s ended %s", failed_dep->id,
                     th_task_state_name(failed_dep->state));
            t->error = th__strdup(msg);
            t->finished_at = now;
            enter(c, t, TH_TASK_CANCELLED, now, ev);
            emit(ev, TH_EV_CANCELLED, t, msg, now);
        } else if (first == TH_TASK_PENDING) {
            enter(c, t, first, now, ev);
            emit(ev, TH_EV_READY, t, NULL, now);
        } else {
            enter(c, t, first, now, ev);
        }
        JOURNAL(c, insert, t);
        c->st.submitted_total++;
    }
    pthread_mutex_unlock(&c->mu);
    th__free(nt);
    return 0;
fail:
    for (size_t i = 0; i < n; i++) {
        for (uint32_t k = 0; nt[i] && k < nt[i]->ndeps; k++) {
            qtask *d = find(c, nt[i]->deps[k]);
            if (d)
                d->reserved = 0;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (nt[i]) {
            unindex_task(c, nt[i]);
            th__qcore_task_free(nt[i]);
        }
    }
    pthread_mutex_unlock(&c->mu);
    th__free(nt);
    return rc;
}

static int qc_claim(th_store *s, const th__claim *cl, int64_t now, th_task **out, th__evbuf *ev)
{
    qcore *c = CORE(s);
    qqueue *local[16], **qs = local;
    size_t nq = 0;
    if (cl->nqueues > 16 && !(qs = th__malloc(cl->nqueues * sizeof *qs)))
        return TH_ENOMEM;
    int k = 0;
    pthread_mutex_lock(&c->mu);
    if (cl->nqueues) {
        for (size_t i = 0; i < cl->nqueues; i++) {
            qqueue *q = queue_get(c, cl->queues[i], 0);
            if (q && !q->paused)
                qs[nq++] = q;
        }
    }
    while ((size_t)k < cl->max_tasks) {
        qtask *best = NULL;
        if (cl->nqueues) {
            for (size_t i = 0; i < nq; i++) {
                qtask *top = th__heap_top(&qs[i]->ready);
                if (top && (!best || ready_less(top, best)))
                    best = top;
            }
        } else {
            for (qqueue *q = c->queues; q; q = q->hh.next) {
                if (q->paused)
                    continue;
                qtask *top = th__heap_top(&q->ready);
                if (top && (!best || ready_less(top, best)))
                    best = top;
            }
        }
        if (!best)
            break;
        if (best->expires_at && best->expires_at <= now) {
            expire(c, best, now, ev);
            continue;
        }
        th_task *snap = snapshot(best);
        char *worker = cl->worker ? th__strdup(cl->worker) : NULL;
        if (!snap || (cl->worker && !worker)) {
            th_task_free(snap);
            th__free(worker);
            if (k == 0)
                k = TH_ENOMEM;
            break;
        }
        qtask *t = best;
        c->st.wait_ms_sum += (double)(now - t->ready_at);
        c->st.wait_n++;
        t->attempt++;
        t->lease = (th__rng_next(&c->rng) & ((1ULL << 53) - 1)) | 1;
        t->lease_ms = cl->lease_ms;
        t->lease_expires_at = now + cl->lease_ms;
        t->timeout_at = t->timeout_ms ? now + t->timeout_ms : 0;
        t->started_at = now;
        t->progress = t->step = t->total_steps = 0;
        th__free(t->progress_message);
        t->progress_message = NULL;
        th__free(t->worker);
        t->worker = worker;
        move(c, t, TH_TASK_RUNNING, now, ev);
        JOURNAL(c, update, t);
        emit(ev, TH_EV_ASSIGNED, t, t->worker, now);
        emit(ev, TH_EV_STARTED, t, NULL, now);
        snap->state = t->state;
        snap->attempt = t->attempt;
        snap->lease = t->lease;
        snap->lease_expires_at = t->lease_expires_at;
        snap->started_at = t->started_at;
        snap->progress = snap->step = snap->total_steps = 0;
        th__free(snap->progress_message);
        snap->progress_message = NULL;
        th__free(snap->worker);
        snap->worker = t->worker ? th__strdup(t->worker) : NULL; /* NULL on OOM: a name only */
        out[k++] = snap;
    }
    pthread_mutex_unlock(&c->mu);
    if (qs != local)
        th__free(qs);
    return k;
}

/* Finds a running task held with `lease`, or says why not. */
static int leased(qcore *c, const char *id, uint64_t lease, qtask **out)
{
    qtask *t = find(c, id);
    if (!t)
        return TH_ENOTFOUND;
    if (t->state != TH_TASK_RUNNING || t->lease != lease)
        return TH_ESTALE;
    *out = t;
    return 0;
}

static void extend(qcore *c, qtask *t, int64_t extend_ms, int64_t now, th__evbuf *ev)
{
    t->lease_expires_at = now + (extend_ms > 0 ? extend_ms : t->lease_ms);
    th__heap_update(&c->running, t);
    th__evbuf_deadline(ev, running_key(t));
}

static int qc_heartbeat(th_store *s, const char *id, uint64_t lease, int64_t extend_ms, int64_t now,
                        int *cancel_requested, th__evbuf *ev)
{
    qcore *c = CORE(s);
    qtask *t;
    pthread_mutex_lock(&c->mu);
    int rc = leased(c, id, lease, &t);
    if (rc == 0) {
        extend(c, t, extend_ms, now, ev);
        if (cancel_requested)
            *cancel_requested = t->cancel_requested;
        JOURNAL(c, update, t);
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

static int qc_progress(th_store *s, const char *id, uint64_t lease, int percent, int step,
                       int total, const char *message, int64_t now, th__evbuf *ev)
{
    qcore *c = CORE(s);
    qtask *t;
    pthread_mutex_lock(&c->mu);
    int rc = leased(c, id, lease, &t);
    if (rc == 0) {
        char *m = message ? th__strdup(message) : NULL;
        if (message && !m) {
            rc = TH_ENOMEM;
        } else {
            t->progress = percent;
            t->step = step;
            t->total_steps = total;
            th__free(t->progress_message);
            t->progress_message = m;
            extend(c, t, 0, now, ev);
            JOURNAL(c, update, t);
            emit(ev, TH_EV_PROGRESS, t, m, now);
        }
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

/* Appends a log row; when the task holds its limit, the oldest half goes so
 * that appending stays amortised O(1). */
static int append_log(qcore *c, qtask *t, const qlog *l, int64_t seq)
{
    size_t max = c->cfg.max_logs_per_task ? c->cfg.max_logs_per_task : SIZE_MAX;
    if (t->nlogs >= max) {
        size_t drop = t->nlogs - max / 2;
        int64_t upto = t->logs[drop - 1].seq;
        for (size_t i = 0; i < drop; i++) {
            th__free(t->logs[i].message);
            th__free(t->logs[i].data);
        }
        memmove(t->logs, t->logs + drop, (t->nlogs - drop) * sizeof *t->logs);
        t->nlogs -= drop;
        JOURNAL(c, log_trim, t, upto);
    }
    if (t->nlogs == t->caplogs) {
        size_t cap = t->caplogs ? t->caplogs * 2 : 8;
        qlog *v = th__realloc(t->logs, cap * sizeof *v);
        if (!v)
            return TH_ENOMEM;
        t->logs = v;
        t->caplogs = cap;
    }
    qlog *d = &t->logs[t->nlogs];
    *d = *l;
    d->seq = seq;
    d->message = th__strdup(l->message ? l->message : "");
    d->data = l->data ? th__strdup(l->data) : NULL;
    if (!d->message || (l->data && !d->data)) {
        th__free(d->message);
        th__free(d->data);
        return TH_ENOMEM;
    }
    t->nlogs++;
    if (seq > t->log_seq)
        t->log_seq = seq;
    return 0;
}

static int qc_log(th_store *s, const char *id, uint64_t lease, th_log_level level,
                  const char *message, const char *data, int64_t now)
{
    qcore *c = CORE(s);
    pthread_mutex_lock(&c->mu);
    qtask *t = find(c, id);
    int rc = 0;
    if (!t)
        rc = TH_ENOTFOUND;
    else if (lease && (t->state != TH_TASK_RUNNING || t->lease != lease))
        rc = TH_ESTALE;
    if (rc == 0) {
        qlog l = {.time_ms = now,
                  .level = level,
                  .attempt = t->attempt,
                  .message = (char *)message,
                  .data = (char *)data};
        rc = append_log(c, t, &l, t->log_seq + 1);
        if (rc == 0)
            JOURNAL(c, log, t, &t->logs[t->nlogs - 1]);
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

static void count_completion(qcore *c, int64_t now)
{
    int64_t sec = now / 1000;
    size_t b = (size_t)(sec % TP_BUCKETS);
    if (c->tp_sec[b] != sec) {
        c->tp_sec[b] = sec;
        c->tp_n[b] = 0;
    }
    c->tp_n[b]++;
    c->st.completed_total++;
}

static int qc_complete(th_store *s, th_completion *items, size_t n, int64_t now, th__evbuf *ev)
{
    qcore *c = CORE(s);
    int ok = 0;
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < n; i++) {
        qtask *t;
        th_completion *it = &items[i];
        if ((it->rc = leased(c, it->id, it->lease, &t)) != 0)
            continue;
        char *r = th__strdup(it->result ? it->result : "null");
        if (!r) {
            it->rc = TH_ENOMEM;
            continue;
        }
        th__free(t->result);
        t->result = r;
        set_str(&t->error, NULL); /* a cancel asked for too late is moot */
        c->st.run_ms_sum += (double)(now - t->started_at);
        c->st.run_n++;
        end_lease(t);
        t->finished_at = now;
        t->progress = 100;
        move(c, t, TH_TASK_COMPLETED, now, ev);
        JOURNAL(c, update, t);
        emit(ev, TH_EV_COMPLETED, t, NULL, now);
        count_completion(c, now);
        unblock(c, t, now, ev);
        ok++;
    }
    pthread_mutex_unlock(&c->mu);
    return ok;
}

static int qc_fail(th_store *s, const char *id, uint64_t lease, const char *message, int flags,
                   int64_t now, th__evbuf *ev)
{
    qcore *c = CORE(s);
    qtask *t;
    pthread_mutex_lock(&c->mu);
    int rc = leased(c, id, lease, &t);
    if (rc == 0) {
        set_str(&t->error, message ? message : "failed");
        if (flags & TH_FAIL_TIMEOUT)
            emit(ev, TH_EV_TIMEOUT, t, t->error, now);
        finish_attempt(c, t, flags, now, ev);
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

static int qc_cancel(th_store *s, const char *id, const char *reason, int64_t now, th__evbuf *ev)
{
    qcore *c = CORE(s);
    pthread_mutex_lock(&c->mu);
    qtask *t = find(c, id);
    int rc = 0;
    if (!t) {
        rc = TH_ENOTFOUND;
    } else if (th_task_state_is_final(t->state)) {
        rc = TH_ESTATE;
    } else if (t->state == TH_TASK_RUNNING) {
        rc = 1;
        if (!t->cancel_requested) {
            t->cancel_requested = 1;
            set_str(&t->error, reason ? reason : "cancelled");
            JOURNAL(c, update, t);
            emit(ev, TH_EV_CANCEL_REQUESTED, t, t->error, now);
        }
    } else {
        set_str(&t->error, reason ? reason : "cancelled");
        t->finished_at = now;
        move(c, t, TH_TASK_CANCELLED, now, ev);
        JOURNAL(c, update, t);
        emit(ev, TH_EV_CANCELLED, t, t->error, now);
        cascade(c, t, now, ev);
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

static int qc_retry(th_store *s, const char *id, int64_t now, th__evbuf *ev, th_error *err)
{
    qcore *c = CORE(s);
    int rc = 0;
    pthread_mutex_lock(&c->mu);
    qtask *t = find(c, id);
    if (!t) {
        rc = th__err(err, TH_ENOTFOUND, "id", "task %s does not exist", id);
        goto out;
    }
    if (!is_failure(t->state)) {
        rc = th__err(err, TH_ESTATE, "state",
                     "task is %s; only failed, cancelled, timed-out or expired tasks can be "
                     "retried",
                     th_task_state_name(t->state));
        goto out;
    }
    int unmet = 0;
    for (uint32_t k = 0; k < t->ndeps; k++) {
        qtask *d = find(c, t->deps[k]);
        if (!d) {
            char field[32];
            snprintf(field, sizeof field, "deps[%u]", k);
            rc = th__err(err, TH_ESTATE, field,
                         "dependency %s was pruned; whether it completed is unknown", t->deps[k]);
            goto out;
        }
        if (is_failure(d->state)) {
            char field[32];
            snprintf(field, sizeof field, "deps[%u]", k);
            rc = th__err(err, TH_ESTATE, field, "dependency %s is %s; retry it first", d->id,
                         th_task_state_name(d->state));
            goto out;
        }
        if (d->state != TH_TASK_COMPLETED) {
            if (reserve_dependent(d, 1)) {
                rc = th__err(err, TH_ENOMEM, NULL, "out of memory");
                goto out;
            }
            unmet++;
        }
    }
    for (uint32_t k = 0; unmet && k < t->ndeps; k++) {
        qtask *d = find(c, t->deps[k]);
        if (d && d->state != TH_TASK_COMPLETED)
            add_dependent(d, t);
    }
    t->attempt = 0;
    t->cancel_requested = 0;
    t->finished_at = 0;
    t->run_at = now;
    t->progress = t->step = t->total_steps = 0;
    if (t->expires_at && t->expires_at <= now)
        t->expires_at = 0;
    set_str(&t->error, NULL);
    set_str(&t->result, NULL);
    set_str(&t->progress_message, NULL);
    th_task_state next = unmet ? TH_TASK_BLOCKED : TH_TASK_PENDING;
    leave(c, t);
    th__evbuf_add(ev, TH_EV_RETRYING, t->id, t->q->name, next, t->attempt, t->progress,
                  "retry requested", now);
    enter(c, t, next, now, ev);
    if (!unmet)
        emit(ev, TH_EV_READY, t, NULL, now);
    JOURNAL(c, update, t);
out:
    pthread_mutex_unlock(&c->mu);
    return rc;
}

static int qc_get(th_store *s, const char *id, th_task **out)
{
    qcore *c = CORE(s);
    pthread_mutex_lock(&c->mu);
    qtask *t = find(c, id);
    int rc = !t ? TH_ENOTFOUND : (*out = snapshot(t)) ? 0 : TH_ENOMEM;
    pthread_mutex_unlock(&c->mu);
    return rc;
}

static int qc_list(th_store *s, const th_list_filter *f, th_task ***out, size_t *n)
{
    qcore *c = CORE(s);
    th_task **v = th__calloc(f->limit, sizeof *v);
    if (!v)
        return TH_ENOMEM;
    size_t k = 0;
    int rc = 0;
    pthread_mutex_lock(&c->mu);
    qtask *t = c->head;
    if (f->after_id) {
        qtask *a = find(c, f->after_id);
        if (a) {
            t = a->next;
        } else {
            while (t && strcmp(t->id, f->after_id) <= 0)
                t = t->next;
        }
    }
    for (; t && k < f->limit; t = t->next) {
        if (f->queue && strcmp(t->q->name, f->queue) != 0)
            continue;
        if (f->state >= 0 && (int)t->state != f->state)
            continue;
        if (!(v[k] = snapshot(t))) {
            rc = TH_ENOMEM;
            break;
        }
        k++;
    }
    pthread_mutex_unlock(&c->mu);
    if (rc) {
        th_task_array_free(v, k);
        return rc;
    }
    *out = v;
    *n = k;
    return 0;
}

static int qc_logs(th_store *s, const char *id, int64_t after, size_t limit, th_log_entry **out,
                   size_t *n)
{
    qcore *c = CORE(s);
    int rc = 0;
    pthread_mutex_lock(&c->mu);
    qtask *t = find(c, id);
    if (!t) {
        rc = TH_ENOTFOUND;
        goto out;
    }
    size_t first = 0;
    while (first < t->nlogs && t->logs[first].seq <= after)
        first++;
    size_t cnt = t->nlogs - first;
    if (limit && cnt > limit)
        cnt = limit;
    th_log_entry *v = th__calloc(cnt ? cnt : 1, sizeof *v);
    if (!v) {
        rc = TH_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < cnt; i++) {
        const qlog *l = &t->logs[first + i];
        v[i].seq = l->seq;
        v[i].time_ms = l->time_ms;
        v[i].level = l->level;
        v[i].attempt = l->attempt;
        v[i].message = th__strdup(l->message);
        v[i].data = l->data ? th__strdup(l->data) : NULL;
        if (!v[i].message || (l->data && !v[i].data)) {
            th_log_entries_free(v, i + 1);
            rc = TH_ENOMEM;
            goto out;
        }
    }
    *out = v;
    *n = cnt;
out:
    pthread_mutex_unlock(&c->mu);
    return rc;
}

static int qc_counts(th_store *s, th_queue_counts **out, size_t *n)
{
    qcore *c = CORE(s);
    pthread_mutex_lock(&c->mu);
    size_t nq = HASH_COUNT(c->queues);
    th_queue_counts *v = th__calloc(nq ? nq : 1, sizeof *v);
    if (v) {
        size_t i = 0;
        for (qqueue *q = c->queues; q; q = q->hh.next, i++) {
            snprintf(v[i].queue, sizeof v[i].queue, "%s", q->name);
            v[i].paused = q->paused;
            memcpy(v[i].counts, q->counts, sizeof q->counts);
        }
    }
    pthread_mutex_unlock(&c->mu);
    if (!v)
        return TH_ENOMEM;
    *out = v;
    *n = nq;
    return 0;
}

static int qc_stats(th_store *s, int64_t now, th__store_stats *out)
{
    qcore *c = CORE(s);
    pthread_mutex_lock(&c->mu);
    *out = c->st;
    memcpy(out->counts, c->counts, sizeof c->counts);
    int64_t sec = now / 1000;
    out->completed_last_10s = 0;
    for (int b = 0; b < TP_BUCKETS; b++)
        if (c->tp_sec[b] > sec - TP_BUCKETS && c->tp_sec[b] <= sec)
            out->completed_last_10s += c->tp_n[b];
    pthread_mutex_unlock(&c->mu);
    return 0;
}

static int qc_prune(th_store *s, int64_t before, int64_t now)
{
    qcore *c = CORE(s);
    int n = 0;
    pthread_mutex_lock(&c->mu);
    for (qtask *t = c->head, *next; t; t = next) {
        next = t->next;
        if (!th_task_state_is_final(t->state) || t->finished_at >= before)
            continue;
        unlink_task(c, t);
        JOURNAL(c, remove, t);
        th__qcore_task_free(t);
        n++;
    }
    pthread_mutex_unlock(&c->mu);
    return n;
}

static int qc_queue_pause(th_store *s, const char *name, int paused, th__evbuf *ev)
{
    qcore *c = CORE(s);
    pthread_mutex_lock(&c->mu);
    qqueue *q = queue_get(c, name, 1);
    int rc = q ? 0 : TH_ENOMEM;
    if (q && q->paused != !!paused) {
        q->paused = !!paused;
        JOURNAL(c, queue, q->name, q->paused);
        if (!q->paused && q->ready.n)
            ev->ready_all = 1; /* its waiting tasks can go out now */
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

static int qc_queue_purge(th_store *s, const char *name, const char *reason, int64_t now,
                          th__evbuf *ev)
{
    qcore *c = CORE(s);
    int n = 0;
    pthread_mutex_lock(&c->mu);
    qqueue *q = queue_get(c, name, 0);
    for (qtask *t = c->head; q && t; t = t->next) {
        if (t->q != q || (t->state != TH_TASK_PENDING && t->state != TH_TASK_SCHEDULED &&
                          t->state != TH_TASK_BLOCKED))
            continue;
        set_str(&t->error, reason ? reason : "purged");
        t->finished_at = now;
        move(c, t, TH_TASK_CANCELLED, now, ev);
        JOURNAL(c, update, t);
        emit(ev, TH_EV_CANCELLED, t, t->error, now);
        cascade(c, t, now, ev);
        n++;
    }
    pthread_mutex_unlock(&c->mu);
    return n;
}

static int qc_tick(th_store *s, int64_t now, int64_t *next, th__evbuf *ev)
{
    qcore *c = CORE(s);
    int n = 0;
    qtask *t;
    pthread_mutex_lock(&c->mu);
    while ((t = th__heap_top(&c->delayed)) && t->run_at <= now) {
        move(c, t, TH_TASK_PENDING, now, ev);
        emit(ev, TH_EV_READY, t, NULL, now);
        JOURNAL(c, update, t);
        n++;
    }
    while ((t = th__heap_top(&c->running)) && running_key(t) <= now) {
        char msg[160];
        int flags = 0;
        if (t->timeout_at && t->timeout_at <= now) {
            snprintf(msg, sizeof msg, "attempt %d timed out after %" PRId64 " ms", t->attempt,
                     t->timeout_ms);
            flags = TH_FAIL_TIMEOUT;
        } else {
            snprintf(msg, sizeof msg, "lease expired: worker %s stopped heartbeating",
                     t->worker ? t->worker : "(anonymous)");
        }
        if (!t->cancel_requested)
            set_str(&t->error, msg);
        if (flags)
            emit(ev, TH_EV_TIMEOUT, t, msg, now);
        finish_attempt(c, t, flags, now, ev);
        n++;
    }
    while ((t = th__heap_top(&c->expiry)) && t->expires_at <= now) {
        expire(c, t, now, ev);
        n++;
    }
    int64_t nx = INT64_MAX;
    if ((t = th__heap_top(&c->delayed)) && t->run_at < nx)
        nx = t->run_at;
    if ((t = th__heap_top(&c->running)) && running_key(t) < nx)
        nx = running_key(t);
    if ((t = th__heap_top(&c->expiry)) && t->expires_at < nx)
        nx = t->expires_at;
    *next = nx;
    pthread_mutex_unlock(&c->mu);
    return n;
}

static int qc_flush(th_store *s)
{
    return 0;
}

static void qc_free(th_store *s)
{
    qcore *c = CORE(s);
    if (!c)
        return;
    /* The hash tables' bookkeeping hangs off their elements: clear first. */
    HASH_CLEAR(hh, c->by_id);
    HASH_CLEAR(kh, c->by_key);
    for (qtask *t = c->head, *next; t; t = next) {
        next = t->next;
        th__qcore_task_free(t);
    }
    qqueue *q, *tmp;
    HASH_ITER(hh, c->queues, q, tmp)
    {
        HASH_DEL(c->queues, q);
        th__heap_free(&q->ready);
        th__free(q);
    }
    th__heap_free(&c->delayed);
    th__heap_free(&c->running);
    th__heap_free(&c->expiry);
    pthread_mutex_destroy(&c->mu);
    th__free(c);
}

static const th__store_ops qcore_ops = {
    .kind = "memory",
    .configure = qc_configure,
    .submit = qc_submit,
    .claim = qc_claim,
    .heartbeat = qc_heartbeat,
    .progress = qc_progress,
    .log = qc_log,
    .complete = qc_complete,
    .fail = qc_fail,
    .cancel = qc_cancel,
    .retry = qc_retry,
    .get = qc_get,
    .list = qc_list,
    .logs = qc_logs,
    .counts = qc_counts,
    .stats = qc_stats,
    .prune = qc_prune,
    .queue_pause = qc_queue_pause,
    .queue_purge = qc_queue_purge,
    .tick = qc_tick,
    .flush = qc_flush,
    .free = qc_free,
};

th_store *th__qcore_new(const char *kind, th_error *err)
{
    qcore *c = th__calloc(1, sizeof *c);
    if (!c) {
        th__err(err, TH_ENOMEM, NULL, "out of memory");
        return NULL;
    }
    c->ops = qcore_ops;
    c->ops.kind = kind;
    c->base.ops = &c->ops;
    pthread_mutex_init(&c->mu, NULL);
    th__heap_init(&c->delayed, delayed_less, offsetof(qtask, hidx));
    th__heap_init(&c->running, running_less, offsetof(qtask, hidx));
    th__heap_init(&c->expiry, expiry_less, offsetof(qtask, xidx));
    th__ulid_init(&c->ids, 0);
    th__rng_seed(&c->rng, 0);
    c->next_seq = 1;
    return &c->base;
}

void th__qcore_set_journal(th_store *s, const th__journal *j)
{
    CORE(s)->j = *j;
}

int th__qcore_load_task(th_store *s, qtask *t, const char *queue)
{
    qcore *c = CORE(s);
    qqueue *q = queue_get(c, queue, 1);
    if (!q || reserve_heaps(c, q, 1)) {
        th__qcore_task_free(t);
        return TH_ENOMEM;
    }
    th_task_state st = t->state;
    if ((unsigned)st >= TH_TASK_NSTATES)
        st = TH_TASK_PENDING;
    if (t->seq == 0)
        t->seq = c->next_seq;
    if (t->seq >= c->next_seq)
        c->next_seq = t->seq + 1;
    if (index_task(c, t)) {
        th__qcore_task_free(t);
        return TH_ENOMEM;
    }
    link_task(c, t, q);
    th__evbuf ev;
    th__evbuf_init(&ev, 0, NULL);
    enter(c, t, st, t->created_at, &ev);
    th__evbuf_free(&ev);
    th__ulid_observe(&c->ids, t->id);
    return 0;
}

int th__qcore_load_log(th_store *s, qtask *t, const qlog *l)
{
    return append_log(CORE(s), t, l, l->seq);
}

int th__qcore_load_queue(th_store *s, const char *name, int paused)
{
    qqueue *q = queue_get(CORE(s), name, 1);
    if (!q)
        return TH_ENOMEM;
    q->paused = !!paused;
    return 0;
}

const char *th__qcore_queue_name(const qtask *t)
{
    return t->q->name;
}

qtask *th__qcore_find(th_store *s, const char *id)
{
    return find(CORE(s), id);
}

int th__qcore_load_done(th_store *s)
{
    qcore *c = CORE(s);
    for (qtask *t = c->head; t; t = t->next) {
        if (t->state != TH_TASK_BLOCKED)
            continue;
        for (uint32_t k = 0; k < t->ndeps; k++) {
            qtask *d = find(c, t->deps[k]);
            if (!d || d->state == TH_TASK_COMPLETED)
                continue;
            /* A link left out would strand the dependent: fail the open. */
            if (reserve_dependent(d, 1))
                return TH_ENOMEM;
            add_dependent(d, t);
        }
    }
    return 0;
}
