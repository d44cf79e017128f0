/*
 * The simplest built-in handlers: noop (completes at once) and sleep (waits
 * cooperatively, reporting progress), used for wiring checks and load tests.
 */
#include "handlers/handlers.h"

#include <time.h>

#include "core/clock.h"

/* Longest sleep a payload may ask for: one day. */
#define SLEEP_MAX_MS 86400000
/* Longest stretch between two cancellation checks. */
#define SLEEP_SLICE_NS 10000000LL

/* Completes with {"ok":true} whatever the payload. */
int th_handler_noop(th_ctx *ctx, void *ud)
{
    (void)ud;
    return th__hresult(ctx, json_pack("{s:b}", "ok", 1), TH_HANDLER_OK);
}

/*
 * Payload {"ms": 0..86400000}. Sleeps in slices of at most 10 ms, checking
 * th_ctx_cancelled between them and reporting the percentage done whenever
 * it changes. Result {"slept_ms": ms}.
 */
int th_handler_sleep(th_ctx *ctx, void *ud)
{
    (void)ud;
    static const char *const allowed[] = {"ms", NULL};
    json_t *p;
    int rc = th__payload_parse(ctx, allowed, &p);
    if (rc)
        return rc;
    int64_t ms = 0;
    rc = th__payload_int(ctx, p, "ms", 0, SLEEP_MAX_MS, 1, &ms);
    json_decref(p);
    if (rc)
        return rc;

    int64_t start = th__mono_ns(), total = ms * 1000000LL, end = start + total;
    int last_pct = -1;
    for (;;) {
        if (th_ctx_cancelled(ctx))
            return th__hcancelled(ctx);
        int64_t now = th__mono_ns();
        if (now >= end)
            break;
        int pct = (int)((now - start) * 100 / total);
        if (pct != last_pct) {
            th_ctx_progress(ctx, pct, 0, 0, NULL);
            last_pct = pct;
        }
        int64_t slice = end - now < SLEEP_SLICE_NS ? end - now : SLEEP_SLICE_NS;
        struct timespec ts = {0, (long)slice};
        nanosleep(&ts, NULL);
    }
    th_ctx_progress(ctx, 100, 0, 0, NULL);
    return th__hresult(ctx, json_pack("{s:I}", "slept_ms", (json_int_t)ms), TH_HANDLER_OK);
}
