/*
 * `taskhive watch`: live progress from the event stream (GET /v1/events). On a
 * terminal, finished tasks scroll up as log lines while the bottom of the
 * screen holds one redrawn line per running task, with a bar from its percent
 * and its message. Elsewhere every event is one plain line; with --json the
 * events' JSON, one per line. Also follows a single task for submit --wait.
 */
#include "cli/cli.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char th__usage_watch[] =
    "usage: taskhive watch [ID] [--queue Q] [--json]\n"
    "\n"
    "Shows live progress from the server's event stream: one line per running\n"
    "task with a progress bar and its message; finished tasks scroll up as log\n"
    "lines. With ID, follows that task and exits when it ends (exit status 0 when\n"
    "it completed, 1 otherwise). Without ID, runs until Ctrl-C. A dropped\n"
    "connection is reopened and resumes after the last event seen.\n"
    "\n"
    "  --queue Q   only tasks of queue Q\n"
    "  --json      print each event's JSON, one per line (no drawing)\n";

typedef struct live_task {
    char id[40];
    char queue[96];
    char state[24];
    double percent;
    char message[256];
    int64_t since; /* server time it started (or was first seen) */
    int attempt;
    double logged_percent; /* plain output: the percent last printed */
} live_task;

typedef struct watch {
    th__cli *cli;
    const char *task_id; /* following one task, or NULL */
    const char *queue;
    FILE *out;
    int draw;  /* a terminal: keep a redrawn live region */
    int plain; /* print every event as a line (not a terminal, not --json) */
    int json;  /* print events' JSON */
    int drawn; /* lines of the live region on screen */
    live_task *tasks;
    size_t ntasks, cap;
    json_t *final; /* the finished task (one-task mode) */
    th__sbuf frame;
    int64_t drawn_at; /* when the live region was last drawn */
    int dirty;        /* it changed since */
    int lost;         /* the connection is down (said once per outage) */
} watch;

#define REDRAW_MS 100 /* at most ten redraws a second, whatever the event rate */
#define TICK_MS 100

/* ---- the live region ---------------------------------------------------- */

static live_task *find_task(watch *w, const char *id)
{
    for (size_t i = 0; i < w->ntasks; i++)
        if (strcmp(w->tasks[i].id, id) == 0)
            return &w->tasks[i];
    return NULL;
}

static live_task *upsert_task(watch *w, const char *id)
{
    live_task *t = find_task(w, id);
    if (t)
        return t;
    if (w->ntasks == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 16;
        live_task *p = realloc(w->tasks, cap * sizeof *p);
        if (!p)
            return NULL;
        w->tasks = p;
        w->cap = cap;
    }
    t = &w->tasks[w->ntasks++];
    memset(t, 0, sizeof *t);
    snprintf(t->id, sizeof t->id, "%s", id);
    t->since = th__now_ms();
    return t;
}

static void remove_task(watch *w, const char *id)
{
    live_task *t = find_task(w, id);
    if (!t)
        return;
    size_t i = (size_t)(t - w->tasks);
    memmove(&w->tasks[i], &w->tasks[i + 1], (w->ntasks - i - 1) * sizeof *t);
    w->ntasks--;
}

/* Appends one live line for `t`, clipped to the terminal. */
static void live_line(watch *w, const live_task *t, int cols)
{
    char line[1024], bar[64], el[32], msg[512];
    th__fmt_duration(th__now_ms() - t->since, el, sizeof el);
    th__fmt_clip(t->message, sizeof msg / 4, msg, sizeof msg);
    int barw = cols >= 120 ? 30 : cols >= 100 ? 20 : 12;
    if (strcmp(t->state, "running") == 0) {
        th__fmt_bar(t->percent, barw, bar, sizeof bar);
        snprintf(line, sizeof line, "%s  %-12s %s %3.0f%%  %5s  %s", t->id, t->queue, bar,
                 t->percent, el, msg);
    } else {
        snprintf(line, sizeof line, "%s  %-12s %-*s  %s", t->id, t->queue, barw + 7, t->state, msg);
    }
    char clip[1024];
    th__fmt_clip(line, cols > 1 ? (size_t)cols - 1 : 1, clip, sizeof clip);
    th__sbuf_adds(&w->frame, clip);
    th__sbuf_adds(&w->frame, "\x1b[K\n");
}

/* Redraws the live region, after printing `log` (lines, may be NULL) above it. */
static void redraw(watch *w, const char *log)
{
    if (!w->draw) {
        if (log && *log) {
            fputs(log, w->out);
            fflush(w->out);
        }
        return;
    }
    int64_t now = th__now_ms();
    if ((!log || !*log) && now - w->drawn_at < REDRAW_MS) {
        w->dirty = 1;
        return;
    }
    w->drawn_at = now;
    w->dirty = 0;
    w->frame.len = 0;
    w->frame.failed = 0;
    if (w->drawn > 0)
        th__sbuf_addf(&w->frame, "\r\x1b[%dA\x1b[J", w->drawn);
    if (log)
        th__sbuf_adds(&w->frame, log);
    int cols = th__term_cols();
    int max = th__term_rows() - 2;
    if (max < 1)
        max = 1;
    int n = 0;
    for (size_t i = 0; i < w->ntasks; i++) {
        if (n == max - 1 && w->ntasks > (size_t)max) {
            th__sbuf_addf(&w->frame, "... and %zu more\x1b[K\n", w->ntasks - i);
            n++;
            break;
        }
        live_line(w, &w->tasks[i], cols);
        n++;
    }
    w->drawn = n;
    if (w->frame.len)
        fwrite(w->frame.data, 1, w->frame.len, w->out);
    fflush(w->out);
}

/* A log line: "HH:MM:SS TYPE ID QUEUE [attempt N] message". */
static void log_line(th__sbuf *b, const char *type, const json_t *ev)
{
    char tbuf[32] = "", msg[600];
    int64_t ms = th__jint(ev, "time");
    th__fmt_time(ms ? ms : th__now_ms(), tbuf, sizeof tbuf);
    const char *clock = strlen(tbuf) > 11 ? tbuf + 11 : tbuf;
    th__fmt_clip(th__jstr(ev, "message") ? th__jstr(ev, "message") : "", 300, msg, sizeof msg);
    th__sbuf_addf(b, "%s %-16s %s %s", clock, type,
                  th__jstr(ev, "task") ? th__jstr(ev, "task") : "-",
                  th__jstr(ev, "queue") ? th__jstr(ev, "queue") : "-");
    const char *state = th__jstr(ev, "state");
    if (state && strcmp(state, type) != 0)
        th__sbuf_addf(b, " (%s)", state);
    if (strcmp(type, "progress") == 0)
        th__sbuf_addf(b, " %lld%%", (long long)th__jint(ev, "progress"));
    if (th__jint(ev, "attempt") > 1)
        th__sbuf_addf(b, " [attempt %lld]", (long long)th__jint(ev, "attempt"));
    if (*msg)
        th__sbuf_addf(b, " %s", msg);
    th__sbuf_adds(b, "\n");
}

/* Replaces what is known of a task from its task object. */
static void load_task(watch *w, const json_t *task)
{
    const char *id = th__jstr(task, "id");
    if (!id)
        return;
    live_task *t = upsert_task(w, id);
    if (!t)
        return;
    snprintf(t->queue, sizeof t->queue, "%s",
             th__jstr(task, "queue") ? th__jstr(task, "queue") : "");
    snprintf(t->state, sizeof t->state, "%s",
             th__jstr(task, "state") ? th__jstr(task, "state") : "");
    json_t *p = json_object_get(task, "progress");
    t->percent = th__jnum(p, "percent");
    snprintf(t->message, sizeof t->message, "%s",
             th__jstr(p, "message") ? th__jstr(p, "message") : "");
    int64_t started = th__jint(task, "started_at");
    int64_t created = th__jint(task, "created_at");
    t->since = started ? started : created ? created : th__now_ms();
    t->attempt = (int)th__jint(task, "attempt");
}

/* ---- one task ----------------------------------------------------------- */

/* Fetches the followed task; stops (returns an exit status) when it ended. */
static int check_task(watch *w)
{
    th__sbuf path;
    th__sbuf_init(&path, 4096);
    th__task_path(&path, w->task_id, "");
    json_t *task = NULL;
    int rc = th__http(w->cli, "GET", th__sbuf_str(&path), NULL, &task, NULL);
    th__sbuf_free(&path);
    if (rc != 0)
        return rc;
    const char *state = th__jstr(task, "state");
    if (th__state_final(state)) {
        remove_task(w, w->task_id);
        json_decref(w->final);
        w->final = task;
        th__sbuf log;
        th__sbuf_init(&log, 8192);
        if (w->draw || w->plain) {
            json_t *ev = json_pack("{s:I, s:s, s:O?, s:s, s:I, s:O?}", "time",
                                   (json_int_t)th__jint(task, "finished_at"), "task", w->task_id,
                                   "queue", json_object_get(task, "queue"), "state", state,
                                   "attempt", (json_int_t)th__jint(task, "attempt"), "message",
                                   json_object_get(task, "error"));
            log_line(&log, state, ev);
            json_decref(ev);
        }
        redraw(w, th__sbuf_str(&log));
        th__sbuf_free(&log);
        return strcmp(state, "completed") == 0 ? TH_CLI_OK : TH_CLI_FAILED;
    }
    load_task(w, task);
    json_decref(task);
    redraw(w, NULL);
    return TH_SSE_CONTINUE;
}

/* Loads the running tasks (watching everything or a queue). */
static int load_running(watch *w)
{
    th__sbuf path;
    th__sbuf_init(&path, 4096);
    th__sbuf_adds(&path, "/v1/tasks");
    th__sbuf_add_query(&path, "state", "running");
    th__sbuf_add_query(&path, "queue", w->queue);
    th__sbuf_add_query(&path, "limit", "1000");
    json_t *list = NULL;
    int rc = th__http(w->cli, "GET", th__sbuf_str(&path), NULL, &list, NULL);
    th__sbuf_free(&path);
    if (rc != 0)
        return rc;
    w->ntasks = 0;
    size_t i;
    json_t *task;
    json_array_foreach(json_object_get(list, "tasks"), i, task) load_task(w, task);
    json_decref(list);
    redraw(w, NULL);
    return TH_SSE_CONTINUE;
}

static int on_open(void *ud, int reconnected)
{
    watch *w = ud;
    if (w->json && !w->task_id)
        return TH_SSE_CONTINUE;
    if (reconnected && (w->plain || w->draw))
        redraw(w, "(reconnected)\n");
    w->lost = 0;
    return w->task_id ? check_task(w) : load_running(w);
}

static int on_event(void *ud, const th__sse_event *ev)
{
    watch *w = ud;
    const json_t *j = ev->json;
    const char *type = ev->type;
    if (strcmp(type, "gap") == 0) {
        if (w->json) {
            json_t *g = json_is_object(j) ? json_deep_copy(j) : json_object();
            json_object_set_new(g, "type", json_string("gap"));
            char *text = json_dumps(g, JSON_COMPACT);
            if (text)
                fprintf(w->out, "%s\n", text);
            free(text);
            json_decref(g);
            fflush(w->out);
        }
        if (w->plain || w->draw)
            redraw(w, "(some events were missed)\n");
        return w->task_id ? check_task(w) : w->json ? TH_SSE_CONTINUE : load_running(w);
    }
    if (!json_is_object(j))
        return TH_SSE_CONTINUE;
    const char *id = th__jstr(j, "task");
    const char *state = th__jstr(j, "state");
    if (!id || !state || (w->task_id && strcmp(id, w->task_id) != 0))
        return TH_SSE_CONTINUE;
    if (w->json) {
        char *s = json_dumps(j, JSON_COMPACT);
        if (s)
            fprintf(w->out, "%s\n", s);
        free(s);
        fflush(w->out);
    }

    th__sbuf log;
    th__sbuf_init(&log, 8192);
    int tracked = find_task(w, id) != NULL;
    int final = th__state_final(state);
    live_task *known = find_task(w, id);
    int quiet_progress = 0;
    if (w->plain && known && strcmp(type, "progress") == 0) {
        /* Without a redrawn line, print progress in steps of 10 points or on a new message. */
        const char *m = th__jstr(j, "message");
        double pct = th__jnum(j, "progress");
        quiet_progress =
            pct < known->logged_percent + 10 && pct < 100 && (!m || strcmp(m, known->message) == 0);
        if (!quiet_progress)
            known->logged_percent = pct;
    }
    if ((w->task_id && final) || quiet_progress)
        ; /* check_task prints a followed task's outcome */
    else if (w->plain ||
             (w->draw && (final || strcmp(type, "retrying") == 0 || strcmp(type, "failed") == 0 ||
                          strcmp(type, "cancel_requested") == 0)))
        log_line(&log, type, j);

    if (final) {
        remove_task(w, id);
    } else if (w->task_id || strcmp(state, "running") == 0) {
        live_task *t = upsert_task(w, id);
        if (t) {
            snprintf(t->queue, sizeof t->queue, "%s",
                     th__jstr(j, "queue") ? th__jstr(j, "queue") : "");
            if (strcmp(t->state, "running") != 0 && strcmp(state, "running") == 0) {
                t->since = th__jint(j, "time") ? th__jint(j, "time") : th__now_ms();
                t->percent = t->logged_percent = 0;
                t->message[0] = '\0';
            }
            snprintf(t->state, sizeof t->state, "%s", state);
            t->attempt = (int)th__jint(j, "attempt");
            if (strcmp(type, "progress") == 0) {
                t->percent = th__jnum(j, "progress");
                const char *m = th__jstr(j, "message");
                if (m)
                    snprintf(t->message, sizeof t->message, "%s", m);
            } else if (strcmp(type, "failed") == 0 || strcmp(type, "retrying") == 0) {
                const char *m = th__jstr(j, "message");
                snprintf(t->message, sizeof t->message, "%s", m ? m : "");
            }
        }
    } else if (tracked) {
        remove_task(w, id);
    }
    if (!w->json)
        redraw(w, th__sbuf_str(&log));
    th__sbuf_free(&log);
    if (w->task_id && final)
        return check_task(w);
    return TH_SSE_CONTINUE;
}

static int on_tick(void *ud)
{
    watch *w = ud;
    /* Redraw what was held back, and once a second for the elapsed times. */
    if (w->draw && (w->dirty || th__now_ms() - w->drawn_at >= 1000))
        redraw(w, NULL);
    return TH_SSE_CONTINUE;
}

static void on_drop(void *ud, const char *why)
{
    watch *w = ud;
    if (w->lost)
        return;
    w->lost = 1;
    if (w->draw || w->plain) {
        char line[TH_CLI_ERRMSG + 64];
        snprintf(line, sizeof line, "(connection lost: %s; reconnecting)\n", why);
        redraw(w, line);
    }
}

static int run_watch(watch *w)
{
    th__sbuf path;
    th__sbuf_init(&path, 4096);
    th__sbuf_adds(&path, "/v1/events");
    th__sbuf_add_query(&path, "task", w->task_id);
    th__sbuf_add_query(&path, "queue", w->task_id ? NULL : w->queue);
    th__sbuf_init(&w->frame, 1u << 20);
    th__sse_handler h = {on_open, on_event, on_tick, on_drop, w, TICK_MS};
    int rc = th__sse_run(w->cli, th__sbuf_str(&path), &h);
    th__sbuf_free(&path);
    th__sbuf_free(&w->frame);
    free(w->tasks);
    return rc;
}

int th__follow_task(th__cli *cli, const char *id, int show, json_t **final)
{
    watch w;
    memset(&w, 0, sizeof w);
    w.cli = cli;
    w.task_id = id;
    w.out = stderr;
    w.draw = show && isatty(STDERR_FILENO);
    int rc = run_watch(&w);
    if (final)
        *final = w.final;
    else
        json_decref(w.final);
    return rc;
}

static void on_signal(int sig)
{
    (void)sig;
    th__sse_stop = 1;
}

int th__cmd_watch(th__cli *cli, int argc, char **argv)
{
    enum { OPT_QUEUE };
    static const th__opt opts[] = {{"queue", 'q', 1, OPT_QUEUE}, {NULL, 0, 0, 0}};
    watch w;
    memset(&w, 0, sizeof w);
    th__args a;
    th__args_init(&a, cli, argc, argv, opts);
    const char *val;
    int id;
    while ((id = th__args_next(&a, &val)) != TH_ARG_END) {
        switch (id) {
        case TH_ARG_HELP:
            return th__print_usage(th__usage_watch);
        case TH_ARG_ERR:
            return TH_CLI_USAGE;
        case OPT_QUEUE:
            w.queue = val;
            break;
        case TH_ARG_POS:
            if (w.task_id)
                return th__cli_usage_error(cli, "unexpected argument '%s'", val);
            w.task_id = val;
            break;
        }
    }
    if (w.task_id && w.queue)
        return th__cli_usage_error(cli, "give a task ID or --queue, not both");
    w.cli = cli;
    w.out = stdout;
    w.json = cli->json;
    w.draw = !w.json && isatty(STDOUT_FILENO);
    w.plain = !w.json && !w.draw;
    if (!w.task_id) {
        /* Watching everything ends with Ctrl-C: a normal way out. */
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
    }
    int rc = run_watch(&w);
    json_decref(w.final);
    return rc;
}
