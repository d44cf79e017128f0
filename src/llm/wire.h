/*
 * Wire formats of the LLM providers (private): how a chat or embedding
 * request becomes an HTTP request, and how an answer — whole or streamed —
 * becomes a th_llm_response. Pure functions over bytes: no sockets, no
 * threads, so every format is tested against the providers' documented
 * examples without a network.
 *
 *   openai     POST {base}/chat/completions, SSE "data:" chunks ending with
 *              "data: [DONE]"; tool_calls deltas by index; usage from
 *              stream_options.include_usage.
 *   anthropic  POST {base}/v1/messages, SSE named events (message_start,
 *              content_block_start/delta/stop, message_delta, message_stop,
 *              ping, error); tool_use blocks with input_json_delta.
 *   ollama     POST {base}/api/chat, NDJSON lines ending with "done": true;
 *              POST {base}/api/embed.
 *   mock       no HTTP: th__mock_chat answers from the request itself.
 *
 * A stream that ends without its terminator ([DONE], message_stop,
 * "done": true) is a failure (TH_EUPSTREAM).
 */
#ifndef TH_LLM_WIRE_H
#define TH_LLM_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "taskhive/llm.h"

/* Longest line a stream may send (an SSE line or an NDJSON line). */
#define TH__LLM_LINE_MAX ((size_t)4 << 20)
/* Largest whole (non-streamed) answer body kept. */
#define TH__LLM_BODY_MAX ((size_t)32 << 20)

/* One HTTP request to send. Free with th__llm_http_free. */
typedef struct th__llm_http {
    char *url;      /* th__free */
    char **headers; /* "Name: value" lines, NULL-terminated; th__free each and the array */
    char *body;     /* JSON text, th__free; NULL for GET */
} th__llm_http;

void th__llm_http_free(th__llm_http *h);

/* What the wire layer needs to build a request: the caller's request with
 * the target resolved. */
typedef struct th__llm_wire_req {
    th_llm_format format;
    const char *base_url; /* without a trailing '/' */
    const char *api_key;  /* may be NULL */
    const char *anthropic_version;
    const char *model;
    const th_llm_request *req;
} th__llm_wire_req;

/* The format's default base URL and model; static strings. */
const char *th__llm_default_base_url(th_llm_format f);
const char *th__llm_default_model(th_llm_format f);

/* Builds the chat request (streamed when w->req->stream). TH_EINVAL with
 * err->field for a request the format cannot express (e.g. a tool message
 * without tool_call_id for openai), TH_ENOMEM. Not for mock. */
int th__llm_chat_http(const th__llm_wire_req *w, th__llm_http *out, th_error *err);

/* Parses a whole (non-streamed) 2xx answer body into `out` (text, tool
 * calls, finish reason, usage; provider/model/cost are the caller's).
 * TH_EUPSTREAM with a message for malformed JSON or a missing field. */
int th__llm_parse_chat(th_llm_format f, const char *body, size_t len, th_llm_response *out,
                       th_error *err);

/* The error message of a non-2xx answer body ("Rate limit reached ...");
 * writes a short description of the body when it has no known shape. */
void th__llm_error_message(th_llm_format f, int status, const char *body, size_t len, char *buf,
                           size_t cap);

/* ---- streams ------------------------------------------------------------ */

typedef struct th__llm_stream th__llm_stream;

/* Text deltas as they are parsed. */
typedef void (*th__llm_delta_fn)(const char *text, size_t len, void *ud);

/* A parser for one streamed answer of format `f`, filling `out` as it goes
 * (text accumulates; tool calls, finish reason and usage are set when their
 * chunks arrive). NULL on OOM. Free with th__llm_stream_free. */
th__llm_stream *th__llm_stream_new(th_llm_format f, th_llm_response *out, th__llm_delta_fn on_delta,
                                   void *ud);
/* Feeds bytes as they arrive (any split). Returns 0, or TH_EUPSTREAM
 * (malformed chunk, an error event, a line over TH__LLM_LINE_MAX) with err. */
int th__llm_stream_feed(th__llm_stream *s, const char *data, size_t len, th_error *err);
/* The transfer ended: 0 when the terminator was seen, otherwise
 * TH_EUPSTREAM ("stream ended without [DONE]"). */
int th__llm_stream_end(th__llm_stream *s, th_error *err);
/* 1 once any content (text or tool-call data) was parsed. */
int th__llm_stream_started(const th__llm_stream *s);
void th__llm_stream_free(th__llm_stream *s);

/* ---- embeddings and health ---------------------------------------------- */

/* Builds an embedding request for `n` texts (openai /embeddings, ollama
 * /api/embed). TH_EINVAL for anthropic (no embeddings API). */
int th__llm_embed_http(const th__llm_wire_req *w, const char *const *texts, size_t n,
                       th__llm_http *out, th_error *err);
/* Parses an embedding answer: n vectors of *dim floats into *vectors
 * (th__free), usage when present. TH_EUPSTREAM when malformed or when the
 * count or dimensions disagree. */
int th__llm_parse_embed(th_llm_format f, const char *body, size_t len, size_t n, float **vectors,
                        int *dim, th_llm_usage *usage, th_error *err);
/* A cheap GET that tells whether the provider answers: openai
 * {base}/models, anthropic {base}/v1/models, ollama {base}/api/tags. */
int th__llm_health_http(th_llm_format f, const char *base_url, const char *api_key,
                        const char *anthropic_version, th__llm_http *out);

/* ---- rate-limit headers ------------------------------------------------- */

/* The longest wait a header may ask for (a day); larger values, and dates
 * further away, are clamped to it, so no arithmetic on them overflows. */
#define TH__LLM_WAIT_MAX_MS ((int64_t)86400000)

/* What the provider's response headers say about when to try again. */
typedef struct th__llm_limits {
    int64_t retry_after_ms;     /* Retry-After (seconds or HTTP date) or retry-after-ms; -1 none */
    int64_t requests_remaining; /* x-ratelimit-remaining-requests /
                                   anthropic-ratelimit-requests-remaining; -1 none */
    int64_t tokens_remaining;   /* ...-remaining-tokens; -1 none */
    int64_t requests_reset_ms;  /* ms from now until the request budget resets; -1 none */
    int64_t tokens_reset_ms;    /* ms from now until the token budget resets; -1 none */
} th__llm_limits;

void th__llm_limits_init(th__llm_limits *l);
/* Reads one raw header line ("Name: value\r\n", as curl delivers it) into
 * `l`; `now_ms` is the wall clock, for absolute times (HTTP dates,
 * anthropic's RFC 3339 reset times). Unknown headers are ignored. */
void th__llm_limits_header(th__llm_limits *l, const char *line, size_t len, int64_t now_ms);

/* ---- mock --------------------------------------------------------------- */

/* The mock model's answer to `w->req`: deterministic in the request. The
 * text says which model answered and echoes the last user message; when
 * the request offers tools and the last user message contains
 * "[[tool:NAME {json}]]" (and no tool result follows it), the answer is a
 * call of NAME with those arguments instead. Usage counts tokens as
 * whitespace-separated words. Fills `out` (text, tool calls, finish
 * reason, usage). */
int th__mock_chat(const th__llm_wire_req *w, th_llm_response *out, th_error *err);
/* Splits a mock answer's text into the chunks it streams (one word and its
 * trailing space each): returns the length of the chunk starting at
 * text[off], 0 at the end. */
size_t th__mock_chunk(const char *text, size_t off);
/* Deterministic embeddings: a hashed bag of lower-cased words, normalised,
 * dimension TH__MOCK_EMBED_DIM; texts sharing words are similar. */
#define TH__MOCK_EMBED_DIM 64
int th__mock_embed(const char *const *texts, size_t n, float **vectors, int *dim,
                   th_llm_usage *usage);

/* Estimated tokens of a request before it is sent (for token buckets and
 * budgets): about 4 bytes a token over every text, plus max_tokens. */
int64_t th__llm_estimate_tokens(const th_llm_request *req);

#endif
