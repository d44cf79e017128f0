/*
 * The wire layer's common part: defaults, dispatch by format, the shared
 * helpers of wire_impl.h, embeddings and health requests, rate-limit
 * headers, token estimates and the small public value helpers of llm.h.
 */
#include "llm/wire.h"

#include <ctype.h>
#include <curl/curl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "core/error.h"
#include "llm/wire_impl.h"

/* ---- public value helpers ----------------------------------------------- */

TH_EXPORT const char *th_llm_format_name(th_llm_format f)
{
    switch (f) {
    case TH_LLM_MOCK:
        return "mock";
    case TH_LLM_OPENAI:
        return "openai";
    case TH_LLM_ANTHROPIC:
        return "anthropic";
    case TH_LLM_OLLAMA:
        return "ollama";
    }
    return "unknown";
}

TH_EXPORT int th_llm_format_parse(const char *name, th_llm_format *out)
{
    static const th_llm_format all[] = {TH_LLM_MOCK, TH_LLM_OPENAI, TH_LLM_ANTHROPIC,
                                        TH_LLM_OLLAMA};
    if (!name)
        return TH_EINVAL;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (strcmp(name, th_llm_format_name(all[i])) == 0) {
            if (out)
                *out = all[i];
            return 0;
        }
    }
    return TH_EINVAL;
}

TH_EXPORT const char *th_llm_breaker_name(th_llm_breaker_state s)
{
    switch (s) {
    case TH_BREAKER_CLOSED:
        return "closed";
    case TH_BREAKER_OPEN:
        return "open";
    case TH_BREAKER_HALF_OPEN:
        return "half-open";
    }
    return "unknown";
}

TH_EXPORT void th_llm_response_free(th_llm_response *r)
{
    if (!r)
        return;
    th__free(r->text);
    r->text = NULL;
    for (size_t i = 0; i < r->ntool_calls; i++) {
        th__free(r->tool_calls[i].id);
        th__free(r->tool_calls[i].name);
        th__free(r->tool_calls[i].arguments);
    }
    th__free(r->tool_calls);
    r->tool_calls = NULL;
    r->ntool_calls = 0;
}

TH_EXPORT void th_llm_free(void *p)
{
    th__free(p);
}

/* ---- defaults and dispatch ---------------------------------------------- */

const char *th__llm_default_base_url(th_llm_format f)
{
    switch (f) {
    case TH_LLM_OPENAI:
        return "https://api.openai.com/v1";
    case TH_LLM_ANTHROPIC:
        return "https://api.anthropic.com";
    case TH_LLM_OLLAMA:
        return "http://127.0.0.1:11434";
    case TH_LLM_MOCK:
        break;
    }
    return "mock://";
}

const char *th__llm_default_model(th_llm_format f)
{
    switch (f) {
    case TH_LLM_OPENAI:
        return "gpt-4o-mini";
    case TH_LLM_ANTHROPIC:
        return "claude-3-5-haiku-latest";
    case TH_LLM_OLLAMA:
        return "llama3.2";
    case TH_LLM_MOCK:
        break;
    }
    return "mock-1";
}

void th__llm_http_free(th__llm_http *h)
{
    if (!h)
        return;
    th__free(h->url);
    if (h->headers) {
        /* Header lines may carry an API key: wipe them. */
        for (char **p = h->headers; *p; p++) {
            sodium_memzero(*p, strlen(*p));
            th__free(*p);
        }
        th__free(h->headers);
    }
    th__free(h->body);
    h->url = NULL;
    h->headers = NULL;
    h->body = NULL;
}

int th__llm_chat_http(const th__llm_wire_req *w, th__llm_http *out, th_error *err)
{
    th_error local;
    if (!err)
        err = &local; /* the format code reads err->code back */
    memset(out, 0, sizeof *out);
    if (!w || !w->req)
        return th__err(err, TH_EINVAL, "request", "missing");
    int rc;
    switch (w->format) {
    case TH_LLM_OPENAI:
        rc = th__openai_chat_http(w, out, err);
        break;
    case TH_LLM_ANTHROPIC:
        rc = th__anthropic_chat_http(w, out, err);
        break;
    case TH_LLM_OLLAMA:
        rc = th__ollama_chat_http(w, out, err);
        break;
    default:
        return th__err(err, TH_EINVAL, "format", "%s has no HTTP requests",
                       th_llm_format_name(w->format));
    }
    if (rc < 0)
        th__llm_http_free(out);
    return rc;
}

int th__llm_parse_chat(th_llm_format f, const char *body, size_t len, th_llm_response *out,
                       th_error *err)
{
    int rc;
    if (len > TH__LLM_BODY_MAX)
        return th__err(err, TH_EUPSTREAM, "", "answer over %zu bytes", TH__LLM_BODY_MAX);
    switch (f) {
    case TH_LLM_OPENAI:
        rc = th__openai_parse_chat(body, len, out, err);
        break;
    case TH_LLM_ANTHROPIC:
        rc = th__anthropic_parse_chat(body, len, out, err);
        break;
    case TH_LLM_OLLAMA:
        rc = th__ollama_parse_chat(body, len, out, err);
        break;
    default:
        return th__err(err, TH_EINVAL, "format", "mock answers are not parsed");
    }
    if (rc == 0)
        rc = th__llm_text_default(out);
    if (rc < 0) {
        th_llm_response_free(out);
        if (rc == TH_ENOMEM)
            th__err(err, TH_ENOMEM, "", "out of memory");
    }
    return rc;
}

/* Copies `s` into buf as printable ASCII, at most `n` bytes of it. */
static void printable(char *buf, size_t cap, const char *s, size_t n)
{
    size_t j = 0;
    for (size_t i = 0; i < n && j + 1 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[j++] = (c >= 0x20 && c < 0x7f) ? (char)c : ' ';
    }
    if (cap)
        buf[j] = '\0';
}

void th__llm_error_message(th_llm_format f, int status, const char *body, size_t len, char *buf,
                           size_t cap)
{
    if (!buf || !cap)
        return;
    buf[0] = '\0';
    json_t *root = body && len ? json_loadb(body, len, 0, NULL) : NULL;
    const char *msg = NULL;
    if (json_is_object(root)) {
        json_t *e = json_object_get(root, "error");
        if (json_is_string(e)) /* ollama */
            msg = json_string_value(e);
        else if (json_is_object(e)) /* openai, anthropic */
            msg = th__llm_jstr(e, "message");
        if (!msg)
            msg = th__llm_jstr(root, "message");
    }
    (void)f;
    if (msg && *msg) {
        printable(buf, cap, msg, strlen(msg));
    } else if (!body || !len) {
        snprintf(buf, cap, "HTTP %d with an empty body", status);
    } else {
        char snip[96];
        printable(snip, sizeof snip, body, len < 80 ? len : 80);
        snprintf(buf, cap, "HTTP %d: %s%s", status, snip, len > 80 ? "..." : "");
    }
    json_decref(root);
}

/* ---- shared helpers ------------------------------------------------------ */

int th__llm_buf_add(th__llm_buf *b, const char *s, size_t n)
{
    if (b->max && n > b->max - b->len)
        return TH_ETOOBIG;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = th__realloc(b->p, cap);
        if (!p)
            return TH_ENOMEM;
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

void th__llm_buf_free(th__llm_buf *b)
{
    th__free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

void th__llm_set_finish(th_llm_response *out, const char *r)
{
    const char *n = r;
    if (!r || !*r)
        return;
    if (!strcmp(r, "end_turn") || !strcmp(r, "stop_sequence") || !strcmp(r, "stop"))
        n = "stop";
    else if (!strcmp(r, "max_tokens") || !strcmp(r, "length"))
        n = "length";
    else if (!strcmp(r, "tool_use") || !strcmp(r, "tool_calls") || !strcmp(r, "function_call"))
        n = "tool_calls";
    snprintf(out->finish_reason, sizeof out->finish_reason, "%s", n);
}

char *th__llm_json_take(char *jtext)
{
    if (!jtext)
        return NULL;
    char *c = th__strdup(jtext);
    free(jtext);
    return c;
}

char *th__llm_dump(const json_t *root)
{
    return th__llm_json_take(json_dumps(root, JSON_COMPACT | JSON_ENCODE_ANY));
}

json_t *th__llm_parse_object(const char *text)
{
    if (!text)
        return NULL;
    json_t *j = json_loads(text, 0, NULL);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

const char *th__llm_jstr(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

int th__llm_header(th__llm_http *h, const char *name, const char *value)
{
    size_t n = 0;
    while (h->headers && h->headers[n])
        n++;
    char **v = th__realloc(h->headers, (n + 2) * sizeof *v);
    if (!v)
        return TH_ENOMEM;
    h->headers = v;
    v[n] = NULL;
    size_t len = strlen(name) + strlen(value) + 3;
    char *line = th__malloc(len);
    if (!line)
        return TH_ENOMEM;
    snprintf(line, len, "%s: %s", name, value);
    v[n] = line;
    v[n + 1] = NULL;
    return 0;
}

int th__llm_url(th__llm_http *h, const char *base, const char *path)
{
    size_t len = strlen(base) + strlen(path) + 1;
    th__free(h->url);
    h->url = th__malloc(len);
    if (!h->url)
        return TH_ENOMEM;
    snprintf(h->url, len, "%s%s", base, path);
    return 0;
}

int th__llm_body(th__llm_http *h, json_t *root, th_error *err)
{
    if (!root)
        return th__err(err, TH_ENOMEM, "", "out of memory");
    h->body = th__llm_dump(root);
    json_decref(root);
    return h->body ? 0 : th__err(err, TH_ENOMEM, "", "out of memory");
}

int th__llm_add_call(th_llm_response *out, const char *id, const char *name, const char *args)
{
    th_llm_tool_call *v =
        th__realloc(out->tool_calls, (out->ntool_calls + 1) * sizeof *out->tool_calls);
    if (!v)
        return TH_ENOMEM;
    out->tool_calls = v;
    th_llm_tool_call *c = &v[out->ntool_calls];
    c->id = th__strdup(id ? id : "");
    c->name = th__strdup(name ? name : "");
    c->arguments = th__strdup(args && *args ? args : "{}");
    out->ntool_calls++;
    if (!c->id || !c->name || !c->arguments)
        return TH_ENOMEM; /* freed with the response */
    return 0;
}

int th__llm_text_default(th_llm_response *out)
{
    if (!out->text && !(out->text = th__strdup("")))
        return TH_ENOMEM;
    return 0;
}

/* ---- embeddings and health ---------------------------------------------- */

int th__llm_bearer(th__llm_http *h, const char *key)
{
    if (!key || !*key)
        return 0;
    size_t len = strlen(key) + 8;
    char *v = th__malloc(len);
    if (!v)
        return TH_ENOMEM;
    snprintf(v, len, "Bearer %s", key);
    int rc = th__llm_header(h, "Authorization", v);
    th__free(v);
    return rc;
}

int th__llm_embed_http(const th__llm_wire_req *w, const char *const *texts, size_t n,
                       th__llm_http *out, th_error *err)
{
    memset(out, 0, sizeof *out);
    if (w->format != TH_LLM_OPENAI && w->format != TH_LLM_OLLAMA)
        return th__err(err, TH_EINVAL, "format", "%s has no embeddings API",
                       th_llm_format_name(w->format));
    if (!n)
        return th__err(err, TH_EINVAL, "texts", "must not be empty");
    json_t *root = json_object(), *in = json_array();
    int rc = TH_ENOMEM;
    if (!root || !in)
        goto fail;
    for (size_t i = 0; i < n; i++)
        if (json_array_append_new(in, json_string(texts[i] ? texts[i] : "")))
            goto fail;
    if (json_object_set_new(root, "model", json_string(w->model ? w->model : "")) ||
        json_object_set(root, "input", in))
        goto fail;
    const char *path = w->format == TH_LLM_OPENAI ? "/embeddings" : "/api/embed";
    if (th__llm_url(out, w->base_url, path) ||
        th__llm_header(out, "Content-Type", "application/json") || th__llm_bearer(out, w->api_key))
        goto fail;
    json_decref(in);
    rc = th__llm_body(out, root, err);
    if (rc < 0)
        th__llm_http_free(out);
    return rc;
fail:
    json_decref(in);
    json_decref(root);
    th__llm_http_free(out);
    return th__err(err, rc, "", "out of memory");
}

/* Reads one vector into v[dim]; 0 or -1 when the shape is wrong. */
static int read_vector(const json_t *a, float *v, size_t dim)
{
    if (!json_is_array(a) || json_array_size(a) != dim)
        return -1;
    for (size_t i = 0; i < dim; i++) {
        json_t *x = json_array_get(a, i);
        if (!json_is_number(x))
            return -1;
        v[i] = (float)json_number_value(x);
    }
    return 0;
}

int th__llm_parse_embed(th_llm_format f, const char *body, size_t len, size_t n, float **vectors,
                        int *dim, th_llm_usage *usage, th_error *err)
{
    *vectors = NULL;
    *dim = 0;
    json_t *root = json_loadb(body, len, 0, NULL);
    float *v = NULL;
    const char *why = "malformed JSON";
    if (!json_is_object(root))
        goto fail;
    json_t *list = json_object_get(root, f == TH_LLM_OPENAI ? "data" : "embeddings");
    why = "wrong number of vectors";
    if (!json_is_array(list) || json_array_size(list) != n || n == 0)
        goto fail;
    json_t *first = json_array_get(list, 0);
    if (f == TH_LLM_OPENAI)
        first = json_object_get(first, "embedding");
    size_t d = json_array_size(first);
    why = "bad dimensions";
    if (d == 0 || d > 65536)
        goto fail;
    if (!(v = th__malloc(n * d * sizeof *v))) {
        json_decref(root);
        return th__err(err, TH_ENOMEM, "", "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(list, i);
        size_t at = i;
        if (f == TH_LLM_OPENAI) {
            json_t *idx = json_object_get(e, "index");
            if (json_is_integer(idx))
                at = (size_t)json_integer_value(idx);
            e = json_object_get(e, "embedding");
        }
        if (at >= n || read_vector(e, v + at * d, d) < 0)
            goto fail;
    }
    if (usage) {
        json_t *u = json_object_get(root, "usage");
        usage->output_tokens = 0;
        if (f == TH_LLM_OPENAI)
            usage->input_tokens = json_integer_value(json_object_get(u, "prompt_tokens"));
        else
            usage->input_tokens = json_integer_value(json_object_get(root, "prompt_eval_count"));
    }
    json_decref(root);
    *vectors = v;
    *dim = (int)d;
    return 0;
fail:
    th__free(v);
    json_decref(root);
    return th__err(err, TH_EUPSTREAM, "", "embedding answer: %s", why);
}

int th__llm_health_http(th_llm_format f, const char *base_url, const char *api_key,
                        const char *anthropic_version, th__llm_http *out)
{
    memset(out, 0, sizeof *out);
    int rc;
    switch (f) {
    case TH_LLM_OPENAI:
        rc = th__llm_url(out, base_url, "/models");
        if (!rc)
            rc = th__llm_bearer(out, api_key);
        break;
    case TH_LLM_ANTHROPIC:
        rc = th__llm_url(out, base_url, "/v1/models");
        if (!rc && api_key)
            rc = th__llm_header(out, "x-api-key", api_key);
        if (!rc)
            rc = th__llm_header(out, "anthropic-version",
                                anthropic_version ? anthropic_version : "2023-06-01");
        break;
    case TH_LLM_OLLAMA:
        rc = th__llm_url(out, base_url, "/api/tags");
        break;
    default:
        return TH_EINVAL;
    }
    if (rc < 0)
        th__llm_http_free(out);
    return rc;
}

/* ---- rate-limit headers ------------------------------------------------- */

void th__llm_limits_init(th__llm_limits *l)
{
    l->retry_after_ms = -1;
    l->requests_remaining = -1;
    l->tokens_remaining = -1;
    l->requests_reset_ms = -1;
    l->tokens_reset_ms = -1;
}

/* "1h2m3.5s", "20ms", "6m0s", "1.5" (seconds): milliseconds, or -1. */
static int64_t parse_duration(const char *s)
{
    double total = 0;
    int any = 0;
    while (*s) {
        char *end;
        double x = strtod(s, &end);
        if (end == s || x < 0)
            return -1;
        s = end;
        if (!strncmp(s, "ms", 2)) {
            total += x;
            s += 2;
        } else if (!strncmp(s, "us", 2)) {
            total += x / 1000;
            s += 2;
        } else if (!strncmp(s, "ns", 2)) {
            total += x / 1e6;
            s += 2;
        } else if (*s == 'h') {
            total += x * 3600000;
            s++;
        } else if (*s == 'm') {
            total += x * 60000;
            s++;
        } else if (*s == 's' || *s == '\0') {
            total += x * 1000;
            if (*s)
                s++;
        } else {
            return -1;
        }
        any = 1;
    }
    if (total > (double)TH__LLM_WAIT_MAX_MS)
        total = (double)TH__LLM_WAIT_MAX_MS;
    return any ? (int64_t)(total + 0.5) : -1;
}

/* "2024-05-01T12:00:30Z" or with a fraction and a "+hh:mm" offset: ms
 * since the epoch, or -1. */
static int64_t parse_rfc3339(const char *s)
{
    int y, mo, d, h, mi, sec, n = 0;
    if (sscanf(s, "%4d-%2d-%2d%*1[Tt ]%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &n) != 6 || !n)
        return -1;
    s += n;
    double frac = 0;
    if (*s == '.') {
        char *end;
        frac = strtod(s, &end);
        s = end;
    }
    int off = 0;
    if (*s == '+' || *s == '-') {
        int oh, om;
        if (sscanf(s + 1, "%2d:%2d", &oh, &om) != 2)
            return -1;
        off = (oh * 60 + om) * (*s == '+' ? 1 : -1);
    } else if (*s != 'Z' && *s != 'z') {
        return -1;
    }
    struct tm tm = {0};
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    time_t t = timegm(&tm);
    if (t == (time_t)-1)
        return -1;
    return ((int64_t)t - off * 60) * 1000 + (int64_t)(frac * 1000);
}

static int64_t parse_count(const char *s)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    return (end == s || v < 0) ? -1 : (int64_t)v;
}

static int64_t until(int64_t at_ms, int64_t now_ms)
{
    if (at_ms < 0)
        return -1;
    if (at_ms <= now_ms)
        return 0;
    return at_ms - now_ms > TH__LLM_WAIT_MAX_MS ? TH__LLM_WAIT_MAX_MS : at_ms - now_ms;
}

void th__llm_limits_header(th__llm_limits *l, const char *line, size_t len, int64_t now_ms)
{
    const char *colon = memchr(line, ':', len);
    if (!colon || colon == line)
        return;
    size_t nlen = (size_t)(colon - line);
    char name[64], value[128];
    if (nlen >= sizeof name)
        return;
    for (size_t i = 0; i < nlen; i++)
        name[i] = (char)tolower((unsigned char)line[i]);
    name[nlen] = '\0';
    const char *v = colon + 1, *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
        end--;
    size_t vlen = (size_t)(end - v);
    if (vlen == 0 || vlen >= sizeof value)
        return;
    memcpy(value, v, vlen);
    value[vlen] = '\0';

    if (!strcmp(name, "retry-after-ms")) {
        char *e;
        double ms = strtod(value, &e);
        if (e != value && ms >= 0)
            l->retry_after_ms =
                ms > (double)TH__LLM_WAIT_MAX_MS ? TH__LLM_WAIT_MAX_MS : (int64_t)ms;
    } else if (!strcmp(name, "retry-after")) {
        char *e;
        double sec = strtod(value, &e);
        if (e != value && *e == '\0' && sec >= 0) {
            l->retry_after_ms = sec * 1000 > (double)TH__LLM_WAIT_MAX_MS ? TH__LLM_WAIT_MAX_MS
                                                                         : (int64_t)(sec * 1000);
        } else {
            time_t t = curl_getdate(value, NULL);
            if (t != (time_t)-1)
                l->retry_after_ms = until((int64_t)t * 1000, now_ms);
        }
    } else if (!strcmp(name, "x-ratelimit-remaining-requests") ||
               !strcmp(name, "anthropic-ratelimit-requests-remaining")) {
        l->requests_remaining = parse_count(value);
    } else if (!strcmp(name, "x-ratelimit-remaining-tokens") ||
               !strcmp(name, "anthropic-ratelimit-tokens-remaining")) {
        l->tokens_remaining = parse_count(value);
    } else if (!strcmp(name, "x-ratelimit-reset-requests")) {
        l->requests_reset_ms = parse_duration(value);
    } else if (!strcmp(name, "x-ratelimit-reset-tokens")) {
        l->tokens_reset_ms = parse_duration(value);
    } else if (!strcmp(name, "anthropic-ratelimit-requests-reset")) {
        l->requests_reset_ms = until(parse_rfc3339(value), now_ms);
    } else if (!strcmp(name, "anthropic-ratelimit-tokens-reset")) {
        l->tokens_reset_ms = until(parse_rfc3339(value), now_ms);
    }
}

/* ---- estimates ----------------------------------------------------------- */

static size_t slen(const char *s)
{
    return s ? strlen(s) : 0;
}

int64_t th__llm_estimate_tokens(const th_llm_request *req)
{
    if (!req)
        return 0;
    size_t bytes = slen(req->system);
    for (size_t i = 0; i < req->nmessages; i++) {
        const th_llm_message *m = &req->messages[i];
        bytes += slen(m->content) + slen(m->tool_call_id) + slen(m->tool_name);
        for (size_t j = 0; j < m->ntool_calls; j++)
            bytes += slen(m->tool_calls[j].name) + slen(m->tool_calls[j].arguments) +
                     slen(m->tool_calls[j].id);
    }
    for (size_t i = 0; i < req->ntools; i++)
        bytes += slen(req->tools[i].name) + slen(req->tools[i].description) +
                 slen(req->tools[i].parameters);
    int64_t max = req->max_tokens > 0 ? req->max_tokens : 1024;
    return (int64_t)((bytes + 3) / 4) + max;
}
