/*
 * Unit tests of the built-in handlers (src/handlers), called directly on a
 * th_ctx made with th__ctx_init whose hooks record progress and log calls:
 *
 *   - noop and sleep: results, progress, cancellation by the stop flag (set
 *     from another thread) and by the context's timeout;
 *   - hash: SHA-256 and BLAKE2b-256 known vectors for text, base64 and a
 *     file streamed in chunks (the one-million-'a' vector);
 *   - compress / decompress: round trips for zstd and zlib in memory and
 *     between files in $TH_TEST_TMPDIR (no temporary file left behind),
 *     fixed vectors made by other implementations, binary output without
 *     "data", corrupt and truncated input, the 64 MiB in-memory limit;
 *   - encrypt / decrypt: round trip, fresh nonces, a ciphertext made here
 *     with libsodium directly, tampering and the wrong key;
 *   - exec: stdout / stderr logged line by line at info / warn, the log cap,
 *     exit statuses and signals, stdin (small, large, unread), env and cwd,
 *     descriptors closed and the signal mask reset in the child, argv never
 *     going through a shell, shell mode refused unless allowed, cancellation
 *     by timeout and by the stop flag (SIGTERM, then SIGKILL for a child that
 *     ignores it) with the process group gone afterwards, stray background
 *     processes killed;
 *   - http: against a small HTTP/1.1 server on 127.0.0.1 port 0 run in a
 *     thread: 200 with body and content type, 503 / 429 retry, 404
 *     permanent, POST / PUT / HEAD, a 302 not followed, the 1 MiB body
 *     limit, a timeout, cancellation and a refused connection;
 *   - a table of bad payloads and configurations, each failing permanently
 *     with an error that starts with the name of the field at fault.
 *
 * Every test runs under alarm(), so a hang fails instead of blocking.
 */
#include "thtest.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#include "core/clock.h"
#include "pool/ctx.h"
#include "taskhive/pool.h"

#define TEST_ALARM_S 60
#define KEY_HEX "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

/* ---- a context that records what the handler reports --------------------- */

typedef struct logrec {
    th_log_level level;
    char *msg;
} logrec;

typedef struct hrun {
    th_task task;
    th_ctx ctx;
    th__kv cfg[8];
    size_t ncfg;
    logrec *logs;
    size_t nlogs, logcap;
    int nprogress, last_pct, pct_went_back;
    int rc;
    int64_t elapsed_ms;
} hrun;

static int rec_progress(void *ud, int percent, int step, int total, const char *message)
{
    (void)step;
    (void)total;
    (void)message;
    hrun *h = ud;
    if (h->nprogress > 0 && percent < h->last_pct)
        h->pct_went_back = 1;
    h->nprogress++;
    h->last_pct = percent;
    return 0;
}

static int rec_log(void *ud, th_log_level level, const char *message, const char *data)
{
    (void)data;
    hrun *h = ud;
    if (h->nlogs == h->logcap) {
        h->logcap = h->logcap ? 2 * h->logcap : 16;
        h->logs = realloc(h->logs, h->logcap * sizeof *h->logs);
        assert_non_null(h->logs);
    }
    h->logs[h->nlogs].level = level;
    h->logs[h->nlogs].msg = strdup(message);
    assert_non_null(h->logs[h->nlogs].msg);
    h->nlogs++;
    return 0;
}

/* Adds a configuration value (borrowed strings; before hrun_prepare). */
static void hrun_config(hrun *h, const char *key, const char *value)
{
    assert_true(h->ncfg < sizeof h->cfg / sizeof h->cfg[0]);
    h->cfg[h->ncfg].key = (char *)key;
    h->cfg[h->ncfg].value = (char *)value;
    h->ncfg++;
}

/* Builds the context for `payload` (borrowed) with a timeout (0 = none). */
static void hrun_prepare(hrun *h, const char *payload, int64_t timeout_ms)
{
    static const th__ctx_hooks proto = {rec_progress, rec_log, NULL};
    th__ctx_hooks hooks = proto;
    hooks.ud = h;
    h->task.payload = (char *)payload;
    th__ctx_init(&h->ctx, &h->task, h->cfg, h->ncfg, &hooks, timeout_ms, 0);
}

static int hrun_exec(hrun *h, th_handler_fn fn)
{
    int64_t t0 = th__mono_ns();
    h->rc = fn(&h->ctx, NULL);
    h->elapsed_ms = (th__mono_ns() - t0) / 1000000;
    return h->rc;
}

static int hrun_go(hrun *h, th_handler_fn fn, const char *payload)
{
    hrun_prepare(h, payload, 0);
    return hrun_exec(h, fn);
}

static void hrun_free(hrun *h)
{
    th__ctx_reset(&h->ctx);
    for (size_t i = 0; i < h->nlogs; i++)
        free(h->logs[i].msg);
    free(h->logs);
    h->logs = NULL;
    h->nlogs = h->logcap = 0;
}

/* The result parsed; the caller json_decrefs it. */
static json_t *result_json(const hrun *h)
{
    assert_non_null(h->ctx.result);
    json_error_t jerr;
    json_t *v = json_loads(h->ctx.result, JSON_DECODE_ANY, &jerr);
    if (!v)
        fail_msg("result is not JSON: %s", jerr.text);
    return v;
}

static const char *result_str(json_t *res, const char *key)
{
    json_t *v = json_object_get(res, key);
    if (!json_is_string(v))
        fail_msg("result.%s is not a string", key);
    return json_string_value(v);
}

static long long result_int(json_t *res, const char *key)
{
    json_t *v = json_object_get(res, key);
    if (!json_is_integer(v))
        fail_msg("result.%s is not an integer", key);
    return json_integer_value(v);
}

/* Fails unless `rc` is `want`, naming the handler's error. */
#define assert_rc(h, expr, want)                                                                   \
    do {                                                                                           \
        int rc_ = (expr);                                                                          \
        if (rc_ != (want))                                                                         \
            fail_msg("rc %d, want %d; error \"%s\"", rc_, (want),                                  \
                     (h)->ctx.error ? (h)->ctx.error : "(none)");                                  \
    } while (0)

static void assert_error_is(const hrun *h, const char *want)
{
    if (!h->ctx.error || strcmp(h->ctx.error, want) != 0)
        fail_msg("error \"%s\", want \"%s\"", h->ctx.error ? h->ctx.error : "(none)", want);
}

static void assert_error_has(const hrun *h, const char *part)
{
    if (!h->ctx.error || !strstr(h->ctx.error, part))
        fail_msg("error \"%s\" lacks \"%s\"", h->ctx.error ? h->ctx.error : "(none)", part);
}

/* Lines logged at `level`, joined with '\n' into buf. */
static void logs_at(const hrun *h, th_log_level level, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < h->nlogs; i++)
        if (h->logs[i].level == level)
            used +=
                (size_t)snprintf(buf + used, size - used, "%s%s", used ? "\n" : "", h->logs[i].msg);
}

/* A JSON string literal for `s` (the caller frees it). */
static char *jstr(const char *s)
{
    json_t *v = json_string(s);
    assert_non_null(v);
    char *out = json_dumps(v, JSON_ENCODE_ANY);
    json_decref(v);
    assert_non_null(out);
    return out;
}

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    char *out = NULL;
    assert_true(vasprintf(&out, f, ap) >= 0);
    va_end(ap);
    return out;
}

static char *b64(const unsigned char *buf, size_t len)
{
    size_t size = sodium_base64_encoded_len(len, sodium_base64_VARIANT_ORIGINAL);
    char *out = malloc(size);
    assert_non_null(out);
    sodium_bin2base64(out, size, buf, len, sodium_base64_VARIANT_ORIGINAL);
    return out;
}

static unsigned char *unb64(const char *text, size_t *len)
{
    size_t max = strlen(text) / 4 * 3 + 3;
    unsigned char *out = malloc(max);
    assert_non_null(out);
    assert_int_equal(sodium_base642bin(out, max, text, strlen(text), NULL, len, NULL,
                                       sodium_base64_VARIANT_ORIGINAL),
                     0);
    return out;
}

static void write_file(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    size_t cap = 1 << 16, n = 0;
    unsigned char *buf = malloc(cap);
    assert_non_null(buf);
    size_t r;
    while ((r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
    }
    fclose(f);
    *len = n;
    return buf;
}

static int setup_alarm(void **state)
{
    (void)state;
    alarm(TEST_ALARM_S);
    return 0;
}

static int teardown_alarm(void **state)
{
    (void)state;
    alarm(0);
    return 0;
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup_alarm, teardown_alarm)

/* Sets ctx->stop after `ms` from a thread of its own. */
typedef struct stopper {
    pthread_t thread;
    th_ctx *ctx;
    int ms;
} stopper;

static void *stopper_main(void *arg)
{
    stopper *s = arg;
    struct timespec ts = {s->ms / 1000, (long)(s->ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    atomic_store(&s->ctx->stop, 1);
    return NULL;
}

static void stopper_start(stopper *s, th_ctx *ctx, int ms)
{
    s->ctx = ctx;
    s->ms = ms;
    assert_int_equal(pthread_create(&s->thread, NULL, stopper_main, s), 0);
}

static void stopper_join(stopper *s)
{
    pthread_join(s->thread, NULL);
}

/* ---- noop, sleep ------------------------------------------------------- */

static void test_noop(void **state)
{
    (void)state;
    hrun h = {0};
    assert_rc(&h, hrun_go(&h, th_handler_noop, "{\"anything\":[1,2]}"), TH_HANDLER_OK);
    assert_json_equal(h.ctx.result, "{\"ok\":true}");
    assert_null(h.ctx.error);
    hrun_free(&h);
}

static void test_sleep_completes_with_progress(void **state)
{
    (void)state;
    hrun h = {0};
    assert_rc(&h, hrun_go(&h, th_handler_sleep, "{\"ms\":60}"), TH_HANDLER_OK);
    assert_json_equal(h.ctx.result, "{\"slept_ms\":60}");
    assert_true(h.elapsed_ms >= 60);
    assert_true(h.nprogress >= 2);
    assert_int_equal(h.last_pct, 100);
    assert_false(h.pct_went_back);
    hrun_free(&h);

    hrun z = {0};
    assert_rc(&z, hrun_go(&z, th_handler_sleep, "{\"ms\":0}"), TH_HANDLER_OK);
    assert_json_equal(z.ctx.result, "{\"slept_ms\":0}");
    hrun_free(&z);
}

static void test_sleep_cancelled_by_stop_flag(void **state)
{
    (void)state;
    hrun h = {0};
    stopper s;
    hrun_prepare(&h, "{\"ms\":60000}", 0);
    stopper_start(&s, &h.ctx, 100);
    assert_rc(&h, hrun_exec(&h, th_handler_sleep), TH_HANDLER_RETRY);
    stopper_join(&s);
    assert_error_is(&h, "cancelled");
    assert_true(h.elapsed_ms >= 90 && h.elapsed_ms < 5000);
    assert_null(h.ctx.result);
    hrun_free(&h);
}

static void test_sleep_cancelled_by_timeout(void **state)
{
    (void)state;
    hrun h = {0};
    hrun_prepare(&h, "{\"ms\":60000}", 100);
    assert_rc(&h, hrun_exec(&h, th_handler_sleep), TH_HANDLER_RETRY);
    assert_error_is(&h, "cancelled");
    assert_true(h.elapsed_ms >= 90 && h.elapsed_ms < 5000);
    hrun_free(&h);
}

/* ---- hash --------------------------------------------------------------- */

static void test_hash_sha256_vectors(void **state)
{
    (void)state;
    static const struct {
        const char *payload, *want;
    } cases[] = {
        {"{\"data\":\"abc\"}",
         "{\"algorithm\":\"sha256\",\"hex\":"
         "\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\",\"bytes\":3}"},
        {"{\"algorithm\":\"sha256\",\"data_base64\":\"YWJj\"}",
         "{\"algorithm\":\"sha256\",\"hex\":"
         "\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\",\"bytes\":3}"},
        {"{\"data\":\"\"}",
         "{\"algorithm\":\"sha256\",\"hex\":"
         "\"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\",\"bytes\":0}"},
        /* An escaped NUL is hashed as the byte it stands for. */
        {"{\"data\":\"a\\u0000b\"}",
         "{\"algorithm\":\"sha256\",\"hex\":"
         "\"59b271ae1bbcb1d31d41929817f4b16fb439eb4f31520b5ad1d5ce98920a7138\",\"bytes\":3}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        hrun h = {0};
        assert_rc(&h, hrun_go(&h, th_handler_hash, cases[i].payload), TH_HANDLER_OK);
        assert_json_equal(h.ctx.result, cases[i].want);
        hrun_free(&h);
    }
}

static void test_hash_blake2b_vectors(void **state)
{
    (void)state;
    hrun h = {0};
    assert_rc(&h, hrun_go(&h, th_handler_hash, "{\"algorithm\":\"blake2b\",\"data\":\"abc\"}"),
              TH_HANDLER_OK);
    assert_json_equal(h.ctx.result,
                      "{\"algorithm\":\"blake2b\",\"hex\":"
                      "\"bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319\","
                      "\"bytes\":3}");
    hrun_free(&h);

    hrun e = {0};
    assert_rc(&e, hrun_go(&e, th_handler_hash, "{\"algorithm\":\"blake2b\",\"data_base64\":\"\"}"),
              TH_HANDLER_OK);
    assert_json_equal(e.ctx.result,
                      "{\"algorithm\":\"blake2b\",\"hex\":"
                      "\"0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8\","
                      "\"bytes\":0}");
    hrun_free(&e);
}

static void test_hash_file_streamed(void **state)
{
    (void)state;
    /* One million 'a': 16 chunks of 64 KiB. */
    size_t n = 1000000;
    char *buf = malloc(n);
    assert_non_null(buf);
    memset(buf, 'a', n);
    char *path = thtest_unique_path("hash", ".bin");
    write_file(path, buf, n);
    free(buf);
    char *jpath = jstr(path);
    char *payload = fmt("{\"file\":%s}", jpath);
    hrun h = {0};
    assert_rc(&h, hrun_go(&h, th_handler_hash, payload), TH_HANDLER_OK);
    assert_json_equal(h.ctx.result,
                      "{\"algorithm\":\"sha256\",\"hex\":"
                      "\"cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0\","
                      "\"bytes\":1000000}");
    assert_true(h.nprogress >= 2);
    assert_int_equal(h.last_pct, 100);
    hrun_free(&h);
    free(payload);

    /* Cancelled before the first chunk. */
    payload = fmt("{\"algorithm\":\"blake2b\",\"file\":%s}", jpath);
    hrun c = {0};
    hrun_prepare(&c, payload, 0);
    atomic_store(&c.ctx.stop, 1);
    assert_rc(&c, hrun_exec(&c, th_handler_hash), TH_HANDLER_RETRY);
    assert_error_is(&c, "cancelled");
    hrun_free(&c);
    free(payload);
    free(jpath);
    unlink(path);
    free(path);
}

/* ---- compress / decompress ---------------------------------------------- */

/* Compresses `payload`, decompresses the result and checks the text. */
static void round_trip(const char *alg, const char *level, const char *text)
{
    char *jtext = jstr(text);
    char *payload = fmt("{\"algorithm\":\"%s\"%s%s,\"data\":%s}", alg, level ? ",\"level\":" : "",
                        level ? level : "", jtext);
    hrun c = {0};
    assert_rc(&c, hrun_go(&c, th_handler_compress, payload), TH_HANDLER_OK);
    json_t *res = result_json(&c);
    assert_string_equal(result_str(res, "algorithm"), alg);
    assert_int_equal(result_int(res, "bytes_in"), strlen(text));
    size_t clen = 0;
    unsigned char *comp = unb64(result_str(res, "data_base64"), &clen);
    assert_int_equal(result_int(res, "bytes_out"), clen);
    free(comp);
    char *payload2 =
        fmt("{\"algorithm\":\"%s\",\"data_base64\":\"%s\"}", alg, result_str(res, "data_base64"));
    json_decref(res);

    hrun d = {0};
    assert_rc(&d, hrun_go(&d, th_handler_decompress, payload2), TH_HANDLER_OK);
    res = result_json(&d);
    assert_string_equal(result_str(res, "data"), text);
    assert_int_equal(result_int(res, "bytes_out"), strlen(text));
    assert_int_equal(result_int(res, "bytes_in"), clen);
    size_t dlen = 0;
    unsigned char *plain = unb64(result_str(res, "data_base64"), &dlen);
    assert_int_equal(dlen, strlen(text));
    assert_memory_equal(plain, text, dlen);
    free(plain);
    json_decref(res);
    hrun_free(&c);
    hrun_free(&d);
    free(payload);
    free(payload2);
    free(jtext);
}

static void test_compress_round_trip_memory(void **state)
{
    (void)state;
    char text[20000];
    size_t used = 0;
    for (int i = 0; used + 40 < sizeof text; i++)
        used += (size_t)snprintf(text + used, sizeof text - used, "line %d: caf\xc3\xa9 %d\n", i,
                                 i * 7);
    round_trip("zstd", NULL, text);
    round_trip("zstd", "19", text);
    round_trip("zlib", NULL, text);
    round_trip("zlib", "1", text);
    round_trip("zstd", NULL, "");
    round_trip("zlib", "9", "");
}

static void test_decompress_fixed_vectors(void **state)
{
    (void)state;
    /* Made by Python's zlib and by the zstd command-line tool. */
    hrun z = {0};
    assert_rc(&z,
              hrun_go(&z, th_handler_decompress,
                      "{\"algorithm\":\"zlib\",\"data_base64\":\"eJzLSM3JyQcABiwCFQ==\"}"),
              TH_HANDLER_OK);
    assert_json_equal(z.ctx.result, "{\"algorithm\":\"zlib\",\"data_base64\":\"aGVsbG8=\","
                                    "\"data\":\"hello\",\"bytes_in\":13,\"bytes_out\":5}");
    hrun_free(&z);

    hrun s = {0};
    assert_rc(&s,
              hrun_go(&s, th_handler_decompress, "{\"data_base64\":\"KLUv/QRYKQAAaGVsbG+jbZ+I\"}"),
              TH_HANDLER_OK);
    assert_json_equal(s.ctx.result, "{\"algorithm\":\"zstd\",\"data_base64\":\"aGVsbG8=\","
                                    "\"data\":\"hello\",\"bytes_in\":18,\"bytes_out\":5}");
    hrun_free(&s);
}

static void test_decompress_binary_has_no_text(void **state)
{
    (void)state;
    for (int a = 0; a < 2; a++) {
        const char *alg = a ? "zlib" : "zstd";
        char *payload = fmt("{\"algorithm\":\"%s\",\"data_base64\":\"/wD+\"}", alg);
        hrun c = {0};
        assert_rc(&c, hrun_go(&c, th_handler_compress, payload), TH_HANDLER_OK);
        json_t *res = result_json(&c);
        char *payload2 = fmt("{\"algorithm\":\"%s\",\"data_base64\":\"%s\"}", alg,
                             result_str(res, "data_base64"));
        json_decref(res);
        hrun d = {0};
        assert_rc(&d, hrun_go(&d, th_handler_decompress, payload2), TH_HANDLER_OK);
        res = result_json(&d);
        assert_string_equal(result_str(res, "data_base64"), "/wD+");
        assert_null(json_object_get(res, "data"));
        json_decref(res);
        hrun_free(&c);
        hrun_free(&d);
        free(payload);
        free(payload2);
    }
}

static void test_decompress_corrupt_input(void **state)
{
    (void)state;
    static const struct {
        const char *payload, *part;
    } cases[] = {
        {"{\"data_base64\":\"aGVsbG8gd29ybGQ=\"}", "zstd: Unknown frame descriptor"},
        {"{\"algorithm\":\"zlib\",\"data_base64\":\"aGVsbG8gd29ybGQ=\"}",
         "zlib: incorrect header check"},
        /* Valid streams cut short, or followed by junk. */
        {"{\"data_base64\":\"KLUv/QRYKQAAaGVs\"}", "zstd: the input is truncated"},
        {"{\"algorithm\":\"zlib\",\"data_base64\":\"eJzLSM3JyQcA\"}",
         "zlib: the input is truncated"},
        {"{\"algorithm\":\"zlib\",\"data_base64\":\"eJzLSM3JyQcABiwCFXh4\"}",
         "zlib: trailing data"},
        {"{\"data_base64\":\"\"}", "zstd: the input is empty"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        hrun h = {0};
        assert_rc(&h, hrun_go(&h, th_handler_decompress, cases[i].payload), TH_HANDLER_PERMANENT);
        assert_error_has(&h, cases[i].part);
        assert_null(h.ctx.result);
        hrun_free(&h);
    }
}

static void test_decompress_memory_limit(void **state)
{
    (void)state;
    /* 65 MiB of zeros compress to a few KiB and must not be inflated in
     * memory past 64 MiB. */
    size_t n = (size_t)65 << 20;
    unsigned char *zeros = calloc(1, n);
    assert_non_null(zeros);
    size_t cap = ZSTD_compressBound(n);
    unsigned char *comp = malloc(cap);
    assert_non_null(comp);
    size_t clen = ZSTD_compress(comp, cap, zeros, n, 1);
    assert_false(ZSTD_isError(clen));
    free(zeros);
    char *enc = b64(comp, clen);
    free(comp);
    char *payload = fmt("{\"data_base64\":\"%s\"}", enc);
    hrun h = {0};
    assert_rc(&h, hrun_go(&h, th_handler_decompress, payload), TH_HANDLER_PERMANENT);
    assert_error_has(&h, "64 MiB");
    assert_null(h.ctx.result);
    hrun_free(&h);
    free(payload);

    /* Streamed to a file, the same input is fine. */
    char *in = thtest_unique_path("bomb", ".zst");
    char *out = thtest_unique_path("bomb", ".raw");
    size_t rawlen = 0;
    unsigned char *raw = unb64(enc, &rawlen);
    write_file(in, raw, rawlen);
    free(raw);
    char *jin = jstr(in), *jout = jstr(out);
    payload = fmt("{\"input\":%s,\"output\":%s}", jin, jout);
    hrun f = {0};
    assert_rc(&f, hrun_go(&f, th_handler_decompress, payload), TH_HANDLER_OK);
    json_t *res = result_json(&f);
    assert_int_equal(result_int(res, "bytes_out"), n);
    json_decref(res);
    struct stat st;
    assert_int_equal(stat(out, &st), 0);
    assert_int_equal(st.st_size, n);
    hrun_free(&f);
    unlink(in);
    unlink(out);
    free(payload);
    free(jin);
    free(jout);
    free(in);
    free(out);
    free(enc);
}

/* Fails when a file whose name holds ".tmp-" is left in the temp dir. */
static void assert_no_temp_files(void)
{
    char *cmd = fmt("ls -a '%s' | grep -c '\\.tmp-' || true", thtest_tmpdir());
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char line[64] = "";
    assert_non_null(fgets(line, sizeof line, p));
    pclose(p);
    free(cmd);
    assert_string_equal(line, "0\n");
}

static void test_compress_files_round_trip(void **state)
{
    (void)state;
    size_t n = 300000;
    unsigned char *data = malloc(n);
    assert_non_null(data);
    uint32_t x = 12345;
    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        data[i] = (unsigned char)("abcdefgh \n"[(x >> 16) % 10]);
    }
    for (int a = 0; a < 2; a++) {
        const char *alg = a ? "zlib" : "zstd";
        char *in = thtest_unique_path("plain", ".txt");
        char *mid = thtest_unique_path("packed", a ? ".z" : ".zst");
        char *back = thtest_unique_path("unpacked", ".txt");
        write_file(in, data, n);
        char *jin = jstr(in), *jmid = jstr(mid), *jback = jstr(back);

        char *p1 =
            fmt("{\"algorithm\":\"%s\",\"level\":5,\"input\":%s,\"output\":%s}", alg, jin, jmid);
        hrun c = {0};
        assert_rc(&c, hrun_go(&c, th_handler_compress, p1), TH_HANDLER_OK);
        json_t *res = result_json(&c);
        assert_string_equal(result_str(res, "output"), mid);
        assert_string_equal(result_str(res, "algorithm"), alg);
        assert_int_equal(result_int(res, "bytes_in"), n);
        struct stat st;
        assert_int_equal(stat(mid, &st), 0);
        assert_int_equal(result_int(res, "bytes_out"), st.st_size);
        assert_true(st.st_size > 0 && (size_t)st.st_size < n);
        assert_int_equal(c.last_pct, 100);
        json_decref(res);

        char *p2 = fmt("{\"algorithm\":\"%s\",\"input\":%s,\"output\":%s}", alg, jmid, jback);
        hrun d = {0};
        assert_rc(&d, hrun_go(&d, th_handler_decompress, p2), TH_HANDLER_OK);
        res = result_json(&d);
        assert_int_equal(result_int(res, "bytes_in"), st.st_size);
        assert_int_equal(result_int(res, "bytes_out"), n);
        json_decref(res);
        size_t blen = 0;
        unsigned char *got = read_file(back, &blen);
        assert_int_equal(blen, n);
        assert_memory_equal(got, data, n);
        free(got);

        /* A cancelled run leaves neither the output nor a temporary file. */
        char *gone = thtest_unique_path("never", ".zst");
        char *jgone = jstr(gone);
        char *p3 = fmt("{\"algorithm\":\"%s\",\"input\":%s,\"output\":%s}", alg, jin, jgone);
        hrun x2 = {0};
        hrun_prepare(&x2, p3, 0);
        atomic_store(&x2.ctx.stop, 1);
        assert_rc(&x2, hrun_exec(&x2, th_handler_compress), TH_HANDLER_RETRY);
        assert_error_is(&x2, "cancelled");
        assert_int_equal(access(gone, F_OK), -1);
        assert_no_temp_files();

        hrun_free(&c);
        hrun_free(&d);
        hrun_free(&x2);
        unlink(in);
        unlink(mid);
        unlink(back);
        free(p1);
        free(p2);
        free(p3);
        free(jin);
        free(jmid);
        free(jback);
        free(jgone);
        free(in);
        free(mid);
        free(back);
        free(gone);
    }
    free(data);
}

/* ---- encrypt / decrypt -------------------------------------------------- */

static void test_crypto_round_trip(void **state)
{
    (void)state;
    hrun e = {0};
    hrun_config(&e, "crypto.key", KEY_HEX);
    assert_rc(&e, hrun_go(&e, th_handler_encrypt, "{\"data\":\"attack at dawn \xe2\x9c\x93\"}"),
              TH_HANDLER_OK);
    json_t *res = result_json(&e);
    assert_int_equal(json_object_size(res), 2);
    size_t nlen = 0, clen = 0;
    free(unb64(result_str(res, "nonce_base64"), &nlen));
    free(unb64(result_str(res, "ciphertext_base64"), &clen));
    assert_int_equal(nlen, crypto_secretbox_NONCEBYTES);
    assert_int_equal(clen, strlen("attack at dawn \xe2\x9c\x93") + crypto_secretbox_MACBYTES);
    char *payload = fmt("{\"nonce_base64\":\"%s\",\"ciphertext_base64\":\"%s\"}",
                        result_str(res, "nonce_base64"), result_str(res, "ciphertext_base64"));

    /* The same plaintext again: a fresh nonce, another ciphertext. */
    hrun e2 = {0};
    hrun_config(&e2, "crypto.key", KEY_HEX);
    assert_rc(&e2, hrun_go(&e2, th_handler_encrypt, "{\"data\":\"attack at dawn \xe2\x9c\x93\"}"),
              TH_HANDLER_OK);
    json_t *res2 = result_json(&e2);
    assert_string_not_equal(result_str(res, "nonce_base64"), result_str(res2, "nonce_base64"));
    assert_string_not_equal(result_str(res, "ciphertext_base64"),
                            result_str(res2, "ciphertext_base64"));
    json_decref(res2);
    json_decref(res);

    hrun d = {0};
    hrun_config(&d, "crypto.key", KEY_HEX);
    assert_rc(&d, hrun_go(&d, th_handler_decrypt, payload), TH_HANDLER_OK);
    assert_json_equal(d.ctx.result, "{\"data_base64\":\"YXR0YWNrIGF0IGRhd24g4pyT\","
                                    "\"data\":\"attack at dawn \xe2\x9c\x93\"}");
    hrun_free(&e);
    hrun_free(&e2);
    hrun_free(&d);
    free(payload);

    /* Binary data: only data_base64 comes back. */
    hrun b = {0};
    hrun_config(&b, "crypto.key", KEY_HEX);
    assert_rc(&b, hrun_go(&b, th_handler_encrypt, "{\"data_base64\":\"/wD+\"}"), TH_HANDLER_OK);
    res = result_json(&b);
    payload = fmt("{\"nonce_base64\":\"%s\",\"ciphertext_base64\":\"%s\"}",
                  result_str(res, "nonce_base64"), result_str(res, "ciphertext_base64"));
    json_decref(res);
    hrun bd = {0};
    hrun_config(&bd, "crypto.key", KEY_HEX);
    assert_rc(&bd, hrun_go(&bd, th_handler_decrypt, payload), TH_HANDLER_OK);
    assert_json_equal(bd.ctx.result, "{\"data_base64\":\"/wD+\"}");
    hrun_free(&b);
    hrun_free(&bd);
    free(payload);
}

/* A secretbox made here with libsodium directly, with a fixed nonce. */
static char *external_box(const char *plain, unsigned char flip_byte, size_t flip_at)
{
    unsigned char key[32], nonce[24];
    size_t klen = 0;
    assert_int_equal(sodium_hex2bin(key, sizeof key, KEY_HEX, 64, NULL, &klen, NULL), 0);
    for (int i = 0; i < 24; i++)
        nonce[i] = (unsigned char)(i * 3);
    size_t plen = strlen(plain), blen = plen + crypto_secretbox_MACBYTES;
    unsigned char *box = malloc(blen);
    assert_non_null(box);
    crypto_secretbox_easy(box, (const unsigned char *)plain, plen, nonce, key);
    box[flip_at % blen] ^= flip_byte;
    char *n64 = b64(nonce, sizeof nonce), *c64 = b64(box, blen);
    char *payload = fmt("{\"nonce_base64\":\"%s\",\"ciphertext_base64\":\"%s\"}", n64, c64);
    free(n64);
    free(c64);
    free(box);
    return payload;
}

static void test_decrypt_external_and_tampered(void **state)
{
    (void)state;
    assert_true(sodium_init() >= 0);
    char *payload = external_box("made elsewhere", 0, 0);
    hrun h = {0};
    hrun_config(&h, "crypto.key", KEY_HEX);
    assert_rc(&h, hrun_go(&h, th_handler_decrypt, payload), TH_HANDLER_OK);
    assert_json_equal(h.ctx.result,
                      "{\"data_base64\":\"bWFkZSBlbHNld2hlcmU=\",\"data\":\"made elsewhere\"}");
    hrun_free(&h);

    /* Wrong key. */
    hrun w = {0};
    hrun_config(&w, "crypto.key",
                "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
    assert_rc(&w, hrun_go(&w, th_handler_decrypt, payload), TH_HANDLER_PERMANENT);
    assert_error_is(&w, "authentication failed");
    assert_null(w.ctx.result);
    hrun_free(&w);
    free(payload);

    /* One flipped bit anywhere in the tag or the ciphertext. */
    size_t len = strlen("made elsewhere") + crypto_secretbox_MACBYTES;
    for (size_t at = 0; at < len; at += 5) {
        payload = external_box("made elsewhere", 0x01, at);
        hrun t = {0};
        hrun_config(&t, "crypto.key", KEY_HEX);
        assert_rc(&t, hrun_go(&t, th_handler_decrypt, payload), TH_HANDLER_PERMANENT);
        assert_error_is(&t, "authentication failed");
        hrun_free(&t);
        free(payload);
    }
}

/* ---- exec --------------------------------------------------------------- */

static void test_exec_argv_output_and_logs(void **state)
{
    (void)state;
    hrun h = {0};
    hrun_config(&h, "exec.command.echo", "[\"/bin/echo\",\"hello\"]");
    assert_rc(&h, hrun_go(&h, th_handler_exec, "{\"command\":\"echo\",\"args\":[\"world\"]}"),
              TH_HANDLER_OK);
    assert_json_equal(h.ctx.result,
                      "{\"exit_code\":0,\"signal\":null,\"stdout\":\"hello world\\n\"}");
    assert_int_equal(h.nlogs, 1);
    assert_int_equal(h.logs[0].level, TH_LOG_INFO);
    assert_string_equal(h.logs[0].msg, "hello world");
    hrun_free(&h);

    /* Arguments never meet a shell. */
    hrun s = {0};
    hrun_config(&s, "exec.command.echo", "[\"echo\"]");
    assert_rc(&s,
              hrun_go(&s, th_handler_exec,
                      "{\"command\":\"echo\",\"args\":[\"$(id)\",\"a;b\",\"`x`|y\"]}"),
              TH_HANDLER_OK);
    assert_json_equal(s.ctx.result,
                      "{\"exit_code\":0,\"signal\":null,\"stdout\":\"$(id) a;b `x`|y\\n\"}");
    hrun_free(&s);
}

static void test_exec_stdout_stderr_levels(void **state)
{
    (void)state;
    hrun h = {0};
    hrun_config(&h, "exec.command.sh", "[\"/bin/sh\",\"-c\"]");
    assert_rc(&h,
              hrun_go(&h, th_handler_exec,
                      "{\"command\":\"sh\",\"args\":[\"echo out1; echo err1 >&2; "
                      "printf 'crlf\\\\r\\\\n'; echo err2 >&2; printf partial\"]}"),
              TH_HANDLER_OK);
    json_t *res = result_json(&h);
    assert_string_equal(result_str(res, "stdout"), "out1\ncrlf\r\npartial");
    json_decref(res);
    char buf[256];
    logs_at(&h, TH_LOG_INFO, buf, sizeof buf);
    assert_string_equal(buf, "out1\ncrlf\npartial");
    logs_at(&h, TH_LOG_WARN, buf, sizeof buf);
    assert_string_equal(buf, "err1\nerr2");
    assert_int_equal(h.nlogs, 5);
    hrun_free(&h);
}

static void test_exec_exit_status_and_signal(void **state)
{
    (void)state;
    hrun h = {0};
    hrun_config(&h, "exec.command.sh", "[\"/bin/sh\",\"-c\"]");
    assert_rc(&h,
              hrun_go(&h, th_handler_exec, "{\"command\":\"sh\",\"args\":[\"echo bye; exit 3\"]}"),
              TH_HANDLER_RETRY);
    assert_error_is(&h, "exited with status 3");
    assert_json_equal(h.ctx.result, "{\"exit_code\":3,\"signal\":null,\"stdout\":\"bye\\n\"}");
    hrun_free(&h);

    hrun k = {0};
    hrun_config(&k, "exec.command.sh", "[\"/bin/sh\",\"-c\"]");
    assert_rc(&k, hrun_go(&k, th_handler_exec, "{\"command\":\"sh\",\"args\":[\"kill -9 $$\"]}"),
              TH_HANDLER_RETRY);
    assert_error_is(&k, "killed by signal 9");
    assert_json_equal(k.ctx.result, "{\"exit_code\":null,\"signal\":9,\"stdout\":\"\"}");
    hrun_free(&k);

    hrun f = {0};
    hrun_config(&f, "exec.command.false", "[\"false\"]");
    assert_rc(&f, hrun_go(&f, th_handler_exec, "{\"command\":\"false\"}"), TH_HANDLER_RETRY);
    assert_error_is(&f, "exited with status 1");
    hrun_free(&f);
}

static void test_exec_stdin(void **state)
{
    (void)state;
    hrun h = {0};
    hrun_config(&h, "exec.command.cat", "[\"/bin/cat\"]");
    assert_rc(&h,
              hrun_go(&h, th_handler_exec, "{\"command\":\"cat\",\"stdin\":\"line1\\nline2\\n\"}"),
              TH_HANDLER_OK);
    assert_json_equal(h.ctx.result,
                      "{\"exit_code\":0,\"signal\":null,\"stdout\":\"line1\\nline2\\n\"}");
    hrun_free(&h);

    /* No stdin: the child reads /dev/null and does not wait. */
    hrun n = {0};
    hrun_config(&n, "exec.command.cat", "[\"/bin/cat\"]");
    assert_rc(&n, hrun_go(&n, th_handler_exec, "{\"command\":\"cat\"}"), TH_HANDLER_OK);
    assert_json_equal(n.ctx.result, "{\"exit_code\":0,\"signal\":null,\"stdout\":\"\"}");
    assert_true(n.elapsed_ms < 5000);
    hrun_free(&n);
}

static void test_exec_large_io_tail_and_log_cap(void **state)
{
    (void)state;
    /* 1 MiB of numbered lines through cat: both directions at once. */
    size_t lines = 131072, n = lines * 8;
    char *in = malloc(n + 1);
    assert_non_null(in);
    for (size_t i = 0; i < lines; i++)
        snprintf(in + i * 8, 9, "%07zu\n", i);
    json_t *p = json_pack("{s:s, s:s%}", "command", "cat", "stdin", in, n);
    assert_non_null(p);
    char *payload = json_dumps(p, JSON_COMPACT);
    json_decref(p);
    hrun h = {0};
    hrun_config(&h, "exec.command.cat", "[\"/bin/cat\"]");
    assert_rc(&h, hrun_go(&h, th_handler_exec, payload), TH_HANDLER_OK);
    json_t *res = result_json(&h);
    const char *tail = result_str(res, "stdout");
    assert_int_equal(strlen(tail), 65536);
    assert_memory_equal(tail, in + n - 65536, 65536);
    json_decref(res);
    assert_int_equal(h.nlogs, 1001);
    assert_string_equal(h.logs[0].msg, "0000000");
    assert_string_equal(h.logs[999].msg, "0000999");
    assert_string_equal(h.logs[1000].msg, "... truncated");
    hrun_free(&h);
    free(payload);

    /* A child that never reads its stdin: no SIGPIPE for us. */
    p = json_pack("{s:s, s:s%}", "command", "true", "stdin", in, n);
    payload = json_dumps(p, JSON_COMPACT);
    json_decref(p);
    hrun t = {0};
    hrun_config(&t, "exec.command.true", "[\"/bin/true\"]");
    assert_rc(&t, hrun_go(&t, th_handler_exec, payload), TH_HANDLER_OK);
    assert_json_equal(t.ctx.result, "{\"exit_code\":0,\"signal\":null,\"stdout\":\"\"}");
    hrun_free(&t);
    free(payload);
    free(in);
}

static void test_exec_env_and_cwd(void **state)
{
    (void)state;
    char real[4096];
    assert_non_null(realpath(thtest_tmpdir(), real));
    char *jdir = jstr(thtest_tmpdir());
    char *payload = fmt("{\"command\":\"sh\",\"args\":[\"echo \\\"$FOO|$TH_BAR|${PATH:+path}\\\"; "
                        "pwd -P\"],\"env\":{\"FOO\":\"bar baz\",\"TH_BAR\":\"\"},\"cwd\":%s}",
                        jdir);
    setenv("FOO", "inherited", 1);
    hrun h = {0};
    hrun_config(&h, "exec.command.sh", "[\"/bin/sh\",\"-c\"]");
    assert_rc(&h, hrun_go(&h, th_handler_exec, payload), TH_HANDLER_OK);
    unsetenv("FOO");
    json_t *res = result_json(&h);
    char *want = fmt("bar baz||path\n%s\n", real);
    assert_string_equal(result_str(res, "stdout"), want);
    json_decref(res);
    hrun_free(&h);
    free(want);
    free(payload);
    free(jdir);
}

static void test_exec_child_gets_clean_fds_and_signals(void **state)
{
    (void)state;
    int fd = open("/dev/null", O_RDONLY); /* deliberately not close-on-exec */
    assert_true(fd > 2);
    sigset_t usr1, old;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, &old);
    struct sigaction ign = {.sa_handler = SIG_IGN}, prev;
    sigaction(SIGUSR2, &ign, &prev);

    char *payload =
        fmt("{\"command\":\"sh\",\"args\":[\"if [ -e /proc/self/fd/%d ]; then echo open; else echo "
            "closed; fi; grep -E '^Sig(Blk|Ign)' /proc/self/status\"]}",
            fd);
    hrun h = {0};
    hrun_config(&h, "exec.command.sh", "[\"/bin/sh\",\"-c\"]");
    int rc = hrun_go(&h, th_handler_exec, payload);
    sigaction(SIGUSR2, &prev, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(fd);
    assert_int_equal(rc, TH_HANDLER_OK);
    json_t *res = result_json(&h);
    /* Standard signals (1..31) only: glibc's posix_spawn leaves its two
     * internal real-time signals (32, 33) ignored in the child. */
    unsigned long long blk = 1, ignored = 1;
    assert_int_equal(
        sscanf(result_str(res, "stdout"), "closed\nSigBlk:\t%llx\nSigIgn:\t%llx", &blk, &ignored),
        2);
    assert_int_equal(blk & 0x7fffffffULL, 0);
    assert_int_equal(ignored & 0x7fffffffULL, 0);
    json_decref(res);
    hrun_free(&h);
    free(payload);
}

/* 1 while a live (not zombie) process is in process group `pgid`. Orphans
 * killed by the handler may stay zombies when nothing reaps them (a container
 * init), so dead means gone or zombie. */
static int group_alive_now(pid_t pgid)
{
    DIR *d = opendir("/proc");
    assert_non_null(d);
    struct dirent *e;
    int alive = 0;
    while (!alive && (e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char path[300], buf[512];
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        /* pid (comm) state ppid pgrp ...; comm may hold spaces. */
        char *rp = strrchr(buf, ')');
        char state = 0;
        int ppid = 0, pgrp = 0;
        if (rp && sscanf(rp + 1, " %c %d %d", &state, &ppid, &pgrp) == 3 && pgrp == pgid &&
            state != 'Z' && state != 'X')
            alive = 1;
    }
    closedir(d);
    return alive;
}

/* Waits up to 2 s (SIGKILL takes a moment to land) for the group to die. */
static void assert_group_dead(pid_t pgid)
{
    for (int i = 0; i < 200 && group_alive_now(pgid); i++) {
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    if (group_alive_now(pgid))
        fail_msg("process group %d still has live members", (int)pgid);
}

/* The pid the command printed first (the shell's $$, its process group). */
static pid_t first_logged_pid(const hrun *h)
{
    assert_true(h->nlogs >= 1);
    char *end = NULL;
    long pid = strtol(h->logs[0].msg, &end, 10);
    assert_true(pid > 1 && end && *end == '\0');
    return (pid_t)pid;
}

static void test_exec_timeout_kills_child(void **state)
{
    (void)state;
    hrun h = {0};
    hrun_config(&h, "exec.allow_shell", "true");
    hrun_prepare(&h, "{\"shell\":\"echo $$; exec /bin/sleep 30\"}", 300);
    assert_rc(&h, hrun_exec(&h, th_handler_exec), TH_HANDLER_RETRY);
    assert_error_is(&h, "cancelled");
    assert_true(h.elapsed_ms >= 250 && h.elapsed_ms < 5000);
    pid_t pid = first_logged_pid(&h);
    assert_int_equal(kill(pid, 0), -1); /* reaped by the handler */
    assert_int_equal(errno, ESRCH);
    assert_group_dead(pid);
    char *want = fmt("{\"exit_code\":null,\"signal\":%d,\"stdout\":\"%d\\n\"}", SIGTERM, (int)pid);
    assert_json_equal(h.ctx.result, want);
    free(want);
    hrun_free(&h);
}

static void test_exec_stop_flag_escalates_to_sigkill(void **state)
{
    (void)state;
    hrun h = {0};
    stopper s;
    hrun_config(&h, "exec.allow_shell", "true");
    /* The shell and its sleep both ignore SIGTERM. */
    hrun_prepare(&h, "{\"shell\":\"trap '' TERM; echo $$; /bin/sleep 30; echo not reached\"}", 0);
    stopper_start(&s, &h.ctx, 200);
    assert_rc(&h, hrun_exec(&h, th_handler_exec), TH_HANDLER_RETRY);
    stopper_join(&s);
    assert_error_is(&h, "cancelled");
    /* SIGTERM at ~200 ms, SIGKILL 2 s later. */
    assert_true(h.elapsed_ms >= 2100 && h.elapsed_ms < 10000);
    assert_group_dead(first_logged_pid(&h));
    json_t *res = result_json(&h);
    assert_int_equal(result_int(res, "signal"), SIGKILL);
    json_decref(res);
    hrun_free(&h);
}

static void test_exec_stray_background_process_killed(void **state)
{
    (void)state;
    hrun h = {0};
    hrun_config(&h, "exec.allow_shell", "true");
    assert_rc(&h, hrun_go(&h, th_handler_exec, "{\"shell\":\"/bin/sleep 30 & echo $$\"}"),
              TH_HANDLER_OK);
    assert_true(h.elapsed_ms < 5000);
    assert_group_dead(first_logged_pid(&h));
    hrun_free(&h);
}

static void test_exec_shell_only_when_allowed(void **state)
{
    (void)state;
    const char *configs[] = {NULL, "false", "1", "TRUE"};
    for (size_t i = 0; i < sizeof configs / sizeof configs[0]; i++) {
        hrun h = {0};
        if (configs[i])
            hrun_config(&h, "exec.allow_shell", configs[i]);
        assert_rc(&h, hrun_go(&h, th_handler_exec, "{\"shell\":\"echo hi\"}"),
                  TH_HANDLER_PERMANENT);
        assert_error_has(&h, "payload.shell: ");
        assert_null(h.ctx.result);
        hrun_free(&h);
    }
    hrun ok = {0};
    hrun_config(&ok, "exec.allow_shell", "true");
    assert_rc(&ok, hrun_go(&ok, th_handler_exec, "{\"shell\":\"echo hi | tr h H\"}"),
              TH_HANDLER_OK);
    assert_json_equal(ok.ctx.result, "{\"exit_code\":0,\"signal\":null,\"stdout\":\"Hi\\n\"}");
    hrun_free(&ok);
}

static void test_exec_cannot_execute_is_permanent(void **state)
{
    (void)state;
    hrun h = {0};
    hrun_config(&h, "exec.command.ghost", "[\"/nonexistent/ghost\",\"x\"]");
    assert_rc(&h, hrun_go(&h, th_handler_exec, "{\"command\":\"ghost\"}"), TH_HANDLER_PERMANENT);
    assert_error_has(&h, "exec.command.ghost: cannot execute \"/nonexistent/ghost\"");
    assert_error_has(&h, "No such file");
    hrun_free(&h);

    /* A directory is not executable either. */
    hrun d = {0};
    hrun_config(&d, "exec.command.dir", "[\"/\"]");
    assert_rc(&d, hrun_go(&d, th_handler_exec, "{\"command\":\"dir\"}"), TH_HANDLER_PERMANENT);
    assert_error_has(&d, "exec.command.dir: ");
    hrun_free(&d);
}

/* ---- http --------------------------------------------------------------- */

typedef struct server {
    int fd;
    int port;
    pthread_t thread;
    atomic_int stop;
    atomic_int requests;
} server;

static server g_srv = {.fd = -1};

static void send_all(int c, const char *buf, size_t len)
{
    while (len) {
        ssize_t w = send(c, buf, len, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        buf += w;
        len -= (size_t)w;
    }
}

static void respond(int c, int head_only, int status, const char *reason, const char *ctype,
                    const char *extra, const char *body, size_t len)
{
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Length: %zu\r\nConnection: close\r\n%s%s%s%s\r\n",
                     status, reason, len, ctype ? "Content-Type: " : "", ctype ? ctype : "",
                     ctype ? "\r\n" : "", extra ? extra : "");
    send_all(c, head, (size_t)n);
    if (!head_only)
        send_all(c, body, len);
}

/* Reads one request (headers and Content-Length body) into req. */
static size_t read_request(int c, char *req, size_t cap)
{
    size_t len = 0, need = 0;
    for (;;) {
        struct pollfd pf = {.fd = c, .events = POLLIN};
        if (poll(&pf, 1, 5000) <= 0)
            return len;
        ssize_t r = recv(c, req + len, cap - 1 - len, 0);
        if (r <= 0)
            return len;
        len += (size_t)r;
        req[len] = '\0';
        char *end = strstr(req, "\r\n\r\n");
        if (end && !need) {
            need = (size_t)(end + 4 - req);
            for (char *h = req; h && h < end; h = strstr(h, "\r\n")) {
                h += 2;
                if (strncasecmp(h, "Content-Length:", 15) == 0)
                    need += strtoul(h + 15, NULL, 10);
            }
        }
        if (need && len >= need)
            return len;
        if (len + 1 >= cap)
            return len;
    }
}

static void serve(int c)
{
    static char req[65536];
    size_t len = read_request(c, req, sizeof req);
    if (!len)
        return;
    atomic_fetch_add(&g_srv.requests, 1);
    char method[16] = "", path[256] = "";
    if (sscanf(req, "%15s %255s", method, path) != 2)
        return;
    int head = strcmp(method, "HEAD") == 0;
    if (strcmp(path, "/ok") == 0) {
        respond(c, head, 200, "OK", "text/plain", NULL, "hello", 5);
    } else if (strcmp(path, "/unavailable") == 0) {
        respond(c, head, 503, "Service Unavailable", "text/plain", NULL, "busy", 4);
    } else if (strcmp(path, "/throttled") == 0) {
        respond(c, head, 429, "Too Many Requests", NULL, NULL, "", 0);
    } else if (strcmp(path, "/redirect") == 0) {
        respond(c, head, 302, "Found", NULL, "Location: /ok\r\n", "", 0);
    } else if (strcmp(path, "/echo") == 0) {
        respond(c, head, 200, "OK", "text/plain; charset=utf-8", NULL, req, len);
    } else if (strcmp(path, "/big") == 0) {
        size_t n = (size_t)3 << 19; /* 1.5 MiB */
        char *body = malloc(n);
        assert_non_null(body);
        memset(body, 'x', n);
        respond(c, head, 200, "OK", "application/octet-stream", NULL, body, n);
        free(body);
    } else if (strcmp(path, "/slow") == 0) {
        /* Answers after 10 s, or not at all once the client has gone. */
        struct pollfd pf = {.fd = c, .events = POLLIN};
        if (poll(&pf, 1, 10000) == 0)
            respond(c, head, 200, "OK", "text/plain", NULL, "late", 4);
    } else {
        respond(c, head, 404, "Not Found", "text/plain", NULL, "no such page", 12);
    }
}

static void *server_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&g_srv.stop)) {
        struct pollfd pf = {.fd = g_srv.fd, .events = POLLIN};
        if (poll(&pf, 1, 50) <= 0)
            continue;
        int c = accept(g_srv.fd, NULL, NULL);
        if (c < 0)
            continue;
        serve(c);
        close(c);
    }
    return NULL;
}

static int server_setup(void **state)
{
    (void)state;
    g_srv.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (g_srv.fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    if (bind(g_srv.fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(g_srv.fd, 16) != 0 ||
        getsockname(g_srv.fd, (struct sockaddr *)&a, &alen) != 0)
        return -1;
    g_srv.port = ntohs(a.sin_port);
    atomic_store(&g_srv.stop, 0);
    return pthread_create(&g_srv.thread, NULL, server_main, NULL) == 0 ? 0 : -1;
}

static int server_teardown(void **state)
{
    (void)state;
    atomic_store(&g_srv.stop, 1);
    pthread_join(g_srv.thread, NULL);
    close(g_srv.fd);
    g_srv.fd = -1;
    return 0;
}

/* Runs the http handler on `path` of the test server with extra fields. */
static int http_run(hrun *h, const char *path, const char *extra, int64_t timeout_ms)
{
    char *payload = fmt("{\"url\":\"http://127.0.0.1:%d%s\"%s%s}", g_srv.port, path,
                        extra ? "," : "", extra ? extra : "");
    hrun_prepare(h, payload, timeout_ms);
    int rc = hrun_exec(h, th_handler_http);
    free(payload);
    return rc;
}

static void test_http_get_ok(void **state)
{
    (void)state;
    hrun h = {0};
    assert_rc(&h, http_run(&h, "/ok", NULL, 0), TH_HANDLER_OK);
    assert_json_equal(h.ctx.result,
                      "{\"status\":200,\"body\":\"hello\",\"content_type\":\"text/plain\"}");
    assert_null(h.ctx.error);
    hrun_free(&h);

    /* A redirect is a result, not followed. */
    hrun r = {0};
    assert_rc(&r, http_run(&r, "/redirect", NULL, 0), TH_HANDLER_OK);
    assert_json_equal(r.ctx.result, "{\"status\":302,\"body\":\"\",\"content_type\":null}");
    hrun_free(&r);

    hrun hd = {0};
    assert_rc(&hd, http_run(&hd, "/ok", "\"method\":\"HEAD\"", 0), TH_HANDLER_OK);
    assert_json_equal(hd.ctx.result,
                      "{\"status\":200,\"body\":\"\",\"content_type\":\"text/plain\"}");
    hrun_free(&hd);
}

static void test_http_status_classes(void **state)
{
    (void)state;
    static const struct {
        const char *path;
        int rc, status;
        const char *error;
    } cases[] = {
        {"/unavailable", TH_HANDLER_RETRY, 503, "HTTP status 503"},
        {"/throttled", TH_HANDLER_RETRY, 429, "HTTP status 429"},
        {"/missing", TH_HANDLER_PERMANENT, 404, "HTTP status 404"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        hrun h = {0};
        assert_rc(&h, http_run(&h, cases[i].path, NULL, 0), cases[i].rc);
        assert_error_is(&h, cases[i].error);
        json_t *res = result_json(&h);
        assert_int_equal(result_int(res, "status"), cases[i].status);
        json_decref(res);
        hrun_free(&h);
    }
}

static void test_http_methods_headers_body(void **state)
{
    (void)state;
    hrun h = {0};
    assert_rc(&h,
              http_run(&h, "/echo",
                       "\"method\":\"POST\",\"headers\":{\"X-Test\":\"yes\","
                       "\"Content-Type\":\"application/json\"},\"body\":\"{\\\"a\\\":1}\"",
                       0),
              TH_HANDLER_OK);
    json_t *res = result_json(&h);
    const char *echo = result_str(res, "body");
    assert_true(strncmp(echo, "POST /echo HTTP/1.1\r\n", 21) == 0);
    assert_non_null(strstr(echo, "\r\nX-Test: yes\r\n"));
    assert_non_null(strstr(echo, "\r\nContent-Type: application/json\r\n"));
    assert_non_null(strstr(echo, "\r\nContent-Length: 7\r\n"));
    assert_null(strstr(echo, "Expect:"));
    assert_true(strlen(echo) > 7 && strcmp(echo + strlen(echo) - 11, "\r\n\r\n{\"a\":1}") == 0);
    assert_string_equal(result_str(res, "content_type"), "text/plain; charset=utf-8");
    json_decref(res);
    hrun_free(&h);

    static const char *const methods[] = {"PUT", "PATCH", "DELETE"};
    for (size_t i = 0; i < 3; i++) {
        char *extra = fmt("\"method\":\"%s\",\"body\":\"b%zu\"", methods[i], i);
        hrun m = {0};
        assert_rc(&m, http_run(&m, "/echo", extra, 0), TH_HANDLER_OK);
        res = result_json(&m);
        char *want = fmt("%s /echo HTTP/1.1\r\n", methods[i]);
        assert_true(strncmp(result_str(res, "body"), want, strlen(want)) == 0);
        char *tail = fmt("\r\n\r\nb%zu", i);
        const char *body = result_str(res, "body");
        assert_string_equal(body + strlen(body) - strlen(tail), tail);
        json_decref(res);
        hrun_free(&m);
        free(extra);
        free(want);
        free(tail);
    }
}

static void test_http_body_truncated_at_1mib(void **state)
{
    (void)state;
    hrun h = {0};
    assert_rc(&h, http_run(&h, "/big", NULL, 0), TH_HANDLER_OK);
    json_t *res = result_json(&h);
    assert_int_equal(result_int(res, "status"), 200);
    assert_int_equal(strlen(result_str(res, "body")), (size_t)1 << 20);
    assert_true(json_is_true(json_object_get(res, "truncated")));
    json_decref(res);
    hrun_free(&h);

    hrun s = {0};
    assert_rc(&s, http_run(&s, "/ok", NULL, 0), TH_HANDLER_OK);
    res = result_json(&s);
    assert_null(json_object_get(res, "truncated"));
    json_decref(res);
    hrun_free(&s);
}

static void test_http_timeout_retries(void **state)
{
    (void)state;
    hrun h = {0};
    assert_rc(&h, http_run(&h, "/slow", "\"timeout_ms\":300", 0), TH_HANDLER_RETRY);
    assert_error_has(&h, "curl: ");
    assert_error_has(&h, "timed out");
    assert_true(h.elapsed_ms >= 250 && h.elapsed_ms < 5000);
    hrun_free(&h);

    /* The task's own deadline bounds the request too. */
    hrun d = {0};
    assert_rc(&d, http_run(&d, "/slow", NULL, 300), TH_HANDLER_RETRY);
    assert_true(d.elapsed_ms < 5000);
    assert_non_null(d.ctx.error);
    hrun_free(&d);
}

static void test_http_cancelled(void **state)
{
    (void)state;
    hrun h = {0};
    stopper s;
    char *payload = fmt("{\"url\":\"http://127.0.0.1:%d/slow\"}", g_srv.port);
    hrun_prepare(&h, payload, 0);
    stopper_start(&s, &h.ctx, 200);
    assert_rc(&h, hrun_exec(&h, th_handler_http), TH_HANDLER_RETRY);
    stopper_join(&s);
    assert_error_is(&h, "cancelled");
    assert_true(h.elapsed_ms >= 150 && h.elapsed_ms < 5000);
    hrun_free(&h);
    free(payload);
}

static void test_http_connection_refused(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
    close(fd); /* nobody listens there now */
    char *payload = fmt("{\"url\":\"http://127.0.0.1:%d/\"}", ntohs(a.sin_port));
    hrun h = {0};
    assert_rc(&h, hrun_go(&h, th_handler_http, payload), TH_HANDLER_RETRY);
    assert_error_has(&h, "curl: ");
    assert_null(h.ctx.result);
    hrun_free(&h);
    free(payload);
}

/* ---- bad payloads ------------------------------------------------------- */

typedef struct bad_case {
    th_handler_fn fn;
    const char *payload;
    const char *field;             /* the error must start with "<field>: " */
    const char *cfg_key, *cfg_val; /* extra configuration, or NULL */
    int no_defaults;               /* without the usual key and commands */
} bad_case;

#define NONCE24 "\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\""

static const bad_case bad_cases[] = {
    /* sleep */
    {th_handler_sleep, "{}", "payload.ms", NULL, NULL, 0},
    {th_handler_sleep, "null", "payload.ms", NULL, NULL, 0},
    {th_handler_sleep, "{\"ms\":-1}", "payload.ms", NULL, NULL, 0},
    {th_handler_sleep, "{\"ms\":86400001}", "payload.ms", NULL, NULL, 0},
    {th_handler_sleep, "{\"ms\":\"10\"}", "payload.ms", NULL, NULL, 0},
    {th_handler_sleep, "{\"ms\":1.5}", "payload.ms", NULL, NULL, 0},
    {th_handler_sleep, "{\"ms\":1,\"extra\":true}", "payload.extra", NULL, NULL, 0},
    {th_handler_sleep, "[1,2]", "payload", NULL, NULL, 0},
    {th_handler_sleep, "\"text\"", "payload", NULL, NULL, 0},
    {th_handler_sleep, "{\"ms\":1,\"ms\":2}", "payload", NULL, NULL, 0},
    /* hash */
    {th_handler_hash, "{\"algorithm\":\"md5\",\"data\":\"x\"}", "payload.algorithm", NULL, NULL, 0},
    {th_handler_hash, "{\"algorithm\":7,\"data\":\"x\"}", "payload.algorithm", NULL, NULL, 0},
    {th_handler_hash, "{}", "payload.data", NULL, NULL, 0},
    {th_handler_hash, "{\"data\":\"x\",\"data_base64\":\"eA==\"}", "payload.data_base64", NULL,
     NULL, 0},
    {th_handler_hash, "{\"data\":\"x\",\"file\":\"/dev/null\"}", "payload.file", NULL, NULL, 0},
    {th_handler_hash, "{\"data\":5}", "payload.data", NULL, NULL, 0},
    {th_handler_hash, "{\"data_base64\":\"***\"}", "payload.data_base64", NULL, NULL, 0},
    {th_handler_hash, "{\"file\":\"\"}", "payload.file", NULL, NULL, 0},
    {th_handler_hash, "{\"file\":\"/nonexistent/x\"}", "payload.file", NULL, NULL, 0},
    {th_handler_hash, "{\"file\":\"/\"}", "payload.file", NULL, NULL, 0},
    {th_handler_hash, "{\"data\":\"x\",\"colour\":1}", "payload.colour", NULL, NULL, 0},
    /* compress / decompress */
    {th_handler_compress, "{\"algorithm\":\"lz4\",\"data\":\"x\"}", "payload.algorithm", NULL, NULL,
     0},
    {th_handler_compress, "{\"level\":0,\"data\":\"x\"}", "payload.level", NULL, NULL, 0},
    {th_handler_compress, "{\"level\":20,\"data\":\"x\"}", "payload.level", NULL, NULL, 0},
    {th_handler_compress, "{\"algorithm\":\"zlib\",\"level\":10,\"data\":\"x\"}", "payload.level",
     NULL, NULL, 0},
    {th_handler_compress, "{\"level\":\"3\",\"data\":\"x\"}", "payload.level", NULL, NULL, 0},
    {th_handler_compress, "{}", "payload.data", NULL, NULL, 0},
    {th_handler_compress, "{\"input\":\"/dev/null\"}", "payload.output", NULL, NULL, 0},
    {th_handler_compress, "{\"output\":\"/tmp/x\"}", "payload.input", NULL, NULL, 0},
    {th_handler_compress, "{\"data\":\"x\",\"input\":\"a\",\"output\":\"b\"}", "payload.input",
     NULL, NULL, 0},
    {th_handler_compress, "{\"input\":\"/nonexistent/in\",\"output\":\"/nonexistent/out\"}",
     "payload.input", NULL, NULL, 0},
    {th_handler_compress, "{\"input\":\"/dev/null\",\"output\":\"/nonexistent/dir/out\"}",
     "payload.output", NULL, NULL, 0},
    {th_handler_compress, "{\"input\":\"\",\"output\":\"x\"}", "payload.input", NULL, NULL, 0},
    {th_handler_decompress, "{\"data\":\"abc\"}", "payload.data", NULL, NULL, 0},
    {th_handler_decompress, "{\"level\":3,\"data_base64\":\"eA==\"}", "payload.level", NULL, NULL,
     0},
    {th_handler_decompress, "{\"data_base64\":\"%%\"}", "payload.data_base64", NULL, NULL, 0},
    {th_handler_decompress, "{}", "payload.data_base64", NULL, NULL, 0},
    /* encrypt / decrypt */
    {th_handler_encrypt, "{}", "payload.data", NULL, NULL, 0},
    {th_handler_encrypt, "{\"data\":\"x\",\"nonce\":\"y\"}", "payload.nonce", NULL, NULL, 0},
    {th_handler_encrypt, "{\"data\":\"x\"}", "crypto.key", NULL, NULL, 1},
    {th_handler_encrypt, "{\"data\":\"x\"}", "crypto.key", "crypto.key", "00", 0},
    {th_handler_encrypt, "{\"data\":\"x\"}", "crypto.key", "crypto.key",
     "gg0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", 0},
    {th_handler_encrypt, "{\"data\":\"x\"}", "crypto.key", "crypto.key", KEY_HEX "00", 0},
    {th_handler_decrypt,
     "{\"nonce_base64\":" NONCE24 ",\"ciphertext_base64\":\"AAAAAAAAAAAAAAAAAAAAAA==\"}",
     "crypto.key", NULL, NULL, 1},
    {th_handler_decrypt, "{\"ciphertext_base64\":\"AAAA\"}", "payload.nonce_base64", NULL, NULL, 0},
    {th_handler_decrypt, "{\"nonce_base64\":\"AAAA\",\"ciphertext_base64\":\"AAAA\"}",
     "payload.nonce_base64", NULL, NULL, 0},
    {th_handler_decrypt, "{\"nonce_base64\":" NONCE24 "}", "payload.ciphertext_base64", NULL, NULL,
     0},
    {th_handler_decrypt, "{\"nonce_base64\":" NONCE24 ",\"ciphertext_base64\":\"AAAA\"}",
     "payload.ciphertext_base64", NULL, NULL, 0},
    {th_handler_decrypt, "{\"nonce_base64\":" NONCE24 ",\"ciphertext_base64\":\"@@\"}",
     "payload.ciphertext_base64", NULL, NULL, 0},
    {th_handler_decrypt, "{\"nonce_base64\":" NONCE24 ",\"ciphertext_base64\":\"\",\"key\":\"k\"}",
     "payload.key", NULL, NULL, 0},
    /* exec */
    {th_handler_exec, "{}", "payload.command", NULL, NULL, 0},
    {th_handler_exec, "{\"command\":1}", "payload.command", NULL, NULL, 0},
    {th_handler_exec, "{\"command\":\"bad name!\"}", "payload.command", NULL, NULL, 0},
    {th_handler_exec, "{\"command\":\"nope\"}", "payload.command", NULL, NULL, 0},
    {th_handler_exec, "{\"command\":\"echo\",\"args\":\"x\"}", "payload.args", NULL, NULL, 0},
    {th_handler_exec, "{\"command\":\"echo\",\"args\":[\"a\",2]}", "payload.args[1]", NULL, NULL,
     0},
    {th_handler_exec, "{\"command\":\"echo\",\"args\":[\"a\\u0000b\"]}", "payload.args[0]", NULL,
     NULL, 0},
    {th_handler_exec, "{\"command\":\"echo\",\"env\":[]}", "payload.env", NULL, NULL, 0},
    {th_handler_exec, "{\"command\":\"echo\",\"env\":{\"A\":1}}", "payload.env.A", NULL, NULL, 0},
    {th_handler_exec, "{\"command\":\"echo\",\"env\":{\"A=B\":\"x\"}}", "payload.env.A=B", NULL,
     NULL, 0},
    {th_handler_exec, "{\"command\":\"echo\",\"cwd\":\"/nonexistent\"}", "payload.cwd", NULL, NULL,
     0},
    {th_handler_exec, "{\"command\":\"echo\",\"cwd\":\"/dev/null\"}", "payload.cwd", NULL, NULL, 0},
    {th_handler_exec, "{\"command\":\"echo\",\"stdin\":5}", "payload.stdin", NULL, NULL, 0},
    {th_handler_exec, "{\"command\":\"echo\",\"shell\":\"x\"}", "payload.shell", NULL, NULL, 0},
    {th_handler_exec, "{\"command\":\"echo\",\"timeout\":5}", "payload.timeout", NULL, NULL, 0},
    {th_handler_exec, "{\"shell\":\"echo\"}", "payload.shell", NULL, NULL, 0},
    {th_handler_exec, "{\"shell\":7}", "payload.shell", "exec.allow_shell", "true", 0},
    {th_handler_exec, "{\"shell\":\"echo\",\"args\":[\"x\"]}", "payload.args", "exec.allow_shell",
     "true", 0},
    {th_handler_exec, "{\"command\":\"broken\"}", "exec.command.broken", "exec.command.broken",
     "\"/bin/echo\"", 0},
    {th_handler_exec, "{\"command\":\"broken\"}", "exec.command.broken", "exec.command.broken",
     "[]", 0},
    {th_handler_exec, "{\"command\":\"broken\"}", "exec.command.broken", "exec.command.broken",
     "[\"/bin/echo\",3]", 0},
    {th_handler_exec, "{\"command\":\"broken\"}", "exec.command.broken", "exec.command.broken",
     "[\"/bin/echo\"", 0},
    {th_handler_exec, "{\"command\":\"missing\"}", "exec.command.missing", "exec.command.missing",
     "[\"/nonexistent/prog\"]", 0},
    /* http */
    {th_handler_http, "{}", "payload.url", NULL, NULL, 0},
    {th_handler_http, "{\"url\":5}", "payload.url", NULL, NULL, 0},
    {th_handler_http, "{\"url\":\"ftp://127.0.0.1/\"}", "payload.url", NULL, NULL, 0},
    {th_handler_http, "{\"url\":\"file:///etc/passwd\"}", "payload.url", NULL, NULL, 0},
    {th_handler_http, "{\"url\":\"not a url\"}", "payload.url", NULL, NULL, 0},
    {th_handler_http, "{\"url\":\"http://127.0.0.1:1/\",\"method\":\"TRACE\"}", "payload.method",
     NULL, NULL, 0},
    {th_handler_http, "{\"url\":\"http://127.0.0.1:1/\",\"method\":\"get\"}", "payload.method",
     NULL, NULL, 0},
    {th_handler_http, "{\"url\":\"http://127.0.0.1:1/\",\"timeout_ms\":0}", "payload.timeout_ms",
     NULL, NULL, 0},
    {th_handler_http, "{\"url\":\"http://127.0.0.1:1/\",\"timeout_ms\":600001}",
     "payload.timeout_ms", NULL, NULL, 0},
    {th_handler_http, "{\"url\":\"http://127.0.0.1:1/\",\"headers\":[]}", "payload.headers", NULL,
     NULL, 0},
    {th_handler_http, "{\"url\":\"http://127.0.0.1:1/\",\"headers\":{\"X\":1}}",
     "payload.headers.X", NULL, NULL, 0},
    {th_handler_http, "{\"url\":\"http://127.0.0.1:1/\",\"headers\":{\"X\":\"a\\r\\nY: 1\"}}",
     "payload.headers.X", NULL, NULL, 0},
    {th_handler_http, "{\"url\":\"http://127.0.0.1:1/\",\"headers\":{\"Bad Name\":\"x\"}}",
     "payload.headers.Bad Name", NULL, NULL, 0},
    {th_handler_http, "{\"url\":\"http://127.0.0.1:1/\",\"body\":\"x\"}", "payload.body", NULL,
     NULL, 0},
    {th_handler_http, "{\"url\":\"http://127.0.0.1:1/\",\"method\":\"HEAD\",\"body\":\"x\"}",
     "payload.body", NULL, NULL, 0},
    {th_handler_http, "{\"url\":\"http://127.0.0.1:1/\",\"redirect\":true}", "payload.redirect",
     NULL, NULL, 0},
};

static void test_bad_payloads_are_permanent_and_named(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const bad_case *c = &bad_cases[i];
        hrun h = {0};
        if (c->cfg_key)
            hrun_config(&h, c->cfg_key, c->cfg_val);
        if (!c->no_defaults) {
            hrun_config(&h, "crypto.key", KEY_HEX);
            hrun_config(&h, "exec.command.echo", "[\"/bin/echo\"]");
        }
        int rc = hrun_go(&h, c->fn, c->payload);
        char want[128];
        snprintf(want, sizeof want, "%s: ", c->field);
        if (rc != TH_HANDLER_PERMANENT || !h.ctx.error || strncmp(h.ctx.error, want, strlen(want)))
            fail_msg("case %zu (%s): rc %d, error \"%s\"; want permanent \"%s...\"", i, c->payload,
                     rc, h.ctx.error ? h.ctx.error : "(none)", want);
        assert_null(h.ctx.result);
        hrun_free(&h);
    }
}

int main(void)
{
    /* The http tests talk to 127.0.0.1 directly, never through a proxy. */
    static const char *const proxies[] = {"http_proxy",  "HTTP_PROXY", "https_proxy",
                                          "HTTPS_PROXY", "all_proxy",  "ALL_PROXY"};
    for (size_t i = 0; i < sizeof proxies / sizeof proxies[0]; i++)
        unsetenv(proxies[i]);

    const struct CMUnitTest tests[] = {
        T(test_noop),
        T(test_sleep_completes_with_progress),
        T(test_sleep_cancelled_by_stop_flag),
        T(test_sleep_cancelled_by_timeout),
        T(test_hash_sha256_vectors),
        T(test_hash_blake2b_vectors),
        T(test_hash_file_streamed),
        T(test_compress_round_trip_memory),
        T(test_decompress_fixed_vectors),
        T(test_decompress_binary_has_no_text),
        T(test_decompress_corrupt_input),
        T(test_decompress_memory_limit),
        T(test_compress_files_round_trip),
        T(test_crypto_round_trip),
        T(test_decrypt_external_and_tampered),
        T(test_exec_argv_output_and_logs),
        T(test_exec_stdout_stderr_levels),
        T(test_exec_exit_status_and_signal),
        T(test_exec_stdin),
        T(test_exec_large_io_tail_and_log_cap),
        T(test_exec_env_and_cwd),
        T(test_exec_child_gets_clean_fds_and_signals),
        T(test_exec_timeout_kills_child),
        T(test_exec_stop_flag_escalates_to_sigkill),
        T(test_exec_stray_background_process_killed),
        T(test_exec_shell_only_when_allowed),
        T(test_exec_cannot_execute_is_permanent),
        T(test_bad_payloads_are_permanent_and_named),
    };
    const struct CMUnitTest http_tests[] = {
        T(test_http_get_ok),
        T(test_http_status_classes),
        T(test_http_methods_headers_body),
        T(test_http_body_truncated_at_1mib),
        T(test_http_timeout_retries),
        T(test_http_cancelled),
        T(test_http_connection_refused),
    };
    int failed = cmocka_run_group_tests_name("handlers", tests, NULL, NULL);
    failed +=
        cmocka_run_group_tests_name("handlers/http", http_tests, server_setup, server_teardown);
    return failed ? 1 : 0;
}
