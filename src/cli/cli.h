/*
 * The taskhive command-line client (private to src/cli): the state every verb
 * shares, the HTTP client over libcurl, option parsing, the event-stream
 * reader, text formatting and tables. Nothing here is part of libtaskhive.
 */
#ifndef TH_CLI_CLI_H
#define TH_CLI_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

/* Exit statuses of every verb (documented in `taskhive help` and taskhive(1)). */
enum {
    TH_CLI_OK = 0,          /* done */
    TH_CLI_FAILED = 1,      /* the server refused (4xx/5xx) or the task did not complete */
    TH_CLI_USAGE = 2,       /* bad usage: unknown verb or option, bad argument */
    TH_CLI_UNREACHABLE = 3, /* cannot reach the server */
};

#define TH_CLI_DEFAULT_URL "http://127.0.0.1:7070"
#define TH_CLI_MAX_BODY (256u << 20)      /* largest answer body read */
#define TH_CLI_MAX_SSE_LINE (8u << 20)    /* longest event-stream line */
#define TH_CLI_MAX_PAYLOAD_ARG (4u << 20) /* largest payload read from stdin */
#define TH_CLI_ERRMSG 512

/* Shared by every verb. Filled by main from the environment and the common
 * options (--url, --token, --json), which any verb also accepts. */
typedef struct th__cli {
    const char *verb;        /* the verb being run, for messages */
    const char *url;         /* base URL, e.g. http://127.0.0.1:7070 (no trailing '/') */
    const char *token;       /* bearer token or NULL */
    int json;                /* --json: print the server's JSON, not tables */
    int quiet;               /* keep errors in `err` instead of printing them */
    int url_checked;         /* th__cli_check_url accepted `url` */
    char err[TH_CLI_ERRMSG]; /* the last error, one line, without "taskhive: " */
    void *curl;              /* a reused CURL easy handle (connection reuse) */
} th__cli;

/* ---- sbuf.c: a growable string with a hard limit ------------------------ */

typedef struct th__sbuf {
    char *data; /* NUL-terminated; NULL until something is appended */
    size_t len, cap, limit;
    int failed; /* set when an append was refused (limit or memory) */
} th__sbuf;

void th__sbuf_init(th__sbuf *b, size_t limit);
void th__sbuf_free(th__sbuf *b);
int th__sbuf_add(th__sbuf *b, const char *s, size_t n);
int th__sbuf_adds(th__sbuf *b, const char *s);
int th__sbuf_addf(th__sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends `s` percent-escaped for a URL path segment or query value. */
int th__sbuf_add_escaped(th__sbuf *b, const char *s);
/* Appends "?name=value" or "&name=value" (value escaped) when value is set. */
int th__sbuf_add_query(th__sbuf *b, const char *name, const char *value);
/* Returns the text (never NULL: "" when empty). */
const char *th__sbuf_str(const th__sbuf *b);
/* Appends "/v1/tasks/<id, escaped><suffix>" (client.c). */
int th__task_path(th__sbuf *b, const char *id, const char *suffix);

/* ---- client.c ---------------------------------------------------------- */

/* Initialises libcurl and `cli` (the URL and token come from the environment
 * until options override them). Returns 0, or TH_CLI_FAILED on failure. */
int th__cli_init(th__cli *cli);
/* Releases what th__cli_init and the requests acquired. */
void th__cli_cleanup(th__cli *cli);
/* Checks cli->url: http:// or https://, trailing slashes removed (it may
 * rewrite the string it points to into a static copy). Returns 0 or prints
 * one line and returns TH_CLI_USAGE. */
int th__cli_check_url(th__cli *cli);

/* Records an error message in cli->err and, unless cli->quiet, prints it on
 * stderr as "taskhive: <message>". Returns `code`. */
int th__cli_fail(th__cli *cli, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prints "taskhive: <verb>: <message>" on stderr and returns TH_CLI_USAGE. */
int th__cli_usage_error(th__cli *cli, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Sends METHOD to cli->url + path (path starts with "/", query included,
 * components already escaped) with `body` (borrowed; NULL for none) as JSON.
 * On a 2xx answer stores the parsed body in *out (the caller json_decrefs it;
 * NULL when the body is empty) and returns 0. Otherwise reports one line
 * (see th__cli_fail) and returns TH_CLI_FAILED for an error answer or
 * TH_CLI_UNREACHABLE when the server cannot be reached. `status` (may be
 * NULL) receives the HTTP status, 0 when there was none. */
int th__http(th__cli *cli, const char *method, const char *path, json_t *body, json_t **out,
             long *status);

/* Reports an error answer (th__cli_fail, with a hint for a missing token);
 * returns TH_CLI_FAILED. */
int th__cli_fail_answer(th__cli *cli, long status, const char *body, size_t len);

/* Turns an error answer into one line in `buf`: "<message> (field: x)", or
 * "HTTP <status>" and the start of the body when it is not an error object. */
void th__http_error_text(long status, const char *body, size_t len, char *buf, size_t size);

/* ---- args.c: option parsing --------------------------------------------- */

enum { TH_ARG_END = -1, TH_ARG_POS = -2, TH_ARG_ERR = -3, TH_ARG_HELP = -4 };

typedef struct th__opt {
    const char *name; /* long name without "--" */
    char short_name;  /* 0 for none */
    int has_arg;
    int id; /* >= 0, returned by th__args_next */
} th__opt;

typedef struct th__args {
    th__cli *cli;
    int argc;
    char **argv;
    int i;               /* next argument */
    int only_pos;        /* after "--" */
    const th__opt *opts; /* the verb's options, ended by {0} (may be NULL) */
} th__args;

/* Prepares to parse argv[1..argc-1] (argv[0] is the verb). */
void th__args_init(th__args *a, th__cli *cli, int argc, char **argv, const th__opt *opts);
/* Returns the next option's id with its value in *val, TH_ARG_POS with a
 * positional argument in *val, TH_ARG_END, TH_ARG_HELP for -h/--help, or
 * TH_ARG_ERR after printing one line (unknown option, missing value). The
 * common options --url, --token and --json are applied to the cli and
 * skipped. Accepts "--name value", "--name=value", "-x value". */
int th__args_next(th__args *a, const char **val);
/* Parses a verb with no options of its own (the common ones aside) into at
 * most `max` positional arguments, pos[0..*n-1]. Returns 0, TH_ARG_HELP for
 * -h/--help, or TH_CLI_USAGE after one line on stderr (a bad option, one
 * argument too many). */
int th__args_positional(th__cli *cli, int argc, char **argv, const char **pos, int max, int *n);

/* Parses a whole non-negative number in [0, max]. Returns 0 or prints one
 * line naming `what` and returns TH_CLI_USAGE. */
int th__parse_uint(th__cli *cli, const char *what, const char *text, long long max, long long *out);
/* Parses `text` as JSON (any value) for option or argument `what`. Returns 0
 * with a new reference in *out, or prints one line and returns TH_CLI_USAGE. */
int th__parse_json(th__cli *cli, const char *what, const char *text, json_t **out);

/* ---- fmt.c: text helpers ------------------------------------------------ */

int64_t th__now_ms(void);
/* "4s", "3m", "2h", "5d" for a duration in ms ("-" for <0). */
void th__fmt_duration(int64_t ms, char *buf, size_t size);
/* "512B", "4.0KiB", "35.2MiB", "1.2GiB" for a size in bytes. */
void th__fmt_bytes(double bytes, char *buf, size_t size);
/* "2024-11-23 17:54:00" in local time, "-" for 0. */
void th__fmt_time(int64_t ms, char *buf, size_t size);
/* Display width of UTF-8 text (code points). */
size_t th__text_width(const char *s);
/* Copies at most `width` columns of `s` into buf, ending with "…" when cut;
 * newlines and tabs become spaces. */
void th__fmt_clip(const char *s, size_t width, char *buf, size_t size);
/* A progress bar "[#####-----]" of `width` cells inside the brackets. */
void th__fmt_bar(double percent, int width, char *buf, size_t size);
/* The JSON value as compact text into buf ("-" for NULL or null); strings
 * are written without quotes. */
void th__fmt_json(const json_t *v, char *buf, size_t size);
/* Member helpers that tolerate missing or wrong-typed members. */
const char *th__jstr(const json_t *obj, const char *key); /* NULL unless a string */
int64_t th__jint(const json_t *obj, const char *key);     /* 0 unless a number */
double th__jnum(const json_t *obj, const char *key);      /* 0 unless a number */
int th__jbool(const json_t *obj, const char *key);
/* Prints `v` as indented JSON followed by a newline. */
void th__print_json(FILE *f, const json_t *v);
/* Terminal columns of stdout (80 when not a terminal). */
int th__term_cols(void);
int th__term_rows(void);
/* Whether a task state is final (completed, failed, cancelled, timeout, expired). */
int th__state_final(const char *state);

/* ---- table.c: aligned tables --------------------------------------------- */

typedef struct th__table th__table;

/* A table with `ncols` columns named by `headers` (copied). NULL on OOM. */
th__table *th__table_new(int ncols, const char *const *headers);
void th__table_free(th__table *t);
/* Right-aligns column `col` (numbers). */
void th__table_align_right(th__table *t, int col);
/* Appends a row of `ncols` cells (copied; NULL prints "-"). 0 or -1 on OOM. */
int th__table_add(th__table *t, const char *const *cells);
int th__table_rows(const th__table *t);
/* Writes the table: a header line, then at most `max_rows` rows (<0: all);
 * lines are clipped to `max_width` columns (0: no limit) by shrinking the last
 * column. `eol` ends each line ("\n", or "\x1b[K\n" on a live screen). */
void th__table_print(const th__table *t, th__sbuf *out, size_t max_width, int max_rows,
                     const char *eol);
/* Prints the table to stdout, clipped to the terminal's width when stdout
 * is one. */
void th__table_emit(const th__table *t);

/* ---- sse.c: the event stream -------------------------------------------- */

/* What th__sse_event callbacks return to go on; any value >= 0 stops the
 * stream and becomes th__sse_run's return value. */
#define TH_SSE_CONTINUE (-1)

typedef struct th__sse_event {
    const char *id;   /* "" when the event had none */
    const char *type; /* "message" when the event had none */
    const char *data; /* lines joined with '\n' */
    json_t *json;     /* data parsed (NULL when not JSON); borrowed */
} th__sse_event;

typedef struct th__sse_handler {
    /* The stream is (re)connected (HTTP 200 seen); `reconnected` is 0 the
     * first time. A good place to fetch the current state. May be NULL. */
    int (*on_open)(void *ud, int reconnected);
    int (*on_event)(void *ud, const th__sse_event *ev);
    /* Called about every tick_ms while the stream is open or waiting to
     * reconnect. May be NULL. */
    int (*on_tick)(void *ud);
    /* The connection dropped; `why` says why. May be NULL. */
    void (*on_drop)(void *ud, const char *why);
    void *ud;
    int tick_ms;
} th__sse_handler;

/* Set from a signal handler to make th__sse_run return TH_CLI_OK. */
extern volatile int th__sse_stop;

/* Follows GET cli->url + path (e.g. "/v1/events?task=...") until a callback
 * stops it, reconnecting with Last-Event-ID when the connection drops. The
 * callbacks may make other requests with th__http. Returns the callback's
 * stop value, TH_CLI_OK when th__sse_stop was set, TH_CLI_UNREACHABLE when
 * the first connection fails, TH_CLI_FAILED on an error answer. */
int th__sse_run(th__cli *cli, const char *path, const th__sse_handler *h);

/* ---- verbs ---------------------------------------------------------------- */

typedef int (*th__cmd_fn)(th__cli *cli, int argc, char **argv);

int th__cmd_submit(th__cli *cli, int argc, char **argv);
int th__cmd_ls(th__cli *cli, int argc, char **argv);
int th__cmd_show(th__cli *cli, int argc, char **argv);
int th__cmd_logs(th__cli *cli, int argc, char **argv);
int th__cmd_cancel(th__cli *cli, int argc, char **argv);
int th__cmd_retry(th__cli *cli, int argc, char **argv);
int th__cmd_result(th__cli *cli, int argc, char **argv);
int th__cmd_graph(th__cli *cli, int argc, char **argv);
int th__cmd_workers(th__cli *cli, int argc, char **argv);
int th__cmd_queues(th__cli *cli, int argc, char **argv);
int th__cmd_stats(th__cli *cli, int argc, char **argv);
int th__cmd_watch(th__cli *cli, int argc, char **argv);
int th__cmd_top(th__cli *cli, int argc, char **argv);
int th__cmd_ps(th__cli *cli, int argc, char **argv);
int th__cmd_svc_start(th__cli *cli, int argc, char **argv);
int th__cmd_svc_stop(th__cli *cli, int argc, char **argv);
int th__cmd_svc_restart(th__cli *cli, int argc, char **argv);
int th__cmd_svc_trigger(th__cli *cli, int argc, char **argv);
int th__cmd_svc_add(th__cli *cli, int argc, char **argv);
int th__cmd_svc_rm(th__cli *cli, int argc, char **argv);
int th__cmd_providers(th__cli *cli, int argc, char **argv);
int th__cmd_spend(th__cli *cli, int argc, char **argv);
int th__cmd_agents(th__cli *cli, int argc, char **argv);
int th__cmd_keys(th__cli *cli, int argc, char **argv);

/* Usage texts, printed by `VERB --help` and `taskhive help VERB`. */
extern const char th__usage_submit[], th__usage_ls[], th__usage_show[], th__usage_logs[],
    th__usage_cancel[], th__usage_retry[], th__usage_result[], th__usage_graph[],
    th__usage_workers[], th__usage_queues[], th__usage_stats[], th__usage_watch[], th__usage_top[],
    th__usage_ps[], th__usage_svc_start[], th__usage_svc_stop[], th__usage_svc_restart[],
    th__usage_svc_trigger[], th__usage_svc_add[], th__usage_svc_rm[], th__usage_providers[],
    th__usage_spend[], th__usage_agents[], th__usage_keys[];

/* Prints `usage` to stdout and returns TH_CLI_OK (for --help). */
int th__print_usage(const char *usage);

/* Shared by submit --wait and watch ID (cmd_watch.c): follows task `id` until
 * it ends. When `show` is set, draws its progress on stderr (a terminal) as
 * it goes. Stores the final task object in *final (may be NULL; caller
 * json_decrefs). Returns TH_CLI_OK when it completed, TH_CLI_FAILED when it
 * ended otherwise, or a transport code. */
int th__follow_task(th__cli *cli, const char *id, int show, json_t **final);

/* ---- cmd_services.c: the supervisor's services (docs/API.md, "Services") ---- */

/* Whether `s` is a service name: 1-64 characters of [A-Za-z0-9_.:-]. */
int th__is_service_name(const char *s);
/* Whether `s` looks like a task id: 26 characters of Crockford base 32. */
int th__is_task_id(const char *s);
/* A table of the instances in `services` (an array of service objects) whose
 * name is `only` (NULL: every one). Names get a ":i" suffix when the service
 * has more than one instance in the array. `brief`: the columns of `top`
 * (NAME STATE PID CPU MEM RESTARTS); else those of `ps` (NAME PID STATE
 * UPTIME RESTARTS CPU MEM TYPE NEXT). NULL on OOM. */
th__table *th__services_table(const json_t *services, const char *only, int brief);
/* Appends "/v1/services[/<name>]<suffix>" (`name` unescaped: check it with
 * th__is_service_name first; NULL for the list). */
void th__service_path(th__sbuf *b, const char *name, const char *suffix);
/* Prints, as `ps` does, the rows of service `only` (NULL: every one) found in
 * an answer holding {"services": [...]}, a bare array or one service object.
 * Returns the number of rows printed (0: nothing printed). */
int th__print_service_rows(json_t *answer, const char *only);
/* Prints the logs of service `name` (the rest of `logs`, cmd_logs.c): the
 * last `lines` lines, then with `follow` the new ones every second until
 * Ctrl-C. Returns an exit status. */
int th__service_logs(th__cli *cli, const char *name, long long lines, int follow);

#endif
