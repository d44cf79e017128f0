/*
 * Several nodes on one PostgreSQL database (the tests' private server):
 *
 *  - two engines, each with worker threads and its own timer, share N tasks:
 *    every task completes, and exactly one completion of each is accepted;
 *  - a process that leased tasks is killed with SIGKILL: the other engine
 *    finishes them once their leases expire (attempt 2);
 *  - the server restarts mid-run: both engines recover and every task
 *    completes once.
 *
 * N is 100000 in the plain build (about a minute here) and 2000 under the
 * sanitizers, which slow every statement several times and would only run
 * the same paths longer; the restart run shares N / 5. TH_PG_MULTI_N
 * overrides N. Waits are bounded and nothing asserts on speed.
 */
#include "thtest.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pgserver.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define DEFAULT_N 2000
#else
#define DEFAULT_N 100000
#endif
#define WORKERS 3 /* per engine */
#define BATCH 32

static size_t task_count(void)
{
    const char *env = getenv("TH_PG_MULTI_N");
    long n = env ? strtol(env, NULL, 10) : 0;
    return n > 0 ? (size_t)n : DEFAULT_N;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static th_engine *real_engine(const char *uri)
{
    return thtest_engine_opts(uri, NULL, NULL); /* system clock, timer thread */
}

/* Submits n tasks {"i": k} to queue "w" in batches; retry backoff 0 so a
 * task whose lease expired is ready again at once. */
static void submit_n(th_engine *e, size_t n)
{
    enum { CHUNK = 500 };
    static th_task_spec specs[CHUNK];
    static char payloads[CHUNK][32];
    static char ids[CHUNK][TH_ID_SIZE];
    for (size_t base = 0; base < n; base += CHUNK) {
        size_t m = n - base < CHUNK ? n - base : CHUNK;
        for (size_t i = 0; i < m; i++) {
            th_task_spec_init(&specs[i], "w");
            snprintf(payloads[i], sizeof payloads[i], "{\"i\":%zu}", base + i);
            specs[i].payload = payloads[i];
            specs[i].retry = thtest_retry(5, 0, 0, 1.0);
        }
        th_error err;
        memset(&err, 0, sizeof err);
        int rc;
        while ((rc = th_engine_submit_batch(e, specs, m, ids, &err)) == TH_EIO)
            sleep_ms(100); /* the server is restarting */
        if (rc != 0)
            fail_msg("submit_batch: %s: %s", th_errname(rc), err.message);
    }
}

static size_t index_of(const th_task *t)
{
    const char *p = strstr(t->payload, "\"i\":");
    assert_non_null(p);
    return (size_t)strtoul(p + 4, NULL, 10);
}

/* A worker thread: claims batches and completes them until every task has
 * an accepted completion. */
typedef struct run {
    th_engine *e[2];
    size_t n;
    _Atomic int *accepted; /* per task: completions the store accepted */
    _Atomic size_t done;
    _Atomic size_t eio; /* operations refused while the server was away */
    _Atomic size_t per_engine[2];
} run;

typedef struct worker {
    run *r;
    int which;
    pthread_t th;
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    run *r = w->r;
    th_engine *e = r->e[w->which];
    while (atomic_load(&r->done) < r->n) {
        th_claim_options o;
        memset(&o, 0, sizeof o);
        o.max_tasks = BATCH;
        o.wait_ms = 200;
        o.lease_ms = 3000; /* a claim whose answer was lost comes back soon */
        o.worker = w->which ? "node-b" : "node-a";
        th_task *got[BATCH];
        th_error err;
        memset(&err, 0, sizeof err);
        int k = th_engine_claim(e, &o, got, &err);
        if (k < 0) {
            atomic_fetch_add(&r->eio, 1);
            sleep_ms(50);
            continue;
        }
        /* Each result names the claim (its lease token), so a completion
         * found in the database can be told apart from another claim's. */
        th_completion items[BATCH];
        char results[BATCH][24];
        for (int i = 0; i < k; i++) {
            snprintf(results[i], sizeof results[i], "%llu", (unsigned long long)got[i]->lease);
            items[i] =
                (th_completion){.id = got[i]->id, .lease = got[i]->lease, .result = results[i]};
        }
        while (k > 0 && th_engine_complete_batch(e, items, (size_t)k) < 0) {
            /* No answer: the commit may or may not have happened. Asking
             * again is safe; the lease token refuses a second outcome. */
            atomic_fetch_add(&r->eio, 1);
            sleep_ms(50);
        }
        for (int i = 0; i < k; i++) {
            if (items[i].rc == 0) {
                atomic_fetch_add(&r->accepted[index_of(got[i])], 1);
                atomic_fetch_add(&r->done, 1);
                atomic_fetch_add(&r->per_engine[w->which], 1);
            } else if (items[i].rc == TH_ESTALE) {
                /* Accepted by a commit whose answer was lost, or leased
                 * again elsewhere (also after a server crash lost this
                 * claim's asynchronous commit, when the next claim has the
                 * same attempt number): the result says whose. */
                th_task *t = NULL;
                while (th_engine_get(e, got[i]->id, &t, &err) == TH_EIO)
                    sleep_ms(50);
                if (t && t->state == TH_TASK_COMPLETED && strcmp(t->result, items[i].result) == 0) {
                    atomic_fetch_add(&r->accepted[index_of(got[i])], 1);
                    atomic_fetch_add(&r->done, 1);
                }
                th_task_free(t);
            }
            th_task_free(got[i]);
        }
    }
    return NULL;
}

static void run_workers(run *r, void (*midway)(void))
{
    worker ws[2 * WORKERS];
    for (int i = 0; i < 2 * WORKERS; i++) {
        ws[i] = (worker){.r = r, .which = i % 2};
        assert_int_equal(pthread_create(&ws[i].th, NULL, worker_main, &ws[i]), 0);
    }
    if (midway) {
        while (atomic_load(&r->done) < r->n / 3)
            sleep_ms(20);
        midway();
    }
    for (int i = 0; i < 2 * WORKERS; i++)
        pthread_join(ws[i].th, NULL);
}

static void check_all_completed_once(run *r)
{
    for (size_t i = 0; i < r->n; i++)
        if (atomic_load(&r->accepted[i]) != 1)
            fail_msg("task %zu has %d accepted completions", i, atomic_load(&r->accepted[i]));
    assert_int_equal(thtest_list_count(r->e[0], "w", TH_TASK_COMPLETED), r->n);
    assert_int_equal(thtest_list_count(r->e[1], "w", -1), r->n);
}

static void share_tasks(size_t n, void (*midway)(void))
{
    char *uri = thtest_pg_uri();
    run r;
    memset(&r, 0, sizeof r);
    r.n = n;
    r.accepted = calloc(r.n, sizeof *r.accepted);
    assert_non_null(r.accepted);
    r.e[0] = real_engine(uri);
    r.e[1] = real_engine(uri);
    submit_n(r.e[0], r.n);
    run_workers(&r, midway);
    check_all_completed_once(&r);
    /* Both nodes did work: the queue was shared, not drained by one. */
    assert_true(atomic_load(&r.per_engine[0]) > 0);
    assert_true(atomic_load(&r.per_engine[1]) > 0);
    th_engine_free(r.e[0]);
    th_engine_free(r.e[1]);
    free(r.accepted);
    free(uri);
}

static void test_two_engines_share_tasks(void **state)
{
    (void)state;
    share_tasks(task_count(), NULL);
}

static void restart_server(void)
{
    assert_int_equal(thpg_restart(), 0);
}

static void test_server_restart_mid_run(void **state)
{
    (void)state;
    share_tasks(task_count() / 5 > 0 ? task_count() / 5 : 1, restart_server);
}

/* A child process submits and leases tasks and is killed with SIGKILL
 * holding them; the parent's engine re-runs them after their leases expire.
 * The child is forked before this process starts any thread (ThreadSanitizer
 * cannot follow threads started after a multi-threaded fork). */
static void test_sigkilled_node_leases_expire(void **state)
{
    (void)state;
    enum { K = 20, LEASE_MS = 1500 };
    char *uri = thtest_pg_uri();
    char ids[K][TH_ID_SIZE];
    int p[2];
    assert_int_equal(pipe(p), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        th_error err;
        th_store *s = th_store_open(uri, NULL, &err);
        th_engine *a = s ? th_engine_new(s, NULL, &err) : NULL;
        int ok = a != NULL;
        for (int i = 0; ok && i < K; i++) {
            th_task_spec spec;
            th_task_spec_init(&spec, "w");
            spec.retry = thtest_retry(3, 0, 0, 1.0);
            ok = th_engine_submit(a, &spec, ids[i], &err) == 0;
        }
        th_claim_options o;
        memset(&o, 0, sizeof o);
        o.max_tasks = K;
        o.lease_ms = LEASE_MS;
        o.worker = "doomed";
        th_task *got[K];
        ok = ok && th_engine_claim(a, &o, got, &err) == K;
        ssize_t wr = write(p[1], ok ? (const void *)ids : "", ok ? sizeof ids : 1);
        (void)wr;
        for (;;)
            pause();
    }
    close(p[1]);
    size_t got = 0;
    ssize_t r;
    while (got < sizeof ids && (r = read(p[0], (char *)ids + got, sizeof ids - got)) > 0)
        got += (size_t)r;
    close(p[0]);
    kill(pid, SIGKILL);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(got, sizeof ids); /* the child submitted and leased all */

    th_engine *b = real_engine(uri);
    for (int i = 0; i < K; i++)
        thtest_assert_state(b, ids[i], TH_TASK_RUNNING);
    int done = 0;
    for (int round = 0; done < K && round < 100; round++) {
        th_claim_options o;
        memset(&o, 0, sizeof o);
        o.max_tasks = K;
        o.wait_ms = 200;
        o.worker = "survivor";
        th_task *t[K];
        th_error err;
        int k = th_engine_claim(b, &o, t, &err);
        assert_true(k >= 0);
        for (int i = 0; i < k; i++) {
            assert_int_equal(t[i]->attempt, 2);
            assert_int_equal(th_engine_complete(b, t[i]->id, t[i]->lease, "2", &err), 0);
            th_task_free(t[i]);
            done++;
        }
    }
    assert_int_equal(done, K);
    for (int i = 0; i < K; i++) {
        th_task *t = thtest_get(b, ids[i]);
        assert_int_equal(t->state, TH_TASK_COMPLETED);
        assert_string_equal(t->worker, "survivor");
        th_task_free(t);
    }
    th_engine_free(b);
    free(uri);
}

/* Events a subscriber saw of queue "ev" (this test's only task). */
typedef struct seen {
    pthread_mutex_t mu;
    th_event_type types[16];
    char id[16][TH_ID_SIZE];
    int n;
} seen;

static void on_event(const th_event *ev, void *ud)
{
    seen *s = ud;
    pthread_mutex_lock(&s->mu);
    if (strcmp(ev->queue, "ev") == 0 && s->n < 16) {
        memcpy(s->id[s->n], ev->task_id, TH_ID_SIZE);
        s->types[s->n++] = ev->type;
    }
    pthread_mutex_unlock(&s->mu);
}

static int seen_count(seen *s)
{
    pthread_mutex_lock(&s->mu);
    int n = s->n;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* A task's life on one node is seen, in order and once, by subscribers on
 * both nodes. */
static void test_events_reach_every_node(void **state)
{
    (void)state;
    static const th_event_type want[] = {TH_EV_SUBMITTED, TH_EV_READY, TH_EV_ASSIGNED,
                                         TH_EV_STARTED, TH_EV_COMPLETED};
    enum { NWANT = sizeof want / sizeof want[0] };
    char *uri = thtest_pg_uri();
    th_engine *a = real_engine(uri), *b = real_engine(uri);
    seen sa = {.n = 0}, sb = {.n = 0};
    pthread_mutex_init(&sa.mu, NULL);
    pthread_mutex_init(&sb.mu, NULL);
    int ka = th_engine_subscribe(a, on_event, &sa), kb = th_engine_subscribe(b, on_event, &sb);
    assert_true(ka >= 0 && kb >= 0);
    char id[TH_ID_SIZE];
    thtest_submit_simple(a, "ev", NULL, id);
    th_task *t = thtest_claim1(a, "ev", 0);
    th_error err;
    assert_int_equal(th_engine_complete(a, t->id, t->lease, NULL, &err), 0);
    th_task_free(t);
    for (int i = 0; i < 200 && seen_count(&sb) < NWANT; i++)
        sleep_ms(50);
    sleep_ms(300); /* a duplicate would show by now */
    th_engine_unsubscribe(a, ka);
    th_engine_unsubscribe(b, kb);
    assert_int_equal(sa.n, NWANT);
    assert_int_equal(sb.n, NWANT);
    for (int i = 0; i < NWANT; i++) {
        assert_int_equal(sa.types[i], want[i]);
        assert_int_equal(sb.types[i], want[i]);
        assert_string_equal(sb.id[i], id);
    }
    th_engine_free(a);
    th_engine_free(b);
    pthread_mutex_destroy(&sa.mu);
    pthread_mutex_destroy(&sb.mu);
    free(uri);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sigkilled_node_leases_expire),
        cmocka_unit_test(test_events_reach_every_node),
        cmocka_unit_test(test_two_engines_share_tasks),
        cmocka_unit_test(test_server_restart_mid_run),
    };
    return cmocka_run_group_tests_name("pg_multi", tests, NULL, NULL) != 0;
}
