/*
 * The mock model: answers offline and deterministically from the request
 * itself, asks for a tool when the user writes "[[tool:NAME {json}]]", and
 * makes bag-of-words embeddings. Used by tests and demos.
 */
#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "llm/wire_impl.h"

static int64_t words(const char *s)
{
    int64_t n = 0;
    int in = 0;
    for (; s && *s; s++) {
        int sp = isspace((unsigned char)*s);
        if (!sp && !in)
            n++;
        in = !sp;
    }
    return n;
}

/* Finds "[[tool:NAME {json}]]" in text: name into name[cap], the arguments
 * as compact JSON (th__ memory) into *args. 1 found, 0 not, TH_ENOMEM. */
static int find_tool(const char *text, char *name, size_t cap, char **args)
{
    for (const char *p = strstr(text, "[[tool:"); p; p = strstr(p + 1, "[[tool:")) {
        const char *n = p + 7, *e = n;
        while (*e && (isalnum((unsigned char)*e) || *e == '_' || *e == '-' || *e == '.'))
            e++;
        if (e == n || (size_t)(e - n) >= cap)
            continue;
        const char *q = e;
        while (*q == ' ')
            q++;
        json_t *j = NULL;
        if (*q == '{') {
            json_error_t je;
            j = json_loads(q, JSON_DISABLE_EOF_CHECK, &je);
            if (!json_is_object(j)) {
                json_decref(j);
                continue;
            }
            q += je.position;
            while (*q == ' ')
                q++;
        }
        if (strncmp(q, "]]", 2) != 0) {
            json_decref(j);
            continue;
        }
        memcpy(name, n, (size_t)(e - n));
        name[e - n] = '\0';
        *args = j ? th__llm_dump(j) : th__strdup("{}");
        json_decref(j);
        return *args ? 1 : TH_ENOMEM;
    }
    return 0;
}

int th__mock_chat(const th__llm_wire_req *w, th_llm_response *out, th_error *err)
{
    const th_llm_request *r = w->req;
    const char *model = w->model && *w->model ? w->model : th__llm_default_model(TH_LLM_MOCK);
    size_t last_user = SIZE_MAX;
    int64_t in = words(r->system);
    for (size_t i = 0; i < r->nmessages; i++) {
        in += words(r->messages[i].content);
        if (r->messages[i].role == TH_LLM_USER)
            last_user = i;
    }
    const char *said = last_user != SIZE_MAX && r->messages[last_user].content
                           ? r->messages[last_user].content
                           : "";
    int tool_follows = 0;
    for (size_t i = last_user == SIZE_MAX ? 0 : last_user + 1; i < r->nmessages; i++)
        if (r->messages[i].role == TH_LLM_TOOL)
            tool_follows = 1;

    char name[64];
    char *args = NULL;
    int found = r->ntools && !tool_follows ? find_tool(said, name, sizeof name, &args) : 0;
    if (found < 0)
        goto nomem;
    if (found) {
        char id[32];
        uint32_t h = 2166136261u;
        for (const char *p = said; *p; p++)
            h = (h ^ (unsigned char)*p) * 16777619u;
        snprintf(id, sizeof id, "call_mock_%08x", h);
        int rc = th__llm_add_call(out, id, name, args);
        th__free(args);
        if (rc < 0 || !(out->text = th__strdup("")))
            goto nomem;
        snprintf(out->finish_reason, sizeof out->finish_reason, "tool_calls");
        out->usage.output_tokens = 1 + words(out->tool_calls[0].arguments);
    } else {
        /* After tool results, the answer also reports the last one. */
        const char *result = NULL;
        if (tool_follows)
            for (size_t i = last_user + 1; i < r->nmessages; i++)
                if (r->messages[i].role == TH_LLM_TOOL)
                    result = r->messages[i].content ? r->messages[i].content : "";
        size_t len = strlen(model) + strlen(said) + (result ? strlen(result) : 0) + 64;
        if (!(out->text = th__malloc(len)))
            goto nomem;
        if (result)
            snprintf(out->text, len, "[%s] You said: %s Tool result: %s", model, said, result);
        else
            snprintf(out->text, len, "[%s] You said: %s", model, said);
        snprintf(out->finish_reason, sizeof out->finish_reason, "stop");
        out->usage.output_tokens = words(out->text);
    }
    out->usage.input_tokens = in;
    return 0;
nomem:
    th_llm_response_free(out);
    return th__err(err, TH_ENOMEM, "", "out of memory");
}

size_t th__mock_chunk(const char *text, size_t off)
{
    size_t i = off;
    if (!text || !text[off])
        return 0;
    while (text[i] && isspace((unsigned char)text[i]))
        i++;
    while (text[i] && !isspace((unsigned char)text[i]))
        i++;
    while (text[i] && isspace((unsigned char)text[i]))
        i++;
    return i - off;
}

int th__mock_embed(const char *const *texts, size_t n, float **vectors, int *dim,
                   th_llm_usage *usage)
{
    float *v = th__calloc(n ? n : 1, TH__MOCK_EMBED_DIM * sizeof *v);
    if (!v)
        return TH_ENOMEM;
    int64_t tokens = 0;
    for (size_t i = 0; i < n; i++) {
        float *x = v + i * TH__MOCK_EMBED_DIM;
        const char *s = texts[i] ? texts[i] : "";
        while (*s) {
            if (!isalnum((unsigned char)*s)) {
                s++;
                continue;
            }
            uint32_t h = 2166136261u;
            for (; *s && isalnum((unsigned char)*s); s++)
                h = (h ^ (unsigned char)tolower((unsigned char)*s)) * 16777619u;
            x[h % TH__MOCK_EMBED_DIM] += 1.0f;
            tokens++;
        }
        double norm = 0;
        for (int k = 0; k < TH__MOCK_EMBED_DIM; k++)
            norm += (double)x[k] * x[k];
        if (norm > 0)
            for (int k = 0; k < TH__MOCK_EMBED_DIM; k++)
                x[k] = (float)(x[k] / sqrt(norm));
    }
    *vectors = v;
    *dim = TH__MOCK_EMBED_DIM;
    if (usage) {
        usage->input_tokens = tokens;
        usage->output_tokens = 0;
    }
    return 0;
}
