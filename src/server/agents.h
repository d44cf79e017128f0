/*
 * Agents in the daemon (agents.c): tools, memory, definitions, the agent
 * handler, /v1/agents.
 */
#ifndef TH_SERVER_AGENTS_H
#define TH_SERVER_AGENTS_H

#include "server/http.h"

/* Opens the memory, registers the built-in tools and loads the agent
 * definitions (configured, then saved). Needs the gateway. 0, or -1 with
 * one line in `err`. */
int th__agents_start(th__server *s, char *err, size_t errlen);
/* Registers the "agent" handler on `pool` (before it starts). */
int th__agents_register(th__server *s, th_pool *pool, char *err, size_t errlen);
/* Frees what th__agents_start made (after the pool stopped). */
void th__agents_stop(th__server *s);
/* Serves /v1/agents and /v1/agents/NAME. */
void th__route_agents(th__req *q, enum evhttp_cmd_type method);

#endif
