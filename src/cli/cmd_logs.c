/*
 * `taskhive logs`: a task's execution log (GET /v1/tasks/{id}/logs). With
 * --follow it keeps printing new entries until the task ends, woken by the
 * task's events (GET /v1/events?task=ID) and, because writing a log entry
 * makes no event, by a periodic look. An argument that is not a task id is a
 * service's name: its captured output (cmd_services.c).
 */
#include "cli/cli.h"

#include <stdlib.h>
#include <string.h>

const char th__usage_logs[] =
    "usage: taskhive logs ID [--follow] [--after SEQ] [--limit N] [--json]\n"
    "       taskhive logs NAME [--follow] [--lines N] [--json]\n"
    "\n"
    "With a task ID (26 characters), prints the task's execution log: time,\n"
    "level, attempt, message and data.\n"
    "\n"
    "  --follow, -f  keep printing new entries until the task ends\n"
    "  --after SEQ   only entries after sequence number SEQ\n"
    "  --limit N     at most N entries (without --follow)\n"
    "  --json        print the server's answer; with --follow, one entry's JSON\n"
    "                per line\n"
    "\n"
    "With the NAME of a service, prints the last lines of its captured stdout and\n"
    "stderr (each with its time and stream).\n"
    "\n"
    "  --lines N     the last N lines, 1..10000 (default 100; with --follow, 0\n"
    "                prints only new lines); --limit N and -n N say the same\n"
    "  --follow, -f  then print new lines as they come (checked every second)\n"
    "                until Ctrl-C\n"
    "  --json        print the server's answer; with --follow, each line as a\n"
    "                JSON string, one per line\n";

#define FOLLOW_POLL_MS 1000

typedef struct logs {
    th__cli *cli;
    const char *id;
    const char *limit;
    int64_t after; /* the last seq printed */
    int follow;
    long status; /* of the last request */
} logs;

static void print_entry(const logs *l, const json_t *e)
{
    if (l->cli->json) {
        char *s = json_dumps(e, JSON_COMPACT);
        if (s)
            printf("%s\n", s);
        free(s);
        return;
    }
    char t[64], data[2048] = "";
    int64_t ms = th__jint(e, "time");
    th__fmt_time(ms, t, sizeof t);
    json_t *d = json_object_get(e, "data");
    if (d && !json_is_null(d))
        th__fmt_json(d, data, sizeof data);
    printf("%s.%03d %-5s [%lld] %s%s%s\n", t, (int)(ms % 1000),
           th__jstr(e, "level") ? th__jstr(e, "level") : "-", (long long)th__jint(e, "attempt"),
           th__jstr(e, "message") ? th__jstr(e, "message") : "", *data ? " " : "", data);
}

/* Fetches and prints the entries after l->after; 0 or an exit status. */
static int fetch(logs *l, int whole_answer)
{
    char after[32];
    snprintf(after, sizeof after, "%lld", (long long)l->after);
    th__sbuf path;
    th__sbuf_init(&path, 4096);
    th__task_path(&path, l->id, "/logs");
    th__sbuf_add_query(&path, "after", l->after > 0 ? after : NULL);
    th__sbuf_add_query(&path, "limit", l->limit);
    json_t *answer = NULL;
    int rc = th__http(l->cli, "GET", th__sbuf_str(&path), NULL, &answer, &l->status);
    th__sbuf_free(&path);
    if (rc != 0)
        return rc;
    if (whole_answer) {
        th__print_json(stdout, answer);
        json_decref(answer);
        return 0;
    }
    size_t i;
    json_t *e;
    if (!l->follow && !l->cli->json && json_array_size(json_object_get(answer, "logs")) == 0)
        fprintf(stderr, "no log entries\n");
    json_array_foreach(json_object_get(answer, "logs"), i, e)
    {
        int64_t seq = th__jint(e, "seq");
        if (seq > 0 && seq <= l->after)
            continue;
        print_entry(l, e);
        if (seq > l->after)
            l->after = seq;
    }
    fflush(stdout);
    json_decref(answer);
    return 0;
}

/* Whether the task ended; fetches what it logged first. */
static int fetch_and_check(logs *l)
{
    int rc = fetch(l, 0);
    if (rc != 0)
        return rc;
    th__sbuf path;
    th__sbuf_init(&path, 4096);
    th__task_path(&path, l->id, "");
    json_t *t = NULL;
    rc = th__http(l->cli, "GET", th__sbuf_str(&path), NULL, &t, NULL);
    th__sbuf_free(&path);
    if (rc != 0)
        return rc;
    int final = th__state_final(th__jstr(t, "state"));
    json_decref(t);
    if (final)
        return fetch(l, 0) == 0 ? TH_CLI_OK : TH_CLI_FAILED; /* entries logged at the end */
    return TH_SSE_CONTINUE;
}

static int on_open(void *ud, int reconnected)
{
    (void)reconnected;
    return fetch_and_check(ud);
}

static int on_event(void *ud, const th__sse_event *ev)
{
    logs *l = ud;
    if (strcmp(ev->type, "gap") == 0)
        return fetch_and_check(l);
    int rc = fetch(l, 0);
    if (rc != 0)
        return rc;
    if (th__state_final(th__jstr(ev->json, "state")))
        return fetch(l, 0) == 0 ? TH_CLI_OK : TH_CLI_FAILED;
    return TH_SSE_CONTINUE;
}

static int on_tick(void *ud)
{
    int rc = fetch(ud, 0);
    return rc != 0 ? rc : TH_SSE_CONTINUE;
}

/* Whether service `name` exists (asked quietly). */
static int service_exists(th__cli *cli, const char *name)
{
    th__sbuf path;
    th__sbuf_init(&path, 4096);
    th__sbuf_adds(&path, "/v1/services/"); /* a name needs no escaping (cmd_services.c) */
    th__sbuf_adds(&path, name);
    int quiet = cli->quiet;
    cli->quiet = 1;
    int rc = th__http(cli, "GET", th__sbuf_str(&path), NULL, NULL, NULL);
    cli->quiet = quiet;
    th__sbuf_free(&path);
    return rc == 0;
}

/* The first fetch of a task's log. When there is no such task but a service
 * of that name (a name can look like a task id), sets *service instead. */
static int first_fetch(logs *l, int whole_answer, int may_be_service, int *service)
{
    l->cli->quiet = 1;
    int rc = fetch(l, whole_answer);
    l->cli->quiet = 0;
    if (rc == 0)
        return 0;
    char msg[TH_CLI_ERRMSG];
    snprintf(msg, sizeof msg, "%s", l->cli->err);
    if (l->status == 404 && may_be_service && th__is_service_name(l->id) &&
        service_exists(l->cli, l->id)) {
        *service = 1;
        return 0;
    }
    return th__cli_fail(l->cli, rc, "%s", msg);
}

int th__cmd_logs(th__cli *cli, int argc, char **argv)
{
    enum { OPT_FOLLOW, OPT_AFTER, OPT_LIMIT, OPT_LINES };
    static const th__opt opts[] = {{"follow", 'f', 0, OPT_FOLLOW},
                                   {"after", 0, 1, OPT_AFTER},
                                   {"limit", 'n', 1, OPT_LIMIT},
                                   {"lines", 0, 1, OPT_LINES},
                                   {NULL, 0, 0, 0}};
    logs l;
    memset(&l, 0, sizeof l);
    l.cli = cli;
    th__args a;
    th__args_init(&a, cli, argc, argv, opts);
    const char *val, *lines = NULL;
    long long n, nlines = 100;
    int k, after_set = 0;
    while ((k = th__args_next(&a, &val)) != TH_ARG_END) {
        switch (k) {
        case TH_ARG_HELP:
            return th__print_usage(th__usage_logs);
        case TH_ARG_ERR:
            return TH_CLI_USAGE;
        case TH_ARG_POS:
            if (l.id)
                return th__cli_usage_error(cli, "unexpected argument '%s'", val);
            l.id = val;
            break;
        case OPT_FOLLOW:
            l.follow = 1;
            break;
        case OPT_AFTER:
            if (th__parse_uint(cli, "--after", val, (1LL << 53), &n) != 0)
                return TH_CLI_USAGE;
            l.after = n;
            after_set = 1;
            break;
        case OPT_LIMIT:
            if (th__parse_uint(cli, "--limit", val, 1000000, &n) != 0)
                return TH_CLI_USAGE;
            l.limit = val;
            break;
        case OPT_LINES:
            if (th__parse_uint(cli, "--lines", val, 10000, &n) != 0)
                return TH_CLI_USAGE;
            lines = val;
            nlines = n;
            break;
        }
    }
    if (!l.id)
        return th__cli_usage_error(cli,
                                   "missing task ID or service NAME (see 'taskhive logs --help')");
    int service = !th__is_task_id(l.id);
    if (service && !th__is_service_name(l.id))
        return th__cli_usage_error(
            cli, "'%s' is neither a task ID (26 characters) nor a service name", l.id);
    if (!service && lines) {
        /* A service's name may look like a task id; only a service has lines. */
        if (after_set || l.limit || !service_exists(cli, l.id))
            return th__cli_usage_error(cli, "--lines is for a service's log (a task's: --limit)");
        service = 1;
    }
    if (service) {
        if (after_set)
            return th__cli_usage_error(cli, "--after is for a task's log, not a service's");
        if (l.limit && lines)
            return th__cli_usage_error(cli, "give --lines or --limit, not both");
        if (l.limit && th__parse_uint(cli, "--limit", l.limit, 10000, &nlines) != 0)
            return TH_CLI_USAGE;
        if (nlines == 0 && !l.follow)
            return th__cli_usage_error(cli, "--lines must be 1..10000 (0 only with --follow)");
    }
    if (service)
        return th__service_logs(cli, l.id, nlines, l.follow);
    if (l.follow && l.limit)
        return th__cli_usage_error(cli, "--limit does not go with --follow");
    int may_be_service = !after_set && !l.limit;
    if (!l.follow) {
        int rc = first_fetch(&l, cli->json, may_be_service, &service);
        if (rc == 0 && service)
            return th__service_logs(cli, l.id, nlines, 0);
        return rc;
    }

    int rc = first_fetch(&l, 0, may_be_service, &service);
    if (rc != 0)
        return rc;
    if (service)
        return th__service_logs(cli, l.id, nlines, 1);
    th__sbuf path;
    th__sbuf_init(&path, 4096);
    th__sbuf_adds(&path, "/v1/events");
    th__sbuf_add_query(&path, "task", l.id);
    th__sse_handler h = {on_open, on_event, on_tick, NULL, &l, FOLLOW_POLL_MS};
    rc = th__sse_run(cli, th__sbuf_str(&path), &h);
    th__sbuf_free(&path);
    return rc;
}
