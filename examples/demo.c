/*
 * demo: taskhive's main job until the daemon exists. Opens (creating) a
 * sqlite store, submits a small batch of tasks to queue "demo", runs them on
 * four worker threads with real handlers, prints every engine event as it
 * happens, and ends with a table of the batch and the engine's metrics.
 *
 *   demo [DB_PATH]        (default: taskhive-demo.db in the current directory)
 *
 * Running it again on the same file adds another batch beside the old ones.
 *
 * Handlers, chosen by the payload's "op":
 *   sum      {"op":"sum","n":N}         sums 1..N
 *   sha      {"op":"sha","text":T}      SHA-256 of T
 *   flaky    {"op":"flaky"}             fails its first attempt, succeeds on retry
 *   combine  {"op":"combine"}           reads its two dependencies' results
 *                                       (a sum and a sha) and digests them together
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <taskhive/taskhive.h>

#define NWORKERS 4
#define MAX_TASKS 8
#define WAIT_ALL_S 10     /* give up on the batch after this */
#define CLAIM_WAIT_MS 100 /* workers re-check the stop flag this often */
#define RESULT_COLUMN 120 /* longer results are cut in the table */

typedef struct demo {
    th_engine *e;
    atomic_int stop;
    atomic_int errors; /* failed engine calls in workers */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* This run's batch, under mu once the workers run. */
    char ids[MAX_TASKS][TH_ID_SIZE];
    const char *kinds[MAX_TASKS];
    int final[MAX_TASKS];
    size_t ntasks;
    size_t nfinal;
} demo;

typedef struct worker {
    demo *d;
    pthread_t thread;
    char name[16];
} worker;

/* ---- SHA-256 (FIPS 180-4), enough for short texts ------------------------ */

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t ror32(uint32_t x, int n)
{
    return (x >> n) | (x << (32 - n));
}

static void sha256_block(uint32_t h[8], const unsigned char *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror32(w[i - 15], 7) ^ ror32(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror32(w[i - 2], 17) ^ ror32(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = hh + (ror32(e, 6) ^ ror32(e, 11) ^ ror32(e, 25)) + ((e & f) ^ (~e & g)) +
                      sha_k[i] + w[i];
        uint32_t t2 = (ror32(a, 2) ^ ror32(a, 13) ^ ror32(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
}

/* Writes the hex SHA-256 of msg[0..len-1] and a NUL to out. */
static void sha256_hex(const char *msg, size_t len, char out[65])
{
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    const unsigned char *p = (const unsigned char *)msg;
    size_t i = 0;
    for (; len - i >= 64; i += 64)
        sha256_block(h, p + i);
    unsigned char tail[128] = {0};
    size_t rem = len - i;
    memcpy(tail, p + i, rem);
    tail[rem] = 0x80;
    size_t tlen = rem + 1 + 8 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int k = 0; k < 8; k++)
        tail[tlen - 1 - (size_t)k] = (unsigned char)(bits >> (8 * k));
    sha256_block(h, tail);
    if (tlen == 128)
        sha256_block(h, tail + 64);
    for (int k = 0; k < 8; k++)
        snprintf(out + 8 * k, 9, "%08" PRIx32, h[k]);
}

/* ---- handlers ------------------------------------------------------------ */

/* A handler returns the result (a new reference) or NULL with `msg` set;
 * *permanent = 1 means retrying cannot help. */
typedef json_t *(*handler_fn)(demo *d, const th_task *t, json_t *payload, char *msg, size_t msgsz,
                              int *permanent);

static json_t *op_sum(demo *d, const th_task *t, json_t *payload, char *msg, size_t msgsz,
                      int *permanent)
{
    json_t *jn = json_object_get(payload, "n");
    if (!json_is_integer(jn) || json_integer_value(jn) < 0 || json_integer_value(jn) > 1000000000) {
        snprintf(msg, msgsz, "sum: \"n\" must be an integer in [0, 1e9]");
        *permanent = 1;
        return NULL;
    }
    uint64_t n = (uint64_t)json_integer_value(jn), sum = 0;
    for (uint64_t i = 1; i <= n; i++) {
        sum += i;
        if (i == n / 2) {
            th_error err = {0};
            int rc = th_engine_progress(d->e, t->id, t->lease, 50, 1, 2, "halfway", &err);
            if (rc < 0) {
                snprintf(msg, msgsz, "progress: %s", th_errname(rc));
                return NULL;
            }
        }
    }
    json_t *r = json_pack("{s:I, s:I}", "n", (json_int_t)n, "sum", (json_int_t)sum);
    if (r == NULL)
        snprintf(msg, msgsz, "out of memory");
    return r;
}

static json_t *op_sha(demo *d, const th_task *t, json_t *payload, char *msg, size_t msgsz,
                      int *permanent)
{
    json_t *jt = json_object_get(payload, "text");
    if (!json_is_string(jt)) {
        snprintf(msg, msgsz, "sha: \"text\" must be a string");
        *permanent = 1;
        return NULL;
    }
    char hex[65];
    sha256_hex(json_string_value(jt), json_string_length(jt), hex);
    json_t *r = json_pack("{s:I, s:s}", "bytes", (json_int_t)json_string_length(jt), "sha256", hex);
    if (r == NULL)
        snprintf(msg, msgsz, "out of memory");
    return r;
}

static json_t *op_flaky(demo *d, const th_task *t, json_t *payload, char *msg, size_t msgsz,
                        int *permanent)
{
    if (t->attempt <= 1) {
        snprintf(msg, msgsz, "simulated transient failure on attempt %d", t->attempt);
        return NULL;
    }
    json_t *r = json_pack("{s:b, s:i}", "ok", 1, "attempt", t->attempt);
    if (r == NULL)
        snprintf(msg, msgsz, "out of memory");
    return r;
}

static json_t *op_combine(demo *d, const th_task *t, json_t *payload, char *msg, size_t msgsz,
                          int *permanent)
{
    json_int_t sum = 0;
    char sha[65] = "";
    int have_sum = 0;
    for (size_t i = 0; i < t->ndeps; i++) {
        th_task *dep = NULL;
        th_error err = {0};
        int rc = th_engine_get(d->e, t->deps[i], &dep, &err);
        if (rc < 0) {
            snprintf(msg, msgsz, "get %s: %s", t->deps[i], th_errname(rc));
            return NULL;
        }
        json_t *res = NULL;
        if (dep->state == TH_TASK_COMPLETED && dep->result != NULL)
            res = json_loads(dep->result, 0, NULL);
        th_task_free(dep);
        json_t *js = json_object_get(res, "sum");
        json_t *jh = json_object_get(res, "sha256");
        if (json_is_integer(js)) {
            sum = json_integer_value(js);
            have_sum = 1;
        }
        if (json_is_string(jh))
            snprintf(sha, sizeof sha, "%s", json_string_value(jh));
        json_decref(res);
    }
    if (!have_sum || sha[0] == '\0') {
        snprintf(msg, msgsz, "combine: needs a completed sum and sha dependency");
        *permanent = 1;
        return NULL;
    }
    char joined[96], digest[65];
    int len = snprintf(joined, sizeof joined, "%" JSON_INTEGER_FORMAT ":%s", sum, sha);
    if (len < 0 || (size_t)len >= sizeof joined) {
        snprintf(msg, msgsz, "combine: inputs too long");
        *permanent = 1;
        return NULL;
    }
    sha256_hex(joined, (size_t)len, digest);
    json_t *r = json_pack("{s:s, s:I, s:s}", "digest", digest, "sum", sum, "sha256", sha);
    if (r == NULL)
        snprintf(msg, msgsz, "out of memory");
    return r;
}

static handler_fn find_handler(const char *op)
{
    static const struct {
        const char *op;
        handler_fn fn;
    } table[] = {
        {"sum", op_sum},
        {"sha", op_sha},
        {"flaky", op_flaky},
        {"combine", op_combine},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(op, table[i].op) == 0)
            return table[i].fn;
    return NULL;
}

/* Runs one claimed task and reports its outcome to the engine. */
static void run_task(demo *d, const worker *w, const th_task *t)
{
    char msg[256] = "";
    int permanent = 0;
    json_t *result = NULL;
    json_error_t jerr;
    json_t *payload = json_loads(t->payload, 0, &jerr);
    json_t *jop = json_object_get(payload, "op");
    handler_fn fn = json_is_string(jop) ? find_handler(json_string_value(jop)) : NULL;
    if (payload == NULL) {
        snprintf(msg, sizeof msg, "payload is not JSON: %s", jerr.text);
        permanent = 1;
    } else if (fn == NULL) {
        snprintf(msg, sizeof msg, "no handler for this payload");
        permanent = 1;
    } else {
        th_error err = {0};
        char line[128];
        snprintf(line, sizeof line, "%s runs op=%s", w->name, json_string_value(jop));
        int rc = th_engine_log(d->e, t->id, t->lease, TH_LOG_INFO, line, NULL, &err);
        if (rc < 0) {
            fprintf(stderr, "demo: th_engine_log %s: %s\n", t->id, th_errname(rc));
            atomic_fetch_add(&d->errors, 1);
        }
        result = fn(d, t, payload, msg, sizeof msg, &permanent);
    }
    json_decref(payload);

    th_error err = {0};
    int rc;
    if (result != NULL) {
        char *text = json_dumps(result, JSON_COMPACT);
        json_decref(result);
        if (text == NULL) {
            rc = th_engine_fail(d->e, t->id, t->lease, "out of memory", 0, &err);
        } else {
            rc = th_engine_complete(d->e, t->id, t->lease, text, &err);
            free(text);
        }
    } else {
        rc = th_engine_fail(d->e, t->id, t->lease, msg, permanent ? TH_FAIL_PERMANENT : 0, &err);
    }
    if (rc < 0) {
        fprintf(stderr, "demo: reporting %s: %s (%s)\n", t->id, th_errname(rc), err.message);
        atomic_fetch_add(&d->errors, 1);
    }
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    demo *d = w->d;
    static const char *const queues[] = {"demo"};
    th_claim_options co = {
        .queues = queues,
        .nqueues = 1,
        .max_tasks = 1,
        .lease_ms = 10000,
        .wait_ms = CLAIM_WAIT_MS,
        .worker = w->name,
    };
    while (!atomic_load(&d->stop)) {
        th_task *t[1] = {NULL};
        th_error err = {0};
        int n = th_engine_claim(d->e, &co, t, &err);
        if (n == TH_ECLOSED)
            break;
        if (n < 0) {
            fprintf(stderr, "demo: %s: th_engine_claim: %s (%s)\n", w->name, th_errname(n),
                    err.message);
            atomic_fetch_add(&d->errors, 1);
            break;
        }
        if (n == 0)
            continue;
        run_task(d, w, t[0]);
        th_task_free(t[0]);
    }
    return NULL;
}

/* ---- events -------------------------------------------------------------- */

static void format_ms(int64_t ms, char *buf, size_t size)
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    char hms[16];
    if (localtime_r(&secs, &tm) == NULL || strftime(hms, sizeof hms, "%H:%M:%S", &tm) == 0)
        snprintf(hms, sizeof hms, "?");
    snprintf(buf, size, "%s.%03d", hms, (int)(ms % 1000));
}

/* Prints one line per event and counts this batch's tasks reaching a final
 * state. Called from whichever thread caused the event. */
static void on_event(const th_event *ev, void *ud)
{
    demo *d = ud;
    char when[32];
    format_ms(ev->time_ms, when, sizeof when);
    printf("%s  #%-4" PRIu64 " %-16s %s  %-9s %s\n", when, ev->seq, th_event_type_name(ev->type),
           ev->task_id != NULL ? ev->task_id : "-", th_task_state_name(ev->state),
           ev->message != NULL ? ev->message : "");
    if (ev->task_id == NULL || !th_task_state_is_final(ev->state))
        return;
    pthread_mutex_lock(&d->mu);
    for (size_t i = 0; i < d->ntasks; i++) {
        if (!d->final[i] && strcmp(d->ids[i], ev->task_id) == 0) {
            d->final[i] = 1;
            d->nfinal++;
            pthread_cond_broadcast(&d->cv);
        }
    }
    pthread_mutex_unlock(&d->mu);
}

/* ---- main ---------------------------------------------------------------- */

/* Submits one task of the batch; its id goes to d->ids. */
static int submit(demo *d, const char *kind, const char *payload, const char *const *deps,
                  size_t ndeps)
{
    th_task_spec spec;
    th_task_spec_init(&spec, "demo");
    spec.payload = payload;
    spec.deps = deps;
    spec.ndeps = ndeps;
    spec.retry.max_retries = 2;
    spec.retry.initial_delay_ms = 100;
    spec.retry.jitter = 0.0;
    th_error err = {0};
    char id[TH_ID_SIZE];
    int rc = th_engine_submit(d->e, &spec, id, &err);
    if (rc < 0) {
        fprintf(stderr, "demo: submit %s: %s%s%s %s\n", kind, th_errname(rc),
                err.field[0] != '\0' ? " field=" : "", err.field, err.message);
        return rc;
    }
    pthread_mutex_lock(&d->mu);
    memcpy(d->ids[d->ntasks], id, TH_ID_SIZE);
    d->kinds[d->ntasks] = kind;
    d->ntasks++;
    pthread_mutex_unlock(&d->mu);
    return 0;
}

static int submit_batch(demo *d)
{
    if (submit(d, "sum", "{\"op\":\"sum\",\"n\":100}", NULL, 0) < 0 ||
        submit(d, "sum", "{\"op\":\"sum\",\"n\":1000000}", NULL, 0) < 0 ||
        submit(d, "sha", "{\"op\":\"sha\",\"text\":\"hello, taskhive\"}", NULL, 0) < 0 ||
        submit(d, "flaky", "{\"op\":\"flaky\"}", NULL, 0) < 0)
        return -1;
    /* The combine task waits for the big sum and the sha. */
    const char *deps[2] = {d->ids[1], d->ids[2]};
    return submit(d, "combine", "{\"op\":\"combine\"}", deps, 2);
}

/* Waits until every task of the batch is final; 0, or -1 after WAIT_ALL_S. */
static int wait_batch(demo *d)
{
    struct timespec dl;
    if (clock_gettime(CLOCK_MONOTONIC, &dl) != 0)
        return -1;
    dl.tv_sec += WAIT_ALL_S;
    int rc = 0;
    pthread_mutex_lock(&d->mu);
    while (d->nfinal < d->ntasks && rc == 0) {
        if (pthread_cond_timedwait(&d->cv, &d->mu, &dl) == ETIMEDOUT && d->nfinal < d->ntasks)
            rc = -1;
    }
    pthread_mutex_unlock(&d->mu);
    return rc;
}

static void print_table(demo *d, int *all_completed)
{
    printf("\n%-26s  %-7s  %-9s  %-8s  %s\n", "ID", "KIND", "STATE", "ATTEMPTS", "RESULT");
    *all_completed = 1;
    for (size_t i = 0; i < d->ntasks; i++) {
        th_task *t = NULL;
        th_error err = {0};
        int rc = th_engine_get(d->e, d->ids[i], &t, &err);
        if (rc < 0) {
            printf("%-26s  %-7s  (get failed: %s)\n", d->ids[i], d->kinds[i], th_errname(rc));
            *all_completed = 0;
            continue;
        }
        const char *shown = t->result != NULL ? t->result : (t->error != NULL ? t->error : "-");
        printf("%-26s  %-7s  %-9s  %-8d  %.*s%s\n", t->id, d->kinds[i],
               th_task_state_name(t->state), t->attempt, RESULT_COLUMN, shown,
               strlen(shown) > RESULT_COLUMN ? "..." : "");
        if (t->state != TH_TASK_COMPLETED)
            *all_completed = 0;
        th_task_free(t);
    }
}

static int print_metrics(demo *d)
{
    th_engine_metrics m;
    int rc = th_engine_metrics_get(d->e, &m);
    if (rc < 0) {
        fprintf(stderr, "demo: th_engine_metrics_get: %s\n", th_errname(rc));
        return rc;
    }
    printf("\nmetrics (every task in the store):\n  tasks by state:");
    for (int s = 0; s < TH_TASK_NSTATES; s++)
        printf(" %s=%" PRId64, th_task_state_name((th_task_state)s), m.counts[s]);
    printf("\n  submitted_total=%" PRIu64 " completed_total=%" PRIu64
           " failed_attempts_total=%" PRIu64 " retries_total=%" PRIu64 "\n",
           m.submitted_total, m.completed_total, m.failed_attempts_total, m.retries_total);
    printf("  throughput=%.2f/s avg_run=%.2f ms avg_wait=%.2f ms uptime=%" PRId64 " ms\n",
           m.throughput_per_s, m.avg_run_ms, m.avg_wait_ms, m.uptime_ms);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 2 || (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0))) {
        fprintf(stderr, "usage: %s [DB_PATH]   (default taskhive-demo.db)\n", argv[0]);
        return 2;
    }
    const char *path = argc == 2 ? argv[1] : "taskhive-demo.db";
    char uri[4096];
    int len = snprintf(uri, sizeof uri, "sqlite:%s", path);
    if (len < 0 || (size_t)len >= sizeof uri) {
        fprintf(stderr, "demo: path too long\n");
        return 2;
    }

    int status = 1, sub = -1, mu_ok = 0, cv_ok = 0;
    size_t nstarted = 0;
    th_error err = {0};
    th_store *store = NULL;
    worker workers[NWORKERS];
    demo d;
    memset(&d, 0, sizeof d);
    atomic_init(&d.stop, 0);
    atomic_init(&d.errors, 0);

    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0)
        return 1;
    if (pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 && pthread_cond_init(&d.cv, &ca) == 0)
        cv_ok = 1;
    pthread_condattr_destroy(&ca);
    if (pthread_mutex_init(&d.mu, NULL) == 0)
        mu_ok = 1;
    if (!cv_ok || !mu_ok) {
        fprintf(stderr, "demo: pthread init failed\n");
        goto out;
    }

    store = th_store_open(uri, NULL, &err);
    if (store == NULL) {
        fprintf(stderr, "demo: opening %s: %s (%s)\n", path, th_errname(err.code), err.message);
        goto out;
    }
    d.e = th_engine_new(store, NULL, &err); /* takes the store, even on failure */
    if (d.e == NULL) {
        fprintf(stderr, "demo: th_engine_new: %s (%s)\n", th_errname(err.code), err.message);
        goto out;
    }
    sub = th_engine_subscribe(d.e, on_event, &d);
    if (sub < 0) {
        fprintf(stderr, "demo: th_engine_subscribe: %s\n", th_errname(sub));
        goto out;
    }
    printf("taskhive %s demo: store %s, %d workers on queue \"demo\"\n", th_version(), path,
           NWORKERS);
    printf("%-12s  %-5s %-16s %-26s  %-9s %s\n", "TIME", "SEQ", "EVENT", "TASK", "STATE",
           "MESSAGE");

    /* The whole batch goes in before the workers start, so every event of
     * it finds its id already recorded. */
    if (submit_batch(&d) < 0)
        goto out;
    for (size_t i = 0; i < NWORKERS; i++) {
        workers[i].d = &d;
        snprintf(workers[i].name, sizeof workers[i].name, "worker-%zu", i + 1);
        int rc = pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);
        if (rc != 0) {
            fprintf(stderr, "demo: pthread_create: %s\n", strerror(rc));
            goto out;
        }
        nstarted++;
    }
    if (wait_batch(&d) < 0)
        fprintf(stderr, "demo: the batch did not finish within %d s\n", WAIT_ALL_S);

out:
    atomic_store(&d.stop, 1);
    for (size_t i = 0; i < nstarted; i++) {
        int rc = pthread_join(workers[i].thread, NULL);
        if (rc != 0)
            fprintf(stderr, "demo: pthread_join: %s\n", strerror(rc));
    }
    if (sub > 0) {
        int rc = th_engine_unsubscribe(d.e, sub);
        if (rc < 0)
            fprintf(stderr, "demo: th_engine_unsubscribe: %s\n", th_errname(rc));
    }
    if (d.e != NULL && nstarted == NWORKERS) {
        int all_completed = 0;
        print_table(&d, &all_completed);
        if (print_metrics(&d) == 0 && all_completed && atomic_load(&d.errors) == 0)
            status = 0;
    }
    th_engine_free(d.e);
    if (cv_ok)
        pthread_cond_destroy(&d.cv);
    if (mu_ok)
        pthread_mutex_destroy(&d.mu);
    if (status != 0)
        fprintf(stderr, "demo: finished with errors\n");
    return status;
}
