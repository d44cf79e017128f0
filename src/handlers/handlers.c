/*
 * Shared helpers of the built-in handlers; see handlers.h.
 */
#include "handlers/handlers.h"

#include <inttypes.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "taskhive/error.h"

static int vfail(th_ctx *ctx, int rc, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

static int vfail(th_ctx *ctx, int rc, const char *fmt, va_list ap)
{
    char buf[TH_MESSAGE_MAX];
    vsnprintf(buf, sizeof buf, fmt, ap);
    th_ctx_set_error(ctx, "%s", buf);
    return rc;
}

int th__hfail(th_ctx *ctx, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vfail(ctx, TH_HANDLER_PERMANENT, fmt, ap);
    va_end(ap);
    return rc;
}

int th__hretry(th_ctx *ctx, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vfail(ctx, TH_HANDLER_RETRY, fmt, ap);
    va_end(ap);
    return rc;
}

int th__hnomem(th_ctx *ctx)
{
    return th__hretry(ctx, "out of memory");
}

int th__hcancelled(th_ctx *ctx)
{
    return th__hretry(ctx, "cancelled");
}

/* ---- payload fields ----------------------------------------------------- */

int th__payload_parse(th_ctx *ctx, const char *const *allowed, json_t **out)
{
    *out = NULL;
    const th_task *task = th_ctx_task(ctx);
    const char *text = task && task->payload ? task->payload : "null";
    json_error_t jerr;
    json_t *root =
        json_loads(text, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (!root)
        return th__hfail(ctx, "payload: invalid JSON: %s (line %d, column %d)", jerr.text,
                         jerr.line, jerr.column);
    if (json_is_null(root)) {
        json_decref(root);
        root = json_object();
        if (!root)
            return th__hnomem(ctx);
    }
    if (!json_is_object(root)) {
        json_decref(root);
        return th__hfail(ctx, "payload: must be a JSON object");
    }
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value)
    {
        size_t i = 0;
        while (allowed[i] && strcmp(allowed[i], key) != 0)
            i++;
        if (!allowed[i]) {
            int rc = th__hfail(ctx, "payload.%s: unknown field", key);
            json_decref(root);
            return rc;
        }
    }
    *out = root;
    return 0;
}

int th__payload_string(th_ctx *ctx, json_t *obj, const char *key, int required, const char **out,
                       size_t *len)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return required ? th__hfail(ctx, "payload.%s: required", key) : 0;
    if (!json_is_string(v))
        return th__hfail(ctx, "payload.%s: must be a string", key);
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (!len && memchr(s, '\0', n))
        return th__hfail(ctx, "payload.%s: must not contain NUL characters", key);
    *out = s;
    if (len)
        *len = n;
    return 0;
}

int th__payload_int(th_ctx *ctx, json_t *obj, const char *key, int64_t min, int64_t max,
                    int required, int64_t *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return required ? th__hfail(ctx, "payload.%s: required", key) : 0;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
        return th__hfail(ctx, "payload.%s: must be an integer in %" PRId64 "..%" PRId64, key, min,
                         max);
    *out = (int64_t)json_integer_value(v);
    return 0;
}

int th__payload_enum(th_ctx *ctx, json_t *obj, const char *key, const char *const *names, int *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return 0;
    size_t n = 0;
    while (names[n])
        n++;
    if (json_is_string(v)) {
        for (size_t i = 0; i < n; i++)
            if (strcmp(json_string_value(v), names[i]) == 0) {
                *out = (int)i;
                return 0;
            }
    }
    char list[512];
    size_t used = 0;
    list[0] = '\0';
    for (size_t i = 0; i < n && used < sizeof list; i++) {
        const char *sep = i == 0 ? "" : (n == 2 ? " or " : ", ");
        int w = snprintf(list + used, sizeof list - used, "%s\"%s\"", sep, names[i]);
        if (w < 0)
            break;
        used += (size_t)w;
    }
    return th__hfail(ctx, "payload.%s: must be %s%s", key, n > 2 ? "one of " : "", list);
}

static const struct {
    int bit;
    const char *name;
} input_kinds[] = {
    {TH__INPUT_TEXT, "data"},
    {TH__INPUT_BASE64, "data_base64"},
    {TH__INPUT_FILE, "file"},
};
#define NKINDS (sizeof input_kinds / sizeof input_kinds[0])

/* "\"data\", \"data_base64\" or \"file\"" for the kinds in `accept`. */
static void kinds_list(int accept, char *buf, size_t size)
{
    size_t count = 0, total = 0, used = 0;
    for (size_t i = 0; i < NKINDS; i++)
        total += (accept & input_kinds[i].bit) != 0;
    buf[0] = '\0';
    for (size_t i = 0; i < NKINDS && used < size; i++) {
        if (!(accept & input_kinds[i].bit))
            continue;
        const char *sep = count == 0 ? "" : (count + 1 == total ? " or " : ", ");
        int w = snprintf(buf + used, size - used, "%s\"%s\"", sep, input_kinds[i].name);
        if (w < 0)
            break;
        used += (size_t)w;
        count++;
    }
}

int th__payload_input(th_ctx *ctx, json_t *obj, int accept, th__hinput *in)
{
    memset(in, 0, sizeof *in);
    char list[128];
    kinds_list(accept, list, sizeof list);
    int found = -1;
    for (size_t i = 0; i < NKINDS; i++) {
        if (!(accept & input_kinds[i].bit) || !json_object_get(obj, input_kinds[i].name))
            continue;
        if (found >= 0)
            return th__hfail(ctx, "payload.%s: give only one of %s", input_kinds[i].name, list);
        found = (int)i;
    }
    if (found < 0) {
        const char *first = NULL;
        for (size_t i = 0; i < NKINDS && !first; i++)
            if (accept & input_kinds[i].bit)
                first = input_kinds[i].name;
        if (strchr(list, ','))
            return th__hfail(ctx, "payload.%s: required (give one of %s)", first, list);
        if (strstr(list, " or "))
            return th__hfail(ctx, "payload.%s: required (give %s)", first, list);
        return th__hfail(ctx, "payload.%s: required", first);
    }
    const char *name = input_kinds[found].name;
    in->field = name;
    const char *s = NULL;
    size_t n = 0;
    int rc;
    switch (input_kinds[found].bit) {
    case TH__INPUT_TEXT:
        if ((rc = th__payload_string(ctx, obj, name, 1, &s, &n)) != 0)
            return rc;
        if (n > TH__HANDLER_MEM_MAX)
            return th__hfail(ctx, "payload.%s: larger than the %s limit", name,
                             TH__HANDLER_MEM_MAX_NAME);
        in->buf = th__malloc(n);
        if (!in->buf)
            return th__hnomem(ctx);
        memcpy(in->buf, s, n);
        in->len = n;
        return 0;
    case TH__INPUT_BASE64:
        if ((rc = th__payload_string(ctx, obj, name, 1, &s, &n)) != 0)
            return rc;
        if (n / 4 * 3 > TH__HANDLER_MEM_MAX)
            return th__hfail(ctx, "payload.%s: larger than the %s limit", name,
                             TH__HANDLER_MEM_MAX_NAME);
        rc = th__b64_decode(s, n, &in->buf, &in->len);
        if (rc == TH_ENOMEM)
            return th__hnomem(ctx);
        if (rc)
            return th__hfail(ctx, "payload.%s: not valid base64", name);
        return 0;
    default:
        if ((rc = th__payload_string(ctx, obj, name, 1, &s, NULL)) != 0)
            return rc;
        if (!*s)
            return th__hfail(ctx, "payload.%s: must not be empty", name);
        in->file = s;
        return 0;
    }
}

void th__hinput_free(th__hinput *in)
{
    if (!in)
        return;
    th__free(in->buf);
    memset(in, 0, sizeof *in);
}

/* ---- base64 ------------------------------------------------------------- */

char *th__b64_encode(const unsigned char *buf, size_t len)
{
    size_t size = sodium_base64_encoded_len(len, sodium_base64_VARIANT_ORIGINAL);
    char *out = th__malloc(size);
    if (out)
        sodium_bin2base64(out, size, buf, len, sodium_base64_VARIANT_ORIGINAL);
    return out;
}

int th__b64_decode(const char *text, size_t len, unsigned char **out, size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    size_t max = len / 4 * 3 + 3;
    unsigned char *buf = th__malloc(max);
    if (!buf)
        return TH_ENOMEM;
    size_t n = 0;
    /* Padded text first; unpadded text is accepted too. */
    if (sodium_base642bin(buf, max, text, len, " \t\r\n", &n, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0 &&
        sodium_base642bin(buf, max, text, len, " \t\r\n", &n, NULL,
                          sodium_base64_VARIANT_ORIGINAL_NO_PADDING) != 0) {
        th__free(buf);
        return TH_EINVAL;
    }
    *out = buf;
    *outlen = n;
    return 0;
}

/* ---- UTF-8 -------------------------------------------------------------- */

/* Length of the well-formed UTF-8 sequence at s[0..n) (n >= 1), or 0 when it
 * is not one; NUL counts as not well-formed. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c == 0)
        return 0;
    if (c < 0x80)
        return 1;
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0xC2)
        return 0;
    if (c < 0xE0) {
        len = 2;
    } else if (c < 0xF0) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        else if (c == 0xED)
            hi = 0x9F; /* surrogates */
    } else if (c < 0xF5) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90; /* overlong */
        else if (c == 0xF4)
            hi = 0x8F; /* beyond U+10FFFF */
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return len;
}

int th__utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t k = utf8_seq(s + i, n - i);
        if (!k)
            return 0;
        i += k;
    }
    return 1;
}

/* Writes the sanitized text into out (room for 3 * n + 1 bytes); returns its
 * length. */
static size_t sanitize_into(const unsigned char *s, size_t n, char *out)
{
    size_t i = 0, o = 0;
    while (i < n) {
        size_t k = utf8_seq(s + i, n - i);
        if (k) {
            memcpy(out + o, s + i, k);
            o += k;
            i += k;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    out[o] = '\0';
    return o;
}

char *th__utf8_sanitize(const unsigned char *s, size_t n)
{
    if (n > (SIZE_MAX - 1) / 3)
        return NULL;
    char *out = th__malloc(3 * n + 1);
    if (out)
        sanitize_into(s, n, out);
    return out;
}

json_t *th__json_text(const unsigned char *s, size_t n)
{
    if (th__utf8_valid(s, n))
        return json_stringn((const char *)s, n);
    if (n > (SIZE_MAX - 1) / 3)
        return NULL;
    char *tmp = th__malloc(3 * n + 1);
    if (!tmp)
        return NULL;
    size_t len = sanitize_into(s, n, tmp);
    json_t *v = json_stringn(tmp, len);
    th__free(tmp);
    return v;
}

/* ---- results ------------------------------------------------------------ */

int th__hresult(th_ctx *ctx, json_t *obj, int rc)
{
    if (!obj)
        return th__hnomem(ctx);
    char *text = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (!text)
        return th__hnomem(ctx);
    int r = th_ctx_set_result(ctx, text);
    free(text);
    if (r == TH_ENOMEM)
        return th__hnomem(ctx);
    if (r)
        return th__hretry(ctx, "cannot set the result: %s", th_strerror(r));
    return rc;
}

/* ---- libsodium ---------------------------------------------------------- */

static pthread_once_t sodium_once = PTHREAD_ONCE_INIT;
static int sodium_status = -1;

static void sodium_init_once(void)
{
    sodium_status = sodium_init() < 0 ? -1 : 0;
}

int th__sodium_ready(void)
{
    pthread_once(&sodium_once, sodium_init_once);
    return sodium_status;
}
