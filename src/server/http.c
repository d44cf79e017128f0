/*
 * HTTP plumbing for the daemon: replies, error mapping, body and query
 * parsing, bearer-token auth and the router. Everything here runs on the
 * loop thread.
 */
#include "server/http.h"

#include <event2/buffer.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/queue.h>

#include "server/log.h"

void th__reply_json(th__req *q, int status, json_t *body)
{
    if (!q->r) { /* the client left while its job ran */
        json_decref(body);
        return;
    }
    char *text = body ? json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    json_decref(body);
    struct evbuffer *b = evbuffer_new();
    struct evkeyvalq *h = evhttp_request_get_output_headers(q->r);
    evhttp_add_header(h, "Content-Type", "application/json");
    if (b) {
        if (text)
            evbuffer_add(b, text, strlen(text));
        else
            evbuffer_add_printf(b, "{\"error\":{\"code\":\"ENOMEM\",\"message\":\"out of "
                                   "memory\",\"field\":\"\"}}");
        evbuffer_add(b, "\n", 1);
    }
    evhttp_send_reply(q->r, text ? status : 500, NULL, b);
    if (b)
        evbuffer_free(b);
    free(text);
}

void th__reply_error(th__req *q, int status, const char *code, const char *field, const char *fmt,
                     ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *body = json_pack("{s:{s:s,s:s,s:s}}", "error", "code", code, "message", msg, "field",
                             field ? field : "");
    if (status == 429 && q->r)
        evhttp_add_header(evhttp_request_get_output_headers(q->r), "Retry-After", "1");
    th__log(status >= 500 ? TH_LOG_ERROR : TH_LOG_DEBUG, "http",
            json_pack("{s:s,s:i,s:s}", "path", q->path, "status", status, "code", code),
            "request refused: %s", msg);
    th__reply_json(q, status, body);
}

void th__reply_engine_error(th__req *q, int rc, const th_error *err)
{
    int status;
    switch (rc) {
    case TH_EINVAL:
        status = 400;
        break;
    case TH_ENOTFOUND:
        status = 404;
        break;
    case TH_ESTATE:
    case TH_ESTALE:
    case TH_ECONFLICT:
        status = 409;
        break;
    case TH_ETOOBIG:
        status = 413;
        break;
    case TH_EBUSY:
        status = 429;
        break;
    case TH_EBUDGET:
        status = 402;
        break;
    case TH_EUPSTREAM:
        status = 502;
        break;
    case TH_ECLOSED:
    case TH_EUNAVAIL:
        status = 503;
        break;
    default:
        status = 500;
    }
    const char *msg = err && err->message[0] ? err->message : th_strerror(rc);
    th__reply_error(q, status, th_errname(rc), err ? err->field : "", "%s", msg);
}

json_t *th__req_body(th__req *q, size_t max)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(q->r);
    size_t len = evbuffer_get_length(in);
    if (len > max) {
        th__reply_error(q, 413, "ETOOBIG", "", "request body is %zu bytes; the limit is %zu", len,
                        max);
        return NULL;
    }
    if (len == 0)
        return json_object();
    const char *text = (const char *)evbuffer_pullup(in, -1);
    json_error_t je;
    json_t *v = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!v) {
        th__reply_error(q, 400, "EINVAL", "", "malformed JSON: %s at line %d column %d", je.text,
                        je.line, je.column);
        return NULL;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        th__reply_error(q, 400, "EINVAL", "", "the request body must be a JSON object");
        return NULL;
    }
    return v;
}

int th__req_known_fields(th__req *q, json_t *obj, const char *const *allowed, const char *prefix)
{
    th_error err;
    int rc = th__json_known_fields(obj, allowed, prefix, &err);
    if (rc)
        th__reply_engine_error(q, rc, &err);
    return rc;
}

const char *th__req_param(th__req *q, const char *name)
{
    return evhttp_find_header(&q->query, name);
}

int th__req_allow(th__req *q, unsigned scope)
{
    /* admin may do anything; every scope includes read. */
    if ((q->scopes & TH_SCOPE_ADMIN) || (q->scopes & scope) ||
        (scope == TH_SCOPE_READ && q->scopes))
        return 1;
    th__reply_error(q, 403, "EFORBIDDEN", "", "this token lacks the scope for %s", q->path);
    return 0;
}

/* Resolves the caller's scopes from the bearer token; replies 401 and
 * returns -1 when tokens are configured and this one is missing or unknown. */
static int authenticate(th__req *q)
{
    const th__config *c = &q->s->cfg;
    if (!c->ntokens) {
        q->scopes = TH_SCOPE_READ | TH_SCOPE_SUBMIT | TH_SCOPE_WORKER | TH_SCOPE_ADMIN;
        return 0;
    }
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(q->r), "Authorization");
    if (!h || strncmp(h, "Bearer ", 7) != 0 || !h[7]) {
        evhttp_add_header(evhttp_request_get_output_headers(q->r), "WWW-Authenticate",
                          "Bearer realm=\"taskhive\"");
        th__reply_error(q, 401, "EAUTH", "", "missing bearer token");
        return -1;
    }
    unsigned char hash[32];
    crypto_hash_sha256(hash, (const unsigned char *)h + 7, strlen(h + 7));
    unsigned scopes = 0;
    /* Compare against every token, in constant time each, so timing says
     * nothing about which (if any) matched. */
    for (size_t i = 0; i < c->ntokens; i++)
        if (sodium_memcmp(hash, c->tokens[i].hash, sizeof hash) == 0)
            scopes |= c->tokens[i].scopes;
    if (!scopes) {
        th__reply_error(q, 401, "EAUTH", "", "unknown bearer token");
        return -1;
    }
    q->scopes = scopes;
    return 0;
}

int th__path_split(th__req *q, const char *path)
{
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof q->path || path[0] != '/')
        return -1;
    memcpy(q->path, path, n + 1);
    memcpy(q->segbuf, path, n + 1);
    q->nseg = 0;
    char *p = q->segbuf + 1;
    while (*p) {
        if (q->nseg == 8)
            return -1;
        q->seg[q->nseg++] = p;
        p += strspn(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-");
        if (*p == '/')
            *p++ = '\0';
        else if (*p)
            return -1;
    }
    return 0;
}

void th__route_dispatch(th__req *q, enum evhttp_cmd_type method);

void th__http_dispatch(struct evhttp_request *r, void *arg)
{
    th__req q;
    memset(&q, 0, sizeof q);
    q.s = arg;
    q.r = r;
    TAILQ_INIT(&q.query);
    const char *uri = evhttp_request_get_uri(r);
    struct evhttp_uri *u = evhttp_uri_parse(uri);
    const char *path = u ? evhttp_uri_get_path(u) : NULL;
    if (!u || !path || th__path_split(&q, path) != 0) {
        snprintf(q.path, sizeof q.path, "(bad path)");
        th__reply_error(&q, 404, "EROUTE", "", "no such route");
        if (u)
            evhttp_uri_free(u);
        return;
    }
    const char *query = evhttp_uri_get_query(u);
    if (query && evhttp_parse_query_str(query, &q.query) != 0) {
        evhttp_uri_free(u);
        th__reply_error(&q, 400, "EINVAL", "", "malformed query string");
        return;
    }
    evhttp_uri_free(u);
    if (th__conn_track(q.s, r) != 0) {
        evhttp_add_header(evhttp_request_get_output_headers(r), "Connection", "close");
        th__reply_error(&q, 503, "EBUSY", "", "too many connections (max_connections %zu)",
                        q.s->cfg.max_connections);
        evhttp_clear_headers(&q.query);
        return;
    }
    int open_route =
        q.nseg == 1 && (strcmp(q.seg[0], "healthz") == 0 || strcmp(q.seg[0], "readyz") == 0);
    if (open_route || authenticate(&q) == 0)
        th__route_dispatch(&q, evhttp_request_get_command(r));
    evhttp_clear_headers(&q.query);
}

void th__reply_method(th__req *q, const char *allow)
{
    evhttp_add_header(evhttp_request_get_output_headers(q->r), "Allow", allow);
    th__reply_error(q, 405, "EMETHOD", "", "%s does not allow this method (allowed: %s)", q->path,
                    allow);
}
