/*
 * The daemon-wide verbs: workers, queues (with pause, resume and purge) and
 * stats. Tables and "key value" lines for people, the server's JSON with
 * --json.
 */
#include "cli/cli.h"

#include <stdlib.h>
#include <string.h>

const char th__usage_workers[] =
    "usage: taskhive workers [--json]\n"
    "\n"
    "Lists the daemon's pool workers (ID KIND STATE PID TASK DONE FAILED HEALTHY\n"
    "UP HEARTBEAT) and the external workers registered over HTTP.\n";

const char th__usage_queues[] =
    "usage: taskhive queues [--json]\n"
    "       taskhive queues pause NAME | resume NAME | purge NAME\n"
    "\n"
    "Without a subcommand, lists the queues with their task counts per state.\n"
    "pause:  the queue still accepts tasks but hands none out\n"
    "resume: hands tasks out again\n"
    "purge:  cancels every waiting (pending, scheduled, blocked) task of the queue\n"
    "(pause, resume and purge need a token with the admin scope)\n";

const char th__usage_stats[] = "usage: taskhive stats [--json]\n"
                               "\n"
                               "Prints the engine's and the worker pool's metrics.\n";

/* Parses "VERB [options]" with no positionals; 0, TH_ARG_HELP or a status. */
static int parse_none(th__cli *cli, int argc, char **argv)
{
    int n;
    return th__args_positional(cli, argc, argv, NULL, 0, &n);
}

static void fmt_int(char *buf, size_t size, int64_t v)
{
    snprintf(buf, size, "%lld", (long long)v);
}

static void fmt_ago(char *buf, size_t size, int64_t ms, int64_t now)
{
    if (ms <= 0)
        snprintf(buf, size, "-");
    else
        th__fmt_duration(now - ms, buf, size);
}

/* "a,b,c" from an array of strings (other values as JSON). */
static void join_strings(const json_t *arr, char *buf, size_t size)
{
    size_t i, o = 0;
    json_t *v;
    buf[0] = '\0';
    if (!json_is_array(arr)) {
        th__fmt_json(arr, buf, size);
        return;
    }
    json_array_foreach(arr, i, v)
    {
        char item[256];
        th__fmt_json(v, item, sizeof item);
        int n = snprintf(buf + o, size - o, "%s%s", i ? "," : "", item);
        if (n < 0 || (size_t)n >= size - o)
            break;
        o += (size_t)n;
    }
    if (o == 0)
        snprintf(buf, size, "-");
}

/* ---- workers ---------------------------------------------------------------- */

int th__cmd_workers(th__cli *cli, int argc, char **argv)
{
    int rc = parse_none(cli, argc, argv);
    if (rc == TH_ARG_HELP)
        return th__print_usage(th__usage_workers);
    if (rc != 0)
        return rc;
    json_t *answer = NULL;
    if ((rc = th__http(cli, "GET", "/v1/workers", NULL, &answer, NULL)) != 0)
        return rc;
    if (cli->json) {
        th__print_json(stdout, answer);
        json_decref(answer);
        return TH_CLI_OK;
    }
    static const char *const ph[] = {"ID",   "KIND",   "STATE",   "PID", "TASK",
                                     "DONE", "FAILED", "HEALTHY", "UP",  "HEARTBEAT"};
    static const char *const eh[] = {"ID", "KIND", "NAME", "QUEUES", "REGISTERED", "LAST SEEN"};
    th__table *pool = th__table_new(10, ph), *ext = th__table_new(6, eh);
    if (!pool || !ext) {
        th__table_free(pool);
        th__table_free(ext);
        json_decref(answer);
        return th__cli_fail(cli, TH_CLI_FAILED, "out of memory");
    }
    for (int c = 3; c <= 9; c++)
        if (c != 4 && c != 7)
            th__table_align_right(pool, c);
    int64_t now = th__now_ms();
    size_t i;
    json_t *w;
    json_array_foreach(json_object_get(answer, "workers"), i, w)
    {
        const char *kind = th__jstr(w, "kind");
        char id[64], task[64];
        th__fmt_json(json_object_get(w, "id"), id, sizeof id);
        th__fmt_json(json_object_get(w, "current_task"), task, sizeof task);
        if (kind && strcmp(kind, "external") == 0) {
            char queues[512], seen[32], reg[32];
            join_strings(json_object_get(w, "queues"), queues, sizeof queues);
            fmt_ago(seen, sizeof seen, th__jint(w, "last_seen_at"), now);
            fmt_ago(reg, sizeof reg, th__jint(w, "registered_at"), now);
            const char *row[] = {id, kind, th__jstr(w, "name"), queues, reg, seen};
            th__table_add(ext, row);
        } else {
            char pid[24], done[24], failed[24], up[32], hb[32];
            fmt_int(pid, sizeof pid, th__jint(w, "pid"));
            fmt_int(done, sizeof done, th__jint(w, "tasks_completed"));
            fmt_int(failed, sizeof failed, th__jint(w, "tasks_failed"));
            fmt_ago(up, sizeof up, th__jint(w, "started_at"), now);
            fmt_ago(hb, sizeof hb, th__jint(w, "last_heartbeat_at"), now);
            json_t *hv = json_object_get(w, "healthy");
            const char *row[] = {id,
                                 kind ? kind : "pool",
                                 th__jstr(w, "state"),
                                 th__jint(w, "pid") ? pid : "-",
                                 task,
                                 done,
                                 failed,
                                 hv ? (json_is_true(hv) ? "yes" : "no") : "-",
                                 up,
                                 hb};
            th__table_add(pool, row);
        }
    }
    if (th__table_rows(pool) == 0 && th__table_rows(ext) == 0)
        fprintf(stderr, "no workers\n");
    if (th__table_rows(pool) > 0)
        th__table_emit(pool);
    if (th__table_rows(pool) > 0 && th__table_rows(ext) > 0)
        printf("\n");
    if (th__table_rows(ext) > 0)
        th__table_emit(ext);
    th__table_free(pool);
    th__table_free(ext);
    json_decref(answer);
    return TH_CLI_OK;
}

/* ---- queues ------------------------------------------------------------------ */

static const char *const count_names[] = {"pending", "scheduled", "blocked", "running", "completed",
                                          "failed",  "cancelled", "timeout", "expired"};

static int list_queues(th__cli *cli)
{
    json_t *answer = NULL;
    int rc = th__http(cli, "GET", "/v1/queues", NULL, &answer, NULL);
    if (rc != 0)
        return rc;
    if (cli->json) {
        th__print_json(stdout, answer);
        json_decref(answer);
        return TH_CLI_OK;
    }
    static const char *const hdr[] = {"NAME",      "STATUS",  "PENDING", "SCHED",
                                      "BLOCKED",   "RUNNING", "DONE",    "FAILED",
                                      "CANCELLED", "TIMEOUT", "EXPIRED"};
    th__table *t = th__table_new(11, hdr);
    if (!t) {
        json_decref(answer);
        return th__cli_fail(cli, TH_CLI_FAILED, "out of memory");
    }
    for (int c = 2; c < 11; c++)
        th__table_align_right(t, c);
    size_t i;
    json_t *q;
    json_array_foreach(json_object_get(answer, "queues"), i, q)
    {
        char counts[9][24];
        const char *row[11];
        json_t *c = json_object_get(q, "counts");
        row[0] = th__jstr(q, "name");
        row[1] = th__jbool(q, "paused") ? "paused" : "active";
        for (int k = 0; k < 9; k++) {
            fmt_int(counts[k], sizeof counts[k], th__jint(c, count_names[k]));
            row[2 + k] = counts[k];
        }
        th__table_add(t, row);
    }
    if (th__table_rows(t) == 0)
        fprintf(stderr, "no queues\n");
    else
        th__table_emit(t);
    th__table_free(t);
    json_decref(answer);
    return TH_CLI_OK;
}

int th__cmd_queues(th__cli *cli, int argc, char **argv)
{
    const char *pos[2] = {NULL, NULL};
    int npos;
    int rc = th__args_positional(cli, argc, argv, pos, 2, &npos);
    if (rc == TH_ARG_HELP)
        return th__print_usage(th__usage_queues);
    if (rc)
        return rc;
    if (npos == 0)
        return list_queues(cli);
    const char *action = pos[0], *name = pos[1];
    if (strcmp(action, "pause") != 0 && strcmp(action, "resume") != 0 &&
        strcmp(action, "purge") != 0)
        return th__cli_usage_error(cli, "unknown subcommand '%s' (pause, resume or purge)", action);
    if (!name || !*name)
        return th__cli_usage_error(cli, "%s needs a queue NAME", action);
    th__sbuf path;
    th__sbuf_init(&path, 4096);
    th__sbuf_adds(&path, "/v1/queues/");
    th__sbuf_add_escaped(&path, name);
    th__sbuf_addf(&path, "/%s", action);
    json_t *answer = NULL;
    rc = th__http(cli, "POST", th__sbuf_str(&path), NULL, &answer, NULL);
    th__sbuf_free(&path);
    if (rc != 0)
        return rc;
    if (cli->json)
        th__print_json(stdout, answer);
    else if (strcmp(action, "purge") == 0)
        printf("%s: %lld waiting task%s cancelled\n", name, (long long)th__jint(answer, "purged"),
               th__jint(answer, "purged") == 1 ? "" : "s");
    else
        printf("%s: %s\n", name, th__jbool(answer, "paused") ? "paused" : "active");
    json_decref(answer);
    return TH_CLI_OK;
}

/* ---- stats --------------------------------------------------------------------- */

/* Prints every member of `obj`, nested objects as "parent.child". */
static void print_members(const json_t *obj, const char *prefix)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v)
    {
        char name[256], val[512];
        snprintf(name, sizeof name, "%s%s", prefix, key);
        if (json_is_object(v)) {
            char sub[260];
            snprintf(sub, sizeof sub, "%s.", name);
            print_members(v, sub);
            continue;
        }
        if (json_is_real(v))
            snprintf(val, sizeof val, "%.3f", json_real_value(v));
        else
            th__fmt_json(v, val, sizeof val);
        printf("  %-28s %s\n", name, val);
    }
}

int th__cmd_stats(th__cli *cli, int argc, char **argv)
{
    int rc = parse_none(cli, argc, argv);
    if (rc == TH_ARG_HELP)
        return th__print_usage(th__usage_stats);
    if (rc != 0)
        return rc;
    json_t *answer = NULL;
    if ((rc = th__http(cli, "GET", "/v1/stats", NULL, &answer, NULL)) != 0)
        return rc;
    if (cli->json) {
        th__print_json(stdout, answer);
    } else {
        const char *key;
        json_t *v;
        int first = 1;
        json_object_foreach(answer, key, v)
        {
            printf("%s%s\n", first ? "" : "\n", key);
            first = 0;
            if (json_is_object(v))
                print_members(v, "");
            else {
                char val[512];
                th__fmt_json(v, val, sizeof val);
                printf("  %s\n", val);
            }
        }
    }
    json_decref(answer);
    return TH_CLI_OK;
}
