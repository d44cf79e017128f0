/*
 * HTTP benchmarks against a real `taskhive serve` (started here on a free
 * loopback port with a temporary sqlite data dir, pool disabled). Prints
 * "<name> <value> <unit>" lines; details on stderr.
 *
 *   http.submit.single      POST /v1/tasks, one task per request, 8 keep-alive
 *                           connections: requests/s
 *   http.submit.batch       POST /v1/tasks with 1000 tasks per request: tasks/s
 *   http.worker.e2e         20k tasks already queued; 8 external workers
 *                           claim (max_tasks 16) and complete over HTTP: tasks/s
 *   http.latency.p50 / p99  submit's answer -> a long-polling external
 *                           worker's claim answer, one task at a time: us
 *
 * The client is a minimal HTTP/1.1 keep-alive client (Content-Length
 * answers only, which is all the API sends outside event streams), so the
 * figures measure the daemon, not a client library.
 *
 * Usage: http_bench [--quick] [--only PREFIX]   (TH_TASKHIVE_BIN: the binary)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int port;
static const char *only;

static int wanted(const char *name)
{
    return !only || strncmp(name, only, strlen(only)) == 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "http_bench: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* ---- a tiny keep-alive client ---------------------------------------------- */

typedef struct conn {
    int fd;
    char buf[1 << 20];
    size_t len;
} conn;

static conn *dial(void)
{
    conn *c = calloc(1, sizeof *c);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (!c || (c->fd = socket(AF_INET, SOCK_STREAM, 0)) < 0 ||
        connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0)
        die("connect");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return c;
}

static void hangup(conn *c)
{
    close(c->fd);
    free(c);
}

/* Sends a request and reads the answer's status and body (into c->buf). */
static int request(conn *c, const char *method, const char *path, const char *body,
                   const char **out_body)
{
    char head[512];
    size_t blen = body ? strlen(body) : 0;
    int hl = snprintf(head, sizeof head,
                      "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      method, path, blen);
    if (write(c->fd, head, (size_t)hl) != hl || (blen && write(c->fd, body, blen) != (ssize_t)blen))
        die("write");
    c->len = 0;
    for (;;) {
        ssize_t k = read(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len);
        if (k <= 0)
            die("read");
        c->len += (size_t)k;
        c->buf[c->len] = '\0';
        char *end = strstr(c->buf, "\r\n\r\n");
        if (!end)
            continue;
        const char *cl = strcasestr(c->buf, "Content-Length:");
        size_t want = cl ? strtoul(cl + 15, NULL, 10) : 0;
        size_t have = c->len - (size_t)(end + 4 - c->buf);
        if (have < want)
            continue;
        if (out_body)
            *out_body = end + 4;
        return (int)strtol(c->buf + 9, NULL, 10);
    }
}

/* ---- the daemon ---------------------------------------------------------------- */

static pid_t daemon_pid;
static char dir[256];

static void start_daemon(void)
{
    const char *bin = getenv("TH_TASKHIVE_BIN");
    if (!bin)
        bin = "build/taskhive";
    snprintf(dir, sizeof dir, "/var/tmp/th-http-bench.XXXXXX");
    if (!mkdtemp(dir))
        die("mkdtemp");
    char cfg[300], portf[300], data[300];
    snprintf(cfg, sizeof cfg, "%s/taskhive.ini", dir);
    snprintf(portf, sizeof portf, "%s/port", dir);
    snprintf(data, sizeof data, "%s/data", dir);
    FILE *f = fopen(cfg, "w");
    if (!f)
        die("config");
    fprintf(f, "[server]\nlog_level = warn\nevent_buffer = 100000\n[pool]\nenabled = false\n");
    fclose(f);
    daemon_pid = fork();
    if (daemon_pid == 0) {
        execl(bin, bin, "serve", "--config", cfg, "--listen", "127.0.0.1:0", "--port-file", portf,
              "--data-dir", data, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) {
        FILE *pf = fopen(portf, "r");
        if (pf) {
            if (fscanf(pf, "%d", &port) == 1) {
                fclose(pf);
                return;
            }
            fclose(pf);
        }
        usleep(10000);
    }
    fprintf(stderr, "http_bench: the daemon did not start (%s)\n", bin);
    exit(1);
}

static void stop_daemon(void)
{
    kill(daemon_pid, SIGTERM);
    waitpid(daemon_pid, NULL, 0);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "http_bench: could not remove %s\n", dir);
}

/* ---- figures ---------------------------------------------------------------------- */

typedef struct job {
    int n;
    const char *body;
    double elapsed;
} job;

static void *submitter(void *arg)
{
    job *j = arg;
    conn *c = dial();
    for (int i = 0; i < j->n; i++)
        if (request(c, "POST", "/v1/tasks", j->body, NULL) / 100 != 2)
            die("submit refused");
    hangup(c);
    return NULL;
}

static double run_submitters(int threads, int per, const char *body)
{
    pthread_t th[16];
    job j = {.n = per, .body = body};
    double t0 = now_s();
    for (int i = 0; i < threads; i++)
        pthread_create(&th[i], NULL, submitter, &j);
    for (int i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    return now_s() - t0;
}

static char *batch_body(int n, const char *queue)
{
    size_t cap = (size_t)n * 48 + 32;
    char *b = malloc(cap), *p = b;
    p += snprintf(p, cap, "{\"tasks\":[");
    for (int i = 0; i < n; i++)
        p += snprintf(p, cap - (size_t)(p - b), "%s{\"queue\":\"%s\",\"payload\":%d}", i ? "," : "",
                      queue, i);
    snprintf(p, cap - (size_t)(p - b), "]}");
    return b;
}

static char worker_ids[16][64];

static void register_worker(conn *c, int i, const char *queue)
{
    char body[128];
    const char *ans;
    snprintf(body, sizeof body, "{\"name\":\"bench-%d\",\"queues\":[\"%s\"]}", i, queue);
    if (request(c, "POST", "/v1/workers", body, &ans) != 201)
        die("register");
    const char *id = strstr(ans, "\"worker_id\":\"");
    snprintf(worker_ids[i], sizeof worker_ids[i], "%.*s", 18, id + 13);
}

typedef struct wjob {
    int idx;
    long done;
    long target;
    pthread_mutex_t *mu;
    long *total;
} wjob;

/* Claims up to 16 and completes each; stops when the shared total is reached. */
static void *worker(void *arg)
{
    wjob *w = arg;
    conn *c = dial();
    char path[128], body[256];
    snprintf(path, sizeof path, "/v1/workers/%.40s/claim", worker_ids[w->idx]);
    for (;;) {
        pthread_mutex_lock(w->mu);
        int done = *w->total >= w->target;
        pthread_mutex_unlock(w->mu);
        if (done)
            break;
        const char *ans;
        if (request(c, "POST", path, "{\"max_tasks\":16,\"wait_ms\":200}", &ans) != 200)
            die("claim");
        char ids[16][27];
        long leases[16];
        int n = 0;
        for (const char *p = ans; n < 16 && (p = strstr(p, "{\"id\":\"")); p += 7) {
            snprintf(ids[n], 27, "%.26s", p + 7);
            const char *l = strstr(p, "\"lease\":");
            leases[n++] = strtol(l + 8, NULL, 10);
        }
        for (int i = 0; i < n; i++) {
            snprintf(path, sizeof path, "/v1/tasks/%.26s/complete", ids[i]);
            snprintf(body, sizeof body, "{\"lease\":%ld,\"result\":true}", leases[i]);
            if (request(c, "POST", path, body, NULL) != 200)
                die("complete");
        }
        snprintf(path, sizeof path, "/v1/workers/%.40s/claim", worker_ids[w->idx]);
        pthread_mutex_lock(w->mu);
        *w->total += n;
        pthread_mutex_unlock(w->mu);
    }
    hangup(c);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct lat {
    int n;
    double *got; /* when each claim answered */
    int count;   /* claims answered so far (atomic) */
} lat;

static void *long_poller(void *arg)
{
    lat *l = arg;
    conn *c = dial();
    char path[128];
    snprintf(path, sizeof path, "/v1/workers/%.40s/claim", worker_ids[15]);
    for (int i = 0; i < l->n;) {
        const char *ans;
        if (request(c, "POST", path, "{\"wait_ms\":5000}", &ans) != 200)
            die("claim");
        if (!strstr(ans, "\"id\""))
            continue;
        l->got[i++] = now_s();
        __atomic_store_n(&l->count, i, __ATOMIC_RELEASE);
    }
    hangup(c);
    return NULL;
}

int main(int argc, char **argv)
{
    int quick = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc)
            only = argv[++i];
        else {
            fprintf(stderr, "usage: http_bench [--quick] [--only PREFIX]\n");
            return 2;
        }
    }
    if (only && strncmp(only, "http", 4) != 0 && strncmp("http", only, strlen(only)) != 0)
        return 0;
    signal(SIGPIPE, SIG_IGN);
    start_daemon();
    if (wanted("http.submit.single")) {
        int per = quick ? 1000 : 5000;
        double dt = run_submitters(8, per, "{\"queue\":\"single\",\"payload\":{\"n\":1}}");
        printf("http.submit.single %.0f requests/s\n", 8.0 * per / dt);
        fprintf(stderr,
                "  http.submit.single: 8 connections x %d requests in %.2f s (target >= 20000)\n",
                per, dt);
    }
    if (wanted("http.submit.batch")) {
        int per = quick ? 5 : 25;
        char *b = batch_body(1000, "batch");
        double dt = run_submitters(4, per, b);
        free(b);
        printf("http.submit.batch %.0f tasks/s\n", 4.0 * per * 1000 / dt);
        fprintf(stderr,
                "  http.submit.batch: 4 connections x %d batches of 1000 in %.2f s (target >= "
                "200000)\n",
                per, dt);
    }
    if (wanted("http.worker.e2e") || wanted("http.latency")) {
        conn *c = dial();
        for (int i = 0; i < 16; i++)
            register_worker(c, i, i == 15 ? "lat" : "e2e");
        long n = quick ? 5000 : 20000;
        if (wanted("http.worker.e2e")) {
            char *b = batch_body(1000, "e2e");
            for (long k = 0; k < n / 1000; k++)
                if (request(c, "POST", "/v1/tasks", b, NULL) != 201)
                    die("submit");
            free(b);
            pthread_t th[8];
            wjob w[8];
            pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
            long total = 0;
            double t0 = now_s();
            for (int i = 0; i < 8; i++) {
                w[i] = (wjob){.idx = i, .target = n, .mu = &mu, .total = &total};
                pthread_create(&th[i], NULL, worker, &w[i]);
            }
            for (int i = 0; i < 8; i++)
                pthread_join(th[i], NULL);
            double dt = now_s() - t0;
            printf("http.worker.e2e %.0f tasks/s\n", (double)total / dt);
            fprintf(stderr,
                    "  http.worker.e2e: %ld tasks claimed+completed by 8 workers in %.2f s (target "
                    ">= 20000)\n",
                    total, dt);
        }
        if (wanted("http.latency")) {
            int m = quick ? 300 : 2000;
            lat l = {.n = m, .got = calloc((size_t)m, sizeof(double))};
            double *sent = calloc((size_t)m, sizeof(double)),
                   *d = calloc((size_t)m, sizeof(double));
            pthread_t th;
            pthread_create(&th, NULL, long_poller, &l);
            usleep(100000);
            for (int i = 0; i < m; i++) {
                if (request(c, "POST", "/v1/tasks", "{\"queue\":\"lat\"}", NULL) != 201)
                    die("submit");
                sent[i] = now_s();
                while (__atomic_load_n(&l.count, __ATOMIC_ACQUIRE) <= i)
                    usleep(50);
            }
            pthread_join(th, NULL);
            for (int i = 0; i < m; i++)
                d[i] = (l.got[i] - sent[i]) * 1e6;
            qsort(d, (size_t)m, sizeof *d, cmp_double);
            printf("http.latency.p50 %.1f us\nhttp.latency.p99 %.1f us\n", d[m / 2],
                   d[(m * 99) / 100]);
            fprintf(stderr,
                    "  http.latency: %d tasks, submit answer -> long-poll claim answer (target p99 "
                    "<= 2000 us)\n",
                    m);
            free(sent);
            free(d);
            free(l.got);
        }
        hangup(c);
    }
    stop_daemon();
    return 0;
}
