/*
 * The task verbs that are one request each: ls, show, cancel, retry, result
 * and graph. Each prints a table or "key: value" lines for people, or the
 * server's JSON with --json.
 */
#include "cli/cli.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char th__usage_ls[] =
    "usage: taskhive ls [--queue Q] [--state S] [--limit N] [--after ID] [--json]\n"
    "\n"
    "Lists tasks in id (creation) order: ID QUEUE STATE PRI ATTEMPT AGE ERROR.\n"
    "\n"
    "  --queue Q    only tasks of queue Q\n"
    "  --state S    only tasks in state S (pending, scheduled, blocked, running,\n"
    "               completed, failed, cancelled, timeout, expired)\n"
    "  --limit N    at most N tasks, 1..1000 (default 100)\n"
    "  --after ID   the page after task ID (printed when there are more)\n"
    "  --json       print the server's answer\n";

const char th__usage_show[] = "usage: taskhive show ID [--json]\n"
                              "\n"
                              "Shows one task: its fields, progress, error and result.\n";

const char th__usage_cancel[] =
    "usage: taskhive cancel ID [--reason TEXT] [--json]\n"
    "\n"
    "Cancels a task. A waiting task is cancelled at once; a running one is asked\n"
    "to stop, and its worker is told at its next heartbeat.\n";

const char th__usage_retry[] = "usage: taskhive retry ID [--json]\n"
                               "\n"
                               "Runs a failed, cancelled, timed-out or expired task again.\n";

const char th__usage_result[] =
    "usage: taskhive result ID [--json]\n"
    "\n"
    "Prints the result of a completed task as JSON (exit status 1 when the task\n"
    "has not completed). --json prints the server's whole answer.\n";

const char th__usage_graph[] =
    "usage: taskhive graph ID [--json]\n"
    "\n"
    "Prints the task and, as an indented tree, every task it depends on\n"
    "(transitively), with their states and errors.\n";

/* Parses "VERB ID [options]" where the only option is `opt` (may be NULL,
 * its value in *opt_val). Returns 0, TH_ARG_HELP or an exit status. */
static int parse_id(th__cli *cli, int argc, char **argv, const char *opt, const char **id,
                    const char **opt_val)
{
    th__opt opts[2] = {{opt, 0, 1, 0}, {NULL, 0, 0, 0}};
    th__args a;
    th__args_init(&a, cli, argc, argv, opt ? opts : NULL);
    const char *val;
    int k;
    *id = NULL;
    while ((k = th__args_next(&a, &val)) != TH_ARG_END) {
        if (k == TH_ARG_HELP)
            return TH_ARG_HELP;
        if (k == TH_ARG_ERR)
            return TH_CLI_USAGE;
        if (k == TH_ARG_POS) {
            if (*id)
                return th__cli_usage_error(cli, "unexpected argument '%s'", val);
            *id = val;
        } else {
            *opt_val = val;
        }
    }
    if (!*id)
        return th__cli_usage_error(cli, "missing task ID (see 'taskhive %s --help')", cli->verb);
    if (!**id)
        return th__cli_usage_error(cli, "the task ID is empty");
    return 0;
}

/* GET or POST /v1/tasks/ID<suffix>; 0 with *out, or an exit status. */
static int task_call(th__cli *cli, const char *method, const char *id, const char *suffix,
                     json_t *body, json_t **out)
{
    th__sbuf path;
    th__sbuf_init(&path, 4096);
    th__task_path(&path, id, suffix);
    int rc = th__http(cli, method, th__sbuf_str(&path), body, out, NULL);
    th__sbuf_free(&path);
    return rc;
}

/* ---- ls ------------------------------------------------------------------ */

int th__cmd_ls(th__cli *cli, int argc, char **argv)
{
    enum { OPT_QUEUE, OPT_STATE, OPT_LIMIT, OPT_AFTER };
    static const th__opt opts[] = {{"queue", 'q', 1, OPT_QUEUE},
                                   {"state", 's', 1, OPT_STATE},
                                   {"limit", 'n', 1, OPT_LIMIT},
                                   {"after", 0, 1, OPT_AFTER},
                                   {NULL, 0, 0, 0}};
    const char *queue = NULL, *state = NULL, *limit = NULL, *after = NULL, *val;
    long long n;
    int k;
    th__args a;
    th__args_init(&a, cli, argc, argv, opts);
    while ((k = th__args_next(&a, &val)) != TH_ARG_END) {
        switch (k) {
        case TH_ARG_HELP:
            return th__print_usage(th__usage_ls);
        case TH_ARG_ERR:
            return TH_CLI_USAGE;
        case TH_ARG_POS:
            return th__cli_usage_error(cli, "unexpected argument '%s'", val);
        case OPT_QUEUE:
            queue = val;
            break;
        case OPT_STATE:
            state = val;
            break;
        case OPT_LIMIT:
            if (th__parse_uint(cli, "--limit", val, 1000, &n) != 0)
                return TH_CLI_USAGE;
            if (n < 1)
                return th__cli_usage_error(cli, "--limit must be 1..1000");
            limit = val;
            break;
        case OPT_AFTER:
            after = val;
            break;
        }
    }
    th__sbuf path;
    th__sbuf_init(&path, 8192);
    th__sbuf_adds(&path, "/v1/tasks");
    th__sbuf_add_query(&path, "queue", queue);
    th__sbuf_add_query(&path, "state", state);
    th__sbuf_add_query(&path, "limit", limit);
    th__sbuf_add_query(&path, "after", after);
    json_t *answer = NULL;
    int rc = th__http(cli, "GET", th__sbuf_str(&path), NULL, &answer, NULL);
    th__sbuf_free(&path);
    if (rc != 0)
        return rc;
    if (cli->json) {
        th__print_json(stdout, answer);
        json_decref(answer);
        return TH_CLI_OK;
    }
    static const char *const hdr[] = {"ID", "QUEUE", "STATE", "PRI", "ATTEMPT", "AGE", "ERROR"};
    th__table *t = th__table_new(7, hdr);
    if (!t) {
        json_decref(answer);
        return th__cli_fail(cli, TH_CLI_FAILED, "out of memory");
    }
    th__table_align_right(t, 3);
    th__table_align_right(t, 4);
    th__table_align_right(t, 5);
    int64_t now = th__now_ms();
    size_t i;
    json_t *task;
    json_array_foreach(json_object_get(answer, "tasks"), i, task)
    {
        char pri[24], att[24], age[24], err[200], full[600];
        snprintf(pri, sizeof pri, "%lld", (long long)th__jint(task, "priority"));
        snprintf(att, sizeof att, "%lld", (long long)th__jint(task, "attempt"));
        th__fmt_duration(now - th__jint(task, "created_at"), age, sizeof age);
        json_t *e = json_object_get(task, "error");
        th__fmt_json(e, full, sizeof full);
        th__fmt_clip(full, 60, err, sizeof err);
        const char *row[] = {th__jstr(task, "id"),
                             th__jstr(task, "queue"),
                             th__jstr(task, "state"),
                             pri,
                             att,
                             age,
                             json_is_null(e) ? "" : err};
        th__table_add(t, row);
    }
    if (th__table_rows(t) == 0) {
        fprintf(stderr, "no tasks\n");
    } else {
        th__table_emit(t);
    }
    const char *next = th__jstr(answer, "next");
    if (next)
        fprintf(stderr, "more: taskhive ls --after %s\n", next);
    th__table_free(t);
    json_decref(answer);
    return TH_CLI_OK;
}

/* ---- show ---------------------------------------------------------------- */

static void kv(const char *key, const char *value)
{
    printf("%-15s %s\n", key, value && *value ? value : "-");
}

static void kv_time(const char *key, int64_t ms, int64_t now)
{
    char t[64], d[32], line[128];
    if (ms <= 0) {
        kv(key, "-");
        return;
    }
    th__fmt_time(ms, t, sizeof t);
    if (ms <= now) {
        th__fmt_duration(now - ms, d, sizeof d);
        snprintf(line, sizeof line, "%s (%s ago)", t, d);
    } else {
        th__fmt_duration(ms - now, d, sizeof d);
        snprintf(line, sizeof line, "%s (in %s)", t, d);
    }
    kv(key, line);
}

static void kv_json(const char *key, const json_t *v, size_t max)
{
    char buf[4096], clip[4096];
    th__fmt_json(v, buf, sizeof buf);
    th__fmt_clip(buf, max, clip, sizeof clip);
    kv(key, clip);
}

static void print_task(const json_t *t)
{
    int64_t now = th__now_ms();
    char line[1024], a[64], b[64];
    kv("id:", th__jstr(t, "id"));
    kv("queue:", th__jstr(t, "queue"));
    kv("state:", th__jstr(t, "state"));
    snprintf(line, sizeof line, "%lld", (long long)th__jint(t, "priority"));
    kv("priority:", line);
    json_t *retry = json_object_get(t, "retry");
    snprintf(line, sizeof line, "%lld of %lld", (long long)th__jint(t, "attempt"),
             (long long)th__jint(retry, "max_retries") + 1);
    kv("attempt:", line);
    kv("worker:", th__jstr(t, "worker"));
    json_t *p = json_object_get(t, "progress");
    if (json_is_object(p)) {
        char bar[64];
        th__fmt_bar(th__jnum(p, "percent"), 20, bar, sizeof bar);
        int n = snprintf(line, sizeof line, "%s %.0f%%", bar, th__jnum(p, "percent"));
        if (th__jint(p, "total_steps") > 0 && n > 0 && (size_t)n < sizeof line)
            n += snprintf(line + n, sizeof line - (size_t)n, " (step %lld/%lld)",
                          (long long)th__jint(p, "step"), (long long)th__jint(p, "total_steps"));
        if (th__jstr(p, "message") && n > 0 && (size_t)n < sizeof line)
            snprintf(line + n, sizeof line - (size_t)n, " %s", th__jstr(p, "message"));
        kv("progress:", line);
    } else {
        kv("progress:", "-");
    }
    kv_time("created:", th__jint(t, "created_at"), now);
    kv_time("run at:", th__jint(t, "run_at"), now);
    kv_time("started:", th__jint(t, "started_at"), now);
    kv_time("finished:", th__jint(t, "finished_at"), now);
    kv_time("lease expires:", th__jint(t, "lease_expires_at"), now);
    kv_time("expires:", th__jint(t, "expires_at"), now);
    int64_t to = th__jint(t, "timeout_ms");
    th__fmt_duration(to, a, sizeof a);
    kv("timeout:", to > 0 ? a : "default");
    if (json_is_object(retry)) {
        th__fmt_duration(th__jint(retry, "initial_delay_ms"), a, sizeof a);
        th__fmt_duration(th__jint(retry, "max_delay_ms"), b, sizeof b);
        snprintf(line, sizeof line, "%lld retries, delay %s x%g up to %s, jitter %g",
                 (long long)th__jint(retry, "max_retries"), a, th__jnum(retry, "multiplier"), b,
                 th__jnum(retry, "jitter"));
        kv("retry:", line);
    }
    kv("unique key:", th__jstr(t, "unique_key"));
    kv_json("deps:",
            json_array_size(json_object_get(t, "deps")) ? json_object_get(t, "deps") : NULL, 1000);
    if (th__jbool(t, "cancel_requested"))
        kv("cancel:", "requested");
    kv_json("metadata:", json_object_get(t, "metadata"), 1000);
    kv_json("payload:", json_object_get(t, "payload"), 1000);
    kv_json("error:", json_object_get(t, "error"), 2000);
    json_t *res = json_object_get(t, "result");
    if (!res || json_is_null(res)) {
        kv("result:", "-");
    } else {
        printf("result:\n");
        th__print_json(stdout, res);
    }
}

int th__cmd_show(th__cli *cli, int argc, char **argv)
{
    const char *id, *unused = NULL;
    int rc = parse_id(cli, argc, argv, NULL, &id, &unused);
    if (rc == TH_ARG_HELP)
        return th__print_usage(th__usage_show);
    if (rc != 0)
        return rc;
    json_t *t = NULL;
    if ((rc = task_call(cli, "GET", id, "", NULL, &t)) != 0)
        return rc;
    if (cli->json)
        th__print_json(stdout, t);
    else
        print_task(t);
    json_decref(t);
    return TH_CLI_OK;
}

/* ---- cancel, retry, result ------------------------------------------------- */

int th__cmd_cancel(th__cli *cli, int argc, char **argv)
{
    const char *id, *reason = NULL;
    int rc = parse_id(cli, argc, argv, "reason", &id, &reason);
    if (rc == TH_ARG_HELP)
        return th__print_usage(th__usage_cancel);
    if (rc != 0)
        return rc;
    json_t *body = reason ? json_pack("{s:s}", "reason", reason) : NULL, *answer = NULL;
    rc = task_call(cli, "POST", id, "/cancel", body, &answer);
    json_decref(body);
    if (rc != 0)
        return rc;
    if (cli->json)
        th__print_json(stdout, answer);
    else if (th__jbool(answer, "cancel_requested"))
        printf("%s: cancel requested (%s; its worker is told at its next heartbeat)\n", id,
               th__jstr(answer, "state") ? th__jstr(answer, "state") : "running");
    else
        printf("%s: %s\n", id, th__jstr(answer, "state") ? th__jstr(answer, "state") : "cancelled");
    json_decref(answer);
    return TH_CLI_OK;
}

int th__cmd_retry(th__cli *cli, int argc, char **argv)
{
    const char *id, *unused = NULL;
    int rc = parse_id(cli, argc, argv, NULL, &id, &unused);
    if (rc == TH_ARG_HELP)
        return th__print_usage(th__usage_retry);
    if (rc != 0)
        return rc;
    json_t *t = NULL;
    if ((rc = task_call(cli, "POST", id, "/retry", NULL, &t)) != 0)
        return rc;
    if (cli->json)
        th__print_json(stdout, t);
    else
        printf("%s: %s\n", id, th__jstr(t, "state") ? th__jstr(t, "state") : "retrying");
    json_decref(t);
    return TH_CLI_OK;
}

int th__cmd_result(th__cli *cli, int argc, char **argv)
{
    const char *id, *unused = NULL;
    int rc = parse_id(cli, argc, argv, NULL, &id, &unused);
    if (rc == TH_ARG_HELP)
        return th__print_usage(th__usage_result);
    if (rc != 0)
        return rc;
    json_t *answer = NULL;
    if ((rc = task_call(cli, "GET", id, "/result", NULL, &answer)) != 0)
        return rc;
    if (cli->json) {
        th__print_json(stdout, answer);
    } else {
        json_t *res = json_object_get(answer, "result");
        th__print_json(stdout, res ? res : json_null());
    }
    json_decref(answer);
    return TH_CLI_OK;
}

/* ---- graph ----------------------------------------------------------------- */

typedef struct graph {
    json_t *nodes, *edges;
    json_t *seen; /* ids printed, as an object used as a set */
    th__sbuf out;
} graph;

static const json_t *find_node(const graph *g, const char *id)
{
    size_t i;
    json_t *n;
    json_array_foreach(g->nodes, i,
                       n) if (th__jstr(n, "id") && strcmp(th__jstr(n, "id"), id) == 0) return n;
    return NULL;
}

static void print_node(graph *g, const char *id, const char *prefix, int last, int root, int depth)
{
    const json_t *n = find_node(g, id);
    char err[300] = "";
    json_t *e = n ? json_object_get(n, "error") : NULL;
    if (e && !json_is_null(e)) {
        char full[600];
        th__fmt_json(e, full, sizeof full);
        th__fmt_clip(full, 120, err, sizeof err);
    }
    int again = json_object_get(g->seen, id) != NULL;
    th__sbuf_addf(&g->out, "%s%s%s  %s  %s%s%s%s\n", prefix,
                  root   ? ""
                  : last ? "\xe2\x94\x94\xe2\x94\x80 "
                         : "\xe2\x94\x9c\xe2\x94\x80 ",
                  id, n && th__jstr(n, "queue") ? th__jstr(n, "queue") : "?",
                  n && th__jstr(n, "state") ? th__jstr(n, "state") : "?", *err ? ": " : "", err,
                  again ? " (see above)" : "");
    if (again || depth > 200)
        return;
    json_object_set_new(g->seen, id, json_true());
    /* Children: the tasks this one depends on (edges from -> to == id). */
    size_t nk = 0, k = 0, i;
    json_t *edge;
    json_array_foreach(g->edges, i, edge)
    {
        const char *to = th__jstr(edge, "to"), *from = th__jstr(edge, "from");
        if (to && from && strcmp(to, id) == 0)
            nk++;
    }
    char sub[1024];
    snprintf(sub, sizeof sub, "%s%s", prefix, root ? "" : last ? "   " : "\xe2\x94\x82  ");
    json_array_foreach(g->edges, i, edge)
    {
        const char *to = th__jstr(edge, "to"), *from = th__jstr(edge, "from");
        if (to && from && strcmp(to, id) == 0) {
            k++;
            print_node(g, from, sub, k == nk, 0, depth + 1);
        }
    }
}

int th__cmd_graph(th__cli *cli, int argc, char **argv)
{
    const char *id, *unused = NULL;
    int rc = parse_id(cli, argc, argv, NULL, &id, &unused);
    if (rc == TH_ARG_HELP)
        return th__print_usage(th__usage_graph);
    if (rc != 0)
        return rc;
    json_t *answer = NULL;
    if ((rc = task_call(cli, "GET", id, "/graph", NULL, &answer)) != 0)
        return rc;
    if (cli->json) {
        th__print_json(stdout, answer);
        json_decref(answer);
        return TH_CLI_OK;
    }
    graph g = {
        json_object_get(answer, "nodes"), json_object_get(answer, "edges"), json_object(), {0}};
    th__sbuf_init(&g.out, TH_CLI_MAX_BODY);
    print_node(&g, id, "", 1, 1, 0);
    fwrite(th__sbuf_str(&g.out), 1, g.out.len, stdout);
    th__sbuf_free(&g.out);
    json_decref(g.seen);
    json_decref(answer);
    return TH_CLI_OK;
}
