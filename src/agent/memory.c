/*
 * Agent memory: texts with embedding vectors, searched by cosine similarity.
 *
 * Every memory is held in an array in memory (the vector with its norm) and
 * in one SQLite table, `memories`, written on each add and delete and read
 * whole on open. Search is a linear scan: the memories of one namespace that
 * have the query's dimension are scored and the best k kept. Vectors are
 * stored as float BLOBs in the machine's byte order.
 *
 * Embedding runs outside the lock (it may be a network call); `mu` guards
 * the array and the database handle, and is a leaf lock.
 */
#include "agent/agent_impl.h"

#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"

typedef struct entry {
    int64_t id;
    char *ns, *text, *meta;
    int64_t created_at;
    int dim;
    float *vec;
    double norm;
} entry;

struct th_memory {
    pthread_mutex_t mu;
    sqlite3 *db;
    entry *v;
    size_t n, cap;
    th_embed_fn embed;
    void *ud;
    void (*ud_free)(void *ud);
};

static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS memories ("
    " id INTEGER PRIMARY KEY, ns TEXT NOT NULL, text TEXT NOT NULL, metadata TEXT,"
    " created_at INTEGER NOT NULL, dim INTEGER NOT NULL, embedding BLOB NOT NULL);";

static void entry_clear(entry *e)
{
    th__free(e->ns);
    th__free(e->text);
    th__free(e->meta);
    th__free(e->vec);
}

static double norm_of(const float *v, int dim)
{
    double s = 0;
    for (int i = 0; i < dim; i++)
        s += (double)v[i] * v[i];
    return sqrt(s);
}

/* Appends *e (taking its strings) to the array; TH_ENOMEM leaves e alone. */
static int push_entry(th_memory *m, entry *e)
{
    if (th__agent_grow((void **)&m->v, &m->cap, m->n, sizeof *m->v))
        return TH_ENOMEM;
    m->v[m->n++] = *e;
    return 0;
}

static int db_error(th_memory *m, th_error *err, int code, const char *what)
{
    return th__err(err, code, "memory", "%s: %s", what, m->db ? sqlite3_errmsg(m->db) : "no db");
}

/* Reads one row into *e; TH_ECORRUPT for a blob that does not match dim. */
static int load_row(sqlite3_stmt *st, entry *e)
{
    memset(e, 0, sizeof *e);
    e->id = sqlite3_column_int64(st, 0);
    const char *ns = (const char *)sqlite3_column_text(st, 1);
    const char *text = (const char *)sqlite3_column_text(st, 2);
    const char *meta = (const char *)sqlite3_column_text(st, 3);
    e->created_at = sqlite3_column_int64(st, 4);
    e->dim = sqlite3_column_int(st, 5);
    const void *blob = sqlite3_column_blob(st, 6);
    size_t bytes = (size_t)sqlite3_column_bytes(st, 6);
    if (e->dim <= 0 || bytes != (size_t)e->dim * sizeof(float) || !blob)
        return TH_ECORRUPT;
    e->ns = th__strdup(ns ? ns : "");
    e->text = th__strdup(text ? text : "");
    e->meta = meta ? th__strdup(meta) : NULL;
    e->vec = th__malloc(bytes);
    if (!e->ns || !e->text || (meta && !e->meta) || !e->vec) {
        entry_clear(e);
        return TH_ENOMEM;
    }
    memcpy(e->vec, blob, bytes);
    e->norm = norm_of(e->vec, e->dim);
    return 0;
}

static int load_all(th_memory *m, th_error *err)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(m->db,
                           "SELECT id, ns, text, metadata, created_at, dim, embedding"
                           " FROM memories ORDER BY id",
                           -1, &st, NULL) != SQLITE_OK)
        return db_error(m, err, TH_ECORRUPT, "reading memories");
    int rc = 0, s;
    while (!rc && (s = sqlite3_step(st)) == SQLITE_ROW) {
        entry e;
        if ((rc = load_row(st, &e)) == 0 && (rc = push_entry(m, &e)))
            entry_clear(&e);
    }
    if (!rc && s != SQLITE_DONE)
        rc = db_error(m, err, TH_EIO, "reading memories");
    else if (rc == TH_ECORRUPT)
        th__err(err, rc, "memory", "a stored embedding does not match its dimension");
    else if (rc == TH_ENOMEM)
        th__err(err, rc, "", "out of memory");
    sqlite3_finalize(st);
    return rc;
}

th_memory *th__memory_open(const char *path, th_embed_fn embed, void *ud, void (*ud_free)(void *ud),
                           th_error *err)
{
    th_memory *m = th__calloc(1, sizeof *m);
    if (!m) {
        th__err(err, TH_ENOMEM, "", "out of memory");
        goto fail_ud;
    }
    m->embed = embed;
    m->ud = ud;
    m->ud_free = ud_free;
    if (!embed) {
        th__err(err, TH_EINVAL, "embed", "memory needs an embedding function");
        goto fail_mem;
    }
    if (pthread_mutex_init(&m->mu, NULL)) {
        th__err(err, TH_ENOMEM, "", "cannot make a mutex");
        goto fail_mem;
    }
    const char *file = path && *path ? path : ":memory:";
    if (sqlite3_open_v2(file, &m->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK) {
        db_error(m, err, TH_EIO, "opening memory");
        goto fail_db;
    }
    sqlite3_busy_timeout(m->db, 5000);
    if (sqlite3_exec(m->db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(m->db, schema_sql, NULL, NULL, NULL) != SQLITE_OK) {
        db_error(m, err, TH_ECORRUPT, "preparing memory");
        goto fail_db;
    }
    if (load_all(m, err))
        goto fail_db;
    return m;
fail_db:
    for (size_t i = 0; i < m->n; i++)
        entry_clear(&m->v[i]);
    th__free(m->v);
    sqlite3_close(m->db);
    pthread_mutex_destroy(&m->mu);
fail_mem:
    th__free(m);
fail_ud:
    if (ud_free)
        ud_free(ud);
    return NULL;
}

th_memory *th_memory_open(const char *path, th_embed_fn embed, void *ud, th_error *err)
{
    return th__memory_open(path, embed, ud, NULL, err);
}

void th_memory_free(th_memory *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n; i++)
        entry_clear(&m->v[i]);
    th__free(m->v);
    sqlite3_close(m->db);
    pthread_mutex_destroy(&m->mu);
    if (m->ud_free)
        m->ud_free(m->ud);
    th__free(m);
}

/* Embeds one text into a th__ copy (*vec, *dim). */
static int embed_one(th_memory *m, const char *text, float **vec, int *dim, th_error *err)
{
    float *raw = NULL;
    *vec = NULL;
    *dim = 0;
    const char *texts[1] = {text};
    int rc = m->embed(texts, 1, &raw, dim, err, m->ud);
    if (rc)
        return rc;
    if (!raw || *dim <= 0 || *dim > 65536) {
        free(raw);
        return th__err(err, TH_EUPSTREAM, "embedding", "the embedder returned no vector");
    }
    *vec = th__malloc((size_t)*dim * sizeof **vec);
    if (*vec)
        memcpy(*vec, raw, (size_t)*dim * sizeof **vec);
    free(raw);
    return *vec ? 0 : th__err(err, TH_ENOMEM, "", "out of memory");
}

static int insert_row(th_memory *m, const entry *e, th_error *err)
{
    sqlite3_stmt *st = NULL;
    int rc = 0;
    if (sqlite3_prepare_v2(m->db,
                           "INSERT INTO memories (ns, text, metadata, created_at, dim, embedding)"
                           " VALUES (?, ?, ?, ?, ?, ?)",
                           -1, &st, NULL) != SQLITE_OK)
        return db_error(m, err, TH_EIO, "storing a memory");
    sqlite3_bind_text(st, 1, e->ns, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, e->text, -1, SQLITE_STATIC);
    if (e->meta)
        sqlite3_bind_text(st, 3, e->meta, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, e->created_at);
    sqlite3_bind_int(st, 5, e->dim);
    sqlite3_bind_blob(st, 6, e->vec, (int)((size_t)e->dim * sizeof(float)), SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = db_error(m, err, TH_EIO, "storing a memory");
    sqlite3_finalize(st);
    return rc;
}

int th_memory_add(th_memory *m, const char *ns, const char *text, const char *metadata,
                  int64_t *id_out, th_error *err)
{
    if (!text || !*text)
        return th__err(err, TH_EINVAL, "text", "must not be empty");
    if (metadata) {
        json_t *v = th__agent_parse(metadata);
        int ok = json_is_object(v);
        json_decref(v);
        if (!ok)
            return th__err(err, TH_EINVAL, "metadata", "must be a JSON object");
    }
    entry e = {.created_at = th__wall_ms()};
    int rc = embed_one(m, text, &e.vec, &e.dim, err);
    if (rc)
        return rc;
    e.ns = th__strdup(ns ? ns : "");
    e.text = th__strdup(text);
    e.meta = metadata ? th__strdup(metadata) : NULL;
    if (!e.ns || !e.text || (metadata && !e.meta)) {
        rc = th__err(err, TH_ENOMEM, "", "out of memory");
        goto done;
    }
    e.norm = norm_of(e.vec, e.dim);
    pthread_mutex_lock(&m->mu);
    /* Room first, so a stored row always has its place in the array. */
    rc = th__agent_grow((void **)&m->v, &m->cap, m->n, sizeof *m->v);
    if (rc)
        rc = th__err(err, rc, "", "out of memory");
    else if ((rc = insert_row(m, &e, err)) == 0) {
        e.id = sqlite3_last_insert_rowid(m->db);
        push_entry(m, &e);
        if (id_out)
            *id_out = e.id;
    }
    pthread_mutex_unlock(&m->mu);
done:
    if (rc)
        entry_clear(&e);
    return rc;
}

typedef struct scored {
    double score;
    size_t at;
} scored;

static int by_score(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->score != y->score)
        return x->score < y->score ? 1 : -1;
    return x->at < y->at ? 1 : -1; /* newer first among equals */
}

static double cosine(const float *a, const float *b, int dim, double na, double nb)
{
    if (na == 0 || nb == 0)
        return 0;
    double dot = 0;
    for (int i = 0; i < dim; i++)
        dot += (double)a[i] * b[i];
    return dot / (na * nb);
}

void th_memory_hits_free(th_memory_hit *hits, size_t n)
{
    for (size_t i = 0; hits && i < n; i++) {
        th__free(hits[i].ns);
        th__free(hits[i].text);
        th__free(hits[i].metadata);
    }
    th__free(hits);
}

/* Copies the best `k` of `sc` into a new hit array. Under mu. */
static int copy_hits(th_memory *m, const scored *sc, size_t k, th_memory_hit **hits)
{
    th_memory_hit *h = th__calloc(k ? k : 1, sizeof *h);
    if (!h)
        return TH_ENOMEM;
    for (size_t i = 0; i < k; i++) {
        const entry *e = &m->v[sc[i].at];
        h[i].id = e->id;
        h[i].created_at = e->created_at;
        h[i].score = sc[i].score;
        h[i].ns = th__strdup(e->ns);
        h[i].text = th__strdup(e->text);
        h[i].metadata = e->meta ? th__strdup(e->meta) : NULL;
        if (!h[i].ns || !h[i].text || (e->meta && !h[i].metadata)) {
            th_memory_hits_free(h, i + 1);
            return TH_ENOMEM;
        }
    }
    *hits = h;
    return 0;
}

int th_memory_search(th_memory *m, const char *ns, const char *query, size_t k,
                     th_memory_hit **hits, size_t *n, th_error *err)
{
    *hits = NULL;
    *n = 0;
    if (!query || !*query)
        return th__err(err, TH_EINVAL, "query", "must not be empty");
    float *q;
    int dim, rc = embed_one(m, query, &q, &dim, err);
    if (rc)
        return rc;
    double qn = norm_of(q, dim);
    pthread_mutex_lock(&m->mu);
    scored *sc = th__malloc((m->n ? m->n : 1) * sizeof *sc);
    size_t count = 0;
    for (size_t i = 0; sc && i < m->n; i++) {
        const entry *e = &m->v[i];
        if (e->dim != dim || (ns && strcmp(e->ns, ns) != 0))
            continue;
        sc[count++] = (scored){cosine(q, e->vec, dim, qn, e->norm), i};
    }
    if (!sc) {
        rc = TH_ENOMEM;
    } else {
        qsort(sc, count, sizeof *sc, by_score);
        size_t take = count < k ? count : k;
        if ((rc = copy_hits(m, sc, take, hits)) == 0)
            *n = take;
    }
    pthread_mutex_unlock(&m->mu);
    th__free(sc);
    th__free(q);
    return rc ? th__err(err, rc, "", "out of memory") : 0;
}

int th_memory_delete(th_memory *m, int64_t id, th_error *err)
{
    int rc = TH_ENOTFOUND;
    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < m->n; i++) {
        if (m->v[i].id != id)
            continue;
        sqlite3_stmt *st = NULL;
        rc = 0;
        if (sqlite3_prepare_v2(m->db, "DELETE FROM memories WHERE id = ?", -1, &st, NULL) !=
            SQLITE_OK) {
            rc = db_error(m, err, TH_EIO, "deleting a memory");
            break;
        }
        sqlite3_bind_int64(st, 1, id);
        if (sqlite3_step(st) != SQLITE_DONE)
            rc = db_error(m, err, TH_EIO, "deleting a memory");
        sqlite3_finalize(st);
        if (!rc) {
            entry_clear(&m->v[i]);
            memmove(m->v + i, m->v + i + 1, (m->n - i - 1) * sizeof *m->v);
            m->n--;
        }
        break;
    }
    pthread_mutex_unlock(&m->mu);
    if (rc == TH_ENOTFOUND)
        th__err(err, rc, "id", "no memory %lld", (long long)id);
    return rc;
}

size_t th_memory_count(th_memory *m)
{
    pthread_mutex_lock(&m->mu);
    size_t n = m->n;
    pthread_mutex_unlock(&m->mu);
    return n;
}
