/*
 * A fake LLM provider for tests: an HTTP server on 127.0.0.1 (port 0) that
 * answers like OpenAI, Anthropic and Ollama do, on their own paths and in
 * their own wire formats, so the gateway can be tested end to end over real
 * sockets without a network.
 *
 *   POST /v1/chat/completions   OpenAI chat (SSE when "stream": true)
 *   POST /v1/messages           Anthropic Messages (SSE when "stream": true)
 *   POST /api/chat              Ollama chat (NDJSON unless "stream": false,
 *                               as Ollama itself streams by default)
 *   POST /v1/embeddings         OpenAI embeddings
 *   POST /api/embed             Ollama embeddings
 *   GET  /v1/models             model list (OpenAI and Anthropic shapes merged)
 *   GET  /api/tags              Ollama model list (health: fakellm_set_health)
 *   anything else               404 in OpenAI's error shape
 *
 * Each request pops the next scripted reply from a FIFO (fakellm_push); when
 * the FIFO is empty the default reply is used (a normal answer unless
 * fakellm_set_default said otherwise). Streams are real chunked HTTP
 * responses (evhttp_send_reply_start / _chunk / _end) with Content-Type
 * text/event-stream (OpenAI, Anthropic) or application/x-ndjson (Ollama).
 * Delays are libevent timers on the server's own thread and event base, so
 * any number of delayed requests are served in parallel.
 *
 * Every request is recorded (method, path, headers, body) for assertions.
 * Helpers assert (cmocka) or abort on failure; they are thread-safe: the
 * test thread calls them while the server thread answers.
 *
 * Compared with the real providers: OpenAI's usage chunk (choices: [])
 * is always sent at the end of a stream, with or without
 * stream_options.include_usage; ids and timestamps are fixed.
 */
#ifndef THTEST_FAKELLM_H
#define THTEST_FAKELLM_H

#include <stddef.h>

#include <jansson.h>

#include <taskhive/llm.h>

typedef struct fakellm fakellm;

typedef enum fakellm_kind {
    FAKE_OK = 0,    /* a normal answer in the path's format (streamed when asked) */
    FAKE_TOOL_CALL, /* an answer that calls tool `tool_name` with `tool_args` */
    FAKE_STATUS,    /* status `status` with the provider's error body */
    FAKE_HANG,      /* never answer (until the client leaves or the server stops) */
    FAKE_CUT,       /* start a chunked answer, send `cut_after` chunks, close */
    FAKE_MALFORMED, /* 200 with a malformed JSON body (or one malformed chunk) */
    FAKE_DELAY,     /* FAKE_OK after `delay_ms` (default FAKELLM_DELAY_MS) */
} fakellm_kind;

#define FAKELLM_MAX_HEADERS 8
#define FAKELLM_TEXT "Hello from fakellm!"
#define FAKELLM_MODEL "fake-model"
#define FAKELLM_INPUT_TOKENS 12
#define FAKELLM_OUTPUT_TOKENS 7
#define FAKELLM_CHUNKS 3
#define FAKELLM_DELAY_MS 100
#define FAKELLM_TOOL_NAME "get_weather"
#define FAKELLM_TOOL_ARGS "{\"city\":\"Paris\",\"unit\":\"celsius\"}"
#define FAKELLM_DIMS 4
#define FAKELLM_MAX_BODY (8 * 1024 * 1024) /* larger requests get 413 */

/*
 * One scripted reply. Zero fields take the defaults named; every string is
 * copied by fakellm_push, so the struct may live on the caller's stack.
 */
typedef struct fakellm_reply {
    fakellm_kind kind;
    const char *text;   /* answer text; NULL = FAKELLM_TEXT */
    const char *model;  /* NULL = the request's "model", else FAKELLM_MODEL */
    int input_tokens;   /* usage; 0 = FAKELLM_INPUT_TOKENS, < 0 = 0 */
    int output_tokens;  /* usage; 0 = FAKELLM_OUTPUT_TOKENS, < 0 = 0 */
    int chunks;         /* pieces the text / tool arguments stream in; 0 = FAKELLM_CHUNKS */
    int chunk_delay_ms; /* pause between streamed chunks (a timer); 0 = none */
    int delay_ms;       /* pause before answering, any kind; FAKE_DELAY: 0 = default */
    /* FAKE_TOOL_CALL */
    const char *tool_name; /* NULL = FAKELLM_TOOL_NAME */
    const char *tool_args; /* a JSON object's text; NULL = FAKELLM_TOOL_ARGS */
    const char *tool_id;   /* NULL = "call_fake_1" / "toolu_fake_1" / none (ollama) */
    /* FAKE_STATUS */
    int status;                /* 0 = 500 */
    const char *error_type;    /* NULL = by status and format, e.g. "rate_limit_error" */
    const char *error_message; /* NULL = "fakellm: status N" */
    /* FAKE_CUT: chunks sent before the connection is closed; 0 = 1 */
    int cut_after;
    /* embeddings: vector length; 0 = FAKELLM_DIMS */
    int dims;
    /* extra response headers, any kind: "Retry-After: 1", "retry-after-ms: 50" */
    const char *headers[FAKELLM_MAX_HEADERS];
} fakellm_reply;

/* One recorded request; owned by the fakellm, valid until fakellm_free. */
typedef struct fakellm_request {
    char *method; /* "POST", "GET"... */
    char *path;   /* the URI as sent, query included */
    char *body;   /* NUL-terminated (the body may hold other NULs) */
    size_t body_len;
    json_t *json; /* the body parsed, or NULL when it is not JSON */
    size_t nheaders;
    char **names, **values;
} fakellm_request;

/*
 * Starts the server on its own thread and event base (calls
 * evthread_use_pthreads). Asserts on failure. Stop and free with
 * fakellm_free.
 */
fakellm *fakellm_start(void);
int fakellm_port(const fakellm *f);
/* The base URL the gateway expects for `fmt`: "http://127.0.0.1:PORT/v1"
 * for TH_LLM_OPENAI, "http://127.0.0.1:PORT" for the others. Static to f. */
const char *fakellm_url(const fakellm *f, th_llm_format fmt);

/* Queues a reply (copied) for the next request without one. */
void fakellm_push(fakellm *f, const fakellm_reply *r);
/* Replaces the reply used when the FIFO is empty (copied); NULL = FAKE_OK. */
void fakellm_set_default(fakellm *f, const fakellm_reply *r);
/* The status GET /v1/models and /api/tags answer with (in the provider's
 * error shape unless 200); they never pop a scripted reply, so background
 * health checks cannot steal one. 0 = 200. */
void fakellm_set_health(fakellm *f, int status);
/* Scripted replies not yet used. */
size_t fakellm_pending(fakellm *f);

/* Requests received so far / request i (0 = the first), NULL past the end. */
size_t fakellm_requests(fakellm *f);
const fakellm_request *fakellm_request_at(fakellm *f, size_t i);
/* Requests received on `path` (the query is ignored), e.g. "/v1/messages". */
size_t fakellm_count_path(fakellm *f, const char *path);
/* Waits until at least `n` requests arrived or `timeout_ms` passed; returns
 * the count then. */
size_t fakellm_wait_requests(fakellm *f, size_t n, int timeout_ms);
/* Answers in progress: hung, delayed or still streaming. It drops when an
 * answer ends or its client closes the connection, so a test can check
 * that the gateway gave up on a hung request. */
size_t fakellm_active(fakellm *f);
/* The value of header `name` (case-insensitive) of `r`, or NULL. */
const char *fakellm_header(const fakellm_request *r, const char *name);

/* Stops the server: every open connection, hung or streaming, is closed;
 * joins the thread. Idempotent; the recorded requests stay readable. */
void fakellm_stop(fakellm *f);
/* Stops (when needed) and frees everything. Accepts NULL. */
void fakellm_free(fakellm *f);

#endif
