/*
 * Black-box daemon helpers; see daemon.h.
 */
#include "daemon.h"
#include "daemon_util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

/* ---- small utilities ---------------------------------------------------- */

long long thd_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void thd_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

char *thd_xstrdup(const char *s)
{
    char *c = strdup(s ? s : "");
    if (!c)
        abort();
    return c;
}

void thd_buf_add(buf *b, const char *data, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            abort();
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static char *read_file(const char *path, size_t *len_out)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    buf b = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        thd_buf_add(&b, chunk, n);
    fclose(f);
    if (!b.p)
        thd_buf_add(&b, "", 0);
    if (len_out)
        *len_out = b.n;
    return b.p;
}

void thd_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        fail_msg("cannot write %s: %s", path, strerror(errno));
    size_t n = strlen(text);
    if (fwrite(text, 1, n, f) != n || fclose(f) != 0)
        fail_msg("cannot write %s", path);
}

void thd_curl_init(void)
{
    static int done;
    if (!done) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        done = 1;
    }
}

/* ---- the daemon process ------------------------------------------------- */

#define MAX_LIVE 64
static thd_daemon *g_live[MAX_LIVE];

static void live_add(thd_daemon *d)
{
    for (int i = 0; i < MAX_LIVE; i++)
        if (!g_live[i]) {
            g_live[i] = d;
            return;
        }
}

static void live_del(thd_daemon *d)
{
    for (int i = 0; i < MAX_LIVE; i++)
        if (g_live[i] == d)
            g_live[i] = NULL;
}

const char *thd_bin(void)
{
    const char *b = getenv("TH_TASKHIVE_BIN");
    return b && *b ? b : "build/taskhive";
}

char *thd_newdir(const char *name)
{
    char *dir = thtest_unique_path(name, "");
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        fail_msg("mkdir %s: %s", dir, strerror(errno));
    return dir;
}

void thd_print_log(const thd_daemon *d, size_t max_bytes)
{
    size_t n = 0;
    char *log = d ? read_file(d->log_path, &n) : NULL;
    if (!log) {
        fprintf(stderr, "(no daemon log)\n");
        return;
    }
    const char *start = n > max_bytes ? log + n - max_bytes : log;
    fprintf(stderr, "---- daemon log %s (last %zu bytes) ----\n%s\n---- end of log ----\n",
            d->log_path, max_bytes, start);
    free(log);
}

/* Reaps `pid` within `timeout_ms`; returns 1 and the status when it exited. */
static int reap(pid_t pid, int timeout_ms, int *status)
{
    long long end = thd_now_ms() + timeout_ms;
    for (;;) {
        pid_t r = waitpid(pid, status, WNOHANG);
        if (r == pid)
            return 1;
        if (r < 0 && errno != EINTR) {
            *status = -1;
            return 1;
        }
        if (thd_now_ms() >= end)
            return 0;
        thd_sleep_ms(5);
    }
}

static pid_t spawn(const char *const *argv, const char *out_path, int append)
{
    int fd = open(out_path, O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC), 0600);
    if (fd < 0)
        return -1;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int in = open("/dev/null", O_RDONLY);
        if (in >= 0)
            dup2(in, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(fd);
    return pid;
}

int thd_run(const char *const *argv, int timeout_ms, char **out)
{
    char *path = thtest_unique_path("run", ".out");
    pid_t pid = spawn(argv, path, 0);
    if (pid < 0)
        fail_msg("cannot start %s", argv[0]);
    int status = 0;
    if (!reap(pid, timeout_ms, &status)) {
        kill(pid, SIGKILL);
        reap(pid, 5000, &status);
    }
    if (out) {
        *out = read_file(path, NULL);
        if (!*out)
            *out = thd_xstrdup("");
    }
    unlink(path);
    free(path);
    if (status == -1)
        return -1;
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return 128 + WTERMSIG(status);
}

/* The port in the port file, or 0 while it is missing or incomplete. */
static int read_port(const char *path)
{
    char *text = read_file(path, NULL);
    if (!text)
        return 0;
    char *end = NULL;
    long v = strtol(text, &end, 10);
    int complete = end && end != text && (*end == '\n' || *end == '\0');
    int port = complete && v > 0 && v < 65536 ? (int)v : 0;
    /* Without a newline the write may still be going on: need a stable value. */
    if (port && *end == '\0') {
        thd_sleep_ms(20);
        char *again = read_file(path, NULL);
        if (!again || strcmp(again, text) != 0)
            port = 0;
        free(again);
    }
    free(text);
    return port;
}

thd_daemon *thd_start_at(const char *dir, const char *const *extra, const char *file, int line)
{
    thd_curl_init();
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        _fail(file, line);
    thd_daemon *d = calloc(1, sizeof *d);
    if (!d)
        abort();
    d->dir = thd_xstrdup(dir);
    d->data_dir = thd_fmt("%s/data", dir);
    d->port_file = thd_fmt("%s/port", dir);
    d->log_path = thd_fmt("%s/daemon.log", dir);
    unlink(d->port_file);

    const char *argv[64];
    size_t n = 0;
    argv[n++] = thd_bin();
    argv[n++] = "serve";
    argv[n++] = "--listen";
    argv[n++] = "127.0.0.1:0";
    argv[n++] = "--port-file";
    argv[n++] = d->port_file;
    argv[n++] = "--data-dir";
    argv[n++] = d->data_dir;
    for (size_t i = 0; extra && extra[i] && n < 63; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;

    FILE *lf = fopen(d->log_path, "a");
    if (lf) {
        fprintf(lf, "==== start:");
        for (size_t i = 0; i < n; i++)
            fprintf(lf, " %s", argv[i]);
        fprintf(lf, "\n");
        fclose(lf);
    }
    d->pid = spawn(argv, d->log_path, 1);
    if (d->pid < 0) {
        print_error("%s:%d: cannot start %s\n", file, line, argv[0]);
        _fail(file, line);
    }
    live_add(d);

    long long end = thd_now_ms() + THD_START_MS;
    while ((d->port = read_port(d->port_file)) == 0) {
        int st;
        if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
            d->pid = 0;
            d->status = st;
            live_del(d);
            thd_print_log(d, 4000);
            print_error("%s:%d: the daemon exited (status 0x%x) before writing its port file\n",
                        file, line, st);
            _fail(file, line);
        }
        if (thd_now_ms() > end) {
            thd_print_log(d, 4000);
            print_error("%s:%d: no port in %s after %d ms\n", file, line, d->port_file,
                        THD_START_MS);
            _fail(file, line);
        }
        thd_sleep_ms(10);
    }
    snprintf(d->url, sizeof d->url, "http://127.0.0.1:%d", d->port);

    /* Ready = /readyz 200; a broken /readyz is left to its own test. */
    for (;;) {
        thd_resp *r = thd_http(d->url, "GET", "/readyz", NULL, NULL, NULL, 0, 2000);
        long st = r->status;
        thd_resp_free(r);
        if (st == 200)
            break;
        if (thd_now_ms() > end) {
            fprintf(stderr, "%s:%d: warning: /readyz never answered 200 (last %ld)\n", file, line,
                    st);
            break;
        }
        thd_sleep_ms(20);
    }
    return d;
}

int thd_signal_wait(thd_daemon *d, int sig, int timeout_ms)
{
    if (!d || d->pid <= 0)
        return -1;
    kill(d->pid, sig);
    int status = 0;
    if (!reap(d->pid, timeout_ms, &status)) {
        fprintf(stderr, "daemon %d did not exit within %d ms of signal %d: SIGKILL\n", (int)d->pid,
                timeout_ms, sig);
        kill(d->pid, SIGKILL);
        reap(d->pid, 10000, &status);
    }
    d->pid = 0;
    d->status = status;
    live_del(d);
    return status;
}

void thd_stop_at(thd_daemon *d, const char *file, int line)
{
    int st = thd_signal_wait(d, SIGTERM, THD_STOP_MS);
    if (!(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
        thd_print_log(d, 4000);
        if (st >= 0 && WIFSIGNALED(st))
            print_error("%s:%d: daemon killed by signal %d after SIGTERM\n", file, line,
                        WTERMSIG(st));
        else
            print_error("%s:%d: daemon exit status %d after SIGTERM (want 0)\n", file, line,
                        st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        _fail(file, line);
    }
}

void thd_free(thd_daemon *d)
{
    if (!d)
        return;
    if (d->pid > 0)
        thd_signal_wait(d, SIGKILL, 10000);
    live_del(d);
    free(d->dir);
    free(d->data_dir);
    free(d->port_file);
    free(d->log_path);
    free(d);
}

int thd_teardown(void **state)
{
    (void)state;
    for (int i = 0; i < MAX_LIVE; i++)
        if (g_live[i] && g_live[i]->pid > 0)
            thd_signal_wait(g_live[i], SIGKILL, 10000);
    return 0;
}

int thd_fx_setup(void **state)
{
    char *dir = thd_newdir("daemon");
    thd_daemon *d = thd_start(dir, NULL);
    free(dir);
    *state = d;
    return 0;
}

int thd_fx_teardown(void **state)
{
    thd_daemon *d = *state;
    int rc = 0;
    if (d) {
        int st = thd_signal_wait(d, SIGTERM, THD_STOP_MS);
        if (st != -1 && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
            thd_print_log(d, 4000);
            print_error("teardown: the daemon did not exit 0 after SIGTERM (status 0x%x)\n", st);
            rc = -1;
        }
        thd_free(d);
    }
    *state = NULL;
    thd_teardown(NULL);
    return rc;
}

const char *thd_p(const char *fmt, ...)
{
    static char bufs[32][4096];
    static unsigned next;
    char *b = bufs[next++ % 32];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, sizeof bufs[0], fmt, ap);
    va_end(ap);
    return b;
}

char *thd_fmt(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        abort();
    va_end(ap);
    return s;
}

/* ---- HTTP --------------------------------------------------------------- */

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud)
{
    thd_buf_add(ud, data, size * nmemb);
    return size * nmemb;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *ud)
{
    buf *b = ud;
    size_t n = size * nmemb;
    /* A new status line (after a 100 Continue, say) starts a new block. */
    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0)
        b->n = 0;
    thd_buf_add(b, data, n);
    return n;
}

thd_resp *thd_http(const char *base, const char *method, const char *path, const char *token,
                   const char *const *headers, const char *body, size_t len, long timeout_ms)
{
    thd_curl_init();
    thd_resp *r = calloc(1, sizeof *r);
    if (!r)
        abort();
    buf hb = {0}, bb = {0};
    CURL *c = curl_easy_init();
    if (!c)
        abort();
    char *url = thd_fmt("%s%s", base, path);
    struct curl_slist *hl = NULL;
    char *auth = token ? thd_fmt("Authorization: Bearer %s", token) : NULL;
    if (auth)
        hl = curl_slist_append(hl, auth);
    for (size_t i = 0; headers && headers[i]; i++)
        hl = curl_slist_append(hl, headers[i]);
    if (body) {
        hl = curl_slist_append(hl, "Content-Type: application/json");
        hl = curl_slist_append(hl, "Expect:");
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &bb);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &hb);
    r->curl_rc = (int)curl_easy_perform(c);
    if (r->curl_rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_easy_cleanup(c);
    curl_slist_free_all(hl);
    free(auth);
    free(url);
    if (!hb.p)
        thd_buf_add(&hb, "", 0);
    if (!bb.p)
        thd_buf_add(&bb, "", 0);
    r->headers = hb.p;
    r->body = bb.p;
    r->len = bb.n;
    r->json = bb.n ? json_loadb(bb.p, bb.n, 0, NULL) : NULL;
    return r;
}

thd_resp *thd_req(const thd_daemon *d, const char *method, const char *path, const char *body)
{
    return thd_http(d->url, method, path, d->token, NULL, body, body ? strlen(body) : 0, 30000);
}

thd_resp *thd_req_tok(const thd_daemon *d, const char *token, const char *method, const char *path,
                      const char *body)
{
    return thd_http(d->url, method, path, token, NULL, body, body ? strlen(body) : 0, 30000);
}

thd_resp *thd_reqf(const thd_daemon *d, const char *method, const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *body = NULL;
    if (vasprintf(&body, fmt, ap) < 0)
        abort();
    va_end(ap);
    thd_resp *r = thd_req(d, method, path, body);
    free(body);
    return r;
}

void thd_resp_free(thd_resp *r)
{
    if (!r)
        return;
    free(r->headers);
    free(r->body);
    json_decref(r->json);
    free(r);
}

char *thd_header(const thd_resp *r, const char *name)
{
    size_t nl = strlen(name);
    const char *p = r->headers;
    while (p && *p) {
        const char *eol = strchr(p, '\n');
        size_t ll = eol ? (size_t)(eol - p) : strlen(p);
        if (ll > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            const char *ve = p + ll;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && isspace((unsigned char)ve[-1]))
                ve--;
            char *out = malloc((size_t)(ve - v) + 1);
            if (!out)
                abort();
            memcpy(out, v, (size_t)(ve - v));
            out[ve - v] = '\0';
            return out;
        }
        p = eol ? eol + 1 : NULL;
    }
    return NULL;
}

static void print_resp(const thd_resp *r, const char *what)
{
    print_error("%s: status %ld (curl %d)\nbody: %.2000s\n", what, r->status, r->curl_rc, r->body);
}

void thd_assert_status_at(const thd_resp *r, long status, const char *what, const char *file,
                          int line)
{
    if (r->status != status) {
        print_resp(r, what);
        print_error("%s:%d: want status %ld, got %ld\n", file, line, status, r->status);
        _fail(file, line);
    }
}

void thd_assert_error_at(const thd_resp *r, long status, const char *code, const char *field,
                         const char *what, const char *file, int line)
{
    const char *got_code = thd_jstr(r->json, "error.code");
    const char *got_field = thd_jstr(r->json, "error.field");
    const char *msg = thd_jstr(r->json, "error.message");
    int ok = r->status == status && got_code && strcmp(got_code, code) == 0 && msg;
    if (ok && field) {
        /* "a|b": either is right. */
        const char *gf = got_field ? got_field : "";
        size_t gl = strlen(gf);
        ok = 0;
        for (const char *f = field;; f++) {
            size_t n = strcspn(f, "|");
            if (n == gl && strncmp(f, gf, n) == 0)
                ok = 1;
            f += n;
            if (!*f)
                break;
        }
    }
    if (!ok) {
        print_resp(r, what);
        print_error("%s:%d: want %ld {\"code\": \"%s\", \"field\": \"%s\"} with a message\n", file,
                    line, status, code, field ? field : "(any)");
        _fail(file, line);
    }
}

/* ---- JSON --------------------------------------------------------------- */

json_t *thd_jget(json_t *root, const char *path)
{
    json_t *v = root;
    const char *p = path;
    while (v && *p) {
        if (*p == '.') {
            p++;
            continue;
        }
        if (*p == '[') {
            char *end = NULL;
            long i = strtol(p + 1, &end, 10);
            if (!end || *end != ']' || !json_is_array(v))
                return NULL;
            v = json_array_get(v, (size_t)i);
            p = end + 1;
            continue;
        }
        size_t n = strcspn(p, ".[");
        char key[128];
        if (n >= sizeof key || !json_is_object(v))
            return NULL;
        memcpy(key, p, n);
        key[n] = '\0';
        v = json_object_get(v, key);
        p += n;
    }
    return v;
}

const char *thd_jstr(json_t *root, const char *path)
{
    return json_string_value(thd_jget(root, path));
}

long long thd_jint(json_t *root, const char *path, long long dflt)
{
    json_t *v = thd_jget(root, path);
    if (json_is_integer(v))
        return (long long)json_integer_value(v);
    if (json_is_real(v))
        return (long long)json_real_value(v);
    return dflt;
}

int thd_jbool(json_t *root, const char *path)
{
    json_t *v = thd_jget(root, path);
    return json_is_boolean(v) ? json_is_true(v) : -1;
}

char *thd_jdump(const json_t *v)
{
    if (!v)
        return thd_xstrdup("(none)");
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    return s ? s : thd_xstrdup("(unprintable)");
}

/* ---- task and worker shortcuts ----------------------------------------- */

char *thd_submit_at(const thd_daemon *d, const char *body, const char *file, int line)
{
    thd_resp *r = thd_req(d, "POST", "/v1/tasks", body);
    thd_assert_status_at(r, 201, "POST /v1/tasks", file, line);
    const char *id = thd_jstr(r->json, "id");
    if (!id || strlen(id) != 26) {
        print_resp(r, "POST /v1/tasks");
        print_error("%s:%d: no 26-character \"id\" in the answer\n", file, line);
        _fail(file, line);
    }
    char *out = thd_xstrdup(id);
    thd_resp_free(r);
    return out;
}

json_t *thd_task_at(const thd_daemon *d, const char *id, const char *file, int line)
{
    char *path = thd_fmt("/v1/tasks/%s", id);
    thd_resp *r = thd_req(d, "GET", path, NULL);
    free(path);
    thd_assert_status_at(r, 200, "GET /v1/tasks/{id}", file, line);
    if (!json_is_object(r->json)) {
        print_resp(r, "GET /v1/tasks/{id}");
        _fail(file, line);
    }
    json_t *t = json_incref(r->json);
    thd_resp_free(r);
    return t;
}

json_t *thd_wait_state_at(const thd_daemon *d, const char *id, const char *state, int timeout_ms,
                          const char *file, int line)
{
    long long end = thd_now_ms() + timeout_ms;
    for (;;) {
        json_t *t = thd_task_at(d, id, file, line);
        const char *s = thd_jstr(t, "state");
        if (s && strcmp(s, state) == 0)
            return t;
        if (thd_now_ms() > end) {
            char *dump = thd_jdump(t);
            print_error("%s:%d: task %s still \"%s\" after %d ms (want \"%s\"): %.1500s\n", file,
                        line, id, s ? s : "(none)", timeout_ms, state, dump);
            free(dump);
            json_decref(t);
            _fail(file, line);
        }
        json_decref(t);
        thd_sleep_ms(20);
    }
}

char *thd_register_at(const thd_daemon *d, const char *name, const char *queue, const char *file,
                      int line)
{
    thd_resp *r =
        thd_reqf(d, "POST", "/v1/workers", "{\"name\": \"%s\", \"queues\": [\"%s\"]}", name, queue);
    thd_assert_status_at(r, 201, "POST /v1/workers", file, line);
    const char *wid = thd_jstr(r->json, "worker_id");
    if (!wid || !*wid) {
        print_resp(r, "POST /v1/workers");
        _fail(file, line);
    }
    char *out = thd_xstrdup(wid);
    thd_resp_free(r);
    return out;
}

json_t *thd_claim_at(const thd_daemon *d, const char *wid, const char *queue, long lease_ms,
                     long wait_ms, const char *file, int line)
{
    char *path = thd_fmt("/v1/workers/%s/claim", wid);
    char *body =
        thd_fmt("{\"queues\": [\"%s\"], \"max_tasks\": 1, \"lease_ms\": %ld, \"wait_ms\": %ld}",
                queue, lease_ms, wait_ms);
    thd_resp *r =
        thd_http(d->url, "POST", path, d->token, NULL, body, strlen(body), wait_ms + 30000);
    free(path);
    free(body);
    thd_assert_status_at(r, 200, "POST /v1/workers/{id}/claim", file, line);
    json_t *tasks = thd_jget(r->json, "tasks");
    if (!json_is_array(tasks)) {
        print_resp(r, "claim");
        print_error("%s:%d: no \"tasks\" array\n", file, line);
        _fail(file, line);
    }
    json_incref(tasks);
    thd_resp_free(r);
    return tasks;
}
