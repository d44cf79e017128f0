/*
 * Memory embedding through the LLM gateway: th_memory_open_llm wraps
 * th_llm_embed as the memory's embedding function.
 */
#include "agent/agent_impl.h"

#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"

typedef struct llm_embedder {
    th_llm_gateway *gw;
    char *provider, *model;
} llm_embedder;

static void embedder_free(void *ud)
{
    llm_embedder *x = ud;
    if (!x)
        return;
    th__free(x->provider);
    th__free(x->model);
    th__free(x);
}

/* The gateway's vectors are copied into malloc memory, as th_embed_fn
 * promises its caller. */
static int llm_embed(const char *const *texts, size_t n, float **vectors, int *dim, th_error *err,
                     void *ud)
{
    llm_embedder *x = ud;
    float *v = NULL;
    th_llm_usage usage;
    int rc = th_llm_embed(x->gw, x->provider, x->model, texts, n, &v, dim, &usage, err);
    if (rc)
        return rc;
    size_t bytes = n * (size_t)(*dim > 0 ? *dim : 0) * sizeof *v;
    *vectors = malloc(bytes ? bytes : 1);
    if (*vectors && bytes)
        memcpy(*vectors, v, bytes);
    th_llm_free(v);
    return *vectors ? 0 : th__err(err, TH_ENOMEM, "", "out of memory");
}

th_memory *th_memory_open_llm(const char *path, th_llm_gateway *gw, const char *provider,
                              const char *model, th_error *err)
{
    if (!gw || !provider || !*provider) {
        th__err(err, TH_EINVAL, gw ? "provider" : "gateway", "required");
        return NULL;
    }
    llm_embedder *x = th__calloc(1, sizeof *x);
    if (x) {
        x->gw = gw;
        x->provider = th__strdup(provider);
        x->model = model ? th__strdup(model) : NULL;
    }
    if (!x || !x->provider || (model && !x->model)) {
        embedder_free(x);
        th__err(err, TH_ENOMEM, "", "out of memory");
        return NULL;
    }
    return th__memory_open(path, llm_embed, x, embedder_free, err);
}
