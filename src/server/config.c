/*
 * Configuration loading; see config.h. The INI grammar is inih's; this file
 * only knows which sections and keys exist and how to read their values.
 *
 *   [server]   listen, data_dir, store, durability, log_level, max_body,
 *              max_batch_body, max_batch, max_queued, max_connections, request_timeout,
 *              drain_grace, event_buffer
 *   [pool]     enabled, mode, min_workers, max_workers, max_queue,
 *              backpressure_threshold, task_timeout, timeout_grace,
 *              health_check_interval, worker_idle_timeout,
 *              worker_memory_limit, max_retries, retry_delay, autoscale,
 *              scale_up_threshold, scale_down_threshold, scale_up_cooldown,
 *              scale_down_cooldown, recycle_after, lease, metrics_interval,
 *              batch
 *   [handlers] any key = value, passed to th_pool_set_config
 *   [auth]     token.NAME = SHA256HEX:scope[,scope...]
 *   [supervisor], [group.NAME], [service.NAME]: see svc_config.c
 *
 * Durations take ms, s, m or h (a bare number is ms); sizes take K, M, G
 * (powers of 1024; a bare number is bytes); booleans true/false/yes/no/on/off.
 */
#include "server/config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "server/config_values.h"
#include "server/svc_config.h"

typedef struct parse {
    th__config *c;
    char err[300]; /* the first problem, without the line */
} parse;

static int fail(parse *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(parse *p, const char *fmt, ...)
{
    if (!p->err[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->err, sizeof p->err, fmt, ap);
        va_end(ap);
    }
    return 0;
}

int th__parse_int(const char *v, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < min || x > max)
        return -1;
    *out = x;
    return 0;
}

int th__parse_double(const char *v, double min, double max, double *out)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !(x >= min && x <= max))
        return -1;
    *out = x;
    return 0;
}

int th__parse_duration(const char *v, int64_t *out)
{
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || x < 0)
        return -1;
    long long mul = 1;
    if (!*end || strcmp(end, "ms") == 0)
        mul = 1;
    else if (strcmp(end, "s") == 0)
        mul = 1000;
    else if (strcmp(end, "m") == 0)
        mul = 60000;
    else if (strcmp(end, "h") == 0)
        mul = 3600000;
    else
        return -1;
    if (x > (long long)(INT64_MAX / mul / 2))
        return -1;
    *out = (int64_t)(x * mul);
    return 0;
}

int th__parse_size(const char *v, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || end == v || v[0] == '-')
        return -1;
    unsigned long long mul = 1;
    if (!*end || strcmp(end, "B") == 0)
        mul = 1;
    else if (strcasecmp(end, "K") == 0 || strcasecmp(end, "KiB") == 0)
        mul = 1ULL << 10;
    else if (strcasecmp(end, "M") == 0 || strcasecmp(end, "MiB") == 0)
        mul = 1ULL << 20;
    else if (strcasecmp(end, "G") == 0 || strcasecmp(end, "GiB") == 0)
        mul = 1ULL << 30;
    else
        return -1;
    if (x > (1ULL << 50) / mul)
        return -1;
    *out = (size_t)(x * mul);
    return 0;
}

int th__parse_bool(const char *v, int *out)
{
    static const char *yes[] = {"true", "yes", "on", "1"}, *no[] = {"false", "no", "off", "0"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return -1;
}

/* HOST:PORT, [V6]:PORT or :PORT. */
static int parse_listen(th__config *c, const char *v)
{
    const char *colon = strrchr(v, ':');
    if (!colon)
        return -1;
    size_t hl = (size_t)(colon - v);
    const char *h = v;
    if (hl >= 2 && v[0] == '[' && v[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    long port;
    if (hl >= sizeof c->host || th__parse_int(colon + 1, 0, 65535, &port))
        return -1;
    if (hl == 0) {
        h = "127.0.0.1";
        hl = strlen(h);
    }
    memcpy(c->host, h, hl);
    c->host[hl] = '\0';
    c->port = (int)port;
    return 0;
}

int th__config_keep(char **slot, const char *v)
{
    char *d = th__strdup(v);
    if (!d)
        return -1;
    th__free(*slot);
    *slot = d;
    return 0;
}

static int server_key(parse *p, const char *k, const char *v)
{
    th__config *c = p->c;
    long n;
    if (strcmp(k, "listen") == 0) {
        if (parse_listen(c, v))
            return fail(p, "listen: '%s' is not HOST:PORT%s", v, "");
    } else if (strcmp(k, "data_dir") == 0) {
        if (!*v || th__config_keep(&c->data_dir, v))
            return fail(p, "data_dir: must be a directory path%s%s", "", "");
    } else if (strcmp(k, "store") == 0) {
        if (!*v || th__config_keep(&c->store, v))
            return fail(p, "store: must be memory, sqlite:PATH, a .db path or postgres://...%s%s",
                        "", "");
    } else if (strcmp(k, "durability") == 0) {
        if (strcmp(v, "normal") == 0)
            c->durability = TH_DURABILITY_NORMAL;
        else if (strcmp(v, "full") == 0)
            c->durability = TH_DURABILITY_FULL;
        else
            return fail(p, "durability: '%s' must be normal or full%s", v, "");
    } else if (strcmp(k, "log_level") == 0) {
        if (th_log_level_parse(v, &c->log_level))
            return fail(p, "log_level: '%s' must be debug, info, warn or error%s", v, "");
    } else if (strcmp(k, "max_body") == 0) {
        if (th__parse_size(v, &c->max_body) || c->max_body < 1024)
            return fail(p, "max_body: '%s' must be a size of at least 1K%s", v, "");
    } else if (strcmp(k, "max_batch_body") == 0) {
        if (th__parse_size(v, &c->max_batch_body) || c->max_batch_body < 1024)
            return fail(p, "max_batch_body: '%s' must be a size of at least 1K%s", v, "");
    } else if (strcmp(k, "max_batch") == 0) {
        if (th__parse_int(v, 1, 100000, &n))
            return fail(p, "max_batch: '%s' must be 1..100000%s", v, "");
        c->max_batch = (int)n;
    } else if (strcmp(k, "max_queued") == 0) {
        if (th__parse_size(v, &c->max_queued))
            return fail(p, "max_queued: '%s' must be a count (0: no limit)", v);
    } else if (strcmp(k, "max_connections") == 0) {
        if (th__parse_int(v, 1, 1000000, &n))
            return fail(p, "max_connections: '%s' must be 1..1000000", v);
        c->max_connections = (size_t)n;
    } else if (strcmp(k, "request_timeout") == 0) {
        int64_t ms;
        if (th__parse_duration(v, &ms) || ms < 1000)
            return fail(p, "request_timeout: '%s' must be a duration of at least 1s%s", v, "");
        c->request_timeout_s = (int)(ms / 1000);
    } else if (strcmp(k, "drain_grace") == 0) {
        if (th__parse_duration(v, &c->drain_grace_ms))
            return fail(p, "drain_grace: '%s' is not a duration%s", v, "");
    } else if (strcmp(k, "event_buffer") == 0) {
        if (th__parse_int(v, 16, 10000000, &n))
            return fail(p, "event_buffer: '%s' must be 16..10000000%s", v, "");
        c->event_buffer = (size_t)n;
    } else {
        return fail(p, "unknown key '%s' in [server]%s", k, "");
    }
    return 1;
}

static int pool_key(parse *p, const char *k, const char *v)
{
    th_pool_options *o = &p->c->pool;
    long n;
    int64_t ms;
    double d;
    size_t sz;
#define DURATION(name, field)                                                                      \
    if (strcmp(k, name) == 0) {                                                                    \
        if (th__parse_duration(v, &ms))                                                            \
            return fail(p, name ": '%s' is not a duration (e.g. 500ms, 30s, 5m)%s", v, "");        \
        o->field = ms;                                                                             \
        return 1;                                                                                  \
    }
#define INT(name, field, lo, hi)                                                                   \
    if (strcmp(k, name) == 0) {                                                                    \
        if (th__parse_int(v, lo, hi, &n))                                                          \
            return fail(p, name ": '%s' must be an integer in " #lo ".." #hi "%s", v, "");         \
        o->field = (int)n;                                                                         \
        return 1;                                                                                  \
    }
#define FRACTION(name, field)                                                                      \
    if (strcmp(k, name) == 0) {                                                                    \
        if (th__parse_double(v, 0, 1, &d))                                                         \
            return fail(p, name ": '%s' must be a number in 0..1%s", v, "");                       \
        o->field = d;                                                                              \
        return 1;                                                                                  \
    }
    if (strcmp(k, "enabled") == 0) {
        if (th__parse_bool(v, &p->c->pool_enabled))
            return fail(p, "enabled: '%s' must be true or false%s", v, "");
        return 1;
    }
    if (strcmp(k, "mode") == 0) {
        if (strcmp(v, "threads") == 0)
            o->mode = TH_POOL_THREADS;
        else if (strcmp(v, "processes") == 0)
            o->mode = TH_POOL_PROCESSES;
        else
            return fail(p, "mode: '%s' must be threads or processes%s", v, "");
        return 1;
    }
    if (strcmp(k, "autoscale") == 0) {
        if (th__parse_bool(v, &o->autoscale))
            return fail(p, "autoscale: '%s' must be true or false%s", v, "");
        return 1;
    }
    if (strcmp(k, "max_queue") == 0) {
        if (th__parse_size(v, &sz) || sz < 1)
            return fail(p, "max_queue: '%s' must be a positive count%s", v, "");
        o->max_queue = sz;
        return 1;
    }
    if (strcmp(k, "worker_memory_limit") == 0) {
        if (th__parse_size(v, &sz))
            return fail(p, "worker_memory_limit: '%s' is not a size (e.g. 512M)%s", v, "");
        o->worker_memory_limit = sz;
        return 1;
    }
    INT("min_workers", min_workers, 0, 1024)
    INT("max_workers", max_workers, 1, 1024)
    INT("max_retries", max_retries, 0, 1000)
    INT("recycle_after", recycle_after, 0, 100000000)
    INT("batch", batch, 1, 64)
    FRACTION("backpressure_threshold", backpressure_threshold)
    FRACTION("scale_up_threshold", scale_up_threshold)
    FRACTION("scale_down_threshold", scale_down_threshold)
    DURATION("task_timeout", task_timeout_ms)
    DURATION("timeout_grace", timeout_grace_ms)
    DURATION("health_check_interval", health_check_interval_ms)
    DURATION("worker_idle_timeout", worker_idle_timeout_ms)
    DURATION("retry_delay", retry_delay_ms)
    DURATION("scale_up_cooldown", scale_up_cooldown_ms)
    DURATION("scale_down_cooldown", scale_down_cooldown_ms)
    DURATION("lease", lease_ms)
    DURATION("metrics_interval", metrics_interval_ms)
#undef DURATION
#undef INT
#undef FRACTION
    return fail(p, "unknown key '%s' in [pool]%s", k, "");
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

static int auth_key(parse *p, const char *k, const char *v)
{
    th__config *c = p->c;
    if (strncmp(k, "token.", 6) != 0 || !k[6] || strlen(k + 6) >= sizeof c->tokens->name)
        return fail(p, "unknown key '%s' in [auth] (use token.NAME = SHA256HEX:scopes)%s", k, "");
    th__token t;
    memset(&t, 0, sizeof t);
    snprintf(t.name, sizeof t.name, "%s", k + 6);
    const char *colon = strchr(v, ':');
    if (!colon || colon - v != 64)
        return fail(p, "%s: value must be the token's SHA-256 in hex, ':', and scopes%s", k, "");
    for (int i = 0; i < 32; i++) {
        int hi = hexval(v[2 * i]), lo = hexval(v[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return fail(p, "%s: the SHA-256 must be 64 hex digits%s", k, "");
        t.hash[i] = (unsigned char)(hi << 4 | lo);
    }
    char scopes[128];
    snprintf(scopes, sizeof scopes, "%s", colon + 1);
    for (char *s = scopes, *next; s && *s; s = next) {
        next = strchr(s, ',');
        if (next)
            *next++ = '\0';
        if (strcmp(s, "read") == 0)
            t.scopes |= TH_SCOPE_READ;
        else if (strcmp(s, "submit") == 0)
            t.scopes |= TH_SCOPE_SUBMIT;
        else if (strcmp(s, "worker") == 0)
            t.scopes |= TH_SCOPE_WORKER;
        else if (strcmp(s, "admin") == 0)
            t.scopes |= TH_SCOPE_ADMIN;
        else
            return fail(p, "%s: unknown scope '%s' (read, submit, worker, admin)", k, s);
    }
    if (!t.scopes)
        return fail(p, "%s: give at least one scope%s", k, "");
    th__token *v2 = th__realloc(c->tokens, (c->ntokens + 1) * sizeof *v2);
    if (!v2)
        return fail(p, "out of memory%s%s", "", "");
    c->tokens = v2;
    c->tokens[c->ntokens++] = t;
    return 1;
}

static int handler_key(parse *p, const char *k, const char *v)
{
    th__config *c = p->c;
    th__kv *kv = th__realloc(c->handlers, (c->nhandlers + 1) * sizeof *kv);
    if (!kv)
        return fail(p, "out of memory%s%s", "", "");
    c->handlers = kv;
    kv[c->nhandlers].key = th__strdup(k);
    kv[c->nhandlers].value = th__strdup(v);
    if (!kv[c->nhandlers].key || !kv[c->nhandlers].value) {
        th__free(kv[c->nhandlers].key);
        th__free(kv[c->nhandlers].value);
        return fail(p, "out of memory%s%s", "", "");
    }
    c->nhandlers++;
    return 1;
}

static int on_ini(void *user, const char *section, const char *name, const char *value)
{
    parse *p = user;
    if (p->err[0])
        return 0;
    if (!name) /* a section line alone */
        return 1;
    if (strcmp(section, "server") == 0)
        return server_key(p, name, value);
    if (strcmp(section, "pool") == 0)
        return pool_key(p, name, value);
    if (strcmp(section, "auth") == 0)
        return auth_key(p, name, value);
    if (strcmp(section, "handlers") == 0)
        return handler_key(p, name, value);
    if (strcmp(section, "supervisor") == 0 || strncmp(section, "service.", 8) == 0 ||
        strncmp(section, "group.", 6) == 0) {
        char e[300];
        if (!th__svc_config_key(p->c, section, name, value, 0, e, sizeof e))
            return fail(p, "%s", e);
        return 1;
    }
    if (strcmp(section, "llm") == 0 || strcmp(section, "prices") == 0 ||
        strncmp(section, "provider.", 9) == 0 || strncmp(section, "agent.", 6) == 0) {
        char e[300];
        if (!th__llm_config_key(&p->c->llm, section, name, value, e, sizeof e))
            return fail(p, "%s", e);
        return 1;
    }
    return fail(p, "unknown section [%s]%s", section, "");
}

static void defaults(th__config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->host, sizeof c->host, "127.0.0.1");
    c->port = 7070;
    c->durability = TH_DURABILITY_NORMAL;
    c->log_level = TH_LOG_INFO;
    c->max_body = 4 << 20;
    c->max_batch_body = 16 << 20;
    c->max_batch = 1000;
    c->request_timeout_s = 60;
    c->max_connections = 1024;
    c->max_queued = 1000000;
    c->drain_grace_ms = 10000;
    c->event_buffer = 10000;
    c->pool_enabled = 1;
    th_pool_options_init(&c->pool);
}

static const char usage[] =
    "usage: taskhive serve [options]\n"
    "  --config FILE       INI configuration (also TASKHIVE_CONFIG)\n"
    "  --listen HOST:PORT  address to listen on (default 127.0.0.1:7070; port 0 = any)\n"
    "  --data-dir DIR      where the SQLite file lives (default ./taskhive-data)\n"
    "  --store URI         memory, sqlite:PATH, PATH.db or postgres://USER@HOST/DB\n"
    "                      (default sqlite in the data dir)\n"
    "  --log-level LEVEL   debug, info, warn or error\n"
    "  --port-file FILE    write the bound port there once listening\n"
    "  --check-config      validate the configuration and exit\n"
    "  --help              this text\n"
    "Environment: TASKHIVE_CONFIG, TASKHIVE_LISTEN, TASKHIVE_DATA_DIR, TASKHIVE_STORE,\n"
    "TASKHIVE_LOG_LEVEL override the file; flags override both. DATABASE_URL, when it\n"
    "is a postgres:// uri, is the store unless TASKHIVE_STORE or --store names one.\n";

int th__config_load(th__config *c, int argc, char **argv, char *err, size_t errlen)
{
    defaults(c);
    const char *file = getenv("TASKHIVE_CONFIG");
    /* First pass: --config and --help, so the file comes before the flags. */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage, stdout);
            return 1;
        }
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            file = argv[++i];
    }
    parse p = {.c = c};
    if (file && *file) {
        c->file = th__strdup(file);
        int line = ini_parse(file, on_ini, &p);
        if (line < 0) {
            snprintf(err, errlen, "%s: cannot read: %s", file, strerror(errno));
            return -1;
        }
        if (line > 0 || p.err[0]) {
            snprintf(err, errlen, "%s:%d: %s", file, line,
                     p.err[0] ? p.err : "syntax error (expected [section] or key = value)");
            return -1;
        }
    }
    struct {
        const char *env, *section, *key;
    } envs[] = {{"TASKHIVE_LISTEN", "server", "listen"},
                {"TASKHIVE_DATA_DIR", "server", "data_dir"},
                {"DATABASE_URL", "server", "store"},
                {"TASKHIVE_STORE", "server", "store"},
                {"TASKHIVE_LOG_LEVEL", "server", "log_level"}};
    for (size_t i = 0; i < sizeof envs / sizeof envs[0]; i++) {
        const char *v = getenv(envs[i].env);
        /* The conventional variable of hosted PostgreSQL; other databases'
         * uris in it are not ours. */
        if (v && strcmp(envs[i].env, "DATABASE_URL") == 0 && strncmp(v, "postgres://", 11) != 0 &&
            strncmp(v, "postgresql://", 13) != 0)
            continue;
        if (v && *v && !on_ini(&p, envs[i].section, envs[i].key, v)) {
            snprintf(err, errlen, "%s: %s", envs[i].env, p.err);
            return -1;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        const char *key = NULL;
        if (strcmp(a, "--check-config") == 0) {
            c->check_only = 1;
            continue;
        }
        if (strcmp(a, "--config") == 0) {
            i++;
            continue;
        }
        if (strcmp(a, "--listen") == 0)
            key = "listen";
        else if (strcmp(a, "--data-dir") == 0)
            key = "data_dir";
        else if (strcmp(a, "--store") == 0)
            key = "store";
        else if (strcmp(a, "--log-level") == 0)
            key = "log_level";
        else if (strcmp(a, "--port-file") != 0) {
            snprintf(err, errlen, "unknown option '%s' (see taskhive serve --help)", a);
            return -2;
        }
        if (!v) {
            snprintf(err, errlen, "%s needs a value", a);
            return -2;
        }
        i++;
        if (!key) {
            if (th__config_keep(&c->port_file, v)) {
                snprintf(err, errlen, "out of memory");
                return -1;
            }
        } else if (!on_ini(&p, "server", key, v)) {
            snprintf(err, errlen, "%s: %s", a, p.err);
            return -2;
        }
    }
    if (!c->data_dir && th__config_keep(&c->data_dir, "taskhive-data")) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (th__svc_config_finish(c, err, errlen) != 0) {
        char msg[600];
        snprintf(msg, sizeof msg, "%s: %s", file ? file : "configuration", err);
        snprintf(err, errlen, "%s", msg);
        return -1;
    }
    if (th__llm_config_finish(&c->llm, err, errlen) != 0) {
        char msg[600];
        snprintf(msg, sizeof msg, "%s: %s", file ? file : "configuration", err);
        snprintf(err, errlen, "%s", msg);
        return -1;
    }
    th_error perr;
    if (th_pool_options_check(&c->pool, &perr)) {
        snprintf(err, errlen, "%s: [pool] %s", file ? file : "configuration", perr.message);
        return -1;
    }
    return 0;
}

void th__config_free(th__config *c)
{
    th__svc_config_free(c);
    th__llm_config_free(&c->llm);
    th__free(c->file);
    th__free(c->data_dir);
    th__free(c->store);
    th__free(c->port_file);
    for (size_t i = 0; i < c->nhandlers; i++) {
        th__free(c->handlers[i].key);
        th__free(c->handlers[i].value);
    }
    th__free(c->handlers);
    th__free(c->tokens);
    memset(c, 0, sizeof *c);
}

int th__config_loopback(const th__config *c)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (strcmp(c->host, "localhost") == 0)
        return 1;
    if (inet_pton(AF_INET, c->host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, c->host, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6);
    return 0;
}
