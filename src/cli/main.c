/*
 * The taskhive command: `taskhive serve` runs the daemon; every other verb is
 * a client of its HTTP API (docs/API.md). This file dispatches the verbs and
 * holds `help` and `version`.
 */
#include "cli/cli.h"

#include <string.h>

#include "server/server.h"
#include "taskhive/taskhive.h"

typedef struct verb {
    const char *name;
    th__cmd_fn fn;
    const char *usage;
    const char *summary;
} verb;

static const verb verbs[] = {
    {"submit", th__cmd_submit, th__usage_submit, "submit a task; prints its id"},
    {"ls", th__cmd_ls, th__usage_ls, "list tasks"},
    {"show", th__cmd_show, th__usage_show, "show one task"},
    {"logs", th__cmd_logs, th__usage_logs,
     "print a task's execution log or a service's output (--follow)"},
    {"cancel", th__cmd_cancel, th__usage_cancel, "cancel a task"},
    {"retry", th__cmd_retry, th__usage_retry, "run a finished, unsuccessful task again"},
    {"result", th__cmd_result, th__usage_result, "print a completed task's result"},
    {"graph", th__cmd_graph, th__usage_graph, "print a task's dependency tree"},
    {"workers", th__cmd_workers, th__usage_workers, "list workers"},
    {"queues", th__cmd_queues, th__usage_queues, "list queues; pause, resume or purge one"},
    {"stats", th__cmd_stats, th__usage_stats, "print the daemon's metrics"},
    {"watch", th__cmd_watch, th__usage_watch, "live progress of running tasks"},
    {"top", th__cmd_top, th__usage_top, "live full-screen view of the daemon"},
    {"ps", th__cmd_ps, th__usage_ps, "list the supervised services and the system's health"},
    {"start", th__cmd_svc_start, th__usage_svc_start, "start a service (or all)"},
    {"stop", th__cmd_svc_stop, th__usage_svc_stop, "stop a service (or all)"},
    {"restart", th__cmd_svc_restart, th__usage_svc_restart, "restart a service (or all)"},
    {"trigger", th__cmd_svc_trigger, th__usage_svc_trigger, "run an event service now"},
    {"add", th__cmd_svc_add, th__usage_svc_add, "add a service to the supervisor at run time"},
    {"rm", th__cmd_svc_rm, th__usage_svc_rm, "stop a service and remove it"},
    {"providers", th__cmd_providers, th__usage_providers,
     "LLM providers: health, circuit breaker, usage"},
    {"agents", th__cmd_agents, th__usage_agents, "LLM agents: list, show, create, update, rm, run"},
    {"keys", th__cmd_keys, th__usage_keys, "provider API keys, encrypted at rest: list, set, rm"},
    {"spend", th__cmd_spend, th__usage_spend, "LLM spending per day, provider, model, agent"},
};

#define NVERBS (sizeof verbs / sizeof verbs[0])

static const char usage_head[] =
    "usage: taskhive [--url URL] [--token TOKEN] COMMAND [ARGS] [--json]\n"
    "\n"
    "taskhive is a background worker system: `taskhive serve` runs the daemon and\n"
    "the other commands talk to it over its HTTP API.\n"
    "\n"
    "Commands:\n"
    "  serve      run the daemon (see 'taskhive serve --help')\n";

static const char usage_tail[] =
    "  version    print the version\n"
    "  help       this text; 'taskhive help COMMAND' for one command\n"
    "\n"
    "Options of every client command:\n"
    "  --url URL      the daemon's address (default $TASKHIVE_URL, else " TH_CLI_DEFAULT_URL ")\n"
    "  --token TOKEN  bearer token (default $TASKHIVE_TOKEN)\n"
    "  --json         print the server's JSON instead of tables, for scripts\n"
    "  --help, -h     the command's options\n"
    "\n"
    "Environment:\n"
    "  TASKHIVE_URL    the daemon's base URL\n"
    "  TASKHIVE_TOKEN  the bearer token sent with every request\n"
    "\n"
    "Exit status:\n"
    "  0  success\n"
    "  1  the server refused the request (4xx/5xx), or the task did not complete\n"
    "     (submit --wait, watch ID)\n"
    "  2  bad usage: unknown command or option, bad argument or JSON\n"
    "  3  cannot reach the server\n";

static void print_help(FILE *f)
{
    fputs(usage_head, f);
    for (size_t i = 0; i < NVERBS; i++)
        fprintf(f, "  %-10s %s\n", verbs[i].name, verbs[i].summary);
    fputs(usage_tail, f);
}

static const verb *find_verb(const char *name)
{
    for (size_t i = 0; i < NVERBS; i++)
        if (strcmp(verbs[i].name, name) == 0)
            return &verbs[i];
    return NULL;
}

static int cmd_help(th__cli *cli, int argc, char **argv)
{
    if (argc < 2) {
        print_help(stdout);
        return TH_CLI_OK;
    }
    if (argc > 2)
        return th__cli_usage_error(cli, "unexpected argument '%s'", argv[2]);
    if (strcmp(argv[1], "serve") == 0) {
        char *args[] = {(char *)"serve", (char *)"--help", NULL};
        return th__server_main(2, args);
    }
    if (strcmp(argv[1], "help") == 0 || strcmp(argv[1], "version") == 0) {
        print_help(stdout);
        return TH_CLI_OK;
    }
    const verb *v = find_verb(argv[1]);
    if (!v)
        return th__cli_usage_error(cli, "unknown command '%s' (see 'taskhive help')", argv[1]);
    return th__print_usage(v->usage);
}

static int cmd_version(th__cli *cli, int argc, char **argv)
{
    th__args a;
    th__args_init(&a, cli, argc, argv, NULL);
    const char *val;
    int k;
    while ((k = th__args_next(&a, &val)) != TH_ARG_END) {
        if (k == TH_ARG_HELP)
            return th__print_usage("usage: taskhive version [--json]\n");
        if (k == TH_ARG_ERR)
            return TH_CLI_USAGE;
        return th__cli_usage_error(cli, "unexpected argument '%s'", val);
    }
    if (cli->json)
        printf("{\"version\": \"%s\", \"library\": \"%s\"}\n", TH_VERSION_STRING, th_version());
    else
        printf("taskhive %s\n", TH_VERSION_STRING);
    return TH_CLI_OK;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "serve") == 0)
        return th__server_main(argc - 1, argv + 1);

    th__cli cli;
    if (th__cli_init(&cli) != 0)
        return TH_CLI_FAILED;
    int rc = TH_CLI_USAGE;
    /* Common options may come before the command too. */
    int i = 1;
    while (i < argc && argv[i][0] == '-' && argv[i][1] != '\0') {
        const char *o = argv[i];
        size_t n = strlen(o);
        if (strcmp(o, "--help") == 0 || strcmp(o, "-h") == 0) {
            print_help(stdout);
            rc = TH_CLI_OK;
            goto done;
        }
        if (strcmp(o, "--version") == 0) {
            printf("taskhive %s\n", TH_VERSION_STRING);
            rc = TH_CLI_OK;
            goto done;
        }
        if (strcmp(o, "--json") == 0) {
            cli.json = 1;
            i++;
            continue;
        }
        int is_url = strncmp(o, "--url", 5) == 0 && (n == 5 || o[5] == '=');
        int is_token = strncmp(o, "--token", 7) == 0 && (n == 7 || o[7] == '=');
        if (!is_url && !is_token) {
            th__cli_usage_error(&cli, "unknown option %s (see 'taskhive help')", o);
            goto done;
        }
        const char *eq = strchr(o, '=');
        const char *val = eq ? eq + 1 : (i + 1 < argc ? argv[i + 1] : NULL);
        if (!val) {
            th__cli_usage_error(&cli, "option %s needs a value", o);
            goto done;
        }
        i += eq ? 1 : 2;
        if (is_token) {
            cli.token = *val ? val : NULL;
        } else {
            cli.url = val;
            if (th__cli_check_url(&cli) != 0)
                goto done;
        }
    }
    if (i >= argc) {
        print_help(stderr);
        goto done;
    }
    const char *name = argv[i];
    cli.verb = name;
    if (strcmp(name, "serve") == 0) {
        rc = th__cli_usage_error(&cli, "options before 'serve' are for the client commands");
    } else if (strcmp(name, "help") == 0) {
        rc = cmd_help(&cli, argc - i, argv + i);
    } else if (strcmp(name, "version") == 0) {
        rc = cmd_version(&cli, argc - i, argv + i);
    } else {
        const verb *v = find_verb(name);
        cli.verb = NULL;
        if (!v)
            rc = th__cli_usage_error(&cli, "unknown command '%s' (see 'taskhive help')", name);
        else {
            cli.verb = name;
            rc = v->fn(&cli, argc - i, argv + i);
        }
    }
done:
    fflush(stdout);
    th__cli_cleanup(&cli);
    return rc;
}
