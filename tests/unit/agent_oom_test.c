/*
 * Out-of-memory pass over the agent layer: for n = 0, 1, 2... the (n+1)-th
 * taskhive allocation and every later one fail (th__alloc_fail_after), and a
 * scenario runs: compile a schema and validate with it, register tools
 * (inline and threaded) and call them, parse agent definitions and use a
 * registry kept in a SQLite database, add to and search a memory, decay a result's confidence.
 * Every call must succeed or fail cleanly with TH_ENOMEM (constructors with NULL), never crash;
 * under ASan + LeakSanitizer nothing may leak. The loop ends when a run completes without reaching
 * allocation n. (jansson and SQLite allocate with their own allocators, which never fail here.)
 */
#include "thtest.h"

#include <stdlib.h>
#include <string.h>

#include <taskhive/agent.h>

#include "core/alloc.h"

#define OOM_CAP 3000

/* 0 when `rc` is the planned success; 1 when it is a clean TH_ENOMEM. */
#define STEP(rc)                                                                                   \
    do {                                                                                           \
        int rc_ = (rc);                                                                            \
        if (rc_ == TH_ENOMEM) {                                                                    \
            failed = 1;                                                                            \
            goto done;                                                                             \
        }                                                                                          \
        if (rc_ != 0)                                                                              \
            fail_msg("n=%ld: %s returned %d", n, #rc, rc_);                                        \
    } while (0)

/* Like STEP for a constructor: NULL must come with TH_ENOMEM in e. */
#define MADE(ptr)                                                                                  \
    do {                                                                                           \
        if (!(ptr)) {                                                                              \
            if (e.code != TH_ENOMEM && e.code != 0)                                                \
                fail_msg("n=%ld: %s failed with %d", n, #ptr, e.code);                             \
            failed = 1;                                                                            \
            goto done;                                                                             \
        }                                                                                          \
    } while (0)

static int echo(th_tool_ctx *tc, const char *args, void *ud)
{
    (void)ud;
    return th_tool_set_result(tc, args);
}

static int embed(const char *const *texts, size_t n, float **vectors, int *dim, th_error *err,
                 void *ud)
{
    (void)err;
    (void)ud;
    float *v = calloc(n * 4, sizeof *v);
    if (!v)
        return TH_ENOMEM;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; texts[i][j]; j++)
            v[i * 4 + (unsigned char)texts[i][j] % 4] += 1;
    *vectors = v;
    *dim = 4;
    return 0;
}

static const char schema[] = "{\"type\":\"object\",\"required\":[\"n\"],"
                             "\"properties\":{\"n\":{\"type\":\"integer\",\"maximum\":5}}}";

/* Runs the scenario with allocation n failing; returns 1 when some step
 * met a failure, 0 when everything succeeded. */
static int scenario(long n)
{
    int failed = 0;
    th_error e = {0};
    th_schema *s = NULL;
    th_tools *tools = NULL;
    th_agents *agents = NULL;
    th_agent_def *d = NULL, *got = NULL;
    th_memory *mem = NULL;
    th_memory_hit *hits = NULL;
    size_t nhits = 0;
    char *out = NULL;

    th__alloc_fail_after(n);
    MADE(s = th_schema_new(schema, &e));
    int rc = th_schema_validate(s, "{\"n\":9}", "arguments", &e);
    if (rc != TH_EINVAL)
        fail_msg("n=%ld: validation gave %d", n, rc);

    e.code = 0;
    MADE(tools = th_tools_new());
    STEP(th_tools_register(tools, "echo", "Echo", schema, 0, echo, NULL, &e));
    STEP(th_tools_register(tools, "echo_t", "Echo", NULL, 5000, echo, NULL, &e));
    STEP(th_tools_call(tools, "echo", "{\"n\":1}", "a", &out, &e));
    th_agent_free(out);
    out = NULL;
    STEP(th_tools_call(tools, "echo_t", "{\"x\":[1,2]}", "a", &out, &e));
    th_agent_free(out);
    out = NULL;

    MADE(agents = th_agents_open(NULL, tools, &e));
    STEP(th_agent_def_from_json("{\"name\":\"a\",\"provider\":\"mock\",\"role\":\"r\","
                                "\"tools\":[\"echo\",\"echo_t\"]}",
                                NULL, &d, &e));
    STEP(th_agents_create(agents, d, &e));
    STEP(th_agent_def_set(d, "instructions", "be brief", &e));
    STEP(th_agent_def_set(d, "tools", "echo", &e));
    STEP(th_agents_update(agents, d, &e));
    STEP(th_agents_get(agents, "a", &got, &e));
    STEP(th_agents_list_json(agents, &out));
    th_agent_free(out);
    out = th_agent_def_to_json(got);
    if (!out) {
        failed = 1;
        goto done;
    }
    th_agent_free(out);
    out = NULL;
    STEP(th_agents_delete(agents, "a", &e));

    e.code = 0;
    MADE(mem = th_memory_open(NULL, embed, NULL, &e));
    STEP(th_memory_add(mem, "a", "hello world", "{\"k\":1}", NULL, &e));
    STEP(th_memory_add(mem, "a", "goodbye", NULL, NULL, &e));
    STEP(th_memory_search(mem, "a", "hello", 2, &hits, &nhits, &e));
    if (nhits != 2)
        fail_msg("n=%ld: %zu hits", n, nhits);
    STEP(th_agent_result_decay("{\"confidence\":0.5}", 10, 10, &out));
done:
    th__alloc_fail_reset();
    th_agent_free(out);
    th_memory_hits_free(hits, nhits);
    th_memory_free(mem);
    th_agent_def_free(got);
    th_agent_def_free(d);
    th_agents_free(agents);
    th_tools_free(tools);
    th_schema_free(s);
    return failed;
}

static void test_oom(void **state)
{
    (void)state;
    long n = 0;
    while (n < OOM_CAP && scenario(n))
        n++;
    if (n == OOM_CAP)
        fail_msg("the scenario never completed within %d allocations", OOM_CAP);
    /* It made real allocations, so the loop tried failures in between. */
    assert_true(n > 20);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_oom)};
    return cmocka_run_group_tests_name("agent_oom", tests, NULL, NULL);
}
