/*
 * Agent definitions (src/agent/def.c) and their registry (src/agent/agents.c):
 * JSON in and out, patches, config values, validation errors naming the
 * field, and create / get / list / update / put / delete, also from threads
 * and persisted in a file across reopen.
 */
#include "thtest.h"

#include <jansson.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <taskhive/agent.h>

static const char full[] = "{\"name\":\"scout\",\"role\":\"a researcher\",\"backstory\":\"b\","
                           "\"instructions\":\"be brief\",\"provider\":\"mock\",\"model\":\"m1\","
                           "\"temperature\":0.5,\"max_tokens\":300,\"max_steps\":4,"
                           "\"tools\":[\"submit_task\",\"search_memory\"],"
                           "\"fallbacks\":[\"openai/gpt-4o-mini\"]}";

static th_agent_def *parse(const char *json)
{
    th_agent_def *d = NULL;
    th_error e = {0};
    int rc = th_agent_def_from_json(json, NULL, &d, &e);
    if (rc)
        fail_msg("refused: %s: %s", e.field, e.message);
    return d;
}

/* Expects `json` refused, naming `field`. */
static void assert_refused(const char *json, const char *field)
{
    th_agent_def *d = NULL;
    th_error e = {0};
    int rc = th_agent_def_from_json(json, NULL, &d, &e);
    if (rc != TH_EINVAL)
        fail_msg("%s: got %d, want EINVAL", json, rc);
    assert_null(d);
    if (strcmp(e.field, field) != 0)
        fail_msg("%s: field \"%s\", want \"%s\" (%s)", json, e.field, field, e.message);
}

static void test_json_round_trip(void **state)
{
    (void)state;
    th_agent_def *d = parse(full);
    assert_string_equal(d->name, "scout");
    assert_string_equal(d->role, "a researcher");
    assert_string_equal(d->provider, "mock");
    assert_true(d->temperature == 0.5);
    assert_int_equal(d->max_tokens, 300);
    assert_int_equal(d->max_steps, 4);
    assert_int_equal(d->ntools, 2);
    assert_string_equal(d->tools[1], "search_memory");
    char *j = th_agent_def_to_json(d);
    assert_json_equal(j, full);
    th_agent_def *again = parse(j);
    char *j2 = th_agent_def_to_json(again);
    assert_string_equal(j, j2);
    th_agent_free(j);
    th_agent_free(j2);
    th_agent_def_free(again);
    th_agent_def_free(d);

    /* Minimal: defaults, nulls for what is unset. */
    d = parse("{\"name\":\"a\",\"provider\":\"p\"}");
    assert_true(d->temperature == -1);
    assert_null(d->model);
    j = th_agent_def_to_json(d);
    assert_json_equal(j, "{\"name\":\"a\",\"role\":null,\"backstory\":null,\"instructions\":null,"
                         "\"provider\":\"p\",\"model\":null,\"temperature\":null,"
                         "\"max_tokens\":0,\"max_steps\":0,\"tools\":[],\"fallbacks\":[]}");
    th_agent_free(j);
    th_agent_def_free(d);
    th_agent_def_free(NULL);
    assert_null(th_agent_def_to_json(NULL));
}

static void test_json_refusals(void **state)
{
    (void)state;
    assert_refused("[1]", "");
    assert_refused("{oops", "");
    assert_refused("{\"provider\":\"p\"}", "name");
    assert_refused("{\"name\":\"bad name\",\"provider\":\"p\"}", "name");
    assert_refused("{\"name\":\"a\"}", "provider");
    assert_refused("{\"name\":\"a\",\"provider\":\"p\",\"colour\":1}", "colour");
    assert_refused("{\"name\":1,\"provider\":\"p\"}", "name");
    assert_refused("{\"name\":\"a\",\"provider\":\"p\",\"temperature\":2.5}", "temperature");
    assert_refused("{\"name\":\"a\",\"provider\":\"p\",\"temperature\":-0.5}", "temperature");
    assert_refused("{\"name\":\"a\",\"provider\":\"p\",\"temperature\":\"hot\"}", "temperature");
    assert_refused("{\"name\":\"a\",\"provider\":\"p\",\"max_tokens\":-1}", "max_tokens");
    assert_refused("{\"name\":\"a\",\"provider\":\"p\",\"max_tokens\":1.5}", "max_tokens");
    assert_refused("{\"name\":\"a\",\"provider\":\"p\",\"max_steps\":101}", "max_steps");
    assert_refused("{\"name\":\"a\",\"provider\":\"p\",\"tools\":\"x\"}", "tools");
    assert_refused("{\"name\":\"a\",\"provider\":\"p\",\"tools\":[\"x\",2]}", "tools[1]");
    assert_refused("{\"name\":\"a\",\"provider\":\"p\",\"tools\":[\"x\",\"x\"]}", "tools[1]");
    assert_refused("{\"name\":\"a\",\"provider\":\"p\",\"model\":\"\"}", "model");
}

static int nop_tool(th_tool_ctx *tc, const char *args, void *ud)
{
    (void)tc;
    (void)args;
    (void)ud;
    return 0;
}

static void test_validate_tools(void **state)
{
    (void)state;
    th_tools *t = th_tools_new();
    assert_int_equal(th_tools_register(t, "submit_task", "", NULL, 0, nop_tool, NULL, NULL), 0);
    th_agent_def *d = parse(full);
    th_error e = {0};
    assert_int_equal(th_agent_def_validate(d, NULL, &e), 0);
    assert_int_equal(th_agent_def_validate(d, t, &e), TH_EINVAL);
    assert_string_equal(e.field, "tools[1]");
    assert_true(thtest_contains(e.message, "search_memory"));
    assert_int_equal(th_agent_def_validate(NULL, t, &e), TH_EINVAL);
    th_agent_def_free(d);
    th_tools_free(t);
}

static void test_patch(void **state)
{
    (void)state;
    th_agent_def *base = parse(full), *d = NULL;
    th_error e = {0};
    assert_int_equal(th_agent_def_from_json("{\"model\":null,\"temperature\":null,\"max_steps\":2,"
                                            "\"tools\":[\"x\"]}",
                                            base, &d, &e),
                     0);
    assert_null(d->model);
    assert_true(d->temperature == -1);
    assert_int_equal(d->max_steps, 2);
    assert_int_equal(d->ntools, 1);
    assert_string_equal(d->role, "a researcher");
    assert_string_equal(base->model, "m1"); /* the base is untouched */
    th_agent_def_free(d);
    assert_int_equal(th_agent_def_from_json("{\"provider\":null}", base, &d, &e), TH_EINVAL);
    assert_string_equal(e.field, "provider");
    assert_null(d);
    th_agent_def_free(base);
}

static void test_config_values(void **state)
{
    (void)state;
    th_agent_def *d = th_agent_def_new();
    th_error e = {0};
    assert_int_equal(th_agent_def_set(d, "name", "writer", &e), 0);
    assert_int_equal(th_agent_def_set(d, "provider", "mock", &e), 0);
    assert_int_equal(th_agent_def_set(d, "temperature", "0.2", &e), 0);
    assert_int_equal(th_agent_def_set(d, "max_tokens", "512", &e), 0);
    assert_int_equal(th_agent_def_set(d, "max_steps", "3", &e), 0);
    assert_int_equal(th_agent_def_set(d, "tools", " submit_task,search_memory , ,x ", &e), 0);
    assert_int_equal(d->ntools, 3);
    assert_string_equal(d->tools[0], "submit_task");
    assert_string_equal(d->tools[1], "search_memory");
    assert_string_equal(d->tools[2], "x");
    assert_int_equal(th_agent_def_set(d, "tools", "", &e), 0);
    assert_int_equal(d->ntools, 0);
    assert_int_equal(th_agent_def_validate(d, NULL, &e), 0);
    assert_true(d->temperature == 0.2);
    assert_int_equal(d->max_tokens, 512);
    assert_int_equal(th_agent_def_set(d, "temperature", "warm", &e), TH_EINVAL);
    assert_string_equal(e.field, "temperature");
    assert_int_equal(th_agent_def_set(d, "max_tokens", "12x", &e), TH_EINVAL);
    assert_string_equal(e.field, "max_tokens");
    assert_int_equal(th_agent_def_set(d, "max_steps", "1000", &e), TH_EINVAL);
    assert_string_equal(e.field, "max_steps");
    assert_int_equal(th_agent_def_set(d, "colour", "red", &e), TH_EINVAL);
    assert_string_equal(e.field, "colour");
    assert_int_equal(th_agent_def_set(d, "role", NULL, &e), TH_EINVAL);
    assert_int_equal(d->max_steps, 3);
    th_agent_def_free(d);
}

static void test_registry(void **state)
{
    (void)state;
    th_agents *a = th_agents_new(NULL);
    th_error e = {0};
    th_agent_def *d = parse(full);
    assert_int_equal(th_agents_create(a, d, &e), 0);
    assert_int_equal(th_agents_create(a, d, &e), TH_ECONFLICT);
    assert_int_equal(th_agent_def_set(d, "name", "alpha", &e), 0);
    assert_int_equal(th_agents_create(a, d, &e), 0);
    assert_int_equal(th_agents_count(a), 2);

    char *list = NULL;
    assert_int_equal(th_agents_list_json(a, &list), 0);
    json_t *arr = json_loads(list, 0, NULL);
    th_agent_free(list);
    assert_int_equal(json_array_size(arr), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(arr, 0), "name")),
                        "alpha");
    assert_string_equal(json_string_value(json_object_get(json_array_get(arr, 1), "name")),
                        "scout");
    json_decref(arr);

    th_agent_def *got = NULL;
    assert_int_equal(th_agents_get(a, "scout", &got, &e), 0);
    assert_string_equal(got->role, "a researcher");
    assert_int_equal(th_agent_def_set(got, "role", "an editor", &e), 0);
    assert_int_equal(th_agents_update(a, got, &e), 0);
    th_agent_def_free(got);
    assert_int_equal(th_agents_get(a, "scout", &got, &e), 0);
    assert_string_equal(got->role, "an editor");
    got->max_steps = 500;
    assert_int_equal(th_agents_update(a, got, &e), TH_EINVAL);
    assert_string_equal(e.field, "max_steps");
    th_agent_def_free(got);

    assert_int_equal(th_agents_get(a, "nobody", &got, &e), TH_ENOTFOUND);
    assert_null(got);
    assert_int_equal(th_agent_def_set(d, "name", "nobody", &e), 0);
    assert_int_equal(th_agents_update(a, d, &e), TH_ENOTFOUND);
    assert_int_equal(th_agents_delete(a, "alpha", &e), 0);
    assert_int_equal(th_agents_delete(a, "alpha", &e), TH_ENOTFOUND);
    assert_int_equal(th_agents_count(a), 1);
    th_agent_def_free(d);
    th_agents_free(a);
    th_agents_free(NULL);
}

static void test_registry_checks_tools(void **state)
{
    (void)state;
    th_tools *t = th_tools_new();
    th_agents *a = th_agents_new(t);
    th_agent_def *d = parse(full);
    th_error e = {0};
    assert_int_equal(th_agents_create(a, d, &e), TH_EINVAL);
    assert_string_equal(e.field, "tools[0]");
    assert_int_equal(th_agents_count(a), 0);
    th_agent_def_free(d);
    th_agents_free(a);
    th_tools_free(t);
}

static void test_registry_persistence(void **state)
{
    (void)state;
    char *path = thtest_unique_path("agents", ".db");
    th_error e = {0};
    th_agents *a = th_agents_open(path, NULL, &e);
    assert_non_null(a);
    th_agent_def *d = parse(full);
    assert_int_equal(th_agents_create(a, d, &e), 0);
    assert_int_equal(th_agent_def_set(d, "name", "gone", &e), 0);
    assert_int_equal(th_agents_create(a, d, &e), 0);
    assert_int_equal(th_agent_def_set(d, "name", "cfg", &e), 0);
    assert_int_equal(th_agents_put(a, d, &e), 0);
    assert_int_equal(th_agent_def_set(d, "role", "from config", &e), 0);
    assert_int_equal(th_agents_put(a, d, &e), 0); /* replaces */
    assert_int_equal(th_agent_def_set(d, "name", "scout", &e), 0);
    assert_int_equal(th_agent_def_set(d, "model", "m9", &e), 0);
    assert_int_equal(th_agents_update(a, d, &e), 0);
    assert_int_equal(th_agents_delete(a, "gone", &e), 0);
    th_agents_free(a);

    a = th_agents_open(path, NULL, &e);
    assert_non_null(a);
    assert_int_equal(th_agents_count(a), 2);
    th_agent_def *got = NULL;
    assert_int_equal(th_agents_get(a, "scout", &got, &e), 0);
    assert_string_equal(got->model, "m9");
    assert_int_equal(got->ntools, 2);
    th_agent_def_free(got);
    assert_int_equal(th_agents_get(a, "cfg", &got, &e), 0);
    assert_string_equal(got->role, "from config");
    th_agent_def_free(got);
    assert_int_equal(th_agents_get(a, "gone", &got, &e), TH_ENOTFOUND);
    th_agents_free(a);

    /* A stored definition that no longer parses: the file is refused. */
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "UPDATE agents SET definition = '{\"name\":\"cfg\"}'"
                                  " WHERE name = 'cfg'",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    assert_null(th_agents_open(path, NULL, &e));
    assert_int_equal(e.code, TH_ECORRUPT);
    assert_true(thtest_contains(e.message, "cfg"));
    assert_null(th_agents_open("/nonexistent-dir/x/agents.db", NULL, &e));
    assert_int_equal(e.code, TH_EIO);
    th_agent_def_free(d);
    thtest_remove_db(path);
    free(path);
}

typedef struct worker_arg {
    th_agents *a;
    int index;
} worker_arg;

static void *registry_worker(void *p)
{
    worker_arg *w = p;
    char json[128];
    for (int i = 0; i < 50; i++) {
        snprintf(json, sizeof json, "{\"name\":\"a%d-%d\",\"provider\":\"mock\"}", w->index, i);
        th_agent_def *d = NULL;
        if (th_agent_def_from_json(json, NULL, &d, NULL) == 0 && th_agents_create(w->a, d, NULL))
            w->index = -1;
        th_agent_def *got = NULL;
        if (th_agents_get(w->a, d ? d->name : "", &got, NULL))
            w->index = -1;
        th_agent_def_free(got);
        th_agent_def_free(d);
    }
    return NULL;
}

static void test_registry_threads(void **state)
{
    (void)state;
    th_agents *a = th_agents_new(NULL);
    pthread_t th[4];
    worker_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (worker_arg){a, i};
        pthread_create(&th[i], NULL, registry_worker, &args[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].index, i);
    }
    assert_int_equal(th_agents_count(a), 200);
    th_agents_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_round_trip),       cmocka_unit_test(test_json_refusals),
        cmocka_unit_test(test_validate_tools),        cmocka_unit_test(test_patch),
        cmocka_unit_test(test_config_values),         cmocka_unit_test(test_registry),
        cmocka_unit_test(test_registry_checks_tools), cmocka_unit_test(test_registry_persistence),
        cmocka_unit_test(test_registry_threads),
    };
    return cmocka_run_group_tests_name("agent_def", tests, NULL, NULL);
}
