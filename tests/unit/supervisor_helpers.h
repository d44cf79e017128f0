/*
 * Helpers shared by the supervisor tests: a fixture with a supervisor whose
 * logs go to a fresh directory, a recorder of supervisor events with
 * bounded waits, shell scripts written to the test's temp dir, snapshots
 * of one instance, and the helper modes of the test binary itself (it is
 * re-executed as a child: "--notify-ready", "--hog", "--orphan-parent",
 * "--user-check-as-nobody").
 *
 * Tests never assert on speed: they wait for a condition and fail only
 * when it has not held after WAIT_LIMIT_MS. Everything is static so each
 * test binary uses what it needs.
 */
#ifndef SUPERVISOR_HELPERS_H
#define SUPERVISOR_HELPERS_H

#include "thtest.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <taskhive/supervisor.h>

#define WAIT_LIMIT_MS 20000

static inline int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* Polls `cond` every 5 ms; fails the test (naming it) after WAIT_LIMIT_MS. */
#define WAIT_FOR(cond)                                                                             \
    do {                                                                                           \
        int64_t wait_until_ = mono_ms() + WAIT_LIMIT_MS;                                           \
        while (!(cond)) {                                                                          \
            if (mono_ms() > wait_until_)                                                           \
                fail_msg("condition not met after %d ms: %s", WAIT_LIMIT_MS, #cond);               \
            sleep_ms(5);                                                                           \
        }                                                                                          \
    } while (0)

/* ---- recording events ------------------------------------------------------------- */

typedef struct rec_ev {
    th_supervisor_event_type type;
    char service[TH_SERVICE_NAME_MAX + 1];
    int instance, pid, exit_code, signal, value;
    int64_t delay_ms, time_ms;
    char message[400];
} rec_ev;

typedef struct recorder {
    pthread_mutex_t mu;
    rec_ev *ev;
    size_t n, cap;
} recorder;

static inline void rec_cb(const th_supervisor_event *e, void *ud)
{
    recorder *r = ud;
    pthread_mutex_lock(&r->mu);
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        rec_ev *p = realloc(r->ev, cap * sizeof *p);
        if (!p) {
            pthread_mutex_unlock(&r->mu);
            return;
        }
        r->ev = p;
        r->cap = cap;
    }
    rec_ev *o = &r->ev[r->n++];
    memset(o, 0, sizeof *o);
    o->type = e->type;
    snprintf(o->service, sizeof o->service, "%s", e->service ? e->service : "");
    o->instance = e->instance;
    o->pid = e->pid;
    o->exit_code = e->exit_code;
    o->signal = e->signal;
    o->value = e->value;
    o->delay_ms = e->delay_ms;
    o->time_ms = e->time_ms;
    snprintf(o->message, sizeof o->message, "%s", e->message ? e->message : "");
    pthread_mutex_unlock(&r->mu);
}

/* Events of `type` about `service` ("" = supervisor-wide, NULL = any). */
static inline size_t rec_count(recorder *r, th_supervisor_event_type type, const char *service)
{
    size_t c = 0;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n; i++)
        if (r->ev[i].type == type && (!service || strcmp(r->ev[i].service, service) == 0))
            c++;
    pthread_mutex_unlock(&r->mu);
    return c;
}

/* The k-th (0-based) such event, copied; fails the test when there is none.
 * *index (may be NULL) receives its position among all events. */
static inline rec_ev rec_get(recorder *r, th_supervisor_event_type type, const char *service,
                             size_t k, size_t *index)
{
    rec_ev out;
    memset(&out, 0, sizeof out);
    int found = 0;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n && !found; i++)
        if (r->ev[i].type == type && (!service || strcmp(r->ev[i].service, service) == 0) &&
            k-- == 0) {
            out = r->ev[i];
            found = 1;
            if (index)
                *index = i;
        }
    pthread_mutex_unlock(&r->mu);
    if (!found)
        fail_msg("no %s event #%zu for %s", th_supervisor_event_name(type), k,
                 service ? service : "any");
    return out;
}

#define REC_WAIT(r, type, service, n) WAIT_FOR(rec_count((r), (type), (service)) >= (size_t)(n))

/* ---- the fixture -------------------------------------------------------------------- */

typedef struct svfx {
    th_supervisor *sv;
    recorder rec;
    char dir[1024];    /* this test's directory */
    char logdir[1100]; /* dir/logs */
} svfx;

static inline void mkdir_p(const char *path)
{
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        fail_msg("mkdir %s: %s", path, strerror(errno));
}

static inline th_supervisor *svfx_supervisor(svfx *fx)
{
    th_supervisor_options o;
    th_supervisor_options_init(&o);
    o.log_dir = fx->logdir;
    o.sample_interval_ms = 50;
    th_error err;
    th_supervisor *sv = th_supervisor_new(&o, &err);
    if (!sv)
        fail_msg("th_supervisor_new: %s (%s)", err.message, err.field);
    return sv;
}

static inline int svfx_setup(void **state)
{
    svfx *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    char *d = thtest_unique_path("sv", "");
    snprintf(fx->dir, sizeof fx->dir, "%s", d);
    free(d);
    mkdir_p(fx->dir);
    snprintf(fx->logdir, sizeof fx->logdir, "%s/logs", fx->dir);
    pthread_mutex_init(&fx->rec.mu, NULL);
    fx->sv = svfx_supervisor(fx);
    assert_true(th_supervisor_subscribe(fx->sv, rec_cb, &fx->rec) >= 0);
    *state = fx;
    return 0;
}

static inline int svfx_teardown(void **state)
{
    svfx *fx = *state;
    th_supervisor_free(fx->sv);
    pthread_mutex_destroy(&fx->rec.mu);
    free(fx->rec.ev);
    free(fx);
    *state = NULL;
    return 0;
}

#define FX ((svfx *)*state)
#define T(fn) cmocka_unit_test_setup_teardown(fn, svfx_setup, svfx_teardown)

/* "<dir>/<name>" into buf. */
static inline const char *fx_path(const svfx *fx, const char *name, char *buf, size_t n)
{
    snprintf(buf, n, "%s/%s", fx->dir, name);
    return buf;
}

/* Writes an executable /bin/sh script "<dir>/<name>" with `body`. */
static inline void write_script(const svfx *fx, const char *name, const char *body, char *path,
                                size_t n)
{
    fx_path(fx, name, path, n);
    FILE *f = fopen(path, "w");
    if (!f)
        fail_msg("cannot write %s", path);
    fprintf(f, "#!/bin/sh\n%s\n", body);
    fclose(f);
    chmod(path, 0755);
}

/* A spec running `command` with /bin/sh -c; short backoff for tests. */
static inline th_service_spec shell_spec(const char *name, const char *command)
{
    th_service_spec s;
    th_service_spec_init(&s, name);
    s.use_shell = 1;
    s.command = command;
    s.backoff_initial_ms = 50;
    s.backoff_max_ms = 1000;
    s.stop_timeout_ms = 2000;
    return s;
}

static inline void add_ok_at(th_supervisor *sv, const th_service_spec *s, const char *file,
                             int line)
{
    th_error err;
    int rc = th_supervisor_add(sv, s, &err);
    if (rc != 0) {
        print_error("%s:%d: add %s: %s (field %s: %s)\n", file, line, s->name, th_errname(rc),
                    err.field, err.message);
        _fail(file, line);
    }
}
#define add_ok(sv, s) add_ok_at((sv), (s), __FILE__, __LINE__)

static inline void call_ok_at(int rc, const th_error *err, const char *what, const char *file,
                              int line)
{
    if (rc != 0) {
        print_error("%s:%d: %s: %s (field %s: %s)\n", file, line, what, th_errname(rc), err->field,
                    err->message);
        _fail(file, line);
    }
}
/* Calls fn(args..., &err) and fails the test unless it returns 0. */
#define CALL_OK(fn, ...)                                                                           \
    do {                                                                                           \
        th_error e_;                                                                               \
        memset(&e_, 0, sizeof e_);                                                                 \
        call_ok_at(fn(__VA_ARGS__, &e_), &e_, #fn, __FILE__, __LINE__);                            \
    } while (0)

/* A snapshot of one instance; fails the test when it is not there. */
static inline th_service_info info_of(th_supervisor *sv, const char *name, int instance)
{
    th_service_info *a = NULL, out;
    size_t n = 0;
    th_error err;
    int rc = th_supervisor_list(sv, name, &a, &n, &err);
    if (rc != 0 || (size_t)instance >= n)
        fail_msg("list %s: %s %s", name, th_errname(rc), err.message);
    out = a[instance];
    th_service_info_free(a);
    return out;
}

static inline int state_of(th_supervisor *sv, const char *name, int instance)
{
    return (int)info_of(sv, name, instance).state;
}

static inline int pid_of(th_supervisor *sv, const char *name, int instance)
{
    return info_of(sv, name, instance).pid;
}

/* Running with a pid other than `old` (0: any). */
static inline int running_new_pid(th_supervisor *sv, const char *name, int instance, int old)
{
    th_service_info i = info_of(sv, name, instance);
    return i.state == TH_SVC_RUNNING && i.pid > 0 && i.pid != old;
}

/* ---- files -------------------------------------------------------------------------- */

/* The whole file as a malloc'd string, or NULL. */
static inline char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (n + 1024 > cap)
            buf = realloc(buf, cap *= 2);
        size_t k = fread(buf + n, 1, cap - n - 1, f);
        if (k == 0)
            break;
        n += k;
    }
    fclose(f);
    buf[n] = '\0';
    return buf;
}

static inline int file_contains(const char *path, const char *needle)
{
    char *s = slurp(path);
    int found = s && strstr(s, needle) != NULL;
    free(s);
    return found;
}

static inline int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static inline long read_pid_file(const char *path)
{
    char *s = slurp(path);
    long v = s ? strtol(s, NULL, 10) : 0;
    free(s);
    return v;
}

/* 1 when `pid` is gone or a zombie. */
static inline int process_gone(int pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    return p && (p[2] == 'Z' || p[2] == 'X');
}

/* ---- this binary as a helper child ---------------------------------------------------- */

static inline const char *self_exe(void)
{
    static char path[4096];
    if (!path[0]) {
        ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
        if (n <= 0)
            fail_msg("readlink /proc/self/exe");
        path[n] = '\0';
    }
    return path;
}

/* Sends `msg` to $NOTIFY_SOCKET as sd_notify does. */
static inline int helper_notify(const char *msg)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t n = path ? strlen(path) : 0;
    if (n == 0 || n >= sizeof sa.sun_path)
        return -1;
    memcpy(sa.sun_path, path, n);
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = '\0';
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    ssize_t k = sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa,
                       (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n));
    close(fd);
    return k < 0 ? -1 : 0;
}

/* --notify-ready FILE STATUS: waits for FILE, then READY=1 and STATUS. */
static inline int helper_notify_ready(const char *file, const char *status)
{
    for (int i = 0; i < 6000 && !file_exists(file); i++)
        sleep_ms(5);
    char msg[256];
    snprintf(msg, sizeof msg, "READY=1\nSTATUS=%s", status);
    if (helper_notify(msg) != 0)
        return 3;
    printf("notified\n");
    fflush(stdout);
    for (int i = 0; i < 600; i++)
        sleep_ms(100);
    return 0;
}

/* --hog MB: allocates and touches MB MiB, then idles. */
static inline int helper_hog(const char *mb)
{
    size_t n = (size_t)strtol(mb, NULL, 10) << 20;
    if (n) {
        char *p = malloc(n);
        if (!p)
            return 3;
        memset(p, 1, n);
        printf("allocated %s MiB at %p\n", mb, (void *)p);
    } else {
        printf("idle\n");
    }
    fflush(stdout);
    for (int i = 0; i < 600; i++)
        sleep_ms(100);
    return 0;
}

/* --orphan-parent DIR: a supervisor runs "victim" (exec sleep), writes
 * DIR/ready with the victim's pid, then idles until killed. */
static inline int helper_orphan_parent(const char *dir)
{
    char logs[1100], ready[1100], tmp[1200];
    snprintf(logs, sizeof logs, "%s/logs", dir);
    snprintf(ready, sizeof ready, "%s/ready", dir);
    th_supervisor_options o;
    th_supervisor_options_init(&o);
    o.log_dir = logs;
    th_supervisor *sv = th_supervisor_new(&o, NULL);
    if (!sv)
        return 3;
    th_service_spec s;
    th_service_spec_init(&s, "victim");
    s.use_shell = 1;
    s.command = "exec sleep 60";
    if (th_supervisor_add(sv, &s, NULL) || th_supervisor_start_all(sv, NULL))
        return 4;
    int pid = 0;
    for (int i = 0; i < 4000 && pid <= 0; i++) {
        th_service_info *a = NULL;
        size_t n = 0;
        if (th_supervisor_list(sv, "victim", &a, &n, NULL) == 0 && n == 1 &&
            a[0].state == TH_SVC_RUNNING)
            pid = a[0].pid;
        th_service_info_free(a);
        sleep_ms(5);
    }
    snprintf(tmp, sizeof tmp, "%s.tmp", ready);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return 5;
    fprintf(f, "%d\n", pid);
    fclose(f);
    rename(tmp, ready);
    for (int i = 0; i < 600; i++)
        sleep_ms(100);
    return 0;
}

/* --user-check-as-nobody: drops root, then asks for a service as root. */
static inline int helper_user_check(void)
{
    if (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0)
        return 3;
    th_service_spec s;
    th_service_spec_init(&s, "as-root");
    s.use_shell = 1;
    s.command = "true";
    s.user = "root";
    th_error err;
    int rc = th_service_spec_check(&s, &err);
    printf("rc=%d field=%s message=%s\n", rc, err.field, err.message);
    return rc == TH_EINVAL && strcmp(err.field, "user") == 0 && strstr(err.message, "root") ? 0 : 1;
}

/* Call first in main(): runs a helper mode and exits, or returns. */
static inline void helper_dispatch(int argc, char **argv)
{
    if (argc >= 4 && strcmp(argv[1], "--notify-ready") == 0)
        exit(helper_notify_ready(argv[2], argv[3]));
    if (argc >= 3 && strcmp(argv[1], "--hog") == 0)
        exit(helper_hog(argv[2]));
    if (argc >= 3 && strcmp(argv[1], "--orphan-parent") == 0)
        exit(helper_orphan_parent(argv[2]));
    if (argc >= 2 && strcmp(argv[1], "--user-check-as-nobody") == 0)
        exit(helper_user_check());
}

/* Runs this binary with `args` (NULL-ended, after argv[0]); returns its pid. */
static inline pid_t spawn_self(const char *const *args)
{
    const char *argv[8] = {self_exe()};
    for (int i = 0; args[i] && i < 6; i++)
        argv[i + 1] = args[i];
    pid_t pid = fork();
    if (pid == 0) {
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    assert_true(pid > 0);
    return pid;
}

#endif
