/*
 * Event order under concurrency: with several threads submitting, claiming
 * and completing on a sqlite engine (where submit and complete wait for a
 * commit but claim does not), subscribers must still see events numbered
 * 1, 2, 3... with no gap or repeat, and each task's events in the order of
 * its life: submitted, ready, assigned, started, completed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "taskhive/taskhive.h"
#include "thtest.h"

#define THREADS 4
#define PER_THREAD 300

typedef struct seen {
    char id[TH_ID_SIZE];
    int stage; /* index in lifecycle[] of the last event seen */
} seen;

static const th_event_type lifecycle[] = {TH_EV_SUBMITTED, TH_EV_READY, TH_EV_ASSIGNED,
                                          TH_EV_STARTED, TH_EV_COMPLETED};

typedef struct checker {
    pthread_mutex_t mu; /* callbacks are serialised by the engine; this is for TSan's
                           benefit when the test reads the results */
    uint64_t last_seq;
    size_t events, bad_seq, bad_order;
    seen *tasks;
    size_t ntasks, cap;
} checker;

static seen *find_task(checker *c, const char *id)
{
    for (size_t i = c->ntasks; i-- > 0;)
        if (strcmp(c->tasks[i].id, id) == 0)
            return &c->tasks[i];
    if (c->ntasks == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 256;
        c->tasks = realloc(c->tasks, c->cap * sizeof *c->tasks);
        assert_non_null(c->tasks);
    }
    seen *s = &c->tasks[c->ntasks++];
    snprintf(s->id, sizeof s->id, "%s", id);
    s->stage = -1;
    return s;
}

static void on_event(const th_event *ev, void *ud)
{
    checker *c = ud;
    pthread_mutex_lock(&c->mu);
    c->events++;
    if (ev->seq != c->last_seq + 1)
        c->bad_seq++;
    c->last_seq = ev->seq;
    seen *s = find_task(c, ev->task_id);
    int stage = -1;
    for (int k = 0; k < 5; k++)
        if (lifecycle[k] == ev->type)
            stage = k;
    if (stage != s->stage + 1)
        c->bad_order++;
    s->stage = stage;
    pthread_mutex_unlock(&c->mu);
}

static void *submitter(void *arg)
{
    th_engine *e = arg;
    for (int i = 0; i < PER_THREAD; i++) {
        th_task_spec spec;
        th_task_spec_init(&spec, "order");
        char id[TH_ID_SIZE];
        th_error err;
        assert_int_equal(th_engine_submit(e, &spec, id, &err), 0);
    }
    return NULL;
}

static void *worker(void *arg)
{
    th_engine *e = arg;
    const char *q[] = {"order"};
    for (int done = 0; done < PER_THREAD;) {
        th_claim_options co = {.queues = q, .nqueues = 1, .max_tasks = 1, .wait_ms = 10000};
        th_task *t;
        th_error err;
        int n = th_engine_claim(e, &co, &t, &err);
        assert_int_equal(n, 1);
        assert_int_equal(th_engine_complete(e, t->id, t->lease, NULL, &err), 0);
        th_task_free(t);
        done++;
    }
    return NULL;
}

static void test_events_ordered_across_threads(void **state)
{
    char *path = NULL;
    char *uri = thtest_store_uri("sqlite", &path);
    th_engine *e = thtest_engine_opts(uri, NULL, NULL);
    checker c = {.mu = PTHREAD_MUTEX_INITIALIZER};
    int sub = th_engine_subscribe(e, on_event, &c);
    assert_true(sub > 0);

    pthread_t th[2 * THREADS];
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(pthread_create(&th[i], NULL, submitter, e), 0);
        assert_int_equal(pthread_create(&th[THREADS + i], NULL, worker, e), 0);
    }
    for (int i = 0; i < 2 * THREADS; i++)
        pthread_join(th[i], NULL);

    pthread_mutex_lock(&c.mu);
    assert_int_equal(c.ntasks, THREADS * PER_THREAD);
    assert_int_equal(c.events, 5 * THREADS * PER_THREAD);
    assert_int_equal(c.bad_seq, 0);
    assert_int_equal(c.bad_order, 0);
    for (size_t i = 0; i < c.ntasks; i++)
        assert_int_equal(c.tasks[i].stage, 4);
    pthread_mutex_unlock(&c.mu);

    th_engine_unsubscribe(e, sub);
    th_engine_free(e);
    free(c.tasks);
    free(uri);
    free(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_events_ordered_across_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
