/*
 * Opening stores by uri, and the event buffer shared by every store.
 */
#include "store/store.h"

#include <stdatomic.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"

void th_store_options_init(th_store_options *o)
{
    memset(o, 0, sizeof *o);
    o->durability = TH_DURABILITY_NORMAL;
}

static int has_suffix(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

th_store *th_store_open(const char *uri, const th_store_options *opts, th_error *err)
{
    th_store_options defaults;
    if (!opts) {
        th_store_options_init(&defaults);
        opts = &defaults;
    }
    if (!uri || !*uri) {
        th__err(err, TH_EINVAL, "store", "store uri is empty");
        return NULL;
    }
    if (opts->durability != TH_DURABILITY_NORMAL && opts->durability != TH_DURABILITY_FULL) {
        th__err(err, TH_EINVAL, "durability", "durability must be normal or full");
        return NULL;
    }
    if (strcmp(uri, "memory") == 0 || strcmp(uri, "memory:") == 0)
        return th__memory_store_new(err);
    if (strncmp(uri, "sqlite:", 7) == 0) {
        const char *path = uri + 7;
        if (strncmp(path, "//", 2) == 0)
            path += 2;
        if (!*path) {
            th__err(err, TH_EINVAL, "store", "sqlite store needs a path: sqlite:/path/to/file.db");
            return NULL;
        }
        return th__sqlite_store_open(path, opts, err);
    }
    if (strncmp(uri, "postgres://", 11) == 0 || strncmp(uri, "postgresql://", 13) == 0)
        return th__pg_store_open(uri, opts, err);
    if (has_suffix(uri, ".db") || has_suffix(uri, ".sqlite") || has_suffix(uri, ".sqlite3"))
        return th__sqlite_store_open(uri, opts, err);
    th__err(err, TH_EINVAL, "store",
            "unknown store '%s': use memory, sqlite:PATH, a path ending in .db or "
            "postgres://...",
            uri);
    return NULL;
}

void th_store_free(th_store *s)
{
    if (s)
        s->ops->free(s);
}

const char *th_store_kind(const th_store *s)
{
    return s->ops->kind;
}

void th__evbuf_init(th__evbuf *b, int record, _Atomic uint64_t *seq)
{
    memset(b, 0, sizeof *b);
    b->record = record && seq;
    b->seq = seq;
    b->deadline = INT64_MAX;
    b->ready = b->ready_inline;
    b->readycap = sizeof b->ready_inline / sizeof b->ready_inline[0];
}

void th__evbuf_reset(th__evbuf *b)
{
    for (size_t i = 0; i < b->n; i++)
        th__free(b->v[i].message);
    b->n = 0;
    b->nready = 0;
    b->ready_all = 0;
    b->deadline = INT64_MAX;
}

void th__evbuf_free(th__evbuf *b)
{
    th__evbuf_reset(b);
    th__free(b->v);
    if (b->ready != b->ready_inline)
        th__free(b->ready);
    b->v = NULL;
    b->cap = 0;
    b->ready = b->ready_inline;
    b->readycap = sizeof b->ready_inline / sizeof b->ready_inline[0];
}

void th__evbuf_add(th__evbuf *b, th_event_type type, const char *id, const char *queue,
                   th_task_state state, int attempt, int progress, const char *message, int64_t now)
{
    if (!b->record)
        return;
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16;
        th__ev *v = th__realloc(b->v, cap * sizeof *v);
        if (!v)
            return;
        b->v = v;
        b->cap = cap;
    }
    th__ev *e = &b->v[b->n++];
    e->seq = atomic_fetch_add(b->seq, 1) + 1;
    e->type = type;
    e->state = state;
    e->attempt = attempt;
    e->progress = progress;
    e->time_ms = now;
    memcpy(e->id, id, TH_ID_SIZE);
    e->queue = queue;
    e->message = message ? th__strdup(message) : NULL;
}

void th__evbuf_ready(th__evbuf *b, const char *queue)
{
    if (b->nready == b->readycap) {
        size_t cap = b->readycap * 2;
        const char **v = b->ready == b->ready_inline ? th__malloc(cap * sizeof *v)
                                                     : th__realloc(b->ready, cap * sizeof *v);
        if (!v) {
            b->ready_all = 1;
            return;
        }
        if (b->ready == b->ready_inline)
            memcpy(v, b->ready_inline, sizeof b->ready_inline);
        b->ready = v;
        b->readycap = cap;
    }
    b->ready[b->nready++] = queue;
}

void th__evbuf_deadline(th__evbuf *b, int64_t at)
{
    if (at < b->deadline)
        b->deadline = at;
}
