/*
 * Agents in the daemon: the tool registry (built-in tools over the engine
 * and the memory), the memory file, the agent definitions from [agent.NAME]
 * sections and from the API, the "agent" handler on the daemon's pool, and
 * /v1/agents.
 *
 * Definitions made through the API are kept in DATA_DIR/agents.json
 * (written whole, through a rename, after each change) and loaded at the
 * next start after the configured ones; a saved definition whose name the
 * configuration now uses is skipped, so the file never overrides it.
 */
#include "server/agents.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "server/config_values.h"
#include "server/log.h"

static char *saved_path(th__server *s)
{
    size_t n = strlen(s->cfg.data_dir) + 16;
    char *p = th__malloc(n);
    if (p)
        snprintf(p, n, "%s/agents.json", s->cfg.data_dir);
    return p;
}

/* Writes every definition made through the API (not the configured ones). */
static int save(th__server *s)
{
    char *all = NULL;
    if (th_agents_list_json(s->agents, &all) != 0)
        return -1;
    json_t *arr = json_loads(all, 0, NULL), *keep = json_array();
    th_agent_free(all);
    size_t i;
    json_t *d;
    json_array_foreach(arr, i, d)
    {
        const char *name = json_string_value(json_object_get(d, "name"));
        int configured = 0;
        for (size_t k = 0; name && k < s->cfg.llm.nagents; k++)
            configured |= strcmp(s->cfg.llm.agents[k].name, name) == 0;
        if (!configured)
            json_array_append(keep, d);
    }
    json_decref(arr);
    char *path = saved_path(s);
    int rc = -1;
    if (path) {
        char tmp[4200];
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        if (json_dump_file(keep, tmp, JSON_INDENT(2)) == 0 && rename(tmp, path) == 0)
            rc = 0;
    }
    if (rc != 0)
        th__log(TH_LOG_ERROR, "agents", json_pack("{s:s}", "path", path ? path : ""),
                "cannot save the agent definitions");
    th__free(path);
    json_decref(keep);
    return rc;
}

static int load_saved(th__server *s)
{
    char *path = saved_path(s);
    if (!path)
        return -1;
    json_error_t je;
    json_t *arr = json_load_file(path, 0, &je);
    th__free(path);
    if (!arr)
        return 0; /* nothing saved yet */
    size_t i;
    json_t *d;
    json_array_foreach(arr, i, d)
    {
        char *text = json_dumps(d, JSON_COMPACT);
        th_agent_def *def = NULL;
        th_error e;
        if (text && th_agent_def_from_json(text, NULL, &def, &e) == 0 &&
            th_agents_create(s->agents, def, &e) != 0 && e.code != TH_ECONFLICT)
            th__log(TH_LOG_WARN, "agents", json_pack("{s:s}", "error", e.message),
                    "skipped a saved agent definition");
        th_agent_def_free(def);
        free(text);
    }
    json_decref(arr);
    return 0;
}

int th__agents_start(th__server *s, char *err, size_t errlen)
{
    th_error e;
    char mem[4200];
    const char *mpath = s->cfg.llm.memory_db;
    if (!mpath) {
        snprintf(mem, sizeof mem, "%s/memory.db", s->cfg.data_dir);
        mpath = mem;
    }
    if (!(s->memory = th_memory_open_llm(mpath, s->gw, s->default_provider, NULL, &e))) {
        snprintf(err, errlen, "agent memory %s: %s", mpath, e.message);
        return -1;
    }
    if (!(s->tools = th_tools_new()) ||
        th_tools_register_builtins(s->tools, s->engine, s->memory, &e) != 0 ||
        !(s->agents = th_agents_new(s->tools))) {
        snprintf(err, errlen, "agents: out of memory");
        return -1;
    }
    for (size_t i = 0; i < s->cfg.llm.nagents; i++) {
        const th__agent_conf *a = &s->cfg.llm.agents[i];
        th_agent_def *d = th_agent_def_new();
        if (!d || th_agent_def_set(d, "name", a->name, &e) != 0)
            goto bad;
        double daily = 0, monthly = 0;
        for (size_t k = 0; k < a->nkv; k++) {
            const char *key = a->kv[k].key, *v = a->kv[k].value;
            /* Budgets belong to the gateway, not to the definition. */
            if (strcmp(key, "budget_daily") == 0 || strcmp(key, "budget_monthly") == 0) {
                double *slot = key[7] == 'd' ? &daily : &monthly;
                if (th__parse_double(v, 0, 1e9, slot)) {
                    th__err(&e, TH_EINVAL, key, "'%s' must be a number of USD from 0 to 1e9", v);
                    goto bad;
                }
                continue;
            }
            if (th_agent_def_set(d, key, v, &e) != 0)
                goto bad;
        }
        char scope[80];
        snprintf(scope, sizeof scope, "agent:%s", a->name);
        if ((daily > 0 || monthly > 0) && th_llm_set_budget(s->gw, scope, daily, monthly) != 0) {
            th__err(&e, TH_EINVAL, "budget_daily", "cannot set the budget");
            goto bad;
        }
        if (!d->provider && th_agent_def_set(d, "provider", s->default_provider, &e) != 0)
            goto bad;
        if (th_agents_create(s->agents, d, &e) != 0)
            goto bad;
        th_agent_def_free(d);
        continue;
    bad:
        snprintf(err, errlen, "[agent.%s] %s: %s", a->name, e.field, e.message);
        th_agent_def_free(d);
        return -1;
    }
    return load_saved(s);
}

int th__agents_register(th__server *s, th_pool *pool, char *err, size_t errlen)
{
    if (s->cfg.pool.mode != TH_POOL_THREADS) {
        th__log(TH_LOG_WARN, "agents", NULL,
                "the pool runs processes: the agent handler needs threads and is not registered");
        return 0;
    }
    s->agent_env = (th_agent_env){.gateway = s->gw, .agents = s->agents, .tools = s->tools};
    th_error e;
    if (th_agent_register_handler(pool, &s->agent_env, &e) != 0) {
        snprintf(err, errlen, "agent handler: %s", e.message);
        return -1;
    }
    return 0;
}

void th__agents_stop(th__server *s)
{
    th_agents_free(s->agents);
    th_tools_free(s->tools);
    th_memory_free(s->memory);
    s->agents = NULL;
    s->tools = NULL;
    s->memory = NULL;
}

/* ---- /v1/agents ------------------------------------------------------------- */

static void reply_def(th__req *q, int status, const th_agent_def *d)
{
    char *text = th_agent_def_to_json(d);
    json_t *j = text ? json_loads(text, 0, NULL) : NULL;
    th_agent_free(text);
    if (!j) {
        th__reply_error(q, 500, "ENOMEM", "", "out of memory");
        return;
    }
    th__reply_json(q, status, j);
}

static void create(th__req *q)
{
    json_t *body = th__req_body(q, q->s->cfg.max_body);
    if (!body)
        return;
    /* Without a provider, an agent uses the daemon's default one. */
    if (!json_object_get(body, "provider"))
        json_object_set_new(body, "provider", json_string(q->s->default_provider));
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    th_agent_def *d = NULL;
    th_error e;
    int rc = text ? th_agent_def_from_json(text, NULL, &d, &e) : TH_ENOMEM;
    free(text);
    if (rc == 0)
        rc = th_agents_create(q->s->agents, d, &e);
    if (rc != 0)
        th__reply_engine_error(q, rc, &e);
    else {
        save(q->s);
        reply_def(q, 201, d);
    }
    th_agent_def_free(d);
}

static void update(th__req *q, const char *name)
{
    th_agent_def *base = NULL, *d = NULL;
    th_error e;
    int rc = th_agents_get(q->s->agents, name, &base, &e);
    if (rc != 0) {
        th__reply_engine_error(q, rc, &e);
        return;
    }
    json_t *body = th__req_body(q, q->s->cfg.max_body);
    if (!body) {
        th_agent_def_free(base);
        return;
    }
    const char *bname = json_string_value(json_object_get(body, "name"));
    if (bname && strcmp(bname, name) != 0) {
        json_decref(body);
        th_agent_def_free(base);
        th__reply_error(q, 400, "EINVAL", "name", "a definition cannot be renamed (%s)", name);
        return;
    }
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    rc = text ? th_agent_def_from_json(text, base, &d, &e) : TH_ENOMEM;
    free(text);
    if (rc == 0)
        rc = th_agents_update(q->s->agents, d, &e);
    if (rc != 0)
        th__reply_engine_error(q, rc, &e);
    else {
        save(q->s);
        reply_def(q, 200, d);
    }
    th_agent_def_free(base);
    th_agent_def_free(d);
}

void th__route_agents(th__req *q, enum evhttp_cmd_type method)
{
    int get = method == EVHTTP_REQ_GET || method == EVHTTP_REQ_HEAD;
    th_error e;
    if (q->nseg == 2) {
        if (get) {
            char *all = NULL;
            if (!th__req_allow(q, TH_SCOPE_READ))
                return;
            if (th_agents_list_json(q->s->agents, &all) != 0) {
                th__reply_error(q, 500, "ENOMEM", "", "out of memory");
                return;
            }
            th__reply_json(q, 200, json_pack("{s:o}", "agents", json_loads(all, 0, NULL)));
            th_agent_free(all);
        } else if (method == EVHTTP_REQ_POST) {
            if (th__req_allow(q, TH_SCOPE_ADMIN))
                create(q);
        } else {
            th__reply_method(q, "GET, POST");
        }
        return;
    }
    const char *name = q->seg[2];
    if (get) {
        th_agent_def *d;
        if (!th__req_allow(q, TH_SCOPE_READ))
            return;
        int rc = th_agents_get(q->s->agents, name, &d, &e);
        if (rc != 0) {
            th__reply_engine_error(q, rc, &e);
            return;
        }
        reply_def(q, 200, d);
        th_agent_def_free(d);
    } else if (method == EVHTTP_REQ_PATCH || method == EVHTTP_REQ_PUT) {
        if (th__req_allow(q, TH_SCOPE_ADMIN))
            update(q, name);
    } else if (method == EVHTTP_REQ_DELETE) {
        if (!th__req_allow(q, TH_SCOPE_ADMIN))
            return;
        int rc = th_agents_delete(q->s->agents, name, &e);
        if (rc != 0) {
            th__reply_engine_error(q, rc, &e);
            return;
        }
        save(q->s);
        th__reply_json(q, 200, json_pack("{s:s,s:b}", "name", name, "deleted", 1));
    } else {
        th__reply_method(q, "GET, PATCH, PUT, DELETE");
    }
}
