/*
 * The engine: the durable task queue every face of taskhive calls (the C
 * library directly, the daemon and CLI over HTTP). It validates requests,
 * assigns ids, runs the state machine through its store, wakes blocked
 * consumers, drives time (delays, backoff, leases, timeouts, expiry) from a
 * deadline heap, and publishes events and metrics.
 *
 * Every function is thread-safe. Functions returning int return 0 (or a
 * count) on success and a negative TH_E* code on failure; those taking a
 * th_error * fill it (when not NULL) with the code and the offending field.
 */
#ifndef TASKHIVE_ENGINE_H
#define TASKHIVE_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "error.h"
#include "store.h"
#include "task.h"

typedef struct th_engine th_engine;

/* A wall clock in milliseconds since the epoch. Tests inject a fake one. */
typedef struct th_clock {
    int64_t (*now_ms)(void *ud);
    void *ud;
} th_clock;

typedef struct th_engine_options {
    size_t max_payload_bytes; /* payload and metadata; default 1 MiB */
    size_t max_result_bytes;  /* default 16 MiB */
    size_t max_queued;        /* pending+scheduled+blocked cap; 0 = none.
                                 Past it submit fails with TH_EBUSY. */
    size_t max_logs_per_task; /* older rows are dropped; default 10000 */
    int64_t default_lease_ms; /* when a claim says 0; default 30000 */
    const th_clock *clock;    /* NULL = the system clock */
    int manual_tick;          /* 1: no timer thread; the caller drives
                                 th_engine_tick (tests with a fake clock) */
    uint64_t seed;            /* jitter / lease-token PRNG; 0 = random */
} th_engine_options;

/* Fills `o` with the defaults above. */
TH_EXPORT void th_engine_options_init(th_engine_options *o);

/*
 * Creates an engine over `store`, which it takes over (even on failure) and
 * frees in th_engine_free. `opts` may be NULL. Returns NULL on failure with
 * `err` filled. Free with th_engine_free.
 */
TH_EXPORT th_engine *th_engine_new(th_store *store, const th_engine_options *opts, th_error *err);

/* Stops the timer, wakes every blocked claim with TH_ECLOSED, waits for
 * pending writes to become durable and closes the store. Accepts NULL. */
TH_EXPORT void th_engine_free(th_engine *e);

/* ---- submitting ------------------------------------------------------- */

/*
 * Submits one task and writes its id to `id_out`. Returns 0 for a new task,
 * 1 when `unique_key` matched an existing task (whose id is written instead),
 * or a negative code. On return >= 0 the task is durable as the store
 * promises.
 */
TH_EXPORT int th_engine_submit(th_engine *e, const th_task_spec *spec, char id_out[TH_ID_SIZE],
                               th_error *err);

/*
 * Submits `n` tasks atomically: all are accepted or none. A task may depend
 * on one earlier in the same batch by naming it "$N" (its index) in deps. Writes each id (new or
 * deduplicated) to ids_out[i]. Returns 0 or a negative code; on failure err->field names the item
 * ("tasks[3].priority").
 */
TH_EXPORT int th_engine_submit_batch(th_engine *e, const th_task_spec *specs, size_t n,
                                     char (*ids_out)[TH_ID_SIZE], th_error *err);

/* ---- working ---------------------------------------------------------- */

typedef struct th_claim_options {
    const char *const *queues; /* claim from these queues; NULL/0 = any */
    size_t nqueues;
    size_t max_tasks;   /* >= 1 */
    int64_t lease_ms;   /* 0 = engine default */
    int64_t wait_ms;    /* 0 = don't wait; -1 = until work or close */
    const char *worker; /* recorded on the task; may be NULL */
    /* Optional: once *stop is non-zero and th_engine_wake_claims is called,
     * a waiting claim returns 0. */
    const volatile int *stop;
} th_claim_options;

/*
 * Leases up to max_tasks ready tasks, highest priority first, FIFO within a
 * priority. Blocks up to wait_ms while none is ready and wakes as soon as one
 * becomes ready. Stores the snapshots (with `lease` and `attempt` set) in
 * out[0..n-1], each owned by the caller (th_task_free). Returns n >= 0; 0
 * when the wait ran out; TH_ECLOSED when the engine is being freed.
 */
TH_EXPORT int th_engine_claim(th_engine *e, const th_claim_options *opts, th_task **out,
                              th_error *err);

/* Wakes every claim waiting in th_engine_claim so it re-checks its `stop`
 * flag; set the flag first. Claims whose flag is not set go back to sleep. */
TH_EXPORT void th_engine_wake_claims(th_engine *e);

/*
 * Extends the lease of a running task by extend_ms (0 = the lease length it
 * was claimed with). Sets *cancel_requested (may be NULL) to 1 when someone
 * asked to cancel it: the worker should stop and call th_engine_fail.
 * TH_ESTALE when `lease` is no longer the task's lease.
 */
TH_EXPORT int th_engine_heartbeat(th_engine *e, const char *id, uint64_t lease, int64_t extend_ms,
                                  int *cancel_requested, th_error *err);

/* Records progress of a running task: percent 0..100, step of total_steps
 * (both 0 when unused), and an optional message. Also extends the lease. */
TH_EXPORT int th_engine_progress(th_engine *e, const char *id, uint64_t lease, int percent,
                                 int step, int total_steps, const char *message, th_error *err);

/* Appends a row to a task's execution log. `data` is JSON text or NULL.
 * `lease` 0 skips the lease check (system notes); otherwise it must match. */
TH_EXPORT int th_engine_log(th_engine *e, const char *id, uint64_t lease, th_log_level level,
                            const char *message, const char *data, th_error *err);

/* Finishes a running task with `result` (JSON text, NULL = null). Exactly
 * once: a second completion, or one with a stale lease, gets TH_ESTALE. */
TH_EXPORT int th_engine_complete(th_engine *e, const char *id, uint64_t lease, const char *result,
                                 th_error *err);

/* One item of th_engine_complete_batch. */
typedef struct th_completion {
    const char *id;
    uint64_t lease;
    const char *result;
    int rc; /* out: what th_engine_complete would have returned */
} th_completion;

/* Completes many tasks with one durable commit. Each item's rc tells its own
 * outcome; returns the number that succeeded, or a negative code when none
 * could be tried (e.g. TH_EIO). */
TH_EXPORT int th_engine_complete_batch(th_engine *e, th_completion *items, size_t n);

enum {
    TH_FAIL_PERMANENT = 1 << 0, /* do not retry, whatever the policy says */
    TH_FAIL_TIMEOUT = 1 << 1,   /* the attempt ran out of time */
    TH_FAIL_RELEASE = 1 << 2,   /* not a failure: hand the task back to the
                                   queue (pending) without counting the
                                   attempt, e.g. when a worker shuts down */
};

/*
 * Fails the current attempt of a running task. Retries per its policy
 * (scheduled after the backoff) unless TH_FAIL_PERMANENT or out of retries;
 * then the task ends failed (timeout with TH_FAIL_TIMEOUT) and its dependents
 * are cancelled. If a cancel was requested the task ends cancelled.
 */
TH_EXPORT int th_engine_fail(th_engine *e, const char *id, uint64_t lease, const char *message,
                             int flags, th_error *err);

/* ---- managing --------------------------------------------------------- */

/*
 * Cancels a task. Pending, scheduled or blocked: cancelled at once (returns
 * 0), and its dependents too. Running: cancel is requested (returns 1); the
 * worker sees it in its next heartbeat. Final: TH_ESTATE.
 */
TH_EXPORT int th_engine_cancel(th_engine *e, const char *id, const char *reason, th_error *err);

/* Runs a failed, cancelled, timed-out or expired task again with a fresh
 * retry budget. TH_ESTATE in other states or when a dependency has failed. */
TH_EXPORT int th_engine_retry(th_engine *e, const char *id, th_error *err);

/* Snapshot of one task into *out (caller frees with th_task_free). */
TH_EXPORT int th_engine_get(th_engine *e, const char *id, th_task **out, th_error *err);

typedef struct th_list_filter {
    const char *queue;    /* NULL = every queue */
    int state;            /* a th_task_state, or -1 for any */
    const char *after_id; /* paging: ids greater than this; NULL = from start */
    size_t limit;         /* 1..10000 */
} th_list_filter;

/* Lists tasks in id (= creation) order. *out is an array of *n snapshots;
 * free with th_task_array_free. To page, pass the last id as after_id. */
TH_EXPORT int th_engine_list(th_engine *e, const th_list_filter *filter, th_task ***out, size_t *n,
                             th_error *err);

/* Log rows of a task with seq > after_seq, up to `limit` (0 = all).
 * Free with th_log_entries_free. */
TH_EXPORT int th_engine_logs(th_engine *e, const char *id, int64_t after_seq, size_t limit,
                             th_log_entry **out, size_t *n, th_error *err);

typedef struct th_queue_counts {
    char queue[TH_QUEUE_NAME_MAX + 1];
    int paused;
    int64_t counts[TH_TASK_NSTATES]; /* indexed by th_task_state */
} th_queue_counts;

/* Counts per queue and state. *out is an array of *n; free() it. */
TH_EXPORT int th_engine_counts(th_engine *e, th_queue_counts **out, size_t *n);

/* Pauses (paused = 1) or resumes (0) a queue: a paused queue still accepts
 * tasks but hands none out. An unknown queue is created, so a queue can be
 * paused before its first task. The setting is durable. */
TH_EXPORT int th_engine_queue_pause(th_engine *e, const char *queue, int paused, th_error *err);

/* Cancels every waiting task (pending, scheduled, blocked) of `queue`, with
 * `reason` (NULL: "purged"), and their dependents. Returns how many of the
 * queue's tasks were cancelled. */
TH_EXPORT int th_engine_queue_purge(th_engine *e, const char *queue, const char *reason,
                                    th_error *err);

/* Deletes final tasks (and their logs) that finished before `finished_before_ms`.
 * Returns the number deleted. */
TH_EXPORT int th_engine_prune(th_engine *e, int64_t finished_before_ms);

/* Applies every deadline due at the clock's now (promotions, lease expiry,
 * timeouts, expiry). The timer thread calls it; with manual_tick the caller
 * does. Returns the number of tasks changed. */
TH_EXPORT int th_engine_tick(th_engine *e);

/* Waits until every change so far is durable. */
TH_EXPORT int th_engine_flush(th_engine *e);

/* ---- observing -------------------------------------------------------- */

typedef enum th_event_type {
    TH_EV_SUBMITTED = 0,
    TH_EV_READY,    /* became claimable (submitted, delay over, retry due,
                       dependencies done, manual retry) */
    TH_EV_ASSIGNED, /* leased to a worker */
    TH_EV_STARTED,  /* attempt `attempt` began */
    TH_EV_PROGRESS,
    TH_EV_COMPLETED,
    TH_EV_FAILED,   /* an attempt failed; `state` says if it is final */
    TH_EV_RETRYING, /* scheduled for another attempt */
    TH_EV_TIMEOUT,  /* an attempt ran past its timeout */
    TH_EV_CANCELLED,
    TH_EV_CANCEL_REQUESTED,
    TH_EV_EXPIRED,
} th_event_type;
#define TH_EV_NTYPES 12

/* "submitted", "ready", ...; static. */
TH_EXPORT const char *th_event_type_name(th_event_type t);

/* An event. Valid only during the callback; copy what you keep. */
typedef struct th_event {
    uint64_t seq; /* increases by one per event of this engine */
    th_event_type type;
    int64_t time_ms;
    const char *task_id;
    const char *queue;
    th_task_state state; /* the task's state after the event */
    int attempt;
    int progress;        /* percent, for TH_EV_PROGRESS */
    const char *message; /* error, reason or progress message; may be NULL */
} th_event;

typedef void (*th_event_fn)(const th_event *ev, void *ud);

/*
 * Calls fn for every event, in seq order, which is the order of the changes.
 * Events are numbered when the change happens and delivered by the thread
 * that caused them once every earlier event is delivered, or, when an
 * earlier one is still in flight (its commit pending on another thread), by
 * the thread that delivers that one. A caller alone on the engine sees its
 * events before its call returns. fn may call the engine. Returns a
 * subscription id > 0 or a negative code.
 */
TH_EXPORT int th_engine_subscribe(th_engine *e, th_event_fn fn, void *ud);
/* Removes a subscription; when it returns, fn is not running and won't be
 * called again. */
TH_EXPORT int th_engine_unsubscribe(th_engine *e, int subscription);

typedef struct th_engine_metrics {
    int64_t counts[TH_TASK_NSTATES]; /* tasks per state, every queue */
    uint64_t submitted_total;
    uint64_t completed_total;
    uint64_t failed_attempts_total;
    uint64_t retries_total;
    double throughput_per_s; /* completions per second, last 10 s */
    double avg_run_ms;       /* claim to completion */
    double avg_wait_ms;      /* ready to claim */
    int64_t uptime_ms;
} th_engine_metrics;

TH_EXPORT int th_engine_metrics_get(th_engine *e, th_engine_metrics *out);

#endif
