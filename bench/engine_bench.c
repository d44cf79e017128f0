/*
 * engine_bench: throughput and latency figures of the taskhive engine over
 * its stores (memory, sqlite with normal and full durability), plus the
 * fsync latency of the disk the sqlite files live on, so the durable figures
 * can be judged against what the hardware allows.
 *
 * stdout carries only the figures, one per line as "<name> <value> <unit>",
 * for scripts to collect; progress, the chosen directory and the targets go
 * to stderr. End-to-end figures are the median of three runs (one with
 * --quick), since single runs on a small shared machine vary by a third.
 *
 *   engine_bench [--quick] [--only NAME-PREFIX]
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include <taskhive/taskhive.h>

#define BATCH 1000         /* tasks per th_engine_submit_batch */
#define MAX_REPS 3         /* end-to-end figures are the median of this many runs */
#define CONSUMERS 8        /* claiming threads in the end-to-end figures */
#define CLAIM_MAX 64       /* max_tasks of each claim */
#define CLAIM_WAIT_MS 50   /* consumers re-check the stop flag this often */
#define E2E_DEADLINE_S 600 /* give up on an end-to-end run after this */
#define LAT_DEADLINE_S 10  /* ... and on one latency round trip */
#define LAT_SETTLE_US 200  /* lets the consumer block in claim again */
#define FSYNC_BLOCKS 256   /* the fsync file is rewritten in place, as a WAL is */
#define FSYNC_BLOCK 4096

/* Targets from the project's goals; shown on stderr beside each figure. */
#define TARGET_E2E_MEMORY 500000.0
#define TARGET_E2E_SQLITE_NORMAL 100000.0
#define TARGET_E2E_SQLITE_FULL 50000.0
#define TARGET_LAT_P99_MEMORY_US 100.0
#define TARGET_LAT_P99_SQLITE_NORMAL_US 1000.0
#define TARGET_BACKLOG_RATIO 0.8

typedef enum store_kind {
    STORE_MEMORY = 0,
    STORE_SQLITE_NORMAL,
    STORE_SQLITE_FULL,
} store_kind;
#define NSTORES 3

static const char *const store_names[NSTORES] = {"memory", "sqlite_normal", "sqlite_full"};

typedef struct bench_config {
    int quick;
    const char *only; /* print only figures whose name starts with this */
    size_t e2e_tasks;
    size_t backlog_tasks;
    size_t lat_tasks;      /* memory and sqlite_normal */
    size_t lat_tasks_full; /* sqlite_full: each round trip costs two fsyncs */
    size_t fsync_iters;
    size_t reps; /* runs per end-to-end figure, <= MAX_REPS; the median is reported */
} bench_config;

typedef enum target_kind { TARGET_NONE, TARGET_MIN, TARGET_MAX } target_kind;

/* The temporary directory holding the sqlite files; removed at exit. */
static char g_dir[PATH_MAX];
static const char *g_only;

/* ---- small helpers ------------------------------------------------------ */

static int64_t now_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        perror("engine_bench: clock_gettime");
        abort();
    }
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_us(long us)
{
    struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void print_err(const char *what, int rc, const th_error *err)
{
    const char *field = err != NULL ? err->field : "";
    const char *msg = err != NULL ? err->message : "";
    fprintf(stderr, "engine_bench: %s: %s (%s)%s%s%s%s\n", what, th_errname(rc), th_strerror(rc),
            field[0] != '\0' ? " field=" : "", field, msg[0] != '\0' ? ": " : "", msg);
}

/* Fatal error: report it and exit; the atexit handler removes g_dir. */
static _Noreturn void die(const char *what, int rc, const th_error *err)
{
    print_err(what, rc, err);
    exit(1);
}

static _Noreturn void die_errno(const char *what)
{
    fprintf(stderr, "engine_bench: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (p == NULL) {
        errno = ENOMEM;
        die_errno("calloc");
    }
    return p;
}

static int wanted(const char *name)
{
    return g_only == NULL || strncmp(name, g_only, strlen(g_only)) == 0;
}

/* Prints a figure on stdout (when selected) and on stderr with its target. */
static void report(const char *name, double value, int decimals, const char *unit, target_kind tk,
                   double target)
{
    if (wanted(name)) {
        printf("%s %.*f %s\n", name, decimals, value, unit);
        fflush(stdout);
    }
    if (tk == TARGET_NONE) {
        fprintf(stderr, "  %-38s %12.*f %s\n", name, decimals, value, unit);
        return;
    }
    int met = tk == TARGET_MIN ? value >= target : value <= target;
    fprintf(stderr, "  %-38s %12.*f %-8s [target %s %.*f: %s]\n", name, decimals, value, unit,
            tk == TARGET_MIN ? ">=" : "<=", decimals, target, met ? "met" : "MISSED");
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted v[0..n-1]; p in (0, 1]. */
static double percentile(const double *v, size_t n, double p)
{
    if (n == 0)
        return 0.0;
    size_t rank = (size_t)ceil(p * (double)n);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return v[rank - 1];
}

/* ---- the temporary directory ------------------------------------------- */

static const char *fs_type_name(long type)
{
    switch ((unsigned long)type) {
    case 0xEF53UL:
        return "ext2/3/4";
    case 0x01021994UL:
        return "tmpfs";
    case 0x858458F6UL:
        return "ramfs";
    case 0x58465342UL:
        return "xfs";
    case 0x9123683EUL:
        return "btrfs";
    case 0x794C7630UL:
        return "overlayfs";
    case 0x2FC12FC1UL:
        return "zfs";
    case 0xF2F52010UL:
        return "f2fs";
    case 0x6969UL:
        return "nfs";
    case 0x01021997UL:
        return "9p";
    case 0x65735546UL:
        return "fuse";
    default:
        return "unknown";
    }
}

static int fs_in_memory(long type)
{
    return (unsigned long)type == 0x01021994UL || (unsigned long)type == 0x858458F6UL;
}

static void remove_bench_dir(void)
{
    if (g_dir[0] == '\0')
        return;
    DIR *d = opendir(g_dir);
    if (d != NULL) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            if (unlinkat(dirfd(d), de->d_name, 0) != 0)
                fprintf(stderr, "engine_bench: unlink %s/%s: %s\n", g_dir, de->d_name,
                        strerror(errno));
        }
        closedir(d);
    }
    if (rmdir(g_dir) != 0)
        fprintf(stderr, "engine_bench: rmdir %s: %s\n", g_dir, strerror(errno));
    g_dir[0] = '\0';
}

/*
 * Makes g_dir under $TMPDIR, /var/tmp or /tmp, preferring the first that is
 * on a real disk: /tmp is often tmpfs, where fsync costs nothing and the
 * durable figures would mean nothing.
 */
static void make_bench_dir(void)
{
    const char *cands[3];
    size_t ncands = 0;
    const char *env = getenv("TMPDIR");
    if (env != NULL && env[0] != '\0')
        cands[ncands++] = env;
    cands[ncands++] = "/var/tmp";
    cands[ncands++] = "/tmp";

    const char *chosen = NULL, *fallback = NULL;
    for (size_t i = 0; i < ncands && chosen == NULL; i++) {
        struct statfs sf;
        if (statfs(cands[i], &sf) != 0 || access(cands[i], W_OK | X_OK) != 0)
            continue;
        if (!fs_in_memory((long)sf.f_type))
            chosen = cands[i];
        else if (fallback == NULL)
            fallback = cands[i];
    }
    if (chosen == NULL) {
        if (fallback == NULL) {
            fprintf(stderr, "engine_bench: no writable temporary directory\n");
            exit(1);
        }
        chosen = fallback;
        fprintf(stderr, "engine_bench: warning: only memory-backed temporary directories; "
                        "the sqlite and disk figures will not reflect a disk\n");
    }
    int len = snprintf(g_dir, sizeof g_dir, "%s/taskhive-bench.XXXXXX", chosen);
    if (len < 0 || (size_t)len >= sizeof g_dir) {
        fprintf(stderr, "engine_bench: temporary directory path too long\n");
        exit(1);
    }
    if (mkdtemp(g_dir) == NULL) {
        g_dir[0] = '\0';
        die_errno("mkdtemp");
    }
    if (atexit(remove_bench_dir) != 0) {
        remove_bench_dir();
        fprintf(stderr, "engine_bench: atexit failed\n");
        exit(1);
    }
    struct statfs sf;
    if (statfs(g_dir, &sf) != 0)
        die_errno("statfs");
    fprintf(stderr, "engine_bench: files in %s (filesystem %s, magic 0x%lx)\n", g_dir,
            fs_type_name((long)sf.f_type), (unsigned long)sf.f_type);
}

/* ---- engines ------------------------------------------------------------ */

/* Opens a fresh engine; for sqlite the file g_dir/<tag>.db, whose path is
 * written to dbpath (empty for memory) for close_engine to delete. */
static th_engine *open_engine(store_kind kind, const char *tag, char *dbpath, size_t dbpath_size)
{
    char uri[PATH_MAX + 16];
    th_store_options so;
    th_store_options_init(&so);
    dbpath[0] = '\0';
    if (kind == STORE_MEMORY) {
        snprintf(uri, sizeof uri, "memory");
    } else {
        so.durability = kind == STORE_SQLITE_FULL ? TH_DURABILITY_FULL : TH_DURABILITY_NORMAL;
        int len = snprintf(dbpath, dbpath_size, "%s/%s.db", g_dir, tag);
        if (len < 0 || (size_t)len >= dbpath_size) {
            fprintf(stderr, "engine_bench: database path too long\n");
            exit(1);
        }
        len = snprintf(uri, sizeof uri, "sqlite:%s", dbpath);
        if (len < 0 || (size_t)len >= sizeof uri) {
            fprintf(stderr, "engine_bench: database uri too long\n");
            exit(1);
        }
    }
    th_error err = {0};
    th_store *st = th_store_open(uri, &so, &err);
    if (st == NULL)
        die("th_store_open", err.code, &err);
    th_engine_options eo;
    th_engine_options_init(&eo);
    th_engine *e = th_engine_new(st, &eo, &err);
    if (e == NULL)
        die("th_engine_new", err.code, &err);
    return e;
}

static void close_engine(th_engine *e, const char *dbpath)
{
    th_engine_free(e);
    if (dbpath[0] == '\0')
        return;
    static const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        char path[PATH_MAX + 16];
        snprintf(path, sizeof path, "%s%s", dbpath, suffixes[i]);
        if (unlink(path) != 0 && errno != ENOENT)
            fprintf(stderr, "engine_bench: unlink %s: %s\n", path, strerror(errno));
    }
}

/* Submits n tasks with payload "{}" to `queue` in batches of BATCH. */
static void submit_many(th_engine *e, const char *queue, size_t n, const char *progress_label)
{
    th_task_spec *specs = xcalloc(BATCH, sizeof *specs);
    char(*ids)[TH_ID_SIZE] = xcalloc(BATCH, sizeof *ids);
    for (size_t i = 0; i < BATCH; i++) {
        th_task_spec_init(&specs[i], queue);
        specs[i].payload = "{}";
    }
    size_t step = n / 10 > 0 ? n / 10 : 1, next = step;
    int tty = isatty(STDERR_FILENO);
    for (size_t off = 0; off < n; off += BATCH) {
        size_t k = n - off < BATCH ? n - off : BATCH;
        th_error err = {0};
        int rc = th_engine_submit_batch(e, specs, k, ids, &err);
        if (rc < 0)
            die("th_engine_submit_batch", rc, &err);
        if (progress_label != NULL && tty && off + k >= next) {
            fprintf(stderr, "  %s: %zu/%zu submitted\r", progress_label, off + k, n);
            next += step;
        }
    }
    if (progress_label != NULL && tty)
        fprintf(stderr, "\n");
    free(ids);
    free(specs);
}

/* ---- (a) and (d): end to end -------------------------------------------- */

typedef struct e2e_shared {
    th_engine *e;
    size_t total;
    atomic_size_t done;
    atomic_int stop;
    atomic_int failed;
    atomic_llong t_end; /* when the last timed task's completion returned */
} e2e_shared;

static void *e2e_consumer(void *arg)
{
    e2e_shared *s = arg;
    static const char *const queues[] = {"bench"};
    th_claim_options co = {
        .queues = queues,
        .nqueues = 1,
        .max_tasks = CLAIM_MAX,
        .lease_ms = 600000,
        .wait_ms = CLAIM_WAIT_MS,
        .worker = "engine_bench",
    };
    th_task *tasks[CLAIM_MAX];
    th_completion items[CLAIM_MAX];
    while (!atomic_load(&s->stop)) {
        th_error err = {0};
        int n = th_engine_claim(s->e, &co, tasks, &err);
        if (n == 0)
            continue;
        if (n < 0) {
            print_err("th_engine_claim", n, &err);
            atomic_store(&s->failed, 1);
            atomic_store(&s->stop, 1);
            break;
        }
        for (int i = 0; i < n; i++)
            items[i] = (th_completion){.id = tasks[i]->id, .lease = tasks[i]->lease};
        int ok = th_engine_complete_batch(s->e, items, (size_t)n);
        if (ok != n) {
            if (ok < 0)
                print_err("th_engine_complete_batch", ok, NULL);
            for (int i = 0; i < n && ok >= 0; i++)
                if (items[i].rc < 0) {
                    print_err("th_engine_complete_batch item", items[i].rc, NULL);
                    break;
                }
            atomic_store(&s->failed, 1);
            atomic_store(&s->stop, 1);
        }
        for (int i = 0; i < n; i++)
            th_task_free(tasks[i]);
        if (ok != n)
            break;
        size_t before = atomic_fetch_add(&s->done, (size_t)n);
        if (before < s->total && before + (size_t)n >= s->total) {
            atomic_store(&s->t_end, (long long)now_ns());
            atomic_store(&s->stop, 1);
        }
    }
    return NULL;
}

/*
 * One timed phase: submits `total` tasks to queue "bench" in batches while
 * CONSUMERS threads claim and complete them. Returns tasks per second from
 * the first submit to the last completion.
 */
static double e2e_phase(th_engine *e, size_t total, const char *tag)
{
    e2e_shared sh = {.e = e, .total = total};
    atomic_init(&sh.done, 0);
    atomic_init(&sh.stop, 0);
    atomic_init(&sh.failed, 0);
    atomic_init(&sh.t_end, 0);
    pthread_t th[CONSUMERS];
    for (int i = 0; i < CONSUMERS; i++) {
        int rc = pthread_create(&th[i], NULL, e2e_consumer, &sh);
        if (rc != 0) {
            errno = rc;
            die_errno("pthread_create");
        }
    }
    sleep_us(20000); /* let every consumer block in claim */

    int64_t t0 = now_ns();
    submit_many(e, "bench", total, NULL);
    int64_t deadline = t0 + (int64_t)E2E_DEADLINE_S * 1000000000;
    while (!atomic_load(&sh.stop) && now_ns() < deadline)
        sleep_us(5000);
    atomic_store(&sh.stop, 1);
    for (int i = 0; i < CONSUMERS; i++) {
        int rc = pthread_join(th[i], NULL);
        if (rc != 0) {
            errno = rc;
            die_errno("pthread_join");
        }
    }
    if (atomic_load(&sh.failed))
        die("end-to-end run", TH_EIO, NULL);
    size_t done = atomic_load(&sh.done);
    if (done < total) {
        fprintf(stderr, "engine_bench: %s: only %zu of %zu tasks completed in %d s\n", tag, done,
                total, E2E_DEADLINE_S);
        exit(1);
    }
    double secs = (double)(atomic_load(&sh.t_end) - t0) / 1e9;
    return (double)total / secs;
}

/*
 * Figure (a), or (d) with `backlog` > 0: the median of cfg->reps timed
 * phases. Without a backlog each phase gets a fresh engine; with one, the
 * backlog (that many tasks left pending in queue "old") is made once and
 * every phase runs on top of it.
 */
static double run_e2e(const bench_config *cfg, store_kind kind, size_t backlog)
{
    char dbpath[PATH_MAX];
    char tag[64];
    double rates[MAX_REPS];
    snprintf(tag, sizeof tag, "%s-%s", backlog > 0 ? "backlog" : "e2e", store_names[kind]);
    fprintf(stderr, "%s: %zu tasks, %d consumers, median of %zu runs%s\n", tag, cfg->e2e_tasks,
            CONSUMERS, cfg->reps, backlog > 0 ? ", over a backlog" : "");

    th_engine *e = NULL;
    if (backlog > 0) {
        e = open_engine(kind, tag, dbpath, sizeof dbpath);
        int64_t t0 = now_ns();
        submit_many(e, "old", backlog, "backlog");
        int rc = th_engine_flush(e);
        if (rc < 0)
            die("th_engine_flush", rc, NULL);
        double s = (double)(now_ns() - t0) / 1e9;
        fprintf(stderr, "  backlog of %zu pending tasks in %.1f s (%.0f tasks/s)\n", backlog, s,
                (double)backlog / s);
    }
    for (size_t r = 0; r < cfg->reps; r++) {
        if (backlog == 0)
            e = open_engine(kind, tag, dbpath, sizeof dbpath);
        rates[r] = e2e_phase(e, cfg->e2e_tasks, tag);
        fprintf(stderr, "  run %zu: %.0f tasks/s\n", r + 1, rates[r]);
        if (backlog == 0)
            close_engine(e, dbpath);
    }
    if (backlog > 0)
        close_engine(e, dbpath);
    qsort(rates, cfg->reps, sizeof rates[0], cmp_double);
    return rates[cfg->reps / 2];
}

/* ---- (b): latency from submit to claim ----------------------------------- */

typedef struct lat_shared {
    th_engine *e;
    size_t total;
    int64_t *t_claim;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t received; /* under mu */
    int failed;      /* under mu */
} lat_shared;

static void *lat_consumer(void *arg)
{
    lat_shared *s = arg;
    static const char *const queues[] = {"latency"};
    th_claim_options co = {
        .queues = queues,
        .nqueues = 1,
        .max_tasks = 1,
        .lease_ms = 600000,
        .wait_ms = -1,
        .worker = "engine_bench",
    };
    for (size_t i = 0; i < s->total; i++) {
        th_task *task = NULL;
        th_error err = {0};
        int n;
        while ((n = th_engine_claim(s->e, &co, &task, &err)) == 0) {
        }
        int64_t t = now_ns();
        int rc = n;
        if (n > 0) {
            rc = th_engine_complete(s->e, task->id, task->lease, NULL, &err);
            th_task_free(task);
        }
        if (rc < 0)
            print_err(n < 0 ? "th_engine_claim" : "th_engine_complete", rc, &err);
        pthread_mutex_lock(&s->mu);
        if (rc < 0) {
            s->failed = 1;
        } else {
            s->t_claim[i] = t;
            s->received++;
        }
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        if (rc < 0)
            return NULL;
    }
    return NULL;
}

/*
 * Submits n tasks one at a time to an idle consumer blocked in claim and
 * measures from submit's return to claim's return. Writes p50 and p99 in
 * microseconds.
 */
static void run_latency(store_kind kind, size_t n, double *p50, double *p99)
{
    char dbpath[PATH_MAX];
    char tag[64];
    snprintf(tag, sizeof tag, "latency-%s", store_names[kind]);
    fprintf(stderr, "%s: %zu tasks, one at a time\n", tag, n);
    th_engine *e = open_engine(kind, tag, dbpath, sizeof dbpath);

    lat_shared s = {.e = e, .total = n};
    s.t_claim = xcalloc(n, sizeof *s.t_claim);
    int64_t *t_submit = xcalloc(n, sizeof *t_submit);
    int64_t *t_call = xcalloc(n, sizeof *t_call);
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0 || pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0 ||
        pthread_cond_init(&s.cv, &ca) != 0 || pthread_mutex_init(&s.mu, NULL) != 0) {
        fprintf(stderr, "engine_bench: pthread init failed\n");
        exit(1);
    }
    pthread_condattr_destroy(&ca);

    pthread_t th;
    int rc = pthread_create(&th, NULL, lat_consumer, &s);
    if (rc != 0) {
        errno = rc;
        die_errno("pthread_create");
    }
    sleep_us(20000);

    th_task_spec spec;
    th_task_spec_init(&spec, "latency");
    spec.payload = "{}";
    for (size_t i = 0; i < n; i++) {
        char id[TH_ID_SIZE];
        th_error err = {0};
        t_call[i] = now_ns();
        rc = th_engine_submit(e, &spec, id, &err);
        t_submit[i] = now_ns();
        if (rc < 0)
            die("th_engine_submit", rc, &err);
        struct timespec dl;
        if (clock_gettime(CLOCK_MONOTONIC, &dl) != 0)
            die_errno("clock_gettime");
        dl.tv_sec += LAT_DEADLINE_S;
        pthread_mutex_lock(&s.mu);
        while (s.received <= i && !s.failed) {
            if (pthread_cond_timedwait(&s.cv, &s.mu, &dl) == ETIMEDOUT)
                break;
        }
        int got = s.received > i, failed = s.failed;
        pthread_mutex_unlock(&s.mu);
        if (failed)
            die("latency consumer", TH_EIO, NULL);
        if (!got) {
            fprintf(stderr, "engine_bench: %s: task %zu not claimed within %d s\n", tag, i,
                    LAT_DEADLINE_S);
            exit(1);
        }
        sleep_us(LAT_SETTLE_US);
    }
    rc = pthread_join(th, NULL);
    if (rc != 0) {
        errno = rc;
        die_errno("pthread_join");
    }

    /* Claim may return before submit does (the submitter is descheduled
     * after waking the consumer); such samples count as 0. */
    double *us = xcalloc(n, sizeof *us);
    size_t early = 0;
    int64_t earliest = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t d = s.t_claim[i] - t_submit[i];
        if (d < 0) {
            early++;
            if (d < earliest)
                earliest = d;
            d = 0;
        }
        us[i] = (double)d / 1000.0;
    }
    qsort(us, n, sizeof *us, cmp_double);
    *p50 = percentile(us, n, 0.50);
    *p99 = percentile(us, n, 0.99);
    if (early > 0)
        fprintf(stderr,
                "  %zu of %zu claims returned before their submit did, by up to %.1f us "
                "(counted as 0)\n",
                early, n, (double)-earliest / 1000.0);
    fprintf(stderr, "  max %.1f us\n", us[n - 1]);
    /* For context: from submit's call, which includes its durable commit. */
    for (size_t i = 0; i < n; i++)
        us[i] = (double)(s.t_claim[i] - t_call[i]) / 1000.0;
    qsort(us, n, sizeof *us, cmp_double);
    fprintf(stderr, "  from submit's call instead: p50 %.1f us, p99 %.1f us\n",
            percentile(us, n, 0.50), percentile(us, n, 0.99));

    free(us);
    free(t_call);
    free(t_submit);
    free(s.t_claim);
    pthread_cond_destroy(&s.cv);
    pthread_mutex_destroy(&s.mu);
    close_engine(e, dbpath);
}

/* ---- (c): fsync latency of the disk -------------------------------------- */

/* Rewrites 4 KiB blocks of a preallocated file in place with fdatasync after
 * each, as a WAL after its first checkpoint is; writes p50 and p99 in us. */
static void run_fsync(size_t iters, double *p50, double *p99)
{
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/fsync.bin", g_dir);
    fprintf(stderr, "disk.fsync: %zu x (pwrite 4 KiB + fdatasync) in %s\n", iters, g_dir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        die_errno("open fsync file");
    static unsigned char buf[FSYNC_BLOCK];
    memset(buf, 0xA5, sizeof buf);
    for (size_t b = 0; b < FSYNC_BLOCKS; b++) {
        if (pwrite(fd, buf, sizeof buf, (off_t)(b * FSYNC_BLOCK)) != (ssize_t)sizeof buf)
            die_errno("pwrite");
    }
    if (fsync(fd) != 0)
        die_errno("fsync");

    double *us = xcalloc(iters, sizeof *us);
    for (size_t i = 0; i < iters; i++) {
        buf[0] = (unsigned char)i;
        int64_t t0 = now_ns();
        if (pwrite(fd, buf, sizeof buf, (off_t)((i % FSYNC_BLOCKS) * FSYNC_BLOCK)) !=
            (ssize_t)sizeof buf)
            die_errno("pwrite");
        if (fdatasync(fd) != 0)
            die_errno("fdatasync");
        us[i] = (double)(now_ns() - t0) / 1000.0;
    }
    if (close(fd) != 0)
        die_errno("close");
    if (unlink(path) != 0)
        die_errno("unlink");
    qsort(us, iters, sizeof *us, cmp_double);
    *p50 = percentile(us, iters, 0.50);
    *p99 = percentile(us, iters, 0.99);
    free(us);
}

/* ---- main --------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f, "usage: engine_bench [--quick] [--only NAME-PREFIX]\n"
               "  --quick         smaller sizes (a quick look, not the figures of record)\n"
               "  --only PREFIX   print only figures whose name starts with PREFIX\n");
}

static int any_wanted(const char *prefix, const char *const *suffixes, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char name[128];
        snprintf(name, sizeof name, "%s%s", prefix, suffixes[i]);
        if (wanted(name))
            return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    bench_config cfg = {
        .e2e_tasks = 100000,
        .backlog_tasks = 1000000,
        .lat_tasks = 10000,
        .lat_tasks_full = 2000,
        .fsync_iters = 1000,
        .reps = MAX_REPS,
    };
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            cfg.quick = 1;
        } else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
            cfg.only = argv[++i];
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (cfg.quick) {
        cfg.e2e_tasks = 20000;
        cfg.backlog_tasks = 100000;
        cfg.lat_tasks = 2000;
        cfg.lat_tasks_full = 300;
        cfg.fsync_iters = 300;
        cfg.reps = 1;
    }
    g_only = cfg.only;

    static const char *const all_names[] = {
        "disk.fsync.p50",
        "disk.fsync.p99",
        "engine.e2e.memory",
        "engine.e2e.sqlite_normal",
        "engine.e2e.sqlite_full",
        "engine.latency.memory.p50",
        "engine.latency.memory.p99",
        "engine.latency.sqlite_normal.p50",
        "engine.latency.sqlite_normal.p99",
        "engine.latency.sqlite_full.p50",
        "engine.latency.sqlite_full.p99",
        "engine.e2e_backlog.memory",
        "engine.e2e_backlog.sqlite_normal",
        "engine.backlog_ratio.memory",
        "engine.backlog_ratio.sqlite_normal",
    };
    if (!any_wanted("", all_names, sizeof all_names / sizeof all_names[0])) {
        fprintf(stderr, "engine_bench: no figure's name starts with '%s'\n", cfg.only);
        return 2;
    }
    static const char *const pcts[] = {".p50", ".p99"};
    static const char *const none[] = {""};

    fprintf(stderr, "engine_bench: taskhive %s%s\n", th_version(), cfg.quick ? ", quick" : "");
    make_bench_dir();

    /* (c) first: the sqlite_full latency target is relative to it. */
    double fs50 = 0, fs99 = 0;
    int have_fsync = 0;
    if (any_wanted("disk.fsync", pcts, 2) || any_wanted("engine.latency.sqlite_full", pcts, 2)) {
        run_fsync(cfg.fsync_iters, &fs50, &fs99);
        have_fsync = 1;
        report("disk.fsync.p50", fs50, 1, "us", TARGET_NONE, 0);
        report("disk.fsync.p99", fs99, 1, "us", TARGET_NONE, 0);
    }

    /* (a) */
    static const double e2e_targets[NSTORES] = {TARGET_E2E_MEMORY, TARGET_E2E_SQLITE_NORMAL,
                                                TARGET_E2E_SQLITE_FULL};
    double e2e[NSTORES] = {0};
    for (int k = 0; k < NSTORES; k++) {
        char name[128], ratio_name[128];
        snprintf(name, sizeof name, "engine.e2e.%s", store_names[k]);
        snprintf(ratio_name, sizeof ratio_name, "engine.backlog_ratio.%s", store_names[k]);
        int need_for_ratio = k != STORE_SQLITE_FULL && wanted(ratio_name);
        if (!wanted(name) && !need_for_ratio)
            continue;
        e2e[k] = run_e2e(&cfg, (store_kind)k, 0);
        report(name, e2e[k], 0, "tasks/s", TARGET_MIN, e2e_targets[k]);
    }

    /* (b) */
    for (int k = 0; k < NSTORES; k++) {
        char prefix[128];
        snprintf(prefix, sizeof prefix, "engine.latency.%s", store_names[k]);
        if (!any_wanted(prefix, pcts, 2))
            continue;
        size_t n = k == STORE_SQLITE_FULL ? cfg.lat_tasks_full : cfg.lat_tasks;
        if (k == STORE_SQLITE_FULL)
            fprintf(stderr,
                    "note: sqlite_full latency uses %zu tasks, not %zu: every round trip "
                    "costs two fsyncs\n",
                    n, cfg.lat_tasks);
        double p50, p99;
        run_latency((store_kind)k, n, &p50, &p99);
        char name[160];
        snprintf(name, sizeof name, "%s.p50", prefix);
        report(name, p50, 1, "us", TARGET_NONE, 0);
        snprintf(name, sizeof name, "%s.p99", prefix);
        if (k == STORE_MEMORY)
            report(name, p99, 1, "us", TARGET_MAX, TARGET_LAT_P99_MEMORY_US);
        else if (k == STORE_SQLITE_NORMAL)
            report(name, p99, 1, "us", TARGET_MAX, TARGET_LAT_P99_SQLITE_NORMAL_US);
        else if (have_fsync)
            report(name, p99, 1, "us", TARGET_MAX, 2.0 * fs99);
        else
            report(name, p99, 1, "us", TARGET_NONE, 0);
    }

    /* (d) */
    for (int k = 0; k < NSTORES; k++) {
        if (k == STORE_SQLITE_FULL)
            continue;
        char name[128], ratio_name[128];
        snprintf(name, sizeof name, "engine.e2e_backlog.%s", store_names[k]);
        snprintf(ratio_name, sizeof ratio_name, "engine.backlog_ratio.%s", store_names[k]);
        if (!any_wanted(name, none, 1) && !wanted(ratio_name))
            continue;
        double v = run_e2e(&cfg, (store_kind)k, cfg.backlog_tasks);
        report(name, v, 0, "tasks/s", TARGET_NONE, 0);
        if (e2e[k] > 0)
            report(ratio_name, v / e2e[k], 2, "ratio", TARGET_MIN, TARGET_BACKLOG_RATIO);
    }

    remove_bench_dir();
    return 0;
}
