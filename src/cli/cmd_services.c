/*
 * The verbs of the daemon's supervisor, in the manner of pm2: ps (the
 * services and the system's health), start, stop, restart and trigger, and
 * the service half of `logs` (GET /v1/services/{name}/logs, polled every
 * second with --follow: the server has no stream for service logs).
 */
#include "cli/cli.h"

#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

const char th__usage_ps[] =
    "usage: taskhive ps [NAME] [--json]\n"
    "\n"
    "Lists the services run by the daemon's supervisor, one row per instance:\n"
    "NAME (with :i when a service has several instances), PID, STATE, UPTIME,\n"
    "RESTARTS, CPU (percent of one core), MEM (resident), TYPE and NEXT (for a\n"
    "periodic service: when its next run is). A last line gives the system's\n"
    "health: the share of healthy services and any alerts.\n"
    "\n"
    "  NAME    only that service (no health line)\n"
    "  --json  {\"services\": [...], \"health\": {...}} (with NAME: the server's answer)\n";

const char th__usage_svc_start[] =
    "usage: taskhive start NAME|all [--json]\n"
    "\n"
    "Starts a service (and the services it depends on), or every service with\n"
    "'all'. Starting a disabled service enables it again. Prints the service's\n"
    "rows as 'taskhive ps' does. Needs a token with the admin scope.\n";

const char th__usage_svc_stop[] =
    "usage: taskhive stop NAME|all [--json]\n"
    "\n"
    "Stops a service, or every service with 'all': its stop signal, then SIGKILL\n"
    "after its stop timeout. Returns when its processes are gone and prints its\n"
    "rows as 'taskhive ps' does. Needs a token with the admin scope.\n";

const char th__usage_svc_restart[] =
    "usage: taskhive restart NAME|all [--json]\n"
    "\n"
    "Restarts a service, or every service with 'all', at once (no backoff), and\n"
    "enables it again if it was disabled. Prints its rows as 'taskhive ps' does.\n"
    "Needs a token with the admin scope.\n";

const char th__usage_svc_trigger[] =
    "usage: taskhive trigger NAME [--json]\n"
    "\n"
    "Runs an event (or periodic) service now. A trigger that arrives while it\n"
    "runs makes it run once more when it is over. Needs a token with the admin\n"
    "scope.\n";

#define LOG_LINES_MAX 10000
#define FOLLOW_POLL_MS 1000
#define FOLLOW_FETCH 100 /* lines asked for per poll; more when they are all new */
#define FOLLOW_TAIL 8    /* lines remembered to find where the last poll ended */

int th__is_service_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64)
        return 0;
    return strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-") == n;
}

int th__is_task_id(const char *s)
{
    return strlen(s) == 26 && strspn(s, "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
                                        "abcdefghjkmnpqrstvwxyz") == 26;
}

/* ---- formatting ------------------------------------------------------------- */

/* A duration for people, whole seconds at least ("0s", "42s", "5m", "2h"). */
static void fmt_dur(int64_t ms, char *buf, size_t size)
{
    if (ms < 1000)
        snprintf(buf, size, "0s");
    else
        th__fmt_duration(ms, buf, size);
}

static void fmt_cpu(double pct, char *buf, size_t size)
{
    if (!(pct >= 0))
        pct = 0;
    snprintf(buf, size, pct < 10 ? "%.1f%%" : "%.0f%%", pct);
}

/* Instances of service `name` in `services`. */
static size_t instances_of(const json_t *services, const char *name)
{
    size_t i, n = 0;
    json_t *s;
    json_array_foreach(services, i, s)
    {
        const char *sn = th__jstr(s, "name");
        if (sn && strcmp(sn, name) == 0)
            n++;
    }
    return n;
}

th__table *th__services_table(const json_t *services, const char *only, int brief)
{
    static const char *const full_hdr[] = {"NAME", "PID", "STATE", "UPTIME", "RESTARTS",
                                           "CPU",  "MEM", "TYPE",  "NEXT"};
    static const char *const brief_hdr[] = {"NAME", "STATE", "PID", "CPU", "MEM", "RESTARTS"};
    th__table *t = brief ? th__table_new(6, brief_hdr) : th__table_new(9, full_hdr);
    if (!t)
        return NULL;
    static const int full_right[] = {1, 3, 4, 5, 6};
    static const int brief_right[] = {2, 3, 4, 5};
    for (size_t c = 0; c < (brief ? 4u : 5u); c++)
        th__table_align_right(t, brief ? brief_right[c] : full_right[c]);
    int64_t now = th__now_ms();
    size_t i;
    json_t *s;
    json_array_foreach(services, i, s)
    {
        const char *name = th__jstr(s, "name");
        if (!name || (only && strcmp(name, only) != 0))
            continue;
        char label[128], pid[24], up[32], restarts[24], cpu[32], mem[32], next[40];
        if (instances_of(services, name) > 1)
            snprintf(label, sizeof label, "%s:%lld", name, (long long)th__jint(s, "instance"));
        else
            snprintf(label, sizeof label, "%s", name);
        int64_t p = th__jint(s, "pid");
        snprintf(pid, sizeof pid, "%lld", (long long)p);
        snprintf(restarts, sizeof restarts, "%lld", (long long)th__jint(s, "restarts"));
        fmt_dur(th__jint(s, "uptime_ms"), up, sizeof up);
        fmt_cpu(th__jnum(s, "cpu_percent"), cpu, sizeof cpu);
        double rss = th__jnum(s, "rss_bytes");
        th__fmt_bytes(rss, mem, sizeof mem);
        if (rss <= 0) /* not sampled yet */
            snprintf(mem, sizeof mem, "-");
        const char *type = th__jstr(s, "type");
        int64_t at = th__jint(s, "next_run_at");
        snprintf(next, sizeof next, "-");
        if (at > 0 && type && strcmp(type, "periodic") == 0) {
            if (at - now < 1000) {
                snprintf(next, sizeof next, "now");
            } else {
                char d[32];
                fmt_dur(at - now, d, sizeof d);
                snprintf(next, sizeof next, "in %s", d);
            }
        }
        /* No process: no pid, uptime, CPU or memory to speak of. */
        const char *np = p > 0 ? NULL : "-";
        if (brief) {
            const char *row[] = {label,         th__jstr(s, "state"), np ? np : pid,
                                 np ? np : cpu, np ? np : mem,        restarts};
            th__table_add(t, row);
        } else {
            const char *row[] = {label,         np ? np : pid, th__jstr(s, "state"),
                                 np ? np : up,  restarts,      np ? np : cpu,
                                 np ? np : mem, type,          next};
            th__table_add(t, row);
        }
    }
    return t;
}

/* "health: 75% (3/4 healthy), not healthy; alert: ..." */
static void health_line(const json_t *h, th__sbuf *out)
{
    double score = th__jnum(h, "score");
    if (!(score >= 0))
        score = 0;
    /* Rounded down: 100% means every service is healthy. */
    th__sbuf_addf(out, "health: %.0f%% (%lld/%lld healthy)", floor(score * 100 + 1e-9),
                  (long long)th__jint(h, "healthy_services"), (long long)th__jint(h, "services"));
    json_t *ok = json_object_get(h, "healthy");
    if (json_is_boolean(ok) && !json_is_true(ok))
        th__sbuf_adds(out, ", not healthy");
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(h, "alerts"), i, a)
    {
        char text[512];
        th__fmt_json(a, text, sizeof text);
        th__sbuf_addf(out, "; alert: %s", text);
    }
}

/* The array of service objects of an answer: {"services": [...]}, a bare
 * array, or one service object. A new reference, or NULL. */
static json_t *services_of(json_t *answer)
{
    json_t *list = json_object_get(answer, "services");
    if (json_is_array(list))
        return json_incref(list);
    if (json_is_array(answer))
        return json_incref(answer);
    if (json_is_object(answer) && th__jstr(answer, "name")) {
        json_t *arr = json_array();
        json_array_append(arr, answer);
        return arr;
    }
    return NULL;
}

/* "/v1/services/<name><suffix>". The name is not percent-escaped: the
 * server takes path segments as they are, and a service name (checked with
 * th__is_service_name first) has only characters a path may hold (':'
 * included, which escaping would turn into "%3A"). */
void th__service_path(th__sbuf *b, const char *name, const char *suffix)
{
    th__sbuf_adds(b, "/v1/services");
    if (name) {
        th__sbuf_adds(b, "/");
        th__sbuf_adds(b, name);
    }
    th__sbuf_adds(b, suffix);
}

/* GET /v1/services[/NAME]; a 404 of the whole list says what it likely means. */
static int get_services(th__cli *cli, const char *name, json_t **out)
{
    th__sbuf path;
    th__sbuf_init(&path, 4096);
    th__service_path(&path, name, "");
    long status = 0;
    int quiet = cli->quiet;
    cli->quiet = 1;
    int rc = th__http(cli, "GET", th__sbuf_str(&path), NULL, out, &status);
    cli->quiet = quiet;
    th__sbuf_free(&path);
    if (rc == 0)
        return 0;
    char msg[TH_CLI_ERRMSG];
    snprintf(msg, sizeof msg, "%s", cli->err);
    if (status == 404 && !name)
        return th__cli_fail(cli, rc, "%s (is the daemon older than this client?)", msg);
    return th__cli_fail(cli, rc, "%s", msg);
}

int th__print_service_rows(json_t *answer, const char *only)
{
    json_t *list = services_of(answer);
    th__table *t = list ? th__services_table(list, only, 0) : NULL;
    int rows = t ? th__table_rows(t) : 0;
    if (rows > 0)
        th__table_emit(t);
    th__table_free(t);
    json_decref(list);
    return rows;
}

/* ---- ps ------------------------------------------------------------------------ */

int th__cmd_ps(th__cli *cli, int argc, char **argv)
{
    const char *name = NULL;
    int n;
    int rc = th__args_positional(cli, argc, argv, &name, 1, &n);
    if (rc == TH_ARG_HELP)
        return th__print_usage(th__usage_ps);
    if (rc)
        return rc;
    if (name && !th__is_service_name(name))
        return th__cli_usage_error(cli, "'%s' is not a service name", name);
    json_t *answer = NULL, *health = NULL;
    rc = get_services(cli, name, &answer);
    if (rc != 0)
        return rc;
    json_t *list = services_of(answer);
    if (!name)
        rc = th__http(cli, "GET", "/v1/services/health", NULL, &health, NULL);
    if (cli->json) {
        if (name) {
            th__print_json(stdout, answer);
        } else {
            json_t *both = json_object();
            json_object_set_new(both, "services", list ? json_incref(list) : json_array());
            json_object_set_new(both, "health", health ? json_incref(health) : json_null());
            th__print_json(stdout, both);
            json_decref(both);
        }
    } else if (json_array_size(list) == 0) {
        fprintf(stderr, "no services (none in the daemon's configuration, none added with "
                        "'taskhive add')\n");
    } else {
        th__table *t = th__services_table(list, NULL, 0);
        if (t)
            th__table_emit(t);
        th__table_free(t);
        if (health && rc == 0) {
            th__sbuf line;
            th__sbuf_init(&line, 64 * 1024);
            health_line(health, &line);
            printf("%s\n", th__sbuf_str(&line));
            th__sbuf_free(&line);
        }
        if (!t)
            rc = th__cli_fail(cli, TH_CLI_FAILED, "out of memory");
    }
    json_decref(list);
    json_decref(answer);
    json_decref(health);
    return rc;
}

/* ---- start, stop, restart, trigger ---------------------------------------------- */

static int service_action(th__cli *cli, int argc, char **argv, const char *action,
                          const char *usage)
{
    int trigger = strcmp(action, "trigger") == 0;
    const char *name = NULL;
    int n;
    int prc = th__args_positional(cli, argc, argv, &name, 1, &n);
    if (prc == TH_ARG_HELP)
        return th__print_usage(usage);
    if (prc)
        return prc;
    if (!name)
        return th__cli_usage_error(cli, "missing service NAME%s (see 'taskhive %s --help')",
                                   trigger ? "" : " or 'all'", action);
    int all = strcmp(name, "all") == 0;
    if (all && trigger)
        return th__cli_usage_error(cli, "give one service NAME, not 'all'");
    if (!th__is_service_name(name))
        return th__cli_usage_error(cli, "'%s' is not a service name", name);
    th__sbuf path;
    th__sbuf_init(&path, 4096);
    th__service_path(&path, name, "/");
    th__sbuf_adds(&path, action);
    json_t *answer = NULL;
    int rc = th__http(cli, "POST", th__sbuf_str(&path), NULL, &answer, NULL);
    th__sbuf_free(&path);
    if (rc != 0)
        return rc;
    if (cli->json) {
        if (answer)
            th__print_json(stdout, answer);
        json_decref(answer);
        return TH_CLI_OK;
    }
    json_t *list = services_of(answer);
    th__table *t = list ? th__services_table(list, all ? NULL : name, 0) : NULL;
    if (t && th__table_rows(t) > 0) {
        th__table_emit(t);
    } else {
        static const char *const done[][2] = {{"start", "started"},
                                              {"stop", "stopped"},
                                              {"restart", "restarting"},
                                              {"trigger", "triggered"}};
        const char *what = action;
        for (size_t i = 0; i < sizeof done / sizeof done[0]; i++)
            if (strcmp(done[i][0], action) == 0)
                what = done[i][1];
        printf("%s: %s\n", name, what);
    }
    th__table_free(t);
    json_decref(list);
    json_decref(answer);
    return TH_CLI_OK;
}

int th__cmd_svc_start(th__cli *cli, int argc, char **argv)
{
    return service_action(cli, argc, argv, "start", th__usage_svc_start);
}

int th__cmd_svc_stop(th__cli *cli, int argc, char **argv)
{
    return service_action(cli, argc, argv, "stop", th__usage_svc_stop);
}

int th__cmd_svc_restart(th__cli *cli, int argc, char **argv)
{
    return service_action(cli, argc, argv, "restart", th__usage_svc_restart);
}

int th__cmd_svc_trigger(th__cli *cli, int argc, char **argv)
{
    return service_action(cli, argc, argv, "trigger", th__usage_svc_trigger);
}

/* ---- logs NAME ------------------------------------------------------------------- */

static volatile sig_atomic_t logs_stop;

static void on_stop(int sig)
{
    (void)sig;
    logs_stop = 1;
}

typedef struct svclog {
    th__cli *cli;
    const char *name;
    char *tail[FOLLOW_TAIL]; /* the last lines seen, oldest first */
    size_t ntail;
} svclog;

/* GET the last `n` lines: 0 with *answer and *lines (borrowed), or a status. */
static int get_lines(svclog *s, long long n, json_t **answer, json_t **lines, long *status)
{
    char num[32];
    snprintf(num, sizeof num, "%lld", n);
    th__sbuf path;
    th__sbuf_init(&path, 4096);
    th__service_path(&path, s->name, "/logs");
    th__sbuf_add_query(&path, "lines", num);
    int rc = th__http(s->cli, "GET", th__sbuf_str(&path), NULL, answer, status);
    th__sbuf_free(&path);
    if (rc != 0)
        return rc;
    *lines = json_object_get(*answer, "lines");
    if (!json_is_array(*lines)) {
        json_decref(*answer);
        *answer = NULL;
        return th__cli_fail(s->cli, TH_CLI_FAILED, "the server's answer has no \"lines\"");
    }
    return 0;
}

static const char *line_at(const json_t *lines, size_t i)
{
    const char *l = json_string_value(json_array_get(lines, i));
    return l ? l : "";
}

static void print_lines(const svclog *s, const json_t *lines, size_t from)
{
    for (size_t i = from; i < json_array_size(lines); i++) {
        if (s->cli->json) {
            char *j = json_dumps(json_array_get(lines, i), JSON_ENCODE_ANY);
            if (j)
                printf("%s\n", j);
            free(j);
        } else {
            printf("%s\n", line_at(lines, i));
        }
    }
    fflush(stdout);
}

/* Remembers the last lines of `lines` as the place to continue from. */
static void remember(svclog *s, const json_t *lines)
{
    size_t n = json_array_size(lines);
    if (n == 0)
        return; /* an empty answer: keep the old place */
    for (size_t i = 0; i < s->ntail; i++)
        free(s->tail[i]);
    s->ntail = 0;
    for (size_t i = n > FOLLOW_TAIL ? n - FOLLOW_TAIL : 0; i < n; i++) {
        char *copy = strdup(line_at(lines, i));
        if (copy)
            s->tail[s->ntail++] = copy;
    }
}

/* The index of the first line after the last one seen, or -1 when the lines
 * seen are not in `lines` (or nothing was seen yet). The last matching place
 * wins; the lines before it must match too, so that a repeated line is not
 * taken for the last one seen. */
static long find_new(const svclog *s, const json_t *lines)
{
    size_t n = json_array_size(lines);
    if (s->ntail == 0)
        return -1;
    for (size_t p = n; p-- > 0;) {
        size_t k = 0;
        while (k < s->ntail && k <= p &&
               strcmp(line_at(lines, p - k), s->tail[s->ntail - 1 - k]) == 0)
            k++;
        if (k == s->ntail || (k > 0 && k == p + 1))
            return (long)p + 1;
    }
    return -1;
}

/* One poll of --follow: prints what is new. 0, or an exit status for a
 * refusal (4xx); a transport failure or a 5xx is -1 (try again later). */
static int poll_new(svclog *s, int *down)
{
    long long want = FOLLOW_FETCH;
    json_t *answer = NULL, *lines = NULL;
    long status = 0;
    long from;
    for (;;) {
        s->cli->quiet = *down; /* say it once, not every second */
        int rc = get_lines(s, want, &answer, &lines, &status);
        s->cli->quiet = 0;
        if (rc != 0) {
            if (status >= 400 && status < 500) {
                if (*down) /* not said yet */
                    fprintf(stderr, "taskhive: %s\n", s->cli->err);
                return rc;
            }
            if (!*down)
                fprintf(stderr, "taskhive: retrying every second\n");
            *down = 1;
            return -1;
        }
        from = find_new(s, lines);
        /* All of them are new: there may be more than asked for. */
        if (from < 0 && json_array_size(lines) >= (size_t)want && want < LOG_LINES_MAX) {
            json_decref(answer);
            want = want * 10 < LOG_LINES_MAX ? want * 10 : LOG_LINES_MAX;
            continue;
        }
        break;
    }
    if (*down) {
        fprintf(stderr, "taskhive: reconnected\n");
        *down = 0;
    }
    if (from < 0) {
        from = 0;
        if (s->ntail > 0 && json_array_size(lines) >= (size_t)want)
            fprintf(stderr, "taskhive: more than %lld new lines in a second; some were skipped\n",
                    want);
        else if (s->ntail > 0) /* the server reads the current file only */
            fprintf(stderr,
                    "taskhive: the log of %s was rotated; the lines written just before may be "
                    "missing\n",
                    s->name);
    }
    print_lines(s, lines, (size_t)from);
    remember(s, lines);
    json_decref(answer);
    return 0;
}

int th__service_logs(th__cli *cli, const char *name, long long nlines, int follow)
{
    svclog s;
    memset(&s, 0, sizeof s);
    s.cli = cli;
    s.name = name;
    json_t *answer = NULL, *lines = NULL;
    long status = 0;
    /* --lines 0 --follow: only what comes next (the last lines mark the place). */
    cli->quiet = 1;
    int rc = get_lines(&s, nlines > 0 ? nlines : FOLLOW_FETCH, &answer, &lines, &status);
    cli->quiet = 0;
    if (rc != 0) {
        char msg[TH_CLI_ERRMSG];
        snprintf(msg, sizeof msg, "%s", cli->err);
        if (status == 404 && !th__is_task_id(name)) /* maybe a task id cut short */
            return th__cli_fail(cli, rc, "%s; a task ID would have 26 characters", msg);
        return th__cli_fail(cli, rc, "%s", msg);
    }
    if (!follow) {
        if (cli->json)
            th__print_json(stdout, answer);
        else if (json_array_size(lines) == 0)
            fprintf(stderr, "no log lines\n");
        else
            print_lines(&s, lines, 0);
        json_decref(answer);
        return TH_CLI_OK;
    }
    if (nlines > 0)
        print_lines(&s, lines, 0);
    remember(&s, lines);
    json_decref(answer);

    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    int down = 0;
    rc = TH_CLI_OK;
    while (!logs_stop) {
        int64_t next = th__now_ms() + FOLLOW_POLL_MS;
        while (!logs_stop && th__now_ms() < next)
            poll(NULL, 0, 50);
        if (logs_stop)
            break;
        int r = poll_new(&s, &down);
        if (r > 0) {
            rc = r;
            break;
        }
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    for (size_t i = 0; i < s.ntail; i++)
        free(s.tail[i]);
    return rc;
}
