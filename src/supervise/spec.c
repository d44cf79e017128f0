/*
 * Service specs: defaults, validation (every field, with err->field naming
 * it), deep copies, and finding the program to run.
 */
#include "supervise/sv_impl.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/error.h"

#define DAY_MS (24LL * 3600 * 1000)
#define DEFAULT_PATH "/usr/local/bin:/usr/bin:/bin"

void th_service_spec_init(th_service_spec *spec, const char *name)
{
    memset(spec, 0, sizeof *spec);
    spec->name = name;
    spec->instances = 1;
    spec->type = TH_SERVICE_ALWAYS;
    spec->restart = TH_RESTART_DEFAULT;
    spec->backoff_initial_ms = 1000;
    spec->backoff_max_ms = 60000;
    spec->max_restarts = 3;
    spec->restart_window_ms = 60000;
    spec->stop_signal = SIGTERM;
    spec->stop_timeout_ms = 10000;
    spec->start_timeout_ms = 90000;
    spec->health.interval_ms = 30000;
    spec->health.timeout_ms = 5000;
    spec->health.failures_before_restart = 3;
    spec->log_max_bytes = (size_t)10 << 20;
    spec->log_keep = 5;
}

int th__sv_name_ok(const char *s)
{
    if (!s)
        return 0;
    size_t n = strlen(s);
    if (n < 1 || n > TH_SERVICE_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == ':' || c == '-'))
            return 0;
    }
    return 1;
}

static int executable(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0;
}

int th__sv_find_program(const char *file, const char *path, const char *cwd, char *out, size_t n)
{
    if (!file || !*file)
        return -1;
    if (strchr(file, '/')) {
        int len = (file[0] == '/' || !cwd) ? snprintf(out, n, "%s", file)
                                           : snprintf(out, n, "%s/%s", cwd, file);
        if (len < 0 || (size_t)len >= n)
            return -1;
        if (!executable(out))
            return -1;
        if (file[0] != '/' && cwd) /* exec runs after chdir: keep it relative */
            snprintf(out, n, "%s", file);
        return 0;
    }
    const char *p = path && *path ? path : DEFAULT_PATH;
    while (*p) {
        const char *end = strchr(p, ':');
        size_t dlen = end ? (size_t)(end - p) : strlen(p);
        int len =
            dlen ? snprintf(out, n, "%.*s/%s", (int)dlen, p, file) : snprintf(out, n, "./%s", file);
        if (len > 0 && (size_t)len < n && out[0] == '/' && executable(out))
            return 0;
        if (!end)
            break;
        p = end + 1;
    }
    return -1;
}

static int env_key_ok(const char *kv, size_t *keylen)
{
    const char *eq = strchr(kv, '=');
    if (!eq || eq == kv)
        return 0;
    for (const char *c = kv; c < eq; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || *c == '_' ||
              (c > kv && *c >= '0' && *c <= '9')))
            return 0;
    *keylen = (size_t)(eq - kv);
    return 1;
}

static int ms_range(th_error *err, const char *field, int64_t v, int64_t lo, int64_t hi)
{
    if (v < lo || v > hi)
        return th__err(err, TH_EINVAL, field, "%lld ms is outside %lld-%lld", (long long)v,
                       (long long)lo, (long long)hi);
    return 0;
}

static int check_program(const th_service_spec *s, th_error *err)
{
    if (s->use_shell != 0 && s->use_shell != 1)
        return th__err(err, TH_EINVAL, "use_shell", "must be 0 or 1");
    if (s->argc > SV_ARGV_MAX)
        return th__err(err, TH_EINVAL, "argv", "at most %d arguments", SV_ARGV_MAX);
    if (s->argc && !s->argv)
        return th__err(err, TH_EINVAL, "argv", "argv is NULL but argc is %zu", s->argc);
    if (s->use_shell) {
        if (s->argc)
            return th__err(err, TH_EINVAL, "argv", "use_shell runs `command`: leave argv empty");
        if (!s->command || !*s->command)
            return th__err(err, TH_EINVAL, "command", "use_shell needs a command");
        if (!executable("/bin/sh"))
            return th__err(err, TH_EINVAL, "use_shell", "/bin/sh is not executable");
        return 0;
    }
    if (s->command)
        return th__err(err, TH_EINVAL, "command",
                       "a command string needs use_shell = 1 (or split it into argv)");
    if (!s->argc)
        return th__err(err, TH_EINVAL, "argv", "no program: set argv (or use_shell and command)");
    for (size_t i = 0; i < s->argc; i++) {
        if (!s->argv[i]) {
            char f[32];
            snprintf(f, sizeof f, "argv[%zu]", i);
            return th__err(err, TH_EINVAL, f, "is NULL");
        }
    }
    const char *path = NULL;
    for (size_t i = 0; i < s->nenv && s->env; i++)
        if (s->env[i] && strncmp(s->env[i], "PATH=", 5) == 0)
            path = s->env[i] + 5;
    if (!path)
        path = getenv("PATH");
    char full[4096];
    if (th__sv_find_program(s->argv[0], path, s->cwd, full, sizeof full))
        return th__err(err, TH_EINVAL, "argv[0]", "\"%.200s\": no such executable file%s",
                       s->argv[0], strchr(s->argv[0], '/') ? "" : " in PATH");
    return 0;
}

static int check_user(const char *user, th_error *err)
{
    if (!*user)
        return th__err(err, TH_EINVAL, "user", "empty");
    struct passwd pw, *res = NULL;
    char buf[4096];
    int rc = getpwnam_r(user, &pw, buf, sizeof buf, &res);
    if (rc != 0 || !res)
        return th__err(err, TH_EINVAL, "user", "no such user \"%.64s\"", user);
    if (geteuid() != 0 && pw.pw_uid != geteuid())
        return th__err(err, TH_EINVAL, "user",
                       "running a service as \"%.64s\" needs root (the supervisor runs as "
                       "uid %d)",
                       user, (int)geteuid());
    return 0;
}

static int check_health(const th_health_check *h, th_error *err)
{
    switch (h->kind) {
    case TH_HEALTH_NONE:
        return 0;
    case TH_HEALTH_COMMAND:
        if (!h->command || !*h->command)
            return th__err(err, TH_EINVAL, "health.command", "a command check needs a command");
        break;
    case TH_HEALTH_HTTP:
        if (!h->url || (strncmp(h->url, "http://", 7) != 0 && strncmp(h->url, "https://", 8) != 0))
            return th__err(err, TH_EINVAL, "health.url", "needs an http:// or https:// url");
        if (strlen(h->url) > 2048)
            return th__err(err, TH_EINVAL, "health.url", "longer than 2048 characters");
        break;
    case TH_HEALTH_TCP:
        if (!h->host || !*h->host || strlen(h->host) > 255)
            return th__err(err, TH_EINVAL, "health.host", "a tcp check needs a host");
        if (h->port < 1 || h->port > 65535)
            return th__err(err, TH_EINVAL, "health.port", "%d is outside 1-65535", h->port);
        break;
    default:
        return th__err(err, TH_EINVAL, "health.kind", "unknown kind %d", (int)h->kind);
    }
    int rc;
    if ((rc = ms_range(err, "health.interval_ms", h->interval_ms, 10, DAY_MS)) ||
        (rc = ms_range(err, "health.timeout_ms", h->timeout_ms, 1, 3600 * 1000)))
        return rc;
    if (h->failures_before_restart < 1 || h->failures_before_restart > 100)
        return th__err(err, TH_EINVAL, "health.failures_before_restart", "%d is outside 1-100",
                       h->failures_before_restart);
    return 0;
}

int th_service_spec_check(const th_service_spec *s, th_error *err)
{
    th__err_clear(err);
    int rc;
    if (!s)
        return th__err(err, TH_EINVAL, "", "no spec");
    if (!th__sv_name_ok(s->name))
        return th__err(err, TH_EINVAL, "name", "must be 1-%d characters of [A-Za-z0-9_.:-]",
                       TH_SERVICE_NAME_MAX);
    if (strcmp(s->name, "all") == 0)
        return th__err(err, TH_EINVAL, "name", "\"all\" is reserved");
    if (s->cwd) {
        struct stat st;
        if (!*s->cwd || stat(s->cwd, &st) != 0 || !S_ISDIR(st.st_mode))
            return th__err(err, TH_EINVAL, "cwd", "\"%.200s\" is not a directory", s->cwd);
    }
    if (s->nenv > SV_ENV_MAX)
        return th__err(err, TH_EINVAL, "env", "at most %d entries", SV_ENV_MAX);
    if (s->nenv && !s->env)
        return th__err(err, TH_EINVAL, "env", "env is NULL but nenv is %zu", s->nenv);
    for (size_t i = 0; i < s->nenv; i++) {
        char f[32];
        size_t klen;
        snprintf(f, sizeof f, "env[%zu]", i);
        if (!s->env[i] || !env_key_ok(s->env[i], &klen))
            return th__err(err, TH_EINVAL, f, "must be KEY=VALUE with KEY of [A-Za-z0-9_]");
        if ((klen == 11 && strncmp(s->env[i], "TH_INSTANCE", 11) == 0) ||
            (klen == 13 && strncmp(s->env[i], "NOTIFY_SOCKET", 13) == 0))
            return th__err(err, TH_EINVAL, f, "%.*s is set by the supervisor", (int)klen,
                           s->env[i]);
    }
    if ((rc = check_program(s, err)))
        return rc;
    if (s->user && (rc = check_user(s->user, err)))
        return rc;
    if (s->instances < 1 || s->instances > TH_SERVICE_INSTANCES_MAX)
        return th__err(err, TH_EINVAL, "instances", "%d is outside 1-%d", s->instances,
                       TH_SERVICE_INSTANCES_MAX);
    if (s->type < TH_SERVICE_ALWAYS || s->type > TH_SERVICE_EVENT)
        return th__err(err, TH_EINVAL, "type", "unknown type %d", (int)s->type);
    if (s->type == TH_SERVICE_PERIODIC) {
        if (s->interval_ms && s->cron)
            return th__err(err, TH_EINVAL, "cron", "set interval_ms or cron, not both");
        if (!s->interval_ms && !s->cron)
            return th__err(err, TH_EINVAL, "interval_ms",
                           "a periodic service needs interval_ms or cron");
        if (s->interval_ms && (rc = ms_range(err, "interval_ms", s->interval_ms, 10, 366 * DAY_MS)))
            return rc;
        if (s->cron) {
            th__cron c;
            if ((rc = th__cron_parse(&c, s->cron, err))) {
                if (strcmp(err ? err->field : "", "cron") != 0)
                    th__err_prefix(err, "cron");
                return rc;
            }
        }
    } else if (s->interval_ms || s->cron) {
        return th__err(err, TH_EINVAL, s->cron ? "cron" : "interval_ms",
                       "only periodic services have a schedule");
    }
    if (s->ndeps > SV_DEPS_MAX)
        return th__err(err, TH_EINVAL, "deps", "at most %d dependencies", SV_DEPS_MAX);
    if (s->ndeps && !s->deps)
        return th__err(err, TH_EINVAL, "deps", "deps is NULL but ndeps is %zu", s->ndeps);
    for (size_t i = 0; i < s->ndeps; i++) {
        char f[32];
        snprintf(f, sizeof f, "deps[%zu]", i);
        if (!th__sv_name_ok(s->deps[i]))
            return th__err(err, TH_EINVAL, f, "not a service name");
        if (strcmp(s->deps[i], s->name) == 0)
            return th__err(err, TH_EINVAL, f, "a service cannot depend on itself");
        for (size_t j = 0; j < i; j++)
            if (strcmp(s->deps[i], s->deps[j]) == 0)
                return th__err(err, TH_EINVAL, f, "\"%s\" is listed twice", s->deps[i]);
    }
    if (s->group && !th__sv_name_ok(s->group))
        return th__err(err, TH_EINVAL, "group", "not a group name");
    if (s->restart < TH_RESTART_DEFAULT || s->restart > TH_RESTART_NEVER)
        return th__err(err, TH_EINVAL, "restart", "unknown policy %d", (int)s->restart);
    if (s->restart == TH_RESTART_ALWAYS && s->type != TH_SERVICE_ALWAYS)
        return th__err(err, TH_EINVAL, "restart",
                       "restart always keeps a process running: use type always, or "
                       "on-failure");
    if ((rc = ms_range(err, "backoff_initial_ms", s->backoff_initial_ms, 10, DAY_MS)) ||
        (rc = ms_range(err, "backoff_max_ms", s->backoff_max_ms, s->backoff_initial_ms, DAY_MS)))
        return rc;
    if (s->max_restarts < -1 || s->max_restarts > 1000)
        return th__err(err, TH_EINVAL, "max_restarts", "%d is outside -1 (no limit) to 1000",
                       s->max_restarts);
    if ((rc = ms_range(err, "restart_window_ms", s->restart_window_ms, 1, 30 * DAY_MS)))
        return rc;
    if (s->stop_signal < 1 || s->stop_signal >= NSIG || s->stop_signal == SIGSTOP)
        return th__err(err, TH_EINVAL, "stop_signal", "%d is not a signal that ends a process",
                       s->stop_signal);
    if ((rc = ms_range(err, "stop_timeout_ms", s->stop_timeout_ms, 0, 3600 * 1000)) ||
        (rc = ms_range(err, "start_timeout_ms", s->start_timeout_ms, 1, DAY_MS)))
        return rc;
    if ((rc = check_health(&s->health, err)))
        return rc;
    if (s->notify != 0 && s->notify != 1)
        return th__err(err, TH_EINVAL, "notify", "must be 0 or 1");
    if (s->memory_limit && s->memory_limit < 4096)
        return th__err(err, TH_EINVAL, "memory_limit", "%zu bytes is below a page",
                       s->memory_limit);
    if (s->log_max_bytes < 1024)
        return th__err(err, TH_EINVAL, "log_max_bytes", "%zu is below 1024 bytes",
                       s->log_max_bytes);
    if (s->log_keep < 0 || s->log_keep > 100)
        return th__err(err, TH_EINVAL, "log_keep", "%d is outside 0-100", s->log_keep);
    return 0;
}

/* ---- copies ------------------------------------------------------------------ */

static int dup_str(const char **dst, const char *src)
{
    *dst = NULL;
    if (!src)
        return 0;
    *dst = th__strdup(src);
    return *dst ? 0 : -1;
}

static int dup_arr(const char *const **dst, const char *const *src, size_t n)
{
    *dst = NULL;
    if (!n)
        return 0;
    char **a = th__calloc(n + 1, sizeof *a);
    if (!a)
        return -1;
    *dst = (const char *const *)a;
    for (size_t i = 0; i < n; i++)
        if (!(a[i] = th__strdup(src[i])))
            return -1;
    return 0;
}

static void free_arr(const char *const *a, size_t n)
{
    if (!a)
        return;
    for (size_t i = 0; i < n; i++)
        th__free((void *)a[i]);
    th__free((void *)a);
}

void th__sv_spec_clear(th_service_spec *s)
{
    th__free((void *)s->name);
    free_arr(s->argv, s->argc);
    th__free((void *)s->command);
    th__free((void *)s->cwd);
    free_arr(s->env, s->nenv);
    th__free((void *)s->user);
    th__free((void *)s->cron);
    free_arr(s->deps, s->ndeps);
    th__free((void *)s->group);
    th__free((void *)s->health.command);
    th__free((void *)s->health.url);
    th__free((void *)s->health.host);
    memset(s, 0, sizeof *s);
}

int th__sv_spec_copy(th_service_spec *d, const th_service_spec *s)
{
    *d = *s;
    int bad = 0;
    bad |= dup_str(&d->name, s->name);
    bad |= dup_arr(&d->argv, s->argv, s->argc);
    bad |= dup_str(&d->command, s->command);
    bad |= dup_str(&d->cwd, s->cwd);
    bad |= dup_arr(&d->env, s->env, s->nenv);
    bad |= dup_str(&d->user, s->user);
    bad |= dup_str(&d->cron, s->cron);
    bad |= dup_arr(&d->deps, s->deps, s->ndeps);
    bad |= dup_str(&d->group, s->group);
    bad |= dup_str(&d->health.command, s->health.command);
    bad |= dup_str(&d->health.url, s->health.url);
    bad |= dup_str(&d->health.host, s->health.host);
    if (bad) {
        th__sv_spec_clear(d);
        return TH_ENOMEM;
    }
    return 0;
}
