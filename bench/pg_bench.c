/*
 * pg_bench: the PostgreSQL store's end-to-end throughput and submit-to-start
 * latency, with one engine ("daemon") and with two engines sharing one
 * database, on a private local server (tests/lib/pgserver.c: initdb in a
 * temp dir, default settings, so synchronous_commit is on). $TH_TEST_PG_URI
 * names an existing server instead.
 *
 * stdout carries only "<name> <value> <unit>" lines; progress and targets go
 * to stderr. Two engines run in this one process, each with its own store
 * (connection pool, notifier) and consumers, as two daemons would.
 *
 *   pg_bench [--quick] [--only NAME-PREFIX]
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <taskhive/taskhive.h>

#include "pgserver.h"

#define BATCH 500        /* tasks per th_engine_submit_batch */
#define CONSUMERS 4      /* claiming threads per engine */
#define CLAIM_MAX 64     /* max_tasks of each claim */
#define CLAIM_WAIT_MS 50 /* consumers re-check the stop flag this often */
#define TARGET_E2E 20000.0
#define TARGET_P99_MS 5.0

static const char *g_only;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static _Noreturn void die(const char *what, int rc, const th_error *err)
{
    fprintf(stderr, "pg_bench: %s: %s: %s\n", what, th_errname(rc),
            err && err->message[0] ? err->message : th_strerror(rc));
    exit(1);
}

static int wanted(const char *name)
{
    return !g_only || strncmp(name, g_only, strlen(g_only)) == 0;
}

static th_engine *open_engine(const char *uri)
{
    th_error err;
    memset(&err, 0, sizeof err);
    th_store *s = th_store_open(uri, NULL, &err);
    if (!s)
        die("th_store_open", err.code, &err);
    th_engine *e = th_engine_new(s, NULL, &err);
    if (!e)
        die("th_engine_new", err.code, &err);
    return e;
}

typedef struct consumer {
    th_engine *e;
    _Atomic size_t *done;
    size_t target;
    volatile int stop;
    pthread_t th;
} consumer;

static void *consumer_main(void *arg)
{
    consumer *c = arg;
    th_task *got[CLAIM_MAX];
    th_completion items[CLAIM_MAX];
    while (!c->stop && atomic_load(c->done) < c->target) {
        th_claim_options o;
        memset(&o, 0, sizeof o);
        o.max_tasks = CLAIM_MAX;
        o.wait_ms = CLAIM_WAIT_MS;
        o.worker = "bench";
        th_error err;
        int k = th_engine_claim(c->e, &o, got, &err);
        if (k < 0)
            die("claim", k, &err);
        for (int i = 0; i < k; i++)
            items[i] = (th_completion){.id = got[i]->id, .lease = got[i]->lease, .result = NULL};
        if (k > 0) {
            int ok = th_engine_complete_batch(c->e, items, (size_t)k);
            if (ok < 0)
                die("complete_batch", ok, NULL);
            atomic_fetch_add(c->done, (size_t)ok);
        }
        for (int i = 0; i < k; i++)
            th_task_free(got[i]);
    }
    return NULL;
}

/* Submits n tasks through engine 0 while every engine's consumers run;
 * returns tasks per second from the first submit to the last completion. */
static double e2e(int nengines, size_t n)
{
    char *uri = thpg_new_schema();
    if (!uri)
        exit(1);
    th_engine *es[2];
    consumer cs[2 * CONSUMERS];
    _Atomic size_t done = 0;
    for (int k = 0; k < nengines; k++)
        es[k] = open_engine(uri);
    for (int i = 0; i < nengines * CONSUMERS; i++) {
        cs[i] = (consumer){.e = es[i % nengines], .done = &done, .target = n};
        pthread_create(&cs[i].th, NULL, consumer_main, &cs[i]);
    }
    th_task_spec *specs = calloc(BATCH, sizeof *specs);
    char(*ids)[TH_ID_SIZE] = calloc(BATCH, TH_ID_SIZE);
    for (size_t i = 0; i < BATCH; i++)
        th_task_spec_init(&specs[i], "bench");
    int64_t t0 = now_ns();
    for (size_t base = 0; base < n; base += BATCH) {
        size_t m = n - base < BATCH ? n - base : BATCH;
        th_error err;
        int rc = th_engine_submit_batch(es[(base / BATCH) % nengines], specs, m, ids, &err);
        if (rc)
            die("submit_batch", rc, &err);
    }
    for (int i = 0; i < nengines * CONSUMERS; i++)
        pthread_join(cs[i].th, NULL);
    double secs = (double)(now_ns() - t0) / 1e9;
    for (int k = 0; k < nengines; k++)
        th_engine_free(es[k]);
    free(specs);
    free(ids);
    free(uri);
    return (double)n / secs;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Latency from calling submit to a blocked claim returning the task, with
 * the claimer on the other engine when nengines is 2 (a LISTEN/NOTIFY
 * wake-up). Fills p50 and p99 in ms. */
typedef struct lat_claimer {
    th_engine *e;
    _Atomic int64_t *returned_ns;
    size_t n;
    pthread_t th;
} lat_claimer;

static void *lat_main(void *arg)
{
    lat_claimer *l = arg;
    for (size_t i = 0; i < l->n; i++) {
        th_claim_options o;
        memset(&o, 0, sizeof o);
        o.max_tasks = 1;
        o.wait_ms = 10000;
        th_task *t = NULL;
        th_error err;
        int k = th_engine_claim(l->e, &o, &t, &err);
        if (k != 1)
            die("latency claim", k < 0 ? k : TH_EIO, &err);
        atomic_store(&l->returned_ns[i], now_ns());
        th_engine_complete(l->e, t->id, t->lease, NULL, &err);
        th_task_free(t);
    }
    return NULL;
}

static void latency(int nengines, size_t n, double *p50, double *p99)
{
    char *uri = thpg_new_schema();
    if (!uri)
        exit(1);
    th_engine *es[2];
    for (int k = 0; k < nengines; k++)
        es[k] = open_engine(uri);
    int64_t *sub = calloc(n, sizeof *sub);
    _Atomic int64_t *ret = calloc(n, sizeof *ret);
    double *ms = calloc(n, sizeof *ms);
    lat_claimer l = {.e = es[nengines - 1], .returned_ns = ret, .n = n};
    pthread_create(&l.th, NULL, lat_main, &l);
    for (size_t i = 0; i < n; i++) {
        struct timespec pause = {0, 2000000}; /* lets the claimer block again */
        nanosleep(&pause, NULL);
        th_task_spec spec;
        th_task_spec_init(&spec, "lat");
        char id[TH_ID_SIZE];
        th_error err;
        sub[i] = now_ns();
        int rc = th_engine_submit(es[0], &spec, id, &err);
        if (rc)
            die("latency submit", rc, &err);
        while (atomic_load(&ret[i]) == 0 && now_ns() - sub[i] < 10000000000LL) {
            struct timespec poll = {0, 50000};
            nanosleep(&poll, NULL);
        }
    }
    pthread_join(l.th, NULL);
    for (size_t i = 0; i < n; i++)
        ms[i] = (double)(atomic_load(&ret[i]) - sub[i]) / 1e6;
    qsort(ms, n, sizeof *ms, cmp_double);
    *p50 = ms[n / 2];
    *p99 = ms[(size_t)((double)n * 0.99) < n ? (size_t)((double)n * 0.99) : n - 1];
    for (int k = 0; k < nengines; k++)
        th_engine_free(es[k]);
    free(sub);
    free(ret);
    free(ms);
    free(uri);
}

int main(int argc, char **argv)
{
    int quick = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc)
            g_only = argv[++i];
    }
    if (g_only && strncmp(g_only, "pg.", g_only[0] && strlen(g_only) < 3 ? strlen(g_only) : 3) != 0)
        return 0; /* --only names another benchmark's figures */
    if (!thpg_base())
        return 1;
    size_t n = quick ? 10000 : 50000, nlat = quick ? 200 : 1000;
    for (int k = 1; k <= 2; k++) {
        char name[64];
        snprintf(name, sizeof name, "pg.e2e.engines%d", k);
        if (wanted(name)) {
            double rate = e2e(k, n);
            printf("%s %.0f tasks/s\n", name, rate);
            fprintf(stderr, "  %s: %zu tasks; target >= %.0f with one engine\n", name, n,
                    TARGET_E2E);
        }
        snprintf(name, sizeof name, "pg.latency.engines%d", k);
        if (wanted(name)) {
            double p50, p99;
            latency(k, nlat, &p50, &p99);
            printf("%s.p50 %.3f ms\n%s.p99 %.3f ms\n", name, p50, name, p99);
            fprintf(stderr, "  %s: %zu samples; target p99 <= %.1f ms\n", name, nlat,
                    TARGET_P99_MS);
        }
        fflush(stdout);
    }
    return 0;
}
