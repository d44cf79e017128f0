/*
 * The life of an instance: spawn, exit, stop, restart with backoff, group
 * strategies, disabling after a crash loop, periodic schedules and the
 * RSS / CPU samples with the memory limit. Runs on the loop thread only.
 *
 * An exit means what the stop reason says (sv_stop_reason): a stop request
 * leaves the instance stopped, a restart request (or a group sibling's
 * failure) starts it again when its delay is over, and anything else is the
 * end of a run, judged by the restart policy: a non-zero status, a signal,
 * or a kill for failed health checks, memory or a start timeout is a
 * failure.
 *
 * Backoff: the delay before a restart is backoff_initial_ms doubled once
 * per restart of this instance within the last restart_window_ms, capped
 * at backoff_max_ms. Once max_restarts restarts happened within the window,
 * the next failure disables the whole service and fires an alert.
 */
#include "supervise/sv_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"

static struct timeval tv_ms(int64_t ms)
{
    if (ms < 0)
        ms = 0;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

int th__sv_inst_active(const sv_inst *in)
{
    return in->pid > 0 || in->state == TH_SVC_RESTARTING;
}

int th__sv_svc_active(const sv_service *s)
{
    for (int i = 0; i < s->ninst; i++)
        if (th__sv_inst_active(&s->inst[i]))
            return 1;
    return 0;
}

int th__sv_svc_alive(const sv_service *s)
{
    for (int i = 0; i < s->ninst; i++)
        if (s->inst[i].pid > 0 || s->inst[i].hproc.pid > 0)
            return 1;
    return 0;
}

static void describe(int code, int sig, char *buf, size_t n)
{
    if (sig)
        snprintf(buf, n, "killed by signal %d (%s)", sig, strsignal(sig));
    else if (code >= 0)
        snprintf(buf, n, "exited with status %d", code);
    else
        snprintf(buf, n, "ended with its status lost (reaped by someone else?)");
}

/* ---- the error-rate window -------------------------------------------------------- */

static void record_exit(th_supervisor *sv, int failed)
{
    int i = (sv->exits_head + sv->exits_n) % SV_EXITS_MAX;
    if (sv->exits_n == SV_EXITS_MAX)
        sv->exits_head = (sv->exits_head + 1) % SV_EXITS_MAX;
    else
        sv->exits_n++;
    sv->exits[i].mono_ms = th__sv_mono_ms();
    sv->exits[i].failed = failed;
}

void th__sv_exits_count(th_supervisor *sv, uint64_t *exits, uint64_t *failed)
{
    int64_t since = th__sv_mono_ms() - sv->o.health_window_ms;
    *exits = *failed = 0;
    for (int k = 0; k < sv->exits_n; k++) {
        int i = (sv->exits_head + k) % SV_EXITS_MAX;
        if (sv->exits[i].mono_ms >= since) {
            (*exits)++;
            *failed += (uint64_t)sv->exits[i].failed;
        }
    }
}

/* ---- restart history ------------------------------------------------------------- */

static int recent_restarts(const sv_inst *in, int64_t now, int64_t window)
{
    int n = 0;
    for (int k = 0; k < in->hist_n; k++) {
        int i = (in->hist_head + k) % in->hist_cap;
        if (now - in->hist[i] < window)
            n++;
    }
    return n;
}

static void hist_push(sv_inst *in, int64_t now)
{
    int i = (in->hist_head + in->hist_n) % in->hist_cap;
    if (in->hist_n == in->hist_cap)
        in->hist_head = (in->hist_head + 1) % in->hist_cap;
    else
        in->hist_n++;
    in->hist[i] = now;
}

void th__sv_hist_reset(sv_inst *in)
{
    in->hist_n = in->hist_head = 0;
}

static int64_t backoff(const th_service_spec *s, int n)
{
    int64_t d = s->backoff_initial_ms;
    for (int i = 0; i < n && d < s->backoff_max_ms; i++)
        d *= 2;
    return d < s->backoff_max_ms ? d : s->backoff_max_ms;
}

/* ---- spawning -------------------------------------------------------------------- */

static void inst_finished(th_supervisor *sv, sv_inst *in, int failed, const char *why);

static void on_start_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sv_inst *in = arg;
    if (in->pid > 0 && in->state == TH_SVC_STARTING && in->stop_reason == SV_STOP_NONE) {
        char note[160];
        snprintf(note, sizeof note, "not ready after %lld ms (start_timeout_ms)",
                 (long long)in->svc->spec.start_timeout_ms);
        th__sv_inst_stop(in->svc->sv, in, SV_STOP_START_TIMEOUT, note);
        th__sv_reconcile(in->svc->sv);
    }
}

static void on_kill_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sv_inst *in = arg;
    if (in->pid <= 0)
        return;
    th__sv_logf(in->svc, in, "pid %d still there %lld ms after signal %d: sending SIGKILL",
                (int)in->pid, (long long)in->svc->spec.stop_timeout_ms, in->svc->spec.stop_signal);
    if (kill(-in->pid, SIGKILL) != 0)
        kill(in->pid, SIGKILL);
}

static void on_exit_ev(evutil_socket_t fd, short what, void *arg);

void th__sv_spawn_inst(th_supervisor *sv, sv_inst *in)
{
    sv_service *s = in->svc;
    char why[300] = "";
    char notify_env[160];
    const char *extra[2] = {NULL, NULL};
    int po[2] = {-1, -1}, pe[2] = {-1, -1};
    th__sv_exec x;
    if (s->spec.notify) {
        if (th__sv_notify_open(sv, in) != 0) {
            snprintf(why, sizeof why, "cannot create the notify socket: %s", strerror(errno));
            goto fail;
        }
        snprintf(notify_env, sizeof notify_env, "NOTIFY_SOCKET=%s", in->notify_name);
        extra[0] = notify_env;
    }
    if (th__sv_exec_prepare(&x, in, NULL, extra, why, sizeof why) != 0)
        goto fail;
    if (pipe2(po, O_CLOEXEC) != 0 || pipe2(pe, O_CLOEXEC) != 0) {
        snprintf(why, sizeof why, "pipe: %s", strerror(errno));
        th__sv_exec_clear(&x);
        goto fail;
    }
    int pidfd = -1;
    pid_t pid = th__sv_spawn(&x, po[1], pe[1], &pidfd, why, sizeof why);
    th__sv_exec_clear(&x);
    close(po[1]);
    close(pe[1]);
    po[1] = pe[1] = -1;
    if (pid < 0)
        goto fail;
    in->exit_ev = event_new(sv->base, pidfd, EV_READ, on_exit_ev, in);
    if (!in->exit_ev || event_add(in->exit_ev, NULL) != 0) {
        int code, sig;
        kill(-pid, SIGKILL);
        th__sv_reap(pid, pidfd, &code, &sig);
        if (in->exit_ev)
            event_free(in->exit_ev);
        in->exit_ev = NULL;
        snprintf(why, sizeof why, "out of memory");
        goto fail;
    }
    in->pid = pid;
    in->pidfd = pidfd;
    if (th__sv_pipe_open(&in->out, in, po[0], "stdout") != 0 ||
        th__sv_pipe_open(&in->err, in, pe[0], "stderr") != 0)
        th__sv_logf(s, in, "cannot watch the output of pid %d: it is lost", (int)pid);
    po[0] = pe[0] = -1;
    in->spawned_wall_ms = th__wall_ms();
    in->spawned_mono_ms = th__sv_mono_ms();
    in->health_gen++;
    in->healthy = 0;
    in->health_fails = 0;
    in->cpu_ticks = 0;
    in->cpu_mono_ns = 0;
    in->cpu_percent = 0;
    in->rss = 0;
    in->status[0] = '\0';
    in->restart_due = 0;
    in->stop_reason = SV_STOP_NONE;
    th__sv_logf(s, in, "started pid %d", (int)pid);
    th__sv_emit_inst(sv, TH_SEV_STARTED, in, NULL);
    if (s->spec.notify || s->spec.health.kind != TH_HEALTH_NONE) {
        in->state = TH_SVC_STARTING;
        struct timeval tv = tv_ms(s->spec.start_timeout_ms);
        evtimer_add(in->start_ev, &tv);
        int64_t first = s->spec.health.interval_ms;
        th__sv_health_arm(sv, in, first < SV_STARTING_CHECK_MS ? first : SV_STARTING_CHECK_MS);
    } else {
        th__sv_set_running(sv, in);
    }
    return;
fail:
    for (int i = 0; i < 2; i++) {
        if (po[i] >= 0)
            close(po[i]);
        if (pe[i] >= 0)
            close(pe[i]);
    }
    th__sv_logf(s, in, "cannot start: %s", why);
    in->last_code = -1;
    in->last_signal = 0;
    th__sv_emit_inst(sv, TH_SEV_ALERT, in, why);
    inst_finished(sv, in, 1, why);
}

void th__sv_set_running(th_supervisor *sv, sv_inst *in)
{
    in->state = TH_SVC_RUNNING;
    in->healthy = 1;
    evtimer_del(in->start_ev);
    if (strncmp(in->status, "starting;", 9) == 0)
        in->status[0] = '\0';
    th__sv_emit_inst(sv, TH_SEV_READY, in, NULL);
}

/* One run of every instance that is not running or waiting to restart. */
void th__sv_run_all(th_supervisor *sv, sv_service *s)
{
    for (int i = 0; i < s->ninst; i++)
        if (!th__sv_inst_active(&s->inst[i]))
            th__sv_spawn_inst(sv, &s->inst[i]);
}

/* ---- stopping ------------------------------------------------------------------- */

void th__sv_inst_stop(th_supervisor *sv, sv_inst *in, sv_stop_reason reason, const char *note)
{
    evtimer_del(in->restart_ev);
    in->restart_due = 0;
    evtimer_del(in->start_ev);
    th__sv_health_cancel(sv, in);
    if (in->pid <= 0) {
        if (reason == SV_STOP_DISABLE || in->svc->disabled)
            in->state = TH_SVC_DISABLED;
        else if (in->state != TH_SVC_INITIALIZED && in->state != TH_SVC_FAILED)
            in->state = TH_SVC_STOPPED;
        return;
    }
    if (in->stop_reason != SV_STOP_NONE) {
        /* Already stopping: a stop request wins over a restart, so it stays down. */
        if (reason == SV_STOP_USER || reason == SV_STOP_DISABLE)
            in->stop_reason = reason;
        return;
    }
    in->stop_reason = reason;
    th__free(in->stop_note);
    in->stop_note = th__strdup(note);
    in->state = TH_SVC_STOPPING;
    const th_service_spec *sp = &in->svc->spec;
    th__sv_logf(in->svc, in, "stopping pid %d (signal %d)%s%s", (int)in->pid, sp->stop_signal,
                note ? ": " : "", note ? note : "");
    if (kill(-in->pid, sp->stop_signal) != 0)
        kill(in->pid, sp->stop_signal);
    struct timeval tv = tv_ms(sp->stop_timeout_ms);
    evtimer_add(in->kill_ev, &tv);
}

/* Stops every instance and the schedule of `s`; it stays stopped. */
void th__sv_stop_service(th_supervisor *sv, sv_service *s)
{
    s->want = 0;
    s->launched = 0;
    s->stop_pending = 0;
    s->trigger_pending = 0;
    s->next_run_wall_ms = 0;
    evtimer_del(s->sched_ev);
    for (int i = 0; i < s->ninst; i++)
        th__sv_inst_stop(sv, &s->inst[i], SV_STOP_USER, NULL);
}

/* ---- restarting ------------------------------------------------------------------- */

static void disable(th_supervisor *sv, sv_service *s, sv_inst *failed_in, int n, const char *why)
{
    s->disabled = 1;
    s->trigger_pending = 0;
    evtimer_del(s->sched_ev);
    s->next_run_wall_ms = 0;
    failed_in->state = TH_SVC_DISABLED;
    for (int i = 0; i < s->ninst; i++)
        th__sv_inst_stop(sv, &s->inst[i], SV_STOP_DISABLE, "the service is disabled");
    char msg[400];
    snprintf(msg, sizeof msg,
             "service %s disabled: %d restarts within %lld ms (max_restarts %d); last: %s",
             s->spec.name, n, (long long)s->spec.restart_window_ms, s->spec.max_restarts, why);
    th__sv_logf(s, failed_in, "%s", msg);
    th_supervisor_event ev = {.type = TH_SEV_DISABLED,
                              .service = s->spec.name,
                              .instance = -1,
                              .exit_code = -1,
                              .message = msg};
    th__sv_emit(sv, &ev);
    ev.type = TH_SEV_ALERT;
    th__sv_emit(sv, &ev);
}

static void announce_restart(th_supervisor *sv, sv_inst *in, int64_t delay, const char *why)
{
    in->restarts++;
    struct timeval tv = tv_ms(delay);
    evtimer_add(in->restart_ev, &tv);
    th__sv_logf(in->svc, in, "restarting in %lld ms: %s", (long long)delay, why);
    th_supervisor_event ev = {.type = TH_SEV_RESTARTING,
                              .service = in->svc->spec.name,
                              .instance = in->index,
                              .pid = (int)in->pid,
                              .exit_code = -1,
                              .delay_ms = delay,
                              .message = why};
    th__sv_emit(sv, &ev);
}

/* The group's strategy: which siblings restart with `in`. */
static void restart_siblings(th_supervisor *sv, sv_inst *in, int64_t delay)
{
    sv_group *g = in->svc->group;
    if (!g || g->strategy == TH_GROUP_ONE_FOR_ONE)
        return;
    char note[200];
    snprintf(note, sizeof note, "group %s (%s): %s[%d] failed", g->name,
             g->strategy == TH_GROUP_ONE_FOR_ALL ? "one-for-all" : "rest-for-one",
             in->svc->spec.name, in->index);
    for (sv_service *t = sv->services; t; t = t->next) {
        if (t->group != g)
            continue;
        for (int i = 0; i < t->ninst; i++) {
            sv_inst *j = &t->inst[i];
            if (j == in || j->pid <= 0 || j->stop_reason != SV_STOP_NONE)
                continue;
            if (g->strategy == TH_GROUP_REST_FOR_ONE && j->group_order < in->group_order)
                continue;
            th__sv_inst_stop(sv, j, SV_STOP_RESTART, note);
            announce_restart(sv, j, delay, note);
        }
    }
}

static void schedule_restart(th_supervisor *sv, sv_inst *in, const char *why)
{
    sv_service *s = in->svc;
    int64_t now = th__sv_mono_ms();
    int n = recent_restarts(in, now, s->spec.restart_window_ms);
    if (s->spec.max_restarts >= 0 && n >= s->spec.max_restarts) {
        disable(sv, s, in, n, why);
        return;
    }
    int64_t delay = backoff(&s->spec, n);
    hist_push(in, now);
    in->state = TH_SVC_RESTARTING;
    announce_restart(sv, in, delay, why);
    restart_siblings(sv, in, delay);
}

/* The end of a run that nobody asked for (or a kill for a failure). */
static void inst_finished(th_supervisor *sv, sv_inst *in, int failed, const char *why)
{
    sv_service *s = in->svc;
    record_exit(sv, failed);
    in->last_failed = failed;
    in->ran_ok = !failed;
    if (!s->want || s->disabled) {
        in->state = s->disabled ? TH_SVC_DISABLED : failed ? TH_SVC_FAILED : TH_SVC_STOPPED;
        return;
    }
    int restart =
        s->restart == TH_RESTART_ALWAYS || (s->restart == TH_RESTART_ON_FAILURE && failed);
    if (restart) {
        schedule_restart(sv, in, why);
        return;
    }
    in->state = failed ? TH_SVC_FAILED : TH_SVC_STOPPED;
    if (s->trigger_pending && !th__sv_svc_active(s)) { /* triggered during the run */
        s->trigger_pending = 0;
        th__sv_run_all(sv, s);
    }
}

static void on_exit_ev(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sv_inst *in = arg;
    sv_service *s = in->svc;
    th_supervisor *sv = s->sv;
    int code, sig;
    pid_t pid = in->pid;
    /* Its group may hold processes it left behind; the zombie leader keeps
     * the group id from being reused until the reap below. */
    kill(-pid, SIGKILL);
    event_free(in->exit_ev); /* before the reap closes its fd */
    in->exit_ev = NULL;
    th__sv_reap(pid, in->pidfd, &code, &sig);
    in->pidfd = -1;
    in->pid = 0;
    th__sv_pipe_close(&in->out);
    th__sv_pipe_close(&in->err);
    evtimer_del(in->kill_ev);
    evtimer_del(in->start_ev);
    th__sv_health_cancel(sv, in);
    in->rss = 0;
    in->cpu_percent = 0;
    in->last_code = code;
    in->last_signal = sig;
    sv_stop_reason reason = in->stop_reason;
    char *note = in->stop_note;
    in->stop_reason = SV_STOP_NONE;
    in->stop_note = NULL;

    char desc[128], why[400];
    describe(code, sig, desc, sizeof desc);
    if (note)
        snprintf(why, sizeof why, "%s; %s", note, desc);
    else
        snprintf(why, sizeof why, "%s", desc);
    th__sv_logf(s, in, "pid %d %s", (int)pid, why);
    th_supervisor_event ev = {.type = TH_SEV_EXITED,
                              .service = s->spec.name,
                              .instance = in->index,
                              .pid = (int)pid,
                              .exit_code = sig ? -1 : code,
                              .signal = sig,
                              .message = why};
    th__sv_emit(sv, &ev);

    switch (reason) {
    case SV_STOP_USER:
    case SV_STOP_DISABLE:
        in->state = s->disabled ? TH_SVC_DISABLED : TH_SVC_STOPPED;
        if (reason == SV_STOP_USER)
            th__sv_emit_inst(sv, TH_SEV_STOPPED, in, NULL);
        break;
    case SV_STOP_RESTART:
        if (!s->want || s->disabled) {
            in->state = s->disabled ? TH_SVC_DISABLED : TH_SVC_STOPPED;
            evtimer_del(in->restart_ev);
        } else if (in->restart_due || !evtimer_pending(in->restart_ev, NULL)) {
            evtimer_del(in->restart_ev);
            in->restart_due = 0;
            th__sv_spawn_inst(sv, in);
        } else {
            in->state = TH_SVC_RESTARTING;
        }
        break;
    default:
        inst_finished(sv, in, reason != SV_STOP_NONE || code != 0 || sig != 0, why);
        break;
    }
    th__free(note);
    th__sv_reconcile(sv);
}

static void on_restart_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sv_inst *in = arg;
    sv_service *s = in->svc;
    if (in->pid > 0) {
        in->restart_due = 1; /* still stopping: start when it is gone */
        return;
    }
    if (!s->want || s->disabled)
        in->state = s->disabled ? TH_SVC_DISABLED : TH_SVC_STOPPED;
    else
        th__sv_spawn_inst(s->sv, in);
    th__sv_reconcile(s->sv);
}

/* ---- schedules ------------------------------------------------------------------- */

static void sched_arm(th_supervisor *sv, sv_service *s, int64_t base_wall)
{
    (void)sv;
    int64_t now_wall = th__wall_ms(), now_mono = th__sv_mono_ms(), delay;
    if (s->spec.cron) {
        int64_t from = base_wall > now_wall ? base_wall : now_wall;
        int64_t next = th__cron_next(&s->cron, from, 0);
        if (next < 0) {
            th__sv_logf(s, NULL, "the cron schedule \"%s\" has no further run", s->spec.cron);
            s->next_run_wall_ms = 0;
            return;
        }
        delay = next - now_wall;
        s->next_run_wall_ms = next;
    } else {
        s->next_run_mono_ms += s->spec.interval_ms;
        if (s->next_run_mono_ms <= now_mono) /* missed (a long run): skip ahead */
            s->next_run_mono_ms = now_mono + s->spec.interval_ms;
        delay = s->next_run_mono_ms - now_mono;
        s->next_run_wall_ms = now_wall + delay;
    }
    struct timeval tv = tv_ms(delay);
    evtimer_add(s->sched_ev, &tv);
}

static void on_sched(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sv_service *s = arg;
    th_supervisor *sv = s->sv;
    if (!s->want || !s->launched || s->disabled)
        return;
    int64_t due = s->next_run_wall_ms;
    if (th__sv_svc_active(s))
        th__sv_logf(s, NULL, "the previous run is still going: this run is skipped");
    else
        th__sv_run_all(sv, s);
    sched_arm(sv, s, due);
    th__sv_reconcile(sv);
}

void th__sv_launch(th_supervisor *sv, sv_service *s)
{
    s->launched = 1;
    switch (s->spec.type) {
    case TH_SERVICE_ALWAYS:
    case TH_SERVICE_ONESHOT:
        th__sv_run_all(sv, s);
        break;
    case TH_SERVICE_PERIODIC:
        for (int i = 0; i < s->ninst; i++)
            if (s->inst[i].state == TH_SVC_INITIALIZED)
                s->inst[i].state = TH_SVC_STOPPED;
        if (s->spec.cron) {
            sched_arm(sv, s, 0);
        } else {
            s->next_run_mono_ms = th__sv_mono_ms();
            th__sv_run_all(sv, s);
            sched_arm(sv, s, 0);
        }
        break;
    case TH_SERVICE_EVENT:
        for (int i = 0; i < s->ninst; i++)
            if (s->inst[i].state == TH_SVC_INITIALIZED)
                s->inst[i].state = TH_SVC_STOPPED;
        break;
    }
    if (s->trigger_pending && !th__sv_svc_active(s)) { /* triggered while waiting */
        s->trigger_pending = 0;
        th__sv_run_all(sv, s);
    }
}

/* ---- samples --------------------------------------------------------------------- */

static size_t proc_rss(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/statm", (int)pid);
    FILE *f = fopen(path, "re");
    long size = 0, rss = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%ld %ld", &size, &rss) != 2)
        rss = 0;
    fclose(f);
    return (size_t)rss * (size_t)sysconf(_SC_PAGESIZE);
}

static uint64_t proc_ticks(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* the command name may hold spaces and parens */
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (uint64_t)ut + st;
}

void th__sv_sample(th_supervisor *sv)
{
    long hz = sysconf(_SC_CLK_TCK);
    for (sv_service *s = sv->services; s; s = s->next) {
        for (int i = 0; i < s->ninst; i++) {
            sv_inst *in = &s->inst[i];
            if (in->pid <= 0)
                continue;
            int64_t now = th__mono_ns();
            uint64_t ticks = proc_ticks(in->pid);
            if (in->cpu_mono_ns && now > in->cpu_mono_ns && ticks >= in->cpu_ticks && hz > 0)
                in->cpu_percent = (double)(ticks - in->cpu_ticks) / (double)hz /
                                  ((double)(now - in->cpu_mono_ns) / 1e9) * 100.0;
            in->cpu_ticks = ticks;
            in->cpu_mono_ns = now;
            in->rss = proc_rss(in->pid);
            size_t limit = s->spec.memory_limit;
            if (limit && in->rss > limit && in->stop_reason == SV_STOP_NONE &&
                (in->state == TH_SVC_STARTING || in->state == TH_SVC_RUNNING)) {
                char note[200];
                snprintf(note, sizeof note,
                         "memory limit exceeded: RSS %zu MiB > limit %zu MiB (%zu > %zu bytes)",
                         in->rss >> 20, limit >> 20, in->rss, limit);
                th__sv_inst_stop(sv, in, SV_STOP_MEMORY, note);
            }
        }
    }
    th__sv_reconcile(sv);
}

/* ---- events of a new service (loop) ------------------------------------------------ */

int th__sv_service_events(th_supervisor *sv, sv_service *s)
{
    if (!(s->sched_ev = evtimer_new(sv->base, on_sched, s)))
        return TH_ENOMEM;
    for (int i = 0; i < s->ninst; i++) {
        sv_inst *in = &s->inst[i];
        if (!(in->restart_ev = evtimer_new(sv->base, on_restart_timer, in)) ||
            !(in->kill_ev = evtimer_new(sv->base, on_kill_timer, in)) ||
            !(in->start_ev = evtimer_new(sv->base, on_start_timeout, in)))
            return TH_ENOMEM;
    }
    return 0;
}
