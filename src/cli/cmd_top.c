/*
 * `taskhive top`: a live full-screen view in the manner of `pm2 monit`, drawn
 * with ANSI escapes (no curses): a stats header, the queue table, the worker
 * table and, when the daemon supervises services, the service table,
 * refreshed every second from /v1/stats, /v1/queues, /v1/workers and
 * /v1/services. q or Ctrl-C quits and gives the terminal back as it was. When
 * standard output is not a terminal it prints one frame and exits.
 */
#include "cli/cli.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

const char th__usage_top[] =
    "usage: taskhive top [--interval MS]\n"
    "\n"
    "A live full-screen view of the daemon: workers, tasks and throughput, the\n"
    "queues, the workers and, when the daemon supervises any, the services (name,\n"
    "state, pid, CPU, memory, restarts), refreshed every second. Keys: q quits\n"
    "(so does Ctrl-C), r refreshes now. When standard output is not a terminal,\n"
    "prints one frame and exits.\n"
    "\n"
    "  --interval MS  refresh period, 200..60000 ms (default 1000)\n";

static volatile sig_atomic_t top_stop, top_resized;

static void on_stop(int sig)
{
    (void)sig;
    top_stop = 1;
}

static void on_winch(int sig)
{
    (void)sig;
    top_resized = 1;
}

typedef struct top {
    th__cli *cli;
    json_t *stats, *queues, *workers; /* the last good answers */
    json_t *services;                 /* NULL when the daemon has none (404) */
    char error[TH_CLI_ERRMSG];        /* the last failure, "" when none */
    int64_t fetched_at;
    double prev_done; /* completed + failed at the previous fetch */
    int64_t prev_at;
    double rate; /* finished tasks per second, measured here */
    int live;    /* drawing on a terminal */
    th__sbuf frame;
} top;

/* The first numeric member found among `names` (NULL-ended) in any section
 * of the stats answer ("pool", "engine"), or -1 when none is there. */
static double metric(const top *t, const char *section, const char *const *names)
{
    static const char *const sections[] = {"pool", "engine"};
    for (size_t s = 0; s < 2; s++) {
        if (section && strcmp(section, sections[s]) != 0)
            continue;
        json_t *obj = json_object_get(t->stats, sections[s]);
        for (const char *const *n = names; *n; n++) {
            json_t *v = json_object_get(obj, *n);
            if (json_is_number(v))
                return json_number_value(v);
        }
    }
    return -1;
}

/* Tasks in `state` across every queue: the engine's counts ("tasks" in its
 * stats), else the pool's own counter named `pool_name`. */
static double task_count(const top *t, const char *state, const char *pool_name)
{
    json_t *v =
        json_object_get(json_object_get(json_object_get(t->stats, "engine"), "tasks"), state);
    if (json_is_number(v))
        return json_number_value(v);
    const char *const names[] = {pool_name, NULL};
    return metric(t, "pool", names);
}

#define M(t, sec, ...) metric(t, sec, (const char *const[]){__VA_ARGS__, NULL})

/* GET /v1/services into *out; a 404 (a daemon without a supervisor) is no
 * error and leaves *out NULL. */
static int fetch_services(th__cli *cli, json_t **out)
{
    long status = 0;
    int rc = th__http(cli, "GET", "/v1/services", NULL, out, &status);
    if (rc != 0 && status == 404) {
        *out = NULL;
        return 0;
    }
    return rc;
}

/* Fetches the four answers; a failure keeps the older ones and the message. */
static void fetch(top *t)
{
    json_t *s = NULL, *q = NULL, *w = NULL, *v = NULL;
    t->cli->quiet = 1;
    int rc = th__http(t->cli, "GET", "/v1/stats", NULL, &s, NULL);
    if (rc == 0)
        rc = th__http(t->cli, "GET", "/v1/queues", NULL, &q, NULL);
    if (rc == 0)
        rc = th__http(t->cli, "GET", "/v1/workers", NULL, &w, NULL);
    if (rc == 0)
        rc = fetch_services(t->cli, &v);
    t->cli->quiet = 0;
    if (rc != 0) {
        snprintf(t->error, sizeof t->error, "%s", t->cli->err);
        json_decref(s);
        json_decref(q);
        json_decref(w);
        json_decref(v);
        return;
    }
    t->error[0] = '\0';
    json_decref(t->stats);
    json_decref(t->queues);
    json_decref(t->workers);
    json_decref(t->services);
    t->stats = s;
    t->queues = q;
    t->workers = w;
    t->services = v;
    t->fetched_at = th__now_ms();
    double done = task_count(t, "completed", "completedTasks");
    double failed = task_count(t, "failed", "failedTasks");
    if (done >= 0) {
        done += failed > 0 ? failed : 0;
        if (t->prev_at > 0 && t->fetched_at > t->prev_at && done >= t->prev_done)
            t->rate = (done - t->prev_done) * 1000.0 / (double)(t->fetched_at - t->prev_at);
        t->prev_done = done;
        t->prev_at = t->fetched_at;
    }
}

/* Appends one line clipped to `cols`, with optional SGR attributes. */
static void line(top *t, int cols, const char *sgr, const char *text)
{
    char clip[2048];
    th__fmt_clip(text, cols > 1 ? (size_t)cols - 1 : 1, clip, sizeof clip);
    if (t->live && sgr)
        th__sbuf_addf(&t->frame, "\x1b[%sm%s\x1b[0m", sgr, clip);
    else
        th__sbuf_adds(&t->frame, clip);
    th__sbuf_adds(&t->frame, t->live ? "\x1b[K\n" : "\n");
}

static void num(char *buf, size_t size, double v)
{
    if (v < 0)
        snprintf(buf, size, "?");
    else if (v == (double)(long long)v)
        snprintf(buf, size, "%lld", (long long)v);
    else
        snprintf(buf, size, "%.1f", v);
}

/* Header lines: how many were written. */
static int header(top *t, int cols)
{
    char l[1024], now[64], a[32], b[32], c[32], d[32];
    th__fmt_time(th__now_ms(), now, sizeof now);
    snprintf(l, sizeof l, "taskhive top  %s  %s%s", t->cli->url, now, t->live ? "  (q quits)" : "");
    line(t, cols, "1", l);
    num(a, sizeof a, M(t, NULL, "totalWorkers", "total_workers"));
    num(b, sizeof b, M(t, NULL, "activeWorkers", "active_workers"));
    num(c, sizeof c, M(t, NULL, "idleWorkers", "idle_workers"));
    num(d, sizeof d, M(t, NULL, "unhealthyWorkers", "unhealthy_workers"));
    double cpu = M(t, NULL, "cpuUtilization", "cpu_utilisation", "cpu_utilization");
    double mem = M(t, NULL, "memoryUtilization", "memory_utilisation", "memory_utilization");
    snprintf(l, sizeof l,
             "Workers  %s total, %s active, %s idle, %s unhealthy   CPU %.0f%%  MEM %.0f%%", a, b,
             c, d, cpu > 0 ? cpu * (cpu <= 1 ? 100 : 1) : 0,
             mem > 0 ? mem * (mem <= 1 ? 100 : 1) : 0);
    line(t, cols, NULL, l);
    num(a, sizeof a, task_count(t, "pending", "pendingTasks"));
    num(b, sizeof b, task_count(t, "running", "runningTasks"));
    num(c, sizeof c, task_count(t, "completed", "completedTasks"));
    num(d, sizeof d, task_count(t, "failed", "failedTasks"));
    snprintf(l, sizeof l, "Tasks    %s pending, %s running, %s completed, %s failed", a, b, c, d);
    line(t, cols, NULL, l);
    double thr = M(t, "engine", "throughput", "throughput_per_s");
    double run = M(t, "engine", "averageRunTime", "avg_run_ms");
    double wait = M(t, "engine", "averageWaitTime", "avg_wait_ms");
    if (thr < 0)
        thr = M(t, "pool", "throughput", "throughput_per_s");
    if (run < 0)
        run = M(t, "pool", "averageTaskDuration", "avg_task_duration_ms");
    if (wait < 0)
        wait = M(t, "pool", "averageQueueTime", "avg_queue_time_ms");
    th__fmt_duration(run < 0 ? -1 : (int64_t)run, a, sizeof a);
    th__fmt_duration(wait < 0 ? -1 : (int64_t)wait, b, sizeof b);
    snprintf(l, sizeof l, "Rate     %.1f/s (server), %.1f/s (measured)   avg run %s   avg wait %s",
             thr < 0 ? 0 : thr, t->rate, a, b);
    line(t, cols, NULL, l);
    if (t->error[0]) {
        snprintf(l, sizeof l, "error: %s", t->error);
        line(t, cols, "1;31", l);
    } else {
        line(t, cols, NULL, "");
    }
    return 5;
}

static th__table *queue_table(const top *t)
{
    static const char *const hdr[] = {"QUEUE",   "STATUS", "PENDING", "SCHED",  "BLOCKED",
                                      "RUNNING", "DONE",   "FAILED",  "CANCEL", "TIMEOUT"};
    static const char *const keys[] = {"pending",   "scheduled", "blocked",   "running",
                                       "completed", "failed",    "cancelled", "timeout"};
    th__table *tab = th__table_new(10, hdr);
    if (!tab)
        return NULL;
    for (int c = 2; c < 10; c++)
        th__table_align_right(tab, c);
    size_t i;
    json_t *q;
    json_array_foreach(json_object_get(t->queues, "queues"), i, q)
    {
        char cnt[8][24];
        const char *row[10];
        json_t *c = json_object_get(q, "counts");
        row[0] = th__jstr(q, "name");
        row[1] = th__jbool(q, "paused") ? "paused" : "active";
        for (int k = 0; k < 8; k++) {
            snprintf(cnt[k], sizeof cnt[k], "%lld", (long long)th__jint(c, keys[k]));
            row[2 + k] = cnt[k];
        }
        th__table_add(tab, row);
    }
    return tab;
}

static th__table *worker_table(const top *t)
{
    static const char *const hdr[] = {"WORKER", "KIND", "STATE", "PID", "TASK",
                                      "DONE",   "FAIL", "OK",    "BEAT"};
    th__table *tab = th__table_new(9, hdr);
    if (!tab)
        return NULL;
    th__table_align_right(tab, 3);
    th__table_align_right(tab, 5);
    th__table_align_right(tab, 6);
    th__table_align_right(tab, 8);
    int64_t now = th__now_ms();
    size_t i;
    json_t *w;
    json_array_foreach(json_object_get(t->workers, "workers"), i, w)
    {
        char id[64], task[64], pid[24], done[24], fail[24], beat[32];
        th__fmt_json(json_object_get(w, "id"), id, sizeof id);
        th__fmt_json(json_object_get(w, "current_task"), task, sizeof task);
        snprintf(pid, sizeof pid, "%lld", (long long)th__jint(w, "pid"));
        snprintf(done, sizeof done, "%lld", (long long)th__jint(w, "tasks_completed"));
        snprintf(fail, sizeof fail, "%lld", (long long)th__jint(w, "tasks_failed"));
        int64_t hb = th__jint(w, "last_heartbeat_at");
        if (!hb)
            hb = th__jint(w, "last_seen_at");
        if (hb)
            th__fmt_duration(now - hb, beat, sizeof beat);
        else
            snprintf(beat, sizeof beat, "-");
        json_t *ok = json_object_get(w, "healthy");
        const char *row[] = {id,
                             th__jstr(w, "kind"),
                             th__jstr(w, "state"),
                             th__jint(w, "pid") ? pid : "-",
                             task,
                             done,
                             fail,
                             ok ? (json_is_true(ok) ? "yes" : "no") : "-",
                             beat};
        th__table_add(tab, row);
    }
    return tab;
}

/* Appends a section title and the table, in at most `budget` lines. */
static int section(top *t, int cols, const char *title, th__table *tab, int budget)
{
    if (!tab || budget < 2)
        return 0;
    int rows = th__table_rows(tab);
    char l[128];
    snprintf(l, sizeof l, "%s (%d)", title, rows);
    line(t, cols, "1;36", l);
    int room = budget - 2; /* title and header */
    int shown = rows <= room ? rows : room - 1;
    if (shown < 0)
        shown = 0;
    th__table_print(tab, &t->frame, cols > 1 ? (size_t)cols - 1 : 1, shown,
                    t->live ? "\x1b[K\n" : "\n");
    int used = 2 + shown;
    if (shown < rows && used < budget) { /* no room for it when the budget is 2 */
        snprintf(l, sizeof l, "... %d more", rows - shown);
        line(t, cols, NULL, l);
        used++;
    }
    return used;
}

/* The service table, or NULL when there is nothing to show. */
static th__table *service_table(const top *t)
{
    json_t *list = json_object_get(t->services, "services");
    if (json_array_size(list) == 0)
        return NULL;
    return th__services_table(list, NULL, 1);
}

/* Shares `lines` between n sections that want need[i] lines each: those
 * that want no more than an equal share get what they want, over again; the
 * others split what is left. */
static void share_lines(int lines, const int *need, int *budget, int n)
{
    int left = lines > 0 ? lines : 0, open = 0, given = 1;
    for (int i = 0; i < n; i++) {
        budget[i] = 0;
        open += need[i] > 0;
    }
    while (open > 0 && given) {
        int share = left / open;
        given = 0;
        for (int i = 0; i < n; i++)
            if (need[i] > 0 && budget[i] == 0 && need[i] <= share) {
                budget[i] = need[i];
                left -= need[i];
                open--;
                given = 1;
            }
    }
    if (open == 0)
        return;
    int share = left / open, extra = left % open;
    for (int i = 0; i < n; i++) /* what does not divide goes to the first ones */
        if (need[i] > 0 && budget[i] == 0) {
            budget[i] = share + (extra > 0);
            extra -= extra > 0;
        }
}

static void render(top *t)
{
    int cols = t->live ? th__term_cols() : 200;
    int rows = t->live ? th__term_rows() : 100000;
    t->frame.len = 0;
    t->frame.failed = 0;
    if (t->live)
        th__sbuf_adds(&t->frame, "\x1b[H");
    int left = rows - 1 - header(t, cols); /* never write the last row: no scrolling */
    th__table *tabs[3] = {queue_table(t), worker_table(t), service_table(t)};
    static const char *const titles[3] = {"Queues", "Workers", "Services"};
    int need[3], budget[3], n = tabs[2] ? 3 : 2;
    for (int i = 0; i < 3; i++)
        need[i] = tabs[i] ? th__table_rows(tabs[i]) + 2 : 0;
    /* A blank line between two sections, when each still has room for a row. */
    int gaps = left - (n - 1) >= 3 * n ? n - 1 : 0;
    share_lines(left - gaps, need, budget, n);
    for (int i = 0; i < n; i++) {
        if (i > 0 && gaps > 0 && budget[i] >= 2) {
            line(t, cols, NULL, "");
            left--;
        }
        int used = section(t, cols, titles[i], tabs[i], budget[i] < left ? budget[i] : left);
        left -= used;
    }
    for (int i = 0; i < 3; i++)
        th__table_free(tabs[i]);
    if (t->live)
        th__sbuf_adds(&t->frame, "\x1b[J");
    if (t->frame.len)
        fwrite(t->frame.data, 1, t->frame.len, stdout);
    fflush(stdout);
}

/* Reads pending keys; returns 1 when one asks to quit, 2 to refresh now. */
static int read_keys(void)
{
    char buf[64];
    ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
    int r = 0;
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] == 'q' || buf[i] == 'Q' || buf[i] == 3 || buf[i] == 4)
            return 1;
        if (buf[i] == 'r' || buf[i] == 'R' || buf[i] == ' ')
            r = 2;
    }
    if (n == 0)
        return 1; /* end of input: nobody can press q any more */
    return r;
}

int th__cmd_top(th__cli *cli, int argc, char **argv)
{
    enum { OPT_INTERVAL };
    static const th__opt opts[] = {{"interval", 'i', 1, OPT_INTERVAL}, {NULL, 0, 0, 0}};
    long long interval = 1000;
    th__args a;
    th__args_init(&a, cli, argc, argv, opts);
    const char *val;
    int k;
    while ((k = th__args_next(&a, &val)) != TH_ARG_END) {
        if (k == TH_ARG_HELP)
            return th__print_usage(th__usage_top);
        if (k == TH_ARG_ERR)
            return TH_CLI_USAGE;
        if (k == TH_ARG_POS)
            return th__cli_usage_error(cli, "unexpected argument '%s'", val);
        if (th__parse_uint(cli, "--interval", val, 60000, &interval) != 0)
            return TH_CLI_USAGE;
        if (interval < 200)
            return th__cli_usage_error(cli, "--interval must be 200..60000");
    }
    top t;
    memset(&t, 0, sizeof t);
    t.cli = cli;
    th__sbuf_init(&t.frame, 16u << 20);

    if (!isatty(STDOUT_FILENO)) {
        /* One frame for a pipe or a file; the exit status says if it worked. */
        int rc = th__http(cli, "GET", "/v1/stats", NULL, &t.stats, NULL);
        if (rc == 0)
            rc = th__http(cli, "GET", "/v1/queues", NULL, &t.queues, NULL);
        if (rc == 0)
            rc = th__http(cli, "GET", "/v1/workers", NULL, &t.workers, NULL);
        if (rc == 0) {
            cli->quiet = 1; /* a 404 is no error */
            rc = fetch_services(cli, &t.services);
            cli->quiet = 0;
            if (rc != 0) {
                char msg[TH_CLI_ERRMSG];
                snprintf(msg, sizeof msg, "%s", cli->err);
                th__cli_fail(cli, rc, "%s", msg);
            }
        }
        if (rc == 0)
            render(&t);
        th__sbuf_free(&t.frame);
        json_decref(t.stats);
        json_decref(t.queues);
        json_decref(t.workers);
        json_decref(t.services);
        return rc;
    }

    struct termios saved, raw;
    int tty_in = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &saved) == 0;
    if (tty_in) {
        raw = saved;
        raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
        raw.c_cc[VMIN] = 0;
        raw.c_cc[VTIME] = 0;
        tcsetattr(STDIN_FILENO, TCSANOW, &raw);
    }
    struct sigaction sa, old_int, old_term, old_winch;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    sa.sa_handler = on_winch;
    sigaction(SIGWINCH, &sa, &old_winch);
    fputs("\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J", stdout); /* alternate screen, no cursor */
    t.live = 1;

    while (!top_stop) {
        fetch(&t);
        render(&t);
        int64_t next = th__now_ms() + interval;
        while (!top_stop) {
            int64_t wait = next - th__now_ms();
            if (wait <= 0)
                break;
            struct pollfd pfd = {STDIN_FILENO, POLLIN, 0};
            int n = poll(&pfd, tty_in ? 1 : 0, (int)wait);
            if (n < 0 && errno != EINTR)
                break;
            if (top_resized) {
                top_resized = 0;
                render(&t);
            }
            if (n > 0 && (pfd.revents & (POLLIN | POLLHUP))) {
                int key = read_keys();
                if (key == 1)
                    top_stop = 1;
                else if (key == 2)
                    break;
            }
        }
    }

    fputs("\x1b[0m\x1b[?25h\x1b[?1049l", stdout); /* back to the normal screen */
    fflush(stdout);
    if (tty_in)
        tcsetattr(STDIN_FILENO, TCSANOW, &saved);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGWINCH, &old_winch, NULL);
    th__sbuf_free(&t.frame);
    json_decref(t.stats);
    json_decref(t.queues);
    json_decref(t.workers);
    json_decref(t.services);
    return TH_CLI_OK;
}
