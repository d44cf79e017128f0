/*
 * The PostgreSQL store: connections, transactions, the schema and its
 * migrations, and LISTEN/NOTIFY wake-ups. The operations themselves (the
 * state machine in SQL) are in postgres_ops.c; see postgres.h.
 *
 * A small pool of connections lets concurrent engine calls run their
 * transactions side by side. A statement that fails because the connection
 * was lost did not commit, so the transaction is run again on a reset
 * connection; a COMMIT whose answer was lost is not retried (its outcome is
 * unknown, and repeating it could double an outcome): the caller gets TH_EIO.
 *
 * Lock order: see postgres.h.
 */
#include "store/postgres.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"

#define MAX_ATTEMPTS 4

/* ---- parameters and results --------------------------------------------- */

void th__pg_p_str(th__pg_params *pr, const char *s)
{
    pr->v[pr->n++] = s;
}

void th__pg_p_i64(th__pg_params *pr, int64_t x)
{
    snprintf(pr->buf[pr->n], sizeof pr->buf[pr->n], "%" PRId64, x);
    pr->v[pr->n] = pr->buf[pr->n];
    pr->n++;
}

void th__pg_p_dbl(th__pg_params *pr, double x)
{
    snprintf(pr->buf[pr->n], sizeof pr->buf[pr->n], "%.17g", x);
    pr->v[pr->n] = pr->buf[pr->n];
    pr->n++;
}

/* Passes a good result through; notes a failed one in tx and frees it. */
static PGresult *checked(th__pg_tx *tx, PGresult *r)
{
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return r;
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    snprintf(tx->sqlstate, sizeof tx->sqlstate, "%s", state ? state : "");
    snprintf(tx->errmsg, sizeof tx->errmsg, "%s", PQerrorMessage(tx->c));
    tx->dberr = 1;
    PQclear(r);
    return NULL;
}

PGresult *th__pg_exec(th__pg_tx *tx, const char *sql, const th__pg_params *pr)
{
    if (tx->dberr)
        return NULL;
    /* Without parameters the simple protocol runs, which allows several
     * statements (migrations). */
    return checked(tx, pr ? PQexecParams(tx->c, sql, pr->n, NULL, pr->v, NULL, NULL, 0)
                          : PQexec(tx->c, sql));
}

int th__pg_cmd(th__pg_tx *tx, const char *sql, const th__pg_params *pr)
{
    PGresult *r = th__pg_exec(tx, sql, pr);
    PQclear(r);
    return r ? 0 : -1;
}

/* Makes room for `add` more characters and the terminator; 0 or -1 (oom
 * set). */
static int s_reserve(th__pg_stmt *s, size_t add)
{
    if (s->oom)
        return -1;
    if (s->len + add + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 256;
        while (cap < s->len + add + 1)
            cap *= 2;
        char *n = th__realloc(s->sql, cap);
        if (!n) {
            s->oom = 1;
            return -1;
        }
        s->sql = n;
        s->cap = cap;
    }
    return 0;
}

void th__pg_s_sql(th__pg_stmt *s, const char *text)
{
    size_t add = strlen(text);
    if (s_reserve(s, add))
        return;
    memcpy(s->sql + s->len, text, add + 1);
    s->len += add;
}

void th__pg_s_elem(th__pg_stmt *s, const char *value)
{
    th__pg_s_sql(s, s->len ? "," : "{");
    if (!value) {
        th__pg_s_sql(s, "NULL");
        return;
    }
    size_t need = 3;
    for (const char *c = value; *c; c++)
        need += (*c == '"' || *c == '\\') ? 2 : 1;
    if (s_reserve(s, need))
        return;
    char *o = s->sql + s->len;
    *o++ = '"';
    for (const char *c = value; *c; c++) {
        if (*c == '"' || *c == '\\')
            *o++ = '\\';
        *o++ = *c;
    }
    *o++ = '"';
    *o = '\0';
    s->len = (size_t)(o - s->sql);
}

void th__pg_s_elem_i64(th__pg_stmt *s, int64_t value)
{
    char buf[24];
    snprintf(buf, sizeof buf, "%" PRId64, value);
    th__pg_s_sql(s, s->len ? "," : "{");
    th__pg_s_sql(s, buf);
}

const char *th__pg_s_array(th__pg_stmt *s)
{
    th__pg_s_sql(s, s->len ? "}" : "{}");
    return s->oom ? NULL : s->sql;
}

void th__pg_s_str(th__pg_stmt *s, const char *value)
{
    if (s->oom)
        return;
    if (s->n == s->capv) {
        int cap = s->capv ? s->capv * 2 : 32;
        char **v = th__realloc(s->v, (size_t)cap * sizeof *v);
        if (!v) {
            s->oom = 1;
            return;
        }
        s->v = v;
        s->capv = cap;
    }
    if (value && !(s->v[s->n] = th__strdup(value))) {
        s->oom = 1;
        return;
    }
    if (!value)
        s->v[s->n] = NULL;
    s->n++;
    char ph[16];
    snprintf(ph, sizeof ph, "$%d", s->n);
    th__pg_s_sql(s, ph);
}

void th__pg_s_i64(th__pg_stmt *s, int64_t value)
{
    char buf[24];
    snprintf(buf, sizeof buf, "%" PRId64, value);
    th__pg_s_str(s, buf);
}

void th__pg_s_dbl(th__pg_stmt *s, double value)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%.17g", value);
    th__pg_s_str(s, buf);
}

PGresult *th__pg_s_exec(th__pg_tx *tx, th__pg_stmt *s)
{
    if (s->oom || !s->sql || tx->dberr)
        return NULL;
    return checked(
        tx, PQexecParams(tx->c, s->sql, s->n, NULL, (const char *const *)s->v, NULL, NULL, 0));
}

void th__pg_s_free(th__pg_stmt *s)
{
    for (int i = 0; i < s->n; i++)
        th__free(s->v[i]);
    th__free(s->v);
    th__free(s->sql);
    memset(s, 0, sizeof *s);
}

int64_t th__pg_i64(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

const char *th__pg_str(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : PQgetvalue(r, row, col);
}

const char *th__pg_intern(th__pg *p, const char *queue)
{
    pthread_mutex_lock(&p->smu);
    th__pg_name *n = p->names;
    while (n && strcmp(n->name, queue) != 0)
        n = n->next;
    if (!n) {
        size_t len = strlen(queue) + 1;
        if ((n = th__malloc(sizeof *n + len))) {
            memcpy(n->name, queue, len);
            n->next = p->names;
            p->names = n;
        }
    }
    pthread_mutex_unlock(&p->smu);
    return n ? n->name : NULL;
}

/* ---- the pool ------------------------------------------------------------ */

static int take_conn(th__pg *p)
{
    pthread_mutex_lock(&p->pool_mu);
    for (;;) {
        for (int i = 0; i < TH_PG_POOL; i++) {
            if (p->idle[i]) {
                p->idle[i] = 0;
                pthread_mutex_unlock(&p->pool_mu);
                return i;
            }
        }
        pthread_cond_wait(&p->pool_cv, &p->pool_mu);
    }
}

static void give_conn(th__pg *p, int i)
{
    pthread_mutex_lock(&p->pool_mu);
    p->idle[i] = 1;
    pthread_cond_signal(&p->pool_cv);
    pthread_mutex_unlock(&p->pool_mu);
}

static void quiet(void *arg, const char *message)
{
    (void)arg;
    (void)message; /* notices (e.g. "already exists, skipping") are not errors */
}

/* Connects with a 10 s connect timeout unless the uri names its own (a
 * keyword after "dbname" would override the uri's; one before it does not). */
static PGconn *connect_to(const char *conninfo)
{
    static const char *const keys[] = {"connect_timeout", "dbname", NULL};
    const char *vals[] = {"10", conninfo, NULL};
    return PQconnectdbParams(keys, vals, 1);
}

/* Makes conns[i] usable: connects it the first time, resets it after a loss.
 * Returns 0 when it is connected. */
static int ensure_conn(th__pg *p, int i)
{
    if (p->conns[i] && PQstatus(p->conns[i]) == CONNECTION_OK)
        return 0;
    if (p->conns[i])
        PQreset(p->conns[i]);
    else
        p->conns[i] = connect_to(p->conninfo);
    if (PQstatus(p->conns[i]) != CONNECTION_OK)
        return -1;
    PQsetNoticeProcessor(p->conns[i], quiet, NULL);
    /* JIT compiles plans for tens of ms: a loss for statements that touch
     * a few dozen rows by index. */
    PGresult *r = PQexec(p->conns[i], "SET jit TO off");
    PQclear(r);
    return 0;
}

static int retryable(const th__pg_tx *tx)
{
    return PQstatus(tx->c) != CONNECTION_OK || strcmp(tx->sqlstate, "40001") == 0 ||
           strcmp(tx->sqlstate, "40P01") == 0 || strcmp(tx->sqlstate, "23505") == 0 ||
           strncmp(tx->sqlstate, "08", 2) == 0 || strcmp(tx->sqlstate, "57P01") == 0;
}

static void add_delta(th__pg *p, const th__pg_delta *d, int64_t now)
{
    pthread_mutex_lock(&p->smu);
    p->st.submitted_total += d->submitted;
    p->st.completed_total += d->completed;
    p->st.failed_attempts_total += d->failed_attempts;
    p->st.retries_total += d->retries;
    p->st.run_ms_sum += d->run_ms_sum;
    p->st.run_n += d->run_n;
    p->st.wait_ms_sum += d->wait_ms_sum;
    p->st.wait_n += d->wait_n;
    if (d->completed) {
        int64_t sec = now / 1000;
        size_t b = (size_t)(sec % TH_PG_TP_BUCKETS);
        if (p->tp_sec[b] != sec) {
            p->tp_sec[b] = sec;
            p->tp_n[b] = 0;
        }
        p->tp_n[b] += d->completed;
    }
    pthread_mutex_unlock(&p->smu);
}

/* Hands what a committed transaction noted to the caller's buffer, numbering
 * the events now that they describe a change that happened. */
static void publish_pending(th__pg_tx *tx, th__evbuf *ev)
{
    if (!ev)
        return;
    for (size_t i = 0; i < tx->pend.n; i++) {
        const th__ev *e = &tx->pend.v[i];
        th__evbuf_add(ev, e->type, e->id, e->queue, e->state, e->attempt, e->progress, e->message,
                      e->time_ms);
    }
    for (size_t i = 0; i < tx->pend.nready; i++)
        th__evbuf_ready(ev, tx->pend.ready[i]);
    if (tx->pend.ready_all)
        ev->ready_all = 1;
    th__evbuf_deadline(ev, tx->pend.deadline);
}

/* Tells other nodes which queues gained ready tasks; delivered at COMMIT. */
static void notify_ready(th__pg_tx *tx)
{
    if (tx->pend.ready_all) {
        th__pg_params pr = {.n = 0};
        th__pg_p_str(&pr, tx->p->ch_ready);
        th__pg_p_str(&pr, "");
        th__pg_cmd(tx, "SELECT pg_notify($1, $2)", &pr);
        return;
    }
    for (size_t i = 0; i < tx->pend.nready; i++) {
        size_t k = 0;
        while (k < i && tx->pend.ready[k] != tx->pend.ready[i])
            k++;
        if (k < i)
            continue; /* already told */
        th__pg_params pr = {.n = 0};
        th__pg_p_str(&pr, tx->p->ch_ready);
        th__pg_p_str(&pr, tx->pend.ready[i]);
        th__pg_cmd(tx, "SELECT pg_notify($1, $2)", &pr);
    }
}

/* Longest event message sent to other nodes (NOTIFY payloads must stay
 * under 8000 bytes); a longer one is cut at a character boundary. */
#define EV_MSG_MAX 3000

/* Sends this transaction's events to the other nodes, one notice each,
 * delivered at COMMIT: "NODE|type|state|attempt|progress|time|id|queue|M"
 * where M is "-" for no message or "+" and the message. */
static void notify_events(th__pg_tx *tx)
{
    if (!tx->pend.n)
        return;
    th__pg_stmt arr = {0};
    for (size_t i = 0; i < tx->pend.n; i++) {
        const th__ev *e = &tx->pend.v[i];
        char head[160], msg[EV_MSG_MAX + 2];
        snprintf(head, sizeof head, "%016" PRIx64 "|%d|%d|%d|%d|%" PRId64 "|%s|%s|", tx->p->node,
                 (int)e->type, (int)e->state, e->attempt, e->progress, e->time_ms, e->id, e->queue);
        size_t len = e->message ? strlen(e->message) : 0;
        if (len > EV_MSG_MAX) {
            len = EV_MSG_MAX;
            while (len && ((unsigned char)e->message[len] & 0xC0) == 0x80)
                len--;
        }
        msg[0] = e->message ? '+' : '-';
        if (e->message)
            memcpy(msg + 1, e->message, len);
        msg[e->message ? len + 1 : 1] = '\0';
        size_t hl = strlen(head), ml = strlen(msg);
        char *line = th__malloc(hl + ml + 1);
        if (!line) {
            arr.oom = 1;
            break;
        }
        memcpy(line, head, hl);
        memcpy(line + hl, msg, ml + 1);
        th__pg_s_elem(&arr, line);
        th__free(line);
    }
    const char *text = th__pg_s_array(&arr);
    if (text) {
        /* Lost on OOM: other nodes then see the change without its events. */
        th__pg_params pr = {.n = 0};
        th__pg_p_str(&pr, tx->p->ch_events);
        th__pg_p_str(&pr, text);
        th__pg_cmd(tx, "SELECT pg_notify($1, x) FROM unnest($2::text[]) AS x", &pr);
    }
    th__pg_s_free(&arr);
}

int th__pg_run(th__pg *p, th__pg_mode mode, th__pg_body body, void *arg, int64_t now, th__evbuf *ev,
               th_error *err)
{
    int slot = take_conn(p);
    int rc = TH_EIO, txn = mode != TH_PG_READ;
    th__pg_tx tx;
    memset(&tx, 0, sizeof tx);
    tx.p = p;
    tx.now = now;
    /* Always recorded: other nodes may be listening even when this one is
     * not; publish_pending keeps them only when `ev` records. */
    th__evbuf_init(&tx.pend, 1, &tx.pend_seq);
    for (int attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
        th__evbuf_reset(&tx.pend);
        memset(&tx.d, 0, sizeof tx.d);
        tx.dberr = tx.abort = 0;
        tx.sqlstate[0] = '\0';
        if (ensure_conn(p, slot) != 0) {
            snprintf(tx.errmsg, sizeof tx.errmsg, "%s", PQerrorMessage(p->conns[slot]));
            rc = th__err(err, TH_EIO, "store", "postgres: cannot connect: %s", tx.errmsg);
            if (attempt + 1 < MAX_ATTEMPTS)
                usleep(100000u << attempt);
            continue;
        }
        tx.c = p->conns[slot];
        /* The hot paths (claims, ticks) read a table that grows from empty
         * faster than autovacuum analyzes it: without statistics the planner
         * may scan and sort it whole instead of walking the ready index. */
        if (mode == TH_PG_ASYNC)
            th__pg_cmd(&tx,
                       "BEGIN; SET LOCAL synchronous_commit TO off;"
                       " SET LOCAL enable_seqscan TO off",
                       NULL);
        else if (txn)
            th__pg_cmd(&tx, "BEGIN", NULL);
        rc = body(&tx, arg);
        if (txn && tx.abort && !tx.dberr) {
            PGresult *r = PQexec(tx.c, "ROLLBACK");
            PQclear(r);
            break;
        }
        if (txn && !tx.dberr) {
            notify_ready(&tx);
            notify_events(&tx);
        }
        if (tx.dberr) {
            if (txn && PQstatus(tx.c) == CONNECTION_OK) {
                PGresult *r = PQexec(tx.c, "ROLLBACK");
                PQclear(r);
            }
            rc = th__err(err, TH_EIO, "store", "postgres: %s", tx.errmsg);
            if (retryable(&tx))
                continue;
            break;
        }
        if (txn) {
            PGresult *r = PQexec(tx.c, "COMMIT");
            int ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
            if (!ok) {
                const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
                snprintf(tx.errmsg, sizeof tx.errmsg, "%s", PQerrorMessage(tx.c));
                snprintf(tx.sqlstate, sizeof tx.sqlstate, "%s", state ? state : "");
            }
            PQclear(r);
            if (!ok) {
                /* A refused commit (serialization) changed nothing and may
                 * run again; a lost answer may have committed: report it. */
                int lost = PQstatus(tx.c) != CONNECTION_OK;
                rc = th__err(err, TH_EIO, "store", "postgres: commit %s: %s",
                             lost ? "outcome unknown" : "failed", tx.errmsg);
                if (!lost && retryable(&tx))
                    continue;
                break;
            }
        }
        add_delta(p, &tx.d, now);
        publish_pending(&tx, ev);
        break;
    }
    th__evbuf_free(&tx.pend);
    give_conn(p, slot);
    return rc;
}

/* ---- schema ---------------------------------------------------------------- */

/* Migration k brings the schema from version k to k + 1. States are stored as
 * th_task_state numbers: 0 pending, 1 scheduled, 2 blocked, 3 running, 4.. final. */
static const char *const migrations[] = {
    /* 0 -> 1: tasks, payloads inline, dependencies, logs, queues. */
    "CREATE TABLE th_queues (name text PRIMARY KEY, paused boolean NOT NULL DEFAULT false);"
    "CREATE SEQUENCE th_task_seq;"
    "CREATE TABLE th_tasks ("
    " id text PRIMARY KEY, seq bigint NOT NULL DEFAULT nextval('th_task_seq'),"
    " queue text NOT NULL, state smallint NOT NULL, priority int NOT NULL,"
    " payload text NOT NULL, metadata text, unique_key text, deps text,"
    " timeout_ms bigint NOT NULL, max_retries int NOT NULL, retry_initial_ms bigint NOT NULL,"
    " retry_max_ms bigint NOT NULL, retry_multiplier float8 NOT NULL,"
    " retry_jitter float8 NOT NULL, created_at bigint NOT NULL, run_at bigint NOT NULL,"
    " expires_at bigint NOT NULL, attempt int NOT NULL, started_at bigint NOT NULL,"
    " finished_at bigint NOT NULL, lease bigint NOT NULL, lease_ms bigint NOT NULL,"
    " lease_expires_at bigint NOT NULL, timeout_at bigint NOT NULL, worker text,"
    " cancel_requested int NOT NULL, progress int NOT NULL, step int NOT NULL,"
    " total_steps int NOT NULL, progress_message text, error text, result text,"
    " ready_at bigint NOT NULL, log_seq bigint NOT NULL DEFAULT 0,"
    " nlogs bigint NOT NULL DEFAULT 0);"
    "CREATE INDEX th_tasks_ready ON th_tasks (queue, priority DESC, seq) WHERE state = 0;"
    "CREATE INDEX th_tasks_ready_any ON th_tasks (priority DESC, seq) WHERE state = 0;"
    "CREATE INDEX th_tasks_delayed ON th_tasks (run_at) WHERE state = 1;"
    "CREATE INDEX th_tasks_running ON th_tasks ((CASE WHEN timeout_at <> 0 AND timeout_at <"
    " lease_expires_at THEN timeout_at ELSE lease_expires_at END)) WHERE state = 3;"
    "CREATE INDEX th_tasks_expiry ON th_tasks (expires_at)"
    " WHERE state IN (0, 1, 2) AND expires_at <> 0;"
    "CREATE INDEX th_tasks_finished ON th_tasks (finished_at) WHERE state >= 4;"
    "CREATE UNIQUE INDEX th_tasks_unique ON th_tasks (unique_key) WHERE unique_key IS NOT NULL;"
    "CREATE TABLE th_deps (dep_id text NOT NULL, task_id text NOT NULL"
    " REFERENCES th_tasks (id) ON DELETE CASCADE, PRIMARY KEY (dep_id, task_id));"
    "CREATE INDEX th_deps_task ON th_deps (task_id);"
    "CREATE TABLE th_logs (task_id text NOT NULL REFERENCES th_tasks (id) ON DELETE CASCADE,"
    " seq bigint NOT NULL, time_ms bigint NOT NULL, level int NOT NULL, attempt int NOT NULL,"
    " message text NOT NULL, data text, PRIMARY KEY (task_id, seq));",
    /* 1 -> 2: the daemons' shared registry of external workers. */
    "CREATE TABLE th_workers (id text PRIMARY KEY, info text NOT NULL,"
    " registered_at bigint NOT NULL, last_seen_at bigint NOT NULL);",
};
#define SCHEMA_VERSION ((int)(sizeof migrations / sizeof migrations[0]))

typedef struct migrate_arg {
    int from;
    th_error *err;
} migrate_arg;

/* Brings the schema up to date under an advisory lock, so nodes starting
 * together migrate once. Refuses a schema newer than this build. */
static int migrate_body(th__pg_tx *tx, void *arg)
{
    migrate_arg *m = arg;
    if (th__pg_cmd(tx, "SELECT pg_advisory_xact_lock(5409386)", NULL) ||
        th__pg_cmd(tx, "CREATE TABLE IF NOT EXISTS th_schema_version (version int NOT NULL)", NULL))
        return TH_EIO;
    PGresult *r = th__pg_exec(tx, "SELECT max(version) FROM th_schema_version", NULL);
    if (!r)
        return TH_EIO;
    int ver = (int)th__pg_i64(r, 0, 0);
    PQclear(r);
    m->from = ver;
    if (ver > SCHEMA_VERSION) {
        th__err(m->err, TH_EVERSION, "store",
                "the database has taskhive schema version %d, newer than this build's %d; "
                "upgrade taskhive",
                ver, SCHEMA_VERSION);
        tx->dberr = 0;
        return TH_EVERSION;
    }
    for (int v = ver; v < SCHEMA_VERSION; v++) {
        th__pg_params pr = {.n = 0};
        th__pg_p_i64(&pr, v + 1);
        if (th__pg_cmd(tx, migrations[v], NULL) ||
            th__pg_cmd(tx, "DELETE FROM th_schema_version", NULL) ||
            th__pg_cmd(tx, "INSERT INTO th_schema_version (version) VALUES ($1)", &pr))
            return TH_EIO;
    }
    return 0;
}

/* Names this database and schema's channels after a hash of both. */
static int channels_body(th__pg_tx *tx, void *arg)
{
    (void)arg;
    PGresult *r = th__pg_exec(tx, "SELECT current_database() || '.' || current_schema()", NULL);
    if (!r)
        return TH_EIO;
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (const char *c = PQgetvalue(r, 0, 0); *c; c++)
        h = (h ^ (unsigned char)*c) * 1099511628211ULL;
    PQclear(r);
    snprintf(tx->p->ch_ready, sizeof tx->p->ch_ready, "%s_%016" PRIx64, TH_PG_CHANNEL, h);
    snprintf(tx->p->ch_events, sizeof tx->p->ch_events, "%s_%016" PRIx64, TH_PG_EVENTS, h);
    return 0;
}

/* ---- wake-ups from other nodes --------------------------------------------- */

/* Parses one event notice of another node and hands it to the engine. */
static void remote_event(th__pg *p, const char *payload)
{
    char *f[9];
    char *copy = th__strdup(payload), *c = copy;
    if (!copy)
        return;
    int n = 0;
    for (; n < 8 && c; n++) {
        f[n] = c;
        if ((c = strchr(c, '|')))
            *c++ = '\0';
    }
    f[8] = c;
    th__ev e;
    memset(&e, 0, sizeof e);
    if (n == 8 && c && strtoull(f[0], NULL, 16) != p->node && strlen(f[6]) == TH_ID_LEN &&
        (e.queue = th__pg_intern(p, f[7]))) {
        e.type = (th_event_type)strtol(f[1], NULL, 10);
        e.state = (th_task_state)strtol(f[2], NULL, 10);
        e.attempt = (int)strtol(f[3], NULL, 10);
        e.progress = (int)strtol(f[4], NULL, 10);
        e.time_ms = strtoll(f[5], NULL, 10);
        memcpy(e.id, f[6], TH_ID_SIZE);
        e.message = c[0] == '+' ? c + 1 : NULL;
        p->hooks.event(p->hooks.ud, &e);
    }
    th__free(copy);
}

static void *notifier_main(void *arg)
{
    th__pg *p = arg;
    PGconn *c = NULL;
    while (!atomic_load(&p->stopping)) {
        if (!c || PQstatus(c) != CONNECTION_OK) {
            PQfinish(c);
            c = connect_to(p->conninfo);
            PQsetNoticeProcessor(c, quiet, NULL);
            char sql[128];
            snprintf(sql, sizeof sql, "LISTEN %s; LISTEN %s", p->ch_ready, p->ch_events);
            PGresult *r = PQstatus(c) == CONNECTION_OK ? PQexec(c, sql) : NULL;
            int ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
            PQclear(r);
            pthread_mutex_lock(&p->lmu);
            if (p->listening <= 0)
                p->listening = ok ? 1 : -1;
            pthread_cond_broadcast(&p->lcv);
            pthread_mutex_unlock(&p->lmu);
            if (!ok) {
                /* The engine's fallback poll covers the gap. */
                struct pollfd pf = {.fd = p->wake_fd[0], .events = POLLIN};
                poll(&pf, 1, TH_PG_POLL_MS);
                continue;
            }
            p->hooks.ready(p->hooks.ud, NULL); /* what was missed while away */
        }
        struct pollfd pf[2] = {{.fd = PQsocket(c), .events = POLLIN},
                               {.fd = p->wake_fd[0], .events = POLLIN}};
        if (poll(pf, 2, TH_PG_POLL_MS) < 0 && errno != EINTR)
            break;
        if (pf[1].revents)
            break;
        if (!PQconsumeInput(c))
            continue; /* reconnects above */
        PGnotify *n;
        while ((n = PQnotifies(c))) {
            if (strcmp(n->relname, p->ch_events) == 0)
                remote_event(p, n->extra);
            else
                p->hooks.ready(p->hooks.ud, n->extra && *n->extra ? n->extra : NULL);
            PQfreemem(n);
        }
    }
    PQfinish(c);
    return NULL;
}

static void pg_set_hooks(th_store *s, const th__store_hooks *hooks)
{
    th__pg *p = (th__pg *)s;
    if (p->has_notifier)
        return;
    p->hooks = *hooks;
    if (pthread_create(&p->notifier, NULL, notifier_main, p) != 0)
        return; /* the engine's fallback poll still finds other nodes' work */
    p->has_notifier = 1;
    /* Once the engine exists, other nodes' notices are heard: wait (a
     * little) for the first LISTEN. */
    struct timespec until = th__mono_deadline(5000);
    pthread_mutex_lock(&p->lmu);
    while (p->listening == 0 && pthread_cond_timedwait(&p->lcv, &p->lmu, &until) == 0)
        ;
    pthread_mutex_unlock(&p->lmu);
}

/* ---- open and free ------------------------------------------------------------ */

static void pg_free(th_store *s)
{
    th__pg *p = (th__pg *)s;
    if (!p)
        return;
    if (p->has_notifier) {
        atomic_store(&p->stopping, 1);
        ssize_t w = write(p->wake_fd[1], "x", 1);
        (void)w;
        pthread_join(p->notifier, NULL);
    }
    if (p->wake_fd[0] >= 0)
        close(p->wake_fd[0]);
    if (p->wake_fd[1] >= 0)
        close(p->wake_fd[1]);
    for (int i = 0; i < TH_PG_POOL; i++)
        PQfinish(p->conns[i]);
    while (p->names) {
        th__pg_name *n = p->names->next;
        th__free(p->names);
        p->names = n;
    }
    pthread_mutex_destroy(&p->pool_mu);
    pthread_cond_destroy(&p->pool_cv);
    pthread_mutex_destroy(&p->smu);
    pthread_mutex_destroy(&p->lmu);
    pthread_cond_destroy(&p->lcv);
    th__free(p->conninfo);
    th__free(p);
}

th_store *th__pg_store_open(const char *uri, const th_store_options *opts, th_error *err)
{
    (void)opts; /* durability is the server's: synchronous_commit */
    th__pg *p = th__calloc(1, sizeof *p);
    if (!p) {
        th__err(err, TH_ENOMEM, NULL, "out of memory");
        return NULL;
    }
    p->ops = th__pg_ops;
    p->ops.set_hooks = pg_set_hooks;
    p->ops.free = pg_free;
    p->base.ops = &p->ops;
    p->wake_fd[0] = p->wake_fd[1] = -1;
    pthread_mutex_init(&p->pool_mu, NULL);
    pthread_cond_init(&p->pool_cv, NULL);
    pthread_mutex_init(&p->smu, NULL);
    pthread_mutex_init(&p->lmu, NULL);
    th__cond_init_mono(&p->lcv);
    th__rng_seed(&p->rng, 0); /* random; configure may seed it */
    p->node = th__rng_next(&p->rng);
    th__ulid_init(&p->ids, 0);
    for (int i = 0; i < TH_PG_POOL; i++)
        p->idle[i] = 1;
    if (!(p->conninfo = th__strdup(uri))) {
        th__err(err, TH_ENOMEM, NULL, "out of memory");
        goto fail;
    }
    if (pipe2(p->wake_fd, O_CLOEXEC) != 0) {
        th__err(err, TH_EIO, "store", "cannot create a pipe: %s", strerror(errno));
        goto fail;
    }
    /* The first connection tells a bad uri or an unreachable server apart
     * from later losses, which are retried. */
    if (ensure_conn(p, 0) != 0) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s", PQerrorMessage(p->conns[0]));
        msg[strcspn(msg, "\n")] = '\0';
        th__err(err, TH_EIO, "store", "postgres: cannot connect: %s", msg);
        goto fail;
    }
    migrate_arg m = {.from = 0, .err = err};
    int rc = th__pg_run(p, TH_PG_DURABLE, migrate_body, &m, 0, NULL, err);
    if (rc >= 0)
        rc = th__pg_run(p, TH_PG_READ, channels_body, NULL, 0, NULL, err);
    if (rc < 0)
        goto fail;
    return &p->base;
fail:
    pg_free(&p->base);
    return NULL;
}
