/*
 * Worker pool internals shared by pool.c (the pool, thread workers and the
 * manager) and proc.c (process workers).
 *
 * Lock order: pool.mu, then the engine's locks (the pool never calls the
 * engine with mu held, except th_engine_wake_claims in stop). Event
 * callbacks run under evmu only.
 */
#ifndef TH_POOL_IMPL_H
#define TH_POOL_IMPL_H

#include <pthread.h>
#include <stdatomic.h>
#include <sys/types.h>

#include "pool/ctx.h"
#include "taskhive/pool.h"

#define TH__MAX_HANDLERS 64
#define TH__MAX_POOL_SUBS 16

typedef struct th__handler {
    char name[TH_QUEUE_NAME_MAX + 1];
    th_handler_fn fn;
    void *ud;
} th__handler;

/* A task a worker has claimed and not yet reported. */
typedef struct th__held {
    char id[TH_ID_SIZE];
    uint64_t lease;
    int cancel; /* a heartbeat said cancel was requested */
} th__held;

#define TH__MAX_HELD 64

typedef struct th__worker {
    struct th__worker *next;
    th_pool *pool;
    int id;
    pthread_t thread;
    volatile int stop; /* retire: read by claim as its stop flag */
    /* Guarded by pool.mu: */
    th_worker_state state;
    int abandoned; /* overran: the thread is left to finish alone */
    int exited;    /* the thread has returned (joinable) */
    int counted;   /* counts toward the live workers */
    char current[TH_ID_SIZE];
    uint64_t lease;
    th_ctx *ctx;                 /* thread mode: the running handler's context */
    int64_t deadline_ns;         /* monotonic: abandon/kill past this (0 = none) */
    int64_t next_hb_ns;          /* monotonic: next lease heartbeat of `held` */
    th__held held[TH__MAX_HELD]; /* claimed and not yet reported */
    int nheld;
    int64_t busy_since_ns;
    uint64_t completed, failed, ran;
    int64_t started_at, last_heartbeat_at;
    int64_t last_active_ns; /* monotonic: when the worker last finished a task */
    /* Process mode: */
    pid_t pid;
    int to_child, from_child;
    int wake_fd;       /* eventfd: the manager asks the worker to look at `cancel` */
    atomic_int cancel; /* the running task's cancel was requested */
    size_t rss;
} th__worker;

struct th_pool {
    th_engine *e;
    th_pool_options o;
    th__handler handlers[TH__MAX_HANDLERS];
    size_t nhandlers;
    const char *queues[TH__MAX_HANDLERS];
    th__kv *config;
    size_t nconfig;

    pthread_mutex_t mu;
    pthread_cond_t cv; /* the manager sleeps on it; stop waits on it */
    th__worker *workers;
    int live; /* workers counted toward min/max */
    int next_id;
    int started, stopping, manager_stop;
    int64_t stop_deadline_ns;
    pthread_t manager;
    int has_manager;
    int engine_sub;          /* subscription for cancel requests */
    int64_t manager_wake_ns; /* when the sleeping manager will next look (mu) */
    int refs;                /* 1 + abandoned threads still running */
    int freed;               /* th_pool_free ran; abandoned threads free themselves */
    int64_t last_up_ns, last_down_ns;

    /* Measurements (mu). */
    double run_ms_sum, wait_ms_sum;
    uint64_t run_n, wait_n, completed, failed;
    int64_t tp_sec[10];
    uint64_t tp_n[10];
    int64_t cpu_last_ns, cpu_last_wall_ns;
    double cpu_util;

    pthread_mutex_t evmu;
    atomic_int nsubs; /* lets th__pool_emit skip the lock when nobody listens */
    struct {
        th_pool_event_fn fn;
        void *ud;
    } subs[TH__MAX_POOL_SUBS];
};

/* Publishes a pool event (any thread, no pool lock held). */
void th__pool_emit(th_pool *p, th_pool_event_type type, int worker, const char *task,
                   const char *message, int value);
/* The handler for a queue, or NULL. */
const th__handler *th__pool_handler(const th_pool *p, const char *queue);
/* Records one finished task: duration and outcome, at monotonic `now_ns`
 * (mu held by caller). */
void th__pool_account(th_pool *p, const th_task *t, int64_t run_ns, int ok, int64_t now_ns);
/* The body of a process-mode worker's thread. */
void *th__proc_worker_main(void *arg);
/* Wakes the manager if `deadline_ns` comes before its next look, or a stop
 * is waiting for workers to go idle (mu held). Waking it for every task
 * would cost a context switch per task. */
void th__pool_nudge_locked(th_pool *p, int64_t deadline_ns);
/* The worker's stop flag, read with acquire order (it is set by other
 * threads with release stores). */
static inline int th__worker_stopping(const th__worker *w)
{
    return __atomic_load_n(&w->stop, __ATOMIC_ACQUIRE);
}

/* Starts one worker (mu held). Returns its id or a negative code. */
int th__pool_spawn_locked(th_pool *p);
/* Records the tasks a worker just claimed, so the manager heartbeats them
 * all (running, waiting their turn, or awaiting a batched completion). */
void th__held_set(th__worker *w, th_task *const *tasks, int n);
/* Forgets a task once its outcome has been reported. */
void th__held_drop(th__worker *w, const char *id);
/* 1 when a heartbeat found that cancel was requested for a held task. */
int th__held_cancelled(th__worker *w, const char *id);
/* Hands back (TH_FAIL_RELEASE) a task the worker will not run, e.g.
 * because the pool is stopping. */
void th__pool_release(th__worker *w, th_task *t, const char *why);
/* Claims for a worker: blocks until it gets tasks (returns how many) or must
 * leave (returns 0 with *why: "stopped", "claim failed" or "idle timeout",
 * the last when it is idle above min_workers). */
int th__pool_claim(th__worker *w, const char *name, th_task **tasks, const char **why);
/* Marks a worker's thread as gone and wakes the manager. */
void th__pool_worker_exit(th__worker *w, const char *why);
/* Runs the outcome of a handler through the engine and the pool's books. */
void th__pool_finish(th__worker *w, th_task *t, int rc, const char *result, const char *error,
                     int timed_out, int64_t run_ns);

#endif
