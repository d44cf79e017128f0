/*
 * qcore: the task state machine held in memory. It is the memory store, and
 * the sqlite store is qcore plus a journal that writes every change to SQLite
 * (sqlite.c). One mutex guards all of it. State changes are O(log n) in the
 * number of tasks (heaps for ready, scheduled, running and expiring tasks,
 * hash tables for ids, queues and unique keys); a claim also looks at the
 * head of each candidate queue; list and prune walk the tasks in id order.
 *
 * Lock order: qcore.mu is a leaf for callers (the engine never holds a lock
 * while calling in). The journal callbacks run with qcore.mu held and take
 * only the journal's own mutex.
 */
#ifndef TH_STORE_QCORE_H
#define TH_STORE_QCORE_H

#include "core/alloc.h"
#include "core/heap.h"
#include "store/store.h"

/* uthash allocates through the choke point and reports running out of
 * memory instead of exiting: an add that could not allocate leaves the
 * element out and sets th__hash_oom, which callers check and clear. */
extern _Thread_local int th__hash_oom;
#define HASH_NONFATAL_OOM 1
#define uthash_nonfatal_oom(obj) (th__hash_oom = 1)
#define uthash_malloc(sz) th__malloc(sz)
#define uthash_free(ptr, sz) th__free(ptr)
#include <uthash.h>

typedef struct qlog {
    int64_t seq, time_ms;
    th_log_level level;
    int attempt;
    char *message, *data;
} qlog;

struct qqueue;

typedef struct qtask {
    char id[TH_ID_SIZE];
    UT_hash_handle hh;         /* by id */
    UT_hash_handle kh;         /* by unique key */
    struct qtask *prev, *next; /* every task, in id order */
    struct qqueue *q;
    uint64_t seq; /* submission order: FIFO within a priority */
    th_task_state state;
    int priority, attempt, cancel_requested, progress, step, total_steps;
    th_retry_policy retry;
    int64_t timeout_ms, created_at, run_at, expires_at, started_at, finished_at;
    int64_t lease_ms, lease_expires_at, timeout_at, ready_at;
    uint64_t lease;
    char *payload, *metadata, *unique_key, *worker, *progress_message, *error, *result;
    char (*deps)[TH_ID_SIZE];
    uint32_t ndeps;
    char (*dependents)[TH_ID_SIZE];
    uint32_t ndependents, capdependents;
    qlog *logs;
    size_t nlogs, caplogs;
    int64_t log_seq;
    size_t hidx;           /* position in the heap its state puts it in */
    size_t xidx;           /* position in the expiry heap */
    struct qtask *scratch; /* work-stack link while cascading */
    uint32_t reserved;     /* dependents slots promised during a submit */
} qtask;

/* A journal sees every change, in order, with qcore's lock held. */
typedef struct th__journal {
    void (*insert)(void *ud, const qtask *t);
    void (*update)(void *ud, const qtask *t);
    void (*log)(void *ud, const qtask *t, const qlog *l);
    /* Log rows of t with seq <= upto were dropped (max_logs_per_task). */
    void (*log_trim)(void *ud, const qtask *t, int64_t upto);
    void (*remove)(void *ud, const qtask *t);
    /* A queue was paused or resumed. */
    void (*queue)(void *ud, const char *name, int paused);
    void *ud;
} th__journal;

/* Creates an empty core, which is a th_store of kind `kind`. */
th_store *th__qcore_new(const char *kind, th_error *err);
/* Attaches a journal (before any operation). */
void th__qcore_set_journal(th_store *core, const th__journal *j);

/* Loading (single-threaded, before use): allocate a task, fill its fields
 * (strings with th__strdup), then hand it over with th__qcore_load_task. */
qtask *th__qcore_task_alloc(void);
void th__qcore_task_free(qtask *t);
/* Takes `t` over; `queue` names its queue. Tasks must come in seq order (a
 * seq of 0 gets the next one). Returns 0 or TH_ENOMEM (t freed). */
int th__qcore_load_task(th_store *core, qtask *t, const char *queue);
/* Appends a loaded log row to task `t` (message and data are copied). */
int th__qcore_load_log(th_store *core, qtask *t, const qlog *l);
/* Marks queue `name` paused while loading (creating it). */
int th__qcore_load_queue(th_store *core, const char *name, int paused);
/* The name of t's queue. */
const char *th__qcore_queue_name(const qtask *t);
/* Looks a loaded task up by id. */
qtask *th__qcore_find(th_store *core, const char *id);
/* Rebuilds what is derived (dependency links). Returns 0 or TH_ENOMEM, in
 * which case the store must not be used. */
int th__qcore_load_done(th_store *core);

#endif
