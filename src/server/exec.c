/*
 * The executor; see exec.h. Lock order: exec_mu is a leaf (engine calls run
 * without it).
 */
#include "server/exec.h"

#include <stdio.h>
#include <string.h>

#include "core/alloc.h"

struct th__exec {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    th__job *todo, *todo_tail; /* to run */
    th__job *done;             /* ran; for the loop */
    int stop, nthreads, inflight;
    pthread_t threads[32];
    struct event *ready; /* wakes the loop when jobs finish */
};

static void *exec_main(void *arg)
{
    th__server *s = arg;
    struct th__exec *x = s->exec;
    pthread_mutex_lock(&x->mu);
    for (;;) {
        while (!x->todo && !x->stop)
            pthread_cond_wait(&x->cv, &x->mu);
        if (!x->todo)
            break;
        th__job *j = x->todo;
        x->todo = j->next;
        if (!x->todo)
            x->todo_tail = NULL;
        pthread_mutex_unlock(&x->mu);
        j->run(j);
        pthread_mutex_lock(&x->mu);
        j->next = x->done;
        x->done = j;
        event_active(x->ready, EV_READ, 0);
    }
    pthread_mutex_unlock(&x->mu);
    return NULL;
}

static void job_dead(struct evhttp_connection *conn, void *arg)
{
    th__job *j = arg;
    j->dead = 1;
    /* libevent 2.1 detaches an unanswered request from a closing
     * connection and leaves freeing it to us (after the job is done). */
    j->detached = evhttp_request_get_connection(j->r) == NULL;
}

/* Loop: replies to every finished job, oldest first. */
static void on_ready(evutil_socket_t fd, short what, void *arg)
{
    th__server *s = arg;
    struct th__exec *x = s->exec;
    pthread_mutex_lock(&x->mu);
    th__job *list = x->done;
    x->done = NULL;
    pthread_mutex_unlock(&x->mu);
    th__job *rev = NULL; /* the done list is newest first */
    while (list) {
        th__job *next = list->next;
        list->next = rev;
        rev = list;
        list = next;
    }
    while (rev) {
        th__job *j = rev;
        rev = j->next;
        th__req q;
        memset(&q, 0, sizeof q);
        q.s = s;
        q.r = j->dead ? NULL : j->r;
        snprintf(q.path, sizeof q.path, "%s", j->path);
        if (!j->dead)
            th__conn_on_close(s, j->r, NULL, NULL);
        j->done(j, &q);
        if (j->dead && j->detached)
            evhttp_request_free(j->r);
        th__free(j);
        x->inflight--;
    }
}

int th__exec_start(th__server *s, int threads)
{
    struct th__exec *x = th__calloc(1, sizeof *x);
    if (!x)
        return -1;
    s->exec = x;
    pthread_mutex_init(&x->mu, NULL);
    pthread_cond_init(&x->cv, NULL);
    if (!(x->ready = event_new(s->base, -1, 0, on_ready, s)))
        return -1;
    if (threads > 32)
        threads = 32;
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&x->threads[i], NULL, exec_main, s) != 0)
            return -1;
        x->nthreads++;
    }
    return 0;
}

void th__exec_push(th__server *s, th__job *j)
{
    struct th__exec *x = s->exec;
    j->s = s;
    th__conn_on_close(s, j->r, job_dead, j);
    x->inflight++;
    pthread_mutex_lock(&x->mu);
    j->next = NULL;
    if (x->todo_tail)
        x->todo_tail->next = j;
    else
        x->todo = j;
    x->todo_tail = j;
    pthread_cond_signal(&x->cv);
    pthread_mutex_unlock(&x->mu);
}

int th__exec_inflight(th__server *s)
{
    return s->exec ? s->exec->inflight : 0;
}

void th__exec_stop(th__server *s)
{
    struct th__exec *x = s->exec;
    if (!x)
        return;
    pthread_mutex_lock(&x->mu);
    x->stop = 1;
    pthread_cond_broadcast(&x->cv);
    pthread_mutex_unlock(&x->mu);
    for (int i = 0; i < x->nthreads; i++)
        pthread_join(x->threads[i], NULL);
    /* Jobs that finished after the loop ended: their clients are gone. */
    while (x->done) {
        th__job *j = x->done;
        x->done = j->next;
        th__req q;
        memset(&q, 0, sizeof q);
        q.s = s;
        j->done(j, &q);
        th__free(j);
    }
    if (x->ready)
        event_free(x->ready);
    pthread_mutex_destroy(&x->mu);
    pthread_cond_destroy(&x->cv);
    th__free(x);
    s->exec = NULL;
}
