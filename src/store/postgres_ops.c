/*
 * The PostgreSQL store's operations that carry the work: submit, claim, the
 * worker's calls (heartbeat, progress, log, complete, fail), and the
 * operation table. Each is one transaction run by th__pg_run: it locks the
 * rows it changes (claims with FOR UPDATE SKIP LOCKED, so nodes claiming at
 * once take different rows), applies qcore's transitions (postgres_row.c),
 * writes the rows back in batches and notes the same events as qcore, which
 * the engine sees only after the commit.
 */
#include "store/postgres_row.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"

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
            if (th__pgr_is_failure(ds)) {
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
    th__pg_row w = {.t = {.run_at = it->run_at, .expires_at = sp->expires_at_ms}, .qname = qname};
    memcpy(w.t.id, it->id, TH_ID_SIZE);
    th__pgr_place(tx, &w, first);
    if (first == TH_TASK_CANCELLED)
        th__pgr_emit(tx, TH_EV_CANCELLED, &w, msg);
    else if (first == TH_TASK_PENDING)
        th__pgr_emit(tx, TH_EV_READY, &w, NULL);
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
        th__pg_rows rs;
        rc = th__pgr_select_rows(tx,
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
            th__pg_row *w = rs.v[i];
            if (w->t.expires_at && w->t.expires_at <= tx->now) {
                rc = th__pgr_expire(tx, w);
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
            th__pgr_set_str(&w->t.progress_message, NULL);
            th__pgr_set_str(&w->t.worker, cl->worker);
            if (cl->worker && !w->t.worker) {
                rc = TH_ENOMEM;
                break;
            }
            th__pgr_place(tx, w, TH_TASK_RUNNING);
            char lease[24];
            snprintf(lease, sizeof lease, "%" PRIu64, w->t.lease);
            pairs_add(&up, w->t.id, lease);
            th__pgr_emit(tx, TH_EV_ASSIGNED, w, w->t.worker);
            th__pgr_emit(tx, TH_EV_STARTED, w, NULL);
            a->out[k++] = th__pgr_row_take(w);
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
        th__pgr_rows_free(&rs);
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
    if (c->nqueues && !(a.queues = th__pgr_text_array(c->queues, c->nqueues)))
        return TH_ENOMEM;
    int rc = th__pg_run((th__pg *)s, TH_PG_ASYNC, claim_body, &a, now, ev, NULL);
    if (rc < 0)
        claim_discard(&a); /* the last attempt's COMMIT failed */
    th__free(a.queues);
    return rc;
}

/* Loads a running task held with `lease`, locked, or says why not. */
static int leased(th__pg_tx *tx, const char *id, uint64_t lease, th__pg_row **out)
{
    th__pg_row *w;
    int rc = th__pgr_load(tx, id, 1, &w);
    if (rc)
        return rc;
    if (w->t.state != TH_TASK_RUNNING || w->t.lease != lease) {
        th__pgr_row_free(w);
        return TH_ESTALE;
    }
    *out = w;
    return 0;
}

static void extend(th__pg_tx *tx, th__pg_row *w, int64_t extend_ms)
{
    w->t.lease_expires_at = tx->now + (extend_ms > 0 ? extend_ms : w->lease_ms);
    th__evbuf_deadline(&tx->pend, th__pgr_running_key(w));
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
    th__pg_row *w;
    int rc = leased(tx, a->id, a->lease, &w);
    if (rc)
        return rc;
    extend(tx, w, a->extend_ms);
    if (a->cancel_requested)
        *a->cancel_requested = w->t.cancel_requested;
    rc = th__pgr_store_row(tx, w);
    th__pgr_row_free(w);
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
    th__pg_row *w;
    int rc = leased(tx, a->id, a->lease, &w);
    if (rc)
        return rc;
    w->t.progress = a->percent;
    w->t.step = a->step;
    w->t.total_steps = a->total;
    th__pgr_set_str(&w->t.progress_message, a->message);
    if (a->message && !w->t.progress_message) {
        th__pgr_row_free(w);
        return TH_ENOMEM;
    }
    extend(tx, w, 0);
    if (!(rc = th__pgr_store_row(tx, w)))
        th__pgr_emit(tx, TH_EV_PROGRESS, w, w->t.progress_message);
    th__pgr_row_free(w);
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
    th__pg_row *w;
    int rc = th__pgr_load(tx, a->id, 1, &w);
    if (rc)
        return rc;
    if (a->lease && (w->t.state != TH_TASK_RUNNING || w->t.lease != a->lease)) {
        th__pgr_row_free(w);
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
    th__pgr_row_free(w);
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
static int lock_batch(th__pg_tx *tx, const complete_arg *a, th__pg_rows *rs, int **has_dependents)
{
    const char **ids = th__malloc((a->n ? a->n : 1) * sizeof *ids);
    if (!ids)
        return TH_ENOMEM;
    for (size_t i = 0; i < a->n; i++)
        ids[i] = a->items[i].id ? a->items[i].id : "";
    char *arr = th__pgr_text_array(ids, a->n);
    th__free(ids);
    if (!arr)
        return TH_ENOMEM;
    th__pg_params pr = {.n = 0};
    th__pg_p_str(&pr, arr);
    int rc = th__pgr_select_rows(tx,
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
        th__pgr_rows_free(rs);
    return rc;
}

static int complete_body(th__pg_tx *tx, void *arg)
{
    complete_arg *a = arg;
    th__pg_rows rs;
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
        th__pg_row *w = rs.v[k];
        if (w->t.state != TH_TASK_RUNNING || w->t.lease != it->lease) {
            it->rc = TH_ESTALE;
            continue;
        }
        th__pgr_set_str(&w->t.result, it->result ? it->result : "null");
        if (!w->t.result) {
            it->rc = TH_ENOMEM;
            continue;
        }
        it->rc = 0;
        th__pgr_set_str(&w->t.error, NULL); /* a cancel asked for too late is moot */
        tx->d.run_ms_sum += (double)(tx->now - w->t.started_at);
        tx->d.run_n++;
        th__pgr_end_lease(w);
        w->t.finished_at = tx->now;
        w->t.progress = 100;
        th__pgr_place(tx, w, TH_TASK_COMPLETED);
        tx->d.completed++;
        ok++;
        if (!has_dependents[k]) {
            pairs_add(&up, w->t.id, w->t.result);
            th__pgr_emit(tx, TH_EV_COMPLETED, w, NULL);
            continue;
        }
        /* Releasing dependents reads their other dependencies' states:
         * the rows before this one must be written first. */
        if (!(rc = done_flush(tx, &up)) && !(rc = th__pgr_store_row(tx, w))) {
            th__pgr_emit(tx, TH_EV_COMPLETED, w, NULL);
            rc = th__pgr_unblock(tx, w);
        }
    }
    int frc = done_flush(tx, &up);
    if (!rc)
        rc = frc;
    th__free(has_dependents);
    th__pgr_rows_free(&rs);
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
    th__pg_row *w;
    int rc = leased(tx, a->id, a->lease, &w);
    if (rc)
        return rc;
    th__pgr_set_str(&w->t.error, a->message ? a->message : "failed");
    if (a->flags & TH_FAIL_TIMEOUT)
        th__pgr_emit(tx, TH_EV_TIMEOUT, w, w->t.error);
    rc = th__pgr_finish_attempt(tx, w, a->flags);
    th__pgr_row_free(w);
    return rc;
}

static int pg_fail(th_store *s, const char *id, uint64_t lease, const char *message, int flags,
                   int64_t now, th__evbuf *ev)
{
    worker_arg a = {.id = id, .lease = lease, .message = message, .flags = flags};
    return th__pg_run((th__pg *)s, TH_PG_DURABLE, fail_body, &a, now, ev, NULL);
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
    .cancel = th__pg_cancel,
    .retry = th__pg_retry,
    .get = th__pg_get,
    .list = th__pg_list,
    .logs = th__pg_logs,
    .counts = th__pg_counts,
    .stats = th__pg_stats,
    .prune = th__pg_prune,
    .queue_pause = th__pg_queue_pause,
    .queue_purge = th__pg_queue_purge,
    .tick = th__pg_tick,
    .flush = th__pg_flush,
    .worker_put = th__pg_worker_put,
    .worker_get = th__pg_worker_get,
    .worker_list = th__pg_worker_list,
};
