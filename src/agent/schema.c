/*
 * A JSON Schema subset for tool arguments: compiling a schema (refusing
 * keywords it does not implement and malformed values, by path) and
 * validating a value against it, reporting the path of the first bad value.
 *
 * A compiled schema is the jansson tree of the schema text, checked once;
 * validation walks schema and value together.
 */
#include "agent/agent_impl.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"

struct th_schema {
    json_t *root;
};

static const char *const type_names[] = {"object",  "array",   "string", "number",
                                         "integer", "boolean", "null",   NULL};

static const char *const known_keywords[] = {
    "type",        "properties", "required", "additionalProperties",
    "enum",        "minimum",    "maximum",  "minLength",
    "maxLength",   "items",      "minItems", "maxItems",
    "description", "title",      "default",  "$schema",
    "examples",    NULL};

static int in_list(const char *const *list, const char *s)
{
    for (size_t i = 0; list[i]; i++)
        if (strcmp(list[i], s) == 0)
            return 1;
    return 0;
}

/* ---- paths ---------------------------------------------------------------- */

/* A path like "arguments.items[2].name", grown and shrunk as the walk goes. */
typedef struct path {
    char buf[256];
    size_t len;
} path;

/* Appends `text` (truncated at the buffer's end); returns the old length. */
static size_t path_append(path *p, const char *sep, const char *text)
{
    size_t old = p->len;
    int n = snprintf(p->buf + p->len, sizeof p->buf - p->len, "%s%s", sep, text);
    if (n > 0)
        p->len += (size_t)n < sizeof p->buf - p->len ? (size_t)n : sizeof p->buf - p->len - 1;
    return old;
}

static void path_pop(path *p, size_t old)
{
    p->len = old;
    p->buf[old] = '\0';
}

static void path_init(path *p, const char *root)
{
    p->len = 0;
    p->buf[0] = '\0';
    if (root && *root)
        path_append(p, "", root);
}

/* Pushes ".key", or "key" at the root. */
static size_t path_key(path *p, const char *key)
{
    return path_append(p, p->len ? "." : "", key);
}

/* Pushes "[i]". */
static size_t path_index(path *p, size_t i)
{
    char buf[32];
    snprintf(buf, sizeof buf, "[%zu]", i);
    return path_append(p, "", buf);
}

/* ---- compiling -------------------------------------------------------------- */

static int check_schema(const json_t *s, path *p, th_error *err);

static int bad(th_error *err, const path *p, const char *msg)
{
    return th__err(err, TH_EINVAL, p->buf, "%s", msg);
}

static int check_count(const json_t *v, path *p, const char *key, th_error *err)
{
    size_t old = path_key(p, key);
    int rc = 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        rc = bad(err, p, "must be a non-negative integer");
    path_pop(p, old);
    return rc;
}

static int check_type(const json_t *v, path *p, th_error *err)
{
    if (json_is_string(v))
        return in_list(type_names, json_string_value(v)) ? 0 : bad(err, p, "unknown type");
    if (!json_is_array(v) || json_array_size(v) == 0)
        return bad(err, p, "must be a type name or a non-empty array of type names");
    for (size_t i = 0; i < json_array_size(v); i++) {
        const json_t *t = json_array_get(v, i);
        size_t old = path_index(p, i);
        int rc = json_is_string(t) && in_list(type_names, json_string_value(t))
                     ? 0
                     : bad(err, p, "unknown type");
        path_pop(p, old);
        if (rc)
            return rc;
    }
    return 0;
}

static int check_properties(const json_t *v, path *p, th_error *err)
{
    if (!json_is_object(v))
        return bad(err, p, "must be an object of schemas");
    const char *k;
    const json_t *sub;
    json_object_foreach((json_t *)v, k, sub)
    {
        size_t old = path_key(p, k);
        int rc = check_schema(sub, p, err);
        path_pop(p, old);
        if (rc)
            return rc;
    }
    return 0;
}

static int check_required(const json_t *v, path *p, th_error *err)
{
    if (!json_is_array(v))
        return bad(err, p, "must be an array of property names");
    for (size_t i = 0; i < json_array_size(v); i++)
        if (!json_is_string(json_array_get(v, i))) {
            path_index(p, i);
            return bad(err, p, "must be a property name");
        }
    return 0;
}

/* One keyword of a schema object; `p` ends with the keyword. */
static int check_keyword(const char *k, const json_t *v, path *p, th_error *err)
{
    if (!in_list(known_keywords, k))
        return bad(err, p, "unsupported schema keyword");
    if (strcmp(k, "type") == 0)
        return check_type(v, p, err);
    if (strcmp(k, "properties") == 0)
        return check_properties(v, p, err);
    if (strcmp(k, "required") == 0)
        return check_required(v, p, err);
    if (strcmp(k, "additionalProperties") == 0)
        return json_is_boolean(v) ? 0 : check_schema(v, p, err);
    if (strcmp(k, "items") == 0)
        return check_schema(v, p, err);
    if (strcmp(k, "enum") == 0)
        return json_is_array(v) && json_array_size(v) ? 0
                                                      : bad(err, p, "must be a non-empty array");
    if (strcmp(k, "minimum") == 0 || strcmp(k, "maximum") == 0)
        return json_is_number(v) ? 0 : bad(err, p, "must be a number");
    return 0;
}

static int check_schema(const json_t *s, path *p, th_error *err)
{
    if (!json_is_object(s))
        return bad(err, p, "a schema must be an object");
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)s, k, v)
    {
        int rc;
        if (strcmp(k, "minLength") == 0 || strcmp(k, "maxLength") == 0 ||
            strcmp(k, "minItems") == 0 || strcmp(k, "maxItems") == 0) {
            rc = check_count(v, p, k, err);
        } else {
            size_t old = path_key(p, k);
            rc = check_keyword(k, v, p, err);
            path_pop(p, old);
        }
        if (rc)
            return rc;
    }
    const json_t *lo = json_object_get(s, "minimum"), *hi = json_object_get(s, "maximum");
    if (lo && hi && json_number_value(lo) > json_number_value(hi)) {
        path_key(p, "minimum");
        return bad(err, p, "must not exceed maximum");
    }
    return 0;
}

th_schema *th_schema_new(const char *json_text, th_error *err)
{
    json_error_t je;
    th_schema *s = NULL;
    json_t *root = json_loads(json_text ? json_text : "", JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        th__err(err, TH_EINVAL, "", "not JSON: %s (at %d)", je.text, je.position);
        return NULL;
    }
    path p;
    path_init(&p, "");
    if (check_schema(root, &p, err))
        goto fail;
    if (!(s = th__malloc(sizeof *s))) {
        th__err(err, TH_ENOMEM, "", "out of memory");
        goto fail;
    }
    s->root = root;
    return s;
fail:
    json_decref(root);
    return NULL;
}

void th_schema_free(th_schema *s)
{
    if (!s)
        return;
    json_decref(s->root);
    th__free(s);
}

/* ---- validating ----------------------------------------------------------- */

static const char *value_type(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}

static int is_type(const json_t *v, const char *t)
{
    if (strcmp(t, "object") == 0)
        return json_is_object(v);
    if (strcmp(t, "array") == 0)
        return json_is_array(v);
    if (strcmp(t, "string") == 0)
        return json_is_string(v);
    if (strcmp(t, "number") == 0)
        return json_is_number(v);
    if (strcmp(t, "integer") == 0) {
        if (json_is_integer(v))
            return 1;
        double d = json_is_real(v) ? json_real_value(v) : NAN;
        return isfinite(d) && d == floor(d) && fabs(d) < 9007199254740992.0;
    }
    if (strcmp(t, "boolean") == 0)
        return json_is_boolean(v);
    return json_is_null(v);
}

static const char *article(const char *t)
{
    return t[0] == 'a' || t[0] == 'i' || t[0] == 'o' ? "an" : "a";
}

static int check_value_type(const json_t *type, const json_t *v, path *p, th_error *err)
{
    if (json_is_string(type)) {
        const char *t = json_string_value(type);
        if (is_type(v, t))
            return 0;
        return th__err(err, TH_EINVAL, p->buf, "must be %s %s, not %s", article(t), t,
                       value_type(v));
    }
    char names[128] = "";
    size_t len = 0;
    for (size_t i = 0; i < json_array_size(type); i++) {
        const char *t = json_string_value(json_array_get(type, i));
        if (is_type(v, t))
            return 0;
        int n = snprintf(names + len, sizeof names - len, "%s%s", i ? " or " : "", t);
        if (n > 0 && (size_t)n < sizeof names - len)
            len += (size_t)n;
    }
    return th__err(err, TH_EINVAL, p->buf, "must be %s, not %s", names, value_type(v));
}

/* "an integer", "a number" or "" for messages about ranges. */
static const char *range_noun(const json_t *schema)
{
    const json_t *t = json_object_get(schema, "type");
    const char *s = json_string_value(t);
    if (s && strcmp(s, "integer") == 0)
        return "an integer ";
    if (s && strcmp(s, "number") == 0)
        return "a number ";
    return "";
}

static int check_number(const json_t *schema, const json_t *v, path *p, th_error *err)
{
    double d = json_number_value(v);
    const json_t *lo = json_object_get(schema, "minimum"), *hi = json_object_get(schema, "maximum");
    if (lo && d < json_number_value(lo))
        return th__err(err, TH_EINVAL, p->buf, "must be %s\u2265 %g", range_noun(schema),
                       json_number_value(lo));
    if (hi && d > json_number_value(hi))
        return th__err(err, TH_EINVAL, p->buf, "must be %s\u2264 %g", range_noun(schema),
                       json_number_value(hi));
    return 0;
}

static size_t utf8_chars(const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80)
            n++;
    return n;
}

/* A minimum/maximum count check shared by strings and arrays. */
static int check_count_range(const json_t *schema, const char *min_key, const char *max_key,
                             size_t n, const char *unit, path *p, th_error *err)
{
    const json_t *lo = json_object_get(schema, min_key), *hi = json_object_get(schema, max_key);
    if (lo && (json_int_t)n < json_integer_value(lo))
        return th__err(err, TH_EINVAL, p->buf, "must have at least %lld %s",
                       (long long)json_integer_value(lo), unit);
    if (hi && (json_int_t)n > json_integer_value(hi))
        return th__err(err, TH_EINVAL, p->buf, "must have at most %lld %s",
                       (long long)json_integer_value(hi), unit);
    return 0;
}

static int validate(const json_t *schema, const json_t *v, path *p, th_error *err);

static int check_array(const json_t *schema, const json_t *v, path *p, th_error *err)
{
    int rc = check_count_range(schema, "minItems", "maxItems", json_array_size(v), "items", p, err);
    const json_t *items = json_object_get(schema, "items");
    for (size_t i = 0; !rc && items && i < json_array_size(v); i++) {
        size_t old = path_index(p, i);
        rc = validate(items, json_array_get(v, i), p, err);
        if (!rc)
            path_pop(p, old);
    }
    return rc;
}

static int check_object(const json_t *schema, const json_t *v, path *p, th_error *err)
{
    const json_t *req = json_object_get(schema, "required");
    for (size_t i = 0; i < json_array_size(req); i++) {
        const char *k = json_string_value(json_array_get(req, i));
        if (!json_object_get(v, k)) {
            path_key(p, k);
            return th__err(err, TH_EINVAL, p->buf, "is required");
        }
    }
    const json_t *props = json_object_get(schema, "properties");
    const json_t *extra = json_object_get(schema, "additionalProperties");
    const char *k;
    const json_t *val;
    json_object_foreach((json_t *)v, k, val)
    {
        const json_t *sub = json_object_get(props, k);
        size_t old = path_key(p, k);
        int rc = 0;
        if (sub)
            rc = validate(sub, val, p, err);
        else if (json_is_false(extra))
            rc = th__err(err, TH_EINVAL, p->buf, "unknown field");
        else if (json_is_object(extra))
            rc = validate(extra, val, p, err);
        if (rc)
            return rc;
        path_pop(p, old);
    }
    return 0;
}

static int validate(const json_t *schema, const json_t *v, path *p, th_error *err)
{
    int rc;
    const json_t *type = json_object_get(schema, "type");
    if (type && (rc = check_value_type(type, v, p, err)))
        return rc;
    const json_t *en = json_object_get(schema, "enum");
    if (en) {
        int found = 0;
        for (size_t i = 0; !found && i < json_array_size(en); i++)
            found = json_equal(json_array_get(en, i), (json_t *)v);
        if (!found) {
            char *list = json_dumps(en, JSON_COMPACT | JSON_ENCODE_ANY);
            rc = th__err(err, TH_EINVAL, p->buf, "must be one of %s", list ? list : "the enum");
            free(list);
            return rc;
        }
    }
    if (json_is_number(v))
        return check_number(schema, v, p, err);
    if (json_is_string(v))
        return check_count_range(schema, "minLength", "maxLength",
                                 utf8_chars(json_string_value(v), json_string_length(v)),
                                 "characters", p, err);
    if (json_is_array(v))
        return check_array(schema, v, p, err);
    if (json_is_object(v))
        return check_object(schema, v, p, err);
    return 0;
}

int th__schema_check(const th_schema *s, const json_t *value, const char *root, th_error *err)
{
    path p;
    path_init(&p, root);
    return validate(s->root, value, &p, err);
}

int th_schema_validate(const th_schema *s, const char *json_text, const char *root, th_error *err)
{
    if (!s)
        return th__err(err, TH_EINVAL, "schema", "no schema");
    json_error_t je;
    json_t *v =
        json_loads(json_text ? json_text : "", JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
    if (!v)
        return th__err(err, TH_EINVAL, root ? root : "", "not JSON: %s", je.text);
    int rc = th__schema_check(s, v, root, err);
    json_decref(v);
    return rc;
}
