/*
 * The executor (private): engine calls that wait for a durable commit
 * (submit, complete, fail, cancel, retry) run on a few threads, so the loop
 * never waits for the disk and concurrent requests share commits. The loop
 * parses and validates a request into a job, hands it over, and sends the
 * reply when the job comes back (a wake-up event on the loop).
 *
 * A client that disconnects while its job runs marks the job dead through
 * the connection's close callback (one request per connection is in flight,
 * since the server does not pipeline); the outcome is then recorded but not
 * sent.
 */
#ifndef TH_SERVER_EXEC_H
#define TH_SERVER_EXEC_H

#include "server/http.h"

typedef struct th__job th__job;
/* Runs on an executor thread: only the engine and the job's own fields. */
typedef void (*th__job_run)(th__job *j);
/* Runs on the loop after `run`: replies through `q` (unless the client left)
 * and frees the job's data (always). */
typedef void (*th__job_done)(th__job *j, th__req *q);

struct th__job {
    th__job *next;
    th__server *s;
    struct evhttp_request *r;
    int dead;
    int detached; /* the client left; the request is ours to free */
    char path[512];
    th__job_run run;
    th__job_done done;
    /* What the job kinds need (routes.c fills and reads them). */
    int rc;
    th_error err;
    json_t *body;
    char **owned;
    size_t nowned;
    th_task_spec *specs;
    size_t n;
    char (*ids)[TH_ID_SIZE];
    char id[TH_ID_SIZE];
    char name[TH_QUEUE_NAME_MAX + 1]; /* a service name */
    uint64_t lease;
    char *text;
    int flags;
    th_task *task; /* a snapshot for the reply */
    void *extra;   /* anything else a job kind needs (freed by its done) */
};

/* Starts `threads` executor threads. 0 or -1. */
int th__exec_start(th__server *s, int threads);
/* Loop thread: takes `j` (allocated with th__calloc) and runs it. */
void th__exec_push(th__server *s, th__job *j);
/* Jobs handed over and not yet replied to. */
int th__exec_inflight(th__server *s);
/* Finishes queued jobs, stops the threads (loop thread, after the loop). */
void th__exec_stop(th__server *s);

#endif
