/*
 * `taskhive serve`: the daemon's lifecycle. Loads the configuration, opens
 * the store, starts the engine and a pool with the built-in handlers, then
 * serves HTTP on one libevent loop. SIGTERM / SIGINT drain: readiness goes
 * to 503, waiting long-polls get empty answers and event streams end, the
 * pool finishes (or hands back) running tasks within drain_grace, and the
 * store is flushed. SIGHUP re-reads the file's tokens and log level (the
 * rest needs a restart, which the log says). Under systemd it reports
 * READY=1 / STOPPING=1 and feeds the watchdog.
 */
#include "server/server.h"

#include <errno.h>
#include <event2/thread.h>
#include <signal.h>
#include <sodium.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "server/agents.h"
#include "server/exec.h"
#include "server/http.h"
#include "server/llm.h"
#include "server/log.h"
#include "server/services.h"

/* Sends one sd_notify message when systemd asked for them (NOTIFY_SOCKET). */
static void sd_notify(const char *msg)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = path ? strlen(path) : 0;
    if (n == 0 || n >= sizeof sa.sun_path)
        return;
    memcpy(sa.sun_path, path, n);
    if (sa.sun_path[0] == '@') /* abstract namespace */
        sa.sun_path[0] = '\0';
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa,
               (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n)) < 0)
        th__log(TH_LOG_WARN, "systemd", NULL, "sd_notify failed: %s", strerror(errno));
    close(fd);
}

static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
    sd_notify("WATCHDOG=1");
}

/* Leaves the loop once every executor job has been answered (checked every
 * 10 ms while draining), so acknowledged requests get their replies. */
static void drain_check(evutil_socket_t fd, short what, void *arg)
{
    th__server *s = arg;
    if (th__exec_inflight(s) == 0) {
        event_base_loopexit(s->base, NULL);
        return;
    }
    struct timeval tv = {0, 10000};
    event_base_once(s->base, -1, EV_TIMEOUT, drain_check, s, &tv);
}

/* Stops the pool off the loop (it may take drain_grace), then hands back to
 * the loop, which kept answering meanwhile: /readyz says 503, workers'
 * completions still land. */
static void *drain_main(void *arg)
{
    th__server *s = arg;
    if (s->pool)
        th_pool_stop(s->pool, s->cfg.drain_grace_ms);
    th__services_stop(s); /* reverse dependency order, each with its stop timeout */
    event_active(s->drained, EV_READ, 0);
    return NULL;
}

static void on_drained(evutil_socket_t fd, short what, void *arg)
{
    drain_check(fd, what, arg);
}

static void on_stop(evutil_socket_t sig, short what, void *arg)
{
    th__server *s = arg;
    if (s->draining)
        return;
    s->draining = 1;
    th__log(
        TH_LOG_INFO, "server",
        json_pack("{s:i,s:I}", "signal", (int)sig, "grace_ms", (json_int_t)s->cfg.drain_grace_ms),
        "draining");
    sd_notify("STOPPING=1");
    th__stream_close_all(s);
    if ((s->drained = event_new(s->base, -1, 0, on_drained, s)) &&
        pthread_create(&s->drainer, NULL, drain_main, s) == 0) {
        s->has_drainer = 1;
        return;
    }
    if (s->pool) /* could not start the thread: drain here */
        th_pool_stop(s->pool, s->cfg.drain_grace_ms);
    th__services_stop(s);
    drain_check(0, 0, s);
}

static void on_reload(evutil_socket_t sig, short what, void *arg)
{
    th__server *s = arg;
    if (!s->cfg.file) {
        th__log(TH_LOG_INFO, "server", NULL, "SIGHUP: no configuration file to reload");
        return;
    }
    th__config fresh;
    char err[512];
    char *args[] = {"serve", "--config", s->cfg.file, NULL};
    if (th__config_load(&fresh, 3, args, err, sizeof err) != 0) {
        th__log(TH_LOG_ERROR, "server", json_pack("{s:s}", "error", err),
                "SIGHUP: the configuration is invalid; keeping the running one");
        th__config_free(&fresh);
        return;
    }
    th__token *t = s->cfg.tokens;
    s->cfg.tokens = fresh.tokens;
    s->cfg.ntokens = fresh.ntokens;
    fresh.tokens = t;
    s->cfg.log_level = fresh.log_level;
    th__log_set_level(fresh.log_level);
    th__config_free(&fresh);
    th__log(TH_LOG_INFO, "server", json_pack("{s:i}", "tokens", (int)s->cfg.ntokens),
            "SIGHUP: reloaded tokens and log level; other settings need a restart");
}

static int write_port_file(const char *path, int port)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    fprintf(f, "%d\n", port);
    if (fclose(f) != 0)
        return -1;
    return rename(tmp, path);
}

static int bound_port(struct evhttp_bound_socket *h)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(evhttp_bound_socket_get_fd(h), (struct sockaddr *)&ss, &len) != 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

static th_pool *start_pool(th__server *s, char *err, size_t errlen)
{
    th_error e;
    th_pool *p = th_pool_new(s->engine, &s->cfg.pool, &e);
    if (!p || th_pool_register_builtins(p, &e))
        goto fail;
    if (th__agents_register(s, p, err, errlen) != 0) {
        th_pool_free(p);
        return NULL;
    }
    for (size_t i = 0; i < s->cfg.nhandlers; i++)
        if (th_pool_set_config(p, s->cfg.handlers[i].key, s->cfg.handlers[i].value, &e))
            goto fail;
    if (th_pool_start(p, &e))
        goto fail;
    return p;
fail:
    snprintf(err, errlen, "worker pool: %s", e.message);
    th_pool_free(p);
    return NULL;
}

int th__server_main(int argc, char **argv)
{
    static th__server srv; /* the process has one */
    th__server *s = &srv;
    char err[600];
    int rc = th__config_load(&s->cfg, argc, argv, err, sizeof err);
    if (rc == 1)
        return 0;
    if (rc < 0) {
        fprintf(stderr, "taskhive: %s\n", err);
        th__config_free(&s->cfg);
        return rc == -2 ? 2 : 1;
    }
    int status = 1;
    th__log_set_level(s->cfg.log_level);
    if (!th__config_loopback(&s->cfg) && s->cfg.ntokens == 0) {
        fprintf(stderr,
                "taskhive: refusing to listen on %s without tokens: add [auth] token.NAME = "
                "SHA256:scopes\n",
                s->cfg.host);
        goto out_cfg;
    }
    char uri[4200];
    if (s->cfg.store)
        snprintf(uri, sizeof uri, "%s", s->cfg.store);
    else
        snprintf(uri, sizeof uri, "sqlite:%s/taskhive.db", s->cfg.data_dir);
    if (s->cfg.check_only) {
        printf("configuration OK (listen %s:%d, store %s)\n", s->cfg.host, s->cfg.port, uri);
        status = 0;
        goto out_cfg;
    }
    if (sodium_init() < 0 || evthread_use_pthreads() != 0) {
        fprintf(stderr, "taskhive: cannot initialise libsodium or libevent threads\n");
        goto out_cfg;
    }
    signal(SIGPIPE, SIG_IGN);
    if (!s->cfg.store && mkdir(s->cfg.data_dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "taskhive: cannot create data directory %s: %s\n", s->cfg.data_dir,
                strerror(errno));
        goto out_cfg;
    }
    th_store_options so;
    th_store_options_init(&so);
    so.durability = s->cfg.durability;
    th_error e;
    th_store *store = th_store_open(uri, &so, &e);
    if (!store) {
        fprintf(stderr, "taskhive: store %s: %s\n", uri, e.message);
        goto out_cfg;
    }
    th_engine_options eo;
    th_engine_options_init(&eo);
    eo.max_queued = s->cfg.max_queued;
    if (!(s->engine = th_engine_new(store, &eo, &e))) {
        fprintf(stderr, "taskhive: engine: %s\n", e.message);
        goto out_cfg;
    }
    pthread_mutex_init(&s->ring_mu, NULL);
    s->ring_cap = s->cfg.event_buffer;
    if (!(s->ring = th__calloc(s->ring_cap, sizeof *s->ring)) || !(s->base = event_base_new()) ||
        !(s->http = evhttp_new(s->base)) ||
        !(s->wake = event_new(s->base, -1, 0, th__stream_wake, s))) {
        fprintf(stderr, "taskhive: out of memory\n");
        goto out;
    }
    int sub = th_engine_subscribe(s->engine, th__stream_on_event, s);
    if (sub < 0) {
        fprintf(stderr, "taskhive: cannot subscribe to engine events\n");
        goto out;
    }
    if (th__llm_start(s, err, sizeof err) != 0 || th__agents_start(s, err, sizeof err) != 0) {
        fprintf(stderr, "taskhive: %s\n", err);
        goto out;
    }
    if (s->cfg.pool_enabled && !(s->pool = start_pool(s, err, sizeof err))) {
        fprintf(stderr, "taskhive: %s\n", err);
        goto out;
    }
    if (th__services_start(s, err, sizeof err) != 0) {
        fprintf(stderr, "taskhive: %s\n", err);
        goto out;
    }
    if (th__exec_start(s, 8) != 0) {
        fprintf(stderr, "taskhive: cannot start executor threads\n");
        goto out;
    }
    evhttp_set_max_headers_size(s->http, 8192);
    evhttp_set_max_body_size(s->http, (ev_ssize_t)s->cfg.max_batch_body + 1);
    evhttp_set_timeout(s->http, s->cfg.request_timeout_s);
    evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                                            EVHTTP_REQ_DELETE | EVHTTP_REQ_HEAD | EVHTTP_REQ_PATCH |
                                            EVHTTP_REQ_OPTIONS);
    evhttp_set_gencb(s->http, th__http_dispatch, s);
    struct evhttp_bound_socket *bound =
        evhttp_bind_socket_with_handle(s->http, s->cfg.host, (ev_uint16_t)s->cfg.port);
    if (!bound) {
        fprintf(stderr, "taskhive: cannot listen on %s:%d: %s\n", s->cfg.host, s->cfg.port,
                strerror(errno));
        goto out;
    }
    s->port = bound_port(bound);
    if (s->cfg.port_file && write_port_file(s->cfg.port_file, s->port) != 0) {
        fprintf(stderr, "taskhive: cannot write %s: %s\n", s->cfg.port_file, strerror(errno));
        goto out;
    }
    struct event *sig_term = evsignal_new(s->base, SIGTERM, on_stop, s);
    struct event *sig_int = evsignal_new(s->base, SIGINT, on_stop, s);
    struct event *sig_hup = evsignal_new(s->base, SIGHUP, on_reload, s);
    s->keepalive = event_new(s->base, -1, EV_PERSIST, th__stream_keepalive, s);
    struct timeval ka = {15, 0};
    if (!sig_term || !sig_int || !sig_hup || !s->keepalive || evsignal_add(sig_term, NULL) ||
        evsignal_add(sig_int, NULL) || evsignal_add(sig_hup, NULL) ||
        event_add(s->keepalive, &ka)) {
        fprintf(stderr, "taskhive: cannot set up signals\n");
        goto out;
    }
    struct event *watchdog = NULL;
    const char *wd = getenv("WATCHDOG_USEC");
    long long wd_us = wd ? strtoll(wd, NULL, 10) : 0;
    if (wd_us > 0 && (watchdog = event_new(s->base, -1, EV_PERSIST, on_watchdog, s))) {
        struct timeval tv = {.tv_sec = (time_t)(wd_us / 2000000),
                             .tv_usec = (suseconds_t)((wd_us / 2) % 1000000)};
        event_add(watchdog, &tv);
    }
    s->started_ms = th__wall_ms();
    s->ready = 1;
    sd_notify("READY=1");
    th__log(TH_LOG_INFO, "server",
            json_pack("{s:s,s:i,s:s,s:b,s:i}", "host", s->cfg.host, "port", s->port, "store", uri,
                      "pool", s->pool != NULL, "tokens", (int)s->cfg.ntokens),
            "listening");
    event_base_dispatch(s->base);
    th__log(TH_LOG_INFO, "server", NULL, "stopped");
    status = 0;
    if (watchdog)
        event_free(watchdog);
    event_free(sig_term);
    event_free(sig_int);
    event_free(sig_hup);
out:
    if (s->has_drainer)
        pthread_join(s->drainer, NULL);
    if (s->drained)
        event_free(s->drained);
    th__exec_stop(s);
    if (s->http)
        evhttp_free(s->http);
    th__conn_free_all(s);
    if (s->pool)
        th_pool_free(s->pool);
    th__agents_stop(s);
    th__llm_stop(s);
    th__services_free(s);
    if (s->engine)
        th_engine_free(s->engine); /* flushes the store */
    if (s->keepalive)
        event_free(s->keepalive);
    if (s->wake)
        event_free(s->wake);
    if (s->base)
        event_base_free(s->base);
    th__stream_free(s);
    pthread_mutex_destroy(&s->ring_mu);
out_cfg:
    th__config_free(&s->cfg);
    return status;
}
