/*
 * The store interface (private): the operations the engine runs against a
 * store. Each is one atomic step of the state machine; a store may implement
 * it in memory (qcore.c), in memory with a durable journal (sqlite.c), or in
 * SQL against a shared database. Nothing above this interface knows which.
 *
 * Every operation takes `now` (wall ms, from the engine's clock) and an event
 * buffer the store appends to; the engine publishes those events and wakes
 * consumers for the queues the buffer names as ready. A store returns from a
 * mutating operation only once the change is as durable as it promises, so
 * an event never announces a change that a crash could undo — except claim,
 * heartbeat, progress, log and tick, whose loss in a crash only means a
 * task runs again (at-least-once).
 */
#ifndef TH_STORE_STORE_H
#define TH_STORE_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "taskhive/engine.h"

/* One event recorded by a store; see th__evbuf. */
typedef struct th__ev {
    uint64_t seq; /* numbered under the store's lock: the order of the changes */
    th_event_type type;
    th_task_state state;
    int attempt;
    int progress;
    int64_t time_ms;
    char id[TH_ID_SIZE];
    const char *queue; /* interned by the store; lives as long as it does */
    char *message;     /* owned, or NULL */
} th__ev;

/* What one store operation reports back to the engine. */
typedef struct th__evbuf {
    int record;            /* 0: only note readiness and deadlines (no listener) */
    _Atomic uint64_t *seq; /* the engine's event counter; NULL when not recording */
    th__ev *v;
    size_t n, cap;
    const char **ready; /* queues that gained a ready task (with repeats) */
    size_t nready, readycap;
    const char *ready_inline[8]; /* so most operations never allocate here */
    int ready_all;               /* readiness could not be noted: wake everyone */
    int64_t deadline;            /* earliest deadline this step created, or INT64_MAX */
} th__evbuf;

/* Initialises `b` in place; a th__evbuf must not be copied. Events take
 * their numbers from `seq` (may be NULL when `record` is 0). */
void th__evbuf_init(th__evbuf *b, int record, _Atomic uint64_t *seq);
/* Empties the buffer for reuse, freeing messages. */
void th__evbuf_reset(th__evbuf *b);
void th__evbuf_free(th__evbuf *b);
/* Records an event (when b->record), numbering it; never fails: on OOM the
 * event is lost before it takes a number, so numbers never have holes. */
void th__evbuf_add(th__evbuf *b, th_event_type type, const char *id, const char *queue,
                   th_task_state state, int attempt, int progress, const char *message,
                   int64_t now);
/* Notes that `queue` gained a ready task. */
void th__evbuf_ready(th__evbuf *b, const char *queue);
void th__evbuf_deadline(th__evbuf *b, int64_t at);

/* What a store shared by several processes tells the engine about the
 * others' changes, from its own thread. */
typedef struct th__store_hooks {
    /* Another process made tasks of `queue` ready (NULL: of any queue). */
    void (*ready)(void *ud, const char *queue);
    /* An event of another process's operation: ev->seq is not set (the
     * engine numbers it) and ev->queue is interned by the store. */
    void (*event)(void *ud, const th__ev *ev);
    void *ud;
} th__store_hooks;

/* Settings the engine hands its store once, before any operation. */
typedef struct th__store_config {
    size_t max_queued;
    size_t max_logs_per_task;
    uint64_t seed;
} th__store_config;

/* A submit request after the engine validated it. */
typedef struct th__submit {
    const th_task_spec *spec;
    int64_t run_at;      /* absolute */
    char id[TH_ID_SIZE]; /* out: assigned or deduplicated id */
    int deduplicated;    /* out */
} th__submit;

typedef struct th__claim {
    const char *const *queues;
    size_t nqueues;
    size_t max_tasks;
    int64_t lease_ms;
    const char *worker;
} th__claim;

typedef struct th__store_stats {
    int64_t counts[TH_TASK_NSTATES];
    uint64_t submitted_total, completed_total, failed_attempts_total, retries_total;
    double run_ms_sum, wait_ms_sum;
    uint64_t run_n, wait_n;
    uint64_t completed_last_10s;
} th__store_stats;

typedef struct th__store_ops {
    const char *kind;
    /* Blocked claims and the timer look at the store again at least this
     * often, in ms: other processes change a shared store without passing
     * through this engine. 0: never needed. */
    int64_t poll_ms;
    /* Optional (NULL when every change passes through this process): see
     * th__store_hooks. Called once, before any operation. */
    void (*set_hooks)(th_store *s, const th__store_hooks *hooks);
    int (*configure)(th_store *s, const th__store_config *cfg);
    int (*submit)(th_store *s, th__submit *items, size_t n, int64_t now, th__evbuf *ev,
                  th_error *err);
    /* Returns the number of tasks written to out, or a negative code. */
    int (*claim)(th_store *s, const th__claim *c, int64_t now, th_task **out, th__evbuf *ev);
    int (*heartbeat)(th_store *s, const char *id, uint64_t lease, int64_t extend_ms, int64_t now,
                     int *cancel_requested, th__evbuf *ev);
    int (*progress)(th_store *s, const char *id, uint64_t lease, int percent, int step, int total,
                    const char *message, int64_t now, th__evbuf *ev);
    int (*log)(th_store *s, const char *id, uint64_t lease, th_log_level level, const char *message,
               const char *data, int64_t now);
    /* Fills items[i].rc; returns the number that succeeded or a negative code. */
    int (*complete)(th_store *s, th_completion *items, size_t n, int64_t now, th__evbuf *ev);
    int (*fail)(th_store *s, const char *id, uint64_t lease, const char *message, int flags,
                int64_t now, th__evbuf *ev);
    int (*cancel)(th_store *s, const char *id, const char *reason, int64_t now, th__evbuf *ev);
    int (*retry)(th_store *s, const char *id, int64_t now, th__evbuf *ev, th_error *err);
    int (*get)(th_store *s, const char *id, th_task **out);
    int (*list)(th_store *s, const th_list_filter *f, th_task ***out, size_t *n);
    int (*logs)(th_store *s, const char *id, int64_t after_seq, size_t limit, th_log_entry **out,
                size_t *n);
    int (*counts)(th_store *s, th_queue_counts **out, size_t *n);
    int (*stats)(th_store *s, int64_t now, th__store_stats *out);
    int (*prune)(th_store *s, int64_t finished_before, int64_t now);
    int (*queue_pause)(th_store *s, const char *queue, int paused, th__evbuf *ev);
    /* Returns the number of the queue's tasks cancelled, or a negative code. */
    int (*queue_purge)(th_store *s, const char *queue, const char *reason, int64_t now,
                       th__evbuf *ev);
    /* Applies deadlines due at `now`; *next gets the next deadline
     * (INT64_MAX when none). Returns the number of tasks changed. */
    int (*tick)(th_store *s, int64_t now, int64_t *next, th__evbuf *ev);
    int (*flush)(th_store *s);
    /* Optional (NULL: each daemon keeps its external workers in memory): a
     * registry of external workers shared by every node of the store.
     * `info` is a JSON object text; put adds or replaces; get gives a copy
     * (th__free) or TH_ENOTFOUND; list gives a JSON array text of
     * {"id", "info", "registered_at", "last_seen_at"} (th__free). */
    int (*worker_put)(th_store *s, const char *id, const char *info, int64_t now);
    int (*worker_get)(th_store *s, const char *id, char **info);
    int (*worker_list)(th_store *s, char **json);
    void (*free)(th_store *s);
} th__store_ops;

struct th_store {
    const th__store_ops *ops;
};

/* Constructors of the built-in stores. */
th_store *th__memory_store_new(th_error *err);
th_store *th__sqlite_store_open(const char *path, const th_store_options *opts, th_error *err);
/* `uri` is a libpq connection string or postgres:// uri. */
th_store *th__pg_store_open(const char *uri, const th_store_options *opts, th_error *err);

#endif
