/*
 * The LLM gateway inside the daemon, over HTTP: providers from the
 * configuration (a fake OpenAI server on loopback, its key from the
 * environment) beside the built-in mock; /v1/providers and /v1/spend and
 * their errors; the CLI's providers and spend verbs; configurations that are
 * refused with the file, the line and the reason.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "fakellm.h"

static char *config(const char *dir, const char *text)
{
    char *path = thd_fmt("%s/taskhive.ini", dir);
    thd_write_file(path, text);
    return path;
}

static void test_providers_and_spend(void **state)
{
    (void)state;
    fakellm *f = fakellm_start();
    char *dir = thd_newdir("llm");
    setenv("TH_TEST_FAKE_KEY", "sk-fake-secret", 1);
    char *ini = config(dir, thd_p("[llm]\nbudget_daily = 5\n"
                                  "[provider.fake]\nformat = openai\nbase_url = %s\n"
                                  "api_key_env = TH_TEST_FAKE_KEY\nmodel = fake-model\n"
                                  "max_concurrent = 3\nhealth_interval = 0\n"
                                  "[prices]\nfake-model = 2.5, 10\n",
                                  fakellm_url(f, TH_LLM_OPENAI)));
    const char *extra[] = {"--config", ini, NULL};
    thd_daemon *d = thd_start(dir, extra);

    thd_resp *r = thd_req(d, "GET", "/v1/providers", NULL);
    thd_assert_status(r, 200);
    assert_string_equal(thd_jstr(r->json, "default"), "fake");
    json_t *list = json_object_get(r->json, "providers");
    assert_int_equal(json_array_size(list), 2);
    assert_string_equal(thd_jstr(json_array_get(list, 0), "name"), "fake");
    assert_string_equal(thd_jstr(json_array_get(list, 0), "format"), "openai");
    assert_int_equal(thd_jint(json_array_get(list, 0), "max_concurrent", 0), 3);
    assert_string_equal(thd_jstr(json_array_get(list, 0), "breaker"), "closed");
    assert_string_equal(thd_jstr(json_array_get(list, 1), "name"), "mock");
    /* The key is nowhere in the answer. */
    assert_null(strstr(r->body, "sk-fake-secret"));
    thd_resp_free(r);

    r = thd_req(d, "GET", "/v1/providers/mock", NULL);
    thd_assert_status(r, 200);
    assert_string_equal(thd_jstr(r->json, "model"), "mock-1");
    thd_resp_free(r);
    r = thd_req(d, "GET", "/v1/providers/ghost", NULL);
    thd_assert_error(r, 404, "ENOTFOUND", "");
    thd_resp_free(r);
    r = thd_req(d, "DELETE", "/v1/providers", NULL);
    thd_assert_error(r, 405, "EMETHOD", "");
    thd_resp_free(r);
    r = thd_req(d, "GET", "/v1/spend?since=2026-13", NULL);
    thd_assert_error(r, 400, "EINVAL", "since");
    thd_resp_free(r);
    r = thd_req(d, "GET", "/v1/spend", NULL);
    thd_assert_status(r, 200);
    assert_int_equal(json_array_size(json_object_get(r->json, "rows")), 0);
    thd_resp_free(r);

    /* The CLI: a table with both providers, the spend summary. */
    char *url = thd_fmt("--url=%s", d->url);
    const char *argv1[] = {thd_bin(), "providers", url, NULL};
    char *out = NULL;
    assert_int_equal(thd_run(argv1, 10000, &out), 0);
    assert_non_null(strstr(out, "fake"));
    assert_non_null(strstr(out, "mock-1"));
    assert_non_null(strstr(out, "default provider: fake"));
    free(out);
    const char *argv2[] = {thd_bin(), "spend", url, NULL};
    assert_int_equal(thd_run(argv2, 10000, &out), 0);
    assert_non_null(strstr(out, "today: 0.000000 USD"));
    free(out);
    const char *argv3[] = {thd_bin(), "spend", url, "--since", "yesterday", NULL};
    assert_int_equal(thd_run(argv3, 10000, &out), 1);
    assert_non_null(strstr(out, "since"));
    free(out);
    free(url);
    thd_stop(d);
    thd_free(d);
    free(ini);
    free(dir);
    fakellm_free(f);
}

/* `serve --check-config` on `text`: its exit status and output. */
static int check(const char *text, char **out)
{
    char *dir = thd_newdir("llmcfg");
    char *ini = config(dir, text);
    const char *argv[] = {thd_bin(), "serve", "--config", ini, "--check-config", NULL};
    int rc = thd_run(argv, 10000, out);
    free(ini);
    free(dir);
    return rc;
}

static void test_bad_config(void **state)
{
    (void)state;
    static const struct {
        const char *ini, *says;
    } bad[] = {
        {"[provider.x]\nformat = gemini\n", "taskhive.ini:2: format: 'gemini' must be"},
        {"[provider.x]\nformat = openai\napi_key = sk-1\n", "api_key_env"},
        {"[provider.x]\nformat = openai\nbase_url = ftp://h\n", "must start with http"},
        {"[provider.x]\nformat = openai\nmax_concurrent = 0\n", "max_concurrent"},
        {"[provider.x]\nformat = openai\ntimeout = soon\n", "timeout: 'soon'"},
        {"[provider.x]\nformat = openai\ncolour = blue\n", "unknown key 'colour'"},
        {"[provider.x]\nmodel = m\n", "format is required"},
        {"[provider.bad name]\nformat = mock\n", "the name must be"},
        {"[llm]\ndefault_provider = nope\n", "default_provider: no provider named 'nope'"},
        {"[llm]\nbudget_daily = -1\n", "budget_daily"},
        {"[prices]\ngpt-x = cheap\n", "must be INPUT, OUTPUT"},
        {"[provider.x]\nformat = openai\napi_key_env = A\napi_key_store = b\n",
         "exclude each other"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *out = NULL;
        int rc = check(bad[i].ini, &out);
        if (rc != 1 || !strstr(out, bad[i].says))
            fail_msg("config %zu: exit %d, output: %s (wanted: %s)", i, rc, out, bad[i].says);
        assert_int_equal(strchr(out, '\n') - out + 1, (long)strlen(out)); /* one line */
        free(out);
    }
    char *out = NULL;
    assert_int_equal(check("[provider.local]\nformat = ollama\nmax_concurrent = 2\n"
                           "[llm]\ndefault_provider = local\n[prices]\nllama3 = 0, 0\n",
                           &out),
                     0);
    free(out);

    /* A key variable that is not set stops the start with one line. */
    char *dir = thd_newdir("llmkey");
    char *ini = config(dir, "[provider.oa]\nformat = openai\napi_key_env = TH_NO_SUCH_VAR\n");
    char *port = thd_fmt("%s/port", dir);
    char *data = thd_fmt("%s/data", dir);
    const char *argv[] = {thd_bin(),     "serve", "--config",   ini,  "--listen", "127.0.0.1:0",
                          "--port-file", port,    "--data-dir", data, NULL};
    assert_int_equal(thd_run(argv, 20000, &out), 1);
    assert_non_null(strstr(out, "TH_NO_SUCH_VAR is not set"));
    free(out);
    free(port);
    free(data);
    free(ini);
    free(dir);
}

/* Runs agent `agent` once and returns the Authorization header the fake
 * provider saw on its last request (static). */
static const char *auth_seen(thd_daemon *d, fakellm *f)
{
    size_t before = fakellm_requests(f);
    char *id =
        thd_submit(d, "{\"queue\":\"agent\",\"payload\":{\"agent\":\"a\",\"input\":\"hi\"}}");
    json_decref(thd_wait_state(d, id, "completed"));
    free(id);
    assert_true(fakellm_requests(f) > before);
    static char buf[128];
    const char *h = fakellm_header(fakellm_request_at(f, fakellm_requests(f) - 1), "authorization");
    snprintf(buf, sizeof buf, "%s", h ? h : "");
    return buf;
}

static void test_key_store(void **state)
{
    (void)state;
    fakellm *f = fakellm_start();
    char *dir = thd_newdir("keys");
    thd_daemon *d = thd_start(dir, NULL);
    thd_resp *r = thd_req(d, "PUT", "/v1/keys/team", "{\"value\":\"sk-first-secret\"}");
    thd_assert_status(r, 201);
    assert_false(thd_jbool(r->json, "rotated"));
    thd_resp_free(r);
    r = thd_req(d, "GET", "/v1/keys", NULL);
    thd_assert_status(r, 200);
    assert_string_equal(thd_jstr(r->json, "keys[0].name"), "team");
    assert_null(strstr(r->body, "sk-first-secret"));
    thd_resp_free(r);
    r = thd_req(d, "PUT", "/v1/keys/team", "{\"value\":\"\"}");
    thd_assert_error(r, 400, "EINVAL", "value");
    thd_resp_free(r);
    /* A line break would end the Authorization header early. */
    r = thd_req(d, "PUT", "/v1/keys/team", "{\"value\":\"sk-1\\r\\nX-Evil: 1\"}");
    thd_assert_error(r, 400, "EINVAL", "value");
    thd_resp_free(r);
    r = thd_req(d, "PUT", "/v1/keys/team", "{\"value\":\"x\",\"note\":1}");
    thd_assert_error(r, 400, "EINVAL", "note");
    thd_resp_free(r);
    r = thd_req(d, "POST", "/v1/keys/team", "{}");
    thd_assert_error(r, 405, "EMETHOD", NULL);
    thd_resp_free(r);
    thd_stop(d);
    thd_free(d);
    /* Encrypted at rest: the value is nowhere in the file in clear. */
    char *db = thd_fmt("%s/data/keys.db", dir);
    FILE *fp = fopen(db, "rb");
    assert_non_null(fp);
    static char bytes[1 << 20];
    size_t n = fread(bytes, 1, sizeof bytes, fp);
    fclose(fp);
    assert_true(n > 0);
    assert_null(memmem(bytes, n, "sk-first-secret", 15));
    free(db);

    /* A provider takes its key from the store; storing a new value rotates it. */
    char *ini = config(dir, thd_p("[provider.fake]\nformat = openai\nbase_url = %s\n"
                                  "api_key_store = team\nhealth_interval = 0\n"
                                  "[agent.a]\nprovider = fake\n",
                                  fakellm_url(f, TH_LLM_OPENAI)));
    const char *extra[] = {"--config", ini, NULL};
    d = thd_start(dir, extra);
    assert_string_equal(auth_seen(d, f), "Bearer sk-first-secret");
    r = thd_req(d, "PUT", "/v1/keys/team", "{\"value\":\"sk-second-secret\"}");
    thd_assert_status(r, 200);
    assert_true(thd_jbool(r->json, "rotated"));
    assert_string_equal(thd_jstr(r->json, "providers[0]"), "fake");
    thd_resp_free(r);
    assert_string_equal(auth_seen(d, f), "Bearer sk-second-secret");
    r = thd_req(d, "DELETE", "/v1/keys/team", NULL);
    thd_assert_error(r, 409, "EBUSY", "name");
    thd_resp_free(r);
    r = thd_req(d, "DELETE", "/v1/keys/nope", NULL);
    thd_assert_error(r, 404, "ENOTFOUND", "name");
    thd_resp_free(r);
    thd_stop(d);
    thd_free(d);

    /* Another master key cannot open it: the start fails with one line. */
    char *port = thd_fmt("%s/port", dir), *data = thd_fmt("%s/data", dir);
    const char *argv[] = {thd_bin(),     "serve", "--config",   ini,  "--listen", "127.0.0.1:0",
                          "--port-file", port,    "--data-dir", data, NULL};
    setenv("TASKHIVE_MASTER_KEY",
           "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff", 1);
    char *out = NULL;
    assert_int_equal(thd_run(argv, 20000, &out), 1);
    unsetenv("TASKHIVE_MASTER_KEY");
    assert_non_null(strstr(out, "cannot be decrypted"));
    free(out);
    /* A key that is not stored: the same. */
    free(ini);
    ini = config(dir, "[provider.x]\nformat = openai\napi_key_store = missing\n");
    argv[3] = ini;
    assert_int_equal(thd_run(argv, 20000, &out), 1);
    assert_non_null(strstr(out, "no such key"));
    free(out);
    free(port);
    free(data);
    free(ini);
    free(dir);
    fakellm_free(f);
}

/* The service row of `name` in /v1/services: its pid and restarts. */
static void service_row(thd_daemon *d, const char *name, long *pid, long *restarts)
{
    thd_resp *r = thd_req(d, "GET", thd_p("/v1/services/%s", name), NULL);
    json_t *row = json_array_get(json_object_get(r->json, "services"), 0);
    *pid = row ? (long)thd_jint(row, "pid", -1) : -1;
    *restarts = row ? (long)thd_jint(row, "restarts", -1) : -1;
    thd_resp_free(r);
}

/* A local provider that fails its health checks gets its supervised service
 * restarted, and is healthy again once the checks pass. */
static void test_restart_service(void **state)
{
    (void)state;
    fakellm *f = fakellm_start();
    char *dir = thd_newdir("llmrestart");
    char *ini = config(dir, thd_p("[service.localllm]\ncommand = exec sleep 300\n"
                                  "[provider.local]\nformat = ollama\nbase_url = %s\n"
                                  "health_interval = 50ms\nhealth_failures = 2\n"
                                  "restart_service = localllm\n",
                                  fakellm_url(f, TH_LLM_OLLAMA)));
    const char *extra[] = {"--config", ini, NULL};
    thd_daemon *d = thd_start(dir, extra);
    long pid0 = -1, restarts = -1;
    for (int i = 0; i < 300 && pid0 <= 0; i++) {
        service_row(d, "localllm", &pid0, &restarts);
        thd_sleep_ms(20);
    }
    assert_true(pid0 > 0);
    fakellm_set_health(f, 503);
    long pid = pid0;
    for (int i = 0; i < 500 && (pid == pid0 || pid <= 0); i++) {
        thd_sleep_ms(20);
        service_row(d, "localllm", &pid, &restarts);
    }
    assert_true(pid > 0 && pid != pid0);
    thd_resp *r = thd_req(d, "GET", "/v1/providers/local", NULL);
    assert_false(thd_jbool(r->json, "healthy"));
    thd_resp_free(r);
    fakellm_set_health(f, 200);
    int healthy = 0;
    for (int i = 0; i < 500 && !healthy; i++) {
        thd_sleep_ms(20);
        r = thd_req(d, "GET", "/v1/providers/local", NULL);
        healthy = thd_jbool(r->json, "healthy");
        thd_resp_free(r);
    }
    assert_true(healthy);
    thd_stop(d);
    thd_free(d);
    free(ini);
    free(dir);
    fakellm_free(f);
}

int main(void)
{
    thd_curl_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_providers_and_spend, thd_teardown),
        cmocka_unit_test(test_bad_config),
        cmocka_unit_test_teardown(test_key_store, thd_teardown),
        cmocka_unit_test_teardown(test_restart_service, thd_teardown),
    };
    return cmocka_run_group_tests_name("daemon_llm", tests, NULL, NULL);
}
