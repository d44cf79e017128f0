/*
 * The sqlite store: qcore (the state machine in memory) plus a journal that
 * writes every change to one SQLite file, and reloads it on open.
 *
 * Group commit: journal records are appended under qcore's lock, in the order
 * the changes happened, to a list. One writer thread takes the whole list,
 * applies it in one transaction and commits, so every operation that arrived
 * while the previous commit was in flight shares the next one. Operations
 * that must be durable before they return (submit, complete, fail, cancel,
 * retry) wait until the commit that holds their last record is done.
 *
 * Durability: WAL with synchronous=NORMAL survives a crash of the process;
 * synchronous=FULL also survives power loss. The file is opened with
 * locking_mode=EXCLUSIVE: one process owns it, since its state lives in
 * that process's memory.
 *
 * A file that is not SQLite, that SQLite finds damaged, that belongs to
 * another program, or whose schema is newer than this build is refused before
 * anything is written to it.
 *
 * Lock order: qcore.mu, then jmu (journal callbacks run under qcore.mu).
 * The writer thread takes only jmu, and never while applying a batch.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "store/qcore.h"

#define APP_ID 0x54486976 /* "THiv" */
#define SCHEMA_VERSION 2
#define COMMIT_DELAY_US 200

enum { J_INSERT, J_UPDATE, J_LOG, J_LOG_TRIM, J_DELETE, J_QUEUE };

/* A copy of what one change wrote, owned by the journal until applied. */
typedef struct jrec {
    struct jrec *next;
    int kind;
    int64_t seq; /* the task's row id */
    char id[TH_ID_SIZE];
    /* J_INSERT */
    char *queue, *payload, *metadata, *unique_key, *deps;
    int64_t timeout_ms, created_at;
    th_retry_policy retry;
    /* J_INSERT and J_UPDATE */
    th_task_state state;
    int priority, attempt, cancel_requested, progress, step, total_steps;
    int64_t run_at, expires_at, started_at, finished_at, lease_ms, lease_expires_at, timeout_at;
    uint64_t lease;
    char *worker, *progress_message, *error, *result;
    /* J_LOG */
    qlog log;
} jrec;

typedef struct sqstore {
    th_store base;
    th_store *core;
    sqlite3 *db;
    char *path;
    sqlite3_stmt *ins_task, *ins_payload, *upd_task, *ins_log, *trim_logs, *set_queue, *del_task,
        *del_payload, *del_logs;

    pthread_mutex_t jmu;
    pthread_cond_t jcv;    /* the writer waits for records */
    pthread_cond_t donecv; /* waiters wait for commits */
    jrec *head, *tail;
    uint64_t appended, committed;
    int waiters; /* threads in wait_durable */
    int failed;  /* sticky TH_EIO after a failed commit */
    int stop;
    pthread_t writer;
    int has_writer;
} sqstore;

#define SQ(s) ((sqstore *)(s))

/* ---- journal: called under qcore's lock ----------------------------------- */

static void jpush(sqstore *q, jrec *r)
{
    pthread_mutex_lock(&q->jmu);
    if (!r) {
        /* Out of memory: the change stays in memory but will not reach the
         * file; report it as a storage failure rather than pretend. */
        q->failed = TH_EIO;
    } else {
        r->next = NULL;
        if (q->tail)
            q->tail->next = r;
        else
            q->head = r;
        q->tail = r;
        q->appended++;
        pthread_cond_signal(&q->jcv);
    }
    pthread_mutex_unlock(&q->jmu);
}

static void jrec_free(jrec *r)
{
    th__free(r->queue);
    th__free(r->payload);
    th__free(r->metadata);
    th__free(r->unique_key);
    th__free(r->deps);
    th__free(r->worker);
    th__free(r->progress_message);
    th__free(r->error);
    th__free(r->result);
    th__free(r->log.message);
    th__free(r->log.data);
    th__free(r);
}

static int dup_into(char **slot, const char *s)
{
    return !s || (*slot = th__strdup(s)) != NULL;
}

static jrec *mutable_rec(int kind, const qtask *t)
{
    jrec *r = th__calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->kind = kind;
    r->seq = (int64_t)t->seq;
    memcpy(r->id, t->id, TH_ID_SIZE);
    r->state = t->state;
    r->priority = t->priority;
    r->attempt = t->attempt;
    r->cancel_requested = t->cancel_requested;
    r->progress = t->progress;
    r->step = t->step;
    r->total_steps = t->total_steps;
    r->run_at = t->run_at;
    r->expires_at = t->expires_at;
    r->started_at = t->started_at;
    r->finished_at = t->finished_at;
    r->lease = t->lease;
    r->lease_ms = t->lease_ms;
    r->lease_expires_at = t->lease_expires_at;
    r->timeout_at = t->timeout_at;
    if (!dup_into(&r->worker, t->worker) || !dup_into(&r->progress_message, t->progress_message) ||
        !dup_into(&r->error, t->error) || !dup_into(&r->result, t->result)) {
        jrec_free(r);
        return NULL;
    }
    return r;
}

static void j_insert(void *ud, const qtask *t)
{
    jrec *r = mutable_rec(J_INSERT, t);
    if (r) {
        r->timeout_ms = t->timeout_ms;
        r->created_at = t->created_at;
        r->retry = t->retry;
        int ok = dup_into(&r->queue, th__qcore_queue_name(t)) &&
                 dup_into(&r->payload, t->payload) && dup_into(&r->metadata, t->metadata) &&
                 dup_into(&r->unique_key, t->unique_key);
        if (ok && t->ndeps) {
            /* Ids have a fixed length, so the list is stored as one string. */
            if ((r->deps = th__malloc((size_t)t->ndeps * TH_ID_LEN + 1))) {
                for (uint32_t k = 0; k < t->ndeps; k++)
                    memcpy(r->deps + (size_t)k * TH_ID_LEN, t->deps[k], TH_ID_LEN);
                r->deps[(size_t)t->ndeps * TH_ID_LEN] = '\0';
            } else {
                ok = 0;
            }
        }
        if (!ok) {
            jrec_free(r);
            r = NULL;
        }
    }
    jpush(ud, r);
}

static void j_update(void *ud, const qtask *t)
{
    jpush(ud, mutable_rec(J_UPDATE, t));
}

static void j_log(void *ud, const qtask *t, const qlog *l)
{
    jrec *r = th__calloc(1, sizeof *r);
    if (r) {
        r->kind = J_LOG;
        memcpy(r->id, t->id, TH_ID_SIZE);
        r->log = *l;
        r->log.message = th__strdup(l->message);
        r->log.data = l->data ? th__strdup(l->data) : NULL;
        if (!r->log.message || (l->data && !r->log.data)) {
            jrec_free(r);
            r = NULL;
        }
    }
    jpush(ud, r);
}

static void j_log_trim(void *ud, const qtask *t, int64_t upto)
{
    jrec *r = th__calloc(1, sizeof *r);
    if (r) {
        r->kind = J_LOG_TRIM;
        memcpy(r->id, t->id, TH_ID_SIZE);
        r->log.seq = upto;
    }
    jpush(ud, r);
}

static void j_queue(void *ud, const char *name, int paused)
{
    jrec *r = th__calloc(1, sizeof *r);
    if (r) {
        r->kind = J_QUEUE;
        r->cancel_requested = paused; /* reused: the queue's paused flag */
        if (!(r->queue = th__strdup(name))) {
            jrec_free(r);
            r = NULL;
        }
    }
    jpush(ud, r);
}

static void j_remove(void *ud, const qtask *t)
{
    jrec *r = th__calloc(1, sizeof *r);
    if (r) {
        r->kind = J_DELETE;
        r->seq = (int64_t)t->seq;
        memcpy(r->id, t->id, TH_ID_SIZE);
    }
    jpush(ud, r);
}

/* ---- the writer thread ------------------------------------------------------ */

static void bind_text(sqlite3_stmt *st, int i, const char *s)
{
    if (s)
        sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

/* Binds the columns every row change writes, from ?1 to ?19. */
static void bind_mutable(sqlite3_stmt *st, const jrec *r)
{
    sqlite3_bind_text(st, 1, th_task_state_name(r->state), -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, r->priority);
    sqlite3_bind_int(st, 3, r->attempt);
    sqlite3_bind_int64(st, 4, r->run_at);
    sqlite3_bind_int64(st, 5, r->expires_at);
    sqlite3_bind_int64(st, 6, r->started_at);
    sqlite3_bind_int64(st, 7, r->finished_at);
    sqlite3_bind_int64(st, 8, (int64_t)r->lease);
    sqlite3_bind_int64(st, 9, r->lease_ms);
    sqlite3_bind_int64(st, 10, r->lease_expires_at);
    sqlite3_bind_int64(st, 11, r->timeout_at);
    bind_text(st, 12, r->worker);
    sqlite3_bind_int(st, 13, r->cancel_requested);
    sqlite3_bind_int(st, 14, r->progress);
    sqlite3_bind_int(st, 15, r->step);
    sqlite3_bind_int(st, 16, r->total_steps);
    bind_text(st, 17, r->progress_message);
    bind_text(st, 18, r->error);
    bind_text(st, 19, r->result);
}

static int step_reset(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int apply(sqstore *q, const jrec *r)
{
    int rc;
    switch (r->kind) {
    case J_INSERT:
        bind_mutable(q->ins_task, r);
        sqlite3_bind_int64(q->ins_task, 20, r->seq);
        sqlite3_bind_text(q->ins_task, 21, r->id, TH_ID_LEN, SQLITE_STATIC);
        bind_text(q->ins_task, 22, r->queue);
        bind_text(q->ins_task, 23, r->metadata);
        bind_text(q->ins_task, 24, r->unique_key);
        bind_text(q->ins_task, 25, r->deps);
        sqlite3_bind_int64(q->ins_task, 26, r->timeout_ms);
        sqlite3_bind_int(q->ins_task, 27, r->retry.max_retries);
        sqlite3_bind_int64(q->ins_task, 28, r->retry.initial_delay_ms);
        sqlite3_bind_int64(q->ins_task, 29, r->retry.max_delay_ms);
        sqlite3_bind_double(q->ins_task, 30, r->retry.multiplier);
        sqlite3_bind_double(q->ins_task, 31, r->retry.jitter);
        sqlite3_bind_int64(q->ins_task, 32, r->created_at);
        if ((rc = step_reset(q->ins_task)))
            return rc;
        sqlite3_bind_int64(q->ins_payload, 1, r->seq);
        bind_text(q->ins_payload, 2, r->payload);
        return step_reset(q->ins_payload);
    case J_UPDATE:
        bind_mutable(q->upd_task, r);
        sqlite3_bind_int64(q->upd_task, 20, r->seq);
        return step_reset(q->upd_task);
    case J_LOG:
        sqlite3_bind_text(q->ins_log, 1, r->id, TH_ID_LEN, SQLITE_STATIC);
        sqlite3_bind_int64(q->ins_log, 2, r->log.seq);
        sqlite3_bind_int64(q->ins_log, 3, r->log.time_ms);
        sqlite3_bind_int(q->ins_log, 4, (int)r->log.level);
        sqlite3_bind_int(q->ins_log, 5, r->log.attempt);
        bind_text(q->ins_log, 6, r->log.message);
        bind_text(q->ins_log, 7, r->log.data);
        return step_reset(q->ins_log);
    case J_QUEUE:
        bind_text(q->set_queue, 1, r->queue);
        sqlite3_bind_int(q->set_queue, 2, r->cancel_requested);
        return step_reset(q->set_queue);
    case J_LOG_TRIM:
        sqlite3_bind_text(q->trim_logs, 1, r->id, TH_ID_LEN, SQLITE_STATIC);
        sqlite3_bind_int64(q->trim_logs, 2, r->log.seq);
        return step_reset(q->trim_logs);
    case J_DELETE:
        sqlite3_bind_int64(q->del_task, 1, r->seq);
        sqlite3_bind_int64(q->del_payload, 1, r->seq);
        sqlite3_bind_text(q->del_logs, 1, r->id, TH_ID_LEN, SQLITE_STATIC);
        if ((rc = step_reset(q->del_task)) || (rc = step_reset(q->del_payload)))
            return rc;
        return step_reset(q->del_logs);
    }
    return SQLITE_MISUSE;
}

static void *writer_main(void *arg)
{
    sqstore *q = arg;
    pthread_mutex_lock(&q->jmu);
    for (;;) {
        while (!q->head && !q->stop)
            pthread_cond_wait(&q->jcv, &q->jmu);
        if (!q->head)
            break;
        if (q->waiters >= 2 && !q->stop) {
            /* Commit delay: with several threads waiting on commits, more
             * records are likely a few microseconds away (the next request
             * of a busy server); one short wait lets this commit carry them
             * too. A lone waiter never pays it. */
            struct timespec until = th__mono_deadline_us(COMMIT_DELAY_US);
            while (th__mono_ns() < (int64_t)until.tv_sec * 1000000000 + until.tv_nsec)
                pthread_cond_timedwait(&q->jcv, &q->jmu, &until);
        }
        jrec *list = q->head;
        uint64_t upto = q->appended;
        int already_failed = q->failed;
        q->head = q->tail = NULL;
        pthread_mutex_unlock(&q->jmu);

        /* After a failed commit the file no longer matches memory: later
         * batches could update rows whose insert was lost, so none is
         * applied. The store refuses changes from then on (TH_EIO). */
        int rc = already_failed ? SQLITE_ABORT : sqlite3_exec(q->db, "BEGIN", NULL, NULL, NULL);
        for (jrec *r = list; r && rc == SQLITE_OK; r = r->next)
            rc = apply(q, r);
        if (rc == SQLITE_OK)
            rc = sqlite3_exec(q->db, "COMMIT", NULL, NULL, NULL);
        if (rc != SQLITE_OK && !already_failed) {
            fprintf(stderr, "taskhive: sqlite store %s: write failed: %s\n", q->path,
                    sqlite3_errmsg(q->db));
            sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
        }
        while (list) {
            jrec *next = list->next;
            jrec_free(list);
            list = next;
        }

        pthread_mutex_lock(&q->jmu);
        if (rc != SQLITE_OK)
            q->failed = TH_EIO;
        q->committed = upto;
        pthread_cond_broadcast(&q->donecv);
    }
    pthread_mutex_unlock(&q->jmu);
    return NULL;
}

/* Waits until everything journaled so far is committed. */
static int wait_durable(sqstore *q)
{
    pthread_mutex_lock(&q->jmu);
    uint64_t want = q->appended;
    q->waiters++;
    while (q->committed < want && !q->failed)
        pthread_cond_wait(&q->donecv, &q->jmu);
    q->waiters--;
    int rc = q->failed;
    pthread_mutex_unlock(&q->jmu);
    return rc;
}

static int failed(sqstore *q)
{
    pthread_mutex_lock(&q->jmu);
    int rc = q->failed;
    pthread_mutex_unlock(&q->jmu);
    return rc;
}

/* ---- operations: qcore's, plus durability ------------------------------------ */

#define CORE_OPS(q) ((q)->core->ops)

static int sq_configure(th_store *s, const th__store_config *cfg)
{
    return CORE_OPS(SQ(s))->configure(SQ(s)->core, cfg);
}

static int sq_submit(th_store *s, th__submit *items, size_t n, int64_t now, th__evbuf *ev,
                     th_error *err)
{
    sqstore *q = SQ(s);
    int rc = failed(q);
    if (rc)
        return th__err(err, rc, NULL, "the database %s can no longer be written", q->path);
    rc = CORE_OPS(q)->submit(q->core, items, n, now, ev, err);
    if (rc == 0 && (rc = wait_durable(q)))
        th__err(err, rc, NULL, "writing to %s failed", q->path);
    return rc;
}

static int sq_claim(th_store *s, const th__claim *c, int64_t now, th_task **out, th__evbuf *ev)
{
    sqstore *q = SQ(s);
    int rc = failed(q);
    return rc ? rc : CORE_OPS(q)->claim(q->core, c, now, out, ev);
}

static int sq_heartbeat(th_store *s, const char *id, uint64_t lease, int64_t extend_ms, int64_t now,
                        int *cancel_requested, th__evbuf *ev)
{
    sqstore *q = SQ(s);
    int rc = failed(q);
    return rc ? rc
              : CORE_OPS(q)->heartbeat(q->core, id, lease, extend_ms, now, cancel_requested, ev);
}

static int sq_progress(th_store *s, const char *id, uint64_t lease, int percent, int step,
                       int total, const char *message, int64_t now, th__evbuf *ev)
{
    sqstore *q = SQ(s);
    int rc = failed(q);
    return rc ? rc
              : CORE_OPS(q)->progress(q->core, id, lease, percent, step, total, message, now, ev);
}

static int sq_log(th_store *s, const char *id, uint64_t lease, th_log_level level,
                  const char *message, const char *data, int64_t now)
{
    sqstore *q = SQ(s);
    int rc = failed(q);
    return rc ? rc : CORE_OPS(q)->log(q->core, id, lease, level, message, data, now);
}

static int sq_complete(th_store *s, th_completion *items, size_t n, int64_t now, th__evbuf *ev)
{
    sqstore *q = SQ(s);
    if (failed(q))
        return TH_EIO;
    int ok = CORE_OPS(q)->complete(q->core, items, n, now, ev);
    int rc = ok > 0 ? wait_durable(q) : 0;
    return rc ? rc : ok;
}

static int sq_fail(th_store *s, const char *id, uint64_t lease, const char *message, int flags,
                   int64_t now, th__evbuf *ev)
{
    sqstore *q = SQ(s);
    int rc = failed(q);
    if (rc)
        return rc;
    rc = CORE_OPS(q)->fail(q->core, id, lease, message, flags, now, ev);
    return rc == 0 ? wait_durable(q) : rc;
}

static int sq_cancel(th_store *s, const char *id, const char *reason, int64_t now, th__evbuf *ev)
{
    sqstore *q = SQ(s);
    int rc = failed(q);
    if (rc)
        return rc;
    rc = CORE_OPS(q)->cancel(q->core, id, reason, now, ev);
    int w = rc >= 0 ? wait_durable(q) : 0;
    return w ? w : rc;
}

static int sq_retry(th_store *s, const char *id, int64_t now, th__evbuf *ev, th_error *err)
{
    sqstore *q = SQ(s);
    int rc = failed(q);
    if (rc)
        return th__err(err, rc, NULL, "the database %s can no longer be written", q->path);
    rc = CORE_OPS(q)->retry(q->core, id, now, ev, err);
    if (rc == 0 && (rc = wait_durable(q)))
        th__err(err, rc, NULL, "writing to %s failed", q->path);
    return rc;
}

static int sq_get(th_store *s, const char *id, th_task **out)
{
    return CORE_OPS(SQ(s))->get(SQ(s)->core, id, out);
}

static int sq_list(th_store *s, const th_list_filter *f, th_task ***out, size_t *n)
{
    return CORE_OPS(SQ(s))->list(SQ(s)->core, f, out, n);
}

static int sq_logs(th_store *s, const char *id, int64_t after, size_t limit, th_log_entry **out,
                   size_t *n)
{
    return CORE_OPS(SQ(s))->logs(SQ(s)->core, id, after, limit, out, n);
}

static int sq_counts(th_store *s, th_queue_counts **out, size_t *n)
{
    return CORE_OPS(SQ(s))->counts(SQ(s)->core, out, n);
}

static int sq_stats(th_store *s, int64_t now, th__store_stats *out)
{
    return CORE_OPS(SQ(s))->stats(SQ(s)->core, now, out);
}

static int sq_prune(th_store *s, int64_t before, int64_t now)
{
    sqstore *q = SQ(s);
    if (failed(q))
        return TH_EIO;
    int n = CORE_OPS(q)->prune(q->core, before, now);
    int rc = n > 0 ? wait_durable(q) : 0;
    return rc ? rc : n;
}

static int sq_queue_pause(th_store *s, const char *queue, int paused, th__evbuf *ev)
{
    sqstore *q = SQ(s);
    int rc = failed(q);
    if (rc)
        return rc;
    rc = CORE_OPS(q)->queue_pause(q->core, queue, paused, ev);
    return rc == 0 ? wait_durable(q) : rc;
}

static int sq_queue_purge(th_store *s, const char *queue, const char *reason, int64_t now,
                          th__evbuf *ev)
{
    sqstore *q = SQ(s);
    if (failed(q))
        return TH_EIO;
    int n = CORE_OPS(q)->queue_purge(q->core, queue, reason, now, ev);
    int rc = n > 0 ? wait_durable(q) : 0;
    return rc ? rc : n;
}

static int sq_tick(th_store *s, int64_t now, int64_t *next, th__evbuf *ev)
{
    if (failed(SQ(s))) {
        *next = INT64_MAX;
        return TH_EIO;
    }
    return CORE_OPS(SQ(s))->tick(SQ(s)->core, now, next, ev);
}

static int sq_flush(th_store *s)
{
    return wait_durable(SQ(s));
}

static void sq_free(th_store *s)
{
    sqstore *q = SQ(s);
    if (!q)
        return;
    if (q->has_writer) {
        pthread_mutex_lock(&q->jmu);
        q->stop = 1;
        pthread_cond_signal(&q->jcv);
        pthread_mutex_unlock(&q->jmu);
        pthread_join(q->writer, NULL);
    }
    while (q->head) {
        jrec *next = q->head->next;
        jrec_free(q->head);
        q->head = next;
    }
    sqlite3_stmt *stmts[] = {q->ins_task,  q->ins_payload, q->upd_task,    q->ins_log, q->trim_logs,
                             q->set_queue, q->del_task,    q->del_payload, q->del_logs};
    for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++)
        sqlite3_finalize(stmts[i]);
    if (q->db)
        sqlite3_close(q->db);
    if (q->core)
        q->core->ops->free(q->core);
    pthread_mutex_destroy(&q->jmu);
    pthread_cond_destroy(&q->jcv);
    pthread_cond_destroy(&q->donecv);
    th__free(q->path);
    th__free(q);
}

static const th__store_ops sqlite_ops = {
    .kind = "sqlite",
    .configure = sq_configure,
    .submit = sq_submit,
    .claim = sq_claim,
    .heartbeat = sq_heartbeat,
    .progress = sq_progress,
    .log = sq_log,
    .complete = sq_complete,
    .fail = sq_fail,
    .cancel = sq_cancel,
    .retry = sq_retry,
    .get = sq_get,
    .list = sq_list,
    .logs = sq_logs,
    .counts = sq_counts,
    .stats = sq_stats,
    .prune = sq_prune,
    .queue_pause = sq_queue_pause,
    .queue_purge = sq_queue_purge,
    .tick = sq_tick,
    .flush = sq_flush,
    .free = sq_free,
};

/* ---- schema ------------------------------------------------------------------ */

/* migrations[v] moves a database from user_version v to v + 1. */
static const char *const migrations[SCHEMA_VERSION] = {
    "CREATE TABLE tasks ("
    " seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, queue TEXT NOT NULL,"
    " state TEXT NOT NULL, priority INTEGER NOT NULL, metadata TEXT, unique_key TEXT,"
    " deps TEXT, timeout_ms INTEGER NOT NULL, max_retries INTEGER NOT NULL,"
    " retry_initial_ms INTEGER NOT NULL, retry_max_ms INTEGER NOT NULL,"
    " retry_multiplier REAL NOT NULL, retry_jitter REAL NOT NULL,"
    " created_at INTEGER NOT NULL, run_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,"
    " attempt INTEGER NOT NULL, started_at INTEGER NOT NULL, finished_at INTEGER NOT NULL,"
    " lease INTEGER NOT NULL, lease_ms INTEGER NOT NULL, lease_expires_at INTEGER NOT NULL,"
    " timeout_at INTEGER NOT NULL, worker TEXT, cancel_requested INTEGER NOT NULL,"
    " progress INTEGER NOT NULL, step INTEGER NOT NULL, total_steps INTEGER NOT NULL,"
    " progress_message TEXT, error TEXT, result TEXT);"
    "CREATE TABLE task_payloads (seq INTEGER PRIMARY KEY, payload TEXT NOT NULL);"
    "CREATE TABLE task_logs (task_id TEXT NOT NULL, seq INTEGER NOT NULL,"
    " time_ms INTEGER NOT NULL, level INTEGER NOT NULL, attempt INTEGER NOT NULL,"
    " message TEXT NOT NULL, data TEXT, PRIMARY KEY (task_id, seq)) WITHOUT ROWID;",
    /* 1 -> 2: queues can be paused. */
    "CREATE TABLE queues (name TEXT PRIMARY KEY, paused INTEGER NOT NULL) WITHOUT ROWID;",
};

#define MUTABLE_SET                                                                                \
    "state=?1, priority=?2, attempt=?3, run_at=?4, expires_at=?5, started_at=?6,"                  \
    " finished_at=?7, lease=?8, lease_ms=?9, lease_expires_at=?10, timeout_at=?11,"                \
    " worker=?12, cancel_requested=?13, progress=?14, step=?15, total_steps=?16,"                  \
    " progress_message=?17, error=?18, result=?19"

static const char sql_ins_task[] =
    "INSERT INTO tasks (state, priority, attempt, run_at, expires_at, started_at, finished_at,"
    " lease, lease_ms, lease_expires_at, timeout_at, worker, cancel_requested, progress, step,"
    " total_steps, progress_message, error, result, seq, id, queue, metadata, unique_key, deps,"
    " timeout_ms, max_retries, retry_initial_ms, retry_max_ms, retry_multiplier, retry_jitter,"
    " created_at) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,"
    "?20,?21,?22,?23,?24,?25,?26,?27,?28,?29,?30,?31,?32)";

static int fail_db(sqstore *q, th_error *err, int code, const char *what)
{
    return th__err(err, code, "store", "%s: %s: %s", q->path, what,
                   q->db ? sqlite3_errmsg(q->db) : "cannot open");
}

static int code_of(int sqlite_rc)
{
    switch (sqlite_rc & 0xff) {
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return TH_ECORRUPT;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return TH_EBUSY;
    case SQLITE_NOMEM:
        return TH_ENOMEM;
    default:
        return TH_EIO;
    }
}

static int pragma_int(sqstore *q, const char *sql, int64_t *out)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(q->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(st, 0);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

/* Checks that an existing file is ours and not from the future, then brings
 * its schema up to date. Nothing is written before the checks pass. */
static int prepare_schema(sqstore *q, th_error *err)
{
    int64_t app = 0, ver = 0, ntables = 0;
    int rc;
    if ((rc = pragma_int(q, "PRAGMA application_id", &app)) ||
        (rc = pragma_int(q, "PRAGMA user_version", &ver)) ||
        (rc = pragma_int(q, "SELECT count(*) FROM sqlite_master", &ntables)))
        return fail_db(q, err, code_of(rc), "cannot read the database header");
    if (app != APP_ID && (app != 0 || ntables != 0))
        return th__err(err, TH_ECORRUPT, "store",
                       "%s is an SQLite database of another program, not taskhive's; refusing "
                       "to touch it",
                       q->path);
    if (ver > SCHEMA_VERSION)
        return th__err(err, TH_EVERSION, "store",
                       "%s has schema version %lld, newer than this build's %d; upgrade "
                       "taskhive",
                       q->path, (long long)ver, SCHEMA_VERSION);
    if ((rc = sqlite3_exec(q->db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL)))
        return fail_db(q, err, code_of(rc), "cannot enable WAL");
    for (int64_t v = ver; v < SCHEMA_VERSION; v++) {
        char sql[96];
        snprintf(sql, sizeof sql, "PRAGMA user_version=%lld; PRAGMA application_id=%d;",
                 (long long)v + 1, APP_ID);
        if ((rc = sqlite3_exec(q->db, "BEGIN IMMEDIATE", NULL, NULL, NULL)) ||
            (rc = sqlite3_exec(q->db, migrations[v], NULL, NULL, NULL)) ||
            (rc = sqlite3_exec(q->db, sql, NULL, NULL, NULL)) ||
            (rc = sqlite3_exec(q->db, "COMMIT", NULL, NULL, NULL))) {
            int code = code_of(rc);
            fail_db(q, err, code, "schema migration failed");
            sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
            return code;
        }
    }
    return 0;
}

static const char *col_text(sqlite3_stmt *st, int i)
{
    return (const char *)sqlite3_column_text(st, i);
}

static int load_queues(sqstore *q, th_error *err)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(q->db, "SELECT name, paused FROM queues", -1, &st, NULL);
    if (rc != SQLITE_OK)
        return fail_db(q, err, code_of(rc), "cannot read queues");
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = col_text(st, 0);
        if (name && th__qcore_load_queue(q->core, name, sqlite3_column_int(st, 1))) {
            sqlite3_finalize(st);
            return th__err(err, TH_ENOMEM, NULL, "out of memory loading %s", q->path);
        }
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : fail_db(q, err, code_of(rc), "cannot read queues");
}

static int load_tasks(sqstore *q, th_error *err)
{
    static const char sql[] =
        "SELECT t.seq, id, queue, state, priority, metadata, unique_key, deps, timeout_ms,"
        " max_retries, retry_initial_ms, retry_max_ms, retry_multiplier, retry_jitter,"
        " created_at, run_at, expires_at, attempt, started_at, finished_at, lease, lease_ms,"
        " lease_expires_at, timeout_at, worker, cancel_requested, progress, step, total_steps,"
        " progress_message, error, result, p.payload"
        " FROM tasks t JOIN task_payloads p ON p.seq = t.seq ORDER BY t.seq";
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(q->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return fail_db(q, err, code_of(rc), "cannot read tasks");
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        qtask *t = th__qcore_task_alloc();
        if (!t)
            goto oom;
        const char *id = col_text(st, 1), *deps = col_text(st, 7);
        t->seq = (uint64_t)sqlite3_column_int64(st, 0);
        snprintf(t->id, sizeof t->id, "%s", id ? id : "");
        if (th_task_state_parse(col_text(st, 3), &t->state) != 0) {
            th__qcore_task_free(t);
            sqlite3_finalize(st);
            return th__err(err, TH_ECORRUPT, "store", "%s: task %s has an unknown state", q->path,
                           t->id);
        }
        t->priority = sqlite3_column_int(st, 4);
        t->timeout_ms = sqlite3_column_int64(st, 8);
        t->retry.max_retries = sqlite3_column_int(st, 9);
        t->retry.initial_delay_ms = sqlite3_column_int64(st, 10);
        t->retry.max_delay_ms = sqlite3_column_int64(st, 11);
        t->retry.multiplier = sqlite3_column_double(st, 12);
        t->retry.jitter = sqlite3_column_double(st, 13);
        t->created_at = sqlite3_column_int64(st, 14);
        t->run_at = sqlite3_column_int64(st, 15);
        t->expires_at = sqlite3_column_int64(st, 16);
        t->attempt = sqlite3_column_int(st, 17);
        t->started_at = sqlite3_column_int64(st, 18);
        t->finished_at = sqlite3_column_int64(st, 19);
        t->lease = (uint64_t)sqlite3_column_int64(st, 20);
        t->lease_ms = sqlite3_column_int64(st, 21);
        t->lease_expires_at = sqlite3_column_int64(st, 22);
        t->timeout_at = sqlite3_column_int64(st, 23);
        t->cancel_requested = sqlite3_column_int(st, 25);
        t->progress = sqlite3_column_int(st, 26);
        t->step = sqlite3_column_int(st, 27);
        t->total_steps = sqlite3_column_int(st, 28);
        int ok = dup_into(&t->metadata, col_text(st, 5)) &&
                 dup_into(&t->unique_key, col_text(st, 6)) &&
                 dup_into(&t->worker, col_text(st, 24)) &&
                 dup_into(&t->progress_message, col_text(st, 29)) &&
                 dup_into(&t->error, col_text(st, 30)) && dup_into(&t->result, col_text(st, 31)) &&
                 dup_into(&t->payload, col_text(st, 32));
        size_t dl = deps ? strlen(deps) : 0;
        if (ok && dl) {
            t->ndeps = (uint32_t)(dl / TH_ID_LEN);
            if ((t->deps = th__malloc((size_t)t->ndeps * TH_ID_SIZE))) {
                for (uint32_t k = 0; k < t->ndeps; k++) {
                    memcpy(t->deps[k], deps + (size_t)k * TH_ID_LEN, TH_ID_LEN);
                    t->deps[k][TH_ID_LEN] = '\0';
                }
            } else {
                ok = 0;
            }
        }
        if (!ok) {
            th__qcore_task_free(t);
            goto oom;
        }
        if (th__qcore_load_task(q->core, t, col_text(st, 2) ? col_text(st, 2) : "default"))
            goto oom;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return fail_db(q, err, code_of(rc), "cannot read tasks");

    rc = sqlite3_prepare_v2(q->db,
                            "SELECT task_id, seq, time_ms, level, attempt, message, data"
                            " FROM task_logs ORDER BY task_id, seq",
                            -1, &st, NULL);
    if (rc != SQLITE_OK)
        return fail_db(q, err, code_of(rc), "cannot read task logs");
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        qtask *t = th__qcore_find(q->core, col_text(st, 0));
        if (!t)
            continue; /* a log row of a pruned task */
        qlog l = {
            .seq = sqlite3_column_int64(st, 1),
            .time_ms = sqlite3_column_int64(st, 2),
            .level = (th_log_level)sqlite3_column_int(st, 3),
            .attempt = sqlite3_column_int(st, 4),
            .message = (char *)col_text(st, 5),
            .data = (char *)col_text(st, 6),
        };
        if (th__qcore_load_log(q->core, t, &l))
            goto oom;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return fail_db(q, err, code_of(rc), "cannot read task logs");
    if (th__qcore_load_done(q->core))
        return th__err(err, TH_ENOMEM, NULL, "out of memory loading %s", q->path);
    return 0;
oom:
    sqlite3_finalize(st);
    return th__err(err, TH_ENOMEM, NULL, "out of memory loading %s", q->path);
}

/* Refuses a file that exists but does not start like an SQLite database,
 * before SQLite gets a chance to touch it. */
static int check_header(const char *path, th_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT
                   ? 0
                   : th__err(err, TH_EIO, "store", "cannot open %s: %s", path, strerror(errno));
    char buf[16];
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    if (n == 0)
        return 0;
    if (n != (ssize_t)sizeof buf || memcmp(buf, "SQLite format 3", 16) != 0)
        return th__err(err, TH_ECORRUPT, "store",
                       "%s is not an SQLite database; refusing to touch it", path);
    return 0;
}

th_store *th__sqlite_store_open(const char *path, const th_store_options *opts, th_error *err)
{
    if (check_header(path, err))
        return NULL;
    sqstore *q = th__calloc(1, sizeof *q);
    if (!q) {
        th__err(err, TH_ENOMEM, NULL, "out of memory");
        return NULL;
    }
    q->base.ops = &sqlite_ops;
    pthread_mutex_init(&q->jmu, NULL);
    th__cond_init_mono(&q->jcv); /* timed waits use CLOCK_MONOTONIC */
    pthread_cond_init(&q->donecv, NULL);
    if (!(q->path = th__strdup(path)) || !(q->core = th__qcore_new("sqlite", err))) {
        th__err(err, TH_ENOMEM, NULL, "out of memory");
        goto fail;
    }
    int rc = sqlite3_open_v2(
        path, &q->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        fail_db(q, err, code_of(rc), "cannot open");
        goto fail;
    }
    sqlite3_extended_result_codes(q->db, 0);
    /* Exclusive from the first read on: one process owns the file. */
    if ((rc = sqlite3_exec(q->db, "PRAGMA locking_mode=EXCLUSIVE", NULL, NULL, NULL))) {
        fail_db(q, err, code_of(rc), "cannot lock");
        goto fail;
    }
    if (prepare_schema(q, err))
        goto fail;
    /* Take the write lock now so a second process fails here, not later. */
    if ((rc = sqlite3_exec(q->db, "BEGIN IMMEDIATE; COMMIT;", NULL, NULL, NULL))) {
        if (code_of(rc) == TH_EBUSY)
            th__err(err, TH_EBUSY, "store", "%s is in use by another process", path);
        else
            fail_db(q, err, code_of(rc), "cannot lock");
        goto fail;
    }
    const char *sync = opts->durability == TH_DURABILITY_FULL ? "PRAGMA synchronous=FULL"
                                                              : "PRAGMA synchronous=NORMAL";
    if ((rc = sqlite3_exec(q->db, sync, NULL, NULL, NULL))) {
        fail_db(q, err, code_of(rc), "cannot set durability");
        goto fail;
    }
    struct {
        sqlite3_stmt **st;
        const char *sql;
    } stmts[] = {
        {&q->ins_task, sql_ins_task},
        {&q->ins_payload, "INSERT INTO task_payloads (seq, payload) VALUES (?1, ?2)"},
        {&q->upd_task, "UPDATE tasks SET " MUTABLE_SET " WHERE seq=?20"},
        {&q->ins_log, "INSERT OR REPLACE INTO task_logs (task_id, seq, time_ms, level, attempt,"
                      " message, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"},
        {&q->trim_logs, "DELETE FROM task_logs WHERE task_id=?1 AND seq<=?2"},
        {&q->set_queue, "INSERT OR REPLACE INTO queues (name, paused) VALUES (?1, ?2)"},
        {&q->del_task, "DELETE FROM tasks WHERE seq=?1"},
        {&q->del_payload, "DELETE FROM task_payloads WHERE seq=?1"},
        {&q->del_logs, "DELETE FROM task_logs WHERE task_id=?1"},
    };
    for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++) {
        if ((rc = sqlite3_prepare_v3(q->db, stmts[i].sql, -1, SQLITE_PREPARE_PERSISTENT,
                                     stmts[i].st, NULL))) {
            fail_db(q, err, code_of(rc), "cannot prepare statements");
            goto fail;
        }
    }
    if (load_queues(q, err) || load_tasks(q, err))
        goto fail;
    th__journal j = {j_insert, j_update, j_log, j_log_trim, j_remove, j_queue, q};
    th__qcore_set_journal(q->core, &j);
    if (pthread_create(&q->writer, NULL, writer_main, q) != 0) {
        th__err(err, TH_ENOMEM, NULL, "cannot start the writer thread");
        goto fail;
    }
    q->has_writer = 1;
    return &q->base;
fail:
    sq_free(&q->base);
    return NULL;
}
