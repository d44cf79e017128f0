/*
 * JSON shapes of the HTTP API (docs/API.md): tasks and events out, submit
 * requests in. Requests are checked field by field so every refusal names
 * the field; unknown fields are refused rather than ignored.
 */
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "server/http.h"

json_t *th__json_raw(const char *text)
{
    if (!text)
        return json_null();
    json_t *v = json_loads(text, JSON_DECODE_ANY, NULL);
    return v ? v : json_string(text);
}

json_t *th__json_task(const th_task *t)
{
    json_t *deps = json_array();
    for (size_t i = 0; i < t->ndeps; i++)
        json_array_append_new(deps, json_string(t->deps[i]));
    json_t *o = json_pack(
        "{s:s,s:s,s:s,s:i,s:o,s:o,s:s?,s:i,s:{s:i,s:I,s:I,s:f,s:f},s:I,s:I,s:I,s:I,s:I,s:I,s:I,"
        "s:s?,s:b,s:{s:i,s:i,s:i,s:s?},s:s?,s:o,s:o}",
        "id", t->id, "queue", t->queue, "state", th_task_state_name(t->state), "priority",
        t->priority, "payload", th__json_raw(t->payload), "metadata", th__json_raw(t->metadata),
        "unique_key", t->unique_key, "attempt", t->attempt, "retry", "max_retries",
        t->retry.max_retries, "initial_delay_ms", (json_int_t)t->retry.initial_delay_ms,
        "max_delay_ms", (json_int_t)t->retry.max_delay_ms, "multiplier", t->retry.multiplier,
        "jitter", t->retry.jitter, "timeout_ms", (json_int_t)t->timeout_ms, "created_at",
        (json_int_t)t->created_at, "run_at", (json_int_t)t->run_at, "expires_at",
        (json_int_t)t->expires_at, "started_at", (json_int_t)t->started_at, "finished_at",
        (json_int_t)t->finished_at, "lease_expires_at", (json_int_t)t->lease_expires_at, "worker",
        t->worker, "cancel_requested", t->cancel_requested, "progress", "percent", t->progress,
        "step", t->step, "total_steps", t->total_steps, "message", t->progress_message, "error",
        t->error, "result", th__json_raw(t->result), "deps", deps);
    return o;
}

json_t *th__json_event(const th__ring_ev *e)
{
    return json_pack("{s:I,s:s,s:I,s:s,s:s,s:s,s:i,s:i,s:s?}", "seq", (json_int_t)e->seq, "type",
                     th_event_type_name(e->type), "time", (json_int_t)e->time_ms, "task", e->task,
                     "queue", e->queue, "state", th_task_state_name(e->state), "attempt",
                     e->attempt, "progress", e->progress, "message", e->message);
}

void th__json_owned_free(char **owned, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(owned[i]);
    th__free(owned);
}

static char *own(char ***owned, size_t *n, char *text)
{
    if (!text)
        return NULL;
    char **v = th__realloc(*owned, (*n + 1) * sizeof *v);
    if (!v) {
        free(text); /* both jansson's and th__malloc's blocks are free()-able */
        return NULL;
    }
    *owned = v;
    v[(*n)++] = text;
    return text;
}

/* Refuses the first key of `obj` not in `allowed` (NULL-terminated). */
int th__json_known_fields(json_t *obj, const char *const *allowed, const char *prefix,
                          th_error *err)
{
    const char *key;
    json_t *val;
    json_object_foreach(obj, key, val)
    {
        int ok = 0;
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = strcmp(*a, key) == 0;
        if (!ok) {
            char field[160];
            snprintf(field, sizeof field, "%s%.100s", prefix ? prefix : "", key);
            return th__err(err, TH_EINVAL, field, "unknown field '%s'", field);
        }
    }
    return 0;
}

/* Reads an integer field in [min, max] into *out when present. */
static int get_int(json_t *o, const char *key, const char *prefix, int64_t min, int64_t max,
                   int64_t *out, th_error *err)
{
    json_t *v = json_object_get(o, key);
    if (!v)
        return 0;
    char field[160];
    snprintf(field, sizeof field, "%s%s", prefix, key);
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
        return th__err(err, TH_EINVAL, field, "%s must be an integer in %lld..%lld", field,
                       (long long)min, (long long)max);
    *out = json_integer_value(v);
    return 0;
}

static int get_number(json_t *o, const char *key, const char *prefix, double *out, th_error *err)
{
    json_t *v = json_object_get(o, key);
    if (!v)
        return 0;
    if (!json_is_number(v)) {
        char field[160];
        snprintf(field, sizeof field, "%s%s", prefix, key);
        return th__err(err, TH_EINVAL, field, "%s must be a number", field);
    }
    *out = json_number_value(v);
    return 0;
}

static int get_string(json_t *o, const char *key, const char *prefix, const char **out,
                      th_error *err)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v)) {
        char field[160];
        snprintf(field, sizeof field, "%s%s", prefix, key);
        return th__err(err, TH_EINVAL, field, "%s must be a string", field);
    }
    *out = json_string_value(v);
    return 0;
}

int th__spec_parse(json_t *o, const char *prefix, th_task_spec *spec, char ***owned, size_t *nowned,
                   th_error *err)
{
    static const char *const fields[] = {"queue",    "payload",    "priority",   "delay_ms",
                                         "run_at",   "timeout_ms", "expires_at", "unique_key",
                                         "metadata", "deps",       "retry",      NULL};
    char field[160];
    int rc;
    if (!json_is_object(o)) {
        snprintf(field, sizeof field, "%.*s", (int)(strlen(prefix) ? strlen(prefix) - 1 : 0),
                 prefix);
        return th__err(err, TH_EINVAL, field, "a task must be a JSON object");
    }
    if ((rc = th__json_known_fields(o, fields, prefix, err)))
        return rc;
    th_task_spec_init(spec, NULL);
    json_t *queue = json_object_get(o, "queue");
    snprintf(field, sizeof field, "%squeue", prefix);
    if (!json_is_string(queue))
        return th__err(err, TH_EINVAL, field, "%s is required and must be a string", field);
    spec->queue = json_string_value(queue);
    json_t *payload = json_object_get(o, "payload");
    if (payload &&
        !(spec->payload = own(owned, nowned, json_dumps(payload, JSON_COMPACT | JSON_ENCODE_ANY))))
        return th__err(err, TH_ENOMEM, "", "out of memory");
    json_t *meta = json_object_get(o, "metadata");
    if (meta && !json_is_null(meta)) {
        snprintf(field, sizeof field, "%smetadata", prefix);
        if (!json_is_object(meta))
            return th__err(err, TH_EINVAL, field, "%s must be an object", field);
        if (!(spec->metadata = own(owned, nowned, json_dumps(meta, JSON_COMPACT))))
            return th__err(err, TH_ENOMEM, "", "out of memory");
    }
    json_t *prio = json_object_get(o, "priority");
    if (prio) {
        snprintf(field, sizeof field, "%spriority", prefix);
        if (json_is_string(prio)) {
            if (th_priority_parse(json_string_value(prio), &spec->priority))
                return th__err(err, TH_EINVAL, field,
                               "%s must be low, normal, high, critical or 0..100", field);
        } else {
            int64_t v;
            if ((rc = get_int(o, "priority", prefix, TH_PRIORITY_MIN, TH_PRIORITY_MAX, &v, err)))
                return rc;
            spec->priority = (int)v;
        }
    }
    const int64_t big = INT64_C(1) << 52;
    if ((rc = get_int(o, "delay_ms", prefix, 0, big, &spec->delay_ms, err)) ||
        (rc = get_int(o, "run_at", prefix, 0, big, &spec->run_at_ms, err)) ||
        (rc = get_int(o, "timeout_ms", prefix, 0, big, &spec->timeout_ms, err)) ||
        (rc = get_int(o, "expires_at", prefix, 0, big, &spec->expires_at_ms, err)) ||
        (rc = get_string(o, "unique_key", prefix, &spec->unique_key, err)))
        return rc;
    json_t *deps = json_object_get(o, "deps");
    if (deps && !json_is_null(deps)) {
        snprintf(field, sizeof field, "%sdeps", prefix);
        if (!json_is_array(deps) || json_array_size(deps) > TH_MAX_DEPS)
            return th__err(err, TH_EINVAL, field, "%s must be an array of at most %d ids", field,
                           TH_MAX_DEPS);
        size_t n = json_array_size(deps);
        const char **ids = n ? th__calloc(n, sizeof *ids) : NULL;
        if (n && (!ids || !own(owned, nowned, (char *)ids))) /* freed with the texts */
            return th__err(err, TH_ENOMEM, "", "out of memory");
        for (size_t i = 0; i < n; i++) {
            json_t *d = json_array_get(deps, i);
            if (!json_is_string(d)) {
                snprintf(field, sizeof field, "%sdeps[%zu]", prefix, i);
                return th__err(err, TH_EINVAL, field, "%s must be a task id", field);
            }
            ids[i] = json_string_value(d);
        }
        spec->deps = ids;
        spec->ndeps = n;
    }
    json_t *retry = json_object_get(o, "retry");
    if (retry) {
        char rp[160];
        snprintf(rp, sizeof rp, "%sretry.", prefix);
        static const char *const rf[] = {"max_retries", "initial_delay_ms", "max_delay_ms",
                                         "multiplier",  "jitter",           NULL};
        if (!json_is_object(retry)) {
            snprintf(field, sizeof field, "%sretry", prefix);
            return th__err(err, TH_EINVAL, field, "%s must be an object", field);
        }
        int64_t mr = spec->retry.max_retries;
        if ((rc = th__json_known_fields(retry, rf, rp, err)) ||
            (rc = get_int(retry, "max_retries", rp, 0, 1000, &mr, err)) ||
            (rc = get_int(retry, "initial_delay_ms", rp, 0, big, &spec->retry.initial_delay_ms,
                          err)) ||
            (rc = get_int(retry, "max_delay_ms", rp, 0, big, &spec->retry.max_delay_ms, err)) ||
            (rc = get_number(retry, "multiplier", rp, &spec->retry.multiplier, err)) ||
            (rc = get_number(retry, "jitter", rp, &spec->retry.jitter, err)))
            return rc;
        spec->retry.max_retries = (int)mr;
    }
    return 0;
}
