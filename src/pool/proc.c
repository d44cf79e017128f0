/*
 * Process workers: each worker thread of a TH_POOL_PROCESSES pool owns one
 * child process, forked from the pool, that runs handlers. The two talk over
 * a socketpair in frames (a 4-byte length, a type byte, a JSON body):
 *
 *   parent -> child   'T' a task: {"id","queue","payload","metadata","attempt",
 *                                  "timeout_ms","created_at","run_at","started_at"}
 *   child -> parent   'P' progress {"percent","step","total","message"}
 *                     'L' log      {"level","message","data"}
 *                     'R' result   {"rc","result","error"}
 *
 * The parent side enforces what a thread cannot: past the timeout it sends
 * SIGTERM, then SIGKILL after the grace period; a cancel request or pool
 * stop does the same; a child whose RSS passes the memory limit is killed;
 * a child that dies (signal or exit) fails the attempt with the reason, and
 * a fresh child replaces it. Children are also replaced after recycle_after
 * tasks. The socketpair (not pipes) lets the parent write with MSG_NOSIGNAL,
 * so a dead child never raises SIGPIPE in the embedding program.
 */
#include "pool/pool_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"

#define FRAME_MAX (64u << 20)
#define WATCH_MS 50 /* how often a busy child's RSS and liveness are checked */

/* ---- frames -------------------------------------------------------------- */

static int write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static int read_all(int fd, void *buf, size_t n)
{
    char *p = buf;
    while (n) {
        ssize_t k = read(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static int send_frame(int fd, char type, json_t *body)
{
    char *text = json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text)
        return -1;
    size_t len = strlen(text);
    unsigned char hdr[5] = {(unsigned char)(len >> 24), (unsigned char)(len >> 16),
                            (unsigned char)(len >> 8), (unsigned char)len, (unsigned char)type};
    int rc = len > FRAME_MAX ? -1 : write_all(fd, hdr, sizeof hdr) || write_all(fd, text, len);
    free(text);
    return rc;
}

/* Reads one frame; *body is a new reference. Returns 0, or -1 at EOF/error. */
static int recv_frame(int fd, char *type, json_t **body)
{
    unsigned char hdr[5];
    if (read_all(fd, hdr, sizeof hdr))
        return -1;
    size_t len = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 | hdr[3];
    if (len > FRAME_MAX)
        return -1;
    char *text = malloc(len + 1);
    if (!text || read_all(fd, text, len)) {
        free(text);
        return -1;
    }
    text[len] = '\0';
    *type = (char)hdr[4];
    *body = json_loadb(text, len, JSON_DECODE_ANY, NULL);
    free(text);
    return *body ? 0 : -1;
}

/* ---- the child ------------------------------------------------------------ */

static int child_progress(void *ud, int percent, int step, int total, const char *message)
{
    json_t *b = json_pack("{s:i,s:i,s:i,s:s?}", "percent", percent, "step", step, "total", total,
                          "message", message);
    int rc = b ? send_frame(*(int *)ud, 'P', b) : -1;
    json_decref(b);
    return rc ? TH_EIO : 0;
}

static int child_log(void *ud, th_log_level level, const char *message, const char *data)
{
    json_t *b = json_pack("{s:i,s:s,s:s?}", "level", (int)level, "message", message, "data", data);
    int rc = b ? send_frame(*(int *)ud, 'L', b) : -1;
    json_decref(b);
    return rc ? TH_EIO : 0;
}

static const char *jstr(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static int64_t jint(json_t *o, const char *k)
{
    return (int64_t)json_integer_value(json_object_get(o, k));
}

/* The context of the task the child is running, for the SIGTERM handler:
 * the first SIGTERM is a request to stop (handlers see th_ctx_cancelled and
 * can clean up, e.g. exec kills its process group); SIGKILL follows after
 * the grace period if they don't. */
static th_ctx *volatile running_ctx;

static void on_sigterm(int sig)
{
    th_ctx *ctx = running_ctx;
    if (ctx)
        atomic_store(&ctx->stop, 1);
    else
        _exit(128 + sig);
}

/* The child's life: run tasks until the parent closes the channel. Never
 * returns; touches nothing of the engine's (its locks may be held by
 * threads that do not exist in this process). */
static void child_main(th_pool *p, int fd) __attribute__((noreturn));
static void child_main(th_pool *p, int fd)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigterm;
    sigaction(SIGTERM, &sa, NULL);
    /* The embedding program's handlers (a SIGSEGV handler, say) must not
     * run in the child: a crash here should be a crash. They are reset
     * before signals are unblocked, so a signal pending since the fork
     * never reaches a handler of the parent's (libevent's would write into
     * the parent's signal pipe). */
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGTERM && sig != SIGKILL && sig != SIGSTOP)
            signal(sig, SIG_DFL);
    sigset_t all;
    sigemptyset(&all);
    pthread_sigmask(SIG_SETMASK, &all, NULL);
    /* Keep stdio and our channel (moved to fd 3); drop every other
     * descriptor inherited from the pool's process (database files, other
     * workers' channels). */
    int keep = fcntl(fd, F_DUPFD, 64);
    if (keep < 0 || dup2(keep, 3) < 0)
        _exit(70);
    syscall(SYS_close_range, 4u, ~0u, 0u);
    fd = 3;
    for (;;) {
        char type;
        json_t *msg;
        if (recv_frame(fd, &type, &msg))
            _exit(0);
        if (type != 'T') {
            json_decref(msg);
            _exit(71);
        }
        th_task t;
        memset(&t, 0, sizeof t);
        snprintf(t.id, sizeof t.id, "%s", jstr(msg, "id") ? jstr(msg, "id") : "");
        t.queue = (char *)jstr(msg, "queue");
        t.payload = (char *)jstr(msg, "payload");
        t.metadata = (char *)jstr(msg, "metadata");
        t.attempt = (int)jint(msg, "attempt");
        t.timeout_ms = jint(msg, "timeout_ms");
        t.created_at = jint(msg, "created_at");
        t.run_at = jint(msg, "run_at");
        t.started_at = jint(msg, "started_at");
        t.state = TH_TASK_RUNNING;
        const th__handler *h = t.queue ? th__pool_handler(p, t.queue) : NULL;
        th__ctx_hooks hooks = {child_progress, child_log, &fd};
        th_ctx ctx;
        th__ctx_init(&ctx, &t, p->config, p->nconfig, &hooks, t.timeout_ms, 0);
        int rc = TH_HANDLER_PERMANENT;
        running_ctx = &ctx;
        if (h)
            rc = h->fn(&ctx, h->ud);
        else
            th_ctx_set_error(&ctx, "no handler for queue %s", t.queue ? t.queue : "?");
        running_ctx = NULL;
        json_t *r =
            json_pack("{s:i,s:s?,s:s?}", "rc", rc, "result", ctx.result, "error", ctx.error);
        if (!r || send_frame(fd, 'R', r))
            _exit(72);
        json_decref(r);
        th__ctx_reset(&ctx);
        json_decref(msg);
    }
}

/* ---- the parent side --------------------------------------------------------- */

/* The worker thread alone writes w->pid, under mu so the manager's health
 * check can read it; the thread's own unlocked reads are race-free. */
static void set_pid(th__worker *w, pid_t pid)
{
    pthread_mutex_lock(&w->pool->mu);
    w->pid = pid;
    if (!pid)
        w->rss = 0;
    pthread_mutex_unlock(&w->pool->mu);
}

static void close_child(th__worker *w, int sig)
{
    if (w->to_child >= 0)
        close(w->to_child);
    w->to_child = w->from_child = -1;
    if (w->pid > 0) {
        if (sig)
            kill(w->pid, sig);
        int st;
        while (waitpid(w->pid, &st, 0) < 0 && errno == EINTR)
            ;
    }
    set_pid(w, 0);
}

static int spawn_child(th__worker *w)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
        return -1;
    pid_t pid = fork();
    if (pid < 0) {
        close(sv[0]);
        close(sv[1]);
        return -1;
    }
    if (pid == 0) {
        close(sv[0]);
        child_main(w->pool, sv[1]);
    }
    close(sv[1]);
    set_pid(w, pid);
    w->to_child = w->from_child = sv[0];
    return 0;
}

static size_t rss_of(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/statm", (int)pid);
    FILE *f = fopen(path, "r");
    long size = 0, rss = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &size, &rss) != 2)
            rss = 0;
        fclose(f);
    }
    return (size_t)rss * (size_t)sysconf(_SC_PAGESIZE);
}

static void describe_exit(int status, char *buf, size_t n)
{
    if (WIFSIGNALED(status))
        snprintf(buf, n, "worker process crashed: killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else if (WIFEXITED(status))
        snprintf(buf, n, "worker process exited with status %d", WEXITSTATUS(status));
    else
        snprintf(buf, n, "worker process died");
}

enum { END_RESULT, END_CRASH, END_TIMEOUT, END_CANCEL, END_MEMORY };

/* Runs one task in the child and reports its outcome. Returns 1 when the
 * child is gone and must be replaced. */
static int run_in_child(th__worker *w, th_task *t)
{
    th_pool *p = w->pool;
    int64_t timeout = t->timeout_ms > 0 ? t->timeout_ms : p->o.task_timeout_ms;
    int64_t t0 = th__mono_ns();
    pthread_mutex_lock(&p->mu);
    w->state = TH_WORKER_BUSY;
    memcpy(w->current, t->id, TH_ID_SIZE);
    w->lease = t->lease;
    w->busy_since_ns = t0;
    w->deadline_ns = t0 + timeout * 1000000;

    w->last_heartbeat_at = th__wall_ms();
    atomic_store(&w->cancel, p->stopping && p->stop_deadline_ns ? 1 : 0);
    th__pool_nudge_locked(p, INT64_MAX);
    pthread_mutex_unlock(&p->mu);
    th__pool_emit(p, TH_PEV_TASK_ASSIGNED, w->id, t->id, NULL, t->attempt);

    json_t *msg =
        json_pack("{s:s,s:s,s:s,s:s?,s:i,s:I,s:I,s:I,s:I}", "id", t->id, "queue", t->queue,
                  "payload", t->payload, "metadata", t->metadata, "attempt", t->attempt,
                  "timeout_ms", (json_int_t)timeout, "created_at", (json_int_t)t->created_at,
                  "run_at", (json_int_t)t->run_at, "started_at", (json_int_t)t->started_at);
    int end = END_CRASH, rc = TH_HANDLER_RETRY, status = 0, have_status = 0;
    char *result = NULL, *error = NULL;
    char why[200] = "";
    if (msg && send_frame(w->to_child, 'T', msg) == 0) {
        int64_t kill_at = 0; /* when SIGTERM becomes SIGKILL */
        int64_t next_watch = t0 + WATCH_MS * 1000000;
        int killing = 0;
        for (;;) {
            int64_t now = th__mono_ns();
            int64_t wait_ms = WATCH_MS;
            if (!killing && w->deadline_ns - now < wait_ms * 1000000)
                wait_ms = (w->deadline_ns - now) / 1000000;
            if (wait_ms < 0)
                wait_ms = 0;
            struct pollfd pf[2] = {{w->from_child, POLLIN, 0}, {w->wake_fd, POLLIN, 0}};
            int n = poll(pf, 2, (int)wait_ms);
            if (n < 0 && errno != EINTR)
                break;
            if (n > 0 && (pf[0].revents & (POLLIN | POLLHUP | POLLERR))) {
                char type;
                json_t *b;
                if (recv_frame(w->from_child, &type, &b))
                    break; /* EOF: the child died */
                if (type == 'P' && !killing) {
                    const char *m = jstr(b, "message");
                    int pct = (int)jint(b, "percent");
                    if (th_engine_progress(p->e, t->id, t->lease, pct, (int)jint(b, "step"),
                                           (int)jint(b, "total"), m, NULL) == 0)
                        th__pool_emit(p, TH_PEV_TASK_PROGRESS, w->id, t->id, m, pct);
                } else if (type == 'L' && !killing) {
                    th_engine_log(p->e, t->id, t->lease, (th_log_level)jint(b, "level"),
                                  jstr(b, "message") ? jstr(b, "message") : "", jstr(b, "data"),
                                  NULL);
                } else if (type == 'R') {
                    rc = (int)jint(b, "rc");
                    result = th__strdup(jstr(b, "result"));
                    error = th__strdup(jstr(b, "error"));
                    if (!killing)
                        end = END_RESULT;
                    json_decref(b);
                    break;
                }
                json_decref(b);
            }
            if (n > 0 && (pf[1].revents & POLLIN)) {
                uint64_t v;
                ssize_t rd = read(w->wake_fd, &v, sizeof v);
                (void)rd;
            }
            now = th__mono_ns();
            int watch = now >= next_watch;
            if (watch)
                next_watch = now + WATCH_MS * 1000000;
            if (!killing) {
                size_t rss = 0;
                if (watch) {
                    rss = rss_of(w->pid);
                    pthread_mutex_lock(&p->mu);
                    w->rss = rss;
                    pthread_mutex_unlock(&p->mu);
                }
                if (atomic_load(&w->cancel)) {
                    end = END_CANCEL;
                    snprintf(why, sizeof why, "cancelled");
                } else if (rss > p->o.worker_memory_limit) {
                    end = END_MEMORY;
                    snprintf(why, sizeof why, "memory limit exceeded: RSS %zu MiB > limit %zu MiB",
                             rss >> 20, p->o.worker_memory_limit >> 20);
                } else if (now >= w->deadline_ns) {
                    end = END_TIMEOUT;
                    snprintf(why, sizeof why, "attempt %d timed out after %lld ms; worker killed",
                             t->attempt, (long long)timeout);
                }
                if (end != END_CRASH) {
                    kill(w->pid, SIGTERM);
                    killing = 1;
                    kill_at = now + p->o.timeout_grace_ms * 1000000;
                }
            } else if (now >= kill_at) {
                kill(w->pid, SIGKILL);
                kill_at = INT64_MAX;
            }
            if (watch && waitpid(w->pid, &status, WNOHANG) == w->pid) {
                have_status = 1;
                set_pid(w, 0);
                break;
            }
        }
    }
    json_decref(msg);
    int64_t run_ns = th__mono_ns() - t0;
    int gone = end != END_RESULT;
    if (gone) {
        if (w->pid > 0) {
            kill(w->pid, SIGKILL);
            while (waitpid(w->pid, &status, 0) < 0 && errno == EINTR)
                ;
            have_status = 1;
            set_pid(w, 0);
        }
        close_child(w, 0);
        if (end == END_CRASH) {
            if (have_status)
                describe_exit(status, why, sizeof why);
            else
                snprintf(why, sizeof why, "worker process stopped answering");
        }
        rc = end == END_MEMORY ? TH_HANDLER_RETRY : TH_HANDLER_RETRY;
        th__free(error);
        error = th__strdup(why);
        th__pool_emit(p, TH_PEV_WORKER_TERMINATED, w->id, t->id, why, 0);
    }
    pthread_mutex_lock(&p->mu);
    w->state = TH_WORKER_IDLE;
    w->deadline_ns = 0;
    w->ran++;
    w->last_heartbeat_at = th__wall_ms();
    pthread_mutex_unlock(&p->mu);
    /* A handler that stopped at its own deadline timed out too. */
    int timed_out = end == END_TIMEOUT || (rc != TH_HANDLER_OK && run_ns >= timeout * 1000000);
    th__pool_finish(w, t, rc, result, error, timed_out, run_ns);
    pthread_mutex_lock(&p->mu);
    memset(w->current, 0, sizeof w->current);
    w->lease = 0;
    th__pool_nudge_locked(p, INT64_MAX);
    pthread_mutex_unlock(&p->mu);
    th__free(result);
    th__free(error);
    return gone;
}

void *th__proc_worker_main(void *arg)
{
    th__worker *w = arg;
    th_pool *p = w->pool;
    char name[32];
    snprintf(name, sizeof name, "pool-process-%d", w->id);
    const char *why = "stopped";
    int wfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    pthread_mutex_lock(&p->mu); /* the manager and stop write to it under mu */
    w->wake_fd = wfd;
    pthread_mutex_unlock(&p->mu);
    if (wfd < 0 || spawn_child(w)) {
        th__pool_emit(p, TH_PEV_WORKER_ERROR, w->id, NULL, "cannot start a worker process", errno);
        why = "cannot start a worker process";
        goto out;
    }
    pthread_mutex_lock(&p->mu);
    int child = (int)w->pid;
    pthread_mutex_unlock(&p->mu);
    th__pool_emit(p, TH_PEV_WORKER_CREATED, w->id, NULL, "process", child);
    uint64_t since_spawn = 0;
    th_task *tasks[64];
    for (;;) {
        int n = th__pool_claim(w, name, tasks, &why);
        if (n == 0)
            break;
        th__held_set(w, tasks, n);
        for (int i = 0; i < n; i++) {
            th_task *t = tasks[i];
            if (th__worker_stopping(w)) {
                /* Stopping: what has not started goes back untouched. */
                th__pool_release(w, t, "pool stopping");
            } else if (th__held_cancelled(w, t->id)) {
                th__pool_finish(w, t, TH_HANDLER_RETRY, NULL, "cancelled", 0, 0);
            } else if (w->pid <= 0 && spawn_child(w) != 0) {
                /* No process to run it in: hand this and the rest back. */
                for (int k = i; k < n; k++) {
                    th__pool_release(w, tasks[k], "worker process lost");
                    th_task_free(tasks[k]);
                }
                th__pool_emit(p, TH_PEV_WORKER_ERROR, w->id, NULL,
                              "cannot restart the worker process", errno);
                why = "cannot restart the worker process";
                goto out;
            } else if (run_in_child(w, t)) {
                since_spawn = 0; /* the child died or was killed */
            } else {
                since_spawn++;
            }
            th_task_free(t);
        }
        /* Replace a child that died at once, so the next task (and the
         * health check) finds a live process. */
        if (w->pid <= 0 && !th__worker_stopping(w)) {
            if (spawn_child(w)) {
                th__pool_emit(p, TH_PEV_WORKER_ERROR, w->id, NULL,
                              "cannot restart the worker process", errno);
                why = "cannot restart the worker process";
                break;
            }
            since_spawn = 0;
            th__pool_emit(p, TH_PEV_WORKER_CREATED, w->id, NULL, "replacement process",
                          (int)w->pid);
        }
        if (p->o.recycle_after && since_spawn >= (uint64_t)p->o.recycle_after) {
            close_child(w, SIGTERM);
            th__pool_emit(p, TH_PEV_WORKER_TERMINATED, w->id, NULL, "recycled", 0);
            if (spawn_child(w)) {
                why = "cannot restart the worker process";
                break;
            }
            since_spawn = 0;
            th__pool_emit(p, TH_PEV_WORKER_CREATED, w->id, NULL, "recycled process", (int)w->pid);
        }
    }
out:
    close_child(w, SIGTERM);
    pthread_mutex_lock(&p->mu);
    if (w->wake_fd >= 0)
        close(w->wake_fd);
    w->wake_fd = -1;
    pthread_mutex_unlock(&p->mu);
    th__pool_worker_exit(w, why);
    return NULL;
}
