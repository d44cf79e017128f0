/*
 * libFuzzer target for what the daemon does with untrusted request bytes:
 * the first byte picks the path splitter or the submit path (jansson
 * decoding, th__spec_parse field by field, then the engine's own validation
 * and submit on a memory store). Any crash, sanitizer report or leak is a
 * bug; refusals are expected.
 *
 *   make fuzz                      # builds build/fuzz/fuzz_request and runs it
 *   build/fuzz/fuzz_request -max_total_time=60 tests/fuzz/corpus
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static th_engine *engine;
static unsigned inputs;

static void fresh_engine(void)
{
    th_engine_free(engine);
    th_engine_options o;
    th_engine_options_init(&o);
    o.manual_tick = 1;
    engine = th_engine_new(th_store_open("memory", NULL, NULL), &o, NULL);
    if (!engine)
        abort();
}

static void submit(json_t *body)
{
    char **owned = NULL;
    size_t nowned = 0;
    th_error err;
    json_t *tasks = json_object_get(body, "tasks");
    if (!tasks) {
        th_task_spec spec;
        char id[TH_ID_SIZE];
        if (th__spec_parse(body, "", &spec, &owned, &nowned, &err) == 0)
            th_engine_submit(engine, &spec, id, &err);
    } else if (json_is_array(tasks) && json_array_size(tasks) <= 64) {
        size_t n = json_array_size(tasks);
        th_task_spec specs[64];
        char ids[64][TH_ID_SIZE];
        int rc = 0;
        for (size_t i = 0; i < n && rc == 0; i++)
            rc = th__spec_parse(json_array_get(tasks, i), "tasks[].", &specs[i], &owned, &nowned,
                                &err);
        if (rc == 0 && n)
            th_engine_submit_batch(engine, specs, n, ids, &err);
    }
    th__json_owned_free(owned, nowned);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!engine || ++inputs % 5000 == 0)
        fresh_engine(); /* bounded memory: accepted tasks pile up */
    if (size == 0)
        return 0;
    if (data[0] & 1) {
        th__req q;
        memset(&q, 0, sizeof q);
        char path[600];
        size_t n = size - 1 < sizeof path - 1 ? size - 1 : sizeof path - 1;
        memcpy(path, data + 1, n);
        path[n] = '\0';
        th__path_split(&q, path);
        return 0;
    }
    json_t *v = json_loadb((const char *)data + 1, size - 1, JSON_REJECT_DUPLICATES, NULL);
    if (v && json_is_object(v))
        submit(v);
    json_decref(v);
    return 0;
}
