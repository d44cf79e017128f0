/*
 * The daemon's supervisor (include/taskhive/supervisor.h): built from the
 * [supervisor], [group.NAME] and [service.NAME] sections, started after the
 * pool, stopped (in reverse dependency order) while draining. Supervisor
 * events become log lines. A task becoming ready in a service's
 * trigger_queue triggers that event service. Routes: /v1/services (list,
 * health, logs, start / stop / restart / trigger; the blocking ones run on
 * the executor).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "core/alloc.h"
#include "server/exec.h"
#include "server/http.h"
#include "server/log.h"
#include "server/services.h"

/* Supervisor events: one log line each (supervisor thread; never blocks). */
static void on_sv_event(const th_supervisor_event *ev, void *ud)
{
    th_log_level level = ev->type == TH_SEV_ALERT || ev->type == TH_SEV_DISABLED ? TH_LOG_ERROR
                         : ev->type == TH_SEV_HEALTH_FAILED ||
                                 (ev->type == TH_SEV_EXITED && (ev->exit_code || ev->signal))
                             ? TH_LOG_WARN
                             : TH_LOG_INFO;
    th__log(level, "supervisor",
            json_pack("{s:s?,s:i,s:i,s:i,s:i,s:I,s:s?}", "service", ev->service, "instance",
                      ev->instance, "pid", ev->pid, "exit_code", ev->exit_code, "signal",
                      ev->signal, "delay_ms", (json_int_t)ev->delay_ms, "reason", ev->message),
            "service %s", th_supervisor_event_name(ev->type));
}

/* Engine events (engine threads): a ready task in a trigger queue runs the
 * event service; th_supervisor_trigger is cheap and coalesces. */
static void on_engine_event(const th_event *ev, void *ud)
{
    th__server *s = ud;
    if (ev->type != TH_EV_READY || !ev->queue)
        return;
    for (size_t i = 0; i < s->cfg.nsvcs; i++)
        if (s->cfg.svcs[i].trigger_queue && strcmp(s->cfg.svcs[i].trigger_queue, ev->queue) == 0)
            th_supervisor_trigger(s->sv, s->cfg.svcs[i].name, NULL);
}

int th__services_start(th__server *s, char *err, size_t errlen)
{
    if (!s->cfg.nsvcs)
        return 0;
    char dir[4200];
    if (s->cfg.sv_log_dir)
        snprintf(dir, sizeof dir, "%s", s->cfg.sv_log_dir);
    else
        snprintf(dir, sizeof dir, "%s/logs", s->cfg.data_dir);
    th_supervisor_options o;
    th_supervisor_options_init(&o);
    o.log_dir = dir;
    if (s->cfg.sv_sample_ms)
        o.sample_interval_ms = s->cfg.sv_sample_ms;
    th_error e;
    if (!(s->sv = th_supervisor_new(&o, &e))) {
        snprintf(err, errlen, "supervisor: %s", e.message);
        return -1;
    }
    th_supervisor_subscribe(s->sv, on_sv_event, s);
    for (size_t i = 0; i < s->cfg.ngroups; i++)
        if (th_supervisor_group(s->sv, s->cfg.groups[i].name, s->cfg.groups[i].strategy, &e))
            goto fail;
    for (size_t i = 0; i < s->cfg.nsvcs; i++)
        if (th_supervisor_add(s->sv, &s->cfg.svcs[i].spec, &e))
            goto fail;
    if ((s->sv_sub = th_engine_subscribe(s->engine, on_engine_event, s)) < 0) {
        snprintf(err, errlen, "supervisor: cannot subscribe to engine events");
        return -1;
    }
    if (th_supervisor_start_all(s->sv, &e))
        goto fail;
    return 0;
fail:
    snprintf(err, errlen, "supervisor: %s%s%s", e.field, e.field[0] ? ": " : "", e.message);
    return -1;
}

void th__services_stop(th__server *s)
{
    if (s->sv)
        th_supervisor_stop_all(s->sv, NULL);
}

void th__services_free(th__server *s)
{
    if (s->sv_sub > 0)
        th_engine_unsubscribe(s->engine, s->sv_sub);
    s->sv_sub = 0;
    th_supervisor_free(s->sv); /* stops whatever still runs */
    s->sv = NULL;
}

/* ---- routes ------------------------------------------------------------------ */

static json_t *info_json(const th_service_info *v, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(
            arr,
            json_pack("{s:s,s:i,s:s,s:s,s:i,s:I,s:I,s:i,s:i,s:i,s:f,s:I,s:b,s:I,s:s}", "name",
                      v[i].name, "instance", v[i].instance, "type", th_service_type_name(v[i].type),
                      "state", th_service_state_name(v[i].state), "pid", v[i].pid, "started_at",
                      (json_int_t)v[i].started_at, "uptime_ms", (json_int_t)v[i].uptime_ms,
                      "restarts", v[i].restarts, "last_exit_code", v[i].last_exit_code,
                      "last_exit_signal", v[i].last_exit_signal, "cpu_percent", v[i].cpu_percent,
                      "rss_bytes", (json_int_t)v[i].rss_bytes, "healthy", v[i].healthy,
                      "next_run_at", (json_int_t)v[i].next_run_at, "status", v[i].status));
    return arr;
}

static int no_supervisor(th__req *q)
{
    if (q->s->sv)
        return 0;
    th__reply_json(q, 200, json_pack("{s:[]}", "services"));
    return 1;
}

static void list(th__req *q, const char *name)
{
    th_service_info *v;
    size_t n;
    th_error err;
    int rc = th_supervisor_list(q->s->sv, name, &v, &n, &err);
    if (rc) {
        th__reply_engine_error(q, rc, &err);
        return;
    }
    th__reply_json(q, 200, json_pack("{s:o}", "services", info_json(v, n)));
    th_service_info_free(v);
}

static void health(th__req *q)
{
    th_supervisor_health_info h;
    if (!q->s->sv) {
        th__reply_json(q, 200,
                       json_pack("{s:f,s:b,s:i,s:i,s:i,s:i,s:f,s:[]}", "score", 1.0, "healthy", 1,
                                 "services", 0, "healthy_services", 0, "failed", 0, "disabled", 0,
                                 "error_rate", 0.0, "alerts"));
        return;
    }
    th_supervisor_health(q->s->sv, &h);
    json_t *alerts = json_array();
    if (h.alert_error_rate || h.alert_failed)
        json_array_append_new(alerts, json_string(h.message));
    th__reply_json(q, 200,
                   json_pack("{s:f,s:b,s:i,s:i,s:i,s:f,s:I,s:I,s:o}", "score", h.score, "healthy",
                             h.healthy, "services", h.services_enabled, "healthy_services",
                             h.services_healthy, "failed", h.services_failed, "error_rate",
                             h.error_rate, "exits", (json_int_t)h.exits, "failed_exits",
                             (json_int_t)h.failed_exits, "alerts", alerts));
}

/* The last `lines` lines of the service's output (<name>.log.1, then
 * <name>.log). */
static void logs(th__req *q, const char *name)
{
    const char *l = th__req_param(q, "lines");
    char *end;
    long want = l ? strtol(l, &end, 10) : 100;
    if (l && (*end || end == l || want < 1 || want > 10000)) {
        th__reply_error(q, 400, "EINVAL", "lines", "lines must be 1..10000");
        return;
    }
    th_service_info *v;
    size_t n;
    th_error err;
    int rc = th_supervisor_list(q->s->sv, name, &v, &n, &err);
    if (rc) {
        th__reply_engine_error(q, rc, &err);
        return;
    }
    th_service_info_free(v);
    char base[4300];
    if (q->s->cfg.sv_log_dir)
        snprintf(base, sizeof base, "%s/%s.log", q->s->cfg.sv_log_dir, name);
    else
        snprintf(base, sizeof base, "%s/logs/%s.log", q->s->cfg.data_dir, name);
    json_t *out = json_array();
    /* Keep the last `want` lines in a ring while reading the rotated file
     * (.1) and then the current one, so a rotation loses nothing. */
    char **ring = th__calloc((size_t)want, sizeof *ring);
    size_t count = 0;
    for (int part = 0; ring && part < 2; part++) {
        char path[4400];
        snprintf(path, sizeof path, part ? "%s" : "%s.1", base);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        char line[8192];
        while (fgets(line, sizeof line, f)) {
            size_t len = strlen(line);
            if (len && line[len - 1] == '\n')
                line[len - 1] = '\0';
            size_t at = count++ % (size_t)want;
            th__free(ring[at]);
            ring[at] = th__strdup(line);
        }
        fclose(f);
    }
    size_t have = count < (size_t)want ? count : (size_t)want;
    for (size_t i = 0; ring && i < have; i++) {
        size_t at = (count - have + i) % (size_t)want;
        if (ring[at])
            json_array_append_new(out, json_string(ring[at]));
    }
    for (long i = 0; ring && i < want; i++)
        th__free(ring[i]);
    th__free(ring);
    th__reply_json(q, 200, json_pack("{s:s,s:o}", "name", name, "lines", out));
}

static void action_run(th__job *j)
{
    th_supervisor *sv = j->s->sv;
    const char *a = j->text;
    if (strcmp(a, "start") == 0)
        j->rc = th_supervisor_start(sv, j->name, &j->err);
    else if (strcmp(a, "stop") == 0)
        j->rc = th_supervisor_stop(sv, j->name, &j->err);
    else if (strcmp(a, "restart") == 0)
        j->rc = th_supervisor_restart(sv, j->name, &j->err);
    else
        j->rc = th_supervisor_trigger(sv, j->name, &j->err);
}

static void action_done(th__job *j, th__req *q)
{
    if (j->rc) {
        th__reply_engine_error(q, j->rc, &j->err);
    } else {
        th_service_info *v;
        size_t n;
        const char *name = strcmp(j->name, "all") == 0 ? NULL : j->name;
        if (th_supervisor_list(j->s->sv, name, &v, &n, NULL) == 0) {
            th__reply_json(q, 200,
                           json_pack("{s:s,s:s,s:o}", "name", j->name, "action", j->text,
                                     "services", info_json(v, n)));
            th_service_info_free(v);
        } else {
            th__reply_json(q, 200, json_pack("{s:s,s:s}", "name", j->name, "action", j->text));
        }
    }
    th__free(j->text);
}

static void action(th__req *q, const char *name, const char *what)
{
    th__job *j = th__calloc(1, sizeof *j);
    if (!j || !(j->text = th__strdup(what))) {
        th__free(j);
        th__reply_error(q, 500, "ENOMEM", "", "out of memory");
        return;
    }
    j->r = q->r;
    j->run = action_run;
    j->done = action_done;
    snprintf(j->name, sizeof j->name, "%s", name);
    snprintf(j->path, sizeof j->path, "%s", q->path);
    th__exec_push(q->s, j);
}

void th__route_services(th__req *q, int get, int post)
{
    /* q->seg: v1 services [name] [action] */
    if (q->nseg == 2 || (q->nseg == 3 && strcmp(q->seg[2], "health") == 0)) {
        if (!get) {
            evhttp_add_header(evhttp_request_get_output_headers(q->r), "Allow", "GET");
            th__reply_error(q, 405, "EMETHOD", "", "%s allows GET", q->path);
            return;
        }
        if (!th__req_allow(q, TH_SCOPE_READ))
            return;
        if (q->nseg == 3) {
            health(q);
            return;
        }
        if (!no_supervisor(q))
            list(q, NULL);
        return;
    }
    const char *name = q->seg[2];
    if (q->nseg == 3 || (q->nseg == 4 && strcmp(q->seg[3], "logs") == 0)) {
        if (!get) {
            evhttp_add_header(evhttp_request_get_output_headers(q->r), "Allow", "GET");
            th__reply_error(q, 405, "EMETHOD", "", "%s allows GET", q->path);
            return;
        }
        if (!th__req_allow(q, TH_SCOPE_READ))
            return;
        if (!q->s->sv) {
            th__reply_error(q, 404, "ENOTFOUND", "name", "no service named %s", name);
            return;
        }
        if (q->nseg == 3)
            list(q, name);
        else
            logs(q, name);
        return;
    }
    const char *a = q->nseg == 4 ? q->seg[3] : "";
    if (strcmp(a, "start") && strcmp(a, "stop") && strcmp(a, "restart") && strcmp(a, "trigger")) {
        th__reply_error(q, 404, "EROUTE", "", "no route %s", q->path);
        return;
    }
    if (!post) {
        evhttp_add_header(evhttp_request_get_output_headers(q->r), "Allow", "POST");
        th__reply_error(q, 405, "EMETHOD", "", "%s allows POST", q->path);
        return;
    }
    if (!th__req_allow(q, TH_SCOPE_ADMIN))
        return;
    if (!q->s->sv) {
        th__reply_error(q, 404, "ENOTFOUND", "name", "no service named %s", name);
        return;
    }
    action(q, name, a);
}
