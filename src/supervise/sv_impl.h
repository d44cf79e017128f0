/*
 * The supervisor's private structures, shared by the files of
 * src/supervise/. Everything in a th_supervisor except the fields marked
 * otherwise belongs to the supervisor's loop thread: only that thread reads
 * or writes it, so none of it needs a lock (see supervisor.c for the locks
 * that exist and their order).
 */
#ifndef TH_SUPERVISE_SV_IMPL_H
#define TH_SUPERVISE_SV_IMPL_H

#include <event2/event.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

#include "supervise/cron.h"
#include "taskhive/supervisor.h"

#define SV_LINE_MAX 16384 /* a longer output line is split */
#define SV_SUBSCRIBERS_MAX 64
#define SV_EXITS_MAX 1024 /* exits remembered for the error-rate alert */
#define SV_DEPS_MAX 64
#define SV_ENV_MAX 1024
#define SV_ARGV_MAX 4096
#define SV_HEALTH_THREADS 4
#define SV_STARTING_CHECK_MS 1000 /* health checks of a starting instance: at least this often */

typedef struct th_supervisor th_supervisor;
typedef struct sv_service sv_service;
typedef struct sv_inst sv_inst;

/* Why a process is being stopped; decides what its exit means. */
typedef enum sv_stop_reason {
    SV_STOP_NONE = 0,      /* not stopping: an exit is the process's own doing */
    SV_STOP_USER,          /* stop / stop_all / remove: stay stopped */
    SV_STOP_DISABLE,       /* the service was disabled */
    SV_STOP_RESTART,       /* restart request or a group sibling: start again, no failure */
    SV_STOP_HEALTH,        /* failed health checks: a failure */
    SV_STOP_MEMORY,        /* over memory_limit: a failure */
    SV_STOP_START_TIMEOUT, /* never became ready: a failure */
} sv_stop_reason;

/* One output pipe of a child (stdout or stderr). */
typedef struct sv_pipe {
    int fd; /* read end, non-blocking; -1 when closed */
    struct event *ev;
    char *buf; /* SV_LINE_MAX bytes: the partial line */
    size_t n;
    char stream[24]; /* "stdout", "stderr[2]"... */
    sv_inst *inst;
} sv_pipe;

/* A running command health check (a child process). */
typedef struct sv_hproc {
    pid_t pid; /* 0 when none */
    int pidfd;
    uint64_t gen; /* the instance's health_gen when it started */
    int timed_out;
    int64_t started_mono_ms;
    struct event *exit_ev, *kill_ev;
} sv_hproc;

struct sv_inst {
    sv_service *svc;
    int index;       /* 0-based; TH_INSTANCE */
    int group_order; /* position in the group: rest-for-one restarts later ones */
    th_service_state state;

    pid_t pid; /* the process (and its process group); 0 when none */
    int pidfd;
    struct event *exit_ev;
    sv_pipe out, err;

    struct event *restart_ev; /* backoff delay before a restart */
    struct event *kill_ev;    /* stop timeout: then SIGKILL */
    struct event *start_ev;   /* start timeout */
    struct event *health_ev;  /* next health check */

    sv_stop_reason stop_reason;
    int restart_due; /* the restart delay ran out while the process was stopping */
    char *stop_note; /* the reason in words, for the log and the exit event */

    int64_t spawned_wall_ms, spawned_mono_ms;
    int restarts;
    int64_t *hist; /* mono ms of recent restarts: a ring of hist_cap */
    int hist_cap, hist_n, hist_head;
    int last_code, last_signal; /* -1 / 0 when none */
    int ran_ok;                 /* the last run exited 0 */
    int last_failed;            /* the last run failed */

    /* notify = 1: an abstract AF_UNIX datagram socket for this instance */
    int notify_fd;
    struct event *notify_ev;
    char notify_name[108]; /* "@taskhive/..." as put in NOTIFY_SOCKET */
    int64_t last_watchdog_mono_ms;

    /* health checks */
    int health_inflight;
    uint64_t health_gen; /* bumped at each spawn: late results are dropped */
    int health_fails;
    int healthy;
    sv_hproc hproc;

    /* samples */
    uint64_t cpu_ticks;
    int64_t cpu_mono_ns;
    double cpu_percent;
    size_t rss;

    char status[TH_SERVICE_STATUS_MAX];
};

typedef struct sv_group {
    char *name;
    th_group_strategy strategy;
    int next_order;
    struct sv_group *next;
} sv_group;

struct sv_service {
    th_supervisor *sv;
    uint64_t id;
    th_service_spec spec; /* a deep copy: every string and array owned */
    th__cron cron;
    th_restart_policy restart; /* resolved: never TH_RESTART_DEFAULT */
    sv_group *group;

    int want;            /* started by a caller and not stopped since */
    int launched;        /* dependencies were met and it was started / armed */
    int disabled;        /* too many restarts */
    int stop_pending;    /* stop_all: waiting for its dependents to stop */
    int removing;        /* remove: freed once its processes are gone */
    int trigger_pending; /* a trigger arrived while it was running */

    struct event *sched_ev; /* periodic: the next run */
    int64_t next_run_wall_ms;
    int64_t next_run_mono_ms; /* interval schedules: fixed rate */

    sv_inst *inst;
    int ninst;

    int log_fd; /* <log_dir>/<name>.log, O_APPEND; -1 until first written */
    size_t log_size;
    char *log_path;

    int mark; /* dependency walks: 0 unseen, 1 on the path, 2 done */
    sv_service *next;
};

/* An event waiting to be delivered; strings owned. */
typedef struct sv_event {
    th_supervisor_event ev;
    char *service, *message;
    struct sv_event *next;
} sv_event;

/* A call from another thread, run by the loop. */
typedef struct sv_cmd sv_cmd;

/* A http / tcp health check handed to a helper thread. */
typedef struct sv_hjob {
    uint64_t svc_id;
    int index;
    uint64_t gen;
    th_health_kind kind;
    char *url, *host;
    int port;
    int64_t timeout_ms;
    int ok;
    char msg[160];
    struct sv_hjob *next;
} sv_hjob;

typedef struct sv_subscriber {
    th_supervisor_event_fn fn;
    void *ud;
} sv_subscriber;

struct th_supervisor {
    th_supervisor_options o;
    char *log_dir;
    pid_t pid;
    unsigned seq; /* distinguishes supervisors of one process in socket names */

    struct event_base *base;
    pthread_t thread;
    int thread_started;
    int wake_fd; /* eventfd: commands and health results arrived */
    struct event *wake_ev, *flush_ev, *sample_ev;
    int quit;

    /* commands: qmu guards qhead/qtail and every sv_cmd's `done` */
    pthread_mutex_t qmu;
    pthread_cond_t qcv;
    sv_cmd *qhead, *qtail;
    sv_cmd *waiting;                  /* loop only: commands done once processes are gone */
    sv_cmd *finished, *finished_tail; /* loop only: done once events are delivered */

    /* subscribers: evmu (recursive) is held while callbacks run */
    pthread_mutex_t evmu;
    sv_subscriber subs[SV_SUBSCRIBERS_MAX];
    sv_event *evhead, *evtail; /* loop only */

    /* health helper threads: hmu guards hjobs, hdone and hstop */
    pthread_mutex_t hmu;
    pthread_cond_t hcv;
    sv_hjob *hjobs, *hjobs_tail, *hdone;
    int hstop;
    pthread_t hthreads[SV_HEALTH_THREADS];
    int nhthreads;

    sv_service *services, *services_tail;
    sv_group *groups;
    uint64_t next_id;

    struct {
        int64_t mono_ms;
        int failed;
    } exits[SV_EXITS_MAX];
    int exits_n, exits_head;
    int alert_rate_on, alert_failed_on;
    int reconciling, reconcile_again;
};

/* ---- supervisor.c ---------------------------------------------------------- */

/* Queues an event for the subscribers (delivered from a fresh loop callback,
 * so handlers never run inside the state machine). `service` and `message`
 * are copied. Dropped when memory is short. */
void th__sv_emit(th_supervisor *sv, const th_supervisor_event *ev);
/* Emits an event of `type` about `in` (NULL: supervisor-wide). */
void th__sv_emit_inst(th_supervisor *sv, th_supervisor_event_type type, sv_inst *in,
                      const char *message);
/* Completes the waiting calls whose processes are now gone. */
void th__sv_check_waiters(th_supervisor *sv);
/* Wakes the loop (eventfd); any thread. */
void th__sv_wake(th_supervisor *sv);
int64_t th__sv_mono_ms(void);

/* ---- spec.c ------------------------------------------------------------------ */

/* 1 when `s` is a valid service or group name. */
int th__sv_name_ok(const char *s);
/* Deep-copies a checked spec into *dst. TH_ENOMEM leaves *dst empty. */
int th__sv_spec_copy(th_service_spec *dst, const th_service_spec *src);
/* Frees what th__sv_spec_copy allocated; accepts a zeroed spec. */
void th__sv_spec_clear(th_service_spec *s);
/* Finds `file` in PATH-like `path` ("a:b:c"); copies the full name into
 * out. Returns 0, or -1 when there is none that is executable. */
int th__sv_find_program(const char *file, const char *path, const char *cwd, char *out, size_t n);

/* ---- spawn.c ----------------------------------------------------------------- */

/* Everything a child needs, prepared before fork (the child of a threaded
 * process may only make async-signal-safe calls). */
typedef struct th__sv_exec {
    char *path;
    char **argv, **envp;
    const char *cwd; /* borrowed */
    int set_user;
    uid_t uid;
    gid_t gid;
    gid_t *groups;
    int ngroups;
} th__sv_exec;

/* Prepares running `argv` (NULL: the service's program) for instance `in`,
 * with the service's cwd, environment and user plus `extra` (NULL-ended
 * KEY=VALUE strings). Returns 0 or a negative code with `why` filled. */
int th__sv_exec_prepare(th__sv_exec *x, sv_inst *in, const char *const *argv,
                        const char *const *extra, char *why, size_t n);
void th__sv_exec_clear(th__sv_exec *x);
/* Forks and execs: stdin from /dev/null, stdout and stderr to the given
 * fds (-1: /dev/null), in its own process group, with PR_SET_PDEATHSIG.
 * Returns the pid with *pidfd set, or -1 with `why` filled. */
pid_t th__sv_spawn(const th__sv_exec *x, int out_fd, int err_fd, int *pidfd, char *why, size_t n);
/* Reaps a process that has exited (its pidfd readable): *code is the exit
 * code or -1, *sig the signal or 0. Closes the pidfd, so free any event
 * watching it first. */
void th__sv_reap(pid_t pid, int pidfd, int *code, int *sig);

/* ---- logfile.c --------------------------------------------------------------- */

/* Writes "<time> <stream> <text>\n" to the service's log, opening it first
 * and rotating it when the line would take it past log_max_bytes. */
void th__sv_log(sv_service *s, const char *stream, const char *text, size_t len);
/* Writes a line from the supervisor itself: stream "supervisor" (with
 * "[i]" for instance i of a multi-instance service; in = NULL: none). */
void th__sv_logf(sv_service *s, const sv_inst *in, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Sets up a child's output pipe: `fd` is the read end (made non-blocking);
 * the pipe owns it from here, even on failure. Returns 0 or -1. */
int th__sv_pipe_open(sv_pipe *p, sv_inst *in, int fd, const char *stream);
/* Reads what is left in the pipe, writes the partial line and closes it. */
void th__sv_pipe_close(sv_pipe *p);
void th__sv_log_close(sv_service *s);

/* ---- health.c ---------------------------------------------------------------- */

int th__sv_health_start_threads(th_supervisor *sv);
void th__sv_health_stop_threads(th_supervisor *sv);
/* Arms the first check of a freshly spawned instance. */
void th__sv_health_arm(th_supervisor *sv, sv_inst *in, int64_t delay_ms);
/* Cancels the timer and any running check of `in`. */
void th__sv_health_cancel(th_supervisor *sv, sv_inst *in);
/* Loop: applies the results the helper threads finished. */
void th__sv_health_collect(th_supervisor *sv);
/* Frees an instance's check resources (at removal / free): kills and reaps
 * a running check process. */
void th__sv_health_release(sv_inst *in);

/* ---- notify.c ---------------------------------------------------------------- */

/* Makes sure `in` has its notify socket (bound, read by the loop), and
 * discards messages left from an earlier process. Returns 0 or -1. */
int th__sv_notify_open(th_supervisor *sv, sv_inst *in);
void th__sv_notify_close(sv_inst *in);

/* ---- service.c --------------------------------------------------------------- */

/* A process, or a restart waiting for its delay. */
int th__sv_inst_active(const sv_inst *in);
int th__sv_svc_active(const sv_service *s);
/* Any process left (instances or health-check commands). */
int th__sv_svc_alive(const sv_service *s);
/* Exits (and failed ones) within health_window_ms. */
void th__sv_exits_count(th_supervisor *sv, uint64_t *exits, uint64_t *failed);
void th__sv_hist_reset(sv_inst *in);
/* Spawns `in`; a failure to spawn counts as a failed run. */
void th__sv_spawn_inst(th_supervisor *sv, sv_inst *in);
void th__sv_run_all(th_supervisor *sv, sv_service *s);
/* Its dependencies are met: start it, arm its schedule or wait for triggers. */
void th__sv_launch(th_supervisor *sv, sv_service *s);
void th__sv_stop_service(th_supervisor *sv, sv_service *s);
/* Creates the timers of a service being added. TH_ENOMEM. */
int th__sv_service_events(th_supervisor *sv, sv_service *s);

/* ---- control.c --------------------------------------------------------------- */

sv_service *th__sv_find(th_supervisor *sv, const char *name);
sv_service *th__sv_find_id(th_supervisor *sv, uint64_t id);
/* The instance is ready: starting -> running. */
void th__sv_set_running(th_supervisor *sv, sv_inst *in);
/* Stops `in` for `reason` (a failure reason counts as a failed run); `note`
 * (copied, may be NULL) is logged. */
void th__sv_inst_stop(th_supervisor *sv, sv_inst *in, sv_stop_reason reason, const char *note);
/* Re-evaluates what waits on something: dependencies, ordered stops,
 * waiting calls, alerts and removals. Called after every change. */
void th__sv_reconcile(th_supervisor *sv);
/* The periodic RSS / CPU sample and memory-limit check. */
void th__sv_sample(th_supervisor *sv);
/* Frees a service (no process may be left). */
void th__sv_service_free(th_supervisor *sv, sv_service *s);
/* Kills (SIGKILL) and reaps every process still there: the last step of
 * th_supervisor_free. */
void th__sv_kill_all(th_supervisor *sv);

/* Loop-side implementations of the public calls. */
int th__sv_do_add(th_supervisor *sv, sv_service *s, th_error *err);
int th__sv_do_group(th_supervisor *sv, const char *name, th_group_strategy st, th_error *err);
int th__sv_do_start_all(th_supervisor *sv, th_error *err);
int th__sv_do_start(th_supervisor *sv, const char *name, th_error *err);
int th__sv_do_stop(th_supervisor *sv, const char *name, uint64_t *id, th_error *err);
int th__sv_do_stop_all(th_supervisor *sv, th_error *err);
int th__sv_do_restart(th_supervisor *sv, const char *name, th_error *err);
int th__sv_do_remove(th_supervisor *sv, const char *name, uint64_t *id, th_error *err);
int th__sv_do_trigger(th_supervisor *sv, const char *name, th_error *err);
int th__sv_do_list(th_supervisor *sv, const char *name, th_service_info **out, size_t *n,
                   th_error *err);
void th__sv_do_health(th_supervisor *sv, th_supervisor_health_info *out);
/* 1 when service `id` has no process left (or is gone). */
int th__sv_stopped(th_supervisor *sv, uint64_t id);
/* 1 when no service has a process or a pending ordered stop. */
int th__sv_all_stopped(th_supervisor *sv);

#endif
