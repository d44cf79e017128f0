/*
 * The LLM verbs: providers (health, breaker, usage) and spend (the
 * gateway's ledger). Tables for people, the server's JSON with --json.
 */
#include "cli/cli.h"

#include <stdlib.h>
#include <string.h>

const char th__usage_providers[] =
    "usage: taskhive providers [NAME] [--json]\n"
    "\n"
    "Lists the LLM gateway's providers: format, model, health, circuit breaker,\n"
    "requests in flight and queued, and their usage (requests, failures,\n"
    "retries, 429s, tokens, cost). With NAME, that provider only.\n";

const char th__usage_spend[] =
    "usage: taskhive spend [--since YYYY-MM-DD] [--json]\n"
    "\n"
    "Prints the LLM spend ledger: one line per day, provider, model, agent and\n"
    "key with requests, tokens and cost in USD, then today's and this month's\n"
    "totals (days are UTC).\n";

static void fmt_i(char *b, size_t n, int64_t v)
{
    snprintf(b, n, "%lld", (long long)v);
}

int th__cmd_providers(th__cli *cli, int argc, char **argv)
{
    const char *name = NULL;
    int npos;
    int prc = th__args_positional(cli, argc, argv, &name, 1, &npos);
    if (prc == TH_ARG_HELP)
        return th__print_usage(th__usage_providers);
    if (prc)
        return prc;
    th__sbuf path;
    th__sbuf_init(&path, 1024);
    th__sbuf_adds(&path, "/v1/providers");
    if (name) {
        th__sbuf_adds(&path, "/");
        th__sbuf_add_escaped(&path, name);
    }
    json_t *ans = NULL;
    int rc = th__http(cli, "GET", th__sbuf_str(&path), NULL, &ans, NULL);
    th__sbuf_free(&path);
    if (rc)
        return rc;
    if (cli->json) {
        th__print_json(stdout, ans);
        json_decref(ans);
        return TH_CLI_OK;
    }
    static const char *const h[] = {"NAME",     "FORMAT", "MODEL",    "HEALTH", "BREAKER",
                                    "INFLIGHT", "QUEUED", "REQUESTS", "FAILED", "RETRIES",
                                    "429S",     "TOKENS", "COST$"};
    th__table *t = th__table_new(13, h);
    for (int c = 5; c < 13; c++)
        th__table_align_right(t, c);
    json_t *list = name ? NULL : json_object_get(ans, "providers");
    size_t n = name ? 1 : json_array_size(list);
    for (size_t i = 0; i < n; i++) {
        json_t *p = name ? ans : json_array_get(list, i);
        char f[8][32];
        fmt_i(f[0], 32, th__jint(p, "in_flight"));
        fmt_i(f[1], 32, th__jint(p, "queued"));
        fmt_i(f[2], 32, th__jint(p, "requests"));
        fmt_i(f[3], 32, th__jint(p, "failures"));
        fmt_i(f[4], 32, th__jint(p, "retries"));
        fmt_i(f[5], 32, th__jint(p, "rate_limited"));
        fmt_i(f[6], 32, th__jint(p, "input_tokens") + th__jint(p, "output_tokens"));
        snprintf(f[7], 32, "%.4f", th__jnum(p, "cost_usd"));
        const char *row[13] = {th__jstr(p, "name"),
                               th__jstr(p, "format"),
                               th__jstr(p, "model"),
                               th__jbool(p, "healthy") ? "healthy" : "unhealthy",
                               th__jstr(p, "breaker"),
                               f[0],
                               f[1],
                               f[2],
                               f[3],
                               f[4],
                               f[5],
                               f[6],
                               f[7]};
        th__table_add(t, row);
    }
    th__table_emit(t);
    if (!name && th__jstr(ans, "default"))
        printf("default provider: %s\n", th__jstr(ans, "default"));
    th__table_free(t);
    json_decref(ans);
    return TH_CLI_OK;
}

int th__cmd_spend(th__cli *cli, int argc, char **argv)
{
    static const th__opt opts[] = {{"since", 0, 1, 1}, {0}};
    th__args a;
    th__args_init(&a, cli, argc, argv, opts);
    const char *val, *since = NULL;
    int k;
    while ((k = th__args_next(&a, &val)) != TH_ARG_END) {
        if (k == TH_ARG_HELP)
            return th__print_usage(th__usage_spend);
        if (k == TH_ARG_ERR)
            return TH_CLI_USAGE;
        if (k == 1)
            since = val;
        else
            return th__cli_usage_error(cli, "unexpected argument '%s'", val);
    }
    th__sbuf path;
    th__sbuf_init(&path, 1024);
    th__sbuf_adds(&path, "/v1/spend");
    th__sbuf_add_query(&path, "since", since);
    json_t *ans = NULL;
    int rc = th__http(cli, "GET", th__sbuf_str(&path), NULL, &ans, NULL);
    th__sbuf_free(&path);
    if (rc)
        return rc;
    if (cli->json) {
        th__print_json(stdout, ans);
        json_decref(ans);
        return TH_CLI_OK;
    }
    static const char *const h[] = {"DAY", "PROVIDER", "MODEL",  "AGENT",
                                    "KEY", "REQUESTS", "TOKENS", "COST$"};
    th__table *t = th__table_new(8, h);
    for (int c = 5; c < 8; c++)
        th__table_align_right(t, c);
    json_t *rows = json_object_get(ans, "rows");
    for (size_t i = 0; i < json_array_size(rows); i++) {
        json_t *r = json_array_get(rows, i);
        char req[32], tok[32], cost[32];
        fmt_i(req, sizeof req, th__jint(r, "requests"));
        fmt_i(tok, sizeof tok, th__jint(r, "input_tokens") + th__jint(r, "output_tokens"));
        snprintf(cost, sizeof cost, "%.6f", th__jnum(r, "cost_usd"));
        const char *agent = th__jstr(r, "agent");
        const char *row[8] = {th__jstr(r, "day"),
                              th__jstr(r, "provider"),
                              th__jstr(r, "model"),
                              agent && *agent ? agent : "-",
                              th__jstr(r, "key"),
                              req,
                              tok,
                              cost};
        th__table_add(t, row);
    }
    if (th__table_rows(t) > 0)
        th__table_emit(t);
    else
        printf("no spending recorded%s\n", since ? " since then" : "");
    printf("today: %.6f USD   this month: %.6f USD   listed: %.6f USD\n",
           th__jnum(ans, "today_usd"), th__jnum(ans, "month_usd"), th__jnum(ans, "total_usd"));
    th__table_free(t);
    json_decref(ans);
    return TH_CLI_OK;
}
