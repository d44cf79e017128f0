/*
 * The handler context; see ctx.h and the th_ctx_* contract in pool.h.
 */
#include "pool/ctx.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/json.h"

void th__ctx_init(th_ctx *ctx, const th_task *task, const th__kv *config, size_t nconfig,
                  const th__ctx_hooks *hooks, int64_t timeout_ms, int64_t start_ns)
{
    ctx->task = task;
    ctx->config = config;
    ctx->nconfig = nconfig;
    if (hooks)
        ctx->hooks = *hooks;
    else
        memset(&ctx->hooks, 0, sizeof ctx->hooks);
    atomic_store(&ctx->stop, 0);
    if (timeout_ms > 0 && !start_ns)
        start_ns = th__mono_ns();
    ctx->deadline_mono_ns = timeout_ms > 0 ? start_ns + timeout_ms * 1000000 : 0;
    ctx->result = NULL;
    ctx->error = NULL;
}

void th__ctx_reset(th_ctx *ctx)
{
    th__free(ctx->result);
    th__free(ctx->error);
    ctx->result = NULL;
    ctx->error = NULL;
}

const th_task *th_ctx_task(const th_ctx *ctx)
{
    return ctx->task;
}

int th_ctx_cancelled(const th_ctx *ctx)
{
    if (atomic_load_explicit(&ctx->stop, memory_order_relaxed))
        return 1;
    return ctx->deadline_mono_ns && th__mono_ns() >= ctx->deadline_mono_ns;
}

int64_t th_ctx_remaining_ms(const th_ctx *ctx)
{
    if (!ctx->deadline_mono_ns)
        return INT64_MAX;
    int64_t left = (ctx->deadline_mono_ns - th__mono_ns()) / 1000000;
    return left > 0 ? left : 0;
}

int th_ctx_progress(th_ctx *ctx, int percent, int step, int total_steps, const char *message)
{
    if (percent < 0 || percent > 100 || step < 0 || total_steps < 0 || step > total_steps)
        return TH_EINVAL;
    return ctx->hooks.progress
               ? ctx->hooks.progress(ctx->hooks.ud, percent, step, total_steps, message)
               : 0;
}

int th_ctx_log(th_ctx *ctx, th_log_level level, const char *message, const char *data)
{
    if (!message || (unsigned)level > TH_LOG_ERROR)
        return TH_EINVAL;
    return ctx->hooks.log ? ctx->hooks.log(ctx->hooks.ud, level, message, data) : 0;
}

int th_ctx_set_result(th_ctx *ctx, const char *json)
{
    if (!json)
        json = "null";
    int rc = th__json_check(json, SIZE_MAX, TH_JSON_ANY, "result", NULL);
    if (rc)
        return rc;
    char *copy = th__strdup(json);
    if (!copy)
        return TH_ENOMEM;
    th__free(ctx->result);
    ctx->result = copy;
    return 0;
}

int th_ctx_set_error(th_ctx *ctx, const char *fmt, ...)
{
    char buf[TH_MESSAGE_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    char *copy = th__strdup(buf);
    if (!copy)
        return TH_ENOMEM;
    th__free(ctx->error);
    ctx->error = copy;
    return 0;
}

const char *th_ctx_config(const th_ctx *ctx, const char *key)
{
    for (size_t i = 0; key && i < ctx->nconfig; i++)
        if (strcmp(ctx->config[i].key, key) == 0)
            return ctx->config[i].value;
    return NULL;
}
