/*
 * The daemon's shared state and HTTP helpers (private). One libevent loop
 * thread owns `struct th__server` except where a field says otherwise: the
 * event ring is filled by engine threads (ring_mu) and the loop is woken with
 * event_active on `wake`.
 */
#ifndef TH_SERVER_HTTP_H
#define TH_SERVER_HTTP_H

#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>

#include "server/config.h"
#include "taskhive/agent.h"
#include "taskhive/taskhive.h"

/* One event kept for Server-Sent Events and Last-Event-ID resume. */
typedef struct th__ring_ev {
    uint64_t seq;
    th_event_type type;
    int64_t time_ms;
    char task[TH_ID_SIZE];
    char queue[TH_QUEUE_NAME_MAX + 1];
    th_task_state state;
    int attempt, progress;
    char *message;
} th__ring_ev;

typedef struct th__sse th__sse;       /* an event-stream client (stream.c) */
typedef struct th__parked th__parked; /* a long-poll claim waiting for work */
typedef struct th__ext_worker th__ext_worker;
typedef struct th__conn th__conn; /* conn.c */
typedef void (*th__close_fn)(struct evhttp_connection *conn, void *arg);

typedef struct th__server {
    th__config cfg;
    struct event_base *base;
    struct evhttp *http;
    th_engine *engine;
    th_pool *pool;
    int ready, draining;
    int port;
    int64_t started_ms;

    /* Events from engine threads (ring_mu), served by the loop. */
    pthread_mutex_t ring_mu;
    th__ring_ev *ring;
    size_t ring_cap, ring_len, ring_head; /* ring_head: index of the oldest */
    atomic_int ready_seen;                /* a task became ready since the last look */
    struct event *wake;
    struct event *keepalive;

    th__sse *sse;
    th__parked *parked;
    th__ext_worker *workers;
    struct th__exec *exec; /* exec.c */
    th__conn *conns;       /* open connections (conn.c) */
    struct event *drained; /* the drain thread is done */
    th_supervisor *sv;     /* services.c; NULL without [service.*] */
    th_llm_gateway *gw;    /* llm.c */
    struct th__keys *keys; /* keys.c; opened at start or on first use */
    char default_provider[64];
    th_tools *tools; /* agents.c */
    th_agents *agents;
    th_memory *memory;
    th_agent_env agent_env;
    int sv_sub;
    pthread_t drainer;
    int has_drainer;
    size_t nconns;
} th__server;

/* A request being handled. */
typedef struct th__req {
    th__server *s;
    struct evhttp_request *r;
    struct evkeyvalq query;
    char path[512]; /* as requested, for messages */
    char segbuf[512];
    const char *seg[8]; /* path segments, pointing into segbuf */
    int nseg;
    unsigned scopes; /* of the caller's token (all when auth is off) */
} th__req;

/* ---- replies (each sends the answer; the request is done) ---- */

/* Sends `body` (stolen) as JSON with `status`. */
void th__reply_json(th__req *q, int status, json_t *body);
/* Sends {"error":{"code","message","field"}}. */
void th__reply_error(th__req *q, int status, const char *code, const char *field, const char *fmt,
                     ...) __attribute__((format(printf, 5, 6)));
/* Maps an engine error (code and detail) to its HTTP status and sends it. */
void th__reply_engine_error(th__req *q, int rc, const th_error *err);

/* Sends 405 with an Allow header listing `allow`. */
void th__reply_method(th__req *q, const char *allow);

/* ---- requests ---- */

/* Whether path segment i of `q` is `s`. */
#define SEG(i, s) (q->nseg > (i) && strcmp(q->seg[i], (s)) == 0)

/* Parses the body as a JSON object no larger than `max` bytes. NULL after
 * replying 400/413. An empty body gives an empty object. */
json_t *th__req_body(th__req *q, size_t max);
/* Refuses (400, naming it) the first key of `obj` not in `allowed`
 * (NULL-terminated). Returns 0 when all keys are known. */
int th__req_known_fields(th__req *q, json_t *obj, const char *const *allowed, const char *prefix);
/* Splits `path` into q->seg (at most 8 segments of [A-Za-z0-9_.:-], which is
 * all ids and queue names need). Returns 0, or -1 for anything else. */
int th__path_split(th__req *q, const char *path);
/* A query parameter or NULL. */
const char *th__req_param(th__req *q, const char *name);
/* 1 when the caller may act with `scope`; otherwise replies 403. */
int th__req_allow(th__req *q, unsigned scope);

/* ---- JSON of engine values (json_task.c) ---- */

json_t *th__json_task(const th_task *t);
/* Parses a JSON text the engine stored (always valid); NULL text gives null. */
json_t *th__json_raw(const char *text);
/* Fills `spec` from a submit object. Strings in `spec` point into `obj` or
 * into `*owned` (texts to free with th__json_owned_free, also on failure).
 * Returns 0 or a TH_E* code with `err` naming the field (with `prefix`, e.g.
 * "tasks[3]."). Pure: no I/O, so the fuzzer can drive it. */
int th__spec_parse(json_t *obj, const char *prefix, th_task_spec *spec, char ***owned,
                   size_t *nowned, th_error *err);
/* Refuses the first key of `obj` not in `allowed` (NULL-terminated). */
int th__json_known_fields(json_t *obj, const char *const *allowed, const char *prefix,
                          th_error *err);
void th__json_owned_free(char **owned, size_t n);
json_t *th__json_event(const th__ring_ev *e);

/* ---- connections (conn.c) ---- */

/* Counts the request's connection if it is new. -1 when that would pass
 * max_connections (the caller answers 503 and closes it). */
int th__conn_track(th__server *s, struct evhttp_request *r);
/* Calls fn(conn, arg) when the request's connection closes (NULL fn: no
 * longer). One user per connection at a time. */
void th__conn_on_close(th__server *s, struct evhttp_request *r, th__close_fn fn, void *arg);
/* Forgets every tracked connection (after evhttp_free). */
void th__conn_free_all(th__server *s);

/* ---- routes (routes.c, stream.c) ---- */

/* The single entry of every request. */
void th__http_dispatch(struct evhttp_request *r, void *arg);
void th__route_events(th__req *q);
void th__route_claim(th__req *q, const char *worker_id);
void th__route_worker_register(th__req *q);
void th__route_workers(th__req *q);
/* Engine subscriber: keeps the event and wakes the loop. Any thread. */
void th__stream_on_event(const th_event *ev, void *ud);
/* Loop: sends new events to streams, retries parked claims. */
void th__stream_wake(evutil_socket_t fd, short what, void *arg);
void th__stream_keepalive(evutil_socket_t fd, short what, void *arg);
/* Answers every parked claim (empty) and ends every stream; for draining. */
void th__stream_close_all(th__server *s);
void th__stream_free(th__server *s);

#endif
