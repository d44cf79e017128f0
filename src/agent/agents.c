/*
 * The registry of agent definitions: a mutex-guarded array kept sorted by
 * name. Readers get copies, so a definition may be updated or deleted while
 * a run uses its own copy.
 */
#include "agent/agent_impl.h"

#include <pthread.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"

struct th_agents {
    pthread_mutex_t mu; /* guards v and n; a leaf lock */
    th_agent_def **v;
    size_t n, cap;
    const th_tools *tools;
};

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

/* Stores a copy of `d`: a new name when `create`, else an existing one. */
static int put(th_agents *a, const th_agent_def *d, int create, th_error *err)
{
    th_agent_def *copy;
    int rc = prepare(a, d, &copy, err), found;
    if (rc)
        return rc;
    pthread_mutex_lock(&a->mu);
    size_t at = locate(a, copy->name, &found);
    if (found && create) {
        rc = th__err(err, TH_ECONFLICT, "name", "agent \"%s\" exists", copy->name);
    } else if (found) {
        th_agent_def *old = a->v[at];
        a->v[at] = copy;
        copy = old;
    } else if (!create) {
        rc = th__err(err, TH_ENOTFOUND, "name", "no agent \"%s\"", copy->name);
    } else if (th__agent_grow((void **)&a->v, &a->cap, a->n, sizeof *a->v)) {
        rc = th__err(err, TH_ENOMEM, "", "out of memory");
    } else {
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
    return put(a, d, 1, err);
}

int th_agents_update(th_agents *a, const th_agent_def *d, th_error *err)
{
    return put(a, d, 0, err);
}

int th_agents_delete(th_agents *a, const char *name, th_error *err)
{
    th_agent_def *gone = NULL;
    int found;
    pthread_mutex_lock(&a->mu);
    size_t at = locate(a, name ? name : "", &found);
    if (found) {
        gone = a->v[at];
        memmove(a->v + at, a->v + at + 1, (a->n - at - 1) * sizeof *a->v);
        a->n--;
    }
    pthread_mutex_unlock(&a->mu);
    th_agent_def_free(gone);
    return found ? 0 : th__err(err, TH_ENOTFOUND, "name", "no agent \"%s\"", name ? name : "");
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
