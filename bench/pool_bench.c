/*
 * Worker pool benchmarks. Prints "<name> <value> <unit>" lines on stdout;
 * details and targets go to stderr.
 *
 *   pool.threads.w2 / .w8    tiny tasks (x + 1) through a thread pool on the
 *                            memory store, tasks/s from pool start to the
 *                            last completion (tasks submitted beforehand)
 *   pool.processes.w2 / .w8  the same through process workers
 *   pool.respawn.p50 / .p99  a worker process crashes: from the crash (the
 *                            handler's last timestamp) to the replacement
 *                            child running its next task
 *
 * Usage: pool_bench [--quick] [--only PREFIX]
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "taskhive/pool.h"
#include "taskhive/taskhive.h"

static const char *only;

static int wanted(const char *name)
{
    return !only || strncmp(name, only, strlen(only)) == 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, const th_error *err)
{
    fprintf(stderr, "pool_bench: %s: %s\n", what, err ? err->message : "failed");
    exit(1);
}

static int add_one(th_ctx *ctx, void *ud)
{
    const th_task *t = th_ctx_task(ctx);
    char buf[32];
    snprintf(buf, sizeof buf, "%ld", strtol(t->payload, NULL, 10) + 1);
    return th_ctx_set_result(ctx, buf) == 0 ? TH_HANDLER_OK : TH_HANDLER_RETRY;
}

static void submit_all(th_engine *e, const char *queue, long n)
{
    enum { B = 1000 };
    static th_task_spec specs[B];
    static char payload[B][24];
    static char ids[B][TH_ID_SIZE];
    th_error err;
    for (long done = 0; done < n;) {
        int k = n - done < B ? (int)(n - done) : B;
        for (int i = 0; i < k; i++) {
            th_task_spec_init(&specs[i], queue);
            snprintf(payload[i], sizeof payload[i], "%ld", done + i);
            specs[i].payload = payload[i];
        }
        if (th_engine_submit_batch(e, specs, (size_t)k, ids, &err))
            die("submit", &err);
        done += k;
    }
}

static long completed(th_engine *e)
{
    th_engine_metrics m;
    th_engine_metrics_get(e, &m);
    return (long)m.counts[TH_TASK_COMPLETED];
}

static void throughput(const char *name, th_pool_mode mode, int workers, long n)
{
    if (!wanted(name))
        return;
    th_error err;
    th_engine_options eo;
    th_engine_options_init(&eo);
    th_engine *e = th_engine_new(th_store_open("memory", NULL, &err), &eo, &err);
    if (!e)
        die("engine", &err);
    submit_all(e, "add", n);
    th_pool_options o;
    th_pool_options_init(&o);
    o.mode = mode;
    o.min_workers = o.max_workers = workers;
    o.batch = 64;
    o.autoscale = 0;
    o.recycle_after = 0;
    o.max_queue = (size_t)n + 1;
    th_pool *p = th_pool_new(e, &o, &err);
    if (!p || th_pool_register(p, "add", add_one, NULL, &err))
        die("pool", &err);
    double t0 = now_s();
    if (th_pool_start(p, &err))
        die("start", &err);
    while (completed(e) < n)
        usleep(2000);
    double dt = now_s() - t0;
    th_pool_free(p);
    th_engine_free(e);
    printf("%s %.0f tasks/s\n", name, (double)n / dt);
    fprintf(stderr, "  %s: %ld tasks, %d %s workers, %.2f s\n", name, n, workers,
            mode == TH_POOL_THREADS ? "thread" : "process", dt);
}

/* ---- respawn latency --------------------------------------------------- */

static long mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* Attempt 1 crashes, attempt 2 reports how long after the crash it began.
 * CLOCK_MONOTONIC is shared by parent and children. */
static int crash_then_time(th_ctx *ctx, void *ud)
{
    const th_task *t = th_ctx_task(ctx);
    if (t->attempt == 1) {
        char buf[32];
        snprintf(buf, sizeof buf, "%ld", mono_ns());
        th_ctx_log(ctx, TH_LOG_INFO, buf, NULL);
        raise(SIGKILL);
    }
    char buf[32];
    snprintf(buf, sizeof buf, "%ld", mono_ns());
    return th_ctx_set_result(ctx, buf) ? TH_HANDLER_RETRY : TH_HANDLER_OK;
}

static int cmp_long(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

static void respawn(int rounds)
{
    if (!wanted("pool.respawn"))
        return;
    th_error err;
    th_engine *e = th_engine_new(th_store_open("memory", NULL, &err), NULL, &err);
    th_pool_options o;
    th_pool_options_init(&o);
    o.mode = TH_POOL_PROCESSES;
    o.min_workers = o.max_workers = 1;
    o.autoscale = 0;
    th_pool *p = th_pool_new(e, &o, &err);
    if (!p || th_pool_register(p, "crash", crash_then_time, NULL, &err) || th_pool_start(p, &err))
        die("pool", &err);
    long *lat = calloc((size_t)rounds, sizeof *lat);
    int got = 0;
    for (int r = 0; r < rounds; r++) {
        th_task_spec s;
        th_task_spec_init(&s, "crash");
        s.retry.initial_delay_ms = 0;
        s.retry.jitter = 0;
        char id[TH_ID_SIZE];
        if (th_engine_submit(e, &s, id, &err) < 0)
            die("submit", &err);
        th_task *t = NULL;
        for (int spin = 0; spin < 5000; spin++) {
            th_engine_get(e, id, &t, NULL);
            if (t && t->state == TH_TASK_COMPLETED)
                break;
            th_task_free(t);
            t = NULL;
            usleep(1000);
        }
        th_log_entry *logs = NULL;
        size_t nl = 0;
        if (t && th_engine_logs(e, id, 0, 0, &logs, &nl, NULL) == 0 && nl > 0)
            lat[got++] = strtol(t->result, NULL, 10) - strtol(logs[0].message, NULL, 10);
        th_log_entries_free(logs, nl);
        th_task_free(t);
    }
    th_pool_free(p);
    th_engine_free(e);
    if (!got)
        die("respawn: no task completed", NULL);
    qsort(lat, (size_t)got, sizeof *lat, cmp_long);
    printf("pool.respawn.p50 %.2f ms\n", (double)lat[got / 2] / 1e6);
    printf("pool.respawn.p99 %.2f ms\n", (double)lat[(got * 99) / 100] / 1e6);
    fprintf(stderr, "  pool.respawn: %d crashes; target p50 <= 5 ms\n", got);
    free(lat);
}

int main(int argc, char **argv)
{
    int quick = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc)
            only = argv[++i];
        else {
            fprintf(stderr, "usage: pool_bench [--quick] [--only PREFIX]\n");
            return 2;
        }
    }
    long n = quick ? 100000 : 1000000;
    /* First, while this process is small: fork() copies the parent's page
     * tables, so after the 1M-task runs below a respawn costs far more. */
    respawn(quick ? 20 : 100);
    throughput("pool.threads.w2", TH_POOL_THREADS, 2, n);
    throughput("pool.threads.w8", TH_POOL_THREADS, 8, n);
    throughput("pool.processes.w2", TH_POOL_PROCESSES, 2, n / 5);
    throughput("pool.processes.w8", TH_POOL_PROCESSES, 8, n / 5);
    return 0;
}
