/*
 * The PostgreSQL store's rows and transitions: loading and writing task rows,
 * and qcore's transitions (qcore.c, docs/ARCHITECTURE.md section 4) applied
 * to them, function by function: th__pgr_place is enter(), then
 * finish_attempt, cascade, unblock, expire. Where qcore keeps heaps, the
 * queries order rows the same way. Dependencies are rows of th_deps; a
 * dependent is released or cancelled only while blocked, and a pruned
 * dependency counts as met, as in qcore. See postgres_row.h.
 */
#include "store/postgres_row.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"

/* A row is allocated as one block that starts with its th_task, so the
 * snapshot's destructor frees it whole. */
void th__pgr_row_free(th__pg_row *r)
{
    th_task_free(r ? &r->t : NULL);
}

void th__pgr_rows_free(th__pg_rows *rs)
{
    for (size_t i = 0; i < rs->n; i++)
        th__pgr_row_free(rs->v[i]);
    th__free(rs->v);
    rs->v = NULL;
    rs->n = 0;
}

int th__pgr_dup(char **slot, const char *s)
{
    *slot = NULL;
    return !s || (*slot = th__strdup(s)) != NULL;
}

void th__pgr_set_str(char **slot, const char *s)
{
    th__free(*slot);
    *slot = s ? th__strdup(s) : NULL;
}

/* Fills a row from result row i of a SELECT COLS; NULL on OOM. */
static th__pg_row *row_from(th__pg *p, const PGresult *r, int i)
{
    th__pg_row *w = th__calloc(1, sizeof *w);
    if (!w)
        return NULL;
    th_task *t = &w->t;
    int c = 0;
    snprintf(t->id, sizeof t->id, "%s", PQgetvalue(r, i, c++));
    int ok = th__pgr_dup(&t->queue, th__pg_str(r, i, c++));
    t->state = (th_task_state)th__pg_i64(r, i, c++);
    t->priority = (int)th__pg_i64(r, i, c++);
    ok = ok && th__pgr_dup(&t->payload, th__pg_str(r, i, c++));
    ok = ok && th__pgr_dup(&t->metadata, th__pg_str(r, i, c++));
    ok = ok && th__pgr_dup(&t->unique_key, th__pg_str(r, i, c++));
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
    ok = ok && th__pgr_dup(&t->worker, th__pg_str(r, i, c++));
    t->cancel_requested = (int)th__pg_i64(r, i, c++);
    t->progress = (int)th__pg_i64(r, i, c++);
    t->step = (int)th__pg_i64(r, i, c++);
    t->total_steps = (int)th__pg_i64(r, i, c++);
    ok = ok && th__pgr_dup(&t->progress_message, th__pg_str(r, i, c++));
    ok = ok && th__pgr_dup(&t->error, th__pg_str(r, i, c++));
    ok = ok && th__pgr_dup(&t->result, th__pg_str(r, i, c++));
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
        th__pgr_row_free(w);
        return NULL;
    }
    return w;
}

/* Turns a row into a caller-owned snapshot (th_task_free frees it, block and
 * all), consuming it. */
th_task *th__pgr_row_take(th__pg_row *w)
{
    return &w->t;
}

/* A text[] literal of `n` strings, each quoted; NULL on OOM. */
char *th__pgr_text_array(const char *const *v, size_t n)
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
int th__pgr_select_rows(th__pg_tx *tx, const char *sql, const th__pg_params *pr, th__pg_rows *out)
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
        th__pgr_rows_free(out);
    return rc;
}

/* Loads and locks one task. Returns 0 with *out set, TH_ENOTFOUND, or an
 * error. */
int th__pgr_load(th__pg_tx *tx, const char *id, int lock, th__pg_row **out)
{
    th__pg_params pr = {.n = 0};
    th__pg_p_str(&pr, id);
    th__pg_rows rs;
    int rc = th__pgr_select_rows(tx,
                                 lock ? "SELECT " COLS " FROM th_tasks WHERE id = $1 FOR UPDATE"
                                      : "SELECT " COLS " FROM th_tasks WHERE id = $1",
                                 &pr, &rs);
    if (rc)
        return rc;
    if (rs.n == 0) {
        th__pgr_rows_free(&rs);
        return TH_ENOTFOUND;
    }
    *out = rs.v[0];
    th__free(rs.v);
    return 0;
}

/* Writes a row's changeable columns back. */
int th__pgr_store_row(th__pg_tx *tx, const th__pg_row *w)
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

int64_t th__pgr_running_key(const th__pg_row *w)
{
    return w->timeout_at && w->timeout_at < w->t.lease_expires_at ? w->timeout_at
                                                                  : w->t.lease_expires_at;
}

int th__pgr_is_failure(th_task_state s)
{
    return s == TH_TASK_FAILED || s == TH_TASK_CANCELLED || s == TH_TASK_TIMEOUT ||
           s == TH_TASK_EXPIRED;
}

/* qcore's enter(): sets the state and notes readiness and deadlines. */
void th__pgr_place(th__pg_tx *tx, th__pg_row *w, th_task_state s)
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
        th__evbuf_deadline(ev, th__pgr_running_key(w));
        break;
    default:
        break;
    }
    if (w->t.expires_at && (s == TH_TASK_PENDING || s == TH_TASK_SCHEDULED || s == TH_TASK_BLOCKED))
        th__evbuf_deadline(ev, w->t.expires_at);
}

void th__pgr_emit_as(th__pg_tx *tx, th_event_type type, const th__pg_row *w, th_task_state state,
                     const char *msg)
{
    th__evbuf_add(&tx->pend, type, w->t.id, w->qname, state, w->t.attempt, w->t.progress, msg,
                  tx->now);
}

void th__pgr_emit(th__pg_tx *tx, th_event_type type, const th__pg_row *w, const char *msg)
{
    th__pgr_emit_as(tx, type, w, w->t.state, msg);
}

/* Blocked tasks that wait on `id`, locked, in submission order. */
static int blocked_dependents(th__pg_tx *tx, const char *id, th__pg_rows *out)
{
    th__pg_params pr = {.n = 0};
    th__pg_p_str(&pr, id);
    return th__pgr_select_rows(
        tx,
        "SELECT " COLS " FROM th_tasks WHERE state = 2 AND id IN"
        " (SELECT task_id FROM th_deps WHERE dep_id = $1) ORDER BY seq FOR UPDATE",
        &pr, out);
}

/* Cancels, transitively, every blocked task waiting on `root`, which just
 * ended without completing; the same depth-first order as qcore's stack. */
int th__pgr_cascade(th__pg_tx *tx, const th__pg_row *root)
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
        th__pg_rows ds;
        if ((rc = blocked_dependents(tx, id, &ds)))
            break;
        for (size_t i = 0; i < ds.n && !rc; i++) {
            th__pg_row *d = ds.v[i];
            char msg[128];
            snprintf(msg, sizeof msg, "dependency %s ended %s", id, th_task_state_name(st));
            th__pgr_set_str(&d->t.error, msg);
            d->t.finished_at = tx->now;
            th__pgr_place(tx, d, TH_TASK_CANCELLED);
            if ((rc = th__pgr_store_row(tx, d)))
                break;
            th__pgr_emit(tx, TH_EV_CANCELLED, d, msg);
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
        th__pgr_rows_free(&ds);
    }
    th__free(stack);
    th__free(states);
    return rc;
}

/* Pending when run_at has come, else scheduled. */
static void release(th__pg_tx *tx, th__pg_row *w)
{
    if (w->t.run_at > tx->now) {
        th__pgr_place(tx, w, TH_TASK_SCHEDULED);
    } else {
        th__pgr_place(tx, w, TH_TASK_PENDING);
        th__pgr_emit(tx, TH_EV_READY, w, NULL);
    }
}

/* Releases the blocked dependents of `w`, which just completed (and whose row
 * is written), whose dependencies are now all complete. */
int th__pgr_unblock(th__pg_tx *tx, const th__pg_row *w)
{
    th__pg_rows ds;
    int rc = blocked_dependents(tx, w->t.id, &ds);
    for (size_t i = 0; i < ds.n && !rc; i++) {
        th__pg_row *d = ds.v[i];
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
            rc = th__pgr_store_row(tx, d);
        }
    }
    th__pgr_rows_free(&ds);
    return rc;
}

static int64_t backoff(th__pg *p, const th__pg_row *w)
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

void th__pgr_end_lease(th__pg_row *w)
{
    w->t.lease = 0;
    w->t.lease_expires_at = 0;
    w->timeout_at = 0;
}

/* qcore's th__pgr_finish_attempt(): cancelled when asked for, else retried per the
 * policy, else final. Writes the row. */
int th__pgr_finish_attempt(th__pg_tx *tx, th__pg_row *w, int flags)
{
    int64_t now = tx->now;
    int rc;
    th__pgr_end_lease(w);
    if ((flags & TH_FAIL_RELEASE) && !w->t.cancel_requested) {
        w->t.attempt--;
        w->t.run_at = now;
        th__pgr_place(tx, w, TH_TASK_PENDING);
        th__pgr_emit(tx, TH_EV_READY, w, w->t.error);
        return th__pgr_store_row(tx, w);
    }
    tx->d.failed_attempts++;
    if (w->t.cancel_requested) {
        w->t.finished_at = now;
        th__pgr_place(tx, w, TH_TASK_CANCELLED);
        th__pgr_emit(tx, TH_EV_CANCELLED, w, w->t.error);
        if ((rc = th__pgr_store_row(tx, w)))
            return rc;
        return th__pgr_cascade(tx, w);
    }
    if (!(flags & TH_FAIL_PERMANENT) && w->t.attempt <= w->t.retry.max_retries) {
        w->t.run_at = now + backoff(tx->p, w);
        tx->d.retries++;
        th_task_state next = w->t.run_at > now ? TH_TASK_SCHEDULED : TH_TASK_PENDING;
        th__pgr_emit_as(tx, TH_EV_FAILED, w, next, w->t.error);
        th__pgr_emit_as(tx, TH_EV_RETRYING, w, next, NULL);
        th__pgr_place(tx, w, next);
        if (next == TH_TASK_PENDING)
            th__pgr_emit(tx, TH_EV_READY, w, NULL);
        return th__pgr_store_row(tx, w);
    }
    w->t.finished_at = now;
    th__pgr_place(tx, w, (flags & TH_FAIL_TIMEOUT) ? TH_TASK_TIMEOUT : TH_TASK_FAILED);
    th__pgr_emit(tx, TH_EV_FAILED, w, w->t.error);
    if ((rc = th__pgr_store_row(tx, w)))
        return rc;
    return th__pgr_cascade(tx, w);
}

int th__pgr_expire(th__pg_tx *tx, th__pg_row *w)
{
    th__pgr_set_str(&w->t.error, "expired before it could run");
    w->t.finished_at = tx->now;
    th__pgr_place(tx, w, TH_TASK_EXPIRED);
    th__pgr_emit(tx, TH_EV_EXPIRED, w, w->t.error);
    int rc = th__pgr_store_row(tx, w);
    return rc ? rc : th__pgr_cascade(tx, w);
}
