/*
 * HTTP transfers of the LLM gateway: one curl easy handle per attempt,
 * added to the gateway's multi handle. The write callback feeds a 2xx
 * stream to its parser as bytes arrive (deltas go to the waiting caller) and
 * keeps any other body, bounded, for the error message; the header callback
 * reads the rate-limit headers. All of it runs on the gateway thread.
 *
 * Sockets are watched with epoll through curl's socket interface
 * (CURLMOPT_SOCKETFUNCTION / TIMERFUNCTION, curl_multi_socket_action), so
 * each wake-up costs work only for the sockets that are ready: with
 * curl_multi_perform every call walks every transfer, which made 10,000
 * concurrent streams quadratic.
 */
#include "llm/gateway.h"

#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

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
    if (!len)
        return;
    if (!c->first_ns)
        c->first_ns = th__mono_ns();
    /* From now on a retry or a fallback would repeat text the caller has
     * seen; a call nobody reads deltas of may still be retried. */
    c->streamed |= c->want_deltas;
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
    /* Streams arrive in small chunks: a 4 KiB receive buffer instead of
     * 16 KiB saves 12 KiB per request in flight (120 MB at 10,000). */
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 4096L);
    /* Looking for a connection to reuse, and keeping an idle one, walk
     * every connection curl holds; with hundreds in flight (HTTP/1.1: one
     * each) that made 10,000 concurrent streams quadratic. Past this many a
     * transfer opens its own connection and closes it after; below it
     * connections are reused. */
    if (p->in_flight > TH__LLM_REUSE_MAX) {
        curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
        curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    }
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_USERAGENT, "taskhive/" TH_VERSION_STRING);
    c->easy = e;
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

/* ---- the event loop's I/O --------------------------------------------------- */

static int64_t mono_ms(void)
{
    return th__mono_ns() / 1000000;
}

/* curl says which events a socket needs, or that it is done with it. */
static int on_socket(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    th_llm_gateway *gw = userp;
    (void)e;
    if (what == CURL_POLL_REMOVE) {
        epoll_ctl(gw->epfd, EPOLL_CTL_DEL, s, NULL);
        return 0;
    }
    struct epoll_event ev = {.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0u) |
                                       ((what & CURL_POLL_OUT) ? EPOLLOUT : 0u),
                             .data.fd = s};
    int op = socketp ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(gw->epfd, op, s, &ev) != 0) {
        /* A descriptor number curl reused, or one we never saw. */
        op = op == EPOLL_CTL_ADD ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
        epoll_ctl(gw->epfd, op, s, &ev);
    }
    if (!socketp)
        curl_multi_assign(gw->multi, s, gw);
    return 0;
}

static int on_timer(CURLM *m, long timeout_ms, void *userp)
{
    th_llm_gateway *gw = userp;
    (void)m;
    gw->curl_due = timeout_ms < 0 ? -1 : mono_ms() + timeout_ms;
    return 0;
}

int th__llm_io_init(th_llm_gateway *gw)
{
    gw->curl_due = -1;
    gw->epfd = epoll_create1(EPOLL_CLOEXEC);
    gw->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = gw->wakefd};
    if (gw->epfd < 0 || gw->wakefd < 0 || epoll_ctl(gw->epfd, EPOLL_CTL_ADD, gw->wakefd, &ev)) {
        th__llm_io_close(gw);
        return TH_EIO;
    }
    curl_multi_setopt(gw->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(gw->multi, CURLMOPT_SOCKETDATA, gw);
    curl_multi_setopt(gw->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(gw->multi, CURLMOPT_TIMERDATA, gw);
    return 0;
}

void th__llm_io_close(th_llm_gateway *gw)
{
    if (gw->epfd >= 0)
        close(gw->epfd);
    if (gw->wakefd >= 0)
        close(gw->wakefd);
    gw->epfd = gw->wakefd = -1;
}

void th__llm_io_wake(th_llm_gateway *gw)
{
    uint64_t one = 1;
    ssize_t n = write(gw->wakefd, &one, sizeof one);
    (void)n; /* a full counter already means "wake up" */
}

void th__llm_io_run(th_llm_gateway *gw, long wait_ms)
{
    int64_t now = mono_ms();
    if (gw->curl_due >= 0) {
        long until = gw->curl_due <= now ? 0 : (long)(gw->curl_due - now);
        if (until < wait_ms)
            wait_ms = until;
    }
    struct epoll_event evs[256];
    int n = epoll_wait(gw->epfd, evs, 256, (int)wait_ms);
    int running;
    for (int i = 0; i < n; i++) {
        int fd = evs[i].data.fd;
        if (fd == gw->wakefd) {
            uint64_t v;
            ssize_t r = read(gw->wakefd, &v, sizeof v);
            (void)r;
            continue;
        }
        int flags = ((evs[i].events & EPOLLIN) ? CURL_CSELECT_IN : 0) |
                    ((evs[i].events & EPOLLOUT) ? CURL_CSELECT_OUT : 0) |
                    ((evs[i].events & (EPOLLERR | EPOLLHUP)) ? CURL_CSELECT_ERR : 0);
        curl_multi_socket_action(gw->multi, fd, flags, &running);
    }
    if (gw->curl_due >= 0 && mono_ms() >= gw->curl_due) {
        gw->curl_due = -1;
        curl_multi_socket_action(gw->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    }
}
