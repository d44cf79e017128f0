/*
 * The PostgreSQL store's rows and transitions (private), shared by the
 * operation files: postgres_row.c (loading, writing, qcore's transitions over
 * rows), postgres_ops.c (submit, claim, the worker's calls, the operation
 * table) and postgres_admin.c (management, tick, reads).
 *
 * Every function here runs inside a transaction body (th__pg_run) and
 * returns 0 or a TH_E* code; TH_EIO means the database refused a statement
 * (tx->dberr is set and the transaction will be rolled back).
 */
#ifndef TH_STORE_POSTGRES_ROW_H
#define TH_STORE_POSTGRES_ROW_H

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
typedef struct th__pg_row {
    th_task t;
    int64_t lease_ms, timeout_at, ready_at, seq, log_seq, nlogs;
    const char *qname; /* interned */
} th__pg_row;

typedef struct th__pg_rows {
    th__pg_row **v;
    size_t n;
} th__pg_rows;

/* Frees a row (accepts NULL). */
void th__pgr_row_free(th__pg_row *r);
/* Frees every row of a set and empties it. */
void th__pgr_rows_free(th__pg_rows *rs);
/* *slot = a copy of s (NULL stays NULL); 0 on OOM, else 1. */
int th__pgr_dup(char **slot, const char *s);
/* Replaces *slot with a copy of s (NULL on OOM or for NULL). */
void th__pgr_set_str(char **slot, const char *s);
/* Hands a row over as a caller-owned snapshot (th_task_free). */
th_task *th__pgr_row_take(th__pg_row *w);
/* A text[] literal of `n` strings, each quoted; NULL on OOM. Free with
 * th__free. */
char *th__pgr_text_array(const char *const *v, size_t n);
/* Runs a "SELECT " COLS " ..." and collects its rows into *out (free with
 * th__pgr_rows_free). */
int th__pgr_select_rows(th__pg_tx *tx, const char *sql, const th__pg_params *pr, th__pg_rows *out);
/* Loads task `id` (locked FOR UPDATE when `lock`): 0 with *out, or
 * TH_ENOTFOUND. */
int th__pgr_load(th__pg_tx *tx, const char *id, int lock, th__pg_row **out);
/* Writes a row's changeable columns back. */
int th__pgr_store_row(th__pg_tx *tx, const th__pg_row *w);
/* The earlier of lease expiry and timeout of a running row. */
int64_t th__pgr_running_key(const th__pg_row *w);
/* 1 for failed, cancelled, timeout and expired. */
int th__pgr_is_failure(th_task_state s);
/* qcore's enter(): sets the state and notes readiness and deadlines. */
void th__pgr_place(th__pg_tx *tx, th__pg_row *w, th_task_state s);
/* Notes an event of `w` (with `state`, or its own). */
void th__pgr_emit_as(th__pg_tx *tx, th_event_type type, const th__pg_row *w, th_task_state state,
                     const char *msg);
void th__pgr_emit(th__pg_tx *tx, th_event_type type, const th__pg_row *w, const char *msg);
/* Cancels, transitively, the blocked tasks waiting on `root`, which ended
 * without completing. */
int th__pgr_cascade(th__pg_tx *tx, const th__pg_row *root);
/* Releases the blocked dependents of `w`, just completed and written, whose
 * dependencies are all complete. */
int th__pgr_unblock(th__pg_tx *tx, const th__pg_row *w);
/* Clears a row's lease, lease expiry and timeout. */
void th__pgr_end_lease(th__pg_row *w);
/* qcore's finish_attempt(): cancelled, retried or final; writes the row. */
int th__pgr_finish_attempt(th__pg_tx *tx, th__pg_row *w, int flags);
/* Expires a waiting row and cascades; writes it. */
int th__pgr_expire(th__pg_tx *tx, th__pg_row *w);

/* The management and read operations (postgres_admin.c), for th__pg_ops. */
int th__pg_cancel(th_store *s, const char *id, const char *reason, int64_t now, th__evbuf *ev);
int th__pg_retry(th_store *s, const char *id, int64_t now, th__evbuf *ev, th_error *err);
int th__pg_queue_pause(th_store *s, const char *queue, int paused, th__evbuf *ev);
int th__pg_queue_purge(th_store *s, const char *queue, const char *reason, int64_t now,
                       th__evbuf *ev);
int th__pg_prune(th_store *s, int64_t finished_before, int64_t now);
int th__pg_tick(th_store *s, int64_t now, int64_t *next, th__evbuf *ev);
int th__pg_get(th_store *s, const char *id, th_task **out);
int th__pg_list(th_store *s, const th_list_filter *f, th_task ***out, size_t *n);
int th__pg_logs(th_store *s, const char *id, int64_t after_seq, size_t limit, th_log_entry **out,
                size_t *n);
int th__pg_counts(th_store *s, th_queue_counts **out, size_t *n);
int th__pg_stats(th_store *s, int64_t now, th__store_stats *out);
int th__pg_flush(th_store *s);
int th__pg_worker_put(th_store *s, const char *id, const char *info, int64_t now);
int th__pg_worker_get(th_store *s, const char *id, char **info);
int th__pg_worker_list(th_store *s, char **json);

#endif
