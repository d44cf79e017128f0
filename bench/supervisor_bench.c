/*
 * Supervisor benchmarks. Prints "<name> <value> <unit>" lines on stdout.
 *
 *   supervisor.start50.ms        time for th_supervisor_start_all to bring 50
 *                                trivial services (sleep) to "running"
 *   supervisor.rss.50 / .1000    RSS of this process (the supervisor's side)
 *                                while supervising 50 and 1000 processes
 *   supervisor.restart.p50/p99   kill -9 of a service's process -> its
 *                                replacement running (backoff 10 ms)
 *
 * Usage: supervisor_bench [--quick] [--only PREFIX]
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "taskhive/supervisor.h"

static const char *only;

static int wanted(const char *name)
{
    return !only || strncmp(name, only, strlen(only)) == 0;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static size_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long a = 0, b = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &a, &b) != 2)
            b = 0;
        fclose(f);
    }
    return (size_t)b * (size_t)sysconf(_SC_PAGESIZE);
}

static void die(const char *what, const th_error *e)
{
    fprintf(stderr, "supervisor_bench: %s: %s\n", what, e ? e->message : "failed");
    exit(1);
}

/* Counts services whose every instance is running. */
static size_t running(th_supervisor *sv)
{
    th_service_info *v;
    size_t n, r = 0;
    if (th_supervisor_list(sv, NULL, &v, &n, NULL))
        return 0;
    for (size_t i = 0; i < n; i++)
        r += v[i].state == TH_SVC_RUNNING;
    th_service_info_free(v);
    return r;
}

static th_supervisor *with_services(int n, const char *dir, double *start_ms)
{
    th_supervisor_options o;
    th_supervisor_options_init(&o);
    o.log_dir = dir;
    th_error e;
    th_supervisor *sv = th_supervisor_new(&o, &e);
    if (!sv)
        die("new", &e);
    static const char *const argv[] = {"sleep", "3600"};
    for (int i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof name, "svc-%d", i);
        th_service_spec s;
        th_service_spec_init(&s, name);
        s.argv = argv;
        s.argc = 2;
        s.backoff_initial_ms = 10; /* the smallest allowed, and kept there: */
        s.backoff_max_ms = 10;     /* otherwise it doubles on each restart */
        s.max_restarts = -1;
        s.stop_timeout_ms = 2000;
        if (th_supervisor_add(sv, &s, &e))
            die("add", &e);
    }
    double t0 = now_ms();
    if (th_supervisor_start_all(sv, &e))
        die("start_all", &e);
    for (int waited = 0; running(sv) < (size_t)n; waited++) {
        if (waited > 60000) { /* a minute: something is wrong */
            th_service_info *v;
            size_t k;
            if (th_supervisor_list(sv, NULL, &v, &k, NULL) == 0 && k) {
                fprintf(stderr, "supervisor_bench: %zu/%d running; first: %s (%s)\n", running(sv),
                        n, th_service_state_name(v[0].state), v[0].status);
                th_service_info_free(v);
            }
            die("services did not all reach running", NULL);
        }
        usleep(1000);
    }
    *start_ms = now_ms() - t0;
    return sv;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
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
            fprintf(stderr, "usage: supervisor_bench [--quick] [--only PREFIX]\n");
            return 2;
        }
    }
    if (!wanted("supervisor"))
        return 0;
    char dir[] = "/tmp/th-sv-bench.XXXXXX";
    if (!mkdtemp(dir))
        die("mkdtemp", NULL);
    size_t base = rss_bytes();
    double ms;
    th_supervisor *sv = with_services(50, dir, &ms);
    printf("supervisor.start50.ms %.1f ms\n", ms);
    printf("supervisor.rss.50 %.1f MiB\n", (double)rss_bytes() / (1 << 20));
    if (wanted("supervisor.restart")) {
        int rounds = quick ? 20 : 100;
        double *lat = calloc((size_t)rounds, sizeof *lat);
        for (int r = 0; r < rounds; r++) {
            th_service_info *v;
            size_t n;
            if (th_supervisor_list(sv, "svc-0", &v, &n, NULL) || !n)
                die("list", NULL);
            int pid = v[0].pid;
            th_service_info_free(v);
            double t0 = now_ms();
            kill(pid, SIGKILL);
            for (;;) {
                if (th_supervisor_list(sv, "svc-0", &v, &n, NULL) == 0 && n) {
                    int ok = v[0].pid != pid && v[0].pid > 0 && v[0].state == TH_SVC_RUNNING;
                    th_service_info_free(v);
                    if (ok)
                        break;
                }
                usleep(100);
            }
            lat[r] = now_ms() - t0;
        }
        qsort(lat, (size_t)rounds, sizeof *lat, cmp);
        printf("supervisor.restart.p50 %.2f ms\nsupervisor.restart.p99 %.2f ms\n", lat[rounds / 2],
               lat[(rounds * 99) / 100]);
        free(lat);
    }
    th_supervisor_free(sv);
    if (!quick && wanted("supervisor.rss")) {
        sv = with_services(1000, dir, &ms);
        printf("supervisor.rss.1000 %.1f MiB\n", (double)rss_bytes() / (1 << 20));
        fprintf(stderr, "  1000 services running after %.0f ms; RSS before any: %.1f MiB\n", ms,
                (double)base / (1 << 20));
        th_supervisor_free(sv);
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "supervisor_bench: could not remove %s\n", dir);
    return 0;
}
