/*
 * `taskhive add` and `taskhive rm`: services added to and removed from the
 * daemon's supervisor at run time (POST /v1/services, DELETE
 * /v1/services/{name}; docs/API.md, "Services"). `add` builds the request
 * body from its options, checking every one locally first: a mistake is one
 * line on stderr and exit status 2, and nothing is sent.
 */
#include "cli/cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

const char th__usage_svc_add[] =
    "usage: taskhive add NAME [options] -- PROGRAM [ARGS...]\n"
    "       taskhive add NAME [options] --command \"SHELL LINE\"\n"
    "\n"
    "Adds service NAME to the daemon's supervisor and, unless --no-start, starts\n"
    "it (once its dependencies run). Prints its rows as 'taskhive ps NAME' does.\n"
    "The service lasts until the daemon stops: it is not written to the\n"
    "configuration file. Needs a token with the admin scope. Every option\n"
    "(--json too) goes before '--': what follows is the program's.\n"
    "\n"
    "  -- PROGRAM [ARGS...]       the program (looked up in PATH when it has no\n"
    "                             '/') and its arguments, run without a shell\n"
    "  --command LINE             a shell command line (/bin/sh -c) instead\n"
    "  --type T                   always (default), periodic, oneshot or event\n"
    "  --interval MS              periodic: run every MS milliseconds, or\n"
    "  --cron \"m h dom mon dow\"   periodic: run on this schedule (local time)\n"
    "  --restart R                always, on-failure or never (default: always\n"
    "                             for type always, never for the others)\n"
    "  --dep NAME                 start once service NAME runs (repeatable)\n"
    "  --env KEY=VALUE            an environment variable (repeatable)\n"
    "  --cwd DIR                  the working directory\n"
    "  --instances N              processes to run, 1..64 (default 1)\n"
    "  --max-restarts N           restarts within the restart window (a minute)\n"
    "                             before it is disabled (default 3; -1: no limit)\n"
    "  --stop-timeout MS          from the stop signal to SIGKILL (default 10000)\n"
    "  --memory-limit BYTES       restart it above this resident memory\n"
    "                             (suffix K, M or G for KiB, MiB, GiB)\n"
    "  --health-url URL           health check: GET URL answers 2xx\n"
    "  --health-address HOST:PORT health check: a TCP connection succeeds\n"
    "  --health-command CMD       health check: CMD (/bin/sh -c) exits 0\n"
    "  --no-start                 add it without starting it\n"
    "  --json                     print the server's answer\n";

const char th__usage_svc_rm[] =
    "usage: taskhive rm NAME [--json]\n"
    "\n"
    "Stops service NAME (its stop signal, then SIGKILL after its stop timeout)\n"
    "and removes it from the daemon's supervisor; prints \"removed NAME\". A\n"
    "service another one depends on is refused. A service of the configuration\n"
    "file comes back when the daemon restarts. Needs a token with the admin\n"
    "scope.\n";

#define MAX_MS (1LL << 53)
#define MAX_BYTES (1LL << 53)

/* Sets obj.key = v, taking the reference; 0 or an exit status. `v` is NULL
 * when jansson refused a string that is not UTF-8. */
static int put(th__cli *cli, json_t *obj, const char *key, json_t *v)
{
    if (!v)
        return th__cli_usage_error(cli, "the value of %s is not valid UTF-8", key);
    if (json_object_set_new(obj, key, v) != 0)
        return th__cli_usage_error(cli, "%s is not valid UTF-8", key);
    return 0;
}

/* Appends the string `s` to `arr`; 0 or an exit status. */
static int append(th__cli *cli, json_t *arr, const char *what, const char *s)
{
    json_t *v = json_string(s);
    if (!v)
        return th__cli_usage_error(cli, "%s '%s' is not valid UTF-8", what, s);
    return json_array_append_new(arr, v) == 0 ? 0
                                              : th__cli_fail(cli, TH_CLI_FAILED, "out of memory");
}

/* Whether `v` is one of the NULL-ended `words`. */
static int one_of(const char *v, const char *const *words)
{
    for (; *words; words++)
        if (strcmp(v, *words) == 0)
            return 1;
    return 0;
}

/* A whole number in [min, max] (min may be -1). */
static int parse_range(th__cli *cli, const char *what, const char *text, long long min,
                       long long max, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    int digit =
        (text[0] >= '0' && text[0] <= '9') || (text[0] == '-' && text[1] >= '0' && text[1] <= '9');
    if (!digit || *end != '\0' || errno != 0 || v < min || v > max)
        return th__cli_usage_error(cli, "%s must be a whole number %lld..%lld, not '%s'", what, min,
                                   max, text);
    *out = v;
    return 0;
}

/* "512", "64K", "512M", "2G" (KiB, MiB, GiB) into bytes. */
static int parse_bytes(th__cli *cli, const char *text, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    long long mul = 1;
    if (end != text && *end && !end[1]) {
        switch (*end) {
        case 'k':
        case 'K':
            mul = 1LL << 10;
            end++;
            break;
        case 'm':
        case 'M':
            mul = 1LL << 20;
            end++;
            break;
        case 'g':
        case 'G':
            mul = 1LL << 30;
            end++;
            break;
        }
    }
    if (text[0] < '0' || text[0] > '9' || *end != '\0' || errno != 0 || v < 0 ||
        v > MAX_BYTES / mul)
        return th__cli_usage_error(
            cli, "--memory-limit must be a number of bytes (e.g. 536870912 or 512M), not '%s'",
            text);
    *out = v * mul;
    return 0;
}

/* HOST:PORT with a port 1..65535. */
static int check_address(th__cli *cli, const char *text)
{
    const char *colon = strrchr(text, ':');
    long long port;
    char *end;
    if (colon && colon != text && colon[1] >= '0' && colon[1] <= '9') {
        errno = 0;
        port = strtoll(colon + 1, &end, 10);
        if (*end == '\0' && errno == 0 && port >= 1 && port <= 65535)
            return 0;
    }
    return th__cli_usage_error(cli, "--health-address must be HOST:PORT (port 1..65535), not '%s'",
                               text);
}

enum {
    OPT_COMMAND,
    OPT_TYPE,
    OPT_INTERVAL,
    OPT_CRON,
    OPT_RESTART,
    OPT_DEP,
    OPT_ENV,
    OPT_CWD,
    OPT_INSTANCES,
    OPT_MAX_RESTARTS,
    OPT_STOP_TIMEOUT,
    OPT_MEMORY_LIMIT,
    OPT_HEALTH_URL,
    OPT_HEALTH_ADDRESS,
    OPT_HEALTH_COMMAND,
    OPT_NO_START
};

/* One option into the body (deps, env and health are gathered apart). */
static int add_option(th__cli *cli, int id, const char *val, json_t *body, json_t *deps,
                      json_t *env, json_t *health)
{
    static const char *const types[] = {"always", "periodic", "oneshot", "event", NULL};
    static const char *const restarts[] = {"always", "on-failure", "never", NULL};
    long long n;
    int rc;
    switch (id) {
    case OPT_COMMAND:
        if (!*val)
            return th__cli_usage_error(cli, "--command must not be empty");
        return put(cli, body, "command", json_string(val));
    case OPT_TYPE:
        if (!one_of(val, types))
            return th__cli_usage_error(
                cli, "--type must be always, periodic, oneshot or event, not '%s'", val);
        return put(cli, body, "type", json_string(val));
    case OPT_INTERVAL:
        if ((rc = th__parse_uint(cli, "--interval", val, MAX_MS, &n)) != 0)
            return rc;
        return put(cli, body, "interval_ms", json_integer(n));
    case OPT_CRON:
        if (!*val)
            return th__cli_usage_error(cli, "--cron must not be empty");
        return put(cli, body, "cron", json_string(val));
    case OPT_RESTART:
        if (!one_of(val, restarts))
            return th__cli_usage_error(
                cli, "--restart must be always, on-failure or never, not '%s'", val);
        return put(cli, body, "restart", json_string(val));
    case OPT_DEP:
        if (!th__is_service_name(val))
            return th__cli_usage_error(cli, "--dep: '%s' is not a service name", val);
        return append(cli, deps, "--dep", val);
    case OPT_ENV: {
        const char *eq = strchr(val, '=');
        if (!eq || eq == val)
            return th__cli_usage_error(cli, "--env must be KEY=VALUE, not '%s'", val);
        char key[256];
        if ((size_t)(eq - val) >= sizeof key)
            return th__cli_usage_error(cli, "--env: the variable name is too long");
        memcpy(key, val, (size_t)(eq - val));
        key[eq - val] = '\0';
        return put(cli, env, key, json_string(eq + 1)); /* a later one wins */
    }
    case OPT_CWD:
        if (!*val)
            return th__cli_usage_error(cli, "--cwd must not be empty");
        return put(cli, body, "cwd", json_string(val));
    case OPT_INSTANCES:
        if ((rc = parse_range(cli, "--instances", val, 1, 64, &n)) != 0)
            return rc;
        return put(cli, body, "instances", json_integer(n));
    case OPT_MAX_RESTARTS:
        if ((rc = parse_range(cli, "--max-restarts", val, -1, 1000, &n)) != 0)
            return rc;
        return put(cli, body, "max_restarts", json_integer(n));
    case OPT_STOP_TIMEOUT:
        if ((rc = th__parse_uint(cli, "--stop-timeout", val, MAX_MS, &n)) != 0)
            return rc;
        return put(cli, body, "stop_timeout_ms", json_integer(n));
    case OPT_MEMORY_LIMIT:
        if ((rc = parse_bytes(cli, val, &n)) != 0)
            return rc;
        return put(cli, body, "memory_limit", json_integer(n));
    case OPT_HEALTH_URL:
    case OPT_HEALTH_ADDRESS:
    case OPT_HEALTH_COMMAND: {
        static const char *const kinds[][2] = {
            {"http", "url"}, {"tcp", "address"}, {"command", "command"}};
        const char *const *k = kinds[id - OPT_HEALTH_URL];
        if (json_object_get(health, "kind"))
            return th__cli_usage_error(
                cli, "give one of --health-url, --health-address and --health-command");
        if (!*val)
            return th__cli_usage_error(cli, "--health-%s must not be empty", k[1]);
        if (id == OPT_HEALTH_ADDRESS && (rc = check_address(cli, val)) != 0)
            return rc;
        if ((rc = put(cli, health, "kind", json_string(k[0]))) != 0)
            return rc;
        return put(cli, health, k[1], json_string(val));
    }
    case OPT_NO_START:
        return put(cli, body, "start", json_false());
    }
    return 0;
}

/* Parses the arguments into the request body; 0 or an exit status. */
static int build(th__cli *cli, int argc, char **argv, json_t *body, const char **name, int *help)
{
    static const th__opt opts[] = {
        {"command", 0, 1, OPT_COMMAND},
        {"type", 0, 1, OPT_TYPE},
        {"interval", 0, 1, OPT_INTERVAL},
        {"cron", 0, 1, OPT_CRON},
        {"restart", 0, 1, OPT_RESTART},
        {"dep", 0, 1, OPT_DEP},
        {"env", 0, 1, OPT_ENV},
        {"cwd", 0, 1, OPT_CWD},
        {"instances", 0, 1, OPT_INSTANCES},
        {"max-restarts", 0, 1, OPT_MAX_RESTARTS},
        {"stop-timeout", 0, 1, OPT_STOP_TIMEOUT},
        {"memory-limit", 0, 1, OPT_MEMORY_LIMIT},
        {"health-url", 0, 1, OPT_HEALTH_URL},
        {"health-address", 0, 1, OPT_HEALTH_ADDRESS},
        {"health-command", 0, 1, OPT_HEALTH_COMMAND},
        {"no-start", 0, 0, OPT_NO_START},
        {NULL, 0, 0, 0},
    };
    json_t *argv_json = json_array(), *deps = json_array(), *env = json_object(),
           *health = json_object();
    const char *val;
    int rc = 0, id;
    *name = NULL;
    if (!argv_json || !deps || !env || !health)
        rc = th__cli_fail(cli, TH_CLI_FAILED, "out of memory");
    th__args a;
    th__args_init(&a, cli, argc, argv, opts);
    while (rc == 0 && (id = th__args_next(&a, &val)) != TH_ARG_END) {
        if (id == TH_ARG_HELP) {
            *help = 1;
            break;
        } else if (id == TH_ARG_ERR) {
            rc = TH_CLI_USAGE;
        } else if (id == TH_ARG_POS && !*name && !a.only_pos) {
            *name = val;
        } else if (id == TH_ARG_POS && a.only_pos) {
            rc = append(cli, argv_json, "argument", val);
        } else if (id == TH_ARG_POS) {
            rc = th__cli_usage_error(cli,
                                     "unexpected argument '%s' (the program comes after '--': "
                                     "taskhive add NAME -- PROGRAM [ARGS...])",
                                     val);
        } else {
            rc = add_option(cli, id, val, body, deps, env, health);
        }
    }
    int has_command = json_object_get(body, "command") != NULL;
    if (rc != 0 || *help) {
        /* nothing more to check */
    } else if (!*name) {
        rc = th__cli_usage_error(cli, "missing service NAME (see 'taskhive add --help')");
    } else if (!th__is_service_name(*name)) {
        rc = th__cli_usage_error(cli, "'%s' is not a service name (1-64 of A-Z a-z 0-9 _ . : -)",
                                 *name);
    } else if (strcmp(*name, "all") == 0) {
        rc = th__cli_usage_error(cli, "'all' cannot name a service (it means every service)");
    } else if (has_command && json_array_size(argv_json) > 0) {
        rc = th__cli_usage_error(cli, "give either --command or '-- PROGRAM [ARGS...]', not both");
    } else if (!has_command && json_array_size(argv_json) == 0) {
        rc = th__cli_usage_error(cli, "missing the program: add '-- PROGRAM [ARGS...]' or "
                                      "--command LINE (see 'taskhive add --help')");
    } else if (json_array_size(argv_json) > 0 &&
               !*json_string_value(json_array_get(argv_json, 0))) {
        rc = th__cli_usage_error(cli, "the PROGRAM after '--' must not be empty");
    }
    if (rc == 0 && !*help) {
        rc = put(cli, body, "name", json_string(*name));
        if (rc == 0 && json_array_size(argv_json) > 0)
            rc = put(cli, body, "argv", json_incref(argv_json));
        if (rc == 0 && json_array_size(deps) > 0)
            rc = put(cli, body, "deps", json_incref(deps));
        if (rc == 0 && json_object_size(env) > 0)
            rc = put(cli, body, "env", json_incref(env));
        if (rc == 0 && json_object_size(health) > 0)
            rc = put(cli, body, "health", json_incref(health));
    }
    json_decref(argv_json);
    json_decref(deps);
    json_decref(env);
    json_decref(health);
    return rc;
}

int th__cmd_svc_add(th__cli *cli, int argc, char **argv)
{
    int help = 0;
    const char *name = NULL;
    json_t *body = json_object(), *answer = NULL;
    if (!body)
        return th__cli_fail(cli, TH_CLI_FAILED, "out of memory");
    int rc = build(cli, argc, argv, body, &name, &help);
    if (help) {
        json_decref(body);
        return th__print_usage(th__usage_svc_add);
    }
    if (rc != 0)
        goto done;
    th__sbuf path;
    th__sbuf_init(&path, 4096);
    th__service_path(&path, NULL, "");
    rc = th__http(cli, "POST", th__sbuf_str(&path), body, &answer, NULL);
    th__sbuf_free(&path);
    if (rc != 0)
        goto done;
    if (cli->json) {
        if (answer)
            th__print_json(stdout, answer);
    } else if (th__print_service_rows(answer, name) == 0) {
        printf("added %s\n", name);
    }
done:
    json_decref(answer);
    json_decref(body);
    return rc;
}

int th__cmd_svc_rm(th__cli *cli, int argc, char **argv)
{
    th__args a;
    th__args_init(&a, cli, argc, argv, NULL);
    const char *val, *name = NULL;
    int k;
    while ((k = th__args_next(&a, &val)) != TH_ARG_END) {
        if (k == TH_ARG_HELP)
            return th__print_usage(th__usage_svc_rm);
        if (k == TH_ARG_ERR)
            return TH_CLI_USAGE;
        if (name)
            return th__cli_usage_error(cli, "unexpected argument '%s' (one service at a time)",
                                       val);
        name = val;
    }
    if (!name)
        return th__cli_usage_error(cli, "missing service NAME (see 'taskhive rm --help')");
    if (strcmp(name, "all") == 0)
        return th__cli_usage_error(cli, "give one service NAME, not 'all'");
    if (!th__is_service_name(name))
        return th__cli_usage_error(cli, "'%s' is not a service name", name);
    th__sbuf path;
    th__sbuf_init(&path, 4096);
    th__service_path(&path, name, "");
    json_t *answer = NULL;
    int rc = th__http(cli, "DELETE", th__sbuf_str(&path), NULL, &answer, NULL);
    th__sbuf_free(&path);
    if (rc != 0)
        return rc;
    if (cli->json) {
        if (answer)
            th__print_json(stdout, answer);
        else
            printf("{\"name\": \"%s\", \"removed\": true}\n", name);
    } else {
        printf("removed %s\n", name);
    }
    json_decref(answer);
    return TH_CLI_OK;
}
