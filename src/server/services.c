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
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/alloc.h"
#include "core/error.h"
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
    /* Made even without configured services: they can be added through
     * the API. It costs one idle thread. */
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
    th_supervisor *sv = th_supervisor_new(&o, &e);
    if (!sv) {
        snprintf(err, errlen, "supervisor: %s", e.message);
        return -1;
    }
    /* The LLM gateway's thread reads s->sv (a provider's restart_service). */
    __atomic_store_n(&s->sv, sv, __ATOMIC_RELEASE);
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

/* ---- adding and removing at run time ---------------------------------------- */

/* A port number, or 0 (refused by th_service_spec_check) when it is not one. */
static int atoi_port(const char *v)
{
    char *end;
    long p = strtol(v, &end, 10);
    return *end || end == v || p < 1 || p > 65535 ? 0 : (int)p;
}

/* A JSON body → spec. Strings are borrowed from `o`; the arrays (and the
 * env's KEY=VALUE texts) are added to `owned`, freed by the caller. */
static int spec_parse(json_t *o, th_service_spec *sp, char ***owned, size_t *nowned, th_error *err)
{
    static const char *const fields[] = {"name",
                                         "argv",
                                         "command",
                                         "cwd",
                                         "env",
                                         "user",
                                         "instances",
                                         "type",
                                         "interval_ms",
                                         "cron",
                                         "deps",
                                         "group",
                                         "restart",
                                         "backoff_ms",
                                         "backoff_max_ms",
                                         "max_restarts",
                                         "restart_window_ms",
                                         "stop_signal",
                                         "stop_timeout_ms",
                                         "start_timeout_ms",
                                         "notify",
                                         "memory_limit",
                                         "log_max_bytes",
                                         "log_keep",
                                         "health",
                                         "start",
                                         NULL};
    int rc = th__json_known_fields(o, fields, "", err);
    if (rc)
        return rc;
    json_t *name = json_object_get(o, "name");
    if (!json_is_string(name))
        return th__err(err, TH_EINVAL, "name", "name is required (a string)");
    th_service_spec_init(sp, json_string_value(name));
#define STR(key, slot)                                                                             \
    do {                                                                                           \
        json_t *v_ = json_object_get(o, key);                                                      \
        if (v_ && !json_is_null(v_)) {                                                             \
            if (!json_is_string(v_))                                                               \
                return th__err(err, TH_EINVAL, key, "%s must be a string", key);                   \
            slot = json_string_value(v_);                                                          \
        }                                                                                          \
    } while (0)
#define INT(key, slot)                                                                             \
    do {                                                                                           \
        json_t *v_ = json_object_get(o, key);                                                      \
        if (v_) {                                                                                  \
            if (!json_is_integer(v_))                                                              \
                return th__err(err, TH_EINVAL, key, "%s must be an integer", key);                 \
            slot = json_integer_value(v_);                                                         \
        }                                                                                          \
    } while (0)
    STR("command", sp->command);
    sp->use_shell = sp->command != NULL;
    STR("cwd", sp->cwd);
    STR("user", sp->user);
    STR("cron", sp->cron);
    STR("group", sp->group);
    json_int_t inst = sp->instances, mr = sp->max_restarts, keep = sp->log_keep;
    json_int_t mem = 0, logmax = (json_int_t)sp->log_max_bytes;
    INT("instances", inst);
    INT("interval_ms", sp->interval_ms);
    INT("backoff_ms", sp->backoff_initial_ms);
    INT("backoff_max_ms", sp->backoff_max_ms);
    INT("max_restarts", mr);
    INT("restart_window_ms", sp->restart_window_ms);
    INT("stop_timeout_ms", sp->stop_timeout_ms);
    INT("start_timeout_ms", sp->start_timeout_ms);
    INT("memory_limit", mem);
    INT("log_max_bytes", logmax);
    INT("log_keep", keep);
    if (inst < 0 || inst > 1000 || mr < -1 || mr > 1000000 || keep < 0 || keep > 1000 || mem < 0 ||
        logmax < 0)
        return th__err(err, TH_EINVAL, inst < 0 || inst > 1000 ? "instances" : "max_restarts",
                       "instances, max_restarts, log_keep and sizes must be in range");
    sp->instances = (int)inst;
    sp->max_restarts = (int)mr;
    sp->log_keep = (int)keep;
    sp->memory_limit = (size_t)mem;
    sp->log_max_bytes = (size_t)logmax;
    json_t *nt = json_object_get(o, "notify");
    if (nt && !json_is_boolean(nt))
        return th__err(err, TH_EINVAL, "notify", "notify must be true or false");
    sp->notify = json_is_true(nt);
    const char *t = NULL, *r = NULL, *sig = NULL;
    STR("type", t);
    STR("restart", r);
    STR("stop_signal", sig);
    if (t) {
        static const char *const types[] = {"always", "periodic", "oneshot", "event"};
        int found = -1;
        for (int i = 0; i < 4; i++)
            if (strcmp(t, types[i]) == 0)
                found = i;
        if (found < 0)
            return th__err(err, TH_EINVAL, "type",
                           "type must be always, periodic, oneshot or event");
        sp->type = (th_service_type)found;
    }
    if (r) {
        if (strcmp(r, "always") == 0)
            sp->restart = TH_RESTART_ALWAYS;
        else if (strcmp(r, "on-failure") == 0)
            sp->restart = TH_RESTART_ON_FAILURE;
        else if (strcmp(r, "never") == 0)
            sp->restart = TH_RESTART_NEVER;
        else
            return th__err(err, TH_EINVAL, "restart",
                           "restart must be always, on-failure or never");
    }
    if (sig) {
        static const struct {
            const char *n;
            int s;
        } sigs[] = {{"TERM", SIGTERM}, {"INT", SIGINT},   {"HUP", SIGHUP},  {"QUIT", SIGQUIT},
                    {"KILL", SIGKILL}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2}};
        sp->stop_signal = 0;
        for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
            if (strcmp(sig, sigs[i].n) == 0)
                sp->stop_signal = sigs[i].s;
        if (!sp->stop_signal)
            return th__err(err, TH_EINVAL, "stop_signal",
                           "stop_signal must be TERM, INT, HUP, QUIT, KILL, USR1 or USR2");
    }
    /* Arrays: argv and deps of strings; env an object of strings. */
    const char *keys[2] = {"argv", "deps"};
    for (int a = 0; a < 2; a++) {
        json_t *arr = json_object_get(o, keys[a]);
        if (!arr || json_is_null(arr))
            continue;
        if (!json_is_array(arr) || json_array_size(arr) > 256)
            return th__err(err, TH_EINVAL, keys[a], "%s must be an array of strings", keys[a]);
        size_t n = json_array_size(arr);
        const char **v = th__calloc(n ? n : 1, sizeof *v);
        char **ov = v ? th__realloc(*owned, (*nowned + 1) * sizeof *ov) : NULL;
        if (!ov) {
            th__free(v);
            return th__err(err, TH_ENOMEM, "", "out of memory");
        }
        *owned = ov;
        ov[(*nowned)++] = (char *)v;
        for (size_t i = 0; i < n; i++) {
            if (!json_is_string(json_array_get(arr, i))) {
                char field[32];
                snprintf(field, sizeof field, "%s[%zu]", keys[a], i);
                return th__err(err, TH_EINVAL, field, "%s must be a string", field);
            }
            v[i] = json_string_value(json_array_get(arr, i));
        }
        if (a == 0) {
            sp->argv = v;
            sp->argc = n;
        } else {
            sp->deps = v;
            sp->ndeps = n;
        }
    }
    json_t *env = json_object_get(o, "env");
    if (env && !json_is_null(env)) {
        if (!json_is_object(env) || json_object_size(env) > 256)
            return th__err(err, TH_EINVAL, "env", "env must be an object of strings");
        size_t n = json_object_size(env), i = 0;
        const char **v = th__calloc(n ? n : 1, sizeof *v);
        char **ov = v ? th__realloc(*owned, (*nowned + n + 1) * sizeof *ov) : NULL;
        if (!ov) {
            th__free(v);
            return th__err(err, TH_ENOMEM, "", "out of memory");
        }
        *owned = ov;
        ov[(*nowned)++] = (char *)v;
        const char *k;
        json_t *x;
        json_object_foreach(env, k, x)
        {
            char field[80];
            snprintf(field, sizeof field, "env.%.60s", k);
            if (!json_is_string(x))
                return th__err(err, TH_EINVAL, field, "%s must be a string", field);
            size_t len = strlen(k) + json_string_length(x) + 2;
            char *kv = th__malloc(len);
            if (!kv)
                return th__err(err, TH_ENOMEM, "", "out of memory");
            snprintf(kv, len, "%s=%s", k, json_string_value(x));
            ov[(*nowned)++] = kv;
            v[i++] = kv;
        }
        sp->env = v;
        sp->nenv = n;
    }
    json_t *h = json_object_get(o, "health");
    if (h && !json_is_null(h)) {
        static const char *const hf[] = {"kind",        "command",    "url",      "address",
                                         "interval_ms", "timeout_ms", "failures", NULL};
        if (!json_is_object(h))
            return th__err(err, TH_EINVAL, "health", "health must be an object");
        if ((rc = th__json_known_fields(h, hf, "health.", err)))
            return rc;
        const char *kind = json_string_value(json_object_get(h, "kind"));
        if (!kind || (strcmp(kind, "command") && strcmp(kind, "http") && strcmp(kind, "tcp") &&
                      strcmp(kind, "none")))
            return th__err(err, TH_EINVAL, "health.kind",
                           "health.kind must be command, http, tcp or none");
        sp->health.kind = strcmp(kind, "command") == 0 ? TH_HEALTH_COMMAND
                          : strcmp(kind, "http") == 0  ? TH_HEALTH_HTTP
                          : strcmp(kind, "tcp") == 0   ? TH_HEALTH_TCP
                                                       : TH_HEALTH_NONE;
        sp->health.command = json_string_value(json_object_get(h, "command"));
        sp->health.url = json_string_value(json_object_get(h, "url"));
        const char *addr = json_string_value(json_object_get(h, "address"));
        if (addr) {
            const char *colon = strrchr(addr, ':');
            char *host = colon ? th__strndup(addr, (size_t)(colon - addr)) : NULL;
            char **ov = host ? th__realloc(*owned, (*nowned + 1) * sizeof *ov) : NULL;
            if (!colon)
                return th__err(err, TH_EINVAL, "health.address",
                               "health.address must be HOST:PORT");
            if (!ov) {
                th__free(host);
                return th__err(err, TH_ENOMEM, "", "out of memory");
            }
            *owned = ov;
            ov[(*nowned)++] = host;
            sp->health.host = host;
            sp->health.port = atoi_port(colon + 1);
        }
        json_int_t fails = sp->health.failures_before_restart;
        json_t *hv;
        if ((hv = json_object_get(h, "interval_ms")) && json_is_integer(hv))
            sp->health.interval_ms = json_integer_value(hv);
        if ((hv = json_object_get(h, "timeout_ms")) && json_is_integer(hv))
            sp->health.timeout_ms = json_integer_value(hv);
        if ((hv = json_object_get(h, "failures")) && json_is_integer(hv))
            fails = json_integer_value(hv);
        sp->health.failures_before_restart = (int)fails;
    }
#undef STR
#undef INT
    return th_service_spec_check(sp, err);
}

static void add_run(th__job *j)
{
    th_service_spec *sp = j->extra;
    /* Dependencies must exist now, so a service is never left waiting for
     * one that will not come (also with start = false). */
    for (size_t k = 0; k < sp->ndeps; k++) {
        th_service_info *v;
        size_t n;
        if (th_supervisor_list(j->s->sv, sp->deps[k], &v, &n, NULL) != 0) {
            char field[32];
            snprintf(field, sizeof field, "deps[%zu]", k);
            j->rc = th__err(&j->err, TH_EINVAL, field, "no service named %s", sp->deps[k]);
            return;
        }
        th_service_info_free(v);
    }
    j->rc = th_supervisor_add(j->s->sv, sp, &j->err);
    if (j->rc == 0 && j->flags && (j->rc = th_supervisor_start(j->s->sv, sp->name, &j->err)))
        th_supervisor_remove(j->s->sv, sp->name, NULL); /* all or nothing */
}

static void add_done(th__job *j, th__req *q)
{
    th_service_spec *sp = j->extra;
    th_service_info *v;
    size_t n;
    if (j->rc) {
        th__reply_engine_error(q, j->rc, &j->err);
    } else if (th_supervisor_list(j->s->sv, sp->name, &v, &n, NULL) == 0) {
        th__reply_json(q, 201,
                       json_pack("{s:s,s:o}", "name", sp->name, "services", info_json(v, n)));
        th_service_info_free(v);
    } else {
        th__reply_json(q, 201, json_pack("{s:s}", "name", sp->name));
    }
    th__free(sp);
    th__json_owned_free(j->owned, j->nowned);
    json_decref(j->body);
}

static void add(th__req *q)
{
    json_t *body = th__req_body(q, q->s->cfg.max_body);
    if (!body)
        return;
    th__job *j = th__calloc(1, sizeof *j);
    th_service_spec *sp = th__calloc(1, sizeof *sp);
    if (!j || !sp) {
        th__free(j);
        th__free(sp);
        json_decref(body);
        th__reply_error(q, 500, "ENOMEM", "", "out of memory");
        return;
    }
    j->r = q->r;
    j->body = body;
    j->extra = sp;
    j->run = add_run;
    j->done = add_done;
    snprintf(j->path, sizeof j->path, "%s", q->path);
    json_t *st = json_object_get(body, "start");
    j->flags = !st || json_is_true(st);
    if (st && !json_is_boolean(st))
        j->rc = th__err(&j->err, TH_EINVAL, "start", "start must be true or false");
    else
        j->rc = spec_parse(body, sp, &j->owned, &j->nowned, &j->err);
    if (j->rc) {
        add_done(j, q);
        th__free(j);
        return;
    }
    th__exec_push(q->s, j);
}

static void remove_run(th__job *j)
{
    j->rc = th_supervisor_remove(j->s->sv, j->name, &j->err);
}

static void remove_done(th__job *j, th__req *q)
{
    if (j->rc == TH_EBUSY) /* another service depends on it: a conflict, not a full queue */
        th__reply_error(q, 409, "EBUSY", "name", "%s", j->err.message);
    else if (j->rc)
        th__reply_engine_error(q, j->rc, &j->err);
    else
        th__reply_json(q, 200, json_pack("{s:s,s:b}", "name", j->name, "removed", 1));
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

static void not_allowed(th__req *q, const char *allow)
{
    evhttp_add_header(evhttp_request_get_output_headers(q->r), "Allow", allow);
    th__reply_error(q, 405, "EMETHOD", "", "%s allows %s", q->path, allow);
}

void th__route_services(th__req *q, enum evhttp_cmd_type method)
{
    int get = method == EVHTTP_REQ_GET || method == EVHTTP_REQ_HEAD,
        post = method == EVHTTP_REQ_POST;
    /* q->seg: v1 services [name] [action] */
    if (q->nseg == 2 && post) {
        if (th__req_allow(q, TH_SCOPE_ADMIN))
            add(q);
        return;
    }
    if (q->nseg == 3 && method == EVHTTP_REQ_DELETE && strcmp(q->seg[2], "health") != 0) {
        if (!th__req_allow(q, TH_SCOPE_ADMIN))
            return;
        th__job *j = th__calloc(1, sizeof *j);
        if (!j) {
            th__reply_error(q, 500, "ENOMEM", "", "out of memory");
            return;
        }
        j->r = q->r;
        j->run = remove_run;
        j->done = remove_done;
        snprintf(j->name, sizeof j->name, "%s", q->seg[2]);
        snprintf(j->path, sizeof j->path, "%s", q->path);
        th__exec_push(q->s, j);
        return;
    }
    if (q->nseg == 2 || (q->nseg == 3 && strcmp(q->seg[2], "health") == 0)) {
        if (!get) {
            not_allowed(q, q->nseg == 2 ? "GET, POST" : "GET");
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
            not_allowed(q, q->nseg == 3 ? "GET, DELETE" : "GET");
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
        not_allowed(q, "POST");
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
