/*
 * `taskhive keys`: the daemon's key store of provider API keys (/v1/keys).
 * A key's value is read from standard input, never from the command line,
 * where other users could see it in the process list.
 */
#include "cli/cli.h"

#include <stdlib.h>
#include <string.h>

const char th__usage_keys[] =
    "usage: taskhive keys [list] [--json]\n"
    "       taskhive keys set NAME < file-with-the-key\n"
    "       taskhive keys rm NAME\n"
    "\n"
    "list: the stored keys (NAME CREATED ROTATED PROVIDERS); values are never shown\n"
    "set:  stores the key read from standard input (its first line) under NAME,\n"
    "      encrypted at rest; a provider with api_key_store = NAME uses the new\n"
    "      value from its next request (rotation)\n"
    "rm:   deletes a key no provider uses\n"
    "(every subcommand needs a token with the admin scope)\n";

static int list(th__cli *cli)
{
    json_t *ans = NULL;
    int rc = th__http(cli, "GET", "/v1/keys", NULL, &ans, NULL);
    if (rc)
        return rc;
    if (cli->json) {
        th__print_json(stdout, ans);
        json_decref(ans);
        return TH_CLI_OK;
    }
    static const char *const h[] = {"NAME", "CREATED", "ROTATED", "PROVIDERS"};
    th__table *t = th__table_new(4, h);
    json_t *arr = json_object_get(ans, "keys");
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *k = json_array_get(arr, i);
        char c[64], r[64], p[256];
        th__fmt_time(th__jint(k, "created_ms"), c, sizeof c);
        th__fmt_time(th__jint(k, "rotated_ms"), r, sizeof r);
        th__fmt_json(json_object_get(k, "providers"), p, sizeof p);
        const char *row[4] = {th__jstr(k, "name"), c, r, p};
        th__table_add(t, row);
    }
    if (th__table_rows(t) == 0) {
        printf("no keys\n");
    } else {
        th__table_emit(t);
    }
    th__table_free(t);
    json_decref(ans);
    return TH_CLI_OK;
}

static int set(th__cli *cli, const char *name)
{
    char line[4098];
    if (!fgets(line, sizeof line, stdin))
        return th__cli_usage_error(cli, "no key on standard input");
    line[strcspn(line, "\r\n")] = '\0';
    if (!*line)
        return th__cli_usage_error(cli, "the key on standard input is empty");
    json_t *body = json_pack("{s:s}", "value", line);
    memset(line, 0, sizeof line);
    if (!body)
        return th__cli_usage_error(cli, "the key must be UTF-8 text");
    th__sbuf p;
    th__sbuf_init(&p, 1024);
    th__sbuf_adds(&p, "/v1/keys/");
    th__sbuf_add_escaped(&p, name);
    json_t *ans = NULL;
    int rc = th__http(cli, "PUT", th__sbuf_str(&p), body, &ans, NULL);
    th__sbuf_free(&p);
    json_decref(body);
    if (rc)
        return rc;
    if (cli->json)
        th__print_json(stdout, ans);
    else
        printf("%s %s\n", th__jbool(ans, "rotated") ? "rotated" : "stored", name);
    json_decref(ans);
    return TH_CLI_OK;
}

static int rm(th__cli *cli, const char *name)
{
    th__sbuf p;
    th__sbuf_init(&p, 1024);
    th__sbuf_adds(&p, "/v1/keys/");
    th__sbuf_add_escaped(&p, name);
    json_t *ans = NULL;
    int rc = th__http(cli, "DELETE", th__sbuf_str(&p), NULL, &ans, NULL);
    th__sbuf_free(&p);
    if (rc)
        return rc;
    printf("deleted %s\n", name);
    json_decref(ans);
    return TH_CLI_OK;
}

int th__cmd_keys(th__cli *cli, int argc, char **argv)
{
    const char *pos[3];
    int n;
    int rc = th__args_positional(cli, argc, argv, pos, 3, &n);
    if (rc == TH_ARG_HELP)
        return th__print_usage(th__usage_keys);
    if (rc)
        return rc;
    const char *sub = n ? pos[0] : "list";
    if (strcmp(sub, "list") == 0 && n <= 1)
        return list(cli);
    if (strcmp(sub, "set") == 0 && n == 2)
        return set(cli, pos[1]);
    if (strcmp(sub, "rm") == 0 && n == 2)
        return rm(cli, pos[1]);
    return th__cli_usage_error(cli, "usage: keys [list] | set NAME | rm NAME");
}
