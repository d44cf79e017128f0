/*
 * Black-box helpers for testing the real daemon (`taskhive serve`, see
 * docs/API.md) from cmocka tests: start it as a child process on a free
 * loopback port with its own directory, talk to it over HTTP with libcurl,
 * read its Server-Sent Events stream in a background thread, pick JSON
 * answers apart with jansson, and stop it with a signal.
 *
 * Every wait is bounded. Helpers that can fail assert (cmocka) and report the
 * caller's file and line, like thtest.h. A daemon that is still running when
 * the process exits (a failed test longjmps past its stop) is killed: every
 * child is started with PR_SET_PDEATHSIG and also reaped by thd_teardown.
 * daemon.c holds the process, HTTP and JSON helpers; daemon_sse.c the
 * event-stream reader.
 */
#ifndef THTEST_DAEMON_H
#define THTEST_DAEMON_H

#include <stddef.h>
#include <sys/types.h>

#include <jansson.h>

#include "thtest.h"

/* Generous bounds: the daemon may run under ASan/TSan on a loaded machine. */
#define THD_START_MS 30000 /* port file + readiness */
#define THD_STOP_MS 30000  /* SIGTERM to exit */
#define THD_WAIT_MS 30000  /* a task reaching a state, a stream event... */

/* ---- the daemon process ----------------------------------------------- */

typedef struct thd_daemon {
    pid_t pid;         /* 0 once reaped */
    int port;          /* read from the port file */
    char url[64];      /* "http://127.0.0.1:PORT" */
    char *dir;         /* its own directory: port file, log, data dir */
    char *data_dir;    /* dir/data */
    char *port_file;   /* dir/port */
    char *log_path;    /* dir/daemon.log: the daemon's stdout + stderr */
    const char *token; /* bearer token thd_req sends (borrowed); NULL = none */
    int status;        /* wait status once reaped */
} thd_daemon;

/* The daemon binary: $TH_TASKHIVE_BIN, else "build/taskhive". Static. */
const char *thd_bin(void);

/* A new, empty directory under the test's temp dir ("<tmp>/<name>-<pid>-<n>");
 * the caller frees the path. */
char *thd_newdir(const char *name);

/*
 * Starts `taskhive serve --listen 127.0.0.1:0 --port-file DIR/port
 * --data-dir DIR/data EXTRA...` (`extra`: NULL-terminated, may be NULL) with
 * its output in DIR/daemon.log, waits (bounded) for the port file and for
 * /readyz to answer 200, and returns the handle. `dir` is created when
 * missing; reusing the directory of a stopped daemon restarts it on the same
 * data. Fails the test (printing the log) when the daemon exits or never
 * writes its port. Free with thd_free.
 */
thd_daemon *thd_start_at(const char *dir, const char *const *extra, const char *file, int line);
#define thd_start(dir, extra) thd_start_at((dir), (extra), __FILE__, __LINE__)

/* Sends `sig` and waits up to `timeout_ms` for the exit, then SIGKILLs and
 * reaps. Returns the wait status; -1 when the process was already reaped. */
int thd_signal_wait(thd_daemon *d, int sig, int timeout_ms);
/* SIGTERM, then fails the test unless the daemon exits with status 0 within
 * THD_STOP_MS (prints the log tail otherwise). */
void thd_stop_at(thd_daemon *d, const char *file, int line);
#define thd_stop(d) thd_stop_at((d), __FILE__, __LINE__)
/* Kills the daemon if it still runs (SIGKILL), reaps it, frees the handle;
 * the directory stays. Accepts NULL. */
void thd_free(thd_daemon *d);
/* Prints the last `max_bytes` of the daemon's log to stderr. */
void thd_print_log(const thd_daemon *d, size_t max_bytes);

/* cmocka teardown: kills and reaps every daemon still running. */
int thd_teardown(void **state);

/* A per-test fixture: *state = a daemon started (no extra arguments) in a
 * fresh directory named after the test binary's group. The teardown stops
 * it with SIGTERM and fails unless it exits 0 within THD_STOP_MS. */
int thd_fx_setup(void **state);
int thd_fx_teardown(void **state);

/*
 * Runs `argv` (argv[0] is a path) with stdin from /dev/null and waits up to
 * `timeout_ms` (then SIGKILL). Returns the exit status (128+signal when it was
 * killed by one) and, when `out` is not NULL, its stdout + stderr (caller
 * frees).
 */
int thd_run(const char *const *argv, int timeout_ms, char **out);

/* Writes `text` to `path` (replacing it); fails the test on error. */
void thd_write_file(const char *path, const char *text);

/* ---- HTTP --------------------------------------------------------------- */

/* curl_global_init, once; every helper calls it (first from the main thread). */
void thd_curl_init(void);

typedef struct thd_resp {
    long status;   /* 0 when the request failed at the transport level */
    int curl_rc;   /* CURLcode */
    char *headers; /* the raw header block of the final answer */
    char *body;    /* NUL-terminated */
    size_t len;
    json_t *json; /* the body parsed, or NULL when it is not JSON */
} thd_resp;

/*
 * One HTTP request to `base` + `path`. `token` adds "Authorization: Bearer
 * TOKEN" (NULL: none); `headers` are extra "Name: value" lines
 * (NULL-terminated, may be NULL); `body` (may be NULL) is sent with
 * Content-Type: application/json. Waits at most `timeout_ms`. Never fails
 * the test: a transport failure gives status 0. Free with thd_resp_free.
 */
thd_resp *thd_http(const char *base, const char *method, const char *path, const char *token,
                   const char *const *headers, const char *body, size_t len, long timeout_ms);
/* thd_http against `d` with d->token and a 30 s limit. */
thd_resp *thd_req(const thd_daemon *d, const char *method, const char *path, const char *body);
/* Same with a printf-formatted body. */
thd_resp *thd_reqf(const thd_daemon *d, const char *method, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Same with another token (NULL = none). */
thd_resp *thd_req_tok(const thd_daemon *d, const char *token, const char *method, const char *path,
                      const char *body);
void thd_resp_free(thd_resp *r);
/* The value of header `name` (case-insensitive) in r->headers, trimmed, or
 * NULL; the caller frees it. */
char *thd_header(const thd_resp *r, const char *name);

/* Fails the test unless r->status is `status` (prints the answer). */
void thd_assert_status_at(const thd_resp *r, long status, const char *what, const char *file,
                          int line);
#define thd_assert_status(r, status) thd_assert_status_at((r), (status), #r, __FILE__, __LINE__)
/* Fails the test unless `r` is an error answer of `status` whose body is
 * {"error": {"code": CODE, "message": "...", "field": FIELD}}. `field` NULL:
 * not checked; "" means the field must be "" (or absent); "a|b" accepts either. */
void thd_assert_error_at(const thd_resp *r, long status, const char *code, const char *field,
                         const char *what, const char *file, int line);
#define thd_assert_error(r, status, code, field)                                                   \
    thd_assert_error_at((r), (status), (code), (field), #r, __FILE__, __LINE__)

/* ---- JSON --------------------------------------------------------------- */

/* The value at `path` ("a.b[2].c"; "" = root) under `root`, or NULL. */
json_t *thd_jget(json_t *root, const char *path);
/* The string at `path`, or NULL when absent or not a string. */
const char *thd_jstr(json_t *root, const char *path);
/* The integer at `path` (a real is truncated), or `dflt`. */
long long thd_jint(json_t *root, const char *path, long long dflt);
/* 1 / 0 for a boolean at `path`, -1 when absent or not a boolean. */
int thd_jbool(json_t *root, const char *path);
/* Compact JSON text of `v` (caller frees); "(none)" copies for NULL. */
char *thd_jdump(const json_t *v);

/* ---- task and worker shortcuts (assert on failure) --------------------- */

/* POST /v1/tasks with `body`; asserts 201 and returns the id (caller frees). */
char *thd_submit_at(const thd_daemon *d, const char *body, const char *file, int line);
#define thd_submit(d, body) thd_submit_at((d), (body), __FILE__, __LINE__)
/* GET /v1/tasks/ID; asserts 200 and returns the task object (decref). */
json_t *thd_task_at(const thd_daemon *d, const char *id, const char *file, int line);
#define thd_task(d, id) thd_task_at((d), (id), __FILE__, __LINE__)
/* Polls GET /v1/tasks/ID until its state is `state` (bounded by timeout_ms);
 * fails the test otherwise (naming the last state). Returns the task. */
json_t *thd_wait_state_at(const thd_daemon *d, const char *id, const char *state, int timeout_ms,
                          const char *file, int line);
#define thd_wait_state(d, id, state)                                                               \
    thd_wait_state_at((d), (id), (state), THD_WAIT_MS, __FILE__, __LINE__)
/* POST /v1/workers {"name", "queues": [queue]}; asserts 201; returns the
 * worker_id (caller frees). */
char *thd_register_at(const thd_daemon *d, const char *name, const char *queue, const char *file,
                      int line);
#define thd_register(d, name, queue) thd_register_at((d), (name), (queue), __FILE__, __LINE__)
/* POST /v1/workers/WID/claim {"queues": [queue], "max_tasks": 1, "lease_ms",
 * "wait_ms"}; asserts 200 and returns the "tasks" array (decref); never NULL. */
json_t *thd_claim_at(const thd_daemon *d, const char *wid, const char *queue, long lease_ms,
                     long wait_ms, const char *file, int line);
#define thd_claim(d, wid, queue, lease_ms, wait_ms)                                                \
    thd_claim_at((d), (wid), (queue), (lease_ms), (wait_ms), __FILE__, __LINE__)

/* printf into one of 32 rotating static buffers of 4 KiB: handy for paths.
 * Valid until 32 more calls; main thread only. */
const char *thd_p(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Same, malloc'd (caller frees); no length limit. */
char *thd_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Milliseconds on the monotonic clock. */
long long thd_now_ms(void);
/* Sleeps `ms` milliseconds. */
void thd_sleep_ms(long ms);

/* ---- Server-Sent Events ------------------------------------------------- */

typedef struct thd_event {
    long long id;  /* the "id:" line; -1 when absent */
    char type[32]; /* the "event:" line ("message" when absent) */
    char *data;    /* the "data:" lines joined with "\n" */
    json_t *json;  /* data parsed, or NULL */
} thd_event;

typedef struct thd_sse thd_sse;

/*
 * Opens GET `path` (e.g. "/v1/events?task=ID") on `d` with d->token in a
 * background thread and collects the events as they arrive. `last_event_id`
 * (may be NULL) is sent as the Last-Event-ID header. Close with
 * thd_sse_close.
 */
thd_sse *thd_sse_open(const thd_daemon *d, const char *path, const char *last_event_id);
/* Waits until the answer's headers arrived (bounded); returns the HTTP
 * status, 0 when nothing came. */
long thd_sse_wait_connected(thd_sse *s, int timeout_ms);
/* Waits until an event of `type` (for task `task` unless NULL) has arrived
 * or the stream ended; returns 1 when it did, 0 on timeout / end. */
int thd_sse_wait_for(thd_sse *s, const char *type, const char *task, int timeout_ms);
/* Waits until at least `n` events have arrived; returns the count then. */
size_t thd_sse_wait_count(thd_sse *s, size_t n, int timeout_ms);
/* Stops the stream (bounded) and joins the thread. The events stay readable.
 * Idempotent. */
void thd_sse_stop(thd_sse *s);
/* Number of events so far / event i (valid until thd_sse_close; call after
 * thd_sse_stop or accept a moving count). */
size_t thd_sse_count(thd_sse *s);
const thd_event *thd_sse_event(thd_sse *s, size_t i);
/* Number of events of `type` so far (safe while the stream runs). */
size_t thd_sse_count_type(thd_sse *s, const char *type);
/* Number of ": ..." comment lines seen. */
size_t thd_sse_comments(thd_sse *s);
/* HTTP status and Content-Type of the answer (after thd_sse_stop). */
long thd_sse_status(thd_sse *s);
const char *thd_sse_content_type(thd_sse *s);
/* How the transfer ended (a CURLcode; 0 while running or after a clean end). */
int thd_sse_curl_rc(thd_sse *s);
/* Stops (if needed) and frees everything. Accepts NULL. */
void thd_sse_close(thd_sse *s);

#endif
