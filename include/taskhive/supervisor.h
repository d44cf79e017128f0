/*
 * The supervisor: keeps long-running services, periodic jobs, one-shot tasks
 * and event-triggered programs alive as child processes, in the manner of
 * PM2, systemd units and Erlang supervisors.
 *
 * A supervisor owns one thread running an event loop. Child exits are seen
 * through one pidfd per child (Linux >= 5.3), never through SIGCHLD or
 * waitpid(-1), so the embedding program may reap its own children. Timers
 * drive backoff, schedules, health checks and stop timeouts.
 *
 * Each service is a spec (th_service_spec) added with th_supervisor_add and
 * started with th_supervisor_start_all (dependency order) or
 * th_supervisor_start. Its stdout and stderr lines go, time-stamped, to
 * <log_dir>/<name>.log, rotated by size. Services may join a group
 * (th_supervisor_group) whose strategy says which siblings restart with a
 * failed child: one-for-one, one-for-all or rest-for-one.
 *
 * Every child runs in its own process group, with PR_SET_PDEATHSIG(SIGTERM),
 * so neither it nor its own children outlive the supervisor's process.
 *
 * Thread safety: every function may be called from any thread. Calls are run
 * by the supervisor's thread, in order, and return after the events they
 * caused were delivered. Event callbacks run on that thread; from a callback
 * the functions that normally wait for processes to stop (stop, stop_all,
 * remove) only ask and return. th_supervisor_free must not be called from a
 * callback. Children inherit the environment as it is when they start:
 * don't change it (setenv) while a supervisor runs.
 */
#ifndef TASKHIVE_SUPERVISOR_H
#define TASKHIVE_SUPERVISOR_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "error.h"

typedef struct th_supervisor th_supervisor;

/* A service name: 1-64 characters of [A-Za-z0-9_.:-]; "all" is reserved. */
#define TH_SERVICE_NAME_MAX 64
#define TH_SERVICE_INSTANCES_MAX 64
#define TH_SERVICE_STATUS_MAX 128

/* ---- the supervisor ---------------------------------------------------- */

typedef struct th_supervisor_options {
    const char *log_dir;        /* required; created (with parents) if missing */
    int64_t sample_interval_ms; /* 1000: how often RSS and CPU are read (and the
                                   memory limits checked); 10 ms - 1 hour */
    int64_t health_window_ms;   /* 60000: the window of the error-rate alert */
} th_supervisor_options;

/* Zeroes `o` and sets the defaults above (log_dir stays NULL). */
TH_EXPORT void th_supervisor_options_init(th_supervisor_options *o);

/*
 * Creates a supervisor and starts its thread. Bad options are refused with
 * TH_EINVAL and err->field naming the option ("log_dir"...); a log_dir that
 * cannot be created gives TH_EIO. Returns NULL on failure. `o` is copied.
 * Free with th_supervisor_free.
 */
TH_EXPORT th_supervisor *th_supervisor_new(const th_supervisor_options *o, th_error *err);

/*
 * Stops every service (th_supervisor_stop_all: reverse dependency order, each
 * with its stop timeout), waits for every child to be gone, stops the thread
 * and frees everything. Accepts NULL. Not from an event callback.
 */
TH_EXPORT void th_supervisor_free(th_supervisor *sv);

/* ---- service specs ----------------------------------------------------- */

typedef enum th_service_type {
    TH_SERVICE_ALWAYS = 0, /* keep it running */
    TH_SERVICE_PERIODIC,   /* run every interval_ms, or on a cron schedule */
    TH_SERVICE_ONESHOT,    /* run once when started */
    TH_SERVICE_EVENT,      /* run on th_supervisor_trigger */
} th_service_type;

typedef enum th_restart_policy {
    TH_RESTART_DEFAULT = 0, /* always for TH_SERVICE_ALWAYS, never for the others */
    TH_RESTART_ALWAYS,      /* after any exit (TH_SERVICE_ALWAYS only) */
    TH_RESTART_ON_FAILURE,  /* after a non-zero exit, a signal, a failed health
                               check, a memory-limit kill or a start timeout */
    TH_RESTART_NEVER,
} th_restart_policy;

typedef enum th_health_kind {
    TH_HEALTH_NONE = 0,
    TH_HEALTH_COMMAND, /* command run by /bin/sh -c; exit status 0 = healthy */
    TH_HEALTH_HTTP,    /* GET url; a 2xx answer = healthy */
    TH_HEALTH_TCP,     /* a TCP connection to host:port = healthy */
} th_health_kind;

typedef struct th_health_check {
    th_health_kind kind;
    const char *command;         /* TH_HEALTH_COMMAND */
    const char *url;             /* TH_HEALTH_HTTP: http:// or https:// */
    const char *host;            /* TH_HEALTH_TCP */
    int port;                    /* TH_HEALTH_TCP: 1-65535 */
    int64_t interval_ms;         /* 30000 */
    int64_t timeout_ms;          /* 5000 */
    int failures_before_restart; /* 3 consecutive failures */
} th_health_check;

/*
 * What to run and how. Strings and arrays are borrowed for the call only:
 * th_supervisor_add copies everything. Initialise with th_service_spec_init,
 * then set what differs. Fields are named in errors as written here
 * ("argv[0]", "env[2]", "deps[1]", "health.url", "cron.hour").
 */
typedef struct th_service_spec {
    const char *name; /* [A-Za-z0-9_.:-]{1,64}, not "all" */

    /* The program: argv[0] is looked up in PATH when it has no '/'. Or, with
     * use_shell = 1, `command` run by /bin/sh -c (argv must be empty). */
    const char *const *argv;
    size_t argc;
    int use_shell;
    const char *command;

    const char *cwd;        /* NULL: the supervisor's working directory */
    const char *const *env; /* KEY=VALUE, added to (or replacing entries of) the
                               inherited environment */
    size_t nenv;
    const char *user;        /* run as this user (setgid, initgroups, setuid);
                                needs root; NULL: as the supervisor */
    int instances;           /* 1; 1-64 processes, each with TH_INSTANCE=i (0-based) */
    th_service_type type;    /* always */
    int64_t interval_ms;     /* periodic: every interval (first run at start) ... */
    const char *cron;        /* ... or a "m h dom mon dow" schedule in local time */
    const char *const *deps; /* services that must be running (oneshot: have
                                exited 0) before this one starts */
    size_t ndeps;
    const char *group;          /* a group made by th_supervisor_group, or NULL */
    th_restart_policy restart;  /* default: see th_restart_policy */
    int64_t backoff_initial_ms; /* 1000: first restart delay; doubles each time */
    int64_t backoff_max_ms;     /* 60000: the cap of the delay */
    int max_restarts;           /* 3 within restart_window_ms, then the service
                                   is disabled (an alert fires); -1 = no limit */
    int64_t restart_window_ms;  /* 60000 */
    int stop_signal;            /* SIGTERM; sent to the process group */
    int64_t stop_timeout_ms;    /* 10000: then SIGKILL */
    int64_t start_timeout_ms;   /* 90000: longest "starting" (notify or health check
                                   not yet passed) before it counts as failed */
    th_health_check health;     /* kind none */
    int notify;                 /* 1: NOTIFY_SOCKET is set; "starting" until READY=1 */
    size_t memory_limit;        /* bytes of RSS; 0 = none; over it: restart */
    size_t log_max_bytes;       /* 10 MiB: then <name>.log becomes <name>.log.1 */
    int log_keep;               /* 5: rotated files kept (<name>.log.1 .. .5); 0-100 */
} th_service_spec;

/* Zeroes `spec`, sets `name` and the defaults above. */
TH_EXPORT void th_service_spec_init(th_service_spec *spec, const char *name);

/*
 * Checks a spec on its own (names, ranges, the program, cron syntax, the
 * user), as th_supervisor_add would; TH_EINVAL with err->field naming the
 * field. Dependencies and the group are checked by the supervisor.
 */
TH_EXPORT int th_service_spec_check(const th_service_spec *spec, th_error *err);

/* ---- groups ------------------------------------------------------------ */

typedef enum th_group_strategy {
    TH_GROUP_ONE_FOR_ONE = 0, /* restart only the failed child */
    TH_GROUP_ONE_FOR_ALL,     /* restart every child of the group */
    TH_GROUP_REST_FOR_ONE,    /* restart the failed child and those added after it */
} th_group_strategy;

/*
 * Creates group `name` (same rules as service names). Services join it
 * through spec.group; the order in which they (and their instances) join is
 * the order rest-for-one uses. Creating an existing group again with the
 * same strategy is a no-op; with another, TH_ECONFLICT.
 */
TH_EXPORT int th_supervisor_group(th_supervisor *sv, const char *name, th_group_strategy strategy,
                                  th_error *err);

/* ---- managing services ------------------------------------------------- */

/*
 * Validates and adds a service (copied); it does not start it. TH_EINVAL
 * with err->field naming the bad spec field; TH_ECONFLICT when the name is
 * taken; TH_ENOTFOUND (field "group") for an unknown group.
 */
TH_EXPORT int th_supervisor_add(th_supervisor *sv, const th_service_spec *spec, th_error *err);

/*
 * Stops service `name` (waiting, as th_supervisor_stop) and removes it.
 * TH_EBUSY when another service depends on it; TH_ENOTFOUND.
 */
TH_EXPORT int th_supervisor_remove(th_supervisor *sv, const char *name, th_error *err);

/*
 * Starts every service in dependency order: a service starts once its
 * dependencies run (oneshot ones: have exited 0). Periodic services arm
 * their schedule, event services wait for triggers. Refused, with nothing
 * started, when a dependency is unknown (err->field "deps[i]", the message
 * names the service and the dependency) or when dependencies form a cycle
 * (the message names it: "a -> b -> c -> a"). Returns without waiting.
 */
TH_EXPORT int th_supervisor_start_all(th_supervisor *sv, th_error *err);

/*
 * Starts service `name` ("all": th_supervisor_start_all), and the services
 * it depends on. Clears "disabled". A running service is left as it is.
 */
TH_EXPORT int th_supervisor_start(th_supervisor *sv, const char *name, th_error *err);

/*
 * Stops service `name` ("all": th_supervisor_stop_all): its stop_signal to
 * each instance's process group, SIGKILL after stop_timeout_ms. Returns when
 * its processes are gone. Services depending on it are not stopped.
 */
TH_EXPORT int th_supervisor_stop(th_supervisor *sv, const char *name, th_error *err);

/*
 * Restarts service `name` ("all": stop_all, then start_all): running
 * instances are stopped and started again at once (no backoff). Clears
 * "disabled". Returns without waiting.
 */
TH_EXPORT int th_supervisor_restart(th_supervisor *sv, const char *name, th_error *err);

/* Stops every service, dependents before their dependencies; returns when
 * every child is gone. */
TH_EXPORT int th_supervisor_stop_all(th_supervisor *sv, th_error *err);

/*
 * Runs event (or periodic) service `name` now. A trigger that arrives while
 * the service runs (or waits for its dependencies) makes it run once when
 * that is over; triggers meanwhile coalesce into that one run.
 * TH_ENOTFOUND; TH_EINVAL (field "type") for always/oneshot services;
 * TH_ESTATE when the service is not started or is disabled.
 */
TH_EXPORT int th_supervisor_trigger(th_supervisor *sv, const char *name, th_error *err);

/* ---- observing ---------------------------------------------------------- */

typedef enum th_service_state {
    TH_SVC_INITIALIZED = 0, /* added, never started (or waiting for dependencies) */
    TH_SVC_STARTING,        /* spawned; waiting for READY=1 or a healthy check */
    TH_SVC_RUNNING,
    TH_SVC_STOPPING,   /* stop signal sent */
    TH_SVC_STOPPED,    /* stopped, exited 0, or waiting for its next run / trigger */
    TH_SVC_FAILED,     /* exited non-zero or killed, and not restarted */
    TH_SVC_RESTARTING, /* waiting for its backoff delay, or for siblings to stop */
    TH_SVC_DISABLED,   /* too many restarts within the window; start clears it */
} th_service_state;
#define TH_SVC_NSTATES 8

/* "initialized", "starting", ...; static, never NULL. */
TH_EXPORT const char *th_service_state_name(th_service_state s);
/* "always", "periodic", "oneshot", "event"; static, never NULL. */
TH_EXPORT const char *th_service_type_name(th_service_type t);

/* One instance of one service. */
typedef struct th_service_info {
    char name[TH_SERVICE_NAME_MAX + 1];
    int instance; /* 0-based */
    th_service_type type;
    th_service_state state;
    int pid;              /* 0 when no process */
    int64_t started_at;   /* wall-clock ms of the last spawn; 0 = never */
    int64_t uptime_ms;    /* of the current process; 0 when none */
    int restarts;         /* restarts since added */
    int last_exit_code;   /* of the last exit: the code, or -1 (none, or a signal) */
    int last_exit_signal; /* the signal that ended the last process, or 0 */
    double cpu_percent;   /* over the last sample interval; 100 = one core */
    size_t rss_bytes;
    int healthy;                        /* running and, with a health check, passing it */
    int64_t next_run_at;                /* periodic: wall-clock ms of the next run; else 0 */
    char status[TH_SERVICE_STATUS_MAX]; /* STATUS= from the service, or the
                                           supervisor's note ("waiting for a") */
} th_service_info;

/*
 * Snapshots every instance of service `name` (NULL: of every service, in the
 * order they were added) into a new array *out of *n entries. The caller
 * frees it with th_service_info_free. TH_ENOTFOUND for an unknown name.
 */
TH_EXPORT int th_supervisor_list(th_supervisor *sv, const char *name, th_service_info **out,
                                 size_t *n, th_error *err);
/* Frees an array from th_supervisor_list; accepts NULL. */
TH_EXPORT void th_service_info_free(th_service_info *info);

typedef struct th_supervisor_health_info {
    double score;          /* healthy services / enabled services (1 when none) */
    int healthy;           /* score >= 0.8 */
    int services_enabled;  /* started and not stopped by a caller (disabled
                              ones count: they are meant to run) */
    int services_healthy;  /* every instance healthy (periodic, event: the
                              last run did not fail; oneshot: exited 0) */
    int services_failed;   /* failed or disabled */
    uint64_t exits;        /* exits within health_window_ms (stops excluded) */
    uint64_t failed_exits; /* of those, non-zero or by a signal */
    double error_rate;     /* failed_exits / exits; 0 when no exits */
    int alert_error_rate;  /* error_rate > 0.10 */
    int alert_failed;      /* more than 20 % of services failed or disabled */
    char message[256];     /* the alerts in words, or "" */
} th_supervisor_health_info;

/* Fills *out with the supervisor's health now. */
TH_EXPORT int th_supervisor_health(th_supervisor *sv, th_supervisor_health_info *out);

typedef enum th_supervisor_event_type {
    TH_SEV_STARTED = 0,   /* a process was spawned (pid) */
    TH_SEV_READY,         /* it reached "running" */
    TH_SEV_EXITED,        /* a process ended (exit_code or signal) */
    TH_SEV_RESTARTING,    /* a restart is scheduled after delay_ms */
    TH_SEV_DISABLED,      /* too many restarts: the service is disabled */
    TH_SEV_HEALTH_FAILED, /* a health check failed (value: consecutive failures) */
    TH_SEV_ALERT,         /* message says what; service NULL when supervisor-wide */
    TH_SEV_LOG_ROTATED,   /* the service's log was rotated */
    TH_SEV_STOPPED,       /* an instance reached "stopped" after a stop request */
} th_supervisor_event_type;
#define TH_SEV_NTYPES 9

/* "started", "ready", ...; static, never NULL. */
TH_EXPORT const char *th_supervisor_event_name(th_supervisor_event_type t);

/* An event; every pointer is valid during the callback only. */
typedef struct th_supervisor_event {
    th_supervisor_event_type type;
    int64_t time_ms;     /* wall clock */
    const char *service; /* NULL for supervisor-wide alerts */
    int instance;
    int pid;
    int exit_code;       /* exited: the code, or -1 when killed by a signal */
    int signal;          /* exited: the signal, or 0 */
    int64_t delay_ms;    /* restarting */
    int value;           /* health_failed: consecutive failures */
    const char *message; /* reason, in words; may be NULL */
} th_supervisor_event;

typedef void (*th_supervisor_event_fn)(const th_supervisor_event *ev, void *ud);

/*
 * Calls fn for every event, on the supervisor's thread, in the order they
 * happened. fn must not block for long; it may call th_supervisor_*
 * (except th_supervisor_free). Returns a subscription id >= 0, or TH_EBUSY
 * past 64 subscriptions.
 */
TH_EXPORT int th_supervisor_subscribe(th_supervisor *sv, th_supervisor_event_fn fn, void *ud);
/* Removes a subscription; when it returns, fn is not running and won't be
 * called again (unless called from fn itself). TH_ENOTFOUND. */
TH_EXPORT int th_supervisor_unsubscribe(th_supervisor *sv, int subscription);

#endif
