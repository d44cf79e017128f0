/*
 * The handler context (private). A th_ctx carries the task, the pool's
 * handler configuration, the cooperative stop flag and deadline, and the
 * result or error the handler leaves behind. Progress and log calls go
 * through hooks, so the same handler code reports to the engine directly
 * (thread mode), over a pipe to the pool (process mode), or to a recorder
 * (tests).
 */
#ifndef TH_POOL_CTX_H
#define TH_POOL_CTX_H

#include <stdatomic.h>

#include "taskhive/pool.h"

typedef struct th__kv {
    char *key, *value;
} th__kv;

typedef struct th__ctx_hooks {
    int (*progress)(void *ud, int percent, int step, int total, const char *message);
    int (*log)(void *ud, th_log_level level, const char *message, const char *data);
    void *ud;
} th__ctx_hooks;

struct th_ctx {
    const th_task *task;
    const th__kv *config; /* borrowed */
    size_t nconfig;
    th__ctx_hooks hooks;
    atomic_int stop;          /* set by the pool: cancel, shutdown */
    int64_t deadline_mono_ns; /* 0 = no timeout */
    char *result;             /* owned; th__ctx_reset frees */
    char *error;              /* owned */
};

/* Prepares `ctx` to run `task`, starting now (`start_ns`, monotonic; 0 reads
 * the clock). */
void th__ctx_init(th_ctx *ctx, const th_task *task, const th__kv *config, size_t nconfig,
                  const th__ctx_hooks *hooks, int64_t timeout_ms, int64_t start_ns);
/* Frees what the handler left (result, error). */
void th__ctx_reset(th_ctx *ctx);

#endif
