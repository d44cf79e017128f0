/*
 * Worker pools: run handlers registered by name on workers that claim tasks
 * from an engine. A task's queue names its handler: a pool with a "hash"
 * handler claims from queue "hash".
 *
 * Two modes:
 *   threads    workers are threads of this process; timeout and cancel are
 *              cooperative (the handler polls th_ctx_cancelled). A handler
 *              that overruns its timeout by the grace period is abandoned: its
 *              worker is marked unhealthy and replaced, its task times out.
 *   processes  each worker runs handlers in a child process (forked from the
 *              pool); timeout or cancel kills the child (SIGTERM, then SIGKILL
 *              after the grace period), a crash or a memory-limit breach fails
 *              the attempt, and a replacement starts.
 *
 * The pool scales between min and max workers on utilisation, refuses
 * submissions past its queue limit (TH_EBUSY), heartbeats the leases of the
 * tasks it runs, recycles workers after N tasks and shuts down gracefully.
 */
#ifndef TASKHIVE_POOL_H
#define TASKHIVE_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "engine.h"
#include "error.h"
#include "task.h"

typedef struct th_pool th_pool;

/* What a handler sees of the task it runs. In process mode the context lives
 * in the child and its calls travel to the pool over a pipe. */
typedef struct th_ctx th_ctx;

/* The task being run (payload, attempt, deps...). Owned by the pool. */
TH_EXPORT const th_task *th_ctx_task(const th_ctx *ctx);
/* 1 when the handler should stop: cancel requested, timeout reached or the
 * pool is shutting down past its grace period. */
TH_EXPORT int th_ctx_cancelled(const th_ctx *ctx);
/* Milliseconds left before the task's timeout; INT64_MAX when none. */
TH_EXPORT int64_t th_ctx_remaining_ms(const th_ctx *ctx);
TH_EXPORT int th_ctx_progress(th_ctx *ctx, int percent, int step, int total_steps,
                              const char *message);
TH_EXPORT int th_ctx_log(th_ctx *ctx, th_log_level level, const char *message, const char *data);
/* Sets the result (JSON text; copied). The last call wins. */
TH_EXPORT int th_ctx_set_result(th_ctx *ctx, const char *json);
/* Sets the failure message (copied) reported when the handler fails. */
TH_EXPORT int th_ctx_set_error(th_ctx *ctx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The pool's per-handler configuration value for `key` (from
 * th_pool_handler_options.config), or NULL. */
TH_EXPORT const char *th_ctx_config(const th_ctx *ctx, const char *key);

/* What a handler returns. */
enum {
    TH_HANDLER_OK = 0,        /* complete with the result set (null if none) */
    TH_HANDLER_RETRY = 1,     /* fail this attempt; the retry policy applies */
    TH_HANDLER_PERMANENT = 2, /* fail for good (bad input: retrying won't help) */
};

typedef int (*th_handler_fn)(th_ctx *ctx, void *ud);

/* Built-in handlers, registered with th_pool_register_builtins. */
TH_EXPORT int th_handler_noop(th_ctx *ctx, void *ud);
TH_EXPORT int th_handler_sleep(th_ctx *ctx, void *ud);
TH_EXPORT int th_handler_exec(th_ctx *ctx, void *ud);
TH_EXPORT int th_handler_hash(th_ctx *ctx, void *ud);
TH_EXPORT int th_handler_compress(th_ctx *ctx, void *ud);
TH_EXPORT int th_handler_decompress(th_ctx *ctx, void *ud);
TH_EXPORT int th_handler_encrypt(th_ctx *ctx, void *ud);
TH_EXPORT int th_handler_decrypt(th_ctx *ctx, void *ud);
TH_EXPORT int th_handler_http(th_ctx *ctx, void *ud);

typedef enum th_pool_mode {
    TH_POOL_THREADS = 0,
    TH_POOL_PROCESSES = 1,
} th_pool_mode;

/* Defaults are the ones users of worker-thread pools expect. */
typedef struct th_pool_options {
    th_pool_mode mode;                /* threads */
    int min_workers;                  /* 2 */
    int max_workers;                  /* 8 */
    size_t max_queue;                 /* 1000: waiting tasks in the pool's queues */
    double backpressure_threshold;    /* 0.9 of max_queue: event fires */
    int64_t task_timeout_ms;          /* 30000: for tasks submitted without one */
    int64_t timeout_grace_ms;         /* 5000: overrun before a thread is abandoned
                                         or SIGTERM becomes SIGKILL */
    int64_t health_check_interval_ms; /* 30000 */
    int64_t worker_idle_timeout_ms;   /* 300000: idle workers above min exit */
    size_t worker_memory_limit;       /* 512 MiB (process mode) */
    int max_retries;                  /* 3: for tasks submitted through the pool */
    int64_t retry_delay_ms;           /* 1000 */
    int autoscale;                    /* 1 */
    double scale_up_threshold;        /* 0.7 utilisation */
    double scale_down_threshold;      /* 0.3 */
    int64_t scale_up_cooldown_ms;     /* 30000 */
    int64_t scale_down_cooldown_ms;   /* 60000 */
    int recycle_after;                /* 100 tasks per worker; 0 = never */
    int64_t lease_ms;                 /* 30000; heartbeats every lease/3 */
    int64_t metrics_interval_ms;      /* 5000: metricsUpdated events */
    int batch;                        /* 1: tasks a worker claims at once */
} th_pool_options;

TH_EXPORT void th_pool_options_init(th_pool_options *o);
/* Checks options without making a pool: TH_EINVAL with err->field naming
 * the knob, as th_pool_new would refuse them. */
TH_EXPORT int th_pool_options_check(const th_pool_options *o, th_error *err);

typedef enum th_worker_state {
    TH_WORKER_IDLE = 0,
    TH_WORKER_BUSY,
    TH_WORKER_UNHEALTHY,
    TH_WORKER_TERMINATING,
    TH_WORKER_TERMINATED,
} th_worker_state;
TH_EXPORT const char *th_worker_state_name(th_worker_state s);

typedef struct th_worker_info {
    int id;
    th_worker_state state;
    int pid;                       /* process mode; 0 for threads */
    char current_task[TH_ID_SIZE]; /* empty when idle */
    uint64_t tasks_completed, tasks_failed;
    int healthy;
    int64_t started_at, last_heartbeat_at;
    size_t rss_bytes; /* process mode */
} th_worker_info;

typedef enum th_pool_event_type {
    TH_PEV_TASK_SUBMITTED = 0,
    TH_PEV_TASK_ASSIGNED,
    TH_PEV_TASK_PROGRESS,
    TH_PEV_TASK_COMPLETED,
    TH_PEV_TASK_FAILED,
    TH_PEV_TASK_TIMEOUT,
    TH_PEV_TASK_CANCELLED,
    TH_PEV_WORKER_CREATED,
    TH_PEV_WORKER_EXITED,
    TH_PEV_WORKER_TERMINATED,
    TH_PEV_WORKER_HEARTBEAT,
    TH_PEV_WORKER_ERROR,
    TH_PEV_SCALED_UP,
    TH_PEV_SCALED_DOWN,
    TH_PEV_METRICS_UPDATED,
    TH_PEV_BACKPRESSURE,
    TH_PEV_ERROR,
} th_pool_event_type;
#define TH_PEV_NTYPES 17

/* "taskSubmitted", "workerCreated", ...; static. */
TH_EXPORT const char *th_pool_event_name(th_pool_event_type t);

typedef struct th_pool_event {
    th_pool_event_type type;
    int64_t time_ms;
    int worker_id;       /* 0 when not about a worker */
    const char *task_id; /* NULL when not about a task */
    const char *message; /* may be NULL */
    int value;           /* progress percent, worker count after scaling, ... */
} th_pool_event;

typedef void (*th_pool_event_fn)(const th_pool_event *ev, void *ud);

typedef struct th_pool_metrics {
    int total_workers, active_workers, idle_workers, unhealthy_workers;
    int64_t pending_tasks, running_tasks, completed_tasks, failed_tasks;
    double avg_task_duration_ms, avg_queue_time_ms;
    double throughput_per_s;
    double cpu_utilisation;    /* 0..1 of the machine's cores, since the last sample */
    double memory_utilisation; /* RSS of the pool (and children) / memory limit total */
} th_pool_metrics;

/*
 * Creates a pool over `engine` (borrowed: it must outlive the pool). Bad
 * options are refused with TH_EINVAL and err->field naming the knob.
 * Register handlers, then th_pool_start. Free with th_pool_free.
 */
TH_EXPORT th_pool *th_pool_new(th_engine *engine, const th_pool_options *opts, th_error *err);

/* Registers `fn` for queue `name`. Before th_pool_start only. */
TH_EXPORT int th_pool_register(th_pool *p, const char *name, th_handler_fn fn, void *ud,
                               th_error *err);
/* Sets a configuration value a handler reads with th_ctx_config (e.g.
 * "crypto.key", "exec.command.NAME"). Before th_pool_start only. */
TH_EXPORT int th_pool_set_config(th_pool *p, const char *key, const char *value, th_error *err);
/* Registers every built-in handler under its name (noop, sleep, exec, hash,
 * compress, decompress, encrypt, decrypt, http). */
TH_EXPORT int th_pool_register_builtins(th_pool *p, th_error *err);

TH_EXPORT int th_pool_subscribe(th_pool *p, th_pool_event_fn fn, void *ud);

/* Starts min_workers workers and the manager thread. */
TH_EXPORT int th_pool_start(th_pool *p, th_error *err);

/*
 * Submits through the pool: like th_engine_submit, with the pool's timeout
 * and retry defaults for fields left at their th_task_spec_init values, and
 * TH_EBUSY when the pool's queues hold max_queue waiting tasks.
 */
TH_EXPORT int th_pool_submit(th_pool *p, const th_task_spec *spec, char id_out[TH_ID_SIZE],
                             th_error *err);

/* Snapshot of the workers into out[0..max); returns how many there are. */
TH_EXPORT int th_pool_workers(th_pool *p, th_worker_info *out, int max);
TH_EXPORT int th_pool_metrics_get(th_pool *p, th_pool_metrics *out);

/*
 * Graceful shutdown: stop claiming, let running tasks finish for up to
 * `grace_ms`, then cancel them (killing child processes); tasks that did not
 * finish go back to the queue through a failed attempt or lease expiry —
 * nothing is lost with a durable store. Idempotent.
 */
TH_EXPORT int th_pool_stop(th_pool *p, int64_t grace_ms);
/* Stops (grace 0 if still running) and frees. Accepts NULL. */
TH_EXPORT void th_pool_free(th_pool *p);

#endif
