/*
 * Crash durability: a task acknowledged to its submitter survives kill -9 of
 * the process, and no task ever has two recorded outcomes.
 *
 * Each round forks a child that opens "sqlite:<tmp>/crash.db" (durability
 * normal, real clock, timer thread on) and hammers it: single submits,
 * batches, claims with short leases, completions (one by one and batched) and
 * an occasional retryable failure. After every call that returned success the
 * child appends one line to a log file with a single write(2):
 *
 *   S <id> <n>          a submit of payload {"n":<n>} was acknowledged
 *   C <id> <n> <pid>    a completion with result {"by":<pid>,"n":<n>} returned 0
 *   F <id>              a retryable failure returned 0
 *   X <id> <code>       a completion was refused (TH_ESTALE); not an outcome
 *   E <text>            the child hit an unexpected error and exits
 *
 * The parent SIGKILLs the child after a pseudo-random 20..150 ms, reopens the
 * database itself and checks: every acknowledged id exists with its payload;
 * every acknowledged completion is a completed task carrying exactly that
 * result; no id is acknowledged as completed twice over all rounds; no task
 * seen before has vanished; and th_engine_counts agrees with a full
 * th_engine_list walk. The next round reuses the same file, so tasks a killed
 * child left running come back when their lease expires and get claimed again.
 *
 * Self-contained: does not use tests/lib.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "taskhive/taskhive.h"

#define ROUNDS 25
#define KILL_MIN_MS 20
#define KILL_MAX_MS 150
#define LEASE_MS 1000  /* far longer than a child lives; short for the test */
#define MIN_ACKED 2000 /* acknowledged submits over all rounds, at least */
#define QUEUE "crash"
#define SEED 0x7a5c41u

/* ---- small helpers ------------------------------------------------------ */

static int64_t mono_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return 0;
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return 0;
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
        if (errno != EINTR) {
            fprintf(stderr, "nanosleep: %s\n", strerror(errno));
            abort();
        }
    }
}

/* Finds "key" in a flat JSON object and parses its integer value. Tolerates
 * any whitespace the store may add when it re-serialises the text. */
static int json_int(const char *json, const char *key, long long *out)
{
    char pat[32];
    int k = snprintf(pat, sizeof pat, "\"%s\"", key);
    if (json == NULL || k < 0 || (size_t)k >= sizeof pat)
        return -1;
    const char *p = strstr(json, pat);
    if (p == NULL)
        return -1;
    p += k;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    if (*p != ':')
        return -1;
    p++;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(p, &end, 10);
    if (errno != 0 || end == p)
        return -1;
    *out = v;
    return 0;
}

/* xorshift64*, for the child's choices (the parent uses srand/rand). */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static unsigned rng_below(uint64_t *s, unsigned n)
{
    return (unsigned)(rng_next(s) % n);
}

/* ---- the child ---------------------------------------------------------- */

static int g_logfd = -1;

/* One line, one write(2): a line is either wholly in the log or (cut by the
 * kill at a page boundary) a tail without its newline, which the parent drops. */
__attribute__((format(printf, 1, 2))) static void child_log(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (len < 0 || (size_t)len >= sizeof line)
        _exit(3);
    ssize_t w;
    do {
        w = write(g_logfd, line, (size_t)len);
    } while (w < 0 && errno == EINTR);
    if (w != (ssize_t)len)
        _exit(4);
}

static _Noreturn void child_fatal(const char *what, int rc, const th_error *err)
{
    child_log("E %s rc=%d (%s) field=%s msg=%s\n", what, rc, th_errname(rc),
              err != NULL ? err->field : "", err != NULL ? err->message : "");
    _exit(20);
}

static void child_spec(th_task_spec *spec, char *payload, size_t cap, long long n)
{
    th_task_spec_init(spec, QUEUE);
    int k = snprintf(payload, cap, "{\"n\":%lld}", n);
    if (k < 0 || (size_t)k >= cap)
        child_fatal("payload snprintf", 0, NULL);
    spec->payload = payload;
    /* Quick retries, so failed and lease-expired tasks come back within the
     * test and get claimed again by a later child. */
    spec->retry.max_retries = 50;
    spec->retry.initial_delay_ms = 20;
    spec->retry.max_delay_ms = 200;
    spec->retry.multiplier = 2.0;
    spec->retry.jitter = 0.0;
}

static _Noreturn void child_main(const char *uri, int round, uint64_t seed)
{
    uint64_t rng = seed | 1;
    long long pid = (long long)getpid();
    long long next_n = (long long)(round + 1) * 100000000LL;
    int64_t t_start = mono_ms();
    th_error err;

    memset(&err, 0, sizeof err);
    th_store_options so;
    th_store_options_init(&so);
    so.durability = TH_DURABILITY_NORMAL;
    th_store *st = th_store_open(uri, &so, &err);
    if (st == NULL)
        child_fatal("th_store_open", err.code, &err);

    th_engine_options eo;
    th_engine_options_init(&eo);
    eo.seed = seed;
    eo.manual_tick = 0;
    eo.clock = NULL;
    th_engine *e = th_engine_new(st, &eo, &err);
    if (e == NULL)
        child_fatal("th_engine_new", err.code, &err);
    child_log("O %lld\n", (long long)(mono_ms() - t_start));

    char payload[64];
    char results[8][96];
    th_task_spec specs[50];
    char payloads[50][64];
    char ids[50][TH_ID_SIZE];

    for (;;) {
        unsigned r = rng_below(&rng, 100);
        if (r < 30) {
            /* single submit */
            th_task_spec spec;
            long long n = next_n++;
            child_spec(&spec, payload, sizeof payload, n);
            char id[TH_ID_SIZE];
            memset(&err, 0, sizeof err);
            int rc = th_engine_submit(e, &spec, id, &err);
            if (rc != 0)
                child_fatal("th_engine_submit", rc, &err);
            child_log("S %s %lld\n", id, n);
        } else if (r < 55) {
            /* batch of 10..50 */
            size_t cnt = 10 + rng_below(&rng, 41);
            long long first = next_n;
            for (size_t i = 0; i < cnt; i++)
                child_spec(&specs[i], payloads[i], sizeof payloads[i], next_n++);
            memset(&err, 0, sizeof err);
            int rc = th_engine_submit_batch(e, specs, cnt, ids, &err);
            if (rc != 0)
                child_fatal("th_engine_submit_batch", rc, &err);
            for (size_t i = 0; i < cnt; i++)
                child_log("S %s %lld\n", ids[i], first + (long long)i);
        } else {
            /* claim up to 8 and finish them */
            th_claim_options co;
            memset(&co, 0, sizeof co);
            co.max_tasks = 8;
            co.lease_ms = LEASE_MS;
            co.wait_ms = 0;
            co.worker = "crash-child";
            th_task *got[8] = {0};
            memset(&err, 0, sizeof err);
            int nc = th_engine_claim(e, &co, got, &err);
            if (nc < 0 || nc > 8)
                child_fatal("th_engine_claim", nc, &err);
            long long ns[8];
            for (int i = 0; i < nc; i++) {
                if (got[i] == NULL || got[i]->state != TH_TASK_RUNNING || got[i]->lease == 0)
                    child_fatal("claimed snapshot not running with a lease", 0, NULL);
                if (json_int(got[i]->payload, "n", &ns[i]) != 0)
                    child_fatal("claimed payload has no n", 0, NULL);
                int k =
                    snprintf(results[i], sizeof results[i], "{\"by\":%lld,\"n\":%lld}", pid, ns[i]);
                if (k < 0 || (size_t)k >= sizeof results[i])
                    child_fatal("result snprintf", 0, NULL);
            }
            int batch = nc > 1 && rng_below(&rng, 2) == 0;
            if (batch) {
                th_completion items[8];
                memset(items, 0, sizeof items);
                for (int i = 0; i < nc; i++) {
                    items[i].id = got[i]->id;
                    items[i].lease = got[i]->lease;
                    items[i].result = results[i];
                    items[i].rc = 1; /* must be overwritten */
                }
                int ok = th_engine_complete_batch(e, items, (size_t)nc);
                if (ok < 0)
                    child_fatal("th_engine_complete_batch", ok, NULL);
                int seen = 0;
                for (int i = 0; i < nc; i++) {
                    if (items[i].rc == 0) {
                        seen++;
                        child_log("C %s %lld %lld\n", got[i]->id, ns[i], pid);
                    } else if (items[i].rc == TH_ESTALE) {
                        child_log("X %s %d\n", got[i]->id, items[i].rc);
                    } else {
                        child_fatal("th_engine_complete_batch item", items[i].rc, NULL);
                    }
                }
                if (seen != ok)
                    child_fatal("complete_batch count disagrees with item rcs", ok, NULL);
            } else {
                for (int i = 0; i < nc; i++) {
                    memset(&err, 0, sizeof err);
                    if (rng_below(&rng, 20) == 0) {
                        int rc = th_engine_fail(e, got[i]->id, got[i]->lease, "crash-test: retry",
                                                0, &err);
                        if (rc != 0)
                            child_fatal("th_engine_fail", rc, &err);
                        child_log("F %s\n", got[i]->id);
                        continue;
                    }
                    int rc = th_engine_complete(e, got[i]->id, got[i]->lease, results[i], &err);
                    if (rc == 0)
                        child_log("C %s %lld %lld\n", got[i]->id, ns[i], pid);
                    else if (rc == TH_ESTALE)
                        child_log("X %s %d\n", got[i]->id, rc);
                    else
                        child_fatal("th_engine_complete", rc, &err);
                }
            }
            for (int i = 0; i < nc; i++)
                th_task_free(got[i]);
        }
    }
}

/* ---- the parent's record of every id ------------------------------------ */

typedef struct rec {
    char id[TH_ID_SIZE]; /* "" = empty slot */
    long long s_n;       /* n of the acknowledged submit */
    long long c_n;       /* n and pid of the acknowledged completion */
    long long c_pid;
    int s_round; /* round of the S line, -1 = none */
    int c_round; /* round of the first C line, -1 = none */
    int c_count;
    int f_count;    /* acknowledged retryable failures */
    int seen_round; /* last round it was found by th_engine_list */
} rec;

typedef struct table {
    rec *slots;
    size_t cap; /* power of two */
    size_t used;
} table;

static size_t id_hash(const char *id)
{
    uint64_t h = 1469598103934665603ULL;
    for (const char *p = id; *p != '\0'; p++) {
        h ^= (unsigned char)*p;
        h *= 1099511628211ULL;
    }
    return (size_t)h;
}

static void table_grow(table *t)
{
    size_t ncap = t->cap == 0 ? 4096 : t->cap * 2;
    rec *ns = calloc(ncap, sizeof *ns);
    assert_non_null(ns);
    for (size_t i = 0; i < t->cap; i++) {
        if (t->slots[i].id[0] == '\0')
            continue;
        size_t j = id_hash(t->slots[i].id) & (ncap - 1);
        while (ns[j].id[0] != '\0')
            j = (j + 1) & (ncap - 1);
        ns[j] = t->slots[i];
    }
    free(t->slots);
    t->slots = ns;
    t->cap = ncap;
}

/* Returns the record of `id`, creating it. Valid until the next insert. */
static rec *table_get(table *t, const char *id)
{
    if ((t->used + 1) * 2 > t->cap)
        table_grow(t);
    size_t j = id_hash(id) & (t->cap - 1);
    while (t->slots[j].id[0] != '\0') {
        if (strcmp(t->slots[j].id, id) == 0)
            return &t->slots[j];
        j = (j + 1) & (t->cap - 1);
    }
    rec *r = &t->slots[j];
    memset(r, 0, sizeof *r);
    memcpy(r->id, id, TH_ID_LEN);
    r->id[TH_ID_LEN] = '\0';
    r->s_round = -1;
    r->c_round = -1;
    r->seen_round = -1;
    t->used++;
    return r;
}

static int valid_id(const char *s, size_t len)
{
    if (len != TH_ID_LEN)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z')))
            return 0;
    }
    return 1;
}

/* ---- one round's log ---------------------------------------------------- */

typedef struct totals {
    long long acked_submits;
    long long acked_completes;
    long long acked_fails;
    long long stale;
    long long torn_lines;
    long long empty_rounds; /* killed before its first acknowledged submit */
    long long tasks_in_db;
    long long max_attempt;
    long long reclaimed; /* completed after an attempt that neither completed nor
                            failed: a killed child's lease expired */
} totals;

static char *read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        fail_msg("open %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0)
        fail_msg("fstat %s: %s", path, strerror(errno));
    size_t size = (size_t)sb.st_size;
    char *buf = malloc(size + 1);
    assert_non_null(buf);
    size_t off = 0;
    while (off < size) {
        ssize_t r = read(fd, buf + off, size - off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            fail_msg("read %s: %s", path, strerror(errno));
        if (r == 0)
            break;
        off += (size_t)r;
    }
    if (close(fd) != 0)
        fail_msg("close %s: %s", path, strerror(errno));
    buf[off] = '\0';
    *len = off;
    return buf;
}

typedef struct round_stats {
    long long open_ms; /* store + engine open time in the child; -1 = never opened */
    long long submits, completes, fails;
} round_stats;

/* Parses the log of `round` into the table. Returns 1 when the child wrote an
 * "E" line (it is printed), else 0. */
static int ingest_log(table *t, const char *path, int round, totals *tot, round_stats *rs)
{
    size_t len = 0;
    char *buf = read_file(path, &len);
    int child_error = 0;
    char *p = buf;
    char *end = buf + len;
    memset(rs, 0, sizeof *rs);
    rs->open_ms = -1;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL) {
            /* The kill cut the last write short: that line was never complete,
             * so nothing was recorded as acknowledged by it. */
            tot->torn_lines++;
            break;
        }
        *nl = '\0';
        char *line = p;
        p = nl + 1;
        if (line[0] == 'E') {
            fprintf(stderr, "round %d: child error: %s\n", round, line);
            child_error = 1;
            continue;
        }
        if (line[0] == 'O') {
            if (sscanf(line, "O %lld", &rs->open_ms) != 1)
                fail_msg("round %d: bad log line '%s'", round, line);
            continue;
        }
        if (line[0] == '\0' || line[1] != ' ')
            fail_msg("round %d: bad log line '%s'", round, line);
        char *id = line + 2;
        char *sp = strchr(id, ' ');
        size_t idlen = sp != NULL ? (size_t)(sp - id) : strlen(id);
        if (!valid_id(id, idlen))
            fail_msg("round %d: bad id in log line '%s'", round, line);
        char idbuf[TH_ID_SIZE];
        memcpy(idbuf, id, TH_ID_LEN);
        idbuf[TH_ID_LEN] = '\0';
        long long a = 0, b = 0;
        switch (line[0]) {
        case 'S': {
            if (sp == NULL || sscanf(sp + 1, "%lld", &a) != 1)
                fail_msg("round %d: bad S line '%s'", round, line);
            rec *r = table_get(t, idbuf);
            if (r->s_round >= 0)
                fail_msg("round %d: id %s acknowledged as a new task twice (rounds %d and %d)",
                         round, idbuf, r->s_round, round);
            r->s_round = round;
            r->s_n = a;
            tot->acked_submits++;
            rs->submits++;
            break;
        }
        case 'C': {
            if (sp == NULL || sscanf(sp + 1, "%lld %lld", &a, &b) != 2)
                fail_msg("round %d: bad C line '%s'", round, line);
            rec *r = table_get(t, idbuf);
            if (r->c_count > 0)
                fail_msg("task %s has two recorded outcomes: completed by pid %lld (n=%lld) in "
                         "round %d and again by pid %lld (n=%lld) in round %d",
                         idbuf, r->c_pid, r->c_n, r->c_round, b, a, round);
            r->c_count++;
            r->c_round = round;
            r->c_n = a;
            r->c_pid = b;
            tot->acked_completes++;
            rs->completes++;
            break;
        }
        case 'F':
            table_get(t, idbuf)->f_count++;
            tot->acked_fails++;
            rs->fails++;
            break;
        case 'X':
            tot->stale++;
            break;
        default:
            fail_msg("round %d: bad log line '%s'", round, line);
        }
    }
    free(buf);
    return child_error;
}

/* ---- the parent's checks ------------------------------------------------ */

static th_engine *parent_open(const char *uri)
{
    th_error err;
    memset(&err, 0, sizeof err);
    th_store_options so;
    th_store_options_init(&so);
    so.durability = TH_DURABILITY_NORMAL;
    th_store *st = th_store_open(uri, &so, &err);
    if (st == NULL)
        fail_msg("parent: th_store_open(%s) after kill -9: %s (%s) field=%s msg=%s", uri,
                 th_errname(err.code), th_strerror(err.code), err.field, err.message);
    th_engine_options eo;
    th_engine_options_init(&eo);
    eo.manual_tick = 1; /* a still view while checking; we tick once by hand */
    th_engine *e = th_engine_new(st, &eo, &err);
    if (e == NULL)
        fail_msg("parent: th_engine_new: %s field=%s msg=%s", th_errname(err.code), err.field,
                 err.message);
    return e;
}

static void check_result(const rec *r, const th_task *tk, const char *how)
{
    if (tk->state != TH_TASK_COMPLETED)
        fail_msg("%s: task %s acknowledged completed (round %d, pid %lld) is %s", how, r->id,
                 r->c_round, r->c_pid, th_task_state_name(tk->state));
    long long by = 0, n = 0;
    if (tk->result == NULL || json_int(tk->result, "by", &by) != 0 ||
        json_int(tk->result, "n", &n) != 0)
        fail_msg("%s: task %s completed with result %s, not the acknowledged "
                 "{\"by\":%lld,\"n\":%lld}",
                 how, r->id, tk->result != NULL ? tk->result : "(NULL)", r->c_pid, r->c_n);
    if (by != r->c_pid || n != r->c_n)
        fail_msg("%s: task %s has result %s but the acknowledged completion was "
                 "{\"by\":%lld,\"n\":%lld} (round %d): two outcomes",
                 how, r->id, tk->result, r->c_pid, r->c_n, r->c_round);
}

/* `ticked_at`: wall ms read just before th_engine_tick, which applied every
 * deadline due by then. */
static void check_round(th_engine *e, table *t, int round, totals *tot, int64_t ticked_at)
{
    th_error err;

    /* Every submit and completion acknowledged in this round, one by one. */
    for (size_t i = 0; i < t->cap; i++) {
        rec *r = &t->slots[i];
        if (r->id[0] == '\0' || (r->s_round != round && r->c_round != round))
            continue;
        th_task *tk = NULL;
        memset(&err, 0, sizeof err);
        int rc = th_engine_get(e, r->id, &tk, &err);
        if (rc != 0)
            fail_msg("round %d: task %s acknowledged (S round %d, C round %d) is lost after kill "
                     "-9: th_engine_get = %s",
                     round, r->id, r->s_round, r->c_round, th_errname(rc));
        assert_non_null(tk);
        assert_string_equal(tk->id, r->id);
        long long pn = 0;
        if (json_int(tk->payload, "n", &pn) != 0)
            fail_msg("round %d: task %s has payload %s", round, r->id, tk->payload);
        if (r->s_round >= 0 && pn != r->s_n)
            fail_msg("round %d: task %s has payload %s, submitted with n=%lld", round, r->id,
                     tk->payload, r->s_n);
        if (r->c_round >= 0) {
            if (pn != r->c_n)
                fail_msg("round %d: task %s payload n=%lld but completed for n=%lld", round, r->id,
                         pn, r->c_n);
            check_result(r, tk, "get");
        }
        th_task_free(tk);
    }

    /* The whole table, paged, against th_engine_counts. */
    int64_t listed[TH_TASK_NSTATES] = {0};
    long long total = 0;
    char after[TH_ID_SIZE] = "";
    for (;;) {
        th_list_filter f;
        memset(&f, 0, sizeof f);
        f.queue = NULL;
        f.state = -1;
        f.after_id = after[0] != '\0' ? after : NULL;
        f.limit = 1000;
        th_task **arr = NULL;
        size_t n = 0;
        memset(&err, 0, sizeof err);
        int rc = th_engine_list(e, &f, &arr, &n, &err);
        if (rc != 0)
            fail_msg("round %d: th_engine_list = %s (%s)", round, th_errname(rc), err.message);
        if (n == 0) {
            th_task_array_free(arr, n);
            break;
        }
        assert_true(n <= 1000);
        for (size_t i = 0; i < n; i++) {
            const th_task *tk = arr[i];
            if (after[0] != '\0' && strcmp(tk->id, after) <= 0)
                fail_msg("round %d: th_engine_list not in id order: %s after %s", round, tk->id,
                         after);
            memcpy(after, tk->id, TH_ID_SIZE);
            if ((int)tk->state < 0 || (int)tk->state >= TH_TASK_NSTATES)
                fail_msg("round %d: task %s has state %d", round, tk->id, (int)tk->state);
            listed[tk->state]++;
            total++;
            /* A killed child's lease must run out like any other: after the
             * tick nothing is still leased past its expiry, and no lease is
             * longer than the claim asked for. */
            if (tk->state == TH_TASK_RUNNING &&
                (tk->lease == 0 || tk->lease_expires_at < ticked_at ||
                 tk->lease_expires_at > wall_ms() + LEASE_MS))
                fail_msg("round %d: running task %s has lease %" PRIu64 " expiring at %" PRId64
                         ", %" PRId64 " ms after the tick",
                         round, tk->id, tk->lease, tk->lease_expires_at,
                         tk->lease_expires_at - ticked_at);
            if (tk->attempt > tot->max_attempt)
                tot->max_attempt = tk->attempt;
            rec *r = table_get(t, tk->id);
            if (r->seen_round == round)
                fail_msg("round %d: th_engine_list returned %s twice", round, tk->id);
            r->seen_round = round;
            if (r->c_round >= 0) {
                if (tk->result != NULL)
                    check_result(r, tk, "list");
                else if (tk->state != TH_TASK_COMPLETED)
                    fail_msg("round %d: task %s acknowledged completed is %s", round, r->id,
                             th_task_state_name(tk->state));
            }
        }
        th_task_array_free(arr, n);
        if (n < 1000)
            break;
    }

    /* Nothing acknowledged, in this round or any before, has vanished. */
    for (size_t i = 0; i < t->cap; i++) {
        const rec *r = &t->slots[i];
        if (r->id[0] == '\0')
            continue;
        if ((r->s_round >= 0 || r->c_round >= 0) && r->seen_round != round)
            fail_msg("round %d: acknowledged task %s (S round %d, C round %d) is missing from "
                     "th_engine_list",
                     round, r->id, r->s_round, r->c_round);
    }

    th_queue_counts *qc = NULL;
    size_t nq = 0;
    int rc = th_engine_counts(e, &qc, &nq);
    if (rc != 0)
        fail_msg("round %d: th_engine_counts = %s", round, th_errname(rc));
    int64_t counted[TH_TASK_NSTATES] = {0};
    long long ctotal = 0;
    for (size_t i = 0; i < nq; i++) {
        if (strcmp(qc[i].queue, QUEUE) != 0)
            fail_msg("round %d: th_engine_counts reports queue '%s'", round, qc[i].queue);
        for (int s = 0; s < TH_TASK_NSTATES; s++) {
            counted[s] += qc[i].counts[s];
            ctotal += qc[i].counts[s];
        }
    }
    free(qc);
    for (int s = 0; s < TH_TASK_NSTATES; s++) {
        if (counted[s] != listed[s])
            fail_msg("round %d: th_engine_counts says %" PRId64
                     " %s, th_engine_list found %" PRId64,
                     round, counted[s], th_task_state_name((th_task_state)s), listed[s]);
    }
    if (ctotal != total)
        fail_msg("round %d: counts total %lld != %lld listed", round, ctotal, total);
    tot->tasks_in_db = total;

    fprintf(stderr,
            "          db: %lld tasks: pending %" PRId64 " scheduled %" PRId64 " running %" PRId64
            " completed %" PRId64 " failed %" PRId64 "\n",
            total, listed[TH_TASK_PENDING], listed[TH_TASK_SCHEDULED], listed[TH_TASK_RUNNING],
            listed[TH_TASK_COMPLETED], listed[TH_TASK_FAILED]);
}

/* ---- the test ----------------------------------------------------------- */

static void remove_db(const char *dir)
{
    static const char *const suffixes[] = {"", "-wal", "-shm", "-journal", ".lock"};
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        char path[4096];
        int k = snprintf(path, sizeof path, "%s/crash.db%s", dir, suffixes[i]);
        assert_true(k > 0 && (size_t)k < sizeof path);
        if (unlink(path) != 0 && errno != ENOENT)
            fail_msg("unlink %s: %s", path, strerror(errno));
    }
}

/* Waits (up to `timeout_ms`) until the child's log has its "O" line: the
 * engine is open. */
static void wait_open_line(const char *logpath, long timeout_ms)
{
    for (long waited = 0; waited < timeout_ms; waited += 2) {
        FILE *f = fopen(logpath, "r");
        char line[256];
        int open = 0;
        while (f && !open && fgets(line, sizeof line, f))
            open = line[0] == 'O';
        if (f)
            fclose(f);
        if (open)
            return;
        sleep_ms(2);
    }
}

static void test_kill9_durability(void **state)
{
    (void)state;
    char made[] = "/tmp/th-crash.XXXXXX";
    const char *dir = getenv("TH_TEST_TMPDIR");
    int own_dir = 0;
    if (dir == NULL || dir[0] == '\0') {
        dir = mkdtemp(made);
        if (dir == NULL)
            fail_msg("mkdtemp: %s", strerror(errno));
        own_dir = 1;
    }
    remove_db(dir);

    char uri[4200];
    int k = snprintf(uri, sizeof uri, "sqlite:%s/crash.db", dir);
    assert_true(k > 0 && (size_t)k < sizeof uri);

    srand(SEED);
    table t = {0};
    totals tot;
    memset(&tot, 0, sizeof tot);
    int64_t t0 = mono_ms();

    for (int round = 0; round < ROUNDS; round++) {
        char logpath[4200];
        k = snprintf(logpath, sizeof logpath, "%s/round-%02d.log", dir, round);
        assert_true(k > 0 && (size_t)k < sizeof logpath);
        int fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
        if (fd < 0)
            fail_msg("open %s: %s", logpath, strerror(errno));
        long delay = KILL_MIN_MS + rand() % (KILL_MAX_MS - KILL_MIN_MS + 1);
        uint64_t child_seed = ((uint64_t)(unsigned)rand() << 32) ^ (uint64_t)(unsigned)rand();

        /* Nothing buffered may be flushed twice (once per process). */
        if (fflush(NULL) != 0)
            fail_msg("fflush: %s", strerror(errno));
        pid_t pid = fork();
        if (pid < 0)
            fail_msg("fork: %s", strerror(errno));
        if (pid == 0) {
            g_logfd = fd;
            child_main(uri, round, child_seed);
        }
        if (close(fd) != 0)
            fail_msg("close log: %s", strerror(errno));

        /* Most rounds count the delay from the moment the child's engine is
         * open (its "O" line), so a slow load (a big file, a sanitizer, a
         * busy machine) still leaves it time to work; every fifth round
         * counts from the fork, so some kills land while the file loads. */
        if (round % 5 != 4)
            wait_open_line(logpath, 30000);
        sleep_ms(delay);
        if (kill(pid, SIGKILL) != 0)
            fail_msg("kill(%ld, SIGKILL): %s", (long)pid, strerror(errno));
        int status = 0;
        pid_t w;
        do {
            w = waitpid(pid, &status, 0);
        } while (w < 0 && errno == EINTR);
        if (w != pid)
            fail_msg("waitpid(%ld): %s", (long)pid, strerror(errno));

        round_stats rs;
        int child_error = ingest_log(&t, logpath, round, &tot, &rs);
        if (child_error || !WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL) {
            if (WIFEXITED(status))
                fail_msg("round %d: child exited with status %d before the kill", round,
                         WEXITSTATUS(status));
            if (WIFSIGNALED(status) && WTERMSIG(status) != SIGKILL)
                fail_msg("round %d: child died of signal %d", round, WTERMSIG(status));
            fail_msg("round %d: child reported an error", round);
        }
        if (rs.submits == 0)
            tot.empty_rounds++;
        fprintf(stderr,
                "round %2d: killed after %3ld ms (engine open took %lld ms): +%lld submits, +%lld "
                "completions, +%lld fails acknowledged\n",
                round, delay, rs.open_ms, rs.submits, rs.completes, rs.fails);

        th_engine *e = parent_open(uri);
        int64_t ticked_at = wall_ms();
        int ticked = th_engine_tick(e);
        if (ticked < 0)
            fail_msg("round %d: th_engine_tick = %s", round, th_errname(ticked));
        check_round(e, &t, round, &tot, ticked_at);
        th_engine_free(e);
        if (unlink(logpath) != 0)
            fail_msg("unlink %s: %s", logpath, strerror(errno));
    }

    /* Completed tasks that needed more than one attempt: a killed child's
     * lease expired (or an attempt failed) and someone else finished it. */
    th_engine *e = parent_open(uri);
    for (size_t i = 0; i < t.cap; i++) {
        const rec *r = &t.slots[i];
        if (r->id[0] == '\0' || r->c_round < 0)
            continue;
        th_task *tk = NULL;
        int rc = th_engine_get(e, r->id, &tk, NULL);
        if (rc != 0)
            fail_msg("final: task %s lost: %s", r->id, th_errname(rc));
        check_result(r, tk, "final");
        if (tk->attempt > r->f_count + 1)
            tot.reclaimed++;
        th_task_free(tk);
    }
    th_engine_free(e);

    int64_t elapsed = mono_ms() - t0;
    fprintf(stderr,
            "crash_test: %d rounds in %" PRId64 " ms: %lld acknowledged submits, %lld acknowledged "
            "completions, %lld retryable fails, %lld stale completions, %lld torn log lines, "
            "%lld rounds without work, %lld tasks in db, %lld completed after a lease expired, "
            "max attempt %lld\n",
            ROUNDS, elapsed, tot.acked_submits, tot.acked_completes, tot.acked_fails, tot.stale,
            tot.torn_lines, tot.empty_rounds, tot.tasks_in_db, tot.reclaimed, tot.max_attempt);

    if (tot.acked_submits < MIN_ACKED)
        fail_msg("only %lld acknowledged submits over %d rounds (want >= %d): the test did not "
                 "exercise load",
                 tot.acked_submits, ROUNDS, MIN_ACKED);
    assert_true(tot.acked_completes > 0);

    free(t.slots);
    remove_db(dir);
    if (own_dir && rmdir(dir) != 0)
        fail_msg("rmdir %s: %s", dir, strerror(errno));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kill9_durability),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
