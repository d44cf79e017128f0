/*
 * The PostgreSQL store's operations: qcore's state machine (qcore.c and
 * docs/ARCHITECTURE.md section 4) over rows. Each operation is one
 * transaction run by th__pg_run: it locks the rows it changes (FOR UPDATE;
 * claims and ticks with SKIP LOCKED, so nodes running them at once take
 * different rows), applies the same transitions in the same order as qcore,
 * writes the rows back and notes the same events, which the engine sees only
 * after the commit.
 *
 * Where qcore keeps heaps, the queries order rows the same way: ready tasks
 * by priority then submission order (seq), scheduled ones by run_at, running
 * ones by the earlier of lease expiry and timeout. Dependencies are rows of
 * th_deps; a dependent is released or cancelled only while blocked, and a
 * pruned dependency counts as met, as in qcore.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "store/postgres.h"

#define COLS                                                                                       \
    "id, queue, state, priority, payload, metadata, unique_key, deps, timeout_ms, max_retries,"    \
    " retry_initial_ms, retry_max_ms, retry_multiplier, retry_jitter, created_at, run_at,"         \
    " expires_at, attempt, started_at, finished_at, lease, lease_ms, lease_expires_at,"            \
    " timeout_at, worker, cancel_requested, progress, step, total_steps, progress_message,"        \
    " error, result, ready_at, seq, log_seq, nlogs"

#define RUNNING_KEY                                                                                \
    "(CASE WHEN timeout_at <> 0 AND timeout_at < lease_expires_at THEN timeout_at"                 \
    " ELSE lease_expires_at END)"

/* A task row: the public snapshot plus what only the store keeps. */
typedef struct prow {
    th_task t;
    int64_t lease_ms, timeout_at, ready_at, seq, log_seq, nlogs;
    const char *qname; /* interned */
} prow;

typedef struct rows {
    prow **v;
    size_t n;
} rows;

/* A row is allocated as one block that starts with its th_task, so the
 * snapshot's destructor frees it whole. */
static void prow_free(prow *r)
{
    th_task_free(r ? &r->t : NULL);
}

static void rows_free(rows *rs)
{
    for (size_t i = 0; i < rs->n; i++)
        prow_free(rs->v[i]);
    th__free(rs->v);
    rs->v = NULL;
    rs->n = 0;
}

static int dup(char **slot, const char *s)
{
    *slot = NULL;
    return !s || (*slot = th__strdup(s)) != NULL;
}

static void set_str(char **slot, const char *s)
{
    th__free(*slot);
    *slot = s ? th__strdup(s) : NULL;
}

/* Fills a row from result row i of a SELECT COLS; NULL on OOM. */
static prow *row_from(th__pg *p, const PGresult *r, int i)
{
    prow *w = th__calloc(1, sizeof *w);
    if (!w)
        return NULL;
    th_task *t = &w->t;
    int c = 0;
    snprintf(t->id, sizeof t->id, "%s", PQgetvalue(r, i, c++));
    int ok = dup(&t->queue, th__pg_str(r, i, c++));
    t->state = (th_task_state)th__pg_i64(r, i, c++);
    t->priority = (int)th__pg_i64(r, i, c++);
    ok = ok && dup(&t->payload, th__pg_str(r, i, c++));
    ok = ok && dup(&t->metadata, th__pg_str(r, i, c++));
    ok = ok && dup(&t->unique_key, th__pg_str(r, i, c++));
    const char *deps = th__pg_str(r, i, c++);
    t->timeout_ms = th__pg_i64(r, i, c++);
    t->retry.max_retries = (int)th__pg_i64(r, i, c++);
    t->retry.initial_delay_ms = th__pg_i64(r, i, c++);
    t->retry.max_delay_ms = th__pg_i64(r, i, c++);
    t->retry.multiplier = strtod(PQgetvalue(r, i, c++), NULL);
    t->retry.jitter = strtod(PQgetvalue(r, i, c++), NULL);
    t->created_at = th__pg_i64(r, i, c++);
    t->run_at = th__pg_i64(r, i, c++);
    t->expires_at = th__pg_i64(r, i, c++);
    t->attempt = (int)th__pg_i64(r, i, c++);
    t->started_at = th__pg_i64(r, i, c++);
    t->finished_at = th__pg_i64(r, i, c++);
    t->lease = (uint64_t)th__pg_i64(r, i, c++);
    w->lease_ms = th__pg_i64(r, i, c++);
    t->lease_expires_at = th__pg_i64(r, i, c++);
    w->timeout_at = th__pg_i64(r, i, c++);
    ok = ok && dup(&t->worker, th__pg_str(r, i, c++));
    t->cancel_requested = (int)th__pg_i64(r, i, c++);
    t->progress = (int)th__pg_i64(r, i, c++);
    t->step = (int)th__pg_i64(r, i, c++);
    t->total_steps = (int)th__pg_i64(r, i, c++);
    ok = ok && dup(&t->progress_message, th__pg_str(r, i, c++));
    ok = ok && dup(&t->error, th__pg_str(r, i, c++));
    ok = ok && dup(&t->result, th__pg_str(r, i, c++));
    w->ready_at = th__pg_i64(r, i, c++);
    w->seq = th__pg_i64(r, i, c++);
    w->log_seq = th__pg_i64(r, i, c++);
    w->nlogs = th__pg_i64(r, i, c++);
    size_t dl = deps ? strlen(deps) / TH_ID_LEN : 0;
    if (ok && dl) {
        /* Ids have a fixed length, so the list is stored as one string. */
        char **v = th__malloc(dl * (sizeof(char *) + TH_ID_SIZE));
        if (v) {
            char *ids = (char *)(v + dl);
            for (size_t k = 0; k < dl; k++) {
                v[k] = ids + k * TH_ID_SIZE;
                memcpy(v[k], deps + k * TH_ID_LEN, TH_ID_LEN);
                v[k][TH_ID_LEN] = '\0';
            }
            t->deps = v;
            t->ndeps = dl;
        } else {
            ok = 0;
        }
    }
    if (ok && !(w->qname = th__pg_intern(p, t->queue)))
        ok = 0;
    if (!ok) {
        prow_free(w);
        return NULL;
    }
    return w;
}

/* Turns a row into a caller-owned snapshot (th_task_free frees it, block and
 * all), consuming it. */
static th_task *row_take(prow *w)
{
    return &w->t;
}

/* A text[] literal of `n` strings, each quoted; NULL on OOM. */
static char *text_array(const char *const *v, size_t n)
{
    size_t len = 3;
    for (size_t i = 0; i < n; i++)
        len += 2 * strlen(v[i]) + 3;
    char *s = th__malloc(len), *o = s;
    if (!s)
        return NULL;
    *o++ = '{';
    for (size_t i = 0; i < n; i++) {
        if (i)
            *o++ = ',';
        *o++ = '"';
        for (const char *q = v[i]; *q; q++) {
            if (*q == '"' || *q == '\\')
                *o++ = '\\';
            *o++ = *q;
        }
        *o++ = '"';
    }
    *o++ = '}';
    *o = '\0';
    return s;
}

/* Runs a SELECT COLS and collects its rows. Returns 0, TH_ENOMEM, or TH_EIO
 * (tx->dberr set). */
static int select_rows(th__pg_tx *tx, const char *sql, const th__pg_params *pr, rows *out)
{
    out->v = NULL;
    out->n = 0;
    PGresult *r = th__pg_exec(tx, sql, pr);
    if (!r)
        return TH_EIO;
    int n = PQntuples(r), rc = 0;
    if (n && !(out->v = th__calloc((size_t)n, sizeof *out->v)))
        rc = TH_ENOMEM;
    for (int i = 0; i < n && !rc; i++) {
        if (!(out->v[i] = row_from(tx->p, r, i)))
            rc = TH_ENOMEM;
        else
            out->n++;
    }
    PQclear(r);
    if (rc)
        rows_free(out);
    return rc;
}

/* Loads and locks one task. Returns 0 with *out set, TH_ENOTFOUND, or an
 * error. */
static int load(th__pg_tx *tx, const char *id, int lock, prow **out)
{
    th__pg_params pr = {.n = 0};
    th__pg_p_str(&pr, id);
    rows rs;
    int rc = select_rows(tx,
                         lock ? "SELECT " COLS " FROM th_tasks WHERE id = $1 FOR UPDATE"
                              : "SELECT " COLS " FROM th_tasks WHERE id = $1",
                         &pr, &rs);
    if (rc)
        return rc;
    if (rs.n == 0) {
        rows_free(&rs);
        return TH_ENOTFOUND;
    }
    *out = rs.v[0];
    th__free(rs.v);
    return 0;
}

/* Writes a row's changeable columns back. */
static int store_row(th__pg_tx *tx, const prow *w)
{
    const th_task *t = &w->t;
    th__pg_params pr = {.n = 0};
    th__pg_p_str(&pr, t->id);
    th__pg_p_i64(&pr, t->state);
    th__pg_p_i64(&pr, t->attempt);
    th__pg_p_i64(&pr, t->run_at);
    th__pg_p_i64(&pr, t->expires_at);
    th__pg_p_i64(&pr, t->started_at);
    th__pg_p_i64(&pr, t->finished_at);
    th__pg_p_i64(&pr, (int64_t)t->lease);
    th__pg_p_i64(&pr, w->lease_ms);
    th__pg_p_i64(&pr, t->lease_expires_at);
    th__pg_p_i64(&pr, w->timeout_at);
    th__pg_p_str(&pr, t->worker);
    th__pg_p_i64(&pr, t->cancel_requested);
    th__pg_p_i64(&pr, t->progress);
    th__pg_p_i64(&pr, t->step);
    th__pg_p_i64(&pr, t->total_steps);
    th__pg_p_str(&pr, t->progress_message);
    th__pg_p_str(&pr, t->error);
    th__pg_p_str(&pr, t->result);
    th__pg_p_i64(&pr, w->ready_at);
    return th__pg_cmd(tx,
                      "UPDATE th_tasks SET state=$2, attempt=$3, run_at=$4, expires_at=$5,"
                      " started_at=$6, finished_at=$7, lease=$8, lease_ms=$9,"
                      " lease_expires_at=$10, timeout_at=$11, worker=$12, cancel_requested=$13,"
                      " progress=$14, step=$15, total_steps=$16, progress_message=$17,"
                      " error=$18, result=$19, ready_at=$20 WHERE id=$1",
                      &pr)
               ? TH_EIO
               : 0;
}

/* ---- transitions, as in qcore ---------------------------------------------- */

static int64_t running_key(const prow *w)
{
    return w->timeout_at && w->timeout_at < w->t.lease_expires_at ? w->timeout_at
                                                                  : w->t.lease_expires_at;
}

static int is_failure(th_task_state s)
{
    return s == TH_TASK_FAILED || s == TH_TASK_CANCELLED || s == TH_TASK_TIMEOUT ||
           s == TH_TASK_EXPIRED;
}

/* qcore's enter(): sets the state and notes readiness and deadlines. */
static void place(th__pg_tx *tx, prow *w, th_task_state s)
{
    th__evbuf *ev = &tx->pend;
    w->t.state = s;
    switch (s) {
    case TH_TASK_PENDING:
        w->ready_at = tx->now;
        th__evbuf_ready(ev, w->qname);
        break;
    case TH_TASK_SCHEDULED:
        th__evbuf_deadline(ev, w->t.run_at);
        break;
    case TH_TASK_RUNNING:
        th__evbuf_deadline(ev, running_key(w));
        break;
    default:
        break;
    }
    if (w->t.expires_at && (s == TH_TASK_PENDING || s == TH_TASK_SCHEDULED || s == TH_TASK_BLOCKED))
        th__evbuf_deadline(ev, w->t.expires_at);
}

static void emit_as(th__pg_tx *tx, th_event_type type, const prow *w, th_task_state state,
                    const char *msg)
{
    th__evbuf_add(&tx->pend, type, w->t.id, w->qname, state, w->t.attempt, w->t.progress, msg,
                  tx->now);
}

static void emit(th__pg_tx *tx, th_event_type type, const prow *w, const char *msg)
{
    emit_as(tx, type, w, w->t.state, msg);
}

/* Blocked tasks that wait on `id`, locked, in submission order. */
static int blocked_dependents(th__pg_tx *tx, const char *id, rows *out)
{
    th__pg_params pr = {.n = 0};
    th__pg_p_str(&pr, id);
    return select_rows(tx,
                       "SELECT " COLS " FROM th_tasks WHERE state = 2 AND id IN"
                       " (SELECT task_id FROM th_deps WHERE dep_id = $1) ORDER BY seq FOR UPDATE",
                       &pr, out);
}

/* Cancels, transitively, every blocked task waiting on `root`, which just
 * ended without completing; the same depth-first order as qcore's stack. */
static int cascade(th__pg_tx *tx, const prow *root)
{
    size_t n = 0, cap = 16;
    char(*stack)[TH_ID_SIZE] = th__malloc(cap * TH_ID_SIZE);
    if (!stack)
        return TH_ENOMEM;
    th_task_state *states = th__malloc(cap * sizeof *states);
    if (!states) {
        th__free(stack);
        return TH_ENOMEM;
    }
    memcpy(stack[n], root->t.id, TH_ID_SIZE);
    states[n++] = root->t.state;
    int rc = 0;
    while (n && !rc) {
        char id[TH_ID_SIZE];
        n--;
        memcpy(id, stack[n], TH_ID_SIZE);
        th_task_state st = states[n];
        rows ds;
        if ((rc = blocked_dependents(tx, id, &ds)))
            break;
        for (size_t i = 0; i < ds.n && !rc; i++) {
            prow *d = ds.v[i];
            char msg[128];
            snprintf(msg, sizeof msg, "dependency %s ended %s", id, th_task_state_name(st));
            set_str(&d->t.error, msg);
            d->t.finished_at = tx->now;
            place(tx, d, TH_TASK_CANCELLED);
            if ((rc = store_row(tx, d)))
                break;
            emit(tx, TH_EV_CANCELLED, d, msg);
            if (n == cap) {
                cap *= 2;
                void *a = th__realloc(stack, cap * TH_ID_SIZE);
                if (a)
                    stack = a;
                void *b = a ? th__realloc(states, cap * sizeof *states) : NULL;
                if (b)
                    states = b;
                if (!a || !b) {
                    rc = TH_ENOMEM;
                    break;
                }
            }
            memcpy(stack[n], d->t.id, TH_ID_SIZE);
            states[n++] = TH_TASK_CANCELLED;
        }
        rows_free(&ds);
    }
    th__free(stack);
    th__free(states);
    return rc;
}

/* Pending when run_at has come, else scheduled. */
static void release(th__pg_tx *tx, prow *w)
{
    if (w->t.run_at > tx->now) {
        place(tx, w, TH_TASK_SCHEDULED);
    } else {
        place(tx, w, TH_TASK_PENDING);
        emit(tx, TH_EV_READY, w, NULL);
    }
}

/* Releases the blocked dependents of `w`, which just completed (and whose row
 * is written), whose dependencies are now all complete. */
static int unblock(th__pg_tx *tx, const prow *w)
{
    rows ds;
    int rc = blocked_dependents(tx, w->t.id, &ds);
    for (size_t i = 0; i < ds.n && !rc; i++) {
        prow *d = ds.v[i];
        th__pg_params pr = {.n = 0};
        th__pg_p_str(&pr, d->t.id);
        PGresult *r =
            th__pg_exec(tx,
                        "SELECT count(*) FROM th_deps d JOIN th_tasks x ON x.id = d.dep_id"
                        " WHERE d.task_id = $1 AND x.state <> 4",
                        &pr);
        if (!r) {
            rc = TH_EIO;
            break;
        }
        int64_t unmet = th__pg_i64(r, 0, 0);
        PQclear(r);
        if (unmet == 0) {
            release(tx, d);
            rc = store_row(tx, d);
        }
    }
    rows_free(&ds);
    return rc;
}

static int64_t backoff(th__pg *p, const prow *w)
{
    const th_retry_policy *pol = &w->t.retry;
    double d = (double)pol->initial_delay_ms *
               pow(pol->multiplier, w->t.attempt > 0 ? w->t.attempt - 1 : 0);
    if (d > (double)pol->max_delay_ms)
        d = (double)pol->max_delay_ms;
    if (pol->jitter > 0) {
        pthread_mutex_lock(&p->smu);
        d *= 1.0 + pol->jitter * (2.0 * th__rng_unit(&p->rng) - 1.0);
        pthread_mutex_unlock(&p->smu);
    }
    return d < 0 ? 0 : (int64_t)d;
}

static void end_lease(prow *w)
{
    w->t.lease = 0;
    w->t.lease_expires_at = 0;
    w->timeout_at = 0;
}

/* qcore's finish_attempt(): cancelled when asked for, else retried per the
 * policy, else final. Writes the row. */
static int finish_attempt(th__pg_tx *tx, prow *w, int flags)
{
    int64_t now = tx->now;
    int rc;
    end_lease(w);
    if ((flags & TH_FAIL_RELEASE) && !w->t.cancel_requested) {
        w->t.attempt--;
        w->t.run_at = now;
        place(tx, w, TH_TASK_PENDING);
        emit(tx, TH_EV_READY, w, w->t.error);
        return store_row(tx, w);
    }
    tx->d.failed_attempts++;
    if (w->t.cancel_requested) {
        w->t.finished_at = now;
        place(tx, w, TH_TASK_CANCELLED);
        emit(tx, TH_EV_CANCELLED, w, w->t.error);
        if ((rc = store_row(tx, w)))
            return rc;
        return cascade(tx, w);
    }
    if (!(flags & TH_FAIL_PERMANENT) && w->t.attempt <= w->t.retry.max_retries) {
        w->t.run_at = now + backoff(tx->p, w);
        tx->d.retries++;
        th_task_state next = w->t.run_at > now ? TH_TASK_SCHEDULED : TH_TASK_PENDING;
        emit_as(tx, TH_EV_FAILED, w, next, w->t.error);
        emit_as(tx, TH_EV_RETRYING, w, next, NULL);
        place(tx, w, next);
        if (next == TH_TASK_PENDING)
            emit(tx, TH_EV_READY, w, NULL);
        return store_row(tx, w);
    }
    w->t.finished_at = now;
    place(tx, w, (flags & TH_FAIL_TIMEOUT) ? TH_TASK_TIMEOUT : TH_TASK_FAILED);
    emit(tx, TH_EV_FAILED, w, w->t.error);
    if ((rc = store_row(tx, w)))
        return rc;
    return cascade(tx, w);
}

static int expire(th__pg_tx *tx, prow *w)
{
    set_str(&w->t.error, "expired before it could run");
    w->t.finished_at = tx->now;
    place(tx, w, TH_TASK_EXPIRED);
    emit(tx, TH_EV_EXPIRED, w, w->t.error);
    int rc = store_row(tx, w);
    return rc ? rc : cascade(tx, w);
}

/* ---- configure and submit --------------------------------------------------- */

static int configure_body(th__pg_tx *tx, void *arg)
{
    const th__store_config *cfg = arg;
    if (!cfg->max_logs_per_task)
        return 0;
    /* Logs written under a larger limit. */
    th__pg_params pr = {.n = 0};
    th__pg_p_i64(&pr, (int64_t)cfg->max_logs_per_task);
    if (th__pg_cmd(tx,
                   "DELETE FROM th_logs l USING (SELECT task_id, seq, row_number() OVER"
                   " (PARTITION BY task_id ORDER BY seq DESC) AS rn FROM th_logs) x"
                   " WHERE l.task_id = x.task_id AND l.seq = x.seq AND x.rn > $1",
                   &pr) ||
        th__pg_cmd(tx, "UPDATE th_tasks SET nlogs = $1 WHERE nlogs > $1", &pr))
        return TH_EIO;
    return 0;
}

static int pg_configure(th_store *s, const th__store_config *cfg)
{
    th__pg *p = (th__pg *)s;
    pthread_mutex_lock(&p->smu);
    p->cfg = *cfg;
    th__rng_seed(&p->rng, cfg->seed);
    pthread_mutex_unlock(&p->smu);
    th__store_config c = *cfg;
    return th__pg_run(p, TH_PG_DURABLE, configure_body, &c, 0, NULL, NULL);
}

/* New task rows waiting to go to the database in one statement: one array
 * per column, unnested into a multi-row INSERT, with the queues they name
 * created alongside. One statement of fixed text whatever the batch size, so
 * the server parses it cheaply. */
enum {
    C_ID,
    C_QUEUE,
    C_STATE,
    C_PRIORITY,
    C_PAYLOAD,
    C_METADATA,
    C_UNIQUE,
    C_DEPS,
    C_TIMEOUT,
    C_RETRIES,
    C_INITIAL,
    C_MAXDELAY,
    C_MULT,
    C_JITTER,
    C_RUN_AT,
    C_EXPIRES,
    C_FINISHED,
    C_ERROR,
    C_READY_AT,
    C_QUEUES,
    NCOL
};

typedef struct ins_batch {
    th__pg_stmt col[NCOL];
    size_t rows;
    const char *queues[16]; /* interned, distinct */
    size_t nqueues;
} ins_batch;

typedef struct submit_arg {
    th__submit *items;
    size_t n;
    th_error *err;
    ins_batch b;
} submit_arg;

static void ins_reset(ins_batch *b)
{
    for (int i = 0; i < NCOL; i++)
        th__pg_s_free(&b->col[i]);
    b->rows = 0;
    b->nqueues = 0;
}

/* Sends the batch's rows; the batch is empty again after. */
static int ins_flush(th__pg_tx *tx, ins_batch *b)
{
    if (!b->rows)
        return 0;
    for (size_t i = 0; i < b->nqueues; i++)
        th__pg_s_elem(&b->col[C_QUEUES], b->queues[i]);
    th__pg_params pr = {.n = 0};
    int oom = 0;
    for (int i = 0; i < NCOL; i++) {
        const char *v = th__pg_s_array(&b->col[i]);
        oom |= !v;
        th__pg_p_str(&pr, v);
    }
    th__pg_p_i64(&pr, tx->now);
    int rc = oom ? TH_ENOMEM : 0;
    if (!rc &&
        th__pg_cmd(tx,
                   "WITH t AS (INSERT INTO th_tasks (id, queue, state, priority, payload, metadata,"
                   " unique_key, deps, timeout_ms, max_retries, retry_initial_ms, retry_max_ms,"
                   " retry_multiplier, retry_jitter, run_at, expires_at, finished_at, error,"
                   " ready_at, created_at, attempt, started_at, lease, lease_ms,"
                   " lease_expires_at, timeout_at, cancel_requested, progress, step, total_steps)"
                   " SELECT u.*, $21::bigint, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 FROM unnest($1::text[],"
                   " $2::text[], $3::smallint[], $4::int[], $5::text[], $6::text[], $7::text[],"
                   " $8::text[], $9::bigint[], $10::int[], $11::bigint[], $12::bigint[],"
                   " $13::float8[], $14::float8[], $15::bigint[], $16::bigint[], $17::bigint[],"
                   " $18::text[], $19::bigint[]) AS u RETURNING 1)"
                   " INSERT INTO th_queues (name) SELECT unnest($20::text[])"
                   " ON CONFLICT DO NOTHING",
                   &pr))
        rc = TH_EIO;
    ins_reset(b);
    return rc;
}

/* Adds one new task's row to the batch (flushing first when its queue list
 * is full). */
static int ins_add(th__pg_tx *tx, ins_batch *b, const th__submit *it, const char *qname,
                   const char *deps, th_task_state first, const char *error)
{
    size_t k = 0;
    while (k < b->nqueues && b->queues[k] != qname)
        k++;
    if (k == b->nqueues && b->nqueues == sizeof b->queues / sizeof b->queues[0]) {
        int rc = ins_flush(tx, b);
        if (rc)
            return rc;
        k = 0;
    }
    if (k == b->nqueues)
        b->queues[b->nqueues++] = qname;
    const th_task_spec *sp = it->spec;
    th__pg_stmt *c = b->col;
    char num[2][32];
    snprintf(num[0], sizeof num[0], "%.17g", sp->retry.multiplier);
    snprintf(num[1], sizeof num[1], "%.17g", sp->retry.jitter);
    th__pg_s_elem(&c[C_ID], it->id);
    th__pg_s_elem(&c[C_QUEUE], sp->queue);
    th__pg_s_elem_i64(&c[C_STATE], first);
    th__pg_s_elem_i64(&c[C_PRIORITY], sp->priority);
    th__pg_s_elem(&c[C_PAYLOAD], sp->payload ? sp->payload : "null");
    th__pg_s_elem(&c[C_METADATA], sp->metadata);
    th__pg_s_elem(&c[C_UNIQUE], sp->unique_key);
    th__pg_s_elem(&c[C_DEPS], deps);
    th__pg_s_elem_i64(&c[C_TIMEOUT], sp->timeout_ms);
    th__pg_s_elem_i64(&c[C_RETRIES], sp->retry.max_retries);
    th__pg_s_elem_i64(&c[C_INITIAL], sp->retry.initial_delay_ms);
    th__pg_s_elem_i64(&c[C_MAXDELAY], sp->retry.max_delay_ms);
    th__pg_s_elem(&c[C_MULT], num[0]);
    th__pg_s_elem(&c[C_JITTER], num[1]);
    th__pg_s_elem_i64(&c[C_RUN_AT], it->run_at);
    th__pg_s_elem_i64(&c[C_EXPIRES], sp->expires_at_ms);
    th__pg_s_elem_i64(&c[C_FINISHED], first == TH_TASK_CANCELLED ? tx->now : 0);
    th__pg_s_elem(&c[C_ERROR], error);
    th__pg_s_elem_i64(&c[C_READY_AT], first == TH_TASK_PENDING ? tx->now : 0);
    b->rows++;
    for (int i = 0; i < NCOL; i++)
        if (c[i].oom)
            return TH_ENOMEM;
    return b->rows >= 1000 ? ins_flush(tx, b) : 0; /* bounds the statement */
}

static int queued_count(th__pg_tx *tx, int64_t *out)
{
    PGresult *r = th__pg_exec(tx, "SELECT count(*) FROM th_tasks WHERE state IN (0, 1, 2)", NULL);
    if (!r)
        return TH_EIO;
    *out = th__pg_i64(r, 0, 0);
    PQclear(r);
    return 0;
}

/* Resolves item i's dependencies, locking them (FOR SHARE) so a concurrent
 * completion waits for this commit and then sees the new dependent. Fills
 * deps (the ids as one string), *unmet, and the last failed one. */
static int resolve_deps(th__pg_tx *tx, submit_arg *a, size_t i, char *deps, int *unmet,
                        char failed_id[TH_ID_SIZE], th_task_state *failed_state)
{
    const th_task_spec *sp = a->items[i].spec;
    char prefix[32] = "";
    if (a->n > 1)
        snprintf(prefix, sizeof prefix, "tasks[%zu].", i);
    int rc = 0;
    for (size_t k = 0; k < sp->ndeps && !rc; k++) {
        char *d = deps + k * TH_ID_LEN;
        char id[TH_ID_SIZE];
        if (sp->deps[k][0] == '$') /* "$j": item j of this batch, checked by the engine */
            memcpy(id, a->items[strtoul(sp->deps[k] + 1, NULL, 10)].id, TH_ID_SIZE);
        else
            snprintf(id, sizeof id, "%s", sp->deps[k]);
        memcpy(d, id, TH_ID_LEN);
        th__pg_params pr = {.n = 0};
        th__pg_p_str(&pr, id);
        PGresult *r = th__pg_exec(tx, "SELECT state FROM th_tasks WHERE id = $1 FOR SHARE", &pr);
        if (!r)
            return TH_EIO;
        if (PQntuples(r) == 0) {
            char field[64];
            snprintf(field, sizeof field, "%sdeps[%zu]", prefix, k);
            rc = th__err(a->err, TH_ENOTFOUND, field, "dependency %s does not exist", id);
        } else {
            th_task_state ds = (th_task_state)th__pg_i64(r, 0, 0);
            if (is_failure(ds)) {
                memcpy(failed_id, id, TH_ID_SIZE);
                *failed_state = ds;
            } else if (ds != TH_TASK_COMPLETED) {
                (*unmet)++;
            }
        }
        PQclear(r);
    }
    deps[sp->ndeps * TH_ID_LEN] = '\0';
    return rc;
}

/* One item of a submit: deduplicates, resolves dependencies, adds the row to
 * the batch, notes events. Items that look at the database (a unique key,
 * dependencies) first flush the rows before them, so they see them. */
static int submit_one(th__pg_tx *tx, submit_arg *a, size_t i)
{
    th__submit *it = &a->items[i];
    const th_task_spec *sp = it->spec;
    int rc;
    it->deduplicated = 0;
    if ((sp->unique_key || sp->ndeps) && (rc = ins_flush(tx, &a->b)))
        return rc;
    if (sp->unique_key) {
        th__pg_params pr = {.n = 0};
        th__pg_p_str(&pr, sp->unique_key);
        PGresult *r = th__pg_exec(tx, "SELECT id FROM th_tasks WHERE unique_key = $1", &pr);
        if (!r)
            return TH_EIO;
        int found = PQntuples(r) > 0;
        if (found) {
            snprintf(it->id, TH_ID_SIZE, "%s", PQgetvalue(r, 0, 0));
            it->deduplicated = 1;
        }
        PQclear(r);
        if (found)
            return 0;
    }
    const char *qname = th__pg_intern(tx->p, sp->queue);
    char *deps = sp->ndeps ? th__malloc(sp->ndeps * TH_ID_LEN + 1) : NULL;
    if (!qname || (sp->ndeps && !deps))
        return th__err(a->err, TH_ENOMEM, NULL, "out of memory");
    pthread_mutex_lock(&tx->p->smu);
    th__ulid_next(&tx->p->ids, tx->now, it->id);
    pthread_mutex_unlock(&tx->p->smu);
    int unmet = 0;
    char failed_id[TH_ID_SIZE] = "";
    th_task_state failed_state = TH_TASK_FAILED;
    rc = deps ? resolve_deps(tx, a, i, deps, &unmet, failed_id, &failed_state) : 0;
    th_task_state first = failed_id[0]           ? TH_TASK_CANCELLED
                          : unmet                ? TH_TASK_BLOCKED
                          : it->run_at > tx->now ? TH_TASK_SCHEDULED
                                                 : TH_TASK_PENDING;
    char msg[128] = "";
    if (failed_id[0])
        snprintf(msg, sizeof msg, "dependency %s ended %s", failed_id,
                 th_task_state_name(failed_state));
    if (!rc)
        rc = ins_add(tx, &a->b, it, qname, deps, first, failed_id[0] ? msg : NULL);
    if (!rc && deps) {
        /* The dependency edges need the row. */
        rc = ins_flush(tx, &a->b);
        for (size_t k = 0; k < sp->ndeps && !rc; k++) {
            char d[TH_ID_SIZE];
            memcpy(d, deps + k * TH_ID_LEN, TH_ID_LEN);
            d[TH_ID_LEN] = '\0';
            th__pg_params dp = {.n = 0};
            th__pg_p_str(&dp, d);
            th__pg_p_str(&dp, it->id);
            if (th__pg_cmd(tx,
                           "INSERT INTO th_deps (dep_id, task_id) VALUES ($1, $2)"
                           " ON CONFLICT DO NOTHING",
                           &dp))
                rc = TH_EIO;
        }
    }
    th__free(deps);
    if (rc)
        return rc;
    th__evbuf_add(&tx->pend, TH_EV_SUBMITTED, it->id, qname, first, 0, 0, NULL, tx->now);
    prow w = {.t = {.run_at = it->run_at, .expires_at = sp->expires_at_ms}, .qname = qname};
    memcpy(w.t.id, it->id, TH_ID_SIZE);
    place(tx, &w, first);
    if (first == TH_TASK_CANCELLED)
        emit(tx, TH_EV_CANCELLED, &w, msg);
    else if (first == TH_TASK_PENDING)
        emit(tx, TH_EV_READY, &w, NULL);
    tx->d.submitted++;
    return 0;
}

static int submit_body(th__pg_tx *tx, void *arg)
{
    submit_arg *a = arg;
    size_t max = tx->p->cfg.max_queued;
    if (max) {
        int64_t queued;
        if (queued_count(tx, &queued))
            return TH_EIO;
        if ((size_t)queued + a->n > max)
            return th__err(a->err, TH_EBUSY, NULL, "queue full: %zu tasks waiting (limit %zu)",
                           (size_t)queued, max);
    }
    int rc = 0;
    for (size_t i = 0; i < a->n && !rc; i++)
        rc = submit_one(tx, a, i);
    if (!rc)
        rc = ins_flush(tx, &a->b);
    ins_reset(&a->b);
    if (rc == TH_ENOMEM)
        th__err(a->err, TH_ENOMEM, NULL, "out of memory");
    if (rc)
        tx->abort = 1; /* the batch is all or nothing */
    return rc;
}

static int pg_submit(th_store *s, th__submit *items, size_t n, int64_t now, th__evbuf *ev,
                     th_error *err)
{
    submit_arg a = {.items = items, .n = n, .err = err};
    return th__pg_run((th__pg *)s, TH_PG_DURABLE, submit_body, &a, now, ev, err);
}

/* ---- claim and the worker's calls -------------------------------------------- */

typedef struct claim_arg {
    const th__claim *c;
    th_task **out;
    int nout;     /* snapshots in out: an attempt that did not commit leaves them */
    char *queues; /* a text[] literal, or NULL for every queue */
} claim_arg;

/* Frees what an earlier attempt put in out. */
static void claim_discard(claim_arg *a)
{
    for (int i = 0; i < a->nout; i++)
        th_task_free(a->out[i]);
    a->nout = 0;
}

/* Rows to update in one statement: their ids and one value each, sent as
 * two arrays that the statement unnests. */
typedef struct pairs {
    th__pg_stmt ids, vals;
    int n;
} pairs;

static void pairs_add(pairs *p, const char *id, const char *val)
{
    th__pg_s_elem(&p->ids, id);
    th__pg_s_elem(&p->vals, val);
    p->n++;
}

/* Runs `sql` with $1 the ids and $2 the values, whose slots the caller
 * left free in `pr` (it starts with .n = 2 and adds $3...), then empties
 * the batch. */
static int pairs_flush(th__pg_tx *tx, pairs *p, const char *sql, th__pg_params *pr)
{
    int rc = 0;
    if (p->n) {
        pr->v[0] = th__pg_s_array(&p->ids);
        pr->v[1] = th__pg_s_array(&p->vals);
        rc = !pr->v[0] || !pr->v[1] ? TH_ENOMEM : th__pg_cmd(tx, sql, pr) ? TH_EIO : 0;
    }
    th__pg_s_free(&p->ids);
    th__pg_s_free(&p->vals);
    p->n = 0;
    return rc;
}

static int claim_body(th__pg_tx *tx, void *arg)
{
    claim_arg *a = arg;
    const th__claim *cl = a->c;
    int k = 0, rc = 0;
    claim_discard(a);
    while ((size_t)k < cl->max_tasks) {
        th__pg_params pr = {.n = 0};
        th__pg_p_str(&pr, a->queues);
        th__pg_p_i64(&pr, (int64_t)cl->max_tasks - k);
        rows rs;
        rc = select_rows(tx,
                         "SELECT " COLS " FROM th_tasks WHERE state = 0"
                         " AND ($1::text[] IS NULL OR queue = ANY ($1::text[]))"
                         " AND queue NOT IN (SELECT name FROM th_queues WHERE paused)"
                         " ORDER BY priority DESC, seq LIMIT $2 FOR UPDATE SKIP LOCKED",
                         &pr, &rs);
        if (rc)
            break;
        size_t nrows = rs.n, expired = 0;
        pairs up = {0};
        for (size_t i = 0; i < rs.n && !rc; i++) {
            prow *w = rs.v[i];
            if (w->t.expires_at && w->t.expires_at <= tx->now) {
                rc = expire(tx, w);
                expired++;
                continue;
            }
            tx->d.wait_ms_sum += (double)(tx->now - w->ready_at);
            tx->d.wait_n++;
            w->t.attempt++;
            pthread_mutex_lock(&tx->p->smu);
            /* The node's random id is mixed in: nodes seeded alike must
             * still not hand out the same tokens. */
            w->t.lease = ((th__rng_next(&tx->p->rng) ^ tx->p->node) & ((1ULL << 53) - 1)) | 1;
            pthread_mutex_unlock(&tx->p->smu);
            w->lease_ms = cl->lease_ms;
            w->t.lease_expires_at = tx->now + cl->lease_ms;
            w->timeout_at = w->t.timeout_ms ? tx->now + w->t.timeout_ms : 0;
            w->t.started_at = tx->now;
            w->t.progress = w->t.step = w->t.total_steps = 0;
            set_str(&w->t.progress_message, NULL);
            set_str(&w->t.worker, cl->worker);
            if (cl->worker && !w->t.worker) {
                rc = TH_ENOMEM;
                break;
            }
            place(tx, w, TH_TASK_RUNNING);
            char lease[24];
            snprintf(lease, sizeof lease, "%" PRIu64, w->t.lease);
            pairs_add(&up, w->t.id, lease);
            emit(tx, TH_EV_ASSIGNED, w, w->t.worker);
            emit(tx, TH_EV_STARTED, w, NULL);
            a->out[k++] = row_take(w);
            a->nout = k;
            rs.v[i] = NULL;
        }
        th__pg_params more = {.n = 2};
        th__pg_p_i64(&more, cl->lease_ms);
        th__pg_p_i64(&more, tx->now);
        th__pg_p_str(&more, cl->worker);
        int frc = pairs_flush(tx, &up,
                              "UPDATE th_tasks t SET state = 3, attempt = t.attempt + 1,"
                              " lease = v.lease, lease_ms = $3::bigint,"
                              " lease_expires_at = $3::bigint + $4::bigint,"
                              " timeout_at = CASE WHEN t.timeout_ms <> 0 THEN"
                              " t.timeout_ms + $4::bigint ELSE 0 END, started_at = $4::bigint,"
                              " progress = 0, step = 0,"
                              " total_steps = 0, progress_message = NULL, worker = $5"
                              " FROM unnest($1::text[], $2::bigint[]) AS v (id, lease)"
                              " WHERE t.id = v.id",
                              &more);
        if (!rc)
            rc = frc;
        rows_free(&rs);
        if (rc || expired == 0 || nrows == 0)
            break; /* with no expired row, fewer rows means the queues ran dry */
    }
    if (rc)
        claim_discard(a);
    return rc ? rc : k;
}

static int pg_claim(th_store *s, const th__claim *c, int64_t now, th_task **out, th__evbuf *ev)
{
    claim_arg a = {.c = c, .out = out};
    if (c->nqueues && !(a.queues = text_array(c->queues, c->nqueues)))
        return TH_ENOMEM;
    int rc = th__pg_run((th__pg *)s, TH_PG_ASYNC, claim_body, &a, now, ev, NULL);
    if (rc < 0)
        claim_discard(&a); /* the last attempt's COMMIT failed */
    th__free(a.queues);
    return rc;
}

/* Loads a running task held with `lease`, locked, or says why not. */
static int leased(th__pg_tx *tx, const char *id, uint64_t lease, prow **out)
{
    prow *w;
    int rc = load(tx, id, 1, &w);
    if (rc)
        return rc;
    if (w->t.state != TH_TASK_RUNNING || w->t.lease != lease) {
        prow_free(w);
        return TH_ESTALE;
    }
    *out = w;
    return 0;
}

static void extend(th__pg_tx *tx, prow *w, int64_t extend_ms)
{
    w->t.lease_expires_at = tx->now + (extend_ms > 0 ? extend_ms : w->lease_ms);
    th__evbuf_deadline(&tx->pend, running_key(w));
}

typedef struct worker_arg {
    const char *id;
    uint64_t lease;
    int64_t extend_ms;
    int *cancel_requested;
    int percent, step, total, flags;
    th_log_level level;
    const char *message, *data;
} worker_arg;

static int heartbeat_body(th__pg_tx *tx, void *arg)
{
    worker_arg *a = arg;
    prow *w;
    int rc = leased(tx, a->id, a->lease, &w);
    if (rc)
        return rc;
    extend(tx, w, a->extend_ms);
    if (a->cancel_requested)
        *a->cancel_requested = w->t.cancel_requested;
    rc = store_row(tx, w);
    prow_free(w);
    return rc;
}

static int pg_heartbeat(th_store *s, const char *id, uint64_t lease, int64_t extend_ms, int64_t now,
                        int *cancel_requested, th__evbuf *ev)
{
    worker_arg a = {
        .id = id, .lease = lease, .extend_ms = extend_ms, .cancel_requested = cancel_requested};
    return th__pg_run((th__pg *)s, TH_PG_ASYNC, heartbeat_body, &a, now, ev, NULL);
}

static int progress_body(th__pg_tx *tx, void *arg)
{
    worker_arg *a = arg;
    prow *w;
    int rc = leased(tx, a->id, a->lease, &w);
    if (rc)
        return rc;
    w->t.progress = a->percent;
    w->t.step = a->step;
    w->t.total_steps = a->total;
    set_str(&w->t.progress_message, a->message);
    if (a->message && !w->t.progress_message) {
        prow_free(w);
        return TH_ENOMEM;
    }
    extend(tx, w, 0);
    if (!(rc = store_row(tx, w)))
        emit(tx, TH_EV_PROGRESS, w, w->t.progress_message);
    prow_free(w);
    return rc;
}

static int pg_progress(th_store *s, const char *id, uint64_t lease, int percent, int step,
                       int total, const char *message, int64_t now, th__evbuf *ev)
{
    worker_arg a = {.id = id,
                    .lease = lease,
                    .percent = percent,
                    .step = step,
                    .total = total,
                    .message = message};
    return th__pg_run((th__pg *)s, TH_PG_ASYNC, progress_body, &a, now, ev, NULL);
}

/* Appends a log row; when the task holds its limit, the oldest half goes, as
 * in qcore. */
static int log_body(th__pg_tx *tx, void *arg)
{
    worker_arg *a = arg;
    prow *w;
    int rc = load(tx, a->id, 1, &w);
    if (rc)
        return rc;
    if (a->lease && (w->t.state != TH_TASK_RUNNING || w->t.lease != a->lease)) {
        prow_free(w);
        return TH_ESTALE;
    }
    size_t max = tx->p->cfg.max_logs_per_task;
    int64_t nlogs = w->nlogs;
    th__pg_params pr = {.n = 0};
    th__pg_p_str(&pr, w->t.id);
    if (max && (size_t)nlogs >= max) {
        int64_t drop = nlogs - (int64_t)(max / 2);
        th__pg_p_i64(&pr, drop);
        if (th__pg_cmd(tx,
                       "DELETE FROM th_logs WHERE task_id = $1 AND seq IN (SELECT seq FROM"
                       " th_logs WHERE task_id = $1 ORDER BY seq LIMIT $2)",
                       &pr))
            rc = TH_EIO;
        nlogs -= drop;
        pr.n = 1;
    }
    th__pg_p_i64(&pr, w->log_seq + 1);
    th__pg_p_i64(&pr, tx->now);
    th__pg_p_i64(&pr, a->level);
    th__pg_p_i64(&pr, w->t.attempt);
    th__pg_p_str(&pr, a->message ? a->message : "");
    th__pg_p_str(&pr, a->data);
    th__pg_p_i64(&pr, nlogs + 1);
    if (!rc && th__pg_cmd(tx,
                          "WITH l AS (INSERT INTO th_logs (task_id, seq, time_ms, level, attempt,"
                          " message, data) VALUES ($1, $2, $3, $4, $5, $6, $7))"
                          " UPDATE th_tasks SET log_seq = $2, nlogs = $8 WHERE id = $1",
                          &pr))
        rc = TH_EIO;
    prow_free(w);
    return rc;
}

static int pg_log(th_store *s, const char *id, uint64_t lease, th_log_level level,
                  const char *message, const char *data, int64_t now)
{
    worker_arg a = {.id = id, .lease = lease, .level = level, .message = message, .data = data};
    return th__pg_run((th__pg *)s, TH_PG_ASYNC, log_body, &a, now, NULL, NULL);
}

typedef struct complete_arg {
    th_completion *items;
    size_t n;
} complete_arg;

/* Writes the completions gathered in `p`. */
static int done_flush(th__pg_tx *tx, pairs *p)
{
    th__pg_params more = {.n = 2};
    th__pg_p_i64(&more, tx->now);
    return pairs_flush(tx, p,
                       "UPDATE th_tasks t SET state = 4, result = v.result, error = NULL,"
                       " lease = 0, lease_expires_at = 0, timeout_at = 0, progress = 100,"
                       " finished_at = $3 FROM unnest($1::text[], $2::text[]) AS v (id, result)"
                       " WHERE t.id = v.id",
                       &more);
}

/* Locks every row of the batch in one statement (in id order, so two
 * batches cannot deadlock) and marks those some task depends on. */
static int lock_batch(th__pg_tx *tx, const complete_arg *a, rows *rs, int **has_dependents)
{
    const char **ids = th__malloc((a->n ? a->n : 1) * sizeof *ids);
    if (!ids)
        return TH_ENOMEM;
    for (size_t i = 0; i < a->n; i++)
        ids[i] = a->items[i].id ? a->items[i].id : "";
    char *arr = text_array(ids, a->n);
    th__free(ids);
    if (!arr)
        return TH_ENOMEM;
    th__pg_params pr = {.n = 0};
    th__pg_p_str(&pr, arr);
    int rc = select_rows(tx,
                         "SELECT " COLS " FROM th_tasks WHERE id = ANY ($1::text[])"
                         " ORDER BY id FOR UPDATE",
                         &pr, rs);
    PGresult *r = rc ? NULL
                     : th__pg_exec(tx,
                                   "SELECT DISTINCT dep_id FROM th_deps"
                                   " WHERE dep_id = ANY ($1::text[])",
                                   &pr);
    th__free(arr);
    if (!rc && !r)
        rc = TH_EIO;
    if (!rc && !(*has_dependents = th__calloc(rs->n ? rs->n : 1, sizeof **has_dependents)))
        rc = TH_ENOMEM;
    for (int i = 0; !rc && i < PQntuples(r); i++)
        for (size_t k = 0; k < rs->n; k++)
            if (strcmp(rs->v[k]->t.id, PQgetvalue(r, i, 0)) == 0)
                (*has_dependents)[k] = 1;
    PQclear(r);
    if (rc)
        rows_free(rs);
    return rc;
}

static int complete_body(th__pg_tx *tx, void *arg)
{
    complete_arg *a = arg;
    rows rs;
    int *has_dependents = NULL;
    int rc = lock_batch(tx, a, &rs, &has_dependents);
    if (rc)
        return rc;
    pairs up = {0};
    int ok = 0;
    for (size_t i = 0; i < a->n && !rc; i++) {
        th_completion *it = &a->items[i];
        size_t k = 0;
        while (k < rs.n && (!it->id || strcmp(rs.v[k]->t.id, it->id) != 0))
            k++;
        if (k == rs.n) {
            it->rc = TH_ENOTFOUND;
            continue;
        }
        prow *w = rs.v[k];
        if (w->t.state != TH_TASK_RUNNING || w->t.lease != it->lease) {
            it->rc = TH_ESTALE;
            continue;
        }
        set_str(&w->t.result, it->result ? it->result : "null");
        if (!w->t.result) {
            it->rc = TH_ENOMEM;
            continue;
        }
        it->rc = 0;
        set_str(&w->t.error, NULL); /* a cancel asked for too late is moot */
        tx->d.run_ms_sum += (double)(tx->now - w->t.started_at);
        tx->d.run_n++;
        end_lease(w);
        w->t.finished_at = tx->now;
        w->t.progress = 100;
        place(tx, w, TH_TASK_COMPLETED);
        tx->d.completed++;
        ok++;
        if (!has_dependents[k]) {
            pairs_add(&up, w->t.id, w->t.result);
            emit(tx, TH_EV_COMPLETED, w, NULL);
            continue;
        }
        /* Releasing dependents reads their other dependencies' states:
         * the rows before this one must be written first. */
        if (!(rc = done_flush(tx, &up)) && !(rc = store_row(tx, w))) {
            emit(tx, TH_EV_COMPLETED, w, NULL);
            rc = unblock(tx, w);
        }
    }
    int frc = done_flush(tx, &up);
    if (!rc)
        rc = frc;
    th__free(has_dependents);
    rows_free(&rs);
    return rc ? rc : ok;
}

static int pg_complete(th_store *s, th_completion *items, size_t n, int64_t now, th__evbuf *ev)
{
    complete_arg a = {items, n};
    int rc = th__pg_run((th__pg *)s, TH_PG_DURABLE, complete_body, &a, now, ev, NULL);
    for (size_t i = 0; rc < 0 && i < n; i++)
        items[i].rc = rc; /* no answer: whatever an attempt noted is void */
    return rc;
}

static int fail_body(th__pg_tx *tx, void *arg)
{
    worker_arg *a = arg;
    prow *w;
    int rc = leased(tx, a->id, a->lease, &w);
    if (rc)
        return rc;
    set_str(&w->t.error, a->message ? a->message : "failed");
    if (a->flags & TH_FAIL_TIMEOUT)
        emit(tx, TH_EV_TIMEOUT, w, w->t.error);
    rc = finish_attempt(tx, w, a->flags);
    prow_free(w);
    return rc;
}

static int pg_fail(th_store *s, const char *id, uint64_t lease, const char *message, int flags,
                   int64_t now, th__evbuf *ev)
{
    worker_arg a = {.id = id, .lease = lease, .message = message, .flags = flags};
    return th__pg_run((th__pg *)s, TH_PG_DURABLE, fail_body, &a, now, ev, NULL);
}

/* ---- management ------------------------------------------------------------------ */

typedef struct mgmt_arg {
    const char *id, *reason;
    th_error *err;
    int paused;
    int64_t before;
} mgmt_arg;

/* Cancels a waiting task (pending, scheduled, blocked) and its dependents. */
static int cancel_waiting(th__pg_tx *tx, prow *w, const char *reason)
{
    set_str(&w->t.error, reason);
    w->t.finished_at = tx->now;
    place(tx, w, TH_TASK_CANCELLED);
    int rc = store_row(tx, w);
    if (rc)
        return rc;
    emit(tx, TH_EV_CANCELLED, w, w->t.error);
    return cascade(tx, w);
}

static int cancel_body(th__pg_tx *tx, void *arg)
{
    mgmt_arg *a = arg;
    prow *w;
    int rc = load(tx, a->id, 1, &w);
    if (rc)
        return rc;
    const char *reason = a->reason ? a->reason : "cancelled";
    if (th_task_state_is_final(w->t.state)) {
        rc = TH_ESTATE;
    } else if (w->t.state == TH_TASK_RUNNING) {
        rc = 1;
        if (!w->t.cancel_requested) {
            w->t.cancel_requested = 1;
            set_str(&w->t.error, reason);
            if (store_row(tx, w))
                rc = TH_EIO;
            else
                emit(tx, TH_EV_CANCEL_REQUESTED, w, w->t.error);
        }
    } else {
        rc = cancel_waiting(tx, w, reason);
    }
    prow_free(w);
    return rc;
}

static int pg_cancel(th_store *s, const char *id, const char *reason, int64_t now, th__evbuf *ev)
{
    mgmt_arg a = {.id = id, .reason = reason};
    return th__pg_run((th__pg *)s, TH_PG_DURABLE, cancel_body, &a, now, ev, NULL);
}

static int retry_body(th__pg_tx *tx, void *arg)
{
    mgmt_arg *a = arg;
    prow *w;
    int rc = load(tx, a->id, 1, &w);
    if (rc == TH_ENOTFOUND)
        return th__err(a->err, TH_ENOTFOUND, "id", "task %s does not exist", a->id);
    if (rc)
        return rc;
    if (!is_failure(w->t.state)) {
        rc = th__err(a->err, TH_ESTATE, "state",
                     "task is %s; only failed, cancelled, timed-out or expired tasks can be "
                     "retried",
                     th_task_state_name(w->t.state));
        goto out;
    }
    int unmet = 0;
    for (size_t k = 0; k < w->t.ndeps; k++) {
        th__pg_params pr = {.n = 0};
        th__pg_p_str(&pr, w->t.deps[k]);
        PGresult *r = th__pg_exec(tx, "SELECT state FROM th_tasks WHERE id = $1 FOR SHARE", &pr);
        if (!r) {
            rc = TH_EIO;
            goto out;
        }
        int found = PQntuples(r) > 0;
        th_task_state ds = found ? (th_task_state)th__pg_i64(r, 0, 0) : TH_TASK_PENDING;
        PQclear(r);
        char field[32];
        snprintf(field, sizeof field, "deps[%zu]", k);
        if (!found) {
            rc = th__err(a->err, TH_ESTATE, field,
                         "dependency %s was pruned; whether it completed is unknown", w->t.deps[k]);
            goto out;
        }
        if (is_failure(ds)) {
            rc = th__err(a->err, TH_ESTATE, field, "dependency %s is %s; retry it first",
                         w->t.deps[k], th_task_state_name(ds));
            goto out;
        }
        if (ds != TH_TASK_COMPLETED)
            unmet++;
    }
    w->t.attempt = 0;
    w->t.cancel_requested = 0;
    w->t.finished_at = 0;
    w->t.run_at = tx->now;
    w->t.progress = w->t.step = w->t.total_steps = 0;
    if (w->t.expires_at && w->t.expires_at <= tx->now)
        w->t.expires_at = 0;
    set_str(&w->t.error, NULL);
    set_str(&w->t.result, NULL);
    set_str(&w->t.progress_message, NULL);
    th_task_state next = unmet ? TH_TASK_BLOCKED : TH_TASK_PENDING;
    emit_as(tx, TH_EV_RETRYING, w, next, "retry requested");
    place(tx, w, next);
    if (!unmet)
        emit(tx, TH_EV_READY, w, NULL);
    rc = store_row(tx, w);
out:
    prow_free(w);
    return rc;
}

static int pg_retry(th_store *s, const char *id, int64_t now, th__evbuf *ev, th_error *err)
{
    mgmt_arg a = {.id = id, .err = err};
    return th__pg_run((th__pg *)s, TH_PG_DURABLE, retry_body, &a, now, ev, err);
}

static int queue_pause_body(th__pg_tx *tx, void *arg)
{
    mgmt_arg *a = arg;
    th__pg_params pr = {.n = 0};
    th__pg_p_str(&pr, a->id);
    th__pg_p_str(&pr, a->paused ? "t" : "f");
    /* The old value comes from the row locked by the upsert's conflict. */
    PGresult *r = th__pg_exec(
        tx,
        "WITH old AS (SELECT paused FROM th_queues WHERE name = $1 FOR UPDATE),"
        " up AS (INSERT INTO th_queues (name, paused) VALUES ($1, $2::boolean)"
        " ON CONFLICT (name) DO UPDATE SET paused = EXCLUDED.paused)"
        " SELECT (SELECT paused FROM old) IS DISTINCT FROM $2::boolean AND NOT $2::boolean"
        " AND EXISTS (SELECT 1 FROM th_tasks WHERE queue = $1 AND state = 0)",
        &pr);
    if (!r)
        return TH_EIO;
    if (strcmp(PQgetvalue(r, 0, 0), "t") == 0)
        tx->pend.ready_all = 1; /* its waiting tasks can go out now */
    PQclear(r);
    return 0;
}

static int pg_queue_pause(th_store *s, const char *queue, int paused, th__evbuf *ev)
{
    mgmt_arg a = {.id = queue, .paused = paused};
    return th__pg_run((th__pg *)s, TH_PG_DURABLE, queue_pause_body, &a, 0, ev, NULL);
}

static int queue_purge_body(th__pg_tx *tx, void *arg)
{
    mgmt_arg *a = arg;
    th__pg_params pr = {.n = 0};
    th__pg_p_str(&pr, a->id);
    PGresult *r = th__pg_exec(
        tx, "SELECT id FROM th_tasks WHERE queue = $1 AND state IN (0, 1, 2) ORDER BY seq", &pr);
    if (!r)
        return TH_EIO;
    int n = 0, rc = 0;
    for (int i = 0; i < PQntuples(r) && !rc; i++) {
        prow *w;
        /* A cascade from an earlier one may have cancelled it already. */
        if ((rc = load(tx, PQgetvalue(r, i, 0), 1, &w)) == TH_ENOTFOUND) {
            rc = 0;
            continue;
        }
        if (rc)
            break;
        if (w->t.state <= TH_TASK_BLOCKED) {
            rc = cancel_waiting(tx, w, a->reason ? a->reason : "purged");
            n++;
        }
        prow_free(w);
    }
    PQclear(r);
    return rc ? rc : n;
}

static int pg_queue_purge(th_store *s, const char *queue, const char *reason, int64_t now,
                          th__evbuf *ev)
{
    mgmt_arg a = {.id = queue, .reason = reason};
    return th__pg_run((th__pg *)s, TH_PG_DURABLE, queue_purge_body, &a, now, ev, NULL);
}

static int prune_body(th__pg_tx *tx, void *arg)
{
    mgmt_arg *a = arg;
    th__pg_params pr = {.n = 0};
    th__pg_p_i64(&pr, a->before);
    PGresult *r = th__pg_exec(tx,
                              "WITH d AS (DELETE FROM th_tasks WHERE state >= 4 AND"
                              " finished_at < $1 RETURNING 1) SELECT count(*) FROM d",
                              &pr);
    if (!r)
        return TH_EIO;
    int n = (int)th__pg_i64(r, 0, 0);
    PQclear(r);
    return n;
}

static int pg_prune(th_store *s, int64_t finished_before, int64_t now)
{
    mgmt_arg a = {.before = finished_before};
    return th__pg_run((th__pg *)s, TH_PG_DURABLE, prune_body, &a, now, NULL, NULL);
}

/* ---- tick: deadlines, safe when every node runs it ------------------------------ */

typedef struct tick_arg {
    int64_t next;
} tick_arg;

/* Ids of rows due for one kind of deadline, locked, skipping rows another
 * node or call holds (it is acting on them, or will be seen next tick). */
enum { DUE_RUN_AT, DUE_LEASE, DUE_EXPIRY };

static int tick_step(th__pg_tx *tx, int due, const char *sql, int *n)
{
    th__pg_params pr = {.n = 0};
    th__pg_p_i64(&pr, tx->now);
    rows rs;
    int rc = select_rows(tx, sql, &pr, &rs);
    for (size_t i = 0; i < rs.n && !rc; i++) {
        prow *w = rs.v[i];
        if (due == DUE_RUN_AT) {
            place(tx, w, TH_TASK_PENDING);
            emit(tx, TH_EV_READY, w, NULL);
            rc = store_row(tx, w);
        } else if (due == DUE_LEASE) {
            char msg[160];
            int flags = 0;
            if (w->timeout_at && w->timeout_at <= tx->now) {
                snprintf(msg, sizeof msg, "attempt %d timed out after %" PRId64 " ms", w->t.attempt,
                         w->t.timeout_ms);
                flags = TH_FAIL_TIMEOUT;
            } else {
                snprintf(msg, sizeof msg, "lease expired: worker %s stopped heartbeating",
                         w->t.worker ? w->t.worker : "(anonymous)");
            }
            if (!w->t.cancel_requested)
                set_str(&w->t.error, msg);
            if (flags)
                emit(tx, TH_EV_TIMEOUT, w, msg);
            rc = finish_attempt(tx, w, flags);
        } else {
            /* A cascade earlier in this step may have cancelled it. */
            prow *cur;
            if ((rc = load(tx, w->t.id, 1, &cur)) == TH_ENOTFOUND)
                rc = 0;
            else if (!rc) {
                if (cur->t.state <= TH_TASK_BLOCKED && cur->t.expires_at &&
                    cur->t.expires_at <= tx->now)
                    rc = expire(tx, cur);
                prow_free(cur);
            }
        }
        if (!rc)
            (*n)++;
    }
    rows_free(&rs);
    return rc;
}

static int tick_body(th__pg_tx *tx, void *arg)
{
    tick_arg *a = arg;
    int n = 0, rc;
    if ((rc = tick_step(tx, DUE_RUN_AT,
                        "SELECT " COLS " FROM th_tasks WHERE state = 1 AND run_at <= $1"
                        " ORDER BY run_at, seq FOR UPDATE SKIP LOCKED",
                        &n)) ||
        (rc = tick_step(tx, DUE_LEASE,
                        "SELECT " COLS " FROM th_tasks WHERE state = 3 AND " RUNNING_KEY
                        " <= $1 ORDER BY " RUNNING_KEY ", seq FOR UPDATE SKIP LOCKED",
                        &n)) ||
        (rc = tick_step(tx, DUE_EXPIRY,
                        "SELECT " COLS " FROM th_tasks WHERE state IN (0, 1, 2) AND"
                        " expires_at <> 0 AND expires_at <= $1 ORDER BY expires_at, seq"
                        " FOR UPDATE SKIP LOCKED",
                        &n)))
        return rc;
    PGresult *r = th__pg_exec(
        tx,
        "SELECT least((SELECT min(run_at) FROM th_tasks WHERE state = 1),"
        " (SELECT min(" RUNNING_KEY ") FROM th_tasks WHERE state = 3),"
        " (SELECT min(expires_at) FROM th_tasks WHERE state IN (0, 1, 2) AND expires_at <> 0))",
        NULL);
    if (!r)
        return TH_EIO;
    a->next = PQgetisnull(r, 0, 0) ? INT64_MAX : th__pg_i64(r, 0, 0);
    PQclear(r);
    return n;
}

static int pg_tick(th_store *s, int64_t now, int64_t *next, th__evbuf *ev)
{
    tick_arg a = {INT64_MAX};
    int rc = th__pg_run((th__pg *)s, TH_PG_ASYNC, tick_body, &a, now, ev, NULL);
    /* After a failure, look again soon rather than never. */
    *next = rc < 0 ? now + TH_PG_POLL_MS : a.next;
    return rc;
}

/* ---- reads ------------------------------------------------------------------------ */

typedef struct read_arg {
    const char *id;
    th_task **task;
    const th_list_filter *f;
    th_task ***tasks;
    size_t *n;
    int64_t after;
    size_t limit;
    th_log_entry **logs;
    th_queue_counts **counts;
    th__store_stats *st;
} read_arg;

static int get_body(th__pg_tx *tx, void *arg)
{
    read_arg *a = arg;
    prow *w;
    int rc = load(tx, a->id, 0, &w);
    if (rc)
        return rc;
    return (*a->task = row_take(w)) ? 0 : TH_ENOMEM;
}

static int pg_get(th_store *s, const char *id, th_task **out)
{
    read_arg a = {.id = id, .task = out};
    return th__pg_run((th__pg *)s, TH_PG_READ, get_body, &a, 0, NULL, NULL);
}

static int list_body(th__pg_tx *tx, void *arg)
{
    read_arg *a = arg;
    th__pg_params pr = {.n = 0};
    th__pg_p_str(&pr, a->f->queue);
    th__pg_p_i64(&pr, a->f->state);
    th__pg_p_str(&pr, a->f->after_id ? a->f->after_id : "");
    th__pg_p_i64(&pr, (int64_t)a->f->limit);
    rows rs;
    int rc = select_rows(tx,
                         "SELECT " COLS " FROM th_tasks WHERE ($1::text IS NULL OR queue = $1)"
                         " AND ($2 < 0 OR state = $2) AND id > $3 ORDER BY id LIMIT $4",
                         &pr, &rs);
    if (rc)
        return rc;
    th_task **v = th__calloc(rs.n ? rs.n : 1, sizeof *v);
    if (!v) {
        rows_free(&rs);
        return TH_ENOMEM;
    }
    size_t k = 0;
    for (; k < rs.n; k++) {
        v[k] = row_take(rs.v[k]);
        rs.v[k] = NULL;
        if (!v[k])
            break;
    }
    rows_free(&rs);
    if (k < rs.n) {
        th_task_array_free(v, k);
        return TH_ENOMEM;
    }
    *a->tasks = v;
    *a->n = k;
    return 0;
}

static int pg_list(th_store *s, const th_list_filter *f, th_task ***out, size_t *n)
{
    read_arg a = {.f = f, .tasks = out, .n = n};
    return th__pg_run((th__pg *)s, TH_PG_READ, list_body, &a, 0, NULL, NULL);
}

static int logs_body(th__pg_tx *tx, void *arg)
{
    read_arg *a = arg;
    th__pg_params pr = {.n = 0};
    th__pg_p_str(&pr, a->id);
    th__pg_p_i64(&pr, a->after);
    th__pg_p_i64(&pr, a->limit ? (int64_t)a->limit : INT64_MAX);
    PGresult *r = th__pg_exec(tx,
                              "SELECT l.seq, l.time_ms, l.level, l.attempt, l.message, l.data"
                              " FROM th_tasks t LEFT JOIN th_logs l ON l.task_id = t.id AND"
                              " l.seq > $2 WHERE t.id = $1 ORDER BY l.seq LIMIT $3",
                              &pr);
    if (!r)
        return TH_EIO;
    int rc = 0;
    size_t n = (size_t)PQntuples(r);
    if (n == 0) {
        PQclear(r);
        return TH_ENOTFOUND;
    }
    if (PQgetisnull(r, 0, 0))
        n = 0; /* the task, with no rows */
    th_log_entry *v = th__calloc(n ? n : 1, sizeof *v);
    if (!v) {
        PQclear(r);
        return TH_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        v[i].seq = th__pg_i64(r, (int)i, 0);
        v[i].time_ms = th__pg_i64(r, (int)i, 1);
        v[i].level = (th_log_level)th__pg_i64(r, (int)i, 2);
        v[i].attempt = (int)th__pg_i64(r, (int)i, 3);
        const char *data = th__pg_str(r, (int)i, 5);
        if (!dup(&v[i].message, th__pg_str(r, (int)i, 4)) || !dup(&v[i].data, data)) {
            th_log_entries_free(v, i + 1);
            rc = TH_ENOMEM;
            break;
        }
    }
    PQclear(r);
    if (rc)
        return rc;
    *a->logs = v;
    *a->n = n;
    return 0;
}

static int pg_logs(th_store *s, const char *id, int64_t after_seq, size_t limit, th_log_entry **out,
                   size_t *n)
{
    read_arg a = {.id = id, .after = after_seq, .limit = limit, .logs = out, .n = n};
    return th__pg_run((th__pg *)s, TH_PG_READ, logs_body, &a, 0, NULL, NULL);
}

static int counts_body(th__pg_tx *tx, void *arg)
{
    read_arg *a = arg;
    PGresult *r = th__pg_exec(tx,
                              "SELECT q.name, q.paused, c.state, c.n FROM th_queues q LEFT JOIN"
                              " (SELECT queue, state, count(*) AS n FROM th_tasks GROUP BY"
                              " queue, state) c ON c.queue = q.name ORDER BY q.name",
                              NULL);
    if (!r)
        return TH_EIO;
    int rows_n = PQntuples(r);
    th_queue_counts *v = th__calloc(rows_n ? (size_t)rows_n : 1, sizeof *v);
    if (!v) {
        PQclear(r);
        return TH_ENOMEM;
    }
    size_t nq = 0;
    for (int i = 0; i < rows_n; i++) {
        const char *name = PQgetvalue(r, i, 0);
        if (nq == 0 || strcmp(v[nq - 1].queue, name) != 0) {
            snprintf(v[nq].queue, sizeof v[nq].queue, "%s", name);
            v[nq].paused = strcmp(PQgetvalue(r, i, 1), "t") == 0;
            nq++;
        }
        if (!PQgetisnull(r, i, 2)) {
            int64_t st = th__pg_i64(r, i, 2);
            if (st >= 0 && st < TH_TASK_NSTATES)
                v[nq - 1].counts[st] = th__pg_i64(r, i, 3);
        }
    }
    PQclear(r);
    *a->counts = v;
    *a->n = nq;
    return 0;
}

static int pg_counts(th_store *s, th_queue_counts **out, size_t *n)
{
    read_arg a = {.counts = out, .n = n};
    return th__pg_run((th__pg *)s, TH_PG_READ, counts_body, &a, 0, NULL, NULL);
}

static int stats_body(th__pg_tx *tx, void *arg)
{
    read_arg *a = arg;
    PGresult *r = th__pg_exec(tx, "SELECT state, count(*) FROM th_tasks GROUP BY state", NULL);
    if (!r)
        return TH_EIO;
    for (int i = 0; i < PQntuples(r); i++) {
        int64_t st = th__pg_i64(r, i, 0);
        if (st >= 0 && st < TH_TASK_NSTATES)
            a->st->counts[st] = th__pg_i64(r, i, 1);
    }
    PQclear(r);
    return 0;
}

static int pg_stats(th_store *s, int64_t now, th__store_stats *out)
{
    th__pg *p = (th__pg *)s;
    pthread_mutex_lock(&p->smu);
    *out = p->st;
    int64_t sec = now / 1000;
    out->completed_last_10s = 0;
    for (int b = 0; b < TH_PG_TP_BUCKETS; b++)
        if (p->tp_sec[b] > sec - TH_PG_TP_BUCKETS && p->tp_sec[b] <= sec)
            out->completed_last_10s += p->tp_n[b];
    pthread_mutex_unlock(&p->smu);
    memset(out->counts, 0, sizeof out->counts);
    read_arg a = {.st = out};
    int rc = th__pg_run(p, TH_PG_READ, stats_body, &a, now, NULL, NULL);
    return rc < 0 ? rc : 0;
}

static int pg_flush(th_store *s)
{
    (void)s;
    return 0; /* every operation committed before it returned */
}

const th__store_ops th__pg_ops = {
    .kind = "postgres",
    .poll_ms = TH_PG_POLL_MS,
    .configure = pg_configure,
    .submit = pg_submit,
    .claim = pg_claim,
    .heartbeat = pg_heartbeat,
    .progress = pg_progress,
    .log = pg_log,
    .complete = pg_complete,
    .fail = pg_fail,
    .cancel = pg_cancel,
    .retry = pg_retry,
    .get = pg_get,
    .list = pg_list,
    .logs = pg_logs,
    .counts = pg_counts,
    .stats = pg_stats,
    .prune = pg_prune,
    .queue_pause = pg_queue_pause,
    .queue_purge = pg_queue_purge,
    .tick = pg_tick,
    .flush = pg_flush,
};
