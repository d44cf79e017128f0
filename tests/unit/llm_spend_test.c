/*
 * Spending in the LLM gateway: the ledger per day, provider, model, agent
 * and key; agent, key and total budgets (a refused call sends nothing; a
 * spent key falls back to the next target); the ledger kept in a SQLite
 * file across gateways; malformed scopes.
 */
#include "llm_gateway_helpers.h"

#include <math.h>
#include <stdlib.h>

static th_llm_gateway *gw_usage(const char *path)
{
    th_llm_gateway_options o;
    th_llm_gateway_options_init(&o);
    o.seed = 7;
    o.usage_path = path;
    th_error err;
    th_llm_gateway *gw = th_llm_gateway_new(&o, &err);
    if (!gw)
        fail_msg("gateway: %s", err.message);
    return gw;
}

static int call(th_llm_gateway *gw, const char *agent, const char *p1, const char *p2,
                th_llm_response *r, th_error *err)
{
    gw_req q;
    gw_req_init(&q, "hi", p1, p2);
    q.r.agent = agent;
    q.r.max_tokens = 10;
    return th_llm_chat(gw, &q.r, r, err);
}

static void test_ledger(void **state)
{
    (void)state;
    th_llm_gateway *gw = gw_new(NULL);
    th_llm_provider_options o = gw_opts("m", TH_LLM_MOCK, NULL);
    o.key_name = "team-key";
    gw_add(gw, &o);
    th_llm_response r;
    th_error err;
    double cost = 0;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(call(gw, i < 2 ? "writer" : "critic", "m", NULL, &r, &err), 0);
        cost += r.cost_usd;
        th_llm_response_free(&r);
    }
    th_llm_spend_row *rows;
    size_t n;
    assert_int_equal(th_llm_spend(gw, NULL, &rows, &n), 0);
    assert_int_equal(n, 2);
    /* Ordered by agent within the day: critic, then writer. */
    assert_string_equal(rows[0].agent, "critic");
    assert_string_equal(rows[1].agent, "writer");
    assert_int_equal(rows[1].requests, 2);
    assert_string_equal(rows[1].provider, "m");
    assert_string_equal(rows[1].model, "mock-1");
    assert_string_equal(rows[1].key, "team-key");
    assert_int_equal(strlen(rows[0].day), 10);
    assert_true(fabs(rows[0].cost_usd + rows[1].cost_usd - cost) < 1e-12);
    th_llm_free(rows);
    assert_int_equal(th_llm_spend(gw, "9999-01-01", &rows, &n), 0);
    assert_int_equal(n, 0);
    th_llm_free(rows);
    double today, month;
    assert_int_equal(th_llm_spent(gw, "agent:writer", &today, &month), 0);
    assert_true(today > 0 && fabs(today - month) < 1e-15);
    assert_int_equal(th_llm_spent(gw, "key:team-key", &today, &month), 0);
    assert_true(fabs(today - cost) < 1e-12);
    assert_int_equal(th_llm_spent(gw, "total", &today, &month), 0);
    assert_true(fabs(today - cost) < 1e-12);
    assert_int_equal(th_llm_spent(gw, "agent:nobody", &today, &month), 0);
    assert_true(today == 0);
    th_llm_gateway_free(gw);
}

static void test_agent_budget(void **state)
{
    (void)state;
    th_llm_gateway *gw = gw_new(NULL);
    th_llm_provider_options o = gw_opts("m", TH_LLM_MOCK, NULL);
    gw_add(gw, &o);
    /* 1000 USD per million tokens: a token costs a tenth of a cent. */
    assert_int_equal(th_llm_set_price(gw, "mock-1", 1000, 1000), 0);
    assert_int_equal(th_llm_set_budget(gw, "agent:writer", 0.05, 0), 0);
    th_llm_response r;
    th_error err;
    int ok = 0, rc;
    while ((rc = call(gw, "writer", "m", NULL, &r, &err)) == 0 && ok < 100) {
        ok++;
        th_llm_response_free(&r);
    }
    assert_int_equal(rc, TH_EBUDGET);
    assert_non_null(strstr(err.message, "agent:writer"));
    assert_non_null(strstr(err.message, "daily budget"));
    assert_true(ok >= 2);
    double today, month;
    th_llm_spent(gw, "agent:writer", &today, &month);
    assert_true(today <= 0.05);
    /* Nothing was sent for the refused call. */
    assert_int_equal(gw_status(gw, "m").requests, (uint64_t)ok);
    /* Other agents are not held back; a monthly budget holds too. */
    assert_int_equal(call(gw, "critic", "m", NULL, &r, &err), 0);
    th_llm_response_free(&r);
    assert_int_equal(th_llm_set_budget(gw, "agent:critic", 0, 0.001), 0);
    assert_int_equal(call(gw, "critic", "m", NULL, &r, &err), TH_EBUDGET);
    assert_non_null(strstr(err.message, "monthly budget"));
    /* A total budget holds every call. */
    assert_int_equal(th_llm_set_budget(gw, "total", 0.0001, 0), 0);
    assert_int_equal(call(gw, NULL, "m", NULL, &r, &err), TH_EBUDGET);
    assert_non_null(strstr(err.message, "total"));

    assert_int_equal(th_llm_set_budget(gw, "agent:", 1, 1), TH_EINVAL);
    assert_int_equal(th_llm_set_budget(gw, "team:x", 1, 1), TH_EINVAL);
    assert_int_equal(th_llm_set_budget(gw, "key:k", -1, 1), TH_EINVAL);
    assert_int_equal(th_llm_spent(gw, "bogus", &today, &month), TH_EINVAL);
    th_llm_gateway_free(gw);
}

typedef struct outcome {
    pthread_mutex_t mu;
    int ok, budget, other;
} outcome;

static void on_done(th_llm_call *c, int rc, void *ud)
{
    outcome *o = ud;
    pthread_mutex_lock(&o->mu);
    if (rc == 0)
        o->ok++;
    else if (rc == TH_EBUDGET)
        o->budget++;
    else
        o->other++;
    pthread_mutex_unlock(&o->mu);
}

/* Calls in flight hold their worst case against the budget, so concurrent
 * calls cannot each pass against the same remainder. */
static void test_budget_reserves(void **state)
{
    (void)state;
    th_llm_gateway *gw = gw_new(NULL);
    th_llm_provider_options o = gw_opts("m", TH_LLM_MOCK, NULL);
    o.mock_token_delay_ms = 30; /* keeps the calls in flight a while */
    gw_add(gw, &o);
    assert_int_equal(th_llm_set_price(gw, "mock-1", 1000, 1000), 0);
    gw_req q;
    gw_req_init(&q, "hi", "m", NULL);
    q.r.agent = "burst";
    q.r.max_tokens = 10;
    q.r.stream = 1;
    /* Worst case about 11 tokens = 0.011 USD: two fit in 0.025, not three. */
    assert_int_equal(th_llm_set_budget(gw, "agent:burst", 0.025, 0), 0);
    outcome out = {.mu = PTHREAD_MUTEX_INITIALIZER};
    th_llm_call *c[3];
    th_error err;
    for (int i = 0; i < 3; i++)
        assert_int_equal(th_llm_start(gw, &q.r, on_done, &out, &c[i], &err), 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(th_llm_call_wait(c[i], 10000), 0);
        th_llm_call_free(c[i]);
    }
    assert_int_equal(out.ok, 2);
    assert_int_equal(out.budget, 1);
    /* Their actual cost (5 tokens each) leaves room for one more. */
    th_llm_response r;
    assert_int_equal(th_llm_chat(gw, &q.r, &r, &err), 0);
    th_llm_response_free(&r);
    th_llm_gateway_free(gw);
}

static void test_key_budget_falls_back(void **state)
{
    (void)state;
    th_llm_gateway *gw = gw_new(NULL);
    th_llm_provider_options o = gw_opts("cheap", TH_LLM_MOCK, NULL);
    o.key_name = "k1";
    gw_add(gw, &o);
    o = gw_opts("spare", TH_LLM_MOCK, NULL);
    o.key_name = "k2";
    gw_add(gw, &o);
    assert_int_equal(th_llm_set_budget(gw, "key:k1", 1e-9, 0), 0);
    th_llm_response r;
    th_error err;
    assert_int_equal(call(gw, NULL, "cheap", "spare", &r, &err), 0);
    assert_string_equal(r.provider, "spare");
    th_llm_response_free(&r);
    assert_int_equal(gw_status(gw, "cheap").requests, 0);
    /* With only the spent key, the call is refused. */
    assert_int_equal(call(gw, NULL, "cheap", NULL, &r, &err), TH_EBUDGET);
    assert_non_null(strstr(err.message, "key:k1"));
    th_llm_gateway_free(gw);
}

static void test_persisted(void **state)
{
    (void)state;
    char *path = thtest_unique_path("usage", "db");
    th_llm_gateway *gw = gw_usage(path);
    th_llm_provider_options o = gw_opts("m", TH_LLM_MOCK, NULL);
    gw_add(gw, &o);
    th_llm_response r;
    th_error err;
    for (int i = 0; i < 4; i++) {
        assert_int_equal(call(gw, "writer", "m", NULL, &r, &err), 0);
        th_llm_response_free(&r);
    }
    double today, month;
    th_llm_spent(gw, "agent:writer", &today, &month);
    th_llm_gateway_free(gw);

    gw = gw_usage(path);
    double t2, m2;
    th_llm_spent(gw, "agent:writer", &t2, &m2);
    assert_true(fabs(today - t2) < 1e-12 && today > 0);
    th_llm_spend_row *rows;
    size_t n;
    assert_int_equal(th_llm_spend(gw, NULL, &rows, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(rows[0].requests, 4);
    th_llm_free(rows);
    /* New spending adds to what was loaded. */
    gw_add(gw, &o);
    assert_int_equal(call(gw, "writer", "m", NULL, &r, &err), 0);
    th_llm_response_free(&r);
    th_llm_gateway_free(gw);
    gw = gw_usage(path);
    assert_int_equal(th_llm_spend(gw, NULL, &rows, &n), 0);
    assert_int_equal(rows[0].requests, 5);
    th_llm_free(rows);
    th_llm_gateway_free(gw);

    /* A path that cannot be opened is refused, naming the option. */
    th_llm_gateway_options go;
    th_llm_gateway_options_init(&go);
    go.usage_path = "/nonexistent-dir/usage.db";
    assert_null(th_llm_gateway_new(&go, &err));
    assert_int_equal(err.code, TH_EIO);
    assert_string_equal(err.field, "usage_path");
    thtest_remove_db(path);
    free(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ledger),          cmocka_unit_test(test_agent_budget),
        cmocka_unit_test(test_budget_reserves), cmocka_unit_test(test_key_budget_falls_back),
        cmocka_unit_test(test_persisted),
    };
    return cmocka_run_group_tests_name("llm_spend", tests, NULL, NULL);
}
