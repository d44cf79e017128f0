/*
 * Streamed answers: splits the bytes of a transfer into lines (on "\n",
 * "\r\n" or "\r", any split across feeds), assembles SSE events per the
 * EventSource spec (openai, anthropic) or takes NDJSON lines (ollama), and
 * hands each event or line to its format's parser. Every buffer is bounded
 * by TH__LLM_LINE_MAX.
 */
#include "llm/wire.h"

#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "llm/wire_impl.h"

th__llm_stream *th__llm_stream_new(th_llm_format f, th_llm_response *out, th__llm_delta_fn on_delta,
                                   void *ud)
{
    if (f == TH_LLM_MOCK || !out)
        return NULL;
    th__llm_stream *s = th__calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->format = f;
    s->out = out;
    s->on_delta = on_delta;
    s->ud = ud;
    s->line.max = TH__LLM_LINE_MAX;
    s->data.max = TH__LLM_LINE_MAX;
    s->text.max = TH__LLM_BODY_MAX;
    if (th__llm_buf_add(&s->text, "", 0) < 0) {
        th__free(s);
        return NULL;
    }
    /* `out` is the caller's zeroed response; its text is the stream's
     * buffer from now on, and stays with `out` after th__llm_stream_free. */
    out->text = s->text.p;
    return s;
}

void th__llm_stream_free(th__llm_stream *s)
{
    if (!s)
        return;
    /* out->text stays with the response. */
    th__llm_buf_free(&s->line);
    th__llm_buf_free(&s->data);
    for (size_t i = 0; i < s->ncalls; i++) {
        th__free(s->calls[i].id);
        th__free(s->calls[i].name);
        th__llm_buf_free(&s->calls[i].args);
    }
    th__free(s->calls);
    th__free(s);
}

int th__llm_stream_started(const th__llm_stream *s)
{
    return s ? s->started : 0;
}

int th__llm_stream_text(th__llm_stream *s, const char *t, size_t n, th_error *err)
{
    if (!n)
        return 0;
    int rc = th__llm_buf_add(&s->text, t, n);
    s->out->text = s->text.p;
    if (rc == TH_ENOMEM)
        return th__err(err, TH_ENOMEM, "", "out of memory");
    if (rc < 0)
        return th__err(err, TH_EUPSTREAM, "", "streamed text over %zu bytes", TH__LLM_BODY_MAX);
    s->started = 1;
    if (s->on_delta)
        s->on_delta(t, n, s->ud);
    return 0;
}

th__llm_pcall *th__llm_stream_call(th__llm_stream *s, int index)
{
    for (size_t i = 0; i < s->ncalls; i++)
        if (s->calls[i].index == index)
            return &s->calls[i];
    if (s->ncalls >= 1024)
        return NULL;
    th__llm_pcall *v = th__realloc(s->calls, (s->ncalls + 1) * sizeof *v);
    if (!v)
        return NULL;
    s->calls = v;
    th__llm_pcall *c = &v[s->ncalls++];
    memset(c, 0, sizeof *c);
    c->index = index;
    c->args.max = TH__LLM_LINE_MAX;
    s->started = 1;
    return c;
}

int th__llm_stream_calls_finish(th__llm_stream *s, th_error *err)
{
    for (size_t i = 0; i < s->ncalls; i++) {
        th__llm_pcall *c = &s->calls[i];
        if (th__llm_add_call(s->out, c->id, c->name, c->args.p) < 0)
            return th__err(err, TH_ENOMEM, "", "out of memory");
        th__free(c->id);
        th__free(c->name);
        c->id = c->name = NULL; /* th__llm_stream_free may still run over them */
        th__llm_buf_free(&c->args);
    }
    th__free(s->calls);
    s->calls = NULL;
    s->ncalls = 0;
    return 0;
}

/* Dispatches the pending SSE event, if it has data. */
static int sse_dispatch(th__llm_stream *s, th_error *err)
{
    int rc = 0;
    if (s->has_data) {
        const char *data = s->data.p ? s->data.p : "";
        if (s->format == TH_LLM_OPENAI)
            rc = th__openai_event(s, s->event, data, s->data.len, err);
        else
            rc = th__anthropic_event(s, s->event, data, s->data.len, err);
    }
    s->event[0] = '\0';
    s->data.len = 0;
    if (s->data.p)
        s->data.p[0] = '\0';
    s->has_data = 0;
    return rc;
}

/* One complete SSE line (without its end). */
static int sse_line(th__llm_stream *s, const char *l, size_t n, th_error *err)
{
    if (n == 0)
        return sse_dispatch(s, err);
    if (l[0] == ':')
        return 0; /* comment */
    const char *colon = memchr(l, ':', n);
    size_t fn = colon ? (size_t)(colon - l) : n;
    const char *v = colon ? colon + 1 : l + n;
    size_t vn = (size_t)(l + n - v);
    if (vn && *v == ' ') {
        v++;
        vn--;
    }
    if (fn == 4 && !memcmp(l, "data", 4)) {
        int rc = 0;
        if (s->has_data)
            rc = th__llm_buf_add(&s->data, "\n", 1);
        if (!rc)
            rc = th__llm_buf_add(&s->data, v, vn);
        if (rc == TH_ENOMEM)
            return th__err(err, TH_ENOMEM, "", "out of memory");
        if (rc < 0)
            return th__err(err, TH_EUPSTREAM, "", "event over %zu bytes", TH__LLM_LINE_MAX);
        s->has_data = 1;
    } else if (fn == 5 && !memcmp(l, "event", 5)) {
        size_t k = vn < sizeof s->event - 1 ? vn : sizeof s->event - 1;
        memcpy(s->event, v, k);
        s->event[k] = '\0';
    }
    return 0; /* id, retry and unknown fields are ignored */
}

static int one_line(th__llm_stream *s, const char *l, size_t n, th_error *err)
{
    if (s->format == TH_LLM_OLLAMA)
        return n ? th__ollama_line(s, l, n, err) : 0;
    return sse_line(s, l, n, err);
}

int th__llm_stream_feed(th__llm_stream *s, const char *data, size_t len, th_error *err)
{
    if (s->failed)
        return th__err(err, TH_EUPSTREAM, "", "stream already failed");
    int rc = 0;
    size_t i = 0;
    while (i < len) {
        if (s->skip_lf) {
            s->skip_lf = 0;
            if (data[i] == '\n') {
                i++;
                continue;
            }
        }
        size_t j = i;
        while (j < len && data[j] != '\n' && data[j] != '\r')
            j++;
        if (j > i) {
            rc = th__llm_buf_add(&s->line, data + i, j - i);
            if (rc == TH_ENOMEM) {
                rc = th__err(err, TH_ENOMEM, "", "out of memory");
                goto fail;
            }
            if (rc < 0) {
                rc = th__err(err, TH_EUPSTREAM, "", "line over %zu bytes", TH__LLM_LINE_MAX);
                goto fail;
            }
        }
        if (j == len)
            break;
        s->skip_lf = data[j] == '\r';
        rc = one_line(s, s->line.p ? s->line.p : "", s->line.len, err);
        s->line.len = 0;
        if (rc < 0)
            goto fail;
        i = j + 1;
    }
    return 0;
fail:
    s->failed = 1;
    return rc;
}

int th__llm_stream_end(th__llm_stream *s, th_error *err)
{
    if (s->failed)
        return th__err(err, TH_EUPSTREAM, "", "stream failed");
    /* A last line without its end still counts (NDJSON often ends so);
     * an SSE event without its blank line is discarded, per the spec. */
    if (s->line.len && !s->done) {
        int rc = one_line(s, s->line.p, s->line.len, err);
        s->line.len = 0;
        if (rc < 0) {
            s->failed = 1;
            return rc;
        }
    }
    if (!s->done) {
        const char *term = s->format == TH_LLM_OPENAI      ? "[DONE]"
                           : s->format == TH_LLM_ANTHROPIC ? "message_stop"
                                                           : "\"done\": true";
        return th__err(err, TH_EUPSTREAM, "", "stream ended without %s", term);
    }
    if (th__llm_stream_calls_finish(s, err) < 0)
        return TH_ENOMEM;
    return 0;
}
