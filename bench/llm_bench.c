/*
 * LLM gateway benchmarks. Prints "<name> <value> <unit>" lines on stdout.
 *
 *   llm.stream10k.wall_ms      10,000 streaming chat calls started at once
 *                              against a fake OpenAI server (a child
 *                              process) that answers each after 1 s: from
 *                              the first start to the last answer
 *   llm.stream10k.rss_mb       this process's peak RSS (VmHWM) after them
 *   llm.stream10k.overhead.p50 / .p99
 *                              each call's time minus the server's 1 s
 *                              delay: the gateway's queueing, connection
 *                              setup, parsing and hand-back (and the fake
 *                              server's own work, on the other core)
 *   llm.mock.latency.p50 / .p99, llm.mock.calls_per_s
 *                              one thread calling th_llm_chat on the mock
 *                              provider in a loop: the cost of one trip
 *                              through the gateway thread
 *
 * Usage: llm_bench [--quick] [--only PREFIX]   (--quick: 1,000 streams)
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fakellm.h"
#include "taskhive/llm.h"

static const char *only;

static int wanted(const char *name)
{
    return !only || strncmp(name, only, strlen(only)) == 0 ||
           strncmp(only, name, strlen(name)) == 0;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static double peak_rss_mb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %ld kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return (double)kb / 1024.0;
}

static void die(const char *what, const th_error *e)
{
    fprintf(stderr, "llm_bench: %s: %s\n", what, e ? e->message : "failed");
    exit(1);
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Runs the fake server in a child (its sockets then do not count against
 * this process's descriptor limit or RSS); returns its port. */
static int start_server(pid_t *pid)
{
    int fds[2];
    if (pipe(fds) != 0)
        die("pipe", NULL);
    *pid = fork();
    if (*pid < 0)
        die("fork", NULL);
    if (*pid == 0) {
        close(fds[0]);
        fakellm *f = fakellm_start();
        fakellm_reply r = {.kind = FAKE_DELAY, .delay_ms = 1000, .chunks = 4};
        fakellm_set_default(f, &r);
        int port = fakellm_port(f);
        if (write(fds[1], &port, sizeof port) != sizeof port)
            _exit(1);
        for (;;)
            pause();
    }
    close(fds[1]);
    int port = 0;
    if (read(fds[0], &port, sizeof port) != sizeof port)
        die("fake server did not start", NULL);
    close(fds[0]);
    return port;
}

typedef struct slot {
    double start, end;
    int rc;
} slot;

static void on_done(th_llm_call *c, int rc, void *ud)
{
    slot *s = ud;
    s->end = now_ms();
    s->rc = rc;
    th_llm_call_free(c);
}

static void stream_bench(int n)
{
    pid_t pid;
    int port = start_server(&pid);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1", port);
    th_error err;
    th_llm_gateway *gw = th_llm_gateway_new(NULL, &err);
    if (!gw)
        die("gateway", &err);
    th_llm_provider_options o;
    th_llm_provider_options_init(&o);
    o.name = "fake";
    o.format = TH_LLM_OPENAI;
    o.base_url = url;
    o.api_key = "sk-bench";
    o.max_concurrent = n;
    o.max_queue = (size_t)n;
    o.timeout_ms = 60000;
    o.health_interval_ms = 0;
    o.max_retries = 0;
    if (th_llm_gateway_add_provider(gw, &o, &err))
        die("provider", &err);
    th_llm_target t = {.provider = "fake"};
    th_llm_message m = {.role = TH_LLM_USER, .content = "Tell me something in four chunks."};
    th_llm_request req = {.targets = &t,
                          .ntargets = 1,
                          .messages = &m,
                          .nmessages = 1,
                          .temperature = -1,
                          .max_tokens = 64,
                          .stream = 1};
    slot *s = calloc((size_t)n, sizeof *s);
    double t0 = now_ms();
    for (int i = 0; i < n; i++) {
        th_llm_call *c;
        s[i].start = now_ms();
        s[i].rc = 1;
        if (th_llm_start(gw, &req, on_done, &s[i], &c, &err))
            die("start", &err);
    }
    /* The done callbacks free the calls; wait until every slot is filled. */
    for (;;) {
        int left = 0;
        for (int i = 0; i < n; i++)
            left += __atomic_load_n(&s[i].rc, __ATOMIC_ACQUIRE) == 1;
        if (!left)
            break;
        usleep(2000);
    }
    double last = 0;
    int failed = 0;
    double *over = calloc((size_t)n, sizeof *over);
    for (int i = 0; i < n; i++) {
        if (s[i].end > last)
            last = s[i].end;
        failed += s[i].rc != 0;
        over[i] = s[i].end - s[i].start - 1000.0;
    }
    qsort(over, (size_t)n, sizeof *over, cmp);
    const char *tag = n == 10000 ? "stream10k" : "stream1k";
    printf("llm.%s.wall_ms %.0f ms\n", tag, last - t0);
    printf("llm.%s.rss_mb %.1f MiB\n", tag, peak_rss_mb());
    printf("llm.%s.overhead.p50 %.1f ms\n", tag, over[n / 2]);
    printf("llm.%s.overhead.p99 %.1f ms\n", tag, over[(n * 99) / 100]);
    if (failed)
        fprintf(stderr, "llm_bench: %d of %d calls failed\n", failed, n);
    th_llm_gateway_free(gw);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    free(s);
    free(over);
}

static void mock_bench(int n)
{
    th_error err;
    th_llm_gateway *gw = th_llm_gateway_new(NULL, &err);
    th_llm_provider_options o;
    th_llm_provider_options_init(&o);
    o.name = "m";
    o.format = TH_LLM_MOCK;
    if (!gw || th_llm_gateway_add_provider(gw, &o, &err))
        die("gateway", &err);
    th_llm_target t = {.provider = "m"};
    th_llm_message m = {.role = TH_LLM_USER, .content = "hello"};
    th_llm_request req = {
        .targets = &t, .ntargets = 1, .messages = &m, .nmessages = 1, .temperature = -1};
    double *lat = calloc((size_t)n, sizeof *lat);
    double t0 = now_ms();
    for (int i = 0; i < n; i++) {
        th_llm_response r;
        double a = now_ms();
        if (th_llm_chat(gw, &req, &r, &err))
            die("chat", &err);
        lat[i] = (now_ms() - a) * 1000.0;
        th_llm_response_free(&r);
    }
    double secs = (now_ms() - t0) / 1e3;
    qsort(lat, (size_t)n, sizeof *lat, cmp);
    printf("llm.mock.latency.p50 %.1f us\n", lat[n / 2]);
    printf("llm.mock.latency.p99 %.1f us\n", lat[(n * 99) / 100]);
    printf("llm.mock.calls_per_s %.0f calls/s\n", n / secs);
    free(lat);
    th_llm_gateway_free(gw);
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
            fprintf(stderr, "usage: llm_bench [--quick] [--only PREFIX]\n");
            return 2;
        }
    }
    if (!wanted("llm"))
        return 0;
    /* 10k client sockets need more than the usual 1024 descriptors. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (wanted("llm.mock"))
        mock_bench(quick ? 2000 : 20000);
    if (wanted("llm.stream"))
        stream_bench(quick ? 1000 : 10000);
    return 0;
}
