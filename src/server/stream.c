/*
 * Live parts of the API: the event ring (filled by engine threads, read by
 * the loop), Server-Sent Event streams with Last-Event-ID resume, long-poll
 * claims for external workers, and the external-worker registry.
 *
 * Threads: th__stream_on_event runs on engine threads; it only appends to
 * the ring under ring_mu and wakes the loop with event_active. Everything
 * else here runs on the loop thread.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "engine/workers.h"
#include "server/http.h"
#include "server/log.h"

#define QUEUE_CHARS "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-"

struct th__sse {
    th__sse *next;
    th__server *s;
    struct evhttp_request *r;
    char task[TH_ID_SIZE];
    char queue[TH_QUEUE_NAME_MAX + 1];
    uint64_t next_seq; /* the first event it has not been sent */
};

struct th__parked {
    th__parked *next;
    th__server *s;
    struct evhttp_request *r;
    struct event *timer;
    char worker[48];
    char queues[16][TH_QUEUE_NAME_MAX + 1];
    const char *qptr[16];
    size_t nqueues, max_tasks;
    int64_t lease_ms;
};

struct th__ext_worker {
    th__ext_worker *next;
    char id[48];
    char name[128];
    json_t *queues;
    int64_t registered_at, last_seen_at;
};

/* ---- the ring ------------------------------------------------------------- */

void th__stream_on_event(const th_event *ev, void *ud)
{
    th__server *s = ud;
    pthread_mutex_lock(&s->ring_mu);
    size_t at;
    if (s->ring_len == s->ring_cap) {
        at = s->ring_head; /* overwrite the oldest */
        th__free(s->ring[at].message);
        s->ring_head = (s->ring_head + 1) % s->ring_cap;
    } else {
        at = (s->ring_head + s->ring_len++) % s->ring_cap;
    }
    th__ring_ev *e = &s->ring[at];
    e->seq = ev->seq;
    e->type = ev->type;
    e->time_ms = ev->time_ms;
    snprintf(e->task, sizeof e->task, "%s", ev->task_id);
    snprintf(e->queue, sizeof e->queue, "%s", ev->queue ? ev->queue : "");
    e->state = ev->state;
    e->attempt = ev->attempt;
    e->progress = ev->progress;
    e->message = ev->message ? th__strdup(ev->message) : NULL;
    pthread_mutex_unlock(&s->ring_mu);
    if (ev->type == TH_EV_READY)
        atomic_store(&s->ready_seen, 1);
    event_active(s->wake, EV_READ, 0);
}

static int sse_wants(const th__sse *c, const th__ring_ev *e)
{
    return (!c->task[0] || strcmp(c->task, e->task) == 0) &&
           (!c->queue[0] || strcmp(c->queue, e->queue) == 0);
}

/* Sends a client every held event from its next_seq on (ring_mu held). */
static void sse_flush_locked(th__server *s, th__sse *c)
{
    if (!s->ring_len)
        return;
    uint64_t first = s->ring[s->ring_head].seq;
    uint64_t last = s->ring[(s->ring_head + s->ring_len - 1) % s->ring_cap].seq;
    if (c->next_seq == last + 1)
        return;
    struct evbuffer *b = evbuffer_new();
    if (!b)
        return;
    if (c->next_seq > last + 1) {
        /* The client resumes from a number this process never reached:
         * the daemon restarted and numbering began again. Say so and send
         * everything still held. */
        evbuffer_add_printf(b,
                            "event: gap\ndata: {\"first_available\":%llu,\"restarted\":true}\n\n",
                            (unsigned long long)first);
        c->next_seq = first;
    } else if (c->next_seq < first) {
        /* Events were dropped from the ring before this client saw them. */
        evbuffer_add_printf(b, "event: gap\ndata: {\"first_available\":%llu}\n\n",
                            (unsigned long long)first);
        c->next_seq = first;
    }
    for (size_t i = (size_t)(c->next_seq - first); i < s->ring_len; i++) {
        const th__ring_ev *e = &s->ring[(s->ring_head + i) % s->ring_cap];
        if (!sse_wants(c, e))
            continue;
        json_t *j = th__json_event(e);
        char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        if (text) {
            evbuffer_add_printf(b, "id: %llu\nevent: %s\ndata: %s\n\n", (unsigned long long)e->seq,
                                th_event_type_name(e->type), text);
            free(text);
        }
    }
    c->next_seq = last + 1;
    if (evbuffer_get_length(b))
        evhttp_send_reply_chunk(c->r, b);
    evbuffer_free(b);
}

static void sse_unlink(th__server *s, th__sse *c)
{
    for (th__sse **at = &s->sse; *at; at = &(*at)->next)
        if (*at == c) {
            *at = c->next;
            break;
        }
}

/* When a client leaves before the reply is finished, libevent 2.1 detaches
 * the request from its connection and leaves freeing it to us. */
static void free_if_detached(struct evhttp_request *r)
{
    if (!evhttp_request_get_connection(r))
        evhttp_request_free(r);
}

static void sse_closed(struct evhttp_connection *conn, void *arg)
{
    th__sse *c = arg;
    sse_unlink(c->s, c);
    free_if_detached(c->r);
    th__free(c);
}

void th__route_events(th__req *q)
{
    th__server *s = q->s;
    if (!th__req_allow(q, TH_SCOPE_READ))
        return;
    const char *task = th__req_param(q, "task"), *queue = th__req_param(q, "queue");
    const char *last = evhttp_find_header(evhttp_request_get_input_headers(q->r), "Last-Event-ID");
    if (!last)
        last = th__req_param(q, "last_event_id");
    if ((task && strlen(task) != TH_ID_LEN) ||
        (queue && (!*queue || strlen(queue) > TH_QUEUE_NAME_MAX))) {
        th__reply_error(q, 400, "EINVAL", task && strlen(task) != TH_ID_LEN ? "task" : "queue",
                        "task must be a task id and queue a queue name");
        return;
    }
    uint64_t from = 0;
    if (last) {
        char *end;
        unsigned long long v = strtoull(last, &end, 10);
        if (*end || end == last) {
            th__reply_error(q, 400, "EINVAL", "Last-Event-ID", "Last-Event-ID must be a number");
            return;
        }
        from = v + 1;
    }
    th__sse *c = th__calloc(1, sizeof *c);
    if (!c) {
        th__reply_error(q, 500, "ENOMEM", "", "out of memory");
        return;
    }
    c->s = s;
    c->r = q->r;
    snprintf(c->task, sizeof c->task, "%s", task ? task : "");
    snprintf(c->queue, sizeof c->queue, "%s", queue ? queue : "");
    struct evkeyvalq *h = evhttp_request_get_output_headers(q->r);
    evhttp_add_header(h, "Content-Type", "text/event-stream");
    evhttp_add_header(h, "Cache-Control", "no-cache");
    evhttp_send_reply_start(q->r, 200, "OK");
    th__conn_on_close(s, q->r, sse_closed, c);
    c->next = s->sse;
    s->sse = c;
    pthread_mutex_lock(&s->ring_mu);
    if (!last) /* a new subscriber starts at the present */
        c->next_seq =
            s->ring_len ? s->ring[(s->ring_head + s->ring_len - 1) % s->ring_cap].seq + 1 : 1;
    else
        c->next_seq = from;
    sse_flush_locked(s, c);
    pthread_mutex_unlock(&s->ring_mu);
    struct evbuffer *b = evbuffer_new();
    if (b) {
        evbuffer_add_printf(b, ": connected\n\n");
        evhttp_send_reply_chunk(q->r, b);
        evbuffer_free(b);
    }
}

void th__stream_keepalive(evutil_socket_t fd, short what, void *arg)
{
    th__server *s = arg;
    for (th__sse *c = s->sse; c; c = c->next) {
        struct evbuffer *b = evbuffer_new();
        if (!b)
            continue;
        evbuffer_add_printf(b, ": keepalive\n\n");
        evhttp_send_reply_chunk(c->r, b);
        evbuffer_free(b);
    }
}

/* ---- external workers ------------------------------------------------------- */

/* The worker `id`: registered here, or — with a store that shares its
 * worker registry (PostgreSQL) — on another daemon, then remembered here. */
static th__ext_worker *find_worker(th__server *s, const char *id)
{
    for (th__ext_worker *w = s->workers; w; w = w->next)
        if (strcmp(w->id, id) == 0)
            return w;
    char *info = NULL;
    if (strlen(id) >= sizeof s->workers->id || !th__engine_workers_shared(s->engine) ||
        th__engine_worker_get(s->engine, id, &info) != 0)
        return NULL;
    json_t *j = json_loads(info, 0, NULL);
    th__free(info);
    json_t *queues = json_object_get(j, "queues");
    const char *name = json_string_value(json_object_get(j, "name"));
    th__ext_worker *w = j && json_is_array(queues) ? th__calloc(1, sizeof *w) : NULL;
    if (w) {
        snprintf(w->id, sizeof w->id, "%s", id);
        snprintf(w->name, sizeof w->name, "%s", name ? name : id);
        w->queues = json_incref(queues);
        w->registered_at = json_integer_value(json_object_get(j, "registered_at"));
        w->last_seen_at = th__wall_ms();
        w->next = s->workers;
        s->workers = w;
    }
    json_decref(j);
    return w;
}

void th__route_worker_register(th__req *q)
{
    th__server *s = q->s;
    if (!th__req_allow(q, TH_SCOPE_WORKER))
        return;
    json_t *body = th__req_body(q, s->cfg.max_body);
    static const char *const f[] = {"name", "queues", NULL};
    if (!body || th__req_known_fields(q, body, f, "")) {
        json_decref(body);
        return;
    }
    json_t *name = json_object_get(body, "name"), *queues = json_object_get(body, "queues");
    if (name && (!json_is_string(name) || strlen(json_string_value(name)) >= 128)) {
        th__reply_error(q, 400, "EINVAL", "name", "name must be a string under 128 bytes");
        goto out;
    }
    if (queues) {
        size_t i;
        json_t *v;
        if (!json_is_array(queues) || json_array_size(queues) > 16) {
            th__reply_error(q, 400, "EINVAL", "queues", "queues must be an array of 0..16 names");
            goto out;
        }
        json_array_foreach(queues, i, v)
        {
            if (!json_is_string(v) || !json_string_length(v) ||
                json_string_length(v) > TH_QUEUE_NAME_MAX ||
                strspn(json_string_value(v), QUEUE_CHARS) != json_string_length(v)) {
                char field[32];
                snprintf(field, sizeof field, "queues[%zu]", i);
                th__reply_error(q, 400, "EINVAL", field, "%s must be a queue name", field);
                goto out;
            }
        }
    }
    th__ext_worker *w = th__calloc(1, sizeof *w);
    if (!w) {
        th__reply_error(q, 500, "ENOMEM", "", "out of memory");
        goto out;
    }
    unsigned char rnd[8];
    randombytes_buf(rnd, sizeof rnd);
    char hex[17];
    sodium_bin2hex(hex, sizeof hex, rnd, sizeof rnd);
    snprintf(w->id, sizeof w->id, "w-%s", hex);
    snprintf(w->name, sizeof w->name, "%s", name ? json_string_value(name) : w->id);
    w->queues = queues ? json_incref(queues) : json_array();
    w->registered_at = w->last_seen_at = th__wall_ms();
    if (th__engine_workers_shared(s->engine)) {
        /* Every daemon on the shared store will know this worker (a
         * registration is rare: one commit on the loop is acceptable). */
        json_t *info = json_pack("{s:s,s:O,s:I}", "name", w->name, "queues", w->queues,
                                 "registered_at", (json_int_t)w->registered_at);
        char *text = info ? json_dumps(info, JSON_COMPACT) : NULL;
        json_decref(info);
        int rc = text ? th__engine_worker_put(s->engine, w->id, text) : TH_ENOMEM;
        free(text);
        if (rc != 0) {
            json_decref(w->queues);
            th__free(w);
            th__reply_error(q, 503, "EIO", "", "cannot record the worker in the shared store");
            goto out;
        }
    }
    w->next = s->workers;
    s->workers = w;
    th__log(TH_LOG_INFO, "workers", json_pack("{s:s,s:s}", "worker", w->id, "name", w->name),
            "external worker registered");
    th__reply_json(q, 201, json_pack("{s:s}", "worker_id", w->id));
out:
    json_decref(body);
}

void th__route_workers(th__req *q)
{
    th__server *s = q->s;
    if (!th__req_allow(q, TH_SCOPE_READ))
        return;
    json_t *arr = json_array();
    if (s->pool) {
        th_worker_info info[256];
        int n = th_pool_workers(s->pool, info, 256);
        for (int i = 0; i < n && i < 256; i++)
            json_array_append_new(
                arr,
                json_pack("{s:i,s:s,s:s,s:i,s:s?,s:I,s:I,s:b,s:I,s:I}", "id", info[i].id, "kind",
                          "pool", "state", th_worker_state_name(info[i].state), "pid", info[i].pid,
                          "current_task", info[i].current_task[0] ? info[i].current_task : NULL,
                          "tasks_completed", (json_int_t)info[i].tasks_completed, "tasks_failed",
                          (json_int_t)info[i].tasks_failed, "healthy", info[i].healthy,
                          "started_at", (json_int_t)info[i].started_at, "last_heartbeat_at",
                          (json_int_t)info[i].last_heartbeat_at));
    }
    char *shared = NULL;
    json_t *all =
        th__engine_workers_shared(s->engine) && th__engine_worker_list(s->engine, &shared) == 0
            ? json_loads(shared, 0, NULL)
            : NULL;
    th__free(shared);
    size_t i;
    json_t *row;
    /* With a shared registry, every daemon's external workers; last_seen_at
     * is this daemon's when the worker talks to it, else its registration. */
    json_array_foreach(all, i, row)
    {
        const char *id = json_string_value(json_object_get(row, "id"));
        json_t *info = json_object_get(row, "info");
        th__ext_worker *mine = NULL;
        for (th__ext_worker *w = s->workers; w && id; w = w->next)
            if (strcmp(w->id, id) == 0)
                mine = w;
        json_array_append_new(
            arr, json_pack("{s:s?,s:s,s:O?,s:O?,s:O?,s:I}", "id", id, "kind", "external", "name",
                           json_object_get(info, "name"), "queues", json_object_get(info, "queues"),
                           "registered_at", json_object_get(row, "registered_at"), "last_seen_at",
                           (json_int_t)(mine ? mine->last_seen_at
                                             : json_integer_value(
                                                   json_object_get(row, "last_seen_at")))));
    }
    for (th__ext_worker *w = all ? NULL : s->workers; w; w = w->next)
        json_array_append_new(arr, json_pack("{s:s,s:s,s:s,s:O,s:I,s:I}", "id", w->id, "kind",
                                             "external", "name", w->name, "queues", w->queues,
                                             "registered_at", (json_int_t)w->registered_at,
                                             "last_seen_at", (json_int_t)w->last_seen_at));
    json_decref(all);
    th__reply_json(q, 200, json_pack("{s:o}", "workers", arr));
}

/* ---- long-poll claims ----------------------------------------------------------- */

/* 1 when the client of a waiting request has hung up. libevent does not
 * read from a connection while its request is being answered, so it would
 * not notice; a peek at the socket does. */
static int client_gone(struct evhttp_request *r)
{
    struct evhttp_connection *c = evhttp_request_get_connection(r);
    struct bufferevent *bev = c ? evhttp_connection_get_bufferevent(c) : NULL;
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    if (fd < 0)
        return 1;
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* Claims without waiting; replies and returns 1 when it got tasks (or an
 * error), 0 when there was nothing to hand out. */
static int try_claim(th__server *s, struct evhttp_request *r, th__parked *p)
{
    th_task *tasks[100];
    th_claim_options co = {.queues = p->nqueues ? p->qptr : NULL,
                           .nqueues = p->nqueues,
                           .max_tasks = p->max_tasks,
                           .lease_ms = p->lease_ms,
                           .wait_ms = 0,
                           .worker = p->worker};
    th_error err;
    int n = th_engine_claim(s->engine, &co, tasks, &err);
    if (n == 0)
        return 0;
    th__req q = {.s = s, .r = r};
    snprintf(q.path, sizeof q.path, "/v1/workers/%s/claim", p->worker);
    if (n < 0) {
        th__reply_engine_error(&q, n, &err);
        return 1;
    }
    json_t *arr = json_array();
    for (int i = 0; i < n; i++) {
        th_task *t = tasks[i];
        json_t *deps = json_array();
        for (size_t k = 0; k < t->ndeps; k++)
            json_array_append_new(deps, json_string(t->deps[k]));
        json_array_append_new(arr,
                              json_pack("{s:s,s:s,s:o,s:o,s:i,s:I,s:I,s:I,s:o}", "id", t->id,
                                        "queue", t->queue, "payload", th__json_raw(t->payload),
                                        "metadata", th__json_raw(t->metadata), "attempt",
                                        t->attempt, "lease", (json_int_t)t->lease,
                                        "lease_expires_at", (json_int_t)t->lease_expires_at,
                                        "timeout_ms", (json_int_t)t->timeout_ms, "deps", deps));
        th_task_free(t);
    }
    th__reply_json(&q, 200, json_pack("{s:o}", "tasks", arr));
    return 1;
}

static void parked_unlink(th__server *s, th__parked *p)
{
    for (th__parked **at = &s->parked; *at; at = &(*at)->next)
        if (*at == p) {
            *at = p->next;
            break;
        }
}

static void parked_free(th__parked *p)
{
    if (p->timer)
        event_free(p->timer);
    th__free(p);
}

/* Ends a parked claim: forget it and stop watching its connection. */
static void parked_done(th__parked *p)
{
    parked_unlink(p->s, p);
    th__conn_on_close(p->s, p->r, NULL, NULL);
    parked_free(p);
}

static void parked_timeout(evutil_socket_t fd, short what, void *arg)
{
    th__parked *p = arg;
    struct evhttp_request *r = p->r;
    th__server *s = p->s;
    if (client_gone(r)) {
        evhttp_connection_free(evhttp_request_get_connection(r)); /* frees p */
        return;
    }
    if (!try_claim(s, r, p)) {
        th__req q = {.s = s, .r = r};
        th__reply_json(&q, 200, json_pack("{s:[]}", "tasks"));
    }
    parked_done(p);
}

static void parked_closed(struct evhttp_connection *conn, void *arg)
{
    th__parked *p = arg;
    parked_unlink(p->s, p);
    free_if_detached(p->r);
    parked_free(p);
}

void th__route_claim(th__req *q, const char *worker_id)
{
    th__server *s = q->s;
    if (!th__req_allow(q, TH_SCOPE_WORKER))
        return;
    th__ext_worker *w = find_worker(s, worker_id);
    if (!w) {
        th__reply_error(q, 404, "ENOTFOUND", "worker_id",
                        "unknown worker %.40s (register again: workers are forgotten when the "
                        "daemon restarts)",
                        worker_id);
        return;
    }
    w->last_seen_at = th__wall_ms();
    json_t *body = th__req_body(q, s->cfg.max_body);
    static const char *const f[] = {"queues", "max_tasks", "lease_ms", "wait_ms", NULL};
    if (!body || th__req_known_fields(q, body, f, "")) {
        json_decref(body);
        return;
    }
    th__parked *p = th__calloc(1, sizeof *p);
    if (!p) {
        th__reply_error(q, 500, "ENOMEM", "", "out of memory");
        json_decref(body);
        return;
    }
    p->s = s;
    p->r = q->r;
    snprintf(p->worker, sizeof p->worker, "%s", w->id);
    json_t *queues = json_object_get(body, "queues");
    if (!queues)
        queues = w->queues;
    json_t *mt = json_object_get(body, "max_tasks"), *lm = json_object_get(body, "lease_ms"),
           *wm = json_object_get(body, "wait_ms");
    const char *bad = NULL;
    if (!json_is_array(queues) || json_array_size(queues) > 16)
        bad = "queues";
    else if (mt &&
             (!json_is_integer(mt) || json_integer_value(mt) < 1 || json_integer_value(mt) > 100))
        bad = "max_tasks";
    else if (lm && (!json_is_integer(lm) || json_integer_value(lm) < 0))
        bad = "lease_ms";
    else if (wm && (!json_is_integer(wm) || json_integer_value(wm) < 0 ||
                    json_integer_value(wm) > 300000))
        bad = "wait_ms";
    for (size_t i = 0; !bad && i < json_array_size(queues); i++) {
        json_t *v = json_array_get(queues, i);
        if (!json_is_string(v) || json_string_length(v) == 0 ||
            json_string_length(v) > TH_QUEUE_NAME_MAX)
            bad = "queues";
        else {
            snprintf(p->queues[i], sizeof p->queues[i], "%s", json_string_value(v));
            p->qptr[i] = p->queues[i];
            p->nqueues++;
        }
    }
    if (bad) {
        th__reply_error(q, 400, "EINVAL", bad,
                        "%s is invalid (queues: up to 16 names; max_tasks 1..100; lease_ms >= 0; "
                        "wait_ms 0..300000)",
                        bad);
        json_decref(body);
        th__free(p);
        return;
    }
    p->max_tasks = mt ? (size_t)json_integer_value(mt) : 1;
    p->lease_ms = lm ? json_integer_value(lm) : 0;
    int64_t wait = wm ? json_integer_value(wm) : 30000;
    json_decref(body);
    if (try_claim(s, q->r, p)) { /* work was ready: answered */
        th__free(p);
        return;
    }
    if (wait == 0 || s->draining) {
        th__free(p);
        th__reply_json(q, 200, json_pack("{s:[]}", "tasks"));
        return;
    }
    p->timer = evtimer_new(s->base, parked_timeout, p);
    struct timeval tv = {.tv_sec = (time_t)(wait / 1000),
                         .tv_usec = (suseconds_t)(wait % 1000) * 1000};
    if (!p->timer || evtimer_add(p->timer, &tv)) {
        parked_free(p);
        th__reply_error(q, 500, "ENOMEM", "", "out of memory");
        return;
    }
    th__conn_on_close(s, q->r, parked_closed, p);
    p->next = s->parked;
    s->parked = p;
}

/* ---- the loop's wake-up ---------------------------------------------------------- */

void th__stream_wake(evutil_socket_t fd, short what, void *arg)
{
    th__server *s = arg;
    pthread_mutex_lock(&s->ring_mu);
    for (th__sse *c = s->sse; c; c = c->next)
        sse_flush_locked(s, c);
    pthread_mutex_unlock(&s->ring_mu);
    if (atomic_exchange(&s->ready_seen, 0)) {
        /* Oldest parked claims first: they have waited longest. */
        th__parked *list[256];
        int n = 0;
        for (th__parked *p = s->parked; p && n < 256; p = p->next)
            list[n++] = p;
        for (int i = n - 1; i >= 0; i--) {
            if (client_gone(list[i]->r)) {
                /* Closing the connection runs parked_closed, which frees
                 * the claim: it must not take a task nobody will work on. */
                evhttp_connection_free(evhttp_request_get_connection(list[i]->r));
                continue;
            }
            if (try_claim(s, list[i]->r, list[i]))
                parked_done(list[i]);
        }
    }
}

void th__stream_close_all(th__server *s)
{
    while (s->parked) {
        th__parked *p = s->parked;
        th__req q = {.s = s, .r = p->r};
        th__reply_json(&q, 200, json_pack("{s:[]}", "tasks"));
        parked_done(p);
    }
    while (s->sse) {
        th__sse *c = s->sse;
        s->sse = c->next;
        th__conn_on_close(s, c->r, NULL, NULL);
        evhttp_send_reply_end(c->r);
        th__free(c);
    }
}

void th__stream_free(th__server *s)
{
    while (s->workers) {
        th__ext_worker *w = s->workers;
        s->workers = w->next;
        json_decref(w->queues);
        th__free(w);
    }
    for (size_t i = 0; i < s->ring_len; i++)
        th__free(s->ring[(s->ring_head + i) % s->ring_cap].message);
    th__free(s->ring);
}
