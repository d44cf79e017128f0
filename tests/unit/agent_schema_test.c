/*
 * The JSON Schema subset of the agent layer (src/agent/schema.c): schemas
 * refused at compile time with the path of the bad keyword, and values
 * checked keyword by keyword with the path of the first bad value.
 */
#include "thtest.h"

#include <string.h>

#include <taskhive/agent.h>

/* Compiles `schema`, validates `value` under root "arguments"; returns the
 * code and leaves the error in *err. */
static int check(const char *schema, const char *value, th_error *err)
{
    th_error e = {0};
    th_schema *s = th_schema_new(schema, &e);
    if (!s)
        fail_msg("schema refused: %s: %s", e.field, e.message);
    memset(err, 0, sizeof *err);
    int rc = th_schema_validate(s, value, "arguments", err);
    th_schema_free(s);
    return rc;
}

#define assert_ok(schema, value)                                                                   \
    do {                                                                                           \
        th_error e_;                                                                               \
        int rc_ = check((schema), (value), &e_);                                                   \
        if (rc_)                                                                                   \
            fail_msg("%s refused: %s: %s", (value), e_.field, e_.message);                         \
    } while (0)

/* Expects `value` refused at `field` with a message containing `msg`. */
#define assert_bad(schema, value, field_, msg)                                                     \
    do {                                                                                           \
        th_error e_;                                                                               \
        assert_int_equal(check((schema), (value), &e_), TH_EINVAL);                                \
        assert_string_equal(e_.field, (field_));                                                   \
        if (!strstr(e_.message, (msg)))                                                            \
            fail_msg("message \"%s\" lacks \"%s\"", e_.message, (msg));                            \
    } while (0)

/* Expects the schema refused, naming `field`. */
#define assert_bad_schema(schema, field_)                                                          \
    do {                                                                                           \
        th_error e_ = {0};                                                                         \
        th_schema *s_ = th_schema_new((schema), &e_);                                              \
        if (s_)                                                                                    \
            fail_msg("schema accepted: %s", (schema));                                             \
        assert_int_equal(e_.code, TH_EINVAL);                                                      \
        assert_string_equal(e_.field, (field_));                                                   \
    } while (0)

static void test_types(void **state)
{
    (void)state;
    assert_ok("{\"type\":\"object\"}", "{}");
    assert_ok("{\"type\":\"array\"}", "[1]");
    assert_ok("{\"type\":\"string\"}", "\"x\"");
    assert_ok("{\"type\":\"number\"}", "1.5");
    assert_ok("{\"type\":\"number\"}", "3");
    assert_ok("{\"type\":\"integer\"}", "3");
    assert_ok("{\"type\":\"integer\"}", "3.0");
    assert_ok("{\"type\":\"boolean\"}", "false");
    assert_ok("{\"type\":\"null\"}", "null");
    assert_ok("{}", "\"anything\"");
    assert_bad("{\"type\":\"integer\"}", "3.5", "arguments", "must be an integer, not a number");
    assert_bad("{\"type\":\"string\"}", "3", "arguments", "must be a string, not an integer");
    assert_bad("{\"type\":\"object\"}", "[]", "arguments", "must be an object, not an array");
    assert_bad("{\"type\":\"boolean\"}", "0", "arguments", "must be a boolean");
    assert_bad("{\"type\":\"null\"}", "false", "arguments", "must be a null");
    assert_bad("{\"type\":\"number\"}", "\"1\"", "arguments", "not a string");
}

static void test_type_arrays(void **state)
{
    (void)state;
    const char *s = "{\"type\":[\"string\",\"null\"]}";
    assert_ok(s, "\"a\"");
    assert_ok(s, "null");
    assert_bad(s, "1", "arguments", "must be string or null, not an integer");
}

static void test_object_keywords(void **state)
{
    (void)state;
    const char *s = "{\"type\":\"object\",\"required\":[\"name\"],\"additionalProperties\":false,"
                    "\"properties\":{\"name\":{\"type\":\"string\"},"
                    "\"count\":{\"type\":\"integer\",\"maximum\":10}}}";
    assert_ok(s, "{\"name\":\"a\"}");
    assert_ok(s, "{\"name\":\"a\",\"count\":10}");
    assert_bad(s, "{}", "arguments.name", "is required");
    assert_bad(s, "{\"name\":\"a\",\"colour\":1}", "arguments.colour", "unknown field");
    assert_bad(s, "{\"name\":\"a\",\"count\":11}", "arguments.count",
               "must be an integer \u2264 10");
    assert_bad(s, "{\"name\":\"a\",\"count\":\"3\"}", "arguments.count", "must be an integer");
    assert_bad(s, "{\"name\":7}", "arguments.name", "must be a string");
    /* additionalProperties as a schema applies to unlisted members only. */
    const char *t = "{\"properties\":{\"a\":{\"type\":\"string\"}},"
                    "\"additionalProperties\":{\"type\":\"integer\"}}";
    assert_ok(t, "{\"a\":\"x\",\"b\":2}");
    assert_bad(t, "{\"a\":\"x\",\"b\":\"y\"}", "arguments.b", "must be an integer");
    /* Absent additionalProperties allows anything. */
    assert_ok("{\"properties\":{\"a\":{\"type\":\"string\"}}}", "{\"z\":[1,2]}");
}

static void test_numbers(void **state)
{
    (void)state;
    const char *s = "{\"type\":\"number\",\"minimum\":1.5,\"maximum\":2}";
    assert_ok(s, "1.5");
    assert_ok(s, "2");
    assert_bad(s, "1.4", "arguments", "must be a number \u2265 1.5");
    assert_bad(s, "2.01", "arguments", "\u2264 2");
    assert_bad("{\"minimum\":0}", "-1", "arguments", "must be \u2265 0");
}

static void test_strings(void **state)
{
    (void)state;
    const char *s = "{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}";
    assert_ok(s, "\"ab\"");
    assert_ok(s, "\"\u00e9\u00e9\u00e9\""); /* 3 characters, 6 bytes */
    assert_bad(s, "\"a\"", "arguments", "at least 2 characters");
    assert_bad(s, "\"abcd\"", "arguments", "at most 3 characters");
}

static void test_enum(void **state)
{
    (void)state;
    const char *s = "{\"enum\":[\"red\",\"green\",3]}";
    assert_ok(s, "\"red\"");
    assert_ok(s, "3");
    assert_bad(s, "\"blue\"", "arguments", "must be one of [\"red\",\"green\",3]");
}

static void test_arrays(void **state)
{
    (void)state;
    const char *s = "{\"type\":\"object\",\"properties\":{\"tags\":{\"type\":\"array\","
                    "\"minItems\":1,\"maxItems\":2,\"items\":{\"type\":\"object\","
                    "\"required\":[\"k\"],\"properties\":{\"k\":{\"type\":\"string\"}}}}}}";
    assert_ok(s, "{\"tags\":[{\"k\":\"a\"}]}");
    assert_bad(s, "{\"tags\":[]}", "arguments.tags", "at least 1 items");
    assert_bad(s, "{\"tags\":[{\"k\":\"a\"},{\"k\":\"b\"},{\"k\":\"c\"}]}", "arguments.tags",
               "at most 2 items");
    assert_bad(s, "{\"tags\":[{\"k\":\"a\"},{\"k\":1}]}", "arguments.tags[1].k",
               "must be a string");
    assert_bad(s, "{\"tags\":[{\"k\":\"a\"},{}]}", "arguments.tags[1].k", "is required");
}

static void test_not_json(void **state)
{
    (void)state;
    th_error e;
    assert_int_equal(check("{}", "{oops", &e), TH_EINVAL);
    assert_string_equal(e.field, "arguments");
    assert_int_equal(check("{}", NULL, &e), TH_EINVAL);
    assert_int_equal(th_schema_validate(NULL, "{}", "x", &e), TH_EINVAL);
}

static void test_bad_schemas(void **state)
{
    (void)state;
    assert_bad_schema("{oops", "");
    assert_bad_schema("[]", "");
    assert_bad_schema("{\"type\":\"float\"}", "type");
    assert_bad_schema("{\"type\":[]}", "type");
    assert_bad_schema("{\"type\":[\"string\",\"bogus\"]}", "type[1]");
    assert_bad_schema("{\"pattern\":\"^a\"}", "pattern");
    assert_bad_schema("{\"properties\":{\"a\":{\"type\":\"int\"}}}", "properties.a.type");
    assert_bad_schema("{\"properties\":{\"a\":{\"minimum\":\"1\"}}}", "properties.a.minimum");
    assert_bad_schema("{\"properties\":[]}", "properties");
    assert_bad_schema("{\"properties\":{\"a\":3}}", "properties.a");
    assert_bad_schema("{\"required\":[\"a\",2]}", "required[1]");
    assert_bad_schema("{\"required\":\"a\"}", "required");
    assert_bad_schema("{\"enum\":[]}", "enum");
    assert_bad_schema("{\"minLength\":-1}", "minLength");
    assert_bad_schema("{\"maxItems\":1.5}", "maxItems");
    assert_bad_schema("{\"minimum\":5,\"maximum\":4}", "minimum");
    assert_bad_schema("{\"items\":{\"items\":{\"oneOf\":[]}}}", "items.items.oneOf");
    assert_bad_schema("{\"additionalProperties\":\"no\"}", "additionalProperties");
    /* Annotations are accepted and ignored. */
    th_schema *s = th_schema_new("{\"$schema\":\"x\",\"title\":\"t\",\"description\":\"d\","
                                 "\"default\":1,\"examples\":[1]}",
                                 NULL);
    assert_non_null(s);
    th_schema_free(s);
    th_schema_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_types),           cmocka_unit_test(test_type_arrays),
        cmocka_unit_test(test_object_keywords), cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_strings),         cmocka_unit_test(test_enum),
        cmocka_unit_test(test_arrays),          cmocka_unit_test(test_not_json),
        cmocka_unit_test(test_bad_schemas),
    };
    return cmocka_run_group_tests_name("agent_schema", tests, NULL, NULL);
}
