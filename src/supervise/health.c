/*
 * Health checks. Each live instance of a service with a check has a timer;
 * when it fires the check starts, and the result arms the next one (every
 * interval_ms; at least every SV_STARTING_CHECK_MS while the instance is
 * starting, so readiness by health check is seen soon).
 *
 *   command  a child (/bin/sh -c, the service's cwd, user and environment,
 *            plus TH_MAIN_PID), forked by the loop like the services and
 *            watched through its pidfd; SIGKILL to its group at the timeout
 *   http     GET with libcurl's easy interface, on a helper thread
 *   tcp      getaddrinfo + a non-blocking connect, on a helper thread
 *
 * Helper threads take jobs from `hjobs` and put results on `hdone` (both
 * under hmu, a leaf lock), then wake the loop through the eventfd; they
 * never touch loop state. A result carries the instance's health_gen from
 * when the check started, so one that arrives after the process changed
 * is dropped.
 *
 * While an instance is starting, failures do not count (start_timeout_ms
 * bounds that phase); once it runs, failures_before_restart consecutive
 * failures restart it (a failure for the restart policy).
 */
#include "supervise/sv_impl.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/alloc.h"

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_rc = CURLE_FAILED_INIT;

static void curl_init_once(void)
{
    curl_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void arm(th_supervisor *sv, sv_inst *in, int64_t delay_ms);

/* ---- results (loop) ------------------------------------------------------------ */

static void check_done(th_supervisor *sv, sv_inst *in, int ok, const char *msg)
{
    in->health_inflight = 0;
    if (in->pid <= 0 || (in->state != TH_SVC_STARTING && in->state != TH_SVC_RUNNING))
        return;
    const th_health_check *h = &in->svc->spec.health;
    if (ok) {
        in->health_fails = 0;
        in->healthy = 1;
        if (in->state == TH_SVC_STARTING && !in->svc->spec.notify)
            th__sv_set_running(sv, in);
    } else if (in->state == TH_SVC_RUNNING) {
        in->healthy = 0;
        in->health_fails++;
        th__sv_logf(in->svc, in, "health check failed (%d of %d): %s", in->health_fails,
                    h->failures_before_restart, msg);
        th_supervisor_event ev = {.type = TH_SEV_HEALTH_FAILED,
                                  .service = in->svc->spec.name,
                                  .instance = in->index,
                                  .pid = (int)in->pid,
                                  .exit_code = -1,
                                  .value = in->health_fails,
                                  .message = msg};
        th__sv_emit(sv, &ev);
        if (in->health_fails >= h->failures_before_restart) {
            char note[256];
            snprintf(note, sizeof note, "health check failed %d times: %s", in->health_fails, msg);
            th__sv_inst_stop(sv, in, SV_STOP_HEALTH, note);
            th__sv_reconcile(sv);
            return;
        }
    } else {
        snprintf(in->status, sizeof in->status, "starting; health check: %.100s", msg);
    }
    int64_t next = h->interval_ms;
    if (in->state == TH_SVC_STARTING && next > SV_STARTING_CHECK_MS)
        next = SV_STARTING_CHECK_MS;
    arm(sv, in, next);
    th__sv_reconcile(sv);
}

/* ---- command checks (loop) ------------------------------------------------------- */

static void hproc_clear(sv_hproc *hp)
{
    if (hp->exit_ev)
        event_free(hp->exit_ev);
    if (hp->kill_ev)
        event_free(hp->kill_ev);
    hp->exit_ev = hp->kill_ev = NULL;
    hp->pid = 0;
    hp->pidfd = -1;
}

static void on_hproc_exit(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sv_inst *in = arg;
    sv_hproc *hp = &in->hproc;
    int code, sig;
    pid_t pid = hp->pid;
    int pidfd = hp->pidfd;
    int timed_out = hp->timed_out;
    int64_t took = th__sv_mono_ms() - hp->started_mono_ms;
    uint64_t gen = hp->gen;
    hproc_clear(hp);     /* frees the events before the reap closes the fd */
    kill(-pid, SIGKILL); /* anything it left behind */
    th__sv_reap(pid, pidfd, &code, &sig);
    if (gen != in->health_gen)
        return;
    char msg[160];
    if (timed_out)
        snprintf(msg, sizeof msg, "command timed out after %lld ms", (long long)took);
    else if (sig)
        snprintf(msg, sizeof msg, "command killed by signal %d", sig);
    else
        snprintf(msg, sizeof msg, "command exited with status %d", code);
    check_done(in->svc->sv, in, !timed_out && !sig && code == 0, msg);
}

static void on_hproc_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sv_inst *in = arg;
    if (in->hproc.pid > 0) {
        in->hproc.timed_out = 1;
        kill(-in->hproc.pid, SIGKILL);
    }
}

static void start_command(th_supervisor *sv, sv_inst *in)
{
    const th_health_check *h = &in->svc->spec.health;
    const char *argv[] = {"/bin/sh", "-c", h->command, NULL};
    char mainpid[48];
    snprintf(mainpid, sizeof mainpid, "TH_MAIN_PID=%d", (int)in->pid);
    const char *extra[] = {mainpid, NULL};
    th__sv_exec x;
    char why[256];
    if (th__sv_exec_prepare(&x, in, argv, extra, why, sizeof why) != 0) {
        check_done(sv, in, 0, why);
        return;
    }
    sv_hproc *hp = &in->hproc;
    int pidfd = -1;
    pid_t pid = th__sv_spawn(&x, -1, -1, &pidfd, why, sizeof why);
    th__sv_exec_clear(&x);
    if (pid < 0) {
        check_done(sv, in, 0, why);
        return;
    }
    hp->pid = pid;
    hp->pidfd = pidfd;
    hp->gen = in->health_gen;
    hp->timed_out = 0;
    hp->started_mono_ms = th__sv_mono_ms();
    hp->exit_ev = event_new(sv->base, pidfd, EV_READ, on_hproc_exit, in);
    hp->kill_ev = evtimer_new(sv->base, on_hproc_timeout, in);
    struct timeval tv = {(time_t)(h->timeout_ms / 1000),
                         (suseconds_t)(h->timeout_ms % 1000) * 1000};
    if (!hp->exit_ev || !hp->kill_ev || event_add(hp->exit_ev, NULL) != 0 ||
        evtimer_add(hp->kill_ev, &tv) != 0) {
        /* Cannot watch it: end it now, synchronously. */
        int code, sig;
        hproc_clear(hp);
        kill(-pid, SIGKILL);
        th__sv_reap(pid, pidfd, &code, &sig);
        check_done(sv, in, 0, "out of memory");
    }
}

/* ---- http and tcp checks (helper threads) ----------------------------------------- */

static size_t discard(char *p, size_t size, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return size * n;
}

static void run_http(sv_hjob *j)
{
    pthread_once(&curl_once, curl_init_once);
    if (curl_rc != CURLE_OK) {
        snprintf(j->msg, sizeof j->msg, "curl_global_init: %s", curl_easy_strerror(curl_rc));
        return;
    }
    CURL *c = curl_easy_init();
    if (!c) {
        snprintf(j->msg, sizeof j->msg, "curl_easy_init failed");
        return;
    }
    curl_easy_setopt(c, CURLOPT_URL, j->url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)j->timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)j->timeout_ms);
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "taskhive-supervisor/" TH_VERSION_STRING);
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK) {
        long status = 0;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        j->ok = status >= 200 && status <= 299;
        snprintf(j->msg, sizeof j->msg, "GET %.100s: HTTP %ld", j->url, status);
    } else {
        snprintf(j->msg, sizeof j->msg, "GET %.100s: %s", j->url, curl_easy_strerror(rc));
    }
    curl_easy_cleanup(c);
}

static void run_tcp(sv_hjob *j)
{
    char port[16];
    snprintf(port, sizeof port, "%d", j->port);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(j->host, port, &hints, &res);
    if (rc != 0) {
        snprintf(j->msg, sizeof j->msg, "%.100s: %s", j->host, gai_strerror(rc));
        return;
    }
    int64_t deadline = th__sv_mono_ms() + j->timeout_ms;
    int err = ECONNREFUSED;
    for (struct addrinfo *a = res; a && !j->ok; a = a->ai_next) {
        int fd =
            socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
            j->ok = 1;
        } else if (errno == EINPROGRESS) {
            struct pollfd pf = {fd, POLLOUT, 0};
            int64_t left = deadline - th__sv_mono_ms();
            int n = left > 0 ? poll(&pf, 1, (int)left) : 0;
            if (n == 1) {
                int e = 0;
                socklen_t len = sizeof e;
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len);
                if (e == 0)
                    j->ok = 1;
                else
                    err = e;
            } else {
                err = ETIMEDOUT;
            }
        } else {
            err = errno;
        }
        close(fd);
    }
    freeaddrinfo(res);
    if (j->ok)
        snprintf(j->msg, sizeof j->msg, "connected to %.100s:%d", j->host, j->port);
    else
        snprintf(j->msg, sizeof j->msg, "connect to %.100s:%d: %s", j->host, j->port,
                 strerror(err));
}

static void *health_thread(void *arg)
{
    th_supervisor *sv = arg;
    pthread_mutex_lock(&sv->hmu);
    for (;;) {
        while (!sv->hstop && !sv->hjobs)
            pthread_cond_wait(&sv->hcv, &sv->hmu);
        if (sv->hstop)
            break;
        sv_hjob *j = sv->hjobs;
        sv->hjobs = j->next;
        if (!sv->hjobs)
            sv->hjobs_tail = NULL;
        pthread_mutex_unlock(&sv->hmu);
        j->ok = 0;
        if (j->kind == TH_HEALTH_HTTP)
            run_http(j);
        else
            run_tcp(j);
        pthread_mutex_lock(&sv->hmu);
        j->next = sv->hdone;
        sv->hdone = j;
        th__sv_wake(sv);
    }
    pthread_mutex_unlock(&sv->hmu);
    return NULL;
}

static void job_free(sv_hjob *j)
{
    if (!j)
        return;
    th__free(j->url);
    th__free(j->host);
    th__free(j);
}

int th__sv_health_start_threads(th_supervisor *sv)
{
    for (int i = 0; i < SV_HEALTH_THREADS; i++) {
        if (pthread_create(&sv->hthreads[i], NULL, health_thread, sv) != 0)
            return -1;
        sv->nhthreads++;
    }
    return 0;
}

void th__sv_health_stop_threads(th_supervisor *sv)
{
    pthread_mutex_lock(&sv->hmu);
    sv->hstop = 1;
    pthread_cond_broadcast(&sv->hcv);
    pthread_mutex_unlock(&sv->hmu);
    for (int i = 0; i < sv->nhthreads; i++)
        pthread_join(sv->hthreads[i], NULL);
    sv->nhthreads = 0;
    for (sv_hjob *j = sv->hjobs, *next; j; j = next) {
        next = j->next;
        job_free(j);
    }
    for (sv_hjob *j = sv->hdone, *next; j; j = next) {
        next = j->next;
        job_free(j);
    }
    sv->hjobs = sv->hjobs_tail = sv->hdone = NULL;
}

static void start_job(th_supervisor *sv, sv_inst *in)
{
    const th_health_check *h = &in->svc->spec.health;
    sv_hjob *j = th__calloc(1, sizeof *j);
    if (j) {
        j->svc_id = in->svc->id;
        j->index = in->index;
        j->gen = in->health_gen;
        j->kind = h->kind;
        j->port = h->port;
        j->timeout_ms = h->timeout_ms;
        j->url = th__strdup(h->url);
        j->host = th__strdup(h->host);
    }
    if (!j || (h->url && !j->url) || (h->host && !j->host)) {
        job_free(j);
        check_done(sv, in, 0, "out of memory");
        return;
    }
    pthread_mutex_lock(&sv->hmu);
    if (sv->hjobs_tail)
        sv->hjobs_tail->next = j;
    else
        sv->hjobs = j;
    sv->hjobs_tail = j;
    pthread_cond_signal(&sv->hcv);
    pthread_mutex_unlock(&sv->hmu);
}

void th__sv_health_collect(th_supervisor *sv)
{
    pthread_mutex_lock(&sv->hmu);
    sv_hjob *done = sv->hdone;
    sv->hdone = NULL;
    pthread_mutex_unlock(&sv->hmu);
    for (sv_hjob *j = done, *next; j; j = next) {
        next = j->next;
        sv_service *s = th__sv_find_id(sv, j->svc_id);
        if (s && j->index < s->ninst && s->inst[j->index].health_gen == j->gen)
            check_done(sv, &s->inst[j->index], j->ok, j->msg);
        job_free(j);
    }
}

/* ---- timers ---------------------------------------------------------------------- */

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sv_inst *in = arg;
    th_supervisor *sv = in->svc->sv;
    if (in->pid <= 0 || (in->state != TH_SVC_STARTING && in->state != TH_SVC_RUNNING))
        return;
    if (in->health_inflight || in->hproc.pid > 0) {
        arm(sv, in, 100); /* the last check (or a cancelled one) is still running */
        return;
    }
    in->health_inflight = 1;
    if (in->svc->spec.health.kind == TH_HEALTH_COMMAND)
        start_command(sv, in);
    else
        start_job(sv, in);
}

static void arm(th_supervisor *sv, sv_inst *in, int64_t delay_ms)
{
    if (!in->health_ev && !(in->health_ev = evtimer_new(sv->base, on_timer, in)))
        return;
    struct timeval tv = {(time_t)(delay_ms / 1000), (suseconds_t)(delay_ms % 1000) * 1000};
    evtimer_add(in->health_ev, &tv);
}

void th__sv_health_arm(th_supervisor *sv, sv_inst *in, int64_t delay_ms)
{
    if (in->svc->spec.health.kind == TH_HEALTH_NONE)
        return;
    in->health_fails = 0;
    in->health_inflight = 0;
    arm(sv, in, delay_ms);
}

void th__sv_health_cancel(th_supervisor *sv, sv_inst *in)
{
    (void)sv;
    if (in->health_ev)
        evtimer_del(in->health_ev);
    in->health_gen++;
    in->health_inflight = 0;
    if (in->hproc.pid > 0)
        kill(-in->hproc.pid, SIGKILL); /* reaped by its exit event; the result is dropped */
}

void th__sv_health_release(sv_inst *in)
{
    pid_t pid = in->hproc.pid;
    int pidfd = in->hproc.pidfd;
    hproc_clear(&in->hproc);
    if (pid > 0) {
        int code, sig;
        kill(-pid, SIGKILL);
        th__sv_reap(pid, pidfd, &code, &sig);
    }
    if (in->health_ev)
        event_free(in->health_ev);
    in->health_ev = NULL;
}
