/*
 * The LLM gateway when memory runs out: for every N, the Nth allocation
 * (and each after it) fails while a gateway is made, providers added and
 * calls run — on the mock and over HTTP to the fake provider, streamed and
 * whole, with the ledger in a file. Every step must fail cleanly with a code
 * (TH_ENOMEM, or the provider's error when the failure hit a parse), never
 * crash, hang or leak (LeakSanitizer checks the last), and the gateway must
 * work again once allocations succeed.
 */
#include "llm_gateway_helpers.h"

#include <stdlib.h>

#include "core/alloc.h"

static void on_delta(const char *t, size_t n, void *ud)
{
    (void)t;
    *(size_t *)ud += n;
}

/* One round with allocations failing after `n`; returns 1 when nothing
 * failed (n was past the last allocation). */
static int round_n(long n, fakellm *f, const char *usage)
{
    int clean = 1;
    th__alloc_fail_after(n);
    th_llm_gateway_options go;
    th_llm_gateway_options_init(&go);
    go.seed = 1;
    go.usage_path = usage;
    th_error err;
    th_llm_gateway *gw = th_llm_gateway_new(&go, &err);
    if (!gw) {
        th__alloc_fail_reset();
        assert_true(err.code == TH_ENOMEM || err.code == TH_EIO);
        return 0;
    }
    th_llm_provider_options m = gw_opts("m", TH_LLM_MOCK, NULL);
    th_llm_provider_options o = gw_opts("oa", TH_LLM_OPENAI, f);
    o.max_retries = 0;
    int have_m = th_llm_gateway_add_provider(gw, &m, &err) == 0;
    int have_o = th_llm_gateway_add_provider(gw, &o, &err) == 0;
    clean &= have_m && have_o;
    if (!have_m || !have_o)
        assert_int_equal(err.code, TH_ENOMEM);
    const char *targets[2] = {"m", "oa"};
    for (int t = 0; t < 2; t++) {
        if ((t == 0 && !have_m) || (t == 1 && !have_o))
            continue;
        for (int stream = 0; stream < 2; stream++) {
            gw_req q;
            gw_req_init(&q, "hello out of memory", targets[t], NULL);
            size_t got = 0;
            q.r.stream = stream;
            q.r.on_delta = on_delta;
            q.r.ud = &got;
            q.r.agent = "oom";
            th_llm_response r;
            int rc = th_llm_chat(gw, &q.r, &r, &err);
            if (rc == 0) {
                assert_non_null(r.text);
                th_llm_response_free(&r);
            } else {
                clean = 0;
                assert_true(rc == TH_ENOMEM || rc == TH_EUPSTREAM);
                assert_null(r.text);
            }
        }
    }
    if (have_m) {
        const char *texts[] = {"a b", "c"};
        float *v;
        int dim;
        int rc = th_llm_embed(gw, "m", NULL, texts, 2, &v, &dim, NULL, &err);
        if (rc == 0)
            th_llm_free(v);
        else
            clean = 0;
    }
    th_llm_spend_row *rows;
    size_t nrows;
    if (th_llm_spend(gw, NULL, &rows, &nrows) == 0)
        th_llm_free(rows);
    else
        clean = 0;
    th__alloc_fail_reset();
    /* With memory back, the same gateway answers. */
    if (have_m) {
        gw_req q;
        gw_req_init(&q, "again", "m", NULL);
        th_llm_response r;
        assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
        th_llm_response_free(&r);
    }
    th_llm_gateway_free(gw);
    return clean;
}

static void test_oom(void **state)
{
    (void)state;
    fakellm *f = fakellm_start();
    char *usage = thtest_unique_path("oom-usage", "db");
    long n = 0;
    int done = 0;
    for (; n < 5000 && !done; n++)
        done = round_n(n, f, usage);
    assert_true(done); /* the loop reached a round without failures */
    print_message("clean after %ld allocations\n", n - 1);
    assert_true(n > 50); /* the rounds did fail on the way */
    thtest_remove_db(usage);
    free(usage);
    fakellm_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_oom),
    };
    return cmocka_run_group_tests_name("llm_oom", tests, NULL, NULL);
}
