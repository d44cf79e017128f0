/*
 * The HTTP API's routes (docs/API.md), except event streams and long-poll
 * claims (stream.c). Each handler validates, calls the engine and replies.
 */
#include <event2/buffer.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "server/agents.h"
#include "server/http.h"
#include "server/llm.h"
#include "server/services.h"

#define method_not_allowed th__reply_method

static int id_ok(th__req *q, const char *id)
{
    if (strlen(id) == TH_ID_LEN)
        return 1;
    th__reply_error(q, 400, "EINVAL", "id", "'%.40s' is not a task id", id);
    return 0;
}

/* ---- tasks ---------------------------------------------------------------- */

static void submit(th__req *q)
{
    th__server *s = q->s;
    if (!th__req_allow(q, TH_SCOPE_SUBMIT))
        return;
    json_t *body = th__req_body(q, s->cfg.max_batch_body);
    if (!body)
        return;
    json_t *tasks = json_object_get(body, "tasks");
    char **owned = NULL;
    size_t nowned = 0;
    th_task_spec *specs = NULL;
    char(*ids)[TH_ID_SIZE] = NULL;
    if (!tasks) {
        size_t len = evbuffer_get_length(evhttp_request_get_input_buffer(q->r));
        th_task_spec spec;
        if (len > s->cfg.max_body) {
            th__reply_error(q, 413, "ETOOBIG", "", "request body is %zu bytes; the limit is %zu",
                            len, s->cfg.max_body);
        } else {
            char id[TH_ID_SIZE];
            th_error err;
            int rc = th__spec_parse(body, "", &spec, &owned, &nowned, &err);
            if (rc == 0)
                rc = th_engine_submit(s->engine, &spec, id, &err);
            if (rc < 0)
                th__reply_engine_error(q, rc, &err);
            else
                th__reply_json(q, rc ? 200 : 201,
                               json_pack("{s:s,s:b}", "id", id, "deduplicated", rc == 1));
        }
        goto out;
    }
    static const char *const top[] = {"tasks", NULL};
    if (th__req_known_fields(q, body, top, ""))
        goto out;
    size_t n = json_is_array(tasks) ? json_array_size(tasks) : 0;
    if (!json_is_array(tasks) || n == 0 || n > (size_t)s->cfg.max_batch) {
        th__reply_error(q, 400, "EINVAL", "tasks", "tasks must be an array of 1..%d tasks",
                        s->cfg.max_batch);
        goto out;
    }
    specs = th__calloc(n, sizeof *specs);
    ids = th__calloc(n, sizeof *ids);
    if (!specs || !ids) {
        th__reply_error(q, 500, "ENOMEM", "", "out of memory");
        goto out;
    }
    th_error err;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        char prefix[32];
        snprintf(prefix, sizeof prefix, "tasks[%zu].", i);
        rc = th__spec_parse(json_array_get(tasks, i), prefix, &specs[i], &owned, &nowned, &err);
    }
    if (rc == 0)
        rc = th_engine_submit_batch(s->engine, specs, n, ids, &err);
    if (rc < 0) {
        th__reply_engine_error(q, rc, &err);
        goto out;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_string(ids[i]));
    th__reply_json(q, 201, json_pack("{s:o}", "ids", arr));
out:
    th__free(specs);
    th__free(ids);
    th__json_owned_free(owned, nowned);
    json_decref(body);
}

static void list(th__req *q)
{
    if (!th__req_allow(q, TH_SCOPE_READ))
        return;
    th_list_filter f = {.state = -1, .limit = 100};
    f.queue = th__req_param(q, "queue");
    f.after_id = th__req_param(q, "after");
    const char *st = th__req_param(q, "state"), *lim = th__req_param(q, "limit");
    if (st) {
        th_task_state v;
        if (th_task_state_parse(st, &v)) {
            th__reply_error(q, 400, "EINVAL", "state", "unknown state '%.40s'", st);
            return;
        }
        f.state = (int)v;
    }
    if (lim) {
        char *end;
        long v = strtol(lim, &end, 10);
        if (*end || end == lim || v < 1 || v > 1000) {
            th__reply_error(q, 400, "EINVAL", "limit", "limit must be 1..1000");
            return;
        }
        f.limit = (size_t)v;
    }
    th_task **tasks;
    size_t n;
    th_error err;
    int rc = th_engine_list(q->s->engine, &f, &tasks, &n, &err);
    if (rc) {
        th__reply_engine_error(q, rc, &err);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, th__json_task(tasks[i]));
    json_t *next = n == f.limit ? json_string(tasks[n - 1]->id) : json_null();
    th_task_array_free(tasks, n);
    th__reply_json(q, 200, json_pack("{s:o,s:o}", "tasks", arr, "next", next));
}

static void get_task(th__req *q, const char *id, const char *what)
{
    if (!th__req_allow(q, TH_SCOPE_READ) || !id_ok(q, id))
        return;
    th_task *t;
    th_error err;
    int rc = th_engine_get(q->s->engine, id, &t, &err);
    if (rc) {
        th__reply_engine_error(q, rc, &err);
        return;
    }
    if (!what) {
        th__reply_json(q, 200, th__json_task(t));
    } else if (t->state != TH_TASK_COMPLETED) {
        th__reply_error(q, 409, "ESTATE", "state", "task %s is %s, not completed", id,
                        th_task_state_name(t->state));
    } else {
        /* A result that states a confidence also gets it decayed by the
         * result's age ([llm] confidence_half_life). */
        char *decayed = NULL;
        int64_t half = q->s->cfg.llm.half_life_ms;
        if (half > 0 && t->result)
            th_agent_result_decay(t->result, th__wall_ms() - t->finished_at, half, &decayed);
        th__reply_json(q, 200,
                       json_pack("{s:s,s:o}", "state", "completed", "result",
                                 th__json_raw(decayed ? decayed : t->result)));
        th_agent_free(decayed);
    }
    th_task_free(t);
}

static void logs(th__req *q, const char *id)
{
    if (!th__req_allow(q, TH_SCOPE_READ) || !id_ok(q, id))
        return;
    const char *after = th__req_param(q, "after"), *lim = th__req_param(q, "limit");
    long a = 0, l = 0;
    char *end;
    if (after && (a = strtol(after, &end, 10), *end || end == after || a < 0)) {
        th__reply_error(q, 400, "EINVAL", "after", "after must be a log sequence number");
        return;
    }
    if (lim && (l = strtol(lim, &end, 10), *end || end == lim || l < 1 || l > 100000)) {
        th__reply_error(q, 400, "EINVAL", "limit", "limit must be 1..100000");
        return;
    }
    th_log_entry *v;
    size_t n;
    th_error err;
    int rc = th_engine_logs(q->s->engine, id, a, (size_t)l, &v, &n, &err);
    if (rc) {
        th__reply_engine_error(q, rc, &err);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr,
                              json_pack("{s:I,s:I,s:s,s:i,s:s,s:o}", "seq", (json_int_t)v[i].seq,
                                        "time", (json_int_t)v[i].time_ms, "level",
                                        th_log_level_name(v[i].level), "attempt", v[i].attempt,
                                        "message", v[i].message, "data", th__json_raw(v[i].data)));
    th_log_entries_free(v, n);
    th__reply_json(q, 200, json_pack("{s:o}", "logs", arr));
}

/* The task and, transitively, what it depends on (at most 1000 nodes). */
static void graph(th__req *q, const char *id)
{
    if (!th__req_allow(q, TH_SCOPE_READ) || !id_ok(q, id))
        return;
    json_t *nodes = json_array(), *edges = json_array(), *seen = json_object();
    char(*todo)[TH_ID_SIZE] = th__malloc(1000 * TH_ID_SIZE);
    size_t head = 0, tail = 0;
    int rc = 0;
    th_error err;
    if (!todo) {
        rc = TH_ENOMEM;
        goto out;
    }
    memcpy(todo[tail++], id, TH_ID_SIZE);
    json_object_set_new(seen, id, json_true());
    while (head < tail) {
        th_task *t;
        const char *cur = todo[head++];
        if ((rc = th_engine_get(q->s->engine, cur, &t, &err))) {
            if (head > 1 && rc == TH_ENOTFOUND) { /* a pruned dependency */
                json_array_append_new(nodes,
                                      json_pack("{s:s,s:n,s:s,s:s}", "id", cur, "queue", "state",
                                                "pruned", "error", "no longer stored"));
                rc = 0;
                continue;
            }
            goto out;
        }
        json_array_append_new(nodes,
                              json_pack("{s:s,s:s,s:s,s:s?}", "id", t->id, "queue", t->queue,
                                        "state", th_task_state_name(t->state), "error", t->error));
        for (size_t i = 0; i < t->ndeps; i++) {
            json_array_append_new(edges, json_pack("{s:s,s:s}", "from", t->deps[i], "to", t->id));
            if (!json_object_get(seen, t->deps[i]) && tail < 1000) {
                json_object_set_new(seen, t->deps[i], json_true());
                memcpy(todo[tail++], t->deps[i], TH_ID_SIZE);
            }
        }
        th_task_free(t);
    }
out:
    th__free(todo);
    json_decref(seen);
    if (rc) {
        json_decref(nodes);
        json_decref(edges);
        th__reply_engine_error(q, rc, &err);
        return;
    }
    th__reply_json(q, 200, json_pack("{s:o,s:o}", "nodes", nodes, "edges", edges));
}

static void cancel(th__req *q, const char *id)
{
    if (!th__req_allow(q, TH_SCOPE_SUBMIT) || !id_ok(q, id))
        return;
    json_t *body = th__req_body(q, q->s->cfg.max_body);
    static const char *const f[] = {"reason", NULL};
    if (!body || th__req_known_fields(q, body, f, "")) {
        json_decref(body);
        return;
    }
    json_t *reason = json_object_get(body, "reason");
    if (reason && !json_is_string(reason)) {
        th__reply_error(q, 400, "EINVAL", "reason", "reason must be a string");
        json_decref(body);
        return;
    }
    th_error err;
    int rc = th_engine_cancel(q->s->engine, id, json_string_value(reason), &err);
    json_decref(body);
    if (rc < 0)
        th__reply_engine_error(q, rc, &err);
    else if (rc == 1)
        th__reply_json(q, 200, json_pack("{s:s,s:b}", "state", "running", "cancel_requested", 1));
    else
        th__reply_json(q, 200, json_pack("{s:s}", "state", "cancelled"));
}

static void retry(th__req *q, const char *id)
{
    if (!th__req_allow(q, TH_SCOPE_SUBMIT) || !id_ok(q, id))
        return;
    th_error err;
    int rc = th_engine_retry(q->s->engine, id, &err);
    if (rc) {
        th__reply_engine_error(q, rc, &err);
        return;
    }
    get_task(q, id, NULL);
}

/* ---- what external workers call on a task they hold ------------------------- */

static int lease_of(th__req *q, json_t *body, uint64_t *lease)
{
    json_t *l = json_object_get(body, "lease");
    if (!json_is_integer(l) || json_integer_value(l) <= 0) {
        th__reply_error(q, 400, "EINVAL", "lease", "lease is required (the claim's lease token)");
        return -1;
    }
    *lease = (uint64_t)json_integer_value(l);
    return 0;
}

static void worker_call(th__req *q, const char *id, const char *what)
{
    if (!th__req_allow(q, TH_SCOPE_WORKER) || !id_ok(q, id))
        return;
    th__server *s = q->s;
    json_t *body =
        th__req_body(q, strcmp(what, "complete") == 0 ? s->cfg.max_batch_body : s->cfg.max_body);
    if (!body)
        return;
    uint64_t lease;
    th_error err;
    int rc = 0;
    json_t *answer = NULL;
    if (strcmp(what, "heartbeat") == 0) {
        static const char *const f[] = {"lease", "extend_ms", NULL};
        int64_t ext = 0;
        json_t *e = json_object_get(body, "extend_ms");
        if (th__req_known_fields(q, body, f, "") || lease_of(q, body, &lease))
            goto done;
        if (e && (!json_is_integer(e) || json_integer_value(e) < 0)) {
            th__reply_error(q, 400, "EINVAL", "extend_ms", "extend_ms must be >= 0");
            goto done;
        }
        ext = e ? json_integer_value(e) : 0;
        int cancel = 0;
        rc = th_engine_heartbeat(s->engine, id, lease, ext, &cancel, &err);
        answer = json_pack("{s:b}", "cancel_requested", cancel);
    } else if (strcmp(what, "progress") == 0) {
        static const char *const f[] = {"lease", "percent", "step", "total_steps", "message", NULL};
        if (th__req_known_fields(q, body, f, "") || lease_of(q, body, &lease))
            goto done;
        json_t *m = json_object_get(body, "message");
        json_t *pc = json_object_get(body, "percent"), *st = json_object_get(body, "step"),
               *tt = json_object_get(body, "total_steps");
        if ((pc && !json_is_integer(pc)) || (st && !json_is_integer(st)) ||
            (tt && !json_is_integer(tt)) || (m && !json_is_string(m) && !json_is_null(m))) {
            th__reply_error(q, 400, "EINVAL",
                            pc && !json_is_integer(pc)   ? "percent"
                            : st && !json_is_integer(st) ? "step"
                            : tt && !json_is_integer(tt) ? "total_steps"
                                                         : "message",
                            "percent, step and total_steps are integers; message a string");
            goto done;
        }
        rc = th_engine_progress(s->engine, id, lease, (int)json_integer_value(pc),
                                (int)json_integer_value(st), (int)json_integer_value(tt),
                                json_string_value(m), &err);
        answer = json_pack("{s:b}", "ok", 1);
    } else if (strcmp(what, "log") == 0) {
        static const char *const f[] = {"lease", "level", "message", "data", NULL};
        if (th__req_known_fields(q, body, f, "") || lease_of(q, body, &lease))
            goto done;
        th_log_level level = TH_LOG_INFO;
        json_t *lv = json_object_get(body, "level"), *m = json_object_get(body, "message");
        if (lv && (!json_is_string(lv) || th_log_level_parse(json_string_value(lv), &level))) {
            th__reply_error(q, 400, "EINVAL", "level", "level must be debug, info, warn or error");
            goto done;
        }
        if (!json_is_string(m)) {
            th__reply_error(q, 400, "EINVAL", "message", "message is required (a string)");
            goto done;
        }
        json_t *d = json_object_get(body, "data");
        char *data = d ? json_dumps(d, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
        rc = th_engine_log(s->engine, id, lease, level, json_string_value(m), data, &err);
        free(data);
        answer = json_pack("{s:b}", "ok", 1);
    } else if (strcmp(what, "complete") == 0) {
        static const char *const f[] = {"lease", "result", NULL};
        if (th__req_known_fields(q, body, f, "") || lease_of(q, body, &lease))
            goto done;
        json_t *r = json_object_get(body, "result");
        char *result = r ? json_dumps(r, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
        rc = th_engine_complete(s->engine, id, lease, result, &err);
        free(result);
        answer = json_pack("{s:s}", "state", "completed");
    } else { /* fail */
        static const char *const f[] = {"lease", "error", "permanent", "timeout", NULL};
        if (th__req_known_fields(q, body, f, "") || lease_of(q, body, &lease))
            goto done;
        json_t *e = json_object_get(body, "error"), *p = json_object_get(body, "permanent"),
               *t = json_object_get(body, "timeout");
        if ((e && !json_is_string(e)) || (p && !json_is_boolean(p)) || (t && !json_is_boolean(t))) {
            th__reply_error(q, 400, "EINVAL",
                            e && !json_is_string(e)    ? "error"
                            : p && !json_is_boolean(p) ? "permanent"
                                                       : "timeout",
                            "error is a string; permanent and timeout are booleans");
            goto done;
        }
        int flags =
            (json_is_true(p) ? TH_FAIL_PERMANENT : 0) | (json_is_true(t) ? TH_FAIL_TIMEOUT : 0);
        rc = th_engine_fail(s->engine, id, lease, json_string_value(e), flags, &err);
        if (rc == 0) {
            th_task *now;
            if (th_engine_get(s->engine, id, &now, NULL) == 0) {
                answer = json_pack("{s:s,s:I}", "state", th_task_state_name(now->state), "run_at",
                                   (json_int_t)now->run_at);
                th_task_free(now);
            }
        }
    }
    if (rc) {
        th__reply_engine_error(q, rc, &err);
    } else {
        th__reply_json(q, 200, answer ? answer : json_object());
        answer = NULL;
    }
done:
    json_decref(answer);
    json_decref(body);
}

/* ---- queues ---------------------------------------------------------------- */

static json_t *counts_json(const int64_t *c)
{
    json_t *o = json_object();
    for (int st = 0; st < TH_TASK_NSTATES; st++)
        json_object_set_new(o, th_task_state_name((th_task_state)st), json_integer(c[st]));
    return o;
}

static void queues(th__req *q)
{
    if (!th__req_allow(q, TH_SCOPE_READ))
        return;
    th_queue_counts *c;
    size_t n;
    int rc = th_engine_counts(q->s->engine, &c, &n);
    if (rc) {
        th__reply_engine_error(q, rc, NULL);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_pack("{s:s,s:b,s:o}", "name", c[i].queue, "paused",
                                             c[i].paused, "counts", counts_json(c[i].counts)));
    th__free(c);
    th__reply_json(q, 200, json_pack("{s:o}", "queues", arr));
}

static void queue_action(th__req *q, const char *name, const char *action)
{
    if (!th__req_allow(q, TH_SCOPE_ADMIN))
        return;
    th_error err;
    int rc;
    if (strcmp(action, "purge") == 0) {
        rc = th_engine_queue_purge(q->s->engine, name, "purged through the API", &err);
        if (rc >= 0)
            th__reply_json(q, 200, json_pack("{s:s,s:i}", "name", name, "purged", rc));
    } else {
        int paused = strcmp(action, "pause") == 0;
        rc = th_engine_queue_pause(q->s->engine, name, paused, &err);
        if (rc == 0)
            th__reply_json(q, 200, json_pack("{s:s,s:b}", "name", name, "paused", paused));
    }
    if (rc < 0)
        th__reply_engine_error(q, rc, &err);
}

/* ---- observing --------------------------------------------------------------- */

static json_t *stats_json(th__server *s)
{
    th_engine_metrics m;
    th_engine_metrics_get(s->engine, &m);
    json_t *engine = json_pack(
        "{s:o,s:I,s:I,s:I,s:I,s:f,s:f,s:f,s:I}", "tasks", counts_json(m.counts), "submittedTotal",
        (json_int_t)m.submitted_total, "completedTotal", (json_int_t)m.completed_total,
        "failedAttemptsTotal", (json_int_t)m.failed_attempts_total, "retriesTotal",
        (json_int_t)m.retries_total, "throughput", m.throughput_per_s, "averageRunTime",
        m.avg_run_ms, "averageWaitTime", m.avg_wait_ms, "uptime", (json_int_t)m.uptime_ms);
    json_t *pool = json_null();
    if (s->pool) {
        th_pool_metrics p;
        th_pool_metrics_get(s->pool, &p);
        pool = json_pack("{s:i,s:i,s:i,s:i,s:I,s:I,s:I,s:I,s:f,s:f,s:f,s:f,s:f}", "totalWorkers",
                         p.total_workers, "activeWorkers", p.active_workers, "idleWorkers",
                         p.idle_workers, "unhealthyWorkers", p.unhealthy_workers, "pendingTasks",
                         (json_int_t)p.pending_tasks, "runningTasks", (json_int_t)p.running_tasks,
                         "completedTasks", (json_int_t)p.completed_tasks, "failedTasks",
                         (json_int_t)p.failed_tasks, "averageTaskDuration", p.avg_task_duration_ms,
                         "averageQueueTime", p.avg_queue_time_ms, "throughput", p.throughput_per_s,
                         "cpuUtilization", p.cpu_utilisation, "memoryUtilization",
                         p.memory_utilisation);
    }
    return json_pack("{s:o,s:o}", "engine", engine, "pool", pool);
}

static void prometheus(th__req *q)
{
    if (!th__req_allow(q, TH_SCOPE_READ))
        return;
    th__server *s = q->s;
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        th__reply_error(q, 500, "ENOMEM", "", "out of memory");
        return;
    }
    th_queue_counts *c;
    size_t n;
    evbuffer_add_printf(b, "# HELP taskhive_tasks Tasks by queue and state.\n"
                           "# TYPE taskhive_tasks gauge\n");
    if (th_engine_counts(s->engine, &c, &n) == 0) {
        for (size_t i = 0; i < n; i++)
            for (int st = 0; st < TH_TASK_NSTATES; st++)
                evbuffer_add_printf(b, "taskhive_tasks{queue=\"%s\",state=\"%s\"} %lld\n",
                                    c[i].queue, th_task_state_name((th_task_state)st),
                                    (long long)c[i].counts[st]);
        th__free(c);
    }
    th_engine_metrics m;
    th_engine_metrics_get(s->engine, &m);
    evbuffer_add_printf(
        b,
        "# TYPE taskhive_tasks_submitted_total counter\n"
        "taskhive_tasks_submitted_total %llu\n"
        "# TYPE taskhive_tasks_completed_total counter\n"
        "taskhive_tasks_completed_total %llu\n"
        "# TYPE taskhive_task_attempts_failed_total counter\n"
        "taskhive_task_attempts_failed_total %llu\n"
        "# TYPE taskhive_task_retries_total counter\n"
        "taskhive_task_retries_total %llu\n"
        "# TYPE taskhive_throughput_tasks_per_second gauge\n"
        "taskhive_throughput_tasks_per_second %.3f\n"
        "# TYPE taskhive_task_run_ms_average gauge\n"
        "taskhive_task_run_ms_average %.3f\n"
        "# TYPE taskhive_task_wait_ms_average gauge\n"
        "taskhive_task_wait_ms_average %.3f\n"
        "# TYPE taskhive_uptime_seconds gauge\n"
        "taskhive_uptime_seconds %.3f\n",
        (unsigned long long)m.submitted_total, (unsigned long long)m.completed_total,
        (unsigned long long)m.failed_attempts_total, (unsigned long long)m.retries_total,
        m.throughput_per_s, m.avg_run_ms, m.avg_wait_ms, (double)m.uptime_ms / 1000.0);
    if (s->pool) {
        th_pool_metrics p;
        th_pool_metrics_get(s->pool, &p);
        evbuffer_add_printf(b,
                            "# TYPE taskhive_workers gauge\n"
                            "taskhive_workers{state=\"active\"} %d\n"
                            "taskhive_workers{state=\"idle\"} %d\n"
                            "taskhive_workers{state=\"unhealthy\"} %d\n"
                            "# TYPE taskhive_pool_cpu_utilization gauge\n"
                            "taskhive_pool_cpu_utilization %.4f\n"
                            "# TYPE taskhive_pool_memory_utilization gauge\n"
                            "taskhive_pool_memory_utilization %.4f\n",
                            p.active_workers, p.idle_workers, p.unhealthy_workers,
                            p.cpu_utilisation, p.memory_utilisation);
    }
    evhttp_add_header(evhttp_request_get_output_headers(q->r), "Content-Type",
                      "text/plain; version=0.0.4");
    evhttp_send_reply(q->r, 200, "OK", b);
    evbuffer_free(b);
}

/* ---- the router --------------------------------------------------------------- */

void th__route_dispatch(th__req *q, enum evhttp_cmd_type method);

void th__route_dispatch(th__req *q, enum evhttp_cmd_type method)
{
    th__server *s = q->s;
    int get = method == EVHTTP_REQ_GET || method == EVHTTP_REQ_HEAD,
        post = method == EVHTTP_REQ_POST;
    if (q->nseg == 1 && SEG(0, "healthz")) {
        if (!get) {
            method_not_allowed(q, "GET");
            return;
        }
        {
            th__reply_json(q, 200, json_pack("{s:s}", "status", "ok"));
            return;
        }
    }
    if (q->nseg == 1 && SEG(0, "readyz")) {
        if (!get) {
            method_not_allowed(q, "GET");
            return;
        }
        if (s->ready && !s->draining) {
            th__reply_json(q, 200, json_pack("{s:s}", "status", "ready"));
            return;
        }
        {
            th__reply_error(q, 503, "ECLOSED", "", s->draining ? "draining" : "starting");
            return;
        }
    }
    if (q->nseg == 1 && SEG(0, "metrics")) {
        if (get)
            prometheus(q);
        else
            method_not_allowed(q, "GET");
        return;
    }
    if (!SEG(0, "v1") || q->nseg < 2) {
        th__reply_error(q, 404, "EROUTE", "", "no route %s", q->path);
        return;
    }

    if (SEG(1, "tasks")) {
        if (q->nseg == 2) {
            if (post) {
                submit(q);
                return;
            }
            {
                if (get)
                    list(q);
                else
                    method_not_allowed(q, "GET, POST");
                return;
            }
        }
        const char *id = q->seg[2];
        if (q->nseg == 3) {
            if (get)
                get_task(q, id, NULL);
            else
                method_not_allowed(q, "GET");
            return;
        }
        if (q->nseg == 4) {
            const char *a = q->seg[3];
            if (strcmp(a, "result") == 0) {
                if (get)
                    get_task(q, id, "result");
                else
                    method_not_allowed(q, "GET");
                return;
            }
            if (strcmp(a, "logs") == 0) {
                if (get)
                    logs(q, id);
                else
                    method_not_allowed(q, "GET");
                return;
            }
            if (strcmp(a, "graph") == 0) {
                if (get)
                    graph(q, id);
                else
                    method_not_allowed(q, "GET");
                return;
            }
            if (strcmp(a, "cancel") == 0) {
                if (post)
                    cancel(q, id);
                else
                    method_not_allowed(q, "POST");
                return;
            }
            if (strcmp(a, "retry") == 0) {
                if (post)
                    retry(q, id);
                else
                    method_not_allowed(q, "POST");
                return;
            }
            if (strcmp(a, "heartbeat") == 0 || strcmp(a, "progress") == 0 ||
                strcmp(a, "log") == 0 || strcmp(a, "complete") == 0 || strcmp(a, "fail") == 0) {
                if (post)
                    worker_call(q, id, a);
                else
                    method_not_allowed(q, "POST");
                return;
            }
        }
    } else if (SEG(1, "queues")) {
        if (q->nseg == 2) {
            if (get)
                queues(q);
            else
                method_not_allowed(q, "GET");
            return;
        }
        if (q->nseg == 4 && (SEG(3, "pause") || SEG(3, "resume") || SEG(3, "purge"))) {
            if (post)
                queue_action(q, q->seg[2], q->seg[3]);
            else
                method_not_allowed(q, "POST");
            return;
        }
    } else if (SEG(1, "workers")) {
        if (q->nseg == 2) {
            if (post) {
                th__route_worker_register(q);
                return;
            }
            {
                if (get)
                    th__route_workers(q);
                else
                    method_not_allowed(q, "GET, POST");
                return;
            }
        }
        if (q->nseg == 4 && SEG(3, "claim")) {
            if (post)
                th__route_claim(q, q->seg[2]);
            else
                method_not_allowed(q, "POST");
            return;
        }
    } else if (SEG(1, "services") && q->nseg <= 4) {
        th__route_services(q, method);
        return;
    } else if (SEG(1, "stats") && q->nseg == 2) {
        if (!get) {
            method_not_allowed(q, "GET");
            return;
        }
        if (th__req_allow(q, TH_SCOPE_READ))
            th__reply_json(q, 200, stats_json(s));
        return;
    } else if (th__route_llm(q, method)) {
        return;
    } else if (SEG(1, "agents") && q->nseg <= 3) {
        th__route_agents(q, method);
        return;
    } else if (SEG(1, "events") && q->nseg == 2) {
        {
            if (get)
                th__route_events(q);
            else
                method_not_allowed(q, "GET");
            return;
        }
    }
    th__reply_error(q, 404, "EROUTE", "", "no route %s", q->path);
}
