/*
 * Call objects of the LLM gateway: a deep copy of the caller's request in
 * one allocation (so a call outlives the caller's buffers), the intrusive
 * lists calls wait in, and the delta buffer a waiting caller drains.
 */
#include "llm/gateway.h"

#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"

/* A bump allocator over one block: the first pass (base == NULL) only
 * measures, the second copies. */
typedef struct arena {
    char *base;
    size_t off;
} arena;

static void *take(arena *a, size_t n)
{
    size_t at = (a->off + 15) & ~(size_t)15;
    a->off = at + n;
    return a->base ? a->base + at : NULL;
}

static const char *str(arena *a, const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = take(a, n);
    if (d)
        memcpy(d, s, n);
    return d;
}

/* Copies `src` into `dst` through `a`; in the measuring pass only sizes. */
static void copy_request(arena *a, const th_llm_request *src, th_llm_request *dst)
{
    *dst = *src;
    th_llm_target *t = take(a, src->ntargets * sizeof *t);
    for (size_t i = 0; t && i < src->ntargets; i++)
        t[i] = (th_llm_target){0};
    for (size_t i = 0; i < src->ntargets; i++) {
        const char *pv = str(a, src->targets[i].provider), *m = str(a, src->targets[i].model);
        if (t) {
            t[i].provider = pv;
            t[i].model = m;
        }
    }
    dst->targets = t;
    dst->system = str(a, src->system);
    th_llm_message *m = take(a, src->nmessages * sizeof *m);
    for (size_t i = 0; i < src->nmessages; i++) {
        const th_llm_message *s = &src->messages[i];
        th_llm_tool_call *tc = take(a, s->ntool_calls * sizeof *tc);
        for (size_t k = 0; k < s->ntool_calls; k++) {
            char *id = (char *)str(a, s->tool_calls[k].id);
            char *name = (char *)str(a, s->tool_calls[k].name);
            char *args = (char *)str(a, s->tool_calls[k].arguments);
            if (tc)
                tc[k] = (th_llm_tool_call){.id = id, .name = name, .arguments = args};
        }
        const char *content = str(a, s->content);
        const char *tcid = str(a, s->tool_call_id), *tname = str(a, s->tool_name);
        if (m)
            m[i] = (th_llm_message){.role = s->role,
                                    .content = content,
                                    .tool_calls = tc,
                                    .ntool_calls = s->ntool_calls,
                                    .tool_call_id = tcid,
                                    .tool_name = tname};
    }
    dst->messages = m;
    th_llm_tool_def *td = take(a, src->ntools * sizeof *td);
    for (size_t i = 0; i < src->ntools; i++) {
        const char *n = str(a, src->tools[i].name), *d = str(a, src->tools[i].description);
        const char *pa = str(a, src->tools[i].parameters);
        if (td)
            td[i] = (th_llm_tool_def){.name = n, .description = d, .parameters = pa};
    }
    dst->tools = td;
    dst->agent = str(a, src->agent);
}

struct th_llm_call *th__llm_call_new(th_llm_gateway *gw, th__llm_call_kind kind,
                                     const th_llm_request *req, th_error *err)
{
    struct th_llm_call *c = th__calloc(1, sizeof *c);
    if (!c)
        goto nomem;
    c->gw = gw;
    c->kind = kind;
    c->heap_idx = TH_HEAP_NONE;
    c->rsv[0] = c->rsv[1] = c->rsv[2] = -1;
    c->dim = 0;
    c->deltas.max = TH__LLM_BODY_MAX;
    atomic_init(&c->cancel, 0);
    if (req) {
        arena a = {0};
        th_llm_request tmp;
        copy_request(&a, req, &tmp);
        if (!(c->mem = th__malloc(a.off ? a.off : 1)))
            goto nomem;
        a = (arena){.base = c->mem};
        copy_request(&a, req, &c->req);
    }
    if (pthread_mutex_init(&c->mu, NULL) != 0)
        goto nomem_mem;
    if (th__cond_init_mono(&c->cv) != 0) {
        pthread_mutex_destroy(&c->mu);
        goto nomem_mem;
    }
    c->start_ns = th__mono_ns();
    return c;
nomem_mem:
    th__free(c->mem);
nomem:
    th__free(c);
    th__err(err, TH_ENOMEM, "", "out of memory");
    return NULL;
}

int th__llm_call_set_texts(struct th_llm_call *c, const char *const *texts, size_t n)
{
    size_t total = n * sizeof(char *);
    for (size_t i = 0; i < n; i++)
        total += strlen(texts[i] ? texts[i] : "") + 1;
    char **v = th__malloc(total ? total : 1);
    if (!v)
        return TH_ENOMEM;
    char *p = (char *)(v + n);
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(texts[i] ? texts[i] : "") + 1;
        memcpy(p, texts[i] ? texts[i] : "", len);
        v[i] = p;
        p += len;
    }
    c->texts = v;
    c->ntexts = n;
    return 0;
}

void th__llm_call_destroy(struct th_llm_call *c)
{
    if (!c)
        return;
    th_llm_response_free(&c->resp);
    th__llm_stream_free(c->stream);
    th__llm_buf_free(&c->body);
    th__llm_buf_free(&c->deltas);
    th__llm_http_free(&c->http);
    if (c->hdrs)
        curl_slist_free_all(c->hdrs);
    th__free(c->vectors);
    th__free(c->texts);
    th__free(c->mem);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    th__free(c);
}

void th__llm_call_push_delta(struct th_llm_call *c, const char *text, size_t len)
{
    if (!c->want_deltas || !len)
        return;
    pthread_mutex_lock(&c->mu);
    /* A caller that stopped draining loses deltas past the body limit,
     * never the answer, which is kept separately. */
    (void)th__llm_buf_add(&c->deltas, text, len);
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

void th__llm_list_push(th__llm_call_list *l, struct th_llm_call *c)
{
    c->next = NULL;
    c->prev = l->tail;
    if (l->tail)
        l->tail->next = c;
    else
        l->head = c;
    l->tail = c;
    l->n++;
}

void th__llm_list_push_front(th__llm_call_list *l, struct th_llm_call *c)
{
    c->prev = NULL;
    c->next = l->head;
    if (l->head)
        l->head->prev = c;
    else
        l->tail = c;
    l->head = c;
    l->n++;
}

void th__llm_list_remove(th__llm_call_list *l, struct th_llm_call *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        l->tail = c->prev;
    c->next = c->prev = NULL;
    l->n--;
}

struct th_llm_call *th__llm_list_pop(th__llm_call_list *l)
{
    struct th_llm_call *c = l->head;
    if (c)
        th__llm_list_remove(l, c);
    return c;
}
