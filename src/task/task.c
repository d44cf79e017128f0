/*
 * Task value helpers of the public API: names of states, priorities and log
 * levels, spec and policy defaults, and freeing snapshots.
 */
#include "taskhive/task.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "taskhive/error.h"

static const char *const state_names[TH_TASK_NSTATES] = {
    "pending", "scheduled", "blocked", "running", "completed",
    "failed",  "cancelled", "timeout", "expired",
};

const char *th_version(void)
{
    return TH_VERSION_STRING;
}

const char *th_task_state_name(th_task_state state)
{
    return (unsigned)state < TH_TASK_NSTATES ? state_names[state] : "unknown";
}

int th_task_state_parse(const char *name, th_task_state *out)
{
    for (int i = 0; name && i < TH_TASK_NSTATES; i++)
        if (strcmp(name, state_names[i]) == 0) {
            *out = (th_task_state)i;
            return 0;
        }
    return TH_EINVAL;
}

int th_task_state_is_final(th_task_state state)
{
    return state >= TH_TASK_COMPLETED && state <= TH_TASK_EXPIRED;
}

int th_priority_parse(const char *text, int *out)
{
    static const struct {
        const char *name;
        int value;
    } levels[] = {{"low", TH_PRIORITY_LOW},
                  {"normal", TH_PRIORITY_NORMAL},
                  {"high", TH_PRIORITY_HIGH},
                  {"critical", TH_PRIORITY_CRITICAL}};
    if (!text || !*text)
        return TH_EINVAL;
    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++)
        if (strcmp(text, levels[i].name) == 0) {
            *out = levels[i].value;
            return 0;
        }
    /* Digits with an optional minus sign only: no spaces, no '+'. */
    if (!(text[0] == '-' || (text[0] >= '0' && text[0] <= '9')))
        return TH_EINVAL;
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || *end || v < TH_PRIORITY_MIN || v > TH_PRIORITY_MAX)
        return TH_EINVAL;
    *out = (int)v;
    return 0;
}

void th_retry_policy_init(th_retry_policy *p)
{
    p->max_retries = TH_RETRY_DEFAULT_MAX;
    p->initial_delay_ms = TH_RETRY_DEFAULT_INITIAL_MS;
    p->max_delay_ms = TH_RETRY_DEFAULT_MAX_DELAY_MS;
    p->multiplier = TH_RETRY_DEFAULT_MULTIPLIER;
    p->jitter = TH_RETRY_DEFAULT_JITTER;
}

void th_task_spec_init(th_task_spec *spec, const char *queue)
{
    memset(spec, 0, sizeof *spec);
    spec->queue = queue;
    spec->priority = TH_PRIORITY_NORMAL;
    th_retry_policy_init(&spec->retry);
}

void th_task_free(th_task *t)
{
    if (!t)
        return;
    th__free(t->queue);
    th__free(t->payload);
    th__free(t->metadata);
    th__free(t->unique_key);
    th__free(t->worker);
    th__free(t->progress_message);
    th__free(t->error);
    th__free(t->result);
    th__free(t->deps); /* one block: pointers followed by the ids */
    th__free(t);
}

void th_task_array_free(th_task **tasks, size_t n)
{
    if (!tasks)
        return;
    for (size_t i = 0; i < n; i++)
        th_task_free(tasks[i]);
    th__free(tasks);
}

static const char *const level_names[] = {"debug", "info", "warn", "error"};

const char *th_log_level_name(th_log_level level)
{
    return (unsigned)level < 4 ? level_names[level] : "unknown";
}

int th_log_level_parse(const char *name, th_log_level *out)
{
    for (int i = 0; name && i < 4; i++)
        if (strcmp(name, level_names[i]) == 0) {
            *out = (th_log_level)i;
            return 0;
        }
    return TH_EINVAL;
}

void th_log_entries_free(th_log_entry *entries, size_t n)
{
    if (!entries)
        return;
    for (size_t i = 0; i < n; i++) {
        th__free(entries[i].message);
        th__free(entries[i].data);
    }
    th__free(entries);
}
