/*
 * The fake LLM provider; see fakellm.h.
 *
 * One thread runs one event base with one evhttp. A request is recorded,
 * pops its reply, and becomes an `rq`: the answer is built up front (a
 * status, headers and either one body or a list of stream pieces) and sent
 * from timers when there is a delay. An rq lives until its answer is done
 * or its connection closes: the connection's close callback frees it, so a
 * hung or half-sent answer never outlives its connection, and
 * fakellm_stop's evhttp_free closes them all.
 *
 * Locking: f->mu guards the reply FIFO, the default reply and the request
 * records; it is never held while calling libevent.
 */
#include "fakellm.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <event2/thread.h>

#include "thtest.h"

enum endpoint { EP_NONE, EP_OPENAI, EP_ANTHROPIC, EP_OLLAMA, EP_EMBED_OPENAI, EP_EMBED_OLLAMA };

/* A reply as stored: the caller's struct with its strings copied. */
typedef struct reply {
    fakellm_reply r;
    struct reply *next;
} reply;

typedef struct rq rq;

struct fakellm {
    struct event_base *base;
    struct evhttp *http;
    struct event *stop_ev;
    pthread_t thread;
    int running;
    int port;
    char url_root[64], url_v1[64];

    pthread_mutex_t mu;
    pthread_cond_t cond; /* a request was recorded */
    reply *head, *tail;
    reply *dflt; /* NULL = FAKE_OK */
    int health;  /* status of the health paths; 200 = answer normally */
    fakellm_request **reqs;
    size_t nreqs, capreqs;

    rq *live;     /* answers in progress (loop thread only) */
    size_t nlive; /* their count, under mu: fakellm_active reads it */
};

/* An answer in progress (loop thread only). */
struct rq {
    rq *next, *prev;
    fakellm *f;
    struct evhttp_request *req;
    struct evhttp_connection *evcon;
    struct event *timer;
    struct event *watch; /* the client's socket: did it leave? */
    reply *rep;          /* owned copy */
    int stream, cut, ndjson;
    int status;
    struct evbuffer *body; /* non-stream answer */
    char **pieces;         /* stream answer */
    size_t npieces, next_piece;
    int started; /* reply_start sent */
};

/* ---- small helpers ------------------------------------------------------ */

static void *xmalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (!p)
        abort();
    return p;
}

static char *xstrdup(const char *s)
{
    if (!s)
        return NULL;
    char *c = strdup(s);
    if (!c)
        abort();
    return c;
}

static char *xmemdup(const void *p, size_t n)
{
    char *c = xmalloc(n + 1);
    if (n)
        memcpy(c, p, n);
    c[n] = '\0';
    return c;
}

static char *xfmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xfmt(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        abort();
    char *s = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

/* Compact JSON text of `v`, which it steals. */
static char *jdump_steal(json_t *v)
{
    if (!v)
        abort();
    char *s = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(v);
    if (!s)
        abort();
    return s;
}

static json_t *jpack(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    json_error_t err;
    json_t *v = json_vpack_ex(&err, 0, fmt, ap);
    va_end(ap);
    if (!v) {
        fprintf(stderr, "fakellm: json_pack: %s\n", err.text);
        abort();
    }
    return v;
}

static reply *reply_copy(const fakellm_reply *src)
{
    reply *c = xmalloc(sizeof *c);
    fakellm_reply z = {0};
    c->r = src ? *src : z;
    fakellm_reply *r = &c->r;
    r->text = xstrdup(r->text);
    r->model = xstrdup(r->model);
    r->tool_name = xstrdup(r->tool_name);
    r->tool_args = xstrdup(r->tool_args);
    r->tool_id = xstrdup(r->tool_id);
    r->error_type = xstrdup(r->error_type);
    r->error_message = xstrdup(r->error_message);
    for (int i = 0; i < FAKELLM_MAX_HEADERS; i++)
        r->headers[i] = xstrdup(r->headers[i]);
    return c;
}

static void reply_free(reply *c)
{
    if (!c)
        return;
    fakellm_reply *r = &c->r;
    free((char *)r->text);
    free((char *)r->model);
    free((char *)r->tool_name);
    free((char *)r->tool_args);
    free((char *)r->tool_id);
    free((char *)r->error_type);
    free((char *)r->error_message);
    for (int i = 0; i < FAKELLM_MAX_HEADERS; i++)
        free((char *)r->headers[i]);
    free(c);
}

static void request_free(fakellm_request *q)
{
    if (!q)
        return;
    free(q->method);
    free(q->path);
    free(q->body);
    json_decref(q->json);
    for (size_t i = 0; i < q->nheaders; i++) {
        free(q->names[i]);
        free(q->values[i]);
    }
    free(q->names);
    free(q->values);
    free(q);
}

static int tokens(int v, int dflt)
{
    return v == 0 ? dflt : v < 0 ? 0 : v;
}

/* Splits s[0..n) into `k` pieces of about equal size, never inside a UTF-8
 * sequence; returns how many pieces (>= 1, empty pieces dropped unless s is
 * empty). `out` gets malloc'd strings. */
static size_t split(const char *s, size_t n, int k, char ***out)
{
    if (k < 1)
        k = 1;
    char **p = xmalloc(sizeof *p * ((size_t)k + 1));
    size_t np = 0, at = 0;
    for (int i = 0; i < k && at < n; i++) {
        size_t end = i == k - 1 ? n : n * (size_t)(i + 1) / (size_t)k;
        while (end < n && ((unsigned char)s[end] & 0xC0) == 0x80)
            end++;
        if (end > at)
            p[np++] = xmemdup(s + at, end - at);
        at = end < at ? at : end;
    }
    if (np == 0)
        p[np++] = xmemdup("", 0);
    *out = p;
    return np;
}

static void free_pieces(char **p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(p[i]);
    free(p);
}

/* ---- building answers --------------------------------------------------- */

#define CREATED 1700000000
#define CREATED_AT "2023-11-14T22:13:20.000000Z"

static void add_piece(rq *q, char *s)
{
    q->pieces = realloc(q->pieces, sizeof *q->pieces * (q->npieces + 1));
    if (!q->pieces)
        abort();
    q->pieces[q->npieces++] = s;
}

static void set_body(rq *q, char *s)
{
    evbuffer_add(q->body, s, strlen(s));
    free(s);
}

static void sse_data(rq *q, json_t *v)
{
    char *s = jdump_steal(v);
    add_piece(q, xfmt("data: %s\n\n", s));
    free(s);
}

static void sse_event(rq *q, const char *type, json_t *v)
{
    char *s = jdump_steal(v);
    add_piece(q, xfmt("event: %s\ndata: %s\n\n", type, s));
    free(s);
}

static void ndjson(rq *q, json_t *v)
{
    char *s = jdump_steal(v);
    add_piece(q, xfmt("%s\n", s));
    free(s);
}

/* The tool arguments as a JSON object (never NULL). */
static json_t *tool_args_obj(const fakellm_reply *r)
{
    json_t *a = json_loads(r->tool_args ? r->tool_args : FAKELLM_TOOL_ARGS, 0, NULL);
    if (!a)
        a = json_object();
    return a;
}

static const char *tool_args_text(const fakellm_reply *r)
{
    return r->tool_args ? r->tool_args : FAKELLM_TOOL_ARGS;
}

static json_t *openai_chunk(const char *model, json_t *delta, const char *finish)
{
    return jpack("{s:s, s:s, s:i, s:s, s:s, s:[{s:i, s:o, s:n, s:o}]}", "id", "chatcmpl-fake1",
                 "object", "chat.completion.chunk", "created", CREATED, "model", model,
                 "system_fingerprint", "fp_fake", "choices", "index", 0, "delta", delta, "logprobs",
                 "finish_reason", finish ? json_string(finish) : json_null());
}

static void build_openai(rq *q, const char *model, int in, int out)
{
    const fakellm_reply *r = &q->rep->r;
    const char *text = r->text ? r->text : FAKELLM_TEXT;
    int tool = r->kind == FAKE_TOOL_CALL;
    const char *name = r->tool_name ? r->tool_name : FAKELLM_TOOL_NAME;
    const char *id = r->tool_id ? r->tool_id : "call_fake_1";
    const char *finish = tool ? "tool_calls" : "stop";
    json_t *usage = jpack("{s:i, s:i, s:i}", "prompt_tokens", in, "completion_tokens", out,
                          "total_tokens", in + out);
    if (!q->stream) {
        json_t *msg =
            tool ? jpack("{s:s, s:n, s:[{s:s, s:s, s:{s:s, s:s}}], s:n}", "role", "assistant",
                         "content", "tool_calls", "id", id, "type", "function", "function", "name",
                         name, "arguments", tool_args_text(r), "refusal")
                 : jpack("{s:s, s:s, s:n}", "role", "assistant", "content", text, "refusal");
        set_body(q, jdump_steal(jpack("{s:s, s:s, s:i, s:s, s:[{s:i, s:o, s:n, s:s}], s:o, "
                                      "s:s}",
                                      "id", "chatcmpl-fake1", "object", "chat.completion",
                                      "created", CREATED, "model", model, "choices", "index", 0,
                                      "message", msg, "logprobs", "finish_reason", finish, "usage",
                                      usage, "system_fingerprint", "fp_fake")));
        return;
    }
    char **p;
    size_t n;
    if (tool) {
        const char *a = tool_args_text(r);
        n = split(a, strlen(a), r->chunks ? r->chunks : FAKELLM_CHUNKS, &p);
        sse_data(q,
                 openai_chunk(model,
                              jpack("{s:s, s:n, s:[{s:i, s:s, s:s, s:{s:s, s:s}}]}", "role",
                                    "assistant", "content", "tool_calls", "index", 0, "id", id,
                                    "type", "function", "function", "name", name, "arguments", ""),
                              NULL));
        for (size_t i = 0; i < n; i++)
            sse_data(q, openai_chunk(model,
                                     jpack("{s:[{s:i, s:{s:s}}]}", "tool_calls", "index", 0,
                                           "function", "arguments", p[i]),
                                     NULL));
    } else {
        n = split(text, strlen(text), r->chunks ? r->chunks : FAKELLM_CHUNKS, &p);
        sse_data(
            q, openai_chunk(model,
                            jpack("{s:s, s:s, s:n}", "role", "assistant", "content", "", "refusal"),
                            NULL));
        for (size_t i = 0; i < n; i++)
            sse_data(q, openai_chunk(model, jpack("{s:s}", "content", p[i]), NULL));
    }
    free_pieces(p, n);
    sse_data(q, openai_chunk(model, json_object(), finish));
    sse_data(q, jpack("{s:s, s:s, s:i, s:s, s:s, s:[], s:o}", "id", "chatcmpl-fake1", "object",
                      "chat.completion.chunk", "created", CREATED, "model", model,
                      "system_fingerprint", "fp_fake", "choices", "usage", usage));
    add_piece(q, xfmt("data: [DONE]\n\n"));
}

static void build_anthropic(rq *q, const char *model, int in, int out)
{
    const fakellm_reply *r = &q->rep->r;
    const char *text = r->text ? r->text : FAKELLM_TEXT;
    int tool = r->kind == FAKE_TOOL_CALL;
    const char *name = r->tool_name ? r->tool_name : FAKELLM_TOOL_NAME;
    const char *id = r->tool_id ? r->tool_id : "toolu_fake_1";
    const char *stop = tool ? "tool_use" : "end_turn";
    if (!q->stream) {
        json_t *block = tool ? jpack("{s:s, s:s, s:s, s:o}", "type", "tool_use", "id", id, "name",
                                     name, "input", tool_args_obj(r))
                             : jpack("{s:s, s:s}", "type", "text", "text", text);
        set_body(
            q, jdump_steal(jpack("{s:s, s:s, s:s, s:s, s:[o], s:s, s:n, s:{s:i, s:i, s:i, "
                                 "s:i}}",
                                 "id", "msg_fake1", "type", "message", "role", "assistant", "model",
                                 model, "content", block, "stop_reason", stop, "stop_sequence",
                                 "usage", "input_tokens", in, "cache_creation_input_tokens", 0,
                                 "cache_read_input_tokens", 0, "output_tokens", out)));
        return;
    }
    sse_event(q, "message_start",
              jpack("{s:s, s:{s:s, s:s, s:s, s:[], s:s, s:n, s:n, s:{s:i, s:i, s:i, s:i}}}", "type",
                    "message_start", "message", "id", "msg_fake1", "type", "message", "role",
                    "assistant", "content", "model", model, "stop_reason", "stop_sequence", "usage",
                    "input_tokens", in, "cache_creation_input_tokens", 0, "cache_read_input_tokens",
                    0, "output_tokens", 1));
    json_t *block =
        tool ? jpack("{s:s, s:s, s:s, s:{}}", "type", "tool_use", "id", id, "name", name, "input")
             : jpack("{s:s, s:s}", "type", "text", "text", "");
    sse_event(q, "content_block_start",
              jpack("{s:s, s:i, s:o}", "type", "content_block_start", "index", 0, "content_block",
                    block));
    sse_event(q, "ping", jpack("{s:s}", "type", "ping"));
    const char *src = tool ? tool_args_text(r) : text;
    char **p;
    size_t n = split(src, strlen(src), r->chunks ? r->chunks : FAKELLM_CHUNKS, &p);
    for (size_t i = 0; i < n; i++)
        sse_event(q, "content_block_delta",
                  jpack("{s:s, s:i, s:{s:s, s:s}}", "type", "content_block_delta", "index", 0,
                        "delta", "type", tool ? "input_json_delta" : "text_delta",
                        tool ? "partial_json" : "text", p[i]));
    free_pieces(p, n);
    sse_event(q, "content_block_stop",
              jpack("{s:s, s:i}", "type", "content_block_stop", "index", 0));
    sse_event(q, "message_delta",
              jpack("{s:s, s:{s:s, s:n}, s:{s:i}}", "type", "message_delta", "delta", "stop_reason",
                    stop, "stop_sequence", "usage", "output_tokens", out));
    sse_event(q, "message_stop", jpack("{s:s}", "type", "message_stop"));
}

static json_t *ollama_final(const char *model, json_t *msg, int in, int out)
{
    return jpack("{s:s, s:s, s:o, s:s, s:b, s:I, s:I, s:i, s:I, s:i, s:I}", "model", model,
                 "created_at", CREATED_AT, "message", msg, "done_reason", "stop", "done", 1,
                 "total_duration", (json_int_t)5000000, "load_duration", (json_int_t)1000000,
                 "prompt_eval_count", in, "prompt_eval_duration", (json_int_t)1000000, "eval_count",
                 out, "eval_duration", (json_int_t)3000000);
}

static void build_ollama(rq *q, const char *model, int in, int out)
{
    const fakellm_reply *r = &q->rep->r;
    const char *text = r->text ? r->text : FAKELLM_TEXT;
    int tool = r->kind == FAKE_TOOL_CALL;
    const char *name = r->tool_name ? r->tool_name : FAKELLM_TOOL_NAME;
    json_t *calls =
        tool ? jpack("[{s:{s:s, s:o}}]", "function", "name", name, "arguments", tool_args_obj(r))
             : NULL;
    if (!q->stream) {
        json_t *msg = jpack("{s:s, s:s}", "role", "assistant", "content", tool ? "" : text);
        if (calls)
            json_object_set_new(msg, "tool_calls", calls);
        set_body(q, jdump_steal(ollama_final(model, msg, in, out)));
        return;
    }
    if (tool) {
        json_t *msg =
            jpack("{s:s, s:s, s:o}", "role", "assistant", "content", "", "tool_calls", calls);
        ndjson(q, jpack("{s:s, s:s, s:o, s:b}", "model", model, "created_at", CREATED_AT, "message",
                        msg, "done", 0));
    } else {
        char **p;
        size_t n = split(text, strlen(text), r->chunks ? r->chunks : FAKELLM_CHUNKS, &p);
        for (size_t i = 0; i < n; i++)
            ndjson(q,
                   jpack("{s:s, s:s, s:{s:s, s:s}, s:b}", "model", model, "created_at", CREATED_AT,
                         "message", "role", "assistant", "content", p[i], "done", 0));
        free_pieces(p, n);
    }
    ndjson(q,
           ollama_final(model, jpack("{s:s, s:s}", "role", "assistant", "content", ""), in, out));
}

/* The request's inputs for an embedding: a string or an array of them. */
static json_t *embed_vector(const char *s, size_t i, int dims)
{
    uint32_t h = 2166136261u;
    for (const char *c = s; *c; c++)
        h = (h ^ (unsigned char)*c) * 16777619u;
    json_t *v = json_array();
    for (int j = 0; j < dims; j++) {
        uint32_t x = h ^ (uint32_t)(i * 7919u + (size_t)j * 104729u);
        x = (x ^ (x >> 13)) * 0x5bd1e995u;
        json_array_append_new(v, json_real((double)(x % 2000u) / 1000.0 - 1.0));
    }
    return v;
}

static void build_embed(rq *q, enum endpoint ep, json_t *in_json, const char *model, int in)
{
    const fakellm_reply *r = &q->rep->r;
    int dims = r->dims > 0 ? r->dims : FAKELLM_DIMS;
    json_t *input = json_object_get(in_json, "input");
    json_t *list = json_array();
    if (json_is_string(input))
        json_array_append(list, input);
    else if (json_is_array(input))
        json_array_extend(list, input);
    json_t *vecs = json_array();
    for (size_t i = 0; i < json_array_size(list); i++) {
        const char *s = json_string_value(json_array_get(list, i));
        json_array_append_new(vecs, embed_vector(s ? s : "", i, dims));
    }
    json_decref(list);
    if (ep == EP_EMBED_OLLAMA) {
        set_body(q, jdump_steal(jpack("{s:s, s:o, s:I, s:I, s:i}", "model", model, "embeddings",
                                      vecs, "total_duration", (json_int_t)2000000, "load_duration",
                                      (json_int_t)1000000, "prompt_eval_count", in)));
        return;
    }
    json_t *data = json_array();
    for (size_t i = 0; i < json_array_size(vecs); i++)
        json_array_append_new(data, jpack("{s:s, s:i, s:O}", "object", "embedding", "index", (int)i,
                                          "embedding", json_array_get(vecs, i)));
    json_decref(vecs);
    set_body(q,
             jdump_steal(jpack("{s:s, s:o, s:s, s:{s:i, s:i}}", "object", "list", "data", data,
                               "model", model, "usage", "prompt_tokens", in, "total_tokens", in)));
}

static const char *default_error_type(enum endpoint ep, int status)
{
    int anth = ep == EP_ANTHROPIC;
    switch (status) {
    case 400:
        return "invalid_request_error";
    case 401:
        return anth ? "authentication_error" : "invalid_api_key";
    case 403:
        return anth ? "permission_error" : "permission_denied";
    case 404:
        return anth ? "not_found_error" : "not_found";
    case 413:
        return anth ? "request_too_large" : "invalid_request_error";
    case 429:
        return anth ? "rate_limit_error" : "rate_limit_exceeded";
    case 529:
        return anth ? "overloaded_error" : "server_error";
    default:
        return anth ? "api_error" : "server_error";
    }
}

static void build_error(rq *q, enum endpoint ep, int status, const char *type, const char *msg)
{
    q->stream = 0;
    q->status = status;
    char *dmsg = NULL;
    if (!type)
        type = default_error_type(ep, status);
    if (!msg)
        msg = dmsg = xfmt("fakellm: status %d", status);
    if (ep == EP_ANTHROPIC)
        set_body(q, jdump_steal(jpack("{s:s, s:{s:s, s:s}}", "type", "error", "error", "type", type,
                                      "message", msg)));
    else if (ep == EP_OLLAMA || ep == EP_EMBED_OLLAMA)
        set_body(q, jdump_steal(jpack("{s:s}", "error", msg)));
    else
        set_body(q, jdump_steal(jpack("{s:{s:s, s:s, s:n, s:s}}", "error", "message", msg, "type",
                                      type, "param", "code", type)));
    free(dmsg);
}

/* Replaces the answer by a malformed one: a truncated body, or a stream
 * whose second piece (after a valid first one) is broken JSON. */
static void make_malformed(rq *q, enum endpoint ep)
{
    if (!q->stream) {
        evbuffer_drain(q->body, evbuffer_get_length(q->body));
        evbuffer_add_printf(q->body, "{\"id\": \"fake\", \"choices\": [{\"message\": {\"content\"");
        return;
    }
    const char *bad = ep == EP_OLLAMA      ? "{\"model\": \"x\", \"message\": {\"content\": \n"
                      : ep == EP_ANTHROPIC ? "event: content_block_delta\ndata: {\"type\": "
                                             "\"content_block_delta\", \"index\": 0, \"delta\n\n"
                                           : "data: {\"choices\": [{\"delta\": {\"cont\n\n";
    size_t at = q->npieces > 1 ? 1 : q->npieces;
    add_piece(q, NULL);
    memmove(q->pieces + at + 1, q->pieces + at, sizeof *q->pieces * (q->npieces - 1 - at));
    q->pieces[at] = xstrdup(bad);
}

/* ---- the rq lifecycle --------------------------------------------------- */

static void rq_free(rq *q)
{
    fakellm *f = q->f;
    pthread_mutex_lock(&f->mu);
    f->nlive--;
    pthread_mutex_unlock(&f->mu);
    if (q->prev)
        q->prev->next = q->next;
    else
        f->live = q->next;
    if (q->next)
        q->next->prev = q->prev;
    if (q->timer)
        event_free(q->timer);
    if (q->watch)
        event_free(q->watch);
    if (q->body)
        evbuffer_free(q->body);
    free_pieces(q->pieces, q->npieces);
    reply_free(q->rep);
    free(q);
}

/* The client left or the server stops: libevent frees the request unless it
 * was orphaned from its connection (evcon NULL), then it is ours. */
static void on_close(struct evhttp_connection *evcon, void *arg)
{
    rq *q = arg;
    if (q->req && !evhttp_request_get_connection(q->req))
        evhttp_request_free(q->req);
    q->req = NULL;
    rq_free(q);
}

/* Detaches from the connection before the last send, which may free it. */
static void detach(rq *q)
{
    if (q->evcon)
        evhttp_connection_set_closecb(q->evcon, NULL, NULL);
}

/* libevent stops reading a connection while its request is answered, so a
 * client that gives up on a hung or delayed answer would go unnoticed until
 * the next write. This peeks at the socket instead: EOF or an error closes
 * the connection (on_close frees q); data (a pipelined request) ends the
 * watch. */
static void on_watch(evutil_socket_t fd, short what, void *arg)
{
    rq *q = arg;
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n > 0) {
        event_del(q->watch);
        return;
    }
    evhttp_connection_free(q->evcon);
}

static void add_headers(rq *q, const char *ctype)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(q->req);
    evhttp_add_header(h, "Content-Type", ctype);
    if (ctype[0] == 't') {
        evhttp_add_header(h, "Cache-Control", "no-cache");
    }
    for (int i = 0; i < FAKELLM_MAX_HEADERS; i++) {
        const char *line = q->rep->r.headers[i];
        if (!line)
            continue;
        const char *colon = strchr(line, ':');
        if (!colon)
            continue;
        char *name = xmemdup(line, (size_t)(colon - line));
        const char *v = colon + 1;
        while (*v == ' ')
            v++;
        evhttp_add_header(h, name, v);
        free(name);
    }
}

static void step(rq *q);

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    step(arg);
}

static void arm(rq *q, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(q->timer, &tv);
}

static void do_cut(evutil_socket_t fd, short what, void *arg)
{
    rq *q = arg;
    struct evhttp_connection *evcon = q->evcon;
    detach(q);
    q->req = NULL;
    rq_free(q);
    /* Frees the request on it too; the client sees the stream end early. */
    evhttp_connection_free(evcon);
}

/* All cut pieces were written out: close from a fresh callback, not from
 * inside libevent's write callback. */
static void on_cut_flushed(struct evhttp_connection *evcon, void *arg)
{
    rq *q = arg;
    event_free(q->timer);
    q->timer = evtimer_new(q->f->base, do_cut, q);
    if (!q->timer)
        abort();
    arm(q, 0);
}

/* Sends what is due: the whole non-stream answer, or the next stream
 * pieces (one per tick when there is a chunk delay). */
static void step(rq *q)
{
    const fakellm_reply *r = &q->rep->r;
    if (!q->stream && !q->cut) {
        add_headers(q, "application/json");
        detach(q);
        evhttp_send_reply(q->req, q->status, NULL, q->body);
        q->req = NULL;
        rq_free(q);
        return;
    }
    if (!q->started) {
        add_headers(q, !q->stream  ? "application/json"
                       : q->ndjson ? "application/x-ndjson"
                                   : "text/event-stream");
        evhttp_send_reply_start(q->req, 200, "OK");
        q->started = 1;
    }
    size_t limit = q->npieces;
    if (q->cut) {
        /* Never the last piece: that is the terminator. */
        size_t n = (size_t)(r->cut_after > 0 ? r->cut_after : 1);
        limit = limit > 1 ? limit - 1 : limit;
        limit = n < limit ? n : limit;
    }
    while (q->next_piece < limit) {
        const char *s = q->pieces[q->next_piece++];
        struct evbuffer *b = evbuffer_new();
        if (!b)
            abort();
        evbuffer_add(b, s, strlen(s));
        if (q->cut && q->next_piece == limit)
            evhttp_send_reply_chunk_with_cb(q->req, b, on_cut_flushed, q);
        else
            evhttp_send_reply_chunk(q->req, b);
        evbuffer_free(b);
        if (q->cut && q->next_piece == limit)
            return;
        if (r->chunk_delay_ms > 0 && q->next_piece < limit) {
            arm(q, r->chunk_delay_ms);
            return;
        }
    }
    detach(q);
    evhttp_send_reply_end(q->req);
    q->req = NULL;
    rq_free(q);
}

/* ---- requests ----------------------------------------------------------- */

static fakellm_request *record(fakellm *f, struct evhttp_request *req)
{
    fakellm_request *q = xmalloc(sizeof *q);
    switch (evhttp_request_get_command(req)) {
    case EVHTTP_REQ_GET:
        q->method = xstrdup("GET");
        break;
    case EVHTTP_REQ_POST:
        q->method = xstrdup("POST");
        break;
    case EVHTTP_REQ_PUT:
        q->method = xstrdup("PUT");
        break;
    case EVHTTP_REQ_DELETE:
        q->method = xstrdup("DELETE");
        break;
    case EVHTTP_REQ_HEAD:
        q->method = xstrdup("HEAD");
        break;
    default:
        q->method = xstrdup("OTHER");
        break;
    }
    q->path = xstrdup(evhttp_request_get_uri(req));
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    q->body = xmalloc(len + 1);
    evbuffer_copyout(in, q->body, len);
    q->body_len = len;
    q->json = len ? json_loadb(q->body, len, 0, NULL) : NULL;
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    size_t n = 0;
    for (struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next)
        n++;
    q->names = xmalloc(sizeof *q->names * (n + 1));
    q->values = xmalloc(sizeof *q->values * (n + 1));
    for (struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next) {
        q->names[q->nheaders] = xstrdup(kv->key);
        q->values[q->nheaders++] = xstrdup(kv->value);
    }
    pthread_mutex_lock(&f->mu);
    if (f->nreqs == f->capreqs) {
        f->capreqs = f->capreqs ? f->capreqs * 2 : 16;
        f->reqs = realloc(f->reqs, sizeof *f->reqs * f->capreqs);
        if (!f->reqs)
            abort();
    }
    f->reqs[f->nreqs++] = q;
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->mu);
    return q;
}

static reply *pop_reply(fakellm *f)
{
    pthread_mutex_lock(&f->mu);
    reply *r = f->head;
    if (r) {
        f->head = r->next;
        if (!f->head)
            f->tail = NULL;
        r->next = NULL;
    } else {
        r = reply_copy(f->dflt ? &f->dflt->r : NULL);
    }
    pthread_mutex_unlock(&f->mu);
    return r;
}

static enum endpoint endpoint_of(const char *uri, int post)
{
    size_t n = strcspn(uri, "?");
#define IS(p) (n == strlen(p) && memcmp(uri, p, n) == 0)
    if (post && IS("/v1/chat/completions"))
        return EP_OPENAI;
    if (post && IS("/v1/messages"))
        return EP_ANTHROPIC;
    if (post && IS("/api/chat"))
        return EP_OLLAMA;
    if (post && IS("/v1/embeddings"))
        return EP_EMBED_OPENAI;
    if (post && IS("/api/embed"))
        return EP_EMBED_OLLAMA;
#undef IS
    return EP_NONE;
}

static int is_path(const char *uri, const char *p)
{
    size_t n = strcspn(uri, "?");
    return n == strlen(p) && memcmp(uri, p, n) == 0;
}

static void on_request(struct evhttp_request *req, void *arg)
{
    fakellm *f = arg;
    const fakellm_request *rec = record(f, req);
    int post = evhttp_request_get_command(req) == EVHTTP_REQ_POST;
    enum endpoint ep = endpoint_of(rec->path, post);

    rq *q = xmalloc(sizeof *q);
    q->f = f;
    q->req = req;
    q->evcon = evhttp_request_get_connection(req);
    q->status = 200;
    q->body = evbuffer_new();
    q->timer = evtimer_new(f->base, on_timer, q);
    if (!q->body || !q->timer)
        abort();
    q->next = f->live;
    if (f->live)
        f->live->prev = q;
    f->live = q;
    pthread_mutex_lock(&f->mu);
    f->nlive++;
    pthread_mutex_unlock(&f->mu);
    evhttp_connection_set_closecb(q->evcon, on_close, q);
    struct bufferevent *bev = evhttp_connection_get_bufferevent(q->evcon);
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    if (fd >= 0) {
        q->watch = event_new(f->base, fd, EV_READ | EV_PERSIST, on_watch, q);
        if (!q->watch || event_add(q->watch, NULL) != 0)
            abort();
    }

    int get = evhttp_request_get_command(req) == EVHTTP_REQ_GET;
    if (ep == EP_NONE && get &&
        (is_path(rec->path, "/v1/models") || is_path(rec->path, "/api/tags"))) {
        /* Health checks never take a scripted reply. */
        q->rep = reply_copy(NULL);
        pthread_mutex_lock(&f->mu);
        int health = f->health;
        pthread_mutex_unlock(&f->mu);
        if (health != 200)
            build_error(q, is_path(rec->path, "/api/tags") ? EP_OLLAMA : EP_OPENAI, health, NULL,
                        NULL);
        else if (is_path(rec->path, "/api/tags"))
            set_body(q, jdump_steal(jpack("{s:[{s:s, s:s, s:s, s:I, s:s}]}", "models", "name",
                                          FAKELLM_MODEL, "model", FAKELLM_MODEL, "modified_at",
                                          CREATED_AT, "size", (json_int_t)1000, "digest", "fake")));
        else
            set_body(q, jdump_steal(jpack("{s:s, s:[{s:s, s:s, s:s, s:i, s:s, s:s}], s:b, s:s, "
                                          "s:s}",
                                          "object", "list", "data", "id", FAKELLM_MODEL, "object",
                                          "model", "type", "model", "created", CREATED, "owned_by",
                                          "fakellm", "display_name", "Fake Model", "has_more", 0,
                                          "first_id", FAKELLM_MODEL, "last_id", FAKELLM_MODEL)));
        step(q);
        return;
    }
    if (ep == EP_NONE) {
        q->rep = reply_copy(NULL);
        build_error(q, EP_OPENAI, 404, "not_found", "fakellm: no such endpoint");
        step(q);
        return;
    }

    q->rep = pop_reply(f);
    const fakellm_reply *r = &q->rep->r;
    json_t *body = rec->json;
    json_t *st = json_object_get(body, "stream");
    int chat = ep == EP_OPENAI || ep == EP_ANTHROPIC || ep == EP_OLLAMA;
    q->stream = chat && (ep == EP_OLLAMA ? !json_is_false(st) : json_is_true(st));
    q->ndjson = ep == EP_OLLAMA;
    const char *model = r->model ? r->model : json_string_value(json_object_get(body, "model"));
    if (!model)
        model = FAKELLM_MODEL;
    int in = tokens(r->input_tokens, FAKELLM_INPUT_TOKENS);
    int out = tokens(r->output_tokens, FAKELLM_OUTPUT_TOKENS);

    if (r->kind == FAKE_STATUS) {
        build_error(q, ep, r->status ? r->status : 500, r->error_type, r->error_message);
    } else if (ep == EP_EMBED_OPENAI || ep == EP_EMBED_OLLAMA) {
        build_embed(q, ep, body, model, in);
    } else if (ep == EP_OPENAI) {
        build_openai(q, model, in, out);
    } else if (ep == EP_ANTHROPIC) {
        build_anthropic(q, model, in, out);
    } else {
        build_ollama(q, model, in, out);
    }
    if (r->kind == FAKE_MALFORMED)
        make_malformed(q, ep);
    if (r->kind == FAKE_CUT) {
        q->cut = 1;
        if (!q->stream) {
            /* Half the body, then the close. */
            size_t len = evbuffer_get_length(q->body);
            char *half = xmalloc(len / 2 + 1);
            evbuffer_remove(q->body, half, len / 2);
            add_piece(q, half);
            add_piece(q, xstrdup(""));
        }
    }
    if (r->kind == FAKE_HANG)
        return; /* until on_close */
    int delay = r->delay_ms;
    if (r->kind == FAKE_DELAY && delay <= 0)
        delay = FAKELLM_DELAY_MS;
    if (delay > 0)
        arm(q, delay);
    else
        step(q);
}

/* ---- the server thread -------------------------------------------------- */

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    fakellm *f = arg;
    /* Closes every connection; their close callbacks free the rqs. */
    evhttp_free(f->http);
    f->http = NULL;
    while (f->live)
        rq_free(f->live);
    event_base_loopbreak(f->base);
}

static void *run(void *arg)
{
    fakellm *f = arg;
    event_base_dispatch(f->base);
    return NULL;
}

fakellm *fakellm_start(void)
{
    assert_int_equal(evthread_use_pthreads(), 0);
    /* Writing to a client that left must fail, not kill the test. */
    signal(SIGPIPE, SIG_IGN);
    fakellm *f = xmalloc(sizeof *f);
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cond, NULL);
    f->health = 200;
    f->base = event_base_new();
    assert_non_null(f->base);
    f->http = evhttp_new(f->base);
    assert_non_null(f->http);
    evhttp_set_max_body_size(f->http, FAKELLM_MAX_BODY);
    /* A hang lasts until the client leaves, not libevent's 50 s default. */
    evhttp_set_timeout(f->http, 3600);
    evhttp_set_allowed_methods(f->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                                            EVHTTP_REQ_DELETE | EVHTTP_REQ_HEAD);
    evhttp_set_gencb(f->http, on_request, f);
    /* A deep accept queue (capped by net.core.somaxconn), so thousands of
     * clients connecting at once are not dropped and retried a second
     * later, as libevent's default of 128 would make them. */
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct evconnlistener *lst =
        evconnlistener_new_bind(f->base, NULL, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                16384, (struct sockaddr *)&sin, sizeof sin);
    assert_non_null(lst);
    struct evhttp_bound_socket *sock = evhttp_bind_listener(f->http, lst);
    assert_non_null(sock);
    struct sockaddr_storage ss;
    ev_socklen_t sl = sizeof ss;
    assert_int_equal(getsockname(evhttp_bound_socket_get_fd(sock), (struct sockaddr *)&ss, &sl), 0);
    f->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    snprintf(f->url_root, sizeof f->url_root, "http://127.0.0.1:%d", f->port);
    snprintf(f->url_v1, sizeof f->url_v1, "http://127.0.0.1:%d/v1", f->port);
    f->stop_ev = event_new(f->base, -1, 0, on_stop, f);
    assert_non_null(f->stop_ev);
    assert_int_equal(pthread_create(&f->thread, NULL, run, f), 0);
    f->running = 1;
    return f;
}

int fakellm_port(const fakellm *f)
{
    return f->port;
}

const char *fakellm_url(const fakellm *f, th_llm_format fmt)
{
    return fmt == TH_LLM_OPENAI ? f->url_v1 : f->url_root;
}

void fakellm_push(fakellm *f, const fakellm_reply *r)
{
    reply *c = reply_copy(r);
    pthread_mutex_lock(&f->mu);
    if (f->tail)
        f->tail->next = c;
    else
        f->head = c;
    f->tail = c;
    pthread_mutex_unlock(&f->mu);
}

void fakellm_set_default(fakellm *f, const fakellm_reply *r)
{
    reply *c = r ? reply_copy(r) : NULL;
    pthread_mutex_lock(&f->mu);
    reply *old = f->dflt;
    f->dflt = c;
    pthread_mutex_unlock(&f->mu);
    reply_free(old);
}

void fakellm_set_health(fakellm *f, int status)
{
    pthread_mutex_lock(&f->mu);
    f->health = status > 0 ? status : 200;
    pthread_mutex_unlock(&f->mu);
}

size_t fakellm_count_path(fakellm *f, const char *path)
{
    size_t n = 0;
    pthread_mutex_lock(&f->mu);
    for (size_t i = 0; i < f->nreqs; i++)
        n += is_path(f->reqs[i]->path, path);
    pthread_mutex_unlock(&f->mu);
    return n;
}

size_t fakellm_pending(fakellm *f)
{
    size_t n = 0;
    pthread_mutex_lock(&f->mu);
    for (reply *r = f->head; r; r = r->next)
        n++;
    pthread_mutex_unlock(&f->mu);
    return n;
}

size_t fakellm_requests(fakellm *f)
{
    pthread_mutex_lock(&f->mu);
    size_t n = f->nreqs;
    pthread_mutex_unlock(&f->mu);
    return n;
}

const fakellm_request *fakellm_request_at(fakellm *f, size_t i)
{
    pthread_mutex_lock(&f->mu);
    const fakellm_request *q = i < f->nreqs ? f->reqs[i] : NULL;
    pthread_mutex_unlock(&f->mu);
    return q;
}

size_t fakellm_wait_requests(fakellm *f, size_t n, int timeout_ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&f->mu);
    while (f->nreqs < n && pthread_cond_timedwait(&f->cond, &f->mu, &dl) == 0) {
    }
    size_t got = f->nreqs;
    pthread_mutex_unlock(&f->mu);
    return got;
}

size_t fakellm_active(fakellm *f)
{
    pthread_mutex_lock(&f->mu);
    size_t n = f->nlive;
    pthread_mutex_unlock(&f->mu);
    return n;
}

const char *fakellm_header(const fakellm_request *r, const char *name)
{
    for (size_t i = 0; r && i < r->nheaders; i++)
        if (strcasecmp(r->names[i], name) == 0)
            return r->values[i];
    return NULL;
}

void fakellm_stop(fakellm *f)
{
    if (!f->running)
        return;
    event_active(f->stop_ev, EV_READ, 0);
    pthread_join(f->thread, NULL);
    f->running = 0;
}

void fakellm_free(fakellm *f)
{
    if (!f)
        return;
    fakellm_stop(f);
    if (f->http)
        evhttp_free(f->http);
    event_free(f->stop_ev);
    event_base_free(f->base);
    for (reply *r = f->head, *n; r; r = n) {
        n = r->next;
        reply_free(r);
    }
    reply_free(f->dflt);
    for (size_t i = 0; i < f->nreqs; i++)
        request_free(f->reqs[i]);
    free(f->reqs);
    pthread_cond_destroy(&f->cond);
    pthread_mutex_destroy(&f->mu);
    free(f);
}
