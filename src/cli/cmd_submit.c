/*
 * `taskhive submit`: builds a submit request (POST /v1/tasks) from the
 * arguments, checking every JSON argument locally first, prints the new id,
 * and with --wait follows the task to its end and prints its result.
 */
#include "cli/cli.h"

#include <stdlib.h>
#include <string.h>

#include "taskhive/taskhive.h"

const char th__usage_submit[] =
    "usage: taskhive submit QUEUE [PAYLOAD_JSON | -] [options]\n"
    "\n"
    "Submits a task to QUEUE and prints its id. PAYLOAD_JSON is any JSON value\n"
    "(checked before sending); '-' reads it from standard input.\n"
    "\n"
    "  --priority P     low, normal, high, critical or 0..100 (default normal)\n"
    "  --delay MS       run no earlier than MS milliseconds from now\n"
    "  --timeout MS     time limit of one attempt (0: the server's default)\n"
    "  --retries N      attempts after the first one that fails\n"
    "  --unique KEY     deduplicate: if a task with KEY exists, its id is returned\n"
    "  --dep ID         run only after task ID completed (repeatable)\n"
    "  --metadata JSON  JSON kept with the task (not given to the handler)\n"
    "  --wait           follow the task until it ends and print its result;\n"
    "                   exit status 0 if it completed, 1 otherwise\n"
    "  --json           print the server's answer (with --wait: the final task)\n";

/* Reads all of standard input (at most TH_CLI_MAX_PAYLOAD_ARG bytes). */
static int read_stdin(th__cli *cli, th__sbuf *b)
{
    char chunk[65536];
    size_t n;
    th__sbuf_init(b, TH_CLI_MAX_PAYLOAD_ARG);
    while ((n = fread(chunk, 1, sizeof chunk, stdin)) > 0)
        if (th__sbuf_add(b, chunk, n) != 0)
            return th__cli_usage_error(cli, "the payload on standard input is over %u MiB",
                                       TH_CLI_MAX_PAYLOAD_ARG >> 20);
    if (ferror(stdin))
        return th__cli_usage_error(cli, "cannot read the payload from standard input");
    return 0;
}

/* Sets body.key = v, taking the reference; 0 or TH_CLI_FAILED. */
static int put(json_t *body, const char *key, json_t *v)
{
    return json_object_set_new(body, key, v) == 0 ? 0 : TH_CLI_FAILED;
}

/* Parses the arguments into the request body; returns 0 or an exit status. */
static int build(th__cli *cli, int argc, char **argv, json_t *body, int *wait, int *help)
{
    enum {
        OPT_PRIORITY,
        OPT_DELAY,
        OPT_TIMEOUT,
        OPT_RETRIES,
        OPT_UNIQUE,
        OPT_DEP,
        OPT_META,
        OPT_WAIT
    };
    static const th__opt opts[] = {
        {"priority", 'p', 1, OPT_PRIORITY},
        {"delay", 0, 1, OPT_DELAY},
        {"timeout", 0, 1, OPT_TIMEOUT},
        {"retries", 0, 1, OPT_RETRIES},
        {"unique", 0, 1, OPT_UNIQUE},
        {"dep", 0, 1, OPT_DEP},
        {"metadata", 0, 1, OPT_META},
        {"wait", 'w', 0, OPT_WAIT},
        {NULL, 0, 0, 0},
    };
    const char *queue = NULL, *payload = NULL, *val;
    json_t *deps = json_array();
    int rc = 0, id;
    long long n;
    th__args a;
    th__args_init(&a, cli, argc, argv, opts);
    while (rc == 0 && (id = th__args_next(&a, &val)) != TH_ARG_END) {
        switch (id) {
        case TH_ARG_HELP:
            *help = 1;
            json_decref(deps);
            return 0;
        case TH_ARG_ERR:
            rc = TH_CLI_USAGE;
            break;
        case TH_ARG_POS:
            if (!queue)
                queue = val;
            else if (!payload)
                payload = val;
            else
                rc = th__cli_usage_error(cli, "unexpected argument '%s'", val);
            break;
        case OPT_PRIORITY: {
            int p;
            if (th_priority_parse(val, &p) != 0)
                rc = th__cli_usage_error(
                    cli, "--priority must be low, normal, high, critical or 0..100, not '%s'", val);
            else
                rc = put(body, "priority", json_integer(p));
            break;
        }
        case OPT_DELAY:
            if ((rc = th__parse_uint(cli, "--delay", val, (1LL << 53), &n)) == 0)
                rc = put(body, "delay_ms", json_integer(n));
            break;
        case OPT_TIMEOUT:
            if ((rc = th__parse_uint(cli, "--timeout", val, (1LL << 53), &n)) == 0)
                rc = put(body, "timeout_ms", json_integer(n));
            break;
        case OPT_RETRIES:
            if ((rc = th__parse_uint(cli, "--retries", val, 1000000, &n)) == 0)
                rc = put(body, "retry", json_pack("{s:I}", "max_retries", (json_int_t)n));
            break;
        case OPT_UNIQUE:
            rc = put(body, "unique_key", json_string(val));
            break;
        case OPT_DEP:
            json_array_append_new(deps, json_string(val));
            break;
        case OPT_META: {
            json_t *m;
            if ((rc = th__parse_json(cli, "--metadata", val, &m)) == 0)
                rc = put(body, "metadata", m);
            break;
        }
        case OPT_WAIT:
            *wait = 1;
            break;
        }
    }
    if (rc == 0 && !queue)
        rc = th__cli_usage_error(cli, "missing QUEUE (see 'taskhive submit --help')");
    if (rc == 0)
        rc = put(body, "queue", json_string(queue));
    if (rc == 0 && json_array_size(deps) > 0)
        rc = put(body, "deps", json_incref(deps));
    if (rc == 0 && payload) {
        json_t *p;
        if (strcmp(payload, "-") == 0) {
            th__sbuf in;
            rc = read_stdin(cli, &in);
            if (rc == 0)
                rc = th__parse_json(cli, "the payload on standard input", th__sbuf_str(&in), &p);
            th__sbuf_free(&in);
        } else {
            rc = th__parse_json(cli, "PAYLOAD", payload, &p);
        }
        if (rc == 0)
            rc = put(body, "payload", p);
    }
    json_decref(deps);
    return rc;
}

int th__cmd_submit(th__cli *cli, int argc, char **argv)
{
    int wait = 0, help = 0;
    json_t *body = json_object(), *answer = NULL, *final = NULL;
    int rc = build(cli, argc, argv, body, &wait, &help);
    if (help) {
        json_decref(body);
        return th__print_usage(th__usage_submit);
    }
    if (rc != 0)
        goto done;
    rc = th__http(cli, "POST", "/v1/tasks", body, &answer, NULL);
    if (rc != 0)
        goto done;
    const char *id = th__jstr(answer, "id");
    if (!id) {
        rc = th__cli_fail(cli, TH_CLI_FAILED, "the server's answer has no task id");
        goto done;
    }
    if (!wait) {
        if (cli->json)
            th__print_json(stdout, answer);
        else
            printf("%s\n", id);
        if (th__jbool(answer, "deduplicated") && !cli->json)
            fprintf(stderr, "taskhive: a task with this unique key already exists: %s\n", id);
        goto done;
    }
    if (!cli->json) {
        printf("%s\n", id);
        fflush(stdout);
    }
    rc = th__follow_task(cli, id, !cli->json, &final);
    if (!final)
        goto done;
    if (cli->json) {
        th__print_json(stdout, final);
    } else if (rc == TH_CLI_OK) {
        json_t *res = json_object_get(final, "result");
        th__print_json(stdout, res ? res : json_null());
    } else {
        char err[600];
        th__fmt_json(json_object_get(final, "error"), err, sizeof err);
        fprintf(stderr, "taskhive: task %s %s: %s\n", id, th__jstr(final, "state"), err);
    }
done:
    json_decref(final);
    json_decref(answer);
    json_decref(body);
    return rc;
}
