/*
 * The http handler: one HTTP(S) request with libcurl's easy interface.
 * Redirects are not followed (a 3xx is a result like a 2xx); the response
 * body is kept up to 1 MiB, after which the transfer stops and the result
 * says "truncated". The transfer polls th_ctx_cancelled from curl's progress
 * callback and never runs past the task's remaining time.
 */
#include "handlers/handlers.h"

#include <curl/curl.h>
#include <pthread.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "taskhive/common.h"

#define BODY_MAX ((size_t)1 << 20)
#define TIMEOUT_DEFAULT_MS 30000
#define TIMEOUT_MAX_MS 600000

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;

static void curl_init_once(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

enum { M_GET, M_POST, M_PUT, M_PATCH, M_DELETE, M_HEAD };
static const char *const method_names[] = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", NULL};

typedef struct response {
    th_ctx *ctx;
    char *buf; /* th__free */
    size_t len, cap;
    int truncated;
    int nomem;
} response;

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    response *b = ud;
    size_t n = size * nmemb;
    size_t take = n < BODY_MAX - b->len ? n : BODY_MAX - b->len;
    if (b->len + take > b->cap) {
        size_t cap = b->cap ? b->cap : 16384;
        while (cap < b->len + take)
            cap *= 2;
        if (cap > BODY_MAX)
            cap = BODY_MAX;
        char *nb = th__realloc(b->buf, cap);
        if (!nb) {
            b->nomem = 1;
            return 0;
        }
        b->buf = nb;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, ptr, take);
    b->len += take;
    if (take < n)
        b->truncated = 1; /* stops the transfer: the rest is not wanted */
    return take;
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    return th_ctx_cancelled(((response *)ud)->ctx) ? 1 : 0;
}

/* RFC 9110 token characters. */
static int header_name_ok(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("!#$%&'*+-.^_`|~", c)))
            return 0;
    }
    return 1;
}

/* Builds the request header list from "headers"; adds "Expect:" (no
 * 100-continue round trip) unless the payload sets Expect itself. */
static int build_headers(th_ctx *ctx, json_t *headers, struct curl_slist **out)
{
    struct curl_slist *list = NULL;
    int has_expect = 0;
    *out = NULL;
    if (headers && !json_is_object(headers))
        return th__hfail(ctx, "payload.headers: must be an object of strings");
    const char *key;
    json_t *v;
    json_object_foreach(headers, key, v)
    {
        if (!header_name_ok(key)) {
            curl_slist_free_all(list);
            return th__hfail(ctx, "payload.headers.%s: not a valid header name", key);
        }
        const char *val = json_is_string(v) ? json_string_value(v) : NULL;
        if (!val || strlen(val) != json_string_length(v) || strpbrk(val, "\r\n")) {
            curl_slist_free_all(list);
            return th__hfail(ctx, "payload.headers.%s: must be a string without CR, LF or NUL",
                             key);
        }
        if (strcasecmp(key, "Expect") == 0)
            has_expect = 1;
        size_t len = strlen(key) + strlen(val) + 3;
        char *line = th__malloc(len);
        if (!line) {
            curl_slist_free_all(list);
            return th__hnomem(ctx);
        }
        /* "Name;" is curl's way of sending a header with an empty value. */
        if (*val)
            snprintf(line, len, "%s: %s", key, val);
        else
            snprintf(line, len, "%s;", key);
        struct curl_slist *nl = curl_slist_append(list, line);
        th__free(line);
        if (!nl) {
            curl_slist_free_all(list);
            return th__hnomem(ctx);
        }
        list = nl;
    }
    if (!has_expect) {
        struct curl_slist *nl = curl_slist_append(list, "Expect:");
        if (!nl) {
            curl_slist_free_all(list);
            return th__hnomem(ctx);
        }
        list = nl;
    }
    *out = list;
    return 0;
}

static int check_url(th_ctx *ctx, const char *url)
{
    CURLU *u = curl_url();
    if (!u)
        return th__hnomem(ctx);
    char *scheme = NULL;
    int rc = 0;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK)
        rc = th__hfail(ctx, "payload.url: not a valid absolute URL");
    else if (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0)
        rc = th__hfail(ctx, "payload.url: must be an http or https URL");
    curl_free(scheme);
    curl_url_cleanup(u);
    return rc;
}

/* Maps the outcome to a handler code: 2xx/3xx complete, 408/429/5xx retry,
 * other 4xx fail for good. */
static int status_rc(th_ctx *ctx, long status)
{
    if (status >= 200 && status < 400)
        return TH_HANDLER_OK;
    if (status == 408 || status == 429 || (status >= 500 && status < 600))
        return th__hretry(ctx, "HTTP status %ld", status);
    if (status >= 400 && status < 500)
        return th__hfail(ctx, "HTTP status %ld", status);
    return th__hretry(ctx, "unexpected HTTP status %ld", status);
}

/*
 * Payload {"url": http(s) URL, "method": GET|POST|PUT|PATCH|DELETE|HEAD
 * (default GET), "headers": {K: V}, "body": text (not with GET or HEAD),
 * "timeout_ms": 1..600000 (default 30000)}. Result {"status", "body" (text,
 * at most 1 MiB; invalid UTF-8 replaced), "content_type" (or null), and
 * "truncated": true when the body was cut}. Connection errors and timeouts
 * retry with curl's message.
 */
int th_handler_http(th_ctx *ctx, void *ud)
{
    (void)ud;
    static const char *const allowed[] = {"url", "method", "headers", "body", "timeout_ms", NULL};
    json_t *p = NULL;
    struct curl_slist *headers = NULL;
    CURL *h = NULL;
    response resp = {.ctx = ctx};
    char errbuf[CURL_ERROR_SIZE];
    const char *url = NULL, *body = NULL;
    size_t body_len = 0;
    int method = M_GET;
    int64_t timeout_ms = TIMEOUT_DEFAULT_MS;

    int rc = th__payload_parse(ctx, allowed, &p);
    if (rc)
        return rc;
    if ((rc = th__payload_string(ctx, p, "url", 1, &url, NULL)) != 0 ||
        (rc = th__payload_enum(ctx, p, "method", method_names, &method)) != 0 ||
        (rc = th__payload_string(ctx, p, "body", 0, &body, &body_len)) != 0 ||
        (rc = th__payload_int(ctx, p, "timeout_ms", 1, TIMEOUT_MAX_MS, 0, &timeout_ms)) != 0)
        goto done;
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_rc != CURLE_OK) {
        rc = th__hretry(ctx, "curl_global_init: %s", curl_easy_strerror(curl_init_rc));
        goto done;
    }
    if ((rc = check_url(ctx, url)) != 0)
        goto done;
    if (body && (method == M_GET || method == M_HEAD)) {
        rc = th__hfail(ctx, "payload.body: not allowed with %s", method_names[method]);
        goto done;
    }
    if ((rc = build_headers(ctx, json_object_get(p, "headers"), &headers)) != 0)
        goto done;
    int64_t left = th_ctx_remaining_ms(ctx);
    if (left <= 0 || th_ctx_cancelled(ctx)) {
        rc = th__hcancelled(ctx);
        goto done;
    }
    if (left < timeout_ms)
        timeout_ms = left;
    if (!(h = curl_easy_init())) {
        rc = th__hnomem(ctx);
        goto done;
    }
    errbuf[0] = '\0';
    CURLcode set = CURLE_OK;
#define SETOPT(opt, val)                                                                           \
    do {                                                                                           \
        if (set == CURLE_OK)                                                                       \
            set = curl_easy_setopt(h, opt, val);                                                   \
    } while (0)
    SETOPT(CURLOPT_URL, url);
#if LIBCURL_VERSION_NUM >= 0x075500
    SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
#else
    SETOPT(CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    SETOPT(CURLOPT_NOSIGNAL, 1L);
    SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
    SETOPT(CURLOPT_ERRORBUFFER, errbuf);
    SETOPT(CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    SETOPT(CURLOPT_CONNECTTIMEOUT_MS, (long)timeout_ms);
    SETOPT(CURLOPT_USERAGENT, "taskhive/" TH_VERSION_STRING);
    SETOPT(CURLOPT_HTTPHEADER, headers);
    SETOPT(CURLOPT_WRITEFUNCTION, on_body);
    SETOPT(CURLOPT_WRITEDATA, &resp);
    SETOPT(CURLOPT_XFERINFOFUNCTION, on_progress);
    SETOPT(CURLOPT_XFERINFODATA, &resp);
    SETOPT(CURLOPT_NOPROGRESS, 0L);
    switch (method) {
    case M_HEAD:
        SETOPT(CURLOPT_NOBODY, 1L);
        break;
    case M_POST:
        SETOPT(CURLOPT_POST, 1L);
        break;
    case M_GET:
        break;
    default:
        SETOPT(CURLOPT_CUSTOMREQUEST, method_names[method]);
        break;
    }
    /* POST, PUT and PATCH always carry a body (maybe empty, Content-Length:
     * 0); DELETE only when one is given. */
    if (body || method == M_POST || method == M_PUT || method == M_PATCH) {
        SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
        SETOPT(CURLOPT_POSTFIELDS, body ? body : "");
    }
#undef SETOPT
    if (set != CURLE_OK) {
        rc = th__hretry(ctx, "curl_easy_setopt: %s", curl_easy_strerror(set));
        goto done;
    }

    CURLcode res = curl_easy_perform(h);
    if (res == CURLE_WRITE_ERROR && resp.truncated && !resp.nomem)
        res = CURLE_OK; /* we stopped it at BODY_MAX */
    if (res != CURLE_OK) {
        if (res == CURLE_ABORTED_BY_CALLBACK || th_ctx_cancelled(ctx))
            rc = th__hcancelled(ctx);
        else if (resp.nomem || res == CURLE_OUT_OF_MEMORY)
            rc = th__hnomem(ctx);
        else
            rc = th__hretry(ctx, "curl: %s", errbuf[0] ? errbuf : curl_easy_strerror(res));
        goto done;
    }
    long status = 0;
    char *ctype = NULL;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(h, CURLINFO_CONTENT_TYPE, &ctype);
    json_t *jbody = th__json_text((const unsigned char *)(resp.buf ? resp.buf : ""), resp.len);
    json_t *jtype =
        ctype ? th__json_text((const unsigned char *)ctype, strlen(ctype)) : json_null();
    json_t *result = json_pack("{s:I, s:o, s:o}", "status", (json_int_t)status, "body", jbody,
                               "content_type", jtype);
    if (result && resp.truncated && json_object_set_new(result, "truncated", json_true()) != 0) {
        json_decref(result);
        result = NULL;
    }
    rc = th__hresult(ctx, result, status_rc(ctx, status));
done:
    if (h)
        curl_easy_cleanup(h);
    curl_slist_free_all(headers);
    th__free(resp.buf);
    json_decref(p);
    return rc;
}
