/*
 * Shared internals of the wire formats (private to src/llm/wire*.c): a
 * bounded byte buffer, the stream parser state with its SSE / NDJSON line
 * splitter, and the per-format entry points that wire.c dispatches to.
 */
#ifndef TH_LLM_WIRE_IMPL_H
#define TH_LLM_WIRE_IMPL_H

#include <jansson.h>
#include <stddef.h>

#include "core/error.h"
#include "llm/wire.h"

/* A growable byte buffer that never exceeds `max` bytes; always
 * NUL-terminated once anything was appended. */
typedef struct th__llm_buf {
    char *p;
    size_t len, cap, max;
} th__llm_buf;

/* Appends n bytes: 0, TH_ETOOBIG over max, TH_ENOMEM. */
int th__llm_buf_add(th__llm_buf *b, const char *s, size_t n);
void th__llm_buf_free(th__llm_buf *b);

/* A tool call being assembled from stream deltas. */
typedef struct th__llm_pcall {
    int index;
    char *id, *name;
    th__llm_buf args;
} th__llm_pcall;

struct th__llm_stream {
    th_llm_format format;
    th_llm_response *out;
    th__llm_delta_fn on_delta;
    void *ud;
    th__llm_buf line; /* the current, unfinished line */
    int skip_lf;      /* the last byte was '\r': a following '\n' ends nothing */
    char event[64];   /* SSE event name */
    th__llm_buf data; /* SSE data lines joined with '\n' */
    int has_data;
    th__llm_buf text; /* out->text points at text.p */
    th__llm_pcall *calls;
    size_t ncalls;
    int done, started, failed;
};

/* Appends streamed text to out->text and calls on_delta. */
int th__llm_stream_text(th__llm_stream *s, const char *t, size_t n, th_error *err);
/* The pending call with stream index `index`, made when new; NULL on OOM. */
th__llm_pcall *th__llm_stream_call(th__llm_stream *s, int index);
/* Moves the pending calls into out->tool_calls (empty arguments -> "{}"). */
int th__llm_stream_calls_finish(th__llm_stream *s, th_error *err);

/* Sets out->finish_reason from a provider's reason, normalised. */
void th__llm_set_finish(th_llm_response *out, const char *reason);
/* Copies jansson text into th__ memory and frees the original. */
char *th__llm_json_take(char *jtext);
/* Dumps `root` compactly into th__ memory; NULL on OOM. */
char *th__llm_dump(const json_t *root);
/* Parses a JSON object text; NULL when it is not one. New reference. */
json_t *th__llm_parse_object(const char *text);
/* A string member or NULL. */
const char *th__llm_jstr(const json_t *obj, const char *key);
/* Adds "Name: value" to a NULL-terminated header list (th__ memory). */
int th__llm_header(th__llm_http *h, const char *name, const char *value);
/* url = base + path (th__ memory). */
int th__llm_url(th__llm_http *h, const char *base, const char *path);
/* Sets h->body from root (consumes root). */
int th__llm_body(th__llm_http *h, json_t *root, th_error *err);
/* Appends a tool call (copies); TH_ENOMEM. */
int th__llm_add_call(th_llm_response *out, const char *id, const char *name, const char *args);
/* out->text = "" when still NULL. */
int th__llm_text_default(th_llm_response *out);

/* The tools array in OpenAI's shape (shared by ollama); NULL with err set
 * (TH_EINVAL naming tools[i].parameters, TH_ENOMEM). */
json_t *th__openai_tools(const th_llm_request *req, th_error *err);
/* Fills err with "out of memory" and gives TH_ENOMEM. */
#define NOMEM(err) th__err(err, TH_ENOMEM, "", "out of memory")

/* Builds one message of an OpenAI-shaped body; NULL with err set. */
typedef json_t *(*th__llm_message_fn)(const th_llm_message *m, size_t i, th_error *err);
/* The start of an OpenAI-shaped chat body (shared by ollama): model, the
 * system prompt as the first message, every message made by `message`, and
 * the tools. Returns the new object, or NULL with the code in *rc (err
 * filled). */
json_t *th__openai_like_body(const th__llm_wire_req *w, th__llm_message_fn make_message, int *rc,
                             th_error *err);
/* Adds "Authorization: Bearer KEY" when key is set. */
int th__llm_bearer(th__llm_http *h, const char *key);

/* Per-format entry points (see wire.h for the contracts). */
int th__openai_chat_http(const th__llm_wire_req *w, th__llm_http *out, th_error *err);
int th__openai_parse_chat(const char *body, size_t len, th_llm_response *out, th_error *err);
int th__openai_event(th__llm_stream *s, const char *event, const char *data, size_t len,
                     th_error *err);
int th__openai_error(const json_t *root, char *buf, size_t cap);

int th__anthropic_chat_http(const th__llm_wire_req *w, th__llm_http *out, th_error *err);
int th__anthropic_parse_chat(const char *body, size_t len, th_llm_response *out, th_error *err);
int th__anthropic_event(th__llm_stream *s, const char *event, const char *data, size_t len,
                        th_error *err);

int th__ollama_chat_http(const th__llm_wire_req *w, th__llm_http *out, th_error *err);
int th__ollama_parse_chat(const char *body, size_t len, th_llm_response *out, th_error *err);
int th__ollama_line(th__llm_stream *s, const char *line, size_t len, th_error *err);

#endif
