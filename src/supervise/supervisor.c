/*
 * The supervisor: its thread and event loop, the queue that carries public
 * calls to that thread, and event delivery to subscribers.
 *
 * No orphans. Every child is forked by the loop thread and, before exec:
 *   - sets PR_SET_PDEATHSIG(SIGTERM), then checks that getppid() is still
 *     the supervisor's process (if it died between fork and prctl, nobody
 *     would send the signal). The "parent" of PDEATHSIG is the thread that
 *     forked, which is why only the loop thread forks: it lives as long as
 *     the supervisor, and th_supervisor_free stops every child before it
 *     ends that thread. If the whole process dies (even by SIGKILL), the
 *     kernel sends SIGTERM to every direct child.
 *   - calls setpgid(0, 0) (the parent does too, to close the race): each
 *     instance leads its own process group, so the stop signal, the
 *     SIGKILL after stop_timeout_ms and the SIGKILL that sweeps up leftovers
 *     when the main process exits all go to the group and reach the
 *     service's own children, not just the process we forked.
 * A service that daemonizes into a new session escapes both; run services
 * in the foreground.
 *
 * Exits are seen through one pidfd per child (pidfd_open, then waitid with
 * P_PIDFD once it is readable), never through SIGCHLD or waitpid(-1), so
 * the embedding program keeps reaping its own children (pool workers)
 * with waitpid(pid). The supervisor installs no signal handler and blocks
 * every signal in its threads, so the embedder's handlers see them.
 *
 * Threads and locks. The loop thread owns all service state (sv_impl.h);
 * public calls are queued as commands and run there in order, and the
 * caller waits for its command to be done. Helper threads run http / tcp
 * health checks (health.c). Locks, none held while taking another except
 * as listed:
 *   qmu  (+ qcv)  the command queue and each command's `done` flag; leaf.
 *   hmu  (+ hcv)  health jobs and results; leaf.
 *   evmu          recursive; the subscriber table. Held by the loop while
 *                 callbacks run, so unsubscribe returns only when no
 *                 callback is running. A callback may call the supervisor:
 *                 on the loop thread a call runs at once, without the queue
 *                 (and stop-like calls do not wait), which is safe because
 *                 events are delivered from their own loop callback, never
 *                 from inside the state machine. So evmu may be held while
 *                 qmu or hmu is taken, never the reverse.
 * Cross-thread wake-ups use an eventfd read by the loop, so libevent needs
 * no locking of its own.
 */
#include "supervise/sv_impl.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"

enum {
    OP_ADD,
    OP_GROUP,
    OP_REMOVE,
    OP_START_ALL,
    OP_START,
    OP_STOP,
    OP_STOP_ALL,
    OP_RESTART,
    OP_TRIGGER,
    OP_LIST,
    OP_HEALTH,
    OP_QUIT,
};

enum { WAIT_NONE, WAIT_SERVICE, WAIT_ALL, WAIT_REMOVED };

struct sv_cmd {
    int op;
    const char *name;
    sv_service *svc; /* OP_ADD: handed to the loop when it succeeds */
    th_group_strategy strategy;
    th_error *err;
    th_service_info **info;
    size_t *ninfo;
    th_supervisor_health_info *health;
    int rc;
    int wait;
    uint64_t id;
    int done; /* under qmu */
    sv_cmd *next;
};

static _Thread_local th_supervisor *loop_owner; /* set on a supervisor's loop thread */
static atomic_uint supervisor_seq;

int64_t th__sv_mono_ms(void)
{
    return th__mono_ns() / 1000000;
}

/* ---- names ------------------------------------------------------------------------ */

const char *th_service_state_name(th_service_state s)
{
    static const char *const names[TH_SVC_NSTATES] = {"initialized", "starting", "running",
                                                      "stopping",    "stopped",  "failed",
                                                      "restarting",  "disabled"};
    return (unsigned)s < TH_SVC_NSTATES ? names[s] : "unknown";
}

const char *th_service_type_name(th_service_type t)
{
    static const char *const names[] = {"always", "periodic", "oneshot", "event"};
    return (unsigned)t < 4 ? names[t] : "unknown";
}

const char *th_supervisor_event_name(th_supervisor_event_type t)
{
    static const char *const names[TH_SEV_NTYPES] = {"started",    "ready",       "exited",
                                                     "restarting", "disabled",    "health_failed",
                                                     "alert",      "log_rotated", "stopped"};
    return (unsigned)t < TH_SEV_NTYPES ? names[t] : "unknown";
}

/* ---- events -------------------------------------------------------------------------- */

void th__sv_emit(th_supervisor *sv, const th_supervisor_event *ev)
{
    sv_event *e = th__calloc(1, sizeof *e);
    if (!e)
        return;
    e->ev = *ev;
    if (!e->ev.time_ms)
        e->ev.time_ms = th__wall_ms();
    e->service = th__strdup(ev->service);
    e->message = th__strdup(ev->message);
    if ((ev->service && !e->service) || (ev->message && !e->message)) {
        th__free(e->service);
        th__free(e->message);
        th__free(e);
        return;
    }
    e->ev.service = e->service;
    e->ev.message = e->message;
    if (sv->evtail)
        sv->evtail->next = e;
    else
        sv->evhead = e;
    sv->evtail = e;
    if (sv->flush_ev)
        event_active(sv->flush_ev, 0, 0);
}

void th__sv_emit_inst(th_supervisor *sv, th_supervisor_event_type type, sv_inst *in,
                      const char *message)
{
    th_supervisor_event ev = {.type = type,
                              .service = in ? in->svc->spec.name : NULL,
                              .instance = in ? in->index : -1,
                              .pid = in ? (int)in->pid : 0,
                              .exit_code = -1,
                              .message = message};
    th__sv_emit(sv, &ev);
}

static void event_free_one(sv_event *e)
{
    th__free(e->service);
    th__free(e->message);
    th__free(e);
}

static void complete(th_supervisor *sv, sv_cmd *c);

/* Delivers the queued events, then completes the calls that finished: a
 * call returns only after the events it caused were delivered. */
static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    th_supervisor *sv = arg;
    pthread_mutex_lock(&sv->evmu);
    while (sv->evhead || sv->finished) {
        while (sv->evhead) {
            sv_event *e = sv->evhead;
            sv->evhead = e->next;
            if (!sv->evhead)
                sv->evtail = NULL;
            for (int i = 0; i < SV_SUBSCRIBERS_MAX; i++)
                if (sv->subs[i].fn)
                    sv->subs[i].fn(&e->ev, sv->subs[i].ud);
            event_free_one(e);
        }
        sv_cmd *list = sv->finished;
        sv->finished = sv->finished_tail = NULL;
        while (list) {
            sv_cmd *c = list;
            list = c->next;
            complete(sv, c);
        }
    }
    pthread_mutex_unlock(&sv->evmu);
}

int th_supervisor_subscribe(th_supervisor *sv, th_supervisor_event_fn fn, void *ud)
{
    if (!sv || !fn)
        return TH_EINVAL;
    pthread_mutex_lock(&sv->evmu);
    int id = TH_EBUSY;
    for (int i = 0; i < SV_SUBSCRIBERS_MAX && id < 0; i++)
        if (!sv->subs[i].fn) {
            sv->subs[i].fn = fn;
            sv->subs[i].ud = ud;
            id = i;
        }
    pthread_mutex_unlock(&sv->evmu);
    return id;
}

int th_supervisor_unsubscribe(th_supervisor *sv, int subscription)
{
    if (!sv || subscription < 0 || subscription >= SV_SUBSCRIBERS_MAX)
        return TH_ENOTFOUND;
    pthread_mutex_lock(&sv->evmu);
    int rc = sv->subs[subscription].fn ? 0 : TH_ENOTFOUND;
    sv->subs[subscription].fn = NULL;
    sv->subs[subscription].ud = NULL;
    pthread_mutex_unlock(&sv->evmu);
    return rc;
}

/* ---- commands --------------------------------------------------------------------------- */

void th__sv_wake(th_supervisor *sv)
{
    uint64_t one = 1;
    ssize_t k = write(sv->wake_fd, &one, sizeof one);
    (void)k; /* EAGAIN: the counter is already non-zero, the loop will wake */
}

static void complete(th_supervisor *sv, sv_cmd *c)
{
    c->next = NULL;
    pthread_mutex_lock(&sv->qmu);
    c->done = 1;
    pthread_cond_broadcast(&sv->qcv);
    pthread_mutex_unlock(&sv->qmu);
}

static int waited_enough(th_supervisor *sv, const sv_cmd *c)
{
    switch (c->wait) {
    case WAIT_SERVICE:
        return th__sv_stopped(sv, c->id);
    case WAIT_ALL:
        return th__sv_all_stopped(sv);
    case WAIT_REMOVED:
        return th__sv_find_id(sv, c->id) == NULL;
    default:
        return 1;
    }
}

/* Completes `c` once the events queued so far are delivered (on_flush). */
static void finish(th_supervisor *sv, sv_cmd *c)
{
    c->next = NULL;
    if (sv->finished_tail)
        sv->finished_tail->next = c;
    else
        sv->finished = c;
    sv->finished_tail = c;
    event_active(sv->flush_ev, 0, 0);
}

void th__sv_check_waiters(th_supervisor *sv)
{
    sv_cmd **pp = &sv->waiting;
    while (*pp) {
        sv_cmd *c = *pp;
        if (waited_enough(sv, c)) {
            *pp = c->next;
            finish(sv, c);
        } else {
            pp = &c->next;
        }
    }
}

/* Runs a command on the loop. `queued`: a caller waits for it (it may be
 * parked until processes are gone); otherwise it came from a callback. */
static void run_cmd(th_supervisor *sv, sv_cmd *c, int queued)
{
    switch (c->op) {
    case OP_ADD:
        c->rc = th__sv_do_add(sv, c->svc, c->err);
        if (c->rc) /* the loop owns it from the call on; its timers belong to the loop */
            th__sv_service_free(sv, c->svc);
        break;
    case OP_GROUP:
        c->rc = th__sv_do_group(sv, c->name, c->strategy, c->err);
        break;
    case OP_REMOVE:
        c->rc = th__sv_do_remove(sv, c->name, &c->id, c->err);
        c->wait = WAIT_REMOVED;
        break;
    case OP_START_ALL:
        c->rc = th__sv_do_start_all(sv, c->err);
        break;
    case OP_START:
        c->rc = th__sv_do_start(sv, c->name, c->err);
        break;
    case OP_STOP:
        c->rc = th__sv_do_stop(sv, c->name, &c->id, c->err);
        c->wait = WAIT_SERVICE;
        break;
    case OP_STOP_ALL:
        c->rc = th__sv_do_stop_all(sv, c->err);
        c->wait = WAIT_ALL;
        break;
    case OP_RESTART:
        c->rc = th__sv_do_restart(sv, c->name, c->err);
        break;
    case OP_TRIGGER:
        c->rc = th__sv_do_trigger(sv, c->name, c->err);
        break;
    case OP_LIST:
        c->rc = th__sv_do_list(sv, c->name, c->info, c->ninfo, c->err);
        break;
    case OP_HEALTH:
        th__sv_do_health(sv, c->health);
        c->rc = 0;
        break;
    case OP_QUIT:
        sv->quit = 1;
        event_base_loopbreak(sv->base);
        c->rc = 0;
        break;
    }
    if (!queued)
        return;
    if (c->op == OP_QUIT) {
        complete(sv, c); /* the loop ends after this callback */
        return;
    }
    if (c->rc == 0 && c->wait != WAIT_NONE && !waited_enough(sv, c)) {
        c->next = sv->waiting;
        sv->waiting = c;
        return;
    }
    finish(sv, c);
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    th_supervisor *sv = arg;
    uint64_t v;
    ssize_t k = read(fd, &v, sizeof v);
    (void)k;
    pthread_mutex_lock(&sv->qmu);
    sv_cmd *list = sv->qhead;
    sv->qhead = sv->qtail = NULL;
    pthread_mutex_unlock(&sv->qmu);
    while (list) {
        sv_cmd *c = list;
        list = c->next;
        c->next = NULL;
        run_cmd(sv, c, 1);
    }
    th__sv_health_collect(sv);
    th__sv_reconcile(sv);
}

static void on_sample(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    th__sv_sample(arg);
}

/* Runs `c` on the loop and waits for it; from a callback, runs it at once. */
static int call(th_supervisor *sv, sv_cmd *c)
{
    if (loop_owner == sv) {
        run_cmd(sv, c, 0);
        th__sv_reconcile(sv);
        return c->rc;
    }
    pthread_mutex_lock(&sv->qmu);
    if (sv->qtail)
        sv->qtail->next = c;
    else
        sv->qhead = c;
    sv->qtail = c;
    pthread_mutex_unlock(&sv->qmu);
    th__sv_wake(sv);
    pthread_mutex_lock(&sv->qmu);
    while (!c->done)
        pthread_cond_wait(&sv->qcv, &sv->qmu);
    pthread_mutex_unlock(&sv->qmu);
    return c->rc;
}

static int by_name(th_supervisor *sv, int op, const char *name, th_error *err)
{
    th__err_clear(err);
    if (!sv)
        return th__err(err, TH_EINVAL, "", "no supervisor");
    if (!name || !*name)
        return th__err(err, TH_EINVAL, "name", "no service name");
    sv_cmd c = {.op = op, .name = name, .err = err};
    return call(sv, &c);
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

void th_supervisor_options_init(th_supervisor_options *o)
{
    memset(o, 0, sizeof *o);
    o->sample_interval_ms = 1000;
    o->health_window_ms = 60000;
}

static int mkdirs(const char *path)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf)
        return -1;
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char c = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return -1;
            buf[i] = c;
        }
    }
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode) && access(path, W_OK | X_OK) == 0 ? 0 : -1;
}

static int check_options(const th_supervisor_options *o, th_error *err)
{
    if (!o)
        return th__err(err, TH_EINVAL, "", "no options");
    if (!o->log_dir || !*o->log_dir)
        return th__err(err, TH_EINVAL, "log_dir", "a log directory is required");
    if (o->sample_interval_ms < 10 || o->sample_interval_ms > 3600 * 1000)
        return th__err(err, TH_EINVAL, "sample_interval_ms", "%lld is outside 10-3600000",
                       (long long)o->sample_interval_ms);
    if (o->health_window_ms < 1 || o->health_window_ms > 30LL * 24 * 3600 * 1000)
        return th__err(err, TH_EINVAL, "health_window_ms", "%lld is outside 1 ms - 30 days",
                       (long long)o->health_window_ms);
    if (mkdirs(o->log_dir) != 0)
        return th__err(err, TH_EIO, "log_dir", "cannot create or write %s: %s", o->log_dir,
                       strerror(errno));
    return 0;
}

static void *loop_main(void *arg)
{
    th_supervisor *sv = arg;
    loop_owner = sv;
    event_base_dispatch(sv->base);
    loop_owner = NULL;
    return NULL;
}

static void destroy(th_supervisor *sv)
{
    th__sv_health_stop_threads(sv);
    th__sv_kill_all(sv);
    while (sv->services) {
        sv_service *s = sv->services;
        sv->services = s->next;
        th__sv_service_free(sv, s);
    }
    while (sv->groups) {
        sv_group *g = sv->groups;
        sv->groups = g->next;
        th__free(g->name);
        th__free(g);
    }
    while (sv->evhead) {
        sv_event *e = sv->evhead;
        sv->evhead = e->next;
        event_free_one(e);
    }
    if (sv->wake_ev)
        event_free(sv->wake_ev);
    if (sv->flush_ev)
        event_free(sv->flush_ev);
    if (sv->sample_ev)
        event_free(sv->sample_ev);
    if (sv->base)
        event_base_free(sv->base);
    if (sv->wake_fd >= 0)
        close(sv->wake_fd);
    pthread_mutex_destroy(&sv->qmu);
    pthread_cond_destroy(&sv->qcv);
    pthread_mutex_destroy(&sv->evmu);
    pthread_mutex_destroy(&sv->hmu);
    pthread_cond_destroy(&sv->hcv);
    th__free(sv->log_dir);
    th__free(sv);
}

th_supervisor *th_supervisor_new(const th_supervisor_options *o, th_error *err)
{
    th__err_clear(err);
    if (check_options(o, err) != 0)
        return NULL;
    th_supervisor *sv = th__calloc(1, sizeof *sv);
    if (!sv) {
        th__err(err, TH_ENOMEM, "", "out of memory");
        return NULL;
    }
    sv->o = *o;
    sv->wake_fd = -1;
    sv->pid = getpid();
    sv->seq = atomic_fetch_add(&supervisor_seq, 1);
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&sv->evmu, &ma);
    pthread_mutexattr_destroy(&ma);
    pthread_mutex_init(&sv->qmu, NULL);
    pthread_cond_init(&sv->qcv, NULL);
    pthread_mutex_init(&sv->hmu, NULL);
    pthread_cond_init(&sv->hcv, NULL);
    struct timeval tv = {(time_t)(o->sample_interval_ms / 1000),
                         (suseconds_t)(o->sample_interval_ms % 1000) * 1000};
    if (!(sv->log_dir = th__strdup(o->log_dir)) || !(sv->base = event_base_new()) ||
        (sv->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0 ||
        !(sv->wake_ev = event_new(sv->base, sv->wake_fd, EV_READ | EV_PERSIST, on_wake, sv)) ||
        !(sv->flush_ev = event_new(sv->base, -1, 0, on_flush, sv)) ||
        !(sv->sample_ev = event_new(sv->base, -1, EV_PERSIST, on_sample, sv)) ||
        event_add(sv->wake_ev, NULL) != 0 || event_add(sv->sample_ev, &tv) != 0) {
        th__err(err, TH_ENOMEM, "", "cannot set up the event loop");
        destroy(sv);
        return NULL;
    }
    sv->o.log_dir = sv->log_dir;
    /* The threads block every signal: they belong to the embedding program. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int bad = th__sv_health_start_threads(sv) != 0;
    if (!bad) {
        bad = pthread_create(&sv->thread, NULL, loop_main, sv) != 0;
        sv->thread_started = !bad;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (bad) {
        th__err(err, TH_ENOMEM, "", "cannot start the supervisor's threads");
        destroy(sv);
        return NULL;
    }
    return sv;
}

void th_supervisor_free(th_supervisor *sv)
{
    if (!sv || loop_owner == sv) /* from a callback: not allowed, would deadlock */
        return;
    if (sv->thread_started) {
        th_supervisor_stop_all(sv, NULL);
        sv_cmd quit = {.op = OP_QUIT};
        call(sv, &quit);
        pthread_join(sv->thread, NULL);
    }
    destroy(sv);
}

/* ---- the public calls --------------------------------------------------------------------- */

int th_supervisor_group(th_supervisor *sv, const char *name, th_group_strategy strategy,
                        th_error *err)
{
    th__err_clear(err);
    if (!sv)
        return th__err(err, TH_EINVAL, "", "no supervisor");
    if (!th__sv_name_ok(name))
        return th__err(err, TH_EINVAL, "name", "must be 1-%d characters of [A-Za-z0-9_.:-]",
                       TH_SERVICE_NAME_MAX);
    if (strategy < TH_GROUP_ONE_FOR_ONE || strategy > TH_GROUP_REST_FOR_ONE)
        return th__err(err, TH_EINVAL, "strategy", "unknown strategy %d", (int)strategy);
    sv_cmd c = {.op = OP_GROUP, .name = name, .strategy = strategy, .err = err};
    return call(sv, &c);
}

int th_supervisor_add(th_supervisor *sv, const th_service_spec *spec, th_error *err)
{
    if (!sv)
        return th__err(err, TH_EINVAL, "", "no supervisor");
    int rc = th_service_spec_check(spec, err);
    if (rc)
        return rc;
    sv_service *s = th__calloc(1, sizeof *s);
    if (!s)
        return th__err(err, TH_ENOMEM, "", "out of memory");
    s->sv = sv;
    s->log_fd = -1;
    if (th__sv_spec_copy(&s->spec, spec) != 0) {
        th__free(s);
        return th__err(err, TH_ENOMEM, "", "out of memory");
    }
    if (s->spec.cron)
        th__cron_parse(&s->cron, s->spec.cron, NULL); /* checked above */
    s->restart = s->spec.restart;
    if (s->restart == TH_RESTART_DEFAULT)
        s->restart = s->spec.type == TH_SERVICE_ALWAYS ? TH_RESTART_ALWAYS : TH_RESTART_NEVER;
    s->ninst = s->spec.instances;
    int cap = s->spec.max_restarts >= 0 ? s->spec.max_restarts + 1 : 64;
    if (!(s->inst = th__calloc((size_t)s->ninst, sizeof *s->inst)))
        goto nomem;
    for (int i = 0; i < s->ninst; i++) {
        sv_inst *in = &s->inst[i];
        in->svc = s;
        in->index = i;
        in->state = TH_SVC_INITIALIZED;
        in->pidfd = in->notify_fd = in->hproc.pidfd = -1;
        in->out.fd = in->err.fd = -1;
        in->last_code = -1;
        in->hist_cap = cap;
        if (!(in->hist = th__calloc((size_t)cap, sizeof *in->hist)))
            goto nomem;
    }
    sv_cmd c = {.op = OP_ADD, .svc = s, .err = err};
    return call(sv, &c);
nomem:
    th__sv_service_free(sv, s);
    return th__err(err, TH_ENOMEM, "", "out of memory");
}

int th_supervisor_remove(th_supervisor *sv, const char *name, th_error *err)
{
    return by_name(sv, OP_REMOVE, name, err);
}

int th_supervisor_start_all(th_supervisor *sv, th_error *err)
{
    th__err_clear(err);
    if (!sv)
        return th__err(err, TH_EINVAL, "", "no supervisor");
    sv_cmd c = {.op = OP_START_ALL, .err = err};
    return call(sv, &c);
}

int th_supervisor_stop_all(th_supervisor *sv, th_error *err)
{
    th__err_clear(err);
    if (!sv)
        return th__err(err, TH_EINVAL, "", "no supervisor");
    sv_cmd c = {.op = OP_STOP_ALL, .err = err};
    return call(sv, &c);
}

int th_supervisor_start(th_supervisor *sv, const char *name, th_error *err)
{
    if (name && strcmp(name, "all") == 0)
        return th_supervisor_start_all(sv, err);
    return by_name(sv, OP_START, name, err);
}

int th_supervisor_stop(th_supervisor *sv, const char *name, th_error *err)
{
    if (name && strcmp(name, "all") == 0)
        return th_supervisor_stop_all(sv, err);
    return by_name(sv, OP_STOP, name, err);
}

int th_supervisor_restart(th_supervisor *sv, const char *name, th_error *err)
{
    if (name && strcmp(name, "all") == 0) {
        int rc = th_supervisor_stop_all(sv, err);
        return rc ? rc : th_supervisor_start_all(sv, err);
    }
    return by_name(sv, OP_RESTART, name, err);
}

int th_supervisor_trigger(th_supervisor *sv, const char *name, th_error *err)
{
    return by_name(sv, OP_TRIGGER, name, err);
}

int th_supervisor_list(th_supervisor *sv, const char *name, th_service_info **out, size_t *n,
                       th_error *err)
{
    th__err_clear(err);
    if (!out || !n)
        return th__err(err, TH_EINVAL, "out", "out and n are required");
    *out = NULL;
    *n = 0;
    if (!sv)
        return th__err(err, TH_EINVAL, "", "no supervisor");
    sv_cmd c = {.op = OP_LIST, .name = name, .info = out, .ninfo = n, .err = err};
    return call(sv, &c);
}

void th_service_info_free(th_service_info *info)
{
    th__free(info);
}

int th_supervisor_health(th_supervisor *sv, th_supervisor_health_info *out)
{
    if (!sv || !out)
        return TH_EINVAL;
    sv_cmd c = {.op = OP_HEALTH, .health = out};
    return call(sv, &c);
}
