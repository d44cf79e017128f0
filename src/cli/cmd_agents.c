/*
 * `taskhive agents`: the daemon's agent definitions (/v1/agents) and running
 * one as a task of the "agent" queue.
 */
#include "cli/cli.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char th__usage_agents[] =
    "usage: taskhive agents [list] [--json]\n"
    "       taskhive agents show NAME\n"
    "       taskhive agents create JSON\n"
    "       taskhive agents update NAME JSON\n"
    "       taskhive agents rm NAME\n"
    "       taskhive agents run NAME INPUT [--wait]\n"
    "\n"
    "list:   the agents (NAME PROVIDER MODEL TOOLS ROLE)\n"
    "show:   one agent's definition (JSON)\n"
    "create: a new agent from a JSON object: {\"name\", \"role\", \"backstory\",\n"
    "        \"instructions\", \"provider\", \"model\", \"temperature\", \"max_tokens\",\n"
    "        \"max_steps\", \"tools\": [...]}; without a provider, the daemon's default\n"
    "update: changes the fields the JSON object names (null clears one)\n"
    "rm:     deletes an agent\n"
    "run:    submits an agent task with INPUT and prints its id; with --wait,\n"
    "        follows its progress and prints its result\n"
    "(create, update and rm need a token with the admin scope)\n";

/* The positional arguments of the verb, at most `max`; 0 or a status. */
static int positionals(th__cli *cli, int argc, char **argv, const char **pos, int max, int *n,
                       int *wait)
{
    static const th__opt opts[] = {{"wait", 'w', 0, 1}, {0}};
    th__args a;
    th__args_init(&a, cli, argc, argv, opts);
    const char *val;
    int k;
    *n = 0;
    while ((k = th__args_next(&a, &val)) != TH_ARG_END) {
        if (k == TH_ARG_HELP)
            return TH_ARG_HELP;
        if (k == TH_ARG_ERR)
            return TH_CLI_USAGE;
        if (k == 1)
            *wait = 1;
        else if (k == TH_ARG_POS && *n < max)
            pos[(*n)++] = val;
        else
            return th__cli_usage_error(cli, "unexpected argument '%s'", val);
    }
    return 0;
}

static int need(th__cli *cli, int n, int want, const char *what)
{
    if (n == want)
        return 0;
    return th__cli_usage_error(cli, "%s", what);
}

static int list(th__cli *cli)
{
    json_t *ans = NULL;
    int rc = th__http(cli, "GET", "/v1/agents", NULL, &ans, NULL);
    if (rc)
        return rc;
    if (cli->json) {
        th__print_json(stdout, ans);
        json_decref(ans);
        return TH_CLI_OK;
    }
    static const char *const h[] = {"NAME", "PROVIDER", "MODEL", "TOOLS", "ROLE"};
    th__table *t = th__table_new(5, h);
    json_t *arr = json_object_get(ans, "agents");
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *a = json_array_get(arr, i);
        char tools[256];
        th__fmt_json(json_object_get(a, "tools"), tools, sizeof tools);
        const char *row[5] = {th__jstr(a, "name"), th__jstr(a, "provider"),
                              th__jstr(a, "model") ? th__jstr(a, "model") : "(default)", tools,
                              th__jstr(a, "role")};
        th__table_add(t, row);
    }
    if (th__table_rows(t) == 0) {
        printf("no agents\n");
    } else {
        th__table_emit(t);
    }
    th__table_free(t);
    json_decref(ans);
    return TH_CLI_OK;
}

static int agent_path(th__sbuf *p, const char *name)
{
    th__sbuf_init(p, 1024);
    th__sbuf_adds(p, "/v1/agents/");
    return th__sbuf_add_escaped(p, name);
}

/* Sends `method` to /v1/agents[/name] with a JSON body from text; prints
 * the answer as JSON. */
static int send(th__cli *cli, const char *method, const char *name, const char *json)
{
    json_t *body = NULL;
    if (json) {
        int rc = th__parse_json(cli, "JSON", json, &body);
        if (rc)
            return rc;
        if (!json_is_object(body)) {
            json_decref(body);
            return th__cli_usage_error(cli, "the definition must be a JSON object");
        }
    }
    th__sbuf p;
    if (name)
        agent_path(&p, name);
    else {
        th__sbuf_init(&p, 64);
        th__sbuf_adds(&p, "/v1/agents");
    }
    json_t *ans = NULL;
    int rc = th__http(cli, method, th__sbuf_str(&p), body, &ans, NULL);
    th__sbuf_free(&p);
    json_decref(body);
    if (rc)
        return rc;
    if (strcmp(method, "DELETE") == 0 && !cli->json)
        printf("deleted %s\n", name);
    else
        th__print_json(stdout, ans);
    json_decref(ans);
    return TH_CLI_OK;
}

static int run(th__cli *cli, const char *name, const char *input, int wait)
{
    json_t *body =
        json_pack("{s:s,s:{s:s,s:s}}", "queue", "agent", "payload", "agent", name, "input", input);
    if (!body)
        return th__cli_usage_error(cli, "NAME and INPUT must be UTF-8 text");
    json_t *ans = NULL;
    int rc = th__http(cli, "POST", "/v1/tasks", body, &ans, NULL);
    json_decref(body);
    if (rc)
        return rc;
    const char *id = th__jstr(ans, "id");
    if (!id) {
        json_decref(ans);
        return th__cli_fail(cli, TH_CLI_FAILED, "the server answered without a task id");
    }
    printf("%s\n", id);
    fflush(stdout);
    if (wait) {
        json_t *final = NULL;
        rc = th__follow_task(cli, id, isatty(STDERR_FILENO), &final);
        json_t *res = json_object_get(final, "result");
        if (rc == TH_CLI_OK && res) {
            const char *out = th__jstr(res, "output");
            if (out && !cli->json)
                printf("%s\n", out);
            else
                th__print_json(stdout, res);
        }
        json_decref(final);
    }
    json_decref(ans);
    return rc;
}

int th__cmd_agents(th__cli *cli, int argc, char **argv)
{
    const char *pos[4];
    int n = 0, wait = 0;
    int rc = positionals(cli, argc, argv, pos, 4, &n, &wait);
    if (rc == TH_ARG_HELP)
        return th__print_usage(th__usage_agents);
    if (rc)
        return rc;
    const char *sub = n ? pos[0] : "list";
    if (strcmp(sub, "list") == 0)
        return need(cli, n, n ? 1 : 0, "list takes no arguments") ? TH_CLI_USAGE : list(cli);
    if (strcmp(sub, "show") == 0)
        return need(cli, n, 2, "usage: agents show NAME") ? TH_CLI_USAGE
                                                          : send(cli, "GET", pos[1], NULL);
    if (strcmp(sub, "create") == 0)
        return need(cli, n, 2, "usage: agents create JSON") ? TH_CLI_USAGE
                                                            : send(cli, "POST", NULL, pos[1]);
    if (strcmp(sub, "update") == 0)
        return need(cli, n, 3, "usage: agents update NAME JSON")
                   ? TH_CLI_USAGE
                   : send(cli, "PATCH", pos[1], pos[2]);
    if (strcmp(sub, "rm") == 0)
        return need(cli, n, 2, "usage: agents rm NAME") ? TH_CLI_USAGE
                                                        : send(cli, "DELETE", pos[1], NULL);
    if (strcmp(sub, "run") == 0)
        return need(cli, n, 3, "usage: agents run NAME INPUT [--wait]")
                   ? TH_CLI_USAGE
                   : run(cli, pos[1], pos[2], wait);
    return th__cli_usage_error(cli, "unknown subcommand '%s' (list, show, create, update, rm, run)",
                               sub);
}
