/*
 * The registry of agent definitions: a mutex-guarded array kept sorted by
 * name. Readers get copies, so a definition may be updated or deleted while
 * a run uses its own copy.
 *
 * Opened on a file (th_agents_open), the registry also writes every change
 * through to a SQLite table `agents` (name, definition as JSON) before it
 * changes the array, so a failed write changes nothing; the file is read
 * whole at open.
 */
#include "agent/agent_impl.h"

#include <pthread.h>
#include <sqlite3.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"

struct th_agents {
    pthread_mutex_t mu; /* guards v, n and db; a leaf lock */
    th_agent_def **v;
    size_t n, cap;
    const th_tools *tools;
    sqlite3 *db; /* NULL: not persisted */
};

enum { PUT_CREATE, PUT_UPDATE, PUT_ANY };

th_agents *th_agents_new(const th_tools *tools)
{
    th_agents *a = th__calloc(1, sizeof *a);
    if (!a)
        return NULL;
    if (pthread_mutex_init(&a->mu, NULL)) {
        th__free(a);
        return NULL;
    }
    a->tools = tools;
    return a;
}

void th_agents_free(th_agents *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->n; i++)
        th_agent_def_free(a->v[i]);
    th__free(a->v);
    sqlite3_close(a->db);
    pthread_mutex_destroy(&a->mu);
    th__free(a);
}

/* Index of `name`, or where it would go (*found 0). Under mu. */
static size_t locate(const th_agents *a, const char *name, int *found)
{
    size_t lo = 0, hi = a->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(a->v[mid]->name, name);
        if (c == 0) {
            *found = 1;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = 0;
    return lo;
}

/* Validates and copies `d`, outside the lock. */
static int prepare(th_agents *a, const th_agent_def *d, th_agent_def **copy, th_error *err)
{
    int rc = th_agent_def_validate(d, a->tools, err);
    if (rc)
        return rc;
    if (!(*copy = th_agent_def_copy(d)))
        return th__err(err, TH_ENOMEM, "", "out of memory");
    return 0;
}

/* ---- the file ------------------------------------------------------------- */

static int db_fail(th_agents *a, th_error *err, const char *what)
{
    return th__err(err, TH_EIO, "agents", "%s: %s", what, sqlite3_errmsg(a->db));
}

/* Runs `sql` with text parameters p1 (and p2 when not NULL). Under mu. */
static int db_exec(th_agents *a, const char *sql, const char *p1, const char *p2, th_error *err)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(a->db, sql, -1, &st, NULL) != SQLITE_OK)
        return db_fail(a, err, "writing agents");
    sqlite3_bind_text(st, 1, p1, -1, SQLITE_STATIC);
    if (p2)
        sqlite3_bind_text(st, 2, p2, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(a, err, "writing agents");
    sqlite3_finalize(st);
    return rc;
}

static int db_store(th_agents *a, const th_agent_def *d, th_error *err)
{
    char *json = th_agent_def_to_json(d);
    if (!json)
        return th__err(err, TH_ENOMEM, "", "out of memory");
    int rc = db_exec(a, "INSERT OR REPLACE INTO agents (name, definition) VALUES (?, ?)", d->name,
                     json, err);
    th__free(json);
    return rc;
}

/* ---- changes ----------------------------------------------------------------- */

/* Stores a copy of `d` as `mode` allows: a new name, an existing one, or
 * either. With a file, the row is written first. */
static int put(th_agents *a, const th_agent_def *d, int mode, th_error *err)
{
    th_agent_def *copy;
    int rc = prepare(a, d, &copy, err), found;
    if (rc)
        return rc;
    pthread_mutex_lock(&a->mu);
    size_t at = locate(a, copy->name, &found);
    if (found && mode == PUT_CREATE)
        rc = th__err(err, TH_ECONFLICT, "name", "agent \"%s\" exists", copy->name);
    else if (!found && mode == PUT_UPDATE)
        rc = th__err(err, TH_ENOTFOUND, "name", "no agent \"%s\"", copy->name);
    else if (!found && th__agent_grow((void **)&a->v, &a->cap, a->n, sizeof *a->v))
        rc = th__err(err, TH_ENOMEM, "", "out of memory");
    else if (a->db)
        rc = db_store(a, copy, err);
    if (!rc && found) {
        th_agent_def *old = a->v[at];
        a->v[at] = copy;
        copy = old;
    } else if (!rc) {
        memmove(a->v + at + 1, a->v + at, (a->n - at) * sizeof *a->v);
        a->v[at] = copy;
        a->n++;
        copy = NULL;
    }
    pthread_mutex_unlock(&a->mu);
    th_agent_def_free(copy);
    return rc;
}

int th_agents_create(th_agents *a, const th_agent_def *d, th_error *err)
{
    return put(a, d, PUT_CREATE, err);
}

int th_agents_update(th_agents *a, const th_agent_def *d, th_error *err)
{
    return put(a, d, PUT_UPDATE, err);
}

int th_agents_put(th_agents *a, const th_agent_def *d, th_error *err)
{
    return put(a, d, PUT_ANY, err);
}

int th_agents_delete(th_agents *a, const char *name, th_error *err)
{
    th_agent_def *gone = NULL;
    int found, rc = 0;
    pthread_mutex_lock(&a->mu);
    size_t at = locate(a, name ? name : "", &found);
    if (!found)
        rc = th__err(err, TH_ENOTFOUND, "name", "no agent \"%s\"", name ? name : "");
    else if (a->db)
        rc = db_exec(a, "DELETE FROM agents WHERE name = ?", name, NULL, err);
    if (!rc) {
        gone = a->v[at];
        memmove(a->v + at, a->v + at + 1, (a->n - at - 1) * sizeof *a->v);
        a->n--;
    }
    pthread_mutex_unlock(&a->mu);
    th_agent_def_free(gone);
    return rc;
}

int th_agents_get(th_agents *a, const char *name, th_agent_def **out, th_error *err)
{
    int found, rc = 0;
    *out = NULL;
    pthread_mutex_lock(&a->mu);
    size_t at = locate(a, name ? name : "", &found);
    if (!found)
        rc = th__err(err, TH_ENOTFOUND, "agent", "no agent \"%s\"", name ? name : "");
    else if (!(*out = th_agent_def_copy(a->v[at])))
        rc = th__err(err, TH_ENOMEM, "", "out of memory");
    pthread_mutex_unlock(&a->mu);
    return rc;
}

int th_agents_list_json(th_agents *a, char **out)
{
    *out = NULL;
    json_t *arr = json_array();
    int rc = arr ? 0 : TH_ENOMEM;
    pthread_mutex_lock(&a->mu);
    for (size_t i = 0; !rc && i < a->n; i++) {
        json_t *o = th__agent_def_value(a->v[i]);
        if (!o || json_array_append_new(arr, o))
            rc = TH_ENOMEM;
    }
    pthread_mutex_unlock(&a->mu);
    if (!rc && !(*out = th__agent_dump(arr)))
        rc = TH_ENOMEM;
    json_decref(arr);
    return rc;
}

size_t th_agents_count(th_agents *a)
{
    pthread_mutex_lock(&a->mu);
    size_t n = a->n;
    pthread_mutex_unlock(&a->mu);
    return n;
}

/* Loads every stored definition (checked without the tool registry: a
 * definition naming a tool that is gone fails when it runs, not here). */
static int load(th_agents *a, th_error *err)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(a->db, "SELECT name, definition FROM agents ORDER BY name", -1, &st,
                           NULL) != SQLITE_OK)
        return th__err(err, TH_ECORRUPT, "agents", "reading agents: %s", sqlite3_errmsg(a->db));
    int rc = 0, s;
    while (!rc && (s = sqlite3_step(st)) == SQLITE_ROW) {
        const char *json = (const char *)sqlite3_column_text(st, 1);
        th_agent_def *d = NULL;
        int found;
        if ((rc = th_agent_def_from_json(json, NULL, &d, err)) != 0) {
            if (rc != TH_ENOMEM)
                rc = th__err(err, TH_ECORRUPT, "agents", "stored agent \"%s\": %s",
                             (const char *)sqlite3_column_text(st, 0), err ? err->message : "");
            break;
        }
        size_t at = locate(a, d->name, &found);
        if (found || th__agent_grow((void **)&a->v, &a->cap, a->n, sizeof *a->v)) {
            rc = found ? th__err(err, TH_ECORRUPT, "agents", "\"%s\" stored twice", d->name)
                       : th__err(err, TH_ENOMEM, "", "out of memory");
            th_agent_def_free(d);
            break;
        }
        memmove(a->v + at + 1, a->v + at, (a->n - at) * sizeof *a->v);
        a->v[at] = d;
        a->n++;
    }
    if (!rc && s != SQLITE_DONE)
        rc = th__err(err, TH_EIO, "agents", "reading agents: %s", sqlite3_errmsg(a->db));
    sqlite3_finalize(st);
    return rc;
}

th_agents *th_agents_open(const char *path, const th_tools *tools, th_error *err)
{
    th_agents *a = th_agents_new(tools);
    if (!a) {
        th__err(err, TH_ENOMEM, "", "out of memory");
        return NULL;
    }
    if (sqlite3_open_v2(path && *path ? path : ":memory:", &a->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK) {
        th__err(err, TH_EIO, "agents", "opening %s: %s", path, sqlite3_errmsg(a->db));
        goto fail;
    }
    sqlite3_busy_timeout(a->db, 5000);
    if (sqlite3_exec(a->db,
                     "CREATE TABLE IF NOT EXISTS agents (name TEXT PRIMARY KEY,"
                     " definition TEXT NOT NULL)",
                     NULL, NULL, NULL) != SQLITE_OK) {
        th__err(err, TH_ECORRUPT, "agents", "preparing %s: %s", path, sqlite3_errmsg(a->db));
        goto fail;
    }
    if (load(a, err))
        goto fail;
    return a;
fail:
    th_agents_free(a);
    return NULL;
}
