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

int main(void)
{
    thd_curl_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_providers_and_spend, thd_teardown),
        cmocka_unit_test(test_bad_config),
    };
    return cmocka_run_group_tests_name("daemon_llm", tests, NULL, NULL);
}
