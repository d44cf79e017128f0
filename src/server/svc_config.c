/*
 * The supervisor's part of the daemon configuration:
 *
 *   [supervisor]      log_dir (default DATA_DIR/logs), sample_interval
 *   [group.NAME]      strategy = one-for-one | one-for-all | rest-for-one
 *   [service.NAME]    command (run by /bin/sh -c) or argv (a JSON array),
 *                     cwd, env (a JSON object), user, instances,
 *                     type = always | periodic | oneshot | event,
 *                     interval, cron, trigger_queue, deps (comma list),
 *                     group, restart = always | on-failure | never,
 *                     backoff, backoff_max, max_restarts, restart_window,
 *                     stop_signal (TERM, INT, HUP, QUIT, KILL, USR1, USR2),
 *                     stop_timeout, start_timeout, notify, memory_limit,
 *                     log_max_bytes, log_keep,
 *                     health = command | http | tcp, health_command,
 *                     health_url, health_address (host:port),
 *                     health_interval, health_timeout, health_failures
 *
 * Values are read here; th_service_spec_check validates the whole service
 * once the file is read, so an error names the section and the field.
 */
#include "server/svc_config.h"

#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "server/config_values.h"

static th__svc_conf *find_svc(th__config *c, const char *name, int line)
{
    for (size_t i = 0; i < c->nsvcs; i++)
        if (strcmp(c->svcs[i].name, name) == 0)
            return &c->svcs[i];
    th__svc_conf *v = th__realloc(c->svcs, (c->nsvcs + 1) * sizeof *v);
    if (!v)
        return NULL;
    c->svcs = v;
    th__svc_conf *s = &v[c->nsvcs++];
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
    s->line = line;
    th_service_spec_init(&s->spec, s->name);
    return s;
}

static int add_str(char ***list, size_t *n, const char *v)
{
    char **l = th__realloc(*list, (*n + 1) * sizeof *l);
    if (!l)
        return -1;
    *list = l;
    if (!(l[*n] = th__strdup(v)))
        return -1;
    (*n)++;
    return 0;
}

static int signal_of(const char *v)
{
    static const struct {
        const char *name;
        int sig;
    } sigs[] = {{"TERM", SIGTERM}, {"INT", SIGINT},   {"HUP", SIGHUP},  {"QUIT", SIGQUIT},
                {"KILL", SIGKILL}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2}};
    if (strncasecmp(v, "SIG", 3) == 0)
        v += 3;
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        if (strcasecmp(v, sigs[i].name) == 0)
            return sigs[i].sig;
    return 0;
}

/* Returns 1, or 0 with `err` set (without the file and line). */
static int service_key(th__svc_conf *s, const char *k, const char *v, char *err, size_t errlen)
{
    th_service_spec *sp = &s->spec;
    long n;
    int64_t ms;
    size_t sz;
    int b;
#define BAD(...)                                                                                   \
    do {                                                                                           \
        snprintf(err, errlen, __VA_ARGS__);                                                        \
        return 0;                                                                                  \
    } while (0)
#define DURATION(key, field)                                                                       \
    if (strcmp(k, key) == 0) {                                                                     \
        if (th__parse_duration(v, &ms))                                                            \
            BAD(key ": '%s' is not a duration (e.g. 500ms, 30s, 5m)", v);                          \
        field = ms;                                                                                \
        return 1;                                                                                  \
    }
    if (strcmp(k, "command") == 0) {
        if (!*v || th__config_keep(&s->command, v))
            BAD("command: must not be empty");
        return 1;
    }
    if (strcmp(k, "argv") == 0) {
        json_error_t je;
        json_t *a = json_loads(v, 0, &je);
        size_t i;
        json_t *x;
        if (!json_is_array(a) || !json_array_size(a)) {
            json_decref(a);
            BAD("argv: must be a non-empty JSON array of strings, e.g. [\"/usr/bin/x\", \"-v\"]");
        }
        json_array_foreach(a, i, x)
        {
            if (!json_is_string(x) || add_str(&s->argv, &s->argc, json_string_value(x))) {
                json_decref(a);
                BAD("argv[%zu]: must be a string", i);
            }
        }
        json_decref(a);
        return 1;
    }
    if (strcmp(k, "env") == 0) {
        json_t *o = json_loads(v, 0, NULL);
        const char *key;
        json_t *x;
        if (!json_is_object(o)) {
            json_decref(o);
            BAD("env: must be a JSON object, e.g. {\"KEY\": \"value\"}");
        }
        json_object_foreach(o, key, x)
        {
            char kv[4096];
            if (!json_is_string(x)) {
                json_decref(o);
                BAD("env.%s: must be a string", key);
            }
            snprintf(kv, sizeof kv, "%s=%s", key, json_string_value(x));
            if (add_str(&s->env, &s->nenv, kv)) {
                json_decref(o);
                BAD("out of memory");
            }
        }
        json_decref(o);
        return 1;
    }
    if (strcmp(k, "deps") == 0) {
        char buf[2048];
        snprintf(buf, sizeof buf, "%s", v);
        for (char *p = buf, *next; p && *p; p = next) {
            next = strchr(p, ',');
            if (next)
                *next++ = '\0';
            while (*p == ' ')
                p++;
            size_t l = strlen(p);
            while (l && p[l - 1] == ' ')
                p[--l] = '\0';
            if (l && add_str(&s->deps, &s->ndeps, p))
                BAD("out of memory");
        }
        return 1;
    }
    struct {
        const char *key;
        char **slot;
    } strs[] = {{"cwd", &s->cwd},
                {"user", &s->user},
                {"cron", &s->cron},
                {"group", &s->group},
                {"trigger_queue", &s->trigger_queue},
                {"health_command", &s->health_command},
                {"health_url", &s->health_url}};
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        if (strcmp(k, strs[i].key) == 0) {
            if (!*v || th__config_keep(strs[i].slot, v))
                BAD("%s: must not be empty", k);
            return 1;
        }
    }
    if (strcmp(k, "health_address") == 0) {
        const char *colon = strrchr(v, ':');
        if (!colon || colon == v || th__parse_int(colon + 1, 1, 65535, &n))
            BAD("health_address: '%s' must be HOST:PORT", v);
        char host[256];
        snprintf(host, sizeof host, "%.*s", (int)(colon - v), v);
        if (th__config_keep(&s->health_host, host))
            BAD("out of memory");
        sp->health.port = (int)n;
        return 1;
    }
    if (strcmp(k, "type") == 0) {
        static const char *const t[] = {"always", "periodic", "oneshot", "event"};
        for (int i = 0; i < 4; i++)
            if (strcmp(v, t[i]) == 0) {
                sp->type = (th_service_type)i;
                return 1;
            }
        BAD("type: '%s' must be always, periodic, oneshot or event", v);
    }
    if (strcmp(k, "restart") == 0) {
        if (strcmp(v, "always") == 0)
            sp->restart = TH_RESTART_ALWAYS;
        else if (strcmp(v, "on-failure") == 0)
            sp->restart = TH_RESTART_ON_FAILURE;
        else if (strcmp(v, "never") == 0)
            sp->restart = TH_RESTART_NEVER;
        else
            BAD("restart: '%s' must be always, on-failure or never", v);
        return 1;
    }
    if (strcmp(k, "health") == 0) {
        if (strcmp(v, "command") == 0)
            sp->health.kind = TH_HEALTH_COMMAND;
        else if (strcmp(v, "http") == 0)
            sp->health.kind = TH_HEALTH_HTTP;
        else if (strcmp(v, "tcp") == 0)
            sp->health.kind = TH_HEALTH_TCP;
        else if (strcmp(v, "none") == 0)
            sp->health.kind = TH_HEALTH_NONE;
        else
            BAD("health: '%s' must be command, http, tcp or none", v);
        return 1;
    }
    if (strcmp(k, "stop_signal") == 0) {
        if (!(sp->stop_signal = signal_of(v)))
            BAD("stop_signal: '%s' must be TERM, INT, HUP, QUIT, KILL, USR1 or USR2", v);
        return 1;
    }
    if (strcmp(k, "notify") == 0) {
        if (th__parse_bool(v, &b))
            BAD("notify: '%s' must be true or false", v);
        sp->notify = b;
        return 1;
    }
    if (strcmp(k, "instances") == 0 || strcmp(k, "max_restarts") == 0 ||
        strcmp(k, "log_keep") == 0 || strcmp(k, "health_failures") == 0) {
        if (th__parse_int(v, -1, 1000000, &n))
            BAD("%s: '%s' must be an integer", k, v);
        if (strcmp(k, "instances") == 0)
            sp->instances = (int)n;
        else if (strcmp(k, "max_restarts") == 0)
            sp->max_restarts = (int)n;
        else if (strcmp(k, "log_keep") == 0)
            sp->log_keep = (int)n;
        else
            sp->health.failures_before_restart = (int)n;
        return 1;
    }
    if (strcmp(k, "memory_limit") == 0 || strcmp(k, "log_max_bytes") == 0) {
        if (th__parse_size(v, &sz))
            BAD("%s: '%s' is not a size (e.g. 512M)", k, v);
        if (strcmp(k, "memory_limit") == 0)
            sp->memory_limit = sz;
        else
            sp->log_max_bytes = sz;
        return 1;
    }
    DURATION("interval", sp->interval_ms)
    DURATION("backoff", sp->backoff_initial_ms)
    DURATION("backoff_max", sp->backoff_max_ms)
    DURATION("restart_window", sp->restart_window_ms)
    DURATION("stop_timeout", sp->stop_timeout_ms)
    DURATION("start_timeout", sp->start_timeout_ms)
    DURATION("health_interval", sp->health.interval_ms)
    DURATION("health_timeout", sp->health.timeout_ms)
#undef DURATION
#undef BAD
    snprintf(err, errlen, "unknown key '%s' in [service.%s]", k, s->name);
    return 0;
}

int th__svc_config_key(th__config *c, const char *section, const char *key, const char *value,
                       int line, char *err, size_t errlen)
{
    if (strcmp(section, "supervisor") == 0) {
        if (strcmp(key, "log_dir") == 0) {
            if (!*value || th__config_keep(&c->sv_log_dir, value)) {
                snprintf(err, errlen, "log_dir: must be a directory path");
                return 0;
            }
            return 1;
        }
        if (strcmp(key, "sample_interval") == 0) {
            if (th__parse_duration(value, &c->sv_sample_ms) || c->sv_sample_ms < 10) {
                snprintf(err, errlen, "sample_interval: '%s' must be a duration of at least 10ms",
                         value);
                return 0;
            }
            return 1;
        }
        snprintf(err, errlen, "unknown key '%s' in [supervisor]", key);
        return 0;
    }
    const char *name = strchr(section, '.') + 1;
    if (!*name || strlen(name) > TH_SERVICE_NAME_MAX) {
        snprintf(err, errlen, "[%s]: the name must be 1-%d characters", section,
                 TH_SERVICE_NAME_MAX);
        return 0;
    }
    if (strncmp(section, "group.", 6) == 0) {
        if (strcmp(key, "strategy") != 0) {
            snprintf(err, errlen, "unknown key '%s' in [%s] (only strategy)", key, section);
            return 0;
        }
        static const char *const st[] = {"one-for-one", "one-for-all", "rest-for-one"};
        int found = -1;
        for (int i = 0; i < 3; i++)
            if (strcmp(value, st[i]) == 0)
                found = i;
        if (found < 0) {
            snprintf(err, errlen, "strategy: '%s' must be one-for-one, one-for-all or rest-for-one",
                     value);
            return 0;
        }
        th__group_conf *g = th__realloc(c->groups, (c->ngroups + 1) * sizeof *g);
        if (!g) {
            snprintf(err, errlen, "out of memory");
            return 0;
        }
        c->groups = g;
        snprintf(g[c->ngroups].name, sizeof g[c->ngroups].name, "%s", name);
        g[c->ngroups++].strategy = (th_group_strategy)found;
        return 1;
    }
    if (strcmp(name, "health") == 0) {
        snprintf(err, errlen, "[%s]: 'health' is reserved (GET /v1/services/health)", section);
        return 0;
    }
    th__svc_conf *s = find_svc(c, name, line);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return 0;
    }
    return service_key(s, key, value, err, errlen);
}

static th__svc_conf *svc_named(th__config *c, const char *name)
{
    for (size_t i = 0; i < c->nsvcs; i++)
        if (strcmp(c->svcs[i].name, name) == 0)
            return &c->svcs[i];
    return NULL;
}

/* Depth-first search for a dependency cycle through `s` (color: 0 new,
 * 1 on the path, 2 done). On a cycle, writes "a -> b -> a" to `err`. */
static int find_cycle(th__config *c, th__svc_conf *s, int *color, const char **path, int depth,
                      char *err, size_t errlen)
{
    int i = (int)(s - c->svcs);
    if (color[i] == 2)
        return 0;
    path[depth] = s->name;
    if (color[i] == 1) {
        int start = 0;
        while (strcmp(path[start], s->name) != 0)
            start++;
        size_t used = 0;
        for (int k = start; k <= depth && used < errlen; k++)
            used += (size_t)snprintf(err + used, errlen - used, "%s%s", k > start ? " -> " : "",
                                     path[k]);
        return 1;
    }
    color[i] = 1;
    for (size_t k = 0; k < s->ndeps; k++) {
        th__svc_conf *d = svc_named(c, s->deps[k]);
        if (d && find_cycle(c, d, color, path, depth + 1, err, errlen))
            return 1;
    }
    color[i] = 2;
    return 0;
}

int th__svc_config_finish(th__config *c, char *err, size_t errlen)
{
    for (size_t i = 0; i < c->nsvcs; i++) {
        th__svc_conf *s = &c->svcs[i];
        for (size_t k = 0; k < s->ndeps; k++) {
            if (!svc_named(c, s->deps[k])) {
                snprintf(err, errlen, "[service.%s] deps: no service named '%s'", s->name,
                         s->deps[k]);
                return -1;
            }
        }
    }
    int *color = th__calloc(c->nsvcs ? c->nsvcs : 1, sizeof *color);
    const char **path = th__calloc(c->nsvcs + 1, sizeof *path);
    if (!color || !path) {
        th__free(color);
        th__free(path);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    char cyc[400];
    for (size_t i = 0; i < c->nsvcs; i++) {
        if (find_cycle(c, &c->svcs[i], color, path, 0, cyc, sizeof cyc)) {
            snprintf(err, errlen, "dependency cycle: %s", cyc);
            th__free(color);
            th__free(path);
            return -1;
        }
    }
    th__free(color);
    th__free(path);
    for (size_t i = 0; i < c->nsvcs; i++) {
        th__svc_conf *s = &c->svcs[i];
        th_service_spec *sp = &s->spec;
        sp->name = s->name;
        sp->argv = (const char *const *)s->argv;
        sp->argc = s->argc;
        sp->command = s->command;
        sp->use_shell = s->command != NULL;
        sp->cwd = s->cwd;
        sp->env = (const char *const *)s->env;
        sp->nenv = s->nenv;
        sp->user = s->user;
        sp->cron = s->cron;
        sp->deps = (const char *const *)s->deps;
        sp->ndeps = s->ndeps;
        sp->group = s->group;
        sp->health.command = s->health_command;
        sp->health.url = s->health_url;
        sp->health.host = s->health_host;
        if (s->trigger_queue && sp->type != TH_SERVICE_EVENT) {
            snprintf(err, errlen, "[service.%s] trigger_queue: needs type = event", s->name);
            return -1;
        }
        th_error e;
        if (th_service_spec_check(sp, &e)) {
            snprintf(err, errlen, "[service.%s] %s: %s", s->name, e.field, e.message);
            return -1;
        }
    }
    return 0;
}

void th__svc_config_free(th__config *c)
{
    for (size_t i = 0; i < c->nsvcs; i++) {
        th__svc_conf *s = &c->svcs[i];
        char **lists[] = {s->argv, s->env, s->deps};
        size_t counts[] = {s->argc, s->nenv, s->ndeps};
        for (int l = 0; l < 3; l++) {
            for (size_t k = 0; k < counts[l]; k++)
                th__free(lists[l][k]);
            th__free(lists[l]);
        }
        th__free(s->command);
        th__free(s->cwd);
        th__free(s->user);
        th__free(s->cron);
        th__free(s->group);
        th__free(s->trigger_queue);
        th__free(s->health_command);
        th__free(s->health_url);
        th__free(s->health_host);
    }
    th__free(c->svcs);
    th__free(c->groups);
    th__free(c->sv_log_dir);
    c->svcs = NULL;
    c->groups = NULL;
    c->sv_log_dir = NULL;
    c->nsvcs = c->ngroups = 0;
}
