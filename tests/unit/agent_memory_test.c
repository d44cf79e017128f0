/*
 * Agent memory (src/agent/memory.c): adding with embeddings, top-k search by
 * cosine similarity within a namespace, deletion, persistence in the SQLite
 * file across reopen, and failures (embedder errors, bad input, a path that
 * cannot be opened, a damaged row), and adds and searches from threads.
 */
#include "thtest.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <taskhive/agent.h>

/* One dimension per letter a..z, counting letters; `ud` (an int *) > 0
 * makes the embedder fail, and a dimension override comes from ud < 0. */
static int letters_embed(const char *const *texts, size_t n, float **vectors, int *dim,
                         th_error *err, void *ud)
{
    int mode = ud ? *(int *)ud : 0;
    if (mode > 0) {
        if (err) {
            err->code = TH_EUPSTREAM;
            snprintf(err->message, sizeof err->message, "embedder down");
        }
        return TH_EUPSTREAM;
    }
    int d = mode < 0 ? -mode : 26;
    float *v = calloc(n * (size_t)d, sizeof *v);
    if (!v)
        return TH_ENOMEM;
    for (size_t i = 0; i < n; i++)
        for (const char *p = texts[i]; *p; p++)
            if (*p >= 'a' && *p < 'a' + d)
                v[i * (size_t)d + (size_t)(*p - 'a')] += 1;
    *vectors = v;
    *dim = d;
    return 0;
}

static th_memory *open_mem(const char *path, int *mode)
{
    th_error e = {0};
    th_memory *m = th_memory_open(path, letters_embed, mode, &e);
    if (!m)
        fail_msg("open %s: %s", path ? path : "(none)", e.message);
    return m;
}

static void test_add_and_search(void **state)
{
    (void)state;
    th_memory *m = open_mem(NULL, NULL);
    th_error e = {0};
    int64_t id1 = 0, id2 = 0;
    assert_int_equal(th_memory_add(m, "scout", "aaaa", "{\"src\":\"x\"}", &id1, &e), 0);
    assert_int_equal(th_memory_add(m, "scout", "aaab", NULL, &id2, &e), 0);
    assert_int_equal(th_memory_add(m, "scout", "zzzz", NULL, NULL, &e), 0);
    assert_int_equal(th_memory_add(m, "other", "aaaa", NULL, NULL, &e), 0);
    assert_true(id1 > 0 && id2 > id1);
    assert_int_equal(th_memory_count(m), 4);

    th_memory_hit *hits = NULL;
    size_t n = 0;
    assert_int_equal(th_memory_search(m, "scout", "a", 2, &hits, &n, &e), 0);
    assert_int_equal(n, 2);
    assert_string_equal(hits[0].text, "aaaa");
    assert_string_equal(hits[0].ns, "scout");
    assert_string_equal(hits[0].metadata, "{\"src\":\"x\"}");
    assert_true(hits[0].score > 0.999);
    assert_string_equal(hits[1].text, "aaab");
    assert_null(hits[1].metadata);
    assert_true(hits[1].score < hits[0].score && hits[1].score > 0.9);
    assert_true(hits[0].created_at > 0);
    th_memory_hits_free(hits, n);

    /* Every namespace; k larger than what there is. */
    assert_int_equal(th_memory_search(m, NULL, "zz", 10, &hits, &n, &e), 0);
    assert_int_equal(n, 4);
    assert_string_equal(hits[0].text, "zzzz");
    assert_true(hits[3].score == 0);
    th_memory_hits_free(hits, n);
    assert_int_equal(th_memory_search(m, "nobody", "zz", 10, &hits, &n, &e), 0);
    assert_int_equal(n, 0);
    th_memory_hits_free(hits, n);

    assert_int_equal(th_memory_delete(m, id1, &e), 0);
    assert_int_equal(th_memory_delete(m, id1, &e), TH_ENOTFOUND);
    assert_int_equal(th_memory_search(m, "scout", "a", 1, &hits, &n, &e), 0);
    assert_string_equal(hits[0].text, "aaab");
    th_memory_hits_free(hits, n);
    th_memory_free(m);
    th_memory_free(NULL);
}

static void test_refusals(void **state)
{
    (void)state;
    int mode = 0;
    th_memory *m = open_mem("", &mode);
    th_error e = {0};
    th_memory_hit *hits = NULL;
    size_t n = 0;
    assert_int_equal(th_memory_add(m, "a", "", NULL, NULL, &e), TH_EINVAL);
    assert_string_equal(e.field, "text");
    assert_int_equal(th_memory_add(m, "a", "x", "[1]", NULL, &e), TH_EINVAL);
    assert_string_equal(e.field, "metadata");
    assert_int_equal(th_memory_search(m, "a", "", 3, &hits, &n, &e), TH_EINVAL);
    assert_string_equal(e.field, "query");
    mode = 1;
    assert_int_equal(th_memory_add(m, "a", "hello", NULL, NULL, &e), TH_EUPSTREAM);
    assert_string_equal(e.message, "embedder down");
    assert_int_equal(th_memory_search(m, "a", "hello", 3, &hits, &n, &e), TH_EUPSTREAM);
    assert_int_equal(th_memory_count(m), 0);
    /* A memory of another dimension (the embedding model changed) is skipped. */
    mode = 0;
    assert_int_equal(th_memory_add(m, "a", "abc", NULL, NULL, &e), 0);
    mode = -3;
    assert_int_equal(th_memory_add(m, "a", "abc", NULL, NULL, &e), 0);
    assert_int_equal(th_memory_search(m, "a", "abc", 5, &hits, &n, &e), 0);
    assert_int_equal(n, 1);
    th_memory_hits_free(hits, n);
    th_memory_free(m);

    assert_null(th_memory_open(NULL, NULL, NULL, &e));
    assert_string_equal(e.field, "embed");
    assert_null(th_memory_open("/nonexistent-dir/x/memory.db", letters_embed, NULL, &e));
    assert_int_equal(e.code, TH_EIO);
}

static void test_persistence(void **state)
{
    (void)state;
    char *path = thtest_unique_path("memory", ".db");
    th_memory *m = open_mem(path, NULL);
    th_error e = {0};
    int64_t gone = 0;
    assert_int_equal(th_memory_add(m, "scout", "the cat sat", "{\"k\":1}", NULL, &e), 0);
    assert_int_equal(th_memory_add(m, "scout", "dogs bark loudly", NULL, &gone, &e), 0);
    assert_int_equal(th_memory_add(m, "scout", "a bird sings", NULL, NULL, &e), 0);
    assert_int_equal(th_memory_delete(m, gone, &e), 0);
    th_memory_free(m);

    m = open_mem(path, NULL);
    assert_int_equal(th_memory_count(m), 2);
    th_memory_hit *hits = NULL;
    size_t n = 0;
    assert_int_equal(th_memory_search(m, "scout", "the cat", 5, &hits, &n, &e), 0);
    assert_int_equal(n, 2);
    assert_string_equal(hits[0].text, "the cat sat");
    assert_string_equal(hits[0].metadata, "{\"k\":1}");
    th_memory_hits_free(hits, n);
    /* New ids continue after the stored ones. */
    int64_t id = 0;
    assert_int_equal(th_memory_add(m, "scout", "more", NULL, &id, &e), 0);
    assert_true(id > gone);
    th_memory_free(m);

    /* A row whose blob does not match its dimension: the file is refused. */
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "UPDATE memories SET dim = 7 WHERE id = 1", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    assert_null(th_memory_open(path, letters_embed, NULL, &e));
    assert_int_equal(e.code, TH_ECORRUPT);
    thtest_remove_db(path);
    free(path);
}

typedef struct mem_worker {
    th_memory *m;
    int index;
    int failures;
} mem_worker;

static void *mem_thread(void *p)
{
    mem_worker *w = p;
    char ns[16], text[64];
    snprintf(ns, sizeof ns, "ns%d", w->index);
    for (int i = 0; i < 25; i++) {
        snprintf(text, sizeof text, "note %d of %s", i, ns);
        if (th_memory_add(w->m, ns, text, NULL, NULL, NULL))
            w->failures++;
        th_memory_hit *hits = NULL;
        size_t n = 0;
        if (th_memory_search(w->m, ns, "note", 3, &hits, &n, NULL) || n == 0 ||
            strcmp(hits[0].ns, ns) != 0)
            w->failures++;
        th_memory_hits_free(hits, n);
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    char *path = thtest_unique_path("memory-threads", ".db");
    th_memory *m = open_mem(path, NULL);
    pthread_t th[4];
    mem_worker w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (mem_worker){m, i, 0};
        assert_int_equal(pthread_create(&th[i], NULL, mem_thread, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].failures, 0);
    }
    assert_int_equal(th_memory_count(m), 100);
    th_memory_free(m);
    m = open_mem(path, NULL);
    assert_int_equal(th_memory_count(m), 100);
    th_memory_free(m);
    thtest_remove_db(path);
    free(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_and_search),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_persistence),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests_name("agent_memory", tests, NULL, NULL);
}
