/*
 * The PostgreSQL store's management and read operations: cancel, retry,
 * queue pause and purge, prune, tick (deadlines: safe when every node runs
 * it, rows taken with FOR UPDATE SKIP LOCKED), and get, list, logs, counts,
 * stats. See postgres_row.h.
 */
#include "store/postgres_row.h"

#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"

/* ---- management ------------------------------------------------------------------ */

typedef struct mgmt_arg {
    const char *id, *reason;
    th_error *err;
    int paused;
    int64_t before;
} mgmt_arg;

/* Cancels a waiting task (pending, scheduled, blocked) and its dependents. */
static int cancel_waiting(th__pg_tx *tx, th__pg_row *w, const char *reason)
{
    th__pgr_set_str(&w->t.error, reason);
    w->t.finished_at = tx->now;
    th__pgr_place(tx, w, TH_TASK_CANCELLED);
    int rc = th__pgr_store_row(tx, w);
    if (rc)
        return rc;
    th__pgr_emit(tx, TH_EV_CANCELLED, w, w->t.error);
    return th__pgr_cascade(tx, w);
}

static int cancel_body(th__pg_tx *tx, void *arg)
{
    mgmt_arg *a = arg;
    th__pg_row *w;
    int rc = th__pgr_load(tx, a->id, 1, &w);
    if (rc)
        return rc;
    const char *reason = a->reason ? a->reason : "cancelled";
    if (th_task_state_is_final(w->t.state)) {
        rc = TH_ESTATE;
    } else if (w->t.state == TH_TASK_RUNNING) {
        rc = 1;
        if (!w->t.cancel_requested) {
            w->t.cancel_requested = 1;
            th__pgr_set_str(&w->t.error, reason);
            if (th__pgr_store_row(tx, w))
                rc = TH_EIO;
            else
                th__pgr_emit(tx, TH_EV_CANCEL_REQUESTED, w, w->t.error);
        }
    } else {
        rc = cancel_waiting(tx, w, reason);
    }
    th__pgr_row_free(w);
    return rc;
}

int th__pg_cancel(th_store *s, const char *id, const char *reason, int64_t now, th__evbuf *ev)
{
    mgmt_arg a = {.id = id, .reason = reason};
    return th__pg_run((th__pg *)s, TH_PG_DURABLE, cancel_body, &a, now, ev, NULL);
}

static int retry_body(th__pg_tx *tx, void *arg)
{
    mgmt_arg *a = arg;
    th__pg_row *w;
    int rc = th__pgr_load(tx, a->id, 1, &w);
    if (rc == TH_ENOTFOUND)
        return th__err(a->err, TH_ENOTFOUND, "id", "task %s does not exist", a->id);
    if (rc)
        return rc;
    if (!th__pgr_is_failure(w->t.state)) {
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
        if (th__pgr_is_failure(ds)) {
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
    th__pgr_set_str(&w->t.error, NULL);
    th__pgr_set_str(&w->t.result, NULL);
    th__pgr_set_str(&w->t.progress_message, NULL);
    th_task_state next = unmet ? TH_TASK_BLOCKED : TH_TASK_PENDING;
    th__pgr_emit_as(tx, TH_EV_RETRYING, w, next, "retry requested");
    th__pgr_place(tx, w, next);
    if (!unmet)
        th__pgr_emit(tx, TH_EV_READY, w, NULL);
    rc = th__pgr_store_row(tx, w);
out:
    th__pgr_row_free(w);
    return rc;
}

int th__pg_retry(th_store *s, const char *id, int64_t now, th__evbuf *ev, th_error *err)
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

int th__pg_queue_pause(th_store *s, const char *queue, int paused, th__evbuf *ev)
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
        th__pg_row *w;
        /* A cascade from an earlier one may have cancelled it already. */
        if ((rc = th__pgr_load(tx, PQgetvalue(r, i, 0), 1, &w)) == TH_ENOTFOUND) {
            rc = 0;
            continue;
        }
        if (rc)
            break;
        if (w->t.state <= TH_TASK_BLOCKED) {
            rc = cancel_waiting(tx, w, a->reason ? a->reason : "purged");
            n++;
        }
        th__pgr_row_free(w);
    }
    PQclear(r);
    return rc ? rc : n;
}

int th__pg_queue_purge(th_store *s, const char *queue, const char *reason, int64_t now,
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

int th__pg_prune(th_store *s, int64_t finished_before, int64_t now)
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

/* Rows of one kind one tick handles, so a transaction stays short after a
 * long outage; the next deadline is then already due and the timer ticks
 * again at once. */
#define TICK_MAX "1000"

static int tick_step(th__pg_tx *tx, int due, const char *sql, int *n)
{
    th__pg_params pr = {.n = 0};
    th__pg_p_i64(&pr, tx->now);
    th__pg_rows rs;
    int rc = th__pgr_select_rows(tx, sql, &pr, &rs);
    for (size_t i = 0; i < rs.n && !rc; i++) {
        th__pg_row *w = rs.v[i];
        if (due == DUE_RUN_AT) {
            th__pgr_place(tx, w, TH_TASK_PENDING);
            th__pgr_emit(tx, TH_EV_READY, w, NULL);
            rc = th__pgr_store_row(tx, w);
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
                th__pgr_set_str(&w->t.error, msg);
            if (flags)
                th__pgr_emit(tx, TH_EV_TIMEOUT, w, msg);
            rc = th__pgr_finish_attempt(tx, w, flags);
        } else {
            /* A cascade earlier in this step may have cancelled it. */
            th__pg_row *cur;
            if ((rc = th__pgr_load(tx, w->t.id, 1, &cur)) == TH_ENOTFOUND)
                rc = 0;
            else if (!rc) {
                if (cur->t.state <= TH_TASK_BLOCKED && cur->t.expires_at &&
                    cur->t.expires_at <= tx->now)
                    rc = th__pgr_expire(tx, cur);
                th__pgr_row_free(cur);
            }
        }
        if (!rc)
            (*n)++;
    }
    th__pgr_rows_free(&rs);
    return rc;
}

static int tick_body(th__pg_tx *tx, void *arg)
{
    tick_arg *a = arg;
    int n = 0, rc;
    if ((rc = tick_step(tx, DUE_RUN_AT,
                        "SELECT " COLS " FROM th_tasks WHERE state = 1 AND run_at <= $1"
                        " ORDER BY run_at, seq LIMIT " TICK_MAX " FOR UPDATE SKIP LOCKED",
                        &n)) ||
        (rc = tick_step(tx, DUE_LEASE,
                        "SELECT " COLS " FROM th_tasks WHERE state = 3 AND " RUNNING_KEY
                        " <= $1 ORDER BY " RUNNING_KEY ", seq LIMIT " TICK_MAX
                        " FOR UPDATE SKIP LOCKED",
                        &n)) ||
        (rc = tick_step(tx, DUE_EXPIRY,
                        "SELECT " COLS " FROM th_tasks WHERE state IN (0, 1, 2) AND"
                        " expires_at <> 0 AND expires_at <= $1 ORDER BY expires_at, seq"
                        " LIMIT " TICK_MAX " FOR UPDATE SKIP LOCKED",
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

int th__pg_tick(th_store *s, int64_t now, int64_t *next, th__evbuf *ev)
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
    th__pg_row *w;
    int rc = th__pgr_load(tx, a->id, 0, &w);
    if (rc)
        return rc;
    return (*a->task = th__pgr_row_take(w)) ? 0 : TH_ENOMEM;
}

int th__pg_get(th_store *s, const char *id, th_task **out)
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
    th__pg_rows rs;
    int rc =
        th__pgr_select_rows(tx,
                            "SELECT " COLS " FROM th_tasks WHERE ($1::text IS NULL OR queue = $1)"
                            " AND ($2 < 0 OR state = $2) AND id > $3 ORDER BY id LIMIT $4",
                            &pr, &rs);
    if (rc)
        return rc;
    th_task **v = th__calloc(rs.n ? rs.n : 1, sizeof *v);
    if (!v) {
        th__pgr_rows_free(&rs);
        return TH_ENOMEM;
    }
    size_t k = 0;
    for (; k < rs.n; k++) {
        v[k] = th__pgr_row_take(rs.v[k]);
        rs.v[k] = NULL;
        if (!v[k])
            break;
    }
    th__pgr_rows_free(&rs);
    if (k < rs.n) {
        th_task_array_free(v, k);
        return TH_ENOMEM;
    }
    *a->tasks = v;
    *a->n = k;
    return 0;
}

int th__pg_list(th_store *s, const th_list_filter *f, th_task ***out, size_t *n)
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
        n = 0; /* the task, with no th__pg_rows */
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
        if (!th__pgr_dup(&v[i].message, th__pg_str(r, (int)i, 4)) ||
            !th__pgr_dup(&v[i].data, data)) {
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

int th__pg_logs(th_store *s, const char *id, int64_t after_seq, size_t limit, th_log_entry **out,
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

int th__pg_counts(th_store *s, th_queue_counts **out, size_t *n)
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

int th__pg_stats(th_store *s, int64_t now, th__store_stats *out)
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

int th__pg_flush(th_store *s)
{
    (void)s;
    return 0; /* every operation committed before it returned */
}

/* ---- the shared registry of external workers --------------------------------- */

typedef struct worker_arg {
    const char *id, *info;
    int64_t now;
    char **out;
} worker_arg;

static int worker_put_body(th__pg_tx *tx, void *arg)
{
    worker_arg *w = arg;
    th__pg_params pr = {.n = 0};
    th__pg_p_str(&pr, w->id);
    th__pg_p_str(&pr, w->info);
    th__pg_p_i64(&pr, w->now);
    return th__pg_cmd(tx,
                      "INSERT INTO th_workers (id, info, registered_at, last_seen_at)"
                      " VALUES ($1, $2, $3, $3) ON CONFLICT (id) DO UPDATE"
                      " SET info = $2, last_seen_at = $3",
                      &pr)
               ? TH_EIO
               : 0;
}

int th__pg_worker_put(th_store *s, const char *id, const char *info, int64_t now)
{
    worker_arg a = {.id = id, .info = info, .now = now};
    return th__pg_run((th__pg *)s, TH_PG_DURABLE, worker_put_body, &a, now, NULL, NULL);
}

static int worker_get_body(th__pg_tx *tx, void *arg)
{
    worker_arg *w = arg;
    th__pg_params pr = {.n = 0};
    th__pg_p_str(&pr, w->id);
    PGresult *r = th__pg_exec(tx, "SELECT info FROM th_workers WHERE id = $1", &pr);
    if (!r)
        return TH_EIO;
    int rc = TH_ENOTFOUND;
    if (PQntuples(r) == 1)
        rc = (*w->out = th__strdup(PQgetvalue(r, 0, 0))) ? 0 : TH_ENOMEM;
    PQclear(r);
    return rc;
}

int th__pg_worker_get(th_store *s, const char *id, char **info)
{
    *info = NULL;
    worker_arg a = {.id = id, .out = info};
    return th__pg_run((th__pg *)s, TH_PG_READ, worker_get_body, &a, 0, NULL, NULL);
}

static int worker_list_body(th__pg_tx *tx, void *arg)
{
    worker_arg *w = arg;
    PGresult *r = th__pg_exec(tx,
                              "SELECT id, info, registered_at, last_seen_at FROM th_workers"
                              " ORDER BY registered_at, id",
                              NULL);
    if (!r)
        return TH_EIO;
    json_t *arr = json_array();
    for (int i = 0; arr && i < PQntuples(r); i++) {
        json_t *info = json_loads(PQgetvalue(r, i, 1), 0, NULL);
        json_array_append_new(arr, json_pack("{s:s,s:o,s:I,s:I}", "id", PQgetvalue(r, i, 0), "info",
                                             info ? info : json_object(), "registered_at",
                                             (json_int_t)th__pg_i64(r, i, 2), "last_seen_at",
                                             (json_int_t)th__pg_i64(r, i, 3)));
    }
    PQclear(r);
    char *text = arr ? json_dumps(arr, JSON_COMPACT) : NULL;
    json_decref(arr);
    *w->out = text ? th__strdup(text) : NULL;
    free(text);
    return *w->out ? 0 : TH_ENOMEM;
}

int th__pg_worker_list(th_store *s, char **json)
{
    *json = NULL;
    worker_arg a = {.out = json};
    return th__pg_run((th__pg *)s, TH_PG_READ, worker_list_body, &a, 0, NULL, NULL);
}
