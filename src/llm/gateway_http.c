/*
 * HTTP transfers of the LLM gateway: one curl easy handle per attempt,
 * added to the gateway's multi handle. The write callback feeds a 2xx
 * stream to its parser as bytes arrive (deltas go to the waiting caller) and
 * keeps any other body, bounded, for the error message; the header callback
 * reads the rate-limit headers. All of it runs on the gateway thread.
 */
#include "llm/gateway.h"

#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"

static size_t on_header(char *buf, size_t size, size_t n, void *ud)
{
    struct th_llm_call *c = ud;
    size_t len = size * n;
    /* A new status line (after a 100 Continue, say) starts a new response. */
    if (len > 5 && memcmp(buf, "HTTP/", 5) == 0)
        th__llm_limits_init(&c->limits);
    else
        th__llm_limits_header(&c->limits, buf, len, th__wall_ms());
    return len;
}

static void on_stream_delta(const char *text, size_t len, void *ud)
{
    struct th_llm_call *c = ud;
    c->streamed = 1;
    th__llm_call_push_delta(c, text, len);
}

static size_t on_write(char *data, size_t size, size_t n, void *ud)
{
    struct th_llm_call *c = ud;
    size_t len = size * n;
    if (!c->status)
        curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &c->status);
    if (c->stream && c->status >= 200 && c->status < 300) {
        int rc = th__llm_stream_feed(c->stream, data, len, &c->feed_err);
        if (rc < 0) {
            c->feed_rc = rc;
            return 0; /* aborts the transfer */
        }
        return len;
    }
    if (th__llm_buf_add(&c->body, data, len) < 0) {
        c->write_failed = 1;
        return 0;
    }
    return len;
}

/* Forgets what the previous attempt left behind. */
static void reset_attempt(struct th_llm_call *c)
{
    th__llm_http_free(&c->http);
    if (c->hdrs)
        curl_slist_free_all(c->hdrs);
    c->hdrs = NULL;
    th__llm_stream_free(c->stream);
    c->stream = NULL;
    th_llm_response_free(&c->resp);
    memset(&c->resp, 0, sizeof c->resp);
    th__free(c->vectors);
    c->vectors = NULL;
    c->body.len = 0;
    c->body.max = TH__LLM_BODY_MAX;
    c->status = 0;
    c->write_failed = 0;
    c->feed_rc = 0;
    th__err_clear(&c->feed_err);
    c->curl_err[0] = '\0';
    th__llm_limits_init(&c->limits);
}

int th__llm_transfer_start(th_llm_gateway *gw, struct th_llm_call *c, th_error *err)
{
    th__llm_provider *p = c->p;
    reset_attempt(c);
    th__llm_wire_req w = {.format = p->o.format,
                          .base_url = p->base_url,
                          .api_key = p->api_key,
                          .anthropic_version = p->anthropic_version,
                          .model = c->model,
                          .req = &c->req};
    int rc;
    if (c->kind == TH__LLM_CHAT)
        rc = th__llm_chat_http(&w, &c->http, err);
    else if (c->kind == TH__LLM_EMBED)
        rc = th__llm_embed_http(&w, (const char *const *)c->texts, c->ntexts, &c->http, err);
    else if ((rc = th__llm_health_http(p->o.format, p->base_url, p->api_key, p->anthropic_version,
                                       &c->http)) < 0)
        th__err(err, rc, "", "cannot build the health check");
    if (rc < 0)
        return rc;
    if (c->kind == TH__LLM_CHAT && c->req.stream &&
        !(c->stream = th__llm_stream_new(p->o.format, &c->resp, on_stream_delta, c)))
        goto nomem;
    for (char **h = c->http.headers; h && *h; h++) {
        struct curl_slist *n = curl_slist_append(c->hdrs, *h);
        if (!n)
            goto nomem;
        c->hdrs = n;
    }
    /* No "Expect: 100-continue" round trip before large bodies. */
    struct curl_slist *n = curl_slist_append(c->hdrs, "Expect:");
    if (!n)
        goto nomem;
    c->hdrs = n;

    CURL *e = curl_easy_init();
    if (!e)
        goto nomem;
    curl_easy_setopt(e, CURLOPT_URL, c->http.url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->hdrs);
    if (c->http.body) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, c->http.body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(c->http.body));
    } else {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    }
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(e, CURLOPT_PRIVATE, c);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->curl_err);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)p->o.timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)p->o.connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_USERAGENT, "taskhive/" TH_VERSION_STRING);
    c->easy = e;
    gw->kicked = 1;
    if (curl_multi_add_handle(gw->multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        c->easy = NULL;
        return th__err(err, TH_ENOMEM, "", "cannot add the transfer");
    }
    return 0;
nomem:
    th__llm_stream_free(c->stream);
    c->stream = NULL;
    return th__err(err, TH_ENOMEM, "", "out of memory");
}

void th__llm_transfer_stop(th_llm_gateway *gw, struct th_llm_call *c)
{
    if (!c->easy)
        return;
    curl_multi_remove_handle(gw->multi, c->easy);
    curl_easy_cleanup(c->easy);
    c->easy = NULL;
}

/* Whether a curl failure is the connection's (retriable) rather than ours. */
static int connection_error(CURLcode cc)
{
    switch (cc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        return 1;
    default:
        return 0;
    }
}

int th__llm_transfer_outcome(struct th_llm_call *c, CURLcode cc, int *retriable, int *breaker,
                             th_error *err)
{
    const char *pname = c->p->name;
    th_llm_format f = c->p->o.format;
    *retriable = 0;
    *breaker = 0;
    if (c->feed_rc < 0) {
        /* The stream was malformed or carried an error event. */
        *breaker = 1;
        th__err(err, c->feed_rc == TH_ENOMEM ? TH_ENOMEM : TH_EUPSTREAM, "",
                "provider %s: bad stream: %s", pname, c->feed_err.message);
        return err ? err->code : TH_EUPSTREAM;
    }
    if (c->write_failed)
        return th__err(err, TH_EUPSTREAM, "", "provider %s: answer over %zu bytes", pname,
                       (size_t)TH__LLM_BODY_MAX);
    if (cc == CURLE_OPERATION_TIMEDOUT) {
        *retriable = *breaker = 1;
        return th__err(err, TH_ETIMEDOUT, "", "provider %s: no answer within %lld ms", pname,
                       (long long)c->p->o.timeout_ms);
    }
    if (cc != CURLE_OK) {
        *retriable = *breaker = connection_error(cc);
        return th__err(err, TH_EUPSTREAM, "", "provider %s: %s", pname,
                       c->curl_err[0] ? c->curl_err : curl_easy_strerror(cc));
    }
    curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &c->status);
    if (c->status < 200 || c->status >= 300) {
        char msg[256];
        th__llm_error_message(f, (int)c->status, c->body.p ? c->body.p : "", c->body.len, msg,
                              sizeof msg);
        long s = c->status;
        *retriable = s == 408 || s == 409 || s == 429 || s >= 500;
        *breaker = s == 408 || s >= 500;
        return th__err(err, TH_EUPSTREAM, "", "provider %s: HTTP %ld: %s", pname, s, msg);
    }
    int rc = 0;
    const char *body = c->body.p ? c->body.p : "";
    if (c->kind == TH__LLM_HEALTH)
        return 0;
    if (c->kind == TH__LLM_EMBED)
        rc = th__llm_parse_embed(f, body, c->body.len, c->ntexts, &c->vectors, &c->dim,
                                 &c->embed_usage, err);
    else if (c->stream)
        rc = th__llm_stream_end(c->stream, err);
    else
        rc = th__llm_parse_chat(f, body, c->body.len, &c->resp, err);
    if (rc < 0) {
        /* A stream that ended early may be tried again if nothing reached
         * the caller yet; a malformed answer would only come back again. */
        *breaker = 1;
        *retriable = c->stream != NULL;
        char m[sizeof err->message];
        snprintf(m, sizeof m, "%s", err ? err->message : "");
        return th__err(err, rc == TH_ENOMEM ? TH_ENOMEM : TH_EUPSTREAM, "", "provider %s: %s",
                       pname, m);
    }
    return 0;
}
