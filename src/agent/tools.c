/*
 * The tool registry: named tools with an argument schema and a timeout, and
 * calling them.
 *
 * A tool with a timeout runs on a detached thread of its own. The caller
 * waits on the registry's condition variable until the call is done or the
 * timeout passes; on a timeout it marks the call cancelled and leaves, and
 * whichever side lets go of the call last frees it (two references). The
 * registry counts threads still running so th_tools_free can wait for
 * them: a timed-out tool may still be using its `ud`.
 *
 * Locks: `mu` guards the call states (done, refs, rc) and `running`; it is a
 * leaf lock. The tool table itself is written only before use.
 */
#include "agent/agent_impl.h"

#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"

typedef struct tool {
    char *name, *description, *schema_text;
    th_schema *schema;
    int64_t timeout_ms;
    th_tool_fn fn;
    void *ud;
} tool;

struct th_tools {
    tool *v;
    size_t n, cap;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* a call finished; a thread ended */
    int running;       /* tool threads alive */
};

struct th_tool_ctx {
    atomic_int cancelled;
    char *agent;
    char *args;
    char *result;
    char *error;
    const tool *tool;
    th_tools *owner;
    int refs; /* under owner->mu */
    int done; /* under owner->mu */
    int rc;   /* under owner->mu once done */
};

/* ---- what a tool calls ------------------------------------------------------ */

int th_tool_set_result(th_tool_ctx *tc, const char *json)
{
    json_t *v = th__agent_parse(json);
    if (!v)
        return TH_EINVAL;
    json_decref(v);
    return th__agent_set_str(&tc->result, json);
}

int th_tool_set_error(th_tool_ctx *tc, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return th__agent_set_str(&tc->error, buf);
}

int th_tool_cancelled(const th_tool_ctx *tc)
{
    return atomic_load((atomic_int *)&tc->cancelled);
}

const char *th_tool_agent(const th_tool_ctx *tc)
{
    return tc->agent ? tc->agent : "";
}

/* ---- the registry ------------------------------------------------------------ */

th_tools *th_tools_new(void)
{
    th_tools *t = th__calloc(1, sizeof *t);
    if (!t)
        return NULL;
    if (pthread_mutex_init(&t->mu, NULL))
        goto fail_mu;
    if (th__cond_init_mono(&t->cv))
        goto fail_cv;
    return t;
fail_cv:
    pthread_mutex_destroy(&t->mu);
fail_mu:
    th__free(t);
    return NULL;
}

static void tool_clear(tool *x)
{
    th__free(x->name);
    th__free(x->description);
    th__free(x->schema_text);
    th_schema_free(x->schema);
}

void th_tools_free(th_tools *t)
{
    if (!t)
        return;
    pthread_mutex_lock(&t->mu);
    while (t->running > 0)
        pthread_cond_wait(&t->cv, &t->mu);
    pthread_mutex_unlock(&t->mu);
    for (size_t i = 0; i < t->n; i++)
        tool_clear(&t->v[i]);
    th__free(t->v);
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
    th__free(t);
}

static const tool *find(const th_tools *t, const char *name)
{
    for (size_t i = 0; t && name && i < t->n; i++)
        if (strcmp(t->v[i].name, name) == 0)
            return &t->v[i];
    return NULL;
}

static int tool_name_ok(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)name[i]) && name[i] != '_' && name[i] != '-')
            return 0;
    return 1;
}

/* Compiles the schema text of a tool; the top level must describe an object. */
static th_schema *compile_args_schema(const char *text, th_error *err)
{
    th_schema *s = th_schema_new(text, err);
    if (!s) {
        if (err)
            th__err_prefix(err, "schema");
        return NULL;
    }
    json_t *root = th__agent_parse(text);
    const char *type = json_string_value(json_object_get(root, "type"));
    int ok = type && strcmp(type, "object") == 0;
    json_decref(root);
    if (!ok) {
        th_schema_free(s);
        th__err(err, TH_EINVAL, "schema.type", "the arguments schema must have type \"object\"");
        return NULL;
    }
    return s;
}

int th_tools_register(th_tools *t, const char *name, const char *description, const char *schema,
                      int64_t timeout_ms, th_tool_fn fn, void *ud, th_error *err)
{
    if (!t)
        return th__err(err, TH_EINVAL, "tools", "no registry");
    if (!tool_name_ok(name))
        return th__err(err, TH_EINVAL, "name", "must be 1-64 characters of [A-Za-z0-9_-]");
    if (!fn)
        return th__err(err, TH_EINVAL, "fn", "a tool needs a function");
    if (timeout_ms < 0)
        return th__err(err, TH_EINVAL, "timeout_ms", "must be >= 0");
    if (find(t, name))
        return th__err(err, TH_ECONFLICT, "name", "tool \"%s\" is already registered", name);
    if (!schema)
        schema = "{\"type\":\"object\"}";
    tool x = {.timeout_ms = timeout_ms, .fn = fn, .ud = ud};
    if (!(x.schema = compile_args_schema(schema, err)))
        return err ? err->code : TH_EINVAL;
    x.name = th__strdup(name);
    x.description = th__strdup(description ? description : "");
    x.schema_text = th__strdup(schema);
    if (!x.name || !x.description || !x.schema_text)
        goto nomem;
    if (th__agent_grow((void **)&t->v, &t->cap, t->n, sizeof *t->v))
        goto nomem;
    t->v[t->n++] = x;
    return 0;
nomem:
    tool_clear(&x);
    return th__err(err, TH_ENOMEM, "", "out of memory");
}

int th_tools_has(const th_tools *t, const char *name)
{
    return find(t, name) != NULL;
}

size_t th_tools_count(const th_tools *t)
{
    return t ? t->n : 0;
}

const char *th_tools_name(const th_tools *t, size_t i)
{
    return t && i < t->n ? t->v[i].name : NULL;
}

int th_tools_defs(const th_tools *t, const char *const *names, size_t nnames, th_llm_tool_def *out,
                  size_t max, th_error *err)
{
    size_t n = names ? nnames : th_tools_count(t);
    if (n > max)
        return th__err(err, TH_ETOOBIG, "tools", "more than %zu tools", max);
    for (size_t i = 0; i < n; i++) {
        const tool *x = names ? find(t, names[i]) : &t->v[i];
        if (!x) {
            char field[32];
            snprintf(field, sizeof field, "tools[%zu]", i);
            return th__err(err, TH_ENOTFOUND, field, "unknown tool \"%s\"", names[i]);
        }
        out[i] = (th_llm_tool_def){x->name, x->description, x->schema_text};
    }
    return (int)n;
}

/* ---- calling ------------------------------------------------------------------- */

/* Drops one reference to a threaded call (owner->mu held). */
static void call_unref(th_tool_ctx *tc)
{
    if (--tc->refs > 0)
        return;
    th__free(tc->agent);
    th__free(tc->args);
    th__free(tc->result);
    th__free(tc->error);
    th__free(tc);
}

static void *call_thread(void *arg)
{
    th_tool_ctx *tc = arg;
    th_tools *t = tc->owner;
    int rc = tc->tool->fn(tc, tc->args, tc->tool->ud);
    pthread_mutex_lock(&t->mu);
    tc->rc = rc;
    tc->done = 1;
    call_unref(tc);
    t->running--;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

/* Runs `tc` on its own thread for up to the tool's timeout. *abandoned is
 * set when the time ran out: the thread then owns tc and frees it. */
static int run_threaded(th_tools *t, th_tool_ctx *tc, int *abandoned)
{
    pthread_t th;
    pthread_attr_t attr;
    if (pthread_attr_init(&attr))
        return TH_ENOMEM;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_mutex_lock(&t->mu);
    tc->refs = 2;
    t->running++;
    if (pthread_create(&th, &attr, call_thread, tc)) {
        t->running--;
        tc->refs = 1;
        pthread_mutex_unlock(&t->mu);
        pthread_attr_destroy(&attr);
        return TH_EBUSY;
    }
    pthread_attr_destroy(&attr);
    struct timespec dl = th__mono_deadline(tc->tool->timeout_ms);
    while (!tc->done)
        if (pthread_cond_timedwait(&t->cv, &t->mu, &dl) && !tc->done)
            break;
    int rc = tc->done ? tc->rc : TH_ETIMEDOUT;
    *abandoned = !tc->done;
    if (!tc->done) {
        atomic_store(&tc->cancelled, 1);
        call_unref(tc);
    } else {
        tc->refs = 1;
    }
    pthread_mutex_unlock(&t->mu);
    return rc;
}

static int call_error(const tool *x, int rc, const th_tool_ctx *tc, th_error *err)
{
    if (!tc)
        return th__err(err, rc, "", "tool \"%s\" timed out after %lld ms", x->name,
                       (long long)x->timeout_ms);
    if (rc > 0)
        rc = TH_EINVAL;
    return th__err(err, rc, "", "%s", tc->error ? tc->error : th_strerror(rc));
}

static int call_json(th_tools *t, const char *name, json_t *args, const char *agent, char **result,
                     th_error *err)
{
    *result = NULL;
    const tool *x = find(t, name);
    if (!x)
        return th__err(err, TH_ENOTFOUND, "name", "unknown tool \"%s\"", name ? name : "");
    int rc = th__schema_check(x->schema, args, "arguments", err);
    if (rc)
        return rc;
    th_tool_ctx *tc = th__calloc(1, sizeof *tc);
    if (!tc)
        return th__err(err, TH_ENOMEM, "", "out of memory");
    tc->tool = x;
    tc->owner = t;
    tc->refs = 1;
    tc->args = th__agent_dump(args);
    tc->agent = th__strdup(agent ? agent : "");
    if (!tc->args || !tc->agent) {
        rc = th__err(err, TH_ENOMEM, "", "out of memory");
        goto done;
    }
    int abandoned = 0;
    rc = x->timeout_ms > 0 ? run_threaded(t, tc, &abandoned) : x->fn(tc, tc->args, x->ud);
    if (abandoned) /* the thread frees tc when the tool returns */
        return call_error(x, rc, NULL, err);
    if (rc) {
        rc = call_error(x, rc, tc, err);
    } else if (tc->result) {
        *result = tc->result;
        tc->result = NULL;
    } else if (!(*result = th__strdup("{}"))) {
        rc = th__err(err, TH_ENOMEM, "", "out of memory");
    }
done:
    pthread_mutex_lock(&t->mu);
    call_unref(tc);
    pthread_mutex_unlock(&t->mu);
    return rc;
}

int th_tools_call(th_tools *t, const char *name, const char *args, const char *agent, char **result,
                  th_error *err)
{
    *result = NULL;
    json_t *v = th__agent_parse(args && *args ? args : "{}");
    if (!v)
        return th__err(err, TH_EINVAL, "arguments", "not JSON");
    int rc = call_json(t, name, v, agent, result, err);
    json_decref(v);
    return rc;
}
