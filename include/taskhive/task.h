/*
 * Tasks: what a submitter describes (th_task_spec) and what the engine reports
 * back (th_task, a snapshot). The state machine is documented in
 * docs/ARCHITECTURE.md.
 */
#ifndef TASKHIVE_TASK_H
#define TASKHIVE_TASK_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

/* Task ids are ULIDs: 26 Crockford base32 characters, unique and sortable by
 * creation time. TH_ID_SIZE includes the terminating NUL. */
#define TH_ID_LEN 26
#define TH_ID_SIZE 27

/* Limits on what a submitter may send. Payload and result limits are engine
 * options (th_engine_options); these are fixed by the format. */
#define TH_QUEUE_NAME_MAX 64 /* [A-Za-z0-9_.:-]{1,64} */
#define TH_UNIQUE_KEY_MAX 256
#define TH_MAX_DEPS 1000
#define TH_MESSAGE_MAX 4096 /* error, log and progress messages */

typedef enum th_task_state {
    TH_TASK_PENDING = 0, /* ready to be claimed */
    TH_TASK_SCHEDULED,   /* waiting for run_at: a delay or a retry backoff */
    TH_TASK_BLOCKED,     /* waiting for its dependencies to complete */
    TH_TASK_RUNNING,     /* leased to a worker */
    TH_TASK_COMPLETED,   /* final: finished with a result */
    TH_TASK_FAILED,      /* final: failed and out of retries (or permanent) */
    TH_TASK_CANCELLED,   /* final: cancelled by a user or a failed dependency */
    TH_TASK_TIMEOUT,     /* final: its last attempt ran past its timeout */
    TH_TASK_EXPIRED,     /* final: not started before expires_at */
} th_task_state;
#define TH_TASK_NSTATES 9

/* "pending", "running"...; static; "unknown" for a bad value. */
TH_EXPORT const char *th_task_state_name(th_task_state state);
/* Parses a state name; TH_EINVAL when it is not one. */
TH_EXPORT int th_task_state_parse(const char *name, th_task_state *out);
/* 1 when no transition leaves `state` except an explicit retry. */
TH_EXPORT int th_task_state_is_final(th_task_state state);

/* Priorities are integers in [TH_PRIORITY_MIN, TH_PRIORITY_MAX]; higher runs
 * first, FIFO within equal priority. The named levels are points on it. */
enum {
    TH_PRIORITY_MIN = 0,
    TH_PRIORITY_LOW = 25,
    TH_PRIORITY_NORMAL = 50,
    TH_PRIORITY_HIGH = 75,
    TH_PRIORITY_CRITICAL = 100,
    TH_PRIORITY_MAX = 100,
};
/* Parses "low" | "normal" | "high" | "critical" or a decimal integer in range. */
TH_EXPORT int th_priority_parse(const char *text, int *out);

/* Backoff before retry k (k = 1 for the first retry):
 *   min(max_delay_ms, initial_delay_ms * multiplier^(k-1)) scaled by a random
 *   factor in [1 - jitter, 1 + jitter]. */
typedef struct th_retry_policy {
    int max_retries;          /* [0, 1000]; attempts = max_retries + 1 */
    int64_t initial_delay_ms; /* [0, 30 days] */
    int64_t max_delay_ms;     /* [initial_delay_ms, 30 days] */
    double multiplier;        /* [1, 100] */
    double jitter;            /* [0, 1] */
} th_retry_policy;
#define TH_RETRY_DEFAULT_MAX 3
#define TH_RETRY_DEFAULT_INITIAL_MS 1000
#define TH_RETRY_DEFAULT_MAX_DELAY_MS 300000
#define TH_RETRY_DEFAULT_MULTIPLIER 2.0
#define TH_RETRY_DEFAULT_JITTER 0.1

/* Fills `p` with the defaults above. */
TH_EXPORT void th_retry_policy_init(th_retry_policy *p);

/* What a submitter asks for. Strings are borrowed for the duration of the
 * call only. Initialise with th_task_spec_init, then set what you need. */
typedef struct th_task_spec {
    const char *queue;     /* required */
    const char *payload;   /* JSON text; NULL means null */
    const char *metadata;  /* JSON object text; NULL means none */
    int priority;          /* default TH_PRIORITY_NORMAL */
    int64_t run_at_ms;     /* wall-clock ms; 0 = now */
    int64_t delay_ms;      /* added to now when run_at_ms is 0 */
    int64_t timeout_ms;    /* per attempt; 0 = none */
    int64_t expires_at_ms; /* wall-clock ms; 0 = never */
    th_retry_policy retry;
    const char *const *deps; /* ids of tasks that must complete first; in a
                                batch, "$N" names item N of the batch */
    size_t ndeps;
    const char *unique_key; /* idempotent submit; NULL = none */
} th_task_spec;

/* Zeroes `spec`, sets `queue`, the default priority and retry policy. */
TH_EXPORT void th_task_spec_init(th_task_spec *spec, const char *queue);

/* A snapshot of a task. Returned by the engine; owned by the caller and freed
 * with th_task_free (which frees every string in it). */
typedef struct th_task {
    char id[TH_ID_SIZE];
    char *queue;
    char *payload;    /* JSON text; never NULL ("null" when none) */
    char *metadata;   /* JSON text or NULL */
    char *unique_key; /* or NULL */
    th_task_state state;
    int priority;
    int attempt; /* attempts started so far */
    th_retry_policy retry;
    int64_t timeout_ms;
    int64_t created_at;       /* wall-clock ms */
    int64_t run_at;           /* when it may run (delay / backoff) */
    int64_t expires_at;       /* 0 = never */
    int64_t started_at;       /* start of the current or last attempt; 0 = never */
    int64_t finished_at;      /* 0 unless final */
    int64_t lease_expires_at; /* 0 unless running */
    uint64_t lease;           /* lease token of the current attempt; 0 unless running */
    char *worker;             /* who holds / held the lease, or NULL */
    int cancel_requested;
    int progress; /* percent, 0..100 */
    int step, total_steps;
    char *progress_message; /* or NULL */
    char *error;            /* last failure or cancel reason, or NULL */
    char *result;           /* JSON text once completed, else NULL */
    char **deps;            /* ndeps ids */
    size_t ndeps;
} th_task;

/* Frees a snapshot and everything it owns; accepts NULL. */
TH_EXPORT void th_task_free(th_task *task);
/* Frees `n` snapshots and the array; accepts NULL. */
TH_EXPORT void th_task_array_free(th_task **tasks, size_t n);

typedef enum th_log_level {
    TH_LOG_DEBUG = 0,
    TH_LOG_INFO,
    TH_LOG_WARN,
    TH_LOG_ERROR,
} th_log_level;
TH_EXPORT const char *th_log_level_name(th_log_level level);
TH_EXPORT int th_log_level_parse(const char *name, th_log_level *out);

/* One row of a task's execution log. */
typedef struct th_log_entry {
    int64_t seq; /* 1, 2, ... per task */
    int64_t time_ms;
    th_log_level level;
    int attempt;
    char *message;
    char *data; /* JSON text or NULL */
} th_log_entry;

/* Frees `n` entries and the array; accepts NULL. */
TH_EXPORT void th_log_entries_free(th_log_entry *entries, size_t n);

#endif
