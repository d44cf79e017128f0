/*
 * The loop-side half of the public calls: adding and removing services and
 * groups, dependency checks (unknown names, cycles), starting in dependency
 * order, ordered stops, restarts and triggers, snapshots and health. Also
 * the reconcile step run after every change: services whose dependencies
 * are now met are launched, services whose dependents are now down are
 * stopped, and waiting calls, removals and alerts are settled.
 *
 * Dependencies: a service is launched once each dependency is started and
 * not disabled and is, by type: always - every instance running (ready);
 * oneshot - every instance exited 0; periodic and event - armed.
 */
#include "supervise/sv_impl.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"

sv_service *th__sv_find(th_supervisor *sv, const char *name)
{
    for (sv_service *s = sv->services; s; s = s->next)
        if (strcmp(s->spec.name, name) == 0)
            return s;
    return NULL;
}

sv_service *th__sv_find_id(th_supervisor *sv, uint64_t id)
{
    for (sv_service *s = sv->services; s; s = s->next)
        if (s->id == id)
            return s;
    return NULL;
}

static int depends_on(const sv_service *s, const char *name)
{
    for (size_t i = 0; i < s->spec.ndeps; i++)
        if (strcmp(s->spec.deps[i], name) == 0)
            return 1;
    return 0;
}

/* ---- the dependency graph -------------------------------------------------------- */

static void marks_clear(th_supervisor *sv)
{
    for (sv_service *s = sv->services; s; s = s->next)
        s->mark = 0;
}

/* Depth-first walk from s: unknown dependencies and cycles. `path` holds
 * the services on the current path (room for every service). */
static int walk(th_supervisor *sv, sv_service *s, sv_service **path, int depth, th_error *err)
{
    s->mark = 1;
    path[depth] = s;
    for (size_t i = 0; i < s->spec.ndeps; i++) {
        sv_service *d = th__sv_find(sv, s->spec.deps[i]);
        if (!d) {
            char f[32];
            snprintf(f, sizeof f, "deps[%zu]", i);
            return th__err(err, TH_ENOTFOUND, f, "service %s: unknown dependency \"%s\"",
                           s->spec.name, s->spec.deps[i]);
        }
        if (d->mark == 1) {
            char msg[256];
            size_t n = 0;
            int k = depth;
            while (k > 0 && path[k] != d)
                k--;
            for (; k <= depth && n < sizeof msg; k++)
                n += (size_t)snprintf(msg + n, sizeof msg - n, "%s -> ", path[k]->spec.name);
            if (n < sizeof msg)
                snprintf(msg + n, sizeof msg - n, "%s", d->spec.name);
            return th__err(err, TH_EINVAL, "deps", "dependency cycle: %s", msg);
        }
        if (d->mark == 0) {
            int rc = walk(sv, d, path, depth + 1, err);
            if (rc)
                return rc;
        }
    }
    s->mark = 2;
    return 0;
}

/* Checks the dependencies of `root` (NULL: of every service). */
static int check_graph(th_supervisor *sv, sv_service *root, th_error *err)
{
    size_t n = 0;
    for (sv_service *s = sv->services; s; s = s->next)
        n++;
    sv_service **path = th__calloc(n + 1, sizeof *path);
    if (!path)
        return th__err(err, TH_ENOMEM, "", "out of memory");
    marks_clear(sv);
    int rc = 0;
    for (sv_service *s = root ? root : sv->services; s && !rc; s = root ? NULL : s->next)
        if (s->mark == 0)
            rc = walk(sv, s, path, 0, err);
    th__free(path);
    return rc;
}

static int dep_ok(const sv_service *d)
{
    if (!d->want || d->disabled || !d->launched)
        return 0;
    for (int i = 0; i < d->ninst; i++) {
        const sv_inst *in = &d->inst[i];
        if (d->spec.type == TH_SERVICE_ALWAYS && in->state != TH_SVC_RUNNING)
            return 0;
        if (d->spec.type == TH_SERVICE_ONESHOT &&
            !(in->ran_ok && in->pid == 0 && in->state == TH_SVC_STOPPED))
            return 0;
    }
    return 1;
}

/* The first dependency of `s` that is not met, or NULL. */
static const char *unmet(th_supervisor *sv, const sv_service *s)
{
    for (size_t i = 0; i < s->spec.ndeps; i++) {
        sv_service *d = th__sv_find(sv, s->spec.deps[i]);
        if (!d || !dep_ok(d))
            return s->spec.deps[i];
    }
    return NULL;
}

/* ---- reconcile ----------------------------------------------------------------- */

static int dependents_up(th_supervisor *sv, const sv_service *s)
{
    for (sv_service *t = sv->services; t; t = t->next)
        if (t != s && depends_on(t, s->spec.name) && (t->stop_pending || th__sv_svc_alive(t)))
            return 1;
    return 0;
}

/* stop_all: stops each pending service once its dependents are down. */
static int ordered_stops(th_supervisor *sv)
{
    int started = 0, pending = 0, alive = 0;
    for (sv_service *s = sv->services; s; s = s->next) {
        if (!s->stop_pending)
            continue;
        if (!dependents_up(sv, s)) {
            th__sv_stop_service(sv, s);
            started = 1;
        } else {
            pending = 1;
        }
    }
    if (started || !pending)
        return started;
    for (sv_service *s = sv->services; s; s = s->next)
        alive |= th__sv_svc_alive(s);
    if (!alive) /* only a cycle (added after a start) can block: stop the rest */
        for (sv_service *s = sv->services; s; s = s->next)
            if (s->stop_pending) {
                th__sv_stop_service(sv, s);
                started = 1;
            }
    return started;
}

static void finish_removals(th_supervisor *sv)
{
    sv_service **pp = &sv->services, *prev = NULL;
    while (*pp) {
        sv_service *s = *pp;
        if (s->removing && !th__sv_svc_alive(s)) {
            *pp = s->next;
            if (sv->services_tail == s)
                sv->services_tail = prev;
            th__sv_service_free(sv, s);
            continue;
        }
        prev = s;
        pp = &s->next;
    }
}

static void check_alerts(th_supervisor *sv)
{
    th_supervisor_health_info h;
    th__sv_do_health(sv, &h);
    if (h.alert_error_rate != sv->alert_rate_on) {
        sv->alert_rate_on = h.alert_error_rate;
        if (h.alert_error_rate) {
            char msg[200];
            snprintf(msg, sizeof msg,
                     "error rate %.0f %% (%llu of %llu exits failed in the last %lld ms) is "
                     "above 10 %%",
                     h.error_rate * 100, (unsigned long long)h.failed_exits,
                     (unsigned long long)h.exits, (long long)sv->o.health_window_ms);
            th__sv_emit_inst(sv, TH_SEV_ALERT, NULL, msg);
        }
    }
    if (h.alert_failed != sv->alert_failed_on) {
        sv->alert_failed_on = h.alert_failed;
        if (h.alert_failed) {
            char msg[200];
            snprintf(msg, sizeof msg, "%d of %d services failed or disabled (more than 20 %%)",
                     h.services_failed, h.services_enabled);
            th__sv_emit_inst(sv, TH_SEV_ALERT, NULL, msg);
        }
    }
}

void th__sv_reconcile(th_supervisor *sv)
{
    if (sv->reconciling) { /* called from within: the running pass repeats */
        sv->reconcile_again = 1;
        return;
    }
    sv->reconciling = 1;
    do {
        sv->reconcile_again = 0;
        for (sv_service *s = sv->services; s; s = s->next) {
            if (s->want && !s->launched && !s->disabled && !s->removing && !unmet(sv, s)) {
                th__sv_launch(sv, s);
                sv->reconcile_again = 1;
            }
        }
        if (ordered_stops(sv))
            sv->reconcile_again = 1;
    } while (sv->reconcile_again);
    finish_removals(sv);
    th__sv_check_waiters(sv);
    check_alerts(sv);
    sv->reconciling = 0;
}

/* ---- adding and removing ------------------------------------------------------- */

int th__sv_do_group(th_supervisor *sv, const char *name, th_group_strategy st, th_error *err)
{
    for (sv_group *g = sv->groups; g; g = g->next)
        if (strcmp(g->name, name) == 0) {
            if (g->strategy == st)
                return 0;
            return th__err(err, TH_ECONFLICT, "name", "group %s exists with another strategy",
                           name);
        }
    sv_group *g = th__calloc(1, sizeof *g);
    if (!g || !(g->name = th__strdup(name))) {
        th__free(g);
        return th__err(err, TH_ENOMEM, "", "out of memory");
    }
    g->strategy = st;
    g->next = sv->groups;
    sv->groups = g;
    return 0;
}

int th__sv_do_add(th_supervisor *sv, sv_service *s, th_error *err)
{
    if (th__sv_find(sv, s->spec.name))
        return th__err(err, TH_ECONFLICT, "name", "a service named %s exists", s->spec.name);
    sv_group *g = NULL;
    if (s->spec.group) {
        for (g = sv->groups; g && strcmp(g->name, s->spec.group) != 0; g = g->next)
            ;
        if (!g)
            return th__err(err, TH_ENOTFOUND, "group",
                           "no group %s: create it with th_supervisor_group first", s->spec.group);
    }
    if (th__sv_service_events(sv, s) != 0)
        return th__err(err, TH_ENOMEM, "", "out of memory");
    s->group = g;
    if (g)
        for (int i = 0; i < s->ninst; i++)
            s->inst[i].group_order = g->next_order++;
    s->id = ++sv->next_id;
    if (sv->services_tail)
        sv->services_tail->next = s;
    else
        sv->services = s;
    sv->services_tail = s;
    return 0;
}

int th__sv_do_remove(th_supervisor *sv, const char *name, uint64_t *id, th_error *err)
{
    sv_service *s = th__sv_find(sv, name);
    if (!s || s->removing)
        return th__err(err, TH_ENOTFOUND, "name", "no service named %s", name);
    for (sv_service *t = sv->services; t; t = t->next)
        if (t != s && !t->removing && depends_on(t, name))
            return th__err(err, TH_EBUSY, "name", "%s depends on %s", t->spec.name, name);
    *id = s->id;
    s->removing = 1;
    th__sv_stop_service(sv, s);
    th__sv_reconcile(sv);
    return 0;
}

/* ---- starting and stopping ------------------------------------------------------- */

/* Wants `s` and (first) its dependencies; clears "disabled". The graph
 * has been checked, so this terminates. */
static void want_closure(th_supervisor *sv, sv_service *s, int target)
{
    if (s->mark == 3)
        return;
    s->mark = 3;
    for (size_t i = 0; i < s->spec.ndeps; i++)
        want_closure(sv, th__sv_find(sv, s->spec.deps[i]), 0);
    s->want = 1;
    s->stop_pending = 0;
    if (s->disabled) {
        s->disabled = 0;
        for (int i = 0; i < s->ninst; i++) {
            sv_inst *in = &s->inst[i];
            th__sv_hist_reset(in);
            if (in->state == TH_SVC_DISABLED)
                in->state = TH_SVC_STOPPED;
            if (in->pid > 0 && in->stop_reason == SV_STOP_DISABLE)
                in->stop_reason = SV_STOP_RESTART; /* still stopping: start it when gone */
        }
        if (s->launched) { /* relaunch: schedules and runs start over */
            s->launched = 0;
            return;
        }
    }
    if (!s->launched)
        return;
    /* Already launched: bring back what is down. A oneshot reruns when
     * started itself, or when it failed. */
    for (int i = 0; i < s->ninst; i++) {
        sv_inst *in = &s->inst[i];
        if (th__sv_inst_active(in))
            continue;
        if (s->spec.type == TH_SERVICE_ALWAYS ||
            (s->spec.type == TH_SERVICE_ONESHOT && (target || !in->ran_ok)))
            th__sv_spawn_inst(sv, in);
    }
}

int th__sv_do_start(th_supervisor *sv, const char *name, th_error *err)
{
    sv_service *s = th__sv_find(sv, name);
    if (!s || s->removing)
        return th__err(err, TH_ENOTFOUND, "name", "no service named %s", name);
    int rc = check_graph(sv, s, err);
    if (rc)
        return rc;
    marks_clear(sv);
    want_closure(sv, s, 1);
    th__sv_reconcile(sv);
    return 0;
}

int th__sv_do_start_all(th_supervisor *sv, th_error *err)
{
    int rc = check_graph(sv, NULL, err);
    if (rc)
        return rc;
    marks_clear(sv);
    for (sv_service *s = sv->services; s; s = s->next)
        if (!s->removing)
            want_closure(sv, s, 0);
    th__sv_reconcile(sv);
    return 0;
}

int th__sv_do_stop(th_supervisor *sv, const char *name, uint64_t *id, th_error *err)
{
    sv_service *s = th__sv_find(sv, name);
    if (!s)
        return th__err(err, TH_ENOTFOUND, "name", "no service named %s", name);
    *id = s->id;
    th__sv_stop_service(sv, s);
    th__sv_reconcile(sv);
    return 0;
}

int th__sv_do_stop_all(th_supervisor *sv, th_error *err)
{
    (void)err;
    for (sv_service *s = sv->services; s; s = s->next) {
        /* Nothing new starts from here on; each stops once its dependents are down. */
        s->want = 0;
        s->trigger_pending = 0;
        evtimer_del(s->sched_ev);
        s->next_run_wall_ms = 0;
        s->stop_pending = 1;
    }
    th__sv_reconcile(sv);
    return 0;
}

int th__sv_do_restart(th_supervisor *sv, const char *name, th_error *err)
{
    sv_service *s = th__sv_find(sv, name);
    if (!s || s->removing)
        return th__err(err, TH_ENOTFOUND, "name", "no service named %s", name);
    int rc = check_graph(sv, s, err);
    if (rc)
        return rc;
    int was_launched = s->launched && s->want;
    marks_clear(sv);
    s->mark = 3; /* its own instances are handled below */
    for (size_t i = 0; i < s->spec.ndeps; i++)
        want_closure(sv, th__sv_find(sv, s->spec.deps[i]), 0);
    s->want = 1;
    s->stop_pending = 0;
    if (s->disabled) {
        s->disabled = 0;
        for (int i = 0; i < s->ninst; i++) {
            th__sv_hist_reset(&s->inst[i]);
            if (s->inst[i].state == TH_SVC_DISABLED)
                s->inst[i].state = TH_SVC_STOPPED;
        }
    }
    if (was_launched) {
        for (int i = 0; i < s->ninst; i++) {
            sv_inst *in = &s->inst[i];
            evtimer_del(in->restart_ev);
            in->restart_due = 0;
            if (in->pid > 0) {
                if (in->stop_reason == SV_STOP_NONE)
                    th__sv_inst_stop(sv, in, SV_STOP_RESTART, "restart requested");
                else
                    in->stop_reason = SV_STOP_RESTART;
                in->restarts++;
            } else {
                th__sv_spawn_inst(sv, in);
            }
        }
    } else {
        s->launched = 0; /* launched (again) by reconcile once its dependencies are met */
    }
    th__sv_reconcile(sv);
    return 0;
}

int th__sv_do_trigger(th_supervisor *sv, const char *name, th_error *err)
{
    sv_service *s = th__sv_find(sv, name);
    if (!s || s->removing)
        return th__err(err, TH_ENOTFOUND, "name", "no service named %s", name);
    if (s->spec.type != TH_SERVICE_EVENT && s->spec.type != TH_SERVICE_PERIODIC)
        return th__err(err, TH_EINVAL, "type",
                       "%s is a %s service: only event and periodic "
                       "services are triggered",
                       name, th_service_type_name(s->spec.type));
    if (!s->want)
        return th__err(err, TH_ESTATE, "state", "%s is not started", name);
    if (s->disabled)
        return th__err(err, TH_ESTATE, "state", "%s is disabled", name);
    if (!s->launched || th__sv_svc_active(s))
        s->trigger_pending = 1; /* runs once its dependencies are met / the run ends */
    else
        th__sv_run_all(sv, s);
    th__sv_reconcile(sv);
    return 0;
}

/* ---- observing -------------------------------------------------------------------- */

int th__sv_do_list(th_supervisor *sv, const char *name, th_service_info **out, size_t *n,
                   th_error *err)
{
    size_t count = 0;
    sv_service *only = NULL;
    if (name) {
        only = th__sv_find(sv, name);
        if (!only || only->removing)
            return th__err(err, TH_ENOTFOUND, "name", "no service named %s", name);
        count = (size_t)only->ninst;
    } else {
        for (sv_service *s = sv->services; s; s = s->next)
            count += s->removing ? 0 : (size_t)s->ninst;
    }
    th_service_info *a = th__calloc(count ? count : 1, sizeof *a);
    if (!a)
        return th__err(err, TH_ENOMEM, "", "out of memory");
    size_t k = 0;
    int64_t now = th__sv_mono_ms();
    for (sv_service *s = only ? only : sv->services; s; s = only ? NULL : s->next) {
        if (s->removing)
            continue;
        const char *wait = s->want && !s->launched && !s->disabled ? unmet(sv, s) : NULL;
        for (int i = 0; i < s->ninst; i++) {
            const sv_inst *in = &s->inst[i];
            th_service_info *o = &a[k++];
            snprintf(o->name, sizeof o->name, "%s", s->spec.name);
            o->instance = i;
            o->type = s->spec.type;
            o->state = in->state;
            o->pid = (int)in->pid;
            o->started_at = in->spawned_wall_ms;
            o->uptime_ms = in->pid > 0 ? now - in->spawned_mono_ms : 0;
            o->restarts = in->restarts;
            o->last_exit_code = in->last_code;
            o->last_exit_signal = in->last_signal;
            o->cpu_percent = in->cpu_percent;
            o->rss_bytes = in->rss;
            o->healthy = in->pid > 0 && in->state == TH_SVC_RUNNING &&
                         (s->spec.health.kind == TH_HEALTH_NONE || in->healthy);
            o->next_run_at = s->spec.type == TH_SERVICE_PERIODIC ? s->next_run_wall_ms : 0;
            if (wait)
                snprintf(o->status, sizeof o->status, "waiting for %s", wait);
            else
                snprintf(o->status, sizeof o->status, "%s", in->status);
        }
    }
    *out = a;
    *n = k;
    return 0;
}

void th__sv_do_health(th_supervisor *sv, th_supervisor_health_info *h)
{
    memset(h, 0, sizeof *h);
    for (sv_service *s = sv->services; s; s = s->next) {
        if (!s->want || s->removing)
            continue;
        h->services_enabled++;
        if (s->disabled) {
            h->services_failed++;
            continue;
        }
        int ok = s->launched, bad = 0;
        for (int i = 0; i < s->ninst; i++) {
            const sv_inst *in = &s->inst[i];
            bad |= in->state == TH_SVC_FAILED;
            switch (s->spec.type) {
            case TH_SERVICE_ALWAYS:
                if (!(in->state == TH_SVC_RUNNING &&
                      (s->spec.health.kind == TH_HEALTH_NONE || in->healthy)))
                    ok = 0;
                break;
            case TH_SERVICE_ONESHOT:
                if (in->last_failed ||
                    (!in->ran_ok && in->state != TH_SVC_STARTING && in->state != TH_SVC_RUNNING))
                    ok = 0;
                break;
            default:
                if (in->last_failed)
                    ok = 0;
                break;
            }
        }
        h->services_healthy += ok && !bad;
        h->services_failed += bad;
    }
    th__sv_exits_count(sv, &h->exits, &h->failed_exits);
    h->score = h->services_enabled ? (double)h->services_healthy / h->services_enabled : 1.0;
    h->healthy = h->score >= 0.8;
    h->error_rate = h->exits ? (double)h->failed_exits / (double)h->exits : 0;
    h->alert_error_rate = h->error_rate > 0.10;
    h->alert_failed =
        h->services_enabled && (double)h->services_failed / h->services_enabled > 0.20;
    size_t n = 0;
    if (h->alert_error_rate)
        n += (size_t)snprintf(
            h->message, sizeof h->message, "error rate %.0f %% (%llu of %llu exits) above 10 %%",
            h->error_rate * 100, (unsigned long long)h->failed_exits, (unsigned long long)h->exits);
    if (h->alert_failed && n < sizeof h->message)
        snprintf(h->message + n, sizeof h->message - n, "%s%d of %d services failed or disabled",
                 n ? "; " : "", h->services_failed, h->services_enabled);
}

int th__sv_stopped(th_supervisor *sv, uint64_t id)
{
    sv_service *s = th__sv_find_id(sv, id);
    if (!s)
        return 1;
    for (int i = 0; i < s->ninst; i++)
        if (s->inst[i].pid > 0)
            return 0;
    return 1;
}

int th__sv_all_stopped(th_supervisor *sv)
{
    for (sv_service *s = sv->services; s; s = s->next) {
        if (s->stop_pending)
            return 0;
        for (int i = 0; i < s->ninst; i++)
            if (s->inst[i].pid > 0)
                return 0;
    }
    return 1;
}

/* ---- freeing --------------------------------------------------------------------- */

static void free_ev(struct event **ev)
{
    if (*ev)
        event_free(*ev);
    *ev = NULL;
}

void th__sv_kill_all(th_supervisor *sv)
{
    for (sv_service *s = sv->services; s; s = s->next) {
        for (int i = 0; i < s->ninst; i++) {
            sv_inst *in = &s->inst[i];
            free_ev(&in->exit_ev);
            if (in->pid > 0) {
                int code, sig;
                kill(-in->pid, SIGKILL);
                th__sv_reap(in->pid, in->pidfd, &code, &sig);
                in->pid = 0;
                in->pidfd = -1;
            }
            th__sv_health_release(in);
        }
    }
}

void th__sv_service_free(th_supervisor *sv, sv_service *s)
{
    (void)sv;
    if (!s)
        return;
    for (int i = 0; s->inst && i < s->ninst; i++) {
        sv_inst *in = &s->inst[i];
        th__sv_pipe_close(&in->out);
        th__sv_pipe_close(&in->err);
        free_ev(&in->exit_ev);
        free_ev(&in->restart_ev);
        free_ev(&in->kill_ev);
        free_ev(&in->start_ev);
        th__sv_health_release(in);
        th__sv_notify_close(in);
        th__free(in->hist);
        th__free(in->stop_note);
    }
    th__free(s->inst);
    free_ev(&s->sched_ev);
    th__sv_log_close(s);
    th__free(s->log_path);
    th__sv_spec_clear(&s->spec);
    th__free(s);
}
