/*
 * Option parsing for the verbs: long options ("--name value", "--name=value"),
 * a few short ones, positionals anywhere, "--" to end options, and the common
 * options every verb accepts (--url, --token, --json, --help). Every mistake
 * is one line on stderr and exit status 2.
 */
#include "cli/cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum { COMMON_URL = 1000, COMMON_TOKEN, COMMON_JSON };

static const th__opt common_opts[] = {
    {"url", 0, 1, COMMON_URL},
    {"token", 0, 1, COMMON_TOKEN},
    {"json", 0, 0, COMMON_JSON},
    {NULL, 0, 0, 0},
};

void th__args_init(th__args *a, th__cli *cli, int argc, char **argv, const th__opt *opts)
{
    memset(a, 0, sizeof *a);
    a->cli = cli;
    a->argc = argc;
    a->argv = argv;
    a->i = 1;
    a->opts = opts;
}

static const th__opt *find_long(const th__opt *opts, const char *name, size_t n)
{
    for (const th__opt *o = opts; o && o->name; o++)
        if (strlen(o->name) == n && strncmp(o->name, name, n) == 0)
            return o;
    return NULL;
}

static const th__opt *find_short(const th__opt *opts, char c)
{
    for (const th__opt *o = opts; o && o->name; o++)
        if (o->short_name == c)
            return o;
    return NULL;
}

/* Applies a common option; returns 0 or TH_ARG_ERR. */
static int apply_common(th__args *a, int id, const char *val)
{
    switch (id) {
    case COMMON_URL:
        a->cli->url = val;
        return th__cli_check_url(a->cli) == 0 ? 0 : TH_ARG_ERR;
    case COMMON_TOKEN:
        a->cli->token = *val ? val : NULL;
        return 0;
    case COMMON_JSON:
        a->cli->json = 1;
        return 0;
    }
    return 0;
}

int th__args_next(th__args *a, const char **val)
{
    *val = NULL;
    while (a->i < a->argc) {
        const char *arg = a->argv[a->i++];
        if (a->only_pos || arg[0] != '-' || arg[1] == '\0') {
            *val = arg;
            return TH_ARG_POS;
        }
        if (strcmp(arg, "--") == 0) {
            a->only_pos = 1;
            continue;
        }
        const th__opt *o;
        const char *inline_val = NULL;
        char shown[128];
        if (arg[1] == '-') {
            const char *name = arg + 2;
            const char *eq = strchr(name, '=');
            size_t n = eq ? (size_t)(eq - name) : strlen(name);
            if (n == 4 && strncmp(name, "help", 4) == 0)
                return TH_ARG_HELP;
            o = find_long(a->opts, name, n);
            if (!o)
                o = find_long(common_opts, name, n);
            snprintf(shown, sizeof shown, "--%.*s", (int)(n > 100 ? 100 : n), name);
            if (eq)
                inline_val = eq + 1;
        } else {
            if (arg[1] == 'h' && arg[2] == '\0')
                return TH_ARG_HELP;
            o = find_short(a->opts, arg[1]);
            snprintf(shown, sizeof shown, "-%c", arg[1]);
            if (arg[2] != '\0')
                inline_val = arg + 2;
            if (o && !o->has_arg && inline_val)
                o = NULL; /* "-xyz": no clustering */
        }
        if (!o) {
            th__cli_usage_error(a->cli, "unknown option %s (see 'taskhive %s --help')", shown,
                                a->cli->verb ? a->cli->verb : "help");
            return TH_ARG_ERR;
        }
        if (o->has_arg) {
            if (inline_val) {
                *val = inline_val;
            } else if (a->i < a->argc) {
                *val = a->argv[a->i++];
            } else {
                th__cli_usage_error(a->cli, "option %s needs a value", shown);
                return TH_ARG_ERR;
            }
        } else if (inline_val) {
            th__cli_usage_error(a->cli, "option %s takes no value", shown);
            return TH_ARG_ERR;
        }
        if (o->id >= COMMON_URL) {
            if (apply_common(a, o->id, *val) != 0)
                return TH_ARG_ERR;
            continue;
        }
        return o->id;
    }
    return TH_ARG_END;
}

int th__parse_uint(th__cli *cli, const char *what, const char *text, long long max, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (text[0] < '0' || text[0] > '9' || *end != '\0' || errno != 0 || v < 0 || v > max) {
        if (max >= 1000000000LL)
            return th__cli_usage_error(cli, "%s must be a whole number >= 0, not '%s'", what, text);
        return th__cli_usage_error(cli, "%s must be a whole number 0..%lld, not '%s'", what, max,
                                   text);
    }
    *out = v;
    return 0;
}

int th__parse_json(th__cli *cli, const char *what, const char *text, json_t **out)
{
    json_error_t jerr;
    *out = json_loads(text, JSON_DECODE_ANY, &jerr);
    if (!*out)
        return th__cli_usage_error(cli, "%s is not valid JSON: %s (line %d, column %d)", what,
                                   jerr.text, jerr.line, jerr.column);
    return 0;
}

int th__print_usage(const char *usage)
{
    fputs(usage, stdout);
    return TH_CLI_OK;
}

int th__args_positional(th__cli *cli, int argc, char **argv, const char **pos, int max, int *n)
{
    th__args a;
    th__args_init(&a, cli, argc, argv, NULL);
    const char *val;
    int k;
    *n = 0;
    while ((k = th__args_next(&a, &val)) != TH_ARG_END) {
        if (k == TH_ARG_HELP)
            return TH_ARG_HELP;
        if (k == TH_ARG_ERR)
            return TH_CLI_USAGE;
        if (*n == max)
            return th__cli_usage_error(cli, "unexpected argument '%s'", val);
        pos[(*n)++] = val;
    }
    return 0;
}
